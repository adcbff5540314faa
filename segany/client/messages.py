"""Client-side values and conversions: numpy and Python values <-> segany.v1 messages. No torch."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np

from segany import errors
from segany.client.errors import ERROR_BY_CODE, Internal, ServiceError
from segany.service.proto import segany_pb2 as pb

LOW_RES = 256
_IMAGE_ID = re.compile(r"[0-9a-f]{64}")
DTYPES = {"float32": pb.EMBEDDING_DTYPE_FLOAT32, "float16": pb.EMBEDDING_DTYPE_FLOAT16}


@dataclass(frozen=True)
class EmbeddedImage:
    """An image the server holds: pass it (or ``.id``) to ``segment``.

    Attributes:
        id: the server-computed image id (64 hex).
        height, width: original size (upright), pixels.
        cached: True when the server did not need to run the encoder.
        embedding: the container bytes when asked for (``segany.container.decode_container`` reads them).
    """

    id: str
    height: int
    width: int
    cached: bool
    model_fingerprint: str
    embedding: bytes | None = None

    @property
    def size(self) -> tuple[int, int]:
        return (self.height, self.width)


@dataclass
class SegmentResult:
    """Masks for one prompt, like :class:`segany.predictor.PredictionResult`.

    Attributes:
        masks: (C, H, W) bool at the original size (C = 3 multimask, 1 single or best_only); None when neither RLE
            nor PNG was requested.
        scores: (C,) float32 predicted IoU of the returned candidates.
        all_scores: scores of every candidate (differs from ``scores`` with best_only).
        indices: candidate index of each returned mask.
        low_res_logits: (C, 256, 256) float32 when requested (a valid ``mask_input``).
        mask_ids: server-side ids of the low-res masks when requested.
        boxes: (C, 4) int64 [x, y, w, h] when requested.
        polygons: per candidate, a list of ``(exterior (K, 2), [holes])`` float32 arrays when requested.
        pngs: per candidate, 1-bit PNG bytes when requested.
        areas: (C,) foreground pixel counts.
    """

    masks: np.ndarray | None
    scores: np.ndarray
    all_scores: np.ndarray
    indices: np.ndarray
    low_res_logits: np.ndarray | None = None
    mask_ids: list[str] | None = None
    boxes: np.ndarray | None = None
    polygons: list[list[tuple[np.ndarray, list[np.ndarray]]]] | None = None
    pngs: list[bytes] | None = None
    areas: np.ndarray | None = None

    @property
    def best(self) -> int:
        """Index (into ``masks``/``scores``) of the highest-scoring returned mask."""
        return int(np.argmax(self.scores))


@dataclass
class StreamResult:
    """One answer of :meth:`Client.segment_stream`: a result, a per-request error, or superseded."""

    object_id: str
    sequence: int
    result: SegmentResult | None = None
    error: ServiceError | None = None
    superseded: bool = False


@dataclass
class Outputs:
    """What ``segment`` asks the server for (``masks`` come from RLE).

    ``rle_runs`` asks for the RLE as binary run lengths rather than pycocotools' compressed string: decoding
    skips the string parse (2-4 ms on a noisy 1200x1800 mask), for 3-4x the bytes on the wire (a few KB per
    object-like mask). Either way ``masks`` are the same; ``rle_runs=False`` suits a slow link or an answer
    near the message size limit.
    """

    rle: bool = True
    rle_runs: bool = True
    png: bool = False
    polygons: bool = False
    bbox: bool = False
    low_res_logits: bool = False
    mask_ids: bool = False
    best_only: bool = False
    polygon_tolerance: float = 0.0

    def to_proto(self) -> pb.OutputOptions:
        return pb.OutputOptions(
            rle=self.rle, png=self.png, polygons=self.polygons, bbox=self.bbox, low_res_logits=self.low_res_logits,
            mask_ids=self.mask_ids, best_only=self.best_only, polygon_tolerance=self.polygon_tolerance,
            rle_runs=self.rle_runs,
        )


# ------------------------------------------------------------------------------------------------ conversion
def image_source(image: Any) -> pb.ImageSource:
    """bytes (file) | numpy array (pixels) | image id str | EmbeddedImage | os.PathLike (file) -> ImageSource."""
    if isinstance(image, EmbeddedImage):
        return pb.ImageSource(image_id=image.id)
    if isinstance(image, str):
        if _IMAGE_ID.fullmatch(image):
            return pb.ImageSource(image_id=image)
        raise errors.InvalidInputError(
            f"a string image must be an image id from embed() (64 hex characters), got {image!r:.80}; "
            "pass file contents as bytes or a pathlib.Path"
        )
    if isinstance(image, (bytes, bytearray, memoryview)):
        return pb.ImageSource(image_bytes=bytes(image))
    if isinstance(image, os.PathLike):
        try:
            with open(image, "rb") as f:
                return pb.ImageSource(image_bytes=f.read())
        except OSError as exc:
            raise errors.InvalidInputError(f"cannot read the image file {os.fspath(image)!r}: "
                                           f"{exc.strerror or exc}") from None
    if isinstance(image, np.ndarray):
        from segany.images import as_rgb_uint8

        array = image if image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] in (1, 3, 4) else \
            as_rgb_uint8(image)
        array = np.ascontiguousarray(array)
        h, w, c = array.shape
        return pb.ImageSource(raw=pb.RawImage(height=h, width=w, channels=c, pixels=array.tobytes()))
    raise errors.InvalidInputError(
        f"image must be file bytes, a numpy array, an image id or an EmbeddedImage, got {type(image).__name__}"
    )


def make_prompt(points=None, labels=None, box=None, mask_input=None) -> pb.Prompt:
    """Prompt message from numpy-like values in original pixels (validated by the server)."""
    prompt = pb.Prompt()
    if points is not None and len(points) > 0:
        pts = np.asarray(points, dtype=np.float64)
        if pts.shape == (2,):  # one [x, y]
            pts = pts[None]
        if pts.ndim != 2 or pts.shape[1] != 2:  # not reshaped: [[x0, y0, x1, y1]] is no pair of clicks
            raise errors.InvalidPromptError(f"points must be [x, y] or [[x, y], ...], got shape {pts.shape}")
        labs = np.asarray(labels if labels is not None else [], dtype=np.float64).reshape(-1)
        if len(labs) != len(pts):
            raise errors.InvalidPromptError(f"got {len(pts)} points but {len(labs)} labels; they must pair up")
        if not np.all(np.isin(labs, (0, 1))):
            raise errors.InvalidPromptError(f"labels must be 1 (foreground) or 0 (background), got {labs.tolist()}")
        for (x, y), lab in zip(pts, labs):
            prompt.points.add(x=float(x), y=float(y), label=int(lab))
    if box is not None:
        b = np.asarray(box, dtype=np.float64).reshape(-1)
        if b.size != 4:
            raise errors.InvalidPromptError(f"box must be [x0, y0, x1, y1], got {b.size} values")
        prompt.box.x0, prompt.box.y0, prompt.box.x1, prompt.box.y1 = (float(v) for v in b)
    if mask_input is not None:
        if isinstance(mask_input, str):
            prompt.mask_id = mask_input
        else:
            prompt.mask_logits = np.ascontiguousarray(mask_input, dtype="<f4").tobytes()
    return prompt


def prompt_from(spec: Any) -> pb.Prompt:
    if isinstance(spec, pb.Prompt):
        return spec
    if isinstance(spec, Mapping):
        return make_prompt(spec.get("points"), spec.get("labels"), spec.get("box"), spec.get("mask_input"))
    raise errors.InvalidInputError(f"a prompt must be a dict with points/labels/box/mask_input, got {spec!r:.80}")


def segment_request(image: Any, prompts: Iterable[Any], multimask: bool, outputs: Outputs) -> pb.SegmentRequest:
    request = pb.SegmentRequest(image=image_source(image), multimask=multimask, outputs=outputs.to_proto())
    request.prompts.extend(prompt_from(p) for p in prompts)
    return request


def parse_result(result: pb.PromptResult) -> SegmentResult:
    from segany.masks import decode_png, decode_rle

    cands = list(result.candidates)
    masks = None
    if cands and cands[0].HasField("rle"):
        try:
            masks = _stacked([decode_rle({"size": [c.rle.height, c.rle.width], "counts": _counts(c.rle)})
                              for c in cands])
        except errors.InvalidInputError as exc:  # the server's answer, not the caller's input
            raise Internal(f"the server sent an RLE that does not decode: {exc}", grpc.StatusCode.INTERNAL) from None
    elif cands and cands[0].png:
        masks = _stacked([decode_png(c.png) for c in cands])
    out = SegmentResult(
        masks=masks,
        scores=np.array([c.score for c in cands], dtype=np.float32),
        all_scores=np.array(result.scores, dtype=np.float32),
        indices=np.array([c.index for c in cands], dtype=np.int64),
        areas=np.array([c.area for c in cands], dtype=np.int64),
    )
    if cands and cands[0].low_res_logits:
        out.low_res_logits = np.stack([
            np.frombuffer(c.low_res_logits, dtype="<f4").reshape(LOW_RES, LOW_RES) for c in cands
        ]).astype(np.float32)
    if cands and cands[0].mask_id:
        out.mask_ids = [c.mask_id for c in cands]
    if cands and len(cands[0].bbox) == 4:
        out.boxes = np.array([list(c.bbox) for c in cands], dtype=np.int64)
    if cands and cands[0].png:
        out.pngs = [c.png for c in cands]
    if any(len(c.polygons) for c in cands):
        out.polygons = [
            [(_ring(p.exterior.xy), [_ring(h.xy) for h in p.holes]) for p in c.polygons] for c in cands
        ]
    return out


def _counts(rle: pb.RleMask) -> bytes | np.ndarray:
    """The compressed string, or the run lengths when the server sent them (asked with ``rle_runs``)."""
    if rle.runs:
        if len(rle.runs) % 4:
            raise Internal(f"the server sent {len(rle.runs)} bytes of RLE runs, not whole uint32 values",
                           grpc.StatusCode.INTERNAL)
        return np.frombuffer(rle.runs, dtype="<u4")
    return rle.counts


def _stacked(masks: list[np.ndarray]) -> np.ndarray:
    """(C, H, W); one mask (a best-only answer) as a view, not a 0.25 ms copy of a 1200x1800 mask."""
    return masks[0][None] if len(masks) == 1 else np.stack(masks)


def _ring(xy) -> np.ndarray:
    return np.asarray(xy, dtype=np.float32).reshape(-1, 2)


def embedded_from(response: pb.EmbedResponse) -> EmbeddedImage:
    return EmbeddedImage(response.image_id, response.height, response.width, response.cached,
                         response.model_fingerprint, response.embedding or None)


def stream_result_from(reply: pb.SegmentStreamResponse) -> StreamResult:
    out = StreamResult(reply.object_id, reply.sequence, superseded=reply.superseded)
    if reply.HasField("error"):
        code = getattr(grpc.StatusCode, reply.error.code, grpc.StatusCode.UNKNOWN)
        out.error = ERROR_BY_CODE.get(code, Internal)(reply.error.message, code)
    elif reply.HasField("response") and reply.response.results:
        out.result = parse_result(reply.response.results[0])
    return out


def channel_options(max_message_bytes: int) -> list[tuple[str, Any]]:
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
    ]


def channel_credentials(root_certificates, private_key, certificate_chain):
    return grpc.ssl_channel_credentials(root_certificates, private_key, certificate_chain)


def stream_request(object_id, sequence, source, prompt, multimask, outputs) -> pb.SegmentStreamRequest:
    req = pb.SegmentRequest(image=source, multimask=multimask, outputs=outputs.to_proto())
    req.prompts.append(prompt_from(prompt))
    return pb.SegmentStreamRequest(object_id=object_id, sequence=sequence, request=req)
