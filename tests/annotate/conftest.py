"""Fixtures for the batch labelling tests: a saved tiny random checkpoint, small generated images, a CLI runner."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import random_image

#: Sizes (H, W) of the generated images; small so every test stays fast on two shared cores.
SIZES = {"a.png": (48, 64), "sub/b.jpg": (64, 40), "sub/deeper/c.png": (40, 40)}


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    import segany

    path = tmp_path_factory.mktemp("ckpt") / "tiny.pth"
    torch.save(segany.build_model("test-tiny", seed=0).state_dict(), path)
    return path


def write_images(folder: Path, sizes: dict[str, tuple[int, int]] = SIZES) -> dict[str, np.ndarray]:
    images = {}
    for seed, (name, (h, w)) in enumerate(sizes.items()):
        image = random_image(h, w, seed=seed + 1)
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(path, quality=95)
        images[name] = np.asarray(Image.open(path).convert("RGB"))
    return images


@pytest.fixture
def image_dir(tmp_path) -> Path:
    folder = tmp_path / "images"
    write_images(folder)
    return folder


def write_jsonl(path: Path, lines: list[dict]) -> Path:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return path


@pytest.fixture
def run_cli(capsys):
    """Run ``segany ...`` in this process; returns (exit code, stderr)."""
    from segany.cli.main import main

    def run(*args: str) -> tuple[int, str]:
        try:
            code = main([str(a) for a in args])
        except SystemExit as exc:  # argparse usage errors
            code = exc.code
        return code, capsys.readouterr().err

    return run
