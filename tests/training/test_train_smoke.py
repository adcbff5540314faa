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
