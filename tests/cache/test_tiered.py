"""TieredCache promotion and write-through, build_cache and parse_bytes."""

from __future__ import annotations

import socket

import pytest
from cache_helpers import assert_same_embedding, key_of, make_embedding

from segany.cache import (
    DiskCache,
    EmbeddingCache,
    MemoryCache,
    RedisCache,
    TieredCache,
    build_cache,
    parse_bytes,
)
from segany.errors import InvalidInputError

BIG = 1 << 20


def test_put_writes_every_tier_and_get_promotes(tmp_path):
    memory, disk = MemoryCache(BIG), DiskCache(tmp_path, BIG)
    cache = TieredCache([memory, disk])
    want = make_embedding(1)
    cache.put(key_of(1), want)
    assert key_of(1) in memory and key_of(1) in disk
    assert cache.get(key_of(1)) is want  # from memory, by reference

    # a restart: memory is empty, disk still has it; a hit there is copied into memory
    memory = MemoryCache(BIG)
    cache = TieredCache([memory, DiskCache(tmp_path, BIG)])
    got = cache.get(key_of(1))
    assert_same_embedding(got, want)
    assert memory.get(key_of(1)) is got
    s = cache.stats()
    assert (s.hits, s.misses, s.puts) == (1, 0, 0)
    assert s.entries == 1 and s.max_bytes == BIG  # sizes are the first tier's
    names = [name for name, _ in cache.tier_stats()]
    assert names == ["memory", "disk"]
    assert cache.tier_stats()[1][1].hits == 1 and cache.tier_stats()[0][1].misses == 1


def test_miss_everywhere_delete_and_clear(tmp_path):
    memory, disk = MemoryCache(BIG), DiskCache(tmp_path, BIG)
    cache = TieredCache([memory, disk])
    assert cache.get(key_of(1)) is None and cache.stats().misses == 1
    cache.put(key_of(1), make_embedding(1))
    cache.put(key_of(2), make_embedding(2))
    disk.delete(key_of(1))
    assert key_of(1) in cache  # still in memory
    cache.delete(key_of(1))
    assert key_of(1) not in memory and key_of(1) not in cache
    cache.clear()
    assert len(memory) == 0 and len(disk) == 0


def test_promotion_skips_tiers_below_the_hit():
    first, second, third = MemoryCache(BIG), MemoryCache(BIG), MemoryCache(BIG)
    cache = TieredCache([first, second, third])
    second.put(key_of(1), make_embedding(1))
    third.put(key_of(2), make_embedding(2))
    cache.get(key_of(1))
    assert key_of(1) in first and key_of(1) not in third
    cache.get(key_of(2))
    assert key_of(2) in first and key_of(2) in second


def test_a_failing_tier_does_not_fail_the_stack():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    memory = MemoryCache(BIG)
    cache = TieredCache([memory, RedisCache(f"redis://127.0.0.1:{port}/0", socket_timeout=0.5)])
    cache.put(key_of(1), make_embedding(1))
    assert cache.get(key_of(1)) is not None
    assert cache.get(key_of(2)) is None
    s = cache.stats()
    assert (s.hits, s.misses) == (1, 1) and s.errors == 2  # the failed put and the failed get
    cache.close()


def test_needs_tiers():
    with pytest.raises(InvalidInputError):
        TieredCache([])
    with pytest.raises(InvalidInputError):
        TieredCache([object()])


def test_build_cache(tmp_path):
    only_memory = build_cache(1 << 20)
    assert isinstance(only_memory, MemoryCache) and only_memory.stats().max_bytes == 1 << 20
    assert build_cache("256MiB").stats().max_bytes == 256 << 20
    off = build_cache(0)
    off.put(key_of(1), make_embedding(1))
    assert off.get(key_of(1)) is None
    stack = build_cache("1MiB", str(tmp_path), "10MB", "redis://127.0.0.1:1/0")
    assert isinstance(stack, TieredCache) and [t.name for t in stack.tiers] == ["memory", "disk", "redis"]
    assert stack.tiers[1].max_bytes == 10_000_000
    only_disk = build_cache(0, str(tmp_path), 1 << 20)
    assert isinstance(only_disk, DiskCache) and isinstance(only_disk, EmbeddingCache)
    with pytest.raises(InvalidInputError, match="budget"):
        build_cache("1MiB", str(tmp_path), 0)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1GiB", 1 << 30),
        ("256MiB", 256 << 20),
        ("500MB", 500_000_000),
        ("1024", 1024),
        ("0", 0),
        ("1.5GiB", 3 << 29),
        (" 2 gib ", 2 << 30),
        ("64Mi", 64 << 20),
        ("10kb", 10_000),
        ("3KiB", 3072),
        ("7B", 7),
        ("1TB", 10**12),
        (".5KiB", 512),
        (4096, 4096),
    ],
)
def test_parse_bytes(text, expected):
    assert parse_bytes(text) == expected


@pytest.mark.parametrize("text", ["", "GiB", "-1GiB", "1G", "1 M", "1.2.3MB", "1e9", "ten MB", "1GiBs", -5, 1.5, None])
def test_parse_bytes_rejects(text):
    with pytest.raises(InvalidInputError) as info:
        parse_bytes(text)
    if isinstance(text, str) and text:
        assert repr(text) in str(info.value) and "GiB" in str(info.value)
