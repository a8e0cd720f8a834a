"""The CUDA kernels' compile-time configuration: tile sizes (passed to the sources as -D and used by the planners and
the cost model), the mantissa and code widths each kernel takes, the layouts, and the canonical NaN."""

from __future__ import annotations

from ..._operands import CANONICAL_NAN_BITS

# Tile sizes: the single source of truth for the kernels (passed as -D) and the planners (_plan.py).
KERNEL_DEFINES = {
    "AMSIM_EXP_WARPS": 8,  # expand kernel: warps per block
    "AMSIM_EXP_TM": 32,  # expand kernel: rows per thread (block rows = 4 * TM * WARPS)
    "AMSIM_EXP_BK": 4,  # expand kernel: contraction steps per shared-memory stage
    "AMSIM_GAT_BK": 16,  # gather and table kernels: contraction steps per stage
    "AMSIM_E16_WARPS": 8,  # expand16 kernel: warps per block
    "AMSIM_E16_TM": 16,  # expand16 kernel: rows per thread (block rows = 4 * TM * WARPS)
    "AMSIM_E16_BK": 4,  # expand16 kernel: contraction steps per shared-memory stage
    "AMSIM_WIDE_TM": 32,  # wide kernel: rows per thread (block rows = 64 * TM)
    "AMSIM_NAN_BITS": f"{CANONICAL_NAN_BITS:#010x}u",  # the one canonical NaN (amsim/_operands.py)
}
EXP_THREADS = KERNEL_DEFINES["AMSIM_EXP_WARPS"] * 32
EXP_BM = KERNEL_DEFINES["AMSIM_EXP_WARPS"] * 4 * KERNEL_DEFINES["AMSIM_EXP_TM"]
EXP_BN = 32
EXP_BK = KERNEL_DEFINES["AMSIM_EXP_BK"]
E16_THREADS = KERNEL_DEFINES["AMSIM_E16_WARPS"] * 32
E16_BM = KERNEL_DEFINES["AMSIM_E16_WARPS"] * 4 * KERNEL_DEFINES["AMSIM_E16_TM"]
E16_BN = 64
E16_BK = KERNEL_DEFINES["AMSIM_E16_BK"]
E16_MIN_BITS = 2  # = EXPAND_MIN_BITS
WIDE_THREADS = 256
WIDE_BM = 64 * KERNEL_DEFINES["AMSIM_WIDE_TM"]
WIDE_BN = 16
WIDE_MIN_BITS = 2  # the wide kernel's row groups of 4 need 2**m >= 4
WIDE_H16_BITS = (8, 9, 10)  # fp16 tables for the wide kernel: where L2 traffic matters and fp16 can be exact
GAT_THREADS = 256
GAT_BM = GAT_BN = 64
GAT_BK = KERNEL_DEFINES["AMSIM_GAT_BK"]
FIXUP_THREADS = 128
DOT_THREADS = 128
MAX_SHARED_LUT_BITS = 7  # tables up to 2**14 entries (64 KiB) are staged in shared memory
EXPAND_MIN_BITS = 2  # expand and expand16 build T four table rows at a time
EXPAND_MAX_BITS = 7


LAYOUTS = {"NN": 0, "NT": 1, "TN": 2, "TT": 3}
FLOAT_BITS = range(1, 12)
LUT_BITS = range(2, 9)  # integer operands and full-operand table codes
