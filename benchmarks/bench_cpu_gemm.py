"""CPU benchmark of amsim's approximate GEMM against numpy.matmul (float32) and a naive per-product simulation.

Run from the repository root (see benchmarks/README.md):

    python benchmarks/bench_cpu_gemm.py            # full run, a few minutes
    python benchmarks/bench_cpu_gemm.py --quick    # about half a minute

Every timing is the best of ``--repeats`` runs after a warm-up call (which also triggers JIT compilation); amsim
and NumPy are timed in alternating blocks in the same process, so their ratio means something even on a busy
machine when absolute numbers do not. The machine's load average is printed so noisy runs can be recognised.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import dataclasses
import datetime
import glob
import json
import os
import platform
import sys
import time

import numba
import numpy as np
from numba import prange

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import amsim  # noqa: E402
from amsim import _multiplier  # noqa: E402
from amsim.kernels import cpu  # noqa: E402
from amsim.kernels.cpu import _gemm, _kernels, _machine, _simd  # noqa: E402

ENV_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS",
            "NUMBA_THREADING_LAYER")


# ---------------------------------------------------------------------------------------------------------
# machine description
# ---------------------------------------------------------------------------------------------------------
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return " ".join(x for x in ("avx2", "fma", "avx512f") if x in flags)
    except OSError:
        pass
    return "?"


def cpu_family_model() -> str:
    """CPU family/model/stepping from /proc/cpuinfo: what a VM's bare "AMD EPYC" hides (25/17 is Zen 4 Genoa)."""
    got = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key = line.split(":", 1)[0].strip()
                if key in ("cpu family", "model", "stepping") and key not in got:
                    got[key] = line.split(":", 1)[1].strip()
                if len(got) == 3:
                    break
    except OSError:
        return "?"
    return f"family {got.get('cpu family', '?')} model {got.get('model', '?')} stepping {got.get('stepping', '?')}"


def cache_size(level: str) -> str:
    """Per-core cache size as sysfs reports it for CPU 0 (e.g. "1024K"), or "?"."""
    for d in sorted(glob.glob("/sys/devices/system/cpu/cpu0/cache/index*")):
        try:
            with open(os.path.join(d, "level")) as f:
                lvl = f.read().strip()
            with open(os.path.join(d, "type")) as f:
                typ = f.read().strip()
            if f"L{lvl}" == level and typ in ("Unified", "Data"):
                with open(os.path.join(d, "size")) as f:
                    return f.read().strip()
        except OSError:
            continue
    return "?"


def blas_info() -> str:
    """Which BLAS numpy uses and, for OpenBLAS, the kernel (core) it picked at run time."""
    try:
        from threadpoolctl import threadpool_info

        for lib in threadpool_info():
            if lib.get("internal_api") in ("openblas", "mkl", "blis"):
                return (f"{lib['internal_api']} {lib.get('version')} core={lib.get('architecture')} "
                        f"threads={lib.get('num_threads')} (threadpoolctl)")
    except ImportError:
        pass
    desc = "?"
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        desc = f"{blas.get('name')} {blas.get('version')}"
    except Exception:  # older numpy: no dict mode
        pass
    libdir = os.path.join(os.path.dirname(np.__file__), "..", "numpy.libs")
    for path in glob.glob(os.path.join(libdir, "*openblas*")):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for name in ("scipy_openblas_get_corename64_", "scipy_openblas_get_corename", "openblas_get_corename64_",
                     "openblas_get_corename"):
            fn = getattr(lib, name, None)
            if fn is not None:
                fn.restype = ctypes.c_char_p
                return f"{desc} core={fn().decode()} (numpy.show_config + {name})"
    return desc + " (numpy.show_config)"


def describe_machine() -> dict:
    from amsim.kernels.cpu import _machine

    costs = _machine.costs()
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "cpu_family_model": cpu_family_model(),
        "simd": cpu_flags(),
        "llvm_cpu": _machine.cpu_name(),
        "host_vector_width": _machine.host_width(),
        "vector_width": costs.width,
        "calibrated_costs": dataclasses.asdict(costs),
        "l2_cache": cache_size("L2"),
        "cores": os.cpu_count(),
        "numba_threads": numba.get_num_threads(),
        "threading_layer": None,  # filled in after the first parallel call
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numba": numba.__version__,
        "blas": blas_info(),
        "env": {k: os.environ[k] for k in ENV_VARS if k in os.environ},
        "loadavg_start": os.getloadavg(),
    }


