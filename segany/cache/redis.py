"""Redis embedding cache: the tier several server replicas share."""

from __future__ import annotations

import logging
import re
import threading
import time

import torch

from segany.cache.base import CacheStats, EmbeddingCache, check_key
from segany.embedding import ImageEmbedding
from segany.errors import InvalidInputError

log = logging.getLogger(__name__)

#: At most one warning per this many seconds while Redis keeps failing; the rest are counted in it.
LOG_INTERVAL_SECONDS = 10.0
_STORE_DTYPES = {None: "float32", torch.float32: "float32", torch.float16: "float16"}


class RedisCache(EmbeddingCache):
    """Embeddings stored in Redis as :meth:`ImageEmbedding.to_bytes` containers under ``prefix + key``.

    The budget lives on the Redis side: run the server with ``maxmemory`` set and ``maxmemory-policy
    allkeys-lru`` (a dedicated instance) or ``volatile-lru`` with ``ttl_seconds`` set here (an instance shared
    with other data), so Redis evicts old embeddings instead of refusing writes. ``stats()`` therefore reports
    no ``entries``/``bytes``/``max_bytes``; ask the server (``INFO memory``).

    Redis being down never fails a request: ``get`` returns ``None`` and counts a miss and an error, ``put``
    and the other calls count an error; failures are logged at most once per ``LOG_INTERVAL_SECONDS``.
    Connecting is lazy (nothing happens in the constructor) and redis-py reconnects on the next call.
    A value that fails the container's length/CRC check is deleted and treated as a miss.

    Calls block for up to ``socket_timeout`` seconds; from asyncio, run them in an executor.

    Args:
        url: ``redis://[:password@]host:port/db``, ``rediss://`` for TLS, or ``unix:///path.sock``.
        ttl_seconds: expiry of each entry, refreshed on every hit (sliding; needs Redis >= 6.2 for GETEX);
            ``None`` keeps entries until Redis evicts them.
        prefix: namespace of the keys.
        store_dtype: ``None``/``torch.float32``, or ``torch.float16`` to halve the bytes sent and stored
            (``get`` always returns float32).
        socket_timeout: seconds for connecting and for each command.
        retry_after_seconds: after a failed command (timeout, refused connection), calls are skipped for this long
            (gets are misses, puts are dropped, both counted as errors): a Redis that hangs costs one timeout per
            interval, not one per request.
    """

    name = "redis"

    def __init__(
        self,
        url: str,
        ttl_seconds: int | None = None,
        prefix: str = "segany:emb:",
        store_dtype: torch.dtype | None = None,
        socket_timeout: float = 2.0,
        retry_after_seconds: float = 5.0,
    ) -> None:
        try:
            import redis  # optional dependency: segany works without it unless this tier is configured
        except ImportError:
            raise InvalidInputError("the Redis cache needs the 'redis' package: pip install 'segany[redis]'") from None
        if ttl_seconds is not None and (
            isinstance(ttl_seconds, bool) or not isinstance(ttl_seconds, int) or ttl_seconds <= 0
        ):
            raise InvalidInputError(f"ttl_seconds must be a positive integer or None, got {ttl_seconds!r}")
        if store_dtype not in _STORE_DTYPES:
            raise InvalidInputError(
                f"Redis cache store_dtype must be None, torch.float32 or torch.float16, got {store_dtype!r}"
            )
        if not isinstance(prefix, str):
            raise InvalidInputError(f"prefix must be a string, got {prefix!r}")
        try:
            self._client = redis.Redis.from_url(
                url, socket_timeout=socket_timeout, socket_connect_timeout=socket_timeout
            )
        except ValueError as exc:
            raise InvalidInputError(f"invalid Redis URL {url!r}: {exc}") from None
        self._failures = (redis.RedisError, OSError)
        self._unanswered = (redis.ConnectionError, redis.TimeoutError, OSError)  # what the back-off is for
        self.url = url
        self.ttl_seconds = ttl_seconds
        self.prefix = prefix
        self._container_dtype = _STORE_DTYPES[store_dtype]
        self._lock = threading.Lock()
        self._hits = self._misses = self._puts = self._errors = 0
        self._last_log = -float("inf")
        self._suppressed = 0
        self.retry_after_seconds = retry_after_seconds
        self._down_until = -float("inf")  # monotonic time before which calls are skipped (see retry_after_seconds)

    def _key(self, key: str) -> str:
        return self.prefix + check_key(key)

    def _skipping(self, miss: bool = False) -> bool:
        """Whether calls are being skipped after a failure (then this call counts as an error, and a miss)."""
        if time.monotonic() >= self._down_until:
            return False
        with self._lock:
            self._errors += 1
            self._misses += miss
        return True

    def _failed(self, operation: str, exc: BaseException, miss: bool = False) -> None:
        """Count a failure; log it unless one was logged less than ``LOG_INTERVAL_SECONDS`` ago. When the server did
        not answer (not an answer such as WRONGTYPE, OOM or a corrupt value), calls are skipped for
        ``retry_after_seconds``."""
        now = time.monotonic()
        with self._lock:
            if isinstance(exc, self._unanswered):
                self._down_until = now + self.retry_after_seconds
            self._errors += 1
            if miss:
                self._misses += 1
            if now - self._last_log < LOG_INTERVAL_SECONDS:
                self._suppressed += 1
                return
            self._last_log, suppressed, self._suppressed = now, self._suppressed, 0
        more = f" ({suppressed} more failures since the last report)" if suppressed else ""
        log.warning("Redis cache %s failed on %s: %s%s", _redact(self.url), operation, exc, more)

    def get(self, key: str) -> ImageEmbedding | None:
        name = self._key(key)
        if self._skipping(miss=True):
            return None
        try:
            if self.ttl_seconds is None:
                blob = self._client.get(name)
            else:
                blob = self._client.getex(name, ex=self.ttl_seconds)
        except self._failures as exc:
            self._failed("get", exc, miss=True)
            return None
        if blob is None:
            with self._lock:
                self._misses += 1
            return None
        try:
            embedding = ImageEmbedding.from_bytes(blob)
        except InvalidInputError as exc:
            self._failed("get (corrupt value, deleted)", exc, miss=True)
            try:
                self._client.delete(name)
            except self._failures:
                pass  # counted above; the next get will try again
            return None
        with self._lock:
            self._hits += 1
        return embedding

    def put(self, key: str, embedding: ImageEmbedding) -> None:
        name = self._key(key)
        if self._skipping():
            return
        blob = embedding.to_bytes(self._container_dtype)
        try:
            self._client.set(name, blob, ex=self.ttl_seconds)
        except self._failures as exc:
            self._failed("put", exc)
            return
        with self._lock:
            self._puts += 1

    def delete(self, key: str) -> None:
        name = self._key(key)
        if self._skipping():
            return
        try:
            self._client.delete(name)
        except self._failures as exc:
            self._failed("delete", exc)

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, str) or self._skipping():
            return False
        try:
            return bool(self._client.exists(self._key(key)))
        except InvalidInputError:
            return False
        except self._failures as exc:
            self._failed("exists", exc)
            return False

    def clear(self) -> None:
        """Delete every key under ``prefix`` (SCAN + UNLINK in batches; other keys are left alone)."""
        try:
            batch = []
            for name in self._client.scan_iter(match=_glob_escape(self.prefix) + "*", count=500):
                batch.append(name)
                if len(batch) >= 500:
                    self._client.unlink(*batch)
                    batch.clear()
            if batch:
                self._client.unlink(*batch)
        except self._failures as exc:
            self._failed("clear", exc)

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(
                hits=self._hits,
                misses=self._misses,
                evictions=0,
                puts=self._puts,
                entries=None,
                bytes=None,
                max_bytes=None,
                errors=self._errors,
            )

    def close(self) -> None:
        try:
            self._client.close()
        except self._failures:
            pass


def _glob_escape(text: str) -> str:
    """Escape Redis MATCH pattern characters so ``text`` matches literally."""
    return re.sub(r"([\\*?\[\]])", r"\\\1", text)


def _redact(url: str) -> str:
    """``url`` without its password, for logs."""
    return re.sub(r"//([^:/@]*):[^@/]*@", r"//\1:***@", url)
