"""CPU kernels (Numba), bit-identical to the golden model in amsim/_golden.py.

Float GEMM strategy ("row expansion"): for a block of k and a block of columns, expand the LUT against the
decoded B operand, ``T[k, ma, j] = LUT[ma, mb[k, j]] * 2**eb[k, j]`` (signed), so the inner loop over j is a
contiguous ``C[i, j] += s_a * T[k, ma[i, k], j]`` with ``s_a = +-2**ea``: no gathers, vectorisable, and exact
because scaling by a power of two in the normal range loses nothing. Operands whose exponent could push an
intermediate or a product out of the normal range (and Inf/NaN) are flagged "special"; every output that touches
one is recomputed by the scalar path, which assembles the product from bits exactly like the semantics say.
Zeros and subnormals stay on the fast path as a signed zero scale. Additions are plain float32 adds in k order
(no fastmath, so LLVM emits no FMA).
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import prange
from numba.core import types
from numba.extending import intrinsic

NAN_BITS = np.uint32(0x7FC00000)
NO_EXP = -100000  # lut_e value marking a zero table entry

# Blocking of the expansion kernel: T holds KB * 2**m * NB float32 values (~1 MiB for m = 7).
_NB = 256
_KB_TARGET_ELEMS = 1 << 18


# ---------------------------------------------------------------------------------------------------------
# table preparation
# ---------------------------------------------------------------------------------------------------------
def float_kernel_tables(values: np.ndarray):
    """Split a float32 table into (float table, exponent, 23-bit fraction) and the tame exponent ranges.

    Returns (lutf, lut_e, lut_f, ranges) where ``ranges = (a_lo, a_hi, b_lo, b_hi)`` bounds the unbiased
    operand exponents for which every product and the intermediate ``p * 2**eb`` stay normal.
    """
    lutf = np.ascontiguousarray(values, dtype=np.float32)
    p = lutf.astype(np.float64)
    frac, exp = np.frexp(p)  # p = frac * 2**exp, frac in [0.5, 1): normalised even for float32 subnormals
    nz = p > 0
    lut_e = np.where(nz, exp - 1, NO_EXP).astype(np.int32)
    mant = np.where(nz, frac * 2.0 - 1.0, 0.0)  # in [0, 1), 23 significant bits at most
    lut_f = np.round(mant * 2.0**23).astype(np.uint32)
    if nz.any():
        e_lo, e_hi = int(lut_e[nz].min()), int(lut_e[nz].max())
    else:
        e_lo = e_hi = 0
    s_lo, s_hi = -126 - e_lo, 127 - e_hi  # allowed range of ea + eb
    a_lo, a_hi = -((-s_lo) // 2), s_hi // 2  # ceil(s_lo / 2), floor(s_hi / 2)
    a_lo, a_hi = max(a_lo, -126), min(a_hi, 127)
    if s_lo > s_hi or a_lo > 0 or a_hi < 0:
        ranges = (1, 0, 1, 0)  # empty: everything takes the exact scalar path
    else:
        ranges = (a_lo, a_hi, s_lo - a_lo, s_hi - a_hi)
    return lutf, lut_e, lut_f, np.array(ranges, dtype=np.int32)


# ---------------------------------------------------------------------------------------------------------
# scalar semantics
# ---------------------------------------------------------------------------------------------------------
@numba.njit(inline="always")
def round_bits(u, shift, truncate):
    """Round float32 bits to the kept fraction field; NaN becomes the canonical NaN."""
    if (u & np.uint32(0x7F800000)) == np.uint32(0x7F800000) and (u & np.uint32(0x7FFFFF)) != 0:
        return NAN_BITS
    if not truncate:
        u = u + ((np.uint32(1) << np.uint32(shift - 1)) - np.uint32(1)) + ((u >> np.uint32(shift)) & np.uint32(1))
    return u & ~((np.uint32(1) << np.uint32(shift)) - np.uint32(1))


@numba.njit(inline="always")
def product_bits(ua, ub, shift, lmask, lut_e, lut_f):
    """The approximate product of two rounded float32 bit patterns, as float32 bits (docs/semantics.md)."""
    s = (ua ^ ub) & np.uint32(0x80000000)
    ea = np.int32((ua >> np.uint32(23)) & np.uint32(0xFF))
    eb = np.int32((ub >> np.uint32(23)) & np.uint32(0xFF))
    nan_a = ea == 255 and (ua & np.uint32(0x7FFFFF)) != 0
    nan_b = eb == 255 and (ub & np.uint32(0x7FFFFF)) != 0
    if nan_a or nan_b:
        return NAN_BITS
    if ea == 255 or eb == 255:
        if ea == 0 or eb == 0:
            return NAN_BITS
        return s | np.uint32(0x7F800000)
    if ea == 0 or eb == 0:
        return s
    ia = (ua >> np.uint32(shift)) & np.uint32(lmask)
    ib = (ub >> np.uint32(shift)) & np.uint32(lmask)
    pe = lut_e[ia, ib]
    if pe == NO_EXP:
        return s
    e = pe + ea + eb - 254
    if e > 127:
        return s | np.uint32(0x7F800000)
    if e < -126:
        return s
    return s | (np.uint32(e + 127) << np.uint32(23)) | lut_f[ia, ib]


@intrinsic
def bits_to_f32(typingctx, u):
    """Reinterpret the low 32 bits of an integer as a float32 (a register bitcast, no memory)."""
    if not isinstance(u, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        v = args[0]
        if u.bitwidth > 32:
            v = builder.trunc(v, ir.IntType(32))
        elif u.bitwidth < 32:
            v = builder.zext(v, ir.IntType(32))
        return builder.bitcast(v, ir.FloatType())

    return types.float32(u), codegen


@intrinsic
def f32_to_bits(typingctx, x):
    """Reinterpret a float32 as uint32. (Array .view() inside parallel loops is avoided: parfors can mis-alias it.)"""
    if x != types.float32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return types.uint32(x), codegen


# ---------------------------------------------------------------------------------------------------------
# operand decoding
# ---------------------------------------------------------------------------------------------------------
@numba.njit(parallel=True, cache=True)
def decode_float(x, m, truncate, e_lo, e_hi, bits, idx, scale, special):
    """Round and decode a 2-D float32 array.

    Writes the rounded bits, the LUT index (fraction field), the signed power-of-two scale (+-0 for zero and
    subnormal operands, which the semantics flush) and a flag for operands the fast path must not touch.
    """
    shift = 23 - m
    lmask = (1 << m) - 1
    rows, cols = x.shape
    for i in prange(rows):
        for j in range(cols):
            u = round_bits(f32_to_bits(x[i, j]), shift, truncate)
            bits[i, j] = u
            e = np.int32((u >> np.uint32(23)) & np.uint32(0xFF))
            sign = u & np.uint32(0x80000000)
            if e == 0:
                idx[i, j] = 0
                scale[i, j] = bits_to_f32(sign)
                special[i, j] = False
            else:
                idx[i, j] = np.int32((u >> np.uint32(shift)) & np.uint32(lmask))
                special[i, j] = e == 255 or e - 127 < e_lo or e - 127 > e_hi
                scale[i, j] = bits_to_f32(sign | (np.uint32(e) << np.uint32(23))) if e != 255 else np.float32(0)


# ---------------------------------------------------------------------------------------------------------
# float GEMM
# ---------------------------------------------------------------------------------------------------------
@numba.njit(parallel=True, cache=True)
def _gemm_expand_f32(c, idx_a, scale_a, idx_b, scale_b, lutf, kb_size, nb_size):
    m_rows, k_len = idx_a.shape
    n_cols = idx_b.shape[1]
    n_l = lutf.shape[0]
    t = np.empty((kb_size, n_l, nb_size), dtype=np.float32)
    for i in prange(m_rows):
        for j in range(n_cols):
            c[i, j] = np.float32(0.0)
    for j0 in range(0, n_cols, nb_size):
        nb = min(nb_size, n_cols - j0)
        for k0 in range(0, k_len, kb_size):
            kb = min(kb_size, k_len - k0)
            for q in prange(kb * n_l):
                kk = q // n_l
                r = q - kk * n_l
                k = k0 + kk
                for j in range(nb):
                    t[kk, r, j] = lutf[r, idx_b[k, j0 + j]] * scale_b[k, j0 + j]
            for i in prange(m_rows):
                row = c[i, j0 : j0 + nb]
                kk = 0
                while kk + 4 <= kb:
                    k = k0 + kk
                    s0 = scale_a[i, k]
                    s1 = scale_a[i, k + 1]
                    s2 = scale_a[i, k + 2]
                    s3 = scale_a[i, k + 3]
                    r0 = t[kk, idx_a[i, k], :nb]
                    r1 = t[kk + 1, idx_a[i, k + 1], :nb]
                    r2 = t[kk + 2, idx_a[i, k + 2], :nb]
                    r3 = t[kk + 3, idx_a[i, k + 3], :nb]
                    for j in range(nb):
                        row[j] = (((row[j] + s0 * r0[j]) + s1 * r1[j]) + s2 * r2[j]) + s3 * r3[j]
                    kk += 4
                while kk < kb:
                    k = k0 + kk
                    s0 = scale_a[i, k]
                    r0 = t[kk, idx_a[i, k], :nb]
                    for j in range(nb):
                        row[j] = row[j] + s0 * r0[j]
                    kk += 1


@numba.njit(cache=True)
def _dot_exact_path(ua, ub_t, i, j, shift, lmask, lut_e, lut_f):
    acc = np.float32(0.0)
    for k in range(ua.shape[1]):
        acc = acc + bits_to_f32(product_bits(ua[i, k], ub_t[j, k], shift, lmask, lut_e, lut_f))
    return acc


@numba.njit(parallel=True, cache=True)
def _fixup_f32(c, ua, ub_t, rows, cols, shift, lmask, lut_e, lut_f):
    """Recompute, through the scalar path, every output in a flagged row or column."""
    n_cols = c.shape[1]
    for q in prange(rows.shape[0]):
        i = rows[q]
        for j in range(n_cols):
            c[i, j] = _dot_exact_path(ua, ub_t, i, j, shift, lmask, lut_e, lut_f)
    m_rows = c.shape[0]
    for q in prange(m_rows * cols.shape[0]):
        i = q // cols.shape[0]
        j = cols[q - i * cols.shape[0]]
        c[i, j] = _dot_exact_path(ua, ub_t, i, j, shift, lmask, lut_e, lut_f)


@numba.njit(parallel=True, cache=True)
def _gemm_direct_f32(c, ua, ia, sa, pa, ub_t, ib_t, sb_t, pb_t, lutf, shift, lmask, lut_e, lut_f):
    """Batched per-element kernel for small problems: c[b, i, j] = sum_k a[b, i, k] (x) b[b, k, j]."""
    nbatch, m_rows, k_len = ia.shape
    n_cols = ib_t.shape[1]
    for q in prange(nbatch * m_rows):
        b = q // m_rows
        i = q - b * m_rows
        for j in range(n_cols):
            acc = np.float32(0.0)
            for k in range(k_len):
                if pa[b, i, k] or pb_t[b, j, k]:
                    p = bits_to_f32(product_bits(ua[b, i, k], ub_t[b, j, k], shift, lmask, lut_e, lut_f))
                else:
                    p = sa[b, i, k] * (lutf[ia[b, i, k], ib_t[b, j, k]] * sb_t[b, j, k])
                acc = acc + p
            c[b, i, j] = acc


@numba.njit(parallel=True, cache=True)
def multiply_f32(a, b, out, m, truncate, lut_e, lut_f):
    """Elementwise products of equally shaped flat float32 arrays."""
    shift = 23 - m
    lmask = (1 << m) - 1
    for q in prange(a.shape[0]):
        ua = round_bits(f32_to_bits(a[q]), shift, truncate)
        ub = round_bits(f32_to_bits(b[q]), shift, truncate)
        out[q] = bits_to_f32(product_bits(ua, ub, shift, lmask, lut_e, lut_f))


# ---------------------------------------------------------------------------------------------------------
# integer GEMM (exact int32 accumulation; the caller has checked that K * max|LUT| fits int32)
# ---------------------------------------------------------------------------------------------------------
@numba.njit(parallel=True, cache=True)
def _gemm_expand_i32(c, idx_a, idx_b, lut, kb_size, nb_size):
    m_rows, k_len = idx_a.shape
    n_cols = idx_b.shape[1]
    n_l = lut.shape[0]
    t = np.empty((kb_size, n_l, nb_size), dtype=np.int32)
    for i in prange(m_rows):
        for j in range(n_cols):
            c[i, j] = 0
    for j0 in range(0, n_cols, nb_size):
        nb = min(nb_size, n_cols - j0)
        for k0 in range(0, k_len, kb_size):
            kb = min(kb_size, k_len - k0)
            for q in prange(kb * n_l):
                kk = q // n_l
                r = q - kk * n_l
                for j in range(nb):
                    t[kk, r, j] = lut[r, idx_b[k0 + kk, j0 + j]]
            for i in prange(m_rows):
                row = c[i, j0 : j0 + nb]
                for kk in range(kb):
                    r0 = t[kk, idx_a[i, k0 + kk], :nb]
                    for j in range(nb):
                        row[j] += r0[j]


@numba.njit(parallel=True, cache=True)
def _gemm_direct_i32(c, ia, ib_t, lut):
    nbatch, m_rows, k_len = ia.shape
    n_cols = ib_t.shape[1]
    for q in prange(nbatch * m_rows):
        b = q // m_rows
        i = q - b * m_rows
        for j in range(n_cols):
            acc = np.int32(0)
            for k in range(k_len):
                acc += lut[ia[b, i, k], ib_t[b, j, k]]
            c[b, i, j] = acc


@numba.njit(parallel=True, cache=True)
def multiply_i32(ia, ib, out, lut):
    for q in prange(ia.shape[0]):
        out[q] = lut[ia[q], ib[q]]


# ---------------------------------------------------------------------------------------------------------
# drivers
# ---------------------------------------------------------------------------------------------------------
def _blocks(n_l: int, n_cols: int) -> tuple[int, int]:
    nb = min(_NB, max(n_cols, 1))
    kb = max(4, min(64, _KB_TARGET_ELEMS // (n_l * nb)))
    return kb, nb


def use_expansion(m_rows: int, n_cols: int, k_len: int, n_l: int) -> bool:
    """Row expansion pays when the expanded table is reused by enough rows (its cost is 2**m / rows)."""
    return k_len >= 4 and max(m_rows, n_cols) >= 2 * n_l


def _decode2(x, m, truncate, lo, hi):
    shape = x.shape
    bits = np.empty(shape, np.uint32)
    idx = np.empty(shape, np.int32)
    scale = np.empty(shape, np.float32)
    special = np.empty(shape, np.bool_)
    decode_float(x, m, truncate, lo, hi, bits, idx, scale, special)
    return bits, idx, scale, special


def gemm_f32(a, b, out, m, truncate, kt):
    """out[bt] = a[bt] @ b[bt] for 3-D float32 arrays (batch already broadcast). ``kt`` from float_kernel_tables."""
    lutf, lut_e, lut_f, ranges = kt
    n_l = lutf.shape[0]
    shift, lmask = 23 - m, n_l - 1
    nbatch, m_rows, k_len = a.shape
    n_cols = b.shape[2]
    if out.size == 0:
        return out
    if k_len == 0:
        out[...] = 0.0
        return out
    if use_expansion(m_rows, n_cols, k_len, n_l):
        for bt in range(nbatch):
            swapped = m_rows < n_cols
            if not swapped:
                x, y, lut_x, c = a[bt], b[bt], lutf, out[bt]
                lo_e, lo_f = lut_e, lut_f
            else:  # expand against A instead: C^T = B^T (x) A^T with the table transposed
                x, y = np.ascontiguousarray(b[bt].T), np.ascontiguousarray(a[bt].T)
                lut_x = np.ascontiguousarray(lutf.T)
                lo_e, lo_f = np.ascontiguousarray(lut_e.T), np.ascontiguousarray(lut_f.T)
                c = np.empty((n_cols, m_rows), np.float32)
            ux, ix, sx, px = _decode2(np.ascontiguousarray(x), m, truncate, ranges[0], ranges[1])
            uy, iy, sy, py = _decode2(np.ascontiguousarray(y), m, truncate, ranges[2], ranges[3])
            kb, nb = _blocks(n_l, y.shape[1])
            _gemm_expand_f32(c, ix, sx, iy, sy, lut_x, kb, nb)
            rows = np.flatnonzero(px.any(axis=1)).astype(np.int64)
            cols = np.flatnonzero(py.any(axis=0)).astype(np.int64)
            if rows.size or cols.size:
                _fixup_f32(c, ux, np.ascontiguousarray(uy.T), rows, cols, shift, lmask, lo_e, lo_f)
            if swapped:
                out[bt] = c.T
        return out
    ua, ia, sa, pa = _decode2(a.reshape(nbatch * m_rows, k_len), m, truncate, ranges[0], ranges[1])
    bt_ = np.ascontiguousarray(np.swapaxes(b, 1, 2)).reshape(nbatch * n_cols, k_len)
    ub, ib, sb, pb = _decode2(bt_, m, truncate, ranges[2], ranges[3])
    shp_a = (nbatch, m_rows, k_len)
    shp_b = (nbatch, n_cols, k_len)
    _gemm_direct_f32(out, ua.reshape(shp_a), ia.reshape(shp_a), sa.reshape(shp_a), pa.reshape(shp_a),
                     ub.reshape(shp_b), ib.reshape(shp_b), sb.reshape(shp_b), pb.reshape(shp_b),
                     lutf, shift, lmask, lut_e, lut_f)
    return out


def gemm_i32(ia, ib, out, lut):
    """out[bt] = a[bt] @ b[bt] for 3-D int32 table-index arrays (operand - lowest value)."""
    n_l = lut.shape[0]
    nbatch, m_rows, k_len = ia.shape
    n_cols = ib.shape[2]
    if out.size == 0:
        return out
    if k_len == 0:
        out[...] = 0
        return out
    if use_expansion(m_rows, n_cols, k_len, n_l):
        for bt in range(nbatch):
            if m_rows >= n_cols:
                kb, nb = _blocks(n_l, n_cols)
                _gemm_expand_i32(out[bt], np.ascontiguousarray(ia[bt]), np.ascontiguousarray(ib[bt]), lut, kb, nb)
            else:
                c = np.empty((n_cols, m_rows), np.int32)
                kb, nb = _blocks(n_l, m_rows)
                _gemm_expand_i32(c, np.ascontiguousarray(ib[bt].T), np.ascontiguousarray(ia[bt].T),
                                 np.ascontiguousarray(lut.T), kb, nb)
                out[bt] = c.T
        return out
    _gemm_direct_i32(out, np.ascontiguousarray(ia), np.ascontiguousarray(np.swapaxes(ib, 1, 2)), lut)
    return out


__all__ = ["float_kernel_tables", "gemm_f32", "gemm_i32", "multiply_f32", "multiply_i32", "use_expansion"]
