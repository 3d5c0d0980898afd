"""The current-based leaky integrate-and-fire neuron with exact hard reset (DESIGN.md sections 1-3): its closed forms
between events, the exact gap test, the spike-time solvers and the derivatives with respect to its time constants.

Dynamics of one neuron::

    tau_mem dV/dt = -V + I,   tau_syn dI/dt = -I,
    input of weight w at t:   I <- I + w,
    V(t) = threshold:         spike at t, V <- 0 (I kept).

Between events, from state ``(V0, I0)`` over a gap of length ``s``::

    I(s) = b I0,  V(s) = a V0 + c I0,   a = e^{-s/tau_mem}, b = e^{-s/tau_syn},
    c = r (a - b),  r = tau_syn / (tau_mem - tau_syn)

``c`` is computed without cancellation as ``(s/tau_mem) a expm1(x)/x`` with ``x = s (1/tau_mem - 1/tau_syn)`` when
``|x| < 1``, which also covers ``tau_mem == tau_syn`` exactly.

Every formula is written twice, the two forms next to each other and in the same operation order:

- the vectorised form (``decay``, ``voltage``, ``peak_time``, ``fires_in_gap``, ``solve_spike_time``,
  ``decay_param_grads``, ``exp_divided_difference2/3``, the event jumps ``input_jump``, ``reset``,
  ``crossing_slope``, ``spike_adjoint``, and the backward's ``voltage_rate``, ``current_rate``,
  ``arrival_time_grad``, ``reset_time_grad``): elementwise float64 NumPy with broadcasting, called by the NumPy engines
  (sequential reference, chunked scan, recurrent layer), the readout, ``trace`` and ``init``;
- the scalar form (``<name>_scalar``, plus the shortcuts ``quiet_gap_scalar``, ``quiet_ends_scalar`` and
  ``decay_given_scalar``, the gap map from exponentials the caller has): one neuron at a time with the
  ``math`` module, called by the compiled CPU kernels (``_lif_numba``, ``_recurrent_numba``). They are plain Python
  functions until ``register_numba()`` (run by those modules when they are imported) registers them with
  ``numba.extending.register_jitable``, so importing this module neither imports Numba nor compiles anything.

The GPU twin is ``cuda/kernels/neurons/lif.cuh`` (``struct spikescan_lif``), on which the CUDA kernels are templated.

A new neuron model is one module like this one (``spikescan/neurons/<model>.py``) and one CUDA header
(``cuda/kernels/neurons/<model>.cuh``, a struct instantiated in ``cuda/_kernels.py``), each providing, in both
forms here and as static members there:

- between events: ``decay`` (the gap map), ``voltage``, ``peak_time``, ``fires_in_gap`` (exact: no missed
  spike), ``solve_spike_time`` (the first crossing in a bracket), and ``decay_param_grads`` for the time constants'
  gradients;
- at events: ``input_jump`` (the current after an arrival of weight ``w``) and ``reset`` (the state after a
  spike, from the state at its crossing);
- for the backward at a spike: ``crossing_slope`` (``dV/dt`` at the crossing, ``<= 0`` for a grazing spike) and
  ``spike_adjoint`` (the adjoint of ``V`` just before the spike from the total derivative of its time);
- for the backward at any event: the vector field ``voltage_rate`` (``dV/dt``) and ``current_rate`` (``dI/dt``),
  and the derivatives of the loss with respect to an event's time from the adjoint just after it,
  ``arrival_time_grad`` (an arrival of weight ``w``) and ``reset_time_grad`` (a spike, through its reset). The
  readout's slopes are ``voltage_rate`` too: the unit PSP's ``c'(s) = voltage_rate(c, b, tau_mem)`` at its state
  ``(c(s), b(s))`` (``decay``), and ``V'(t*)`` at the "max" readout's kink.

The engines reach the model through these names. Still inline in them: the jumps composed into the affine maps of a
scan or of the backward's spike step (the chunked scan's event maps, the CUDA warp prefix, the feed-forward
adjoint's ``-a / D``, ``-c / D``), and the NumPy "max" readout's kink slope ``sum W (b - c) / tau_mem`` (the
difference is taken per arrival, before the sum over them), each with a comment naming the function it mirrors.
"""

from __future__ import annotations

import math

import numpy as np

# Iteration caps for the root solvers: loops stop as soon as every root has converged, the caps only bound
# pathological (grazing) cases.  Newton falls back to bisection inside its bracket, so both reach full precision.
NEWTON_MAX_ITERS = 100
BISECTION_MAX_ITERS = 1100
# Solver codes of the scalar form (the compiled kernels take an int).
SOLVER_NEWTON, SOLVER_BISECTION, SOLVER_ANALYTIC = 0, 1, 2
SOLVER_CODES = {"newton": SOLVER_NEWTON, "bisection": SOLVER_BISECTION, "analytic": SOLVER_ANALYTIC}
_EPS = 2.220446049250313e-16
_INF = math.inf

