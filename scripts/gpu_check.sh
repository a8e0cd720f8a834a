#!/usr/bin/env bash
# One command for a GPU machine (CuPy, NVRTC, a C++ compiler; no network needed), run from the repository root:
#
#     OUT=./gpu_out bash scripts/gpu_check.sh
#
# 1. card, driver and library versions;
# 2. fills CuPy's kernel cache in parallel (every instantiation, fully optimised; minutes saved below);
# 3. pytest -m gpu (tests/test_gpu.py, and the CuPy cases of tests/test_backends.py and test_aliasing.py: CuPy
#    results bit for bit against the golden model, JAX bridge on the GPU);
# 4. benchmarks/bench_gpu.py (4096^3 approximate GEMM, every kernel, vs cuBLAS FP32);
# 5. LeNet-5 / ResNet-20 training step, every product approximate, vs plain JAX FP32 (bench_gpu.py --jax-only);
# 6. registers / spills per kernel for this card's architecture;
# 7. the NVRTC compile tests with this image's NVRTC (every instantiation, sm_80 and sm_90);
# 8. $OUT/performance.md: steps 4 and 5 as a Markdown section for docs/performance.md (benchmarks/gpu_report.py).
# $OUT receives four files (a device run returns at most eight): gpu_check.log (every step's whole output, in
# order), bench_gpu.json, bench_jax.json and performance.md. Every step has its own time limit; the whole run
# stays under 5 minutes. The exit status is non-zero if any step failed. (Limits add up to 300 s; a step that
# runs out leaves its partial output in the log, and the JSON files hold what was measured before.)
#
# AMSIM_EMULATED_GPU=1: a dry run on a machine without a GPU (`make gpu-check-emulated`). The GPU steps then use
# the emulated CuPy of tests/support/emulated_gpu (kernels under a host emulation, minutes per 4096^3 GEMM), the
# benchmarks run at small sizes and the JAX bridge's GPU test is left out: this checks the script and the code
# paths, not the GPU; its numbers mean nothing.
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-./gpu_out}"
mkdir -p "$OUT"
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}."
export CUPY_TF32=0
export AMSIM_REQUIRE_GPU="${AMSIM_REQUIRE_GPU:-1}"  # tests/test_gpu.py fails instead of skipping when CuPy sees no device
export XLA_PYTHON_CLIENT_PREALLOCATE=false  # JAX and CuPy share the card
export PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"
G=()  # prefix of the steps that use the GPU
BENCH=()
JAX_BENCH=()
DESELECT=()
SMI=nvidia-smi
if [ "${AMSIM_EMULATED_GPU:-0}" = 1 ]; then
    G=(env "PYTHONPATH=tests/support/emulated_gpu:$PYTHONPATH")
    BENCH=(--size 128 --reps 1 --wgrad-batch 1 --overhead-calls 2)
    JAX_BENCH=(--jax-models lenet5 --jax-batch 2 --jax-steps 1)
    DESELECT=(--deselect tests/test_gpu.py::test_jax_bridge_on_gpu_forward_and_gradients)
    SMI="echo 'emulated GPU (AMSIM_EMULATED_GPU=1): a dry run, no device'"
fi
# pyproject's addopts name plugins of the full test environment (nbmake); a GPU image may lack them
PYTEST=("$PY" -m pytest -o "addopts=-ra --strict-markers --strict-config" -p no:cacheprovider)
status=0
LOG="$OUT/gpu_check.log"
: >"$LOG"
step() {  # step NAME TIMEOUT_S CMD...: run, append its output to $LOG, show its end, remember failures
    local name=$1 limit=$2
    shift 2
    echo "== $name ($(date -u +%H:%M:%S), limit ${limit}s)" | tee -a "$LOG"
    local start
    start=$(stat -c %s "$LOG")
    timeout --kill-after=5 "$limit" "$@" >>"$LOG" 2>&1  # straight into the log: kept even if the run is killed
    local rc=$?
    tail -c +$((start + 1)) "$LOG" | tail -n 25
    echo "== $name: exit $rc" | tee -a "$LOG"
    [ "$rc" -eq 0 ] || status=1
}

step env 10 "${G[@]}" bash -c "$SMI; date -u; git rev-parse HEAD 2>/dev/null; $PY -c 'import cupy, sys; \
print(sys.version); print(\"cupy\", cupy.__version__, \"runtime\", cupy.cuda.runtime.runtimeGetVersion(), \
\"driver\", cupy.cuda.runtime.driverGetVersion()); p = cupy.cuda.runtime.getDeviceProperties(0); \
print(p[\"name\"], \"sm_%d%d\" % (p[\"major\"], p[\"minor\"]), p[\"multiProcessorCount\"], \"SMs\", \
p[\"sharedMemPerBlockOptin\"], \"B smem/block\")'"
step precompile 50 "${G[@]}" "$PY" -c "import os, time; from amsim import gpu; t = time.time(); \
n = gpu.precompile(workers=min(16, os.cpu_count() or 1)); print(n, 'kernels in', round(time.time() - t, 1), 's')"
step pytest_gpu 80 "${G[@]}" "${PYTEST[@]}" -m gpu -q tests/test_gpu.py tests/test_backends.py tests/test_aliasing.py \
    "${DESELECT[@]}"
step bench_gpu 70 "${G[@]}" "$PY" benchmarks/bench_gpu.py "${BENCH[@]}" --json "$OUT/bench_gpu.json"
step bench_jax 50 "${G[@]}" "$PY" benchmarks/bench_gpu.py --jax-only "${JAX_BENCH[@]}" --json "$OUT/bench_jax.json"
ARCH=$("${G[@]}" "$PY" -c 'import cupy; p = cupy.cuda.runtime.getDeviceProperties(0); \
print("sm_%d%d" % (p["major"], p["minor"]))' 2>/dev/null || echo sm_90)  # the env step shows a failure here
step resources 10 bash -c "set -e; $PY -m amsim.kernels.cuda._source --arch $ARCH --filter '<7, 0>'; \
$PY -m amsim.kernels.cuda._source --arch sm_90 --filter '<11, 1>'"
# the NVRTC compile tests once more, with this image's NVRTC (CI runs them, and the host emulation, on every
# push); in parallel where pytest-xdist is installed
XDIST=()
"$PY" -c "import xdist" 2>/dev/null && XDIST=(-n 6)
step nvrtc_compile 25 "${PYTEST[@]}" "${XDIST[@]}" -q tests/test_cuda_compile.py
step report 5 bash -c "$PY benchmarks/gpu_report.py '$OUT' > '$OUT/performance.md' && cat '$OUT/performance.md'"
echo "logs in $OUT; overall exit $status"
exit $status
