"""Fixtures shared by the test files; helpers (bit comparisons, special values, the CUDA emulation) live in
tests/support."""

import os
import zlib

import numpy as np
import pytest

# The suite runs on every core at once (pytest-xdist, `make test`): costs of the CPU kernels calibrated under that
# load would be skewed, and they are cached on disk for every later run of the checkout. Tests (and the commands
# and notebooks they start) use the fixed defaults instead, the same kernel choices on every machine;
# tests/test_machine.py calibrates into temporary directories.
os.environ.setdefault("AMSIM_CPU_CALIBRATION", "off")


@pytest.fixture
def rng(request):
    # a fresh, reproducible stream per test
    seed = zlib.crc32(request.node.nodeid.encode())
    return np.random.default_rng(seed)


def _cupy_or_skip():
    cp = pytest.importorskip("cupy", reason="CuPy is not installed")
    try:
        n = cp.cuda.runtime.getDeviceCount()
    except Exception:  # no driver, no device, driver too old
        n = 0
    if n == 0:
        pytest.skip("no CUDA device (cupy.cuda.runtime.getDeviceCount)")
    return cp


@pytest.fixture(params=["numpy", "numpy-w8", pytest.param("cupy", marks=pytest.mark.gpu)])
def backend(request, monkeypatch):
    """The array module of each backend, for cases that must hold on all of them: NumPy always, CuPy where it
    sees a CUDA device (a real GPU in scripts/gpu_check.sh; the emulated one in tests/test_gpu_emulated.py).

    NumPy runs twice: with the 16-lane (AVX-512) float sweep and packed or half-width tables where the
    multiplier allows them, and with the 8-lane (AVX2) sweep and plain tables, whatever the CPU (LLVM splits
    16-lane vectors where AVX-512 is missing), so those code paths are tested on every machine
    (tests/test_kernels.py crosses them)."""
    if request.param == "cupy":
        return _cupy_or_skip()
    w8 = request.param == "numpy-w8"
    monkeypatch.setenv("AMSIM_CPU_VECTOR_WIDTH", "8" if w8 else "16")
    monkeypatch.setenv("AMSIM_CPU_TABLE_PACKING", "off" if w8 else "on")
    monkeypatch.setenv("AMSIM_CPU_HALF_TABLES", "off" if w8 else "on")
    return np


@pytest.fixture(params=[8, 16], ids=["w8", "w16"])
def cpu_width(request, monkeypatch):
    """The CPU kernels' vector width, forced to each of 8 and 16 lanes."""
    monkeypatch.setenv("AMSIM_CPU_VECTOR_WIDTH", str(request.param))
    return request.param


@pytest.fixture(params=["expand", "gather"])
def cpu_kernel(request, monkeypatch):
    """Forces the CPU GEMM's kernel choice (expansion or gather) by the costs it decides on."""
    import dataclasses

    from amsim.kernels.cpu import _machine

    real = _machine.costs
    gather = 1e-6 if request.param == "gather" else 1e6
    monkeypatch.setattr(_machine, "costs", lambda: dataclasses.replace(real(), gather=gather))
    return request.param
