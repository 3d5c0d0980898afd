"""Tests of the LIF layer's guards against pathological inputs (issue 15 items 1 and 2), on NumPy and on the CUDA
kernels (host emulation everywhere, the real GPU when there is one).

- Runaway firing: a neuron driven far above threshold would fire ~``I tau_mem / threshold`` exact spikes per unit
  time (1e15 for a weight of 1e15); ``lif_forward(max_total_spikes=...)`` stops it with ``RunawayFiringError``.
- Grazing spikes: where ``V`` peaks exactly at the threshold (``dV/dt = 0`` at the spike) the spike time is not
  differentiable; ``lif_backward`` drops that spike's IFT term and issues ``GrazingSpikeWarning`` instead of
  returning NaN. The exact case: one input of weight ``e`` at ``t = 2`` with ``tau_mem = tau_syn = 10``: ``V`` peaks
  at ``t = 12`` at ``e * exp(-1)``, which rounds to exactly 1, and ``I`` there is the same product (for equal time
  constants ``V(s) = (s / tau) exp(-s / tau) w``, so at ``s = tau`` both are ``exp(-1) * w`` bit for bit).
"""

from __future__ import annotations

import pickle
import time
import warnings

import numpy as np
import pytest

import spikescan as ss
from spikescan import _lif_numpy
from spikescan.cuda import _lif

from _cases import random_spikes, weights
from test_cuda import BACKENDS, Backend

RunawayFiringError = ss.RunawayFiringError
GrazingSpikeWarning = ss.GrazingSpikeWarning

# (input_times, weights, time constants): one neuron of a [2, 3] layer (neuron 2 of sample 1) runs away; the others
# fire normally or not at all.
RUNAWAY_CASES = {
    # weight 1e15 at t = 1: a spike every ~1e-14 (resolvable at t ~ 1), ~1e15 of them.
    "weight_1e15_at_t1": (1.0, 1e15, dict(tau_mem=10.0, tau_syn=5.0)),
    # the same from t = 0, where float64 resolves even shorter intervals.
    "weight_1e15_at_t0": (0.0, 1e15, dict(tau_mem=10.0, tau_syn=5.0)),
    # weight 3 with a fast membrane and a slow synapse: ~135k spikes before the current decays to threshold.
    "weight_3_fast_membrane": (1.0, 3.0, dict(tau_mem=1e-3, tau_syn=100.0)),
}


def layer_case(name):
    t_input, w, taus = RUNAWAY_CASES[name]
    # Channel 0 spikes in both samples at 0.5 and drives neurons 0 and 1 (time constants 10 and 5: neuron 0 fires
    # normally, neuron 1 stays silent); channel 1 spikes only in sample 1, at t_input, and only reaches neuron 2,
    # which has the case's time constants and runs away.
    t = np.array([[[0.5], [np.inf]], [[0.5], [t_input]]])
    W = np.array([[1.8, 0.3, 0.0], [0.0, 0.0, w]])
    return t, W, {k: np.array([10.0, 10.0, v]) if k == "tau_mem" else np.array([5.0, 5.0, v])
                  for k, v in taus.items()}


def assert_runaway(err, sample, neuron, limit, t_min, threshold=1.0):
    assert isinstance(err, FloatingPointError)
    assert (err.sample, err.neuron, err.limit) == (sample, neuron, limit)
    assert np.isfinite(err.time) and err.time >= t_min
    assert np.isfinite(err.current) and err.current > threshold
    msg = str(err)
    assert f"neuron {neuron} of sample {sample} fires more than max_total_spikes={limit} times" in msg
    assert f"spike {limit + 1} at t={err.time!r}" in msg and f"I={err.current!r}" in msg


# ---------------------------------------------------------------------------------------------------------------
# Runaway firing, NumPy
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.usefixtures("cpu_engine")
@pytest.mark.parametrize("method", ["sequential", "scan"])
@pytest.mark.parametrize("case", list(RUNAWAY_CASES))
def test_runaway_firing_raises_quickly(case, method):
    t, W, taus = layer_case(case)
    start = time.perf_counter()
    with pytest.raises(RunawayFiringError) as info:
        ss.lif_forward(t, W, max_spikes=4, method=method, max_total_spikes=1000, **taus)
    elapsed = time.perf_counter() - start
    assert_runaway(info.value, sample=1, neuron=2, limit=1000, t_min=float(t[1, 1, 0]))
    assert elapsed < 30.0, f"{elapsed:.1f} s for 1000 spikes"


