"""The CuPy backend on a real GPU, bit for bit against the golden model. Skipped without a CUDA device.

Run on a GPU machine with ``pytest -m gpu`` (scripts/gpu_check.sh does, and saves the log; it sets
AMSIM_REQUIRE_GPU=1 so that a machine whose GPU CuPy cannot use fails instead of skipping everything).
"""

from __future__ import annotations

import os

import numpy as np
import pytest

import amsim
from amsim import golden
from amsim._operands import exponent_windows

from .support.bits import assert_bits_equal, mixed_matrix
from .support.golden_conv import golden_conv2d_nhwc

cp = pytest.importorskip("cupy", reason="CuPy is not installed")


def _device_count():
    try:
        return cp.cuda.runtime.getDeviceCount()
    except Exception:  # no driver, no device, driver too old
        return 0


if os.environ.get("AMSIM_REQUIRE_GPU") == "1" and _device_count() == 0:  # set by scripts/gpu_check.sh
    raise RuntimeError("AMSIM_REQUIRE_GPU=1 but CuPy sees no CUDA device; check the driver and CuPy's CUDA version.")

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(_device_count() == 0, reason="no CUDA device (cupy.cuda.runtime.getDeviceCount)")]

F = np.float32
LAYOUTS = [(False, False), (False, True), (True, False), (True, True)]


@pytest.fixture(scope="module")
def cuda():
    from amsim import gpu

    return gpu


def _dev(x):
    return cp.asarray(x)


def _host(x):
    return cp.asnumpy(x)


def _mult(name, m, rounding="nearest"):
    return getattr(amsim.multipliers, name)(m).with_rounding(rounding)


# ---- elementwise ------------------------------------------------------------------------------------------
# ---- float GEMM -------------------------------------------------------------------------------------------
SHAPES = [  # (batch, M, K, N)
    ((), 1, 1, 1), ((), 3, 17, 5), ((), 65, 33, 129), ((2,), 70, 37, 65), ((3,), 513, 21, 40),
    ((), 1030, 9, 37), ((), 2100, 64, 300), ((2,), 1024, 19, 33),
]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("name,m", [("mbm", 7), ("mitchell", 4), ("exact", 10), ("mbm", 11)])
def test_matmul_random_against_golden(shape, name, m, rng):
    mult = _mult(name, m)
    batch, m_rows, k, n = shape
    a = rng.standard_normal(batch + (m_rows, k)).astype(F)
    b = rng.standard_normal(batch + (k, n)).astype(F)
    out = cp.full(batch + (m_rows, n), cp.nan, F)
    amsim.matmul(_dev(a), _dev(b), mult, out=out)
    assert_bits_equal(_host(out), golden.matmul(a, b, mult))


@pytest.mark.parametrize("trans", LAYOUTS, ids=lambda t: "".join("T" if x else "N" for x in t))
@pytest.mark.parametrize("algo,m,rounding", [(a, m, r) for a in ("expand16", "expand", "gather")
                                             for m, r in ((7, "nearest"), (3, "truncate"), (1, "nearest"))
                                             if m >= 2 or a == "gather"])  # expand* start at m = 2
def test_gemm_layouts_algos_special_values(cuda, algo, trans, m, rounding, rng):
    mult = _mult("mbm", m, rounding)
    m_rows, k, n = (1100, 23, 70) if algo.startswith("expand") else (130, 45, 67)
    a = mixed_matrix(rng, (m_rows, k), 0.002)  # a few special operands: fast path and fix-up both run
    b = mixed_matrix(rng, (k, n), 0.002)
    # the stored operands: transposed storage when the layout says so, read in place through trans_a / trans_b
    da = _dev(np.ascontiguousarray(a.T)) if trans[0] else _dev(a)
    db = _dev(np.ascontiguousarray(b.T)) if trans[1] else _dev(b)
    got = cuda.gemm(da, db, mult, trans_a=trans[0], trans_b=trans[1], algo=algo)
    assert_bits_equal(_host(got), golden.matmul(a, b, mult))


