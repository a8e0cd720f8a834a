"""The CUDA kernels bound to multipliers: table GEMMs and elementwise products on prepared operands (what the CuPy
backend calls), and the GPU-only entry points ``gemm`` (strided operands read in place, a kernel of choice) and
``conv2d_nhwc`` (chunked im2col convolution) that :mod:`amsim.gpu` exposes. Operands are checked and prepared by
:mod:`amsim._operands`, the same rules as every other backend.
"""

from __future__ import annotations

import functools

import cupy
import numpy as np

from ..._operands import check_int_contraction, check_operand, finish, kernel_operands, output
from ._plan import (
    _check_sizes,
    conv_geometry,
    plan_conv2d_nhwc,
    plan_gemm_f32,
    plan_gemm_lut,
    plan_multiply_f32,
    plan_multiply_lut,
)
from ._runtime import device_limits, device_table_t, device_tables, run, run_planned

__all__ = ["run_gemm", "multiply", "gemm", "conv2d_nhwc"]


def _float_planner(mult, algo=None):
    sms, max_shared = device_limits()
    tables = device_tables(mult.table)
    truncate = mult.rounding == "truncate"

    def planner(a3, b3, c3, xp=cupy):
        return plan_gemm_f32(a3, b3, c3, mult.mantissa_bits, truncate, tables, xp, algo, sms, max_shared)

    planner.persistent = tuple(t for t in tables if isinstance(t, cupy.ndarray))
    return planner


def _table_bits(mult) -> int:
    return int(mult.table.values.shape[0]).bit_length() - 1  # codes index a (2**bits, 2**bits) table


def _lut_planner(mult, algo=None):
    sms, max_shared = device_limits()
    lut, lut_t = device_tables(mult.table), device_table_t(mult.table)

    def planner(a3, b3, c3, xp=cupy):
        return plan_gemm_lut(a3, b3, c3, _table_bits(mult), lut, xp, max_shared, algo, sms, lut_t)

    planner.persistent = (lut, lut_t)
    return planner


def _gemm_planner(mult, algo=None):
    """``planner(a3, b3, c3, xp)`` for the multiplier: table GEMMs on codes for integer and full-operand
    tables, significand-table GEMMs on float32 values otherwise."""
    return _lut_planner(mult, algo) if mult.is_int or mult.is_code else _float_planner(mult, algo)


def _plan_key(mult, algo):
    """What a plan depends on besides the operands: the table (and through it the mantissa width or code
    bits), the rounding of significand tables, the kernel asked for."""
    return mult.table, None if mult.is_int or mult.is_code else mult.rounding, algo


def run_gemm(mult, algo, a3, b3, c3):
    """``c3[t] = a3[t] @ b3[t]`` through ``mult`` on prepared operands (float32 values for significand tables,
    int32 indices or codes otherwise), planned once per signature and replayed after."""
    if c3.size == 0:
        return
    if a3.shape[-1] == 0:  # K = 0: the empty sum, +0.0 (int 0); no kernel takes a zero-length contraction
        c3[...] = 0
        return
    run_planned(("gemm", _plan_key(mult, algo)), lambda: _gemm_planner(mult, algo), (a3, b3, c3))


def multiply(a, b, out, mult):
    """Elementwise products of prepared flat operands through ``mult``."""
    if mult.is_int or mult.is_code:
        run(plan_multiply_lut(a, b, out, _table_bits(mult), device_tables(mult.table), device_limits()[0]))
    else:
        lut = device_tables(mult.table)[0]
        run(plan_multiply_f32(a, b, out, mult.mantissa_bits, mult.rounding == "truncate", lut, device_limits()[0]))
    return out


