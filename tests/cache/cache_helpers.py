"""Helpers for the cache tests: small fake embeddings (the caches never look inside the tensor), keys."""

from __future__ import annotations

import torch

from segany.embedding import ImageEmbedding


def make_embedding(seed: int = 0, shape: tuple[int, ...] = (1, 8, 4, 4)) -> ImageEmbedding:
    """A float32 embedding of ``shape`` (512 tensor bytes by default) with recognisable values."""
    generator = torch.Generator().manual_seed(seed)
    return ImageEmbedding(
        torch.randn(shape, generator=generator),
        original_size=(480 + seed, 640),
        input_size=(768, 1024),
        model_fingerprint=f"test-model-{seed}",
    )


def key_of(i: int) -> str:
    """A valid cache key (64 hex characters) for test entry ``i``."""
    return f"{i:064x}"


def assert_same_embedding(got: ImageEmbedding, want: ImageEmbedding, atol: float = 0.0) -> None:
    assert got.image_embeddings.dtype == torch.float32
    assert got.original_size == want.original_size
    assert got.input_size == want.input_size
    assert got.model_fingerprint == want.model_fingerprint
    assert got.preprocess == want.preprocess
    torch.testing.assert_close(got.image_embeddings, want.image_embeddings.float(), atol=atol, rtol=0)
