"""Compiled CPU kernels of the recurrent LIF layer (Numba): ``_recurrent``'s global event loop and its backward as
scalar code, with the scalar closed forms, gap test and solvers of ``neurons.lif``.

Imported only when a recurrent layer runs with ``engine="numba"`` (or ``"auto"`` with Numba installed). Semantics
are those of ``_recurrent`` (its module docstring); this engine's forward is the event loop of
``_recurrent._forward_sequential`` whatever ``method`` says, run by ``_forward_sample``; where spikes arrive without
delay (no or all-zero recurrent delays) by one of two kernels with the loop's bits: ``_lanes_sample`` where a
sample's neurons share one input queue (every input entry reaches every neuron, so they walk the queue together:
one pass over the neurons per entry, a round of the loop per spike time; ``LANES`` switches it off), else
``_windows_sample`` (input delays: between two layer spikes the neurons are independent, so each walks its own queue
alone, up to the end of a time window or its first crossing; the earliest crossing in the window is the next round,
and its targets that walked past it walk again from a saved state; ``WINDOWS`` switches it off).

Forward (``forward``): ``prange`` over samples; per sample, the event loop with each neuron's state at its own last
event. Every neuron keeps its next event: its first threshold crossing inside its current gap (up to its next
arrival: the next entry of its input queue or the earliest of its pending recurrent arrivals), else that arrival.
A tournament tree over the neurons, ordered by (time, crossing before arrival, neuron index), gives the sample's
earliest. A round takes every crossing at that time (neuron order: reset, record, log, schedule the arrivals of
non-zero recurrent weights into each target's heap ordered by (time, spike index)), or every arrival at that time
(decay, input entries in queue order, then the pending recurrent ones in spike order; an input entry that arrives
alone, as with input delays, is a round of its own: the same states). Only the neurons whose
future changed (their state, or an arrival scheduled before their next one) recompute their next event, in the
same pass that applies a round's arrivals; a round of many neurons (an input entry of a layer without input delays
reaches all of them: one scan collects them) rebuilds the tree instead of updating it leaf by leaf. The gap test,
solver and state updates are those of the NumPy loop on the same gaps (and the shared decay table of
``_lif_numba`` where a gap runs from one queue entry to the next), so both give identical counts and times to
rounding (scalar vs vectorised forms), and with ``R = 0`` the compiled feed-forward layer's bits. Each sample's
``RecurrentLog`` goes into a buffer of a guessed length; samples that outgrow it run again with the length they
needed (the same results: the loop is deterministic); so does a sample that fills a neuron's heap of pending
arrivals (heaps are allocated outside the loop, so that Numba need not reference-count them on every iteration;
the next call starts from the largest heap of the last; heaps that would outgrow the memory the call may use
raise ``MemoryError`` instead). Stuck and runaway spikes stop the sample, leave a flag and
stop the other samples at their next round (the call raises anyway; a runaway sample costs its own time, not the
batch's); ``forward`` raises the errors of the NumPy path after the kernel (of the samples that stopped on their
own, the one whose error comes first in time).

Backward (``backward``): (1) ``prange`` over samples: the spike loop of ``_recurrent.backward`` per sample, spikes
last to first, the adjoint of each target at each arrival from the target's next spike strictly after it (a
pointer per neuron that moves back with the spikes, and a bisection from it with recurrent delays); the recurrent
weight, delay and threshold gradients go into per-sample partial sums (blocks of samples bound their memory),
added in sample order; ``spike_grads`` (for the time-constant gradients) on request. (2) ``prange`` over neurons,
samples in order: every input queue entry before the neuron's last spike (later ones carry no gradient), as
``_recurrent._input_grads``, into the neuron's columns of the weight and delay gradients, and the entry's
arrival-time gradient per (sample, neuron, entry) for a block of samples, summed into the input-time gradient by
``_lif_numba.scatter_input_grads`` (samples in parallel, neurons in order). With the shared decay table the
adjoint is walked back from each spike over its entries by the table's gap maps (no exponential per entry; the
same values to rounding). All sums have a fixed order: gradients are bit-identical for any number of threads.

Input queues with delays in the permutation format (``_queue.PermutedQueues``, what the compiled engine keeps) are
read as they are: the forward expands one sample's queues at a time (``_expand_sources``; one sample per thread in
flight), the backward one (sample, neuron) row at a time into the neuron's scratch row, the same bits as the
materialised queues; nothing holds the batch's expanded queues.

Performance note: Numba reference-counts the arrays passed to a helper with loops of its own, about 20 ns per call
and array even when inlined; the hot loops therefore call helpers with scalar arguments only (those with arrays,
inlined, run once per round of spikes).
"""

from __future__ import annotations

import numba
import numpy as np
from numba import prange

from . import _lif_numba, _memory
from ._lif_numba import _OK, _RUNAWAY, _STUCK
from ._types import RecurrentLog
from .neurons import lif

_ABORTED = 3  # the sample stopped because another one failed (its status is not reported)
_HEAP_FULL = 4  # a neuron's heap of pending recurrent arrivals was full: the sample runs again with larger heaps
_HEAP_MEMORY = 5  # ... and larger heaps would not fit in the memory the call may use: the call raises MemoryError
_HEAP_BYTES = 24  # per pending arrival: its time, its spike's log index, its weight

lif.register_numba()

_jit = _lif_numba.cached_njit()  # cache names carry the sources' hash
_pjit = _lif_numba._Parallel

# Kinds of a neuron's next event, in the order they happen at equal times.
_CROSS, _ARRIVE, _NONE = 0, 1, 2

# Bytes of the per-sample partial sums of the recurrent gradients, and of the per-(sample, neuron, queue entry)
# arrival-time gradients, held at once by the backward.
_PARTIAL_BYTES = 1 << 26
_ARRIVAL_BYTES = 1 << 26

# Per layer shape ``(n_out, with recurrent delays)``: the longest log the last completed call of that shape needed,
# the next one's first guess of the per-sample log length (another layer's could be far longer than this one needs,
# and the first run's logs are allocated for the whole batch).
_log_hints: dict = {}
# Per layer shape ``(n_out, with recurrent delays)``: the most pending recurrent arrivals one neuron held in the last
# call of that shape that completed, the next one's first heap capacity (a hint from another shape, or from a call
# that ran away, could ask a wide layer for far more memory than it needs).
_heap_hints: dict = {}
# One shared input queue per sample and no recurrent delays (or all zero): the neurons
# walk the queue together (``_lanes_sample``) instead of the general event loop. Off: the event loop (tests compare).
LANES = True
# Without recurrent delays (or all zero) but with a queue per neuron (input delays): the neurons walk their own
# queues in windows of about WINDOW_ENTRIES entries each (``_windows_sample``) instead of the general event loop.
# Off: the event loop (tests compare). The window changes the work, not the results.
WINDOWS = True
WINDOW_ENTRIES = 2.0
# In a window, when at least this share of the layer's (sender, target) pairs are connected (non-zero entries of
# R), each neuron stops its walk at the earliest crossing known when it walks: a round comes first there, and would
# most likely send it back to walk again from the round. Below it they walk on to the window's end, past rounds that
# most likely leave them alone. The work, not the results. CPU time of the forward on the SHD-like layer with input
# delays (one thread) at 0 / 10 / 30 / 50 / 70 / 100% connected pairs: stopping 96 / 116 / 138 / 159 / 175 / 198 ms,
# walking on 74 / 102 / 138 / 169 / 195 / 226 ms (stopping only the neurons most of the layer targets was worse than
# both at 50%: 176 ms).
WINDOW_STOP_DENSITY = 0.3
# The backward with shared time constants and no recurrent delays carries the targets' adjoints from spike to spike
# (``backward_spikes``'s ``carried``); False forms each from the target's next spike.
CARRIED = True
# The backward of permuted input queues (input delays) with one pair of time constants forms each entry's
# exponentials from tabulated factors (``backward_inputs``' ``rebased``, as ``_lif_numba.backward_closed``'s, under
# ``_lif_numpy.COMPILED_REBASED_CLOSED`` and its limits); False: two exponentials per entry.
REBASED = True


# ---------------------------------------------------------------------------------------------------------------
# Forward
# ---------------------------------------------------------------------------------------------------------------

@_jit
def _earlier(ti, ki, i, tj, kj, j):
    """Whether event ``(ti, ki)`` of neuron ``i`` comes before ``(tj, kj)`` of ``j``: by time, crossings before
    arrivals, neuron index."""
    if ti != tj:
        return ti < tj
    if ki != kj:
        return ki < kj
    return i < j


@_jit
def _tree_build(win, P, key_t, kind):
    for node in range(P - 1, 0, -1):
        left = win[2 * node]
        right = win[2 * node + 1]
        win[node] = left if _earlier(key_t[left], kind[left], left, key_t[right], kind[right], right) else right


@_lif_numba.cached_njit(inline="always")  # scalar arguments only: inlined without reference counting
def _next_event(v0, i0, t0, t_next, a, b, c, tau_mem, tau_syn, threshold, solver):
    """``(time, kind, s)`` of a neuron's next event from ``(v0, i0)`` at ``t0``: the first crossing inside the gap up
    to its next arrival ``t_next`` (decay ``(a, b, c)`` over it), by the NumPy loop's gap test and solve on the same
    gap, at ``min(t0 + s, t_next)``; else that arrival."""
    if not lif.quiet_gap_scalar(v0, i0, a, b, c, threshold):
        gap = t_next - t0
        fires, s_hi = lif.fires_in_gap_scalar(v0, i0, gap, tau_mem, tau_syn, threshold)
        if fires:
            s = lif.solve_spike_time_scalar(v0, i0, s_hi, tau_mem, tau_syn, threshold, solver)
            return min(t0 + s, t_next), _CROSS, s
    return t_next, _ARRIVE, 0.0


