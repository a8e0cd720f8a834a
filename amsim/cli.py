"""The ``amsim`` command line.

    amsim compare --model lenet5 --dataset mnist --multipliers fp32,bf16,mbm,mitchell --epochs 2 --seeds 0,1,2
    amsim compare --pretrain-epochs 2 --finetune-epochs 1 --multipliers mbm,mitchell,drum4   # the paper protocol
    amsim evaluate --from results/runs/<run>.json --multipliers mbm,mitchell,"drum(k=3..6)"
    amsim sensitivity --from results/runs/<run>.json --multiplier mitchell
    amsim layers --model lenet5
    amsim report results --format latex
    amsim inspect mbm mitchell --heatmap mbm.png
    amsim list
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def _all_rules(args):
    """--rule options, then the rules of a --rules file."""
    rules = _rules(args.rule)
    if getattr(args, "rules", None):
        from ._search import load_rules

        rules += load_rules(args.rules)
    return rules


def _rules(items):
    rules = []
    for item in items or ():
        if "=" not in item:
            raise SystemExit(f"amsim: --rule expects PATTERN=MULTIPLIER, got {item!r}")
        pat, spec = item.rsplit("=", 1)
        rules.append((pat, spec))
    return tuple(rules)


def _specs(text):
    from .multipliers import split_specs

    return split_specs(text)


def _seeds(text):
    if text is None:
        return None
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"--seeds expects comma-separated integers, e.g. 0,1,2; got {text!r}.") from None


def _add_data_args(p, model_default="lenet5"):
    p.add_argument("--model", default=model_default, help="model name (see `amsim list`)")
    p.add_argument("--dataset", default="mnist" if model_default else None, help="dataset name (see `amsim list`)")
    p.add_argument("--test-limit", type=int, default=None, help="use only the first N test examples")
    p.add_argument("--data-dir", default=None, help="searched first for dataset files (also $AMSIM_DATA_DIR)")


def _add_weights_args(p, fmt, out_help):
    """What every command on trained weights takes: the source, its data, where results go, the table format."""
    p.add_argument("--from", dest="source", required=True, metavar="RUN|CHECKPOINT|PARAMS")
    _add_data_args(p, model_default=None)
    p.add_argument("--out", default="results", help=out_help)
    p.add_argument("--format", **fmt)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _add_run_args(p):
    _add_data_args(p)
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default 2)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--optimizer", choices=["adam", "sgd"], default="adam")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--seeds", default=None, help="comma-separated seeds: every configuration once per seed")
    p.add_argument("--train-limit", type=int, default=None, help="use only the first N training examples")
    p.add_argument("--rule", action="append", metavar="PATTERN=MULT",
                   help="per-layer override: regex on the operation path (see `amsim layers`) = multiplier")
    p.add_argument("--rules", default=None, metavar="FILE", help="per-layer rules from a file (`amsim search`); "
                   "--rule options come first")
    p.add_argument("--pareto", action="store_true", help="also plot final accuracy vs multiplication energy")
    p.add_argument("--backward", choices=["approx", "exact", "ste", "table"], default="approx",
                   help="gradient products: through the multiplier (approx), native float32 (exact), "
                        "straight-through (ste), or the derivative of the multiplier's table (table)")
    p.add_argument("--init-from", default=None, metavar="RUN|CHECKPOINT|PARAMS",
                   help="start from trained weights (fine-tuning): a run file, checkpoint or params file")
    p.add_argument("--out", default="results", help="directory for JSON/CSV/PNG results, runs and checkpoints")
    p.add_argument("--no-resume", action="store_true", help="start over even if a checkpoint exists")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _config(args):
    return dict(model=args.model, dataset=args.dataset, epochs=2 if args.epochs is None else args.epochs,
                batch_size=args.batch_size, lr=args.lr, optimizer=args.optimizer, seed=args.seed,
                train_limit=args.train_limit, test_limit=args.test_limit, data_dir=args.data_dir,
                rules=_all_rules(args), backward=args.backward, init_from=args.init_from)


def _run(args, specs):
    from ._report import compare, load_runs, results_table

    results = compare(specs, out_dir=args.out, resume=not args.no_resume, progress=not args.no_progress,
                      seeds=_seeds(args.seeds), **_config(args))
    kept = load_runs(args.out, args.model, args.dataset)
    print()
    print(results_table(kept))
    stem = Path(args.out) / f"{args.model}-{args.dataset}"
    print(f"({len(results)} run(s) of this command, {len(kept)} kept in {Path(args.out) / 'runs'})")
    print(f"→ {stem}.json, {stem}.csv, {stem}.png")
    if getattr(args, "pareto", False):
        from ._energy import plot_pareto

        rows = [(r.config.label, r.energy, r.test_acc) for r in results]
        print(f"→ {plot_pareto(rows, stem.with_name(stem.name + '-pareto.png'))}")
    return 0


def cmd_compare(args):
    if (args.pretrain_epochs is None) != (args.finetune_epochs is None):
        raise ValueError("the fine-tuning protocol needs both --pretrain-epochs and --finetune-epochs.")
    if args.pretrain_epochs is None:
        return _run(args, _specs(args.multipliers))
    from ._report import protocol

    for given, name in ((args.epochs, "--epochs"), (args.init_from, "--init-from")):
        if given is not None:  # the protocol sets both itself: say so rather than ignore the option
            raise ValueError(f"{name} does not apply to the protocol (--pretrain-epochs/--finetune-epochs): it "
                             "pretrains its own fp32 weights; to fine-tune weights you have, use compare --init-from.")
    cfg = _config(args)
    for key in ("epochs", "init_from"):
        cfg.pop(key)
    res = protocol(_specs(args.multipliers), pretrain_epochs=args.pretrain_epochs,
                   finetune_epochs=args.finetune_epochs, out_dir=args.out, resume=not args.no_resume,
                   progress=not args.no_progress, seeds=_seeds(args.seeds), lr_finetune=args.lr_finetune, **cfg)
    print()
    print(res.table())
    print(f"→ {Path(args.out) / f'{args.model}-{args.dataset}-protocol.md'} (and every run in "
          f"{Path(args.out) / 'runs'})")
    return 0


def cmd_train(args):
    return _run(args, [args.multiplier])


def _result_path(out, kind, source, doc, suffix=".json"):
    """``<out>/<kind>-<source>-<digest>``: the digest covers what determines the numbers (weights, multipliers'
    tables, rules, the test examples' digest), so a different evaluation never overwrites this one and the same
    one does."""
    import hashlib
    import json

    from ._train import _slug

    key = hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:12]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    return out / f"{kind}-{_slug(Path(source).stem, 48)}-{key}{suffix}"


def _output(path) -> Path:
    """A file the user named: its folder is created if missing (``--heatmap results/m.png`` on a fresh checkout)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        from ._errors import AmsimError

        raise AmsimError(f"cannot create the folder of {path}: {exc.strerror or exc}.") from None
    return path


def _save_json(path, doc):
    import json

    from ._io import atomic_write
    from ._report import provenance

    atomic_write(path, json.dumps({**provenance(), **doc}, indent=1, default=str))
    return path


def cmd_evaluate(args):
    from ._evaluate import evaluate, evaluation_table

    res = evaluate(args.source, _specs(args.multipliers), rules=_all_rules(args), model=args.model,
                   dataset=args.dataset, data_dir=args.data_dir, test_limit=args.test_limit,
                   progress=not args.no_progress)
    print(evaluation_table(res, args.format))
    key = [res[0].weights, res[0].data] + [[r.rules, r.multipliers] for r in res]
    path = _save_json(_result_path(args.out, "evaluate", args.source, key),
                      {"format": "amsim-evaluation", "source": args.source, "results": [r.as_dict() for r in res]})
    print(f"→ {path}")
    if args.pareto:
        from ._energy import plot_pareto

        png = plot_pareto([(r.label, r.energy, r.top1) for r in res[1:]], path.with_name(path.stem + "-pareto.png"),
                          baseline=res[0].top1, title=f"{Path(args.source).stem}: accuracy vs multiplication energy")
        print(f"→ {png}")
    return 0


def cmd_search(args):
    from ._search import search

    res = search(args.source, _specs(args.multipliers), max_drop=args.max_drop, out_dir=args.out,
                 search_limit=args.search_limit, model=args.model, dataset=args.dataset, data_dir=args.data_dir,
                 test_limit=args.test_limit, finetune_epochs=args.finetune_epochs, progress=not args.no_progress)
    print(res.table(args.format))
    status = "within" if res.within_budget else "NOT within"
    print(f"verified on {res.n_verify} test examples: Δ {100 * (res.top1 - res.fp32):+.2f} points, {status} the "
          f"{args.max_drop} budget; relative multiplication energy {res.energy:.3f} ({res.evaluations} new "
          "evaluations)")
    if res.finetuned:
        print(f"after {res.finetuned['epochs']} epoch(s) of fine-tuning: top-1 {100 * res.finetuned['top1']:.2f} %")
    rules = sorted(Path(args.out).glob("search-*.rules.json"), key=lambda q: q.stat().st_mtime)[-1]
    print(f"→ {rules} (use it with --rules)")
    return 0


def cmd_sensitivity(args):
    from ._evaluate import sensitivity

    res = sensitivity(args.source, args.multiplier, model=args.model, dataset=args.dataset, data_dir=args.data_dir,
                      test_limit=args.test_limit, progress=not args.no_progress)
    print(res.table(args.format))
    path = _result_path(args.out, "sensitivity", args.source, [res.weights, res.data, res.multipliers])
    _save_json(path, {"format": "amsim-sensitivity", **res.as_dict()})
    png = res.plot(path.with_suffix(".png"))
    print(f"({res.seconds:.0f} s) → {path}, {png}")
    return 0


def cmd_layers(args):
    from ._evaluate import layers, layers_table

    print(layers_table(layers(args.model, args.dataset or "mnist"), args.format))
    return 0


def cmd_report(args):
    from ._report import report

    text = report(args.dir, args.format, model=args.model, dataset=args.dataset)
    if args.output:
        from ._io import atomic_write

        atomic_write(_output(args.output), text + "\n")
        print(f"→ {args.output}")
    else:
        print(text)
    return 0


def cmd_inspect(args):
    from ._metrics import format_table
    from ._train import resolve_multiplier

    mults = []
    for spec in args.multipliers:
        m = resolve_multiplier(spec)
        if m == "fp32":
            raise SystemExit("amsim inspect: 'fp32' is XLA's own multiply, not a table to inspect.")
        mults.append(m)
    print(format_table([m.stats() for m in mults]))
    costs = [(m.name, m.cost) for m in mults if m.cost is not None]
    if costs:
        from ._energy import relative_power

        print("\ncost:")
        for (name, c), m in zip(costs, [m for m in mults if m.cost is not None], strict=True):
            rel = relative_power(m)
            print(f"  {name:22s} {c.describe()}" + (f"; {rel:.3f} x the exact multiplier's power" if rel else ""))
    if args.heatmap:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from ._plots import error_heatmap

        fig, axes = plt.subplots(1, len(mults), figsize=(4.2 * len(mults), 3.6), squeeze=False)
        for ax, m in zip(axes[0], mults, strict=True):
            error_heatmap(m, ax=ax)
        fig.tight_layout()
        from ._io import atomic_writer

        with atomic_writer(_output(args.heatmap)) as fh:
            fig.savefig(fh, dpi=110, format=Path(args.heatmap).suffix.lstrip(".") or "png")
        print(f"→ {args.heatmap}")
    return 0


def cmd_list(args):
    from . import data, models, multipliers

    print("multipliers:")
    for line in multipliers.available():
        print("  ", line)
    print("   also: fp32 (= exact, native: no simulation), path/to/module.py:function, table.npz, ApproxTrain "
          "NAME_m.bin, EvoApproxLib evo:NAME (with --evoapprox-dir) or its .c file; ranges for sweeps: drum(k=3..6)")
    print("models:     ", ", ".join(models.available()))
    print("datasets:   ", ", ".join(data.available()))
    from ._train import EVOAPPROX_ENV

    root = os.environ.get(EVOAPPROX_ENV)
    if root:
        from .interop import load_evoapprox

        lib = load_evoapprox(root, bits=8, progress=True)
        print(f"EvoApproxLib circuits in {root} ({len(lib)}, 8-bit, by power; use as evo:NAME):")
        for name, m in lib.items():
            print(f"   {name:12s} {'signed  ' if m.signed else 'unsigned'} {m.cost.describe()}")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="amsim", description="Train and evaluate networks with approximate multipliers.")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show the traceback of errors (also AMSIM_DEBUG=1)")
    common.add_argument("--evoapprox-dir", default=None, metavar="DIR",
                        help="EvoApproxLib checkout for evo:NAME multiplier specs (also $AMSIM_EVOAPPROX_DIR)")
    sub = ap.add_subparsers(dest="cmd", required=True)
    add = lambda name, **kw: sub.add_parser(name, parents=[common], **kw)  # noqa: E731
    p = add("compare", help="train one model per multiplier (and seed) and tabulate the accuracies")
    p.add_argument("--multipliers", default="fp32,bf16,mbm,mitchell",
                   help="comma-separated multiplier specs (names, call syntax, ranges such as drum(k=3..6), files)")
    p.add_argument("--pretrain-epochs", type=int, default=None,
                   help="the fine-tuning protocol: fp32 pretraining epochs (with --finetune-epochs)")
    p.add_argument("--finetune-epochs", type=int, default=None, help="the protocol: fine-tuning epochs per multiplier")
    p.add_argument("--lr-finetune", type=float, default=None, help="the protocol's fine-tuning learning rate")
    _add_run_args(p)
    p.set_defaults(fn=cmd_compare)
    p = add("train", help="train with one multiplier")
    p.add_argument("--multiplier", default="mbm")
    _add_run_args(p)
    p.set_defaults(fn=cmd_train)
    fmt = dict(choices=["text", "md", "latex", "csv"], default="text", help="table format")
    p = add("evaluate", help="accuracy of trained weights under multipliers, without retraining")
    _add_weights_args(p, fmt, "where the evaluation's JSON goes")
    p.add_argument("--multipliers", default="bf16,mbm,mitchell", help="comma-separated specs (fp32 is always added)")
    p.add_argument("--rule", action="append", metavar="PATTERN=MULT", help="per-layer choice (repeatable)")
    p.add_argument("--rules", default=None, metavar="FILE", help="per-layer rules from a file (`amsim search`)")
    p.add_argument("--pareto", action="store_true", help="also plot accuracy vs multiplication energy")
    p.set_defaults(fn=cmd_evaluate)
    p = add("sensitivity", help="per layer: accuracy with only it, and all but it, through a multiplier")
    _add_weights_args(p, fmt, "where the table's JSON and the bar plot go")
    p.add_argument("--multiplier", required=True)
    p.set_defaults(fn=cmd_sensitivity)
    p = add("layers", help="the model's approximable operations: paths (what rules match), shapes, MACs, params")
    p.add_argument("--model", default="lenet5")
    p.add_argument("--dataset", default="mnist", help="sets the input shape and classes")
    p.add_argument("--format", **fmt)
    p.set_defaults(fn=cmd_layers)
    p = add("report", help="the paper table of every run kept in a results directory")
    p.add_argument("dir")
    p.add_argument("--format", choices=["text", "md", "latex", "csv"], default="md")
    p.add_argument("--model", default=None)
    p.add_argument("--dataset", default=None)
    p.add_argument("--output", "-o", default=None, help="write the table to this file")
    p.set_defaults(fn=cmd_report)
    p = add("inspect", help="error metrics (and a heat map) of multipliers")
    p.add_argument("multipliers", nargs="+")
    p.add_argument("--heatmap", default=None, help="write a relative-error heat map PNG")
    p.set_defaults(fn=cmd_inspect)
    p = add("list", help="available multipliers, models and datasets")
    p.set_defaults(fn=cmd_list)
    p = add("search", help="per-layer multipliers minimising multiplication energy within an accuracy budget")
    _add_weights_args(p, fmt, "where the evaluation cache and the rules file go")
    p.add_argument("--multipliers", required=True, help="candidates with a cost, e.g. evo:mul8s_1L2H,evo:mul8s_1KR3")
    p.add_argument("--max-drop", type=float, default=0.5, help="accuracy budget in top-1 points (default 0.5)")
    p.add_argument("--search-limit", type=int, default=None,
                   help="search on the first N test examples (the result is verified on all of them)")
    p.add_argument("--finetune-epochs", type=int, default=0, help="fine-tune the chosen assignment and report it")
    p.set_defaults(fn=cmd_search)
    args = ap.parse_args(argv)
    from ._malloc import reuse_freed_memory

    reuse_freed_memory()  # a command is the process's owner: steps reuse their buffers' pages (see _malloc.py)
    if not args.evoapprox_dir:
        return guarded(lambda: args.fn(args), args.debug)
    from ._train import EVOAPPROX_ENV

    old = os.environ.get(EVOAPPROX_ENV)
    os.environ[EVOAPPROX_ENV] = str(Path(args.evoapprox_dir).resolve())  # for every spec this command resolves
    try:
        return guarded(lambda: args.fn(args), args.debug)
    finally:
        if old is None:
            os.environ.pop(EVOAPPROX_ENV, None)
        else:
            os.environ[EVOAPPROX_ENV] = old


