"""A real segany server on 127.0.0.1 (port 0) in a background event loop, with the tiny random model."""

from __future__ import annotations

import asyncio
import io
import threading

import numpy as np
import pytest

from tests.conftest import random_image


class ServerThread:
    """Runs ``create_server`` in its own thread and loop, so tests can use the blocking client."""

    def __init__(self, model, **overrides) -> None:
        from segany.service import Settings

        defaults = dict(port=0, torch_threads=1, cache_bytes="64MiB", decode_workers=2, grace_seconds=2.0)
        defaults.update(overrides)
        self.settings = Settings(**defaults)
        self.model = model
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="segany-test-server", daemon=True)

    def run(self, coro, timeout: float = 60.0):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start(self, wait_ready: bool = True) -> ServerThread:
        from segany.service import create_server

        self.thread.start()
        self.service, self.port = self.run(create_server(self.settings, model=self.model))
        if wait_ready:
            self.run(self.service.wait_ready(60))
        return self

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def engine(self):
        return self.service.engine

    def stop(self, grace: float = 0.5) -> None:
        try:
            self.run(self.service.stop(grace))
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)


@pytest.fixture(scope="session")
def server(tiny_model):
    srv = ServerThread(tiny_model).start()
    yield srv
    srv.stop()


@pytest.fixture()
def client(server):
    from segany.client import Client

    with Client(server.address, timeout=30) as c:
        yield c


def png_bytes(array: np.ndarray, **save_kwargs) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", **save_kwargs)
    return buf.getvalue()


def jpeg_bytes(array: np.ndarray, **save_kwargs) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="JPEG", quality=90, **save_kwargs)
    return buf.getvalue()


@pytest.fixture()
def image_png():
    return png_bytes(random_image(96, 128, seed=1))


__all__ = ["ServerThread", "jpeg_bytes", "png_bytes", "random_image"]
