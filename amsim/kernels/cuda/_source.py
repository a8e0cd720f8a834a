"""The CUDA sources of the GPU backend: assembly, compile options, instantiations, and compilation without a GPU.

The kernels live in ``src/amsim_gemm.cu`` and ``src/amsim_product.cuh`` beside this file. :func:`kernel_source`
inlines the header, so the source text alone determines the binary (CuPy's kernel cache is keyed on the
text, and would not notice a changed header). :func:`compile_cubin` compiles instantiations to a CUBIN for
a chosen architecture through NVRTC (``cupy.cuda.nvrtc``), which needs no GPU: CuPy finds ``libnvrtc``
through ``cuda.pathfinder``, which looks in site-packages first, i.e. in the ``nvidia-cuda-nvrtc-cu12`` wheel
(the ``amsim[nvrtc]`` extra). The test suite uses this to compile every instantiation for sm_80 and sm_90.

Run ``python -m amsim.kernels.cuda._source --arch sm_90`` for a table of registers, stack and spills per kernel.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import time
from pathlib import Path

from ._config import (
    EXPAND_MAX_BITS,
    EXPAND_MIN_BITS,
    FLOAT_BITS,
    KERNEL_DEFINES,
    LAYOUTS,
    LUT_BITS,
    WIDE_H16_BITS,
    WIDE_MIN_BITS,
)

SRC_DIR = Path(__file__).resolve().parent / "src"
HEADER = SRC_DIR / "amsim_product.cuh"
SOURCE = SRC_DIR / "amsim_gemm.cu"

# -fmad=false: no contraction of a * b + c into an fma anywhere (the kernels call __fmaf_rn explicitly only
# where the product is provably exact). -ftz=false (NVRTC's default, stated): subnormal partial sums are kept, as
# the golden model keeps them.
BASE_OPTIONS = ("-std=c++17", "-fmad=false", "-ftz=false")

def kernel_source() -> str:
    """The complete CUDA source: amsim_gemm.cu with amsim_product.cuh inlined."""
    header = HEADER.read_text()
    body = SOURCE.read_text()
    include = '#include "amsim_product.cuh"'
    if include not in body:
        raise RuntimeError(f"{SOURCE} no longer includes amsim_product.cuh; update kernel_source().")
    return body.replace(include, f"// ---- amsim_product.cuh (inlined) ----\n{header}\n// ---- end of header ----", 1)


def define_options() -> tuple[str, ...]:
    return tuple(f"-D{k}={v}" for k, v in KERNEL_DEFINES.items())


def compile_options() -> tuple[str, ...]:
    """NVRTC options for the kernels (the architecture is added by the caller or by CuPy)."""
    return BASE_OPTIONS + define_options()


# -- instantiations ----------------------------------------------------------------------------------------
def float_kernel_names(m: int) -> list[str]:
    """Every float kernel instantiation for mantissa width m (GEMM kernels for all layouts, elementwise)."""
    names = []
    for layout in LAYOUTS.values():
        names.append(f"amsim_gemm_gather_f32<{m}, {layout}>")
        names.append(f"amsim_gemm_fixup_f32<{m}, {layout}>")
    # expand, expand16 and wide: only B's layout matters (A arrives as k-major codes from amsim_encode_a)
    if EXPAND_MIN_BITS <= m <= EXPAND_MAX_BITS:
        names += [f"amsim_gemm_expand_f32<{m}, {t}>" for t in (0, 1)]
        names += [f"amsim_gemm_expand16_f32<{m}, {t}>" for t in (0, 1)]
        names += [f"amsim_encode_a<{m}, {t}, 0>" for t in (0, 1)]
    if m >= WIDE_MIN_BITS:
        names += [f"amsim_gemm_wide_f32<{m}, {t}, 0>" for t in (0, 1)]
        if m in WIDE_H16_BITS:
            names += [f"amsim_gemm_wide_f32<{m}, {t}, 1>" for t in (0, 1)]
        names += [f"amsim_encode_a<{m}, {t}, 1>" for t in (0, 1)]
    names.append(f"amsim_gemm_dot_f32<{m}>")  # A and B as k-major codes
    names += [f"amsim_encode_a<{m}, {t}, {fmt}>" for fmt in (2, 3) for t in (0, 1)]
    names.append(f"amsim_multiply_f32<{m}>")
    return names


def lut_kernel_names(bits: int) -> list[str]:
    """Table kernels on operand codes of ``bits`` bits: integer multipliers (int) and full-operand float tables."""
    names = []
    for t in ("int", "float"):
        names += [f"amsim_gemm_lut<{t}, {bits}, {layout}>" for layout in LAYOUTS.values()]
        names += [f"amsim_gemm_lutw<{t}, {bits}, {layout}>" for layout in LAYOUTS.values()]
        names.append(f"amsim_multiply_lut<{t}, {bits}>")
    return names


def misc_kernel_names() -> list[str]:
    return ["amsim_im2col_nhwc<float>", "amsim_im2col_nhwc<int>"]


def all_kernel_names() -> list[str]:
    """Every instantiation the backend can launch."""
    names = []
    for m in FLOAT_BITS:
        names += float_kernel_names(m)
    for bits in LUT_BITS:
        names += lut_kernel_names(bits)
    return names + misc_kernel_names()


# -- compilation -------------------------------------------------------------------------------------------
@dataclasses.dataclass
class CompileResult:
    """A compiled program: the CUBIN, the NVRTC log, name expression -> lowered (mangled) name, wall time."""

    arch: str
    cubin: bytes
    log: str
    lowered: dict
    seconds: float


class NvrtcCompileError(RuntimeError):
    """NVRTC rejected the source; the message holds the compiler log."""


def nvrtc_library() -> str | None:
    """Path of the libnvrtc that CuPy uses (found by cuda.pathfinder), or None if it cannot be told."""
    try:
        from cuda.pathfinder import load_nvidia_dynamic_lib

        return load_nvidia_dynamic_lib("nvrtc").abs_path
    except Exception:  # older CuPy without pathfinder: not needed to compile, only for reports
        return None


def compile_cubin(arch: str = "sm_90", names=None, extra_options=(), ptxas_verbose: bool = False) -> CompileResult:
    """Compile kernel instantiations to a CUBIN for ``arch`` with NVRTC; no GPU needed.

    Arguments:
        arch: a real architecture, e.g. "sm_80" or "sm_90".
        names: name expressions to instantiate (default: :func:`all_kernel_names`).
        extra_options: more NVRTC options.
        ptxas_verbose: ask ptxas for register, stack and spill counts (then in ``log``).

    Returns:
        A :class:`CompileResult`. Raises :class:`NvrtcCompileError` with the log if compilation fails.
    """
    from cupy.cuda import nvrtc

    if not re.fullmatch(r"sm_\d+a?", arch):
        raise ValueError(f"arch must look like 'sm_90', got {arch!r}.")
    names = list(all_kernel_names() if names is None else names)
    options = [f"-arch={arch}", *compile_options(), *extra_options]
    if ptxas_verbose:
        options.append("--ptxas-options=-v")
    prog = nvrtc.createProgram(kernel_source(), "amsim_gemm.cu", [], [])
    try:
        for name in names:
            nvrtc.addNameExpression(prog, name)
        t0 = time.perf_counter()
        try:
            nvrtc.compileProgram(prog, options)
        except nvrtc.NVRTCError as exc:
            raise NvrtcCompileError(f"NVRTC failed for {arch}: {exc}\n{nvrtc.getProgramLog(prog)}") from None
        seconds = time.perf_counter() - t0
        log = nvrtc.getProgramLog(prog)
        lowered = {name: nvrtc.getLoweredName(prog, name) for name in names}
        cubin = nvrtc.getCUBIN(prog)
    finally:
        nvrtc.destroyProgram(prog)
    return CompileResult(arch, cubin, log, lowered, seconds)


def compile_ptx(arch: str = "compute_90", names=None, extra_options=()) -> str:
    """PTX of kernel instantiations (for inspecting the generated float instructions); no GPU needed."""
    from cupy.cuda import nvrtc

    names = list(all_kernel_names() if names is None else names)
    prog = nvrtc.createProgram(kernel_source(), "amsim_gemm.cu", [], [])
    try:
        for name in names:
            nvrtc.addNameExpression(prog, name)
        try:
            nvrtc.compileProgram(prog, [f"-arch={arch}", *compile_options(), *extra_options])
        except nvrtc.NVRTCError as exc:
            raise NvrtcCompileError(f"NVRTC failed for {arch}: {exc}\n{nvrtc.getProgramLog(prog)}") from None
        ptx = nvrtc.getPTX(prog)
    finally:
        nvrtc.destroyProgram(prog)
    return ptx.decode() if isinstance(ptx, bytes) else ptx


_FUNC_RE = re.compile(r"Function properties for (\S+)")
_FRAME_RE = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_REGS_RE = re.compile(r"Compiling entry function '(\S+)'|Used (\d+) registers")


def resource_usage(result: CompileResult) -> dict[str, dict]:
    """Parse a ``ptxas_verbose`` log: name expression -> registers, stack bytes, spill store/load bytes."""
    by_mangled = {v: k for k, v in result.lowered.items()}
    usage: dict[str, dict] = {}
    current = None
    for line in result.log.splitlines():
        if m := _FUNC_RE.search(line):
            current = m.group(1)
            usage.setdefault(current, {})
        elif (m := _FRAME_RE.search(line)) and current is not None:
            usage[current].update(stack=int(m.group(1)), spill_stores=int(m.group(2)), spill_loads=int(m.group(3)))
        elif m := _REGS_RE.search(line):
            if m.group(1):
                current = m.group(1)
                usage.setdefault(current, {})
            elif current is not None:
                usage[current]["registers"] = int(m.group(2))
    return {by_mangled.get(k, k): v for k, v in usage.items() if k in by_mangled}


def _main(argv=None):
    parser = argparse.ArgumentParser(description="Compile amsim's CUDA kernels with NVRTC and report resources.")
    parser.add_argument("--arch", default="sm_90")
    parser.add_argument("--filter", default="", help="only name expressions containing this text")
    args = parser.parse_args(argv)
    names = [n for n in all_kernel_names() if args.filter in n]
    res = compile_cubin(args.arch, names, ptxas_verbose=True)
    print(f"NVRTC library: {nvrtc_library()}")
    print(f"{len(names)} instantiations for {args.arch} in {res.seconds:.1f} s, CUBIN {len(res.cubin)} bytes")
    print(f"{'kernel':44s} {'regs':>5s} {'stack':>6s} {'spill st':>9s} {'spill ld':>9s}")
    for name, u in resource_usage(res).items():
        print(f"{name:44s} {u.get('registers', -1):5d} {u.get('stack', -1):6d} {u.get('spill_stores', -1):9d} "
              f"{u.get('spill_loads', -1):9d}")


if __name__ == "__main__":
    _main()
