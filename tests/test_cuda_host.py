"""The CUDA code on the host, bit for bit against the golden model (no GPU needed).

1. ``amsim_product.cuh`` compiled by the host C++ compiler: the scalar semantics (rounding, decode, table
   lookup, exponent assembly, special values) on random operands and on a special-value matrix.
2. ``amsim_gemm.cu`` compiled by the host compiler with a small emulation of the CUDA execution model
   (tests/emulated_cuda.py: CUDA threads as fibers, ``__syncthreads`` as a barrier, blocks one after another,
   shared memory poisoned before every block), running the launch plans of ``amsim/kernels/cuda/_plan.py`` on
   NumPy arrays: tile loading, decoding, the expand and gather GEMMs in every layout, the exact fix-up, the
   integer GEMM, the elementwise kernels and the im2col convolution.

Warp-level behaviour (bank conflicts, speed) is not emulated; tests/test_gpu.py checks the real thing.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np
import pytest

import amsim
from amsim import golden
from amsim._operands import exponent_windows
from amsim.kernels.cuda import _plan as cuda  # the launch plans: pure, no CuPy needed

from .support import emulated_cuda as emu
from .support.bits import assert_bits_equal, special_values
from .support.golden_conv import golden_conv2d_nhwc

F = np.float32
pytestmark = pytest.mark.skipif(emu.CXX is None, reason="no host C++ compiler (g++ or clang++) on PATH")


def _lib_or_fail(build):
    try:
        return build()
    except RuntimeError as err:  # a compile error in the kernel sources: a failure, not an error in set-up
        pytest.fail(str(err))


# ---------------------------------------------------------------------------------------------------------
# 1. the scalar product
# ---------------------------------------------------------------------------------------------------------
PRODUCT_SRC = (Path(emu.__file__).parent / "product_host.cpp").read_text()


@pytest.fixture(scope="module")
def product_lib(tmp_path_factory):
    lib = _lib_or_fail(lambda: emu.compile_host(tmp_path_factory.mktemp("amsim_product"), "amsim_product",
                                                PRODUCT_SRC))
    ptr = ctypes.c_void_p
    lib.host_multiply.argtypes = [ptr, ptr, ptr, ctypes.c_longlong, ctypes.c_int, ctypes.c_int, ptr]
    lib.host_round.argtypes = [ptr, ptr, ctypes.c_longlong, ctypes.c_int, ctypes.c_int]
    return lib


def host_multiply(lib, a, b, mult):
    a, b = np.broadcast_arrays(np.asarray(a, F), np.asarray(b, F))
    a, b = np.ascontiguousarray(a), np.ascontiguousarray(b)
    out = np.full(a.shape, np.nan, F)  # poisoned
    lut = cuda.float_host_tables(mult.table.values)[0]
    lib.host_multiply(a.ctypes.data, b.ctypes.data, out.ctypes.data, a.size, mult.mantissa_bits,
                      int(mult.rounding == "truncate"), lut.ctypes.data)
    return out


def _odd_table(m, rng):
    """Zeros (both signs), subnormal entries, entries from 2**-140 to 2**100: every branch of the assembly."""
    n = 1 << m
    v = (2.0 ** rng.integers(-140, 100, (n, n)) * rng.uniform(1, 2, (n, n))).astype(F)
    v[rng.random((n, n)) < 0.1] = 0.0
    v[rng.random((n, n)) < 0.05] = -0.0
    v[0, 0] = np.uint32(0x00000001).view(F)  # smallest subnormal
    return amsim.Multiplier.from_table(v, name=f"odd{m}")


def _edge_values(m):
    """Special values plus, for this m, values around every rounding carry and tie."""
    shift = 23 - m
    base = [0x3F800000, 0x00800000, 0x7F000000, 0x7F7FFFFF, 0x00000000, 0x3FFFFFFF, 0x4B7FFFFF]
    u = []
    for b in base:
        hi = b | ((1 << shift) - 1)  # all dropped bits set: rounds up (carry)
        tie = (b & ~((1 << shift) - 1)) | (1 << (shift - 1))
        u += [b, hi, tie, tie + (1 << shift), tie - 1, tie + 1]
    u = np.array(u, dtype=np.uint64) & 0x7FFFFFFF
    u = np.concatenate([u, u | 0x80000000]).astype(np.uint32)
    return np.concatenate([special_values(), u.view(F)])


def _range_pairs(rng, n):
    """Operand pairs whose products land around 2**128 and 2**-126 (and everywhere in between)."""
    ea = rng.integers(-126, 128, n)
    target = rng.choice([-127, -126, -125, 126, 127, 128], n) + rng.integers(-2, 3, n)
    eb = np.clip(target - ea, -126, 127)
    with np.errstate(over="ignore"):  # 1.99999999 * 2**127 rounds to Inf in float32: a fine test value too
        a = np.ldexp(rng.uniform(1, 2, n), ea).astype(F)
        b = np.ldexp(rng.uniform(1, 2, n), eb).astype(F)
    return a * rng.choice([-1, 1], n).astype(F), b


PRODUCT_CASES = [
    ("mbm", 7), ("mitchell", 7), ("exact", 7), ("mbm", 1), ("mitchell", 3), ("exact", 4),
    ("exact", 10), ("mbm", 11), ("mitchell", 11), ("odd", 2), ("odd", 6),
]
COMPARED = {"values": 0}


@pytest.mark.parametrize("rounding", ["nearest", "truncate"])
@pytest.mark.parametrize("kind,m", PRODUCT_CASES)
def test_host_product_matches_golden(product_lib, kind, m, rounding, rng):
    mult = _odd_table(m, rng) if kind == "odd" else getattr(amsim.multipliers, kind)(m)
    mult = mult.with_rounding(rounding)
    ev = _edge_values(m)
    ga, gb = np.meshgrid(ev, ev, indexing="ij")
    n = 40000
    with np.errstate(over="ignore"):
        wa = np.ldexp(rng.uniform(1, 2, n), rng.integers(-130, 129, n)).astype(F) * rng.choice([-1, 1], n).astype(F)
        wb = np.ldexp(rng.uniform(1, 2, n), rng.integers(-130, 129, n)).astype(F)
    ra, rb = _range_pairs(rng, n)
    na, nb = rng.standard_normal(n).astype(F), rng.standard_normal(n).astype(F)
    a = np.concatenate([ga.ravel(), wa, ra, na])
    b = np.concatenate([gb.ravel(), wb, rb, nb])
    got = host_multiply(product_lib, a, b, mult)
    want = golden.multiply(a, b, mult)
    assert_bits_equal(got, want)
    # the comparison must have seen every kind of result
    assert np.isnan(want).any() and np.isinf(want).any() and (want == 0).any() and np.signbit(want[want == 0]).any()
    COMPARED["values"] += a.size


@pytest.mark.parametrize("m", [1, 5, 7, 10, 11])
@pytest.mark.parametrize("rounding", ["nearest", "truncate"])
def test_host_rounding_matches_quantize(product_lib, m, rounding, rng):
    u = rng.integers(0, 2**32, 200000, dtype=np.uint64).astype(np.uint32)
    u[:4] = [0x7F7FFFFF, 0xFF7FFFFF, 0x7F800001, 0x007FFFFF]
    out = np.zeros_like(u)
    product_lib.host_round(u.ctypes.data, out.ctypes.data, u.size, m, int(rounding == "truncate"))
    assert_bits_equal(out.view(F), golden.quantize(u.view(F), m, rounding))


def test_tame_ranges_keep_every_intermediate_normal(rng):
    """The fast path's exactness rests on these ranges: check the claim on the extremes of many tables."""
    for scale in (-140, -60, -25, 0, 30, 100):
        v = (amsim.multipliers.mbm(4).table.values * F(2.0**scale)).astype(F)
        v[rng.random(v.shape) < 0.1] = 0.0
        a_lo, a_hi, b_lo, b_hi = exponent_windows(v)[0]
        e = np.frexp(v[v > 0].astype(np.float64))[1] - 1
        if a_lo > a_hi:  # empty: only possible when no split around 0 exists
            assert e.min() < -126 or e.max() > 127 or (-126 - e.min()) > 0 or (127 - e.max()) < 0
            continue
        assert a_lo <= 0 <= a_hi and -126 <= min(a_lo, b_lo) and max(a_hi, b_hi) <= 127
        for pe in (e.min(), e.max()):
            assert -126 <= pe + b_lo and pe + b_hi <= 127  # p * 2**eb
            assert -126 <= pe + a_lo + b_lo and pe + a_hi + b_hi <= 127  # the product
        # and the range is as wide as the split allows: one more step would leave the normal range
        assert e.min() + a_lo + b_lo - 1 < -126 or a_lo == -126 or b_lo == -126


