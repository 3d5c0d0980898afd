"""Compiled CPU kernels of the ``"max"`` readout and ``peak_voltage`` (Numba, ``engine="numba"``): the walk of
``_readout_numpy._walk_queues`` and the gradients of ``_readout_numpy._max_grads`` as loops over (sample, neuron)
with the scalar closed forms of ``neurons.lif``, the same candidates in the same order and the same tie rule.

The NumPy versions vectorise over samples and neurons and loop over events in Python; on the examples' readouts
(e.g. 350 hidden neurons x 4 spikes into 10 units, batch 64) that loop was about a third of a training step. Results
agree with the NumPy engine to rounding (``np.exp`` and ``math.exp`` may differ in the last bit): the tests compare
values, arg max times, kinks and every gradient.

- ``walk_queues``: ``prange`` over (sample, neuron); each walks its queue (shared by the sample's neurons, or its
  own with delays) and keeps the first candidate of largest value: ``V(0) = 0``, then per gap the interior peak and
  the value at the gap's end (a kink candidate when an input arrives there). A queue shared by a sample's neurons is
  walked once per sample with the neurons in step (``prange`` over samples, when there are at least as many as
  threads), a gap's decay computed once for all of them when they share their time constants: the same bits.
- ``max_grads``: one pass, ``prange`` over samples, each (input spike, neuron) pair's decay computed once: the
  input-time gradient (each input spike sums over the neurons in order, then the kinks are added) and each sample's
  share of the weight, delay and time-constant gradients, which are then summed over the samples; fixed summation
  orders and no atomics (bit-identical for any number of threads).
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba import prange

from ._lif_numba import _jit, _pjit, cached_njit
from .neurons import lif

lif.register_numba()


# The interior peak of a gap from (V0, I0) is V = I there, below I0 (V rises only while V < I, and a positive I
# decays): it can beat the best value so far only if max(V0, I0) does. The margin (far above rounding) keeps every
# case where the computed peak could round past the best; skipping the rest changes no result.
_PEAK_MARGIN = 1e-12


@cached_njit(inline="always")  # in the walks' innermost loop: a call per point cost ~20% of the forward
def _candidates(V0, I0, V_end, gap, t_last, end, kink, tm, ts, bv, bt, bk):
    """The best ``(value, time, kink)`` so far updated with one gap's candidates, in order: its interior peak (from
    the state ``(V0, I0)`` at ``t_last``), then its end value ``V_end`` at ``end`` (``kink``: the arriving input's
    flat index, or -1). Ties keep the earlier candidate."""
    hi = max(V0, I0)
    if hi + abs(hi) * _PEAK_MARGIN >= bv:
        s_peak = lif.peak_time_scalar(V0, I0, tm, ts)
        if s_peak < gap:
            v_peak = lif.voltage_scalar(s_peak, V0, I0, tm, ts)
            if v_peak > bv:
                bv, bt, bk = v_peak, t_last + s_peak, np.int64(-1)
    if V_end > bv:
        bv, bt, bk = V_end, end, kink
    return bv, bt, bk


@_pjit
def _walk(qt, qi, W, tau_mem, tau_syn, t_max, max_in, best, best_t, best_k):
    batch, Q, L1 = qt.shape
    n_out = W.shape[1]
    for tid_ in prange(batch * n_out):
        tid = np.int64(tid_)
        b = tid // n_out
        i = tid - b * n_out
        q = i if Q > 1 else 0
        tm, ts = tau_mem[i], tau_syn[i]
        V, I, t_last = 0.0, 0.0, 0.0
        bv, bt, bk = 0.0, 0.0, np.int64(-1)
        for k in range(L1):
            if k > 0 and t_last >= t_max:
                break  # every later input arrives at or after t_max (for t_max = inf: the queue is done)
            t = qt[b, q, k]
            idx = qi[b, q, k]
            end = min(t, t_max)
            gap = end - t_last if math.isfinite(t_last) else 0.0
            applies = t < t_max and idx >= 0
            w = W[idx // max(max_in, 1), i] if applies else 0.0
            a, bb, c = lif.decay_scalar(gap, tm, ts)
            V0, I0 = V, I
            V = a * V0 + c * I0
            I = lif.input_jump_scalar(bb * I0, w)
            kink = idx if applies else np.int64(-1)
            bv, bt, bk = _candidates(V0, I0, V, gap, t_last, end, kink, tm, ts, bv, bt, bk)
            t_last = end
        best[b, i] = bv
        best_t[b, i] = bt
        best_k[b, i] = bk


@_pjit
def _walk_shared(qt, qi, W, tau_mem, tau_syn, uniform, t_max, max_in, best, best_t, best_k):
    """``_walk`` for one queue per sample (``Q = 1``): ``prange`` over samples, each walking its queue once with all
    its neurons in step, so that with one pair of time constants (``uniform``) a gap's decay is computed once for
    every neuron. Per neuron the same operations in the same order as ``_walk``: the same bits."""
    batch, _, L1 = qt.shape
    n_out = W.shape[1]
    tm0 = tau_mem[0] if n_out else 1.0
    ts0 = tau_syn[0] if n_out else 1.0
    for b_ in prange(batch):
        b = np.int64(b_)
        V = np.zeros(n_out)
        I = np.zeros(n_out)
        bv = np.zeros(n_out)
        bt = np.zeros(n_out)
        bk = np.full(n_out, -1, np.int64)
        t_last = 0.0
        for k in range(L1):
            if k > 0 and t_last >= t_max:
                break  # every later input arrives at or after t_max (for t_max = inf: the queue is done)
            t = qt[b, 0, k]
            idx = qi[b, 0, k]
            end = min(t, t_max)
            gap = end - t_last if math.isfinite(t_last) else 0.0
            applies = t < t_max and idx >= 0
            j = idx // max(max_in, 1) if applies else np.int64(0)
            kink = idx if applies else np.int64(-1)
            a, bb, c = lif.decay_scalar(gap, tm0, ts0)
            for i in range(n_out):
                tm, ts = tau_mem[i], tau_syn[i]
                if not uniform:
                    a, bb, c = lif.decay_scalar(gap, tm, ts)
                w = W[j, i] if applies else 0.0
                V0, I0 = V[i], I[i]
                Vn = a * V0 + c * I0
                I[i] = lif.input_jump_scalar(bb * I0, w)
                V[i] = Vn
                bv[i], bt[i], bk[i] = _candidates(V0, I0, Vn, gap, t_last, end, kink, tm, ts, bv[i], bt[i], bk[i])
            t_last = end
        for i in range(n_out):
            best[b, i] = bv[i]
            best_t[b, i] = bt[i]
            best_k[b, i] = bk[i]


# Set by the tests: "auto" takes _walk_shared for one queue per sample when the batch gives every thread a sample,
# "shared" / "per_neuron" force one kernel.
WALK = "auto"


def walk_queues(qt, qi, W, tau_mem, tau_syn, t_max, max_in):
    """``_readout_numpy._walk_queues`` compiled: ``(best, best_t, best_k)`` ``[batch, n_out]``."""
    batch, Q, L1 = qt.shape
    n_out = W.shape[1]
    best = np.zeros((batch, n_out))
    best_t = np.zeros((batch, n_out))
    best_k = np.full((batch, n_out), -1, np.int64)
    args = (np.ascontiguousarray(qt, dtype=np.float64), np.ascontiguousarray(qi, dtype=np.int64),
            np.ascontiguousarray(W, dtype=np.float64), np.ascontiguousarray(tau_mem, dtype=np.float64),
            np.ascontiguousarray(tau_syn, dtype=np.float64))
    shared = Q == 1 and (WALK == "shared" or (WALK == "auto" and batch >= numba.get_num_threads()))
    if shared:
        tm, ts = args[3], args[4]
        uniform = bool(n_out == 0 or (np.all(tm == tm[0]) and np.all(ts == ts[0])))
        _walk_shared(batch * n_out * L1, *args, uniform, float(t_max), np.int64(max_in), best, best_t, best_k)
    else:
        _walk(batch * n_out * L1, *args, float(t_max), np.int64(max_in), best, best_t, best_k)
    return best, best_t, best_k


@_jit
def _arrival_terms(t, d, t_star, tm, ts):
    """``(live, a, b, c, s)`` for an arrival at ``t + d`` before the evaluation time ``t_star``."""
    arrival = t + d
    if not arrival < t_star:  # an arrival at t* itself adds c(0) = 0 (and moves t* instead, at a kink)
        return False, 0.0, 0.0, 0.0, 0.0
    s = t_star - arrival
    a, bb, c = lif.decay_scalar(s, tm, ts)
    return True, a, bb, c, s


@_pjit
def _grads_by_sample(t, W, D, has_delays, tau_mem, tau_syn, t_max, eval_time, kink_index, g, want_tau, part_W, part_D,
                     part_tm, part_ts, slope, grad_t):
    """One pass over every (input spike, neuron) pair of each sample (``prange`` over samples): the input-time
    gradient (summed over the neurons in order), and the sample's share of the weight, delay and time-constant
    gradients in ``part_*[b]`` (summed over its spikes in order; the caller sums the samples), then the kinks. Each
    pair's decay is computed once for all of them."""
    batch, n_in, max_in = t.shape
    n_out = W.shape[1]
    for b_ in prange(batch):
        b = np.int64(b_)
        terms = np.zeros(n_out)
        for j in range(n_in):
            for m in range(max_in):
                tm_ = t[b, j, m]
                if not tm_ < t_max:
                    break  # ascending, +inf padded: the rest are at or after t_max
                acc = 0.0
                for i in range(n_out):
                    w = W[j, i]
                    d = D[j, i] if has_delays else 0.0
                    tm, ts = tau_mem[i], tau_syn[i]
                    live, a, bb, c, s = _arrival_terms(tm_, d, eval_time[b, i], tm, ts)
                    if not live:
                        continue
                    gb = g[b, i]
                    part_W[b, j, i] += c * gb
                    g_arrival = -lif.voltage_rate_scalar(c, bb, tm) * gb * w
                    acc += g_arrival
                    if has_delays:
                        part_D[b, j, i] += g_arrival
                    if want_tau:
                        _, c_tm, _, c_ts = lif.decay_param_grads_scalar(s, tm, ts, a, bb, c)
                        part_tm[b, i] += c_tm * (gb * w)
                        part_ts[b, i] += c_ts * (gb * w)
                    if kink_index[b, i] >= 0:
                        terms[i] += (bb - c) * w
                grad_t[b, j, m] = acc
        for i in range(n_out):
            k = kink_index[b, i]
            if k >= 0:
                slope[b, i] = terms[i] / tau_mem[i]
                grad_t[b, k // max_in, k % max_in] += g[b, i] * slope[b, i]
                if has_delays:
                    part_D[b, k // max_in, i] += g[b, i] * slope[b, i]


# Samples per call of _grads_by_sample: their per-sample gradient shares [samples, n_in, n_out] stay within about
# _PART_ENTRIES float64 entries (two such arrays with delays), or hold _MIN_BLOCK samples where that is more.
_PART_ENTRIES = 1 << 21
_MIN_BLOCK = 8


def max_grads(t, W, delays, tau_mem, tau_syn, t_max, eval_time, kink_index, g, time_constant_grads=False):
    """``_readout_numpy._max_grads`` compiled: ``(grad_W, grad_t, grad_D, grad_taus)``, the same contract. Sums in a
    fixed order (per sample, then over the samples in blocks of fixed size): the same bits on any number of
    threads."""
    batch, n_in, max_in = t.shape
    n_out = W.shape[1]
    has_delays = delays is not None
    D = np.ascontiguousarray(delays, dtype=np.float64) if has_delays else np.zeros((1, 1))
    t = np.ascontiguousarray(t, dtype=np.float64)
    W = np.ascontiguousarray(W, dtype=np.float64)
    tau_mem = np.ascontiguousarray(tau_mem, dtype=np.float64)
    tau_syn = np.ascontiguousarray(tau_syn, dtype=np.float64)
    eval_time = np.ascontiguousarray(eval_time, dtype=np.float64)
    kink_index = np.ascontiguousarray(kink_index, dtype=np.int64)
    g = np.ascontiguousarray(g, dtype=np.float64)
    grad_W = np.zeros((n_in, n_out))
    grad_D = np.zeros((n_in, n_out)) if has_delays else None
    g_tau_mem, g_tau_syn = np.zeros(n_out), np.zeros(n_out)
    slope = np.zeros((batch, n_out))
    grad_t = np.zeros(t.shape)
    # At least _MIN_BLOCK samples, so that wide layers keep several threads busy; never the thread count, which
    # would make the sums' order, and so their bits, depend on it.
    block = int(max(1, min(batch, _MIN_BLOCK), _PART_ENTRIES // max(1, n_in * n_out)))
    for b0 in range(0, batch, block):
        sl = slice(b0, min(batch, b0 + block))
        nb = sl.stop - b0
        part_W = np.zeros((nb, n_in, n_out))
        part_D = np.zeros((nb, n_in, n_out)) if has_delays else np.zeros((1, 1, 1))
        part_tm, part_ts = np.zeros((nb, n_out)), np.zeros((nb, n_out))
        _grads_by_sample(nb * n_in * max_in * n_out, t[sl], W, D, has_delays, tau_mem, tau_syn, float(t_max),
                         eval_time[sl], kink_index[sl], g[sl], bool(time_constant_grads), part_W, part_D, part_tm,
                         part_ts, slope[sl], grad_t[sl])
        grad_W += part_W.sum(axis=0)
        if has_delays:
            grad_D += part_D.sum(axis=0)
        if time_constant_grads:
            g_tau_mem += part_tm.sum(axis=0)
            g_tau_syn += part_ts.sum(axis=0)
    grad_taus = (g_tau_mem, g_tau_syn) if time_constant_grads else None
    return grad_W, grad_t, grad_D, grad_taus
