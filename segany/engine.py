"""The core the server and the CLI share: predictor + embedding cache + encode queue + decoder executor.

Concurrency model (one asyncio loop, three executors):

* Image bytes are hashed and decoded on the *prepare* pool (Pillow and hashlib release the GIL).
* The encoder runs on its own single thread, fed by a queue. Requests for an image that is already queued or
  being encoded join that job instead of adding one (16 concurrent ``embed`` calls of one new image run the
  encoder once); distinct images waiting when the encoder frees up go in as one micro-batch of at most
  ``encode_batch``. At most ``max_queue`` distinct images, holding at most ``max_queue_bytes`` of decoded pixels,
  wait; beyond that :class:`ResourceExhaustedError`.
  When every caller of a queued job has gone (cancelled, deadline passed) the job is dropped before it runs.
* The decoder runs on the *decode* pool, never on the encoder thread: a prompt on a cached image does not wait
  behind an encode (torch releases the GIL while it computes). The pool hands each call to the thread that went idle
  last (:class:`~segany.warm_pool.WarmThreadPool`), so back-to-back clicks stay on one warm OpenMP team.
* Encodes and decodes that run at the same time split the torch threads (:class:`~segany.warm_pool.ThreadShare`,
  budget ``torch_threads``): the encoder and a lone decode use all of them, a decode beside other work a share.
  On a GPU the threads do not matter but both run on the default CUDA stream, so there a decode can wait behind an
  encode's kernels (a separate encoder process, e.g. the Ray app's encoder deployment, avoids that).
* With a remote encoder (``encoder=``), the queue's micro-batches go to it instead of the encode thread, up to
  ``remote_batches`` at once; merging, limits, cache and cancellation are unchanged.

The image id is the cache key (sha256 of the bytes + model fingerprint + preprocessing version): computed here,
never chosen by a client. All public methods are coroutines; call them from one event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import hashlib
import logging
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch

from segany.cache import EmbeddingCache, MemoryCache, TieredCache, cache_key, sha256_bytes
from segany.embedding import PREPROCESS_VERSION, ImageEmbedding
from segany.errors import (
    InvalidInputError,
    InvalidPromptError,
    ModelMismatchError,
    NotFoundError,
    ResourceExhaustedError,
    UnavailableError,
)
from segany.images import DEFAULT_LIMITS, ImageLimits, as_rgb_uint8, decode_image
from segany.mask_outputs import MaskStore, OutputSpec, PromptOutput, render_outputs
from segany.predictor import Predictor
from segany.prompts import LOW_RES_SIZE, MAX_POINTS_PER_PROMPT, Prompt
from segany.warm_pool import ThreadShare, WarmThreadPool

log = logging.getLogger(__name__)

_IMAGE_ID = re.compile(r"[0-9a-f]{64}")
_MASK_ID = re.compile(r"m[0-9a-f]{32}")
#: Per-request stage timings (seconds), filled when a caller sets a dict here (the service does, per RPC).
STAGES: contextvars.ContextVar[dict[str, float] | None] = contextvars.ContextVar("segany_stages", default=None)


@contextlib.contextmanager
def stage(name: str) -> Iterator[None]:
    """Time a block into the current request's stage dict (no-op outside a request)."""
    stages = STAGES.get()
    start = time.perf_counter()
    try:
        yield
    finally:
        if stages is not None:
            stages[name] = stages.get(name, 0.0) + time.perf_counter() - start


