"""The CPU GEMM and elementwise drivers: kernel-side tables, workspaces, the cost model that picks the kernel,
and the exponent windows that decide which rows and columns the scalar path recomputes."""

from __future__ import annotations

import copy
import math

import numba
import numpy as np

from ..._operands import exponent_windows
from . import _machine
from ._buffers import _ro, _scratch, _thread_buffers, padded_rows
from ._kernels import (
    _KC,
    _STAGE,
    NO_EXP,
    _choose_window,
    _decode_cols_f32,
    _decode_cols_rows_f32,
    _decode_rows_f32,
    _decode_rows_t_f32,
    _expand,
    _expand_narrow,
    _fixup_f32,
    _flagged,
    _gather_f32,
    _gemm_direct_i32,
    _k,
    _keep_rows,
    _multiply_f32,
    _multiply_i32,
    _pack_rows_i32,
    _pack_rows_t_i32,
    _pad_cols_i32,
)
from ._patches import conv_patches

NB = 32  # columns per expansion block: two 16-lane or four 8-lane accumulators per row (8 for narrow operands)
_KB_MAX = 32
# below this many elementwise products the serial twins run (a parallel region costs tens of microseconds,
# far more when another process holds a core); GEMMs decide by the measured costs (_machine.costs)
_SERIAL_ELEMS = 1 << 15


# ---------------------------------------------------------------------------------------------------------
# table preparation
# ---------------------------------------------------------------------------------------------------------
class KernelTables(tuple):
    """``(lutf, lut_e, lut_f, ranges)`` with attributes ``lutt`` and ``lutp`` (the table transposed and not, as the
    expansion builds from them: rows padded, see padded_rows), ``exp_lo``/``exp_hi`` (exponent range of the
    nonzero entries), ``packable`` and ``half`` (see packable and half_table; half's tables padded too)."""

    lutt: np.ndarray
    lutp: np.ndarray
    exp_lo: int
    exp_hi: int
    packable: bool
    half: tuple | None


def packable(values: np.ndarray) -> bool:
    """Whether the float expansion may pack the tables built from ``values`` two entries to a word: all entries
    bfloat16-exact (low 16 bits zero; times the power-of-two scales they stay so), as those of the 7-bit
    logarithmic multipliers are. Tables of fewer than 8 rows are never packed."""
    return (values.dtype == np.float32 and values.ndim == 2 and values.shape[0] >= 8
            and not np.any(values.view(np.uint32) & np.uint32(0xFFFF)))


def half_table(values: np.ndarray) -> tuple | None:
    """The float expansion's half-width form of a table, ``(table, table.T, unit)``: every entry as an unsigned
    16-bit integer k with entry = k * unit, ``unit`` = 2**-q the largest such power of two (float32), or None
    where there is none with 0 <= q <= 23 and every k below 2**16. The logarithmic multipliers' entries up to
    11 bits (multiples of 2**-m below 4) and the exact ones' up to 7 bits (of 2**-14) have one. Then the tables are
    built unscaled and the sweep multiplies the two operands' scales and the unit first: for every product the
    exact path leaves to the kernel, each of those products of powers of two stays within float32's range and
    the product with k is exact, as the entry's with one scale was (see _kernels._sweep32h). Tables of fewer
    than 16 rows never take it."""
    if not (values.dtype == np.float32 and values.ndim == 2 and values.shape[0] >= 16):
        return None
    if not (np.isfinite(values).all() and (values >= 0).all()):
        return None
    nz = values[values > 0].astype(np.float64)
    q = 0
    if nz.size:
        frac, exp = np.frexp(nz)  # nz = (frac * 2**24) * 2**(exp - 24), the first factor a 24-bit integer
        mant = (frac * 2.0**24).astype(np.int64)
        low_bit = np.frexp((mant & -mant).astype(np.float64))[1] - 1  # its trailing zero bits
        q = max(0, int((24 - exp - low_bit).max()))  # the fewest fraction bits that hold every entry
    if q > 23:
        return None
    k = np.ldexp(values.astype(np.float64), q)
    if k.max() >= 2.0**16:
        return None
    bits = k.astype(np.uint16)
    return bits, bits.T, np.float32(2.0**-q)  # (float_kernel_tables lays both out for the kernels)


