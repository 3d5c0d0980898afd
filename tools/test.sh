#!/usr/bin/env bash
# The project's test command (README "Tests"): the CUDA compile check, the array library and datasets, then the
# Keras layers and examples once per Keras backend (KERAS_BACKEND is read at import, so one process per backend).
# GPU tests carry the `gpu` marker and skip without a device.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m spikescan.cuda --check
python -m pytest -q tests --ignore=tests/test_keras.py --ignore=tests/test_examples.py
for backend in torch jax; do
  echo "== Keras backend: $backend"
  KERAS_BACKEND=$backend python -m pytest -q tests/test_keras.py $( [ -f tests/test_examples.py ] && echo tests/test_examples.py )
done
