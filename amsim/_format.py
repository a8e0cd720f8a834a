"""Operand formats: how a float32 operand is reduced to the multiplier's input format.

The float format has the fp32 exponent (8 bits) and ``mantissa_bits`` fraction bits. Rounding is applied to the
float32 bit pattern (see docs/semantics.md): round-to-nearest-even or truncation of the low ``23 - m`` bits; a
rounding carry moves into the exponent and past the largest finite value gives Inf.
"""

from __future__ import annotations

ROUNDING_MODES = ("nearest", "truncate")
MIN_MANTISSA_BITS = 1
MAX_MANTISSA_BITS = 11
MAX_INT_BITS = 8

CANONICAL_NAN_BITS = 0x7FC00000
INF_BITS = 0x7F800000
SIGN_BIT = 0x80000000


def check_mantissa_bits(m) -> int:
    if isinstance(m, bool) or not isinstance(m, int):
        raise TypeError(f"mantissa_bits must be an int, got {m!r} ({type(m).__name__}).")
    if not MIN_MANTISSA_BITS <= m <= MAX_MANTISSA_BITS:
        raise ValueError(
            f"mantissa_bits={m} is out of range: amsim simulates {MIN_MANTISSA_BITS} to {MAX_MANTISSA_BITS} "
            f"fraction bits (a LUT of 2**(2m) entries). Choose a value in that range."
        )
    return m


def check_int_bits(bits) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int):
        raise TypeError(f"bits must be an int, got {bits!r} ({type(bits).__name__}).")
    if not 2 <= bits <= MAX_INT_BITS:
        raise ValueError(
            f"bits={bits} is out of range: integer multipliers take 2 to {MAX_INT_BITS}-bit operands "
            f"(a full-operand LUT of 2**(2*bits) entries). Choose a value in that range."
        )
    return bits


def check_rounding(rounding) -> str:
    if rounding not in ROUNDING_MODES:
        raise ValueError(f"rounding={rounding!r} is not supported; use one of {ROUNDING_MODES}.")
    return rounding


def int_range(bits: int, signed: bool) -> tuple[int, int]:
    """Smallest and largest operand value of a ``bits``-wide integer format."""
    if signed:
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1
