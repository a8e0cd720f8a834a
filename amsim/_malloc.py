"""Heap settings for CPU training: keep freed memory for reuse instead of returning it to the system (glibc).

A training step on the CPU allocates the same large XLA buffers every step (a LeNet-5 conv input gradient's
patch matrix is 40 MB at batch 128). glibc serves each block above its mmap threshold (at most 32 MiB) with
fresh pages and unmaps it on free, so every step pays a page fault per 4 KiB page on first touch: the LeNet-5
step spent a quarter of its time there (70 ms with, 51 ms without, docs/performance.md). Serving every block
from the heap, and not trimming it, reuses the same pages from step to step. The cost: memory freed by the
process stays with it (its peak stays resident), which a training run keeps needing anyway.
"""

from __future__ import annotations

import ctypes
import os

ENV = "AMSIM_MALLOC"
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_state = {"done": None}


def reuse_freed_memory() -> bool:
    """Make glibc keep freed memory for reuse (``mallopt``: no mmap-backed blocks, no trimming), once per process.

    The amsim commands call this before they train or evaluate; scripts that train on the CPU can too. Setting
    ``AMSIM_MALLOC=default`` leaves the allocator as it is.

    Returns:
        Whether the settings are in effect (False with ``AMSIM_MALLOC=default`` or a C library without
        ``mallopt``, e.g. musl or macOS).
    """
    if _state["done"] is not None:
        return _state["done"]
    ok = False
    if os.environ.get(ENV, "").strip().lower() not in ("default", "off", "0", "no"):
        try:
            mallopt = ctypes.CDLL(None).mallopt
        except (OSError, AttributeError, TypeError):  # no C library to open (Windows) or no mallopt in it
            mallopt = None
        if mallopt is not None:
            mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
            ok = mallopt(_M_MMAP_MAX, 0) == 1 and mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1
    _state["done"] = ok
    return ok
