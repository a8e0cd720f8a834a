"""Look built-in multipliers up by name, as the CLI and config files do."""

from __future__ import annotations

import inspect
import re

from . import _float, _int, _library_float, _library_int

# Names that mean "no simulation: the framework's own float32 product" everywhere amsim takes a multiplier spec
# (Python rules, OpConfig modes, CLI --multiplier/--rule, results labels). A simulated exact product of rounded
# operands is named with its width: "exact7" (or "bf16").
NATIVE_NAMES = ("fp32", "exact", "native")

# float designs: the digits after the name are the mantissa width
_FLOAT = {
    "exact": _float.exact,  # only with width digits ("exact7"): bare "exact" is native, see NATIVE_NAMES
    "bf16": _float.exact,  # bfloat16 operands (7 fraction bits, round to nearest), exact product
    "exact_truncated": _float.exact_truncated,
    "mitchell": _float.mitchell,
    "mbm": _float.mbm,
    "alm_soa": _library_float.alm_soa,
    "realm": _library_float.realm,
    "trunc_sig": _library_float.truncated_significand,
}
# exact integer formats: "int8", "uint4"
_INT = {"int": (_int.exact_int, True), "uint": (_int.exact_int, False)}
# integer designs: factory and what the digits after the name mean ("bits", or a design parameter as the
# paper names it, e.g. DRUM-k)
_INT_DESIGNS = {
    "drum": (_library_int.drum, "k"),
    "bam": (_library_int.broken_array, "bits"),
    "trunc_array": (_library_int.truncated_array, "bits"),
    "kulkarni": (_library_int.kulkarni, "bits"),
    "mitchell_int": (_library_int.mitchell_int, "bits"),
}


def available() -> list[str]:
    """Names accepted by :func:`get`.

    A float name may end in the mantissa width ("mbm5", "realm7"); "int8" / "uint4" are exact integer formats;
    integer designs end in their operand width ("kulkarni8"), except DRUM, which ends in its segment width k
    as in the paper ("drum4"). Design parameters go to :func:`get` as keywords.
    """
    ints = [f"{name}[N] (N = {'operand bits' if digit == 'bits' else digit})"
            for name, (_, digit) in _INT_DESIGNS.items()]
    floats = [f"{n}N (N = mantissa bits)" if n == "exact" else n for n in sorted(_FLOAT)]
    return floats + ["int8", "uint8 (or intN / uintN, N = 2..8)"] + sorted(ints)


def _call(factory, name, params, fixed):
    accepted = set(inspect.signature(factory).parameters)
    unknown = set(params) - (accepted - set(fixed))
    if unknown:
        raise ValueError(f"multiplier {name!r} does not take {sorted(unknown)} as keywords here; "
                         f"{factory.__name__}() has parameters {sorted(accepted)}, of which {sorted(fixed)} "
                         "come from the name and get()'s own arguments.")
    return factory(**fixed, **params)


def get(name: str, mantissa_bits: int = 7, rounding: str = "nearest", *, bits: int = 8, signed: bool = True,
        **params):
    """A built-in multiplier by name: "mbm", "mbm7", "mitchell5", "realm7", "int8", "uint4", "drum4", ...

    Arguments:
        name: built-in name (see :func:`available`), optionally followed by its width digits: the mantissa
            width for float designs, the operand width for "int"/"uint" and integer designs, the segment
            width k for "drum".
        mantissa_bits: width of a float design whose name carries none.
        rounding: operand rounding for float designs.
        bits: operand width of an integer design whose name does not give it.
        signed: two's-complement (True) or unsigned operands for integer designs.
        params: design parameters, e.g. ``k=2`` for "alm_soa", ``segments=16`` for "realm", ``t=9`` for
            "trunc_sig", ``hbl=2, vbl=6`` for "bam".

    Returns:
        The :class:`amsim.Multiplier`.
    """
    key = name.strip().lower()
    if key in NATIVE_NAMES:
        raise ValueError(f"{name!r} means native float32 (no simulation) in amsim's specs and rules, so it is not a "
                         "table; the simulated exact product of rounded operands is named with its width, e.g. "
                         "'exact7' (bfloat16 operands, also 'bf16') or 'exact10'.")
    # a whole name first ("bf16" is a name, not "bf" + 16), then name + width digits
    match = re.fullmatch(r"([a-z_0-9]+)()", key) if key in _FLOAT else re.fullmatch(r"([a-z_]+?)(\d*)", key)
    if match:
        base, digits = match.groups()
        if base in _INT and digits:
            if params:
                raise ValueError(f"{name!r} is an exact integer format; it takes no parameters.")
            factory, is_signed = _INT[base]
            return factory(bits=int(digits), signed=is_signed)
        if base in _INT_DESIGNS:
            factory, digit = _INT_DESIGNS[base]
            fixed = {"bits": bits, "signed": signed}
            if digits:
                fixed[digit] = int(digits)
            return _call(factory, name, params, fixed)
        if base in _FLOAT:
            if base == "bf16":
                if digits or params:
                    raise ValueError("'bf16' has a fixed width and no parameters; use 'exactN' for other widths.")
                return _float.exact(7, rounding=rounding)
            m = int(digits) if digits else mantissa_bits
            return _call(_FLOAT[base], name, params, {"mantissa_bits": m, "rounding": rounding})
    raise ValueError(f"unknown multiplier {name!r}; built-ins are: {', '.join(available())}.")
