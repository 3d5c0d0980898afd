"""Recurrent LIF layer (DESIGN.md section 9): the parallel windows (``scan``) against the global event loop
(``sequential``), both against the feed-forward layer when ``R = 0``, and every gradient against finite differences
and against the feed-forward backward; every test on both CPU engines (``cpu_engine``: the compiled engine runs its
one forward, the event loop, for both methods). The independent reference (``spikescan.reference``) is compared in
``tests/test_recurrent_reference.py``, the engines with each other in ``tests/test_numba.py``."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import spikescan as ss
from spikescan import _lif_numpy

from _cases import random_spikes, weights
from tolerances import TOL

pytestmark = pytest.mark.usefixtures("cpu_engine")


def assert_same(ref, out, exact=False):
    np.testing.assert_array_equal(out.counts, ref.counts)
    np.testing.assert_array_equal(np.isfinite(out.times), np.isfinite(ref.times))
    fin = np.isfinite(ref.times)
    if exact:
        np.testing.assert_array_equal(out.times[fin], ref.times[fin])
    else:
        np.testing.assert_allclose(out.times[fin], ref.times[fin], **TOL["float64"]["times"])


def case(seed, batch=3, n_in=6, n_out=5, max_in=5, r_mean=0.0, r_std=0.5, delays=False, rec_delays=False,
         t_max=30.0):
    rng = np.random.default_rng(seed)
    t = random_spikes(rng, batch, n_in, max_in, t_max=t_max)
    W = weights(rng, n_in, n_out, mean=1.0, std=0.8)
    R = rng.normal(r_mean, r_std, (n_out, n_out))
    # Self-connections stay, but weak enough that no neuron excites itself without bound (tested on its own).
    np.fill_diagonal(R, np.clip(np.diag(R), -1.0, 0.2))
    D = rng.uniform(0.0, 3.0, (n_in, n_out)) if delays else None
    Dr = rng.uniform(0.0, 3.0, (n_out, n_out)) if rec_delays else None
    return t, W, R, D, Dr


# ---------------------------------------------------------------------------------------------------------------
# Forward
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["sequential", "scan"])
@pytest.mark.parametrize("delays", [False, True])
def test_zero_recurrent_weights_equal_the_feed_forward_layer_bit_for_bit(method, delays, monkeypatch):
    t, W, _, D, _ = case(1, delays=delays)
    kw = dict(tau_mem=10.0, tau_syn=4.0, max_spikes=6, delays=D)
    # The same engine's feed-forward layer, walked with two exponentials per entry as the recurrent one is (the
    # compiled feed-forward default with delays sums rebased exponentials: the same spikes, other rounding).
    monkeypatch.setattr(_lif_numpy, "COMPILED_REBASED", False)
    ff = ss.lif_forward(t, W, method="sequential", **kw)
    assert ff.counts.sum() > 20
    for chunk in (1, 2, 3, 128):
        out = ss.lif_forward(t, W, recurrent_weights=np.zeros((5, 5)), method=method, chunk_size=chunk, **kw)
        assert_same(ff, out, exact=True)


@pytest.mark.parametrize("tau_mem,tau_syn", [(10.0, 4.0), (5.0, 5.0), (3.0, 7.0)])
@pytest.mark.parametrize("delays,rec_delays", [(False, False), (True, False), (False, True), (True, True)])
def test_scan_equals_sequential(tau_mem, tau_syn, delays, rec_delays):
    # Inhibitory, mixed and excitatory loops over the cases.
    # (a slow synaptic current, tau_syn > tau_mem, turns even mixed loops into runaway excitation here)
    r_mean = (-0.4, 0.0, 0.1)[(int(delays) + 2 * int(rec_delays) + int(tau_mem)) % 3] if tau_syn <= tau_mem else -0.3
    t, W, R, D, Dr = case(2, r_mean=r_mean, r_std=0.3, delays=delays, rec_delays=rec_delays)
    W *= 0.6
    kw = dict(tau_mem=tau_mem, tau_syn=tau_syn, max_spikes=4, delays=D, recurrent_weights=R, recurrent_delays=Dr,
              max_total_spikes=300)
    ref = ss.lif_forward(t, W, method="sequential", **kw)
    assert ref.counts.sum() > 10
    for chunk in (1, 3, 128):
        out = ss.lif_forward(t, W, method="scan", chunk_size=chunk, **kw)
        assert_same(ref, out)
        np.testing.assert_array_equal(out.residuals.recurrent_log.neurons, ref.residuals.recurrent_log.neurons)


def test_recurrence_changes_the_spikes_and_unrecorded_spikes_propagate():
    t, W, R, _, _ = case(3, r_mean=0.3)
    kw = dict(tau_mem=10.0, tau_syn=4.0, recurrent_weights=R)
    ff = ss.lif_forward(t, W, tau_mem=10.0, tau_syn=4.0, max_spikes=20)
    full = ss.lif_forward(t, W, max_spikes=20, **kw)
    assert not np.array_equal(full.counts, ff.counts)
    # Recording one spike per neuron changes nothing else: the unrecorded ones still reach the other neurons.
    one = ss.lif_forward(t, W, max_spikes=1, **kw)
    np.testing.assert_array_equal(one.counts, full.counts)
    np.testing.assert_array_equal(one.times[..., 0], full.times[..., 0])
    assert one.capped_spikes == int(np.clip(full.counts - 1, 0, None).sum()) > 0


def test_self_connection_with_zero_delay_arrives_after_the_reset():
    # One neuron, one strong input: with a self-excitation R, the current after each spike grows by R.
    t = np.array([[[1.0]]])
    W = np.array([[6.0]])
    base = ss.lif_forward(t, W, tau_mem=10.0, tau_syn=5.0, max_spikes=10)
    out = ss.lif_forward(t, W, tau_mem=10.0, tau_syn=5.0, max_spikes=10, recurrent_weights=np.array([[0.5]]))
    assert out.counts[0, 0] > base.counts[0, 0] >= 1
    np.testing.assert_array_equal(out.times[0, 0, 0], base.times[0, 0, 0])  # the first spike is the same
    log = out.residuals.recurrent_log
    I = log.currents[0, : log.count[0]]
    # Each logged current is the previous one plus 0.5, decayed over the interval (exp(-dt / tau_syn)).
    dt = np.diff(log.times[0, : log.count[0]])
    np.testing.assert_allclose(I[1:], (I[:-1] + 0.5) * np.exp(-dt / 5.0), rtol=1e-12)


def test_runaway_self_excitation_is_reported():
    t = np.array([[[1.0], [2.0]]])
    W = np.array([[5.0, 5.0], [5.0, 5.0]])
    R = np.full((2, 2), 3.0)
    with pytest.raises(ss.RunawayFiringError, match="runaway self-excitation"):
        ss.lif_forward(t, W, tau_mem=10.0, tau_syn=5.0, max_spikes=4, recurrent_weights=R, max_total_spikes=200)


def test_bad_recurrent_arguments_are_named():
    t, W, R, _, _ = case(4)
    kw = dict(tau_mem=10.0, tau_syn=4.0, max_spikes=2)
    with pytest.raises(ValueError, match=r"recurrent_weights must have shape \[n_out, n_out\]"):
        ss.lif_forward(t, W, recurrent_weights=R[:3], **kw)
    bad = R.copy()
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match="recurrent_weights"):
        ss.lif_forward(t, W, recurrent_weights=bad, **kw)
    with pytest.raises(ValueError, match="recurrent_delays must be >= 0"):
        ss.lif_forward(t, W, recurrent_weights=R, recurrent_delays=-np.ones_like(R), **kw)
    with pytest.raises(ValueError, match="recurrent_delays needs recurrent_weights"):
        ss.lif_forward(t, W, recurrent_delays=np.ones_like(R), **kw)
    with pytest.raises(ValueError, match="recurrent_delays must have shape"):
        ss.lif_forward(t, W, recurrent_weights=R, recurrent_delays=np.ones((5, 4)), **kw)


# ---------------------------------------------------------------------------------------------------------------
# Backward
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("delays", [False, True])
@pytest.mark.parametrize("tau_mem,tau_syn", [(10.0, 4.0), (6.0, 6.0)])
def test_backward_with_zero_recurrent_weights_equals_the_feed_forward_backward(delays, tau_mem, tau_syn):
    t, W, _, D, _ = case(5, delays=delays)
    th = np.linspace(0.8, 1.2, 5)
    kw = dict(tau_mem=tau_mem, tau_syn=tau_syn, max_spikes=3, delays=D, threshold=th)
    ff = ss.lif_forward(t, W, engine="numpy", **kw)
    rec = ss.lif_forward(t, W, recurrent_weights=np.zeros((5, 5)), **kw)
    g = np.random.default_rng(0).normal(size=ff.times.shape)
    gf = ss.lif_backward(ff, g, engine="numpy", method="sequential")
    gr = ss.lif_backward(rec, g)
    assert np.abs(gf.weights).max() > 0.1
    for name in ("weights", "input_times", "delays", "threshold"):
        a, b = getattr(gf, name), getattr(gr, name)
        if a is None:
            assert b is None
            continue
        np.testing.assert_allclose(b, a, **TOL["float64"]["grads"], err_msg=name)


def _finite_differences(args, name, loss, h=1e-6):
    x = args[name]
    out = np.full(x.shape, np.nan)
    base_counts = loss(**args)[1]
    for idx in np.ndindex(x.shape):
        if not np.isfinite(x[idx]):
            continue
        vals = []
        for sign in (1, -1):
            moved = dict(args)
            moved[name] = x.copy()
            moved[name][idx] += sign * h
            value, counts = loss(**moved)
            if not np.array_equal(counts, base_counts):
                break  # a spike appears or vanishes within the step: no derivative to compare
            vals.append(value)
        if len(vals) == 2:
            out[idx] = (vals[0] - vals[1]) / (2 * h)
    return out


@pytest.mark.parametrize("delays,rec_delays", [(False, False), (True, True)])
@pytest.mark.parametrize("r_mean", [-0.3, 0.3])
def test_every_gradient_matches_finite_differences(delays, rec_delays, r_mean):
    t, W, R, D, Dr = case(6, batch=2, n_in=4, n_out=3, max_in=3, r_mean=r_mean, delays=delays,
                          rec_delays=rec_delays, t_max=20.0)
    th = np.array([1.0, 0.9, 1.1])
    g = None

    def loss(t, W, R, D, Dr, th):
        r = ss.lif_forward(t, W, tau_mem=8.0, tau_syn=3.0, threshold=th, max_spikes=2, delays=D,
                           recurrent_weights=R, recurrent_delays=Dr, method="scan", chunk_size=2)
        return float(np.where(np.isfinite(r.times), r.times * g, 0.0).sum()), r.counts

    args = dict(t=t, W=W, R=R, D=D, Dr=Dr, th=th)
    res = ss.lif_forward(t, W, tau_mem=8.0, tau_syn=3.0, threshold=th, max_spikes=2, delays=D,
                         recurrent_weights=R, recurrent_delays=Dr)
    assert res.counts.sum() > 6 and res.capped_spikes > 0  # unrecorded spikes carry gradient too
    g = np.random.default_rng(1).normal(size=res.times.shape)
    grads = ss.lif_backward(res, g)
    names = {"t": "input_times", "W": "weights", "R": "recurrent_weights", "th": "threshold", "D": "delays",
             "Dr": "recurrent_delays"}
    for key, field in names.items():
        if args[key] is None:
            assert getattr(grads, field) is None
            continue
        fd = _finite_differences(args, key, loss)
        ok = np.isfinite(fd)
        assert ok.mean() > 0.8, key
        np.testing.assert_allclose(np.asarray(getattr(grads, field))[ok], fd[ok], **TOL["fd"], err_msg=key)


def test_recurrent_gradients_reach_silent_senders_through_zero_weights():
    # d loss / d R[k, i] is the receiver's current adjoint at the arrival even where R[k, i] = 0.
    t, W, R, _, _ = case(7, r_mean=0.2)
    R[0, 1] = 0.0
    res = ss.lif_forward(t, W, tau_mem=10.0, tau_syn=4.0, max_spikes=5, recurrent_weights=R)
    g = np.where(np.isfinite(res.times), 1.0, 0.0)
    grads = ss.lif_backward(res, g)
    assert res.counts[:, 0].sum() > 0 and res.counts[:, 1].sum() > 0
    assert grads.recurrent_weights[0, 1] != 0.0


@pytest.mark.parametrize("delays,rec_delays", [(False, False), (True, True)])
def test_time_constant_gradients_match_finite_differences(delays, rec_delays):
    t, W, R, D, Dr = case(6, batch=2, n_in=4, n_out=3, max_in=3, r_mean=0.2, delays=delays, rec_delays=rec_delays,
                          t_max=20.0)
    tau_mem, tau_syn = np.array([8.0, 6.0, 9.0]), np.array([3.0, 6.0, 2.0])  # one neuron with equal constants
    W[:, 0] += 0.8  # every neuron fires
    kw = dict(threshold=np.array([0.8, 0.9, 1.1]), max_spikes=2, delays=D, recurrent_weights=R,
              recurrent_delays=Dr)
    res = ss.lif_forward(t, W, tau_mem=tau_mem, tau_syn=tau_syn, **kw)
    assert (res.counts.sum(axis=0) > 0).all() and res.capped_spikes > 0
    g = np.random.default_rng(1).normal(size=res.times.shape)
    grads = ss.lif_backward(res, g, time_constant_grads=True)

    def loss(tau_mem, tau_syn):
        r = ss.lif_forward(t, W, tau_mem=tau_mem, tau_syn=tau_syn, **kw)
        return float(np.where(np.isfinite(r.times), r.times * g, 0.0).sum()), r.counts

    fd = _finite_differences(dict(tau_mem=tau_mem, tau_syn=tau_syn), "tau_mem", loss)
    np.testing.assert_allclose(grads.tau_mem, fd, **TOL["fd"])
    fd = _finite_differences(dict(tau_mem=tau_mem, tau_syn=tau_syn), "tau_syn", loss)
    np.testing.assert_allclose(grads.tau_syn, fd, **TOL["fd"])
    assert np.abs(grads.tau_mem).min() > 0 and np.abs(grads.tau_syn).min() > 0


def _warn_once():
    warnings.warn("spikescan test: shown once under the default filter", UserWarning)


def test_time_constant_gradients_leave_the_warning_filters_alone():
    """The recurrent backward silenced the unrolled copy's grazing warnings with warnings.catch_warnings, whose
    filter change resets every warning registry of the process: a warning shown once (the Keras layers' per layer
    and band, a user's own) showed again after every such backward, on every training batch."""
    t, W, R, _, _ = case(6, batch=2, n_in=4, n_out=3, max_in=3, r_mean=0.2, t_max=20.0)
    W[:, 0] += 0.8
    res = ss.lif_forward(t, W, tau_mem=8.0, tau_syn=3.0, max_spikes=2, recurrent_weights=R)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        _warn_once()
        grads = ss.lif_backward(res, np.ones_like(res.times), time_constant_grads=True)
        _warn_once()
    assert np.abs(grads.tau_mem).max() > 0
    assert sum("shown once" in str(w.message) for w in caught) == 1, [str(w.message) for w in caught]


def test_unrolled_feed_forward_backward_reproduces_the_recurrent_gradients():
    # The recurrent layer unrolled into a feed-forward one (its own spikes as fixed inputs, each spike's cotangent
    # its derivative through the other neurons) must give, through the feed-forward backward (a different
    # algorithm: the discrete point recurrence), the recurrent backward's weight, recurrent-weight and threshold
    # gradients.
    from spikescan import _recurrent

    t, W, R, D, Dr = case(9, delays=True, rec_delays=True, r_mean=0.1)
    res = ss.lif_forward(t, W, tau_mem=10.0, tau_syn=4.0, threshold=np.linspace(0.9, 1.1, 5), max_spikes=2,
                         delays=D, recurrent_weights=R, recurrent_delays=Dr)
    assert res.capped_spikes > 0
    g = np.random.default_rng(2).normal(size=res.times.shape)
    grads = ss.lif_backward(res, g)
    spike = _recurrent.backward(res.residuals, g, False, spike_grads=True)[0]["spike_grads"]
    unrolled, g_unrolled = _recurrent.unrolled_layer(res.residuals, spike)
    ff = ss.lif_backward(unrolled, g_unrolled, input_times_grad=False, engine="numpy", method="sequential")
    np.testing.assert_allclose(ff.weights[:6], grads.weights, **TOL["float64"]["grads"])
    np.testing.assert_allclose(ff.weights[6:], grads.recurrent_weights, **TOL["float64"]["grads"])
    np.testing.assert_allclose(ff.threshold, grads.threshold, **TOL["float64"]["grads"])


@pytest.mark.parametrize("shape", ["no neuron", "no input channel", "no sample", "no spike slot"])
@pytest.mark.parametrize("method", ["sequential", "scan"])
@pytest.mark.parametrize("rec_delays", [False, True])
def test_empty_shapes(shape, method, rec_delays):
    """Empty layers give empty or silent results and zero gradients, as the feed-forward layer does (every forward
    and backward method, spike slopes too)."""
    from spikescan.diagnostics import spike_slopes

    rng = np.random.default_rng(2)
    t, W, R = random_spikes(rng, 2, 5, 4), np.full((5, 3), 0.5), np.full((3, 3), 0.1)
    t, W, R = {"no neuron": (t, W[:, :0], R[:0, :0]), "no input channel": (t[:, :0], W[:0], R),
               "no sample": (t[:0], W, R), "no spike slot": (t[:, :, :0], W, R)}[shape]
    kw = dict(recurrent_weights=R, recurrent_delays=np.ones_like(R) if rec_delays else None)
    r = ss.lif_forward(t, W, tau_mem=10.0, tau_syn=5.0, max_spikes=4, method=method, **kw)
    assert r.times.shape == (t.shape[0], W.shape[1], 4) and r.counts.sum() == 0 and np.isinf(r.times).all()
    for backward in ("auto", "sequential"):
        g = ss.lif_backward(r, np.ones_like(r.times), method=backward, time_constant_grads=True)
        for name, ref in (("weights", W), ("input_times", t), ("recurrent_weights", R)):
            got = getattr(g, name)
            assert got.shape == ref.shape and not got.any(), name
    assert spike_slopes(r).shape == r.times.shape


def test_gradients_take_the_dtype_of_their_own_arguments():
    """float32 recurrent weights and delays beside float64 input weights: each gradient in its argument's dtype."""
    rng = np.random.default_rng(4)
    t = random_spikes(rng, 2, 5, 3)
    R, Dr = rng.normal(0.0, 0.3, (3, 3)).astype(np.float32), rng.uniform(0.5, 2, (3, 3)).astype(np.float32)
    r = ss.lif_forward(t, weights(rng, 5, 3), tau_mem=10.0, tau_syn=5.0, max_spikes=4, recurrent_weights=R,
                       recurrent_delays=Dr)
    g = ss.lif_backward(r, np.ones_like(r.times))
    assert g.weights.dtype == np.float64 and g.input_times.dtype == np.float64
    assert g.recurrent_weights.dtype == np.float32 and g.recurrent_delays.dtype == np.float32


def test_scan_applies_an_arrival_once_when_a_crossing_rounds_to_its_time():
    """A recurrent arrival that lands within an ulp of the receiver's threshold crossing: the crossing lies in the
    gap after the arrival, at a time that rounds to the arrival's. The scan applied "the arrivals before the
    crossing" by time, left that arrival out of the spike's state and applied it again after the reset, so the
    receiver's current carried it twice (its next spike at 7.15 instead of 8.24, or an extra spike). Constructed
    ties (an arrival placed at -2 .. +1 ulp of a crossing, as the sequential loop computes it) on random layers:
    the scan, at lookaheads 1, 2 and 128, equals the sequential loop (before the fix, 20 of 202 such ties
    differed)."""
    t = np.array([[[1.0907143662499397, 4.323451255468874], [3.653759681856269, 4.330637153691215],
                   [1.389326451494639, 3.985217765917323]]])
    W = np.array([[2.663054282109341, 1.2485947390936432, 1.8176052100757425],
                  [0.6787170165584923, 1.9580960253776452, 1.094765999074044],
                  [2.412409115259121, 0.9340790904385063, 1.2818556406269173]])
    R = np.zeros((3, 3))
    R[2, 1] = 2.0
    Dr = np.zeros((3, 3))
    Dr[2, 1] = 0.2063819543389913  # neuron 2's spike + Dr = neuron 1's crossing
    cases = [(t, W, dict(tau_mem=10.0, tau_syn=3.0, max_spikes=4, recurrent_weights=R, recurrent_delays=Dr))]
    rng = np.random.default_rng(1)
    while len(cases) < 60:
        tm = float(rng.choice([10.0, 6.0, 5.0]))
        ts = float(rng.choice([tm / 2, tm, tm * 0.3, tm * 1.5]))
        x = np.sort(rng.uniform(0, 5, (1, 3, 2)), axis=-1)
        w_in = rng.uniform(0.5, 3.0, (3, 3))
        base = ss.lif_forward(x, w_in, tau_mem=tm, tau_syn=ts, max_spikes=6, engine="numpy", method="sequential")
        fire = [i for i in range(3) if base.counts[0, i] > 0]
        if len(fire) < 2:
            continue
        k, i = rng.choice(fire, 2, replace=False)
        tk, ti = base.times[0, k, 0], base.times[0, i, int(rng.integers(min(base.counts[0, i], 6)))]
        if tk >= ti:
            continue
        ulps = int(rng.integers(-2, 2))
        target = ti
        for _ in range(abs(ulps)):
            target = np.nextafter(target, np.inf if ulps > 0 else -np.inf)
        if tk + (target - tk) != target:  # the arrival must land exactly there
            continue
        R = np.zeros((3, 3))
        R[k, i] = float(rng.choice([-30.0, -0.5, 2.0, 3.0]))
        Dr = np.zeros((3, 3))
        Dr[k, i] = target - tk
        cases.append((x, w_in, dict(tau_mem=tm, tau_syn=ts, max_spikes=6, recurrent_weights=R, recurrent_delays=Dr)))
    for x, w_in, kw in cases:
        seq = ss.lif_forward(x, w_in, engine="numpy", method="sequential", **kw)
        for chunk in (1, 2, 128):
            scan = ss.lif_forward(x, w_in, engine="numpy", method="scan", chunk_size=chunk, **kw)
            np.testing.assert_array_equal(scan.counts, seq.counts)
            np.testing.assert_allclose(scan.times, seq.times, **TOL["float64"]["times"])
            log_s, log_q = scan.residuals.recurrent_log, seq.residuals.recurrent_log
            np.testing.assert_allclose(log_s.currents, log_q.currents, rtol=1e-12, atol=1e-12)
    first = ss.lif_forward(*cases[0][:2], engine="numpy", method="scan", **cases[0][2])
    np.testing.assert_allclose(first.times[0, 1, :2], [5.428318739881431, 8.244369979506642], rtol=1e-14)


def test_a_recurrent_arrival_beyond_float64_is_refused():
    """A spike near 1e308 plus a recurrent delay of 1e308 arrives at +inf, which every engine reads as no arrival:
    refused after the run, naming the neuron, its spike and its longest delay (the input delays' range check cannot
    see it, spike times being known only during the run)."""
    t = np.array([[[1.0e308], [np.inf]]])
    W = np.array([[5.0, 0.0], [0.0, 0.0]])
    kw = dict(tau_mem=1e140, tau_syn=5e139, max_spikes=2, recurrent_weights=np.array([[0.0, 5.0], [0.0, 0.0]]))
    for method in ("sequential", "scan"):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no overflow warning on the way
            with pytest.raises(ValueError, match=r"neuron 0 of sample 0 spikes at t=1e\+308, and its longest "
                                                 r"recurrent delay to a neuron it connects to \(1e\+308\) takes "
                                                 r"that spike's arrival past"):
                ss.lif_forward(t, W, recurrent_delays=np.array([[0.0, 1e308], [0.0, 0.0]]), method=method, **kw)
            out = ss.lif_forward(t, W, recurrent_delays=np.array([[0.0, 0.5e308], [0.0, 0.0]]), method=method, **kw)
            # A long delay on a connection of weight 0 schedules no arrival: nothing is lost, nothing refused.
            unused = ss.lif_forward(t, W, recurrent_delays=np.array([[1e308, 0.5e308], [0.0, 0.0]]), method=method,
                                    **kw)
        np.testing.assert_array_equal(out.counts, [[1, 1]])
        assert out.times[0, 1, 0] == 1.5e308
        np.testing.assert_array_equal(unused.times, out.times)
