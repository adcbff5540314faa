"""Automatic mask generation ("segment everything"): a grid of point prompts, quality filters, box NMS, crops.

Same parameters, defaults, order and records as the public ``SamAutomaticMaskGenerator`` (see
reference/SAM_FACTS.md): on the same weights with ``precision="exact"`` the records are identical (pinned by
``tests/oracle/test_everything_parity.py``). What differs is how the work is done:

* the predicted-IoU filter runs before upscaling (the IoU comes from the decoder, so only masks that pass are
  upscaled; the public generator upscales all three masks of every point to full size first);
* upscaled logits are processed in memory-bounded chunks: stability counts, threshold, boxes, crop-edge filter;
* masks that survive the filters are kept bit-packed until NMS; only the final survivors are unpacked and
  encoded (COCO RLE via pycocotools);
* box NMS is written here (torchvision's ``batched_nms`` semantics with one category, including the order of ties),
  so segany does not need torchvision.

Frames: ``crop_box`` is ``[x0, y0, x1, y1]`` in original pixels (exclusive ends); mask boxes are the SAM convention
(inclusive last row/column); point coordinates are original pixels (x, y).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from segany.embedding import ImageEmbedding
from segany.errors import InvalidInputError
from segany.images import as_rgb_uint8
from segany.masks import encode_rle_batch, mask_area, masks_to_boxes_xyxy
from segany.modeling.fast_decoder import FastMaskDecoder, pixel_major_to_raster
from segany.predictor import MASK_THRESHOLD, Predictor
from segany.transforms import coords_to_input, upscale_logits

from .ops import (
    box_nms,
    build_all_layer_point_grids,
    generate_crop_boxes,
    near_crop_edge,
    remove_small_regions,
    stability_score,
    uncompressed_rle,
)

OUTPUT_MODES = ("binary_mask", "coco_rle", "uncompressed_rle")
#: Bytes of float32 logits upscaled at once (the public generator holds a whole batch: 3 x points_per_batch masks).
UPSCALE_BUDGET_BYTES = 256 * 2**20
#: Prompts per pass through the decoder's image-side work on the CPU (see ``decode_in_chunks``).
DECODER_CHUNK = 4


@dataclass(frozen=True)
class EverythingSettings:
    """Parameters of automatic mask generation; names and defaults of the public generator.

    Attributes:
        points_per_side: grid points along each side (``points_per_side**2`` prompts per crop), or None when
            ``point_grids`` is given.
        points_per_batch: prompts per decoder call.
        pred_iou_thresh: keep masks whose predicted IoU is > this (no filter when <= 0).
        stability_score_thresh: keep masks whose stability score is >= this (no filter when <= 0).
        stability_score_offset: logit offset of the stability score (count(> +offset) / count(> -offset)).
        box_nms_thresh: box IoU above which a lower-scored mask of the same crop is dropped.
        crop_n_layers: extra layers of crops; layer i has (2**i)**2 crops.
        crop_nms_thresh: box IoU for NMS between crops (smaller crops win).
        crop_overlap_ratio: overlap of first-layer crops as a fraction of the short image side.
        crop_n_points_downscale_factor: layer i uses ``points_per_side / factor**i`` points per side.
        point_grids: explicit grids per layer, (N, 2) in [0, 1] (x, y); exclusive with ``points_per_side``.
        min_mask_region_area: when > 0, fill holes and drop islands smaller than this many pixels (OpenCV),
            then NMS again.
        output_mode: ``"binary_mask"`` ((H, W) bool), ``"coco_rle"`` (compressed, JSON-ready) or
            ``"uncompressed_rle"`` (run lengths as a list).
    """

    points_per_side: int | None = 32
    points_per_batch: int = 64
    pred_iou_thresh: float = 0.88
    stability_score_thresh: float = 0.95
    stability_score_offset: float = 1.0
    box_nms_thresh: float = 0.7
    crop_n_layers: int = 0
    crop_nms_thresh: float = 0.7
    crop_overlap_ratio: float = 512 / 1500
    crop_n_points_downscale_factor: int = 1
    point_grids: tuple[np.ndarray, ...] | None = field(default=None, compare=False)
    min_mask_region_area: int = 0
    output_mode: str = "binary_mask"

    def __post_init__(self) -> None:
        if (self.points_per_side is None) == (self.point_grids is None):
            raise InvalidInputError("give exactly one of points_per_side and point_grids")
        if self.points_per_side is not None and self.points_per_side < 1:
            raise InvalidInputError(f"points_per_side must be >= 1, got {self.points_per_side}")
        if self.points_per_batch < 1:
            raise InvalidInputError(f"points_per_batch must be >= 1, got {self.points_per_batch}")
        if self.crop_n_layers < 0:
            raise InvalidInputError(f"crop_n_layers must be >= 0, got {self.crop_n_layers}")
        if self.crop_n_points_downscale_factor < 1:
            raise InvalidInputError(
                f"crop_n_points_downscale_factor must be >= 1, got {self.crop_n_points_downscale_factor}"
            )
        if self.points_per_side is not None:
            deepest = int(self.points_per_side / self.crop_n_points_downscale_factor**self.crop_n_layers)
            if deepest < 1:  # the public generator divides by zero here
                raise InvalidInputError(
                    f"points_per_side {self.points_per_side} downscaled by {self.crop_n_points_downscale_factor} for "
                    f"each of {self.crop_n_layers} crop layers leaves no point in the last layer; use more points, "
                    "fewer layers or a smaller downscale factor"
                )
        if self.point_grids is not None and len(self.point_grids) < self.crop_n_layers + 1:
            raise InvalidInputError(
                f"point_grids needs one grid per layer: {self.crop_n_layers + 1}, got {len(self.point_grids)}"
            )
        if self.min_mask_region_area < 0:
            raise InvalidInputError(f"min_mask_region_area must be >= 0, got {self.min_mask_region_area}")
        if self.output_mode not in OUTPUT_MODES:
            raise InvalidInputError(f"output_mode must be one of {OUTPUT_MODES}, got {self.output_mode!r}")
        for name in ("box_nms_thresh", "crop_nms_thresh", "crop_overlap_ratio"):
            value = getattr(self, name)
            if not math.isfinite(value):
                raise InvalidInputError(f"{name} must be a finite number, got {value}")
        if not 0 <= self.crop_overlap_ratio < 1:  # a fraction of the short side; 1 or more makes empty crops
            raise InvalidInputError(f"crop_overlap_ratio must be in [0, 1), got {self.crop_overlap_ratio}")
        if not (math.isfinite(self.stability_score_offset) and self.stability_score_offset >= 0):
            raise InvalidInputError(f"stability_score_offset must be >= 0, got {self.stability_score_offset}")

    def grids(self) -> list[np.ndarray]:
        """Point grid of every crop layer, (N_i, 2) float64 (x, y) in [0, 1]."""
        if self.point_grids is not None:
            return [np.asarray(g, dtype=np.float64).reshape(-1, 2) for g in self.point_grids]
        return build_all_layer_point_grids(
            self.points_per_side, self.crop_n_layers, self.crop_n_points_downscale_factor
        )


# ---------------------------------------------------------------------------------------------------- geometry


@dataclass
class _Candidates:
    """Masks of one crop that passed the filters; masks bit-packed over the crop's (h, w), row-major."""

    packed: list[np.ndarray] = field(default_factory=list)
    boxes: list[np.ndarray] = field(default_factory=list)  # (K, 4) int64, crop frame
    iou: list[torch.Tensor] = field(default_factory=list)  # (K,) float32
    stability: list[torch.Tensor] = field(default_factory=list)  # (K,) float32
    points: list[np.ndarray] = field(default_factory=list)  # (K, 2) float64, crop frame


