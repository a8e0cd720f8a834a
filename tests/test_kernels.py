"""CPU-specific kernel paths against the golden model, bit for bit, for each kernel (expansion, gather) and each
vector width (8 and 16 lanes): the exponent range ends, transposed sweeps and row-block splits, narrow and long
shapes, data-dependent exponent windows. The cases every backend must pass are in test_backends.py."""

import numpy as np
import pytest

import amsim
from amsim import golden
from amsim.kernels import cpu

from .support.bits import assert_bits_equal, mixed_matrix
from .support.layouts import spy_layouts

F = np.float32


def _mults():
    return {
        "mbm7": amsim.multipliers.mbm(7),
        "mitchell3": amsim.multipliers.mitchell(3),
        "exact1": amsim.multipliers.exact(1),
        "exact10": amsim.multipliers.exact(10),
        "mitchell11": amsim.multipliers.mitchell(11),
    }


MULTS = _mults()


def test_kernel_fixtures_force_the_choice(cpu_kernel):
    assert cpu.use_expansion(300, 10, 12, 128) == (cpu_kernel == "expand")
    assert cpu.use_expansion(4, 3, 5, 128) == (cpu_kernel == "expand")


def test_matmul_at_range_extremes(cpu_kernel, cpu_width, rng):
    # operands near 2**+-63 and 2**+-126: the power-of-two fast path must hand these to the exact path
    mult = MULTS["mbm7"]
    m_, k_, n_ = 300, 12, 10
    a = np.ldexp(rng.uniform(1, 2, (m_, k_)), rng.integers(-126, 128, (m_, k_))).astype(F)
    b = np.ldexp(rng.uniform(1, 2, (k_, n_)), rng.integers(-126, 128, (k_, n_))).astype(F)
    a[::7] = np.ldexp(rng.uniform(1, 2, (a[::7].shape)), rng.integers(-4, 4, a[::7].shape)).astype(F)
    assert_bits_equal(amsim.matmul(a, b, mult), golden.matmul(a, b, mult))


# transposed sweeps (N > M, K a multiple of 8, M not), narrow sides (8-, 16- and 32-column blocks, 16 split into
# two 8s when the rows are too few to share), row-block splits, gather remainders and both gather orientations,
# a conv-weight-gradient-like long K
LAYOUTS = [(40, 64, 300), (300, 24, 9), (9, 17, 700), (1100, 20, 30), (30, 40, 5), (5, 33, 30), (13, 3000, 6),
           (64, 37, 33), (600, 70, 16), (150, 900, 12)]


@pytest.mark.parametrize("algo", ["expand", "gather", "int"])
def test_kernels_see_the_same_argument_types_for_every_kind_of_call(algo, monkeypatch, rng):
    """Numba compiles a kernel once per argument types, read-only flags and layouts included (5-8 s for an
    expansion). Writable operands (NumPy) and read-only ones (JAX's), each with and without values for the
    exact path, and for the expansion and the gather kernel either orientation of the product (M >= N or
    M < N; the gather kernel's transposed form), reach each kernel with the same types: one compilation of
    it serves them all. The results are golden's."""
    import numba

    from amsim.kernels.cpu import _gemm

    seen, now = {}, {}
    real_k = _gemm._k

    def k(kernel, serial):
        run = real_k(kernel, serial)

        def call(*args):
            key = (kernel.__name__, serial, now["orient"])
            seen.setdefault(key, set()).add(tuple(numba.typeof(x) for x in args))
            return run(*args)

        return call

    monkeypatch.setattr(_gemm, "_k", k)
    monkeypatch.setattr(_gemm, "use_expansion", lambda *a, **kw: algo != "gather")
    m = amsim.multipliers.exact_int(8, signed=True) if algo == "int" else amsim.multipliers.mbm(7)
    # (gather: the first shape is the transposed form, the second not; expansion: the second sweeps columns)
    for orient, (mr, kl, nc) in enumerate([(64, 50, 3), (3, 50, 64)]):
        now["orient"] = orient
        for special in (0.0, 0.05):
            if algo == "int":
                a, b = (rng.integers(-128, 128, s).astype(np.int8) for s in ((mr, kl), (kl, nc)))
            else:
                a, b = mixed_matrix(rng, (mr, kl), special), mixed_matrix(rng, (kl, nc), special)
            for writable in (True, False):
                a.flags.writeable = b.flags.writeable = writable
                assert_bits_equal(amsim.matmul(a, b, m), golden.matmul(a, b, m))
    names = {key[0] for key in seen}
    want = {"expand": {"_expand", "_fixup_f32"}, "gather": {"_gather_f32", "_fixup_f32"}, "int": {"_expand"}}
    assert want[algo] <= names, names
    for key, types in seen.items():
        assert len(types) == 1, (key, types)
    for name in ("_expand", "_gather_f32"):
        for serial in (False, True):
            types = seen.get((name, serial, 0), set()) | seen.get((name, serial, 1), set())
            assert len(types) <= 1, (name, serial, types)


@pytest.mark.parametrize("shape", LAYOUTS, ids=str)
def test_matmul_kernel_layout_cases(cpu_kernel, cpu_width, shape, rng):
    """Each layout with specials sprinkled everywhere (with long K nearly every row and column holds one, so
    the exact path recomputes them), and with operands whose rows all but a few stay on the kernel's path."""
    m_, k_, n_ = shape
    mult = MULTS["mbm7"]
    for a, b in ((mixed_matrix(rng, (m_, k_), 0.02), mixed_matrix(rng, (k_, n_), 0.02)),
                 (_fast_path_matrix(rng, (m_, k_)), _fast_path_matrix(rng, (k_, n_), specials=False))):
        assert_bits_equal(amsim.matmul(a, b, mult), golden.matmul(a, b, mult))


@pytest.mark.parametrize("name", list(MULTS))
def test_matmul_kernels_on_views_and_batches(cpu_kernel, cpu_width, name, rng):
    """Transposed (non-contiguous) operands, a broadcast batch, and every table size, out poisoned."""
    mult = MULTS[name]
    a = mixed_matrix(rng, (3, 21, 19), 0.05)
    b = np.ascontiguousarray(mixed_matrix(rng, (3, 10, 19), 0.05).transpose(0, 2, 1))[..., ::-1].copy()
    bt = mixed_matrix(rng, (10, 19), 0.05).T  # a transposed view
    for x, y in ((a, b), (a, bt), (a.transpose(0, 2, 1)[:, :10, :].transpose(0, 2, 1), bt[:10])):
        out = np.full(np.broadcast_shapes(x.shape[:-2], y.shape[:-2]) + (x.shape[-2], y.shape[-1]), np.nan, F)
        got = amsim.matmul(x, y, mult, out=out)
        assert got is out
        assert_bits_equal(out, golden.matmul(x, y, mult))