@pytest.mark.parametrize("trans", LAYOUTS, ids=lambda t: "".join("T" if x else "N" for x in t))
@pytest.mark.parametrize("name,m,rounding", [("mitchell", 3, "truncate"), ("mitchell", 7, "nearest"),
                                             ("mitchell", 8, "nearest"), ("mitchell", 10, "truncate"),
                                             ("exact", 10, "nearest"), ("mitchell", 11, "nearest")])
def test_gemm_wide_layouts_special_values(cuda, trans, name, m, rounding, rng):
    mult = _mult(name, m, rounding)  # mitchell 8 and 10: the fp16-table variant; exact 10: float32 table
    a = mixed_matrix(rng, (2100, 19), 0.002)  # two row blocks, the second partial
    b = mixed_matrix(rng, (19, 40), 0.002)  # two full column blocks and a partial one
    da = _dev(np.ascontiguousarray(a.T)) if trans[0] else _dev(a)
    db = _dev(np.ascontiguousarray(b.T)) if trans[1] else _dev(b)
    got = cuda.gemm(da, db, mult, trans_a=trans[0], trans_b=trans[1], algo="wide")
    assert_bits_equal(_host(got), golden.matmul(a, b, mult))


@pytest.mark.parametrize("m", [3, 7, 10])
def test_gemm_dot_weight_gradient_shapes(cuda, m, rng):
    """Few outputs, long contraction (a conv weight gradient): the dot kernel, and the automatic choice."""
    mult = _mult("mbm", m)
    a = mixed_matrix(rng, (25, 5000), 0.0005)
    b = mixed_matrix(rng, (5000, 6), 0.0005)
    want = golden.matmul(a, b, mult)
    assert_bits_equal(_host(cuda.gemm(_dev(a), _dev(b), mult, algo="dot")), want)
    assert_bits_equal(_host(cuda.gemm(_dev(np.ascontiguousarray(a.T)), _dev(b), mult, trans_a=True)), want)
    sms, max_shared = cuda.device_limits()
    assert cuda.choose_algo(m, 1, 25, 6, sms, max_shared) == "dot"


def test_gemm_gather_large_m(cuda, rng):
    for m in (8, 10, 11):
        mult = _mult("mitchell", m)
        a = mixed_matrix(rng, (300, 40), 0.01)
        b = mixed_matrix(rng, (40, 90), 0.01)
        assert_bits_equal(_host(cuda.gemm(_dev(a), _dev(b), mult)), golden.matmul(a, b, mult))


def test_matmul_exponent_edges(rng):
    mult = _mult("mbm", 7)
    with np.errstate(over="ignore"):
        a = np.ldexp(rng.uniform(1, 2, (1100, 6)), rng.integers(-80, 81, (1100, 6))).astype(F)
        b = np.ldexp(rng.uniform(1, 2, (6, 64)), rng.integers(-80, 81, (6, 64))).astype(F)
    assert_bits_equal(_host(amsim.matmul(_dev(a), _dev(b), mult)), golden.matmul(a, b, mult))


@pytest.mark.parametrize("algo", ["expand16", "expand", "gather"])
def test_subnormal_sums_are_kept(cuda, algo, rng):
    """Products are normal or zero, but their sums can cancel into the subnormal range; the golden model keeps
    those (CuPy compiles with -ftz=true, which the kernels' explicit PTX arithmetic must override)."""
    mult = _mult("exact_truncated" if algo == "expand16" else "exact", 7)  # expand16: a bf16-exact table
    rows = 1100
    tiny = F(2.0**-63)
    a = np.tile(np.array([[tiny * F(1.0078125), tiny, F(1.0)]], F), (rows, 1))
    a[:, 2] = rng.standard_normal(rows).astype(F) * F(2.0**-140)  # subnormal operands: flushed, add +-0
    b = np.tile(np.array([[tiny], [-tiny], [F(1.0)]], F), (1, 40))
    want = golden.matmul(a, b, mult)
    assert (np.abs(want) < np.finfo(F).tiny).all() and (want != 0).all()  # all subnormal
    assert_bits_equal(_host(cuda.gemm(_dev(a), _dev(b), mult, algo=algo)), want)
    # the same through the exact fix-up path (a NaN elsewhere in the row flags it)
    a[:, 0] = np.where(np.arange(rows) % 2 == 0, a[:, 0], F(np.nan))
    assert_bits_equal(_host(cuda.gemm(_dev(a), _dev(b), mult, algo=algo)), golden.matmul(a, b, mult))


