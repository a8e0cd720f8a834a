"""CPU kernels for full-operand float tables (formats of at most 8 bits): ``C[i, j] = sum_k T[a_ik, b_kj]``, the
float32 sum in k order from +0.0. Operands arrive as int32 codes; the table is float32 (NaN/Inf entries included).

Large problems expand the table against B (``E[k, code, j] = T[code, b_kj]``) so the inner loop adds contiguous
rows; small ones look each product up directly.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import prange

_KB = 16
_NB = 256


@numba.njit(parallel=True, cache=True)
def _expand(c, ia, ib, table, kb_size, nb_size):
    m_rows, k_len = ia.shape
    n_cols = ib.shape[1]
    n_l = table.shape[0]
    e = np.empty((kb_size, n_l, nb_size), dtype=np.float32)
    for i in prange(m_rows):
        for j in range(n_cols):
            c[i, j] = np.float32(0.0)
    for j0 in range(0, n_cols, nb_size):
        nb = min(nb_size, n_cols - j0)
        for k0 in range(0, k_len, kb_size):
            kb = min(kb_size, k_len - k0)
            for q in prange(kb * n_l):
                kk = q // n_l
                r = q - kk * n_l
                for j in range(nb):
                    e[kk, r, j] = table[r, ib[k0 + kk, j0 + j]]
            for i in prange(m_rows):
                row = c[i, j0 : j0 + nb]
                for kk in range(kb):
                    src = e[kk, ia[i, k0 + kk], :nb]
                    for j in range(nb):
                        row[j] = row[j] + src[j]


@numba.njit(parallel=True, cache=True)
def _direct(c, ia, ib_t, table):
    nbatch, m_rows, k_len = ia.shape
    n_cols = ib_t.shape[1]
    for q in prange(nbatch * m_rows):
        b = q // m_rows
        i = q - b * m_rows
        for j in range(n_cols):
            acc = np.float32(0.0)
            for k in range(k_len):
                acc = acc + table[ia[b, i, k], ib_t[b, j, k]]
            c[b, i, j] = acc


@numba.njit(parallel=True, cache=True)
def multiply_table(ia, ib, out, table):
    for q in prange(ia.shape[0]):
        out[q] = table[ia[q], ib[q]]


def gemm_table(ia, ib, out, table):
    """``out[bt] = sum_k table[ia[bt, :, k], ib[bt, k, :]]`` for 3-D int32 code arrays, float32 in k order."""
    n_l = table.shape[0]
    nbatch, m_rows, k_len = ia.shape
    n_cols = ib.shape[2]
    if out.size == 0:
        return out
    if k_len == 0:
        out[...] = 0.0
        return out
    if max(m_rows, n_cols) < 2 * n_l:
        _direct(out, np.ascontiguousarray(ia), np.ascontiguousarray(np.swapaxes(ib, 1, 2)), table)
        return out
    for bt in range(nbatch):
        if m_rows >= n_cols:
            _expand(out[bt], np.ascontiguousarray(ia[bt]), np.ascontiguousarray(ib[bt]), table, _KB,
                    min(_NB, n_cols))
        else:  # expand against A: C^T = B^T (x) A^T with the table transposed
            c = np.empty((n_cols, m_rows), np.float32)
            _expand(c, np.ascontiguousarray(ib[bt].T), np.ascontiguousarray(ia[bt].T),
                    np.ascontiguousarray(table.T), _KB, min(_NB, m_rows))
            out[bt] = c.T
    return out
