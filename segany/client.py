"""Python client for the segany gRPC service: numpy in, numpy out, typed errors. Never imports torch.

Example::

    from segany.client import Client
    with Client("127.0.0.1:50051") as c:
        img = c.embed(open("photo.jpg", "rb").read())        # or an (H, W, 3) uint8 array
        res = c.segment(img.id, points=[[x, y]], labels=[1], multimask=True)
        res.masks   # (3, H, W) bool
        res.scores  # (3,) float32

:class:`AsyncClient` has the same methods as coroutines. Errors are :class:`ServiceError` subclasses, one per
status code, each also a subclass of the matching :mod:`segany.errors` class (``NotFound`` is a
``NotFoundError``); ``.code`` is the ``grpc.StatusCode`` and ``.message`` the server's message. Only calls
answered UNAVAILABLE are retried (every unary RPC here is idempotent: an image id depends only on content), with
exponential back-off, within the call's timeout.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np

from segany import errors
from segany.service.proto import segany_pb2 as pb
from segany.service.proto import segany_pb2_grpc as pb_grpc

#: Default message size limit on both directions (the server's default too): large images and embeddings exceed
#: gRPC's 4 MiB default.
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
DEFAULT_TIMEOUT = 120.0
LOW_RES = 256
_IMAGE_ID = re.compile(r"[0-9a-f]{64}")
_DTYPES = {"float32": pb.EMBEDDING_DTYPE_FLOAT32, "float16": pb.EMBEDDING_DTYPE_FLOAT16}


# ------------------------------------------------------------------------------------------------ errors
class ServiceError(errors.SeganyError):
    """A call the server refused or could not complete.

    Attributes:
        code: the ``grpc.StatusCode``.
        message: the server's message (what was wrong and what is accepted).
        request_id: the server's request id for this call (find it in the server log), when known.
    """

    def __init__(self, message: str, code: grpc.StatusCode, request_id: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}"


class InvalidArgument(ServiceError, errors.InvalidInputError):
    grpc_code = "INVALID_ARGUMENT"


class NotFound(ServiceError, errors.NotFoundError):
    grpc_code = "NOT_FOUND"

    def __str__(self) -> str:  # LookupError's KeyError-like quoting does not apply, but be explicit
        return f"{self.code.name}: {self.message}"


class ResourceExhausted(ServiceError, errors.ResourceExhaustedError):
    grpc_code = "RESOURCE_EXHAUSTED"


class FailedPrecondition(ServiceError):
    grpc_code = "FAILED_PRECONDITION"


class Unavailable(ServiceError, errors.UnavailableError):
    grpc_code = "UNAVAILABLE"


class DeadlineExceeded(ServiceError, errors.DeadlineExceededError):
    grpc_code = "DEADLINE_EXCEEDED"


class Cancelled(ServiceError, errors.CancelledError):
    grpc_code = "CANCELLED"


class Unauthenticated(ServiceError, errors.UnauthenticatedError):
    grpc_code = "UNAUTHENTICATED"


class PermissionDenied(ServiceError):
    grpc_code = "PERMISSION_DENIED"


class Unimplemented(ServiceError):
    grpc_code = "UNIMPLEMENTED"


class Internal(ServiceError, errors.InternalError):
    grpc_code = "INTERNAL"


_BY_CODE: dict[grpc.StatusCode, type[ServiceError]] = {
    grpc.StatusCode[cls_.grpc_code]: cls_
    for cls_ in (InvalidArgument, NotFound, ResourceExhausted, FailedPrecondition, Unavailable, DeadlineExceeded,
                 Cancelled, Unauthenticated, PermissionDenied, Unimplemented, Internal)
}


def error_from_rpc(exc: grpc.RpcError) -> ServiceError:
    """The typed error for a failed call (sync or aio)."""
    code = exc.code() if callable(getattr(exc, "code", None)) else grpc.StatusCode.UNKNOWN
    message = exc.details() if callable(getattr(exc, "details", None)) else str(exc)
    request_id = None
    try:
        for key, value in exc.initial_metadata() or ():  # type: ignore[attr-defined]
            if key == "x-request-id":
                request_id = value
    except Exception:  # noqa: BLE001 - metadata is best effort (absent when the call never reached the server)
        pass
    cls = _BY_CODE.get(code, Internal)
    return cls(message or code.name, code, request_id)


# ------------------------------------------------------------------------------------------------ results
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
    """What ``segment`` asks the server for (``masks`` come from RLE)."""

    rle: bool = True
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
        with open(image, "rb") as f:
            return pb.ImageSource(image_bytes=f.read())
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
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
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


def _prompt_from(spec: Any) -> pb.Prompt:
    if isinstance(spec, pb.Prompt):
        return spec
    if isinstance(spec, Mapping):
        return make_prompt(spec.get("points"), spec.get("labels"), spec.get("box"), spec.get("mask_input"))
    raise errors.InvalidInputError(f"a prompt must be a dict with points/labels/box/mask_input, got {spec!r:.80}")


def segment_request(image: Any, prompts: Iterable[Any], multimask: bool, outputs: Outputs) -> pb.SegmentRequest:
    request = pb.SegmentRequest(image=image_source(image), multimask=multimask, outputs=outputs.to_proto())
    request.prompts.extend(_prompt_from(p) for p in prompts)
    return request


def parse_result(result: pb.PromptResult) -> SegmentResult:
    from segany.masks import decode_png, decode_rle

    cands = list(result.candidates)
    masks = None
    if cands and cands[0].HasField("rle"):
        masks = np.stack([
            decode_rle({"size": [c.rle.height, c.rle.width], "counts": c.rle.counts}) for c in cands
        ])
    elif cands and cands[0].png:
        masks = np.stack([decode_png(c.png) for c in cands])
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


def _ring(xy) -> np.ndarray:
    return np.asarray(xy, dtype=np.float32).reshape(-1, 2)


def _embedded(response: pb.EmbedResponse) -> EmbeddedImage:
    return EmbeddedImage(response.image_id, response.height, response.width, response.cached,
                         response.model_fingerprint, response.embedding or None)


def _stream_result(reply: pb.SegmentStreamResponse) -> StreamResult:
    out = StreamResult(reply.object_id, reply.sequence, superseded=reply.superseded)
    if reply.HasField("error"):
        code = getattr(grpc.StatusCode, reply.error.code, grpc.StatusCode.UNKNOWN)
        out.error = _BY_CODE.get(code, Internal)(reply.error.message, code)
    elif reply.HasField("response") and reply.response.results:
        out.result = parse_result(reply.response.results[0])
    return out


def _channel_options(max_message_bytes: int) -> list[tuple[str, Any]]:
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
    ]


def _credentials(root_certificates, private_key, certificate_chain):
    return grpc.ssl_channel_credentials(root_certificates, private_key, certificate_chain)


# ------------------------------------------------------------------------------------------------ clients
class _Base:
    def __init__(self, target: str, *, token: str | None, tls: bool, root_certificates: bytes | None,
                 private_key: bytes | None, certificate_chain: bytes | None, timeout: float | None,
                 max_message_bytes: int, retries: int, backoff: float) -> None:
        self.target = target
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self._options = _channel_options(max_message_bytes)
        self._secure = tls or root_certificates is not None or certificate_chain is not None
        self._creds = _credentials(root_certificates, private_key, certificate_chain) if self._secure else None

    def _delay(self, attempt: int) -> float:
        return self.backoff * (2**attempt) * (0.5 + random.random())


class Client(_Base):
    """Blocking client. Thread-safe (one channel, many concurrent calls).

    Args:
        target: ``host:port``.
        token: bearer token, when the server requires one.
        tls / root_certificates / private_key / certificate_chain: TLS (and mutual TLS with a client key and chain).
        timeout: default deadline per call, seconds (None: no deadline).
        max_message_bytes: send/receive limit; match the server's.
        retries: attempts after the first for UNAVAILABLE answers.
    """

    def __init__(self, target: str, *, token: str | None = None, tls: bool = False,
                 root_certificates: bytes | None = None, private_key: bytes | None = None,
                 certificate_chain: bytes | None = None, timeout: float | None = DEFAULT_TIMEOUT,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, retries: int = 3, backoff: float = 0.1) -> None:
        super().__init__(target, token=token, tls=tls, root_certificates=root_certificates, private_key=private_key,
                         certificate_chain=certificate_chain, timeout=timeout, max_message_bytes=max_message_bytes,
                         retries=retries, backoff=backoff)
        if self._secure:
            self._channel = grpc.secure_channel(target, self._creds, options=self._options)
        else:
            self._channel = grpc.insecure_channel(target, options=self._options)
        self._stub = pb_grpc.SeganyStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method, request, timeout: float | None, retry: bool = True):
        timeout = self.timeout if timeout is None else timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        attempt = 0
        while True:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                return method(request, timeout=remaining, metadata=self._metadata)
            except grpc.RpcError as exc:
                error = error_from_rpc(exc)
            delay = self._delay(attempt)
            if (not retry or error.code != grpc.StatusCode.UNAVAILABLE or attempt >= self.retries
                    or (deadline is not None and time.monotonic() + delay >= deadline)):
                raise error
            time.sleep(delay)
            attempt += 1

    def embed(self, image: Any, *, return_embedding: bool = False, embedding_dtype: str = "float32",
              timeout: float | None = None) -> EmbeddedImage:
        """Encode an image (file bytes, numpy array, or an id the server holds) and return its id."""
        if embedding_dtype not in _DTYPES:
            raise errors.InvalidInputError(f"embedding_dtype must be 'float32' or 'float16', got {embedding_dtype!r}")
        request = pb.EmbedRequest(image=image_source(image), return_embedding=return_embedding,
                                  embedding_dtype=_DTYPES[embedding_dtype])
        return _embedded(self._call(self._stub.Embed, request, timeout))

    def segment(self, image: Any, points=None, labels=None, box=None, mask_input=None, *, multimask: bool = True,
                outputs: Outputs | None = None, timeout: float | None = None, **output_flags: Any) -> SegmentResult:
        """Masks for one prompt on an image (id, EmbeddedImage, bytes or array); see :class:`SegmentResult`.

        ``output_flags`` set :class:`Outputs` fields, e.g. ``best_only=True``, ``low_res_logits=True``.
        """
        outputs = outputs or Outputs(**output_flags)
        request = segment_request(image, [make_prompt(points, labels, box, mask_input)], multimask, outputs)
        return parse_result(self._call(self._stub.Segment, request, timeout).results[0])

    def segment_many(self, image: Any, prompts: Sequence[Any], *, multimask: bool = False,
                     outputs: Outputs | None = None, timeout: float | None = None,
                     **output_flags: Any) -> list[SegmentResult]:
        """Many prompts (dicts with points/labels/box/mask_input) on one image in one call."""
        outputs = outputs or Outputs(**output_flags)
        request = segment_request(image, prompts, multimask, outputs)
        return [parse_result(r) for r in self._call(self._stub.Segment, request, timeout).results]

    def segment_stream(self, requests: Iterable[tuple[str, Mapping]], *, image: Any, multimask: bool = True,
                       outputs: Outputs | None = None, timeout: float | None = None) -> Iterator[StreamResult]:
        """Interactive session: ``requests`` yields ``(object_id, prompt dict)``; answers arrive as computed.

        A newer prompt for an object replaces its pending older one (answered ``superseded``). Not retried.
        """
        outputs = outputs or Outputs()
        source = image_source(image)

        def messages():
            for sequence, (object_id, prompt) in enumerate(requests):
                yield _stream_request(object_id, sequence, source, prompt, multimask, outputs)

        timeout = self.timeout if timeout is None else timeout
        try:
            for reply in self._stub.SegmentStream(messages(), timeout=timeout, metadata=self._metadata):
                yield _stream_result(reply)
        except grpc.RpcError as exc:
            raise error_from_rpc(exc) from None

    def model_info(self, timeout: float | None = None) -> pb.ModelInfo:
        return self._call(self._stub.GetModelInfo, pb.GetModelInfoRequest(), timeout)

    def decoder_onnx(self, timeout: float | None = None) -> bytes:
        return self._call(self._stub.GetDecoderOnnx, pb.GetDecoderOnnxRequest(), timeout).model

    def metrics(self, timeout: float | None = None) -> str:
        return self._call(self._stub.GetMetrics, pb.GetMetricsRequest(), timeout).text

    def health(self, service: str = "", timeout: float | None = 5.0) -> str:
        """``"SERVING"``, ``"NOT_SERVING"``, ...: the grpc.health.v1 status."""
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        stub = health_pb2_grpc.HealthStub(self._channel)
        response = self._call(stub.Check, health_pb2.HealthCheckRequest(service=service), timeout)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Poll health until SERVING; Unavailable when it does not come within ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self.health(timeout=max(0.1, min(5.0, deadline - time.monotonic()))) == "SERVING":
                    return
            except Unavailable:
                pass
            if time.monotonic() >= deadline:
                raise Unavailable(f"{self.target} did not report SERVING within {timeout:g}s",
                                  grpc.StatusCode.UNAVAILABLE)
            time.sleep(0.05)


class AsyncClient(_Base):
    """asyncio client with the same methods as :class:`Client` (as coroutines). Create it inside a running loop."""

    def __init__(self, target: str, *, token: str | None = None, tls: bool = False,
                 root_certificates: bytes | None = None, private_key: bytes | None = None,
                 certificate_chain: bytes | None = None, timeout: float | None = DEFAULT_TIMEOUT,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, retries: int = 3, backoff: float = 0.1) -> None:
        super().__init__(target, token=token, tls=tls, root_certificates=root_certificates, private_key=private_key,
                         certificate_chain=certificate_chain, timeout=timeout, max_message_bytes=max_message_bytes,
                         retries=retries, backoff=backoff)
        if self._secure:
            self._channel = grpc.aio.secure_channel(target, self._creds, options=self._options)
        else:
            self._channel = grpc.aio.insecure_channel(target, options=self._options)
        self._stub = pb_grpc.SeganyStub(self._channel)

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _call(self, method, request, timeout: float | None, retry: bool = True):
        timeout = self.timeout if timeout is None else timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        attempt = 0
        while True:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                return await method(request, timeout=remaining, metadata=self._metadata)
            except grpc.RpcError as exc:
                error = error_from_rpc(exc)
            delay = self._delay(attempt)
            if (not retry or error.code != grpc.StatusCode.UNAVAILABLE or attempt >= self.retries
                    or (deadline is not None and time.monotonic() + delay >= deadline)):
                raise error
            await asyncio.sleep(delay)
            attempt += 1

    async def embed(self, image: Any, *, return_embedding: bool = False, embedding_dtype: str = "float32",
                    timeout: float | None = None) -> EmbeddedImage:
        if embedding_dtype not in _DTYPES:
            raise errors.InvalidInputError(f"embedding_dtype must be 'float32' or 'float16', got {embedding_dtype!r}")
        request = pb.EmbedRequest(image=image_source(image), return_embedding=return_embedding,
                                  embedding_dtype=_DTYPES[embedding_dtype])
        return _embedded(await self._call(self._stub.Embed, request, timeout))

    async def segment(self, image: Any, points=None, labels=None, box=None, mask_input=None, *,
                      multimask: bool = True, outputs: Outputs | None = None, timeout: float | None = None,
                      **output_flags: Any) -> SegmentResult:
        outputs = outputs or Outputs(**output_flags)
        request = segment_request(image, [make_prompt(points, labels, box, mask_input)], multimask, outputs)
        return parse_result((await self._call(self._stub.Segment, request, timeout)).results[0])

    async def segment_many(self, image: Any, prompts: Sequence[Any], *, multimask: bool = False,
                           outputs: Outputs | None = None, timeout: float | None = None,
                           **output_flags: Any) -> list[SegmentResult]:
        outputs = outputs or Outputs(**output_flags)
        request = segment_request(image, prompts, multimask, outputs)
        return [parse_result(r) for r in (await self._call(self._stub.Segment, request, timeout)).results]

    async def segment_stream(self, requests, *, image: Any, multimask: bool = True, outputs: Outputs | None = None,
                             timeout: float | None = None):
        """Async generator of :class:`StreamResult`; ``requests`` is an (async) iterable of (object_id, prompt)."""
        outputs = outputs or Outputs()
        source = image_source(image)

        async def messages():
            sequence = 0
            if hasattr(requests, "__aiter__"):
                async for object_id, prompt in requests:
                    yield _stream_request(object_id, sequence, source, prompt, multimask, outputs)
                    sequence += 1
            else:
                for object_id, prompt in requests:
                    yield _stream_request(object_id, sequence, source, prompt, multimask, outputs)
                    sequence += 1

        timeout = self.timeout if timeout is None else timeout
        call = self._stub.SegmentStream(messages(), timeout=timeout, metadata=self._metadata)
        try:
            async for reply in call:
                yield _stream_result(reply)
        except grpc.RpcError as exc:
            raise error_from_rpc(exc) from None

    async def model_info(self, timeout: float | None = None) -> pb.ModelInfo:
        return await self._call(self._stub.GetModelInfo, pb.GetModelInfoRequest(), timeout)

    async def decoder_onnx(self, timeout: float | None = None) -> bytes:
        return (await self._call(self._stub.GetDecoderOnnx, pb.GetDecoderOnnxRequest(), timeout)).model

    async def metrics(self, timeout: float | None = None) -> str:
        return (await self._call(self._stub.GetMetrics, pb.GetMetricsRequest(), timeout)).text

    async def health(self, service: str = "", timeout: float | None = 5.0) -> str:
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        stub = health_pb2_grpc.HealthStub(self._channel)
        response = await self._call(stub.Check, health_pb2.HealthCheckRequest(service=service), timeout)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)


def _stream_request(object_id, sequence, source, prompt, multimask, outputs) -> pb.SegmentStreamRequest:
    req = pb.SegmentRequest(image=source, multimask=multimask, outputs=outputs.to_proto())
    req.prompts.append(_prompt_from(prompt))
    return pb.SegmentStreamRequest(object_id=object_id, sequence=sequence, request=req)


__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES", "AsyncClient", "Cancelled", "Client", "DeadlineExceeded", "EmbeddedImage",
    "FailedPrecondition", "Internal", "InvalidArgument", "NotFound", "Outputs", "PermissionDenied",
    "ResourceExhausted", "SegmentResult", "ServiceError", "StreamResult", "Unauthenticated", "Unavailable",
    "Unimplemented", "error_from_rpc", "image_source", "make_prompt",
]
