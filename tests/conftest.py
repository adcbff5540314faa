"""Shared fixtures. Tests run on the CPU with few threads: CI machines have two cores."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

torch.set_num_threads(int(os.environ.get("SEGANY_TEST_THREADS", "2")))

#: Key lists of the released checkpoints (tests/data/reference/README.md), in the repository so CI checks them.
REFERENCE = Path(__file__).resolve().parent / "data" / "reference"


def random_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth random RGB uint8 image (blurred noise, so masks have structure)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(max(2, h // 16), max(2, w // 16), 3), dtype=np.uint8)
    from PIL import Image

    return np.asarray(Image.fromarray(small).resize((w, h), Image.BILINEAR))


@pytest.fixture(scope="session")
def tiny_model():
    import segany

    return segany.build_model("test-tiny", seed=0)