@pytest.mark.usefixtures("cpu_engine")
def test_runaway_fields_agree_between_methods():
    for case in RUNAWAY_CASES:
        t, W, taus = layer_case(case)
        errs = []
        for method in ("sequential", "scan"):
            with pytest.raises(RunawayFiringError) as info:
                ss.lif_forward(t, W, max_spikes=4, method=method, chunk_size=3, max_total_spikes=50, **taus)
            errs.append(info.value)
        a, b = errs
        assert (a.sample, a.neuron, a.limit) == (b.sample, b.neuron, b.limit)
        np.testing.assert_allclose([b.time, b.current], [a.time, a.current], rtol=1e-12, err_msg=case)


@pytest.mark.usefixtures("cpu_engine")
def test_runaway_firing_default_limit_finishes_in_seconds():
    # The ~135k-spike neuron alone, with the default limit (10,000 spikes), on the method "auto" picks.
    t, W, taus = np.array([[[1.0]]]), np.array([[3.0]]), RUNAWAY_CASES["weight_3_fast_membrane"][2]
    assert ss.lif.DEFAULT_MAX_TOTAL_SPIKES == 10_000
    start = time.perf_counter()
    with pytest.raises(RunawayFiringError) as info:
        ss.lif_forward(t, W, max_spikes=4, **taus)
    elapsed = time.perf_counter() - start
    assert_runaway(info.value, sample=0, neuron=0, limit=10_000, t_min=1.0)
    assert elapsed < 60.0, f"{elapsed:.1f} s for the default limit"


@pytest.mark.usefixtures("cpu_engine")
@pytest.mark.parametrize("method", ["sequential", "scan"])
def test_limit_counts_every_spike_recorded_or_not(method):
    # A neuron that fires exactly n spikes (most of them unrecorded) passes with max_total_spikes=n; with n - 1 the
    # error names spike n: its time is the n-th spike of the full run, its current I is the current there.
    t = np.array([[[1.0]]])
    W = np.array([[3.0]])
    taus = dict(tau_mem=1e-3, tau_syn=0.03)
    full = ss.lif_forward(t, W, max_spikes=200, method="sequential", **taus)
    n = int(full.counts[0, 0])
    assert 20 < n < 200
    ok = ss.lif_forward(t, W, max_spikes=2, method=method, chunk_size=2, max_total_spikes=n, **taus)
    assert int(ok.counts[0, 0]) == n
    with pytest.raises(RunawayFiringError) as info:
        ss.lif_forward(t, W, max_spikes=2, method=method, chunk_size=2, max_total_spikes=n - 1, **taus)
    err = info.value
    assert (err.sample, err.neuron, err.limit) == (0, 0, n - 1)
    t_n = float(full.residuals.spike_times[0, 0, n - 1])
    assert err.time == pytest.approx(t_n, rel=1e-12)
    assert err.current == pytest.approx(3.0 * np.exp(-(t_n - 1.0) / 0.03), rel=1e-12)


@pytest.mark.usefixtures("cpu_engine")
@pytest.mark.parametrize("method", ["sequential", "scan"])
@pytest.mark.parametrize("with_delays", [False, True])
def test_normal_layers_are_unaffected_by_the_limit(method, with_delays):
    rng = np.random.default_rng(3)
    t = random_spikes(rng, 3, 12, 5, t_max=40.0)
    W = weights(rng, 12, 6, mean=0.8)
    D = rng.uniform(0.0, 5.0, (12, 6)) if with_delays else None
    kw = dict(delays=D, tau_mem=10.0, tau_syn=5.0, max_spikes=5, method=method, chunk_size=4)
    ref = ss.lif_forward(t, W, **kw)
    most = int(ref.counts.max())
    assert most > 5  # some spikes are not recorded: the limit counts them all the same
    for limit in (most, 2**62, 10**30):
        out = ss.lif_forward(t, W, max_total_spikes=limit, **kw)
        np.testing.assert_array_equal(out.counts, ref.counts)
        np.testing.assert_array_equal(out.times, ref.times)
        np.testing.assert_array_equal(out.residuals.spike_event, ref.residuals.spike_event)
    with pytest.raises(RunawayFiringError):
        ss.lif_forward(t, W, max_total_spikes=most - 1, **kw)


