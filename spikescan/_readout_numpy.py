"""NumPy implementation of the leaky-integrator readout (``li_forward`` / ``li_backward``), float64 throughout.

Without threshold or reset, ``V`` is linear in the weights: ``V_i(t) = sum_{(t_m, j): t_m < t} W[j, i] c_i(t - t_m)``
with the PSP kernel ``c(s)`` of a unit current injected at ``s = 0`` (the ``c`` entry of ``neurons.lif.decay``).

- ``"final"`` and ``"integral"`` are sums over input spikes of ``W[j, i] kappa_i(t_m)`` with a closed-form kernel
  ``kappa``: a feature tensor ``[batch, n_in]`` per group of neurons sharing ``(tau_mem, tau_syn)``, then a matmul.
- ``"max"`` walks each sample's time-sorted input queue in blocks of events (states by a short loop, gap maxima
  in closed form for the whole block at once) and keeps the arg max time ``t*``; the backward differentiates
  ``V_i(t*)`` at fixed ``t*`` (envelope theorem) plus, when ``t*`` is an input time (a kink), the motion of ``t*``.
- ``peak_forward`` / ``peak_backward`` (``spikescan.peak_voltage``) are the same walk with ``t_max = inf`` and
  optional per-synapse delays (a queue per neuron), restricted to a subset of the neurons.
"""

from __future__ import annotations

import numpy as np

from ._lif_numpy import one_pair
from ._queue import delayed_queues, shared_queue
from ._types import LIGrads, LIResiduals, LIResult
from .neurons import lif

# Elements (batch x inputs x neurons, or batch x events x neurons) handled per vectorised step, to bound memory.
_POINTS_PER_STEP = 1 << 21
_MAX_EVENT_BLOCK = 256


