"""The kernels, one package per device, each importing nothing above itself:

- :mod:`amsim.kernels.cpu`: Numba kernels for NumPy arrays (row expansion, direct, exact fix-up, elementwise);
- :mod:`amsim.kernels.cuda`: CUDA sources (``cuda/src``), their compile-time configuration, pure launch planning
  (importable without CuPy), and the CuPy runtime that compiles, launches and replays plans.

Operands reach them prepared by :mod:`amsim._operands`; :mod:`amsim._backend` chooses the package by array type.
"""
