"""The blocking :class:`Client` and the asyncio :class:`AsyncClient` (same methods)."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import grpc

from segany import errors
from segany.client.errors import (
    DeadlineExceeded,
    NotFound,
    ResourceExhausted,
    ServiceError,
    Unavailable,
    Unimplemented,
    error_from_rpc,
)
from segany.client.messages import (
    DTYPES,
    EmbeddedImage,
    Outputs,
    SegmentResult,
    StreamResult,
    channel_credentials,
    channel_options,
    embedded_from,
    image_source,
    make_prompt,
    parse_result,
    segment_request,
    stream_request,
    stream_result_from,
)
from segany.service.proto import segany_pb2 as pb
from segany.service.proto import segany_pb2_grpc as pb_grpc

#: Default message size limit on both directions (the server's default too): large images and embeddings exceed
#: gRPC's 4 MiB default.
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
DEFAULT_TIMEOUT = 120.0
#: The metadata key Ray Serve's gRPC proxy routes by (see :meth:`_Base._metadata_for`).
ROUTING_KEY = "multiplexed_model_id"


#: Answers that mean "not ready yet" to ``wait_ready``: a server starting, a replica still loading its model (its
#: GetModelInfo outlasting the poll), a Ray app still deploying (NOT_FOUND from the proxy), a busy proxy.
NOT_READY_YET = (Unavailable, DeadlineExceeded, NotFound, ResourceExhausted)


class _ReadyWait:
    """The polling of ``wait_ready``, shared by both clients (they only make the calls and sleep): grpc.health.v1
    until it answers SERVING, or, where health is not served (UNIMPLEMENTED: Ray Serve's proxy), GetModelInfo until
    ``ready``; answers in :data:`NOT_READY_YET` mean "not yet" until the deadline."""

    def __init__(self, target: str, timeout: float) -> None:
        self.target, self.timeout = target, timeout
        self.deadline = time.monotonic() + timeout
        self.use_health = True
        self.last: ServiceError | None = None

    def probe_timeout(self) -> float:
        remaining = max(0.1, self.deadline - time.monotonic())
        return min(5.0, remaining) if self.use_health else remaining

    def is_ready(self, answer) -> bool:
        return answer == "SERVING" if self.use_health else answer.ready

    def failed(self, exc: ServiceError) -> bool:
        """True to probe again at once (health is not served: GetModelInfo from now on), False to wait and poll;
        re-raises what ends the wait (any other error, or no GetModelInfo either: not a segany service)."""
        if isinstance(exc, Unimplemented) and self.use_health:
            self.use_health = False
            return True
        if not isinstance(exc, NOT_READY_YET):
            raise exc
        self.last = exc
        return False

    def check_deadline(self) -> None:
        if time.monotonic() >= self.deadline:
            reason = f" (last answer: {self.last.code.name}: {self.last.message})" if self.last is not None else ""
            raise Unavailable(f"{self.target} did not report SERVING within {self.timeout:g}s{reason}",
                              grpc.StatusCode.UNAVAILABLE)


def _source(request) -> pb.ImageSource | None:
    return request.image if isinstance(request, (pb.EmbedRequest, pb.SegmentRequest)) else None


class _Base:
    def __init__(self, target: str, *, token: str | None, tls: bool, root_certificates: bytes | None,
                 private_key: bytes | None, certificate_chain: bytes | None, timeout: float | None,
                 max_message_bytes: int, retries: int, backoff: float) -> None:
        self.target = target
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        if token is not None and not (isinstance(token, str) and token.isascii() and token.isprintable()):
            raise errors.InvalidInputError("token must be printable ASCII (no line breaks): it travels as a header")
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self._closed = False
        self._health_stub = None
        self._options = channel_options(max_message_bytes)
        self._secure = tls or root_certificates is not None or certificate_chain is not None
        self._creds = channel_credentials(root_certificates, private_key, certificate_chain) if self._secure else None

    def _check_open(self) -> None:
        if self._closed:
            raise errors.ClosedError(f"this client of {self.target} is closed; make a new one")

    def _health(self):
        """The grpc.health.v1 stub, made once (on a closed channel, making one crashed the process)."""
        self._check_open()
        if self._health_stub is None:
            from grpc_health.v1 import health_pb2_grpc

            self._health_stub = health_pb2_grpc.HealthStub(self._channel)
        return self._health_stub

    def _delay(self, attempt: int) -> float:
        return self.backoff * (2**attempt) * (0.5 + random.random())

    def _metadata_for(self, source: pb.ImageSource | None) -> tuple[tuple[str, str], ...]:
        """The call's metadata; a call naming an image id also carries it as ``multiplexed_model_id``, which Ray
        Serve's proxy routes by (to a replica holding that image: ``segany.service.ray_app``). Others ignore it."""
        if source is not None and source.image_id:
            return (*self._metadata, (ROUTING_KEY, source.image_id))
        return self._metadata


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
        self._closed = True
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method, request, timeout: float | None, retry: bool = True):
        self._check_open()
        timeout = self.timeout if timeout is None else timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        attempt = 0
        while True:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                return method(request, timeout=remaining, metadata=self._metadata_for(_source(request)))
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
        if embedding_dtype not in DTYPES:
            raise errors.InvalidInputError(f"embedding_dtype must be 'float32' or 'float16', got {embedding_dtype!r}")
        request = pb.EmbedRequest(image=image_source(image), return_embedding=return_embedding,
                                  embedding_dtype=DTYPES[embedding_dtype])
        return embedded_from(self._call(self._stub.Embed, request, timeout))

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
        self._check_open()
        outputs = outputs or Outputs()
        source = image_source(image)
        failure: list[BaseException] = []  # a bad request (or the caller's iterator failing), raised as itself

        def messages():
            try:
                for sequence, (object_id, prompt) in enumerate(requests):
                    yield stream_request(object_id, sequence, source, prompt, multimask, outputs)
            except Exception as exc:
                failure.append(exc)
                raise

        timeout = self.timeout if timeout is None else timeout
        try:
            for reply in self._stub.SegmentStream(messages(), timeout=timeout, metadata=self._metadata_for(source)):
                yield stream_result_from(reply)
        except grpc.RpcError as exc:
            if failure:
                raise failure[0] from None
            raise error_from_rpc(exc) from None

    def model_info(self, timeout: float | None = None) -> pb.ModelInfo:
        return self._call(self._stub.GetModelInfo, pb.GetModelInfoRequest(), timeout)

    def decoder_onnx(self, timeout: float | None = None) -> bytes:
        return self._call(self._stub.GetDecoderOnnx, pb.GetDecoderOnnxRequest(), timeout).model

    def metrics(self, timeout: float | None = None) -> str:
        return self._call(self._stub.GetMetrics, pb.GetMetricsRequest(), timeout).text

    def health(self, service: str = "", timeout: float | None = 5.0) -> str:
        """``"SERVING"``, ``"NOT_SERVING"``, ...: the grpc.health.v1 status."""
        from grpc_health.v1 import health_pb2

        response = self._call(self._health().Check, health_pb2.HealthCheckRequest(service=service), timeout)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Poll health until SERVING; Unavailable when it does not come within ``timeout``.

        Behind a proxy that does not serve grpc.health.v1 (Ray Serve's: ``segany.service.ray_app``), ``GetModelInfo``
        answers instead: its ``ready`` flag, once a replica has loaded and warmed its model.
        """
        wait = _ReadyWait(self.target, timeout)
        while True:
            probe = self.health if wait.use_health else self.model_info
            try:
                if wait.is_ready(probe(timeout=wait.probe_timeout())):
                    return
            except ServiceError as exc:
                if wait.failed(exc):
                    continue
            wait.check_deadline()
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
        self._closed = True
        await self._channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _call(self, method, request, timeout: float | None, retry: bool = True):
        self._check_open()
        timeout = self.timeout if timeout is None else timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        attempt = 0
        while True:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                return await method(request, timeout=remaining, metadata=self._metadata_for(_source(request)))
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
        if embedding_dtype not in DTYPES:
            raise errors.InvalidInputError(f"embedding_dtype must be 'float32' or 'float16', got {embedding_dtype!r}")
        request = pb.EmbedRequest(image=image_source(image), return_embedding=return_embedding,
                                  embedding_dtype=DTYPES[embedding_dtype])
        return embedded_from(await self._call(self._stub.Embed, request, timeout))

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
        self._check_open()
        outputs = outputs or Outputs()
        source = image_source(image)
        failure: list[BaseException] = []  # a bad request (or the caller's iterator failing), raised as itself

        async def messages():
            sequence = 0
            try:
                if hasattr(requests, "__aiter__"):
                    async for object_id, prompt in requests:
                        yield stream_request(object_id, sequence, source, prompt, multimask, outputs)
                        sequence += 1
                else:
                    for object_id, prompt in requests:
                        yield stream_request(object_id, sequence, source, prompt, multimask, outputs)
                        sequence += 1
            except Exception as exc:
                failure.append(exc)
                raise

        timeout = self.timeout if timeout is None else timeout
        call = self._stub.SegmentStream(messages(), timeout=timeout, metadata=self._metadata_for(source))
        try:
            async for reply in call:
                yield stream_result_from(reply)
        except (grpc.RpcError, asyncio.CancelledError) as exc:
            if failure:  # grpc.aio cancels the call when the request iterator fails
                raise failure[0] from None
            if isinstance(exc, asyncio.CancelledError):
                raise
            raise error_from_rpc(exc) from None
        finally:
            call.cancel()  # the caller stopped early (break, aclose) or it ended: no more requests are pulled

    async def model_info(self, timeout: float | None = None) -> pb.ModelInfo:
        return await self._call(self._stub.GetModelInfo, pb.GetModelInfoRequest(), timeout)

    async def decoder_onnx(self, timeout: float | None = None) -> bytes:
        return (await self._call(self._stub.GetDecoderOnnx, pb.GetDecoderOnnxRequest(), timeout)).model

    async def metrics(self, timeout: float | None = None) -> str:
        return (await self._call(self._stub.GetMetrics, pb.GetMetricsRequest(), timeout)).text

    async def health(self, service: str = "", timeout: float | None = 5.0) -> str:
        from grpc_health.v1 import health_pb2

        response = await self._call(self._health().Check, health_pb2.HealthCheckRequest(service=service), timeout)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)

    async def wait_ready(self, timeout: float = 60.0) -> None:
        """As :meth:`Client.wait_ready`: health until SERVING, or GetModelInfo's ``ready`` where health is not
        served (Ray Serve's proxy); Unavailable when neither comes within ``timeout``."""
        wait = _ReadyWait(self.target, timeout)
        while True:
            probe = self.health if wait.use_health else self.model_info
            try:
                if wait.is_ready(await probe(timeout=wait.probe_timeout())):
                    return
            except ServiceError as exc:
                if wait.failed(exc):
                    continue
            wait.check_deadline()
            await asyncio.sleep(0.05)
