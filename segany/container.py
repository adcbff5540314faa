"""The self-describing embedding container, numpy only (the client and browser side read it without torch).

Layout, little-endian, readable from JavaScript without a library::

    magic      8 bytes   b"SEGANYE1"
    header_len u32       length of the JSON header in bytes (including trailing padding spaces)
    header     JSON      {"shape": [1,256,64,64], "dtype": "float32"|"float16", "original_size": [H, W],
                          "input_size": [h, w], "model_fingerprint": "...", "preprocess": "...",
                          "data_len": n, "crc32": c}
    padding    0-3 spaces so that the data starts on a 4-byte boundary (Float32Array needs it)
    data       n bytes   the tensor, C order

:class:`segany.embedding.ImageEmbedding` ``to_bytes``/``from_bytes`` use these functions.
"""

from __future__ import annotations

import json
import math
import struct
import zlib
from dataclasses import dataclass

import numpy as np

from segany.errors import InvalidInputError

MAGIC = b"SEGANYE1"
DTYPES = {"float32": np.float32, "float16": np.float16}


@dataclass(frozen=True)
class EmbeddingArray:
    """A decoded container: the tensor as numpy plus what it describes.

    Attributes:
        array: float32 array, usually (1, 256, 64, 64) (fp16 containers are widened on read).
        original_size: (H, W) of the image in pixels.
        input_size: (h, w) after resizing the longest side to the model's input size.
        model_fingerprint: the weights that made it.
        preprocess: the preprocessing version.
        stored_dtype: ``"float32"`` or ``"float16"``, the dtype in the container.
    """

    array: np.ndarray
    original_size: tuple[int, int]
    input_size: tuple[int, int]
    model_fingerprint: str
    preprocess: str
    stored_dtype: str = "float32"


def encode_container(
    array: np.ndarray,
    original_size: tuple[int, int],
    input_size: tuple[int, int],
    model_fingerprint: str,
    preprocess: str,
    dtype: str = "float32",
) -> bytes:
    """Serialise ``array`` (any float dtype) as ``dtype`` into the container (see module docstring)."""
    if dtype not in DTYPES:
        raise InvalidInputError(f"embedding dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    array = np.ascontiguousarray(array, dtype=DTYPES[dtype])
    data = array.tobytes()
    header = {
        "shape": list(array.shape),
        "dtype": dtype,
        "original_size": [int(v) for v in original_size],
        "input_size": [int(v) for v in input_size],
        "model_fingerprint": model_fingerprint,
        "preprocess": preprocess,
        "data_len": len(data),
        "crc32": zlib.crc32(data),
    }
    head = json.dumps(header, separators=(",", ":")).encode()
    prefix_len = len(MAGIC) + 4 + len(head)
    head += b" " * ((-prefix_len) % 4)  # JSON tolerates trailing spaces; keeps data 4-byte aligned
    return MAGIC + struct.pack("<I", len(head)) + head + data


def _sizes(value, name: str, length: int | None) -> tuple[int, ...]:
    """A header's list of sizes as ints: whole numbers >= 0 (``length`` of them when given), else ValueError."""
    sizes = tuple(int(v) for v in value)
    if any(v < 0 or v != f for v, f in zip(sizes, value)) or (length is not None and len(sizes) != length):
        raise ValueError(f"{name} must be {length or 'a list of'} whole numbers >= 0, got {value!r:.80}")
    return sizes


def decode_container(blob: bytes | memoryview, default_preprocess: str = "") -> EmbeddingArray:
    """Parse a container; raises :class:`InvalidInputError` on any truncation or corruption."""
    blob = memoryview(blob)
    if len(blob) < 12 or bytes(blob[:8]) != MAGIC:
        raise InvalidInputError("not a segany embedding container (bad magic)")
    (head_len,) = struct.unpack("<I", blob[8:12])
    if 12 + head_len > len(blob):
        raise InvalidInputError("embedding container is truncated (header)")
    try:
        header = json.loads(bytes(blob[12 : 12 + head_len]))
        shape = _sizes(header["shape"], "shape", None)
        dtype = header["dtype"]
        np_dtype = DTYPES[dtype]
        data_len = int(header["data_len"])
        original_size = _sizes(header["original_size"], "original_size", 2)
        input_size = _sizes(header["input_size"], "input_size", 2)
        fingerprint = str(header["model_fingerprint"])
    # OverflowError: int(1e999); RecursionError: a header nested deeper than the JSON parser goes
    except (ValueError, KeyError, TypeError, OverflowError, RecursionError) as exc:
        raise InvalidInputError(f"embedding container header is corrupt: {exc}") from None
    data = blob[12 + head_len :]
    expected = math.prod(shape) * np.dtype(np_dtype).itemsize  # Python ints: no wrap-around
    if len(data) != data_len or data_len != expected:
        raise InvalidInputError(
            f"embedding container is truncated or padded: {len(data)} data bytes, expected {expected}"
        )
    if zlib.crc32(data) != header.get("crc32"):
        raise InvalidInputError("embedding container failed its CRC32 check (corrupt data)")
    array = np.frombuffer(data, dtype=np_dtype).reshape(shape).astype(np.float32)
    return EmbeddingArray(
        array,
        original_size,  # type: ignore[arg-type]
        input_size,  # type: ignore[arg-type]
        fingerprint,
        header.get("preprocess", default_preprocess),
        dtype,
    )
