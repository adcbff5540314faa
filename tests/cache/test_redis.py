"""RedisCache against a real redis-server on 127.0.0.1 (skipped without the binary), and without one."""

from __future__ import annotations

import logging
import shutil
import signal
import socket
import subprocess
import time

import pytest
import torch
from cache_helpers import assert_same_embedding, key_of, make_embedding

from segany.cache import RedisCache
from segany.errors import InvalidInputError

redis = pytest.importorskip("redis")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_redis(*extra: str, port: int | None = None) -> tuple[subprocess.Popen, str]:
    """Start redis-server on 127.0.0.1 (a free port unless given) without persistence; wait for PING."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (apt-get install -y redis-server)")
    port = port or _free_port()
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", *extra]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=0.2)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                pytest.fail(f"redis-server did not start on port {port}")
            time.sleep(0.05)
        finally:
            client.close()
    return process, f"redis://127.0.0.1:{port}/0"


def _stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture(scope="module")
def redis_url():
    process, url = _start_redis()
    yield url
    _stop(process)


@pytest.fixture
def raw(redis_url):
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    yield client
    client.close()


def test_round_trip_and_counters(redis_url, raw):
    cache = RedisCache(redis_url)
    want = make_embedding(1)
    assert cache.get(key_of(1)) is None
    cache.put(key_of(1), want)
    assert_same_embedding(cache.get(key_of(1)), want)
    assert raw.exists("segany:emb:" + key_of(1))
    assert key_of(1) in cache and key_of(2) not in cache
    s = cache.stats()
    assert (s.hits, s.misses, s.puts, s.errors) == (1, 1, 1, 0)
    assert (s.entries, s.bytes, s.max_bytes) == (None, None, None)  # Redis keeps its own books
    cache.delete(key_of(1))
    assert key_of(1) not in cache
    cache.close()


def test_ttl_is_set_and_refreshed_on_hit(redis_url, raw):
    cache = RedisCache(redis_url, ttl_seconds=100)
    cache.put(key_of(1), make_embedding(1))
    name = "segany:emb:" + key_of(1)
    assert 0 < raw.ttl(name) <= 100
    raw.expire(name, 5)
    assert cache.get(key_of(1)) is not None
    assert raw.ttl(name) > 5
    assert raw.ttl("segany:emb:x") == -2
    RedisCache(redis_url).put(key_of(2), make_embedding(2))
    assert raw.ttl("segany:emb:" + key_of(2)) == -1  # no TTL: kept until maxmemory evicts it


def test_corrupt_value_is_a_miss_and_is_deleted(redis_url, raw):
    cache = RedisCache(redis_url)
    cache.put(key_of(1), make_embedding(1))
    name = "segany:emb:" + key_of(1)
    raw.set(name, raw.get(name)[:-7])
    assert cache.get(key_of(1)) is None
    assert not raw.exists(name)
    s = cache.stats()
    assert (s.misses, s.errors, s.hits) == (1, 1, 0)


def test_clear_only_touches_its_prefix(redis_url, raw):
    raw.set("other:data", b"keep me")
    a = RedisCache(redis_url, prefix="t[1]*:")
    b = RedisCache(redis_url, prefix="t1x:")
    for i in range(3):
        a.put(key_of(i), make_embedding(i))
        b.put(key_of(i), make_embedding(i))
    a.clear()
    assert all(key_of(i) not in a and key_of(i) in b for i in range(3))
    assert raw.get("other:data") == b"keep me"


def test_float16_values(redis_url, raw):
    want = make_embedding(1, shape=(1, 64, 8, 8))
    cache = RedisCache(redis_url, store_dtype=torch.float16)
    cache.put(key_of(1), want)
    assert raw.strlen("segany:emb:" + key_of(1)) < want.nbytes * 0.6
    assert_same_embedding(cache.get(key_of(1)), want, atol=0.01)


def test_maxmemory_policy_is_the_budget():
    """With maxmemory + allkeys-lru, Redis evicts old embeddings and writes keep succeeding."""
    process, url = _start_redis("--maxmemory", "4mb", "--maxmemory-policy", "allkeys-lru")
    try:
        cache = RedisCache(url)
        for i in range(40):  # 40 x 256 KiB = 10 MiB through a 4 MB budget
            cache.put(key_of(i), make_embedding(i, shape=(1, 64, 32, 32)))
        present = [key_of(i) in cache for i in range(40)]
        assert cache.stats().errors == 0
        assert present[-1] and not all(present)
        assert cache.get(key_of(39)) is not None
    finally:
        _stop(process)


def test_unreachable_redis_gives_misses_not_exceptions(caplog):
    cache = RedisCache(f"redis://127.0.0.1:{_free_port()}/0", socket_timeout=0.5)
    with caplog.at_level(logging.WARNING, logger="segany.cache.redis"):
        assert cache.get(key_of(1)) is None
        assert cache.get(key_of(2)) is None
        cache.put(key_of(1), make_embedding(1))
        cache.delete(key_of(1))
        assert key_of(1) not in cache
        cache.clear()
    s = cache.stats()
    assert (s.hits, s.misses, s.puts) == (0, 2, 0)
    assert s.errors == 6
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "failed on get" in warnings[0].getMessage()  # later ones are rate-limited
    with pytest.raises(InvalidInputError):
        cache.get("../not-a-key")  # a bad key is the caller's bug, not an outage
    cache.close()


def test_server_going_away_and_coming_back():
    process, url = _start_redis()
    cache = RedisCache(url, socket_timeout=0.5, retry_after_seconds=0.2)
    cache.put(key_of(1), make_embedding(1))
    _stop(process)
    assert cache.get(key_of(1)) is None and cache.stats().errors == 1
    process, _ = _start_redis(port=int(url.rsplit(":", 1)[1].split("/")[0]))
    time.sleep(0.25)  # past the back-off
    try:
        cache.put(key_of(1), make_embedding(1))  # the client reconnects on its own
        assert_same_embedding(cache.get(key_of(1)), make_embedding(1))
    finally:
        _stop(process)


def test_a_hung_redis_costs_one_timeout_per_interval():
    """A server that stops answering (paused, a network black hole) is not waited on by every call."""
    process, url = _start_redis()
    cache = RedisCache(url, socket_timeout=0.3, retry_after_seconds=1.0)
    cache.put(key_of(1), make_embedding(1))
    process.send_signal(signal.SIGSTOP)
    try:
        start = time.monotonic()
        assert cache.get(key_of(1)) is None  # waits one socket timeout
        first = time.monotonic() - start
        start = time.monotonic()
        for i in range(20):
            assert cache.get(key_of(i)) is None
            cache.put(key_of(i), make_embedding(2))
        skipped = time.monotonic() - start
        assert first >= 0.25 and skipped < 0.25, (first, skipped)
        assert cache.stats().errors == 41 and cache.stats().misses == 21
        process.send_signal(signal.SIGCONT)
        time.sleep(1.05)
        assert_same_embedding(cache.get(key_of(1)), make_embedding(1))  # tried again after the interval
    finally:
        process.send_signal(signal.SIGCONT)
        _stop(process)


def test_an_error_answer_does_not_stop_the_tier(redis_url, raw):
    """WRONGTYPE on one key (another program's) or OOM on a put is an answer: the other keys keep working."""
    cache = RedisCache(redis_url, retry_after_seconds=5.0)
    cache.put(key_of(1), make_embedding(1))
    raw.lpush("segany:emb:" + key_of(2), "a list")
    assert cache.get(key_of(2)) is None and cache.stats().errors == 1
    assert_same_embedding(cache.get(key_of(1)), make_embedding(1))  # not skipped


def test_clicks_on_images_in_memory_do_not_wait_on_a_hung_redis(tiny_model):
    import asyncio

    from segany.cache import MemoryCache, TieredCache
    from segany.engine import Engine
    from segany.predictor import Predictor
    from tests.conftest import random_image

    process, url = _start_redis()

    async def main():
        cache = TieredCache([MemoryCache(64 << 20), RedisCache(url, socket_timeout=1.0)])
        engine = Engine(Predictor(tiny_model), cache)
        try:
            held = await engine.embed_array(random_image(32, 32, seed=1))
            process.send_signal(signal.SIGSTOP)
            new = [asyncio.ensure_future(engine.embed_array(random_image(32, 32, seed=s))) for s in (2, 3, 4)]
            await asyncio.sleep(0.3)  # the new images are now waiting on Redis
            start = time.monotonic()
            again = await engine.lookup(held.image_id)
            waited = time.monotonic() - start
            await asyncio.gather(*new)
            return again, held, waited
        finally:
            await engine.close()
            cache.close()

    try:
        again, held, waited = asyncio.run(main())
    finally:
        process.send_signal(signal.SIGCONT)
        _stop(process)
    assert again.original_size == held.original_size and waited < 0.2, waited


def test_bad_arguments():
    with pytest.raises(InvalidInputError):
        RedisCache("http://127.0.0.1:6379")
    for ttl in (0, -5, 1.5, True):
        with pytest.raises(InvalidInputError):
            RedisCache("redis://127.0.0.1:6379", ttl_seconds=ttl)
    with pytest.raises(InvalidInputError):
        RedisCache("redis://127.0.0.1:6379", store_dtype=torch.bfloat16)
