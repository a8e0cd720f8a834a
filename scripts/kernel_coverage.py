"""Which CPU GEMM kernel variants the tests run, and how many of their outputs the tests actually check.

    python scripts/kernel_coverage.py                      # tests/test_kernels.py, test_backends.py, ...
    python scripts/kernel_coverage.py tests/ -k conv       # any pytest arguments (run in this process)

A kernel's output is only checked where the exact path does not recompute it: rows and columns holding an
operand outside the exponent window (NaN, Inf, subnormal products, huge values) are recomputed by the scalar
fix-up, so a test whose operands put a special in every row checks the fix-up, not the kernel. Operands with
specials sprinkled at a few percent do that once K passes a few hundred (0.98**400 = 3e-4 of the rows stay
clean); the FP-environment, aliasing and short-row GEMM tests did it for a while unnoticed.

For every variant (kernel, serial or parallel, column block, vector width, table dtype, table rows) it prints
the calls, output elements and the elements the kernel computed that the exact path kept; then each test
whose CPU GEMMs kept under 5 % of their outputs. Run it serially (no ``-n``): counts are kept in this process.
"""

from __future__ import annotations

import collections
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_TESTS = ["tests/test_kernels.py", "tests/test_backends.py", "tests/test_fpenv.py", "tests/test_aliasing.py"]
_KERNELS = ("_expand", "_expand_narrow", "_gather_f32", "_gemm_direct_i32")


def _variant(name: str, serial: bool, args) -> str:
    v = [name, "serial" if serial else "parallel"]
    if name == "_expand":  # (c, iap, sap, ib, sb, lutt, nbw, n_rb, tbuf, cbuf, wide)
        v += [f"nbw {args[6]}", f"{16 if args[10] else 8} lanes", "float" if args[2] is not None else "int",
              f"T {args[8].dtype}", f"{args[5].shape[0]} rows"]
    elif name == "_expand_narrow":  # (c, x, m, truncate, ib, sb, lutt, nbw, ..., wide, geo)
        v += [f"nbw {args[7]}", f"{16 if args[16] else 8} lanes", f"{args[6].shape[0]} rows",
              "conv patches" if args[17] is not None else "rows"]
    elif name == "_gather_f32":  # (c, ia, sa, ib, sb, lutf, gr)
        v += [f"{args[6]} rows an item", f"{args[5].shape[0]} rows"]
    else:
        v += [f"table {args[3].dtype}"]
    return ", ".join(v)


class Coverage:
    """pytest plugin: wraps the GEMM driver's kernel dispatch and exponent windows (private names: a maintainer's
    tool, not an API)."""

    def __init__(self):
        self.calls: list = []  # [variant, elements, kept fraction] of the running test
        self.per_variant = collections.defaultdict(lambda: collections.defaultdict(lambda: np.zeros(3, np.int64)))

    def pytest_configure(self, config):
        from amsim.kernels.cpu import _gemm

        k_orig, windows_orig = _gemm._k, _gemm._windows

        def k(kernel, serial):
            fn = k_orig(kernel, serial)
            name = getattr(kernel, "__name__", "")
            if name not in _KERNELS:
                return fn

            def run(*args):
                self.calls.append([_variant(name, serial, args), args[0].size, 1.0])
                return fn(*args)

            return run

        def windows(xmin, xmax, ymin, ymax, *rest):
            rows, cols = windows_orig(xmin, xmax, ymin, ymax, *rest)
            if self.calls:  # the float GEMM's kernel ran just before (integer GEMMs have no fix-up)
                self.calls[-1][2] = (1 - rows[0].size / max(xmin.size, 1)) * (1 - cols[0].size / max(ymin.size, 1))
            return rows, cols

        _gemm._k, _gemm._windows = k, windows

    def pytest_runtest_setup(self, item):
        self.calls = []

    def pytest_runtest_teardown(self, item):
        for variant, elems, kept in self.calls:
            self.per_variant[variant][item.nodeid.split("[")[0]] += (1, elems, int(elems * kept))
        self.calls = []

    def report(self) -> str:
        lines = ["| variant | calls | outputs | kept (checked) | tests |", "| --- | ---: | ---: | ---: | ---: |"]
        per_test = collections.defaultdict(lambda: np.zeros(2, np.int64))
        for variant in sorted(self.per_variant):
            tests = self.per_variant[variant]
            n, elems, kept = sum(tests.values())
            lines.append(f"| {variant} | {n} | {elems} | {kept} ({kept / max(elems, 1):.0%}) | {len(tests)} |")
            for t, v in tests.items():
                per_test[t] += v[1:]
        weak = [(t, v) for t, v in sorted(per_test.items()) if v[0] >= 500 and v[1] < 0.05 * v[0]]
        lines += ["", "Tests whose CPU GEMMs kept under 5 % of their outputs (the exact path recomputed the rest):"]
        lines += [f"  {t}: {v[1]} of {v[0]}" for t, v in weak] or ["  none"]
        return "\n".join(lines)


def main(argv: list[str]) -> int:
    plugin = Coverage()
    rc = pytest.main(["-q", "-p", "no:randomly", "-p", "no:xdist", *(argv or DEFAULT_TESTS)], plugins=[plugin])
    print(plugin.report())
    return int(rc)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main(sys.argv[1:]))
