"""The layering: no import cycle among amsim's modules (lazy imports included), the CUDA planners without CuPy,
and the shared operand rules written once."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import import_graph  # noqa: E402


def test_no_import_cycle():
    graph = import_graph.edges()
    assert "amsim._ops" in graph["amsim.gpu"] and "amsim._operands" in graph["amsim.kernels.cuda._plan"]
    assert import_graph.cycles(graph) == []


def test_kernels_import_nothing_above_them():
    above = {"amsim._ops", "amsim._backend", "amsim._multiplier", "amsim.nn", "amsim._train", "amsim._report",
             "amsim.cli", "amsim.gpu", "amsim.models"}
    graph = import_graph.edges()
    for mod, targets in graph.items():
        if mod.startswith("amsim.kernels"):
            assert not {t for t in targets if any(t == a or t.startswith(a + ".") for a in above)}, mod


def test_cuda_planners_work_without_cupy():
    code = ("import sys\n"
            "sys.modules['cupy'] = None  # any import of CuPy fails\n"
            "import numpy as np, amsim\n"
            "from amsim.kernels.cuda import _plan\n"
            "mult = amsim.multipliers.mbm(7)\n"
            "a, b = np.ones((1, 64, 32), np.float32), np.ones((1, 32, 48), np.float32)\n"
            "plan = _plan.plan_gemm_f32(a, b, np.empty((1, 64, 48), np.float32), 7, False,\n"
            "                           _plan.float_host_tables(mult.table.values), np, 'expand')\n"
            "print('LAUNCHES', [la.kernel for la in plan])\n"
            "print('CHOICE', amsim.gpu.choose_algo(7, 1, 4096, 4096, bf16_table=True))\n"
            "try:\n"
            "    amsim.gpu.gemm(a[0], b[0], mult)\n"
            "except amsim.UnsupportedError as e:\n"
            "    print('GEMM', e)\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "amsim_gemm_expand_f32<7, 0>" in proc.stdout and "CHOICE expand16" in proc.stdout
    assert "GEMM amsim.gpu needs CuPy" in proc.stdout


def test_shared_rules_are_the_ones_the_kernels_use():
    import amsim
    from amsim import _operands
    from amsim.kernels import cpu
    from amsim.kernels.cpu import _kernels
    from amsim.kernels.cuda import _config, _plan

    values = amsim.multipliers.mitchell(5).table.values
    windows, _, _ = _operands.exponent_windows(values)
    assert tuple(cpu.float_kernel_tables(values)[3]) == windows  # the CPU kernels' window
    assert _plan.float_host_tables(values)[2] == windows  # the CUDA kernels'
    nan = _operands.CANONICAL_NAN_BITS
    assert int(_kernels.NAN_BITS) == nan and _config.KERNEL_DEFINES["AMSIM_NAN_BITS"] == f"{nan:#010x}u"
    assert np.isnan(np.uint32(nan).view(np.float32))


def test_kernel_cache_is_keyed_by_the_code_compiled_into_the_kernels():
    """Numba's on-disk cache keys the CPU kernels by _kernels.py's contents only; the digest kept in that file
    must cover what the kernels compile in from _simd.py and _fpenv.py, so that changing those changes it."""
    from amsim.kernels.cpu import _kernels

    want = _kernels.dependencies_digest()
    assert _kernels.DEPENDENCIES_DIGEST == want, (
        f"set DEPENDENCIES_DIGEST = {want!r} in amsim/kernels/cpu/_kernels.py (its dependencies changed)")


def test_kernels_skip_the_disk_cache_when_their_dependencies_changed(tmp_path):
    """A copy of the package with _simd.py edited (and the digest not updated) warns at import and compiles the
    kernels afresh instead of loading ones built from the old code; the untouched copy uses the cache."""
    import shutil

    pkg = tmp_path / "amsim"
    shutil.copytree(ROOT / "amsim", pkg, ignore=shutil.ignore_patterns("__pycache__", "*.nbi", "*.nbc"))
    code = ("import warnings\n"
            "with warnings.catch_warnings(record=True) as w:\n"
            "    warnings.simplefilter('always')\n"
            "    from amsim.kernels.cpu import _kernels\n"
            "print(_kernels._CACHE, any('DEPENDENCIES_DIGEST' in str(x.message) for x in w))\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "NUMBA_CACHE_DIR": str(tmp_path / "nc")}

    def run():
        proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                              timeout=300, env=env)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc.stdout.split()

    assert run() == ["True", "False"]
    simd = pkg / "kernels" / "cpu" / "_simd.py"
    simd.write_text(simd.read_text() + "\n# an edit\n")
    assert run() == ["False", "True"]


def test_dependencies_digest_is_none_where_the_sources_cannot_be_read(monkeypatch):
    from amsim.kernels.cpu import _kernels

    def unreadable(self):
        raise OSError("a zipped install")

    monkeypatch.setattr(_kernels.Path, "read_bytes", unreadable)
    assert _kernels.dependencies_digest() is None  # then the cache is not used, and no edit is reported
