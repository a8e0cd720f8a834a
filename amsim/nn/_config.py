"""Which multiplier each of the three products of a layer uses: forward, d(lhs) and d(rhs)."""

from __future__ import annotations

import dataclasses

from .._multiplier import Multiplier
from ..multipliers._registry import NATIVE_NAMES

# A mode is a Multiplier (simulate it), "exact" (plain float32 op by XLA: the exact product; "fp32" and "native"
# are the same) or "ste" (straight-through: the gradient of the exact float32 product, also computed natively).
Mode = Multiplier | str
NATIVE_MODES = ("exact", "ste")


def check_mode(mode, what: str) -> Mode:
    from ._table_grad import TableGradient

    if isinstance(mode, TableGradient) or (isinstance(mode, str) and mode.strip().lower() == "table"):
        if what == "fwd":
            raise ValueError("'table' is a gradient mode (dlhs/drhs): the derivative of the forward multiplier's "
                             "table; the forward product needs a multiplier or 'exact'.")
        return mode if isinstance(mode, TableGradient) else "table"
    if isinstance(mode, Multiplier):
        if mode.is_int and not mode.signed:
            from .._errors import UnsupportedError

            raise UnsupportedError(
                f"{what}: {mode!r} is an unsigned integer multiplier; the JAX bridge quantises tensors "
                "symmetrically to signed integers. Use a signed multiplier (signed=True).")
        return mode
    if isinstance(mode, str) and mode.strip().lower() in NATIVE_MODES + NATIVE_NAMES:
        return "ste" if mode.strip().lower() == "ste" else "exact"
    if isinstance(mode, str):
        from ..multipliers import get

        return get(mode)
    raise TypeError(f"{what} must be an amsim.Multiplier, a built-in multiplier name, 'exact' (= 'fp32', "
                    "'native'), 'ste' or (for the gradients) 'table'; "
                    f"got {mode!r}.")


@dataclasses.dataclass(frozen=True)
class OpConfig:
    """Multipliers for the three products of a contraction (AQT-style: forward, d(lhs), d(rhs)).

    Attributes:
        fwd: multiplier of the forward product, or "exact" (native float32).
        dlhs: multiplier of the gradient product ``g x rhs`` that gives d(lhs); None = same as ``fwd``.
            "exact" computes it natively in float32; "ste" (straight-through) is the same native gradient of the
            exact product, named for the rounding it passes over; "table" is the derivative of the forward
            multiplier's own product, estimated from its table (:mod:`amsim.nn._table_grad`).
        drhs: likewise for ``lhs x g`` that gives d(rhs).
        per_channel: integer multipliers only: quantise the rhs per output column (weights per channel) rather
            than per tensor.

    Configs are frozen and hashable, so ops built from them are stable static arguments under ``jax.jit``.
    """

    fwd: Mode
    dlhs: Mode | None = None
    drhs: Mode | None = None
    per_channel: bool = True

    def __post_init__(self):
        from ._table_grad import TableGradient

        object.__setattr__(self, "fwd", check_mode(self.fwd, "fwd"))
        for side in ("dlhs", "drhs"):
            mode = check_mode(self.fwd if getattr(self, side) is None else getattr(self, side), side)
            if mode == "table":  # the derivative of the forward multiplier's own table
                if not isinstance(self.fwd, Multiplier):
                    raise ValueError(f"{side}='table' needs a forward multiplier to take the derivative of; the "
                                     "forward product here is native fp32 (use 'exact' for its gradient).")
                mode = TableGradient(self.fwd)
            object.__setattr__(self, side, mode)

    @property
    def is_native(self) -> bool:
        """True when no product is simulated (the op is left to XLA entirely)."""
        return all(isinstance(m, str) for m in (self.fwd, self.dlhs, self.drhs))


def as_config(spec, dlhs=None, drhs=None) -> OpConfig:
    """An :class:`OpConfig` from a config, a Multiplier, a built-in name, "exact" or "ste"."""
    if isinstance(spec, OpConfig):
        if dlhs is not None or drhs is not None:
            return dataclasses.replace(spec, dlhs=dlhs or spec.dlhs, drhs=drhs or spec.drhs)
        return spec
    return OpConfig(spec, dlhs, drhs)
