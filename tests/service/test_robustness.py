"""Clients that misbehave or leave: bounded stream buffering, malformed messages, cancelled exports, shutdown with an
open stream, a failed warm-up, bad input refused before an encode."""

from __future__ import annotations

import asyncio
import threading
import time

import grpc
import pytest

from segany.client import Client, InvalidArgument, Unavailable
from segany.service.proto import segany_pb2 as pb
from segany.service.proto import segany_pb2_grpc as pb_grpc
from segany.service.servicer import STREAM_OBJECTS_IN_FLIGHT, STREAM_REPLY_BUFFER
from tests.service.conftest import ServerThread, png_bytes, random_image


@pytest.fixture()
def srv(tiny_model):
    server = ServerThread(tiny_model).start()
    yield server
    server.stop()


def _stub(srv):
    channel = grpc.insecure_channel(srv.address)
    return channel, pb_grpc.SeganyStub(channel)


def _click_request(image_id: str) -> pb.SegmentRequest:
    return pb.SegmentRequest(image=pb.ImageSource(image_id=image_id), multimask=True,
                             prompts=[pb.Prompt(points=[pb.Point(x=5, y=5, label=1)])],
                             outputs=pb.OutputOptions(low_res_logits=True))


def test_a_stream_whose_client_does_not_read_holds_back_its_decodes(srv):
    """Replies wait in a small buffer; then decodes and the reading of requests wait too (no unbounded growth)."""
    with Client(srv.address) as c:
        image_id = c.embed(png_bytes(random_image(64, 64, seed=5))).id
    channel, stub = _stub(srv)
    n = 60
    done_sending = threading.Event()

    def requests():
        for i in range(n):
            yield pb.SegmentStreamRequest(object_id=f"o{i}", sequence=i, request=_click_request(image_id))
        done_sending.set()

    before = srv.engine.stats.decode_calls
    replies = stub.SegmentStream(requests(), timeout=60)
    time.sleep(2.0)  # the client reads nothing meanwhile
    held = srv.engine.stats.decode_calls - before
    # a few replies in gRPC's own buffers (a 256 KiB low-res reply fills a flow-control window) on top of ours
    assert held <= STREAM_REPLY_BUFFER + STREAM_OBJECTS_IN_FLIGHT + 6 < n, held
    got = sorted(r.sequence for r in replies)  # reading resumes everything: nothing was lost
    assert got == list(range(n)) and done_sending.is_set()
    channel.close()


def test_malformed_messages_are_invalid_argument(srv):
    channel = grpc.insecure_channel(srv.address)
    segment = channel.unary_unary("/segany.v1.Segany/Segment")  # raw bytes in and out
    good = _click_request("a" * 64).SerializeToString()
    not_utf8 = b"\x0a\x03\x12\x01\xff"  # SegmentRequest.image (1) = ImageSource.image_id (2) = b"\xff"
    for raw in (good[:-3], b"\xff\xff\xff\xff", not_utf8):
        with pytest.raises(grpc.RpcError) as info:
            segment(raw, timeout=10)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, raw
        assert "not a valid segany.v1 message" in info.value.details()
    time.sleep(0.2)  # the interceptor records just after the status is sent
    assert srv.service.metrics.requests.value(method="Segment", code="INVALID_ARGUMENT") == 3
    stream = channel.stream_stream("/segany.v1.Segany/SegmentStream")
    with pytest.raises(grpc.RpcError) as info:
        list(stream(iter([b"\x0a\x03\xff\xfe\xfd"]), timeout=10))  # object_id that is not UTF-8
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    channel.close()


