"""Tabulate a multiplier written in C (EvoApprox ``mul8u_*`` / ``mul8s_*``, ApproxTrain ``.inl`` models, ...).

The C source is compiled with the system compiler into a temporary shared library together with a small
generated loop over the whole operand grid, so the 65536 (or 4M) calls run in C; ctypes calls the loop once.
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from .. import _format
from .._errors import AmsimError, InvalidTableError, ModelCompileError
from .._multiplier import Multiplier

__all__ = ["from_c", "CCompilerError", "find_c_compiler"]

COMPILER_ENV = "AMSIM_CC"
FLAGS = ["-O2", "-shared", "-fPIC", "-fno-strict-aliasing", "-Werror=implicit-function-declaration"]
_PRELUDE = "#include <stdint.h>\n#include <stdbool.h>\n#include <string.h>\n#include <math.h>\n"


class CCompilerError(AmsimError, RuntimeError):
    """No usable C compiler was found."""


def find_c_compiler(compiler: str | None = None) -> str:
    """The C compiler to use: ``compiler``, else $AMSIM_CC, else $CC, else the first of cc, gcc, clang on PATH.

    Raises :class:`CCompilerError` naming what was tried when none is found.
    """
    chosen = compiler or os.environ.get(COMPILER_ENV) or os.environ.get("CC")
    candidates = [chosen] if chosen else ["cc", "gcc", "clang"]
    for cand in candidates:
        found = shutil.which(cand)
        if found:
            return found
    origin = ("compiler=" if compiler else f"${COMPILER_ENV}" if os.environ.get(COMPILER_ENV) else "$CC") \
        if chosen else "PATH"
    raise CCompilerError(
        f"no C compiler found (tried {', '.join(map(repr, candidates))} from {origin}). amsim.interop.from_c "
        f"compiles the model with the system C compiler: install one (e.g. apt-get install gcc), or point "
        f"compiler= or ${COMPILER_ENV} at it, or tabulate the model elsewhere and load the table "
        "(Multiplier.from_table).")


def _read_source(source) -> tuple[str, str]:
    if isinstance(source, os.PathLike):
        path = Path(source)
        return path.read_text(), path.name
    text = str(source)
    if "\n" not in text and ("(" not in text or Path(text).exists()):
        path = Path(text)
        if not path.exists():
            raise FileNotFoundError(f"C source file {text!r} does not exist (pass C code as a string, or a path).")
        return path.read_text(), path.name
    return text, "model.c"


def _wrapper(function_name, kind, n, lo):
    if kind == "int":
        return (
            "\n/* amsim: exhaustive tabulation, one call per operand pair */\n"
            "void amsim_tabulate(double *out) {\n"
            f"    for (long i = 0; i < {n}L; ++i)\n"
            f"        for (long j = 0; j < {n}L; ++j)\n"
            f"            out[i * {n}L + j] = (double)({function_name}(({lo}L) + i, ({lo}L) + j));\n"
            "}\n")
    return (
        "\n/* amsim: exhaustive tabulation at exponent bias: operands 1.ma and 1.mb */\n"
        "void amsim_tabulate(float *out) {\n"
        f"    for (long i = 0; i < {n}L; ++i)\n"
        f"        for (long j = 0; j < {n}L; ++j) {{\n"
        f"            float x = 1.0f + (float)i / {float(n)!r}f, y = 1.0f + (float)j / {float(n)!r}f;\n"
        f"            out[i * {n}L + j] = (float)({function_name}(x, y));\n"
        "        }\n"
        "}\n")


def _compile_and_run(code, label, cc, out):
    with tempfile.TemporaryDirectory(prefix="amsim_c_") as tmp:
        src = Path(tmp) / "model.c"
        lib = Path(tmp) / "model.so"
        src.write_text(code)
        cmd = [cc, *FLAGS, "-o", str(lib), str(src), "-lm"]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        except OSError as exc:
            raise CCompilerError(f"could not run the C compiler {cc!r}: {exc}. Point compiler= or "
                                 f"${COMPILER_ENV} at a working compiler.") from None
        if proc.returncode != 0:
            log = (proc.stderr or proc.stdout).strip()
            raise ModelCompileError(f"C model {label} did not compile ({' '.join(cmd[:1] + FLAGS)}):\n{log[-3000:]}")
        handle = ctypes.CDLL(str(lib))  # loaded before the directory goes; the mapping survives the unlink
        handle.amsim_tabulate.restype = None
        handle.amsim_tabulate.argtypes = [ctypes.c_void_p]
        handle.amsim_tabulate(out.ctypes.data)
    return out


def _reinterpret(values, result_bits):
    """Low ``result_bits`` bits of each value read as two's complement."""
    v = values.astype(np.int64) & ((1 << result_bits) - 1)
    return np.where(v >= 1 << (result_bits - 1), v - (1 << result_bits), v)


