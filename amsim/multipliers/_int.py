"""Built-in integer multipliers."""

from __future__ import annotations

from .._multiplier import int_multiplier


def exact_int(bits: int = 8, signed: bool = True):
    """The exact integer product (int8 by default); the reference every integer multiplier is measured against."""

    @int_multiplier(bits=bits, signed=signed, name=f"exact_{'int' if signed else 'uint'}{bits}")
    def exact_int_(a, b):
        return a * b

    return exact_int_
