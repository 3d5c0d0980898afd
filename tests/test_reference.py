"""spikescan.reference.lif_forward_reference: checked on its own (arbitrary precision, a brute-force grid
integration, hand-made event orders), then used as the oracle of lif_forward's sequential and scan methods."""

from __future__ import annotations

import math

import numpy as np
import pytest

import spikescan as ss
from spikescan.reference import lif_forward_reference

from _cases import random_spikes, weights
from tolerances import TOL


def assert_same_spikes(ref_times, ref_counts, out_times, out_counts, dtype="float64"):
    np.testing.assert_array_equal(out_counts, ref_counts)
    np.testing.assert_array_equal(np.isfinite(out_times), np.isfinite(ref_times))
    fin = np.isfinite(ref_times)
    np.testing.assert_allclose(out_times[fin], ref_times[fin], **TOL[dtype]["times"])


# ---------------------------------------------------------------------------------------------------------------
# The reference against lif_forward (feed-forward), on both CPU engines
# ---------------------------------------------------------------------------------------------------------------

TIME_CONSTANTS = {
    "tm>ts": (10.0, 4.0),
    "tm<ts": (3.0, 7.0),
    "tm==ts": (5.0, 5.0),
    "tm~ts": (5.0, 5.0 * (1 + 1e-9)),
    "tm==2ts": (8.0, 4.0),
    "per-neuron": (np.array([10.0, 5.0, 3.0, 8.0, 6.0]), np.array([4.0, 5.0, 7.0, 8.0, 6.0 * (1 + 1e-9)])),
}


@pytest.mark.usefixtures("cpu_engine")
@pytest.mark.parametrize("delayed", [False, True], ids=["no-delays", "delays"])
@pytest.mark.parametrize("taus", list(TIME_CONSTANTS), ids=list(TIME_CONSTANTS))
def test_lif_forward_matches_reference(taus, delayed):
    tau_mem, tau_syn = TIME_CONSTANTS[taus]
    rng = np.random.default_rng(11)
    t = random_spikes(rng, 3, 8, 4, t_max=25.0)
    W = weights(rng, 8, 5, mean=0.7, std=0.9)
    D = rng.uniform(0.0, 6.0, (8, 5)) if delayed else None
    threshold = np.array([1.0, 0.7, 1.3, 1.0, 0.9])
    # max_spikes below the busiest neuron's count: the recording is capped, the counts are not.
    kw = dict(tau_mem=tau_mem, tau_syn=tau_syn, threshold=threshold, max_spikes=6, delays=D)
    ref_times, ref_counts = lif_forward_reference(t, W, **kw)
    assert ref_counts.sum() > 40
    assert ref_counts.max() > 6
    for method in ("sequential", "scan"):
        out = ss.lif_forward(t, W, method=method, **kw)
        assert_same_spikes(ref_times, ref_counts, out.times, out.counts)
    out = ss.lif_forward(t, W, method="scan", chunk_size=3, **kw)
    assert_same_spikes(ref_times, ref_counts, out.times, out.counts)


@pytest.mark.usefixtures("cpu_engine")
@pytest.mark.parametrize("seed", range(8))
def test_lif_forward_matches_reference_random_layers(seed):
    # Random shapes, per-neuron time constants (some equal), thresholds, delays or none, small max_spikes.
    rng = np.random.default_rng(100 + seed)
    batch, n_in, max_in, n_out = 2, int(rng.integers(1, 9)), int(rng.integers(1, 5)), int(rng.integers(1, 6))
    t = random_spikes(rng, batch, n_in, max_in, t_max=20.0)
    W = weights(rng, n_in, n_out, mean=1.5, std=1.0)
    tau_mem = rng.uniform(2.0, 12.0, n_out)
    tau_syn = np.where(rng.random(n_out) < 0.3, tau_mem, rng.uniform(2.0, 12.0, n_out))
    kw = dict(tau_mem=tau_mem, tau_syn=tau_syn, threshold=rng.uniform(0.5, 1.5, n_out),
              max_spikes=int(rng.integers(1, 5)), delays=rng.uniform(0.0, 5.0, (n_in, n_out)) if seed % 2 else None)
    ref_times, ref_counts = lif_forward_reference(t, W, **kw)
    assert ref_counts.sum() > 0
    for method in ("sequential", "scan"):
        out = ss.lif_forward(t, W, method=method, **kw)
        assert_same_spikes(ref_times, ref_counts, out.times, out.counts)


