"""TinyViT (MobileSAM vit_t) encoder: checkpoint keys, SDPA parity, bias freshness, oracle parity."""

from __future__ import annotations

import ast

import pytest
import torch

from segany.modeling.tiny_vit import TinyViT, WindowAttention
from tests.conftest import REFERENCE

KEYS_FILE = REFERENCE / "keys_vit_t.txt"
# The released checkpoint carries an unused ImageNet classifier; the loader drops it on purpose.
CLASSIFIER_PREFIXES = ("norm_head.", "head.")
SDPA_ATOL = 1e-4  # fp32: SDPA and the plain path differ only in summation order
ORACLE_ATOL = 1e-4  # fp32, same weights and input


def _randomize(model: torch.nn.Module, seed: int) -> None:
    """Overwrite every float tensor of the state_dict (BN running stats and bias tables included) in place.

    Default init leaves attention_biases at zero and BN at identity, which would hide index or bias bugs.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if not t.dtype.is_floating_point:
                continue
            if name.endswith("running_var") or (name.endswith("weight") and t.dim() == 1):
                new = torch.rand(t.shape, generator=gen) + 0.5  # positive scales, BN variances
            elif name.endswith("attention_biases"):
                new = torch.randn(t.shape, generator=gen)
            else:
                new = torch.randn(t.shape, generator=gen) * (0.05 if t.dim() > 1 else 0.1)
            t.copy_(new)


def _set_sdpa(model: torch.nn.Module, flag: bool) -> None:
    for module in model.modules():
        if isinstance(module, WindowAttention):
            module.use_sdpa = flag


def _random_encoder(seed: int) -> TinyViT:
    model = TinyViT()
    _randomize(model, seed)
    return model.eval()


@pytest.fixture(scope="module")
def encoder() -> TinyViT:
    return _random_encoder(seed=0)


def test_state_dict_matches_released_checkpoint_keys() -> None:
    expected = {}
    for line in KEYS_FILE.read_text().splitlines():
        key, shape, _dtype = line.split("\t")
        if not key.startswith("image_encoder."):
            continue
        key = key.removeprefix("image_encoder.")
        if not key.startswith(CLASSIFIER_PREFIXES):
            expected[key] = list(ast.literal_eval(shape))
    actual = {key: list(t.shape) for key, t in TinyViT().state_dict().items()}
    assert sorted(set(expected) - set(actual)) == [], "missing keys"
    assert sorted(set(actual) - set(expected)) == [], "extra persistent keys"
    assert actual == expected


def test_sdpa_matches_plain_attention(encoder: TinyViT) -> None:
    x = torch.randn(1, 3, 1024, 1024, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        _set_sdpa(encoder, False)
        plain = encoder(x)
        _set_sdpa(encoder, True)
        fast = encoder(x)
        _set_sdpa(encoder, False)
    assert plain.shape == (1, 256, 64, 64)
    assert (plain - fast).abs().max().item() <= SDPA_ATOL


@pytest.mark.parametrize("use_sdpa", [False, True])
def test_runs_under_cpu_bf16_autocast(encoder: TinyViT, use_sdpa: bool) -> None:
    # A 256x256 input is enough to exercise every dtype boundary (window padding included) cheaply.
    x = torch.randn(2, 3, 256, 256, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        reference = encoder(x)
        _set_sdpa(encoder, use_sdpa)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = encoder(x)
        _set_sdpa(encoder, False)
    assert low.shape == (2, 256, 16, 16)
    assert torch.isfinite(low).all()
    # bf16 keeps ~3 significant digits; outputs are LayerNorm-scaled to unit size.
    assert (low.float() - reference).abs().mean().item() < 0.05


def test_new_weights_take_effect_without_stale_biases() -> None:
    x = torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(3))
    model = _random_encoder(seed=10)
    with torch.no_grad():
        before = model(x)  # eval-mode forward first, where a bias cache would be filled

    # New weights that differ only in the bias tables: exactly the case MobileSAM's cached biases get wrong.
    new_state = {k: v.clone() for k, v in model.state_dict().items()}
    gen = torch.Generator().manual_seed(11)
    for key, value in new_state.items():
        if key.endswith("attention_biases"):
            value.copy_(torch.randn(value.shape, generator=gen))
    fresh = TinyViT().eval()
    fresh.load_state_dict(new_state)

    model.load_state_dict(new_state)
    with torch.no_grad():
        expected = fresh(x)
        without_refresh = model(x)
        model.refresh_attention_biases()
        after = model(x)
    assert (before - expected).abs().max().item() > 0.1, "bias tables should matter"
    assert torch.equal(after, expected)
    assert torch.equal(without_refresh, expected)


def test_meta_device_build_loads_with_assign() -> None:
    source = _random_encoder(seed=20)
    with torch.device("meta"):
        model = TinyViT()
    model.load_state_dict(source.state_dict(), assign=True)
    model.refresh_attention_biases()  # the non-persistent index buffers are not in the state_dict
    model.eval()
    x = torch.randn(1, 3, 128, 128, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert torch.equal(model(x), source(x))


def test_training_mode_uses_live_bias_table() -> None:
    model = _random_encoder(seed=30).train()
    x = torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(5))
    model(x).square().mean().backward()
    grads = [m.attention_biases.grad for m in model.modules() if isinstance(m, WindowAttention)]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)


@pytest.mark.oracle
def test_matches_mobile_sam_tiny_vit() -> None:
    pytest.importorskip("mobile_sam")
    from mobile_sam.modeling.tiny_vit_sam import TinyViT as OracleTinyViT

    # vit_t settings as in mobile_sam/build_sam.py (build_sam_vit_t).
    oracle = OracleTinyViT(
        img_size=1024,
        in_chans=3,
        num_classes=1000,
        embed_dims=[64, 128, 160, 320],
        depths=[2, 2, 6, 2],
        num_heads=[2, 4, 5, 10],
        window_sizes=[7, 7, 14, 7],
        mlp_ratio=4.0,
        drop_rate=0.0,
        drop_path_rate=0.0,
        use_checkpoint=False,
        mbconv_expand_ratio=4.0,
        local_conv_size=3,
        layer_lr_decay=0.8,
    )
    _randomize(oracle, seed=40)
    # The oracle caches its gathered biases (`ab`) in train(False); eval() after randomising refreshes them.
    oracle.eval()
    state = {k: v for k, v in oracle.state_dict().items() if not k.startswith(CLASSIFIER_PREFIXES)}
    model = TinyViT().eval()
    model.load_state_dict(state, strict=True)
    model.refresh_attention_biases()

    x = torch.randn(1, 3, 1024, 1024, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        expected = oracle(x)
        actual = model(x)
    assert actual.shape == expected.shape == (1, 256, 64, 64)
    assert (actual - expected).abs().max().item() <= ORACLE_ATOL
