"""Tests of the NumPy LIF layer: reference vs independent simulations, scan vs reference, gradients, bad input."""

from __future__ import annotations

import re
import mpmath as mp
import numpy as np
import pytest

import spikescan as ss
from spikescan.neurons import lif
from spikescan._scan import recurrence_loop, recurrence_scan

from _cases import queue_of_length, random_spikes, weights
from tolerances import TOL

# Every test runs on both CPU engines (tests/conftest.py): the pure NumPy reference and the compiled kernels.
pytestmark = pytest.mark.usefixtures("cpu_engine")


def assert_same_spikes(ref, out, dtype="float64"):
    np.testing.assert_array_equal(out.counts, ref.counts)
    np.testing.assert_array_equal(np.isfinite(out.times), np.isfinite(ref.times))
    fin = np.isfinite(ref.times)
    np.testing.assert_allclose(out.times[fin], ref.times[fin], **TOL[dtype]["times"])


# ---------------------------------------------------------------------------------------------------------------
# Independent simulations
# ---------------------------------------------------------------------------------------------------------------

def simulate_mpmath(input_times, weights, tau_mem, tau_syn, threshold, delays=None, dps=40):
    """Event-by-event simulation in arbitrary precision with its own root finding: list of spike times per neuron."""
    mp.mp.dps = dps
    batch, n_in, max_in = input_times.shape
    n_out = weights.shape[1]
    tm, ts, th = mp.mpf(tau_mem), mp.mpf(tau_syn), mp.mpf(threshold)

    def V(s, v0, i0):
        if tm == ts:
            return (v0 + i0 * s / tm) * mp.exp(-s / tm)
        return v0 * mp.exp(-s / tm) + i0 * ts / (tm - ts) * (mp.exp(-s / tm) - mp.exp(-s / ts))

    def dV(s, v0, i0):
        return (i0 * mp.exp(-s / ts) - V(s, v0, i0)) / tm

    out = []
    for b in range(batch):
        row = []
        for i in range(n_out):
            events = sorted((mp.mpf(float(input_times[b, j, m])) + (0 if delays is None else mp.mpf(delays[j, i])),
                             mp.mpf(weights[j, i]))
                            for j in range(n_in) for m in range(max_in) if np.isfinite(input_times[b, j, m]))
            events.append((mp.inf, mp.mpf(0)))
            v0, i0, t0, spikes = mp.mpf(0), mp.mpf(0), mp.mpf(0), []
            for t_ev, w in events:
                while True:
                    # DESIGN.md section 2 in arbitrary precision: the peak from the log formula, then bisection.
                    gap = t_ev - t0
                    if not (i0 > v0 and i0 > 0):
                        break
                    if tm == ts:
                        peak = tm * (1 - v0 / i0)
                    else:
                        arg = tm * i0 / ((tm - ts) * v0 + ts * i0)
                        if arg <= 0:
                            break
                        peak = tm * ts / (tm - ts) * mp.log(arg)
                    hi = min(peak, gap)
                    if V(hi, v0, i0) < th:
                        break
                    root = mp.findroot(lambda s: V(s, v0, i0) - th, (mp.mpf(0), hi), solver="bisect")
                    t0 = t0 + root
                    i0 = i0 * mp.exp(-root / ts)
                    v0 = mp.mpf(0)
                    spikes.append(t0)
                if t_ev == mp.inf:
                    break
                s = t_ev - t0
                v0, i0, t0 = V(s, v0, i0), i0 * mp.exp(-s / ts) + w, t_ev
            row.append(spikes)
        out.append(row)
    return out


def simulate_euler(input_times, weights, tau_mem, tau_syn, threshold, t_end, dt=1e-4):
    """Brute-force fixed-step integration (exact exponential Euler for I, RK2 for V) with linear crossing times."""
    batch, n_in, max_in = input_times.shape
    n_out = weights.shape[1]
    steps = int(round(t_end / dt))
    out = []
    for b in range(batch):
        drive = np.zeros((steps + 1, n_out))
        for j in range(n_in):
            for m in range(max_in):
                t = input_times[b, j, m]
                if np.isfinite(t) and t < t_end:
                    drive[int(np.ceil(t / dt - 1e-9)), :] += weights[j]
        V, I = np.zeros(n_out), np.zeros(n_out)
        spikes = [[] for _ in range(n_out)]
        for k in range(steps):
            I = I + drive[k]
            k1 = (I - V) / tau_mem
            I_next = I * np.exp(-dt / tau_syn)
            V_mid = V + dt * k1
            V_next = V + 0.5 * dt * (k1 + (I_next - V_mid) / tau_mem)
            cross = V_next >= threshold
            for i in np.flatnonzero(cross):
                frac = (threshold - V[i]) / (V_next[i] - V[i])
                spikes[i].append((k + frac) * dt)
            V = np.where(cross, 0.0, V_next)
            I = I_next
        out.append(spikes)
    return out


def test_reference_matches_arbitrary_precision():
    rng = np.random.default_rng(0)
    t = random_spikes(rng, 2, 5, 3, t_max=20.0)
    W = weights(rng, 5, 3, mean=1.0, std=0.8)
    for tau_mem, tau_syn in [(10.0, 4.0), (5.0, 5.0), (6.0, 3.0), (3.0, 7.0)]:
        r = ss.lif_forward(t, W, tau_mem=tau_mem, tau_syn=tau_syn, max_spikes=20, method="sequential")
        ref = simulate_mpmath(t, W, tau_mem, tau_syn, 1.0)
        assert sum(len(x) for row in ref for x in row) > 5
        for b in range(2):
            for i in range(3):
                exact = ref[b][i]
                assert r.counts[b, i] == len(exact)
                got = r.times[b, i, : len(exact)]
                rel = [abs((mp.mpf(float(g)) - e) / e) for g, e in zip(got, exact)]
                assert max(rel, default=0) <= TOL["mpmath"]["rtol"], (tau_mem, tau_syn, b, i, rel)


def test_reference_matches_brute_force_integration():
    rng = np.random.default_rng(1)
    t = random_spikes(rng, 1, 4, 3, t_max=15.0)
    W = weights(rng, 4, 3, mean=1.2, std=0.6)
    r = ss.lif_forward(t, W, tau_mem=8.0, tau_syn=3.0, max_spikes=30, method="sequential")
    # Input spikes in the last 5 time units leave room for tail spikes, so integrate well beyond them.
    euler = simulate_euler(t, W, 8.0, 3.0, 1.0, t_end=50.0, dt=4e-4)
    assert r.counts.sum() > 3
    for i in range(3):
        assert r.counts[0, i] == len(euler[0][i])
        # First-order in dt (inputs snap to the grid), so the agreement is a few dt; mpmath checks the digits.
        np.testing.assert_allclose(r.times[0, i, : r.counts[0, i]], euler[0][i], atol=5e-3)


