"""Kernels: Numba CPU kernels (_cpu.py); CUDA sources and their CuPy launchers (_cuda.py, *.cu)."""
