"""The image embedding as a value, and its self-describing byte container.

An :class:`ImageEmbedding` is what the heavy encoder produces once per image and what every prompt call reads.
It is immutable in spirit: nothing in segany writes into its tensors, so one embedding can be shared between
threads, cached, shipped to a browser and decoded there.

Container layout (``to_bytes`` / ``from_bytes``), little-endian, readable from JavaScript without a library::

    magic      8 bytes   b"SEGANYE1"
    header_len u32       length of the JSON header in bytes
    header     JSON      {"shape": [1,256,64,64], "dtype": "float32"|"float16", "original_size": [H, W],
                          "input_size": [h, w], "model_fingerprint": "...", "preprocess": "...",
                          "data_len": n, "crc32": c}
    padding    0-3 bytes so that the data starts on a 4-byte boundary (Float32Array needs it)
    data       n bytes   the tensor, C order
"""

from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass

import numpy as np
import torch

from segany.errors import InvalidInputError

MAGIC = b"SEGANYE1"
#: Version of the preprocessing (resize, normalise, pad). Part of every cache key.
PREPROCESS_VERSION = "sam1-resize-longest-1024-pil-bilinear-v1"
_DTYPES = {"float32": np.float32, "float16": np.float16}


@dataclass(frozen=True)
class ImageEmbedding:
    """Encoder output for one image.

    Attributes:
        image_embeddings: float tensor (1, 256, 64, 64) on the model's device.
        original_size: (H, W) of the image as given to ``encode``, in pixels.
        input_size: (h, w) of the image after resizing its longest side to the model's input size (before padding).
        model_fingerprint: identifies the weights that made it; a decoder refuses embeddings of other weights.
        preprocess: the preprocessing version (``PREPROCESS_VERSION``).
    """

    image_embeddings: torch.Tensor
    original_size: tuple[int, int]
    input_size: tuple[int, int]
    model_fingerprint: str
    preprocess: str = PREPROCESS_VERSION

    @property
    def nbytes(self) -> int:
        """Bytes held by the tensors (what a cache budget counts)."""
        t = self.image_embeddings
        return t.numel() * t.element_size()

    def to(self, dtype: torch.dtype) -> ImageEmbedding:
        """Same embedding with its tensor cast to ``dtype`` (e.g. float16 for storage)."""
        if self.image_embeddings.dtype == dtype:
            return self
        return ImageEmbedding(
            self.image_embeddings.to(dtype), self.original_size, self.input_size, self.model_fingerprint,
            self.preprocess,
        )

    def to_bytes(self, dtype: str = "float32") -> bytes:
        """Serialise into the self-describing container (see module docstring)."""
        if dtype not in _DTYPES:
            raise InvalidInputError(f"embedding dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
        data = self.image_embeddings.detach().to("cpu", torch.float32).numpy().astype(_DTYPES[dtype]).tobytes()
        header = {
            "shape": list(self.image_embeddings.shape),
            "dtype": dtype,
            "original_size": list(self.original_size),
            "input_size": list(self.input_size),
            "model_fingerprint": self.model_fingerprint,
            "preprocess": self.preprocess,
            "data_len": len(data),
            "crc32": zlib.crc32(data),
        }
        head = json.dumps(header, separators=(",", ":")).encode()
        prefix_len = len(MAGIC) + 4 + len(head)
        pad = b" " * ((-prefix_len) % 4)  # JSON tolerates trailing spaces; keeps data 4-byte aligned
        head += pad
        return MAGIC + struct.pack("<I", len(head)) + head + data

    @classmethod
    def from_bytes(cls, blob: bytes | memoryview) -> ImageEmbedding:
        """Parse a container; raises :class:`InvalidInputError` on any truncation or corruption."""
        blob = memoryview(blob)
        if len(blob) < 12 or bytes(blob[:8]) != MAGIC:
            raise InvalidInputError("not a segany embedding container (bad magic)")
        (head_len,) = struct.unpack("<I", blob[8:12])
        if 12 + head_len > len(blob):
            raise InvalidInputError("embedding container is truncated (header)")
        try:
            header = json.loads(bytes(blob[12 : 12 + head_len]))
            shape = tuple(int(s) for s in header["shape"])
            np_dtype = _DTYPES[header["dtype"]]
            data_len = int(header["data_len"])
        except (ValueError, KeyError, TypeError) as exc:
            raise InvalidInputError(f"embedding container header is corrupt: {exc}") from None
        data = blob[12 + head_len :]
        expected = int(np.prod(shape)) * np.dtype(np_dtype).itemsize
        if len(data) != data_len or data_len != expected:
            raise InvalidInputError(
                f"embedding container is truncated or padded: {len(data)} data bytes, expected {expected}"
            )
        if zlib.crc32(data) != header.get("crc32"):
            raise InvalidInputError("embedding container failed its CRC32 check (corrupt data)")
        array = np.frombuffer(data, dtype=np_dtype).reshape(shape).astype(np.float32)
        return cls(
            torch.from_numpy(array),
            tuple(header["original_size"]),
            tuple(header["input_size"]),
            header["model_fingerprint"],
            header.get("preprocess", PREPROCESS_VERSION),
        )
