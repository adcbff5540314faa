"""Server interceptors: request ids, logging with per-stage timings, metrics, and bearer-token auth."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import hmac
import logging
import secrets
import time

import grpc
from google.protobuf.message import DecodeError

from segany.engine import STAGES
from segany.errors import InvalidInputError
from segany.service.metrics import ServiceMetrics

log = logging.getLogger("segany.service")

REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("segany_request_id", default="-")
REQUEST_ID_KEY = "x-request-id"
#: Methods that answer without a token: load balancers and orchestrators probe health unauthenticated.
AUTH_EXEMPT_PREFIXES = ("/grpc.health.v1.Health/",)
OBSERVED_PREFIX = "/segany.v1."


def _request_id(context: grpc.aio.ServicerContext) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == REQUEST_ID_KEY and isinstance(value, str) and 0 < len(value) <= 128 and value.isprintable():
            return value
    return secrets.token_hex(8)


def code_name(context, exc: BaseException | None) -> str:
    """The status name a call ended with (for the metrics and the log line), from its context and the exception
    that ended it, if any. Ray's context has no ``time_remaining``: a cancelled call there is CANCELLED. A stream
    closed while it waited to send (GeneratorExit: gRPC or Ray closed the generator because the caller left) is a
    cancelled call too, not an error of ours."""
    if isinstance(exc, GeneratorExit):
        return "CANCELLED"
    if isinstance(exc, asyncio.CancelledError):
        remaining = context.time_remaining() if hasattr(context, "time_remaining") else None
        return "DEADLINE_EXCEEDED" if remaining is not None and remaining <= 0 else "CANCELLED"
    code = context.code()
    if code is None or code == grpc.StatusCode.OK:
        return "UNKNOWN" if exc is not None else "OK"
    return code.name if isinstance(code, grpc.StatusCode) else str(code)


class ObservabilityInterceptor(grpc.aio.ServerInterceptor):
    """For every segany.v1 call: a request id (the caller's ``x-request-id`` or a new one, echoed in the initial
    metadata), one log line with code, total and per-stage milliseconds, and the RPC/stage metrics."""

    def __init__(self, metrics: ServiceMetrics) -> None:
        self.metrics = metrics

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None or not details.method.startswith(OBSERVED_PREFIX):
            return handler
        method = details.method.rsplit("/", 1)[-1]
        parse = handler.request_deserializer
        if handler.unary_unary is not None:
            inner = handler.unary_unary

            async def unary_unary(raw, context):
                begun = await self._begin(context)
                error = None
                try:
                    request = _parse(parse, raw)
                    if request is None:
                        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, _unparsable(method))
                    return await inner(request, context)
                except BaseException as exc:
                    error = exc
                    raise
                finally:
                    self._end(method, context, error, begun)

            return grpc.unary_unary_rpc_method_handler(
                unary_unary,
                request_deserializer=None,  # parsed above: a malformed message is INVALID_ARGUMENT, not UNKNOWN
                response_serializer=handler.response_serializer,
            )
        if handler.stream_stream is not None:
            inner_stream = handler.stream_stream

            async def parsed(raw_iterator):
                async for raw in raw_iterator:
                    request = _parse(parse, raw)
                    if request is None:  # the servicer ends the stream with it (INVALID_ARGUMENT)
                        raise InvalidInputError(_unparsable(method))
                    yield request

            async def stream_stream(raw_iterator, context):
                begun = await self._begin(context)
                error = None
                try:
                    async for response in inner_stream(parsed(raw_iterator), context):
                        yield response
                except BaseException as exc:
                    error = exc
                    raise
                finally:
                    self._end(method, context, error, begun)

            return grpc.stream_stream_rpc_method_handler(
                stream_stream,
                request_deserializer=None,
                response_serializer=handler.response_serializer,
            )
        return handler

    async def _begin(self, context):
        """The call's bookkeeping, plus what ``_end`` needs from the context while the call is live: its peer and
        its deadline."""
        state = begin_call(context)
        remaining = context.time_remaining()
        deadline = None if remaining is None else time.monotonic() + remaining
        peer = context.peer()
        await context.send_initial_metadata(((REQUEST_ID_KEY, REQUEST_ID.get()),))
        return state, peer, deadline

    def _end(self, method, context, error, begun) -> None:
        state, peer, deadline = begun
        if isinstance(error, (GeneratorExit, asyncio.CancelledError)):
            # The call is over (the client left, or its deadline passed) and its context may be torn down: touching
            # it here crashed the process when a client cancelled a stream. Decide from what was kept.
            code = "DEADLINE_EXCEEDED" if deadline is not None and time.monotonic() >= deadline else "CANCELLED"
        else:
            code = code_name(context, error)
        end_call(self.metrics, method, code, state, peer)


def _parse(deserializer, raw: bytes):
    """The request message, or None when ``raw`` is not one (truncated, corrupt, a string that is not UTF-8)."""
    if deserializer is None:
        return raw
    try:
        return deserializer(raw)
    except DecodeError:
        return None


def _unparsable(method: str) -> str:
    return (f"the {method} request is not a valid segany.v1 message (truncated or corrupt bytes, or a string field "
            "that is not UTF-8)")


def begin_call(context) -> tuple:
    """Start the bookkeeping of one call: its request id (the caller's ``x-request-id`` or a new one) and an empty
    stage-timing dict in the context variables, and the start time. Returns the state :func:`end_call` takes."""
    return REQUEST_ID.set(_request_id(context)), STAGES.set({}), time.perf_counter()


def end_call(metrics: ServiceMetrics, method: str, code: str, state: tuple, peer: str) -> None:
    """Finish what :func:`begin_call` started: the RPC and stage metrics and one log line (code, total and per-stage
    milliseconds). Shared by :class:`ObservabilityInterceptor` and the Ray Serve replicas."""
    token_id, token_st, start = state
    elapsed = time.perf_counter() - start
    stages = STAGES.get() or {}
    metrics.requests.inc(method=method, code=code)
    metrics.latency.observe(elapsed, method=method)
    for name, seconds in stages.items():
        metrics.stages.observe(seconds, stage=name)
    timing = " ".join(f"{name}={seconds * 1000:.1f}ms" for name, seconds in stages.items())
    level = logging.WARNING if code in ("INTERNAL", "UNKNOWN") else logging.INFO
    try:
        log.log(level, "rid=%s method=%s code=%s total=%.1fms %s peer=%s", REQUEST_ID.get(), method, code,
                elapsed * 1000, timing, peer)
    finally:  # a generator finalised in another task cannot reset its tokens: never mask the call's own outcome
        for var, token in ((REQUEST_ID, token_id), (STAGES, token_st)):
            with contextlib.suppress(ValueError, RuntimeError):
                var.reset(token)


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    """Refuse calls whose ``authorization`` metadata is not ``Bearer <token>`` with UNAUTHENTICATED."""

    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None or details.method.startswith(AUTH_EXEMPT_PREFIXES):
            return handler
        supplied = ""
        for key, value in details.invocation_metadata or ():
            if key == "authorization" and isinstance(value, str):
                supplied = value
        if hmac.compare_digest(supplied.encode(), self._expected):
            return handler
        message = (
            "missing bearer token: send metadata 'authorization: Bearer <token>'"
            if not supplied
            else "invalid bearer token"
        )

        async def deny_unary(request, context):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

        async def deny_stream(request_iterator, context):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)
            yield  # pragma: no cover - makes this an async generator

        kwargs = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(deny_unary, **kwargs)
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(deny_stream, **kwargs)
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(deny_unary, **kwargs)
        return grpc.stream_stream_rpc_method_handler(deny_stream, **kwargs)
