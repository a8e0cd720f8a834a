"""Per-layer sensitivity of LeNet-5 on the full MNIST test set (10,000 images): wall time of
``amsim.sensitivity`` against the fp32 evaluation of the same weights, measured in the same run.

    python benchmarks/bench_sensitivity.py [--from RUN_FILE] [--multiplier mbm] [--out results-bench]

Without ``--from`` it first trains LeNet-5 in fp32 for one epoch (kept in ``--out``, so a rerun reuses it). The
target of the workflow issue: ``mbm`` sensitivity in under 2 minutes on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import time

import amsim


def _cpu() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--from", dest="source", default=None)
    ap.add_argument("--multiplier", default="mbm")
    ap.add_argument("--out", default="results-bench")
    args = ap.parse_args()
    source = args.source
    if source is None:
        (run,) = amsim.compare(["fp32"], out_dir=args.out, model="lenet5", dataset="mnist", epochs=1,
                               progress=False, plot=False)
        source = run
    t0 = time.perf_counter()
    base = amsim.evaluate(source, [], progress=False)[0]
    t_fp32 = time.perf_counter() - t0
    t0 = time.perf_counter()
    sens = amsim.sensitivity(source, args.multiplier, progress=False)
    t_sens = time.perf_counter() - t0
    evals = 2 + 2 * len(sens.layers)
    print(f"# amsim sensitivity benchmark, {datetime.date.today()}, {_cpu()}, {os.cpu_count()} cores")
    print(f"LeNet-5, {sens.n} MNIST test images, multiplier {sens.multiplier}, {len(sens.layers)} layers, "
          f"{evals} evaluations")
    print(f"fp32 evaluation (load + compile + run): {t_fp32:.1f} s")
    print(f"sensitivity: {t_sens:.1f} s = {t_sens / t_fp32:.1f}x one fp32 evaluation "
          f"({'under' if t_sens < 120 else 'OVER'} the 2-minute target)")
    print(sens.table())
    print(f"fp32 top-1 {100 * base.top1:.2f} %")


if __name__ == "__main__":
    main()
