"""Approximate ``lax.conv_general_dilated``: explicit patches (pure data movement) and one approximate GEMM per
feature group; the input gradient is the transposed convolution and the kernel gradient the patches-by-gradient
GEMM, each through its own multiplier.

Summation order (part of the semantics): an output sums over the kernel window in row-major spatial order and,
inside each window position, over the group's input channels: k = ((k_0 * K_1 + k_1) ...) * C_g + c.
"""

from __future__ import annotations

import dataclasses
import itertools
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from .._errors import UnsupportedError
from . import _native
from ._config import OpConfig, as_config
from ._dot_general import F32, check_float_operand, match_vma, matmul3


def _dilate(size, d):
    return 0 if size == 0 else 1 + d * (size - 1)


def _patches(x, window, strides, padding, lhs_dil, rhs_dil):
    """x: (N, *spatial, C) -> (N, *out, prod(window), C), and the output spatial shape.

    Only pad, slice and stack: values are moved, never multiplied, so NaN/Inf/-0 survive untouched.
    """
    nsp = len(window)
    cfg = [(0, 0, 0)] + [(lo, hi, d - 1) for (lo, hi), d in zip(padding, lhs_dil)] + [(0, 0, 0)]
    xp = lax.pad(x, jnp.array(0, x.dtype), cfg)
    out = tuple(max(0, (xp.shape[1 + i] - _dilate(window[i], rhs_dil[i])) // strides[i] + 1) for i in range(nsp))
    cols = []
    for offs in itertools.product(*[range(w) for w in window]):
        start = (0,) + tuple(o * r for o, r in zip(offs, rhs_dil)) + (0,)
        limit = (xp.shape[0],) + tuple(s + (n - 1) * st + 1 if n > 0 else s
                                       for s, n, st in zip(start[1:-1], out, strides)) + (xp.shape[-1],)
        cols.append(lax.slice(xp, start, limit, (1,) + tuple(strides) + (1,)))
    return jnp.stack(cols, axis=1 + nsp), out


def conv_nhwc(x, w, strides, padding, lhs_dil, rhs_dil, groups, mode, per_channel=True):
    """Canonical-layout conv: x (N, *spatial, C), w (*window, C/groups, O) -> (N, *out, O), float32."""
    n, c = x.shape[0], x.shape[-1]
    window = w.shape[:-2]
    cg, o = w.shape[-2], w.shape[-1]
    if c != cg * groups or o % groups:
        raise ValueError(f"conv: {c} input channels, kernel with {cg} per group and {o} outputs do not fit "
                         f"feature_group_count={groups}.")
    og = o // groups
    p, out = _patches(x, window, strides, padding, lhs_dil, rhs_dil)
    rows = n * int(np.prod(out, dtype=np.int64))
    kw = int(np.prod(window, dtype=np.int64))
    # (rows, window, G, Cg) -> (G, rows, window * Cg)
    a = p.reshape(rows, kw, groups, cg).transpose(2, 0, 1, 3).reshape(groups, rows, kw * cg)
    b = w.reshape(kw, cg, groups, og).transpose(2, 0, 1, 3).reshape(groups, kw * cg, og)
    y = matmul3(a, b, mode, per_channel)  # (G, rows, og)
    return y.transpose(1, 0, 2).reshape((n,) + out + (o,))


def _transpose_padding(in_sp, window, strides, out_sp, padding, lhs_dil, rhs_dil):
    pads = []
    for i in range(len(window)):
        ld = _dilate(in_sp[i], lhs_dil[i])
        rd = _dilate(window[i], rhs_dil[i])
        od = _dilate(out_sp[i], strides[i])
        before = rd - padding[i][0] - 1
        after = ld + rd - 1 - od - before
        pads.append((before, after))
    return pads


@partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv(x, w, geom, cfg):
    strides, padding, lhs_dil, rhs_dil, groups = geom
    return conv_nhwc(x, w, strides, padding, lhs_dil, rhs_dil, groups, cfg.fwd, cfg.per_channel)


def _conv_fwd(x, w, geom, cfg):
    return _conv(x, w, geom, cfg), (x, w)


def _conv_bwd(geom, cfg, res, g):
    strides, padding, lhs_dil, rhs_dil, groups = geom
    x, w = res
    nsp = x.ndim - 2
    window = w.shape[:nsp]
    cg, o = w.shape[-2], w.shape[-1]
    og = o // groups
    # d(x): transposed convolution of g with the flipped kernel, in/out channels swapped within each group
    wt = w.reshape(window + (cg, groups, og))
    wt = jnp.moveaxis(wt, nsp, -1)  # (*window, G, og, cg)
    wt = jnp.swapaxes(wt, nsp, nsp + 1).reshape(window + (og, groups * cg))
    wt = jnp.flip(wt, axis=tuple(range(nsp)))
    pads = _transpose_padding(x.shape[1:-1], window, strides, g.shape[1:-1], padding, lhs_dil, rhs_dil)
    dx = conv_nhwc(g, wt, lhs_dil, pads, strides, rhs_dil, groups, cfg.dlhs, cfg.per_channel)
    # d(w): patches^T x g per group, contracting over (N, *out)
    p, out = _patches(x, window, strides, padding, lhs_dil, rhs_dil)
    rows = x.shape[0] * int(np.prod(out, dtype=np.int64))
    kw = int(np.prod(window, dtype=np.int64))
    a = p.reshape(rows, kw, groups, cg).transpose(2, 1, 3, 0).reshape(groups, kw * cg, rows)
    gb = g.reshape(rows, groups, og).transpose(1, 0, 2)
    dw = matmul3(a, gb, cfg.drhs, cfg.per_channel)  # (G, kw * cg, og)
    dw = dw.reshape((groups,) + window + (cg, og))
    dw = jnp.moveaxis(dw, 0, -2).reshape(window + (cg, o))
    return match_vma(dx, x), match_vma(dw, w)


_conv.defvjp(_conv_fwd, _conv_bwd)


def _normalize_padding(padding, in_sp, window, strides, lhs_dil, rhs_dil):
    if isinstance(padding, str):
        dil_in = tuple(_dilate(s, d) for s, d in zip(in_sp, lhs_dil))
        dil_win = tuple(_dilate(k, d) for k, d in zip(window, rhs_dil))
        return tuple(tuple(int(v) for v in p) for p in lax.padtype_to_pads(dil_in, dil_win, strides, padding))
    return tuple((int(lo), int(hi)) for lo, hi in padding)


@dataclasses.dataclass(frozen=True)
class ConvGeneralDilated:
    """A drop-in ``lax.conv_general_dilated`` whose products go through amsim multipliers (see :class:`OpConfig`).

    Supports strides, SAME/VALID/explicit padding, lhs and rhs dilation, ``feature_group_count`` (grouped and
    depthwise convolutions) and any ``dimension_numbers``. ``batch_group_count > 1`` raises.
    """

    config: OpConfig

    def __call__(self, lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                 dimension_numbers=None, feature_group_count=1, batch_group_count=1, precision=None,
                 preferred_element_type=None, out_sharding=None, **kwargs):
        if kwargs:
            raise UnsupportedError(f"amsim conv_general_dilated: unsupported keyword arguments {sorted(kwargs)}.")
        lhs, rhs = jnp.asarray(lhs), jnp.asarray(rhs)
        if self.config.is_native:
            return _native.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                                                dimension_numbers, feature_group_count, batch_group_count,
                                                precision, preferred_element_type, out_sharding=out_sharding)
        if batch_group_count != 1:
            raise UnsupportedError("amsim conv_general_dilated: batch_group_count > 1 is not simulated (it only "
                                   "appears in lax's own conv gradients, which amsim computes itself).")
        check_float_operand(lhs, "conv lhs")
        check_float_operand(rhs, "conv rhs")
        nsp = lhs.ndim - 2
        dn = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
        lhs_spec, rhs_spec, out_spec = dn
        # to canonical layouts: x (N, *spatial, C), w (*window, I, O)
        x = jnp.transpose(lhs, (lhs_spec[0],) + tuple(lhs_spec[2:]) + (lhs_spec[1],))
        w = jnp.transpose(rhs, tuple(rhs_spec[2:]) + (rhs_spec[1], rhs_spec[0]))
        strides = tuple(int(s) for s in window_strides)
        lhs_dil = tuple(int(d) for d in (lhs_dilation or (1,) * nsp))
        rhs_dil = tuple(int(d) for d in (rhs_dilation or (1,) * nsp))
        pads = _normalize_padding(padding, x.shape[1:-1], w.shape[:nsp], strides, lhs_dil, rhs_dil)
        geom = (strides, pads, lhs_dil, rhs_dil, int(feature_group_count))
        out_dtype = preferred_element_type or jnp.result_type(lhs.dtype, rhs.dtype)
        y = _conv(x.astype(F32), w.astype(F32), geom, self.config).astype(out_dtype)
        # canonical (N, *spatial, O) back to the requested output layout
        perm = [0] * y.ndim
        perm[out_spec[0]] = 0
        perm[out_spec[1]] = y.ndim - 1
        for i, d in enumerate(out_spec[2:]):
            perm[d] = 1 + i
        y = jnp.transpose(y, perm)
        if out_sharding is not None:
            y = jax.lax.with_sharding_constraint(y, out_sharding)
        return y


def conv_general_dilated(spec, dlhs=None, drhs=None) -> ConvGeneralDilated:
    """An approximate ``conv_general_dilated``.

    Arguments:
        spec: a Multiplier, a built-in name, "exact", or an :class:`OpConfig`.
        dlhs, drhs: multipliers (or "exact"/"ste") for the input-gradient and kernel-gradient products.

    Returns:
        A hashable :class:`ConvGeneralDilated` with the ``lax.conv_general_dilated`` signature.
    """
    return ConvGeneralDilated(as_config(spec, dlhs, drhs))
