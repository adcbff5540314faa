"""DiskCache: persistence across restarts, byte budget, atomic writes, corrupt files, threads."""

from __future__ import annotations

import os
import threading
import time

import pytest
import torch
from cache_helpers import assert_same_embedding, key_of, make_embedding

from segany.cache import DiskCache
from segany.cache.disk import STALE_TMP_SECONDS, SUFFIX
from segany.errors import InvalidInputError

FILE = len(make_embedding().to_bytes())  # bytes of one (1, 8, 4, 4) float32 entry on disk


def _files(directory) -> list[str]:
    return sorted(os.listdir(directory))


def _tick() -> None:
    """File times come from a coarse kernel clock; space operations whose order the test checks."""
    time.sleep(0.02)


def test_round_trip_and_counters(tmp_path):
    cache = DiskCache(tmp_path, 10 * FILE)
    want = make_embedding(1)
    assert cache.get(key_of(1)) is None
    cache.put(key_of(1), want)
    assert_same_embedding(cache.get(key_of(1)), want)
    assert _files(tmp_path) == [key_of(1) + SUFFIX]
    s = cache.stats()
    assert (s.hits, s.misses, s.puts, s.entries, s.bytes, s.max_bytes, s.errors) == (
        1, 1, 1, 1, len(want.to_bytes()), 10 * FILE, 0
    )  # fmt: skip
    assert key_of(1) in cache and len(cache) == 1
    cache.delete(key_of(1))
    assert _files(tmp_path) == [] and cache.stats().bytes == 0


def test_survives_restart_with_lru_order(tmp_path):
    cache = DiskCache(tmp_path, 10 * FILE)
    for i in range(3):
        cache.put(key_of(i), make_embedding(i))
        _tick()
    assert cache.get(key_of(0)) is not None  # 0 is now the most recent; 1 the oldest
    _tick()
    reopened = DiskCache(tmp_path, 10 * FILE)
    assert len(reopened) == 3 and reopened.stats().bytes == 3 * FILE
    assert_same_embedding(reopened.get(key_of(2)), make_embedding(2))
    # a restart with a smaller budget trims the least recently used first
    smaller = DiskCache(tmp_path, 2 * FILE)
    assert key_of(1) not in smaller and key_of(0) in smaller and key_of(2) in smaller
    assert _files(tmp_path) == sorted([key_of(0) + SUFFIX, key_of(2) + SUFFIX])
    assert smaller.stats().evictions == 1


def test_byte_budget_evicts_least_recently_used(tmp_path):
    cache = DiskCache(tmp_path, 3 * FILE)
    for i in range(3):
        cache.put(key_of(i), make_embedding(i))
    cache.get(key_of(0))
    cache.put(key_of(3), make_embedding(3))
    assert [key_of(i) in cache for i in range(4)] == [True, False, True, True]
    assert len(_files(tmp_path)) == 3
    s = cache.stats()
    assert s.evictions == 1 and s.bytes == 3 * FILE <= s.max_bytes
    assert s.bytes == sum(os.path.getsize(tmp_path / f) for f in _files(tmp_path))
    # an entry larger than the whole budget is not written (and its old value is dropped)
    cache.put(key_of(2), make_embedding(9, shape=(1, 8, 16, 16)))
    assert key_of(2) not in cache and not (tmp_path / (key_of(2) + SUFFIX)).exists()


@pytest.mark.parametrize("damage", ["truncate", "flip_data_byte", "garbage", "empty"])
def test_corrupt_file_is_a_miss_and_is_removed(tmp_path, damage, caplog):
    cache = DiskCache(tmp_path, 10 * FILE)
    cache.put(key_of(1), make_embedding(1))
    cache.put(key_of(2), make_embedding(2))
    path = tmp_path / (key_of(1) + SUFFIX)
    blob = path.read_bytes()
    if damage == "truncate":
        blob = blob[: len(blob) - 100]
    elif damage == "flip_data_byte":
        blob = blob[:-10] + bytes([blob[-10] ^ 0xFF]) + blob[-9:]
    elif damage == "garbage":
        blob = os.urandom(len(blob))
    else:
        blob = b""
    path.write_bytes(blob)
    assert cache.get(key_of(1)) is None
    assert not path.exists() and key_of(1) not in cache
    s = cache.stats()
    assert (s.errors, s.misses, s.hits, s.entries, s.bytes) == (1, 1, 0, 1, FILE)
    assert "corrupt" in caplog.text
    assert cache.get(key_of(2)) is not None  # the neighbour is untouched


