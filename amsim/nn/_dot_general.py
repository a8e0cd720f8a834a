"""Approximate ``lax.dot_general`` with a custom VJP: forward, d(lhs) and d(rhs) each through their multiplier."""

from __future__ import annotations

import dataclasses
import functools
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from .._errors import UnsupportedError
from .._operands import check_int_contraction
from . import _native
from ._callback import _vary_like, bmm
from ._config import OpConfig, as_config
from ._table_grad import TableGradient, grad_lhs, grad_rhs

F32 = jnp.float32


def _norm_dn(dimension_numbers):
    (lc, rc), (lb, rb) = dimension_numbers
    ints = lambda ds: tuple(int(d) for d in ds)  # noqa: E731
    return (ints(lc), ints(rc)), (ints(lb), ints(rb))


def _free(ndim, *used):
    taken = set(d for group in used for d in group)
    return tuple(d for d in range(ndim) if d not in taken)


def _scale(x, bits, axis=None):
    """Symmetric quantisation scale max|x| / (2**(bits-1) - 1) over the *finite* entries (1 where there are only
    zeros); per column of the contraction (``axis=-2``) or per tensor."""
    amax = jnp.max(jnp.abs(jnp.where(jnp.isfinite(x), x, 0.0)), axis=axis, keepdims=axis is not None)
    return jnp.where(amax > 0, amax / ((1 << (bits - 1)) - 1), 1.0).astype(F32)


def _quantize(x, bits, scale):
    """Signed ``bits``-bit integers; NaN and Inf quantise to 0 (:func:`_ieee_specials` accounts for them)."""
    qmax = (1 << (bits - 1)) - 1
    x = jnp.where(jnp.isfinite(x), x, 0.0)
    return jnp.clip(jnp.round(x / scale), -qmax, qmax).astype(jnp.int32)


def int_scales(lhs_parts, rhs, bits, per_channel):
    """The scales one GEMM would use when its lhs is split into ``lhs_parts`` (row blocks of one product) and its
    rhs is ``rhs`` (the whole of it): per tensor over every part, per column (or tensor) over ``rhs``."""
    sa = functools.reduce(jnp.maximum, [_scale(a, bits) for a in lhs_parts])
    return sa, _scale(rhs, bits, axis=-2 if per_channel else None)


def _bmm_native(a, b):
    return _native.dot_general(a, b, (((2,), (1,)), ((0,), (0,))), precision=lax.Precision.HIGHEST,
                               preferred_element_type=F32)


def _ieee_specials(a, b, y):
    """Where a NaN or Inf operand takes part in an output's sum, the output IEEE arithmetic gives: NaN for a NaN
    term (a NaN operand, Inf x 0) or for Inf terms of both signs, else the sign of the Inf terms. The terms are
    counted by native GEMMs of 0/1 indicator matrices (exact integer counts)."""
    f = lambda m: m.astype(F32)  # noqa: E731
    a_inf, b_inf = jnp.isinf(a), jnp.isinf(b)
    a_pos, a_neg, b_pos, b_neg = f(a > 0), f(a < 0), f(b > 0), f(b < 0)  # Inf included, NaN and zeros not
    a_pinf, a_minf, b_pinf, b_minf = f(a == jnp.inf), f(a == -jnp.inf), f(b == jnp.inf), f(b == -jnp.inf)
    nan = (jnp.isnan(a).any(-1)[..., :, None] | jnp.isnan(b).any(-2)[..., None, :]
           | (_bmm_native(f(a_inf), f(b == 0)) + _bmm_native(f(a == 0), f(b_inf)) > 0))
    pinf = _bmm_native(a_pinf, b_pos) + _bmm_native(a_minf, b_neg) + _bmm_native(a_pos, b_pinf) + \
        _bmm_native(a_neg, b_minf) > 0
    minf = _bmm_native(a_pinf, b_neg) + _bmm_native(a_minf, b_pos) + _bmm_native(a_pos, b_minf) + \
        _bmm_native(a_neg, b_pinf) > 0
    y = jnp.where(pinf, jnp.inf, jnp.where(minf, -jnp.inf, y))
    return jnp.where(nan | (pinf & minf), jnp.nan, y).astype(F32)


