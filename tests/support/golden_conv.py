"""The golden 2-D convolution the conv tests compare with: explicit im2col, then golden.matmul."""

from __future__ import annotations

import numpy as np

from amsim import golden
from amsim.kernels.cuda import _plan as cuda  # the launch plans' geometry: pure, no CuPy needed


def golden_conv2d_nhwc(x, w, mult, stride=1, padding=0, dilation=1, groups=1):
    """The convolution contract of amsim.gpu.conv2d_nhwc, by explicit im2col + golden.matmul."""
    geo = cuda.conv_geometry(x.shape, w.shape, stride, padding, dilation, groups)
    (pt, pb), (pl, pr) = cuda._padding(padding)
    g = geo
    xp_ = np.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))  # zeros: +0.0, or the integer 0
    cols = []
    for kh in range(g["kh"]):
        for kw in range(g["kw"]):
            h0, w0 = kh * g["dh"], kw * g["dw"]
            cols.append(xp_[:, h0 : h0 + g["sh"] * (g["oh"] - 1) + 1 : g["sh"],
                            w0 : w0 + g["sw"] * (g["ow"] - 1) + 1 : g["sw"], :])
    col = np.stack(cols, axis=3)  # (N, OH, OW, KH*KW, Cin)
    cog = g["cout"] // g["groups"]
    outs = []
    for gi in range(g["groups"]):
        cg = col[..., gi * g["cg"] : (gi + 1) * g["cg"]].reshape(-1, g["kh"] * g["kw"] * g["cg"])
        wg = w[..., gi * cog : (gi + 1) * cog].reshape(-1, cog)
        outs.append(golden.matmul(cg, wg, mult))
    out = np.concatenate(outs, axis=1)
    return out.reshape(g["n"], g["oh"], g["ow"], g["cout"])
