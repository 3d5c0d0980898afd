"""``lif_backward(method="closed")``: the EventProp closed form of the feed-forward backward (PERF.md P1c), checked
gradient by gradient against the sequential NumPy backward (the reference) and against finite differences."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

import spikescan as ss
from spikescan import _closed_backward
from spikescan.neurons import lif

from _cases import direct_spike_currents, random_spikes, weights
from tolerances import TOL

GRAD_NAMES = ("weights", "input_times", "delays", "threshold", "tau_mem", "tau_syn")


def backward(result, G, method, **kw):
    """``lif_backward`` on the NumPy engine under ``errstate(all="raise")`` (no overflow, no division by zero, no
    NaN arithmetic; underflow is allowed: a decay over thousands of time constants is 0), with the warnings it
    issued."""
    with warnings.catch_warnings(record=True) as rec, np.errstate(all="raise", under="ignore"):
        warnings.simplefilter("always")
        g = ss.lif_backward(result, G, method=method, engine="numpy", **kw)
    return g, [w for w in rec]


def assert_same_grads(ref, out, dtype="float64", context=""):
    for name in GRAD_NAMES:
        a, b = getattr(ref, name), getattr(out, name)
        if a is None:
            assert b is None, f"{context}grad_{name}"
            continue
        assert b is not None and np.shape(b) == np.shape(a) and np.asarray(b).dtype == np.asarray(a).dtype, name
        np.testing.assert_allclose(b, a, err_msg=f"{context}grad_{name}", **TOL[dtype]["grads"])


def check_against_sequential(result, G, dtype="float64", context=""):
    """Every gradient of ``"closed"`` equals ``"sequential"``, with and without the optional ones; the warnings
    agree too. Returns the reference gradients."""
    for kw in (dict(time_constant_grads=True), dict(input_times_grad=False)):
        ref, warned_ref = backward(result, G, "sequential", **kw)
        out, warned = backward(result, G, "closed", **kw)
        assert_same_grads(ref, out, dtype, context)
        assert [str(w.message) for w in warned] == [str(w.message) for w in warned_ref]
    return ref


# ---------------------------------------------------------------------------------------------------------------
# The case suite
# ---------------------------------------------------------------------------------------------------------------

def _case(name):
    """``(forward kwargs, what the case must contain)`` for the named case; every draw is seeded."""
    rng = np.random.default_rng(sum(map(ord, name)))
    base = dict(tau_mem=10.0, tau_syn=5.0, threshold=1.0, max_spikes=8)
    if name == "plain":
        return dict(base, input_times=random_spikes(rng, 3, 12, 5), weights=weights(rng, 12, 6))
    if name == "delays":
        return dict(base, input_times=random_spikes(rng, 3, 12, 5), weights=weights(rng, 12, 6),
                    delays=rng.uniform(0.0, 6.0, (12, 6)))
    if name == "ties":
        # Integer input times (simultaneous inputs in the shared queue) and integer delays (identical arrivals of
        # different sources, and spikes at an arrival's time); the forward's order decides, the backwards follow it.
        t = np.sort(np.round(rng.uniform(0, 20, (3, 10, 4))), axis=-1)
        t[rng.random(t.shape) < 0.1] = np.inf
        return dict(base, input_times=np.sort(t, axis=-1), weights=weights(rng, 10, 5),
                    delays=np.round(rng.uniform(0.0, 4.0, (10, 5))))
    if name == "per_neuron_threshold":
        return dict(base, input_times=random_spikes(rng, 2, 10, 5), weights=weights(rng, 10, 5),
                    threshold=np.array([0.6, 0.9, 1.0, 1.3, 2.0]))
    if name == "equal_time_constants":
        return dict(base, input_times=random_spikes(rng, 2, 10, 5), weights=weights(rng, 10, 5), tau_syn=10.0)
    if name == "near_equal_time_constants":
        # |x| = s |1/tau_mem - 1/tau_syn| < 1 over every span: the expm1 branches of decay and decay_param_grads.
        return dict(base, input_times=random_spikes(rng, 2, 10, 5), weights=weights(rng, 10, 5),
                    tau_syn=10.0 * (1.0 + 1e-7), delays=rng.uniform(0.0, 3.0, (10, 5)))
    if name == "per_neuron_time_constants":
        # Including tau_syn > tau_mem.
        return dict(base, input_times=random_spikes(rng, 2, 10, 5), weights=weights(rng, 10, 5),
                    tau_mem=np.array([3.0, 5.0, 10.0, 20.0, 8.0]), tau_syn=np.array([6.0, 5.0, 4.0, 2.0, 8.0]))
    if name == "capped":
        # Neurons fire past max_spikes: the unrecorded tail carries no gradient, the recorded spikes keep theirs.
        return dict(base, input_times=random_spikes(rng, 2, 10, 6), weights=weights(rng, 10, 4, mean=1.6),
                    max_spikes=3)
    if name == "bursts":
        # Strong inputs: several spikes inside one gap between arrivals.
        return dict(base, input_times=random_spikes(rng, 2, 6, 3), weights=weights(rng, 6, 4, mean=4.0, std=1.0),
                    max_spikes=24)
    if name == "silent":
        # Silent neurons (negative weights), an empty sample, and samples with inputs but no spike.
        t = random_spikes(rng, 4, 8, 4)
        t[1] = np.inf
        W = weights(rng, 8, 5)
        W[:, 0] = -np.abs(W[:, 0])
        W[:, 1] = 0.01
        return dict(base, input_times=t, weights=W)
    if name == "long_span":
        # Bursts of input 4000-8000 tau_syn apart: spans between spikes far longer than the time constants (an
        # arrival's decay to the next spike underflows to 0, where an un-anchored e^{t/tau_syn} would overflow).
        starts = np.array([0.0, 20000.0, 27000.0, 60000.0])
        t = np.sort((starts[:, None] + rng.uniform(0, 30.0, (4, 5))).reshape(1, 20), axis=-1)
        t = np.concatenate([t, t + 0.5])[:, None, :] + rng.uniform(0, 1.0, (2, 6, 1))
        return dict(base, input_times=np.sort(t, axis=-1), weights=weights(rng, 6, 4, mean=0.3, std=0.3),
                    max_spikes=32)
    raise KeyError(name)


CASES = ("plain", "delays", "ties", "per_neuron_threshold", "equal_time_constants", "near_equal_time_constants",
         "per_neuron_time_constants", "capped", "bursts", "silent", "long_span")


@pytest.mark.parametrize("forward_method", ["sequential", "scan"])
@pytest.mark.parametrize("name", CASES)
def test_closed_equals_sequential_on_the_case_suite(name, forward_method):
    kw = _case(name)
    r = ss.lif_forward(**kw, method=forward_method, engine="numpy")
    n_rec = np.isfinite(r.times).sum()
    assert n_rec > 0
    if name == "capped":
        assert r.capped_spikes > 0
    if name == "bursts":
        ev = r.residuals.spike_event
        assert ((ev[..., 1:] == ev[..., :-1]) & (ev[..., 1:] >= 0)).any()  # spikes sharing a gap
    if name == "silent":
        assert (r.counts == 0).any() and (r.counts[1] == 0).all()
    if name == "long_span":
        T = r.times[np.isfinite(r.times)]
        assert r.counts.min() >= 4 and T.max() > 60000.0
    if name == "ties":
        qt = r.residuals.queue_times
        assert (np.isfinite(qt[..., 1:]) & (qt[..., 1:] == qt[..., :-1])).any()
    G = np.random.default_rng(5).normal(size=r.times.shape)
    ref = check_against_sequential(r, G, context=f"{name}: ")
    assert np.abs(ref.weights).max() > 0


def test_closed_equals_sequential_on_random_layers():
    """Random shapes, ties, capped records, delays, per-neuron time constants and thresholds."""
    rng = np.random.default_rng(1)
    for trial in range(40):
        batch, n_in, n_out, max_in = rng.integers(1, 4), rng.integers(1, 12), rng.integers(1, 9), rng.integers(1, 8)
        t = rng.uniform(0, 30, (batch, n_in, max_in))
        t[rng.random(t.shape) < 0.2] = np.inf
        t = np.sort(np.round(t) if trial % 5 == 0 else t, axis=-1)
        W = rng.normal(0.4, 0.8, (n_in, n_out))
        D = rng.uniform(0, 5, (n_in, n_out)) if trial % 2 else None
        tau_mem = [5.0, 10.0, rng.uniform(2, 20, n_out), 5.0][trial % 4]
        threshold = 1.0 if trial % 3 else rng.uniform(0.5, 1.5, n_out)
        r = ss.lif_forward(t, W, delays=D, tau_mem=tau_mem, tau_syn=5.0, threshold=threshold,
                           max_spikes=int(rng.integers(1, 10)), method="sequential", engine="numpy")
        G = rng.normal(size=r.times.shape)
        ref = ss.lif_backward(r, G, method="sequential", engine="numpy", time_constant_grads=True)
        out = ss.lif_backward(r, G, method="closed", engine="numpy", time_constant_grads=True)
        assert_same_grads(ref, out, context=f"trial {trial}: ")


def test_float32_case():
    # Both backwards compute in float64 and round their outputs to float32: they may differ by a float32 ulp.
    rng = np.random.default_rng(8)
    t = random_spikes(rng, 2, 8, 4, dtype=np.float32)
    W = weights(rng, 8, 4).astype(np.float32)
    D = rng.uniform(0, 3, (8, 4)).astype(np.float32)
    r = ss.lif_forward(t, W, delays=D, tau_mem=10.0, tau_syn=5.0, max_spikes=6, engine="numpy")
    assert r.counts.sum() > 0
    G = rng.normal(size=r.times.shape).astype(np.float32)
    g = check_against_sequential(r, G, dtype="float32")
    assert g.weights.dtype == g.delays.dtype == np.float32


def test_results_of_the_compiled_forward():
    pytest.importorskip("numba")
    kw = _case("delays")
    r = ss.lif_forward(**kw, engine="numba")
    G = np.random.default_rng(6).normal(size=r.times.shape)
    check_against_sequential(r, G)


def test_groups_of_neurons_give_the_same_gradients(monkeypatch):
    r = ss.lif_forward(**_case("delays"), engine="numpy")
    G = np.random.default_rng(7).normal(size=r.times.shape)
    whole = ss.lif_backward(r, G, method="closed", engine="numpy", time_constant_grads=True)
    monkeypatch.setattr(_closed_backward, "_ENTRIES_PER_GROUP", 1)  # one neuron per group
    split = ss.lif_backward(r, G, method="closed", engine="numpy", time_constant_grads=True)
    for name in GRAD_NAMES:
        np.testing.assert_allclose(getattr(split, name), getattr(whole, name), rtol=1e-13, atol=1e-13,
                                   err_msg=name)


# ---------------------------------------------------------------------------------------------------------------
# Grazing spikes
# ---------------------------------------------------------------------------------------------------------------

GRAZE = dict(tau_mem=10.0, tau_syn=10.0)


def test_exact_grazing_spikes_follow_the_sequential_rule():
    """The exact grazing constructions of test_reliability (the peak voltage e^-1 * e is exactly 1): the IFT term
    dropped, the spike moving with the arrival before it, one warning naming the same spike, pointing at the
    caller."""
    t = np.array([[[1.0, 20.0], [3.0, np.inf]], [[2.0, 20.0], [np.inf, np.inf]]])
    W = np.array([[1.5, 0.7, np.e], [0.9, 0.5, 0.4]])
    for t_in, W_in, where in ((np.array([[[2.0]]]), np.array([[np.e]]), (1, 0, 0, 12.0)),
                              (t, W, (1, 1, 2, 12.0))):
        r = ss.lif_forward(t_in, W_in, max_spikes=4, method="sequential", engine="numpy", **GRAZE)
        G = np.random.default_rng(0).normal(size=r.times.shape)
        for kw in (dict(time_constant_grads=True), dict(input_times_grad=False)):
            ref, warned_ref = backward(r, G, "sequential", **kw)
            for method in ("closed", "auto"):  # the NumPy engine's "auto" runs it one frame deeper
                out, warned = backward(r, G, method, **kw)
                assert_same_grads(ref, out)
                assert len(warned) == 1 and isinstance(warned[0].message, ss.GrazingSpikeWarning)
                m = warned[0].message
                assert (m.count, m.sample, m.neuron, m.time) == where
                assert str(m) == str(warned_ref[0].message)
                assert warned[0].filename == __file__, method
    # The lone grazing spike: no gradient through the state, nor to the threshold; the input time shifts it.
    r = ss.lif_forward(np.array([[[2.0]]]), np.array([[np.e]]), max_spikes=2, engine="numpy", **GRAZE)
    g, _ = backward(r, np.full(r.times.shape, 0.7), "closed")
    assert g.weights[0, 0] == 0.0 and float(g.threshold) == 0.0 and g.input_times[0, 0, 0] == 0.7


def burst_grazing_cutoff(r):
    """``(cutoff, forced)`` for a forward of ``_case("bursts")``: a current between the spikes' currents (the middle
    of the widest relative gap among the central ones, far from every spike's current) and the recorded spikes below
    it, which the grazing tests make grazing. Asserts that they include spikes after another spike of the same gap
    and spikes after an arrival, and a grazing spike after a grazing one."""
    I_spk = direct_spike_currents(r)
    values = np.sort(I_spk[np.isfinite(I_spk)])
    mid = values[len(values) // 4: 3 * len(values) // 4 + 1]
    i = int(np.argmax(np.diff(mid) / mid[1:]))
    cutoff = 0.5 * (mid[i] + mid[i + 1])
    assert np.min(np.abs(values - cutoff)) > 1e-6 * cutoff
    forced = I_spk < cutoff
    ev = r.residuals.spike_event
    after_spike = forced[..., 1:] & (ev[..., 1:] == ev[..., :-1])
    after_arrival = forced.copy()
    after_arrival[..., 1:] &= ev[..., 1:] != ev[..., :-1]
    assert after_spike.any() and after_arrival.any() and (after_spike & forced[..., :-1]).any()
    return cutoff, forced


def test_grazing_bookkeeping_after_spikes_and_after_arrivals(monkeypatch):
    """Grazing spikes inside bursts: one after another spike of the same gap passes its time derivative to that
    spike, one after an arrival to the arrival's time. Exact grazing cannot be built at will there, so the crossing
    slope is forced to 0 (the grazing rule) for every spike with a current below a cutoff; the record itself stays
    the forward's, so both backwards must agree exactly as for true grazing spikes."""
    kw = _case("bursts")
    r = ss.lif_forward(**kw, engine="numpy")
    cutoff, forced = burst_grazing_cutoff(r)
    original = lif.crossing_slope
    monkeypatch.setattr(lif, "crossing_slope",
                        lambda i, threshold, tau_mem: np.where(np.asarray(i) < cutoff, 0.0,
                                                               original(i, threshold, tau_mem)))
    G = np.random.default_rng(3).normal(size=r.times.shape)
    ref, warned_ref = backward(r, G, "sequential", time_constant_grads=True)
    out, warned = backward(r, G, "closed", time_constant_grads=True)
    assert_same_grads(ref, out)
    assert len(warned) == 1 and warned[0].message.count == int(forced.sum())
    assert str(warned[0].message) == str(warned_ref[0].message)