# ---------------------------------------------------------------------------------------------------------
# 2. the kernels under a host emulation of CUDA
# ---------------------------------------------------------------------------------------------------------
# the instantiations the host tests use (compiling all of them takes longer; tests/test_gpu_emulated.py does)
EXPAND_M = (2, 4, 7)
EXPAND16_M = (2, 4, 7)
WIDE_M = (2, 7, 8, 10, 11)
DOT_M = (1, 7, 8, 11)
GATHER_M = (2, 4, 8, 11)
LUT_BITS = (3, 8)
LAYOUTS = (0, 1, 2, 3)
HOST_TEST_KERNELS = (
    [f"amsim_gemm_{a}_f32<{m}, {t}>" for a, ms in (("expand", EXPAND_M), ("expand16", EXPAND16_M)) for m in ms
     for t in (0, 1)]
    + [f"amsim_gemm_wide_f32<{m}, {t}, 0>" for m in WIDE_M for t in (0, 1)]
    + [f"amsim_gemm_wide_f32<{m}, {t}, 1>" for m in (8, 10) for t in (0, 1)]
    + [f"amsim_encode_a<{m}, {t}, 0>" for m in EXPAND16_M for t in (0, 1)]
    + [f"amsim_encode_a<{m}, {t}, 1>" for m in WIDE_M for t in (0, 1)]
    + [f"amsim_encode_a<{m}, {t}, {f}>" for m in DOT_M for t in (0, 1) for f in (2, 3)]
    + [f"amsim_gemm_dot_f32<{m}>" for m in DOT_M]
    + [f"amsim_gemm_gather_f32<{m}, {lay}>" for m in GATHER_M for lay in LAYOUTS]
    + [f"amsim_gemm_fixup_f32<{m}, {lay}>" for m in sorted(set(EXPAND_M + EXPAND16_M + WIDE_M + GATHER_M + DOT_M))
       for lay in LAYOUTS]
    + [f"amsim_gemm_{k}<{t}, {b}, {lay}>" for k in ("lut", "lutw") for t in ("int", "float") for b in LUT_BITS
       for lay in LAYOUTS]
    + ["amsim_multiply_f32<7>", "amsim_multiply_f32<11>", "amsim_multiply_lut<int, 3>", "amsim_multiply_lut<int, 8>",
       "amsim_multiply_lut<float, 8>", "amsim_im2col_nhwc<float>", "amsim_im2col_nhwc<int>"]
)


