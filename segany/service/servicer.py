"""The segany.v1.Segany servicer: requests in, engine calls, responses out; errors become status codes once."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import importlib.util
import logging

import grpc
import numpy as np

from segany.embedding import PREPROCESS_VERSION
from segany.engine import Embedded, Engine, stage
from segany.errors import InvalidImageError, InvalidInputError, ResourceExhaustedError, SeganyError, UnavailableError
from segany.predictor import MASK_THRESHOLD
from segany.prompts import LOW_RES_SIZE
from segany.service import convert
from segany.service.interceptors import REQUEST_ID
from segany.service.metrics import ServiceMetrics
from segany.service.proto import segany_pb2 as pb
from segany.service.proto import segany_pb2_grpc as pb_grpc
from segany.service.settings import Settings

log = logging.getLogger("segany.service")

#: An image size no prompt coordinate can exceed: prompts are checked with it before an image is encoded.
_ANY_SIZE = (2**31, 2**31)
#: Put on a stream's reply queue when the server shuts down with the stream open.
_SHUTTING_DOWN = object()

_DTYPES = {pb.EMBEDDING_DTYPE_UNSPECIFIED: "float32", pb.EMBEDDING_DTYPE_FLOAT32: "float32",
           pb.EMBEDDING_DTYPE_FLOAT16: "float16"}


class _Refusal(Exception):
    """A status outside the segany.errors hierarchy (UNIMPLEMENTED), raised inside an RPC body."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def _internal_message() -> str:
    return f"internal error (request id {REQUEST_ID.get()}); the server log has the details"


def unary(needs_ready: bool = True):
    """Translate segany errors into status codes (once, here) and guard readiness."""

    def decorate(fn):
        @functools.wraps(fn)
        async def wrapper(self: SeganyServicer, request, context: grpc.aio.ServicerContext):
            try:
                if needs_ready:
                    self.check_ready()
                return await fn(self, request, context)
            except SeganyError as exc:
                await context.abort(grpc.StatusCode[exc.grpc_code], str(exc))
            except _Refusal as exc:
                await context.abort(exc.code, str(exc))
            except (asyncio.CancelledError, grpc.aio.AbortError):
                raise
            except Exception:
                log.exception("rid=%s unexpected error in %s", REQUEST_ID.get(), fn.__name__)
                await context.abort(grpc.StatusCode.INTERNAL, _internal_message())

        return wrapper

    return decorate


#: Replies a stream holds for a client that does not read them; then its decodes and its reading of requests wait.
STREAM_REPLY_BUFFER = 4
#: Objects of one stream decoded at once; a request for another object waits (unread) until one finishes.
STREAM_OBJECTS_IN_FLIGHT = 16


