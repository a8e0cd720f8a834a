"""The golden model against hand-worked cases, and the built-in tables against their published definitions."""

import numpy as np
import pytest

import amsim
from amsim import golden

from .support.bits import assert_bits_equal, bits

F = np.float32


def f32(u):
    return np.array(u, dtype=np.uint32).view(np.float32)


# ---- step 1: operand rounding --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "x, m, rounding, expected",
    [
        (1.0 + 2**-8, 7, "nearest", 1.0),  # tie, even stays
        (1.0 + 3 * 2**-8, 7, "nearest", 1.0 + 2**-6),  # tie between fields 1 and 2: to even (2)
        (1.0 + 3 * 2**-8, 7, "truncate", 1.0 + 2**-7),
        (1.0 + 2**-8 + 2**-20, 7, "nearest", 1.0 + 2**-7),  # above the tie
        (2.0 - 2**-23, 7, "nearest", 2.0),  # carry into the exponent
        (2.0 - 2**-23, 7, "truncate", 2.0 - 2**-7),
        (-1.75, 1, "nearest", -2.0),  # 1.11b -> tie to even 10.0b
        (-1.25, 1, "nearest", -1.0),
        (1.9, 11, "nearest", 1.89990234375),
    ],
)
def test_quantize_cases(x, m, rounding, expected):
    assert golden.quantize(np.array([x], F), m, rounding)[0] == F(expected)


def test_quantize_carry_past_max_gives_inf():
    big = f32([0x7F7FFFFF, 0xFF7FFFFF])
    assert_bits_equal(golden.quantize(big, 7, "nearest"), f32([0x7F800000, 0xFF800000]))
    assert_bits_equal(golden.quantize(big, 7, "truncate"), f32([0x7F7F0000, 0xFF7F0000]))


def test_quantize_nan_and_inf():
    out = golden.quantize(f32([0x7F800001, 0xFFC00001, 0x7F800000]), 3, "truncate")
    assert np.isnan(out[0]) and np.isnan(out[1])  # a NaN with low payload must not truncate into Inf
    assert bits(out)[0] == 0x7FC00000
    assert out[2] == np.inf


def test_quantize_subnormal_rounds_up_to_min_normal():
    out = golden.quantize(f32([0x007FFFFF]), 7, "nearest")
    assert bits(out)[0] == 0x00800000


# ---- steps 2-3: products ------------------------------------------------------------------------------------
def test_exact_products_match_float32_on_representable_operands(rng):
    mult = amsim.multipliers.exact(7)
    a = golden.quantize(rng.standard_normal(1000).astype(F), 7)
    b = golden.quantize(rng.standard_normal(1000).astype(F), 7)
    assert_bits_equal(golden.multiply(a, b, mult), a * b)


def test_mitchell_hand_cases():
    mult = amsim.multipliers.mitchell(7)
    a = np.array([1.5, 1.5, -3.0, 1.25, 6.0], F)
    b = np.array([1.5, 1.25, 1.5, 1.25, -0.75], F)
    # 1.5*1.5: fx+fy = 1 -> 2*1 = 2; 1.5*1.25 -> 1.75; -3*1.5 = -(1.5*2)(1.5) -> -(2*2) = -4
    # 1.25*1.25 -> 1.5; 6*-0.75 = (1.5*4)(1.5*-0.5) -> -2*2 = -4
    assert_bits_equal(golden.multiply(a, b, mult), np.array([2.0, 1.75, -4.0, 1.5, -4.0], F))


def test_special_cases_hand_worked():
    mult = amsim.multipliers.mbm(7)
    inf, nan = np.inf, np.nan
    sub = f32(0x00000100)  # subnormal: flushed
    a = np.array([0.0, -0.0, inf, inf, -inf, nan, sub, -sub, 1.0, 2.0**100, 2.0**-100, -(2.0**127)], F)
    b = np.array([5.0, 5.0, 0.0, sub, 2.0, 1.0, 3.0, 3.0, nan, 2.0**100, 2.0**-30, 4.0], F)
    out = golden.multiply(a, b, mult)
    expected_bits = [0x00000000, 0x80000000, None, None, 0xFF800000, None, 0x00000000, 0x80000000, None,
                     0x7F800000, 0x00000000, 0xFF800000]
    for o, e in zip(out, expected_bits, strict=True):
        if e is None:
            assert np.isnan(o)
        else:
            assert bits(o) == e, (o, hex(e))


def test_overflow_boundary_depends_on_the_table():
    # 1.5 * 2**63 squared: exact 2.25 * 2**126 is finite; Mitchell gives 2 * 2**126 = 2**127, finite;
    # 1.5 * 2**64 squared: exact 2.25 * 2**128 -> Inf; Mitchell 2**129 -> Inf
    ex, mi = amsim.multipliers.exact(7), amsim.multipliers.mitchell(7)
    a = np.array([1.5 * 2.0**63, 1.5 * 2.0**64, 1.0 * 2.0**64], F)
    assert golden.multiply(a, a, ex)[0] == F(2.25 * 2.0**126)
    assert golden.multiply(a, a, mi)[0] == F(2.0**127)
    assert np.isinf(golden.multiply(a, a, ex)[1]) and np.isinf(golden.multiply(a, a, mi)[1])
    assert np.isinf(golden.multiply(a, a, ex)[2])  # exactly 2**128


