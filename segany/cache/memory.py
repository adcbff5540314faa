"""In-process LRU embedding cache bounded in bytes."""

from __future__ import annotations

import threading
from collections import OrderedDict

import torch

from segany.cache.base import CacheStats, EmbeddingCache, check_key
from segany.embedding import ImageEmbedding
from segany.errors import InvalidInputError

#: Bytes charged per entry on top of the tensor bytes: the embedding object, its tensor header and the
#: LRU bookkeeping. Small against a 4 MiB SAM embedding; it keeps a budget honest for tiny test tensors.
ENTRY_OVERHEAD = 512

_STORE_DTYPES = (None, torch.float32, torch.float16, torch.bfloat16)


class MemoryCache(EmbeddingCache):
    """Least-recently-used cache of embeddings held in this process, bounded in bytes.

    Every operation takes one lock for O(1) work and never does I/O, so it is safe from threads and cheap
    enough to call directly from asyncio code. The embedding is stored by reference (no copy, same device);
    segany never writes into embedding tensors.

    Args:
        max_bytes: budget for tensor bytes plus ``ENTRY_OVERHEAD`` per entry. Least recently used entries
            (by ``get`` or ``put``) are evicted to fit a new one; an entry larger than the whole budget is
            not stored. ``0`` stores nothing.
        store_dtype: ``None`` keeps embeddings as given. ``torch.float16`` (or ``bfloat16``) halves the bytes:
            tensors are cast on ``put`` and cast back to float32 on ``get`` (a fresh tensor per ``get``).
            Use it only where a test shows masks unchanged for the model in use.
    """

    name = "memory"

    def __init__(self, max_bytes: int, store_dtype: torch.dtype | None = None) -> None:
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 0:
            raise InvalidInputError(f"memory cache max_bytes must be an integer >= 0, got {max_bytes!r}")
        if store_dtype not in _STORE_DTYPES:
            raise InvalidInputError(
                f"memory cache store_dtype must be None, torch.float32, torch.float16 or torch.bfloat16, "
                f"got {store_dtype!r}"
            )
        self.max_bytes = max_bytes
        self.store_dtype = store_dtype
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, tuple[ImageEmbedding, int]] = OrderedDict()  # oldest first
        self._bytes = 0
        self._hits = self._misses = self._evictions = self._puts = 0

    @staticmethod
    def entry_bytes(embedding: ImageEmbedding) -> int:
        """Bytes an embedding is charged against the budget (as stored)."""
        return embedding.nbytes + ENTRY_OVERHEAD

    def get(self, key: str) -> ImageEmbedding | None:
        check_key(key)
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self._misses += 1
                return None
            self._entries.move_to_end(key)
            self._hits += 1
        embedding = entry[0]
        if self.store_dtype is not None and self.store_dtype != torch.float32:
            embedding = embedding.to(torch.float32)  # outside the lock: a 4 MiB cast is not O(1)
        return embedding

    def put(self, key: str, embedding: ImageEmbedding) -> None:
        check_key(key)
        if self.store_dtype is not None:
            embedding = embedding.to(self.store_dtype)
        size = self.entry_bytes(embedding)
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= old[1]
            if size > self.max_bytes:
                return  # would evict everything and still not fit
            while self._bytes + size > self.max_bytes:
                _, (_, freed) = self._entries.popitem(last=False)
                self._bytes -= freed
                self._evictions += 1
            self._entries[key] = (embedding, size)
            self._bytes += size
            self._puts += 1

    def delete(self, key: str) -> None:
        check_key(key)
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= old[1]

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._entries

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(
                hits=self._hits,
                misses=self._misses,
                evictions=self._evictions,
                puts=self._puts,
                entries=len(self._entries),
                bytes=self._bytes,
                max_bytes=self.max_bytes,
            )
