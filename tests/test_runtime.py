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
        "[os.environ.pop(k, None) for k in ('OMP_WAIT_POLICY', 'MALLOC_TRIM_THRESHOLD_', 'MALLOC_MMAP_THRESHOLD_')]; "
        "applied = runtime.tune_process(); "
        "print(sorted(applied), os.environ['OMP_WAIT_POLICY'])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['OMP_WAIT_POLICY', 'malloc'] PASSIVE"