# ---------------------------------------------------------------------------------------------------------------
# Scan vs sequential
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("chunk_size", [1, 2, 3, 8, 128])
@pytest.mark.parametrize("offset", [-1, 0, 1])
@pytest.mark.parametrize("multiple", [1, 2])
def test_scan_equals_sequential_around_chunk_multiples(chunk_size, offset, multiple):
    rng = np.random.default_rng(chunk_size * 10 + offset + 3 * multiple)
    length = max(1, chunk_size * multiple + offset)
    t = queue_of_length(rng, length, t_max=2.0 * length)
    # Strong weights make even a one-spike queue fire; longer queues fire often with weaker ones.
    W = weights(rng, t.shape[1], 4, mean=3.5 if length < 4 else 0.8, std=1.0)
    kw = dict(tau_mem=6.0, tau_syn=4.0, max_spikes=2 * length + 4)
    ref = ss.lif_forward(t, W, method="sequential", **kw)
    out = ss.lif_forward(t, W, method="scan", chunk_size=chunk_size, **kw)
    assert ref.counts.sum() > 0
    assert_same_spikes(ref, out)


@pytest.mark.parametrize("tau_mem,tau_syn,solver", [
    (10.0, 5.0, "newton"), (10.0, 5.0, "analytic"), (10.0, 5.0, "bisection"),
    (5.0, 5.0, "newton"), (5.0, 5.0 * (1 + 1e-9), "newton"), (4.0, 9.0, "bisection"), (7.0, 3.0, "newton")])
def test_scan_equals_sequential_time_constants_and_solvers(tau_mem, tau_syn, solver):
    rng = np.random.default_rng(5)
    t = random_spikes(rng, 3, 12, 4, t_max=40.0)
    W = weights(rng, 12, 6)
    kw = dict(tau_mem=tau_mem, tau_syn=tau_syn, max_spikes=40, solver=solver)
    ref = ss.lif_forward(t, W, method="sequential", **kw)
    assert ref.counts.sum() > 10
    for cs in (1, 3, 8):
        assert_same_spikes(ref, ss.lif_forward(t, W, method="scan", chunk_size=cs, **kw))


def test_solvers_agree():
    rng = np.random.default_rng(6)
    t = random_spikes(rng, 2, 10, 4)
    W = weights(rng, 10, 5)
    kw = dict(tau_mem=10.0, tau_syn=5.0, max_spikes=30, method="sequential")
    ref = ss.lif_forward(t, W, solver="analytic", **kw)
    assert ref.counts.sum() > 10
    for solver in ("newton", "bisection"):
        assert_same_spikes(ref, ss.lif_forward(t, W, solver=solver, **kw))


def test_per_neuron_time_constants():
    rng = np.random.default_rng(7)
    t = random_spikes(rng, 2, 10, 4)
    W = weights(rng, 10, 4)
    tau_mem = np.array([10.0, 5.0, 4.0, 8.0])
    tau_syn = np.array([5.0, 5.0, 9.0, 2.0])
    r = ss.lif_forward(t, W, tau_mem=tau_mem, tau_syn=tau_syn, max_spikes=30, method="sequential")
    for i in range(4):
        ri = ss.lif_forward(t, W[:, i:i + 1], tau_mem=tau_mem[i], tau_syn=tau_syn[i], max_spikes=30)
        np.testing.assert_array_equal(ri.counts[:, 0], r.counts[:, i])
        np.testing.assert_allclose(ri.times[:, 0], r.times[:, i], **TOL["float64"]["times"])
    assert_same_spikes(r, ss.lif_forward(t, W, tau_mem=tau_mem, tau_syn=tau_syn, max_spikes=30, method="scan",
                                         chunk_size=4))


def test_several_spikes_inside_one_gap_and_in_the_tail():
    # One strong input: the neuron fires repeatedly after it, both before the second input and after the last one.
    t = np.array([[[1.0, 30.0]]])
    W = np.array([[12.0]])
    for method in ("sequential", "scan"):
        r = ss.lif_forward(t, W, tau_mem=5.0, tau_syn=10.0, max_spikes=50, method=method, chunk_size=2)
        times = r.times[0, 0, : r.counts[0, 0]]
        assert (times < 30.0).sum() >= 3 and (times > 30.0).sum() >= 3
        assert np.all(np.diff(times) > 0)
    ref = simulate_mpmath(t, W, 5.0, 10.0, 1.0)[0][0]
    assert r.counts[0, 0] == len(ref)
    np.testing.assert_allclose(r.times[0, 0, : len(ref)], [float(x) for x in ref], rtol=1e-12)


def test_simultaneous_inputs_are_applied_together():
    # Two inputs at the same time sum before any firing test: each alone is subthreshold, together they fire.
    t = np.array([[[2.0], [2.0], [9.0]]])
    W = np.array([[1.5], [1.5], [-5.0]])
    for method in ("sequential", "scan"):
        r = ss.lif_forward(t, W, tau_mem=5.0, tau_syn=5.0, max_spikes=4, method=method, chunk_size=1)
        alone = ss.lif_forward(t[:, :1], W[:1], tau_mem=5.0, tau_syn=5.0, max_spikes=4, method=method)
        assert r.counts[0, 0] >= 1 and alone.counts[0, 0] == 0
        assert r.times[0, 0, 0] > 2.0


def test_negative_weights_empty_and_padded_samples():
    rng = np.random.default_rng(8)
    t = random_spikes(rng, 4, 9, 3)
    t[1] = np.inf  # all padding
    W = weights(rng, 9, 5, mean=0.2, std=1.5)
    assert (W < 0).any()
    kw = dict(tau_mem=10.0, tau_syn=3.0, max_spikes=20)
    ref = ss.lif_forward(t, W, method="sequential", **kw)
    assert (ref.counts[1] == 0).all() and np.isinf(ref.times[1]).all()
    assert_same_spikes(ref, ss.lif_forward(t, W, method="scan", chunk_size=3, **kw))
    empty = np.zeros((2, 9, 0))
    for method in ("sequential", "scan"):
        r = ss.lif_forward(empty, W, method=method, **kw)
        assert r.times.shape == (2, 5, 20) and np.isinf(r.times).all() and (r.counts == 0).all()
        g = ss.lif_backward(r, np.ones_like(r.times))
        assert g.input_times.shape == (2, 9, 0) and not g.weights.any()


def test_delays_match_shifted_inputs():
    rng = np.random.default_rng(9)
    t = random_spikes(rng, 2, 8, 3)
    W = weights(rng, 8, 3)
    D = rng.uniform(0.0, 6.0, (8, 3))
    kw = dict(tau_mem=10.0, tau_syn=4.0, max_spikes=30)
    r = ss.lif_forward(t, W, delays=D, method="sequential", **kw)
    assert r.counts.sum() > 5
    for i in range(3):
        shifted = np.sort(t + D[None, :, i, None], axis=-1)
        ri = ss.lif_forward(shifted, W[:, i:i + 1], method="sequential", **kw)
        np.testing.assert_array_equal(ri.counts[:, 0], r.counts[:, i])
        np.testing.assert_allclose(ri.times[:, 0], r.times[:, i], **TOL["float64"]["times"])
    for cs in (1, 2, 8, 128):
        assert_same_spikes(r, ss.lif_forward(t, W, delays=D, method="scan", chunk_size=cs, **kw))