@_jit
def _forward_sample(b, slot, qt, src, qe, Q, qbase, W, tm_arr, ts_arr, th_arr, R, Dr, has_dr, solver, limit, table,
                    use_table, times, events, counts, log_t, log_k, log_I, n_log_out, status, status_at, abort, ht,
                    hm, hw, heap_most):
    """The event loop of sample ``b`` (its queues: rows ``qbase + (i if Q > 1 else 0)`` of ``qt``, ``src``, ``qe`` and
    ``table``; ``src``: the source input of every queue entry, the row of ``W`` it adds): its
    rows of ``times``, ``events``, ``counts``; its log in row ``slot`` of
    ``log_*`` (as far as it fits; ``n_log_out[slot]`` the full length); ``status[b] = (code, neuron)`` and
    ``status_at[b] = (time, current)`` of a stuck or runaway spike. Such a spike also sets ``abort[0]``, which every
    sample's loop reads once per round and stops on (``_ABORTED``): the call raises anyway, so the other samples
    need not run on (a recurrent layer that runs away takes about ``n_out**2 * limit`` updates per sample).

    ``ht, hm, hw [n_out, capacity]``: room for each neuron's heap of pending recurrent arrivals. A push into a full
    heap stops the sample with ``_HEAP_FULL`` (no abort), and the caller runs it again with larger heaps: growing
    them here would reassign the arrays inside the loop, which makes Numba reference-count them on every iteration
    (measured: a third of the loop's time). ``heap_most[slot]``: the largest heap the sample held.

    Written as one loop body: the hot steps take no helper with array arguments (Numba reference-counts arrays
    passed to a helper with loops, twice per array and call, which cost more than the arithmetic here); the round's
    spikes are recorded by ``_fire_group``, which the lanes and the windows share, inlined."""
    n_out = R.shape[0]
    max_spikes = times.shape[2]
    for i in range(n_out):
        counts[b, i] = 0
        for c in range(max_spikes):
            times[b, i, c] = np.inf
            events[b, i, c] = -1
    rows = np.empty(n_out, np.int64)
    for i in range(n_out):
        rows[i] = qbase + (i if Q > 1 else 0)
    # Per neuron: state at its own last event, next arrival, next event (key, kind; slot n_out pads the tree), the
    # solved crossing and the decay over the gap up to the next arrival.
    V = np.zeros(n_out)
    I = np.zeros(n_out)
    T = np.zeros(n_out)
    p = np.zeros(n_out, np.int64)
    nx = np.empty(n_out)
    key_t = np.full(n_out + 1, np.inf)
    kind = np.full(n_out + 1, _NONE, np.int64)
    s_sol = np.zeros(n_out)
    da = np.zeros(n_out)
    db = np.zeros(n_out)
    dc = np.zeros(n_out)
    last = np.full(n_out, -np.inf)
    cnt = np.zeros(n_out, np.int64)
    flag = np.zeros(n_out, np.bool_)
    todo = np.arange(n_out)  # neurons whose next event must be recomputed
    group = np.empty(n_out, np.int64)
    # Pending recurrent arrivals: a binary heap per neuron ordered by (time, spike's log index).
    hcap = ht.shape[1]
    hn = np.zeros(n_out, np.int64)
    most = 0
    # Tournament tree: win[node] the earliest neuron below node; leaves at P + i.
    P = 1
    log_p = 1
    while P < n_out:
        P *= 2
        log_p += 1
    bulk_at = max(4, P // 16)
    win = np.empty(2 * P, np.int64)
    for i in range(P):
        win[P + i] = i if i < n_out else n_out
    nd = n_out
    rebuild = True
    arriving = False  # the neurons to recompute first apply their arrivals at e
    # The last gap decay computed, with its gap and time constants: a spike reaches every neuron it connects to at
    # once, and without delays they share their last event and their next one, so most neurons of a round take it.
    m_gap = -1.0
    m_tm = m_ts = m_a = m_b = m_c = 0.0
    e = 0.0
    n_log = 0
    code = _OK
    while True:
        if abort[0] != 0:  # another sample stopped the call: its error is raised
            code = _ABORTED
            break
        # Next events of the neurons whose future changed; after an arrival round, its arrivals first: decay to e,
        # input entries at e in queue order, then pending recurrent arrivals in spike order.
        for q in range(nd):
            i = todo[q]
            flag[i] = False
            row = rows[i]
            if arriving:
                v = V[i]
                cur = I[i]
                V[i] = da[i] * v + dc[i] * cur
                cur = db[i] * cur
                k = p[i]
                end = qe[row]
                while k < end and qt[row, k] == e:
                    cur = lif.input_jump_scalar(cur, W[src[row, k], i])
                    k += 1
                p[i] = k
                while hn[i] > 0 and ht[i, 0] == e:
                    cur = lif.input_jump_scalar(cur, hw[i, 0])
                    # pop the heap's top
                    n = hn[i] - 1
                    hn[i] = n
                    t_l = ht[i, n]
                    m_l = hm[i, n]
                    w_l = hw[i, n]
                    h = 0
                    while True:
                        ch = 2 * h + 1
                        if ch >= n:
                            break
                        if ch + 1 < n and (ht[i, ch + 1] < ht[i, ch]
                                           or (ht[i, ch + 1] == ht[i, ch] and hm[i, ch + 1] < hm[i, ch])):
                            ch += 1
                        if ht[i, ch] < t_l or (ht[i, ch] == t_l and hm[i, ch] < m_l):
                            ht[i, h] = ht[i, ch]
                            hm[i, h] = hm[i, ch]
                            hw[i, h] = hw[i, ch]
                            h = ch
                        else:
                            break
                    if n > 0:
                        ht[i, h] = t_l
                        hm[i, h] = m_l
                        hw[i, h] = w_l
                I[i] = cur
                T[i] = e
            k = p[i]
            t_in = qt[row, k]  # +inf at the end of the queue
            t_next = t_in
            if hn[i] > 0 and ht[i, 0] < t_next:
                t_next = ht[i, 0]
            nx[i] = t_next
            t0 = T[i]
            if use_table and t_next == t_in and k < qe[row] and t0 == (qt[row, k - 1] if k > 0 else 0.0):
                a, bb, c = table[row, k, 0], table[row, k, 1], table[row, k, 2]  # the same gap: the same bits
            elif t_next - t0 == m_gap and tm_arr[i] == m_tm and ts_arr[i] == m_ts:
                a, bb, c = m_a, m_b, m_c  # the gap and time constants of the neuron before: the same bits
            else:
                m_gap, m_tm, m_ts = t_next - t0, tm_arr[i], ts_arr[i]
                a, bb, c = lif.decay_scalar(m_gap, m_tm, m_ts)
                m_a, m_b, m_c = a, bb, c
            da[i] = a
            db[i] = bb
            dc[i] = c
            key_t[i], kind[i], s_sol[i] = _next_event(V[i], I[i], t0, t_next, a, bb, c, tm_arr[i], ts_arr[i], th_arr[i],
                                                      solver)
        if rebuild or nd * log_p > P:
            _tree_build(win, P, key_t, kind)
        else:
            for q in range(nd):
                node = (P + todo[q]) >> 1
                while node >= 1:
                    left = win[2 * node]
                    right = win[2 * node + 1]
                    win[node] = left if _earlier(key_t[left], kind[left], left, key_t[right], kind[right],
                                                 right) else right
                    node >>= 1
        arriving = False
        j = win[1]
        e = key_t[j]
        if e == np.inf:
            break
        # The round: every neuron with the earliest (time, kind), in neuron order; an arrival round of many neurons
        # takes the rest by one pass over the neurons and rebuilds the tree.
        kd = kind[j]
        ng = 0
        # Without input delays an input entry reaches every neuron whose next event it is: scan at once.
        rebuild = kd == _ARRIVE and Q == 1 and qt[rows[j], p[j]] == e
        while not rebuild:
            j = win[1]
            if key_t[j] != e or kind[j] != kd:
                break
            group[ng] = j
            ng += 1
            key_t[j] = np.inf
            kind[j] = _NONE
            if kd == _ARRIVE and ng == 1 and not (hn[j] > 0 and ht[j, 0] == e):
                # An input entry alone (with input delays, each neuron's own times): a round of its own, whose
                # recomputation below updates the neuron's path once (taking it off the tree first would be a
                # second update per arrival). Any other neuron arriving at e is the next round's: arrivals change
                # only their own neuron, and a crossing found at e comes first either way. A spike's recurrent
                # arrivals reach many neurons at once: those rounds gather all of them (and rebuild the tree).
                break
            if kd == _ARRIVE and ng >= bulk_at:
                rebuild = True
                break
            node = (P + j) >> 1
            while node >= 1:
                left = win[2 * node]
                right = win[2 * node + 1]
                win[node] = left if _earlier(key_t[left], kind[left], left, key_t[right], kind[right], right) \
                    else right
                node >>= 1
        if rebuild:
            for i in range(n_out):
                if kind[i] == _ARRIVE and key_t[i] == e:
                    group[ng] = i
                    ng += 1
        nd = 0
        if kd == _ARRIVE:  # applied with the next events' recomputation, in one pass
            for q in range(ng):
                todo[q] = group[q]
            nd = ng
            arriving = True
            continue
        # Spikes at e: reset all, then record, log and check each in neuron order; then schedule each spike's
        # arrivals (log index first + q: the heaps pop by (time, log index), whatever the order of the pushes).
        first = n_log
        code, n_log = _fire_group(b, slot, e, group, ng, -1, p, V, I, T, s_sol, tm_arr, ts_arr, th_arr, last, cnt,
                                  limit, times, events, log_t, log_k, log_I, n_log, status, status_at)
        for q in range(ng):
            k = group[q]
            flag[k] = True
            todo[nd] = k
            nd += 1
        for q in range(ng if code == _OK else 0):
            k = group[q]
            m = first + q
            for r in range(n_out):
                w = R[k, r]
                if w == 0.0:
                    continue  # changes nothing: not scheduled
                tau = e + Dr[k, r] if has_dr else e
                if hn[r] == hcap:
                    code = _HEAP_FULL
                    break
                # push (tau, m, w) onto r's heap
                h = hn[r]
                hn[r] = h + 1
                most = max(most, h + 1)
                while h > 0:
                    parent = (h - 1) >> 1
                    pt = ht[r, parent]
                    if pt < tau or (pt == tau and hm[r, parent] < m):
                        break
                    ht[r, h] = pt
                    hm[r, h] = hm[r, parent]
                    hw[r, h] = hw[r, parent]
                    h = parent
                ht[r, h] = tau
                hm[r, h] = m
                hw[r, h] = w
                if tau < nx[r] and not flag[r]:  # its next arrival moves earlier
                    flag[r] = True
                    todo[nd] = r
                    nd += 1
            if code != _OK:
                break
        if code != _OK:
            if code != _HEAP_FULL:
                abort[0] = 1
            break
    status[b, 0] = code
    heap_most[slot] = most
    for i in range(n_out):
        counts[b, i] = cnt[i]
    n_log_out[slot] = n_log


# A round of crossings in ``_lanes_sample`` and ``_windows_sample``: helpers with array arguments, once per round
# (not per queue entry), inlined into Numba's IR (as calls they took about 3% of the lanes forward's time).
_round_jit = _lif_numba.cached_njit(inline="always")


@_round_jit
def _earliest(arm, n_arm, key, listed):
    """``(e, n_arm)``: the earliest crossing ``e`` (``+inf`` if none) of the neurons listed in ``arm[:n_arm]``
    (``key``: each neuron's crossing, ``+inf`` once disarmed), and the list's new length: disarmed neurons leave it
    (and ``listed``), the others keep their order."""
    e = np.inf
    m = 0
    for q in range(n_arm):
        i = arm[q]
        if key[i] == np.inf:  # disarmed since listed
            listed[i] = False
            continue
        arm[m] = i
        m += 1
        if key[i] < e:
            e = key[i]
    return e, m


@_round_jit
def _take_group(arm, n_arm, key, listed, group, e):
    """``(ng, n_arm)``: the round's neurons, those of ``arm[:n_arm]`` whose crossing ``key`` is ``e``, into
    ``group[:ng]`` in neuron order, disarmed (``key`` ``+inf``) and off the list, whose new length is ``n_arm``."""
    ng = 0
    m = 0
    for q in range(n_arm):
        i = arm[q]
        if key[i] == e:
            h = ng  # insertion in neuron order
            while h > 0 and group[h - 1] > i:
                group[h] = group[h - 1]
                h -= 1
            group[h] = i
            ng += 1
            key[i] = np.inf
            listed[i] = False
        else:
            arm[m] = i
            m += 1
    return ng, m


@_round_jit
def _fire_group(b, slot, e, group, ng, k, p, V, I, T, s_sol, tm_arr, ts_arr, th_arr, last, cnt, limit, times, events,
                log_t, log_k, log_I, n_log, status, status_at):
    """``(code, n_log)``: the spikes at ``e`` of the neurons ``group[:ng]`` (in neuron order) of sample ``b``, as the
    event loop commits them: reset all (from the crossing's offset ``s_sol``), then record, log and check each:
    ``_STUCK`` (no later than the neuron's ``last`` spike) or ``_RUNAWAY`` (its ``cnt`` at ``limit``) stops at that
    neuron with ``status[b, 1]`` and ``status_at[b]`` set; else ``_OK``. The spike's event (queue entries applied
    before it, into ``events``) is ``k`` when ``p`` is ``None`` (one shared queue), else the neuron's own ``p[j]``.
    ``n_log``: the sample's spikes logged so far (row ``slot`` of ``log_*``, as far as it holds them)."""
    max_spikes = times.shape[2]
    cap = log_t.shape[1]
    for q in range(ng):
        j = group[q]
        _, b2, _ = lif.decay_scalar(s_sol[j], tm_arr[j], ts_arr[j])
        V[j], I[j] = lif.reset_scalar(th_arr[j], I[j] * b2)
        T[j] = e
    for q in range(ng):
        j = group[q]
        if e <= last[j]:
            status[b, 1] = j
            status_at[b, 0] = e
            return _STUCK, n_log
        if cnt[j] >= limit:
            status[b, 1] = j
            status_at[b, 0] = e
            status_at[b, 1] = I[j]
            return _RUNAWAY, n_log
        last[j] = e
        cj = cnt[j]
        if cj < max_spikes:
            times[b, j, cj] = e
            if p is None:
                events[b, j, cj] = k
            else:
                events[b, j, cj] = p[j]
        cnt[j] = cj + 1
        if n_log < cap:
            log_t[slot, n_log] = e
            log_k[slot, n_log] = j
            log_I[slot, n_log] = I[j]
        n_log += 1
    return _OK, n_log


@_round_jit
def _mark_group(group, ng, mark, changed):
    """``ng``: the round's neurons ``group[:ng]`` marked (``mark``) and listed first in ``changed``, the neurons
    whose state the round changed (its targets follow)."""
    for q in range(ng):
        j = group[q]
        mark[j] = True
        changed[q] = j
    return ng


@_round_jit
def _add_spikes(group, ng, r_ptr, r_col, r_val, I):
    """The round's spikes (``group[:ng]``) reach their targets, already at the spikes' time: each adds its weights
    (``R``'s non-zero entries by rows, ``r_ptr, r_col, r_val``) to the targets' currents ``I``, in spike order."""
    for q in range(ng):
        j = group[q]
        for x in range(r_ptr[j], r_ptr[j + 1]):
            r = r_col[x]
            I[r] = lif.input_jump_scalar(I[r], r_val[x])


@_jit
def _lanes_sample(b, slot, qt, src, qe, row, W, tm_arr, ts_arr, shared, th_arr, R, r_ptr, r_col, r_val, solver, limit,
                  table, times, events, counts, log_t, log_k, log_I, n_log_out, status, status_at, abort):
    """``_forward_sample`` for a layer whose neurons share one input queue per sample (row ``row`` of ``qt``, ``src``,
    ``qe``; ``table`` when ``shared``: one pair of time constants), without recurrent delays: every input entry then
    reaches every neuron, so all neurons start each gap between consecutive entries at the same time, and a spike's
    recurrent arrivals land at the spike's own time. The neurons walk the queue together, as the feed-forward lanes do
    (``_lif_numba.forward_lanes``): one pass over the neurons per entry applies it and runs the exact cheap gap test on
    the next gap with the table's decay (each neuron's own, with time constants of its own); only the neurons it cannot
    clear solve for their crossing (the armed ones, a short list). Inside a gap the earliest crossing(s) make a round of
    the event loop: reset, record, log (neuron order); then, before the entry's time, the arrivals at that time (each
    target, from ``R``'s non-zero entries ``r_ptr, r_col, r_val`` by rows, decays to it and adds the spikes' weights in
    spike order), and the neurons whose state changed test the rest of the gap again; a crossing at the entry's own time
    leaves its arrivals to the entry's round, after the input entries, as the event loop orders them. The same
    operations on the same values as the event loop (the same bits in every comparison run), except that a target of a
    recurrent arrival is not tested for a crossing inside the sub-gap before it (the test of its whole gap put its first
    crossing after the arrival); no heap, no tournament tree."""
    n_out = R.shape[0]
    max_spikes = times.shape[2]
    for i in range(n_out):
        for c in range(max_spikes):
            times[b, i, c] = np.inf
            events[b, i, c] = -1
    V = np.zeros(n_out)
    I = np.zeros(n_out)
    T = np.zeros(n_out)  # the neuron's last event; t_prev (the gap's start) unless a round inside the gap moved it
    key = np.full(n_out, np.inf)  # the neuron's crossing inside its current gap, +inf if none
    s_sol = np.zeros(n_out)
    da = np.empty(n_out)  # decay over [T, t_k]: of a neuron with T != t_prev, or of every neuron if not shared
    db = np.empty(n_out)
    dc = np.empty(n_out)
    if not shared:  # the first gap, [0, t_0], from rest
        for i in range(n_out):
            da[i], db[i], dc[i] = lif.decay_scalar(qt[row, 0], tm_arr[i], ts_arr[i])
    last = np.full(n_out, -np.inf)
    cnt = np.zeros(n_out, np.int64)
    arm = np.empty(n_out, np.int64)  # neurons with a crossing in their gap (and stale entries: listed, not armed)
    listed = np.zeros(n_out, np.bool_)
    hit = np.zeros(n_out, np.bool_)
    mark = np.zeros(n_out, np.bool_)
    changed = np.empty(n_out, np.int64)
    group = np.empty(n_out, np.int64)
    deferred = np.empty(n_out, np.int64)  # spikes at the entry's own time: their arrivals join its round
    end = qe[row]
    n_arm = 0
    n_log = 0
    code = _OK
    k = 0
    t_prev = 0.0
    # Every neuron starts at rest, V = I = 0 below its threshold: no crossing before the first entry.
    while True:
        if abort[0] != 0:  # another sample stopped the call: its error is raised
            code = _ABORTED
            break
        t_k = qt[row, k]  # +inf at k == end: the open gap after the last input
        n_def = 0
        moved = False  # a round inside the gap moved some neuron's last event past t_prev
        m_gap = -1.0
        m_tm = m_ts = m_a = m_b = m_c = 0.0
        while n_arm > 0:  # rounds of crossings inside the gap, earliest first
            e, n_arm = _earliest(arm, n_arm, key, listed)
            if n_arm == 0:
                break
            ng, n_arm = _take_group(arm, n_arm, key, listed, group, e)
            # reset all, then record, log and check each in neuron order
            code, n_log = _fire_group(b, slot, e, group, ng, k, None, V, I, T, s_sol, tm_arr, ts_arr, th_arr, last,
                                      cnt, limit, times, events, log_t, log_k, log_I, n_log, status, status_at)
            if code != _OK:
                break
            moved = True
            n_chg = _mark_group(group, ng, mark, changed)
            if e == t_k:  # arrivals at the entry's time come after its input entries: in its round below
                for q in range(ng):
                    deferred[n_def + q] = group[q]
                n_def += ng
            else:  # the arrival round at e: each target decays to e, then adds the spikes in spike order
                for q in range(ng):
                    j = group[q]
                    for p in range(r_ptr[j], r_ptr[j + 1]):
                        r = r_col[p]
                        if not hit[r]:
                            hit[r] = True
                            gap = e - T[r]
                            if gap != m_gap or tm_arr[r] != m_tm or ts_arr[r] != m_ts:
                                m_gap, m_tm, m_ts = gap, tm_arr[r], ts_arr[r]
                                m_a, m_b, m_c = lif.decay_scalar(gap, m_tm, m_ts)
                            v = V[r]
                            V[r] = m_a * v + m_c * I[r]
                            I[r] = m_b * I[r]
                            T[r] = e
                            if not mark[r]:
                                mark[r] = True
                                changed[n_chg] = r
                                n_chg += 1
                _add_spikes(group, ng, r_ptr, r_col, r_val, I)
            # The rest of the gap, [e, t_k], for every neuron whose state changed: spikes and targets.
            r_tm = r_ts = -1.0
            a2 = b2 = c2 = 0.0
            for q in range(n_chg):
                i = changed[q]
                mark[i] = False
                hit[i] = False
                key[i] = np.inf  # a target's crossing moves with its arrivals
                tm, ts = tm_arr[i], ts_arr[i]
                if tm != r_tm or ts != r_ts:
                    r_tm, r_ts = tm, ts
                    a2, b2, c2 = lif.decay_scalar(t_k - e, tm, ts)
                da[i] = a2
                db[i] = b2
                dc[i] = c2
                t_x, kind_x, s_x = _next_event(V[i], I[i], e, t_k, a2, b2, c2, tm, ts, th_arr[i], solver)
                if kind_x == _CROSS:
                    s_sol[i] = s_x
                    key[i] = t_x
                    if not listed[i]:
                        listed[i] = True
                        arm[n_arm] = i
                        n_arm += 1
        if code != _OK or k == end:
            break
        # The entry's round at t_k: every neuron decays to it, adds the input entries at t_k in queue order, then
        # the recurrent arrivals of spikes at t_k in spike order; and, in the same pass, the gap test of its next
        # gap [t_k, t_next] with the table's decay (all neurons start it at t_k).
        k2 = k
        while k2 < end and qt[row, k2] == t_k:
            k2 += 1
        t_next = qt[row, k2]
        a = bb = c = a3 = b3 = c3 = 0.0
        if shared:  # (without, the table is a dummy)
            a, bb, c = table[row, k, 0], table[row, k, 1], table[row, k, 2]
            a3, b3, c3 = table[row, k2, 0], table[row, k2, 1], table[row, k2, 2]
        if moved or k2 != k + 1 or n_def > 0 or not shared:
            for i in range(n_out):
                v = V[i]
                cur = I[i]
                if shared and T[i] == t_prev:
                    V[i] = a * v + c * cur
                    cur = bb * cur
                else:
                    V[i] = da[i] * v + dc[i] * cur
                    cur = db[i] * cur
                for kk in range(k, k2):
                    cur = lif.input_jump_scalar(cur, W[src[row, kk], i])
                for q in range(n_def):
                    w = R[deferred[q], i]
                    if w != 0.0:
                        cur = lif.input_jump_scalar(cur, w)
                I[i] = cur
                T[i] = t_k
        else:  # no round in the gap: every neuron at t_prev, one input entry (the loop the compiler vectorises)
            s_k = src[row, k]
            for i in range(n_out):
                v = V[i]
                cur = I[i]
                V[i] = a * v + c * cur
                I[i] = lif.input_jump_scalar(bb * cur, W[s_k, i])
                T[i] = t_k
        # The next gap's test; after every round all keys are +inf and nothing is listed.
        n_arm = 0
        if shared:
            for i in range(n_out):
                if not lif.quiet_gap_scalar(V[i], I[i], a3, b3, c3, th_arr[i]):
                    arm[n_arm] = i
                    n_arm += 1
        else:  # each neuron's decay over the next gap (the same bits for equal time constants: computed once)
            r_tm = r_ts = -1.0
            for i in range(n_out):
                tm, ts = tm_arr[i], ts_arr[i]
                if tm != r_tm or ts != r_ts:
                    r_tm, r_ts = tm, ts
                    a3, b3, c3 = lif.decay_scalar(t_next - t_k, tm, ts)
                da[i] = a3
                db[i] = b3
                dc[i] = c3
                if not lif.quiet_gap_scalar(V[i], I[i], a3, b3, c3, th_arr[i]):
                    arm[n_arm] = i
                    n_arm += 1
        m = 0
        for q in range(n_arm):  # the neurons the quiet test could not clear: the event loop's next event
            i = arm[q]
            if shared:
                a4, b4, c4 = a3, b3, c3
            else:
                a4, b4, c4 = da[i], db[i], dc[i]
            t_x, kind_x, s_x = _next_event(V[i], I[i], t_k, t_next, a4, b4, c4, tm_arr[i], ts_arr[i], th_arr[i],
                                           solver)
            if kind_x == _CROSS:
                s_sol[i] = s_x
                key[i] = t_x
                listed[i] = True
                arm[m] = i
                m += 1
        n_arm = m
        k = k2
        t_prev = t_k
    if code != _OK:
        abort[0] = 1
    status[b, 0] = code
    for i in range(n_out):
        counts[b, i] = cnt[i]
    n_log_out[slot] = n_log


@_jit
def _windows_sample(b, slot, qt, src, qe, Q, qbase, W, tm_arr, ts_arr, th_arr, r_ptr, r_col, r_val, solver, limit,
                    entries, stop, dt, times, events, counts, log_t, log_k, log_I, n_log_out, status, status_at,
                    abort):
    """``_forward_sample`` for a layer without recurrent delays (or all zero) whose neurons each have their own
    input queue (input delays; rows ``qbase + (i if Q > 1 else 0)``), the event loop's results without its merge of
    the queues: between two layer spikes the neurons are independent, so each walks its own queue alone, up to the
    end of a time window ``[.., H]`` or its first crossing, whichever comes first (in the loop's gap tests, on the
    same gaps); with ``stop`` (a densely connected ``R``: ``WINDOW_STOP_DENSITY``) also at the earliest crossing
    known when it walks, as a round comes first there. The earliest crossing at or before ``H`` is the next round,
    as in the loop: reset, record, log (neuron order); each target of the spikes (``R``'s non-zero entries ``r_ptr,
    r_col, r_val`` by rows) is brought to the spike time (a target that walked past it starts again from its state
    at the window's start or its last round, ``sV, sI, sT, sp``, and walks the same gaps up to it), adds the input
    entries at that time, then the spikes' weights in spike order, and walks on from there. Windows hold about
    ``entries`` queue entries per neuron (``H`` grows by ``span * entries / mean queue length``); they change the
    work, not the results. Gaps between consecutive entries take their decay from the sample's table ``dt [n_out, >=
    L1, 5]`` (computed here once, each as the loop computes it, so a walk that starts again costs loads), which also
    holds each entry's time and weight (``qt``, ``W[src, i]``): a walk reads one record per entry instead of three
    arrays and a column of ``W`` (7-11% less time on the SHD-like layer with input delays, one thread). The same
    operations on the same values as the event loop, except that, as in ``_lanes_sample``, a target of a recurrent
    arrival is not tested for a crossing inside the sub-gap before it (the test of its whole gap put its first
    crossing after the arrival)."""
    n_out = th_arr.shape[0]
    max_spikes = times.shape[2]
    for i in range(n_out):
        for c in range(max_spikes):
            times[b, i, c] = np.inf
            events[b, i, c] = -1
    rows = np.empty(n_out, np.int64)
    span = 0.0
    total = 0
    for i in range(n_out):  # the table: the gap from entry k - 1 (time 0 for k = 0) to entry k, its time, weight
        row = qbase + (i if Q > 1 else 0)
        rows[i] = row
        prev = 0.0
        end = qe[row]
        for k in range(end):
            a, bb, c = lif.decay_scalar(qt[row, k] - prev, tm_arr[i], ts_arr[i])
            dt[i, k, 0] = a
            dt[i, k, 1] = bb
            dt[i, k, 2] = c
            dt[i, k, 3] = qt[row, k]
            dt[i, k, 4] = W[src[row, k], i]
            prev = qt[row, k]
        dt[i, end, 0] = dt[i, end, 1] = dt[i, end, 2] = 0.0
        dt[i, end, 3] = np.inf
        dt[i, end, 4] = 0.0  # the open gap after the last entry
        total += end
        span = max(span, prev)
    width = span * entries / (total / n_out) if total > 0 and span > 0.0 else np.inf
    # Per neuron: the state at its last event and the next entry; its crossing in the gap from there (+inf if none)
    # and the solve's offset; whether that gap was tested without a crossing (then its decay); the state the walk
    # started from in this window (or after its last round).
    V = np.zeros(n_out)
    I = np.zeros(n_out)
    T = np.zeros(n_out)
    p = np.zeros(n_out, np.int64)
    key = np.full(n_out, np.inf)
    s_sol = np.zeros(n_out)
    ready = np.zeros(n_out, np.bool_)
    da = np.zeros(n_out)
    db = np.zeros(n_out)
    dc = np.zeros(n_out)
    sV = np.zeros(n_out)
    sI = np.zeros(n_out)
    sT = np.zeros(n_out)
    sp = np.zeros(n_out, np.int64)
    last = np.full(n_out, -np.inf)
    cnt = np.zeros(n_out, np.int64)
    arm = np.empty(n_out, np.int64)  # neurons with a crossing (and stale entries: listed, not armed)
    listed = np.zeros(n_out, np.bool_)
    hit = np.zeros(n_out, np.bool_)
    mark = np.zeros(n_out, np.bool_)
    # Neurons whose walk stopped short of H at the earliest crossing known then (no crossing of theirs before it):
    # a round comes first (a pass with such a stop always ends in one, so each is listed once), after which they
    # walk on from where they stopped (their state and saved state kept).
    shorts = np.empty(n_out, np.int64)
    n_short = 0
    resumed = np.zeros(n_out, np.bool_)  # walking on after a stop: not walked before, so not counted as redone
    todo = np.arange(n_out)  # the neurons to walk: all at a window's start, the changed ones after a round
    group = np.empty(n_out, np.int64)
    n_arm = 0
    nd = n_out
    H = width
    w_min = width / 64.0
    w_max = width * 64.0
    redone = 0  # entries walked again in this window, or walked after one of its rounds
    m_gap = -1.0  # the last decay of a target to its round, with its gap and time constants
    m_tm = m_ts = m_a = m_b = m_c = 0.0
    again = False  # walking after a round
    n_log = 0
    code = _OK
    while True:
        if abort[0] != 0:  # another sample stopped the call: its error is raised
            code = _ABORTED
            break
        # Walk: each neuron to do, from its last event, gap by gap: the loop's gap test, then (no crossing, the next
        # entry at or before the bound) the decay and every input entry at that time. The bound: H, or the earliest
        # crossing known if earlier (a round comes there first, which changes its targets' futures).
        bound = H
        for q in range(n_arm if stop else 0):
            if key[arm[q]] < bound:
                bound = key[arm[q]]
        for q in range(nd):
            i = todo[q]
            if key[i] != np.inf:  # at its crossing
                continue
            row = rows[i]
            end = qe[row]
            tm, ts, th = tm_arr[i], ts_arr[i], th_arr[i]
            k = p[i]
            v = V[i]
            cur = I[i]
            t0 = T[i]
            ok = ready[i]
            a, bb, c = da[i], db[i], dc[i]
            while True:
                t_in = dt[i, k, 3]  # +inf at the end of the queue
                if not ok:
                    if t0 == (dt[i, k - 1, 3] if k > 0 else 0.0):
                        a, bb, c = dt[i, k, 0], dt[i, k, 1], dt[i, k, 2]
                    else:
                        a, bb, c = lif.decay_scalar(t_in - t0, tm, ts)
                    t_x, kind_x, s_x = _next_event(v, cur, t0, t_in, a, bb, c, tm, ts, th, solver)
                    if kind_x == _CROSS:
                        key[i] = t_x
                        s_sol[i] = s_x
                        if not listed[i]:
                            listed[i] = True
                            arm[n_arm] = i
                            n_arm += 1
                        if stop and t_x < bound:
                            bound = t_x
                        break
                    ok = True
                if k == end or t_in > bound:  # (the open gap after the last entry has nothing to apply)
                    if k < end and t_in <= H:
                        shorts[n_short] = i
                        n_short += 1
                    break
                v2 = a * v + c * cur
                cur = bb * cur
                while k < end and dt[i, k, 3] == t_in:
                    cur = lif.input_jump_scalar(cur, dt[i, k, 4])
                    k += 1
                v = v2
                t0 = t_in
                ok = False
            if again and not resumed[i]:
                redone += k - p[i]
            resumed[i] = False
            V[i] = v
            I[i] = cur
            T[i] = t0
            p[i] = k
            ready[i] = ok
            da[i] = a
            db[i] = bb
            dc[i] = c
        # The earliest crossing; a round if it lies in the window.
        e, n_arm = _earliest(arm, n_arm, key, listed)
        if e > H or e == np.inf:  # the next window, from every neuron's state now; it ends no earlier than the
            # next event (none: done)
            t_min = e
            for i in range(n_out):
                if key[i] == np.inf:
                    t_min = min(t_min, dt[i, p[i], 3])
            if t_min == np.inf:
                break
            H = max(H + width, t_min)
            # Adapt the width: walks started again cost entries, windows cost a pass over the neurons.
            if redone > 4 * n_out:
                width = max(0.8 * width, w_min)
            else:
                width = min(1.25 * width, w_max)
            redone = 0
            again = False
            for i in range(n_out):
                sV[i] = V[i]
                sI[i] = I[i]
                sT[i] = T[i]
                sp[i] = p[i]
                todo[i] = i
            nd = n_out
            continue
        ng, n_arm = _take_group(arm, n_arm, key, listed, group, e)
        # reset all, then record, log and check each in neuron order
        code, n_log = _fire_group(b, slot, e, group, ng, -1, p, V, I, T, s_sol, tm_arr, ts_arr, th_arr, last, cnt,
                                  limit, times, events, log_t, log_k, log_I, n_log, status, status_at)
        if code != _OK:
            break
        nd = _mark_group(group, ng, mark, todo)
        # Each target at e: from its state there, or walked again from its saved state up to e (the same gaps),
        # then the input entries at e (those of a neuron that spiked at e are still due); then the spikes' weights.
        for q in range(ng):
            j = group[q]
            for x in range(r_ptr[j], r_ptr[j + 1]):
                r = r_col[x]
                if hit[r]:
                    continue
                hit[r] = True
                row = rows[r]
                tm, ts = tm_arr[r], ts_arr[r]
                if T[r] > e:
                    v, cur, t0, k = sV[r], sI[r], sT[r], sp[r]
                    redone += p[r] - k
                else:
                    v, cur, t0, k = V[r], I[r], T[r], p[r]
                end = qe[row]
                while dt[r, k, 3] <= e:
                    t_in = dt[r, k, 3]
                    if t0 == (dt[r, k - 1, 3] if k > 0 else 0.0):
                        a, bb, c = dt[r, k, 0], dt[r, k, 1], dt[r, k, 2]
                    else:
                        a, bb, c = lif.decay_scalar(t_in - t0, tm, ts)
                    v2 = a * v + c * cur
                    cur = bb * cur
                    while k < end and dt[r, k, 3] == t_in:
                        cur = lif.input_jump_scalar(cur, dt[r, k, 4])
                        k += 1
                    v = v2
                    t0 = t_in
                if t0 < e:
                    if e - t0 != m_gap or tm != m_tm or ts != m_ts:  # most targets of a round share their gap
                        m_gap, m_tm, m_ts = e - t0, tm, ts
                        m_a, m_b, m_c = lif.decay_scalar(m_gap, tm, ts)
                    a, bb, c = m_a, m_b, m_c
                    v2 = a * v + c * cur
                    cur = bb * cur
                    v = v2
                    t0 = e
                V[r] = v
                I[r] = cur
                T[r] = t0
                p[r] = k
                if not mark[r]:
                    mark[r] = True
                    todo[nd] = r
                    nd += 1
        _add_spikes(group, ng, r_ptr, r_col, r_val, I)
        again = True
        # The neurons that stopped short and the round left alone walk on from where they stopped.
        n_on = 0
        for q in range(n_short):
            i = shorts[q]
            if not mark[i]:
                shorts[n_on] = i
                n_on += 1
        n_short = 0
        for q in range(nd):  # their futures start at e: walked again from there
            i = todo[q]
            mark[i] = False
            hit[i] = False
            key[i] = np.inf
            ready[i] = False
            sV[i] = V[i]
            sI[i] = I[i]
            sT[i] = T[i]
            sp[i] = p[i]
        for q in range(n_on):
            i = shorts[q]
            resumed[i] = True
            todo[nd] = i
            nd += 1
    if code != _OK:
        abort[0] = 1
    status[b, 0] = code
    for i in range(n_out):
        counts[b, i] = cnt[i]
    n_log_out[slot] = n_log


@_jit
def _expand_sources(pq, b, i, n, QT, SRC, slot):
    """The first ``n`` entries of neuron ``i``'s permuted queue in sample ``b`` (``pq``:
    ``_queue.compiled_permutation``) into row ``slot`` of ``QT`` (arrival times) and ``SRC`` (source inputs, the
    row of ``W`` each adds; padding ``+inf`` and ``0``): ``_lif_numba._expand_row``'s entries (the same addition,
    so the materialised queues' bits) with source inputs instead of flat indices, as these kernels read them."""
    perm, times, index, source, delays_t = pq
    row = b * delays_t.shape[0] + i
    for k in range(n):
        p = perm[row, k]
        if index[b, p] >= 0:
            s = source[b, p]
            QT[slot, k] = times[b, p] + delays_t[i, s]
            SRC[slot, k] = s
        else:
            QT[slot, k] = np.inf
            SRC[slot, k] = 0


@_pjit
def forward_kernel(samples, qt, src, qe, Q, pq, permuted, W, tm_arr, ts_arr, th_arr, R, Dr, has_dr, solver, limit,
                   table, use_table, lanes, windows, entries, stop, r_ptr, r_col, r_val, times, events, counts,
                   log_t, log_k, log_I, n_log, status, status_at, abort, heap_capacity, heap_limit, heap_most):
    """``_forward_sample`` for every sample in ``samples`` (its log in the row of its position there). ``permuted``:
    the queues are the permutation ``pq`` (``qt``, ``src`` unused), each sample's expanded for its loop only
    (``_expand_sources``, up to each row's ``+inf`` sentinel: ``16 n_out L1`` bytes per sample in flight instead of
    the batch's). Heaps of pending arrivals start at ``heap_capacity`` per neuron; a sample that fills one runs
    again with four times the room (the loop is deterministic: the same results), up to ``heap_limit`` (what fits
    in memory); a sample that fills heaps of ``heap_limit`` stops with ``_HEAP_MEMORY`` (and aborts the others).
    ``lanes``: ``_lanes_sample`` instead (one shared queue per sample, no recurrent
    delays: no heaps); ``windows``: ``_windows_sample`` (no recurrent delays; windows of about ``entries`` queue
    entries per neuron, a table of ``40 n_out L1`` bytes per sample in flight)."""
    n_out = R.shape[0]
    L1 = pq[0].shape[1] if permuted else qt.shape[1]
    for s_ in prange(samples.shape[0]):
        slot = np.int64(s_)
        b = samples[slot]
        if lanes:
            _lanes_sample(b, slot, qt, src, qe, b, W, tm_arr, ts_arr, use_table, th_arr, R, r_ptr, r_col, r_val,
                          solver, limit, table, times, events, counts, log_t, log_k, log_I, n_log, status, status_at,
                          abort)
            heap_most[slot] = 0
            continue
        if permuted:  # this sample's queues, expanded: rows 0 .. n_out - 1
            QT = np.empty((n_out, L1))
            SRC = np.empty((n_out, L1), np.int64)
            QE = np.empty(n_out, np.int64)
            for i in range(n_out):
                QE[i] = qe[b * n_out + i]
                _expand_sources(pq, b, i, QE[i] + 1, QT, SRC, i)
            base = 0
        else:  # the batch's queues: rows b * Q ..
            QT, SRC, QE, base = qt, src, qe, b * Q
        if windows:
            _windows_sample(b, slot, QT, SRC, QE, Q, base, W, tm_arr, ts_arr, th_arr, r_ptr,
                            r_col, r_val, solver, limit, entries, stop, np.empty((n_out, L1, 5)), times, events,
                            counts, log_t, log_k, log_I, n_log, status, status_at, abort)
            heap_most[slot] = 0
            continue
        cap = min(heap_capacity, heap_limit)
        while True:
            ht = np.empty((n_out, cap))
            hm = np.empty((n_out, cap), np.int64)
            hw = np.empty((n_out, cap))
            _forward_sample(b, slot, QT, SRC, QE, Q, base, W, tm_arr, ts_arr, th_arr, R, Dr, has_dr, solver, limit,
                            table, use_table, times, events, counts, log_t, log_k, log_I, n_log, status, status_at,
                            abort, ht, hm, hw, heap_most)
            if status[b, 0] != _HEAP_FULL:
                break
            if cap >= heap_limit:
                status[b, 0] = _HEAP_MEMORY
                abort[0] = 1
                break
            cap = min(cap * 4, heap_limit)


def _by_rows(R):
    """``R``'s non-zero entries by rows (``(ptr [n_out + 1], col, val)``, columns ascending): each spike's targets
    and weights for ``_lanes_sample``."""
    rows, cols = np.nonzero(R)
    ptr = np.zeros(R.shape[0] + 1, np.int64)
    np.cumsum(np.bincount(rows, minlength=R.shape[0]), out=ptr[1:])
    return ptr, cols.astype(np.int64), np.ascontiguousarray(R[rows, cols], np.float64)


def _heap_room(need):
    """``(bytes, source)`` that the heaps of pending recurrent arrivals may use: what the call may (``_memory``;
    ``need``, the first heaps' bytes, lets a small call reuse a recent reading of the memory available)."""
    return _memory.available(np, need)


def _log_length(n_out, max_spikes, hint=0):
    return max(256, min(n_out * max_spikes, 1 << 14), hint + hint // 4)


def forward(qt2, qi2, qend, W, max_in, tau_mem, tau_syn, threshold, R, Dr, max_spikes, solver, limit, batch,
            table, use_table, pq=None):
    """``_recurrent.forward`` by the compiled event loop, on queues ``qt2, qi2 [batch * Q, L1]`` and ``qend``
    (``[batch, Q]``), or on the permutation ``pq`` (``_queue.compiled_permutation``; ``qt2``, ``qi2`` then unused,
    ``Q = n_out``). Returns ``(times, events, counts, log)``; raises the NumPy path's errors."""
    from ._lif_numpy import unresolvable_spike_error
    from ._recurrent import _runaway_error

    n_out = R.shape[0]
    permuted = pq is not None
    L1 = pq[0].shape[1] if permuted else qt2.shape[1]
    Q = n_out if permuted else qt2.shape[0] // max(batch, 1)
    times = np.empty((batch, n_out, max_spikes))
    events = np.empty((batch, n_out, max_spikes), np.int64)
    counts = np.zeros((batch, n_out), np.int64)
    status = np.zeros((batch, 2), np.int64)
    status_at = np.full((batch, 2), np.nan)
    has_dr = Dr is not None
    no_delay = not has_dr or not np.any(Dr)  # spikes arrive at their own time
    lanes = bool(LANES and n_out > 0 and Q == 1 and not permuted and no_delay)
    if permuted:
        qt2, src = np.zeros((0, L1)), np.zeros((0, L1), np.int64)
    else:  # the row of W each entry adds (no division per neuron)
        src = np.where(qi2 >= 0, qi2 // max(int(max_in), 1), 0)
    rows = _by_rows(R)
    common = (np.ascontiguousarray(qt2), src, np.ascontiguousarray(qend.reshape(-1), dtype=np.int64), Q,
              pq if permuted else _lif_numba.NO_PERMUTATION[:5], permuted, np.ascontiguousarray(W, np.float64),
              np.ascontiguousarray(tau_mem, np.float64),
              np.ascontiguousarray(tau_syn, np.float64), np.ascontiguousarray(threshold, np.float64),
              np.ascontiguousarray(R, np.float64), np.ascontiguousarray(Dr, np.float64) if has_dr else np.zeros((1, 1)),
              has_dr, lif.SOLVER_CODES[solver], int(limit), table, use_table,
              lanes, bool(WINDOWS and n_out > 0 and not lanes and no_delay), float(WINDOW_ENTRIES),
              bool(rows[0][-1] >= WINDOW_STOP_DENSITY * n_out * n_out), *rows)  # (rows[0][-1]: R's non-zeros)
    work = batch * n_out * L1
    # Heaps of pending arrivals grow while a sample runs (each sample in flight holds n_out of them): never beyond
    # what the call may use, split between the threads.
    in_flight = max(1, min(numba.get_num_threads(), batch))
    shape = (n_out, has_dr)
    hint = _heap_hints.get(shape, 0)
    first = max(4, hint + hint // 4)  # the first heaps' capacity
    room, room_source = _heap_room(_HEAP_BYTES * n_out * in_flight * first)
    heap_limit = max(4, (room if room is not None else 1 << 62) // (_HEAP_BYTES * max(n_out, 1) * in_flight))

    def run(samples, length, heap_capacity):
        logs = (np.empty((samples.size, length)), np.empty((samples.size, length), np.int64),
                np.empty((samples.size, length)))
        n_log = np.zeros(samples.size, np.int64)
        heap_most = np.zeros(samples.size, np.int64)
        previous = numba.set_parallel_chunksize(1)  # samples differ in work: hand them out one by one
        try:
            forward_kernel(work, samples, *common, times, events, counts, *logs, n_log, status, status_at,
                           np.zeros(1, np.int64), heap_capacity, heap_limit, heap_most)
        finally:
            numba.set_parallel_chunksize(previous)
        return logs, n_log, int(heap_most.max(initial=0))

    length = _log_length(n_out, max_spikes, _log_hints.get(shape, 0))
    (log_t, log_k, log_I), n_log, heap_most = run(np.arange(batch), length, first)
    bad = np.flatnonzero((status[:, 0] == _STUCK) | (status[:, 0] == _RUNAWAY))
    full = np.flatnonzero(status[:, 0] == _HEAP_MEMORY)
    if full.size and not bad.size:
        b = int(full[0])
        raise MemoryError(
            f"lif_forward(batch={batch}, n_out={n_out}, recurrent, engine='numba'): sample {b} piled up more than "
            f"{heap_limit} pending recurrent arrivals (spikes sent but not yet arrived) on one neuron; heaps for "
            f"more would need over {_memory._gib(_HEAP_BYTES * n_out * heap_limit * in_flight)} for the "
            f"{in_flight} sample(s) in flight, more than the {_memory._gib(room)} the call may use ({room_source}). "
            "Long recurrent delays with strong excitation do this; reduce the recurrent delays or the excitation, "
            "lower max_total_spikes to stop runaway firing sooner, or raise the limit with "
            "spikescan.set_memory_limit / SPIKESCAN_MEMORY_LIMIT")
    if bad.size:  # of the samples that stopped on their own (others may have been aborted for them): the first in
        # simulated time (the lower sample at a tie)
        b = int(bad[np.argmin(status_at[bad, 0])])
        k = int(status[b, 1])
        if status[b, 0] == _RUNAWAY:
            raise _runaway_error(b, k, n_out, status_at[b, 0], status_at[b, 1], limit, threshold[k])
        raise unresolvable_spike_error(b * n_out + k, n_out, status_at[b, 0])
    M = int(n_log.max(initial=0))
    _log_hints[shape] = M
    _heap_hints[shape] = heap_most  # every sample ran its loop to the end (those that outgrew the log too)
    over = np.flatnonzero(n_log > length)
    # The spike log of every sample (float64 time, int64 neuron, float64 current), and a second run's buffers for
    # the samples that outgrew the guess: known only now, so checked only now, before they are allocated.
    _memory.check(f"lif_forward(batch={batch}, n_out={n_out}, max_spikes={max_spikes}, recurrent, engine='numba')",
                  {"spike log": 24 * batch * M, "second run's log": 24 * over.size * M}, np,
                  f"the layer fired up to {M} spikes on one sample (every neuron's, recorded or not); reduce the "
                  f"batch or the recurrent excitation, or lower max_total_spikes (now {limit}) to stop runaway "
                  "firing sooner; or raise the limit with spikescan.set_memory_limit / SPIKESCAN_MEMORY_LIMIT")
    out_t = np.full((batch, M), np.inf)
    out_k = np.full((batch, M), -1, np.int64)
    out_I = np.zeros((batch, M))
    fit = np.minimum(n_log, length)
    keep = np.arange(min(M, length))[None, :] < fit[:, None]
    for out, buf in ((out_t, log_t), (out_k, log_k), (out_I, log_I)):
        out[:, :keep.shape[1]][keep] = buf[:, :keep.shape[1]][keep]
    if over.size:  # the samples whose logs did not fit, again with the length they need
        (log_t, log_k, log_I), _, _ = run(over, M, max(4, heap_most))
        for j, b in enumerate(over):
            n = int(n_log[b])
            out_t[b, :n], out_k[b, :n], out_I[b, :n] = log_t[j, :n], log_k[j, :n], log_I[j, :n]
    log = RecurrentLog(times=out_t, neurons=out_k, currents=out_I, count=n_log)
    return times, events, counts, log


# ---------------------------------------------------------------------------------------------------------------
# Backward
# ---------------------------------------------------------------------------------------------------------------

@_jit
def _adjoint_back(span, lV1, lI1, tau_mem, tau_syn):
    """The adjoint ``(lV, lI)`` a time ``span`` before a point where it is ``(lV1, lI1)``, no event between: the
    transposed gap map (``_recurrent._Adjoint.after``)."""
    a, b, c = lif.decay_scalar(span, tau_mem, tau_syn)
    return a * lV1, c * lV1 + b * lI1


@_pjit
def backward_spikes(log_t, log_k, log_I, log_n, grad_times, tm_arr, ts_arr, th_arr, R, Dr, has_dr, start, stop, off,
                    sp_t, lamV, lamI, part_R, part_Dr, part_th, graze, want_spike_grads, spike_grads, carried):
    """The spike loop of ``_recurrent.backward`` for samples ``[start, stop)`` (``prange``): each neuron's spikes by
    neuron (``off [batch, n_out + 1]``, ``sp_t``), the adjoint before each (``lamV``, ``lamI``), per-sample partial
    gradients ``part_* [stop - start, ...]`` (zeroed by the caller), ``graze[b] = (count, earliest time, neuron)``
    and, when ``want_spike_grads``, ``spike_grads[b, m]``: spike ``m``'s derivative through everything outside its
    neuron (``_recurrent.backward``'s ``spike_grads``).

    Every spike needs every target's adjoint at its time. By default each is formed from the target's next spike
    (one gap map, two exponentials, per pair). ``carried`` (shared time constants, no recurrent delays): the
    targets' adjoints are carried from one spike time to the next earlier one by one gap map that all of them share,
    and formed afresh from a target's spike only when the walk passes it; the same values up to rounding (a product
    of gap maps instead of one). Recurrent delays, if given, are all zero there."""
    n_out = R.shape[0]
    S = grad_times.shape[2]
    for s_ in prange(stop - start):
        bl = np.int64(s_)
        b = start + bl
        n = log_n[b]
        cnt = np.zeros(n_out, np.int64)
        for m in range(n):
            cnt[log_k[b, m]] += 1
        off[b, 0] = 0
        for i in range(n_out):
            off[b, i + 1] = off[b, i] + cnt[i]
        fill = np.empty(n_out, np.int64)
        for i in range(n_out):
            fill[i] = off[b, i]
        pos = np.empty(n, np.int64)
        for m in range(n):
            k = log_k[b, m]
            c = fill[k]
            sp_t[b, c] = log_t[b, m]
            pos[m] = c - off[b, k]
            fill[k] = c + 1
        ptr = cnt.copy()  # per neuron: its first spike strictly after the current spike's time
        n_graze = 0
        t_graze = np.inf
        k_graze = -1
        tm0 = tm_arr[0] if n_out > 0 else 1.0
        ts0 = ts_arr[0] if n_out > 0 else 1.0
        curV = np.zeros(n_out if carried else 0)  # carried: each target's adjoint at t_cur
        curI = np.zeros(n_out if carried else 0)
        t_cur = log_t[b, n - 1] if n > 0 else 0.0
        # Spikes last to first: everything a spike feeds (arrivals at or after it, later spikes) is done.
        for m in range(n - 1, -1, -1):
            k = log_k[b, m]
            t = log_t[b, m]
            Is = log_I[b, m]
            ck = pos[m]
            tmk = tm_arr[k]
            lV_after = 0.0
            lI_after = 0.0
            if ck + 1 < cnt[k]:
                nxt = off[b, k] + ck + 1
                lV_after, lI_after = _adjoint_back(sp_t[b, nxt] - t, lamV[b, nxt], lamI[b, nxt], tmk, ts_arr[k])
            g = grad_times[b, k, ck] if ck < S else 0.0
            total = 0.0
            if carried:
                if t < t_cur:
                    a, bb, cc = lif.decay_scalar(t_cur - t, tm0, ts0)
                    for i in range(n_out):
                        base = off[b, i]
                        c = ptr[i]
                        if c > 0 and sp_t[b, base + c - 1] > t:
                            c -= 1
                            while c > 0 and sp_t[b, base + c - 1] > t:
                                c -= 1
                            ptr[i] = c
                            curV[i], curI[i] = _adjoint_back(sp_t[b, base + c] - t, lamV[b, base + c],
                                                             lamI[b, base + c], tm0, ts0)
                        else:
                            v = curV[i]
                            curV[i] = a * v
                            curI[i] = cc * v + bb * curI[i]
                    t_cur = t
                for i in range(n_out):
                    lI = curI[i]
                    g_arrival = lif.arrival_time_grad_scalar(R[k, i], curV[i], lI, tm0, ts0)
                    part_R[bl, k, i] += lI
                    if has_dr:
                        part_Dr[bl, k, i] += g_arrival
                    total += g_arrival
            for i in range(n_out if not carried else 0):
                base = off[b, i]
                c = ptr[i]
                while c > 0 and sp_t[b, base + c - 1] > t:
                    c -= 1
                ptr[i] = c
                tau = t
                if has_dr:
                    tau = t + Dr[k, i]
                    hi = cnt[i]
                    while c < hi:  # first spike strictly after the arrival
                        mid = (c + hi) >> 1
                        if sp_t[b, base + mid] <= tau:
                            c = mid + 1
                        else:
                            hi = mid
                lV = 0.0
                lI = 0.0
                if c < cnt[i]:
                    lV, lI = _adjoint_back(sp_t[b, base + c] - tau, lamV[b, base + c], lamI[b, base + c], tm_arr[i],
                                           ts_arr[i])
                g_arrival = lif.arrival_time_grad_scalar(R[k, i], lV, lI, tm_arr[i], ts_arr[i])
                part_R[bl, k, i] += lI
                if has_dr:
                    part_Dr[bl, k, i] += g_arrival
                total += g_arrival
            G_outside = g + total
            if want_spike_grads:
                spike_grads[b, m] = G_outside
            G = G_outside + lif.reset_time_grad_scalar(lV_after, Is, tmk)
            D = lif.crossing_slope_scalar(Is, th_arr[k], tmk)
            idx = off[b, k] + ck
            if D <= 0.0:  # grazing: its IFT term is dropped
                lamV[b, idx] = 0.0
                n_graze += 1
                if t <= t_graze:
                    t_graze = t
                    k_graze = k
            else:
                lamV[b, idx] = lif.spike_adjoint_scalar(G, D)
                part_th[bl, k] += G / D
            lamI[b, idx] = lI_after
        graze[b, 0] = n_graze
        graze[b, 1] = t_graze
        graze[b, 2] = k_graze


@_pjit
def backward_inputs(qt, src, qe, Q, pq, permuted, W, tm_arr, ts_arr, off, sp_t, lamV, lamI, start, stop, grad_w,
                    grad_d, has_delays, g_arrival, has_input_grad, table, use_table, rebased, E, F, width, reach,
                    cache):
    """``_recurrent._input_grads`` for samples ``[start, stop)``; ``prange`` over neurons ``i`` (their columns of
    ``grad_w``, ``grad_d``), samples in order; ``g_arrival[b - start, i, k]`` (zeroed by the caller). An entry with
    the adjoint ``(lV, lI)`` just after it gives ``d/dW = lI`` and its arrival time's gradient
    ``w (lI / tau_syn - lV / tau_mem)``; only entries before the neuron's last spike carry gradient.

    With the shared decay table (one queue per sample, shared time constants), each span of entries before a spike
    is walked back from the spike by the table's gap maps (their product is the map of the whole span), entries in
    reverse order: no exponential per neuron and entry. Otherwise the entries go in order, each with the map from
    it to its next spike, as the NumPy backward computes them. ``permuted``: the queues are the permutation ``pq``
    (``qt``, ``src`` unused), each (sample, neuron) row expanded into the neuron's scratch row as it is reached.

    ``rebased`` (permuted queues, one pair of time constants; ``_lif_numpy._closed_rebased_args``): an entry's two
    exponentials ``e^{-(T_c - t - D)/tau}`` are the products ``E F G`` of its input slot's and synapse's tabulated
    factors and ``G = e^{-(T_c - T)/tau}`` of its time block ``T``, computed once per (spike, block) in a
    direct-mapped cache of ``cache`` slots; an entry whose block starts more than ``reach`` before its spike takes
    the exponentials (as ``_lif_numba.backward_closed``'s). The same gradients to rounding."""
    n_in, n_out = W.shape
    L1 = pq[0].shape[1] if permuted else qt.shape[1]
    for i_ in prange(n_out):
        i = np.int64(i_)
        tmi = tm_arr[i]
        tsi = ts_arr[i]
        QT = np.empty((1, L1) if permuted else (0, 0))  # the scratch row
        SRC = np.empty((1, L1) if permuted else (0, 0), np.int64)
        # Column i in contiguous copies (entries come in random source order); the sums' order is unchanged.
        w_col = W[:, i].copy()
        gw = grad_w[:, i].copy()
        gd = grad_d[:, i].copy() if has_delays else gw
        Gm = np.empty(cache)  # rebased: e^{-(T_c - T)/tau} per (spike, block), direct-mapped by block
        Gs = np.empty(cache)
        cached_blk = np.full(cache, -1, np.int64)
        cached_span = np.full(cache, -1, np.int64)
        span = 0
        perm = pq[0]
        for b in range(start, stop):
            base = off[b, i]
            n_i = off[b, i + 1] - base
            if n_i == 0:
                continue
            erow = b * Q + (i if Q > 1 else 0)
            end = qe[erow]
            bl = b - start
            if permuted:
                _expand_sources(pq, b, i, end, QT, SRC, 0)  # the real entries
                row = 0
                qt_r = QT
                src_r = SRC
            else:
                row = erow
                qt_r = qt
                src_r = src
            if use_table:
                lo = 0
                for c in range(n_i):
                    t_c = sp_t[b, base + c]
                    hi = lo
                    while hi < end and qt_r[row, hi] < t_c:  # the entries whose next spike is c
                        hi += 1
                    if hi == lo:
                        continue
                    k = hi - 1
                    lV, lI = _adjoint_back(t_c - qt_r[row, k], lamV[b, base + c], lamI[b, base + c], tmi, tsi)
                    while True:
                        j = src_r[row, k]
                        gw[j] += lI
                        if has_delays or has_input_grad:
                            g_arr = lif.arrival_time_grad_scalar(w_col[j], lV, lI, tmi, tsi)
                            if has_delays:
                                gd[j] += g_arr
                            if has_input_grad:
                                g_arrival[bl, i, k] = g_arr
                        if k == lo:
                            break
                        a = table[erow, k, 0]  # the gap from entry k - 1 to entry k
                        bb = table[erow, k, 1]
                        cc = table[erow, k, 2]
                        lI = cc * lV + bb * lI
                        lV = a * lV
                        k -= 1
                    lo = hi
                continue
            t_last = sp_t[b, base + n_i - 1]
            c = 0
            span += 1
            prow = b * n_out + i
            for k in range(end):
                tau = qt_r[row, k]
                if tau >= t_last:
                    break  # no spike after it: no gradient
                if sp_t[b, base + c] <= tau:
                    c += 1
                    while sp_t[b, base + c] <= tau:
                        c += 1
                    span += 1
                j = src_r[row, k]
                Tc = sp_t[b, base + c]
                lVc = lamV[b, base + c]
                lIc = lamI[b, base + c]
                ok = False
                alpha = 0.0
                beta = 0.0
                if rebased:
                    pos = perm[prow, k]
                    T = E[b, pos, 2] * width
                    if not (Tc - T > reach):
                        blk = np.int64(E[b, pos, 2])
                        slot = blk & (cache - 1)
                        if cached_blk[slot] != blk or cached_span[slot] != span:
                            Gm[slot] = np.exp(-(Tc - T) / tmi)
                            Gs[slot] = np.exp(-(Tc - T) / tsi)
                            cached_blk[slot] = blk
                            cached_span[slot] = span
                        ok = True
                        alpha = E[b, pos, 0] * F[i, j, 0] * Gm[slot]
                        beta = E[b, pos, 1] * F[i, j, 1] * Gs[slot]
                if ok:
                    a, bb, cc = lif.decay_given_scalar(Tc - tau, alpha, beta, tmi, tsi)
                else:
                    a, bb, cc = lif.decay_scalar(Tc - tau, tmi, tsi)
                lV = a * lVc
                lI = cc * lVc + bb * lIc
                gw[j] += lI
                if has_delays or has_input_grad:
                    g_arr = lif.arrival_time_grad_scalar(w_col[j], lV, lI, tmi, tsi)
                    if has_delays:
                        gd[j] += g_arr
                    if has_input_grad:
                        g_arrival[bl, i, k] = g_arr
        for j in range(n_in):
            grad_w[j, i] = gw[j]
            if has_delays:
                grad_d[j, i] = gd[j]


def _check_backward_memory(res, batch, n_in, max_in, n_out, M, L1, Q, permuted, has_dr, input_times_grad,
                           spike_grads):
    """``MemoryError`` before ``backward`` allocates more than the call may use: its large arrays by part (the
    blocks of partial sums and arrival gradients at their largest)."""
    from ._lif_numpy import closed_rebased_bytes

    per_sample = 8 * n_out * (n_out * (2 if has_dr else 1) + 1)
    partial = per_sample * max(1, min(batch, _PARTIAL_BYTES // max(per_sample, 1)))
    per_arrival = 8 * n_out * L1 if input_times_grad else 0
    arrival = per_arrival * (max(1, min(batch, _ARRIVAL_BYTES // per_arrival)) if per_arrival else 0)
    entries = batch * Q * L1
    parts = {"spike adjoints": 8 * batch * (n_out + 1) + 24 * batch * M * (2 if spike_grads else 1),
             "per-sample recurrent partial sums": partial,
             "arrival-time gradients": arrival + (8 * batch * n_in * max_in if input_times_grad else 0),
             # the entries' sources and the temporaries that form them (17 bytes per entry), the gap decays
             "queue sources and decay tables": 0 if permuted else 17 * entries + (24 * entries if Q == 1 else 0),
             "rebased factors": closed_rebased_bytes(res) if permuted and REBASED else 0,
             # and their copies in the arguments' dtypes
             "gradients": 2 * (8 * n_in * n_out * 2 + 8 * n_out * n_out * (2 if has_dr else 1)
                               + (8 * batch * n_in * max_in if input_times_grad else 0))}
    _memory.check(f"lif_backward(batch={batch}, n_out={n_out}, recurrent, engine='numba')", parts, np,
                  "reduce the batch or the layer, or raise the limit with spikescan.set_memory_limit / "
                  "SPIKESCAN_MEMORY_LIMIT")


def backward(res, grad_times, input_times_grad, spike_grads=False):
    """``_recurrent.backward`` by the compiled kernels: ``(grads dict, grazing (count, first flat neuron, time) or
    None)``; ``spike_grads`` as there. Queues in the permutation format are read as they are (each row expanded
    into a scratch row as its neuron reaches it)."""
    from ._lif_numpy import _closed_rebased_args, _compiled_decay_table
    from ._queue import compiled_permutation

    log = res.recurrent_log
    batch, n_in, max_in0 = res.input_shape
    max_in = max(max_in0, 1)
    n_out = res.weights.shape[1]
    permuted = res.queue_perm is not None
    L1 = res.queue_length
    Q = n_out if permuted else res.queue_times.shape[1]
    tm = np.ascontiguousarray(res.tau_mem, np.float64)
    ts = np.ascontiguousarray(res.tau_syn, np.float64)
    th = np.ascontiguousarray(res.threshold, np.float64)
    R = np.ascontiguousarray(res.recurrent_weights, np.float64)
    has_dr = res.recurrent_delays is not None
    Dr = np.ascontiguousarray(res.recurrent_delays, np.float64) if has_dr else np.zeros((1, 1))
    M = log.times.shape[1]
    _check_backward_memory(res, batch, n_in, max_in, n_out, M, L1, Q, permuted, has_dr, input_times_grad,
                           spike_grads)
    log_t = np.ascontiguousarray(log.times, np.float64)
    log_k = np.ascontiguousarray(log.neurons, np.int64)
    log_I = np.ascontiguousarray(log.currents, np.float64)
    log_n = np.ascontiguousarray(log.count, np.int64)
    g_all = np.ascontiguousarray(grad_times, np.float64)
    off = np.zeros((batch, n_out + 1), np.int64)
    sp_t = np.empty((batch, max(M, 1)))
    lamV = np.zeros((batch, max(M, 1)))
    lamI = np.zeros((batch, max(M, 1)))
    grad_R = np.zeros((n_out, n_out))
    grad_Dr = np.zeros((n_out, n_out)) if has_dr else None
    grad_th = np.zeros(n_out)
    graze = np.zeros((batch, 3))
    G_out = np.zeros(log.times.shape) if spike_grads else np.zeros((1, 1))
    per_sample = 8 * n_out * (n_out * (2 if has_dr else 1) + 1)
    block = max(1, min(batch, _PARTIAL_BYTES // max(per_sample, 1)))
    carried = CARRIED and not (has_dr and Dr.any()) and bool(np.all(tm == tm[:1])) and bool(np.all(ts == ts[:1]))
    previous = numba.set_parallel_chunksize(1)  # samples differ in work: hand them out one by one
    try:
        for start in range(0, batch, block):
            stop = min(start + block, batch)
            part_R = np.zeros((stop - start, n_out, n_out))
            part_Dr = np.zeros((stop - start, n_out, n_out) if has_dr else (1, 1, 1))
            part_th = np.zeros((stop - start, n_out))
            backward_spikes((stop - start) * n_out * max(M // max(batch, 1), 1), log_t, log_k, log_I, log_n, g_all,
                            tm, ts, th, R, Dr, has_dr, start, stop, off, sp_t, lamV, lamI, part_R, part_Dr, part_th,
                            graze, bool(spike_grads), G_out, carried)
            for j in range(stop - start):  # in sample order
                grad_R += part_R[j]
                grad_th += part_th[j]
                if has_dr:
                    grad_Dr += part_Dr[j]
    finally:
        numba.set_parallel_chunksize(previous)
    qe = np.ascontiguousarray(res.queue_end.reshape(-1), dtype=np.int64)
    if permuted:
        pq = compiled_permutation(res.queue_perm, res.shared_times, res.shared_index, res.delays_t, max_in)
        qt, qi, src = np.zeros((0, L1)), np.zeros((0, L1), np.int64), np.zeros((0, L1), np.int64)
    else:
        pq = _lif_numba.NO_PERMUTATION[:5]
        qt = np.ascontiguousarray(res.queue_times.reshape(-1, L1))
        qi = np.ascontiguousarray(res.queue_index.reshape(-1, L1), dtype=np.int64)
        src = np.where(qi >= 0, qi // max_in, 0)
    table, use_table = _compiled_decay_table(qt, qe, tm, ts, Q == 1 and not permuted)
    rebased = _closed_rebased_args(res) if permuted and REBASED else \
        (False, np.zeros((1, 1, 3)), np.zeros((1, 1, 2)), 1.0, 0.0, 1)
    W = np.ascontiguousarray(res.weights, np.float64)
    has_delays = res.delays is not None
    grad_W = np.zeros((n_in, n_out))
    grad_D = np.zeros((n_in, n_out)) if has_delays else np.zeros((1, 1))
    grad_in = np.zeros((batch, n_in * max_in)) if input_times_grad else None
    per_sample = 8 * n_out * L1 if input_times_grad else 0
    block = batch if per_sample == 0 else max(1, min(batch, _ARRIVAL_BYTES // per_sample))
    for start in range(0, max(batch, 1), max(block, 1)):
        stop = min(start + block, batch)
        if stop <= start:
            break
        g_arrival = np.zeros((stop - start, n_out, L1) if input_times_grad else (1, 1, 1))
        backward_inputs((stop - start) * n_out * L1, qt, src, qe, Q, pq, permuted, W, tm, ts, off, sp_t, lamV,
                        lamI, start, stop, grad_W, grad_D, has_delays, g_arrival, input_times_grad, table, use_table,
                        *rebased)
        if input_times_grad:
            _lif_numba.scatter_input_grads(g_arrival.size, qi, pq, qe, g_arrival, start, grad_in, n_out)
    grazing = None
    n_graze = graze[:, 0]
    if n_graze.any():
        hit = np.flatnonzero(n_graze > 0)
        b = int(hit[np.argmin(graze[hit, 1])])
        grazing = (int(n_graze.sum()), b * n_out + int(graze[b, 2]), float(graze[b, 1]))
    grads = {"weights": grad_W,
             "delays": grad_D if has_delays else None,
             "input_times": None if grad_in is None else grad_in[:, :n_in * max_in0].reshape(batch, n_in, max_in0),
             "threshold": grad_th, "recurrent_weights": grad_R, "recurrent_delays": grad_Dr,
             "spike_grads": G_out if spike_grads else None}
    return grads, grazing
