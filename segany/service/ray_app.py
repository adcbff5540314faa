"""The segany.v1 API as a Ray Serve application: replicas behind Ray's gRPC proxy, sharing a Redis embedding cache.

    serve run deploy/ray/serve_config.yaml          # or, in Python: serve.run(segany.service.ray_app.app({...}))

Each replica runs the same servicer as ``segany serve`` (:func:`segany.service.server.build_servicer`): its own
model, encode queue and in-memory cache tier, and, with ``redis_url``, the shared Redis tier, so an image embedded
through one replica is found by the others (whichever one Ray routes the next click to). Errors keep their status
codes and messages. ``SegmentStream`` is not implemented here; clients use ``Segment``. Ray's own health check
(``ray.serve.RayServeAPIService/Healthz``) replaces grpc.health.v1. A replica loads and warms its model at its first
call, which waits for it; a replica whose model cannot load answers UNAVAILABLE with the reason and reports itself
unhealthy, so Ray replaces it.

Ray starts the proxy with ``grpc_options``: ``grpc_servicer_functions`` must name
``segany.service.proto.segany_pb2_grpc.add_SeganyServicer_to_server`` (see ``deploy/ray/serve_config.yaml``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import Any

import grpc
from ray import serve

from segany import runtime
from segany.service import interceptors  # the module, not its ContextVar: Ray pickles this class by value
from segany.service.proto import segany_pb2 as pb
from segany.service.settings import Settings

log = logging.getLogger("segany.service")

#: The proxy's servicer function, for ``gRPCOptions(grpc_servicer_functions=[SERVICER_FUNCTION])``.
SERVICER_FUNCTION = "segany.service.proto.segany_pb2_grpc.add_SeganyServicer_to_server"


class _Aborted(grpc.aio.AbortError):
    """Unwinds an RPC after its status was set on Ray's context (the servicer re-raises AbortError untouched)."""


class _Context:
    """The part of ``grpc.aio.ServicerContext`` the servicer uses, over Ray Serve's gRPC context."""

    def __init__(self, ray_context) -> None:
        self._ray = ray_context

    async def abort(self, code: grpc.StatusCode, details: str = "") -> None:
        self._ray.set_code(code)
        self._ray.set_details(details)
        raise _Aborted(details)

    def invocation_metadata(self):  # the request id (segany.service.interceptors._request_id)
        return self._ray.invocation_metadata()


#: ``segany serve``'s process settings (:func:`segany.runtime.tune_process`) as environment for the replica processes:
#: Ray starts those, so the settings must be in place when each process starts (glibc reads its variables then).
REPLICA_ENV = {
    "OMP_WAIT_POLICY": "PASSIVE",
    "MALLOC_MMAP_THRESHOLD_": str(runtime.MMAP_THRESHOLD_BYTES),
    "MALLOC_TRIM_THRESHOLD_": str(runtime.TRIM_THRESHOLD_BYTES),
    "MALLOC_ARENA_MAX": str(runtime.ARENA_MAX),
}


#: Settings that belong to ``segany serve``'s own listener and are not applied behind Ray's proxy: refused by
#: :func:`app` rather than silently ignored (an ``auth_token`` that protects nothing would be worse than an error).
#: ``cache_dir`` is refused too: replicas on one node would share a disk tier made for one process.
NOT_FOR_RAY = ("host", "port", "auth_token", "tls_cert", "tls_key", "tls_client_ca", "metrics_port", "http_port",
               "reflection", "grace_seconds", "warmup", "cache_dir", "decoder_onnx_provider")