@pytest.mark.parametrize("algo,m", [("expand16", 7), ("expand", 7), ("wide", 10)])
def test_expand_kernels_exponent_edges(cuda, algo, m, rng):
    """Operand exponents at the edges of the window the kernels take (products near the top and the bottom of
    the normal range, sums that overflow or cancel into subnormals), a few just outside it (the exact fix-up).
    Exponents spread over -80..80 instead left 1-2 % of the outputs to the kernels."""
    mult = _mult("mitchell", m)
    a_lo, a_hi, b_lo, b_hi = exponent_windows(mult.table.values)[0]

    def edge_exponents(lo, hi, lines, k):
        """Per line (row of A, column of B) all at the window's low edge, all at its high edge, or mixed; 3 % just
        outside it."""
        ends = [rng.integers(lo, lo + 3, (lines, k)), rng.integers(hi - 2, hi + 1, (lines, k)),
                rng.choice([lo, lo + 1, -1, 0, 1, hi - 1, hi], (lines, k))]
        e = np.choose(rng.integers(0, 3, (lines, 1)), ends)
        return np.where(rng.random(e.shape) < 0.03, rng.choice([lo - 1, hi + 1], e.shape), e)

    a = np.ldexp(rng.uniform(1, 2, (1100, 9)), edge_exponents(a_lo, a_hi, 1100, 9)).astype(F)
    b = np.ldexp(rng.uniform(1, 2, (9, 130)), edge_exponents(b_lo, b_hi, 130, 9).T).astype(F)
    a *= rng.choice([-1, 1], a.shape).astype(F)
    b[:, 3] = 0.0  # a zero column: the expand16 kernel's keep = 0 path
    want = golden.matmul(a, b, mult)
    tiny = np.abs(want) < np.finfo(F).tiny
    assert np.isinf(want).any() and (tiny & (want != 0)).any()  # sums overflowed, sums cancelled into subnormals
    assert_bits_equal(_host(cuda.gemm(_dev(a), _dev(b), mult, algo=algo)), want)


@pytest.mark.parametrize("name,m,shape,kernel", [("mbm", 7, (4096, 40, 2048), "expand16"),
                                                 ("mbm", 10, (4096, 24, 1024), "wide")])
def test_large_problem_auto_choice_and_exact(cuda, name, m, shape, kernel, rng):
    """Problems large enough for the automatic choice to pick the fast kernels (checked; for mbm10 the wide
    kernel's fp16-table variant), spot-checked on rows at block edges."""
    mult = _mult(name, m)
    rows, k, cols = shape
    a = mixed_matrix(rng, (rows, k), 0.0005)
    b = mixed_matrix(rng, (k, cols), 0.0005)
    values = mult.table.values
    sms, max_shared = cuda.device_limits()
    assert cuda.choose_algo(m, 1, rows, cols, sms, max_shared, bf16_table=cuda.bf16_pair_table(values) is not None,
                            fp16_table=cuda.fp16_table(values) is not None) == kernel
    if kernel == "wide":
        assert cuda.fp16_table(values) is not None  # the fp16-table variant is the one that runs
    got = _host(amsim.matmul(_dev(a), _dev(b), mult))
    check = np.r_[0:3, 511:514, 2046:2050, rows - 3 : rows]
    assert_bits_equal(got[check], golden.matmul(a[check], b, mult))


