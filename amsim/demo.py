"""`make demo`: the researcher's workflow in a few minutes on the CPU, on a subset of MNIST with LeNet-5.

1. the multipliers' error metrics and heat maps (``amsim inspect``);
2. fp32 pretraining, the trained weights evaluated under each multiplier with no retraining, then a short
   fine-tune with each multiplier (forward and both gradient products approximate): ``amsim compare
   --pretrain-epochs 1 --finetune-epochs 1``;
3. which layers can take Mitchell's multiplier (``amsim sensitivity``);
4. the paper table of every run kept in the results folder (``amsim report``).

Every run is kept under ``--out`` (default ``results/``) and a rerun resumes instead of retraining. Any step that
fails stops the demo with a nonzero exit status.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import cli


def _args(argv):
    ap = argparse.ArgumentParser(prog="python -m amsim.demo", description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="lenet5")
    ap.add_argument("--dataset", default="mnist")
    ap.add_argument("--multipliers", default="bf16,mbm,mitchell,drum4,alm_soa7_k3")
    ap.add_argument("--sensitivity", default="mitchell", help="the multiplier of the per-layer sensitivity step")
    ap.add_argument("--train-limit", type=int, default=12000)
    ap.add_argument("--test-limit", type=int, default=2000)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--out", default="results")
    ap.add_argument("--no-progress", action="store_true")
    return ap.parse_args(argv)


def _banner(text):
    print(f"\n=== {text}", flush=True)


def _workflow(a) -> int:
    from . import _evaluate, _report

    out = Path(a.out)
    mults = cli._specs(a.multipliers)
    setting = dict(model=a.model, dataset=a.dataset, train_limit=a.train_limit, test_limit=a.test_limit,
                   batch_size=a.batch_size)
    progress = not a.no_progress

    _banner("1. the multipliers: error metrics over every operand pair")
    rc = cli.main(["inspect", *mults, "--heatmap", str(out / "multipliers.png")])
    if rc:
        return rc

    _banner("2. fp32 pretraining; the trained weights under each multiplier (no retraining); 1 epoch of "
            "fine-tuning with each multiplier (forward and both gradient products approximate)")
    proto = _report.protocol(mults, pretrain_epochs=1, finetune_epochs=1, out_dir=out, progress=progress, **setting)
    print(proto.table())

    _banner(f"3. which layers can take {a.sensitivity}: one layer through it (the rest fp32), and all but one")
    sens = _evaluate.sensitivity(proto.pretrained[0], a.sensitivity, progress=progress)
    print(sens.table())
    png = sens.plot(out / f"sensitivity-{a.model}-{a.dataset}-{sens.multiplier}.png")
    print(f"({sens.seconds:.0f} s) → {png}")

    _banner(f"4. every run kept in {out}, as the paper table (amsim report {out} --format md|latex|csv)")
    print(_report.report(out, "md", model=a.model, dataset=a.dataset))
    print(f"\n→ {out}/{a.model}-{a.dataset}.{{json,csv,png}}, {out}/runs/, {out}/{a.model}-{a.dataset}-protocol.md")
    return 0


def main(argv=None) -> int:
    a = _args(sys.argv[1:] if argv is None else argv)
    from ._malloc import reuse_freed_memory

    reuse_freed_memory()
    return cli.guarded(lambda: _workflow(a))


if __name__ == "__main__":
    sys.exit(main())
