"""Operands: what a multiplier accepts and how operands reach the kernels, written once for every backend.

Widths, rounding modes and integer ranges with their checks; the canonical NaN; checks of operand and ``out``
arrays; the preparation every backend's kernels expect (operands converted to a narrow operand format, encoded to
format codes for full-operand tables, or shifted to table indices for integer multipliers); the int32 accumulator
bound; and the exponent window within which a significand table's products are formed exactly without a fix-up
(docs/semantics.md). Arrays are NumPy or CuPy (``xp`` is their module); nothing here imports a backend.
"""

from __future__ import annotations

import numpy as np

from ._errors import UnsupportedError

ROUNDING_MODES = ("nearest", "truncate")
MIN_MANTISSA_BITS = 1
MAX_MANTISSA_BITS = 11
MAX_INT_BITS = 8

CANONICAL_NAN_BITS = 0x7FC00000  # every NaN product is this quiet NaN (the CPU and CUDA kernels take it from here)
INF_BITS = 0x7F800000
SIGN_BIT = 0x80000000
I32_MAX = np.iinfo(np.int32).max


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


# ---- operand arrays -----------------------------------------------------------------------------------------
def check_operand(x, mult, name):
    """``x`` has the dtype (and, for integer multipliers, the values) ``mult`` takes; raises naming the fix."""
    dt = x.dtype
    if mult.is_int:
        if dt.kind not in "iu":
            raise TypeError(f"{name} has dtype {dt}, but {mult!r} is an integer multiplier: pass integer arrays "
                            "(quantise floats first).")
        lo, hi = mult.int_range
        info = np.iinfo(dt)
        if x.size and (info.min < lo or info.max > hi):  # else the dtype guarantees it (no device read on a GPU)
            xmin, xmax = int(x.min()), int(x.max())
            if xmin < lo or xmax > hi:
                raise ValueError(f"{name} holds values in [{xmin}, {xmax}], outside the {mult.int_bits}-bit "
                                 f"{'signed' if mult.signed else 'unsigned'} operand range [{lo}, {hi}]; clip or "
                                 "requantise the input.")
    elif dt != np.float32:
        raise TypeError(f"{name} has dtype {dt}; float multipliers take float32 arrays. Convert explicitly with "
                        f"{name}.astype(np.float32) (amsim never converts silently).")


def convert(x, mult, xp):
    """Narrow operand formats (fp16, FP8, ...): converted first, so the kernels see exactly representable values."""
    fmt = mult.operand_format if not mult.is_int else None
    if fmt is None:
        return x
    from ._formats import convert as convert_to

    return convert_to(x, fmt, mult.rounding, xp)


def int_indices(x, mult):
    """Integer operands as int32 table indices ``x - lo`` (a transposed view stays transposed)."""
    lo = mult.int_range[0]
    return (x.astype(np.int64) - lo).astype(np.int32)


def kernel_operands(mult, xs, xp):
    """What every backend's kernels read for operands ``xs``: int32 table indices (integer multipliers), int32
    format codes (full-operand tables), float32 values converted to the operand format (significand tables)."""
    if mult.is_int:
        return [int_indices(x, mult) for x in xs]
    xs = [convert(x, mult, xp) for x in xs]
    if mult.is_code:
        from ._formats import encode

        return [encode(x, mult.operand_format, xp) for x in xs]
    return xs


def output(out, shape, dtype, xp, *inputs):
    """(array the kernels write, array to copy it into afterwards or None).

    An ``out`` that may share memory with an input is never written while the input is read: the result goes to a
    fresh array first, and is copied into ``out`` at the end (bit for bit the result without aliasing).
    """
    if out is None:
        return xp.empty(shape, dtype=dtype), None
    if not isinstance(out, xp.ndarray):
        raise TypeError(f"out must be a {xp.__name__}.ndarray (like the inputs), got {type(out).__name__}.")
    if tuple(out.shape) != tuple(shape) or out.dtype != dtype:
        raise ValueError(f"out has shape {tuple(out.shape)} and dtype {out.dtype}; expected {tuple(shape)} {dtype}.")
    if not out.flags.c_contiguous:
        raise ValueError("out must be C-contiguous.")
    if not getattr(out.flags, "writeable", True):
        raise ValueError("out is read-only (flags.writeable is False); pass a writable array or out=None.")
    if any(xp.may_share_memory(out, x) for x in inputs):
        return xp.empty(shape, dtype=dtype), out
    return out, None


def finish(res, final):
    """The result of :func:`output`'s pair: ``res`` itself, or ``res`` copied into the caller's ``out``."""
    if final is None:
        return res
    final[...] = res
    return final


# ---- integer accumulation and exponent windows --------------------------------------------------------------
def check_int_contraction(k_len: int, mult, what: str) -> None:
    """Refuse a contraction whose exact int32 sum could overflow (K * max|product| > int32 max)."""
    biggest = int(np.abs(mult.table.values.astype(np.int64)).max())
    if k_len * biggest > I32_MAX:
        raise UnsupportedError(f"{what}: with K={k_len} and products up to {biggest}, the int32 accumulator could "
                               f"overflow (bound {k_len * biggest} > {I32_MAX}); split the contraction into chunks "
                               f"of at most {I32_MAX // max(1, biggest)}.")


def exponent_windows(values) -> tuple[tuple[int, int, int, int], int, int]:
    """The exponents for which a significand table's products are exact without the scalar fix-up.

    With the nonzero entries' exponents in [e_lo, e_hi], every product p * 2**(ea + eb) is normal when ea + eb
    lies in [-126 - e_lo, 127 - e_hi]; splitting that range between A (a_lo <= 0 <= a_hi) and B keeps the
    intermediate p * 2**eb normal too.

    Returns:
        ``((a_lo, a_hi, b_lo, b_hi), e_lo, e_hi)``: the symmetric split (empty: ``(1, 0, 1, 0)``, everything takes
        the exact path) and the entries' exponent range (0, 0 for an all-zero table).
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
        return (1, 0, 1, 0), e_lo, e_hi
    return (a_lo, a_hi, s_lo - a_lo, s_hi - a_hi), e_lo, e_hi
