"""The CPU kernels' knowledge of the machine: the vector width setting, and the calibration that picks kernels and
block sizes, cached on disk (keyed by what it stands for, never trusted blindly, never fatal)."""

import json
import math

import numpy as np
import pytest

import amsim
from amsim import golden
from amsim.kernels.cpu import _gemm, _machine

from .support.bits import assert_bits_equal
from .support.layouts import spy_layouts


@pytest.fixture
def fresh(tmp_path, monkeypatch):
    """An empty on-disk cache (as beside Numba's cache dir) and no costs in memory; calibrations are counted."""
    monkeypatch.setattr(_machine.numba.core.config, "CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(_machine, "_memo", {})
    monkeypatch.setattr(_machine, "_chosen", {})
    monkeypatch.delenv(_machine.ENV_CALIBRATION, raising=False)
    monkeypatch.setenv(_machine.ENV_WIDTH, "8")
    monkeypatch.setattr(_machine, "BUSY_MIN", 0.0)  # (the suite's parallel load must not stop the caching tested)
    calls = []
    real = _machine.calibrate

    def counting(width):
        calls.append(width)
        return real(width)

    monkeypatch.setattr(_machine, "calibrate", counting)
    return tmp_path / _machine.CACHE_NAME, calls


def test_width_setting(monkeypatch):
    monkeypatch.setenv(_machine.ENV_WIDTH, "8")
    assert _machine.vector_width() == 8
    monkeypatch.setenv(_machine.ENV_WIDTH, "16")
    assert _machine.vector_width() == 16
    monkeypatch.setenv(_machine.ENV_WIDTH, "auto")
    assert _machine.vector_width() in ((8, 16) if _machine.host_width() == 16 else (8,))
    monkeypatch.setenv(_machine.ENV_WIDTH, "32")
    with pytest.raises(ValueError, match="AMSIM_CPU_VECTOR_WIDTH='32' is not a vector width.*8.*16.*auto"):
        _machine.vector_width()


def test_bad_width_setting_is_one_clear_error_before_any_work(monkeypatch):
    monkeypatch.setenv(_machine.ENV_WIDTH, "avx9000")
    a = np.ones((40, 30), np.float32)
    out = np.full((40, 40), 7.0, np.float32)
    with pytest.raises(ValueError, match="AMSIM_CPU_VECTOR_WIDTH"):
        amsim.matmul(a, a.T.copy(), amsim.multipliers.mbm(7), out=out)
    assert (out == 7.0).all()  # nothing written


def test_host_width_follows_the_cpu_features():
    assert _machine.host_width() == (16 if "avx512f" in _machine._host_features() else 8)


def test_calibration_is_measured_once_and_cached_on_disk(fresh):
    path, calls = fresh
    got = _machine.costs()
    assert calls == [8] and got.width == 8
    assert got.t_bytes in _machine.T_BYTES_CHOICES and 0 < got.sweep < 10 and 0 < got.build < 10
    assert got.t_bytes_large in _machine.T_BYTES_CHOICES and got.nbw_large in _machine.NBW_CHOICES
    assert got.t_bytes_packed in _machine.T_BYTES_CHOICES
    assert 0 < got.sweep_large < 10 and 0 < got.build_large < 10
    data = json.loads(path.read_text())
    assert list(data) == [_machine.cache_key(8)]
    assert _machine.Costs.from_dict(data[_machine.cache_key(8)]) == got
    _machine._memo.clear()
    _machine._chosen.clear()
    assert _machine.costs() == got  # read back from the file
    assert calls == [8]


def test_a_calibration_that_shared_its_core_is_used_but_not_cached(fresh, monkeypatch):
    """Under the parallel test suite a calibration's thread ran 0.4 of its timed runs' wall time, and its costs,
    cached, chose 32 KiB table blocks instead of 256 for every later run. Such a calibration serves its process
    only; the next process measures again."""
    import time as real_time
    import types

    path, calls = fresh
    monkeypatch.setattr(_machine, "BUSY_MIN", 0.9)
    shared = types.SimpleNamespace(perf_counter=real_time.perf_counter,
                                   thread_time=lambda: real_time.perf_counter() * 0.5)  # on the core half the time
    monkeypatch.setattr(_machine, "time", shared)
    got = _machine.costs()
    assert _machine.contended() and calls == [8] and got.width == 8 and 0 < got.sweep < 10
    assert not path.exists()
    assert _machine.costs() is got and calls == [8]  # kept for this process
    _machine._memo.clear()
    _machine._chosen.clear()
    alone = types.SimpleNamespace(perf_counter=real_time.perf_counter, thread_time=real_time.perf_counter)
    monkeypatch.setattr(_machine, "time", alone)  # the core to itself again
    again = _machine.costs()
    assert calls == [8, 8] and not _machine.contended()
    assert _machine.Costs.from_dict(json.loads(path.read_text())[_machine.cache_key(8)]) == again


def test_calibration_compares_plain_and_packed_tables_in_the_same_rounds(monkeypatch):
    """A slow spell of the host (here: 3x, over 32 consecutive expansion runs) must not decide between plain and
    packed tables. Measured one after the other, the spell covered every run of the packed tables and the
    calibration chose plain ones; interleaved, each case keeps runs outside it."""
    import types

    clock, count = [0.0], [0]

    def case(rng, rows, k_len, nl, nbw, t_bytes, width, packed=False, lutt=None, half=False):
        # packed 30 % faster, half-width 15 %
        per_row = (0.7 if packed else (0.85 if half else 1.0)) * (1 + abs(t_bytes - (128 << 10)) / (1 << 20))
        cost = rows * per_row * 1e-7 if (nl, nbw) == (128, 32) else 1e-6

        def run():
            count[0] += 1
            clock[0] += cost * (3 if 41 <= count[0] < 73 else 1)

        return run

    monkeypatch.setattr(_machine, "_expansion_case", case)
    monkeypatch.setattr(_machine, "time", types.SimpleNamespace(perf_counter=lambda: clock[0],
                                                                thread_time=lambda: clock[0]))
    got = _machine.calibrate(16)
    assert count[0] > 73  # the spell fell inside the measurements
    assert (got.t_bytes, got.t_bytes_packed, got.t_bytes_half) == (128 << 10, 128 << 10, 128 << 10)
    assert got.sweep_packed < got.sweep_half < got.sweep and _machine.use_packed(got, 128, 1024)
    assert _machine.use_half(got, 256, 1024)


def test_calibration_times_its_large_tables_as_gemms_lay_them_out(monkeypatch):
    """Every large-table case gets one shared table per form, already laid out as float_kernel_tables lays tables
    out (padded rows): laid out anew in each case, the calibration copied 4 MiB per case and read the large
    builds at 0.30 (plain) and 0.16 (half-width) ns per element, where GEMMs run them at 0.12 and 0.065."""
    from amsim.kernels.cpu._buffers import padded_rows

    seen = []

    def case(rng, rows, k_len, nl, nbw, t_bytes, width, packed=False, lutt=None, half=False):
        if nl == _machine.LARGE_CASE_ROWS:
            seen.append((half, lutt))
        return lambda: None

    monkeypatch.setattr(_machine, "_expansion_case", case)
    _machine.calibrate(8)
    assert {h for h, _ in seen} == {False, True}
    for form in (False, True):
        tables = {id(t) for h, t in seen if h == form}
        assert len(tables) == 1, form
    assert all(padded_rows(t) is t and t.shape[1] > t.shape[0] for _, t in seen)


@pytest.mark.parametrize("spike_at", [0, 1, 2])
def test_one_slow_reading_of_the_parallel_cost_is_not_what_gets_cached(fresh, monkeypatch, spike_at):
    # a VM's other core descheduled for a few milliseconds made one reading 0.5 ms where the rest read a few us;
    # cached, it ran every mid-size GEMM serially (256^3 at half speed) for as long as the cache file lived
    path, _ = fresh
    readings = [3_000.0, 4_000.0, 5_000.0]
    readings[spike_at] = 600_000.0
    taken = []

    def reading():
        taken.append(readings[len(taken)])
        return taken[-1]

    monkeypatch.setattr(_machine, "_parallel_cost", reading)
    got = _machine.costs()
    assert len(taken) == 3
    assert got.parallel == 10_000.0  # the floor: the least reading is below it
    assert json.loads(path.read_text())[_machine.cache_key(8)]["parallel"] == 10_000.0
    assert _gemm._is_small(256, 256, 256, 128, 1, got) is False  # 256^3 runs on both cores


def test_cache_key_names_what_the_costs_stand_for(fresh, monkeypatch):
    path, calls = fresh
    _machine.costs()
    key = _machine.cache_key(8)
    assert _machine.cpu_name() in key and "w8" in key and f"numba-{_machine.numba.__version__}" in key
    assert _machine.cache_key(16) != key
    # another CPU (say, the cache directory copied to another machine): measured again, both entries kept
    _machine._memo.clear()
    _machine._chosen.clear()
    monkeypatch.setattr(_machine, "cpu_name", lambda: "some-other-cpu")
    _machine.costs()
    assert calls == [8, 8]
    assert len(json.loads(path.read_text())) == 2


@pytest.mark.parametrize("content", [
    b"", b"\x00\xff garbage", b"[1, 2, 3]", b'{"k": 1}', b"{" * 100000,
    json.dumps({"KEY": {"build": -1.0}}).encode(), json.dumps({"KEY": {"build": "NaN"}}).encode(),
    json.dumps({"KEY": dict(_machine.DEFAULT_COSTS.__dict__, t_bytes=12345)}).encode(),
    json.dumps({"KEY": dict(_machine.DEFAULT_COSTS.__dict__, sweep=float("nan"))}).encode(),
    json.dumps({"KEY": dict(_machine.DEFAULT_COSTS.__dict__, width=32)}).encode(),
    json.dumps({"KEY": dict(_machine.DEFAULT_COSTS.__dict__, extra=1)}).encode(),
    json.dumps({"KEY": dict(_machine.DEFAULT_COSTS.__dict__, t_bytes=131072.0)}).encode(),
    json.dumps({"KEY": dict(_machine.DEFAULT_COSTS.__dict__, width=8.0)}).encode(),
    json.dumps({"KEY": dict(_machine.DEFAULT_COSTS.__dict__, nbw_large=12)}).encode(),
    json.dumps({"KEY": dict(_machine.DEFAULT_COSTS.__dict__, t_bytes_large=12345)}).encode(),
    json.dumps({"KEY": dict(_machine.DEFAULT_COSTS.__dict__, nbw_large=8.0)}).encode(),
], ids=range(16))
def test_a_bad_cache_file_means_a_new_calibration(fresh, content):
    path, calls = fresh
    path.write_bytes(content.replace(b"KEY", _machine.cache_key(8).encode()))
    got = _machine.costs()
    assert calls == [8]
    assert _machine.Costs.from_dict(json.loads(path.read_text())[_machine.cache_key(8)]) == got


def test_an_unwritable_cache_directory_is_not_fatal(fresh, monkeypatch, tmp_path):
    _, calls = fresh
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    monkeypatch.setattr(_machine.numba.core.config, "CACHE_DIR", str(blocker))  # a file, not a directory
    got = _machine.costs()
    assert calls == [8] and got.width == 8


def test_calibration_off_uses_the_defaults_and_writes_nothing(fresh, monkeypatch):
    path, calls = fresh
    monkeypatch.setenv(_machine.ENV_CALIBRATION, "off")
    assert _machine.costs() == _machine.DEFAULT_COSTS
    assert calls == [] and not path.exists()


def test_auto_width_takes_the_winner_of_one_race(fresh, monkeypatch):
    """With AVX-512, the width is the faster of the two sweeps timed in the same rounds (not a comparison of two
    calibrations' figures), cached on disk with the costs; a malformed entry means a new race; without AVX-512
    there is no race and no 16-lane sweep."""
    path, _ = fresh
    monkeypatch.setenv(_machine.ENV_WIDTH, "auto")
    monkeypatch.setattr(_machine, "host_width", lambda: 16)
    fast8 = _machine.Costs(sweep=0.01, width=8)  # (a calibration's figures favouring 8 lanes do not decide)
    fast16 = _machine.Costs(sweep=0.02, width=16)
    monkeypatch.setattr(_machine, "calibrate", lambda w: fast8 if w == 8 else fast16)
    races = []

    def timed(cases, n=7, serial=True):
        races.append(sorted(cases))
        return {key: 1.0 if key[0] == 16 else 2.0 for key in cases}

    monkeypatch.setattr(_machine, "_best_each", timed)
    assert _machine.costs() == fast16
    assert races == [[(8, "half"), (8, "packed"), (8, "plain"), (16, "half"), (16, "packed"), (16, "plain")]]
    data = json.loads(path.read_text())
    assert data[_machine.cache_key("8-16")] == {"width": 16}
    assert {_machine.cache_key(8), _machine.cache_key(16)} < set(data)

    def new_process():
        _machine._chosen.clear()
        _machine._memo.clear()

    new_process()
    assert _machine.costs() == fast16 and len(races) == 1  # from the file: no new race
    for bad in ({"width": 12}, {"width": 16.0}, {"width": 8, "x": 1}, [16]):
        data[_machine.cache_key("8-16")] = bad
        path.write_text(json.dumps(data))
        new_process()
        monkeypatch.setattr(_machine, "_best_each", lambda cases, n=7, serial=True: {
            key: 1.0 if key[0] == 8 else 2.0 for key in cases})
        assert _machine.costs() == fast8, bad  # raced again
        assert json.loads(path.read_text())[_machine.cache_key("8-16")] == {"width": 8}
        monkeypatch.setattr(_machine, "_best_each", timed)
    monkeypatch.setattr(_machine, "host_width", lambda: 8)  # no AVX-512: never the 16-lane sweep
    new_process()
    n_races = len(races)
    monkeypatch.setattr(_machine, "calibrate", lambda w: fast16 if w == 16 else fast8)
    assert _machine.costs() == fast8 and len(races) == n_races


def test_kernel_and_block_size_follow_the_measured_costs(monkeypatch):
    base = _machine.costs()
    for gather, expect in ((1e-6, False), (1e6, True)):
        monkeypatch.setattr(_machine, "costs", lambda g=gather: _machine.Costs(**dict(base.__dict__, gather=g)))
        assert _gemm.use_expansion(64, 64, 64, 128) is expect
    for t_bytes, kb in ((32 << 10, 2), (128 << 10, 8), (256 << 10, 16)):
        cost = _machine.Costs(**dict(base.__dict__, t_bytes=t_bytes))
        assert _gemm._kb(128, 1000, 32, cost) == kb
    # large tables (more than LARGE_TABLE_ROWS rows) take their own measured block shape
    for nbw, t_bytes, kb in ((8, 256 << 10, 8), (16, 128 << 10, 2), (32, 64 << 10, 1)):
        cost = _machine.Costs(**dict(base.__dict__, nbw_large=nbw, t_bytes_large=t_bytes, t_bytes=32 << 10))
        lay = _gemm._Layout(1024, 1024, 1000, 1024, 1, True, cost)
        assert (lay.nbw, lay.kbs) == (nbw, kb)
        small = _gemm._Layout(1024, 1024, 1000, 512, 1, True, cost)
        assert (small.nbw, small.kbs) == (32, 1)  # 32 KiB / (512 rows * 32 columns * 4 bytes)
        assert _gemm._Layout(1024, 12, 1000, 1024, 1, True, cost).nbw == min(nbw, 16)  # narrow: never wider
        # larger tables than the calibration's (1024 rows) keep its k per block, in a larger block
        assert _gemm._Layout(1024, 1024, 1000, 2048, 1, True, cost).kbs == kb
    for t_bytes, kb in ((128 << 10, 2), (256 << 10, 4), (64 << 10, 1)):  # half-width: 2 bytes an entry
        cost = _machine.Costs(**dict(base.__dict__, t_bytes_half_large=t_bytes))
        assert _gemm._kb(1024, 1000, 32, cost, 2, half=True) == _gemm._kb(2048, 1000, 32, cost, 2, half=True) == kb
    # tables of the rows used only (1024 swept rows use about 807 of 2048) hold more k per block, rounded down to
    # what the panels' vector copies take (1, 2, 4 or a multiple of 8)
    monkeypatch.setenv("AMSIM_CPU_HALF_TABLES", "on")
    monkeypatch.delenv("AMSIM_CPU_USED_ROWS", raising=False)
    for t_bytes, kb in ((128 << 10, 2), (256 << 10, 4)):
        cost = _machine.Costs(**dict(base.__dict__, t_bytes_half_large=t_bytes))
        lay = _gemm._Layout(1024, 1024, 1000, 2048, 1, True, cost, table_half=True, rows_used=True)
        assert (lay.half, lay.used, lay.kbs) == (True, True, kb)
        kbs = {_gemm._kb(2048, 1000, 32, cost, 2, half=True, rows=r) for r in range(100, 1100, 7)}
        assert kbs <= {1, 2, 4, 8, 16, 24, 32} and len(kbs) > 2


def test_large_table_block_shapes_give_the_same_bits(monkeypatch, rng):
    """Every block shape a calibration may choose for large tables (here mitchell(11)'s 2048 rows), in both
    orientations, several k blocks and a padded column block, with all table rows and with the rows used only
    (more k per block): the expansion takes it, and golden's bits."""
    mult = amsim.multipliers.mitchell(11)
    base = _machine.costs()
    seen = spy_layouts(monkeypatch, "nbw", "kbs", "used")
    monkeypatch.setenv("AMSIM_CPU_HALF_TABLES", "off")
    for m_, k_, n_ in ((150, 70, 40), (40, 70, 150)):
        a = rng.standard_normal((m_, k_)).astype(np.float32)
        b = rng.standard_normal((k_, n_)).astype(np.float32)
        want = golden.matmul(a, b, mult)
        used_rows = math.ceil(_machine.used_rows_fraction(2048, 150) * 2048)  # (expected: 148)
        for nbw in _machine.NBW_CHOICES:
            for t_bytes in (64 << 10, 256 << 10):
                c = _machine.Costs(**dict(base.__dict__, nbw_large=nbw, t_bytes_large=t_bytes, gather=1e6,
                                                  parallel=1e12))  # serial: no 16 -> 2 x 8 split
                monkeypatch.setattr(_machine, "costs", lambda c=c: c)
                for used in (False, True):
                    monkeypatch.setenv("AMSIM_CPU_USED_ROWS", "on" if used else "off")
                    seen.clear()
                    out = np.full((m_, n_), np.nan, np.float32)
                    amsim.matmul(a, b, mult, out=out)
                    kb = _gemm._kb(2048, k_, nbw, c, rows=used_rows if used else None)
                    assert seen == [(nbw, kb, used)]
                    assert_bits_equal(out, want)


def test_packed_tables_take_their_own_measured_block_size(monkeypatch, rng):
    """A packed table (two entries a word) holds t_bytes_packed, measured on its own (with the plain tables' k
    per block it held half their bytes, and ran slower on Zen 4); the fused narrow kernel, whose table is plain,
    keeps a plain table's block. Every size a calibration may choose gives golden's bits, with several k blocks."""
    monkeypatch.setenv("AMSIM_CPU_TABLE_PACKING", "on")
    mult = amsim.multipliers.mbm(7)
    base = _machine.costs()
    a = np.ldexp(rng.uniform(1, 2, (300, 90)), rng.integers(-4, 4, (300, 90))).astype(np.float32)
    b = np.ldexp(rng.uniform(-2, 2, (90, 64)), rng.integers(-4, 4, (90, 64))).astype(np.float32)
    want = golden.matmul(a, b, mult)
    seen = spy_layouts(monkeypatch, "packed", "kbs")
    for t_bytes_packed in _machine.T_BYTES_CHOICES:
        c = _machine.Costs(**dict(base.__dict__, t_bytes=32 << 10, t_bytes_packed=t_bytes_packed, gather=1e6))
        lay = _gemm._Layout(1024, 1024, 1000, 128, 1, True, c, True)
        plain = lay.unpacked()
        assert (lay.packed, lay.words, lay.kbs) == (True, 16, t_bytes_packed // (128 * 16 * 4))  # 4 .. 32
        assert (plain.packed, plain.words, plain.kbs, lay.kbs) == (False, 32, 2, t_bytes_packed // 8192)
        monkeypatch.setattr(_machine, "costs", lambda c=c: c)
        seen.clear()
        out = np.full((300, 64), np.nan, np.float32)
        amsim.matmul(a, b, mult, out=out)
        assert seen == [(True, t_bytes_packed // 8192)]
        assert_bits_equal(out, want)


def test_results_do_not_depend_on_the_costs(monkeypatch, rng):
    a = rng.standard_normal((70, 90)).astype(np.float32)
    b = rng.standard_normal((90, 50)).astype(np.float32)
    mult = amsim.multipliers.mbm(7)
    want = golden.matmul(a, b, mult)
    base = _machine.costs()
    for width in (8, 16):
        for t_bytes in _machine.T_BYTES_CHOICES:
            for gather in (1e-6, 1e6):
                c = _machine.Costs(**dict(base.__dict__, t_bytes=t_bytes, gather=gather, width=width))
                monkeypatch.setattr(_machine, "costs", lambda c=c: c)
                assert_bits_equal(amsim.matmul(a, b, mult), want)
