"""Every ONNX export against the torch predictor on the same inputs (onnxruntime, CPU).

Tolerances: logits within 1e-4 absolute; masks identical except where the torch logit is within 1e-3 of the
threshold (float rounding between two runtimes may break such ties either way).
"""

from __future__ import annotations

import numpy as np
import pytest

import segany
import segany.prompts
from segany.onnx import export_decoder, export_encoder, public_feeds, session, verify_decoder
from segany.transforms import boxes_to_input
from tests.conftest import random_image

pytest.importorskip("onnxruntime")

ATOL = 1e-4
TIE = 1e-3
SIZES = [(480, 640), (1500, 2250), (300, 2000), (777, 500)]


@pytest.fixture(scope="module")
def predictor():
    return segany.Predictor(segany.build_model("test-tiny", seed=0), precision="exact")


@pytest.fixture(scope="module")
def embeddings(predictor):
    return {size: predictor.encode(random_image(*size, seed=size[0])) for size in SIZES}


@pytest.fixture(scope="module")
def exported(tmp_path_factory, predictor):
    folder = tmp_path_factory.mktemp("onnx")
    model = predictor.model
    paths = {
        "single": export_decoder(model, folder / "single.onnx").path,
        "multi": export_decoder(model, folder / "multi.onnx", multimask=True).path,
        "batched": export_decoder(model, folder / "batched.onnx", batched=True).path,
        "batched_multi": export_decoder(model, folder / "bmu.onnx", batched=True, multimask=True).path,
        "batched_multi_lowres": export_decoder(
            model, folder / "bm.onnx", batched=True, multimask=True, upsample=False
        ).path,
    }
    from segany.optimize import configure

    configure(model, "exact")  # export switched attention to the plain path; keep the predictor exact
    return {name: session(path) for name, path in paths.items()}


def _prompts(h, w, low):
    pts = np.array([[w * 0.3, h * 0.4], [w * 0.62, h * 0.55]])
    box = np.array([w * 0.1, h * 0.2, w * 0.7, h * 0.9])
    return {
        "click": dict(points=pts[:1], labels=[1]),
        "clicks": dict(points=pts, labels=[1, 0]),
        "box": dict(box=box),
        "box_click": dict(points=pts[:1], labels=[1], box=box),
        "mask": dict(points=pts[:1], labels=[1], mask_input=low),
        "mask_only": dict(mask_input=low),  # no point at all (N = 0), not even the padding point
    }


def _same_masks(onnx_logits, torch_logits):
    np.testing.assert_allclose(onnx_logits, torch_logits, atol=ATOL * 10, rtol=1e-4)
    differ = (onnx_logits > 0) != (torch_logits > 0)
    assert np.all(np.abs(torch_logits[differ]) < TIE), f"{differ.sum()} pixels differ away from the threshold"


@pytest.mark.parametrize("size", SIZES)
def test_public_interface_matches_torch(predictor, embeddings, exported, size):
    h, w = size
    emb = embeddings[size]
    low = predictor.predict(emb, points=[[w / 2, h / 2]], labels=[1]).low_res_logits[0]
    for name, kw in _prompts(h, w, low).items():
        ref = predictor.predict(emb, multimask=True, return_logits=True, **kw)
        feeds = public_feeds(emb.image_embeddings.numpy(), size, **kw)
        masks, iou, low_res = exported["multi"].run(None, feeds)
        assert masks.shape == (1, 4, h, w), name
        np.testing.assert_allclose(low_res[0, 1:], ref.low_res_logits, atol=ATOL, err_msg=name)
        np.testing.assert_allclose(iou[0, 1:], ref.scores, atol=ATOL, err_msg=name)
        _same_masks(masks[0, 1:], ref.masks)
        # single-mask export: best of tokens 1..3 for <= 2 points (a box counts two), else token 0
        masks1, iou1, _ = exported["single"].run(None, feeds)
        n_points = feeds["point_coords"].shape[1]
        if n_points <= 2:
            i = int(np.argmax(ref.scores))
            _same_masks(masks1[0, 0], ref.masks[i])
        else:
            ref0 = predictor.predict(emb, multimask=False, return_logits=True, **kw)
            _same_masks(masks1[0, 0], ref0.masks[0])


def test_the_graph_crops_to_the_predictors_input_size():
    """Sizes where float32 arithmetic rounds a side differently from input_size_for (found by a search to 8000)."""
    import torch

    from segany.onnx import graph_input_size
    from segany.transforms import input_size_for

    for size in [(6730, 7101), (7083, 7199), (5263, 7839), (480, 640), (7101, 6730), (1, 8000), (1024, 1024)]:
        got = graph_input_size(torch.tensor(size, dtype=torch.float32), 1024)
        assert tuple(got.tolist()) == input_size_for(size, 1024), size


