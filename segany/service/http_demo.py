"""The browser demo over HTTP, beside gRPC in the same process: page, JS decoder, ONNX decoder, embeddings.

``start_http_server(engine, host, port)`` binds a stdlib :class:`~http.server.ThreadingHTTPServer` on its own
thread and returns ``(server, port)``. Every engine call is a coroutine on the engine's asyncio loop; handler
threads submit them with :func:`asyncio.run_coroutine_threadsafe` and wait for the result, so the loop that serves
gRPC also serves the page's requests (no second engine, same cache, same encode queue).

Routes (all under ``http://HOST:PORT``)::

    GET  /                          the demo page (static/index.html)
    GET  /static/<file>             demo.js, the page's other files; segany-decoder.js from export/
    GET  /static/ort/<file>         onnxruntime-web's wasm build from export/node_modules/onnxruntime-web/dist/
    GET  /decoder.onnx              the public-interface multimask decoder of the served model (exported once)
    GET  /sample.png                a generated sample image (the page's default; tests use it)
    POST /embed                     body: image file bytes -> {"id", "width", "height", "cached"}
    GET  /embedding/<id>?dtype=float16|float32   the embedding container (segany.container)
    POST /segment                   JSON {"id", "points", "labels", "box", "multimask", "mask_input"?} ->
                                    {"scores", "best", "masks": [{"index", "score", "area", "rle", "png"}]}
    GET  /healthz                   "ok" once the engine is warm

The page needs threaded WebAssembly, so every response carries ``Cross-Origin-Opener-Policy: same-origin`` and
``Cross-Origin-Embedder-Policy: require-corp``; everything it loads comes from this server (no CDN, so it works
on a closed network). The demo has no authentication: bind it to 127.0.0.1 or put it behind a proxy that has.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np

from segany import errors
from segany.service.settings import default_decoder_onnx_provider

log = logging.getLogger("segany.service.http")

STATIC_DIR = Path(__file__).parent / "static"
REPO_EXPORT_DIR = Path(__file__).resolve().parents[2] / "export"
#: onnxruntime-web files the page loads (the plain wasm build: CPU only, threads and SIMD)
ORT_FILES = ("ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")
MIME = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".wasm": "application/wasm",
    ".json": "application/json",
    ".png": "image/png",
    ".css": "text/css; charset=utf-8",
    ".map": "application/json",
}
HTTP_STATUS = {
    "INVALID_ARGUMENT": HTTPStatus.BAD_REQUEST,
    "NOT_FOUND": HTTPStatus.NOT_FOUND,
    "FAILED_PRECONDITION": HTTPStatus.CONFLICT,
    "RESOURCE_EXHAUSTED": HTTPStatus.TOO_MANY_REQUESTS,
    "UNAVAILABLE": HTTPStatus.SERVICE_UNAVAILABLE,
    "DEADLINE_EXCEEDED": HTTPStatus.GATEWAY_TIMEOUT,
    "UNAUTHENTICATED": HTTPStatus.UNAUTHORIZED,
}
MAX_JSON_BYTES = 4 * 2**20
CALL_TIMEOUT_S = 300.0


def export_dir() -> Path:
    """Where ``segany-decoder.js`` and ``node_modules/onnxruntime-web`` live: ``$SEGANY_EXPORT_DIR`` or the repo's."""
    return Path(os.environ.get("SEGANY_EXPORT_DIR", REPO_EXPORT_DIR))


class DecoderBytes:
    """The served model's public-interface multimask decoder as ONNX bytes, exported on first use.

    :func:`default_decoder_onnx_provider` exports once per model (on a decoder-only copy, so the served model keeps
    its precision) and keeps the bytes, so this and gRPC ``GetDecoderOnnx`` share one export.
    """

    def __init__(self, model) -> None:
        self._model = model

    def __call__(self) -> bytes:
        return default_decoder_onnx_provider(self._model)


