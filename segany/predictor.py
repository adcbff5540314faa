"""Stateless predictor: ``encode(image) -> ImageEmbedding`` once per image, then ``predict`` per prompt.

The predictor keeps no per-image state: an embedding is a value passed in, so one predictor serves many threads and
many images at once. Numpy at the edges, torch inside.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from segany.embedding import ImageEmbedding
from segany.errors import InvalidPromptError, ModelMismatchError
from segany.images import as_rgb_uint8
from segany.modeling import Sam
from segany.modeling.fast_decoder import fast_mask_decoder
from segany.optimize import configure, encoder_autocast
from segany.prompts import Prompt, make_prompt
from segany.transforms import (
    boxes_to_input,
    coords_to_input,
    resize_image,
    upscale_logits,
    upscale_logits_fast,
    upscale_masks_fast,
)

MASK_THRESHOLD = 0.0


@dataclass(frozen=True)
class PredictionResult:
    """Masks for one prompt.

    Attributes:
        masks: (C, H, W) bool at the original image size (C = 3 multimask, else 1).
        scores: (C,) float32 predicted IoU (raw head output, may leave [0, 1]).
        low_res_logits: (C, 256, 256) float32; ``low_res_logits[i]`` is a valid next ``mask_input``.
    """

    masks: np.ndarray
    scores: np.ndarray
    low_res_logits: np.ndarray

    @property
    def best(self) -> int:
        """Index of the highest-scoring mask."""
        return int(np.argmax(self.scores))


class Predictor:
    """Encode images and decode prompts with one model.

    Args:
        model: a :class:`Sam` (``segany.load_model``).
        precision: ``"fast"`` (default: SDPA everywhere, bf16 encoder where the CPU has bf16, the rewritten
            decoder of :mod:`segany.modeling.fast_decoder` and OpenCV upscaling) or ``"exact"`` (fp32 reference
            path, identical to the public implementation). See :mod:`segany.optimize`.
    """

    def __init__(self, model: Sam, precision: str = "fast") -> None:
        configure(model, precision)
        self.model = model.eval()
        self.precision = precision
        self.device = next(model.parameters()).device
        self.image_size = model.image_size
        self.fingerprint: str = getattr(model, "fingerprint", "unknown")
        with torch.inference_mode():  # a constant of the weights: computed once, not per prompt
            self._dense_pe = model.prompt_encoder.get_dense_pe()
        # fast: same values to float rounding (~1e-6), about 40% fewer multiply-adds per prompt; shares the weights
        fast = precision == "fast"
        self._mask_decoder = fast_mask_decoder(model.mask_decoder, for_onnx=False) if fast else model.mask_decoder

    @property
    def mask_decoder(self) -> torch.nn.Module:
        """The mask decoder this predictor runs: the model's own (exact) or its rewritten copy (fast)."""
        return self._mask_decoder

    # ------------------------------------------------------------------------------------------------ encoding
    def preprocess(self, image: np.ndarray) -> tuple[torch.Tensor, tuple[int, int], tuple[int, int]]:
        """RGB image (any accepted layout) -> normalised padded (1, 3, S, S), original (H, W), input (h, w)."""
        image = as_rgb_uint8(image)
        resized = resize_image(image, self.image_size)
        if not resized.flags.writeable:  # torch warns on read-only arrays (a caller's view, no resize needed)
            resized = resized.copy()
        x = torch.from_numpy(resized).to(self.device).permute(2, 0, 1)[None].float()
        return self.model.normalize_and_pad(x), image.shape[:2], resized.shape[:2]

    @torch.inference_mode()
    def encode(self, image: np.ndarray) -> ImageEmbedding:
        """Run the image encoder once: HxWx3 uint8 RGB (grayscale, RGBA, uint16 accepted) -> ImageEmbedding."""
        return self.encode_batch([image])[0]

    @torch.inference_mode()
    def encode_batch(self, images: Sequence[np.ndarray]) -> list[ImageEmbedding]:
        """Encode several images in one encoder call (what the engine's micro-batches use)."""
        self._check_precision()
        prepared = [self.preprocess(im) for im in images]
        batch = torch.cat([p[0] for p in prepared])
        if self.precision == "fast":  # matches the channels-last weights (segany.optimize.configure): no reorders
            batch = batch.contiguous(memory_format=torch.channels_last)
        with encoder_autocast(self.precision, self.device):
            features = self.model.image_encoder(batch)
        features = features.float()
        return [
            ImageEmbedding(features[i : i + 1].clone(), tuple(orig), tuple(inp), self.fingerprint)
            for i, (_, orig, inp) in enumerate(prepared)
        ]

    # ------------------------------------------------------------------------------------------------ decoding
    def predict(
        self,
        embedding: ImageEmbedding,
        points=None,
        labels=None,
        box=None,
        mask_input=None,
        multimask: bool = True,
        return_logits: bool = False,
    ) -> PredictionResult:
        """Masks for one prompt; coordinates in original pixels (x, y).

        Args:
            points: (N, 2) clicks, with ``labels`` (N,) 1 = foreground, 0 = background.
            box: [x0, y0, x1, y1].
            mask_input: (256, 256) or (1, 256, 256) logits, e.g. ``previous.low_res_logits[previous.best]``.
            multimask: three candidate masks (True) or one (False).
            return_logits: ``masks`` holds float32 logits at full size instead of booleans.
        """
        prompt = make_prompt(embedding.original_size, points, labels, box, mask_input)
        return self.predict_prompts(embedding, [prompt], multimask, return_logits)[0]

    def predict_batch(
        self,
        embedding: ImageEmbedding,
        boxes=None,
        points=None,
        labels=None,
        multimask: bool = False,
    ) -> list[PredictionResult]:
        """Many prompts on one image in one decoder run: one result per box (or per point set).

        Args:
            boxes: (B, 4) boxes, or None.
            points: (B, N, 2) point sets with ``labels`` (B, N), or None; with boxes, point set i goes with box i.
        """
        n = len(boxes) if boxes is not None else (len(points) if points is not None else 0)
        if n == 0:
            raise InvalidPromptError("predict_batch needs at least one box or point set")
        if points is not None and len(points) != n:
            raise InvalidPromptError(f"got {n} boxes but {len(points)} point sets; they must pair up")
        if points is not None and (labels is None or len(labels) != n):
            got = "no labels" if labels is None else f"{len(labels)} label sets"
            raise InvalidPromptError(f"got {n} point sets but {got}; give one label set per point set")
        prompts = [
            make_prompt(
                embedding.original_size,
                None if points is None else points[i],
                None if labels is None else labels[i],
                None if boxes is None else boxes[i],
            )
            for i in range(n)
        ]
        return self.predict_prompts(embedding, prompts, multimask)

    @torch.inference_mode()
    def predict_low_res(
        self, embedding: ImageEmbedding, prompts: Sequence[Prompt], multimask: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Decoder only: (B, M, 256, 256) low-res logits and (B, M) scores for validated prompts."""
        self._check_precision()
        self._check_embedding(embedding)
        logits, scores = [], []
        for group in _group_by_shape(prompts):
            lo, sc = self._decode_group(embedding, [prompts[i] for i in group], multimask)
            logits.append((group, lo))
            scores.append((group, sc))
        return _ungroup(logits, len(prompts)), _ungroup(scores, len(prompts))

    @torch.inference_mode()
    def predict_prompts(
        self,
        embedding: ImageEmbedding,
        prompts: Sequence[Prompt],
        multimask: bool = True,
        return_logits: bool = False,
    ) -> list[PredictionResult]:
        """Validated prompts -> one result each, masks at the original size."""
        low_res, scores = self.predict_low_res(embedding, prompts, multimask)
        low_np, scores_np = low_res.cpu().numpy(), scores.float().cpu().numpy()
        if self.precision == "fast":  # OpenCV's resize: same values to float rounding, several times faster
            sizes = (embedding.input_size, embedding.original_size, self.image_size)
            if return_logits:
                masks_np = upscale_logits_fast(low_np, *sizes)
            else:  # thresholded plane by plane: no full-size float array is allocated per call
                masks_np = upscale_masks_fast(low_np, *sizes, MASK_THRESHOLD)
        else:
            full_t = upscale_logits(low_res, embedding.input_size, embedding.original_size, self.image_size)
            masks_np = (full_t if return_logits else full_t > MASK_THRESHOLD).cpu().numpy()
        return [PredictionResult(masks_np[i], scores_np[i], low_np[i]) for i in range(len(prompts))]

    def _check_precision(self) -> None:
        """The model's modules are configured for one precision at a time (:func:`segany.optimize.configure`): a
        second Predictor (or an ONNX export) with another one changed them under this predictor."""
        current = getattr(self.model, "_segany_precision", self.precision)
        if current != self.precision:
            raise ModelMismatchError(
                f"this Predictor runs precision {self.precision!r}, but its model has since been configured for "
                f"{current!r} (by another Predictor on the same model, or an ONNX export): use one precision per "
                "model, or load a second copy of the model for the other"
            )

    def _check_embedding(self, embedding: ImageEmbedding) -> None:
        if embedding.model_fingerprint != self.fingerprint:
            raise ModelMismatchError(
                f"embedding was made by model {embedding.model_fingerprint}, this predictor runs {self.fingerprint}; "
                "encode the image again with this model"
            )

    def _decode_group(
        self, embedding: ImageEmbedding, prompts: Sequence[Prompt], multimask: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompts of the same structure (point count, box or not, mask or not) in one decoder call."""
        first = prompts[0]
        size = embedding.original_size
        dev = self.device
        coords = labels = boxes = masks = None
        if first.points is not None:
            pts = np.stack([coords_to_input(p.points, size, self.image_size) for p in prompts])
            coords = torch.as_tensor(pts, dtype=torch.float32, device=dev)
            labels = torch.as_tensor(np.stack([p.labels for p in prompts]), dtype=torch.int64, device=dev)
        if first.box is not None:
            bx = np.stack([boxes_to_input(p.box, size, self.image_size) for p in prompts])
            boxes = torch.as_tensor(bx, dtype=torch.float32, device=dev)
        if first.mask_input is not None:
            masks = torch.as_tensor(np.stack([p.mask_input for p in prompts]), dtype=torch.float32, device=dev)
        emb = embedding.image_embeddings.to(dev, torch.float32)
        sparse, dense = self.model.prompt_encoder(None if coords is None else (coords, labels), boxes, masks)
        if masks is None:
            # one no-mask embedding for all: the decoder's first layer then shares its image-side work (16 boxes,
            # shipped model, 2 threads: 590 -> 536 ms, session 10)
            dense = dense[:1]
        low_res, scores = self._mask_decoder(emb, self._dense_pe, sparse, dense, multimask)
        return low_res, scores  # the torch variant of the fast decoder returns raster order


def _group_by_shape(prompts: Sequence[Prompt]) -> list[list[int]]:
    groups: dict[tuple, list[int]] = {}
    for i, p in enumerate(prompts):
        groups.setdefault((p.num_points, p.box is not None, p.mask_input is not None), []).append(i)
    return list(groups.values())


def _ungroup(parts: list[tuple[list[int], torch.Tensor]], n: int) -> torch.Tensor:
    if len(parts) == 1:
        return parts[0][1]
    first = parts[0][1]
    out = first.new_empty((n, *first.shape[1:]))
    for idx, value in parts:
        out[torch.as_tensor(idx)] = value
    return out