@pytest.mark.parametrize("value", [0, -3, 2.5, True, "100", None, np.float64(10.0)])
def test_max_total_spikes_is_validated(value):
    t, W = np.array([[[1.0]]]), np.array([[2.0]])
    with pytest.raises(ValueError, match=r"max_total_spikes must be a positive integer, got "):
        ss.lif_forward(t, W, tau_mem=10.0, tau_syn=5.0, max_spikes=2, max_total_spikes=value)
    ss.lif_forward(t, W, tau_mem=10.0, tau_syn=5.0, max_spikes=2, max_total_spikes=np.int32(5))


def test_runaway_error_is_exported_and_pickles():
    assert issubclass(ss.RunawayFiringError, FloatingPointError)
    assert "RunawayFiringError" in ss.__all__
    err = _lif_numpy.runaway_firing_error(7, 3, 1.5, 2.5e3, 100, 1.0)
    assert (err.sample, err.neuron, err.time, err.current, err.limit) == (2, 1, 1.5, 2.5e3, 100)
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is ss.RunawayFiringError and str(back) == str(err)
    assert (back.sample, back.neuron, back.time, back.current, back.limit) == (2, 1, 1.5, 2.5e3, 100)


@pytest.mark.usefixtures("cpu_engine")
def test_unresolvable_spike_is_still_reported_as_such():
    # Spikes 1e-14 apart at t = 1e6 round to the same time at the second spike, long before any limit.
    with pytest.raises(FloatingPointError, match=r"fires twice at t=1000000") as info:
        ss.lif_forward(np.array([[[1e6]]]), np.array([[1e15]]), tau_mem=10.0, tau_syn=5.0, max_spikes=4,
                       max_total_spikes=3)
    assert not isinstance(info.value, RunawayFiringError)


# ---------------------------------------------------------------------------------------------------------------
# Grazing spikes, NumPy
# ---------------------------------------------------------------------------------------------------------------

GRAZE = dict(tau_mem=10.0, tau_syn=10.0)


def grazing_single(w):
    return np.array([[[2.0]]]), np.array([[w]])


def grazing_layer():
    """[2, 3] layer: neuron 2 of sample 1 grazes at t = 12 (input of weight e at t = 2), then fires a proper spike
    after a second input at t = 20; the other neurons fire proper spikes (or none)."""
    t = np.array([[[1.0, 20.0], [3.0, np.inf]], [[2.0, 20.0], [np.inf, np.inf]]])
    W = np.array([[1.5, 0.7, np.e], [0.9, 0.5, 0.4]])
    return t, W


def backward_recording(result, G, method, backward=None):
    """``lif_backward`` under ``errstate(all="raise")`` (no division by zero, no NaN arithmetic), with the warnings
    it issued."""
    with warnings.catch_warnings(record=True) as rec, np.errstate(all="raise"):
        warnings.simplefilter("always")
        g = (backward or ss.lif_backward)(result, G, method=method)
    for name in ("weights", "input_times", "delays", "threshold"):
        x = getattr(g, name)
        assert x is None or np.isfinite(x).all(), (name, x)
    return g, [w.message for w in rec]


@pytest.mark.usefixtures("cpu_engine")
def test_exact_grazing_case_is_exact():
    # The construction the tests rely on: the peak voltage and the current there are one product, exactly 1.
    assert np.exp(-1.0) * np.e == 1.0
    for method in ("sequential", "scan"):
        r = ss.lif_forward(*grazing_single(np.e), max_spikes=2, method=method, **GRAZE)
        assert int(r.counts[0, 0]) == 1 and r.times[0, 0, 0] == 12.0
        # One ulp below e the peak stays under the threshold: no spike.
        r = ss.lif_forward(*grazing_single(np.nextafter(np.e, 0.0)), max_spikes=2, method=method, **GRAZE)
        assert int(r.counts[0, 0]) == 0


