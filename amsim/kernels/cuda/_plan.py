"""Launch plans for the CUDA kernels: pure functions of shapes, strides and tables, with no CuPy import.

Every operation is turned into a *plan*, a list of :class:`Launch` records (kernel name expression, grid, block,
dynamic shared memory, arguments), by functions that only look at shapes and strides and allocate through ``xp``
(NumPy or CuPy). ``_runtime.py`` runs plans on a GPU; the test suite runs the very same plans on NumPy arrays
through a host emulation of the kernels (tests/test_cuda_host.py). The kernel-choice cost model is here too.
"""

from __future__ import annotations

import dataclasses
import sys

import numpy as np

from ..._errors import UnsupportedError
from ..._operands import I32_MAX, exponent_windows
from . import _config as cfg

__all__ = ["Launch", "plan_gemm_f32", "plan_gemm_lut", "plan_multiply_f32", "plan_multiply_lut", "plan_conv2d_nhwc",
           "conv_geometry", "choose_algo", "choose_lut_algo", "float_host_tables", "ALGOS"]

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
def bf16_pair_table(lut: np.ndarray):
    """The table for the expand16 kernel, or None if the table does not qualify.

    It qualifies when every entry is a normal float32 with at most 7 fraction bits (exact in bfloat16: the
    kernel scales entries by adding to their exponent field, which needs a normal, non-zero value) and
    2 <= m <= 7. Layout: uint32 [2**m, 2**(m-1)], word [ib, p] = bf16(lut[2p, ib]) | bf16(lut[2p+1, ib]) << 16.
    """
    n = lut.shape[0]
    m = n.bit_length() - 1
    if not cfg.E16_MIN_BITS <= m <= cfg.EXPAND_MAX_BITS:
        return None
    u = np.ascontiguousarray(lut, dtype=np.float32).view(np.uint32)
    exp_field = (u >> 23) & 0xFF
    if (u & 0xFFFF).any() or (exp_field == 0).any() or (exp_field == 0xFF).any() or (u >> 31).any():
        return None
    hi = (u >> 16).T  # [ib, r]
    return np.ascontiguousarray(hi[:, 0::2] | (hi[:, 1::2] << 16)).astype(np.uint32)


def fp16_table(lut: np.ndarray):
    """The wide kernel's half-size table (m in cfg.WIDE_H16_BITS), or None if the table does not qualify.

    It qualifies when every entry is exactly a positive normal fp16 value (at most 10 fraction bits, exponent
    in [-14, 15]): MBM, Mitchell and truncated tables do. Layout: uint16 [ib, r] = fp16 bits of lut[r, ib].
    """
    m = lut.shape[0].bit_length() - 1
    if m not in cfg.WIDE_H16_BITS:
        return None
    u = np.ascontiguousarray(lut, dtype=np.float32).view(np.uint32)
    exp_field = (u >> 23) & 0xFF
    if (u & 0x1FFF).any() or (u >> 31).any() or (exp_field < 127 - 14).any() or (exp_field > 127 + 15).any():
        return None
    return np.ascontiguousarray(((u - np.uint32(0x38000000)) >> 13).astype(np.uint16).T)


def float_host_tables(values: np.ndarray):
    """(lut, lut_t, ranges, lut_p, lut_h) on the host: the table with -0.0 entries made +0.0 (a zero product's
    sign comes from the operands, and the fast path multiplies the entry's sign in), its transpose,
    :func:`amsim._operands.exponent_windows`, :func:`bf16_pair_table` (None when the expand16 kernel cannot take
    the table) and
    :func:`fp16_table` (None when the wide kernel reads it as float32)."""
    lut = np.ascontiguousarray(values, dtype=np.float32)
    lut = np.where(lut == 0, np.float32(0.0), lut).astype(np.float32)
    return lut, np.ascontiguousarray(lut.T), exponent_windows(lut)[0], bf16_pair_table(lut), fp16_table(lut)


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
        if v > I32_MAX:
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
    return 4 * (nl * nl + cfg.EXP_BK * nl * cfg.EXP_BN + cfg.EXP_BK * (cfg.EXP_BM + 2 * cfg.EXP_BN))