_SCALAR_FORMS = []
_numba_registered = False


def _scalar(fn):
    """Marks ``fn`` as a scalar form for ``register_numba``; returns it unchanged."""
    _SCALAR_FORMS.append(fn)
    return fn


def register_numba():
    """Make the scalar forms callable from Numba-compiled code (``register_jitable``; idempotent). The compiled
    engines' modules call it when they are imported, before anything of theirs compiles."""
    global _numba_registered
    if _numba_registered:
        return
    from numba.extending import register_jitable

    for fn in _SCALAR_FORMS:
        register_jitable(fn)
    _numba_registered = True


def _over_x(fn, x):
    """``fn(x) / x`` elementwise with the removable singularity at 0 filled in by 1 (``fn(0) = 0``,
    ``fn'(0) = 1``)."""
    x = np.asarray(x, dtype=np.float64)
    safe = np.where(x == 0.0, 1.0, x)
    return np.where(x == 0.0, 1.0, fn(safe) / safe)


def _phi(x):
    """``expm1(x) / x`` with the removable singularity at 0 filled in (``phi(0) = 1``)."""
    return _over_x(np.expm1, x)


@_scalar
def phi_scalar(x):
    """``expm1(x) / x`` with ``phi(0) = 1``."""
    return 1.0 if x == 0.0 else math.expm1(x) / x


def _log1p_ratio(z):
    """``log1p(z) / z`` with ``1`` at ``z = 0``."""
    return _over_x(np.log1p, z)


@_scalar
def log1p_ratio_scalar(z):
    """``log1p(z) / z`` with ``1`` at ``z = 0``."""
    return 1.0 if z == 0.0 else math.log1p(z) / z


def exp_divided_difference2(w1, w2):
    """Second divided difference ``exp[0, w1, w2]`` of the exponential at the nodes ``0, w1, w2 <= 0``.

    It is ``(phi(w2) - phi(w1)) / (w2 - w1)`` with ``phi(w) = expm1(w)/w = exp[0, w]``, continued to coincident
    nodes (``exp[0, w, w] = d phi/dw``, ``exp[0, 0, 0] = 1/2``); always in ``(0, 1/2]``. Integrals of sums of
    two exponentials reduce to it, e.g. ``int_0^u (e^{-x1 s} - e^{-x2 s})/(x2 - x1) ds = u^2 exp[0, -x1 u, -x2 u]``.

    Computed without cancellation for any nodes: when the nodes spread over more than 1, as the difference of the
    first divided differences across the widest pair ``[lo, 0]`` (convexity keeps the two terms apart by a factor
    of at least about 1.6); otherwise by the series ``sum_m h_m(w1, w2) / (m + 2)!`` with the complete homogeneous
    polynomials ``h_m(w1, w2) = sum_{i<=m} w1^i w2^(m-i)``, whose terms fall below ``1e-17`` by ``m = 19``.
    """
    w1, w2 = np.broadcast_arrays(np.asarray(w1, dtype=np.float64), np.asarray(w2, dtype=np.float64))
    lo = np.minimum(w1, w2)
    mid = np.maximum(w1, w2)
    far = lo < -1.0
    out = np.empty(lo.shape)
    # Far nodes: (exp[mid, 0] - exp[lo, mid]) / (0 - lo); exp[lo, mid] = e^mid phi(lo - mid) has no overflow.
    lo_f, mid_f = lo[far], mid[far]
    out[far] = (_phi(mid_f) - np.exp(mid_f) * _phi(lo_f - mid_f)) / -lo_f
    # Near nodes: truncated series; h_m = w2 h_{m-1} + w1^m.
    near = ~far
    x1, x2 = w1[near], w2[near]
    h = np.ones(x1.shape)
    x1_pow = np.ones(x1.shape)
    inv_fact = 0.5
    dd_near = 0.5 * h
    for m in range(1, 20):
        x1_pow *= x1
        h = x2 * h + x1_pow
        inv_fact /= m + 2
        dd_near += inv_fact * h
    out[near] = dd_near
    return out