def test_checks_that_need_no_image_come_before_its_encode(srv):
    before = srv.engine.stats.encode_images
    image = png_bytes(random_image(40, 40, seed=11))
    with Client(srv.address, retries=0) as c:
        with pytest.raises(InvalidArgument, match="NaN"):
            c.segment(image, points=[[float("nan"), 3]], labels=[1])
        with pytest.raises(InvalidArgument, match="box is inverted"):
            c.segment(image, box=[30, 30, 1, 1])
    _, stub = _stub(srv)
    with pytest.raises(grpc.RpcError) as info:
        stub.Embed(pb.EmbedRequest(image=pb.ImageSource(image_bytes=image), return_embedding=True,
                                   embedding_dtype=7), timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "embedding_dtype 7" in info.value.details()
    assert srv.engine.stats.encode_images == before  # refused before anything was encoded


def test_mask_ids_on_a_server_that_keeps_none_are_refused(tiny_model):
    server = ServerThread(tiny_model, mask_store_bytes=0).start()
    try:
        with Client(server.address, retries=0) as c:
            image = c.embed(png_bytes(random_image(32, 32, seed=6)))
            with pytest.raises(InvalidArgument, match="keeps no masks for mask ids"):
                c.segment(image.id, points=[[5, 5]], labels=[1], mask_ids=True)
            assert c.segment(image.id, points=[[5, 5]], labels=[1]).masks.shape[1:] == (32, 32)
    finally:
        server.stop()


def test_the_decoder_export_runs_once_whatever_the_callers_deadlines(tiny_model):
    calls = []

    def slow_provider(model):
        calls.append(1)
        time.sleep(1.0)
        return b"onnx bytes"

    server = ServerThread(tiny_model, decoder_onnx_provider=slow_provider).start()
    try:
        _, stub = _stub(server)
        for _ in range(3):  # each gives up before the export ends
            with pytest.raises(grpc.RpcError) as info:
                stub.GetDecoderOnnx(pb.GetDecoderOnnxRequest(), timeout=0.2)
            assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert stub.GetDecoderOnnx(pb.GetDecoderOnnxRequest(), timeout=10).model == b"onnx bytes"
        assert len(calls) == 1
    finally:
        server.stop()


def test_a_refused_export_is_remembered_and_reported(tiny_model):
    calls = []

    def no_decoder(model):
        calls.append(1)

    server = ServerThread(tiny_model, decoder_onnx_provider=no_decoder).start()
    try:
        with Client(server.address, retries=0) as c:
            assert c.model_info().decoder_onnx_available  # not tried yet
            for _ in range(2):
                with pytest.raises(Exception, match="no ONNX decoder is available"):
                    c.decoder_onnx()
            assert len(calls) == 1 and not c.model_info().decoder_onnx_available
    finally:
        server.stop()


def test_shutdown_ends_an_open_stream_with_unavailable(tiny_model):
    """An idle interactive session must not hold the shutdown for its whole grace period."""
    srv = ServerThread(tiny_model).start()
    with Client(srv.address) as c:
        image_id = c.embed(png_bytes(random_image(48, 48, seed=7))).id
    channel, stub = _stub(srv)
    first_answered = threading.Event()
    keep_open = threading.Event()

    def requests():
        yield pb.SegmentStreamRequest(object_id="a", sequence=0, request=_click_request(image_id))
        keep_open.wait(30)  # the user stops clicking; the stream stays open

    replies = stub.SegmentStream(requests(), timeout=60)
    seen, outcome = [], {}

    def reader():
        try:
            for reply in replies:
                seen.append(reply)
                first_answered.set()
        except grpc.RpcError as exc:
            outcome["code"], outcome["details"] = exc.code(), exc.details()

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        assert first_answered.wait(20)
        start = time.monotonic()
        srv.run(srv.service.stop(10))  # a 10 s grace: the stream must end well before it
        thread.join(10)
        assert time.monotonic() - start < 5
    finally:
        keep_open.set()
        channel.close()
        srv.loop.call_soon_threadsafe(srv.loop.stop)
        srv.thread.join(10)
    assert [r.sequence for r in seen] == [0] and seen[0].HasField("response")
    assert outcome["code"] == grpc.StatusCode.UNAVAILABLE and "shutting down" in outcome["details"]


def test_a_failed_warm_up_says_so_instead_of_asking_to_retry(tiny_model, monkeypatch):
    from segany.engine import Engine

    async def broken(self):
        raise RuntimeError("the accelerator vanished")

    monkeypatch.setattr(Engine, "warm_up", broken)
    server = ServerThread(tiny_model).start(wait_ready=False)
    try:
        with pytest.raises(RuntimeError, match="vanished"):
            server.run(server.service.wait_ready(30))
        with Client(server.address, retries=3, backoff=0.01) as c:
            with pytest.raises(Unavailable, match="failed to warm up and it will not become ready"):
                c.embed(png_bytes(random_image(16, 16)))
            assert c.health() == "NOT_SERVING"
    finally:
        server.stop()


def test_segany_serve_exits_3_when_the_model_cannot_warm_up(tiny_model, monkeypatch, capsys):
    from segany.engine import Engine
    from segany.service import Settings
    from segany.service.server import serve

    async def broken(self):
        raise RuntimeError("warm-up blew up")

    monkeypatch.setattr(Engine, "warm_up", broken)
    monkeypatch.setattr("segany.models.load_model", lambda name=None: tiny_model)  # what serve() loads
    from segany.errors import UnavailableError

    with pytest.raises(UnavailableError, match="failed to warm up: RuntimeError: warm-up blew up"):
        asyncio.run(asyncio.wait_for(serve(Settings(port=0, torch_threads=1)), 60))
    from segany.cli.main import exit_code_for

    assert exit_code_for(UnavailableError("x")) == 3


def test_a_superseded_request_is_never_also_answered():
    """With the reply queue full, replacing a pending request must not let its worker start it meanwhile."""
    from collections import Counter
    from types import SimpleNamespace

    from segany.service.servicer import SeganyServicer

    async def main():
        s = SeganyServicer.__new__(SeganyServicer)
        s.engine, s.warm_up_error, s._closing = SimpleNamespace(ready=True), None, asyncio.Event()
        s.metrics = SimpleNamespace(superseded=SimpleNamespace(inc=lambda: None))
        gate = asyncio.Event()

        async def stream_one(req):  # sequence 0 is a slow decode; the others answer at once
            if req.sequence == 0:
                await gate.wait()
            return pb.SegmentStreamResponse(object_id=req.object_id, sequence=req.sequence)

        s._stream_one = stream_one
        inbox: asyncio.Queue = asyncio.Queue()

        async def requests():
            while (req := await inbox.get()) is not None:
                yield req

        def send(oid, seq):
            inbox.put_nowait(pb.SegmentStreamRequest(object_id=oid, sequence=seq))

        stream = s.SegmentStream(requests(), SimpleNamespace())
        send("a", 0)
        first = asyncio.ensure_future(stream.__anext__())  # one reply read, then the client stops reading
        for i in range(1, STREAM_REPLY_BUFFER + 2):  # other objects fill the reply queue
            send(f"o{i}", i)
        await asyncio.sleep(0.1)
        replies = [await first]
        seq = STREAM_REPLY_BUFFER + 2
        send("a", seq)  # pending behind a's held decode
        await asyncio.sleep(0.1)
        gate.set()  # a's decode ends; its reply waits on the full queue
        await asyncio.sleep(0.1)
        send("a", seq + 1)  # supersedes `seq`
        await asyncio.sleep(0.1)
        inbox.put_nowait(None)
        replies += [r async for r in stream]
        return Counter(r.sequence for r in replies), {r.sequence for r in replies if r.superseded}

    per_sequence, superseded = asyncio.run(main())
    assert all(n == 1 for n in per_sequence.values()), per_sequence
    assert superseded == {STREAM_REPLY_BUFFER + 2} and len(per_sequence) == STREAM_REPLY_BUFFER + 4


def test_shutdown_answers_a_request_that_was_waiting_for_a_slot(tiny_model):
    srv = ServerThread(tiny_model).start()

    async def slow_one(req):
        await asyncio.sleep(1.0)
        return pb.SegmentStreamResponse(object_id=req.object_id, sequence=req.sequence)

    srv.service.servicer._stream_one = slow_one
    n = STREAM_OBJECTS_IN_FLIGHT + 1
    keep_open = threading.Event()

    def requests():
        for i in range(n):
            yield pb.SegmentStreamRequest(object_id=f"o{i}", sequence=i)
        keep_open.wait(20)

    channel, stub = _stub(srv)
    replies = stub.SegmentStream(requests(), timeout=30)
    seen, outcome = [], {}

    def reader():
        try:
            for reply in replies:
                seen.append(reply.sequence)
        except grpc.RpcError as exc:
            outcome["code"] = exc.code()

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        time.sleep(0.5)  # 16 decoding, the 17th read and waiting for a slot
        srv.run(srv.service.stop(10))
        thread.join(10)
    finally:
        keep_open.set()
        channel.close()
        srv.loop.call_soon_threadsafe(srv.loop.stop)
        srv.thread.join(10)
    assert sorted(seen) == list(range(n)) and outcome["code"] == grpc.StatusCode.UNAVAILABLE
