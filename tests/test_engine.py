"""Engine: one encode per image however many concurrent callers, micro-batches, bounded queue, cancellation,
decodes that do not wait behind encodes, ids and errors."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import threading
import time

import numpy as np
import pytest
from PIL import Image

from segany.cache import MemoryCache
from segany.engine import STAGES, Engine, EngineSettings
from segany.errors import InvalidInputError, InvalidPromptError, NotFoundError, ResourceExhaustedError
from segany.mask_outputs import OutputSpec
from segany.predictor import Predictor
from segany.prompts import make_prompt
from tests.conftest import random_image


class CountingPredictor(Predictor):
    """The real predictor, counting encoder calls and optionally slowed down (or held) inside the encoder."""

    def __init__(self, model, delay: float = 0.0) -> None:
        super().__init__(model)
        self.delay = delay
        self.calls: list[int] = []
        self.gate: threading.Event | None = None
        self.entered = threading.Event()

    def encode_batch(self, images):
        self.calls.append(len(images))
        self.entered.set()
        if self.gate is not None:
            self.gate.wait(30)
        if self.delay:
            time.sleep(self.delay)
        return super().encode_batch(images)


def png(seed: int, size=(48, 64)) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(random_image(*size, seed=seed)).save(buf, format="PNG")
    return buf.getvalue()


def make_engine(model, **settings) -> tuple[Engine, CountingPredictor]:
    predictor = CountingPredictor(model)
    return Engine(predictor, MemoryCache(64 << 20), EngineSettings(**settings)), predictor


async def hold_encoder(engine: Engine, predictor: CountingPredictor, data: bytes) -> asyncio.Future:
    """Start embedding ``data`` and return once the encoder is inside it, held at ``predictor.gate``."""
    started = asyncio.ensure_future(engine.embed_bytes(data))
    await asyncio.get_running_loop().run_in_executor(None, predictor.entered.wait, 10)
    return started


async def until_queued(engine: Engine, depth: int) -> None:
    while engine.queue_depth() < depth:
        await asyncio.sleep(0.01)


def test_sixteen_concurrent_embeds_of_one_image_encode_once(tiny_model):
    engine, predictor = make_engine(tiny_model)
    data = png(1)

    async def main():
        results = await asyncio.gather(*(engine.embed_bytes(data) for _ in range(16)))
        again = await engine.embed_bytes(data)
        await engine.close()
        return results, again

    results, again = asyncio.run(main())
    assert predictor.calls == [1]
    assert len({r.image_id for r in results}) == 1
    assert again.cached and again.image_id == results[0].image_id
    assert engine.stats.encode_merged == 15


def test_distinct_images_are_micro_batched(tiny_model):
    engine, predictor = make_engine(tiny_model, encode_batch=4)
    predictor.gate = threading.Event()
    images = [png(s) for s in range(6)]

    async def main():
        first = await hold_encoder(engine, predictor, images[0])
        rest = [asyncio.ensure_future(engine.embed_bytes(d)) for d in images[1:]]
        await until_queued(engine, 5)  # all five decoded and queued behind the held first batch
        predictor.gate.set()
        out = await asyncio.gather(first, *rest)
        await engine.close()
        return out

    out = asyncio.run(main())
    assert predictor.calls == [1, 4, 1]
    assert len({r.image_id for r in out}) == 6


def test_full_queue_is_resource_exhausted(tiny_model):
    engine, predictor = make_engine(tiny_model, max_queue=2, encode_batch=1)
    predictor.gate = threading.Event()

    async def main():
        first = await hold_encoder(engine, predictor, png(0))
        queued = [asyncio.ensure_future(engine.embed_bytes(png(s))) for s in (1, 2)]
        await until_queued(engine, 2)
        with pytest.raises(ResourceExhaustedError, match=r"encode queue is full \(2 images waiting, at most 2\)"):
            await engine.embed_bytes(png(3))
        # joining an image already queued is not a new job: accepted
        joined = asyncio.ensure_future(engine.embed_bytes(png(1)))
        predictor.gate.set()
        await asyncio.gather(first, *queued, joined)
        await engine.close()

    asyncio.run(main())
    assert engine.stats.encode_rejected == 1


def test_queue_is_bounded_in_bytes_too(tiny_model):
    engine, predictor = make_engine(tiny_model, max_queue_bytes=48 * 64 * 3 + 1, encode_batch=1)
    predictor.gate = threading.Event()

    async def main():
        first = await hold_encoder(engine, predictor, png(0))
        queued = asyncio.ensure_future(engine.embed_bytes(png(1)))  # 9216 bytes: fits the empty queue
        await until_queued(engine, 1)
        with pytest.raises(ResourceExhaustedError, match="9216 bytes of decoded images waiting, this one 9216"):
            await engine.embed_bytes(png(2))
        predictor.gate.set()
        await asyncio.gather(first, queued)
        assert engine._queued_bytes == 0
        await engine.close()

    asyncio.run(main())


def test_cancelled_callers_free_their_queued_work(tiny_model):
    engine, predictor = make_engine(tiny_model, encode_batch=1)
    predictor.gate = threading.Event()

    async def main():
        first = await hold_encoder(engine, predictor, png(0))
        doomed = [asyncio.ensure_future(engine.embed_bytes(png(9))) for _ in range(3)]
        await until_queued(engine, 1)
        for task in doomed:
            task.cancel()
        await asyncio.gather(*doomed, return_exceptions=True)
        assert engine.queue_depth() == 0
        predictor.gate.set()
        await first
        await engine.close()

    asyncio.run(main())
    assert predictor.calls == [1]  # the cancelled image never reached the encoder
    assert engine.stats.encode_cancelled == 1


def test_a_cancelled_lookup_does_not_drop_an_embed_it_joined(tiny_model):
    engine, predictor = make_engine(tiny_model, encode_batch=1)
    predictor.gate = threading.Event()

    async def main():
        first = await hold_encoder(engine, predictor, png(0))
        wanted = asyncio.ensure_future(engine.embed_bytes(png(7)))  # queued behind the first image
        await until_queued(engine, 1)
        (image_id,) = [key for key, job in engine._jobs.items() if job.state == "queued"]
        looker = asyncio.ensure_future(engine.lookup(image_id))  # e.g. a click that arrived early, then gave up
        await asyncio.sleep(0.05)
        looker.cancel()
        await asyncio.gather(looker, return_exceptions=True)
        predictor.gate.set()
        await first
        return await wanted  # its caller is still waiting: the job must not have been dropped

    embedded = asyncio.run(main())
    assert embedded.image_id and not embedded.cached
    assert predictor.calls == [1, 1]


def test_decode_does_not_wait_behind_an_encode(tiny_model):
    engine, predictor = make_engine(tiny_model)
    prompt = make_prompt((48, 64), [[10, 10]], [1])

    async def main():
        cached = await engine.embed_bytes(png(0))
        predictor.gate = threading.Event()
        predictor.entered.clear()
        slow = await hold_encoder(engine, predictor, png(1))
        out = await asyncio.wait_for(engine.segment(cached.embedding, [prompt]), 20)
        assert not slow.done()  # the encoder is still held while the decode finished
        predictor.gate.set()
        await slow
        await engine.close()
        return out

    out = asyncio.run(main())
    assert len(out) == 1 and len(out[0].candidates) == 3


def test_segment_matches_the_predictor(tiny_model):
    engine, predictor = make_engine(tiny_model)
    image = random_image(40, 56, seed=3)

    async def main():
        embedded = await engine.embed_array(image)
        prompts = [make_prompt((40, 56), [[20, 10]], [1]), make_prompt((40, 56), box=[5, 5, 30, 30])]
        spec = OutputSpec(masks=True, low_res_logits=True, rle=False, bbox=False)
        out = await engine.segment(embedded.embedding, prompts, True, spec)
        best = await engine.segment(embedded.embedding, prompts[:1], True, OutputSpec(masks=True, best_only=True))
        await engine.close()
        return embedded, out, best

    embedded, out, best = asyncio.run(main())
    ref = predictor.predict(embedded.embedding, points=[[20, 10]], labels=[1], multimask=True)
    np.testing.assert_array_equal(np.stack([c.mask for c in out[0].candidates]), ref.masks)
    np.testing.assert_allclose(out[0].scores, ref.scores, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out[0].candidates[1].low_res_logits, ref.low_res_logits[1], rtol=1e-5, atol=1e-5)
    assert [c.index for c in best[0].candidates] == [ref.best]
    np.testing.assert_array_equal(best[0].candidates[0].mask, ref.masks[ref.best])


def test_ids_errors_and_stages(tiny_model):
    engine, _ = make_engine(tiny_model, max_prompts=2)
    prompt = make_prompt((48, 64), [[1, 1]], [1])

    async def main():
        STAGES.set({})
        embedded = await engine.embed_bytes(png(5))
        stages = dict(STAGES.get())
        assert (await engine.lookup(embedded.image_id)) is not None
        with pytest.raises(NotFoundError, match="call Embed with the image bytes first"):
            await engine.lookup("0" * 64)
        with pytest.raises(InvalidInputError, match="64 lowercase hex"):
            await engine.lookup("../../etc/passwd")
        with pytest.raises(InvalidPromptError, match="too many prompts in one call: 3, at most 2"):
            await engine.segment(embedded.embedding, [prompt] * 3)
        with pytest.raises(NotFoundError, match="not held any more"):
            engine.mask_logits("m" + "0" * 32)
        await engine.close()
        return embedded, stages

    embedded, stages = asyncio.run(main())
    assert len(embedded.image_id) == 64
    assert {"hash", "cache", "decode_image", "queue_wait", "encode"} <= set(stages)


def test_same_pixels_same_id_different_bytes_different_id(tiny_model):
    engine, _ = make_engine(tiny_model)
    image = random_image(32, 32, seed=7)

    async def main():
        a = await engine.embed_array(image)
        b = await engine.embed_array(image.copy())
        c = await engine.embed_bytes(png(7, (32, 32)))
        await engine.close()
        return a, b, c

    a, b, c = asyncio.run(main())
    assert a.image_id == b.image_id and b.cached
    assert c.image_id != a.image_id  # file bytes and raw pixels hash differently: never a false hit


def test_one_bad_image_in_a_batch_fails_only_itself(tiny_model):
    engine, predictor = make_engine(tiny_model, encode_batch=4)
    predictor.gate = threading.Event()
    original = Predictor.encode_batch

    def picky(self, images):
        if any(im.shape[0] == 13 for im in images):
            raise RuntimeError("encoder exploded")
        return original(self, images)

    async def main():
        first = await hold_encoder(engine, predictor, png(0))
        good = asyncio.ensure_future(engine.embed_bytes(png(1)))
        bad = asyncio.ensure_future(engine.embed_bytes(png(2, (13, 20))))
        await until_queued(engine, 2)
        predictor.gate.set()
        results = await asyncio.gather(first, good, bad, return_exceptions=True)
        await engine.close()
        return results

    Predictor.encode_batch = picky
    try:
        first, good, bad = asyncio.run(main())
    finally:
        Predictor.encode_batch = original
    assert len(first.image_id) == 64 and len(good.image_id) == 64
    assert isinstance(bad, RuntimeError) and "encoder exploded" in str(bad)


class ThreadCountPredictor(Predictor):
    """The real predictor, recording torch's thread count inside each decode; ``barrier`` holds decodes together."""

    def __init__(self, model) -> None:
        super().__init__(model)
        self.seen: list[int] = []
        self.barrier: threading.Barrier | None = None

    def predict_low_res(self, *args, **kwargs):
        import torch

        self.seen.append(torch.get_num_threads())
        if self.barrier is not None:
            self.barrier.wait(20)
        return super().predict_low_res(*args, **kwargs)