def exp_divided_difference3(w1, w2, w3):
    """Third divided difference ``exp[0, w1, w2, w3]`` of the exponential at the nodes ``0, w1, w2, w3 <= 0``.

    Symmetric in its nodes and continued to coincident ones, so ``exp[0, w1, w1, w2] = d/dw1 exp[0, w1, w2]``: the
    derivative of ``exp_divided_difference2`` in one node, which the time-constant gradients of the readout's
    integral kernel need. Always in ``(0, 1/6]``.

    Computed without cancellation in the same two regimes as ``exp_divided_difference2``: when the lowest node
    ``lo`` is below ``-1``, as ``(exp[0, x, y] - exp[x, y, lo]) / (0 - lo)`` across the widest pair (``x, y`` the
    other two nodes; ``exp[x, y, lo] = e^y exp[0, x - y, lo - y]`` with ``y >= x`` has no overflow; the two terms
    stay apart by a factor of at least ``e/2``, about 1.36, reached at ``lo = -1, x = y = 0``); otherwise by the
    series ``sum_m h_m(w1, w2, w3) / (m + 3)!`` with the complete homogeneous polynomials,
    ``h_m(w1, w2, w3) = w3 h_{m-1}(w1, w2, w3) + h_m(w1, w2)``, whose terms fall below ``1e-19`` by ``m = 20``.
    """
    nodes = np.sort(np.stack(np.broadcast_arrays(*(np.asarray(w, dtype=np.float64) for w in (w1, w2, w3)))), axis=0)
    lo, x, y = nodes
    far = lo < -1.0
    out = np.empty(lo.shape)
    lo_f, x_f, y_f = lo[far], x[far], y[far]
    out[far] = (exp_divided_difference2(x_f, y_f)
                - np.exp(y_f) * exp_divided_difference2(x_f - y_f, lo_f - y_f)) / -lo_f
    near = ~far
    a, b, c = lo[near], x[near], y[near]
    h2 = np.ones(a.shape)  # h_m(a, b)
    h3 = np.ones(a.shape)  # h_m(a, b, c)
    a_pow = np.ones(a.shape)
    inv_fact = 1.0 / 6.0
    dd_near = inv_fact * h3
    for m in range(1, 21):
        a_pow *= a
        h2 = b * h2 + a_pow
        h3 = c * h3 + h2
        inv_fact /= m + 3
        dd_near += inv_fact * h3
    out[near] = dd_near
    return out


def decay(s, tau_mem, tau_syn):
    """Propagator entries ``(a, b, c)`` of the gap map ``[[a, c], [0, b]]`` for gap lengths ``s >= 0`` (may be inf).

    All arguments broadcast. ``V(s) = a V0 + c I0`` and ``I(s) = b I0``.
    """
    s = np.asarray(s, dtype=np.float64)
    tau_mem = np.asarray(tau_mem, dtype=np.float64)
    tau_syn = np.asarray(tau_syn, dtype=np.float64)
    finite = np.isfinite(s)
    all_finite = bool(finite.all())
    sf = s if all_finite else np.where(finite, s, 0.0)
    a = np.exp(-sf / tau_mem)
    b = np.exp(-sf / tau_syn)
    x = sf * (1.0 / tau_mem - 1.0 / tau_syn)
    small = np.abs(x) < 1.0
    # Near tau_mem == tau_syn: c = (s/tau_mem) a phi(-s d); elsewhere the direct form has no cancellation. The
    # branches are only evaluated where some element needs them (this function is on every hot path).
    if small.all():
        c = (sf / tau_mem) * a * _phi(x)
    elif not small.any():
        c = tau_syn / (tau_mem - tau_syn) * (a - b)
    else:
        c_small = (sf / tau_mem) * a * _phi(np.where(small, x, 0.0))
        c_large = tau_syn / np.where(small, 1.0, tau_mem - tau_syn) * (a - b)
        c = np.where(small, c_small, c_large)
    if not all_finite:
        a, b, c = (np.where(finite, y, 0.0) for y in (a, b, c))
    return a, b, c


@_scalar
def decay_scalar(s, tau_mem, tau_syn):
    """``(a, b, c)`` of the gap map ``[[a, c], [0, b]]`` for a gap ``s >= 0``; ``(0, 0, 0)`` for ``s = inf``."""
    if not math.isfinite(s):
        return 0.0, 0.0, 0.0
    return decay_given_scalar(s, math.exp(-s / tau_mem), math.exp(-s / tau_syn), tau_mem, tau_syn)


@_scalar
def decay_given_scalar(s, a, b, tau_mem, tau_syn):
    """``decay_scalar`` for a finite gap ``s >= 0`` whose exponentials ``a = e^{-s/tau_mem}``, ``b = e^{-s/tau_syn}``
    the caller already has (the compiled closed-form backward forms them as products of tabulated factors): the
    cross term ``c`` as ``decay_scalar``'s (twin of ``Neuron::decay_given``)."""
    x = s * (1.0 / tau_mem - 1.0 / tau_syn)
    if abs(x) < 1.0:
        c = (s / tau_mem) * a * phi_scalar(x)
    else:
        c = tau_syn / (tau_mem - tau_syn) * (a - b)
    return a, b, c


def _phi_prime(x):
    """``d/dx (expm1(x) / x) = (x e^x - e^x + 1) / x^2``: the series ``sum_k k x^(k-1) / (k+1)!`` for ``|x| < 1``
    (its closed form cancels there), the closed form elsewhere; ``1/2`` at 0."""
    x = np.asarray(x, dtype=np.float64)
    small = np.abs(x) < 1.0
    xs = np.where(small, x, 0.0)
    term = np.full(x.shape, 0.5)  # k = 1: 1 / 2!
    out = term.copy()
    for k in range(2, 22):
        term = term * xs * k / ((k - 1) * (k + 1))  # k x^(k-1)/(k+1)! from (k-1) x^(k-2)/k!
        out = out + term
    xl = np.where(small, 1.0, x)
    return np.where(small, out, (xl * np.exp(xl) - np.expm1(xl)) / (xl * xl))


