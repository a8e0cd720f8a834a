"""The Numba CPU kernels: scalar semantics, operand decoding, the row-expansion and direct GEMMs, the exact
fix-up, the elementwise products, and their serial twins (see amsim/kernels/cpu/__init__.py for the strategy)."""

from __future__ import annotations

import hashlib
import threading
import types as _pytypes
import warnings
from pathlib import Path

import numba
import numpy as np
from numba import prange
from numba.core import types
from numba.extending import overload

from ... import _fpenv as fpenv
from ..._operands import CANONICAL_NAN_BITS
from ._simd import (
    bits_to_f32,
    f32_to_bits,
    vadd,
    vand,
    vbitcast,
    vfma_exact,
    vgather,
    vload,
    vload16,
    vload_fixed8,
    vload_fixed16,
    vload_halves,
    vload_halves16,
    vload_pair,
    vload_quarters,
    vlow8,
    vmax_lanes,
    vmin_lanes,
    vmul,
    vsel_eq,
    vsel_lt,
    vshr,
    vsplat,
    vsplat16,
    vstore,
    vtranspose16_store,
    vtranspose16_store_kept,
    vtranspose_pack_store,
    vtranspose_store_halves,
    vtranspose_store_halves_kept,
)

# Numba keys its on-disk cache of these kernels by this file's contents alone, not by the code they compile in
# from _simd.py and amsim/_fpenv.py (or the constant below): a change there would leave kernels compiled from the
# old code in the cache, loaded as if current. This digest of that code (dependencies_digest(); checked here at
# import and by tests/test_architecture.py) makes every such change a change of this file.
DEPENDENCIES_DIGEST = "69247d1f7a70b701"


def dependencies_digest() -> str | None:
    """SHA-256 (16 hex digits) of what the kernels compile in from other files; None where the sources cannot be
    read (a zipped install)."""
    h = hashlib.sha256()
    try:
        for f in (Path(__file__).with_name("_simd.py"), Path(fpenv.__file__)):
            h.update(f.read_bytes())
    except OSError:
        return None
    h.update(repr(int(CANONICAL_NAN_BITS)).encode())
    return h.hexdigest()[:16]


_DIGEST_NOW = dependencies_digest()
_CACHE = _DIGEST_NOW == DEPENDENCIES_DIGEST  # else compile afresh: the cache may be stale (or cannot be checked)
if not _CACHE and _DIGEST_NOW is not None:
    warnings.warn(f"amsim's CPU kernels: _simd.py or _fpenv.py changed without DEPENDENCIES_DIGEST in {__file__} "
                  f"(set it to {_DIGEST_NOW!r}); Numba's on-disk cache is not used until then.",
                  RuntimeWarning, stacklevel=1)

NAN_BITS = np.uint32(CANONICAL_NAN_BITS)
NO_EXP = -100000  # lut_e value marking a zero table entry
_LANES = np.arange(8, dtype=np.int32)
_LANES16 = np.arange(16, dtype=np.int32)


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


# ---------------------------------------------------------------------------------------------------------
# operand decoding
# ---------------------------------------------------------------------------------------------------------
@numba.njit(inline="always")
def _decode_fast(xv, shift, lmask, rnd):
    """Branch-free decode (vectorises): (table index, scale, exponent for the row minimum, for the maximum).

    ``rnd`` is all ones for round-to-nearest, 0 for truncation. The scale is the rounded value with its
    fraction cleared (a signed zero for zeros and subnormals). The exponent pair is (e, e) for normal operands,
    (1000, -1000) for zeros and subnormals (neutral) and has maximum 128 for Inf/NaN, whose scale is
    meaningless: rows and columns holding them are always recomputed by the exact path.
    """
    u0 = f32_to_bits(xv)
    infnan = (u0 & np.uint32(0x7F800000)) == np.uint32(0x7F800000)
    one = np.uint32(1)
    sh = np.uint32(shift)
    u = (u0 + ((((one << (sh - one)) - one) + ((u0 >> sh) & one)) & rnd)) & ~((one << sh) - one)
    e = np.int32((u >> np.uint32(23)) & np.uint32(0xFF))
    idx = np.int32((u >> sh) & np.uint32(lmask))
    scale = bits_to_f32(u & np.uint32(0xFF800000))
    ue = np.int32(e - 127)  # (Numba widens int32 arithmetic to int64; int32 keeps the min/max vectors full)
    lo = np.int32(1000) if e == 0 else ue
    hi = np.int32(128) if infnan else (np.int32(-1000) if e == 0 else ue)
    return idx, scale, lo, hi


def _decode_row(xr, bir, bsr, shift, lmask, rnd, unit_r, koff, unit_k):
    """Decode one row: bir[k] = index * unit_r + koff + k * unit_k, bsr[k] = scale; returns the row's (lo, hi)
    exponent pair (see _decode_fast)."""


@overload(_decode_row, inline="always")
def _ov_decode_row(xr, bir, bsr, shift, lmask, rnd, unit_r, koff, unit_k):
    if all(isinstance(a, types.Array) and a.layout == "C" for a in (xr, bir, bsr)):
        return _decode_row16
    return lambda xr, bir, bsr, shift, lmask, rnd, unit_r, koff, unit_k: _decode_row_scalar(
        xr, bir, bsr, shift, lmask, rnd, unit_r, koff, unit_k)


@numba.njit(inline="always")
def _decode_row_scalar(xr, bir, bsr, shift, lmask, rnd, unit_r, koff, unit_k):
    lo = np.int32(1000)
    hi = np.int32(-1000)
    for k in range(xr.shape[0]):
        ix, sx, el, eh = _decode_fast(xr[k], shift, lmask, rnd)
        bir[k] = ix * unit_r + koff + k * unit_k
        bsr[k] = sx
        lo = min(lo, el)
        hi = max(hi, eh)
    return lo, hi


@numba.njit(inline="always")
def _dec_consts(shift, lmask, rnd):
    """The 16-lane constants of _dec16 for a rounding shift, index mask and rounding mode."""
    return (vsplat16(np.int32(shift)), vsplat16(np.int32((1 << (shift - 1)) - 1)), vsplat16(np.int32(1)),
            vsplat16(np.int32(-1) if rnd != 0 else np.int32(0)), vsplat16(np.int32(~((1 << shift) - 1))),
            vsplat16(np.int32(0xFF)), vsplat16(np.int32(23)), vsplat16(np.int32(lmask)), vsplat16(np.int32(-127)),
            vsplat16(np.int32(0)), vsplat16(np.int32(1000)), vsplat16(np.int32(-1000)), vsplat16(np.int32(128)),
            vsplat16(np.int32(0x7F800000)), vsplat16(np.int32(-8388608)))  # (0xFF800000: sign and exponent)


@numba.njit(inline="always")
def _dec16(u0, c):
    """_decode_fast on 16 lanes of float32 bits: (table index, scale bits, lo, hi) int32 vectors."""
    sh, inc, one, rndv, keep, e8, s23, lm, bias, zero, big, small, e128, expm, sgn_exp = c
    u = vand(vadd(u0, vand(vadd(inc, vand(vshr(u0, sh), one)), rndv)), keep)
    e = vand(vshr(u, s23), e8)
    ue = vadd(e, bias)
    lo = vsel_eq(e, zero, big, ue)
    hi = vsel_eq(vand(u0, expm), expm, e128, vsel_eq(e, zero, small, ue))
    return vand(vshr(u, sh), lm), vand(u, sgn_exp), lo, hi


def _decode_row16(xr, bir, bsr, shift, lmask, rnd, unit_r, koff, unit_k):
    """_decode_row of C-contiguous rows: _decode_fast on 16-lane int32 vectors (Numba's code for the scalar loop
    works on int64 lanes, three times slower); the same bits."""
    k_len = xr.shape[0]
    if k_len < 16:  # shorter than a vector
        return _decode_row_scalar(xr, bir, bsr, shift, lmask, rnd, unit_r, koff, unit_k)
    c = _dec_consts(shift, lmask, rnd)
    ur = vsplat16(np.int32(unit_r))
    lanes = vmul(vload16(_LANES16, 0), vsplat16(np.int32(unit_k)))
    lo_v = vsplat16(np.int32(1000))
    hi_v = vsplat16(np.int32(-1000))
    k = 0
    while k < k_len:
        k = min(k, k_len - 16)  # the last vector may overlap the one before: the same values written twice
        ix, sbits, lo, hi = _dec16(vbitcast(vload16(xr, k), np.int32), c)
        kv = vadd(lanes, vsplat16(np.int32(koff + k * unit_k)))
        vstore(bir, k, vadd(vmul(ix, ur), kv))
        vstore(bsr, k, vbitcast(sbits, np.float32))
        lo_v = vsel_lt(lo, lo_v, lo, lo_v)
        hi_v = vsel_lt(hi_v, hi, hi, hi_v)
        k += 16
    return vmin_lanes(lo_v), vmax_lanes(hi_v)


_DR = 16  # rows per item of _decode_rows_f32


@numba.njit(inline="always")
def _put_panel(pi, ps, bi, bs, r0, nr, k0, unit_k):
    """pi[r0 + r, kk] = bi[r, k0 + kk] + kk * unit_k and ps[r0 + r, kk] = bs[r, k0 + kk] for r < nr and the
    panel's KB columns (fewer in the last panel), in 8-lane vectors: one row's 8 columns at a time where KB is a
    multiple of 8, else two rows' 4 or four rows' 2 (the large tables' KB). LLVM does not vectorise this loop
    itself (it cannot rule out that the arrays overlap): with its scalar code the decode of a 1024 x 1024
    operand took 3.4 ms at KB = 4 (1.8 at KB = 2) on Zen 4, a third of NumPy's time for the whole 1024^3
    product (8.7 and 3.9 with the host busier); with these copies 0.5 (0.8)."""
    kbs = pi.shape[1]
    k_len = bi.shape[1]
    n = min(kbs, k_len - k0)
    lanes = vload(_LANES, 0)
    r_done = 0  # rows copied whole
    n8 = 0  # columns copied in every row
    if kbs % 8 == 0:
        n8 = n - n % 8
        kv = vmul(lanes, vsplat(np.int32(unit_k)))
        for r in range(nr):
            src = r * k_len + k0
            dst = (r0 + r) * kbs
            for kk in range(0, n8, 8):
                vstore(pi, dst + kk, vadd(vload(bi, src + kk), vadd(kv, vsplat(np.int32(kk * unit_k)))))
                vstore(ps, dst + kk, vload(bs, src + kk))
    elif n == kbs and (kbs == 4 or kbs == 2):  # whole panel rows: (8 / KB) rows of the panel per vector
        per = 8 // kbs
        kv = vmul(vand(lanes, vsplat(np.int32(kbs - 1))), vsplat(np.int32(unit_k)))
        while r_done + per <= nr:
            src = r_done * k_len + k0
            dst = (r0 + r_done) * kbs
            if kbs == 4:
                vstore(pi, dst, vadd(vload_halves(bi, src, src + k_len), kv))
                vstore(ps, dst, vload_halves(bs, src, src + k_len))
            else:
                vstore(pi, dst, vadd(vload_quarters(bi, src, k_len), kv))
                vstore(ps, dst, vload_quarters(bs, src, k_len))
            r_done += per
    for r in range(r_done, nr):
        for kk in range(n8, n):
            pi[r0 + r, kk] = bi[r, k0 + kk] + kk * unit_k
            ps[r0 + r, kk] = bs[r, k0 + kk]


