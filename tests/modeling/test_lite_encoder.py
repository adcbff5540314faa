"""LiteEncoder: SAM's embedding contract, size budget, bf16 autocast."""

from __future__ import annotations

import pytest
import torch

from segany.modeling.lite_encoder import LiteEncoder


@pytest.fixture(scope="module")
def encoder() -> LiteEncoder:
    torch.manual_seed(0)
    return LiteEncoder().eval()


@pytest.mark.parametrize("side", [128, 256])
def test_output_shape_is_sam_embedding(encoder: LiteEncoder, side: int) -> None:
    with torch.no_grad():
        y = encoder(torch.randn(2, 3, side, side))
    assert y.shape == (2, 256, side // 16, side // 16)
    assert torch.isfinite(y).all()


def test_param_budget(encoder: LiteEncoder) -> None:
    n = sum(p.numel() for p in encoder.parameters())
    assert n <= 4_000_000, n


def test_bf16_autocast_matches_fp32(encoder: LiteEncoder) -> None:
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        ref = encoder(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = encoder(x)
    assert low.shape == ref.shape
    # The neck ends in a LayerNorm, so outputs are O(1); bf16 keeps ~3 significant digits.
    assert (low.float() - ref).abs().mean() < 0.05


def test_backward_reaches_every_parameter() -> None:
    torch.manual_seed(0)
    enc = LiteEncoder().train()
    enc(torch.randn(2, 3, 128, 128)).square().mean().backward()
    missing = [n for n, p in enc.named_parameters() if p.grad is None]
    assert not missing
