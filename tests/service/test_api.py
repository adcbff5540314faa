"""The real server on 127.0.0.1 with the real client: every RPC, every output format, both clients."""

from __future__ import annotations

import asyncio
import concurrent.futures

import numpy as np
import pytest

from segany.client import AsyncClient, Client, FailedPrecondition, NotFound, Unimplemented
from segany.container import decode_container
from segany.masks import Polygon as MaskPolygon
from segany.masks import decode_png, polygons_to_mask
from segany.predictor import Predictor
from tests.service.conftest import ServerThread, png_bytes, random_image


@pytest.fixture(scope="module")
def image():
    array = random_image(96, 128, seed=11)
    return array, png_bytes(array)


@pytest.fixture(scope="module")
def reference(tiny_model, image):
    from segany.images import decode_image

    predictor = Predictor(tiny_model)
    return predictor, predictor.encode(decode_image(image[1]))


def test_embed_then_segment_matches_in_process_predictor(client, image, reference):
    predictor, embedding = reference
    img = client.embed(image[1])
    assert (img.height, img.width) == (96, 128) and len(img.id) == 64
    res = client.segment(img.id, points=[[40, 30]], labels=[1], multimask=True)
    ref = predictor.predict(embedding, points=[[40, 30]], labels=[1], multimask=True)
    assert res.masks.shape == (3, 96, 128) and res.masks.dtype == bool
    np.testing.assert_array_equal(res.masks, ref.masks)
    np.testing.assert_allclose(res.scores, ref.scores, rtol=1e-5, atol=1e-6)
    assert res.best == ref.best
    again = client.embed(image[1])
    assert again.cached and again.id == img.id


def test_every_output_format(client, image, reference):
    predictor, embedding = reference
    img = client.embed(image[1])
    res = client.segment(img, box=[10, 10, 90, 70], multimask=False, png=True, polygons=True, bbox=True,
                         low_res_logits=True, mask_ids=True)
    ref = predictor.predict(embedding, box=[10, 10, 90, 70], multimask=False)
    np.testing.assert_array_equal(res.masks, ref.masks)
    np.testing.assert_array_equal(decode_png(res.pngs[0]), ref.masks[0])
    poly = [MaskPolygon(ext, holes) for ext, holes in res.polygons[0]]
    np.testing.assert_array_equal(polygons_to_mask(poly, (96, 128)), ref.masks[0])
    ys, xs = np.nonzero(ref.masks[0])
    if len(xs):
        assert res.boxes[0].tolist() == [xs.min(), ys.min(), xs.max() - xs.min(), ys.max() - ys.min()]
    assert res.areas[0] == ref.masks[0].sum()
    np.testing.assert_allclose(res.low_res_logits, ref.low_res_logits, rtol=1e-5, atol=1e-5)
    # refine with the kept mask (by id) and with the logits themselves: same answer up to fp16 storage
    by_id = client.segment(img, points=[[50, 40]], labels=[1], mask_input=res.mask_ids[0], multimask=False)
    by_logits = client.segment(img, points=[[50, 40]], labels=[1], mask_input=res.low_res_logits[0],
                               multimask=False)
    np.testing.assert_allclose(by_id.scores, by_logits.scores, atol=1e-2)


def test_rle_runs_and_compressed_rle_carry_the_same_masks(client, image, reference):
    from segany.client.messages import Outputs, segment_request
    from segany.masks import encode_rle, rle_runs_batch

    predictor, embedding = reference
    img = client.embed(image[1])
    ref = predictor.predict(embedding, points=[[40, 30]], labels=[1], multimask=True)
    default = client.segment(img, points=[[40, 30]], labels=[1], multimask=True)  # the client asks for runs
    compressed = client.segment(img, points=[[40, 30]], labels=[1], multimask=True, rle_runs=False)
    for res in (default, compressed):
        np.testing.assert_array_equal(res.masks, ref.masks)
        assert res.areas.tolist() == ref.masks.sum(axis=(1, 2)).tolist()
    for runs in (True, False):  # on the wire: one form or the other, never both
        request = segment_request(img.id, [{"points": [[40, 30]], "labels": [1]}], True, Outputs(rle_runs=runs))
        reply = client._stub.Segment(request)
        for cand, mask in zip(reply.results[0].candidates, ref.masks):
            assert (cand.rle.height, cand.rle.width) == (96, 128)
            if runs:
                assert not cand.rle.counts
                assert np.frombuffer(cand.rle.runs, "<u4").tolist() == rle_runs_batch(mask[None])[0].tolist()
            else:
                assert not cand.rle.runs and cand.rle.counts.decode() == encode_rle(mask)["counts"]


