"""``amsim.multiply`` and ``amsim.matmul`` on every backend, bit for bit against the golden model: special values,
wide exponents, shapes, broadcasting, integer and full-operand tables, poisoned outputs.

Each case is written once and runs on NumPy (the Numba kernels) and, where CuPy sees a device, on CuPy (the CUDA
kernels): a real GPU in scripts/gpu_check.sh, the emulated GPU in tests/test_gpu_emulated.py. Kernel-specific
paths (CPU expansion layouts, GPU kernel choice and tiles) are tested in test_kernels.py and test_gpu.py.
"""

import numpy as np
import pytest

import amsim
from amsim import formats, golden

from .support.bits import assert_bits_equal, mixed_matrix, special_values, to_host

F = np.float32

MULTS = {
    "mbm7": amsim.multipliers.mbm(7),
    "mitchell3": amsim.multipliers.mitchell(3),
    "exact1": amsim.multipliers.exact(1),
    "exact10": amsim.multipliers.exact(10),
    "mitchell11": amsim.multipliers.mitchell(11),
}


def _weird_table():
    # values spanning many binades and zeros: exercises the exponent windows and the zero entries
    rng = np.random.default_rng(7)
    v = (2.0 ** rng.integers(-20, 20, (16, 16)) * rng.uniform(1, 2, (16, 16))).astype(F)
    v[rng.random((16, 16)) < 0.1] = 0.0
    return amsim.Multiplier.from_table(v, name="weird4")


WEIRD = _weird_table()


def _mult(name, rounding="nearest"):
    return (WEIRD if name == "weird4" else MULTS[name]).with_rounding(rounding)


# ---- elementwise ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("rounding", ["nearest", "truncate"])
@pytest.mark.parametrize("name", list(MULTS) + ["weird4"])
def test_multiply_special_value_grid(backend, name, rounding):
    mult = _mult(name, rounding)
    sv = special_values()
    a, b = np.meshgrid(sv, sv, indexing="ij")
    out = backend.full(a.shape, np.nan, F)  # poisoned
    amsim.multiply(backend.asarray(a), backend.asarray(b), mult, out=out)
    assert_bits_equal(to_host(out), golden.multiply(a, b, mult))


@pytest.mark.parametrize("name", list(MULTS))
def test_multiply_random_wide_exponents(backend, name, rng):
    mult = MULTS[name]
    # exponents over the whole fp32 range, so over/underflow boundaries are crossed often
    with np.errstate(over="ignore"):  # some land past the fp32 range on purpose: they become Inf
        a = np.ldexp(rng.uniform(1, 2, 20000), rng.integers(-130, 129, 20000)).astype(F)
        b = np.ldexp(rng.uniform(1, 2, 20000), rng.integers(-130, 129, 20000)).astype(F)
    a *= rng.choice([-1, 1], 20000).astype(F)
    got = amsim.multiply(backend.asarray(a), backend.asarray(b), mult)
    assert_bits_equal(to_host(got), golden.multiply(a, b, mult))


def test_multiply_broadcasting_and_out(backend, rng):
    mult = MULTS["mbm7"]
    a = rng.standard_normal((4, 1, 5)).astype(F)
    b = rng.standard_normal((3, 1)).astype(F)
    out = backend.full((4, 3, 5), np.nan, F)  # poisoned
    res = amsim.multiply(backend.asarray(a), backend.asarray(b), mult, out=out)
    assert res is out
    assert_bits_equal(to_host(out), golden.multiply(a, b, mult))


def test_multiply_int_broadcast(backend, rng):
    mult = amsim.multipliers.exact_int(8, signed=True)
    a = rng.integers(-128, 128, (30, 1))
    b = rng.integers(-128, 128, (1, 40))
    got = amsim.multiply(backend.asarray(a.astype(np.int8)), backend.asarray(b.astype(np.int8)), mult)
    np.testing.assert_array_equal(to_host(got), golden.multiply(a, b, mult))


# ---- float GEMM -------------------------------------------------------------------------------------------
# shapes: (batch_a, batch_b, M, K, N); on the CPU the big ones take the row-expansion path for m <= 7
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
def test_matmul_mixed_specials(backend, shape, name, rng):
    ba, bb, m_, k_, n_ = shape
    mult = MULTS[name]
    a = mixed_matrix(rng, ba + (m_, k_), 0.03)  # (at 10 %, the fix-up recomputed up to all outputs of a shape)
    b = mixed_matrix(rng, bb + (k_, n_), 0.03)
    assert_bits_equal(to_host(amsim.matmul(backend.asarray(a), backend.asarray(b), mult)), golden.matmul(a, b, mult))


