"""Recurrent lif_forward (DESIGN.md section 9) against spikescan.reference.lif_forward_reference, on both CPU
engines and both methods: identical counts, times within TOL["float64"]."""

from __future__ import annotations

import numpy as np
import pytest

import spikescan as ss
from spikescan.reference import lif_forward_reference

from _cases import random_spikes, weights
from tolerances import TOL

pytestmark = pytest.mark.usefixtures("cpu_engine")

METHODS = ("sequential", "scan")
N_IN, N_OUT = 6, 5


def assert_same_spikes(ref, out):
    ref_times, ref_counts = ref
    np.testing.assert_array_equal(out.counts, ref_counts)
    np.testing.assert_array_equal(np.isfinite(out.times), np.isfinite(ref_times))
    fin = np.isfinite(ref_times)
    np.testing.assert_allclose(out.times[fin], ref_times[fin], **TOL["float64"]["times"])


def recurrent_weights(rng, kind):
    """``[sender, receiver]``; every kind has a nonzero diagonal (self-connections)."""
    if kind == "excitatory":
        return rng.uniform(0.02, 0.12, (N_OUT, N_OUT))
    if kind == "inhibitory":
        return rng.uniform(-0.6, -0.05, (N_OUT, N_OUT))
    R = rng.normal(0.0, 0.3, (N_OUT, N_OUT))  # mixed: excitatory and inhibitory loops
    R[np.diag_indices(N_OUT)] = [0.15, -0.5, 0.2, -0.2, 0.1]
    return R


def recurrent_delays(rng, kind):
    if kind == "none":
        return None
    if kind == "zero":
        return np.zeros((N_OUT, N_OUT))
    if kind == "positive":
        return rng.uniform(0.2, 3.0, (N_OUT, N_OUT))
    D = rng.uniform(0.2, 3.0, (N_OUT, N_OUT))  # "some zero": zero and positive delays in one layer
    D[rng.random((N_OUT, N_OUT)) < 0.4] = 0.0
    return D


TIME_CONSTANTS = {"tm>ts": (8.0, 3.0), "tm<ts": (3.0, 5.0), "tm==ts": (5.0, 5.0),
                  "per-neuron": (np.array([8.0, 5.0, 3.0, 6.0, 4.0]), np.array([3.0, 5.0, 6.0, 6.0, 2.0]))}


def case(seed, r_kind, d_kind, taus, input_delays, max_spikes=50):
    rng = np.random.default_rng(seed)
    t = random_spikes(rng, 2, N_IN, 3, t_max=15.0)
    W = weights(rng, N_IN, N_OUT, mean=1.1, std=0.7)
    tau_mem, tau_syn = TIME_CONSTANTS[taus]
    kw = dict(tau_mem=tau_mem, tau_syn=tau_syn, threshold=np.array([1.0, 0.8, 1.2, 1.0, 0.9]),
              max_spikes=max_spikes, delays=rng.uniform(0.0, 4.0, (N_IN, N_OUT)) if input_delays else None,
              recurrent_weights=recurrent_weights(rng, r_kind), recurrent_delays=recurrent_delays(rng, d_kind))
    return t, W, kw


CASES = [
    # (recurrent weights, recurrent delays, time constants, input delays)
    ("excitatory", "zero", "tm>ts", False),
    ("excitatory", "positive", "tm>ts", True),
    ("excitatory", "none", "tm==ts", False),
    ("excitatory", "some zero", "per-neuron", True),
    ("inhibitory", "zero", "tm>ts", True),
    ("inhibitory", "positive", "tm<ts", False),
    ("inhibitory", "some zero", "tm==ts", True),
    ("mixed", "zero", "tm==ts", True),
    ("mixed", "positive", "per-neuron", False),
    ("mixed", "some zero", "per-neuron", True),
    ("mixed", "none", "tm<ts", False),
]


