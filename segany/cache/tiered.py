"""Several cache tiers behind one interface, fastest first."""

from __future__ import annotations

import threading
from collections.abc import Sequence

from segany.cache.base import CacheStats, EmbeddingCache, check_key
from segany.embedding import ImageEmbedding
from segany.errors import InvalidInputError


class TieredCache(EmbeddingCache):
    """Tiers tried in order (e.g. memory, disk, Redis); a hit in a slower tier is copied into the faster ones.

    ``put`` writes every tier (write-through), so a restart or another replica finds the embedding in the
    slower, shared tiers. Each tier keeps its own counters; :meth:`stats` counts ``get`` outcomes of the
    whole stack, sums evictions and errors, and takes ``entries``/``bytes``/``max_bytes`` from the first
    tier (the one whose budget is process memory). :meth:`tier_stats` gives each tier's own.

    Args:
        tiers: at least one cache, fastest first.
    """

    name = "tiered"

    def __init__(self, tiers: Sequence[EmbeddingCache]) -> None:
        tiers = list(tiers)
        if not tiers or not all(isinstance(t, EmbeddingCache) for t in tiers):
            raise InvalidInputError(f"TieredCache needs at least one EmbeddingCache, got {tiers!r}")
        self.tiers = tiers
        self._lock = threading.Lock()
        self._hits = self._misses = self._puts = 0

    def get(self, key: str) -> ImageEmbedding | None:
        embedding = self.get_first(key)
        return embedding if embedding is not None else self.get_rest(key)

    def put(self, key: str, embedding: ImageEmbedding) -> None:
        self.put_first(key, embedding)
        self.put_rest(key, embedding)

    # The halves of get and put, for a caller that must not wait on a slow tier when the first one answers (the
    # engine checks its memory tier on the event loop, and sends only misses to the disk and Redis tiers' threads).
    def get_first(self, key: str) -> ImageEmbedding | None:
        """The first tier's answer; a hit counts as a hit of the stack, a miss is not counted (see get_rest)."""
        check_key(key)
        embedding = self.tiers[0].get(key)
        if embedding is not None:
            with self._lock:
                self._hits += 1
        return embedding

    def get_rest(self, key: str) -> ImageEmbedding | None:
        """The slower tiers, after a miss of the first: a hit is copied into the faster tiers."""
        check_key(key)
        for depth, tier in enumerate(self.tiers[1:], 1):
            embedding = tier.get(key)
            if embedding is not None:
                for faster in self.tiers[:depth]:
                    faster.put(key, embedding)
                with self._lock:
                    self._hits += 1
                return embedding
        with self._lock:
            self._misses += 1
        return None

    def put_first(self, key: str, embedding: ImageEmbedding) -> None:
        check_key(key)
        self.tiers[0].put(key, embedding)
        with self._lock:
            self._puts += 1

    def put_rest(self, key: str, embedding: ImageEmbedding) -> None:
        check_key(key)
        for tier in self.tiers[1:]:
            tier.put(key, embedding)

    def delete(self, key: str) -> None:
        for tier in self.tiers:
            tier.delete(key)

    def __contains__(self, key: object) -> bool:
        return any(key in tier for tier in self.tiers)

    def clear(self) -> None:
        for tier in self.tiers:
            tier.clear()

    def tier_stats(self) -> list[tuple[str, CacheStats]]:
        """``(tier name, its stats)`` for each tier, fastest first."""
        return [(tier.name, tier.stats()) for tier in self.tiers]

    def stats(self) -> CacheStats:
        per_tier = [tier.stats() for tier in self.tiers]
        first = per_tier[0]
        with self._lock:
            return CacheStats(
                hits=self._hits,
                misses=self._misses,
                evictions=sum(s.evictions for s in per_tier),
                puts=self._puts,
                entries=first.entries,
                bytes=first.bytes,
                max_bytes=first.max_bytes,
                errors=sum(s.errors for s in per_tier),
            )

    def close(self) -> None:
        for tier in self.tiers:
            tier.close()
