"""``benchmarks/bench_lanes.py --quick``: both walks give the same bits before they are timed, and the JSON has
every time and ratio."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("numba")

from _examples import benchmark  # noqa: E402

bench_lanes = benchmark("bench_lanes")


def test_quick_run_writes_checked_rows(tmp_path):
    out = tmp_path / "lanes.json"
    bench_lanes.main(["--quick", "--output", str(out)])
    report = json.loads(out.read_text())
    assert report["benchmark"] == "bench_lanes" and "commit" in report["stamp"]
    (row,) = report["rows"]
    assert row["identical"] and row["lanes"] > 0 and 1 <= row["group"] <= row["lanes"] and row["output_spikes"] > 20
    assert set(row["forward_s"]) == {"lanes", "walk", "scan"} and set(row["forward_backward_s"]) == {"lanes", "walk"}
    assert all(len(c) == 2 and min(c) > 0 for c in row["calls"].values())
    assert row["speedup_forward"] == row["forward_s"]["walk"] / row["forward_s"]["lanes"]
