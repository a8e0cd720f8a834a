"""The golden model: the semantics of docs/semantics.md in plain, vectorised NumPy.

Every backend (Numba CPU kernels, CUDA kernels, the JAX bridge) is tested bit for bit against these functions.
They favour clarity over speed; use them on small arrays only. The float path deliberately takes a different
route from the kernels (float64 ``ldexp`` rather than bit assembly) so the two check each other.
"""

from __future__ import annotations

import numpy as np

from ._fpenv import under_default_fp
from ._operands import CANONICAL_NAN_BITS

__all__ = ["quantize", "multiply", "matmul"]


@under_default_fp
def quantize(x, mantissa_bits: int, rounding: str = "nearest") -> np.ndarray:
    """Round float32 values to ``mantissa_bits`` fraction bits (step 1 of the semantics).

    Arguments:
        x: float32 array.
        mantissa_bits: kept fraction bits, 1 to 11.
        rounding: "nearest" (round half to even) or "truncate".

    Returns:
        float32 array of the same shape; NaN becomes the canonical quiet NaN, subnormals are *not* flushed here.
    """
    x = np.asarray(x, dtype=np.float32)
    u = x.view(np.uint32).astype(np.uint64)
    shift = 23 - mantissa_bits
    if rounding == "nearest":
        lsb = (u >> shift) & 1
        u = u + ((1 << (shift - 1)) - 1) + lsb
    u = u & ~np.uint64((1 << shift) - 1)
    out = u.astype(np.uint32).view(np.float32)
    return np.where(np.isnan(x), np.uint32(CANONICAL_NAN_BITS).view(np.float32), out).astype(np.float32)


def _float_products(a, b, mult) -> np.ndarray:
    """Elementwise approximate products of float32 arrays (broadcasting), float32 result."""
    m = mult.mantissa_bits
    table = mult.table.values.astype(np.float64)
    if mult.operand_format is not None:  # narrow formats: convert (rounding, range, subnormal policy) first
        from ._formats import convert

        a = convert(a, mult.operand_format, mult.rounding)
        b = convert(b, mult.operand_format, mult.rounding)
    qa = quantize(a, m, mult.rounding)
    qb = quantize(b, m, mult.rounding)
    qa, qb = np.broadcast_arrays(qa, qb)
    fa, ea = np.frexp(qa.astype(np.float64))  # |qa| = fa * 2**ea, fa in [0.5, 1)
    fb, eb = np.frexp(qb.astype(np.float64))
    tiny = np.finfo(np.float32).tiny
    zero_a = np.abs(qa) < tiny  # zero or subnormal after rounding: flushed
    zero_b = np.abs(qb) < tiny
    nan = np.isnan(qa) | np.isnan(qb)
    inf = np.isinf(qa) | np.isinf(qb)
    sign = np.signbit(qa) ^ np.signbit(qb)

    mask = np.uint32((1 << m) - 1)
    ia = (qa.view(np.uint32) >> np.uint32(23 - m)) & mask
    ib = (qb.view(np.uint32) >> np.uint32(23 - m)) & mask
    finite = ~(nan | inf | zero_a | zero_b)
    ia = np.where(finite, ia, 0)
    ib = np.where(finite, ib, 0)
    p = table[ia, ib]
    # unbiased exponents of the operands: |q| = 1.f * 2**(e - 1)
    mag = np.ldexp(p, np.where(finite, ea + eb - 2, 0))
    mag = np.where(mag >= 2.0**128, np.inf, mag)
    mag = np.where(mag < tiny, 0.0, mag)
    mag = np.where(finite, mag, 0.0)
    mag = np.where(inf, np.inf, mag)
    mag = np.where(inf & (zero_a | zero_b), np.nan, mag)
    out = np.where(sign, -mag, mag).astype(np.float32)
    nan_out = nan | (inf & (zero_a | zero_b))
    return np.where(nan_out, np.uint32(CANONICAL_NAN_BITS).view(np.float32), out)


def _code_products(a, b, mult) -> np.ndarray:
    """Full-operand tables: convert to the format, then look the pair of codes up."""
    from ._formats import convert, encode

    fmt = mult.operand_format
    ca = encode(convert(a, fmt, mult.rounding), fmt)
    cb = encode(convert(b, fmt, mult.rounding), fmt)
    ca, cb = np.broadcast_arrays(ca, cb)
    return mult.table.values[ca, cb]


def _int_products(a, b, mult) -> np.ndarray:
    lo, _ = mult.int_range
    a, b = np.broadcast_arrays(np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64))
    return mult.table.values[a - lo, b - lo].astype(np.int32)


@under_default_fp
def multiply(a, b, mult) -> np.ndarray:
    """Golden elementwise approximate product with NumPy broadcasting.

    Arguments:
        a, b: float32 arrays for a float multiplier, integer arrays for an integer multiplier.
        mult: an :class:`amsim.Multiplier`.

    Returns:
        float32 (float multiplier) or int32 (integer multiplier) array.
    """
    if mult.is_int:
        return _int_products(a, b, mult)
    with np.errstate(all="ignore"):
        if mult.is_code:
            return _code_products(a, b, mult)
        return _float_products(a, b, mult)


@under_default_fp
def matmul(a, b, mult) -> np.ndarray:
    """Golden approximate matmul with ``numpy.matmul`` shape rules.

    Each output is the sum over k = 0..K-1 in order, starting from +0.0, every addition rounded to float32
    (int32 and exact for integer multipliers).
    """
    a = np.asarray(a)
    b = np.asarray(b)
    squeeze_a = a.ndim == 1
    squeeze_b = b.ndim == 1
    if squeeze_a:
        a = a[None, :]
    if squeeze_b:
        b = b[:, None]
    if a.shape[-1] != b.shape[-2]:
        raise ValueError(f"matmul: contraction sizes differ: {a.shape} @ {b.shape}")
    batch = np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    m, k, n = a.shape[-2], a.shape[-1], b.shape[-1]
    a = np.broadcast_to(a, batch + (m, k))
    b = np.broadcast_to(b, batch + (k, n))
    acc_dtype = np.int64 if mult.is_int else np.float32
    acc = np.zeros(batch + (m, n), dtype=acc_dtype)
    for kk in range(k):
        prod = multiply(a[..., :, kk : kk + 1], b[..., kk : kk + 1, :], mult)
        with np.errstate(all="ignore"):  # Inf - Inf -> NaN is part of the semantics, not an accident
            acc = (acc + prod.astype(acc_dtype)).astype(acc_dtype)  # float32 + float32: one rounding per add
    if mult.is_int:
        acc = acc.astype(np.int32)
    if squeeze_a:
        acc = acc[..., 0, :]
    if squeeze_b:
        acc = acc[..., 0]
    return acc
