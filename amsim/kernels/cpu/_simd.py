"""8- and 16-lane vector types for Numba, just enough to write register-blocked kernels, and float32 bit casts.

``vload``/``vsplat`` make 8-lane vectors (one AVX2 register), ``vload16``/``vsplat16`` 16-lane ones (one AVX-512
register; LLVM splits them into two halves on CPUs without AVX-512, so either runs anywhere, bit-identically).
No fast-math flags anywhere: LLVM keeps fmul and fadd separate (no FMA contraction), each rounded as IEEE says;
``vfma_exact`` fuses explicitly, for the products that are exact. Int32 vectors have the bitwise ops, shifts,
compare-selects and lane reductions of the operand decoder. 16-bit words move unwidened through 16x16
transposes (the builds of 16-bit tables), and unsigned 16-bit integers widen to float32 lanes (the sweep of
half-width tables, whose entries are 16-bit integers times a power of two).
"""

from __future__ import annotations

from llvmlite import ir
from numba.core import cgutils, types
from numba.core.datamodel import models, register_default
from numba.extending import intrinsic

_W = 8  # lanes of the vectors the 8x8 transposes work on


class Vec(types.Type):
    def __init__(self, dtype, width):
        self.dtype = dtype
        self.width = width
        super().__init__(name=f"Vec{width}({dtype})")


@register_default(Vec)
class _VecModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, ir.VectorType(dmm.lookup(fe_type.dtype).get_value_type(), fe_type.width))


def _vty(context, dtype, width=_W):
    return ir.VectorType(context.get_value_type(dtype), width)


def _vptr(context, builder, aty, aval, off, dtype, width=_W):
    ary = context.make_array(aty)(context, builder, aval)
    return builder.bitcast(builder.gep(ary.data, [off]), _vty(context, dtype, width).as_pointer())


def _flat_ok(arr):
    return isinstance(arr, types.Array) and arr.layout == "C" and arr.dtype in (types.float32, types.int32)


def _is_16bit_arr(arr):
    return isinstance(arr, types.Array) and arr.layout == "C" and arr.dtype in (types.int16, types.uint16)


def _writable(arr):
    """The stores take only writable arrays: tables and inputs reach the kernels read-only (_buffers._ro)."""
    return isinstance(arr, types.Array) and arr.mutable


def _make_load(width):
    @intrinsic
    def load(typingctx, arr, off):
        if not ((_flat_ok(arr) or _is_16bit_arr(arr)) and isinstance(off, types.Integer)):
            return None

        def codegen(context, builder, sig, args):
            v = builder.load(_vptr(context, builder, arr, args[0], args[1], arr.dtype, width),
                             align=arr.dtype.bitwidth // 8)
            if arr.dtype.bitwidth == 16:  # (x86: one widening load, vpmovsxwd or vpmovzxwd)
                widen = builder.sext if arr.dtype.signed else builder.zext
                v = widen(v, ir.VectorType(ir.IntType(32), width))
            return v

        return Vec(types.int32 if arr.dtype.bitwidth == 16 else arr.dtype, width)(arr, off), codegen

    load.__doc__ = (f"Elements ``off .. off+{width - 1}`` of a C-contiguous array in flat order (int16 and uint16 "
                    "arrays: widened to int32 lanes). No bounds check.")
    return load


vload = _make_load(8)
vload16 = _make_load(16)


@intrinsic
def vstore(typingctx, arr, off, v):
    """Store a vector to elements ``off ..`` of a C-contiguous array. No bounds check."""
    if not (_flat_ok(arr) and _writable(arr) and isinstance(off, types.Integer) and isinstance(v, Vec)
            and v.dtype == arr.dtype):
        return None

    def codegen(context, builder, sig, args):
        ptr = _vptr(context, builder, arr, args[0], args[1], arr.dtype, v.width)
        builder.store(args[2], ptr, align=4)
        return context.get_dummy_value()

    return types.void(arr, off, v), codegen


def _make_splat(width):
    @intrinsic
    def splat(typingctx, x):
        if x not in (types.float32, types.int32):
            return None

        def codegen(context, builder, sig, args):
            vt = _vty(context, x, width)
            v = builder.insert_element(ir.Constant(vt, None), args[0], ir.Constant(ir.IntType(32), 0))
            return builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(ir.IntType(32), width), [0] * width))

        return Vec(x, width)(x), codegen

    splat.__doc__ = f"``x`` in all {width} lanes."
    return splat


