"""The Ray Serve application: two replicas behind Ray's gRPC proxy sharing a Redis cache, driven by the real client."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.ray, pytest.mark.slow]
ray = pytest.importorskip("ray")
redis = pytest.importorskip("redis")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "cache"))
from test_redis import _free_port, _start_redis, _stop  # noqa: E402  (the helpers of the cache tests)

from segany.client import Client, InvalidArgument, NotFound, Outputs, segment_request  # noqa: E402
from tests.service.conftest import png_bytes, random_image  # noqa: E402


@pytest.fixture(scope="module")
def redis_url():
    process, url = _start_redis()
    yield url
    _stop(process)


SPLIT = {"num_replicas": 2, "num_cpus": 0.5, "encoder_replicas": 1, "encoder_num_cpus": 0.5, "cache_bytes": 64 << 20}


@pytest.fixture(scope="module")
def ray_cluster():
    from ray import serve
    from ray.serve.config import gRPCOptions

    from segany.service.ray_app import SERVICER_FUNCTION

    previous = os.environ.get("RAY_USAGE_STATS_ENABLED")
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"  # closed network: no usage report
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=128 << 20, log_to_driver=False)
    grpc_port = _free_port()
    try:
        serve.start(grpc_options=gRPCOptions(port=grpc_port, grpc_servicer_functions=[SERVICER_FUNCTION]),
                    http_options={"host": "127.0.0.1", "port": _free_port()})
        yield f"127.0.0.1:{grpc_port}"
    finally:
        serve.shutdown()
        ray.shutdown()
        if previous is None:
            os.environ.pop("RAY_USAGE_STATS_ENABLED", None)
        else:
            os.environ["RAY_USAGE_STATS_ENABLED"] = previous


@pytest.fixture(scope="module")
def ray_address(ray_cluster, redis_url):
    """Two decoding replicas and one encoder replica (the split deployment), sharing Redis."""
    from ray import serve

    from segany.service.ray_app import app

    serve.run(app({**SPLIT, "redis_url": redis_url}), name="segany")
    with Client(ray_cluster, timeout=120) as client:
        for _ in range(16):  # builds and warms both replicas (each warm-up encodes one small image remotely)
            assert client.model_info().ready
    return ray_cluster


def _iou_ok(masks, ref_masks) -> bool:
    inter = np.logical_and(masks, ref_masks).sum(axis=(-2, -1))
    union = np.logical_or(masks, ref_masks).sum(axis=(-2, -1))
    return bool((inter >= 0.99 * union).all())


def _encoded_by_the_encoder() -> int:
    from ray import serve

    return serve.get_deployment_handle("SeganyEncoder", app_name="segany").images_encoded.remote().result()


def test_replicas_answer_like_the_predictor_and_share_embeddings(ray_address, redis_url):
    import segany
    from segany.embedding import ImageEmbedding
    from segany.images import decode_image

    array = random_image(120, 160, seed=5)
    data = png_bytes(array)
    predictor = segany.Predictor(segany.load_model())
    local = predictor.encode(decode_image(data))
    encoded_before = _encoded_by_the_encoder()
    with Client(ray_address, timeout=120) as client:
        img = client.embed(data, return_embedding=True)
        assert (img.height, img.width) == (120, 160)
        assert _encoded_by_the_encoder() == encoded_before + 1  # the encoder deployment encoded it
        # The encoder replica runs on its own thread budget: its bf16 encoder rounds differently, so the embedding
        # is compared with a tolerance and the masks are checked against a decode of its embedding.
        embedding = ImageEmbedding.from_bytes(img.embedding)
        assert embedding.model_fingerprint == local.model_fingerprint
        remote, here = embedding.image_embeddings.numpy().ravel(), local.image_embeddings.numpy().ravel()
        assert np.dot(remote, here) / (np.linalg.norm(remote) * np.linalg.norm(here)) > 0.999
        assert np.abs(remote - here).mean() < 0.02
        store = redis.Redis.from_url(redis_url)
        assert store.dbsize() >= 1  # the embedding went to the shared tier
        # The replica that did not embed the image reads it from the shared tier. Calls without the routing metadata
        # go to either replica: one of 10 reaches the other one with probability 1 - 2**-9.
        hits_before = int(store.info("stats")["keyspace_hits"])
        request = segment_request(img.id, [{"points": [[30, 40]], "labels": [1]}], True, Outputs())
        for _ in range(10):
            client._stub.Segment(request, timeout=60)
        assert int(store.info("stats")["keyspace_hits"]) > hits_before
        store.close()
        for i in range(10):
            click = [[20 + 6 * i, 30 + 3 * i]]
            res = client.segment(img.id, points=click, labels=[1], multimask=True)
            ref = predictor.predict(embedding, points=click, labels=[1], multimask=True)
            assert _iou_ok(res.masks, ref.masks)
            np.testing.assert_allclose(res.scores, ref.scores, atol=1e-2)
        # errors keep their status codes and messages through Ray's proxy
        with pytest.raises(NotFound, match="call Embed") as info:
            client.segment("0" * 64, points=[[10, 10]], labels=[1])
        assert info.value.request_id  # the replica's request id comes back (in the trailing metadata, via Ray)
        _, call = client._stub.Segment.with_call(request, timeout=60, metadata=(("x-request-id", "ray-rid-1"),))
        assert ("x-request-id", "ray-rid-1") in tuple(call.trailing_metadata())
        with pytest.raises(InvalidArgument, match="NaN"):
            client.segment(img.id, points=[[float("nan"), 10]], labels=[1])
        assert client.embed(data).cached
        assert _encoded_by_the_encoder() == encoded_before + 1
        info = client.model_info()
        assert info.ready and info.fingerprint == local.model_fingerprint


def _metric(client: Client, image_id: str, prefix: str) -> int:
    """A counter of the replica that Ray routes ``image_id`` to (0 when it has not counted yet)."""
    from segany.service.proto import segany_pb2 as pb

    text = client._stub.GetMetrics(pb.GetMetricsRequest(), timeout=60,
                                   metadata=(("multiplexed_model_id", image_id),)).text
    lines = [x for x in text.splitlines() if x.startswith(prefix + " ")]
    return int(float(lines[0].split()[1])) if lines else 0


def _decode_calls(client: Client, image_id: str) -> int:
    return _metric(client, image_id, "segany_decode_calls_total")


def test_clicks_on_an_image_go_to_the_replica_that_holds_it(ray_address):
    with Client(ray_address, timeout=120) as client:
        img = client.embed(png_bytes(random_image(90, 100, seed=11)))
        time.sleep(1.0)  # the replica pushes the ids it holds to Ray's router every 0.1 s
        rpcs = 'segany_rpc_requests_total{code="OK",method="Segment"}'
        before, rpcs_before = _decode_calls(client, img.id), _metric(client, img.id, rpcs)
        for i in range(20):
            client.segment(img.id, points=[[5 + 4 * i, 40]], labels=[1])
        # without routing, each click would go to either replica (10 of 20 expected here)
        assert _decode_calls(client, img.id) - before == 20
        assert _metric(client, img.id, rpcs) - rpcs_before == 20  # the replicas count RPCs as `segany serve` does


def test_segment_stream_through_ray(ray_address):
    import segany
    from segany.embedding import ImageEmbedding

    with Client(ray_address, timeout=120) as client:
        img = client.embed(png_bytes(random_image(80, 120, seed=12)), return_embedding=True)
        embedding = ImageEmbedding.from_bytes(img.embedding)
        predictor = segany.Predictor(segany.load_model())
        prompts = [("a", {"points": [[20, 30]], "labels": [1]}), ("b", {"box": [10, 10, 70, 60]}),
                   ("a", {"points": [[20, 30], [50, 40]], "labels": [1, 0]})]
        replies = list(client.segment_stream(prompts, image=img.id, multimask=False))
        answered = {(r.object_id, r.sequence): r for r in replies if not r.superseded}
        assert ("b", 1) in answered and ("a", 2) in answered  # the last prompt of each object is always answered
        for (_, sequence), reply in answered.items():
            assert reply.error is None, reply.error
            ref = predictor.predict(embedding, multimask=False, **prompts[sequence][1])
            assert _iou_ok(reply.result.masks, ref.masks)
        (reply,) = client.segment_stream([("a", {"points": [[1, 1]], "labels": [1]})], image="0" * 64)
        assert isinstance(reply.error, NotFound) and "call Embed" in reply.error.message  # per request, as served


def test_annotate_with_the_ray_app_as_its_server(ray_address, tmp_path):
    """`segany annotate --server` against Ray's proxy (no grpc.health.v1 there: the client waits on GetModelInfo)."""
    import json

    from segany.cli.main import main
    from segany.client import Unimplemented
    from segany.masks import decode_rle
    from tests.annotate.conftest import write_images, write_jsonl

    with Client(ray_address, timeout=60) as client, pytest.raises(Unimplemented):
        client.health()  # what makes wait_ready fall back
    images = tmp_path / "images"
    write_images(images, {"a.png": (90, 120), "b.png": (70, 60)})
    prompts = write_jsonl(tmp_path / "p.jsonl", [
        {"image": "a.png", "prompts": [{"box": [10, 10, 80, 60], "class": "car"}, {"points": [[40, 30]]}]},
        {"image": "b.png", "box": [5, 5, 50, 60], "class": "car"},
    ])
    outs = {}
    for name, source in (("ray", ["--server", ray_address]), ("local", [])):
        outs[name] = tmp_path / name
        assert main(["annotate", str(images), "--out", str(outs[name]), "--prompts", str(prompts), *source]) == 0
    ray_coco, local_coco = (json.loads((outs[n] / "annotations.json").read_text()) for n in ("ray", "local"))
    assert len(ray_coco["annotations"]) == len(local_coco["annotations"]) == 3
    for mine, theirs in zip(ray_coco["annotations"], local_coco["annotations"]):
        assert mine["category_id"] == theirs["category_id"]
        a, b = (decode_rle(x["segmentation"]) for x in (mine, theirs))
        # the encoder replica's bf16 encoder rounds differently from this process: masks agree, not bit for bit
        assert np.logical_and(a, b).sum() >= 0.9 * np.logical_or(a, b).sum()


