"""More integer multipliers: DRUM, broken-array, truncated array, Kulkarni's underdesigned and Mitchell's.

Every design here is defined on unsigned operands. The signed variants (``signed=True``, two's-complement operand
range) use sign-magnitude around the unsigned core: ``sign(a) sign(b) core(|a|, |b|)``, with |a| up to
2**(bits-1) (which still fits the core's ``bits``-bit input). That is the usual way these papers extend their
unsigned designs, and it keeps every design symmetric in sign.
"""

from __future__ import annotations

import numba

from .. import _operands
from .._multiplier import int_multiplier
from ._library_float import _check_int_param

__all__ = ["drum", "broken_array", "truncated_array", "kulkarni", "mitchell_int"]


def _label(bits, signed):
    return f"{'int' if signed else 'uint'}{bits}"


@numba.njit(inline="always")
def leading_one(u):
    """Position of the most significant set bit of u > 0."""
    t = -1
    while u:
        u >>= 1
        t += 1
    return t


@numba.njit(inline="always")
def apply_sign(a, b, p):
    """Sign-magnitude: give the unsigned core's product p the sign of a * b."""
    return -p if (a < 0) != (b < 0) else p


@numba.njit(inline="always")
def drum_operand(u, k):
    """DRUM's operand reduction: k bits from the leading one, the lowest of them forced to 1."""
    if u < (1 << k):
        return u
    shift = leading_one(u) - k + 1
    return ((u >> shift) | 1) << shift


def drum(k: int = 4, bits: int = 8, signed: bool = True):
    """Dynamic range unbiased multiplier, DRUM-k.

    S. Hashemi, R. I. Bahar, S. Reda, "DRUM: A Dynamic Range Unbiased Multiplier for Approximate Applications",
    IEEE/ACM International Conference on Computer-Aided Design (ICCAD), 2015.

    Each unsigned operand u with its leading one at position t >= k is reduced to the k-bit segment
    ``u[t : t-k+1]`` with its least significant bit set to 1 (which makes the truncation error unbiased), and
    shifted back; an operand below 2**k is used as is. The two reduced operands are multiplied exactly.
    Signed variant: sign-magnitude around this core.

    Arguments:
        k: segment width, 1 to ``bits``.
        bits: operand width, 2 to 8.
        signed: two's-complement operands (sign-magnitude core) or unsigned.

    Returns:
        An integer :class:`amsim.Multiplier` named ``drum{k}_{int|uint}{bits}``.
    """
    bits = _operands.check_int_bits(bits)
    k = _check_int_param("k", k, 1, bits, f"DRUM keeps 1 to bits={bits} bits of each operand.")

    @int_multiplier(bits=bits, signed=signed, name=f"drum{k}_{_label(bits, signed)}")
    def drum_(a, b):
        return apply_sign(a, b, drum_operand(abs(a), k) * drum_operand(abs(b), k))

    return drum_


def broken_array(bits: int = 8, signed: bool = True, hbl: int | None = None, vbl: int | None = None):
    """Broken-array multiplier, BAM.

    H. R. Mahdiani, A. Ahmadi, S. M. Fakhraie, C. Lucas, "Bio-Inspired Imprecise Computational Blocks for
    Efficient VLSI Implementation of Soft-Computing Applications", IEEE Transactions on Circuits and Systems I,
    vol. 57, no. 4, 2010.

    An unsigned array multiplier whose carry-save cells above the horizontal break level and right of the
    vertical break level are removed. Functionally, the partial product ``a_i b_j 2**(i+j)`` (a = first
    operand, the multiplicand along the row; b = second operand, one row per bit) is kept only when
    ``j >= hbl`` and ``i + j >= vbl``; the kept ones are summed exactly. ``hbl = vbl = 0`` is exact.
    Signed variant: sign-magnitude around this core.

    Arguments:
        bits: operand width, 2 to 8.
        signed: two's-complement operands (sign-magnitude core) or unsigned.
        hbl: horizontal break level, 0 to ``bits``: rows of b dropped, from the least significant
            (default bits // 4, 2 for 8 bits).
        vbl: vertical break level, 0 to 2*bits - 1: product columns dropped (default max(bits - 2, 0), 6 for
            8 bits).

    Returns:
        An integer :class:`amsim.Multiplier` named ``bam_h{hbl}_v{vbl}_{int|uint}{bits}``.
    """
    bits = _operands.check_int_bits(bits)
    hbl = bits // 4 if hbl is None else _check_int_param("hbl", hbl, 0, bits,
                                                         f"a {bits}-bit array has rows 0 to {bits - 1}.")
    vbl = max(bits - 2, 0) if vbl is None else _check_int_param("vbl", vbl, 0, 2 * bits - 1,
                                                   f"a {bits}-bit array has product columns 0 to {2 * bits - 1}.")

    @int_multiplier(bits=bits, signed=signed, name=f"bam_h{hbl}_v{vbl}_{_label(bits, signed)}")
    def bam_(a, b):
        ua = abs(a)
        ub = abs(b)
        p = 0
        for j in range(hbl, bits):  # row j: b_j times the bits of a that land in columns >= vbl
            if (ub >> j) & 1:
                lo = vbl - j if vbl > j else 0
                p += ((ua >> lo) << lo) << j
        return apply_sign(a, b, p)

    return bam_


