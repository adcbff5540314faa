"""The model zoo: variants as data, builders, safe checkpoint loading, fingerprints.

Every variant shares SAM's prompt encoder and mask decoder; they differ in the image encoder. A released checkpoint
(SAM vit_b/l/h, MobileSAM vit_t) loads unchanged. Loading never unpickles code: ``torch.load(weights_only=True)``
or safetensors. The model is built on the meta device and the checkpoint tensors are assigned (memory-mapped where
the format allows), so loading needs about one checkpoint's worth of memory, not two.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from segany.errors import CheckpointError, InvalidInputError, UnavailableError, UnknownModelError
from segany.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

#: Name of the model that ships inside the package and is used when no model is named.
DEFAULT_MODEL = "segany-lite"
WEIGHTS_DIR = Path(__file__).parent / "weights"


@dataclass(frozen=True)
class Variant:
    """One row of the zoo.

    Attributes:
        name: what users type (``--model vit_b``).
        build_encoder: returns a freshly built image encoder (called on the meta device when loading).
        description: one line for ``segany models``.
        filename: the released checkpoint's file name (zoo downloads keep it).
        url: where the released checkpoint is published, or None.
        md5: the release's MD5, or None.
        size_bytes: approximate size of the checkpoint file (for listings; verification uses ``md5``).
        shipped: path of weights inside the package, or None.
        drop_prefixes: checkpoint keys dropped on purpose before strict loading (unused heads in a release).
    """

    name: str
    build_encoder: Callable[[], nn.Module]
    description: str
    filename: str | None = None
    url: str | None = None
    md5: str | None = None
    size_bytes: int | None = None
    shipped: Path | None = None
    drop_prefixes: tuple[str, ...] = field(default_factory=tuple)


def _vit(embed_dim: int, depth: int, num_heads: int, global_attn: tuple[int, ...]) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        return ImageEncoderViT(
            img_size=1024,
            patch_size=16,
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            global_attn_indexes=global_attn,
            window_size=14,
            out_chans=256,
        )

    return build


def _tiny_vit() -> nn.Module:
    from segany.modeling.tiny_vit import TinyViT

    return TinyViT()


def _lite() -> nn.Module:
    from segany.modeling.lite_encoder import LiteEncoder

    return LiteEncoder()


_RELEASES = "https://dl.fbaipublicfiles.com/segment_anything/"

VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in [
        Variant(
            "segany-lite",
            _lite,
            "segany's own small model trained on synthetic scenes (ships with the package)",
            filename="segany-lite.pt",
            shipped=WEIGHTS_DIR / "segany-lite.pt",
        ),
        Variant(
            "vit_b",
            _vit(768, 12, 12, (2, 5, 8, 11)),
            "SAM ViT-B (93.7M params)",
            filename="sam_vit_b_01ec64.pth",
            url=_RELEASES + "sam_vit_b_01ec64.pth",
            md5="01ec64d29a2fca3f0661936605ae66f8",
            size_bytes=375_042_383,
        ),
        Variant(
            "vit_l",
            _vit(1024, 24, 16, (5, 11, 17, 23)),
            "SAM ViT-L (312M params)",
            filename="sam_vit_l_0b3195.pth",
            url=_RELEASES + "sam_vit_l_0b3195.pth",
            md5="0b3195507c641ddb6910d2bb5adee89c",
            size_bytes=1_249_524_607,
        ),
        Variant(
            "vit_h",
            _vit(1280, 32, 16, (7, 15, 23, 31)),
            "SAM ViT-H (641M params)",
            filename="sam_vit_h_4b8939.pth",
            url=_RELEASES + "sam_vit_h_4b8939.pth",
            md5="4b8939a88964f0f4ff5f5b2642c598a6",
            size_bytes=2_564_550_879,
        ),
        Variant(
            "vit_t",
            _tiny_vit,
            "MobileSAM TinyViT-5M (10.1M params)",
            filename="mobile_sam.pt",
            url="https://github.com/ChaoningZhang/MobileSAM/raw/master/weights/mobile_sam.pt",
            md5=None,
            size_bytes=40_728_226,
            drop_prefixes=("image_encoder.norm_head.", "image_encoder.head."),
        ),
        Variant(
            "test-tiny",
            lambda: ImageEncoderViT(
                img_size=1024,
                patch_size=16,
                embed_dim=64,
                depth=2,
                num_heads=2,
                global_attn_indexes=(1,),
                window_size=14,
                out_chans=256,
            ),
            "tiny random ViT for tests (not a real model)",
        ),
    ]
}


def get_variant(name: str) -> Variant:
    try:
        return VARIANTS[name]
    except KeyError:
        raise UnknownModelError(
            f"unknown model {name!r}: expected one of {', '.join(VARIANTS)} or a path to a checkpoint file"
        ) from None


def assemble(image_encoder: nn.Module) -> Sam:
    """Wrap an image encoder with SAM's standard prompt encoder and mask decoder (all constants live here)."""
    prompt_embed_dim, grid, image_size = 256, 64, 1024
    return Sam(
        image_encoder=image_encoder,
        prompt_encoder=PromptEncoder(
            embed_dim=prompt_embed_dim,
            image_embedding_size=(grid, grid),
            input_image_size=(image_size, image_size),
            mask_in_chans=16,
        ),
        mask_decoder=MaskDecoder(
            transformer_dim=prompt_embed_dim,
            transformer=TwoWayTransformer(depth=2, embedding_dim=prompt_embed_dim, mlp_dim=2048, num_heads=8),
            num_multimask_outputs=3,
            iou_head_depth=3,
            iou_head_hidden_dim=256,
        ),
        image_size=image_size,
    )


