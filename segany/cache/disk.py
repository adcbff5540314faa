"""On-disk embedding cache: survives restarts, bounded in bytes, crash-safe writes."""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections import OrderedDict
from pathlib import Path

import torch

from segany.cache.base import CacheStats, EmbeddingCache, check_key
from segany.embedding import ImageEmbedding
from segany.errors import InvalidInputError

log = logging.getLogger(__name__)

SUFFIX = ".emb"
_TMP_PREFIX = ".tmp-"
#: Temp files older than this at start-up are leftovers of a crashed write; younger ones may belong to a
#: process that is writing right now.
STALE_TMP_SECONDS = 600
_STORE_DTYPES = {None: "float32", torch.float32: "float32", torch.float16: "float16"}


class DiskCache(EmbeddingCache):
    """Embeddings as files in one directory, least recently used evicted first, bounded in bytes.

    Layout: one file ``<key>.emb`` per entry holding :meth:`ImageEmbedding.to_bytes` (magic, JSON header with
    length and CRC32, data). Writes go to a temp file in the same directory, are fsynced and then renamed over
    the target with ``os.replace``, so a reader sees the old file or the new one, never half of one; a crash
    leaves at most a temp file, removed at the next start. (The directory itself is not fsynced: losing a
    rename in a power cut only loses a cache entry.)

    Recency is the file's mtime, bumped on every hit, so the LRU order survives a restart: on start the
    directory is scanned and the index rebuilt oldest-first (trimmed if the budget shrank). A file that fails
    its length or CRC check is counted in ``stats().errors``, deleted, and reported as a miss.

    Thread-safe: the index is guarded by a lock; reading and writing file contents happens outside it. One
    process per directory: two processes sharing one would each enforce the budget on their own index only.
    Calls do blocking file I/O; from asyncio, run them in an executor.

    Args:
        directory: created if missing.
        max_bytes: budget for the sum of file sizes; an entry whose file would exceed it is not stored.
        store_dtype: ``None``/``torch.float32``, or ``torch.float16`` to halve file sizes (``get`` always
            returns float32).
    """

    name = "disk"

    def __init__(self, directory: str | os.PathLike, max_bytes: int, store_dtype: torch.dtype | None = None):
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 0:
            raise InvalidInputError(f"disk cache max_bytes must be an integer >= 0, got {max_bytes!r}")
        if store_dtype not in _STORE_DTYPES:
            raise InvalidInputError(
                f"disk cache store_dtype must be None, torch.float32 or torch.float16, got {store_dtype!r}"
            )
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self._container_dtype = _STORE_DTYPES[store_dtype]
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InvalidInputError(f"cannot create the disk cache directory {str(self.directory)!r}: {exc}") from None
        self._lock = threading.Lock()
        self._index: OrderedDict[str, int] = OrderedDict()  # key -> file size, least recently used first
        self._bytes = 0
        self._hits = self._misses = self._evictions = self._puts = self._errors = 0
        self._scan()

    # ----------------------------------------------------------------------------------------- internals

    def _path(self, key: str) -> Path:
        return self.directory / f"{key}{SUFFIX}"

    def _scan(self) -> None:
        """Rebuild the index from the directory, oldest mtime first; remove stale temp files."""
        found = []
        now = time.time()
        with os.scandir(self.directory) as entries:
            for entry in entries:
                try:
                    if not entry.is_file(follow_symlinks=False):
                        continue
                    st = entry.stat(follow_symlinks=False)
                    if entry.name.startswith(_TMP_PREFIX):
                        if now - st.st_mtime > STALE_TMP_SECONDS:
                            os.unlink(entry.path)
                        continue
                    key = entry.name[: -len(SUFFIX)]
                    if entry.name.endswith(SUFFIX) and _valid_key(key):
                        found.append((st.st_mtime_ns, key, st.st_size))
                except OSError:
                    continue  # vanished while scanning
        found.sort()
        with self._lock:
            for _, key, size in found:
                self._index[key] = size
                self._bytes += size
            self._evict_locked(0)
        log.info("disk cache %s: %d entries, %d bytes", self.directory, len(self._index), self._bytes)

    def _evict_locked(self, incoming: int) -> None:
        """Drop least recently used entries until ``incoming`` more bytes fit. Caller holds the lock."""
        while self._index and self._bytes + incoming > self.max_bytes:
            key, size = self._index.popitem(last=False)
            self._bytes -= size
            self._evictions += 1
            self._unlink(self._path(key))

    def _forget_locked(self, key: str) -> None:
        size = self._index.pop(key, None)
        if size is not None:
            self._bytes -= size

    @staticmethod
    def _unlink(path: Path) -> None:
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("disk cache: cannot remove %s: %s", path, exc)

    # ----------------------------------------------------------------------------------------- interface

    def get(self, key: str) -> ImageEmbedding | None:
        check_key(key)
        path = self._path(key)
        with self._lock:
            if key not in self._index:
                self._misses += 1
                return None
            self._index.move_to_end(key)
        try:
            with open(path, "rb") as f:
                inode = os.fstat(f.fileno()).st_ino
                blob = f.read()
        except FileNotFoundError:  # evicted by another thread since the index lookup, or deleted from outside
            with self._lock:
                self._misses += 1
                if key in self._index and not path.exists():  # gone for good: its bytes are not held any more
                    self._forget_locked(key)
            return None
        except OSError as exc:
            log.warning("disk cache: cannot read %s: %s", path, exc)
            with self._lock:
                self._misses += 1
                self._errors += 1
            return None
        try:
            embedding = ImageEmbedding.from_bytes(blob)
        except InvalidInputError as exc:
            log.warning("disk cache: dropping corrupt entry %s: %s", path, exc)
            with self._lock:
                self._misses += 1
                self._errors += 1
                # Remove it unless another thread has already replaced it with a fresh file.
                try:
                    same_file = os.stat(path).st_ino == inode
                except OSError:
                    same_file = False
                if same_file:
                    self._forget_locked(key)
                    self._unlink(path)
            return None
        try:
            os.utime(path)  # recency, for the LRU order after a restart
        except OSError:
            pass  # evicted meanwhile; the embedding we read is still valid
        with self._lock:
            self._hits += 1
        return embedding

    def put(self, key: str, embedding: ImageEmbedding) -> None:
        check_key(key)
        blob = embedding.to_bytes(self._container_dtype)
        if len(blob) > self.max_bytes:
            self.delete(key)  # keep "the latest put wins or nothing is stored"
            return
        tmp = self.directory / f"{_TMP_PREFIX}{key}-{uuid.uuid4().hex}"
        try:
            with open(tmp, "wb") as f:
                f.write(blob)
                f.flush()
                os.fsync(f.fileno())
            with self._lock:
                os.replace(tmp, self._path(key))
                self._forget_locked(key)
                self._evict_locked(len(blob))
                self._index[key] = len(blob)
                self._bytes += len(blob)
                self._puts += 1
        except OSError as exc:
            log.warning("disk cache: cannot store %s: %s", self._path(key), exc)
            self._unlink(tmp)
            with self._lock:
                self._errors += 1

    def delete(self, key: str) -> None:
        check_key(key)
        with self._lock:
            self._forget_locked(key)
            self._unlink(self._path(key))

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._index

    def __len__(self) -> int:
        with self._lock:
            return len(self._index)

    def clear(self) -> None:
        with self._lock:
            for key in self._index:
                self._unlink(self._path(key))
            self._index.clear()
            self._bytes = 0

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(
                hits=self._hits,
                misses=self._misses,
                evictions=self._evictions,
                puts=self._puts,
                entries=len(self._index),
                bytes=self._bytes,
                max_bytes=self.max_bytes,
                errors=self._errors,
            )


def _valid_key(key: str) -> bool:
    try:
        check_key(key)
    except InvalidInputError:
        return False
    return True
