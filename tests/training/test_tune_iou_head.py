"""The IoU-head stage: features are the head's real inputs, fitting improves the ranking, only the head changes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from segany.modeling.common import MLP
from segany.training import tune_iou_head
from segany.training.train import export_weights


@pytest.fixture
def tiny_weights(tiny_model, tmp_path: Path) -> Path:
    path = tmp_path / "tiny.pt"
    export_weights(tiny_model, path)
    return path


def test_recorder_captures_the_heads_input_and_all_mask_tokens(tiny_weights: Path) -> None:
    from segany.models import load_model
    from segany.predictor import Predictor
    from segany.training.synthetic import TRAIN_SETTINGS, generate_scene

    predictor = Predictor(load_model(tiny_weights))
    recorder = tune_iou_head._Recorder(predictor.mask_decoder)
    scene = generate_scene(TRAIN_SETTINGS, 3, 0)
    emb = predictor.encode(scene.image)
    res = predictor.predict(emb, points=np.array([[40.0, 60.0]]), labels=np.array([1]), multimask=True)
    head = predictor.model.mask_decoder.iou_prediction_head
    with torch.no_grad():
        scores = head(recorder.tokens)
    assert recorder.tokens.shape == (1, head.layers[0].in_features)
    np.testing.assert_allclose(scores[0, 1:].numpy(), res.scores, rtol=1e-5, atol=1e-6)
    assert recorder.logits.shape[:2] == (1, 4)
    np.testing.assert_allclose(recorder.logits[0, 1:].numpy(), res.low_res_logits, rtol=1e-5, atol=1e-5)


def test_collect_records_every_call_with_true_ious(tiny_weights: Path) -> None:
    tokens, targets = tune_iou_head.collect(str(tiny_weights), scenes=2, seed=1, per_scene=2, log_every=0)
    # per object: a click, a box, and up to one corrective call after each
    assert 2 * 2 * 2 <= len(tokens) <= 2 * 2 * 4
    assert tokens.dtype == np.float32 and targets.shape == (len(tokens), 4)
    assert np.all((targets >= 0) & (targets <= 1))
    assert np.isfinite(tokens).all()


def test_fit_learns_the_ranking_of_synthetic_features() -> None:
    rng = np.random.default_rng(0)
    tokens = rng.standard_normal((3000, 32)).astype(np.float32)
    mix = rng.standard_normal((32, 4)).astype(np.float32) / 4
    targets = (1 / (1 + np.exp(-(tokens @ mix)))).astype(np.float32)  # a learnable IoU per token
    torch.manual_seed(0)
    head = MLP(32, 64, 4, 3)
    tuned, stats = tune_iou_head.fit(head, tokens, targets, epochs=20, lr=3e-3, batch=128)
    assert stats["after_mse"] < 0.1 * stats["before_mse"]
    assert stats["after_corr"] > 0.95
    assert stats["after_select"] > stats["before_select"]
    assert stats["after_select"] > 0.98 * stats["oracle_select"]
    # the original head is left as it was
    assert not torch.equal(tuned.layers[0].weight, head.layers[0].weight)


def test_main_changes_only_the_iou_head_and_reuses_its_cache(tiny_weights: Path, tmp_path: Path, capsys) -> None:
    out, export = tmp_path / "run", tmp_path / "tuned.pt"
    args = ["--weights", str(tiny_weights), "--scenes", "2", "--per-scene", "1", "--epochs", "2", "--out", str(out)]
    assert tune_iou_head.main([*args, "--export", str(export)]) == 0
    before = torch.load(tiny_weights, map_location="cpu", weights_only=True)
    after = torch.load(export, map_location="cpu", weights_only=True)
    assert before.keys() == after.keys()
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert moved and all(k.startswith("mask_decoder.iou_prediction_head.") for k in moved)
    assert tune_iou_head.main(args) == 0
    assert "features from" in capsys.readouterr().out


def test_segany_cli_hands_tune_iou_head_its_arguments(capsys) -> None:
    from segany.cli.main import build_parser, main

    with pytest.raises(SystemExit) as exit_info:
        main(["tune-iou-head", "--help"])
    assert exit_info.value.code == 0
    assert "--scenes" in capsys.readouterr().out  # the module's own parser answered
    assert "tune-iou-head" in build_parser().format_help()