def guarded(fn, debug: bool = False) -> int:
    """Run ``fn()`` as a command: errors a user can cause become one line and exit status 2, Ctrl-C says what
    was kept and gives 130; ``--debug`` or ``AMSIM_DEBUG=1`` shows tracebacks instead."""
    debug = debug or bool(os.environ.get("AMSIM_DEBUG"))
    import zipfile

    from ._errors import AmsimError
    from ._train import TrainingInterrupted

    try:
        return fn()
    except KeyboardInterrupt as exc:  # Ctrl-C: say what was kept, no traceback
        if debug:
            raise
        if isinstance(exc, TrainingInterrupted) and exc.epoch > 0:
            print(f"\namsim: interrupted; checkpoint of epoch {exc.epoch} kept ({exc.checkpoint}); rerun the same "
                  "command to resume.", file=sys.stderr)
        elif isinstance(exc, TrainingInterrupted) and exc.checkpoint:
            print("\namsim: interrupted before the first epoch finished; no checkpoint yet, a rerun starts over.",
                  file=sys.stderr)
        else:
            print("\namsim: interrupted.", file=sys.stderr)
        return 130
    except (AmsimError, ValueError, TypeError, OSError, zipfile.BadZipFile, MemoryError) as exc:
        # errors a user can cause (bad specs, files, arguments, a full disk): one line, no traceback
        if debug:
            raise
        msg = str(exc) if not isinstance(exc, OSError) or isinstance(exc, AmsimError) else \
            f"{exc.strerror or exc}" + (f": {exc.filename}" if getattr(exc, "filename", None) else "")
        print(f"amsim: error: {msg}\n(rerun with --debug for the traceback)", file=sys.stderr)
        return 2

if __name__ == "__main__":
    sys.exit(main())
