"""Exhaustive evaluation of a multiplier model with Numba, in parallel over the whole operand grid."""

from __future__ import annotations

import warnings
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np

from .. import _fpenv as fpenv
from .._errors import InvalidTableError, ModelCompileError

_HINT = (
    "A multiplier model must be a plain function of two scalars that Numba's nopython mode can compile: "
    "use arithmetic, comparisons, if/else, loops and the math module on ints and floats, and return one number. "
    "Move Python objects (lists of objects, dicts, classes, NumPy calls on scalars that Numba lacks) out of it."
)


def _jit(fn, name):
    fn = getattr(fn, "py_func", fn)  # an @njit function is recompiled with amsim's error model
    try:
        # "python": integer and float division by zero raise (and are reported with the operands) instead of
        # silently giving 0 or Inf
        return numba.njit(cache=False, error_model="python")(fn)
    except Exception as exc:  # numba raises on decoration only for gross misuse
        raise ModelCompileError(f"multiplier {name!r}: Numba rejected the function: {exc}\n{_HINT}") from exc


def _grid_kernel(f):
    """``out[i, j] = f(xa[i], xb[j]) * scale`` for rows lo..hi where ok_a[i] and ok_b[j]. ``pos`` holds the pair
    being evaluated, so the operands of a call that raises are known; it is reset to -1 on completion."""

    @numba.njit(nogil=True, cache=False)
    def kernel(out, xa, xb, ok_a, ok_b, scale, lo, hi, pos):
        for i in range(lo, hi):
            if not ok_a[i]:
                continue
            pos[0] = i
            for j in range(xb.shape[0]):
                if ok_b[j]:
                    pos[1] = j
                    out[i, j] = f(xa[i], xb[j]) * scale
        pos[0] = -1

    return kernel


