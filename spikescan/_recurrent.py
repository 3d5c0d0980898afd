"""Recurrent LIF layer on NumPy (DESIGN.md section 9): forward by a global event loop or by parallel windows, and
the exact backward (the adjoint of the event-driven ODE, in closed form between events).

Semantics. Besides its input queue (``_queue.build_queues``), neuron ``i`` of a sample receives ``R[k, i]`` at
``t + Dr[k, i]`` for every spike of neuron ``k`` at ``t`` (``Dr = 0`` without ``recurrent_delays``). A threshold
crossing exactly at an arrival's time happens before that arrival is applied (as for inputs), so a zero-delay
arrival follows every spike at its time, the sender's own reset included. Arrivals at one time are applied together
(input entries in queue order, then recurrent ones in spike order). Every spike propagates, recorded or not.

Forward (``forward``): the state of each neuron is kept at its own last event. ``method="sequential"``: per sample,
the earliest next event over all neurons (a threshold crossing inside a neuron's current gap, or an arrival) is
processed, one per sample per step, vectorised over samples. ``method="scan"``: per sample, every neuron looks
``chunk_size`` arrivals ahead from its state (prefix states by the associative scan, gap tests on every gap); the
earliest first crossing ``c`` over the sample's neurons, or the earliest end of a lookahead, ``h``, bounds what no
new recurrent arrival can change: arrivals it causes come at ``c + min(Dr)`` or later. Every neuron then applies its
arrivals before that horizon at once, and the crossings at ``c`` (and, with a positive minimum delay, every first
crossing before ``c + min(Dr)``) are committed. Both methods apply the same operations in the same order to each
neuron, so they agree to rounding; with ``R = 0`` they equal the feed-forward layer exactly.

Backward (``backward``): between events the adjoint ``(lV, lI)`` of a neuron's state runs back through the
transposed gap map and is continuous across arrivals (an arrival adds to ``I``); it jumps only at the neuron's own
spikes. For a spike at ``t`` with current ``I_s``, ``D = (I_s - threshold) / tau_mem`` (``dV/dt`` before it) and
``G`` the total derivative of the loss with respect to its time (its ``grad_times`` entry, plus every arrival it
causes, plus ``-lV(t+) I_s / tau_mem`` for the later reset): ``lV(t-) = -G / D``, ``lI(t-) = lI(t+)``, and the
threshold's gradient gains ``G / D``. An arrival of weight ``w`` at ``tau`` has ``d/dw = lI(tau+)`` and
``d/dtau = w (lI(tau+) / tau_syn - lV(tau+) / tau_mem)`` (the jump of the vector field it causes). Spikes are
walked last to first, vectorised over samples; the input arrivals, which feed nothing back, are done at once.
"""

from __future__ import annotations

import numpy as np

from ._queue import materialised
from ._types import RecurrentLog
from .neurons import lif


# ---------------------------------------------------------------------------------------------------------------
# Forward
# ---------------------------------------------------------------------------------------------------------------

class _State:
    """Per-sample event-loop state, arrays ``[batch, n_out]`` unless noted."""

    def __init__(self, batch, n_out, max_spikes, limit):
        self.V = np.zeros((batch, n_out))
        self.I = np.zeros((batch, n_out))
        self.t = np.zeros((batch, n_out))
        self.p = np.zeros((batch, n_out), np.int64)  # next input queue entry
        self.pend_t = np.full((batch, n_out, 4), np.inf)  # pending recurrent arrivals (slot order = spike order)
        self.pend_w = np.zeros((batch, n_out, 4))
        self.pend_m = np.zeros((batch, n_out, 4), np.int64)  # their spike's index in the log
        self.log_t = np.full((batch, 16), np.inf)
        self.log_k = np.full((batch, 16), -1, np.int64)
        self.log_I = np.zeros((batch, 16))
        self.n_log = np.zeros(batch, np.int64)
        self.times = np.full((batch, n_out, max_spikes), np.inf)
        self.events = np.full((batch, n_out, max_spikes), -1, np.int64)
        self.counts = np.zeros((batch, n_out), np.int64)
        self.last_spike = np.full((batch, n_out), -np.inf)
        self.max_spikes, self.limit = max_spikes, limit

    def _grow_log(self, need):
        size = self.log_t.shape[1]
        if need <= size:
            return
        new = max(need, 2 * size)
        pad = new - size
        self.log_t = np.pad(self.log_t, ((0, 0), (0, pad)), constant_values=np.inf)
        self.log_k = np.pad(self.log_k, ((0, 0), (0, pad)), constant_values=-1)
        self.log_I = np.pad(self.log_I, ((0, 0), (0, pad)))

    def _grow_pending(self):
        pad = self.pend_t.shape[2]
        self.pend_t = np.pad(self.pend_t, ((0, 0), (0, 0), (0, pad)), constant_values=np.inf)
        self.pend_w = np.pad(self.pend_w, ((0, 0), (0, 0), (0, pad)))
        self.pend_m = np.pad(self.pend_m, ((0, 0), (0, 0), (0, pad)))


def _runaway_error(b, k, n_out, t, current, limit, threshold):
    from ._lif_numpy import runaway_firing_error

    err = runaway_firing_error(b * n_out + k, n_out, t, current, limit, threshold)
    err.args = (err.args[0] + "; in a recurrent layer this is usually runaway self-excitation: excitatory "
                "recurrent_weights strong enough that every spike triggers more (scale them down, or add "
                "inhibition)",)
    return err


