"""Operations: auth, TLS/mTLS, deadlines, readiness, retries, graceful shutdown, metrics over HTTP, settings."""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
import urllib.request

import pytest

from segany.client import Client, DeadlineExceeded, InvalidArgument, ResourceExhausted, Unauthenticated, Unavailable
from segany.errors import InvalidInputError
from segany.service.settings import Settings
from tests.service.conftest import ServerThread, png_bytes, random_image


def test_bearer_token(tiny_model):
    srv = ServerThread(tiny_model, auth_token="s3cret", warmup=False).start()
    try:
        with Client(srv.address) as anonymous, pytest.raises(Unauthenticated, match="missing bearer token"):
            anonymous.model_info()
        with Client(srv.address, token="wrong") as wrong, pytest.raises(Unauthenticated, match="invalid bearer"):
            wrong.embed(png_bytes(random_image(16, 16)))
        with Client(srv.address) as anonymous:
            assert anonymous.health() == "SERVING"  # probes need no token
        with Client(srv.address, token="s3cret") as good:
            assert good.model_info().variant == "test-tiny"
            img = good.embed(png_bytes(random_image(16, 16)))
            answers = list(good.segment_stream([("a", {"points": [[1, 1]], "labels": [1]})], image=img))
            assert answers[0].result is not None
        with Client(srv.address) as anonymous, pytest.raises(Unauthenticated):
            list(anonymous.segment_stream([("a", {"points": [[1, 1]], "labels": [1]})], image=img))
    finally:
        srv.stop()


