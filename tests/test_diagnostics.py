"""``spike_slopes``: the voltage's slope at each recorded spike, checked against the spike times' own sensitivity
(finite differences of the forward), the definition of the current at a spike, the exact trace and the backward."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import spikescan as ss

from _cases import direct_spike_currents, random_spikes, weights
from test_cuda import BACKENDS, Backend, permutation

TM, TS = 10.0, 5.0


def layer(seed, batch=3, n_in=12, n_out=7, max_in=4, delays=False):
    rng = np.random.default_rng(seed)
    t = random_spikes(rng, batch, n_in, max_in, t_max=30.0)
    W = weights(rng, n_in, n_out, mean=0.5, std=0.6)
    D = rng.uniform(0.0, 6.0, (n_in, n_out)) if delays else None
    return t, W, D


def first_spike_fd(t, W, D, threshold, h=1e-6, **kw):
    """``dt*/dthreshold_i`` of each neuron's first spike by central differences of the forward, per neuron's own
    threshold: ``[batch, n_out]``, ``nan`` where the neuron fires on neither side."""
    n_out = W.shape[1]
    out = np.full((t.shape[0], n_out), np.nan)
    for i in range(n_out):
        up, down = threshold.copy(), threshold.copy()
        up[i] += h
        down[i] -= h
        t_up = ss.lif_forward(t, W, delays=D, threshold=up, **kw).times[:, i, 0]
        t_down = ss.lif_forward(t, W, delays=D, threshold=down, **kw).times[:, i, 0]
        ok = np.isfinite(t_up) & np.isfinite(t_down)
        out[ok, i] = (t_up[ok] - t_down[ok]) / (2 * h)
    return out


@pytest.mark.parametrize("delays", [False, True])
def test_first_spike_slope_is_the_inverse_threshold_sensitivity(cpu_engine, delays):
    """For a neuron's first spike, dt*/dthreshold = 1 / slope: finite differences of the forward agree."""
    t, W, D = layer(1, delays=delays)
    th = np.linspace(0.9, 1.2, W.shape[1])
    kw = dict(tau_mem=TM, tau_syn=TS, max_spikes=4)
    r = ss.lif_forward(t, W, delays=D, threshold=th, **kw)
    slopes = ss.spike_slopes(r)
    fd = first_spike_fd(t, W, D, th, **kw)
    first = np.isfinite(r.times[:, :, 0])
    assert first.sum() >= 10
    assert np.isfinite(fd[first]).all()
    np.testing.assert_allclose(1.0 / slopes[:, :, 0][first], fd[first], rtol=1e-5)


@pytest.mark.parametrize("delays", [False, True])
def test_every_spike_slope_from_the_definition_and_the_exact_trace(cpu_engine, delays):
    """All recorded spikes: (I - threshold) / tau_mem with I summed from its definition (the arrivals before the
    spike, decayed), and with I from lif_trace at the spike times; nan exactly where no spike was recorded."""
    t, W, D = layer(2, delays=delays, n_in=16, max_in=5)
    W = W * 1.6  # several spikes per neuron
    kw = dict(tau_mem=TM, tau_syn=TS, max_spikes=5)
    r = ss.lif_forward(t, W, delays=D, **kw)
    slopes = ss.spike_slopes(r)
    rec = np.isfinite(r.times)
    assert slopes.shape == r.times.shape and slopes.dtype == np.float64
    np.testing.assert_array_equal(np.isnan(slopes), ~rec)
    assert (r.times[:, :, 1] < np.inf).sum() >= 5  # later spikes too, past a reset

    res = ss._queue.materialised(r.residuals) if r.residuals.queue_perm is not None else r.residuals
    direct = (direct_spike_currents(r._replace(residuals=res)) - 1.0) / TM
    np.testing.assert_allclose(slopes[rec], direct[rec], rtol=1e-10, atol=1e-13)

    for b in range(t.shape[0]):
        grid = np.unique(r.times[b][rec[b]])
        tr = ss.lif_trace(t[b:b + 1], W, grid, delays=D, **kw)
        for i in range(W.shape[1]):
            spikes = r.times[b, i][rec[b, i]]
            current = tr.current[0, i, np.searchsorted(grid, spikes)]
            np.testing.assert_allclose(slopes[b, i][rec[b, i]], (current - 1.0) / TM, rtol=1e-9, atol=1e-12)


def test_slopes_match_the_backwards_first_spike_threshold_gradient():
    """The compiled and the sequential backward's threshold gradient of a neuron's first spike is 1 / slope."""
    t, W, D = layer(3, delays=True)
    th = np.full(W.shape[1], 1.0)
    for b in range(t.shape[0]):
        r = ss.lif_forward(t[b:b + 1], W, delays=D, threshold=th, tau_mem=TM, tau_syn=TS, max_spikes=4)
        slopes = ss.spike_slopes(r)
        G = np.zeros(r.times.shape)
        G[:, :, 0] = np.isfinite(r.times[:, :, 0])
        for method in ("sequential", "auto"):
            g = ss.lif_backward(r, G, method=method)
            fired = G[0, :, 0] > 0
            np.testing.assert_allclose(g.threshold[fired], 1.0 / slopes[0, fired, 0], rtol=1e-9)
            np.testing.assert_array_equal(g.threshold[~fired], 0.0)