def _descends_from(pid: int, ancestor: int) -> bool:
    while pid > 1:
        if pid == ancestor:
            return True
        pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])  # the parent
    return False


def _replica_pids(deployment: str) -> list[int]:
    """This test's replica processes: titled ``ray::ServeReplica:segany:<deployment>`` by Ray, and started by the
    raylet that ``ray.init`` started from this process (another Ray cluster on the host does not count)."""
    title = f"ServeReplica:segany:{deployment}".encode()
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if (proc.name.isdigit() and title in (proc / "cmdline").read_bytes()
                    and _descends_from(int(proc.name), os.getpid())):
                pids.append(int(proc.name))
        except (OSError, ValueError, IndexError):
            continue
    return pids


def test_replicas_start_with_the_serve_process_settings(ray_address):
    from segany.service.ray_app import REPLICA_ENV

    # glibc reads its malloc variables when a process starts, and Ray starts the replicas: check their environment
    pids = {name: _replica_pids(name) for name in ("SeganyReplica", "SeganyEncoder")}
    assert [len(p) for p in pids.values()] == [2, 1]
    for pid in pids["SeganyReplica"] + pids["SeganyEncoder"]:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        env = dict(item.decode(errors="replace").split("=", 1) for item in environ if b"=" in item)
        assert {k: env.get(k) for k in REPLICA_ENV} == REPLICA_ENV
    assert REPLICA_ENV["MALLOC_ARENA_MAX"] == "1" and REPLICA_ENV["OMP_WAIT_POLICY"] == "PASSIVE"