# ---------------------------------------------------------------------------------------------------------------
# Finite differences
# ---------------------------------------------------------------------------------------------------------------

def _fd(f, x, eps=1e-6):
    out = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        xp, xm = x.copy(), x.copy()
        xp[idx] += eps
        xm[idx] -= eps
        out[idx] = (f(xp) - f(xm)) / (2 * eps)
    return out


@pytest.mark.parametrize("taus", [(8.0, 4.0), (5.0, 5.0)])
def test_gradients_match_finite_differences(taus):
    rng = np.random.default_rng(13)
    t = random_spikes(rng, 2, 5, 3, t_max=25.0)
    W = weights(rng, 5, 3, mean=1.0)
    D = rng.uniform(0.0, 3.0, (5, 3))
    tau_mem, tau_syn = taus
    base = dict(input_times=t, weights=W, delays=D, tau_mem=tau_mem, tau_syn=tau_syn, threshold=1.0, max_spikes=4,
                method="sequential", engine="numpy")
    r = ss.lif_forward(**base)
    assert r.counts.sum() > 4
    G = rng.normal(size=r.times.shape)

    def loss(**over):
        out = ss.lif_forward(**{**base, **over})
        # Finite differences are only meaningful while no spike appears or disappears.
        np.testing.assert_array_equal(out.counts, r.counts)
        return np.where(np.isfinite(out.times), out.times, 0.0).ravel() @ G.ravel()

    g = ss.lif_backward(r, G, method="closed", engine="numpy", time_constant_grads=True)
    np.testing.assert_allclose(g.weights, _fd(lambda x: loss(weights=x), W), err_msg="weights", **TOL["fd"])
    np.testing.assert_allclose(g.delays, _fd(lambda x: loss(delays=x), D), err_msg="delays", **TOL["fd"])
    np.testing.assert_allclose(g.tau_mem, _fd(lambda x: loss(tau_mem=x), np.full(3, tau_mem)), err_msg="tau_mem",
                               **TOL["fd"])
    np.testing.assert_allclose(g.tau_syn, _fd(lambda x: loss(tau_syn=x), np.full(3, tau_syn)), err_msg="tau_syn",
                               **TOL["fd"])
    np.testing.assert_allclose(g.threshold, (loss(threshold=1.0 + 1e-6) - loss(threshold=1.0 - 1e-6)) / 2e-6,
                               err_msg="threshold", **TOL["fd"])


