"""One LeNet-5 training step (batch 128, Adam) with every product approximate, against plain JAX float32.

    python benchmarks/bench_train_step.py [--multiplier mbm7] [--repeats 15] [--json out.json]

Both steps are jitted and timed in alternating blocks in the same process (best of ``--repeats`` after a
warm-up), so the ratio holds even where absolute times drift. The approximate step runs the forward products
and both gradient products through the multiplier; its GEMMs (the CPU kernel calls inside the step) are
listed with their shapes, operand layouts and share of the step, which says where the time goes.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import amsim  # noqa: E402
from amsim import models  # noqa: E402
from amsim.kernels.cpu import _gemm  # noqa: E402
from amsim.nn import approximate  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_cpu_gemm import describe_machine  # noqa: E402


def make_step(model, params):
    opt = optax.adam(1e-3)

    def loss_fn(p, x, y):
        logits = model.apply({"params": p}, x, train=True)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    @jax.jit
    def step(p, o, x, y):
        loss, g = jax.value_and_grad(loss_fn)(p, x, y)
        upd, o = opt.update(g, o, p)
        return optax.apply_updates(p, upd), o, loss

    return step, opt.init(params)


def _layout(x) -> str:
    """"r" for rows contiguous (row-major), "c" for columns contiguous (a transposed view), "-" otherwise."""
    return "r" if x.strides[-1] == x.itemsize else ("c" if x.strides[-2] == x.itemsize else "-")


class GemmLog:
    """Wraps the CPU GEMM drivers to record (kind, batch, M, K, N) and seconds of every call. A conv GEMM
    ("conv f32": its left operand the patch matrix of a padded input, read from the input) counts once, also
    where it writes the patch matrix and runs the plain GEMM on it."""

    _KINDS = {"gemm_f32": "f32", "gemm_i32": "i32", "gemm_conv_f32": "conv f32"}  # driver -> kind

    def __init__(self):
        self.calls = collections.defaultdict(lambda: [0, 0.0])
        self.on = False
        self._fns = {n: getattr(_gemm, n) for n in self._KINDS}
        self._nested = threading.local()  # (XLA runs callbacks on several threads)

    def __enter__(self):
        def wrap(name, fn):
            def run(a, *args):
                if not self.on or getattr(self._nested, "on", False):
                    return fn(a, *args)
                self._nested.on = True
                t0 = time.perf_counter()
                try:
                    r = fn(a, *args)
                finally:
                    self._nested.on = False
                if name == "conv f32":  # (xp, geometry, b, out, ...)
                    b, out = args[1], args[2]
                    key = (name, out.shape[0], out.shape[1], b.shape[1], out.shape[2], "-" + _layout(b))
                else:
                    b = args[0]
                    key = (name, a.shape[0], a.shape[1], a.shape[2], b.shape[2], _layout(a) + _layout(b))
                c = self.calls[key]
                c[0] += 1
                c[1] += time.perf_counter() - t0
                return r
            return run

        import amsim.kernels.cpu as cpu

        self._mods = [m for m in (cpu, _gemm) if hasattr(m, "gemm_f32")]
        for m in self._mods:
            for n, kind in self._KINDS.items():
                setattr(m, n, wrap(kind, self._fns[n]))
        return self

    def __exit__(self, *exc):
        for m in self._mods:
            for n in self._KINDS:
                setattr(m, n, self._fns[n])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--multiplier", default="mbm7", help="an amsim multiplier spec (default mbm7)")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--json", default=None, help="also write the results to this JSON file")
    ap.add_argument("--default-malloc", action="store_true",
                    help="leave glibc's allocator as it is (the amsim commands make it reuse freed memory)")
    args = ap.parse_args(argv)
    malloc = "default" if args.default_malloc else ("reuse freed memory (amsim.reuse_freed_memory)"
                                                    if amsim.reuse_freed_memory() else "default (no mallopt)")
    mult = amsim._train.resolve_multiplier(args.multiplier)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((args.batch, 28, 28, 1), dtype=np.float32))
    y = jnp.asarray(rng.integers(0, 10, args.batch))
    base = models.get("lenet5", num_classes=10)
    params = base.init(jax.random.PRNGKey(0), x[:1])["params"]
    approx = approximate(base, {"*": mult})
    steps = {"fp32": make_step(base, params), "approx": make_step(approx, params)}

    def run(name):
        step, o = steps[name]
        p, _, loss = step(params, o, x, y)
        jax.block_until_ready(p)

    best = {k: float("inf") for k in steps}
    for k in steps:
        run(k)  # compile
    for _ in range(2):
        for k in steps:
            time.sleep(0.25)
            run(k)
            for _ in range(max(1, args.repeats // 2)):
                t0 = time.perf_counter()
                run(k)
                best[k] = min(best[k], time.perf_counter() - t0)
    with GemmLog() as log:
        log.on = True
        reps = 5
        t0 = time.perf_counter()
        for _ in range(reps):
            run("approx")
        logged_step = (time.perf_counter() - t0) / reps
    machine = describe_machine()
    machine["jax"] = jax.__version__
    machine["vector_width"] = _gemm._machine.costs().width
    machine["malloc"] = malloc
    ratio = best["approx"] / best["fp32"]
    print(f"# LeNet-5 training step, batch {args.batch}, {mult.name} (forward and both gradient products)")
    for k, v in machine.items():
        print(f"- {k}: {v}")
    print(f"\nfp32 step {best['fp32'] * 1e3:.2f} ms, approximate step {best['approx'] * 1e3:.2f} ms, "
          f"ratio {ratio:.2f}")
    rows = sorted(log.calls.items(), key=lambda kv: -kv[1][1])
    print(f"\nGEMMs of one approximate step (timed separately: {logged_step * 1e3:.2f} ms per step)")
    print("| kind | batch x M x K x N | layouts (A, B) | calls/step | ms/step | share |")
    print("| --- | --- | --- | ---: | ---: | ---: |")
    gemms = []
    for (kind, nb, m_, k_, n_, lay), (cnt, sec) in rows:
        per = sec / reps
        gemms.append({"kind": kind, "shape": [nb, m_, k_, n_], "layouts": lay, "calls": cnt // reps,
                      "ms": per * 1e3})
        print(f"| {kind} | {nb} x {m_} x {k_} x {n_} | {lay} | {cnt // reps} | {per * 1e3:.2f} | "
              f"{100 * per / logged_step:.0f} % |")
    if args.json:
        from amsim._io import atomic_write

        atomic_write(args.json, json.dumps({"machine": machine, "fp32_s": best["fp32"], "approx_s": best["approx"],
                                            "ratio": ratio, "gemms": gemms}, indent=1, default=str))


if __name__ == "__main__":
    main()
