"""Convolution patch matrices for the JAX bridge on the CPU: pure data movement (values are copied, never
computed on, so NaN payloads, signed zeros and subnormals arrive as they were).

Output position (n, oy, ox) of a 2-D convolution reads, through tap (iy, ix), the padded input at
``y = start[0] + oy * step[0] + ty[iy]`` and ``x = start[1] + ox * step[1] + tx[ix]``; its patch lists the taps
in row-major order and, inside each tap, the group's channels. XLA's CPU backend builds these matrices from
strided slices at 2-6 GB/s (a LeNet-5 conv input gradient, 25088 x 400, took it longer than the approximate
GEMM that reads it); these kernels write them directly, in the layout the GEMM takes.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import prange

from ._buffers import _ro
from ._kernels import _SERIAL, _k, _serial_twin


@numba.njit(parallel=True, cache=True)
def patches_rows(xp, c, out, start, step, count, ty, tx):
    """out[l, g, r, t * Cg + c] = xp[l, n, y, x * C + g * Cg + c] for output position r = (n, oy, ox) (row-major
    over ``count`` = (OH, OW)) and tap t = (iy, ix).

    xp (L, N, H, W * C) is the padded input (L: vmap axes; each image row flat), out (L, G, N * OH * OW,
    taps * Cg). With one group and consecutive taps along x (no rhs dilation) a tap row is one contiguous run.
    """
    nl, n = xp.shape[0], xp.shape[1]
    groups = out.shape[1]
    cg = c // groups
    oh, ow = count[0], count[1]
    ntx = tx.shape[0]
    runs = groups == 1 and tx[ntx - 1] - tx[0] == ntx - 1
    for q in prange(nl * n * oh):
        lb = q // (n * oh)
        rest = q - lb * (n * oh)
        b = rest // oh
        oy = rest - b * oh
        for g in range(groups):
            c0 = g * cg
            for ox in range(ow):
                dst = out[lb, g, (b * oh + oy) * ow + ox]
                p = 0
                for iy in range(ty.shape[0]):
                    src = xp[lb, b, start[0] + oy * step[0] + ty[iy]]
                    x0 = start[1] + ox * step[1]
                    if runs:
                        s0 = (x0 + tx[0]) * c
                        dst[p : p + ntx * c] = src[s0 : s0 + ntx * c]
                        p += ntx * c
                        continue
                    for ix in range(ntx):
                        s0 = (x0 + tx[ix]) * c + c0
                        for ch in range(cg):
                            dst[p + ch] = src[s0 + ch]
                        p += cg


@numba.njit(parallel=True, cache=True)
def patches_cols(xp, c, out, start, step, count, ty, tx):
    """The transpose of patches_rows: out[l, g, t * Cg + c, r] (L, G, taps * Cg, N * OH * OW), the kernel
    gradient's left operand. Items are (l, g, tap, channel): each writes one contiguous row of ``out``."""
    nl, n = xp.shape[0], xp.shape[1]
    groups = out.shape[1]
    cg = c // groups
    oh, ow = count[0], count[1]
    nty, ntx = ty.shape[0], tx.shape[0]
    per_l = groups * nty * ntx * cg
    for q in prange(nl * per_l):
        lb = q // per_l
        rest = q - lb * per_l
        g = rest // (nty * ntx * cg)
        k = rest - g * (nty * ntx * cg)
        t = k // cg
        ch = g * cg + (k - t * cg)
        iy = t // ntx
        ix = t - iy * ntx
        dst = out[lb, g, k]
        sx = step[1] * c
        for b in range(n):
            for oy in range(oh):
                row = xp[lb, b, start[0] + oy * step[0] + ty[iy]]
                r0 = (b * oh + oy) * ow
                s0 = (start[1] + tx[ix]) * c + ch
                for ox in range(ow):
                    dst[r0 + ox] = row[s0 + ox * sx]


_SERIAL_ELEMS = 1 << 16  # below this many output elements the serial twins run (a parallel region costs more)


def conv_patches(xp, out, start, step, count, ty, tx, transposed: bool):
    """Write the patch matrix of a 2-D convolution class into ``out`` (see the module docstring).

    Arguments:
        xp: the padded input, float32 (..., N, H, W, C); leading axes (vmap's) are folded into one.
        out: float32 (..., G, N * OH * OW, taps * Cg), or (..., G, taps * Cg, N * OH * OW) when ``transposed``.
        start, step, count: the class's first output sample, its stride in the padded input and (OH, OW).
        ty, tx: the taps' offsets in the padded input, per spatial dim.
    """
    lead = int(np.prod(xp.shape[:-4], dtype=np.int64))
    n, h, w, c = xp.shape[-4:]
    x4 = _ro(xp.reshape(lead, n, h, w * c).view(np.uint32))  # bits, not floats: nothing can touch a NaN
    o4 = out.reshape((lead,) + out.shape[-3:]).view(np.uint32)
    args = [np.asarray(v, np.int64) for v in (start, step, count, ty, tx)]
    kern = patches_cols if transposed else patches_rows
    _k(kern, out.size < _SERIAL_ELEMS)(x4, c, o4, *args)
    return out


_SERIAL[patches_rows] = _serial_twin(patches_rows)
_SERIAL[patches_cols] = _serial_twin(patches_cols)
