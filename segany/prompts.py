"""Validation of prompts in the original image frame. Every message says what was wrong and what is accepted."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from segany.errors import InvalidPromptError

#: Points may lie this far outside the image (fraction of the side, at least one pixel): clicks on the border
#: land a little outside after scaling in some front ends.
COORD_TOLERANCE = 0.01
MAX_POINTS_PER_PROMPT = 64
LOW_RES_SIZE = 256


@dataclass(frozen=True)
class Prompt:
    """One validated prompt for one object.

    Attributes:
        points: (N, 2) float64 (x, y) in original pixels, or None.
        labels: (N,) int64 with 1 = foreground, 0 = background, or None.
        box: (4,) float64 x0, y0, x1, y1 in original pixels, or None.
        mask_input: (1, 256, 256) float32 low-res logits of an earlier prediction, or None.
    """

    points: np.ndarray | None = None
    labels: np.ndarray | None = None
    box: np.ndarray | None = None
    mask_input: np.ndarray | None = None

    @property
    def num_points(self) -> int:
        return 0 if self.points is None else len(self.points)


def make_prompt(
    original_size: tuple[int, int],
    points=None,
    labels=None,
    box=None,
    mask_input=None,
    max_points: int = MAX_POINTS_PER_PROMPT,
) -> Prompt:
    """Check and normalise one prompt given in the original frame (H, W)."""
    height, width = original_size
    pts = lab = bx = mask = None
    if points is not None and np.ndim(points) == 0:
        raise InvalidPromptError(f"points must be [[x, y], ...], got a single value {points!r:.40}")
    if points is not None and len(points) > 0:
        pts = _finite_array(points, "points", np.float64)
        if pts.ndim != 2 or pts.shape[1] != 2:
            raise InvalidPromptError(f"points must have shape (N, 2) as [[x, y], ...], got {tuple(pts.shape)}")
        if len(pts) > max_points:
            raise InvalidPromptError(f"too many points in one prompt: {len(pts)}, at most {max_points} allowed")
        if labels is None:
            raise InvalidPromptError("labels are required with points: 1 for foreground, 0 for background")
        lab = _finite_array(labels, "labels", np.float64)
        if lab.shape != (len(pts),):
            raise InvalidPromptError(f"labels must have shape ({len(pts)},) to match the points, got {lab.shape}")
        if not ((lab == 0) | (lab == 1)).all():  # not np.isin: 30 us of set logic on a few labels
            bad = sorted({float(v) for v in lab if v not in (0, 1)})
            raise InvalidPromptError(f"labels must be 1 (foreground) or 0 (background), got {bad}")
        lab = lab.astype(np.int64)
        _check_inside(pts[:, 0], width, "x", "point")
        _check_inside(pts[:, 1], height, "y", "point")
    elif labels is not None and len(labels) > 0:
        raise InvalidPromptError("labels were given without points")
    if box is not None:
        bx = _finite_array(box, "box", np.float64).reshape(-1)
        if bx.shape != (4,):
            raise InvalidPromptError(f"box must be [x0, y0, x1, y1], got {bx.size} values")
        if bx[2] < bx[0] or bx[3] < bx[1]:
            raise InvalidPromptError(
                f"box is inverted: [x0, y0, x1, y1] = {bx.tolist()}, need x0 <= x1 and y0 <= y1"
            )
        _check_inside(bx[[0, 2]], width, "x", "box")
        _check_inside(bx[[1, 3]], height, "y", "box")
    if mask_input is not None:
        mask = _finite_array(mask_input, "mask_input", np.float32)
        if mask.shape in ((LOW_RES_SIZE, LOW_RES_SIZE), (1, LOW_RES_SIZE, LOW_RES_SIZE)):
            mask = mask.reshape(1, LOW_RES_SIZE, LOW_RES_SIZE)
        else:
            raise InvalidPromptError(
                f"mask_input must be low-res logits of shape (256, 256) or (1, 256, 256) (a previous result's "
                f"low_res_logits[i]), got {tuple(mask.shape)}"
            )
    if pts is None and bx is None and mask is None:
        raise InvalidPromptError("a prompt needs at least one of: points with labels, a box, a mask_input")
    return Prompt(pts, lab, bx, mask)


def _finite_array(value, name: str, dtype) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=dtype)
    except (TypeError, ValueError):
        raise InvalidPromptError(f"{name} must be numeric, got {type(value).__name__}") from None
    if not np.isfinite(arr).all():
        raise InvalidPromptError(f"{name} contains NaN or infinite values")
    return arr


def _check_inside(values: np.ndarray, size: int, axis: str, what: str) -> None:
    tol = max(1.0, COORD_TOLERANCE * size)
    if (values < -tol).any() or (values > size + tol).any():
        bad = values[(values < -tol) | (values > size + tol)][0]
        raise InvalidPromptError(
            f"{what} {axis}={bad:g} is outside the image: {axis} must be within [0, {size}] "
            f"(original pixels, tolerance {tol:g})"
        )
