"""Where masks come from: the model in this process, or a running segany server (``--server``).

A backend has two steps so the pipeline can overlap them across images: ``encode(image) -> handle`` (the heavy
encoder) and ``label(handle, prompts) -> objects`` (decoder + mask encoding). Objects are dicts with
``segmentation`` (COCO RLE), ``category`` (index into the category table), ``score`` and ``extra``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from segany.annotate.sources import ObjectPrompt
from segany.errors import InvalidInputError, UnavailableError
from segany.everything import UPSCALE_BUDGET_BYTES, AutomaticMaskGenerator, EverythingSettings, decode_in_chunks
from segany.mask_outputs import mask_upscaler_for
from segany.masks import encode_rle_batch
from segany.transforms import boxes_to_input, coords_to_input

#: Prompts per decoder call when labelling from prompts (bounds the memory of full-size masks).
PROMPT_CHUNK = 32


def everything_objects(records: Sequence[dict]) -> list[dict]:
    """Generator records (``coco_rle`` output) -> objects; SAM's own fields go into ``extra``."""
    return [
        {
            "segmentation": r["segmentation"],
            "category": 0,
            "score": r["predicted_iou"],
            "extra": {
                "predicted_iou": r["predicted_iou"],
                "stability_score": r["stability_score"],
                "point_coords": r["point_coords"],
                "crop_box": r["crop_box"],
            },
        }
        for r in records
    ]


