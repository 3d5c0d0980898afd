"""Exact traces (``lif_trace``, ``li_trace``) against independent closed forms and the layers they trace.

Reference: by linearity, a hard reset at ``t_s`` (``V`` jumps from the threshold to 0, ``I`` is kept) adds
``-threshold * e^{-(t - t_s)/tau_mem}`` to the reset-free voltage, so with the layer's spike times::

    V(t) = sum_{arrivals t_m < t} w c(t - t_m) - threshold * sum_{spikes t_s <= t} e^{-(t - t_s)/tau_mem}
    I(t) = sum_{arrivals t_m <= t} w e^{-(t - t_m)/tau_syn}

with the PSP kernel ``c`` written out here (not ``neurons.lif``), one term per input and spike. ``trace`` instead
walks each neuron's events with the affine scan and decays from the last one.
"""

from __future__ import annotations

import numpy as np
import pytest

import spikescan as ss
from spikescan import _lif_numpy, lif_forward, lif_trace, li_forward, li_trace

TOL = dict(rtol=1e-9, atol=1e-10)


def _psp(s, tm, ts):
    """PSP kernel ``c(s)`` (``V`` after a gap ``s`` from ``(0, 1)``) and current kernel, for ``s >= 0``."""
    a, b = np.exp(-s / tm), np.exp(-s / ts)
    if tm == ts:
        return (s / tm) * a, b
    return ts / (tm - ts) * (a - b), b


def _reference(input_times, weights, t, tau_mem, tau_syn, threshold, spike_times, delays=None):
    """``(V, I)`` ``[batch, n_out, len(t)]`` by superposition (module docstring); ``spike_times`` float64."""
    batch, n_in, max_in = input_times.shape
    n_out = weights.shape[1]
    tm = np.broadcast_to(np.asarray(tau_mem, float), (n_out,))
    ts = np.broadcast_to(np.asarray(tau_syn, float), (n_out,))
    D = np.zeros((n_in, n_out)) if delays is None else delays
    V = np.zeros((batch, n_out, t.size))
    current = np.zeros((batch, n_out, t.size))
    for b in range(batch):
        for i in range(n_out):
            for j in range(n_in):
                for m in range(max_in):
                    if not np.isfinite(input_times[b, j, m]):
                        continue
                    s = t - (input_times[b, j, m] + D[j, i])
                    on = s >= 0
                    c, e = _psp(np.where(on, s, 0.0), tm[i], ts[i])
                    V[b, i] += np.where(on, weights[j, i] * c, 0.0)
                    current[b, i] += np.where(on, weights[j, i] * e, 0.0)
            for t_s in spike_times[b, i][np.isfinite(spike_times[b, i])]:
                s = t - t_s
                V[b, i] -= np.where(s >= 0, threshold * np.exp(-np.where(s >= 0, s, 0.0) / tm[i]), 0.0)
    return V, current


def _case(seed, batch=2, n_in=12, max_in=3, n_out=4, t_max=30.0):
    rng = np.random.default_rng(seed)
    x = np.sort(rng.uniform(0.0, t_max, (batch, n_in, max_in)), axis=-1)
    x[rng.random(x.shape) < 0.2] = np.inf
    x = np.sort(x, axis=-1)
    W = rng.normal(0.35, 0.4, (n_in, n_out))
    return x, W


def _all_spikes(x, W, **kw):
    out = lif_forward(x, W, max_spikes=64, **kw)
    assert int(out.counts.max()) < 64
    return out.residuals.spike_times


TAUS = [
    pytest.param(10.0, 5.0, id="tm=2ts"),
    pytest.param(8.0, 8.0, id="equal"),
    pytest.param(5.0, 7.0, id="ts>tm"),
    pytest.param(np.array([10.0, 6.0, 8.0, 4.0]), np.array([5.0, 6.0, 3.0, 9.0]), id="per-neuron"),
]


