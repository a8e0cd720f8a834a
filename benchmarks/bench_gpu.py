"""Approximate GEMM on the GPU against cuBLAS FP32 (TF32 off): throughput ratio at 4096^3 by default.

    PYTHONPATH=. python benchmarks/bench_gpu.py [--size 4096] [--reps 5] [--json out.json]

Prints the card, the date and, per multiplier (mbm7 and mbm10 by default) and kernel, the time per GEMM, the
equivalent TFLOP/s (2 M N K / t) and the ratio to ``cupy.matmul`` in float32. The first call of each kernel
compiles it (CuPy caches the binary on disk) and is not timed. A spot check compares two full output rows with
the golden model, so a fast but wrong kernel cannot report a number.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import os
import sys

os.environ.setdefault("CUPY_TF32", "0")  # cuBLAS baseline in true FP32 (CuPy's default too; made explicit)
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # JAX and CuPy share the GPU's memory

import numpy as np  # noqa: E402


def _time_it(fn, reps, cp):
    fn()  # warm-up (and compilation)
    cp.cuda.Device().synchronize()
    start, stop = cp.cuda.Event(), cp.cuda.Event()
    times = []
    for _ in range(reps):
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(cp.cuda.get_elapsed_time(start, stop) / 1e3)
    return float(np.median(times))


_GOLDEN_ROWS: dict = {}


def _device(cp):
    """(card name, SM count, clock in Hz) of the current device."""
    dev = cp.cuda.Device().id
    props = cp.cuda.runtime.getDeviceProperties(dev)
    name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    khz = cp.cuda.runtime.deviceGetAttribute(cp.cuda.runtime.cudaDevAttrClockRate, dev)  # the boost clock
    return name, int(props["multiProcessorCount"]), 1e3 * khz


def _rates(shape, algo, mult, seconds, cp):
    """Measured products per clock per SM (at the boost clock) and what ``gpu.algo_estimate`` (the model
    behind the automatic choice) expected for this shape: their ratio is how far off the model is."""
    from amsim import gpu

    rows, depth, cols = shape
    _, sms, hz = _device(cp)
    fp16 = gpu.fp16_table(mult.table.values) is not None
    estimate = gpu.algo_estimate(algo, mult.mantissa_bits, 1, rows, cols, sms, fp16)
    return {"products_per_clock_per_sm": rows * depth * cols / (seconds * hz * sms),
            "estimated_products_per_clock_per_sm": estimate}


def _spot_check(a, b, c, mult, cp):
    """Rows 0 and M-1 of the approximate product, bit for bit against amsim.golden (on the CPU; computed once
    per operands and multiplier, seconds at 4096^3)."""
    from amsim import golden

    rows = [0, a.shape[0] - 1]
    key = (id(a), id(b), mult.name)
    if key not in _GOLDEN_ROWS:
        _GOLDEN_ROWS[key] = golden.matmul(cp.asnumpy(a[rows]), cp.asnumpy(b), mult)
    want = _GOLDEN_ROWS[key]
    got = cp.asnumpy(c[rows])
    same = (got.view(np.uint32) == want.view(np.uint32)) | (np.isnan(got) & np.isnan(want))
    return bool(same.all())


def weight_gradient_shapes(reps, cp, check=True, batch=128, rows=None, save=None):
    """LeNet-5's convolution weight gradients (few outputs, K = batch x output pixels): every float kernel and
    the automatic choice against cupy.matmul, mbm7. The contraction is sequential per output (no split-K), so
    these shapes cannot use the GPU the way cuBLAS does; this shows how close the kernels get."""
    import amsim
    from amsim import gpu

    mult = amsim.multipliers.mbm(7)
    rng = np.random.default_rng(1)
    rows = [] if rows is None else rows
    for m_, pixels, n_ in [(25, 24 * 24, 6), (150, 8 * 8, 16)]:  # conv1 (5x5x1 -> 6), conv2 (5x5x6 -> 16)
        k_ = batch * pixels
        a = cp.asarray(rng.standard_normal((m_, k_)).astype(np.float32))
        b = cp.asarray(rng.standard_normal((k_, n_)).astype(np.float32))
        t_ref = _time_it(functools.partial(cp.matmul, a, b), reps, cp)
        chosen = gpu.choose_algo(7, 1, m_, n_, *gpu.device_limits(), bf16_table=True)
        for algo in ("auto", "dot", "gather", "wide"):
            out = cp.empty((m_, n_), np.float32)
            kw = {} if algo == "auto" else {"algo": algo}
            t = _time_it(functools.partial(gpu.gemm, a, b, mult, out=out, **kw), reps, cp)
            ok = _spot_check(a, b, out, mult, cp) if check else None
            kernel = chosen if algo == "auto" else algo
            rows.append({"shape": [m_, k_, n_], "algo": algo, "kernel": kernel, "seconds": t, "cublas_seconds": t_ref,
                         "ratio_vs_cublas": t_ref / t, "golden_rows_match": ok,
                         **_rates((m_, k_, n_), kernel, mult, t, cp)})
            print(f"wgrad {m_}x{k_}x{n_} {algo:6s} ({rows[-1]['kernel']:6s}): {t * 1e3:8.3f} ms  cuBLAS "
                  f"{t_ref * 1e3:7.3f} ms  golden rows: {ok}")
            if save:
                save()
    return rows


def host_overhead(cp, batch=128, calls=100, rows=None, save=None):
    """Host time per call of LeNet-5-sized operations (mbm7): the time to enqueue the work (no synchronisation
    inside the loop) and the wall time per call including the GPU's, for cupy.matmul, amsim with its replayed
    plan, and amsim planning every call afresh (plan cache cleared). In a training step the host time of each
    approximate product is on the critical path whenever the GPU work is smaller."""
    import time

    import amsim
    from amsim import gpu

    mult = amsim.multipliers.mbm(7)
    rng = np.random.default_rng(3)
    a = cp.asarray(rng.standard_normal((batch, 400)).astype(np.float32))  # fc1: (batch, 400) @ (400, 120)
    b = cp.asarray(rng.standard_normal((400, 120)).astype(np.float32))
    x = cp.asarray(rng.standard_normal((batch, 14, 14, 6)).astype(np.float32))  # conv2: 5x5, 6 -> 16
    w = cp.asarray(rng.standard_normal((5, 5, 6, 16)).astype(np.float32))
    out = cp.empty((batch, 120), np.float32)

    def planned(fn):
        def call():
            gpu.clear_plan_cache()
            fn()
        return call

    fc1 = lambda: gpu.gemm(a, b, mult, out=out)  # noqa: E731
    conv2 = lambda: gpu.conv2d_nhwc(x, w, mult)  # noqa: E731
    cases = [("fc1", f"{batch}x400x120", "cupy.matmul", lambda: cp.matmul(a, b, out=out)),
             ("fc1", f"{batch}x400x120", "replayed", fc1), ("fc1", f"{batch}x400x120", "planned", planned(fc1)),
             ("conv2", f"{batch}x14x14x6 * 5x5x6x16", "replayed", conv2),
             ("conv2", f"{batch}x14x14x6 * 5x5x6x16", "planned", planned(conv2))]
    rows = [] if rows is None else rows
    for op, shape, how, fn in cases:
        fn()
        cp.cuda.Device().synchronize()
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        t1 = time.perf_counter()
        cp.cuda.Device().synchronize()
        t2 = time.perf_counter()
        rows.append({"op": op, "shape": shape, "how": how, "host_us": (t1 - t0) / calls * 1e6,
                     "wall_us": (t2 - t0) / calls * 1e6})
        print(f"host time {op:5s} {how:11s}: {rows[-1]['host_us']:8.1f} us/call enqueued, "
              f"{rows[-1]['wall_us']:8.1f} us/call with the GPU work")
        if save:
            save()
    return rows


def int8_gemm(n, reps, cp, check=True, rows=None, save=None):
    """An int8 multiplier (exact_int(8), a 256 x 256 int32 table) at n^3 with both table kernels, against
    cupy.matmul in float32 on the same values."""
    import amsim
    from amsim import golden, gpu

    mult = amsim.multipliers.exact_int(8, signed=True)
    rng = np.random.default_rng(2)
    a_h = rng.integers(-128, 128, (n, n)).astype(np.int32)
    b_h = rng.integers(-128, 128, (n, n)).astype(np.int32)
    a, b = cp.asarray(a_h), cp.asarray(b_h)
    af, bf = a.astype(np.float32), b.astype(np.float32)
    t_ref = _time_it(lambda: cp.matmul(af, bf), reps, cp)
    want = golden.matmul(a_h[[0, n - 1]], b_h, mult) if check else None
    rows = [] if rows is None else rows
    for algo in ("auto", "lut", "lutw"):
        out = cp.empty((n, n), np.int32)
        kw = {} if algo == "auto" else {"algo": algo}
        t = _time_it(functools.partial(gpu.gemm, a, b, mult, out=out, **kw), reps, cp)
        ok = bool((cp.asnumpy(out[[0, n - 1]]) == want).all()) if check else None
        rows.append({"algo": algo, "seconds": t, "cublas_fp32_seconds": t_ref, "ratio_vs_cublas": t_ref / t,
                     "golden_rows_match": ok})
        print(f"int8 {n}^3 {algo:5s}: {t * 1e3:8.2f} ms  {100 * t_ref / t:6.1f}% of cuBLAS fp32  golden rows: {ok}")
        if save:
            save()
    return rows


def jax_training_step_comparison(steps: int = 10, batch: int = 128, names=("lenet5", "resnet20"), report=None,
                                 save=None):
    """Training-step time of LeNet-5 and ResNet-20 with every product through MBM (forward and both gradient
    GEMMs, amsim kernels on XLA's stream) against the same model in plain JAX float32, same device, same run.

    Returns a dict per model: seconds per step for each and their ratio (target: approximate <= 3x fp32), filled
    into ``report`` if given; ``save()`` is called after each model.
    """
    import time

    import jax
    import jax.numpy as jnp
    import optax

    from amsim import models, multipliers
    from amsim import nn as ann

    report = {} if report is None else report
    report.update(backend=jax.default_backend(), batch=batch, steps=steps)
    rng = np.random.default_rng(0)
    shapes = {"lenet5": (batch, 28, 28, 1), "resnet20": (batch, 32, 32, 3)}
    for name in names:
        shape = shapes[name]
        x = jnp.asarray(rng.random(shape, dtype=np.float32))
        y = jnp.asarray(rng.integers(0, 10, batch).astype(np.int32))
        row = {}
        for label in ("fp32", "mbm7"):
            model = models.get(name)
            if label != "fp32":
                model = ann.approximate(model, {"*": multipliers.mbm(7)})
            variables = model.init(jax.random.key(0), x, train=False)
            params, stats = variables["params"], variables.get("batch_stats", {})
            opt = optax.sgd(1e-2, momentum=0.9)
            opt_state = opt.init(params)

            def loss_fn(p, s, model=model, has_bn=bool(stats), x=x, y=y):
                if has_bn:
                    logits, upd = model.apply({"params": p, "batch_stats": s}, x, train=True,
                                              mutable=["batch_stats"])
                    s = upd["batch_stats"]
                else:
                    logits = model.apply({"params": p}, x, train=True)
                return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), s

            @jax.jit
            def step(p, s, o, loss_fn=loss_fn, opt=opt):
                (loss, s), g = jax.value_and_grad(loss_fn, has_aux=True)(p, s)
                upd, o = opt.update(g, o, p)
                return optax.apply_updates(p, upd), s, o, loss

            params, stats, opt_state, loss = step(params, stats, opt_state)  # compile
            loss.block_until_ready()
            t0 = time.perf_counter()
            for _ in range(steps):
                params, stats, opt_state, loss = step(params, stats, opt_state)
            loss.block_until_ready()
            row[f"{label}_s_per_step"] = (time.perf_counter() - t0) / steps
            row[f"{label}_final_loss"] = float(loss)
        row["ratio"] = row["mbm7_s_per_step"] / row["fp32_s_per_step"]
        report[name] = row
        if save:
            save()
        print(f"{name:9s} step: fp32 {row['fp32_s_per_step'] * 1e3:8.2f} ms, mbm7 {row['mbm7_s_per_step'] * 1e3:8.2f} "
              f"ms -> {row['ratio']:.2f}x ({report['backend']})")
    return report


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096, help="M = N = K")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--mults", default="mbm7,mbm10", help="comma-separated names for amsim.multipliers.get")
    parser.add_argument("--algos", default="auto,expand16,expand,wide,gather",
                        help="float kernels to time (expand: m <= 7; expand16: 2 <= m <= 7 with a bf16-exact table; "
                             "wide: any m >= 2)")
    parser.add_argument("--no-check", action="store_true", help="skip the golden spot check")
    parser.add_argument("--no-wgrad", action="store_true", help="skip the weight-gradient shapes")
    parser.add_argument("--wgrad-batch", type=int, default=128,
                        help="batch size behind the LeNet-5 shapes (weight gradients, host time per call)")
    parser.add_argument("--overhead-calls", type=int, default=100, help="calls per host-time measurement (0: skip)")
    parser.add_argument("--no-int8", action="store_true", help="skip the int8 table GEMM")
    parser.add_argument("--jax", action="store_true", help="also time LeNet-5/ResNet-20 training steps vs plain JAX")
    parser.add_argument("--jax-only", action="store_true", help="only the training-step comparison")
    parser.add_argument("--jax-models", default="lenet5,resnet20", help="models for the training-step comparison")
    parser.add_argument("--jax-batch", type=int, default=128)
    parser.add_argument("--jax-steps", type=int, default=10)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    report = {}

    def save():  # after every measurement: a run stopped by a time limit keeps what it measured
        if args.json:
            with open(args.json + ".tmp", "w") as fh:
                json.dump(report, fh, indent=2)
            os.replace(args.json + ".tmp", args.json)

    jax_models = args.jax_models.split(",")
    if args.jax_only:
        jax_training_step_comparison(args.jax_steps, args.jax_batch, jax_models, report, save)
        return 0

    import cupy as cp

    import amsim
    from amsim import gpu

    card, sms, hz = _device(cp)
    report.update({
        "card": card,
        "sms": sms,
        "boost_clock_mhz": hz / 1e6,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cuda_runtime": cp.cuda.runtime.runtimeGetVersion(),
        "cupy": cp.__version__,
        "size": args.size,
        "reps": args.reps,
        "wgrad_batch": args.wgrad_batch,
        "results": [],
    })
    print(f"{card}  {report['date']}  CUDA runtime {report['cuda_runtime']}  CuPy {cp.__version__}")
    n = args.size
    rng = np.random.default_rng(0)
    a = cp.asarray(rng.standard_normal((n, n)).astype(np.float32))
    b = cp.asarray(rng.standard_normal((n, n)).astype(np.float32))
    flops = 2.0 * n * n * n
    t_ref = _time_it(lambda: cp.matmul(a, b), args.reps, cp)
    report["cublas_fp32_s"] = t_ref
    save()
    print(f"cupy.matmul fp32 (TF32 off): {t_ref * 1e3:9.2f} ms  {flops / t_ref / 1e12:7.2f} TFLOP/s")
    for name in args.mults.split(","):
        mult = amsim.multipliers.get(name)
        m = mult.mantissa_bits
        bf16_table = gpu.bf16_pair_table(mult.table.values) is not None
        for algo in args.algos.split(","):
            unusable = {"expand": m > 7, "expand16": not bf16_table, "wide": m < 2}
            if unusable.get(algo, False):
                continue
            kw = {} if algo == "auto" else {"algo": algo}
            fp16_table = gpu.fp16_table(mult.table.values) is not None
            chosen = algo if algo != "auto" else gpu.choose_algo(m, 1, n, n, *gpu.device_limits(),
                                                                   bf16_table=bf16_table, fp16_table=fp16_table)
            out = cp.empty((n, n), np.float32)
            t = _time_it(functools.partial(gpu.gemm, a, b, mult, out=out, **kw), args.reps, cp)
            ok = None if args.no_check else _spot_check(a, b, out, mult, cp)
            row = {"mult": name, "algo": algo, "kernel": chosen, "seconds": t, "tflops": flops / t / 1e12,
                   "ratio_vs_cublas": t_ref / t, "golden_rows_match": ok, **_rates((n, n, n), chosen, mult, t, cp)}
            report["results"].append(row)
            save()
            print(f"{name:8s} {algo:8s} ({chosen:8s}): {t * 1e3:9.2f} ms  {row['tflops']:7.2f} TFLOP/s  "
                  f"{100 * row['ratio_vs_cublas']:6.1f}% of cuBLAS  golden rows: {ok}")
    if not args.no_wgrad:
        weight_gradient_shapes(args.reps, cp, not args.no_check, args.wgrad_batch, report.setdefault("wgrad", []),
                               save)
    if args.overhead_calls:
        host_overhead(cp, args.wgrad_batch, args.overhead_calls, report.setdefault("host", []), save)
    if not args.no_int8:
        int8_gemm(args.size, args.reps, cp, not args.no_check, report.setdefault("int8", []), save)
    if args.jax:
        jax_training_step_comparison(args.jax_steps, args.jax_batch, jax_models, report.setdefault("jax", {}), save)
    bad = [r for r in report["results"] + report.get("wgrad", []) + report.get("int8", [])
           if r["golden_rows_match"] is False]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
