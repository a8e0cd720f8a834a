"""A first-order model of a network's multiplication energy, and the accuracy-vs-energy Pareto front.

Energy of one inference = Σ over the approximable layers of (multiply-accumulates per example × the power of the
multiplier that layer uses). Only the multipliers are counted: adders, accumulators, memory and data movement are
left out, and every multiplier is assumed to run at the same clock, so power stands for energy per product.

- **Relative** energy divides by the same network with the exact multiplier of the same width in every layer.
  A multiplier's relative power is its ``cost.power_mw`` over the exact circuit's (``published["exact_PWR_mW"]``,
  which the EvoApproxLib importer fills from the library's exact circuit), or ``cost.power_mw`` itself when the
  cost is ``relative``. A layer left in fp32 (not approximated) counts as the exact multiplier: 1.
- **Absolute** energy, where every layer's cost is absolute, is Σ MACs × power × delay (the power-delay product
  of one multiplication: mW × ns = pJ), in nJ per example; with a layer left in fp32 (no circuit figures) the
  absolute figure is omitted.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ._multiplier import Multiplier

__all__ = ["relative_power", "EnergyEstimate", "assignment", "estimate", "pareto_front", "plot_pareto"]


def relative_power(m) -> float | None:
    """A multiplier's power relative to the exact multiplier of its width (1.0 for fp32 / exact layers), or None
    if its cost does not say."""
    if not isinstance(m, Multiplier):
        return 1.0
    c = m.cost
    if (c is None or c.power_mw is None) and m.is_int:
        from .multipliers import exact_int

        # the exact product is the reference of the relative model, whatever its cost
        return 1.0 if m.digest == exact_int(m.int_bits, signed=m.signed).digest else None
    if c is None or c.power_mw is None:
        return None
    if c.relative:
        return c.power_mw
    ref = dict(c.published).get("exact_PWR_mW")
    return c.power_mw / ref if ref else None


@dataclasses.dataclass
class EnergyEstimate:
    """Multiplication energy of one inference under a per-layer assignment of multipliers."""

    relative: float | None  # vs the exact multiplier of the same width everywhere; None if a cost is missing
    absolute_nj: float | None  # Σ MACs × power × delay, nJ per example; None unless every figure is known
    total_macs: int
    layers: list  # dicts: path, macs, multiplier, relative_power

    @property
    def saving(self) -> float | None:
        """1 - relative energy."""
        return None if self.relative is None else 1.0 - self.relative


def assignment(paths, resolved) -> dict:
    """Which multiplier each layer path gets from a resolved run config, matched by the bridge's own rule
    matching (the first rule whose pattern is found in the path, else the run's multiplier)."""
    from .nn._intercept import Rules

    rules = Rules(tuple(resolved.rules) + (("*", resolved.multiplier),))
    return {p: rules.lookup(p, "op") for p in paths}


def estimate(ops: list[dict], chosen: dict) -> EnergyEstimate:
    """Energy of the operations ``ops`` (from :func:`amsim.layers`) with ``chosen[path]`` multipliers."""
    per, macs = [], {}
    for op in ops:
        macs[op["path"]] = macs.get(op["path"], 0) + op["macs"]
    rel_sum, abs_sum, abs_ok = 0.0, 0.0, True
    for path, n in macs.items():
        m = chosen[path]
        r = relative_power(m)
        per.append({"path": path, "macs": n, "multiplier": m.name if isinstance(m, Multiplier) else "fp32",
                    "relative_power": r})
        rel_sum = None if r is None or rel_sum is None else rel_sum + n * r
        c = m.cost if isinstance(m, Multiplier) else None
        if c is not None and not c.relative and c.power_mw is not None and c.delay_ns is not None:
            abs_sum += n * c.power_mw * c.delay_ns * 1e-3  # mW x ns = pJ; x 1e-3 = nJ
        else:
            abs_ok = False
    total = sum(macs.values())
    return EnergyEstimate(None if rel_sum is None or total == 0 else rel_sum / total, abs_sum if abs_ok else None,
                          total, per)


def pareto_front(points) -> list[int]:
    """Indices of the points ``(energy, accuracy)`` no other point beats on both (lower energy and higher
    accuracy; ties kept), in order of energy. Points with an unknown energy are never on the front."""
    idx = [i for i, (e, a) in enumerate(points) if e is not None and a is not None]
    idx.sort(key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], -np.inf
    for i in idx:
        if points[i][1] > best or (front and points[i] == points[front[-1]]):
            front.append(i)
            best = max(best, points[i][1])
    return front


def plot_pareto(rows, path=None, *, title: str = "accuracy vs multiplication energy", baseline: float | None = None,
                zoom: float = 3.0):
    """Accuracy (%) against relative multiplication energy, one point per row ``(label, energy, accuracy)``, the
    Pareto front drawn; rows without an energy are listed under the plot. When some points lie more than ``zoom``
    points below the best, a second panel shows the top ``zoom`` points, where the front's labels are legible.

    Returns:
        The PNG's path if ``path`` is given, else the Figure.
    """
    from ._plots import new_figure, save_figure

    pts = [(e, a) for _, e, a in rows]
    front = pareto_front(pts)
    known = [i for i, (e, a) in enumerate(pts) if e is not None]
    best = max((100 * pts[i][1] for i in known), default=0.0)
    lo = best - zoom
    two = any(100 * pts[i][1] < lo for i in known)
    fig = new_figure(figsize=(13.0 if two else 7.5, 4.8))
    axes = fig.subplots(1, 2 if two else 1, squeeze=False)[0]
    for k, ax in enumerate(axes):
        show = [i for i in known if not (two and k == 1) or 100 * pts[i][1] >= lo]
        ax.scatter([pts[i][0] for i in show], [100 * pts[i][1] for i in show], s=18, color="0.55",
                   label="evaluated", zorder=2)
        fr = [i for i in front if i in show]
        ax.plot([pts[i][0] for i in fr], [100 * pts[i][1] for i in fr], "o-", color="C3", ms=5, lw=1.2,
                label="Pareto front", zorder=3)
        if k == len(axes) - 1:  # labels where they can be read
            for j, i in enumerate(fr):
                ax.annotate(rows[i][0], (pts[i][0], 100 * pts[i][1]), textcoords="offset points",
                            xytext=(4, -11 if j % 2 else 5), fontsize=7)
        if baseline is not None:
            ax.axhline(100 * baseline, color="k", lw=0.8, ls="--", label="fp32")
        ax.set(xlabel="relative multiplication energy (exact multiplier = 1)", ylabel="top-1 accuracy (%)",
               title=title if k == 0 else f"within {zoom:g} points of the best")
        if two and k == 1:
            ax.set_ylim(lo, best + 0.15 * zoom)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    missing = [rows[i][0] for i, (e, _) in enumerate(pts) if e is None]
    if missing:
        fig.text(0.01, 0.01, "no cost known (not plotted): " + ", ".join(missing), fontsize=7, wrap=True)
    fig.tight_layout(rect=(0, 0.05 if missing else 0, 1, 1))
    return fig if path is None else save_figure(fig, path)
