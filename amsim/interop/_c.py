"""Tabulate a multiplier written in C (EvoApprox ``mul8u_*`` / ``mul8s_*``, ApproxTrain ``.inl`` models, ...).

The C source is compiled with the system compiler into a small temporary program together with a generated
loop over the whole operand grid, so the 65536 (or 4M) calls run in C. The program runs as a child process with a
time limit and writes the table to a file: a model that crashes or never returns is reported, and nothing of it is
loaded into the caller's process.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from .. import _operands
from .._errors import AmsimError, InvalidTableError, ModelCompileError
from .._multiplier import Multiplier

__all__ = ["from_c", "CCompilerError", "find_c_compiler"]

COMPILER_ENV = "AMSIM_CC"
FLAGS = ["-O2", "-fno-strict-aliasing", "-Werror=implicit-function-declaration"]
_PRELUDE = "#include <stdint.h>\n#include <stdbool.h>\n#include <string.h>\n#include <math.h>\n"


class CCompilerError(AmsimError, RuntimeError):
    """No usable C compiler was found."""


class CModelError(AmsimError, RuntimeError):
    """A C model crashed, hung or misbehaved while being tabulated (in a child process: the caller is unaffected)."""


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


def _main(function_name, kind, n, lo):
    """The tabulation program: calls the model on every operand pair and writes the results to argv[1]."""
    if kind == "int":
        ctype, call = "double", f"(double)({function_name}(({lo}L) + i, ({lo}L) + j))"
    else:
        ctype = "float"
        call = f"(float)({function_name}(1.0f + (float)i / {float(n)!r}f, 1.0f + (float)j / {float(n)!r}f))"
    return (
        "\n#undef main\n#include <stdio.h>\n#include <stdlib.h>\n"
        "/* amsim: exhaustive tabulation, run as a process of its own so that a crash or a hang of the model cannot\n"
        "   take the caller with it */\n"
        "int main(int argc, char **argv) {\n"
        f"    {ctype} *out = malloc(sizeof({ctype}) * {n}L * {n}L);\n"
        "    if (argc != 2 || !out) return 3;\n"
        f"    for (long i = 0; i < {n}L; ++i)\n"
        f"        for (long j = 0; j < {n}L; ++j)\n"
        f"            out[i * {n}L + j] = {call};\n"
        '    FILE *f = fopen(argv[1], "wb");\n'
        f"    if (!f || fwrite(out, sizeof({ctype}), {n}L * {n}L, f) != (size_t)({n}L * {n}L) || fclose(f)) return 4;\n"
        "    return 0;\n"
        "}\n")


def _signal_name(num) -> str:
    import signal

    try:
        return signal.Signals(num).name
    except ValueError:
        return f"signal {num}"


def _compile_and_run(code, label, cc, out, timeout):
    with tempfile.TemporaryDirectory(prefix="amsim_c_") as tmp:
        src = Path(tmp) / "model.c"
        exe = Path(tmp) / "tabulate"
        res = Path(tmp) / "table.bin"
        src.write_text(code)
        cmd = [cc, *FLAGS, "-o", str(exe), str(src), "-lm"]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
        except OSError as exc:
            raise CCompilerError(f"could not run the C compiler {cc!r}: {exc}. Point compiler= or "
                                 f"${COMPILER_ENV} at a working compiler.") from None
        except subprocess.TimeoutExpired:
            raise ModelCompileError(f"compiling C model {label} took more than 300 s; is it including a device or a "
                                    "huge generated file?") from None
        if proc.returncode != 0:
            log = (proc.stderr or proc.stdout).strip()
            raise ModelCompileError(f"C model {label} did not compile ({' '.join(cmd[:1] + FLAGS)}):\n{log[-3000:]}")
        try:
            run = subprocess.run([str(exe), str(res)], capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL,
                                 cwd=tmp)
        except subprocess.TimeoutExpired:
            raise CModelError(f"C model {label} did not finish tabulating {out.size} operand pairs within {timeout} "
                              "s (it was stopped; the caller is unaffected). Does it loop forever for some operands? "
                              "Pass timeout= for a model that is just slow.") from None
        if run.returncode < 0:
            raise CModelError(f"C model {label} crashed with {_signal_name(-run.returncode)} while being tabulated (it "
                              "ran in a process of its own, so nothing else was affected). Check it for out-of-bounds "
                              "accesses, division by zero or unbounded recursion on some operand pair.")
        if run.returncode != 0:
            tail = (run.stderr or run.stdout or b"").decode(errors="replace").strip()[-500:]
            raise CModelError(f"C model {label} exited with status {run.returncode} while being tabulated"
                              + (f":\n{tail}" if tail else " (does it call exit()?)."))
        data = res.read_bytes() if res.exists() else b""
        if len(data) != out.nbytes:
            raise CModelError(f"C model {label} wrote {len(data)} bytes of results instead of {out.nbytes}.")
        out[...] = np.frombuffer(data, dtype=out.dtype).reshape(out.shape)
    return out


def _reinterpret(values, result_bits):
    """Low ``result_bits`` bits of each value read as two's complement."""
    v = values.astype(np.int64) & ((1 << result_bits) - 1)
    return np.where(v >= 1 << (result_bits - 1), v - (1 << result_bits), v)


def _check_sign_consistency(values, bits, label):
    lo, hi = _operands.int_range(bits, True)
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
           compiler: str | None = None, name: str | None = None, timeout: float = 60.0) -> Multiplier:
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
        timeout: seconds the tabulation may take. The model runs in a child process: a crash (segfault, abort)
            or a hang becomes a :class:`CModelError` and never affects the caller.

    Returns:
        The :class:`amsim.Multiplier` holding the tabulated products.
    """
    if not isinstance(function_name, str) or not re.fullmatch(r"[A-Za-z_]\w*", function_name):
        raise ValueError(f"function_name={function_name!r} is not a C identifier.")
    if kind not in ("int", "float"):
        raise ValueError(f"kind must be 'int' or 'float', got {kind!r}.")
    if kind == "int":
        _operands.check_int_bits(bits)
        n = 1 << bits
        lo = _operands.int_range(bits, signed)[0]
        if result_bits is not None and not (isinstance(result_bits, int) and 2 <= result_bits <= 32):
            raise ValueError(f"result_bits={result_bits!r}: expected an int from 2 to 32.")
    else:
        _operands.check_mantissa_bits(mantissa_bits)
        _operands.check_rounding(rounding)
        if result_bits is not None:
            raise ValueError("result_bits applies to integer models only.")
        n, lo = 1 << mantissa_bits, 0
    text, label = _read_source(source)
    if not re.search(rf"\b{function_name}\s*\(", text):
        raise ValueError(f"the C source {label} does not mention {function_name}(...); check function_name.")
    if not (isinstance(timeout, (int, float)) and timeout > 0):
        raise ValueError(f"timeout={timeout!r}: expected a positive number of seconds.")
    cc = find_c_compiler(compiler)
    # the file name goes into a #line directive: only plain characters, so it cannot inject code
    line_name = re.sub(r'[^A-Za-z0-9._+-]', "_", label)[:200] or "model.c"
    code = (_PRELUDE + "#define main amsim_user_main\n" + f'#line 1 "{line_name}"\n' + text
            + _main(function_name, kind, n, lo))
    label = f"{function_name!r} ({label!r})"

    if kind == "float":
        out = _compile_and_run(code, label, cc, np.empty((n, n), dtype=np.float32), timeout)
        return Multiplier.from_table(out, kind="float", rounding=rounding, name=name or function_name)

    out = _compile_and_run(code, label, cc, np.empty((n, n), dtype=np.float64), timeout)
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
