"""``segany.everything`` against the public ``SamAutomaticMaskGenerator`` on the same random weights.

Both sides run fp32 on the CPU (segany with ``precision="exact"``). Records must be identical: same masks (RLE or
bool arrays), same order, same bbox, area, predicted_iou, stability_score, point_coords and crop_box. Random weights
give noisy masks with low scores, so the thresholds are lowered until masks survive; the decoder's last layer is
scaled up so logits spread and the stability score takes values between 0 and 1.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import segany
from segany.everything import AutomaticMaskGenerator, box_nms
from tests.conftest import random_image
from tests.oracle.sam_oracle import public_sam, save_checkpoint

pytestmark = pytest.mark.oracle


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    pytest.importorskip("segment_anything")
    public = public_sam("tiny", seed=3)
    with torch.no_grad():
        for mlp in public.mask_decoder.output_hypernetworks_mlps:
            mlp.layers[-1].weight.mul_(40.0)
    path = save_checkpoint(public, tmp_path_factory.mktemp("ckpt") / "tiny.pth")
    return public, segany.Predictor(segany.load_model(path), precision="exact")


def assert_same_records(public_records, records):
    assert len(records) == len(public_records)
    for i, (want, got) in enumerate(zip(public_records, records)):
        assert set(got) == set(want)
        for key, value in want.items():
            if isinstance(value, np.ndarray):
                assert got[key].dtype == np.bool_ and np.array_equal(got[key], value), (i, key)
            else:
                assert got[key] == value, (i, key, got[key], value)


CASES = {
    # every mask survives: order is the NMS order (score, then grid order for ties)
    "all_masks": dict(points_per_side=3, pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0),
    "thresholds": dict(points_per_side=3, pred_iou_thresh=-0.05, stability_score_thresh=0.3, box_nms_thresh=0.99),
    "nms_and_offset": dict(
        points_per_side=3, pred_iou_thresh=0.0, stability_score_thresh=0.0, stability_score_offset=0.5,
        box_nms_thresh=0.9,
    ),
    "crops": dict(
        points_per_side=2, pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0, crop_n_layers=1,
        crop_nms_thresh=0.99, output_mode="coco_rle",
    ),
    "small_regions": dict(
        points_per_side=2, points_per_batch=3, pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0,
        min_mask_region_area=25,
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_records_match_public(pair, case):
    from segment_anything import SamAutomaticMaskGenerator

    public, predictor = pair
    image = random_image(90, 120, seed=7)
    kwargs = CASES[case]
    want = SamAutomaticMaskGenerator(public, **kwargs).generate(image)
    got = AutomaticMaskGenerator(predictor, **kwargs).generate(image)
    assert len(want) > 0, "thresholds too strict for the test to mean anything"
    assert_same_records(want, got)


def test_stability_spreads(pair):
    """The scaled weights make the thresholds case meaningful: some masks pass, some fail."""
    from segment_anything import SamAutomaticMaskGenerator

    public, _ = pair
    image = random_image(90, 120, seed=7)
    records = SamAutomaticMaskGenerator(
        public, points_per_side=3, pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0
    ).generate(image)
    scores = np.array([r["stability_score"] for r in records])
    assert (scores >= 0.3).any() and (scores < 0.3).any(), scores


@pytest.mark.parametrize("n", [7, 300, 1500])  # > 1000 boxes takes torchvision's other batched_nms path
def test_box_nms_matches_torchvision(n):
    tv = pytest.importorskip("torchvision")
    rng = np.random.default_rng(n)
    xy = rng.integers(0, 60, size=(n, 2))
    wh = rng.integers(0, 40, size=(n, 2))
    boxes = torch.as_tensor(np.concatenate([xy, xy + wh], axis=1), dtype=torch.float32)
    boxes[: n // 5] = boxes[0]  # identical boxes
    scores = torch.as_tensor(rng.integers(0, 6, size=n) / 7, dtype=torch.float32)  # many ties
    for threshold in (0.0, 0.3, 0.7, 1.0):
        want = tv.ops.batched_nms(boxes, scores, torch.zeros(n), iou_threshold=threshold).numpy()
        np.testing.assert_array_equal(box_nms(boxes, scores, threshold), want)