@serve.deployment(ray_actor_options={"num_cpus": 1, "runtime_env": {"env_vars": REPLICA_ENV}}, max_ongoing_requests=16)
class SeganyReplica:
    """One replica: the segany servicer, built on the replica's event loop at the first call and warmed once."""

    def __init__(self, settings: dict[str, Any] | None = None) -> None:
        self.settings = Settings(**(settings or {})).validated()
        self._servicer = None
        self._building: asyncio.Task | None = None
        self._failure_logged = False

    async def _ready(self):
        if self._servicer is None:
            if self._building is None:
                self._building = asyncio.get_running_loop().create_task(self._build())
            await asyncio.shield(self._building)
        return self._servicer

    async def _build(self) -> None:
        from segany.service.server import build_servicer

        servicer = await build_servicer(self.settings)
        try:
            await servicer.engine.warm_up()
        except BaseException:
            await servicer.engine.close()
            raise
        self._servicer = servicer

    def check_health(self) -> None:
        """Ray's periodic probe: a replica whose model failed to load is unhealthy, and Ray starts a new one."""
        if self._building is not None and self._building.done() and self._building.exception() is not None:
            raise RuntimeError(f"the model did not load: {self._building.exception()}")

    async def _call(self, name: str, request, grpc_context, empty):
        try:
            servicer = await self._ready()
        except Exception as exc:  # noqa: BLE001 - every call says why this replica cannot serve
            if not self._failure_logged:  # once, with the traceback; every call still answers with the reason
                log.exception("segany replica: the model did not load")
                self._failure_logged = True
            grpc_context.set_code(grpc.StatusCode.UNAVAILABLE)
            grpc_context.set_details(f"this segany replica could not load its model: {exc}")
            return empty
        context = _Context(grpc_context)
        token = interceptors.REQUEST_ID.set(interceptors._request_id(context))  # named in INTERNAL messages, logs
        try:
            return await getattr(servicer, name)(request, context)
        except _Aborted:
            return empty
        finally:
            interceptors.REQUEST_ID.reset(token)

    async def Embed(self, request: pb.EmbedRequest, grpc_context) -> pb.EmbedResponse:  # noqa: N802 - RPC names
        return await self._call("Embed", request, grpc_context, pb.EmbedResponse())

    async def Segment(self, request: pb.SegmentRequest, grpc_context) -> pb.SegmentResponse:  # noqa: N802
        return await self._call("Segment", request, grpc_context, pb.SegmentResponse())

    async def GetModelInfo(self, request: pb.GetModelInfoRequest, grpc_context) -> pb.ModelInfo:  # noqa: N802
        return await self._call("GetModelInfo", request, grpc_context, pb.ModelInfo())

    async def GetDecoderOnnx(self, request: pb.GetDecoderOnnxRequest, grpc_context) -> pb.DecoderOnnx:  # noqa: N802
        return await self._call("GetDecoderOnnx", request, grpc_context, pb.DecoderOnnx())

    async def GetMetrics(self, request: pb.GetMetricsRequest, grpc_context) -> pb.Metrics:  # noqa: N802
        return await self._call("GetMetrics", request, grpc_context, pb.Metrics())


def app(args: dict[str, Any] | None = None) -> serve.Application:
    """The application: ``args`` are :class:`Settings` fields (``redis_url``, ``model``, ``cache_bytes``, ...) plus
    ``num_replicas`` (default 1) and ``num_cpus`` per replica (default 1). Usable as an import path in a Serve config
    (``segany.service.ray_app:app``). Unknown names, the settings in :data:`NOT_FOR_RAY` and invalid values are
    refused here, before any replica starts.
    """
    args = dict(args or {})
    replicas = int(args.pop("num_replicas", 1))
    cpus = float(args.pop("num_cpus", 1))
    known = {f.name for f in dataclasses.fields(Settings)} - set(NOT_FOR_RAY)
    unknown = sorted(set(args) - known)
    if unknown:
        raise ValueError(f"unknown segany settings for the Ray app: {unknown} (settings of segany serve's own "
                         f"listener do not apply behind Ray's proxy); known: {sorted(known)}")
    Settings(**args).validated()
    options = {"num_cpus": cpus, "runtime_env": {"env_vars": REPLICA_ENV}}
    return SeganyReplica.options(num_replicas=replicas, ray_actor_options=options).bind(args)


__all__ = ["NOT_FOR_RAY", "REPLICA_ENV", "SERVICER_FUNCTION", "SeganyReplica", "app"]
