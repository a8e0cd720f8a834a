"""The table-derived gradient: the derivative of the approximate product itself, estimated from the multiplier's
table, for the two gradient products of a layer (``dlhs="table"`` / ``drhs="table"``, ``--backward table``).

For float operands a = sa·2^ea·x and b = sb·2^eb·y (x, y in [1, 2) on the multiplier's grid), the approximate
product is p = sa·sb·2^(ea+eb)·T(x, y), so

    ∂p/∂a = (b / y) · T_x(x, y)        ∂p/∂b = (a / x) · T_y(x, y)

(for the exact product T = x·y these are b and a). T_x and T_y are estimated from the table by central
differences along its rows and columns (one-sided at the edges), smoothed by a moving average over
``max(1, 2^m / 16)`` grid steps (odd width) so that the staircase of a rounded product does not become a comb of
spikes. The layer gradient d(lhs) = Σ_j g·∂p/∂a has a factor that depends on both operands; the derivative table
is factorised, T_x ≈ Σ_r u_r(x)·w_r(y) (truncated SVD, the smallest rank ≤ 16 whose relative Frobenius error is
below 2 %; ``TableGradient(m).rank_error`` reports it: rank 1 and ~1e-15 for the exact product, rank 16 and
1-3 % for Mitchell, MBM, ALM-SOA and REALM at 7 bits), so that

    d(lhs) = Σ_r u_r(x_lhs) ⊙ [g ⋆ ((rhs / y_rhs) · w_r(y_rhs))]

where ⋆ is the layer's own native gradient contraction (dot_general or convolution): r native products per
gradient instead of a simulated one. Integer multipliers are not supported yet (a clear error).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from .._errors import UnsupportedError
from .._multiplier import Multiplier

MAX_RANK = 16
RANK_TOL = 2e-2


def _smooth(d: np.ndarray, axis: int, width: int) -> np.ndarray:
    if width <= 1:
        return d
    pad = width // 2
    padded = np.pad(d, [(pad, pad) if a == axis else (0, 0) for a in range(d.ndim)], mode="edge")
    c = np.cumsum(padded, axis=axis, dtype=np.float64)
    c = np.concatenate([np.zeros_like(np.take(c, [0], axis=axis)), c], axis=axis)
    n = d.shape[axis]
    return (np.take(c, np.arange(width, width + n), axis=axis) - np.take(c, np.arange(n), axis=axis)) / width


def derivative_tables(mult: Multiplier) -> tuple[np.ndarray, np.ndarray]:
    """(T_x, T_y): the smoothed derivatives of the significand table along its rows (x) and columns (y)."""
    n = 1 << mult.mantissa_bits
    t = mult.table.values.astype(np.float64)
    width = max(1, n // 16) | 1
    tx = _smooth(np.gradient(t, 1.0 / n, axis=0), 0, width)
    ty = _smooth(np.gradient(t, 1.0 / n, axis=1), 1, width)
    return tx, ty


def _factor(d: np.ndarray):
    u, s, vt = np.linalg.svd(d)
    total = np.sqrt((s ** 2).sum())
    for r in range(1, MAX_RANK + 1):
        err = np.sqrt((s[r:] ** 2).sum()) / total if total else 0.0
        if err <= RANK_TOL or r == MAX_RANK:
            break
    root = np.sqrt(s[:r])
    return (u[:, :r] * root).astype(np.float32), (vt[:r].T * root).astype(np.float32), float(err)


@dataclasses.dataclass(frozen=True)
class TableGradient:
    """Gradient mode: the table-derived derivative of ``mult`` (see the module docstring)."""

    mult: Multiplier

    def __post_init__(self):
        if not isinstance(self.mult, Multiplier) or self.mult.is_int or self.mult.is_code:
            raise UnsupportedError(f"the table-derived gradient needs a float (significand-table) multiplier, got "
                                   f"{self.mult!r}; integer and full-operand tables are not supported yet: use "
                                   "'approx', 'exact' or 'ste' for them.")

    def __repr__(self):
        return f"TableGradient({self.mult.name})"

    @property
    def factors(self):
        return _factors(self.mult)

    @property
    def rank_error(self) -> tuple[float, float]:
        """Relative Frobenius error of the rank-r factorisation of T_x and T_y."""
        f = self.factors
        return f[4], f[5]


@functools.lru_cache(maxsize=64)
def _factors(mult: Multiplier):
    tx, ty = derivative_tables(mult)
    ua, wa, ea = _factor(tx)  # T_x[i, j] ~ sum_r ua[i, r] wa[j, r]
    ub, wb, eb = _factor(ty)  # T_y[i, j] ~ sum_r ub[i, r] wb[j, r]
    return ua, wa, ub, wb, ea, eb


def _grid(v, mult: Multiplier):
    """Index of v's significand on the multiplier's grid, and v / significand (sign · 2^e; 0 for 0)."""
    n = 1 << mult.mantissa_bits
    f, _ = jnp.frexp(v)
    x = 2.0 * jnp.abs(f)
    off = 0.5 if mult.rounding == "nearest" else 0.0
    idx = jnp.clip(jnp.floor((x - 1.0) * n + off), 0, n - 1).astype(jnp.int32)
    scale = jnp.where(v == 0, 0.0, jnp.where(jnp.isfinite(v), v / jnp.where(x == 0, 1.0, x), v))
    return idx, scale.astype(jnp.float32)


def grad_lhs(native, lhs, rhs, g, tg: TableGradient):
    """d(lhs) of ``native(lhs, rhs)`` (a bilinear op) with cotangent ``g`` under the table-derived derivative."""
    ua, wa, *_ = tg.factors
    ia, _ = _grid(lhs, tg.mult)
    ib, sb = _grid(rhs, tg.mult)
    b_r = sb[None] * jnp.moveaxis(jnp.asarray(wa)[ib], -1, 0)  # (r, *rhs.shape)

    def one(b):  # the cotangent of lhs in native(lhs, b): g contracted with b, in lhs's layout
        return jax.vjp(lambda x: native(x, b), lhs)[1](g)[0]

    parts = jax.vmap(one)(b_r)  # (r, *lhs.shape): the r native products batched
    return jnp.einsum("r...,...r->...", parts, jnp.asarray(ua)[ia])


def grad_rhs(native, lhs, rhs, g, tg: TableGradient):
    """d(rhs) likewise: Σ_r w_r(y_rhs) ⊙ [(lhs / x_lhs) · u_r(x_lhs) ⋆ g]."""
    _, _, ub, wb, *_ = tg.factors
    ia, sa = _grid(lhs, tg.mult)
    ib, _ = _grid(rhs, tg.mult)
    a_r = sa[None] * jnp.moveaxis(jnp.asarray(ub)[ia], -1, 0)  # (r, *lhs.shape)

    def one(a):
        return jax.vjp(lambda y: native(a, y), rhs)[1](g)[0]

    parts = jax.vmap(one)(a_r)
    return jnp.einsum("r...,...r->...", parts, jnp.asarray(wb)[ib])