def test_batched_decoder_matches_predict_batch(predictor, embeddings, exported):
    size = (1500, 2250)
    emb = embeddings[size]
    boxes = np.array([[10, 20, 800, 900], [100, 50, 2000, 1400], [0, 0, 2249, 1499], [500, 500, 600, 640]], float)
    n = len(boxes)
    feeds = dict(
        _box_feeds(emb, boxes, size),
        mask_input=np.zeros((n, 1, 256, 256), np.float32),
        has_mask_input=np.zeros(n, np.float32),
    )
    iou, low, masks = exported["batched"].run(None, feeds)
    assert masks.shape == (n, 1, *size)
    ref = predictor.predict_prompts(
        emb, [segany.prompts.make_prompt(size, box=b) for b in boxes], multimask=False, return_logits=True
    )
    for i in range(n):
        np.testing.assert_allclose(low[i], ref[i].low_res_logits, atol=ATOL)
        np.testing.assert_allclose(iou[i], ref[i].scores, atol=ATOL)
        _same_masks(masks[i], ref[i].masks)
    del feeds["orig_im_size"]  # the low-res-only graph does not take it
    iou3, low3 = exported["batched_multi_lowres"].run(None, feeds)
    assert low3.shape == (n, 3, 256, 256)
    ref3 = predictor.predict_prompts(
        emb, [segany.prompts.make_prompt(size, box=b) for b in boxes], multimask=True, return_logits=True
    )
    np.testing.assert_allclose(low3, np.stack([r.low_res_logits for r in ref3]), atol=ATOL)
    # upsampled B x M planes come back in (prompt, mask) order
    feeds["orig_im_size"] = np.array(size, np.float32)
    _, _, masks3 = exported["batched_multi"].run(None, feeds)
    assert masks3.shape == (n, 3, *size)
    for i in range(n):
        _same_masks(masks3[i], ref3[i].masks)


def _box_feeds(emb, boxes: np.ndarray, size: tuple[int, int]) -> dict[str, np.ndarray]:
    """Batched-decoder feeds for one box per prompt, without the mask inputs."""
    n = len(boxes)
    return {
        "image_embeddings": emb.image_embeddings.numpy(),
        "point_coords": boxes_to_input(boxes, size).reshape(n, 2, 2).astype(np.float32),
        "point_labels": np.tile(np.array([[2, 3]], np.float32), (n, 1)),
        "orig_im_size": np.array(size, np.float32),
    }


def test_batched_decoder_takes_one_mask_input_for_all_prompts(predictor, embeddings, exported):
    """``mask_input`` / ``has_mask_input`` with batch 1 apply to every prompt (the fast form when no prompt has a
    mask input: the first layer's image-side work is then shared); batch B gives each prompt its own."""
    size = (480, 640)
    emb = embeddings[size]
    boxes = np.array([[10, 20, 300, 400], [100, 50, 600, 470], [200, 100, 260, 180]], float)
    n = len(boxes)
    low = predictor.predict(emb, points=[[320, 240]], labels=[1]).low_res_logits[0]
    base = _box_feeds(emb, boxes, size)
    none_each = dict(base, mask_input=np.zeros((n, 1, 256, 256), np.float32), has_mask_input=np.zeros(n, np.float32))
    none_shared = dict(base, mask_input=np.zeros((1, 1, 256, 256), np.float32), has_mask_input=np.zeros(1, np.float32))
    for a, b in zip(exported["batched"].run(None, none_each), exported["batched"].run(None, none_shared)):
        np.testing.assert_allclose(a, b, atol=1e-5)

    def reference(masks):
        prompts = [segany.prompts.make_prompt(size, box=b, mask_input=m) for b, m in zip(boxes, masks)]
        return predictor.predict_prompts(emb, prompts, multimask=False, return_logits=True)

    shared = dict(base, mask_input=low[None, None].astype(np.float32), has_mask_input=np.ones(1, np.float32))
    mixed = dict(  # prompt 1 has a mask input, prompts 0 and 2 do not
        base,
        mask_input=np.stack([np.zeros_like(low), low, np.full_like(low, 7.0)])[:, None].astype(np.float32),
        has_mask_input=np.array([0, 1, 0], np.float32),
    )
    for feeds, masks in ((shared, [low] * n), (mixed, [None, low, None])):
        iou, low_res, full = exported["batched"].run(None, feeds)
        for i, ref in enumerate(reference(masks)):
            np.testing.assert_allclose(low_res[i], ref.low_res_logits, atol=ATOL)
            np.testing.assert_allclose(iou[i], ref.scores, atol=ATOL)
            _same_masks(full[i], ref.masks)


