"""Which GEMM kernel variants the tests run, and how many of their outputs the tests actually check.

    python scripts/kernel_coverage.py                      # tests/test_kernels.py, test_backends.py, ...
    python scripts/kernel_coverage.py tests/ -k conv       # any pytest arguments (run in this process)
    python scripts/kernel_coverage.py --cuda               # the CUDA kernels under the host emulation

A kernel's output is only checked where the exact path does not recompute it: rows and columns holding an
operand outside the exponent window (NaN, Inf, subnormal products, huge values) are recomputed by the scalar
fix-up, so a test whose operands put a special in every row checks the fix-up, not the kernel. Operands with
specials sprinkled at a few percent do that once K passes a few hundred (0.98**400 = 3e-4 of the rows stay
clean); the FP-environment, aliasing and short-row GEMM tests did it for a while unnoticed.

For every variant (kernel, serial or parallel, column block, vector width, table dtype, table rows) it prints
the calls, output elements and the elements the kernel computed that the exact path kept; then each test
whose GEMMs kept under 5 % of their outputs. Run it serially (no ``-n``): counts are kept in this process.

With ``--cuda`` the GPU tests run in this process on the emulated CuPy of tests/support/emulated_gpu (as
tests/test_gpu_emulated.py runs them in a subprocess), and the CUDA kernels' launches are counted too: the
flags the fix-up kernel reads say which outputs it recomputed.

Meant for the exact path, and listed or low for that reason: test_matmul_at_range_extremes and
test_matmul_special_value_matrix; tables with subnormal entries (test_matmul_subnormal_table_entries, the "odd"
tables of test_emulated_gemm_f32_exponent_edges) leave no exponent window, so every output is the fix-up's.
"""

from __future__ import annotations

import collections
import ctypes
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_TESTS = ["tests/test_kernels.py", "tests/test_backends.py", "tests/test_fpenv.py", "tests/test_aliasing.py"]
CUDA_TESTS = ["tests/test_cuda_host.py", "tests/test_gpu.py", "tests/test_backends.py", "tests/test_aliasing.py"]
_KERNELS = ("_expand", "_expand_narrow", "_gather_f32", "_gemm_direct_i32")
_CUDA_GEMMS = ("amsim_gemm_expand_f32", "amsim_gemm_expand16_f32", "amsim_gemm_wide_f32", "amsim_gemm_dot_f32",
               "amsim_gemm_gather_f32")


def _variant(name: str, serial: bool, args) -> str:
    v = [name, "serial" if serial else "parallel"]
    if name == "_expand":  # (c, iap, sap, ib, sb, lutt, nbw, n_rb, tbuf, cbuf, wide, unit, tr)
        v += [f"nbw {args[6]}", f"{16 if args[10] else 8} lanes", "float" if args[2] is not None else "int",
              f"T {args[8].dtype}", f"{args[5].shape[0]} rows"]
    elif name == "_expand_narrow":  # (c, x, m, truncate, ib, sb, lutt, nbw, ..., wide, geo)
        v += [f"nbw {args[7]}", f"{16 if args[16] else 8} lanes", f"{args[6].shape[0]} rows",
              "conv patches" if args[17] is not None else "rows"]
    elif name == "_gather_f32":  # (c, ia, sa, ib, sb, lutf, gr, tr)
        v += [f"{args[6]} rows an item", f"{args[5].shape[0]} rows"]
    else:
        v += [f"table {args[3].dtype}"]
    return ", ".join(v)


class Coverage:
    """pytest plugin: wraps the GEMM driver's kernel dispatch and exponent windows (private names: a maintainer's
    tool, not an API)."""

    def __init__(self, cuda=False):
        self.cuda = cuda
        self.calls: list = []  # [variant, elements, kept fraction] of the running test
        self.launched: list = []  # CUDA GEMM kernels launched since the last fix-up
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
        if self.cuda:
            self._wrap_cuda_launches()

    def _wrap_cuda_launches(self):
        from tests.support import emulated_cuda

        launch_orig = emulated_cuda.EmuLibrary.launch

        def launch(lib, kernel, grid, block, shared, args):
            family = kernel.split("<")[0]
            if family in _CUDA_GEMMS:
                self.launched.append(kernel)
            elif family == "amsim_gemm_fixup_f32" and self.launched:  # (A, B, C, lut, rf, cf, rows, cols, ...)
                nb, rows, cols = int(grid[2]), int(args[6]), int(args[7])
                clean_rows = (_ints(args[4], nb * rows).reshape(nb, rows) == 0).sum(1)
                clean_cols = (_ints(args[5], nb * cols).reshape(nb, cols) == 0).sum(1)
                kept = float((clean_rows * clean_cols).sum()) / max(nb * rows * cols, 1)
                for name in self.launched:
                    self.calls.append([f"CUDA {name}", nb * rows * cols // len(self.launched), kept])
                self.launched = []
            return launch_orig(lib, kernel, grid, block, shared, args)

        emulated_cuda.EmuLibrary.launch = launch

    def pytest_runtest_setup(self, item):
        self.calls, self.launched = [], []

    def pytest_runtest_teardown(self, item):
        for variant, elems, kept in self.calls:
            self.per_variant[variant][item.nodeid.split("[")[0]] += (1, elems, int(elems * kept))
        self.calls = []

    def report(self) -> str:
        lines = ["| variant | calls | outputs | kept (checked) | tests |", "| --- | ---: | ---: | ---: | ---: |"]
        weak = collections.defaultdict(list)  # test -> the variants it ran that kept under 5 % of their outputs
        for variant in sorted(self.per_variant):
            tests = self.per_variant[variant]
            n, elems, kept = sum(tests.values())
            lines.append(f"| {variant} | {n} | {elems} | {kept} ({kept / max(elems, 1):.0%}) | {len(tests)} |")
            for t, (_, e, k) in tests.items():
                if e >= 500 and k < 0.05 * e:
                    weak[t].append(f"{variant}: {k} of {e}")
        lines += ["", "Tests whose GEMMs on a kernel variant kept under 5 % of its outputs (the exact path recomputed "
                  "the rest):"]
        for t in sorted(weak):
            lines += [f"  {t}", *(f"    {v}" for v in weak[t])]
        return "\n".join(lines if weak else [*lines, "  none"])


def _ints(arg, n):
    """The int32 flags behind a launch argument: a NumPy array, or a raw address (replayed plans)."""
    if isinstance(arg, np.ndarray):
        return np.asarray(arg).reshape(-1)[:n]
    return np.ctypeslib.as_array(ctypes.cast(int(arg), ctypes.POINTER(ctypes.c_int32)), shape=(n,))


def main(argv: list[str]) -> int:
    cuda = "--cuda" in argv
    argv = [a for a in argv if a != "--cuda"]
    if cuda:  # ``import cupy`` gives the emulated CuPy from here on
        sys.path.insert(0, str(ROOT / "tests" / "support" / "emulated_gpu"))
    plugin = Coverage(cuda)
    tests = argv or (CUDA_TESTS if cuda else DEFAULT_TESTS)
    rc = pytest.main(["-q", "-p", "no:randomly", "-p", "no:xdist", *tests], plugins=[plugin])
    print(plugin.report())
    return int(rc)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main(sys.argv[1:]))
