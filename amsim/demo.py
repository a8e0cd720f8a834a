"""`make demo`: a short version of the main job on the CPU — LeNet-5 on (a subset of) MNIST, trained with
float32, bfloat16 operands, MBM and Mitchell multipliers (forward and both gradient products), the results table,
curves in results/lenet5-mnist.png — preceded by the multipliers' error metrics."""

from __future__ import annotations

import sys

from . import cli


def main() -> int:
    cli.main(["inspect", "bf16", "mbm", "mitchell", "--heatmap", "results/multipliers.png"])
    print()
    return cli.main(["compare", "--model", "lenet5", "--dataset", "mnist", "--multipliers", "fp32,bf16,mbm,mitchell",
                     "--epochs", "1", "--train-limit", "12000", "--test-limit", "2000", "--no-resume"]
                    + sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
