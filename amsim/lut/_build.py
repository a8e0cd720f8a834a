"""Exhaustive evaluation of a multiplier model with Numba, in parallel over the whole operand grid."""

from __future__ import annotations

import hashlib
import inspect
from concurrent.futures import ThreadPoolExecutor
import textwrap
import types

import numba
import numpy as np

from .._errors import InvalidTableError, ModelCompileError

_HINT = (
    "A multiplier model must be a plain function of two scalars that Numba's nopython mode can compile: "
    "use arithmetic, comparisons, if/else, loops and the math module on ints and floats, and return one number. "
    "Move Python objects (lists of objects, dicts, classes, NumPy calls on scalars that Numba lacks) out of it."
)


def code_hash(fn, *extra) -> str:
    """A stable hash of a model's code, the constants and plain-number globals it reads, and ``extra``."""
    h = hashlib.sha256()
    fn = getattr(fn, "py_func", fn)
    try:
        h.update(textwrap.dedent(inspect.getsource(fn)).encode())
    except (OSError, TypeError):
        pass
    _hash_code(h, fn.__code__)
    for name in fn.__code__.co_names:
        val = fn.__globals__.get(name)
        if isinstance(val, (int, float, bool, str)):
            h.update(f"{name}={val!r}".encode())
        elif callable(val) and hasattr(getattr(val, "py_func", val), "__code__"):
            inner = getattr(val, "py_func", val)
            if inner is not fn:
                _hash_code(h, inner.__code__)
    if fn.__closure__:
        for cell in fn.__closure__:
            try:
                h.update(repr(cell.cell_contents).encode())
            except ValueError:
                pass
    h.update(repr(extra).encode())
    return h.hexdigest()[:16]


def _hash_code(h, code: types.CodeType) -> None:
    h.update(code.co_code)
    for c in code.co_consts:
        if isinstance(c, types.CodeType):
            _hash_code(h, c)
        else:
            h.update(repr(c).encode())


def _jit(fn, name):
    try:
        return numba.njit(cache=False, error_model="numpy")(fn)  # IEEE 0/0 -> NaN, caught by validation
    except Exception as exc:  # numba raises on decoration only for gross misuse
        raise ModelCompileError(f"multiplier {name!r}: Numba rejected the function: {exc}\n{_HINT}") from exc


