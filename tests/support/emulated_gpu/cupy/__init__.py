"""An emulated CuPy for running amsim's GPU code path on a machine without a GPU (tests only).

Put ``tests/support/emulated_gpu`` first on ``sys.path`` (tests/test_gpu_emulated.py does, in a subprocess) and
``import cupy`` gives this module instead of the real one. Arrays are NumPy arrays of a subclass named
``cupy.ndarray``, so amsim dispatches them to its CuPy backend; ``RawModule`` kernels run through the host
emulation of ``amsim_gemm.cu`` (tests/support/emulated_cuda.py). What it checks: the Python side of the GPU path
(dispatch, launch plans, arguments, operand conversion, output handling), the launch limits a real device
enforces, and the kernels themselves, bit for bit, under the emulation. What it does not: CuPy's own behaviour
(only the names used are checked against the real CuPy, see ``AMSIM_EMULATED_GPU_LOG``), warps, speed, the
JAX bridge's device buffers.

Environment:
    AMSIM_EMULATED_GPU_LIB: the compiled emulation library (tests.support.emulated_cuda.cached_build); built into
        ``~/.cache/amsim/emulated_gpu`` when unset.
    AMSIM_EMULATED_GPU_LOG: a file to which every ``cupy.*`` / ``cupy.ndarray.*`` name used is appended at exit.
"""

from __future__ import annotations

import atexit
import ctypes
import os
import sys
import time
import types

import numpy as _np

__version__ = "0.0.0+emulated"
_USED: set = set()
_SYNCS = [0]  # reads of device data by the host (a stream synchronisation on a real GPU)


def _synchronizations() -> int:
    """How many times the host has read device data so far (``int(x)``, ``bool(x)``, ``x.get()``, ...)."""
    return _SYNCS[0]
_MAX_SHARED_OPTIN = 227 * 1024  # an H100/H200's opt-in shared memory per block
_NUM_SMS = 132


def _plain(x):
    """The NumPy array behind a device array, without going through its logging ``__getattribute__``."""
    return _np.ndarray.view(x, _np.ndarray)


def _is_host(x):
    return isinstance(x, _np.ndarray) and not isinstance(x, ndarray)


class ndarray(_np.ndarray):  # CuPy's name
    """A "device" array: NumPy memory, a distinct type; mixing it with NumPy arrays raises as in CuPy."""

    def __new__(cls, shape, dtype=float, memptr=None, strides=None, order="C"):
        if memptr is None:
            return _np.empty(shape, dtype, order=order).view(cls)
        size = memptr.mem.size - (memptr.ptr - memptr.mem.ptr)
        buf = (ctypes.c_char * size).from_address(memptr.ptr)
        return _np.ndarray.__new__(cls, shape, dtype, buffer=buf, strides=strides, order=order)

    @property
    def __cuda_array_interface__(self):
        x = _plain(self)
        return {"shape": x.shape, "typestr": x.dtype.str, "data": (x.ctypes.data, False), "version": 3,
                "strides": None if x.flags.c_contiguous else x.strides}

    @property
    def data(self):  # CuPy's MemoryPointer: .ptr is the address of the first element
        return types.SimpleNamespace(ptr=_plain(self).ctypes.data)

    @property
    def device(self):  # NumPy's own says "cpu"
        return _Device(0)

    def __getattribute__(self, name):
        if not name.startswith("_"):
            _USED.add(f"ndarray.{name}")
        return super().__getattribute__(name)

    def __array_ufunc__(self, ufunc, method, *inputs, out=None, **kwargs):
        args = list(inputs) + list(out or ())
        if any(_is_host(x) and x.ndim > 0 for x in args):
            raise TypeError(f"Unsupported type {_np.ndarray} (emulated CuPy: NumPy and CuPy arrays do not mix)")
        inputs = tuple(_plain(x) if isinstance(x, ndarray) else x for x in inputs)
        if out is not None:
            kwargs["out"] = tuple(_plain(x) for x in out)
        res = getattr(ufunc, method)(*inputs, **kwargs)
        if out is not None:
            return out[0] if len(out) == 1 else out
        if method == "reduce" and not isinstance(res, _np.ndarray):
            res = _np.asarray(res)  # CuPy's reductions give 0-d device arrays, not host scalars
        return _wrap(res)

    def _to_host(self):
        _SYNCS[0] += 1
        return _plain(self)

    def __int__(self):
        return int(self._to_host())

    def __float__(self):
        return float(self._to_host())

    def __bool__(self):
        return bool(self._to_host())

    def __index__(self):
        return self._to_host().__index__()

    def item(self, *args):
        return self._to_host().item(*args)

    def tolist(self):
        return self._to_host().tolist()

    def get(self, stream=None):
        return _np.array(self._to_host())

    def set(self, arr, stream=None):
        self[...] = arr