def truncated_array(bits: int = 8, signed: bool = True, t: int | None = None):
    """Truncated array multiplier: the partial products in the product columns below t are dropped.

    The fixed-width multiplier of M. J. Schulte, E. E. Swartzlander, "Truncated Multiplication with Correction
    Constant", VLSI Signal Processing VI, IEEE, 1993, without the correction constant: ``a_i b_j 2**(i+j)`` is
    kept when ``i + j >= t`` and the kept ones are summed exactly (the broken-array multiplier with
    ``hbl = 0, vbl = t``). Signed variant: sign-magnitude around this core.

    Arguments:
        bits: operand width, 2 to 8.
        signed: two's-complement operands (sign-magnitude core) or unsigned.
        t: first kept column, 0 (exact) to 2*bits - 1 (default ``bits``: the lower half is dropped).

    Returns:
        An integer :class:`amsim.Multiplier` named ``trunc_array_t{t}_{int|uint}{bits}``.
    """
    bits = _operands.check_int_bits(bits)
    t = bits if t is None else _check_int_param("t", t, 0, 2 * bits - 1,
                                               f"a {bits}-bit array has product columns 0 to {2 * bits - 1}.")

    @int_multiplier(bits=bits, signed=signed, name=f"trunc_array_t{t}_{_label(bits, signed)}")
    def trunc_array_(a, b):
        ua = abs(a)
        ub = abs(b)
        p = 0
        for j in range(bits):  # row j: b_j times the bits of a that land in columns >= t
            if (ub >> j) & 1:
                lo = t - j if t > j else 0
                p += ((ua >> lo) << lo) << j
        return apply_sign(a, b, p)

    return trunc_array_


def kulkarni(bits: int = 8, signed: bool = True):
    """Kulkarni's underdesigned multiplier.

    P. Kulkarni, P. Gupta, M. D. Ercegovac, "Trading Accuracy for Power with an Underdesigned Multiplier
    Architecture", 24th International Conference on VLSI Design, 2011.

    The 2x2 building block is exact except 3 x 3 = 7 (0b111, three output bits instead of four). Wider
    multipliers are built recursively from four half-width multipliers whose products are added exactly; this
    equals splitting each operand into 2-bit digits and summing ``block(a_k, b_l) 4**(k+l)`` over all digit
    pairs. Odd widths are zero-extended to the next even width. Signed variant: sign-magnitude around this core.

    Arguments:
        bits: operand width, 2 to 8.
        signed: two's-complement operands (sign-magnitude core) or unsigned.

    Returns:
        An integer :class:`amsim.Multiplier` named ``kulkarni_{int|uint}{bits}``.
    """
    bits = _operands.check_int_bits(bits)
    digits = (bits + 1) // 2

    @int_multiplier(bits=bits, signed=signed, name=f"kulkarni_{_label(bits, signed)}")
    def kulkarni_(a, b):
        ua = abs(a)
        ub = abs(b)
        p = 0
        for k in range(digits):
            x = (ua >> (2 * k)) & 3
            for m in range(digits):
                y = (ub >> (2 * m)) & 3
                block = 7 if x == 3 and y == 3 else x * y
                p += block << (2 * (k + m))
        return apply_sign(a, b, p)

    return kulkarni_


def mitchell_int(bits: int = 8, signed: bool = True):
    """Mitchell's logarithmic multiplier on integers.

    J. N. Mitchell, "Computer Multiplication and Division Using Binary Logarithms", IRE Transactions on
    Electronic Computers, vol. EC-11, no. 4, 1962.

    An unsigned operand u = 2**k (1 + x) (k = position of the leading one) has log2(u) ~ k + x. The product
    is 2**(k1+k2) (1 + x1 + x2) when x1 + x2 < 1 and 2**(k1+k2+1) (x1 + x2) otherwise; with integer operands
    that value is an integer, so nothing is truncated. A zero operand gives 0. Signed variant: sign-magnitude
    around this core.

    Arguments:
        bits: operand width, 2 to 8.
        signed: two's-complement operands (sign-magnitude core) or unsigned.

    Returns:
        An integer :class:`amsim.Multiplier` named ``mitchell_{int|uint}{bits}``.
    """
    bits = _operands.check_int_bits(bits)

    @int_multiplier(bits=bits, signed=signed, name=f"mitchell_{_label(bits, signed)}")
    def mitchell_int_(a, b):
        ua = abs(a)
        ub = abs(b)
        if ua == 0 or ub == 0:
            return 0
        k1 = leading_one(ua)
        k2 = leading_one(ub)
        base = 1 << (k1 + k2)
        frac = ((ua - (1 << k1)) << k2) + ((ub - (1 << k2)) << k1)  # (x1 + x2) * 2**(k1+k2)
        p = base + frac if frac < base else 2 * frac
        return apply_sign(a, b, p)

    return mitchell_int_
