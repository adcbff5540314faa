"""Embedding cache tiers behind one interface: memory (LRU by bytes), disk, Redis, and a tiered stack.

Typical use::

    cache = build_cache(parse_bytes("1GiB"), disk_dir=None, disk_bytes=0, redis_url=None)
    key = cache_key(sha256_bytes(image_bytes), model_fingerprint, PREPROCESS_VERSION)
    embedding = cache.get(key) or encode_and_put(...)
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

import torch

from segany.cache.base import CacheStats, EmbeddingCache, check_key
from segany.cache.disk import DiskCache
from segany.cache.keys import cache_key, sha256_bytes
from segany.cache.memory import MemoryCache
from segany.cache.redis import RedisCache
from segany.cache.tiered import TieredCache
from segany.errors import InvalidInputError

__all__ = [
    "CacheStats",
    "DiskCache",
    "EmbeddingCache",
    "MemoryCache",
    "RedisCache",
    "TieredCache",
    "build_cache",
    "cache_key",
    "check_key",
    "parse_bytes",
    "sha256_bytes",
]

_UNITS = {
    "": 1,
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
    "ki": 1024,
    "mi": 1024**2,
    "gi": 1024**3,
    "ti": 1024**4,
}
_SIZE = re.compile(r"\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([a-zA-Z]*)\s*")


def parse_bytes(text: str | int) -> int:
    """Parse a byte size: ``"1GiB"``, ``"256MiB"``, ``"500MB"``, ``"1.5GiB"``, ``"1024"`` or an int.

    Units (case-insensitive): ``B``; decimal ``KB MB GB TB`` (powers of 1000); binary ``KiB MiB GiB TiB``
    and their Kubernetes spellings ``Ki Mi Gi Ti`` (powers of 1024). A bare ``K``/``M``/``G`` is refused
    because tools disagree on whether it means 1000 or 1024. Fractions are rounded down to whole bytes.
    """
    if isinstance(text, int) and not isinstance(text, bool):
        if text < 0:
            raise InvalidInputError(f"a byte size must be >= 0, got {text}")
        return text
    if not isinstance(text, str):
        raise InvalidInputError(f"a byte size must be a string like '1GiB' or an integer, got {text!r}")
    match = _SIZE.fullmatch(text)
    if match is None or match.group(2).lower() not in _UNITS:
        raise InvalidInputError(
            f"cannot read {text!r} as a byte size: expected a non-negative number with an optional unit "
            f"B, KB, MB, GB, TB (x1000) or KiB, MiB, GiB, TiB (x1024), e.g. '1GiB', '500MB' or '1024'"
        )
    try:
        number = Decimal(match.group(1))
    except InvalidOperation:  # pragma: no cover - the pattern only admits decimal numbers
        raise InvalidInputError(f"cannot read {text!r} as a byte size") from None
    return int(number * _UNITS[match.group(2).lower()])


def build_cache(
    memory_bytes: int | str,
    disk_dir: str | None = None,
    disk_bytes: int | str = 0,
    redis_url: str | None = None,
    *,
    memory_dtype: torch.dtype | None = None,
    redis_ttl_seconds: int | None = None,
) -> EmbeddingCache:
    """The cache the engine uses, from settings: memory, then disk if ``disk_dir``, then Redis if ``redis_url``.

    Sizes may be ints or strings for :func:`parse_bytes`. With one tier that tier is returned as is; with
    several, a :class:`TieredCache` (hits in slower tiers are promoted to memory). ``memory_bytes=0`` with no
    other tier gives a memory cache that stores nothing (caching off).
    """
    memory_budget = parse_bytes(memory_bytes)
    tiers: list[EmbeddingCache] = []
    if memory_budget > 0 or (disk_dir is None and redis_url is None):
        tiers.append(MemoryCache(memory_budget, store_dtype=memory_dtype))
    if disk_dir is not None:
        disk_budget = parse_bytes(disk_bytes)
        if disk_budget <= 0:
            raise InvalidInputError(f"a disk cache in {disk_dir!r} needs a byte budget > 0, got {disk_bytes!r}")
        tiers.append(DiskCache(disk_dir, disk_budget))
    if redis_url is not None:
        tiers.append(RedisCache(redis_url, ttl_seconds=redis_ttl_seconds))
    return tiers[0] if len(tiers) == 1 else TieredCache(tiers)
