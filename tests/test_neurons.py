"""The neuron model's two forms (``spikescan.neurons.lif``): the scalar functions of the compiled kernels agree
with the vectorised NumPy ones on random states, including equal and nearly equal time constants, tiny, zero and
infinite gaps, and states a few ulps from the threshold."""

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