def test_matmul_data_dependent_exponent_windows(cpu_kernel, cpu_width, rng):
    mult = MULTS["mitchell3"]
    a = (rng.standard_normal((300, 16)) * 2.0**-90).astype(F)
    b = (rng.standard_normal((16, 20)) * 2.0**60).astype(F)
    assert_bits_equal(amsim.matmul(a, b, mult), golden.matmul(a, b, mult))
    assert_bits_equal(amsim.matmul(b.T.copy(), a.T.copy(), mult), golden.matmul(b.T.copy(), a.T.copy(), mult))


def _fast_path_matrix(rng, shape, specials=True):
    """Normals over a spread of exponents with zeros, -0.0 and subnormals (all on the fast path) and, with
    ``specials``, a few rows holding NaN, Inf or a huge value (recomputed by the exact path)."""
    x = (rng.standard_normal(shape) * np.exp2(rng.integers(-20, 20, shape))).astype(F)
    x[rng.random(shape) < 0.05] = 0.0
    x[rng.random(shape) < 0.02] = -0.0
    x[rng.random(shape) < 0.02] = F(3e-41)
    if not specials:
        return x
    x[..., min(3, shape[-2] - 1), 1] = np.nan
    x[..., min(10, shape[-2] - 1), 0] = -np.inf
    x[..., min(20, shape[-2] - 1), -1] = F(2.0**120)
    return x


@pytest.mark.parametrize("serial", [False, True], ids=["parallel", "serial"])
@pytest.mark.parametrize("rounding", ["nearest", "truncate"])
@pytest.mark.parametrize("name", ["mbm7", "mitchell3", "exact1"])
@pytest.mark.parametrize("shape", [(700, 100, 6), (301, 37, 20), (97, 45, 1), (2, 130, 90, 8), (203, 50, 13),
                                   (5300, 25, 6)], ids=str)
def test_matmul_fused_narrow_expansion(cpu_width, shape, name, rounding, serial, monkeypatch, rng):
    """The expansion fused with decoding (one column block; several k blocks, or one over a decoded operand
    past _ONE_PANEL_MAX): taken, and exact, with vector decodes that end in an overlapping vector (K not a
    multiple of 16) and batches."""
    from amsim.kernels.cpu import _gemm

    _force_expansion(monkeypatch, serial)
    taken = []
    narrow = _gemm._narrow_rows
    monkeypatch.setattr(_gemm, "_narrow_rows", lambda *a: taken.append(narrow(*a)) or taken[-1])
    mult = MULTS[name].with_rounding(rounding)
    *batch, m_, k_, n_ = shape
    a = _fast_path_matrix(rng, (*batch, m_, k_))
    b = _fast_path_matrix(rng, (*batch, k_, n_), specials=False)
    out = np.full((*batch, m_, n_), np.nan, F)
    amsim.matmul(a, b, mult, out=out)
    assert taken and all(t > 0 for t in taken)
    ref = golden.matmul(a, b, mult)
    assert_bits_equal(out, ref)
    assert np.isfinite(ref).mean() > 0.9  # most outputs came from the sweep, not the exact path


@pytest.mark.parametrize("shape", [(1, 1000, 6), (2, 37, 5), (1, 3, 6), (1, 1, 9), (3, 70, 16), (1, 33, 1),
                                   (1, 50, 11), (1, 40, 24)], ids=str)