@pytest.fixture(scope="module")
def emu_lib(tmp_path_factory):
    return _lib_or_fail(lambda: emu.build(tmp_path_factory.mktemp("amsim_emu"), HOST_TEST_KERNELS))


emu_run = emu.emu_run


def _stored(x, transposed):
    """x (nb, p, q) as a view whose storage is transposed (q, p contiguous) when asked."""
    if not transposed:
        return np.ascontiguousarray(x)
    return np.ascontiguousarray(np.swapaxes(x, 1, 2)).swapaxes(1, 2)


def _sparse_specials(rng, x, count):
    sv = special_values()
    flat = x.reshape(-1)
    flat[rng.integers(0, flat.size, count)] = sv[rng.integers(0, sv.size, count)]
    return x


def emu_gemm_f32(lib, a3, b3, mult, algo, layout=0):
    out = np.full((a3.shape[0], a3.shape[1], b3.shape[2]), np.nan, F)  # poisoned
    av, bv = _stored(a3, layout & 2), _stored(b3, layout & 1)
    tables = cuda.float_host_tables(mult.table.values)
    plan = cuda.plan_gemm_f32(av, bv, out, mult.mantissa_bits, mult.rounding == "truncate", tables, np, algo)
    if algo in ("expand16", "expand", "wide"):  # the A encoder (A's layout bit), then the GEMM (B's)
        assert plan[0].kernel.endswith(f", {layout >> 1}, {int(algo == 'wide')}>"), plan[0].kernel
        b_bit = f"<{mult.mantissa_bits}, {layout & 1}"
        assert plan[1].kernel.startswith(f"amsim_gemm_{algo}_f32{b_bit}"), plan[1].kernel
        if algo == "wide":  # the fp16 table wherever the table allows it
            assert plan[1].kernel.endswith(f", {int(tables[4] is not None)}>"), plan[1].kernel
    elif algo == "dot":  # the A encoder, the B^T encoder (B stored K x N is B^T stored transposed), the GEMM
        assert plan[0].kernel.endswith(f", {layout >> 1}, 2>"), plan[0].kernel
        assert plan[1].kernel.endswith(f", {1 - (layout & 1)}, 3>"), plan[1].kernel
    else:
        assert plan and plan[0].kernel.endswith(f", {layout}>"), plan[0].kernel
    emu_run(lib, plan)
    return out