def float_kernel_tables(values: np.ndarray) -> KernelTables:
    """Split a float32 table into (float table, exponent, 23-bit fraction) and the tame exponent ranges.

    Returns (lutf, lut_e, lut_f, ranges) where ``ranges = (a_lo, a_hi, b_lo, b_hi)`` bounds the unbiased
    operand exponents for which every product and the intermediate ``p * 2**eb`` stay normal (a symmetric
    split; gemm_f32 picks windows from the data when that flags less).
    """
    lutf = np.ascontiguousarray(values, dtype=np.float32)
    p = lutf.astype(np.float64)
    frac, exp = np.frexp(p)  # p = frac * 2**exp, frac in [0.5, 1): normalised even for float32 subnormals
    nz = p > 0
    lut_e = np.where(nz, exp - 1, NO_EXP).astype(np.int32)
    mant = np.where(nz, frac * 2.0 - 1.0, 0.0)  # in [0, 1), 23 significant bits at most
    lut_f = np.round(mant * 2.0**23).astype(np.uint32)
    ranges, e_lo, e_hi = exponent_windows(lutf)  # (1, 0, 1, 0) when empty: everything takes the exact path
    kt = KernelTables((_ro(lutf), _ro(lut_e), _ro(lut_f), _ro(np.array(ranges, dtype=np.int32))))
    kt.lutt, kt.lutp = _ro(padded_rows(lutf.T)), _ro(padded_rows(lutf))
    kt.exp_lo, kt.exp_hi = e_lo, e_hi
    kt.packable = packable(lutf)
    half = half_table(lutf)
    kt.half = None if half is None else (_ro(padded_rows(half[0])), _ro(padded_rows(half[1])), half[2])
    return kt


class IntKernelTables(tuple):
    """``(lut, lutt)``: a table of integer (or full-operand float32) products and its transpose, contiguous, with
    attribute ``t_dtype``, the dtype of the tables the expansion builds from it: int16 or uint16 where every entry
    of an int32 table fits (the 8-bit multipliers' products do), halving the bytes the sweep reads and builds;
    then ``narrow`` holds both in that dtype, for the build's 16-bit transposes."""

    t_dtype: np.dtype
    narrow: tuple | None


def int_kernel_tables(values: np.ndarray) -> IntKernelTables:
    """The kernel-side form of a table for gemm_i32 (see IntKernelTables); build it once per table."""
    lut = np.ascontiguousarray(values)
    kt = IntKernelTables((_ro(lut), _ro(np.ascontiguousarray(lut.T))))
    kt.t_dtype, kt.narrow = lut.dtype, None
    if lut.dtype == np.int32 and lut.size:
        lo, hi = int(lut.min()), int(lut.max())
        if -(1 << 15) <= lo and hi < 1 << 15:
            kt.t_dtype = np.dtype(np.int16)
        elif lo >= 0 and hi < 1 << 16:
            kt.t_dtype = np.dtype(np.uint16)  # unsigned 8-bit multipliers: products up to 255 * 255
    if kt.t_dtype.itemsize == 2:
        kt.narrow = (_ro(kt[0].astype(kt.t_dtype)), _ro(kt[1].astype(kt.t_dtype)))
    return kt


def _windows(xmin, xmax, ymin, ymax, e_lo, e_hi, sym):
    """Flagged (x rows, y columns), each as (batch indices, row indices)."""
    w = _choose_window(xmin, xmax, ymin, ymax, -126 - e_lo, 127 - e_hi, np.asarray(sym, dtype=np.int64))
    return _flagged(xmin, xmax, w[0], w[1]), _flagged(ymin, ymax, w[2], w[3])


# ---------------------------------------------------------------------------------------------------------
# drivers
# ---------------------------------------------------------------------------------------------------------
def _nbw(ny: int, n_l: int = 0, cost=None) -> int:
    """Column-block width: 32, or 16 or 8 when the expanded operand is so narrow that 32 would mostly be padding;
    for large tables at most the measured ``cost.nbw_large``."""
    nbw = 8 if ny <= 8 else (16 if ny <= 16 else NB)
    return min(nbw, cost.nbw_large) if n_l > _machine.LARGE_TABLE_ROWS else nbw


