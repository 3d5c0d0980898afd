"""``benchmarks/bench_training_step.py`` on a tiny model: every variant trains, the JSON is stamped, and the
switches do what they say (on every backend the first layer's backward computes the input-time gradient only in the
``input_grad`` variant, which torch does not have; the readout walks give the same training)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("numba")
# Found, not imported: keras picks its backend at import, and this process runs the array-library tests.
if importlib.util.find_spec("keras") is None:
    pytest.skip("needs keras", allow_module_level=True)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("backend", ["jax", "torch", "tensorflow"])
def test_quick_run_checks_its_switches(backend, tmp_path):
    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"needs {backend}")
    out = tmp_path / "step.json"
    env = {**os.environ, "NUMBA_NUM_THREADS": "1"}
    subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "bench_training_step.py"), "--backend", backend,
                    "--hidden", "12", "--batches", "2", "--batch-size", "8", "--repeats", "1", "--output", str(out)],
                   check=True, env=env, cwd=str(tmp_path), capture_output=True)
    report = json.loads(out.read_text())
    assert report["benchmark"] == "bench_training_step" and "commit" in report["stamp"]
    assert report["backend"] == backend and report["data"] == "synthetic"
    expected = ["default", "per_neuron_walk"] if backend == "torch" else ["default", "input_grad", "per_neuron_walk"]
    assert list(report["variants"]) == expected and sorted(report["speedups"]) == sorted(expected[1:])
    rows = report["variants"]
    assert all(row["step_s"] > 0 for row in rows.values())
    # One LIF layer fed with data: its backward never computes the input gradient, except when switched on.
    for name, row in rows.items():
        assert row["lif_backward_calls_with_input_grad"] + row["lif_backward_calls_without"] > 0, name
        assert (row["lif_backward_calls_with_input_grad"] > 0) == (name == "input_grad"), (name, row)
