"""Model zoo downloads against a local HTTP server on 127.0.0.1: good, corrupt, truncated (resume), wrong hash."""

from __future__ import annotations

import hashlib
import http.server
import threading
import time
from pathlib import Path

import pytest
import torch

import segany
from segany import zoo
from segany.cli.main import main as cli_main
from segany.errors import DownloadError
from segany.models import VARIANTS, Variant


class _Handler(http.server.BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}
    cut_after: dict[str, int] = {}  # send only this many bytes of the body, then drop the connection
    requests: list[tuple[str, str | None]] = []
    no_length: set[str] = set()  # no Content-Length: the body ends when the connection closes
    chunked_cut: set[str] = set()  # chunked transfer that stops after its first chunk
    slow: set[str] = set()  # the body in two halves, 0.3 s apart

    def do_GET(self):  # noqa: N802 - http.server API
        name = self.path.lstrip("/")
        self.requests.append((name, self.headers.get("Range")))
        if name not in self.files:
            self.send_error(404)
            return
        data = self.files[name]
        start = 0
        if self.headers.get("Range"):
            start = int(self.headers["Range"].split("=")[1].split("-")[0])
            if start >= len(data):
                self.send_error(416)
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        if name in self.chunked_cut:
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            half = body[: len(body) // 2]
            self.wfile.write(f"{len(half):x}\r\n".encode() + half + b"\r\n")
            self.wfile.flush()
            self.close_connection = True
            return
        if name not in self.no_length:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if name in self.slow:
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            time.sleep(0.3)
            body = body[len(body) // 2 :]
        cut = self.cut_after.pop(name, None)
        self.wfile.write(body if cut is None else body[:cut])
        if cut is not None:
            self.wfile.flush()
            self.close_connection = True

    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path, monkeypatch, tiny_model):
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    ckpt = tmp_path / "src.pth"
    torch.save(tiny_model.state_dict(), ckpt)
    data = ckpt.read_bytes()
    _Handler.files = {"tiny_release.pth": data, "corrupt.pth": data[:-10] + b"x" * 10}
    _Handler.cut_after = {}
    _Handler.requests = []
    _Handler.no_length, _Handler.chunked_cut, _Handler.slow = set(), set(), set()
    md5 = hashlib.md5(data).hexdigest()
    monkeypatch.setenv("SEGANY_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SEGANY_MODEL_BASE_URL", f"http://127.0.0.1:{httpd.server_address[1]}")
    monkeypatch.chdir(tmp_path)
    base = VARIANTS["test-tiny"]
    for name, filename, digest in [("zoo-good", "tiny_release.pth", md5), ("zoo-corrupt", "corrupt.pth", md5),
                                   ("zoo-missing", "absent.pth", md5)]:
        monkeypatch.setitem(VARIANTS, name, Variant(name, base.build_encoder, "test", filename=filename,
                                                    url="http://unused.invalid/" + filename, md5=digest))
    yield data
    httpd.shutdown()


def test_download_verifies_and_loads(server, tiny_model):
    path = zoo.resolve_checkpoint("zoo-good", progress=False)
    assert path == zoo.cache_dir() / "tiny_release.pth" and path.read_bytes() == server
    model = segany.models.load_checkpoint(path)
    assert model.fingerprint == tiny_model.fingerprint
    # second call finds the local file, no new request
    before = len(_Handler.requests)
    assert zoo.resolve_checkpoint("zoo-good") == path
    assert len(_Handler.requests) == before


def test_wrong_hash_is_refused_and_removed(server):
    with pytest.raises(DownloadError, match="MD5"):
        zoo.resolve_checkpoint("zoo-corrupt", progress=False)
    assert not list(zoo.cache_dir().glob("corrupt.pth*"))


def test_truncated_download_resumes(server):
    _Handler.cut_after["tiny_release.pth"] = 5000
    with pytest.raises(DownloadError, match="broke off"):
        zoo.resolve_checkpoint("zoo-good", progress=False)
    part = zoo.cache_dir() / "tiny_release.pth.part"
    assert part.stat().st_size == 5000
    path = zoo.resolve_checkpoint("zoo-good", progress=False)
    assert path.read_bytes() == server
    assert _Handler.requests[-1] == ("tiny_release.pth", "bytes=5000-")
    assert not part.exists()


def test_size_mismatch(server, tmp_path):
    with pytest.raises(DownloadError, match="expected"):
        zoo.download_file(zoo.source_url(VARIANTS["zoo-good"]), tmp_path / "x.pth", size=12, progress=False)


def test_two_downloads_of_one_file_take_turns(server, tmp_path):
    """Replicas sharing a cache volume start together: one downloads, the other waits and takes its file."""
    _Handler.slow.add("tiny_release.pth")
    url, dest = zoo.source_url(VARIANTS["zoo-good"]), tmp_path / "shared" / "tiny_release.pth"
    md5 = VARIANTS["zoo-good"].md5
    results = []

    def fetch():
        try:
            results.append(zoo.download_file(url, dest, md5=md5, progress=False))
        except Exception as exc:  # noqa: BLE001 - asserted below
            results.append(exc)

    threads = [threading.Thread(target=fetch) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results == [dest, dest] and dest.read_bytes() == server
    assert [r for r in _Handler.requests if r[0] == "tiny_release.pth"] == [("tiny_release.pth", None)]


def test_a_download_nothing_vouches_for_must_be_a_whole_checkpoint(server, tmp_path):
    """No checksum (MobileSAM's is not published) and no length: a cut-off file is not taken for a checkpoint."""
    url = zoo.source_url(VARIANTS["zoo-good"])
    _Handler.no_length.add("tiny_release.pth")
    _Handler.cut_after["tiny_release.pth"] = 5000
    with pytest.raises(DownloadError, match="cannot be verified"):
        zoo.download_file(url, tmp_path / "a.pth", progress=False)
    assert not list(tmp_path.glob("a.pth*"))
    assert zoo.download_file(url, tmp_path / "a.pth", progress=False).read_bytes() == server  # whole: a valid zip
    # a stale .part as long as the file (the server answers 416) is checked the same way
    (tmp_path / "b.pth.part").write_bytes(b"\0" * len(server))
    with pytest.raises(DownloadError, match="cannot be verified"):
        zoo.download_file(url, tmp_path / "b.pth", progress=False)


def test_a_chunked_download_that_breaks_off_is_typed(server, tmp_path):
    _Handler.chunked_cut.add("tiny_release.pth")
    with pytest.raises(DownloadError, match="broke off"):
        zoo.download_file(zoo.source_url(VARIANTS["zoo-good"]), tmp_path / "c.pth", progress=False)


def test_an_unwritable_cache_folder_is_a_download_error(server, tmp_path, monkeypatch):
    (tmp_path / "a_file").write_text("")
    monkeypatch.setenv("SEGANY_HOME", str(tmp_path / "a_file"))
    with pytest.raises(DownloadError, match="set SEGANY_HOME to a writable folder"):
        zoo.resolve_checkpoint("zoo-good", progress=False)


def test_http_error_is_typed(server):
    with pytest.raises(DownloadError, match="HTTP 404"):
        zoo.resolve_checkpoint("zoo-missing", progress=False)


def test_local_file_in_checkpoint_dir_wins(server, tmp_path, monkeypatch):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "tiny_release.pth").write_bytes(server)
    monkeypatch.setenv("SEGANY_CHECKPOINT_DIR", str(folder))
    assert zoo.resolve_checkpoint("zoo-good") == folder / "tiny_release.pth"
    assert not _Handler.requests


def test_models_cli_lists_variants(capsys, server):
    assert cli_main(["models"]) == 0
    out = capsys.readouterr().out
    for name in ("segany-lite", "vit_b", "vit_l", "vit_h", "vit_t"):
        assert name in out
    assert "sam_vit_b_01ec64.pth" in out
    widths = {line.index(" yes ") if " yes " in line else line.index(" no ")
              for line in out.splitlines()[1:] if line[:1].strip()}
    assert len(widths) == 1  # the local column lines up whatever the size (vit_h: 2.39 GiB)
    assert cli_main(["models", "list", "vit_b"]) == 2  # a name only goes with download
    assert "segany models download vit_b" in capsys.readouterr().err


def test_models_cli_download_error_exit_code(capsys, server):
    assert cli_main(["models", "download", "zoo-corrupt"]) == 3
    assert "MD5" in capsys.readouterr().err


def test_release_facts_in_table():
    assert VARIANTS["vit_b"].md5 == "01ec64d29a2fca3f0661936605ae66f8"
    assert VARIANTS["vit_l"].md5 == "0b3195507c641ddb6910d2bb5adee89c"
    assert VARIANTS["vit_h"].md5 == "4b8939a88964f0f4ff5f5b2642c598a6"
    for name in ("vit_b", "vit_l", "vit_h"):
        assert VARIANTS[name].md5.startswith(Path(VARIANTS[name].filename).stem.split("_")[-1])