def _openssl(*args: str, cwd) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command to make certificates")
def test_tls_and_mutual_tls(tiny_model, tmp_path):
    d = tmp_path
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
             "-subj", "/CN=segany-test-ca", cwd=d)
    (d / "san.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name in ("server", "client"):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                 "-subj", f"/CN={name}", cwd=d)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                 "-out", f"{name}.pem", "-days", "2", "-extfile", "san.cnf", cwd=d)
    ca = (d / "ca.pem").read_bytes()
    srv = ServerThread(tiny_model, warmup=False, tls_cert=str(d / "server.pem"), tls_key=str(d / "server.key"),
                       tls_client_ca=str(d / "ca.pem")).start()
    try:
        with Client(srv.address, root_certificates=ca, private_key=(d / "client.key").read_bytes(),
                    certificate_chain=(d / "client.pem").read_bytes()) as c:
            assert c.model_info().variant == "test-tiny"
        with Client(srv.address, root_certificates=ca, retries=0, timeout=5) as no_cert, pytest.raises(Unavailable):
            no_cert.model_info()  # mutual TLS: a client without a certificate cannot connect
        with Client(srv.address, retries=0, timeout=5) as plain, pytest.raises(Unavailable):
            plain.model_info()
    finally:
        srv.stop()


def _hold_encoder(srv) -> threading.Event:
    predictor = srv.engine.predictor
    original = predictor.encode_batch
    gate = threading.Event()
    entered = threading.Event()

    def held(images):
        entered.set()
        gate.wait(30)
        return original(images)

    predictor.encode_batch = held
    gate.entered = entered
    return gate


def test_deadline_frees_queued_work(tiny_model):
    srv = ServerThread(tiny_model, encode_batch=1).start()
    try:
        gate = _hold_encoder(srv)
        with Client(srv.address, timeout=30) as c:
            first = threading.Thread(target=c.embed, args=(png_bytes(random_image(32, 32, seed=1)),))
            first.start()
            assert gate.entered.wait(10)
            start = time.perf_counter()
            with pytest.raises(DeadlineExceeded):
                c.embed(png_bytes(random_image(32, 32, seed=2)), timeout=0.5)
            assert time.perf_counter() - start < 5
            deadline = time.monotonic() + 5
            while srv.engine.stats.encode_cancelled < 1 and time.monotonic() < deadline:
                time.sleep(0.02)
            assert srv.engine.stats.encode_cancelled == 1 and srv.engine.queue_depth() == 0
            gate.set()
            first.join(30)
            assert srv.engine.stats.encode_images == 1  # the first image; the expired one never ran
    finally:
        srv.stop()


def test_not_serving_until_warm_then_retries_succeed(tiny_model):
    gate = threading.Event()
    hook = tiny_model.image_encoder.register_forward_pre_hook(lambda module, inputs: None if gate.wait(30) else None)
    srv = ServerThread(tiny_model)
    try:
        srv.start(wait_ready=False)  # warm-up is now held inside the encoder
        with Client(srv.address, retries=0) as c:
            assert c.health() == "NOT_SERVING"
            with pytest.raises(Unavailable, match="still loading and warming up"):
                c.embed(png_bytes(random_image(16, 16)))
            assert c.model_info().ready is False  # info answers before ready
        threading.Timer(0.4, gate.set).start()
        with Client(srv.address, retries=30, backoff=0.05) as c:
            assert len(c.embed(png_bytes(random_image(16, 16))).id) == 64  # retried UNAVAILABLE until warm
            assert c.health() == "SERVING"
        before = srv.service.metrics.requests.value(method="Segment", code="INVALID_ARGUMENT")
        with Client(srv.address, retries=5) as c, pytest.raises(InvalidArgument):
            c.segment(png_bytes(random_image(16, 16)), box=[5, 5, 1, 1])
        # not retried: INVALID_ARGUMENT is final (the interceptor records just after the status is sent)
        time.sleep(0.2)
        assert srv.service.metrics.requests.value(method="Segment", code="INVALID_ARGUMENT") == before + 1
    finally:
        gate.set()
        hook.remove()
        srv.stop()


def test_graceful_shutdown_finishes_in_flight_calls(tiny_model):
    import asyncio

    srv = ServerThread(tiny_model, encode_batch=1).start()
    gate = _hold_encoder(srv)
    result: dict = {}
    c = Client(srv.address, timeout=30, retries=0)

    def embed():
        try:
            result["ok"] = c.embed(png_bytes(random_image(24, 24, seed=8)))
        except Exception as exc:  # noqa: BLE001
            result["error"] = exc

    caller = threading.Thread(target=embed)
    caller.start()
    assert gate.entered.wait(10)
    stopping = asyncio.run_coroutine_threadsafe(srv.service.stop(10), srv.loop)
    time.sleep(0.3)
    with Client(srv.address, retries=0, timeout=3) as late, pytest.raises(Unavailable):
        late.embed(png_bytes(random_image(24, 24, seed=9)))
    gate.set()
    caller.join(30)
    stopping.result(30)
    c.close()
    srv.loop.call_soon_threadsafe(srv.loop.stop)
    srv.thread.join(10)
    assert "ok" in result, result


def test_metrics_over_http(tiny_model):
    srv = ServerThread(tiny_model, warmup=False, metrics_port=0).start()
    try:
        url = f"http://127.0.0.1:{srv.service.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            body = response.read().decode()
            assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        assert "segany_cache_hits_total" in body and "segany_encode_queue_depth" in body
    finally:
        srv.stop()


def test_settings_from_env_and_validation():
    s = Settings.from_env({"SEGANY_PORT": "0", "SEGANY_CACHE_BYTES": "256MiB", "SEGANY_AUTH_TOKEN": "t",
                           "SEGANY_WARMUP": "false", "SEGANY_GRACE_SECONDS": "2.5"}, host="0.0.0.0")
    assert (s.port, s.cache_bytes, s.auth_token, s.warmup, s.grace_seconds, s.host) == (
        0, 256 << 20, "t", False, 2.5, "0.0.0.0")
    with pytest.raises(InvalidInputError, match="SEGANY_PORT='x'"):
        Settings.from_env({"SEGANY_PORT": "x"})
    with pytest.raises(InvalidInputError, match="cannot exceed max_receive_message_bytes"):
        Settings.from_env({}, max_image_bytes="100MiB")
    with pytest.raises(InvalidInputError, match="either a model name or a checkpoint"):
        Settings.from_env({}, model="vit_b", checkpoint="/x.pt")


def test_disk_cache_survives_a_restart(tiny_model, tmp_path):
    data = png_bytes(random_image(32, 40, seed=21))
    first = ServerThread(tiny_model, warmup=False, cache_bytes=0, cache_dir=str(tmp_path), cache_disk_bytes="64MiB")
    first.start()
    try:
        with Client(first.address) as c:
            image_id = c.embed(data).id
    finally:
        first.stop()
    second = ServerThread(tiny_model, warmup=False, cache_dir=str(tmp_path), cache_disk_bytes="64MiB").start()
    try:
        with Client(second.address) as c:
            res = c.segment(image_id, points=[[5, 5]], labels=[1])  # the id still works after the restart
            assert res.masks.shape == (3, 32, 40)
            assert c.embed(data).cached
        assert second.engine.stats.encode_images == 0
    finally:
        second.stop()


def test_response_over_the_send_limit_is_refused_with_advice(tiny_model):
    srv = ServerThread(tiny_model, warmup=False, max_send_message_bytes="1MiB", max_image_bytes="1MiB").start()
    try:
        with Client(srv.address) as c:
            img = c.embed(png_bytes(random_image(32, 32, seed=22)))
            with pytest.raises(ResourceExhausted, match=r"the response would be \d+ bytes, over this server's limit"):
                c.embed(img, return_embedding=True)  # 4 MiB of fp32
            assert len(c.embed(img).id) == 64  # the server goes on
    finally:
        srv.stop()


def test_two_replicas_share_embeddings_through_redis(tiny_model):
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (apt-get install -y redis-server)")
    redis = pytest.importorskip("redis")
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    process = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    probe = redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=0.2)
    deadline = time.monotonic() + 10
    while True:
        try:
            probe.ping()
            break
        except redis.ConnectionError:
            assert time.monotonic() < deadline and process.poll() is None, "redis-server did not start"
            time.sleep(0.05)
    probe.close()
    a = b = None
    try:
        a = ServerThread(tiny_model, warmup=False, redis_url=url).start()
        b = ServerThread(tiny_model, warmup=False, redis_url=url).start()
        with Client(a.address) as ca, Client(b.address) as cb:
            image_id = ca.embed(png_bytes(random_image(32, 40, seed=31))).id
            res = cb.segment(image_id, points=[[5, 5]], labels=[1])  # replica b never saw the image
            assert res.masks.shape == (3, 32, 40)
        assert b.engine.stats.encode_images == 0
    finally:
        for srv in (a, b):
            if srv is not None:
                srv.stop()
        process.terminate()
        process.wait(10)


