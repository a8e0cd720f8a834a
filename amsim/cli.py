"""The ``amsim`` command line: compare multipliers by training, inspect multipliers, list what is available.

    amsim compare --model lenet5 --dataset mnist --multipliers fp32,bf16,mbm,mitchell --epochs 2
    amsim inspect mbm mitchell --heatmap mbm.png
    amsim list
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def _rules(items):
    rules = []
    for item in items or ():
        if "=" not in item:
            raise SystemExit(f"amsim: --rule expects PATTERN=MULTIPLIER, got {item!r}")
        pat, spec = item.rsplit("=", 1)
        rules.append((pat, spec))
    return tuple(rules)


def _add_run_args(p):
    p.add_argument("--model", default="lenet5", help="model name (see `amsim list`)")
    p.add_argument("--dataset", default="mnist", help="dataset name (see `amsim list`)")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--optimizer", choices=["adam", "sgd"], default="adam")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-limit", type=int, default=None, help="use only the first N training examples")
    p.add_argument("--test-limit", type=int, default=None, help="use only the first N test examples")
    p.add_argument("--data-dir", default=None, help="searched first for dataset files (also $AMSIM_DATA_DIR)")
    p.add_argument("--rule", action="append", metavar="PATTERN=MULT",
                   help="per-layer override: regex on the Flax module path = multiplier (repeatable)")
    p.add_argument("--backward", choices=["approx", "exact", "ste"], default="approx",
                   help="gradient products: through the multiplier (approx), native float32 (exact), or "
                        "straight-through (ste)")
    p.add_argument("--out", default="results", help="directory for JSON/CSV/PNG results and checkpoints")
    p.add_argument("--no-resume", action="store_true", help="start over even if a checkpoint exists")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _run(args, specs):
    from ._report import compare, load_runs, results_table

    results = compare(specs, out_dir=args.out, resume=not args.no_resume, progress=not args.no_progress,
                      model=args.model, dataset=args.dataset, epochs=args.epochs, batch_size=args.batch_size,
                      lr=args.lr, optimizer=args.optimizer, seed=args.seed, train_limit=args.train_limit,
                      test_limit=args.test_limit, data_dir=args.data_dir, rules=_rules(args.rule),
                      backward=args.backward)
    kept = load_runs(args.out, args.model, args.dataset)
    print()
    print(results_table(kept))
    stem = Path(args.out) / f"{args.model}-{args.dataset}"
    print(f"({len(results)} run(s) of this command, {len(kept)} kept in {Path(args.out) / 'runs'})")
    print(f"→ {stem}.json, {stem}.csv, {stem}.png")
    return 0


def cmd_compare(args):
    return _run(args, [s for s in args.multipliers.split(",") if s.strip()])


def cmd_train(args):
    return _run(args, [args.multiplier])


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

        with atomic_writer(args.heatmap) as fh:
            fig.savefig(fh, dpi=110, format=Path(args.heatmap).suffix.lstrip(".") or "png")
        print(f"→ {args.heatmap}")
    return 0


def cmd_list(args):
    from . import data, models, multipliers

    print("multipliers:", ", ".join(multipliers.available()))
    print("  also: fp32 (no simulation), path/to/module.py:function, table.npz, ApproxTrain NAME_m.bin")
    print("models:     ", ", ".join(models.available()))
    print("datasets:   ", ", ".join(data.available()))
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="amsim", description="Train and evaluate networks with approximate multipliers.")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show the traceback of errors (also AMSIM_DEBUG=1)")
    sub = ap.add_subparsers(dest="cmd", required=True)
    add = lambda name, **kw: sub.add_parser(name, parents=[common], **kw)  # noqa: E731
    p = add("compare", help="train one model per multiplier and tabulate the accuracies")
    p.add_argument("--multipliers", default="fp32,bf16,mbm,mitchell", help="comma-separated multiplier specs")
    _add_run_args(p)
    p.set_defaults(fn=cmd_compare)
    p = add("train", help="train with one multiplier")
    p.add_argument("--multiplier", default="mbm")
    _add_run_args(p)
    p.set_defaults(fn=cmd_train)
    p = add("inspect", help="error metrics (and a heat map) of multipliers")
    p.add_argument("multipliers", nargs="+")
    p.add_argument("--heatmap", default=None, help="write a relative-error heat map PNG")
    p.set_defaults(fn=cmd_inspect)
    p = add("list", help="available multipliers, models and datasets")
    p.set_defaults(fn=cmd_list)
    args = ap.parse_args(argv)
    debug = args.debug or bool(os.environ.get("AMSIM_DEBUG"))
    import zipfile

    from ._errors import AmsimError
    from ._train import TrainingInterrupted

    try:
        return args.fn(args)
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
