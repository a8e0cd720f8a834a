"""The CPU benchmark's timing helper (benchmarks/bench_cpu_gemm.py): how many calls a block makes, and what it
reports. A fake clock stands in for time, so these tests time nothing."""

from __future__ import annotations

import importlib.util
import types
from pathlib import Path

import pytest

_BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_cpu_gemm.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_cpu_gemm_under_test", _BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class _Clock:
    """perf_counter and sleep of a clock that only moves when a fake call (or a pause) says so."""

    def __init__(self):
        self.now = 0.0
        self.sleeps = []

    def perf_counter(self):
        return self.now

    def sleep(self, s):
        self.sleeps.append(s)
        self.now += s


def _fake(clock, durations, log, name):
    def call():
        log.append(name)
        clock.now += durations[name](sum(1 for x in log if x == name))
    return call


def test_a_block_runs_its_repeats_then_until_it_has_lasted_min_block(bench, monkeypatch):
    clock = _Clock()
    monkeypatch.setattr(bench, "time", types.SimpleNamespace(perf_counter=clock.perf_counter, sleep=clock.sleep))
    log = []
    # "fast" takes 1/128 s, except its 7th call (1/512 s); "slow" takes 0.5 s (dyadic: the sums are exact)
    durations = {"fast": lambda n: 1 / 512 if n == 7 else 1 / 128, "slow": lambda n: 0.5}
    fns = {k: _fake(clock, durations, log, k) for k in durations}
    best = bench.race(fns, repeats=4, rounds=2, pause=0.25, min_block=0.05, max_calls=200)
    # per block: a warm-up call, then 2 timed calls (4 repeats / 2 rounds) and on until 0.05 s have passed:
    # fast 8 (the short 7th call among them) then 7, slow 2
    assert log.count("fast") == (1 + 8) + (1 + 7)
    assert log.count("slow") == 2 * (1 + 2)
    assert log[:9] == ["fast"] * 9 and log[9:12] == ["slow"] * 3  # blocks alternate
    assert clock.sleeps == [0.25] * 4
    assert best == {"fast": 1 / 512, "slow": 0.5}


def test_a_block_stops_at_max_calls(bench, monkeypatch):
    clock = _Clock()
    monkeypatch.setattr(bench, "time", types.SimpleNamespace(perf_counter=clock.perf_counter, sleep=clock.sleep))
    log = []
    fns = {"tiny": _fake(clock, {"tiny": lambda n: 2**-20}, log, "tiny")}
    best = bench.race(fns, repeats=3, rounds=1, pause=0.0, min_block=10.0, max_calls=50)
    assert len(log) == 1 + 50
    assert best["tiny"] == 2**-20