def test_quantized_decoder_reports_iou(tmp_path, predictor, embeddings):
    path = tmp_path / "q.onnx"
    report = export_decoder(predictor.model, path, multimask=False, quantize=True)
    # the token MLPs (half the weights) in int8: about 10 MiB against the 16.5 MB fp32 file
    assert 8 * 2**20 < report.bytes < 11 * 2**20
    assert verify_decoder(predictor.model, path, multimask=False).mask_iou >= 0.97
    assert not (tmp_path / "q.fp32.onnx").exists()
    sess = session(path)
    size = (480, 640)
    emb = embeddings[size]
    feeds = public_feeds(emb.image_embeddings.numpy(), size, box=[50, 60, 400, 300])
    masks, _, _ = sess.run(None, feeds)
    assert masks.shape == (1, 1, *size)


@pytest.mark.slow
def test_encoder_export_matches_torch(tmp_path, predictor):
    path = tmp_path / "enc.onnx"
    export_encoder(predictor.model, path)
    image = random_image(300, 400, seed=3)
    x, _, _ = predictor.preprocess(image)
    (out,) = session(path).run(None, {"image": x.numpy()})
    np.testing.assert_allclose(out, predictor.encode(image).image_embeddings.numpy(), atol=1e-4)


def test_export_cli(tmp_path, capsys):
    import torch

    from segany.cli.main import main

    ckpt = tmp_path / "tiny.pth"
    torch.save(segany.build_model("test-tiny", seed=0).state_dict(), ckpt)
    out = tmp_path / "dec.onnx"
    assert main(["export", "decoder", "--checkpoint", str(ckpt), "--output", str(out), "--quantize"]) == 0
    line = capsys.readouterr().out
    assert out.is_file() and "mask IoU" in line
    iou = float(line.rsplit("mask IoU", 1)[1])
    assert iou >= 0.9  # random weights; the shipped model's figure is in the benchmarks
    assert main(["export", "decoder", "--checkpoint", str(ckpt), "-o", str(tmp_path / "b.onnx"), "--batched"]) == 0
    assert main(["export", "decoder", "--checkpoint", str(tmp_path / "missing.pth"), "-o", str(out)]) == 2


@pytest.mark.parametrize("output, extra, message", [
    ("folder", [], "is a folder"),
    ("a_file/dec.onnx", [], "cannot create the folder"),
    ("/proc/dec.onnx", [], "cannot write"),  # refused by the kernel even for root
    ("/proc/dec.onnx", ["--quantize"], "cannot write"),
    ("dec.onnx", ["--low-res-only"], "add --batched"),
])
def test_export_cli_refuses_outputs_it_cannot_write_in_one_line(tmp_path, capsys, output, extra, message):
    import torch

    from segany.cli.main import main

    ckpt = tmp_path / "tiny.pth"
    torch.save(segany.build_model("test-tiny", seed=0).state_dict(), ckpt)
    (tmp_path / "folder").mkdir()
    (tmp_path / "a_file").write_text("")
    target = output if output.startswith("/") else str(tmp_path / output)
    code = main(["export", "decoder", "--checkpoint", str(ckpt), "-o", target, "--no-verify", *extra])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and err.count("\n") == 0 and "Traceback" not in err
    assert main(["export", "encoder", "--checkpoint", str(ckpt), "-o", str(tmp_path / "e.onnx"), "--batched"]) == 2


@pytest.mark.parametrize("batched", [False, True])
def test_fast_export_matches_the_plain_graph(tmp_path, predictor, embeddings, batched):
    """The rewritten graph (``fast=True``: projections moved in the cross-attentions, low-res crop before the
    upsample) against the plain one (``fast=False``), both exported from the same model: float rounding only."""
    model = predictor.model
    kw = dict(multimask=True, batched=batched)
    fast = session(export_decoder(model, tmp_path / "fast.onnx", **kw).path)
    plain = session(export_decoder(model, tmp_path / "plain.onnx", fast=False, **kw).path)
    from segany.optimize import configure

    configure(model, "exact")
    for size in [(1500, 2250), (777, 500)]:
        h, w = size
        feeds = public_feeds(
            embeddings[size].image_embeddings.numpy(),
            size,
            points=[[w * 0.3, h * 0.4]],
            labels=[1],
            box=[w * 0.1, h * 0.2, w * 0.7, h * 0.9],
        )
        if batched:
            feeds = {
                k: (np.repeat(v, 3, axis=0) if k not in ("image_embeddings", "orig_im_size") else v)
                for k, v in feeds.items()
            }
            feeds["has_mask_input"] = np.zeros(3, np.float32)
        for a, b in zip(fast.run(None, feeds), plain.run(None, feeds)):
            np.testing.assert_allclose(a, b, atol=ATOL, rtol=1e-4)
