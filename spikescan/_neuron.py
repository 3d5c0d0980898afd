"""Scalar closed forms of the current-based LIF neuron (DESIGN.md sections 1-3): the compiled CPU kernels' home.

The same formulas, in the same operation order, as ``_dynamics.py`` (elementwise NumPy, the reference) and
``cuda/kernels/common.cuh`` (the GPU twin), written for one neuron at a time with the ``math`` module. Every function
runs as plain Python and, with Numba installed, compiles into the kernels of ``_lif_numba`` that call it
(``numba.extending.register_jitable``); importing this module never compiles anything.

Between events, from state ``(V0, I0)`` over a gap ``s``: ``I(s) = b I0``, ``V(s) = a V0 + c I0`` with
``a = e^{-s/tau_mem}``, ``b = e^{-s/tau_syn}``, ``c = r (a - b)``, ``r = tau_syn / (tau_mem - tau_syn)``, and
``c = (s/tau_mem) a expm1(x)/x``, ``x = s (1/tau_mem - 1/tau_syn)``, when ``|x| < 1``.
"""

from __future__ import annotations

import math

try:
    from numba.extending import register_jitable as _scalar
except ImportError:  # plain Python functions without Numba
    def _scalar(fn):
        return fn

NEWTON_MAX_ITERS = 100
BISECTION_MAX_ITERS = 1100
SOLVER_NEWTON, SOLVER_BISECTION, SOLVER_ANALYTIC = 0, 1, 2
SOLVER_CODES = {"newton": SOLVER_NEWTON, "bisection": SOLVER_BISECTION, "analytic": SOLVER_ANALYTIC}
_EPS = 2.220446049250313e-16
_INF = math.inf


@_scalar
def phi(x):
    """``expm1(x) / x`` with ``phi(0) = 1``."""
    return 1.0 if x == 0.0 else math.expm1(x) / x


@_scalar
def log1p_ratio(z):
    """``log1p(z) / z`` with ``1`` at ``z = 0``."""
    return 1.0 if z == 0.0 else math.log1p(z) / z


@_scalar
def decay(s, tau_mem, tau_syn):
    """``(a, b, c)`` of the gap map ``[[a, c], [0, b]]`` for a gap ``s >= 0``; ``(0, 0, 0)`` for ``s = inf``."""
    if not math.isfinite(s):
        return 0.0, 0.0, 0.0
    a = math.exp(-s / tau_mem)
    b = math.exp(-s / tau_syn)
    x = s * (1.0 / tau_mem - 1.0 / tau_syn)
    if abs(x) < 1.0:
        c = (s / tau_mem) * a * phi(x)
    else:
        c = tau_syn / (tau_mem - tau_syn) * (a - b)
    return a, b, c


@_scalar
def voltage(s, v0, i0, tau_mem, tau_syn):
    """``V(s)`` from ``(v0, i0)`` after a gap ``s`` with no input."""
    a, _, c = decay(s, tau_mem, tau_syn)
    return a * v0 + c * i0


@_scalar
def peak_time(v0, i0, tau_mem, tau_syn):
    """Time ``s_peak > 0`` of the maximum of ``V`` after ``(v0, i0)``, ``inf`` where ``V`` has no interior peak."""
    rising = (i0 > 0.0) and (i0 > v0)
    ratio = v0 / i0 if rising else 0.0
    z = (1.0 - tau_syn / tau_mem) * (ratio - 1.0)
    if not (rising and (1.0 + z > 0.0)):
        return _INF
    return tau_syn * (1.0 - ratio) * log1p_ratio(z)


@_scalar
def fires_in_gap(v0, i0, gap, tau_mem, tau_syn, threshold):
    """Exact gap test for ``v0 < threshold``: ``(fires, s_hi)``, ``s_hi = min(s_peak, gap)`` the bracket's end.

    Cheap exit first: ``V`` only rises while ``V < I`` and ``I`` decays towards 0, so ``V(s) <= max(v0, i0, 0)``
    for all ``s``; when that bound is below the threshold by more than the rounding error of evaluating ``V``
    (``1e-14 (|v0| + |i0| + threshold)``), no evaluation of the full test could reach the threshold either, and the
    answer is the same as the full test's without a transcendental call (``s_hi`` is then ``gap``, unused).
    """
    if max(v0, i0) + 1e-14 * (abs(v0) + abs(i0) + threshold) < threshold:
        return False, gap
    s_hi = min(peak_time(v0, i0, tau_mem, tau_syn), gap)
    # V(inf) = 0 < threshold: an infinite bracket (no peak, open gap) never fires.
    if not (math.isfinite(s_hi) and s_hi > 0.0):
        return False, s_hi
    v_hi = voltage(s_hi, v0, i0, tau_mem, tau_syn)
    return (v_hi >= threshold) and (i0 > v0), s_hi


@_scalar
def quiet_gap(v0, i0, a, b, c, threshold):
    """True when ``V`` provably stays below ``threshold`` over a gap with decay ``(a, b, c)`` from ``(v0, i0)``.

    An exact shortcut of ``fires_in_gap`` for the compiled kernels, which already hold the gap's decay for the
    state update: ``V`` has at most one extremum, so when it is still rising at the gap's end (``b i0 > V_end``),
    its maximum over the gap is at an end, and ``V(0) = v0 < threshold``; so ``V_end < threshold`` settles it. Both
    comparisons keep a margin of ``1e-14 (|v0| + |i0| + threshold)`` (far above the rounding of evaluating them), so
    that the full test, which evaluates ``V`` at ``min(s_peak, gap)``, could not decide otherwise. With the bound
    ``V <= max(v0, i0, 0)`` of ``fires_in_gap``.
    """
    margin = 1e-14 * (abs(v0) + abs(i0) + threshold)
    if max(v0, i0) + margin < threshold:
        return True
    v_end = a * v0 + c * i0
    return (v_end + margin < threshold) and (b * i0 - v_end > margin)


