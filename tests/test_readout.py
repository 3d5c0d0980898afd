"""Leaky-integrator readout: values against a brute-force ODE integration, gradients against finite differences."""

from __future__ import annotations

import mpmath
import numpy as np
import pytest

import spikescan
from spikescan.neurons import lif
from spikescan import _readout_numpy
from spikescan import li_backward, li_forward
from spikescan.cuda import _readout as _readout_cuda
from tolerances import TOL

# Every test once per CPU engine (tests/conftest.py): the "max" walk and its gradients are compiled on Numba's.
pytestmark = pytest.mark.usefixtures("cpu_engine")

READOUTS = ("final", "integral", "max")

# Tolerances, kept in one place. The brute force is RK4 with step ~2e-3 (error ~1e-12); its maximum is refined by a
# parabola through the best grid point (error ~1e-9).
TOL_BRUTE = dict(rtol=1e-9, atol=1e-11)
TOL_FD = dict(rtol=1e-6, atol=1e-8)
FD_EPS = 1e-6


# --------------------------------------------------------------------------------------------------------------------
# Independent reference: RK4 on (V, I, J) with J' = e^{-t/tau_readout} V, piecewise between input events.
# --------------------------------------------------------------------------------------------------------------------

def _brute_force(input_times, weights, tau_mem, tau_syn, t_max, tau_readout=None, step=2e-3):
    """``(final, integral, max)`` per ``[batch, n_out]`` by fixed-step RK4; kinks fall on grid points."""
    n_out = weights.shape[1]
    tm = np.broadcast_to(np.asarray(tau_mem, float), (n_out,))
    ts = np.broadcast_to(np.asarray(tau_syn, float), (n_out,))
    g = 0.0 if tau_readout is None else 1.0 / tau_readout

    def f(t, y):
        V, I, _ = y
        return np.stack([(I - V) / tm, -I / ts, np.exp(-g * t) * V])

    out = np.zeros((3,) + (input_times.shape[0], n_out))
    for b in range(input_times.shape[0]):
        j, m = np.nonzero(input_times[b] < t_max)
        order = np.argsort(input_times[b, j, m], kind="stable")
        ev_t, ev_j = input_times[b, j, m][order], j[order]
        y = np.zeros((3, n_out))
        t = 0.0
        best = np.zeros(n_out)
        bounds = list(ev_t) + [t_max]
        for k, t_next in enumerate(bounds):
            n_steps = int(np.ceil((t_next - t) / step))
            if n_steps > 0:
                h = (t_next - t) / n_steps
                vs = [y[0]]
                for s in range(n_steps):
                    ts_ = t + s * h
                    k1 = f(ts_, y)
                    k2 = f(ts_ + h / 2, y + h / 2 * k1)
                    k3 = f(ts_ + h / 2, y + h / 2 * k2)
                    k4 = f(ts_ + h, y + h * k3)
                    y = y + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
                    vs.append(y[0])
                vs = np.array(vs)
                i_best = np.argmax(vs, axis=0)
                for i in range(n_out):
                    p = i_best[i]
                    v = vs[p, i]
                    if 0 < p < n_steps:  # interior grid point: refine with the parabola through its neighbours
                        y0, y1, y2 = vs[p - 1, i], vs[p, i], vs[p + 1, i]
                        curv = y0 - 2 * y1 + y2
                        if curv < 0:
                            v = y1 - (y0 - y2) ** 2 / (8 * curv)
                    best[i] = max(best[i], v)
            t = t_next
            if k < len(ev_t):
                y[1] += weights[ev_j[k]]
        out[0, b], out[1, b], out[2, b] = y[0], y[2], best
    return dict(final=out[0], integral=out[1], max=out[2])