@numba.njit(inline="always")
def _transpose8_rows(dst, off, stride, src, o, n):
    """dst.flat[off + p * stride + q] = src.flat[o + q * n + p] for p, q < 8: an 8x8 block of rows n long."""
    vtranspose_store_halves(
        dst, off, stride, None,
        vload_halves(src, o, o + 4 * n), vload_halves(src, o + n, o + 5 * n),
        vload_halves(src, o + 2 * n, o + 6 * n), vload_halves(src, o + 3 * n, o + 7 * n),
        vload_halves(src, o + 4, o + 4 * n + 4), vload_halves(src, o + n + 4, o + 5 * n + 4),
        vload_halves(src, o + 2 * n + 4, o + 6 * n + 4), vload_halves(src, o + 3 * n + 4, o + 7 * n + 4))


@numba.njit(inline="always")
def _put_columns(pi, ps, bi, bs, r0, nr):
    """_put_panel of every panel at KB = 1, where panel k is column k of the rows: pi[k, r0 + r, 0] = bi[r, k]
    (no k term) and ps likewise, for one batch's (K, M, 1) panels, by 8x8 transposes: one call per panel, one
    element per row, took 3.1 ms for a 1024 x 1024 operand on Zen 4 (6-7 with the host busier), these 0.7."""
    k_len = bi.shape[1]
    m_rows = pi.shape[1]
    k8 = k_len - k_len % 8
    r8 = nr - nr % 8
    for r in range(0, r8, 8):
        for k in range(0, k8, 8):
            _transpose8_rows(pi, k * m_rows + r0 + r, m_rows, bi, r * k_len + k, k_len)
            _transpose8_rows(ps, k * m_rows + r0 + r, m_rows, bs, r * k_len + k, k_len)
    for r in range(nr):
        for k in range(k8 if r < r8 else 0, k_len):
            pi[k, r0 + r, 0] = bi[r, k]
            ps[k, r0 + r, 0] = bs[r, k]


@numba.njit(parallel=True, cache=_CACHE)
def _decode_rows_f32(x, m, truncate, idx, scale, emin, emax, unit_r, unit_k):
    """Swept operand x (batch, M, K) -> k-block panels idx/scale (batch, nkb, M, KB), per-row exponent range.

    idx holds ``index * unit_r + kk * unit_k`` (kk the position in the k block): with unit_r = NB and
    unit_k = 2**m * NB, the flat offset of the row in the expanded table the sweep loads, so the sweep does no
    address arithmetic; (1, 0) gives plain table indices. emin/emax: smallest/largest unbiased exponent of
    the row's normal operands (emax = 128: Inf/NaN present).
    """
    nbatch, m_rows, k_len = x.shape
    nkb = idx.shape[1]
    kbs = idx.shape[3]
    shift = 23 - m
    lmask = (1 << m) - 1
    rnd = np.uint32(0) if truncate else np.uint32(0xFFFFFFFF)
    nrc = (m_rows + _DR - 1) // _DR
    for q in prange(nbatch * nrc):
        bt = q // nrc
        r0 = (q - bt * nrc) * _DR
        nr = min(m_rows, r0 + _DR) - r0
        # _DR rows decoded in long row loops (they vectorise), then written panel by panel: contiguous runs of
        # nr * KB elements (row by row, each row would write one short piece into every panel, far apart)
        single = nkb == 1  # one panel: rows go straight into it, no buffer
        bi = np.empty((1 if single else _DR, k_len), np.int32)
        bs = np.empty((1 if single else _DR, k_len), np.float32)
        for r in range(nr):
            xr = x[bt, r0 + r]
            bir = idx[bt, 0, r0 + r] if single else bi[r]
            bsr = scale[bt, 0, r0 + r] if single else bs[r]
            lo, hi = _decode_row(xr, bir, bsr, shift, lmask, rnd, unit_r, 0, unit_k if single else 0)
            emin[bt, r0 + r] = lo
            emax[bt, r0 + r] = hi
        if kbs == 1 and not single:
            _put_columns(idx[bt], scale[bt], bi, bs, r0, nr)
        else:
            for kbi in range(0 if single else nkb):
                _put_panel(idx[bt, kbi], scale[bt, kbi], bi, bs, r0, nr, kbi * kbs, unit_k)


_TR = 256  # rows per item of the transposing decoders


@numba.njit(inline="always")
def _transpose_panel(dst, src, i0, nr, kb):
    """dst[i0 + i, kk] = src[kk, i] for i < nr, kk < kb; dst is an (M, KB) panel, src a (KB, _TR) buffer."""
    kbs = dst.shape[1]
    i = 0
    if kb == kbs and kbs % 8 == 0:
        while i + 8 <= nr:
            for kc in range(0, kbs, 8):
                _transpose8_rows(dst, (i0 + i) * kbs + kc, kbs, src, kc * _TR + i, _TR)
            i += 8
    elif kb == kbs and (kbs == 4 or kbs == 2 or kbs == 1):  # the large tables' KB, unrolled (2-2.5x the loop)
        d = dst.reshape(-1)
        s = src.reshape(-1)
        if kbs == 4:
            for r in range(nr):
                o = (i0 + r) * 4
                d[o], d[o + 1], d[o + 2], d[o + 3] = s[r], s[_TR + r], s[2 * _TR + r], s[3 * _TR + r]
        elif kbs == 2:
            for r in range(nr):
                d[(i0 + r) * 2], d[(i0 + r) * 2 + 1] = s[r], s[_TR + r]
        else:  # (KB = 1)
            for r in range(nr):
                d[i0 + r] = s[r]
        return
    for r in range(i, nr):
        for kk in range(kb):
            dst[i0 + r, kk] = src[kk, r]


@numba.njit(parallel=True, cache=_CACHE)
def _decode_rows_t_f32(xt, m, truncate, idx, scale, pmin, pmax, unit_r, unit_k):
    """_decode_rows_f32 of x = xt^T, given xt (batch, K, M): when N > M the swept operand is B^T.

    Items are (batch, k block, 256 rows): each k row of xt is decoded contiguously into a buffer, which 8x8
    register transposes then write into the panels (reading xt column-wise would touch a new cache line, and
    soon a new page, per element). Exponent ranges are per k block, pmin/pmax (batch, nkb, M); the caller
    reduces them.
    """
    nbatch, k_len, m_rows = xt.shape
    nkb = idx.shape[1]
    kbs = idx.shape[3]
    shift = 23 - m
    lmask = (1 << m) - 1
    rnd = np.uint32(0) if truncate else np.uint32(0xFFFFFFFF)
    nrb = (m_rows + _TR - 1) // _TR
    for q in prange(nbatch * nkb * nrb):
        bt = q // (nkb * nrb)
        rest = q - bt * (nkb * nrb)
        kbi = rest // nrb
        i0 = (rest - kbi * nrb) * _TR
        nr = min(m_rows, i0 + _TR) - i0
        k0 = kbi * kbs
        kb = min(kbs, k_len - k0)
        bi = np.empty((kbs, _TR), np.int32)
        bs = np.empty((kbs, _TR), np.float32)
        lo = pmin[bt, kbi, i0 : i0 + nr]
        hi = pmax[bt, kbi, i0 : i0 + nr]
        lo[:] = 1000
        hi[:] = -1000
        for kk in range(kb):
            xr = xt[bt, k0 + kk, i0 : i0 + nr]
            rbi = bi[kk]
            rbs = bs[kk]
            off = kk * unit_k
            for ii in range(nr):
                ix, sx, el, eh = _decode_fast(xr[ii], shift, lmask, rnd)
                rbi[ii] = ix * unit_r + off
                rbs[ii] = sx
                lo[ii] = min(lo[ii], el)
                hi[ii] = max(hi[ii], eh)
        _transpose_panel(idx[bt, kbi], bi, i0, nr, kb)
        _transpose_panel(scale[bt, kbi], bs, i0, nr, kb)


@numba.njit(inline="always")
def _decode_padded(yr, ir, sr, lo, hi, shift, lmask, rnd):
    """One row piece of the expanded operand: ir/sr[j] = index/scale of yr[j], then index 0 and scale +0.0 up to
    len(ir); lo/hi[j] take yr[j]'s exponent pair (see _decode_fast)."""
    for j in range(yr.shape[0]):
        ix, sx, el, eh = _decode_fast(yr[j], shift, lmask, rnd)
        ir[j] = ix
        sr[j] = sx
        lo[j] = min(lo[j], el)
        hi[j] = max(hi[j], eh)
    for j in range(yr.shape[0], ir.shape[0]):
        ir[j] = 0
        sr[j] = np.float32(0.0)


@numba.njit(parallel=True, cache=_CACHE)
def _decode_cols_f32(y, m, truncate, idx, scale, emin, emax, cw):
    """Expanded operand y (batch, K, N) -> idx/scale (batch, K, Npad) padded with scale 0, per-column range.

    Parallel over (batch, chunk of ``cw`` columns); Npad is a multiple of cw.
    """
    nbatch, k_len, n_cols = y.shape
    npad = idx.shape[2]
    ncb = npad // cw
    shift = 23 - m
    lmask = (1 << m) - 1
    rnd = np.uint32(0) if truncate else np.uint32(0xFFFFFFFF)
    for q in prange(nbatch * ncb):
        bt = q // ncb
        j0 = (q - bt * ncb) * cw
        nbv = min(cw, n_cols - j0)
        lo = np.full(cw, 1000, np.int32)
        hi = np.full(cw, -1000, np.int32)
        for k in range(k_len):
            _decode_padded(y[bt, k, j0 : j0 + nbv], idx[bt, k, j0 : j0 + cw], scale[bt, k, j0 : j0 + cw], lo, hi,
                           shift, lmask, rnd)
        for j in range(nbv):
            emin[bt, j0 + j] = lo[j]
            emax[bt, j0 + j] = hi[j]


_KC = 64  # k rows per item of _decode_cols_rows_f32


@numba.njit(parallel=True, cache=_CACHE)
def _decode_cols_rows_f32(y, m, truncate, idx, scale, pmin, pmax):
    """_decode_cols_f32 for a y whose rows are contiguous, read row by row: items are (batch, _KC rows of y).

    Exponent ranges are per chunk of rows, pmin/pmax (batch, nkc, N); the caller reduces them.
    """
    nbatch, k_len = y.shape[0], y.shape[1]
    nkc = pmin.shape[1]
    shift = 23 - m
    lmask = (1 << m) - 1
    rnd = np.uint32(0) if truncate else np.uint32(0xFFFFFFFF)
    for q in prange(nbatch * nkc):
        bt = q // nkc
        kc = q - bt * nkc
        lo = pmin[bt, kc]
        hi = pmax[bt, kc]
        lo[:] = 1000
        hi[:] = -1000
        _decode_short_rows(y[bt], idx[bt], scale[bt], lo, hi, kc * _KC, min(k_len, kc * _KC + _KC), shift, lmask, rnd)


@numba.njit(inline="always")
def _decode_short_rows_scalar(y2, ib2, sb2, lo, hi, k0, k1, shift, lmask, rnd):
    for k in range(k0, k1):
        _decode_padded(y2[k], ib2[k], sb2[k], lo, hi, shift, lmask, rnd)


def _decode_short_rows(y2, ib2, sb2, lo, hi, k0, k1, shift, lmask, rnd):
    """Rows k0..k1-1 of y2 (K, N) into ib2/sb2 (K, Npad), padded with index 0 and scale 0; lo/hi (N) take the
    columns' exponent ranges (see _decode_fast)."""


@overload(_decode_short_rows, inline="always")
def _ov_decode_short_rows(y2, ib2, sb2, lo, hi, k0, k1, shift, lmask, rnd):
    if all(isinstance(a, types.Array) and a.layout == "C" for a in (y2, ib2, sb2, lo, hi)):
        return _decode_short_rows16
    return lambda y2, ib2, sb2, lo, hi, k0, k1, shift, lmask, rnd: _decode_short_rows_scalar(
        y2, ib2, sb2, lo, hi, k0, k1, shift, lmask, rnd)