def gather_shared_bytes(bits: int) -> int:
    lut = 4 << (2 * bits) if bits <= cfg.MAX_SHARED_LUT_BITS else 0
    return 4 * cfg.GAT_BK * (cfg.GAT_BM + cfg.GAT_BN) + lut


def expand16_shared_bytes(m: int) -> int:
    nl = 1 << m
    return 2 * nl * nl + cfg.E16_BK * nl * 2 * cfg.E16_BN + 4 * cfg.E16_BK * (cfg.E16_BM + 3 * cfg.E16_BN)


def wide_shared_bytes(m: int) -> int:
    nl = 1 << m
    bk = 2 if nl <= 512 else 1  # as in amsim_gemm_wide_f32
    return bk * nl * 4 * cfg.WIDE_BN + 4 * bk * (cfg.WIDE_BM + 3 * cfg.WIDE_BN)


# Products per clock per SM at full tiles, from each kernel's design (docs/gpu.md, "What the instruction counts
# say"); for m >= 8 the wide kernel is bound by L2 (4 * 2**m / 2048 bytes per product, ~21 bytes per clock per SM)
# and the gather kernel by one 32-byte L2 sector per product. Estimates, to be replaced by measurements.
_RATE = {"expand16": 40.0, "expand": 26.0, "wide": 23.0, "gather": 9.0, "dot": 8.0}
_DOT_BLOCKS_PER_SM = 8  # 128-thread blocks of ~30 registers: the dot kernel needs many in flight
_L2_BYTES_PER_CLOCK = 21.0


def _rate(algo, m, fp16_table=False):
    if m <= cfg.EXPAND_MAX_BITS:
        return _RATE[algo]
    if algo == "wide":
        entry = 2 if fp16_table and m in cfg.WIDE_H16_BITS else 4  # bytes per table entry
        return min(_RATE["wide"], _L2_BYTES_PER_CLOCK / (entry * 2**m / cfg.WIDE_BM))
    return _L2_BYTES_PER_CLOCK / 32.0 * (_RATE[algo] / _RATE["gather"])


def _tile(algo):
    return {"expand16": (cfg.E16_BM, cfg.E16_BN), "expand": (cfg.EXP_BM, cfg.EXP_BN),
            "wide": (cfg.WIDE_BM, cfg.WIDE_BN), "gather": (cfg.GAT_BM, cfg.GAT_BN)}[algo]


def dot_shared_bytes(m: int) -> int:
    return 4 << (2 * m) if m <= cfg.MAX_SHARED_LUT_BITS else 0


def _shared_bytes(algo, m):
    return {"expand16": expand16_shared_bytes, "expand": expand_shared_bytes, "wide": wide_shared_bytes,
            "gather": gather_shared_bytes, "dot": dot_shared_bytes}[algo](m)


def algo_estimate(algo, m, nbatch, rows, cols, num_sms=_DEFAULT_SMS, fp16_table=False) -> float:
    """Estimated products per clock per SM of a float GEMM kernel on this problem: the kernel's full-tile rate
    times the used fraction of its row and column tiles and of its last wave of blocks."""
    if algo == "dot":  # one output per thread: only the last block is partial, many blocks per SM
        outputs = nbatch * rows * cols
        blocks = nbatch * _ceil(rows * cols, cfg.DOT_THREADS)
        slots = num_sms * _DOT_BLOCKS_PER_SM
        return _rate(algo, m) * outputs / (blocks * cfg.DOT_THREADS) * blocks / (_ceil(blocks, slots) * slots)
    bm, bn = _tile(algo)
    brows, bcols = _ceil(rows, bm), _ceil(cols, bn)
    blocks = nbatch * brows * bcols
    waves = _ceil(blocks, num_sms)
    return _rate(algo, m, fp16_table) * rows / (brows * bm) * cols / (bcols * bn) * blocks / (waves * num_sms)


