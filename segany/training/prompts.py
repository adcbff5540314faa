"""SAM-style prompt sampling from ground-truth masks, shared by training and evaluation.

All functions take numpy masks in one pixel frame and return coordinates in that same frame, (x, y) order.
"""

from __future__ import annotations

import cv2
import numpy as np


def random_point_inside(rng: np.random.Generator, mask: np.ndarray) -> tuple[float, float]:
    """A uniformly random pixel of a non-empty bool (H, W) mask, as (x, y)."""
    ys, xs = np.nonzero(mask)
    i = int(rng.integers(len(xs)))
    return float(xs[i]), float(ys[i])


def mask_box(mask: np.ndarray) -> tuple[float, float, float, float]:
    """Tight box (x0, y0, x1, y1) of a non-empty bool mask; x1, y1 are the last pixel indices (inclusive)."""
    ys, xs = np.nonzero(mask)
    return float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max())


def jittered_box(rng: np.random.Generator, mask: np.ndarray, noise_frac: float, max_px: float) -> np.ndarray:
    """The mask's box with each coordinate moved by N(0, noise_frac * side), clipped to ``max_px`` (SAM uses 10%
    of the side, up to 20 px). Returns float32 (4,) x0, y0, x1, y1 inside the image."""
    h, w = mask.shape
    x0, y0, x1, y1 = mask_box(mask)
    bw, bh = x1 - x0 + 1, y1 - y0 + 1
    noise = rng.normal(0.0, noise_frac, 4) * np.array([bw, bh, bw, bh])
    noise = np.clip(noise, -max_px, max_px)
    box = np.array([x0, y0, x1, y1]) + noise
    box = np.clip(box, 0, [w - 1, h - 1, w - 1, h - 1])
    if box[2] < box[0]:
        box[[0, 2]] = box[[2, 0]]
    if box[3] < box[1]:
        box[[1, 3]] = box[[3, 1]]
    return box.astype(np.float32)


def sam_jittered_box(rng: np.random.Generator, mask: np.ndarray) -> np.ndarray:
    """:func:`jittered_box` with SAM's training noise: 10% of the side, clipped to 20 px at a 1024 long side (scaled
    to the long side of ``mask``'s frame)."""
    return jittered_box(rng, mask, 0.1, 20.0 * max(mask.shape) / 1024)


def _largest_error_region(error: np.ndarray) -> np.ndarray | None:
    n, labels, stats, _ = cv2.connectedComponentsWithStats(error.astype(np.uint8), connectivity=8)
    if n <= 1:
        return None
    k = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return labels == k


def corrective_click(
    rng: np.random.Generator | None, pred: np.ndarray, gt: np.ndarray
) -> tuple[tuple[float, float], int] | None:
    """Next click for a prediction ``pred`` of ``gt`` (both bool (H, W)).

    With ``rng`` None (evaluation) the click is the centre-most point of the largest error region: the pixel farthest
    from the region's border (distance transform maximum). With an ``rng`` (training, as SAM) the click is a uniformly
    random pixel of the error, taken from the false negatives or false positives in proportion to their areas.
    Returns ((x, y), label) with label 1 where the object was missed and 0 where background was included, or None
    when the prediction is exact.
    """
    fn = gt & ~pred
    fp = pred & ~gt
    if rng is not None:
        n_fn, n_fp = int(fn.sum()), int(fp.sum())
        if n_fn + n_fp == 0:
            return None
        use_fn = rng.random() < n_fn / (n_fn + n_fp)
        x, y = random_point_inside(rng, fn if use_fn else fp)
        return (x, y), 1 if use_fn else 0
    region = _largest_error_region(fn | fp)
    if region is None:
        return None
    padded = np.pad(region, 1).astype(np.uint8)  # the image border counts as region border
    dist = cv2.distanceTransform(padded, cv2.DIST_L2, 5)[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
    label = 1 if gt[y, x] else 0
    return (float(x), float(y)), label