def _run(kernel, out, name, fn_jit):
    # rows are split over threads running a nogil serial kernel: parallel, and without Numba's parfor lowering,
    # which some LLVM builds abort on for certain models (a crash no exception handler could report)
    n = out.shape[0]
    try:
        kernel(out, 0, min(n, 1))  # compile (and surface compile errors) on one row first
        workers = max(1, min(numba.config.NUMBA_NUM_THREADS, n // 64))
        if workers == 1:
            kernel(out, 0, n)
        else:
            bounds = np.linspace(0, n, workers + 1).astype(int)
            with ThreadPoolExecutor(workers) as pool:
                list(pool.map(lambda i: kernel(out, bounds[i], bounds[i + 1]), range(workers)))
    except numba.core.errors.NumbaError as exc:
        msg = str(exc).strip()
        raise ModelCompileError(f"multiplier {name!r} could not be compiled by Numba:\n{msg}\n\n{_HINT}") from None
    return out


def build_float_table(fn, m: int, name: str, fields: bool) -> np.ndarray:
    """Evaluate ``fn`` on every pair of m-bit significands; float32 (2**m, 2**m) table.

    ``fields=False``: ``fn(x, y)`` with x, y in [1, 2), returns the approximate product of the significands.
    ``fields=True``: ``fn(ma, mb)`` with the integer fraction fields in 0..2**m-1, returns the integer
    product P of the (m+1)-bit significands; the table holds P * 2**(-2m).
    """
    f = _jit(fn, name)
    n = 1 << m
    step = 2.0**-m
    scale = 2.0 ** (-2 * m)

    if fields:

        @numba.njit(nogil=True, cache=False)
        def kernel(out, lo, hi):
            for ia in range(lo, hi):
                for ib in range(n):
                    out[ia, ib] = np.float32(f(ia, ib) * scale)

    else:

        @numba.njit(nogil=True, cache=False)
        def kernel(out, lo, hi):
            for ia in range(lo, hi):
                x = 1.0 + ia * step
                for ib in range(n):
                    out[ia, ib] = np.float32(f(x, 1.0 + ib * step))

    with np.errstate(over="ignore", invalid="ignore"):
        out = _run(kernel, np.full((n, n), np.nan, dtype=np.float32), name, f)  # unwritten entries fail validation
    out[out == 0] = 0.0  # a model's -0.0 is magnitude zero: the product's sign comes from the operands
    return out


def build_int_table(fn, bits: int, signed: bool, name: str) -> np.ndarray:
    """Evaluate an integer model ``fn(a, b)`` on every operand pair; int32 (2**bits, 2**bits) table."""
    f = _jit(fn, name)
    n = 1 << bits
    lo = -(n >> 1) if signed else 0
    i32_lo, i32_hi = np.iinfo(np.int32).min, np.iinfo(np.int32).max

    @numba.njit(nogil=True, cache=False)
    def kernel(out, row_lo, row_hi):
        for ia in range(row_lo, row_hi):
            for ib in range(n):
                out[ia, ib] = f(ia + lo, ib + lo)

    # evaluated into float64 (exact for |v| < 2**53) so a model returning non-integers is caught, not truncated
    wide = _run(kernel, np.full((n, n), np.nan, dtype=np.float64), name, f)
    frac = ~np.isfinite(wide) | (wide != np.round(wide))
    if frac.any():
        i, j = np.argwhere(frac)[0]
        raise InvalidTableError(
            f"multiplier {name!r}: {int(frac.sum())} products are not integers, e.g. a={i + lo}, b={j + lo} -> "
            f"{wide[i, j]!r}. An integer multiplier must return an int; round explicitly in the model."
        )
    bad = (wide < i32_lo) | (wide > i32_hi)
    if bad.any():
        i, j = np.argwhere(bad)[0]
        raise InvalidTableError(
            f"multiplier {name!r}: {int(bad.sum())} products do not fit int32, e.g. a={i + lo}, b={j + lo} -> "
            f"{wide[i, j]}. Integer products must lie in the int32 range."
        )
    return wide.astype(np.int32)


def build_code_table(fn, fmt, name: str) -> np.ndarray:
    """Evaluate ``fn(a, b)`` on every pair of finite operand values of a format of at most 8 bits.

    Entries for NaN and Inf codes follow IEEE rules (NaN propagates, Inf x 0 = NaN, Inf x finite = +-Inf) and
    are not asked of the model. The table is float32, indexed ``[code_a, code_b]``.
    """
    from .._formats import decode_all

    f = _jit(fn, name)
    vals = decode_all(fmt).astype(np.float64)
    n = vals.size

    @numba.njit(nogil=True, cache=False)
    def kernel(out, lo, hi):
        for i in range(lo, hi):
            for j in range(n):
                if np.isfinite(vals[i]) and np.isfinite(vals[j]):
                    out[i, j] = np.float32(f(vals[i], vals[j]))

    out = _run(kernel, np.full((n, n), np.nan, dtype=np.float32), name, f)
    fin = np.isfinite(vals)
    both = np.multiply.outer(fin, fin)
    bad = both & ~np.isfinite(out)
    if bad.any():
        i, j = np.argwhere(bad)[0]
        raise InvalidTableError(f"multiplier {name!r}: {int(bad.sum())} products of finite operands are not "
                                f"finite, e.g. a={vals[i]!r}, b={vals[j]!r} -> {float(out[i, j])!r}.")
    with np.errstate(invalid="ignore"):
        special = np.multiply.outer(vals, vals).astype(np.float32)  # IEEE rules for NaN/Inf operands
    return np.where(both, out, special).astype(np.float32)
