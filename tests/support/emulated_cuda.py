"""A host emulation of the CUDA execution model for the kernels of ``amsim/kernels/cuda/src/amsim_gemm.cu``.

The kernel source is compiled by the host C++ compiler with CUDA threads as fibers (``__syncthreads`` a
barrier, blocks one after another, shared memory poisoned before every block). :func:`emu_run` runs the
launch plans of ``amsim/kernels/cuda/_plan.py`` on NumPy arrays through it. Used by tests/test_cuda_host.py (the
plans, kernel by kernel) and by the emulated CuPy in tests/support/emulated_gpu/ (tests/test_gpu.py end to
end). The execution model itself is the C++ header ``emulated_cuda.h`` beside this file.
Warp-level behaviour and speed are not emulated.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from amsim.kernels.cuda import _source as nv

CXX = shutil.which("g++") or shutil.which("clang++")


def _cxx(opt, *args):
    if CXX is None:
        raise RuntimeError("no host C++ compiler (g++ or clang++) on PATH")
    return [CXX, "-std=c++17", opt, "-ffp-contract=off", "-fno-fast-math", "-fPIC", "-pthread",
            f"-I{nv.SRC_DIR}", f"-I{EMU_HEADER.parent}", *nv.define_options(), *args]


def _check(procs):
    for cmd, proc in procs:
        err = proc.communicate()[1]
        if proc.returncode != 0:
            raise RuntimeError(f"host compilation failed:\n{' '.join(cmd)}\n{err[-6000:]}")


def _start(cmd):
    return cmd, subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def compile_host(tmp_dir, name, source, opt="-O1"):
    """Compile ``source`` (which may include the kernel headers) into a shared library and load it."""
    src, lib = Path(tmp_dir) / f"{name}.cpp", Path(tmp_dir) / f"lib{name}.so"
    src.write_text(source)
    _check([_start(_cxx(opt, "-shared", str(src), "-o", str(lib)))])
    return ctypes.CDLL(str(lib))


EMU_HEADER = Path(__file__).resolve().parent / "emulated_cuda.h"  # the C++ prelude: the execution model
EMU_PRELUDE = '#include "emulated_cuda.h"\n#include "amsim_gemm.cu"\n'


_F_GEMM_P = ("const float* A, const float* B, float* C, const float* lut, int* rf, int* cf, int rows, int cols, "
             "int depth, long long lda, long long ldb, long long ldc, long long sa, long long sb, long long sc, "
             "int trunc, int alo, int ahi, int blo, int bhi")
_F_GEMM_A = "A, B, C, lut, rf, cf, rows, cols, depth, lda, ldb, ldc, sa, sb, sc, trunc, alo, ahi, blo, bhi"
_FIXUP_P = ("const float* A, const float* B, float* C, const float* lut, const int* rf, const int* cf, int rows, "
            "int cols, int depth, long long lda, long long ldb, long long ldc, long long sa, long long sb, "
            "long long sc, int trunc")
_FIXUP_A = "A, B, C, lut, rf, cf, rows, cols, depth, lda, ldb, ldc, sa, sb, sc, trunc"
_LUT_GEMM_P = ("const int* A, const int* B, {T}* C, const {T}* lut, int rows, int cols, int depth, long long lda, "
               "long long ldb, long long ldc, long long sa, long long sb, long long sc")
_LUT_GEMM_A = "A, B, C, lut, rows, cols, depth, lda, ldb, ldc, sa, sb, sc"
_IM2COL_P = ("const {T}* x, {T}* col, {T} pad, int h, int w, int c, int oh, int ow, int kh, int kw, int sh, int sw, "
             "int ph, int pw, int dh, int dw, int groups, int cg, long long p0, long long npix")
_IM2COL_A = "x, col, pad, h, w, c, oh, ow, kh, kw, sh, sw, ph, pw, dh, dw, groups, cg, p0, npix"

_CODED_GEMM_P = (
    "const unsigned int* A, const float* B, float* C, const float* lut, int* cf, int rows, int cols, int depth, "
    "long long lda, long long ldb, long long ldc, long long sa, long long sb, long long sc, int trunc, int blo, "
    "int bhi")
_CODED_GEMM_A = "A, B, C, lut, cf, rows, cols, depth, lda, ldb, ldc, sa, sb, sc, trunc, blo, bhi"

# kernel family: (parameter list, argument list); {T} is the family's first template argument where it is a type
SIGNATURES = {
    "amsim_gemm_expand_f32": (_CODED_GEMM_P, _CODED_GEMM_A),
    "amsim_gemm_expand16_f32": (_CODED_GEMM_P, _CODED_GEMM_A),
    "amsim_gemm_wide_f32": (_CODED_GEMM_P, _CODED_GEMM_A),
    "amsim_encode_a": (
        ("const float* A, unsigned int* codes, int* rf, int rows, int depth, long long lda, long long sa, "
         "long long ldcodes, long long sc, int nflag, int trunc, int lo, int hi"),
        "A, codes, rf, rows, depth, lda, sa, ldcodes, sc, nflag, trunc, lo, hi"),
    "amsim_gemm_dot_f32": (
        ("const unsigned int* A, const unsigned int* B, float* C, const float* lut, int rows, int cols, int ldk, "
         "long long ldc, long long sa, long long sb, long long sc"),
        "A, B, C, lut, rows, cols, ldk, ldc, sa, sb, sc"),
    "amsim_gemm_gather_f32": (_F_GEMM_P, _F_GEMM_A),
    "amsim_gemm_fixup_f32": (_FIXUP_P, _FIXUP_A),
    "amsim_gemm_lut": (_LUT_GEMM_P, _LUT_GEMM_A),
    "amsim_gemm_lutw": (_LUT_GEMM_P, _LUT_GEMM_A),
    "amsim_multiply_f32": ("const float* a, const float* b, float* out, const float* lut, long long n, int trunc",
                           "a, b, out, lut, n, trunc"),
    "amsim_multiply_lut": ("const int* a, const int* b, {T}* out, const {T}* lut, long long n", "a, b, out, lut, n"),
    "amsim_im2col_nhwc": (_IM2COL_P, _IM2COL_A),
}
_KERNEL_RE = re.compile(r"(\w+)<(.*)>$")


def emu_sources(names, parts=1) -> list:
    """C++ sources of the emulation library, ``parts`` translation units: one C entry point ``emu_k<i>`` per
    instantiation ``names[i]`` (name expressions as in ``_source``) that runs it as a grid of fibers."""
    units = [[EMU_PRELUDE] for _ in range(parts)]
    for i, name in enumerate(names):
        fam, targs = _KERNEL_RE.match(name).groups()
        params, args = SIGNATURES[fam]
        t = targs.split(",")[0].strip()  # the type, for the families that take one first
        units[i % parts].append(
            f"extern \"C\" void emu_k{i}(unsigned gx, unsigned gy, unsigned gz, unsigned bx, long long shared, "
            f"{params.format(T=t)}) {{ emu_launch(gx, gy, gz, bx, shared, [&] {{ {fam}<{targs}>({args}); }}); }}")
    return ["\n".join(u) for u in units]


class EmuLibrary:
    """The compiled emulation library and the instantiations it holds."""

    def __init__(self, path):
        self.path = Path(path)
        self.names = (self.path.parent / "kernels.txt").read_text().splitlines()
        self._index = {name: i for i, name in enumerate(self.names)}
        self._cdll = ctypes.CDLL(str(self.path))

    def launch(self, kernel, grid, block, shared, args):
        """One launch of the name expression ``kernel`` (grid and block as 3-tuples) on NumPy arrays."""
        if kernel not in self._index:
            raise LookupError(f"{kernel} is not instantiated in the emulation library")
        if tuple(block[1:]) != (1, 1):
            raise ValueError(f"{kernel}: the emulation runs 1-D blocks only, got {block}")
        dims = [ctypes.c_uint(v) for v in grid] + [ctypes.c_uint(block[0]), ctypes.c_longlong(shared)]
        getattr(self._cdll, f"emu_k{self._index[kernel]}")(*dims, *[_c_arg(v) for v in args])


def build(out_dir, names=None, opt="-O1", jobs=None) -> EmuLibrary:
    """Compile the emulation library for ``names`` (default: every instantiation the backend can launch) in
    ``out_dir``, ``jobs`` translation units in parallel (default: one per CPU)."""
    names = nv.all_kernel_names() if names is None else list(names)
    out = Path(out_dir)
    jobs = max(1, min(jobs or os.cpu_count() or 1, len(names)))
    procs, objs = [], []
    for i, source in enumerate(emu_sources(names, jobs)):
        src, obj = out / f"amsim_emu{i}.cpp", out / f"amsim_emu{i}.o"
        src.write_text(source)
        procs.append(_start(_cxx(opt, "-c", str(src), "-o", str(obj))))
        objs.append(str(obj))
    _check(procs)
    _check([_start(_cxx(opt, "-shared", *objs, "-o", str(out / "libamsim_emu.so")))])
    (out / "kernels.txt").write_text("\n".join(names))
    return EmuLibrary(out / "libamsim_emu.so")


def cached_build(cache_dir, opt="-O2") -> Path:
    """:func:`build` of every instantiation into ``cache_dir``, reused while the kernel sources and the
    instantiation list are unchanged. Returns the library's path (load it with :class:`EmuLibrary`)."""
    names = nv.all_kernel_names()
    deps = "".join(p.read_text() for p in [*sorted(Path(nv.SRC_DIR).glob("*.cu*")), EMU_HEADER])
    key = hashlib.sha256("".join([*emu_sources(names), deps, opt, *nv.define_options()]).encode()).hexdigest()[:16]
    out = Path(cache_dir) / key
    if not out.exists():  # built aside and renamed: processes building at once never see half a library
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=cache_dir, prefix=f".{key}-"))
        build(tmp, names, opt)
        try:
            tmp.rename(out)
        except OSError:  # another process got there first
            shutil.rmtree(tmp)
    return out / "libamsim_emu.so"


def _c_arg(v):
    if isinstance(v, np.ndarray):
        return ctypes.c_void_p(v.ctypes.data)
    if isinstance(v, np.uint64):  # a raw device pointer (replayed plans)
        return ctypes.c_void_p(int(v))
    if isinstance(v, np.int32):
        return ctypes.c_int32(int(v))
    if isinstance(v, np.int64):
        return ctypes.c_int64(int(v))
    if isinstance(v, np.float32):
        return ctypes.c_float(float(v))
    raise TypeError(f"launch argument of unexpected type {type(v).__name__}: the plans pass numpy scalars")


def emu_run(lib, launches):
    """Run a launch plan of _cuda.py on NumPy arrays through the emulated kernels."""
    for la in launches:
        lib.launch(la.kernel, la.grid, la.block, la.shared, la.args)