@dataclass(frozen=True)
class EngineSettings:
    """Queue, executor and limit settings of an :class:`Engine`.

    Attributes:
        encode_batch: most images per encoder call.
        max_queue: most distinct images waiting for the encoder (not counting the batch running).
        max_queue_bytes: most decoded pixel bytes waiting (a few 50 MP images weigh as much as many photos);
            one image is always admitted to an empty queue.
        decode_workers: threads for decoder calls.
        torch_threads: the engine's budget of torch (OpenMP) threads. The encoder and a lone decoder call use
            all of them; a decoder call that starts while others run (decodes or an encode) gets
            ``torch_threads // running``, at least 1 (:class:`~segany.warm_pool.ThreadShare`). ``None``: torch's
            thread count when the engine is made.
        prepare_workers: threads for hashing/decoding image bytes and for blocking cache tiers.
        image_limits: what uploaded images may be.
        max_prompts: prompts per segment call.
        max_points: points per prompt.
        mask_store_bytes: budget for low-res masks kept for ``mask_id`` references (0 disables them).
        remote_batches: with a remote encoder, micro-batches sent off at once (e.g. one per encoder replica);
            the local encoder runs one at a time.
    """

    encode_batch: int = 2
    max_queue: int = 64
    max_queue_bytes: int = 1 << 30
    decode_workers: int = 2
    torch_threads: int | None = None
    prepare_workers: int = 2
    image_limits: ImageLimits = DEFAULT_LIMITS
    max_prompts: int = 64
    max_points: int = MAX_POINTS_PER_PROMPT
    mask_store_bytes: int = 64 * 1024 * 1024
    remote_batches: int = 1


@dataclass(frozen=True)
class Embedded:
    """Result of :meth:`Engine.embed_bytes` and friends."""

    image_id: str
    embedding: ImageEmbedding
    cached: bool

    @property
    def original_size(self) -> tuple[int, int]:
        return self.embedding.original_size


@dataclass
class EngineStats:
    """Counters since start (and the queue depth now)."""

    encode_requests: int = 0
    encode_merged: int = 0
    encode_jobs: int = 0
    encode_batches: int = 0
    encode_images: int = 0
    encode_cancelled: int = 0
    encode_rejected: int = 0
    encode_seconds: float = 0.0
    decode_calls: int = 0
    decode_prompts: int = 0
    queue_depth: int = 0
    encoding: int = 0


#: An encoder outside this engine (see :class:`Engine`): images in, one embedding or exception per image out.
RemoteEncoder = Callable[[list[np.ndarray]], Awaitable[list["ImageEmbedding | BaseException"]]]


@dataclass(eq=False)
class _EncodeJob:
    key: str
    future: asyncio.Future
    waiters: int = 1
    image: np.ndarray | None = None
    nbytes: int = 0  # of ``image`` while queued
    state: str = "preparing"  # preparing -> queued -> encoding -> done | dropped
    queued_at: float = 0.0
    stages: dict[str, float] = field(default_factory=dict)