# ---- integer and full-operand tables ------------------------------------------------------------------------
@pytest.mark.parametrize("algo", ["lut", "lutw"])
@pytest.mark.parametrize("trans", LAYOUTS, ids=lambda t: "".join("T" if x else "N" for x in t))
def test_gemm_int8_table_kernels(cuda, algo, trans, rng):
    mult = amsim.multipliers.exact_int(8, signed=True)
    a = rng.integers(-128, 128, (2100, 37))
    b = rng.integers(-128, 128, (37, 40))
    da = _dev(np.ascontiguousarray(a.T).astype(np.int32)) if trans[0] else _dev(a.astype(np.int32))
    db = _dev(np.ascontiguousarray(b.T).astype(np.int32)) if trans[1] else _dev(b.astype(np.int32))
    got = cuda.gemm(da, db, mult, trans_a=trans[0], trans_b=trans[1], algo=algo)
    np.testing.assert_array_equal(_host(got), golden.matmul(a, b, mult))
    sms, max_shared = cuda.device_limits()
    assert cuda.choose_lut_algo(8, 1, 4096, 4096, sms, max_shared) == "lutw"


# ---- convolution -----------------------------------------------------------------------------------------
CONV_CASES = [  # x shape, w shape, stride, padding, dilation, groups
    ((2, 9, 8, 4), (3, 3, 4, 6), 1, 1, 1, 1),
    ((1, 11, 10, 6), (3, 2, 3, 4), (2, 1), ((1, 2), (0, 1)), (1, 2), 2),
    ((2, 5, 5, 3), (1, 1, 3, 5), 2, 0, 1, 1),
    ((4, 32, 32, 16), (3, 3, 16, 32), 1, 1, 1, 1),
]


@pytest.mark.parametrize("case", range(len(CONV_CASES)))
def test_conv2d_nhwc_float(cuda, case, rng):

    xs, ws, stride, padding, dilation, groups = CONV_CASES[case]
    mult = _mult("mbm", 7)
    x = mixed_matrix(rng, xs, 0.002)
    w = rng.standard_normal(ws).astype(F)
    got = cuda.conv2d_nhwc(_dev(x), _dev(w), mult, stride, padding, dilation, groups, max_chunk_bytes=1 << 16)
    assert_bits_equal(_host(got), golden_conv2d_nhwc(x, w, mult, stride, padding, dilation, groups))


def test_conv2d_nhwc_int(cuda, rng):

    mult = amsim.multipliers.exact_int(8, signed=True)
    xs, ws, stride, padding, dilation, groups = CONV_CASES[1]
    x = rng.integers(-128, 128, xs).astype(np.int8)
    w = rng.integers(-128, 128, ws).astype(np.int8)
    got = cuda.conv2d_nhwc(_dev(x), _dev(w), mult, stride, padding, dilation, groups)
    np.testing.assert_array_equal(_host(got), golden_conv2d_nhwc(x, w, mult, stride, padding, dilation, groups))