# ---------------------------------------------------------------------------------------------------------------
# Dispatch
# ---------------------------------------------------------------------------------------------------------------

def test_closed_engines_and_bad_arguments(monkeypatch):
    r = ss.lif_forward(**_case("plain"), engine="numpy")
    G = np.ones(r.times.shape)
    with pytest.raises(ValueError, match="engine must be"):
        ss.lif_backward(r, G, method="closed", engine="cuda")
    # "auto" resolves as for every method: SPIKESCAN_ENGINE, else the compiled engine when Numba is installed.
    for env, engine in (("numpy", "numpy"), ("numba", "numba")):
        if engine == "numba":
            pytest.importorskip("numba")
        monkeypatch.setenv("SPIKESCAN_ENGINE", env)
        auto = ss.lif_backward(r, G, method="closed")
        explicit = ss.lif_backward(r, G, method="closed", engine=engine)
        for name in GRAD_NAMES:
            np.testing.assert_array_equal(getattr(auto, name), getattr(explicit, name), err_msg=name)
    with pytest.raises(ValueError, match="method must be"):
        ss.lif_backward(r, G, method="eventprop")


def test_closed_rejects_recurrent_layers():
    rng = np.random.default_rng(2)
    t = random_spikes(rng, 1, 4, 3)
    r = ss.lif_forward(t, weights(rng, 4, 3), tau_mem=10.0, tau_syn=5.0, max_spikes=4, engine="numpy",
                       recurrent_weights=rng.normal(0, 0.3, (3, 3)))
    with pytest.raises(NotImplementedError, match="feed-forward layers only"):
        ss.lif_backward(r, np.ones(r.times.shape), method="closed", engine="numpy")


