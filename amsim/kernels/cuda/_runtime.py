"""Running plans on a GPU with CuPy: tables on the device, the kernel module cache, launches, and recorded plans
that later calls replay without planning."""

from __future__ import annotations

import collections
import dataclasses
import threading
import weakref

import cupy
import numpy as np

from . import _source
from ._plan import _ceil, float_host_tables

__all__ = ["device_tables", "device_table_t", "device_limits", "run", "run_planned", "precompile", "clear_plan_cache"]


_DEVICE_TABLES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_DEVICE_TABLES_LOCK = threading.Lock()


def device_tables(table):
    """A table on the current CUDA device, cached per table and device: (lut, lut_t, ranges, lut_p, lut_h) for float
    tables (see :func:`float_host_tables`); the table itself (int32 for integer multipliers, float32 for
    full-operand tables) otherwise."""
    dev = cupy.cuda.Device().id
    with _DEVICE_TABLES_LOCK:
        per_dev = _DEVICE_TABLES.setdefault(table, {})
        if dev not in per_dev:
            if table.kind == "float":
                lut, lut_t, ranges, lut_p, lut_h = float_host_tables(table.values)
                per_dev[dev] = (cupy.asarray(lut), cupy.asarray(lut_t), ranges,
                                None if lut_p is None else cupy.asarray(lut_p),
                                None if lut_h is None else cupy.asarray(lut_h))
            else:
                per_dev[dev] = cupy.asarray(np.ascontiguousarray(table.values))
        return per_dev[dev]


def device_table_t(table):
    """An integer or full-operand table transposed ([ib, ia], contiguous) on the current device, as the lutw
    kernel streams it; cached like :func:`device_tables`."""
    lut = device_tables(table)
    dev = cupy.cuda.Device().id
    with _DEVICE_TABLES_LOCK:
        per_dev = _DEVICE_TABLES[table]
        if (dev, "t") not in per_dev:
            per_dev[(dev, "t")] = cupy.ascontiguousarray(lut.T)
        return per_dev[(dev, "t")]


# ---------------------------------------------------------------------------------------------------------
# running plans on the GPU
# ---------------------------------------------------------------------------------------------------------
_FUNCS: dict = {}
_LOCK = threading.Lock()


def _module(kernel: str):
    # one module per instantiation: only what is launched gets compiled (the expand kernels take seconds each)
    return cupy.RawModule(code=_source.kernel_source(), options=_source.compile_options(), name_expressions=[kernel])


def _function(kernel: str, shared: int):
    dev = cupy.cuda.Device().id
    with _LOCK:
        fn = _FUNCS.get((dev, kernel))
        if fn is None:
            fn = _module(kernel).get_function(kernel)
            _FUNCS[(dev, kernel)] = fn
        if shared > 48 * 1024 and fn.max_dynamic_shared_size_bytes < shared:
            fn.max_dynamic_shared_size_bytes = shared
    return fn


def _precompile_chunk(names):
    for name in names:
        _module(name).compile()
    return len(names)


def precompile(names=None, workers: int = 1) -> int:
    """Compile kernels into CuPy's on-disk cache ahead of use (e.g. on a fresh GPU machine), ``workers``
    processes in parallel. Needs a GPU. Returns the number of kernels compiled."""
    names = list(_source.all_kernel_names() if names is None else names)
    if workers <= 1:
        return _precompile_chunk(names)
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    chunks = [names[i::workers] for i in range(workers)]  # round robin spreads the slow expand kernels
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as ex:
        return sum(ex.map(_precompile_chunk, chunks))


def run(launches) -> None:
    """Launch a plan on the current stream, in order."""
    for la in launches:
        _function(la.kernel, la.shared)(la.grid, la.block, la.args, shared_mem=la.shared)


# A training step calls the same few GEMMs again and again, and planning one (shapes, strides, kernel choice,
# scratch arrays) costs more host time than launching it. So the first call with a given signature records its
# plan as a replay: arrays become (slot, byte offset) references to the call's operands or to one scratch
# buffer, and later calls only allocate that buffer, clear its zeroed part and launch.
_REPLAY_CACHE_SIZE = 512
_REPLAYS: collections.OrderedDict = collections.OrderedDict()
_REPLAYS_LOCK = threading.Lock()
_SCRATCH_ALIGN = 256  # what CuPy's allocator gives each array (the kernels' vector loads need 16)


class _Recorder:
    """The ``xp`` of a recorded plan: allocates through CuPy and notes each scratch array (and whether it must
    start zeroed); any other use of the module makes the plan unfit for replay."""

    def __init__(self):
        self.scratch = []
        self.replayable = True

    def zeros(self, shape, dtype):
        return self._note(cupy.zeros(shape, dtype), True)

    def empty(self, shape, dtype):
        return self._note(cupy.empty(shape, dtype), False)

    def _note(self, x, zeroed):
        self.scratch.append((x, zeroed))
        return x

    def __getattr__(self, name):
        self.replayable = False  # e.g. a copy of an operand with unusual strides: work the replay would skip
        return getattr(cupy, name)


