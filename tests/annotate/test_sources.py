"""Prompt sources: JSONL, COCO detections and YOLO txt, with class names carried through."""

from __future__ import annotations

import json

import pytest

from segany.annotate.sources import load_prompts
from segany.errors import InvalidInputError
from tests.annotate.conftest import write_jsonl


def test_jsonl_per_image_and_per_object_lines(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [
        {"image": "a.png", "prompts": [{"box": [1, 2, 30, 40], "class": "car"},
                                       {"points": [[5, 6], [7, 8]], "labels": [1, 0], "class": "person"}]},
        {"image": "./sub/b.jpg", "box": [0, 0, 10, 10], "class": "car"},
        {"image": "sub/b.jpg", "points": [[3, 4]]},
        {"image": "empty.png", "prompts": []},
    ])
    source = load_prompts(path)
    table = [(c.id, c.name, c.yolo_index) for c in source.categories]
    assert table == [(1, "car", 0), (2, "person", 1), (3, "object", 2)]
    a = source.prompts_for("a.png")
    assert a[0].box == (1, 2, 30, 40) and a[0].category == 0 and not a[0].multimask
    assert a[1].points == ((5, 6), (7, 8)) and a[1].labels == (1, 0) and a[1].category == 1
    b = source.prompts_for("sub/b.jpg")
    assert len(b) == 2 and b[1].labels == (1,) and b[1].multimask  # a single click picks the best of three
    assert source.prompts_for("empty.png") == []
    assert source.prompts_for("other/a.png") == a  # matched by file name when unambiguous
    assert source.prompts_for("zzz.png") is None


def test_jsonl_errors_name_the_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"image": "a.png", "box": [1, 2, 3, 4]}\n{oops\n')
    with pytest.raises(InvalidInputError, match="line 2"):
        load_prompts(bad)
    write_jsonl(bad, [{"image": "a.png", "box": [1, 2, 3]}])
    with pytest.raises(InvalidInputError, match=r"\[x0, y0, x1, y1\]"):
        load_prompts(bad)


def test_coco_dataset_boxes_and_categories(tmp_path):
    coco = {
        "images": [{"id": 7, "file_name": "a.png", "width": 64, "height": 48}, {"id": 8, "file_name": "b.png"}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 3, "bbox": [10, 5, 20, 15], "score": 0.9},
            {"id": 2, "image_id": 7, "category_id": 9, "bbox": [0, 0, 4, 4]},
        ],
        "categories": [{"id": 3, "name": "cat"}, {"id": 9, "name": "dog"}],
    }
    path = tmp_path / "det.json"
    path.write_text(json.dumps(coco))
    source = load_prompts(path)
    assert [(c.id, c.name) for c in source.categories] == [(3, "cat"), (9, "dog")]
    a = source.prompts_for("a.png")
    assert a[0].box == (10, 5, 30, 20) and a[0].category == 0 and a[1].category == 1
    assert source.prompts_for("b.png") == []  # an image without detections is labelled empty


def test_coco_results_list_with_file_names(tmp_path):
    path = tmp_path / "results.json"
    path.write_text(json.dumps([{"file_name": "a.png", "category_id": 1, "bbox": [1, 1, 2, 2], "score": 0.5}]))
    assert load_prompts(path).prompts_for("a.png")[0].box == (1, 1, 3, 3)


def test_yolo_folder_normalised_boxes_and_names(tmp_path):
    labels = tmp_path / "labels"
    (labels / "sub").mkdir(parents=True)
    (labels / "a.txt").write_text("1 0.5 0.5 0.5 0.25\n0 0.25 0.25 0.1 0.1 0.87\n")
    (labels / "sub" / "b.txt").write_text("")
    (labels / "classes.txt").write_text("cat\ndog\n")
    source = load_prompts(labels)
    assert [(c.id, c.name, c.yolo_index) for c in source.categories] == [(1, "cat", 0), (2, "dog", 1)]
    a = source.prompts_for("a.png")
    box = a[0].resolved(40, 80).box
    assert box == pytest.approx((20, 15, 60, 25)) and a[0].category == 1
    assert source.prompts_for("sub/b.jpg") == []


def test_yolo_names_from_data_yaml(tmp_path):
    (tmp_path / "a.txt").write_text("2 0.5 0.5 0.2 0.2\n")
    (tmp_path / "data.yaml").write_text("path: .\nnames:\n  0: person\n  1: bicycle\n  2: car\n")
    assert [c.name for c in load_prompts(tmp_path).categories] == ["person", "bicycle", "car"]


def test_unknown_source(tmp_path):
    with pytest.raises(InvalidInputError, match="does not exist"):
        load_prompts(tmp_path / "nope.jsonl")
    (tmp_path / "p.csv").write_text("x")
    with pytest.raises(InvalidInputError, match="expected a .jsonl"):
        load_prompts(tmp_path / "p.csv")