def sample_image_png(height: int = 480, width: int = 640) -> bytes:
    """A deterministic picture with a few plain shapes on a gradient (something a click can segment)."""
    import io

    from PIL import Image, ImageDraw

    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([60 + 80 * x / width, 90 + 60 * y / height, 120 + 0 * x], -1).astype(np.uint8)
    image = Image.fromarray(base)
    draw = ImageDraw.Draw(image)
    draw.ellipse([width * 0.18, height * 0.22, width * 0.48, height * 0.72], fill=(230, 200, 40))
    draw.rectangle([width * 0.58, height * 0.30, width * 0.86, height * 0.80], fill=(200, 50, 60))
    draw.polygon(
        [(width * 0.5, height * 0.05), (width * 0.62, height * 0.25), (width * 0.38, height * 0.25)], fill=(40, 160, 90)
    )
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


class DemoServer:
    """A running demo HTTP server (see :func:`start_http_server`)."""

    def __init__(self, httpd: ThreadingHTTPServer, thread: threading.Thread,
                 export_thread: threading.Thread | None = None) -> None:
        self.httpd = httpd
        self.thread = thread
        self.export_thread = export_thread

    @property
    def port(self) -> int:
        return self.httpd.server_address[1]

    def close(self) -> None:
        """Stop accepting, finish the request in progress, release the socket (safe to call twice)."""
        if self.thread.is_alive():
            self.httpd.shutdown()
            self.thread.join(10)
        self.httpd.server_close()

    def finish_export(self, timeout: float = 300.0) -> bool:
        """Wait for the background decoder export (blocking; True when none is running any more).

        A process must not exit while the export runs: the interpreter would finalise under torch's exporter on a
        daemon thread, which aborts the process (seen as "terminate called without an active exception").
        """
        if self.export_thread is None:
            return True
        self.export_thread.join(timeout)
        return not self.export_thread.is_alive()


def start_http_server(
    engine,
    host: str = "127.0.0.1",
    port: int = 0,
    decoder_bytes: Callable[[], bytes] | None = None,
    *,
    loop: asyncio.AbstractEventLoop | None = None,
    prepare_decoder: bool = True,
) -> tuple[DemoServer, int]:
    """Serve the demo page and its data for ``engine`` on ``host:port`` (0 = a free port), on a background thread.

    Args:
        engine: the :class:`segany.engine.Engine` the gRPC service uses.
        host, port: where to listen.
        decoder_bytes: returns the ONNX decoder bytes for ``GET /decoder.onnx``; default: the engine's model
            exported once (:class:`DecoderBytes`).
        loop: the engine's event loop; default: the running loop (call from a coroutine on it).
        prepare_decoder: export the decoder on a background thread now, so the first page load does not wait.
    Returns:
        The :class:`DemoServer` (``close()`` it on shutdown) and the bound port.
    """
    loop = loop or asyncio.get_running_loop()
    provider = decoder_bytes or DecoderBytes(engine.predictor.model)
    handler = type("BoundDemoHandler", (_DemoHandler,), {"engine": engine, "loop": loop, "decoder_bytes": provider})
    try:
        httpd = ThreadingHTTPServer((host, port), handler)
    except OSError as exc:
        raise errors.UnavailableError(f"cannot listen for HTTP on {host}:{port}: {exc}") from None
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, name="segany-http-demo", daemon=True)
    thread.start()
    export_thread = None
    if prepare_decoder:
        export_thread = threading.Thread(target=_prepare, args=(provider,), name="segany-decoder-export", daemon=True)
        export_thread.start()
    server = DemoServer(httpd, thread, export_thread)
    log.info("segany demo on http://%s:%d/", host, server.port)
    return server, server.port


def _prepare(provider: Callable[[], bytes]) -> None:
    try:
        provider()
    except Exception:  # noqa: BLE001 - reported again to whoever requests /decoder.onnx
        log.exception("decoder export for the demo failed")


def _flag(request: dict, name: str, default: bool) -> bool:
    """A true/false field of a JSON request (absent or null: ``default``); anything else is a 400, not a guess."""
    value = request.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise _HttpError(HTTPStatus.BAD_REQUEST, f"{name} must be true or false, got {json.dumps(value)[:40]}")
    return value


class _HttpError(Exception):
    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status