def _random_case(rng, batch=2, n_in=3, max_in=4, n_out=2, t_hi=5.0, pad=True):
    t = np.sort(rng.uniform(0.05, t_hi, (batch, n_in, max_in)), axis=-1)
    if pad:
        t[0, 1, max_in // 2:] = np.inf
        t[-1, 0, 1:] = np.inf
    W = rng.normal(size=(n_in, n_out))
    return t, W


# --------------------------------------------------------------------------------------------------------------------
# The divided-difference helper
# --------------------------------------------------------------------------------------------------------------------

def test_exp_divided_difference2_matches_mpmath():
    mpmath.mp.dps = 40

    def ref(w1, w2):
        w1, w2 = mpmath.mpf(w1), mpmath.mpf(w2)
        phi = lambda w: mpmath.expm1(w) / w if w != 0 else mpmath.mpf(1)  # noqa: E731
        if w1 == w2:
            return mpmath.mpf(1) / 2 if w1 == 0 else mpmath.diff(phi, w1)
        return (phi(w2) - phi(w1)) / (w2 - w1)

    nodes = [(0.0, 0.0), (-1e-12, 0.0), (-1.0, -1.0), (-1.0 - 1e-7, -1.0), (-0.999, -1.001), (-5.0, -5.0 + 1e-9),
             (-1e3, -1e3), (-1e3, 0.0), (-1e-300, -1e3), (-800.0, -801.0), (-2.0, -1e-8), (-0.3, -3e-6)]
    got = lif.exp_divided_difference2(np.array([a for a, _ in nodes]), np.array([b for _, b in nodes]))
    want = np.array([float(ref(a, b)) for a, b in nodes])
    np.testing.assert_allclose(got, want, rtol=2e-15, atol=0)


def test_exp_divided_difference3_matches_mpmath():
    mpmath.mp.dps = 130

    def ref(*ws):
        # Nodes moved 1e-25 apart: the confluent limit to far below float64 resolution; 130 digits absorb the
        # cancellation of the 1e-75 denominators.
        nodes = [mpmath.mpf(w) + k * mpmath.mpf("1e-25") for k, w in enumerate((0.0,) + ws)]
        return sum(mpmath.exp(x) / mpmath.fprod(x - y for y in nodes if y is not x) for x in nodes)

    nodes = [(0.0, 0.0, 0.0), (-1e-12, 0.0, -1e-12), (-1.0, -1.0, -1.0), (-1.0 - 1e-7, -1.0, -1.0),
             (-1.0 - 1e-7, 0.0, 0.0), (-0.999, -1.001, -1.0), (-5.0, -5.0, -5.0 + 1e-9), (-1e3, -1e3, 0.0),
             (-1e3, 0.0, 0.0), (-800.0, -801.0, -802.0), (-2.0, -1e-8, -1e-8), (-0.3, -3e-6, -0.9),
             (-1e-300, -1e3, -1e3), (-30.0, -30.0, -0.1), (-3.0, -0.5, -2.9), (-0.34, -1.22, -9e-4)]
    w = np.array(nodes).T
    want = np.array([float(ref(*n)) for n in nodes])
    for perm in ((0, 1, 2), (2, 0, 1), (1, 2, 0)):  # symmetric in its nodes
        np.testing.assert_allclose(lif.exp_divided_difference3(*w[list(perm)]), want, rtol=4e-15, atol=0)


# --------------------------------------------------------------------------------------------------------------------
# Values against the brute force
# --------------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("tau_mem,tau_syn,tau_readout", [
    (1.0, 0.5, None),     # tau_mem = 2 tau_syn
    (1.0, 1.0, None),     # equal time constants
    (0.7, 1.3, 2.0),      # tau_syn > tau_mem, weighted integral
    (1.0, 1.0, 1.0),      # everything equal
    (1.5, 0.6, 0.6),      # tau_readout == tau_syn
])
def test_values_match_brute_force(tau_mem, tau_syn, tau_readout):
    rng = np.random.default_rng(1)
    t, W = _random_case(rng)
    t_max = 4.0  # some inputs fall after t_max
    brute = _brute_force(t, W, tau_mem, tau_syn, t_max, tau_readout)
    for readout in READOUTS:
        got = li_forward(t, W, tau_mem=tau_mem, tau_syn=tau_syn, readout=readout, t_max=t_max,
                         tau_readout=tau_readout if readout == "integral" else None).values
        np.testing.assert_allclose(got, brute[readout], **TOL_BRUTE, err_msg=readout)


def test_per_neuron_time_constants_match_brute_force():
    rng = np.random.default_rng(2)
    t, W = _random_case(rng, n_out=3)
    tm, ts = np.array([1.0, 0.8, 2.0]), np.array([1.0, 0.4, 0.5])
    brute = _brute_force(t, W, tm, ts, 4.5, 3.0)
    for readout in READOUTS:
        got = li_forward(t, W, tau_mem=tm, tau_syn=ts, readout=readout, t_max=4.5,
                         tau_readout=3.0 if readout == "integral" else None).values
        np.testing.assert_allclose(got, brute[readout], **TOL_BRUTE, err_msg=readout)