@dataclass
class _Masks:
    """Surviving masks of the whole image, in output order."""

    packed: np.ndarray  # (K, ceil(h*w/8)) uint8, each over its crop's size
    boxes: np.ndarray  # (K, 4) int64, original frame
    iou: torch.Tensor
    stability: torch.Tensor
    points: np.ndarray  # (K, 2) float64, original frame
    crop_boxes: np.ndarray  # (K, 4) int64 xyxy
    full: list[np.ndarray | None] = field(default_factory=list)  # masks replaced by the small-region step

    def select(self, keep: np.ndarray) -> _Masks:
        keep = np.asarray(keep, dtype=np.int64)
        return _Masks(
            self.packed[keep] if len(self.packed) else self.packed,
            self.boxes[keep],
            self.iou[torch.as_tensor(keep)],
            self.stability[torch.as_tensor(keep)],
            self.points[keep],
            self.crop_boxes[keep],
            [self.full[i] for i in keep] if self.full else [],
        )


@dataclass(frozen=True)
class CropEmbeddings:
    """Encoder output for automatic mask generation: one embedding per crop box (one box without crops)."""

    image_size: tuple[int, int]
    crop_boxes: list[list[int]]
    layers: list[int]
    embeddings: list[ImageEmbedding]


class AutomaticMaskGenerator:
    """Segment everything in an image with a :class:`Predictor` (any precision; ``"exact"`` for public parity).

    ``generate(image)`` = ``decode(encode(image))``; the two halves are separate so a pipeline can run the encoder
    of the next image while this one decodes.
    """

    def __init__(self, predictor: Predictor | None, settings: EverythingSettings | None = None, **overrides) -> None:
        if settings is None:
            settings = EverythingSettings(**overrides)
        elif overrides:
            from dataclasses import replace

            settings = replace(settings, **overrides)
        self.predictor = predictor
        self.settings = settings
        self.point_grids = settings.grids()
        #: side of the square model input (1024 for the SAM family)
        self.image_size = predictor.image_size if predictor is not None else 1024
        #: prompts per pass of the exact decoder's image-side work (see :func:`decode_in_chunks`; the ``fast``
        #: decoder runs its own passes of ``fast_decoder.PROMPTS_PER_PASS``).
        self.decoder_chunk = DECODER_CHUNK

    # ------------------------------------------------------------------------------------------- public API
    def generate(self, image: np.ndarray) -> list[dict]:
        """Records for every mask found in ``image`` (HxWx3 uint8 RGB; other layouts as ``Predictor.encode``)."""
        return self.decode(self.encode(image))

    def encode(self, image: np.ndarray) -> CropEmbeddings:
        """Run the image encoder on every crop of ``image``."""
        image = as_rgb_uint8(image)
        size = (int(image.shape[0]), int(image.shape[1]))
        boxes, layers = generate_crop_boxes(size, self.settings.crop_n_layers, self.settings.crop_overlap_ratio)
        embeddings = [self._encode_crop(image[y0:y1, x0:x1]) for x0, y0, x1, y1 in boxes]
        return CropEmbeddings(size, boxes, layers, embeddings)

    def _encode_crop(self, crop: np.ndarray) -> ImageEmbedding:
        return self.predictor.encode(crop)

    @torch.inference_mode()
    def decode(self, crops: CropEmbeddings) -> list[dict]:
        """Grid prompts, filters, NMS within and across crops, optional small-region clean-up -> records.

        Records (public generator's keys): ``segmentation`` (per ``output_mode``), ``area`` (int), ``bbox``
        [x, y, w, h] (ints, inclusive edges), ``predicted_iou``, ``point_coords`` [[x, y]], ``stability_score``,
        ``crop_box`` [x, y, w, h]; in the public order.
        """
        s = self.settings
        parts = [
            self._process_crop(emb, box, layer, crops.image_size)
            for emb, box, layer in zip(crops.embeddings, crops.crop_boxes, crops.layers)
        ]
        masks = _concat(parts)
        if len(crops.crop_boxes) > 1 and len(masks.boxes):
            cb = torch.as_tensor(masks.crop_boxes, dtype=torch.int64)
            scores = 1 / ((cb[:, 2] - cb[:, 0]) * (cb[:, 3] - cb[:, 1]))  # float32, smaller crops win
            masks = masks.select(box_nms(masks.boxes, scores, s.crop_nms_thresh))
        if s.min_mask_region_area > 0 and len(masks.boxes):
            masks = self._remove_small_regions(masks, crops.image_size)
        return self._records(masks, crops.image_size)

    # ---------------------------------------------------------------------------------------- per crop
    def _process_crop(
        self, emb: ImageEmbedding, crop_box: list[int], layer: int, image_size: tuple[int, int]
    ) -> _Masks:
        s = self.settings
        crop_h, crop_w = emb.original_size
        points = self.point_grids[layer] * np.array([[crop_w, crop_h]])
        found = _Candidates()
        for start in range(0, len(points), s.points_per_batch):
            self._process_batch(emb, points[start : start + s.points_per_batch], crop_box, image_size, found)
        if not found.boxes:
            return _empty_masks()
        boxes = np.concatenate(found.boxes)
        iou = torch.cat(found.iou)
        keep = box_nms(boxes, iou, s.box_nms_thresh)
        x0, y0 = crop_box[0], crop_box[1]
        return _Masks(
            packed=np.concatenate(found.packed)[keep],
            boxes=boxes[keep] + np.array([[x0, y0, x0, y0]], dtype=np.int64),
            iou=iou[torch.as_tensor(keep)],
            stability=torch.cat(found.stability)[torch.as_tensor(keep)],
            points=np.concatenate(found.points)[keep] + np.array([[x0, y0]], dtype=np.int64),
            crop_boxes=np.repeat(np.array([crop_box], dtype=np.int64), len(keep), axis=0),
        )

    def _process_batch(
        self,
        emb: ImageEmbedding,
        points: np.ndarray,
        crop_box: list[int],
        image_size: tuple[int, int],
        found: _Candidates,
    ) -> None:
        s = self.settings
        low_res, iou = self._decode_points(emb, points)
        num_masks = low_res.shape[1]
        low_res = low_res.flatten(0, 1)
        iou = iou.flatten(0, 1).float()
        if s.pred_iou_thresh > 0.0:
            candidates = torch.nonzero(iou > s.pred_iou_thresh).flatten()
        else:
            candidates = torch.arange(len(iou))
        if len(candidates) == 0:
            return
        crop_h, crop_w = emb.original_size
        per_mask = 4 * (crop_h * crop_w + self.image_size**2)
        chunk = max(1, UPSCALE_BUDGET_BYTES // per_mask)
        for start in range(0, len(candidates), chunk):
            idx = candidates[start : start + chunk]
            logits = upscale_logits(
                low_res[idx].unsqueeze(1), emb.input_size, emb.original_size, self.image_size
            ).squeeze(1)
            stability = stability_score(logits, MASK_THRESHOLD, s.stability_score_offset)
            if s.stability_score_thresh > 0.0:
                passed = torch.nonzero(stability >= s.stability_score_thresh).flatten()
                idx, logits, stability = idx[passed], logits[passed], stability[passed]
            if len(idx) == 0:
                continue
            masks = (logits > MASK_THRESHOLD).numpy()
            del logits
            boxes = masks_to_boxes_xyxy(masks)
            edge = near_crop_edge(boxes, crop_box, image_size)
            if edge.any():
                inner = np.flatnonzero(~edge)
                idx, masks, boxes, stability = idx[inner], masks[inner], boxes[inner], stability[inner]
                if len(idx) == 0:
                    continue
            found.packed.append(np.packbits(masks.reshape(len(masks), -1), axis=1))
            found.boxes.append(boxes)
            found.iou.append(iou[idx])
            found.stability.append(stability)
            found.points.append(points[idx.numpy() // num_masks])

    def _decode_points(self, emb: ImageEmbedding, points: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """One positive click per point (crop frame, float64) -> (B, 3, 256, 256) logits and (B, 3) IoU."""
        model = self.predictor.model
        device = self.predictor.device
        coords = coords_to_input(points, emb.original_size, self.image_size)
        # The public generator feeds float64 clicks, so "+0.5 pixel" and the normalisation happen in float64 before
        # the cast to float32. Feeding float32(c + 0.5) - 0.5 (exact in float32) makes the prompt encoder's own
        # "+0.5" land on the same float32 value, so the Fourier features match bit for bit.
        shifted = torch.from_numpy(coords + 0.5).float() - 0.5
        coords_t = shifted.to(device)[:, None, :]
        labels = torch.ones((len(points), 1), dtype=torch.int64, device=device)
        image_embeddings = emb.image_embeddings.to(device, torch.float32)
        low_res, iou = decode_in_chunks(
            model, image_embeddings, coords_t, labels, chunk=self.decoder_chunk, decoder=self.predictor.mask_decoder
        )
        return low_res.cpu(), iou.cpu()

    # ------------------------------------------------------------------------------------------ whole image
    def _remove_small_regions(self, masks: _Masks, image_size: tuple[int, int]) -> _Masks:
        """Fill small holes, drop small islands, prefer unchanged masks in a second NMS (public post-processing)."""
        s = self.settings
        full, scores = [], []
        for i in range(len(masks.boxes)):
            mask = _unpack_full(masks, i, image_size)
            mask, changed_holes = remove_small_regions(mask, s.min_mask_region_area, "holes")
            mask, changed_islands = remove_small_regions(mask, s.min_mask_region_area, "islands")
            changed = changed_holes or changed_islands
            full.append(mask if changed else None)
            scores.append(0.0 if changed else 1.0)
        boxes = masks.boxes.copy()
        for i, mask in enumerate(full):
            if mask is not None:
                boxes[i] = masks_to_boxes_xyxy(mask[None])[0]
        keep = box_nms(boxes, torch.tensor(scores, dtype=torch.float32), max(s.box_nms_thresh, s.crop_nms_thresh))
        updated = _Masks(masks.packed, boxes, masks.iou, masks.stability, masks.points, masks.crop_boxes, full)
        return updated.select(keep)

    def _records(self, masks: _Masks, image_size: tuple[int, int]) -> list[dict]:
        mode = self.settings.output_mode
        height, width = image_size
        records = []
        count = len(masks.boxes)
        chunk = max(1, UPSCALE_BUDGET_BYTES // max(1, height * width))
        for start in range(0, count, chunk):
            ids = range(start, min(count, start + chunk))
            full = np.stack([_unpack_full(masks, i, image_size) for i in ids])
            areas = mask_area(full)
            if mode == "coco_rle":
                segmentations = encode_rle_batch(full)
            elif mode == "uncompressed_rle":
                segmentations = [uncompressed_rle(m) for m in full]
            else:
                segmentations = list(full)
            for j, i in enumerate(ids):
                x0, y0, x1, y1 = (int(v) for v in masks.boxes[i])
                cx0, cy0, cx1, cy1 = (int(v) for v in masks.crop_boxes[i])
                records.append(
                    {
                        "segmentation": segmentations[j],
                        "area": int(areas[j]),
                        "bbox": [x0, y0, x1 - x0, y1 - y0],
                        "predicted_iou": float(masks.iou[i]),
                        "point_coords": [[float(v) for v in masks.points[i]]],
                        "stability_score": float(masks.stability[i]),
                        "crop_box": [cx0, cy0, cx1 - cx0, cy1 - cy0],
                    }
                )
        return records


def decode_in_chunks(
    model,
    image_embeddings: torch.Tensor,
    coords: torch.Tensor | None,
    labels: torch.Tensor | None,
    chunk: int = DECODER_CHUNK,
    boxes: torch.Tensor | None = None,
    multimask: bool = True,
    decoder: torch.nn.Module | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``model.decode(image_embeddings, coords, labels, boxes, None, multimask)``, scheduled for the CPU.

    The decoder's image-side work (two-way transformer, upscaling) is per prompt and memory-bound: each prompt
    carries its own (4096, 256) copy of the image tokens, so a batch of 64 streams gigabytes through DRAM. Running it
    ``chunk`` prompts at a time keeps the working set in cache (about 2x faster at 4 here). The token heads (the
    hypernetwork MLPs and the IoU head) still run on the whole batch: their GEMMs take another MKL path below ~16
    rows and would change the last bit. The transformer's token-side linears have 7 rows per prompt, so no pass
    runs fewer than ``chunk`` (4) prompts (below ~3 prompts they change path too); batches under ``2 * chunk`` run
    whole. The result is bit-identical to ``model.decode`` (``tests/test_everything.py`` pins it, and the oracle
    parity test runs through it).

    ``decoder`` replaces ``model.mask_decoder``, e.g. ``Predictor.mask_decoder`` (in ``fast`` precision the rewritten
    decoder of :mod:`segany.modeling.fast_decoder`: same values to float rounding, not bit for bit; it is called
    once and runs its own passes of ``PROMPTS_PER_PASS`` prompts, heads included).

    Args:
        coords: (B, N, 2) clicks in the input frame with labels (B, N), or None; boxes: (B, 4) input frame, or None.
    Returns:
        low-res logits (B, M, 256, 256) and IoU predictions (B, M): tokens 1..3 (multimask) or token 0.
    """
    prompt_encoder = model.prompt_encoder
    decoder = model.mask_decoder if decoder is None else decoder
    pixel_major = getattr(decoder, "pixel_major_output", False)  # the ONNX variant of the fast decoder
    sparse, dense = prompt_encoder(None if coords is None else (coords, labels), boxes, None)
    batch = sparse.shape[0]
    # The fast decoder is not bit-exact anyway and runs its own passes (fast_decoder.PROMPTS_PER_PASS).
    if batch < 2 * chunk or isinstance(decoder, FastMaskDecoder):
        # no mask inputs: one dense embedding for all prompts (the fast decoder then shares its first layer's
        # image-side work; the plain one broadcasts it, the same values)
        low_res, iou = decoder(image_embeddings, prompt_encoder.get_dense_pe(), sparse, dense[:1], multimask)
        return (pixel_major_to_raster(low_res, *image_embeddings.shape[-2:]) if pixel_major else low_res), iou
    # Chunks of `chunk` prompts, the remainder joining the last one: no pass runs fewer than `chunk` prompts.
    starts = list(range(0, batch - batch % chunk, chunk))
    bounds = [(s, s + chunk) for s in starts[:-1]] + [(starts[-1], batch)]
    image_pe = prompt_encoder.get_dense_pe()
    tokens = decoder.prompt_tokens(sparse)
    _, channels, height, width = image_embeddings.shape
    token_parts, image_parts = [], []
    for start, stop in bounds:
        part = slice(start, stop)
        n = stop - start
        # Broadcasting instead of the decoder's repeat_interleave: the same sums without two copies per prompt.
        src = image_embeddings + dense[part]
        pos_src = image_pe.expand(n, -1, -1, -1)
        hs, src = decoder.transformer(src, pos_src, tokens[part])
        token_parts.append(hs)
        image_parts.append(src)
    hs = torch.cat(token_parts)
    mask_tokens_out = hs[:, 1 : 1 + decoder.num_mask_tokens, :]
    hyper_in = decoder.hypernetwork_weights(mask_tokens_out)
    iou = decoder.iou_prediction_head(hs[:, 0, :])
    masks = []
    for k, (start, _) in enumerate(bounds):
        src = image_parts[k]
        n = src.shape[0]
        upscaled = decoder.output_upscaling(src.transpose(1, 2).reshape(n, channels, height, width))
        c, h, w = upscaled.shape[1:]
        masks.append((hyper_in[start : start + n] @ upscaled.reshape(n, c, h * w)).reshape(n, -1, h, w))
        image_parts[k] = None  # free as we go
    low_res = torch.cat(masks)
    low_res, iou = (low_res[:, 1:], iou[:, 1:]) if multimask else (low_res[:, :1], iou[:, :1])
    return low_res, iou


def _unpack_full(masks: _Masks, i: int, image_size: tuple[int, int]) -> np.ndarray:
    """Mask ``i`` as (H, W) bool in the original frame."""
    if masks.full and masks.full[i] is not None:
        return masks.full[i]
    x0, y0, x1, y1 = (int(v) for v in masks.crop_boxes[i])
    h, w = y1 - y0, x1 - x0
    crop = np.unpackbits(masks.packed[i], count=h * w).reshape(h, w).view(bool)
    if (h, w) == tuple(image_size):
        return crop
    full = np.zeros(image_size, dtype=bool)
    full[y0:y1, x0:x1] = crop
    return full


def _empty_masks() -> _Masks:
    return _Masks(
        np.zeros((0, 0), dtype=np.uint8),
        np.zeros((0, 4), dtype=np.int64),
        torch.zeros(0),
        torch.zeros(0),
        np.zeros((0, 2), dtype=np.float64),
        np.zeros((0, 4), dtype=np.int64),
    )


def _concat(parts: list[_Masks]) -> _Masks:
    parts = [p for p in parts if len(p.boxes)]
    if not parts:
        return _empty_masks()
    if len(parts) == 1:
        return parts[0]
    width = max(p.packed.shape[1] for p in parts)  # crops differ in size: pad the packed rows to one width
    packed = np.concatenate([np.pad(p.packed, ((0, 0), (0, width - p.packed.shape[1]))) for p in parts])
    return _Masks(
        packed,
        np.concatenate([p.boxes for p in parts]),
        torch.cat([p.iou for p in parts]),
        torch.cat([p.stability for p in parts]),
        np.concatenate([p.points for p in parts]),
        np.concatenate([p.crop_boxes for p in parts]),
    )