def gemm(a, b, mult, trans_a=False, trans_b=False, out=None, algo=None):
    """``op(a) @ op(b)`` on CuPy arrays, with op = transpose where asked, read in place (no copies).

    Arguments:
        a, b: 2-D or 3-D CuPy arrays (float32 for a float multiplier, integers in range for an integer one);
            3-D batches must match or be 1 (broadcast without copying).
        mult: the :class:`amsim.Multiplier`.
        trans_a, trans_b: use the transpose of the last two axes.
        out: optional C-contiguous output (float32 / int32).
        algo: the kernel, for tests and benchmarks: significand tables "expand16", "expand", "wide", "gather"
            or "dot"; integer and full-operand tables "lut" or "lutw"; None chooses.

    Returns:
        (M, N) if both operands are 2-D, else (batch, M, N); bit-identical to ``amsim.golden.matmul``.
    """
    for name, x in (("a", a), ("b", b)):
        if not isinstance(x, cupy.ndarray) or x.ndim not in (2, 3):
            raise TypeError(f"gemm: {name} must be a 2-D or 3-D cupy.ndarray; use amsim.matmul for other inputs.")
        check_operand(x, mult, name)
    opa = a.swapaxes(-1, -2) if trans_a else a
    opb = b.swapaxes(-1, -2) if trans_b else b
    if opa.shape[-1] != opb.shape[-2]:
        raise ValueError(f"gemm: contraction sizes differ: op(a) is {opa.shape}, op(b) is {opb.shape}.")
    a3 = opa if opa.ndim == 3 else opa[None]
    b3 = opb if opb.ndim == 3 else opb[None]
    nb = max(a3.shape[0], b3.shape[0])
    if a3.shape[0] not in (1, nb) or b3.shape[0] not in (1, nb):
        raise ValueError(f"gemm: batch sizes {a3.shape[0]} and {b3.shape[0]} do not broadcast.")
    rows, depth, cols = a3.shape[1], a3.shape[2], b3.shape[2]
    shape = (rows, cols) if a.ndim == 2 and b.ndim == 2 else (nb, rows, cols)
    res, final = output(out, shape, np.int32 if mult.is_int else np.float32, cupy, a, b)
    c3 = res.reshape(nb, rows, cols)
    if c3.size == 0:
        return finish(res, final)
    if depth == 0:
        res.fill(0)
        return finish(res, final)
    if mult.is_int:
        check_int_contraction(depth, mult, "gemm")
    a3, b3 = kernel_operands(mult, [a3, b3], cupy)
    a3 = cupy.broadcast_to(a3, (nb, rows, depth))  # batch stride 0: broadcast without copying
    b3 = cupy.broadcast_to(b3, (nb, depth, cols))
    run_gemm(mult, algo, a3, b3, c3)
    return finish(res, final)


def conv2d_nhwc(x, w, mult, stride=1, padding=0, dilation=1, groups=1, *, max_chunk_bytes=1 << 28, algo=None):
    """2-D convolution (cross-correlation, as in deep-learning frameworks) through an approximate multiplier.

    Contract:
        ``out[n, oh, ow, g * cog + o] = sum_k xcol[k] (x) w[kh, kw, c, g * cog + o]`` for the group g of the
        output channel (cog = Cout // groups), summed over k = (kh * KW + kw) * cg + c in increasing order
        with float32 additions from +0.0 (exact int32 sums for integer multipliers), where
        ``xcol[k] = x[n, oh * sh - top + kh * dh, ow * sw - left + kw * dw, g * cg + c]`` and positions outside
        the image are the operand +0.0 (integer multipliers: 0). Padding takes part in the products like any
        operand, so ``0 (x) Inf`` gives NaN, exactly as ``amsim.golden.matmul`` over an explicit zero-padded
        im2col (which is what the GPU tests compare against).

    Arguments:
        x: (N, H, W, Cin) CuPy array, float32 (float multiplier) or integers in the operand range.
        w: (KH, KW, Cin // groups, Cout) weights (HWIO), same kind.
        mult: the :class:`amsim.Multiplier`.
        stride, dilation: int or (h, w).
        padding: int, (ph, pw), or ((top, bottom), (left, right)).
        groups: feature groups; Cin and Cout must be multiples.
        max_chunk_bytes: bound on the im2col buffer; the output pixels are processed in chunks that fit.
        algo: float GEMM kernel ("expand16", "expand", "wide", "gather", "dot" or None), for tests and benchmarks.

    Returns:
        (N, OH, OW, Cout) float32 or int32 CuPy array.
    """
    for name, v in (("x", x), ("w", w)):
        if not isinstance(v, cupy.ndarray):
            raise TypeError(f"conv2d_nhwc: {name} must be a cupy.ndarray.")
        check_operand(v, mult, name)
    geo = conv_geometry(x.shape, w.shape, stride, padding, dilation, groups)
    kdim = geo["kh"] * geo["kw"] * geo["cg"]
    _check_sizes(K=kdim, pixels=geo["n"] * geo["oh"] * geo["ow"])
    dtype = np.int32 if mult.is_int else np.float32
    out = cupy.empty((geo["n"], geo["oh"], geo["ow"], geo["cout"]), dtype=dtype)
    if out.size == 0:
        return out
    if kdim == 0:
        out.fill(0)
        return out
    if mult.is_int:
        check_int_contraction(kdim, mult, "conv2d_nhwc")
    xs, ws = kernel_operands(mult, [x, w], cupy)
    # the operand +0.0 (integer 0) as the kernels see it, a value, an index or a code: computed on the host
    pad = kernel_operands(mult, [np.zeros((1,), x.dtype)], np)[0][0]
    xs = cupy.ascontiguousarray(xs)
    w2 = cupy.ascontiguousarray(ws).reshape(kdim, geo["cout"])

    def make_planner():
        gemm_planner = _gemm_planner(mult, algo)

        def planner(xs, w2, out, xp):
            gemm = functools.partial(gemm_planner, xp=xp)
            return plan_conv2d_nhwc(xs, w2, out, geo, xp, gemm, pad, max_chunk_bytes)

        planner.persistent = gemm_planner.persistent
        return planner

    key = ("conv", _plan_key(mult, algo), tuple(sorted(geo.items())), pad.tobytes(), max_chunk_bytes)
    run_planned(key, make_planner, (xs, w2, out))
    return out
