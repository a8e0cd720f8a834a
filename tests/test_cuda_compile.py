"""Every CUDA kernel instantiation compiles with NVRTC for sm_80 and sm_90, on a machine without a GPU.

NVRTC comes from the nvidia-cuda-nvrtc-cu12 wheel (the amsim[nvrtc] extra) through cupy.cuda.nvrtc. The full
set (all mantissa widths, layouts, table kernels, elementwise, im2col) is compiled in one program per
architecture with ``--Ofast-compile=max`` (about 5 s instead of about 2 min with full optimisation); the
heaviest kernels are also compiled fully optimised for both and checked for register use and spills.
"""

from __future__ import annotations

import re

import pytest

from amsim.kernels.cuda import _config
from amsim.kernels.cuda import _source as nv

pytest.importorskip("cupy", reason="CuPy (amsim[nvrtc]) is needed to reach NVRTC")
from cupy.cuda import nvrtc  # noqa: E402


def _nvrtc_version():
    try:
        return nvrtc.getVersion()
    except Exception as exc:  # the library itself is missing
        pytest.skip(f"libnvrtc could not be loaded ({exc}); install amsim[nvrtc]")


def _fast_options():
    return ("--Ofast-compile=max",) if _nvrtc_version() >= (12, 8) else ()


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_every_instantiation_compiles(arch):
    names = nv.all_kernel_names()
    res = nv.compile_cubin(arch, names, extra_options=_fast_options())
    assert res.cubin[:4] == b"\x7fELF"
    assert set(res.lowered) == set(names)
    # each name expression resolved to its own kernel symbol, present in the CUBIN
    assert len(set(res.lowered.values())) == len(names)
    for mangled in res.lowered.values():
        assert mangled.encode() in res.cubin
    # per m in 1..11: gather and fixup x 4 layouts, dot, its A and B encoders x 2 layouts, elementwise; per m in
    # 2..7: expand and expand16 x 2 B layouts, their A encoder x 2; per m in 2..11: wide and its A encoder x 2,
    # and wide with an fp16 table x 2 for m in 8..10; 2..8 bits x {int, float} x (4 table GEMMs, 4 wide-scheme
    # table GEMMs, elementwise); im2col x 2
    assert len(names) == 11 * (8 + 1 + 4 + 1) + 6 * 6 + 10 * 4 + 3 * 2 + 7 * 2 * 9 + 2
    print(f"\n{arch}: {len(names)} instantiations in {res.seconds:.1f} s")


HEAVY = ["amsim_gemm_expand_f32<7, 0>", "amsim_gemm_expand_f32<2, 1>", "amsim_gemm_expand16_f32<7, 1>",
         "amsim_gemm_expand16_f32<2, 0>", "amsim_gemm_wide_f32<8, 0, 0>", "amsim_gemm_wide_f32<11, 1, 0>",
         "amsim_gemm_wide_f32<10, 0, 1>",
         "amsim_gemm_gather_f32<7, 3>", "amsim_gemm_gather_f32<8, 0>", "amsim_gemm_gather_f32<11, 1>",
         "amsim_gemm_fixup_f32<11, 3>", "amsim_gemm_lut<float, 8, 0>", "amsim_gemm_lut<int, 7, 0>",
         "amsim_gemm_lutw<int, 8, 3>", "amsim_gemm_lutw<float, 8, 0>",
         "amsim_multiply_f32<7>", "amsim_im2col_nhwc<float>"]


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_heavy_kernels_fit_registers_without_spills(arch):
    # (a full-optimisation compile of all 364 takes ~40 s per architecture; these are the largest, and the
    # gather and integer kernels listed are the ones that spilled with deeper unrolling or fewer registers)
    res = nv.compile_cubin(arch, HEAVY, ptxas_verbose=True)
    usage = nv.resource_usage(res)
    assert set(usage) == set(HEAVY), res.log[-2000:]
    for name, u in usage.items():
        assert u["spill_stores"] == 0 and u["spill_loads"] == 0 and u["stack"] == 0, (name, u)
    # the expand kernels run one block per SM: their registers must fit the 64K register file
    for name in HEAVY[:7]:
        threads = {"expand16": _config.E16_THREADS, "wide": _config.WIDE_THREADS}.get(name.split("_")[2],
                                                                                   _config.EXP_THREADS)
        assert usage[name]["registers"] * threads <= 65536, (name, usage[name])
    print("\n" + "\n".join(f"{n}: {u}" for n, u in usage.items()))


def test_float_arithmetic_ignores_cupys_ftz_flag():
    # CuPy compiles every RawModule with -ftz=true; the semantics keep subnormal sums, so no float instruction
    # of the kernels may flush (no .ftz), and there is no fused or approximate float arithmetic besides the
    # explicit fma.rn of the fast path
    picked = ("<7, 3>", "<11, 0>", "<7, 1>", "<11, 1", "<10, 1, 1>")
    names = [n for n in nv.all_kernel_names() if any(t in n for t in picked)
             or "float, 8, 0" in n or n in ("amsim_gemm_dot_f32<7>", "amsim_gemm_dot_f32<11>",
                                           "amsim_multiply_f32<7>", "amsim_im2col_nhwc<float>")]
    assert {n.split("<")[0] for n in names} >= {"amsim_gemm_expand_f32", "amsim_gemm_expand16_f32",
                                                "amsim_gemm_wide_f32", "amsim_gemm_dot_f32", "amsim_gemm_gather_f32"}
    ptx = nv.compile_ptx("compute_90", names, extra_options=("-ftz=true", *_fast_options()))
    float_ops = re.findall(r"^\s*((?:add|sub|mul|fma|div|rcp|sqrt|mad)\.[\w.]*f32)\b", ptx, re.M)
    assert float_ops, "no float instructions found: the PTX check is not looking at the right thing"
    assert not [op for op in float_ops if ".ftz" in op], sorted(set(float_ops))
    assert set(float_ops) <= {"add.rn.f32", "mul.rn.f32", "fma.rn.f32"}, sorted(set(float_ops))


def test_compile_errors_fail_loudly():
    # the expand kernel refuses m > 7 with a static_assert: the error surfaces with the compiler log
    with pytest.raises(nv.NvrtcCompileError, match="m <= 7"):
        nv.compile_cubin("sm_90", ["amsim_gemm_expand_f32<8, 0>"], extra_options=_fast_options())


def test_source_is_self_contained_and_options_forbid_contraction():
    src = nv.kernel_source()
    assert '#include "amsim_product.cuh"' not in src and "amsim_product_rounded" in src
    assert "-fmad=false" in nv.compile_options()
    # every tile size the launcher relies on is passed to the compiler
    for key, value in _config.KERNEL_DEFINES.items():
        assert f"-D{key}={value}" in nv.compile_options()
        assert re.search(rf"\b{key}\b", src)
