"""Multiplier objects: decorators, tables, caching, persistence, metrics and the errors users meet."""

import math
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import amsim
from amsim import golden

from .support.bits import assert_bits_equal

F = np.float32


def test_decorator_example_from_readme(rng):
    @amsim.multiplier(mantissa_bits=7)
    def mitchell(x, y):
        s = (x - 1.0) + (y - 1.0)
        return 1.0 + s if s < 1.0 else 2.0 * s

    a = rng.standard_normal((64, 32)).astype(F)
    b = rng.standard_normal((32, 16)).astype(F)
    c = amsim.matmul(a, b, mitchell)
    assert c.shape == (64, 16) and c.dtype == F
    assert_bits_equal(c, golden.matmul(a, b, mitchell))
    # same tables as the built-in (whose result truncation is a no-op for Mitchell)
    np.testing.assert_array_equal(mitchell.table.values, amsim.multipliers.mitchell(7).table.values)
    st_ = mitchell.stats()
    assert st_.mre == pytest.approx(0.0385, abs=5e-4)  # Mitchell's well-known ~3.8 % mean error
    assert st_.max_re == pytest.approx(1 / 9, rel=1e-6)  # worst case 11.1 % at x = y = 1.5
    assert st_.bias < 0  # Mitchell always underestimates
    assert "mitchell" in str(st_)


def test_fields_model_equals_float_model():
    m = 6

    @amsim.multiplier(mantissa_bits=m, fields=True)
    def exact_bits(ma, mb):
        return ((1 << m) + ma) * ((1 << m) + mb)

    np.testing.assert_array_equal(exact_bits.table.values, amsim.multipliers.exact(m).table.values)
    assert exact_bits.stats().ep == 0.0 and exact_bits.stats().mre == 0.0


def test_exact_stats_are_zero():
    s = amsim.multipliers.exact(9).stats()
    assert (s.mre, s.med, s.wce, s.bias, s.ep) == (0, 0, 0, 0, 0)
    assert s.pairs == 2**18


def test_int_stats():
    @amsim.int_multiplier(bits=4, signed=False)
    def drop_lsb(a, b):
        return (a * b) & ~1

    s = drop_lsb.stats()
    v = np.arange(16)
    p = np.multiply.outer(v, v)
    assert s.ep == pytest.approx(np.mean(p & 1))
    assert s.wce == 1.0
    assert s.pairs == 256


def test_table_cached_second_use_costs_nothing():
    def make():
        @amsim.multiplier(mantissa_bits=8, name="cached8")
        def f(x, y):
            return x * y * 1.0

        return f

    m1 = make()
    _ = m1.table
    m2 = make()  # same code: same key, same table object, no compile
    t0 = time.perf_counter()
    t2 = m2.table
    assert time.perf_counter() - t0 < 0.01
    assert t2 is m1.table
    assert m1 == m2 and hash(m1) == hash(m2)


def test_identity_and_hashing():
    a, b = amsim.multipliers.mbm(7), amsim.multipliers.mbm(7)
    assert a == b and hash(a) == hash(b)
    assert a != amsim.multipliers.mbm(6)
    assert a != a.with_rounding("truncate")
    assert a != amsim.multipliers.mitchell(7)
    assert len({a, b, amsim.multipliers.mitchell(7)}) == 2
    with pytest.raises(AttributeError, match="immutable"):
        a._bits = 3


def test_save_load_roundtrip(tmp_path, rng):
    mult = amsim.multipliers.mbm(5).with_rounding("truncate")
    path = mult.save(tmp_path / "mbm5.npz")
    back = amsim.Multiplier.load(path)
    assert back.name == "mbm5" and back.mantissa_bits == 5 and back.rounding == "truncate"
    np.testing.assert_array_equal(back.table.values, mult.table.values)
    a = rng.standard_normal((9, 8)).astype(F)
    assert_bits_equal(amsim.matmul(a, a.T, back), amsim.matmul(a, a.T, mult))
    data = dict(np.load(path, allow_pickle=False))  # readable without pickle
    assert set(data) == {"values", "metadata"}
    # damaged file: digest mismatch
    vals = data["values"].copy()
    vals[0, 0] += 1
    np.savez(tmp_path / "bad.npz", values=vals, metadata=data["metadata"])
    with pytest.raises(amsim.InvalidTableError, match="digest"):
        amsim.Multiplier.load(tmp_path / "bad.npz")


