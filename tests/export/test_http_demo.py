"""The demo's HTTP routes: headers for threaded wasm, static files, decoder, embed -> embedding -> segment, errors."""

from __future__ import annotations

import base64
import io
import json
import urllib.error
import urllib.request

import numpy as np
import pytest

from segany.container import decode_container
from segany.masks import decode_png, decode_rle
from tests.export.conftest import EXPORT

pytest.importorskip("onnxruntime")


def fetch(url: str, data: bytes | None = None, content_type: str = "application/octet-stream"):
    request = urllib.request.Request(url, data=data, headers={"Content-Type": content_type} if data else {})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def post_json(url: str, payload) -> tuple[int, dict]:
    status, _, body = fetch(url, json.dumps(payload).encode(), "application/json")
    return status, json.loads(body)


def test_page_and_static_files_carry_isolation_headers(demo):
    status, headers, body = fetch(demo.url + "/")
    assert status == 200 and b'src="/static/demo.js"' in body
    assert headers["Cross-Origin-Opener-Policy"] == "same-origin"
    assert headers["Cross-Origin-Embedder-Policy"] == "require-corp"
    assert headers["Content-Type"].startswith("text/html")
    status, headers, body = fetch(demo.url + "/static/demo.js")
    assert status == 200 and headers["Content-Type"].startswith("text/javascript")
    status, headers, body = fetch(demo.url + "/static/segany-decoder.js")
    assert status == 200 and body == (EXPORT / "segany-decoder.js").read_bytes()
    for bad in ("/static/../http_demo.py", "/static/%2e%2e/x", "/static/ort/ort.node.min.mjs", "/nope"):
        assert fetch(demo.url + bad)[0] == 404, bad


def test_onnxruntime_web_files_have_wasm_and_module_types(demo):
    if not (EXPORT / "node_modules" / "onnxruntime-web").is_dir():
        pytest.skip("export/node_modules is missing: run `npm ci` in export/ (CI: .ci/install-js.sh)")
    status, headers, body = fetch(demo.url + "/static/ort/ort-wasm-simd-threaded.wasm")
    assert status == 200 and headers["Content-Type"] == "application/wasm" and body[:4] == b"\0asm"
    status, headers, _ = fetch(demo.url + "/static/ort/ort.wasm.min.mjs")
    assert status == 200 and headers["Content-Type"].startswith("text/javascript")


def test_decoder_is_the_public_interface_multimask_export(demo):
    import onnxruntime as ort

    status, _, body = fetch(demo.url + "/decoder.onnx")
    assert status == 200
    sess = ort.InferenceSession(body, providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == [
        "image_embeddings",
        "point_coords",
        "point_labels",
        "mask_input",
        "has_mask_input",
        "orig_im_size",
    ]
    assert [o.name for o in sess.get_outputs()] == ["masks", "iou_predictions", "low_res_masks"]
    assert fetch(demo.url + "/decoder.onnx")[2] == body  # exported once, cached


def test_embed_embedding_and_segment_round_trip(demo):
    status, headers, png = fetch(demo.url + "/sample.png")
    assert status == 200 and headers["Content-Type"] == "image/png"
    status, _, body = fetch(demo.url + "/embed", png, "image/png")
    info = json.loads(body)
    assert status == 200 and (info["width"], info["height"]) == (640, 480) and len(info["id"]) == 64
    status, _, blob = fetch(f"{demo.url}/embedding/{info['id']}?dtype=float16")
    assert status == 200 and len(blob) <= 2.1 * 2**20
    parsed = decode_container(blob)
    assert parsed.stored_dtype == "float16" and parsed.original_size == (480, 640)
    full = decode_container(fetch(f"{demo.url}/embedding/{info['id']}?dtype=float32")[2])
    np.testing.assert_allclose(parsed.array, full.array, atol=2e-3, rtol=1e-3)

    prompt = {"id": info["id"], "points": [[210.0, 225.0]], "labels": [1], "multimask": True, "png": True}
    status, out = post_json(demo.url + "/segment", prompt)
    assert status == 200 and len(out["masks"]) == 3 and out["best"] == int(np.argmax(out["scores"]))
    emb = demo.run(demo.engine.lookup(info["id"]))
    ref = demo.engine.predictor.predict(emb, points=[[210.0, 225.0]], labels=[1])
    for cand in out["masks"]:
        mask = decode_rle(cand["rle"])
        assert np.array_equal(mask, ref.masks[cand["index"]])
        assert np.array_equal(decode_png(base64.b64decode(cand["png"])), mask)
    # a mask prompt: the previous low-res logits as base64 float32
    low = base64.b64encode(ref.low_res_logits[ref.best].astype("<f4").tobytes()).decode()
    status, out = post_json(demo.url + "/segment", {**prompt, "mask_input": low, "multimask": False})
    assert status == 200 and len(out["masks"]) == 1


def test_errors_are_json_with_http_codes(demo):
    status, _, body = fetch(demo.url + "/embed", b"not an image", "image/png")
    assert status == 400 and "error" in json.loads(body)
    assert fetch(demo.url + "/embedding/" + "0" * 64)[0] == 404
    assert fetch(demo.url + "/embedding/nothex")[0] == 400
    status, _, png = fetch(demo.url + "/sample.png")
    image_id = json.loads(fetch(demo.url + "/embed", png, "image/png")[2])["id"]
    assert fetch(f"{demo.url}/embedding/{image_id}?dtype=int8")[0] == 400
    status, out = post_json(demo.url + "/segment", {"id": image_id, "points": [[1, 2]], "labels": [1, 0]})
    assert status == 400 and "labels" in out["error"]
    status, out = post_json(demo.url + "/segment", {"id": image_id, "box": [50, 50, 10, 10]})
    assert status == 400
    status, _, body = fetch(demo.url + "/segment", b"{not json", "application/json")
    assert status == 400
    status, _, body = fetch(demo.url + "/segment", b"[" * 100_000, "application/json")  # deeper than json recurses
    assert status == 400 and "JSON" in json.loads(body)["error"]
    click = {"id": image_id, "points": [[1, 2]], "labels": [1]}
    status, out = post_json(demo.url + "/segment", {**click, "mask_input": 5})
    assert status == 400 and "mask_input" in out["error"]
    status, out = post_json(demo.url + "/segment", {**click, "multimask": "no"})  # not read as true
    assert status == 400 and "multimask must be true or false" in out["error"]
    # the server keeps serving after all that
    assert fetch(demo.url + "/healthz")[0] == 200


def test_sample_image_is_deterministic():
    from PIL import Image

    from segany.service.http_demo import sample_image_png

    a, b = sample_image_png(), sample_image_png()
    assert a == b and Image.open(io.BytesIO(a)).size == (640, 480)


def test_shutdown_can_wait_for_the_background_decoder_export():
    """`segany serve --http-port` exports the decoder on a thread at start; the process waits for it before exiting
    (finalising under torch's exporter aborted the process)."""
    import threading
    import time

    from segany.service.http_demo import start_http_server

    finished = threading.Event()

    def slow_export() -> bytes:
        time.sleep(3.0)
        finished.set()
        return b"onnx"

    server, _ = start_http_server(object(), "127.0.0.1", 0, slow_export, loop=object())
    server.close()
    assert not finished.is_set() and not server.finish_export(0)  # still exporting
    assert server.finish_export(30) and finished.is_set()
    idle, _ = start_http_server(object(), "127.0.0.1", 0, slow_export, loop=object(), prepare_decoder=False)
    idle.close()
    assert idle.finish_export(0)