def usable_algos(m, max_shared=_DEFAULT_MAX_SHARED, bf16_table=False) -> list[str]:
    """The float GEMM kernels that can run mantissa width m with this table on this device."""
    algos = []
    if bf16_table and cfg.E16_MIN_BITS <= m <= cfg.EXPAND_MAX_BITS:
        algos.append("expand16")
    if cfg.EXPAND_MIN_BITS <= m <= cfg.EXPAND_MAX_BITS:
        algos.append("expand")
    if m >= cfg.WIDE_MIN_BITS:
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
        if lut_p is None or not cfg.E16_MIN_BITS <= m <= cfg.EXPAND_MAX_BITS:
            raise ValueError("the expand16 kernel needs 2 <= mantissa_bits <= 7 and a table whose entries are all "
                             "normal floats with at most 7 fraction bits (exact in bfloat16); use 'expand'.")
        bm, bn, threads, shared = cfg.E16_BM, cfg.E16_BN, cfg.E16_THREADS, expand16_shared_bytes(m)
        kernel, table_arg = f"amsim_gemm_expand16_f32<{m}, {int(b_t)}>", lut_p
    elif algo == "expand":
        if not cfg.EXPAND_MIN_BITS <= m <= cfg.EXPAND_MAX_BITS:
            raise ValueError(f"the expand kernel handles {cfg.EXPAND_MIN_BITS} <= mantissa_bits <= "
                             f"{cfg.EXPAND_MAX_BITS}, not {m}.")
        bm, bn, threads, shared = cfg.EXP_BM, cfg.EXP_BN, cfg.EXP_THREADS, expand_shared_bytes(m)
        kernel, table_arg = f"amsim_gemm_expand_f32<{m}, {int(b_t)}>", lut_t
    elif algo == "wide":
        if m < cfg.WIDE_MIN_BITS:
            raise ValueError(f"the wide kernel handles mantissa_bits >= {cfg.WIDE_MIN_BITS}, not {m}; use 'expand' "
                             "or 'gather'.")
        bm, bn, threads, shared = cfg.WIDE_BM, cfg.WIDE_BN, cfg.WIDE_THREADS, wide_shared_bytes(m)
        h16 = lut_h is not None  # half the table traffic; the kernel rebuilds float32 values exactly
        kernel, table_arg = f"amsim_gemm_wide_f32<{m}, {int(b_t)}, {int(h16)}>", lut_h if h16 else lut_t
    elif algo == "gather":
        bm, bn, threads, shared = cfg.GAT_BM, cfg.GAT_BN, cfg.GAT_THREADS, gather_shared_bytes(m)
        kernel, table_arg = f"amsim_gemm_gather_f32<{m}, {layout}>", lut
    elif algo == "dot":
        bm, bn, threads, shared = 2048, 1, cfg.DOT_THREADS, dot_shared_bytes(m)  # bm: rows per chunk / 65535
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
            launches.append(Launch(fixup, (_ceil(cols, cfg.FIXUP_THREADS), min(rn, 1024), bn_),
                                   (cfg.FIXUP_THREADS, 1, 1), 0, common + (lut, rowflag, colflag) + dims))
    return launches


def lutw_shared_bytes(bits: int) -> int:
    return 2 * (1 << bits) * 4 * cfg.WIDE_BN + 4 * 2 * (cfg.WIDE_BM + cfg.WIDE_BN)


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

    wide = estimate(_RATE["wide"], cfg.WIDE_BM, cfg.WIDE_BN, 1)
    gathered = estimate(_RATE["gather"] if bits <= cfg.MAX_SHARED_LUT_BITS else 3.0, cfg.GAT_BM, cfg.GAT_BN, 2)
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
        bm, bn, threads, shared = cfg.WIDE_BM, cfg.WIDE_BN, cfg.WIDE_THREADS, lutw_shared_bytes(bits)
        table = xp.ascontiguousarray(lut.T) if lut_t is None else lut_t  # [ib, ia]: the columns it streams
    elif algo == "lut":
        bm, bn, threads, shared = cfg.GAT_BM, cfg.GAT_BN, cfg.GAT_THREADS, gather_shared_bytes(bits)
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
    # the array's own module (NumPy or CuPy, already imported since x is one of its arrays), not xp: a recording
    # xp (_runtime._Recorder) counts every use of itself
    return sys.modules[type(x).__module__.split(".")[0]].lib.stride_tricks.as_strided(x, shape, strides)
