"""Public array operations: elementwise multiply and matmul through an approximate multiplier."""

from __future__ import annotations

import numpy as np

from ._backend import get_backend, is_cupy
from ._fpenv import under_default_fp
from ._errors import UnsupportedError
from ._multiplier import Multiplier

__all__ = ["multiply", "matmul"]

_I32_MAX = np.iinfo(np.int32).max


def check_int_contraction(k_len: int, mult: Multiplier, what: str) -> None:
    """Refuse a contraction whose exact int32 sum could overflow (K * max|product| > int32 max)."""
    biggest = int(np.abs(mult.table.values.astype(np.int64)).max())
    if k_len * biggest > _I32_MAX:
        raise UnsupportedError(f"{what}: with K={k_len} and products up to {biggest}, the int32 accumulator could "
                               f"overflow (bound {k_len * biggest} > {_I32_MAX}); split the contraction into chunks "
                               f"of at most {_I32_MAX // max(1, biggest)}.")


def _check_mult(mult) -> Multiplier:
    if not isinstance(mult, Multiplier):
        raise TypeError(f"expected an amsim.Multiplier, got {type(mult).__name__}; decorate the model with "
                        "@amsim.multiplier(...) or use one from amsim.multipliers.")
    return mult


def _as_array(x, xp, name):
    if is_cupy(x) or isinstance(x, np.ndarray):
        return x
    if isinstance(x, (list, tuple, int, float)) or np.isscalar(x):
        raise TypeError(f"{name} must be an array (got {type(x).__name__}); wrap it with np.asarray(..., "
                        "dtype=np.float32) so its dtype is explicit.")
    return xp.asarray(x)


def _check_operand(x, mult, name):
    dt = x.dtype
    if mult.is_int:
        if dt.kind not in "iu":
            raise TypeError(f"{name} has dtype {dt}, but {mult!r} is an integer multiplier: pass integer arrays "
                            "(quantise floats first).")
        lo, hi = mult.int_range
        info = np.iinfo(dt)
        if x.size and (info.min < lo or info.max > hi):  # else the dtype guarantees it (no device read on a GPU)
            xmin, xmax = int(x.min()), int(x.max())
            if xmin < lo or xmax > hi:
                raise ValueError(f"{name} holds values in [{xmin}, {xmax}], outside the {mult.int_bits}-bit "
                                 f"{'signed' if mult.signed else 'unsigned'} operand range [{lo}, {hi}]; clip or "
                                 "requantise the input.")
    elif dt != np.float32:
        raise TypeError(f"{name} has dtype {dt}; float multipliers take float32 arrays. Convert explicitly with "
                        f"{name}.astype(np.float32) (amsim never converts silently).")


def _convert(x, mult, xp):
    """Narrow operand formats (fp16, FP8, ...): convert first; the kernels then see exactly representable values."""
    fmt = mult.operand_format if not mult.is_int else None
    if fmt is None:
        return x
    from ._formats import convert

    return convert(x, fmt, mult.rounding, xp)


def _table_op(be, name):
    fn = getattr(be, name, None)
    if fn is None:
        raise UnsupportedError(f"full-operand tables are not implemented on the {be.name} backend yet; run them "
                               "on NumPy arrays.")
    return fn


def _codes(x, mult, xp):
    from ._formats import encode

    return encode(x, mult.operand_format, xp)


def _output(out, shape, dtype, xp, *inputs):
    """(array the kernels write, array to copy it into afterwards or None).

    An ``out`` that may share memory with an input is never written while the input is read: the result goes to a
    fresh array first, and is copied into ``out`` at the end (bit for bit the result without aliasing).
    """
    if out is None:
        return xp.empty(shape, dtype=dtype), None
    if not isinstance(out, xp.ndarray):
        raise TypeError(f"out must be a {xp.__name__}.ndarray (like the inputs), got {type(out).__name__}.")
    if tuple(out.shape) != tuple(shape) or out.dtype != dtype:
        raise ValueError(f"out has shape {tuple(out.shape)} and dtype {out.dtype}; expected {tuple(shape)} {dtype}.")
    if not out.flags.c_contiguous:
        raise ValueError("out must be C-contiguous.")
    if not getattr(out.flags, "writeable", True):
        raise ValueError("out is read-only (flags.writeable is False); pass a writable array or out=None.")
    if any(xp.may_share_memory(out, x) for x in inputs):
        return xp.empty(shape, dtype=dtype), out
    return out, None


def _finish(res, final):
    if final is None:
        return res
    final[...] = res
    return final


