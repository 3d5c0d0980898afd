"""``benchmarks/gpu_perf.py``, the one-call GPU protocol, without a GPU.

The dry run (every stage on the CPU through the kernels' host emulation, tiny shapes) must write the JSON a GPU run
writes: every stage with a status, the gate's checks per variant, well-formed speedups and the floor. The pieces a
dry run cannot reach on its own are checked directly: a gate check that sees a difference fails, a stage that hangs
is killed at its timeout with its partial results kept, and a variant that failed the gate is not timed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time

import numpy as np
import pytest

import spikescan as ss
from spikescan.cuda import _hostemu

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import gpu_perf  # noqa: E402

from tolerances import TOL  # noqa: E402

STATUSES = {"ok", "skipped", "failed", "timeout"}


def _jax_available():
    import importlib.util

    try:
        return importlib.util.find_spec("jax") is not None
    except (ImportError, ValueError):
        return False


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    if _hostemu.compiler() is None:
        pytest.skip("no host C++ compiler for the kernel emulation")
    out = tmp_path_factory.mktemp("gpu_perf") / "perf.json"
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "gpu_perf.py"), "--dry-run", "--output",
                           str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    with open(out) as f:
        data = json.load(f)
    data["_seconds"] = time.perf_counter() - start
    data["_stdout"] = proc.stdout
    return data


def test_dry_run_stages(report):
    assert report["dry_run"] is True and report["benchmark"] == "gpu_perf"
    for key in ("commit", "dirty", "device"):
        assert key in report["stamp"]
    assert set(report["stages"]) == set(gpu_perf.STAGES)
    for name, stage in report["stages"].items():
        assert stage["status"] in STATUSES, (name, stage)
        assert stage["protocol_step"] == gpu_perf.STAGES[name][0]
        assert isinstance(stage.get("result"), dict)
    must_run = ["device", "gate", "network_large", "network_medium", "network_single", "baselines_single", "sweep"]
    assert [s for s in must_run if report["stages"][s]["status"] != "ok"] == []
    jax_status = report["stages"]["jax_medium"]["status"]
    assert jax_status == ("ok" if _jax_available() else "skipped"), report["stages"]["jax_medium"].get("reason")
    assert report["stages"]["ncu"]["status"] == "skipped"
    # The table is printed last: a remote run's reply keeps only the tail of the output.
    assert report["table"] and report["_stdout"].rstrip().endswith(report["table"][-1])


def test_dry_run_gate(report):
    gate = report["stages"]["gate"]["result"]
    assert set(gate["variants"]) == set(gpu_perf.VARIANTS) | {"step"}
    assert gate["tolerances"] == TOL["float64"]
    assert all(c["ok"] for c in gate["queues_bit_identical"].values())
    for name, entry in gate["variants"].items():
        assert entry["status"] == "pass", (name, entry.get("failed"), entry.get("reason"))
        checks = {c["check"] for c in entry["checks"]}
        for case in ("layer1", "layer2", "layer1_no_delays"):
            assert {f"{case}/counts", f"{case}/spike_event", f"{case}/times"} <= checks
            if name != "step":
                bwd = gpu_perf.VARIANTS[name]["backward"]
                grads = {f"{case}/backward_{bwd}/grad_{g}" for g in ("weights", "input_times", "threshold")}
                assert grads <= checks, (name, case)
                assert (f"{case}/backward_{bwd}/grad_delays" in checks) == (case != "layer1_no_delays")
    assert {k: v["status"] for k, v in report["gate"].items()} == {k: "pass" for k in gate["variants"]}
    # The gate's cases reach the tail that max_spikes does not record.
    assert gate["cases"]["layer2"]["neurons_over_max_spikes"] > 0


def test_dry_run_timings_memory_and_work(report):
    for role, batch in gpu_perf.CONFIG[True]["batches"].items():
        net = report["stages"][f"network_{role}"]["result"]
        assert net["batch"] == batch
        assert set(net["variants"]) == set(gpu_perf.VARIANTS)
        for name, row in net["variants"].items():
            assert row["status"] == "ok", (role, name, row.get("reason"))
            assert row["wall_s"] > 0 and row["forward_s"] > 0 and row["backward_s"] > 0
            assert row["queue_build_s"] > 0 and row["kernels"]
            assert all(k["launches"] > 0 for k in row["kernels"].values())
            if "agrees_with" in row:
                assert row["agrees_with"]["counts_identical"]
            assert ("memory" in row) == (role == "large")
            if role == "large":
                assert row["memory"]["peak_bytes"] > 0
        work = net["work"]
        assert work["layer1"]["queue_entries"] > 0 and work["layer2"]["backward_points"] > 0
    base = report["stages"]["baselines_single"]["result"]["methods"]
    assert base["step"]["status"] == "ok" and all(m["identical_counts"] for m in base.values())
    sweep = report["stages"]["sweep"]["result"]
    dry = gpu_perf.CONFIG[True]
    assert len(sweep["rows"]) == len(dry["sweep_hidden"]) * len(dry["sweep_batches"])
    assert all(row["forward"] and row["backward"] for row in sweep["rows"])


def test_dry_run_speedups_and_floor(report):
    speedups = report["speedups"]
    assert speedups
    for s in speedups:
        assert set(s) >= {"batch", "variant", "baseline", "ratio"}
        assert isinstance(s["batch"], int) and isinstance(s["variant"], str)
        assert s["baseline"] in gpu_perf.SPEEDUP_BASELINES
        assert isinstance(s["ratio"], float) and math.isfinite(s["ratio"]) and s["ratio"] > 0
    baselines = {s["baseline"] for s in speedups}
    assert {"sequential", "step"} <= baselines
    if report["stages"]["jax_medium"]["status"] == "ok":
        assert {"jax_f32", "jax_f64"} <= baselines
        jax = report["stages"]["jax_medium"]["result"]["dtypes"]
        assert set(jax) == {"float32", "float64"}
        for entry in jax.values():
            bounds = entry["layer2"]["neurons_with_unprocessed_inputs"]
            assert 0 <= bounds["at_least"] <= bounds["at_most"] <= bounds["neurons"]
        # float64 JAX follows the exact forward far more closely than float32.
        assert jax["float64"]["layer2"]["max_abs_spike_time_diff"] < 1e-9
    floor = report["floor"]
    assert "35 * queue_entries" in floor["formula"] and floor["by_batch"]
    assert isinstance(report["fraction_of_floor"], float) and report["fraction_of_floor"] > 0
    assert report["predictions"]["floor_ms"]["batch_256"] == 2.6


def test_fma_kernel_compiles():
    compiled = gpu_perf.check_fma_source("90")
    if compiled is None:
        pytest.skip("NVRTC not available")
    assert compiled[0], compiled[1]


def test_gate_checks_see_differences():
    rng = np.random.default_rng(0)
    t = np.sort(rng.uniform(0, 20, (2, 6, 3)), axis=-1)
    W = rng.normal(0.6, 0.5, (6, 4))
    ref = ss.lif_forward(t, W, tau_mem=10.0, tau_syn=5.0, max_spikes=8, method="sequential", engine="numpy")
    assert ref.counts.sum() > 0
    tol = TOL["float64"]
    assert all(c["ok"] for c in gpu_perf.compare_forward(gpu_perf.HOST, "x", ref, ref, tol))
    shifted = ref._replace(times=ref.times * (1 + 1e-9))
    assert not all(c["ok"] for c in gpu_perf.compare_forward(gpu_perf.HOST, "x", shifted, ref, tol))
    counts = ref.counts.copy()
    counts[0, 0] += 1
    assert not gpu_perf.compare_forward(gpu_perf.HOST, "x", ref._replace(counts=counts), ref, tol)[0]["ok"]
    grads = ss.lif_backward(ref, np.ones(ref.times.shape), engine="numpy")
    assert all(c["ok"] for c in gpu_perf.compare_grads(gpu_perf.HOST, "g", grads, grads, tol))
    bad = grads._replace(weights=grads.weights + 1e-6)
    assert not all(c["ok"] for c in gpu_perf.compare_grads(gpu_perf.HOST, "g", bad, grads, tol))
    missing = grads._replace(input_times=None)
    assert not all(c["ok"] for c in gpu_perf.compare_grads(gpu_perf.HOST, "g", missing, grads, tol))


def test_hung_stage_is_killed_with_its_partial_results(tmp_path):
    result = tmp_path / "stage.json"
    script = (f"import json, time; json.dump({{'result': {{'partial': 1}}}}, open({str(result)!r}, 'w')); "
              "print('working', flush=True); time.sleep(120)")
    start = time.perf_counter()
    record = gpu_perf.run_stage([sys.executable, "-c", script], 3, str(result), str(tmp_path / "stage.log"))
    assert time.perf_counter() - start < 30
    assert record["status"] == "timeout" and record["result"] == {"partial": 1}
    assert "working" in record["log_tail"]
    crashed = gpu_perf.run_stage([sys.executable, "-c", "raise SystemExit(3)"], 30, str(tmp_path / "none.json"),
                                 str(tmp_path / "crash.log"))
    assert crashed["status"] == "failed" and crashed["returncode"] == 3


def test_a_variant_that_failed_the_gate_is_not_timed(tmp_path):
    with open(tmp_path / "context.json", "w") as f:
        json.dump({"variants_passed": ["sequential", "scan_fwd"]}, f)
    args = argparse.Namespace(dry_run=True, deadline=time.time() + 60, workdir=str(tmp_path), repeats=0)
    ctx = gpu_perf.StageContext(args, gpu_perf.StageWriter(str(tmp_path / "x.json")))
    assert ctx.variants() == ["sequential", "scan_fwd"]
