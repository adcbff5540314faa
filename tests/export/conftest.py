"""The HTTP demo server in-process: an engine on its own event loop thread, the demo HTTP server beside it."""

from __future__ import annotations

import asyncio
import shutil
import threading
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
EXPORT = REPO / "export"


def node_ready() -> str | None:
    """None when node and export/node_modules are there, else why the JS tests cannot run."""
    if shutil.which("node") is None:
        return "node is not installed (CI: .ci/install-js.sh)"
    if not (EXPORT / "node_modules" / "onnxruntime-node").is_dir():
        return "export/node_modules is missing: run `npm ci` in export/ (CI: .ci/install-js.sh)"
    return None


class DemoThread:
    """An :class:`Engine` (test-tiny, exact precision) on a loop thread, and the demo HTTP server on port 0."""

    def __init__(self) -> None:
        import segany
        from segany.cache import MemoryCache
        from segany.engine import Engine

        self.model = segany.build_model("test-tiny", seed=0)
        self.engine = Engine(segany.Predictor(self.model, precision="exact"), MemoryCache(64 * 2**20))
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="segany-demo-loop", daemon=True)

    def start(self) -> DemoThread:
        from segany.service.http_demo import start_http_server

        self.thread.start()
        self.run(self.engine.warm_up())
        self.server, self.port = start_http_server(self.engine, "127.0.0.1", 0, loop=self.loop)
        self.url = f"http://127.0.0.1:{self.port}"
        return self

    def run(self, coro, timeout: float = 120.0):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        self.server.close()
        self.run(self.engine.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture(scope="module")
def demo():
    server = DemoThread().start()
    yield server
    server.stop()