def _wrap(res):
    if isinstance(res, tuple):
        return tuple(_wrap(r) for r in res)
    if isinstance(res, _np.ndarray) and not isinstance(res, ndarray):
        return res.view(ndarray)
    return res


def asarray(a, dtype=None, order=None):
    if isinstance(a, ndarray):
        return a if dtype is None or a.dtype == dtype else a.astype(dtype)
    return _np.array(a, dtype=dtype, order=order or "K").view(ndarray)  # a host-to-device copy


def array(a, dtype=None, copy=True, order="K", ndmin=0):
    return _np.array(_np.asarray(a), dtype=dtype, copy=copy, order=order, ndmin=ndmin).view(ndarray)


def empty(shape, dtype=float, order="C"):
    # fresh device memory holds whatever was there before: poisoned here (all bits set, NaN for floats), so
    # code that reads memory it never wrote fails the tests
    x = _np.empty(shape, dtype, order=order)
    if x.size:
        x.reshape(-1).view(_np.uint8).fill(0xFF)  # (a 0-d array too)
    return x.view(ndarray)


def asnumpy(a, stream=None, order="C"):
    if isinstance(a, ndarray):
        return _np.array(a._to_host(), order=order)
    return _np.asarray(a, order=order)


def __getattr__(name):  # everything else: NumPy's function, its result on the "device"
    attr = getattr(_np, name)
    if isinstance(attr, types.FunctionType) or type(attr).__name__ in ("_ArrayFunctionDispatcher",
                                                                        "builtin_function_or_method"):
        def function(*args, **kwargs):
            if any(_is_host(x) and x.ndim > 0 for x in args) and name not in ("asarray", "array"):
                raise TypeError(f"cupy.{name}: Unsupported type {_np.ndarray} (emulated CuPy)")
            return _wrap(attr(*args, **kwargs))

        function.__name__ = name
        return function
    return attr


class _LoggedModule(types.ModuleType):
    """Records every public name read from outside (``cuda.Event``, ``asarray``, ...)."""

    def __getattribute__(self, name):
        if not name.startswith("_"):
            prefix = super().__getattribute__("__name__").partition(".")[2]
            _USED.add(f"{prefix}.{name}" if prefix else name)
        return super().__getattribute__(name)


sys.modules[__name__].__class__ = _LoggedModule


# ---- kernels ------------------------------------------------------------------------------------------------
_LIB = None


def _library():
    global _LIB
    if _LIB is None:
        from tests.support import emulated_cuda

        path = os.environ.get("AMSIM_EMULATED_GPU_LIB") or emulated_cuda.cached_build(
            os.path.expanduser("~/.cache/amsim/emulated_gpu"))
        _LIB = emulated_cuda.EmuLibrary(path)
    return _LIB


class RawModule:
    def __init__(self, code=None, path=None, options=(), backend="nvrtc", translate_cucomplex=False,
                 *, enable_cooperative_groups=False, name_expressions=None, jitify=False):
        if code is None:
            raise ValueError("emulated CuPy: RawModule needs code")
        self.name_expressions = tuple(name_expressions or ())

    def compile(self, log_stream=None):
        _library()

    def get_function(self, name):
        if name not in self.name_expressions:
            raise KeyError(f"{name} is not among the module's name_expressions {self.name_expressions}")
        return _Function(name)


class _Function:
    def __init__(self, name):
        self.name = name
        self.max_dynamic_shared_size_bytes = 48 * 1024

    def __call__(self, grid, block, args, *, shared_mem=0, enable_cooperative_groups=False):
        grid, block = _dims(grid, "grid"), _dims(block, "block")
        if grid[0] > 2**31 - 1 or grid[1] > 65535 or grid[2] > 65535 or min(grid) < 1:
            raise ValueError(f"{self.name}: invalid grid {grid} (CUDA: x < 2**31, y and z <= 65535, all >= 1)")
        if block[0] * block[1] * block[2] > 1024 or min(block) < 1:
            raise ValueError(f"{self.name}: invalid block {block} (at most 1024 threads)")
        if shared_mem > self.max_dynamic_shared_size_bytes or shared_mem > _MAX_SHARED_OPTIN:
            raise ValueError(f"{self.name}: {shared_mem} B of dynamic shared memory, but the function allows "
                             f"{self.max_dynamic_shared_size_bytes} B (device opt-in limit {_MAX_SHARED_OPTIN} B)")
        for i, a in enumerate(args):
            if _is_host(a):
                raise TypeError(f"{self.name}: argument {i} is a NumPy array; kernels take device arrays")
        _library().launch(self.name, grid, block, shared_mem,
                          [_plain(a) if isinstance(a, ndarray) else a for a in args])


