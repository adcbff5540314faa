"""The Ray Serve application: two replicas behind Ray's gRPC proxy sharing a Redis cache, driven by the real client."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.ray, pytest.mark.slow]
ray = pytest.importorskip("ray")
redis = pytest.importorskip("redis")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "cache"))
from test_redis import _free_port, _start_redis, _stop  # noqa: E402  (the helpers of the cache tests)

from segany.client import Client, InvalidArgument, NotFound  # noqa: E402
from tests.service.conftest import png_bytes, random_image  # noqa: E402


@pytest.fixture(scope="module")
def redis_url():
    process, url = _start_redis()
    yield url
    _stop(process)


@pytest.fixture(scope="module")
def ray_address(redis_url):
    from ray import serve
    from ray.serve.config import gRPCOptions

    from segany.service.ray_app import SERVICER_FUNCTION, app

    previous = os.environ.get("RAY_USAGE_STATS_ENABLED")
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"  # closed network: no usage report
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=128 << 20, log_to_driver=False)
    grpc_port = _free_port()
    try:
        serve.start(grpc_options=gRPCOptions(port=grpc_port, grpc_servicer_functions=[SERVICER_FUNCTION]),
                    http_options={"host": "127.0.0.1", "port": _free_port()})
        serve.run(app({"num_replicas": 2, "redis_url": redis_url, "cache_bytes": 64 << 20}), name="segany")
        yield f"127.0.0.1:{grpc_port}"
    finally:
        serve.shutdown()
        ray.shutdown()
        if previous is None:
            os.environ.pop("RAY_USAGE_STATS_ENABLED", None)
        else:
            os.environ["RAY_USAGE_STATS_ENABLED"] = previous


def test_replicas_answer_like_the_predictor_and_share_embeddings(ray_address, redis_url):
    import segany
    from segany.embedding import ImageEmbedding
    from segany.images import decode_image

    array = random_image(120, 160, seed=5)
    data = png_bytes(array)
    predictor = segany.Predictor(segany.load_model())
    local = predictor.encode(decode_image(data))
    with Client(ray_address, timeout=120) as client:
        img = client.embed(data, return_embedding=True)
        assert (img.height, img.width) == (120, 160)
        # The replica runs on its own thread budget (Ray gives it one CPU): its bf16 encoder rounds differently, so
        # the embedding is compared with a tolerance and the masks are checked against a decode of its embedding.
        embedding = ImageEmbedding.from_bytes(img.embedding)
        assert embedding.model_fingerprint == local.model_fingerprint
        remote, here = embedding.image_embeddings.numpy().ravel(), local.image_embeddings.numpy().ravel()
        assert np.dot(remote, here) / (np.linalg.norm(remote) * np.linalg.norm(here)) > 0.999
        assert np.abs(remote - here).mean() < 0.02
        store = redis.Redis.from_url(redis_url)
        assert store.dbsize() >= 1  # the embedding went to the shared tier
        hits_before = int(store.info("stats")["keyspace_hits"])
        for i in range(20):  # routed to either replica: the one that did not encode reads the shared tier
            click = [[20 + 6 * i, 30 + 3 * i]]
            res = client.segment(img.id, points=click, labels=[1], multimask=True)
            ref = predictor.predict(embedding, points=click, labels=[1], multimask=True)
            inter = np.logical_and(res.masks, ref.masks).sum(axis=(1, 2))
            union = np.logical_or(res.masks, ref.masks).sum(axis=(1, 2))
            assert (inter >= 0.99 * union).all(), (inter, union)
            np.testing.assert_allclose(res.scores, ref.scores, atol=1e-2)
        assert int(store.info("stats")["keyspace_hits"]) > hits_before
        store.close()
        # errors keep their status codes and messages through Ray's proxy
        with pytest.raises(NotFound, match="call Embed"):
            client.segment("0" * 64, points=[[10, 10]], labels=[1])
        with pytest.raises(InvalidArgument, match="NaN"):
            client.segment(img.id, points=[[float("nan"), 10]], labels=[1])
        assert client.embed(data).cached
        info = client.model_info()
        assert info.ready and info.fingerprint == local.model_fingerprint


def _descends_from(pid: int, ancestor: int) -> bool:
    while pid > 1:
        if pid == ancestor:
            return True
        pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])  # the parent
    return False


def _replica_pids() -> list[int]:
    """This test's replica processes: titled ``ray::ServeReplica:segany:SeganyReplica`` by Ray, and started by the
    raylet that ``ray.init`` started from this process (another Ray cluster on the host does not count)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if (proc.name.isdigit() and b"ServeReplica:segany:SeganyReplica" in (proc / "cmdline").read_bytes()
                    and _descends_from(int(proc.name), os.getpid())):
                pids.append(int(proc.name))
        except (OSError, ValueError, IndexError):
            continue
    return pids


def test_replicas_start_with_the_serve_process_settings(ray_address):
    from segany.service.ray_app import REPLICA_ENV

    # glibc reads its malloc variables when a process starts, and Ray starts the replicas: check their environment
    pids = _replica_pids()
    assert len(pids) == 2
    for pid in pids:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        env = dict(item.decode(errors="replace").split("=", 1) for item in environ if b"=" in item)
        assert {k: env.get(k) for k in REPLICA_ENV} == REPLICA_ENV
    assert REPLICA_ENV["MALLOC_ARENA_MAX"] == "1" and REPLICA_ENV["OMP_WAIT_POLICY"] == "PASSIVE"


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


def test_a_replica_whose_model_cannot_load_answers_unavailable_and_reports_unhealthy():
    import asyncio

    import grpc

    from segany.service.proto import segany_pb2 as pb
    from segany.service.ray_app import SeganyReplica

    class RayContext:  # what Ray's RayServegRPCContext offers the replica
        code = details = None

        def set_code(self, code):
            self.code = code

        def set_details(self, details):
            self.details = details

        def invocation_metadata(self):
            return ()

    replica = SeganyReplica.func_or_class({"model": "no-such-model"})
    replica.check_health()  # nothing built yet: healthy
    context = RayContext()
    answer = asyncio.run(replica.Segment(pb.SegmentRequest(), context))
    assert answer == pb.SegmentResponse()
    assert context.code == grpc.StatusCode.UNAVAILABLE and "could not load its model" in context.details
    with pytest.raises(RuntimeError, match="did not load"):
        replica.check_health()
