"""Built-in multipliers by name, as the CLI, rules and ``amsim.matmul(a, b, "mbm")`` take them.

Three spellings reach every built-in:

- the **name it prints** (``Multiplier.name``, what ``amsim inspect`` and docs/multipliers.md show):
  ``mbm7``, ``alm_soa7_k3``, ``realm7_M16``, ``trunc_sig7_t9``, ``drum4_int8``, ``bam_h2_v6_int8``,
  ``trunc_array_t8_uint8``, ``kulkarni_int8``, ``mitchell_int8``, ``exact_int8``;
- **short names**: a design with its width digits (``mbm5``, ``mitchell``, ``kulkarni8``, ``drum4`` = DRUM-k as in
  the paper, ``int8``, ``uint4``), and the baselines ``bf16``, ``fp16``, ``e4m3``, ``e5m2`` (exact products of
  operands in those formats, subnormals kept);
- **call syntax** with the factory's keywords: ``alm_soa(m=7, k=3)``, ``drum(k=3, bits=8, signed=False)``, and
  inclusive **ranges** for sweeps, ``drum(k=3..6)`` (see :func:`expand`).

``fp32``, ``exact`` and ``native`` are not tables: they mean the framework's own float32 product everywhere.
"""

from __future__ import annotations

import difflib
import inspect
import re

from . import _float, _int, _library_float, _library_int
from ._float import ROUNDING_SUFFIX

__all__ = ["get", "available", "expand", "split_specs", "NATIVE_NAMES"]

# Names that mean "no simulation: the framework's own float32 product" everywhere amsim takes a multiplier spec
# (Python rules, OpConfig modes, CLI --multiplier/--rule, results labels). A simulated exact product of rounded
# operands is named with its width: "exact7" (or "bf16").
NATIVE_NAMES = ("fp32", "exact", "native")

# family: (factory, kind, what bare digits after the name set, {name letter: parameter})
_FAMILIES = {
    "exact": (_float.exact, "float", "mantissa_bits", {}),
    "exact_truncated": (_float.exact_truncated, "float", "mantissa_bits", {}),
    "mitchell": (_float.mitchell, "float", "mantissa_bits", {}),
    "mbm": (_float.mbm, "float", "mantissa_bits", {}),
    "alm_soa": (_library_float.alm_soa, "float", "mantissa_bits", {"k": "k"}),
    "realm": (_library_float.realm, "float", "mantissa_bits", {"M": "segments"}),
    "trunc_sig": (_library_float.truncated_significand, "float", "mantissa_bits", {"t": "t"}),
    "exact_int": (_int.exact_int, "int", "bits", {}),
    "drum": (_library_int.drum, "int", "k", {}),
    "bam": (_library_int.broken_array, "int", "bits", {"h": "hbl", "v": "vbl"}),
    "trunc_array": (_library_int.truncated_array, "int", "bits", {"t": "t"}),
    "kulkarni": (_library_int.kulkarni, "int", "bits", {}),
    "mitchell_int": (_library_int.mitchell_int, "int", "bits", {}),
}
# a float family's name followed by an integer format is the integer family ("mitchell_int8", "exact_uint4")
_INT_OF = {"mitchell": "mitchell_int", "exact": "exact_int"}
_ALIASES = {"m": "mantissa_bits"}  # in call syntax
_BASELINES = {"bf16": ("exact", 7, None), "fp16": ("exact", 10, "fp16"), "e4m3": ("exact", 3, "e4m3"),
              "e5m2": ("exact", 2, "e5m2")}

_CALL = re.compile(r"([a-z_]\w*)\s*\((.*)\)", re.S)
# printed names: base, width digits, _<letter><value> parameters, an integer format (drum4_int8, bam_h2_v6_uint8)
_NAME = re.compile(r"(?P<base>[A-Za-z_]+?)(?P<digits>\d*)(?P<params>(?:_[A-Za-z]\d+)*)"
                   r"(?:_(?P<sign>u?int)(?P<bits>\d+))?")


def available() -> list[str]:
    """What :func:`get` takes, as short names and call-syntax templates."""
    out = [f"{b}  ({s})" for b, s in (("bf16", "bfloat16 operands"), ("fp16", "IEEE half operands"),
                                      ("e4m3", "OCP FP8 operands"), ("e5m2", "OCP FP8 operands"))]
    for base, (factory, _, digits, _) in _FAMILIES.items():
        params = ", ".join(f"{p}=" for p in inspect.signature(factory).parameters if p != "rounding")
        short = f"{base}N (N = {'mantissa bits' if digits == 'mantissa_bits' else digits})"
        out.append(f"{short}, {base}({params})" if base != "exact_int" else "int8, uintN, exact_int(bits=, signed=)")
    return out


def _close(name):
    known = [*_FAMILIES, *_BASELINES, "int8", "uint8"]
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    hint = f" Did you mean {' or '.join(map(repr, close))}?" if close else ""
    return f"unknown multiplier {name!r}.{hint} `amsim list` shows every built-in; a file spec is " \
           "path/to/file.py:function, table.npz or NAME_m.bin."


def _value(text, spec):
    t = text.strip()
    if re.fullmatch(r"[+-]?\d+", t):
        return int(t)
    if t.lower() in ("true", "false"):
        return t.lower() == "true"
    if re.fullmatch(r"['\"]?[A-Za-z_]\w*['\"]?", t):
        return t.strip("'\"")
    raise ValueError(f"multiplier spec {spec!r}: {t!r} is not an int, true/false or a word.")


