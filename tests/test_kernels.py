"""Every CPU kernel path against the golden model, bit for bit (random, special values, shapes)."""

import numpy as np
import pytest

import amsim
from amsim import golden
from amsim.kernels import cpu

from .conftest import assert_bits_equal, mixed_matrix, special_values

F = np.float32


def _mults():
    return {
        "mbm7": amsim.multipliers.mbm(7),
        "mitchell3": amsim.multipliers.mitchell(3),
        "exact1": amsim.multipliers.exact(1),
        "exact10": amsim.multipliers.exact(10),
        "mitchell11": amsim.multipliers.mitchell(11),
    }


MULTS = _mults()


def _weird_table():
    # values spanning many binades and zeros: exercises the tame-range computation and the zero entries
    rng = np.random.default_rng(7)
    v = (2.0 ** rng.integers(-20, 20, (16, 16)) * rng.uniform(1, 2, (16, 16))).astype(F)
    v[rng.random((16, 16)) < 0.1] = 0.0
    return amsim.Multiplier.from_table(v, name="weird4")


WEIRD = _weird_table()


@pytest.mark.parametrize("rounding", ["nearest", "truncate"])
@pytest.mark.parametrize("name", list(MULTS) + ["weird4"])
def test_multiply_special_value_grid(name, rounding):
    mult = (WEIRD if name == "weird4" else MULTS[name]).with_rounding(rounding)
    sv = special_values()
    a, b = np.meshgrid(sv, sv, indexing="ij")
    assert_bits_equal(amsim.multiply(a, b, mult), golden.multiply(a, b, mult))


@pytest.mark.parametrize("name", list(MULTS))
def test_multiply_random_wide_exponents(name, rng):
    mult = MULTS[name]
    # exponents over the whole fp32 range, so over/underflow boundaries are crossed often
    with np.errstate(over="ignore"):  # some land past the fp32 range on purpose: they become Inf
        a = np.ldexp(rng.uniform(1, 2, 20000), rng.integers(-130, 129, 20000)).astype(F)
        b = np.ldexp(rng.uniform(1, 2, 20000), rng.integers(-130, 129, 20000)).astype(F)
    a *= rng.choice([-1, 1], 20000).astype(F)
    assert_bits_equal(amsim.multiply(a, b, mult), golden.multiply(a, b, mult))


def test_multiply_broadcasting_and_out(rng):
    mult = MULTS["mbm7"]
    a = rng.standard_normal((4, 1, 5)).astype(F)
    b = rng.standard_normal((3, 1)).astype(F)
    out = np.full((4, 3, 5), np.nan, F)  # poisoned
    res = amsim.multiply(a, b, mult, out=out)
    assert res is out
    assert_bits_equal(out, golden.multiply(a, b, mult))


# shapes: (batch_a, batch_b, M, K, N); the big ones take the row-expansion path for m <= 7
SHAPES = [
    ((), (), 1, 1, 1),
    ((), (), 3, 17, 5),
    ((), (), 33, 7, 29),
    ((2,), (2,), 8, 13, 6),
    ((3, 1), (4,), 5, 9, 4),
    ((), (), 300, 21, 9),  # expansion against B (M >= N)
    ((), (), 7, 19, 290),  # expansion against A (M < N)
    ((2,), (), 260, 6, 17),  # batched expansion, K not a multiple of the unroll
]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("name", ["mbm7", "mitchell3", "exact1"])
def test_matmul_mixed_specials(shape, name, rng):
    ba, bb, m_, k_, n_ = shape
    mult = MULTS[name]
    a = mixed_matrix(rng, ba + (m_, k_), 0.1)
    b = mixed_matrix(rng, bb + (k_, n_), 0.1)
    assert_bits_equal(amsim.matmul(a, b, mult), golden.matmul(a, b, mult))


