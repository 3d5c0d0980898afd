#!/usr/bin/env bash
# Every GPU measurement of the project in one command, for a machine with an NVIDIA GPU, CuPy and JAX with CUDA:
#   1. benchmarks/gpu_perf.py, the one-call protocol of PERF.md section 5 (correctness gate, the 2 x 512 SHD network
#      at batch 256 / 32 / 1 beside JAX float32 and float64, batch-1 baselines, layer sweep, ncu when installed;
#      ~450 s, one JSON);
#   2. the GPU tests (`pytest -m gpu`), the Keras tests on CUDA tensors (torch backend, if torch sees the GPU) and
#      the jax backend's zero-copy buffer route (its GPU test, if jax sees the GPU);
#   3. with --all, the older bench_lif_cuda.py runs: delayed-queue comparison, the full layer sweep and the
#      jax.lax.associative_scan comparison at batch 256 and 64.
# Environment: pip install -e ".[cuda,keras,test]" torch (a CUDA build) "jax[cuda12]"; a missing piece fails or
# skips only its own step.
# usage: bash benchmarks/gpu_suite.sh OUTDIR [TAG] [--all]
# writes OUTDIR/gpu_perf_<TAG>.{json,log}, OUTDIR/gpu_<TAG>_tests.log (and with --all
# OUTDIR/gpu_<TAG>_{queues,sweep,jax}.json); TAG defaults to the device name (e.g. nvidia_h100_80gb_hbm3).
# Each step runs even if an earlier one failed; the exit status is the first failure. A step's pipeline fails when
# any command in it fails (`set -o pipefail` inside every `bash -c`: a shell started by bash -c does not inherit it).
# For a machine lent for a fixed time: GPU_PERF_ARGS adds arguments to gpu_perf.py (e.g. "--budget-s 330
# --ncu-variants default m3_table_scan m3_staged"), TESTS_TIMEOUT caps each test step at that many seconds
# (`timeout`; a capped step fails with exit 124 and keeps its log). The first run compiles every kernel (cold
# cache), which adds about a minute to the GPU tests.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: gpu_suite.sh OUTDIR [TAG] [--all]}
all=0
args=()
for a in "${@:2}"; do
  if [ "$a" = "--all" ]; then all=1; else args+=("$a"); fi
done
mkdir -p "$out"
tag=${args[0]:-$(python -c "import cupy, re; n = cupy.cuda.runtime.getDeviceProperties(0)['name']; n = n.decode() if isinstance(n, bytes) else n; print(re.sub('[^a-z0-9]+', '_', n.lower()).strip('_'))")}
tag=${tag:-unknown_gpu}
export PYTHONUNBUFFERED=1
status=0
step() { "$@" || { rc=$?; echo "step failed (exit $rc): $*"; [ "$status" -ne 0 ] || status=$rc; }; }
ncu_flag=$(command -v ncu >/dev/null 2>&1 && echo --ncu || true)
step bash -c "set -o pipefail; python benchmarks/gpu_perf.py $ncu_flag ${GPU_PERF_ARGS:-} --output '$out/gpu_perf_${tag}.json' 2>&1 | tee '$out/gpu_perf_${tag}.log'"
log="$out/gpu_${tag}_tests.log"
cap=${TESTS_TIMEOUT:+timeout $TESTS_TIMEOUT}
step bash -c "set -o pipefail; $cap python -m pytest -q -m gpu tests --ignore=tests/test_keras.py --ignore=tests/test_examples.py 2>&1 | tee '$log'"
step bash -c "set -o pipefail; KERAS_BACKEND=torch $cap python -m pytest -q tests/test_keras.py 2>&1 | tail -5 | tee -a '$log'"
step bash -c "set -o pipefail; XLA_PYTHON_CLIENT_MEM_FRACTION=0.5 KERAS_BACKEND=jax $cap python -m pytest -q -rs -m gpu tests/test_keras.py 2>&1 | tail -5 | tee -a '$log'"
if [ "$all" -eq 1 ]; then
  step python benchmarks/bench_lif_cuda.py --queues-only --repeats 3 --output "$out/gpu_${tag}_queues.json"
  step python benchmarks/bench_lif_cuda.py --repeats 3 --output "$out/gpu_${tag}_sweep.json"
  step python benchmarks/bench_lif_cuda.py --jax-only --jax-batch 256 64 --repeats 3 --output "$out/gpu_${tag}_jax.json"
fi
exit $status
