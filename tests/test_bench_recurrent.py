"""benchmarks/bench_recurrent.py --quick: every variant is checked against the reference before it is timed, and the
JSON holds what the README table needs (stamp, settings, one row per layer and variant, speed-ups)."""

import json

import numpy as np
import pytest

from _examples import benchmark

bench_recurrent = benchmark("bench_recurrent")


def test_quick_run_writes_checked_rows(tmp_path):
    out = tmp_path / "recurrent.json"
    bench_recurrent.main(["--quick", "--repeats", "1", "--output", str(out)])
    report = json.loads(out.read_text())
    assert report["stamp"]["commit"] is None or len(report["stamp"]["commit"]) == 40
    variants = bench_recurrent.variants()
    expected = [(name, engine, method, kernel) for name, d, dr, _ in bench_recurrent.LAYERS
                for engine, method, kernel in variants if kernel is None or bench_recurrent.applies(kernel, d, dr)]
    assert [(r["layer"], r["engine"], r["method"], r["kernel"]) for r in report["rows"]] == expected
    if len(variants) > 2:  # each compiled kernel where it applies: lanes, windows (with both walk policies) on the
        # layers with input delays (dense and sparse recurrent weights), the event loop on every layer
        windows = ["windows", "windows, stopping", "windows, walking on", "event loop"]
        assert [k for *_, k in expected if k] == ["lanes", "event loop"] + windows + windows + ["event loop"]
    sparse = [r for r in report["rows"] if r["layer"] == "shd_recurrent_input_delays_sparse"]
    assert sparse and all(r["connected"] == 0.1 for r in sparse)
    for row in report["rows"]:
        assert row["spikes_per_sample"] > 10  # the layer fires, so the timing means something
        assert row["forward_s"] > 0 and row["forward_backward_s"] >= row["forward_s"]
        assert np.isfinite(row["forward_speedup"]) and np.isfinite(row["forward_backward_speedup"])
    refs = [r for r in report["rows"] if (r["engine"], r["method"]) == ("numpy", "sequential")]
    assert [r["forward_speedup"] for r in refs] == [1.0, 1.0, 1.0, 1.0]


def test_a_variant_that_disagrees_is_not_timed(monkeypatch):
    real = bench_recurrent._run

    def wrong(args, engine, method, max_spikes, kernel=None):
        out = real(args, engine, method, max_spikes, kernel)
        if method == "scan":
            out.times[np.isfinite(out.times)] += 1e-6
        return out

    monkeypatch.setattr(bench_recurrent, "_run", wrong)
    with pytest.raises(AssertionError, match="numpy/scan"):
        bench_recurrent.bench(bench_recurrent.QUICK, repeats=1)