@pytest.mark.parametrize("tau_mem, tau_syn", TAUS)
def test_matches_superposition(tau_mem, tau_syn):
    x, W = _case(0)
    t = np.linspace(0.0, 60.0, 1501)
    th = 0.9
    res = lif_trace(x, W, t, tau_mem=tau_mem, tau_syn=tau_syn, threshold=th)
    spikes = _all_spikes(x, W, tau_mem=tau_mem, tau_syn=tau_syn, threshold=th)
    assert np.isfinite(spikes).sum(axis=-1).max() >= 2, "the case should have neurons firing several times"
    V, current = _reference(x, W, t, tau_mem, tau_syn, th, spikes)
    np.testing.assert_allclose(res.voltage, V, **TOL)
    np.testing.assert_allclose(res.current, current, **TOL)
    assert res.voltage.max() < th
    n = int(np.isfinite(spikes).sum(axis=-1).max())
    np.testing.assert_array_equal(res.spike_times, spikes[..., :n])


@pytest.mark.parametrize("tau_mem, tau_syn", TAUS)
def test_threshold_at_left_limit_and_reset_at_spike(tau_mem, tau_syn):
    x, W = _case(1)
    th = 1.0
    spikes = _all_spikes(x, W, tau_mem=tau_mem, tau_syn=tau_syn, threshold=th)
    b, i, m = np.nonzero(np.isfinite(spikes))
    assert b.size > 5
    for bb in np.unique(b):
        sel = b == bb
        ts_ = spikes[bb, i[sel], m[sel]]
        t = np.concatenate([np.nextafter(ts_, -np.inf), ts_])
        res = lif_trace(x[bb:bb + 1], W, t, tau_mem=tau_mem, tau_syn=tau_syn, threshold=th)
        k = np.arange(ts_.size)
        np.testing.assert_allclose(res.voltage[0, i[sel], k], th, rtol=0, atol=1e-9)
        np.testing.assert_allclose(res.voltage[0, i[sel], ts_.size + k], 0.0, rtol=0, atol=1e-12)