def _tau_groups(tau_mem, tau_syn):
    """``(tau_mem, tau_syn, neuron indices)`` for every distinct pair of time constants."""
    pair = one_pair(tau_mem, tau_syn)
    if pair is not None:
        return [(*pair, np.arange(tau_mem.size))]  # the common case, without a sort
    pairs = np.stack([tau_mem, tau_syn], axis=1)
    uniq, inverse = np.unique(pairs, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    return [(float(tm), float(ts), np.flatnonzero(inverse == g)) for g, (tm, ts) in enumerate(uniq)]


def _final_kernel(u, tau_mem, tau_syn):
    """``kappa = c(u)`` (``V(t_max)`` of a unit input ``u = t_max - t`` earlier) and ``d kappa / d t = -c'(u)``.

    ``c'(u)`` is the model's vector field at the unit PSP's state ``(V, I) = (c(u), b(u))``:
    ``lif.voltage_rate(c, b, tau_mem) = (b - c) / tau_mem``."""
    _, b, c = lif.decay(u, tau_mem, tau_syn)
    return c, -lif.voltage_rate(c, b, tau_mem)


def _integral_kernel(t, u, tau_mem, tau_syn, tau_readout, t_max):
    """``kappa(t) = int_t^{t_max} e^{-s/tau_readout} c(s - t) ds`` for an input at ``t = t_max - u``, and its ``d/dt``.

    With ``alpha = 1/tau_mem``, ``beta = 1/tau_syn``, ``g = 1/tau_readout`` (0 without weighting),
    ``c(s) = alpha (e^{-alpha s} - e^{-beta s}) / (beta - alpha)`` integrates to
    ``kappa = e^{-g t} alpha u^2 exp[0, -(alpha + g) u, -(beta + g) u]`` (second divided difference, stable for any
    equal or close rates). By parts, ``d kappa / dt = -e^{-g t_max} c(u) - g kappa``: two terms of one sign.
    """
    alpha = 1.0 / tau_mem
    g = 0.0 if tau_readout is None else 1.0 / tau_readout
    kappa = np.exp(-g * t) * alpha * u * u * lif.exp_divided_difference2(-(alpha + g) * u, -(1.0 / tau_syn + g) * u)
    _, _, c = lif.decay(u, tau_mem, tau_syn)
    return kappa, -np.exp(-g * t_max) * c - g * kappa


def _integral_kernel_param_grads(t, u, tau_mem, tau_syn, tau_readout):
    """``(d kappa / d tau_mem, d kappa / d tau_syn)`` of ``_integral_kernel`` at fixed input time ``t = t_max - u``.

    ``kappa = e^{-g t} K`` with ``K = alpha u^2 exp[0, w1, w2]``, ``w1 = -(alpha + g) u``, ``w2 = -(beta + g) u``.
    A node's derivative of a divided difference repeats that node (``d/dw1 exp[0, w1, w2] = exp[0, w1, w1, w2]``),
    so with ``d/dtau_mem = -alpha^2 d/dalpha`` and ``d/dtau_syn = -beta^2 d/dbeta``::

        dK/dtau_mem = -alpha^2 u^2 (exp[0, w1, w2] - alpha u exp[0, w1, w1, w2])
        dK/dtau_syn = alpha beta^2 u^3 exp[0, w1, w2, w2]

    Every divided difference is stable for equal or close rates. The first line is a difference of two positive
    terms: its absolute error is a few ulp of ``alpha^2 u^2 exp[0, w1, w2]`` (it tends to 0 for ``u >> tau_mem``
    without ``tau_readout``, where the total integral ``tau_syn`` no longer depends on ``tau_mem``).
    """
    alpha = 1.0 / tau_mem
    beta = 1.0 / tau_syn
    g = 0.0 if tau_readout is None else 1.0 / tau_readout
    w1 = -(alpha + g) * u
    w2 = -(beta + g) * u
    damp = np.exp(-g * t)
    dd2 = lif.exp_divided_difference2(w1, w2)
    k_tm = -alpha * alpha * u * u * (dd2 - alpha * u * lif.exp_divided_difference3(w1, w1, w2))
    k_ts = alpha * beta * beta * u * u * u * lif.exp_divided_difference3(w1, w2, w2)
    return damp * k_tm, damp * k_ts


def _linear_kernels(t, live, tau_mem, tau_syn, readout, t_max, tau_readout, time_constant_grads=False):
    """``(kappa, d kappa / dt)`` shaped like ``t``, evaluated on the ``live`` inputs only (zero elsewhere); with
    ``time_constant_grads`` also ``(d kappa / d tau_mem, d kappa / d tau_syn)`` (at fixed input times)."""
    t_live = t[live]
    u = t_max - t_live
    if readout == "final":
        parts = _final_kernel(u, tau_mem, tau_syn)
        if time_constant_grads:
            _, c_tm, _, c_ts = lif.decay_param_grads(u, tau_mem, tau_syn)
            parts += (c_tm, c_ts)
    else:
        parts = _integral_kernel(t_live, u, tau_mem, tau_syn, tau_readout, t_max)
        if time_constant_grads:
            parts += _integral_kernel_param_grads(t_live, u, tau_mem, tau_syn, tau_readout)
    out = []
    for part in parts:
        full = np.zeros(t.shape)
        full[live] = part
        out.append(full)
    return tuple(out)


def _max_forward(t, W, tau_mem, tau_syn, t_max, delays=None, engine="numpy"):
    """``max_{0 <= t <= t_max} V(t)`` per ``[batch, n_out]`` with its time and the flat input index at a kink.

    ``t_max`` may be ``+inf`` (the peak over all ``t >= 0``, the open gap after the last arrival included). With
    ``delays`` ``[n_in, n_out]`` every neuron walks its own queue of arrival times (``_queue.delayed_queues``), built
    for a chunk of neurons at a time so that the queues stay within about ``_POINTS_PER_STEP`` entries.
    """
    batch, n_in, max_in = t.shape
    n_out = W.shape[1]
    times, index, n_real = shared_queue(t, np, compiled=engine == "numba")
    if delays is None or times.shape[1] == 1:  # one queue for all (with delays: only when there is no input)
        return _walk_queues(times[:, None, :], index[:, None, :], W, tau_mem, tau_syn, t_max, max_in, engine)
    best = np.zeros((batch, n_out))
    best_t = np.zeros((batch, n_out))
    best_k = np.full((batch, n_out), -1, np.int64)
    chunk = int(max(1, _POINTS_PER_STEP // max(1, batch * times.shape[1])))
    for i0 in range(0, n_out, chunk):
        idx = slice(i0, min(n_out, i0 + chunk))
        qt, qi, _ = delayed_queues(times, index, n_real, max_in, delays[:, idx], np)
        best[:, idx], best_t[:, idx], best_k[:, idx] = _walk_queues(qt, qi, W[:, idx], tau_mem[idx], tau_syn[idx],
                                                                    t_max, max_in, engine)
    return best, best_t, best_k


def _walk_queues(qt, qi, W, tau_mem, tau_syn, t_max, max_in, engine="numpy"):
    """The maximum of ``V`` over ``[0, t_max]`` along input queues ``qt, qi`` ``[batch, Q, L1]`` (``build_queues``).

    ``Q = 1`` (one queue shared by every neuron) or ``Q = n_out`` (a queue per neuron). Candidates, in time order
    (ties keep the earliest): ``V(0) = 0``, then per gap between consecutive arrivals (clipped to ``t_max``) the
    interior peak (``neurons.lif.peak_time``) and the value at the gap's end. An end that is an arrival is a kink
    candidate and records that input's flat index ``j * max_in + m``; otherwise ``-1``. With ``t_max = inf`` the gap
    that starts at the last arrival is open (its end value is ``V(inf) = 0``, which never beats ``V(0)``); gaps past
    it have length 0, never ``inf - inf``.

    ``engine="numba"``: the same walk compiled (``_readout_numba.walk_queues``): one (sample, neuron) at a time, or
    on a shared queue one sample at a time with its neurons in step (the same bits).
    """
    if engine == "numba":
        from . import _readout_numba

        return _readout_numba.walk_queues(qt, qi, W, tau_mem, tau_syn, t_max, max_in)
    batch, Q, L1 = qt.shape
    n_in, n_out = W.shape
    W_pad = np.concatenate([W, np.zeros((1, n_out))])  # row n_in: the weight of padding entries
    best = np.zeros((batch, n_out))
    best_t = np.zeros((batch, n_out))
    best_k = np.full((batch, n_out), -1, np.int64)
    V = np.zeros((batch, n_out))
    I = np.zeros((batch, n_out))
    t_last = np.zeros((batch, Q))
    # With one pair of time constants for all neurons the gap maps of a shared queue are computed once per event.
    uniform = bool(np.all(tau_mem == tau_mem[0]) and np.all(tau_syn == tau_syn[0])) if n_out else True
    tm_a, ts_a = (tau_mem[:1], tau_syn[:1]) if uniform else (tau_mem, tau_syn)
    block = int(max(1, min(_MAX_EVENT_BLOCK, _POINTS_PER_STEP // max(1, batch * n_out))))
    for s0 in range(0, L1, block):
        if s0 > 0 and bool(np.all(t_last >= t_max)):
            break  # every later input arrives at or after t_max (for t_max = inf: every queue is done)
        tb = np.transpose(qt[:, :, s0:s0 + block], (0, 2, 1))  # [batch, K, Q]
        ib = np.transpose(qi[:, :, s0:s0 + block], (0, 2, 1))
        K = tb.shape[1]
        ends = np.minimum(tb, t_max)
        starts = np.concatenate([t_last[:, None, :], ends[:, :-1]], axis=1)
        gaps = np.subtract(ends, starts, out=np.zeros(ends.shape), where=np.isfinite(starts))
        applies = (tb < t_max) & (ib >= 0)
        src = np.where(applies, ib // max(max_in, 1), n_in)
        w = W_pad[src[..., 0]] if Q == 1 else W_pad[src, np.arange(n_out)]
        a, b, c = lif.decay(gaps, tm_a, ts_a)
        V0 = np.empty((batch, K, n_out))
        I0 = np.empty((batch, K, n_out))
        V_end = np.empty((batch, K, n_out))
        for k in range(K):
            V0[:, k], I0[:, k] = V, I
            V = a[:, k] * V + c[:, k] * I
            I = lif.input_jump(b[:, k] * I, w[:, k])
            V_end[:, k] = V
        s_peak = lif.peak_time(V0, I0, tau_mem, tau_syn)
        interior = s_peak < gaps
        v_peak = np.full(V0.shape, -np.inf)
        where = np.nonzero(interior)
        v_peak[where] = lif.voltage(s_peak[where], V0[where], I0[where], tau_mem[where[2]], tau_syn[where[2]])
        shape = (batch, K, n_out)
        values = np.stack([v_peak, V_end], axis=2).reshape(batch, 2 * K, n_out)
        times = np.stack([np.broadcast_to(starts + np.where(interior, s_peak, 0.0), shape),
                          np.broadcast_to(ends, shape)], axis=2).reshape(batch, 2 * K, n_out)
        kinks = np.stack([np.full(shape, -1, np.int64),
                          np.broadcast_to(np.where(applies, ib, -1), shape)], axis=2)
        kinks = kinks.reshape(batch, 2 * K, n_out)
        j = np.argmax(values, axis=1)[:, None, :]
        v_blk = np.take_along_axis(values, j, axis=1)[:, 0]
        better = v_blk > best
        best = np.where(better, v_blk, best)
        best_t = np.where(better, np.take_along_axis(times, j, axis=1)[:, 0], best_t)
        best_k = np.where(better, np.take_along_axis(kinks, j, axis=1)[:, 0], best_k)
        t_last = ends[:, -1]
    return best, best_t, best_k


def li_forward(input_times, weights, tau_mem, tau_syn, readout, t_max, tau_readout, engine="numpy"):
    """Same contract as ``spikescan.li_forward`` for validated NumPy arguments (``tau_*`` as ``[n_out]`` float64)."""
    t = input_times.astype(np.float64)
    W = weights.astype(np.float64)
    batch = t.shape[0]
    n_out = W.shape[1]
    eval_time = kink_index = kernels = None
    if readout == "max":
        values, eval_time, kink_index = _max_forward(t, W, tau_mem, tau_syn, t_max, engine=engine)
    else:
        values = np.zeros((batch, n_out))
        live = t < t_max
        groups = _tau_groups(tau_mem, tau_syn)
        for tm, ts, idx in groups:
            kappa, dkappa = _linear_kernels(t, live, tm, ts, readout, t_max, tau_readout)
            features = kappa.sum(axis=2)
            values[:, idx] = features @ W[:, idx]
        # One group (shared time constants): keep its kernel terms for the backward, one array the size of the input
        # times. Per-neuron time constants would need one per group, so the backward evaluates those again.
        kernels = (features, dkappa) if len(groups) == 1 else None
    residuals = LIResiduals(
        input_times=t, weights=W, tau_mem=tau_mem, tau_syn=tau_syn, tau_readout=tau_readout, t_max=t_max,
        readout=readout, eval_time=eval_time, kink_index=kink_index, input_dtype=input_times.dtype,
        weights_dtype=weights.dtype, kernels=kernels)
    return LIResult(values.astype(input_times.dtype), residuals)


def _max_grads(t, W, delays, tau_mem, tau_syn, t_max, eval_time, kink_index, g, time_constant_grads=False,
               engine="numpy"):
    """Gradient of ``sum g V_i(t*)``: ``V_i(t*)`` differentiated with ``t*`` fixed (envelope theorem), plus
    ``dV(t*)/da = V'(t*^-)`` for the arrival ``a`` at a kink (``kink_index >= 0``), which moves ``t*`` with it.

    Time constants (``time_constant_grads``): only the explicit term ``sum W dc/dtau (t* - a)`` over the arrivals
    before ``t*``. ``t*`` moves with ``tau`` only at an interior peak, where ``V'(t*) = 0`` cancels that motion; at
    ``0``, ``t_max`` and a kink it is an arrival time or a bound, which the time constants do not move (an arrival
    exactly at ``t*`` adds ``c(0) = 0`` and ``dc/dtau(0) = 0``).

    An arrival is ``t + delays[j, i]`` (``t`` without delays); its gradient goes to the input time and to the delay.
    Works on the list of inputs before ``t_max`` (sorted by source ``j``), in chunks of neurons so that the
    ``[inputs, neurons]`` temporaries stay within about ``_POINTS_PER_STEP`` entries.
    Returns ``(grad_W, grad_t, grad_D, grad_taus)``, ``grad_D`` ``None`` without delays, ``grad_taus``
    ``(grad_tau_mem, grad_tau_syn)`` ``[n_out]`` with ``time_constant_grads``, else ``None``.
    ``engine="numba"``: the same sums compiled (``_readout_numba.max_grads``), in a fixed order.
    """
    if engine == "numba":
        from . import _readout_numba

        return _readout_numba.max_grads(t, W, delays, tau_mem, tau_syn, t_max, eval_time, kink_index, g,
                                        time_constant_grads)
    batch, n_in, max_in = t.shape
    n_out = W.shape[1]
    grad_W = np.zeros(W.shape)
    grad_t = np.zeros(t.shape)
    grad_D = None if delays is None else np.zeros(delays.shape)
    grad_taus = (np.zeros(n_out), np.zeros(n_out)) if time_constant_grads else None
    j_e, b_e, m_e = np.nonzero(np.transpose(t < t_max, (1, 0, 2)))
    t_e = t[b_e, j_e, m_e]
    grad_t_e = np.zeros(t_e.shape)
    counts = np.bincount(j_e, minlength=n_in)
    sources = np.flatnonzero(counts)
    starts = (np.cumsum(counts) - counts)[sources]
    chunk = int(max(1, _POINTS_PER_STEP // max(1, t_e.size)))
    for i0 in range(0, n_out if t_e.size else 0, chunk):
        idx = slice(i0, min(n_out, i0 + chunk))
        t_star = eval_time[b_e, idx]
        arrival = t_e[:, None] if delays is None else t_e[:, None] + delays[j_e, idx]
        live = arrival < t_star  # an arrival at t* itself adds c(0) = 0 and moves t* instead (kink below)
        tm, ts = tau_mem[idx], tau_syn[idx]
        s = np.where(live, t_star - arrival, 0.0)
        _, b, c = lif.decay(s, tm, ts)
        c = np.where(live, c, 0.0)
        b = np.where(live, b, 0.0)
        W_e, g_e = W[j_e, idx], g[b_e, idx]
        if grad_taus is not None:
            _, c_tm, _, c_ts = lif.decay_param_grads(s, tm, ts)  # zero at s = 0, so dead arrivals add nothing
            grad_taus[0][idx] = np.sum(c_tm * (g_e * W_e), axis=0)
            grad_taus[1][idx] = np.sum(c_ts * (g_e * W_e), axis=0)
        grad_W[sources, idx] = np.add.reduceat(c * g_e, starts, axis=0)
        # [inputs, neurons]: d loss / d arrival at fixed t*, -c'(t* - arrival) g W (0 for dead arrivals: b = c = 0)
        grad_arrival = -lif.voltage_rate(c, b, tm) * g_e * W_e
        grad_t_e += np.sum(grad_arrival, axis=1)
        if grad_D is not None:
            grad_D[sources, idx] = np.add.reduceat(grad_arrival, starts, axis=0)
        kink = kink_index[:, idx]
        has = kink >= 0
        if bool(has.any()):
            # V'(t*^-) = (I(t*^-) - V(t*)) / tau_mem from the arrivals before t*, summed per sample: the vector field
            # (lif.voltage_rate) with the difference taken per arrival, sum W (b - c), before the sum (kept inline:
            # voltage_rate(sum W c, sum W b, tm) would subtract the sums and round differently).
            terms = (b - c) * W_e
            slope = np.stack([np.bincount(b_e, terms[:, i], minlength=batch) for i in range(terms.shape[1])], 1) / tm
            rows, cols = np.nonzero(has)
            moved = (g[:, idx] * slope)[has]
            np.add.at(grad_t.reshape(batch, n_in * max_in), (rows, kink[has]), moved)
            if grad_D is not None:
                np.add.at(grad_D, (kink[has] // max_in, i0 + cols), moved)
    grad_t[b_e, j_e, m_e] += grad_t_e
    return grad_W, grad_t, grad_D, grad_taus


def li_backward(result, grad_values, time_constant_grads=False, engine="numpy"):
    """Same contract as ``spikescan.li_backward`` for validated NumPy arguments."""
    res = result.residuals
    g = grad_values.astype(np.float64)
    if res.readout == "max":
        grad_W, grad_t, _, grad_taus = _max_grads(res.input_times, res.weights, None, res.tau_mem, res.tau_syn,
                                                  res.t_max, res.eval_time, res.kink_index, g, time_constant_grads,
                                                  engine)
    else:
        t, W = res.input_times, res.weights
        grad_W = np.zeros(W.shape)
        grad_t = np.zeros(t.shape)
        grad_taus = (np.zeros(W.shape[1]), np.zeros(W.shape[1])) if time_constant_grads else None
        live = t < res.t_max
        for tm, ts, idx in _tau_groups(res.tau_mem, res.tau_syn):
            if res.kernels is not None and not time_constant_grads:
                (features, dkappa), k_taus = res.kernels, ()
            else:
                kappa, dkappa, *k_taus = _linear_kernels(t, live, tm, ts, res.readout, res.t_max, res.tau_readout,
                                                         time_constant_grads)
                features = kappa.sum(axis=2)
            grad_W[:, idx] = features.T @ g[:, idx]
            grad_t += dkappa * (g[:, idx] @ W[:, idx].T)[..., None]
            for grad_tau, k_tau in zip(grad_taus or (), k_taus):
                # d values[b, i] / d tau_i = sum_j (sum_m d kappa / d tau)[b, j] W[j, i]
                grad_tau[idx] = np.sum(g[:, idx] * (k_tau.sum(axis=2) @ W[:, idx]), axis=0)
    tau_mem, tau_syn = (None, None) if grad_taus is None else grad_taus
    return LIGrads(grad_W.astype(res.weights_dtype), grad_t.astype(res.input_dtype), tau_mem=tau_mem,
                   tau_syn=tau_syn)


def peak_forward(t, W, D, tau_mem, tau_syn, neurons, engine="numpy"):
    """``sup_{t >= 0} V_i(t)`` of the no-reset voltage for the neurons ``neurons`` (``[n_sel]`` int64 indices).

    ``t``, ``W``, ``D`` (or ``None``), ``tau_*``: validated float64 NumPy arrays of ``spikescan.peak_voltage``.
    Returns float64 ``values`` ``[batch, n_sel]``, the arg max ``eval_time`` and the int64 ``kink_index`` (see
    ``PeakResiduals``).
    """
    D_sel = None if D is None else D[:, neurons]
    return _max_forward(t, W[:, neurons], tau_mem[neurons], tau_syn[neurons], np.inf, D_sel, engine)


def peak_backward(t, W, D, tau_mem, tau_syn, neurons, eval_time, kink_index, g, engine="numpy"):
    """Float64 ``(grad_W, grad_t, grad_D or None)`` of ``sum g * values`` for ``peak_forward``'s outputs.

    ``g``: ``[batch, n_sel]`` cotangent of the selected neurons; the other columns of ``grad_W``/``grad_D`` are 0.
    """
    D_sel = None if D is None else D[:, neurons]
    gW, grad_t, gD, _ = _max_grads(t, W[:, neurons], D_sel, tau_mem[neurons], tau_syn[neurons], np.inf,
                                   eval_time, kink_index, g, engine=engine)
    grad_W = np.zeros(W.shape)
    grad_W[:, neurons] = gW
    grad_D = None
    if D is not None:
        grad_D = np.zeros(D.shape)
        grad_D[:, neurons] = gD
    return grad_W, grad_t, grad_D
