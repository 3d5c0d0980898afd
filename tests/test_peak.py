"""peak_voltage: values against a dense-grid brute force with golden-section refinement, gradients against central
finite differences, the neuron mask, validation and dtypes."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import spikescan
from spikescan.neurons import lif
from spikescan import _readout_numpy
from spikescan import li_backward, li_forward, peak_voltage, peak_voltage_backward
from tolerances import TOL

# Every test once per CPU engine (tests/conftest.py): the "max" walk and its gradients are compiled on Numba's.
pytestmark = pytest.mark.usefixtures("cpu_engine")

inf = np.inf
nan = np.nan
# The brute force evaluates the closed-form voltage (a sum of PSP kernels) on a dense grid that contains every
# arrival (the kinks), then refines every local maximum of the grid by golden-section search: exact up to rounding.
TOL_BRUTE = dict(rtol=1e-9, atol=1e-12)
FD_EPS = 1e-6


# --------------------------------------------------------------------------------------------------------------------
# Independent reference
# --------------------------------------------------------------------------------------------------------------------

def _brute_peak(t, W, tau_mem, tau_syn, D=None, n_grid=4000, golden_iters=90):
    """``sup_{t >= 0} V_bi(t)`` per ``[batch, n_out]`` from ``V(x) = sum_a w_a c(x - a)`` over the arrivals ``a``."""
    batch, n_in, _ = t.shape
    n_out = W.shape[1]
    tm = np.broadcast_to(np.asarray(tau_mem, float), (n_out,))
    ts = np.broadcast_to(np.asarray(tau_syn, float), (n_out,))
    out = np.zeros((batch, n_out))
    golden = (np.sqrt(5.0) - 1.0) / 2.0
    for b in range(batch):
        j, m = np.nonzero(np.isfinite(t[b]))
        for i in range(n_out):
            arr = t[b, j, m] + (0.0 if D is None else D[j, i])
            w = W[j, i]
            if arr.size == 0:
                continue

            def V(x):
                s = x[..., None] - arr
                _, _, c = lif.decay(np.maximum(s, 0.0), tm[i], ts[i])
                return np.sum(np.where(s > 0, c, 0.0) * w, axis=-1)

            end = arr.max() + 40.0 * max(tm[i], ts[i])  # the PSPs have decayed by e^-40 after this
            grid = np.unique(np.concatenate([np.linspace(0.0, end, n_grid), arr]))
            vg = V(grid)
            left = np.concatenate([[-inf], vg[:-1]])
            right = np.concatenate([vg[1:], [-inf]])
            p = np.flatnonzero((vg >= left) & (vg >= right))
            lo = grid[np.maximum(p - 1, 0)]
            hi = grid[np.minimum(p + 1, grid.size - 1)]
            for _ in range(golden_iters):  # vectorised over all local maxima
                x1 = hi - golden * (hi - lo)
                x2 = lo + golden * (hi - lo)
                keep_left = V(x1) >= V(x2)
                hi = np.where(keep_left, x2, hi)
                lo = np.where(keep_left, lo, x1)
            out[b, i] = max(0.0, vg.max(), V(0.5 * (lo + hi)).max())
    return out


def _case(rng, batch=4, n_in=4, max_in=4, n_out=4, t_hi=5.0, w_mean=0.3):
    """Random layer with padding, an all-padding sample, a spike at t = 0 and simultaneous spikes."""
    t = np.sort(rng.uniform(0.05, t_hi, (batch, n_in, max_in)), axis=-1)
    t[0, 1, max_in // 2:] = inf
    t[1] = inf  # an all-padding sample
    t[2, 0, 0] = 0.0  # a spike at t = 0
    t[-1, 2, 0] = t[-1, 1, 0] = 0.5 * (t[-1, 1, 0] + t[-1, 2, 0])  # simultaneous spikes
    t[-1] = np.sort(t[-1], axis=-1)
    W = rng.normal(w_mean, 1.0, (n_in, n_out))  # mixed signs: inhibition included
    return t, W


def _delays(rng, n_in, n_out, grid=None):
    D = rng.uniform(0.0, 2.0, (n_in, n_out))
    D[0, 0] = 0.0
    if grid is not None:
        D = np.round(D / grid) * grid
    return D


def _nan_free(fn, *args, **kw):
    """Call ``fn`` with every invalid operation (``inf - inf``, ``0/0``, ...) and division by zero an error."""
    with np.errstate(invalid="raise", divide="raise"):
        return fn(*args, **kw)


TAUS = [
    (1.0, 0.5),  # tau_mem = 2 tau_syn
    (1.0, 1.0),  # equal time constants
    (0.7, 1.3),  # tau_syn > tau_mem
    (np.array([1.0, 0.8, 2.0, 0.5]), np.array([1.0, 0.4, 0.5, 0.5])),  # per neuron, equal ones included
]


# --------------------------------------------------------------------------------------------------------------------
# Values
# --------------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("with_delays", [False, True])
@pytest.mark.parametrize("tau_mem,tau_syn", TAUS)
def test_values_match_brute_force(tau_mem, tau_syn, with_delays):
    rng = np.random.default_rng(10)
    for _ in range(2):
        t, W = _case(rng)
        D = _delays(rng, *W.shape) if with_delays else None
        res = _nan_free(peak_voltage, t, W, tau_mem=tau_mem, tau_syn=tau_syn, delays=D)
        np.testing.assert_allclose(res.values, _brute_peak(t, W, tau_mem, tau_syn, D), **TOL_BRUTE)
        np.testing.assert_array_equal(res.values[1], 0.0)  # the all-padding sample
        assert np.all(np.isfinite(res.residuals.eval_time)) and np.all(res.residuals.eval_time >= 0)


@pytest.mark.parametrize("tau_mem,tau_syn", TAUS[:2])
def test_simultaneous_arrivals_through_delays_match_brute_force(tau_mem, tau_syn):
    # Times and delays on a grid of 0.25: many arrivals coincide, and some coincide with a peak's kink.
    rng = np.random.default_rng(11)
    t, W = _case(rng, batch=3, n_in=5, max_in=3, n_out=4)
    t = np.round(t * 4.0) / 4.0
    D = _delays(rng, 5, 4, grid=0.25)
    res = _nan_free(peak_voltage, t, W, tau_mem=tau_mem, tau_syn=tau_syn, delays=D)
    np.testing.assert_allclose(res.values, _brute_peak(t, W, tau_mem, tau_syn, D), **TOL_BRUTE)
    g = _nan_free(peak_voltage_backward, res, np.ones(res.values.shape))
    assert all(np.all(np.isfinite(x)) for x in g)


def test_single_psp_peak_in_the_open_gap():
    # One input at t = 1 (tau_mem = 1, tau_syn = 0.5): c(s) = e^{-s} - e^{-2s} peaks at s = ln 2 with c = 1/4, in the
    # open gap after the last arrival. An inhibitory-only neuron stays at V(0) = 0.
    t = np.array([[[1.0, inf]], [[inf, inf]]])
    W = np.array([[2.0, -1.0]])
    res = peak_voltage(t, W, tau_mem=1.0, tau_syn=0.5)
    np.testing.assert_allclose(res.values, [[0.5, 0.0], [0.0, 0.0]], rtol=1e-15, atol=0)
    np.testing.assert_allclose(res.residuals.eval_time[0, 0], 1.0 + np.log(2.0), rtol=1e-15)
    np.testing.assert_array_equal(res.residuals.kink_index, -1)
    g = peak_voltage_backward(res, np.ones((2, 2)))
    np.testing.assert_allclose(g.weights, [[0.25, 0.0]], rtol=1e-15, atol=1e-17)
    np.testing.assert_allclose(g.input_times, 0.0, atol=1e-15)  # the peak only shifts with the input


@pytest.mark.parametrize("tau_mem,tau_syn", TAUS)
def test_equals_li_max_with_a_late_t_max(tau_mem, tau_syn):
    rng = np.random.default_rng(12)
    t, W = _case(rng)
    g = rng.normal(size=(4, 4))
    peak = peak_voltage(t, W, tau_mem=tau_mem, tau_syn=tau_syn)
    li = li_forward(t, W, tau_mem=tau_mem, tau_syn=tau_syn, readout="max", t_max=1e3)
    np.testing.assert_allclose(peak.values, li.values, **TOL["float64"]["times"])
    np.testing.assert_array_equal(peak.residuals.kink_index, li.residuals.kink_index)
    np.testing.assert_allclose(peak.residuals.eval_time, li.residuals.eval_time, **TOL["float64"]["times"])
    gp, gl = peak_voltage_backward(peak, g), li_backward(li, g)
    np.testing.assert_allclose(gp.weights, gl.weights, **TOL["float64"]["grads"])
    np.testing.assert_allclose(gp.input_times, gl.input_times, **TOL["float64"]["grads"])
    assert gp.delays is None


def test_zero_delays_equal_no_delays():
    rng = np.random.default_rng(13)
    t, W = _case(rng)
    g = rng.normal(size=(4, 4))
    a = peak_voltage(t, W, tau_mem=1.0, tau_syn=0.3)
    b = peak_voltage(t, W, tau_mem=1.0, tau_syn=0.3, delays=np.zeros_like(W))
    np.testing.assert_array_equal(a.values, b.values)
    ga, gb = peak_voltage_backward(a, g), peak_voltage_backward(b, g)
    np.testing.assert_allclose(gb.weights, ga.weights, **TOL["float64"]["grads"])
    np.testing.assert_allclose(gb.input_times, ga.input_times, **TOL["float64"]["grads"])
    # d/d delay[j, i] = sum over the spikes of source j of d/d arrival, which is d/d input time without delays.
    per_source = peak_voltage_backward(b, g).delays
    assert per_source.shape == W.shape
    np.testing.assert_allclose(per_source.sum(axis=1), gb.input_times.sum(axis=(0, 2)), **TOL["float64"]["grads"])


def test_uniform_delay_shifts_the_peak_time():
    rng = np.random.default_rng(14)
    t, W = _case(rng)
    a = peak_voltage(t, W, tau_mem=1.0, tau_syn=0.5)
    b = peak_voltage(t, W, tau_mem=1.0, tau_syn=0.5, delays=np.full(W.shape, 0.75))
    np.testing.assert_allclose(b.values, a.values, **TOL["float64"]["times"])
    moved = a.residuals.eval_time > 0
    np.testing.assert_allclose(b.residuals.eval_time[moved], a.residuals.eval_time[moved] + 0.75,
                               **TOL["float64"]["times"])


def test_event_blocks_and_neuron_chunks(monkeypatch):
    # Small blocks of events and small neuron chunks (delayed queues and backward) give the same results.
    rng = np.random.default_rng(15)
    t, W = _case(rng, batch=3, n_in=6, max_in=7, n_out=5, t_hi=8.0)
    D = _delays(rng, 6, 5)
    g = rng.normal(size=(3, 5))
    kw = dict(tau_mem=np.array([1.0, 0.7, 1.0, 2.0, 0.5]), tau_syn=0.5, delays=D)
    ref = peak_voltage(t, W, **kw)
    ref_g = peak_voltage_backward(ref, g)
    monkeypatch.setattr(_readout_numpy, "_MAX_EVENT_BLOCK", 3)
    monkeypatch.setattr(_readout_numpy, "_POINTS_PER_STEP", 3 * 6 * 7)
    small = peak_voltage(t, W, **kw)
    small_g = peak_voltage_backward(small, g)
    np.testing.assert_array_equal(small.values, ref.values)
    np.testing.assert_array_equal(small.residuals.eval_time, ref.residuals.eval_time)
    np.testing.assert_array_equal(small.residuals.kink_index, ref.residuals.kink_index)
    for a, b in zip(small_g, ref_g):
        np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-15)


# --------------------------------------------------------------------------------------------------------------------
# Gradients against central finite differences (float64)
# --------------------------------------------------------------------------------------------------------------------

def _fd_check(t, W, D, g, kw):
    res = peak_voltage(t, W, delays=D, **kw)
    grads = peak_voltage_backward(res, g)

    def loss(t_, W_, D_):
        return float(np.sum(g * peak_voltage(t_, W_, delays=D_, **kw).values))

    def fd(x, which):
        out = np.zeros_like(x)
        for idx in zip(*np.nonzero(np.isfinite(x))):
            xp, xm = x.copy(), x.copy()
            xp[idx] += FD_EPS
            xm[idx] -= FD_EPS
            args_p = [t, W, D]
            args_m = [t, W, D]
            args_p[which], args_m[which] = xp, xm
            out[idx] = (loss(*args_p) - loss(*args_m)) / (2 * FD_EPS)
        return out

    np.testing.assert_allclose(grads.weights, fd(W, 1), **TOL["fd"])
    np.testing.assert_allclose(grads.input_times, fd(t, 0), **TOL["fd"])
    if D is None:
        assert grads.delays is None
    else:
        np.testing.assert_allclose(grads.delays, fd(D, 2), **TOL["fd"])
    return res, grads


@pytest.mark.parametrize("with_delays", [False, True])
@pytest.mark.parametrize("tau_mem,tau_syn", TAUS)
def test_gradients_match_finite_differences(tau_mem, tau_syn, with_delays):
    # Distinct random times (no ties, no spike at 0) and delays >= 0.1 (so that D - eps stays valid).
    rng = np.random.default_rng(16)
    t = np.sort(rng.uniform(0.1, 4.0, (3, 3, 3)), axis=-1)
    t[0, 1, 1:] = inf
    W = rng.normal(0.4, 1.0, (3, 4))
    D = rng.uniform(0.1, 1.5, (3, 4)) if with_delays else None
    g = rng.normal(size=(3, 4))
    res, grads = _fd_check(t, W, D, g, dict(tau_mem=tau_mem, tau_syn=tau_syn))
    assert np.any(res.values > 0)
    np.testing.assert_array_equal(grads.input_times[~np.isfinite(t)], 0.0)


@pytest.mark.parametrize("tau_mem,tau_syn", [(1.0, 1.0), (1.0, 0.4), (0.6, 1.2)])
def test_gradients_at_a_kink_through_delays(tau_mem, tau_syn):
    # Neuron 0: the inhibitory input (j=1) arrives at 0.3 + 0.2 = 0.5 while V still rises, so the peak sits on its
    # kink and moves with both its input time and its delay. Neuron 1: excitatory only, a peak in the open gap.
    t = np.array([[[0.1, 0.45], [0.3, inf]],
                  [[0.2, inf], [0.4, 2.0]]])
    W = np.array([[1.0, 0.6], [-3.0, 0.4]])
    D = np.array([[0.1, 0.3], [0.2, 0.5]])
    g = np.array([[0.7, -1.2], [1.1, 0.4]])
    res, grads = _fd_check(t, W, D, g, dict(tau_mem=tau_mem, tau_syn=tau_syn))
    np.testing.assert_array_equal(res.residuals.kink_index[:, 0], 1 * 2 + 0)
    np.testing.assert_allclose(res.residuals.eval_time[:, 0], [0.5, 0.6], rtol=1e-15)
    np.testing.assert_array_equal(res.residuals.kink_index[:, 1], -1)
    assert grads.delays[1, 0] * (g[0, 0] + g[1, 0]) > 0  # delaying the inhibition raises the peak


def test_kink_tie_goes_to_the_first_arrival_in_queue_order():
    # Two inhibitory arrivals at exactly 0.5 cut the rise: (j=2, m=0) at 0.2 + 0.3 and (j=1, m=0) at 0.3 + 0.2. The
    # shared queue orders by input time, so (j=2, m=0) comes first and moves the peak; (j=1, m=0) gets no kink term.
    t = np.array([[[0.1], [0.3], [0.2]]])
    W = np.array([[1.0], [-2.0], [-2.0]])
    D = np.array([[0.0], [0.2], [0.3]])
    res = peak_voltage(t, W, tau_mem=1.0, tau_syn=0.5, delays=D)
    np.testing.assert_array_equal(res.residuals.kink_index, [[2]])
    np.testing.assert_array_equal(res.residuals.eval_time, [[0.5]])
    g = peak_voltage_backward(res, np.ones((1, 1)))
    # V'(0.5^-) = (I - V) / tau_mem of the one input at 0.1: I = e^{-0.8}, V = e^{-0.4} - e^{-0.8}.
    rise = 2.0 * np.exp(-0.8) - np.exp(-0.4)
    np.testing.assert_allclose(g.input_times[0, :, 0], [-rise, 0.0, rise], rtol=1e-12)
    np.testing.assert_allclose(g.delays[:, 0], [-rise, 0.0, rise], rtol=1e-12)


def test_all_negative_has_zero_value_and_gradient():
    rng = np.random.default_rng(17)
    t, _ = _case(rng)
    W = -np.abs(rng.normal(size=(4, 4)))
    res = peak_voltage(t, W, tau_mem=1.0, tau_syn=0.5, delays=_delays(rng, 4, 4))
    grads = peak_voltage_backward(res, np.ones((4, 4)))
    np.testing.assert_array_equal(res.values, 0.0)
    np.testing.assert_array_equal(res.residuals.eval_time, 0.0)
    for x in grads:
        np.testing.assert_array_equal(x, 0.0)


# --------------------------------------------------------------------------------------------------------------------
# The neuron mask
# --------------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("with_delays", [False, True])
def test_mask_selects_columns(with_delays):
    rng = np.random.default_rng(18)
    t, W = _case(rng, n_out=5)
    D = _delays(rng, 4, 5) if with_delays else None
    kw = dict(tau_mem=np.array([1.0, 0.7, 1.0, 2.0, 0.5]), tau_syn=0.5, delays=D)
    g = rng.normal(size=(4, 5))
    mask = np.array([True, False, True, True, False])
    full = peak_voltage(t, W, **kw)
    part = peak_voltage(t, W, neurons=mask, **kw)
    np.testing.assert_allclose(part.values[:, mask], full.values[:, mask], **TOL["float64"]["times"])
    np.testing.assert_array_equal(part.values[:, ~mask], 0.0)
    gf = peak_voltage_backward(full, np.where(mask, g, 0.0))
    gp = peak_voltage_backward(part, g)  # the cotangent of left-out neurons is ignored
    for a, b in zip(gp, gf):
        if b is None:
            assert a is None
        else:
            np.testing.assert_allclose(a, b, **TOL["float64"]["grads"])
    np.testing.assert_array_equal(gp.weights[:, ~mask], 0.0)
    if with_delays:
        np.testing.assert_array_equal(gp.delays[:, ~mask], 0.0)


def test_empty_mask_computes_nothing(monkeypatch):
    rng = np.random.default_rng(19)
    t, W = _case(rng)
    D = _delays(rng, 4, 4)

    def fail(*args, **kw):
        raise AssertionError("nothing should be computed")

    monkeypatch.setattr(_readout_numpy, "peak_forward", fail)
    monkeypatch.setattr(_readout_numpy, "peak_backward", fail)
    res = peak_voltage(t.astype(np.float32), W, tau_mem=1.0, tau_syn=0.5, delays=D.astype(np.float32),
                       neurons=np.zeros(4, bool))
    assert res.values.dtype == np.float32 and res.values.shape == (4, 4)
    np.testing.assert_array_equal(res.values, 0.0)
    g = peak_voltage_backward(res, np.ones((4, 4), np.float32))
    assert g.weights.dtype == np.float64 and g.input_times.dtype == np.float32 and g.delays.dtype == np.float32
    assert g.weights.shape == W.shape and g.input_times.shape == t.shape and g.delays.shape == D.shape
    for x in g:
        np.testing.assert_array_equal(x, 0.0)


# --------------------------------------------------------------------------------------------------------------------
# Dtypes, shapes, export
# --------------------------------------------------------------------------------------------------------------------

def test_float32_in_float32_out():
    rng = np.random.default_rng(20)
    t, W = _case(rng)
    D = _delays(rng, 4, 4)
    r64 = peak_voltage(t, W, tau_mem=1.0, tau_syn=0.5, delays=D)
    r32 = peak_voltage(t.astype(np.float32), W.astype(np.float32), tau_mem=1.0, tau_syn=0.5,
                       delays=D.astype(np.float32))
    assert r32.values.dtype == np.float32
    np.testing.assert_allclose(r32.values, r64.values, rtol=1e-5, atol=1e-6)
    g = peak_voltage_backward(r32, np.ones((4, 4), np.float32))
    assert g.weights.dtype == np.float32 and g.input_times.dtype == np.float32 and g.delays.dtype == np.float32
    assert g.weights.shape == W.shape and g.input_times.shape == t.shape and g.delays.shape == D.shape
    g_mixed = peak_voltage_backward(peak_voltage(t.astype(np.float32), W, tau_mem=1.0, tau_syn=0.5), np.ones((4, 4)))
    assert g_mixed.weights.dtype == np.float64 and g_mixed.input_times.dtype == np.float32
    assert g_mixed.delays is None


def test_empty_inputs():
    t = np.full((2, 3, 0), inf)
    res = peak_voltage(t, np.ones((3, 2)), tau_mem=1.0, tau_syn=0.5, delays=np.ones((3, 2)))
    np.testing.assert_array_equal(res.values, 0.0)
    g = peak_voltage_backward(res, np.ones((2, 2)))
    assert g.input_times.shape == (2, 3, 0)
    np.testing.assert_array_equal(g.weights, 0.0)
    np.testing.assert_array_equal(g.delays, 0.0)


def test_exported():
    assert spikescan.peak_voltage is peak_voltage and spikescan.peak_voltage_backward is peak_voltage_backward
    for name in ("peak_voltage", "peak_voltage_backward", "PeakResult", "PeakResiduals", "PeakGrads"):
        assert name in spikescan.__all__ and hasattr(spikescan, name)


# --------------------------------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------------------------------

def _ok():
    return np.array([[[0.5, 1.0, inf]]]), np.ones((1, 2))


@pytest.mark.parametrize("change,exc,name", [
    (dict(delays=np.array([[nan, 0.0]])), ValueError, "delays"),
    (dict(delays=np.array([[-0.5, 0.0]])), ValueError, "delays"),
    (dict(delays=np.array([[inf, 0.0]])), ValueError, "delays"),
    (dict(delays=np.zeros((2, 2))), ValueError, "delays"),
    (dict(delays=np.zeros((1, 2), np.int64)), TypeError, "delays"),
    (dict(delays=[[0.0, 0.0]]), TypeError, "delays"),
    (dict(neurons=np.ones(3, bool)), ValueError, "neurons"),
    (dict(neurons=np.ones((1, 2), bool)), ValueError, "neurons"),
    (dict(neurons=np.ones(2, np.int64)), TypeError, r"neurons must be a boolean mask .* got dtype int64; from "
                                                    r"indices: mask = np.zeros\(2, bool\); mask\[indices\] = True"),
    (dict(neurons=[0, 1]), TypeError, r"got list; from a list of indices: mask = np.zeros\(2, bool\)"),
    (dict(neurons=np.ma.array([True, True], mask=[False, True])), TypeError, "neurons must be a plain .* masked"),
    (dict(tau_mem=-1.0), ValueError, "tau_mem"),
    (dict(tau_mem=0.0), ValueError, "tau_mem"),
    (dict(tau_syn=np.ones(3)), ValueError, "tau_syn"),
    (dict(tau_syn=np.array([1.0, nan])), ValueError, "tau_syn"),
    (dict(input_times=np.array([[[1.0, 0.5]]])), ValueError, "input_times"),
    (dict(input_times=np.array([[[nan, 0.5]]])), ValueError, "input_times"),
    (dict(input_times=np.array([[[-1.0, 0.5]]])), ValueError, "input_times"),
    (dict(input_times=np.array([[[1, 2]]])), TypeError, "input_times"),
    (dict(input_times=np.ones((1, 2))), ValueError, "input_times"),
    (dict(weights=np.ones((2, 2))), ValueError, "weights"),
    (dict(weights=np.array([[nan, 1.0]])), ValueError, "weights"),
    (dict(weights=np.array([[inf, 1.0]])), ValueError, "weights"),
    (dict(weights=[[1.0, 1.0]]), TypeError, "weights"),
])
def test_bad_forward_arguments(change, exc, name):
    t, W = _ok()
    kw = dict(input_times=t, weights=W, tau_mem=1.0, tau_syn=0.5)
    kw.update(change)
    with pytest.raises(exc, match=name):
        peak_voltage(kw.pop("input_times"), kw.pop("weights"), **kw)


def test_bad_delay_error_names_the_value():
    t, W = _ok()
    with pytest.raises(ValueError, match=r"delays must be >= 0, got -0\.5 at index \(0, 1\)"):
        peak_voltage(t, W, tau_mem=1.0, tau_syn=0.5, delays=np.array([[0.0, -0.5]]))


def test_bad_backward_arguments():
    t, W = _ok()
    res = peak_voltage(t, W, tau_mem=1.0, tau_syn=0.5)
    with pytest.raises(TypeError, match="result"):
        peak_voltage_backward(res.values, np.ones((1, 2)))
    with pytest.raises(TypeError, match="result"):
        peak_voltage_backward(li_forward(t, W, tau_mem=1.0, tau_syn=0.5, t_max=2.0), np.ones((1, 2)))
    with pytest.raises(ValueError, match="grad_values"):
        peak_voltage_backward(res, np.ones((2, 2)))
    with pytest.raises(ValueError, match="grad_values"):
        peak_voltage_backward(res, np.array([[nan, 1.0]]))
    with pytest.raises(TypeError, match="grad_values"):
        peak_voltage_backward(res, np.ones((1, 2), np.int64))


# --------------------------------------------------------------------------------------------------------------------
# CuPy: the readout's CUDA "max" kernels, in the host emulation here and on a GPU (gpu-marked)
# --------------------------------------------------------------------------------------------------------------------

@pytest.mark.gpu
def test_cupy_in_cupy_out():
    """CuPy inputs with delays and a mask: CuPy values and gradients on the device, those of the NumPy peak."""
    cp = pytest.importorskip("cupy")
    from spikescan.cuda import is_available

    if not is_available():
        pytest.skip("no CUDA device")
    rng = np.random.default_rng(21)
    t, W = _case(rng)
    D = _delays(rng, 4, 4)
    mask = np.array([True, False, True, True])
    g = rng.normal(size=(4, 4))
    kw = dict(tau_mem=1.0, tau_syn=0.5)
    ref = peak_voltage(t, W, delays=D, neurons=mask, **kw)
    ref_g = peak_voltage_backward(ref, g)
    got = peak_voltage(cp.asarray(t), cp.asarray(W), delays=cp.asarray(D), neurons=cp.asarray(mask), **kw)
    assert isinstance(got.values, cp.ndarray) and got.residuals.device is not None
    got_g = peak_voltage_backward(got, cp.asarray(g))
    np.testing.assert_allclose(cp.asnumpy(got.values), ref.values, **TOL["float64"]["times"])
    for name in ("weights", "input_times", "delays"):
        a = getattr(got_g, name)
        assert isinstance(a, cp.ndarray)
        np.testing.assert_allclose(cp.asnumpy(a), getattr(ref_g, name), err_msg=name, **TOL["float64"]["grads"])


@pytest.mark.parametrize("tau_mem,tau_syn", TAUS)
def test_device_path_without_delays_in_host_emulation(host_kernels, tau_mem, tau_syn):
    """CuPy inputs without delays run on the device (``peak._device_forward`` / ``_device_backward``: the readout's
    CUDA "max" kernels with t_max = inf, the mask read by the kernels), here through the host emulation of the same
    kernels: the values, arg max times, kinks and gradients of the NumPy peak, equal time constants included; the
    neuron left out is not walked (its t* is 0 where the full walk finds its peak later)."""
    from spikescan import peak

    rng = np.random.default_rng(31)
    t, _ = _case(rng, n_in=6)
    W = rng.normal(0.0, 1.0, (6, 4))  # inhibitory inputs cut rises: peaks on kinks
    mask = np.array([False, True, True, True])
    g = rng.normal(size=(t.shape[0], W.shape[1]))
    taus = tuple(np.broadcast_to(np.asarray(tau, float), (4,)).copy() for tau in (tau_mem, tau_syn))
    for neurons in (None, mask):
        ref = peak_voltage(t, W, tau_mem=tau_mem, tau_syn=tau_syn, neurons=neurons)
        ref_g = peak_voltage_backward(ref, g)
        got = peak._device_forward(np, host_kernels.launch, t, W, *taus, neurons)
        assert got.residuals.device is not None and got.residuals.neurons is None
        np.testing.assert_allclose(got.values, ref.values, **TOL["float64"]["times"])
        sel = ref.residuals.neurons
        (cols, lres), = got.residuals.device[0]
        assert cols is None
        lres = lres.residuals
        np.testing.assert_array_equal(lres.kink_index[:, sel], ref.residuals.kink_index)
        np.testing.assert_allclose(lres.eval_time[:, sel], ref.residuals.eval_time, rtol=1e-12, atol=1e-14)
        got_g = peak._device_backward(np, host_kernels.launch, got.residuals, g)
        assert got_g.delays is None
        for name in ("weights", "input_times"):
            np.testing.assert_allclose(getattr(got_g, name), getattr(ref_g, name), err_msg=name,
                                       **TOL["float64"]["grads"])
        if neurons is None:
            assert (lres.eval_time[:, 0] > 0).any()
        else:
            assert not got.values[:, ~mask].any() and not got_g.weights[:, ~mask].any()
            np.testing.assert_array_equal(lres.eval_time[:, ~mask], 0.0)
            np.testing.assert_array_equal(lres.kink_index[:, ~mask], -1)
    assert (ref.residuals.kink_index >= 0).any()
    with pytest.raises(TypeError, match="neurons"):
        peak._device_forward(np, host_kernels.launch, t, W, *taus, mask.astype(np.float32))


def _device_argmax(result, n_out):
    """``(eval_time, kink_index)`` ``[batch, n_out]`` of a device peak with delays, gathered from its chunks (NaN and
    -2 for neurons not computed)."""
    chunks, mask = result.residuals.device
    assert mask is None
    batch = result.values.shape[0]
    eval_time = np.full((batch, n_out), np.nan)
    kink = np.full((batch, n_out), -2, np.int64)
    for cols, lres in chunks:
        eval_time[:, cols] = lres.residuals.eval_time
        kink[:, cols] = lres.residuals.kink_index
    return eval_time, kink


def _check_device_peak(launch, t, W, D, tau_mem, tau_syn, neurons, g):
    """The device path with delays (``peak._device_forward`` / ``_device_backward`` through ``launch``) against the
    NumPy peak: values, arg max times and kinks of the computed neurons, every gradient; returns both results."""
    from spikescan import peak

    n_out = W.shape[1]
    ref = peak_voltage(t, W, tau_mem=tau_mem, tau_syn=tau_syn, delays=D, neurons=neurons)
    ref_g = peak_voltage_backward(ref, g)
    taus = tuple(np.broadcast_to(np.asarray(tau, float), (n_out,)).copy() for tau in (tau_mem, tau_syn))
    got = peak._device_forward(np, launch, t, W, *taus, neurons, D)
    assert got.residuals.input_times is None and got.residuals.neurons is None
    assert got.values.dtype == t.dtype
    tol = TOL["float64" if t.dtype == np.float64 else "float32"]
    np.testing.assert_allclose(got.values, ref.values, **tol["times"])
    sel = ref.residuals.neurons
    eval_time, kink = _device_argmax(got, n_out)
    np.testing.assert_array_equal(kink[:, sel], ref.residuals.kink_index)
    np.testing.assert_allclose(eval_time[:, sel], ref.residuals.eval_time, rtol=1e-12, atol=1e-14)
    assert np.isnan(np.delete(eval_time, sel, axis=1)).all()  # the neurons left out were not computed
    got_g = peak._device_backward(np, launch, got.residuals, g)
    for name in ("weights", "input_times", "delays"):
        a, b = getattr(got_g, name), getattr(ref_g, name)
        assert a.dtype == b.dtype and a.shape == b.shape, name
        np.testing.assert_allclose(a, b, err_msg=name, **tol["grads"])
    return ref, got, got_g


QUEUE_FORMATS = {
    "argsort": {},  # the default: delayed queues by the generic argsort
    "kernel": {"USE_KERNEL": True},  # sorted by the queue kernel, materialised
    "permutation": {"PERMUTATION": True},  # the permutation format (uint16 positions in the shared queue)
}


@pytest.mark.parametrize("queues", list(QUEUE_FORMATS))
@pytest.mark.parametrize("tau_mem,tau_syn", TAUS)
def test_device_path_with_delays_in_host_emulation(host_kernels, monkeypatch, tau_mem, tau_syn, queues):
    """CuPy inputs with delays run on the device: the readout's CUDA "max" kernels walk each selected neuron's own
    queue of arrivals (every queue format the LIF layer uses), here through the host emulation: the values, arg max
    times, kinks and gradients (weights, input times, delays) of the NumPy peak, equal time constants included."""
    from spikescan.cuda import _queue as cuda_queue

    for name, value in QUEUE_FORMATS[queues].items():
        monkeypatch.setattr(cuda_queue, name, value)
    rng = np.random.default_rng(32)
    t, _ = _case(rng, n_in=6)
    W = rng.normal(0.0, 1.0, (6, 4))  # inhibitory arrivals cut rises: peaks on kinks
    D = _delays(rng, 6, 4)
    g = rng.normal(size=(t.shape[0], 4))
    kinks = 0
    for neurons in (None, np.array([True, False, True, True])):
        ref, _, _ = _check_device_peak(host_kernels.launch, t, W, D, tau_mem, tau_syn, neurons, g)
        kinks += int((ref.residuals.kink_index >= 0).sum())
    assert kinks > 0


def test_device_path_with_delays_at_kink_ties(host_kernels):
    """Arrivals that coincide through the delays (times and delays on a grid), with a peak on a kink that two
    arrivals share: the kink goes to the first in queue order, as on the host; float32 in, float32 out."""
    rng = np.random.default_rng(11)
    t, W = _case(rng, batch=3, n_in=5, max_in=3, n_out=4)
    t = np.round(t * 4.0) / 4.0
    D = _delays(rng, 5, 4, grid=0.25)
    g = rng.normal(size=(3, 4))
    _check_device_peak(host_kernels.launch, t, W, D, 1.0, 0.5, None, g)
    _check_device_peak(host_kernels.launch, t.astype(np.float32), W.astype(np.float32), D.astype(np.float32), 1.0,
                       0.5, None, g.astype(np.float32))
    # test_kink_tie_goes_to_the_first_arrival_in_queue_order's case: (j=2, m=0) and (j=1, m=0) both arrive at 0.5.
    ref, got, got_g = _check_device_peak(host_kernels.launch, np.array([[[0.1], [0.3], [0.2]]]),
                                         np.array([[1.0], [-2.0], [-2.0]]), np.array([[0.0], [0.2], [0.3]]), 1.0, 0.5,
                                         None, np.ones((1, 1)))
    np.testing.assert_array_equal(_device_argmax(got, 1)[1], [[2]])
    assert got_g.delays[1, 0] == 0.0 and got_g.delays[2, 0] > 0.0


def test_device_path_with_delays_in_chunks_of_neurons(host_kernels, monkeypatch):
    """With a chunk of one neuron (``_DEVICE_ENTRIES_PER_STEP = 1``) the device path builds and walks one neuron's
    queues at a time: the same values, arg max and kinks as in one chunk, and the same gradients."""
    from spikescan import peak

    rng = np.random.default_rng(33)
    t, _ = _case(rng, n_in=5)
    W = rng.normal(0.0, 1.0, (5, 4))
    D = _delays(rng, 5, 4)
    g = rng.normal(size=(t.shape[0], 4))
    mask = np.array([True, True, False, True])
    _, one, _ = _check_device_peak(host_kernels.launch, t, W, D, 1.0, 0.5, mask, g)
    assert len(one.residuals.device[0]) == 1
    monkeypatch.setattr(peak, "_DEVICE_ENTRIES_PER_STEP", 1)
    _, many, _ = _check_device_peak(host_kernels.launch, t, W, D, 1.0, 0.5, mask, g)
    assert [list(cols) for cols, _ in many.residuals.device[0]] == [[0], [1], [3]]
    np.testing.assert_array_equal(many.values, one.values)
    # The chunks share one float64 copy of the inputs, not the caller's array and not one copy each.
    kept = [r.residuals.input_times for _, r in many.residuals.device[0]]
    assert all(k is kept[0] for k in kept) and not np.shares_memory(kept[0], t)
    for a, b in zip(_device_argmax(many, 4), _device_argmax(one, 4)):
        np.testing.assert_array_equal(a, b)


def test_device_path_with_delays_deterministic(host_kernels):
    """``spikescan.set_deterministic(True)``: fixed-order partial sums, the kinks' delay terms included (the kink
    case of test_gradients_at_a_kink_through_delays), equal to the NumPy peak and the same bits on a second run."""
    from spikescan import peak

    t = np.array([[[0.1, 0.45], [0.3, inf]],
                  [[0.2, inf], [0.4, 2.0]]])
    W = np.array([[1.0, 0.6], [-3.0, 0.4]])
    D = np.array([[0.1, 0.3], [0.2, 0.5]])
    g = np.array([[0.7, -1.2], [1.1, 0.4]])
    spikescan.set_deterministic(True)
    try:
        ref, got, got_g = _check_device_peak(host_kernels.launch, t, W, D, 1.0, 0.4, None, g)
        again = peak._device_backward(np, host_kernels.launch,
                                      peak._device_forward(np, host_kernels.launch, t, W, np.ones(2), np.full(2, 0.4),
                                                           None, D).residuals, g)
    finally:
        spikescan.set_deterministic(None)  # back to the default (the environment decides)
    np.testing.assert_array_equal(_device_argmax(got, 2)[1][:, 0], 1 * 2 + 0)  # both samples on the kink
    assert got_g.delays[1, 0] != 0.0
    for a, b in zip(got_g, again):
        np.testing.assert_array_equal(a, b)


def test_device_path_with_delays_empty_mask_and_memory(host_kernels):
    """No neuron selected: nothing computed, zero values and gradients in the argument dtypes. A chunk that cannot
    fit: a MemoryError naming the call, before any queue is built."""
    from spikescan import peak

    rng = np.random.default_rng(34)
    t, W = _case(rng)
    D = _delays(rng, 4, 4).astype(np.float32)
    taus = (np.ones(4), np.full(4, 0.5))
    got = peak._device_forward(np, host_kernels.launch, t, W, *taus, np.zeros(4, bool), D)
    assert got.residuals.device == ((), None)
    np.testing.assert_array_equal(got.values, 0.0)
    grads = peak._device_backward(np, host_kernels.launch, got.residuals, np.ones((4, 4)))
    assert grads.delays.dtype == np.float32 and not grads.delays.any()
    assert not grads.weights.any() and not grads.input_times.any()
    spikescan.set_memory_limit(1000)
    try:
        with pytest.raises(MemoryError, match=r"peak_voltage\(batch=4, n_out=4, with delays\) on the device"):
            peak._device_forward(np, host_kernels.launch, t, W, *taus, None, D)
    finally:
        spikescan.set_memory_limit(None)


@pytest.mark.parametrize("shape", [(2, 0, 3), (2, 4, 0), (0, 4, 3), (2, 4, 3)])
@pytest.mark.parametrize("with_delays", [False, True])
def test_device_path_empty_inputs(host_kernels, shape, with_delays):
    """No input channel, no spike slot, no sample, only padding: the device path gives the NumPy peak's zeros and
    zero gradients of the right shapes, without a warning (no division by ``max_in = 0``)."""
    from spikescan import peak

    t = np.full(shape, inf)
    W = np.ones((shape[1], 3))
    D = np.ones((shape[1], 3)) if with_delays else None
    g = np.ones((shape[0], 3))
    ref = peak_voltage(t, W, tau_mem=1.0, tau_syn=0.5, delays=D)
    ref_g = peak_voltage_backward(ref, g)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = peak._device_forward(np, host_kernels.launch, t, W, np.ones(3), np.full(3, 0.5), None, D)
        got_g = peak._device_backward(np, host_kernels.launch, got.residuals, g)
    np.testing.assert_array_equal(got.values, ref.values)
    for a, b in zip(got_g, ref_g):
        assert (a is None) == (b is None)
        if a is not None:
            assert a.shape == b.shape and a.dtype == b.dtype
            np.testing.assert_array_equal(a, b)


@pytest.mark.gpu
def test_cupy_without_delays_stays_on_the_device():
    """CuPy inputs without delays: computed by the readout's CUDA kernels (the residuals hold no host array), the
    NumPy peak's values and gradients, the mask applied on the device."""
    cp = pytest.importorskip("cupy")
    from spikescan.cuda import is_available

    if not is_available():
        pytest.skip("no CUDA device")
    rng = np.random.default_rng(23)
    t, W = _case(rng)
    mask = np.array([True, False, True, True])
    g = rng.normal(size=(4, 4))
    kw = dict(tau_mem=1.0, tau_syn=0.5)
    ref = peak_voltage(t, W, neurons=mask, **kw)
    ref_g = peak_voltage_backward(ref, g)
    got = peak_voltage(cp.asarray(t), cp.asarray(W), neurons=cp.asarray(mask), **kw)
    assert got.residuals.device is not None and got.residuals.input_times is None
    got_g = peak_voltage_backward(got, cp.asarray(g))
    np.testing.assert_allclose(cp.asnumpy(got.values), ref.values, **TOL["float64"]["times"])
    for name in ("weights", "input_times"):
        a = getattr(got_g, name)
        assert isinstance(a, cp.ndarray)
        np.testing.assert_allclose(cp.asnumpy(a), getattr(ref_g, name), err_msg=name, **TOL["float64"]["grads"])
