"""segany against the public implementations, with random weights saved as released-layout checkpoints.

Both sides run fp32 on the CPU. The exact path is pinned: embeddings, low-res logits and scores must agree to
1e-5 (they are bit-identical here today) and masks must be identical except where the public logit is within
1e-4 of the threshold (a tie that float rounding may break either way).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import segany
from tests.conftest import random_image
from tests.oracle.sam_oracle import public_mobile_sam, public_sam, save_checkpoint

pytestmark = pytest.mark.oracle

EMB_ATOL = 1e-5
LOGIT_ATOL = 1e-5
TIE = 1e-4


@pytest.fixture(scope="module")
def tiny_pair(tmp_path_factory):
    pytest.importorskip("segment_anything")
    public = public_sam("tiny", seed=1)
    path = save_checkpoint(public, tmp_path_factory.mktemp("ckpt") / "tiny.pth")
    return public, segany.load_model(path)


def prompt_cases(h: int, w: int, low_res: np.ndarray):
    pts = np.array([[w * 0.3, h * 0.4], [w * 0.62, h * 0.55], [w * 0.5, h * 0.2]])
    box = np.array([w * 0.1, h * 0.2, w * 0.7, h * 0.9])
    return {
        "one_click": dict(point_coords=pts[:1], point_labels=np.array([1])),
        "clicks_pos_neg": dict(point_coords=pts, point_labels=np.array([1, 0, 1])),
        "box": dict(box=box),
        "box_and_clicks": dict(point_coords=pts[:2], point_labels=np.array([1, 0]), box=box),
        "mask_input": dict(point_coords=pts[:1], point_labels=np.array([1]), mask_input=low_res[None]),
    }


def assert_same(public_predictor, predictor, emb, kwargs, multimask):
    pub_masks, pub_scores, pub_low = public_predictor.predict(multimask_output=multimask, **kwargs)
    pub_logits, _, _ = public_predictor.predict(multimask_output=multimask, return_logits=True, **kwargs)
    res = predictor.predict(
        emb,
        points=kwargs.get("point_coords"),
        labels=kwargs.get("point_labels"),
        box=kwargs.get("box"),
        mask_input=kwargs.get("mask_input"),
        multimask=multimask,
    )
    assert res.masks.shape == pub_masks.shape and res.masks.dtype == np.bool_
    np.testing.assert_allclose(res.low_res_logits, pub_low, atol=LOGIT_ATOL, rtol=0)
    np.testing.assert_allclose(res.scores, pub_scores, atol=LOGIT_ATOL, rtol=0)
    differ = res.masks != pub_masks
    assert np.all(np.abs(pub_logits[differ]) < TIE), f"{differ.sum()} mask pixels differ away from the threshold"


@pytest.mark.parametrize("size", [(480, 640), (640, 480), (1500, 2250), (100, 60), (300, 2000), (1024, 1024)])
def test_tiny_vit_matches_public(tiny_pair, size):
    from segment_anything import SamPredictor

    public, model = tiny_pair
    h, w = size
    image = random_image(h, w, seed=h + w)
    public_predictor = SamPredictor(public)
    public_predictor.set_image(image)
    predictor = segany.Predictor(model, precision="exact")
    emb = predictor.encode(image)
    assert emb.original_size == (h, w)
    assert emb.input_size == tuple(public_predictor.input_size)
    torch.testing.assert_close(emb.image_embeddings, public_predictor.features, atol=EMB_ATOL, rtol=0)
    _, _, low = public_predictor.predict(point_coords=np.array([[w / 2, h / 2]]), point_labels=np.array([1]))
    for name, kwargs in prompt_cases(h, w, low[0]).items():
        for multimask in (True, False):
            assert_same(public_predictor, predictor, emb, kwargs, multimask), name


@pytest.mark.slow
def test_vit_b_checkpoint_loads_unchanged_and_matches(tmp_path):
    pytest.importorskip("segment_anything")
    from segment_anything import SamPredictor

    public = public_sam("vit_b", seed=2)
    path = save_checkpoint(public, tmp_path / "sam_vit_b_random.pth")
    model = segany.load_model(path)
    assert model.variant == "vit_b"
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in public.parameters())
    h, w = 600, 900
    image = random_image(h, w, seed=3)
    public_predictor = SamPredictor(public)
    public_predictor.set_image(image)
    predictor = segany.Predictor(model, precision="exact")
    emb = predictor.encode(image)
    torch.testing.assert_close(emb.image_embeddings, public_predictor.features, atol=EMB_ATOL, rtol=0)
    _, _, low = public_predictor.predict(point_coords=np.array([[w / 2, h / 2]]), point_labels=np.array([1]))
    for kwargs in prompt_cases(h, w, low[0]).values():
        for multimask in (True, False):
            assert_same(public_predictor, predictor, emb, kwargs, multimask)


@pytest.mark.slow
def test_mobile_sam_checkpoint_loads_unchanged_and_matches(tmp_path):
    pytest.importorskip("mobile_sam")
    from mobile_sam import SamPredictor

    public = public_mobile_sam(seed=4)
    path = save_checkpoint(public, tmp_path / "mobile_sam.pt")
    sd = torch.load(path, weights_only=True)
    assert any(k.startswith("image_encoder.head.") for k in sd), "release layout keeps the unused classifier"
    model = segany.load_model(path)
    assert model.variant == "vit_t"
    h, w = 700, 500
    image = random_image(h, w, seed=5)
    public_predictor = SamPredictor(public)
    public_predictor.set_image(image)
    predictor = segany.Predictor(model, precision="exact")
    emb = predictor.encode(image)
    torch.testing.assert_close(emb.image_embeddings, public_predictor.features, atol=1e-4, rtol=0)
    _, _, low = public_predictor.predict(point_coords=np.array([[w / 2, h / 2]]), point_labels=np.array([1]))
    for kwargs in prompt_cases(h, w, low[0]).values():
        for multimask in (True, False):
            assert_same(public_predictor, predictor, emb, kwargs, multimask)


def test_predict_batch_matches_public_predict_torch(tiny_pair):
    from segment_anything import SamPredictor

    public, model = tiny_pair
    h, w = 400, 700
    image = random_image(h, w, seed=9)
    public_predictor = SamPredictor(public)
    public_predictor.set_image(image)
    boxes = np.array([[10, 20, 200, 300], [100, 50, 650, 390], [0, 0, 699, 399]], dtype=np.float64)
    tb = public_predictor.transform.apply_boxes_torch(torch.as_tensor(boxes, dtype=torch.float), (h, w))
    pub_masks, pub_scores, pub_low = public_predictor.predict_torch(None, None, tb, multimask_output=False)
    predictor = segany.Predictor(model, precision="exact")
    results = predictor.predict_batch(predictor.encode(image), boxes=boxes, multimask=False)
    assert len(results) == 3
    for i, res in enumerate(results):
        np.testing.assert_allclose(res.low_res_logits, pub_low[i].numpy(), atol=LOGIT_ATOL, rtol=0)
        np.testing.assert_allclose(res.scores, pub_scores[i].numpy(), atol=LOGIT_ATOL, rtol=0)
        assert (res.masks == pub_masks[i].numpy()).mean() > 0.9999
