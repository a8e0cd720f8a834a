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
from ._callback import host_conv_matmul, host_patches
from ._config import OpConfig, as_config
from ._dot_general import F32, check_float_operand, int_scales, match_vma, matmul3
from ._table_grad import TableGradient, grad_lhs, grad_rhs


def _dilate(size, d):
    return 0 if size == 0 else 1 + d * (size - 1)


@dataclasses.dataclass(frozen=True, eq=False)
class _Class:
    """Output positions whose windows put the same taps on input samples (rather than on the holes that lhs
    dilation inserts): a strided sub-grid ``start + j * step`` (``count`` per spatial dim) and its taps.

    ``pad_excluded[j, t]`` (flattened sub-grid x flattened window) marks taps outside ``taps`` that land in the
    padding for output j: lax multiplies padding (0 x w), so a non-finite weight there makes that output NaN.
    """

    start: tuple
    step: tuple
    count: tuple
    taps: tuple
    pad_excluded: np.ndarray

    @property
    def ntaps(self):
        return int(np.prod([len(t) for t in self.taps], dtype=np.int64))

    def subgrid(self):
        return tuple(slice(st, st + (n - 1) * sp + 1, sp)
                     for st, n, sp in zip(self.start, self.count, self.step, strict=True))


def _geometry(in_sp, window, strides, padding, lhs_dil, rhs_dil):
    """The output spatial shape and the classes of output positions (one class without lhs dilation).

    In each spatial dim, tap t of output o lands at u = o * stride + t * rhs_dil - pad_lo of the dilated input:
    on a sample if 0 <= u < dilated size and u % lhs_dil == 0, on a hole if inside but not a multiple, in the
    padding otherwise. As in lax, holes are not terms of the sum; padding is (a zero operand).
    """
    nsp = len(window)
    xp_sp = [_dilate(n, d) + lo + hi for n, d, (lo, hi) in zip(in_sp, lhs_dil, padding, strict=True)]
    out = tuple(max(0, (xp_sp[i] - _dilate(window[i], rhs_dil[i])) // strides[i] + 1) for i in range(nsp))
    per_dim = []
    for i in range(nsp):
        k, s, r, d, lo = window[i], strides[i], rhs_dil[i], lhs_dil[i], padding[i][0]
        size = _dilate(in_sp[i], d)
        by_phase = {}
        for o in range(out[i]):
            by_phase.setdefault((lo - o * s) % d, []).append(o)
        groups = []
        for phase, outs in by_phase.items():
            outs = np.array(outs)
            taps = tuple(t for t in range(k) if (t * r) % d == phase)
            u = outs[:, None] * s + np.arange(k)[None, :] * r - lo
            step = int(outs[1] - outs[0]) if outs.size > 1 else 1
            groups.append((int(outs[0]), step, outs.size, taps, (u < 0) | (u >= size)))
        per_dim.append(groups)
    classes = []
    for combo in itertools.product(*per_dim):
        # (sub-grid dims..., window dims...) masks, broadcast over the other dims
        outside = np.zeros(tuple(g[2] for g in combo) + tuple(window), bool)
        valid = np.ones(tuple(window), bool)
        for i, (_, _, n, taps, out_i) in enumerate(combo):
            shape = [1] * (2 * nsp)
            shape[i], shape[nsp + i] = n, window[i]
            outside |= out_i.reshape(shape)
            v = np.zeros(window[i], bool)
            v[list(taps)] = True
            valid &= v.reshape([window[j] if j == i else 1 for j in range(nsp)])
        pe = outside & ~valid
        classes.append(_Class(tuple(g[0] for g in combo), tuple(g[1] for g in combo), tuple(g[2] for g in combo),
                              tuple(g[3] for g in combo), pe.reshape(int(np.prod(pe.shape[:nsp], dtype=np.int64)),
                                                                     -1)))
    return out, classes


def _padded(x, padding, lhs_dil):
    """x padded (with zeros) and lhs-dilated (holes, also zeros, never read by the patches)."""
    cfg = [(0, 0, 0)] + [(lo, hi, d - 1) for (lo, hi), d in zip(padding, lhs_dil, strict=True)] + [(0, 0, 0)]
    return lax.pad(x, jnp.array(0, x.dtype), cfg)


def _class_patches(xp, cls, strides, rhs_dil):
    """(N, *count, ntaps, C): for each output of the class, its taps' input values, in row-major tap order.

    Only slice and stack: values are moved, never multiplied, so NaN/Inf/-0 survive untouched.
    """
    nsp = len(strides)
    cols = []
    for offs in itertools.product(*cls.taps):
        start = (0,) + tuple(o0 * s + t * r for o0, s, t, r in zip(cls.start, strides, offs, rhs_dil, strict=True))
        start += (0,)
        step = (1,) + tuple(sp * s for sp, s in zip(cls.step, strides, strict=True)) + (1,)
        limit = (xp.shape[0],) + tuple(b + (n - 1) * sv + 1
                                       for b, n, sv in zip(start[1:-1], cls.count, step[1:-1], strict=True))
        limit += (xp.shape[-1],)
        cols.append(lax.slice(xp, start, limit, step))
    return jnp.stack(cols, axis=1 + nsp)


def _xla_patch_matrix(xp, cls, strides, rhs_dil, groups, transposed):
    """_patch_matrix by XLA's slices."""
    n, c = xp.shape[0], xp.shape[-1]
    cg = c // groups
    rows = n * int(np.prod(cls.count, dtype=np.int64))
    p = _class_patches(xp, cls, strides, rhs_dil).reshape(rows, cls.ntaps, groups, cg)
    if transposed:
        return p.transpose(2, 1, 3, 0).reshape(groups, cls.ntaps * cg, rows)
    return p.transpose(2, 0, 1, 3).reshape(groups, rows, cls.ntaps * cg)


def _patch_matrix(xp, cls, strides, rhs_dil, groups, transposed):
    """The class's patches as GEMM operands: (G, rows, taps * Cg), or (G, taps * Cg, rows) when ``transposed``
    (the kernel gradient's left operand). On the CPU amsim's kernel writes them (XLA's strided slices are slower
    than the GEMM that follows); elsewhere, and for 3-D convolutions, XLA does."""
    def by_xla(xp):
        return _xla_patch_matrix(xp, cls, strides, rhs_dil, groups, transposed)

    geo = _patch_geometry(xp, cls, strides, rhs_dil)
    if geo is None:
        return by_xla(xp)

    def by_amsim(xp):
        return host_patches(_as_2d(xp), *geo, groups, transposed)

    return lax.platform_dependent(xp, cpu=by_amsim, default=by_xla)


def _patch_geometry(xp, cls, strides, rhs_dil):
    """(start, step, count, ty, tx) of the class's patches for amsim's CPU patch kernels (a 1-D conv as a 2-D one
    with one row), or None where they do not apply (3-D convolutions, no outputs)."""
    nsp = len(strides)
    if nsp > 2 or xp.shape[0] * int(np.prod(cls.count, dtype=np.int64)) == 0:
        return None
    step = [sp * s for sp, s in zip(cls.step, strides, strict=True)]
    offs = [[t * r for t in taps] for taps, r in zip(cls.taps, rhs_dil, strict=True)]
    start, count = list(cls.start), list(cls.count)
    if nsp == 1:
        start, step, count, offs = [0] + [start[0] * strides[0]], [1] + step, [1] + count, [[0]] + offs
    else:
        start = [o * s for o, s in zip(start, strides, strict=True)]
    return start, step, count, offs[0], offs[1]


def _as_2d(xp):
    return xp[:, None] if xp.ndim == 3 else xp  # (N, W, C) -> (N, 1, W, C)


def _patches_gemm(xp, cls, strides, rhs_dil, b, mult):
    """``P @ b`` for the class's patch matrix P, one feature group, a float multiplier with a significand table:
    on the CPU amsim's kernels read P's rows from xp (host_conv_matmul); elsewhere P is built, then multiplied."""
    def unfused(xp, b):
        return matmul3(_patch_matrix(xp, cls, strides, rhs_dil, 1, False), b, mult)

    geo = _patch_geometry(xp, cls, strides, rhs_dil)
    if geo is None:
        return unfused(xp, b)
    return lax.platform_dependent(xp, b, cpu=lambda xp, b: host_conv_matmul(_as_2d(xp), b, *geo, mult),
                                  default=unfused)


def _class_weights(w, cls):
    """w (*window, Cg, O) restricted to the class's taps, as (ntaps, Cg, O)."""
    if all(len(t) == k for t, k in zip(cls.taps, w.shape[:-2], strict=True)):
        sub = w
    else:
        sub = w[np.ix_(*[np.array(t, dtype=np.int64) for t in cls.taps])]
    return sub.reshape((cls.ntaps,) + w.shape[-2:])


def _nonfinite_any(x, axes):
    return jnp.any(~jnp.isfinite(x), axis=axes)


def _pad_nan(mask, nonfinite):
    """(R, O) bool: where a padding zero meets a non-finite operand through a tap the class leaves out, i.e.
    ``any_t mask[r, t] & nonfinite[t, o]``. Only evaluated when some operand is non-finite (and no product of
    the network's values is involved: it is a boolean reduction)."""
    mask = jnp.asarray(mask)
    return lax.cond(nonfinite.any(), lambda nf: jnp.any(mask[:, :, None] & nf[None, :, :], axis=1),
                    lambda nf: jnp.zeros((mask.shape[0], nf.shape[1]), bool), nonfinite)


def conv_nhwc(x, w, strides, padding, lhs_dil, rhs_dil, groups, mode, per_channel=True):
    """Canonical-layout conv: x (N, *spatial, C), w (*window, C/groups, O) -> (N, *out, O), float32."""
    n, c = x.shape[0], x.shape[-1]
    window = w.shape[:-2]
    cg, o = w.shape[-2], w.shape[-1]
    if c != cg * groups or o % groups:
        raise ValueError(f"conv: {c} input channels, kernel with {cg} per group and {o} outputs do not fit "
                         f"feature_group_count={groups}.")
    og = o // groups
    out, classes = _geometry(x.shape[1:-1], window, strides, padding, lhs_dil, rhs_dil)
    if n == 0 or 0 in out:  # a window longer than the padded input: an empty output, as in lax
        return jnp.zeros((n,) + out + (o,), F32)
    xp = _padded(x, padding, lhs_dil)
    # one group and a significand-table multiplier: the patches need not be written (see _patches_gemm)
    fused = groups == 1 and not isinstance(mode, str) and not mode.is_int and not mode.is_code
    parts = []
    for cls in classes:
        if cls.ntaps == 0:
            parts.append(None)
            continue
        a = None if fused else _patch_matrix(xp, cls, strides, rhs_dil, groups, False)  # (G, rows, taps * Cg)
        # weights (taps, Cg, G, og) -> (G, taps * Cg, og)
        b = _class_weights(w, cls).reshape(cls.ntaps, cg, groups, og).transpose(2, 0, 1, 3)
        parts.append((a, b.reshape(groups, cls.ntaps * cg, og)))
    scales = None
    if not isinstance(mode, str) and mode.is_int:  # one quantisation scale for the whole conv, as for one GEMM
        full_b = w.reshape(-1, cg, groups, og).transpose(2, 0, 1, 3).reshape(groups, -1, og)
        scales = int_scales([a for a, _ in filter(None, parts)], full_b, mode.int_bits, per_channel)
    w_nonfinite = _nonfinite_any(w.reshape(-1, cg, o), 1)  # (window, O)
    y = jnp.zeros((n,) + out + (o,), F32)
    for cls, part in zip(classes, parts, strict=True):
        shape = (n,) + cls.count + (o,)
        if part is None:
            yc = jnp.zeros(shape, F32)  # no tap on a sample: the empty sum, +0
        else:
            a, b = part
            yc = (_patches_gemm(xp, cls, strides, rhs_dil, b, mode) if a is None
                  else matmul3(a, b, mode, per_channel, scales))
            yc = yc.transpose(1, 0, 2).reshape(shape)
        if cls.pad_excluded.any():
            bad = _pad_nan(cls.pad_excluded, w_nonfinite).reshape(cls.count + (o,))
            yc = jnp.where(bad[None], jnp.nan, yc)
        y = yc if len(classes) == 1 else y.at[(slice(None),) + cls.subgrid()].set(yc)
    return y


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
    if 0 in g.shape:  # an empty output (or batch): nothing flows back
        return match_vma(jnp.zeros_like(x), x), match_vma(jnp.zeros_like(w), w)
    if isinstance(cfg.dlhs, TableGradient) or isinstance(cfg.drhs, TableGradient):
        nsp_ = x.ndim - 2
        sp = "DHW"[-nsp_:] if nsp_ <= 3 else None
        if sp is None:
            raise UnsupportedError("the table-derived gradient supports convolutions of 1 to 3 spatial dimensions.")
        cdn = lax.conv_dimension_numbers(x.shape, w.shape, (f"N{sp}C", f"{sp}IO", f"N{sp}C"))
        native = lambda a, b: _native.conv_general_dilated(  # noqa: E731 - XLA's own conv for the r products
            a, b, strides, padding, lhs_dil, rhs_dil, cdn, feature_group_count=groups)
        plain = dataclasses.replace(cfg, dlhs="exact" if isinstance(cfg.dlhs, TableGradient) else cfg.dlhs,
                                    drhs="exact" if isinstance(cfg.drhs, TableGradient) else cfg.drhs)
        dx, dw = _conv_bwd(geom, plain, res, g) if not (isinstance(cfg.dlhs, TableGradient) and
                                                       isinstance(cfg.drhs, TableGradient)) else (None, None)
        if isinstance(cfg.dlhs, TableGradient):
            dx = match_vma(grad_lhs(native, x, w, g, cfg.dlhs), x)
        if isinstance(cfg.drhs, TableGradient):
            dw = match_vma(grad_rhs(native, x, w, g, cfg.drhs), w)
        return dx, dw
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
    # d(w): per class of outputs, its taps' patches^T x g per group, contracting over (N, *sub-grid) in order
    _, classes = _geometry(x.shape[1:-1], window, strides, padding, lhs_dil, rhs_dil)
    xp = _padded(x, padding, lhs_dil)
    n = x.shape[0]
    parts = []
    for cls in classes:
        if cls.ntaps == 0:
            continue
        rows = n * int(np.prod(cls.count, dtype=np.int64))
        a = _patch_matrix(xp, cls, strides, rhs_dil, groups, True)  # (G, taps * Cg, rows)
        gb = g[(slice(None),) + cls.subgrid()].reshape(rows, groups, og).transpose(1, 0, 2)
        parts.append((cls, a, gb))
    scales = None
    if not isinstance(cfg.drhs, str) and cfg.drhs.is_int:  # one scale per operand for the whole gradient
        full_g = g.reshape(-1, groups, og).transpose(1, 0, 2)
        scales = int_scales([a for _, a, _ in parts], full_g, cfg.drhs.int_bits, cfg.per_channel)
    dw = jnp.zeros((groups,) + window + (cg, og), F32)
    for cls, a, gb in parts:
        dwc = matmul3(a, gb, cfg.drhs, cfg.per_channel, scales)  # (G, taps * cg, og)
        dwc = dwc.reshape((groups,) + tuple(len(t) for t in cls.taps) + (cg, og))
        if cls.ntaps == int(np.prod(window, dtype=np.int64)):
            dw = dwc
        else:
            dw = dw.at[(slice(None),) + tuple(np.ix_(*[np.array(t, dtype=np.int64) for t in cls.taps]))].set(dwc)
    dw = jnp.moveaxis(dw, 0, -2).reshape(window + (cg, o))
    # padding zeros that a class leaves out still multiply g (as in lax): NaN where they meet a non-finite g
    hits = None
    for cls in classes:
        if cls.pad_excluded.any():
            g_nonfinite = _nonfinite_any(g[(slice(None),) + cls.subgrid()], 0).reshape(-1, o)
            h = _pad_nan(cls.pad_excluded.T, g_nonfinite)
            hits = h if hits is None else hits | h
    if hits is not None:
        dw = jnp.where(hits.reshape(window + (1, o)), jnp.nan, dw)
    return match_vma(dx, x), match_vma(dw, w)


_conv.defvjp(_conv_fwd, _conv_bwd)


def _normalize_padding(padding, in_sp, window, strides, lhs_dil, rhs_dil):
    if isinstance(padding, str):
        dil_in = tuple(_dilate(s, d) for s, d in zip(in_sp, lhs_dil, strict=True))
        dil_win = tuple(_dilate(k, d) for k, d in zip(window, rhs_dil, strict=True))
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
        _check_geometry(window_strides, lhs_dilation, rhs_dilation, feature_group_count, batch_group_count)
        # lax's own checks (layouts, shapes, padding, groups) and messages first, on abstract values
        want = jax.eval_shape(lambda a, b: _native.conv_general_dilated(
            a, b, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers, feature_group_count,
            batch_group_count, precision, preferred_element_type), lhs, rhs)
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
        if isinstance(padding, str) and lhs_dilation is not None and any(int(d) != 1 for d in lhs_dilation):
            raise ValueError("String padding is not implemented for transposed convolution using this op (as in "
                             "lax.conv_general_dilated): give the padding explicitly, or use lax.conv_transpose.")
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
        assert y.shape == want.shape, (y.shape, want.shape)
        if out_sharding is not None:
            y = jax.lax.with_sharding_constraint(y, out_sharding)
        return y


def _check_geometry(strides, lhs_dil, rhs_dil, groups, batch_groups):
    """What lax only finds when lowering (a stride of 0 divides by zero in the shape rule): in lax's words."""
    def positive_ints(v):
        return all(isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d > 0 for d in v)

    if not positive_ints(tuple(strides)):
        raise ValueError(f"conv_general_dilated window_strides must be positive integers, got {tuple(strides)}.")
    for what, v in (("lhs_dilation", lhs_dil), ("rhs_dilation", rhs_dil)):
        if v is not None and not positive_ints(tuple(v)):
            raise TypeError(f"All dilations must be positive, got {tuple(v)} ({what}).")
    for what, v in (("feature_group_count", groups), ("batch_group_count", batch_groups)):
        if not positive_ints((v,)):
            raise ValueError(f"conv_general_dilated {what} must be a positive integer, got {v}.")


def conv_general_dilated(spec, dlhs=None, drhs=None) -> ConvGeneralDilated:
    """An approximate ``conv_general_dilated``.

    Arguments:
        spec: a Multiplier, a built-in name, "exact", or an :class:`OpConfig`.
        dlhs, drhs: multipliers (or "exact"/"ste") for the input-gradient and kernel-gradient products.

    Returns:
        A hashable :class:`ConvGeneralDilated` with the ``lax.conv_general_dilated`` signature.
    """
    return ConvGeneralDilated(as_config(spec, dlhs, drhs))