@pytest.mark.usefixtures("cpu_engine")
@pytest.mark.parametrize("taus", ["tm>ts", "tm<ts", "tm==ts"])
def test_lif_forward_matches_reference_after_the_last_input(taus):
    # One strong early input: the neuron fires a burst long after it (the open interval after the last arrival).
    tau_mem, tau_syn = TIME_CONSTANTS[taus]
    t = np.array([[[0.5, 1.0, np.inf], [2.0, np.inf, np.inf]]])
    W = np.array([[6.0, 1.5], [8.0, 0.8]])
    D = np.array([[0.0, 1.0], [0.5, 3.0]])
    for delays in (None, D):
        kw = dict(tau_mem=tau_mem, tau_syn=tau_syn, threshold=np.array([1.0, 0.6]), max_spikes=50, delays=delays)
        ref_times, ref_counts = lif_forward_reference(t, W, **kw)
        last_arrival = 2.0 if delays is None else 5.0
        assert ref_counts[0, 0] > 4
        assert (ref_times[0] > last_arrival + 1.0).sum() >= 2
        for method in ("sequential", "scan"):
            out = ss.lif_forward(t, W, method=method, **kw)
            assert_same_spikes(ref_times, ref_counts, out.times, out.counts)


# ---------------------------------------------------------------------------------------------------------------
# The reference on its own: arbitrary precision, brute force, event order, runaway
# ---------------------------------------------------------------------------------------------------------------

def recurrent_case(delayed):
    """Three neurons: 0 excites 1 and itself, 1 inhibits 0 and 2, 2 excites 0; optionally delayed."""
    R = np.array([[0.4, 0.9, 0.0],
                  [-1.2, 0.0, -0.8],
                  [0.7, 0.0, 0.0]])
    Dr = np.array([[0.3, 1.1, 0.0],
                   [0.0, 0.0, 0.6],
                   [2.0, 0.0, 0.0]]) if delayed else None
    return R, Dr


SMALL_CASES = {
    "ff tm>ts delays": dict(tau_mem=8.0, tau_syn=3.0, delays=True),
    "ff tm<ts": dict(tau_mem=3.0, tau_syn=6.0),
    "ff tm==ts per-neuron threshold": dict(tau_mem=5.0, tau_syn=5.0, threshold=np.array([1.0, 0.6, 1.4])),
    "recurrent": dict(tau_mem=8.0, tau_syn=3.0, recurrent="zero delays"),
    "recurrent delayed, per-neuron taus": dict(tau_mem=np.array([8.0, 5.0, 4.0]), tau_syn=np.array([3.0, 5.0, 6.0]),
                                               recurrent="delays", delays=True),
}


def small_case(name):
    rng = np.random.default_rng(3)
    t = random_spikes(rng, 1, 4, 3, t_max=10.0)
    W = weights(rng, 4, 3, mean=1.3, std=0.6)
    spec = dict(SMALL_CASES[name])
    kw = dict(tau_mem=spec.pop("tau_mem"), tau_syn=spec.pop("tau_syn"), threshold=spec.pop("threshold", 1.0),
              max_spikes=40)
    if spec.pop("delays", False):
        kw["delays"] = rng.uniform(0.0, 3.0, (4, 3))
    if "recurrent" in spec:
        kw["recurrent_weights"], kw["recurrent_delays"] = recurrent_case(spec.pop("recurrent") == "delays")
    return t, W, kw


