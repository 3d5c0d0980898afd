"""``benchmarks/gpu_perf.py``, the one-call GPU protocol, without a GPU.

The dry run (every stage on the CPU through the kernels' host emulation, tiny shapes) must write the JSON a GPU run
writes: every stage with a status, the gate's checks per variant, well-formed speedups and the floor. The pieces a
dry run cannot reach on its own are checked directly: a gate check that sees a difference fails, a stage that hangs
is killed at its timeout with its partial results kept, and a variant that failed the gate is not timed.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import subprocess
import sys
import time
import types

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
    must_run = ["device", "gate", "network_large", "network_medium", "network_single", "baselines_single", "sweep",
                "recurrent"]
    assert [s for s in must_run if report["stages"][s]["status"] != "ok"] == []
    # The emulation gets DRY_RUN_TIMEOUT_SCALE times a GPU stage's longest timeout (as the budget allows).
    timeout = report["stages"]["network_single"]["timeout_s"]
    assert gpu_perf.STAGES["network_single"][1] < timeout <= \
        gpu_perf.STAGES["network_single"][1] * gpu_perf.DRY_RUN_TIMEOUT_SCALE
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
        if name != "step":  # a second backward, bit for bit: required where the variant promises it
            (rep,) = [c for c in entry["checks"] if c["check"] == "layer1/repeatable"]
            promised = gpu_perf.VARIANTS[name]["settings"].get("spikescan.cuda._closed.DETERMINISTIC", False)
            assert rep["required"] == promised and rep["ok"], (name, rep)
    assert any(v["settings"].get("spikescan.cuda._closed.DETERMINISTIC") for v in gpu_perf.VARIANTS.values())
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
            assert (row["plain_wall_s"] > 0) if role != "large" else ("plain_wall_s" not in row)
            assert row["queue_build_s"] > 0 and row["kernels"]
            assert all(k["launches"] > 0 for k in row["kernels"].values())
            if "agrees_with" in row:
                assert row["agrees_with"]["counts_identical"]
            assert ("memory" in row) == (role == "large")
            if role == "large":
                assert row["memory"]["peak_bytes"] > 0
        work = net["work"]
        assert work["layer1"]["queue_entries"] > 0 and work["layer2"]["backward_points"] > 0
    profile = report["stages"]["network_single"]["result"]["host_profile"]
    assert profile["runs"] == gpu_perf.HOST_PROFILE_RUNS and profile["wall_s"] > 0
    # Two layers, each: the queue kernel and a forward kernel, then the closed-form backward.
    assert profile["launches"] >= 6 and "spikescan_lif_backward_closed" in profile["kernels"]
    assert 0 < len(profile["top"]) <= gpu_perf.HOST_PROFILE_TOP
    assert profile["top"] == sorted(profile["top"], key=lambda r: -r["tottime_s"])
    assert "spikescan" in profile["packages"] and sum(profile["packages"].values()) <= profile["wall_s"] * 1.05
    assert 0 <= profile["host_s"] <= profile["wall_s"]
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


def test_dry_run_recurrent(report):
    stage = report["stages"]["recurrent"]
    rec = stage["result"]
    cfg = gpu_perf.CONFIG[True]["recurrent"]
    layers = gpu_perf.recurrent_layers(cfg)
    assert [k for k, _, _ in layers] == list(rec["gate"])
    assert rec["tolerances"] == TOL["float64"] and rec["reference_samples"] == [0, cfg["batches"][0] - 1]
    # The NumPy references came from the background process, computed beside the other stages.
    ref = rec["reference_process"]
    assert ref["status"] == "ok", ref
    assert {k: v["status"] for k, v in ref["result"]["cases"].items()} == {k: "ok" for k, _, _ in layers}
    assert rec["reference_process_done_before_timing"] is True
    for key, hidden, rd in layers:
        gate = rec["gate"][key]
        assert gate["status"] == "pass", (key, gate.get("failed"), gate.get("reason"))
        assert gate["reference"]["method"] == ("scan" if rd else "sequential")
        assert gate["reference"]["computed"] == "beside the other stages"
        checks = {c["check"] for c in gate["checks"]}
        assert {"counts", "spike_event", "times", "log_count", "log_neurons", "log_times", "log_currents",
                "grad_weights", "grad_threshold", "grad_recurrent_weights", "grad_input_times",
                "grad_input_times_zero_outside_reference_samples"} <= checks
        assert ("grad_recurrent_delays" in checks) == rd
        assert gate["spikes_per_sample"] > 0
        # The fixed-order backward beside the gate: against the reference and bit for bit twice.
        det = gate["deterministic"]
        assert det["status"] == "pass", (key, det.get("failed"), det.get("reason"))
        det_checks = {c["check"] for c in det["checks"]}
        assert {"grad_weights", "grad_threshold", "grad_recurrent_weights", "grad_input_times",
                "repeatable"} <= det_checks
        assert ("grad_recurrent_delays" in det_checks) == rd and len(det["gpu_backward_wall_s"]) == 2
    assert report["recurrent_gate"] == {k: dict(status="pass", failed=[], reason=None) for k, _, _ in layers}
    # Every (batch, layer) row timed on the kernels (host emulation here) and beside the compiled CPU engine.
    rows = {(r["batch"], r["layer"]): r for r in rec["rows"]}
    assert set(rows) == {(b, k) for b in cfg["batches"] for k, _, _ in layers}
    assert rec["skipped"] == []
    numba = rec["numba"]["available"]
    speedups = {(s["batch"], s["variant"], s["measure"]): s for s in report["speedups"]
                if s["baseline"] == "numba_cpu"}
    for (batch, key), row in rows.items():
        gpu = row["gpu"]
        assert gpu["status"] == "ok", (batch, key, gpu.get("reason"))
        assert gpu["forward_s"] > 0 and gpu["backward_s"] > 0 and gpu["wall_s"] >= gpu["forward_s"]
        assert {"spikescan_recurrent_forward", "spikescan_recurrent_backward_spikes"} <= set(gpu["kernels"])
        assert row["memory"]["peak_bytes"] > 0 and row["spikes_per_sample"] > 0
        if not numba:
            assert row["numba"]["status"] == "skipped"
            continue
        assert row["numba"]["status"] == "ok" and row["numba"]["forward_backward_s"] >= row["numba"]["forward_s"] > 0
        assert row["agrees_with_numba"]["ok"], row["agrees_with_numba"]["failed"]
        for measure in ("forward", "forward_backward"):
            entry = speedups[(batch, f"recurrent_{key}", measure)]
            assert entry["ratio"] > 0 and math.isfinite(entry["ratio"])
    assert len(speedups) == (2 * len(rows) if numba else 0)
    assert any(line.startswith("recurrent (SHD-like") for line in report["table"])
    assert any(line.startswith("  deterministic backward (gate batch): ") for line in report["table"])


def test_recurrent_gate_checks_see_differences(tmp_path):
    # The CUDA layer's stand-in: NumPy on the whole batch, its backward with the reference's cotangent on the
    # reference samples only; the gate compares it with the reference computed on those samples alone.
    cfg = dict(gpu_perf.CONFIG[True]["recurrent"], batches=(3, 4))
    path = str(tmp_path / "ref.npz")
    info = gpu_perf.recurrent_reference_case(cfg, 4, True, path)
    assert info["samples"] == [0, 2] and info["method"] == "scan"
    ref = dict(np.load(path))
    t, w, r, dr = gpu_perf.recurrent_inputs(cfg, 3, 4, True)
    out = gpu_perf.recurrent_cpu(t, w, r, dr, cfg["max_spikes"], "numpy", "sequential")
    G = np.zeros(out.times.shape)
    G[[0, 2]] = ref["G"]
    grads = ss.lif_backward(out, G, engine="numpy")
    tol = TOL["float64"]
    checks = gpu_perf.recurrent_gate_checks(gpu_perf.HOST, out, grads, ref, tol)
    assert all(c["ok"] for c in checks), [c for c in checks if not c["ok"]]

    def failed(out=out, grads=grads):
        return {c["check"] for c in gpu_perf.recurrent_gate_checks(gpu_perf.HOST, out, grads, ref, tol)
                if not c["ok"]}

    assert failed(out=out._replace(times=out.times * (1 + 1e-9))) == {"times"}
    rw = grads.recurrent_weights.copy()
    rw[0, 1] += 1e-6
    assert failed(grads=grads._replace(recurrent_weights=rw)) == {"grad_recurrent_weights"}
    g_in = grads.input_times.copy()
    g_in[1, 0, 0] = 1.0  # a sample outside the reference's
    assert failed(grads=grads._replace(input_times=g_in)) == {"grad_input_times_zero_outside_reference_samples"}
    assert failed(grads=grads._replace(recurrent_delays=None)) == {"grad_recurrent_delays"}


def test_recurrent_stage_predicts_and_stops_in_time():
    # One block per sample: on 132 multiprocessors batch 256 is two waves of batch 32's one (x 1.5 margin); the
    # host emulation is proportional to the batch.
    assert gpu_perf.predict_gpu((32, 1.0), 256, 132) == pytest.approx(3.0)
    assert gpu_perf.predict_gpu((32, 1.0), 64, 132) == pytest.approx(1.5)
    assert gpu_perf.predict_gpu((3, 1.0), 4, None) == pytest.approx(4 / 3)
    assert gpu_perf.predict_gpu((32, 2.0), 32, 132) == 2.0

    class Ctx:
        left = 100.0

        def time_left(self):
            return self.left

    calls = []

    def fn(clock):
        calls.append(clock)
        return len(calls)

    ctx = Ctx()
    seen, runs, not_made = gpu_perf.runs_that_fit(ctx, _HostDevice(), fn, 3, 1, 0.01, inspect=lambda out: out)
    assert (seen, len(runs), not_made, calls[0]) == (1, 3, 0, None)
    ctx.left = gpu_perf.RECURRENT_MARGIN_S + 1.0  # a predicted 10 s run does not fit: nothing is run
    calls.clear()
    seen, runs, not_made = gpu_perf.runs_that_fit(ctx, _HostDevice(), fn, 3, 1, 10.0)
    assert (seen, runs, not_made, calls) == (None, [], 4, [])


class _HostDevice:
    gpu, xp = False, np

    def sync(self):
        pass


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


def test_repeatability_check_holds_only_a_promise():
    """The gate's second-backward check fails a variant that promises bit-identical gradients and gets different bits,
    and only records the difference for the others."""
    from spikescan import LIFGrads

    device = types.SimpleNamespace(to_host=np.asarray)
    grads = LIFGrads(weights=np.ones(3), input_times=np.zeros(2), delays=None, threshold=np.zeros(()), tau_mem=None,
                     tau_syn=None)
    nudged = grads._replace(weights=np.array([1.0, np.nextafter(1.0, 2.0), 1.0]))
    det = dict(settings={"spikescan.cuda._closed.DETERMINISTIC": True})
    atomic = dict(settings={})
    assert gpu_perf.repeatability_check(device, grads, grads, det)["ok"]
    failed = gpu_perf.repeatability_check(device, grads, nudged, det)
    assert not failed["ok"] and failed["differ"] == ["weights"] and not failed["bit_identical"]
    recorded = gpu_perf.repeatability_check(device, grads, nudged, atomic)
    assert recorded["ok"] and not recorded["required"] and recorded["differ"] == ["weights"]


def test_variants_option_gates_and_times_only_those_and_the_baselines(tmp_path):
    """``--variants``: a short GPU rerun of chosen variants; the stage subprocesses get the same list, and the
    baselines of the speedups (default, sequential) stay."""
    if _hostemu.compiler() is None:
        pytest.skip("no host C++ compiler for the kernel emulation")
    out = tmp_path / "perf.json"
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "gpu_perf.py"), "--dry-run", "--output",
                           str(out), "--stages", "device", "gate", "network_single", "--variants", "m2_closed"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    with open(out) as f:
        data = json.load(f)
    assert set(data["stages"]["gate"]["result"]["variants"]) == {"default", "sequential", "m2_closed", "step"}
    assert set(data["stages"]["network_single"]["result"]["variants"]) == {"default", "sequential", "m2_closed"}
    assert set(data["settings"]["variants"]) == {"default", "sequential", "m2_closed"}


def test_variants_state_every_setting_but_the_default():
    """A variant's name means the same kernels whatever the library's defaults: each states every module setting
    of BASE_SETTINGS (its own value or the base's), and only "default" takes the library's."""
    assert gpu_perf.VARIANTS["default"]["settings"] == {}
    for name, spec in gpu_perf.VARIANTS.items():
        if name != "default":
            assert set(spec["settings"]) >= set(gpu_perf.BASE_SETTINGS), name
    for path in gpu_perf.BASE_SETTINGS:  # every base setting names a real module attribute
        module, attr = path.rsplit(".", 1)
        assert hasattr(importlib.import_module(module), attr), path


def test_recurrent_noise_widens_atol_only_by_the_measured_spread():
    """The recurrent gate's allowance: ``atol + RECURRENT_NOISE_FACTOR x noise`` for an array whose spread between
    correct float64 answers was measured, the table's tolerance otherwise; an error far above the spread still
    fails."""
    tol = dict(rtol=1e-9, atol=1e-9)
    assert gpu_perf.with_noise(tol, {}, "grad_weights") == tol
    wide = gpu_perf.with_noise(tol, {"noise_grad_weights": np.float64(2.5e-7)}, "grad_weights")
    assert wide == dict(rtol=1e-9, atol=1e-9 + gpu_perf.RECURRENT_NOISE_FACTOR * 2.5e-7)
    want = np.array([2.5e3, 1.0, -3.0])
    assert np.allclose(want + np.array([0.0, 3e-7, 0.0]), want, **wide)  # the GPU run's size of disagreement
    assert not np.allclose(want + np.array([0.0, 1e-3, 0.0]), want, **wide)  # a real error on a small entry


def test_recurrent_agreement_uses_the_gates_noise():
    """The GPU-vs-Numba comparison of the timed rows allows the gate's measured spread on the layer, and only
    that: a disagreement of the spread's size passes with it and fails without, a larger one fails with it."""
    counts = np.array([[3, 1]])
    times = np.array([[[1.0, 2.0, 3.0], [4.0, np.inf, np.inf]]])
    grads = {name: None for name in gpu_perf.RECURRENT_GRADS}
    grads["weights"] = np.array([[2.5e3, 1.0]])
    cpu_out = types.SimpleNamespace(counts=counts, times=times)
    cpu_grads = types.SimpleNamespace(**grads)
    tol = dict(times=dict(rtol=1e-12, atol=1e-12), grads=dict(rtol=1e-9, atol=1e-9))

    def gpu(delta):
        g = {k: (None if v is None else v + np.array([[0.0, delta]])) for k, v in grads.items()}
        return dict(counts=counts, times=times, grads=g)

    noise = {"grad_weights": 2.5e-7}
    assert gpu_perf.recurrent_agreement(gpu(3e-7), cpu_out, cpu_grads, dict(tol, noise=noise))["ok"]
    assert not gpu_perf.recurrent_agreement(gpu(3e-7), cpu_out, cpu_grads, tol)["ok"]
    assert not gpu_perf.recurrent_agreement(gpu(1e-3), cpu_out, cpu_grads, dict(tol, noise=noise))["ok"]
    # Relative to the gate's scale: a gate array 10x smaller than this comparison's allows a 10x larger spread.
    rel = dict(tol, noise=noise, noise_scale={"grad_weights": 2.5e2})
    assert gpu_perf.recurrent_agreement(gpu(3e-6), cpu_out, cpu_grads, rel)["ok"]
    assert not gpu_perf.recurrent_agreement(gpu(3e-6), cpu_out, cpu_grads, dict(tol, noise=noise))["ok"]
    assert not gpu_perf.recurrent_agreement(gpu(1e-4), cpu_out, cpu_grads, rel)["ok"]


def test_profile_packages_and_waits():
    """``host_profile``'s grouping: a file under the repository or site-packages by its top directory, a built-in by
    the module its name shows; the wait pattern catches CuPy's device-to-host reads and synchronisations."""
    assert gpu_perf._profile_package(os.path.join(gpu_perf.ROOT, "spikescan", "cuda", "_lif.py"), "forward") == \
        "spikescan"
    assert gpu_perf._profile_package("/x/lib/python3.12/site-packages/cupy/_core/x.py", "f") == "cupy"
    assert gpu_perf._profile_package("~", "<method 'get' of 'cupy._core.core._ndarray_base' objects>") == "cupy"
    assert gpu_perf._profile_package("~", "<built-in method builtins.len>") == "builtins"
    assert gpu_perf.WAITS.search("<method 'get' of 'cupy._core.core._ndarray_base' objects>")
    assert gpu_perf.WAITS.search("<method 'synchronize' of 'cupy.cuda.stream.Stream' objects>")
    assert not gpu_perf.WAITS.search("<built-in method builtins.len>")
    assert not gpu_perf.WAITS.search("<method 'get' of 'dict' objects>")


def test_ncu_stage_runs_one_profile_per_variant(tmp_path, monkeypatch):
    """``--ncu --ncu-variants A B``: one ncu run per variant, each naming its variant to the profiled stage, with
    the memory-workload section; its CSV rows parsed per variant, and a variant without metrics fails the stage by
    name after the others are recorded. (A stand-in ``ncu`` on ``PATH`` prints what Nsight Compute's CSV looks
    like.)"""
    fake = tmp_path / "bin" / "ncu"
    fake.parent.mkdir()
    fake.write_text(
        "#!/bin/sh\n"
        "echo \"$@\" >> " + str(tmp_path / "calls.txt") + "\n"
        "case \"$*\" in *'--ncu-variants m2_closed '*) echo 'ncu: no kernels profiled' >&2; exit 1;; esac\n"
        "echo '==PROF== Connected'\n"
        "echo '\"ID\",\"Kernel Name\",\"Section Name\",\"Metric Name\",\"Metric Unit\",\"Metric Value\"'\n"
        "echo '\"0\",\"spikescan_lif_forward_scan\",\"Memory Workload Analysis\",\"L1/TEX Hit Rate\",\"%\",\"41.5\"'\n"
        "echo '\"1\",\"spikescan_lif_backward_closed\",\"Occupancy\",\"Achieved Occupancy\",\"%\",\"30.1\"'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    args = argparse.Namespace(dry_run=False, ncu=True, ncu_variants=["default", "m2_closed", "m3_staged"],
                              deadline=time.time() + 60, workdir=str(tmp_path), repeats=0)
    writer = gpu_perf.StageWriter(str(tmp_path / "ncu.json"))
    ctx = gpu_perf.StageContext(args, writer)
    with pytest.raises(RuntimeError, match="no metrics for m2_closed$"):
        gpu_perf.stage_ncu(ctx)
    result = writer.result["variants"]
    assert list(result) == ["default", "m2_closed", "m3_staged"]
    for name in ("default", "m3_staged"):
        assert result[name]["status"] == "ok" and result[name]["metrics_total"] == 2
        assert result[name]["metrics"][0] == dict(id="0", kernel_name="spikescan_lif_forward_scan",
                                                  section_name="Memory Workload Analysis",
                                                  metric_name="L1/TEX Hit Rate", metric_unit="%", metric_value="41.5")
    assert result["m2_closed"]["status"] == "failed" and result["m2_closed"]["returncode"] == 1
    calls = (tmp_path / "calls.txt").read_text().splitlines()
    assert len(calls) == 3 and all("--section MemoryWorkloadAnalysis" in c for c in calls)
    assert [c.split("--ncu-variants ")[1].split()[0] for c in calls] == ["default", "m2_closed", "m3_staged"]


def test_reference_workers_leave_cores_to_the_gpu_stages():
    """One worker process per recurrent reference, as the cores allow after two for the GPU stages' host work; at
    least one (a CI machine's 2 cores run them one after another, as before)."""
    assert gpu_perf.reference_workers(4, cpu_count=16) == 4
    assert gpu_perf.reference_workers(4, cpu_count=5) == 3
    assert gpu_perf.reference_workers(4, cpu_count=2) == 1
    assert gpu_perf.reference_workers(4, cpu_count=None) >= 1
    layers = gpu_perf.recurrent_layers(gpu_perf.CONFIG[False]["recurrent"])
    assert layers[-1][0] == "n512_delays"  # the stage submits the reversed list: the largest layer first