@_scalar
def phi_prime_scalar(x):
    """``d/dx (expm1(x) / x)``: its series ``sum_k k x^(k-1) / (k+1)!`` for ``|x| < 1``, the closed form
    ``(x e^x - expm1(x)) / x^2`` elsewhere (twin of ``_phi_prime``)."""
    if abs(x) < 1.0:
        term = 0.5
        out = 0.5
        for k in range(2, 22):
            term = term * x * k / ((k - 1) * (k + 1))
            out = out + term
        return out
    return (x * math.exp(x) - math.expm1(x)) / (x * x)


def decay_param_grads(s, tau_mem, tau_syn):
    """Derivatives of the gap map entries with respect to the time constants at fixed gap ``s``:
    ``(da/dtau_mem, dc/dtau_mem, db/dtau_syn, dc/dtau_syn)`` (``a`` does not depend on ``tau_syn`` nor ``b`` on
    ``tau_mem``). Zero for ``s = inf``.

    ``a = e^{-s/tau_mem}`` and ``b = e^{-s/tau_syn}`` give ``a s / tau_mem^2`` and ``b s / tau_syn^2``. For ``c``,
    the branch of ``decay``: near ``tau_mem == tau_syn`` (``|x| < 1``, ``x = s (1/tau_mem - 1/tau_syn)``)
    ``c = (s/tau_mem) a phi(x)`` is differentiated as a product (``phi'`` by its series), elsewhere
    ``c = r (a - b)`` with ``r = tau_syn / (tau_mem - tau_syn)``.
    """
    s = np.asarray(s, dtype=np.float64)
    tau_mem = np.asarray(tau_mem, dtype=np.float64)
    tau_syn = np.asarray(tau_syn, dtype=np.float64)
    finite = np.isfinite(s)
    sf = np.where(finite, s, 0.0)
    a, b, c = decay(sf, tau_mem, tau_syn)
    a_tm = a * sf / (tau_mem * tau_mem)
    b_ts = b * sf / (tau_syn * tau_syn)
    x = sf * (1.0 / tau_mem - 1.0 / tau_syn)
    small = np.abs(x) < 1.0
    pre = (sf / tau_mem) * a
    dphi = _phi_prime(np.where(small, x, 0.0))
    c_tm_small = c * (sf / tau_mem - 1.0) / tau_mem - pre * dphi * sf / (tau_mem * tau_mem)
    c_ts_small = pre * dphi * sf / (tau_syn * tau_syn)
    diff = np.where(small, 1.0, tau_mem - tau_syn)
    r = tau_syn / diff
    c_tm_large = -tau_syn / (diff * diff) * (a - b) + r * a_tm
    c_ts_large = tau_mem / (diff * diff) * (a - b) - r * b_ts
    c_tm = np.where(small, c_tm_small, c_tm_large)
    c_ts = np.where(small, c_ts_small, c_ts_large)
    return tuple(np.where(finite, y, 0.0) for y in (a_tm, c_tm, b_ts, c_ts))


@_scalar
def decay_param_grads_scalar(s, tau_mem, tau_syn, a, b, c):
    """``(da/dtau_mem, dc/dtau_mem, db/dtau_syn, dc/dtau_syn)`` at fixed gap ``s`` with its decay ``(a, b, c)``
    (twin of ``decay_param_grads``); zeros for ``s = inf``."""
    if not math.isfinite(s):
        return 0.0, 0.0, 0.0, 0.0
    a_tm = a * s / (tau_mem * tau_mem)
    b_ts = b * s / (tau_syn * tau_syn)
    x = s * (1.0 / tau_mem - 1.0 / tau_syn)
    if abs(x) < 1.0:
        pre = (s / tau_mem) * a
        dphi = phi_prime_scalar(x)
        c_tm = c * (s / tau_mem - 1.0) / tau_mem - pre * dphi * s / (tau_mem * tau_mem)
        c_ts = pre * dphi * s / (tau_syn * tau_syn)
    else:
        diff = tau_mem - tau_syn
        r = tau_syn / diff
        c_tm = -tau_syn / (diff * diff) * (a - b) + r * a_tm
        c_ts = tau_mem / (diff * diff) * (a - b) - r * b_ts
    return a_tm, c_tm, b_ts, c_ts


def voltage(s, v0, i0, tau_mem, tau_syn):
    """``V(s)`` from ``(v0, i0)`` after a gap ``s`` with no input."""
    a, _, c = decay(s, tau_mem, tau_syn)
    return a * v0 + c * i0


@_scalar
def voltage_scalar(s, v0, i0, tau_mem, tau_syn):
    """``V(s)`` from ``(v0, i0)`` after a gap ``s`` with no input."""
    a, _, c = decay_scalar(s, tau_mem, tau_syn)
    return a * v0 + c * i0


