"""Speed-ups applied from outside the model code, behind one switch: ``precision``.

- ``"exact"``: the reference path. fp32, plain attention. What the parity tests against the public implementation pin.
- ``"fast"`` (default): scaled-dot-product attention in every attention module (encoder and decoder; ViT global
  attention builds its position mask per chunk of query rows), the image encoder under bf16 autocast when the CPU
  has native bf16 (AVX512-BF16 / AMX) and in channels-last layout, and the rewritten decoder of
  :mod:`segany.modeling.fast_decoder` (the predictor builds it). The decoder stays in fp32, so a prompt on a given
  embedding gives the same masks in both modes up to float rounding; only the embedding differs (see the benchmarks
  and ``tests/test_optimize.py`` for the measured mask IoU against exact).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

PRECISIONS = ("fast", "exact")


def cpu_has_bf16() -> bool:
    """True when this CPU runs bf16 matmuls natively (otherwise autocast to bf16 is slower, not faster)."""
    probe = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    amx = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool((probe and probe()) or (amx and amx()))


def set_sdpa(model: nn.Module, enabled: bool) -> None:
    """Switch every attention module that has a ``use_sdpa`` flag."""
    for module in model.modules():
        if hasattr(module, "use_sdpa"):
            module.use_sdpa = enabled


def configure(model: nn.Module, precision: str) -> None:
    """Apply ``precision`` to the model. A model has one precision at a time.

    ``fast`` also stores the image encoder's convolution weights channels-last (the predictor feeds it a
    channels-last image): oneDNN then runs the convolutions without reordering every feature map, the same values
    bit for bit and up to 1.6x faster for the convolutional encoders. ``exact`` puts them back in the default layout.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    set_sdpa(model, precision == "fast")
    model._segany_precision = precision  # what a Predictor on this model checks (two precisions cannot share it)
    encoder = getattr(model, "image_encoder", None)
    if encoder is not None:
        encoder.to(memory_format=torch.channels_last if precision == "fast" else torch.contiguous_format)


@contextlib.contextmanager
def encoder_autocast(precision: str, device: torch.device) -> Iterator[None]:
    """bf16 autocast for the image encoder in ``fast`` mode on a CPU with native bf16; otherwise nothing."""
    if precision == "fast" and device.type == "cpu" and cpu_has_bf16():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            yield
    elif precision == "fast" and device.type == "cuda":
        with torch.autocast("cuda", dtype=torch.bfloat16):
            yield
    else:
        yield