# ---------------------------------------------------------------------------------------------------------------
# The compiled closed form (engine="numba": _lif_numba.backward_closed)
# ---------------------------------------------------------------------------------------------------------------

def compiled(result, G, **kw):
    pytest.importorskip("numba")
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        g = ss.lif_backward(result, G, method="closed", engine="numba", **kw)
    return g, [w for w in rec]


@pytest.mark.parametrize("forward_engine", ["numpy", "numba"])
@pytest.mark.parametrize("name", CASES)
def test_compiled_closed_equals_sequential_on_the_case_suite(name, forward_engine):
    """``lif_backward(method="closed", engine="numba")``: every gradient (the optional ones with and without) and
    every warning of the NumPy sequential backward, on the case suite, from both engines' forwards (the compiled
    one's queues as a permutation where it has delays)."""
    r = ss.lif_forward(**_case(name), engine=forward_engine)
    G = np.random.default_rng(5).normal(size=r.times.shape)
    for kw in (dict(time_constant_grads=True), dict(input_times_grad=False)):
        ref, warned_ref = backward(r, G, "sequential", **kw)
        out, warned = compiled(r, G, **kw)
        assert_same_grads(ref, out, context=f"{name} ({forward_engine} forward): ")
        assert [str(w.message) for w in warned] == [str(w.message) for w in warned_ref]


