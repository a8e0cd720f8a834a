"""An 8-lane vector type for Numba, just enough to write register-blocked kernels, and float32 bit casts.

No fast-math flags anywhere: LLVM keeps fmul and fadd separate (no FMA contraction), each rounded as IEEE says.
"""

from __future__ import annotations

from llvmlite import ir
from numba.core import types
from numba.core.datamodel import models, register_default
from numba.extending import intrinsic

_W = 8


class Vec8(types.Type):
    def __init__(self, dtype):
        self.dtype = dtype
        super().__init__(name=f"Vec8({dtype})")


@register_default(Vec8)
class _Vec8Model(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, ir.VectorType(dmm.lookup(fe_type.dtype).get_value_type(), _W))


def _vty(context, dtype):
    return ir.VectorType(context.get_value_type(dtype), _W)


def _vptr(context, builder, aty, aval, off, dtype):
    ary = context.make_array(aty)(context, builder, aval)
    return builder.bitcast(builder.gep(ary.data, [off]), _vty(context, dtype).as_pointer())


def _flat_ok(arr):
    return isinstance(arr, types.Array) and arr.layout == "C" and arr.dtype in (types.float32, types.int32)


@intrinsic
def vload(typingctx, arr, off):
    """Elements ``off .. off+7`` of a C-contiguous array in flat order. No bounds check."""
    if not (_flat_ok(arr) and isinstance(off, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        return builder.load(_vptr(context, builder, arr, args[0], args[1], arr.dtype), align=4)

    return Vec8(arr.dtype)(arr, off), codegen


@intrinsic
def vstore(typingctx, arr, off, v):
    """Store a vector to elements ``off .. off+7`` of a C-contiguous array. No bounds check."""
    if not (_flat_ok(arr) and isinstance(off, types.Integer) and isinstance(v, Vec8) and v.dtype == arr.dtype):
        return None

    def codegen(context, builder, sig, args):
        builder.store(args[2], _vptr(context, builder, arr, args[0], args[1], arr.dtype), align=4)
        return context.get_dummy_value()

    return types.void(arr, off, v), codegen


@intrinsic
def vsplat(typingctx, x):
    if x not in (types.float32, types.int32):
        return None

    def codegen(context, builder, sig, args):
        v = builder.insert_element(ir.Constant(_vty(context, x), None), args[0], ir.Constant(ir.IntType(32), 0))
        return builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(ir.IntType(32), _W), [0] * _W))

    return Vec8(x)(x), codegen


def _vbinop(fop, iop):
    @intrinsic
    def op(typingctx, a, b):
        if not (isinstance(a, Vec8) and a == b):
            return None

        def codegen(context, builder, sig, args):
            return getattr(builder, fop if a.dtype == types.float32 else iop)(args[0], args[1])

        return a(a, b), codegen

    return op


# no fast-math flags on these: LLVM keeps fmul and fadd separate (no FMA), each rounded as IEEE says
vadd = _vbinop("fadd", "add")
vmul = _vbinop("fmul", "mul")


def _shuffle(builder, a, b, mask):
    return builder.shuffle_vector(a, b, ir.Constant(ir.VectorType(ir.IntType(32), _W), mask))


@intrinsic
def vtranspose_store(typingctx, arr, off, stride, scale, v0, v1, v2, v3, v4, v5, v6, v7):
    """Store the 8x8 transpose of rows v0..v7, times ``scale`` per output row (None: no scaling).

    Element p of v_q (times scale[q]) goes to flat element ``off + p * stride + q`` of ``arr``.
    """
    vs = (v0, v1, v2, v3, v4, v5, v6, v7)
    if not (_flat_ok(arr) and all(isinstance(v, Vec8) and v.dtype == arr.dtype for v in vs)):
        return None
    has_scale = isinstance(scale, Vec8)
    if has_scale and scale.dtype != arr.dtype:
        return None

    def codegen(context, builder, sig, args):
        aval, o, s = args[0], args[1], args[2]
        r = list(args[4:])
        t = []  # interleave pairs of rows within 128-bit halves
        for q in range(0, 8, 2):
            t.append(_shuffle(builder, r[q], r[q + 1], [0, 8, 1, 9, 4, 12, 5, 13]))
            t.append(_shuffle(builder, r[q], r[q + 1], [2, 10, 3, 11, 6, 14, 7, 15]))
        u = [None] * 8  # then pairs of pairs
        for g in range(2):
            lo01, hi01, lo23, hi23 = t[4 * g : 4 * g + 4]
            u[4 * g + 0] = _shuffle(builder, lo01, lo23, [0, 1, 8, 9, 4, 5, 12, 13])
            u[4 * g + 1] = _shuffle(builder, lo01, lo23, [2, 3, 10, 11, 6, 7, 14, 15])
            u[4 * g + 2] = _shuffle(builder, hi01, hi23, [0, 1, 8, 9, 4, 5, 12, 13])
            u[4 * g + 3] = _shuffle(builder, hi01, hi23, [2, 3, 10, 11, 6, 7, 14, 15])
        outs = [_shuffle(builder, u[p], u[4 + p], [0, 1, 2, 3, 8, 9, 10, 11]) for p in range(4)]  # then halves
        outs += [_shuffle(builder, u[p], u[4 + p], [4, 5, 6, 7, 12, 13, 14, 15]) for p in range(4)]
        if has_scale:
            mul = builder.fmul if arr.dtype == types.float32 else builder.mul
            outs = [mul(x, args[3]) for x in outs]
        for p in range(8):
            po = builder.add(o, builder.mul(s, ir.Constant(s.type, p)))
            builder.store(outs[p], _vptr(context, builder, arr, aval, po, arr.dtype), align=4)
        return context.get_dummy_value()

    return types.void(arr, off, stride, scale, *vs), codegen


@intrinsic
def bits_to_f32(typingctx, u):
    """Reinterpret the low 32 bits of an integer as a float32 (a register bitcast, no memory)."""
    if not isinstance(u, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        v = args[0]
        if u.bitwidth > 32:
            v = builder.trunc(v, ir.IntType(32))
        elif u.bitwidth < 32:
            v = builder.zext(v, ir.IntType(32))
        return builder.bitcast(v, ir.FloatType())

    return types.float32(u), codegen


@intrinsic
def f32_to_bits(typingctx, x):
    """Reinterpret a float32 as uint32. (Array .view() inside parallel loops is avoided: parfors can mis-alias it.)"""
    if x != types.float32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return types.uint32(x), codegen