def peak_time(v0, i0, tau_mem, tau_syn):
    """Time ``s_peak > 0`` of the maximum of ``V`` after ``(v0, i0)``, or ``inf`` where ``V`` has no interior peak.

    ``V`` is a sum of two exponentials, so it has at most one extremum. ``dV/ds = 0`` gives
    ``s_peak = tau_syn (1 - v0/i0) log1p(z)/z`` with ``z = (1 - tau_syn/tau_mem)(v0/i0 - 1)``,
    which is the DESIGN.md formula rewritten to stay exact at ``tau_mem == tau_syn``.
    A peak exists iff ``i0 > 0``, ``i0 > v0`` and ``1 + z > 0``.
    """
    v0 = np.asarray(v0, dtype=np.float64)
    i0 = np.asarray(i0, dtype=np.float64)
    tau_mem = np.asarray(tau_mem, dtype=np.float64)
    tau_syn = np.asarray(tau_syn, dtype=np.float64)
    rising = (i0 > 0.0) & (i0 > v0)
    ratio = np.where(rising, v0 / np.where(rising, i0, 1.0), 0.0)
    z = (1.0 - tau_syn / tau_mem) * (ratio - 1.0)
    has_peak = rising & (1.0 + z > 0.0)
    zs = np.where(has_peak, z, 0.0)
    s_peak = tau_syn * (1.0 - ratio) * _log1p_ratio(zs)
    return np.where(has_peak, s_peak, np.inf)


@_scalar
def peak_time_scalar(v0, i0, tau_mem, tau_syn):
    """Time ``s_peak > 0`` of the maximum of ``V`` after ``(v0, i0)``, ``inf`` where ``V`` has no interior peak."""
    rising = (i0 > 0.0) and (i0 > v0)
    ratio = v0 / i0 if rising else 0.0
    z = (1.0 - tau_syn / tau_mem) * (ratio - 1.0)
    if not (rising and (1.0 + z > 0.0)):
        return _INF
    return tau_syn * (1.0 - ratio) * log1p_ratio_scalar(z)


def fires_in_gap(v0, i0, gap, tau_mem, tau_syn, threshold):
    """Exact gap test (DESIGN.md section 2) for states with ``v0 < threshold``.

    Returns ``(fires, s_hi)``: whether ``V`` reaches ``threshold`` in ``(0, gap]`` and the right end of the root
    bracket ``min(s_peak, gap)`` (where ``V(s_hi) >= threshold`` when it fires).
    """
    gap = np.asarray(gap, dtype=np.float64)
    s_peak = peak_time(v0, i0, tau_mem, tau_syn)
    s_hi = np.minimum(s_peak, gap)
    # V(inf) = 0 < threshold: an infinite s_hi (no peak, infinite gap) never fires.
    fin = np.isfinite(s_hi) & (s_hi > 0.0)
    v_hi = voltage(np.where(fin, s_hi, 0.0), v0, i0, tau_mem, tau_syn)
    fires = fin & (v_hi >= threshold) & (np.asarray(i0) > np.asarray(v0))
    return fires, s_hi


@_scalar
def fires_in_gap_scalar(v0, i0, gap, tau_mem, tau_syn, threshold):
    """Exact gap test for ``v0 < threshold``: ``(fires, s_hi)``, ``s_hi = min(s_peak, gap)`` the bracket's end.

    Cheap exit first: ``V`` only rises while ``V < I`` and ``I`` decays towards 0, so ``V(s) <= max(v0, i0, 0)``
    for all ``s``; when that bound is below the threshold by more than the rounding error of evaluating ``V``
    (``1e-14 (|v0| + |i0| + threshold)``), no evaluation of the full test could reach the threshold either, and the
    answer is the same as the full test's without a transcendental call (``s_hi`` is then ``gap``, unused).
    """
    if max(v0, i0) + 1e-14 * (abs(v0) + abs(i0) + threshold) < threshold:
        return False, gap
    s_hi = min(peak_time_scalar(v0, i0, tau_mem, tau_syn), gap)
    # V(inf) = 0 < threshold: an infinite bracket (no peak, open gap) never fires.
    if not (math.isfinite(s_hi) and s_hi > 0.0):
        return False, s_hi
    v_hi = voltage_scalar(s_hi, v0, i0, tau_mem, tau_syn)
    return (v_hi >= threshold) and (i0 > v0), s_hi


@_scalar
def quiet_gap_scalar(v0, i0, a, b, c, threshold):
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
def quiet_ends_scalar(v0, i0, v_end, i_end, threshold):
    """``quiet_gap_scalar`` from the states at both ends of the gap, ``(v0, i0)`` and ``(v_end, i_end)`` (before
    the arrival that ends it), as the rebased walk of the compiled engine computes them (``_lif_numba``
    ``forward_rebased``): the same comparisons and margin."""
    margin = 1e-14 * (abs(v0) + abs(i0) + threshold)
    if max(v0, i0) + margin < threshold:
        return True
    return (v_end + margin < threshold) and (i_end - v_end > margin)


