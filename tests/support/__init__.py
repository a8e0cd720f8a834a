"""Test support (no tests here): bit-level comparison helpers, a spy on the CPU GEMM layouts, the host emulation
of the CUDA execution model (``emulated_cuda.py`` with its C++ header) and the emulated CuPy package
(``emulated_gpu/cupy``) that tests/test_gpu_emulated.py puts on ``sys.path`` of a subprocess."""