def test_call_bookkeeping_counts_logs_and_never_masks_the_call_outcome():
    """begin_call / end_call (the interceptor's and the Ray replicas' bookkeeping): counted, and a call finished in
    another context (an async generator finalised by the loop) does not raise from the token resets."""
    import contextvars

    from segany.service.interceptors import REQUEST_ID, STAGES, begin_call, end_call
    from segany.service.metrics import ServiceMetrics

    class Context:
        def invocation_metadata(self):
            return (("x-request-id", "rid-7"),)

    metrics = ServiceMetrics(lambda: iter(()))
    state = begin_call(Context())
    assert REQUEST_ID.get() == "rid-7" and STAGES.get() == {}
    STAGES.get()["decode"] = 0.01
    end_call(metrics, "Segment", "OK", state, "peer")
    assert REQUEST_ID.get() != "rid-7" and STAGES.get() is None  # reset
    text = metrics.render()
    assert 'segany_rpc_requests_total{code="OK",method="Segment"} 1' in text
    assert 'segany_stage_latency_seconds_count{stage="decode"} 1' in text
    state = contextvars.Context().run(begin_call, Context())  # tokens made in another context
    end_call(metrics, "SegmentStream", "CANCELLED", state, "peer")  # no ValueError
    assert 'segany_rpc_requests_total{code="CANCELLED",method="SegmentStream"} 1' in metrics.render()