@pytest.mark.parametrize("name", list(SMALL_CASES))
def test_reference_float64_matches_arbitrary_precision(name):
    t, W, kw = small_case(name)
    times, counts = lif_forward_reference(t, W, **kw)
    exact_times, exact_counts = lif_forward_reference(t, W, dps=40, **kw)
    assert counts.sum() > 5
    np.testing.assert_array_equal(counts, exact_counts)
    fin = np.isfinite(exact_times)
    np.testing.assert_array_equal(np.isfinite(times), fin)
    np.testing.assert_allclose(times[fin], exact_times[fin], **TOL["mpmath"])


def propagator(tau_mem, tau_syn, dt):
    """exp(A dt) for d(V, I)/dt = A (V, I), A = [[-1/tau_mem, 1/tau_mem], [0, -1/tau_syn]], by its Taylor series
    (|A dt| ~ 1e-4, so 12 terms are exact to rounding): no closed form shared with the reference."""
    a = np.array([[-1.0 / tau_mem, 1.0 / tau_mem], [0.0, -1.0 / tau_syn]]) * dt
    term, total = np.eye(2), np.eye(2)
    for n in range(1, 12):
        term = term @ a / n
        total = total + term
    return total


def simulate_grid(input_times, W, tau_mem, tau_syn, threshold, t_end, dt, delays=None, recurrent_weights=None,
                  recurrent_delays=None):
    """Brute force on a grid of step dt: arrivals snap to the next grid point, the state moves by the exact 2x2
    propagator per step; a crossing between two grid points is placed by linear interpolation, and the state at the
    later grid point restarts from (0, I) at that time (zero-delay recurrent arrivals land there, after the reset).
    One sample: spike-time lists."""
    n_in, n_out = W.shape
    tau_mem, tau_syn, threshold = (np.broadcast_to(np.asarray(x, float), (n_out,))
                                   for x in (tau_mem, tau_syn, threshold))
    delays = np.zeros((n_in, n_out)) if delays is None else delays
    R = np.zeros((n_out, n_out)) if recurrent_weights is None else recurrent_weights
    Dr = np.zeros((n_out, n_out)) if recurrent_delays is None else recurrent_delays
    steps = int(round(t_end / dt))
    drive = {}

    def add(t, i, w):
        k = math.ceil(t / dt)
        if k < steps:
            drive.setdefault(k, [0.0] * n_out)[i] += w

    for j in range(n_in):
        for t in input_times[0, j]:
            if np.isfinite(t):
                for i in range(n_out):
                    add(t + delays[j, i], i, W[j, i])
    P = [propagator(tau_mem[i], tau_syn[i], dt) for i in range(n_out)]
    p_vv, p_vi, p_ii = ([float(p[r, c]) for p in P] for r, c in ((0, 0), (0, 1), (1, 1)))
    th = [float(x) for x in threshold]
    V, I = [0.0] * n_out, [0.0] * n_out
    spikes = [[] for _ in range(n_out)]
    for k in range(steps):
        d = drive.get(k)
        if d is not None:
            I = [a + b for a, b in zip(I, d)]
        for i in range(n_out):
            v_next = p_vv[i] * V[i] + p_vi[i] * I[i]
            I[i] = p_ii[i] * I[i]
            if v_next >= th[i]:
                frac = (th[i] - V[i]) / (v_next - V[i])
                t_spike = (k + frac) * dt
                spikes[i].append(t_spike)
                # Reset at the crossing, not at the grid point: (V, I) at t_spike with V <- 0, moved to (k + 1) dt.
                i_spike = propagator(tau_mem[i], tau_syn[i], frac * dt)[1, 1] * (I[i] / p_ii[i])
                rest = propagator(tau_mem[i], tau_syn[i], (1.0 - frac) * dt)
                v_next, I[i] = float(rest[0, 1] * i_spike), float(rest[1, 1] * i_spike)
                for target in range(n_out):
                    if R[i, target] != 0.0:
                        add(max(t_spike + Dr[i, target], (k + 1) * dt), target, R[i, target])
            V[i] = v_next
    return spikes


