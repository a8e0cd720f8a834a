"""Comparing multipliers: sweeps of runs (multipliers x seeds), the fine-tuning protocol, the results files kept
per run and merged per model and dataset, paper tables (text, Markdown, LaTeX, CSV) and plots."""

from __future__ import annotations

import csv
import dataclasses
import json
import statistics
from pathlib import Path

from ._errors import AmsimError
from ._io import atomic_write, atomic_writer
from ._tables import format_rows
from ._train import RunConfig, RunResult, _Resolved, _versions, canonical_spec, train

__all__ = ["compare", "protocol", "results_table", "plot_results", "load_runs", "write_summary", "save_run",
           "report", "ProtocolResult"]


# ---- the results table --------------------------------------------------------------------------------------
def _setting(run: RunResult, *, baseline: bool) -> str:
    """What makes runs one row of the table: their identity (table digests, data, model, training settings,
    versions) without the seed and the initial weights that come with it, and the epoch count. With
    ``baseline``, the multipliers are left out too: the key of the fp32 row a row is compared with."""
    ident = dict(run.identity) or {"config": dataclasses.asdict(run.config)}
    for k in ("seed", "init") + (("multipliers", "backward") if baseline else ()):
        ident.pop(k, None)
    if "config" in ident:  # a run file without identity (never written by this version)
        ident["config"] = {k: v for k, v in ident["config"].items() if k not in ("seed", "data_dir")}
    ident["finetuned"] = bool(run.config.init_from)
    ident["epochs"] = len(run.history)
    return json.dumps(ident, sort_keys=True, default=str)


def _mean_std(values):
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def aggregate(results: list[RunResult]) -> list[dict]:
    """Rows of the table: runs with the same settings but their seed, in order of first appearance, with the
    mean and standard deviation of the final test accuracy over the seeds and the Δ to the fp32 row of the same
    model, data and training settings."""
    groups: dict[str, list[RunResult]] = {}
    for r in results:
        groups.setdefault(_setting(r, baseline=False), []).append(r)
    rows = []
    for runs in groups.values():
        accs = [r.test_acc for r in runs]
        m, s = _mean_std(accs)
        rows.append({"config": runs[0].config, "label": runs[0].config.label, "epochs": len(runs[0].history),
                     "energy": runs[0].energy,
                     "seeds": sorted(r.config.seed for r in runs), "mean": m, "std": s, "accs": accs,
                     "epoch_time": statistics.median(r.epoch_time for r in runs),
                     "compile_time": statistics.median(r.compile_time for r in runs), "runs": runs})
    base = {}
    for row in rows:
        if all(m == "fp32" for _, m in row["runs"][0].identity.get("multipliers", [["*", row["label"]]])):
            base.setdefault(_setting(row["runs"][0], baseline=True), row)
    for row in rows:
        b = base.get(_setting(row["runs"][0], baseline=True))
        row["delta"] = None if b is None or b is row else row["mean"] - b["mean"]
    return rows


def results_table(results: list[RunResult], fmt: str = "text") -> str:
    """The paper table: final test accuracy per setting (mean ± std over its seeds), Δ vs the fp32 row of the same
    settings, epochs, seeds, median epoch time (compilation excluded) and compile time.

    Arguments:
        results: runs, e.g. from :func:`compare` or :func:`load_runs`; runs that differ only in their seed make
            one row.
        fmt: "text", "md", "latex" or "csv" (CSV has numbers only: percentages, std and Δ in their own columns).

    Returns:
        The table as a string.
    """
    rows = aggregate(results)
    has_e = any(r["energy"] not in (None, 1.0) for r in rows)  # a cost is known somewhere
    if fmt == "csv":
        head = ["model", "dataset", "multiplier", "epochs", "seeds", "test_acc_mean_pct", "test_acc_std_pct",
                "delta_vs_fp32_pct", "epoch_s", "compile_s", "relative_energy"]
        num = lambda v: "" if v is None else f"{100 * v:.4f}"  # noqa: E731
        return format_rows(head, [[r["config"].model, r["config"].dataset, r["label"], str(r["epochs"]),
                                   " ".join(map(str, r["seeds"])), num(r["mean"]),
                                   num(r["std"]) if len(r["seeds"]) > 1 else "", num(r["delta"]),
                                   f"{r['epoch_time']:.3f}", f"{r['compile_time']:.3f}",
                                   "" if r["energy"] is None else f"{r['energy']:.4f}"] for r in rows], "csv")
    out = []
    for row in rows:
        cfg = row["config"]
        acc = f"{100 * row['mean']:.2f}" + (f" ± {100 * row['std']:.2f}" if len(row["seeds"]) > 1 else "")
        delta = "—" if row["delta"] is None else f"{100 * row['delta']:+.2f}"
        out.append([cfg.model, cfg.dataset, row["label"], str(row["epochs"]), ",".join(map(str, row["seeds"])), acc,
                    delta, f"{row['epoch_time']:.1f}", f"{row['compile_time']:.1f}"]
                   + (["—" if row["energy"] is None else f"{row['energy']:.3f}"] if has_e else []))
    head = ["model", "dataset", "multiplier", "epochs", "seeds", "test acc %", "Δ vs fp32", "epoch s", "compile s"]
    return format_rows(head + (["rel. energy"] if has_e else []), out, fmt)


