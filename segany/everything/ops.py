"""Geometry and mask helpers of automatic mask generation: point grids, crop boxes, box NMS, small-region cleanup,
stability score, uncompressed RLE and the crop-edge filter. Each follows the public implementation's semantics
(reference/SAM_FACTS.md); ``tests/test_everything.py`` and the oracle parity test pin them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import product

import cv2
import numpy as np
import torch

from segany.errors import InvalidInputError
from segany.masks import rle_runs_batch

#: Distance in pixels under which a mask box counts as touching a crop edge (public ``is_box_near_crop_edge``).
CROP_EDGE_ATOL = 20
#: torchvision's ``batched_nms`` switches to per-category NMS plus a re-sort above this many boxes on the CPU.
_NMS_VANILLA_ABOVE = 1000


def build_point_grid(n_per_side: int) -> np.ndarray:
    """(n*n, 2) float64 (x, y) cell centres of an n x n grid over [0, 1]^2, row by row (x fastest)."""
    offset = 1 / (2 * n_per_side)
    side = np.linspace(offset, 1 - offset, n_per_side)
    xs = np.tile(side[None, :], (n_per_side, 1))
    ys = np.tile(side[:, None], (1, n_per_side))
    return np.stack([xs, ys], axis=-1).reshape(-1, 2)


def build_all_layer_point_grids(n_per_side: int, n_layers: int, scale_per_layer: int) -> list[np.ndarray]:
    """Grids for layers 0..n_layers; layer i has ``int(n_per_side / scale_per_layer**i)`` points per side."""
    return [build_point_grid(int(n_per_side / (scale_per_layer**i))) for i in range(n_layers + 1)]


def generate_crop_boxes(
    image_size: tuple[int, int], n_layers: int, overlap_ratio: float
) -> tuple[list[list[int]], list[int]]:
    """Crop boxes [x0, y0, x1, y1] (original pixels, exclusive ends) and their layer indices.

    Layer 0 is the whole image; layer i >= 1 has 2**i crops per side overlapping by
    ``int(overlap_ratio * short_side * 2 / 2**i)`` pixels, listed column by column (x0 outer, y0 inner).
    """
    height, width = image_size
    short_side = min(height, width)
    boxes, layers = [[0, 0, width, height]], [0]
    for layer in range(1, n_layers + 1):
        per_side = 2**layer
        overlap = int(overlap_ratio * short_side * (2 / per_side))
        crop_w = int(math.ceil((overlap * (per_side - 1) + width) / per_side))
        crop_h = int(math.ceil((overlap * (per_side - 1) + height) / per_side))
        xs = [int((crop_w - overlap) * i) for i in range(per_side)]
        ys = [int((crop_h - overlap) * i) for i in range(per_side)]
        for x0, y0 in product(xs, ys):
            boxes.append([x0, y0, min(x0 + crop_w, width), min(y0 + crop_h, height)])
            layers.append(layer)
    return boxes, layers


def box_nms(
    boxes_xyxy: torch.Tensor | np.ndarray, scores: torch.Tensor | np.ndarray, iou_threshold: float
) -> np.ndarray:
    """Greedy non-maximum suppression with ``torchvision.ops.batched_nms`` semantics for a single category.

    Boxes are visited by descending score; a box is dropped when its IoU with a kept box is > ``iou_threshold``.
    Areas have no +1. Arithmetic is float32 as in torchvision's kernel and the IoU is compared in float64 (the kernel
    compares a float against a double threshold). Ties: torchvision's kernel visits them in input order (a stable
    sort), and above 1000 boxes ``batched_nms`` re-sorts the kept indices (ascending) by score with torch's default,
    not stable, sort; the same torch call is made here, so tied scores come out in the same order.

    Args:
        boxes_xyxy: (N, 4) x0, y0, x1, y1 (any numeric dtype; converted to float32).
        scores: (N,) float scores.
    Returns:
        (K,) int64 indices of kept boxes, highest score first.
    """
    boxes = torch.as_tensor(boxes_xyxy).float().numpy()
    score = torch.as_tensor(scores)
    n = len(boxes)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    order = torch.sort(score, descending=True, stable=True).indices.numpy()
    b = boxes[order]
    x1, y1, x2, y2 = b[:, 0], b[:, 1], b[:, 2], b[:, 3]
    areas = (x2 - x1) * (y2 - y1)
    suppressed = np.zeros(n, dtype=bool)
    keep = []
    for i in range(n):
        if suppressed[i]:
            continue
        keep.append(i)
        rest = slice(i + 1, n)
        w = np.maximum(np.float32(0), np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]))
        h = np.maximum(np.float32(0), np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]))
        inter = w * h
        with np.errstate(invalid="ignore", divide="ignore"):
            iou = inter / ((areas[i] + areas[rest]) - inter)
        suppressed[rest] |= iou.astype(np.float64) > iou_threshold
    kept = order[np.asarray(keep, dtype=np.int64)]
    if n > _NMS_VANILLA_ABOVE:
        kept = np.sort(kept)
        kept = kept[torch.sort(score[torch.as_tensor(kept)], descending=True).indices.numpy()]
    return kept


def remove_small_regions(mask: np.ndarray, area_thresh: float, mode: str) -> tuple[np.ndarray, bool]:
    """Fill holes (``mode="holes"``) or drop islands (``"islands"``) smaller than ``area_thresh`` pixels.

    8-connected components (OpenCV). In "holes" mode every background component below the threshold is filled,
    including one touching the border; in "islands" mode, when every island is below the threshold the largest is
    kept. Returns the mask and whether it changed.
    """

    fill_holes = mode == "holes"
    if mode not in ("holes", "islands"):
        raise InvalidInputError(f"mode must be 'holes' or 'islands', got {mode!r}")
    working = (mask ^ fill_holes).astype(np.uint8)
    n_labels, regions, stats, _ = cv2.connectedComponentsWithStats(working, 8)
    sizes = stats[1:, cv2.CC_STAT_AREA]
    small = np.flatnonzero(sizes < area_thresh) + 1
    if len(small) == 0:
        return mask, False
    lut = np.zeros(n_labels, dtype=bool)
    if fill_holes:
        lut[0] = True  # label 0 is the mask itself
        lut[small] = True
    else:
        lut[1:] = True
        lut[small] = False
        if not lut.any():
            lut[int(np.argmax(sizes)) + 1] = True
    return lut[regions], True


def stability_score(logits: torch.Tensor, threshold: float, offset: float) -> torch.Tensor:
    """(K, H, W) logits -> (K,) float32 count(> threshold + offset) / count(> threshold - offset)."""
    high = torch.count_nonzero(logits > (threshold + offset), dim=(1, 2)).to(torch.int32)
    low = torch.count_nonzero(logits > (threshold - offset), dim=(1, 2)).to(torch.int32)
    return high / low


def uncompressed_rle(mask: np.ndarray) -> dict:
    """(H, W) bool -> ``{"size": [H, W], "counts": [runs...]}`` column-major, first run background."""
    h, w = mask.shape
    return {"size": [int(h), int(w)], "counts": rle_runs_batch(np.asarray(mask)[None])[0].tolist()}


# ------------------------------------------------------------------------------------------------- the generator


def near_crop_edge(boxes: np.ndarray, crop_box: Sequence[int], image_size: tuple[int, int]) -> np.ndarray:
    """(K,) True where a box (crop frame) lies within 20 px of a crop edge that is not an image edge."""
    x0, y0 = crop_box[0], crop_box[1]
    uncropped = boxes + np.array([x0, y0, x0, y0], dtype=np.int64)
    near_crop = np.abs(uncropped - np.asarray(crop_box, dtype=np.int64)) <= CROP_EDGE_ATOL
    image_box = np.array([0, 0, image_size[1], image_size[0]], dtype=np.int64)
    near_image = np.abs(uncropped - image_box) <= CROP_EDGE_ATOL
    return (near_crop & ~near_image).any(axis=1)