def _longest_connected_delay(recurrent_weights, recurrent_delays, xp):
    """``[n_out]``: each neuron's longest recurrent delay to a neuron it connects to (non-zero weight: no arrival is
    scheduled for the others; 0 when it connects to none)."""
    return xp.where(recurrent_weights != 0, recurrent_delays, 0.0).max(axis=1)


def lost_arrivals(log, recurrent_weights, recurrent_delays, xp):
    """``[batch, M]``: the logged spikes (``log``, a ``RecurrentLog``) whose arrival after their neuron's longest
    connected recurrent delay (``_longest_connected_delay``) overflows float64 (``+inf``, which every engine reads
    as no arrival)."""
    real = log.neurons >= 0
    if not recurrent_delays.size:
        return real & False
    longest = _longest_connected_delay(recurrent_weights, recurrent_delays, xp)
    with np.errstate(over="ignore"):
        return real & xp.isinf(log.times + longest[xp.maximum(log.neurons, 0)])


def arrival_range_error(log, lost, recurrent_weights, recurrent_delays, xp):
    """The error for the first spike of ``lost_arrivals``."""
    b, m = divmod(int(xp.argmax(lost.reshape(-1))), lost.shape[1])
    k, t = int(log.neurons[b, m]), float(log.times[b, m])
    longest = float(_longest_connected_delay(recurrent_weights, recurrent_delays, xp)[k])
    return ValueError(
        f"recurrent_delays: neuron {k} of sample {b} spikes at t={t!r}, and its longest recurrent delay to a "
        f"neuron it connects to ({longest!r}) takes that spike's arrival past the float64 range (at most "
        f"{float(np.finfo(np.float64).max):.4g}), where it would be lost; express the times in a larger unit")


def check_arrivals_in_range(log, recurrent_weights, recurrent_delays, xp):
    """Refuse a run in which a recurrent arrival overflowed float64 (``lost_arrivals``): one reduction."""
    if recurrent_delays is None:
        return
    lost = lost_arrivals(log, recurrent_weights, recurrent_delays, xp)
    if bool(lost.any()):
        raise arrival_range_error(log, lost, recurrent_weights, recurrent_delays, xp)


def _commit_spikes(st, sb, sk, t_sp, I_after, p, R, Dr, th, n_out):
    """Record spikes ``(sb, sk)`` at ``t_sp`` (at most one per sample per call), log them and schedule their
    recurrent arrivals (only non-zero weights: a zero weight changes nothing)."""
    from ._lif_numpy import unresolvable_spike_error

    stuck = t_sp <= st.last_spike[sb, sk]
    if stuck.any():
        j = int(np.argmax(stuck))
        raise unresolvable_spike_error(int(sb[j] * n_out + sk[j]), n_out, t_sp[j])
    over = st.counts[sb, sk] >= st.limit
    if over.any():
        j = int(np.argmax(over))
        raise _runaway_error(int(sb[j]), int(sk[j]), n_out, t_sp[j], I_after[j], st.limit, th[sk[j]])
    st.last_spike[sb, sk] = t_sp
    slot = st.counts[sb, sk]
    keep = slot < st.max_spikes
    st.times[sb[keep], sk[keep], slot[keep]] = t_sp[keep]
    st.events[sb[keep], sk[keep], slot[keep]] = p[keep]
    st.counts[sb, sk] += 1
    m = st.n_log[sb]
    st._grow_log(int(m.max(initial=-1)) + 1)
    st.log_t[sb, m], st.log_k[sb, m], st.log_I[sb, m] = t_sp, sk, I_after
    st.n_log[sb] += 1
    # Arrivals [len(sb), n_out] into each target's first free pending slot.
    w = R[sk]
    with np.errstate(over="ignore"):  # an arrival past the float64 range is refused after the run (lost_arrivals)
        arrive = np.broadcast_to(t_sp[:, None] + (0.0 if Dr is None else Dr[sk]), w.shape)
    rb, ri = np.nonzero(w != 0.0)
    if rb.size == 0:
        return
    free = np.isinf(st.pend_t[sb[rb], ri])
    while not free.any(axis=1).all():
        st._grow_pending()
        free = np.isinf(st.pend_t[sb[rb], ri])
    slot = np.argmax(free, axis=1)
    st.pend_t[sb[rb], ri, slot] = arrive[rb, ri]
    st.pend_w[sb[rb], ri, slot] = w[rb, ri]
    st.pend_m[sb[rb], ri, slot] = m[rb]


