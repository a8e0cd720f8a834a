"""Built-in floating-point multipliers (significand models). Each docstring names its source."""

from __future__ import annotations

import math

import numba

from .._multiplier import multiplier

# a rounding other than the family's default is part of the printed name, so that names stay one per multiplier
ROUNDING_SUFFIX = {"nearest": "_rne", "truncate": "_rtz"}


def rounded_name(name: str, rounding: str, default: str) -> str:
    return name if rounding == default else name + ROUNDING_SUFFIX.get(rounding, f"_{rounding}")


@numba.njit(inline="always")
def truncate_to(p, m):
    """Truncate a positive significand product to m fraction bits (after normalisation to [1, 2) * 2**e)."""
    f, e = math.frexp(p)  # p = f * 2**e, f in [0.5, 1)
    return math.floor(f * 2.0 ** (m + 1)) * 2.0 ** (e - m - 1)


def exact(mantissa_bits: int = 7, rounding: str = "nearest"):
    """The exact product of the rounded operands.

    For m <= 11 the product of two (m+1)-bit significands has at most 24 bits, so it is exact in float32:
    with ``mantissa_bits=7`` this is a bfloat16-operand multiply with float32 accumulation.
    """

    @multiplier(mantissa_bits=mantissa_bits, rounding=rounding,
                name=rounded_name(f"exact{mantissa_bits}", rounding, "nearest"))
    def exact_(x, y):
        return x * y

    return exact_


def exact_truncated(mantissa_bits: int = 7, rounding: str = "truncate"):
    """Exact product of the operands with the result truncated to ``mantissa_bits`` fraction bits.

    This is ApproxTrain's "bfloat16" table (Gong et al., IEEE TCAD 2023): truncated operands, exact significand
    product, low result bits dropped.
    """
    m = mantissa_bits

    @multiplier(mantissa_bits=m, rounding=rounding, name=rounded_name(f"exact_truncated{m}", rounding, "truncate"))
    def exact_truncated_(x, y):
        return truncate_to(x * y, m)

    return exact_truncated_


def mitchell(mantissa_bits: int = 7, rounding: str = "nearest"):
    """Mitchell's logarithmic multiplier (J. N. Mitchell, IRE Trans. Electronic Computers, 1962).

    With fractions fx = x - 1 and fy = y - 1, log2(1 + f) ~ f gives the product 1 + fx + fy when fx + fy < 1
    and 2 (fx + fy) otherwise; the result is truncated to m fraction bits (for Mitchell this drops nothing).
    """
    m = mantissa_bits

    @multiplier(mantissa_bits=m, rounding=rounding, name=rounded_name(f"mitchell{m}", rounding, "nearest"))
    def mitchell_(x, y):
        s = (x - 1.0) + (y - 1.0)
        p = 1.0 + s if s < 1.0 else 2.0 * s
        return truncate_to(p, m)

    return mitchell_


def mbm(mantissa_bits: int = 7, rounding: str = "nearest"):
    """Minimally biased multiplier, MBM (Saadat, Bokhari, Parameswaran, IEEE TCAD 2018), as ApproxTrain models it.

    Each fraction is truncated to m bits and the bit just below is set (fx + 2**-(m+1)); their sum s gives
    1 + s + c without carry and 2 (s + c/2) with carry (s >= 1), with the bias correction c = 2**-4 + 2**-6
    halved on carry and skipped when the corrected fraction would overflow. The result is truncated to m bits.
    """
    m = mantissa_bits
    half_ulp = 2.0 ** -(m + 1)
    corr = 2.0**-4 + 2.0**-6

    @multiplier(mantissa_bits=m, rounding=rounding, name=rounded_name(f"mbm{m}", rounding, "nearest"))
    def mbm_(x, y):
        s = (x - 1.0 + half_ulp) + (y - 1.0 + half_ulp)
        if s < 1.0:
            p = 1.0 + s + corr
        else:
            q = (s - 1.0) + corr / 2.0
            p = 2.0 * s if q >= 1.0 else 2.0 * (1.0 + q)
        return truncate_to(p, m)

    return mbm_
