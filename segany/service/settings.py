"""Server settings: one dataclass, filled from defaults, then ``SEGANY_*`` environment variables, then CLI flags.

Every field ``name`` can be set by the environment variable ``SEGANY_<NAME>`` (upper case), e.g.
``SEGANY_CACHE_BYTES=2GiB``, ``SEGANY_AUTH_TOKEN=...``. Byte sizes accept ``parse_bytes`` strings.
"""

from __future__ import annotations

import dataclasses
import os
import re
import threading
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from segany.errors import InvalidInputError

MiB = 1024 * 1024
GiB = 1024 * MiB
ENV_PREFIX = "SEGANY_"

#: Returns the ONNX decoder bytes for a model, or None when this model has no export. Called once, lazily.
DecoderOnnxProvider = Callable[[Any], "bytes | None"]

_BYTE_FIELDS = {
    "cache_bytes",
    "cache_disk_bytes",
    "max_receive_message_bytes",
    "max_send_message_bytes",
    "max_image_bytes",
    "mask_store_bytes",
    "encode_queue_bytes",
}


def default_decoder_onnx_provider(model: Any) -> bytes | None:
    """Export the decoder with :mod:`segany.onnx` (when that module exists) into memory, once per model.

    gRPC ``GetDecoderOnnx`` and the HTTP demo's ``/decoder.onnx`` both call this for the served model: the first
    call exports (a few seconds), a concurrent one waits for it, later ones get the same bytes.
    Raises NotImplementedError when this installation has no ONNX export (the service answers UNIMPLEMENTED).
    """
    import tempfile
    from pathlib import Path

    try:
        from segany.onnx import export_decoder  # type: ignore[import-not-found]
    except ImportError as exc:
        raise NotImplementedError(
            f"this server cannot export the ONNX decoder ({exc}); install segany[export] or run `segany export`"
        ) from None
    with _EXPORT_LOCK:
        data = _EXPORTED.get(model)
        if data is None:
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "decoder.onnx"
                export_decoder(_decoder_only_copy(model), path, multimask=True)
                data = _EXPORTED[model] = path.read_bytes()
        return data


#: Decoder exports by model (weak keys: a model that is dropped takes its bytes along), and the lock that makes
#: callers for the same model share one export.
_EXPORTED: weakref.WeakKeyDictionary[Any, bytes] = weakref.WeakKeyDictionary()
_EXPORT_LOCK = threading.Lock()


def _decoder_only_copy(model: Any) -> Any:
    """The model with its own copies of the prompt encoder and mask decoder and no image encoder.

    Export reconfigures modules (plain attention for tracing) and runs while the server keeps serving with the
    original; copying the two small parts keeps the live model untouched without copying the encoder.
    """
    import copy

    from torch import nn

    clone = copy.copy(model)
    clone._modules = dict(model._modules)
    clone._modules["prompt_encoder"] = copy.deepcopy(model.prompt_encoder).cpu()  # exported on the CPU, wherever
    clone._modules["mask_decoder"] = copy.deepcopy(model.mask_decoder).cpu()  # the served model runs
    clone._modules["image_encoder"] = nn.Identity()
    return clone


@dataclass
class Settings:
    """Everything ``segany serve`` can be told. See docs/service.md for each field's meaning."""

    host: str = "127.0.0.1"
    port: int = 50051
    model: str | None = None  # zoo name; None with no checkpoint = the shipped default
    checkpoint: str | None = None
    precision: str = "fast"
    device: str = "cpu"  # where the model runs: cpu, cuda or cuda:N
    torch_threads: int | None = None  # None: torch's default
    # Cache
    cache_bytes: int = 1 * GiB
    cache_dir: str | None = None
    cache_disk_bytes: int = 10 * GiB
    redis_url: str | None = None
    # Limits
    max_receive_message_bytes: int = 64 * MiB
    max_send_message_bytes: int = 64 * MiB
    max_image_bytes: int = 48 * MiB
    max_image_pixels: int = 50_000_000
    max_image_side: int = 20_000
    max_prompts_per_request: int = 64
    max_points_per_prompt: int = 64
    mask_store_bytes: int = 64 * MiB
    # Engine
    encode_batch: int = 2
    encode_queue: int = 64
    encode_queue_bytes: int = 1 * GiB  # decoded pixels waiting for the encoder
    decode_workers: int = 2
    warmup: bool = True
    # Security
    auth_token: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_client_ca: str | None = None  # set: clients must present a certificate signed by this CA (mTLS)
    # Operations
    grace_seconds: float = 10.0
    metrics_port: int | None = None  # also serve /metrics over HTTP on this port (0 = pick one)
    http_port: int | None = None  # also serve the browser demo, decoder and embeddings over HTTP (0 = pick one)
    reflection: bool = True
    decoder_onnx_provider: DecoderOnnxProvider | None = field(default=default_decoder_onnx_provider, repr=False)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Defaults, then ``SEGANY_*`` variables from ``env`` (default ``os.environ``), then ``overrides``
        (those that are not None)."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name == "decoder_onnx_provider":
                continue
            raw = env.get(ENV_PREFIX + f.name.upper())
            if raw is not None and raw != "":
                values[f.name] = _parse(f.name, raw, cls._type_of(f))
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values).validated()

    @staticmethod
    def _type_of(f: dataclasses.Field) -> str:
        return str(f.type)

    def validated(self) -> Settings:
        """Normalise byte sizes and check ranges; InvalidInputError with the offending setting named."""
        from segany.cache import parse_bytes

        for name in _BYTE_FIELDS:
            setattr(self, name, parse_bytes(getattr(self, name)))
        if self.model is not None and self.checkpoint is not None:
            raise InvalidInputError("give either a model name or a checkpoint path, not both")
        if not 0 <= int(self.port) <= 65535:
            raise InvalidInputError(f"port must be 0-65535, got {self.port}")
        for name in ("encode_batch", "encode_queue", "decode_workers", "max_prompts_per_request",
                     "max_points_per_prompt", "max_image_pixels", "max_image_side"):
            if int(getattr(self, name)) < 1:
                raise InvalidInputError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_image_bytes > self.max_receive_message_bytes:
            raise InvalidInputError(
                f"max_image_bytes ({self.max_image_bytes}) cannot exceed max_receive_message_bytes "
                f"({self.max_receive_message_bytes}): the image travels inside a message"
            )
        if (self.tls_cert is None) != (self.tls_key is None):
            raise InvalidInputError("TLS needs both tls_cert and tls_key")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise InvalidInputError("mutual TLS (tls_client_ca) needs tls_cert and tls_key too")
        if self.precision not in ("fast", "exact"):
            raise InvalidInputError(f"precision must be 'fast' or 'exact', got {self.precision!r}")
        if not re.fullmatch(r"cpu|cuda(:\d+)?", str(self.device)):
            raise InvalidInputError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {self.device!r}")
        return self


def _parse(name: str, raw: str, type_name: str) -> Any:
    where = f"environment variable {ENV_PREFIX}{name.upper()}={raw!r}"
    if name in _BYTE_FIELDS:
        return raw
    try:
        if type_name.startswith("bool"):
            lowered = raw.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError("expected true/false")
        if type_name.startswith("int"):
            return int(raw)
        if type_name.startswith("float"):
            return float(raw)
    except ValueError as exc:
        raise InvalidInputError(f"cannot read {where}: {exc}") from None
    return raw