def _apply_arrivals(st, ab, ai, e, qt2, qi2, row, end, W, max_in, tm, ts):
    """Advance neurons ``(ab, ai)`` to their arrival time ``e`` (no crossing before it) and apply every arrival at
    ``e``: input entries in queue order, then pending recurrent ones in spike order."""
    a, b, c = lif.decay(e - st.t[ab, ai], tm[ai], ts[ai])
    V, I = a * st.V[ab, ai] + c * st.I[ab, ai], b * st.I[ab, ai]
    p = st.p[ab, ai]
    r = row[ab, ai]
    while True:
        on = (p < end[ab, ai]) & (qt2[r, np.minimum(p, qt2.shape[1] - 1)] == e)
        if not on.any():
            break
        idx = qi2[r[on], p[on]]
        I[on] = lif.input_jump(I[on], W[idx // max_in, ai[on]])
        p = p + on
    hit = st.pend_t[ab, ai] == e[:, None]
    if hit.any():
        # in spike order (slots are reused, so their order is not the spikes')
        order = np.argsort(np.where(hit, st.pend_m[ab, ai], np.iinfo(np.int64).max), axis=1, kind="stable")
        for q in range(int(hit.sum(axis=1).max())):
            slot = order[:, q]
            h = hit[np.arange(ab.size), slot]
            I[h] = lif.input_jump(I[h], st.pend_w[ab[h], ai[h], slot[h]])
        pt = st.pend_t[ab, ai]
        pt[hit] = np.inf
        st.pend_t[ab, ai] = pt
    st.V[ab, ai], st.I[ab, ai], st.t[ab, ai], st.p[ab, ai] = V, I, e, p


def _next_arrival(st, qt2, row, end):
    L1 = qt2.shape[1]
    nxt_in = np.where(st.p < end, qt2[row, np.minimum(st.p, L1 - 1)], np.inf)
    return np.minimum(nxt_in, st.pend_t.min(axis=2))


def _forward_sequential(qt2, qi2, row, end, W, max_in, tm, ts, th, R, Dr, max_spikes, solver, limit):
    batch, n_out = row.shape
    st = _State(batch, n_out, max_spikes, limit)
    live = np.ones(batch, bool)
    while live.any():
        nxt = _next_arrival(st, qt2, row, end)
        fires, s_hi = lif.fires_in_gap(st.V, st.I, nxt - st.t, tm, ts, th)
        fires &= live[:, None]
        cand = np.full((batch, n_out), np.inf)
        s_sol = np.zeros((batch, n_out))
        fb, fi = np.nonzero(fires)
        if fb.size:
            s = lif.solve_spike_time(st.V[fb, fi], st.I[fb, fi], s_hi[fb, fi], tm[fi], ts[fi], th[fi], solver)
            s_sol[fb, fi] = s
            cand[fb, fi] = np.minimum(st.t[fb, fi] + s, nxt[fb, fi])
        e_spk = cand.min(axis=1, initial=np.inf)  # (initial: a layer of no neuron has no event)
        e_in = np.where(live, nxt.min(axis=1, initial=np.inf), np.inf)
        spike = np.isfinite(e_spk) & (e_spk <= e_in)
        arrive = ~spike & np.isfinite(e_in)
        live &= spike | arrive
        if spike.any():
            hb, hk = np.nonzero(spike[:, None] & (cand == e_spk[:, None]))
            _spike_round(st, hb, hk, cand[hb, hk], s_sol[hb, hk], R, Dr, tm, ts, th, n_out)
        if arrive.any():
            ab, ai = np.nonzero(arrive[:, None] & (nxt == e_in[:, None]))
            _apply_arrivals(st, ab, ai, e_in[ab], qt2, qi2, row, end, W, max_in, tm, ts)
    return st


def _spike_round(st, hb, hk, t_sp, s, R, Dr, tm, ts, th, n_out):
    """Reset and commit the spikes ``(hb, hk)``; several in one sample go in neuron order, one per call."""
    _, b, _ = lif.decay(s, tm[hk], ts[hk])
    I_after = st.I[hb, hk] * b
    st.V[hb, hk], st.I[hb, hk] = lif.reset(th[hk], I_after)
    st.t[hb, hk] = t_sp
    # rank of each spike within its sample (hb ascends, hk ascends within it)
    first = np.r_[True, hb[1:] != hb[:-1]]
    start = np.maximum.accumulate(np.where(first, np.arange(hb.size), 0))
    rank = np.arange(hb.size) - start
    for r in range(int(rank.max(initial=-1)) + 1):
        on = rank == r
        _commit_spikes(st, hb[on], hk[on], t_sp[on], I_after[on], st.p[hb[on], hk[on]], R, Dr, th, n_out)


def _forward_scan(qt2, qi2, row, end, W, max_in, tm, ts, th, R, Dr, max_spikes, solver, chunk_size, limit):
    batch, n_out = row.shape
    st = _State(batch, n_out, max_spikes, limit)
    d_min = 0.0 if Dr is None else float(Dr[R != 0.0].min(initial=np.inf))
    if not np.isfinite(d_min):
        d_min = np.inf  # no recurrent connection: one window holds everything
    L1 = qt2.shape[1]
    live = np.ones(batch, bool)
    # The lookahead adapts between 4 and chunk_size: halved after a round that a spike ended (its far lanes were
    # wasted), doubled after one that a lookahead's end bounded. The results do not depend on it.
    K = min(int(chunk_size), 16)
    cols = np.arange(n_out)[None, :, None]
    while live.any():
        lanes = np.arange(K)
        # Lookahead: the next K arrivals of each neuron, input entries and pending recurrent ones merged in the
        # order the event loop applies them (time; at equal times inputs first, then recurrent ones in spike order).
        pos = st.p[:, :, None] + lanes  # [batch, n_out, K]
        ext_ok = pos < end[:, :, None]
        ext_t = np.where(ext_ok, qt2[row[:, :, None], np.minimum(pos, L1 - 1)], np.inf)
        idx = qi2[row[:, :, None], np.minimum(pos, L1 - 1)]
        ext_w = (np.where(ext_ok, W[np.where(ext_ok, idx, 0) // max_in, cols], 0.0) if W.shape[0]
                 else np.zeros(ext_t.shape))  # no input channel: only the queues' sentinels
        by_spike = np.argsort(st.pend_m, axis=2, kind="stable")
        order = np.take_along_axis(by_spike, np.argsort(np.take_along_axis(st.pend_t, by_spike, axis=2), axis=2,
                                                        kind="stable"), axis=2)[:, :, :K]
        pend_t = np.take_along_axis(st.pend_t, order, axis=2)
        ev_t = np.concatenate([ext_t, pend_t], axis=2)
        ev_w = np.concatenate([ext_w, np.take_along_axis(st.pend_w, order, axis=2)], axis=2)
        ev_slot = np.concatenate([np.full(ext_t.shape, -1), order], axis=2)  # -1: an input entry
        merged = np.argsort(ev_t, axis=2, kind="stable")[:, :, :K]
        ev_t, ev_w, ev_slot = (np.take_along_axis(x, merged, axis=2) for x in (ev_t, ev_w, ev_slot))
        ev_ok = np.isfinite(ev_t)
        n_ok = ev_ok.sum(axis=2)
        # Every arrival not examined comes at or after the K-th (the lookahead's end); none left: an open gap.
        look_end = np.where(n_ok == K, ev_t[:, :, K - 1], np.inf)
        # States after each arrival (plain loop over lanes: the same operations, in the same order, as applying the
        # arrivals one by one).
        Vs = np.empty((batch, n_out, K + 1))
        Is = np.empty((batch, n_out, K + 1))
        Ts = np.empty((batch, n_out, K + 1))
        V, I, t = st.V, st.I, st.t
        Vs[:, :, 0], Is[:, :, 0], Ts[:, :, 0] = V, I, t
        for g in range(K):
            ok = ev_ok[:, :, g]
            tg = np.where(ok, ev_t[:, :, g], t)
            a, b, c = lif.decay(tg - t, tm, ts)  # ties: decay(0) is the identity, exactly
            V = np.where(ok, a * V + c * I, V)
            I = np.where(ok, lif.input_jump(b * I, ev_w[:, :, g]), I)
            t = tg
            Vs[:, :, g + 1], Is[:, :, g + 1], Ts[:, :, g + 1] = V, I, t
        # Gap g runs from Ts[g] to arrival g's time, or to look_end for the gap after the last arrival.
        gap_end = np.concatenate([ev_t, np.full((batch, n_out, 1), np.inf)], axis=2)
        last = n_ok[:, :, None] == np.arange(K + 1)
        gap_end = np.where(last, look_end[:, :, None], gap_end)
        valid = np.arange(K + 1) <= n_ok[:, :, None]
        fires, s_hi = lif.fires_in_gap(Vs, Is, np.where(valid, gap_end - Ts, 0.0), tm[:, None], ts[:, None],
                                       th[:, None])
        fires &= valid & live[:, None, None]
        has = fires.any(axis=2)
        g0 = np.argmax(fires, axis=2)
        cand = np.full((batch, n_out), np.inf)
        s_sol = np.zeros((batch, n_out))
        fb, fi = np.nonzero(has)
        if fb.size:
            gg = g0[fb, fi]
            s = lif.solve_spike_time(Vs[fb, fi, gg], Is[fb, fi, gg], s_hi[fb, fi, gg], tm[fi], ts[fi], th[fi],
                                     solver)
            s_sol[fb, fi] = s
            cand[fb, fi] = np.minimum(Ts[fb, fi, gg] + s, gap_end[fb, fi, gg])
        # Horizon per sample: nothing before the earliest first crossing c, nor before the earliest lookahead end
        # h (a neuron unexamined past h might fire there), can be changed by arrivals not yet scheduled.
        c = np.where(live, cand.min(axis=1, initial=np.inf), np.inf)
        h = np.where(live, np.where(has, np.inf, look_end).min(axis=1, initial=np.inf), np.inf)
        done = live & ~np.isfinite(c) & ~np.isfinite(h)
        # The earliest spike still possible in the sample is at horizon = min(c, h), so arrivals not yet scheduled
        # come at horizon + d_min or later: every first crossing up to then is true (with d_min = 0, those at c
        # when c <= h).
        horizon = np.minimum(c, h)
        # Strictly before horizon + d_min (the crossings at the horizon itself aside): an arrival not yet scheduled
        # may land exactly there, and the event loop then tests the gap that ends at it, as the next round will.
        with np.errstate(over="ignore"):  # a horizon + d_min past float64 is +inf: no arrival can come before it
            reach = horizon + d_min
        commit = has & live[:, None] & ((cand < reach[:, None]) | (cand <= horizon[:, None]))
        # Arrivals applied: those before the horizon (at it too when the horizon is a lookahead end h < c: no
        # crossing anywhere up to h), never at or after the neuron's own first crossing; a committed neuron applies
        # everything before its crossing, even past the horizon (d_min > 0).
        # "Before the crossing" counts lanes, not times: the crossing lies in gap g0, after arrivals 0 .. g0 - 1,
        # and may round to the time of arrival g0 - 1 (a crossing right after an arrival, which caused it).
        at_h = (h < c)[:, None, None]
        lim = horizon[:, None, None]
        ahead = np.arange(K) < g0[:, :, None]  # the arrivals before each neuron's first crossing (with has)
        before = ((ev_t < lim) | (at_h & (ev_t == lim))) & ev_ok & live[:, None, None]
        before &= ahead | ~has[:, :, None]
        before |= commit[:, :, None] & ev_ok & ahead
        n_apply = before.sum(axis=2)  # a prefix of the merged arrivals
        nb, ni = np.nonzero(n_apply > 0)
        k = n_apply[nb, ni]
        st.V[nb, ni], st.I[nb, ni], st.t[nb, ni] = Vs[nb, ni, k], Is[nb, ni, k], Ts[nb, ni, k]
        st.p += (before & (ev_slot < 0)).sum(axis=2)
        ab, ai, ag = np.nonzero(before & (ev_slot >= 0))
        st.pend_t[ab, ai, ev_slot[ab, ai, ag]] = np.inf
        if commit.any():
            hb, hk = np.nonzero(commit)
            _spike_round(st, hb, hk, cand[hb, hk], s_sol[hb, hk], R, Dr, tm, ts, th, n_out)
        # A sample whose lookahead found no crossing and no end anywhere has applied all its arrivals: finished.
        live &= ~done
        spike_bound = bool(((c <= h) & np.isfinite(c))[live].mean() >= 0.5) if live.any() else False
        K = max(min(4, int(chunk_size)), K // 2) if spike_bound else min(int(chunk_size), 2 * K)
    return st


def forward(qt2, qi2, row, end, W, max_in, tau_mem, tau_syn, threshold, R, Dr, max_spikes, method, chunk_size,
            solver, limit):
    """The recurrent layer's forward on queues ``qt2, qi2 [rows, L1]`` (``row [batch, n_out]`` each neuron's queue
    row, ``end`` its number of real entries). Returns ``(times, events, counts, log)`` with ``times, events
    [batch, n_out, max_spikes]`` (``events``: input entries applied before the spike), ``counts [batch, n_out]`` and
    the ``RecurrentLog`` of every spike in commit order."""
    if method == "sequential":
        st = _forward_sequential(qt2, qi2, row, end, W, max_in, tau_mem, tau_syn, threshold, R, Dr, max_spikes,
                                 solver, limit)
    else:
        st = _forward_scan(qt2, qi2, row, end, W, max_in, tau_mem, tau_syn, threshold, R, Dr, max_spikes, solver,
                           chunk_size, limit)
    M = int(st.n_log.max(initial=0))
    # Time order (the scan commits a window's spikes neuron by neuron); simultaneous spikes keep their commit order.
    order = np.argsort(st.log_t[:, :M], axis=1, kind="stable")
    log = RecurrentLog(times=np.take_along_axis(st.log_t[:, :M], order, 1),
                       neurons=np.take_along_axis(st.log_k[:, :M], order, 1),
                       currents=np.take_along_axis(st.log_I[:, :M], order, 1), count=st.n_log.copy())
    return st.times, st.events, st.counts, log


# ---------------------------------------------------------------------------------------------------------------
# Backward
# ---------------------------------------------------------------------------------------------------------------

# Queue entries x neurons looked up at once by the input-gradient pass (about 200 bytes each).
_INPUT_POINTS_PER_GROUP = 1 << 21


def _spike_positions(log, n_out):
    """``pos [batch, M]``: the index of each logged spike among its neuron's spikes (log order is time order)."""
    batch, M = log.neurons.shape
    valid = np.arange(M)[None, :] < log.count[:, None]
    key = (np.arange(batch)[:, None] * (n_out + 1) + np.where(valid, log.neurons, n_out)).reshape(-1)
    order = np.argsort(key, kind="stable")
    sorted_key = key[order]
    start = np.r_[0, np.flatnonzero(sorted_key[1:] != sorted_key[:-1]) + 1]
    group_start = np.repeat(start, np.diff(np.r_[start, key.size]))
    pos = np.empty(key.size, np.int64)
    pos[order] = np.arange(key.size) - group_start
    return np.where(valid, pos.reshape(batch, M), -1)


class _Adjoint:
    """Each neuron's spike times and the adjoint just before each of them, with lookups of the adjoint at any time."""

    def __init__(self, log, counts, tau_mem, tau_syn):
        batch, n_out = counts.shape
        self.C = max(int(counts.max(initial=0)), 1)
        self.counts = counts
        self.pos = _spike_positions(log, n_out)
        self.spike_t = np.full((batch, n_out, self.C), np.inf)
        vb, vm = np.nonzero(self.pos >= 0)
        self.spike_t[vb, log.neurons[vb, vm], self.pos[vb, vm]] = log.times[vb, vm]
        self.lamV = np.zeros((batch, n_out, self.C))
        self.lamI = np.zeros((batch, n_out, self.C))
        self.tm, self.ts = tau_mem, tau_syn

    def next_spike(self, b, i, t):
        """Index of the first spike of neuron ``(b, i)`` strictly after ``t`` (its count when none); by bisection."""
        shape = np.broadcast_shapes(np.shape(b), np.shape(i), np.shape(t))
        lo = np.zeros(shape, np.int64)
        hi = np.broadcast_to(self.counts[b, i], shape).copy()
        for _ in range(int(np.ceil(np.log2(self.C + 1))) + 1):
            active = lo < hi
            if not active.any():
                break
            mid = (lo + hi) // 2
            right = active & (self.spike_t[b, i, np.minimum(mid, self.C - 1)] <= t)
            lo = np.where(right, mid + 1, lo)
            hi = np.where(active & ~right, mid, hi)
        return lo

    def after(self, b, i, t, c=None):
        """The adjoint ``(lV, lI)`` of neuron ``(b, i)`` just after time ``t`` (after arrivals at ``t``): the adjoint
        before its next spike ``c`` carried back through the transposed gap map; zero after its last spike."""
        if c is None:
            c = self.next_spike(b, i, t)
        has = c < self.counts[b, i]
        cc = np.minimum(c, self.C - 1)
        span = np.where(has, self.spike_t[b, i, cc] - t, 0.0)
        a, bb, ci = lif.decay(span, self.tm[i], self.ts[i])
        lV1, lI1 = self.lamV[b, i, cc], self.lamI[b, i, cc]
        return np.where(has, a * lV1, 0.0), np.where(has, ci * lV1 + bb * lI1, 0.0)


def backward(res, grad_times, input_times_grad, spike_grads=False):
    """Gradients of a recurrent layer; returns ``(grads dict, grazing (count, first flat neuron, time) or None)``.

    ``spike_grads``: also ``grads["spike_grads"] [batch, M]``, each logged spike's derivative through everything
    outside its own neuron (its ``grad_times`` entry plus the arrivals it causes), for ``time_constant_grads``."""
    res = materialised(res)  # a compiled forward's permutation format
    log = res.recurrent_log
    batch, n_in, max_in = res.input_shape
    n_out = res.weights.shape[1]
    counts = np.zeros((batch, n_out), np.int64)
    vb, vm = np.nonzero(np.arange(log.neurons.shape[1])[None, :] < log.count[:, None])
    np.add.at(counts, (vb, log.neurons[vb, vm]), 1)
    tm, ts, th = res.tau_mem, res.tau_syn, res.threshold
    R, Dr = res.recurrent_weights, res.recurrent_delays
    adj = _Adjoint(log, counts, tm, ts)
    S = grad_times.shape[2]
    g_all = np.asarray(grad_times, np.float64)
    grad_R = np.zeros((n_out, n_out))
    grad_Dr = None if Dr is None else np.zeros((n_out, n_out))
    grad_th = np.zeros(n_out)
    targets = np.arange(n_out)
    graze_first = None
    graze_count = 0
    G_out = np.zeros(log.times.shape) if spike_grads else None
    # Spikes last to first: everything a spike feeds (arrivals at or after it, the neurons' later spikes) is done.
    for m in range(log.neurons.shape[1] - 1, -1, -1):
        bs = np.flatnonzero(m < log.count)
        if bs.size == 0:
            continue
        k, t, Is, ck = log.neurons[bs, m], log.times[bs, m], log.currents[bs, m], adj.pos[bs, m]
        lV_after, lI_after = adj.after(bs, k, t, ck + 1)
        g = np.where(ck < S, g_all[bs, k, np.minimum(ck, S - 1)], 0.0)
        # Its arrivals at every target (zero weights too: their gradient is the adjoint there).
        tau_a = np.broadcast_to(t[:, None] + (0.0 if Dr is None else Dr[k]), (bs.size, n_out))
        lV_i, lI_i = adj.after(bs[:, None], targets[None, :], tau_a)
        g_arrival = lif.arrival_time_grad(R[k], lV_i, lI_i, tm, ts)
        np.add.at(grad_R, k, lI_i)
        if grad_Dr is not None:
            np.add.at(grad_Dr, k, g_arrival)
        G_outside = g + g_arrival.sum(axis=1)
        if G_out is not None:
            G_out[bs, m] = G_outside
        G = G_outside + lif.reset_time_grad(lV_after, Is, tm[k])
        D = lif.crossing_slope(Is, th[k], tm[k])
        graze = D <= 0.0
        if graze.any():
            j = int(np.argmax(graze))
            graze_count += int(graze.sum())
            cand = (float(t[j]), int(bs[j] * n_out + k[j]))
            graze_first = cand if graze_first is None or cand[0] < graze_first[0] else graze_first
        D = np.where(graze, 1.0, D)
        adj.lamV[bs, k, ck] = np.where(graze, 0.0, lif.spike_adjoint(G, D))
        adj.lamI[bs, k, ck] = lI_after
        np.add.at(grad_th, k, np.where(graze, 0.0, G / D))
    grads = _input_grads(res, adj, input_times_grad)
    grads.update(threshold=grad_th, recurrent_weights=grad_R, recurrent_delays=grad_Dr, spike_grads=G_out)
    grazing = None if graze_first is None else (graze_count, graze_first[1], graze_first[0])
    return grads, grazing


def _input_grads(res, adj, input_times_grad):
    """``d/dW``, ``d/d input_times`` and ``d/d delays`` from every input queue entry: an entry of weight ``w`` at
    ``tau`` for neuron ``i`` gives ``lI(tau+)`` and ``w (lI / tau_syn - lV / tau_mem)`` at ``tau+``."""
    batch, n_in, max_in = res.input_shape
    n_out = res.weights.shape[1]
    qt, qi, qend = res.queue_times, res.queue_index, res.queue_end
    Q, L1 = qt.shape[1], qt.shape[2]
    grad_W = np.zeros(n_in * n_out)
    grad_D = None if res.delays is None else np.zeros(n_in * n_out)
    grad_in = np.zeros(batch * n_in * max(max_in, 1)) if input_times_grad else None
    group = max(1, _INPUT_POINTS_PER_GROUP // max(batch * L1, 1))
    bb = np.arange(batch)[:, None, None]
    for start in range(0, n_out if n_in else 0, group):  # no input channel: no entry but the sentinels
        cols = np.arange(start, min(start + group, n_out))
        rows = cols if Q > 1 else np.zeros(cols.size, np.int64)
        tau = qt[:, rows, :]  # [batch, G, L1]
        idx = qi[:, rows, :]
        real = np.arange(L1)[None, None, :] < qend[:, rows][:, :, None]
        ii = np.broadcast_to(cols[None, :, None], tau.shape)
        lV, lI = adj.after(np.broadcast_to(bb, tau.shape), ii, np.where(real, tau, 0.0))
        j = np.where(real, idx, 0) // max(max_in, 1)
        w = res.weights[j, ii]
        g_arr = np.where(real, lif.arrival_time_grad(w, lV, lI, res.tau_mem[ii], res.tau_syn[ii]), 0.0)
        flat = (j * n_out + ii)[real]
        grad_W += np.bincount(flat, lI[real], minlength=n_in * n_out)
        if grad_D is not None:
            grad_D += np.bincount(flat, g_arr[real], minlength=n_in * n_out)
        if grad_in is not None:
            src = (np.broadcast_to(bb, tau.shape) * (n_in * max_in) + np.where(real, idx, 0))[real]
            grad_in += np.bincount(src, g_arr[real], minlength=grad_in.size)
    return {"weights": grad_W.reshape(n_in, n_out),
            "delays": None if grad_D is None else grad_D.reshape(n_in, n_out),
            "input_times": None if grad_in is None else grad_in[:batch * n_in * max_in].reshape(batch, n_in, max_in)}


# ---------------------------------------------------------------------------------------------------------------
# Time-constant gradients
# ---------------------------------------------------------------------------------------------------------------

def _bisect_left(sorted_rows, values, xp=np):
    """Per row, the number of entries of ``sorted_rows [..., L]`` (ascending, ``+inf`` padded) below each of
    ``values [..., C]`` (a fixed number of halvings: no host sync on CuPy)."""
    L = sorted_rows.shape[-1]
    lo = xp.zeros(values.shape, xp.int64)
    hi = xp.full(values.shape, L, xp.int64)
    for _ in range(int(np.ceil(np.log2(L + 1))) + 1):
        active = lo < hi
        mid = (lo + hi) // 2
        right = active & (xp.take_along_axis(sorted_rows, xp.minimum(mid, L - 1), axis=-1) < values)
        lo = xp.where(right, mid + 1, lo)
        hi = xp.where(active & ~right, mid, hi)
    return lo


def unrolled_layer(res, spike_grads, compiled=False):
    """The recurrent layer as a feed-forward one whose inputs include its own spikes, all held fixed.

    Each neuron's queue is its input entries merged with the recurrent arrivals it received (sources ``n_in + k``
    with weights ``recurrent_weights[k]``), in the forward's order (at equal times inputs first, then arrivals in
    spike order); every spike is recorded, with cotangent ``spike_grads`` (its derivative through everything outside
    its neuron). By the chain rule over spikes, this layer's gradients of anything that acts on one neuron's own
    dynamics (time constants, threshold, the weights into it) are the recurrent layer's.
    Returns ``(LIFResult, grad_times)`` for ``_lif_numpy.lif_backward``; ``compiled``: the queues by the compiled
    kernels (``unrolled_residuals``)."""
    from ._types import LIFResult

    log = res.recurrent_log
    batch = res.input_shape[0]
    n_out = res.weights.shape[1]
    M = log.times.shape[1]
    valid = np.arange(M)[None, :] < log.count[:, None]
    counts = np.zeros((batch, n_out), np.int64)
    vb, vm = np.nonzero(valid)
    np.add.at(counts, (vb, log.neurons[vb, vm]), 1)
    C = max(int(counts.max(initial=0)), 1)
    pos = _spike_positions(log, n_out)
    spike_t = np.full((batch, n_out, C), np.inf)
    g = np.zeros((batch, n_out, C))
    spike_t[vb, log.neurons[vb, vm], pos[vb, vm]] = log.times[vb, vm]
    g[vb, log.neurons[vb, vm], pos[vb, vm]] = spike_grads[vb, vm]
    return LIFResult(times=spike_t, counts=counts, residuals=unrolled_residuals(np, res, spike_t, compiled)), g


def unrolled_residuals(xp, res, spike_t, compiled=False):
    """``LIFResiduals`` of the unrolled layer (``unrolled_layer``) for any array module ``xp`` (NumPy, or CuPy for
    the CUDA backward, which has each neuron's spikes ``spike_t [batch, n_out, C]`` from its spike walk).

    ``spike_t``: every spike of each neuron, ascending, ``+inf`` padded. The inputs are the layer's ``n_in`` sources
    and its ``n_out`` neurons with one flat index per source (``input_shape (batch, n_in + n_out, 1)``: the weight
    row of each entry; the unrolled layer's input-time gradients mean nothing and are never asked for), weights
    ``[n_in + n_out, n_out]`` (the input weights over the recurrent ones). Memory: a few ``[batch, n_out, L1 + M]``
    arrays (``L1`` the input queue's length, ``M`` the longest spike log). ``compiled`` (NumPy only): the queues by
    the compiled kernels (``_lif_numba.unrolled_queues``: the same values, each row merged instead of sorted)."""
    from ._types import LIFResiduals

    if xp is np:
        res = materialised(res, compiled=compiled)  # a compiled forward's permutation format
    batch, n_in, _ = res.input_shape
    n_out = res.weights.shape[1]
    if compiled and xp is np:
        times, index, end = _unrolled_queues_compiled(res)
    else:
        times, index, end = _unrolled_queues(xp, res)
    # A spike lies after the entries before its time (an arrival at its exact time comes after it).
    event = xp.where(xp.isfinite(spike_t), _bisect_left(times, spike_t, xp), -1)
    W = xp.concatenate([res.weights, res.recurrent_weights], axis=0)
    return LIFResiduals(
        queue_times=times, queue_index=index, queue_end=end.astype(xp.int64), spike_times=spike_t,
        spike_event=event, weights=W, delays=None, tau_mem=res.tau_mem, tau_syn=res.tau_syn,
        threshold=res.threshold, threshold_is_scalar=False, input_shape=(batch, n_in + n_out, 1),
        input_dtype=np.dtype(np.float64), weights_dtype=np.dtype(np.float64), delays_dtype=None, solver=res.solver)


def _unrolled_queues_compiled(res):
    """``_unrolled_queues`` on NumPy by ``_lif_numba.unrolled_counts`` / ``unrolled_queues``."""
    from . import _lif_numba

    log = res.recurrent_log
    batch, n_in, max_in = res.input_shape
    n_out = res.weights.shape[1]
    qt, qi, qend = res.queue_times, res.queue_index, res.queue_end
    Q, L1 = qt.shape[1], qt.shape[2]
    qt2 = np.ascontiguousarray(qt.reshape(batch * Q, L1))
    qi2 = np.ascontiguousarray(qi.reshape(batch * Q, L1), dtype=np.int64)
    qe = np.ascontiguousarray(qend.reshape(-1), dtype=np.int64)
    log_t = np.ascontiguousarray(log.times, dtype=np.float64)
    log_k = np.ascontiguousarray(log.neurons, dtype=np.int64)
    log_n = np.ascontiguousarray(log.count, dtype=np.int64)
    R = np.ascontiguousarray(res.recurrent_weights, dtype=np.float64)
    has_rd = res.recurrent_delays is not None
    Dr = np.ascontiguousarray(res.recurrent_delays, dtype=np.float64) if has_rd else R
    work = batch * n_out * (L1 + log_t.shape[1])
    end = np.empty(batch * n_out, np.int64)
    _lif_numba.unrolled_counts(work, qe, Q, log_k, log_n, R, n_out, end)
    L = int(end.max()) + 1 if end.size else 1
    times = np.empty((batch, n_out, L))
    index = np.empty((batch, n_out, L), np.int64)
    _lif_numba.unrolled_queues(work, qt2, qi2, qe, Q, max(max_in, 1), n_in, log_t, log_k, log_n, R, Dr, has_rd,
                               n_out, times, index)
    return times, index, end.reshape(batch, n_out)


def _unrolled_queues(xp, res):
    """The unrolled layer's queues ``(times, index, end)``: ``[batch, n_out, L]`` ascending, source indices, real
    entries per row (see ``unrolled_residuals``)."""
    log = res.recurrent_log
    batch, n_in, max_in = res.input_shape
    n_out = res.weights.shape[1]
    M = log.times.shape[1]
    valid = xp.arange(M)[None, :] < log.count[:, None]
    # Input entries of each neuron [batch, n_out, L1] and the recurrent arrivals it received [batch, n_out, M].
    qt, qi, qend = res.queue_times, res.queue_index, res.queue_end
    rows = xp.arange(n_out) if qt.shape[1] > 1 else xp.zeros(n_out, xp.int64)
    L1 = qt.shape[2]
    ext_real = xp.arange(L1)[None, None, :] < qend[:, rows][:, :, None]
    ext_t = xp.where(ext_real, qt[:, rows, :], xp.inf)
    ext_idx = xp.where(ext_real, qi[:, rows, :].astype(xp.int64) // max(max_in, 1), -1)
    k = xp.where(valid, log.neurons, 0)
    w_rec = res.recurrent_weights[k]  # [batch, M, n_out]
    delay = 0.0 if res.recurrent_delays is None else res.recurrent_delays[k]
    rec_real = valid[:, :, None] & (w_rec != 0.0)  # the forward schedules no zero-weight arrival
    rec_t = xp.where(rec_real, log.times[:, :, None] + delay, xp.inf).transpose(0, 2, 1)
    rec_idx = xp.where(rec_real, (n_in + k)[:, :, None], -1).transpose(0, 2, 1)
    times = xp.concatenate([ext_t, rec_t], axis=2)
    index = xp.concatenate([ext_idx, rec_idx], axis=2)
    # Ascending time; stable (CuPy's argsort always is), so inputs stay before arrivals and arrivals in spike order
    # at equal times.
    order = xp.argsort(times, axis=2, kind="stable") if xp is np else xp.argsort(times, axis=2)
    times = xp.take_along_axis(times, order, axis=2)
    index = xp.take_along_axis(index, order, axis=2)
    end = xp.isfinite(times).sum(axis=2)
    L = int(end.max()) + 1 if end.size else 1  # a host sync on CuPy
    times = xp.concatenate([times, xp.full((batch, n_out, 1), xp.inf)], axis=2)[:, :, :L]
    index = xp.concatenate([index, xp.full((batch, n_out, 1), -1, index.dtype)], axis=2)[:, :, :L]
    return times, index, end
