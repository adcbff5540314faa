"""``segany annotate --server``: the same labels from a running server as from the model in process."""

from __future__ import annotations

import numpy as np
import pytest
from pycocotools.coco import COCO

from tests.annotate.conftest import write_jsonl

pytest.importorskip("grpc")

#: Grid clicks travel as float32 over the API (float64 in process), so logits may differ in the last bits: a mask
#: may differ at pixels that sit on the threshold. Per-mask IoU must stay at least this.
SERVER_MASK_IOU = 0.99


@pytest.fixture(scope="module")
def server(tiny_checkpoint):
    import segany
    from tests.service.conftest import ServerThread

    srv = ServerThread(segany.load_model(tiny_checkpoint), precision="exact").start()
    yield srv
    srv.stop()


def masks_of(out):
    coco = COCO(str(out / "annotations.json"))
    return [(a["image_id"], a["category_id"], coco.annToMask(a).astype(bool)) for a in coco.dataset["annotations"]]


def test_prompts_through_the_server_match_in_process(run_cli, server, image_dir, tiny_checkpoint, tmp_path):
    prompts = write_jsonl(tmp_path / "p.jsonl", [
        {"image": "a.png", "prompts": [{"box": [5, 5, 40, 30], "class": "car"}, {"points": [[10, 12]]}]},
        {"image": "sub/b.jpg", "box": [2, 3, 30, 50], "class": "car"},
    ])
    local, remote = tmp_path / "local", tmp_path / "remote"
    code, err = run_cli("annotate", image_dir, "--out", local, "--prompts", prompts, "--checkpoint", tiny_checkpoint,
                        "--precision", "exact")
    assert code == 0, err
    code, err = run_cli("annotate", image_dir, "--out", remote, "--prompts", prompts, "--server", server.address)
    assert code == 0, err
    want, got = masks_of(local), masks_of(remote)
    assert [(i, c) for i, c, _ in got] == [(i, c) for i, c, _ in want]
    for (_, _, g), (_, _, w) in zip(got, want):
        np.testing.assert_array_equal(g, w)


def test_everything_through_the_server(run_cli, server, image_dir, tiny_checkpoint, tmp_path):
    amg = ("--everything", "--points-per-side", "2", "--pred-iou-thresh", "0", "--stability-score-thresh", "0")
    local, remote = tmp_path / "local", tmp_path / "remote"
    code, err = run_cli("annotate", image_dir / "a.png", "--out", local, *amg, "--checkpoint", tiny_checkpoint,
                        "--precision", "exact")
    assert code == 0, err
    code, err = run_cli("annotate", image_dir / "a.png", "--out", remote, *amg, "--server", server.address)
    assert code == 0, err
    want, got = masks_of(local), masks_of(remote)
    assert len(got) == len(want) > 0
    for (_, _, g), (_, _, w) in zip(got, want):
        assert (g & w).sum() / max(1, (g | w).sum()) >= SERVER_MASK_IOU


@pytest.mark.slow  # waits out the 30 s readiness timeout
def test_unreachable_server_exits_3(run_cli, image_dir, tmp_path):
    code, err = run_cli("annotate", image_dir, "--out", tmp_path / "o", "--everything", "--server", "127.0.0.1:1")
    assert code == 3 and "not reachable" in err