@pytest.mark.parametrize("rounding", ["nearest", "truncate"])
@pytest.mark.parametrize("name", list(MULTS) + ["weird4"])
def test_matmul_random_both_paths(backend, name, rounding, rng):
    mult = _mult(name, rounding)
    n_l = 1 << mult.mantissa_bits
    big = max(2 * n_l, 8)
    if big > 600:
        big = 8  # m >= 9: golden cost; the expansion path is covered by the smaller widths
    for m_, k_, n_ in [(big, 23, 5), (6, 11, big), (9, 31, 7)]:
        a = rng.standard_normal((m_, k_)).astype(F) * F(3.0)
        b = rng.standard_normal((k_, n_)).astype(F)
        got = amsim.matmul(backend.asarray(a), backend.asarray(b), mult)
        assert_bits_equal(to_host(got), golden.matmul(a, b, mult))


def test_matmul_weird_table_everything_special(backend, rng):
    # a table spanning 2**-20..2**20 narrows the exponent window; results must still be exact
    a = mixed_matrix(rng, (40, 9), 0.2)
    b = mixed_matrix(rng, (9, 40), 0.2)
    assert_bits_equal(to_host(amsim.matmul(backend.asarray(a), backend.asarray(b), WEIRD)),
                      golden.matmul(a, b, WEIRD))


def test_matmul_special_value_matrix(backend, rng):
    sv = special_values()
    a = np.tile(sv, (sv.size, 1))  # every pair of special values meets in some output
    with np.errstate(over="ignore", invalid="ignore"):  # max normal * 1.5 -> Inf, Inf * 0 -> NaN: wanted
        b = (np.tile(sv[:, None], (1, 7)) * rng.standard_normal((1, 7)).astype(F)).astype(F)
    for mult in (MULTS["mbm7"], amsim.multipliers.exact(11).with_rounding("truncate")):
        got = amsim.matmul(backend.asarray(a), backend.asarray(b), mult)
        assert_bits_equal(to_host(got), golden.matmul(a, b, mult))


def test_matmul_subnormal_table_entries(backend, rng):
    values = (amsim.multipliers.mbm(4).table.values * F(2.0**-140)).astype(F)  # every entry subnormal
    mult = amsim.Multiplier.from_table(values, name="subnormal4")
    a = np.ldexp(rng.uniform(1, 2, (70, 12)), rng.integers(60, 80, (70, 12))).astype(F)
    b = np.ldexp(rng.uniform(1, 2, (12, 50)), rng.integers(60, 80, (12, 50))).astype(F)
    assert_bits_equal(to_host(amsim.matmul(backend.asarray(a), backend.asarray(b), mult)), golden.matmul(a, b, mult))


def test_matmul_negative_zero_table_entry_is_a_zero_magnitude(backend):
    vals = amsim.multipliers.exact(3).table.values.copy()
    vals[2, 5] = -0.0
    mult = amsim.Multiplier.from_table(vals, name="negzero")
    a = np.array([1.25, -1.25, 1.25], F)
    b = np.array([1.625, 1.625, -1.625], F)
    out = to_host(amsim.multiply(backend.asarray(a), backend.asarray(b), mult))
    assert_bits_equal(out, np.array([0x00000000, 0x80000000, 0x80000000], np.uint32).view(F))
    assert_bits_equal(out, golden.multiply(a, b, mult))


def test_matmul_1d_promotion(backend, rng):
    mult = MULTS["mbm7"]
    a = rng.standard_normal(7).astype(F)
    b = rng.standard_normal((3, 7, 4)).astype(F)
    v = rng.standard_normal(4).astype(F)
    da, db, dv = backend.asarray(a), backend.asarray(b), backend.asarray(v)
    assert_bits_equal(to_host(amsim.matmul(da, db, mult)), golden.matmul(a, b, mult))
    assert amsim.matmul(da, db, mult).shape == np.matmul(a, b).shape
    assert_bits_equal(to_host(amsim.matmul(db, dv, mult)), golden.matmul(b, v, mult))
    assert amsim.matmul(da, da, mult).shape == ()


def test_matmul_broadcast_batch(backend, rng):
    mult = amsim.multipliers.mitchell(5)
    a = rng.standard_normal((3, 1, 20, 11)).astype(F)
    b = rng.standard_normal((4, 11, 9)).astype(F)
    assert_bits_equal(to_host(amsim.matmul(backend.asarray(a), backend.asarray(b), mult)), golden.matmul(a, b, mult))


@pytest.mark.parametrize("kind", ["float", "int", "full_table"])
def test_matmul_batched_rows_times_one_matrix(backend, kind, rng):
    """x (batch..., M, K) @ W (K, N): run as one GEMM over the batch's rows (no copies of W), same bits."""
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
    out = backend.full(shape_a[:-1] + shape_w[-1:], -1, np.int32 if kind == "int" else F)  # poisoned
    amsim.matmul(backend.asarray(a), backend.asarray(w), mult, out=out)
    want = golden.matmul(a, w, mult)
    if kind == "int":
        np.testing.assert_array_equal(to_host(out), want)
    else:
        assert_bits_equal(to_host(out), want)