def test_single_input_analytic():
    """One input of weight w at t0: I = w e^{-(t-t0)/ts} from t0 on (included at t0), V the PSP; no spike."""
    x = np.array([[[5.0]]])
    W = np.array([[0.8]])
    t = np.array([0.0, np.nextafter(5.0, 0.0), 5.0, 6.0, 20.0])
    res = lif_trace(x, W, t, tau_mem=10.0, tau_syn=5.0)
    s = np.maximum(t - 5.0, 0.0)
    expect_V = 0.8 * 5.0 / 5.0 * (np.exp(-s / 10.0) - np.exp(-s / 5.0))
    expect_I = np.where(t >= 5.0, 0.8 * np.exp(-s / 5.0), 0.0)
    np.testing.assert_allclose(res.voltage[0, 0], expect_V, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(res.current[0, 0], expect_I, rtol=1e-13, atol=0)
    assert res.spike_times.shape == (1, 1, 1) and np.isinf(res.spike_times).all()


def test_input_at_spike_time_resets_first():
    """An input arriving exactly at a spike: V = 0 (reset), I includes the jump."""
    x = np.array([[[1.0, np.inf], [np.inf, np.inf]]])
    W = np.array([[5.0], [0.5]])
    t_s = float(lif_forward(x, W, tau_mem=10.0, tau_syn=5.0, max_spikes=4).residuals.spike_times[0, 0, 0])
    x2 = x.copy()
    x2[0, 1, 0] = t_s
    res = lif_trace(x2, W, np.array([t_s]), tau_mem=10.0, tau_syn=5.0)
    assert res.spike_times[0, 0, 0] == t_s
    assert res.voltage[0, 0, 0] == 0.0
    np.testing.assert_allclose(res.current[0, 0, 0], 5.0 * np.exp(-(t_s - 1.0) / 5.0) + 0.5, rtol=1e-14)


def test_delays():
    x, W = _case(2)
    t = np.linspace(0.0, 70.0, 801)
    kw = dict(tau_mem=10.0, tau_syn=5.0)
    # A uniform delay shifts the whole trace.
    d = 4.25
    shifted = lif_trace(x, W, t, delays=np.full(W.shape, d), **kw)
    plain = lif_trace(x, W, np.maximum(t - d, 0.0), **kw)
    late = t >= d
    np.testing.assert_allclose(shifted.voltage[..., late], plain.voltage[..., late], **TOL)
    np.testing.assert_allclose(shifted.current[..., late], plain.current[..., late], **TOL)
    assert not shifted.voltage[..., ~late].any() and not shifted.current[..., ~late].any()
    np.testing.assert_allclose(shifted.spike_times, plain.spike_times + d, rtol=1e-13)
    # Per-synapse delays: each arrival moves on its own.
    D = np.random.default_rng(3).uniform(0.0, 10.0, W.shape)
    res = lif_trace(x, W, t, delays=D, **kw)
    spikes = _all_spikes(x, W, delays=D, **kw)
    V, current = _reference(x, W, t, 10.0, 5.0, 1.0, spikes, delays=D)
    np.testing.assert_allclose(res.voltage, V, **TOL)
    np.testing.assert_allclose(res.current, current, **TOL)


def test_grid_order_duplicates_and_dtype():
    x, W = _case(4)
    t = np.linspace(0.0, 50.0, 200)
    perm = np.random.default_rng(0).permutation(t.size)
    t_odd = np.concatenate([t[perm], t[:3]])
    ref = lif_trace(x, W, t, tau_mem=10.0, tau_syn=5.0)
    res = lif_trace(x, W, t_odd, tau_mem=10.0, tau_syn=5.0)
    np.testing.assert_array_equal(res.voltage, np.concatenate([ref.voltage[..., perm], ref.voltage[..., :3]], -1))
    np.testing.assert_array_equal(res.current, np.concatenate([ref.current[..., perm], ref.current[..., :3]], -1))
    # Lists are accepted; float32 in, float32 out (computed in float64).
    r32 = lif_trace(x.astype(np.float32), W.astype(np.float32), list(t), tau_mem=10.0, tau_syn=5.0)
    assert r32.voltage.dtype == r32.current.dtype == r32.spike_times.dtype == np.float32
    assert r32.voltage.shape == (2, 4, 200)
    # An empty grid.
    empty = lif_trace(x, W, np.zeros(0), tau_mem=10.0, tau_syn=5.0)
    assert empty.voltage.shape == empty.current.shape == (2, 4, 0)


def test_max_spikes_cuts_only_the_recording():
    x, W = _case(0)
    t = np.linspace(0.0, 60.0, 301)
    full = lif_trace(x, W, t, tau_mem=10.0, tau_syn=5.0)
    counts = lif_forward(x, W, tau_mem=10.0, tau_syn=5.0, max_spikes=64).counts
    assert full.spike_times.shape[-1] == counts.max() >= 2
    cut = lif_trace(x, W, t, tau_mem=10.0, tau_syn=5.0, max_spikes=1)
    assert cut.spike_times.shape[-1] == 1
    np.testing.assert_array_equal(cut.voltage, full.voltage)
    np.testing.assert_array_equal(cut.spike_times, full.spike_times[..., :1])
    # what the cut left out shows in the true counts, the same from every recording length
    for res in (full, cut):
        assert res.counts.dtype == np.int64
        np.testing.assert_array_equal(res.counts, counts)
    wide = lif_trace(x, W, t, tau_mem=10.0, tau_syn=5.0, max_spikes=int(counts.max()) + 3)
    assert np.isinf(wide.spike_times[..., -3:]).all()
    np.testing.assert_array_equal(wide.voltage, full.voltage)
    for method in ("sequential", "scan"):
        np.testing.assert_allclose(lif_trace(x, W, t, tau_mem=10.0, tau_syn=5.0, method=method).voltage,
                                   full.voltage, **TOL)


def test_spike_finding_options_pass_through():
    """``engine``, ``solver``, ``chunk_size`` and ``max_total_spikes`` reach the ``lif_forward`` that finds the
    spikes: the trace's spike times are bit for bit those of ``lif_forward`` with the same arguments, and a runaway
    limit stops the trace where it stops the layer."""
    x, W = _case(3)
    t = np.linspace(0.0, 60.0, 121)
    engines = ("numpy", "numba") if _lif_numpy.numba_available() else ("numpy",)
    for engine in engines:
        for solver, method, chunk in (("newton", "sequential", 128), ("bisection", "scan", 2),
                                      ("analytic", "auto", 128)):
            kw = dict(tau_mem=10.0, tau_syn=5.0, method=method, solver=solver, chunk_size=chunk, engine=engine)
            tr = lif_trace(x, W, t, **kw)
            fw = lif_forward(x, W, max_spikes=tr.spike_times.shape[-1], **kw)
            np.testing.assert_array_equal(tr.spike_times, fw.times)
            np.testing.assert_array_equal(tr.counts, fw.counts)
    burst = dict(tau_mem=10.0, tau_syn=5.0, max_total_spikes=5)
    with pytest.raises(ss.RunawayFiringError, match="max_total_spikes=5"):
        lif_forward(np.array([[[0.0]]]), np.array([[40.0]]), max_spikes=1, **burst)
    with pytest.raises(ss.RunawayFiringError, match="max_total_spikes=5"):
        lif_trace(np.array([[[0.0]]]), np.array([[40.0]]), t, **burst)
    with pytest.raises(ValueError, match="engine"):
        lif_trace(x, W, t, tau_mem=10.0, tau_syn=5.0, engine="gpu")
    with pytest.raises(ValueError, match="solver"):
        lif_trace(x, W, t, tau_mem=10.0, tau_syn=5.0, solver="euler")


def test_silent_layer_and_many_spikes():
    """No spike at all (spike_times has one +inf slot), and a neuron firing more than the first recording (16)."""
    x, W = _case(5)
    t = np.linspace(0.0, 40.0, 101)
    silent = lif_trace(x, -np.abs(W), t, tau_mem=10.0, tau_syn=5.0)
    assert silent.spike_times.shape == (2, 4, 1) and np.isinf(silent.spike_times).all()
    assert (silent.voltage <= 0).all()
    x1 = np.array([[[0.0]]])
    W1 = np.array([[40.0]])
    t1 = np.linspace(0.0, 40.0, 2001)
    burst = lif_trace(x1, W1, t1, tau_mem=10.0, tau_syn=5.0)
    n = burst.spike_times.shape[-1]
    assert n > 16 and np.isfinite(burst.spike_times).all()
    V, current = _reference(x1, W1, t1, 10.0, 5.0, 1.0, burst.spike_times)
    np.testing.assert_allclose(burst.voltage, V, rtol=1e-9, atol=1e-9)
    assert burst.voltage.max() < 1.0


@pytest.mark.parametrize("tau_mem, tau_syn", TAUS)
def test_li_trace_matches_li_forward_final(tau_mem, tau_syn):
    x, W = _case(6)
    x[0, 0, 0] = 0.0  # an input at t = 0
    t = np.concatenate([np.linspace(0.5, 45.0, 24), [x[1, 3, 1]]])
    t = t[np.isfinite(t)]
    res = li_trace(x, W, t, tau_mem=tau_mem, tau_syn=tau_syn)
    assert res.spike_times.shape == (2, 4, 0)
    assert res.counts.shape == (2, 4) and res.counts.dtype == np.int64 and not res.counts.any()
    for k, t_k in enumerate(t):
        final = li_forward(x, W, tau_mem=tau_mem, tau_syn=tau_syn, readout="final", t_max=float(t_k)).values
        np.testing.assert_allclose(res.voltage[..., k], final, rtol=1e-10, atol=1e-12)
    V, current = _reference(x, W, t, tau_mem, tau_syn, 1.0, np.full((2, 4, 0), np.inf))
    np.testing.assert_allclose(res.voltage, V, **TOL)
    np.testing.assert_allclose(res.current, current, **TOL)
    at0 = li_trace(x, W, np.array([0.0]), tau_mem=tau_mem, tau_syn=tau_syn)
    np.testing.assert_array_equal(at0.voltage, 0.0)
    np.testing.assert_allclose(at0.current[0, :, 0], W[0], rtol=1e-15)
    np.testing.assert_array_equal(at0.current[1], 0.0)


def test_li_trace_is_lif_trace_without_threshold():
    x, W = _case(7)
    t = np.linspace(0.0, 50.0, 101)
    li = li_trace(x, W, t, tau_mem=10.0, tau_syn=5.0)
    lif = lif_trace(x, W, t, tau_mem=10.0, tau_syn=5.0, threshold=1e12)
    np.testing.assert_allclose(li.voltage, lif.voltage, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(li.current, lif.current, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("bad, kind, match", [
    (np.array([0.0, np.nan]), ValueError, "t must hold finite times >= 0, got nan at index 1"),
    (np.array([1.0, -0.5]), ValueError, "t must hold finite times >= 0, got -0.5"),
    (np.array([np.inf]), ValueError, "t must hold finite times >= 0, got inf"),
    (np.zeros((2, 3)), ValueError, r"t must be 1-D .* shape \(2, 3\)"),
    (3.0, ValueError, r"t must be 1-D .* shape \(\)"),
    (np.array(["a"]), TypeError, "t must be a 1-D array of real times"),
    (np.ma.masked_less(np.array([1.0, -5.0]), 0.0), TypeError, "t must be a plain array .* masked array"),
])
def test_grid_validation(bad, kind, match):
    x, W = _case(0)
    with pytest.raises(kind, match=match):
        lif_trace(x, W, bad, tau_mem=10.0, tau_syn=5.0)
    with pytest.raises(kind, match=match):
        li_trace(x, W, bad, tau_mem=10.0, tau_syn=5.0)


def test_per_neuron_thresholds():
    """A threshold per neuron (``LIFLayer(trainable_threshold=True)``'s): each neuron's trace is the one with its
    threshold as a scalar, and reaches it as the left limit at each of its spikes."""
    x, W = _case(1)
    th = np.array([0.6, 1.0, 1.7, 2.5])[:W.shape[1]]
    t = np.linspace(0.0, 30.0, 301)
    res = lif_trace(x, W, t, tau_mem=10.0, tau_syn=5.0, threshold=th)
    assert np.isfinite(res.spike_times).any()
    for i, thr in enumerate(th):
        one = lif_trace(x, W, t, tau_mem=10.0, tau_syn=5.0, threshold=float(thr))
        np.testing.assert_array_equal(res.voltage[:, i], one.voltage[:, i])
        k = min(res.spike_times.shape[-1], one.spike_times.shape[-1])  # recordings as wide as the busiest neuron
        np.testing.assert_array_equal(res.spike_times[:, i, :k], one.spike_times[:, i, :k])
        assert np.isinf(res.spike_times[:, i, k:]).all() and np.isinf(one.spike_times[:, i, k:]).all()
        assert (res.voltage[:, i] < thr).all()
    with pytest.raises(ValueError, match=r"threshold must be a scalar or have shape \[4\]"):
        lif_trace(x, W, t, tau_mem=10.0, tau_syn=5.0, threshold=np.ones(3))


def test_no_input_channels():
    t = np.linspace(0.0, 5.0, 6)
    for trace in (lif_trace, li_trace):
        res = trace(np.zeros((2, 0, 1)), np.zeros((0, 3)), t, tau_mem=10.0, tau_syn=5.0)
        assert res.voltage.shape == (2, 3, 6) and not res.voltage.any() and not res.current.any()


def test_argument_validation():
    x, W = _case(0)
    t = np.linspace(0, 10, 5)
    with pytest.raises(ValueError, match="input_times must have 3 dimensions"):
        lif_trace(x[0], W, t, tau_mem=10.0, tau_syn=5.0)
    with pytest.raises(ValueError, match="weights must have shape"):
        lif_trace(x, W[1:], t, tau_mem=10.0, tau_syn=5.0)
    with pytest.raises(ValueError, match="tau_mem must be positive"):
        lif_trace(x, W, t, tau_mem=-1.0, tau_syn=5.0)
    with pytest.raises(ValueError, match="threshold"):
        lif_trace(x, W, t, tau_mem=10.0, tau_syn=5.0, threshold=0.0)
    with pytest.raises(ValueError, match="max_spikes"):
        lif_trace(x, W, t, tau_mem=10.0, tau_syn=5.0, max_spikes=0)
    with pytest.raises(ValueError, match="method"):
        lif_trace(x, W, t, tau_mem=10.0, tau_syn=5.0, method="euler")
    with pytest.raises(ValueError, match="delays must be >= 0"):
        lif_trace(x, W, t, tau_mem=10.0, tau_syn=5.0, delays=-np.ones_like(W))
    with pytest.raises(ValueError, match="input_times contains NaN"):
        li_trace(np.full_like(x, np.nan), W, t, tau_mem=10.0, tau_syn=5.0)
    with pytest.raises(ValueError, match=r"tau_syn must be a scalar or have shape \[4\]"):
        li_trace(x, W, t, tau_mem=10.0, tau_syn=np.ones(3))


def test_exported():
    assert {"lif_trace", "li_trace", "TraceResult"} <= set(ss.__all__)
    assert ss.TraceResult._fields == ("voltage", "current", "spike_times", "counts")


@pytest.mark.gpu
def test_cupy_in_cupy_out():
    from spikescan.cuda import is_available

    if not is_available():
        pytest.skip("no CUDA device")
    import cupy

    x, W = _case(0)
    t = np.linspace(0.0, 60.0, 101)
    ref = lif_trace(x, W, t, tau_mem=10.0, tau_syn=5.0)
    res = lif_trace(cupy.asarray(x), cupy.asarray(W), cupy.asarray(t), tau_mem=10.0, tau_syn=5.0)
    assert all(isinstance(a, cupy.ndarray) for a in res)
    np.testing.assert_allclose(res.voltage.get(), ref.voltage, **TOL)
    li = li_trace(cupy.asarray(x), cupy.asarray(W), t, tau_mem=10.0, tau_syn=5.0)
    assert isinstance(li.voltage, cupy.ndarray)


def test_neuron_groups_give_the_same_trace(monkeypatch):
    from spikescan import trace as trace_module

    x, W = _case(8)
    t = np.linspace(0.0, 50.0, 64)
    whole = lif_trace(x, W, t, tau_mem=10.0, tau_syn=5.0, delays=np.full(W.shape, 1.5))
    li_whole = li_trace(x, W, t, tau_mem=10.0, tau_syn=5.0)
    monkeypatch.setattr(trace_module, "_POINTS_PER_GROUP", 100)  # one neuron per group
    np.testing.assert_array_equal(lif_trace(x, W, t, tau_mem=10.0, tau_syn=5.0, delays=np.full(W.shape, 1.5)).voltage,
                                  whole.voltage)
    np.testing.assert_array_equal(li_trace(x, W, t, tau_mem=10.0, tau_syn=5.0).current, li_whole.current)


@pytest.mark.parametrize("delays", [False, True], ids=["no-delays", "delays"])
@pytest.mark.parametrize("tau_mem, tau_syn", TAUS[:2] + TAUS[3:])
def test_recurrent_layer_matches_superposition(delays, tau_mem, tau_syn):
    """A recurrent layer's trace: each spike of neuron k is an input of every neuron i (weight R[k, i], arriving
    after the recurrent delay, after k's own reset for i == k), so the superposition reference of a feed-forward
    layer whose inputs are the inputs and the forward's own spikes gives it, with those spikes as the resets."""
    x, W = _case(2, n_out=4)
    rng = np.random.default_rng(7)
    R = rng.normal(0.0, 0.3, (4, 4))
    R[0, 1], R[1, 0], R[2, 2] = 0.9, -0.7, 0.5  # excitation, inhibition, a self-connection
    D = rng.uniform(0.0, 3.0, W.shape) if delays else None
    Dr = rng.uniform(0.5, 2.0, R.shape) if delays else None
    kw = dict(tau_mem=tau_mem, tau_syn=tau_syn, threshold=0.9, delays=D)
    out = lif_forward(x, W, max_spikes=64, recurrent_weights=R, recurrent_delays=Dr, **kw)
    assert int(out.counts.max()) < 64
    spikes = out.residuals.spike_times
    n = int(np.isfinite(spikes).sum(axis=-1).max())
    assert n >= 2 and np.isfinite(spikes).sum() > 10, "the case should have neurons firing several times"
    t = np.linspace(0.0, 60.0, 1501)
    res = lif_trace(x, W, t, recurrent_weights=R, recurrent_delays=Dr, **kw)
    np.testing.assert_array_equal(res.spike_times, spikes[..., :n])
    batch, n_in, max_in = x.shape
    events = np.full((batch, n_in + 4, max(max_in, n)), np.inf)
    events[:, :n_in, :max_in] = x
    events[:, n_in:, :n] = spikes[..., :n]
    delays_all = np.concatenate([np.zeros(W.shape) if D is None else D, np.zeros(R.shape) if Dr is None else Dr])
    V, current = _reference(events, np.concatenate([W, R]), t, tau_mem, tau_syn, 0.9, spikes, delays=delays_all)
    np.testing.assert_allclose(res.voltage, V, **TOL)
    np.testing.assert_allclose(res.current, current, **TOL)
    assert res.voltage.max() < 0.9
    # The left limit at every spike is the threshold, the value at it the reset.
    b, i, m = np.nonzero(np.isfinite(spikes))
    for bb in np.unique(b):
        sel = b == bb
        at = spikes[bb, i[sel], m[sel]]
        near = lif_trace(x[bb:bb + 1], W, np.concatenate([np.nextafter(at, -np.inf), at]), recurrent_weights=R,
                         recurrent_delays=Dr, **kw)
        k = np.arange(at.size)
        np.testing.assert_allclose(near.voltage[0, i[sel], k], 0.9, rtol=0, atol=1e-9)
        np.testing.assert_allclose(near.voltage[0, i[sel], at.size + k], 0.0, rtol=0, atol=1e-12)
    # The recurrent input matters here: the feed-forward trace differs.
    assert np.abs(lif_trace(x, W, t, **kw).voltage - res.voltage).max() > 0.1


@pytest.mark.parametrize("Q", [1, 3], ids=["shared-queue", "per-neuron-queues"])
def test_spike_positions_match_a_per_row_search(Q):
    """``_spike_positions`` (one flat search over every queue row) equals ``searchsorted(side="left")`` row by row,
    with spikes tied to queue entries, before the first and after the last, padding, and empty rows."""
    rng = np.random.default_rng(3)
    batch, n_out, L1, S = 4, 3, 9, 5
    grid = np.arange(12) * 0.5  # a coarse grid makes ties between spikes and entries common
    queue = np.sort(rng.choice(grid, (batch, Q, L1)), axis=-1)
    queue[..., -2:] = np.inf  # padding and the sentinel
    queue[1] = np.inf  # a sample with no input at all
    spikes = np.sort(np.concatenate([rng.choice(grid, (batch, n_out, S - 2)), np.full((batch, n_out, 2), np.inf)],
                                    axis=-1), axis=-1)
    spikes[0, 0, 0] = -1.0  # before every entry
    spikes[2, 1, :2] = [9.0, 9.5]  # after every finite entry
    expected = np.full(spikes.shape, -1, np.int64)
    for b in range(batch):
        for i in range(n_out):
            fired = np.isfinite(spikes[b, i])
            expected[b, i, fired] = np.searchsorted(queue[b, i if Q > 1 else 0], spikes[b, i, fired], side="left")
    from spikescan.trace import _spike_positions

    np.testing.assert_array_equal(_spike_positions(queue, spikes), expected)
    assert (expected[np.isfinite(spikes)] > 0).any() and (expected == 0).any()
