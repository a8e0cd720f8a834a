"""Approximate ``jnp.einsum``: JAX's own einsum with amsim's dot_general for every pairwise contraction."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from ._config import OpConfig, as_config
from ._dot_general import DotGeneral


@dataclasses.dataclass(frozen=True)
class Einsum:
    """``einsum(subscripts, *operands)`` with approximate products (hashable, see :class:`OpConfig`).

    JAX's einsum may swap the two operands of a contraction to avoid a transpose, so with an asymmetric table
    the product ``a x b`` can be evaluated as ``LUT[mb, ma]``; use a symmetric multiplier or ``dot_general``
    directly when operand order matters.
    """

    config: OpConfig

    def __call__(self, subscripts, *operands, precision=None, preferred_element_type=None, **kwargs):
        return jnp.einsum(subscripts, *operands, precision=precision, preferred_element_type=preferred_element_type,
                          _dot_general=DotGeneral(self.config), **kwargs)


def einsum(spec, dlhs=None, drhs=None) -> Einsum:
    """An approximate ``einsum`` (for attention and other tensor contractions).

    Arguments:
        spec: a Multiplier, a built-in name, "exact", or an :class:`OpConfig`.
        dlhs, drhs: multipliers for the gradient products.

    Returns:
        A hashable :class:`Einsum`; call it as ``op("bqhd,bkhd->bhqk", q, k)``.
    """
    return Einsum(as_config(spec, dlhs, drhs))
