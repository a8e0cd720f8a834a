"""The multiplier library against independent NumPy implementations of the published definitions.

Every reference below is vectorised over the whole operand grid and takes a different route from the Numba model
(gate-level adders, bit masks, recursion, float64 logarithm identities), so an error in either shows up.
"""

import numpy as np
import pytest

import amsim
from amsim import golden
from amsim.multipliers import (
    alm_soa,
    broken_array,
    drum,
    kulkarni,
    mitchell_int,
    realm,
    realm_factors,
    truncated_array,
    truncated_significand,
)

from .support.bits import assert_bits_equal

F = np.float32


# ---- helpers ------------------------------------------------------------------------------------------------
def fields(m):
    """Fraction-field grid (fa, fb) as int64 arrays, table layout."""
    return np.meshgrid(np.arange(1 << m, dtype=np.int64), np.arange(1 << m, dtype=np.int64), indexing="ij")


def operands(bits, signed):
    lo = -(1 << (bits - 1)) if signed else 0
    v = np.arange(lo, lo + (1 << bits), dtype=np.int64)
    return np.meshgrid(v, v, indexing="ij")


def sign_magnitude(core, a, b):
    """Apply an unsigned core to |a|, |b| and give the result the sign of a * b."""
    p = core(np.abs(a), np.abs(b))
    return np.where((a < 0) != (b < 0), -p, p)


def floor_log2(u):
    """floor(log2(u)) for positive integers, via frexp (u = f 2**e, f in [0.5, 1))."""
    return np.frexp(u.astype(np.float64))[1] - 1


def truncate_fraction(p, m):
    """Truncate positive values to m fraction bits after normalising to [1, 2) * 2**e."""
    e = np.floor(np.log2(p)).astype(np.int64)
    e = np.where(2.0**e > p, e - 1, e)  # guard log2 rounding at exact powers of two
    e = np.where(2.0 ** (e + 1) <= p, e + 1, e)
    scale = 2.0 ** (m - e)
    return np.floor(p * scale) / scale


def partial_product_sum(u, v, nbits, keep):
    """Outer grid of sum_ij keep(i, j) u_i v_j 2**(i+j) for 1-D operand vectors u (rows) and v (columns).

    The partial products as a matrix: bits(u) @ W @ bits(v).T with W[i, j] = 2**(i+j) where kept, else 0.
    """
    i, j = np.meshgrid(np.arange(nbits), np.arange(nbits), indexing="ij")
    weight = np.where(keep(i, j), 2 ** (i + j), 0).astype(np.int64)
    ubits = (u[:, None] >> np.arange(nbits)) & 1
    vbits = (v[:, None] >> np.arange(nbits)) & 1
    return ubits @ weight @ vbits.T


def on_grid(core_1d):
    """Adapt a core taking 1-D operand vectors to the (a, b) grids of operands()."""
    return lambda u, v: core_1d(u[:, 0], v[0, :])


# ---- ALM-SOA -------------------------------------------------------------------------------------------------
def soa_reference(m, k):
    """Gate-level set-one adder on the fraction fields, then Mitchell's antilogarithm."""
    fa, fb = fields(m)
    bit = lambda v, i: (v >> i) & 1  # noqa: E731
    s = np.full_like(fa, (1 << k) - 1)  # the k low sum bits are wired to 1
    carry = bit(fa, k - 1) & bit(fb, k - 1) if k > 0 else np.zeros_like(fa)
    for i in range(k, m):  # ripple-carry full adders above the set-one part
        ai, bi = bit(fa, i), bit(fb, i)
        s |= (ai ^ bi ^ carry) << i
        carry = (ai & bi) | (carry & (ai ^ bi))
    frac = s / 2.0**m
    return np.where(carry == 1, 2.0 * (1.0 + frac), 1.0 + frac)


@pytest.mark.parametrize("m, k", [(1, 1), (4, 2), (7, 3), (11, 5)])
def test_alm_soa_matches_gate_level_reference(m, k):
    mult = alm_soa(m, k=k)
    assert mult.name == f"alm_soa{m}_k{k}"
    np.testing.assert_array_equal(mult.table.values, soa_reference(m, k).astype(F))