class Engine:
    """Embed images once, answer prompts many times; see the module docstring for the concurrency model.

    Args:
        predictor: the model wrapper (stateless, shared by all threads).
        cache: where embeddings live; its key is the image id.
        settings: queue sizes, limits and executors.
        encoder: where the queue's micro-batches are encoded, when not by ``predictor`` on this process's encode
            thread: a coroutine function taking a list of RGB images and returning one embedding (or the exception
            that image raised) per image, e.g. a call to a separate encoder deployment
            (:mod:`segany.service.ray_app`). The embeddings must come from the same weights: one with another model
            fingerprint fails its callers with :class:`ModelMismatchError`. Everything else (merging, queue limits,
            cache, cancellation) is the same.
    """

    def __init__(self, predictor: Predictor, cache: EmbeddingCache, settings: EngineSettings | None = None,
                 encoder: RemoteEncoder | None = None) -> None:
        self.predictor = predictor
        self._remote = encoder
        self.cache = cache
        self.settings = settings or EngineSettings()
        if self.settings.remote_batches < 1:
            raise ValueError(f"remote_batches must be >= 1, got {self.settings.remote_batches}")
        self._remote_slots = asyncio.Semaphore(self.settings.remote_batches)
        self._remote_tasks: set[asyncio.Task] = set()
        self.fingerprint = predictor.fingerprint
        self.stats = EngineStats()
        self.ready = False
        self._closed = False
        self._inline_cache = isinstance(cache, MemoryCache)
        # memory first, slower tiers behind it: the memory tier is read and written on the event loop
        self._memory_first = isinstance(cache, TieredCache) and isinstance(cache.tiers[0], MemoryCache)
        self._masks = MaskStore(self.settings.mask_store_bytes)
        self._jobs: dict[str, _EncodeJob] = {}
        self._queue: deque[_EncodeJob] = deque()
        self._queued_bytes = 0
        self._wakeup: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None
        self._encode_pool = ThreadPoolExecutor(1, thread_name_prefix="segany-encode")
        self._decode_pool = WarmThreadPool(self.settings.decode_workers, thread_name_prefix="segany-decode")
        # Concurrent encodes and decodes split the CPU threads; with the model on an accelerator they are left alone.
        self._threads = ThreadShare(self.settings.torch_threads, enabled=predictor.device.type == "cpu")
        self._prepare_pool = ThreadPoolExecutor(self.settings.prepare_workers, thread_name_prefix="segany-prepare")
        # Disk and Redis tier calls: their own threads, so a slow tier does not hold image hashing and decoding
        self._tier_pool = ThreadPoolExecutor(4, thread_name_prefix="segany-cache")

    # ------------------------------------------------------------------------------------------------ lifecycle
    def _ensure_worker(self) -> None:
        if self._closed:
            raise UnavailableError("the engine is shut down")
        if self._worker is None or self._worker.done():  # a loop that died (a bug) is replaced, not left dead
            if self._worker is not None and not self._worker.cancelled() and self._worker.exception() is not None:
                log.error("the encode loop had stopped: %r; restarting it", self._worker.exception())
            self._wakeup = asyncio.Event()
            # In a fresh context: the loop outlives the request that starts it and must not carry that request's
            # context variables (a framework may tie calls made under them to the request, and cancel them with it).
            self._worker = contextvars.Context().run(
                asyncio.get_running_loop().create_task, self._encode_loop(), name="segany-encode-loop"
            )

    async def warm_up(self) -> None:
        """One encode and one decode on a small synthetic image (first calls allocate and pick kernels)."""
        image = np.random.default_rng(0).integers(0, 256, (64, 96, 3), dtype=np.uint8)
        loop = asyncio.get_running_loop()
        if self._remote is not None:  # the remote encoder answers too (and with this model's fingerprint)
            (embedding,) = await self._encode_remote([image])
            if isinstance(embedding, BaseException):
                raise embedding
        else:
            embedding = await loop.run_in_executor(self._encode_pool, self._encode_one, image)
        prompt = Prompt(np.array([[48.0, 32.0]]), np.array([1]))
        await loop.run_in_executor(
            self._decode_pool, self._decode_sync, embedding, [prompt], True, OutputSpec(), False
        )
        self.ready = True

    async def close(self) -> None:
        """Stop the encode loop, fail queued jobs with UNAVAILABLE, release the executors."""
        self._closed = True
        self.ready = False
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
            except Exception:  # noqa: BLE001 - a loop that had died of a bug: shut down all the same
                log.exception("the encode loop had failed")
        for task in list(self._remote_tasks):
            task.cancel()
        await asyncio.gather(*self._remote_tasks, return_exceptions=True)
        for job in list(self._jobs.values()):
            job.state = "dropped"  # a job still being prepared (cache read, image decode) must not queue afterwards
            if not job.future.done():
                job.future.set_exception(UnavailableError("the server is shutting down; retry on another replica"))
                job.future.exception()  # mark retrieved: nobody may be waiting any more
        self._jobs.clear()
        self._queue.clear()
        self._queued_bytes = 0
        for pool in (self._encode_pool, self._decode_pool, self._prepare_pool, self._tier_pool):
            pool.shutdown(wait=False, cancel_futures=True)

    def queue_depth(self) -> int:
        return len(self._queue)

    # ------------------------------------------------------------------------------------------------ embedding
    async def embed_bytes(self, data: bytes) -> Embedded:
        """Embed image file bytes (JPEG/PNG/WebP/TIFF/BMP), through the cache and the encode queue."""
        loop = asyncio.get_running_loop()
        limit = self.settings.image_limits.max_bytes
        if len(data) > limit:  # before hashing: the hash of a huge upload is wasted work
            decode_image(data, self.settings.image_limits)  # raises the standard message
        with stage("hash"):
            digest = await loop.run_in_executor(self._prepare_pool, sha256_bytes, data)
        key = cache_key(digest, self.fingerprint, PREPROCESS_VERSION)
        return await self._embed(key, lambda: decode_image(data, self.settings.image_limits))

    async def embed_array(self, image: np.ndarray) -> Embedded:
        """Embed an in-memory image (any layout :func:`as_rgb_uint8` takes); the id hashes the uint8 RGB pixels."""
        rgb = as_rgb_uint8(image)
        height, width = rgb.shape[:2]
        limits = self.settings.image_limits
        if height * width > limits.max_pixels or max(height, width) > limits.max_side:
            from segany.errors import ImageTooLargeError

            raise ImageTooLargeError(
                f"image is {width}x{height} = {width * height} pixels; at most {limits.max_pixels} pixels and "
                f"{limits.max_side} pixels per side are accepted"
            )
        loop = asyncio.get_running_loop()
        with stage("hash"):
            digest = await loop.run_in_executor(self._prepare_pool, _hash_pixels, rgb)
        key = cache_key(digest, self.fingerprint, PREPROCESS_VERSION)
        return await self._embed(key, lambda: rgb)

    async def lookup(self, image_id: str) -> ImageEmbedding:
        """The embedding of an id returned earlier (waits if that image is being encoded right now)."""
        if not isinstance(image_id, str) or not _IMAGE_ID.fullmatch(image_id):
            raise InvalidInputError(
                f"image_id must be the 64 lowercase hex characters an Embed call returned, got {image_id!r:.80}"
            )
        job = self._jobs.get(image_id)
        if job is not None:
            job.waiters += 1  # counted like any caller: giving up must not drop the job for the others
            return (await self._wait(job))[0]
        with stage("cache"):
            embedding = await self._cache_get(image_id)
        if embedding is None:
            raise NotFoundError(
                f"image id {image_id} is not in the embedding cache (never embedded here, or evicted): "
                "call Embed with the image bytes first"
            )
        return embedding

    async def embed_id(self, image_id: str) -> Embedded:
        return Embedded(image_id, await self.lookup(image_id), True)

    async def _embed(self, key: str, load_image) -> Embedded:
        self._ensure_worker()
        self.stats.encode_requests += 1
        job = self._jobs.get(key)
        if job is not None:
            self.stats.encode_merged += 1
            job.waiters += 1
            embedding, cached = await self._wait(job)
            return Embedded(key, embedding, cached)
        job = _EncodeJob(key, asyncio.get_running_loop().create_future())
        self._jobs[key] = job
        # Preparing runs as its own task: joiners must not depend on the first caller staying around.
        task = asyncio.get_running_loop().create_task(self._prepare(job, load_image))
        task.add_done_callback(_log_unexpected)
        embedding, cached = await self._wait(job)
        return Embedded(key, embedding, cached)

    async def _prepare(self, job: _EncodeJob, load_image) -> None:
        loop = asyncio.get_running_loop()
        try:
            start = time.perf_counter()
            embedding = await self._cache_get(job.key)
            job.stages["cache"] = time.perf_counter() - start
            if job.state == "dropped":
                return
            if embedding is not None:
                self._finish(job, (embedding, True))
                return
            start = time.perf_counter()
            image = await loop.run_in_executor(self._prepare_pool, load_image)
            job.stages["decode_image"] = time.perf_counter() - start
            if job.state == "dropped":
                return
            if len(self._queue) >= self.settings.max_queue:
                self.stats.encode_rejected += 1
                raise ResourceExhaustedError(
                    f"the encode queue is full ({len(self._queue)} images waiting, at most "
                    f"{self.settings.max_queue}); retry later"
                )
            if self._queue and self._queued_bytes + image.nbytes > self.settings.max_queue_bytes:
                self.stats.encode_rejected += 1
                raise ResourceExhaustedError(
                    f"the encode queue is full ({self._queued_bytes} bytes of decoded images waiting, this one "
                    f"{image.nbytes}, at most {self.settings.max_queue_bytes}); retry later"
                )
            job.image = image
            job.nbytes = image.nbytes
            job.state = "queued"
            job.queued_at = time.perf_counter()
            self._queue.append(job)
            self._queued_bytes += job.nbytes
            self.stats.encode_jobs += 1
            assert self._wakeup is not None
            self._wakeup.set()
        except Exception as exc:  # noqa: BLE001 - delivered to every waiter of the job
            self._finish(job, exc)

    async def _wait(self, job: _EncodeJob) -> tuple[ImageEmbedding, bool]:
        try:
            return await asyncio.shield(job.future)
        except asyncio.CancelledError:
            job.waiters -= 1
            if job.waiters == 0 and job.state in ("preparing", "queued"):
                self._drop(job)
            raise
        finally:
            stages = STAGES.get()
            if stages is not None:
                for name, seconds in job.stages.items():
                    stages[name] = stages.get(name, 0.0) + seconds

    def _drop(self, job: _EncodeJob) -> None:
        """Forget a job nobody waits for any more (before it reaches the encoder)."""
        if job.state == "queued":
            with contextlib.suppress(ValueError):
                self._queue.remove(job)
                self._queued_bytes -= job.nbytes
        job.state = "dropped"
        job.image = None
        self.stats.encode_cancelled += 1
        if self._jobs.get(job.key) is job:
            del self._jobs[job.key]
        if not job.future.done():
            job.future.cancel()

    def _finish(self, job: _EncodeJob, outcome) -> None:
        if self._jobs.get(job.key) is job:
            del self._jobs[job.key]
        job.state = "done"
        job.image = None
        if job.future.done():
            return
        if isinstance(outcome, BaseException):
            job.future.set_exception(outcome)
            if job.waiters == 0:
                job.future.exception()
        else:
            job.future.set_result(outcome)

    async def _encode_loop(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._wakeup is not None
        while True:
            if not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            if self._remote is not None:
                await self._remote_slots.acquire()  # at most ``remote_batches`` batches away at once
                if not self._queue:  # emptied (callers gone) while waiting for a slot
                    self._remote_slots.release()
                    continue
            batch: list[_EncodeJob] = []
            while self._queue and len(batch) < self.settings.encode_batch:
                job = self._queue.popleft()
                self._queued_bytes -= job.nbytes
                batch.append(job)
            now = time.perf_counter()
            for job in batch:
                job.state = "encoding"
                job.stages["queue_wait"] = now - job.queued_at
            if self._remote is not None:  # sent off: the loop goes on to the next batch while this one is away
                encode = functools.partial(self._encode_remote, [job.image for job in batch])
                task = loop.create_task(self._run_batch(batch, now, encode))
                self._remote_tasks.add(task)
                task.add_done_callback(self._remote_done)
                continue
            await self._run_batch(batch, now, functools.partial(
                loop.run_in_executor, self._encode_pool, self._encode_sync, batch))

    async def _run_batch(self, batch: list[_EncodeJob], started: float, encode: Callable[[], Awaitable[list]]) -> None:
        """Encode ``batch`` with ``encode()`` (one outcome per job) and hand the outcomes out. Whatever goes wrong
        (a bug), this batch's callers get an error and the loop and the queue go on."""
        self.stats.encoding += len(batch)
        try:
            try:
                outcomes = await encode()
            finally:
                self.stats.encoding -= len(batch)
            await self._complete(batch, outcomes, started)
        except Exception:  # noqa: BLE001 - a bug: this batch fails (below), the rest goes on
            log.exception("encode batch failed")
        finally:
            self._fail_unfinished(batch)

    def _fail_unfinished(self, batch: list[_EncodeJob]) -> None:
        """Whatever went wrong, no caller of ``batch`` is left waiting."""
        for job in batch:
            if job.state != "done":
                message = ("the server is shutting down; retry on another replica" if self._closed
                           else "the image encoder call failed; retry")
                self._finish(job, UnavailableError(message))

    def _remote_done(self, task: asyncio.Task) -> None:
        self._remote_tasks.discard(task)
        self._remote_slots.release()  # here, not in the task: a task cancelled before it starts still frees its slot
        _log_unexpected(task)

    async def _complete(self, batch: list[_EncodeJob], outcomes: list, started: float) -> None:
        elapsed = time.perf_counter() - started
        self.stats.encode_batches += 1
        self.stats.encode_images += len(batch)
        self.stats.encode_seconds += elapsed
        async def stored(job: _EncodeJob, outcome):
            job.stages["encode"] = elapsed
            if not isinstance(outcome, BaseException):
                try:
                    await self._cache_put(job.key, outcome)
                except Exception:  # noqa: BLE001 - a cache is an optimisation
                    log.exception("cache put failed for %s", job.key)
                outcome = (outcome, False)
            self._finish(job, outcome)

        # the images' writes at once: one slow tier write does not hold the batch's other images
        await asyncio.gather(*(stored(job, outcome) for job, outcome in zip(batch, outcomes)))

    async def _encode_remote(self, images: list[np.ndarray]) -> list:
        """The remote encoder's outcomes for ``images``; its failure as a whole fails each image with UNAVAILABLE."""
        assert self._remote is not None
        try:
            outcomes = list(await self._remote(images))
            if len(outcomes) != len(images):
                raise RuntimeError(f"it returned {len(outcomes)} results for {len(images)} images")
        except asyncio.CancelledError as exc:
            task = asyncio.current_task()
            if self._closed or (task is not None and getattr(task, "cancelling", lambda: 0)()):
                raise  # this task itself is being cancelled (shutdown, or a caller of warm_up): let it end
            # the call was cancelled, not this loop (e.g. a remote framework cancelled it): fail the batch, go on
            log.warning("the remote encoder call was cancelled")
            return [UnavailableError(f"the image encoder call was cancelled ({exc or 'no reason given'}); retry")
                    for _ in images]
        except Exception as exc:  # noqa: BLE001 - the jobs' outcome: the callers may retry elsewhere
            log.exception("the remote encoder failed")
            return [UnavailableError(f"the image encoder is unavailable: {exc}; retry later") for _ in images]
        for i, outcome in enumerate(outcomes):
            if isinstance(outcome, ImageEmbedding) and outcome.model_fingerprint != self.fingerprint:
                outcomes[i] = ModelMismatchError(
                    f"the image encoder runs model {outcome.model_fingerprint}, this decoder {self.fingerprint}: "
                    "deploy both from the same weights"
                )
            elif isinstance(outcome, BaseException) and not isinstance(outcome, Exception):
                # e.g. a CancelledError of the remote side's own call: not this caller's cancellation
                outcomes[i] = UnavailableError(f"the image encoder's call for this image ended with "
                                               f"{type(outcome).__name__}; retry")
            elif not isinstance(outcome, (ImageEmbedding, Exception)):
                outcomes[i] = UnavailableError(f"the image encoder returned a {type(outcome).__name__}")
        return outcomes

    def _encode_one(self, image: np.ndarray) -> ImageEmbedding:
        with self._threads.use(claim_all=True):
            return self.predictor.encode(image)

    def _encode_sync(self, batch: list[_EncodeJob]) -> list:
        """Embeddings for a batch; when the batch fails, each image alone, so one bad image fails only itself.

        The encoder takes all the torch threads (an encode is long and its caller waits for it), and counts: a
        decode that starts during it runs on a share.
        """
        with self._threads.use(claim_all=True):
            return encode_isolated(self.predictor, [job.image for job in batch], [job.key for job in batch])

    async def _cache_get(self, key: str) -> ImageEmbedding | None:
        """The memory tier answers on the event loop; only its misses wait on the slower tiers, on their own
        threads (a Redis that hangs then delays new images, never a click on an image held in memory)."""
        if self._inline_cache:
            return self.cache.get(key)
        loop = asyncio.get_running_loop()
        if self._memory_first:
            hit = self.cache.get_first(key)
            return hit if hit is not None else await loop.run_in_executor(self._tier_pool, self.cache.get_rest, key)
        return await loop.run_in_executor(self._tier_pool, self.cache.get, key)

    async def _cache_put(self, key: str, embedding: ImageEmbedding) -> None:
        """Into memory at once; the slower (shared) tiers are written before the caller gets its id, so another
        replica that is asked about the image next finds it."""
        if self._inline_cache:
            self.cache.put(key, embedding)
            return
        loop = asyncio.get_running_loop()
        if self._memory_first:
            self.cache.put_first(key, embedding)
            await loop.run_in_executor(self._tier_pool, self.cache.put_rest, key, embedding)
        else:
            await loop.run_in_executor(self._tier_pool, self.cache.put, key, embedding)

    # ------------------------------------------------------------------------------------------------ decoding
    def check_prompt_count(self, count: int) -> None:
        if count == 0:
            raise InvalidPromptError("no prompts given: send at least one prompt (points, a box or a mask)")
        if count > self.settings.max_prompts:
            raise InvalidPromptError(
                f"too many prompts in one call: {count}, at most {self.settings.max_prompts} allowed"
            )

    def mask_logits(self, mask_id: str) -> np.ndarray:
        """(256, 256) float32 logits kept under ``mask_id`` by an earlier call with ``keep_masks``."""
        if not isinstance(mask_id, str) or not _MASK_ID.fullmatch(mask_id):
            raise InvalidInputError(f"mask_id must be an id a Segment call returned (m + 32 hex), got {mask_id!r:.80}")
        entry = self._masks.get(mask_id)
        if entry is None:
            raise NotFoundError(
                f"mask id {mask_id} is not held any more (kept masks are evicted oldest first): "
                "send the low-res logits instead, or segment again"
            )
        fingerprint, logits = entry
        if fingerprint != self.fingerprint:
            raise ModelMismatchError(f"mask {mask_id} was made by model {fingerprint}, this server runs "
                                     f"{self.fingerprint}")
        return logits.astype(np.float32)

    async def segment(
        self,
        embedding: ImageEmbedding,
        prompts: Sequence[Prompt],
        multimask: bool = True,
        spec: OutputSpec | None = None,
        keep_masks: bool = False,
    ) -> list[PromptOutput]:
        """Decode validated prompts on one embedding; one :class:`PromptOutput` per prompt, in order."""
        spec = (spec or OutputSpec()).check()
        self.check_prompt_count(len(prompts))
        if keep_masks and not self._masks.can_hold_one():
            raise InvalidInputError("this server keeps no masks for mask ids (its mask store budget is 0): ask for "
                                    "low_res_logits and send them back as mask logits instead")
        if self._closed:
            raise UnavailableError("the engine is shut down")
        self.stats.decode_calls += 1
        self.stats.decode_prompts += len(prompts)
        loop = asyncio.get_running_loop()
        with stage("decode"):
            return await loop.run_in_executor(
                self._decode_pool, self._decode_sync, embedding, list(prompts), multimask, spec, keep_masks
            )

    def _decode_sync(
        self, embedding: ImageEmbedding, prompts: list[Prompt], multimask: bool, spec: OutputSpec, keep: bool
    ) -> list[PromptOutput]:
        with self._threads.use(), torch.inference_mode():
            low_res, scores = self.predictor.predict_low_res(embedding, prompts, multimask)
            outputs = render_outputs(
                low_res, scores, embedding.input_size, embedding.original_size, self.predictor.image_size, spec,
                self.predictor.precision,
            )
            if keep:
                low_np = low_res.float().cpu().numpy()
                for b, out in enumerate(outputs):
                    for cand in out.candidates:
                        cand.mask_id = self._masks.put(self.fingerprint, low_np[b, cand.index])
        return outputs


def encode_isolated(predictor: Predictor, images: list[np.ndarray], names: Sequence[str]) -> list:
    """Embeddings of ``images`` from one encoder call; when that call fails, each image alone, so one bad image
    fails only itself (its exception takes its place in the list). ``names`` label the images in the log. Shared by
    the engine's encode thread and the Ray app's encoder replicas."""
    try:
        return list(predictor.encode_batch(images))
    except Exception as exc:  # noqa: BLE001 - becomes the image's outcome, never the caller's end
        if len(images) == 1:
            log.exception("encoder failed on image %s", names[0])
            return [exc]
    return [encode_isolated(predictor, [image], [name])[0] for image, name in zip(images, names)]


def _hash_pixels(rgb: np.ndarray) -> str:
    digest = hashlib.sha256(f"segany-raw-rgb8:{rgb.shape[0]}x{rgb.shape[1]}:".encode())
    digest.update(np.ascontiguousarray(rgb).data)
    return digest.hexdigest()


def _log_unexpected(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("engine task failed", exc_info=task.exception())


__all__ = ["Embedded", "Engine", "EngineSettings", "EngineStats", "LOW_RES_SIZE", "STAGES", "encode_isolated", "stage"]
