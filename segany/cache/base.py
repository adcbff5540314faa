"""The interface every embedding cache tier implements, and its counters."""

from __future__ import annotations

import abc
import re
from dataclasses import dataclass

from segany.embedding import ImageEmbedding
from segany.errors import InvalidInputError

# Keys become file names and Redis keys: keep them to characters that are safe in both.
_KEY = re.compile(r"[0-9A-Za-z_-]{1,128}")


def check_key(key: str) -> str:
    """Return ``key`` if it is a valid cache key (1-128 of ``[0-9A-Za-z_-]``; :func:`cache_key` makes them)."""
    if not isinstance(key, str) or not _KEY.fullmatch(key):
        raise InvalidInputError(f"a cache key must be 1-128 characters of [0-9A-Za-z_-], got {key!r}")
    return key


@dataclass(frozen=True)
class CacheStats:
    """A snapshot of one cache's counters (since it was created) and its current size.

    Attributes:
        hits, misses: ``get`` calls that returned an embedding / ``None``.
        evictions: entries dropped to stay within the byte budget (not explicit deletes).
        puts: ``put`` calls that stored an entry.
        entries, bytes: what is held now; ``bytes`` counts what the budget counts (tensor bytes plus a small
            per-entry overhead in memory, file sizes on disk). ``None`` where the tier cannot know it cheaply
            (Redis: ask the server).
        max_bytes: the budget, or ``None`` where the tier does not enforce one itself (Redis: ``maxmemory``).
        errors: failures absorbed by the tier (corrupt files, lost connections); each also counts as a miss
            when it happened in ``get``.
    """

    hits: int = 0
    misses: int = 0
    evictions: int = 0
    puts: int = 0
    entries: int | None = 0
    bytes: int | None = 0
    max_bytes: int | None = None
    errors: int = 0

    @property
    def hit_rate(self) -> float:
        """hits / (hits + misses), 0.0 before the first ``get``."""
        total = self.hits + self.misses
        return self.hits / total if total else 0.0


class EmbeddingCache(abc.ABC):
    """A key -> :class:`ImageEmbedding` store with a budget.

    Keys come from :func:`segany.cache.keys.cache_key`. Every method is safe to call from several threads.
    A cache is an optimisation: ``get`` returns ``None`` rather than raising when its storage fails, and
    ``put`` may decline to store (entry over budget, storage down). Invalid keys raise InvalidInputError.
    """

    #: Short name used in logs and metrics.
    name: str = "cache"

    @abc.abstractmethod
    def get(self, key: str) -> ImageEmbedding | None:
        """The embedding stored under ``key``, or ``None``; tiers that store float16 return float32."""

    @abc.abstractmethod
    def put(self, key: str, embedding: ImageEmbedding) -> None:
        """Store ``embedding`` under ``key``, replacing any entry there; may evict others."""

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Remove ``key`` if present."""

    @abc.abstractmethod
    def __contains__(self, key: object) -> bool:
        """Whether ``key`` is stored now; does not count as a hit or miss or refresh recency."""

    @abc.abstractmethod
    def clear(self) -> None:
        """Remove every entry (counters are kept)."""

    @abc.abstractmethod
    def stats(self) -> CacheStats:
        """A snapshot of the counters."""

    def close(self) -> None:  # noqa: B027 - optional hook, most tiers hold nothing to release
        """Release connections or handles; the cache is not used afterwards."""