# ---- replayed plans ---------------------------------------------------------------------------------------
def _replay_case(case, cuda, rng):
    """(run, want) for one call of a replay case on fresh random data: run() gives the device result."""

    mbm7 = _mult("mbm", 7)
    if case == "conv":  # several im2col chunks, each an encode + dot/expand GEMM + fix-up
        x, w = mixed_matrix(rng, (3, 12, 11, 5), 0.002), rng.standard_normal((3, 3, 5, 8)).astype(F)
        return (lambda: cuda.conv2d_nhwc(_dev(x), _dev(w), mbm7, 1, 1, max_chunk_bytes=1 << 13),
                golden_conv2d_nhwc(x, w, mbm7, 1, 1, 1, 1))
    if case in ("lut", "lutw"):
        mult = amsim.multipliers.exact_int(8, signed=True)
        a, b = rng.integers(-128, 128, (300, 37)), rng.integers(-128, 128, (40, 37))
        return (lambda: cuda.gemm(_dev(a.astype(np.int32)), _dev(b.astype(np.int32)), mult, trans_b=True, algo=case),
                golden.matmul(a, b.T, mult))
    if case == "aliased":  # A and B^T are one buffer: not replayable (which operand a view came from is ambiguous)
        a = mixed_matrix(rng, (70, 45), 0.002)
        return lambda: (lambda d: cuda.gemm(d, d, mbm7, trans_b=True))(_dev(a)), golden.matmul(a, a.T, mbm7)
    if case == "strided":  # neither inner axis has unit stride: copied first, so not replayable
        a, b = mixed_matrix(rng, (140, 90), 0.002), rng.standard_normal((45, 30)).astype(F)
        return lambda: cuda.gemm(_dev(a)[::2, ::2], _dev(b), mbm7), golden.matmul(a[::2, ::2], b, mbm7)
    algo, mult, a_shape, b_shape = {
        "dot": ("dot", mbm7, (25, 3000), (3000, 6)),  # zeroed code padding, two encodes
        "expand16": ("expand16", mbm7, (1, 600, 23), (3, 23, 70)),  # A broadcast over the batch (stride 0)
        "wide": ("wide", _mult("mitchell", 10), (2100, 19), (19, 40)),
        "gather": ("gather", _mult("mbm", 11, "truncate"), (130, 45), (45, 67)),
    }[case]
    a, b = mixed_matrix(rng, a_shape, 0.002), mixed_matrix(rng, b_shape, 0.002)
    return lambda: cuda.gemm(_dev(a), _dev(b), mult, algo=algo), golden.matmul(a, b, mult)


@pytest.mark.parametrize("case", ["dot", "expand16", "wide", "gather", "lut", "lutw", "conv", "aliased", "strided"])
def test_replayed_plans_match_golden(cuda, case, rng, monkeypatch):
    """A call with a signature seen before replays the recorded plan (raw pointers into its operands and one
    fresh scratch buffer); fresh data and fresh scratch memory each time, bit for bit against the golden model.
    Plans that do work outside their launches, or whose operands overlap, are never replayed."""
    replays = []
    from amsim.kernels.cuda import _runtime

    monkeypatch.setattr(_runtime, "_replay", lambda rp, ops, f=_runtime._replay: replays.append(1) or f(rp, ops))
    cuda.clear_plan_cache()
    replayable = case not in ("aliased", "strided")
    for call in range(3):
        run, want = _replay_case(case, cuda, rng)
        got = run()
        if want.dtype == np.float32:
            assert_bits_equal(_host(got), want)
        else:
            np.testing.assert_array_equal(_host(got), want)
        assert len(replays) == (call if replayable else 0)


# ---- the JAX bridge on the GPU: buffer_callback hands XLA's device buffers and stream to the CUDA kernels -------
def _jax_gpu():
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # JAX shares the card with CuPy
    try:
        import jax

        return [d for d in jax.devices() if d.platform == "gpu"]
    except Exception:  # JAX without CUDA support
        return []


class _XlaBuffer:
    """Stands in for the device buffers buffer_callback hands over: only ``__cuda_array_interface__``."""

    def __init__(self, iface):
        self.__cuda_array_interface__ = iface


def test_jax_bridge_callback_on_device_buffers(rng):
    """The bridge's GPU callback, called as buffer_callback calls it: views of the buffers, XLA's stream."""
    from amsim.nn._callback import _as_cupy, _host_fn

    mult = amsim.multipliers.mbm(7)
    a = rng.standard_normal((2, 30, 17)).astype(F)
    b = rng.standard_normal((2, 17, 9)).astype(F)
    da, db = _dev(a), _dev(b)
    out = cp.full((2, 30, 9), cp.nan, F)

    class Ctx:
        stream = cp.cuda.Stream().ptr  # XLA's stream: not CuPy's current one

    _host_fn(mult)(Ctx(), *(_XlaBuffer(x.__cuda_array_interface__) for x in (out, da, db)))
    cp.cuda.Device().synchronize()
    assert_bits_equal(_host(out), golden.matmul(a, b, mult))
    view = _as_cupy(_XlaBuffer(da.__cuda_array_interface__))
    view[1, 2, 3] = 5.0  # a view of the buffer, not a copy
    assert float(_host(da)[1, 2, 3]) == 5.0
    empty = _as_cupy(_XlaBuffer({"shape": (0, 4), "typestr": "<f4", "data": (0, False), "version": 3}))
    assert empty.shape == (0, 4) and empty.dtype == F
    with pytest.raises(amsim.UnsupportedError, match="row-major"):
        _as_cupy(_XlaBuffer(da.swapaxes(1, 2).__cuda_array_interface__))