def _dims(d, what):
    d = tuple(int(v) for v in (d if isinstance(d, tuple) else (d,)))
    if not 1 <= len(d) <= 3:
        raise ValueError(f"{what} must have 1 to 3 dimensions")
    return d + (1,) * (3 - len(d))


# ---- cupy.cuda and cupy.lib ------------------------------------------------------------------------------------
def _submodule(name, **attrs):
    mod = _LoggedModule(f"{__name__}.{name}")
    mod.__dict__.update(attrs)
    sys.modules[mod.__name__] = mod
    return mod


class _Synchronous:
    """Work is done when a call returns: synchronising is a no-op; usable as a context manager."""

    def synchronize(self):
        pass

    def use(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class _Device(_Synchronous):
    compute_capability = "90"

    def __init__(self, device=None):
        self.id = 0 if device is None else int(device)
        if self.id != 0:
            raise RuntimeError("emulated CuPy has one device, 0")


class _Stream(_Synchronous):
    def __init__(self, ptr=0, *args, **kwargs):
        self.ptr = ptr


class _Event:
    def __init__(self, *args, **kwargs):
        self.t = None

    def record(self, stream=None):
        self.t = time.perf_counter()

    def synchronize(self):
        pass


class _UnownedMemory:
    def __init__(self, ptr, size, owner, device_id=-1):
        if ptr == 0 and device_id < 0:  # CUDA cannot tell the device of a null pointer
            raise RuntimeError("cudaErrorInvalidValue: invalid argument (emulated pointer-attribute query)")
        self.ptr, self.size, self.owner = ptr, size, owner


class _MemoryPointer:
    def __init__(self, mem, offset):
        self.mem, self.ptr = mem, mem.ptr + offset


class _OutOfMemoryError(MemoryError):
    def __init__(self, size, total, limit=0):
        super().__init__(f"Out of memory allocating {size:,} bytes (allocated so far: {total:,} bytes).")


def _elapsed_ms(start, stop):
    return (stop.t - start.t) * 1e3


def _properties(device):
    return {"name": b"Emulated GPU (amsim tests)", "major": 9, "minor": 0, "multiProcessorCount": _NUM_SMS,
            "sharedMemPerBlockOptin": _MAX_SHARED_OPTIN, "sharedMemPerBlock": 48 * 1024,
            "totalGlobalMem": 80 * 2**30}


_CLOCK_ATTR = 13  # cudaDevAttrClockRate


def _attribute(attr, device):
    if attr != _CLOCK_ATTR:
        raise NotImplementedError(f"emulated CuPy: device attribute {attr}")
    return 1980000  # kHz, an H100's boost clock


def _memset_async(ptr, value, size, stream):
    ctypes.memset(ptr, value, size)


_runtime = _submodule("cuda.runtime", getDeviceCount=lambda: 1, getDeviceProperties=_properties,
                      runtimeGetVersion=lambda: 13000, driverGetVersion=lambda: 13000, memsetAsync=_memset_async,
                      deviceGetAttribute=_attribute, cudaDevAttrClockRate=_CLOCK_ATTR)
_memory = _submodule("cuda.memory", OutOfMemoryError=_OutOfMemoryError)
cuda = _submodule("cuda", memory=_memory, Device=_Device, Stream=_Stream, ExternalStream=_Stream, Event=_Event,
                  UnownedMemory=_UnownedMemory, MemoryPointer=_MemoryPointer,
                  get_elapsed_time=_elapsed_ms, get_current_stream=lambda device=None: _Stream(), runtime=_runtime)
lib = _submodule("lib", stride_tricks=_submodule(
    "lib.stride_tricks",
    as_strided=lambda x, shape=None, strides=None: _wrap(_np.lib.stride_tricks.as_strided(x, shape, strides))))


@atexit.register
def _write_log():
    path = os.environ.get("AMSIM_EMULATED_GPU_LOG")
    if path:
        with open(path, "a") as fh:
            fh.write("".join(f"{name}\n" for name in sorted(_USED)))