@pytest.mark.usefixtures("cpu_engine")
@pytest.mark.parametrize("method", ["sequential", "scan"])
def test_grazing_spike_warns_and_drops_its_ift_term(method):
    r = ss.lif_forward(*grazing_single(np.e), max_spikes=2, method="sequential", **GRAZE)
    G = np.full(r.times.shape, 0.7)
    g, warned = backward_recording(r, G, method)
    assert len(warned) == 1 and isinstance(warned[0], GrazingSpikeWarning)
    w = warned[0]
    assert (w.count, w.sample, w.neuron, w.time) == (1, 0, 0, 12.0)
    assert "1 grazing spike(s) in lif_backward, the first of neuron 0 of sample 0 at t=12.0" in str(w)
    # No gradient through the state before the spike or to the threshold; the spike still moves with its gap's
    # start, so the input time gets the cotangent itself (a shift of the input shifts the spike).
    assert g.weights[0, 0] == 0.0 and float(g.threshold) == 0.0
    assert g.input_times[0, 0, 0] == 0.7


@pytest.mark.usefixtures("cpu_engine")
@pytest.mark.parametrize("method", ["sequential", "scan"])
def test_one_ulp_from_grazing_is_differentiated_as_usual(method):
    w = np.nextafter(np.e, np.inf)
    r = ss.lif_forward(*grazing_single(w), max_spikes=2, method="sequential", **GRAZE)
    assert int(r.counts[0, 0]) == 1 and r.times[0, 0, 0] == 12.0
    G = np.ones(r.times.shape)
    g, warned = backward_recording(r, G, method)
    assert warned == []
    # IFT at the peak s = tau: dR/dt = (I - threshold) / tau_mem with I = exp(-1) w (one ulp above 1),
    # dR/dw = exp(-1), dR/dthreshold = -1; the input time only shifts the spike.
    slope = (np.exp(-1.0) * w - 1.0) / 10.0
    assert slope == 2.0**-52 / 10.0
    np.testing.assert_allclose(g.weights[0, 0], -np.exp(-1.0) / slope, rtol=1e-12)
    np.testing.assert_allclose(float(g.threshold), 1.0 / slope, rtol=1e-12)
    assert 1e16 < abs(g.weights[0, 0]) < 1e17 and 1e16 < float(g.threshold) < 1e17
    np.testing.assert_allclose(g.input_times[0, 0, 0], 1.0, rtol=1e-12)


@pytest.mark.usefixtures("cpu_engine")
@pytest.mark.parametrize("method", ["sequential", "scan"])
def test_grazing_spike_in_a_layer_leaves_the_other_neurons_alone(method):
    t, W = grazing_layer()
    r = ss.lif_forward(t, W, max_spikes=4, method="sequential", **GRAZE)
    assert r.times[1, 2, 0] == 12.0 and int(r.counts[1, 2]) == 2
    assert r.counts[0].sum() >= 3
    G = np.random.default_rng(0).normal(size=r.times.shape)
    g, warned = backward_recording(r, G, method)
    assert len(warned) == 1
    assert (warned[0].count, warned[0].sample, warned[0].neuron, warned[0].time) == (1, 1, 2, 12.0)
    # Sample 0 alone (no grazing spike) gives the same gradients to its own input times; the weights of neurons 0
    # and 1 only see sample 0's proper spikes (sample 1 is silent there).
    r0 = ss.lif_forward(t[:1], W, max_spikes=4, method="sequential", **GRAZE)
    g0, warned0 = backward_recording(r0, G[:1], method)
    assert warned0 == []
    np.testing.assert_allclose(g.input_times[0], g0.input_times[0], rtol=1e-12, atol=1e-15)
    assert r.counts[1, :2].sum() == 0
    np.testing.assert_allclose(g.weights[:, :2], g0.weights[:, :2], rtol=1e-12, atol=1e-15)
    # The second spike of the grazing neuron still differentiates through the current that carries on across the
    # grazing spike: the weight of its first input gets gradient from it.
    G2 = np.zeros(r.times.shape)
    G2[1, 2, 1] = 1.0
    g2, _ = backward_recording(r, G2, method)
    assert g2.weights[0, 2] != 0.0


