"""MemoryCache: LRU by bytes, counters, fp16 storage, thread safety."""

from __future__ import annotations

import asyncio
import random
import threading

import pytest
import torch
from cache_helpers import assert_same_embedding, key_of, make_embedding

from segany.cache import MemoryCache
from segany.cache.memory import ENTRY_OVERHEAD
from segany.errors import InvalidInputError

ENTRY = 512 + ENTRY_OVERHEAD  # a (1, 8, 4, 4) float32 embedding as charged


def test_get_put_and_counters():
    embedding = make_embedding()
    cache = MemoryCache(10 * ENTRY)
    assert cache.get(key_of(1)) is None
    cache.put(key_of(1), embedding)
    assert cache.get(key_of(1)) is embedding  # stored by reference, no copy
    assert key_of(1) in cache and key_of(2) not in cache and len(cache) == 1
    s = cache.stats()
    assert (s.hits, s.misses, s.puts, s.evictions, s.errors) == (1, 1, 1, 0, 0)
    assert (s.entries, s.bytes, s.max_bytes) == (1, ENTRY, 10 * ENTRY)
    assert s.hit_rate == 0.5
    cache.delete(key_of(1))
    cache.delete(key_of(1))  # absent: no error
    assert cache.stats().bytes == 0 and key_of(1) not in cache


def test_lru_eviction_by_bytes():
    cache = MemoryCache(3 * ENTRY)
    for i in range(3):
        cache.put(key_of(i), make_embedding(i))
    assert cache.get(key_of(0)) is not None  # 0 becomes most recent; 1 is now the oldest
    cache.put(key_of(3), make_embedding(3))
    assert key_of(1) not in cache
    assert all(key_of(i) in cache for i in (0, 2, 3))
    # a bigger entry evicts as many as needed
    cache.put(key_of(4), make_embedding(4, shape=(1, 8, 4, 8)))  # 1024 + overhead: two old entries go
    assert [key_of(i) in cache for i in (0, 2, 3, 4)] == [False, False, True, True]
    s = cache.stats()
    assert s.evictions == 3 and s.bytes == ENTRY + 1024 + ENTRY_OVERHEAD <= s.max_bytes


def test_replacing_a_key_recounts_bytes():
    cache = MemoryCache(10 * ENTRY)
    cache.put(key_of(1), make_embedding(1))
    cache.put(key_of(1), make_embedding(2, shape=(1, 8, 4, 8)))
    s = cache.stats()
    assert s.entries == 1 and s.bytes == 1024 + ENTRY_OVERHEAD and s.evictions == 0
    assert cache.get(key_of(1)).model_fingerprint == "test-model-2"


def test_entry_larger_than_budget_is_not_stored():
    embedding = make_embedding()
    cache = MemoryCache(ENTRY - 1)
    cache.put(key_of(1), embedding)
    assert key_of(1) not in cache and cache.stats().bytes == 0
    cache = MemoryCache(2 * ENTRY)
    cache.put(key_of(1), embedding)
    cache.put(key_of(2), embedding)
    cache.put(key_of(1), make_embedding(5, shape=(1, 8, 8, 8)))  # too big: the old value goes too
    assert key_of(1) not in cache and key_of(2) in cache
    assert MemoryCache(0).get(key_of(1)) is None


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_storage(dtype):
    embedding = make_embedding(shape=(1, 256, 8, 8))
    cache = MemoryCache(1 << 20, store_dtype=dtype)
    cache.put(key_of(1), embedding)
    assert cache.stats().bytes == embedding.nbytes // 2 + ENTRY_OVERHEAD
    got = cache.get(key_of(1))
    tolerance = 0.01 if dtype == torch.float16 else 0.05  # randn values are within +-5
    assert_same_embedding(got, embedding, atol=tolerance)


def test_bad_arguments():
    for bad in (-1, 1.5, True, "1GiB"):
        with pytest.raises(InvalidInputError):
            MemoryCache(bad)
    with pytest.raises(InvalidInputError):
        MemoryCache(100, store_dtype=torch.int8)
    cache = MemoryCache(100)
    for key in ("", "../../etc/passwd", "a/b", "x" * 129, None):
        with pytest.raises(InvalidInputError):
            cache.get(key)


def test_clear_keeps_counters():
    embedding = make_embedding()
    cache = MemoryCache(10 * ENTRY)
    cache.put(key_of(1), embedding)
    cache.get(key_of(1))
    cache.clear()
    s = cache.stats()
    assert (s.entries, s.bytes, s.hits, s.puts) == (0, 0, 1, 1)


def test_threads_keep_the_budget_and_the_books():
    cache = MemoryCache(20 * ENTRY)
    embeddings = [make_embedding(i) for i in range(50)]
    errors = []

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        try:
            for _ in range(2000):
                i = rng.randrange(50)
                op = rng.random()
                if op < 0.5:
                    got = cache.get(key_of(i))
                    assert got is None or got is embeddings[i]
                elif op < 0.9:
                    cache.put(key_of(i), embeddings[i])
                else:
                    cache.delete(key_of(i))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    s = cache.stats()
    assert s.hits + s.misses > 0 and s.evictions > 0
    assert s.bytes == s.entries * ENTRY <= s.max_bytes
    assert len(cache) == s.entries


def test_usable_from_asyncio():
    embedding = make_embedding()
    cache = MemoryCache(10 * ENTRY)

    async def main() -> list:
        async def one(i: int):
            cache.put(key_of(i), embedding)
            await asyncio.sleep(0)
            return cache.get(key_of(i))

        return await asyncio.gather(*(one(i) for i in range(5)))

    assert all(got is embedding for got in asyncio.run(main()))
