"""``segany annotate`` end to end in this process: every prompt source, --everything, bad images, usage errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pycocotools.coco import COCO

import segany
from segany.everything import AutomaticMaskGenerator
from tests.annotate.conftest import SIZES, write_jsonl

FAST_AMG = ("--points-per-side", "2", "--pred-iou-thresh", "0", "--stability-score-thresh", "0")


def load_coco(out):
    return COCO(str(out / "annotations.json"))


def test_jsonl_prompts_all_formats(run_cli, image_dir, tiny_checkpoint, tmp_path):
    prompts = write_jsonl(tmp_path / "p.jsonl", [
        {"image": "a.png", "prompts": [{"box": [5, 5, 40, 30], "class": "car"},
                                       {"points": [[10, 10], [30, 20]], "labels": [1, 0], "class": "person"}]},
        {"image": "sub/b.jpg", "box": [2, 3, 30, 50], "class": "person"},
    ])
    out = tmp_path / "out"
    code, err = run_cli("annotate", image_dir, "--out", out, "--prompts", prompts, "--checkpoint", tiny_checkpoint,
                        "--format", "coco,yolo,png", "--overlay", "--no-progress")
    assert code == 0, err
    assert "3 images: 3 labelled now" in err and "time per stage" in err
    assert "1 images had no prompts" in err  # c.png: labelled with no objects
    coco = load_coco(out)
    assert [coco.imgs[i]["file_name"] for i in sorted(coco.imgs)] == sorted(SIZES)
    assert {c["name"] for c in coco.dataset["categories"]} == {"car", "person"}
    names = {c["id"]: c["name"] for c in coco.dataset["categories"]}
    anns = coco.dataset["annotations"]
    assert [names[a["category_id"]] for a in anns] == ["car", "person", "person"]
    for ann in anns:
        image = coco.imgs[ann["image_id"]]
        assert coco.annToMask(ann).shape == (image["height"], image["width"])
    for name in SIZES:
        stem = name.rsplit(".", 1)[0]
        assert (out / "labels" / f"{stem}.txt").is_file()
        assert (out / "masks" / f"{stem}.png").is_file() and (out / "overlays" / f"{stem}.png").is_file()
    # a second run finds everything done
    code, err = run_cli("annotate", image_dir, "--out", out, "--prompts", prompts, "--checkpoint", tiny_checkpoint,
                        "--format", "coco,yolo,png", "--overlay", "--no-progress")
    assert code == 0 and "0 labelled now, 3 already done" in err


def test_same_masks_as_the_predictor(run_cli, image_dir, tiny_checkpoint, tmp_path):
    """The CLI's masks are the predictor's masks for the same prompts (exact precision)."""
    from PIL import Image

    box = [4, 6, 50, 40]
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"image": "a.png", "box": box}])
    out = tmp_path / "out"
    code, err = run_cli("annotate", image_dir / "a.png", "--out", out, "--prompts", prompts,
                        "--checkpoint", tiny_checkpoint, "--precision", "exact")
    assert code == 0, err
    predictor = segany.Predictor(segany.load_model(tiny_checkpoint), precision="exact")
    image = np.asarray(Image.open(image_dir / "a.png").convert("RGB"))
    want = predictor.predict(predictor.encode(image), box=box, multimask=False).masks[0]
    coco = load_coco(out)
    np.testing.assert_array_equal(coco.annToMask(coco.dataset["annotations"][0]).astype(bool), want)


def test_coco_detections_source(run_cli, image_dir, tiny_checkpoint, tmp_path):
    det = {
        "images": [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "sub/b.jpg"},
                   {"id": 3, "file_name": "sub/deeper/c.png"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 4, "bbox": [5, 5, 20, 20]},
                        {"id": 2, "image_id": 3, "category_id": 2, "bbox": [0, 0, 39, 39]}],
        "categories": [{"id": 2, "name": "tree"}, {"id": 4, "name": "house"}],
    }
    (tmp_path / "det.json").write_text(json.dumps(det))
    out = tmp_path / "out"
    code, err = run_cli("annotate", image_dir, "--out", out, "--prompts", tmp_path / "det.json",
                        "--checkpoint", tiny_checkpoint, "--format", "coco,yolo")
    assert code == 0, err
    coco = load_coco(out)
    assert [(a["image_id"], a["category_id"]) for a in coco.dataset["annotations"]] == [(1, 4), (3, 2)]
    assert (out / "labels" / "sub" / "deeper" / "c.txt").read_text().startswith("0 ")  # tree: YOLO index 0


def test_yolo_detections_source(run_cli, image_dir, tiny_checkpoint, tmp_path):
    labels = tmp_path / "labels"
    (labels / "sub").mkdir(parents=True)
    (labels / "classes.txt").write_text("cat\ndog\n")
    (labels / "a.txt").write_text("1 0.5 0.5 0.5 0.5\n")
    (labels / "sub" / "b.txt").write_text("0 0.4 0.4 0.3 0.3\n1 0.6 0.6 0.2 0.2\n")
    out = tmp_path / "out"
    code, err = run_cli("annotate", image_dir, "--out", out, "--prompts", labels, "--checkpoint", tiny_checkpoint)
    assert code == 0, err
    coco = load_coco(out)
    assert [c["name"] for c in coco.dataset["categories"]] == ["cat", "dog"]
    assert [(a["image_id"], a["category_id"]) for a in coco.dataset["annotations"]] == [(1, 2), (2, 1), (2, 2)]


def test_everything_matches_the_generator(run_cli, image_dir, tiny_checkpoint, tmp_path):
    from PIL import Image

    out = tmp_path / "out"
    code, err = run_cli("annotate", image_dir / "sub", "--out", out, "--everything", *FAST_AMG,
                        "--checkpoint", tiny_checkpoint, "--precision", "exact", "--polygons")
    assert code == 0, err
    predictor = segany.Predictor(segany.load_model(tiny_checkpoint), precision="exact")
    generator = AutomaticMaskGenerator(predictor, points_per_side=2, pred_iou_thresh=0, stability_score_thresh=0,
                                       output_mode="coco_rle")
    coco = load_coco(out)
    for image_id, name in ((1, "b.jpg"), (2, "deeper/c.png")):
        image = np.asarray(Image.open(image_dir / "sub" / name).convert("RGB"))
        want = generator.generate(image)
        got = coco.loadAnns(coco.getAnnIds(imgIds=[image_id]))
        assert len(got) == len(want) > 0
        for g, w in zip(got, want):
            assert g["segmentation"] == w["segmentation"]
            assert (g["predicted_iou"], g["stability_score"]) == (w["predicted_iou"], w["stability_score"])
            assert g["point_coords"] == w["point_coords"] and g["crop_box"] == w["crop_box"]
            assert g["category_id"] == 1 and "polygons" in g


def test_bad_images_are_skipped_and_listed(run_cli, image_dir, tiny_checkpoint, tmp_path):
    (image_dir / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (image_dir / "empty.jpg").write_bytes(b"")
    out = tmp_path / "out"
    code, err = run_cli("annotate", image_dir, "--out", out, "--everything", *FAST_AMG, "--checkpoint", tiny_checkpoint)
    assert code == 1
    assert "3 labelled now" in err and "2 skipped" in err
    assert "broken.png:" in err and "empty.jpg:" in err
    coco = load_coco(out)
    assert sorted(i["file_name"] for i in coco.dataset["images"]) == sorted(SIZES)
    summary = json.loads((out / ".segany" / "last_run.json").read_text())
    assert {s["image"] for s in summary["skipped"]} == {"broken.png", "empty.jpg"}


@pytest.mark.parametrize(
    "args, message",
    [
        ((), "exactly one of --prompts FILE and --everything"),
        (("--everything", "--prompts", "p.jsonl"), "exactly one of"),
        (("--everything", "--format", "coco,voc"), "--format takes"),
        (("--prompts", "p.jsonl", "--points-per-side", "4"), "apply to --everything only"),
        (("--everything", "--server", "localhost:1", "--model", "vit_b"), "--server uses the server's model"),
        (("--everything", "--model", "no-such-model"), "unknown model"),
        (("--everything", "--points-per-side", "0"), "points_per_side must be >= 1"),
        (("--everything", "--server", "localhost:1", "--device", "cuda"), "--server uses the server's device"),
        (("--everything", "--device", "gpu"), "device must be 'cpu', 'cuda' or 'cuda:N'"),
    ],
)
def test_usage_errors_exit_2(run_cli, image_dir, tmp_path, args, message):
    write_jsonl(tmp_path / "p.jsonl", [])
    args = tuple(str(tmp_path / a) if a == "p.jsonl" else a for a in args)
    code, err = run_cli("annotate", image_dir, "--out", tmp_path / "out", *args)
    assert code == 2 and message in err, err


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the answer on a machine without a GPU")
def test_a_missing_device_exits_3_with_the_reason(run_cli, image_dir, tiny_checkpoint, tmp_path):
    code, err = run_cli("annotate", image_dir, "--out", tmp_path / "out", "--everything", "--checkpoint",
                        tiny_checkpoint, "--device", "cuda")
    assert code == 3 and "device 'cuda' is not available here" in err, err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())  # nothing half-written


def test_argparse_errors_exit_2(run_cli, tmp_path):
    assert run_cli("annotate", tmp_path)[0] == 2  # --out missing
    both = ("--model", "a", "--checkpoint", "b")
    assert run_cli("annotate", tmp_path, "--out", tmp_path / "o", "--everything", *both)[0] == 2


def test_missing_input_and_changed_settings_exit_2(run_cli, image_dir, tiny_checkpoint, tmp_path):
    code, err = run_cli("annotate", tmp_path / "nope", "--out", tmp_path / "out", "--everything")
    assert code == 2 and "does not exist" in err
    out = tmp_path / "out"
    code, _ = run_cli("annotate", image_dir / "a.png", "--out", out, "--everything", *FAST_AMG,
                      "--checkpoint", tiny_checkpoint)
    assert code == 0
    code, err = run_cli("annotate", image_dir / "a.png", "--out", out, "--everything", *FAST_AMG,
                        "--checkpoint", tiny_checkpoint, "--format", "coco,png")
    assert code == 2 and "other settings" in err