# ---- provenance and files -------------------------------------------------------------------------------------
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


def plot_results(results: list[RunResult], path=None):
    """Training loss, test accuracy per epoch (mean over seeds) and final test accuracy (bars with the seeds'
    standard deviation), one colour per setting, the legend below the plots so it hides no data.

    Returns:
        The PNG's path if ``path`` is given, else the matplotlib Figure (a notebook shows it inline).
    """
    import matplotlib
    import numpy as np

    from ._plots import new_figure, save_figure

    rows = aggregate(results)
    fig = new_figure(figsize=(14, 4.2))
    ax_l, ax_a, ax_b = fig.subplots(1, 3)
    colors = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, row in enumerate(rows):
        c = colors[i % len(colors)]
        r0 = row["runs"][0]
        if r0.loss_curve:
            xs, ys = zip(*r0.loss_curve, strict=True)
            ax_l.plot(xs, ys, lw=1.1, color=c)
        epochs = [h["epoch"] for h in r0.history]
        acc = np.array([[100 * h["test_acc"] for h in r.history] for r in row["runs"]
                        if len(r.history) == len(epochs)])
        ax_a.plot(epochs, acc.mean(0), "o-", color=c, label=row["label"] + (f" ({len(row['seeds'])} seeds)"
                                                                           if len(row["seeds"]) > 1 else ""))
        if len(acc) > 1:
            ax_a.fill_between(epochs, acc.mean(0) - acc.std(0, ddof=1), acc.mean(0) + acc.std(0, ddof=1), color=c,
                              alpha=0.2)
        ax_b.bar(i, 100 * row["mean"], yerr=100 * row["std"] if len(row["seeds"]) > 1 else None, color=c, capsize=4)
    ax_l.set(xlabel="epoch", ylabel="training loss", yscale="log", title="training loss (first seed)")
    ax_a.set(xlabel="epoch", ylabel="test accuracy (%)", title="test accuracy")
    lo = min((100 * min(r["accs"]) for r in rows), default=0)
    ax_b.set(xticks=range(len(rows)), ylabel="final test accuracy (%)", title="final accuracy (± std over seeds)",
             ylim=(max(0.0, lo - 5), 100))
    ax_b.set_xticklabels([r["label"] for r in rows], rotation=30, ha="right", fontsize=8)
    for ax in (ax_l, ax_a, ax_b):
        ax.grid(alpha=0.3)
    fig.legend(*ax_a.get_legend_handles_labels(), loc="lower center", ncol=min(4, max(1, len(rows))), fontsize=8,
               bbox_to_anchor=(0.5, 0.0), frameon=False)
    r0 = rows[0]["config"] if rows else None
    if r0 is not None:
        fig.suptitle(f"{r0.model} on {r0.dataset}")
    fig.tight_layout(rect=(0, 0.04 + 0.04 * ((len(rows) - 1) // 4), 1, 1))
    return fig if path is None else save_figure(fig, path)


def run_file(out_dir, result: RunResult) -> Path:
    """Where a finished run is kept: ``<out>/runs/<label>-<run id>-e<epochs>.json``, one file per run and epoch
    count, never overwritten by another run."""
    from ._train import _slug

    cfg = result.config
    name = f"{_slug(cfg.model)}-{_slug(cfg.dataset)}-{_slug(cfg.label)}-{result.run_id[:16]}-e{len(result.history)}"
    return Path(out_dir) / "runs" / f"{name}.json"


def save_run(out_dir, result: RunResult) -> Path:
    """Write one finished run (with its provenance) to its own file; returns the path. A file already kept for
    the same run and epoch count stays as it is: it records the session that trained those epochs (a resumed
    run that trained nothing has only its own compile time to add)."""
    path = run_file(out_dir, result)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        kept = json.loads(path.read_text())["run"]
        if kept["run_id"] == result.run_id and kept["history"] == json.loads(json.dumps(result.history)):
            return path
    except (OSError, ValueError, KeyError, TypeError):
        pass  # missing or unreadable: (re)written below
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


def report(out_dir, fmt: str = "md", model: str | None = None, dataset: str | None = None) -> str:
    """The paper table of every run kept in ``out_dir`` (merged over seeds), as text, md, latex or csv."""
    runs = load_runs(out_dir, model, dataset)
    if not runs:
        raise AmsimError(f"{out_dir} keeps no runs (looked in {Path(out_dir) / 'runs'}); run amsim compare/train with "
                         f"--out {out_dir} first.")
    return results_table(runs, fmt)


# ---- running sweeps ---------------------------------------------------------------------------------------------
def _out_dir(out_dir) -> Path:
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise AmsimError(f"the results directory {out} is a file; pass --out a directory (it is created if missing).")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise AmsimError(f"cannot create the results directory {out}: {exc.strerror or exc}.") from None
    return out


def _sweep(specs, seeds, config):
    from .multipliers import expand

    seeds = list(seeds) if seeds is not None else [config.pop("seed", 0)]
    config.pop("seed", None)
    if not seeds:
        raise ValueError("no seeds given: pass at least one, e.g. seeds=[0, 1, 2] (--seeds 0,1,2).")
    cfgs, resolved = [], []
    for e in [e for spec in specs for e in (expand(spec) if isinstance(spec, str) else [spec])]:
        res = _Resolved.of(RunConfig(multiplier=e, **config))  # every spec resolved (and read) before any training
        named = {"multiplier": canonical_spec(e, res.multiplier) if isinstance(e, str) else e,
                 "rules": tuple((p, canonical_spec(s, m) if isinstance(s, str) else s)
                                for (p, s), (_, m) in zip(config.get("rules", ()), res.rules, strict=True))}
        cfgs += [RunConfig(seed=int(s), **{**config, **named}) for s in seeds]
        resolved += [res] * len(seeds)
    return cfgs, resolved


def _with_energy(result: RunResult, resolved) -> RunResult:
    """Record the run's first-order multiplication energy (see docs/cost.md) in its result."""
    from ._energy import assignment, estimate
    from ._evaluate import layers

    ops = layers(result.config.model, result.config.dataset)
    result.energy = estimate(ops, assignment([o["path"] for o in ops], resolved)).relative
    return result


def compare(multipliers, *, out_dir="results", resume: bool = True, progress: bool = True, plot: bool = True,
            seeds=None, **config) -> list[RunResult]:
    """Train the same model once per multiplier (and seed), keep each run in ``<out_dir>/runs/`` and merge every
    run of that model and dataset kept there into ``<out_dir>/<model>-<dataset>.{json,csv,png}``.

    Arguments:
        multipliers: specs (see :func:`amsim.resolve_multiplier`), e.g. ``["fp32", "bf16", "mbm", "drum(k=3..6)"]``;
            all are resolved before the first run starts.
        out_dir: where results, run files and per-run checkpoints go (created if missing).
        resume: continue runs from their checkpoints (the same run) instead of starting over; an interrupted sweep
            rerun with the same arguments skips the runs it finished.
        progress: progress bars.
        plot: write the PNG of loss and accuracy curves and final accuracies.
        seeds: run every configuration once per seed (the table reports mean ± std); default: ``seed`` of config.
        **config: fields of :class:`RunConfig` (model, dataset, epochs, batch_size, lr, rules, backward, init_from...).

    Returns:
        One :class:`RunResult` per multiplier and seed, in order (the summary files hold these and earlier runs).
    """
    out = _out_dir(out_dir)
    cfgs, resolved = _sweep(multipliers, seeds, dict(config))
    results = []
    for cfg, res in zip(cfgs, resolved, strict=True):
        results.append(_with_energy(train(cfg, progress=progress, checkpoint_dir=out / "checkpoints",
                                          resume=resume, resolved=res), res))
        save_run(out, results[-1])
    write_summary(out, cfgs[0].model, cfgs[0].dataset, plot)
    return results


@dataclasses.dataclass
class ProtocolResult:
    """The fine-tuning protocol: fp32 pretraining, then per multiplier the accuracy of the fp32 weights under it
    (before retraining) and after fine-tuning with it (per seed). ``control`` is the same fine-tuning in fp32:
    the after-fine-tuning Δ is taken against it, so that the extra epochs themselves are not counted as
    recovery."""

    pretrained: list  # RunResult per seed
    before: dict  # multiplier label -> list of EvalResult (per seed)
    after: dict  # multiplier label -> list of RunResult (per seed)
    control: list = dataclasses.field(default_factory=list)  # fp32 fine-tuned the same way, per seed

    def table(self, fmt: str = "text") -> str:
        fp32 = [r.test_acc for r in self.pretrained]
        ctrl = [r.test_acc for r in self.control] or fp32
        ms = lambda v: f"{100 * _mean_std(v)[0]:.2f}" + (f" ± {100 * _mean_std(v)[1]:.2f}"  # noqa: E731
                                                       if len(v) > 1 else "")
        rows = []
        for label, evals in self.before.items():
            b = [e.top1 for e in evals]
            a = [r.test_acc for r in self.after[label]]
            rows.append([label, ms(fp32), ms(b), f"{100 * (_mean_std(b)[0] - _mean_std(fp32)[0]):+.2f}", ms(a),
                         f"{100 * (_mean_std(a)[0] - _mean_std(ctrl)[0]):+.2f}"])
        head = ["multiplier", "fp32 %", "before retraining %", "Δ", "after fine-tuning %",
                "Δ vs fp32 fine-tuned" + (f" ({ms(ctrl)})" if self.control else "")]
        return format_rows(head, rows, fmt)


def protocol(multipliers, *, pretrain_epochs: int, finetune_epochs: int, out_dir="results", resume: bool = True,
             progress: bool = True, seeds=None, lr_finetune: float | None = None, **config) -> ProtocolResult:
    """The paper protocol in one call: train in fp32 for ``pretrain_epochs``; evaluate those weights under each
    multiplier (no retraining); fine-tune them with each multiplier (and, as the control, in fp32) for
    ``finetune_epochs``; per seed.

    Arguments:
        multipliers: specs, resolved before anything runs; fp32 is the pretraining and is not fine-tuned.
        pretrain_epochs, finetune_epochs: epochs of each phase.
        lr_finetune: learning rate of the fine-tuning (default: the pretraining's ``lr``).
        out_dir, resume, progress, seeds, config: as for :func:`compare`; every run is kept in ``out_dir``.

    Returns:
        A :class:`ProtocolResult` (``.table()``).
    """
    from ._evaluate import evaluate

    out = _out_dir(out_dir)
    config = dict(config)
    from .multipliers import NATIVE_NAMES

    specs = [s for s in multipliers if not (isinstance(s, str) and s.strip().lower() in NATIVE_NAMES)]
    if not specs:
        raise ValueError("the protocol needs at least one multiplier besides fp32 (the pretraining).")
    pre_cfgs, pre_res = _sweep(["fp32"], seeds, {**config, "epochs": pretrain_epochs})
    _sweep(specs, seeds, {**config, "epochs": finetune_epochs})  # resolve every spec before training
    result = ProtocolResult([], {}, {})
    for cfg, res in zip(pre_cfgs, pre_res, strict=True):
        pre = _with_energy(train(cfg, progress=progress, checkpoint_dir=out / "checkpoints", resume=resume,
                                 resolved=res), res)
        src = save_run(out, pre)
        result.pretrained.append(pre)
        evals = evaluate(src, specs, rules=cfg.rules, progress=progress, data_dir=cfg.data_dir)[1:]  # [0]: fp32
        ft_config = {**config, "epochs": finetune_epochs, "init_from": str(src)}
        if lr_finetune is not None:
            ft_config["lr"] = lr_finetune
        (ccfg,), (cres,) = _sweep(["fp32"], [cfg.seed], ft_config)  # the control: the same fine-tuning in fp32
        control = _with_energy(train(ccfg, progress=progress, checkpoint_dir=out / "checkpoints", resume=resume,
                                     resolved=cres), cres)
        save_run(out, control)
        result.control.append(control)
        ft_cfgs, ft_res = _sweep(specs, [cfg.seed], ft_config)  # the same expansion, in the same order
        for ev, fcfg, fres in zip(evals, ft_cfgs, ft_res, strict=True):
            ft = _with_energy(train(fcfg, progress=progress, checkpoint_dir=out / "checkpoints", resume=resume,
                                    resolved=fres), fres)
            save_run(out, ft)
            result.before.setdefault(ev.label, []).append(ev)
            result.after.setdefault(ev.label, []).append(ft)
    write_summary(out, pre_cfgs[0].model, pre_cfgs[0].dataset)
    atomic_write(out / f"{pre_cfgs[0].model}-{pre_cfgs[0].dataset}-protocol.md", result.table("md") + "\n")
    return result
