"""The floating-point control state amsim computes under: IEEE's default, whatever the calling thread's.

The control register (MXCSR on x86-64, FPCR on AArch64) is per thread, and threads of other libraries do not
always run with the default: XLA's callback threads set flush-to-zero and denormals-are-zero, under which a
subnormal partial sum becomes 0 and the result differs from the golden model. A new thread inherits the state of
the thread that created it, so even Numba's worker threads may have started with it.

So every kernel work item calls :func:`enter` (round to nearest, subnormals kept, every exception masked) and
:func:`leave` with what it returned; :func:`default_fp` does the same around Python code (the golden model, the
NumPy parts of ``amsim.matmul``). The caller's state, sticky flags included, is restored afterwards.
On other architectures the state is not touched (docs/semantics.md says so).
"""

from __future__ import annotations

import contextlib
import functools
import platform

import numba
from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic

__all__ = ["enter", "leave", "default_fp", "under_default_fp", "get_state", "set_state", "MANAGED"]

_ARCH = platform.machine().lower()
_X86 = _ARCH in ("x86_64", "amd64")
_ARM = _ARCH in ("aarch64", "arm64")
MANAGED = _X86 or _ARM  # whether amsim controls the state on this machine
# x86 MXCSR: all six exceptions masked, round to nearest, FTZ and DAZ off. AArch64 FPCR: 0 (the same).
DEFAULT = 0x1F80 if _X86 else 0
FTZ_DAZ = 0x8040  # x86 MXCSR's flush-to-zero and denormals-are-zero bits (for tests)

_I32, _I64 = ir.IntType(32), ir.IntType(64)


def _mxcsr_call(builder, name, slot):
    fnty = ir.FunctionType(ir.VoidType(), [cgutils.voidptr_t])
    fn = cgutils.get_or_insert_function(builder.module, fnty, name)
    builder.call(fn, [builder.bitcast(slot, cgutils.voidptr_t)])


@intrinsic
def _get(typingctx):
    def codegen(context, builder, signature, args):
        if _X86:
            slot = cgutils.alloca_once(builder, _I32)
            _mxcsr_call(builder, "llvm.x86.sse.stmxcsr", slot)
            return builder.zext(builder.load(slot), _I64)
        if _ARM:
            fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_I64, []), "llvm.aarch64.get.fpcr")
            return builder.call(fn, [])
        return ir.Constant(_I64, 0)

    return types.uint64(), codegen


@intrinsic
def _set(typingctx, value):
    if not isinstance(value, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        v = context.cast(builder, args[0], signature.args[0], types.uint64)
        if _X86:
            slot = cgutils.alloca_once(builder, _I32)
            builder.store(builder.trunc(v, _I32), slot)
            _mxcsr_call(builder, "llvm.x86.sse.ldmxcsr", slot)
        elif _ARM:
            fnty = ir.FunctionType(ir.VoidType(), [_I64])
            builder.call(cgutils.get_or_insert_function(builder.module, fnty, "llvm.aarch64.set.fpcr"), [v])
        return context.get_dummy_value()

    return types.void(value), codegen


@numba.njit(inline="always")
def enter():
    """Switch this thread to the default state; returns the previous one, for :func:`leave`."""
    old = _get()
    _set(DEFAULT)
    return old


@numba.njit(inline="always")
def leave(old):
    _set(old)


@numba.njit(cache=True)
def get_state():
    """This thread's control register (MXCSR or FPCR; 0 where amsim does not manage it)."""
    return _get()


@numba.njit(cache=True)
def set_state(value):
    """Set this thread's control register (what :func:`get_state` returned)."""
    _set(value)


@contextlib.contextmanager
def default_fp():
    """Run the block under the default state and restore the caller's afterwards."""
    if not MANAGED:
        yield
        return
    old = get_state()
    set_state(DEFAULT)
    try:
        yield
    finally:
        set_state(old)


def under_default_fp(fn):
    """Decorator: ``fn`` runs under :func:`default_fp`."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with default_fp():
            return fn(*args, **kwargs)

    return wrapper