def test_jax_bridge_callback_out_of_memory_names_the_fix(rng, monkeypatch):
    """JAX holds most of the card by default: when the kernels' scratch does not fit, the error says what to set."""
    from amsim.nn._callback import _host_fn

    def full(*args, **kwargs):
        raise cp.cuda.memory.OutOfMemoryError(1 << 20, 1 << 30)

    mult = amsim.multipliers.mitchell(6)
    da, db = _dev(rng.standard_normal((30, 17)).astype(F)), _dev(rng.standard_normal((17, 9)).astype(F))
    out = cp.empty((30, 9), F)
    monkeypatch.setattr(cp, "empty", full)
    monkeypatch.setattr(cp, "zeros", full)

    class Ctx:
        stream = cp.cuda.Stream().ptr

    with pytest.raises(MemoryError, match="XLA_PYTHON_CLIENT_PREALLOCATE=false"):
        _host_fn(mult)(Ctx(), *(_XlaBuffer(x.__cuda_array_interface__) for x in (out, da, db)))


def test_jax_bridge_on_gpu_forward_and_gradients(rng):
    devs = _jax_gpu()
    if not devs:
        if os.environ.get("AMSIM_REQUIRE_GPU") == "1":
            pytest.fail("AMSIM_REQUIRE_GPU=1 but JAX sees no GPU (is the CUDA build of jaxlib installed?)")
        pytest.skip("JAX has no GPU backend here")
    import jax
    import jax.numpy as jnp

    from amsim import nn as ann

    mbm, mit = amsim.multipliers.mbm(7), amsim.multipliers.mitchell(5)
    a = rng.standard_normal((96, 40)).astype(F)
    b = rng.standard_normal((40, 72)).astype(F)
    g = rng.standard_normal((96, 72)).astype(F)
    dg = ann.dot_general(mbm, dlhs=mit, drhs=mbm)
    dn = (((1,), (0,)), ((), ()))
    ja, jb = jax.device_put(a, devs[0]), jax.device_put(b, devs[0])
    out, vjp = jax.vjp(jax.jit(lambda x, y: dg(x, y, dn)), ja, jb)
    da, db = vjp(jax.device_put(g, devs[0]))
    assert_bits_equal(np.asarray(out), golden.matmul(a, b, mbm))
    assert_bits_equal(np.asarray(da), golden.matmul(g, np.ascontiguousarray(b.T), mit))
    assert_bits_equal(np.asarray(db), golden.matmul(np.ascontiguousarray(a.T), g, mbm))
    # a conv under jit + grad runs end to end on the device and matches the CPU bridge bit for bit
    x = rng.standard_normal((4, 9, 9, 3)).astype(F)
    w = rng.standard_normal((3, 3, 3, 8)).astype(F)
    cv = ann.conv_general_dilated(mbm)

    def loss(x_, w_):
        return jnp.sum(cv(x_, w_, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")) ** 2)

    gpu = jax.jit(jax.grad(loss, argnums=(0, 1)))(jax.device_put(x, devs[0]), jax.device_put(w, devs[0]))
    host = jax.devices("cpu")[0]  # the same jitted function, placed by its inputs
    cpu = jax.jit(jax.grad(loss, argnums=(0, 1)))(jax.device_put(x, host), jax.device_put(w, host))
    for g_, c_ in zip(gpu, cpu, strict=True):
        assert_bits_equal(np.asarray(g_), np.asarray(c_))
