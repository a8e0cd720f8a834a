"""Array backends behind one small interface (einops-style): each imported only when its arrays show up."""

from __future__ import annotations

import weakref

import numpy as np

from ._errors import UnsupportedError

_KERNEL_TABLES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def is_cupy(x) -> bool:
    return type(x).__module__.split(".")[0] == "cupy"


class NumpyBackend:
    """NumPy arrays, computed by the Numba kernels in amsim/kernels/_cpu.py."""

    name = "numpy"
    xp = np

    @staticmethod
    def float_tables(table):
        kt = _KERNEL_TABLES.get(table)
        if kt is None:
            from .kernels import _cpu

            kt = _cpu.float_kernel_tables(table.values)
            _KERNEL_TABLES[table] = kt
        return kt

    def gemm_f32(self, a, b, out, mult):
        from .kernels import _cpu

        return _cpu.gemm_f32(a, b, out, mult.mantissa_bits, mult.rounding == "truncate", self.float_tables(mult.table))

    def gemm_i32(self, ia, ib, out, mult):
        from .kernels import _cpu

        return _cpu.gemm_i32(ia, ib, out, mult.table.values)

    def multiply_f32(self, a, b, out, mult):
        from .kernels import _cpu

        _, lut_e, lut_f, _ = self.float_tables(mult.table)
        _cpu.multiply_f32(a, b, out, mult.mantissa_bits, mult.rounding == "truncate", lut_e, lut_f)
        return out

    def gemm_table(self, ia, ib, out, mult):
        """Full-operand float tables: ``out[b] = sum_k T[ia[b, i, k], ib[b, k, j]]`` in float32, k in order."""
        from .kernels import _cpu

        return _cpu.gemm_i32(ia, ib, out, mult.table.values)  # the table-sum kernels serve float32 tables too

    def multiply_table(self, ia, ib, out, mult):
        from .kernels import _cpu

        _cpu.multiply_i32(ia, ib, out, mult.table.values)
        return out

    def multiply_i32(self, ia, ib, out, mult):
        from .kernels import _cpu

        _cpu.multiply_i32(ia, ib, out, mult.table.values)
        return out


_BACKENDS: dict[str, object] = {}


def get_backend(*arrays):
    """The backend for the given arrays; mixing NumPy and CuPy arrays is an error (no hidden copies)."""
    cupy_flags = {is_cupy(x) for x in arrays}
    if len(cupy_flags) > 1:
        raise TypeError("amsim got a mix of NumPy and CuPy arrays; move them to one device first "
                        "(cupy.asarray(x) or x.get()).")
    if cupy_flags == {True}:
        if "cupy" not in _BACKENDS:
            try:
                from .kernels._cuda import CupyBackend
            except ImportError as exc:
                raise UnsupportedError(f"CuPy arrays need amsim's GPU backend, which could not be loaded: {exc}. "
                                       "Install amsim[gpu] on a machine with a CUDA GPU.") from exc
            _BACKENDS["cupy"] = CupyBackend()
        return _BACKENDS["cupy"]
    if "numpy" not in _BACKENDS:
        _BACKENDS["numpy"] = NumpyBackend()
    return _BACKENDS["numpy"]
