"""The clients used wrongly: after close(), with a bad token, a bad stream request, a stream left early."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import pytest

from segany.client import AsyncClient, Client
from segany.errors import ClosedError, InvalidImageError, InvalidInputError, InvalidPromptError
from tests.service.conftest import png_bytes, random_image


def test_a_closed_client_says_so(server):
    c = Client(server.address)
    c.close()
    for call in (c.health, c.wait_ready, c.model_info, lambda: c.embed(b"x"),
                 lambda: next(c.segment_stream([], image="a" * 64))):
        with pytest.raises(ClosedError, match="is closed"):
            call()

    async def main():
        a = AsyncClient(server.address)
        await a.close()
        for call in (a.health, a.wait_ready, a.model_info):
            with pytest.raises(ClosedError):
                await call()

    asyncio.run(main())


def test_a_token_that_cannot_be_a_header_is_refused_at_once():
    for token in ("line\nbreak", "caf\u00e9"):
        with pytest.raises(InvalidInputError, match="printable ASCII"):
            Client("127.0.0.1:1", token=token)


def test_a_bad_request_in_a_stream_raises_itself(server):
    with Client(server.address) as c:
        image = c.embed(png_bytes(random_image(32, 32, seed=3)))
        requests = [("a", {"points": [[5, 5]], "labels": [1]}), ("b", {"points": [[5, 5], [6, 6]], "labels": [1]})]
        with pytest.raises(InvalidPromptError, match="2 points but 1 labels"):
            list(c.segment_stream(requests, image=image))

    async def main():
        async with AsyncClient(server.address) as a:
            return [r async for r in a.segment_stream(requests, image=image)]

    with pytest.raises(InvalidPromptError, match="2 points but 1 labels"):
        asyncio.run(main())


def test_leaving_an_async_stream_early_ends_the_call(server):
    pulled = []

    async def main():
        async with AsyncClient(server.address) as a:
            image = await a.embed(png_bytes(random_image(32, 32, seed=4)))

            async def requests():
                for i in range(1000):
                    pulled.append(i)
                    yield f"o{i}", {"points": [[5, 5]], "labels": [1]}
                    await asyncio.sleep(0.01)

            stream = a.segment_stream(requests(), image=image)
            async for _ in stream:
                break
            await stream.aclose()
            at_close = len(pulled)
            await asyncio.sleep(0.5)
            return at_close, len(pulled)

    def cancelled_calls() -> float:
        return server.service.metrics.requests.value(method="SegmentStream", code="CANCELLED")

    before = _settled(cancelled_calls)  # a stream an earlier test left may still be ending on the shared server
    at_close, later = asyncio.run(main())
    assert later <= at_close + 1, (at_close, later)  # no more requests are pulled once the caller has left
    # the server saw a cancelled call (and survived it: its bookkeeping no longer touches the ended call's context)
    assert _settled(cancelled_calls) == before + 1


def _settled(read, quiet: float = 0.3, timeout: float = 10.0):
    """``read()`` once it has kept its value for ``quiet`` seconds (the server records an ended call after its end)."""
    deadline = time.monotonic() + timeout
    value, since = read(), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.05)
        now = read()
        if now != value:
            value, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            break
    return value


def test_images_the_client_cannot_send_are_typed_errors(server, tmp_path):
    with Client(server.address) as c:
        with pytest.raises(InvalidInputError, match="cannot read the image file"):
            c.embed(Path(tmp_path / "missing.png"))
        with pytest.raises(InvalidImageError, match=r"values in \[0, 1\], got 0\.\.255"):
            c.embed(np.linspace(0, 255, 16 * 16 * 3, dtype=np.float32).reshape(16, 16, 3))
        assert c.embed(np.full((16, 16, 3), 0.5, np.float32)).height == 16  # [0, 1] floats are fine


def test_annotate_through_a_server_that_wants_a_token(tiny_model, tmp_path, capsys, monkeypatch):
    from segany.cli.main import main
    from tests.service.conftest import ServerThread

    srv = ServerThread(tiny_model, auth_token="s3cret").start()
    try:
        images = tmp_path / "images"
        images.mkdir()
        (images / "a.png").write_bytes(png_bytes(random_image(32, 32, seed=5)))
        base = ["annotate", str(images), "--everything", "--points-per-side", "2", "--server", srv.address,
                "--no-progress"]
        assert main([*base, "--out", str(tmp_path / "o1"), "--token", "wrong"]) == 2
        assert "refused the token" in capsys.readouterr().err
        assert main([*base, "--out", str(tmp_path / "o2"), "--token", "s3cret"]) == 0
        monkeypatch.setenv("SEGANY_AUTH_TOKEN", "s3cret")
        assert main([*base, "--out", str(tmp_path / "o3")]) == 0
    finally:
        srv.stop()