@_scalar
def _next_up(x):
    return math.nextafter(x, _INF)


def voltage_noise(v0, v, threshold):
    """Rounding error of evaluating ``V = a v0 + c i0`` where it came out as ``v`` (the solvers' stop rule):
    ``eps (threshold + 2 |v0| + |v|)``, as ``|c i0| = |v - a v0| <= |v| + |v0|``. Not ``eps |i0|``: ``c`` is far
    below 1 when ``tau_mem >> tau_syn`` (about ``tau_syn / tau_mem``), so ``i0`` may be 1000 thresholds at a
    crossing, and a stop within ``eps |i0|`` of the threshold placed near-grazing spikes up to ``1e-7`` early
    (``tau_mem / tau_syn = 1e3``, peak ``1e-11`` above threshold; bisection to one ulp: ``4e-11``)."""
    return np.finfo(np.float64).eps * (threshold + 2.0 * np.abs(v0) + np.abs(v))


@_scalar
def voltage_noise_scalar(v0, v, threshold):
    """``voltage_noise`` for one neuron: ``eps (threshold + 2 |v0| + |v|)``."""
    return _EPS * (threshold + 2.0 * abs(v0) + abs(v))


def solve_spike_time(v0, i0, s_hi, tau_mem, tau_syn, threshold, solver="newton"):
    """First root of ``V(s) = threshold`` on ``[0, s_hi]`` for firing states (DESIGN.md section 3).

    Requires ``V(0) = v0 < threshold <= V(s_hi)`` with ``V`` increasing and concave on the bracket. All inputs are
    broadcast to one shape; float64 throughout.

    - ``"newton"``: Newton from ``s = 0``; iterates rise monotonically. Each round probes the Newton step, the
      chord point and the midpoint of the bracket and keeps the tightest bracket, so grazing spikes still converge
      to full precision.
    - ``"bisection"``: halvings of the bracket until its width is one ulp. A bracket whose end already meets the
      threshold up to the rounding of evaluating ``V`` (a grazing spike at the voltage's peak) returns that end, as
      Newton stops there: halving would pick the earliest float where the flat top rounds to the threshold, up to
      ``~1e-8 tau`` early with a spurious positive crossing slope.
    - ``"analytic"``: closed form, valid only for ``tau_mem == 2 tau_syn`` (``V = (v0 + i0) x - i0 x^2`` with
      ``x = e^{-s/tau_mem}``).
    """
    v0, i0, s_hi, tau_mem, tau_syn, threshold = np.broadcast_arrays(
        *(np.asarray(x, dtype=np.float64) for x in (v0, i0, s_hi, tau_mem, tau_syn, threshold)))
    if v0.size == 0:
        return np.zeros(v0.shape)
    if solver == "analytic":
        # disc = (i0 - v0)^2 - 4 i0 (threshold - v0) >= 0 is what the gap test established; rounding can push a
        # grazing case a few ulp below zero, where the double root is the exact answer.
        disc = np.maximum((i0 - v0) ** 2 - 4.0 * i0 * (threshold - v0), 0.0)
        xm1 = -2.0 * (threshold - v0) / (np.sqrt(disc) + (i0 - v0))
        return -tau_mem * np.log1p(xm1)
    lo = np.zeros(v0.shape)
    hi = s_hi.copy()
    if solver == "bisection":
        # the bracket's end meets the threshold within the rounding of V: it is the root (Newton's stop rule)
        v_end = voltage(hi, v0, i0, tau_mem, tau_syn)
        met = v_end - threshold <= voltage_noise(v0, v_end, threshold)
        lo = np.where(met, hi, lo)
        for _ in range(BISECTION_MAX_ITERS):
            mid = 0.5 * (lo + hi)
            active = (mid > lo) & (mid < hi)
            if not active.any():
                break
            up = voltage(mid, v0, i0, tau_mem, tau_syn) >= threshold
            hi = np.where(active & up, mid, hi)
            lo = np.where(active & ~up, mid, lo)
        return hi
    if solver != "newton":
        raise ValueError(f"solver must be 'newton', 'bisection' or 'analytic', got {solver!r}")
    v_lo, b_lo = v0, np.ones(v0.shape)
    v_hi = voltage(hi, v0, i0, tau_mem, tau_syn)
    eps = np.finfo(np.float64).eps
    active = np.ones(lo.shape, bool)
    for _ in range(NEWTON_MAX_ITERS):
        # Invariant: V(lo) < threshold <= V(hi), V concave on [lo, hi]. Each round probes three points at once: the
        # Newton step from lo (below the root on the concave branch), the chord point (above it), and the midpoint
        # (which guarantees the bracket at least halves, e.g. for grazing roots near the peak or when rounding puts
        # a probe on the wrong side). An element stops once its bracket is two ulps wide, its Newton step is below
        # float64 resolution, or V(hi) equals the threshold up to the rounding error of evaluating V.
        slope = (b_lo * i0 - v_lo) / tau_mem
        step = (threshold - v_lo) / np.where(slope > 0, slope, 1.0)
        active &= ((np.nextafter(np.nextafter(lo, np.inf), np.inf) < hi) & ~((slope > 0) & (step <= eps * lo))
                   & (v_hi - threshold > voltage_noise(v0, v_hi, threshold)))
        if not active.any():
            break
        rise = v_hi - v_lo
        probes = np.stack([
            np.where(slope > 0, lo + step, lo),
            lo + (hi - lo) * ((threshold - v_lo) / np.where(rise > 0, rise, 1.0)),
            0.5 * (lo + hi)])
        a, b, c = decay(probes, tau_mem, tau_syn)
        values = a * v0 + c * i0
        for s_try, v_try, b_try in zip(probes, values, b):
            inside = active & (s_try > lo) & (s_try < hi)
            up = inside & (v_try >= threshold)
            down = inside & (v_try < threshold)
            hi, v_hi = np.where(up, s_try, hi), np.where(up, v_try, v_hi)
            lo, v_lo, b_lo = np.where(down, s_try, lo), np.where(down, v_try, v_lo), np.where(down, b_try, b_lo)
    # ``lo`` is the last iterate with V < threshold, ``hi`` the first with V >= threshold; the root is in between
    # and the pair is at most an ulp or two apart after convergence.  Return the side with the smaller residual.
    v_lo = voltage(lo, v0, i0, tau_mem, tau_syn)
    v_hi = voltage(hi, v0, i0, tau_mem, tau_syn)
    return np.where(threshold - v_lo <= v_hi - threshold, lo, hi)