def _kb(n_l: int, k_len: int, nbw: int, cost, esize: int = 4, packed: bool = False, half: bool = False,
        rows: int | None = None) -> int:
    """k per table block: as many as the measured block size holds (``esize`` bytes an entry; packed and
    half-width tables, two bytes an entry, have their own measured sizes; ``rows``: the table rows built per
    k, if not all ``n_l``). Tables larger than the calibration's large one keep the k it was measured with, in a
    larger block: at 2048 rows a 128 KiB block held one k of a half-width table, and with one k every swept row
    loads and stores its accumulators per multiply-accumulate (sweep 0.104-0.113 ns per MAC on Zen 4, two k
    0.079-0.083)."""
    large = n_l > _machine.LARGE_TABLE_ROWS
    rows = min(n_l if rows is None else rows, _machine.LARGE_CASE_ROWS)
    if packed:
        t_bytes, esize = cost.t_bytes_packed, 2
    elif half:
        t_bytes, esize = (cost.t_bytes_half_large if large else cost.t_bytes_half), 2
    else:
        t_bytes = cost.t_bytes_large if large else cost.t_bytes
    kb = max(1, min(_KB_MAX, k_len, t_bytes // (rows * nbw * esize)))
    if kb == k_len:
        return kb  # one panel, decoded in place
    # whole 8-lane copies into the panels (_put_panel: KB a multiple of 8, or 4 or 2; otherwise scalar code,
    # which took 3-4 ms to decode a 1024 x 1024 operand where its vector copies take 0.5-0.8)
    return kb - kb % 8 if kb >= 8 else 1 << (kb.bit_length() - 1)


def _gather_swapped(m_rows: int, n_cols: int) -> bool:
    """The gather kernel's orientation: rows x 8-column vectors, transposed only when that needs less than half
    the gathers (it reads both operands across their rows, which costs more than a few gathers)."""
    return 2 * n_cols * -(-m_rows // 8) < m_rows * -(-n_cols // 8)


def _gather_rows(m_rows: int, groups: int, nthreads: int) -> int:
    """Rows per work item of the gather kernel: 8, or 4 where few items would leave a thread idle (handed out
    in order to whichever thread is free; LeNet-5's conv1 weight gradient, 25 rows: 16 and 9 rows a thread with
    8 rows an item, 13 and 12 with 4)."""
    if nthreads < 2 or groups * -(-m_rows // 8) >= 4 * nthreads:
        return 8

    def busiest(gr):
        loads = [0] * nthreads
        for _ in range(groups):
            for r0 in range(0, m_rows, gr):
                loads[loads.index(min(loads))] += min(gr, m_rows - r0)
        return max(loads)

    return 4 if busiest(4) < busiest(8) else 8


def _costs(m_rows: int, n_cols: int, k_len: int, n_l: int, cost=None, half: bool = False) -> tuple[float, float]:
    """Estimated single-core ns of (expansion, gather kernel) for one (M, K) @ (K, N) product, from this
    machine's measured costs (``half``: the table's entries allow half-width tables).

    Expansion builds 2**m table rows per k and (padded) column block, amortised over the max(M, N) rows swept;
    the gather kernel gathers 8 table entries per row, k and 8 columns (from memory, for tables past L2).
    """
    cost = cost or _machine.costs()
    sweep, other = max(m_rows, n_cols), min(m_rows, n_cols)
    large = n_l > _machine.LARGE_TABLE_ROWS
    if half and _nbw(other) == NB and _machine.use_half(cost, n_l, sweep):  # (as _Layout decides)
        nbw = NB
        build, per_mac = (cost.build_half_large, cost.sweep_half_large) if large else (cost.build_half,
                                                                                        cost.sweep_half)
    else:
        nbw = _nbw(other, n_l, cost)
        if large:
            build, per_mac = cost.build_large, cost.sweep_large
        else:
            build, per_mac = cost.build, (cost.sweep8 if nbw == 8 else cost.sweep)  # (16: as 32)
    npad = -(-other // nbw) * nbw
    expand = k_len * npad * (n_l * build + sweep * per_mac)
    rows, cols = (n_cols, m_rows) if _gather_swapped(m_rows, n_cols) else (m_rows, n_cols)
    gather = rows * -(-cols // 8) * k_len * cost.gather * max(1.0, n_l / 512)
    return expand, gather


def _work_items(m_rows: int, n_cols: int, k_len: int, n_l: int, nbatch: int, nthreads: int, cost) -> tuple[int, int]:
    """How many threads' worth of parallel work items (expansion, gather kernel) such a product has: a
    LeNet-5 conv1 weight gradient (25 x 100352 x 6) is one item of expansion (one column block, too few rows to
    split) against four of the gather kernel."""
    sweep, other = max(m_rows, n_cols), min(m_rows, n_cols)
    nbw = _layout_nbw(other, n_l, nbatch, sweep, k_len, nthreads, cost)
    n_cb = -(-other // nbw)
    expand = nbatch * n_cb * _row_blocks(nbatch, n_cb, sweep, nthreads)
    if n_cb == 1 and _whole_table_fits(nbatch, k_len, n_l, nbw):
        expand = max(expand, nbatch * -(-sweep // 4))  # (the fused narrow expansion splits the rows finely)
    gather = nbatch * -(-m_rows // 8) * -(-n_cols // 8)
    return min(nthreads, expand), min(nthreads, gather)


def use_expansion(m_rows: int, n_cols: int, k_len: int, n_l: int, nbatch: int = 1, cost=None,
                  nthreads: int | None = None, half: bool = False) -> bool:
    """Whether row expansion beats the gather kernel for (M, K) @ (K, N) products: their estimated single-core
    times over the threads (default: Numba's; 1 for the serial twins) each can keep busy (``half``: the table
    allows half-width tables)."""
    cost = cost or _machine.costs()
    expand, gather = _costs(m_rows, n_cols, k_len, n_l, cost, half)
    nthreads = numba.get_num_threads() if nthreads is None else nthreads
    t_expand, t_gather = _work_items(m_rows, n_cols, k_len, n_l, nbatch, nthreads, cost)
    return expand / t_expand < gather / t_gather


def _is_small(m_rows: int, n_cols: int, k_len: int, n_l: int, nbatch: int, cost, half: bool = False) -> bool:
    """Whether the serial twins beat a parallel region (its fixed cost counted four times over: on a small
    machine another process often holds a core)."""
    return nbatch * min(_costs(m_rows, n_cols, k_len, n_l, cost, half)) < 4 * cost.parallel


def _layout_nbw(ny: int, n_l: int, nbatch: int, mx: int, k_len: int, nthreads: int, cost) -> int:
    """_nbw, except that 16 becomes two 8-column blocks, which keep two threads busy where the swept rows are too
    few to split (unless the fused narrow expansion's whole-K table fits)."""
    nbw = _nbw(ny, n_l, cost)
    if nbw == 16 and nbatch * max(1, mx // 256) < nthreads and not _whole_table_fits(nbatch, k_len, n_l, 16):
        return 8
    return nbw


def _row_blocks(nbatch: int, n_cb: int, m_rows: int, nthreads: int) -> int:
    """Split the swept rows only when there are too few (batch, column block) items to keep threads busy."""
    items = nbatch * n_cb
    if items >= 2 * nthreads:
        return 1
    return max(1, min(-(-2 * nthreads // items), m_rows // 256))


class _Layout:
    """Blocking of an expansion that sweeps mx = max(M, N) rows and expands ny = min(M, N) columns."""

    def __init__(self, m_rows, n_cols, k_len, n_l, nbatch, serial, cost, table_packable=False, t_dtype=np.float32,
                 table_half=False, rows_used=False):
        self.mx, self.ny = max(m_rows, n_cols), min(m_rows, n_cols)
        # get_num_threads() also starts Numba's thread pool, which must exist before a kernel that calls
        # get_thread_id() is loaded from the on-disk cache, even the serial twin (otherwise: a null call, segfault)
        nthreads = numba.get_num_threads()
        self.nthreads = 1 if serial else nthreads
        self.t_dtype = np.dtype(t_dtype)  # of the expanded table (16-bit for integer entries that fit)
        self.wide = cost.width == 16
        plain_nbw = _layout_nbw(self.ny, n_l, nbatch, self.mx, k_len, self.nthreads, cost)
        # half-width tables are measured (and built) in 32-column blocks, narrower than a large table's
        # plain ones may be: 32 columns until the choice below
        self._plain = (plain_nbw, nbatch)
        self._set_blocks(NB if table_half and _nbw(self.ny) == NB else plain_nbw, nbatch)
        # packed tables (two entries per word) where the entries allow it and this machine's costs say so
        # (measured on small tables only)
        self.packed = (self.nbw == NB and 8 <= n_l <= _machine.LARGE_TABLE_ROWS and table_packable
                       and _machine.use_packed(cost, n_l, -(-self.mx // self.n_rb)))
        # else half-width tables (unscaled) where the entries allow them and the costs say so
        self.half = (self.nbw == NB and not self.packed and table_half
                     and _machine.use_half(cost, n_l, -(-self.mx // self.n_rb)))
        if self.half:
            self.t_dtype = np.dtype(np.uint16)
        elif self.nbw != plain_nbw:
            self._set_blocks(plain_nbw, nbatch)
        # float tables (half-width or plain, not packed) of only the rows the swept operand uses (all of its rows,
        # whatever the row blocks), where the driver can build them (``rows_used``)
        self.used = (rows_used and not self.packed and self.nbw % (16 if self.half else 8) == 0
                     and _machine.use_used_rows(n_l, self.mx))
        self._block = (n_l, k_len, cost)
        self._set_kbs()

    def _set_blocks(self, nbw, nbatch):
        self.nbw = nbw
        self.npad = -(-self.ny // nbw) * nbw
        self.n_rb = 1 if self.nthreads == 1 else _row_blocks(nbatch, self.npad // nbw, self.mx, self.nthreads)

    def _set_kbs(self):
        n_l, k_len, cost = self._block
        self.words = NB // 2 if self.packed else self.nbw  # elements (or words) of one table row
        rows = math.ceil(_machine.used_rows_fraction(n_l, self.mx) * n_l) if self.used else n_l  # (expected)
        self.kbs = _kb(n_l, k_len, self.nbw, cost, self.t_dtype.itemsize, self.packed, self.half, rows)
        self.nkb = -(-k_len // self.kbs)

    def unpacked(self):
        """A copy of this layout with a plain table (its block sizes, and a large table's block width)."""
        lay = copy.copy(self)
        lay.used = False
        if lay.half:
            lay.half, lay.t_dtype = False, np.dtype(np.float32)
            lay._set_blocks(*lay._plain)
        lay.packed = False
        lay._set_kbs()
        return lay

    def buffers(self, n_l, dtype):
        return _thread_buffers(self.nthreads, self.kbs * n_l * self.words, -(-self.mx // self.n_rb) * self.nbw, dtype,
                               np.uint32 if self.packed else self.t_dtype)


_TALL_MAX = 2 << 20  # bytes of _expand_narrow's whole-K table: it must stay in (about) one core's L2
# rows per work item of _expand_narrow, and the most bytes of one thread's decoded rows: every row of an item
# reads each block of the table, which comes from L3 once per item, so more rows an item read it less often
# (Zen 4, 25088 x 400 @ 400 x 6: 80 rows 9.1 ms, 256 9.8 -> 512 7.5, 1024 7.8; decoded rows past L2 cost less)
_FR_ROWS = 512
_FR_BYTES = 2 << 20
_ONE_PANEL_MAX = 1 << 20  # bytes of a one-panel decoded operand still decoded into its panel, not fused


def _whole_table_fits(nbatch: int, k_len: int, n_l: int, nbw: int) -> bool:
    """Whether _expand_narrow's table for all of K (and offsets into it, int32) is small enough."""
    return nbatch * k_len * n_l * nbw * 4 <= _TALL_MAX


def _narrow_rows(lay, nbatch: int, contiguous: bool, k_len: int, n_l: int) -> int:
    """Rows per work item of _expand_narrow, or 0 where it does not apply.

    It pays where each decoded row is swept once (one column block) and the panels would be spread over
    several k blocks: scattering rows into the panels of a LeNet-5 conv input gradient (25088 x 400 @ 400 x 6)
    cost twice what decoding them did, and the sweep again. With one k block it pays once the decoded operand
    (8 bytes an element) outgrows the caches: the LeNet-5 conv1 forward (100352 x 25 @ 25 x 6, 20 MB decoded)
    took 3.5-4.5 ms through its panel, 2.5-3.3 fused (Zen 4). The swept operand must be C-contiguous (rows of a
    transposed view would be read across) and the whole-K table small (offsets into it int32).
    """
    lay = lay.unpacked()  # the fused kernel's table is a plain one
    one_panel_small = lay.nkb == 1 and nbatch * lay.mx * k_len * 8 <= _ONE_PANEL_MAX
    if (lay.npad != lay.nbw or one_panel_small or not contiguous
            or not _whole_table_fits(nbatch, k_len, n_l, lay.npad)):
        return 0
    fr = max(4, min(_FR_ROWS, _FR_BYTES // (8 * k_len), -(-lay.mx // (4 * lay.nthreads))))
    return fr - fr % 4


def _decode_plain(x, m, truncate, serial, key):
    """Decode x (batch, R, K) into (batch, R, K) index/scale arrays plus the per-row exponent ranges."""
    x = _ro(x)
    nbatch, rows, k_len = x.shape
    idx = _scratch(f"idx{key}", (nbatch, 1, rows, k_len), np.int32)
    scale = _scratch(f"scale{key}", (nbatch, 1, rows, k_len), np.float32)
    emin = np.empty((nbatch, rows), np.int32)
    emax = np.empty((nbatch, rows), np.int32)
    _k(_decode_rows_f32, serial)(x, m, truncate, idx, scale, emin, emax, 1, 0)  # plain indices
    return idx.reshape(nbatch, rows, k_len), scale.reshape(nbatch, rows, k_len), emin, emax


def _decode_cols(y, m, truncate, serial, npad, cw):
    """Decode the column operand y (batch, K, N) into (batch, K, npad) index/scale arrays padded with index 0,
    scale 0, plus the per-column exponent ranges."""
    y = _ro(y)
    nbatch, k_len, ny = y.shape
    ib = _scratch("ib", (nbatch, k_len, npad), np.int32)
    sb = _scratch("sb", (nbatch, k_len, npad), np.float32)
    if y.strides[2] == 4:  # rows of y contiguous: decode row by row
        nkc = -(-k_len // _KC)
        pmin = np.empty((nbatch, nkc, ny), np.int32)
        pmax = np.empty((nbatch, nkc, ny), np.int32)
        _k(_decode_cols_rows_f32, serial)(y, m, truncate, ib, sb, pmin, pmax)
        return ib, sb, pmin.min(axis=1), pmax.max(axis=1)
    ymin = np.empty((nbatch, ny), np.int32)
    ymax = np.empty((nbatch, ny), np.int32)
    _k(_decode_cols_f32, serial)(y, m, truncate, ib, sb, ymin, ymax, cw)
    return ib, sb, ymin, ymax


def _lutt(kt, transposed=True):
    """The table (transposed or not) with padded rows, as the expansion and the gather kernel read it."""
    lut = getattr(kt, "lutt" if transposed else "lutp", None)
    return _ro(padded_rows(kt[0].T if transposed else kt[0])) if lut is None else lut


def _lut_exp_range(kt, lut_e):
    e_lo = getattr(kt, "exp_lo", None)
    if e_lo is not None:
        return e_lo, kt.exp_hi
    nz = lut_e != NO_EXP
    return (int(lut_e[nz].min()), int(lut_e[nz].max())) if nz.any() else (0, 0)


def _fused_narrow(c, x, geo, m, truncate, ib, sb, lutt, lay, fr, xmin, xmax, serial):
    """Run _expand_narrow: x the swept operand (geo None) or a padded conv input (geo its patch geometry)."""
    nbatch, k_len, n_l = c.shape[0], ib.shape[1], lutt.shape[0]
    lay = lay.unpacked()  # (its whole-K table is a plain one)
    tall = _scratch("tall", (nbatch, k_len * n_l * lay.nbw), np.float32)
    pbi = _scratch("pbi", (lay.nthreads, fr, k_len), np.int32)
    pbs = _scratch("pbs", (lay.nthreads, fr, k_len), np.float32)
    ct = _scratch("ct", (lay.nthreads, fr * lay.nbw), np.float32)
    with numba.parallel_chunksize(1):
        _k(_expand_narrow, serial)(c, x, m, truncate, ib, sb, lutt, lay.nbw, fr, lay.kbs, tall, pbi, pbs, ct,
                                   xmin, xmax, lay.wide, geo)


def gemm_f32(a, b, out, m, truncate, kt):
    """out[bt] = a[bt] @ b[bt] for 3-D float32 arrays (batch already broadcast). ``kt`` from float_kernel_tables."""
    lutf, lut_e, ranges = kt[0], kt[1], kt[3]
    n_l = lutf.shape[0]
    nbatch, m_rows, k_len = a.shape
    n_cols = b.shape[2]
    if out.size == 0:
        return out
    if k_len == 0:
        out[...] = 0.0
        return out
    a, b = _ro(a), _ro(b)
    e_lo, e_hi = _lut_exp_range(kt, lut_e)
    cost = _machine.costs()
    half = getattr(kt, "half", None)
    serial = _is_small(m_rows, n_cols, k_len, n_l, nbatch, cost, half is not None)
    swapped = False
    if not use_expansion(m_rows, n_cols, k_len, n_l, nbatch, cost, 1 if serial else None, half is not None):
        swapped = _gather_swapped(m_rows, n_cols)
        if swapped:  # C^T = B^T (x) A^T with the table transposed
            x, y, lut = np.swapaxes(b, 1, 2), np.swapaxes(a, 1, 2), _lutt(kt)
        else:
            x, y, lut = a, b, lutf
        ia, sa, xmin, xmax = _decode_plain(x, m, truncate, serial, "a")
        ib, sb, ymin, ymax = _decode_cols(y, m, truncate, serial, -(-y.shape[2] // 8) * 8, 8)
        gr = 8 if serial else _gather_rows(x.shape[1], nbatch * (ib.shape[2] // 8), numba.get_num_threads())
        with numba.parallel_chunksize(1):
            _k(_gather_f32, serial)(out, ia, sa, ib, sb, lut, gr, swapped)
    else:
        swapped = m_rows < n_cols
        if swapped:  # sweep the longer side: C^T = B^T (x) A^T with the table transposed
            x, y = np.swapaxes(b, 1, 2), np.swapaxes(a, 1, 2)
            lutt = _lutt(kt, transposed=False)
        else:
            x, y = a, b
            lutt = _lutt(kt)
        lay = _Layout(m_rows, n_cols, k_len, n_l, nbatch, serial, cost, getattr(kt, "packable", False),
                      table_half=half is not None, rows_used=True)
        ib, sb, ymin, ymax = _decode_cols(y, m, truncate, serial, lay.npad, lay.nbw)
        xmin = np.empty((nbatch, lay.mx), np.int32)
        xmax = np.empty((nbatch, lay.mx), np.int32)
        fr = 0 if swapped else _narrow_rows(lay, nbatch, x.flags.c_contiguous, k_len, n_l)
        if fr:  # one column block: decode and sweep fused (never swapped)
            _fused_narrow(out, x, None, m, truncate, ib, sb, lutt, lay, fr, xmin, xmax, serial)
        else:
            iap = _scratch("iap", (nbatch, lay.nkb, lay.mx, lay.kbs), np.int32)
            sap = _scratch("sap", (nbatch, lay.nkb, lay.mx, lay.kbs), np.float32)
            if swapped:
                pmin = np.empty((nbatch, lay.nkb, lay.mx), np.int32)
                pmax = np.empty((nbatch, lay.nkb, lay.mx), np.int32)
                _k(_decode_rows_t_f32, serial)(b, m, truncate, iap, sap, pmin, pmax, lay.words, n_l * lay.words)
                xmin, xmax = pmin.min(axis=1), pmax.max(axis=1)
            else:
                _k(_decode_rows_f32, serial)(x, m, truncate, iap, sap, xmin, xmax, lay.words, n_l * lay.words)
            tbuf, cbuf = lay.buffers(n_l, np.float32)
            unit = np.float32(1.0)
            if lay.half:
                lutt, unit = (half[0] if swapped else half[1]), half[2]
            keep = tst = None
            if lay.used:  # tables of the used rows only: which they are, and the panels' offsets into them
                keep = _scratch("keep", (nbatch, k_len, n_l // 64), np.int64)
                tst = _scratch("tst", (nbatch, lay.nkb, lay.kbs), np.int32)
                _k(_keep_rows, serial)(iap, n_l, lay.words.bit_length() - 1, keep, tst)
                keep, tst = _ro(keep), _ro(tst)
            with numba.parallel_chunksize(1):  # items are big: hand them out dynamically (a busy core stalls less)
                _k(_expand, serial)(out, iap, sap, ib, sb, lutt, lay.nbw, lay.n_rb, tbuf, cbuf, lay.wide, unit,
                                    swapped, keep, tst)
    rows, cols = _windows(xmin, xmax, ymin, ymax, e_lo, e_hi, ranges)
    if rows[0].size or cols[0].size:
        if swapped:
            rows, cols = cols, rows
        _fixup(out, a, b, rows, cols, m, truncate, kt, cost)
    return out


def _fixup(out, a, b, rows, cols, m, truncate, kt, cost):
    """Recompute the flagged rows (batch, row indices) and columns of out = a @ b on the exact path."""
    n_rows, k_len, n_cols = a.shape[1], a.shape[2], b.shape[2]
    fix_serial = (rows[0].size * n_cols + cols[0].size * n_rows) * k_len * 3.0 < 4 * cost.parallel
    _k(_fixup_f32, fix_serial)(out, a, b, rows[0], rows[1], cols[0], cols[1], m, truncate, kt[1], kt[2])


def gemm_conv_f32(xp, geo, b, out, m, truncate, kt):
    """out[l] = P[l] @ b[l] for the patch matrix P that conv_patches writes from xp (one group, not transposed),
    without writing P where the fused narrow expansion runs: conv layers with a few output channels, whose
    P is up to taps times the size of xp (a LeNet-5 conv input gradient: 40 MB from a 2.6 MB input) and is read
    once. Elsewhere P is written and gemm_f32 runs on it; the exact path, where rows or columns need it, reads a
    P written then. The same bits either way.

    Arguments:
        xp: the padded input, float32, C-contiguous (L, N, H, W, C).
        geo: (start, step, count, ty, tx), as conv_patches takes them.
        b: float32 (L, taps * C, N_out); out: float32 (L, N * OH * OW, N_out), C-contiguous.
        m, truncate, kt: as for gemm_f32.
    """
    start, step, count, ty, tx = (np.asarray(v, np.int64) for v in geo)
    xp, b = _ro(xp), _ro(b)
    lead, n, h, w, cch = xp.shape
    nbatch, m_rows, n_cols = out.shape
    k_len, n_l = b.shape[1], kt[0].shape[0]

    def patches():
        p = _scratch("conv_patches", (lead, 1, m_rows, k_len), np.float32)
        conv_patches(xp, p, start, step, count, ty, tx, False)
        return p.reshape(lead, m_rows, k_len)

    fr = 0
    if xp.flags.c_contiguous and out.size and k_len and m_rows >= n_cols:
        cost = _machine.costs()
        serial = _is_small(m_rows, n_cols, k_len, n_l, nbatch, cost)
        if use_expansion(m_rows, n_cols, k_len, n_l, nbatch, cost, 1 if serial else None):
            lay = _Layout(m_rows, n_cols, k_len, n_l, nbatch, serial, cost, getattr(kt, "packable", False))
            fr = _narrow_rows(lay, nbatch, True, k_len, n_l)
    if not fr:
        return gemm_f32(patches(), b, out, m, truncate, kt)
    e_lo, e_hi = _lut_exp_range(kt, kt[1])
    ib, sb, ymin, ymax = _decode_cols(b, m, truncate, serial, lay.npad, lay.nbw)
    xmin = np.empty((nbatch, m_rows), np.int32)
    xmax = np.empty((nbatch, m_rows), np.int32)
    x4 = xp.reshape(lead, n, h, w * cch)
    rowbuf = _scratch("conv_row", (lay.nthreads, _STAGE * (k_len + 16)), np.float32)  # (a few patch rows an item)
    _fused_narrow(out, x4, (start, step, count, ty, tx, cch, rowbuf), m, truncate, ib, sb, _lutt(kt), lay, fr, xmin,
                  xmax, serial)
    rows, cols = _windows(xmin, xmax, ymin, ymax, e_lo, e_hi, kt[3])
    if rows[0].size or cols[0].size:  # (rare: NaN, Inf or extreme values) the exact path reads P itself
        _fixup(out, _ro(patches()), b, rows, cols, m, truncate, kt, cost)
    return out


def gemm_i32(ia, ib, out, lut):
    """out[bt] = sum_k lut[ia[bt, :, k], ib[bt, k, :]] for 3-D int32 table-index arrays.

    ``lut`` int32 (integer multipliers: indices are operand - lowest value; exact int32 sums) or float32
    (full-operand tables: indices are format codes; float32 sums in k order from +0.0), or its
    int_kernel_tables (prepared once per table).
    """
    kt = lut if isinstance(lut, IntKernelTables) else int_kernel_tables(lut)
    lut = kt[0]
    ia, ib = _ro(ia), _ro(ib)
    n_l = lut.shape[0]
    nbatch, m_rows, k_len = ia.shape
    n_cols = ib.shape[2]
    if out.size == 0:
        return out
    if k_len == 0:
        out[...] = 0
        return out
    cost = _machine.costs()
    serial = _is_small(m_rows, n_cols, k_len, n_l, nbatch, cost)
    if not use_expansion(m_rows, n_cols, k_len, n_l, nbatch, cost, 1 if serial else None):
        ib_t = _ro(np.ascontiguousarray(np.swapaxes(ib, 1, 2)))
        _k(_gemm_direct_i32, serial)(out, _ro(np.ascontiguousarray(ia)), ib_t, lut, lut.dtype.type(0))
        return out
    swapped = m_rows < n_cols
    # (plain tables: packed ints measured slower)
    lay = _Layout(m_rows, n_cols, k_len, n_l, nbatch, serial, cost, t_dtype=kt.t_dtype)
    # 16-bit tables are built from a 16-bit transposed table by 16 x 16 transposes (whole blocks of them only)
    tabs = kt.narrow if kt.narrow is not None and lay.nbw % 16 == 0 and n_l % 16 == 0 else kt
    if swapped:
        y, lutt = np.swapaxes(ia, 1, 2), tabs[0]
    else:
        y, lutt = ib, tabs[1]
    iap = _scratch("iap", (nbatch, lay.nkb, lay.mx, lay.kbs), np.int32)
    if swapped:
        _k(_pack_rows_t_i32, serial)(ib, iap, lay.nbw, n_l * lay.nbw)
    else:
        _k(_pack_rows_i32, serial)(ia, iap, lay.nbw, n_l * lay.nbw)
    ibp = _scratch("ib", (nbatch, k_len, lay.npad), np.int32)
    _k(_pad_cols_i32, serial)(y, ibp)
    tbuf, cbuf = lay.buffers(n_l, lut.dtype)
    with numba.parallel_chunksize(1):
        _k(_expand, serial)(out, iap, None, ibp, None, lutt, lay.nbw, lay.n_rb, tbuf, cbuf, lay.wide,
                            np.float32(1.0), swapped, None, None)
    return out


def multiply_f32(a, b, out, m, truncate, lut_e, lut_f):
    """Elementwise products of equally shaped flat float32 arrays, written to ``out``."""
    _k(_multiply_f32, a.shape[0] < _SERIAL_ELEMS)(_ro(a), _ro(b), out, m, truncate, _ro(lut_e), _ro(lut_f))


def multiply_i32(ia, ib, out, lut):
    """Elementwise table products of equally shaped flat int32 index arrays, written to ``out``."""
    _k(_multiply_i32, ia.shape[0] < _SERIAL_ELEMS)(_ro(ia), _ro(ib), out, _ro(lut))
