"""Two training steps on tiny inputs run end to end and write a loadable fp16 state_dict."""

from __future__ import annotations

from pathlib import Path

import torch

from segany.training import train


def test_two_steps_write_loadable_weights(tmp_path: Path) -> None:
    out = tmp_path / "run"
    rc = train.main(
        [
            "--out", str(out), "--steps", "2", "--minutes", "0", "--sizes", "128", "--ref-size", "128",
            "--hires-frac", "0",
            "--batch", "1", "--prompts", "2", "--rounds", "2", "--workers", "0", "--warmup", "1",
            "--log-every", "1",
        ]
    )
    assert rc == 0
    state = torch.load(out / "segany-lite.pt", map_location="cpu", weights_only=True)
    prefixes = {k.split(".")[0] for k in state}
    assert prefixes == {"image_encoder", "prompt_encoder", "mask_decoder"}
    assert all(v.dtype == torch.float16 for v in state.values() if v.is_floating_point())
    model = train.build_lite_sam()
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()}, strict=True)


def test_init_starts_from_given_weights(tmp_path: Path) -> None:
    """--init loads fp16 weights (the shipped format); with zero steps they come out unchanged."""
    model = train.build_lite_sam()
    init = tmp_path / "init.pt"
    train.export_weights(model, init)
    out = tmp_path / "run"
    rc = train.main(["--out", str(out), "--steps", "1", "--minutes", "0", "--init", str(init), "--lr", "0",
                     "--sizes", "128", "--ref-size", "128", "--hires-frac", "0", "--batch", "1", "--prompts", "2",
                     "--rounds", "1", "--workers", "0", "--warmup", "1"])
    assert rc == 0
    before = torch.load(init, map_location="cpu", weights_only=True)
    after = torch.load(out / "segany-lite.pt", map_location="cpu", weights_only=True)
    # lr 0: every tensor unchanged (the encoder's norms are per-image and keep no running statistics)
    assert before.keys() == after.keys()
    moved = [k for k in before if not torch.equal(before[k], after[k])]
    assert not moved