def test_compiled_closed_grazing_float32_and_blocks(monkeypatch):
    """The exact grazing constructions (one warning naming the spike, at the caller's line; the same gradients),
    float32 results, and sample blocks of the input-time gradients: the same bits for any block and thread count."""
    t = np.array([[[1.0, 20.0], [3.0, np.inf]], [[2.0, 20.0], [np.inf, np.inf]]])
    W = np.array([[1.5, 0.7, np.e], [0.9, 0.5, 0.4]])
    r = ss.lif_forward(t, W, max_spikes=4, method="sequential", engine="numpy", **GRAZE)
    G = np.random.default_rng(0).normal(size=r.times.shape)
    ref, warned_ref = backward(r, G, "sequential", time_constant_grads=True)
    out, warned = compiled(r, G, time_constant_grads=True)
    assert_same_grads(ref, out)
    assert len(warned) == 1 and str(warned[0].message) == str(warned_ref[0].message)
    assert warned[0].filename == __file__
    kw = _case("delays")
    t32 = {k: (v.astype(np.float32) if isinstance(v, np.ndarray) else v) for k, v in kw.items()}
    r32 = ss.lif_forward(**t32, engine="numba")
    G32 = np.random.default_rng(1).normal(size=r32.times.shape).astype(np.float32)
    ref32, _ = backward(r32, G32, "sequential")
    out32, _ = compiled(r32, G32)
    assert_same_grads(ref32, out32, "float32")
    from spikescan import _lif_numba, _lif_numpy

    r = ss.lif_forward(**kw, engine="numba")
    G = np.random.default_rng(2).normal(size=r.times.shape)
    digests = []
    for block_bytes, serial in ((1 << 30, 0), (1, 0), (1 << 30, 1 << 62)):
        monkeypatch.setattr(_lif_numpy, "_COMPILED_ARRIVAL_BYTES", block_bytes)
        monkeypatch.setattr(_lif_numba, "SERIAL_WORK", serial)
        g, _ = compiled(r, G, time_constant_grads=True)
        digests.append([np.asarray(getattr(g, n)).tobytes() for n in GRAD_NAMES])
    assert all(d == digests[0] for d in digests)


