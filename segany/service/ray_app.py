"""The segany.v1 API as a Ray Serve application: replicas behind Ray's gRPC proxy, sharing a Redis embedding cache.

    serve run deploy/ray/serve_config.yaml          # or, in Python: serve.run(segany.service.ray_app.app({...}))

Each :class:`SeganyReplica` runs the same servicer as ``segany serve`` (:func:`segany.service.server.build_servicer`):
its own model, encode queue and in-memory cache tier, and, with ``redis_url``, the shared Redis tier, so an image
embedded through one replica is found by the others. Errors keep their status codes and messages; ``SegmentStream``
works as with ``segany serve``. Ray's own health check (``ray.serve.RayServeAPIService/Healthz``) replaces
grpc.health.v1. A replica loads and warms its model at its first call, which waits for it; a replica whose model
cannot load answers UNAVAILABLE with the reason and reports itself unhealthy, so Ray replaces it.

Two refinements, both optional:

* **A separate encoder deployment** (``encoder_replicas`` >= 1): the heavy image encoder runs in
  :class:`SeganyEncoder` replicas, sized on their own (``encoder_num_cpus``; ``encoder_num_gpus`` above 0 runs them
  on CUDA), and the gRPC-facing replicas only decode. These keep the engine's queue, merging and cache and send the
  images of each micro-batch, resized to the model's input side, to an encoder replica (:class:`segany.engine.Engine`'s
  remote encoder), so clicks never share a process with an encode, and hold the prompt encoder and mask decoder only
  (the image encoder's weights are dropped after loading).
* **Routing by image id**: after a call that embedded or answered for an image, a replica registers its id as a Ray
  "multiplexed model id", and Ray's proxy prefers a replica that registered the id named by a call's
  ``multiplexed_model_id`` metadata (a preference: a replica without the image in memory reads it from the shared
  tier, never an error). ``segany.client`` sends that metadata with every call that names an image id; other
  clients may add it.

Ray starts the proxy with ``grpc_options``: ``grpc_servicer_functions`` must name
``segany.service.proto.segany_pb2_grpc.add_SeganyServicer_to_server`` (see ``deploy/ray/serve_config.yaml``).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import numpy as np
import torch
from ray import serve
from torch import nn

from segany import runtime
from segany.engine import encode_isolated
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


def _echo_request_id(grpc_context) -> None:
    """Return the call's request id to the caller, as `segany serve` does. Ray's proxy passes on a replica's trailing
    metadata (with its own ``request_id``), not its initial metadata, so the id travels there."""
    grpc_context.set_trailing_metadata([(interceptors.REQUEST_ID_KEY, interceptors.REQUEST_ID.get())])


#: ``segany serve``'s process settings (:func:`segany.runtime.tune_process`) as environment for the replica processes:
#: Ray starts those, so the settings must be in place when each process starts (glibc reads its variables then).
REPLICA_ENV = runtime.process_environment()


#: Settings that belong to ``segany serve``'s own listener and are not applied behind Ray's proxy: refused by
#: :func:`app` rather than silently ignored (an ``auth_token`` that protects nothing would be worse than an error).
#: ``cache_dir`` is refused too: replicas on one node would share a disk tier made for one process.
NOT_FOR_RAY = ("host", "port", "auth_token", "tls_cert", "tls_key", "tls_client_ca", "metrics_port", "http_port",
               "reflection", "grace_seconds", "warmup", "cache_dir", "decoder_onnx_provider")


#: Image ids a replica keeps registered for routing (Ray's ``max_num_models_per_replica``). Registering holds no
#: embedding (the engine's byte-bounded cache does): a routed call whose embedding was evicted reads the shared tier.
ROUTED_IMAGES_PER_REPLICA = 512


class _NoImageEncoder(nn.Module):
    """Stands in for the image encoder on replicas that decode only: its weights are not kept there."""

    def forward(self, *args, **kwargs):
        raise RuntimeError("this replica decodes only: images are encoded by the SeganyEncoder deployment")


def _load_model(settings: Settings):
    from segany.models import load_model, to_device

    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    return to_device(load_model(settings.checkpoint or settings.model), settings.device)


class _BuiltAtFirstCall:
    """A replica whose model is built on the replica's event loop at its first call (``_build``, which every call
    awaits) and which reports itself unhealthy once the build has failed, so Ray replaces it."""

    _building: asyncio.Task | None = None

    async def _build(self) -> None:
        raise NotImplementedError

    async def _built(self) -> None:
        if self._building is None:  # in a fresh context: the build outlives the request that starts it
            self._building = contextvars.Context().run(asyncio.get_running_loop().create_task, self._build())
        await asyncio.shield(self._building)

    def check_health(self) -> None:
        """Ray's periodic probe: a replica whose model failed to load is unhealthy, and Ray starts a new one."""
        if self._building is not None and self._building.done() and self._building.exception() is not None:
            raise RuntimeError(f"the model did not load: {self._building.exception()}")


