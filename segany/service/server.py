"""Server factory and lifecycle: ``create_server(settings) -> (service, port)``, graceful shutdown, /metrics."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from segany.errors import InvalidInputError, UnavailableError
from segany.service.interceptors import BearerTokenInterceptor, ObservabilityInterceptor
from segany.service.metrics import ServiceMetrics
from segany.service.proto import segany_pb2, segany_pb2_grpc
from segany.service.servicer import SeganyServicer
from segany.service.settings import Settings

log = logging.getLogger("segany.service")
SERVICE_NAME = "segany.v1.Segany"


class Service:
    """A running server: the grpc.aio server, its engine, health and metrics. Made by :func:`create_server`."""

    def __init__(self, grpc_server, servicer: SeganyServicer, health_servicer, settings: Settings, port: int):
        self.grpc_server = grpc_server
        self.servicer = servicer
        self.engine = servicer.engine
        self.metrics = servicer.metrics
        self.health = health_servicer
        self.settings = settings
        self.port = port
        self.metrics_port: int | None = None
        self._warm_task: asyncio.Task | None = None
        self._http: asyncio.Server | None = None

    @property
    def address(self) -> str:
        return f"{self.settings.host}:{self.port}"

    async def wait_ready(self, timeout: float | None = None) -> None:
        """Until the model is warm (health SERVING); re-raises a warm-up failure."""
        if self._warm_task is not None:
            await asyncio.wait_for(asyncio.shield(self._warm_task), timeout)

    async def _warm(self) -> None:
        try:
            if self.settings.warmup:
                await self.engine.warm_up()
            else:
                self.engine.ready = True
        except Exception as exc:
            log.exception("warm-up failed; the server stays NOT_SERVING")
            self.servicer.warm_up_error = f"{type(exc).__name__}: {exc}"
            raise
        for name in ("", SERVICE_NAME):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("segany ready on %s (model %s)", self.address, self.engine.fingerprint)

    async def stop(self, grace: float | None = None) -> None:
        """Graceful shutdown: health NOT_SERVING, refuse new calls, let in-flight calls finish within ``grace``."""
        grace = self.settings.grace_seconds if grace is None else grace
        self.servicer.accepting = False
        await self.health.enter_graceful_shutdown()
        if self._warm_task is not None and not self._warm_task.done():
            self._warm_task.cancel()
        if self._http is not None:
            self._http.close()
        await self.grpc_server.stop(grace)
        await self.engine.close()
        self.engine.cache.close()

    async def wait_for_termination(self) -> None:
        await self.grpc_server.wait_for_termination()


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).expanduser().read_bytes()
    except OSError as exc:
        raise InvalidInputError(f"cannot read the {what} file {path!r}: {exc}") from None


def _credentials(settings: Settings):
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    key, cert = _read(settings.tls_key, "TLS key"), _read(settings.tls_cert, "TLS certificate")
    ca = _read(settings.tls_client_ca, "client CA") if settings.tls_client_ca else None
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=ca is not None)


async def build_servicer(settings: Settings, model=None, encoder=None, remote_batches: int = 1) -> SeganyServicer:
    """The servicer with its engine, cache and metrics, not bound to any server (``create_server`` and the Ray Serve
    application both use it). The model is loaded here unless given; warm it with ``servicer.engine.warm_up()``.
    ``encoder``: the engine's remote encoder (see :class:`segany.engine.Engine`), when images are encoded elsewhere,
    with ``remote_batches`` micro-batches sent off at once. A ``model`` given is served where it is
    (``settings.device`` applies to the model loaded here).
    """
    import torch

    from segany.cache import build_cache
    from segany.engine import Engine, EngineSettings
    from segany.images import ImageLimits
    from segany.models import load_model, to_device
    from segany.predictor import Predictor

    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    if model is None:
        name = settings.checkpoint or settings.model
        model = await asyncio.get_running_loop().run_in_executor(None, load_model, name)
        model = to_device(model, settings.device)
    predictor = Predictor(model, settings.precision)
    cache = build_cache(settings.cache_bytes, settings.cache_dir, settings.cache_disk_bytes, settings.redis_url)
    engine = Engine(
        predictor,
        cache,
        EngineSettings(
            encode_batch=settings.encode_batch,
            max_queue=settings.encode_queue,
            max_queue_bytes=settings.encode_queue_bytes,
            decode_workers=settings.decode_workers,
            torch_threads=settings.torch_threads,
            image_limits=ImageLimits(settings.max_image_bytes, settings.max_image_pixels, settings.max_image_side),
            max_prompts=settings.max_prompts_per_request,
            max_points=settings.max_points_per_prompt,
            mask_store_bytes=settings.mask_store_bytes,
            remote_batches=remote_batches,
        ),
        encoder=encoder,
    )

    def gauges():
        st = engine.stats
        cs = cache.stats()
        yield "segany_ready", "gauge", "1 once the model is loaded and warm", float(engine.ready)
        yield "segany_encode_queue_depth", "gauge", "distinct images waiting for the encoder", engine.queue_depth()
        yield "segany_encode_in_progress", "gauge", "images in the encoder now", st.encoding
        yield "segany_encode_requests_total", "counter", "embed requests that needed the queue", st.encode_requests
        yield "segany_encode_merged_total", "counter", "embed requests merged into a running job", st.encode_merged
        yield "segany_encode_images_total", "counter", "images encoded", st.encode_images
        yield "segany_encode_batches_total", "counter", "encoder calls (micro-batches)", st.encode_batches
        yield "segany_encode_cancelled_total", "counter", "queued encodes dropped (callers gone)", st.encode_cancelled
        yield "segany_encode_rejected_total", "counter", "embed requests refused: queue full", st.encode_rejected
        yield "segany_encode_seconds_total", "counter", "seconds spent in the encoder", st.encode_seconds
        yield "segany_decode_calls_total", "counter", "decoder calls", st.decode_calls
        yield "segany_decode_prompts_total", "counter", "prompts decoded", st.decode_prompts
        yield "segany_cache_hits_total", "counter", "embedding cache hits", cs.hits
        yield "segany_cache_misses_total", "counter", "embedding cache misses", cs.misses
        yield "segany_cache_evictions_total", "counter", "embeddings evicted to stay in budget", cs.evictions
        yield "segany_cache_entries", "gauge", "embeddings held", cs.entries or 0
        yield "segany_cache_bytes", "gauge", "bytes held by the embedding cache", cs.bytes or 0
        yield "segany_cache_max_bytes", "gauge", "embedding cache budget in bytes", cs.max_bytes or 0

    return SeganyServicer(engine, settings, ServiceMetrics(gauges), model)


async def create_server(settings: Settings | None = None, model=None) -> tuple[Service, int]:
    """Build, bind and start a server; the model warms up in the background (health NOT_SERVING until then).

    Args:
        settings: see :class:`Settings`; ``port=0`` binds a free port.
        model: an already built model (tests); otherwise loaded from ``settings.checkpoint``/``settings.model``
            (neither: the shipped default).
    Returns:
        The :class:`Service` and the bound port.
    """
    settings = (settings or Settings()).validated()
    servicer = await build_servicer(settings, model)
    metrics = servicer.metrics
    interceptors = [ObservabilityInterceptor(metrics)]
    if settings.auth_token:
        interceptors.append(BearerTokenInterceptor(settings.auth_token))
    server = grpc.aio.server(
        interceptors=interceptors,
        options=[
            ("grpc.max_receive_message_length", settings.max_receive_message_bytes),
            ("grpc.max_send_message_length", settings.max_send_message_bytes),
            ("grpc.so_reuseport", 0),  # a port already in use is an error, not a silent second listener
        ],
    )
    segany_pb2_grpc.add_SeganyServicer_to_server(servicer, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    if settings.reflection:
        from grpc_reflection.v1alpha import reflection

        names = (segany_pb2.DESCRIPTOR.services_by_name["Segany"].full_name, health.SERVICE_NAME,
                 reflection.SERVICE_NAME)
        reflection.enable_server_reflection(names, server)
    address = f"{settings.host}:{settings.port}"
    credentials = _credentials(settings)
    try:
        port = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
    except RuntimeError as exc:
        raise UnavailableError(f"cannot listen on {address}: {exc}") from None
    if port == 0:
        raise UnavailableError(f"cannot listen on {address} (address in use or not available)")
    await server.start()
    service = Service(server, servicer, health_servicer, settings, port)
    service._warm_task = asyncio.get_running_loop().create_task(service._warm(), name="segany-warm-up")
    service._warm_task.add_done_callback(lambda t: t.cancelled() or t.exception())
    if settings.metrics_port is not None:
        service._http = await _serve_metrics_http(settings.host, settings.metrics_port, metrics)
        service.metrics_port = service._http.sockets[0].getsockname()[1]
    return service, port


async def _serve_metrics_http(host: str, port: int, metrics: ServiceMetrics) -> asyncio.Server:
    """``GET /metrics`` in Prometheus text format, for scrapers that do not speak gRPC."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), 5)
            while (await asyncio.wait_for(reader.readline(), 5)) not in (b"\r\n", b"\n", b""):
                pass
            parts = line.decode("latin-1").split()
            if len(parts) >= 2 and parts[0] == "GET" and parts[1].split("?")[0] == "/metrics":
                body, status = metrics.render().encode(), "200 OK"
                ctype = "text/plain; version=0.0.4; charset=utf-8"
            else:
                body, status, ctype = b"not found: try GET /metrics\n", "404 Not Found", "text/plain"
            writer.write(f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                         "Connection: close\r\n\r\n".encode() + body)
            await writer.drain()
        except (asyncio.TimeoutError, ConnectionError, UnicodeError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(handle, host, port)


def _exit_now() -> None:
    print("segany: second signal, exiting now", file=sys.stderr, flush=True)
    os._exit(130)  # the CLI's "interrupted" exit code


async def serve(settings: Settings, out=sys.stdout) -> int:
    """Run until SIGTERM/SIGINT, then shut down gracefully. Prints ``segany serving on HOST:PORT`` once bound."""
    service, port = await create_server(settings)
    print(f"segany serving on {settings.host}:{port}", file=out, flush=True)
    if service.metrics_port is not None:
        print(f"segany metrics on http://{settings.host}:{service.metrics_port}/metrics", file=out, flush=True)
    demo = None
    if settings.http_port is not None:
        from segany.service.http_demo import start_http_server

        demo, http_port = start_http_server(service.engine, settings.host, settings.http_port)
        print(f"segany demo on http://{settings.host}:{http_port}/", file=out, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    stopping, warm = loop.create_task(stop.wait()), service._warm_task
    await asyncio.wait({stopping, warm}, return_when=asyncio.FIRST_COMPLETED)
    failed = not stopping.done() and warm.exception() is not None  # warm is done (only stop() cancels it)
    if failed:
        stopping.cancel()
    else:
        await stopping
        log.info("shutting down: finishing in-flight calls (grace %.1fs)", settings.grace_seconds)
    for sig in (signal.SIGTERM, signal.SIGINT):  # a second signal stops at once, whatever is still running
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, _exit_now)
    if demo is not None:
        demo.close()
    await service.stop()
    if demo is not None and not await loop.run_in_executor(None, demo.finish_export, max(settings.grace_seconds, 30)):
        log.warning("the demo's decoder export is still running; exiting anyway")
    if failed:  # a replica that will never be ready exits (exit code 3; an orchestrator restarts it), not idles
        raise UnavailableError(f"the model failed to warm up: {service.servicer.warm_up_error}")
    print("segany stopped", file=out, flush=True)
    return 0