def test_replicas_that_encode_their_own_images(ray_cluster, redis_url):
    """The simple deployment (no encoder deployment): each replica encodes, Redis is shared. Runs last: it replaces
    the split application."""
    from ray import serve

    from segany.service.ray_app import app

    serve.run(app({"num_replicas": 2, "num_cpus": 0.5, "redis_url": redis_url, "cache_bytes": 64 << 20}),
              name="segany")
    deadline = time.monotonic() + 60
    while _replica_pids("SeganyEncoder") and time.monotonic() < deadline:  # the split app's encoder winds down
        time.sleep(0.5)
    assert _replica_pids("SeganyEncoder") == []
    with Client(ray_cluster, timeout=120) as client:
        img = client.embed(png_bytes(random_image(64, 72, seed=13)), return_embedding=True)
        res = client.segment(img.id, points=[[30, 30]], labels=[1])
        assert res.masks.shape == (3, 64, 72)
        assert client.embed(img.id).cached


def test_a_replica_that_cannot_load_its_model_fails_calls_and_streams_with_unavailable(ray_cluster):
    """Through Ray's proxy, unary calls and streams alike: a stream that ended quietly would leave its prompts
    unanswered with status OK."""
    import grpc
    from ray import serve

    from segany.service.proto import segany_pb2 as pb
    from segany.service.proto import segany_pb2_grpc as pb_grpc
    from segany.service.ray_app import app

    serve.run(app({"model": "no-such-model"}), name="broken", route_prefix="/broken")
    try:
        metadata = (("application", "broken"),)
        with grpc.insecure_channel(ray_cluster) as channel:
            stub = pb_grpc.SeganyStub(channel)
            with pytest.raises(grpc.RpcError) as unary:
                stub.Segment(pb.SegmentRequest(), timeout=60, metadata=metadata)
            assert unary.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "could not load its model" in unary.value.details()
            request = pb.SegmentStreamRequest(object_id="a", request=pb.SegmentRequest(
                image=pb.ImageSource(image_id="0" * 64)))
            with pytest.raises(grpc.RpcError) as stream:
                list(stub.SegmentStream(iter([request]), timeout=60, metadata=metadata))
            assert stream.value.code() == grpc.StatusCode.UNAVAILABLE, stream.value
            assert "could not load its model" in stream.value.details()
    finally:
        serve.delete("broken")


