"""Threads for torch work: a pool that gives each task to the worker that went idle last, and a share of the torch
threads for work that runs at the same time.

``concurrent.futures.ThreadPoolExecutor`` wakes its idle workers in turn (they wait on one queue, first come first
served), so back-to-back calls rotate over every thread of the pool. For torch on the CPU that is a cost: each thread
that runs torch ops drives its own OpenMP team, and a team (and the caches of the core it last ran on) that sat out
the previous calls starts cold. On the development machine a 1-click decode took 22.5 ms on one thread and 26.0 ms
rotating over four. :class:`WarmThreadPool` keeps its idle workers on a stack: sequential calls stay on one warm
thread, and more threads are used only when calls overlap.

:class:`ThreadShare` splits a budget of torch (OpenMP) threads between the threads that run torch work at the same
time. Each thread that calls torch drives its own OpenMP team of ``torch.get_num_threads()`` threads, and
``torch.set_num_threads`` changes the calling thread's team (it also sets the default a thread adopts at its first
torch call). Two concurrent 2-thread decodes put four busy threads on two cores, and with the passive OpenMP waits
`segany serve` uses, they lose more to each other than they gain.
"""

from __future__ import annotations

import contextlib
import functools
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future
from typing import Any

_Item = tuple[Future, Callable[..., Any], tuple, dict]


class WarmThreadPool(Executor):
    """``Executor`` with at most ``max_workers`` threads; a new task goes to the most recently idle worker.

    Threads start on demand; tasks beyond ``max_workers`` running at once wait in submission order. Usable with
    ``loop.run_in_executor``. ``shutdown(wait, cancel_futures)`` behaves as ``ThreadPoolExecutor``'s.
    """

    def __init__(self, max_workers: int, thread_name_prefix: str = "warm-pool") -> None:
        if max_workers < 1:
            raise ValueError(f"max_workers must be at least 1, got {max_workers}")
        self._max_workers = max_workers
        self._prefix = thread_name_prefix
        self._lock = threading.Lock()
        self._idle: list[queue.SimpleQueue] = []  # inboxes of idle workers; the last one went idle last
        self._pending: deque[_Item] = deque()
        self._threads: list[threading.Thread] = []
        self._shutdown = False

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        future: Future = Future()
        item = (future, fn, args, kwargs)
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            if self._idle:
                self._idle.pop().put(item)
            elif len(self._threads) < self._max_workers:
                inbox: queue.SimpleQueue = queue.SimpleQueue()
                inbox.put(item)
                thread = threading.Thread(
                    target=self._work, args=(inbox,), name=f"{self._prefix}_{len(self._threads)}", daemon=True
                )
                self._threads.append(thread)
                thread.start()
            else:
                self._pending.append(item)
        return future

    def _work(self, inbox: queue.SimpleQueue) -> None:
        item = inbox.get()
        while item is not None:  # None: the pool shut down while this worker was idle
            settle = _run(item)
            with self._lock:
                if self._pending:
                    item = self._pending.popleft()
                elif self._shutdown:
                    item = None
                else:
                    item = _WAIT
                    self._idle.append(inbox)
            # The result becomes visible only now, after this worker is back on the idle stack: a caller that
            # submits again as soon as it has the result finds this (warm) worker idle instead of starting a new one.
            settle()
            if item is _WAIT:
                item = inbox.get()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._shutdown = True
            if cancel_futures:
                while self._pending:
                    self._pending.popleft()[0].cancel()
            idle, self._idle = self._idle, []
            threads = list(self._threads)
        for inbox in idle:
            inbox.put(None)
        if wait:
            for thread in threads:
                thread.join()


class ThreadShare:
    """A budget of torch threads split between the threads running torch work at the same time.

    ``with share.use():`` runs its body with ``threads // running`` torch threads (at least 1), ``running`` counting
    this body and the others inside ``use`` right now; ``use(claim_all=True)`` takes the whole budget for itself but
    still counts, so work that starts beside it gets a share. The share is fixed when the body starts, so while work
    overlaps the first body may keep more than its share (two bodies on a budget of 2 run 2 + 1 threads until the
    first ends). A thread changes its count only when its share changes (a change costs about 0.7 ms here); the last
    body to leave sets the whole budget again, so that threads which first call torch later (outside any share)
    adopt the budget, not a share. Results do not depend on the share beyond float rounding (a thread count can
    change the order of a sum).

    Measured (session 6, 2 cores, shipped model, 8 clients on the server): one thread per concurrent decode served
    24.8-28.5 clicks/s against 17.1-23.2 with two each, and a lone click keeps both threads.
    """

    def __init__(self, threads: int | None = None, enabled: bool = True) -> None:
        import torch

        self.threads = max(1, int(threads or torch.get_num_threads()))
        self.enabled = enabled  # False: ``use`` only counts (e.g. the model runs on an accelerator)
        self._running = 0
        self._lowered = False  # a body set fewer threads since the budget was last set
        self._lock = threading.Lock()

    @property
    def running(self) -> int:
        return self._running

    @contextlib.contextmanager
    def use(self, claim_all: bool = False) -> Iterator[int]:
        """Body runs with its share of the threads (yielded); see the class docstring."""
        import torch

        with self._lock:
            self._running += 1
            running = self._running
            threads = self.threads if claim_all or not self.enabled else max(1, self.threads // running)
            self._lowered |= threads < self.threads
        try:
            if self.enabled and torch.get_num_threads() != threads:
                torch.set_num_threads(threads)
            yield threads
        finally:
            with self._lock:
                self._running -= 1
                restore = self._running == 0 and self._lowered
                if restore:
                    self._lowered = False
            if restore:  # torch's count is also the default of threads that first call torch later
                torch.set_num_threads(self.threads)


_WAIT = object()


def _run(item: _Item) -> Callable[[], None]:
    """Run one task; returns the call that hands its outcome to the future."""
    future, fn, args, kwargs = item
    if not future.set_running_or_notify_cancel():
        return _nothing
    try:
        result = fn(*args, **kwargs)
    except BaseException as exc:  # noqa: BLE001 - handed to the caller through the future
        return functools.partial(future.set_exception, exc)
    return functools.partial(future.set_result, result)


def _nothing() -> None:
    return None


__all__ = ["ThreadShare", "WarmThreadPool"]
