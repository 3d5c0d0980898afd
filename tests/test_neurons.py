"""The neuron model's two forms (``spikescan.neurons.lif``): the scalar functions of the compiled kernels agree
with the vectorised NumPy ones on random states, including equal and nearly equal time constants, tiny, zero and
infinite gaps, and states a few ulps from the threshold; the event jumps (input, reset), the spike's terms of the
backward (crossing slope, adjoint) and the backward's vector field and event-time derivatives give identical bits in
both forms."""

from __future__ import annotations

import math

import numpy as np
import pytest

from spikescan.neurons import lif


def _gap(rng):
    kind = rng.integers(5)
    if kind == 0:
        return 10.0 ** rng.uniform(-300, -6)  # tiny gaps: c ~ s / tau_mem, no cancellation allowed
    if kind == 1:
        return float(rng.choice([0.0, math.inf]))
    return rng.exponential(5)


def _time_constants(rng):
    tm = rng.uniform(0.5, 20)
    kind = rng.integers(3)
    if kind == 0:
        return tm, rng.uniform(0.5, 20)
    return tm, tm * (1 + rng.choice([0.0, 1e-12, 1e-9, 1e-3]))


def test_scalar_closed_forms_match_the_vectorised_forms():
    rng = np.random.default_rng(8)
    fired = 0
    for n in range(2000):
        tm, ts = _time_constants(rng)
        s = _gap(rng)
        v0 = rng.uniform(-1, 1) if n % 4 else 1.0 - rng.integers(1, 50) * 2.2e-16
        i0 = rng.uniform(-1, 4)
        abc = lif.decay_scalar(s, tm, ts)
        np.testing.assert_allclose(abc, [x.item() for x in lif.decay(s, tm, ts)], rtol=1e-14, atol=1e-300)
        np.testing.assert_allclose(lif.decay_param_grads_scalar(s, tm, ts, *abc),
                                   [x.item() for x in lif.decay_param_grads(s, tm, ts)], rtol=1e-12, atol=1e-300)
        assert lif.voltage_scalar(s, v0, i0, tm, ts) == pytest.approx(lif.voltage(s, v0, i0, tm, ts).item(),
                                                                      rel=1e-14, abs=1e-15 * (abs(v0) + abs(i0)))
        p, q = lif.peak_time_scalar(v0, i0, tm, ts), lif.peak_time(v0, i0, tm, ts).item()
        assert (p == q == math.inf) or p == pytest.approx(q, rel=1e-13)
        if v0 < 1.0:
            f, hi = lif.fires_in_gap_scalar(v0, i0, s, tm, ts, 1.0)
            f_ref, hi_ref = lif.fires_in_gap(v0, i0, s, tm, ts, 1.0)
            assert f == bool(f_ref)
            if f:
                fired += 1
                assert hi == pytest.approx(hi_ref.item(), rel=1e-13)
                for solver, code in lif.SOLVER_CODES.items():
                    if solver == "analytic":
                        continue
                    a = lif.solve_spike_time_scalar(v0, i0, hi, tm, ts, 1.0, code)
                    b = lif.solve_spike_time(v0, i0, hi_ref, tm, ts, 1.0, solver).item()
                    assert a == pytest.approx(b, rel=1e-13, abs=1e-13)
    assert fired > 100


def test_event_jumps_forms_agree():
    """The input jump, the reset, the crossing slope and the spike's adjoint: the scalar forms give the same bits as
    the vectorised ones (elementwise and broadcast), on random states including a crossing at a grazing slope."""
    rng = np.random.default_rng(5)
    n = 500
    i = rng.normal(0, 3, n)
    i[:5] = [0.0, -0.0, 1.0, 1e-300, -2.5]
    w = rng.normal(0, 1, n)
    th = rng.uniform(0.5, 2, n)
    th[2] = i[2]  # a grazing crossing: zero slope
    tm = rng.uniform(0.5, 20, n)
    g = rng.normal(0, 1, n)
    jump = lif.input_jump(i, w)
    v_after, i_after = lif.reset(th, i)
    slope = lif.crossing_slope(i, th, tm)
    safe = np.where(slope == 0.0, 1.0, slope)
    adj = lif.spike_adjoint(g, safe)
    assert v_after.shape == i_after.shape == slope.shape == adj.shape == (n,)
    assert slope[2] == 0.0
    for k in range(n):
        assert lif.input_jump_scalar(i[k], w[k]) == jump[k]
        assert lif.reset_scalar(th[k], i[k]) == (v_after[k], i_after[k]) == (0.0, i[k])
        assert lif.crossing_slope_scalar(i[k], th[k], tm[k]) == slope[k]
        assert lif.spike_adjoint_scalar(g[k], safe[k]) == adj[k]
    # broadcasting: one threshold and time constant for every neuron
    np.testing.assert_array_equal(lif.crossing_slope(i, 1.0, 2.0), [lif.crossing_slope_scalar(x, 1.0, 2.0) for x in i])
    v0, i0 = lif.reset(1.0, i[:, None] * np.ones(3))
    assert v0.shape == i0.shape == (n, 3) and not v0.any()