@pytest.mark.parametrize("rounding", ["nearest", "truncate"])
@pytest.mark.parametrize("name", list(MULTS) + ["weird4"])
def test_matmul_random_both_paths(name, rounding, rng):
    mult = (WEIRD if name == "weird4" else MULTS[name]).with_rounding(rounding)
    n_l = 1 << mult.mantissa_bits
    big = max(2 * n_l, 8)
    if big > 600:
        big = 8  # m >= 9: golden cost; the expansion path is covered by the smaller widths
    for m_, k_, n_ in [(big, 23, 5), (6, 11, big), (9, 31, 7)]:
        a = rng.standard_normal((m_, k_)).astype(F) * F(3.0)
        b = rng.standard_normal((k_, n_)).astype(F)
        expected = golden.matmul(a, b, mult)
        assert_bits_equal(amsim.matmul(a, b, mult), expected)


def test_matmul_expansion_at_range_extremes(rng):
    # operands near 2**+-63 and 2**+-126: the power-of-two fast path must hand these to the exact path
    mult = MULTS["mbm7"]
    m_, k_, n_ = 300, 12, 10
    a = np.ldexp(rng.uniform(1, 2, (m_, k_)), rng.integers(-126, 128, (m_, k_))).astype(F)
    b = np.ldexp(rng.uniform(1, 2, (k_, n_)), rng.integers(-126, 128, (k_, n_))).astype(F)
    a[::7] = np.ldexp(rng.uniform(1, 2, (a[::7].shape)), rng.integers(-4, 4, a[::7].shape)).astype(F)
    assert cpu.use_expansion(m_, n_, k_, 128)
    assert_bits_equal(amsim.matmul(a, b, mult), golden.matmul(a, b, mult))


def test_matmul_weird_table_everything_special(rng):
    # a table spanning 2**-20..2**20 narrows the tame exponent range; results must still be exact
    a = mixed_matrix(rng, (40, 9), 0.2)
    b = mixed_matrix(rng, (9, 40), 0.2)
    assert_bits_equal(amsim.matmul(a, b, WEIRD), golden.matmul(a, b, WEIRD))


def test_matmul_1d_promotion(rng):
    mult = MULTS["mbm7"]
    a = rng.standard_normal(7).astype(F)
    b = rng.standard_normal((3, 7, 4)).astype(F)
    v = rng.standard_normal(4).astype(F)
    assert_bits_equal(amsim.matmul(a, b, mult), golden.matmul(a, b, mult))
    assert amsim.matmul(a, b, mult).shape == np.matmul(a, b).shape
    assert_bits_equal(amsim.matmul(b, v, mult), golden.matmul(b, v, mult))
    assert amsim.matmul(a, a, mult).shape == ()


@pytest.mark.parametrize("kind", ["float", "int", "full_table"])
def test_matmul_batched_rows_times_one_matrix(kind, rng):
    """x (batch..., M, K) @ W (K, N): run as one GEMM over the batch's rows (no copies of W), same bits."""
    from amsim import formats

    shape_a, shape_w = (3, 2, 70, 23), (23, 40)
    if kind == "int":
        mult = amsim.multipliers.exact_int(8, signed=True)
        a, w = rng.integers(-128, 128, shape_a).astype(np.int8), rng.integers(-128, 128, shape_w).astype(np.int8)
    else:
        a, w = mixed_matrix(rng, shape_a, 0.05), mixed_matrix(rng, shape_w, 0.05)
        mult = MULTS["mbm7"]
        if kind == "full_table":
            @amsim.multiplier(operand_format=formats.e4m3(subnormals="keep"), full_table=True)
            def coarse(x, y):
                return float(int(x * y * 4.0)) / 4.0

            mult = coarse
    out = np.full(shape_a[:-1] + shape_w[-1:], -1, np.int32 if kind == "int" else F)  # poisoned
    amsim.matmul(a, w, mult, out=out)
    want = golden.matmul(a, w, mult)
    if kind == "int":
        np.testing.assert_array_equal(out, want)
    else:
        assert_bits_equal(out, want)


@pytest.mark.parametrize("shape", [(0, 4, 3), (3, 0, 4), (3, 4, 0), (0, 0, 0), (1, 1, 1)])
def test_matmul_degenerate(shape, rng):
    mult = MULTS["mbm7"]
    m_, k_, n_ = shape
    a = rng.standard_normal((m_, k_)).astype(F)
    b = rng.standard_normal((k_, n_)).astype(F)
    out = np.full((m_, n_), np.nan, F)
    amsim.matmul(a, b, mult, out=out)
    assert_bits_equal(out, golden.matmul(a, b, mult))
    if k_ == 0:
        assert (out.view(np.uint32) == 0).all()  # +0.0, the empty sum