def test_compiled_closed_on_random_layers():
    """Random layers with delays, ties and several spikes per gap: the compiled closed form against the NumPy one
    and the sequential backward."""
    rng = np.random.default_rng(11)
    for seed in range(12):
        rng = np.random.default_rng(seed)
        n_in, n_out = int(rng.integers(2, 12)), int(rng.integers(1, 7))
        t = np.round(random_spikes(rng, 3, n_in, 4), 1)
        D = np.round(rng.uniform(0, 4, (n_in, n_out)), 1) if seed % 2 else None
        r = ss.lif_forward(t, weights(rng, n_in, n_out, mean=0.8), delays=D, tau_mem=[10.0, 6.0, 5.0][seed % 3],
                           tau_syn=5.0, max_spikes=3, engine="numba")
        G = rng.normal(size=r.times.shape)
        ref, _ = backward(r, G, "sequential", time_constant_grads=True)
        out, _ = compiled(r, G, time_constant_grads=True)
        assert_same_grads(ref, out, context=f"seed {seed}: ")


# The compiled closed form's rebased factors (_lif_numpy.COMPILED_REBASED_CLOSED)

def _rebased_and_exponentials(result, G, monkeypatch, **kw):
    """The compiled closed form with the rebased factors and with the exponentials, and whether the factors
    applied (``_closed_rebased_args``' flag)."""
    from spikescan import _lif_numpy

    applied = []
    real = _lif_numpy._closed_rebased_args
    monkeypatch.setattr(_lif_numpy, "_closed_rebased_args", lambda res: (lambda a: (applied.append(a[0]), a)[1])(
        real(res)))
    monkeypatch.setattr(_lif_numpy, "COMPILED_REBASED_CLOSED", True)
    fast, warned_fast = compiled(result, G, **kw)
    monkeypatch.setattr(_lif_numpy, "COMPILED_REBASED_CLOSED", False)
    exact, warned_exact = compiled(result, G, **kw)
    monkeypatch.setattr(_lif_numpy, "COMPILED_REBASED_CLOSED", True)
    assert [str(w.message) for w in warned_fast] == [str(w.message) for w in warned_exact]
    return fast, exact, applied[0]