def test_grazing_warning_is_exported_and_pickles():
    assert issubclass(ss.GrazingSpikeWarning, RuntimeWarning)
    assert "GrazingSpikeWarning" in ss.__all__
    w = _lif_numpy.grazing_spike_warning(3, 5, 2, 12.0)
    assert (w.count, w.sample, w.neuron, w.time) == (3, 2, 1, 12.0)
    back = pickle.loads(pickle.dumps(w))
    assert type(back) is ss.GrazingSpikeWarning and str(back) == str(w)
    assert (back.count, back.sample, back.neuron, back.time) == (3, 2, 1, 12.0)


# ---------------------------------------------------------------------------------------------------------------
# Float64 overflow: refused before the forward, reported after the backward, never silent
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.usefixtures("cpu_engine")
@pytest.mark.parametrize("method", ["sequential", "scan"])
def test_weights_that_could_overflow_the_current_are_refused(method):
    # Three simultaneous inputs whose true sum, 1.3e308, is finite: summed in queue order the current was
    # 1.5e308 + 1.5e308 = inf, then inf - 1.7e308 = inf, and the neuron silently never fired (counts 0).
    t = np.array([[[1.0], [1.0], [1.0]]])
    W = np.array([[1.5e308], [1.5e308], [-1.7e308]])
    with pytest.raises(ValueError, match=r"weights up to 1\.7e\+308 in magnitude could drive the synaptic current "
                                         r"of neuron 0 of sample 0 to inf"):
        ss.lif_forward(t, W, tau_mem=10.0, tau_syn=5.0, max_spikes=3, method=method)
    with pytest.raises(ValueError, match=r"weights up to 1e\+300 .* neuron 1 of sample 1 to 1\.1e\+300"):
        ss.lif_forward(np.array([[[1.0], [np.inf]], [[1.0], [2.0]]]), np.array([[1.0, 1e300], [0.0, 1e299]]),
                       tau_mem=10.0, tau_syn=5.0, max_spikes=3, method=method)
    for fn, kw in ((ss.li_forward, dict(t_max=20.0)), (ss.peak_voltage, {})):
        with pytest.raises(ValueError, match="could drive the synaptic current"):
            fn(t, W, tau_mem=10.0, tau_syn=5.0, **kw)


@pytest.mark.usefixtures("cpu_engine")
def test_large_weights_within_the_bound_are_simulated():
    # max |w| * n_in * max_in = 1e299 * 2 * 8 passes the static bound's limit, but only one spike arrives: the exact
    # bound (1e299) holds, so the layer runs (one spike at the input's time: the current is far above threshold).
    t = np.full((1, 2, 8), np.inf)
    t[0, 0, 0] = 1.0
    W = np.array([[1e299], [1e299]])
    out = ss.lif_forward(t, W, tau_mem=10.0, tau_syn=5.0, threshold=1e298, max_spikes=3)
    assert out.counts[0, 0] >= 1 and np.isfinite(out.times[0, 0, 0])


@pytest.mark.usefixtures("cpu_engine")
def test_recurrent_weights_that_could_overflow_the_current_are_refused():
    t = np.array([[[1.0], [2.0]]])
    kw = dict(tau_mem=10.0, tau_syn=5.0, max_spikes=2)
    R = np.full((2, 2), 1e296)
    with pytest.raises(ValueError, match=r"recurrent_weights up to 1e\+296 .* 2 \* 10000 times, could drive a "
                                         r"synaptic current to 2e\+300"):
        ss.lif_forward(t, np.ones((2, 2)), recurrent_weights=R, **kw)
    # Within the bound with a lower limit: it runs, and its first spike drives the other neuron faster than float64
    # resolves (the "fires twice" error).
    with pytest.raises(FloatingPointError, match="fires twice"):
        ss.lif_forward(t, np.full((2, 2), 5.0), recurrent_weights=R, max_total_spikes=100, **kw)