def test_float32_inputs():
    rng = np.random.default_rng(10)
    t64 = random_spikes(rng, 2, 10, 4)
    W64 = weights(rng, 10, 4)
    t32, W32 = t64.astype(np.float32), W64.astype(np.float32)
    kw = dict(tau_mem=10.0, tau_syn=5.0, max_spikes=30)
    r32 = ss.lif_forward(t32, W32, method="scan", chunk_size=4, **kw)
    assert r32.times.dtype == np.float32
    ref = ss.lif_forward(t32.astype(np.float64), W32.astype(np.float64), method="sequential", **kw)
    assert_same_spikes(ref, r32, "float32")
    g = ss.lif_backward(r32, np.ones_like(r32.times))
    assert g.weights.dtype == np.float32 and g.input_times.dtype == np.float32


def test_max_spikes_cap_is_reported_and_dynamics_stay_exact():
    rng = np.random.default_rng(11)
    t = random_spikes(rng, 2, 10, 5)
    W = weights(rng, 10, 4, mean=1.5)
    full = ss.lif_forward(t, W, tau_mem=10.0, tau_syn=5.0, max_spikes=100)
    assert full.counts.max() > 3
    for method in ("sequential", "scan"):
        capped = ss.lif_forward(t, W, tau_mem=10.0, tau_syn=5.0, max_spikes=3, method=method, chunk_size=2)
        np.testing.assert_array_equal(capped.counts, full.counts)
        np.testing.assert_allclose(capped.times, full.times[..., :3], **TOL["float64"]["times"])
        assert capped.capped_spikes == int(np.clip(full.counts - 3, 0, None).sum()) > 0
        G = rng.normal(size=capped.times.shape)
        g_cap = ss.lif_backward(capped, G, method=method)
        G_full = np.zeros(full.times.shape)
        G_full[..., :3] = G
        g_full = ss.lif_backward(full, G_full, method=method)
        np.testing.assert_allclose(g_cap.weights, g_full.weights, **TOL["float64"]["grads"])


@pytest.mark.parametrize("method", ["sequential", "scan"])
def test_unresolvable_spike_rate_raises(method):
    # After a spike at t = 1e6 the next one comes ~1e-14 later: below the float64 spacing of t (1.2e-10).
    t = np.array([[[1e6]]])
    with pytest.raises(FloatingPointError, match=r"neuron 0 of sample 0 fires twice at t=1000000"):
        ss.lif_forward(t, np.array([[1e15]]), tau_mem=10.0, tau_syn=5.0, max_spikes=4, method=method)


def test_times_far_from_zero_are_named_as_a_cause_of_firing_twice():
    """At 1e17 the float64 spacing of the times (16) exceeds tau_mem: ordinary weights then "fire twice" at one time.
    The error gives that spacing and names the offset as a cause, not only the weights."""
    rng = np.random.default_rng(0)
    x = np.sort(rng.uniform(0, 50, (2, 100, 5)), -1)
    w = rng.normal(0.03, 0.05, (100, 32))
    with pytest.raises(FloatingPointError, match=r"fires twice at t=1\.0000000000000\d*e\+17: .*there \(16\.0\) "
                                                 r"is coarser.*Either the times lie so far from zero.*shift the times "
                                                 r"to start near 0.*or the synaptic current"):
        ss.lif_forward(x + 1e17, w, tau_mem=10.0, tau_syn=5.0, max_spikes=16)
    assert ss.lif_forward(x, w, tau_mem=10.0, tau_syn=5.0, max_spikes=16).counts.sum() > 0  # near zero: it runs
    # One input at 1e30 (spacing 1.4e14) or at the largest float64 (spacing 2**971, which np.spacing gives as inf):
    # the first spike already cannot be placed after its input, and the offset comes first among the causes.
    w = np.full((4, 3), 3.0)
    for t, spacing in ((1e30, r"140737488355328\.0"), (np.finfo(np.float64).max, r"1\.9958\d*e\+292")):
        with pytest.raises(FloatingPointError, match=rf"fires twice at .*there \({spacing}\) is coarser.*Either the "
                                                     r"times lie so far from zero.*even a first spike"):
            ss.lif_forward(np.full((1, 4, 1), t), w, tau_mem=10.0, tau_syn=5.0, max_spikes=4)


def test_inputs_are_not_modified():
    rng = np.random.default_rng(12)
    t = random_spikes(rng, 2, 6, 3)
    W = weights(rng, 6, 3)
    D = rng.uniform(0, 2, (6, 3))
    copies = t.copy(), W.copy(), D.copy()
    r = ss.lif_forward(t, W, delays=D, tau_mem=10.0, tau_syn=5.0, max_spikes=5, method="scan")
    ss.lif_backward(r, np.ones_like(r.times))
    for a, b in zip((t, W, D), copies):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("recurrent", [False, True])
def test_results_do_not_alias_the_callers_arrays(recurrent):
    """A result's backward gives the same gradients after the caller updates its float64 arrays in place (an
    optimizer step before the backward, shared weights): the forward keeps copies, whatever the dtype. Once per
    CPU engine (the module's ``cpu_engine`` fixture)."""
    rng = np.random.default_rng(5)
    t = random_spikes(rng, 2, 6, 3)
    args = dict(weights=weights(rng, 6, 4), delays=rng.uniform(0, 2, (6, 4)))
    if recurrent:
        args.update(recurrent_weights=rng.normal(0.0, 0.3, (4, 4)), recurrent_delays=rng.uniform(0.5, 2, (4, 4)))
    r = ss.lif_forward(t, **args, tau_mem=10.0, tau_syn=5.0, max_spikes=5)
    G = np.ones_like(r.times)
    before = ss.lif_backward(r, G)
    assert r.counts.sum() > 0
    for x in (t, *args.values()):
        x += 0.5  # in place
    after = ss.lif_backward(r, G)
    for name in ("weights", "input_times", "delays", "recurrent_weights", "recurrent_delays"):
        if getattr(before, name, None) is not None:
            np.testing.assert_array_equal(getattr(after, name), getattr(before, name), err_msg=name)


def test_readout_and_peak_results_do_not_alias_the_callers_arrays():
    rng = np.random.default_rng(6)
    t, W, D = random_spikes(rng, 2, 6, 3), weights(rng, 6, 4), rng.uniform(0, 2, (6, 4))
    calls = [
        (lambda: ss.li_forward(t, W, tau_mem=10.0, tau_syn=5.0, readout="max", t_max=30.0),
         lambda r: ss.li_backward(r, np.ones_like(r.values))),
        (lambda: ss.peak_voltage(t, W, tau_mem=10.0, tau_syn=5.0, delays=D),
         lambda r: ss.peak_voltage_backward(r, np.ones_like(r.values))),
    ]
    for forward, backward in calls:
        r = forward()
        before = backward(r)
        saved = t.copy(), W.copy(), D.copy()
        for x in (t, W, D):
            x += 0.5
        after = backward(r)
        for x, y in zip((t, W, D), saved):
            x[...] = y
        for a, b in zip(after, before):
            if b is not None and not np.isscalar(b):
                np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------------------------------------------------------
# Gradients
# ---------------------------------------------------------------------------------------------------------------

def _loss(G, **kw):
    r = ss.lif_forward(**kw)
    return np.where(np.isfinite(r.times), r.times, 0.0).ravel() @ G.ravel(), r.counts