def build_model(variant: str, seed: int | None = None) -> Sam:
    """A randomly initialised model of ``variant`` in eval mode (for tests, benchmarks and training)."""
    if seed is not None:
        torch.manual_seed(seed)
    model = assemble(get_variant(variant).build_encoder())
    model.variant = variant
    model.fingerprint = fingerprint_state_dict(variant, model.state_dict())
    return model.eval()


# ----------------------------------------------------------------------------------------------------------------
# Checkpoint reading


def read_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state_dict safely: safetensors, or ``torch.load(weights_only=True, mmap=True)``.

    Accepts a plain state_dict, one wrapped as ``{"model": ...}`` / ``{"state_dict": ...}`` (other entries of a
    training checkpoint, e.g. ``optimizer``, ignored), and keys prefixed ``module.`` (DistributedDataParallel).
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"checkpoint {str(path)!r} is a folder; give the checkpoint file in it")
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {str(path)!r} does not exist")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint file {str(path)!r} is empty")
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise CheckpointError(
                "reading .safetensors needs the 'safetensors' package: pip install safetensors"
            ) from None
        try:
            return dict(load_file(str(path), device="cpu"))
        except Exception as exc:  # noqa: BLE001 - any parse failure is a bad file for the user
            raise CheckpointError(f"{path} is not a readable safetensors file: {exc}") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as exc:
        if "zip" not in str(exc).lower() and "mmap" not in str(exc).lower():
            raise CheckpointError(f"{path} could not be read as a torch checkpoint: {exc}") from None
        try:  # legacy (non-zip) files cannot be memory-mapped
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc2:  # noqa: BLE001
            raise CheckpointError(f"{path} could not be read as a torch checkpoint: {exc2}") from None
    except Exception as exc:  # noqa: BLE001 - pickle errors, truncation, weights_only refusals
        raise CheckpointError(
            f"{path} could not be read as a torch checkpoint (only plain tensors are accepted, no pickled code): "
            f"{type(exc).__name__}: {exc}"
        ) from None
    obj = _unwrap(obj)
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} does not hold a state_dict (a mapping of names to tensors)")
    if not all(isinstance(k, str) for k in obj):
        raise CheckpointError(f"{path} has state_dict keys that are not strings")
    keys = list(obj)
    if keys and all(k.startswith("module.") for k in keys):  # saved from a DistributedDataParallel wrapper
        return {k[len("module."):]: v for k, v in obj.items()}
    return dict(obj)