@pytest.mark.usefixtures("cpu_engine")
@pytest.mark.parametrize("method", ["sequential", "scan", "closed"])
def test_gradients_that_overflow_are_reported(method):
    rng = np.random.default_rng(0)
    t = np.sort(rng.uniform(0, 10, (2, 4, 3)), axis=-1)
    W = rng.normal(1.0, 0.5, (4, 3))
    out = ss.lif_forward(t, W, tau_mem=10.0, tau_syn=5.0, max_spikes=3)
    G = np.where(np.isfinite(out.times), 1e308, 0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # NumPy's own overflow warnings on the way
        with pytest.raises(FloatingPointError, match=r"lif_backward: the gradient of weights is not finite \(.*\) "
                                                     r"though every argument is: it overflowed float64 \(the largest "
                                                     r"\|grad_times\| is 1e\+308\)"):
            ss.lif_backward(out, G, method=method)
        lr = ss.li_forward(t, W, tau_mem=10.0, tau_syn=5.0, t_max=20.0)
        with pytest.raises(FloatingPointError, match="li_backward: the gradient of weights is not finite"):
            ss.li_backward(lr, np.full(lr.values.shape, 1e308))
        pk = ss.peak_voltage(t, 1e3 * W, tau_mem=10.0, tau_syn=5.0)  # d peak / d input time ~ w / tau: 100 x 1e308
        with pytest.raises(FloatingPointError, match="peak_voltage_backward: the gradient of input_times is not "
                                                     "finite"):
            ss.peak_voltage_backward(pk, np.full(pk.values.shape, 1e308))
    # float32 arguments: the float64 gradients fit, their cast back to float32 does not
    out32 = ss.lif_forward(t.astype(np.float32), W.astype(np.float32), tau_mem=10.0, tau_syn=5.0, max_spikes=3)
    G32 = np.where(np.isfinite(out32.times), np.float32(1e38), np.float32(0.0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with pytest.raises(FloatingPointError, match="it overflowed float32"):
            ss.lif_backward(out32, G32, method=method)
    ss.lif_backward(out, np.where(np.isfinite(out.times), 1.0, 0.0), method=method)  # and ordinary ones pass


# ---------------------------------------------------------------------------------------------------------------
# CUDA kernels: host emulation everywhere, the GPU when there is one
# ---------------------------------------------------------------------------------------------------------------

@pytest.fixture(params=BACKENDS)
def backend(request):
    return Backend(request.param, request)


CUDA_FORWARD_METHODS = ("sequential", "scan", "step")


@pytest.mark.parametrize("method", CUDA_FORWARD_METHODS)
def test_cuda_runaway_firing_raises_the_numpy_error(backend, method):
    for case in RUNAWAY_CASES:
        t, W, taus = layer_case(case)
        with pytest.raises(RunawayFiringError) as ref:
            ss.lif_forward(t, W, max_spikes=4, method="sequential", max_total_spikes=1000, **taus)
        with pytest.raises(RunawayFiringError) as info:
            backend.lif(t, W, max_spikes=4, method=method, max_total_spikes=1000, **taus)
        a, b = ref.value, info.value
        assert (b.sample, b.neuron, b.limit) == (a.sample, a.neuron, a.limit) == (1, 2, 1000), case
        # Same spike, same current, up to the last bits of the math library's exp.
        np.testing.assert_allclose([b.time, b.current], [a.time, a.current], rtol=1e-12, err_msg=case)
        assert str(b).split(": spike")[0] == str(a).split(": spike")[0]


def test_cuda_limit_counts_every_spike_and_normal_layers_are_unaffected(backend):
    rng = np.random.default_rng(3)
    t = random_spikes(rng, 2, 10, 4, t_max=40.0)
    W = weights(rng, 10, 4, mean=0.8)
    kw = dict(tau_mem=10.0, tau_syn=5.0, max_spikes=3)
    ref = ss.lif_forward(t, W, method="sequential", **kw)
    most = int(ref.counts.max())
    assert most > 3
    for method in CUDA_FORWARD_METHODS:
        base = backend.lif(t, W, method=method, **kw)
        np.testing.assert_array_equal(backend.to_host(base.counts), ref.counts)
        for limit in (most, 2**62):
            out = backend.lif(t, W, method=method, max_total_spikes=limit, **kw)
            for name in ("counts", "times"):
                np.testing.assert_array_equal(backend.to_host(getattr(out, name)), backend.to_host(getattr(base, name)))
        with pytest.raises(RunawayFiringError) as info:
            backend.lif(t, W, method=method, max_total_spikes=most - 1, **kw)
        with pytest.raises(RunawayFiringError) as ref_info:
            ss.lif_forward(t, W, method="sequential", max_total_spikes=most - 1, **kw)
        b, a = info.value, ref_info.value
        if (b.sample, b.neuron) == (a.sample, a.neuron):  # several neurons may reach the limit
            np.testing.assert_allclose([b.time, b.current], [a.time, a.current], rtol=1e-12)
        assert b.limit == most - 1
        assert int(ref.counts[b.sample, b.neuron]) == most


def test_cuda_unresolvable_spike_is_still_reported_as_such(backend):
    for method in CUDA_FORWARD_METHODS:
        with pytest.raises(FloatingPointError, match=r"fires twice at t=1000000") as info:
            backend.lif(np.array([[[1e6]]]), np.array([[1e15]]), tau_mem=10.0, tau_syn=5.0, max_spikes=4,
                        method=method, max_total_spikes=3)
        assert not isinstance(info.value, RunawayFiringError)


@pytest.mark.parametrize("method", CUDA_FORWARD_METHODS)
def test_cuda_grazing_spike_warns_with_the_numpy_fields(backend, method):
    t, W = grazing_layer()
    ref = ss.lif_forward(t, W, max_spikes=4, method="sequential", **GRAZE)
    G = np.random.default_rng(0).normal(size=ref.times.shape)
    out = backend.lif(t, W, max_spikes=4, method=method, **GRAZE)
    np.testing.assert_array_equal(backend.to_host(out.counts), ref.counts)
    for bwd in _lif.BACKWARD_KERNELS:
        ref_g, ref_w = backward_recording(ref, G, "sequential")
        g, warned = backward_recording(out, G, bwd, backward=backend.lif_backward)
        if backend.name == "gpu" and not warned:
            # Whether the peak is exactly at the threshold depends on the last bit of the device's exp(-1): without
            # a grazing spike there the gradients are merely very large. They must be finite (checked above).
            continue
        assert len(warned) == 1 and isinstance(warned[0], GrazingSpikeWarning), bwd
        a, b = ref_w[0], warned[0]
        assert (b.count, b.sample, b.neuron, b.time) == (a.count, a.sample, a.neuron, a.time) == (1, 1, 2, 12.0)
        assert str(b) == str(a)
        for name in ("weights", "input_times", "threshold"):
            np.testing.assert_allclose(backend.to_host(getattr(g, name)), getattr(ref_g, name), rtol=1e-9, atol=1e-9,
                                       err_msg=f"{name} (backward {bwd})")


def test_cuda_one_ulp_from_grazing_is_differentiated_as_usual(backend):
    w = np.nextafter(np.e, np.inf)
    ref = ss.lif_forward(*grazing_single(w), max_spikes=2, method="sequential", **GRAZE)
    ref_g, _ = backward_recording(ref, np.ones(ref.times.shape), "sequential")
    out = backend.lif(*grazing_single(w), max_spikes=2, method="sequential", **GRAZE)
    for bwd in _lif.BACKWARD_KERNELS:
        g, warned = backward_recording(out, np.ones(ref.times.shape), bwd, backward=backend.lif_backward)
        if backend.name == "gpu":
            continue  # the device's exp(-1) decides how far from grazing this is; finite is what is checked
        assert warned == []
        for name in ("weights", "input_times", "threshold"):
            np.testing.assert_allclose(backend.to_host(getattr(g, name)), getattr(ref_g, name), rtol=1e-12,
                                       err_msg=f"{name} (backward {bwd})")