def test_underflow_boundary_flushes():
    ex = amsim.multipliers.exact(7)
    a = np.array([2.0**-63, 2.0**-63, -(2.0**-64)], F)
    b = np.array([2.0**-63, 2.0**-64, 2.0**-63], F)
    out = golden.multiply(a, b, ex)
    assert out[0] == F(2.0**-126)  # smallest normal survives
    assert bits(out[1]) == 0 and bits(out[2]) == 0x80000000  # 2**-127 would be subnormal: signed zero


def test_zero_table_entry_gives_signed_zero():
    vals = amsim.multipliers.exact(2).table.values.copy()
    vals[1, 2] = 0.0
    mult = amsim.Multiplier.from_table(vals, name="holey")
    out = golden.multiply(np.array([1.25, -1.25], F), np.array([1.5, 1.5], F), mult)
    assert_bits_equal(out, f32([0x00000000, 0x80000000]))


def test_matmul_sums_in_order_with_float32_rounding():
    ex = amsim.multipliers.exact(7)
    # 1 + 2**-24 + 2**-24 in order rounds each time back to 1; a pairwise sum would give 1 + 2**-23
    a = np.array([[1.0, 2.0**-24, 2.0**-24]], F)
    b = np.ones((3, 1), F)
    assert golden.matmul(a, b, ex)[0, 0] == F(1.0)
    # the sum starts from +0.0: (-0) + (-0) products give +0 + -0 = +0
    z = golden.matmul(np.array([[-0.0, -0.0]], F), np.array([[1.0], [1.0]], F), ex)
    assert bits(z)[0, 0] == 0


def test_int_matmul_exact():
    mult = amsim.multipliers.exact_int(8)
    rng = np.random.default_rng(1)
    a = rng.integers(-128, 128, (5, 7))
    b = rng.integers(-128, 128, (7, 3))
    np.testing.assert_array_equal(golden.matmul(a, b, mult), (a @ b).astype(np.int32))


# ---- built-in tables against their published definitions (independent fixed-point formulations) ----------
def _grid(m):
    n = 1 << m
    i = np.arange(n, dtype=np.int64)
    return np.meshgrid(i, i, indexing="ij")


def _trunc_fixed(num, frac_bits, m):
    """Value num * 2**-frac_bits truncated to m fraction bits after normalisation, as float64."""
    num = num.astype(np.int64)
    e = np.floor(np.log2(num)).astype(np.int64)  # exact for these small integers
    keep = e - m  # drop bits below the m-th fraction bit
    t = np.where(keep > 0, (num >> np.maximum(keep, 0)) << np.maximum(keep, 0), num)
    return t.astype(np.float64) * 2.0**-frac_bits


@pytest.mark.parametrize("m", [1, 3, 5, 7, 9, 11])
def test_exact_table(m):
    ia, ib = _grid(m)
    expected = ((ia + (1 << m)) * (ib + (1 << m))).astype(np.float64) * 2.0 ** (-2 * m)
    np.testing.assert_array_equal(amsim.multipliers.exact(m).table.values, expected.astype(F))


@pytest.mark.parametrize("m", [1, 4, 7, 10])
def test_exact_truncated_table(m):
    ia, ib = _grid(m)
    prod = (ia + (1 << m)) * (ib + (1 << m))  # 2m fraction bits
    np.testing.assert_array_equal(amsim.multipliers.exact_truncated(m).table.values, _trunc_fixed(prod, 2 * m, m))


@pytest.mark.parametrize("m", [1, 4, 7, 11])
def test_mitchell_table(m):
    ia, ib = _grid(m)
    s = ia + ib  # fraction sum, m fraction bits
    one = 1 << m
    num = np.where(s < one, one + s, 2 * s)
    np.testing.assert_array_equal(amsim.multipliers.mitchell(m).table.values, _trunc_fixed(num, m, m))


@pytest.mark.parametrize("m", [1, 3, 5, 7, 10])
def test_mbm_table(m):
    # Saadat et al. 2018 in ApproxTrain's fixed-point form, 23 fraction bits
    ia, ib = _grid(m)
    sh = 23 - m
    one = 1 << 23
    set_bit = 1 << (sh - 1)
    corr = (1 << 19) + (1 << 17)  # 2**-4 + 2**-6
    s = ((ia << sh) | set_bit) + ((ib << sh) | set_bit)
    carry = s >= one
    s_corr = (s & (one - 1)) + np.where(carry, corr >> 1, corr)
    s_corr = np.where(carry & (s_corr >= one), s, s_corr)
    whole = (one + s_corr) << carry.astype(np.int64)  # hidden bit appended, shifted on carry
    # one normalisation step that keeps only 23 fraction bits: the overflow corner (s_corr = s) ends up as 2s
    norm = whole >= 2 * one
    sig = np.where(norm, (one + ((whole >> 1) & (one - 1))) << 1, whole)  # 23 fraction bits, value in [1, 4)
    np.testing.assert_array_equal(amsim.multipliers.mbm(m).table.values, _trunc_fixed(sig, 23, m))


def test_mbm_first_entry_by_hand():
    # x = y = 1: s = 2 * 2**-8, 1 + s + 2**-4 + 2**-6 = 1.0859375, exactly 7 fraction bits
    assert amsim.multipliers.mbm(7).table.values[0, 0] == F(1.0859375)


@pytest.mark.parametrize("signed", [True, False])
def test_exact_int_table(signed):
    mult = amsim.multipliers.exact_int(8, signed=signed)
    lo = -128 if signed else 0
    v = np.arange(256) + lo
    np.testing.assert_array_equal(mult.table.values, np.multiply.outer(v, v).astype(np.int32))
