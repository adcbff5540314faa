"""Process-wide settings for the long-running entry points (``segany serve``, ``segany annotate``).

Libraries should not change process-wide behaviour, so :class:`segany.Predictor` leaves these alone; the commands
that own their process call :func:`tune_process` before torch starts.
"""

from __future__ import annotations

import ctypes
import os
import sys

#: glibc ``mallopt`` parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8

#: Blocks up to this size come from the heap, not from fresh ``mmap`` calls.
MMAP_THRESHOLD_BYTES = 32 << 20
#: Free memory kept at the top of a heap before it is handed back to the kernel. A decode's temporaries fit; with
#: 256 MiB the memory benchmark (200 images through a 256 MiB cache) grew 562 MiB instead of 336 MiB.
TRIM_THRESHOLD_BYTES = 64 << 20
#: malloc arenas: one, the main heap, for every thread (see :func:`keep_freed_memory`).
ARENA_MAX = 1


def tune_process() -> dict[str, str]:
    """Apply the defaults below unless the environment already chose; returns what was set (for the log).

    - ``OMP_WAIT_POLICY=PASSIVE``: the encoder, the decode workers and gRPC's threads share the cores; OpenMP
      threads that spin after each parallel region steal them from each other (measured on 2 busy cores: a
      2-thread decode took 4x longer spinning than sleeping). Must be set before torch starts OpenMP.
    - glibc malloc keeps freed blocks of up to 32 MiB for reuse, on one heap for all threads (see
      :func:`keep_freed_memory`).
    """
    applied: dict[str, str] = {}
    if "OMP_WAIT_POLICY" not in os.environ:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
        applied["OMP_WAIT_POLICY"] = "PASSIVE"
    malloc = keep_freed_memory()
    if malloc:
        applied["malloc"] = ", ".join(malloc)
    return applied


#: The malloc settings: (mallopt parameter, value, what the log says, environment variable, glibc tunable). A setting
#: the environment already chose (either way) is left alone.
_MALLOC_SETTINGS = (
    (_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES, f"mmap threshold {MMAP_THRESHOLD_BYTES >> 20} MiB",
     "MALLOC_MMAP_THRESHOLD_", "glibc.malloc.mmap_threshold"),
    (_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES, f"trim threshold {TRIM_THRESHOLD_BYTES >> 20} MiB",
     "MALLOC_TRIM_THRESHOLD_", "glibc.malloc.trim_threshold"),
    (_M_ARENA_MAX, ARENA_MAX, f"{ARENA_MAX} arena", "MALLOC_ARENA_MAX", "glibc.malloc.arena_max"),
)


def process_environment() -> dict[str, str]:
    """What :func:`tune_process` sets, as environment variables: for processes that others start (Ray's replicas),
    where the settings must be in the environment when the process starts (glibc reads its variables then)."""
    return {"OMP_WAIT_POLICY": "PASSIVE", **{env: str(value) for _, value, _, env, _ in _MALLOC_SETTINGS}}


def keep_freed_memory() -> list[str]:
    """Make glibc's malloc reuse freed multi-MiB blocks instead of returning them to the kernel and faulting them in
    again on the next request. Returns the settings applied (empty off glibc, or when the environment chose them all).

    A decode allocates tens of 1-8 MiB temporaries (image tokens, upscaled features, full-size masks). By default
    glibc serves large blocks with ``mmap`` and trims the heap top when it is freed, so every request pays page
    faults again for all of them: measured on the shipped model, a 1-click decode took 28-29 ms with this setting
    and 37-40 ms without. Costs nothing when idle beyond keeping up to ``TRIM_THRESHOLD_BYTES`` of free heap mapped.

    The thresholds hold for the main heap, but glibc gives other threads arenas of their own, made of 64 MiB heaps
    that are unmapped as soon as they are empty: the server decodes on worker threads, and a click could fault about
    5,500 pages (22 MiB) back in over both OpenMP threads (shipped model, low-res answers: 2780 faults per thread and
    click, decode CPU time 38 + 30 ms against 31 + 23 ms on the main thread). ``ARENA_MAX = 1`` puts every thread on
    the main heap: 0.2 faults per click. Two servers side by side, clicks interleaved: low-res answers 49.6 -> 41.4
    ms (shipped model), best mask as RLE 54.2 -> 48.4 ms (random vit_b) and 48.3 -> 48.2 ms (shipped: that pattern
    happened to keep its heap). Threads then share one allocator lock, which large tensors take a few hundred times
    per decode; 8 concurrent clients and `segany annotate`'s encoder thread measured no cost.

    Each setting is skipped when its environment variable (``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``,
    ``MALLOC_ARENA_MAX``) or its ``GLIBC_TUNABLES`` entry is set. Must run before other threads allocate (a thread
    keeps the arena it has).
    """
    if not sys.platform.startswith("linux"):
        return []
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl has no mallopt)
        return []
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    tunables = {entry.split("=", 1)[0] for part in os.environ.get("GLIBC_TUNABLES", "").split(":")
                for entry in [part.strip()] if entry}
    applied = []
    for param, value, label, variable, tunable in _MALLOC_SETTINGS:
        if variable in os.environ or tunable in tunables:
            continue
        if mallopt(param, value):  # 1 on success
            applied.append(label)
    return applied


__all__ = ["ARENA_MAX", "MMAP_THRESHOLD_BYTES", "TRIM_THRESHOLD_BYTES", "keep_freed_memory", "process_environment",
           "tune_process"]