vsplat = _make_splat(8)
vsplat16 = _make_splat(16)


@intrinsic
def vgather(typingctx, arr, base, idx, off):
    """8 lanes ``arr.flat[base + idx.flat[off + q]]``: table entries at 8 indices read from an int32 array
    (both C-contiguous). No bounds check. Scalar loads: on Zen 4 they beat the gather instruction 1.6x."""
    if not (_flat_ok(arr) and arr.dtype == types.float32 and isinstance(base, types.Integer)
            and _flat_ok(idx) and idx.dtype == types.int32 and isinstance(off, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        row = builder.gep(context.make_array(arr)(context, builder, args[0]).data, [args[1]])
        ix = builder.gep(context.make_array(idx)(context, builder, args[2]).data, [args[3]])
        v = ir.Constant(ir.VectorType(ir.FloatType(), _W), None)
        for q in range(_W):
            j = builder.load(builder.gep(ix, [ir.Constant(ir.IntType(64), q)]), align=4)
            x = builder.load(builder.gep(row, [j]), align=4)
            v = builder.insert_element(v, x, ir.Constant(ir.IntType(32), q))
        return v

    return Vec(types.float32, _W)(arr, base, idx, off), codegen


def _vbinop(fop, iop):
    @intrinsic
    def op(typingctx, a, b):
        if not (isinstance(a, Vec) and a == b):
            return None

        def codegen(context, builder, sig, args):
            return getattr(builder, fop if a.dtype == types.float32 else iop)(args[0], args[1])

        return a(a, b), codegen

    return op


# no fast-math flags on these: LLVM keeps fmul and fadd separate (no FMA), each rounded as IEEE says
vadd = _vbinop("fadd", "add")
vmul = _vbinop("fmul", "mul")


def _vintop(iop):
    @intrinsic
    def op(typingctx, a, b):
        if not (isinstance(a, Vec) and a == b and a.dtype == types.int32):
            return None

        def codegen(context, builder, sig, args):
            return getattr(builder, iop)(args[0], args[1])

        return a(a, b), codegen

    return op


# bitwise ops and shifts of int32 vectors (lshr: logical; shift counts below 32)
vand = _vintop("and_")
vor = _vintop("or_")
vshr = _vintop("lshr")
vshl = _vintop("shl")


def _vcmpsel(pred):
    @intrinsic
    def op(typingctx, a, b, x, y):
        if not (isinstance(a, Vec) and a == b and a.dtype == types.int32 and isinstance(x, Vec) and x == y
                and x.width == a.width):
            return None

        def codegen(context, builder, sig, args):
            return builder.select(builder.icmp_signed(pred, args[0], args[1]), args[2], args[3])

        return x(a, b, x, y), codegen

    return op


# per lane: x where a (pred) b else y, int32 lanes compared as signed
vsel_eq = _vcmpsel("==")
vsel_lt = _vcmpsel("<")


@intrinsic
def vbitcast(typingctx, v, dtype):
    """The lanes of ``v`` reinterpreted as ``dtype`` (float32 <-> int32, a register bitcast)."""
    if not isinstance(v, Vec) or not isinstance(dtype, (types.DType, types.NumberClass)):
        return None
    to = dtype.dtype if isinstance(dtype, types.DType) else dtype.instance_type
    if {v.dtype, to} != {types.float32, types.int32}:
        return None

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], _vty(context, to, v.width))

    return Vec(to, v.width)(v, dtype), codegen