def _fd(f, x, eps=1e-6):
    out = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        if not np.isfinite(x[idx]):
            continue
        xp, xm = x.copy(), x.copy()
        xp[idx] += eps
        xm[idx] -= eps
        out[idx] = (f(xp) - f(xm)) / (2 * eps)
    return out


@pytest.mark.parametrize("with_delays", [False, True])
@pytest.mark.parametrize("taus", [(8.0, 4.0), (5.0, 5.0), (3.0, 6.0)])
def test_gradients_match_finite_differences(with_delays, taus):
    rng = np.random.default_rng(13)
    t = random_spikes(rng, 2, 5, 3, t_max=25.0)
    W = weights(rng, 5, 3, mean=1.0)
    D = rng.uniform(0.0, 3.0, (5, 3)) if with_delays else None
    tau_mem, tau_syn = taus
    base = dict(input_times=t, weights=W, delays=D, tau_mem=tau_mem, tau_syn=tau_syn, threshold=1.0, max_spikes=4,
                method="sequential")
    r = ss.lif_forward(**base)
    assert r.counts.sum() > 4
    G = rng.normal(size=r.times.shape)

    def loss(**over):
        value, counts = _loss(G, **{**base, **over})
        # Finite differences are only meaningful while no spike appears or disappears.
        np.testing.assert_array_equal(counts, r.counts)
        return value

    num = {
        "weights": _fd(lambda x: loss(weights=x), W),
        "input_times": _fd(lambda x: loss(input_times=x), t),
        "threshold": (loss(threshold=1.0 + 1e-6) - loss(threshold=1.0 - 1e-6)) / 2e-6,
    }
    if with_delays:
        num["delays"] = _fd(lambda x: loss(delays=x), D)
    # Per-neuron time constants (DESIGN.md section 11): one gradient per neuron, also for scalar arguments; with
    # tau_mem == tau_syn the perturbations cross the near-equal branch of the closed forms.
    num["tau_mem"] = _fd(lambda x: loss(tau_mem=x), np.full(3, tau_mem))
    num["tau_syn"] = _fd(lambda x: loss(tau_syn=x), np.full(3, tau_syn))
    for method in ("sequential", "scan"):
        g = ss.lif_backward(r, G, method=method, time_constant_grads=True)
        assert g.tau_mem.shape == g.tau_syn.shape == (3,)
        assert ss.lif_backward(r, G, method=method).tau_mem is None  # only when asked
        for name, expected in num.items():
            np.testing.assert_allclose(getattr(g, name), expected, err_msg=f"{method}: grad_{name}", **TOL["fd"])
    assert np.isinf(t).any()
    assert not ss.lif_backward(r, G).input_times[np.isinf(t)].any()


def test_per_neuron_threshold_matches_separate_layers_and_finite_differences():
    """``threshold [n_out]``: each neuron as a one-neuron layer with its own scalar threshold, and exact gradients
    per neuron (a scalar threshold's gradient is their sum)."""
    rng = np.random.default_rng(21)
    t = random_spikes(rng, 2, 5, 3, t_max=25.0)
    W = weights(rng, 5, 3, mean=1.0)
    th = np.array([0.7, 1.0, 1.4])
    base = dict(input_times=t, weights=W, tau_mem=8.0, tau_syn=4.0, threshold=th, max_spikes=4)
    r = ss.lif_forward(**base)
    assert (r.counts.sum(axis=0) > 0).all()
    for i in range(3):
        ri = ss.lif_forward(t, W[:, i:i + 1], tau_mem=8.0, tau_syn=4.0, threshold=float(th[i]), max_spikes=4)
        np.testing.assert_array_equal(ri.counts[:, 0], r.counts[:, i])
        np.testing.assert_allclose(ri.times[:, 0], r.times[:, i], **TOL["float64"]["times"])
    G = rng.normal(size=r.times.shape)

    def loss(x):
        value, counts = _loss(G, **{**base, "threshold": x})
        np.testing.assert_array_equal(counts, r.counts)
        return value

    expected = _fd(loss, th)
    for method in ("sequential", "scan"):
        g = ss.lif_backward(r, G, method=method)
        assert g.threshold.shape == (3,)
        np.testing.assert_allclose(g.threshold, expected, **TOL["fd"])
    scalar = ss.lif_forward(**{**base, "threshold": 1.0})
    G1 = rng.normal(size=scalar.times.shape)
    per = ss.lif_forward(**{**base, "threshold": np.ones(3)})
    a, b = ss.lif_backward(scalar, G1), ss.lif_backward(per, G1)
    assert a.threshold.shape == () and b.threshold.shape == (3,)
    np.testing.assert_allclose(a.threshold, b.threshold.sum(), rtol=1e-12)


@pytest.mark.parametrize("with_delays", [False, True])
def test_scan_backward_equals_sequential_backward_on_larger_case(with_delays):
    rng = np.random.default_rng(14)
    t = random_spikes(rng, 3, 40, 6, t_max=100.0)
    W = weights(rng, 40, 8, mean=0.3, std=0.5)
    D = rng.uniform(0.0, 10.0, (40, 8)) if with_delays else None
    r = ss.lif_forward(t, W, delays=D, tau_mem=10.0, tau_syn=5.0, max_spikes=12, method="scan", chunk_size=8)
    assert r.counts.sum() > 30
    G = rng.normal(size=r.times.shape)
    a = ss.lif_backward(r, G, method="sequential")
    b = ss.lif_backward(r, G, method="scan")
    for name in ("weights", "input_times", "delays", "threshold"):
        if getattr(a, name) is None:
            continue
        np.testing.assert_allclose(getattr(b, name), getattr(a, name), err_msg=f"grad_{name}",
                                   **TOL["float64"]["grads"])


def test_padding_cotangents_are_ignored():
    rng = np.random.default_rng(15)
    t = random_spikes(rng, 2, 6, 3)
    W = weights(rng, 6, 3)
    r = ss.lif_forward(t, W, tau_mem=10.0, tau_syn=5.0, max_spikes=8)
    G = rng.normal(size=r.times.shape)
    G2 = G.copy()
    G2[np.isinf(r.times)] = 1e6
    a, b = ss.lif_backward(r, G), ss.lif_backward(r, G2)
    np.testing.assert_array_equal(a.weights, b.weights)
    np.testing.assert_array_equal(a.input_times, b.input_times)


def test_recurrence_scan_equals_loop():
    rng = np.random.default_rng(16)
    for d in (2, 3):
        A = rng.normal(size=(d, d, 4, 13)) * 0.5
        e = rng.normal(size=(d, 4, 13))
        x0 = rng.normal(size=(d, 4))
        for reverse in (False, True):
            np.testing.assert_allclose(recurrence_scan(A, e, x0, reverse), recurrence_loop(A, e, x0, reverse),
                                       rtol=1e-12, atol=1e-12)


def test_decay_is_stable_near_equal_time_constants():
    s = np.array([0.0, 1e-3, 1.0, 10.0, 100.0])
    a, b, c = lif.decay(s, 5.0, 5.0)
    np.testing.assert_allclose(c, s / 5.0 * np.exp(-s / 5.0), rtol=1e-15)
    _, _, c_near = lif.decay(s, 5.0, 5.0 * (1 + 1e-10))
    np.testing.assert_allclose(c_near, c, rtol=1e-8)
    assert lif.decay(np.inf, 5.0, 3.0) == (0.0, 0.0, 0.0)


