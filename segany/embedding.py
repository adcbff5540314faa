"""The image embedding as a value, and its self-describing byte container.

An :class:`ImageEmbedding` is what the heavy encoder produces once per image and what every prompt call reads.
It is immutable in spirit: nothing in segany writes into its tensors, so one embedding can be shared between
threads, cached, shipped to a browser and decoded there.

The byte container (``to_bytes`` / ``from_bytes``) lives in :mod:`segany.container`, numpy only, so the client
and other torch-free readers share the one codec.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from segany.container import MAGIC, decode_container, encode_container  # noqa: F401 - MAGIC re-exported

#: Version of the preprocessing (resize, normalise, pad). Part of every cache key.
PREPROCESS_VERSION = "sam1-resize-longest-1024-pil-bilinear-v1"


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
        """Serialise into the self-describing container (see :mod:`segany.container`)."""
        array = self.image_embeddings.detach().to("cpu", torch.float32).numpy()
        return encode_container(
            array, self.original_size, self.input_size, self.model_fingerprint, self.preprocess, dtype
        )

    @classmethod
    def from_bytes(cls, blob: bytes | memoryview) -> ImageEmbedding:
        """Parse a container; raises :class:`InvalidInputError` on any truncation or corruption."""
        parsed = decode_container(blob, default_preprocess=PREPROCESS_VERSION)
        return cls(
            torch.from_numpy(parsed.array),
            parsed.original_size,
            parsed.input_size,
            parsed.model_fingerprint,
            parsed.preprocess,
        )
