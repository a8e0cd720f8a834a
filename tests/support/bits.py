"""Bit-level helpers: float32 bit patterns, bit-for-bit comparison, the special values and mixed matrices every
backend is tested on."""

from __future__ import annotations

import numpy as np

F32 = np.float32


def bits(x):
    return np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)


def assert_bits_equal(actual, expected):
    """Bit-for-bit equality of float32 arrays (so -0 != +0); any NaN equals any NaN (payloads may differ)."""
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert actual.dtype == expected.dtype, (actual.dtype, expected.dtype)
    if actual.dtype != np.float32:
        np.testing.assert_array_equal(actual, expected)
        return
    nan_a, nan_e = np.isnan(actual), np.isnan(expected)
    mism = (nan_a != nan_e) | (~nan_a & (bits(actual) != bits(expected)))
    if mism.any():
        idx = np.argwhere(mism)[:5]
        detail = [(tuple(int(v) for v in i), float(actual[tuple(i)]), float(expected[tuple(i)])) for i in idx]
        raise AssertionError(f"{int(mism.sum())} of {mism.size} elements differ (index, actual, expected): {detail}")


def special_values() -> np.ndarray:
    """Float32 values at every boundary the semantics care about."""
    u = [
        0x00000000, 0x80000000,  # +-0
        0x00000001, 0x80000001, 0x007FFFFF, 0x807FFFFF, 0x00400000,  # subnormals (0x007FFFFF rounds up to normal)
        0x00800000, 0x80800000, 0x00800001,  # min normal
        0x7F7FFFFF, 0xFF7FFFFF, 0x7F000000,  # max normal (rounds to Inf under RNE), 2**127
        0x7F800000, 0xFF800000,  # +-Inf
        0x7FC00000, 0xFFC00001, 0x7F800001,  # NaNs (signalling with low payload too)
        0x3F800000, 0xBF800000, 0x3FC00000, 0x3FFFFFFF,  # 1, -1, 1.5, just below 2 (rounds to 2)
        0x3F810000, 0x3F818000, 0x3F828000,  # ties for m=7 rounding
        0x5F000000, 0x5F800000, 0x20000000, 0x1F800000,  # 2**63, 2**64, 2**-63, 2**-64
        0x7E800000, 0x01000000, 0x0D800000, 0x71800000,  # 2**126, 2**-125, 2**-100, 2**100
        0x7EFFFFFF, 0x00FFFFFF,
    ]
    return np.array(u, dtype=np.uint32).view(np.float32)


def mixed_matrix(rng, shape, special_fraction=0.15):
    """Random normals with special values sprinkled in."""
    x = rng.standard_normal(shape).astype(np.float32)
    sv = special_values()
    mask = rng.random(shape) < special_fraction
    x[mask] = sv[rng.integers(0, sv.size, size=int(mask.sum()))]
    return x


def to_host(x):
    """A NumPy array of ``x`` (a NumPy array already, or a CuPy one copied to the host; the emulated CuPy's arrays
    subclass NumPy's, so the type's module decides)."""
    return x.get() if type(x).__module__.split(".")[0] == "cupy" else np.asarray(x)
