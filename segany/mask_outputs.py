"""What a segmentation call returns per candidate mask, and how it is produced from low-res logits.

Full-size masks are the expensive part of a decoder call (upsampling and encoding, not the decoder itself), so
only the candidates that are returned are upsampled, one prompt at a time, and each is encoded straight away into
the formats asked for; a 12 MP image with 64 prompts never holds 64 x 3 full-size masks at once.
"""

from __future__ import annotations

import secrets
import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch

from segany.errors import InvalidInputError
from segany.masks import (
    Polygon,
    encode_png,
    encode_rle_batch,
    mask_area,
    mask_to_polygons,
    masks_to_boxes_xyxy,
    rle_runs_batch,
)
from segany.predictor import MASK_THRESHOLD
from segany.transforms import upscale_logits, upscale_masks_fast


@dataclass(frozen=True)
class OutputSpec:
    """Which outputs to compute for each returned candidate.

    Attributes:
        rle: COCO compressed RLE (dict ``{"size": [H, W], "counts": str}``).
        rle_runs: the RLE uncompressed instead: ``counts`` is the ``uint32`` array of run lengths.
        png: 1-bit PNG bytes.
        polygons: :class:`segany.masks.Polygon` list (outer rings with holes), original pixels.
        bbox: ``[x, y, w, h]`` (SAM convention, inclusive edges).
        low_res_logits: (256, 256) float32 logits.
        masks: the (H, W) bool mask itself (in-process callers).
        best_only: only the highest-scoring candidate of each prompt.
        polygon_tolerance: Douglas-Peucker tolerance in pixels (0 = exact).
    """

    rle: bool = True
    rle_runs: bool = False
    png: bool = False
    polygons: bool = False
    bbox: bool = True
    low_res_logits: bool = False
    masks: bool = False
    best_only: bool = False
    polygon_tolerance: float = 0.0

    @property
    def needs_full_size(self) -> bool:
        return self.rle or self.png or self.polygons or self.bbox or self.masks

    def check(self) -> OutputSpec:
        if not np.isfinite(self.polygon_tolerance) or self.polygon_tolerance < 0:
            raise InvalidInputError(
                f"polygon_tolerance must be a finite number of pixels >= 0, got {self.polygon_tolerance}"
            )
        return self


@dataclass
class CandidateOutput:
    """One returned candidate mask of one prompt; fields not asked for are None."""

    index: int
    score: float
    area: int | None = None
    rle: dict | None = None
    png: bytes | None = None
    polygons: list[Polygon] | None = None
    bbox: list[int] | None = None
    low_res_logits: np.ndarray | None = None
    mask: np.ndarray | None = None
    mask_id: str | None = None


@dataclass
class PromptOutput:
    """All returned candidates of one prompt, plus every candidate's score."""

    scores: np.ndarray  # (C,) float32, all candidates
    best_index: int
    candidates: list[CandidateOutput]


def render_outputs(
    low_res: torch.Tensor,
    scores: torch.Tensor,
    input_size: tuple[int, int],
    original_size: tuple[int, int],
    image_size: int,
    spec: OutputSpec,
    precision: str = "exact",
) -> list[PromptOutput]:
    """Decoder output -> per-prompt outputs.

    Args:
        low_res: (B, C, 256, 256) float logits; scores: (B, C).
        input_size, original_size: (h, w) resized-before-padding and (H, W) original, pixels.
        image_size: the model's input side (1024).
        precision: the predictor's; upsampling follows the predictor's choice for it, so masks equal
            ``Predictor.predict``'s.
    """
    upscale = mask_upscaler_for(precision)
    scores_np = scores.float().cpu().numpy()
    low_np = low_res.float().cpu().numpy() if spec.low_res_logits else None
    results = []
    for b in range(low_res.shape[0]):
        best = int(np.argmax(scores_np[b]))
        chosen = [best] if spec.best_only else list(range(low_res.shape[1]))
        candidates = [CandidateOutput(index=c, score=float(scores_np[b, c])) for c in chosen]
        if spec.needs_full_size:
            masks = upscale(low_res[b : b + 1, chosen], input_size, original_size, image_size)[0]
            _fill_full_size(candidates, masks, spec)
        if low_np is not None:
            for cand in candidates:
                cand.low_res_logits = low_np[b, cand.index]
        results.append(PromptOutput(scores_np[b], best, candidates))
    return results