def test_max_kink_and_negative_cases_match_brute_force():
    # sample 0: excitatory input cut off by an inhibitory one while V still rises -> maximum on the kink;
    # sample 1: only inhibition -> V <= 0, the maximum is V(0) = 0;
    # sample 2: a late input still rising at t_max -> maximum at t_max.
    inf = np.inf
    t = np.array([[[0.1, inf], [0.5, inf]],
                  [[0.2, 1.0], [inf, inf]],
                  [[2.7, inf], [inf, inf]]])
    W = np.array([[1.0, -0.5], [-3.0, 0.2]])
    W_neg = np.array([[-1.0, -0.5], [-3.0, -0.2]])
    brute = _brute_force(t, W, 1.0, 1.0, 3.0)
    r = li_forward(t, W, tau_mem=1.0, tau_syn=1.0, readout="max", t_max=3.0)
    np.testing.assert_allclose(r.values, brute["max"], **TOL_BRUTE)
    assert r.residuals.kink_index[0, 0] == 2  # input (j=1, m=0) with max_in = 2
    assert r.residuals.eval_time[2, 0] == 3.0
    r_neg = li_forward(t, W_neg, tau_mem=1.0, tau_syn=1.0, readout="max", t_max=3.0)
    np.testing.assert_array_equal(r_neg.values, 0.0)
    np.testing.assert_array_equal(r_neg.residuals.eval_time, 0.0)


def test_max_bounds_and_inputs_at_or_after_t_max_have_no_effect():
    rng = np.random.default_rng(3)
    t, W = _random_case(rng, batch=3, max_in=5, n_out=3, t_hi=6.0)
    t[1, 2, 0] = 4.0  # exactly at t_max
    t = np.sort(t, axis=-1)
    kw = dict(tau_mem=1.2, tau_syn=0.4, t_max=4.0)
    truncated = np.where(t >= 4.0, np.inf, t)
    for readout in READOUTS:
        a = li_forward(t, W, readout=readout, **kw).values
        b = li_forward(truncated, W, readout=readout, **kw).values
        np.testing.assert_array_equal(a, b)
    v_max = li_forward(t, W, readout="max", **kw).values
    v_final = li_forward(t, W, readout="final", **kw).values
    assert np.all(v_max >= 0) and np.all(v_max >= v_final - 1e-15)


def test_near_equal_time_constants_are_continuous():
    rng = np.random.default_rng(4)
    t, W = _random_case(rng)
    for readout in READOUTS:
        for dm, ds, dr in [(1e-9, 0, 0), (0, 1e-9, 0), (0, 0, 1e-9), (1e-6, -1e-6, 1e-6)]:
            tr = (1.0 + dr) if readout == "integral" else None
            a = li_forward(t, W, tau_mem=1.0, tau_syn=1.0, readout=readout, t_max=4.0,
                           tau_readout=1.0 if readout == "integral" else None).values
            b = li_forward(t, W, tau_mem=1.0 + dm, tau_syn=1.0 + ds, readout=readout, t_max=4.0,
                           tau_readout=tr).values
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-8)


def test_integral_kernel_for_spikes_just_before_t_max():
    # kappa(t_max - u) = u^2 / (2 tau_mem) + O(u^3) with no cancellation for tiny u, and the plain integral of
    # the whole PSP is tau_syn.
    u = np.array([1e-300, 1e-12, 1e-6])
    kappa, dkappa = _readout_numpy._integral_kernel(10.0 - u, u, 2.0, 0.5, None, 10.0)
    np.testing.assert_allclose(kappa, u * u / 4.0, rtol=1e-5)
    np.testing.assert_allclose(dkappa, -u / 2.0, rtol=1e-5)
    kappa_inf, _ = _readout_numpy._integral_kernel(0.0, 800.0, 2.0, 0.5, None, 800.0)
    np.testing.assert_allclose(kappa_inf, 0.5, rtol=1e-14)