def test_alm_soa_hand_case_and_mitchell_limit():
    t = alm_soa(4, k=2).table.values
    # fa = 0110, fb = 0011: low bits -> 11, carry-in a1 & b1 = 1, upper 01 + 00 + 1 = 10 -> s = 1011
    assert t[0b0110, 0b0011] == F(1 + 11 / 16)
    # k = 0 has no set-one part: Mitchell's multiplier
    np.testing.assert_array_equal(alm_soa(7, k=0).table.values, amsim.multipliers.mitchell(7).table.values)
    with pytest.raises(ValueError, match="k=8 is out of range"):
        alm_soa(7, k=8)


# ---- REALM ---------------------------------------------------------------------------------------------------
def realm_factors_reference(M):
    """Zero-mean factors by brute-force midpoint quadrature, Richardson-extrapolated from two grid sizes.

    The integrand is continuous across x + y = 1 (there xy = (1-x)(1-y)), so the midpoint error is O(h**2).
    """

    def midpoint(n):
        u = (np.arange(n) + 0.5) / (n * M)
        out = np.empty((M, M))
        for i in range(M):
            x = (i / M + u)[:, None]
            for j in range(M):
                y = (j / M + u)[None, :]
                d = (1 + x) * (1 + y)
                mitchell = np.where(x + y < 1, 1 + x + y, 2 * (x + y))
                out[i, j] = np.sum(1 - mitchell / d) / np.sum(1 / d)
        return out

    n = max(32, 1024 // M)
    return (4 * midpoint(2 * n) - midpoint(n)) / 3


@pytest.mark.parametrize("M", [2, 4, 8])
def test_realm_factors_zero_the_mean_segment_error(M):
    ref = realm_factors_reference(M)
    got = realm_factors(M)
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-11)
    np.testing.assert_allclose(got, got.T, rtol=0, atol=1e-13)  # symmetric in the operands
    assert got.min() > 0  # Mitchell always underestimates, so every factor adds


@pytest.mark.parametrize("m, M, q", [(3, None, None), (7, None, None), (7, 16, 10), (10, 4, 6)])
def test_realm_table_matches_definition(m, M, q):
    mult = realm(m, segments=M, factor_bits=q)
    M = M or min(8, 1 << m)
    q = q or m
    s = np.round(realm_factors_reference(M) * 2**q) / 2**q
    fa, fb = fields(m)
    x, y = fa / 2**m, fb / 2**m
    c = s[(fa * M) >> m, (fb * M) >> m]
    p = np.where(x + y < 1, 1 + x + y + c, 2 * (x + y + c / 2))
    np.testing.assert_array_equal(mult.table.values, truncate_fraction(p, m).astype(F))


def test_realm_reduces_mitchell_error():
    r = realm(7).stats()
    mit = amsim.multipliers.mitchell(7).stats()
    # REALM's published 8-segment figures: mean error about 1 %, peak a few %, bias near zero
    assert r.mre < 0.01 and r.max_re < 0.04 and abs(r.bias) < 0.002, r
    assert mit.mre > 0.038 and mit.bias < -0.038


# ---- truncated significand -----------------------------------------------------------------------------------
@pytest.mark.parametrize("m, t", [(1, 1), (5, 11), (8, 8), (11, 11)])
def test_truncated_significand_matches_definition(m, t):
    significands = (1 << m) | np.arange(1 << m, dtype=np.int64)
    expected = partial_product_sum(significands, significands, m + 1, lambda i, j: i + j >= t) / 2.0 ** (2 * m)
    np.testing.assert_array_equal(truncated_significand(m, t=t).table.values, expected.astype(F))


def test_truncated_significand_only_lowers_the_product():
    s = truncated_significand(8, t=8).stats()
    assert s.bias < 0 and s.bias == -s.mre and s.ep > 0.9


# ---- integer designs -------------------------------------------------------------------------------------------
def drum_core(k):
    def core(u, v):
        def reduce(w):
            sh = np.maximum(floor_log2(np.maximum(w, 1)) - k + 1, 0)
            return np.where(w < (1 << k), w, (2 * (w >> (sh + 1)) + 1) << sh)

        return reduce(u) * reduce(v)

    return core


