"""The GPU path end to end on a machine without a GPU: every GPU test (tests/test_gpu.py and the CuPy cases of the
backend-independent tests) and benchmarks/bench_gpu.py, each in a subprocess in which ``import cupy`` gives the
emulated CuPy of tests/support/emulated_gpu (NumPy memory, the kernels of amsim_gemm.cu under the host emulation
of tests/support/emulated_cuda.py, a device's launch limits).

This runs every GPU test except the JAX bridge's (JAX has no GPU here) and the benchmark script at a small size
(with the Markdown report scripts/gpu_check.sh writes), and checks that every CuPy name they used exists in the
real CuPy. It cannot tell whether CuPy itself behaves
as the emulation does, nor anything about speed: tests/test_gpu.py on a real GPU (scripts/gpu_check.sh) does.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from .support import emulated_cuda as emu

ROOT = Path(__file__).resolve().parents[1]
GPU_TEST_FILES = ("tests/test_gpu.py", "tests/test_backends.py", "tests/test_aliasing.py")  # as scripts/gpu_check.sh
pytestmark = pytest.mark.skipif(emu.CXX is None, reason="no host C++ compiler (g++ or clang++) on PATH")


@pytest.fixture(scope="module")
def emulated(request, tmp_path_factory):
    """Environment for a subprocess on the emulated GPU. The emulation library is kept in pytest's cache
    directory, keyed by the kernel sources, so only a change to them recompiles it (half a minute)."""
    cache = getattr(request.config, "cache", None)
    where = cache.mkdir("emulated_gpu") if cache is not None else tmp_path_factory.mktemp("emulated_gpu")
    try:
        lib = emu.cached_build(where)
    except RuntimeError as err:  # the kernel sources do not compile for the host
        pytest.fail(str(err))
    env = dict(os.environ)
    env.update(PYTHONPATH=os.pathsep.join([str(ROOT / "tests" / "support" / "emulated_gpu"), str(ROOT)]),
               AMSIM_EMULATED_GPU_LIB=str(lib), AMSIM_REQUIRE_GPU="1", PYTHONUNBUFFERED="1")
    return env


def _run(env, log, *args, timeout=600):
    """Run ``python *args`` on the emulated GPU; with a ``log`` file, check the CuPy names it used."""
    env = dict(env, AMSIM_EMULATED_GPU_LOG=str(log or ""))
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout,
                          check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(args)} failed on the emulated GPU:\n{output[-8000:]}"
    if log:
        _check_names_exist_in_cupy(log)
    return output


def _check_names_exist_in_cupy(log):
    """Every ``cupy.*`` name the run used (logged by the emulation) must exist in the real CuPy."""
    cupy = pytest.importorskip("cupy", reason="the real CuPy is needed to check the names used")
    names = set(Path(log).read_text().split())
    assert "asarray" in names and "RawModule" in names  # the log is being written
    missing = []
    for name in sorted(names):
        obj, path = cupy, "cupy"
        for part in name.split("."):
            path += "." + part
            if hasattr(obj, part):
                obj = getattr(obj, part)
            else:
                try:
                    obj = importlib.import_module(path)
                except ImportError:
                    missing.append(name)
                    break
    assert not missing, f"used under the emulation but not in CuPy {cupy.__version__}: {missing}"


def test_gpu_tests_pass_on_emulated_gpu(emulated, tmp_path):
    out = _run(emulated, tmp_path / "names.txt", "-m", "pytest", "-p", "no:cacheprovider", "-q",
               "-o", "addopts=-ra --strict-markers --strict-config", "-m", "gpu", *GPU_TEST_FILES,
               "--deselect", "tests/test_gpu.py::test_jax_bridge_on_gpu_forward_and_gradients")
    summary = out.strip().splitlines()[-1]
    counts = {k: int(v) for v, k in re.findall(r"(\d+) (\w+)", summary)}
    # every GPU test ran (none skipped) and passed (the NumPy cases are deselected: they run in the main suite);
    # the number is the collection's, which grows with the tests
    assert set(counts) == {"passed", "deselected"}, summary
    assert counts["passed"] > 150, summary


def test_gpu_benchmark_and_report_on_emulated_gpu(emulated, tmp_path):
    """bench_gpu.py as scripts/gpu_check.sh runs it (small sizes), then the Markdown report of both runs."""
    out = _run(emulated, tmp_path / "names.txt", "benchmarks/bench_gpu.py", "--size", "128", "--reps", "1",
               "--wgrad-batch", "1", "--overhead-calls", "2", "--json", str(tmp_path / "bench_gpu.json"))
    report = json.loads((tmp_path / "bench_gpu.json").read_text())
    assert report["card"].startswith("Emulated") and report["size"] == 128, out
    rows = report["results"] + report["wgrad"] + report["int8"]
    assert all(r["golden_rows_match"] is True and r["ratio_vs_cublas"] > 0 for r in rows), out
    assert {(r["mult"], r["algo"]) for r in report["results"]} == {
        ("mbm7", a) for a in ("auto", "expand16", "expand", "wide", "gather")} | {
        ("mbm10", a) for a in ("auto", "wide", "gather")}
    assert [r["shape"] for r in report["wgrad"]] == [[25, 576, 6]] * 4 + [[150, 64, 16]] * 4
    assert [r["algo"] for r in report["int8"]] == ["auto", "lut", "lutw"]
    assert all(r["products_per_clock_per_sm"] > 0 and r["estimated_products_per_clock_per_sm"] > 0
               for r in report["results"] + report["wgrad"])
    host = report["host"]
    assert [(r["op"], r["how"]) for r in host] == [("fc1", "cupy.matmul"), ("fc1", "replayed"), ("fc1", "planned"),
                                                   ("conv2", "replayed"), ("conv2", "planned")], out
    assert all(0 < r["host_us"] <= r["wall_us"] for r in host), out
    # the training-step comparison (JAX on the CPU here: the script, not the GPU path)
    _run(emulated, None, "benchmarks/bench_gpu.py", "--jax-only", "--jax-models", "lenet5", "--jax-batch", "2",
         "--jax-steps", "1", "--json", str(tmp_path / "bench_jax.json"))
    jax_rep = json.loads((tmp_path / "bench_jax.json").read_text())
    assert jax_rep["lenet5"]["ratio"] > 0 and "resnet20" not in jax_rep
    md = _run(emulated, None, "benchmarks/gpu_report.py", str(tmp_path))
    table_rows = [line for line in md.splitlines() if line.startswith("| ") and not line.startswith("| ---")]
    assert len(table_rows) == 5 + len(rows) + len(host) + 1, md  # a header per table, a row per result, LeNet-5
    assert md.count("| match |") == len(rows) and "MISMATCH" not in md, md
    assert f"| lenet5 | {jax_rep['lenet5']['fp32_s_per_step'] * 1e3:.2f} |" in md, md
    assert "not run" not in md
    # a run stopped by a time limit: the JSON written so far still gives a report that says what is missing
    del report["int8"], report["results"][2:]
    (tmp_path / "bench_gpu.json").write_text(json.dumps(report))
    (tmp_path / "bench_jax.json").unlink()
    md = _run(emulated, None, "benchmarks/gpu_report.py", str(tmp_path))
    assert md.count("| mbm7 |") == 2 and "The int8 GEMM: not run" in md and "lenet5" not in md, md


SYNC_PROBE = """
import json, numpy as np, cupy as cp, amsim
from amsim import formats
from amsim import gpu

