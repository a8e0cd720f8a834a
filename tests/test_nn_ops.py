"""The JAX bridge ops against lax (exact multiplier) and against the golden model (approximate multipliers)."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import amsim
from amsim import golden
from amsim import nn as ann

from .support.bits import assert_bits_equal
from .support.golden_conv import golden_conv2d_nhwc

F = np.float32
EXACT = amsim.multipliers.exact(11)
MBM = amsim.multipliers.mbm(7)
MIT = amsim.multipliers.mitchell(5)


def q11(x):
    return golden.quantize(np.asarray(x, F), 11)


def _rand(rng, shape, pre_round=True):
    x = rng.standard_normal(shape).astype(F)
    return q11(x) if pre_round else x


def _golden_dot_general(lhs, rhs, dn, mult):
    """dot_general semantics spelled out: transpose to (B, M, K) @ (B, K, N), golden matmul, reshape."""
    (lc, rc), (lb, rb) = dn
    lf = [d for d in range(lhs.ndim) if d not in lc and d not in lb]
    rf = [d for d in range(rhs.ndim) if d not in rc and d not in rb]
    bs = [lhs.shape[d] for d in lb]
    k = int(np.prod([lhs.shape[d] for d in lc]))
    a = np.transpose(lhs, list(lb) + lf + list(lc)).reshape(int(np.prod(bs)), -1, k)
    b = np.transpose(rhs, list(rb) + list(rc) + rf).reshape(a.shape[0], a.shape[2], -1)
    out = golden.matmul(a, b, mult)
    return out.reshape(bs + [lhs.shape[d] for d in lf] + [rhs.shape[d] for d in rf])


DOT_CASES = [
    # (lhs shape, rhs shape, dimension numbers)
    ((5, 7), (7, 3), (((1,), (0,)), ((), ()))),
    ((7, 5), (7, 3), (((0,), (0,)), ((), ()))),  # TN
    ((5, 7), (3, 7), (((1,), (1,)), ((), ()))),  # NT
    ((2, 5, 7), (2, 7, 3), (((2,), (1,)), ((0,), (0,)))),  # batched
    ((4, 3, 2, 5), (5, 2, 6), (((3, 2), (0, 1)), ((), ()))),  # two contracting dims, listed out of order
    ((3, 2, 4, 5), (2, 5, 6, 3), (((1,), (0,)), ((0,), (3,)))),  # batch dim last on rhs
    ((2, 3, 4, 5), (3, 5, 2, 4), (((3,), (1,)), ((0, 1), (2, 0)))),  # two batch dims
    ((6,), (6, 4), (((0,), (0,)), ((), ()))),
]


@pytest.mark.parametrize("ls, rs, dn", DOT_CASES)
def test_dot_general_exact_matches_lax(ls, rs, dn, rng):
    lhs, rhs = _rand(rng, ls), _rand(rng, rs)
    got = ann.dot_general(EXACT)(jnp.asarray(lhs), jnp.asarray(rhs), dn)
    want = lax.dot_general(lhs, rhs, dn, precision=lax.Precision.HIGHEST)
    assert got.shape == want.shape and got.dtype == jnp.float32
    # products are exact; only the summation order differs from XLA's
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("ls, rs, dn", DOT_CASES)
def test_dot_general_approx_matches_golden(ls, rs, dn, rng):
    lhs, rhs = _rand(rng, ls, False), _rand(rng, rs, False)
    got = jax.jit(ann.dot_general(MBM), static_argnums=2)(lhs, rhs, dn)
    assert_bits_equal(np.asarray(got), _golden_dot_general(lhs, rhs, dn, MBM))


@pytest.mark.parametrize("ls, rs, dn", DOT_CASES)
def test_dot_general_gradients_are_true_transposes(ls, rs, dn, rng):
    lhs, rhs = _rand(rng, ls), _rand(rng, rs)
    w = _rand(rng, lax.dot_general(lhs, rhs, dn).shape)
    dg = ann.dot_general(EXACT)

    def loss(op):
        return lambda a, b: jnp.sum(op(a, b, dn) * w)

    got = jax.grad(loss(dg), argnums=(0, 1))(lhs, rhs)
    want = jax.grad(loss(lambda a, b, d: lax.dot_general(a, b, d, precision="highest")), argnums=(0, 1))(lhs, rhs)
    for g_, w_ in zip(got, want, strict=True):
        assert g_.shape == w_.shape
        np.testing.assert_allclose(g_, w_, rtol=1e-5, atol=1e-5)  # w pre-rounded: gradient products exact too


def test_dot_general_gradients_equal_golden_gemms(rng):
    a, b = _rand(rng, (6, 9), False), _rand(rng, (9, 5), False)
    g = _rand(rng, (6, 5), False)
    dg = ann.dot_general(MBM, dlhs=MIT, drhs=amsim.multipliers.mitchell(3))
    _, vjp = jax.vjp(lambda x, y: dg(x, y, (((1,), (0,)), ((), ()))), a, b)
    da, db = vjp(jnp.asarray(g))
    assert_bits_equal(np.asarray(da), golden.matmul(g, np.ascontiguousarray(b.T), MIT))  # g x rhs^T
    assert_bits_equal(np.asarray(db), golden.matmul(np.ascontiguousarray(a.T), g, amsim.multipliers.mitchell(3)))


def test_gradient_modes_ste_and_exact(rng):
    a, b, g = _rand(rng, (4, 6), False), _rand(rng, (6, 3), False), _rand(rng, (4, 3), False)
    dn = (((1,), (0,)), ((), ()))
    for mode in ("ste", "exact"):
        _, vjp = jax.vjp(lambda x, y, mode=mode: ann.dot_general(MBM, dlhs=mode, drhs=mode)(x, y, dn), a, b)
        da, db = vjp(jnp.asarray(g))
        np.testing.assert_allclose(da, g @ b.T, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(db, a.T @ g, rtol=1e-6, atol=1e-6)


def test_vmap_and_jit_cache(rng):
    a = _rand(rng, (3, 4, 6), False)
    b = _rand(rng, (6, 5), False)
    dg = ann.dot_general(MBM)
    dn = (((1,), (0,)), ((), ()))
    got = jax.vmap(lambda x: dg(x, b, dn))(a)
    assert_bits_equal(np.asarray(got), golden.matmul(a, b, MBM))
    got2 = jax.vmap(lambda x, y: dg(x, y, dn), in_axes=(0, None))(a, b)
    assert_bits_equal(np.asarray(got2), golden.matmul(a, b, MBM))
    # equal configs hash equal: jit reuses its trace
    traces = []

    @jax.jit
    def f(x):
        traces.append(1)
        return x

    f2 = jax.jit(lambda x, op: op(x, b, dn), static_argnums=1)
    f2(a[0], ann.dot_general(amsim.multipliers.mbm(7)))
    n_cache = f2._cache_size()
    f2(a[0], ann.dot_general(amsim.multipliers.mbm(7)))
    assert f2._cache_size() == n_cache
    assert hash(ann.dot_general("mbm")) == hash(ann.dot_general(MBM))


def test_bf16_operands_and_preferred_type(rng):
    a = jnp.asarray(_rand(rng, (4, 8), False)).astype(jnp.bfloat16)
    b = jnp.asarray(_rand(rng, (8, 3), False)).astype(jnp.bfloat16)
    dn = (((1,), (0,)), ((), ()))
    out = ann.dot_general(MBM)(a, b, dn)
    assert out.dtype == jnp.bfloat16
    out32 = ann.dot_general(MBM)(a, b, dn, preferred_element_type=jnp.float32)
    assert out32.dtype == jnp.float32
    assert_bits_equal(np.asarray(out32), golden.matmul(np.asarray(a, F), np.asarray(b, F), MBM))


def test_int_multiplier_quantised_path(rng):
    i8 = amsim.multipliers.exact_int(8)
    a, b = _rand(rng, (5, 12), False), _rand(rng, (12, 4), False)
    got = np.asarray(ann.dot_general(i8)(a, b, (((1,), (0,)), ((), ()))))
    sa = np.abs(a).max() / 127
    sb = np.abs(b).max(axis=0, keepdims=True) / 127
    qa = np.clip(np.round(a / F(sa)), -127, 127).astype(np.int32)
    qb = np.clip(np.round(b / sb.astype(F)), -127, 127).astype(np.int32)
    want = golden.matmul(qa, qb, i8).astype(F) * F(sa) * sb.astype(F)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    np.testing.assert_allclose(got, a @ b, atol=0.05 * np.abs(a @ b).max())  # int8 is close to exact


def _quantised_reference(a, b, bits, per_channel):
    """The integer path by hand: NaN/Inf excluded from the scales (quantised as 0), IEEE's verdict on them."""
    qmax = (1 << (bits - 1)) - 1
    fa, fb = np.where(np.isfinite(a), a, 0).astype(F), np.where(np.isfinite(b), b, 0).astype(F)
    sa = F(np.abs(fa).max() / qmax) if np.abs(fa).max() > 0 else F(1)
    amax_b = np.abs(fb).max(axis=0, keepdims=True) if per_channel else np.abs(fb).max()
    sb = np.where(amax_b > 0, amax_b / qmax, 1).astype(F)
    qa = np.clip(np.round(fa / sa), -qmax, qmax).astype(np.int32)
    qb = np.clip(np.round(fb / sb), -qmax, qmax).astype(np.int32)
    mult = amsim.multipliers.exact_int(bits)
    finite = golden.matmul(qa, qb, mult).astype(F) * sa * sb
    with np.errstate(invalid="ignore", over="ignore"):
        ieee = (a.astype(np.float64)[:, :, None] * b.astype(np.float64)[None]).sum(axis=1)  # NaN/Inf pattern
    return np.where(np.isfinite(ieee), finite, ieee).astype(F)