@pytest.mark.parametrize("bits, signed, k", [(8, True, 4), (8, False, 3), (5, True, 2), (3, False, 3)])
def test_drum_matches_definition(bits, signed, k):
    a, b = operands(bits, signed)
    table = drum(k, bits=bits, signed=signed).table.values
    np.testing.assert_array_equal(table, sign_magnitude(drum_core(k), a, b))
    if k == bits and not signed:  # every operand fits the segment: exact
        np.testing.assert_array_equal(table, a * b)


def test_drum_hand_cases():
    t = drum(3, bits=8, signed=False).table.values
    # 45 = 101101b: segment 101 -> LSB forced: 101 -> 101 << 3 = 40; 7 < 2**3 stays exact
    assert t[45, 7] == 40 * 7
    # 200 = 11001000b -> 110 | 1 = 111 << 5 = 224
    assert t[200, 200] == 224 * 224


@pytest.mark.parametrize("bits, signed, levels", [(8, True, [(None, None)]), (8, False, [(3, 1)]),
                                                  (5, True, [(1, 2)]), (3, False, [(None, None)])])
def test_broken_array_matches_definition(bits, signed, levels):
    a, b = operands(bits, signed)
    for hbl, vbl in levels:
        mult = broken_array(bits, signed=signed, hbl=hbl, vbl=vbl)
        h = bits // 4 if hbl is None else hbl
        v = max(bits - 2, 0) if vbl is None else vbl
        # partial product a_i b_j (a along the row, one row per bit j of b) kept on or above both break levels
        core = on_grid(lambda x, y, h=h, v=v: partial_product_sum(x, y, bits, lambda i, j: (j >= h) & (i + j >= v)))
        np.testing.assert_array_equal(mult.table.values, sign_magnitude(core, a, b), err_msg=mult.name)


@pytest.mark.parametrize("bits, signed, cuts", [(8, True, [8]), (8, False, [8, 15]), (5, True, [5])])
def test_truncated_array_matches_definition(bits, signed, cuts):
    a, b = operands(bits, signed)
    for t in cuts:
        mult = truncated_array(bits, signed=signed, t=t)
        core = on_grid(lambda x, y, t=t: partial_product_sum(x, y, bits, lambda i, j: i + j >= t))
        np.testing.assert_array_equal(mult.table.values, sign_magnitude(core, a, b))
    if bits == 5:  # the truncated array is the broken array without a horizontal break
        np.testing.assert_array_equal(truncated_array(5, signed=True, t=5).table.values,
                                      broken_array(5, signed=True, hbl=0, vbl=5).table.values)


def kulkarni_recursive(u, v, width):
    """Four half-width products added exactly, down to the 2x2 block with 3 x 3 = 7."""
    if width == 2:
        return np.where((u == 3) & (v == 3), 7, u * v)
    h = width // 2
    mask = (1 << h) - 1
    uh, ul, vh, vl = u >> h, u & mask, v >> h, v & mask
    return ((kulkarni_recursive(uh, vh, width - h) << (2 * h))
            + ((kulkarni_recursive(uh, vl, width - h) + kulkarni_recursive(ul, vh, h)) << h)
            + kulkarni_recursive(ul, vl, h))


@pytest.mark.parametrize("bits, signed", [(8, True), (8, False), (5, True), (2, False)])
def test_kulkarni_matches_recursive_definition(bits, signed):
    width = 1 << (bits - 1).bit_length()  # zero-extend to a power of two for the recursion
    width = max(width, 2)
    a, b = operands(bits, signed)
    expected = sign_magnitude(lambda u, v: kulkarni_recursive(u, v, width), a, b)
    np.testing.assert_array_equal(kulkarni(bits, signed=signed).table.values, expected)


def test_kulkarni_published_block_error():
    s = kulkarni(2, signed=False).stats()
    assert s.ep == 1 / 16 and s.wce == 2 and s.max_re == pytest.approx(2 / 9)
    assert kulkarni(8, signed=False).stats().max_re == pytest.approx(2 / 9)  # the paper's 22.2 % bound


