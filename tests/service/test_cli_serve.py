"""`segany serve` as a user runs it: prints the chosen port, serves, stops gracefully on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from segany.client import Client
from tests.service.conftest import png_bytes, random_image

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_serve_port_zero_prints_the_port_and_stops_on_sigterm(tiny_model, tmp_path):
    checkpoint = tmp_path / "tiny.pt"
    torch.save(tiny_model.state_dict(), checkpoint)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "segany", "serve", "--host", "127.0.0.1", "--port", "0", "--checkpoint",
         str(checkpoint), "--cache-bytes", "64MiB", "--threads", "1", "--grace", "5"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        line = proc.stdout.readline()
        assert line.startswith("segany serving on 127.0.0.1:"), (line, proc.stderr.read() if proc.poll() else "")
        port = int(line.strip().rsplit(":", 1)[1])
        with Client(f"127.0.0.1:{port}") as c:
            c.wait_ready(60)
            img = c.embed(png_bytes(random_image(32, 48)))
            res = c.segment(img.id, points=[[10, 10]], labels=[1], multimask=True)
            assert res.masks.shape == (3, 32, 48) and res.scores.shape == (3,)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        assert "segany stopped" in proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_serve_rejects_bad_flags():
    out = subprocess.run([sys.executable, "-m", "segany", "serve", "--model", "vit_b", "--checkpoint", "x.pt"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "not allowed with argument" in out.stderr
    out = subprocess.run([sys.executable, "-m", "segany", "serve", "--checkpoint", "/nonexistent.pt", "--port", "0"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "nonexistent" in out.stderr
    out = subprocess.run([sys.executable, "-m", "segany", "serve", "--device", "gpu0", "--port", "0"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "device must be 'cpu', 'cuda' or 'cuda:N'" in out.stderr


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the answer on a machine without a GPU")
def test_serve_on_a_missing_gpu_exits_unavailable_with_the_reason():
    out = subprocess.run([sys.executable, "-m", "segany", "serve", "--device", "cuda", "--port", "0"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 3, out.stderr  # EXIT_UNAVAILABLE
    assert "device 'cuda' is not available here" in out.stderr and "use device 'cpu'" in out.stderr
    assert "Traceback" not in out.stderr  # one line, not a stack


def test_no_model_flag_serves_the_shipped_default(tiny_model, monkeypatch):
    """With neither --model nor --checkpoint the server loads ``load_model(None)``: the shipped model."""
    import asyncio

    import segany.models
    from segany.service import Settings, create_server

    asked = []

    def fake_load_model(name=None):
        asked.append(name)
        return tiny_model

    monkeypatch.setattr(segany.models, "load_model", fake_load_model)

    async def main():
        service, _ = await create_server(Settings(port=0, warmup=False, torch_threads=1))
        await service.stop(0)

    asyncio.run(main())
    assert asked == [None]


SHIPPED = ROOT / "segany" / "weights" / "segany-lite.pt"


@pytest.mark.slow
@pytest.mark.skipif(not SHIPPED.is_file(), reason="the shipped weights are not built yet")
def test_serve_with_no_flags_runs_the_shipped_model():
    proc = subprocess.Popen([sys.executable, "-m", "segany", "serve", "--port", "0", "--threads", "1"], cwd=ROOT,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"), stdout=subprocess.PIPE, text=True)
    try:
        port = int(proc.stdout.readline().strip().rsplit(":", 1)[1])
        with Client(f"127.0.0.1:{port}") as c:
            c.wait_ready(120)
            assert c.model_info().variant == "segany-lite"
            res = c.segment(c.embed(png_bytes(random_image(48, 64))).id, points=[[20, 20]], labels=[1])
            assert res.masks.shape == (3, 48, 64)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
