"""Public array operations: elementwise multiply and matmul through an approximate multiplier.

The operands are checked and prepared once (``amsim/_operands.py``), then handed to the backend of their array
type (``amsim/_backend.py``): NumPy arrays to the Numba kernels, CuPy arrays to the CUDA kernels.
"""

from __future__ import annotations

import math

import numpy as np

from . import _multiplier
from ._backend import get_backend, is_cupy
from ._errors import UnsupportedError
from ._fpenv import under_default_fp
from ._multiplier import Multiplier
from ._operands import I32_MAX, check_int_contraction, check_operand, finish, kernel_operands, output

__all__ = ["multiply", "matmul"]


def check_mult(mult) -> Multiplier:
    """``mult`` as a :class:`Multiplier`: itself, or the built-in a name gives ("mbm", "alm_soa(m=7, k=3)");
    raises naming the fix otherwise."""
    if isinstance(mult, str):
        from .multipliers import NATIVE_NAMES, get

        if mult.strip().lower() in NATIVE_NAMES:
            raise ValueError(f"{mult!r} means the native float32 product, which amsim does not simulate: use "
                             "a @ b (NumPy/CuPy) for it, or name a simulated multiplier such as 'exact7'.")
        return get(mult)
    if not isinstance(mult, Multiplier):
        raise TypeError(f"expected an amsim.Multiplier or a built-in name, got {type(mult).__name__}; decorate the "
                        "model with @amsim.multiplier(...) or use one from amsim.multipliers.")
    return mult


def _as_array(x, xp, name):
    if is_cupy(x) or isinstance(x, np.ndarray):
        return x
    if isinstance(x, (list, tuple, int, float)) or np.isscalar(x):
        raise TypeError(f"{name} must be an array (got {type(x).__name__}); wrap it with np.asarray(..., "
                        "dtype=np.float32) so its dtype is explicit.")
    return xp.asarray(x)


def _operands(a, b, mult):
    be = get_backend(a, b)
    a, b = _as_array(a, be.xp, "a"), _as_array(b, be.xp, "b")
    check_operand(a, mult, "a")
    check_operand(b, mult, "b")
    return be, a, b


@under_default_fp
def multiply(a, b, mult, *, out=None):
    """Elementwise approximate product ``a * b`` with NumPy broadcasting.

    Arguments:
        a, b: float32 arrays (float multiplier) or integer arrays within the operand range (integer multiplier);
            NumPy arrays run on the CPU kernels, CuPy arrays on the GPU.
        mult: the :class:`Multiplier`.
        out: optional C-contiguous output array of the broadcast shape (it may overlap an input).

    Returns:
        float32 or int32 array of the broadcast shape.
    """
    mult = check_mult(mult)
    be, a, b = _operands(a, b, mult)
    xp = be.xp
    shape = np.broadcast_shapes(a.shape, b.shape)
    res, final = output(out, shape, np.int32 if mult.is_int else np.float32, xp, a, b)
    if res.size == 0:
        return finish(res, final)
    fa, fb = (xp.ascontiguousarray(xp.broadcast_to(x, shape)).reshape(-1) for x in kernel_operands(mult, (a, b), xp))
    if mult.is_int or mult.is_code:
        be.multiply_table(fa, fb, res.reshape(-1), mult)
    else:
        be.multiply(fa, fb, res.reshape(-1), mult)
    return finish(res, final)


@under_default_fp
def matmul(a, b, mult, *, out=None):
    """Approximate matrix product with ``numpy.matmul`` shape rules (1-D promotion, broadcast batch dims).

    Each output is the float32 sum over k in order, starting from +0.0 (docs/semantics.md); integer
    multipliers accumulate exactly in int32.

    Arguments:
        a, b: float32 arrays (float multiplier) or integer arrays (integer multiplier), NumPy or CuPy.
        mult: the :class:`Multiplier`.
        out: optional C-contiguous output array (it may overlap an input).

    Returns:
        float32 or int32 array of shape ``broadcast(a.shape[:-2], b.shape[:-2]) + (M, N)``.
    """
    mult = check_mult(mult)
    be, a_in, b_in = _operands(a, b, mult)
    xp = be.xp
    if a_in.ndim == 0 or b_in.ndim == 0:
        raise ValueError("matmul: operands must have at least one dimension; use amsim.multiply for scalars.")
    a, b = kernel_operands(mult, (a_in, b_in), xp)
    a2 = a[None, :] if a.ndim == 1 else a
    b2 = b[:, None] if b.ndim == 1 else b
    if a2.shape[-1] != b2.shape[-2]:
        raise ValueError(f"matmul: contraction dimensions differ: a has shape {a.shape} (K={a2.shape[-1]}), b has "
                         f"shape {b.shape} (K={b2.shape[-2]}).")
    try:
        batch = np.broadcast_shapes(a2.shape[:-2], b2.shape[:-2])
    except ValueError:
        raise ValueError(f"matmul: batch dimensions {a.shape[:-2]} and {b.shape[:-2]} do not broadcast.") from None
    m_rows, k_len, n_cols = a2.shape[-2], a2.shape[-1], b2.shape[-1]
    out_shape = batch + (m_rows, n_cols)
    if a.ndim == 1:
        out_shape = out_shape[:-2] + (n_cols,)
    if b.ndim == 1:
        out_shape = out_shape[:-1]
    res, final = output(out, out_shape, np.int32 if mult.is_int else np.float32, xp, a_in, b_in)
    nbatch = math.prod(batch)
    if b2.ndim == 2 and nbatch > 1 and nbatch * m_rows <= I32_MAX:
        # one b for every batch (x @ W): one GEMM with the batch folded into the rows, which gives the same sums
        # (each output row is its own), rather than nbatch copies of b
        a3 = xp.ascontiguousarray(a2).reshape(1, nbatch * m_rows, k_len)
        b3 = xp.ascontiguousarray(b2).reshape(1, k_len, n_cols)
        c3 = res.reshape(1, nbatch * m_rows, n_cols)
    else:
        # (broadcast_to only where a batch dimension is broadcast: it costs microseconds, a small GEMM's time)
        a3 = xp.ascontiguousarray(a2 if a2.shape[:-2] == batch else xp.broadcast_to(a2, batch + (m_rows, k_len)))
        b3 = xp.ascontiguousarray(b2 if b2.shape[:-2] == batch else xp.broadcast_to(b2, batch + (k_len, n_cols)))
        a3, b3 = a3.reshape(nbatch, m_rows, k_len), b3.reshape(nbatch, k_len, n_cols)
        c3 = res.reshape(nbatch, m_rows, n_cols)
    if mult.is_int:
        check_int_contraction(k_len, mult, "matmul")
    if mult.is_int or mult.is_code:
        be.gemm_table(a3, b3, c3, mult)
    else:
        be.gemm(a3, b3, c3, mult)
    return finish(res, final)


