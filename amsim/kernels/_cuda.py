"""CuPy backend: approximate GEMM, elementwise products and NHWC convolution as CUDA RawKernels.

The kernels are in ``amsim_gemm.cu`` (see its header comment for the algorithms); this module decides what to
launch. Every operation is first turned into a *plan*, a list of :class:`Launch` records (kernel name
expression, grid, block, dynamic shared memory, arguments), by functions that only look at shapes and
strides and allocate through ``xp``. The CuPy backend runs plans on the GPU; the test suite runs the very
same plans on NumPy arrays through a host emulation of the kernels (tests/test_cuda_host.py).

Nothing here creates CuPy arrays or compiles at import time. Kernels are compiled on first use, one
``cupy.RawModule`` per instantiation, and cached by CuPy on disk (:func:`precompile` fills that cache).
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import threading
import weakref

import cupy
import numpy as np

from .._errors import UnsupportedError
from . import _nvrtc as nv

__all__ = ["CupyBackend", "gemm", "conv2d_nhwc", "Launch", "plan_gemm_f32", "plan_gemm_lut", "plan_multiply_f32",
           "plan_multiply_lut", "plan_conv2d_nhwc", "device_tables"]

_I32_MAX = 2**31 - 1
_GRID_YZ_MAX = 65535
_DEFAULT_SMS = 132
_DEFAULT_MAX_SHARED = 227 * 1024
ALGOS = ("expand16", "expand", "wide", "gather", "dot")


@dataclasses.dataclass(frozen=True)
class Launch:
    """One kernel launch: name expression, grid, block, dynamic shared memory (bytes), arguments."""

    kernel: str
    grid: tuple
    block: tuple
    shared: int
    args: tuple


# ---------------------------------------------------------------------------------------------------------
# tables
# ---------------------------------------------------------------------------------------------------------
def tame_ranges(values: np.ndarray) -> tuple[int, int, int, int]:
    """(a_lo, a_hi, b_lo, b_hi): unbiased operand exponents for which the fast path is exact.

    With the nonzero entries' exponents in [e_lo, e_hi], every product p * 2**(ea + eb) is normal when
    ea + eb lies in [-126 - e_lo, 127 - e_hi]; splitting that range between A (a_lo <= 0 <= a_hi) and B keeps
    the intermediate p * 2**eb normal too. (The split the CPU kernels start from.) Empty: (1, 0, 1, 0).
    """
    p = np.asarray(values, dtype=np.float64)
    nz = p > 0
    if nz.any():
        e = np.frexp(p[nz])[1] - 1  # normalised exponents, subnormal float32 entries included
        e_lo, e_hi = int(e.min()), int(e.max())
    else:
        e_lo = e_hi = 0
    s_lo, s_hi = -126 - e_lo, 127 - e_hi
    a_lo, a_hi = max(-((-s_lo) // 2), -126), min(s_hi // 2, 127)
    if s_lo > s_hi or a_lo > 0 or a_hi < 0:
        return (1, 0, 1, 0)
    return (a_lo, a_hi, s_lo - a_lo, s_hi - a_hi)


def bf16_pair_table(lut: np.ndarray):
    """The table for the expand16 kernel, or None if the table does not qualify.

    It qualifies when every entry is a normal float32 with at most 7 fraction bits (exact in bfloat16: the
    kernel scales entries by adding to their exponent field, which needs a normal, non-zero value) and
    2 <= m <= 7. Layout: uint32 [2**m, 2**(m-1)], word [ib, p] = bf16(lut[2p, ib]) | bf16(lut[2p+1, ib]) << 16.
    """
    n = lut.shape[0]
    m = n.bit_length() - 1
    if not nv.E16_MIN_BITS <= m <= nv.EXPAND_MAX_BITS:
        return None
    u = np.ascontiguousarray(lut, dtype=np.float32).view(np.uint32)
    exp_field = (u >> 23) & 0xFF
    if (u & 0xFFFF).any() or (exp_field == 0).any() or (exp_field == 0xFF).any() or (u >> 31).any():
        return None
    hi = (u >> 16).T  # [ib, r]
    return np.ascontiguousarray(hi[:, 0::2] | (hi[:, 1::2] << 16)).astype(np.uint32)


def fp16_table(lut: np.ndarray):
    """The wide kernel's half-size table (m in nv.WIDE_H16_BITS), or None if the table does not qualify.

    It qualifies when every entry is exactly a positive normal fp16 value (at most 10 fraction bits, exponent
    in [-14, 15]): MBM, Mitchell and truncated tables do. Layout: uint16 [ib, r] = fp16 bits of lut[r, ib].
    """
    m = lut.shape[0].bit_length() - 1
    if m not in nv.WIDE_H16_BITS:
        return None
    u = np.ascontiguousarray(lut, dtype=np.float32).view(np.uint32)
    exp_field = (u >> 23) & 0xFF
    if (u & 0x1FFF).any() or (u >> 31).any() or (exp_field < 127 - 14).any() or (exp_field > 127 + 15).any():
        return None
    return np.ascontiguousarray(((u - np.uint32(0x38000000)) >> 13).astype(np.uint16).T)


def float_host_tables(values: np.ndarray):
    """(lut, lut_t, ranges, lut_p, lut_h) on the host: the table with -0.0 entries made +0.0 (a zero product's
    sign comes from the operands, and the fast path multiplies the entry's sign in), its transpose,
    :func:`tame_ranges`, :func:`bf16_pair_table` (None when the expand16 kernel cannot take the table) and
    :func:`fp16_table` (None when the wide kernel reads it as float32)."""
    lut = np.ascontiguousarray(values, dtype=np.float32)
    lut = np.where(lut == 0, np.float32(0.0), lut).astype(np.float32)
    return lut, np.ascontiguousarray(lut.T), tame_ranges(lut), bf16_pair_table(lut), fp16_table(lut)


_DEVICE_TABLES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_DEVICE_TABLES_LOCK = threading.Lock()


def device_tables(table):
    """A table on the current CUDA device, cached per table and device: (lut, lut_t, ranges, lut_p, lut_h) for float
    tables (see :func:`float_host_tables`); the table itself (int32 for integer multipliers, float32 for
    full-operand tables) otherwise."""
    dev = cupy.cuda.Device().id
    with _DEVICE_TABLES_LOCK:
        per_dev = _DEVICE_TABLES.setdefault(table, {})
        if dev not in per_dev:
            if table.kind == "float":
                lut, lut_t, ranges, lut_p, lut_h = float_host_tables(table.values)
                per_dev[dev] = (cupy.asarray(lut), cupy.asarray(lut_t), ranges,
                                None if lut_p is None else cupy.asarray(lut_p),
                                None if lut_h is None else cupy.asarray(lut_h))
            else:
                per_dev[dev] = cupy.asarray(np.ascontiguousarray(table.values))
        return per_dev[dev]


def device_table_t(table):
    """An integer or full-operand table transposed ([ib, ia], contiguous) on the current device, as the lutw
    kernel streams it; cached like :func:`device_tables`."""
    lut = device_tables(table)
    dev = cupy.cuda.Device().id
    with _DEVICE_TABLES_LOCK:
        per_dev = _DEVICE_TABLES[table]
        if (dev, "t") not in per_dev:
            per_dev[(dev, "t")] = cupy.ascontiguousarray(lut.T)
        return per_dev[(dev, "t")]


# ---------------------------------------------------------------------------------------------------------
# strides and layouts
# ---------------------------------------------------------------------------------------------------------
def _elem_strides(x):
    item = x.dtype.itemsize
    if any(s % item for s in x.strides):
        return None
    return tuple(s // item for s in x.strides)


def _operand_layout(x):
    """For a 3-D view (batch, p, q): (transposed, ld, batch stride) so that element (b, p, q) is at
    b * stride + (q * ld + p if transposed else p * ld + q); None if neither inner axis has unit stride."""
    _, p, q = x.shape
    if x.size == 0:  # nothing is read (K == 0); NumPy reports zero strides for empty arrays
        return False, max(q, 1), 0
    st = _elem_strides(x)
    if st is None:
        return None
    s0, s1, s2 = st
    if q == 1 or s2 == 1:
        return False, s1, s0
    if p == 1 or s1 == 1:
        return True, s2, s0
    return None


def _prepare(x, xp, name):
    lay = _operand_layout(x)
    if lay is None:  # an arbitrary strided view: one copy, then the contiguous layout
        x = xp.ascontiguousarray(x)
        lay = _operand_layout(x)
    return x, lay


def _check_sizes(**dims):
    for name, v in dims.items():
        if v > _I32_MAX:
            raise UnsupportedError(f"the CUDA kernels index {name} with 32 bits; {name}={v} is too large. Split the "
                                   "operation into pieces of fewer than 2**31 along that axis.")


def _out_layout(out):
    st = _elem_strides(out)
    if st is None or not (out.shape[2] == 1 or st[2] == 1):
        raise ValueError("out needs unit stride along its last axis (a C-contiguous array, or a view of one).")
    return st[1], st[0]


def _chunks(total, size):
    for start in range(0, total, size):
        yield start, min(size, total - start)


def _ceil(a, b):
    return -(-a // b)


# ---------------------------------------------------------------------------------------------------------
# shared-memory sizes
# ---------------------------------------------------------------------------------------------------------
def expand_shared_bytes(m: int) -> int:
    nl = 1 << m
    return 4 * (nl * nl + nv.EXP_BK * nl * nv.EXP_BN + nv.EXP_BK * (nv.EXP_BM + 2 * nv.EXP_BN))


def gather_shared_bytes(bits: int) -> int:
    lut = 4 << (2 * bits) if bits <= nv.MAX_SHARED_LUT_BITS else 0
    return 4 * nv.GAT_BK * (nv.GAT_BM + nv.GAT_BN) + lut


def expand16_shared_bytes(m: int) -> int:
    nl = 1 << m
    return 2 * nl * nl + nv.E16_BK * nl * 2 * nv.E16_BN + 4 * nv.E16_BK * (nv.E16_BM + 3 * nv.E16_BN)


def wide_shared_bytes(m: int) -> int:
    nl = 1 << m
    bk = 2 if nl <= 512 else 1  # as in amsim_gemm_wide_f32
    return bk * nl * 4 * nv.WIDE_BN + 4 * bk * (nv.WIDE_BM + 3 * nv.WIDE_BN)


# Products per clock per SM at full tiles, from each kernel's design (docs/gpu.md, "What the instruction counts
# say"); for m >= 8 the wide kernel is bound by L2 (4 * 2**m / 2048 bytes per product, ~21 bytes per clock per SM)
# and the gather kernel by one 32-byte L2 sector per product. Estimates, to be replaced by measurements.
_RATE = {"expand16": 40.0, "expand": 26.0, "wide": 23.0, "gather": 9.0, "dot": 8.0}
_DOT_BLOCKS_PER_SM = 8  # 128-thread blocks of ~30 registers: the dot kernel needs many in flight
_L2_BYTES_PER_CLOCK = 21.0


def _rate(algo, m, fp16_table=False):
    if m <= nv.EXPAND_MAX_BITS:
        return _RATE[algo]
    if algo == "wide":
        entry = 2 if fp16_table and m in nv.WIDE_H16_BITS else 4  # bytes per table entry
        return min(_RATE["wide"], _L2_BYTES_PER_CLOCK / (entry * 2**m / nv.WIDE_BM))
    return _L2_BYTES_PER_CLOCK / 32.0 * (_RATE[algo] / _RATE["gather"])


def _tile(algo):
    return {"expand16": (nv.E16_BM, nv.E16_BN), "expand": (nv.EXP_BM, nv.EXP_BN), "wide": (nv.WIDE_BM, nv.WIDE_BN),
            "gather": (nv.GAT_BM, nv.GAT_BN)}[algo]


def dot_shared_bytes(m: int) -> int:
    return 4 << (2 * m) if m <= nv.MAX_SHARED_LUT_BITS else 0


def _shared_bytes(algo, m):
    return {"expand16": expand16_shared_bytes, "expand": expand_shared_bytes, "wide": wide_shared_bytes,
            "gather": gather_shared_bytes, "dot": dot_shared_bytes}[algo](m)


def algo_estimate(algo, m, nbatch, rows, cols, num_sms=_DEFAULT_SMS, fp16_table=False) -> float:
    """Estimated products per clock per SM of a float GEMM kernel on this problem: the kernel's full-tile rate
    times the used fraction of its row and column tiles and of its last wave of blocks."""
    if algo == "dot":  # one output per thread: only the last block is partial, many blocks per SM
        outputs = nbatch * rows * cols
        blocks = nbatch * _ceil(rows * cols, nv.DOT_THREADS)
        slots = num_sms * _DOT_BLOCKS_PER_SM
        return _rate(algo, m) * outputs / (blocks * nv.DOT_THREADS) * blocks / (_ceil(blocks, slots) * slots)
    bm, bn = _tile(algo)
    brows, bcols = _ceil(rows, bm), _ceil(cols, bn)
    blocks = nbatch * brows * bcols
    waves = _ceil(blocks, num_sms)
    return _rate(algo, m, fp16_table) * rows / (brows * bm) * cols / (bcols * bn) * blocks / (waves * num_sms)


def usable_algos(m, max_shared=_DEFAULT_MAX_SHARED, bf16_table=False) -> list[str]:
    """The float GEMM kernels that can run mantissa width m with this table on this device."""
    algos = []
    if bf16_table and nv.E16_MIN_BITS <= m <= nv.EXPAND_MAX_BITS:
        algos.append("expand16")
    if nv.EXPAND_MIN_BITS <= m <= nv.EXPAND_MAX_BITS:
        algos.append("expand")
    if m >= nv.WIDE_MIN_BITS:
        algos.append("wide")
    algos += ["gather", "dot"]
    return [a for a in algos if _shared_bytes(a, m) <= max_shared]


def choose_algo(m, nbatch, rows, cols, num_sms=_DEFAULT_SMS, max_shared=_DEFAULT_MAX_SHARED,
                bf16_table=False, fp16_table=False) -> str:
    """Which float GEMM kernel to use: the one with the best :func:`algo_estimate`.

    "expand16", "expand" and "wide" read one expanded table value per product from shared memory (2, 4 and 4
    bytes) where "gather" gathers a table entry per product (from L2 for m >= 8), but they need tall blocks
    (512, 1024 and 2048 rows) and 64, 32 and 16 columns; "expand16" needs a table that is exact in bfloat16
    (``bf16_table``); for 8 <= m <= 10 the wide kernel reads an fp16 copy of a table that allows it
    (``fp16_table``), half the L2 traffic. The rates are design estimates (docs/gpu.md), to be tuned on a GPU.
    """
    algos = usable_algos(m, max_shared, bf16_table)
    return max(algos, key=lambda a: algo_estimate(a, m, nbatch, rows, cols, num_sms, fp16_table))


# ---------------------------------------------------------------------------------------------------------
# plans
# ---------------------------------------------------------------------------------------------------------
def _batch_stride(codes):
    """Elements between batches of an operand-code array; 0 when one encoding serves every batch."""
    return 0 if codes.shape[0] == 1 else codes[0].size


def _encode(m, fmt, x3, transposed, ld, stride, codes, ldcodes, flag, truncate, lo, hi) -> Launch:
    """The amsim_encode_a launch that fills ``codes`` (n_enc, ., .) from the operand view ``x3`` (nb, n, depth).

    ``x3``'s element (b, i, k) is at b * stride + (k * ld + i if transposed else i * ld + k); the codes are
    k-major (fmt 0, 1: ldcodes = n) or row-major (fmt 2, 3: ldcodes = padded depth). A batch-broadcast operand
    (stride 0) is encoded once (n_enc = 1) and a special value in it flags its row in every one of the nb
    batches of ``flag`` (nb, n).
    """
    nb, n, depth = x3.shape
    return Launch(f"amsim_encode_a<{m}, {int(transposed)}, {fmt}>", (_ceil(n * depth, 256), codes.shape[0], 1),
                  (256, 1, 1), 0,
                  (x3, codes, flag, np.int32(n), np.int32(depth), np.int64(ld), np.int64(stride), np.int64(ldcodes),
                   np.int64(_batch_stride(codes)), np.int32(nb if codes.shape[0] == 1 else 1),
                   np.int32(bool(truncate)), np.int32(lo), np.int32(hi)))


def plan_gemm_f32(a3, b3, c3, m, truncate, tables, xp, algo=None, num_sms=_DEFAULT_SMS,
                  max_shared=_DEFAULT_MAX_SHARED) -> list[Launch]:
    """Launches for c3[b] = a3[b] @ b3[b] (float32, 3-D views, batch already broadcast, stride 0 allowed).

    Arguments:
        a3, b3: (nb, M, K) and (nb, K, N) views; either inner axis may be the unit-stride one (transposes are
            read in place), anything else is copied once.
        c3: (nb, M, N) output view with unit stride along N.
        m, truncate: the multiplier's mantissa width and rounding (truncate: bool).
        tables: (lut, lut_t, ranges, lut_p, lut_h) as from :func:`float_host_tables`, arrays of ``xp``.
        xp: numpy or cupy (allocates the special-operand flags).
        algo: "expand16", "expand", "wide", "gather", "dot" or None (choose).
        num_sms, max_shared: the device's SM count and opt-in shared memory per block.

    Returns:
        A list of :class:`Launch`: per chunk of batch and rows, the GEMM and then the exact fix-up pass.
    """
    nb, rows, depth = a3.shape
    cols = b3.shape[2]
    if c3.size == 0:
        return []
    _check_sizes(M=rows, N=cols, K=depth)
    lut, lut_t, (a_lo, a_hi, b_lo, b_hi), lut_p, lut_h = tables
    a3, (a_t, lda, sa) = _prepare(a3, xp, "a")
    b3, (b_t, ldb, sb) = _prepare(b3, xp, "b")
    ldc, sc = _out_layout(c3)
    layout = (int(a_t) << 1) | int(b_t)
    if algo is None:
        algo = choose_algo(m, nb, rows, cols, num_sms, max_shared, bf16_table=lut_p is not None,
                           fp16_table=lut_h is not None)
    if algo == "expand16":
        if lut_p is None or not nv.E16_MIN_BITS <= m <= nv.EXPAND_MAX_BITS:
            raise ValueError("the expand16 kernel needs 2 <= mantissa_bits <= 7 and a table whose entries are all "
                             "normal floats with at most 7 fraction bits (exact in bfloat16); use 'expand'.")
        bm, bn, threads, shared = nv.E16_BM, nv.E16_BN, nv.E16_THREADS, expand16_shared_bytes(m)
        kernel, table_arg = f"amsim_gemm_expand16_f32<{m}, {int(b_t)}>", lut_p
    elif algo == "expand":
        if not nv.EXPAND_MIN_BITS <= m <= nv.EXPAND_MAX_BITS:
            raise ValueError(f"the expand kernel handles {nv.EXPAND_MIN_BITS} <= mantissa_bits <= "
                             f"{nv.EXPAND_MAX_BITS}, not {m}.")
        bm, bn, threads, shared = nv.EXP_BM, nv.EXP_BN, nv.EXP_THREADS, expand_shared_bytes(m)
        kernel, table_arg = f"amsim_gemm_expand_f32<{m}, {int(b_t)}>", lut_t
    elif algo == "wide":
        if m < nv.WIDE_MIN_BITS:
            raise ValueError(f"the wide kernel handles mantissa_bits >= {nv.WIDE_MIN_BITS}, not {m}; use 'expand' "
                             "or 'gather'.")
        bm, bn, threads, shared = nv.WIDE_BM, nv.WIDE_BN, nv.WIDE_THREADS, wide_shared_bytes(m)
        h16 = lut_h is not None  # half the table traffic; the kernel rebuilds float32 values exactly
        kernel, table_arg = f"amsim_gemm_wide_f32<{m}, {int(b_t)}, {int(h16)}>", lut_h if h16 else lut_t
    elif algo == "gather":
        bm, bn, threads, shared = nv.GAT_BM, nv.GAT_BN, nv.GAT_THREADS, gather_shared_bytes(m)
        kernel, table_arg = f"amsim_gemm_gather_f32<{m}, {layout}>", lut
    elif algo == "dot":
        bm, bn, threads, shared = 2048, 1, nv.DOT_THREADS, dot_shared_bytes(m)  # bm: rows per chunk / 65535
        kernel, table_arg = f"amsim_gemm_dot_f32<{m}>", lut
    else:
        raise ValueError(f"algo must be one of {ALGOS} or None, got {algo!r}.")
    if shared > max_shared:
        raise UnsupportedError(f"the {algo} kernel for mantissa_bits={m} needs {shared} bytes of shared memory per "
                               f"block; this GPU allows {max_shared}.")
    fixup = f"amsim_gemm_fixup_f32<{m}, {layout}>"
    i32, i64 = np.int32, np.int64
    launches = []
    for b0, bn_ in _chunks(nb, _GRID_YZ_MAX):
        for r0, rn in _chunks(rows, bm * _GRID_YZ_MAX):
            av = a3[b0 : b0 + bn_, r0 : r0 + rn]
            bv = b3[b0 : b0 + bn_]
            cv = c3[b0 : b0 + bn_, r0 : r0 + rn]
            rowflag = xp.zeros((bn_, rn), np.int32)
            colflag = xp.zeros((bn_, cols), np.int32)
            common = (av, bv, cv)
            dims = (i32(rn), i32(cols), i32(depth), i64(lda), i64(ldb), i64(ldc), i64(sa), i64(sb), i64(sc),
                    i32(bool(truncate)))
            if algo == "dot":  # both operands encoded once (B as B^T, flagging columns), then one thread per output
                ldk = _ceil(depth, 4) * 4  # rows of codes padded with code 0 (adds +0) to whole 16-byte loads
                codes_a = xp.zeros((1 if sa == 0 else bn_, rn, ldk), np.uint32)
                codes_b = xp.zeros((1 if sb == 0 else bn_, cols, ldk), np.uint32)
                launches += [
                    _encode(m, 2, av, a_t, lda, sa, codes_a, ldk, rowflag, truncate, a_lo, a_hi),
                    _encode(m, 3, bv.swapaxes(1, 2), not b_t, ldb, sb, codes_b, ldk, colflag, truncate, b_lo, b_hi),
                    Launch(kernel, (_ceil(rn * cols, threads), 1, bn_), (threads, 1, 1), shared,
                           (codes_a, codes_b, cv, table_arg, i32(rn), i32(cols), i32(ldk), i64(ldc),
                            i64(_batch_stride(codes_a)), i64(_batch_stride(codes_b)), i64(sc)))]
            elif algo in ("expand16", "expand", "wide"):  # A encoded once (not per column block), then multiplied
                codes = xp.empty((1 if sa == 0 else bn_, depth, rn), np.uint32)
                launches += [
                    _encode(m, 1 if algo == "wide" else 0, av, a_t, lda, sa, codes, rn, rowflag, truncate, a_lo, a_hi),
                    Launch(kernel, (_ceil(cols, bn), _ceil(rn, bm), bn_), (threads, 1, 1), shared,
                           (codes, bv, cv, table_arg, colflag, i32(rn), i32(cols), i32(depth), i64(rn), i64(ldb),
                            i64(ldc), i64(_batch_stride(codes)), i64(sb), i64(sc), i32(bool(truncate)), i32(b_lo),
                            i32(b_hi)))]
            else:
                launches.append(Launch(kernel, (_ceil(cols, bn), _ceil(rn, bm), bn_), (threads, 1, 1), shared,
                                       common + (table_arg, rowflag, colflag) + dims
                                       + (i32(a_lo), i32(a_hi), i32(b_lo), i32(b_hi))))
            launches.append(Launch(fixup, (_ceil(cols, nv.FIXUP_THREADS), min(rn, 1024), bn_),
                                   (nv.FIXUP_THREADS, 1, 1), 0, common + (lut, rowflag, colflag) + dims))
    return launches


def lutw_shared_bytes(bits: int) -> int:
    return 2 * (1 << bits) * 4 * nv.WIDE_BN + 4 * 2 * (nv.WIDE_BM + nv.WIDE_BN)


def choose_lut_algo(bits, nbatch, rows, cols, num_sms=_DEFAULT_SMS, max_shared=_DEFAULT_MAX_SHARED) -> str:
    """"lutw" (the wide scheme: table columns expanded per step, shared-memory reads without conflicts) or "lut"
    (64 x 64 tiles, a table gather per product: from shared memory up to 7 bits, through L1 at 8), by the same
    kind of estimate as :func:`choose_algo` (rates: lutw 23, lut 9 or 3 at 8 bits; to be measured)."""
    if lutw_shared_bytes(bits) > max_shared:
        return "lut"

    def estimate(rate, bm, bn, per_sm):
        brows, bcols = _ceil(rows, bm), _ceil(cols, bn)
        blocks = nbatch * brows * bcols
        slots = num_sms * per_sm
        return rate * rows / (brows * bm) * cols / (bcols * bn) * blocks / (_ceil(blocks, slots) * slots)

    wide = estimate(_RATE["wide"], nv.WIDE_BM, nv.WIDE_BN, 1)
    gathered = estimate(_RATE["gather"] if bits <= nv.MAX_SHARED_LUT_BITS else 3.0, nv.GAT_BM, nv.GAT_BN, 2)
    return "lutw" if wide > gathered else "lut"


def plan_gemm_lut(ia3, ib3, c3, bits, lut, xp, max_shared=_DEFAULT_MAX_SHARED, algo=None,
                  num_sms=_DEFAULT_SMS, lut_t=None) -> list[Launch]:
    """Launches for a table GEMM on int32 operand codes: ``c3[b, i, j] = sum_k lut[ia3[b, i, k], ib3[b, k, j]]``.

    An int32 table (integer multipliers, codes = operand - lowest value) sums exactly in int32; a float32 table
    (full-operand tables of narrow formats) sums in float32 in k order from +0.0. Views as in
    :func:`plan_gemm_f32`; ``algo``: "lut", "lutw" or None (:func:`choose_lut_algo`); ``lut_t``: the table
    transposed and contiguous, as the lutw kernel reads it (made from ``lut`` when not given).
    """
    nb, rows, depth = ia3.shape
    cols = ib3.shape[2]
    if ia3.dtype != np.int32 or ib3.dtype != np.int32:
        raise TypeError(f"table GEMM operands are int32 codes, got {ia3.dtype} and {ib3.dtype}.")
    if c3.size == 0:
        return []
    _check_sizes(M=rows, N=cols, K=depth)
    ia3, (a_t, lda, sa) = _prepare(ia3, xp, "a")
    ib3, (b_t, ldb, sb) = _prepare(ib3, xp, "b")
    ldc, sc = _out_layout(c3)
    layout = (int(a_t) << 1) | int(b_t)
    ctype = _lut_ctype(lut, c3)
    if algo is None:
        algo = choose_lut_algo(bits, nb, rows, cols, num_sms, max_shared)
    if algo == "lutw":
        bm, bn, threads, shared = nv.WIDE_BM, nv.WIDE_BN, nv.WIDE_THREADS, lutw_shared_bytes(bits)
        table = xp.ascontiguousarray(lut.T) if lut_t is None else lut_t  # [ib, ia]: the columns it streams
    elif algo == "lut":
        bm, bn, threads, shared = nv.GAT_BM, nv.GAT_BN, nv.GAT_THREADS, gather_shared_bytes(bits)
        table = lut
    else:
        raise ValueError(f"algo must be 'lut', 'lutw' or None, got {algo!r}.")
    if shared > max_shared:
        raise UnsupportedError(f"the table GEMM for {bits}-bit codes needs {shared} bytes of shared memory per block; "
                               f"this GPU allows {max_shared}.")
    i32, i64 = np.int32, np.int64
    launches = []
    for b0, bn_ in _chunks(nb, _GRID_YZ_MAX):
        for r0, rn in _chunks(rows, bm * _GRID_YZ_MAX):
            launches.append(Launch(
                f"amsim_gemm_{algo}<{ctype}, {bits}, {layout}>", (_ceil(cols, bn), _ceil(rn, bm), bn_),
                (threads, 1, 1), shared,
                (ia3[b0 : b0 + bn_, r0 : r0 + rn], ib3[b0 : b0 + bn_], c3[b0 : b0 + bn_, r0 : r0 + rn], table,
                 i32(rn), i32(cols), i32(depth), i64(lda), i64(ldb), i64(ldc), i64(sa), i64(sb), i64(sc))))
    return launches


def _lut_ctype(lut, out):
    if lut.dtype == np.int32 and out.dtype == np.int32:
        return "int"
    if lut.dtype == np.float32 and out.dtype == np.float32:
        return "float"
    raise TypeError(f"table kernels take an int32 table with int32 output or float32 with float32, got "
                    f"{lut.dtype} and {out.dtype}.")


def _flat_grid(n, num_sms):
    return (max(1, min(_ceil(n, 256), num_sms * 32)), 1, 1)


def plan_multiply_f32(fa, fb, out, m, truncate, lut, num_sms=_DEFAULT_SMS) -> list[Launch]:
    """Elementwise products of equally long flat float32 arrays."""
    n = out.size
    if n == 0:
        return []
    return [Launch(f"amsim_multiply_f32<{m}>", _flat_grid(n, num_sms), (256, 1, 1), 0,
                   (fa, fb, out, lut, np.int64(n), np.int32(bool(truncate))))]


def plan_multiply_lut(ia, ib, out, bits, lut, num_sms=_DEFAULT_SMS) -> list[Launch]:
    """Elementwise table products ``out = lut[ia, ib]`` of flat int32 code arrays (int32 or float32 table)."""
    n = out.size
    if n == 0:
        return []
    return [Launch(f"amsim_multiply_lut<{_lut_ctype(lut, out)}, {bits}>", _flat_grid(n, num_sms), (256, 1, 1), 0,
                   (ia, ib, out, lut, np.int64(n)))]


def _pair(v, name):
    if isinstance(v, (int, np.integer)):
        return int(v), int(v)
    v = tuple(int(t) for t in v)
    if len(v) != 2:
        raise ValueError(f"{name} must be an int or a pair of ints, got {v!r}.")
    return v


def _padding(p):
    if isinstance(p, (int, np.integer)):
        return (int(p), int(p)), (int(p), int(p))
    p = tuple(p)
    if len(p) == 2 and all(isinstance(t, (int, np.integer)) for t in p):
        return (int(p[0]), int(p[0])), (int(p[1]), int(p[1]))
    if len(p) == 2 and all(len(t) == 2 for t in p):
        return tuple(int(t) for t in p[0]), tuple(int(t) for t in p[1])
    raise ValueError(f"padding must be an int, (ph, pw) or ((top, bottom), (left, right)); got {p!r}.")


def conv_geometry(x_shape, w_shape, stride, padding, dilation, groups):
    """Checked geometry of an NHWC convolution: a dict with the output shape and every size the plan needs."""
    if len(x_shape) != 4 or len(w_shape) != 4:
        raise ValueError(f"conv2d_nhwc takes x of shape (N, H, W, Cin) and w of shape (KH, KW, Cin // groups, Cout); "
                         f"got {tuple(x_shape)} and {tuple(w_shape)}.")
    n, h, w, c = (int(v) for v in x_shape)
    kh, kw, cg, cout = (int(v) for v in w_shape)
    groups = int(groups)
    if groups < 1 or c != cg * groups or cout % groups:
        raise ValueError(f"conv2d_nhwc: with groups={groups}, Cin={c} must equal groups * w.shape[2] ({cg}) and "
                         f"Cout={cout} must be a multiple of groups.")
    sh, sw = _pair(stride, "stride")
    dh, dw = _pair(dilation, "dilation")
    (pt, pb), (pl, pr) = _padding(padding)
    if min(sh, sw, dh, dw) < 1 or min(pt, pb, pl, pr) < 0:
        raise ValueError("conv2d_nhwc: stride and dilation must be >= 1 and padding >= 0.")
    oh = (h + pt + pb - dh * (kh - 1) - 1) // sh + 1
    ow = (w + pl + pr - dw * (kw - 1) - 1) // sw + 1
    if oh < 1 or ow < 1 or kh < 1 or kw < 1:
        raise ValueError(f"conv2d_nhwc: the dilated kernel does not fit the padded input (output {oh} x {ow}).")
    return dict(n=n, h=h, w=w, c=c, kh=kh, kw=kw, cg=cg, cout=cout, groups=groups, sh=sh, sw=sw, dh=dh, dw=dw,
                pt=pt, pl=pl, oh=oh, ow=ow)


def plan_conv2d_nhwc(x, w2, out, geo, xp, gemm_planner, pad_value, max_chunk_bytes=1 << 28) -> list[Launch]:
    """Launches for a convolution by chunked im2col: im2col of a chunk of output pixels, then one batched
    GEMM over the groups (batch = group, strides pick the group's weights and output channels).

    Arguments:
        x: (N, H, W, Cin) C-contiguous operand array (float32, or int32 table indices).
        w2: (KH * KW * cg, Cout) C-contiguous weights (HWIO reshaped).
        out: (N, OH, OW, Cout) C-contiguous output.
        geo: :func:`conv_geometry`.
        gemm_planner: ``f(a3, b3, c3) -> launches`` for this multiplier.
        pad_value: the operand outside the image (+0.0, or the table index of the integer 0).
        max_chunk_bytes: bound of the im2col buffer.
    """
    g = geo
    if x.dtype not in (np.float32, np.int32) or np.asarray(pad_value).dtype != x.dtype:
        raise TypeError(f"im2col takes float32 or int32 operands with a padding value of the same type, got "
                        f"{x.dtype} and {np.asarray(pad_value).dtype}.")
    kdim = g["kh"] * g["kw"] * g["cg"]
    npix_total = g["n"] * g["oh"] * g["ow"]
    if out.size == 0:
        return []
    if kdim == 0:
        raise ValueError("conv2d_nhwc: the kernel has no input channels.")
    groups, cout = g["groups"], g["cout"]
    cog = cout // groups
    item = np.dtype(x.dtype).itemsize
    chunk = int(max(1, min(npix_total, max_chunk_bytes // (groups * kdim * item))))
    col = xp.empty(groups * chunk * kdim, dtype=x.dtype)
    out2 = out.reshape(npix_total, cout)
    b3 = _as_strided(xp, w2, (groups, kdim, cog), (cog, cout, 1))
    i32, i64 = np.int32, np.int64
    launches = []
    for p0, npix in _chunks(npix_total, chunk):
        colv = col[: groups * npix * kdim]
        total = groups * npix * kdim
        launches.append(Launch(
            f"amsim_im2col_nhwc<{'float' if x.dtype == np.float32 else 'int'}>", _flat_grid(total, _DEFAULT_SMS),
            (256, 1, 1), 0,
            (x, colv, pad_value, i32(g["h"]), i32(g["w"]), i32(g["c"]), i32(g["oh"]), i32(g["ow"]), i32(g["kh"]),
             i32(g["kw"]), i32(g["sh"]), i32(g["sw"]), i32(g["pt"]), i32(g["pl"]), i32(g["dh"]), i32(g["dw"]),
             i32(groups), i32(g["cg"]), i64(p0), i64(npix))))
        a3 = colv.reshape(groups, npix, kdim)
        c3 = _as_strided(xp, out2[p0 : p0 + npix], (groups, npix, cog), (cog, cout, 1))
        launches += gemm_planner(a3, b3, c3)
    return launches


def _as_strided(xp, x, shape, elem_strides):
    item = x.dtype.itemsize
    strides = tuple(s * item for s in elem_strides)
    if xp is np:
        return np.lib.stride_tricks.as_strided(x, shape, strides)
    return cupy.lib.stride_tricks.as_strided(x, shape, strides)


# ---------------------------------------------------------------------------------------------------------
# running plans on the GPU
# ---------------------------------------------------------------------------------------------------------
_FUNCS: dict = {}
_LOCK = threading.Lock()


def _module(kernel: str):
    # one module per instantiation: only what is launched gets compiled (the expand kernels take seconds each)
    return cupy.RawModule(code=nv.kernel_source(), options=nv.compile_options(), name_expressions=[kernel])


def _function(kernel: str, shared: int):
    dev = cupy.cuda.Device().id
    with _LOCK:
        fn = _FUNCS.get((dev, kernel))
        if fn is None:
            fn = _module(kernel).get_function(kernel)
            _FUNCS[(dev, kernel)] = fn
        if shared > 48 * 1024 and fn.max_dynamic_shared_size_bytes < shared:
            fn.max_dynamic_shared_size_bytes = shared
    return fn


def _precompile_chunk(names):
    for name in names:
        _module(name).compile()
    return len(names)


def precompile(names=None, workers: int = 1) -> int:
    """Compile kernels into CuPy's on-disk cache ahead of use (e.g. on a fresh GPU machine), ``workers``
    processes in parallel. Needs a GPU. Returns the number of kernels compiled."""
    names = list(nv.all_kernel_names() if names is None else names)
    if workers <= 1:
        return _precompile_chunk(names)
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    chunks = [names[i::workers] for i in range(workers)]  # round robin spreads the slow expand kernels
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as ex:
        return sum(ex.map(_precompile_chunk, chunks))


def run(launches) -> None:
    """Launch a plan on the current stream, in order."""
    for la in launches:
        _function(la.kernel, la.shared)(la.grid, la.block, la.args, shared_mem=la.shared)


# A training step calls the same few GEMMs again and again, and planning one (shapes, strides, kernel choice,
# scratch arrays) costs more host time than launching it. So the first call with a given signature records its
# plan as a replay: arrays become (slot, byte offset) references to the call's operands or to one scratch
# buffer, and later calls only allocate that buffer, clear its zeroed part and launch.
_REPLAY_CACHE_SIZE = 512
_REPLAYS: "collections.OrderedDict" = collections.OrderedDict()
_REPLAYS_LOCK = threading.Lock()
_SCRATCH_ALIGN = 256  # what CuPy's allocator gives each array (the kernels' vector loads need 16)


class _Recorder:
    """The ``xp`` of a recorded plan: allocates through CuPy and notes each scratch array (and whether it must
    start zeroed); any other use of the module makes the plan unfit for replay."""

    def __init__(self):
        self.scratch = []
        self.replayable = True

    def zeros(self, shape, dtype):
        return self._note(cupy.zeros(shape, dtype), True)

    def empty(self, shape, dtype):
        return self._note(cupy.empty(shape, dtype), False)

    def _note(self, x, zeroed):
        self.scratch.append((x, zeroed))
        return x

    def __getattr__(self, name):
        self.replayable = False  # e.g. a copy of an operand with unusual strides: work the replay would skip
        return getattr(cupy, name)


@dataclasses.dataclass(frozen=True)
class _Replay:
    # per launch: (function, grid, block, shared, args, refs); each ref (index, slot, offset) makes args[index] the
    # pointer ``offset`` bytes from the data pointer of operand ``slot`` (the scratch buffer is the slot after them)
    launches: tuple
    scratch_bytes: int
    zeroed_bytes: int  # the scratch buffer's first bytes, cleared before the launches


def _extent(x):
    """Byte range [lo, hi) that an array view can touch, relative to its data pointer."""
    if x.size == 0:
        return 0, 0
    lo = sum((n - 1) * st for n, st in zip(x.shape, x.strides) if st < 0)
    hi = sum((n - 1) * st for n, st in zip(x.shape, x.strides) if st > 0)
    return lo, hi + x.dtype.itemsize


def _as_replay(launches, operands, rec, persistent):
    """The replay of a plan just run on ``operands``, or None when it cannot be replayed (work outside the
    launches, operands that overlap, or an array that is neither an operand, a scratch array nor ``persistent``)."""
    if not rec.replayable:
        return None
    regions = []  # (lo, hi, slot, offset of lo from the slot's data pointer)
    for slot, x in enumerate(operands):
        lo, hi = _extent(x)
        regions.append((x.data.ptr + lo, x.data.ptr + hi, slot, lo))
    spans = sorted(r[:2] for r in regions if r[1] > r[0])
    if any(b[0] < a[1] for a, b in zip(spans, spans[1:])):
        return None  # which operand a view came from would be ambiguous
    order = [x for x in rec.scratch if x[1]] + [x for x in rec.scratch if not x[1]]  # zeroed ones first
    nbytes = zeroed = 0
    for x, is_zeroed in order:
        lo, hi = _extent(x)
        regions.append((x.data.ptr + lo, x.data.ptr + hi, len(operands), nbytes))
        nbytes = _ceil(nbytes + hi - lo, _SCRATCH_ALIGN) * _SCRATCH_ALIGN
        zeroed = nbytes if is_zeroed else zeroed
    keep = {id(t) for t in persistent}
    out = []
    for la in launches:
        args, refs = list(la.args), []
        for i, a in enumerate(args):
            if isinstance(a, cupy.ndarray) and id(a) not in keep:
                ptr = a.data.ptr
                hit = [r for r in regions if r[0] <= ptr < r[1] or ptr == r[0]]
                if not hit:
                    return None
                lo, _, slot, base = hit[0]
                refs.append((i, slot, base + ptr - lo))
                args[i] = None  # filled in by each replay
        out.append((_function(la.kernel, la.shared), la.grid, la.block, la.shared, tuple(args), tuple(refs)))
    return _Replay(tuple(out), nbytes, zeroed)


def _replay(rp: _Replay, operands) -> None:
    ptrs = [x.data.ptr for x in operands]
    if rp.scratch_bytes:
        buf = cupy.empty(rp.scratch_bytes, np.uint8)  # freed on return: CuPy reuses it only for later work
        ptrs.append(buf.data.ptr)                     # on this stream
        if rp.zeroed_bytes:
            cupy.cuda.runtime.memsetAsync(buf.data.ptr, 0, rp.zeroed_bytes, cupy.cuda.get_current_stream().ptr)
    for fn, grid, block, shared, args, refs in rp.launches:
        args = list(args)
        for i, slot, offset in refs:
            args[i] = np.uint64(ptrs[slot] + offset)
        fn(grid, block, tuple(args), shared_mem=shared)


def clear_plan_cache() -> None:
    """Forget every recorded plan (benchmarks time planning with it; nothing else needs it)."""
    with _REPLAYS_LOCK:
        _REPLAYS.clear()


def _signature(x):
    return x.shape, x.strides, x.dtype.char


def run_planned(key, make_planner, operands) -> None:
    """Run the plan ``make_planner()(*operands, xp)`` on the current stream, or replay the plan recorded for
    ``key``, which together with the operands' shapes, strides and dtypes must determine the plan. The planner's
    ``persistent`` attribute lists the arrays that outlive the call (device tables) that its plans may pass."""
    key = (cupy.cuda.Device().id, key) + tuple(_signature(x) for x in operands)
    with _REPLAYS_LOCK:
        rp = _REPLAYS.get(key)
        if rp is not None:
            _REPLAYS.move_to_end(key)
    if rp is not None:
        _replay(rp, operands)
        return
    planner = make_planner()
    rec = _Recorder()
    launches = planner(*operands, rec)
    run(launches)
    rp = _as_replay(launches, operands, rec, planner.persistent)
    if rp is not None:
        with _REPLAYS_LOCK:
            _REPLAYS[key] = rp
            while len(_REPLAYS) > _REPLAY_CACHE_SIZE:
                _REPLAYS.popitem(last=False)


_PROPS: dict = {}


def device_limits():
    """(SM count, opt-in shared memory per block) of the current device."""
    dev = cupy.cuda.Device().id
    if dev not in _PROPS:
        props = cupy.cuda.runtime.getDeviceProperties(dev)
        _PROPS[dev] = (int(props["multiProcessorCount"]), int(props.get("sharedMemPerBlockOptin", 48 * 1024)))
    return _PROPS[dev]


def _float_planner(mult, algo=None):
    sms, max_shared = device_limits()
    tables = device_tables(mult.table)
    truncate = mult.rounding == "truncate"

    def planner(a3, b3, c3, xp=cupy):
        return plan_gemm_f32(a3, b3, c3, mult.mantissa_bits, truncate, tables, xp, algo, sms, max_shared)

    planner.persistent = tuple(t for t in tables if isinstance(t, cupy.ndarray))
    return planner


def _table_bits(mult) -> int:
    return int(mult.table.values.shape[0]).bit_length() - 1  # codes index a (2**bits, 2**bits) table


def _lut_planner(mult, algo=None):
    sms, max_shared = device_limits()
    lut, lut_t = device_tables(mult.table), device_table_t(mult.table)

    def planner(a3, b3, c3, xp=cupy):
        return plan_gemm_lut(a3, b3, c3, _table_bits(mult), lut, xp, max_shared, algo, sms, lut_t)

    planner.persistent = (lut, lut_t)
    return planner


def _check_int_accumulator(mult, depth):
    biggest = int(np.abs(mult.table.values.astype(np.int64)).max())
    if depth * biggest > _I32_MAX:
        raise UnsupportedError(f"with K={depth} and products up to {biggest}, the int32 accumulator could overflow; "
                               f"split the contraction into chunks of at most {_I32_MAX // max(1, biggest)}.")


class CupyBackend:
    """CuPy arrays, computed by the CUDA kernels of amsim_gemm.cu (same interface as NumpyBackend)."""

    name = "cupy"
    xp = cupy

    def gemm_f32(self, a, b, out, mult, algo=None):
        _run_gemm(mult, algo, a, b, out)
        return out

    def gemm_i32(self, ia, ib, out, mult):
        _run_gemm(mult, None, ia, ib, out)
        return out

    def multiply_f32(self, a, b, out, mult):
        lut = device_tables(mult.table)[0]
        run(plan_multiply_f32(a, b, out, mult.mantissa_bits, mult.rounding == "truncate", lut, device_limits()[0]))
        return out

    def multiply_i32(self, ia, ib, out, mult):
        run(plan_multiply_lut(ia, ib, out, _table_bits(mult), device_tables(mult.table), device_limits()[0]))
        return out

    def gemm_table(self, ia, ib, out, mult):
        """Full-operand float tables: ``out[b] = sum_k T[ia[b, i, k], ib[b, k, j]]``, float32 in k order."""
        _run_gemm(mult, None, ia, ib, out)
        return out

    def multiply_table(self, ia, ib, out, mult):
        run(plan_multiply_lut(ia, ib, out, _table_bits(mult), device_tables(mult.table), device_limits()[0]))
        return out


# ---------------------------------------------------------------------------------------------------------
# public GPU-only entry points
# ---------------------------------------------------------------------------------------------------------
def _int_indices(x, mult):
    lo = mult.int_range[0]
    return (x.astype(np.int64) - lo).astype(np.int32)  # order="K": a transposed view stays transposed


def _kernel_operands(mult, xs, xp):
    """What the kernels read for operands ``xs``: int32 codes for table multipliers (integer, full-operand),
    float32 values (converted to the operand format, if the multiplier has one) for significand tables."""
    from .._ops import _codes, _convert

    if mult.is_int:
        return [_int_indices(x, mult) for x in xs]
    xs = [_convert(x, mult, xp) for x in xs]
    if mult.is_code:
        return [_codes(x, mult, xp).astype(np.int32, copy=False) for x in xs]
    return xs


def _gemm_planner(mult, algo=None):
    """``planner(a3, b3, c3, xp)`` for the multiplier: table GEMMs on codes for integer and full-operand
    tables, significand-table GEMMs on float32 values otherwise."""
    return _lut_planner(mult, algo) if mult.is_int or mult.is_code else _float_planner(mult, algo)


def _plan_key(mult, algo):
    """What a plan depends on besides the operands: the table (and through it the mantissa width or code
    bits), the rounding of significand tables, the kernel asked for."""
    return mult.table, None if mult.is_int or mult.is_code else mult.rounding, algo


def _run_gemm(mult, algo, a3, b3, c3):
    run_planned(("gemm", _plan_key(mult, algo)), lambda: _gemm_planner(mult, algo), (a3, b3, c3))


def gemm(a, b, mult, trans_a=False, trans_b=False, out=None, algo=None):
    """``op(a) @ op(b)`` on CuPy arrays, with op = transpose where asked, read in place (no copies).

    Arguments:
        a, b: 2-D or 3-D CuPy arrays (float32 for a float multiplier, integers in range for an integer one);
            3-D batches must match or be 1 (broadcast without copying).
        mult: the :class:`amsim.Multiplier`.
        trans_a, trans_b: use the transpose of the last two axes.
        out: optional C-contiguous output (float32 / int32).
        algo: the kernel, for tests and benchmarks: significand tables "expand16", "expand", "wide", "gather"
            or "dot"; integer and full-operand tables "lut" or "lutw"; None chooses.

    Returns:
        (M, N) if both operands are 2-D, else (batch, M, N); bit-identical to ``amsim.golden.matmul``.
    """
    from .._ops import _check_mult, _check_operand, _finish, _output

    mult = _check_mult(mult)
    for name, x in (("a", a), ("b", b)):
        if not isinstance(x, cupy.ndarray) or x.ndim not in (2, 3):
            raise TypeError(f"gemm: {name} must be a 2-D or 3-D cupy.ndarray; use amsim.matmul for other inputs.")
        _check_operand(x, mult, name)
    opa = a.swapaxes(-1, -2) if trans_a else a
    opb = b.swapaxes(-1, -2) if trans_b else b
    if opa.shape[-1] != opb.shape[-2]:
        raise ValueError(f"gemm: contraction sizes differ: op(a) is {opa.shape}, op(b) is {opb.shape}.")
    a3 = opa if opa.ndim == 3 else opa[None]
    b3 = opb if opb.ndim == 3 else opb[None]
    nb = max(a3.shape[0], b3.shape[0])
    if a3.shape[0] not in (1, nb) or b3.shape[0] not in (1, nb):
        raise ValueError(f"gemm: batch sizes {a3.shape[0]} and {b3.shape[0]} do not broadcast.")
    rows, depth, cols = a3.shape[1], a3.shape[2], b3.shape[2]
    shape = (rows, cols) if a.ndim == 2 and b.ndim == 2 else (nb, rows, cols)
    res, final = _output(out, shape, np.int32 if mult.is_int else np.float32, cupy, a, b)
    c3 = res.reshape(nb, rows, cols)
    if c3.size == 0:
        return _finish(res, final)
    if depth == 0:
        res.fill(0)
        return _finish(res, final)
    if mult.is_int:
        _check_int_accumulator(mult, depth)
    a3, b3 = _kernel_operands(mult, [a3, b3], cupy)
    a3 = cupy.broadcast_to(a3, (nb, rows, depth))  # batch stride 0: broadcast without copying
    b3 = cupy.broadcast_to(b3, (nb, depth, cols))
    _run_gemm(mult, algo, a3, b3, c3)
    return _finish(res, final)


def conv2d_nhwc(x, w, mult, stride=1, padding=0, dilation=1, groups=1, *, max_chunk_bytes=1 << 28, algo=None):
    """2-D convolution (cross-correlation, as in deep-learning frameworks) through an approximate multiplier.

    Contract:
        ``out[n, oh, ow, g * cog + o] = sum_k xcol[k] (x) w[kh, kw, c, g * cog + o]`` for the group g of the
        output channel (cog = Cout // groups), summed over k = (kh * KW + kw) * cg + c in increasing order
        with float32 additions from +0.0 (exact int32 sums for integer multipliers), where
        ``xcol[k] = x[n, oh * sh - top + kh * dh, ow * sw - left + kw * dw, g * cg + c]`` and positions outside
        the image are the operand +0.0 (integer multipliers: 0). Padding takes part in the products like any
        operand, so ``0 (x) Inf`` gives NaN, exactly as ``amsim.golden.matmul`` over an explicit zero-padded
        im2col (which is what the GPU tests compare against).

    Arguments:
        x: (N, H, W, Cin) CuPy array, float32 (float multiplier) or integers in the operand range.
        w: (KH, KW, Cin // groups, Cout) weights (HWIO), same kind.
        mult: the :class:`amsim.Multiplier`.
        stride, dilation: int or (h, w).
        padding: int, (ph, pw), or ((top, bottom), (left, right)).
        groups: feature groups; Cin and Cout must be multiples.
        max_chunk_bytes: bound on the im2col buffer; the output pixels are processed in chunks that fit.
        algo: float GEMM kernel ("expand16", "expand", "wide", "gather", "dot" or None), for tests and benchmarks.

    Returns:
        (N, OH, OW, Cout) float32 or int32 CuPy array.
    """
    from .._ops import _check_mult, _check_operand

    mult = _check_mult(mult)
    for name, v in (("x", x), ("w", w)):
        if not isinstance(v, cupy.ndarray):
            raise TypeError(f"conv2d_nhwc: {name} must be a cupy.ndarray.")
        _check_operand(v, mult, name)
    geo = conv_geometry(x.shape, w.shape, stride, padding, dilation, groups)
    kdim = geo["kh"] * geo["kw"] * geo["cg"]
    _check_sizes(K=kdim, pixels=geo["n"] * geo["oh"] * geo["ow"])
    dtype = np.int32 if mult.is_int else np.float32
    out = cupy.empty((geo["n"], geo["oh"], geo["ow"], geo["cout"]), dtype=dtype)
    if out.size == 0:
        return out
    if kdim == 0:
        out.fill(0)
        return out
    if mult.is_int:
        _check_int_accumulator(mult, kdim)
    xs, ws = _kernel_operands(mult, [x, w], cupy)
    # the operand +0.0 (integer 0) as the kernels see it, a value, an index or a code: computed on the host
    pad = _kernel_operands(mult, [np.zeros((1,), x.dtype)], np)[0][0]
    xs = cupy.ascontiguousarray(xs)
    w2 = cupy.ascontiguousarray(ws).reshape(kdim, geo["cout"])

    def make_planner():
        gemm_planner = _gemm_planner(mult, algo)

        def planner(xs, w2, out, xp):
            gemm = functools.partial(gemm_planner, xp=xp)
            return plan_conv2d_nhwc(xs, w2, out, geo, xp, gemm, pad, max_chunk_bytes)

        planner.persistent = gemm_planner.persistent
        return planner

    key = ("conv", _plan_key(mult, algo), tuple(sorted(geo.items())), pad.tobytes(), max_chunk_bytes)
    run_planned(key, make_planner, (xs, w2, out))
    return out