GEMM_CASES = [  # algo, multiplier, (nb, M, K, N)
    ("expand16", ("mbm", 7), (2, 530, 9, 70)),
    ("expand16", ("mitchell", 4), (1, 300, 13, 129)),
    ("expand16", ("exact_truncated", 2), (1, 40, 6, 33)),
    ("wide", ("mbm", 8), (2, 1100, 9, 37)),
    ("wide", ("exact", 7), (1, 2100, 7, 16)),
    ("wide", ("mitchell", 2), (1, 30, 11, 5)),
    ("wide", ("mbm", 10), (1, 2100, 6, 33)),
    ("wide", ("exact", 10), (1, 300, 6, 20)),
    ("dot", ("mbm", 7), (2, 25, 700, 6)),
    ("dot", ("exact", 1), (1, 9, 40, 130)),
    ("dot", ("mitchell", 11), (1, 150, 90, 3)),
    ("dot", ("mbm", 8), (1, 3, 33, 2)),
    ("wide", ("mitchell", 11), (1, 70, 5, 17)),
    ("expand", ("mbm", 7), (2, 1030, 9, 37)),
    ("expand", ("mitchell", 4), (1, 300, 13, 70)),
    ("expand", ("exact", 2), (1, 40, 6, 33)),
    ("gather", ("mbm", 8), (2, 70, 37, 65)),
    ("gather", ("mitchell", 11), (1, 65, 20, 3)),
    ("gather", ("exact", 2), (3, 5, 17, 66)),
    ("gather", ("mitchell", 4), (1, 64, 33, 64)),
]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("algo,mspec,shape", GEMM_CASES)
def test_emulated_gemm_f32(emu_lib, algo, mspec, shape, layout, rng):
    mult = getattr(amsim.multipliers, mspec[0])(mspec[1])
    if layout == 3:
        mult = mult.with_rounding("truncate")
    nb, m_rows, k, n = shape
    a = rng.standard_normal((nb, m_rows, k)).astype(F)
    b = rng.standard_normal((nb, k, n)).astype(F)
    # a few special operands: most outputs take the fast path, some the exact fix-up
    _sparse_specials(rng, a, 3)
    _sparse_specials(rng, b, 2)
    got = emu_gemm_f32(emu_lib, a, b, mult, algo, layout)
    assert_bits_equal(got, golden.matmul(a, b, mult))
    assert np.isfinite(got).any()  # the fast path produced outputs too (specials can take out whole columns)


def _scaled_table(m, rng, zeros=True):
    """mbm(m) scaled by 2**-25 (with some zeros): tame exponent ranges that are far from symmetric, so operands
    near the fp32 limits still take the fast path and products land right at the top of the normal range.
    Without zeros the table stays exact in bfloat16, which the expand16 kernel needs."""
    v = (amsim.multipliers.mbm(m).table.values * F(2.0**-25)).astype(F)
    if zeros:
        v[rng.random(v.shape) < 0.05] = 0.0
    return amsim.Multiplier.from_table(v, name=f"scaled{m}")


@pytest.mark.parametrize("algo,kind,m", [("expand", "odd", 4), ("gather", "odd", 4), ("expand", "scaled", 4),
                                         ("gather", "scaled", 4), ("expand", "mbm", 7), ("gather", "mbm", 8),
                                         ("expand16", "scaled", 4), ("expand16", "mbm", 7), ("wide", "odd", 8),
                                         ("wide", "scaled", 11), ("wide", "mbm", 10), ("dot", "odd", 7),
                                         ("dot", "scaled", 8)])