# case, forward engine, whether the factors apply (one pair of time constants; the input slots' times at hand:
# no delays, or the compiled forward's permutation format; delays within REBASED_MAX_DELAY * min(tau))
REBASED_CLOSED_CASES = [
    ("plain", "numpy", True), ("delays", "numba", True), ("delays", "numpy", False), ("ties", "numba", True),
    ("equal_time_constants", "numba", True), ("near_equal_time_constants", "numba", True),
    ("per_neuron_time_constants", "numba", False), ("bursts", "numba", True), ("capped", "numba", True),
    ("silent", "numba", True), ("long_span", "numba", True)]


@pytest.mark.parametrize("name,forward_engine,applies", REBASED_CLOSED_CASES)
def test_compiled_closed_rebased_equals_the_exponentials(name, forward_engine, applies, monkeypatch):
    """The rebased factors give every gradient of the exponentials and of the NumPy reference within the
    tolerance (long_span's entries thousands of tau before their spike keep the exponentials); where they do not
    apply (materialised queues with delays, per-neuron time constants) the exponentials run, the same bits."""
    r = ss.lif_forward(**_case(name), engine=forward_engine)
    G = np.random.default_rng(7).normal(size=r.times.shape)
    for kw in (dict(time_constant_grads=True), dict(input_times_grad=False)):
        fast, exact, applied = _rebased_and_exponentials(r, G, monkeypatch, **kw)
        assert applied == applies
        ref, _ = backward(r, G, "sequential", **kw)
        assert_same_grads(exact, fast, context=f"{name}: ")
        assert_same_grads(ref, fast, context=f"{name}: ")
        if not applies:
            for n in GRAD_NAMES:
                assert np.asarray(getattr(fast, n)).tobytes() == np.asarray(getattr(exact, n)).tobytes(), n


def test_compiled_closed_rebased_limits_tau_pairs_and_tables(monkeypatch):
    """tau_mem < tau_syn and a delay at the limit apply the factors, a delay past REBASED_MAX_DELAY * min(tau) does
    not; the table of a 2 x 4 x 3 input holds one row per shared-queue entry; a one-slot cache of block factors
    (every other block evicts it) and any sample block give the same bits as the default."""
    from spikescan import _lif_numba, _lif_numpy

    rng = np.random.default_rng(3)
    t = random_spikes(rng, 2, 4, 3)
    W = weights(rng, 4, 3, mean=1.2)
    for tau_mem, tau_syn, d_max, applies in ((4.0, 7.0, 3.0, True), (10.0, 5.0, 32.0 * 5.0, True),
                                             (10.0, 5.0, 32.0 * 5.0 + 1.0, False)):
        D = np.full((4, 3), 1.0)
        D[0, 0] = d_max
        r = ss.lif_forward(t, W, delays=D, tau_mem=tau_mem, tau_syn=tau_syn, max_spikes=4, engine="numba")
        assert r.counts.sum() > 0
        G = rng.normal(size=r.times.shape)
        fast, exact, applied = _rebased_and_exponentials(r, G, monkeypatch, time_constant_grads=True)
        assert applied == applies, (tau_mem, tau_syn, d_max)
        assert_same_grads(exact, fast)
        if applies:
            E = _lif_numpy._closed_rebased_args(r.residuals)[1]
            assert E.shape == (2, r.residuals.queue_length, 3)
    r = ss.lif_forward(**_case("ties"), engine="numba")
    G = np.random.default_rng(4).normal(size=r.times.shape)
    digests = []
    for cache, block_bytes, serial in ((16, 1 << 30, 0), (1, 1, 0), (2, 1 << 30, 1 << 62)):
        monkeypatch.setattr(_lif_numpy, "REBASED_CACHE", cache)
        monkeypatch.setattr(_lif_numpy, "_COMPILED_ARRIVAL_BYTES", block_bytes)
        monkeypatch.setattr(_lif_numba, "SERIAL_WORK", serial)
        g, _ = compiled(r, G, time_constant_grads=True)
        digests.append([np.asarray(getattr(g, n)).tobytes() for n in GRAD_NAMES])
    assert all(d == digests[0] for d in digests)