@_scalar
def phi_prime(x):
    """``d/dx (expm1(x) / x)``: its series ``sum_k k x^(k-1) / (k+1)!`` for ``|x| < 1``, the closed form
    ``(x e^x - expm1(x)) / x^2`` elsewhere (twin of ``_dynamics._phi_prime``)."""
    if abs(x) < 1.0:
        term = 0.5
        out = 0.5
        for k in range(2, 22):
            term = term * x * k / ((k - 1) * (k + 1))
            out = out + term
        return out
    return (x * math.exp(x) - math.expm1(x)) / (x * x)


@_scalar
def decay_param_grads(s, tau_mem, tau_syn, a, b, c):
    """``(da/dtau_mem, dc/dtau_mem, db/dtau_syn, dc/dtau_syn)`` at fixed gap ``s`` with its decay ``(a, b, c)``
    (twin of ``_dynamics.decay_param_grads``); zeros for ``s = inf``."""
    if not math.isfinite(s):
        return 0.0, 0.0, 0.0, 0.0
    a_tm = a * s / (tau_mem * tau_mem)
    b_ts = b * s / (tau_syn * tau_syn)
    x = s * (1.0 / tau_mem - 1.0 / tau_syn)
    if abs(x) < 1.0:
        pre = (s / tau_mem) * a
        dphi = phi_prime(x)
        c_tm = c * (s / tau_mem - 1.0) / tau_mem - pre * dphi * s / (tau_mem * tau_mem)
        c_ts = pre * dphi * s / (tau_syn * tau_syn)
    else:
        diff = tau_mem - tau_syn
        r = tau_syn / diff
        c_tm = -tau_syn / (diff * diff) * (a - b) + r * a_tm
        c_ts = tau_mem / (diff * diff) * (a - b) - r * b_ts
    return a_tm, c_tm, b_ts, c_ts


@_scalar
def _next_up(x):
    return math.nextafter(x, _INF)


@_scalar
def solve_spike_time(v0, i0, s_hi, tau_mem, tau_syn, threshold, solver):
    """First root of ``V(s) = threshold`` on ``[0, s_hi]`` for a firing state (``solver``: a ``SOLVER_*`` code).

    The three-probe bracketed Newton of ``_dynamics.solve_spike_time`` (Newton step from ``lo``, chord point,
    midpoint; stops at a two-ulp bracket, a Newton step below float64 resolution, or ``V(hi)`` within the rounding
    of the threshold), bisection to one ulp, or the closed form for ``tau_mem == 2 tau_syn``.
    """
    if solver == SOLVER_ANALYTIC:
        disc = max((i0 - v0) * (i0 - v0) - 4.0 * i0 * (threshold - v0), 0.0)
        xm1 = -2.0 * (threshold - v0) / (math.sqrt(disc) + (i0 - v0))
        return -tau_mem * math.log1p(xm1)
    lo = 0.0
    hi = s_hi
    if solver == SOLVER_BISECTION:
        for _ in range(BISECTION_MAX_ITERS):
            mid = 0.5 * (lo + hi)
            if not ((mid > lo) and (mid < hi)):
                break
            if voltage(mid, v0, i0, tau_mem, tau_syn) >= threshold:
                hi = mid
            else:
                lo = mid
        return hi
    noise = _EPS * (threshold + abs(v0) + abs(i0))
    v_lo = v0
    b_lo = 1.0
    v_hi = voltage(hi, v0, i0, tau_mem, tau_syn)
    for _ in range(NEWTON_MAX_ITERS):
        slope = (b_lo * i0 - v_lo) / tau_mem
        step = (threshold - v_lo) / (slope if slope > 0.0 else 1.0)
        if not ((_next_up(_next_up(lo)) < hi) and not ((slope > 0.0) and (step <= _EPS * lo))
                and (v_hi - threshold > noise)):
            break
        rise = v_hi - v_lo
        p0 = lo + step if slope > 0.0 else lo
        p1 = lo + (hi - lo) * ((threshold - v_lo) / (rise if rise > 0.0 else 1.0))
        p2 = 0.5 * (lo + hi)
        # All three probes are evaluated from the same bracket, then applied in order (as the NumPy solver does).
        a0, b0, c0 = decay(p0, tau_mem, tau_syn)
        a1, b1, c1 = decay(p1, tau_mem, tau_syn)
        a2, b2, c2 = decay(p2, tau_mem, tau_syn)
        for q in range(3):
            if q == 0:
                s_try, v_try, b_try = p0, a0 * v0 + c0 * i0, b0
            elif q == 1:
                s_try, v_try, b_try = p1, a1 * v0 + c1 * i0, b1
            else:
                s_try, v_try, b_try = p2, a2 * v0 + c2 * i0, b2
            if not ((s_try > lo) and (s_try < hi)):
                continue
            if v_try >= threshold:
                hi, v_hi = s_try, v_try
            else:
                lo, v_lo, b_lo = s_try, v_try, b_try
    r_lo = threshold - voltage(lo, v0, i0, tau_mem, tau_syn)
    r_hi = voltage(hi, v0, i0, tau_mem, tau_syn) - threshold
    return lo if r_lo <= r_hi else hi