def _check_sign_consistency(values, bits, label):
    lo, hi = _format.int_range(bits, True)
    v = np.arange(lo, hi + 1, dtype=np.int64)
    exact = np.multiply.outer(v, v)
    neg = exact < 0
    wrong = neg & (values > 0)
    if wrong.sum() > 0.5 * neg.sum():
        i, j = np.argwhere(wrong)[0]
        raise InvalidTableError(
            f"C model {label}, tabulated as a signed {bits}-bit multiplier, returns positive products for "
            f"{int(wrong.sum())} of the {int(neg.sum())} operand pairs whose exact product is negative, e.g. "
            f"a={i + lo}, b={j + lo} -> {int(values[i, j])}. The function most likely returns an unsigned type "
            f"(several EvoApprox mul8s_* files are declared uint16_t mul8s_X(uint8_t A, uint8_t B)), so a negative "
            f"product comes back as its unsigned bit pattern. If the bits are right, pass result_bits={2 * bits} to "
            "read the low bits as two's complement; otherwise fix the C signature, or pass signed=False if the "
            "model is an unsigned multiplier.")


def from_c(source, function_name: str, *, kind: str = "int", bits: int = 8, signed: bool = True,
           mantissa_bits: int = 7, rounding: str = "nearest", result_bits: int | None = None,
           compiler: str | None = None, name: str | None = None) -> Multiplier:
    """Tabulate a multiplier written in C into an :class:`amsim.Multiplier`.

    Integer models (``kind="int"``) have the form ``T f(A a, B b)`` with integer types (e.g. EvoApprox
    ``uint16_t mul8u_X(uint8_t A, uint8_t B)`` or ``int16_t mul8s_X(int8_t A, int8_t B)``); they are called with
    every operand value of the format, converted by C's rules to the parameter types (a negative value becomes its
    two's-complement bit pattern for an unsigned parameter). Float models (``kind="float"``) have the form
    ``float f(float a, float b)`` and are called, ApproxTrain ``.inl`` style, at exponent bias: with the
    significands 1.ma and 1.mb themselves, so the returned float is the significand product.

    Arguments:
        source: C code (a string), or the path of a C file. ``stdint.h``, ``stdbool.h``, ``string.h`` and
            ``math.h`` are included before it.
        function_name: the C function to tabulate.
        kind: "int" or "float".
        bits: operand width of an integer model, 2 to 8.
        signed: integer operands are two's complement. A signed model whose products have the wrong sign for
            most negative products is refused with an explanation (see ``result_bits``).
        mantissa_bits: significand fraction bits of a float model, 1 to 11.
        rounding: operand rounding of a float model's multiplier ("nearest" or "truncate").
        result_bits: read the low ``result_bits`` bits of each integer result as two's complement (e.g. 16
            for an EvoApprox ``mul8s_*`` model declared to return ``uint16_t``).
        compiler: the C compiler (default: $AMSIM_CC, $CC, then cc / gcc / clang).
        name: the multiplier's name (default: ``function_name``).

    Returns:
        The :class:`amsim.Multiplier` holding the tabulated products.
    """
    if not isinstance(function_name, str) or not re.fullmatch(r"[A-Za-z_]\w*", function_name):
        raise ValueError(f"function_name={function_name!r} is not a C identifier.")
    if kind not in ("int", "float"):
        raise ValueError(f"kind must be 'int' or 'float', got {kind!r}.")
    if kind == "int":
        _format.check_int_bits(bits)
        n = 1 << bits
        lo = _format.int_range(bits, signed)[0]
        if result_bits is not None and not (isinstance(result_bits, int) and 2 <= result_bits <= 32):
            raise ValueError(f"result_bits={result_bits!r}: expected an int from 2 to 32.")
    else:
        _format.check_mantissa_bits(mantissa_bits)
        _format.check_rounding(rounding)
        if result_bits is not None:
            raise ValueError("result_bits applies to integer models only.")
        n, lo = 1 << mantissa_bits, 0
    text, label = _read_source(source)
    if not re.search(rf"\b{function_name}\s*\(", text):
        raise ValueError(f"the C source {label} does not mention {function_name}(...); check function_name.")
    cc = find_c_compiler(compiler)
    code = _PRELUDE + f'#line 1 "{label}"\n' + text + _wrapper(function_name, kind, n, lo)
    label = f"{function_name!r} ({label})"

    if kind == "float":
        out = _compile_and_run(code, label, cc, np.empty((n, n), dtype=np.float32))
        return Multiplier.from_table(out, kind="float", rounding=rounding, name=name or function_name)

    out = _compile_and_run(code, label, cc, np.empty((n, n), dtype=np.float64))
    frac = ~np.isfinite(out) | (out != np.round(out))
    if frac.any():
        i, j = np.argwhere(frac)[0]
        raise InvalidTableError(f"C model {label} returns non-integers, e.g. a={i + lo}, b={j + lo} -> "
                                f"{out[i, j]!r}; an integer model must return an integer type.")
    values = out.astype(np.int64)
    if result_bits is not None:
        values = _reinterpret(values, result_bits)
    elif signed:
        _check_sign_consistency(values, bits, label)
    return Multiplier.from_table(values, kind="int", signed=signed, name=name or function_name)
