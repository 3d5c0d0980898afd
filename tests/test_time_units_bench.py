"""benchmarks/time_units.py in a short form: the same model in milliseconds and in seconds, trained side by side,
writes its JSON report, and its time parameters move by the same fraction of their size in both units (they moved
1000 times faster in seconds when stored in time units); benchmarks/voltage_units.py likewise at thresholds 1 and
20. One process per backend:

    KERAS_BACKEND=torch python -m pytest tests/test_time_units_bench.py
"""

import json

import pytest

from _examples import benchmark
from _keras_backend import keras_or_skip

BACKEND, keras = keras_or_skip()


def bench():
    return benchmark("time_units")


def test_short_run_writes_the_report_and_moves_time_parameters_alike_in_both_units(tmp_path):
    out = tmp_path / "time_units.json"
    bench().main(["--variants", "delays", "time_constants", "--seeds", "1", "--epochs", "1", "--train", "48",
                  "--test", "32", "--output", str(out)])
    report = json.loads(out.read_text())
    assert report["benchmark"] == "time_units" and "commit" in report["stamp"]
    rows = {(r["variant"], r["unit"]): r for r in report["rows"]}
    assert set(rows) == {(v, u) for v in ("delays", "time_constants") for u in ("ms", "s")}
    for variant, key in (("delays", "delays_over_max_delay"), ("time_constants", "log_time_constants")):
        ms, s = rows[variant, "ms"][key], rows[variant, "s"][key]
        assert ms > 0, (variant, ms)
        assert s / ms == pytest.approx(1.0, rel=0.3), (variant, ms, s)
        assert 0.0 <= rows[variant, "s"]["test_accuracy"] <= 1.0
    assert set(report["summary"]) == {"delays", "time_constants"}


def test_voltage_units_short_run_writes_the_report(tmp_path):
    """benchmarks/voltage_units.py in a short form: every variant at threshold 1 and 20, rows and summary written."""
    out = tmp_path / "voltage_units.json"
    benchmark("voltage_units").main(["--seeds", "1", "--epochs", "1", "--train", "64", "--test", "32",
                                     "--output", str(out)])
    report = json.loads(out.read_text())
    assert report["benchmark"] == "voltage_units" and "commit" in report["stamp"]
    rows = {(r["variant"], r["threshold"]): r for r in report["rows"]}
    assert set(rows) == {(v, t) for v in ("fixed", "threshold", "recurrent") for t in (1.0, 20.0)}
    for row in rows.values():
        assert 0.0 <= row["test_accuracy"] <= 1.0 and row["spikes_per_neuron"] > 0, row
    assert set(report["summary"]) == {"fixed", "threshold", "recurrent"}
    assert all("1_minus_20" in v for v in report["summary"].values())
