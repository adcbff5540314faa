"""The zoo table, safe strict loading, variant detection, fingerprints."""

from __future__ import annotations

import pickle

import pytest
import torch

import segany
from segany.errors import CheckpointError, UnknownModelError
from segany.models import VARIANTS, _expected_shapes, detect_variant, fingerprint_state_dict, load_checkpoint
from tests.conftest import REFERENCE


def _reference_keys(name: str) -> dict[str, tuple[int, ...]]:
    path = REFERENCE / name
    keys = {}
    for line in path.read_text().splitlines():
        key, shape, _ = line.split("\t")
        keys[key] = tuple(int(s) for s in shape.strip("[]").split(",") if s.strip())
    return keys


def test_vit_b_keys_and_shapes_match_release():
    expected = _reference_keys("keys_vit_b.txt")
    assert _expected_shapes("vit_b") == expected


def test_vit_t_keys_match_release_minus_unused_head():
    expected = {
        k: v
        for k, v in _reference_keys("keys_vit_t.txt").items()
        if not k.startswith(("image_encoder.head.", "image_encoder.norm_head."))
    }
    assert _expected_shapes("vit_t") == expected


@pytest.mark.parametrize("variant,params", [("vit_b", 93_735_472), ("vit_l", 312_342_832), ("vit_h", 641_090_608)])
def test_param_counts(variant, params):
    shapes = _expected_shapes(variant)
    count = sum(torch.Size(s).numel() for k, s in shapes.items())
    assert abs(count - params) / params < 0.001


def test_round_trip_and_fingerprint(tmp_path, tiny_model):
    path = tmp_path / "tiny.pth"
    torch.save(tiny_model.state_dict(), path)
    loaded = segany.load_model(path)
    assert loaded.variant == "test-tiny"
    assert loaded.fingerprint == tiny_model.fingerprint
    assert not any(t.is_meta for t in list(loaded.parameters()) + list(loaded.buffers()))
    # fp16 storage (as the shipped weights) loads into fp32 and keeps the variant.
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in tiny_model.state_dict().items()}, path)
    half = segany.load_model(path)
    assert next(half.parameters()).dtype == torch.float32
    assert half.fingerprint != tiny_model.fingerprint  # the weights really differ (rounded)


def test_wrapped_state_dict_is_accepted(tmp_path, tiny_model):
    path = tmp_path / "wrapped.pth"
    torch.save({"model": tiny_model.state_dict()}, path)
    assert segany.load_model(path).variant == "test-tiny"


def test_training_checkpoints_and_ddp_prefixes_load(tmp_path, tiny_model):
    """What `segany train` writes (model + optimizer + step) and what a DistributedDataParallel run saves."""
    sd = tiny_model.state_dict()
    layouts = {
        "train": {"model": sd, "optimizer": {"state": {}, "param_groups": []}, "step": 7},
        "lightning": {"state_dict": sd, "epoch": 3},
        "ddp": {"module." + k: v for k, v in sd.items()},
    }
    for name, obj in layouts.items():
        path = tmp_path / f"{name}.pth"
        torch.save(obj, path)
        model = segany.load_model(path)
        assert model.variant == "test-tiny" and model.fingerprint == tiny_model.fingerprint, name


def test_tensors_of_the_wrong_dtype_kind_and_odd_keys_are_checkpoint_errors(tmp_path, tiny_model):
    from segany.errors import CheckpointError

    sd = dict(tiny_model.state_dict())
    key = "mask_decoder.iou_token.weight"
    for _name, broken in {
        "int": {**sd, key: sd[key].to(torch.int32)},
        "complex": {**sd, key: sd[key].to(torch.complex64)},
        "int keys": {**sd, 5: torch.zeros(1)},
    }.items():
        path = tmp_path / "bad.pth"
        torch.save(broken, path)
        with pytest.raises(CheckpointError, match="wrong kind of dtype|not strings"):
            segany.load_model(path)


def test_missing_and_unexpected_keys_are_named(tmp_path, tiny_model):
    sd = dict(tiny_model.state_dict())
    del sd["mask_decoder.iou_token.weight"]
    sd["mask_decoder.extra.weight"] = torch.zeros(3)
    path = tmp_path / "bad.pth"
    torch.save(sd, path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path, variant="test-tiny")
    msg = str(info.value)
    assert "mask_decoder.iou_token.weight" in msg and "mask_decoder.extra.weight" in msg and "test-tiny" in msg
    with pytest.raises(CheckpointError, match="closest variant is 'test-tiny'"):
        segany.load_model(path)


def test_wrong_variant_is_refused_with_shapes(tmp_path, tiny_model):
    path = tmp_path / "tiny.pth"
    torch.save(tiny_model.state_dict(), path)
    with pytest.raises(CheckpointError, match="does not fit variant 'vit_b'"):
        load_checkpoint(path, variant="vit_b")


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_pickled_code_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"x": _Evil()}, f)
    with pytest.raises(CheckpointError, match="could not be read"):
        segany.load_model(path)


def test_truncated_file_is_a_checkpoint_error(tmp_path, tiny_model):
    path = tmp_path / "cut.pth"
    torch.save(tiny_model.state_dict(), path)
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError):
        segany.load_model(path)


def test_unknown_name():
    with pytest.raises(UnknownModelError, match="vit_b"):
        segany.load_model("vit_q")


def test_detect_every_variant_from_meta_shapes():
    for name in VARIANTS:
        if name == "segany-lite" and not VARIANTS[name].shipped.is_file():
            continue
        shapes = _expected_shapes(name)
        fake = {k: torch.empty(s, device="meta") for k, s in shapes.items()}
        assert detect_variant(fake) == name


def test_fingerprint_is_format_independent(tiny_model):
    sd = tiny_model.state_dict()
    assert fingerprint_state_dict("x", sd) == fingerprint_state_dict("x", {k: v.clone() for k, v in sd.items()})
    changed = {k: v.clone() for k, v in sd.items()}
    changed["mask_decoder.iou_token.weight"][0, 0] += 1
    assert fingerprint_state_dict("x", sd) != fingerprint_state_dict("x", changed)


def test_to_device_moves_or_says_why_not():
    import torch

    from segany.errors import UnavailableError
    from segany.models import build_model, to_device

    model = build_model("test-tiny", seed=0)
    assert to_device(model, "cpu") is model and next(model.parameters()).device.type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(UnavailableError, match="'cuda:0' is not available here"):
            to_device(model, "cuda:0")
    with pytest.raises(UnavailableError, match="not supported"):
        to_device(model, "meta")
    assert model.fingerprint  # moving keeps the attributes the loader set


def test_to_device_refuses_names_torch_does_not_parse():
    from segany.errors import InvalidInputError
    from segany.models import build_model, to_device

    for name in ("gpu", "cuda:x", "cuda:-1"):
        with pytest.raises(InvalidInputError, match="device must be"):
            to_device(build_model("test-tiny", seed=0), name)
