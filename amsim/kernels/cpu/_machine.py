"""What the CPU kernels know about the machine they run on: the vector width they use, and its measured costs.

The float sweep exists for 8 float32 lanes (AVX2) and 16 (AVX-512). Where the CPU has AVX-512 both are timed in
the same rounds and the faster is used (on Zen 4, which splits 512-bit operations into two halves, that can be
the 8-lane one); elsewhere the 8-lane one. ``AMSIM_CPU_VECTOR_WIDTH=8`` or ``16`` forces one (the results are
the same bits either way: only the speed differs).

Those costs, the others that pick the kernel (expansion or direct, serial or parallel) and the expansion's
block size are measured at first use, in about a second, and cached on disk beside Numba's cache of the kernels,
keyed by the CPU, the vector width, the thread count, Numba's version and the kernels' source.
``AMSIM_CPU_CALIBRATION=off`` uses fixed defaults instead (rough figures of Zen 3 and Zen 4 machines), for runs
that must not spend the time or write the file.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import threading
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numba
import numpy as np

from ..._io import atomic_write
from . import _buffers, _kernels, _simd
from ._buffers import _ro, _thread_buffers, padded_rows

ENV_WIDTH = "AMSIM_CPU_VECTOR_WIDTH"
ENV_CALIBRATION = "AMSIM_CPU_CALIBRATION"
ENV_PACKING = "AMSIM_CPU_TABLE_PACKING"
ENV_HALF = "AMSIM_CPU_HALF_TABLES"
ENV_USED_ROWS = "AMSIM_CPU_USED_ROWS"
CACHE_NAME = "amsim_cpu_costs.json"
T_BYTES_CHOICES = (32 << 10, 64 << 10, 128 << 10, 256 << 10)
NBW_CHOICES = (8, 16, 32)
NB_HALF = 32  # the column-block width of half-width tables
# the expanded table's forms the calibration times: its Costs field for the block size, _expansion_case's keywords
_FORMS = {"plain": ("t_bytes", {}), "packed": ("t_bytes_packed", {"packed": True}),
          "half": ("t_bytes_half", {"half": True})}
# tables of more rows than this are "large": their rows come from L3 or memory, and one k of a 32-column block
# fills most of a block's room in L2, so they take their own measured block shape and costs
LARGE_TABLE_ROWS = 512
LARGE_CASE_ROWS = 1024  # the calibration's large table; larger ones keep the k per block measured on it


@dataclass(frozen=True)
class Costs:
    """Single-core costs in ns, and the expansion's block size.

    Arguments:
        build: per element of the expanded table, small tables (up to ``LARGE_TABLE_ROWS`` rows).
        build_large, sweep_large: per element of the expanded table and per multiply-accumulate of the sweep,
            large tables, in their block shape (``nbw_large``, ``t_bytes_large``).
        sweep: per multiply-accumulate of the 32-column sweep.
        sweep8: per multiply-accumulate of the 8-column sweep (narrow operands).
        gather: per row, k and 8 columns of the gather kernel (tables up to 1 MiB).
        parallel: fixed cost of one parallel region (both cores), the break-even against serial work.
        t_bytes: size of one thread's expanded table, the fastest of ``T_BYTES_CHOICES``.
        width: the vector width these costs were measured with (8 or 16 lanes).
        build_packed, sweep_packed: build and sweep with packed tables (two bfloat16-exact entries per word),
            used where they cost less than plain ones and the multiplier's entries allow it (small tables).
        t_bytes_packed: size of one thread's packed table, measured on its own: at plain tables' size a packed
            one holds twice the k, so each swept row's accumulators are loaded and stored half as often.
        nbw_large, t_bytes_large: column-block width (at most; one of ``NBW_CHOICES``) and table-block size of
            expansions with large tables, the fastest pair at 1024 table rows. A narrower block holds more k
            in the same bytes, so each swept row's accumulators are loaded and stored less often.
        build_half, sweep_half, t_bytes_half: build, sweep and table-block size with half-width tables
            (unscaled entries as 16-bit integers, 32-column blocks), small tables; used where they cost less
            than plain ones and the multiplier's entries allow it.
        build_half_large, sweep_half_large, t_bytes_half_large: the same at 1024 table rows (large tables).
    """

    build: float = 0.17
    build_large: float = 0.17
    sweep: float = 0.06
    sweep8: float = 0.09
    gather: float = 1.5
    parallel: float = 25_000.0
    t_bytes: int = 128 << 10
    width: int = 8
    build_packed: float = 0.2  # (never chosen by default)
    sweep_packed: float = 0.06
    t_bytes_packed: int = 128 << 10
    sweep_large: float = 0.12
    nbw_large: int = 32
    t_bytes_large: int = 128 << 10
    build_half: float = 0.2  # (never chosen by default)
    sweep_half: float = 0.06
    t_bytes_half: int = 128 << 10
    build_half_large: float = 0.2
    sweep_half_large: float = 0.12
    t_bytes_half_large: int = 128 << 10

    @classmethod
    def from_dict(cls, d) -> Costs | None:
        """Costs from a cache entry, or None when it is not a well-formed one (a file is never trusted)."""
        if not isinstance(d, dict) or set(d) != {f.name for f in fields(cls)}:
            return None
        vals = {}
        for f in fields(cls):
            v = d[f.name]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (0 < v < 1e9):
                return None
            vals[f.name] = v
        choices = {"t_bytes": T_BYTES_CHOICES, "t_bytes_large": T_BYTES_CHOICES, "t_bytes_packed": T_BYTES_CHOICES,
                   "t_bytes_half": T_BYTES_CHOICES, "t_bytes_half_large": T_BYTES_CHOICES, "width": (8, 16),
                   "nbw_large": NBW_CHOICES}
        if not all(type(vals[k]) is int and vals[k] in ok for k, ok in choices.items()):
            return None  # (131072.0 == 131072, but a float block size would break the kernels' shapes)
        return cls(**vals)


DEFAULT_COSTS = Costs()


# ---------------------------------------------------------------------------------------------------------
# vector width
# ---------------------------------------------------------------------------------------------------------
@functools.cache
def _host_features() -> frozenset:
    import llvmlite.binding as ll

    feats = numba.core.config.CPU_FEATURES or ll.get_host_cpu_features().flatten()
    return frozenset(f[1:] for f in feats.split(",") if f.startswith("+"))


@functools.cache
def cpu_name() -> str:
    """The CPU as LLVM (and so Numba) targets it, e.g. ``znver4`` or ``emeraldrapids``."""
    import llvmlite.binding as ll

    return numba.core.config.CPU_NAME or ll.get_host_cpu_name()


def host_width() -> int:
    """16 where the CPU has AVX-512 (and Numba targets it), else 8."""
    return 16 if "avx512f" in _host_features() else 8


def forced_width() -> int | None:
    """``AMSIM_CPU_VECTOR_WIDTH`` (8 or 16) if set, else None (auto).

    Raises:
        ValueError: the variable holds something else.
    """
    v = os.environ.get(ENV_WIDTH, "").strip().lower()
    if v in ("", "auto"):
        return None
    if v in ("8", "16"):
        return int(v)
    raise ValueError(f"{ENV_WIDTH}={v!r} is not a vector width: set it to 8 (AVX2 kernels), 16 (AVX-512 kernels) "
                     "or auto (the widest this CPU has), or unset it.")


# ---------------------------------------------------------------------------------------------------------
# calibration
# ---------------------------------------------------------------------------------------------------------
# A calibration whose thread ran for less than this share of the wall time of its timed runs (serial kernels:
# alone, they hold their core throughout; 0.99-1.0 measured) shared its core with other work: 0.38 beside the
# running test suite, and a calibration taken under it chose 32 KiB table blocks instead of 256. Such costs
# serve the process that measured them but are not cached for later ones. (The best of each measurement's runs
# looked unshared even then: the other work also evicts the core's caches between runs.)
BUSY_MIN = 0.9
_busy = [0.0, 0.0]  # thread time, wall time of the serial timed runs of this calibration


def _best(f, n: int = 7, serial: bool = True) -> float:
    """ns of the fastest of n runs of f (after one to warm up)."""
    return _best_each({0: f}, n, serial)[0]


def _best_each(cases: dict, n: int = 7, serial: bool = True) -> dict:
    """_best of each case, their runs interleaved, so that a slow spell of the machine (another VM's load) falls
    on all of them instead of on those measured during it: measured one after the other, plain and packed
    tables traded places between two calibrations an hour apart on one Zen 4 (one chose plain tables and ran
    1024^3 mbm7 at 3.0-3.2x NumPy, where packed ones ran 2.5-2.6x)."""
    for f in cases.values():
        f()
    best = dict.fromkeys(cases, float("inf"))
    for _ in range(n):
        for key, f in cases.items():
            t0, c0 = time.perf_counter(), time.thread_time()
            f()
            dt, dc = time.perf_counter() - t0, time.thread_time() - c0
            best[key] = min(best[key], dt)
            if serial:
                _busy[0] += dc
                _busy[1] += dt
    return {key: v * 1e9 for key, v in best.items()}


def vector_width() -> int:
    """The vector width the float sweep uses now (forced, or the measured faster one)."""
    return costs().width


_HALF_Q = 11  # the calibration's half-width tables hold integers as the 11-bit multipliers' do: unit 2**-11


def _half_lutt(lutt):
    """A float table of entries in [1, 4) as the calibration's half-width table (k = entry * 2**_HALF_Q)."""
    return np.ldexp(lutt, _HALF_Q).astype(np.uint16)


def _expansion_case(rng, rows, k_len, nl, nbw, t_bytes, width, packed=False, lutt=None, half=False):
    """Decoded operands of one column block (rows x k_len) @ (k_len x nbw) with an nl-row table (``lutt``, or
    a random one), as _expand takes them, and the call that runs it serially; ``t_bytes`` of (packed, half or
    plain) table per k block. Scales are 1.0: the costs do not depend on values."""
    words = nbw // 2 if packed else nbw
    kbs = max(1, min(32, k_len, t_bytes // (nl * words * (2 if half else 4))))
    nkb = -(-k_len // kbs)
    kk = np.arange(kbs, dtype=np.int32)
    iap = (rng.integers(0, nl, (1, nkb, rows, kbs)) * words + kk * (nl * words)).astype(np.int32)  # table offsets
    sap = np.ones((1, nkb, rows, kbs), np.float32)
    ib = rng.integers(0, nl, (1, k_len, nbw)).astype(np.int32)
    sb = np.ones((1, k_len, nbw), np.float32)
    if lutt is None:
        lutt = rng.uniform(1.0, 4.0, (nl, nl)).astype(np.float32)
    if half and lutt.dtype != np.uint16:
        lutt = _half_lutt(lutt)
    lutt = _ro(padded_rows(lutt))  # (as float_kernel_tables lays tables out; one passed in padded is kept as is)
    c = np.empty((1, rows, nbw), np.float32)
    tbuf, cbuf = _thread_buffers(1, kbs * nl * words, rows * nbw, np.float32,
                                 np.uint32 if packed else (np.uint16 if half else None))
    wide = width == 16
    kern = _kernels._SERIAL[_kernels._expand]
    unit = np.float32(2.0**-_HALF_Q if half else 1.0)
    return lambda: kern(c, iap, sap, ib, sb, lutt, nbw, 1, tbuf, cbuf, wide, unit, False, None, None)


def _parallel_cost() -> float:
    """ns of one parallel region: a parallel kernel on a trivial problem, less the same work done serially."""
    c1, ione, one = np.empty((1, 1, 1), np.float32), np.zeros((1, 1, 8), np.int32), np.ones((1, 1, 8), np.float32)
    ia1, sa1, lut1 = np.zeros((1, 1, 1), np.int32), np.ones((1, 1, 1), np.float32), _ro(np.ones((1, 1), np.float32))
    gather_k = _kernels._SERIAL[_kernels._gather_f32]
    par = _best(lambda: _kernels._gather_f32(c1, ia1, sa1, ione, one, lut1, 8, False), 5, serial=False)
    return par - _best(lambda: gather_k(c1, ia1, sa1, ione, one, lut1, 8, False), 5, serial=False)


def calibrate(width: int) -> Costs:
    """Measure this machine's costs with the ``width``-lane sweep (about half a second, once compiled).
    ``contended()`` then says whether other work held the core meanwhile."""
    _busy[:] = [0.0, 0.0]
    rng = np.random.default_rng(0)
    k_len = 128
    # the parallel region's cost three times, spread over the calibration, the least kept: on a VM one reading
    # in nine came out at 0.6 ms (the other core descheduled for those milliseconds) where the rest read 3-5 us,
    # and that one reading, cached, ran every mid-size GEMM serially at half speed
    par_costs = [_parallel_cost()]
    # sweep and block size: the same problem with each table-block size; the fastest block wins
    big, small = 1024, 64
    # plain, packed and half-width tables, each block size, 1024 and 64 swept rows (which split build from
    # sweep): all in the same rounds, so that the comparisons between them hold
    per = _best_each({(rows, tb, form): _expansion_case(rng, rows, k_len, 128, 32, tb, width, **kw)
                      for form, (_, kw) in _FORMS.items() for tb in T_BYTES_CHOICES for rows in (big, small)})
    best_tb = {f: min(T_BYTES_CHOICES, key=lambda tb, f=f: per[big, tb, f]) for f in _FORMS}
    t_bytes, tb_p, tb_h = best_tb["plain"], best_tb["packed"], best_tb["half"]

    def split(t_big, t_small, nl=128, nbw=32, k=k_len):  # t(rows) = k * nbw * (nl * build + rows * sweep)
        sweep = max((t_big - t_small) / ((big - small) * k * nbw), 1e-3)
        return max((t_small - small * k * nbw * sweep) / (k * nbw * nl), 1e-3), sweep

    build, sweep = split(per[big, t_bytes, "plain"], per[small, t_bytes, "plain"])
    build_packed, sweep_packed = split(per[big, tb_p, "packed"], per[small, tb_p, "packed"])
    build_half, sweep_half = split(per[big, tb_h, "half"], per[small, tb_h, "half"])
    t8 = _best(_expansion_case(rng, big, k_len, 128, 8, t_bytes, width))
    sweep8 = max((t8 - k_len * 8 * 128 * build) / (big * k_len * 8), 1e-3)
    # large tables: the fastest block shape per multiply-accumulate at 1024 table rows (a 4 MiB table), plain
    # (every width) and half-width (32 columns), 1024 and 64 swept rows, all in the same rounds; then split
    nl_l, k_l = LARGE_CASE_ROWS, 32
    lutt_l = rng.uniform(1.0, 4.0, (nl_l, nl_l)).astype(np.float32)
    # (one table of each form for all its cases, laid out as one GEMM has it: a copy each, eight tables in turn,
    # ran the half-width build 1.6x slower than it runs in a GEMM)
    luts = {False: padded_rows(lutt_l), True: padded_rows(_half_lutt(lutt_l))}
    shapes = [(False, nbw, tb) for nbw in NBW_CHOICES for tb in T_BYTES_CHOICES] + \
        [(True, NB_HALF, tb) for tb in T_BYTES_CHOICES]
    per_l = _best_each({(rows, *sh): _expansion_case(rng, rows, k_l, nl_l, sh[1], sh[2], width, lutt=luts[sh[0]],
                                                     half=sh[0])
                        for sh in shapes for rows in (big, small)}, 5)

    def fastest(halves):  # (nbw, t_bytes) of the least time per multiply-accumulate at 1024 swept rows
        return min(((nbw, tb) for h, nbw, tb in shapes if h == halves), key=lambda s: per_l[(big, halves, *s)] / s[0])

    nbw_l, tb_l = fastest(False)
    build_large, sweep_large = split(per_l[big, False, nbw_l, tb_l], per_l[small, False, nbw_l, tb_l], nl_l, nbw_l,
                                     k_l)
    _, tb_hl = fastest(True)
    build_half_large, sweep_half_large = split(per_l[big, True, NB_HALF, tb_hl], per_l[small, True, NB_HALF, tb_hl],
                                               nl_l, NB_HALF, k_l)
    par_costs.append(_parallel_cost())
    # gather kernel: 64 x 1024 x 8 with a 128 x 128 table
    ia = rng.integers(0, 128, (1, 64, 1024)).astype(np.int32)
    sa = np.ones((1, 64, 1024), np.float32)
    ib = rng.integers(0, 128, (1, 1024, 8)).astype(np.int32)
    sb = np.ones((1, 1024, 8), np.float32)
    lutf = _ro(rng.uniform(1.0, 4.0, (128, 128)).astype(np.float32))
    c = np.empty((1, 64, 8), np.float32)
    gather_k = _kernels._SERIAL[_kernels._gather_f32]
    gather = _best(lambda: gather_k(c, ia, sa, ib, sb, lutf, 8, False)) / (64 * 1024)
    par_costs.append(_parallel_cost())
    parallel = min(max(min(par_costs), 10_000.0), 1e6)  # idle-machine figures undersell it
    return Costs(build=build, build_large=build_large, sweep=sweep, sweep8=sweep8, gather=gather,
                 parallel=parallel, t_bytes=t_bytes, width=width, build_packed=build_packed,
                 sweep_packed=sweep_packed, t_bytes_packed=tb_p, sweep_large=sweep_large, nbw_large=nbw_l,
                 t_bytes_large=tb_l, build_half=build_half, sweep_half=sweep_half, t_bytes_half=tb_h,
                 build_half_large=build_half_large, sweep_half_large=sweep_half_large, t_bytes_half_large=tb_hl)


def contended() -> bool:
    """Whether other work kept the last calibration's thread off its core (it ran for less than ``BUSY_MIN`` of
    its timed runs' wall time)."""
    return _busy[1] > 0 and _busy[0] < BUSY_MIN * _busy[1]


def _on_off_auto(env: str, what: str, on: str, off: str) -> str:
    """An "on" / "off" / "auto" (or unset) setting from the environment variable ``env``.

    Raises:
        ValueError: the variable holds something else (the message says what ``on`` and ``off`` do).
    """
    v = os.environ.get(env, "").strip().lower()
    if v in ("", "auto"):
        return "auto"
    if v in ("on", "off"):
        return v
    raise ValueError(f"{env}={v!r} is not a {what} setting: set it to on ({on}), off ({off}) or auto (as measured "
                     "on this machine), or unset it.")


def table_packing() -> str:
    """``AMSIM_CPU_TABLE_PACKING``: "on" (pack every small table whose entries allow it), "off" (never), or "auto"
    (unset: where this machine's measured costs say it is faster). Packing changes speed only, never a result.

    Raises:
        ValueError: the variable holds something else.
    """
    return _on_off_auto(ENV_PACKING, "packing", "pack every table whose entries fit 16 bits", "never pack")


def use_packed(cost: Costs, n_l: int, rows: int) -> bool:
    """Whether an expansion with ``n_l``-row tables sweeping ``rows`` rows packs them, where the entries allow it:
    forced, or cheaper by the measured costs."""
    mode = table_packing()
    return mode == "on" or (mode == "auto" and n_l * cost.build_packed + rows * cost.sweep_packed
                            < n_l * cost.build + rows * cost.sweep)


def half_tables() -> str:
    """``AMSIM_CPU_HALF_TABLES``: "on" (half-width tables wherever the multiplier's entries allow), "off" (never),
    or "auto" (unset: where this machine's measured costs say they are faster). Speed only, never a result.

    Raises:
        ValueError: the variable holds something else.
    """
    return _on_off_auto(ENV_HALF, "half-table", "half-width tables wherever the entries allow", "never")


def use_half(cost: Costs, n_l: int, rows: int) -> bool:
    """Whether an expansion with ``n_l``-row tables sweeping ``rows`` rows builds them half-width (16-bit
    integers), where the entries allow it: forced, or cheaper by the measured costs (of large tables past
    LARGE_TABLE_ROWS)."""
    mode = half_tables()
    if mode != "auto":
        return mode == "on"
    if n_l > LARGE_TABLE_ROWS:
        half = n_l * cost.build_half_large + rows * cost.sweep_half_large
        return half < n_l * cost.build_large + rows * cost.sweep_large
    return n_l * cost.build_half + rows * cost.sweep_half < n_l * cost.build + rows * cost.sweep


# Building only the used rows of a large table saves writing the others (the shuffles are the same):
# the expected share of rows used (see used_rows_fraction) up to which that is done. Zen 4, 1024^2 @ 1024 x N,
# rows used and not alternating in one process: 39 % used (m = 11, 1024 rows) 16 % faster, 63 % 10-13 %, 77 % the
# same, 86 % 2-15 % slower (a fixed share, not calibrated: measuring it would need tables of several shares).
USED_ROWS_MAX = 0.7


def used_rows() -> str:
    """``AMSIM_CPU_USED_ROWS``: "on" (expanded float tables, half-width or plain, hold only the rows the swept
    operand uses, wherever they are built: tables of a multiple of 64 rows, not packed), "off" (all rows), or
    "auto" (unset: large tables where few rows are used, see use_used_rows). Speed only, never a result.

    Raises:
        ValueError: the variable holds something else.
    """
    return _on_off_auto(ENV_USED_ROWS, "used-rows", "build only the table rows the swept operand uses",
                        "build every row")


def used_rows_fraction(n_l: int, rows: int) -> float:
    """The expected share of an ``n_l``-row table's rows that ``rows`` swept rows use at one k, were their table
    rows (mantissas) uniform: 1 - (1 - 1/n_l)**rows. Real operands' mantissas cluster, so they use fewer."""
    return -math.expm1(rows * math.log1p(-1.0 / n_l)) if n_l > 1 else 1.0


def use_used_rows(n_l: int, rows: int) -> bool:
    """Whether a float expansion with ``n_l``-row tables sweeping ``rows`` rows builds only the rows used:
    forced, or (auto) for large tables of a multiple of 64 rows where the expected share used is at most
    USED_ROWS_MAX."""
    mode = used_rows()
    if n_l % 64:
        return False
    if mode != "auto":
        return mode == "on"
    return n_l > LARGE_TABLE_ROWS and used_rows_fraction(n_l, rows) <= USED_ROWS_MAX


def _kernel_source_digest() -> str:
    h = hashlib.sha256()
    for f in (_kernels.__file__, _simd.__file__, _buffers.__file__, __file__):
        h.update(Path(f).read_bytes())
    return h.hexdigest()[:16]


def cache_key(width: int | str) -> str:
    """What the measured costs stand for: the CPU (LLVM's name and features), the width (or ``"8-16"``: the
    race between the two, see _race), Numba, the kernels."""
    feats = ",".join(sorted(_host_features()))
    return "|".join([cpu_name(), hashlib.sha256(feats.encode()).hexdigest()[:12], f"w{width}",
                     f"numba-{numba.__version__}", f"src-{_kernel_source_digest()}",
                     f"threads-{numba.get_num_threads()}"])


def cache_path() -> Path:
    """Beside Numba's cache of these kernels: NUMBA_CACHE_DIR if set, else the kernels' ``__pycache__``."""
    root = numba.core.config.CACHE_DIR
    if root:
        return Path(root) / CACHE_NAME
    return Path(_kernels.__file__).parent / "__pycache__" / CACHE_NAME


def _read_cache(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return {}
    return data if isinstance(data, dict) and len(data) < 1000 else {}


_lock = threading.Lock()
_memo: dict[tuple, Costs] = {}


def _measured(width: int) -> Costs:
    """Costs at ``width`` from memory, the disk cache or a new calibration (which rewrites the file).

    A missing, unreadable or malformed cache file, or entry, means a new calibration; a cache directory that
    cannot be written, or a calibration that other work kept off its core (``contended``), means the
    measurement is kept for this process only.
    """
    memo_key = (width, numba.get_num_threads())
    got = _memo.get(memo_key)
    if got is not None:
        return got
    with _lock:
        got = _memo.get(memo_key)
        if got is not None:
            return got
        key = cache_key(width)
        path = cache_path()
        data = _read_cache(path)
        got = Costs.from_dict(data.get(key))
        if got is None or got.width != width:
            _busy[:] = [0.0, 0.0]
            got = calibrate(width)
            _store(path, key, asdict(got))
        _memo[memo_key] = got
        return got


def _race_entry(d) -> int | None:
    """The width a cache entry of the race names, or None when it is not a well-formed one."""
    ok = isinstance(d, dict) and set(d) == {"width"} and type(d["width"]) is int and d["width"] in (8, 16)
    return d["width"] if ok else None


def _store(path: Path, key: str, entry: dict) -> None:
    """Add ``entry`` to the cache file (dropping malformed entries), unless the measurement was contended."""
    data = {k: v for k, v in _read_cache(path).items()
            if Costs.from_dict(v) is not None or _race_entry(v) is not None}
    data[key] = entry
    try:
        if not contended():  # (skewed costs, cached, would pick slow kernels for the file's lifetime)
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, json.dumps(data, indent=1, sort_keys=True))
    except Exception:  # noqa: BLE001 - a read-only install: measure again next process
        pass


def _race(c8: Costs, c16: Costs) -> int:
    """The faster vector width, from the two sweeps timed in the same interleaved rounds (1024 swept rows, a
    128-row table, plain, packed and half-width, each in its width's measured block size; the least time per
    width wins); cached like the costs. Two calibrations, taken at different moments, disagreed on this
    machine (Zen 4): one chose 8 lanes and ran 1024^3 mbm7 at 3.25x NumPy, where 16 ran 2.5x."""
    key = cache_key("8-16")
    path = cache_path()
    got = _race_entry(_read_cache(path).get(key))
    if got is not None:
        return got
    _busy[:] = [0.0, 0.0]
    rng = np.random.default_rng(1)
    per = _best_each({(c.width, f): _expansion_case(rng, 1024, 128, 128, 32, getattr(c, tb), c.width, **kw)
                      for c in (c8, c16) for f, (tb, kw) in _FORMS.items()}, 9)
    got = min((8, 16), key=lambda w: min(per[w, f] for f in _FORMS))
    _store(path, key, {"width": got})
    return got


_chosen: dict[tuple, Costs] = {}


def costs() -> Costs:
    """This machine's costs at the vector width in use: forced by ``AMSIM_CPU_VECTOR_WIDTH``, else the faster
    sweep of those the CPU has (``DEFAULT_COSTS`` at the host width when ``AMSIM_CPU_CALIBRATION=off``)."""
    env = (os.environ.get(ENV_WIDTH), os.environ.get(ENV_CALIBRATION), numba.get_num_threads())
    got = _chosen.get(env)
    if got is None:
        got = _chosen[env] = _choose()
    return got


def _choose() -> Costs:
    forced = forced_width()
    if os.environ.get(ENV_CALIBRATION, "").strip().lower() in ("off", "0", "no", "false"):
        return replace(DEFAULT_COSTS, width=forced or host_width())
    if forced is not None:
        return _measured(forced)
    if host_width() != 16:
        return _measured(8)
    c8, c16 = _measured(8), _measured(16)
    with _lock:
        return c16 if _race(c8, c16) == 16 else c8
