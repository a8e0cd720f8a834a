"""Mutated files of every kind amsim reads: a correct load or a clear amsim error, never a crash, never unbounded
memory (tests/fuzz_loaders.py, in a child process with an address-space limit; its peak RSS is checked too)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FILE_KINDS = ["npz", "npz_int", "approxtrain", "tfapprox", "c_header", "torchapprox", "cifar", "idx"]


def _fuzz(kinds, examples, as_limit_gb):
    limit = "" if as_limit_gb is None else (
        f"import resource; resource.setrlimit(resource.RLIMIT_AS, ({int(as_limit_gb * 2**30)},) * 2); ")
    code = limit + f"from tests.fuzz_loaders import main; main({[*kinds, '--examples', str(examples)]!r})"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"the fuzzed readers failed or crashed (exit {proc.returncode}):\n{out[-6000:]}"
    for kind in kinds:
        assert f"FUZZED {kind} {examples}" in out
    return float(next(line.split()[1] for line in out.splitlines() if line.startswith("PEAK_RSS_MB")))


def test_fuzzed_table_and_dataset_files():
    peak = _fuzz(FILE_KINDS, 120, as_limit_gb=3.0)
    assert peak < 700, f"peak RSS {peak:.0f} MB"  # amsim, Numba and NumPy themselves: no file inflated


@pytest.mark.filterwarnings("ignore")
def test_fuzzed_checkpoints():
    peak = _fuzz(["checkpoint"], 120, as_limit_gb=None)  # JAX reserves address space: RSS is measured instead
    assert peak < 1500, f"peak RSS {peak:.0f} MB"