@pytest.mark.parametrize("name", list(SMALL_CASES))
def test_reference_matches_brute_force_grid(name):
    t, W, kw = small_case(name)
    times, counts = lif_forward_reference(t, W, **kw)
    dt, t_end = 2e-4, 30.0
    grid = simulate_grid(t, W, kw["tau_mem"], kw["tau_syn"], kw["threshold"], t_end, dt, kw.get("delays"),
                         kw.get("recurrent_weights"), kw.get("recurrent_delays"))
    assert counts.sum() > 5
    assert np.all(times[np.isfinite(times)] < t_end - 2.0)  # nothing the grid could miss at its end
    for i in range(W.shape[1]):
        assert counts[0, i] == len(grid[i]), (i, times[0, i, :counts[0, i]], grid[i])
        # First order in dt (arrivals snap to the grid; the interpolated spike time moves recurrent arrivals): a few
        # dt (0.7 dt feed-forward, 2.3 dt on the delayed recurrent case).
        np.testing.assert_allclose(times[0, i, :counts[0, i]], grid[i], rtol=0, atol=5 * dt)


def test_recurrent_cases_use_their_loops():
    # The recurrent small cases differ from the same input without recurrence (the loops matter to the checks).
    for name in ("recurrent", "recurrent delayed, per-neuron taus"):
        t, W, kw = small_case(name)
        with_r = lif_forward_reference(t, W, **kw)
        kw.pop("recurrent_weights"), kw.pop("recurrent_delays")
        without = lif_forward_reference(t, W, **kw)
        assert not np.array_equal(with_r[1], without[1])


def test_crossing_at_an_arrival_comes_before_it():
    # A crossing at exactly the time of an arrival fires before that arrival is applied, even a huge inhibition.
    t = np.array([[[1.0, np.inf]]])
    W = np.array([[4.0]])
    kw = dict(tau_mem=6.0, tau_syn=4.0, max_spikes=3)
    times, counts = lif_forward_reference(t, W, **kw)
    first = times[0, 0, 0]
    assert counts[0, 0] >= 1 and np.isfinite(first)
    t2 = np.array([[[1.0, np.inf], [first, np.inf]]])
    times2, counts2 = lif_forward_reference(t2, np.array([[4.0], [-50.0]]), **kw)
    assert counts2[0, 0] == 1 and times2[0, 0, 0] == first
    # One ulp later the inhibition comes first (the crossing was the first float64 time with V >= threshold).
    t3 = np.array([[[1.0, np.inf], [np.nextafter(first, 0.0), np.inf]]])
    assert lif_forward_reference(t3, np.array([[4.0], [-50.0]]), **kw)[1][0, 0] == 0


def test_zero_delay_recurrence_is_applied_after_every_spike_at_that_time():
    # Two identical neurons cross at the same time; each strongly inhibits the other with no delay. Both fire,
    # since the arrivals at t come after all spikes at t; then both are silenced.
    t = np.array([[[1.0, 2.0, np.inf]]])
    W = np.array([[3.0, 3.0]])
    R = np.array([[0.0, -30.0], [-30.0, 0.0]])
    kw = dict(tau_mem=6.0, tau_syn=4.0, max_spikes=5)
    times, counts = lif_forward_reference(t, W, recurrent_weights=R, **kw)
    assert counts.tolist() == [[1, 1]] and times[0, 0, 0] == times[0, 1, 0]
    ff_times, ff_counts = lif_forward_reference(t, W, **kw)
    assert ff_counts[0, 0] > 1 and ff_times[0, 0, 0] == times[0, 0, 0]
    # A zero-delay self-excitation lands after the neuron's own reset: it fires again sooner, not at once.
    self_times, self_counts = lif_forward_reference(t, W[:, :1], recurrent_weights=np.array([[0.5]]), **kw)
    assert self_counts[0, 0] > ff_counts[0, 0]
    assert self_times[0, 0, 0] == ff_times[0, 0, 0] < self_times[0, 0, 1] < ff_times[0, 0, 1]