def test_best_only_and_many_prompts(client, image, reference):
    predictor, embedding = reference
    img = client.embed(image[1])
    prompts = [{"points": [[20, 20]], "labels": [1]}, {"box": [0, 0, 60, 60]},
               {"points": [[100, 80], [10, 10]], "labels": [1, 0], "box": [50, 40, 127, 95]}]
    many = client.segment_many(img.id, prompts, multimask=True, best_only=True)
    assert len(many) == 3
    for res, p in zip(many, prompts):
        ref = predictor.predict(embedding, p.get("points"), p.get("labels"), p.get("box"), multimask=True)
        assert res.masks.shape == (1, 96, 128)
        assert res.indices.tolist() == [ref.best]
        np.testing.assert_array_equal(res.masks[0], ref.masks[ref.best])
        np.testing.assert_allclose(res.all_scores, ref.scores, rtol=1e-5, atol=1e-6)


def test_segment_with_bytes_or_pixels_directly(client, image):
    array, data = image
    by_bytes = client.segment(data, points=[[40, 30]], labels=[1])
    by_pixels = client.segment(array, points=[[40, 30]], labels=[1])
    np.testing.assert_array_equal(by_bytes.masks, by_pixels.masks)  # PNG is lossless: same pixels, same masks


def test_embedding_container_fp32_and_fp16(client, image, reference):
    _, embedding = reference
    full = client.embed(image[1], return_embedding=True)
    half = client.embed(image[1], return_embedding=True, embedding_dtype="float16")
    a, b = decode_container(full.embedding), decode_container(half.embedding)
    assert a.array.shape == (1, 256, 64, 64) and a.stored_dtype == "float32" and b.stored_dtype == "float16"
    assert a.original_size == (96, 128) and a.model_fingerprint == full.model_fingerprint
    np.testing.assert_allclose(a.array, embedding.image_embeddings.numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(b.array, a.array, rtol=2e-3, atol=2e-3)
    assert len(half.embedding) < len(full.embedding) * 0.6


def test_model_info_health_metrics(client, server):
    info = client.model_info()
    assert info.variant == "test-tiny" and info.fingerprint == server.engine.fingerprint
    assert list(info.embedding_shape) == [1, 256, 64, 64] and info.image_size == 1024 and info.ready
    assert info.limits.max_receive_message_bytes == 64 << 20 and info.limits.max_prompts_per_request == 64
    assert client.health() == "SERVING" and client.health("segany.v1.Segany") == "SERVING"
    text = client.metrics()
    for series in ("segany_rpc_requests_total{", "segany_rpc_latency_seconds_bucket{", "segany_cache_hits_total",
                   "segany_cache_bytes", "segany_cache_evictions_total", "segany_encode_queue_depth",
                   "segany_stage_latency_seconds_bucket{"):
        assert series in text


def test_unknown_id_is_not_found_with_a_hint(client):
    with pytest.raises(NotFound) as info:
        client.segment("f" * 64, points=[[1, 1]], labels=[1])
    assert info.value.code.name == "NOT_FOUND"
    assert "call Embed" in info.value.message
    assert info.value.request_id


def test_reflection_lists_the_service(server):
    import grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    with grpc.insecure_channel(server.address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        replies = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        names = {s.name for reply in replies for s in reply.list_services_response.service}
    assert {"segany.v1.Segany", "grpc.health.v1.Health"} <= names


def test_decoder_onnx_hook(tiny_model):
    def not_here(model):
        raise NotImplementedError("no exporter in this build")

    cases = [(None, Unimplemented, "configured without an ONNX decoder export"),
             (not_here, Unimplemented, "no exporter in this build"),
             (lambda model: None, FailedPrecondition, "no ONNX decoder is available for model")]
    for provider, error, message in cases:
        srv = ServerThread(tiny_model, warmup=False, decoder_onnx_provider=provider).start()
        try:
            with Client(srv.address) as c, pytest.raises(error, match=message):
                c.decoder_onnx()
        finally:
            srv.stop()
    srv = ServerThread(tiny_model, warmup=False, decoder_onnx_provider=lambda model: b"onnx-bytes").start()
    try:
        with Client(srv.address) as c:
            assert c.decoder_onnx() == b"onnx-bytes"
            assert c.model_info().decoder_onnx_available
    finally:
        srv.stop()


@pytest.mark.slow
def test_default_onnx_provider_exports_without_touching_the_live_model(server):
    pytest.importorskip("segany.onnx")
    onnx = pytest.importorskip("onnx")
    sdpa_before = [m.use_sdpa for m in server.model.modules() if hasattr(m, "use_sdpa")]
    with Client(server.address, timeout=300) as c:
        data = c.decoder_onnx()
        graph = onnx.load_from_string(data)
        assert {i.name for i in graph.graph.input} >= {"image_embeddings", "point_coords", "point_labels"}
        assert c.decoder_onnx() == data  # exported once, then cached
    assert [m.use_sdpa for m in server.model.modules() if hasattr(m, "use_sdpa")] == sdpa_before


def test_the_default_decoder_export_runs_once_per_model(monkeypatch):
    """gRPC GetDecoderOnnx and the HTTP demo's /decoder.onnx ask at about the same time: one export serves both."""
    import threading

    pytest.importorskip("segany.onnx")
    import segany
    import segany.onnx
    from segany.service.settings import default_decoder_onnx_provider

    real, calls = segany.onnx.export_decoder, []

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(segany.onnx, "export_decoder", counting)
    model = segany.build_model("test-tiny", seed=11)  # a model no other test exported
    results = []
    threads = [threading.Thread(target=lambda: results.append(default_decoder_onnx_provider(model))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    results.append(default_decoder_onnx_provider(model))
    assert len(calls) == 1 and len(results) == 3 and results[0] == results[1] == results[2]
    default_decoder_onnx_provider(segany.build_model("test-tiny", seed=12))  # another model: its own export
    assert len(calls) == 2


def test_async_client_has_the_same_methods(server, image):
    async def main():
        async with AsyncClient(server.address) as c:
            await c.embed(image[1])
            img = await c.embed(image[1])  # cached now, whichever tests ran before
            results = await asyncio.gather(*(c.segment(img.id, points=[[10 * i + 5, 20]], labels=[1])
                                             for i in range(4)))
            many = await c.segment_many(img, [{"box": [0, 0, 50, 50]}])
            info = await c.model_info()
            await c.wait_ready(timeout=10)
            return img, results, many, info, await c.health()

    img, results, many, info, health = asyncio.run(main())
    assert img.cached and len(results) == 4 and all(r.masks.shape == (3, 96, 128) for r in results)
    assert many[0].masks.shape == (1, 96, 128) and info.variant == "test-tiny" and health == "SERVING"


def test_both_clients_have_the_same_public_methods():
    public = {cls: {n for n in dir(cls) if not n.startswith("_")} for cls in (Client, AsyncClient)}
    assert public[Client] == public[AsyncClient]


def test_many_clients_in_threads(server, image):
    with Client(server.address) as c:
        img = c.embed(image[1])

        def click(i: int):
            return c.segment(img.id, points=[[(7 * i) % 128, (5 * i) % 96]], labels=[1], best_only=True)

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            out = list(pool.map(click, range(8)))
    assert all(r.masks.shape == (1, 96, 128) for r in out)