@pytest.mark.parametrize("per_channel", [True, False])
def test_int_path_nan_and_inf_propagate_as_ieee(per_channel, rng):
    i8 = amsim.multipliers.exact_int(8)
    a, b = _rand(rng, (7, 12), False), _rand(rng, (12, 6), False)
    a[1, 3] = np.nan  # row 1: NaN everywhere
    a[2, 4] = np.inf  # row 2: +-Inf by the sign of b[4, j] ...
    b[4, 0] = 0.0  # ... and NaN where Inf meets 0
    a[3, 5], a[3, 6] = np.inf, -np.inf  # row 3: NaN where the two Inf terms have opposite signs
    b[7, 2] = -np.inf  # column 2: -+Inf by the sign of a[i, 7]
    cfg = ann.OpConfig(i8, per_channel=per_channel)
    op = jax.jit(lambda x, y: ann.dot_general(cfg)(x, y, (((1,), (0,)), ((), ()))))
    got = np.asarray(op(a, b))
    want = _quantised_reference(a, b, 8, per_channel)
    # the special values exactly; the finite outputs up to the order XLA applies the two scales in
    assert_bits_equal(np.where(np.isfinite(want), 0, got), np.where(np.isfinite(want), 0, want))
    np.testing.assert_allclose(got[np.isfinite(want)], want[np.isfinite(want)], rtol=1e-6)
    assert np.isnan(got[1]).all() and not np.isfinite(got[3]).any() and np.isnan(got[2, 0])
    assert (np.isinf(got[2, 1:]) | np.isnan(got[2, 1:])).all()
    # rows and columns without a NaN or Inf are what they are with those entries set to 0: untouched
    a0, b0 = np.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0), np.nan_to_num(b, nan=0.0, posinf=0.0, neginf=0.0)
    clean = np.asarray(op(a0, b0))
    rows, cols = [0, 4, 5, 6], [1, 3, 4, 5]
    assert_bits_equal(got[np.ix_(rows, cols)], clean[np.ix_(rows, cols)])