def test_emulated_gemm_f32_exponent_edges(emu_lib, algo, kind, m, rng):
    """Operand exponents around the tame range and the fp32 limits: fast path, fix-up, over/underflow."""
    if kind == "mbm":
        mult = amsim.multipliers.mbm(m)
    elif kind == "scaled":
        mult = _scaled_table(m, rng, zeros=algo != "expand16")
    else:
        mult = _odd_table(m, rng)
    ranges = cuda.float_host_tables(mult.table.values)[2]
    if kind == "odd":  # subnormal entries leave no exponent window: every output is the fix-up's, by design
        assert ranges == (1, 0, 1, 0), ranges
    nb, rows, k, n = 1, 70 if algo == "gather" else 260, 5, 40
    lo, hi = (-80, 81) if kind != "scaled" else (-60, 85)
    with np.errstate(over="ignore"):
        a = np.ldexp(rng.uniform(1, 2, (nb, rows, k)), rng.integers(lo, hi, (nb, rows, k))).astype(F)
        b = np.ldexp(rng.uniform(1, 2, (nb, k, n)), rng.integers(lo, hi, (nb, k, n))).astype(F)
    a *= rng.choice([-1, 1], a.shape).astype(F)
    if kind == "scaled":  # the largest exponents the fast path accepts, on a whole row and column
        assert ranges[1] != ranges[3] or ranges[0] != ranges[2], ranges
        a[0, 0, :] = np.ldexp(F(1.75), ranges[1])
        b[0, :, 0] = np.ldexp(F(1.75), ranges[3])
    got = emu_gemm_f32(emu_lib, a, b, mult, algo)
    want = golden.matmul(a, b, mult)
    assert_bits_equal(got, want)
    if kind == "scaled":  # that corner product is finite and near the top of the range, so the fast path made it
        corner = golden.multiply(a[0, 0, 0], b[0, 0, 0], mult)
        assert np.isfinite(corner) and abs(corner) > 2.0**120


