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


def test_bf16_autocast_matches_fp32() -> None:
    # On the shipped weights and a generated scene: per-image norms amplify bf16 rounding in channels whose random
    # weights make them nearly constant, so random weights would test the wrong thing.
    from segany.models import load_model
    from segany.training.synthetic import EVAL_SETTINGS, generate_scene

    encoder = load_model().image_encoder.eval()
    scene = generate_scene(EVAL_SETTINGS, 5, 0)
    x = torch.from_numpy(scene.image[:256, :256].astype("float32")).permute(2, 0, 1)[None]
    x = (x - x.mean()) / x.std()
    with torch.no_grad():
        ref = encoder(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = encoder(x)
    assert low.shape == ref.shape
    # The neck ends in a LayerNorm, so outputs are O(1); bf16 keeps ~3 significant digits.
    assert (low.float() - ref).abs().mean() < 0.02


def test_backward_reaches_every_parameter() -> None:
    torch.manual_seed(0)
    enc = LiteEncoder().train()
    enc(torch.randn(2, 3, 128, 128)).square().mean().backward()
    missing = [n for n, p in enc.named_parameters() if p.grad is None]
    assert not missing


def test_embedding_is_per_image_and_the_same_in_train_and_eval_mode(encoder: LiteEncoder) -> None:
    # The shipped weights were trained with per-image statistics; an encoder whose eval mode normalises with
    # population statistics (BatchNorm's running averages) lost 0.14 held-out box mIoU. Eval must equal train mode,
    # and an image's embedding must not depend on the other images of its batch.
    torch.manual_seed(1)
    a, b = torch.randn(1, 3, 128, 128), 3 * torch.randn(1, 3, 128, 128) + 1
    with torch.no_grad():
        alone = encoder(a)
        batched = encoder(torch.cat([a, b]))[:1]
        encoder.train()
        try:
            trained = encoder(a)
        finally:
            encoder.eval()
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(trained, alone, atol=1e-5, rtol=1e-5)
    assert not [m for m in encoder.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