def mask_upscaler_for(precision: str):
    """(B, C, 256, 256) torch logits -> (B, C, H, W) bool numpy masks, the way the predictor makes them.

    ``fast``: OpenCV (:func:`segany.transforms.upscale_masks_fast`); ``exact``: torch, as the released models.
    """
    if precision == "fast":
        return lambda low, inp, orig, size: upscale_masks_fast(
            low.float().cpu().numpy(), inp, orig, size, MASK_THRESHOLD
        )
    return lambda low, inp, orig, size: (upscale_logits(low, inp, orig, size) > MASK_THRESHOLD).cpu().numpy()


def _fill_full_size(candidates: list[CandidateOutput], masks: np.ndarray, spec: OutputSpec) -> None:
    """Encode (C, H, W) bool masks into the candidates, in the formats of ``spec``."""
    if spec.rle and spec.rle_runs:
        height, width = (int(v) for v in masks.shape[1:])
        runs = rle_runs_batch(masks)
        rles = [{"size": [height, width], "counts": r} for r in runs]
        areas = [int(r[1::2].sum(dtype=np.int64)) for r in runs]  # the foreground runs
    else:
        rles = encode_rle_batch(masks) if spec.rle else None
        areas = mask_area(masks)
    boxes = masks_to_boxes_xyxy(masks) if spec.bbox else None
    for i, cand in enumerate(candidates):
        cand.area = int(areas[i])
        if rles is not None:
            cand.rle = rles[i]
        if boxes is not None:
            x0, y0, x1, y1 = (int(v) for v in boxes[i])
            cand.bbox = [x0, y0, x1 - x0, y1 - y0]
        if spec.png:
            cand.png = encode_png(masks[i])
        if spec.polygons:
            cand.polygons = mask_to_polygons(masks[i], spec.polygon_tolerance)
        if spec.masks:
            cand.mask = masks[i]


#: One mask as the store keeps it: 256x256 float16 low-res logits.
LOW_RES_BYTES = 256 * 256 * 2


class MaskStore:
    """Low-res logits kept for ``mask_id`` references: LRU bounded in bytes, thread-safe.

    Ids are random (``m`` + 32 hex), made here, never by a client. Logits are stored as float16 (a mask prompt
    is not sensitive to that rounding) with the fingerprint of the model that made them.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, tuple[str, np.ndarray]] = OrderedDict()
        self._bytes = 0

    def can_hold_one(self) -> bool:
        """Whether the budget holds one mask at all (a budget of 0 disables mask ids)."""
        return self.max_bytes >= LOW_RES_BYTES

    def put(self, fingerprint: str, logits: np.ndarray) -> str | None:
        stored = np.ascontiguousarray(logits, dtype=np.float16)  # a mask prompt tolerates fp16 rounding
        if stored.nbytes > self.max_bytes:
            return None
        mask_id = "m" + secrets.token_hex(16)
        with self._lock:
            while self._bytes + stored.nbytes > self.max_bytes:
                _, (_, old) = self._entries.popitem(last=False)
                self._bytes -= old.nbytes
            self._entries[mask_id] = (fingerprint, stored)
            self._bytes += stored.nbytes
        return mask_id

    def get(self, mask_id: str) -> tuple[str, np.ndarray] | None:
        with self._lock:
            entry = self._entries.get(mask_id)
            if entry is not None:
                self._entries.move_to_end(mask_id)
            return entry
