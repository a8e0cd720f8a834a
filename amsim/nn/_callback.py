"""The one place where JAX calls amsim kernels: a batched matmul through ``jax.experimental.buffer_callback``.

The callback gets XLA's own buffers: on the CPU they are viewed as NumPy arrays (no copy) and handed to the
Numba kernels; on a GPU they are viewed as CuPy arrays and the kernels run on XLA's CUDA stream (``ctx.stream``),
so no data leaves the device. Every layer op (dot_general, conv, einsum) reduces to :func:`bmm`.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental.buffer_callback import buffer_callback

from .._errors import UnsupportedError
from .._multiplier import Multiplier


def _as_cupy(buf):
    """A CuPy view of a device buffer (``__cuda_array_interface__``), which must be dense and row-major."""
    import cupy

    iface = buf.__cuda_array_interface__
    shape, dtype = tuple(iface["shape"]), np.dtype(iface["typestr"])
    strides = iface.get("strides")
    if strides is not None:  # (plain Python arithmetic: this runs for every operand of every product)
        dense = dtype.itemsize
        for n, st in zip(shape[::-1], strides[::-1], strict=True):
            if n > 1 and st != dense:
                raise UnsupportedError(f"the JAX bridge got a device buffer of shape {shape} with strides {strides}; "
                                       "the kernels take row-major buffers (XLA's default layout).")
            dense *= n
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes == 0:  # nothing to read or write, and a null pointer has no device to ask CUDA about
        return cupy.empty(shape, dtype)
    mem = cupy.cuda.UnownedMemory(iface["data"][0], nbytes, buf)
    return cupy.ndarray(shape, dtype, cupy.cuda.MemoryPointer(mem, 0))


def _cupy():
    try:
        import cupy
    except ImportError as err:
        raise ImportError("JAX handed amsim GPU buffers, and amsim runs its GPU kernels with CuPy, which is not "
                          "installed: pip install 'amsim[gpu]' (CUDA 12), or cupy-cuda13x for CUDA 13.") from err
    return cupy


def _on_gpu(buf) -> bool:
    try:  # CPU buffers raise (not AttributeError) when asked for the CUDA interface
        _ = buf.__cuda_array_interface__
    except Exception:
        return False
    return True


_OUT_OF_MEMORY = ("amsim's GPU kernels ran out of device memory for their scratch arrays ({}). JAX preallocates "
                  "75 % of the GPU's memory by default; set XLA_PYTHON_CLIENT_PREALLOCATE=false (or a smaller "
                  "XLA_PYTHON_CLIENT_MEM_FRACTION) before importing JAX, or use a smaller batch.")


@functools.cache
def _host_fn(mult: Multiplier):
    from .._ops import matmul

    def callback(ctx, out, a, b):
        if _on_gpu(out):
            cupy = _cupy()
            o, x, y = _as_cupy(out), _as_cupy(a), _as_cupy(b)
            # the buffers' device, which need not be CuPy's current one when JAX runs on several GPUs
            with cupy.cuda.Device(o.device.id), cupy.cuda.ExternalStream(ctx.stream):
                try:
                    matmul(x, y, mult, out=o)
                except cupy.cuda.memory.OutOfMemoryError as err:
                    raise MemoryError(_OUT_OF_MEMORY.format(err)) from err
        else:
            matmul(np.asarray(a), np.asarray(b), mult, out=np.asarray(out))

    return callback


def bmm(a, b, mult: Multiplier):
    """Approximate batched matmul ``(..., M, K) @ (..., K, N)`` of float32 (or, for an integer multiplier,
    int8/int16/int32) JAX arrays, computed by amsim's kernels. Works under jit, grad (as a leaf) and vmap."""
    out_dtype = jnp.int32 if mult.is_int else jnp.float32
    shape = jnp.broadcast_shapes(a.shape[:-2], b.shape[:-2]) + (a.shape[-2], b.shape[-1])
    # vmap adds leading axes (size 1 where unbatched); amsim.matmul broadcasts them like any batch axis
    f = buffer_callback(_host_fn(mult), jax.ShapeDtypeStruct(shape, out_dtype), vmap_method="expand_dims")
    return _vary_like(f(a, b), a, b)


def _vary_like(out, *inputs):
    """Under shard_map, mark the callback's result as varying over every mesh axis its inputs vary over."""
    try:
        have = jax.typeof(out).mat.varying
        want = set().union(*(jax.typeof(x).mat.varying for x in inputs))
    except AttributeError:  # a JAX without manual-axis types
        return out
    missing = tuple(sorted(a for a in want if a not in have))
    return jax.lax.pcast(out, missing, to="varying") if missing else out


@functools.cache
def _patches_fn(geometry, transposed: bool):
    from ..kernels import cpu

    def callback(ctx, out, xp):
        cpu.conv_patches(np.asarray(xp), np.asarray(out), *geometry, transposed)

    return callback


@functools.cache
def _conv_fn(mult: Multiplier, geometry):
    from .._ops import conv_patches_matmul

    def callback(ctx, out, xp, b):
        x, y, o = np.asarray(xp), np.asarray(b), np.asarray(out)
        lead = o.shape[:-3]  # vmap's axes (expand_dims: size 1 where an operand is not batched)
        x = np.broadcast_to(x, lead + x.shape[-4:]).reshape((-1,) + x.shape[-4:])
        y = np.broadcast_to(y, lead + y.shape[-3:]).reshape((-1,) + y.shape[-2:])
        conv_patches_matmul(x, geometry, y, mult, o.reshape((-1,) + o.shape[-2:]))

    return callback


def host_conv_matmul(xp, b, start, step, count, ty, tx, mult: Multiplier):
    """``P @ b`` (1, N * OH * OW, O) for the patch matrix P of a one-group 2-D convolution class (what
    host_patches and bmm compute in two steps), by amsim's CPU kernels, which read P's rows from the padded input
    xp (N, H, W, C) instead of writing P where they can. b: (1, taps * C, O). CPU buffers only."""
    rows = xp.shape[0] * count[0] * count[1]
    geometry = tuple(tuple(int(v) for v in t) for t in (start, step, count, ty, tx))
    f = buffer_callback(_conv_fn(mult, geometry), jax.ShapeDtypeStruct((1, rows, b.shape[-1]), jnp.float32),
                        vmap_method="expand_dims")
    return _vary_like(f(xp, b), xp, b)


def host_patches(xp, start, step, count, ty, tx, groups: int, transposed: bool):
    """The patch matrix of a 2-D convolution class, written by amsim's CPU kernel (see
    ``amsim/kernels/cpu/_patches.py``) from the padded input xp (N, H, W, C): (G, N * OH * OW, taps * Cg), or
    its per-group transpose. CPU buffers only: the conv op selects it for the CPU with ``lax.platform_dependent``.
    """
    n, c = xp.shape[0], xp.shape[-1]
    rows, k = n * count[0] * count[1], len(ty) * len(tx) * (c // groups)
    shape = (groups, k, rows) if transposed else (groups, rows, k)
    geometry = tuple(tuple(int(v) for v in t) for t in (start, step, count, ty, tx))
    f = buffer_callback(_patches_fn(geometry, transposed), jax.ShapeDtypeStruct(shape, jnp.float32),
                        vmap_method="expand_dims")
    return _vary_like(f(xp), xp)
