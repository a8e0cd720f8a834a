"""CPU kernels (Numba), bit-identical to the golden model in amsim/_golden.py.

Float GEMM strategy ("row expansion"). Write the approximate product as ``s_a * (LUT[ma, mb] * s_b)`` with
``s = +-2**e`` the operands' signed power-of-two scales. For a block of KB values of k and NB = 32 columns j
(16 or 8 where B is that narrow), expand the table against the decoded B operand,

    T[k, ma, j] = LUT[ma, mb[k, j]] * s_b[k, j]            (all 2**m values of ma)

and every row i of A then needs only ``acc[j] += s_a[i, k] * T[k, ma[i, k], j]``: a broadcast, a contiguous
load and a fused multiply-add on 16-lane (AVX-512) or 8-lane (AVX2) vectors, with the 32 accumulators of a row
held in registers over the k block. Both multiplications by powers of two are exact while everything stays in
the normal range, so the result is the semantics' exactly formed product, added in k order with one float32
rounding per add: with an exact product, the FMA rounds the same sum once, as a multiply then an add would (no
fast-math anywhere; LLVM contracts nothing by itself).

Layout matters more than arithmetic here:
- T is built with 8x8 register transposes of rows of the *transposed* table (``T[k, r, j..j+7]`` is row r of
  ``LUT[:, mb[k, j..j+7]]``), a fraction of a cycle per element; it is sized to stay in L2.
- A is decoded into k-block-major panels ``(k block, row, KB)`` that hold each operand's offset into T (the
  sweep does no address arithmetic), and each work item accumulates into its own contiguous (rows, 32) tile
  in a 2 MiB-aligned workspace: sweeping rows of the user's arrays directly runs into 4 KiB cache aliasing,
  and scattered pages into L2 set conflicts.
- One parallel region: work items are (batch, 32-column block, row block), handed out dynamically, and each
  thread owns its T and tile. Expansion costs ``2**m`` table rows per k and column block, amortised over the
  rows swept, so the larger of M and N is swept (computing C^T = B^T A^T when N > M). Tables of more than
  512 rows take the column-block width and table-block size the calibration found fastest for them (often
  8 columns: more k per block, fewer accumulator loads and stores per row).

Where every table entry is bfloat16-exact (its low 16 bits zero, as for the 7-bit logarithmic multipliers) T can
be packed two entries to a 32-bit word (columns q and q + 16 of a row in word q): half the bytes per
multiply-accumulate for a mask and a shift per vector, the same values exactly. The measured costs decide where
that pays (``AMSIM_CPU_TABLE_PACKING`` forces it on or off). Where every entry is a 16-bit integer times one
power of two ``2**-q`` (q <= 23: the logarithmic multipliers up to 11 bits, whose entries are multiples of
``2**-m`` below 4, and the exact ones up to 7 bits), T can hold the integers unscaled, half-width: the build is
a 16-bit transpose with no multiply, and the sweep multiplies the two operands' power-of-two scales and
``2**-q`` before the fused multiply-add with the widened integer; every product the exact path leaves to the
kernel is exact either way, so the bits are the same. Again the measured costs decide, packed tables first
where both apply (``AMSIM_CPU_HALF_TABLES`` forces it). Integer tables whose entries fit 16 bits are built by the
same 16-bit transposes.

A swept operand uses at most M of the 2**m table rows at each k: 1024 rows of random data use 39 % of a
2048-row table. Where few are used (large float tables, half-width or plain, an expected share of at most
70 %), ``_keep_rows`` marks the rows each k uses and rewrites the panels' offsets to their ranks, and the build
transposes every row as before but stores only the used ones, packed (``vtranspose16_store_kept``,
``vtranspose_store_halves_kept``, no branch): a smaller T, fewer lines written through to L2, more k per block.
The entries read, and so the bits, are the same (``AMSIM_CPU_USED_ROWS`` forces it on or off).

Operands whose exponent could take an intermediate or a product out of the normal range (and Inf/NaN) make
their whole row or column "flagged"; those outputs are recomputed by the scalar path, which assembles each
product from bits as the semantics say. The exponent window of each side is chosen per call from the data, so
ordinary tensors never take that path. Zeros and subnormals stay on the fast path as signed zero scales.

Where the expanded operand is one column block (N <= 32, conv layers with a few channels) and K spans several
k blocks, the expansion is fused with decoding (``_expand_narrow``): the table for all of K is built once, and
each work item decodes a few rows into its own buffer and sweeps them, instead of writing decoded panels of
the long operand to memory and reading them back. For a convolution (``gemm_conv_f32``) those rows are the
patch matrix's, copied run by run from the padded input into a row buffer and decoded there, so the patch
matrix (up to taps times the input's size) is written only when the scalar path must recompute some of its
rows.

Problems whose swept side is too short to amortise an expansion (a few rows, K of 10^5: conv weight gradients)
use the gather kernel: the same products and sums, eight table entries loaded per row and k. Which kernel, the
vector width, the k-block size and whether to run serially are decided from this machine's measured costs
(``_machine.py``: a short calibration at first use, cached on disk); problems too small to amortise a parallel
region run serial twins of the same kernels.

Integer GEMM uses the same expansion without scales (int32 adds, exact: the caller bounds K * max|LUT|), its
expanded tables int16 or uint16 where the table's entries fit (widened as they are loaded).
"""

from __future__ import annotations

from ._gemm import (
    NB,
    float_kernel_tables,
    gemm_conv_f32,
    gemm_f32,
    gemm_i32,
    int_kernel_tables,
    multiply_f32,
    multiply_i32,
    use_expansion,
)
from ._patches import conv_patches

__all__ = ["conv_patches", "float_kernel_tables", "gemm_conv_f32", "gemm_f32", "gemm_i32", "int_kernel_tables",
           "multiply_f32", "multiply_i32", "use_expansion", "NB"]
