"""Integer LUTs of other simulators: TFApprox ``.bin``, AdaPT / TransAxx C headers, TorchApprox arrays.

amsim indexes an integer table by operand value, ``values[a - lo, b - lo]``. The other tools index by the
operand's bit pattern (two's complement for signed operands): ``lut[uint8(a)][uint8(b)]``. Both hold the same
numbers in a different row/column order; the functions here convert between them.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from .._errors import InvalidTableError
from .._io import atomic_write
from .._multiplier import Multiplier

__all__ = [
    "from_byte_indexed",
    "to_byte_indexed",
    "from_torchapprox",
    "to_torchapprox",
    "load_tfapprox",
    "save_tfapprox",
    "load_c_header",
    "save_c_header",
    "sign_magnitude",
]


def _bits_of_side(side, what):
    bits = int(side).bit_length() - 1
    if side < 4 or side != 1 << bits or bits > 8:
        raise InvalidTableError(f"{what}: a table side must be 2**bits with bits = 2..8, got {side}.")
    return bits


def _pattern_order(bits, signed):
    """For each amsim row (operand a = row + lo), the bit-pattern index of a."""
    n = 1 << bits
    lo = -(n >> 1) if signed else 0
    return (np.arange(n) + lo) % n


def _check_int_mult(mult, what):
    if not isinstance(mult, Multiplier) or not mult.is_int:
        raise TypeError(f"{what} holds integer products; got {mult!r}. Use an integer multiplier.")


def from_byte_indexed(values, *, signed: bool = True, name: str = "byte_indexed") -> Multiplier:
    """An integer :class:`amsim.Multiplier` from a table indexed by operand bit patterns.

    Arguments:
        values: integer (2**bits, 2**bits) array with ``values[a mod 2**bits, b mod 2**bits]`` the product of
            a and b (for int8: ``lut[uint8(a)][uint8(b)]``, the AdaPT / TransAxx / TorchApprox layout).
        signed: operands are two's complement (True) or unsigned.
        name: the multiplier's name.

    Returns:
        The :class:`amsim.Multiplier` (its table in amsim's value order).
    """
    arr = np.asarray(values)
    if arr.ndim != 2 or arr.shape[0] != arr.shape[1]:
        raise InvalidTableError(f"{name}: expected a square table, got shape {arr.shape}.")
    if not np.issubdtype(arr.dtype, np.integer):
        raise InvalidTableError(f"{name}: expected an integer table, got dtype {arr.dtype}.")
    order = _pattern_order(_bits_of_side(arr.shape[0], name), signed)
    return Multiplier.from_table(arr[np.ix_(order, order)], kind="int", signed=signed, name=name)


def to_byte_indexed(mult: Multiplier, dtype=np.int32) -> np.ndarray:
    """A multiplier's table in bit-pattern order (``lut[uint8(a)][uint8(b)]`` for int8), as ``dtype``.

    Raises ``ValueError`` if a product does not fit ``dtype``.
    """
    _check_int_mult(mult, "a bit-pattern-indexed table")
    values = mult.table.values
    info = np.iinfo(dtype)
    if values.min() < info.min or values.max() > info.max:
        raise ValueError(f"{mult.name}: products range over [{values.min()}, {values.max()}], which does not fit "
                         f"{np.dtype(dtype).name}; pick a wider dtype.")
    order = _pattern_order(mult.int_bits, mult.signed)
    out = np.empty_like(values, dtype=dtype)
    out[np.ix_(order, order)] = values
    return out


def from_torchapprox(values, *, signed: bool = True, name: str = "torchapprox") -> Multiplier:
    """A multiplier from a TorchApprox LUT: int32 (256, 256) array indexed ``[uint8(a), uint8(b)]``.

    ``values`` may also be the path of a ``.npy`` file holding that array (read without pickle).
    """
    if isinstance(values, (str, Path)):
        values = _load_npy_table(Path(values))
    return from_byte_indexed(values, signed=signed, name=name)


def _load_npy_table(path: Path) -> np.ndarray:
    """A square integer table from a .npy file, its header checked before the data is read (no pickle)."""
    from ..lut._table import _parse_npy

    limit = 8 * (1 << 16) + 4096  # an int64 256 x 256 table and its header
    if path.stat().st_size > limit:
        raise InvalidTableError(f"{path} has {path.stat().st_size} bytes; a 256 x 256 integer table has at most "
                                f"{limit}.")
    return _parse_npy(path.read_bytes(), path.name, path,
                      lambda dt, sh: dt.kind in "iu" and len(sh) == 2 and sh[0] == sh[1] and sh[0] <= 256,
                      "a square integer table of side at most 256")


def to_torchapprox(mult: Multiplier) -> np.ndarray:
    """The TorchApprox LUT of an integer multiplier: int32 array indexed ``[uint8(a), uint8(b)]``."""
    return to_byte_indexed(mult, np.int32)


# ---- TFApprox ------------------------------------------------------------------------------------------------
def load_tfapprox(path, *, name: str | None = None) -> Multiplier:
    """Read a TFApprox ``.bin`` table: 256 x 256 little-endian uint16 products of unsigned 8-bit operands.

    Entry ``a * 256 + b`` (row a, column b) is the product of a and b.

    Returns:
        An unsigned 8-bit integer :class:`amsim.Multiplier` named ``name`` (default: the file name stem).
    """
    path = Path(path)
    if path.stat().st_size != 2 * 256 * 256:
        raise InvalidTableError(f"{path} has {path.stat().st_size} bytes; a TFApprox table has 131072 (256 x 256 "
                                "uint16 entries).")
    raw = np.fromfile(path, dtype="<u2")
    if raw.size != 256 * 256:
        raise InvalidTableError(f"{path} has {path.stat().st_size} bytes; a TFApprox table has 131072 (256 x 256 "
                                "uint16 entries).")
    return Multiplier.from_table(raw.reshape(256, 256).astype(np.int32), kind="int", signed=False,
                                 name=name or path.stem)


def save_tfapprox(mult: Multiplier, path) -> Path:
    """Write an unsigned 8-bit integer multiplier as a TFApprox ``.bin`` table (products must fit uint16)."""
    _check_int_mult(mult, "a TFApprox table")
    if mult.int_bits != 8 or mult.signed:
        raise ValueError(f"TFApprox tables are for unsigned 8-bit operands; {mult!r} is not. Build the "
                         "multiplier with bits=8, signed=False.")
    values = mult.table.values
    if values.min() < 0 or values.max() > 0xFFFF:
        raise ValueError(f"{mult.name}: products range over [{values.min()}, {values.max()}]; TFApprox stores "
                         "uint16, 0 to 65535.")
    return atomic_write(path, values.astype("<u2").tobytes())


# ---- C headers (AdaPT / TransAxx) ------------------------------------------------------------------------------
_DECL = re.compile(r"([A-Za-z_]\w*)\s*((?:\[\s*\w*\s*\]\s*)+)=\s*\{")
_NUMBER = re.compile(r"([-+]?)\s*(0[xX][0-9a-fA-F]+|\d+)[uUlL]*")


def _strip_comments(text):
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    return re.sub(r"//[^\n]*", " ", text)


_MAX_HEADER_BYTES = 16 << 20  # a 256 x 256 table of 32-bit literals is about 1 MB


def _c_int(digits):
    try:
        if digits[:2].lower() == "0x":
            return int(digits, 16)
        if len(digits) > 1 and digits[0] == "0":
            return int(digits, 8)  # C octal
        return int(digits)
    except ValueError:
        raise InvalidTableError(f"{digits!r} is not a valid C integer literal (a leading 0 means octal).") from None


def _declared_dims(decl):
    """The numeric dimensions of a declaration ``name[A][B]`` (None for empty or symbolic ones)."""
    dims = re.findall(r"\[\s*(\w*)\s*\]", decl.group(2))
    out = []
    for d in dims:
        if re.fullmatch(r"(0[xX][0-9a-fA-F]+|\d+)[uUlL]*", d):
            out.append(_c_int(re.sub(r"[uUlL]+$", "", d)))
        else:
            out.append(None)
    return out


def parse_c_array(text: str, array_name: str | None = None) -> np.ndarray:
    """The numbers of a C array initialiser (``T name[..][..] = {{...}, ...};``) as a flat int64 array.

    Arguments:
        text: C source.
        array_name: which array, when the source defines several.

    Returns:
        int64 array in initialiser order.
    """
    text = _strip_comments(text)
    decls = list(_DECL.finditer(text))
    if array_name is not None:
        decls = [d for d in decls if d.group(1) == array_name]
    if not decls:
        which = f"an array named {array_name!r}" if array_name else "an array initialiser (T name[N][N] = {...})"
        raise InvalidTableError(f"the C source has no {which}.")
    if len(decls) > 1:
        raise InvalidTableError(f"the C source defines several arrays ({', '.join(d.group(1) for d in decls)}); "
                                "pass array_name= to pick one.")
    start = decls[0].end() - 1
    depth = 0
    for pos in range(start, len(text)):
        depth += {"{": 1, "}": -1}.get(text[pos], 0)
        if depth == 0:
            break
    else:
        raise InvalidTableError(f"the initialiser of {decls[0].group(1)!r} has no closing brace.")
    values = []
    for token in re.split(r"[{},]", text[start:pos + 1]):
        token = token.strip()
        if not token:
            continue
        literal = _NUMBER.fullmatch(token)
        if literal is None:
            raise InvalidTableError(f"the initialiser of {decls[0].group(1)!r} holds {token[:40]!r}, which is not "
                                    "an integer literal; export plain numbers.")
        sign, digits = literal.groups()
        v = (-1 if sign == "-" else 1) * _c_int(digits)
        if not -(1 << 63) <= v < 1 << 63:
            raise InvalidTableError(f"the initialiser of {decls[0].group(1)!r} holds {token[:40]!r}, beyond 64 bits.")
        values.append(v)
    dims = _declared_dims(decls[0])
    known = [d for d in dims if d is not None]
    if len(dims) == len(known) and dims and int(np.prod(dims, dtype=object)) != len(values):
        raise InvalidTableError(f"{decls[0].group(1)!r} is declared {''.join(f'[{d}]' for d in dims)} but its "
                                f"initialiser holds {len(values)} values.")
    if len(dims) == 2 and None not in dims and dims[0] != dims[1]:
        raise InvalidTableError(f"{decls[0].group(1)!r} is declared [{dims[0]}][{dims[1]}]: a multiplier table is "
                                "square (one row per value of a, one column per value of b).")
    return np.array(values, dtype=np.int64)


def load_c_header(source, *, signed: bool = True, array_name: str | None = None,
                  name: str | None = None) -> Multiplier:
    """Read an AdaPT / TransAxx style C header: ``lut[uint8(a)][uint8(b)]`` = product of a and b.

    Arguments:
        source: the header's path, or its text.
        signed: operands are two's complement (AdaPT / TransAxx use signed int8); False for unsigned tables.
        array_name: which array, when the header defines several.
        name: the multiplier's name (default: the array's or file's name).

    Returns:
        An integer :class:`amsim.Multiplier`; the width comes from the number of entries (4**bits).
    """
    path = None
    if isinstance(source, Path) or (isinstance(source, str) and "{" not in source):
        path = Path(source)
        if path.stat().st_size > _MAX_HEADER_BYTES:
            raise InvalidTableError(f"{path} has {path.stat().st_size} bytes, more than a C table header would.")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidTableError(f"{path} is not a text (UTF-8) C header: {exc}.") from None
    else:
        text = str(source)
    values = parse_c_array(text, array_name)
    side = int(round(np.sqrt(values.size)))
    if side * side != values.size:
        raise InvalidTableError(f"the C array has {values.size} entries, not a square table (256 x 256 = 65536 "
                                "for 8-bit operands).")
    label = name or (path.stem if path is not None else (array_name or "c_header"))
    if values.min() < np.iinfo(np.int32).min or values.max() > np.iinfo(np.int32).max:
        raise InvalidTableError(f"{label}: products outside the int32 range.")
    return from_byte_indexed(values.reshape(side, side), signed=signed, name=label)


def c_header_text(mult: Multiplier, *, array_name: str = "lut", ctype: str | None = None) -> str:
    """The AdaPT / TransAxx C header of an integer multiplier (see :func:`save_c_header`)."""
    _check_int_mult(mult, "a C header table")
    if not re.fullmatch(r"[A-Za-z_]\w*", array_name):
        raise ValueError(f"array_name={array_name!r} is not a C identifier.")
    values = mult.table.values
    lo, hi = int(values.min()), int(values.max())
    if ctype is None:
        ctype = "int16_t" if -(1 << 15) <= lo and hi < (1 << 15) else "int32_t"
    limits = {"int8_t": 7, "int16_t": 15, "int32_t": 31}
    if ctype not in limits:
        raise ValueError(f"ctype={ctype!r}; use one of {sorted(limits)}.")
    if lo < -(1 << limits[ctype]) or hi >= 1 << limits[ctype]:
        raise ValueError(f"{mult.name}: products range over [{lo}, {hi}], which does not fit {ctype}.")
    table = to_byte_indexed(mult, np.int64)
    n = table.shape[0]
    kind = "int" if mult.signed else "uint"
    rows = ",\n".join("{" + ", ".join(str(int(v)) for v in row) + "}" for row in table)
    return (f"/* amsim multiplier {mult.name!r}: {array_name}[{kind}{mult.int_bits} pattern of a][pattern of b] "
            f"= approximate a * b */\n#include <stdint.h>\n\nconst {ctype} {array_name}[{n}][{n}] = {{\n{rows}\n}};\n")


def save_c_header(mult: Multiplier, path, *, array_name: str = "lut", ctype: str | None = None) -> Path:
    """Write an integer multiplier as an AdaPT / TransAxx C header.

    The header defines ``const T lut[N][N]`` with ``lut[uint8(a)][uint8(b)]`` the product (two's-complement
    bit patterns for signed operands), T = int16_t when every product fits, else int32_t.

    Arguments:
        mult: an integer multiplier.
        path: where to write.
        array_name: the C array's name ("lut", as AdaPT expects).
        ctype: the element type, "int8_t", "int16_t" or "int32_t" (default: the smallest of int16_t / int32_t).

    Returns:
        The path written.
    """
    return atomic_write(path, c_header_text(mult, array_name=array_name, ctype=ctype))


def sign_magnitude(mult: Multiplier, name: str | None = None) -> Multiplier:
    """A signed multiplier built from an unsigned circuit the way a sign-magnitude datapath uses it:
    ``p(a, b) = sign(a) * sign(b) * U(|a|, |b|)`` for ``bits``-bit two's-complement operands (|-2^(bits-1)| fits
    the unsigned range). The circuit's cost is kept (the sign logic is one XOR).

    Arguments:
        mult: an unsigned integer multiplier (e.g. an EvoApproxLib ``mul8u_*`` circuit).
        name: the new name (default: the circuit's name with ``_sm``).

    Returns:
        A signed integer :class:`amsim.Multiplier` of the same width.
    """
    _check_int_mult(mult, "sign_magnitude()")
    if mult.signed:
        raise ValueError(f"{mult.name} is already signed; sign_magnitude() takes an unsigned circuit.")
    bits = mult.int_bits
    v = np.arange(-(1 << (bits - 1)), 1 << (bits - 1), dtype=np.int64)
    mag = np.abs(v)
    prod = mult.table.values.astype(np.int64)[np.ix_(mag, mag)] * np.multiply.outer(np.sign(v), np.sign(v))
    out = Multiplier.from_table(prod.astype(np.int32), kind="int", signed=True, name=name or f"{mult.name}_sm")
    return out.with_cost(mult.cost) if mult.cost is not None else out
