"""WarmThreadPool: last-idle-first dispatch, bounded threads, futures and shutdown as ThreadPoolExecutor;
ThreadShare: concurrent users split the torch threads."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import CancelledError

import pytest

from segany.warm_pool import ThreadShare, WarmThreadPool


def test_sequential_calls_stay_on_one_thread():
    pool = WarmThreadPool(4, thread_name_prefix="t")
    try:
        names = {pool.submit(lambda: threading.current_thread().name).result(timeout=5) for _ in range(50)}
    finally:
        pool.shutdown()
    assert len(names) == 1


def test_last_idle_worker_gets_the_next_task():
    pool = WarmThreadPool(3, thread_name_prefix="t")
    try:
        release = [threading.Event() for _ in range(3)]
        futures = [pool.submit(lambda e=e: (e.wait(5), threading.current_thread().name)[1]) for e in release]
        time.sleep(0.05)
        names = []
        for e, f in zip(release, futures):  # they finish in order 0, 1, 2: worker 2 went idle last
            e.set()
            names.append(f.result(timeout=5))
            time.sleep(0.02)
        assert len(set(names)) == 3
        assert pool.submit(lambda: threading.current_thread().name).result(timeout=5) == names[2]
    finally:
        pool.shutdown()


def test_at_most_max_workers_run_at_once_and_the_rest_queue_in_order():
    pool = WarmThreadPool(2)
    lock = threading.Lock()
    running = peak = 0
    order: list[int] = []

    def task(i: int) -> int:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0.02)
        with lock:
            running -= 1
            order.append(i)
        return i * i

    try:
        futures = [pool.submit(task, i) for i in range(8)]
        assert [f.result(timeout=10) for f in futures] == [i * i for i in range(8)]
    finally:
        pool.shutdown()
    assert peak == 2
    assert len(pool._threads) == 2
    # Queued tasks start in submission order. With two workers, two tasks taken in order can still reach their
    # first line in either order, so the order is checked on one worker.
    single = WarmThreadPool(1)
    order.clear()
    try:
        for f in [single.submit(task, i) for i in range(8)]:
            f.result(timeout=10)
    finally:
        single.shutdown()
    assert order == list(range(8))


def test_exceptions_reach_the_caller_and_the_worker_survives():
    pool = WarmThreadPool(1)
    try:
        with pytest.raises(ZeroDivisionError):
            pool.submit(lambda: 1 / 0).result(timeout=5)
        assert pool.submit(lambda x: x + 1, 41).result(timeout=5) == 42
    finally:
        pool.shutdown()


def test_works_with_run_in_executor():
    pool = WarmThreadPool(2)

    async def main() -> list[int]:
        loop = asyncio.get_running_loop()
        return await asyncio.gather(*(loop.run_in_executor(pool, pow, i, 2) for i in range(6)))

    try:
        assert asyncio.run(main()) == [0, 1, 4, 9, 16, 25]
    finally:
        pool.shutdown()


def test_shutdown_cancels_queued_tasks_finishes_running_ones_and_refuses_new_ones():
    pool = WarmThreadPool(1)
    gate = threading.Event()
    running = pool.submit(lambda: gate.wait(5) and "done")
    queued = pool.submit(lambda: "never")
    time.sleep(0.02)
    threading.Timer(0.05, gate.set).start()
    pool.shutdown(wait=True, cancel_futures=True)
    assert running.result(timeout=1) == "done"
    with pytest.raises(CancelledError):
        queued.result(timeout=1)
    assert not any(t.is_alive() for t in pool._threads)
    with pytest.raises(RuntimeError, match="shutdown"):
        pool.submit(print)


def test_shutdown_without_cancel_drains_the_queue():
    pool = WarmThreadPool(1)
    futures = [pool.submit(time.sleep, 0.01) for _ in range(4)] + [pool.submit(lambda: "last")]
    pool.shutdown(wait=True)
    assert futures[-1].result(timeout=1) == "last"
    assert not any(t.is_alive() for t in pool._threads)


def test_idle_workers_exit_on_shutdown():
    pool = WarmThreadPool(3)
    for f in [pool.submit(time.sleep, 0.02) for _ in range(3)]:
        f.result(timeout=5)
    pool.shutdown(wait=True)
    assert len(pool._threads) == 3 and not any(t.is_alive() for t in pool._threads)


def test_needs_a_worker():
    with pytest.raises(ValueError):
        WarmThreadPool(0)


def test_thread_share_splits_the_budget_between_concurrent_users():
    import torch

    share = ThreadShare(4)
    seen: dict[str, tuple[int, int, int]] = {}  # name -> (share, torch's count inside, bodies running)

    def hold(name: str, claim_all: bool = False) -> tuple[threading.Thread, threading.Event]:
        inside, release = threading.Event(), threading.Event()

        def body() -> None:
            with share.use(claim_all) as n:
                seen[name] = (n, torch.get_num_threads(), share.running)
                inside.set()
                release.wait(10)

        thread = threading.Thread(target=body)
        thread.start()
        assert inside.wait(10)
        return thread, release

    def leave(held: tuple[threading.Thread, threading.Event]) -> None:
        held[1].set()
        held[0].join(10)
        assert not held[0].is_alive()

    def adopted() -> int:  # what a thread that starts using torch now gets
        got: list[int] = []
        thread = threading.Thread(target=lambda: got.append(torch.get_num_threads()))
        thread.start()
        thread.join(10)
        return got[0]

    before = torch.get_num_threads()
    try:
        first = hold("first")  # alone: the whole budget
        second = hold("second")  # beside it: half
        assert seen == {"first": (4, 4, 1), "second": (2, 2, 2)}
        leave(second)
        # torch also kept `second`'s 2 as the default of threads that start later. `first` ran on the whole budget,
        # but as the last to leave it sets the budget again.
        leave(first)
        assert share.running == 0 and adopted() == 4
        first = hold("first")
        claimed = hold("claimed", claim_all=True)  # takes the whole budget, and counts
        assert seen["claimed"] == (4, 4, 2)
        third = hold("third")
        assert seen["third"] == (1, 1, 3)
        for held in (first, claimed, third):
            leave(held)
        assert share.running == 0 and adopted() == 4
        with share.use() as n:  # alone again: the whole budget
            assert n == 4 == torch.get_num_threads()
    finally:
        torch.set_num_threads(before)  # this is pytest's main thread (and the default of new threads)


def test_a_disabled_share_only_counts():
    import torch

    before = torch.get_num_threads()
    share = ThreadShare(before + 3, enabled=False)
    with share.use() as outer, share.use() as inner:
        assert share.running == 2 and outer == inner == before + 3
        assert torch.get_num_threads() == before  # torch untouched
    assert share.running == 0 and torch.get_num_threads() == before
