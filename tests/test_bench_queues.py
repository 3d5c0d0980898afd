"""``benchmarks/bench_queues.py --quick``: the queue builders agree before they are timed, the layer gives the same
bits with either queue format, and the JSON has every row and the speedups."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("numba")

from _examples import benchmark  # noqa: E402

bench_queues = benchmark("bench_queues")


def test_quick_run_writes_checked_rows(tmp_path):
    out = tmp_path / "queues.json"
    bench_queues.main(["--quick", "--output", str(out)])
    report = json.loads(out.read_text())
    assert report["benchmark"] == "bench_queues" and "commit" in report["stamp"]
    assert {r["method"] for r in report["rows"]} == {"numpy", "numba_merge", "numba_bucket", "numba_permutation"}
    assert all(r["identical_to_numpy"] and r["seconds"] > 0 and r["entries"] > 0 for r in report["rows"])
    kept = {r["method"]: r["bytes"] for r in report["rows"]}
    assert kept["numba_permutation"] < kept["numba_bucket"] == kept["numpy"]
    assert {(r["queues"], r["sums"]) for r in report["layer"]} == {
        ("permutation", "exponentials"), ("materialised", "exponentials"), ("permutation", "rebased")}
    assert all(len(r["calls"]) == 2 and r["held_bytes"] > 0 and r["output_spikes"] > 50 for r in report["layer"])
    for r in report["layer"]:
        if r["sums"] == "rebased":
            assert r["same_spikes"] and 0.0 <= r["max_relative_time_difference"] <= 1e-12
            assert 0.0 < r["max_relative_gradient_difference"] <= 1e-6
            assert 0.0 < r["max_relative_gradient_difference_backward"] <= 1e-9  # > 0: the backward's factors ran
        else:
            assert r["identical"]
    assert set(report["speedups"]["quick"]) == {"bucket_over_merge", "bucket_over_numpy", "permutation_over_bucket",
                                                "layer_forward", "layer_forward_backward", "layer_held_bytes",
                                                "layer_backward_peak_bytes", "rebased_forward",
                                                "rebased_forward_backward"}


def test_a_format_that_changes_the_layer_is_reported(monkeypatch):
    real = bench_queues._layer_call

    def broken(t, w, d, permutation, rebased=False):
        measured, digest, out, grads = real(t, w, d, permutation, rebased)
        return measured, digest + [b"x"] if permutation else digest, out, grads

    monkeypatch.setattr(bench_queues, "_layer_call", broken)
    with pytest.raises(AssertionError, match="permutation format changes the layer's outputs"):
        bench_queues.run_layer({"quick": dict(batch=2, n_in=50, spikes=5000, n_out=16)}, 1)


def _shift_times(out, grads):
    out.times[...] = out.times * (1 + 1e-9)


def _drift_weight_grads(out, grads):
    grads.weights[...] = grads.weights * (1 + 1e-8)


@pytest.mark.parametrize("spoil,message", [
    (_shift_times, "rebased forward changes the spikes"),
    (_drift_weight_grads, "rebased factors change the gradients on quick: weights outside rtol = atol = 1e-9 of the "
                          "exponential backward")])
def test_a_rebased_variant_that_changes_the_layer_is_reported(spoil, message, monkeypatch):
    """Spike times moved by 1e-9, or weight gradients by 1e-8, in the rebased variant stop the run."""
    real = bench_queues._layer_call

    def spoiled(t, w, d, permutation, rebased=False):
        measured, digest, out, grads = real(t, w, d, permutation, rebased)
        if rebased:
            spoil(out, grads)
        return measured, digest, out, grads

    monkeypatch.setattr(bench_queues, "_layer_call", spoiled)
    with pytest.raises(AssertionError, match=message):
        bench_queues.run_layer({"quick": dict(batch=2, n_in=50, spikes=5000, n_out=16)}, 1)


def test_a_builder_that_disagrees_is_not_timed(monkeypatch):
    real = bench_queues.builders

    def broken():
        b = real()
        b["numba_bucket"] = lambda t, d: tuple(x[..., ::-1].copy() for x in real()["numba_merge"](t, d))
        return b

    monkeypatch.setattr(bench_queues, "builders", broken)
    with pytest.raises(AssertionError, match="numba_bucket builds other queues"):
        bench_queues.run({"quick": dict(batch=2, n_in=50, spikes=5000, n_out=16)}, 1)