@pytest.mark.parametrize("shape", [(0, 4, 3), (3, 0, 4), (3, 4, 0), (0, 0, 0), (1, 1, 1)])
def test_matmul_degenerate(backend, shape, rng):
    mult = MULTS["mbm7"]
    m_, k_, n_ = shape
    a = rng.standard_normal((m_, k_)).astype(F)
    b = rng.standard_normal((k_, n_)).astype(F)
    out = backend.full((m_, n_), np.nan, F)
    amsim.matmul(backend.asarray(a), backend.asarray(b), mult, out=out)
    assert_bits_equal(to_host(out), golden.matmul(a, b, mult))
    if k_ == 0:
        assert (to_host(out).view(np.uint32) == 0).all()  # +0.0, the empty sum


def test_matmul_out_poisoned(backend, rng):
    mult = MULTS["mitchell3"]
    for m_, k_, n_ in [(300, 10, 20), (5, 10, 6)]:
        a = rng.standard_normal((m_, k_)).astype(F)
        b = rng.standard_normal((k_, n_)).astype(F)
        out = backend.full((m_, n_), np.nan, F)
        amsim.matmul(backend.asarray(a), backend.asarray(b), mult, out=out)
        assert_bits_equal(to_host(out), golden.matmul(a, b, mult))


# ---- integer and full-operand tables ------------------------------------------------------------------------
@pytest.mark.parametrize("signed", [True, False])
def test_int_paths(backend, signed, rng):
    rng2 = np.random.default_rng(3)
    table = rng2.integers(-30000, 30000, (256, 256)).astype(np.int32)
    mults = [amsim.multipliers.exact_int(8, signed=signed),
             amsim.Multiplier.from_table(table, name="rand8", signed=signed)]
    lo, hi = (-128, 127) if signed else (0, 255)
    for mult in mults:
        for m_, k_, n_ in [(600, 9, 7), (5, 13, 600), (4, 6, 3), (1, 1, 1)]:
            a = rng.integers(lo, hi + 1, (m_, k_)).astype(np.int8 if signed else np.uint8)
            b = rng.integers(lo, hi + 1, (k_, n_)).astype(np.int16)
            out = backend.full((m_, n_), -12345, np.int32)
            amsim.matmul(backend.asarray(a), backend.asarray(b), mult, out=out)
            np.testing.assert_array_equal(to_host(out), golden.matmul(a, b, mult))
        x = rng.integers(lo, hi + 1, (3, 50))
        y = rng.integers(lo, hi + 1, (50,))
        np.testing.assert_array_equal(to_host(amsim.multiply(backend.asarray(x), backend.asarray(y), mult)),
                                      golden.multiply(x, y, mult))


@pytest.mark.parametrize("bits,signed", [(8, True), (4, False), (7, True)])
def test_matmul_int_widths(backend, bits, signed, rng):
    mult = amsim.multipliers.exact_int(bits, signed=signed)
    lo, hi = mult.int_range
    a = rng.integers(lo, hi + 1, (2, 70, 45))
    b = rng.integers(lo, hi + 1, (2, 45, 66))
    got = amsim.matmul(backend.asarray(a.astype(np.int32)), backend.asarray(b.astype(np.int32)), mult)
    np.testing.assert_array_equal(to_host(got), golden.matmul(a, b, mult))


def test_int_small_width(backend):
    mult = amsim.int_multiplier(lambda a, b: a * b + (a & 1), bits=4, signed=True, name="odd4")
    a = np.arange(-8, 8).reshape(4, 4)
    np.testing.assert_array_equal(to_host(amsim.matmul(backend.asarray(a), backend.asarray(a.T.copy()), mult)),
                                  golden.matmul(a, a.T, mult))
    assert golden.multiply(np.array([3]), np.array([2]), mult)[0] == 7


def test_matmul_full_operand_table(backend, rng):
    @amsim.multiplier(operand_format=formats.e4m3(subnormals="keep"), full_table=True)
    def coarse(x, y):
        p = x * y
        return float(int(p * 16.0)) / 16.0 if abs(p) < 1.0 else p

    a = rng.standard_normal((90, 33)).astype(F) * F(4)
    b = rng.standard_normal((33, 70)).astype(F)
    a[0, 0] = np.nan
    assert_bits_equal(to_host(amsim.matmul(backend.asarray(a), backend.asarray(b), coarse)),
                      golden.matmul(a, b, coarse))