rng, F, res = np.random.default_rng(0), np.float32, {}
def count(label, fn):
    fn()  # the first call uploads tables
    before = cp._synchronizations()
    fn()
    res[label] = cp._synchronizations() - before

a = cp.asarray(rng.standard_normal((300, 40)).astype(F))
b = cp.asarray(rng.standard_normal((40, 70)).astype(F))
for mult in (amsim.multipliers.mbm(7), amsim.multipliers.mbm(10)):
    count(f"matmul {mult.name}", lambda: amsim.matmul(a, b, mult))
    count(f"multiply {mult.name}", lambda: amsim.multiply(a, a, mult))
    for algo in gpu.usable_algos(mult.mantissa_bits, bf16_table=True):
        count(f"gemm {mult.name} {algo}", lambda: gpu.gemm(a, b, mult, algo=algo))
x = cp.asarray(rng.standard_normal((2, 9, 9, 4)).astype(F))
w = cp.asarray(rng.standard_normal((3, 3, 4, 8)).astype(F))
count("conv2d", lambda: gpu.conv2d_nhwc(x, w, amsim.multipliers.mbm(7), padding=1))
i8 = amsim.multipliers.exact_int(8, signed=True)
ia = cp.asarray(rng.integers(-128, 128, (30, 40)).astype(np.int8))
count("matmul int8", lambda: amsim.matmul(ia, ia.T, i8))
count("conv2d int8", lambda: gpu.conv2d_nhwc(x.astype(np.int8), w.astype(np.int8), i8))
e4m3 = amsim.Multiplier.from_table(amsim.multipliers.mbm(3).table.values, name="mbm3_e4m3",
                                  operand_format=formats.e4m3(subnormals="keep"))
count("matmul e4m3", lambda: amsim.matmul(a, b, e4m3))
print(json.dumps(res))
"""


def test_gpu_path_never_waits_for_the_device(emulated, tmp_path):
    """No read of device data by the host (a stream synchronisation on a GPU) in matmul, multiply, gemm with
    every kernel, conv2d, integer operands of the multiplier's own width, or narrow operand formats. (Integer
    operands in a wider dtype are range-checked, which reads their min and max.)"""
    out = _run(emulated, None, "-c", SYNC_PROBE)
    counts = json.loads(out.strip().splitlines()[-1])
    assert {"conv2d", "conv2d int8", "matmul int8", "matmul e4m3", "gemm mbm7 expand16", "gemm mbm10 wide"} <= set(
        counts), counts
    assert all(v == 0 for v in counts.values()), counts
