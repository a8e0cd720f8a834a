"""Narrow operand formats (fp16, FP8 e4m3/e5m2, user-defined): conversion against ml_dtypes and by hand, and every
backend bit-exact against the golden model."""

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

import amsim
from amsim import formats, golden
from amsim import nn as ann

from .support.bits import assert_bits_equal, special_values

F = np.float32


def _wide_values(rng, n=50000):
    x = rng.standard_normal(n).astype(F) * (F(2.0) ** rng.integers(-30, 20, n).astype(F))
    edges = [0, -0.0, np.inf, -np.inf, np.nan, 65504, 65519, 65520, 448, 449, 464, 465, 480, 57344, 61439, 61440,
             2**-24, 2**-25, 3 * 2**-26, 2**-9, 2**-10, 3 * 2**-11, 2**-17, 2**-16, 2**-14, 2**-6, 2**-7]
    return np.concatenate([x, np.array(edges, F), -np.array(edges, F), special_values()])


@pytest.mark.parametrize("fmt, dtype", [
    (formats.fp16(subnormals="keep"), np.float16),
    (formats.e4m3(subnormals="keep"), ml_dtypes.float8_e4m3fn),
    (formats.e5m2(subnormals="keep"), ml_dtypes.float8_e5m2),
])
def test_conversion_matches_ml_dtypes(fmt, dtype, rng):
    x = _wide_values(rng)
    with np.errstate(over="ignore", invalid="ignore"):  # ml_dtypes warns on out-of-range casts
        want = x.astype(dtype).astype(F)
    assert_bits_equal(formats.convert(x, fmt, "nearest"), want)


def test_conversion_hand_cases():
    e4 = formats.e4m3(subnormals="keep", overflow="saturate")
    x = np.array([1000.0, -np.inf, 449.0, 2**-10, 2**-9 * 1.5, 1.0625, 1.1875], F)
    # saturate: 448; -Inf saturates too; 2**-10 is half the smallest subnormal (2**-9): ties to even -> 0;
    # 1.5 * 2**-9 ties to 2 * 2**-9; 1.0625 = 1 + 1/16 ties to 1.0; 1.1875 = 1 + 3/16 ties to 1.25
    np.testing.assert_array_equal(formats.convert(x, e4, "nearest"),
                                  np.array([448, -448, 448, 0, 2**-8, 1.0, 1.25], F))
    np.testing.assert_array_equal(formats.convert(x, e4, "truncate"),
                                  np.array([448, -448, 448, 0, 2**-9, 1.0, 1.125], F))
    flush = formats.e5m2(subnormals="flush")
    out = formats.convert(np.array([2**-15, -(2**-16), 2**-14], F), flush, "nearest")
    assert out[0] == 0 and np.signbit(out[1]) and out[1] == 0 and out[2] == F(2**-14)
    custom = formats.FloatFormat(3, 2, subnormals="keep")  # bias 3: max 1.75 * 2**3 = 14, min normal 0.25
    assert custom.max_finite == 14.0 and custom.min_normal == 0.25
    np.testing.assert_array_equal(formats.convert(np.array([15.0, 0.1, 0.3], F), custom, "nearest"),
                                  np.array([np.inf, 0.125, 0.3125], F))


def test_format_errors():
    with pytest.raises(ValueError, match="no Inf"):
        formats.FloatFormat(4, 3, "keep", overflow="inf", ieee=False)
    with pytest.raises(ValueError, match="explicitly"):
        formats.FloatFormat(5, 10, "maybe")
    with pytest.raises(TypeError):
        formats.fp16()  # the subnormal policy is a required, explicit choice
    with pytest.raises(ValueError, match="must agree"):
        amsim.multipliers.mbm(7).with_format(formats.e4m3(subnormals="keep"))


FMT_MULTS = [
    amsim.multipliers.mbm(3).with_format(formats.e4m3(subnormals="keep")),
    amsim.multipliers.mitchell(3).with_format(formats.e4m3(subnormals="flush", overflow="saturate")),
    amsim.multipliers.exact(2).with_format(formats.e5m2(subnormals="keep")).with_rounding("truncate"),
    amsim.multipliers.mbm(10).with_format(formats.fp16(subnormals="keep")),
    amsim.multipliers.mitchell(4).with_format(formats.FloatFormat(6, 4, "flush", name="e6m4")),
]


