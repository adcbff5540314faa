"""Mask encodings: RLE, PNG, polygons with holes, boxes and areas."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from pycocotools import mask as coco_mask

from segany.errors import InvalidInputError
from segany.masks import (
    Polygon,
    decode_index_png,
    decode_png,
    decode_rle,
    encode_index_png,
    encode_png,
    encode_rle,
    encode_rle_batch,
    mask_area,
    mask_to_bbox_xywh,
    mask_to_polygons,
    masks_to_boxes_xyxy,
    polygons_to_coco,
    polygons_to_mask,
    rle_runs_batch,
)

SHAPES = [(1, 1), (1, 9), (9, 1), (7, 13), (64, 48), (101, 37)]


def _random_mask(shape: tuple[int, int], seed: int, density: float = 0.5) -> np.ndarray:
    return np.random.default_rng(seed).random(shape) < density


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def _ring_with_hole_and_island(shape: tuple[int, int] = (200, 300)) -> np.ndarray:
    """A disc with a round hole, an island inside the hole, and a separate rectangle with a square hole."""
    m = np.zeros(shape, np.uint8)
    cv2.circle(m, (150, 100), 80, 1, -1)
    cv2.circle(m, (150, 100), 40, 0, -1)
    cv2.circle(m, (150, 100), 15, 1, -1)
    cv2.rectangle(m, (10, 10), (40, 30), 1, -1)
    cv2.rectangle(m, (20, 15), (25, 20), 0, -1)
    return m.astype(bool)


# ------------------------------------------------------------------------------------------------------ RLE


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kind", ["empty", "full", "random"])
def test_rle_round_trip(shape, kind):
    mask = {"empty": np.zeros(shape, bool), "full": np.ones(shape, bool)}.get(kind)
    if mask is None:
        mask = _random_mask(shape, seed=shape[0] * 31 + shape[1])
    rle = encode_rle(mask)
    assert rle["size"] == list(shape)
    assert isinstance(rle["counts"], str)
    json.dumps(rle)  # plain JSON types only
    back = decode_rle(rle)
    assert back.dtype == np.bool_ and back.shape == shape
    np.testing.assert_array_equal(back, mask)
    # pycocotools reads it as its own, and agrees on area and box (COCO boxes count pixels: w = x1 - x0 + 1)
    coco = {"size": rle["size"], "counts": rle["counts"].encode()}
    np.testing.assert_array_equal(coco_mask.decode(coco).astype(bool), mask)
    assert mask_area(mask) == int(coco_mask.area(coco))
    x, y, w, h = coco_mask.toBbox(coco).tolist()
    if mask.any():
        assert mask_to_bbox_xywh(mask) == [x, y, w - 1, h - 1]
    else:
        assert mask_to_bbox_xywh(mask) == [0, 0, 0, 0]


def test_rle_is_column_major_hand_computed():
    # [[0, 1, 1],
    #  [1, 1, 0]]   column-major pixels: 0,1 | 1,1 | 1,0  -> runs: 1 background, 4 foreground, 1 background
    mask = np.array([[0, 1, 1], [1, 1, 0]], dtype=bool)
    assert encode_rle(mask) == {"size": [2, 3], "counts": "141"}
    np.testing.assert_array_equal(decode_rle({"size": [2, 3], "counts": [1, 4, 1]}), mask)
    np.testing.assert_array_equal(decode_rle({"size": [2, 3], "counts": [1.0, 4.0, 1.0]}), mask)  # whole floats
    # row-major reading would give runs 1, 3, 2 instead
    assert decode_rle({"size": [2, 3], "counts": [1, 3, 2]}).tolist() == [[0, 1, 0], [1, 1, 0]]
    # 2x2 with only the top-left pixel background: one background run then three foreground
    assert encode_rle(np.array([[0, 1], [1, 1]]))["counts"] == "13"


def test_rle_long_runs_use_difference_coding():
    mask = np.zeros((300, 200), bool)
    mask[100:250, 20:180] = True
    rle = encode_rle(mask)
    np.testing.assert_array_equal(decode_rle(rle), mask)
    np.testing.assert_array_equal(decode_rle({**rle, "counts": rle["counts"].encode()}), mask)


def test_rle_batch_matches_single_and_non_bool_input():
    rng = np.random.default_rng(3)
    masks = rng.random((5, 23, 17)) < 0.4
    masks[1] = False
    masks[2] = True
    batch = encode_rle_batch(masks)
    assert batch == [encode_rle(m) for m in masks]
    assert encode_rle_batch(np.zeros((0, 4, 4), bool)) == []
    assert encode_rle_batch(masks.astype(np.uint8) * 7) == batch
    assert encode_rle(masks[0].astype(np.float32)) == batch[0]
    # non-contiguous input (a transposed view)
    assert encode_rle(masks[0].T) == encode_rle(np.ascontiguousarray(masks[0].T))


@pytest.mark.parametrize(
    "rle",
    [
        {"size": [2, 2], "counts": "1"},  # too few pixels: pycocotools would read uninitialised memory
        {"size": [2, 2], "counts": "131"},  # too many
        {"size": [2, 2], "counts": "1é"},
        {"size": [2, 2], "counts": "1~"},
        {"size": [2, 2], "counts": [1, 2]},
        {"size": [2, 2], "counts": [-1, 5]},
        {"size": [2, 2], "counts": "1P"},  # truncated: the last character says more groups follow
        {"size": [2, 2], "counts": "111N"},  # the fourth run's difference (-2) makes it negative
        {"size": [2, 2], "counts": "ooooooooo0"},  # a 50-bit run: far beyond H*W
        {"size": [2, 2], "counts": "oooooooooo0"},  # longer than any run can be
        {"size": [2, 2], "counts": [2**63 - 1, 2**63 - 1, 6]},  # sums to 4 modulo 2**64
        {"size": [2, 2], "counts": [2**64]},
        {"size": [2, 2], "counts": np.array([1, 2], np.uint32)},
        {"size": [2, 2], "counts": [1.5, 3.5]},  # truncated, 1 + 3 would tile the 4 pixels
        {"size": [2, 2], "counts": np.array([1.5, 3.5])},
        {"size": [2, 2], "counts": ["1", "3"]},
        {"size": [2, 2], "counts": np.array([2**64 - 1, 5], np.uint64)},  # wraps to -1 as int64: refused
        {"size": [2, 2], "counts": np.array([[1, 3]], np.uint32)},  # runs are 1-D
        {"size": [2], "counts": "13"},
        {"size": [-2, -2], "counts": "13"},
        {"size": [2, 2], "counts": 13},
        {"counts": "13"},
        "13",
    ],
)
def test_decode_rle_rejects_bad_input(rle):
    with pytest.raises(InvalidInputError):
        decode_rle(rle)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("first", [False, True])
def test_rle_runs_are_pycocotools_counts_uncompressed(shape, first):
    masks = np.stack([_random_mask(shape, seed=s, density=d) for s, d in ((1, 0.5), (2, 0.05), (3, 0.95))])
    masks[:, 0, 0] = first
    masks = np.concatenate([masks, np.zeros((1, *shape), bool), np.ones((1, *shape), bool)])
    runs = rle_runs_batch(masks)
    assert len(runs) == len(masks)
    for mask, r, compressed in zip(masks, runs, encode_rle_batch(masks)):
        assert r.dtype == np.uint32 and r.ndim == 1
        assert int(r.sum()) == mask.size and (r[1:] > 0).all()  # only the first run may be empty
        assert (r[0] == 0) == bool(mask[0, 0])
        back = coco_mask.decode(coco_mask.frPyObjects({"size": list(shape), "counts": r.tolist()}, *shape))
        np.testing.assert_array_equal(back.astype(bool), mask)
        np.testing.assert_array_equal(decode_rle({"size": list(shape), "counts": r}), mask)
        assert coco_mask.frPyObjects({"size": list(shape), "counts": r.tolist()}, *shape)["counts"].decode() == (
            compressed["counts"]
        )
    assert [r.tolist() for r in rle_runs_batch(masks.astype(np.float32) * 3)] == [r.tolist() for r in runs]
    assert rle_runs_batch(np.zeros((0, *shape), bool)) == []


def test_rle_runs_refuse_masks_beyond_uint32_runs():
    huge = np.broadcast_to(np.zeros((1, 1, 1), bool), (1, 65536, 65537))  # 2**32 + 65536 pixels, no memory
    with pytest.raises(InvalidInputError, match="uint32"):
        rle_runs_batch(huge)


def test_rle_runs_hand_computed_and_zero_sized():
    mask = np.array([[0, 1, 0], [1, 1, 0]], bool)  # columns: (0,1), (1,1), (0,0) -> 0 1 1 1 0 0
    assert rle_runs_batch(mask[None])[0].tolist() == [1, 3, 2]
    assert rle_runs_batch(np.ones((1, 2, 2)))[0].tolist() == [0, 4]
    empty = rle_runs_batch(np.zeros((2, 0, 5), bool))
    assert [r.tolist() for r in empty] == [[], []]
    assert decode_rle({"size": [0, 5], "counts": empty[0]}).shape == (0, 5)


def test_rle_zero_sized():
    rle = encode_rle(np.zeros((0, 5), bool))
    assert rle["size"] == [0, 5]
    assert decode_rle(rle).shape == (0, 5)


@pytest.mark.parametrize("bad", [np.zeros((2, 2, 2)), np.zeros(4), np.array([["a"]])])
def test_encoders_reject_wrong_shapes(bad):
    with pytest.raises(InvalidInputError):
        encode_rle(bad)


# ------------------------------------------------------------------------------------------------------ PNG


@pytest.mark.parametrize("shape", SHAPES)
def test_png_round_trip_one_bit(shape):
    mask = _random_mask(shape, seed=7)
    data = encode_png(mask)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[24] == 1 and data[25] == 0  # IHDR: bit depth 1, colour type grayscale
    np.testing.assert_array_equal(decode_png(data), mask)


def test_png_decodes_8bit_masks_and_rejects_garbage():
    mask = _random_mask((20, 30), seed=1)
    ok, buf = cv2.imencode(".png", mask.astype(np.uint8) * 255)
    assert ok
    np.testing.assert_array_equal(decode_png(buf.tobytes()), mask)
    with pytest.raises(InvalidInputError):
        decode_png(b"not a png")
    with pytest.raises(InvalidInputError):
        encode_png(np.zeros((0, 3), bool))


def test_png_is_small_for_a_large_mask():
    mask = np.zeros((1200, 1800), np.uint8)
    cv2.circle(mask, (900, 600), 400, 1, -1)
    assert len(encode_png(mask)) < 8_000  # 2.16 MP; 8-bit zlib-9 PNG of it is ~6 KB, raw 1-bit 270 KB


def test_index_png_paints_in_order():
    masks = np.zeros((3, 10, 12), bool)
    masks[0, 0:6, 0:6] = True
    masks[1, 3:9, 3:9] = True
    masks[2, 0:2, 10:12] = True
    labels = decode_index_png(encode_index_png(masks))
    assert labels.dtype == np.uint8 and labels.shape == (10, 12)
    assert labels[0, 0] == 1 and labels[4, 4] == 2 and labels[8, 8] == 2 and labels[0, 11] == 3
    assert labels[9, 0] == 0
    labels = decode_index_png(encode_index_png(masks, order=[1, 0]))
    assert labels[4, 4] == 1 and labels[8, 8] == 2 and labels[0, 11] == 0  # object 2 left out
    np.testing.assert_array_equal(decode_png(encode_index_png(masks)), masks.any(axis=0))
    for bad in ([0, 0], [3], [-1]):
        with pytest.raises(InvalidInputError):
            encode_index_png(masks, order=bad)


def test_index_png_more_than_255_objects_is_16bit():
    masks = np.zeros((300, 20, 15), bool)
    for i in range(300):
        masks[i, i // 15, i % 15] = True
    labels = decode_index_png(encode_index_png(masks))
    assert labels.dtype == np.uint16
    assert labels[19, 14] == 300 and labels[0, 0] == 1


# ------------------------------------------------------------------------------------------------- polygons


def test_polygons_with_holes_round_trip_exactly():
    mask = _ring_with_hole_and_island()
    polygons = mask_to_polygons(mask)
    assert sorted(len(p.holes) for p in polygons) == [0, 1, 1]  # island, disc with hole, rectangle with hole
    for p in polygons:
        assert p.exterior.dtype == np.float32 and p.exterior.ndim == 2 and p.exterior.shape[1] == 2
        assert all(h.dtype == np.float32 and h.shape[1] == 2 for h in p.holes)
    back = polygons_to_mask(polygons, mask.shape)
    assert back.dtype == np.bool_
    np.testing.assert_array_equal(back, mask)
    # order of polygons does not matter: the island survives its enclosing hole being carved
    np.testing.assert_array_equal(polygons_to_mask(polygons[::-1], mask.shape), mask)


@pytest.mark.parametrize("seed", range(20))
def test_polygons_round_trip_random_masks(seed):
    rng = np.random.default_rng(seed)
    mask = rng.random((int(rng.integers(1, 40)), int(rng.integers(1, 40)))) < rng.uniform(0.1, 0.9)
    np.testing.assert_array_equal(polygons_to_mask(mask_to_polygons(mask), mask.shape), mask)


def test_polygons_frame_is_pixel_centres():
    mask = np.zeros((10, 10), bool)
    mask[2:5, 3:7] = True  # rows 2..4, columns 3..6
    (polygon,) = mask_to_polygons(mask)
    assert polygon.exterior[:, 0].min() == 3 and polygon.exterior[:, 0].max() == 6
    assert polygon.exterior[:, 1].min() == 2 and polygon.exterior[:, 1].max() == 4
    assert polygon.holes == []


@pytest.mark.parametrize(("tolerance", "min_iou"), [(0.5, 0.99), (1.0, 0.98), (2.0, 0.95)])
def test_polygon_simplification_tolerance(tolerance, min_iou):
    mask = _ring_with_hole_and_island()
    exact = mask_to_polygons(mask)
    simple = mask_to_polygons(mask, tolerance=tolerance)
    assert sum(len(p.exterior) for p in simple) < sum(len(p.exterior) for p in exact)
    assert _iou(polygons_to_mask(simple, mask.shape), mask) >= min_iou


def test_polygons_edge_cases():
    assert mask_to_polygons(np.zeros((5, 5), bool)) == []
    assert mask_to_polygons(np.zeros((0, 5), bool)) == []
    dot = np.zeros((5, 5), bool)
    dot[2, 2] = True
    np.testing.assert_array_equal(polygons_to_mask(mask_to_polygons(dot), dot.shape), dot)
    with pytest.raises(InvalidInputError):
        mask_to_polygons(dot, tolerance=-1)
    # parts outside the output are clipped
    square = Polygon(np.array([[-5, -5], [3, -5], [3, 3], [-5, 3]], np.float32))
    out = polygons_to_mask([square], (6, 6))
    assert out.sum() == 16 and out[:4, :4].all()
    assert not polygons_to_mask([Polygon(np.array([[10, 10], [12, 10], [12, 12]], np.float32))], (5, 5)).any()
    with pytest.raises(InvalidInputError):
        polygons_to_mask([Polygon(np.array([[0, 0], [np.nan, 1], [1, 1]]))], (4, 4))


def test_polygons_to_coco_rings():
    mask = _ring_with_hole_and_island()
    dot = (190, 290)
    mask[dot] = True  # a single pixel: its 1-vertex ring is not valid COCO and is dropped
    polygons = mask_to_polygons(mask)
    rings = polygons_to_coco(polygons)
    assert len(rings) == 5  # 3 exteriors + 2 holes; the dot is dropped
    assert all(isinstance(v, float) for ring in rings for v in ring)
    assert all(len(ring) >= 6 and len(ring) % 2 == 0 for ring in rings)
    json.dumps(rings)
    # pycocotools unions the rings (no holes): close to the mask with its holes filled
    h, w = mask.shape
    filled = coco_mask.decode(coco_mask.merge(coco_mask.frPyObjects(rings, h, w))).astype(bool)
    solid = polygons_to_mask([Polygon(p.exterior) for p in polygons], mask.shape)
    assert _iou(filled, solid) > 0.95


# ------------------------------------------------------------------------------------------ boxes and areas


def test_bbox_sam_convention():
    assert mask_to_bbox_xywh(np.ones((480, 640), bool)) == [0, 0, 639, 479]
    assert mask_to_bbox_xywh(np.zeros((480, 640), bool)) == [0, 0, 0, 0]
    dot = np.zeros((480, 640), bool)
    dot[10, 20] = True
    assert mask_to_bbox_xywh(dot) == [20, 10, 0, 0]
    m = np.zeros((50, 60), bool)
    m[5:20, 7:30] = True
    assert mask_to_bbox_xywh(m) == [7, 5, 22, 14]


def test_batched_boxes_match_single():
    rng = np.random.default_rng(5)
    masks = np.zeros((6, 40, 50), bool)
    for i in range(5):
        y0, x0 = rng.integers(0, 30, 2)
        masks[i, y0 : y0 + rng.integers(1, 10), x0 : x0 + rng.integers(1, 15)] = True
    boxes = masks_to_boxes_xyxy(masks)
    assert boxes.shape == (6, 4) and boxes.dtype == np.int64
    for m, (x0, y0, x1, y1) in zip(masks, boxes):
        assert mask_to_bbox_xywh(m) == [x0, y0, x1 - x0, y1 - y0]
        if m.any():
            ys, xs = np.nonzero(m)
            assert [x0, y0, x1, y1] == [xs.min(), ys.min(), xs.max(), ys.max()]
    assert boxes[5].tolist() == [0, 0, 0, 0]
    assert masks_to_boxes_xyxy(np.ones((1, 480, 640), bool)).tolist() == [[0, 0, 639, 479]]
    assert masks_to_boxes_xyxy(np.zeros((2, 0, 5), bool)).tolist() == [[0, 0, 0, 0]] * 2


def test_mask_area():
    masks = np.zeros((3, 8, 9), bool)
    masks[0, :2, :3] = True
    masks[2] = True
    assert mask_area(masks[0]) == 6 and isinstance(mask_area(masks[0]), int)
    assert mask_area(masks).tolist() == [6, 0, 72]
    with pytest.raises(InvalidInputError):
        mask_area(np.zeros(3))
