"""Which images to label: a folder (recursive), a glob pattern, a list file, or one image file.

Every image gets a *name*: its path relative to the input root, with forward slashes. The name is the COCO
``file_name``, the key that prompt files are matched against, and the base of every per-image output path.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from segany.errors import InvalidInputError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp")
LIST_SUFFIXES = (".txt", ".lst", ".list")


@dataclass(frozen=True)
class ImageItem:
    """One image to label: where it is, and its name (relative path, forward slashes)."""

    path: Path
    name: str


def name_stem(name: str) -> str:
    """An image's name without its suffix: the base of its per-image output paths, and what YOLO label files and
    prompt entries without a suffix are matched by."""
    return PurePosixPath(name).with_suffix("").as_posix()


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def discover_images(spec: str, exclude: Path | None = None) -> list[ImageItem]:
    """Images named by ``spec``, sorted by name.

    Args:
        spec: a directory (searched recursively for .jpg/.jpeg/.png/.webp/.tif/.tiff/.bmp, hidden folders skipped),
            a glob pattern (``**`` recurses), a list file (.txt/.lst/.list: one path per line, relative to the list
            file's folder; blank lines and ``#`` comments ignored), or a single image file.
        exclude: a folder whose contents are never inputs (the output folder, when it lies inside the input).
    Raises:
        InvalidInputError: nothing matches, or the spec names nothing that exists.
    """
    path = Path(spec).expanduser()
    if path.is_dir():
        root = path
        files = [p for p in _walk(root) if is_image_file(p)]
    elif path.is_file() and path.suffix.lower() in LIST_SUFFIXES:
        return _from_list(path)
    elif path.is_file():
        if not is_image_file(path):
            raise InvalidInputError(
                f"{spec!r} is neither an image ({', '.join(IMAGE_SUFFIXES)}) nor a list file "
                f"({', '.join(LIST_SUFFIXES)})"
            )
        return [ImageItem(path, path.name)]
    elif glob.has_magic(spec):
        root = _glob_root(spec)
        files = [Path(p) for p in glob.glob(os.path.expanduser(spec), recursive=True)]
        files = [p for p in files if p.is_file() and is_image_file(p)]
    else:
        raise InvalidInputError(f"input {spec!r} does not exist (expected a folder, a glob, a list file or an image)")
    if exclude is not None:
        excluded = exclude.resolve()
        files = [p for p in files if excluded not in p.resolve().parents]
    items = sorted((ImageItem(p, p.relative_to(root).as_posix()) for p in files), key=lambda i: i.name)
    if not items:
        raise InvalidInputError(f"no images found in {spec!r} (looked for {', '.join(IMAGE_SUFFIXES)})")
    return items


def _walk(root: Path):
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            yield Path(dirpath) / name


def _glob_root(pattern: str) -> Path:
    """The longest leading folder of ``pattern`` without glob characters."""
    parts = Path(os.path.expanduser(pattern)).parts
    fixed = []
    for part in parts:
        if glob.has_magic(part):
            break
        fixed.append(part)
    return Path(*fixed) if fixed else Path(".")


def _from_list(list_file: Path) -> list[ImageItem]:
    base = list_file.parent
    paths = []
    for number, line in enumerate(list_file.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        p = Path(line).expanduser()
        paths.append((number, p if p.is_absolute() else base / p))
    if not paths:
        raise InvalidInputError(f"list file {str(list_file)!r} names no images")
    # Missing files are kept: the pipeline reports them as skipped, like unreadable images.
    root = Path(os.path.commonpath([str(p.parent.resolve()) for _, p in paths]))
    items = {}
    for _, p in paths:
        name = Path(os.path.relpath(p.resolve(), root)).as_posix()
        items[name] = ImageItem(p, name)
    return sorted(items.values(), key=lambda i: i.name)