@serve.deployment(ray_actor_options={"num_cpus": 1, "runtime_env": {"env_vars": REPLICA_ENV}}, max_ongoing_requests=1)
class SeganyEncoder(_BuiltAtFirstCall):
    """The image encoder alone, for the decoding replicas' engines: RGB images (already resized to the model's input
    side) and their original sizes in, one embedding (or the exception that image raised) per image out. Loads its
    model at the first call. One batch at a time (``max_ongoing_requests=1``), so Ray's router, not a queue inside a
    replica, spreads the batches over the encoder replicas."""

    def __init__(self, settings: dict[str, Any] | None = None) -> None:
        self.settings = Settings(**(settings or {})).validated()
        self._predictor = None
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="segany-encode")
        self._encoded = 0

    def images_encoded(self) -> int:
        """Images this replica has encoded (for tests and operators, through a deployment handle)."""
        return self._encoded

    async def _build(self) -> None:
        from segany.predictor import Predictor

        model = await asyncio.get_running_loop().run_in_executor(self._pool, _load_model, self.settings)
        self._predictor = Predictor(model, self.settings.precision)

    async def encode(self, images: list[np.ndarray], original_sizes: list[tuple[int, int]]) -> list:
        await self._built()
        predictor = self._predictor
        names = [f"{i + 1} of {len(images)} in this batch" for i in range(len(images))]
        outcomes = await asyncio.get_running_loop().run_in_executor(self._pool, encode_isolated, predictor, images,
                                                                    names)
        self._encoded += sum(not isinstance(o, BaseException) for o in outcomes)
        # on the CPU: the decoding replica may have no GPU (its predictor copies an embedding to its device per call)
        return [o if isinstance(o, BaseException) else
                dataclasses.replace(o, image_embeddings=o.image_embeddings.cpu(), original_size=tuple(size))
                for o, size in zip(outcomes, original_sizes)]