def test_kernel_eligibility_and_choice():
    """expand16 takes tables that are exact in bfloat16 (normal entries, <= 7 fraction bits), others are refused
    with a clear error; the automatic choice prefers it for large problems, and "wide" for large m >= 8."""
    mbm7 = amsim.multipliers.mbm(7).table.values
    lut_p = cuda.bf16_pair_table(mbm7)
    assert lut_p.shape == (128, 64) and lut_p.dtype == np.uint32
    bits = mbm7.view(np.uint32) >> 16
    assert lut_p[5, 3] == bits[6, 5] | (bits[7, 5] << 16)  # word [ib, p] = (lut[2p, ib], lut[2p + 1, ib])
    assert cuda.bf16_pair_table(amsim.multipliers.exact(7).table.values) is None  # 15 fraction bits
    with_zero = mbm7.copy()
    with_zero[3, 4] = 0.0
    assert cuda.bf16_pair_table(with_zero) is None
    subnormal = (mbm7 * F(2.0**-127)).astype(F)
    assert cuda.bf16_pair_table(subnormal) is None
    assert cuda.bf16_pair_table(amsim.multipliers.mbm(1).table.values) is None  # m = 1: no groups of 4 rows
    # the wide kernel's fp16 table: exact fp16 entries, 8 <= m <= 10
    mbm10 = amsim.multipliers.mbm(10).table.values
    h = cuda.fp16_table(mbm10)
    assert h.shape == (1024, 1024) and h.dtype == np.uint16
    np.testing.assert_array_equal(h.T.view(np.float16).astype(F), mbm10)
    assert cuda.fp16_table(amsim.multipliers.exact(10).table.values) is None  # 21 fraction bits
    assert cuda.fp16_table((mbm10 * F(2.0**-20)).astype(F)) is None  # below fp16's normal range
    assert cuda.fp16_table(amsim.multipliers.mitchell(11).table.values) is None  # m = 11: not used
    assert cuda.algo_estimate("wide", 10, 1, 4096, 4096, fp16_table=True) > 1.9 * cuda.algo_estimate(
        "wide", 10, 1, 4096, 4096)  # L2-bound: half the bytes
    assert cuda.choose_algo(7, 1, 4096, 4096, bf16_table=True) == "expand16"
    assert cuda.choose_algo(7, 1, 4096, 4096, bf16_table=False) == "expand"
    assert cuda.choose_algo(7, 1, 64, 64, bf16_table=True) == "dot"  # 32 blocks beat one 64 x 64 tile
    assert cuda.choose_algo(10, 1, 4096, 4096, bf16_table=True) == "wide"
    assert cuda.choose_algo(11, 1, 4096, 4096) == "wide"
    assert cuda.choose_algo(11, 1, 4096, 4096, max_shared=100 * 1024) == "gather"  # T does not fit
    tables = cuda.float_host_tables(amsim.multipliers.exact(7).table.values)
    a, b, c = np.ones((1, 8, 4), F), np.ones((1, 4, 8), F), np.zeros((1, 8, 8), F)
    with pytest.raises(ValueError, match="exact in bfloat16"):
        cuda.plan_gemm_f32(a, b, c, 7, False, tables, np, "expand16")
    with pytest.raises(ValueError, match="mantissa_bits >= 2"):
        cuda.plan_gemm_f32(a, b, c, 1, False, cuda.float_host_tables(amsim.multipliers.mbm(1).table.values), np,
                           "wide")
    # the estimates behind the choice: every usable kernel, best first for a narrow problem too
    assert set(cuda.usable_algos(7, bf16_table=True)) == {"expand16", "expand", "wide", "gather", "dot"}
    assert cuda.usable_algos(10) == ["wide", "gather", "dot"] and cuda.usable_algos(1) == ["gather", "dot"]
    # a weight gradient: few outputs, a long contraction -> one thread per output
    assert cuda.choose_algo(7, 1, 25, 6, bf16_table=True) == "dot"
    assert cuda.choose_algo(7, 8, 256, 256, bf16_table=True) == "gather"
    # table GEMMs: the wide scheme for large problems, 64 x 64 tiles for small ones
    assert cuda.choose_lut_algo(8, 1, 4096, 4096) == "lutw" and cuda.choose_lut_algo(3, 1, 64, 64) == "lut"
    with pytest.raises(ValueError, match="'lut', 'lutw'"):
        cuda.plan_gemm_lut(np.zeros((1, 4, 3), np.int32), np.zeros((1, 3, 4), np.int32), np.zeros((1, 4, 4), np.int32),
                           3, np.zeros((8, 8), np.int32), np, algo="gather")
    narrow = {a: cuda.algo_estimate(a, 7, 1, 131072, 16) for a in cuda.usable_algos(7, bf16_table=True)}
    assert narrow["expand16"] < 0.3 * cuda.algo_estimate("expand16", 7, 1, 131072, 64)  # 16 of 64 columns used
    assert cuda.choose_algo(7, 1, 131072, 16, bf16_table=True) == max(narrow, key=narrow.get)


@pytest.mark.parametrize("layout", [0, 2])
@pytest.mark.parametrize("algo,m", [("expand16", 7), ("expand", 4), ("wide", 8), ("dot", 7)])
def test_emulated_encoded_a_broadcast_flags_every_batch(emu_lib, algo, m, layout, rng):
    """A broadcast over the batch is encoded once; a special operand in it must flag its row in every batch."""
    mult = amsim.multipliers.mbm(m)
    a = rng.standard_normal((1, 300, 7)).astype(F)
    a[0, 5, 3], a[0, 299, 0] = np.inf, np.nan
    b = rng.standard_normal((3, 7, 70)).astype(F)
    a3 = np.broadcast_to(_stored(a, layout & 2), (3, 300, 7))  # batch stride 0, read in place
    out = np.full((3, 300, 70), np.nan, F)
    tables = cuda.float_host_tables(mult.table.values)
    plan = cuda.plan_gemm_f32(a3, b, out, m, False, tables, np, algo)
    assert plan[0].grid[1] == 1  # encoded once
    emu_run(emu_lib, plan)
    want = golden.matmul(a3, b, mult)
    assert np.isinf(want[:, 5]).all() and np.isnan(want[:, 299]).all()
    assert_bits_equal(out, want)
    empty = np.full((1, 4, 5), np.nan, F)
    emu_run(emu_lib, cuda.plan_gemm_f32(np.zeros((1, 4, 0), F), np.zeros((1, 0, 5), F), empty, m, False, tables,
                                        np, algo))
    assert_bits_equal(empty, np.zeros((1, 4, 5), F))


