"""Plots of multiplier error. matplotlib is imported only when a plot is drawn (``pip install amsim[plots]``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ._metrics import exact_grid

__all__ = ["error_heatmap", "relative_error_grid", "new_figure", "save_figure"]


def relative_error_grid(mult) -> np.ndarray:
    """Relative error ``(p - xy) / |xy|`` over the multiplier's operand grid (table layout, float64).

    Float multipliers: rows are the first operand's significand 1.ma, columns the second's. Integer multipliers:
    rows and columns are the operand values lo..hi; pairs with an exact product of 0 are NaN.
    """
    exact = exact_grid(mult)
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = (mult.table.values.astype(np.float64) - exact) / np.abs(exact)
    return np.where(exact == 0, np.nan, rel)


def _require_matplotlib():
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ImportError("amsim's plots need matplotlib, which is not installed: pip install 'amsim[plots]' "
                          "(or pip install matplotlib).") from None


def error_heatmap(mult, ax=None, *, limit: float | None = None, cmap: str = "RdBu_r", colorbar: bool = True):
    """Draw the relative error of a multiplier over its whole operand grid as a heat map.

    Arguments:
        mult: an :class:`amsim.Multiplier`.
        ax: matplotlib Axes to draw into (default: a new figure's).
        limit: colour range +-limit, as a fraction (default: the largest |relative error|).
        cmap: a diverging colormap; zero error is its centre.
        colorbar: add a colour bar labelled in percent.

    Returns:
        The matplotlib Axes. The image data (``ax.images[0].get_array()``) is the relative error in percent,
        first operand along the vertical axis.
    """
    _require_matplotlib()
    rel = relative_error_grid(mult)
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(figsize=(4.0, 3.3))
    if limit is None:
        limit = float(np.nanmax(np.abs(rel))) if np.isfinite(rel).any() else 0.0
    limit = max(limit, 1e-9)  # an exact multiplier still gets a valid colour range
    if mult.is_int:
        lo, hi = mult.int_range
        extent = (lo - 0.5, hi + 0.5, lo - 0.5, hi + 0.5)
        xlabel, ylabel = "b", "a"
    else:
        extent = (1.0, 2.0, 1.0, 2.0)
        xlabel, ylabel = "significand of b", "significand of a"
    image = ax.imshow(100 * rel, origin="lower", extent=extent, cmap=cmap, vmin=-100 * limit, vmax=100 * limit,
                      interpolation="nearest", aspect="equal")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(mult.name)
    if colorbar:
        ax.figure.colorbar(image, ax=ax, label="relative error (%)")
    return ax


def new_figure(**kw):
    """A matplotlib Figure drawn without pyplot: the caller's backend (a notebook's inline one) is left alone."""
    _require_matplotlib()
    from matplotlib.figure import Figure

    return Figure(**kw)


def save_figure(fig, path) -> Path:
    """Write a figure as PNG, atomically."""
    from ._io import atomic_writer

    path = Path(path)
    with atomic_writer(path) as fh:
        fig.savefig(fh, dpi=110, format="png")
    return path