@_scalar
def solve_spike_time_scalar(v0, i0, s_hi, tau_mem, tau_syn, threshold, solver):
    """First root of ``V(s) = threshold`` on ``[0, s_hi]`` for a firing state (``solver``: a ``SOLVER_*`` code).

    The three-probe bracketed Newton of ``solve_spike_time`` (Newton step from ``lo``, chord point,
    midpoint; stops at a two-ulp bracket, a Newton step below float64 resolution, or ``V(hi)`` within the rounding
    of the threshold), bisection to one ulp (the bracket's end if it meets the threshold within that rounding), or
    the closed form for ``tau_mem == 2 tau_syn``.
    """
    if solver == SOLVER_ANALYTIC:
        disc = max((i0 - v0) * (i0 - v0) - 4.0 * i0 * (threshold - v0), 0.0)
        xm1 = -2.0 * (threshold - v0) / (math.sqrt(disc) + (i0 - v0))
        return -tau_mem * math.log1p(xm1)
    lo = 0.0
    hi = s_hi
    if solver == SOLVER_BISECTION:
        v_end = voltage_scalar(hi, v0, i0, tau_mem, tau_syn)
        if v_end - threshold <= voltage_noise_scalar(v0, v_end, threshold):
            return hi  # the bracket's end meets the threshold within the rounding of V (Newton's stop rule)
        for _ in range(BISECTION_MAX_ITERS):
            mid = 0.5 * (lo + hi)
            if not ((mid > lo) and (mid < hi)):
                break
            if voltage_scalar(mid, v0, i0, tau_mem, tau_syn) >= threshold:
                hi = mid
            else:
                lo = mid
        return hi
    v_lo = v0
    b_lo = 1.0
    v_hi = voltage_scalar(hi, v0, i0, tau_mem, tau_syn)
    for _ in range(NEWTON_MAX_ITERS):
        slope = (b_lo * i0 - v_lo) / tau_mem
        step = (threshold - v_lo) / (slope if slope > 0.0 else 1.0)
        if not ((_next_up(_next_up(lo)) < hi) and not ((slope > 0.0) and (step <= _EPS * lo))
                and (v_hi - threshold > voltage_noise_scalar(v0, v_hi, threshold))):
            break
        rise = v_hi - v_lo
        p0 = lo + step if slope > 0.0 else lo
        p1 = lo + (hi - lo) * ((threshold - v_lo) / (rise if rise > 0.0 else 1.0))
        p2 = 0.5 * (lo + hi)
        # All three probes are evaluated from the same bracket, then applied in order (as the NumPy solver does).
        a0, b0, c0 = decay_scalar(p0, tau_mem, tau_syn)
        a1, b1, c1 = decay_scalar(p1, tau_mem, tau_syn)
        a2, b2, c2 = decay_scalar(p2, tau_mem, tau_syn)
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
    r_lo = threshold - voltage_scalar(lo, v0, i0, tau_mem, tau_syn)
    r_hi = voltage_scalar(hi, v0, i0, tau_mem, tau_syn) - threshold
    return lo if r_lo <= r_hi else hi


# Event jumps. An input or recurrent arrival of weight ``w`` and an output spike change the state instantly; the
# engines apply them after advancing the state to the event with ``decay``. ``crossing_slope`` and
# ``spike_adjoint`` are the backward's side of a spike: its time is an implicit function of the state through
# ``V(t_spike) = threshold``, so every derivative of it is divided by ``dV/dt`` there.