# ---------------------------------------------------------------------------------------------------------
# timing
# ---------------------------------------------------------------------------------------------------------
def race(fns: dict, repeats: int, rounds: int = 4, pause: float = 0.25, min_block: float = 0.2,
         max_calls: int = 200) -> dict:
    """Best seconds per call for each callable.

    Each callable runs in blocks (a warm-up call, then back-to-back timed calls), blocks of the callables
    alternate for ``rounds`` rounds, and a pause precedes every block: OpenBLAS worker threads keep spinning
    for about 0.1 s after a call, and on a small machine timing amsim right after numpy (or the reverse) would
    measure the two thread pools fighting over the cores rather than either kernel. A block makes at least
    ``repeats / rounds`` timed calls and goes on until it has lasted ``min_block`` seconds (at most
    ``max_calls`` calls): a millisecond call gets a hundred tries at a quiet moment of a busy host where a
    slow one gets its few (a 256^3 case read 2.8-6.7x NumPy over six runs of 6 calls a block). Four rounds
    spread a slow call's tries over more moments than two did: the host's slow spells come and go within
    seconds, and 1024^3 with m = 11 (six 0.1 s calls a block in two rounds) read 8.8-12.6x NumPy over twelve
    runs in one hour where mbm7's read 2.2-3.5x.
    """
    best = {k: float("inf") for k in fns}
    per_round = max(1, -(-repeats // rounds))
    for _ in range(rounds):
        for k, f in fns.items():
            time.sleep(pause)
            f()
            start = time.perf_counter()
            calls = 0
            while calls < per_round or (calls < max_calls and time.perf_counter() - start < min_block):
                t0 = time.perf_counter()
                f()
                best[k] = min(best[k], time.perf_counter() - t0)
                calls += 1
    return best


# ---------------------------------------------------------------------------------------------------------
# the naive simulation: one scalar approximate-product call per (i, j, k)
# ---------------------------------------------------------------------------------------------------------
@numba.njit
def approx_mul(x, y, shift, truncate, lmask, lut_e, lut_f):
    """One approximate product with amsim's semantics: round both operands, look up, assemble the float32."""
    ua = _kernels.round_bits(_simd.f32_to_bits(x), shift, truncate)
    ub = _kernels.round_bits(_simd.f32_to_bits(y), shift, truncate)
    return _simd.bits_to_f32(_kernels.product_bits(ua, ub, shift, lmask, lut_e, lut_f))


@numba.njit(parallel=True)
def naive_matmul(a, b_t, c, m, truncate, lut_e, lut_f):
    """C[i, j] = sum_k approx_mul(a[i, k], b[k, j]): the per-element loop of a straightforward CPU simulator
    (B pre-transposed for locality; rows spread over the same threads amsim uses)."""
    shift = 23 - m
    lmask = (1 << m) - 1
    for i in prange(a.shape[0]):
        for j in range(b_t.shape[0]):
            acc = np.float32(0.0)
            for k in range(a.shape[1]):
                acc = acc + approx_mul(a[i, k], b_t[j, k], shift, truncate, lmask, lut_e, lut_f)
            c[i, j] = acc


def naive_ns_per_mac(mult, size: int, repeats: int, rng) -> tuple[float, bool]:
    a = rng.standard_normal((size, size)).astype(np.float32)
    b = rng.standard_normal((size, size)).astype(np.float32)
    b_t = np.ascontiguousarray(b.T)
    c = np.empty((size, size), np.float32)
    kt = cpu.float_kernel_tables(mult.table.values)
    trunc = mult.rounding == "truncate"
    t = race({"naive": lambda: naive_matmul(a, b_t, c, mult.mantissa_bits, trunc, kt[1], kt[2])}, repeats)["naive"]
    same = bool((c.view(np.uint32) == amsim.matmul(a, b, mult).view(np.uint32)).all())
    return t / size**3 * 1e9, same


# ---------------------------------------------------------------------------------------------------------
# cases
# ---------------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def forced_env(settings: dict):
    """Environment variables set for the block (an empty dict: left as they are)."""
    old = {k: os.environ.get(k) for k in settings}
    os.environ.update(settings)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                del os.environ[k]
            else:
                os.environ[k] = v


class _SeenLayout(_gemm._Layout):
    """The drivers' blocking, remembered: the benchmark reports the float tables' form (packed, half-width
    or plain) and the integer tables' dtype."""

    last = None

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        _SeenLayout.last = self


_gemm._Layout = _SeenLayout


def _tables() -> str:
    """The form of the last float GEMM's tables: packed, half (width: 16-bit integers; "half-u": of the rows used
    only) or plain."""
    last = _SeenLayout.last
    if last is None:
        return "plain"
    return "packed" if last.packed else ("half-u" if last.used else "half") if last.half else "plain"


def gemm_case(label, batch, m_rows, k_len, n_cols, mult, repeats, rng, kind="float"):
    shape_a = batch + (m_rows, k_len)
    shape_b = batch + (k_len, n_cols)
    if kind == "float":
        a = rng.standard_normal(shape_a).astype(np.float32)
        b = rng.standard_normal(shape_b).astype(np.float32)
        af, bf = a, b
    else:  # int8 operands; numpy is timed on the same values as float32
        a = rng.integers(-128, 128, shape_a).astype(np.int8)
        b = rng.integers(-128, 128, shape_b).astype(np.int8)
        af, bf = a.astype(np.float32), b.astype(np.float32)
    _SeenLayout.last = None
    t = race({"numpy": lambda: np.matmul(af, bf), "amsim": lambda: amsim.matmul(a, b, mult)}, repeats)
    return _result(label, mult, int(np.prod(batch, dtype=np.int64)) * m_rows * k_len * n_cols, t)


def _result(label, mult, macs, t):
    """A results row from the best seconds of amsim and numpy."""
    return {"case": label, "multiplier": mult.name, "bits": mult.bits, "macs": macs,
            "amsim_s": t["amsim"], "numpy_s": t["numpy"],
            "amsim_gmacs": macs / t["amsim"] / 1e9, "numpy_gmacs": macs / t["numpy"] / 1e9,
            "ratio": t["amsim"] / t["numpy"]}


def conv_case(mult, repeats, rng):
    """The LeNet-5 conv2 input gradient as the JAX bridge runs it on the CPU: patch rows read from the padded
    input (128 x 18 x 18 x 16, 5 x 5 taps) by ``conv_patches_matmul``, against NumPy on the prebuilt
    25088 x 400 patch matrix (NumPy is not charged for building it)."""
    from amsim import _ops

    xp = rng.standard_normal((1, 128, 18, 18, 16)).astype(np.float32)
    geo = ((0, 0), (1, 1), (14, 14), tuple(range(5)), tuple(range(5)))
    b = rng.standard_normal((1, 400, 6)).astype(np.float32)
    p = np.empty((1, 1, 25088, 400), np.float32)
    cpu.conv_patches(xp, p, *(np.asarray(g) for g in geo), False)
    out = np.empty((1, 25088, 6), np.float32)
    t = race({"numpy": lambda: np.matmul(p[:, 0], b),
              "amsim": lambda: _ops.conv_patches_matmul(xp, geo, b, mult, out)}, repeats)
    return _result("25088x400x6 (conv2 dx, from the input)", mult, 25088 * 400 * 6, t)


def lut_build_times(repeats: int) -> list:
    """Seconds to build a table from a fresh model (compile the model and evaluation kernel, evaluate, validate)
    and to prepare it for the CPU kernels. The in-memory table cache is cleared before each build."""
    out = []

    def build(m):
        _multiplier._TABLES.clear()
        mult = amsim.multipliers.mitchell(m)  # a new model object: nothing cached
        t0 = time.perf_counter()
        table = mult.table
        t1 = time.perf_counter()
        cpu.float_kernel_tables(table.values)
        t2 = time.perf_counter()
        return t1 - t0, t2 - t1

    first = build(7)
    out.append({"what": "mitchell(7), first build in the process", "build_s": first[0], "prepare_s": first[1]})
    for m in (7, 11):
        runs = [build(m) for _ in range(max(1, min(repeats, 3)))]
        out.append({"what": f"mitchell({m}), fresh model", "build_s": min(r[0] for r in runs),
                    "prepare_s": min(r[1] for r in runs)})
    return out


AVX2_CPU = "x86-64-v3"  # LLVM's generic AVX2 + FMA level


def avx2_env() -> dict:
    """This process's environment with Numba told to compile for an AVX2 CPU: ``NUMBA_CPU_NAME`` the generic
    AVX2 level and ``NUMBA_CPU_FEATURES`` this host's features without AVX-512 (and AVX10). The code an AVX2
    machine compiles, run on this one (its caches and clock, not an AVX2 machine's)."""
    import llvmlite.binding as ll

    feats = ll.get_host_cpu_features()
    wide = ("avx512", "avx10", "evex512")
    flat = ",".join(("-" if name.startswith(wide) or not on else "+") + name for name, on in sorted(feats.items()))
    return dict(os.environ, NUMBA_CPU_NAME=AVX2_CPU, NUMBA_CPU_FEATURES=flat)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer and smaller cases, fewer repeats")
    ap.add_argument("--repeats", type=int, default=None, help="timed repeats per case (default 7, quick 4)")
    ap.add_argument("--naive-size", type=int, default=None, help="N of the N^3 naive-simulation run (default 256, "
                    "quick 128)")
    ap.add_argument("--json", default=None, help="also write the results to this JSON file")
    ap.add_argument("--both-widths", action="store_true", help="time every amsim case with the 8-lane and the "
                    "16-lane float sweep forced (AMSIM_CPU_VECTOR_WIDTH), besides the automatic choice")
    ap.add_argument("--both-packings", action="store_true", help="time every amsim case with plain and with packed "
                    "tables forced (AMSIM_CPU_TABLE_PACKING off / on), besides the automatic choice")
    ap.add_argument("--both-halves", action="store_true", help="time every amsim case with half-width tables "
                    "forced off and on (AMSIM_CPU_HALF_TABLES), besides the automatic choice")
    ap.add_argument("--both-used-rows", action="store_true", help="time every amsim case with half-width tables "
                    "of all rows and of the rows used only (AMSIM_CPU_USED_ROWS off / on), besides the automatic "
                    "choice")
    ap.add_argument("--avx2", action="store_true", help="run with the kernels compiled for an AVX2 CPU "
                    f"(NUMBA_CPU_NAME={AVX2_CPU}, the host's features without AVX-512): the AVX2 code path on an "
                    "AVX-512 machine")
    args = ap.parse_args(argv)
    if args.avx2 and os.environ.get("NUMBA_CPU_NAME") != AVX2_CPU:
        # (Numba reads its target when it starts: run again in a process that has it from the beginning)
        sys.stdout.flush()
        args_now = sys.argv[1:] if argv is None else list(argv)
        os.execve(sys.executable, [sys.executable, os.path.abspath(__file__), *args_now], avx2_env())
    repeats = args.repeats or (4 if args.quick else 7)
    naive_size = args.naive_size or (128 if args.quick else 256)
    rng = np.random.default_rng(0)
    machine = describe_machine()
    builds = lut_build_times(repeats)  # first, so "first build" includes Numba's one-off start-up

    mbm7 = amsim.multipliers.mbm(7)
    cases = [("256x256x256", (), 256, 256, 256, mbm7), ("1024x1024x1024", (), 1024, 1024, 1024, mbm7)]
    if args.quick:
        cases += [("1024x1024x1024", (), 1024, 1024, 1024, amsim.multipliers.mbm(11))]
    else:
        cases += [("4096x1024x1024", (), 4096, 1024, 1024, mbm7),
                  ("64 x (128x64 @ 64x128)", (64,), 128, 64, 128, mbm7),
                  ("8x1024x4096", (), 8, 1024, 4096, mbm7),
                  ("1024x1024x1024", (), 1024, 1024, 1024, amsim.multipliers.mbm(10)),
                  ("1024x1024x1024", (), 1024, 1024, 1024, amsim.multipliers.mbm(11)),
                  # LeNet-5 training-step GEMMs (batch 128): conv2 input gradient, conv1 forward, conv1 and conv2
                  # weight gradients, a dense layer
                  ("25088x400x6 (conv2 dx)", (), 25088, 400, 6, mbm7),
                  ("100352x25x6 (conv1 fwd)", (), 100352, 25, 6, mbm7),
                  ("25x100352x6 (conv1 dW)", (), 25, 100352, 6, mbm7),
                  ("150x12800x16 (conv2 dW)", (), 150, 12800, 16, mbm7),
                  ("128x400x120 (fc1 fwd)", (), 128, 400, 120, mbm7)]
    for _, _, _, _, _, mult in cases:
        _ = mult.table  # build outside the timings

    print(f"# amsim CPU GEMM benchmark ({'quick' if args.quick else 'full'}, best of {repeats}, float sweep "
          f"{machine['vector_width']} lanes; CPU has {machine['host_vector_width']})")
    results = []
    variants = [("w8", {"AMSIM_CPU_VECTOR_WIDTH": "8"}), ("w16", {"AMSIM_CPU_VECTOR_WIDTH": "16"})] \
        if args.both_widths else []
    if args.both_packings:
        variants += [("plain", {"AMSIM_CPU_TABLE_PACKING": "off"}), ("pack", {"AMSIM_CPU_TABLE_PACKING": "on"})]
    if args.both_halves:
        variants += [("full", {"AMSIM_CPU_HALF_TABLES": "off"}), ("half", {"AMSIM_CPU_HALF_TABLES": "on"})]
    if args.both_used_rows:
        variants += [("all", {"AMSIM_CPU_USED_ROWS": "off"}), ("used", {"AMSIM_CPU_USED_ROWS": "on"})]
    for label, batch, m_rows, k_len, n_cols, mult in cases:
        for tag, env in variants + [("auto", {})]:
            with forced_env(env):
                r = gemm_case(label, batch, m_rows, k_len, n_cols, mult, repeats, rng)
                r["width"] = _machine.vector_width()
                r["tables"] = _tables()
            r["forced"] = tag
            results.append(r)
            print(f"  {label:24s} {mult.name:8s} {tag:5s} {r['tables']:6s} amsim "
                  f"{r['amsim_gmacs']:7.2f} GMAC/s  numpy "
                  f"{r['numpy_gmacs']:7.2f} GMAC/s  ratio {r['ratio']:6.2f}", flush=True)
    int_mult = amsim.multipliers.exact_int(8)
    if not args.quick:
        r = gemm_case("1024x1024x1024 int8", (), 1024, 1024, 1024, int_mult, repeats, rng, kind="int")
        r["width"], r["forced"] = machine["vector_width"], "auto"
        last = _SeenLayout.last
        r["tables"] = last.t_dtype.name if last is not None else "-"  # (int16 where the products fit)
        results.append(r)
        print(f"  {r['case']:24s} {int_mult.name:8s} amsim {r['amsim_gmacs']:7.2f} GMAC/s  numpy(f32) "
              f"{r['numpy_gmacs']:7.2f} GMAC/s  ratio {r['ratio']:6.2f}", flush=True)
        r = conv_case(mbm7, repeats, rng)
        r["width"], r["forced"] = machine["vector_width"], "auto"
        results.append(r)
        print(f"  {r['case']:24s} {mbm7.name:8s} amsim {r['amsim_gmacs']:7.2f} GMAC/s  numpy "
              f"{r['numpy_gmacs']:7.2f} GMAC/s  ratio {r['ratio']:6.2f}", flush=True)
    machine["threading_layer"] = numba.threading_layer()

    naive = {}
    for bits in sorted({r["bits"] for r in results if r["multiplier"].startswith("mbm")}):
        ns, same = naive_ns_per_mac(amsim.multipliers.mbm(bits), naive_size, max(1, repeats // 2), rng)
        naive[bits] = ns
        print(f"  naive simulation mbm{bits} at {naive_size}^3: {ns:.2f} ns/MAC (bit-identical to amsim: {same})")
    for r in results:
        ns = naive.get(r["bits"]) if r["multiplier"].startswith("mbm") else None
        r["naive_ns_per_mac"] = ns
        r["speedup_vs_naive"] = ns / (r["amsim_s"] / r["macs"] * 1e9) if ns else None

    for b in builds:
        print(f"  LUT {b['what']:40s} build {b['build_s'] * 1e3:8.1f} ms  kernel prep {b['prepare_s'] * 1e3:6.1f} ms")
    machine["loadavg_end"] = os.getloadavg()

    print("\n## machine")
    for k, v in machine.items():
        print(f"- {k}: {v}")
    print("\n| case | multiplier | setting | lanes | tables | amsim GMAC/s | numpy f32 GMAC/s | amsim / numpy time "
          "| speed-up vs naive |")
    print("| --- | --- | --- | --- | --- | ---: | ---: | ---: | ---: |")
    for r in results:
        sp = f"{r['speedup_vs_naive']:.0f}x" if r["speedup_vs_naive"] else "-"
        print(f"| {r['case']} | {r['multiplier']} | {r['forced']} | {r['width']} | "
              f"{r.get('tables', 'plain')} | {r['amsim_gmacs']:.2f} | "
              f"{r['numpy_gmacs']:.2f} | "
              f"{r['ratio']:.2f} | {sp} |")
    if args.json:
        from amsim._io import atomic_write

        atomic_write(args.json, json.dumps({"machine": machine, "gemm": results, "naive_ns_per_mac": naive,
                                            "lut": builds}, indent=1, default=str))


if __name__ == "__main__":
    main()
