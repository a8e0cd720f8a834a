"""Fixtures shared by the test files; helpers (bit comparisons, special values, the CUDA emulation) live in
tests/support."""

import zlib

import numpy as np
import pytest


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


@pytest.fixture(params=["numpy", pytest.param("cupy", marks=pytest.mark.gpu)])
def backend(request):
    """The array module of each backend, for cases that must hold on all of them: NumPy always, CuPy where it
    sees a CUDA device (a real GPU in scripts/gpu_check.sh; the emulated one in tests/test_gpu_emulated.py)."""
    return np if request.param == "numpy" else _cupy_or_skip()
