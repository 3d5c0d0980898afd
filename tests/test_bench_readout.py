"""``benchmarks/bench_readout.py --quick``: the engines agree before they are timed and the JSON has every row,
stamp and speedup; a disagreement stops the run."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("numba")

from _examples import benchmark  # noqa: E402

bench_readout = benchmark("bench_readout")


def test_quick_run_writes_checked_rows(tmp_path):
    out = tmp_path / "readout.json"
    bench_readout.main(["--quick", "--repeats", "2", "--output", str(out)])
    report = json.loads(out.read_text())
    assert report["benchmark"] == "bench_readout" and "commit" in report["stamp"]
    assert {(r["shape"], r["engine"]) for r in report["rows"]} == {
        (s, e) for s in bench_readout.QUICK for e in ("numpy", "numba")}
    assert all(r["forward_s"] > 0 and r["forward_backward_s"] > 0 for r in report["rows"])
    for name, s in report["speedups"].items():
        assert s["forward"] > 0 and s["forward_backward"] > 0 and s["kinks"] > 0, name
        assert all(0.0 <= d <= 1e-10 for d in s["max_relative_difference"].values()), name
    assert "delays" in report["speedups"]["peak_delays_b8"]["max_relative_difference"]
    assert [q["shape"] for q in report["queues"]] == list(bench_readout.QUICK_QUEUES)
    assert all(q["identical"] and q["numpy_s"] > 0 and q["numba_s"] > 0 and q["entries"] > 0 for q in report["queues"])


def test_disagreeing_engines_stop_the_run(monkeypatch):
    import spikescan

    real = spikescan.li_forward

    def skewed(*args, engine, **kwargs):
        result = real(*args, engine=engine, **kwargs)
        if engine == "numba":
            result = result._replace(values=result.values * (1 + 1e-9))
        return result

    monkeypatch.setattr(spikescan, "li_forward", skewed)
    with pytest.raises(AssertionError, match="values"):
        bench_readout.agreement(bench_readout.QUICK["yinyang_b8"])