# ---------------------------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------------------------

def _good():
    rng = np.random.default_rng(17)
    return dict(input_times=random_spikes(rng, 2, 4, 3), weights=weights(rng, 4, 3), tau_mem=10.0, tau_syn=5.0,
                max_spikes=4)


def _with(kw, name, value):
    kw = dict(kw)
    kw[name] = value
    return kw


@pytest.mark.parametrize("name,value,error,match", [
    ("input_times", "nan", ValueError, r"input_times contains NaN \(nan at index \(0, 1, 0\)\)"),
    ("input_times", "negative", ValueError, r"input_times must be >= 0, got -1.0"),
    ("input_times", "unsorted", ValueError, r"input_times must be ascending along the last axis \(\+inf padding "
                                            r"last\); got 3.0 at index \(0, 0, 0\) followed by 1.0$"),
    # A 0/1 raster (one entry per time bin) is named as one, with the way to spike times.
    ("input_times", "raster", ValueError, r"got 1.0 at index \(0, 0, 1\) followed by 0.0; its entries are all 0 or "
                                          r"1, like a binned raster .*spikescan.datasets.from_raster\(raster, dt, "
                                          r"time_axis=...\) .*0 for snnTorch's and Norse's \[T, batch, channels\]"),
    ("input_times", "count raster", ValueError, r"got 2.0 at index \(0, 0, 1\) followed by 0.0; its entries are whole "
                                                r"numbers with zeros among them, like a binned raster"),
    ("input_times", "bool raster", TypeError, r"input_times must have dtype float32 or float64, got bool; spike times "
                                              r"are floats, and bool or integer entries are usually a binned raster"),
    ("input_times", "2d", ValueError, r"input_times must have 3 dimensions"),
    ("input_times", "int", TypeError, r"input_times must have dtype float32 or float64, got int64"),
    ("input_times", [[[1.0]]], TypeError, r"input_times must be a NumPy or CuPy array"),
    ("weights", "shape", ValueError, r"weights must have shape \[n_in=4, n_out\]"),
    ("weights", "nan", ValueError, r"weights must be finite, got nan"),
    ("delays", "negative", ValueError, r"delays must be >= 0, got -0.5"),
    ("delays", "shape", ValueError, r"delays must have the shape of weights"),
    ("tau_mem", -1.0, ValueError, r"tau_mem must be positive and finite, got -1.0"),
    ("tau_syn", 0.0, ValueError, r"tau_syn must be positive and finite, got 0.0"),
    ("tau_mem", np.array([1.0, 2.0]), ValueError, r"tau_mem must be a scalar or have shape \[3\]"),
    ("tau_syn", np.array([1.0, np.nan, 2.0]), ValueError, r"tau_syn must be positive and finite, got nan"),
    # Time constants whose square (in the time-constant gradients) underflows or overflows float64: the NumPy
    # gradients came back NaN, the Numba ones raised a bare ZeroDivisionError.
    ("tau_mem", 1e-200, ValueError, r"tau_mem must be within \[1e-150, 1e\+150\] .*got 1e-200"),
    ("tau_syn", np.array([1.0, 2.0, 1e151]), ValueError, r"tau_syn must be within .*got 1e\+151 at index \(2,\)"),
    ("threshold", 0.0, ValueError, r"threshold must be positive and finite, got 0.0"),
    # Python ints beyond float64: a bare OverflowError ("int too large to convert to float") named no argument.
    pytest.param("threshold", 10**400, ValueError,
                 r"threshold must be positive and finite, got an integer of 1329 bits", id="threshold-huge-int"),
    pytest.param("tau_mem", -10**400, ValueError, r"tau_mem must be positive and finite, got an integer of 1329 bits",
                 id="tau_mem-huge-int"),
    ("threshold", np.array([1.0, -1.0, 1.0]), ValueError, r"threshold must be positive and finite, got -1.0"),
    ("threshold", np.ones(4), ValueError, r"threshold must be a scalar or have shape \[3\], got shape \(4,\)"),
    ("max_spikes", 0, ValueError, r"max_spikes must be a positive integer, got 0"),
    # Beyond the address space NumPy's own "array is too big" (on an empty batch, where no MemoryError comes first).
    ("max_spikes", 2**62, ValueError, r"max_spikes must be at most 1152921504606846975 .*got 4611686018427387904"),
    ("chunk_size", 2.5, ValueError, r"chunk_size must be a positive integer, got 2.5"),
    # A 0-d array counts as the number inside it (test_zero_d_arrays_count_as_their_numbers), not as anything else.
    ("max_spikes", np.array(4.0), ValueError, r"max_spikes must be a positive integer, got array\(4\.\)"),
    ("max_spikes", np.array(True), ValueError, r"max_spikes must be a positive integer, got array\(True\)"),
    ("max_spikes", np.array([4]), ValueError, r"max_spikes must be a positive integer, got array\(\[4\]\)"),
    ("method", "fast", ValueError, r"method must be one of 'auto', 'sequential', 'scan'; got 'fast'"),
    ("solver", "secant", ValueError, r"solver must be one of .*got 'secant'"),
    ("solver", "analytic", ValueError, r"solver='analytic' needs tau_mem == 2 \* tau_syn; got tau_mem=10.0, "
                                       r"tau_syn=6.0"),
])
def test_bad_input_raises_clear_errors(name, value, error, match):
    kw = _good()
    t = kw["input_times"]
    if name == "input_times" and isinstance(value, str):
        value = {
            "nan": t.copy(),
            "negative": t.copy(), "unsorted": t.copy(), "2d": t[0], "int": np.ones(t.shape, np.int64),
            "raster": np.tile(np.array([0.0, 1.0, 0.0], t.dtype), t.shape[:2] + (1,)),
            "count raster": np.tile(np.array([0.0, 2.0, 0.0], t.dtype), t.shape[:2] + (1,)),
            "bool raster": np.tile(np.array([False, True, False]), t.shape[:2] + (1,))}[value]
        if match.startswith("input_times contains NaN"):
            value[0, 1, 0] = np.nan
        elif "must be >= 0" in match:
            value[1, 2, 0] = -1.0
        elif "ascending" in match and "raster" not in match:
            value[0, 0, :] = [3.0, 1.0, 2.0]
    elif name == "weights" and value == "shape":
        value = kw["weights"][:3]
    elif name == "weights" and value == "nan":
        value = kw["weights"].copy()
        value[2, 1] = np.nan
    elif name == "delays":
        value = np.zeros((4, 3)) if value == "negative" else np.zeros((3, 3))
        value[0, 0] = -0.5
    elif name == "solver" and value == "analytic":
        kw["tau_syn"] = 6.0
    before = t.copy()
    with pytest.raises(error, match=match):
        ss.lif_forward(**_with(kw, name, value))
    np.testing.assert_array_equal(kw["input_times"], before)


