"""``segany serve``: run the gRPC service (defaults: 127.0.0.1:50051, the shipped model, a 1 GiB memory cache).

Flags override ``SEGANY_*`` environment variables, which override the defaults (see docs/service.md).
``--port 0`` binds a free port; the first line on stdout is always ``segany serving on HOST:PORT``.
"""

from __future__ import annotations

import argparse


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be 0-65535, got {value}")
    return value


def register(subparsers) -> None:
    p = subparsers.add_parser("serve", help="run the gRPC segmentation service", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", help="address to bind (default 127.0.0.1; 0.0.0.0 for all interfaces)")
    p.add_argument("--port", type=_port, help="port to bind (default 50051; 0 picks a free one and prints it)")
    model = p.add_mutually_exclusive_group()
    model.add_argument("--model", help="zoo model name (default: the shipped segany-lite)")
    model.add_argument("--checkpoint", help="path to a checkpoint file (.pt/.pth/.safetensors)")
    p.add_argument("--precision", choices=("fast", "exact"), help="encoder precision (default fast)")
    p.add_argument("--device", help="where the model runs: cpu (default), cuda or cuda:N")
    p.add_argument("--cache-bytes", help="memory cache budget, e.g. 1GiB (default), 0 disables")
    p.add_argument("--cache-dir", help="also keep embeddings on disk in this directory")
    p.add_argument("--cache-disk-bytes", help="disk cache budget (default 10GiB)")
    p.add_argument("--redis-url", help="shared cache tier, e.g. redis://127.0.0.1:6379/0")
    p.add_argument("--max-message-bytes", help="gRPC send and receive limit (default 64MiB)")
    p.add_argument("--max-image-bytes", help="largest accepted image file (default 48MiB)")
    p.add_argument("--encode-batch", type=_positive_int, help="images per encoder call (default 2)")
    p.add_argument("--encode-queue", type=_positive_int, help="images waiting for the encoder (default 64)")
    p.add_argument("--threads", type=_positive_int, help="torch threads (default: torch's choice)")
    p.add_argument("--auth-token", help="require 'authorization: Bearer TOKEN' (prefer SEGANY_AUTH_TOKEN)")
    p.add_argument("--tls-cert", help="PEM certificate chain for TLS")
    p.add_argument("--tls-key", help="PEM private key for TLS")
    p.add_argument("--tls-client-ca", help="PEM CA: require client certificates signed by it (mutual TLS)")
    p.add_argument("--metrics-port", type=_port, help="also serve Prometheus text on http://HOST:PORT/metrics")
    p.add_argument("--http-port", type=_port, help="also serve the browser demo, ONNX decoder and embeddings over HTTP")
    p.add_argument("--grace", type=float, help="seconds in-flight calls get on SIGTERM (default 10)")
    p.add_argument("--no-warmup", action="store_true", help="report SERVING without a warm-up run")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import asyncio

    from segany.runtime import tune_process

    tune_process()  # OMP_WAIT_POLICY=PASSIVE and malloc reuse, before torch starts; the environment wins

    from segany.service.server import serve

    return asyncio.run(serve(settings_from(args)))


def settings_from(args: argparse.Namespace, env=None):
    """The server's :class:`~segany.service.settings.Settings`: the flags in ``args`` over the ``SEGANY_*``
    variables of ``env`` (default ``os.environ``) over the defaults; validated."""
    from segany.service.settings import Settings

    overrides = {
        "host": args.host,
        "port": args.port,
        "model": args.model,
        "checkpoint": args.checkpoint,
        "precision": args.precision,
        "device": args.device,
        "cache_bytes": args.cache_bytes,
        "cache_dir": args.cache_dir,
        "cache_disk_bytes": args.cache_disk_bytes,
        "redis_url": args.redis_url,
        "max_receive_message_bytes": args.max_message_bytes,
        "max_send_message_bytes": args.max_message_bytes,
        "max_image_bytes": args.max_image_bytes,
        "encode_batch": args.encode_batch,
        "encode_queue": args.encode_queue,
        "torch_threads": args.threads,
        "auth_token": args.auth_token,
        "tls_cert": args.tls_cert,
        "tls_key": args.tls_key,
        "tls_client_ca": args.tls_client_ca,
        "metrics_port": args.metrics_port,
        "http_port": args.http_port,
        "grace_seconds": args.grace,
        "warmup": False if args.no_warmup else None,
    }
    return Settings.from_env(env, **overrides)
