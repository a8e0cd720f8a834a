"""Comparing multipliers on one model/dataset: runs, results files (JSON, CSV), plots and the paper-style table."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from ._train import RunConfig, RunResult, _Resolved, _versions, train

__all__ = ["compare", "results_table", "plot_results"]


def results_table(results: list[RunResult]) -> str:
    """Test accuracy per multiplier with the difference to the fp32 run (if any) and the median epoch time."""
    base = next((r for r in results if r.config.label == "fp32"), None)
    head = f"{'model':<9} {'dataset':<14} {'multiplier':<22} {'test acc':>9} {'Δ vs fp32':>10} {'epoch time':>11}"
    lines = [head, "-" * len(head)]
    for r in results:
        delta = "—" if base is None or r is base else f"{100 * (r.test_acc - base.test_acc):+.2f}"
        lines.append(f"{r.config.model:<9} {r.config.dataset:<14} {r.config.label:<22} "
                     f"{100 * r.test_acc:8.2f} % {delta:>10} {r.epoch_time:9.1f} s")
    return "\n".join(lines)


def results_document(results: list[RunResult]) -> dict:
    """The results JSON: every run (its identity, multipliers with table digests and error metrics, history),
    with the date, the command line, the library versions and the machine that produced them."""
    import datetime
    import platform
    import sys

    return {"format": "amsim-results", "format_version": 1,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": list(sys.argv), "versions": _versions(),
            "machine": {"platform": platform.platform(), "processor": _cpu_model(),
                        "python": platform.python_version()},
            "runs": [r.as_dict() for r in results]}


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor()


def plot_results(results: list[RunResult], path) -> Path:
    """Training loss (per logged step) and test accuracy (per epoch), one line per multiplier, saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_l, ax_a) = plt.subplots(1, 2, figsize=(10, 4))
    for r in results:
        xs, ys = zip(*r.loss_curve) if r.loss_curve else ((), ())
        ax_l.plot(xs, ys, label=r.config.label, lw=1.2)
        ax_a.plot([h["epoch"] for h in r.history], [100 * h["test_acc"] for h in r.history], "o-",
                  label=r.config.label)
    ax_l.set(xlabel="epoch", ylabel="training loss", yscale="log", title="training loss")
    ax_a.set(xlabel="epoch", ylabel="test accuracy (%)", title="test accuracy")
    for ax in (ax_l, ax_a):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    r0 = results[0].config
    fig.suptitle(f"{r0.model} on {r0.dataset}")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def compare(multipliers, *, out_dir="results", resume: bool = True, progress: bool = True, plot: bool = True,
            **config) -> list[RunResult]:
    """Train the same model once per multiplier and write ``<out_dir>/<model>-<dataset>.{json,csv,png}``.

    Arguments:
        multipliers: specs (see :func:`amsim.resolve_multiplier`), e.g. ``["fp32", "bf16", "mbm", "mitchell"]``.
        out_dir: where results and per-run checkpoints go.
        resume: continue runs from their checkpoints (same config) instead of starting over.
        progress: progress bars.
        plot: write the PNG of loss and accuracy curves.
        **config: fields of :class:`RunConfig` (model, dataset, epochs, batch_size, lr, rules, backward, ...).

    Returns:
        One :class:`RunResult` per multiplier, in order.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfgs = [RunConfig(multiplier=spec, **config) for spec in multipliers]
    resolved = [_Resolved.of(cfg) for cfg in cfgs]  # every spec resolved (and its file read) before any training
    results = [train(cfg, progress=progress, checkpoint_dir=out / "checkpoints", resume=resume, resolved=res)
               for cfg, res in zip(cfgs, resolved)]
    stem = out / f"{results[0].config.model}-{results[0].config.dataset}"
    stem.with_suffix(".json").write_text(json.dumps(results_document(results), indent=1))
    with open(stem.with_suffix(".csv"), "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["model", "dataset", "multiplier", "run_id", "epoch", "train_loss", "train_acc", "test_loss",
                    "test_acc", "epoch_time_s", "samples_per_s"])
        for r in results:
            for h in r.history:
                w.writerow([r.config.model, r.config.dataset, r.config.label, r.run_id, h["epoch"], h["train_loss"],
                            h["train_acc"], h["test_loss"], h["test_acc"], h["epoch_time"], h["samples_per_s"]])
    if plot:
        plot_results(results, stem.with_suffix(".png"))
    return results