def _build(spec, base, kwargs):
    factory, _, _, letters = _FAMILIES[base]
    accepted = set(inspect.signature(factory).parameters)
    params = {}
    for key, val in kwargs.items():
        key = _ALIASES.get(key, letters.get(key, key))
        if key not in accepted:
            raise ValueError(f"multiplier spec {spec!r}: {factory.__name__}() does not take {key!r}; it takes "
                             f"{sorted(accepted)}" + (" (m = mantissa_bits)" if "mantissa_bits" in accepted else "")
                             + ".")
        params[key] = val
    return factory(**params)


def _parse_call(spec):
    m = _CALL.fullmatch(spec.strip())
    base = m.group(1).lower()
    if base not in _FAMILIES:  # (call syntax is for the design families; baselines have no parameters)
        raise ValueError(_close(base))
    kwargs = {}
    body = m.group(2).strip()
    for part in filter(None, (p.strip() for p in body.split(","))):
        if "=" not in part:
            raise ValueError(f"multiplier spec {spec!r}: write parameters as name=value, got {part!r}.")
        key, val = (x.strip() for x in part.split("=", 1))
        kwargs[key] = val
    return base, kwargs


def expand(spec: str) -> list[str]:
    """The specs a sweep spec stands for: ``drum(k=3..6)`` gives ``drum(k=3)`` ... ``drum(k=6)``; any other spec
    gives itself. Several ranges give every combination, in order."""
    s = spec.strip()
    if not _CALL.fullmatch(s) or ".." not in s:
        return [s]
    base, kwargs = _parse_call(s)
    out = [{}]
    for key, val in kwargs.items():
        rng = re.fullmatch(r"([+-]?\d+)\s*\.\.\s*([+-]?\d+)", val)
        vals = [str(v) for v in range(int(rng.group(1)), int(rng.group(2)) + 1)] if rng else [val]
        if rng and int(rng.group(1)) > int(rng.group(2)):
            raise ValueError(f"multiplier spec {spec!r}: the range {val!r} is empty.")
        out = [{**o, key: v} for o in out for v in vals]
    return [f"{base}(" + ", ".join(f"{k}={v}" for k, v in o.items()) + ")" for o in out]


def split_specs(text: str) -> list[str]:
    """A comma-separated list of specs, commas inside parentheses kept: ``"fp32,drum(k=3,bits=8),mbm"``."""
    out, depth, cur = [], 0, ""
    for ch in text:
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    out.append(cur)
    return [s.strip() for s in out if s.strip()]


def get(name: str, **params):
    """A built-in multiplier by any of its spellings (see the module docstring).

    Arguments:
        name: a printed name (``alm_soa7_k3``), a short name (``mbm``, ``mbm5``, ``int8``, ``drum4``, ``fp16``) or call
            syntax (``alm_soa(m=7, k=3)``). Ranges are for :func:`expand`.
        params: more factory keywords, e.g. ``rounding="truncate"``, ``signed=False``.

    Returns:
        The :class:`amsim.Multiplier`.
    """
    if not isinstance(name, str):
        raise TypeError(f"a multiplier name must be a string, got {type(name).__name__}.")
    s = name.strip()
    key = s.lower()
    if key in NATIVE_NAMES:
        raise ValueError(f"{name!r} means native float32 (no simulation) in amsim's specs and rules, so it is not a "
                         "table; the simulated exact product of rounded operands is named with its width, e.g. "
                         "'exact7' (bfloat16 operands, also 'bf16') or 'exact10'.")
    if ".." in s:
        raise ValueError(f"{name!r} is a range of multipliers; expand it first (amsim.multipliers.expand).")
    if _CALL.fullmatch(s):
        base, kwargs = _parse_call(s)
        return _build(s, base, {**{k: _value(v, s) for k, v in kwargs.items()}, **params})
    if key in _BASELINES:
        base, m, fmt = _BASELINES[key]
        mult = _build(s, base, {"mantissa_bits": m, **params})
        if fmt is None:
            return mult
        from .. import formats

        return mult.with_format(getattr(formats, fmt)(subnormals="keep"), name=key)
    if re.fullmatch(r"u?int\d+", key):  # exact integer formats
        signed = not key.startswith("u")
        return _build(s, "exact_int", {"bits": int(key.lstrip("uint")), "signed": signed, **params})
    for rounding, suffix in ROUNDING_SUFFIX.items():  # mbm5_rtz: a non-default rounding, as names print it
        if s.endswith(suffix) and "rounding" not in params:
            s, params = s[: -len(suffix)], {**params, "rounding": rounding}
            break
    m = _NAME.fullmatch(s)
    if m is None:
        raise ValueError(_close(s))
    base, digits, sign, bits = m.group("base").lower(), m.group("digits"), m.group("sign"), m.group("bits")
    if sign:
        base = _INT_OF.get(base, base)
    if base not in _FAMILIES:
        raise ValueError(_close(s))
    _, kind, digit_param, letters = _FAMILIES[base]
    kwargs = {}
    if digits:
        kwargs[digit_param] = int(digits)
    for letter, value in re.findall(r"_([A-Za-z])(\d+)", m.group("params") or ""):
        if letter not in letters:
            raise ValueError(f"{name!r}: {base} has no parameter _{letter}N; its name takes "
                             f"{', '.join('_' + x + 'N' for x in letters) or 'none'}.")
        kwargs[letters[letter]] = int(value)
    if sign:
        if kind != "int":
            raise ValueError(f"{name!r}: {base} is a float design; it has no integer format suffix.")
        kwargs.update(bits=int(bits), signed=sign == "int")
    return _build(s, base, {**kwargs, **params})