def matmul3(a, b, mode, per_channel=True, scales=None):
    """``(B, M, K) @ (B, K, N)`` in float32 through ``mode`` (a Multiplier, "exact" or "ste").

    Integer multipliers quantise with ``scales`` (see :func:`int_scales`) or, by default, with a's and b's own.
    """
    if isinstance(mode, str):
        return _bmm_native(a, b)
    if not mode.is_int:
        return bmm(a, b, mode)
    check_int_contraction(a.shape[-1], mode, "dot_general")
    sa, sb = scales if scales is not None else int_scales([a], b, mode.int_bits, per_channel)
    qa, qb = _quantize(a, mode.int_bits, sa), _quantize(b, mode.int_bits, sb)
    y = bmm(qa, qb, mode).astype(F32) * sa * sb
    # NaN/Inf operands have no integer code: their outputs are what IEEE arithmetic makes of them (and only theirs)
    special = ~(jnp.isfinite(a).all() & jnp.isfinite(b).all())
    return lax.cond(special, _ieee_specials, lambda a, b, y: y, a, b, y)


def contract(lhs, rhs, dn, mode, per_channel=True):
    """``lax.dot_general(lhs, rhs, dn)`` (float32, lax's output layout) through ``mode``.

    The contraction runs over the flattened contracting dimensions in the order they are listed in ``dn``.
    """
    (lc, rc), (lb, rb) = dn
    lf = _free(lhs.ndim, lc, lb)
    rf = _free(rhs.ndim, rc, rb)
    bshape = tuple(lhs.shape[d] for d in lb)
    lfs = tuple(lhs.shape[d] for d in lf)
    rfs = tuple(rhs.shape[d] for d in rf)
    k = int(np.prod([lhs.shape[d] for d in lc], dtype=np.int64))
    nb = int(np.prod(bshape, dtype=np.int64))
    a = jnp.transpose(lhs, lb + lf + lc).reshape(nb, int(np.prod(lfs, dtype=np.int64)), k)
    b = jnp.transpose(rhs, rb + rc + rf).reshape(nb, k, int(np.prod(rfs, dtype=np.int64)))
    return matmul3(a, b, mode, per_channel).reshape(bshape + lfs + rfs)


def match_vma(ct, primal):
    """Give a gradient the shard_map varying axes of its primal, as lax's own transpose rules do: a primal that is
    invariant over an axis its gradient varies over gets the gradient summed over that axis."""
    try:
        extra = tuple(sorted(a for a in jax.typeof(ct).mat.varying if a not in jax.typeof(primal).mat.varying))
    except AttributeError:  # a JAX without manual-axis types
        return ct
    if extra:
        ct = jax.lax.psum(ct, extra)
    return _vary_like(ct, primal)


@partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _dot_general(lhs, rhs, dn, cfg):
    return contract(lhs, rhs, dn, cfg.fwd, cfg.per_channel)


def _dot_general_fwd(lhs, rhs, dn, cfg):
    return contract(lhs, rhs, dn, cfg.fwd, cfg.per_channel), (lhs, rhs)