@under_default_fp
def conv_patches_matmul(xp, geometry, b, mult, out):
    """``out[l] = P[l] @ b[l]`` for the patch matrix P that ``kernels.cpu.conv_patches`` writes from a padded conv
    input (one feature group): the JAX bridge's convolution GEMM on the CPU. The kernels read P's rows from xp
    where they can instead of writing P (a conv input gradient's P is taps times the size of xp); the same bits
    as ``matmul(P, b, mult)``.

    Arguments:
        xp: float32 NumPy array (L, N, H, W, C), the padded input (L: vmap's axes, folded into one).
        geometry: (start, step, count, ty, tx) of the patches (see amsim/kernels/cpu/_patches.py).
        b: float32 (L, taps * C, O).
        mult: a float multiplier with a significand table (integer and full-operand-table multipliers take
            ``matmul`` on an explicit patch matrix).
        out: float32 (L, N * OH * OW, O), C-contiguous, sharing no memory with xp or b.

    Returns:
        ``out``.
    """
    mult = check_mult(mult)
    if mult.is_int or mult.is_code:
        raise UnsupportedError(f"conv_patches_matmul takes significand-table multipliers; {mult!r} is not one "
                               "(build the patch matrix and call amsim.matmul).")
    be = get_backend(xp, b, out)
    if be.name != "numpy":
        raise UnsupportedError("conv_patches_matmul runs on NumPy arrays (the CPU kernels) only.")
    check_operand(xp, mult, "xp")
    check_operand(b, mult, "b")
    _check_conv_shapes(xp, geometry, b, out)
    xp, b = kernel_operands(mult, (xp, b), np)  # elementwise, so it commutes with taking patches
    be.gemm_conv(np.ascontiguousarray(xp), geometry, np.ascontiguousarray(b), out, mult)
    return out


def _check_conv_shapes(xp, geometry, b, out):
    """The kernels index xp by the geometry unchecked: every shape and every sample the patches read must fit."""
    start, step, count, ty, tx = (tuple(int(v) for v in g) for g in geometry)
    if xp.ndim != 5 or b.ndim != 3 or out.ndim != 3 or not (len(start) == len(step) == len(count) == 2):
        raise ValueError(f"conv_patches_matmul: xp (L, N, H, W, C), b (L, K, O), out (L, R, O) and 2-D geometry "
                         f"expected; got xp {xp.shape}, b {b.shape}, out {out.shape}.")
    lead, n, h, w, c = xp.shape
    rows, k_len = n * count[0] * count[1], len(ty) * len(tx) * c
    if b.shape[:2] != (lead, k_len) or out.shape != (lead, rows, b.shape[2]) or out.dtype != np.float32:
        raise ValueError(f"conv_patches_matmul: for xp {xp.shape} and this geometry b must be ({lead}, {k_len}, O) "
                         f"and out ({lead}, {rows}, O) float32; got b {b.shape}, out {out.shape} {out.dtype}.")
    if not out.flags.c_contiguous or np.may_share_memory(out, xp) or np.may_share_memory(out, b):
        raise ValueError("conv_patches_matmul: out must be C-contiguous and share no memory with xp or b.")
    for dim, size, taps in ((0, h, ty), (1, w, tx)):
        if min(count[dim], len(taps)) and (min(start[dim], step[dim], *taps) < 0 or
                                           start[dim] + (count[dim] - 1) * step[dim] + max(taps) >= size):
            raise ValueError(f"conv_patches_matmul: the geometry reads past the padded input's {'HW'[dim]} = {size}.")


# Multiplier objects are callable as ``mult(a, b)``; the multiplier layer cannot import this module (it sits above
# it), so the elementwise product is handed down here.
_multiplier.register_elementwise(multiply)