def test_zero_d_arrays_count_as_their_numbers():
    """A 0-d array of a number (``x.max()`` on CuPy is one) is taken as that number wherever a scalar is asked for,
    as NumPy's scalars are: the integer counts and ``t_max`` refused it by name before, the time constants did not."""
    from spikescan import encode

    kw = _good()
    plain = ss.lif_forward(**kw)
    wrapped = ss.lif_forward(**dict(kw, max_spikes=np.array(kw["max_spikes"]), chunk_size=np.array(2),
                                    max_total_spikes=np.array(10**6), tau_mem=np.array(kw["tau_mem"])))
    np.testing.assert_array_equal(wrapped.times, plain.times)
    a = ss.li_forward(kw["input_times"], kw["weights"], tau_mem=10.0, tau_syn=5.0, t_max=30.0)
    b = ss.li_forward(kw["input_times"], kw["weights"], tau_mem=10.0, tau_syn=5.0, t_max=np.array(30.0))
    np.testing.assert_array_equal(a.values, b.values)
    x = np.array([[0.25, 0.5]])
    np.testing.assert_array_equal(encode.latency(x, t_max=np.array(10.0)), encode.latency(x, t_max=10.0))
    np.testing.assert_array_equal(encode.rate(x, t_max=np.array(10.0), max_spikes=np.array(3), slots=np.array(4)),
                                  encode.rate(x, t_max=10.0, max_spikes=3, slots=4))
    with pytest.raises(TypeError, match=r"t_max must be a real number, got array\(True\)"):
        encode.latency(x, t_max=np.array(True))

    class NoDtype:  # 0-d and with .item(), but no number's dtype: not unwrapped
        ndim = 0

        def item(self):
            return 4

    with pytest.raises(ValueError, match="max_spikes must be a positive integer"):
        ss.lif_forward(**dict(kw, max_spikes=NoDtype()))


@pytest.mark.parametrize("bad,hint", [
    (-1.0, r"spike times pad unused slots with \+inf, not -1.0"),
    (-np.inf, r"spike times pad unused slots with \+inf, not -inf"),
    (-0.5, r"spike times count from each sample's start at 0: shift a recording that starts earlier.*Feature values "
           r"\(standardised ones are negative\) are not spike times: encode them, e.g. spikescan.encode.latency")])
def test_negative_spike_times_say_what_to_do(bad, hint):
    """-1 (or -inf) is the padding of other tools; any other negative time, a recording that starts before 0, or
    standardised features passed as spike times."""
    kw = _good()
    kw["input_times"] = kw["input_times"].copy()
    kw["input_times"][1, 0, 0] = bad
    with pytest.raises(ValueError, match=r"input_times must be >= 0, got .* at index \(1, 0, 0\); " + hint):
        ss.lif_forward(**kw)


def test_unsorted_times_with_few_channels_name_swapped_axes():
    """A [batch, features] table transposed to [batch, 1, features] (one channel of many slots) was refused as
    unsorted with no hint about the axes."""
    kw = _good()
    x = np.random.default_rng(1).uniform(0.0, 20.0, (4, 1, 6))
    with pytest.raises(ValueError, match=r"must be ascending along the last axis .*; with 1 channel\(s\) of 6 spike "
                                         r"slots each: if the last axis holds channels or features, the axes are "
                                         r"swapped .*x\[:, :, None\]\)$"):
        ss.lif_forward(x, np.ones((1, 3)), tau_mem=kw["tau_mem"], tau_syn=kw["tau_syn"], max_spikes=2)
    descending = np.sort(np.random.default_rng(2).uniform(0.0, 20.0, (4, 6, 6)))[..., ::-1].copy()
    with pytest.raises(ValueError, match=r"followed by [-+.\de]+$"):  # as many channels as slots: no such hint
        ss.lif_forward(descending, np.ones((6, 3)), tau_mem=kw["tau_mem"], tau_syn=kw["tau_syn"], max_spikes=2)


@pytest.mark.parametrize("bad,match", [
    ("nan", r"contains NaN \(nan at index \(13, 2, 1\)\)"),
    ("negative", r"must be >= 0, got -2.0 at index \(13, 2, 1\)"),
    ("unsorted", r"must be ascending along the last axis .* at index \(13, 2, 1\) followed by")])
def test_spike_time_checks_work_in_blocks_of_samples(monkeypatch, bad, match):
    """The spike tensor's checks run before the memory check, so they work in blocks of samples (their temporaries,
    a bool per entry, stay a block's size: a spike tensor near the memory limit made them allocate three times its
    size in bools); an error names the entry's index in the whole tensor."""
    import tracemalloc
    from spikescan import _validate

    t = np.sort(np.random.default_rng(0).uniform(0.0, 50.0, (16, 100, 400)), axis=-1)  # 640000 entries, 5.1 MB
    monkeypatch.setattr(_validate, "CHECK_ELEMENTS", 100 * 400)  # one sample per block
    tracemalloc.start()
    try:
        _validate.check_spike_times("input_times", t)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # A block's bools (40 KB) and NumPy's buffers (~130 KB for the strided comparison); one bool per entry of the
    # whole tensor would be 640 KB (the old checks held three).
    assert peak < t.size // 2
    t[13, 2, 1] = {"nan": np.nan, "negative": -2.0, "unsorted": t[13, 2, 2] + 1.0}[bad]
    with pytest.raises(ValueError, match="input_times " + match):
        _validate.check_spike_times("input_times", t)


def test_backward_rejects_bad_cotangents():
    kw = _good()
    r = ss.lif_forward(**kw)
    with pytest.raises(ValueError, match=r"grad_times must have the shape of result.times \(2, 3, 4\), got shape"):
        ss.lif_backward(r, np.ones((2, 3, 5)))
    G = np.ones(r.times.shape)
    G[np.unravel_index(np.argmax(np.isfinite(r.times)), G.shape)] = np.nan
    if np.isfinite(r.times).any():
        with pytest.raises(ValueError, match="grad_times must be finite"):
            ss.lif_backward(r, G)
    with pytest.raises(TypeError, match="result must be the LIFResult"):
        ss.lif_backward((r.times, r.counts), G)
    with pytest.raises(TypeError, match="input_times_grad must be True or False, got 'no'"):
        ss.lif_backward(r, np.ones(r.times.shape), input_times_grad="no")
    with pytest.raises(TypeError, match=r"grad_times must be a NumPy or CuPy array, got list: "
                                        r"np.asarray\(grad_times, dtype=np.float32\)"):
        ss.lif_backward(r, r.times.tolist())
    with pytest.raises(TypeError, match=r"grad_times must be an array of result.times' shape, got the scalar 1.0: "
                                        r"np.full_like\(result.times, 1.0\)"):
        ss.lif_backward(r, 1.0)
    with pytest.raises(TypeError, match=r"grad_times must have dtype float32 or float64, got float16: "
                                        r"grad_times.astype\(np.float64\)"):
        ss.lif_backward(r, np.ones(r.times.shape, np.float16))
    with pytest.raises(TypeError, match=r"grad_times must be a plain NumPy array, got a masked array.*"
                                        r"np.ma.filled\(grad_times, value\)$"):
        ss.lif_backward(r, np.ma.masked_array(np.ones(r.times.shape)))
    with pytest.raises(TypeError, match=r"input_times must be a plain NumPy array, got a masked array.*"
                                        r"np.ma.filled\(input_times, np.inf\) \(\+inf is the padding\)$"):
        ss.lif_forward(np.ma.masked_array(r.times), np.ones((r.times.shape[1], 2)), tau_mem=10.0, tau_syn=5.0,
                       max_spikes=2)
    with pytest.raises(TypeError, match=r"grad_times must have a native-endian dtype .* got byte-swapped '>f8'"):
        ss.lif_backward(r, np.ones(r.times.shape, ">f8"))