def test_a_file_deleted_from_outside_leaves_the_index(tmp_path):
    cache = DiskCache(tmp_path, 3 * FILE)
    for i in range(3):
        cache.put(key_of(i), make_embedding(i))
    (tmp_path / (key_of(1) + SUFFIX)).unlink()  # someone cleans the folder by hand
    assert cache.get(key_of(1)) is None
    assert key_of(1) not in cache and cache.stats().entries == 2 and cache.stats().bytes == 2 * FILE
    cache.put(key_of(3), make_embedding(3))  # fits without evicting a real entry
    assert [key_of(i) in cache for i in range(4)] == [True, False, True, True]


def test_corrupt_file_found_after_restart(tmp_path):
    DiskCache(tmp_path, 10 * FILE).put(key_of(1), make_embedding(1))
    path = tmp_path / (key_of(1) + SUFFIX)
    path.write_bytes(path.read_bytes()[:50])
    cache = DiskCache(tmp_path, 10 * FILE)
    assert cache.get(key_of(1)) is None and cache.stats().errors == 1 and not path.exists()


def test_start_removes_stale_temp_files_and_ignores_strangers(tmp_path):
    stale = tmp_path / ".tmp-abc-123"
    fresh = tmp_path / ".tmp-def-456"
    stranger = tmp_path / "notes.txt"
    for p in (stale, fresh, stranger):
        p.write_bytes(b"x")
    old = time.time() - STALE_TMP_SECONDS - 60
    os.utime(stale, (old, old))
    (tmp_path / "sub").mkdir()
    cache = DiskCache(tmp_path, 10 * FILE)
    assert not stale.exists() and fresh.exists() and stranger.exists()
    assert len(cache) == 0 and cache.stats().bytes == 0


def test_float16_files(tmp_path):
    want = make_embedding(1, shape=(1, 64, 8, 8))
    cache = DiskCache(tmp_path, 1 << 20, store_dtype=torch.float16)
    cache.put(key_of(1), want)
    assert cache.stats().bytes < want.nbytes * 0.6
    assert_same_embedding(cache.get(key_of(1)), want, atol=0.01)


def test_write_failure_is_counted_not_raised(tmp_path, caplog):
    directory = tmp_path / "cache"
    cache = DiskCache(directory, 10 * FILE)
    directory.rmdir()
    cache.put(key_of(1), make_embedding(1))
    assert cache.stats().errors == 1 and key_of(1) not in cache
    assert "cannot store" in caplog.text


def test_bad_arguments(tmp_path):
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(InvalidInputError, match="cannot create"):
        DiskCache(tmp_path / "file" / "cache", 100)
    for bad in (-1, 2.5, None):
        with pytest.raises(InvalidInputError):
            DiskCache(tmp_path, bad)
    with pytest.raises(InvalidInputError):
        DiskCache(tmp_path, 100, store_dtype=torch.bfloat16)
    cache = DiskCache(tmp_path, 100)
    for key in ("../escape", "a/b", ".hidden", ""):
        with pytest.raises(InvalidInputError):
            cache.put(key, make_embedding())
        assert not (tmp_path.parent / "escape.emb").exists()


def test_clear(tmp_path):
    cache = DiskCache(tmp_path, 10 * FILE)
    for i in range(3):
        cache.put(key_of(i), make_embedding(i))
    (tmp_path / "notes.txt").write_bytes(b"x")
    cache.clear()
    assert _files(tmp_path) == ["notes.txt"] and len(cache) == 0 and cache.stats().bytes == 0


def test_concurrent_puts_and_gets_from_threads(tmp_path):
    cache = DiskCache(tmp_path, 12 * FILE)
    embeddings = [make_embedding(i) for i in range(24)]
    errors = []

    def worker(t: int) -> None:
        try:
            for round_ in range(3):
                for i in range(24):
                    j = (i + t * 5 + round_) % 24  # threads overlap on keys, in different orders
                    cache.put(key_of(j), embeddings[j])
                    got = cache.get(key_of((j + 7) % 24))
                    if got is not None:
                        assert_same_embedding(got, embeddings[(j + 7) % 24])
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    files = _files(tmp_path)
    assert all(f.endswith(SUFFIX) for f in files)  # no temp files left behind
    s = cache.stats()
    assert s.errors == 0 and s.bytes <= s.max_bytes and s.puts == 6 * 3 * 24
    assert sorted(f[: -len(SUFFIX)] for f in files) == sorted(k for k in map(key_of, range(24)) if k in cache)
    assert s.bytes == sum(os.path.getsize(tmp_path / f) for f in files)
    for i in range(24):
        if key_of(i) in cache:
            assert_same_embedding(cache.get(key_of(i)), embeddings[i])