def _vreduce(name):
    @intrinsic
    def op(typingctx, v):
        if not (isinstance(v, Vec) and v.dtype == types.int32):
            return None

        def codegen(context, builder, sig, args):
            vt = args[0].type
            fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vt.element, [vt]),
                                                f"llvm.vector.reduce.{name}.v{v.width}i32")
            return builder.call(fn, [args[0]])

        return types.int32(v), codegen

    return op


# the smallest / largest lane of an int32 vector (signed)
vmin_lanes = _vreduce("smin")
vmax_lanes = _vreduce("smax")


@intrinsic
def vlow8(typingctx, v):
    """Lanes 0-7 of a 16-lane vector, as an 8-lane one."""
    if not (isinstance(v, Vec) and v.width == 16):
        return None

    def codegen(context, builder, sig, args):
        return builder.shuffle_vector(args[0], args[0], ir.Constant(ir.VectorType(ir.IntType(32), 8), list(range(8))))

    return Vec(v.dtype, 8)(v), codegen


def _host_has_fma() -> bool:
    import llvmlite.binding as ll
    from numba.core import config

    feats = config.CPU_FEATURES or ll.get_host_cpu_features().flatten()
    return "+fma" in feats.split(",") or ll.get_process_triple().startswith(("aarch64", "arm64"))


@intrinsic
def vfma_exact(typingctx, a, b, c):
    """``a * b + c`` for float vectors whose products ``a * b`` are exact (a power-of-two scale times a value in
    the normal range, or a zero): one instruction where the CPU has FMA, else fmul then fadd. With an exact
    product the fused and the separate forms round the same sum once, so they give the same bits."""
    if not (isinstance(a, Vec) and a == b == c and a.dtype == types.float32):
        return None

    def codegen(context, builder, sig, args):
        if not _host_has_fma():
            return builder.fadd(builder.fmul(args[0], args[1]), args[2])
        vt = args[0].type
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vt, [vt, vt, vt]),
                                            f"llvm.fma.v{a.width}f32")
        return builder.call(fn, list(args))

    return a(a, b, c), codegen


def _shuffle(builder, a, b, mask):
    return builder.shuffle_vector(a, b, ir.Constant(ir.VectorType(ir.IntType(32), _W), mask))


def _transpose8_halves(builder, h):
    """The 8x8 transpose of rows r[0..7] given with their 128-bit halves exchanged between rows q and q + 4
    (h[q] = [low half of r[q], low half of r[q + 4]], h[q + 4] = the high halves, for q < 4; see vload_halves):
    two 4x4 transposes within each half, no shuffle across them."""
    outs = []
    for g in range(0, 8, 4):
        x0, x1, x2, x3 = h[g : g + 4]
        t0 = _shuffle(builder, x0, x1, [0, 8, 1, 9, 4, 12, 5, 13])
        t1 = _shuffle(builder, x0, x1, [2, 10, 3, 11, 6, 14, 7, 15])
        t2 = _shuffle(builder, x2, x3, [0, 8, 1, 9, 4, 12, 5, 13])
        t3 = _shuffle(builder, x2, x3, [2, 10, 3, 11, 6, 14, 7, 15])
        outs += [_shuffle(builder, t0, t2, [0, 1, 8, 9, 4, 5, 12, 13]),
                 _shuffle(builder, t0, t2, [2, 3, 10, 11, 6, 7, 14, 15]),
                 _shuffle(builder, t1, t3, [0, 1, 8, 9, 4, 5, 12, 13]),
                 _shuffle(builder, t1, t3, [2, 3, 10, 11, 6, 7, 14, 15])]
    return outs


