"""GPU-only extras of the CuPy backend (``amsim.matmul`` and ``amsim.multiply`` already run on CuPy arrays).

    c = amsim.gpu.gemm(a, b, mult, trans_b=True)          # strided operands read in place, a kernel of choice
    y = amsim.gpu.conv2d_nhwc(x, w, mult, stride=2, padding=1)
    amsim.gpu.precompile(workers=8)                        # fill CuPy's kernel cache on a fresh GPU machine

CuPy is imported on the first call, never by ``import amsim``.
"""

from __future__ import annotations

# the kernel choice and its cost model, pure functions of sizes (for benchmarks and experiments)
from .kernels.cuda._plan import (
    ALGOS,
    algo_estimate,
    bf16_pair_table,
    choose_algo,
    choose_lut_algo,
    conv_geometry,
    fp16_table,
    usable_algos,
)

__all__ = ["gemm", "conv2d_nhwc", "precompile", "clear_plan_cache", "device_limits", "ALGOS", "choose_algo",
           "choose_lut_algo", "algo_estimate", "usable_algos", "bf16_pair_table", "fp16_table", "conv_geometry"]


def _api():
    try:
        from .kernels.cuda import _api
    except ImportError as exc:
        from ._errors import UnsupportedError

        raise UnsupportedError(f"amsim.gpu needs CuPy, which could not be imported: {exc}. Install amsim[gpu] on a "
                               "machine with a CUDA GPU.") from exc
    return _api


def gemm(a, b, mult, trans_a=False, trans_b=False, out=None, algo=None):
    """``op(a) @ op(b)`` on CuPy arrays, with op = transpose where asked, read in place (no copies).

    Arguments:
        a, b: 2-D or 3-D CuPy arrays (float32 for a float multiplier, integers in range for an integer one);
            3-D batches must match or be 1 (broadcast without copying).
        mult: the :class:`amsim.Multiplier`.
        trans_a, trans_b: use the transpose of the last two axes.
        out: optional C-contiguous output (float32 / int32); it may overlap an input.
        algo: the kernel, for tests and benchmarks: significand tables "expand16", "expand", "wide", "gather"
            or "dot"; integer and full-operand tables "lut" or "lutw"; None chooses.

    Returns:
        (M, N) if both operands are 2-D, else (batch, M, N); bit-identical to ``amsim.golden.matmul``.
    """
    from ._ops import check_mult

    return _api().gemm(a, b, check_mult(mult), trans_a, trans_b, out, algo)


def conv2d_nhwc(x, w, mult, stride=1, padding=0, dilation=1, groups=1, *, max_chunk_bytes=1 << 28, algo=None):
    """2-D convolution (cross-correlation) of CuPy arrays through an approximate multiplier, by chunked im2col.

    ``out[n, oh, ow, g * cog + o] = sum_k xcol[k] (x) w[kh, kw, c, g * cog + o]`` summed over
    k = (kh * KW + kw) * cg + c in increasing order (float32 adds from +0.0; exact int32 sums for integer
    multipliers); positions outside the image are the operand +0.0 (integer 0), so ``0 (x) Inf`` gives NaN there.

    Arguments:
        x: (N, H, W, Cin) CuPy array; w: (KH, KW, Cin // groups, Cout) weights (HWIO), same kind.
        mult: the :class:`amsim.Multiplier`.
        stride, dilation: int or (h, w); padding: int, (ph, pw), or ((top, bottom), (left, right)).
        groups: feature groups; max_chunk_bytes: bound of the im2col buffer; algo: as for :func:`gemm`.

    Returns:
        (N, OH, OW, Cout) float32 or int32 CuPy array.
    """
    from ._ops import check_mult

    return _api().conv2d_nhwc(x, w, check_mult(mult), stride, padding, dilation, groups,
                              max_chunk_bytes=max_chunk_bytes, algo=algo)


def precompile(names=None, workers: int = 1) -> int:
    """Compile kernels into CuPy's on-disk cache ahead of use, ``workers`` processes in parallel (needs a GPU).

    Returns:
        The number of kernels compiled.
    """
    _api()
    from .kernels.cuda._runtime import precompile as run

    return run(names, workers)


def clear_plan_cache() -> None:
    """Forget every recorded launch plan (benchmarks time planning with it; nothing else needs it)."""
    _api()
    from .kernels.cuda._runtime import clear_plan_cache as run

    run()


def device_limits() -> tuple[int, int]:
    """(SM count, opt-in shared memory per block in bytes) of the current CUDA device."""
    _api()
    from .kernels.cuda._runtime import device_limits as run

    return run()
