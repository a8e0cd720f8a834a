"""Convolution patch matrices written by amsim's CPU kernel (the JAX bridge's conv on the CPU) against XLA's
slices, bit for bit: every class of every test geometry (strides, dilations, groups, negative padding, 1-D),
both layouts, NaN payloads, signed zeros and subnormals, under vmap."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from amsim.nn import _conv

from .test_nn_ops import CONV_CASES


def _bits_matrix(rng, shape):
    x = rng.standard_normal(shape).astype(np.float32)
    u = x.view(np.uint32)
    flat = u.reshape(-1)
    picks = rng.choice(flat.size, size=min(flat.size, 6), replace=False)
    # quiet and signalling NaNs with payloads, -0.0, a subnormal, -Inf
    flat[picks] = np.array([0x7FC01234, 0x7F800001, 0x80000000, 0x00000003, 0xFF800000, 0xFFC00000],
                           np.uint32)[: picks.size]
    return x


def _geometries(case):
    """(padded input shape, class, strides, rhs dilation, groups) of the forward conv and of its input
    gradient (the transposed conv the bridge runs)."""
    xs, ws, strides, padding, ld, rd, groups = case
    nsp = len(xs) - 2
    ld = tuple(ld or (1,) * nsp)
    rd = tuple(rd or (1,) * nsp)
    window = ws[:nsp]
    pads = _conv._normalize_padding(padding, xs[1:-1], window, strides, ld, rd)
    out, classes = _conv._geometry(xs[1:-1], window, strides, pads, ld, rd)
    yield xs, pads, ld, classes, strides, rd, groups
    tpads = _conv._transpose_padding(xs[1:-1], window, strides, out, pads, ld, rd)
    gs = (xs[0],) + tuple(out) + (ws[-1],)
    _, tclasses = _conv._geometry(out, window, ld, tpads, strides, rd)
    yield gs, tpads, strides, tclasses, ld, rd, groups


@pytest.mark.parametrize("transposed", [False, True], ids=["rows", "cols"])
@pytest.mark.parametrize("case", CONV_CASES, ids=str)
def test_cpu_patch_matrix_equals_xla_bit_for_bit(case, transposed, rng):
    checked = 0
    for shape, pads, lhs_dil, classes, strides, rd, groups in _geometries(case):
        x = jnp.asarray(_bits_matrix(rng, shape))
        xp = _conv._padded(x, pads, lhs_dil)
        for cls in classes:
            if cls.ntaps == 0:
                continue
            geo = (cls, strides, rd, groups, transposed)
            got = jax.jit(lambda v, geo=geo: _conv._patch_matrix(v, *geo))(xp)
            want = _conv._xla_patch_matrix(xp, cls, strides, rd, groups, transposed)
            assert got.shape == want.shape
            np.testing.assert_array_equal(np.asarray(got).view(np.uint32), np.asarray(want).view(np.uint32))
            checked += 1
    assert checked


def test_cpu_patch_matrix_under_vmap(rng):
    # CONV_CASES[2]: strides, lhs dilation (several classes), groups
    shape, pads, lhs_dil, classes, strides, rd, groups = next(_geometries(CONV_CASES[2]))
    xb = jnp.asarray(_bits_matrix(rng, (3,) + shape))
    for cls in classes:
        if cls.ntaps == 0:
            continue
        for transposed in (False, True):
            def f(v, c=cls, t=transposed):
                return _conv._patch_matrix(_conv._padded(v, pads, lhs_dil), c, strides, rd, groups, t)

            def ref(v, c=cls, t=transposed):
                return _conv._xla_patch_matrix(_conv._padded(v, pads, lhs_dil), c, strides, rd, groups, t)

            got = jax.jit(jax.vmap(f))(xb)
            want = jax.vmap(ref)(xb)
            np.testing.assert_array_equal(np.asarray(got).view(np.uint32), np.asarray(want).view(np.uint32))


def test_patch_kernel_is_what_the_cpu_lowering_runs():
    xp = jnp.zeros((2, 6, 6, 3), jnp.float32)
    _, classes = _conv._geometry((6, 6), (3, 3), (1, 1), ((0, 0), (0, 0)), (1, 1), (1, 1))
    hlo = jax.jit(lambda v: _conv._patch_matrix(v, classes[0], (1, 1), (1, 1), 1, False)).lower(xp).as_text()
    assert "callback" in hlo