class SeganyServicer(pb_grpc.SeganyServicer):
    def __init__(self, engine: Engine, settings: Settings, metrics: ServiceMetrics, model) -> None:
        self.engine = engine
        self.settings = settings
        self.metrics = metrics
        self.model = model
        #: Why warm-up failed (set by the server), for the message of every call that waits on readiness.
        self.warm_up_error: str | None = None
        self._closing = asyncio.Event()
        self._onnx_task: asyncio.Task | None = None

    @property
    def accepting(self) -> bool:
        """False once shutdown began: new calls are refused and open streams are ended (UNAVAILABLE)."""
        return not self._closing.is_set()

    @accepting.setter
    def accepting(self, value: bool) -> None:
        if value:
            self._closing.clear()
        else:
            self._closing.set()

    def check_ready(self) -> None:
        if not self.accepting:
            raise UnavailableError("the server is shutting down; retry on another replica")
        if self.warm_up_error is not None:
            raise UnavailableError(f"this server's model failed to warm up and it will not become ready "
                                   f"({self.warm_up_error}); see the server log, or use another replica")
        if not self.engine.ready:
            raise UnavailableError("the model is still loading and warming up; retry in a moment "
                                   "(grpc.health.v1 reports SERVING once ready)")

    # --------------------------------------------------------------------------------------------- helpers
    async def _resolve(self, source: pb.ImageSource) -> Embedded:
        which = source.WhichOneof("source")
        if which == "image_bytes":
            return await self.engine.embed_bytes(source.image_bytes)
        if which == "image_id":
            return await self.engine.embed_id(source.image_id)
        if which == "raw":
            return await self.engine.embed_array(_raw_array(source.raw))
        raise InvalidInputError("no image given: set image.image_bytes (file bytes), image.raw (pixels) or "
                                "image.image_id (from Embed)")

    def _check_response_size(self, message) -> None:
        size = message.ByteSize()
        if size > self.settings.max_send_message_bytes:
            raise ResourceExhaustedError(
                f"the response would be {size} bytes, over this server's limit of "
                f"{self.settings.max_send_message_bytes}; ask for fewer outputs (RLE rather than PNG or "
                "low-res logits, compressed RLE rather than rle_runs, best_only) or fewer prompts per call"
            )

    async def _segment(self, request: pb.SegmentRequest) -> pb.SegmentResponse:
        self.engine.check_prompt_count(len(request.prompts))
        spec, keep = convert.output_spec(request)
        if request.image.WhichOneof("source") != "image_id":  # an image to encode: check the prompts first
            convert.prompts_from_proto(request.prompts, _ANY_SIZE, self.settings.max_points_per_prompt,
                                       self.engine.mask_logits)
        embedded = await self._resolve(request.image)
        prompts = convert.prompts_from_proto(
            request.prompts, embedded.original_size, self.settings.max_points_per_prompt, self.engine.mask_logits
        )
        outputs = await self.engine.segment(embedded.embedding, prompts, request.multimask, spec, keep)
        height, width = embedded.original_size
        with stage("serialize"):
            response = pb.SegmentResponse(image_id=embedded.image_id, height=height, width=width)
            response.results.extend(convert.prompt_results_to_proto(outputs))
        self._check_response_size(response)
        return response

    # --------------------------------------------------------------------------------------------- RPCs
    @unary()
    async def Embed(self, request: pb.EmbedRequest, context) -> pb.EmbedResponse:
        dtype = _DTYPES.get(request.embedding_dtype)
        if request.return_embedding and dtype is None:  # refused before any encode
            raise InvalidInputError(f"embedding_dtype {request.embedding_dtype} is unknown; use FLOAT32 or FLOAT16")
        embedded = await self._resolve(request.image)
        height, width = embedded.original_size
        response = pb.EmbedResponse(
            image_id=embedded.image_id, height=height, width=width, cached=embedded.cached,
            model_fingerprint=self.engine.fingerprint,
        )
        if request.return_embedding:
            with stage("serialize"):
                response.embedding = embedded.embedding.to_bytes(dtype)
        self._check_response_size(response)
        return response

    @unary()
    async def Segment(self, request: pb.SegmentRequest, context) -> pb.SegmentResponse:
        return await self._segment(request)

    async def SegmentStream(self, request_iterator, context):
        try:
            self.check_ready()
        except SeganyError as exc:
            await context.abort(grpc.StatusCode[exc.grpc_code], str(exc))
        # Bounded on purpose: a client that sends and does not read holds STREAM_REPLY_BUFFER replies here, then
        # the decodes wait on the queue, then reading waits on them, and gRPC's flow control holds the client.
        out: asyncio.Queue = asyncio.Queue(maxsize=STREAM_REPLY_BUFFER)
        pending: dict[str, pb.SegmentStreamRequest] = {}
        running: dict[str, asyncio.Task] = {}
        loop = asyncio.get_running_loop()

        async def work(object_id: str) -> None:
            while object_id in pending:
                req = pending.pop(object_id)
                await out.put(await self._stream_one(req))
            del running[object_id]

        admitting: list[pb.SegmentStreamRequest] = []  # read, waiting for a slot (answered even at shutdown)

        async def read_requests() -> None:
            async for req in request_iterator:
                oid = req.object_id
                if oid not in running:
                    admitting.append(req)
                    while len(running) >= STREAM_OBJECTS_IN_FLIGHT:
                        await asyncio.wait(list(running.values()), return_when=asyncio.FIRST_COMPLETED)
                    admitting.clear()
                # No wait from here to the replacement: the older request cannot start meanwhile.
                older = pending.get(oid)
                pending[oid] = req
                if oid not in running:
                    running[oid] = loop.create_task(work(oid))
                if older is not None:
                    self.metrics.superseded.inc()
                    await out.put(pb.SegmentStreamResponse(
                        object_id=older.object_id, sequence=older.sequence, superseded=True))

        async def read() -> None:
            reading = loop.create_task(read_requests())
            try:
                closing = loop.create_task(self._closing.wait())
                try:
                    await asyncio.wait({reading, closing}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    closing.cancel()
                shutting_down = not reading.done()
                if shutting_down:  # stop reading; what was read is answered, then the stream ends UNAVAILABLE
                    reading.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await reading
                    for req in admitting:  # read but never started: refused like the ones that start now
                        await out.put(await self._stream_one(req))
                else:
                    reading.result()  # a broken request stream ends the call with its error
                while running:
                    await asyncio.gather(*list(running.values()))
                await out.put(_SHUTTING_DOWN if shutting_down else None)
            except asyncio.CancelledError:
                reading.cancel()
                raise
            except Exception as exc:  # noqa: BLE001 - handed to the writer side, which ends the stream with it
                await out.put(exc)

        reader = loop.create_task(read())
        try:
            while True:
                item = await out.get()
                if item is None:
                    break
                if item is _SHUTTING_DOWN:
                    await context.abort(grpc.StatusCode.UNAVAILABLE, "the server is shutting down: the requests "
                                        "it had read are answered above; reopen the stream on another replica")
                if isinstance(item, BaseException):
                    if isinstance(item, SeganyError):
                        await context.abort(grpc.StatusCode[item.grpc_code], str(item))
                    raise item
                yield item
        finally:
            reader.cancel()
            for task in list(running.values()):
                task.cancel()

    async def _stream_one(self, req: pb.SegmentStreamRequest) -> pb.SegmentStreamResponse:
        reply = pb.SegmentStreamResponse(object_id=req.object_id, sequence=req.sequence)
        try:
            self.check_ready()
            reply.response.CopyFrom(await self._segment(req.request))
        except SeganyError as exc:
            reply.error.code, reply.error.message = exc.grpc_code, str(exc)
        except Exception:
            log.exception("rid=%s unexpected error in SegmentStream", REQUEST_ID.get())
            reply.error.code, reply.error.message = "INTERNAL", _internal_message()
        return reply

    @unary(needs_ready=False)
    async def GetModelInfo(self, request, context) -> pb.ModelInfo:
        s = self.settings
        shape = [1, 256, 64, 64]
        info = pb.ModelInfo(
            variant=str(getattr(self.model, "variant", "unknown")),
            fingerprint=self.engine.fingerprint,
            image_size=int(self.engine.predictor.image_size),
            embedding_shape=shape,
            preprocess=PREPROCESS_VERSION,
            mask_threshold=MASK_THRESHOLD,
            low_res_size=LOW_RES_SIZE,
            decoder_onnx_available=self._decoder_onnx_available(),
            ready=self.engine.ready and self.accepting,
        )
        info.limits.max_receive_message_bytes = s.max_receive_message_bytes
        info.limits.max_send_message_bytes = s.max_send_message_bytes
        info.limits.max_image_bytes = s.max_image_bytes
        info.limits.max_image_pixels = s.max_image_pixels
        info.limits.max_image_side = s.max_image_side
        info.limits.max_points_per_prompt = s.max_points_per_prompt
        info.limits.max_prompts_per_request = s.max_prompts_per_request
        info.limits.max_encode_queue = s.encode_queue
        return info

    @unary(needs_ready=False)
    async def GetDecoderOnnx(self, request, context) -> pb.DecoderOnnx:
        provider = self.settings.decoder_onnx_provider
        if provider is None:
            raise _Refusal(grpc.StatusCode.UNIMPLEMENTED, "this server is configured without an ONNX decoder export")
        if self._onnx_task is None:
            self._onnx_task = asyncio.get_running_loop().create_task(self._export_decoder(provider))
        # shielded: a caller that gives up (deadline, cancel) leaves the one export running for the next caller
        answer = await asyncio.shield(self._onnx_task)
        self._check_response_size(answer)
        return answer

    async def _export_decoder(self, provider) -> pb.DecoderOnnx:
        """Run the provider once. Its answer is kept, a refusal too (None: FAILED_PRECONDITION; NotImplementedError:
        UNIMPLEMENTED); an unexpected failure is not, so a later call tries again."""
        try:
            data = await asyncio.get_running_loop().run_in_executor(None, provider, self.model)
        except NotImplementedError as exc:
            raise _Refusal(grpc.StatusCode.UNIMPLEMENTED, str(exc)) from None
        except BaseException:
            self._onnx_task = None
            raise
        if data is None:
            raise _Refusal(grpc.StatusCode.FAILED_PRECONDITION,
                           f"no ONNX decoder is available for model {self.engine.fingerprint}")
        return pb.DecoderOnnx(model=data, model_fingerprint=self.engine.fingerprint,
                              sha256=hashlib.sha256(data).hexdigest())

    def _decoder_onnx_available(self) -> bool:
        task = self._onnx_task
        if task is not None and task.done() and not task.cancelled():
            return task.exception() is None
        return self.settings.decoder_onnx_provider is not None and importlib.util.find_spec("segany.onnx") is not None

    @unary(needs_ready=False)
    async def GetMetrics(self, request, context) -> pb.Metrics:
        return pb.Metrics(text=self.metrics.render())


def _raw_array(raw: pb.RawImage) -> np.ndarray:
    h, w, c = raw.height, raw.width, raw.channels
    if h == 0 or w == 0:
        raise InvalidImageError(f"raw image has zero size: {h}x{w}")
    if c not in (1, 3, 4):
        raise InvalidImageError(f"raw image channels must be 1, 3 or 4, got {c}")
    if len(raw.pixels) != h * w * c:
        raise InvalidImageError(
            f"raw image pixels must be height*width*channels = {h * w * c} bytes (uint8, C order), got "
            f"{len(raw.pixels)}"
        )
    return np.frombuffer(raw.pixels, dtype=np.uint8).reshape(h, w, c)
