"""SIGKILL the CLI in the middle of a run, re-run it, and get the same outputs as an uninterrupted run.

Runs ``python -m segany annotate`` in subprocesses (one thread each) with the COCO file rebuilt after every image,
so the kill can land in any write. Every subprocess has a time limit.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pycocotools.coco import COCO

from tests.annotate.conftest import write_images

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
LIMIT_S = 240
SIZES = {f"img{i:02d}.png": (40 + 4 * (i % 3), 48) for i in range(8)}


def command(images: Path, out: Path, checkpoint: Path) -> list[str]:
    return [
        sys.executable, "-m", "segany", "annotate", str(images), "--out", str(out), "--everything",
        "--points-per-side", "2", "--pred-iou-thresh", "0", "--stability-score-thresh", "0",
        "--checkpoint", str(checkpoint), "--precision", "exact", "--format", "coco,yolo,png",
        "--threads", "1", "--workers", "1", "--checkpoint-every", "0", "--no-progress",
    ]


def run(cmd: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=LIMIT_S)


def outputs(out: Path) -> dict[str, bytes]:
    """Every output file except the journal's own state."""
    return {
        p.relative_to(out).as_posix(): p.read_bytes()
        for p in sorted(out.rglob("*"))
        if p.is_file() and ".segany" not in p.relative_to(out).parts
    }


def test_sigkill_then_resume_gives_the_uninterrupted_outputs(tmp_path, tiny_checkpoint):
    images = tmp_path / "images"
    write_images(images, SIZES)
    reference = tmp_path / "reference"
    done = run(command(images, reference, tiny_checkpoint))
    assert done.returncode == 0, done.stderr

    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(command(images, out, tiny_checkpoint), cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    records = out / ".segany" / "records"
    deadline = time.monotonic() + LIMIT_S
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if records.is_dir() and len(list(records.glob("*.json"))) >= 3:
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the run finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    finished = len(list(records.glob("*.json")))
    assert 3 <= finished < len(SIZES)

    # what a killed run leaves is readable: the COCO file parses and holds only finished images
    coco_file = out / "annotations.json"
    if coco_file.exists():
        partial = COCO(str(coco_file))
        assert len(partial.dataset["images"]) <= finished
    for path in records.glob("*.json"):
        json.loads(path.read_text())

    resumed = run(command(images, out, tiny_checkpoint))
    assert resumed.returncode == 0, resumed.stderr
    assert f"{len(SIZES) - finished} labelled now, {finished} already done" in resumed.stderr
    got, want = outputs(out), outputs(reference)
    assert sorted(got) == sorted(want)
    for name in want:
        assert got[name] == want[name], name
    assert not list(out.rglob("*.tmp"))
