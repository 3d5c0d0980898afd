"""benchmarks/bench_cpu_peers.py --quick: the JSON it writes (stamp, environment, layers, one timed row per engine x
method and layer, ratios) and its agreement fields: every spikescan variant matches the NumPy reference, and peers
that are not asked for or not installed are recorded as skipped with the reason. Where jaxsnn is installed, its
spikes on the quick Yin-Yang layer must agree with spikescan's. Runs in a subprocess (the script may switch jax to
float64)."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tolerances import TOL

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "bench_cpu_peers.py"


def run_quick(tmp_path, *args):
    out = tmp_path / "cpu_peers.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", *args, "--output", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(out.read_text())


def test_quick_without_peers(tmp_path):
    r = run_quick(tmp_path, "--peers", "none")
    assert r["benchmark"] == "bench_cpu_peers"
    assert r["stamp"]["commit"] and r["stamp"]["cpu_count"]
    env = r["environment"]
    assert env["load_average_start"] is not None and env["load_average_end"] is not None
    engines = env["spikescan_engines"]
    assert "numpy" in engines
    layers = [layer["name"] for layer in r["layers"]]
    assert layers == ["yinyang", "shd", "shd_delays"]
    assert all(layer["fired_fraction"] > 0 for layer in r["layers"])

    # Peers not asked for: skipped, with the reason, in the peer list and in the agreement list.
    assert all(p["status"] == "skipped" and p["reason"] for p in r["peers"].values())
    assert [(a["layer"], a["peer"], a["status"]) for a in r["agreement"]] == [
        (name, "jaxsnn", "skipped") for name in layers]
    assert r["approximation"] == []

    # Every spikescan variant was checked against the NumPy sequential reference before it was timed.
    checks = r["spikescan_agreement"]
    assert {(c["layer"], c["engine"], c["method"]) for c in checks} == {
        (name, e, m) for name in layers for e in engines for m in ("sequential", "scan", "auto")}
    for c in checks:
        assert c["same_counts"]
        assert c["max_abs_time_diff_ms"] <= 1e-9
        assert c["max_rel_weight_grad_diff"] <= TOL["float64"]["grads"]["rtol"]

    rows = r["rows"]
    assert {r_["implementation"] for r_ in rows} == {"spikescan"}
    assert len(rows) == len(layers) * len(engines) * 3
    for row in rows:
        assert row["forward_s"] > 0 and row["forward_backward_s"] >= row["forward_s"]
        assert len(row["forward_s_repeats"]) == len(row["forward_backward_s_repeats"]) == r["settings"]["repeats"] == 1
        assert row["exact"] and row["load_average_1min"] is not None
        if row["method"] == "auto":
            assert row["resolved"]["forward"] in ("sequential", "scan")

    # auto against the best method of each engine, per layer; no peer ratios without peers.
    kinds = {(x["layer"], x["ratio"]) for x in r["ratios"]}
    for name in layers:
        for engine in engines:
            assert (name, f"spikescan {engine} auto / best of sequential and scan") in kinds
    assert not any("jaxsnn" in x["ratio"] or "snntorch" in x["ratio"] for x in r["ratios"])
    assert all(x["forward"] > 0 and x["forward_backward"] > 0 for x in r["ratios"])


@pytest.mark.skipif(importlib.util.find_spec("jaxsnn") is None, reason="jaxsnn is not installed")
def test_quick_jaxsnn_agrees(tmp_path):
    r = run_quick(tmp_path, "--peers", "jaxsnn", "--layers", "yinyang")
    (entry,) = r["agreement"]
    assert entry["status"] == "agree" and entry["passed"] and entry["last_step_empty"]
    assert entry["same_count_fraction"] == 1.0 and entry["spikes_peer"] == entry["spikes_spikescan"] > 0
    assert entry["max_abs_time_diff_ms"] <= 1e-9
    assert entry["max_rel_weight_grad_diff"] <= TOL["float64"]["grads"]["rtol"]
    assert r["environment"]["jax_x64"] is True
    assert any(row["implementation"] == "jaxsnn" for row in r["rows"])
    assert any(x["ratio"] == "jaxsnn / spikescan best" for x in r["ratios"])