def _unwrap(obj):
    """The state_dict inside a training checkpoint (``{"model": ..., "optimizer": ..., "step": ...}``, as
    ``segany train`` writes, or ``{"state_dict": ...}``), else ``obj``."""
    for _ in range(3):  # a wrapper inside a wrapper
        if not isinstance(obj, Mapping) or all(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj
        inner = [obj[w] for w in ("model", "state_dict") if isinstance(obj.get(w), Mapping)]
        if not inner:
            return obj
        obj = inner[0]
    return obj


def remap_checkpoint_keys(state_dict: dict[str, torch.Tensor], variant: str) -> dict[str, torch.Tensor]:
    """The one place where checkpoint keys are changed: drops keys a release carries but the model does not use."""
    drop = get_variant(variant).drop_prefixes
    return {k: v for k, v in state_dict.items() if not k.startswith(drop)} if drop else state_dict


def _expected_shapes(variant: str) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        model = assemble(get_variant(variant).build_encoder())
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _mismatch(state_dict: Mapping[str, torch.Tensor], expected: Mapping[str, tuple[int, ...]]) -> tuple:
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    wrong = sorted(
        k for k in set(expected) & set(state_dict) if tuple(state_dict[k].shape) != expected[k]
    )
    return missing, unexpected, wrong


def detect_variant(state_dict: Mapping[str, torch.Tensor]) -> str:
    """Name of the zoo variant whose keys and shapes match ``state_dict`` exactly (after remapping).

    Raises :class:`CheckpointError` naming the closest variant and what differs.
    """
    best: tuple[int, str, tuple] | None = None
    for name in VARIANTS:
        try:
            expected = _expected_shapes(name)
        except ImportError:
            continue
        sd = remap_checkpoint_keys(dict(state_dict), name)
        diff = _mismatch(sd, expected)
        score = sum(len(d) for d in diff)
        if score == 0:
            return name
        if best is None or score < best[0]:
            best = (score, name, diff)
    assert best is not None
    raise CheckpointError(_describe_mismatch(best[1], *best[2], prefix="checkpoint matches no known variant; "))


def _describe_mismatch(variant: str, missing: list, unexpected: list, wrong: list, prefix: str = "") -> str:
    def few(keys: list) -> str:
        return ", ".join(keys[:5]) + (f" (+{len(keys) - 5} more)" if len(keys) > 5 else "")

    parts = [f"{prefix}closest variant is {variant!r}"]
    if missing:
        parts.append(f"{len(missing)} missing keys: {few(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys: {few(unexpected)}")
    if wrong:
        parts.append(f"{len(wrong)} keys with other shapes: {few(wrong)}")
    return "; ".join(parts)


def fingerprint_state_dict(variant: str, state_dict: Mapping[str, torch.Tensor]) -> str:
    """``variant:sha256[:16]`` over names, shapes, dtypes and bytes of every tensor, in sorted key order.

    Independent of the file format, so the same weights give the same fingerprint from .pt or .safetensors.
    """
    h = hashlib.sha256()
    for key in sorted(state_dict):
        t = state_dict[key].detach().to("cpu").contiguous()
        h.update(f"{key}|{tuple(t.shape)}|{t.dtype}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return f"{variant}:{h.hexdigest()[:16]}"


def load_checkpoint(path: str | os.PathLike, variant: str | None = None) -> Sam:
    """Load a checkpoint file strictly; ``variant`` is detected from its keys when not given."""
    state_dict = read_checkpoint(path)
    if variant is None:
        variant = detect_variant(state_dict)
    state_dict = remap_checkpoint_keys(state_dict, variant)
    expected = _expected_shapes(variant)
    missing, unexpected, wrong = _mismatch(state_dict, expected)
    if missing or unexpected or wrong:
        raise CheckpointError(f"{path} does not fit variant {variant!r}: " + _describe_mismatch(
            variant, missing, unexpected, wrong, prefix=""
        ).split("; ", 1)[-1])
    with torch.device("meta"):
        model = assemble(get_variant(variant).build_encoder())
    expected_float = {k: v.is_floating_point() for k, v in model.state_dict().items()}
    wrong_kind = sorted(k for k, v in state_dict.items() if v.is_floating_point() != expected_float[k]
                        or v.is_complex())
    if wrong_kind:
        raise CheckpointError(f"{path} holds tensors of the wrong kind of dtype for variant {variant!r} (e.g. "
                              f"{wrong_kind[0]}: {state_dict[wrong_kind[0]].dtype})")
    # Floating weights become float32 (the shipped model is stored in fp16); fp32 tensors are not copied.
    state_dict = {k: v.float() if v.is_floating_point() else v for k, v in state_dict.items()}
    model.load_state_dict(state_dict, strict=True, assign=True)
    # TinyViT derives its bias index tables (not in the state_dict) from the loaded tables; see SAM_FACTS.md.
    refresh = getattr(model.image_encoder, "refresh_attention_biases", None)
    if refresh is not None:
        refresh()
    _materialize_buffers(model)
    model.variant = variant
    model.fingerprint = fingerprint_state_dict(variant, state_dict)
    return model.eval()


def _materialize_buffers(model: nn.Module) -> None:
    """Re-create non-persistent buffers that the meta-device build left empty.

    Such buffers are derived values (index tables); a module that owns one provides ``rebuild_buffers()``
    returning them by name. Buffers created with an explicit CPU device (the pixel statistics) never go to meta.
    """
    for module in model.modules():
        meta = [n for n, b in module.named_buffers(recurse=False) if b is not None and b.is_meta]
        if not meta:
            continue
        rebuild = getattr(module, "rebuild_buffers", None)
        if rebuild is None:
            raise CheckpointError(
                f"internal: {type(module).__name__} has non-persistent buffers {meta} and no rebuild_buffers()"
            )
        values = rebuild()
        for name in meta:
            module._buffers[name] = values[name]


def to_device(model: Sam, device: str | torch.device) -> Sam:
    """``model`` moved to ``device`` ("cpu", "cuda", "cuda:N"), or UnavailableError naming why it cannot go there
    (InvalidInputError for a name torch does not parse)."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise InvalidInputError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            built = "built without CUDA" if torch.version.cuda is None else "no CUDA device visible"
            raise UnavailableError(
                f"device {str(device)!r} is not available here (torch {torch.__version__}, {built}); use device 'cpu'"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UnavailableError(f"device {str(device)!r} is not available here: "
                                   f"{torch.cuda.device_count()} CUDA device(s) visible")
    elif dev.type != "cpu":
        raise UnavailableError(f"device {str(device)!r} is not supported: use 'cpu', 'cuda' or 'cuda:N'")
    return model.to(dev)


def load_model(name_or_path: str | os.PathLike | None = None, *, variant: str | None = None) -> Sam:
    """Load a model by zoo name, by checkpoint path, or the shipped default when nothing is named.

    Args:
        name_or_path: ``None`` (the shipped ``segany-lite``), a variant name such as ``"vit_t"``, or a path to a
            checkpoint (``.pth``/``.pt``/``.safetensors``).
        variant: force the variant of a checkpoint file instead of detecting it.
    Returns:
        A :class:`Sam` in eval mode with ``.variant`` and ``.fingerprint`` set.
    """
    if name_or_path is None:
        name_or_path = DEFAULT_MODEL
    text = os.fspath(name_or_path)
    if text in VARIANTS:
        spec = VARIANTS[text]
        if spec.shipped is not None:
            if not spec.shipped.is_file():
                raise CheckpointError(f"the shipped weights of {text!r} are missing from the package: {spec.shipped}")
            return load_checkpoint(spec.shipped, variant=text)
        from segany.zoo import resolve_checkpoint

        return load_checkpoint(resolve_checkpoint(text), variant=text)
    if Path(text).expanduser().is_file():
        return load_checkpoint(Path(text).expanduser(), variant=variant)
    raise UnknownModelError(
        f"unknown model {text!r}: expected one of {', '.join(VARIANTS)} or a path to an existing checkpoint file"
    )