def _tabulate(fn, name, xa, xb, out, *, scale=1.0, ok_a=None, ok_b=None, labels=("a", "b")):
    """Evaluate ``fn(xa[i], xb[j]) * scale`` into ``out`` on every allowed pair, in parallel over rows.

    Rows are split over threads running a nogil serial kernel: parallel, and without Numba's parfor lowering,
    which some LLVM builds abort on for certain models (a crash no exception handler could report).
    """
    kernel = _grid_kernel(_jit(fn, name))
    n = out.shape[0]
    ok_a = np.ones(n, np.bool_) if ok_a is None else ok_a
    ok_b = np.ones(xb.shape[0], np.bool_) if ok_b is None else ok_b
    workers = max(1, min(numba.config.NUMBA_NUM_THREADS, n // 64))
    bounds = np.r_[0, np.linspace(min(n, 1), n, workers + 1).astype(int)]  # one row first: compile, fail early
    pos = np.full((workers + 1, 2), -1, np.int64)
    try:
        # the model's arithmetic under IEEE's default state, whatever the caller's (the pool's threads inherit it)
        with np.errstate(over="ignore", invalid="ignore"), fpenv.default_fp():
            kernel(out, xa, xb, ok_a, ok_b, scale, 0, bounds[1], pos[0])
            if n > 1:
                with ThreadPoolExecutor(workers) as pool:
                    list(pool.map(lambda w: kernel(out, xa, xb, ok_a, ok_b, scale, bounds[w], bounds[w + 1], pos[w]),
                                  range(1, workers + 1)))
    except numba.core.errors.NumbaError as exc:
        msg = str(exc).strip()
        raise ModelCompileError(f"multiplier {name!r} could not be compiled by Numba:\n{msg}\n\n{_HINT}") from None
    except Exception as exc:  # raised by the model itself (division by zero, an explicit raise, ...)
        i, j = (int(v) for v in pos[pos[:, 0] >= 0][0])
        raise InvalidTableError(f"multiplier {name!r} raised {type(exc).__name__} ({exc}) for {labels[0]}="
                                f"{xa[i].item()!r}, {labels[1]}={xb[j].item()!r}. Every operand pair of the format "
                                "must give a product; guard that case in the model.") from None
    return out


_CHECK_PAIRS = 1 << 16  # integer models are re-evaluated in Python on this many pairs (all of them up to 8 bits)


def _check_integer_arithmetic(fn, name, xa, xb, got, expected_of, labels):
    """Re-evaluate an integer-arithmetic model in plain Python (unbounded ints) and compare with the compiled
    values ``got``: compiled int64 arithmetic wraps silently, Python's does not. Every pair is checked when there
    are at most 2**16, otherwise the extreme 8 operands of each side and a fixed random sample."""
    py = getattr(fn, "py_func", fn)
    n_a, n_b = xa.shape[0], xb.shape[0]
    if n_a * n_b <= _CHECK_PAIRS:
        rows, cols = np.arange(n_a), np.arange(n_b)
    else:
        rng = np.random.default_rng(0)
        pick = lambda n: np.unique(np.r_[0:8, n - 8:n, rng.integers(0, n, 240)])  # noqa: E731
        rows, cols = pick(n_a), pick(n_b)
    va, vb = xa[rows].tolist(), xb[cols].tolist()
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # NumPy scalar overflow inside the model
        try:
            res = [py(a, b) for a in va for b in vb]
        except (ArithmeticError, RuntimeWarning) as exc:
            raise InvalidTableError(
                f"multiplier {name!r}: evaluating the model in plain Python raised {type(exc).__name__} ({exc}) where "
                "the compiled model did not: an integer most likely overflowed int64 inside it (compiled integers "
                "wrap silently). Keep intermediate values within int64.") from None
        except Exception:  # not runnable as plain Python (Numba-only constructs): nothing to compare with
            return
    want = np.array([expected_of(r) for r in res], dtype=got.dtype).reshape(len(va), len(vb))
    sub = got[np.ix_(rows, cols)]
    wrong = ~(np.isnan(want) | (want == sub))
    if wrong.any():
        i, j = np.argwhere(wrong)[0]
        raise InvalidTableError(
            f"multiplier {name!r}: the compiled model gives {sub[i, j].item()!r} for {labels[0]}={va[i]!r}, "
            f"{labels[1]}={vb[j]!r}, where Python's arithmetic gives {res[i * len(vb) + j]!r}: an integer "
            "overflowed int64 inside the model (compiled integers wrap silently). Keep intermediate values within "
            "int64 (|v| < 2**63), e.g. by shifting before multiplying.")


def _as_float(r, scale, dtype):
    """What the table holds for an integer model result r (NaN: not an integer, left to the other checks)."""
    if isinstance(r, (bool, np.bool_)) or not isinstance(r, (int, np.integer)):
        return np.nan
    try:
        return dtype(float(int(r)) * scale)
    except OverflowError:
        return dtype(np.inf)


def build_float_table(fn, m: int, name: str, fields: bool) -> np.ndarray:
    """Evaluate ``fn`` on every pair of m-bit significands; float32 (2**m, 2**m) table.

    ``fields=False``: ``fn(x, y)`` with x, y in [1, 2), returns the approximate product of the significands.
    ``fields=True``: ``fn(ma, mb)`` with the integer fraction fields in 0..2**m-1, returns the integer
    product P of the (m+1)-bit significands; the table holds P * 2**(-2m).
    """
    n = 1 << m
    out = np.full((n, n), np.nan, dtype=np.float32)  # unwritten entries fail validation
    if fields:
        f = np.arange(n, dtype=np.int64)
        scale = 2.0 ** (-2 * m)
        _tabulate(fn, name, f, f, out, scale=scale, labels=("ma", "mb"))
        _check_integer_arithmetic(fn, name, f, f, out, lambda r: _as_float(r, scale, np.float32), ("ma", "mb"))
    else:
        x = 1.0 + np.arange(n, dtype=np.float64) * 2.0**-m
        _tabulate(fn, name, x, x, out, labels=("x", "y"))
    out[out == 0] = 0.0  # a model's -0.0 is magnitude zero: the product's sign comes from the operands
    return out


def build_int_table(fn, bits: int, signed: bool, name: str) -> np.ndarray:
    """Evaluate an integer model ``fn(a, b)`` on every operand pair; int32 (2**bits, 2**bits) table."""
    n = 1 << bits
    lo = -(n >> 1) if signed else 0
    i32_lo, i32_hi = np.iinfo(np.int32).min, np.iinfo(np.int32).max
    v = np.arange(lo, lo + n, dtype=np.int64)
    # evaluated into float64 (exact for |v| < 2**53) so a model returning non-integers is caught, not truncated
    wide = _tabulate(fn, name, v, v, np.full((n, n), np.nan, dtype=np.float64))
    _check_integer_arithmetic(fn, name, v, v, wide, lambda r: _as_float(r, 1.0, np.float64), ("a", "b"))
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

    vals = decode_all(fmt).astype(np.float64)
    fin = np.isfinite(vals)
    out = _tabulate(fn, name, vals, vals, np.full((vals.size, vals.size), np.nan, dtype=np.float32), ok_a=fin,
                    ok_b=fin)
    both = np.multiply.outer(fin, fin)
    bad = both & ~np.isfinite(out)
    if bad.any():
        i, j = np.argwhere(bad)[0]
        raise InvalidTableError(f"multiplier {name!r}: {int(bad.sum())} products of finite operands are not "
                                f"finite, e.g. a={vals[i]!r}, b={vals[j]!r} -> {float(out[i, j])!r}.")
    with np.errstate(invalid="ignore"):
        special = np.multiply.outer(vals, vals).astype(np.float32)  # IEEE rules for NaN/Inf operands
    return np.where(both, out, special).astype(np.float32)