def test_int_path_conv_nan_pixel_reaches_only_its_windows(rng):
    i8 = amsim.multipliers.exact_int(8)
    x = rng.standard_normal((1, 6, 6, 1)).astype(F)
    w = rng.standard_normal((3, 3, 1, 2)).astype(F)
    x[0, 0, 0, 0] = np.nan
    conv = ann.conv_general_dilated(i8)
    y = np.asarray(conv(x, w, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")))
    assert np.isnan(y[0, 0, 0]).all() and np.isfinite(y[0, 1:, :]).all() and np.isfinite(y[0, :, 1:]).all()
    x0 = np.where(np.isnan(x), 0, x).astype(F)
    y0 = np.asarray(conv(x0, w, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")))
    assert_bits_equal(y[0, 1:], y0[0, 1:])


# ---- convolution ---------------------------------------------------------------------------------------
CONV_CASES = [
    # (lhs shape NHWC, kernel HWIO, strides, padding, lhs_dil, rhs_dil, groups)
    ((2, 7, 6, 3), (3, 3, 3, 4), (1, 1), "SAME", None, None, 1),
    ((2, 8, 7, 2), (3, 2, 2, 5), (2, 1), "VALID", None, (2, 1), 1),
    ((1, 6, 6, 4), (3, 3, 2, 6), (2, 2), ((1, 2), (0, 1)), (1, 2), None, 2),
    ((2, 5, 5, 4), (3, 3, 1, 4), (1, 1), "SAME", None, None, 4),  # depthwise
    ((1, 5, 4, 2), (2, 2, 2, 3), (1, 1), ((-1, 1), (1, 0)), (2, 2), (1, 2), 1),  # negative padding, transposed-style
    ((3, 9, 2), (3, 2, 4), (2,), "SAME", None, None, 1),  # 1-D
]


def _conv(op, x, w, case):
    _, _, strides, padding, ld, rd, groups = case
    nsp = x.ndim - 2
    spec = ("NWC", "WIO", "NWC") if nsp == 1 else ("NHWC", "HWIO", "NHWC")
    return op(x, w, strides, padding, ld, rd, spec, groups)


def _golden_conv(x, w, case, mult):
    """Golden conv by explicit patches in NumPy and golden.matmul, summing over (window, channel) in order and
    leaving out the taps that land on holes of the lhs dilation (lax's semantics: they are not input elements);
    padding taps are zero operands."""
    _, _, strides, padding, ld, rd, groups = case
    nsp = x.ndim - 2
    ld = ld or (1,) * nsp
    rd = rd or (1,) * nsp
    win = w.shape[:nsp]
    if isinstance(padding, str):
        dil_in = [1 + d * (s - 1) for s, d in zip(x.shape[1:-1], ld, strict=True)]
        dil_w = [1 + d * (k - 1) for k, d in zip(win, rd, strict=True)]
        padding = lax.padtype_to_pads(dil_in, dil_w, strides, padding)
    # dilate and pad with explicit index arithmetic
    dil_shape = [1 + d * (s - 1) for s, d in zip(x.shape[1:-1], ld, strict=True)]
    xd = np.zeros((x.shape[0], *dil_shape, x.shape[-1]), F)
    xd[(slice(None),) + tuple(slice(None, None, d) for d in ld)] = x
    hole = np.ones(dil_shape, bool)
    hole[tuple(slice(None, None, d) for d in ld)] = False
    for i, (lo, hi) in enumerate(padding):
        ax = 1 + i
        if lo < 0:
            xd = np.take(xd, range(-lo, xd.shape[ax]), axis=ax)
            hole = np.take(hole, range(-lo, hole.shape[i]), axis=i)
        if hi < 0:
            xd = np.take(xd, range(0, xd.shape[ax] + hi), axis=ax)
            hole = np.take(hole, range(0, hole.shape[i] + hi), axis=i)
        pw = [(0, 0)] * xd.ndim
        pw[ax] = (max(lo, 0), max(hi, 0))
        xd = np.pad(xd, pw)
        hole = np.pad(hole, pw[1:-1], constant_values=False)  # padding is a zero operand, not a hole
    out = [(xd.shape[1 + i] - (1 + rd[i] * (win[i] - 1))) // strides[i] + 1 for i in range(nsp)]
    cg, o = w.shape[-2], w.shape[-1]
    og = o // groups
    res = np.zeros((x.shape[0], *out, o), F)
    for pos in itertools.product(*[range(n) for n in out]):
        rows, taps = [], []
        for offs in itertools.product(*[range(k) for k in win]):
            idx = tuple(p * s + k * r for p, s, k, r in zip(pos, strides, offs, rd, strict=True))
            if not hole[idx]:
                rows.append(xd[(slice(None),) + idx])  # (N, C)
                taps.append(offs)
        if not taps:
            continue  # the empty sum: +0
        patch = np.stack(rows, 1)  # (N, taps, C)
        wt = np.stack([w[t] for t in taps])  # (taps, Cg, O)
        for g in range(groups):
            a = patch[:, :, g * cg:(g + 1) * cg].reshape(x.shape[0], -1)
            b = wt[..., g * og:(g + 1) * og].reshape(-1, og)
            res[(slice(None),) + pos + (slice(g * og, (g + 1) * og),)] = golden.matmul(a, b, mult)
    return res


@pytest.mark.parametrize("case", CONV_CASES, ids=str)
def test_conv_exact_matches_lax(case, rng):
    x, w = _rand(rng, case[0]), _rand(rng, case[1])
    got = _conv(ann.conv_general_dilated(EXACT), x, w, case)
    want = _conv(lambda *a: lax.conv_general_dilated(*a[:7], feature_group_count=a[7], precision="highest"),
                 x, w, case)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", CONV_CASES, ids=str)
def test_conv_approx_matches_golden(case, rng):
    x, w = _rand(rng, case[0], False), _rand(rng, case[1], False)
    got = jax.jit(lambda a, b: _conv(ann.conv_general_dilated(MBM), a, b, case))(x, w)
    assert_bits_equal(np.asarray(got), _golden_conv(x, w, case, MBM))


@pytest.mark.parametrize("case", CONV_CASES, ids=str)
def test_conv_gradients_match_lax(case, rng):
    x, w = _rand(rng, case[0]), _rand(rng, case[1])
    native = lambda *a: lax.conv_general_dilated(*a[:7], feature_group_count=a[7], precision="highest")  # noqa
    cot = _rand(rng, _conv(native, x, w, case).shape)

    def loss(op):
        return lambda a, b: jnp.sum(_conv(op, a, b, case) * cot)

    got = jax.jit(jax.grad(loss(ann.conv_general_dilated(EXACT)), argnums=(0, 1)))(x, w)
    want = jax.grad(loss(native), argnums=(0, 1))(x, w)
    for g_, w_ in zip(got, want, strict=True):
        np.testing.assert_allclose(g_, w_, rtol=1e-5, atol=1e-5)


def test_conv_kernel_gradient_equals_golden_gemm(rng):
    # 1x1 conv: d(w) is exactly patches^T x g, d(x) is g x w^T
    x, w = _rand(rng, (2, 3, 4, 5), False), _rand(rng, (1, 1, 5, 6), False)
    g = _rand(rng, (2, 3, 4, 6), False)
    op = ann.conv_general_dilated(MBM, dlhs=MIT)
    _, vjp = jax.vjp(lambda a, b: op(a, b, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")), x, w)
    dx, dw = vjp(jnp.asarray(g))
    assert_bits_equal(np.asarray(dw).reshape(5, 6), golden.matmul(np.ascontiguousarray(x.reshape(-1, 5).T),
                                                                  g.reshape(-1, 6), MBM))
    assert_bits_equal(np.asarray(dx).reshape(-1, 5), golden.matmul(g.reshape(-1, 6),
                                                                   np.ascontiguousarray(w.reshape(5, 6).T), MIT))


HOLE_CASES = [
    CONV_CASES[2], CONV_CASES[4],
    ((1, 4, 4, 1), (3, 3, 1, 2), (1, 1), ((1, 1), (2, 0)), (2, 2), None, 1),
    ((2, 5, 3), (3, 3, 2), (2,), ((2, 1),), (3,), (2,), 1),  # 1-D: stride, rhs and lhs dilation together
]


def _native_conv(*a):
    return lax.conv_general_dilated(*a[:7], feature_group_count=a[7], precision="highest")


def _nonfinite_pattern(y):
    y = np.asarray(y)
    return np.where(np.isnan(y), 2, np.where(np.isposinf(y), 1, np.where(np.isneginf(y), -1, 0)))


@pytest.mark.parametrize("case", HOLE_CASES, ids=str)
def test_conv_lhs_dilation_holes_are_not_terms_padding_is(case, rng):
    x, w = _rand(rng, case[0]), _rand(rng, case[1])
    w.reshape(-1)[[0, 5]] = [np.inf, -np.inf]  # non-finite weights meet holes, padding and samples
    x.reshape(-1)[3] = np.nan
    got = _conv(ann.conv_general_dilated(MBM), x, w, case)
    assert_bits_equal(np.asarray(got), _golden_conv(x, w, case, MBM))


def test_conv_holes_times_inf_are_finite_as_in_lax(rng):
    # the case lax is consistent about: an Inf weight meets the holes of an lhs-dilated input, no padding
    x, w = _rand(rng, (2, 4, 4, 3)), _rand(rng, (3, 3, 3, 2))
    w[0, 0, 1, 0] = np.inf
    case = ((), (), (1, 1), ((0, 0), (0, 0)), (2, 2), None, 1)
    got = _conv(ann.conv_general_dilated(EXACT), x, w, case)
    want = _conv(_native_conv, x, w, case)
    np.testing.assert_array_equal(_nonfinite_pattern(got), _nonfinite_pattern(want))
    assert np.isfinite(np.asarray(want)).any()  # finite outputs exist: holes were not multiplied
    fin = np.isfinite(np.asarray(want))
    np.testing.assert_allclose(np.asarray(got)[fin], np.asarray(want)[fin], rtol=1e-5, atol=1e-5)


def _golden_kernel_gradient(x, g, w_shape, case, mult):
    """d(w) by its definition: for each tap, the sum over (n, output) in row-major order of x at that tap (a zero
    operand in the padding; holes are not terms) times g, through golden.matmul."""
    _, _, strides, padding, ld, rd, groups = case
    nsp = x.ndim - 2
    ld, rd = ld or (1,) * nsp, rd or (1,) * nsp
    win, cg, o = w_shape[:nsp], w_shape[-2], w_shape[-1]
    og = o // groups
    dil = [1 + d * (s - 1) for s, d in zip(x.shape[1:-1], ld, strict=True)]
    out = g.shape[1:-1]
    dw = np.zeros(w_shape, F)
    for t in itertools.product(*[range(k) for k in win]):
        xs, gs = [], []
        for n in range(x.shape[0]):
            for pos in itertools.product(*[range(k) for k in out]):
                u = [pos[i] * strides[i] + t[i] * rd[i] - padding[i][0] for i in range(nsp)]
                inside = all(0 <= u[i] < dil[i] for i in range(nsp))
                if inside and any(u[i] % ld[i] for i in range(nsp)):
                    continue  # a hole
                xs.append(x[(n,) + tuple(u[i] // ld[i] for i in range(nsp))] if inside else np.zeros(x.shape[-1], F))
                gs.append(g[(n,) + pos])
        if not xs:
            continue
        xs, gs = np.stack(xs), np.stack(gs)  # (R, C), (R, O)
        for gr in range(groups):
            a = np.ascontiguousarray(xs[:, gr * cg:(gr + 1) * cg].T)
            dw[t + (slice(None), slice(gr * og, (gr + 1) * og))] = golden.matmul(a, gs[:, gr * og:(gr + 1) * og], mult)
    return dw


@pytest.mark.parametrize("case", [c for c in HOLE_CASES if not isinstance(c[3], str)], ids=str)
def test_conv_kernel_gradient_with_non_finite_values_equals_golden(case, rng):
    x, w = _rand(rng, case[0], False), _rand(rng, case[1], False)
    x.reshape(-1)[2] = np.inf
    cot = _rand(rng, _conv(_native_conv, x, w, case).shape, False)
    cot.reshape(-1)[[0, cot.size // 2]] = [np.inf, np.nan]  # meets samples, padding zeros and holes
    _, vjp = jax.vjp(lambda b: _conv(ann.conv_general_dilated(MBM), x, b, case), w)
    (dw,) = vjp(jnp.asarray(cot))
    assert_bits_equal(np.asarray(dw), _golden_kernel_gradient(x, cot, w.shape, case, MBM))


@pytest.mark.parametrize("padding", ["VALID", ((0, 1), (0, 0)), ((-1, 0), (0, 0))])
def test_conv_window_longer_than_padded_input_gives_an_empty_output(padding, rng):
    x, w = _rand(rng, (2, 4, 4, 1)), _rand(rng, (6, 3, 1, 2))
    case = ((), (), (1, 1), padding, None, None, 1)
    want = _conv(_native_conv, x, w, case)
    got = _conv(ann.conv_general_dilated(MBM), x, w, case)
    assert got.shape == want.shape == (2, 0, 2, 2)
    gx, gw = jax.grad(lambda a, b: jnp.sum(_conv(ann.conv_general_dilated(MBM), a, b, case)), (0, 1))(x, w)
    lx, lw = jax.grad(lambda a, b: jnp.sum(_conv(_native_conv, a, b, case)), (0, 1))(x, w)
    assert_bits_equal(np.asarray(gx), np.asarray(lx))
    assert_bits_equal(np.asarray(gw), np.asarray(lw))


@pytest.mark.parametrize("padding", ["SAME", "VALID"])
def test_conv_string_padding_with_lhs_dilation_raises_as_lax(padding, rng):
    x, w = _rand(rng, (1, 4, 4, 1)), _rand(rng, (3, 3, 1, 1))
    case = ((), (), (1, 1), padding, (2, 2), None, 1)
    with pytest.raises(ValueError, match="String padding is not implemented for transposed convolution"):
        _conv(_native_conv, x, w, case)
    with pytest.raises(ValueError, match="String padding is not implemented for transposed convolution"):
        _conv(ann.conv_general_dilated(MBM), x, w, case)


def test_conv_nchw_layout(rng):
    x, w = _rand(rng, (2, 3, 6, 5), False), _rand(rng, (4, 3, 3, 3), False)
    got = ann.conv_general_dilated(MBM)(x, w, (1, 1), "SAME", dimension_numbers=("NCHW", "OIHW", "NCHW"))
    want = _golden_conv(x.transpose(0, 2, 3, 1), w.transpose(2, 3, 1, 0), ((), (), (1, 1), "SAME", None, None, 1),
                        MBM).transpose(0, 3, 1, 2)
    assert_bits_equal(np.asarray(got), want)


# ---- einsum ------------------------------------------------------------------------------------------------
def test_einsum_attention(rng):
    q, k = _rand(rng, (2, 5, 3, 4), False), _rand(rng, (2, 6, 3, 4), False)
    op = ann.einsum(MBM)  # MBM is symmetric, so einsum's operand swap cannot matter
    s = op("bqhd,bkhd->bhqk", q, k)
    want = golden.matmul(q.transpose(0, 2, 1, 3), k.transpose(0, 2, 3, 1), MBM)
    assert_bits_equal(np.asarray(s), want)
    v = _rand(rng, (2, 6, 3, 4), False)
    o = jax.jit(lambda s_, v_: op("bhqk,bkhd->bqhd", s_, v_))(s, v)
    want_o = golden.matmul(np.asarray(s), v.transpose(0, 2, 1, 3), MBM).transpose(0, 2, 1, 3)
    assert_bits_equal(np.asarray(o), want_o)


# ---- errors --------------------------------------------------------------------------------------------------
def test_errors():
    x = jnp.ones((2, 3), jnp.float32)
    with pytest.raises(amsim.UnsupportedError, match="not a float type"):
        ann.dot_general(MBM)(jnp.ones((2, 3), jnp.int32), x.T, (((1,), (0,)), ((), ())))
    with pytest.raises(amsim.UnsupportedError, match="unsigned"):
        ann.dot_general(amsim.multipliers.exact_int(8, signed=False))
    with pytest.raises(amsim.UnsupportedError, match="batch_group_count"):
        ann.conv_general_dilated(MBM)(jnp.ones((2, 4, 4, 2)), jnp.ones((1, 1, 2, 2)), (1, 1), "SAME",
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"), batch_group_count=2)
    with pytest.raises(TypeError, match="Multiplier"):
        ann.dot_general(3.5)
    with pytest.raises(ValueError, match="unknown multiplier"):
        ann.dot_general("nonexistent")
    i8 = amsim.multipliers.exact_int(8)
    with pytest.raises(amsim.UnsupportedError, match="overflow"):
        ann.dot_general(i8)(jnp.ones((1, 140000)), jnp.ones((140000, 1)), (((1,), (0,)), ((), ())))


def test_gpu_buffers_without_cupy_name_the_fix(monkeypatch, rng):
    """The callback given device buffers (a JAX with CUDA) where CuPy is missing: an error that says what to install."""
    import sys

    from amsim.nn._callback import _host_fn

    class DeviceBuffer:  # what buffer_callback hands over on a GPU: a CUDA array interface
        __cuda_array_interface__ = {"shape": (2, 2), "typestr": "<f4", "data": (1 << 20, False), "version": 3}

    monkeypatch.setitem(sys.modules, "cupy", None)  # "import cupy" raises ImportError
    with pytest.raises(ImportError, match=r"pip install 'amsim\[gpu\]'"):
        _host_fn(amsim.multipliers.mbm(7))(None, DeviceBuffer(), DeviceBuffer(), DeviceBuffer())


def test_im2col_golden_conv_is_the_golden_conv(rng):
    """The im2col golden conv (one golden.matmul, a hundred times faster) agrees with _golden_conv."""
    x, w = _rand(rng, (2, 9, 9, 3), False), _rand(rng, (3, 3, 3, 4), False)
    x[0, 4, 4, 1] = np.nan
    for padding, pad in (("VALID", 0), ("SAME", 1)):
        case = (x.shape, w.shape, (1, 1), padding, None, None, 1)
        assert_bits_equal(golden_conv2d_nhwc(x, w, MBM, 1, pad), _golden_conv(x, w, case, MBM))


def test_conv_on_the_cpu_reads_its_patches_from_the_padded_input(monkeypatch, rng):
    """LeNet-5-like convs (5 x 5 taps, 16 and 6 channels) take the kernels that decode patch rows from the padded
    input: the forward equals the golden conv with and without a NaN pixel and under vmap, and the gradients equal
    those computed through an explicit patch matrix."""
    from amsim.kernels import cpu
    from amsim.kernels.cpu import _gemm

    calls = []
    fused = _gemm._fused_narrow
    monkeypatch.setattr(_gemm, "_fused_narrow", lambda *a: calls.append(a[2] is not None) or fused(*a))
    conv = ann.conv_general_dilated(MBM)
    x, w = _rand(rng, (4, 14, 14, 16), False), _rand(rng, (5, 5, 16, 6), False)
    for padding, pad in (("VALID", 0), ("SAME", 2)):
        case = (x.shape, w.shape, (1, 1), padding, None, None, 1)
        for xi in (x, np.where(np.arange(14)[:, None] == 5, np.float32(np.nan), x)):
            got = jax.jit(lambda a, b: _conv(conv, a, b, case))(xi, w)  # noqa: B023
            assert_bits_equal(np.asarray(got), golden_conv2d_nhwc(xi, w, MBM, 1, pad))
    w35 = _rand(rng, (3, 5, 16, 6), False)  # (vmap's batch of two: K = 240 keeps both whole-K tables in L2)
    case = (x.shape, w35.shape, (1, 1), "VALID", None, None, 1)
    xs = np.stack([x, _rand(rng, x.shape, False)])
    got = jax.vmap(lambda a: _conv(conv, a, w35, case))(xs)
    for i in range(2):
        assert_bits_equal(np.asarray(got[i]), golden_conv2d_nhwc(xs[i], w35, MBM, 1, 0))
    assert calls == [True] * 5
    case = (x.shape, w.shape, (1, 1), "VALID", None, None, 1)

    cot = _rand(rng, (4, 10, 10, 6), False)
    grads = jax.jit(jax.grad(lambda a, b: jnp.sum(_conv(conv, a, b, case) * cot), argnums=(0, 1)))
    calls.clear()
    got = grads(x, w)  # the input gradient: a transposed conv of 6 channels to 16, 5 x 30 runs a patch row
    assert calls.count(True) == 1  # (the kernel gradient takes transposed patches; the loss needs no forward)

    def through_patch_matrix(xp, geo, b, out, m, truncate, kt):
        lead, n, _, _, c = xp.shape
        p = np.empty((lead, 1, out.shape[1], b.shape[1]), np.float32)
        cpu.conv_patches(xp, p, *geo, False)
        return cpu.gemm_f32(p[:, 0], b, out, m, truncate, kt)

    calls.clear()
    monkeypatch.setattr(cpu, "gemm_conv_f32", through_patch_matrix)
    want = jax.jit(jax.grad(lambda a, b: jnp.sum(_conv(conv, a, b, case) * cot), argnums=(0, 1)))(x, w)
    assert True not in calls
    for g_, w_ in zip(got, want, strict=True):
        assert_bits_equal(np.asarray(g_), np.asarray(w_))
