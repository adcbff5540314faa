"""The rewritten decoder (segany.modeling.fast_decoder) gives the plain decoder's values to float rounding."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import segany
from segany.modeling.fast_decoder import (
    FastMaskDecoder,
    FewKeyAttention,
    FewQueryAttention,
    fast_mask_decoder,
    pixel_major_to_raster,
)
from segany.modeling.mask_decoder import MaskDecoder
from tests.conftest import random_image


@pytest.fixture(scope="module")
def model():
    return segany.build_model("test-tiny", seed=21)


def _prompts(b: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    coords = torch.rand(b, 3, 2, generator=g) * 1000
    labels = torch.randint(0, 2, (b, 3), generator=g)
    xy = torch.rand(b, 2, generator=g) * 600
    boxes = torch.cat([xy, xy + 50 + torch.rand(b, 2, generator=g) * 300], 1)
    return coords, labels, boxes


@pytest.mark.parametrize("for_onnx", [True, False])
@pytest.mark.parametrize("multimask", [True, False])
@pytest.mark.parametrize("kind", ["points", "box", "box+points", "mask"])
def test_fast_decoder_matches_plain(model, multimask, kind, for_onnx):
    torch.manual_seed(0)
    emb = torch.randn(1, 256, 64, 64)
    coords, labels, boxes = _prompts(5, seed=len(kind))
    points = (coords, labels) if "points" in kind or kind == "mask" else None
    box = boxes if "box" in kind else None
    mask = torch.randn(5, 1, 256, 256) * 3 if kind == "mask" else None
    fast = fast_mask_decoder(model.mask_decoder, for_onnx=for_onnx)
    assert fast.pixel_major_output == for_onnx  # the torch variant returns raster order
    with torch.inference_mode():
        sparse, dense = model.prompt_encoder(points, box, mask)
        pe = model.prompt_encoder.get_dense_pe()
        ref_logits, ref_scores = model.mask_decoder(emb, pe, sparse, dense, multimask)
        runs = [fast(emb, pe, sparse, dense, multimask)]
        if mask is None:  # one no-mask embedding for all prompts: the image side of the first layer is shared
            runs.append(fast(emb, pe, sparse, dense[:1], multimask))
    for logits, scores in runs:
        if for_onnx:
            assert logits.dim() == 3
            logits = pixel_major_to_raster(logits, 64, 64)
        assert logits.shape == ref_logits.shape
        torch.testing.assert_close(scores, ref_scores, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(logits, ref_logits, atol=1e-4, rtol=1e-4)
        flipped = (logits > 0) != (ref_logits > 0)
        assert torch.all(ref_logits[flipped].abs() < 1e-4)


@pytest.mark.parametrize("for_onnx", [True, False])
def test_fast_copy_shares_weights_and_leaves_the_model_alone(model, for_onnx):
    fast = fast_mask_decoder(model.mask_decoder, for_onnx=for_onnx)
    ours = {id(p) for p in fast.parameters()}
    assert ours == {id(p) for p in model.mask_decoder.parameters()}
    rewritten = [m for m in fast.modules() if isinstance(m, (FewQueryAttention, FewKeyAttention))]
    assert len(rewritten) == 2 * len(model.mask_decoder.transformer.layers) + 1
    assert not any(isinstance(m, (FewQueryAttention, FewKeyAttention)) for m in model.mask_decoder.modules())
    assert type(model.mask_decoder) is MaskDecoder
    assert type(fast) is FastMaskDecoder and type(model.mask_decoder) is MaskDecoder


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_pixel_major_to_raster_is_exact_for_every_float_size(dtype):
    b, m, h, w = 2, 3, 3, 5
    raster = torch.arange(b * m * 16 * h * w).remainder(2039).to(dtype).reshape(b, m, 4 * h, 4 * w)
    # pixel-major: (y, x, dy1, dx1, dy2, dx2) with row = 4y + 2 dy1 + dy2, col = 4x + 2 dx1 + dx2
    major = raster.reshape(b, m, h, 2, 2, w, 2, 2).permute(0, 1, 2, 5, 3, 6, 4, 7).reshape(b, m, 16 * h * w)
    out = pixel_major_to_raster(major, h, w)
    assert out.dtype == dtype and torch.equal(out, raster)


def test_predictor_fast_decoder_gives_exact_masks_on_one_embedding(model):
    """Same embedding, both precisions: the decoder rewrite alone moves logits by rounding only."""
    image = random_image(300, 500, seed=4)
    exact = segany.Predictor(model, precision="exact")
    fast = segany.Predictor(copy.deepcopy(model), precision="fast")  # one precision per model: a copy, same weights
    emb = exact.encode(image)
    for kwargs in (
        dict(points=[[120, 80]], labels=[1]),
        dict(box=[50, 40, 300, 250]),
        dict(box=[50, 40, 300, 250], points=[[120, 80], [200, 100]], labels=[1, 0]),
    ):
        for multimask in (True, False):
            a = exact.predict(emb, multimask=multimask, return_logits=True, **kwargs)
            b = fast.predict(emb, multimask=multimask, return_logits=True, **kwargs)
            np.testing.assert_allclose(b.scores, a.scores, atol=1e-5)
            np.testing.assert_allclose(b.low_res_logits, a.low_res_logits, atol=1e-4, rtol=1e-4)
            np.testing.assert_allclose(b.masks, a.masks, atol=2e-3)


def test_flush_tiny_zeroes_subnormal_weights_only():
    from segany.modeling.fast_decoder import TINY_WEIGHT, flush_tiny

    w = torch.tensor([1e-40, 1e-35, TINY_WEIGHT, 2 * TINY_WEIGHT, 1e-20, 0.25, 1.0])
    out = flush_tiny(w.clone())
    assert out.tolist()[:3] == [0.0, 0.0, 0.0]
    assert out[3:].tolist() == w[3:].tolist()


@pytest.mark.parametrize("for_onnx", [True, False])
def test_fast_decoder_matches_plain_with_sharp_attention(model, for_onnx, monkeypatch):
    # A large embedding makes the attention scores large, so the softmaxes leave weights in float32's subnormal
    # range; flushing them (flush_tiny) must not move any value beyond rounding.
    from segany.modeling import fast_decoder

    flushed = []
    flush = fast_decoder.flush_tiny

    def counting_flush(weights):
        flushed.append(int(((weights > 0) & (weights < fast_decoder.TINY_WEIGHT)).sum()))
        return flush(weights)

    torch.manual_seed(1)
    emb = torch.randn(1, 256, 64, 64) * 30
    coords, labels, boxes = _prompts(3, seed=9)
    fast = fast_mask_decoder(model.mask_decoder, for_onnx=for_onnx)
    with torch.inference_mode():
        sparse, dense = model.prompt_encoder((coords, labels), boxes, None)
        pe = model.prompt_encoder.get_dense_pe()
        ref_logits, ref_scores = model.mask_decoder(emb, pe, sparse, dense, True)
        monkeypatch.setattr(fast_decoder, "flush_tiny", counting_flush)
        logits, scores = fast(emb, pe, sparse, dense, True)
        if for_onnx:
            assert logits.dim() == 3
            logits = pixel_major_to_raster(logits, 64, 64)
    assert sum(flushed) > 1000  # the case is really exercised
    torch.testing.assert_close(scores, ref_scores, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(logits, ref_logits, atol=1e-3, rtol=1e-4)


def test_pixel_major_to_raster_keeps_gradients():
    major = torch.randn(1, 2, 16 * 4 * 4, requires_grad=True)
    out = pixel_major_to_raster(major, 4, 4)
    (out * torch.arange(out.numel()).reshape(out.shape)).sum().backward()
    assert sorted(major.grad.flatten().tolist()) == list(range(out.numel()))  # each input reaches one output


def test_many_prompts_run_in_passes_with_the_one_pass_values(model, monkeypatch):
    torch.manual_seed(1)
    emb = torch.randn(1, 256, 64, 64)
    coords, labels, boxes = _prompts(5, seed=7)
    fast = fast_mask_decoder(model.mask_decoder, for_onnx=False)
    passes: list[int] = []
    original = FastMaskDecoder._predict_pass

    def counting(self, image_embeddings, image_pe, sparse, dense):
        passes.append(sparse.shape[0])
        return original(self, image_embeddings, image_pe, sparse, dense)

    monkeypatch.setattr(FastMaskDecoder, "_predict_pass", counting)
    with torch.inference_mode():
        sparse, dense = model.prompt_encoder((coords, labels), boxes, None)
        pe = model.prompt_encoder.get_dense_pe()
        logits, scores = fast(emb, pe, sparse, dense, True)
        assert passes == [2, 2, 1]  # PROMPTS_PER_PASS at a time
        passes.clear()
        fast.prompts_per_pass = 8
        whole_logits, whole_scores = fast(emb, pe, sparse, dense, True)
        assert passes == [5]
    torch.testing.assert_close(scores, whole_scores, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits, whole_logits, atol=1e-4, rtol=1e-4)


def test_passes_slice_per_prompt_embeddings(model):
    # One image per prompt, (B, C, h, w), as a caller decoding prompts on different images would send.
    torch.manual_seed(2)
    coords, labels, _ = _prompts(5, seed=3)
    fast = fast_mask_decoder(model.mask_decoder, for_onnx=False)
    emb = torch.randn(5, 256, 64, 64)
    with torch.inference_mode():
        sparse, dense = model.prompt_encoder((coords, labels), None, None)
        pe = model.prompt_encoder.get_dense_pe()
        logits, scores = fast(emb, pe, sparse, dense, True)
        for i in range(5):  # each prompt alone, on its own image
            one_logits, one_scores = fast(emb[i : i + 1], pe, sparse[i : i + 1], dense[i : i + 1], True)
            torch.testing.assert_close(scores[i : i + 1], one_scores, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(logits[i : i + 1], one_logits, atol=1e-4, rtol=1e-4)


def test_one_pass_while_exporting(model, monkeypatch):
    import segany.modeling.fast_decoder as fd

    passes: list[int] = []
    original = FastMaskDecoder._predict_pass
    monkeypatch.setattr(FastMaskDecoder, "_predict_pass",
                        lambda self, *a: passes.append(a[2].shape[0]) or original(self, *a))
    monkeypatch.setattr(fd, "_exporting", lambda: True)  # what tracing for the ONNX export sees
    fast = fast_mask_decoder(model.mask_decoder, for_onnx=True)
    coords, labels, _ = _prompts(5, seed=4)
    with torch.inference_mode():
        sparse, dense = model.prompt_encoder((coords, labels), None, None)
        fast(torch.randn(1, 256, 64, 64), model.prompt_encoder.get_dense_pe(), sparse, dense, True)
    assert passes == [5]  # the graph must take any batch in one run