@serve.deployment(ray_actor_options={"num_cpus": 1, "runtime_env": {"env_vars": REPLICA_ENV}}, max_ongoing_requests=16)
class SeganyReplica(_BuiltAtFirstCall):
    """One gRPC-facing replica: the segany servicer, built on the replica's event loop at the first call and warmed
    once; with an ``encoder`` (a handle to :class:`SeganyEncoder`) it decodes only."""

    def __init__(self, settings: dict[str, Any] | None = None, encoder=None, remote_batches: int = 1) -> None:
        self.settings = Settings(**(settings or {})).validated()
        self._encoder = encoder
        self._remote_batches = remote_batches
        self._registering: set[asyncio.Task] = set()
        self._servicer = None
        self._failure_logged = False

    async def _build(self) -> None:
        from segany.service.server import build_servicer

        model, remote = None, None
        if self._encoder is not None:
            model = await asyncio.get_running_loop().run_in_executor(None, _load_model, self.settings)
            model.image_encoder = _NoImageEncoder()  # the fingerprint was taken at load, from all the weights
            self._servicer_model_side = model.image_size
            remote = self._encode_remotely
        servicer = await build_servicer(self.settings, model, encoder=remote, remote_batches=self._remote_batches)
        try:
            await servicer.engine.warm_up()
        except BaseException:
            await servicer.engine.close()
            raise
        self._servicer = servicer

    async def _encode_remotely(self, images: list[np.ndarray]) -> list:
        """The engine's remote encoder: images resized here to the model's input side (a 50 MP photo travels as about
        3 MB, not 150), then one call to an encoder replica."""
        from segany.transforms import resize_image

        side = self._servicer_model_side

        def shrink(image: np.ndarray) -> np.ndarray:
            resized = resize_image(image, side)
            return resized if resized.size < image.size else image  # a small image travels as it is

        loop = asyncio.get_running_loop()
        sent = await loop.run_in_executor(None, lambda: [shrink(image) for image in images])
        sizes = [image.shape[:2] for image in images]
        # A fresh context: made under a request's context, Ray would tie this call to that request and cancel it
        # with it, while the batch may hold other callers' images.
        return await contextvars.Context().run(self._encoder.encode.remote, sent, sizes)

    @serve.multiplexed(max_num_models_per_replica=ROUTED_IMAGES_PER_REPLICA)
    async def _route_here(self, image_id: str) -> bool:
        """Registers ``image_id`` with Ray's router for this replica. Holds nothing and checks nothing: Ray loads
        ids one at a time under a lock, so this must not wait (the call that registers has found the image)."""
        return True

    def _register_later(self, image_id: str) -> None:
        """Registers ``image_id`` in the background, after the call that found it: never delays an answer."""
        if image_id:
            task = asyncio.get_running_loop().create_task(self._route_here(image_id))
            self._registering.add(task)
            task.add_done_callback(self._registering.discard)

    async def _servicer_or_unavailable(self, grpc_context):
        try:
            if self._servicer is None:
                await self._built()
            return self._servicer
        except Exception as exc:  # noqa: BLE001 - every call says why this replica cannot serve
            if not self._failure_logged:  # once, with the traceback; every call still answers with the reason
                log.exception("segany replica: the model did not load")
                self._failure_logged = True
            grpc_context.set_code(grpc.StatusCode.UNAVAILABLE)
            grpc_context.set_details(f"this segany replica could not load its model: {exc}")
            return None

    async def _call(self, name: str, request, grpc_context, empty):
        servicer = await self._servicer_or_unavailable(grpc_context)
        if servicer is None:
            return empty
        context = _Context(grpc_context)
        state = interceptors.begin_call(context)  # a request id (in INTERNAL messages and logs), stage timings
        _echo_request_id(grpc_context)
        error = None
        try:
            return await getattr(servicer, name)(request, context)
        except _Aborted:
            return empty
        except BaseException as exc:
            error = exc
            raise
        finally:  # the RPC metrics and the log line of `segany serve`'s interceptor
            code = interceptors.code_name(grpc_context, error)
            interceptors.end_call(servicer.metrics, name, code, state, grpc_context.peer())

    async def Embed(self, request: pb.EmbedRequest, grpc_context) -> pb.EmbedResponse:  # noqa: N802 - RPC names
        response = await self._call("Embed", request, grpc_context, pb.EmbedResponse())
        self._register_later(response.image_id)  # the next calls naming this image come here
        return response

    async def Segment(self, request: pb.SegmentRequest, grpc_context) -> pb.SegmentResponse:  # noqa: N802
        response = await self._call("Segment", request, grpc_context, pb.SegmentResponse())
        if response.results:  # answered: this replica now holds the image
            self._register_later(serve.get_multiplexed_model_id())
        return response

    async def SegmentStream(self, request_stream, grpc_context):  # noqa: N802
        """Ray's proxy sends a stream's status only with a message, or with an exception the replica raises: a
        stream that ends early raises after setting its status code, so the code reaches the client."""
        servicer = await self._servicer_or_unavailable(grpc_context)
        if servicer is None:
            raise _Aborted(grpc_context.details())
        context = _Context(grpc_context)
        state = interceptors.begin_call(context)
        _echo_request_id(grpc_context)
        registered = False
        error = None
        try:
            # aclosing: when the caller goes away, the servicer's stream (its reader and worker tasks) ends now
            async with contextlib.aclosing(servicer.SegmentStream(request_stream, context)) as replies:
                async for reply in replies:
                    if not registered and reply.HasField("response"):
                        self._register_later(serve.get_multiplexed_model_id())
                        registered = True
                    yield reply
        except BaseException as exc:
            error = exc
            raise
        finally:
            interceptors.end_call(servicer.metrics, "SegmentStream", interceptors.code_name(grpc_context, error), state,
                                  grpc_context.peer())

    async def GetModelInfo(self, request: pb.GetModelInfoRequest, grpc_context) -> pb.ModelInfo:  # noqa: N802
        return await self._call("GetModelInfo", request, grpc_context, pb.ModelInfo())

    async def GetDecoderOnnx(self, request: pb.GetDecoderOnnxRequest, grpc_context) -> pb.DecoderOnnx:  # noqa: N802
        return await self._call("GetDecoderOnnx", request, grpc_context, pb.DecoderOnnx())

    async def GetMetrics(self, request: pb.GetMetricsRequest, grpc_context) -> pb.Metrics:  # noqa: N802
        return await self._call("GetMetrics", request, grpc_context, pb.Metrics())