def test_unrecorded_spikes_still_propagate():
    t, W, kw = small_case("recurrent")
    full_times, full_counts = lif_forward_reference(t, W, **dict(kw, max_spikes=40))
    capped_times, capped_counts = lif_forward_reference(t, W, **dict(kw, max_spikes=1))
    assert full_counts.max() > 1
    np.testing.assert_array_equal(capped_counts, full_counts)
    np.testing.assert_array_equal(capped_times, full_times[..., :1])


def test_zero_recurrent_weights_are_feed_forward():
    t, W, kw = small_case("ff tm>ts delays")
    ff = lif_forward_reference(t, W, **kw)
    rec = lif_forward_reference(t, W, recurrent_weights=np.zeros((3, 3)), recurrent_delays=np.ones((3, 3)), **kw)
    np.testing.assert_array_equal(rec[0], ff[0])
    np.testing.assert_array_equal(rec[1], ff[1])


def test_runaway_firing_raises():
    t = np.array([[[np.inf], [1.0]]])
    W = np.array([[0.0, 0.0], [0.0, 1e5]])
    with pytest.raises(FloatingPointError, match=r"neuron 1 of sample 0 .*spike 10001 at t=1\.5\d*"):
        lif_forward_reference(t, W, tau_mem=5.0, tau_syn=5.0, max_spikes=2)


def test_reference_checks_its_arguments():
    """The reference refuses what would make its simulation meaningless, naming the argument (NaN, negative and
    unsorted times, negative delays, NaN weights and non-positive time constants gave output or bare errors)."""
    x = np.array([[[1.0, 2.0], [0.5, np.inf]]])
    W = np.full((2, 3), 0.8)
    assert lif_forward_reference(np.array([[[1.0, 2.0, 3.0], [0.5, np.inf, np.inf]]]), W, tau_mem=10.0, tau_syn=5.0,
                                 max_spikes=2)[0].shape == (1, 3, 2)
    kw = dict(tau_mem=10.0, tau_syn=5.0, max_spikes=2)
    bad_x = [(np.array([[[1.0, np.nan], [0.5, np.inf]]]), "input_times must be spike times >= 0"),
             (np.array([[[-1.0, 2.0], [0.5, np.inf]]]), "input_times must be spike times >= 0"),
             (np.array([[[1.0, 3.0, 2.0], [0.5, np.inf, np.inf]]]), r"ascending .*got 2.0 at index \(0, 0, 2\)")]
    for times, match in bad_x:
        with pytest.raises(ValueError, match=match):
            lif_forward_reference(times, W, **kw)
    cases = [(dict(delays=np.full((2, 3), -1.0)), "delays must be finite and >= 0, got -1.0"),
             (dict(weights=np.full((2, 3), np.nan)), "weights must be finite"),
             (dict(tau_mem=0.0), "tau_mem must be positive"), (dict(tau_syn=-1.0), "tau_syn must be positive"),
             (dict(max_spikes=0), "max_spikes must be a positive integer, got 0"),
             (dict(recurrent_weights=np.eye(3), recurrent_delays=-np.eye(3)), "recurrent_delays must be finite")]
    for change, match in cases:
        args = {**kw, "weights": W, **change}
        with pytest.raises(ValueError, match=match):
            lif_forward_reference(x, args.pop("weights"), **args)


def test_reference_result_is_a_named_tuple():
    """``lif_forward_reference`` returns ``ReferenceResult(times, counts)``: by name, or unpacked as a pair."""
    from spikescan.reference import ReferenceResult, lif_forward_reference

    x = np.array([[[1.0, 3.0]]])
    out = lif_forward_reference(x, np.array([[4.0]]), tau_mem=10.0, tau_syn=5.0, max_spikes=2)
    assert isinstance(out, ReferenceResult)
    times, counts = out
    assert times is out.times and counts is out.counts and counts.dtype == np.int64
    np.testing.assert_allclose(out.times, ss.lif_forward(x, np.array([[4.0]]), tau_mem=10.0, tau_syn=5.0,
                                                         max_spikes=2).times, rtol=1e-12)


