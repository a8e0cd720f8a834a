"""The GPU check's results as a Markdown section for docs/performance.md.

    python benchmarks/gpu_report.py OUT_DIR > section.md

Reads ``bench_gpu.json`` and, where present, ``bench_jax.json`` from OUT_DIR (written by
scripts/gpu_check.sh, which also runs this into ``$OUT/performance.md``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

TARGET_GEMM = 0.35  # of cuBLAS FP32 at 4096^3, m = 7 and m = 10
TARGET_STEP = 3.0  # training step, times plain JAX FP32


def _golden(ok):
    return {True: "match", False: "**MISMATCH**", None: "not checked"}[ok]


def _rate(r):
    return f"{r['products_per_clock_per_sm']:.1f} ({r['estimated_products_per_clock_per_sm']:.1f})"


def gemm_section(rep) -> list[str]:
    """The GEMM tables; a run stopped by its time limit leaves a partial report, and what is missing says so."""
    n = rep["size"]
    lines = [f"### {rep['card']}, {rep['date'][:10]}", "",
             (f"{rep['sms']} SMs, boost clock {rep['boost_clock_mhz']:.0f} MHz; CUDA runtime {rep['cuda_runtime']}, "
              f"CuPy {rep['cupy']}; median of {rep['reps']} runs after a warm-up."), ""]
    if "cublas_fp32_s" not in rep:
        return [*lines, "The run stopped before the first timing."]
    ref = rep["cublas_fp32_s"]
    lines += [(f"Approximate GEMM at {n}^3 against `cupy.matmul` FP32 (TF32 off: {ref * 1e3:.2f} ms, "
               f"{2 * n**3 / ref / 1e12:.2f} TFLOP/s). Rate: products per clock per SM, measured "
               "(the estimate behind the automatic choice)."), "",
              "| multiplier | kernel | ms | TFLOP/s | of cuBLAS FP32 | rate (estimate) | golden rows |",
              "| --- | --- | ---: | ---: | ---: | ---: | --- |"]
    for r in rep["results"]:
        kernel = r["kernel"] if r["algo"] != "auto" else f"auto: {r['kernel']}"
        lines.append(f"| {r['mult']} | {kernel} | {r['seconds'] * 1e3:.2f} | {r['tflops']:.2f} | "
                     f"{100 * r['ratio_vs_cublas']:.1f} % | {_rate(r)} | {_golden(r['golden_rows_match'])} |")
    best = {}
    for r in rep["results"]:
        best[r["mult"]] = max(best.get(r["mult"], 0.0), r["ratio_vs_cublas"])
    verdicts = [f"{m}: best {100 * v:.1f} % ({'meets' if v >= TARGET_GEMM else 'misses'} the "
                f"{100 * TARGET_GEMM:.0f} % target)" for m, v in best.items()]
    lines += ["", "; ".join(verdicts) + "."]
    for part, what in (("wgrad", "weight-gradient shapes"), ("int8", "int8 GEMM")):
        if part not in rep:
            lines += ["", f"The {what}: not run (or not reached before the time limit)."]
    if rep.get("wgrad"):
        lines += ["", f"LeNet-5 convolution weight gradients at batch {rep['wgrad_batch']} (M x K x N, mbm7):", "",
                  "| shape | kernel | ms | cuBLAS FP32 ms | of cuBLAS | rate (estimate) | golden rows |",
                  "| --- | --- | ---: | ---: | ---: | ---: | --- |"]
        for r in rep["wgrad"]:
            kernel = r["kernel"] if r["algo"] != "auto" else f"auto: {r['kernel']}"
            lines.append(f"| {'x'.join(map(str, r['shape']))} | {kernel} | {r['seconds'] * 1e3:.3f} | "
                         f"{r['cublas_seconds'] * 1e3:.3f} | {100 * r['ratio_vs_cublas']:.1f} % | {_rate(r)} | "
                         f"{_golden(r['golden_rows_match'])} |")
    if rep.get("host"):
        lines += ["", (f"Host time per call, LeNet-5 shapes at batch {rep['wgrad_batch']} (mbm7): enqueueing the work "
                       "(no synchronisation), and the wall time per call with the GPU work; \"planned\" clears the "
                       "plan cache before every call, \"replayed\" is what a training step sees:"), "",
                  "| operation | shape | how | host us/call | wall us/call |", "| --- | --- | --- | ---: | ---: |"]
        for r in rep["host"]:
            lines.append(f"| {r['op']} | {r['shape']} | {r['how']} | {r['host_us']:.1f} | {r['wall_us']:.1f} |")
    if rep.get("int8"):
        lines += ["", f"int8 multiplier (exact_int(8), table GEMM) at {n}^3 against `cupy.matmul` FP32:", "",
                  "| kernel | ms | of cuBLAS FP32 | golden rows |", "| --- | ---: | ---: | --- |"]
        for r in rep["int8"]:
            lines.append(f"| {r['algo']} | {r['seconds'] * 1e3:.2f} | {100 * r['ratio_vs_cublas']:.1f} % | "
                         f"{_golden(r['golden_rows_match'])} |")
    return lines


def jax_section(rep) -> list[str]:
    lines = ["", (f"Training step, batch {rep['batch']}, every product through mbm7 (forward and both gradients) "
                  f"against plain JAX FP32, {rep['steps']} steps after compilation, JAX backend {rep['backend']}:"), "",
             "| model | FP32 ms/step | mbm7 ms/step | ratio | target <= 3x |", "| --- | ---: | ---: | ---: | --- |"]
    for name in ("lenet5", "resnet20"):
        if name in rep:
            r = rep[name]
            lines.append(f"| {name} | {r['fp32_s_per_step'] * 1e3:.2f} | {r['mbm7_s_per_step'] * 1e3:.2f} | "
                         f"{r['ratio']:.2f}x | {'met' if r['ratio'] <= TARGET_STEP else 'missed'} |")
    return lines


def report(out_dir) -> str:
    out = Path(out_dir)
    if (out / "bench_gpu.json").exists():
        lines = gemm_section(json.loads((out / "bench_gpu.json").read_text()))
    else:
        lines = ["No bench_gpu.json: the GPU benchmark did not get to its first result (see gpu_check.log)."]
    if (out / "bench_jax.json").exists():
        lines += jax_section(json.loads((out / "bench_jax.json").read_text()))
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    sys.stdout.write(report(sys.argv[1]))
