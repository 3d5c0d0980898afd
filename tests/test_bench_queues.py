"""``benchmarks/bench_queues.py --quick``: the three queue builders agree before they are timed, and the JSON has
every row and the speedups."""

from __future__ import annotations

import json
import os
import sys

import pytest

pytest.importorskip("numba")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))

import bench_queues  # noqa: E402


def test_quick_run_writes_checked_rows(tmp_path):
    out = tmp_path / "queues.json"
    bench_queues.main(["--quick", "--output", str(out)])
    report = json.loads(out.read_text())
    assert report["benchmark"] == "bench_queues" and "commit" in report["stamp"]
    assert {r["method"] for r in report["rows"]} == {"numpy", "numba_merge", "numba_bucket"}
    assert all(r["identical_to_numpy"] and r["seconds"] > 0 and r["entries"] > 0 for r in report["rows"])
    assert set(report["speedups"]["quick"]) == {"bucket_over_merge", "bucket_over_numpy"}


def test_a_builder_that_disagrees_is_not_timed(monkeypatch):
    real = bench_queues.builders

    def broken():
        b = real()
        b["numba_bucket"] = lambda t, d: tuple(x[..., ::-1].copy() for x in real()["numba_merge"](t, d))
        return b

    monkeypatch.setattr(bench_queues, "builders", broken)
    with pytest.raises(AssertionError, match="numba_bucket builds other queues"):
        bench_queues.run({"quick": dict(batch=2, n_in=50, spikes=300, n_out=16)}, 1)
