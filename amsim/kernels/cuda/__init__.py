"""CUDA kernels of the CuPy backend.

- ``src/amsim_gemm.cu``, ``src/amsim_product.cuh``: the kernels and the scalar semantics they share with host code;
- ``_config.py``: tile sizes and widths (passed to the sources as -D; read by the planners and the cost model);
- ``_source.py``: source assembly, compile options, the instantiation list, NVRTC compilation without a GPU;
- ``_plan.py``: pure launch planning and the kernel-choice cost model (no CuPy import: the test suite runs the same
  plans on NumPy arrays under a host emulation of the kernels);
- ``_runtime.py``: device tables, the module cache, launches, recorded plans and their replay (needs CuPy);
- ``_api.py``: the kernels bound to multipliers, and the GPU-only ``gemm`` / ``conv2d_nhwc`` behind
  :mod:`amsim.gpu`.

Importing this package imports nothing; CuPy is imported by ``_runtime`` and ``_api`` only.
"""