def _bad_inputs():
    """(id, arguments changed from a valid call, the argument the error must name)."""
    x2 = np.array([[[1.0], [1.0]]])
    return [
        ("weights-sum-overflows", dict(input_times=x2, weights=np.full((2, 1), 1.5e308)), "weights"),
        ("weights-sum-past-limit", dict(input_times=x2, weights=np.full((2, 1), 1e300)), "weights"),
        ("arrival-overflows", dict(input_times=np.array([[[1e308]]]), delays=np.array([[1e308]])), "delays"),
        ("complex-weights", dict(weights=np.array([[2.0 + 1j]])), "weights"),
        ("bool-weights", dict(weights=np.array([[True]])), "weights"),
        ("int-weights", dict(weights=np.array([[2]])), "weights"),
        ("string-times", dict(input_times=np.array([[["1.0"]]])), "input_times"),
        ("list-times", dict(input_times=[[[1.0]]]), "input_times"),
        ("recurrent-delays-alone", dict(recurrent_delays=np.zeros((1, 1))), "recurrent_delays"),
        ("2d-times", dict(input_times=np.array([[1.0]])), "input_times"),
        ("1d-weights", dict(weights=np.array([2.0])), "weights"),
        ("tau-shape", dict(tau_mem=np.array([1.0, 2.0, 3.0])), "tau_mem"),
        ("tau-complex", dict(tau_syn=1j), "tau_syn"),
        ("tau-bool", dict(tau_mem=True), "tau_mem"),
        ("tau-too-small", dict(tau_mem=1e-200), "tau_mem"),
        ("tau-too-large", dict(tau_syn=1e200), "tau_syn"),
        ("threshold-shape", dict(threshold=np.ones(2)), "threshold"),
        ("recurrent-weights-huge", dict(recurrent_weights=np.array([[1e297]])), "recurrent_weights"),
    ]


@pytest.mark.parametrize("name,change,argument", _bad_inputs(), ids=[c[0] for c in _bad_inputs()])
def test_reference_refuses_what_lif_forward_refuses(name, change, argument):
    """The reference refuses each input lif_forward refuses, with the same exception type and an error naming the
    argument (it returned silent neurons for overflowing currents and arrivals, accepted complex, bool and string
    arrays and lone recurrent_delays, and raised bare unpacking, index and broadcast errors)."""
    args = dict(input_times=np.array([[[1.0, np.inf]]]), weights=np.array([[2.0]]), tau_mem=10.0, tau_syn=5.0,
                max_spikes=2)
    args.update(change)
    with pytest.raises((TypeError, ValueError)) as fast:
        ss.lif_forward(**args)
    with pytest.raises(fast.type, match=argument) as ref:
        lif_forward_reference(**args)
    assert argument in str(fast.value) and type(ref.value) is fast.type


@pytest.mark.parametrize("dps", [0, -5, 2.5, True, 14, 10**9, "40"])
def test_reference_dps_must_be_a_sensible_integer(dps):
    """dps=0 gave wrong counts, negative and fractional values were accepted, 10**9 ran without end."""
    with pytest.raises(ValueError, match=f"dps must be None .*got {dps!r}"):
        lif_forward_reference(np.array([[[1.0]]]), np.array([[2.0]]), tau_mem=10.0, tau_syn=5.0, max_spikes=2,
                              dps=dps)
    x, w = np.array([[[1.0]]]), np.array([[5.0]])
    out = lif_forward_reference(x, w, tau_mem=10.0, tau_syn=5.0, max_spikes=2, dps=15)
    assert out.counts.tolist() == [[1]] == ss.lif_forward(x, w, tau_mem=10.0, tau_syn=5.0, max_spikes=2).counts.tolist()


