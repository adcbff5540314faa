"""Released checkpoints on disk: where they are looked for, and download with resume and verification.

Lookup order for a variant's file (e.g. ``sam_vit_b_01ec64.pth``): ``$SEGANY_CHECKPOINT_DIR``, the current
directory, then the cache directory (``$SEGANY_HOME/checkpoints``, default ``~/.cache/segany/checkpoints``).
A missing file is downloaded into the cache directory: to ``NAME.part`` first (resumed with an HTTP Range request
if a previous download broke off), verified by size and MD5, then renamed into place, so a half-downloaded file is
never taken for a checkpoint (without a published MD5, as for MobileSAM, a download whose length the server did not
give must at least be a whole zip, as torch checkpoints are). Processes downloading the same file take turns (a
lock file beside it). ``$SEGANY_MODEL_BASE_URL`` replaces the release host (a mirror, or a test server).
"""

from __future__ import annotations

import hashlib
import http.client
import os
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

try:
    import fcntl
except ImportError:  # not POSIX: downloads of the same file are not serialised
    fcntl = None

from segany.errors import DownloadError, UnknownModelError
from segany.models import VARIANTS, Variant, get_variant

CHUNK = 1 << 20


def cache_dir() -> Path:
    home = os.environ.get("SEGANY_HOME")
    base = Path(home) if home else Path.home() / ".cache" / "segany"
    return base / "checkpoints"


def search_paths() -> list[Path]:
    paths = []
    if os.environ.get("SEGANY_CHECKPOINT_DIR"):
        paths.append(Path(os.environ["SEGANY_CHECKPOINT_DIR"]))
    paths += [Path.cwd(), cache_dir()]
    return paths


def local_path(variant: Variant) -> Path | None:
    """Where the variant's weights are on this machine, or None."""
    if variant.shipped is not None:
        return variant.shipped if variant.shipped.is_file() else None
    if variant.filename is None:
        return None
    for folder in search_paths():
        candidate = folder / variant.filename
        if candidate.is_file():
            return candidate
    return None


def source_url(variant: Variant) -> str | None:
    base = os.environ.get("SEGANY_MODEL_BASE_URL")
    if base and variant.filename:
        return base.rstrip("/") + "/" + variant.filename
    return variant.url


def resolve_checkpoint(name: str, download: bool = True, progress: bool = True) -> Path:
    """Path of the named variant's checkpoint, downloading it when missing (and ``download`` is True)."""
    variant = get_variant(name)
    found = local_path(variant)
    if found is not None:
        return found
    url = source_url(variant)
    if url is None or variant.filename is None:
        raise UnknownModelError(f"variant {name!r} has no weights to download; pass --checkpoint PATH")
    if not download:
        looked = ", ".join(map(str, search_paths()))
        raise DownloadError(f"{variant.filename} is not on this machine (looked in {looked})")
    return download_file(url, cache_dir() / variant.filename, md5=variant.md5, progress=progress)


def download_file(url: str, dest: Path, md5: str | None = None, size: int | None = None, progress: bool = True) -> Path:
    """Download ``url`` to ``dest`` with resume, then verify ``size`` and ``md5`` before renaming into place.

    Raises :class:`DownloadError` with the reason; a file that fails verification is deleted (a later call starts
    over), a broken-off download is kept as ``.part`` and resumed. Two processes downloading the same file (replicas
    sharing a cache volume) take turns: the second finds the first one's file.
    """
    dest = Path(dest)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        lock = open(dest.with_name(f".{dest.name}.lock"), "a")  # noqa: SIM115 - held for the whole download
    except OSError as exc:
        raise DownloadError(f"cannot write the checkpoint cache {dest.parent}: {exc.strerror or exc}; set "
                            "SEGANY_HOME to a writable folder") from None
    with lock:
        if fcntl is not None:
            fcntl.flock(lock, fcntl.LOCK_EX)
        if dest.is_file():  # another process finished it while this one waited
            return dest
        return _download_locked(url, dest, md5, size, progress)


def _download_locked(url: str, dest: Path, md5: str | None, size: int | None, progress: bool) -> Path:
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    checked_length = True  # whether the bytes received were counted against a length the server gave
    try:
        response = urllib.request.urlopen(request, timeout=60)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # the .part is already complete (or longer than the file: checked below)
            response, checked_length = None, False
        else:
            raise DownloadError(f"download of {url} failed: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise DownloadError(f"download of {url} failed: {getattr(exc, 'reason', exc)}") from None
    if response is not None:
        with response:
            if have and response.status != 206:  # server ignored the range: start over
                have = 0
            total = response.headers.get("Content-Length")
            checked_length = total is not None or size is not None
            total = int(total) + have if total is not None else size
            bar = _progress(total, have, dest.name) if progress else None
            try:
                with open(part, "ab" if have else "wb") as f:
                    while True:
                        chunk = response.read(CHUNK)
                        if not chunk:
                            break
                        f.write(chunk)
                        if bar is not None:
                            bar.update(len(chunk))
            except (OSError, urllib.error.URLError, http.client.HTTPException) as exc:
                got = part.stat().st_size if part.exists() else 0
                raise DownloadError(f"download of {url} broke off ({exc!r:.200}); run again to resume from {got} "
                                    "bytes") from None
            finally:
                if bar is not None:
                    bar.close()
            if total is not None and part.stat().st_size < total:
                raise DownloadError(
                    f"download of {url} broke off at {part.stat().st_size} of {total} bytes; run again to resume"
                )
    if md5 is None and not checked_length and not zipfile.is_zipfile(part):
        # nothing vouches for this file (no checksum, no length): a torch checkpoint is a zip, and a cut-off zip
        # has no end record
        part.unlink()
        raise DownloadError(f"{url}: the download cannot be verified (no checksum, no length) and is not a complete "
                            "checkpoint; the partial file was removed, run again")
    _verify(part, url, md5, size)
    os.replace(part, dest)
    return dest


def _verify(path: Path, url: str, md5: str | None, size: int | None) -> None:
    actual_size = path.stat().st_size
    if size is not None and actual_size != size:
        path.unlink()
        raise DownloadError(f"{url}: got {actual_size} bytes, expected {size}; the file was removed")
    if md5 is not None:
        h = hashlib.md5(usedforsecurity=False)
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(CHUNK), b""):
                h.update(chunk)
        if h.hexdigest() != md5:
            path.unlink()
            raise DownloadError(f"{url}: MD5 {h.hexdigest()} does not match the release's {md5}; the file was removed")


def _progress(total: int | None, initial: int, name: str):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024, desc=name, leave=False)


def listing() -> list[dict]:
    """One row per variant for ``segany models``: name, description, size, source, local path."""
    rows = []
    for name, variant in VARIANTS.items():
        if name == "test-tiny":
            continue
        path = local_path(variant)
        size = path.stat().st_size if path is not None else variant.size_bytes
        rows.append(
            {
                "name": name,
                "description": variant.description,
                "size_bytes": size,
                "source": "shipped with segany" if variant.shipped else (source_url(variant) or "-"),
                "local": str(path) if path else None,
            }
        )
    return rows
