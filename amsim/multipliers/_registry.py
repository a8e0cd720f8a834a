"""Look built-in multipliers up by name, as the CLI and config files do."""

from __future__ import annotations

import re

from . import _float, _int

_FLOAT = {
    "exact": _float.exact,
    "bf16": _float.exact,  # bfloat16 operands (7 fraction bits, round to nearest), exact product
    "exact_truncated": _float.exact_truncated,
    "mitchell": _float.mitchell,
    "mbm": _float.mbm,
}
_INT = {"int": (_int.exact_int, True), "uint": (_int.exact_int, False)}


def available() -> list[str]:
    """Names accepted by :func:`get` (a float name may end in the mantissa width, e.g. "mbm5")."""
    return sorted(_FLOAT) + ["int8", "uint8 (or intN / uintN, N = 2..8)"]


def get(name: str, mantissa_bits: int = 7, rounding: str = "nearest"):
    """A built-in multiplier by name: "mbm", "mbm7", "mitchell5", "exact10", "bf16", "int8", "uint4", ...

    Arguments:
        name: built-in name, optionally followed by the mantissa (float) or operand (integer) width.
        mantissa_bits: width used when the name carries none.
        rounding: operand rounding for float multipliers.

    Returns:
        The :class:`amsim.Multiplier`.
    """
    key = name.strip().lower()
    if key == "bf16":
        return _float.exact(7, rounding=rounding)
    match = re.fullmatch(r"([a-z_]+?)(\d*)", key)
    if match:
        base, digits = match.groups()
        if base in _INT and digits:
            factory, signed = _INT[base]
            return factory(bits=int(digits), signed=signed)
        if base in _FLOAT:
            if base == "bf16":
                if digits:
                    raise ValueError("'bf16' has a fixed width; use 'exactN' for other widths.")
                return _float.exact(7, rounding=rounding)
            m = int(digits) if digits else mantissa_bits
            return _FLOAT[base](m, rounding=rounding)
    raise ValueError(f"unknown multiplier {name!r}; built-ins are: {', '.join(available())}.")
