"""Error metrics of a multiplier over its exhaustive operand grid."""

from __future__ import annotations

import dataclasses

import numpy as np

__all__ = ["ErrorStats", "error_stats"]


@dataclasses.dataclass(frozen=True)
class ErrorStats:
    """Error of a multiplier against the exact product, over every operand pair of its format.

    Float multipliers are measured on significands (x, y in [1, 2)); integer ones on all operand pairs, with
    relative errors taken over pairs whose exact product is non-zero.

    Attributes:
        name: the multiplier.
        mre: mean relative error, mean(|p - xy| / |xy|).
        med: mean error distance, mean(|p - xy|) (significand units for floats).
        wce: worst-case error distance, max(|p - xy|).
        max_re: worst-case relative error.
        bias: mean signed relative error, mean((p - xy) / |xy|).
        ep: error probability, the fraction of pairs with p != xy.
        pairs: number of operand pairs evaluated.
    """

    name: str
    mre: float
    med: float
    wce: float
    max_re: float
    bias: float
    ep: float
    pairs: int

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    def __str__(self) -> str:
        return format_table([self])


def format_table(stats: list[ErrorStats]) -> str:
    """A plain-text table of several multipliers' metrics (percentages where the metric is relative)."""
    head = f"{'multiplier':<20} {'MRE %':>9} {'bias %':>9} {'max RE %':>9} {'MED':>11} {'WCE':>11} {'EP %':>7}"
    lines = [head, "-" * len(head)]
    for s in stats:
        lines.append(f"{s.name:<20} {100 * s.mre:9.4f} {100 * s.bias:+9.4f} {100 * s.max_re:9.4f} "
                     f"{s.med:11.4g} {s.wce:11.4g} {100 * s.ep:7.2f}")
    return "\n".join(lines)


def exact_grid(mult) -> np.ndarray:
    """The exact products on the multiplier's grid (float64), same layout as its table."""
    n = 1 << mult.bits
    if mult.is_code:
        from ._formats import decode_all

        v = decode_all(mult.operand_format).astype(np.float64)
        return np.multiply.outer(v, v)
    if mult.is_int:
        lo = mult.int_range[0]
        v = np.arange(n, dtype=np.float64) + lo
    else:
        v = 1.0 + np.arange(n, dtype=np.float64) / n
    return np.multiply.outer(v, v)


def error_stats(mult) -> ErrorStats:
    p = mult.table.values.astype(np.float64)
    ex = exact_grid(mult)
    if mult.is_code:  # finite operand pairs only
        with np.errstate(invalid="ignore"):
            keep = np.isfinite(ex) & np.isfinite(p)
        p, ex = p[keep], ex[keep]
    diff = p - ex
    nz = ex != 0
    rel = diff[nz] / np.abs(ex[nz])
    return ErrorStats(
        name=mult.name,
        mre=float(np.mean(np.abs(rel))) if rel.size else 0.0,
        med=float(np.mean(np.abs(diff))),
        wce=float(np.max(np.abs(diff))),
        max_re=float(np.max(np.abs(rel))) if rel.size else 0.0,
        bias=float(np.mean(rel)) if rel.size else 0.0,
        ep=float(np.mean(diff != 0)),
        pairs=int(p.size),
    )
