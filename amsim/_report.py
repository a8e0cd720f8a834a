"""Comparing multipliers on one model/dataset: runs, results files (JSON, CSV), plots and the paper-style table."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

from ._errors import AmsimError
from ._io import atomic_write, atomic_writer
from ._train import RunConfig, RunResult, _Resolved, _versions, train

__all__ = ["compare", "results_table", "plot_results", "load_runs", "write_summary", "save_run"]


def _baseline_key(cfg: RunConfig):
    """What a run shares with the fp32 run it is compared with: everything but the multiplier choice."""
    d = dataclasses.asdict(cfg)
    for k in ("multiplier", "rules", "backward", "data_dir"):
        d.pop(k)
    return json.dumps(d, sort_keys=True)


def results_table(results: list[RunResult]) -> str:
    """Test accuracy per run, the difference to the fp32 run of the same model, data and settings (if any), the
    epochs and the median epoch time."""
    base = {}
    for r in results:
        if r.config.label == "fp32":
            base.setdefault(_baseline_key(r.config), r)
    head = (f"{'model':<9} {'dataset':<14} {'multiplier':<26} {'epochs':>6} {'seed':>4} {'test acc':>9} "
            f"{'Δ vs fp32':>10} {'epoch time':>11}")
    lines = [head, "-" * len(head)]
    for r in results:
        b = base.get(_baseline_key(r.config))
        delta = "—" if b is None or b is r else f"{100 * (r.test_acc - b.test_acc):+.2f}"
        lines.append(f"{r.config.model:<9} {r.config.dataset:<14} {r.config.label:<26} {len(r.history):>6} "
                     f"{r.config.seed:>4} {100 * r.test_acc:8.2f} % {delta:>10} {r.epoch_time:9.1f} s")
    return "\n".join(lines)


def provenance() -> dict:
    """Date, command line, library versions and machine, recorded with every results file."""
    import datetime
    import platform
    import sys

    return {"created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="microseconds"),
            "command": list(sys.argv), "versions": _versions(),
            "machine": {"platform": platform.platform(), "processor": _cpu_model(),
                        "python": platform.python_version()}}


def results_document(results: list[RunResult]) -> dict:
    """The results JSON: every run (its identity, multipliers with table digests and error metrics, history and
    the provenance of the run) with the provenance of this summary."""
    return {"format": "amsim-results", "format_version": 1, **provenance(), "runs": [r.as_dict() for r in results]}


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
        xs, ys = zip(*r.loss_curve, strict=True) if r.loss_curve else ((), ())
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
    with atomic_writer(path) as fh:
        fig.savefig(fh, dpi=110, format="png")
    plt.close(fig)
    return path


def run_file(out_dir, result: RunResult) -> Path:
    """Where a finished run is kept: ``<out>/runs/<label>-<run id>-e<epochs>.json``, one file per run and epoch
    count, never overwritten by another run."""
    from ._train import _slug

    cfg = result.config
    name = f"{_slug(cfg.model)}-{_slug(cfg.dataset)}-{_slug(cfg.label)}-{result.run_id[:16]}-e{len(result.history)}"
    return Path(out_dir) / "runs" / f"{name}.json"


def save_run(out_dir, result: RunResult) -> Path:
    """Write one finished run (with its provenance) to its own file; returns the path."""
    path = run_file(out_dir, result)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps({"format": "amsim-run", "format_version": 1, **provenance(),
                                   "run": result.as_dict()}, indent=1))
    return path


def load_runs(out_dir, model: str | None = None, dataset: str | None = None) -> list[RunResult]:
    """Every run kept in ``<out>/runs`` (of one model and dataset, if given), oldest first. A file that cannot be
    read is named on stderr and left out of the table (nothing is deleted)."""
    import sys

    runs = []
    for path in sorted((Path(out_dir) / "runs").glob("*.json")):
        try:
            doc = json.loads(path.read_text())
            r = RunResult.from_dict(doc["run"])
            r.finished = doc.get("created", "")
        except Exception as exc:  # damaged, or written by something else
            print(f"amsim: skipping {path}: not a readable run file ({type(exc).__name__}: {exc}).", file=sys.stderr)
            continue
        if (model is None or r.config.model == model) and (dataset is None or r.config.dataset == dataset):
            runs.append(r)
    return sorted(runs, key=lambda r: r.finished)


def write_summary(out_dir, model: str, dataset: str, plot: bool = True) -> list[RunResult]:
    """Merge every kept run of ``model`` on ``dataset`` into ``<out>/<model>-<dataset>.{json,csv,png}``."""
    out = Path(out_dir)
    runs = load_runs(out, model, dataset)
    stem = out / f"{model}-{dataset}"
    atomic_write(stem.with_suffix(".json"), json.dumps(results_document(runs), indent=1))
    with atomic_writer(stem.with_suffix(".csv"), "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["model", "dataset", "multiplier", "run_id", "seed", "epoch", "train_loss", "train_acc",
                    "test_loss", "test_acc", "epoch_time_s", "samples_per_s"])
        for r in runs:
            for h in r.history:
                w.writerow([r.config.model, r.config.dataset, r.config.label, r.run_id, r.config.seed, h["epoch"],
                            h["train_loss"], h["train_acc"], h["test_loss"], h["test_acc"], h["epoch_time"],
                            h["samples_per_s"]])
    if plot and runs:
        plot_results(runs, stem.with_suffix(".png"))
    return runs


def compare(multipliers, *, out_dir="results", resume: bool = True, progress: bool = True, plot: bool = True,
            **config) -> list[RunResult]:
    """Train the same model once per multiplier, keep each run in ``<out_dir>/runs/`` and merge every run of
    that model and dataset kept there into ``<out_dir>/<model>-<dataset>.{json,csv,png}``.

    Arguments:
        multipliers: specs (see :func:`amsim.resolve_multiplier`), e.g. ``["fp32", "bf16", "mbm", "mitchell"]``;
            all are resolved before the first run starts.
        out_dir: where results, run files and per-run checkpoints go (created if missing).
        resume: continue runs from their checkpoints (the same run) instead of starting over.
        progress: progress bars.
        plot: write the PNG of loss and accuracy curves.
        **config: fields of :class:`RunConfig` (model, dataset, epochs, batch_size, lr, rules, backward, ...).

    Returns:
        One :class:`RunResult` per multiplier, in order (the summary files hold these and earlier runs).
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise AmsimError(f"the results directory {out} is a file; pass --out a directory (it is created if missing).")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise AmsimError(f"cannot create the results directory {out}: {exc.strerror or exc}.") from None
    cfgs = [RunConfig(multiplier=spec, **config) for spec in multipliers]
    resolved = [_Resolved.of(cfg) for cfg in cfgs]  # every spec resolved (and its file read) before any training
    results = []
    for cfg, res in zip(cfgs, resolved, strict=True):
        results.append(train(cfg, progress=progress, checkpoint_dir=out / "checkpoints", resume=resume,
                             resolved=res))
        save_run(out, results[-1])
    write_summary(out, cfgs[0].model, cfgs[0].dataset, plot)
    return results
