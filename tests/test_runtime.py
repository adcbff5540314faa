"""Process settings of the long-running commands (segany.runtime)."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from segany import runtime


def test_explicit_environment_wins(monkeypatch):
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "0")
    assert runtime.tune_process() == {}
    assert runtime.keep_freed_memory() is False


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_defaults_applied_in_a_fresh_process():
    # a child process, so this test process keeps its own settings
    code = (
        "import os; from segany import runtime; "
        "[os.environ.pop(k, None) for k in ('OMP_WAIT_POLICY', 'MALLOC_TRIM_THRESHOLD_', 'MALLOC_MMAP_THRESHOLD_', "
        "'MALLOC_ARENA_MAX')]; "
        "applied = runtime.tune_process(); "
        "print(sorted(applied), os.environ['OMP_WAIT_POLICY'])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['OMP_WAIT_POLICY', 'malloc'] PASSIVE"



_ARENAS = """
import ctypes, os, sys, threading
for k in ('MALLOC_TRIM_THRESHOLD_', 'MALLOC_MMAP_THRESHOLD_', 'MALLOC_ARENA_MAX'):
    os.environ.pop(k, None)
from segany import runtime
if sys.argv[1] == 'tuned':
    runtime.tune_process()
import numpy as np
def work():
    blocks = [np.ones(1 << 20, np.uint8) for _ in range(4)]  # malloc'd by this thread
    ctypes.CDLL(None).malloc_stats()  # per-arena statistics on stderr
threading.Thread(target=work).start()
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc arenas are glibc's")
def test_worker_threads_allocate_from_the_main_heap():
    # glibc gives each thread an arena of its own, whose extra heaps are unmapped whenever they empty: a decode on a
    # worker thread page-faulted its temporaries back in on every click. tune_process keeps one arena.
    def arenas(mode: str) -> int:
        err = subprocess.run([sys.executable, "-c", _ARENAS, mode], capture_output=True, text=True, check=True).stderr
        return err.count("Arena ")

    assert arenas("plain") >= 2  # the control: without the setting the thread gets an arena of its own
    assert arenas("tuned") == 1