@intrinsic
def vload_halves(typingctx, arr, off_a, off_b):
    """8 lanes: elements ``off_a .. off_a+3`` then ``off_b .. off_b+3`` of a C-contiguous array (x86: a 128-bit
    load and an insert from memory, no shuffle). No bounds check."""
    if not (_flat_ok(arr) and isinstance(off_a, types.Integer) and isinstance(off_b, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        lo = builder.load(_vptr(context, builder, arr, args[0], args[1], arr.dtype, 4), align=4)
        hi = builder.load(_vptr(context, builder, arr, args[0], args[2], arr.dtype, 4), align=4)
        return builder.shuffle_vector(lo, hi, ir.Constant(ir.VectorType(ir.IntType(32), _W), list(range(8))))

    return Vec(arr.dtype, _W)(arr, off_a, off_b), codegen


def _scale_rows(builder, outs, dtype, scale):
    mul = builder.fmul if dtype == types.float32 else builder.mul
    return [mul(x, scale) for x in outs]


def _row_at(builder, off, stride, p):
    return builder.add(off, builder.mul(stride, ir.Constant(stride.type, p)))


@intrinsic
def vload_quarters(typingctx, arr, off, stride):
    """8 lanes: elements ``off + q * stride .. off + q * stride + 1`` for q < 4 of a C-contiguous array (two
    elements from each of four rows; x86: 64-bit loads and inserts). No bounds check."""
    if not (_flat_ok(arr) and isinstance(off, types.Integer) and isinstance(stride, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        aval, o = args[0], args[1]
        s = context.cast(builder, args[2], sig.args[2], sig.args[1])
        p = [builder.load(_vptr(context, builder, arr, aval, _row_at(builder, o, s, q), arr.dtype, 2), align=4)
             for q in range(4)]
        i32x4 = ir.VectorType(ir.IntType(32), 4)
        lo = builder.shuffle_vector(p[0], p[1], ir.Constant(i32x4, [0, 1, 2, 3]))
        hi = builder.shuffle_vector(p[2], p[3], ir.Constant(i32x4, [0, 1, 2, 3]))
        return builder.shuffle_vector(lo, hi, ir.Constant(ir.VectorType(ir.IntType(32), _W), list(range(8))))

    return Vec(arr.dtype, _W)(arr, off, stride), codegen


@intrinsic
def vtranspose_store_halves(typingctx, arr, off, stride, scale, h0, h1, h2, h3, h4, h5, h6, h7):
    """Store the 8x8 transpose of rows r0..r7, given with their 128-bit halves exchanged (h_q = vload_halves of
    the low halves of r_q and r_{q+4}, h_{q+4} of their high halves, q < 4), times ``scale`` per output row
    (None: no scaling). Element p of r_q (times scale[q]) goes to flat element ``off + p * stride + q`` of
    ``arr``. Into an int16 or uint16 array, int32 rows are stored truncated (unscaled; their entries must fit)."""
    vs = (h0, h1, h2, h3, h4, h5, h6, h7)
    narrow = _is_16bit_arr(arr)  # int32 rows stored truncated to 16 bits (entries that fit)
    vdtype = types.int32 if narrow else arr.dtype
    if not ((_flat_ok(arr) or narrow) and _writable(arr)
            and all(isinstance(v, Vec) and v.width == _W and v.dtype == vdtype for v in vs)):
        return None
    has_scale = isinstance(scale, Vec)
    if has_scale and (narrow or scale.dtype != arr.dtype or scale.width != _W):
        return None

    def codegen(context, builder, sig, args):
        aval, o, s = args[0], args[1], args[2]
        outs = _transpose8_halves(builder, list(args[4:]))
        if has_scale:
            outs = _scale_rows(builder, outs, arr.dtype, args[3])
        if narrow:
            outs = [builder.trunc(x, ir.VectorType(ir.IntType(16), _W)) for x in outs]
        for p in range(8):
            builder.store(outs[p], _vptr(context, builder, arr, aval, _row_at(builder, o, s, p), arr.dtype),
                          align=arr.dtype.bitwidth // 8)
        return context.get_dummy_value()

    return types.void(arr, off, stride, scale, *vs), codegen


def _store_kept(context, builder, sig, arr, aval, outs, n_args):
    """Store row p of ``outs`` at offset ``off`` (args 1, 2, 3: off, stride, bits) plus ``stride`` times the
    number of set bits of ``bits`` below p; returns the offset after the last set bit's row."""
    o, s, b = (context.cast(builder, v, t, types.intp) for v, t in zip(n_args, sig.args[1:4], strict=True))
    one = ir.Constant(o.type, 1)
    for p, row in enumerate(outs):
        builder.store(row, _vptr(context, builder, arr, aval, o, arr.dtype, row.type.count),
                      align=arr.dtype.bitwidth // 8)
        o = builder.add(o, builder.mul(builder.and_(builder.lshr(b, ir.Constant(b.type, p)), one), s))
    return o


@intrinsic
def vtranspose_store_halves_kept(typingctx, arr, off, stride, bits, scale, rows):
    """vtranspose_store_halves (of float32 rows into a float32 ``arr``; ``rows`` the 8 halves vectors) of only the
    output rows p whose bit p of ``bits`` is set, packed as vtranspose16_store_kept does. Returns the offset
    after the last kept row."""
    if not (_flat_ok(arr) and arr.dtype == types.float32 and _writable(arr) and isinstance(rows, types.UniTuple)
            and rows.count == 8 and isinstance(rows.dtype, Vec) and rows.dtype.width == _W
            and rows.dtype.dtype == types.float32 and all(isinstance(x, types.Integer) for x in (off, stride, bits))):
        return None
    has_scale = isinstance(scale, Vec)
    if has_scale and (scale.dtype != types.float32 or scale.width != _W):
        return None

    def codegen(context, builder, sig, args):
        outs = _transpose8_halves(builder, [builder.extract_value(args[5], q) for q in range(8)])
        if has_scale:
            outs = _scale_rows(builder, outs, arr.dtype, args[4])
        return _store_kept(context, builder, sig, arr, args[0], outs, args[1:4])

    return types.intp(arr, off, stride, bits, scale, rows), codegen


def _words16(builder, a, b, mask):
    return builder.shuffle_vector(a, b, ir.Constant(ir.VectorType(ir.IntType(32), 16), mask))


def _unpack16(lo, size):
    """Mask of x86's unpack (low or high) of 16-bit words in ``size``-word groups, on two 128-bit lanes."""
    half = 0 if lo else 4
    m = []
    for lane in (0, 8):
        for g in range(0, 4, size):
            m += [lane + half + g + i for i in range(size)] + [16 + lane + half + g + i for i in range(size)]
    return m


def _transpose16_halves(builder, h):
    """Output rows O_0..O_7 of the 16x16 transpose of 16-bit rows R_0..R_15, given as h[q] = [R_q[c:c+8],
    R_{q+8}[c:c+8]] for q < 8 (c = 0 gives O_0..O_7, c = 8 gives O_8..O_15): an 8x8 transpose of words within
    each 128-bit lane (three rounds of unpacks), no shuffle across lanes."""
    t = []
    for q in range(0, 8, 2):
        t += [_words16(builder, h[q], h[q + 1], _unpack16(True, 1)),
              _words16(builder, h[q], h[q + 1], _unpack16(False, 1))]
    u = []
    for g in (0, 4):  # t[g..g+3] = words 0-3 / 4-7 of rows (g, g+1) and (g+2, g+3)
        for a, b in ((t[g], t[g + 2]), (t[g + 1], t[g + 3])):
            u += [_words16(builder, a, b, _unpack16(True, 2)), _words16(builder, a, b, _unpack16(False, 2))]
    outs = []
    for q in range(4):  # u[q]: columns 2q, 2q+1 of rows 0-3; u[q + 4] of rows 4-7
        outs += [_words16(builder, u[q], u[q + 4], _unpack16(True, 4)),
                 _words16(builder, u[q], u[q + 4], _unpack16(False, 4))]
    return outs


@intrinsic
def vload_halves16(typingctx, arr, off_a, off_b):
    """16 lanes of a 16-bit C-contiguous array, unwidened: elements ``off_a .. off_a+7`` then ``off_b ..
    off_b+7`` (x86: a 128-bit load and an insert from memory). No bounds check."""
    if not (_is_16bit_arr(arr) and isinstance(off_a, types.Integer) and isinstance(off_b, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        lo = builder.load(_vptr(context, builder, arr, args[0], args[1], arr.dtype, 8), align=2)
        hi = builder.load(_vptr(context, builder, arr, args[0], args[2], arr.dtype, 8), align=2)
        return builder.shuffle_vector(lo, hi, ir.Constant(ir.VectorType(ir.IntType(32), 16), list(range(16))))

    return Vec(arr.dtype, 16)(arr, off_a, off_b), codegen


@intrinsic
def vtranspose16_store(typingctx, arr, off, stride, rows):
    """Store 8 rows of a 16x16 transpose of 16-bit words: ``rows`` are 8 vload_halves16 vectors h_q = [R_q[c:c+8],
    R_{q+8}[c:c+8]] (q < 8) and output row p (element q = R_q[c + p], q < 16) goes to the 16 elements at flat
    offset ``off + p * stride`` of the 16-bit ``arr``, p < 8."""
    if not (_is_16bit_arr(arr) and _writable(arr) and isinstance(rows, types.UniTuple) and rows.count == 8):
        return None
    vt = rows.dtype
    if not (isinstance(vt, Vec) and vt.width == 16 and vt.dtype == arr.dtype):
        return None

    def codegen(context, builder, sig, args):
        aval, o, s = args[0], args[1], args[2]
        outs = _transpose16_halves(builder, [builder.extract_value(args[3], q) for q in range(8)])
        for p in range(8):
            builder.store(outs[p], _vptr(context, builder, arr, aval, _row_at(builder, o, s, p), arr.dtype, 16),
                          align=2)
        return context.get_dummy_value()

    return types.void(arr, off, stride, rows), codegen


@intrinsic
def vtranspose16_store_kept(typingctx, arr, off, stride, bits, rows):
    """vtranspose16_store of only the output rows p whose bit p of ``bits`` is set, packed: row p goes to flat
    offset ``off`` plus ``stride`` times the number of kept rows before it. Returns the offset after the last
    kept row. Every row is stored (no branch); a dropped one lands where the next kept row, or whatever the
    caller writes at the returned offset, overwrites it, so that offset must be inside ``arr``."""
    if not (_is_16bit_arr(arr) and _writable(arr) and isinstance(rows, types.UniTuple) and rows.count == 8
            and isinstance(off, types.Integer) and isinstance(stride, types.Integer)
            and isinstance(bits, types.Integer)):
        return None
    vt = rows.dtype
    if not (isinstance(vt, Vec) and vt.width == 16 and vt.dtype == arr.dtype):
        return None

    def codegen(context, builder, sig, args):
        outs = _transpose16_halves(builder, [builder.extract_value(args[4], q) for q in range(8)])
        return _store_kept(context, builder, sig, arr, args[0], outs, args[1:4])

    return types.intp(arr, off, stride, bits, rows), codegen


def _make_load_fixed(width):
    @intrinsic
    def load_fixed(typingctx, arr, off):
        if not (isinstance(arr, types.Array) and arr.layout == "C" and arr.dtype == types.uint16
                and isinstance(off, types.Integer)):
            return None

        def codegen(context, builder, sig, args):
            v = builder.load(_vptr(context, builder, arr, args[0], args[1], arr.dtype, width), align=2)
            return builder.uitofp(v, ir.VectorType(ir.FloatType(), width))

        return Vec(types.float32, width)(arr, off), codegen

    load_fixed.__doc__ = (f"{width} float32 lanes from the unsigned 16-bit integers ``off .. off+{width - 1}`` of a "
                          "C-contiguous uint16 array (x86: a widening load and vcvtdq2ps; every such integer is a "
                          "float32 exactly). No bounds check.")
    return load_fixed


vload_fixed8 = _make_load_fixed(8)
vload_fixed16 = _make_load_fixed(16)


# Packed tables hold two bfloat16-exact float32 entries (low 16 bits zero) per 32-bit word: word q of a packed row
# holds entry q ("first") as its high half and entry q + w ("second") as its low half, w the row's half width.
_HI16 = -65536  # 0xFFFF0000


def _is_packed_arr(arr):
    return isinstance(arr, types.Array) and arr.layout == "C" and arr.dtype == types.uint32


@intrinsic
def vtranspose_pack_store(typingctx, arr, off, stride, scale_a, scale_b, rows_a, rows_b):
    """Store the 8x8 transposes of rows_a and rows_b (tuples of 8 float32 vectors with their halves exchanged,
    as for vtranspose_store_halves; each times its scale per output row, or unscaled for None) packed: output
    row p becomes the 8 words at flat element ``off + p * stride`` of the uint32 ``arr``, word q holding
    transposed rows_a[q][p] as its first entry and rows_b[q][p] as its second. The entries must be
    bfloat16-exact (their low halves are dropped)."""
    if not (_is_packed_arr(arr) and _writable(arr) and isinstance(rows_a, types.UniTuple) and rows_a == rows_b
            and rows_a.count == _W):
        return None
    vt = rows_a.dtype
    if not (isinstance(vt, Vec) and vt.width == _W and vt.dtype == types.float32):
        return None
    has_scale = isinstance(scale_a, Vec)
    if has_scale != isinstance(scale_b, Vec) or (has_scale and not (scale_a == scale_b == vt)):
        return None

    def codegen(context, builder, sig, args):
        aval, o, s = args[0], args[1], args[2]
        i32v = ir.VectorType(ir.IntType(32), _W)
        outs = []
        for tup, sc in ((args[5], args[3]), (args[6], args[4])):
            t = _transpose8_halves(builder, [builder.extract_value(tup, q) for q in range(_W)])
            outs.append([builder.bitcast(x, i32v) for x in (_scale_rows(builder, t, vt.dtype, sc) if has_scale else t)])
        for p in range(8):  # first | second >> 16: the first's low half is zero
            w = builder.or_(outs[0][p], builder.lshr(outs[1][p], ir.Constant(i32v, [16] * _W)))
            builder.store(w, _vptr(context, builder, arr, aval, _row_at(builder, o, s, p), types.int32), align=4)
        return context.get_dummy_value()

    return types.void(arr, off, stride, scale_a, scale_b, rows_a, rows_b), codegen


@intrinsic
def vload_pair(typingctx, arr, off, like):
    """The words ``off .. off + w - 1`` of a packed uint32 table (w = like.width, like a float32 vector) unpacked
    into two float32 vectors: their first entries and their second ones (see vtranspose_pack_store). No bounds
    check."""
    if not (_is_packed_arr(arr) and isinstance(off, types.Integer) and isinstance(like, Vec)
            and like.dtype == types.float32):
        return None
    width = like.width
    out = types.UniTuple(like, 2)

    def codegen(context, builder, sig, args):
        i32v = ir.VectorType(ir.IntType(32), width)
        fv = _vty(context, types.float32, width)
        w = builder.load(_vptr(context, builder, arr, args[0], args[1], types.int32, width), align=4)
        first = builder.bitcast(builder.and_(w, ir.Constant(i32v, [_HI16] * width)), fv)
        second = builder.bitcast(builder.shl(w, ir.Constant(i32v, [16] * width)), fv)
        return context.make_tuple(builder, out, [first, second])

    return out(arr, off, like), codegen


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
