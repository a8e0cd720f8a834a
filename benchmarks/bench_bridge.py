"""Overhead of the JAX bridge over calling the amsim kernel directly (same multiplier, same sizes, same run).

    python benchmarks/bench_bridge.py [--repeats 20]
"""

from __future__ import annotations

import argparse
import datetime
import functools
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

import amsim
from amsim import nn as ann


def best_of(fn, repeats):
    fn()  # warm-up: compilation
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--sizes", type=int, nargs="*", default=[256, 512])
    args = ap.parse_args()
    mult = amsim.multipliers.mbm(7)
    dg = ann.dot_general(mult)
    dn = (((1,), (0,)), ((), ()))
    print(f"# amsim JAX-bridge overhead, {datetime.date.today()}, {platform.processor() or platform.machine()}, "
          f"jax {jax.__version__}, devices {jax.devices()}")
    print(f"{'size':>6} {'kernel ms':>10} {'bridge ms':>10} {'overhead':>9}")
    rng = np.random.default_rng(0)
    for n in args.sizes:
        a = rng.standard_normal((n, n), dtype=np.float32)
        b = rng.standard_normal((n, n), dtype=np.float32)
        out = np.empty((n, n), np.float32)
        ja, jb = jnp.asarray(a), jnp.asarray(b)
        f = jax.jit(lambda x, y: dg(x, y, dn))
        t_kernel = best_of(functools.partial(amsim.matmul, a, b, mult, out=out), args.repeats)
        t_bridge = best_of(lambda f=f, ja=ja, jb=jb: f(ja, jb).block_until_ready(), args.repeats)
        assert np.array_equal(np.asarray(f(ja, jb)).view(np.uint32), amsim.matmul(a, b, mult).view(np.uint32))
        print(f"{n:>6} {1e3 * t_kernel:10.3f} {1e3 * t_bridge:10.3f} {100 * (t_bridge / t_kernel - 1):8.1f}%")


if __name__ == "__main__":
    main()