def test_reference_handles_empty_layers_as_lif_forward():
    """n_out == 0 raised "min() arg is an empty sequence"; every empty axis gives lif_forward's result."""
    for t_shape, w_shape in [((1, 1, 1), (1, 0)), ((0, 1, 1), (1, 2)), ((1, 0, 1), (0, 2)), ((1, 1, 0), (1, 2))]:
        t, w = np.ones(t_shape), np.full(w_shape, 3.0)
        ref = lif_forward_reference(t, w, tau_mem=10.0, tau_syn=5.0, max_spikes=2)
        fast = ss.lif_forward(t, w, tau_mem=10.0, tau_syn=5.0, max_spikes=2)
        assert ref.times.shape == fast.times.shape and ref.counts.shape == fast.counts.shape
        np.testing.assert_array_equal(ref.counts, fast.counts)


def test_reference_limits_are_lif_forwards():
    """The reference restates lif_forward's bounds rather than importing them (it shares no code): they agree."""
    from spikescan import _validate, reference

    assert reference.CURRENT_LIMIT == _validate.CURRENT_LIMIT
    assert reference.TIME_CONSTANT_RANGE == _validate.TIME_CONSTANT_RANGE
    assert reference.MAX_TOTAL_SPIKES == ss.lif.DEFAULT_MAX_TOTAL_SPIKES


def test_reference_refuses_a_recurrent_arrival_past_float64():
    """A spike at 1e308 plus a recurrent delay of 1e308 arrived at +inf and was dropped (the neuron reported
    silent); lif_forward refuses it naming recurrent_delays. The reference refuses it too: in float64 the spike,
    a few tau after t = 1e308, is below the resolution of t; at 400 digits it is placed, and its arrival refused."""
    kw = dict(tau_mem=10.0, tau_syn=5.0, max_spikes=2, recurrent_weights=np.array([[5.0]]),
              recurrent_delays=np.array([[1e308]]))
    t, w = np.array([[[1e308]]]), np.array([[5.0]])
    with pytest.raises(ValueError, match="recurrent_delays"):
        ss.lif_forward(t, w, **kw)
    with pytest.raises(FloatingPointError, match="below the resolution of t"):
        lif_forward_reference(t, w, **kw)
    with pytest.raises(ValueError, match="recurrent_delays: neuron 0 of sample 0 spikes at t=1e"):
        lif_forward_reference(t, w, dps=400, **kw)


def test_reference_refuses_what_its_arithmetic_cannot_carry():
    """No NaN or unresolvable time may silence a neuron: a gap of 1e300 tau_mem made V NaN (the neuron silent for
    good: 1 spike where lif_forward finds 2), and a spike a tiny offset after t = 1e300 was lost; such a gap now
    decays V to 0, and a crossing below the resolution of t is refused. A current of 1e299 with tau_syn = 1e150 made
    the peak time NaN (silent) or raised a bare math domain error; it is now computed."""
    kw = dict(tau_mem=1e-100, tau_syn=0.5e-100, max_spikes=3)
    t = np.array([[[0.0, 1e300]]])
    assert ss.lif_forward(t, np.array([[5.0]]), **kw).counts.tolist() == [[2]]
    with pytest.raises(FloatingPointError, match=r"neuron 0 of sample 0 .*below the resolution of t"):
        lif_forward_reference(t, np.array([[5.0]]), **kw)
    quiet = lif_forward_reference(t, np.array([[0.5]]), **kw)  # the long gap itself is no error
    assert quiet.counts.tolist() == [[0]]
    big = dict(tau_mem=1e150, tau_syn=1e-150, max_spikes=3, threshold=1e100)
    assert lif_forward_reference(np.array([[[0.0]]]), np.array([[1e299]]), **big).counts.tolist() == [[0]]
    fires = dict(tau_mem=1e-150, tau_syn=1e150, max_spikes=3, threshold=1e290)
    with pytest.raises(FloatingPointError, match="runaway firing"):  # lif_forward: "fires twice" (also an error)
        lif_forward_reference(np.array([[[0.0]]]), np.array([[1e299]]), **fires)