def test_event_jumps_compile_in_the_kernels():
    """The jumps' scalar forms are registered with Numba with the other scalar forms and give the same bits there."""
    numba = pytest.importorskip("numba")
    lif.register_numba()

    @numba.njit
    def jumps(i, w, th, tm, g):
        v_after, i_after = lif.reset_scalar(th, i)
        slope = lif.crossing_slope_scalar(i, th, tm)
        return lif.input_jump_scalar(i, w), v_after, i_after, slope, lif.spike_adjoint_scalar(g, slope)

    rng = np.random.default_rng(6)
    for i, w, th, tm, g in rng.normal(1, 2, (50, 5)):
        slope = lif.crossing_slope_scalar(i, th, abs(tm))
        expected = (lif.input_jump_scalar(i, w), 0.0, i, slope, lif.spike_adjoint_scalar(g, slope))
        assert jumps(i, w, th, abs(tm), g) == expected


def _backward_terms_case(rng, n):
    v, i, w, lV, lI = rng.normal(0, 3, (5, n))
    v[:4], i[:4] = [0.0, -0.0, 1.0, 2.5], [0.0, 0.0, 1.0, 1e-300]  # zero rates, a zero voltage
    lV[:2], lI[:2] = [0.0, -0.0], [-0.0, 0.0]
    tm, ts = rng.uniform(0.5, 20, (2, n))
    ts[:n // 4] = tm[:n // 4]  # equal time constants
    return v, i, w, lV, lI, tm, ts


def test_backward_terms_forms_agree():
    """The vector field (voltage_rate, current_rate) and the event-time derivatives (arrival_time_grad,
    reset_time_grad): the scalar forms give the same bits as the vectorised ones (elementwise and broadcast), and
    reset_time_grad added gives the bits of the subtraction the engines wrote before."""
    rng = np.random.default_rng(7)
    n = 500
    v, i, w, lV, lI, tm, ts = _backward_terms_case(rng, n)
    dv = lif.voltage_rate(v, i, tm)
    di = lif.current_rate(i, ts)
    g_arr = lif.arrival_time_grad(w, lV, lI, tm, ts)
    g_reset = lif.reset_time_grad(lV, i, tm)
    assert dv.shape == di.shape == g_arr.shape == g_reset.shape == (n,)
    for k in range(n):
        assert lif.voltage_rate_scalar(v[k], i[k], tm[k]) == dv[k]
        assert lif.current_rate_scalar(i[k], ts[k]) == di[k]
        assert lif.arrival_time_grad_scalar(w[k], lV[k], lI[k], tm[k], ts[k]) == g_arr[k]
        assert lif.reset_time_grad_scalar(lV[k], i[k], tm[k]) == g_reset[k]
    np.testing.assert_array_equal(dv, (i - v) / tm)
    np.testing.assert_array_equal(di, -i / ts)
    np.testing.assert_array_equal(g_arr, w * (lI / ts - lV / tm))
    G = rng.normal(0, 1, n)
    np.testing.assert_array_equal(G + g_reset, G - lV * i / tm)
    # the crossing slope is the voltage rate at the threshold
    np.testing.assert_array_equal(lif.crossing_slope(i, v, tm), dv)
    # broadcasting: one time constant for every neuron, adjoints [n, 3]
    np.testing.assert_array_equal(lif.voltage_rate(v, i, 2.0),
                                  [lif.voltage_rate_scalar(a, b, 2.0) for a, b in zip(v, i)])
    np.testing.assert_array_equal(lif.current_rate(i, 3.0), [lif.current_rate_scalar(x, 3.0) for x in i])
    lV3 = lV[:, None] * np.array([1.0, -0.5, 2.0])
    grid = lif.arrival_time_grad(w[:, None], lV3, lI[:, None], tm[:, None], ts[:, None])
    assert grid.shape == (n, 3)
    assert grid[5, 1] == lif.arrival_time_grad_scalar(w[5], lV3[5, 1], lI[5], tm[5], ts[5])


def test_backward_terms_compile_in_the_kernels():
    """The backward terms' scalar forms are registered with Numba and give the same bits there."""
    numba = pytest.importorskip("numba")
    lif.register_numba()

    @numba.njit
    def terms(v, i, w, lV, lI, tm, ts):
        return (lif.voltage_rate_scalar(v, i, tm), lif.current_rate_scalar(i, ts),
                lif.arrival_time_grad_scalar(w, lV, lI, tm, ts), lif.reset_time_grad_scalar(lV, i, tm),
                lif.crossing_slope_scalar(i, v, tm))

    rng = np.random.default_rng(8)
    for v, i, w, lV, lI, tm, ts in zip(*_backward_terms_case(rng, 50)):
        expected = (lif.voltage_rate_scalar(v, i, tm), lif.current_rate_scalar(i, ts),
                    lif.arrival_time_grad_scalar(w, lV, lI, tm, ts), lif.reset_time_grad_scalar(lV, i, tm),
                    lif.voltage_rate_scalar(v, i, tm))
        assert terms(v, i, w, lV, lI, tm, ts) == expected


def test_analytic_solver_forms_agree_where_it_applies():
    rng = np.random.default_rng(3)
    for _ in range(300):
        ts = rng.uniform(0.5, 10)
        tm = 2.0 * ts
        v0, i0 = rng.uniform(-1, 1), rng.uniform(1, 6)
        f, hi = lif.fires_in_gap_scalar(v0, i0, math.inf, tm, ts, 1.0)
        if not f:
            continue
        a = lif.solve_spike_time_scalar(v0, i0, hi, tm, ts, 1.0, lif.SOLVER_ANALYTIC)
        b = lif.solve_spike_time(v0, i0, hi, tm, ts, 1.0, "analytic").item()
        assert a == pytest.approx(b, rel=1e-13, abs=1e-13)


def test_importing_the_model_imports_no_numba():
    import subprocess
    import sys

    code = "import sys, spikescan, spikescan.neurons.lif; assert 'numba' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