@dataclasses.dataclass(frozen=True)
class _Replay:
    # per launch: (function, grid, block, shared, args, refs); each ref (index, slot, offset) makes args[index] the
    # pointer ``offset`` bytes from the data pointer of operand ``slot`` (the scratch buffer is the slot after them)
    launches: tuple
    scratch_bytes: int
    zeroed_bytes: int  # the scratch buffer's first bytes, cleared before the launches


def _extent(x):
    """Byte range [lo, hi) that an array view can touch, relative to its data pointer."""
    if x.size == 0:
        return 0, 0
    lo = sum((n - 1) * st for n, st in zip(x.shape, x.strides, strict=True) if st < 0)
    hi = sum((n - 1) * st for n, st in zip(x.shape, x.strides, strict=True) if st > 0)
    return lo, hi + x.dtype.itemsize


def _as_replay(launches, operands, rec, persistent):
    """The replay of a plan just run on ``operands``, or None when it cannot be replayed (work outside the
    launches, operands that overlap, or an array that is neither an operand, a scratch array nor ``persistent``)."""
    if not rec.replayable:
        return None
    regions = []  # (lo, hi, slot, offset of lo from the slot's data pointer)
    for slot, x in enumerate(operands):
        lo, hi = _extent(x)
        regions.append((x.data.ptr + lo, x.data.ptr + hi, slot, lo))
    spans = sorted(r[:2] for r in regions if r[1] > r[0])
    if any(b[0] < a[1] for a, b in zip(spans, spans[1:], strict=False)):
        return None  # which operand a view came from would be ambiguous
    order = [x for x in rec.scratch if x[1]] + [x for x in rec.scratch if not x[1]]  # zeroed ones first
    nbytes = zeroed = 0
    for x, is_zeroed in order:
        lo, hi = _extent(x)
        regions.append((x.data.ptr + lo, x.data.ptr + hi, len(operands), nbytes))
        nbytes = _ceil(nbytes + hi - lo, _SCRATCH_ALIGN) * _SCRATCH_ALIGN
        zeroed = nbytes if is_zeroed else zeroed
    keep = {id(t) for t in persistent}
    out = []
    for la in launches:
        args, refs = list(la.args), []
        for i, a in enumerate(args):
            if isinstance(a, cupy.ndarray) and id(a) not in keep:
                ptr = a.data.ptr
                hit = [r for r in regions if r[0] <= ptr < r[1] or ptr == r[0]]
                if not hit:
                    return None
                lo, _, slot, base = hit[0]
                refs.append((i, slot, base + ptr - lo))
                args[i] = None  # filled in by each replay
        out.append((_function(la.kernel, la.shared), la.grid, la.block, la.shared, tuple(args), tuple(refs)))
    return _Replay(tuple(out), nbytes, zeroed)


def _replay(rp: _Replay, operands) -> None:
    ptrs = [x.data.ptr for x in operands]
    if rp.scratch_bytes:
        buf = cupy.empty(rp.scratch_bytes, np.uint8)  # freed on return: CuPy reuses it only for later work
        ptrs.append(buf.data.ptr)                     # on this stream
        if rp.zeroed_bytes:
            cupy.cuda.runtime.memsetAsync(buf.data.ptr, 0, rp.zeroed_bytes, cupy.cuda.get_current_stream().ptr)
    for fn, grid, block, shared, args, refs in rp.launches:
        args = list(args)
        for i, slot, offset in refs:
            args[i] = np.uint64(ptrs[slot] + offset)
        fn(grid, block, tuple(args), shared_mem=shared)


def clear_plan_cache() -> None:
    """Forget every recorded plan (benchmarks time planning with it; nothing else needs it)."""
    with _REPLAYS_LOCK:
        _REPLAYS.clear()


def _signature(x):
    return x.shape, x.strides, x.dtype.char


def run_planned(key, make_planner, operands) -> None:
    """Run the plan ``make_planner()(*operands, xp)`` on the current stream, or replay the plan recorded for
    ``key``, which together with the operands' shapes, strides and dtypes must determine the plan. The planner's
    ``persistent`` attribute lists the arrays that outlive the call (device tables) that its plans may pass."""
    key = (cupy.cuda.Device().id, key) + tuple(_signature(x) for x in operands)
    with _REPLAYS_LOCK:
        rp = _REPLAYS.get(key)
        if rp is not None:
            _REPLAYS.move_to_end(key)
    if rp is not None:
        _replay(rp, operands)
        return
    planner = make_planner()
    rec = _Recorder()
    launches = planner(*operands, rec)
    run(launches)
    rp = _as_replay(launches, operands, rec, planner.persistent)
    if rp is not None:
        with _REPLAYS_LOCK:
            _REPLAYS[key] = rp
            while len(_REPLAYS) > _REPLAY_CACHE_SIZE:
                _REPLAYS.popitem(last=False)


_PROPS: dict = {}


def device_limits():
    """(SM count, opt-in shared memory per block) of the current device."""
    dev = cupy.cuda.Device().id
    if dev not in _PROPS:
        props = cupy.cuda.runtime.getDeviceProperties(dev)
        _PROPS[dev] = (int(props["multiProcessorCount"]), int(props.get("sharedMemPerBlockOptin", 48 * 1024)))
    return _PROPS[dev]