def input_jump(i, w):
    """The current after an arrival of weight ``w`` at current ``i`` (``V`` is continuous): ``i + w``."""
    return np.add(i, w)


@_scalar
def input_jump_scalar(i, w):
    """The current after an arrival of weight ``w`` at current ``i``: ``i + w``."""
    return i + w


def reset(v, i):
    """The state ``(V, I)`` right after a spike from the state ``(v, i)`` at its crossing (``v`` is the
    threshold there): ``V`` resets to 0, the current is kept."""
    return np.zeros(np.broadcast(v, i).shape), np.asarray(i, dtype=np.float64)


@_scalar
def reset_scalar(v, i):
    """``(V, I)`` right after a spike from ``(v, i)`` at its crossing: ``(0, i)``."""
    return 0.0, i


def crossing_slope(i, threshold, tau_mem):
    """``dV/dt`` at a threshold crossing with current ``i``: ``voltage_rate(threshold, i, tau_mem)``,
    ``(i - threshold) / tau_mem`` (``V = threshold`` there). The spike time's derivatives divide by it; ``<= 0`` is a
    grazing spike (no derivative)."""
    return voltage_rate(threshold, i, tau_mem)


@_scalar
def crossing_slope_scalar(i, threshold, tau_mem):
    """``dV/dt`` at a threshold crossing with current ``i``: ``(i - threshold) / tau_mem``."""
    return voltage_rate_scalar(threshold, i, tau_mem)


def spike_adjoint(g, slope):
    """Adjoint of ``V`` just before a spike from ``g``, the total derivative of the loss with respect to the spike
    time, and the crossing slope: ``-g / slope`` (the spike time moves by ``-dV / slope``)."""
    return -np.asarray(g, dtype=np.float64) / slope


@_scalar
def spike_adjoint_scalar(g, slope):
    """Adjoint of ``V`` just before a spike: ``-g / slope``."""
    return -g / slope


# The vector field f = (dV/dt, dI/dt), used by the backwards at events, and the derivatives of the loss with respect
# to an event's time: the state after the event, taken against the adjoint (lV, lI) just after it.

def voltage_rate(v, i, tau_mem):
    """``dV/dt`` at the state ``(v, i)``: ``(i - v) / tau_mem``. At the unit PSP's state ``(c, b)`` after a gap
    ``s`` (``decay``) it is the PSP kernel's slope ``c'(s)``."""
    return (np.asarray(i, dtype=np.float64) - v) / tau_mem


@_scalar
def voltage_rate_scalar(v, i, tau_mem):
    """``dV/dt`` at the state ``(v, i)``: ``(i - v) / tau_mem``."""
    return (i - v) / tau_mem


def current_rate(i, tau_syn):
    """``dI/dt`` at the current ``i``: ``-i / tau_syn``."""
    return -np.asarray(i, dtype=np.float64) / tau_syn


@_scalar
def current_rate_scalar(i, tau_syn):
    """``dI/dt`` at the current ``i``: ``-i / tau_syn``."""
    return -i / tau_syn


def arrival_time_grad(w, lV, lI, tau_mem, tau_syn):
    """Derivative of the loss with respect to the time of an arrival of weight ``w``, from the adjoint ``(lV, lI)``
    just after it: ``w (lI / tau_syn - lV / tau_mem)``. The arrival adds ``w`` to ``I``, so the vector field jumps by
    ``f_after - f_before = (w / tau_mem, -w / tau_syn)``; moved later by ``dt``, it changes the state after it by
    ``(f_before - f_after) dt``."""
    return w * (np.asarray(lI, dtype=np.float64) / tau_syn - lV / tau_mem)


@_scalar
def arrival_time_grad_scalar(w, lV, lI, tau_mem, tau_syn):
    """Derivative of the loss with respect to an arrival's time: ``w (lI / tau_syn - lV / tau_mem)``."""
    return w * (lI / tau_syn - lV / tau_mem)


def reset_time_grad(lV, i, tau_mem):
    """Derivative of the loss with respect to a spike's time through its reset, from the adjoint ``lV`` of ``V``
    just after the spike and the current ``i`` there: ``-lV i / tau_mem``. ``V`` restarts from 0 (``reset``) at the
    spike's time with ``dV/dt = voltage_rate(0, i, tau_mem)``, so a later spike leaves ``V`` lower by
    ``i / tau_mem`` per unit of time (``I`` is continuous: no term; the state before the spike enters through
    ``spike_adjoint``). Computed as ``((-lV) i) / tau_mem``, which is ``-(lV i / tau_mem)`` exactly, so
    ``G + reset_time_grad(...)`` has the bits of ``G - lV i / tau_mem``."""
    return -np.asarray(lV, dtype=np.float64) * i / tau_mem


@_scalar
def reset_time_grad_scalar(lV, i, tau_mem):
    """Derivative of the loss with respect to a spike's time through its reset: ``-lV i / tau_mem``."""
    return -lV * i / tau_mem
