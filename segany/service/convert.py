"""Conversions between the segany.v1 messages and segany's own types (server side)."""

from __future__ import annotations

import numpy as np

from segany.errors import InvalidInputError, InvalidPromptError
from segany.mask_outputs import OutputSpec, PromptOutput
from segany.prompts import LOW_RES_SIZE, Prompt, make_prompt
from segany.service.proto import segany_pb2 as pb

LOGITS_BYTES = LOW_RES_SIZE * LOW_RES_SIZE * 4
_DEFAULT_OUTPUTS = OutputSpec(rle=True, bbox=True)


def output_spec(request: pb.SegmentRequest) -> tuple[OutputSpec, bool]:
    """The OutputSpec of a request and whether mask ids are wanted."""
    if not request.HasField("outputs"):
        return _DEFAULT_OUTPUTS, False
    o = request.outputs
    spec = OutputSpec(
        rle=o.rle,
        rle_runs=o.rle_runs,
        png=o.png,
        polygons=o.polygons,
        bbox=o.bbox,
        low_res_logits=o.low_res_logits,
        best_only=o.best_only,
        polygon_tolerance=float(o.polygon_tolerance),
    )
    return spec.check(), o.mask_ids


def prompts_from_proto(
    messages, original_size: tuple[int, int], max_points: int, mask_lookup
) -> list[Prompt]:
    """Validate every prompt; the message names the prompt index. ``mask_lookup(id) -> (256, 256) logits``."""
    prompts = []
    for i, message in enumerate(messages):
        try:
            prompts.append(_prompt(message, original_size, max_points, mask_lookup))
        except InvalidInputError as exc:
            raise type(exc)(f"prompt {i}: {exc}") from None
    return prompts


def _prompt(message: pb.Prompt, original_size, max_points: int, mask_lookup) -> Prompt:
    points = labels = box = mask = None
    if message.points:
        if len(message.points) > max_points:  # before building arrays from a huge list
            raise InvalidPromptError(
                f"too many points in one prompt: {len(message.points)}, at most {max_points} allowed"
            )
        points = np.array([(p.x, p.y) for p in message.points], dtype=np.float64)
        labels = np.array([p.label for p in message.points], dtype=np.float64)
    if message.HasField("box"):
        b = message.box
        box = np.array([b.x0, b.y0, b.x1, b.y1], dtype=np.float64)
    which = message.WhichOneof("mask_input")
    if which == "mask_logits":
        data = message.mask_logits
        if len(data) != LOGITS_BYTES:
            raise InvalidPromptError(
                f"mask_logits must be {LOGITS_BYTES} bytes ({LOW_RES_SIZE}x{LOW_RES_SIZE} float32 little-endian "
                f"low-res logits of an earlier result), got {len(data)} bytes"
            )
        mask = np.frombuffer(data, dtype="<f4").reshape(LOW_RES_SIZE, LOW_RES_SIZE)
    elif which == "mask_id":
        mask = mask_lookup(message.mask_id)
    return make_prompt(original_size, points, labels, box, mask, max_points=max_points)


def prompt_results_to_proto(outputs: list[PromptOutput]) -> list[pb.PromptResult]:
    results = []
    for out in outputs:
        result = pb.PromptResult(scores=out.scores.tolist(), best_index=out.best_index)
        for cand in out.candidates:
            c = result.candidates.add(score=cand.score, index=cand.index)
            if cand.area is not None:
                c.area = cand.area
            if cand.rle is not None:
                h, w = cand.rle["size"]
                c.rle.height, c.rle.width = h, w
                counts = cand.rle["counts"]
                if isinstance(counts, str):
                    c.rle.counts = counts.encode("ascii")
                else:  # OutputSpec.rle_runs
                    c.rle.runs = np.ascontiguousarray(counts, dtype="<u4").tobytes()
            if cand.png is not None:
                c.png = cand.png
            if cand.polygons is not None:
                for poly in cand.polygons:
                    p = c.polygons.add()
                    p.exterior.xy.extend(poly.exterior.reshape(-1).tolist())
                    for hole in poly.holes:
                        p.holes.add().xy.extend(hole.reshape(-1).tolist())
            if cand.bbox is not None:
                c.bbox.extend(cand.bbox)
            if cand.low_res_logits is not None:
                c.low_res_logits = np.ascontiguousarray(cand.low_res_logits, dtype="<f4").tobytes()
            if cand.mask_id is not None:
                c.mask_id = cand.mask_id
        results.append(result)
    return results