def test_compiled_closed_rebased_decides_grazing_as_the_exponentials(monkeypatch):
    """A spike whose rebased current lies within the factors' rounding of the threshold has its currents redone
    with the exponentials: the exact grazing construction (peak e * e^-1 = 1 at t = 12; the factors give a current
    an ulp off the threshold) is dropped and warned about as without the factors, not given a slope of 1e-17."""
    from spikescan import _lif_numba, _lif_numpy

    r = ss.lif_forward(np.array([[[2.0]]]), np.array([[np.e]]), max_spikes=2, engine="numpy", **GRAZE)
    G = np.full(r.times.shape, 0.7)
    fast, exact, applied = _rebased_and_exponentials(r, G, monkeypatch)
    assert applied
    assert fast.weights[0, 0] == 0.0 and float(fast.threshold) == 0.0 and fast.input_times[0, 0, 0] == 0.7
    # The factors' current (input at 2 in block 0, spike at 12) is not the threshold, but within the recheck's reach.
    E = _lif_numpy._closed_rebased_args(r.residuals)[1]
    current = np.e * (E[0, 0, 1] * math.exp(-(r.times[0, 0, 0] - 0.0) / GRAZE["tau_syn"]))  # libm's, as compiled
    assert current != 1.0 and abs(current - 1.0) <= _lif_numba.NEAR_GRAZING * np.e


@pytest.mark.parametrize("shape", [(0, 3, 2), (2, 0, 1), (2, 3, 0), (2, 3, 2)])
def test_compiled_closed_rebased_empty_shapes(shape, monkeypatch):
    """No sample, no input, no input slot, no input spike: zero gradients of the right shapes."""
    t = np.full(shape, np.inf)
    W, D = np.ones((shape[1], 4)), np.ones((shape[1], 4))
    for delays in (None, D):
        r = ss.lif_forward(t, W, delays=delays, tau_mem=10.0, tau_syn=5.0, max_spikes=2, engine="numba")
        fast, exact, _ = _rebased_and_exponentials(r, np.ones(r.times.shape), monkeypatch)
        assert fast.weights.shape == W.shape and not fast.weights.any()
        assert fast.input_times.shape == shape and not fast.input_times.any()


@pytest.mark.parametrize("engine", ["numpy", "numba"])
def test_bisection_puts_an_exact_graze_at_the_peak_as_newton_does(engine):
    """A PSP whose peak meets the threshold exactly (tau_mem = 2 tau_syn: peak W/4 = 1): every solver puts the spike
    at the peak, 1 + tau_mem ln 2, with a slope <= 0, and the backward drops its IFT term with a
    GrazingSpikeWarning. Bisection used to return the earliest float where the flat top rounds to the threshold
    (8e-12 early here, 8e-9 tau_mem), with a positive slope and gradients of 1e4 without a warning."""
    if engine == "numba":
        pytest.importorskip("numba")
    x, W = np.array([[[1.0]]]), np.array([[4.0]])
    times = {}
    for solver in ("newton", "analytic", "bisection"):
        r = ss.lif_forward(x, W, tau_mem=1e-3, tau_syn=5e-4, max_spikes=2, solver=solver, engine=engine)
        assert r.counts[0, 0] == 1, solver
        times[solver] = r.times[0, 0, 0]
        assert ss.spike_slopes(r)[0, 0, 0] <= 0.0, solver
        with warnings.catch_warnings(record=True) as rec:
            warnings.simplefilter("always")
            g = ss.lif_backward(r, np.isfinite(r.times) * 1.0)
        assert [type(w.message) for w in rec] == [ss.GrazingSpikeWarning], solver
        assert g.weights[0, 0] == 0.0 and float(g.threshold) == 0.0, solver
    assert abs(times["bisection"] - (1.0 + 1e-3 * np.log(2.0))) <= 1e-15
    assert times["bisection"] == times["newton"]
