"""Automatic mask generation: geometry helpers, NMS, small-region clean-up and the generator on a tiny model.

Parity with the public generator (same records) lives in tests/oracle/test_everything_parity.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pycocotools import mask as coco_mask

import segany
from segany.errors import InvalidInputError
from segany.everything import (
    AutomaticMaskGenerator,
    EverythingSettings,
    box_nms,
    build_point_grid,
    generate_crop_boxes,
    remove_small_regions,
    uncompressed_rle,
)
from tests.conftest import random_image

LOW = dict(pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0)


def test_point_grid_is_cell_centres_row_by_row():
    grid = build_point_grid(2)
    np.testing.assert_allclose(grid, [[0.25, 0.25], [0.75, 0.25], [0.25, 0.75], [0.75, 0.75]])
    assert build_point_grid(32).shape == (1024, 2)


def test_crop_boxes_cover_the_image_and_overlap():
    boxes, layers = generate_crop_boxes((480, 640), 1, 512 / 1500)
    assert boxes[0] == [0, 0, 640, 480] and layers == [0, 1, 1, 1, 1]
    overlap = int(512 / 1500 * 480)
    assert boxes[1][0] == 0 and boxes[3][0] > 0  # x0 outer, y0 inner
    assert boxes[1][2] - boxes[3][0] == overlap
    assert all(b[2] <= 640 and b[3] <= 480 for b in boxes)


def test_box_nms_greedy_by_score():
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30], [0, 0, 10, 9]], dtype=torch.float32)
    scores = torch.tensor([0.5, 0.9, 0.7, 0.9])
    # 1 (0.9) beats 0 (IoU 0.81); 3 ties with 1 and comes after it; IoU(1, 3) = 72/99 > 0.7
    np.testing.assert_array_equal(box_nms(boxes, scores, 0.7), [1, 2])
    np.testing.assert_array_equal(box_nms(boxes, scores, 0.9), [1, 3, 2, 0])  # IoU(0, 3) = 0.9 is not > 0.9
    assert box_nms(torch.zeros((0, 4)), torch.zeros(0), 0.5).shape == (0,)


def test_remove_small_regions_holes_and_islands():
    mask = np.zeros((20, 20), dtype=bool)
    mask[2:12, 2:12] = True
    mask[5, 5] = False  # a one-pixel hole
    mask[16, 16] = True  # a one-pixel island
    filled, changed = remove_small_regions(mask, 4, "holes")
    assert changed and filled[5, 5] and filled[16, 16]
    cleaned, changed = remove_small_regions(filled, 4, "islands")
    assert changed and not cleaned[16, 16] and cleaned[2:12, 2:12].all()
    same, changed = remove_small_regions(cleaned, 4, "islands")
    assert not changed and same is cleaned
    only_small = np.zeros((10, 10), dtype=bool)
    only_small[1, 1] = only_small[5, 5] = only_small[5, 6] = True
    kept, _ = remove_small_regions(only_small, 10, "islands")
    assert kept.sum() == 2 and kept[5, 5]  # every island is small: the largest stays


def test_uncompressed_rle_matches_pycocotools():
    rng = np.random.default_rng(0)
    for first in (False, True):
        mask = rng.random((7, 5)) > 0.5
        mask[0, 0] = first
        rle = uncompressed_rle(mask)
        assert (rle["counts"][0] == 0) == first  # an empty background run when the first pixel is foreground
        decoded = coco_mask.decode(coco_mask.frPyObjects(rle, 7, 5))
        np.testing.assert_array_equal(decoded.astype(bool), mask)


def test_settings_validate():
    with pytest.raises(InvalidInputError):
        EverythingSettings(points_per_side=None)
    with pytest.raises(InvalidInputError):
        EverythingSettings(output_mode="png")
    with pytest.raises(InvalidInputError):
        EverythingSettings(points_per_batch=0)
    s = EverythingSettings()
    assert (s.points_per_side, s.points_per_batch, s.pred_iou_thresh, s.stability_score_thresh) == (32, 64, 0.88, 0.95)
    assert (s.box_nms_thresh, s.crop_n_layers, s.crop_overlap_ratio, s.min_mask_region_area) == (0.7, 0, 512 / 1500, 0)


@pytest.fixture(scope="module")
def generator_predictor(tiny_model):
    return segany.Predictor(tiny_model, precision="exact")


def test_generator_records_and_output_modes(generator_predictor):
    image = random_image(48, 64, seed=1)
    gen = AutomaticMaskGenerator(generator_predictor, points_per_side=2, **LOW)
    crops = gen.encode(image)
    binary = gen.decode(crops)
    assert len(binary) == 4 * 3  # every mask kept
    rle = AutomaticMaskGenerator(generator_predictor, points_per_side=2, output_mode="coco_rle", **LOW).decode(crops)
    raw = AutomaticMaskGenerator(
        generator_predictor, points_per_side=2, output_mode="uncompressed_rle", **LOW
    ).decode(crops)
    ious = [r["predicted_iou"] for r in binary]
    assert ious == sorted(ious, reverse=True)
    for b, r, u in zip(binary, rle, raw):
        mask = b["segmentation"]
        assert mask.shape == (48, 64) and mask.dtype == np.bool_
        np.testing.assert_array_equal(coco_mask.decode(r["segmentation"]).astype(bool), mask)
        np.testing.assert_array_equal(coco_mask.decode(coco_mask.frPyObjects(u["segmentation"], 48, 64)) > 0, mask)
        assert b["area"] == int(mask.sum()) == r["area"]
        ys, xs = np.nonzero(mask)
        assert b["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min(), ys.max() - ys.min()]
        assert b["crop_box"] == [0, 0, 64, 48]
        assert len(b["point_coords"]) == 1 and len(b["point_coords"][0]) == 2


def test_generator_thresholds_filter_everything(generator_predictor):
    gen = AutomaticMaskGenerator(generator_predictor, points_per_side=2, pred_iou_thresh=100.0)
    assert gen.generate(random_image(40, 40)) == []


@pytest.mark.parametrize(
    "precision, batch, prompt",
    [("exact", 9, "click"), ("exact", 15, "click"), ("fast", 11, "click"), ("exact", 10, "box")],
)
def test_decode_in_chunks_is_bitwise_the_model(tiny_model, precision, batch, prompt):
    from segany.everything import decode_in_chunks
    from segany.optimize import configure

    torch.manual_seed(0)
    emb = torch.randn(1, 256, 64, 64)
    coords = torch.rand(batch, 1, 2) * 1000
    labels = torch.ones(batch, 1, dtype=torch.int64)
    boxes, multimask = None, True
    if prompt == "box":
        xy = torch.rand(batch, 2) * 500
        coords, labels, boxes, multimask = None, None, torch.cat([xy, xy + 300], dim=1), False
    configure(tiny_model, precision)
    try:
        with torch.inference_mode():
            want_low, want_iou = tiny_model.decode(emb, coords, labels, boxes, None, multimask)
            # chunks 4+5, 4+4+7, 4+7, 4+6
            low, iou = decode_in_chunks(tiny_model, emb, coords, labels, chunk=4, boxes=boxes, multimask=multimask)
    finally:
        configure(tiny_model, "exact")
    assert torch.equal(low, want_low) and torch.equal(iou, want_iou)


@pytest.mark.parametrize("for_onnx", [True, False])
@pytest.mark.parametrize("batch", [5, 11])
def test_decode_in_chunks_with_the_fast_decoder_matches_to_rounding(tiny_model, batch, for_onnx):
    from segany.everything import decode_in_chunks
    from segany.modeling.fast_decoder import fast_mask_decoder

    torch.manual_seed(1)
    emb = torch.randn(1, 256, 64, 64)
    coords = torch.rand(batch, 1, 2) * 1000
    labels = torch.ones(batch, 1, dtype=torch.int64)
    fast = fast_mask_decoder(tiny_model.mask_decoder, for_onnx=for_onnx)
    with torch.inference_mode():
        want_low, want_iou = tiny_model.decode(emb, coords, labels, None, None, True)
        low, iou = decode_in_chunks(tiny_model, emb, coords, labels, chunk=4, decoder=fast)
    torch.testing.assert_close(iou, want_iou, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(low, want_low, atol=1e-4, rtol=1e-4)
