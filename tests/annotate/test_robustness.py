"""What a batch run must not get wrong: another image under a finished name, prompts for another folder's image,
outputs that would overwrite each other, SIGTERM, malformed prompt files, thin objects in YOLO, option checks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segany.annotate.exporters import yolo_line, yolo_polygon_to_mask
from segany.annotate.sources import PromptSource, load_prompts
from segany.errors import InvalidInputError
from tests.annotate.conftest import write_images, write_jsonl
from tests.conftest import random_image

FAST_AMG = ("--points-per-side", "2", "--pred-iou-thresh", "0", "--stability-score-thresh", "0")
ROOT = Path(__file__).resolve().parents[2]


def _records(out: Path) -> dict[str, dict]:
    found = {}
    for path in (out / ".segany" / "records").glob("*.json"):
        record = json.loads(path.read_text())
        found[record["name"]] = record
    return found


def test_a_new_image_under_a_finished_name_is_labelled_anew(run_cli, tmp_path, tiny_checkpoint):
    images = tmp_path / "images"
    write_images(images, {"a.png": (48, 64), "b.png": (40, 40)})
    out = tmp_path / "out"
    args = ("annotate", images, "--out", out, "--checkpoint", tiny_checkpoint, "--everything", *FAST_AMG,
            "--format", "coco,png", "--no-progress")
    assert run_cli(*args)[0] == 0
    Image.fromarray(random_image(80, 100, seed=9)).save(images / "a.png")  # replaced: another size, new content
    code, err = run_cli(*args)
    assert code == 0 and "1 labelled now, 1 already done" in err, err
    record = _records(out)["a.png"]
    assert (record["height"], record["width"]) == (80, 100)
    coco = json.loads((out / "annotations.json").read_text())
    assert {(i["file_name"], i["height"], i["width"]) for i in coco["images"]} == {("a.png", 80, 100),
                                                                                    ("b.png", 40, 40)}
    assert Image.open(out / "masks" / "a.png").size == (100, 80)
    assert "0 labelled now, 2 already done" in run_cli(*args)[1]  # unchanged files stay done


def test_prompts_for_one_folder_are_not_given_to_a_same_named_image_in_another():
    source = PromptSource([], {"s1/x.png": ["box"], "y.png": ["click"], "data/s3/z.png": ["z"]})
    assert source.prompts_for("s1/x.png") == ["box"]
    assert source.prompts_for("s2/x.png") is None  # its folder contradicts the entry's
    assert source.prompts_for("deep/er/y.png") == ["click"]  # a bare name matches anywhere
    assert source.prompts_for("s3/z.png") == ["z"]  # the entry's path ends with the image's
    assert source.prompts_for("s4/z.png") is None
    assert source.shared_keys(["a/y.png", "b/y.png", "s1/x.png"]) == {"y.png": ["a/y.png", "b/y.png"]}


def test_yolo_labels_match_images_with_dots_in_their_names():
    from segany.annotate.sources import YoloSource

    source = YoloSource([], {"train/frame.0001": ["f"], "cat_jpg.rf.3f2a": ["c"]})
    assert source.prompts_for("train/frame.0001.jpg") == ["f"]
    assert source.prompts_for("images/train/frame.0001.jpg") == ["f"]  # another root above the same folders
    assert source.prompts_for("val/frame.0001.jpg") is None  # another folder
    assert source.prompts_for("cat_jpg.rf.3f2a.jpg") == ["c"]


def test_an_ambiguous_prompt_entry_is_refused(run_cli, tmp_path, tiny_checkpoint):
    images = tmp_path / "images"
    write_images(images, {"s1/x.png": (32, 32), "s2/x.png": (32, 32)})
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"image": "x.png", "box": [2, 2, 20, 20]}])
    code, err = run_cli("annotate", images, "--out", tmp_path / "out", "--prompts", prompts, "--checkpoint",
                        tiny_checkpoint, "--no-progress")
    assert code == 2 and "'x.png' would be taken by 2 images (s1/x.png, s2/x.png)" in err


def test_images_that_would_share_output_files_are_refused(run_cli, tmp_path, tiny_checkpoint):
    images = tmp_path / "images"
    write_images(images, {"a.png": (32, 40), "a.jpg": (40, 48)})
    base = ("annotate", images, "--checkpoint", tiny_checkpoint, "--everything", *FAST_AMG, "--no-progress")
    code, err = run_cli(*base, "--out", tmp_path / "o1", "--format", "coco,yolo")
    assert code == 2 and "a.jpg and a.png would write the same per-image outputs (a.*)" in err
    assert run_cli(*base, "--out", tmp_path / "o2", "--format", "coco")[0] == 0  # no per-image files: fine


def test_sigterm_ends_a_run_like_ctrl_c(tmp_path, tiny_checkpoint):
    images = tmp_path / "images"
    write_images(images, {f"img{i:02d}.png": (40, 48) for i in range(10)})
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "segany", "annotate", str(images), "--out", str(out), "--everything", *FAST_AMG,
           "--checkpoint", str(tiny_checkpoint), "--threads", "1", "--workers", "1", "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    records = out / ".segany" / "records"
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and proc.poll() is None and len(list(records.glob("*.json"))) < 2:
            time.sleep(0.02)
        assert proc.poll() is None, "the run finished before the signal"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130 and "interrupted" in err, err
    finished = len(list(records.glob("*.json")))
    coco = json.loads((out / "annotations.json").read_text())  # rebuilt on the way out
    assert len(coco["images"]) == finished >= 2
    assert (out / ".segany" / "last_run.json").is_file()


@pytest.mark.parametrize("content, message", [
    ({"images": [{"id": 1}], "annotations": []}, "image 0: needs an id and a file_name"),
    ({"images": [{"id": 1, "file_name": "a.png"}], "annotations": [{"image_id": 1, "bbox": [1, 1, 2, 2]}],
      "categories": [{"name": "car"}]}, "not a prompt file of the expected layout (KeyError"),
    ({"images": [], "annotations": [{"file_name": "a.png", "bbox": [1, 1, 2, 2], "category_id": "car"}]},
     "not a prompt file of the expected layout (ValueError"),
    ({"images": [], "annotations": [[1, 2]]}, "not a prompt file of the expected layout (AttributeError"),
])
def test_a_malformed_coco_prompt_file_is_one_line(tmp_path, content, message):
    path = tmp_path / "p.json"
    path.write_text(json.dumps(content))
    with pytest.raises(InvalidInputError, match=message.replace("(", r"\(")):
        load_prompts(path)


def test_a_prompt_file_that_is_not_utf8_or_hides_its_prompts_is_refused(tmp_path, caplog):
    latin = tmp_path / "p.jsonl"
    latin.write_bytes('{"image": "caf\xe9.png", "box": [1, 1, 5, 5]}\n'.encode("latin-1"))
    with pytest.raises(InvalidInputError, match="not UTF-8 text"):
        load_prompts(latin)
    beside = write_jsonl(tmp_path / "b.jsonl", [{"image": "a.png", "prompts": [], "box": [1, 1, 5, 5]}])
    with pytest.raises(InvalidInputError, match='box beside "prompts" would be ignored'):
        load_prompts(beside)
    misspelt = write_jsonl(tmp_path / "m.jsonl", [{"image": "a.png", "bbox": [1, 1, 5, 5]}])
    load_prompts(misspelt)
    assert "ignoring 'bbox'" in caplog.text


def test_an_image_listed_with_no_prompts_is_counted(run_cli, tmp_path, tiny_checkpoint):
    images = tmp_path / "images"
    write_images(images, {"a.png": (32, 32), "b.png": (32, 32), "c.png": (32, 32)})
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"image": "a.png", "box": [2, 2, 20, 20]},
                                                 {"image": "b.png", "prompts": []}])
    code, err = run_cli("annotate", images, "--out", tmp_path / "out", "--prompts", prompts, "--checkpoint",
                        tiny_checkpoint, "--no-progress")
    assert code == 0 and "2 images had no prompts" in err


@pytest.mark.parametrize("pixels", [
    [(5, 5)],  # one pixel
    [(5, 5), (5, 6)],  # two
    [(3, x) for x in range(2, 12)],  # a one-pixel horizontal line
    [(y, 4) for y in range(1, 11)],  # vertical
    [(i, i) for i in range(10)],  # diagonal
])
def test_every_object_with_a_pixel_keeps_its_yolo_line(pixels):
    mask = np.zeros((16, 20), bool)
    for y, x in pixels:
        mask[y, x] = True
    line = yolo_line(3, mask)
    assert line.startswith("3 ") and len(line.split()) >= 1 + 2 * 3
    values = np.array(line.split()[1:], float)
    assert (values >= 0).all() and (values <= 1).all()
    assert yolo_polygon_to_mask(line, mask.shape)[mask].all()  # covers the object
    assert yolo_line(0, np.zeros((4, 4), bool)) == ""


def test_option_checks(run_cli, tmp_path, tiny_checkpoint):
    images = tmp_path / "images"
    write_images(images, {"a.png": (32, 32)})
    base = ("annotate", images, "--checkpoint", tiny_checkpoint, "--everything", *FAST_AMG, "--no-progress")
    (tmp_path / "a_file").write_text("")
    for extra, message in [
        (("--out", tmp_path / "a_file"), "is a file; give a folder"),
        (("--out", tmp_path / "o", "--crop-overlap-ratio", "5"), "crop_overlap_ratio must be in [0, 1)"),
        (("--out", tmp_path / "o", "--stability-score-offset", "-1"), "stability_score_offset must be >= 0"),
        (("--out", tmp_path / "o", "--checkpoint-every", "-5"), "--checkpoint-every must be"),
    ]:
        code, err = run_cli(*base, *extra)
        assert code == 2 and message in err, (extra, err)
        assert "Traceback" not in err


def test_listing_the_formats_in_another_order_resumes(run_cli, tmp_path, tiny_checkpoint):
    images = tmp_path / "images"
    write_images(images, {"a.png": (32, 32)})
    base = ("annotate", images, "--out", tmp_path / "o", "--checkpoint", tiny_checkpoint, "--everything", *FAST_AMG,
            "--no-progress")
    assert run_cli(*base, "--format", "coco,png")[0] == 0
    code, err = run_cli(*base, "--format", "png,coco")
    assert code == 0 and "0 labelled now, 1 already done" in err


def test_one_object_per_line_warns_about_nothing_known(tmp_path, caplog):
    lines = [{"image": "a.png", "box": [1, 1, 5, 5], "class": "car"}, {"image": "a.png", "points": [[2, 2]]}]
    source = load_prompts(write_jsonl(tmp_path / "p.jsonl", lines))
    assert len(source.prompts_for("a.png")) == 2
    assert "ignoring" not in caplog.text  # "image" belongs to the line, not to an unknown key of the object
    load_prompts(write_jsonl(tmp_path / "q.jsonl", [{"image": "a.png", "box": [1, 1, 5, 5], "bbox": [0, 0, 1, 1]}]))
    assert caplog.text.count("ignoring 'bbox'") == 1


def test_crop_layers_that_would_get_no_points_are_refused():
    from segany.everything import EverythingSettings

    with pytest.raises(InvalidInputError, match="leaves no point in the last layer"):
        EverythingSettings(points_per_side=2, crop_n_layers=2, crop_n_points_downscale_factor=2)
    EverythingSettings(points_per_side=4, crop_n_layers=2, crop_n_points_downscale_factor=2)  # 1 point: fine


def test_a_wrong_token_is_a_usage_exit_code():
    from segany.cli.main import exit_code_for
    from segany.errors import UnauthenticatedError

    assert exit_code_for(UnauthenticatedError("no token")) == 2
