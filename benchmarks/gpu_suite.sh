#!/usr/bin/env bash
# Every GPU measurement of the project in one command, for a machine with an NVIDIA GPU, CuPy and (for the last
# step) JAX with CUDA:
#   1. the GPU tests (`pytest -m gpu`), the Keras tests on CUDA tensors (torch backend, if torch sees the GPU) and
#      the jax backend's zero-copy buffer route (its GPU test, if jax sees the GPU);
#   2. the delayed-queue comparison (generic argsort vs kernels/queue.cu);
#   3. the layer sweep: fused sequential vs scan vs auto, both backward kernels, with and without delays;
#   4. the jax.lax.associative_scan comparison of the 2 x 512 SHD network (batch 256 and 64), with every spikescan
#      configuration of bench_lif_jax.SPIKESCAN_VARIANTS side by side.
# Environment: pip install -e ".[cuda,keras,test]" torch (a CUDA build) "jax[cuda12]"; a missing piece fails or
# skips only its own step.
# usage: bash benchmarks/gpu_suite.sh OUTDIR [TAG]
# writes OUTDIR/gpu_<TAG>_{tests.log,queues.json,sweep.json,jax.json}; TAG defaults to the device name
# (e.g. nvidia_h100_80gb_hbm3). Each step runs even if an earlier one failed; the exit status is the first failure.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: gpu_suite.sh OUTDIR [TAG]}
mkdir -p "$out"
tag=${2:-$(python -c "import cupy, re; n = cupy.cuda.runtime.getDeviceProperties(0)['name']; n = n.decode() if isinstance(n, bytes) else n; print(re.sub('[^a-z0-9]+', '_', n.lower()).strip('_'))")}
export PYTHONUNBUFFERED=1
status=0
step() { "$@" || { rc=$?; echo "step failed (exit $rc): $*"; [ "$status" -ne 0 ] || status=$rc; }; }
log="$out/gpu_${tag}_tests.log"
step bash -c "python -m pytest -q -m gpu tests --ignore=tests/test_keras.py --ignore=tests/test_examples.py 2>&1 | tee '$log'"
step bash -c "KERAS_BACKEND=torch python -m pytest -q tests/test_keras.py 2>&1 | tail -5 | tee -a '$log'"
step bash -c "XLA_PYTHON_CLIENT_MEM_FRACTION=0.5 KERAS_BACKEND=jax python -m pytest -q -rs -m gpu tests/test_keras.py 2>&1 | tail -5 | tee -a '$log'"
step python benchmarks/bench_lif_cuda.py --queues-only --repeats 3 --output "$out/gpu_${tag}_queues.json"
step python benchmarks/bench_lif_cuda.py --repeats 3 --output "$out/gpu_${tag}_sweep.json"
step python benchmarks/bench_lif_cuda.py --jax-only --jax-batch 256 64 --repeats 3 --output "$out/gpu_${tag}_jax.json"
exit $status
