"""ApproxTrain significand LUT files (``NAME_m.bin``).

ApproxTrain (J. Gong, H. Saadat, H. Gamaarachchi, H. Javaid, X. S. Hu, S. Parameswaran, "ApproxTrain: Fast
Simulation of Approximate Multipliers for DNN Training and Inference", IEEE TCAD, 2023) stores one byte per pair
of m-bit mantissas: index ``ma * 2**m + mb`` (A's mantissa field is the row), byte = ``0x80`` when the
significand product is >= 2 (the exponent carry) OR'd with the top m fraction bits of the normalised product.
Earlier ApproxTrain versions wrote the same information as little-endian uint32 (fraction bits in place at bit
23 - m and up, carry = ``0x80000000``); :func:`load_approxtrain` reads both.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from .. import _operands
from .._errors import InvalidTableError
from .._io import atomic_write
from .._multiplier import Multiplier

__all__ = ["load_approxtrain", "save_approxtrain", "approxtrain_bytes"]

MAX_BITS = 7  # a byte holds the carry flag and at most 7 fraction bits


def _decode(fraction, carry, m):
    value = (1.0 + fraction.astype(np.float64) / 2.0**m) * np.where(carry, 2.0, 1.0)
    return value.astype(np.float32)  # exact: m + 1 significant bits


def load_approxtrain(path, mantissa_bits: int | None = None, *, rounding: str = "truncate",
                     name: str | None = None) -> Multiplier:
    """Read an ApproxTrain LUT file into a float :class:`amsim.Multiplier`.

    Arguments:
        path: the ``.bin`` file.
        mantissa_bits: m, 1 to 7; by default taken from a name ending in ``_m.bin`` (e.g. ``MBM_7.bin``), else
            from the size of a one-byte-per-entry file.
        rounding: operand rounding of the result ("truncate" by default, as ApproxTrain truncates operands
            to m bits; "nearest" for round-to-nearest-even operands).
        name: the multiplier's name (default: the file name without ``.bin``).

    Returns:
        A float :class:`amsim.Multiplier` whose table holds the decoded significand products.
    """
    path = Path(path)
    size = path.stat().st_size
    if size > 4 << (2 * MAX_BITS):  # the largest ApproxTrain table: legacy uint32 entries, m = 7
        raise InvalidTableError(f"{path} has {size} bytes; an ApproxTrain table has at most {4 << (2 * MAX_BITS)}.")
    raw = np.fromfile(path, dtype=np.uint8)
    from_name = re.search(r"_(\d+)\.bin$", path.name)
    m = mantissa_bits
    if m is None and from_name:
        m = int(from_name.group(1))
    elif m is None:
        m = (raw.size.bit_length() - 1) // 2  # one byte per entry: 4**m bytes
    if from_name and mantissa_bits is not None and int(from_name.group(1)) != mantissa_bits:
        raise ValueError(f"{path.name} names mantissa width {from_name.group(1)} but mantissa_bits={mantissa_bits} "
                         "was passed; rename the file or drop the argument.")
    _operands.check_mantissa_bits(m)
    if m > MAX_BITS:
        raise ValueError(f"ApproxTrain LUT files hold at most {MAX_BITS} fraction bits per entry, got m={m}.")
    n = 1 << m
    if raw.size == n * n:
        entries = raw.reshape(n, n)
        fraction, carry, stray = entries & (n - 1), entries & 0x80, entries & ~np.uint8(0x80 | (n - 1))
    elif raw.size == 4 * n * n:
        entries = raw.view("<u4").reshape(n, n)
        shift = 23 - m
        fraction = (entries >> np.uint32(shift)) & np.uint32(n - 1)
        carry = entries & np.uint32(0x80000000)
        stray = entries & ~np.uint32(0x80000000 | ((n - 1) << shift))
    else:
        raise InvalidTableError(f"{path} has {raw.size} bytes; an ApproxTrain table for m={m} has {n * n} "
                                f"(one byte per entry) or {4 * n * n} (legacy uint32 entries). Pass "
                                "mantissa_bits= if the file name does not end in _m.bin.")
    if stray.any():
        i, j = np.argwhere(stray)[0]
        raise InvalidTableError(f"{path}: entry [{i}, {j}] = {int(entries[i, j]):#x} sets bits outside the carry "
                                f"flag and the {m} fraction bits; is this really an ApproxTrain m={m} table?")
    values = _decode(fraction, carry != 0, m)
    return Multiplier.from_table(values, kind="float", rounding=rounding, name=name or path.stem)


def approxtrain_bytes(mult: Multiplier) -> np.ndarray:
    """The (2**m, 2**m) uint8 ApproxTrain encoding of a float multiplier's table (m <= 7).

    Raises :class:`amsim.InvalidTableError` when an entry is not a product in [1, 4) with at most m fraction
    bits after normalisation, which the format cannot hold.
    """
    if not isinstance(mult, Multiplier) or mult.is_int:
        raise TypeError(f"ApproxTrain tables hold float significand products; got {mult!r}.")
    m = mult.mantissa_bits
    if m > MAX_BITS:
        raise ValueError(f"{mult!r} has {m} mantissa bits; ApproxTrain's one-byte entries hold at most {MAX_BITS}. "
                         "Use a multiplier with mantissa_bits <= 7, or keep amsim's .npz format (Multiplier.save).")
    v = mult.table.values.astype(np.float64)
    carry = v >= 2.0
    scaled = np.where(carry, v / 2.0, v)
    fraction = (scaled - 1.0) * 2.0**m
    bad = (v < 1.0) | (v >= 4.0) | (fraction != np.floor(fraction))
    if bad.any():
        i, j = np.argwhere(bad)[0]
        raise InvalidTableError(
            f"{mult.name}: {int(bad.sum())} table entries cannot be written to an ApproxTrain m={m} file, e.g. "
            f"[{i}, {j}] = {v[i, j]!r}. Entries must lie in [1, 4) and have at most {m} fraction bits once "
            "normalised to [1, 2); truncate the model's result to m bits (see amsim.multipliers.exact_truncated).")
    return (fraction.astype(np.uint8) | np.where(carry, 0x80, 0).astype(np.uint8)).astype(np.uint8)


def save_approxtrain(mult: Multiplier, path) -> Path:
    """Write a float multiplier with mantissa_bits <= 7 as an ApproxTrain LUT file (one byte per entry).

    ApproxTrain finds the width in the file name: name it ``NAME_m.bin``.

    Returns:
        The path written.
    """
    return atomic_write(path, np.ascontiguousarray(approxtrain_bytes(mult)).tobytes())
