"""Scene generator: deterministic per seed, masks non-empty, disjoint and consistent with the image."""

from __future__ import annotations

import numpy as np
import pytest

from segany.training.prompts import corrective_click, jittered_box, mask_box, random_point_inside
from segany.training.synthetic import EVAL_SETTINGS, TRAIN_SETTINGS, generate_scene


@pytest.mark.parametrize("settings", [TRAIN_SETTINGS, EVAL_SETTINGS])
def test_same_seed_same_scene(settings) -> None:
    a = generate_scene(settings, 3, 5)
    b = generate_scene(settings, 3, 5)
    assert np.array_equal(a.image, b.image)
    assert np.array_equal(a.masks, b.masks)
    c = generate_scene(settings, 4, 5)
    assert a.image.shape != c.image.shape or not np.array_equal(a.image, c.image)


def test_train_and_eval_streams_differ() -> None:
    a = generate_scene(TRAIN_SETTINGS, 0, 0)
    b = generate_scene(EVAL_SETTINGS, 0, 0)
    assert a.image.shape != b.image.shape or not np.array_equal(a.image, b.image)


@pytest.mark.parametrize("index", range(4))
def test_masks_are_valid_instances(index: int) -> None:
    s = generate_scene(TRAIN_SETTINGS, 1, index)
    h, w, c = s.image.shape
    assert c == 3 and s.image.dtype == np.uint8
    assert s.masks.dtype == bool and s.masks.shape[1:] == (h, w) and len(s.masks) >= 1
    assert (s.masks.reshape(len(s.masks), -1).sum(1) >= 48).all()
    assert s.masks.sum(0).max() <= 1  # visible parts never overlap
    # An object differs from its surroundings: mean colour inside vs a ring just outside.
    import cv2

    contrasts = []
    for m in s.masks:
        ring = cv2.dilate(m.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool) & ~m
        if ring.sum() > 20:
            contrasts.append(np.abs(s.image[m].mean(0) - s.image[ring].mean(0)).sum())
    assert contrasts and np.median(contrasts) > 10


def test_prompts_lie_on_the_object() -> None:
    s = generate_scene(TRAIN_SETTINGS, 2, 0)
    rng = np.random.default_rng(0)
    m = s.masks[0]
    x, y = random_point_inside(rng, m)
    assert m[int(y), int(x)]
    x0, y0, x1, y1 = mask_box(m)
    box = jittered_box(rng, m, 0.1, 20.0)
    assert np.abs(box - np.array([x0, y0, x1, y1])).max() <= 20.0 + 1e-4
    empty = np.zeros_like(m)
    (cx, cy), label = corrective_click(None, empty, m)
    assert label == 1 and m[int(cy), int(cx)]
    assert corrective_click(None, m, m) is None