@pytest.mark.parametrize("mult", FMT_MULTS, ids=repr)
def test_backends_match_golden_with_formats(mult, rng):
    sv = special_values()
    a, b = np.meshgrid(sv, sv, indexing="ij")
    assert_bits_equal(amsim.multiply(a, b, mult), golden.multiply(a, b, mult))
    x = _wide_values(rng, 3000)[:3000]
    y = rng.permutation(x)
    with np.errstate(over="ignore", invalid="ignore"):
        assert_bits_equal(amsim.multiply(x, y, mult), golden.multiply(x, y, mult))
    for m_, k_, n_ in [(40, 9, 7), (300, 5, 8)]:
        p = rng.standard_normal((m_, k_)).astype(F) * F(30)
        q = rng.standard_normal((k_, n_)).astype(F)
        assert_bits_equal(amsim.matmul(p, q, mult), golden.matmul(p, q, mult))


def test_format_changes_results_and_identity(tmp_path, rng):
    base = amsim.multipliers.mbm(3)
    fp8 = base.with_format(formats.e4m3(subnormals="keep"))
    assert fp8 != base and hash(fp8) != hash(base)
    a = rng.standard_normal((8, 8)).astype(F) * F(1000)  # beyond e4m3's range
    assert not np.array_equal(amsim.matmul(a, a, fp8), amsim.matmul(a, a, base), equal_nan=True)
    back = amsim.Multiplier.load(fp8.save(tmp_path / "fp8.npz"))
    assert back == fp8 and back.operand_format == fp8.operand_format
    assert_bits_equal(amsim.matmul(a, a, back), amsim.matmul(a, a, fp8))


def test_bridge_with_format(rng):
    mult = FMT_MULTS[0]
    a = rng.standard_normal((6, 10)).astype(F)
    b = rng.standard_normal((10, 4)).astype(F)
    got = ann.dot_general(mult)(jnp.asarray(a), jnp.asarray(b), (((1,), (0,)), ((), ())))
    assert_bits_equal(np.asarray(got), golden.matmul(a, b, mult))


# ---- full-operand tables (formats of at most 8 bits) ------------------------------------------------------
E4 = formats.e4m3(subnormals="keep")


def _exponent_aware():
    @amsim.multiplier(operand_format=E4, full_table=True)
    def coarse_small(a, b):
        # error depends on magnitude and sign: small products lose their low bits, negative ones round up
        p = a * b
        if abs(p) < 1.0:
            return float(int(p * 16.0)) / 16.0
        return p

    return coarse_small


def test_full_table_build_and_semantics():
    mult = _exponent_aware()
    assert mult.is_code and mult.table.values.shape == (256, 256)
    t = mult.table.values
    one, half, nan = 0x38, 0x30, 0x7F  # e4m3fn bit patterns of 1.0, 0.5 and NaN
    assert t[one, one] == 1.0 and t[half, half] == F(0.25)  # 0.25 -> int(4) / 16
    assert t[0x31, 0x30] == F(0.25)  # 0.5625 * 0.5 = 0.28125 -> 0.25
    assert np.isnan(t[nan, one]) and np.isnan(t[one, nan])
    s = mult.stats()
    assert 0 < s.ep < 1 and s.pairs > 60000


def test_full_table_backends_match_golden(rng):
    mult = _exponent_aware()
    sv = special_values()
    a, b = np.meshgrid(sv, sv, indexing="ij")
    assert_bits_equal(amsim.multiply(a, b, mult), golden.multiply(a, b, mult))
    for m_, k_, n_ in [(20, 7, 9), (300, 6, 5), (5, 11, 290)]:
        p = rng.standard_normal((m_, k_)).astype(F) * F(4)
        q = rng.standard_normal((k_, n_)).astype(F)
        out = np.full((m_, n_), np.nan, F)
        amsim.matmul(p, q, mult, out=out)
        assert_bits_equal(out, golden.matmul(p, q, mult))


def test_full_table_from_table_and_save(tmp_path):
    mult = _exponent_aware()
    again = amsim.Multiplier.from_table(mult.table.values, name="copy", operand_format=E4)
    assert again.is_code
    back = amsim.Multiplier.load(again.save(tmp_path / "t.npz"))
    assert back.is_code and back.operand_format == E4
    x = np.linspace(-3, 3, 40, dtype=F).reshape(5, 8)
    assert_bits_equal(amsim.matmul(x, x.T, back), golden.matmul(x, x.T, mult))