def test_int_save_load(tmp_path):
    mult = amsim.multipliers.exact_int(6, signed=False)
    back = amsim.Multiplier.load(mult.save(tmp_path / "u6.npz"))
    assert back.is_int and not back.signed and back.int_bits == 6
    np.testing.assert_array_equal(back.table.values, mult.table.values)


def test_from_table_float_and_int():
    vals = amsim.multipliers.mitchell(4).table.values.astype(np.float64)
    m = amsim.Multiplier.from_table(vals, name="mit4")
    assert m.mantissa_bits == 4 and m.table.values.dtype == F
    with pytest.raises(amsim.InvalidTableError, match="not exactly representable"):
        amsim.Multiplier.from_table(vals + 1e-12, name="x")
    with pytest.raises(amsim.InvalidTableError, match="power-of-two"):
        amsim.Multiplier.from_table(np.ones((3, 3), F), name="x")
    with pytest.raises(ValueError, match="signed"):
        amsim.Multiplier.from_table(np.ones((16, 16), np.int32), name="x")
    bad = vals.astype(F)
    bad[2, 3] = -1.0
    with pytest.raises(amsim.InvalidTableError, match=r"x=1\+2/2\*\*4.*y=1\+3/2\*\*4"):
        amsim.Multiplier.from_table(bad, name="neg")


def test_model_returning_nan_is_reported_with_operands():
    @amsim.multiplier(mantissa_bits=3)
    def broken(x, y):
        return (x * y) if x < 1.5 else (x - x) * math.inf

    with pytest.raises(amsim.InvalidTableError, match=r"(?s)32 table entries.*x=1\+4/2\*\*3"):
        _ = broken.table


def test_non_compilable_model_shows_numba_message():
    @amsim.multiplier(mantissa_bits=3)
    def uses_dict(x, y):
        d = {"a": object()}
        return x * y + len(d)

    with pytest.raises(amsim.ModelCompileError, match=r"(?s)could not be compiled by Numba.*nopython"):
        _ = uses_dict.table


def test_int_model_must_return_integers():
    @amsim.int_multiplier(bits=3)
    def halves(a, b):
        return a * b / 2

    with pytest.raises(amsim.InvalidTableError, match="not integers"):
        _ = halves.table


@pytest.mark.parametrize("m", [0, 12, -1])
def test_mantissa_bits_out_of_range(m):
    with pytest.raises(ValueError, match="out of range"):
        amsim.multiplier(mantissa_bits=m)
    with pytest.raises(ValueError, match="out of range"):
        amsim.multipliers.exact(m)


def test_bad_rounding_and_int_bits():
    with pytest.raises(ValueError, match="rounding"):
        amsim.multipliers.mbm(7, rounding="stochastic")
    with pytest.raises(ValueError, match="out of range"):
        amsim.int_multiplier(bits=9)


def test_bad_operands(rng):
    mult = amsim.multipliers.mbm(7)
    a = rng.standard_normal((4, 5)).astype(F)
    with pytest.raises(TypeError, match=r"float64.*astype\(np.float32\)"):
        amsim.matmul(a.astype(np.float64), a.T, mult)
    with pytest.raises(TypeError, match="must be an array"):
        amsim.matmul([[1.0]], [[1.0]], mult)
    with pytest.raises(ValueError, match="contraction"):
        amsim.matmul(a, a, mult)
    with pytest.raises(ValueError, match="do not broadcast"):
        amsim.matmul(np.zeros((2, 4, 5), F), np.zeros((3, 5, 4), F), mult)
    with pytest.raises(ValueError, match="broadcast"):
        amsim.multiply(np.zeros(3, F), np.zeros(4, F), mult)
    with pytest.raises(TypeError, match="amsim.Multiplier"):
        amsim.matmul(a, a.T, 3)
    with pytest.raises(ValueError, match="Did you mean 'mbm'"):
        amsim.matmul(a, a.T, "mbmx")
    # a built-in name is the same multiplier as the object
    np.testing.assert_array_equal(amsim.matmul(a, a.T, "mbm"), amsim.matmul(a, a.T, mult))
    with pytest.raises(ValueError, match="out has shape"):
        amsim.matmul(a, a.T, mult, out=np.empty((4, 5), F))
    i8 = amsim.multipliers.exact_int(8)
    with pytest.raises(TypeError, match="integer multiplier"):
        amsim.matmul(a, a.T, i8)
    with pytest.raises(ValueError, match=r"outside the 8-bit signed operand range \[-128, 127\]"):
        amsim.matmul(np.array([[200]]), np.array([[1]]), i8)
    # the check is skipped only where the dtype itself keeps values in range (int8 for 8-bit signed)
    with pytest.raises(ValueError, match=r"\[200, 200\], outside the 8-bit signed"):
        amsim.matmul(np.array([[200]], np.uint8), np.array([[1]], np.uint8), i8)
    with pytest.raises(ValueError, match=r"\[-100, -100\], outside the 4-bit signed"):
        amsim.matmul(np.array([[-100]], np.int8), np.array([[1]], np.int8), amsim.multipliers.exact_int(4))
    assert amsim.matmul(np.array([[-128]], np.int8), np.array([[127]], np.int8), i8)[0, 0] == -128 * 127