class LocalBackend:
    """The model runs in this process (``segany.Predictor``)."""

    def __init__(self, predictor, everything: EverythingSettings | None = None) -> None:
        self.predictor = predictor
        self.generator = None
        if everything is not None:
            self.generator = AutomaticMaskGenerator(predictor, replace(everything, output_mode="coco_rle"))

    def encode(self, image: np.ndarray) -> Any:
        if self.generator is not None:
            return self.generator.encode(image)
        return self.predictor.encode(image)

    def label(self, handle: Any, prompts: Sequence[ObjectPrompt] | None) -> list[dict]:
        if self.generator is not None:
            return everything_objects(self.generator.decode(handle))
        from segany.prompts import make_prompt

        size = handle.original_size
        resolved = [p.resolved(*size) for p in prompts or []]
        checked = [make_prompt(size, p.points, p.labels, p.box) for p in resolved]
        groups: dict[tuple, list[int]] = {}  # prompts of one structure share decoder calls
        for i, (p, c) in enumerate(zip(resolved, checked)):
            groups.setdefault((c.num_points, c.box is not None, p.multimask), []).append(i)
        objects: list[dict | None] = [None] * len(checked)
        for (_, _, multimask), ids in groups.items():
            for start in range(0, len(ids), PROMPT_CHUNK):
                chunk = ids[start : start + PROMPT_CHUNK]
                masks, scores = self._best_masks(handle, [checked[i] for i in chunk], multimask)
                for i, score, rle in zip(chunk, scores, encode_rle_batch(masks)):
                    objects[i] = {"segmentation": rle, "category": resolved[i].category, "score": float(score)}
        return [o for o in objects if o is not None]

    @torch.inference_mode()
    def _best_masks(self, emb, prompts: Sequence, multimask: bool) -> tuple[np.ndarray, np.ndarray]:
        """Prompts of one structure -> (n, H, W) bool masks (best candidate each) and (n,) scores.

        Same numbers as ``Predictor.predict_prompts`` (same conversions and decoder, via ``decode_in_chunks``), but
        only the chosen candidate is upscaled, in memory-bounded chunks.
        """
        predictor = self.predictor
        size, target, device = emb.original_size, predictor.image_size, predictor.device
        first = prompts[0]
        coords = labels = boxes = None
        if first.points is not None:
            pts = np.stack([coords_to_input(p.points, size, target) for p in prompts])
            coords = torch.as_tensor(pts, dtype=torch.float32, device=device)
            labels = torch.as_tensor(np.stack([p.labels for p in prompts]), dtype=torch.int64, device=device)
        if first.box is not None:
            bx = np.stack([boxes_to_input(p.box, size, target) for p in prompts])
            boxes = torch.as_tensor(bx, dtype=torch.float32, device=device)
        image_embeddings = emb.image_embeddings.to(device, torch.float32)
        low_res, scores = decode_in_chunks(
            predictor.model,
            image_embeddings,
            coords,
            labels,
            boxes=boxes,
            multimask=multimask,
            decoder=predictor.mask_decoder,
        )
        best = scores.argmax(dim=1)
        rows = torch.arange(len(prompts), device=low_res.device)
        chosen = low_res[rows, best].unsqueeze(1)
        per_mask = 4 * (size[0] * size[1] + target * target)
        step = max(1, UPSCALE_BUDGET_BYTES // per_mask)
        upscale = mask_upscaler_for(predictor.precision)  # OpenCV in fast precision, as Predictor.predict_prompts
        masks = np.concatenate([
            upscale(chosen[i : i + step], emb.input_size, size, target)[:, 0] for i in range(0, len(prompts), step)
        ])
        return masks, scores[rows, best].float().cpu().numpy()


class ServerBackend:
    """Masks from a running ``segany serve`` through :class:`segany.client.Client`: same model, same results."""

    def __init__(self, address: str, everything: EverythingSettings | None = None, timeout: float = 600.0,
                 token: str | None = None) -> None:
        try:
            from segany.client import Client, Unauthenticated
        except ImportError as exc:  # grpc is an optional extra
            raise UnavailableError(f"--server needs the gRPC client: pip install 'segany[server]' ({exc})") from None
        self.client = Client(address, timeout=timeout, token=token)
        try:
            self.client.wait_ready(timeout=30.0)
            self.client.model_info(timeout=30.0)  # health answers without a token; this call needs the right one
        except Unauthenticated as exc:
            raise InvalidInputError(f"segany server at {address} refused the token: {exc.message} (--token or "
                                    "SEGANY_AUTH_TOKEN)") from None
        except Exception as exc:  # noqa: BLE001 - any failure here means the server cannot be used
            raise UnavailableError(f"segany server at {address} is not reachable or not ready: {exc}") from None
        self.generator = None
        if everything is not None:
            from segany.annotate.remote import RemoteMaskGenerator

            self.generator = RemoteMaskGenerator(self.client, replace(everything, output_mode="coco_rle"))

    def encode(self, image: np.ndarray) -> Any:
        if self.generator is not None:
            return self.generator.encode(image)
        return self.client.embed(image)

    def label(self, handle: Any, prompts: Sequence[ObjectPrompt] | None) -> list[dict]:
        if self.generator is not None:
            return everything_objects(self.generator.decode(handle))
        size = handle.size
        resolved = [p.resolved(*size) for p in prompts or []]
        objects: list[dict | None] = [None] * len(resolved)
        for multimask in (False, True):
            ids = [i for i, p in enumerate(resolved) if p.multimask == multimask]
            for start in range(0, len(ids), PROMPT_CHUNK):
                chunk = ids[start : start + PROMPT_CHUNK]
                requests = [_prompt_dict(resolved[i]) for i in chunk]
                results = self.client.segment_many(handle.id, requests, multimask=multimask)
                masks = np.stack([r.masks[r.best] for r in results])
                for i, r, rle in zip(chunk, results, encode_rle_batch(masks)):
                    score = float(r.scores[r.best])
                    objects[i] = {"segmentation": rle, "category": resolved[i].category, "score": score}
        return [o for o in objects if o is not None]

    def close(self) -> None:
        self.client.close()


def _prompt_dict(prompt: ObjectPrompt) -> dict:
    out: dict = {}
    if prompt.points is not None:
        out["points"] = [list(p) for p in prompt.points]
        out["labels"] = list(prompt.labels or [1] * len(prompt.points))
    if prompt.box is not None:
        out["box"] = list(prompt.box)
    return out