def test_matmul_out_poisoned(rng):
    mult = MULTS["mitchell3"]
    for m_, k_, n_ in [(300, 10, 20), (5, 10, 6)]:
        a = rng.standard_normal((m_, k_)).astype(F)
        b = rng.standard_normal((k_, n_)).astype(F)
        out = np.full((m_, n_), np.nan, F)
        amsim.matmul(a, b, mult, out=out)
        assert_bits_equal(out, golden.matmul(a, b, mult))


@pytest.mark.parametrize("signed", [True, False])
def test_int_paths(signed, rng):
    rng2 = np.random.default_rng(3)
    table = rng2.integers(-30000, 30000, (256, 256)).astype(np.int32)
    mults = [amsim.multipliers.exact_int(8, signed=signed),
             amsim.Multiplier.from_table(table, name="rand8", signed=signed)]
    lo, hi = (-128, 127) if signed else (0, 255)
    for mult in mults:
        for m_, k_, n_ in [(600, 9, 7), (5, 13, 600), (4, 6, 3), (1, 1, 1)]:
            a = rng.integers(lo, hi + 1, (m_, k_)).astype(np.int8 if signed else np.uint8)
            b = rng.integers(lo, hi + 1, (k_, n_)).astype(np.int16)
            out = np.full((m_, n_), -12345, np.int32)
            amsim.matmul(a, b, mult, out=out)
            np.testing.assert_array_equal(out, golden.matmul(a, b, mult))
        x = rng.integers(lo, hi + 1, (3, 50))
        y = rng.integers(lo, hi + 1, (50,))
        np.testing.assert_array_equal(amsim.multiply(x, y, mult), golden.multiply(x, y, mult))


def test_int_small_width():
    mult = amsim.int_multiplier(lambda a, b: a * b + (a & 1), bits=4, signed=True, name="odd4")
    a = np.arange(-8, 8).reshape(4, 4)
    np.testing.assert_array_equal(amsim.matmul(a, a.T, mult), golden.matmul(a, a.T, mult))
    assert golden.multiply(np.array([3]), np.array([2]), mult)[0] == 7


def test_negative_zero_table_entry_is_a_zero_magnitude(rng):
    vals = amsim.multipliers.exact(3).table.values.copy()
    vals[2, 5] = -0.0
    mult = amsim.Multiplier.from_table(vals, name="negzero")
    a = np.array([1.25, -1.25, 1.25], F)
    b = np.array([1.625, 1.625, -1.625], F)
    out = amsim.multiply(a, b, mult)
    assert_bits_equal(out, np.array([0x00000000, 0x80000000, 0x80000000], np.uint32).view(F))
    assert_bits_equal(out, golden.multiply(a, b, mult))


@pytest.mark.parametrize("shape", [(40, 64, 300), (300, 24, 9), (9, 17, 700), (1100, 20, 30)], ids=str)
def test_matmul_kernel_layout_cases(shape, rng):
    """Transposed sweeps (N > M, K a multiple of 8, M not), narrow sides, row-block splits."""
    m_, k_, n_ = shape
    mult = MULTS["mbm7"]
    a = mixed_matrix(rng, (m_, k_), 0.02)
    b = mixed_matrix(rng, (k_, n_), 0.02)
    assert_bits_equal(amsim.matmul(a, b, mult), golden.matmul(a, b, mult))


def test_matmul_data_dependent_exponent_windows(rng):
    mult = MULTS["mitchell3"]
    a = (rng.standard_normal((300, 16)) * 2.0**-90).astype(F)
    b = (rng.standard_normal((16, 20)) * 2.0**60).astype(F)
    assert_bits_equal(amsim.matmul(a, b, mult), golden.matmul(a, b, mult))
    assert_bits_equal(amsim.matmul(b.T.copy(), a.T.copy(), mult), golden.matmul(b.T.copy(), a.T.copy(), mult))
