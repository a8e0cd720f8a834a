"""`make demo`: build multiplier tables, print their error metrics and time an approximate GEMM."""

from __future__ import annotations

import time

import numpy as np

import amsim


def main() -> None:
    mults = [amsim.multipliers.get(n) for n in ("bf16", "exact_truncated", "mbm", "mitchell")]
    for m in mults:
        t0 = time.perf_counter()
        _ = m.table
        print(f"built {m.name:<18} table (2**{2 * m.mantissa_bits} entries) in {time.perf_counter() - t0:.3f} s")
    print()
    print(amsim.format_table([m.stats() for m in mults]))
    rng = np.random.default_rng(0)
    a = rng.standard_normal((512, 512), dtype=np.float32)
    b = rng.standard_normal((512, 512), dtype=np.float32)
    print()
    amsim.matmul(a, b, mults[2])  # compile
    t0 = time.perf_counter()
    c = amsim.matmul(a, b, mults[2])
    t_approx = time.perf_counter() - t0
    t0 = time.perf_counter()
    ref = a @ b
    t_np = time.perf_counter() - t0
    rel = np.abs(c - ref).max() / np.abs(ref).max()
    print(f"512^3 GEMM with {mults[2].name}: {t_approx * 1e3:.1f} ms (numpy float32: {t_np * 1e3:.1f} ms); "
          f"max |error| / max |C| = {rel:.3e}")


if __name__ == "__main__":
    main()