def test_serve_config_is_valid_and_names_this_app():
    import importlib

    import yaml
    from ray.serve.schema import ServeDeploySchema

    from segany.service.ray_app import SERVICER_FUNCTION, app

    config = yaml.safe_load((Path(__file__).resolve().parents[2] / "deploy" / "ray" / "serve_config.yaml").read_text())
    schema = ServeDeploySchema.model_validate(config)
    assert schema.grpc_options.grpc_servicer_functions == [SERVICER_FUNCTION]
    (application,) = schema.applications
    module, name = application.import_path.split(":")
    assert getattr(importlib.import_module(module), name) is app
    app(application.args)  # every arg is a known setting
    with pytest.raises(ValueError, match="unknown segany settings"):
        app({"redis": "redis://x"})


def test_app_refuses_settings_that_do_not_apply_behind_ray():
    from segany.service.ray_app import app

    with pytest.raises(ValueError, match="auth_token"):
        app({"auth_token": "secret"})  # would protect nothing behind Ray's proxy
    with pytest.raises(ValueError, match="cache_dir"):
        app({"cache_dir": "/tmp/x"})
    with pytest.raises(Exception, match="precision"):
        app({"precision": "fastest"})  # validated before any replica starts
    with pytest.raises(ValueError, match="redis_url"):
        app({"num_replicas": 2})  # an image embedded by one replica would be NOT_FOUND on the other
    with pytest.raises(ValueError, match="redis_url"):
        app({"num_replicas": 2, "encoder_replicas": 1})
    app({"encoder_replicas": 2})  # one decoding replica holds every image it embeds: no shared tier needed
    app({"encoder_replicas": 1, "encoder_num_gpus": 1, "num_gpus": 1})  # both deployments on CUDA
    with pytest.raises(ValueError, match="needs num_gpus"):
        app({"device": "cuda"})  # Ray would hide the GPUs from the replica
    with pytest.raises(Exception, match="device must be"):
        app({"device": "gpu"})
    with pytest.raises(ValueError, match="encoder_replicas"):
        app({"encoder_replicas": -1, "redis_url": "redis://127.0.0.1:1/0"})
    app({"num_replicas": 2, "encoder_replicas": 1, "encoder_num_cpus": 2, "redis_url": "redis://127.0.0.1:1/0"})