def test_concurrent_decodes_share_the_decode_threads(tiny_model):
    import torch

    before = torch.get_num_threads()  # the share's last user sets its budget as the default for new threads
    predictor = ThreadCountPredictor(tiny_model)
    engine = Engine(predictor, MemoryCache(64 << 20), EngineSettings(decode_workers=2, torch_threads=4))
    prompt = make_prompt((48, 64), [[10, 10]], [1])

    async def main():
        embedding = (await engine.embed_bytes(png(0))).embedding
        await engine.segment(embedding, [prompt])  # alone: all four threads
        predictor.barrier = threading.Barrier(2)  # two decodes inside the decoder at once: the second gets half
        together = await asyncio.gather(engine.segment(embedding, [prompt]), engine.segment(embedding, [prompt]))
        predictor.barrier = None
        await engine.segment(embedding, [prompt])  # alone again: back to four
        await engine.close()
        return together

    try:
        together = asyncio.run(main())
    finally:
        torch.set_num_threads(before)
    assert predictor.seen[0] == 4
    assert sorted(predictor.seen[1:3]) == [2, 4]  # the first to start had all four; the second joined with its share
    assert predictor.seen[3] == 4
    # Another thread count may sum in another order: the same answer to float rounding.
    np.testing.assert_allclose(together[0][0].scores, together[1][0].scores, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------------ remote encoder
class FakeRemoteEncoder:
    """An encoder "elsewhere": another predictor on the same weights, counting calls; can fail or lie."""

    def __init__(self, model, fingerprint: str | None = None, fail: bool = False, cancel_first: bool = False):
        self.predictor = Predictor(model)
        self.calls: list[int] = []
        self.fingerprint = fingerprint
        self.fail = fail
        self.cancel_first = cancel_first
        self.running = self.most_running = 0

    async def __call__(self, images):
        self.calls.append(len(images))
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            await asyncio.sleep(0.05)  # a round trip: concurrent callers join the job meanwhile
        finally:
            self.running -= 1
        if self.fail:
            raise ConnectionError("encoder replica died")
        if self.cancel_first:  # the remote call was cancelled by someone else (e.g. with an unrelated request)
            self.cancel_first = False
            raise asyncio.CancelledError("the request this call was tied to was cancelled")
        out = []
        for image in images:
            if image.shape[0] == 13:  # stands for an image the encoder cannot take
                out.append(InvalidInputError("cannot encode this one"))
                continue
            embedding = self.predictor.encode(image)
            if self.fingerprint is not None:
                embedding = dataclasses.replace(embedding, model_fingerprint=self.fingerprint)
            out.append(embedding)
        return out


def test_a_remote_encoder_does_the_encodes_and_the_engine_the_rest(tiny_model):
    predictor = CountingPredictor(tiny_model)
    remote = FakeRemoteEncoder(tiny_model)
    engine = Engine(predictor, MemoryCache(64 << 20), EngineSettings(encode_batch=4), encoder=remote)
    data = png(3)

    async def main():
        await engine.warm_up()
        assert remote.calls == [1] and engine.ready
        results = await asyncio.gather(*(engine.embed_bytes(data) for _ in range(8)))  # merged into one job
        assert len({r.image_id for r in results}) == 1 and remote.calls == [1, 1]
        again = await engine.embed_bytes(data)
        assert again.cached and remote.calls == [1, 1]  # the engine's cache answers
        embedding = await engine.lookup(again.image_id)
        prompt = make_prompt(embedding.original_size, [[20, 10]], [1])
        (out,) = await engine.segment(embedding, [prompt], True, OutputSpec(rle=False, bbox=False))
        pixels = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        ref = remote.predictor.predict(remote.predictor.encode(pixels), points=[[20, 10]], labels=[1], multimask=True)
        np.testing.assert_allclose([c.score for c in out.candidates], ref.scores, atol=1e-5)
        # a bad image fails only itself
        bad = random_image(13, 20, seed=1)
        good = random_image(30, 20, seed=2)
        res = await asyncio.gather(engine.embed_array(bad), engine.embed_array(good), return_exceptions=True)
        assert isinstance(res[0], InvalidInputError) and not isinstance(res[1], BaseException)
        await engine.close()

    asyncio.run(main())
    assert predictor.calls == []  # this process never ran the image encoder


def test_a_failing_or_foreign_remote_encoder_is_a_clear_error(tiny_model):
    from segany.errors import ModelMismatchError, UnavailableError

    async def main(remote):
        engine = Engine(Predictor(tiny_model), MemoryCache(64 << 20), encoder=remote)
        try:
            return await asyncio.gather(engine.embed_bytes(png(4)), return_exceptions=True)
        finally:
            await engine.close()

    (failed,) = asyncio.run(main(FakeRemoteEncoder(tiny_model, fail=True)))
    assert isinstance(failed, UnavailableError) and "encoder replica died" in str(failed)
    (foreign,) = asyncio.run(main(FakeRemoteEncoder(tiny_model, fingerprint="other-weights")))
    assert isinstance(foreign, ModelMismatchError) and "other-weights" in str(foreign)

    async def warm(remote):
        engine = Engine(Predictor(tiny_model), MemoryCache(64 << 20), encoder=remote)
        try:
            await engine.warm_up()
        finally:
            await engine.close()

    with pytest.raises(ModelMismatchError, match="same weights"):  # a mismatched deployment never turns ready
        asyncio.run(warm(FakeRemoteEncoder(tiny_model, fingerprint="other-weights")))


def test_remote_batches_go_out_concurrently_and_a_cancelled_call_fails_only_its_batch(tiny_model):
    from segany.errors import UnavailableError

    remote = FakeRemoteEncoder(tiny_model, cancel_first=True)
    engine = Engine(Predictor(tiny_model), MemoryCache(64 << 20), EngineSettings(encode_batch=1, remote_batches=3),
                    encoder=remote)

    async def main():
        first = await asyncio.gather(engine.embed_bytes(png(20)), return_exceptions=True)
        results = await asyncio.gather(*(engine.embed_bytes(png(21 + i)) for i in range(6)))
        await engine.close()
        return first, results

    (first,), results = asyncio.run(asyncio.wait_for(main(), 60))  # a dead encode loop would hang, not fail
    assert isinstance(first, UnavailableError) and "cancelled" in str(first)  # the loop survived the cancellation
    assert len({r.image_id for r in results}) == 6 and not any(r.cached for r in results)
    assert remote.most_running == 3  # three batches away at once, never more


def test_remote_engine_guards(tiny_model):
    """A zero slot count is refused; a bug after the remote call fails the batch's callers instead of leaving them
    waiting; cancelling a caller of warm_up cancels it (the engine does not swallow its own cancellation)."""
    from segany.errors import UnavailableError

    with pytest.raises(ValueError, match="remote_batches"):
        Engine(Predictor(tiny_model), MemoryCache(1 << 20), EngineSettings(remote_batches=0),
               encoder=FakeRemoteEncoder(tiny_model))

    engine = Engine(Predictor(tiny_model), MemoryCache(64 << 20), encoder=FakeRemoteEncoder(tiny_model))

    async def broken_complete(*args):
        raise RuntimeError("a bug")

    engine._complete = broken_complete

    async def main():
        outcome = await asyncio.gather(engine.embed_bytes(png(30)), return_exceptions=True)
        warm = asyncio.ensure_future(engine.warm_up())
        await asyncio.sleep(0.01)
        warm.cancel()
        await asyncio.gather(warm, return_exceptions=True)
        await engine.close()
        return outcome[0], warm

    failed, warm = asyncio.run(asyncio.wait_for(main(), 60))
    assert isinstance(failed, UnavailableError)
    assert warm.cancelled()


def test_a_bug_after_a_local_encode_fails_only_that_batch_and_the_queue_goes_on(tiny_model):
    from segany.errors import UnavailableError

    engine, _ = make_engine(tiny_model, encode_batch=1)
    real_complete = engine._complete

    async def broken_once(*args):
        engine._complete = real_complete
        raise RuntimeError("a bug")

    engine._complete = broken_once

    async def main():
        # B waits in the queue behind A: when A's batch fails, the loop must go on to B (no new call restarts it)
        outcomes = await asyncio.gather(engine.embed_bytes(png(40)), engine.embed_bytes(png(41)),
                                        return_exceptions=True)
        await engine.close()
        return outcomes

    outcomes = asyncio.run(asyncio.wait_for(main(), 60))  # whichever was prepared first went in first
    failed = [o for o in outcomes if isinstance(o, BaseException)]
    assert len(failed) == 1 and isinstance(failed[0], UnavailableError) and "encoder call failed" in str(failed[0])
    assert [o.image_id for o in outcomes if not isinstance(o, BaseException)]


def test_close_during_an_encode_says_the_server_is_shutting_down(tiny_model):
    from segany.errors import UnavailableError

    engine, predictor = make_engine(tiny_model)
    predictor.gate = threading.Event()

    async def main():
        caller = await hold_encoder(engine, predictor, png(42))
        await engine.close()
        predictor.gate.set()
        return (await asyncio.gather(caller, return_exceptions=True))[0]

    outcome = asyncio.run(asyncio.wait_for(main(), 60))
    assert isinstance(outcome, UnavailableError) and "shutting down" in str(outcome)


def test_a_remote_per_image_outcome_that_is_no_exception_of_ours_is_unavailable(tiny_model):
    """A remote encoder built on asyncio.gather(..., return_exceptions=True) may hand back a CancelledError for one
    image; the caller must get UNAVAILABLE, not a cancellation that looks like its own."""
    from segany.errors import UnavailableError

    local = Predictor(tiny_model)

    async def remote(images):
        return [asyncio.CancelledError() for _ in images]

    async def main():
        engine = Engine(local, MemoryCache(64 << 20), encoder=remote)
        try:
            return await asyncio.gather(engine.embed_bytes(png(31)), return_exceptions=True)
        finally:
            await engine.close()

    (outcome,) = asyncio.run(main())
    assert isinstance(outcome, UnavailableError) and "CancelledError" in str(outcome)


def test_close_while_an_image_is_being_decoded_queues_nothing_after(tiny_model, monkeypatch):
    import segany.engine as engine_module
    from segany.errors import UnavailableError

    gate = threading.Event()
    decode = engine_module.decode_image
    monkeypatch.setattr(engine_module, "decode_image", lambda *a, **k: (gate.wait(10), decode(*a, **k))[1])

    async def main():
        engine = Engine(Predictor(tiny_model), MemoryCache(64 << 20))
        caller = asyncio.ensure_future(engine.embed_bytes(png(32)))
        await asyncio.sleep(0.1)  # preparing: the image decode is held
        closing = asyncio.ensure_future(engine.close())
        await asyncio.sleep(0.05)
        gate.set()
        await closing
        (outcome,) = await asyncio.gather(caller, return_exceptions=True)
        await asyncio.sleep(0.3)  # the preparing task has run to its end
        return outcome, engine.queue_depth(), engine._queued_bytes, engine.stats.encode_jobs

    outcome, depth, queued_bytes, jobs = asyncio.run(main())
    assert isinstance(outcome, UnavailableError)
    assert (depth, queued_bytes, jobs) == (0, 0, 0)