#: ``app()`` arguments that are not :class:`Settings` fields, with their defaults.
DEPLOYMENT_ARGS = {"num_replicas": 1, "num_cpus": 1.0, "num_gpus": 0.0,
                   "encoder_replicas": 0, "encoder_num_cpus": 1.0, "encoder_num_gpus": 0.0}


def app(args: dict[str, Any] | None = None) -> serve.Application:
    """The application: ``args`` are :class:`Settings` fields (``redis_url``, ``model``, ``cache_bytes``,
    ``device``, ...) plus ``num_replicas`` (default 1), ``num_cpus`` (default 1) and ``num_gpus`` (default 0) per
    replica, and, for a separate encoder deployment, ``encoder_replicas`` (default 0: each replica encodes its own
    images), ``encoder_num_cpus`` (default 1) and ``encoder_num_gpus`` (default 0; above 0 the encoders run on
    CUDA; ``num_gpus`` above 0 does the same for the decoding replicas, and ``device`` other than cpu without it is
    refused: Ray hides GPUs from replicas that reserve none).
    Usable as an import path in a Serve config (``segany.service.ray_app:app``). Unknown names, the settings in
    :data:`NOT_FOR_RAY`, invalid values, and more than one gRPC-facing replica without the shared ``redis_url``
    are refused here, before any replica starts.
    """
    args = dict(args or {})
    deployment = {name: args.pop(name, default) for name, default in DEPLOYMENT_ARGS.items()}
    known = {f.name for f in dataclasses.fields(Settings)} - set(NOT_FOR_RAY)
    unknown = sorted(set(args) - known)
    if unknown:
        raise ValueError(f"unknown segany settings for the Ray app: {unknown} (settings of segany serve's own "
                         f"listener do not apply behind Ray's proxy); known: {sorted(known | set(DEPLOYMENT_ARGS))}")
    Settings(**args).validated()
    gpus = float(deployment["num_gpus"])
    if gpus > 0:
        args.setdefault("device", "cuda")  # Ray shows the replica its GPU(s) as CUDA devices 0..
    elif args.get("device", "cpu") != "cpu":
        raise ValueError(f"device {args['device']!r} needs num_gpus > 0: Ray hides the GPUs from replicas that "
                         "reserve none")
    replicas, encoders = int(deployment["num_replicas"]), int(deployment["encoder_replicas"])
    if replicas < 1 or encoders < 0:
        raise ValueError(f"num_replicas must be >= 1 and encoder_replicas >= 0, got {replicas} and {encoders}")
    if replicas > 1 and not args.get("redis_url"):
        raise ValueError("several replicas need the shared embedding tier: set redis_url (an image embedded by one "
                         "replica would be NOT_FOUND on the others)")
    encoder = None
    if encoders:
        encoder_settings = {k: args[k] for k in ("model", "checkpoint", "precision", "torch_threads") if k in args}
        if float(deployment["encoder_num_gpus"]) > 0:  # Ray gives the replica its GPU(s) as CUDA device 0..
            encoder_settings["device"] = "cuda"
        encoder_options = {"num_cpus": float(deployment["encoder_num_cpus"]),
                           "num_gpus": float(deployment["encoder_num_gpus"]),
                           "runtime_env": {"env_vars": REPLICA_ENV}}
        encoder = SeganyEncoder.options(num_replicas=encoders, ray_actor_options=encoder_options).bind(
            encoder_settings)
    options = {"num_cpus": float(deployment["num_cpus"]), "num_gpus": gpus, "runtime_env": {"env_vars": REPLICA_ENV}}
    # each decoding replica may keep every encoder replica busy; Ray's router balances the batches over them
    return SeganyReplica.options(num_replicas=replicas, ray_actor_options=options).bind(args, encoder, max(1, encoders))


__all__ = ["DEPLOYMENT_ARGS", "NOT_FOR_RAY", "REPLICA_ENV", "SERVICER_FUNCTION", "SeganyEncoder", "SeganyReplica",
           "app"]