@under_default_fp
def multiply(a, b, mult, *, out=None):
    """Elementwise approximate product ``a * b`` with NumPy broadcasting.

    Arguments:
        a, b: float32 arrays (float multiplier) or integer arrays within the operand range (integer multiplier);
            NumPy arrays run on the CPU kernels, CuPy arrays on the GPU.
        mult: the :class:`Multiplier`.
        out: optional C-contiguous output array of the broadcast shape.

    Returns:
        float32 or int32 array of the broadcast shape.
    """
    mult = _check_mult(mult)
    be = get_backend(a, b)
    xp = be.xp
    a = _as_array(a, xp, "a")
    b = _as_array(b, xp, "b")
    _check_operand(a, mult, "a")
    _check_operand(b, mult, "b")
    shape = np.broadcast_shapes(a.shape, b.shape)
    dtype = np.int32 if mult.is_int else np.float32
    res, final = _output(out, shape, dtype, xp, a, b)
    if res.size == 0:
        return _finish(res, final)
    fa = xp.ascontiguousarray(xp.broadcast_to(_convert(a, mult, xp), shape)).reshape(-1)
    fb = xp.ascontiguousarray(xp.broadcast_to(_convert(b, mult, xp), shape)).reshape(-1)
    flat = res.reshape(-1)
    if mult.is_int:
        lo = mult.int_range[0]
        be.multiply_i32((fa.astype(np.int64) - lo).astype(np.int32), (fb.astype(np.int64) - lo).astype(np.int32),
                        flat, mult)
    elif mult.is_code:
        _table_op(be, "multiply_table")(_codes(fa, mult, xp), _codes(fb, mult, xp), flat, mult)
    else:
        be.multiply_f32(fa, fb, flat, mult)
    return _finish(res, final)


@under_default_fp
def matmul(a, b, mult, *, out=None):
    """Approximate matrix product with ``numpy.matmul`` shape rules (1-D promotion, broadcast batch dims).

    Each output is the float32 sum over k in order, starting from +0.0 (docs/semantics.md); integer
    multipliers accumulate exactly in int32.

    Arguments:
        a, b: float32 arrays (float multiplier) or integer arrays (integer multiplier), NumPy or CuPy.
        mult: the :class:`Multiplier`.
        out: optional C-contiguous output array.

    Returns:
        float32 or int32 array of shape ``broadcast(a.shape[:-2], b.shape[:-2]) + (M, N)``.
    """
    mult = _check_mult(mult)
    be = get_backend(a, b)
    xp = be.xp
    a = _as_array(a, xp, "a")
    b = _as_array(b, xp, "b")
    if a.ndim == 0 or b.ndim == 0:
        raise ValueError("matmul: operands must have at least one dimension; use amsim.multiply for scalars.")
    a_in, b_in = a, b
    _check_operand(a, mult, "a")
    _check_operand(b, mult, "b")
    a, b = _convert(a, mult, xp), _convert(b, mult, xp)
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
    dtype = np.int32 if mult.is_int else np.float32
    res, final = _output(out, out_shape, dtype, xp, a_in, b_in)
    nbatch = int(np.prod(batch, dtype=np.int64))
    if b2.ndim == 2 and nbatch > 1 and nbatch * m_rows <= _I32_MAX:
        # one b for every batch (x @ W): one GEMM with the batch folded into the rows, which gives the same sums
        # (each output row is its own), rather than nbatch copies of b
        a3 = xp.ascontiguousarray(a2).reshape(1, nbatch * m_rows, k_len)
        b3 = xp.ascontiguousarray(b2).reshape(1, k_len, n_cols)
        c3 = res.reshape(1, nbatch * m_rows, n_cols)
    else:
        a3 = xp.ascontiguousarray(xp.broadcast_to(a2, batch + (m_rows, k_len))).reshape(nbatch, m_rows, k_len)
        b3 = xp.ascontiguousarray(xp.broadcast_to(b2, batch + (k_len, n_cols))).reshape(nbatch, k_len, n_cols)
        c3 = res.reshape(nbatch, m_rows, n_cols)
    if mult.is_int:
        check_int_contraction(k_len, mult, "matmul")
        lo = mult.int_range[0]
        be.gemm_i32((a3.astype(np.int64) - lo).astype(np.int32), (b3.astype(np.int64) - lo).astype(np.int32), c3, mult)
    elif mult.is_code:
        _table_op(be, "gemm_table")(_codes(a3, mult, xp), _codes(b3, mult, xp), c3, mult)
    else:
        be.gemm_f32(a3, b3, c3, mult)
    return _finish(res, final)