def _dot_general_bwd(dn, cfg, res, g):
    lhs, rhs = res
    (lc, rc), (lb, rb) = dn
    lf = _free(lhs.ndim, lc, lb)
    rf = _free(rhs.ndim, rc, rb)
    nb, nlf, nrf = len(lb), len(lf), len(rf)
    g_b = tuple(range(nb))
    g_lf = tuple(range(nb, nb + nlf))
    g_rf = tuple(range(nb + nlf, nb + nlf + nrf))
    # d(lhs) = g x rhs, contracting rhs's free dims; result dims: batch, lhs free, rhs's contracting dims in
    # ascending rhs order (= lhs contracting dims permuted accordingly)
    native = lambda a, b: _native.dot_general(a, b, dn)  # noqa: E731 - the table gradient's contractions
    if isinstance(cfg.dlhs, TableGradient):
        d_lhs = grad_lhs(native, lhs, rhs, g, cfg.dlhs)
    else:
        d_lhs = contract(g, rhs, ((g_rf, rf), (g_b, rb)), cfg.dlhs, cfg.per_channel)
        rc_sorted = sorted(range(len(rc)), key=lambda i: rc[i])
        lhs_order = lb + lf + tuple(lc[i] for i in rc_sorted)
        d_lhs = jnp.transpose(d_lhs, np.argsort(lhs_order))
    # d(rhs) = lhs x g, contracting lhs's free dims; result dims: batch, lhs's contracting dims ascending, rhs free
    if isinstance(cfg.drhs, TableGradient):
        d_rhs = grad_rhs(native, lhs, rhs, g, cfg.drhs)
    else:
        d_rhs = contract(lhs, g, ((lf, g_lf), (lb, g_b)), cfg.drhs, cfg.per_channel)
        lc_sorted = sorted(range(len(lc)), key=lambda i: lc[i])
        rhs_order = rb + tuple(rc[i] for i in lc_sorted) + rf
        d_rhs = jnp.transpose(d_rhs, np.argsort(rhs_order))
    return match_vma(d_lhs, lhs), match_vma(d_rhs, rhs)


_dot_general.defvjp(_dot_general_fwd, _dot_general_bwd)


def check_float_operand(x, what):
    dt = jnp.dtype(x.dtype)
    if dt == jnp.float64:
        raise UnsupportedError(f"{what}: float64 operands cannot be simulated exactly (amsim's operand formats have "
                               "the fp32 exponent range); cast to float32, or disable jax_enable_x64.")
    if not jnp.issubdtype(dt, jnp.floating):
        raise UnsupportedError(f"{what}: operand dtype {dt} is not a float type; approximate float multipliers take "
                               "float16/bfloat16/float32 operands (integer multipliers quantise float tensors).")


@dataclasses.dataclass(frozen=True)
class DotGeneral:
    """A drop-in ``lax.dot_general`` whose products go through amsim multipliers (see :class:`OpConfig`).

    Instances are frozen and hashable: pass them as ``dot_general=`` to Flax layers or as ``_dot_general=`` to
    ``jnp.einsum``. Operands of float16/bfloat16 are widened to float32 exactly; the result has
    ``preferred_element_type`` or the operands' result type, like ``lax.dot_general``.
    """

    config: OpConfig

    def __call__(self, lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None, out_sharding=None,
                 **kwargs):
        if kwargs:
            raise UnsupportedError(f"amsim dot_general: unsupported keyword arguments {sorted(kwargs)}.")
        lhs, rhs = jnp.asarray(lhs), jnp.asarray(rhs)
        # lax's own checks (dimension numbers, shapes) and messages first, on abstract values: no computation
        want = jax.eval_shape(lambda a, b: _native.dot_general(a, b, dimension_numbers, precision=precision,
                                                                preferred_element_type=preferred_element_type),
                              lhs, rhs)
        check_float_operand(lhs, "dot_general lhs")
        check_float_operand(rhs, "dot_general rhs")
        dn = _norm_dn(dimension_numbers)
        out_dtype = preferred_element_type or jnp.result_type(lhs.dtype, rhs.dtype)
        if self.config.is_native:
            out = _native.dot_general(lhs, rhs, dn, precision=precision,
                                      preferred_element_type=preferred_element_type)
        else:
            out = _dot_general(lhs.astype(F32), rhs.astype(F32), dn, self.config).astype(out_dtype)
        assert out.shape == want.shape, (out.shape, want.shape)
        if out_sharding is not None:
            out = jax.lax.with_sharding_constraint(out, out_sharding)
        return out


def dot_general(spec, dlhs=None, drhs=None) -> DotGeneral:
    """An approximate ``dot_general``.

    Arguments:
        spec: a Multiplier, a built-in name ("mbm", "mitchell5", ...), "exact", or an :class:`OpConfig`.
        dlhs, drhs: multipliers (or "exact"/"ste") for the two gradient products; default: same as forward.

    Returns:
        A hashable :class:`DotGeneral` with the ``lax.dot_general`` signature.
    """
    return DotGeneral(as_config(spec, dlhs, drhs))