def mitchell_core(u, v):
    fu, eu = np.frexp(u.astype(np.float64))
    fv, ev = np.frexp(v.astype(np.float64))
    x1, x2 = 2 * fu - 1, 2 * fv - 1  # u = 2**(eu-1) (1 + x1)
    k = (eu - 1) + (ev - 1)
    p = np.where(x1 + x2 < 1, np.ldexp(1 + x1 + x2, k), np.ldexp(x1 + x2, k + 1))
    return np.where((u == 0) | (v == 0), 0, p).astype(np.int64)


@pytest.mark.parametrize("bits, signed", [(8, True), (8, False), (3, False)])
def test_mitchell_int_matches_definition(bits, signed):
    a, b = operands(bits, signed)
    np.testing.assert_array_equal(mitchell_int(bits, signed=signed).table.values, sign_magnitude(mitchell_core, a, b))
    assert mitchell_int(bits, signed=signed).stats().max_re <= 1 / 9 + 1e-12


# ---- registry and use in kernels -------------------------------------------------------------------------------
def test_registry_resolves_library_names():
    get = amsim.multipliers.get
    assert get("drum4") == drum(4)
    assert get("drum3", bits=6, signed=False) == drum(3, bits=6, signed=False)
    assert get("kulkarni8") == kulkarni(8) and get("mitchell_int5") == mitchell_int(5)
    assert get("bam", hbl=1, vbl=5) == broken_array(8, hbl=1, vbl=5)
    assert get("trunc_array6") == truncated_array(6)
    assert get("realm") == realm(7) and get("realm5", segments=4) == realm(5, segments=4)
    assert get("alm_soa", k=2) == alm_soa(7, k=2)
    assert get("trunc_sig9", t=12, rounding="truncate") == truncated_significand(9, t=12, rounding="truncate")
    assert get("mbm") == amsim.multipliers.mbm(7)  # the original names still work
    assert drum(4) != drum(5) and realm(7, factor_bits=5) != realm(7)  # parameters reach the identity
    with pytest.raises(ValueError, match="does not take"):
        get("drum4", segments=3)
    names = " ".join(amsim.multipliers.available())
    for n in ("alm_soa", "realm", "trunc_sig", "drum", "bam", "trunc_array", "kulkarni", "mitchell_int"):
        assert n in names


def test_library_multipliers_run_in_kernels(rng):
    a = rng.standard_normal((33, 40)).astype(F)
    b = rng.standard_normal((40, 17)).astype(F)
    for mult in (realm(7), alm_soa(7), truncated_significand(7)):
        assert_bits_equal(amsim.matmul(a, b, mult), golden.matmul(a, b, mult))
    ia = rng.integers(-128, 128, size=(9, 50)).astype(np.int8)
    ib = rng.integers(-128, 128, size=(50, 11)).astype(np.int8)
    for mult in (drum(4), kulkarni(8)):
        np.testing.assert_array_equal(amsim.matmul(ia, ib, mult), golden.matmul(ia, ib, mult))


# ---- heat map --------------------------------------------------------------------------------------------------
def test_error_heatmap_draws_the_relative_error(monkeypatch):
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from amsim._plots import error_heatmap

    mult = amsim.multipliers.mitchell(5)
    ax = error_heatmap(mult)
    x = 1 + np.arange(32) / 32
    exact = np.multiply.outer(x, x)
    np.testing.assert_allclose(np.asarray(ax.images[0].get_array()), 100 * (mult.table.values - exact) / exact)
    assert ax.get_title() == "mitchell5" and ax.images[0].get_clim() == pytest.approx((-100 / 9, 100 / 9))
    fig, own = plt.subplots()
    ints = error_heatmap(kulkarni(4, signed=False), ax=own, colorbar=False, limit=0.5)
    assert ints is own
    data = np.ma.filled(ints.images[0].get_array(), np.nan)
    assert np.isnan(data[0]).all() and np.isnan(data[:, 0]).all()  # zero products have no relative error
    assert data[3, 3] == pytest.approx(100 * (7 - 9) / 9)
    plt.close("all")
    monkeypatch.setitem(__import__("sys").modules, "matplotlib", None)
    with pytest.raises(ImportError, match="pip install"):
        error_heatmap(mult)
