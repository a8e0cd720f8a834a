"""Results do not depend on the calling thread's floating-point control state (FTZ/DAZ, as in XLA's threads)."""

import threading

import jax
import jax.numpy as jnp
import numba
import numpy as np
import pytest
from numba import prange

import amsim
from amsim import _fpenv, golden
from amsim import nn as ann

from .support.bits import assert_bits_equal, mixed_matrix

pytestmark = pytest.mark.skipif(not _fpenv.MANAGED, reason="amsim manages the FP state on x86-64 and AArch64 only")
F = np.float32
X86 = _fpenv.DEFAULT == 0x1F80


def _tiny(rng, shape):
    """Operands of 2**-63 and 2**-62: their products lie just above 2**-126 (normal, so the kernels compute them,
    not the exact path), and sums of opposite signs end or pass through subnormals."""
    e = rng.integers(-63, -61, size=shape)
    sig = 1.0 + rng.integers(0, 128, size=shape) / 128.0
    return (rng.choice([-1.0, 1.0], size=shape) * sig * 2.0**e).astype(F)


def _cases(rng):
    m7, mbm = amsim.multipliers.exact(7), amsim.multipliers.mbm(7)
    yield "issue example", np.array([[1.5 * 2.0**-63, 2.0**-63]], F), np.array([[2.0**-63], [-2.0**-63]], F), m7
    a, b = _tiny(rng, (5, 40)), _tiny(rng, (40, 3))
    a[0], b[:, 0] = 0.0, 0.0  # one sum that certainly ends subnormal: 1.5 * 2**-126 - 2**-126
    a[0, :2], b[:2, 0] = (1.5 * 2.0**-63, 2.0**-63), (2.0**-63, -(2.0**-63))
    yield "small problem", a, b, mbm
    yield "expansion, parallel", _tiny(rng, (300, 64)), _tiny(rng, (64, 70)), mbm
    yield "fused narrow expansion", _tiny(rng, (2000, 64)), _tiny(rng, (64, 6)), mbm
    a = _tiny(rng, (40, 30))
    a[3, 4] = np.inf  # a flagged row: the scalar fix-up path
    yield "fix-up path", a, _tiny(rng, (30, 20)), m7


def _subnormals_in(x):
    return int(np.sum((x != 0) & (np.abs(x) < np.finfo(F).tiny)))


def test_cases_do_produce_subnormal_sums(rng):
    for label, a, b, m in _cases(rng):
        assert _subnormals_in(golden.matmul(a, b, m)) > 0, label


def _in_thread(fn, state):
    out = {}

    def run():
        old = _fpenv.get_state()
        _fpenv.set_state(state)
        try:
            out["result"] = fn()
            out["after"] = _fpenv.get_state()
        finally:
            _fpenv.set_state(old)

    t = threading.Thread(target=run)
    t.start()
    t.join()
    return out


@pytest.mark.skipif(not X86, reason="MXCSR bits")
def test_matmul_and_multiply_from_a_thread_with_ftz_daz(rng):
    ftz = _fpenv.DEFAULT | _fpenv.FTZ_DAZ
    for label, a, b, m in _cases(rng):
        want = golden.matmul(a, b, m)
        got = _in_thread(lambda: amsim.matmul(a, b, m), ftz)  # noqa: B023
        assert_bits_equal(got["result"], want)
        assert got["after"] & _fpenv.FTZ_DAZ == _fpenv.FTZ_DAZ, label  # the caller's state is given back
        # the golden model itself is independent of the thread's state too
        assert_bits_equal(_in_thread(lambda: golden.matmul(a, b, m), ftz)["result"], want)  # noqa: B023
    x = mixed_matrix(rng, (64,))
    x[:8] = np.uint32([0x00400000, 0x80000001, 0x007FFFFF, 1, 2, 3, 0x00800000, 0x00000100]).view(F)
    m = amsim.multipliers.mitchell(7)
    assert_bits_equal(_in_thread(lambda: amsim.multiply(x, x[::-1].copy(), m), ftz)["result"],
                      golden.multiply(x, x[::-1], m))


@numba.njit(parallel=True)
def _poison_workers(n, state):
    """Leave FTZ/DAZ set in Numba's worker threads (as if the pool had been started from an XLA thread)."""
    acc = 0
    for i in prange(n):
        _fpenv._set(state)
        acc += i
    return acc


@pytest.mark.skipif(not X86, reason="MXCSR bits")
def test_numba_workers_started_with_ftz_daz(rng):
    m = amsim.multipliers.mbm(7)
    cases = [(_tiny(rng, (512, 128)), _tiny(rng, (128, 96))), (_tiny(rng, (3000, 64)), _tiny(rng, (64, 6))),
             (_tiny(rng, (25, 20000)), _tiny(rng, (20000, 6)))]  # expansion, fused narrow, gather kernel
    _poison_workers(1 << 16, _fpenv.DEFAULT | _fpenv.FTZ_DAZ)
    try:
        for a, b in cases:
            assert_bits_equal(amsim.matmul(a, b, m), golden.matmul(a, b, m))
    finally:
        _poison_workers(1 << 16, _fpenv.DEFAULT)


def test_jax_bridge_under_jit_keeps_subnormal_sums(rng):
    for _label, a, b, m in _cases(rng):
        want = golden.matmul(a, b, m)
        got = jax.jit(lambda x, y: ann.bmm(x, y, m))(a, b)  # noqa: B023  (XLA's callback thread: FTZ/DAZ on)
        assert_bits_equal(np.asarray(got), want)
    a, b = _tiny(rng, (8, 64)), _tiny(rng, (64, 16))
    m = amsim.multipliers.mbm(7)
    dg = ann.dot_general(m)
    got = jax.jit(lambda x, y: dg(x, y, (((1,), (0,)), ((), ()))))(jnp.asarray(a), jnp.asarray(b))
    assert_bits_equal(np.asarray(got), golden.matmul(a, b, m))


def test_table_built_inside_an_xla_callback_is_the_default_state_table():
    # a model whose arithmetic goes through subnormals: its table must not depend on the building thread
    @amsim.multiplier(mantissa_bits=3, name="via_tiny")
    def via_tiny(x, y):
        t = (x * 2.0**-1030) * y  # float64 subnormal intermediate
        return (t * 2.0**1000) * 2.0**30

    ref = via_tiny.table.values.copy()

    @amsim.multiplier(mantissa_bits=3, name="via_tiny2")
    def via_tiny2(x, y):
        t = (x * 2.0**-1030) * y
        return (t * 2.0**1000) * 2.0**30

    a = np.ones((1, 2), F)
    jax.jit(lambda x: ann.bmm(x, x.T, via_tiny2))(a).block_until_ready()  # first use, inside the callback
    np.testing.assert_array_equal(via_tiny2.table.values, ref)