@pytest.mark.parametrize("framework", ["jax", "torch"])
def test_another_frameworks_arrays_are_refused_naming_the_argument(framework):
    """A JAX array or torch tensor has a shape and a dtype, so it used to get past the argument checks into a
    ``TypeError`` that named neither the argument nor the framework ("expected a NumPy or CuPy array, got
    ArrayImpl")."""
    if framework == "jax":
        jnp = pytest.importorskip("jax.numpy")
        convert, kind = jnp.asarray, r"jaxlib\..*ArrayImpl \(a JAX array\)"
    else:
        torch = pytest.importorskip("torch")
        convert, kind = torch.as_tensor, r"torch\.Tensor \(a torch tensor\)"
    kw = _good()
    r = ss.lif_forward(**kw)
    for name, call in (
            ("weights", lambda: ss.lif_forward(**_with(kw, "weights", convert(kw["weights"])))),
            ("input_times", lambda: ss.lif_forward(**_with(kw, "input_times", convert(kw["input_times"])))),
            ("grad_times", lambda: ss.lif_backward(r, convert(np.ones(r.times.shape)))),
            ("weights", lambda: ss.li_forward(kw["input_times"], convert(kw["weights"]), tau_mem=10.0, tau_syn=5.0,
                                              t_max=20.0)),
            ("weights", lambda: ss.peak_voltage(kw["input_times"], convert(kw["weights"]), tau_mem=10.0,
                                                tau_syn=5.0))):
        with pytest.raises(TypeError, match=rf"{name} must be a NumPy or CuPy array, got {kind}: convert it with "
                                            rf"np\.asarray\({name}\)"):
            call()


def test_byte_swapped_inputs_name_the_fix():
    kw = _good()
    with pytest.raises(TypeError, match=r"input_times must have a native-endian .*input_times\.astype\('float64'\)"):
        ss.lif_forward(**_with(kw, "input_times", kw["input_times"].astype(">f8")))


@pytest.mark.parametrize("method", ["sequential", "scan"])
def test_backward_without_input_time_gradients(method):
    # A first layer's inputs are data: input_times_grad=False returns None for them and the other gradients unchanged.
    rng = np.random.default_rng(21)
    t = random_spikes(rng, 2, 8, 4)
    W = weights(rng, 8, 5)
    D = rng.uniform(0.0, 2.0, (8, 5))
    r = ss.lif_forward(t, W, delays=D, tau_mem=10.0, tau_syn=5.0, max_spikes=6)
    assert r.counts.sum() > 0
    G = rng.normal(size=r.times.shape)
    full = ss.lif_backward(r, G, method=method)
    part = ss.lif_backward(r, G, method=method, input_times_grad=False)
    assert part.input_times is None and np.abs(full.input_times).max() > 0
    for name in ("weights", "delays", "threshold"):
        np.testing.assert_array_equal(getattr(part, name), getattr(full, name), err_msg=name)


def test_scan_backward_by_segments_equals_loop_on_random_layers():
    """The scan backward walks only spikes (the adjoint between spikes is one decay of the whole span): it must
    agree with the point-by-point loop on random layers with ties, capped records, delays and per-neuron taus."""
    rng = np.random.default_rng(1)
    for trial in range(30):
        batch, n_in, n_out, max_in = rng.integers(1, 4), rng.integers(1, 12), rng.integers(1, 9), rng.integers(1, 8)
        t = rng.uniform(0, 30, (batch, n_in, max_in))
        t[rng.random(t.shape) < 0.2] = np.inf
        t = np.sort(np.round(t) if trial % 5 == 0 else t, axis=-1)  # every fifth: simultaneous inputs
        W = rng.normal(0.4, 0.8, (n_in, n_out))
        D = rng.uniform(0, 5, (n_in, n_out)) if trial % 2 else None
        tau_mem = [5.0, 10.0, rng.uniform(2, 20, n_out)][trial % 3]
        res = ss.lif_forward(t, W, delays=D, tau_mem=tau_mem, tau_syn=5.0, max_spikes=int(rng.integers(1, 10)),
                          method="sequential")
        G = rng.normal(size=res.times.shape)
        loop, seg = ss.lif_backward(res, G, method="sequential"), ss.lif_backward(res, G, method="scan")
        for name in ("weights", "input_times", "delays", "threshold"):
            a, b = getattr(loop, name), getattr(seg, name)
            if a is not None:
                np.testing.assert_allclose(b, a, rtol=0, atol=1e-12 * max(1.0, float(np.max(np.abs(a)))),
                                           err_msg=f"trial {trial}: {name}")


@pytest.mark.parametrize("name, bad", [("tau_mem", [True, 20.0, 20.0]), ("tau_syn", (5, np.bool_(True), 5)),
                                       ("threshold", [1.0, 1.0, np.array(False)])])
def test_per_neuron_lists_refuse_bools_among_numbers(name, bad):
    """A list of bools alone was refused, but np.asarray turned a bool among numbers into 1.0 (tau_mem=[True,
    20.0, 20.0] ran with tau_mem 1): refused as a scalar bool is, naming the argument."""
    rng = np.random.default_rng(3)
    x = np.sort(rng.uniform(0.0, 30.0, (2, 4, 2)), axis=-1)
    args = dict(tau_mem=10.0, tau_syn=5.0, threshold=1.0) | {name: bad}
    with pytest.raises(TypeError, match=f"{name} must be a positive number or an array of shape \\[3\\] .*got "):
        ss.lif_forward(x, rng.uniform(1.5, 3.0, (4, 3)), max_spikes=3, **args)


