"""Process settings of the long-running commands (segany.runtime)."""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys

import pytest

from segany import runtime

_MALLOC_ENV = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_ARENA_MAX", "GLIBC_TUNABLES")
glibc_only = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt and its arenas are glibc's")


def _child(code: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter whose environment has none of the malloc settings, plus ``env``.

    glibc reads its variables when the process starts, so they are removed from the child's environment itself.
    """
    clean = {k: v for k, v in os.environ.items() if k not in _MALLOC_ENV and k != "OMP_WAIT_POLICY"}
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=True,
                          env={**clean, **env})


def test_explicit_environment_wins(monkeypatch):
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    for name in ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_ARENA_MAX"):
        monkeypatch.setenv(name, "0")
    assert runtime.tune_process() == {}
    assert runtime.keep_freed_memory() == []


@glibc_only
def test_defaults_applied_in_a_fresh_process():
    code = "import os; from segany import runtime; print(runtime.tune_process(), os.environ['OMP_WAIT_POLICY'])"
    out = _child(code).stdout.strip()
    assert out == ("{'OMP_WAIT_POLICY': 'PASSIVE', 'malloc': 'mmap threshold 32 MiB, trim threshold 64 MiB, "
                   "1 arena'} PASSIVE")


@glibc_only
def test_each_malloc_setting_yields_to_the_environment_on_its_own():
    code = "from segany import runtime; print(runtime.keep_freed_memory())"
    only_arena = _child(code, MALLOC_ARENA_MAX="2").stdout.strip()
    assert only_arena == "['mmap threshold 32 MiB', 'trim threshold 64 MiB']"
    tunables = _child(code, GLIBC_TUNABLES="glibc.malloc.arena_max=2:glibc.malloc.trim_threshold=1000000").stdout
    assert tunables.strip() == "['mmap threshold 32 MiB']"


_ARENAS = """
import ctypes, sys, threading
from segany import runtime
if sys.argv[1] == 'tuned':
    runtime.tune_process()
import numpy as np
def work():
    blocks = [np.ones(1 << 20, np.uint8) for _ in range(4)]  # malloc'd by this thread
    ctypes.CDLL(None).malloc_stats()  # per-arena statistics on stderr
threading.Thread(target=work).start()
"""


@glibc_only
def test_worker_threads_allocate_from_the_main_heap():
    # glibc gives each thread an arena of its own, whose extra heaps are unmapped whenever they empty: a decode on a
    # worker thread page-faulted its temporaries back in on every click. tune_process keeps one arena.
    def arenas(mode: str) -> int:
        return len(re.findall(r"^Arena \d+:$", _child(_ARENAS, mode).stderr, re.MULTILINE))

    assert arenas("plain") >= 2  # the control: without the setting the thread gets an arena of its own
    assert arenas("tuned") == 1