def test_engines_methods_and_queue_formats_agree(cpu_engine):
    """The same spikes through every method and queue format give the same slopes to rounding."""
    from spikescan import _lif_numpy

    t, W, D = layer(4, delays=True, n_out=9)
    kw = dict(tau_mem=TM, tau_syn=TS, max_spikes=4, delays=D)
    ref = ss.spike_slopes(ss.lif_forward(t, W, engine="numpy", method="sequential", **kw))
    for method in ("sequential", "scan"):
        for perm in (True, False):
            saved = _lif_numpy.COMPILED_PERMUTATION
            _lif_numpy.COMPILED_PERMUTATION = perm
            try:
                out = ss.spike_slopes(ss.lif_forward(t, W, method=method, **kw))
            finally:
                _lif_numpy.COMPILED_PERMUTATION = saved
            np.testing.assert_array_equal(np.isnan(out), np.isnan(ref))
            np.testing.assert_allclose(out, ref, rtol=1e-9, atol=1e-12)


def test_grazing_spike_has_zero_slope_and_the_backward_warns():
    """The exact grazing construction (peak e * e^-1 = 1 at t = 12): slope 0, the spike the backward warns about."""
    r = ss.lif_forward(np.array([[[2.0]]]), np.array([[np.e]]), max_spikes=2, tau_mem=10.0, tau_syn=10.0,
                       engine="numpy")
    slopes = ss.spike_slopes(r)
    assert r.times[0, 0, 0] == 12.0 and slopes[0, 0, 0] <= 0.0 and abs(slopes[0, 0, 0]) < 1e-15
    assert np.isnan(slopes[0, 0, 1])
    with pytest.warns(ss.GrazingSpikeWarning):
        ss.lif_backward(r, np.ones(r.times.shape), method="sequential")
    # A nearly grazing spike: a small positive slope, and a threshold derivative of 1 / slope to match.
    r = ss.lif_forward(np.array([[[2.0]]]), np.array([[np.e * (1 + 1e-6)]]), max_spikes=1, tau_mem=10.0,
                       tau_syn=10.0, engine="numpy", threshold=np.array([1.0]))
    s = float(ss.spike_slopes(r)[0, 0, 0])
    assert 0.0 < s < 1e-3
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        g = ss.lif_backward(r, np.ones(r.times.shape), method="sequential")
    np.testing.assert_allclose(g.threshold[0], 1.0 / s, rtol=1e-6)


@pytest.mark.parametrize("recurrent_delays", [False, True])
def test_recurrent_first_spikes_and_capped_log(cpu_engine, recurrent_delays):
    """A recurrent layer: slopes from its spike log, with the first spike of each neuron checked by finite
    differences of its own threshold (earlier spikes of the others do not depend on it), and spikes past
    max_spikes (in the log, not recorded) left out."""
    rng = np.random.default_rng(5)
    t, W, _ = layer(5, n_in=10, n_out=6, max_in=4)
    R = rng.normal(0.0, 0.3, (6, 6))
    RD = rng.uniform(0.5, 3.0, (6, 6)) if recurrent_delays else None
    th = np.linspace(0.9, 1.1, 6)
    kw = dict(tau_mem=TM, tau_syn=TS, max_spikes=2, recurrent_weights=R, recurrent_delays=RD)
    r = ss.lif_forward(t, W * 1.5, threshold=th, **kw)
    assert (r.counts > 2).any()  # some spikes are only in the log
    slopes = ss.spike_slopes(r)
    np.testing.assert_array_equal(np.isnan(slopes), ~np.isfinite(r.times))
    fd = first_spike_fd(t, W * 1.5, None, th, **kw)
    first = np.isfinite(r.times[:, :, 0])
    assert first.sum() >= 8
    np.testing.assert_allclose(1.0 / slopes[:, :, 0][first], fd[first], rtol=1e-5)
    # The slope of every recorded spike from the current the log keeps: both engines alike.
    other = ss.spike_slopes(ss.lif_forward(t, W * 1.5, threshold=th, engine="numpy", method="sequential", **kw))
    np.testing.assert_allclose(slopes, other, rtol=1e-9, atol=1e-12)


def test_float32_results_and_bad_arguments():
    t, W, _ = layer(6)
    r = ss.lif_forward(t.astype(np.float32), W.astype(np.float32), tau_mem=TM, tau_syn=TS, max_spikes=3)
    assert ss.spike_slopes(r).dtype == np.float64
    for bad in (r.times, r.residuals, None):
        with pytest.raises(TypeError, match="result must be the LIFResult returned by lif_forward, got"):
            ss.spike_slopes(bad)
    assert "spike_slopes" in ss.__all__


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("perm", [False, True])
def test_cuda_residual_formats(request, backend, perm):
    """The CUDA forward's residuals (int32 queue indices; the 2-byte permutation format): the CPU engine's slopes.
    Emulated on the host, and on a GPU with CuPy arrays in and out."""
    be = Backend(backend, request)
    t, W, D = layer(7, delays=True)
    kw = dict(tau_mem=TM, tau_syn=TS, max_spikes=4)
    ref = ss.spike_slopes(ss.lif_forward(t, W, delays=D, engine="numpy", **kw))
    with permutation(perm):
        out = ss.spike_slopes(be.lif(t, W, D, method="sequential", **kw))
    assert type(out) is type(be.xp.asarray(ref))
    out = be.to_host(out)
    np.testing.assert_array_equal(np.isnan(out), np.isnan(ref))
    np.testing.assert_allclose(out, ref, rtol=1e-9, atol=1e-12)
