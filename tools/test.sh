#!/usr/bin/env bash
# The project's test command (README "Quickstart"): the README's results tables against their JSON
# (benchmarks/report.py --check), the CUDA compile check, the array library and datasets, then the
# Keras layers, examples and learning benchmark once per Keras backend (KERAS_BACKEND is read at import, so one
# process per backend). GPU tests carry the `gpu` marker and skip without a device.
set -euo pipefail
cd "$(dirname "$0")/.."
# The README's results tables agree with the JSON results they are rendered from (standard library only).
python benchmarks/report.py --check
python -m spikescan.cuda --check
keras_tests=()
for f in tests/test_keras.py tests/test_keras_learning.py tests/test_examples.py tests/test_resume.py tests/test_learning_bench.py tests/test_plot.py tests/test_nir.py tests/test_distributed.py tests/test_keras_time_constants.py tests/test_keras_recurrent.py tests/test_keras_first_spike.py tests/test_time_units_bench.py; do
  [ -f "$f" ] && keras_tests+=("$f")
done
# Cases marked `slow` (larger fuzzing runs) are left to `python -m pytest -m slow tests`.
# pytest-xdist: one worker per core (at most 4), whole files per worker (module fixtures run once); SPIKESCAN_TEST_
# WORKERS=0 runs in this process.
workers=${SPIKESCAN_TEST_WORKERS:-$(python -c "import os; print(min(4, len(os.sched_getaffinity(0))))")}
parallel=()
if [ "$workers" -gt 1 ]; then parallel=(-n "$workers" --dist loadfile); fi
python -m pytest -q "${parallel[@]}" -m "not slow" tests $(printf -- '--ignore=%s ' "${keras_tests[@]}")
for backend in torch jax tensorflow; do
  echo "== Keras backend: $backend"
  KERAS_BACKEND=$backend python -m pytest -q "${parallel[@]}" "${keras_tests[@]}"
done