def test_per_neuron_parameters_may_be_lists():
    """A list of one value per neuron means the array of them (threshold, tau_mem, tau_syn); a list that is not a
    vector of numbers names the argument."""
    rng = np.random.default_rng(3)
    x = np.sort(rng.uniform(0.0, 30.0, (2, 4, 2)), axis=-1)
    W = rng.uniform(1.5, 3.0, (4, 3))
    lists = ss.lif_forward(x, W, tau_mem=[10.0, 12.0, 14.0], tau_syn=(5, 4, 3), threshold=[1.0, 1.5, 2.0], max_spikes=3)
    arrays = ss.lif_forward(x, W, tau_mem=np.array([10.0, 12.0, 14.0]), tau_syn=np.array([5.0, 4.0, 3.0]),
                         threshold=np.array([1.0, 1.5, 2.0]), max_spikes=3)
    assert np.isfinite(arrays.times).sum() > 3
    np.testing.assert_array_equal(lists.times, arrays.times)
    for name, bad in (("threshold", [1.0, [2.0], 3.0]), ("tau_mem", ["a", "b", "c"]), ("threshold", ["1", "1", "1"]),
                      ("tau_syn", [True, True, True])):
        args = dict(tau_mem=10.0, tau_syn=5.0, threshold=1.0)
        args[name] = bad
        with pytest.raises(TypeError, match=f"{name} must be a positive number or an array of shape \\[3\\]"):
            ss.lif_forward(x, W, max_spikes=3, **args)
    with pytest.raises(ValueError, match=r"threshold must be a scalar or have shape \[3\], got shape \(2,\)"):
        ss.lif_forward(x, W, tau_mem=10.0, tau_syn=5.0, threshold=[1.0, 2.0], max_spikes=3)
    # arrays of what is not a real number: complex (its imaginary part would be dropped), bool, strings, objects
    for name, bad in (("tau_mem", np.array([10.0, 10.0 + 5j, 10.0])), ("threshold", np.array([1.0, 1.0, 1.0 + 1e9j])),
                      ("tau_syn", np.array([True, True, True])), ("tau_mem", np.array(["10", "10", "10"])),
                      ("tau_syn", np.array([5.0, 5.0, 5.0], dtype=object))):
        args = dict(tau_mem=10.0, tau_syn=5.0, threshold=1.0)
        args[name] = bad
        with pytest.raises(TypeError, match=f"{name} must be a positive number or an array of real numbers of shape "
                                            f"\\[3\\], got dtype {bad.dtype}"):
            ss.lif_forward(x, W, max_spikes=3, **args)
    for bad in (np.complex128(10.0), 10.0 + 0j, np.bool_(True), np.str_("10")):  # scalars too, by name
        with pytest.raises(TypeError, match=f"tau_mem must be a positive number or an array of shape \\[3\\], got "
                                            f"{re.escape(repr(bad))}"):
            ss.lif_forward(x, W, tau_mem=bad, tau_syn=5.0, max_spikes=3)
    with pytest.raises(TypeError, match="tau_mem must be a plain array, got a masked array"):
        ss.lif_forward(x, W, tau_mem=np.ma.masked_array([10.0, 12.0, 14.0], [0, 1, 0]), tau_syn=5.0, max_spikes=3)


def test_masked_arrays_and_non_string_choices_are_refused():
    """A masked array's mask would be ignored (a masked spike would still arrive): refused, naming the argument and
    what to pass instead; a method given as an array (``in`` on a tuple compares elementwise) is refused too."""
    x = np.array([[[1.0, 2.0]]])
    W = np.full((1, 2), 3.0)
    masked = np.ma.masked_array(x, [[[False, True]]])
    with pytest.raises(TypeError, match=r"input_times must be a plain NumPy array, got a masked array.*np.ma.filled"):
        ss.lif_forward(masked, W, tau_mem=10.0, tau_syn=5.0, max_spikes=2)
    with pytest.raises(TypeError, match="weights must be a plain NumPy array, got a masked array"):
        ss.lif_forward(x, np.ma.masked_array(W), tau_mem=10.0, tau_syn=5.0, max_spikes=2)
    with pytest.raises(ValueError, match=r"method must be one of .*; got array\(\['scan'\]"):
        ss.lif_forward(x, W, tau_mem=10.0, tau_syn=5.0, max_spikes=2, method=np.array(["scan"]))
    plain = ss.lif_forward(np.ma.filled(masked, np.inf), W, tau_mem=10.0, tau_syn=5.0, max_spikes=2)
    np.testing.assert_array_equal(plain.counts, ss.lif_forward(x[..., :1], W, tau_mem=10.0, tau_syn=5.0,
                                                               max_spikes=2).counts)


def test_arrivals_and_spikes_beyond_the_dtype_range_are_refused(cpu_engine):
    """An input time plus its delay that overflows the input dtype, or a spike time beyond it, is refused naming the
    cause: the arrival or spike became +inf, read as no spike (the compiled engine even counted a spike it never
    recorded), and the backward blamed the loss's scale."""
    one = np.array([[5.0]])
    for x, D, dtype_name in ((np.array([[[1.7e308]]]), np.array([[1e308]]), "float64"),
                             (np.array([[[3e38]]], np.float32), np.array([[1e38]], np.float32), "float32")):
        for call in (lambda: ss.lif_forward(x, one.astype(x.dtype), tau_mem=10.0, tau_syn=5.0, max_spikes=4,
                                            delays=D, engine=cpu_engine),
                     lambda: ss.peak_voltage(x, one.astype(x.dtype), tau_mem=10.0, tau_syn=5.0, delays=D),
                     lambda: ss.lif_trace(x, one.astype(x.dtype), [0.0, 1.0], tau_mem=10.0, tau_syn=5.0, delays=D)):
            with pytest.raises(ValueError, match=rf"input_times \+ delays must stay within the range of {dtype_name}"):
                call()
    # Just within range: accepted.
    ss.lif_forward(np.array([[[1.0e308]]]), one, tau_mem=10.0, tau_syn=5.0, max_spikes=4, delays=np.array([[7e307]]),
                   engine=cpu_engine)
    # A spike after the last input, beyond float32 (time constants near the range): refused, not turned into +inf.
    with pytest.raises(ValueError, match=r"a spike time \(3.7.*\) exceeds the range of the input dtype float32"):
        ss.lif_forward(np.array([[[3.39e38]]], np.float32), np.array([[5.0]], np.float32), tau_mem=1e38, tau_syn=5e37,
                       max_spikes=4, engine=cpu_engine)


@pytest.mark.parametrize("shape", [(0, 4, 3), (2, 4, 3)])
@pytest.mark.parametrize("n_out", [0, 3])
def test_max_spikes_beyond_the_address_space_names_the_argument(shape, n_out):
    # An empty batch or layer needs no memory, so no MemoryError named max_spikes: NumPy's "array is too big" came
    # from allocating the [0, max_spikes] records.
    with pytest.raises(ValueError, match=r"max_spikes must be at most \d+ .*got 1180591620717411303424"):
        ss.lif_forward(np.zeros(shape), np.ones((4, n_out)), tau_mem=10.0, tau_syn=5.0, max_spikes=2**70)


@pytest.mark.usefixtures("cpu_engine")
@pytest.mark.parametrize("solver", ["newton", "bisection"])
def test_near_grazing_spike_with_tau_mem_far_above_tau_syn_is_placed_to_its_conditioning(solver):
    """tau_mem / tau_syn = 1e3 needs a current of ~1000 thresholds (the PSP is scaled by ~tau_syn / tau_mem). The
    solvers' stop rule took V's rounding error as eps (threshold + |v0| + |i0|), 1000x too large there, so Newton
    stopped far above a near-grazing root: 1.9e-7 relative early for a peak 1e-11 above threshold (bisection: 4e-11).
    """
    from spikescan.reference import lif_forward_reference

    tm, ts = 5000.0, 5.0
    t = np.array([[[0.0]]])
    peak = ss.peak_voltage(t, np.ones((1, 1)), tau_mem=tm, tau_syn=ts).values[0, 0]
    for margin in (1e-9, 1e-10, 1e-11):
        W = np.array([[(1 + margin) / peak]])
        exact = lif_forward_reference(t, W, tau_mem=tm, tau_syn=ts, max_spikes=1, dps=40).times[0, 0, 0]
        for method in ("sequential", "scan"):
            got = ss.lif_forward(t, W, tau_mem=tm, tau_syn=ts, max_spikes=1, solver=solver, method=method).times
            np.testing.assert_allclose(got[0, 0, 0], exact, rtol=2e-10, err_msg=f"margin {margin}, {method}")
