"""CPU-specific kernel paths against the golden model, bit for bit: the expansion at the exponent range ends,
transposed sweeps and row-block splits, data-dependent exponent windows. The cases every backend must pass are in
test_backends.py."""

import numpy as np
import pytest

import amsim
from amsim import golden
from amsim.kernels import cpu

from .support.bits import assert_bits_equal, mixed_matrix

F = np.float32


def _mults():
    return {
        "mbm7": amsim.multipliers.mbm(7),
        "mitchell3": amsim.multipliers.mitchell(3),
        "exact1": amsim.multipliers.exact(1),
        "exact10": amsim.multipliers.exact(10),
        "mitchell11": amsim.multipliers.mitchell(11),
    }


MULTS = _mults()


def test_matmul_expansion_at_range_extremes(rng):
    # operands near 2**+-63 and 2**+-126: the power-of-two fast path must hand these to the exact path
    mult = MULTS["mbm7"]
    m_, k_, n_ = 300, 12, 10
    a = np.ldexp(rng.uniform(1, 2, (m_, k_)), rng.integers(-126, 128, (m_, k_))).astype(F)
    b = np.ldexp(rng.uniform(1, 2, (k_, n_)), rng.integers(-126, 128, (k_, n_))).astype(F)
    a[::7] = np.ldexp(rng.uniform(1, 2, (a[::7].shape)), rng.integers(-4, 4, a[::7].shape)).astype(F)
    assert cpu.use_expansion(m_, n_, k_, 128)
    assert_bits_equal(amsim.matmul(a, b, mult), golden.matmul(a, b, mult))


@pytest.mark.parametrize("shape", [(40, 64, 300), (300, 24, 9), (9, 17, 700), (1100, 20, 30)], ids=str)
def test_matmul_kernel_layout_cases(shape, rng):
    """Transposed sweeps (N > M, K a multiple of 8, M not), narrow sides, row-block splits."""
    m_, k_, n_ = shape
    mult = MULTS["mbm7"]
    a = mixed_matrix(rng, (m_, k_), 0.02)
    b = mixed_matrix(rng, (k_, n_), 0.02)
    assert_bits_equal(amsim.matmul(a, b, mult), golden.matmul(a, b, mult))


def test_matmul_data_dependent_exponent_windows(rng):
    mult = MULTS["mitchell3"]
    a = (rng.standard_normal((300, 16)) * 2.0**-90).astype(F)
    b = (rng.standard_normal((16, 20)) * 2.0**60).astype(F)
    assert_bits_equal(amsim.matmul(a, b, mult), golden.matmul(a, b, mult))
    assert_bits_equal(amsim.matmul(b.T.copy(), a.T.copy(), mult), golden.matmul(b.T.copy(), a.T.copy(), mult))