def test_emulated_gemm_f32_broadcast_batch_and_empty_k(emu_lib, rng):
    mult = amsim.multipliers.mbm(8)
    a = rng.standard_normal((1, 70, 11)).astype(F)
    b = rng.standard_normal((3, 11, 9)).astype(F)
    a3 = np.broadcast_to(a, (3, 70, 11))  # batch stride 0, read in place
    out = np.full((3, 70, 9), np.nan, F)
    tables = cuda.float_host_tables(mult.table.values)
    emu_run(emu_lib, cuda.plan_gemm_f32(a3, b, out, 8, False, tables, np, "gather"))
    assert_bits_equal(out, golden.matmul(a3, b, mult))
    empty = np.full((1, 4, 5), np.nan, F)
    tables7 = cuda.float_host_tables(amsim.multipliers.mbm(7).table.values)
    emu_run(emu_lib, cuda.plan_gemm_f32(np.zeros((1, 4, 0), F), np.zeros((1, 0, 5), F), empty, 7, False, tables7,
                                        np, "expand"))
    assert_bits_equal(empty, np.zeros((1, 4, 5), F))


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("algo", ["lut", "lutw"])
@pytest.mark.parametrize("bits,signed,shape", [(3, True, (2, 70, 37, 65)), (8, False, (1, 33, 21, 70)),
                                               (8, True, (1, 2100, 5, 17))])
def test_emulated_gemm_i32(emu_lib, bits, signed, shape, algo, layout, rng):
    mult = amsim.multipliers.exact_int(bits, signed=signed)
    lo, hi = mult.int_range
    nb, m_rows, k, n = shape
    a = rng.integers(lo, hi + 1, (nb, m_rows, k))
    b = rng.integers(lo, hi + 1, (nb, k, n))
    out = np.full((nb, m_rows, n), -12345, np.int32)
    ia = _stored((a - lo).astype(np.int32), layout & 2)
    ib = _stored((b - lo).astype(np.int32), layout & 1)
    plan = cuda.plan_gemm_lut(ia, ib, out, bits, mult.table.values, np, algo=algo)
    assert plan[0].kernel.startswith(f"amsim_gemm_{algo}<int, {bits}, {layout}>")
    emu_run(emu_lib, plan)
    np.testing.assert_array_equal(out, golden.matmul(a, b, mult))


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("algo", ["lut", "lutw"])
@pytest.mark.parametrize("bits,shape", [(3, (2, 70, 37, 65)), (8, (1, 33, 21, 70))])
def test_emulated_gemm_float_table(emu_lib, bits, shape, algo, layout, rng):
    """Full-operand float tables (narrow formats): float32 sums of table entries, NaN and Inf included."""
    n_l = 1 << bits
    table = rng.standard_normal((n_l, n_l)).astype(F) * F(2.0) ** rng.integers(-5, 6, (n_l, n_l)).astype(F)
    table[rng.random(table.shape) < 0.01] = np.inf
    table[0, n_l - 1] = np.nan
    table[n_l - 1, 0] = -np.inf
    nb, m_rows, k, n = shape
    ia = rng.integers(0, n_l, (nb, m_rows, k)).astype(np.int32)
    ib = rng.integers(0, n_l, (nb, k, n)).astype(np.int32)
    out = np.full((nb, m_rows, n), np.nan, F)
    emu_run(emu_lib, cuda.plan_gemm_lut(_stored(ia, layout & 2), _stored(ib, layout & 1), out, bits, table, np,
                                        algo=algo))
    want = np.zeros((nb, m_rows, n), F)
    with np.errstate(invalid="ignore"):
        for kk in range(k):  # float32 adds in k order from +0.0
            want = (want + table[ia[:, :, kk, None], ib[:, None, kk, :]]).astype(F)
    assert_bits_equal(out, want)