def test_max_event_blocks_and_neuron_chunks(monkeypatch):
    # Many events: small blocks/chunks must give the same values, arg max and gradients as the defaults.
    rng = np.random.default_rng(5)
    t, W = _random_case(rng, batch=3, n_in=6, max_in=7, n_out=4, t_hi=8.0)
    kw = dict(tau_mem=1.0, tau_syn=0.3, readout="max", t_max=7.0)
    g = rng.normal(size=(3, 4))
    ref = li_forward(t, W, **kw)
    ref_g = li_backward(ref, g)
    monkeypatch.setattr(_readout_numpy, "_MAX_EVENT_BLOCK", 3)
    monkeypatch.setattr(_readout_numpy, "_POINTS_PER_STEP", 3 * 6 * 7)
    small = li_forward(t, W, **kw)
    small_g = li_backward(small, g)
    np.testing.assert_array_equal(small.values, ref.values)
    np.testing.assert_array_equal(small.residuals.eval_time, ref.residuals.eval_time)
    np.testing.assert_array_equal(small.residuals.kink_index, ref.residuals.kink_index)
    np.testing.assert_allclose(small_g.weights, ref_g.weights, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(small_g.input_times, ref_g.input_times, rtol=1e-13, atol=1e-15)


# --------------------------------------------------------------------------------------------------------------------
# Gradients against central finite differences (float64)
# --------------------------------------------------------------------------------------------------------------------

def _fd_check(t, W, g, kw):
    res = li_forward(t, W, **kw)
    grads = li_backward(res, g)

    def loss(t_, W_):
        return float(np.sum(g * li_forward(t_, W_, **kw).values))

    fd_W = np.zeros_like(W)
    for idx in np.ndindex(W.shape):
        Wp, Wm = W.copy(), W.copy()
        Wp[idx] += FD_EPS
        Wm[idx] -= FD_EPS
        fd_W[idx] = (loss(t, Wp) - loss(t, Wm)) / (2 * FD_EPS)
    fd_t = np.zeros_like(t)
    for idx in zip(*np.nonzero(np.isfinite(t) & (t < kw["t_max"]))):
        tp, tm_ = t.copy(), t.copy()
        tp[idx] += FD_EPS
        tm_[idx] -= FD_EPS
        fd_t[idx] = (loss(tp, W) - loss(tm_, W)) / (2 * FD_EPS)
    np.testing.assert_allclose(grads.weights, fd_W, **TOL_FD)
    np.testing.assert_allclose(grads.input_times, fd_t, **TOL_FD)
    return grads


@pytest.mark.parametrize("readout", ["final", "integral"])
@pytest.mark.parametrize("tau_mem,tau_syn,tau_readout", [(1.0, 0.5, None), (1.0, 1.0, 1.0), (0.8, 1.1, 2.5)])
def test_linear_readout_gradients(readout, tau_mem, tau_syn, tau_readout):
    rng = np.random.default_rng(6)
    t, W = _random_case(rng)
    g = rng.normal(size=(2, 2))
    kw = dict(tau_mem=tau_mem, tau_syn=tau_syn, readout=readout, t_max=4.0,
              tau_readout=tau_readout if readout == "integral" else None)
    grads = _fd_check(t, W, g, kw)
    dead = ~(t < 4.0)
    assert dead.any()
    np.testing.assert_array_equal(grads.input_times[dead], 0.0)


def _max_kink_case():
    """Neuron 0 (weights 1, -3): in every sample the inhibitory input (j=1, m=0) cuts a rise, so the maximum sits on
    its kink. Neuron 1 (weights 0.6, 0.4, excitatory only): interior peaks in samples 0 and 1, still rising at
    t_max = 3 in sample 2. Sample 1 also has an input after t_max."""
    inf = np.inf
    t = np.array([[[0.1, 0.4, inf], [0.3, inf, inf]],
                  [[0.1, inf, inf], [0.5, 3.5, inf]],
                  [[2.6, 2.8, inf], [2.7, inf, inf]]])
    W = np.array([[1.0, 0.6], [-3.0, 0.4]])
    g = np.array([[0.7, -1.2], [1.1, 0.4], [-0.5, 0.9]])
    return t, W, g


def _check_max_kink_case(res):
    np.testing.assert_array_equal(res.residuals.kink_index[:, 0], 1 * 3 + 0)
    np.testing.assert_array_equal(res.residuals.eval_time[:, 0], [0.3, 0.5, 2.7])
    np.testing.assert_array_equal(res.residuals.kink_index[:, 1], -1)
    assert np.all(res.residuals.eval_time[:2, 1] < 3.0) and res.residuals.eval_time[2, 1] == 3.0


@pytest.mark.parametrize("tau_mem,tau_syn", [(1.0, 1.0), (1.0, 0.4), (0.6, 1.2)])
def test_max_gradients_at_interior_peak_kink_and_t_max(tau_mem, tau_syn):
    t, W, g = _max_kink_case()
    kw = dict(tau_mem=tau_mem, tau_syn=tau_syn, readout="max", t_max=3.0)
    res = li_forward(t, W, **kw)
    _check_max_kink_case(res)
    grads = _fd_check(t, W, g, kw)
    assert np.all(grads.input_times[:, 1, 0] * g[:, 0] > 0)  # delaying the inhibition raises the maximum
    np.testing.assert_array_equal(grads.input_times[1, 1, 1], 0.0)  # after t_max
    np.testing.assert_array_equal(grads.input_times[~np.isfinite(t)], 0.0)


def test_max_all_negative_has_zero_gradient():
    rng = np.random.default_rng(7)
    t, _ = _random_case(rng)
    W = -np.abs(rng.normal(size=(3, 2)))
    res = li_forward(t, W, tau_mem=1.0, tau_syn=0.5, readout="max", t_max=4.0)
    grads = li_backward(res, np.ones((2, 2)))
    np.testing.assert_array_equal(res.values, 0.0)
    np.testing.assert_array_equal(grads.weights, 0.0)
    np.testing.assert_array_equal(grads.input_times, 0.0)


# --------------------------------------------------------------------------------------------------------------------
# Time-constant gradients (li_backward(..., time_constant_grads=True))
# --------------------------------------------------------------------------------------------------------------------

READOUT_CASES = [("final", None), ("integral", None), ("integral", 2.5), ("max", None)]
# Per neuron: unequal, exactly equal, tau_mem < tau_syn, equal up to 1e-9 and 1e-6 (the near-equal branches).
TAU_MEM_PER_NEURON = np.array([1.0, 1.0, 0.6, 2.0, 0.7])
TAU_SYN_PER_NEURON = np.array([0.5, 1.0, 1.2, 2.0 * (1 + 1e-9), 0.7 * (1 - 1e-6)])


def _fd_time_constants(t, W, g, kw, tau_mem, tau_syn):
    """Central differences (step ``FD_EPS``) of ``sum g * values`` in each neuron's ``tau_mem`` and ``tau_syn``."""
    n_out = W.shape[1]
    tau_mem, tau_syn = (np.broadcast_to(np.asarray(x, float), (n_out,)).copy() for x in (tau_mem, tau_syn))

    def loss(tm, ts):
        return float(np.sum(g * li_forward(t, W, tau_mem=tm, tau_syn=ts, **kw).values))

    step = FD_EPS * np.eye(n_out)
    fd_tm = np.array([(loss(tau_mem + e, tau_syn) - loss(tau_mem - e, tau_syn)) / (2 * FD_EPS) for e in step])
    fd_ts = np.array([(loss(tau_mem, tau_syn + e) - loss(tau_mem, tau_syn - e)) / (2 * FD_EPS) for e in step])
    return fd_tm, fd_ts


def _check_time_constant_grads(t, W, g, kw, tau_mem, tau_syn):
    res = li_forward(t, W, tau_mem=tau_mem, tau_syn=tau_syn, **kw)
    grads = li_backward(res, g, time_constant_grads=True)
    fd_tm, fd_ts = _fd_time_constants(t, W, g, kw, tau_mem, tau_syn)
    for name, got, want in (("tau_mem", grads.tau_mem, fd_tm), ("tau_syn", grads.tau_syn, fd_ts)):
        assert got.dtype == np.float64 and got.shape == (W.shape[1],), name
        assert np.abs(want).max() > 1e-2, name  # the case exercises the gradient
        np.testing.assert_allclose(got, want, err_msg=f"grad_{name}", **TOL["fd"])
    return res, grads


@pytest.mark.parametrize("readout,tau_readout", READOUT_CASES)
@pytest.mark.parametrize("taus", ["per_neuron", "equal", "unequal"])
def test_time_constant_gradients_match_finite_differences(readout, tau_readout, taus):
    rng = np.random.default_rng(11)
    n_out = 5 if taus == "per_neuron" else 3
    t, W = _random_case(rng, batch=3, n_in=4, max_in=4, n_out=n_out)
    W[0] = np.abs(W[0]) + 0.5  # an excitatory input for every neuron, so that most maxima lie above V(0) = 0
    g = rng.normal(size=(3, n_out))
    tau_mem, tau_syn = dict(per_neuron=(TAU_MEM_PER_NEURON, TAU_SYN_PER_NEURON), equal=(1.3, 1.3),
                            unequal=(0.9, 0.35))[taus]
    kw = dict(readout=readout, t_max=4.0, tau_readout=tau_readout)
    res, grads = _check_time_constant_grads(t, W, g, kw, tau_mem, tau_syn)
    if taus != "per_neuron":  # one scalar for all neurons: its gradient is the sum of theirs
        loss = lambda tm, ts: float(np.sum(g * li_forward(t, W, tau_mem=tm, tau_syn=ts, **kw).values))  # noqa: E731
        fd = (loss(tau_mem + FD_EPS, tau_syn) - loss(tau_mem - FD_EPS, tau_syn)) / (2 * FD_EPS)
        np.testing.assert_allclose(grads.tau_mem.sum(), fd, **TOL["fd"])
    if readout == "max":
        assert (res.residuals.eval_time > 0).sum() >= 6, "most maxima should lie above V(0) = 0"


@pytest.mark.parametrize("tau_mem,tau_syn", [(1.0, 1.0), (1.0, 0.4), (0.6, 1.2), (1.0, 1.0 + 1e-9)])
def test_max_time_constant_gradients_at_kink_interior_peak_and_t_max(tau_mem, tau_syn):
    """The maximum on a kink (neuron 0), at an interior peak and at t_max (neuron 1): only the explicit derivative
    at fixed ``t*`` counts in every case."""
    t, W, g = _max_kink_case()
    kw = dict(readout="max", t_max=3.0)
    res, _ = _check_time_constant_grads(t, W, g, kw, np.full(2, tau_mem), np.full(2, tau_syn))
    _check_max_kink_case(res)


@pytest.mark.parametrize("readout,tau_readout", READOUT_CASES)
def test_time_constant_grads_leave_the_other_gradients_unchanged(readout, tau_readout):
    rng = np.random.default_rng(12)
    t, W = _random_case(rng, n_out=5)
    g = rng.normal(size=(2, 5))
    res = li_forward(t, W, tau_mem=TAU_MEM_PER_NEURON, tau_syn=TAU_SYN_PER_NEURON, readout=readout, t_max=4.0,
                     tau_readout=tau_readout)
    off = li_backward(res, g)
    on = li_backward(res, g, time_constant_grads=True)
    assert off.tau_mem is None and off.tau_syn is None
    np.testing.assert_array_equal(on.weights, off.weights)
    np.testing.assert_array_equal(on.input_times, off.input_times)
    # Inputs at or after t_max, +inf padding and an all-inhibitory "max" neuron contribute nothing.
    res0 = li_forward(np.full((1, 2, 2), np.inf), np.ones((2, 3)), tau_mem=1.0, tau_syn=0.5, readout=readout,
                      t_max=4.0, tau_readout=tau_readout)
    zero = li_backward(res0, np.ones((1, 3)), time_constant_grads=True)
    np.testing.assert_array_equal(zero.tau_mem, 0.0)
    np.testing.assert_array_equal(zero.tau_syn, 0.0)


@pytest.mark.parametrize("readout,tau_readout", [("final", None), ("integral", None), ("integral", 1.5)])
def test_backward_reuses_the_forward_kernels_bit_for_bit(readout, tau_readout):
    # One pair of time constants: the forward keeps its kernel terms and the backward reuses them. Evaluating them
    # again (residuals without them, or the time-constant path, which always does) gives the same bits.
    rng = np.random.default_rng(13)
    t, W = _random_case(rng, n_out=4)
    g = rng.normal(size=(2, 4))
    res = li_forward(t, W, tau_mem=np.full(4, 1.0), tau_syn=0.6, readout=readout, t_max=4.0,
                     tau_readout=tau_readout)
    assert res.residuals.kernels is not None
    reused = li_backward(res, g)
    fresh = li_backward(res._replace(residuals=res.residuals._replace(kernels=None)), g)
    with_taus = li_backward(res, g, time_constant_grads=True)
    for other in (fresh, with_taus):
        np.testing.assert_array_equal(reused.weights, other.weights)
        np.testing.assert_array_equal(reused.input_times, other.input_times)
    per_neuron = li_forward(t, W, tau_mem=TAU_MEM_PER_NEURON[:4], tau_syn=0.6, readout=readout, t_max=4.0,
                            tau_readout=tau_readout)
    assert per_neuron.residuals.kernels is None  # one kernel array per group would be kept: evaluated again instead

@pytest.mark.parametrize("readout,tau_readout", READOUT_CASES)
def test_time_constant_grads_of_the_cuda_kernels_in_host_emulation(host_kernels, readout, tau_readout):
    """The CUDA launchers (``spikescan.cuda._readout``, the path of CuPy inputs) through the host emulation of the
    kernels, against the NumPy gradients."""
    rng = np.random.default_rng(13)
    t, W = _random_case(rng, batch=3, n_in=4, max_in=5, n_out=5)
    g = rng.normal(size=(3, 5))
    kw = dict(readout=readout, t_max=4.0, tau_readout=tau_readout)
    ref = li_forward(t, W, tau_mem=TAU_MEM_PER_NEURON, tau_syn=TAU_SYN_PER_NEURON, **kw)
    want = li_backward(ref, g, time_constant_grads=True)
    out = _readout_cuda.forward(np, host_kernels.launch, t, W, TAU_MEM_PER_NEURON, TAU_SYN_PER_NEURON, readout, 4.0,
                                tau_readout)
    got = _readout_cuda.backward(np, host_kernels.launch, out, g, time_constant_grads=True)
    for name in ("weights", "input_times", "tau_mem", "tau_syn"):
        np.testing.assert_allclose(getattr(got, name), getattr(want, name), err_msg=f"grad_{name}",
                                   **TOL["float64"]["grads"])
    off = _readout_cuda.backward(np, host_kernels.launch, out, g)
    assert off.tau_mem is None and off.tau_syn is None
    np.testing.assert_array_equal(off.weights, got.weights)


# --------------------------------------------------------------------------------------------------------------------
# Dtypes, shapes, export
# --------------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("readout", READOUTS)
def test_float32_in_float32_out(readout):
    rng = np.random.default_rng(8)
    t, W = _random_case(rng)
    r64 = li_forward(t, W, tau_mem=1.0, tau_syn=0.5, readout=readout, t_max=4.0)
    r32 = li_forward(t.astype(np.float32), W.astype(np.float32), tau_mem=1.0, tau_syn=0.5, readout=readout,
                     t_max=4.0)
    assert r32.values.dtype == np.float32
    np.testing.assert_allclose(r32.values, r64.values, rtol=1e-5, atol=1e-6)
    g = li_backward(r32, np.ones((2, 2), np.float32))
    assert g.weights.dtype == np.float32 and g.input_times.dtype == np.float32
    assert g.weights.shape == W.shape and g.input_times.shape == t.shape
    g_mixed = li_backward(li_forward(t.astype(np.float32), W, tau_mem=1.0, tau_syn=0.5, readout=readout,
                                     t_max=4.0), np.ones((2, 2)))
    assert g_mixed.weights.dtype == np.float64 and g_mixed.input_times.dtype == np.float32


@pytest.mark.parametrize("readout", READOUTS)
def test_empty_inputs(readout):
    t = np.full((2, 3, 0), np.inf)
    W = np.ones((3, 2))
    res = li_forward(t, W, tau_mem=1.0, tau_syn=0.5, readout=readout, t_max=1.0)
    np.testing.assert_array_equal(res.values, 0.0)
    g = li_backward(res, np.ones((2, 2)))
    assert g.input_times.shape == (2, 3, 0)
    np.testing.assert_array_equal(g.weights, 0.0)


def test_exported():
    assert spikescan.li_forward is li_forward and spikescan.li_backward is li_backward
    assert "li_forward" in spikescan.__all__ and "li_backward" in spikescan.__all__


# --------------------------------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------------------------------

def _ok():
    t = np.array([[[0.5, 1.0, np.inf]]])
    return t, np.ones((1, 2))


@pytest.mark.parametrize("change,exc,name", [
    (dict(readout="mean"), ValueError, "readout"),
    (dict(t_max=0.0), ValueError, "t_max"),
    (dict(t_max=np.nan), ValueError, "t_max"),
    (dict(t_max="1"), ValueError, "t_max"),
    (dict(tau_readout=-1.0), ValueError, "tau_readout"),
    (dict(tau_readout=np.inf), ValueError, "tau_readout"),
    (dict(tau_readout=2.0, readout="max"), ValueError, "tau_readout"),
    (dict(tau_mem=-1.0), ValueError, "tau_mem"),
    (dict(tau_syn=np.ones(3)), ValueError, "tau_syn"),
    (dict(input_times=np.array([[[1.0, 0.5]]])), ValueError, "input_times"),
    (dict(input_times=np.array([[[np.nan, 0.5]]])), ValueError, "input_times"),
    (dict(input_times=np.array([[[-1.0, 0.5]]])), ValueError, "input_times"),
    (dict(input_times=np.array([[[1, 2]]])), TypeError, "input_times"),
    (dict(input_times=np.ones((1, 2))), ValueError, "input_times"),
    (dict(weights=np.ones((2, 2))), ValueError, "weights"),
    (dict(weights=np.array([[np.nan, 1.0]])), ValueError, "weights"),
    (dict(weights=[[1.0, 1.0]]), TypeError, "weights"),
])
def test_bad_forward_arguments(change, exc, name):
    t, W = _ok()
    kw = dict(input_times=t, weights=W, tau_mem=1.0, tau_syn=0.5, readout="integral", t_max=2.0)
    kw.update(change)
    with pytest.raises(exc, match=name):
        li_forward(kw.pop("input_times"), kw.pop("weights"), **kw)


def test_bad_backward_arguments():
    t, W = _ok()
    res = li_forward(t, W, tau_mem=1.0, tau_syn=0.5, t_max=2.0)
    with pytest.raises(TypeError, match="result"):
        li_backward(res.values, np.ones((1, 2)))
    with pytest.raises(ValueError, match="grad_values"):
        li_backward(res, np.ones((2, 2)))
    with pytest.raises(ValueError, match="grad_values"):
        li_backward(res, np.array([[np.nan, 1.0]]))
    with pytest.raises(TypeError, match="grad_values"):
        li_backward(res, np.ones((1, 2), np.int64))
    with pytest.raises(TypeError, match="time_constant_grads"):
        li_backward(res, np.ones((1, 2)), time_constant_grads="yes")


# --------------------------------------------------------------------------------------------------------------------
# CuPy (skipped without a device or before the CUDA readout exists)
# --------------------------------------------------------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("readout", READOUTS)
def test_cupy_matches_numpy(readout):
    cp = pytest.importorskip("cupy")
    pytest.importorskip("spikescan.cuda._readout")
    from spikescan.cuda import is_available

    if not is_available():
        pytest.skip("no CUDA device")
    rng = np.random.default_rng(9)
    t, W = _random_case(rng, batch=3, n_in=5, max_in=6, n_out=3)
    g = rng.normal(size=(3, 3))
    kw = dict(tau_mem=1.0, tau_syn=0.5, readout=readout, t_max=4.0)
    ref = li_forward(t, W, **kw)
    ref_g = li_backward(ref, g, time_constant_grads=True)
    got = li_forward(cp.asarray(t), cp.asarray(W), **kw)
    got_g = li_backward(got, cp.asarray(g), time_constant_grads=True)
    np.testing.assert_allclose(cp.asnumpy(got.values), ref.values, rtol=1e-10, atol=1e-12)
    for name in ("weights", "input_times", "tau_mem", "tau_syn"):
        np.testing.assert_allclose(cp.asnumpy(getattr(got_g, name)), getattr(ref_g, name), rtol=1e-9, atol=1e-12,
                                   err_msg=f"grad_{name}")



def test_integral_window_beyond_float64_is_refused():
    """The integral readout's closed forms multiply up to three factors (t_max - t) / tau: beyond 1e100 time
    constants they left float64's range (the tau_syn gradient came back NaN from 3.6e103, the value inf, then NaN),
    in any time unit. Such windows are refused naming t_max; up to the bound values and gradients are finite."""
    x = np.array([[[1.0, 2.0]]])
    W = np.array([[1.0]])
    for tau_readout in (None, 7.0):
        r = li_forward(x, W, tau_mem=10.0, tau_syn=5.0, readout="integral", t_max=5e100, tau_readout=tau_readout)
        g = li_backward(r, np.ones_like(r.values), time_constant_grads=True)
        for part in (r.values, g.weights, g.input_times, g.tau_mem, g.tau_syn):
            assert np.isfinite(part).all()
        if tau_readout is None:  # each input's whole PSP integrates to tau_syn
            np.testing.assert_allclose(r.values, 2 * 5.0, rtol=1e-12)
    with pytest.raises(ValueError, match=r"t_max must be at most 1e\+100 times the shortest time constant .*"
                                         r"t_max=1e\+170 with a time constant of 5.0"):
        li_forward(x, W, tau_mem=10.0, tau_syn=5.0, readout="integral", t_max=1e170)
    with pytest.raises(ValueError, match="time constant of 1e-90"):
        li_forward(x, W, tau_mem=10.0, tau_syn=5.0, readout="integral", t_max=1e20, tau_readout=1e-90)
    # The other readouts have no such products: their values stay right for any window.
    assert li_forward(x, W, tau_mem=10.0, tau_syn=5.0, readout="final", t_max=1e170).values[0, 0] == 0.0