@pytest.mark.parametrize("r_kind,d_kind,taus,input_delays", CASES, ids=["-".join(map(str, c)) for c in CASES])
def test_recurrent_lif_forward_matches_reference(r_kind, d_kind, taus, input_delays):
    t, W, kw = case(7, r_kind, d_kind, taus, input_delays)
    ref = lif_forward_reference(t, W, **kw)
    assert ref[1].sum() > 20
    # The loops matter: the same layer without them fires differently.
    ff = lif_forward_reference(t, W, **{k: v for k, v in kw.items() if not k.startswith("recurrent_")})
    assert not np.array_equal(ff[1], ref[1])
    for method in METHODS:
        assert_same_spikes(ref, ss.lif_forward(t, W, method=method, **kw))
    assert_same_spikes(ref, ss.lif_forward(t, W, method="scan", chunk_size=2, **kw))


@pytest.mark.parametrize("d_kind", ["zero", "positive"])
def test_unrecorded_spikes_still_propagate(d_kind):
    # max_spikes below the counts: the spikes past the recording still reach their targets.
    t, W, kw = case(8, "mixed", d_kind, "tm>ts", True, max_spikes=2)
    ref = lif_forward_reference(t, W, **kw)
    assert ref[1].max() > 2 * kw["max_spikes"]
    for method in METHODS:
        out = ss.lif_forward(t, W, method=method, **kw)
        assert_same_spikes(ref, out)
        full = ss.lif_forward(t, W, method=method, **dict(kw, max_spikes=60))
        np.testing.assert_array_equal(out.counts, full.counts)
        np.testing.assert_array_equal(out.times, full.times[..., :2])


@pytest.mark.parametrize("input_delays", [False, True])
def test_zero_recurrent_weights_give_the_feed_forward_result(input_delays):
    t, W, kw = case(9, "mixed", "positive", "tm>ts", input_delays)
    kw["recurrent_weights"] = np.zeros((N_OUT, N_OUT))
    ff_kw = {k: v for k, v in kw.items() if not k.startswith("recurrent_")}
    ref = lif_forward_reference(t, W, **ff_kw)
    assert ref[1].sum() > 20
    for method in METHODS:
        ff = ss.lif_forward(t, W, method=method, **ff_kw)
        assert_same_spikes(ref, ff)
        for delays in (kw["recurrent_delays"], None):
            rec = ss.lif_forward(t, W, method=method, **dict(kw, recurrent_delays=delays))
            assert_same_spikes(ref, rec)


def test_simultaneous_spikes_come_before_their_zero_delay_arrivals():
    # Identical neurons (same weights, parameters and queue) cross at the same float64 time; each silences the
    # other with no delay. Both spikes happen: arrivals at t are applied after every spike at t.
    t = np.array([[[1.0, 2.0, np.inf]]])
    W = np.array([[3.0, 3.0]])
    R = np.array([[0.0, -30.0], [-30.0, 0.0]])
    kw = dict(tau_mem=6.0, tau_syn=4.0, max_spikes=5, recurrent_weights=R)
    ref = lif_forward_reference(t, W, **kw)
    assert ref[1].tolist() == [[1, 1]]
    for method in METHODS:
        assert_same_spikes(ref, ss.lif_forward(t, W, method=method, **kw))


def test_self_connection_lands_after_the_reset():
    # A zero-delay self-excitation is applied after the neuron's own reset (it fires again sooner, not at once).
    t = np.array([[[1.0, 2.0, np.inf]]])
    W = np.array([[3.0]])
    for r in (0.5, -0.5):
        kw = dict(tau_mem=6.0, tau_syn=4.0, max_spikes=5, recurrent_weights=np.array([[r]]))
        ref = lif_forward_reference(t, W, **kw)
        assert ref[1][0, 0] >= 1
        for method in METHODS:
            assert_same_spikes(ref, ss.lif_forward(t, W, method=method, **kw))