def test_a_replica_whose_model_cannot_load_answers_unavailable_and_reports_unhealthy():
    import asyncio

    import grpc

    from segany.service.proto import segany_pb2 as pb
    from segany.service.ray_app import SeganyReplica

    class RayContext:  # what Ray's RayServegRPCContext offers the replica
        code = details_ = None

        def set_code(self, code):
            self.code = code

        def set_details(self, details):
            self.details_ = details

        def details(self):
            return self.details_

        def invocation_metadata(self):
            return ()

    replica = SeganyReplica.func_or_class({"model": "no-such-model"})
    replica.check_health()  # nothing built yet: healthy
    context = RayContext()
    answer = asyncio.run(replica.Segment(pb.SegmentRequest(), context))
    assert answer == pb.SegmentResponse()
    assert context.code == grpc.StatusCode.UNAVAILABLE and "could not load its model" in context.details_
    with pytest.raises(RuntimeError, match="did not load"):
        replica.check_health()

    async def stream():  # a stream must raise after setting its code: Ray sends a stream's status with an exception
        return [reply async for reply in replica.SegmentStream(None, context)]

    context = RayContext()
    with pytest.raises(grpc.aio.AbortError, match="could not load its model"):
        asyncio.run(stream())
    assert context.code == grpc.StatusCode.UNAVAILABLE


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the answer on a machine without a GPU")
def test_an_encoder_replica_without_its_gpu_fails_its_batches_and_reports_unhealthy():
    import asyncio

    from segany.errors import UnavailableError
    from segany.service.ray_app import SeganyEncoder

    encoder = SeganyEncoder.func_or_class({"device": "cuda"})  # what encoder_num_gpus > 0 configures
    with pytest.raises(UnavailableError, match="'cuda' is not available here"):
        asyncio.run(encoder.encode([np.zeros((8, 8, 3), np.uint8)], [(8, 8)]))
    with pytest.raises(RuntimeError, match="did not load"):
        encoder.check_health()


def test_a_stream_whose_caller_leaves_closes_the_servicers_stream_at_once():
    """Ray closes the replica's generator when the client goes away; the servicer's own stream (its reader and worker
    tasks) must end then, not whenever the event loop finalises it. Counted as CANCELLED."""
    import asyncio

    from segany.service.metrics import ServiceMetrics
    from segany.service.proto import segany_pb2 as pb
    from segany.service.ray_app import SeganyReplica

    closed = []

    class Servicer:
        metrics = ServiceMetrics(lambda: iter(()))

        async def SegmentStream(self, requests, context):  # noqa: N802
            try:
                while True:
                    yield pb.SegmentStreamResponse(object_id="a")
            finally:
                closed.append(True)

    class RayContext:
        def code(self):
            return None

        def details(self):
            return ""

        def peer(self):
            return "proxy"

        def invocation_metadata(self):
            return ()

        def set_trailing_metadata(self, metadata):
            self.trailing = metadata

    replica = SeganyReplica.func_or_class({})
    replica._servicer = Servicer()

    async def main():
        stream = replica.SegmentStream(None, RayContext())
        assert (await stream.__anext__()).object_id == "a"
        await stream.aclose()  # what Ray does when the caller leaves
        return list(closed)

    assert asyncio.run(main()) == [True]
    assert 'segany_rpc_requests_total{code="CANCELLED",method="SegmentStream"} 1' in Servicer.metrics.render()
