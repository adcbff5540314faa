"""Output formats round-trip: COCO (pycocotools), polygons with holes, YOLO-seg, PNG, overlays; atomic writes."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from pycocotools.coco import COCO

from segany.annotate.exporters import Exporter, make_record, yolo_polygon_to_mask
from segany.annotate.journal import Journal, atomic_write
from segany.annotate.sources import Category
from segany.errors import InvalidInputError
from segany.masks import Polygon, decode_index_png, decode_png, encode_rle, polygons_to_mask

#: YOLO-seg keeps one polygon per object (no holes). For one solid region the rasterised polygon must reach this IoU
#: with the mask (vertices are written with 6 decimals, rasterised at pixel centres).
YOLO_IOU = 0.98

CATEGORIES = [Category(3, "ring", 0), Category(5, "blob", 1)]


def shapes(h=60, w=80):
    yy, xx = np.mgrid[:h, :w]
    ring = ((yy - 30) ** 2 + (xx - 25) ** 2 <= 18**2) & ((yy - 30) ** 2 + (xx - 25) ** 2 > 6**2)  # a hole
    blob = ((yy - 20) / 12) ** 2 + ((xx - 60) / 15) ** 2 <= 1
    return [ring, blob]


def record_for(masks, name="dir/img.png"):
    objects = [{"segmentation": encode_rle(m), "category": k, "score": 0.5 + k / 10} for k, m in enumerate(masks)]
    return make_record(name, masks[0].shape, objects)


def iou(a, b):
    return (a & b).sum() / (a | b).sum()


def test_coco_loads_in_pycocotools_and_decodes_exactly(tmp_path):
    masks = shapes()
    exporter = Exporter(tmp_path, ("coco",), CATEGORIES, polygons=True)
    exporter.write_coco([record_for(masks), record_for(masks[::-1], "second.png")])
    coco = COCO(str(tmp_path / "annotations.json"))
    assert sorted(coco.getImgIds()) == [1, 2] and coco.imgs[1]["file_name"] == "dir/img.png"
    assert {c["id"]: c["name"] for c in coco.loadCats(coco.getCatIds())} == {3: "ring", 5: "blob"}
    anns = coco.loadAnns(coco.getAnnIds(imgIds=[1]))
    assert [a["category_id"] for a in anns] == [3, 5]
    for ann, mask in zip(anns, masks):
        np.testing.assert_array_equal(coco.annToMask(ann).astype(bool), mask)
        assert ann["area"] == mask.sum()
        ys, xs = np.nonzero(mask)
        assert ann["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]  # COCO boxes
        # polygons keep the hole: rasterising exterior minus holes gives the mask back exactly
        polys = [Polygon(np.reshape(p["exterior"], (-1, 2)), [np.reshape(h, (-1, 2)) for h in p["holes"]])
                 for p in ann["polygons"]]
        np.testing.assert_array_equal(polygons_to_mask(polys, mask.shape), mask)
    assert len(anns[0]["polygons"][0]["holes"]) == 1


def test_yolo_polygons_rasterise_back(tmp_path):
    masks = shapes()
    Exporter(tmp_path, ("yolo",), CATEGORIES).write_image_outputs(record_for(masks), None)
    lines = (tmp_path / "labels" / "dir" / "img.txt").read_text().splitlines()
    assert [line.split()[0] for line in lines] == ["0", "1"]
    values = np.array(lines[1].split()[1:], dtype=float)
    assert ((values >= 0) & (values <= 1)).all()
    blob = yolo_polygon_to_mask(lines[1], masks[1].shape)
    assert iou(blob, masks[1]) >= YOLO_IOU
    filled_ring = yolo_polygon_to_mask(lines[0], masks[0].shape)  # the hole is filled: YOLO-seg has none
    assert (filled_ring >= masks[0]).all() and iou(filled_ring, masks[0]) < 1


def test_png_index_and_objects(tmp_path):
    masks = shapes()
    Exporter(tmp_path, ("png",), CATEGORIES, png_mode="index").write_image_outputs(record_for(masks), None)
    labels = decode_index_png((tmp_path / "masks" / "dir" / "img.png").read_bytes())
    np.testing.assert_array_equal(labels == 1, masks[0] & ~masks[1])
    np.testing.assert_array_equal(labels == 2, masks[1])
    Exporter(tmp_path, ("png",), CATEGORIES, png_mode="objects").write_image_outputs(record_for(masks), None)
    for k, mask in enumerate(masks):
        png = (tmp_path / "masks" / "dir" / "img" / f"{k:04d}.png").read_bytes()
        np.testing.assert_array_equal(decode_png(png), mask)


def test_overlay_preview(tmp_path):
    masks = shapes()
    image = np.full((*masks[0].shape, 3), 100, dtype=np.uint8)
    Exporter(tmp_path, ("coco",), CATEGORIES, overlay=True).write_image_outputs(record_for(masks), image)
    preview = cv2.imread(str(tmp_path / "overlays" / "dir" / "img.png"))
    assert preview.shape == image.shape
    assert (preview[~(masks[0] | masks[1])] == 100).all() and (preview[masks[1]] != 100).any()


def test_empty_image_outputs(tmp_path):
    record = make_record("e.png", (10, 12), [])
    exporter = Exporter(tmp_path, ("coco", "yolo", "png"), CATEGORIES)
    exporter.write_image_outputs(record, None)
    exporter.write_coco([record])
    assert (tmp_path / "labels" / "e.txt").read_text() == ""
    assert (decode_index_png((tmp_path / "masks" / "e.png").read_bytes()) == 0).all()
    assert json.loads((tmp_path / "annotations.json").read_text())["annotations"] == []


def test_atomic_write_replaces_and_leaves_no_temp_files(tmp_path):
    target = tmp_path / "x" / "f.json"
    atomic_write(target, "one")
    atomic_write(target, b"two")
    assert target.read_text() == "two"
    assert [p.name for p in target.parent.iterdir()] == ["f.json"]


def test_journal_resume_rules(tmp_path):
    journal = Journal(tmp_path, {"model": "m", "formats": ["coco"]})
    journal.open()
    assert journal.load("a.png") is None
    journal.save({"name": "a.png", "objects": []})
    assert journal.load("a.png") == {"name": "a.png", "objects": []}
    journal.record_path("b.png").write_text('{"name": "b.p')  # torn file (cannot happen with atomic writes)
    assert journal.load("b.png") is None
    (journal.records_dir / ".segany-tmp-x.json.123.tmp").write_text("partial")  # a killed run's
    (tmp_path / "labels" / "sub").mkdir(parents=True)
    (tmp_path / "labels" / "sub" / ".segany-tmp-a.txt.9.tmp").write_text("partial")
    (tmp_path / ".draft.tmp").write_text("the user's")  # not ours: kept
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / ".segany-tmp-z.tmp").write_text("not in an output folder: kept")
    Journal(tmp_path, {"model": "m", "formats": ["coco"]}).open()
    assert not list(journal.records_dir.glob("*.tmp")) and not list((tmp_path / "labels").rglob("*.tmp"))
    assert (tmp_path / ".draft.tmp").exists() and (tmp_path / "cache" / ".segany-tmp-z.tmp").exists()
    with pytest.raises(InvalidInputError, match="other settings"):
        Journal(tmp_path, {"model": "other", "formats": ["coco"]}).open()
