"""Reused buffers of the CPU GEMM: the 2 MiB-aligned per-thread workspace (expanded tables and tiles) and the
scratch arrays for decoded operands; the kernels' views of tables and inputs (padded rows, read-only)."""

from __future__ import annotations

import math
import threading

import numpy as np

_HUGE = 2 << 20
_WS_CACHE_MAX = 32 << 20
_ws_local = threading.local()


def _workspace(nbytes: int) -> np.ndarray:
    """A 2 MiB-aligned byte buffer for the per-thread tables and tiles, reused across calls (per Python thread).

    Alignment plus NumPy's huge-page advice for large arrays make the buffer physically contiguous, so the
    expanded table and the tile never fight over the same L2 sets (with scattered 4 KiB pages a call was up to
    a third slower, depending on where its pages landed).
    """
    ws = getattr(_ws_local, "buf", None)
    if ws is not None and ws.size >= nbytes:
        return ws
    raw = np.empty(nbytes + _HUGE, np.uint8)
    off = (-raw.ctypes.data) % _HUGE
    ws = raw[off : off + nbytes]
    if nbytes <= _WS_CACHE_MAX:
        _ws_local.buf = ws
    return ws


_SCRATCH_MAX = 128 << 20  # a training step's conv GEMMs decode operands of tens of MB, once per step


def _scratch(key: str, shape, dtype) -> np.ndarray:
    """An uninitialised array for decoded operands, reused across calls of the same Python thread.

    Fresh multi-megabyte arrays cost page faults on first touch, and two threads faulting into the same new
    mapping serialise in the kernel: a small-batch GEMM ran slower on two threads than on one, and a LeNet-5
    weight gradient spent more time faulting in its decoded 40 MB operand than computing. Buffers up to
    _SCRATCH_MAX bytes each are kept (one per key and Python thread); larger ones are allocated per call.
    """
    nbytes = math.prod(int(d) for d in shape) * np.dtype(dtype).itemsize  # (np.prod: microseconds a call)
    cache = getattr(_ws_local, "scratch", None)
    if cache is None:
        cache = _ws_local.scratch = {}
    buf = cache.get(key)
    if buf is None or buf.size < nbytes:
        buf = np.empty(max(nbytes, 1), np.uint8)
        if nbytes <= _SCRATCH_MAX:
            cache[key] = buf
    return buf[:nbytes].view(dtype).reshape(shape)


def _thread_buffers(nthreads: int, t_elems: int, c_elems: int, dtype, t_dtype=None):
    """(nthreads, t_elems) tables (of t_dtype, default dtype) and (nthreads, c_elems) tiles (4-byte dtype) carved
    from the workspace, tables first."""
    t_item = np.dtype(t_dtype or dtype).itemsize
    t_bytes = nthreads * t_elems * t_item
    t_bytes += (-t_bytes) % 4096
    ws = _workspace(t_bytes + nthreads * c_elems * 4)
    tbuf = ws[: nthreads * t_elems * t_item].view(t_dtype or dtype).reshape(nthreads, t_elems)
    cbuf = ws[t_bytes : t_bytes + nthreads * c_elems * 4].view(dtype).reshape(nthreads, c_elems)
    return tbuf, cbuf


_SET_SPAN = 4096  # bytes one way of a 32 KiB 8-way (or 48 KiB 12-way) L1D spans: addresses this far apart share a set


def padded_rows(table: np.ndarray) -> np.ndarray:
    """A C-contiguous copy of the 2-D ``table`` whose rows are 64 bytes longer where their length is a multiple of
    half ``_SET_SPAN`` (the rest zero; the kernels read ``shape[1]`` as the row stride and only the first
    ``shape[0]`` entries of a row, the tables being square).

    The table build loads the same offset of 8 or 16 table rows at once; rows a multiple of 4 KiB apart all map
    to one L1 set, which holds 8 lines, and evict each other: building from a 2048-row 16-bit table (4 KiB rows)
    cost 0.12-0.15 ns per element on Zen 4, 0.062-0.068 with the rows padded.
    """
    rows, cols = table.shape
    row_bytes = cols * table.itemsize
    if rows < 16 or row_bytes % (_SET_SPAN // 2):
        return np.ascontiguousarray(table)
    out = np.zeros((rows, cols + 64 // table.itemsize), table.dtype)
    out[:, :cols] = table
    return out


def _ro(x: np.ndarray) -> np.ndarray:
    """x, read-only (a view where x is writable). Numba compiles a kernel once per argument types, the read-only
    flag included: inputs (writable from NumPy, read-only from JAX) and tables reach the kernels read-only, so
    each kernel compiles once for both (5-8 s for an expansion), and no kernel can write them."""
    if not x.flags.writeable:
        return x
    v = x.view()
    v.flags.writeable = False
    return v