def test_short_rows_of_the_expanded_operand_decode_as_the_scalar_loop(shape, rng):
    """Rows of at most 16 elements decode one 16-lane vector per row, reading on into the next rows: the same
    indices, scales, padding and per-column exponent ranges as the scalar loop (which a view with a row gap
    takes), specials included, to the last rows (which must not read past the array)."""
    from amsim.kernels.cpu import _gemm

    y = mixed_matrix(rng, shape, 0.1)
    gap = np.full(shape[:-1] + (shape[-1] + 3,), np.nan, F)
    gap[..., : shape[-1]] = y
    y_view = gap[..., : shape[-1]]  # rows contiguous, the array not
    for npad in sorted({-(-shape[-1] // w) * w for w in (8, 16, 32)}):
        for m, truncate in ((7, False), (4, True), (11, False)):
            fast = [x.copy() for x in _gemm._decode_cols(y, m, truncate, False, npad, 8)]  # (reused buffers)
            slow = _gemm._decode_cols(y_view, m, truncate, True, npad, 8)
            for got, want in zip(fast, slow, strict=True):
                assert got.dtype == want.dtype and got.shape == want.shape
                np.testing.assert_array_equal(got.view(np.uint8), want.view(np.uint8))


@pytest.mark.parametrize("serial", [False, True], ids=["parallel", "serial"])
@pytest.mark.parametrize("kbs", [1, 2, 3, 4, 8, 16])
@pytest.mark.parametrize("shape", [(1, 37, 70), (2, 16, 8), (1, 5, 3), (1, 300, 41)], ids=str)
def test_swept_operand_panels_for_every_k_per_block(shape, kbs, serial, rng):
    """The swept operand's k-block panels, from its rows and from its transpose (float decoders, and the
    integer ones), for every k per block the layouts take (1, 2 and 4 at large tables, multiples of 8 at small
    ones, K itself): the same offsets and scales as one panel of the whole row, moved to each block's offsets,
    in rows that do not fill the copies' vectors and blocks that do not fill their panels; what lies past the
    last block's K untouched."""
    from amsim.kernels.cpu import _kernels
    from amsim.kernels.cpu._buffers import _ro

    nbatch, m_rows, k_len = shape
    x = _ro(mixed_matrix(rng, shape, 0.05))  # (read-only, as the drivers pass inputs)
    xt = _ro(np.ascontiguousarray(np.swapaxes(x, 1, 2)))
    unit_r, unit_k = 32, 2048 * 32
    nkb = -(-k_len // kbs)
    k_ = lambda f: _kernels._SERIAL[f] if serial else f  # noqa: E731
    whole_i = np.empty((nbatch, 1, m_rows, k_len), np.int32)
    whole_s = np.empty((nbatch, 1, m_rows, k_len), F)
    lo, hi = np.empty((nbatch, m_rows), np.int32), np.empty((nbatch, m_rows), np.int32)
    k_(_kernels._decode_rows_f32)(x, 11, False, whole_i, whole_s, lo, hi, unit_r, unit_k)
    want_i = np.full((nbatch, nkb, m_rows, kbs), -7, np.int32)
    want_s = np.full((nbatch, nkb, m_rows, kbs), 3.5, F)
    for kbi in range(nkb):
        kb = min(kbs, k_len - kbi * kbs)
        want_i[:, kbi, :, :kb] = whole_i[:, 0, :, kbi * kbs : kbi * kbs + kb] - kbi * kbs * unit_k
        want_s[:, kbi, :, :kb] = whole_s[:, 0, :, kbi * kbs : kbi * kbs + kb]
    for transposed in (False, True):
        got_i, got_s = np.full_like(want_i, -7), np.full_like(want_s, 3.5)
        if transposed:
            pmin, pmax = np.empty((nbatch, nkb, m_rows), np.int32), np.empty((nbatch, nkb, m_rows), np.int32)
            k_(_kernels._decode_rows_t_f32)(xt, 11, False, got_i, got_s, pmin, pmax, unit_r, unit_k)
            np.testing.assert_array_equal(pmin.min(axis=1), lo)
            np.testing.assert_array_equal(pmax.max(axis=1), hi)
        else:
            lo2, hi2 = np.empty_like(lo), np.empty_like(hi)
            k_(_kernels._decode_rows_f32)(x, 11, False, got_i, got_s, lo2, hi2, unit_r, unit_k)
            np.testing.assert_array_equal(lo2, lo)
            np.testing.assert_array_equal(hi2, hi)
        np.testing.assert_array_equal(got_i, want_i)
        np.testing.assert_array_equal(got_s.view(np.uint32), want_s.view(np.uint32))
    ix = _ro(rng.integers(0, 256, shape).astype(np.int32))
    want = np.full((nbatch, nkb, m_rows, kbs), -7, np.int32)
    for kbi in range(nkb):
        kb = min(kbs, k_len - kbi * kbs)
        want[:, kbi, :, :kb] = ix[:, :, kbi * kbs : kbi * kbs + kb] * unit_r + np.arange(kb) * unit_k
    ixt = _ro(np.ascontiguousarray(np.swapaxes(ix, 1, 2)))
    for fn, src in ((_kernels._pack_rows_i32, ix), (_kernels._pack_rows_t_i32, ixt)):
        got = np.full_like(want, -7)
        k_(fn)(src, got, unit_r, unit_k)
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("shape", [(25, 3001, 6), (150, 400, 16), (9, 77, 3)], ids=str)
def test_matmul_with_short_expanded_rows(cpu_kernel, cpu_width, shape, rng):
    """With specials sprinkled everywhere (past a few hundred k the exact path recomputes every row and column)
    and with operands that stay on the kernels' path."""
    m_, k_, n_ = shape
    mult = MULTS["mbm7"]
    for a, b in ((mixed_matrix(rng, (m_, k_), 0.02), mixed_matrix(rng, (k_, n_), 0.02)),
                 (_fast_path_matrix(rng, (m_, k_)), _fast_path_matrix(rng, (k_, n_), specials=False))):
        out = np.full((m_, n_), np.nan, F)
        amsim.matmul(a, b, mult, out=out)
        assert_bits_equal(out, golden.matmul(a, b, mult))


def test_gemm_fused_narrow_falls_back_on_views(cpu_width, monkeypatch, rng):
    """The driver given a swept operand that is not C-contiguous (matmul itself passes contiguous ones) takes
    the panels, with the same bits."""
    from amsim.kernels.cpu import _gemm

    taken = []
    narrow = _gemm._narrow_rows
    monkeypatch.setattr(_gemm, "_narrow_rows", lambda *a: taken.append(narrow(*a)) or taken[-1])
    mult = MULTS["mbm7"]
    a = _fast_path_matrix(rng, (100, 1400)).T[None]  # 1 x 1400 x 100, columns contiguous
    b = _fast_path_matrix(rng, (1, 100, 6), specials=False)
    out = np.full((1, 1400, 6), np.nan, F)
    cpu.gemm_f32(a, b, out, 7, False, cpu.float_kernel_tables(mult.table.values))
    assert_bits_equal(out[0], golden.matmul(a[0], b[0], mult))
    assert taken == [0]


def test_column_block_widths(monkeypatch):
    """8, 16 or 32 columns per expansion block by the expanded side's width; 16 split into two 8s where the
    swept rows are too few to share among the threads (each row block would build the table again)."""
    import numba

    from amsim.kernels.cpu import _gemm, _machine

    cost = _machine.DEFAULT_COSTS
    assert [_gemm._nbw(n) for n in (1, 8, 9, 16, 17, 32, 100)] == [8, 8, 16, 16, 32, 32, 32]
    assert _gemm._Layout(600, 16, 70, 128, 1, False, cost).nbw == 16  # fused: the whole table is small
    assert _gemm._Layout(2000, 12, 5000, 128, 1, False, cost).nbw == 16  # rows enough for two row blocks
    wanted = 8 if numba.get_num_threads() > 1 else 16
    assert _gemm._Layout(150, 16, 12800, 128, 1, False, cost).nbw == wanted  # conv2 weight gradient
    assert _gemm._Layout(150, 16, 12800, 128, 1, True, cost).nbw == 16  # serial: nothing to share


def _force_expansion(monkeypatch, serial):
    """Costs under which every float GEMM takes the row expansion, serially or in parallel."""
    import dataclasses

    from amsim.kernels.cpu import _machine

    real = _machine.costs
    monkeypatch.setattr(_machine, "costs", lambda: dataclasses.replace(
        real(), gather=1e6, parallel=1e12 if serial else 1e-3))




@pytest.mark.parametrize("serial", [False, True], ids=["parallel", "serial"])
@pytest.mark.parametrize("rounding", ["nearest", "truncate"])
@pytest.mark.parametrize("name", ["mbm7", "mitchell3"])
@pytest.mark.parametrize("shape", [(301, 37, 40), (90, 70, 300), (2, 130, 19, 64), (257, 300, 33)], ids=str)
def test_matmul_packed_tables(cpu_width, shape, name, rounding, serial, monkeypatch, rng):
    """Packed tables (two bfloat16-exact entries per word, for the 7-bit and smaller logarithmic multipliers):
    taken when forced, in both orientations (N > M sweeps B^T), with several k blocks, odd row counts, padded
    column blocks and batches; the same bits as golden."""
    _force_expansion(monkeypatch, serial)
    monkeypatch.setenv("AMSIM_CPU_TABLE_PACKING", "on")
    taken = spy_layouts(monkeypatch)
    mult = MULTS[name].with_rounding(rounding)
    assert cpu.float_kernel_tables(mult.table.values).packable
    *batch, m_, k_, n_ = shape
    a = _fast_path_matrix(rng, (*batch, m_, k_))
    b = _fast_path_matrix(rng, (*batch, k_, n_))
    out = np.full((*batch, m_, n_), np.nan, F)
    amsim.matmul(a, b, mult, out=out)
    assert taken == [True]
    ref = golden.matmul(a, b, mult)
    assert_bits_equal(out, ref)
    assert np.isfinite(ref).mean() > 0.8  # most outputs came from the sweep, not the exact path


def test_tables_not_bfloat16_exact_are_never_packed(monkeypatch, rng):
    """One table entry with a low half set makes the table unpackable (packing would drop those bits): forced
    packing then builds plain tables, and the result is still golden's."""
    monkeypatch.setenv("AMSIM_CPU_TABLE_PACKING", "on")
    base = MULTS["mbm7"].table.values.copy()
    assert cpu.float_kernel_tables(base).packable
    for values, packable in ((MULTS["exact10"].table.values, False), (MULTS["mitchell11"].table.values, False)):
        assert cpu.float_kernel_tables(values).packable is packable
    base[77, 5] = np.nextafter(base[77, 5], F(4.0))  # one ulp: a bit in the low half
    assert not cpu.float_kernel_tables(base).packable
    mult = amsim.Multiplier.from_table(base, name="mbm7_one_ulp")
    taken = spy_layouts(monkeypatch)
    a = np.ldexp(rng.uniform(1, 2, (300, 40)), rng.integers(-3, 3, (300, 40))).astype(F)
    b = rng.uniform(1, 2, (40, 64)).astype(F)
    a[:, 7] = F(1.0 + 77 / 128)  # every row multiplies the changed entry ...
    b[7, :] = F(1.0 + 5 / 128)  # ... so packing it would change every output
    assert_bits_equal(amsim.matmul(a, b, mult), golden.matmul(a, b, mult))
    assert taken == [False]


def _window_edge_matrix(rng, shape, lo, hi):
    """Normals with exponents in [lo, hi] (products of two of them near float32's ends) and some zeros."""
    x = np.ldexp(rng.uniform(1, 2, shape) * rng.choice([-1, 1], shape), rng.integers(lo, hi + 1, shape)).astype(F)
    x[rng.random(shape) < 0.03] = 0.0
    return x


def _unit_edge_table():
    """A 32-row table whose entries need the smallest unit, 2**-23: k * 2**-23 with k in [2**15, 2**16) (entries
    in [2**-8, 2**-7)), some zero."""
    rng = np.random.default_rng(11)
    v = np.ldexp(rng.integers(1 << 15, 1 << 16, (32, 32)), -23).astype(F)
    v[rng.random((32, 32)) < 0.05] = 0.0
    return amsim.Multiplier.from_table(v, name="unit_edge5")


_HALF_MULTS = {"mbm8": lambda: amsim.multipliers.mbm(8), "mitchell10": lambda: amsim.multipliers.mitchell(10),
               "mbm11": lambda: amsim.multipliers.mbm(11), "exact7": lambda: amsim.multipliers.exact(7),
               "unit_edge5": _unit_edge_table}


@pytest.mark.parametrize("serial", [False, True], ids=["parallel", "serial"])
@pytest.mark.parametrize("name", list(_HALF_MULTS))
@pytest.mark.parametrize("shape", [(301, 37, 70), (60, 45, 300), (2, 130, 19, 40), (1500, 80, 24)], ids=str)
def test_matmul_half_width_tables(cpu_width, shape, name, serial, monkeypatch, rng):
    """Half-width tables (entries as unscaled 16-bit integers; the sweep multiplies the operands' scales and the
    unit first) for the 8- to 11-bit logarithmic multipliers, the 7-bit exact one and a table whose unit is the
    smallest (2**-23), small and large (1024, 2048 rows) tables: taken when forced, in both orientations, with
    padded column blocks, batches and one column block (the fused narrow kernel then runs on plain tables);
    operands on the fast path, and operands whose products lie at float32's ends, where the scales' product is
    smallest or largest against the product. The same bits as golden."""
    _force_expansion(monkeypatch, serial)
    monkeypatch.setenv("AMSIM_CPU_HALF_TABLES", "on")
    taken = spy_layouts(monkeypatch, "half")
    mult = _HALF_MULTS[name]()
    assert cpu.float_kernel_tables(mult.table.values).half is not None
    *batch, m_, k_, n_ = shape
    sa, sb = (*batch, m_, k_), (*batch, k_, n_)
    # exponents -63 and 63 everywhere put every scale product at float32's ends (2**-126, 2**126) with every
    # output still the kernels' (the sums cancel into subnormals, or overflow); the wider bands mostly take the
    # exact path, whose boundary they cross. For the 2**-23 table, A's exponents 8 and B's -126 make B's scale
    # times the unit 2**-149, and A's 118 and B's 8 make the two operands' scales' product 2**126 (times the
    # unit first, or it overflows: its products lie in [2**110, 2**119))
    bands = [((None, None),) * 2] + [((lo, hi),) * 2 for lo, hi in ((-63, -63), (63, 63), (-66, -58), (57, 64))]
    if name == "unit_edge5":
        bands += [((8, 8), (-126, -126)), ((118, 118), (8, 8)), ((-126, -126), (8, 9))]
    for (alo, ahi), (blo, bhi) in bands:
        taken.clear()
        if alo is None:
            a, b = _fast_path_matrix(rng, sa), _fast_path_matrix(rng, sb)
        else:
            a, b = _window_edge_matrix(rng, sa, alo, ahi), _window_edge_matrix(rng, sb, blo, bhi)
        out = np.full((*batch, m_, n_), np.nan, F)
        amsim.matmul(a, b, mult, out=out)
        assert_bits_equal(out, golden.matmul(a, b, mult))
        assert taken and taken[0]  # the half-width expansion ran (a fused narrow one adds a plain layout)


def test_which_tables_are_half_width(monkeypatch, rng):
    """Half-width tables need every entry a 16-bit integer times one power of two 2**-q, 0 <= q <= 23 (else
    bits would be lost, or the scales' products leave float32's range): otherwise forcing them builds plain
    tables, and the result is still golden's."""
    monkeypatch.setenv("AMSIM_CPU_HALF_TABLES", "on")
    for m in (7, 8, 10, 11):
        tabs = cpu.float_kernel_tables(amsim.multipliers.mbm(m).table.values)
        n = 1 << m
        assert tabs.half[2] == F(2.0**-m), m  # entries are multiples of 2**-m below 4
        assert_bits_equal(np.ldexp(tabs.half[0][:, :n].astype(F), -m), amsim.multipliers.mbm(m).table.values)
        assert_bits_equal(tabs.half[1][:, :n], tabs.half[0][:, :n].T)
        assert tabs.half[0].shape == tabs.half[1].shape == (n, n + (32 if m >= 10 else 0))  # (see padded_rows)
    assert cpu.float_kernel_tables(amsim.multipliers.exact(7).table.values).half[2] == F(2.0**-14)
    assert cpu.float_kernel_tables(amsim.multipliers.exact(8).table.values).half is None  # 255**2 * ... > 2**16
    assert cpu.float_kernel_tables(MULTS["exact10"].table.values).half is None
    assert cpu.float_kernel_tables(amsim.multipliers.mitchell(3).table.values).half is None  # 8 rows
    base = amsim.multipliers.mbm(8).table.values
    # (entries below 4 but for the changed one: k < 2**16 holds up to q = 14, and below 256 at q = 8)
    for r, c, v, half in ((3, 4, 0.0, True), (3, 4, 0.5, True), (3, 4, 2.0**-14, True), (3, 4, 2.0**-15, False),
                          (9, 9, 255.0, True), (9, 9, 256.0, False), (9, 9, np.nextafter(F(2.0), F(4.0)), False),
                          (5, 6, 1e5, False), (5, 6, 3e38, False)):
        t = base.copy()
        t[r, c] = v
        assert (cpu.float_kernel_tables(t).half is not None) == half, v
        if v > 0:
            taken = spy_layouts(monkeypatch, "half")
            mult = amsim.Multiplier.from_table(t, name="mbm8_changed")
            a = np.ldexp(rng.uniform(1, 2, (300, 40)), rng.integers(-60, 60, (300, 40))).astype(F)
            b = np.ldexp(rng.uniform(1, 2, (40, 64)), rng.integers(-60, 60, (40, 64))).astype(F)
            a[:, 7] = F(1.0 + r / 256)  # every row multiplies the changed entry
            b[7, :] = F(1.0 + c / 256)
            assert_bits_equal(amsim.matmul(a, b, mult), golden.matmul(a, b, mult))
            if not half:
                assert not any(taken)


def test_half_table_setting(monkeypatch):
    from dataclasses import replace

    from amsim.kernels.cpu import _machine

    cost = _machine.DEFAULT_COSTS
    monkeypatch.setenv("AMSIM_CPU_HALF_TABLES", "off")
    assert not _machine.use_half(replace(cost, build_half=1e-3, sweep_half=1e-3), 256, 1024)
    monkeypatch.setenv("AMSIM_CPU_HALF_TABLES", "on")
    assert _machine.use_half(replace(cost, build_half=9.0, sweep_half=9.0), 256, 1024)
    monkeypatch.delenv("AMSIM_CPU_HALF_TABLES")
    assert not _machine.use_half(cost, 256, 1024) and not _machine.use_half(cost, 1024, 1024)  # defaults: never
    # auto: by the costs of the tables' rows and the rows swept per table, small and large tables apart
    cheap = replace(cost, build=0.1, sweep=0.1, build_half=0.05, sweep_half=0.11)
    assert _machine.use_half(cheap, 256, 1024) and not _machine.use_half(cheap, 256, 16384)
    assert not _machine.use_half(cheap, 1024, 1024)  # large tables: their own costs
    assert _machine.use_half(replace(cheap, build_half_large=0.1, sweep_half_large=0.1), 1024, 1024)
    monkeypatch.setenv("AMSIM_CPU_HALF_TABLES", "yes")
    with pytest.raises(ValueError, match="AMSIM_CPU_HALF_TABLES='yes' is not a half-table setting.*on.*off.*auto"):
        _machine.use_half(cost, 256, 1024)


def test_half_tables_count_in_the_kernel_choice(monkeypatch):
    """Where a table allows half-width tables and they are cheaper, the choice between the expansion and
    the gather kernel counts their costs (small and large tables), not the plain tables'."""
    from dataclasses import replace

    from amsim.kernels.cpu import _machine

    monkeypatch.delenv("AMSIM_CPU_HALF_TABLES", raising=False)
    cost = replace(_machine.DEFAULT_COSTS, build=1.0, sweep=0.5, build_large=1.0, sweep_large=0.5, gather=2.0,
                   build_half=0.01, sweep_half=0.01, build_half_large=0.01, sweep_half_large=0.01)
    for n_l in (256, 1024):
        assert not cpu.use_expansion(300, 64, 64, n_l, cost=cost, nthreads=1)
        assert cpu.use_expansion(300, 64, 64, n_l, cost=cost, nthreads=1, half=True)
        assert not cpu.use_expansion(300, 12, 64, n_l, cost=cost, nthreads=1, half=True)  # 12 columns: no half
    monkeypatch.setenv("AMSIM_CPU_HALF_TABLES", "off")
    assert not cpu.use_expansion(300, 64, 64, 256, cost=cost, nthreads=1, half=True)


def _float_table6():
    """A 64-row table of random float32 entries in [1, 4): plain tables only (neither packed nor half-width)."""
    v = np.random.default_rng(6).uniform(1.0, 4.0, (64, 64)).astype(F)
    return amsim.Multiplier.from_table(v, name="float6")


# half-width tables (2048 and 128 rows) and plain ones (1024 and 64 rows)
_USED_MULTS = {"mbm11": lambda: amsim.multipliers.mbm(11), "mbm7": lambda: amsim.multipliers.mbm(7),
               "exact10": lambda: MULTS["exact10"], "float6": _float_table6}


@pytest.mark.parametrize("serial", [False, True], ids=["parallel", "serial"])
@pytest.mark.parametrize("name", list(_USED_MULTS))
@pytest.mark.parametrize("shape", [(301, 37, 70), (60, 45, 300), (2, 40, 19, 130), (1027, 9, 33)], ids=str)
def test_matmul_used_rows_only(cpu_width, shape, name, serial, monkeypatch, rng):
    """Expanded tables (half-width and plain, large and small) of only the rows the swept operand uses (packed in
    k order, the panels' offsets rewritten): forced on and off, in both orientations (a batch swept by its
    columns), a last k block shorter than the others, padded column blocks, swept rows split between work items
    and not a multiple of the sweep's four; operands on the fast path and at float32's ends, and operands that
    use a few table rows only. The same bits as golden either way, and as each other."""
    from amsim.kernels.cpu import _gemm

    _force_expansion(monkeypatch, serial)
    monkeypatch.setenv("AMSIM_CPU_HALF_TABLES", "on")
    monkeypatch.setenv("AMSIM_CPU_TABLE_PACKING", "off")
    taken = spy_layouts(monkeypatch, "half", "used")
    kept = []
    real_k = _gemm._k

    def spy_k(kernel, serial):  # records the kept rows' bits _keep_rows computed
        f = real_k(kernel, serial)
        return (lambda *a: (f(*a), kept.append(a[3].copy()))[0]) if kernel is _gemm._keep_rows else f

    monkeypatch.setattr(_gemm, "_k", spy_k)
    mult = _USED_MULTS[name]()
    n_l = mult.table.values.shape[0]
    half = cpu.float_kernel_tables(mult.table.values).half is not None
    assert half == name.startswith("mbm")
    *batch, m_, k_, n_ = shape
    sa, sb = (*batch, m_, k_), (*batch, k_, n_)
    four = F([1.0, 1.5, -1.25, 1.75e-3])  # (four table rows: most of the table unused)
    cases = [(_fast_path_matrix(rng, sa), _fast_path_matrix(rng, sb), False),
             (_window_edge_matrix(rng, sa, -63, -63), _window_edge_matrix(rng, sb, -63, -63), False),
             (_window_edge_matrix(rng, sa, 57, 64), _window_edge_matrix(rng, sb, 57, 64), False),
             (rng.choice(four, sa), _fast_path_matrix(rng, sb), m_ >= n_),  # (the longer side is swept)
             (_fast_path_matrix(rng, sa), rng.choice(four, sb), m_ < n_)]
    for a, b, swept_few in cases:
        want = golden.matmul(a, b, mult)
        got = {}
        for mode in ("off", "on"):
            monkeypatch.setenv("AMSIM_CPU_USED_ROWS", mode)
            taken.clear()
            kept.clear()
            out = np.full((*batch, m_, n_), np.nan, F)
            amsim.matmul(a, b, mult, out=out)
            assert_bits_equal(out, want)
            got[mode] = out
            assert taken and taken[0] == (half, mode == "on")
            assert bool(kept) == (mode == "on")
        assert_bits_equal(got["on"], got["off"])
        # rows kept per k: at least one, at most the rows swept, and at most four where ``four`` is swept
        bits = np.unpackbits(kept[0].view(np.uint8), bitorder="little").reshape(*kept[0].shape[:2], n_l)
        per_k = bits.sum(axis=2)
        assert per_k.min() >= 1 and per_k.max() <= (4 if swept_few else min(n_l, max(m_, n_)))

def test_keep_rows_kernel(rng):
    """_keep_rows against NumPy: which rows each k uses (bit r of 64-bit words), where each k's rows start in the
    packed table, and every offset rewritten to its row's rank there; batches and a short last k block."""
    from amsim.kernels.cpu._kernels import _SERIAL, _keep_rows

    for n_l, mx, k_len, kbs, nbatch in ((2048, 1000, 9, 2, 1), (1024, 37, 7, 3, 2), (64, 300, 5, 5, 3)):
        nkb = -(-k_len // kbs)
        kk = np.arange(kbs)
        rows = rng.integers(0, n_l, (nbatch, nkb, mx, kbs))
        rows[..., 1, :] = rows[..., 0, :]  # (a row used twice)
        iap0 = ((rows + kk * n_l) << 5).astype(np.int32)
        for kern in (_keep_rows, _SERIAL[_keep_rows]):
            iap = iap0.copy()
            keep = np.full((nbatch, k_len, n_l // 64), -1, np.int64)
            tst = np.full((nbatch, nkb, kbs), -1, np.int32)
            kern(iap, n_l, 5, keep, tst)
            for bt in range(nbatch):
                for kbi in range(nkb):
                    base = 0
                    for q in range(min(kbs, k_len - kbi * kbs)):
                        used = np.zeros(n_l, bool)
                        used[rows[bt, kbi, :, q]] = True
                        got = np.unpackbits(keep[bt, kbi * kbs + q].view(np.uint8), bitorder="little")
                        assert (got.astype(bool) == used).all()
                        assert tst[bt, kbi, q] == base
                        rank = np.cumsum(used) - 1 + base
                        assert (iap[bt, kbi, :, q] == rank[rows[bt, kbi, :, q]] << 5).all()
                        base += int(used.sum())


def test_used_rows_setting(monkeypatch):
    from amsim.kernels.cpu import _machine

    monkeypatch.delenv("AMSIM_CPU_USED_ROWS", raising=False)
    assert _machine.used_rows_fraction(2048, 1024) == pytest.approx(0.3935, abs=1e-4)  # 1 - e**-0.5, nearly
    assert _machine.used_rows_fraction(1, 5) == 1.0
    # auto: large tables (of a multiple of 64 rows) where few of their rows are used
    assert _machine.use_used_rows(2048, 1024) and _machine.use_used_rows(1024, 1024)
    assert not _machine.use_used_rows(2048, 4096) and not _machine.use_used_rows(256, 64)
    monkeypatch.setenv("AMSIM_CPU_USED_ROWS", "on")
    assert _machine.use_used_rows(256, 100000) and not _machine.use_used_rows(32, 4)  # (32 rows: never)
    monkeypatch.setenv("AMSIM_CPU_USED_ROWS", "off")
    assert not _machine.use_used_rows(2048, 16)
    monkeypatch.setenv("AMSIM_CPU_USED_ROWS", "some")
    with pytest.raises(ValueError, match="AMSIM_CPU_USED_ROWS='some' is not a used-rows setting.*on.*off.*auto"):
        _machine.use_used_rows(2048, 1024)


def test_table_packing_setting(monkeypatch):
    from dataclasses import replace

    from amsim.kernels.cpu import _machine

    cost = _machine.DEFAULT_COSTS
    monkeypatch.setenv("AMSIM_CPU_TABLE_PACKING", "off")
    assert not _machine.use_packed(replace(cost, build_packed=1e-3, sweep_packed=1e-3), 128, 1024)
    monkeypatch.setenv("AMSIM_CPU_TABLE_PACKING", "on")
    assert _machine.use_packed(replace(cost, build_packed=9.0, sweep_packed=9.0), 128, 1024)
    monkeypatch.delenv("AMSIM_CPU_TABLE_PACKING")
    assert not _machine.use_packed(cost, 128, 1024)  # the defaults never pack
    # auto: by the costs of the tables' rows and the rows swept per table
    cheap_sweep = replace(cost, build=0.1, sweep=0.1, build_packed=0.2, sweep_packed=0.08)
    assert _machine.use_packed(cheap_sweep, 128, 1024) and not _machine.use_packed(cheap_sweep, 128, 256)
    monkeypatch.setenv("AMSIM_CPU_TABLE_PACKING", "yes")
    with pytest.raises(ValueError, match="AMSIM_CPU_TABLE_PACKING='yes' is not a packing setting.*on.*off.*auto"):
        _machine.use_packed(cost, 128, 1024)


def test_int_tables_are_narrowed_to_16_bits_only_where_every_entry_fits():
    base = np.zeros((16, 16), np.int32)
    for lo, hi, want in [(-32768, 32767, np.int16), (-32769, 0, np.int32), (0, 32768, np.uint16),
                         (0, 65535, np.uint16), (0, 65536, np.int32), (-1, 32768, np.int32)]:
        t = base.copy()
        t[3, 5], t[7, 2] = lo, hi
        kt = cpu.int_kernel_tables(t)
        assert kt.t_dtype == want, (lo, hi)
        np.testing.assert_array_equal(kt[1], t.T)
    assert cpu.int_kernel_tables(base.astype(np.float32)).t_dtype == np.float32  # full-operand float tables


_T_RANGES = {"int16": (-32768, 32767), "uint16": (0, 65535), "int32": (-40000, 40000)}


@pytest.mark.parametrize("t_dtype", list(_T_RANGES))
@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("shape", [(300, 70, 5), (90, 45, 13), (40, 200, 300), (2, 130, 33, 77)], ids=str)
def test_matmul_16bit_expanded_tables(cpu_width, shape, bits, t_dtype, monkeypatch, rng):
    """Integer expansions build int16 or uint16 tables where the entries fit and sum them in int32: the
    table's extremes in every row, sums far past 16 bits, column blocks of 8, 16 and 32, the scalar build of
    tables under 8 rows (2 bits), both orientations; tables past both ranges take int32 tables. All the same
    bits as golden."""
    from amsim.kernels.cpu import _gemm

    dtypes = spy_layouts(monkeypatch, "t_dtype", "nbw")
    builds = []  # the dtype of the table each expansion builds from
    real_k = _gemm._k

    def k(kernel, serial):
        run = real_k(kernel, serial)
        if kernel is not _gemm._expand:
            return run
        return lambda *args: (builds.append(args[5].dtype), run(*args))[1]

    monkeypatch.setattr(_gemm, "_k", k)
    monkeypatch.setattr(_gemm, "use_expansion", lambda *a, **k: True)
    n = 1 << bits
    t_lo, t_hi = _T_RANGES[t_dtype]
    table = rng.integers(t_lo, t_hi + 1, (n, n)).astype(np.int32)
    table[np.arange(n), rng.integers(0, n, n)] = t_lo
    table[np.arange(n), (np.arange(n) + 1) % n] = t_hi
    mult = amsim.Multiplier.from_table(table, name=f"rand{bits}", signed=True)
    lo, hi = mult.int_range
    *batch, m_, k_, n_ = shape
    a = rng.integers(lo, hi + 1, (*batch, m_, k_)).astype(np.int32)
    b = rng.integers(lo, hi + 1, (*batch, k_, n_)).astype(np.int32)
    a[..., 0, :], b[..., :, 0] = lo, lo  # rows and columns that hit the extremes at every k
    out = np.full((*batch, m_, n_), -12345, np.int32)
    amsim.matmul(a, b, mult, out=out)
    want = golden.matmul(a, b, mult)
    np.testing.assert_array_equal(out, want)
    assert np.abs(want).max() > 1 << 16
    assert dtypes and {d for d, _ in dtypes} == {np.dtype(t_dtype)}
    # 16-bit tables come from a 16-bit table by 16 x 16 transposes where whole ones fit, else from the int32 one
    narrow = [t_dtype != "int32" and nbw % 16 == 0 and n % 16 == 0 for _, nbw in dtypes]
    assert builds == [np.dtype(t_dtype) if x else np.dtype(np.int32) for x in narrow]


@pytest.mark.parametrize("dtype", [np.int16, np.uint16])
@pytest.mark.parametrize(("nl", "nbw"), [(256, 32), (16, 16), (32, 32), (48, 16), (8, 8), (16, 8), (24, 16)])
def test_16bit_table_build(nl, nbw, dtype, rng):
    """The 16-bit build (16 x 16 transposes of words; element by element where the table's rows or the block's
    columns are not whole multiples of 16) writes T[kk, r, j] = LUT[r, ib[k0 + kk, j0 + j]] for its k block and
    nothing outside it."""
    from amsim.kernels.cpu import _kernels

    info = np.iinfo(dtype)
    lut = rng.integers(info.min, int(info.max) + 1, (nl, nl)).astype(dtype)
    lutt = np.ascontiguousarray(lut.T)
    k0, kb, j0, t0 = 3, 5, 32, 40
    ib = rng.integers(0, nl, (k0 + kb + 2, j0 + nbw + 8)).astype(np.int32)
    ib[k0, j0 : j0 + nbw] = np.arange(nbw) % nl  # every column of the block distinct where the table allows
    poison = info.max // 3
    t = np.full(t0 + kb * nl * nbw + 50, poison, dtype)
    _kernels._build_t16(t, t0, lutt, ib, k0, kb, j0, nl, nbw)
    want = lut[:, ib[k0 : k0 + kb, j0 : j0 + nbw]].transpose(1, 0, 2)  # (kk, r, j)
    np.testing.assert_array_equal(t[t0 : t0 + want.size].reshape(want.shape), want)
    assert (t[:t0] == poison).all() and (t[t0 + want.size :] == poison).all()


def test_padded_rows():
    """Table rows a multiple of 2 KiB long get 64 bytes more (zeros), other tables stay as they are."""
    from amsim.kernels.cpu._buffers import padded_rows

    for n, dtype, pad in ((2048, np.uint16, 32), (1024, np.uint16, 32), (512, np.uint16, 0), (1024, F, 16),
                          (512, F, 16), (256, F, 0), (8, F, 0)):
        t = np.arange(n * n, dtype=np.int64).reshape(n, n).astype(dtype)
        p = padded_rows(t.T)
        assert p.shape == (n, n + pad) and p.flags.c_contiguous, (n, dtype)
        np.testing.assert_array_equal(p[:, :n], t.T)
        assert not p[:, n:].any()
        assert padded_rows(p) is p  # (laid out once: the calibration passes its padded tables on uncopied)


@pytest.mark.parametrize("build", ["plain", "half", "packed", "plain_small"])
def test_table_builds_read_padded_rows(build, rng):
    """Every table build reads row r of the transposed table at r * shape[1] and only its first shape[0] entries:
    the same expanded table from a square table and from one whose rows carry poisoned padding."""
    from amsim.kernels.cpu import _kernels

    nl, pad = {"plain": (512, 16), "half": (1024, 32), "packed": (128, 16), "plain_small": (4, 3)}[build]
    if build == "half":
        lutt = rng.integers(0, 1 << 16, (nl, nl)).astype(np.uint16)
        poison = np.uint16(0xFFFF)
    else:
        lutt = rng.uniform(1, 4, (nl, nl)).astype(F)
        if build == "packed":
            lutt = (lutt.view(np.uint32) & np.uint32(0xFFFF0000)).view(F)
        poison = F(np.nan)
    padded = np.full((nl, nl + pad), poison, lutt.dtype)
    padded[:, :nl] = lutt
    nbw, k0, kb, j0 = 32, 2, 3, 32
    ib = rng.integers(0, nl, (k0 + kb + 1, j0 + nbw)).astype(np.int32)
    sb = np.ldexp(np.ones(ib.shape, F), rng.integers(-3, 4, ib.shape)).astype(F)
    outs = []
    for table in (lutt, padded):
        if build == "packed":
            t = np.zeros(kb * nl * 16, np.uint32)
            _kernels._build_tp(t, 0, table, ib, sb, k0, kb, j0, nl)
        elif build == "half":
            t = np.zeros(kb * nl * nbw, np.uint16)
            _kernels._build_t16(t, 0, table, ib, k0, kb, j0, nl, nbw)
        else:
            t = np.zeros(kb * nl * nbw, F)
            _kernels._build_t(t, 0, table, ib, sb, k0, kb, j0, nl, nbw)
        outs.append(t)
    assert_bits_equal(outs[1], outs[0])
    if build != "packed":  # (packed words hold two columns' entries)
        want = lutt.T[:, ib[k0 : k0 + kb, j0 : j0 + nbw]].transpose(1, 0, 2)
        if build != "half":
            want = want * sb[k0 : k0 + kb, None, j0 : j0 + nbw]
        assert_bits_equal(outs[0].reshape(want.shape), want.astype(lutt.dtype))


def test_gather_rows_per_item_balance_the_threads():
    from amsim.kernels.cpu import _gemm

    assert _gemm._gather_rows(25, 1, 2) == 4  # 13 and 12 rows a thread, not 16 and 9
    assert _gemm._gather_rows(24, 1, 2) == 4  # 12 and 12, not 16 and 8
    assert _gemm._gather_rows(16, 1, 2) == 8
    assert _gemm._gather_rows(25, 1, 1) == 8
    assert _gemm._gather_rows(150, 2, 2) == 8  # many items


@pytest.mark.parametrize("gr", [4, 8])
@pytest.mark.parametrize("shape", [(25, 700, 6), (13, 300, 11), (4, 90, 20), (3, 2, 500, 3), (7, 64, 9)], ids=str)
def test_gather_kernel_with_four_or_eight_rows_an_item(cpu_width, shape, gr, monkeypatch, rng):
    """The gather kernel's 4-row items (and 8-row ones, and the remainders taken a row at a time), parallel,
    against golden: zeros, -0.0 and subnormals on the kernel's path, a few rows of specials recomputed."""
    from amsim.kernels.cpu import _gemm

    taken = []
    monkeypatch.setattr(_gemm, "use_expansion", lambda *a, **k: False)
    monkeypatch.setattr(_gemm, "_is_small", lambda *a: False)  # (the serial twin takes 8 rows an item)
    monkeypatch.setattr(_gemm, "_gather_rows", lambda *a: taken.append(gr) or gr)
    *batch, m_, k_, n_ = shape
    mult = MULTS["mbm7"]
    a = _fast_path_matrix(rng, (*batch, m_, k_))  # (most rows on the kernel's path, not recomputed)
    b = _fast_path_matrix(rng, (*batch, k_, n_), specials=False)
    out = np.full((*batch, m_, n_), np.nan, F)
    amsim.matmul(a, b, mult, out=out)
    assert_bits_equal(out, golden.matmul(a, b, mult))
    assert taken == [gr]


def test_kernel_choice_counts_the_threads_each_kernel_keeps_busy():
    """LeNet-5's conv1 weight gradient is one work item of expansion (one column block, 25 rows) against four of
    the gather kernel: where expansion is estimated a little cheaper on one core, two threads make the gather
    kernel the faster (with one thread, the expansion)."""
    import dataclasses

    from amsim.kernels.cpu import _gemm, _machine

    shape = (25, 6, 100352, 128)
    cost = _machine.DEFAULT_COSTS
    assert _gemm._work_items(*shape, 1, 2, cost) == (1, 2)
    expand, gather = _gemm._costs(*shape, cost)
    cost = dataclasses.replace(cost, gather=cost.gather * 1.25 * expand / gather)  # gather 1.25x the expansion
    assert _gemm.use_expansion(*shape, 1, cost, nthreads=1)
    assert not _gemm.use_expansion(*shape, 1, cost, nthreads=2)
    assert _gemm.use_expansion(2000, 64, 500, 128, 1, cost, nthreads=2)  # plenty of items either way


# conv geometries (N, H, W, C, kernel (kh, kw), stride, rhs dilation, O, batch): tap rows of 80, 30 and 80
# values, strided (from a first sample at (1, 2)), a 1-D conv, a batch of two with its own weights, tap rows of
# 5 values (one input channel: vectors read on past them, element by element at the end of the input) and
# taps two apart (rhs dilation: runs of C)
CONV_GEOMETRIES = [((8, 12, 12, 16), (5, 5), 1, 1, 6, 1), ((4, 21, 23, 16), (5, 5), 2, 1, 6, 1),
                   ((6, 14, 14, 6), (5, 5), 1, 1, 16, 1), ((16, 1, 90, 16), (1, 5), 1, 1, 6, 1),
                   ((4, 12, 12, 16), (3, 5), 1, 1, 6, 2), ((40, 20, 20, 1), (5, 5), 1, 1, 6, 1),
                   ((6, 16, 16, 16), (3, 3), 1, 2, 6, 1)]


@pytest.mark.parametrize("serial", [False, True], ids=["parallel", "serial"])
@pytest.mark.parametrize("geometry", CONV_GEOMETRIES, ids=str)
def test_conv_gemm_reads_the_patches_from_the_input(cpu_width, geometry, serial, monkeypatch, rng):
    """gemm_conv_f32 = golden.matmul(patch matrix, b), bit for bit, each patch row copied from the padded input
    and decoded in a row buffer, with specials in a few input pixels and one weight (their rows and columns
    recomputed from the patch matrix) and without."""
    from amsim.kernels.cpu import _gemm

    _force_expansion(monkeypatch, serial)
    taken = []
    fused = _gemm._fused_narrow
    monkeypatch.setattr(_gemm, "_fused_narrow", lambda *a: taken.append(a[2] is not None) or fused(*a))
    (n, h, w, c), (kh, kw), stride, dil, o, lead = geometry
    y0, x0 = (1, 2) if stride > 1 else (0, 0)
    oh, ow = (h - y0 - dil * (kh - 1) - 1) // stride + 1, (w - x0 - dil * (kw - 1) - 1) // stride + 1
    geo = ((y0, x0), (stride, stride), (oh, ow), tuple(range(0, dil * kh, dil)), tuple(range(0, dil * kw, dil)))
    mult = MULTS["mbm7"]
    kt = cpu.float_kernel_tables(mult.table.values)
    for specials in (False, True):
        xp = _fast_path_matrix(rng, (lead, n, h, w, c), specials=False)
        b = _fast_path_matrix(rng, (lead, kh * kw * c, o), specials=False)
        if specials:
            xp[0, 1, h // 2, w // 2, c - 1] = np.nan
            xp[-1, n - 1, h - 1, w - 1, 0] = -np.inf
            b[0, 3, o - 1] = F(2.0**120)
        p = np.empty((lead, 1, n * oh * ow, kh * kw * c), F)
        cpu.conv_patches(xp, p, *geo, False)
        out = np.full((lead, n * oh * ow, o), np.nan, F)
        assert cpu.gemm_conv_f32(xp, geo, b, out, 7, False, kt) is out
        assert_bits_equal(out, golden.matmul(p[:, 0], b, mult))
    assert taken == [True, True]


def test_conv_patches_matmul_checks_what_its_kernels_would_index_unchecked(rng):
    from amsim import _ops
    from amsim._errors import UnsupportedError

    xp = rng.standard_normal((1, 2, 8, 8, 16)).astype(F)
    geo = ((0, 0), (1, 1), (4, 4), tuple(range(5)), tuple(range(5)))
    b = rng.standard_normal((1, 400, 6)).astype(F)
    out = np.full((1, 32, 6), np.nan, F)
    p = np.empty((1, 1, 32, 400), F)
    cpu.conv_patches(xp, p, *(np.asarray(g) for g in geo), False)
    assert_bits_equal(_ops.conv_patches_matmul(xp, geo, b, "mbm", out), golden.matmul(p[:, 0], b, MULTS["mbm7"]))
    bad = [(xp, ((1, 0), (1, 1), (4, 4), tuple(range(5)), tuple(range(5))), b, out, "past the padded input's H"),
           (xp, ((0, 1), (1, 1), (4, 4), tuple(range(5)), tuple(range(5))), b, out, "past the padded input's W"),
           (xp, geo, b[:, :399], out, "b must be"), (xp, geo, b, out[:, :31], "b must be"),
           (xp[0], geo, b, out, "expected"), (xp, geo, b, np.zeros((6, 32, 1), F).transpose(2, 1, 0), "C-contiguous")]
    for args in bad:
        with pytest.raises(ValueError, match=args[-1]):
            _ops.conv_patches_matmul(*args[:3], "mbm", args[3])
    with pytest.raises(UnsupportedError, match="significand-table"):
        _ops.conv_patches_matmul(xp, geo, b, amsim.multipliers.exact_int(8), out)
