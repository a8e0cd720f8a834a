"""Array backends behind one small interface (einops-style): each is imported only when its arrays show up.

A backend computes the four products :mod:`amsim._ops` needs, on operands already checked and prepared by
:mod:`amsim._operands` (float32 values for significand tables, int32 indices or codes for integer and full-operand
tables), into a C-contiguous ``out``:

- ``gemm(a, b, out, mult)``: ``out[t] = a[t] @ b[t]`` for 3-D float32 arrays through a significand table;
- ``gemm_table(ia, ib, out, mult)``: ``out[t] = sum_k T[ia[t, :, k], ib[t, k, :]]`` for a full table ``T``
  (int32 sums for integer multipliers, float32 sums in k order from +0.0 for full-operand tables);
- ``multiply(a, b, out, mult)`` and ``multiply_table(ia, ib, out, mult)``: the elementwise products of flat arrays.
"""

from __future__ import annotations

import weakref
from typing import Protocol

from ._errors import UnsupportedError

__all__ = ["Backend", "get_backend", "is_cupy"]


class Backend(Protocol):
    name: str
    xp: object  # the array module

    def gemm(self, a, b, out, mult): ...

    def gemm_table(self, ia, ib, out, mult): ...

    def multiply(self, a, b, out, mult): ...

    def multiply_table(self, ia, ib, out, mult): ...


def is_cupy(x) -> bool:
    """Whether ``x`` is a CuPy array (decided from its type's module: CuPy is not imported to ask)."""
    return type(x).__module__.split(".")[0] == "cupy"


class NumpyBackend:
    """NumPy arrays, computed by the Numba kernels of ``amsim/kernels/cpu``."""

    name = "numpy"

    def __init__(self):
        import numpy

        from .kernels import cpu

        self.xp, self._cpu = numpy, cpu
        self._float_tables = weakref.WeakKeyDictionary()  # table -> its kernel-side split (built once)
        self._int_tables = weakref.WeakKeyDictionary()  # table -> its kernel-side form for the table-sum kernels

    def _tables(self, table):
        kt = self._float_tables.get(table)
        if kt is None:
            kt = self._float_tables[table] = self._cpu.float_kernel_tables(table.values)
        return kt

    def gemm(self, a, b, out, mult):
        return self._cpu.gemm_f32(a, b, out, mult.mantissa_bits, mult.rounding == "truncate", self._tables(mult.table))

    def gemm_conv(self, xp, geometry, b, out, mult):
        """out = P @ b for the patch matrix P of the padded conv input xp (see ``_ops.conv_patches_matmul``)."""
        return self._cpu.gemm_conv_f32(xp, geometry, b, out, mult.mantissa_bits, mult.rounding == "truncate",
                                       self._tables(mult.table))

    def gemm_table(self, ia, ib, out, mult):
        kt = self._int_tables.get(mult.table)
        if kt is None:
            kt = self._int_tables[mult.table] = self._cpu.int_kernel_tables(mult.table.values)
        return self._cpu.gemm_i32(ia, ib, out, kt)  # the table-sum kernels serve float32 tables too

    def multiply(self, a, b, out, mult):
        _, lut_e, lut_f, _ = self._tables(mult.table)
        self._cpu.multiply_f32(a, b, out, mult.mantissa_bits, mult.rounding == "truncate", lut_e, lut_f)
        return out

    def multiply_table(self, ia, ib, out, mult):
        self._cpu.multiply_i32(ia, ib, out, mult.table.values)
        return out


class CupyBackend:
    """CuPy arrays, computed by the CUDA kernels of ``amsim/kernels/cuda`` on the current stream."""

    name = "cupy"

    def __init__(self):
        import cupy

        from .kernels.cuda import _api

        self.xp, self._api = cupy, _api

    def gemm(self, a, b, out, mult):
        self._api.run_gemm(mult, None, a, b, out)
        return out

    gemm_table = gemm  # the table kernels are chosen from the multiplier

    def multiply(self, a, b, out, mult):
        self._api.multiply(a, b, out, mult)
        return out

    multiply_table = multiply


_BACKENDS: dict[str, Backend] = {}
_ADAPTERS = {"numpy": NumpyBackend, "cupy": CupyBackend}


def get_backend(*arrays) -> Backend:
    """The backend for the given arrays; mixing NumPy and CuPy arrays is an error (no hidden copies)."""
    cupy_flags = {is_cupy(x) for x in arrays}
    if len(cupy_flags) > 1:
        raise TypeError("amsim got a mix of NumPy and CuPy arrays; move them to one device first "
                        "(cupy.asarray(x) or x.get()).")
    name = "cupy" if cupy_flags == {True} else "numpy"
    be = _BACKENDS.get(name)
    if be is None:
        try:
            be = _BACKENDS[name] = _ADAPTERS[name]()
        except ImportError as exc:
            raise UnsupportedError(f"CuPy arrays need amsim's GPU backend, which could not be loaded: {exc}. "
                                   "Install amsim[gpu] on a machine with a CUDA GPU.") from exc
    return be