class _DemoHandler(BaseHTTPRequestHandler):
    engine = None
    loop: asyncio.AbstractEventLoop
    decoder_bytes: Callable[[], bytes]
    protocol_version = "HTTP/1.1"
    server_version = "segany-demo"

    # ------------------------------------------------------------------------------------------------ plumbing
    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base class's name
        log.debug("%s - %s", self.address_string(), format % args)

    def _send(self, status: int, body: bytes, content_type: str, extra: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cross-Origin-Opener-Policy", "same-origin")
        self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        self.send_header("Cross-Origin-Resource-Policy", "same-origin")
        self.send_header("X-Content-Type-Options", "nosniff")
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, payload, status: int = HTTPStatus.OK) -> None:
        self._send(
            status,
            json.dumps(payload, separators=(",", ":")).encode(),
            "application/json",
            {"Cache-Control": "no-store"},
        )

    def _call(self, coro):
        """Run an engine coroutine on the engine's loop and wait for it."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(CALL_TIMEOUT_S)

    def _body(self, limit: int) -> bytes:
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            raise _HttpError(HTTPStatus.LENGTH_REQUIRED, "send a Content-Length header with the body") from None
        if length < 0 or length > limit:
            self.close_connection = True  # the unread body would be taken for the next request
            raise _HttpError(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                f"request body is {length} bytes; at most {limit} bytes are accepted",
            )
        return self.rfile.read(length)

    def _dispatch(self, routes: dict[str, Callable[[str, dict], None]]) -> None:
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        try:
            for prefix, handler in routes.items():
                if url.path == prefix or (len(prefix) > 1 and prefix.endswith("/") and url.path.startswith(prefix)):
                    handler(url.path[len(prefix) :], query)
                    return
            raise _HttpError(HTTPStatus.NOT_FOUND, f"no route for {self.command} {url.path}")
        except _HttpError as exc:
            self._json({"error": str(exc)}, exc.status)
        except errors.SeganyError as exc:
            self._json(
                {"error": str(exc), "code": exc.grpc_code},
                HTTP_STATUS.get(exc.grpc_code, HTTPStatus.INTERNAL_SERVER_ERROR),
            )
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception:  # noqa: BLE001 - the boundary: log it, answer 500, keep serving
            log.exception("demo request %s %s failed", self.command, url.path)
            self._json({"error": "internal error (see the server log)"}, HTTPStatus.INTERNAL_SERVER_ERROR)

    # ------------------------------------------------------------------------------------------------ routes
    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._dispatch(
            {
                "/": self._index,
                "/index.html": self._index,
                "/static/ort/": self._ort_file,
                "/static/": self._static,
                "/decoder.onnx": self._decoder,
                "/sample.png": self._sample,
                "/embedding/": self._embedding,
                "/healthz": self._health,
            }
        )

    do_HEAD = do_GET

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch({"/embed": self._embed, "/segment": self._segment})

    def _file(self, path: Path, cache: str = "no-cache") -> None:
        if not path.is_file():
            raise _HttpError(HTTPStatus.NOT_FOUND, f"{path.name} is not available on this server")
        self._send(
            HTTPStatus.OK,
            path.read_bytes(),
            MIME.get(path.suffix, "application/octet-stream"),
            {"Cache-Control": cache},
        )

    def _index(self, rest: str, query: dict) -> None:
        self._file(STATIC_DIR / "index.html")

    def _static(self, name: str, query: dict) -> None:
        if "/" in name or name.startswith("."):
            raise _HttpError(HTTPStatus.NOT_FOUND, f"no static file {name!r}")
        if name == "segany-decoder.js":
            self._file(export_dir() / name)
        else:
            self._file(STATIC_DIR / name)

    def _ort_file(self, name: str, query: dict) -> None:
        if name not in ORT_FILES:
            raise _HttpError(HTTPStatus.NOT_FOUND, f"no onnxruntime-web file {name!r}; served: {', '.join(ORT_FILES)}")
        path = export_dir() / "node_modules" / "onnxruntime-web" / "dist" / name
        if not path.is_file():
            raise _HttpError(
                HTTPStatus.NOT_FOUND,
                f"onnxruntime-web is not installed here: run `npm ci` in {export_dir()} (missing {path})",
            )
        self._file(path, "max-age=3600")

    def _decoder(self, rest: str, query: dict) -> None:
        self._send(
            HTTPStatus.OK,
            self.decoder_bytes(),
            "application/octet-stream",
            {"Cache-Control": "no-cache", "Content-Disposition": 'attachment; filename="decoder.onnx"'},
        )

    def _sample(self, rest: str, query: dict) -> None:
        self._send(HTTPStatus.OK, _SAMPLE.get(), "image/png", {"Cache-Control": "max-age=3600"})

    def _health(self, rest: str, query: dict) -> None:
        ready = bool(getattr(self.engine, "ready", True))
        self._send(
            HTTPStatus.OK if ready else HTTPStatus.SERVICE_UNAVAILABLE,
            b"ok\n" if ready else b"warming up\n",
            "text/plain",
        )

    def _embed(self, rest: str, query: dict) -> None:
        data = self._body(self.engine.settings.image_limits.max_bytes)
        if not data:
            raise _HttpError(HTTPStatus.BAD_REQUEST, "POST /embed wants the image file bytes as the body")
        embedded = self._call(self.engine.embed_bytes(data))
        height, width = embedded.original_size
        self._json(
            {"id": embedded.image_id, "width": int(width), "height": int(height), "cached": bool(embedded.cached)}
        )

    def _embedding(self, image_id: str, query: dict) -> None:
        dtype = query.get("dtype", ["float16"])[0]
        if dtype not in ("float16", "float32"):
            raise _HttpError(HTTPStatus.BAD_REQUEST, f"dtype must be float16 or float32, got {dtype!r}")
        embedding = self._call(self.engine.lookup(image_id))
        self._send(
            HTTPStatus.OK,
            embedding.to_bytes(dtype),
            "application/octet-stream",
            {"Cache-Control": "private, max-age=3600"},
        )

    def _segment(self, rest: str, query: dict) -> None:
        from segany.mask_outputs import OutputSpec
        from segany.prompts import make_prompt

        try:
            request = json.loads(self._body(MAX_JSON_BYTES))
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # RecursionError: absurdly deep nesting
            raise _HttpError(HTTPStatus.BAD_REQUEST, f"POST /segment wants a JSON object: {exc}") from None
        if not isinstance(request, dict) or not isinstance(request.get("id"), str):
            raise _HttpError(HTTPStatus.BAD_REQUEST, 'POST /segment wants {"id": <image id>, "points": ..., ...}')
        embedding = self._call(self.engine.lookup(request["id"]))
        mask_input = request.get("mask_input")
        if mask_input is not None:  # base64 of 256*256 little-endian float32 logits
            try:
                if not isinstance(mask_input, str):
                    raise ValueError("not a string")
                mask_input = np.frombuffer(base64.b64decode(mask_input), "<f4").reshape(256, 256)
            except ValueError:
                raise _HttpError(
                    HTTPStatus.BAD_REQUEST, "mask_input must be base64 of 256*256 little-endian float32 logits"
                ) from None
        prompt = make_prompt(
            embedding.original_size,
            request.get("points") or None,
            request.get("labels"),
            request.get("box"),
            mask_input,
            self.engine.settings.max_points,
        )
        spec = OutputSpec(rle=True, png=_flag(request, "png", False), bbox=True)
        (out,) = self._call(self.engine.segment(embedding, [prompt], _flag(request, "multimask", True), spec))
        self._json(
            {
                "scores": [float(s) for s in out.scores],
                "best": int(out.best_index),
                "masks": [
                    {
                        "index": c.index,
                        "score": c.score,
                        "area": c.area,
                        "bbox": c.bbox,
                        "rle": c.rle,
                        "png": base64.b64encode(c.png).decode() if c.png is not None else None,
                    }
                    for c in out.candidates
                ],
            }
        )


class _Lazy:
    def __init__(self, make: Callable[[], bytes]) -> None:
        self._make = make
        self._value: bytes | None = None
        self._lock = threading.Lock()

    def get(self) -> bytes:
        with self._lock:
            if self._value is None:
                self._value = self._make()
            return self._value


_SAMPLE = _Lazy(sample_image_png)

__all__ = ["DecoderBytes", "DemoServer", "export_dir", "sample_image_png", "start_http_server"]