def test_int_accumulator_overflow_is_refused():
    i8 = amsim.multipliers.exact_int(8)
    k = 2**31 // 2**14 + 1  # 16384 * 131073 > int32 max
    with pytest.raises(amsim.UnsupportedError, match="int32 accumulator could overflow"):
        amsim.matmul(np.ones((1, k), np.int8), np.ones((k, 1), np.int8), i8)


def test_registry_names():
    assert amsim.multipliers.get("mbm") == amsim.multipliers.mbm(7)
    assert amsim.multipliers.get("mitchell5") == amsim.multipliers.mitchell(5)
    assert amsim.multipliers.get("bf16") == amsim.multipliers.exact(7)
    assert amsim.multipliers.get("uint4") == amsim.multipliers.exact_int(4, signed=False)
    with pytest.raises(ValueError, match="unknown multiplier 'nope'"):
        amsim.multipliers.get("nope")


def test_multiplier_is_callable_and_not_picklable():
    import pickle

    mult = amsim.multipliers.exact(7)
    assert mult(np.array([1.5], F), np.array([2.0], F))[0] == F(3.0)
    with pytest.raises(TypeError, match="save"):
        pickle.dumps(mult)


# ---- property tests: shapes and broadcasting ------------------------------------------------------------
dims = st.integers(0, 5)
batch = st.lists(st.integers(1, 3), min_size=0, max_size=2)


@settings(max_examples=40, deadline=None)
@given(m=dims, k=dims, n=dims, ba=batch, bb=batch, seed=st.integers(0, 2**31))
def test_matmul_shapes_property(m, k, n, ba, bb, seed):
    mult = amsim.multipliers.mitchell(4)
    r = np.random.default_rng(seed)
    # make the batch shapes broadcast-compatible by aligning from the right with ones
    a = r.standard_normal(tuple(ba) + (m, k)).astype(F)
    bb2 = [1 if i < len(ba) and ba[-1 - i] != d else d for i, d in enumerate(reversed(bb))][::-1]
    b = r.standard_normal(tuple(bb2) + (k, n)).astype(F)
    out = amsim.matmul(a, b, mult)
    assert out.shape == np.matmul(a, b).shape
    assert_bits_equal(out, golden.matmul(a, b, mult))


@settings(max_examples=40, deadline=None)
@given(sa=st.lists(st.integers(1, 4), max_size=3), sb=st.lists(st.integers(1, 4), max_size=3),
       seed=st.integers(0, 2**31))
def test_multiply_broadcast_property(sa, sb, seed):
    mult = amsim.multipliers.mbm(3)
    r = np.random.default_rng(seed)
    a = r.standard_normal(sa).astype(F)
    b = r.standard_normal(sb).astype(F)
    try:
        shape = np.broadcast_shapes(a.shape, b.shape)
    except ValueError:
        with pytest.raises(ValueError):
            amsim.multiply(a, b, mult)
        return
    out = amsim.multiply(a, b, mult)
    assert out.shape == shape
    assert_bits_equal(out, golden.multiply(a, b, mult))