def _decode_short_rows16(y2, ib2, sb2, lo, hi, k0, k1, shift, lmask, rnd):
    """_decode_short_rows of a C-contiguous y2 whose rows are at most 16 long (the weight gradients' N = 6 or 16
    operands, 10^5 rows): one 16-lane decode per row, reading on into the next rows (those lanes are dropped).
    Row by row, Numba's scalar code took 3 ns per element. The same bits; longer rows take the scalar loop."""
    n_cols = y2.shape[1]
    npad = ib2.shape[1]
    if n_cols > 16 or (npad != 8 and npad != 16):
        return _decode_short_rows_scalar(y2, ib2, sb2, lo, hi, k0, k1, shift, lmask, rnd)
    c = _dec_consts(shift, lmask, rnd)
    zero = vsplat16(np.int32(0))
    keep = vsel_lt(vload16(_LANES16, 0), vsplat16(np.int32(n_cols)), vsplat16(np.int32(-1)), zero)  # this row's lanes
    lo_v = vsplat16(np.int32(1000))
    hi_v = vsplat16(np.int32(-1000))
    k_vec = min(k1, (y2.size - 16) // n_cols + 1)  # rows whose 16-lane read stays inside y2
    for k in range(k0, k_vec):
        ix, sbits, el, eh = _dec16(vbitcast(vload16(y2, k * n_cols), np.int32), c)
        ix = vand(ix, keep)  # index 0 and scale +0.0 in the padding
        sbits = vand(sbits, keep)
        lo_v = vsel_lt(el, lo_v, el, lo_v)  # (lane j is column j in every row; lanes past N are never read)
        hi_v = vsel_lt(hi_v, eh, eh, hi_v)
        if npad == 16:
            vstore(ib2, k * 16, ix)
            vstore(sb2, k * 16, vbitcast(sbits, np.float32))
        else:
            vstore(ib2, k * npad, vlow8(ix))
            vstore(sb2, k * npad, vlow8(vbitcast(sbits, np.float32)))
    los = np.empty(16, np.int32)
    his = np.empty(16, np.int32)
    vstore(los, 0, lo_v)
    vstore(his, 0, hi_v)
    for j in range(n_cols):
        lo[j] = min(lo[j], los[j])
        hi[j] = max(hi[j], his[j])
    _decode_short_rows_scalar(y2, ib2, sb2, lo, hi, max(k0, k_vec), k1, shift, lmask, rnd)


@numba.njit(parallel=True, cache=_CACHE)
def _pack_rows_i32(x, idx, unit_r, unit_k):
    """Integer indices x (batch, M, K) -> k-block panels (batch, nkb, M, KB) of offsets (see _decode_rows_f32)."""
    nbatch, m_rows, k_len = x.shape
    kbs = idx.shape[3]
    for q in prange(nbatch * m_rows):
        bt = q // m_rows
        i = q - bt * m_rows
        for k0 in range(0, k_len, kbs):
            kbi = k0 // kbs
            for kk in range(min(kbs, k_len - k0)):
                idx[bt, kbi, i, kk] = x[bt, i, k0 + kk] * unit_r + kk * unit_k


@numba.njit(parallel=True, cache=_CACHE)
def _pack_rows_t_i32(xt, idx, unit_r, unit_k):
    """_pack_rows_i32 of x = xt^T, given xt (batch, K, M), reading xt along its rows (see _decode_rows_t_f32)."""
    nbatch, k_len, m_rows = xt.shape
    nkb = idx.shape[1]
    kbs = idx.shape[3]
    nrb = (m_rows + _TR - 1) // _TR
    for q in prange(nbatch * nkb * nrb):
        bt = q // (nkb * nrb)
        rest = q - bt * (nkb * nrb)
        kbi = rest // nrb
        i0 = (rest - kbi * nrb) * _TR
        nr = min(m_rows, i0 + _TR) - i0
        k0 = kbi * kbs
        kb = min(kbs, k_len - k0)
        bi = np.empty((kbs, _TR), np.int32)
        for kk in range(kb):
            xr = xt[bt, k0 + kk, i0 : i0 + nr]
            rbi = bi[kk]
            off = kk * unit_k
            for ii in range(nr):
                rbi[ii] = xr[ii] * unit_r + off
        _transpose_panel(idx[bt, kbi], bi, i0, nr, kb)


@numba.njit(parallel=True, cache=_CACHE)
def _pad_cols_i32(y, idx):
    """Integer indices y (batch, K, N) -> (batch, K, Npad), padded with index 0 (padding is never stored)."""
    nbatch, k_len, n_cols = y.shape
    npad = idx.shape[2]
    for q in prange(nbatch * k_len):
        bt = q // k_len
        k = q - bt * k_len
        for j in range(n_cols):
            idx[bt, k, j] = y[bt, k, j]
        for j in range(n_cols, npad):
            idx[bt, k, j] = 0


# ---------------------------------------------------------------------------------------------------------
# exponent windows: which rows and columns the fast path must leave to the exact path
# ---------------------------------------------------------------------------------------------------------
@numba.njit(cache=_CACHE)
def _exp_range(emin, emax):
    """Exponent range over the rows that hold normal operands and no Inf/NaN ((0, 0) when there are none)."""
    lo, hi = 1000, -1000
    for q in range(emin.size):
        e0, e1 = emin.flat[q], emax.flat[q]
        if e1 != 128 and e1 >= e0:
            lo, hi = min(lo, e0), max(hi, e1)
    return (lo, hi) if lo <= hi else (0, 0)


@numba.njit(inline="always")
def _is_flagged(e0, e1, lo, hi):
    # Inf/NaN, or normal operands outside [lo, hi]; rows of only zeros and subnormals (e1 < e0) never
    return e1 == 128 or (e1 >= e0 and (e0 < lo or e1 > hi))


@numba.njit(cache=_CACHE)
def _count_flagged(emin, emax, lo, hi):
    n = 0
    for q in range(emin.size):
        n += _is_flagged(emin.flat[q], emax.flat[q], lo, hi)
    return n


@numba.njit(cache=_CACHE)
def _flagged(emin, emax, lo, hi):
    """(batch, row) indices of the rows that must take the exact path under the window [lo, hi]."""
    n = _count_flagged(emin, emax, lo, hi)
    bts = np.empty(n, np.int64)
    idx = np.empty(n, np.int64)
    rows = emin.shape[1]
    n = 0
    for q in range(emin.size):
        if _is_flagged(emin.flat[q], emax.flat[q], lo, hi):
            bts[n] = q // rows
            idx[n] = q - (q // rows) * rows
            n += 1
    return bts, idx


@numba.njit(cache=_CACHE)
def _choose_window(xmin, xmax, ymin, ymax, s_lo, s_hi, sym):
    """Exponent windows (x_lo, x_hi, y_lo, y_hi) for the fast path, flagging as little work as possible.

    Exactness needs ex + ey in [s_lo, s_hi] (every product normal) and ey in [s_lo, s_hi] too (the expanded
    entry LUT * 2**ey normal), with s_lo = -126 - e_lo, s_hi = 127 - e_hi for table exponents [e_lo, e_hi].
    Candidates: the symmetric split of float_kernel_tables, the y side's data range with the widest x window
    it allows, and the converse. With no valid candidate the empty window flags everything.
    """
    x_lo, x_hi = _exp_range(xmin, xmax)
    y_lo, y_hi = _exp_range(ymin, ymax)
    yw_lo, yw_hi = max(y_lo, s_lo), min(y_hi, s_hi)
    cands = np.array([[sym[0], sym[1], sym[2], sym[3]],
                      [s_lo - yw_lo, s_hi - yw_hi, yw_lo, yw_hi],
                      [x_lo, x_hi, max(s_lo, s_lo - x_lo), min(s_hi, s_hi - x_hi)]], dtype=np.int64)
    best = np.array([1, 0, 1, 0], dtype=np.int64)
    best_cost = -1
    for c in range(3):
        w = cands[c]
        valid = (w[0] <= w[1] and w[2] <= w[3] and s_lo <= w[2] and w[3] <= s_hi and w[0] + w[2] >= s_lo
                 and w[1] + w[3] <= s_hi)
        if not valid:
            continue
        cost = (_count_flagged(xmin, xmax, w[0], w[1]) * ymin.shape[1]
                + _count_flagged(ymin, ymax, w[2], w[3]) * xmin.shape[1])
        if best_cost < 0 or cost < best_cost:
            best, best_cost = w, cost
        if cost == 0:
            break
    return best


# ---------------------------------------------------------------------------------------------------------
# expansion kernels
# ---------------------------------------------------------------------------------------------------------
# Float and integer expansions share their code: integer tables have no scales, passed as None, and these
# helpers resolve at compile time to the scaled or the plain form.
def _row_scale(sb, off):
    """The 8 column scales at flat offset ``off``, or None."""


@overload(_row_scale, inline="always")
def _ov_row_scale(sb, off):
    if sb is types.none:
        return lambda sb, off: None
    return lambda sb, off: vload(sb, off)


def _scaled(v, sb, k, j):
    """v * sb[k, j], or v."""


@overload(_scaled, inline="always")
def _ov_scaled(v, sb, k, j):
    if sb is types.none:
        return lambda v, sb, k, j: v
    return lambda v, sb, k, j: v * sb[k, j]


def _splat1(sr, kk):
    """sr[kk] in all 8 lanes, or None."""


@overload(_splat1, inline="always")
def _ov_splat1(sr, kk):
    if sr is types.none:
        return lambda sr, kk: None
    return lambda sr, kk: vsplat(sr[kk])


def _splat16(sr, kk):
    """sr[kk] in all 16 lanes, or None."""


@overload(_splat16, inline="always")
def _ov_splat16(sr, kk):
    if sr is types.none:
        return lambda sr, kk: None
    return lambda sr, kk: vsplat16(sr[kk])


def _madd(acc, s, v):
    """acc + s * v, the product exact (a power-of-two scale), so fusing it changes no bit; or acc + v."""


@overload(_madd, inline="always")
def _ov_madd(acc, s, v):
    if s is types.none:
        return lambda acc, s, v: vadd(acc, v)
    return lambda acc, s, v: vfma_exact(s, v, acc)


def _panel(p, bt, kbi):
    """p[bt, kbi], or None."""


@overload(_panel, inline="always")
def _ov_panel(p, bt, kbi):
    if p is types.none:
        return lambda p, bt, kbi: None
    return lambda p, bt, kbi: p[bt, kbi]


def _batch(p, bt):
    """p[bt], or None."""


@overload(_batch, inline="always")
def _ov_batch(p, bt):
    if p is types.none:
        return lambda p, bt: None
    return lambda p, bt: p[bt]


@numba.njit(inline="always")
def _row_offsets8(ibr, j, ls):
    """Flat offsets of the transposed-table rows ``ibr[j .. j+7]`` (rows of ``ls`` elements) a build reads."""
    return (ibr[j] * ls, ibr[j + 1] * ls, ibr[j + 2] * ls, ibr[j + 3] * ls,
            ibr[j + 4] * ls, ibr[j + 5] * ls, ibr[j + 6] * ls, ibr[j + 7] * ls)


@numba.njit(inline="always")
def _halves8(lutt, o, r):
    """The 8 vload_halves vectors of an 8x8 transpose (see vtranspose_store_halves) of elements r .. r+7 of the
    rows at offsets ``o``."""
    return (vload_halves(lutt, o[0] + r, o[4] + r), vload_halves(lutt, o[1] + r, o[5] + r),
            vload_halves(lutt, o[2] + r, o[6] + r), vload_halves(lutt, o[3] + r, o[7] + r),
            vload_halves(lutt, o[0] + r + 4, o[4] + r + 4), vload_halves(lutt, o[1] + r + 4, o[5] + r + 4),
            vload_halves(lutt, o[2] + r + 4, o[6] + r + 4), vload_halves(lutt, o[3] + r + 4, o[7] + r + 4))


@numba.njit(inline="always")
def _halves16(lutt, o, p, r):
    """The 8 vload_halves16 vectors of half a 16x16 transpose (see vtranspose16_store) of elements r .. r+7 of the
    rows at offsets ``o`` (rows 0-7) and ``p`` (rows 8-15)."""
    return (vload_halves16(lutt, o[0] + r, p[0] + r), vload_halves16(lutt, o[1] + r, p[1] + r),
            vload_halves16(lutt, o[2] + r, p[2] + r), vload_halves16(lutt, o[3] + r, p[3] + r),
            vload_halves16(lutt, o[4] + r, p[4] + r), vload_halves16(lutt, o[5] + r, p[5] + r),
            vload_halves16(lutt, o[6] + r, p[6] + r), vload_halves16(lutt, o[7] + r, p[7] + r))


@numba.njit(inline="always")
def _build_t(t, t0, lutt, ib, sb, k0, kb, j0, nl, nbw):
    """T[kk, r, 0:nbw] = LUT[r, ib[k0+kk, j0:j0+nbw]] (* sb[...] unless sb is None) at flat offset t0 of t;
    ``lutt`` is LUT transposed, nl rows of ``lutt.shape[1]`` elements (padded past nl, see padded_rows)."""
    npad = ib.shape[1]
    ls = lutt.shape[1]
    if nl >= 8:
        for kk in range(kb):
            ibr = ib[k0 + kk]
            for jc in range(0, nbw, 8):
                j = j0 + jc
                o = _row_offsets8(ibr, j, ls)
                sv = _row_scale(sb, (k0 + kk) * npad + j)
                for r in range(0, nl, 8):
                    h = _halves8(lutt, o, r)
                    vtranspose_store_halves(t, t0 + (kk * nl + r) * nbw + jc, nbw, sv,
                                            h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7])
    else:  # 2 or 4 table rows: too few for the 8x8 transposes
        for kk in range(kb):
            for r in range(nl):
                base = t0 + (kk * nl + r) * nbw
                for j in range(nbw):
                    t[base + j] = _scaled(lutt[ib[k0 + kk, j0 + j], r], sb, k0 + kk, j0 + j)


@numba.njit(inline="always")
def _build_tp(t, t0, lutt, ib, sb, k0, kb, j0, nl):
    """_build_t of a 32-column block into a packed table (uint32 words, see _simd.vtranspose_pack_store): row r
    of T[kk] is 16 words, word q holding columns j0 + q and j0 + q + 16. Needs nl >= 8 and entries that fit."""
    npad = ib.shape[1]
    ls = lutt.shape[1]
    for kk in range(kb):
        ibr = ib[k0 + kk]
        for jc in range(0, 16, 8):
            j = j0 + jc
            a0, a1, a2, a3 = ibr[j] * ls, ibr[j + 1] * ls, ibr[j + 2] * ls, ibr[j + 3] * ls
            a4, a5, a6, a7 = ibr[j + 4] * ls, ibr[j + 5] * ls, ibr[j + 6] * ls, ibr[j + 7] * ls
            b0, b1, b2, b3 = ibr[j + 16] * ls, ibr[j + 17] * ls, ibr[j + 18] * ls, ibr[j + 19] * ls
            b4, b5, b6, b7 = ibr[j + 20] * ls, ibr[j + 21] * ls, ibr[j + 22] * ls, ibr[j + 23] * ls
            sva = _row_scale(sb, (k0 + kk) * npad + j)
            svb = _row_scale(sb, (k0 + kk) * npad + j + 16)
            for r in range(0, nl, 8):
                vtranspose_pack_store(
                    t, t0 + (kk * nl + r) * 16 + jc, 16, sva, svb,
                    (vload_halves(lutt, a0 + r, a4 + r), vload_halves(lutt, a1 + r, a5 + r),
                     vload_halves(lutt, a2 + r, a6 + r), vload_halves(lutt, a3 + r, a7 + r),
                     vload_halves(lutt, a0 + r + 4, a4 + r + 4), vload_halves(lutt, a1 + r + 4, a5 + r + 4),
                     vload_halves(lutt, a2 + r + 4, a6 + r + 4), vload_halves(lutt, a3 + r + 4, a7 + r + 4)),
                    (vload_halves(lutt, b0 + r, b4 + r), vload_halves(lutt, b1 + r, b5 + r),
                     vload_halves(lutt, b2 + r, b6 + r), vload_halves(lutt, b3 + r, b7 + r),
                     vload_halves(lutt, b0 + r + 4, b4 + r + 4), vload_halves(lutt, b1 + r + 4, b5 + r + 4),
                     vload_halves(lutt, b2 + r + 4, b6 + r + 4), vload_halves(lutt, b3 + r + 4, b7 + r + 4)))


@numba.njit(inline="always")
def _build_t16(t, t0, lutt, ib, k0, kb, j0, nl, nbw):
    """_build_t of a 16-bit table from a 16-bit ``lutt``: 16x16 transposes of words, where the 8x8 ones of
    int32 rows took four times the loads and twice the shuffles, and a narrowing per stored row."""
    ls = lutt.shape[1]
    if nl % 16 or nbw % 16:
        for kk in range(kb):
            for r in range(nl):
                base = t0 + (kk * nl + r) * nbw
                for j in range(nbw):
                    t[base + j] = lutt[ib[k0 + kk, j0 + j], r]
        return
    for kk in range(kb):
        ibr = ib[k0 + kk]
        for jc in range(0, nbw, 16):
            o = _row_offsets8(ibr, j0 + jc, ls)
            p = _row_offsets8(ibr, j0 + jc + 8, ls)
            for r in range(0, nl, 16):
                out = t0 + (kk * nl + r) * nbw + jc
                for c in range(0, 16, 8):
                    vtranspose16_store(t, out + c * nbw, nbw, _halves16(lutt, o, p, r + c))


@numba.njit(inline="always")
def _build_t16_kept(t, lutt, ib, k0, kb, j0, nl, nbw, keep, tst):
    """_build_t16 of only the table rows the swept operand uses: row r of T[kk] is kept where bit r of
    keep[k0 + kk] is set, and the kept rows are packed from row tst[kk] on (see _keep_rows). Every row is still
    transposed (the shuffles are the same), but T takes fewer lines, and fewer go to L2. Needs nl a multiple of
    64 and nbw of 16."""
    ls = lutt.shape[1]
    for kk in range(kb):
        ibr = ib[k0 + kk]
        mk = keep[k0 + kk]
        for jc in range(0, nbw, 16):
            o = _row_offsets8(ibr, j0 + jc, ls)
            p = _row_offsets8(ibr, j0 + jc + 8, ls)
            out = tst[kk] * nbw + jc
            for r in range(0, nl, 16):
                bits = mk[r >> 6] >> (r & 63)
                if bits & 0xFFFF == 0:
                    continue  # (none of these 16 used: operands of few distinct values, e.g. 8-bit pixels)
                for c in range(0, 16, 8):
                    out = vtranspose16_store_kept(t, out, nbw, bits >> c, _halves16(lutt, o, p, r + c))


@numba.njit(inline="always")
def _build_t_kept(t, lutt, ib, sb, k0, kb, j0, nl, nbw, keep, tst):
    """_build_t of only the table rows the swept operand uses, packed from row tst[kk] on (see _build_t16_kept).
    Needs nl a multiple of 64."""
    npad = ib.shape[1]
    ls = lutt.shape[1]
    for kk in range(kb):
        ibr = ib[k0 + kk]
        mk = keep[k0 + kk]
        for jc in range(0, nbw, 8):
            j = j0 + jc
            o = _row_offsets8(ibr, j, ls)
            sv = _row_scale(sb, (k0 + kk) * npad + j)
            out = tst[kk] * nbw + jc
            for r in range(0, nl, 8):
                bits = mk[r >> 6] >> (r & 63)
                if bits & 0xFF == 0:
                    continue
                out = vtranspose_store_halves_kept(t, out, nbw, bits, sv, _halves8(lutt, o, r))


def _build_any(t, t0, lutt, ib, sb, k0, kb, j0, nl, nbw, keep, tst):
    """_build_tp into a packed (uint32) table, _build_t16 from a 16-bit ``lutt``, else _build_t (their _kept
    forms where ``keep`` is not None: float tables only, not packed)."""


@overload(_build_any, inline="always")
def _ov_build_any(t, t0, lutt, ib, sb, k0, kb, j0, nl, nbw, keep, tst):
    if t.dtype == types.uint32:
        return lambda t, t0, lutt, ib, sb, k0, kb, j0, nl, nbw, keep, tst: _build_tp(t, t0, lutt, ib, sb, k0, kb,
                                                                                    j0, nl)
    if lutt.dtype in (types.int16, types.uint16):
        if keep is not types.none:
            return lambda t, t0, lutt, ib, sb, k0, kb, j0, nl, nbw, keep, tst: _build_t16_kept(
                t, lutt, ib, k0, kb, j0, nl, nbw, keep, tst)
        return lambda t, t0, lutt, ib, sb, k0, kb, j0, nl, nbw, keep, tst: _build_t16(t, t0, lutt, ib, k0, kb, j0,
                                                                                     nl, nbw)
    if keep is not types.none:
        return lambda t, t0, lutt, ib, sb, k0, kb, j0, nl, nbw, keep, tst: _build_t_kept(
            t, lutt, ib, sb, k0, kb, j0, nl, nbw, keep, tst)
    return lambda t, t0, lutt, ib, sb, k0, kb, j0, nl, nbw, keep, tst: _build_t(t, t0, lutt, ib, sb, k0, kb, j0,
                                                                               nl, nbw)


# The sweeps take the swept operand as offsets into T (see _decode_rows_f32) and hoist each row's panel rows
# out of the k loop: what remains per row and k is one offset load, one broadcast, and a load, a multiply and
# an add per vector.
@numba.njit(cache=_CACHE)
def _sweep32(ct, t, ia, sa, i0, i1, k0, kb):
    """ct[i - i0, 0:32] += sum over kk of sa[i, kk] * T[kk, ia[i, kk], :], in kk order, for rows i0..i1-1.

    Two rows at a time on 8-lane vectors: each accumulator is a serial chain of adds, so independent rows hide
    the add latency.
    """
    i = i0
    while i + 2 <= i1:
        oc = (i - i0) * 32
        x0, x1 = ia[i], ia[i + 1]
        s0, s1 = _batch(sa, i), _batch(sa, i + 1)
        a0 = vload(ct, oc)
        a1 = vload(ct, oc + 8)
        a2 = vload(ct, oc + 16)
        a3 = vload(ct, oc + 24)
        b0 = vload(ct, oc + 32)
        b1 = vload(ct, oc + 40)
        b2 = vload(ct, oc + 48)
        b3 = vload(ct, oc + 56)
        for kk in range(k0, k0 + kb):
            s = _splat1(s0, kk)
            o = x0[kk]
            u = _splat1(s1, kk)
            p = x1[kk]
            a0 = _madd(a0, s, vload(t, o))
            b0 = _madd(b0, u, vload(t, p))
            a1 = _madd(a1, s, vload(t, o + 8))
            b1 = _madd(b1, u, vload(t, p + 8))
            a2 = _madd(a2, s, vload(t, o + 16))
            b2 = _madd(b2, u, vload(t, p + 16))
            a3 = _madd(a3, s, vload(t, o + 24))
            b3 = _madd(b3, u, vload(t, p + 24))
        vstore(ct, oc, a0)
        vstore(ct, oc + 8, a1)
        vstore(ct, oc + 16, a2)
        vstore(ct, oc + 24, a3)
        vstore(ct, oc + 32, b0)
        vstore(ct, oc + 40, b1)
        vstore(ct, oc + 48, b2)
        vstore(ct, oc + 56, b3)
        i += 2
    if i < i1:
        oc = (i - i0) * 32
        x0 = ia[i]
        s0 = _batch(sa, i)
        a0 = vload(ct, oc)
        a1 = vload(ct, oc + 8)
        a2 = vload(ct, oc + 16)
        a3 = vload(ct, oc + 24)
        for kk in range(k0, k0 + kb):
            s = _splat1(s0, kk)
            o = x0[kk]
            a0 = _madd(a0, s, vload(t, o))
            a1 = _madd(a1, s, vload(t, o + 8))
            a2 = _madd(a2, s, vload(t, o + 16))
            a3 = _madd(a3, s, vload(t, o + 24))
        vstore(ct, oc, a0)
        vstore(ct, oc + 8, a1)
        vstore(ct, oc + 16, a2)
        vstore(ct, oc + 24, a3)


@numba.njit(cache=_CACHE)
def _sweep32w(ct, t, ia, sa, i0, i1, k0, kb):
    """_sweep32 on 16-lane vectors (AVX-512: two registers per row of 32 columns), four rows at a time."""
    i = i0
    while i + 4 <= i1:
        oc = (i - i0) * 32
        x0, x1, x2, x3 = ia[i], ia[i + 1], ia[i + 2], ia[i + 3]
        s0, s1, s2, s3 = _batch(sa, i), _batch(sa, i + 1), _batch(sa, i + 2), _batch(sa, i + 3)
        a0 = vload16(ct, oc)
        a1 = vload16(ct, oc + 16)
        b0 = vload16(ct, oc + 32)
        b1 = vload16(ct, oc + 48)
        c0 = vload16(ct, oc + 64)
        c1 = vload16(ct, oc + 80)
        d0 = vload16(ct, oc + 96)
        d1 = vload16(ct, oc + 112)
        for kk in range(k0, k0 + kb):
            s = _splat16(s0, kk)
            o = x0[kk]
            u = _splat16(s1, kk)
            p = x1[kk]
            v = _splat16(s2, kk)
            q = x2[kk]
            w = _splat16(s3, kk)
            r = x3[kk]
            a0 = _madd(a0, s, vload16(t, o))
            b0 = _madd(b0, u, vload16(t, p))
            c0 = _madd(c0, v, vload16(t, q))
            d0 = _madd(d0, w, vload16(t, r))
            a1 = _madd(a1, s, vload16(t, o + 16))
            b1 = _madd(b1, u, vload16(t, p + 16))
            c1 = _madd(c1, v, vload16(t, q + 16))
            d1 = _madd(d1, w, vload16(t, r + 16))
        vstore(ct, oc, a0)
        vstore(ct, oc + 16, a1)
        vstore(ct, oc + 32, b0)
        vstore(ct, oc + 48, b1)
        vstore(ct, oc + 64, c0)
        vstore(ct, oc + 80, c1)
        vstore(ct, oc + 96, d0)
        vstore(ct, oc + 112, d1)
        i += 4
    while i < i1:
        oc = (i - i0) * 32
        x0 = ia[i]
        s0 = _batch(sa, i)
        a0 = vload16(ct, oc)
        a1 = vload16(ct, oc + 16)
        for kk in range(k0, k0 + kb):
            s = _splat16(s0, kk)
            o = x0[kk]
            a0 = _madd(a0, s, vload16(t, o))
            a1 = _madd(a1, s, vload16(t, o + 16))
        vstore(ct, oc, a0)
        vstore(ct, oc + 16, a1)
        i += 1


@numba.njit(cache=_CACHE)
def _sweep16(ct, t, ia, sa, i0, i1, k0, kb):
    """The 16-column sweep (operands of 9 to 16 columns: one 16-lane register per row, two 8-lane ones on AVX2),
    four rows at a time."""
    i = i0
    while i + 4 <= i1:
        oc = (i - i0) * 16
        x0, x1, x2, x3 = ia[i], ia[i + 1], ia[i + 2], ia[i + 3]
        s0, s1, s2, s3 = _batch(sa, i), _batch(sa, i + 1), _batch(sa, i + 2), _batch(sa, i + 3)
        a0 = vload16(ct, oc)
        a1 = vload16(ct, oc + 16)
        a2 = vload16(ct, oc + 32)
        a3 = vload16(ct, oc + 48)
        for kk in range(k0, k0 + kb):
            a0 = _madd(a0, _splat16(s0, kk), vload16(t, x0[kk]))
            a1 = _madd(a1, _splat16(s1, kk), vload16(t, x1[kk]))
            a2 = _madd(a2, _splat16(s2, kk), vload16(t, x2[kk]))
            a3 = _madd(a3, _splat16(s3, kk), vload16(t, x3[kk]))
        vstore(ct, oc, a0)
        vstore(ct, oc + 16, a1)
        vstore(ct, oc + 32, a2)
        vstore(ct, oc + 48, a3)
        i += 4
    while i < i1:
        oc = (i - i0) * 16
        x0 = ia[i]
        s0 = _batch(sa, i)
        a0 = vload16(ct, oc)
        for kk in range(k0, k0 + kb):
            a0 = _madd(a0, _splat16(s0, kk), vload16(t, x0[kk]))
        vstore(ct, oc, a0)
        i += 1


@numba.njit(cache=_CACHE)
def _sweep8(ct, t, ia, sa, i0, i1, k0, kb):
    """The 8-column sweep (narrow expanded operands): four rows at a time, one accumulator each."""
    i = i0
    while i + 4 <= i1:
        oc = (i - i0) * 8
        x0, x1, x2, x3 = ia[i], ia[i + 1], ia[i + 2], ia[i + 3]
        s0, s1, s2, s3 = _batch(sa, i), _batch(sa, i + 1), _batch(sa, i + 2), _batch(sa, i + 3)
        a0 = vload(ct, oc)
        a1 = vload(ct, oc + 8)
        a2 = vload(ct, oc + 16)
        a3 = vload(ct, oc + 24)
        for kk in range(k0, k0 + kb):
            a0 = _madd(a0, _splat1(s0, kk), vload(t, x0[kk]))
            a1 = _madd(a1, _splat1(s1, kk), vload(t, x1[kk]))
            a2 = _madd(a2, _splat1(s2, kk), vload(t, x2[kk]))
            a3 = _madd(a3, _splat1(s3, kk), vload(t, x3[kk]))
        vstore(ct, oc, a0)
        vstore(ct, oc + 8, a1)
        vstore(ct, oc + 16, a2)
        vstore(ct, oc + 24, a3)
        i += 4
    while i < i1:
        oc = (i - i0) * 8
        x0 = ia[i]
        s0 = _batch(sa, i)
        a0 = vload(ct, oc)
        for kk in range(k0, k0 + kb):
            a0 = _madd(a0, _splat1(s0, kk), vload(t, x0[kk]))
        vstore(ct, oc, a0)
        i += 1


@numba.njit(cache=_CACHE)
def _sweep32p(ct, t, ia, sa, i0, i1, k0, kb):
    """_sweep32 from a packed table (offsets in words): half the bytes of T per multiply-accumulate, for two
    shifts or masks per vector."""
    i = i0
    while i + 2 <= i1:
        oc = (i - i0) * 32
        x0, x1 = ia[i], ia[i + 1]
        s0, s1 = _batch(sa, i), _batch(sa, i + 1)
        a0 = vload(ct, oc)
        a1 = vload(ct, oc + 8)
        a2 = vload(ct, oc + 16)
        a3 = vload(ct, oc + 24)
        b0 = vload(ct, oc + 32)
        b1 = vload(ct, oc + 40)
        b2 = vload(ct, oc + 48)
        b3 = vload(ct, oc + 56)
        for kk in range(k0, k0 + kb):
            s = _splat1(s0, kk)
            o = x0[kk]
            u = _splat1(s1, kk)
            p = x1[kk]
            t0, t2 = vload_pair(t, o, a0)
            t1, t3 = vload_pair(t, o + 8, a0)
            u0, u2 = vload_pair(t, p, a0)
            u1, u3 = vload_pair(t, p + 8, a0)
            a0 = _madd(a0, s, t0)
            b0 = _madd(b0, u, u0)
            a1 = _madd(a1, s, t1)
            b1 = _madd(b1, u, u1)
            a2 = _madd(a2, s, t2)
            b2 = _madd(b2, u, u2)
            a3 = _madd(a3, s, t3)
            b3 = _madd(b3, u, u3)
        vstore(ct, oc, a0)
        vstore(ct, oc + 8, a1)
        vstore(ct, oc + 16, a2)
        vstore(ct, oc + 24, a3)
        vstore(ct, oc + 32, b0)
        vstore(ct, oc + 40, b1)
        vstore(ct, oc + 48, b2)
        vstore(ct, oc + 56, b3)
        i += 2
    if i < i1:
        oc = (i - i0) * 32
        x0 = ia[i]
        s0 = _batch(sa, i)
        a0 = vload(ct, oc)
        a1 = vload(ct, oc + 8)
        a2 = vload(ct, oc + 16)
        a3 = vload(ct, oc + 24)
        for kk in range(k0, k0 + kb):
            s = _splat1(s0, kk)
            o = x0[kk]
            t0, t2 = vload_pair(t, o, a0)
            t1, t3 = vload_pair(t, o + 8, a0)
            a0 = _madd(a0, s, t0)
            a1 = _madd(a1, s, t1)
            a2 = _madd(a2, s, t2)
            a3 = _madd(a3, s, t3)
        vstore(ct, oc, a0)
        vstore(ct, oc + 8, a1)
        vstore(ct, oc + 16, a2)
        vstore(ct, oc + 24, a3)


@numba.njit(cache=_CACHE)
def _sweep32pw(ct, t, ia, sa, i0, i1, k0, kb):
    """_sweep32p on 16-lane vectors, four rows at a time: one load of 16 words gives a row's 32 columns."""
    i = i0
    while i + 4 <= i1:
        oc = (i - i0) * 32
        x0, x1, x2, x3 = ia[i], ia[i + 1], ia[i + 2], ia[i + 3]
        s0, s1, s2, s3 = _batch(sa, i), _batch(sa, i + 1), _batch(sa, i + 2), _batch(sa, i + 3)
        a0 = vload16(ct, oc)
        a1 = vload16(ct, oc + 16)
        b0 = vload16(ct, oc + 32)
        b1 = vload16(ct, oc + 48)
        c0 = vload16(ct, oc + 64)
        c1 = vload16(ct, oc + 80)
        d0 = vload16(ct, oc + 96)
        d1 = vload16(ct, oc + 112)
        for kk in range(k0, k0 + kb):
            ta, tb = vload_pair(t, x0[kk], a0)
            ua, ub = vload_pair(t, x1[kk], a0)
            va, vb = vload_pair(t, x2[kk], a0)
            wa, wb = vload_pair(t, x3[kk], a0)
            s = _splat16(s0, kk)
            u = _splat16(s1, kk)
            v = _splat16(s2, kk)
            w = _splat16(s3, kk)
            a0 = _madd(a0, s, ta)
            b0 = _madd(b0, u, ua)
            c0 = _madd(c0, v, va)
            d0 = _madd(d0, w, wa)
            a1 = _madd(a1, s, tb)
            b1 = _madd(b1, u, ub)
            c1 = _madd(c1, v, vb)
            d1 = _madd(d1, w, wb)
        vstore(ct, oc, a0)
        vstore(ct, oc + 16, a1)
        vstore(ct, oc + 32, b0)
        vstore(ct, oc + 48, b1)
        vstore(ct, oc + 64, c0)
        vstore(ct, oc + 80, c1)
        vstore(ct, oc + 96, d0)
        vstore(ct, oc + 112, d1)
        i += 4
    while i < i1:
        oc = (i - i0) * 32
        x0 = ia[i]
        s0 = _batch(sa, i)
        a0 = vload16(ct, oc)
        a1 = vload16(ct, oc + 16)
        for kk in range(k0, k0 + kb):
            ta, tb = vload_pair(t, x0[kk], a0)
            s = _splat16(s0, kk)
            a0 = _madd(a0, s, ta)
            a1 = _madd(a1, s, tb)
        vstore(ct, oc, a0)
        vstore(ct, oc + 16, a1)
        i += 1


@numba.njit(cache=_CACHE)
def _sweep32h(ct, t, ia, sa, sb, so, npad, i0, i1, k0, kb, unit):
    """_sweep32w over a half-width table (entries as unsigned 16-bit integers, unscaled, 32 columns): the product
    is (sa[i, kk] * (sb[k, j] * unit)) * T[kk, ia[i, kk], j], sb's row for k at flat offset ``so + kk * npad``.
    Both scales are powers of two (or zero) of float32's normal range, ``unit`` the power of two 2**-q that makes
    the integers the table's entries, q <= 23, and every integer below 2**16 (see half_table): so sb * unit is
    exact (at least 2**-149) and, where the exact path does not recompute the output, every product is normal,
    which keeps the scales' product within [2**-142, 2**127] (exact) and its product with the integer exact.
    The same bits as _sweep32w's (T * sb) * sa. Four rows at a time."""
    f = vsplat16(unit)
    i = i0
    while i + 4 <= i1:
        oc = (i - i0) * 32
        x0, x1, x2, x3 = ia[i], ia[i + 1], ia[i + 2], ia[i + 3]
        s0, s1, s2, s3 = sa[i], sa[i + 1], sa[i + 2], sa[i + 3]
        a0 = vload16(ct, oc)
        a1 = vload16(ct, oc + 16)
        b0 = vload16(ct, oc + 32)
        b1 = vload16(ct, oc + 48)
        c0 = vload16(ct, oc + 64)
        c1 = vload16(ct, oc + 80)
        d0 = vload16(ct, oc + 96)
        d1 = vload16(ct, oc + 112)
        for kk in range(k0, k0 + kb):
            g0 = vmul(vload16(sb, so + kk * npad), f)
            g1 = vmul(vload16(sb, so + kk * npad + 16), f)
            s = vsplat16(s0[kk])
            u = vsplat16(s1[kk])
            v = vsplat16(s2[kk])
            w = vsplat16(s3[kk])
            o, p, q, r = x0[kk], x1[kk], x2[kk], x3[kk]
            a0 = vfma_exact(vmul(s, g0), vload_fixed16(t, o), a0)
            b0 = vfma_exact(vmul(u, g0), vload_fixed16(t, p), b0)
            c0 = vfma_exact(vmul(v, g0), vload_fixed16(t, q), c0)
            d0 = vfma_exact(vmul(w, g0), vload_fixed16(t, r), d0)
            a1 = vfma_exact(vmul(s, g1), vload_fixed16(t, o + 16), a1)
            b1 = vfma_exact(vmul(u, g1), vload_fixed16(t, p + 16), b1)
            c1 = vfma_exact(vmul(v, g1), vload_fixed16(t, q + 16), c1)
            d1 = vfma_exact(vmul(w, g1), vload_fixed16(t, r + 16), d1)
        vstore(ct, oc, a0)
        vstore(ct, oc + 16, a1)
        vstore(ct, oc + 32, b0)
        vstore(ct, oc + 48, b1)
        vstore(ct, oc + 64, c0)
        vstore(ct, oc + 80, c1)
        vstore(ct, oc + 96, d0)
        vstore(ct, oc + 112, d1)
        i += 4
    while i < i1:
        oc = (i - i0) * 32
        x0 = ia[i]
        s0 = sa[i]
        a0 = vload16(ct, oc)
        a1 = vload16(ct, oc + 16)
        for kk in range(k0, k0 + kb):
            s = vsplat16(s0[kk])
            o = x0[kk]
            a0 = vfma_exact(vmul(s, vmul(vload16(sb, so + kk * npad), f)), vload_fixed16(t, o), a0)
            a1 = vfma_exact(vmul(s, vmul(vload16(sb, so + kk * npad + 16), f)), vload_fixed16(t, o + 16), a1)
        vstore(ct, oc, a0)
        vstore(ct, oc + 16, a1)
        i += 1


@numba.njit(cache=_CACHE)
def _sweep32hn(ct, t, ia, sa, sb, so, npad, i0, i1, k0, kb, unit):
    """_sweep32h on 8-lane vectors, two rows at a time, the same products in the same order. AVX2 has 16 vector
    registers: the 16-lane sweep's eight accumulators take all of them there, and it ran 30 % slower than this
    one per MAC (Zen 4 with the kernels compiled for ``znver3``)."""
    f = vsplat(unit)
    i = i0
    while i + 2 <= i1:
        oc = (i - i0) * 32
        x0, x1 = ia[i], ia[i + 1]
        s0, s1 = sa[i], sa[i + 1]
        a0 = vload(ct, oc)
        a1 = vload(ct, oc + 8)
        a2 = vload(ct, oc + 16)
        a3 = vload(ct, oc + 24)
        b0 = vload(ct, oc + 32)
        b1 = vload(ct, oc + 40)
        b2 = vload(ct, oc + 48)
        b3 = vload(ct, oc + 56)
        for kk in range(k0, k0 + kb):
            sk = so + kk * npad
            s = vsplat(s0[kk])
            u = vsplat(s1[kk])
            o, p = x0[kk], x1[kk]
            g = vmul(vload(sb, sk), f)
            a0 = vfma_exact(vmul(s, g), vload_fixed8(t, o), a0)
            b0 = vfma_exact(vmul(u, g), vload_fixed8(t, p), b0)
            g = vmul(vload(sb, sk + 8), f)
            a1 = vfma_exact(vmul(s, g), vload_fixed8(t, o + 8), a1)
            b1 = vfma_exact(vmul(u, g), vload_fixed8(t, p + 8), b1)
            g = vmul(vload(sb, sk + 16), f)
            a2 = vfma_exact(vmul(s, g), vload_fixed8(t, o + 16), a2)
            b2 = vfma_exact(vmul(u, g), vload_fixed8(t, p + 16), b2)
            g = vmul(vload(sb, sk + 24), f)
            a3 = vfma_exact(vmul(s, g), vload_fixed8(t, o + 24), a3)
            b3 = vfma_exact(vmul(u, g), vload_fixed8(t, p + 24), b3)
        vstore(ct, oc, a0)
        vstore(ct, oc + 8, a1)
        vstore(ct, oc + 16, a2)
        vstore(ct, oc + 24, a3)
        vstore(ct, oc + 32, b0)
        vstore(ct, oc + 40, b1)
        vstore(ct, oc + 48, b2)
        vstore(ct, oc + 56, b3)
        i += 2
    if i < i1:
        oc = (i - i0) * 32
        x0 = ia[i]
        s0 = sa[i]
        for c in range(0, 32, 8):
            a0 = vload(ct, oc + c)
            for kk in range(k0, k0 + kb):
                g = vmul(vload(sb, so + kk * npad + c), f)
                a0 = vfma_exact(vmul(vsplat(s0[kk]), g), vload_fixed8(t, x0[kk] + c), a0)
            vstore(ct, oc + c, a0)


def _sweep_any(ct, t, ia, sa, sb, so, i0, i1, k0, kb, nbw, wide, unit):
    """The sweep for the table's form (packed or half-width: 32 columns only), column-block width and vector
    width; ``sb``/``so`` (column scales, flat offset of the block's first) and ``unit`` (the entries' power of
    two) serve half-width tables only."""


@overload(_sweep_any, inline="always")
def _ov_sweep_any(ct, t, ia, sa, sb, so, i0, i1, k0, kb, nbw, wide, unit):
    if t.dtype == types.uint32:
        def packed(ct, t, ia, sa, sb, so, i0, i1, k0, kb, nbw, wide, unit):
            if wide:
                _sweep32pw(ct, t, ia, sa, i0, i1, k0, kb)
            else:
                _sweep32p(ct, t, ia, sa, i0, i1, k0, kb)
        return packed
    if t.dtype == types.uint16 and sb is not types.none:  # (uint16 tables with no scales are integer ones)
        def half(ct, t, ia, sa, sb, so, i0, i1, k0, kb, nbw, wide, unit):
            if wide:
                _sweep32h(ct, t, ia, sa, sb, so, sb.shape[1], i0, i1, k0, kb, unit)
            else:
                _sweep32hn(ct, t, ia, sa, sb, so, sb.shape[1], i0, i1, k0, kb, unit)
        return half

    def plain(ct, t, ia, sa, sb, so, i0, i1, k0, kb, nbw, wide, unit):
        if nbw == 32 and wide:
            _sweep32w(ct, t, ia, sa, i0, i1, k0, kb)
        elif nbw == 32:
            _sweep32(ct, t, ia, sa, i0, i1, k0, kb)
        elif nbw == 16:
            _sweep16(ct, t, ia, sa, i0, i1, k0, kb)
        else:
            _sweep8(ct, t, ia, sa, i0, i1, k0, kb)
    return plain


@numba.njit(inline="always")
def _put_out(c, bt, i, j, v, tr):
    """c[bt, i, j] = v, or c[bt, j, i] with ``tr``: the GEMM kernels write a transposed product into the
    C-contiguous output through this flag (a transposed view of it would be another compilation, see
    _buffers._ro)."""
    if tr:
        c[bt, j, i] = v
    else:
        c[bt, i, j] = v


@numba.njit(parallel=True, cache=_CACHE)
def _expand(c, iap, sap, ib, sb, lutt, nbw, n_rb, tbuf, cbuf, wide, unit, tr, keep, tst):
    """c[bt] = x[bt] (x) y[bt] from the decoded panels (float: scales sap/sb; integer: both None); with ``tr``,
    c[bt].T (see _put_out). ``keep``/``tst`` (else None): the tables hold only the rows the swept operand uses,
    the panels' offsets rewritten by _keep_rows (plain and half-width float tables).

    nbw (32, 16 or 8) is the column-block width; ``wide``: sweep 32 columns on 16-lane vectors (same sums in
    the same order, so the same bits); a uint32 ``tbuf`` holds packed tables (32-column blocks, entries that
    fit 16 bits, panels of word offsets), a uint16 one with float scales half-width tables (32-column blocks,
    unscaled entries as 16-bit integers from a uint16 ``lutt``, each ``unit`` times its integer; the sweep
    applies sb and unit). See the module docstring.
    """
    nbatch, nkb, m_rows, kbs = iap.shape
    k_len = ib.shape[1]
    n_cols = c.shape[1] if tr else c.shape[2]
    nl = lutt.shape[0]
    n_cb = ib.shape[2] // nbw
    rb = (m_rows + n_rb - 1) // n_rb
    for w in prange(nbatch * n_cb * n_rb):
        bt = w // (n_cb * n_rb)
        rest = w - bt * (n_cb * n_rb)
        cb = rest // n_rb
        i0 = (rest - cb * n_rb) * rb
        i1 = min(m_rows, i0 + rb)
        j0 = cb * nbw
        fp = fpenv.enter()  # the IEEE default state, whatever this thread's (see amsim/_fpenv.py)
        tid = numba.get_thread_id()
        t = tbuf[tid]
        ct = cbuf[tid]
        for q in range((i1 - i0) * nbw):
            ct[q] = 0  # the sum starts from +0.0
        for kbi in range(nkb):
            k0 = kbi * kbs
            kb = min(kbs, k_len - k0)
            _build_any(t, 0, lutt, ib[bt], _batch(sb, bt), k0, kb, j0, nl, nbw, _batch(keep, bt),
                       _panel(tst, bt, kbi))
            _sweep_any(ct, t, iap[bt, kbi], _panel(sap, bt, kbi), _batch(sb, bt), k0 * ib.shape[2] + j0, i0, i1, 0, kb,
                       nbw, wide, unit)
        nbv = min(nbw, n_cols - j0)
        for i in range(i0, i1):
            for j in range(nbv):
                _put_out(c, bt, i, j0 + j, ct[(i - i0) * nbw + j], tr)
        fpenv.leave(fp)


@numba.njit(parallel=True, cache=_CACHE)
def _keep_rows(iap, n_l, wshift, keep, tst):
    """Which table rows the swept operand uses, per k, and its panels' offsets into tables of those rows only.

    iap (batch, nkb, M, KB) holds offsets ``(kk * n_l + r) << wshift`` (r the table row, see _decode_rows_f32).
    Sets bit r of keep[bt, k] (n_l / 64 int64 words per k) where some row uses table row r at k = kbi * KB + kk,
    tst[bt, kbi, kk] to the first row of T[kk] in a table of the kept rows packed in kk order, and rewrites each
    offset in place to ``(tst[bt, kbi, kk] + rank of r among k's kept rows) << wshift``.
    """
    nbatch, nkb, mx, kbs = iap.shape
    k_len = keep.shape[1]
    nw = keep.shape[2]
    for w in prange(nbatch * nkb):
        bt = w // nkb
        kbi = w - bt * nkb
        p = iap[bt, kbi]
        rank = np.empty(n_l, np.int32)
        n = 0
        for kk in range(min(kbs, k_len - kbi * kbs)):
            mk = keep[bt, kbi * kbs + kk]
            mk[:] = 0
            off = kk * n_l
            for i in range(mx):
                r = (p[i, kk] >> wshift) - off
                mk[r >> 6] |= np.int64(1) << (r & 63)
            tst[bt, kbi, kk] = n
            for q in range(nw):
                bits = mk[q]
                for b in range(64):
                    rank[q * 64 + b] = n
                    n += (bits >> b) & 1
            for i in range(mx):
                p[i, kk] = rank[(p[i, kk] >> wshift) - off] << wshift


_TK = 32  # k per item of the table build in _expand_narrow


@numba.njit(inline="always")
def _copy_run(t, p, xp, off, n):
    """t[p : p + n] = xp.flat[off : off + n] in 16-lane vectors, the last one overlapping (or, for n < 16, reading
    on past the run: t has 16 values of room beyond the patch row; near the end of xp, element by element)."""
    if n >= 16:
        q = 0
        while q < n:
            q = min(q, n - 16)
            vstore(t, p + q, vload16(xp, off + q))
            q += 16
    elif off + 16 <= xp.size:
        vstore(t, p, vload16(xp, off))
    else:
        for q in range(n):
            t[p + q] = xp.flat[off + q]


_STAGE = 16  # patch rows copied into the row buffer before they are decoded, where runs are short


@numba.njit(inline="always")
def _patch_runs(tx, cch):
    """(runs per tap row, values per run) of a patch row: one run of len(tx) * C values where the taps are
    consecutive along x, else len(tx) runs of C."""
    ntx = tx.shape[0]
    if tx[ntx - 1] - tx[0] == ntx - 1:
        return 1, ntx * cch
    return ntx, cch


def _stage_rows(geo):
    """Rows _expand_narrow copies before decoding them: _STAGE for patch rows of runs shorter than a vector
    (decoding each right after its copy stalled on the copy's overlapping stores; conv1's runs of 5 took longer
    than writing the patch matrix), else 1 (runs of whole vectors: the decoder's loads line up with the copy's
    stores, and 16 rows of K = 400 fill most of L1: the LeNet-5 conv2 input gradient ran slower in three of four
    alternating runs, by a third on average, Zen 4)."""


@overload(_stage_rows, inline="always")
def _ov_stage_rows(geo):
    if isinstance(geo, types.NoneType):
        return lambda geo: 1
    return lambda geo: _STAGE if _patch_runs(geo[4], geo[5])[1] < 16 else 1


@numba.njit(inline="always")
def _patch_position(row, count):
    """(image, output y, output x) of a patch row, ``count`` the output's (height, width)."""
    per_image = count[0] * count[1]
    b = row // per_image
    oy = (row - b * per_image) // count[1]
    return b, oy, row - b * per_image - oy * count[1]


@numba.njit(inline="always")
def _stage_patch_rows(xp, geo, lb, row0, nr, tid):
    """Copy rows row0 .. row0 + nr - 1 (nr <= _STAGE) of the patch matrix that patches_rows (_patches.py) would
    write from xp (L, N, H, W * C) into this thread's rows of ``geo``'s buffer, run by run (_patch_runs) in
    vectors; _expand_narrow decodes them once all nr are copied (see _stage_rows)."""
    start, step, count, ty, tx, cch, rowbuf = geo
    b, oy, ox = _patch_position(row0, count)
    ntx = tx.shape[0]
    nrun, run = _patch_runs(tx, cch)
    wc = xp.shape[3]
    t = rowbuf[tid]
    width = t.shape[0] // _STAGE
    # short runs read as one vector each, on past the run, unless the last row's last read would pass xp's end
    # (the rows' reads only move on through xp). One test for all nr rows: testing each run instead (in
    # _copy_run) made this copy five times slower (conv1's runs of 5, Zen 4).
    short = False
    if run < 16:
        bl, oyl, oxl = _patch_position(row0 + nr - 1, count)
        end = ((((lb * xp.shape[1] + bl) * xp.shape[2] + start[0] + oyl * step[0] + ty[ty.shape[0] - 1]) * wc)
               + (start[1] + oxl * step[1] + tx[ntx - 1]) * cch + 16)
        short = end <= xp.size
    for r in range(nr):
        x0 = start[1] + ox * step[1]
        y0 = start[0] + oy * step[0]
        p = r * width
        for iy in range(ty.shape[0]):
            base = ((lb * xp.shape[1] + b) * xp.shape[2] + y0 + ty[iy]) * wc
            for ix in range(nrun):
                off = base + (x0 + tx[ix]) * cch
                if short:
                    vstore(t, p, vload16(xp, off))
                else:
                    _copy_run(t, p, xp, off, run)
                p += run
        ox += 1  # the next row: x, then y, then the next image
        if ox == count[1]:
            ox = 0
            oy += 1
            if oy == count[0]:
                oy = 0
                b += 1


def _stage_swept_rows(x, geo, lb, row0, nr, tid):
    """_stage_patch_rows where x is a conv input (geo its geometry); nothing where x is the swept operand."""


@overload(_stage_swept_rows, inline="always")
def _ov_stage_swept_rows(x, geo, lb, row0, nr, tid):
    if isinstance(geo, types.NoneType):
        return lambda x, geo, lb, row0, nr, tid: None
    return lambda x, geo, lb, row0, nr, tid: _stage_patch_rows(x, geo, lb, row0, nr, tid)


def _decode_swept_row(x, geo, lb, row, staged, bir, bsr, shift, lmask, rnd, unit_r, unit_k, tid):
    """_decode_row of row ``row`` of batch ``lb``: of x itself (geo None) or of x's patch matrix, from row
    ``staged`` of this thread's buffer (_stage_swept_rows copied it there)."""


@overload(_decode_swept_row, inline="always")
def _ov_decode_swept_row(x, geo, lb, row, staged, bir, bsr, shift, lmask, rnd, unit_r, unit_k, tid):
    if isinstance(geo, types.NoneType):
        return lambda x, geo, lb, row, staged, bir, bsr, shift, lmask, rnd, unit_r, unit_k, tid: _decode_row(
            x[lb, row], bir, bsr, shift, lmask, rnd, unit_r, 0, unit_k)
    return lambda x, geo, lb, row, staged, bir, bsr, shift, lmask, rnd, unit_r, unit_k, tid: _decode_row(
        _staged_row(geo[6][tid], staged, bir.shape[0]), bir, bsr, shift, lmask, rnd, unit_r, 0, unit_k)


@numba.njit(inline="always")
def _staged_row(t, staged, k_len):
    """Row ``staged`` of a thread's buffer of _STAGE rows of K + 16 values: its first K values."""
    p = staged * (t.shape[0] // _STAGE)
    return t[p : p + k_len]


@numba.njit(parallel=True, cache=_CACHE)
def _expand_narrow(c, x, m, truncate, ib, sb, lutt, nbw, fr, kbs, tall, pbi, pbs, cbuf, emin, emax, wide, geo):
    """_expand fused with the decoding of the swept operand x (batch, M, K), C-contiguous, for float GEMMs
    whose expanded operand is one column block (conv layers with a few channels).

    Such GEMMs do a few multiply-accumulates per element of x, so moving x's decoded panels through memory
    costs more than the sweep. Instead the whole expanded table, all of K (``tall``: batch, K * 2**m * nbw;
    small), is built first; then each work item decodes ``fr`` rows into its thread's buffers (pbi/pbs:
    threads x fr x K) and sweeps them over all of K, ``kbs`` at a time (the table rows a block reads stay in
    L2). emin/emax (batch, M): the rows' exponent ranges, as _decode_rows_f32 gives them.

    With a conv geometry ``geo`` = (start, step, count, ty, tx, C, threads x _STAGE * (K + 16) buffer) (else None),
    x is a padded conv input (batch, N, H, W * C) and the rows are those of its patch matrix, copied from x
    into the buffer a few at a time and decoded there, without writing the matrix (see _stage_patch_rows).
    """
    nbatch, m_rows, k_len = c.shape[0], c.shape[1], ib.shape[1]
    nl = lutt.shape[0]
    n_cols = c.shape[2]
    tk = nl * nbw
    shift = 23 - m
    lmask = (1 << m) - 1
    rnd = np.uint32(0) if truncate else np.uint32(0xFFFFFFFF)
    nkc = (k_len + _TK - 1) // _TK
    for q in prange(nbatch * nkc):
        bt = q // nkc
        k0 = (q - bt * nkc) * _TK
        fp = fpenv.enter()
        _build_t(tall[bt], k0 * tk, lutt, ib[bt], sb[bt], k0, min(_TK, k_len - k0), 0, nl, nbw)
        fpenv.leave(fp)
    nrb = (m_rows + fr - 1) // fr
    for q in prange(nbatch * nrb):
        bt = q // nrb
        r0 = (q - bt * nrb) * fr
        nr = min(m_rows, r0 + fr) - r0
        fp = fpenv.enter()
        tid = numba.get_thread_id()
        bi = pbi[tid]
        bs = pbs[tid]
        ct = cbuf[tid]
        stage = _stage_rows(geo)
        for s0 in range(0, nr, stage):
            ns = min(stage, nr - s0)
            _stage_swept_rows(x, geo, bt, r0 + s0, ns, tid)
            for r in range(s0, s0 + ns):
                lo, hi = _decode_swept_row(x, geo, bt, r0 + r, r - s0, bi[r], bs[r], shift, lmask, rnd, nbw, tk, tid)
                emin[bt, r0 + r] = lo
                emax[bt, r0 + r] = hi
        for p in range(nr * nbw):
            ct[p] = 0  # the sum starts from +0.0
        t = tall[bt]
        for k0 in range(0, k_len, kbs):
            kb = min(kbs, k_len - k0)
            _sweep_any(ct, t, bi, bs, None, 0, 0, nr, k0, kb, nbw, wide, np.float32(1.0))
        for i in range(nr):
            for j in range(n_cols):
                c[bt, r0 + i, j] = ct[i * nbw + j]
        fpenv.leave(fp)


# ---------------------------------------------------------------------------------------------------------
# exact scalar path, direct kernels, elementwise kernels
# ---------------------------------------------------------------------------------------------------------
@numba.njit(inline="always")
def _dot_exact(a, b, bt, i, j, shift, truncate, lmask, lut_e, lut_f):
    acc = np.float32(0.0)
    for k in range(a.shape[2]):
        ua = round_bits(f32_to_bits(a[bt, i, k]), shift, truncate)
        ub = round_bits(f32_to_bits(b[bt, k, j]), shift, truncate)
        acc = acc + bits_to_f32(product_bits(ua, ub, shift, lmask, lut_e, lut_f))
    return acc


@numba.njit(parallel=True, cache=_CACHE)
def _fixup_f32(c, a, b, row_bt, row_i, col_bt, col_j, m, truncate, lut_e, lut_f):
    """Recompute, through the scalar path, rows (row_bt, row_i) and columns (col_bt, col_j) of c = a (x) b."""
    shift = 23 - m
    lmask = (1 << m) - 1
    n_cols = c.shape[2]
    m_rows = c.shape[1]
    for q in prange(row_i.shape[0] * n_cols):
        r = q // n_cols
        j = q - r * n_cols
        fp = fpenv.enter()
        c[row_bt[r], row_i[r], j] = _dot_exact(a, b, row_bt[r], row_i[r], j, shift, truncate, lmask, lut_e, lut_f)
        fpenv.leave(fp)
    for q in prange(m_rows * col_j.shape[0]):
        r = q // m_rows
        i = q - r * m_rows
        fp = fpenv.enter()
        c[col_bt[r], i, col_j[r]] = _dot_exact(a, b, col_bt[r], i, col_j[r], shift, truncate, lmask, lut_e, lut_f)
        fpenv.leave(fp)


_GR = 8  # rows per item of _gather_f32 (at most)


@numba.njit(parallel=True, cache=_CACHE)
def _gather_f32(c, ia, sa, ib, sb, lutf, gr, tr):
    """The GEMM without an expanded table, for problems whose swept side is too short to amortise one (conv
    weight gradients: a few rows, a few columns, K of 10^5):

        c[bt, i, j] = sum over k, in k order, of sa[i, k] * (LUT[ia[i, k], ib[k, j]] * sb[k, j])

    the same products and sums as the expansion. Eight columns are one vector: per row and k, one gather of
    eight table entries from row ia[i, k], two multiplies and an add; the column indices and scales of a k are
    loaded once for the ``gr`` rows of a work item (8 or 4: four balance the threads better where there are few
    items; a last item of fewer rows takes them one at a time). ib/sb (batch, K, Npad) come padded to a
    multiple of 8 with index 0, scale 0.
    Rows and columns holding operands outside the exact window are recomputed afterwards, as for expansion.
    With ``tr``, c[bt].T is the product (see _put_out).
    """
    nbatch, m_rows, k_len = ia.shape
    npad = ib.shape[2]
    n_cols = c.shape[1] if tr else c.shape[2]
    nl = lutf.shape[1]
    ncb = npad // 8
    nrb = (m_rows + gr - 1) // gr
    for w in prange(nbatch * ncb * nrb):
        bt = w // (ncb * nrb)
        rest = w - bt * (ncb * nrb)
        j0 = (rest // nrb) * 8
        i0 = (rest - (rest // nrb) * nrb) * gr
        nr = min(m_rows, i0 + gr) - i0
        fp = fpenv.enter()
        ibb = ib[bt]
        sbb = sb[bt]
        acc = np.zeros(_GR * 8, np.float32)  # the sums start from +0.0
        if nr == 8:
            a0 = vload(acc, 0)
            a1 = vload(acc, 8)
            a2 = vload(acc, 16)
            a3 = vload(acc, 24)
            a4 = vload(acc, 32)
            a5 = vload(acc, 40)
            a6 = vload(acc, 48)
            a7 = vload(acc, 56)
            x0, x1, x2, x3 = ia[bt, i0], ia[bt, i0 + 1], ia[bt, i0 + 2], ia[bt, i0 + 3]
            x4, x5, x6, x7 = ia[bt, i0 + 4], ia[bt, i0 + 5], ia[bt, i0 + 6], ia[bt, i0 + 7]
            s0, s1, s2, s3 = sa[bt, i0], sa[bt, i0 + 1], sa[bt, i0 + 2], sa[bt, i0 + 3]
            s4, s5, s6, s7 = sa[bt, i0 + 4], sa[bt, i0 + 5], sa[bt, i0 + 6], sa[bt, i0 + 7]
            for k in range(k_len):
                o = k * npad + j0
                tb = vload(sbb, o)
                a0 = vfma_exact(vsplat(s0[k]), vmul(vgather(lutf, x0[k] * nl, ibb, o), tb), a0)
                a1 = vfma_exact(vsplat(s1[k]), vmul(vgather(lutf, x1[k] * nl, ibb, o), tb), a1)
                a2 = vfma_exact(vsplat(s2[k]), vmul(vgather(lutf, x2[k] * nl, ibb, o), tb), a2)
                a3 = vfma_exact(vsplat(s3[k]), vmul(vgather(lutf, x3[k] * nl, ibb, o), tb), a3)
                a4 = vfma_exact(vsplat(s4[k]), vmul(vgather(lutf, x4[k] * nl, ibb, o), tb), a4)
                a5 = vfma_exact(vsplat(s5[k]), vmul(vgather(lutf, x5[k] * nl, ibb, o), tb), a5)
                a6 = vfma_exact(vsplat(s6[k]), vmul(vgather(lutf, x6[k] * nl, ibb, o), tb), a6)
                a7 = vfma_exact(vsplat(s7[k]), vmul(vgather(lutf, x7[k] * nl, ibb, o), tb), a7)
            vstore(acc, 0, a0)
            vstore(acc, 8, a1)
            vstore(acc, 16, a2)
            vstore(acc, 24, a3)
            vstore(acc, 32, a4)
            vstore(acc, 40, a5)
            vstore(acc, 48, a6)
            vstore(acc, 56, a7)
        elif nr == 4:
            a0 = vload(acc, 0)
            a1 = vload(acc, 8)
            a2 = vload(acc, 16)
            a3 = vload(acc, 24)
            x0, x1, x2, x3 = ia[bt, i0], ia[bt, i0 + 1], ia[bt, i0 + 2], ia[bt, i0 + 3]
            s0, s1, s2, s3 = sa[bt, i0], sa[bt, i0 + 1], sa[bt, i0 + 2], sa[bt, i0 + 3]
            for k in range(k_len):
                o = k * npad + j0
                tb = vload(sbb, o)
                a0 = vfma_exact(vsplat(s0[k]), vmul(vgather(lutf, x0[k] * nl, ibb, o), tb), a0)
                a1 = vfma_exact(vsplat(s1[k]), vmul(vgather(lutf, x1[k] * nl, ibb, o), tb), a1)
                a2 = vfma_exact(vsplat(s2[k]), vmul(vgather(lutf, x2[k] * nl, ibb, o), tb), a2)
                a3 = vfma_exact(vsplat(s3[k]), vmul(vgather(lutf, x3[k] * nl, ibb, o), tb), a3)
            vstore(acc, 0, a0)
            vstore(acc, 8, a1)
            vstore(acc, 16, a2)
            vstore(acc, 24, a3)
        else:
            for r in range(nr):
                xr = ia[bt, i0 + r]
                sr = sa[bt, i0 + r]
                a0 = vload(acc, r * 8)
                for k in range(k_len):
                    o = k * npad + j0
                    a0 = vfma_exact(vsplat(sr[k]), vmul(vgather(lutf, xr[k] * nl, ibb, o), vload(sbb, o)), a0)
                vstore(acc, r * 8, a0)
        nbv = min(8, n_cols - j0)
        for r in range(nr):
            for j in range(nbv):
                _put_out(c, bt, i0 + r, j0 + j, acc[r * 8 + j], tr)
        fpenv.leave(fp)


@numba.njit(parallel=True, cache=_CACHE)
def _gemm_direct_i32(c, ia, ib_t, lut, zero):
    nbatch, m_rows, k_len = ia.shape
    n_cols = ib_t.shape[1]
    for q in prange(nbatch * m_rows):
        b = q // m_rows
        i = q - b * m_rows
        fp = fpenv.enter()
        for j in range(n_cols):
            acc = zero  # int32 0, or float32 +0.0 for full-operand float tables
            for k in range(k_len):
                acc += lut[ia[b, i, k], ib_t[b, j, k]]
            c[b, i, j] = acc
        fpenv.leave(fp)


@numba.njit(parallel=True, cache=_CACHE)
def _multiply_f32(a, b, out, m, truncate, lut_e, lut_f):
    shift = 23 - m
    lmask = (1 << m) - 1
    for q in prange(a.shape[0]):
        ua = round_bits(f32_to_bits(a[q]), shift, truncate)
        ub = round_bits(f32_to_bits(b[q]), shift, truncate)
        out[q] = bits_to_f32(product_bits(ua, ub, shift, lmask, lut_e, lut_f))


@numba.njit(parallel=True, cache=_CACHE)
def _multiply_i32(ia, ib, out, lut):
    for q in prange(ia.shape[0]):
        out[q] = lut[ia[q], ib[q]]


# ---------------------------------------------------------------------------------------------------------
# serial twins: a parallel region costs tens of microseconds (far more when another process holds a core),
# so small problems run single-threaded
# ---------------------------------------------------------------------------------------------------------


def _serial_twin(disp):
    f = disp.py_func
    g = _pytypes.FunctionType(f.__code__, f.__globals__, f.__name__ + "_serial", f.__defaults__, f.__closure__)
    g.__qualname__ = f.__qualname__ + "_serial"  # its own cache files: Numba keys them by qualified name
    g.__doc__ = f.__doc__
    return numba.njit(cache=_CACHE)(g)


_PARALLEL_KERNELS = (_decode_rows_f32, _decode_rows_t_f32, _decode_cols_f32, _decode_cols_rows_f32, _pack_rows_i32,
                     _pack_rows_t_i32, _pad_cols_i32, _expand, _keep_rows, _expand_narrow, _fixup_f32, _gather_f32,
                     _gemm_direct_i32, _multiply_f32, _multiply_i32)
_SERIAL = {k: _serial_twin(k) for k in _PARALLEL_KERNELS}


@numba.njit(parallel=True, cache=_CACHE)
def _start_pool(n):
    acc = 0
    for i in prange(n):
        acc += i
    return acc


_POOL_LOCK = threading.Lock()  # serialises parallel regions where Numba's threading layer is not thread-safe
_INIT_LOCK = threading.Lock()
_layer_is_threadsafe = None


def _guarded(kernel):
    def run(*args):
        with _POOL_LOCK:
            return kernel(*args)

    return run


def _k(kernel, serial: bool):
    """The kernel to call: its serial twin for small problems; the parallel one, serialised across Python threads
    when the threading layer is ``workqueue`` (what Numba falls back to without OpenMP or TBB), which aborts the
    process when two threads enter a parallel region at once."""
    global _layer_is_threadsafe
    if serial:
        return _SERIAL[kernel]
    if _layer_is_threadsafe is None:
        with _INIT_LOCK:
            if _layer_is_threadsafe is None:
                _start_pool(2)  # the layer is chosen when the first parallel region starts
                _layer_is_threadsafe = numba.threading_layer() != "workqueue"
    return kernel if _layer_is_threadsafe else _guarded(kernel)
