"""``out=`` that overlaps an input: the result is the one without aliasing, bit for bit, on every backend."""

from __future__ import annotations

import numpy as np
import pytest

import amsim
from amsim import golden

from .support.bits import assert_bits_equal, mixed_matrix


def _host(x):
    return x if isinstance(x, np.ndarray) else x.get()


MULTS = {"mbm7": lambda: amsim.multipliers.mbm(7), "int8": lambda: amsim.multipliers.exact_int(8),
         "e4m3 full": lambda: amsim.multipliers.exact(3).with_format(amsim.formats.e4m3(subnormals="keep"))}


def _operands(rng, mult, shape, special_fraction=0.15):
    if mult.is_int:
        return rng.integers(-128, 128, size=shape).astype(np.int8).astype(np.int32)
    x = mixed_matrix(rng, shape, special_fraction)
    x.flat[0] = np.inf  # an Inf whose row, read after being overwritten, used to change the result
    return x


@pytest.mark.parametrize("name", list(MULTS))
def test_matmul_out_is_an_input(backend, name, rng):
    mult = MULTS[name]()
    # 2 % specials: most rows and columns stay on the kernels' path (at 15 % the exact fix-up recomputed all)
    a, b = _operands(rng, mult, (24, 24), 0.02), _operands(rng, mult, (24, 24), 0.02)
    for target in ("a", "b"):
        want = golden.matmul(a, b, mult)
        da, db = backend.asarray(a.copy()), backend.asarray(b.copy())  # NumPy: asarray would hand out a itself
        if want.dtype != a.dtype:
            continue  # int inputs, int32 results: out=a is a dtype error, tested elsewhere
        out = da if target == "a" else db
        res = amsim.matmul(da, db, mult, out=out)
        assert res is out
        assert_bits_equal(_host(res), want)


def test_matmul_out_overlaps_a_batch_of_the_input(backend, rng):
    mult = amsim.multipliers.mitchell(5)
    buf = mixed_matrix(rng, (3, 16, 16), 0.02)  # (most rows on the kernels' path, one on the exact path)
    buf[1, 0, 0] = np.inf
    a = buf.copy()
    d = backend.asarray(buf)
    want = golden.matmul(a[:2], a[2], mult)
    out = d[1:]  # batches 1..2 of the same memory that batch 0..1 of the input come from
    amsim.matmul(d[:2], d[2], mult, out=out)
    assert_bits_equal(_host(out), want)


@pytest.mark.parametrize("name", list(MULTS))
@pytest.mark.parametrize("shift", [1, -1, 0])
def test_multiply_out_shifted_over_an_input(backend, name, shift, rng):
    mult = MULTS[name]()
    n = 257
    dtype = np.int32 if mult.is_int else np.float32
    buf = _operands(rng, mult, (n + 1,)).astype(dtype)
    b = _operands(rng, mult, (n,)).astype(dtype)
    lo = 1 if shift >= 0 else 0
    a_view = slice(lo, lo + n)
    out_view = slice(lo - shift, lo - shift + n)
    want = golden.multiply(buf[a_view].copy(), b, mult)
    d = backend.asarray(buf)
    res = amsim.multiply(d[a_view], backend.asarray(b), mult, out=d[out_view])
    assert_bits_equal(_host(res), want)


def test_disjoint_out_is_written_in_place(backend, rng):
    mult = amsim.multipliers.mbm(7)
    a, b = mixed_matrix(rng, (8, 5)), mixed_matrix(rng, (5, 6))
    out = backend.full((8, 6), np.nan, dtype=np.float32)
    assert amsim.matmul(backend.asarray(a), backend.asarray(b), mult, out=out) is out
    assert_bits_equal(_host(out), golden.matmul(a, b, mult))