def test_emulated_multiply(emu_lib, rng):
    for mult in (amsim.multipliers.mitchell(7), amsim.multipliers.mbm(11).with_rounding("truncate")):
        sv = special_values()
        ga, gb = np.meshgrid(sv, sv, indexing="ij")
        a = np.concatenate([ga.ravel(), rng.standard_normal(3000).astype(F)])
        b = np.concatenate([gb.ravel(), rng.standard_normal(3000).astype(F)])
        out = np.full(a.shape, np.nan, F)
        lut = cuda.float_host_tables(mult.table.values)[0]
        emu_run(emu_lib, cuda.plan_multiply_f32(a, b, out, mult.mantissa_bits, mult.rounding == "truncate", lut,
                                                num_sms=2))
        assert_bits_equal(out, golden.multiply(a, b, mult))
    mult = amsim.multipliers.exact_int(8, signed=True)
    a, b = rng.integers(-128, 128, 5000), rng.integers(-128, 128, 5000)
    out = np.full(a.shape, -1, np.int32)
    emu_run(emu_lib, cuda.plan_multiply_lut((a + 128).astype(np.int32), (b + 128).astype(np.int32), out, 8,
                                            mult.table.values, num_sms=2))
    np.testing.assert_array_equal(out, golden.multiply(a, b, mult))
    table = rng.standard_normal((256, 256)).astype(F)
    table[3, 4] = np.nan
    ca, cb = rng.integers(0, 256, 5000).astype(np.int32), rng.integers(0, 256, 5000).astype(np.int32)
    ca[0], cb[0] = 3, 4
    outf = np.full(ca.shape, -1.0, F)
    emu_run(emu_lib, cuda.plan_multiply_lut(ca, cb, outf, 8, table, num_sms=2))
    assert_bits_equal(outf, table[ca, cb])


# ---------------------------------------------------------------------------------------------------------
# convolution
# ---------------------------------------------------------------------------------------------------------
CONV_CASES = [  # x shape, w shape, stride, padding, dilation, groups
    ((2, 9, 8, 4), (3, 3, 4, 6), 1, 1, 1, 1),
    ((1, 11, 10, 6), (3, 2, 3, 4), (2, 1), ((1, 2), (0, 1)), (1, 2), 2),
    ((2, 5, 5, 3), (1, 1, 3, 5), 2, 0, 1, 1),
]


@pytest.mark.parametrize("case", range(len(CONV_CASES)))
@pytest.mark.parametrize("kind", ["float", "int"])
def test_emulated_conv2d(emu_lib, kind, case, rng):
    xs, ws, stride, padding, dilation, groups = CONV_CASES[case]
    geo = cuda.conv_geometry(xs, ws, stride, padding, dilation, groups)
    out = np.full((geo["n"], geo["oh"], geo["ow"], geo["cout"]), np.nan if kind == "float" else -7,
                  F if kind == "float" else np.int32)
    kdim = ws[0] * ws[1] * ws[2]
    chunk_bytes = 4 * groups * kdim * 7  # 7 pixels per chunk: many chunks, a ragged last one
    if kind == "float":
        algo, m = {0: ("expand16", 7), 1: ("gather", 4), 2: ("expand", 7)}[case]
        mult = amsim.multipliers.mbm(m)
        x = rng.standard_normal(xs).astype(F)
        w = rng.standard_normal(ws).astype(F)
        _sparse_specials(rng, x, 2)
        _sparse_specials(rng, w, 1)
        tables = cuda.float_host_tables(mult.table.values)

        def planner(a3, b3, c3):
            return cuda.plan_gemm_f32(a3, b3, c3, m, False, tables, np, algo)

        xi, w2, pad = x, w.reshape(kdim, -1), np.float32(0.0)
    else:
        mult = amsim.multipliers.exact_int(3, signed=True)  # the emulation library has 3- and 8-bit kernels
        x = rng.integers(-4, 4, xs)
        w = rng.integers(-4, 4, ws)

        def planner(a3, b3, c3):
            return cuda.plan_gemm_lut(a3, b3, c3, 3, mult.table.values, np)

        # table indices are operand + 4; the padding operand 0 is index 4
        xi, w2, pad = (x + 4).astype(np.int32), (w + 4).astype(np.int32).reshape(kdim, -1), np.int32(4)
    plan = cuda.plan_conv2d_nhwc(np.ascontiguousarray(xi), np.ascontiguousarray(w2), out, geo, np, planner, pad,
                                 max_chunk_bytes=chunk_bytes)
    emu_run(emu_lib, plan)
    want = golden_conv2d_nhwc(x, w, mult, stride, padding, dilation, groups)
    if kind == "float":
        assert_bits_equal(out, want)
    else:
        np.testing.assert_array_equal(out, want)
