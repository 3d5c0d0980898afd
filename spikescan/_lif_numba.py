"""Compiled CPU kernels of the LIF layer (Numba, ``pip install spikescan[cpu]``): the CUDA kernels' algorithms as
parallel loops over neurons, with the scalar closed forms, gap test and solvers of ``neurons.lif``.

Imported only when a NumPy call uses ``engine="numba"`` (or ``"auto"`` with Numba installed); compilation happens
at the first call and is cached on disk (``cache=True``), so later processes load it. Each cached function's name
carries a hash of the engines' sources (``SOURCE_STAMP``), so editing the neuron model invalidates the cache too.

- ``forward_sequential``: one loop iteration per (sample, neuron), walking its queue event by event (the CUDA
  ``spikescan_lif_forward_sequential``), ``prange`` over the flat neuron index.
- ``forward_scan``: the chunked speculative scan of DESIGN.md section 4 per neuron: the states after the next
  ``chunk_size`` events assuming no spike, then every gap of the chunk tested (independent tests, which the CPU
  overlaps), commit up to the first firing gap, solve and reset there. The chunk's states come from the same
  recurrence as the sequential walk, so both give bit-identical results; the scan saves nothing on most CPUs
  (``method="auto"`` takes the sequential walk) and exists so that its chunk boundaries are tested like the GPU's.
- ``forward_rebased``: the sequential walk of a layer with delays (and one pair of time constants) with rebased
  exponential sums (PERF.md P3b): products of tabulated factors instead of two exponentials per queue entry, the
  exact step wherever a gap is not provably quiet; the same spikes and entries, times within rounding of
  ``forward_sequential``'s (``_lif_numpy.COMPILED_REBASED`` and its limits decide when it runs).
- ``delayed_permutation`` (and ``delayed_queues``, materialised): the per-neuron queues of a layer with delays;
  every kernel reads its queue rows from materialised queues or, expanded row by row (``_expand_row``), from
  the permutation format
  (``_queue.PermutedQueues``: 2 bytes per entry instead of 16, the same bits).
- ``backward``: the adjoint of the CUDA ``spikescan_lif_backward`` (a forward walk storing the state before every
  point, then the reverse walk), ``prange`` over output neurons ``i``, samples in order inside, so that the
  reductions into ``grad_weights[:, i]``, ``grad_delays[:, i]`` and the threshold need no atomics and the sums
  have a fixed order: results are bit-identical run to run and for any number of threads. Input-time gradients are
  written per (sample, neuron, queue entry) for a block of samples and summed in a second parallel pass over
  samples, neurons in order.
"""

from __future__ import annotations

import hashlib
import os
import threading
import types

# Numba's OpenMP runtime is loaded at its first parallel launch. By default its idle workers spin for a while after
# every parallel region, which on a small machine takes the cores that the rest of a training step (torch's or
# jax's own threads) needs between two kernels: measured on 2 cores, a Yin-Yang epoch took 2-3x longer. Unless the
# user chose otherwise, idle workers sleep instead (GNU and Intel OpenMP); runtimes loaded earlier are unaffected.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("KMP_BLOCKTIME", "0")

import numpy as np  # noqa: E402
from numba import njit, prange  # noqa: E402

from .neurons import lif

lif.register_numba()

# Numba's disk cache checks only the file that defines a function (its modification time and size): a kernel here
# that calls neurons/lif.py's scalar forms, or a recurrent kernel that calls one of ours, would load machine code
# compiled from the old model after an edit of those files alone. Every cached function's qualified name (which
# names its cache files) therefore ends in a hash of the three sources.
ENGINE_SOURCES = ("neurons/lif.py", "_lif_numba.py", "_recurrent_numba.py")


def source_stamp(root=os.path.dirname(os.path.abspath(__file__)), names=ENGINE_SOURCES):
    """First 12 hex digits of the SHA-256 of the files ``names`` under ``root``, in order."""
    digest = hashlib.sha256()
    for name in names:
        with open(os.path.join(root, name), "rb") as f:
            digest.update(f.read())
    return digest.hexdigest()[:12]


SOURCE_STAMP = source_stamp()


def cached_njit(suffix=None, **flags):
    """``njit(cache=True, nogil=True, **flags)`` applied to a copy of the function named
    ``<qualname>[.<suffix>].<SOURCE_STAMP>`` (see ``_variant``)."""
    tag = SOURCE_STAMP if suffix is None else f"{suffix}.{SOURCE_STAMP}"
    return lambda fn: njit(cache=True, nogil=True, **flags)(_variant(fn, tag))


_jit = cached_njit()

# Below this much work (events times neurons) a kernel runs on the calling thread: waking a thread team costs more
# than it saves, and far more when the machine is oversubscribed (an OpenMP barrier waits for a descheduled thread).
SERIAL_WORK = 1 << 16


def _variant(fn, suffix):
    """A copy of ``fn`` (same code, globals, defaults and closure) whose qualified name ends in ``.<suffix>``.

    Numba's disk cache names its files after the function's qualified name and first line, and keys the entries
    by signature and bytecode, not by compilation flags: two ``cache=True`` compilations of one function with and
    without ``parallel=True`` would share one entry, and whichever was compiled first would be loaded by both in
    every later process. Distinct names give each compilation its own files."""
    copy = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)
    copy.__kwdefaults__ = fn.__kwdefaults__
    copy.__module__ = fn.__module__
    copy.__doc__ = fn.__doc__
    copy.__qualname__ = f"{fn.__qualname__}.{suffix}"
    return copy


# Parallel launches take turns. Several Python threads may call the kernels at once (jax's host callbacks for
# several devices, TensorFlow's inter-op threads running two layers side by side, a user's thread pool), and Numba's
# workqueue threading layer, its fallback where neither OpenMP nor TBB is installed, is not threadsafe: a concurrent
# launch aborts the process. Each launch uses every thread anyway. The serial kernels (``nogil``) still run at once.
_PARALLEL_LOCK = threading.Lock()


class _Parallel:
    """A kernel compiled twice from one Python function: ``prange`` as parallel loops, and as plain loops for small
    work (``kernel(work, *args)``). Each is compiled on first use and cached on disk under its own name
    (``<name>.parallel.<stamp>`` and ``<name>.serial.<stamp>``, see ``cached_njit``). Parallel launches hold
    ``_PARALLEL_LOCK``."""

    def __init__(self, fn):
        self.parallel = cached_njit("parallel", parallel=True)(fn)
        self.serial = cached_njit("serial")(fn)
        self.__doc__ = fn.__doc__

    def __call__(self, work, *args):
        if work < SERIAL_WORK:
            return self.serial(*args)
        with _PARALLEL_LOCK:
            return self.parallel(*args)


_pjit = _Parallel

# The ``pq`` argument of the kernels that read materialised queues (``_queue_setup``): an empty permutation.
NO_PERMUTATION = (np.zeros((0, 0), np.uint16), np.zeros((0, 0)), np.zeros((0, 0), np.int64),
                  np.zeros((0, 0), np.int64), np.zeros((0, 0)), np.zeros((0, 0)), np.zeros((0, 0), np.int64))

# Status codes of the per-neuron walks.
_OK, _STUCK, _RUNAWAY = 0, 1, 2


@_jit
def _fire_in_gap(V, I, t_prev, t_last, t_k, k, tau_mem, tau_syn, threshold, solver, count, max_spikes, limit,
                 spike_times, spike_event, tid):
    """Every spike inside the gap ``(t_prev, t_k]``: gap test, solve, reset (``I`` kept), test again.

    Returns ``(status, V, I, t_prev, t_last, count, t_stop, I_stop)``."""
    gap = t_k - t_prev
    while True:
        fires, s_hi = lif.fires_in_gap_scalar(V, I, gap, tau_mem, tau_syn, threshold)
        if not fires:
            break
        s = lif.solve_spike_time_scalar(V, I, s_hi, tau_mem, tau_syn, threshold, solver)
        t_spike = min(t_prev + s, t_k)
        if t_spike <= t_last:
            return _STUCK, V, I, t_prev, t_last, count, t_spike, np.nan
        _, b, _ = lif.decay_scalar(s, tau_mem, tau_syn)
        if count >= limit:
            return _RUNAWAY, V, I, t_prev, t_last, count + 1, t_spike, I * b
        V, I = lif.reset_scalar(threshold, I * b)
        t_prev = t_spike
        t_last = t_spike
        gap = t_k - t_spike
        if count < max_spikes:
            spike_times[tid, count] = t_spike
            spike_event[tid, count] = k
        count += 1
    return _OK, V, I, t_prev, t_last, count, np.inf, np.nan


@_pjit
def decay_table(qt, qe, tau_mem, tau_syn):
    """``(a, b, c)`` of the gap from entry ``k - 1`` (time 0 for ``k = 0``) to entry ``k`` of every queue row:
    ``[rows, L1, 3]``. Shared by all neurons of a row when they share their time constants (no delays), it replaces
    the two exponentials per neuron and event of every gap that holds no output spike by a load."""
    rows, L1 = qt.shape
    out = np.zeros((rows, L1, 3))
    for r_ in prange(rows):
        r = np.int64(r_)
        prev = 0.0
        for k in range(qe[r]):
            a, b, c = lif.decay_scalar(qt[r, k] - prev, tau_mem, tau_syn)
            out[r, k, 0] = a
            out[r, k, 1] = b
            out[r, k, 2] = c
            prev = qt[r, k]
    return out


@_jit
def _gap_decay(table, use_table, row, k, t_k, t_prev, fresh, tau_mem, tau_syn):
    """``decay(t_k - t_prev)``: from the table when ``t_prev`` is the time of entry ``k - 1`` (``fresh``)."""
    if use_table and fresh:
        return table[row, k, 0], table[row, k, 1], table[row, k, 2]
    return lif.decay_scalar(t_k - t_prev, tau_mem, tau_syn)


@_jit
def _neuron(tid, n_out, Q):
    """``(i, row)``: the neuron index and the queue row of flat neuron ``tid = b * n_out + i`` (``Q`` queues per
    sample: 1 without delays, ``n_out`` with)."""
    b = tid // n_out
    i = tid - b * n_out
    return i, b * Q + (i if Q > 1 else 0)


@_jit
def _queue_setup(qt, qi, pq, batch, units):
    """``(Q, L1, QT, QI, permuted, chunks)`` of a kernel over ``units`` (neurons or output neurons) of ``batch``
    samples: ``Q`` queues per sample of ``L1`` entries, and the 2-d arrays it reads its queue rows from.

    Materialised queues: ``QT, QI = qt, qi`` (row ``b * Q + ...``), one chunk per unit. Permutation format ``pq =
    (perm, times, index, source, delays_t, scratch_times, scratch_index)`` (``perm [batch * n_out, L1]`` not empty;
    ``_queue.PermutedQueues``, ``source = index // max_in``): the scratch ``[chunks, L1]``; the kernel splits its
    units into that many chunks (its parallel loop runs over them) and ``_expand_row`` fills a chunk's row one
    neuron at a time."""
    permuted = pq[0].shape[0] > 0
    rows, L1 = pq[0].shape if permuted else qt.shape
    QT, QI = (pq[5], pq[6]) if permuted else (qt, qi)
    return rows // max(batch, 1), L1, QT, QI, permuted, QT.shape[0] if permuted else units


@_jit
def _expand_row(QT, QI, pq, row, n, slot):
    """Expand the first ``n`` entries of permuted queue ``row = b * n_out + i`` into row ``slot`` of ``QT``, ``QI``
    (the calling chunk's scratch row, or ``expand_permutation``'s output row) and return ``slot``: entry ``k`` is
    ``times[b, p] + delays_t[i, source[b, p]]`` (the addition that built the materialised queues, so the same bits)
    and ``index[b, p]``, ``p = perm[row, k]``. Called once per neuron, and only for permuted queues, so that the
    materialised path pays nothing per neuron."""
    perm, times, index, source, delays_t = pq[0], pq[1], pq[2], pq[3], pq[4]
    n_out = delays_t.shape[0]
    b = row // n_out
    i = row - b * n_out
    for k in range(n):
        p = perm[row, k]
        flat = index[b, p]
        QI[slot, k] = flat
        QT[slot, k] = times[b, p] + delays_t[i, source[b, p]] if flat >= 0 else np.inf
    return slot


@_jit
def _apply_input(V, I, a, b, c, flat, W, max_in, i):
    """``(V, I)`` after the gap with decay ``(a, b, c)`` and then the queue entry of flat source ``flat`` (its
    weight added to ``I``; padding, ``flat < 0``, adds nothing)."""
    w = W[flat // max_in, i] if flat >= 0 else 0.0
    return a * V + c * I, lif.input_jump_scalar(b * I, w)


@_pjit
def forward_sequential(qt, qi, pq, qe, W, tm_arr, ts_arr, th_arr, solver, n_out, max_in, max_spikes, limit,
                       table, use_table, spike_times, spike_event, counts, stuck_times, stuck_current, WT, qs):
    """Event-by-event walk per (sample, neuron). ``qt``, ``qi``: ``[batch * Q, L1]``, or the permutation format
    ``pq`` (``_queue_setup``); ``qe``: ``[batch * Q]``; ``table``: ``decay_table`` when ``use_table``; outputs
    ``[batch * n_out, max_spikes]`` pre-filled (``inf`` / ``-1``) and ``[batch * n_out]``.

    ``WT``: ``W.T`` contiguous (a neuron's weights in one run of memory: the walk reads them in the queue's random
    source order); ``qs``: the source input of every entry of a shared queue ``qi`` (``qi // max_in``, ``-1`` for
    padding), or empty (per-neuron queues: their rows are divided as they are read): the same weights and sums, so
    the same bits, without an integer division and a strided load per (neuron, entry)."""
    N = counts.shape[0]
    Q, _, QT, QI, permuted, chunks = _queue_setup(qt, qi, pq, N // n_out if N else 0, N)
    has_qs = qs.shape[0] > 0
    for c_ in prange(chunks):
        chunk = np.int64(c_)  # prange indices may be typed unsigned; int64 keeps index arithmetic integral
        for tid in range(chunk * N // chunks, (chunk + 1) * N // chunks):
            i, row = _neuron(tid, n_out, Q)
            tau_mem, tau_syn, threshold = tm_arr[i], ts_arr[i], th_arr[i]
            end = qe[row]
            r = _expand_row(QT, QI, pq, row, end + 1, chunk) if permuted else row
            V, I, t_prev, t_last = 0.0, 0.0, 0.0, -np.inf
            count = 0
            for k in range(end + 1):
                t_k = QT[r, k]  # +inf at k == end: the open gap after the last input
                a, bb, c = _gap_decay(table, use_table, row, k, t_k, t_prev, True, tau_mem, tau_syn)
                if not lif.quiet_gap_scalar(V, I, a, bb, c, threshold):
                    status, V, I, t_prev, t_last, count, t_stop, I_stop, a, bb, c = _spikes_in_gap(
                        V, I, a, bb, c, t_prev, t_last, t_k, k, tau_mem, tau_syn, threshold, solver, count,
                        max_spikes, limit, spike_times, spike_event, tid)
                    if status != _OK:
                        stuck_times[tid] = t_stop
                        stuck_current[tid] = I_stop
                        break
                if k == end:
                    break
                if has_qs:
                    src = qs[r, k]
                else:
                    flat = QI[r, k]
                    src = flat // max_in if flat >= 0 else -1
                # _apply_input's update, the weight read from WT
                V, I = a * V + c * I, lif.input_jump_scalar(bb * I, WT[i, src] if src >= 0 else 0.0)
                t_prev = t_k
            counts[tid] = count


@_pjit
def forward_lanes(qt, qe, W, th_arr, tau_mem, tau_syn, solver, max_spikes, limit, table, qs, lanes, spike_times,
                  spike_event, counts, stuck_times, stuck_current):
    """``forward_sequential`` for neurons that share one queue per sample and one pair of time constants (a layer
    without delays): ``lanes`` neurons of a sample walk the queue together, entry by entry, instead of one after
    the other. Per entry, one pass over the lanes decays every state, adds the entry's weights (a contiguous run of
    ``W``'s row) and runs the exact cheap gap test; only the lanes it cannot clear take ``_spikes_in_gap`` (the
    per-neuron walk's steps, on the same values). Each lane computes the same operations in the same order as the
    per-neuron walk, so the outputs are the same bits; the lanes' independent updates overlap in the CPU's
    pipelines (and its vector units where the compiler uses them) where one neuron's walk waits on each update.
    ``qt [batch, L1]``, ``qe [batch]``, ``table``, ``qs [batch, L1]``: the shared queues, their decay table and
    source inputs; outputs as ``forward_sequential``'s."""
    batch = qe.shape[0]
    n_out = W.shape[1]
    groups = (n_out + lanes - 1) // lanes
    for g_ in prange(batch * groups):
        g = np.int64(g_)
        b = g // groups
        i0 = (g - b * groups) * lanes
        n = min(lanes, n_out - i0)
        V = np.zeros(n)
        I = np.zeros(n)
        V_next = np.empty(n)
        I_next = np.empty(n)
        th = th_arr[i0:i0 + n].copy()
        t_last = np.full(n, -np.inf)
        cnt = np.zeros(n, np.int64)
        loud = np.zeros(n, np.bool_)  # the gap test could not clear the lane's gap
        stopped = np.zeros(n, np.bool_)  # a stuck or runaway spike ended the lane's walk
        end = qe[b]
        t_prev = 0.0
        for k in range(end + 1):
            t_k = qt[b, k]  # +inf at k == end: the open gap after the last input
            a, bb, c = table[b, k, 0], table[b, k, 1], table[b, k, 2]
            src = qs[b, k] if k < end else -1
            n_loud = 0
            for lane in range(n):  # the quiet lanes' whole step, and every lane's state as if its gap were quiet
                v, cur = V[lane], I[lane]
                quiet = lif.quiet_gap_scalar(v, cur, a, bb, c, th[lane])
                loud[lane] = not quiet
                n_loud += 0 if quiet else 1
                V_next[lane] = a * v + c * cur
                I_next[lane] = lif.input_jump_scalar(bb * cur, W[src, i0 + lane] if src >= 0 else 0.0)
            if n_loud > 0:
                for lane in range(n):
                    if not loud[lane] or stopped[lane]:
                        continue
                    tid = b * n_out + i0 + lane
                    status, v, cur, _, t_last[lane], cnt[lane], t_stop, I_stop, a2, b2, c2 = _spikes_in_gap(
                        V[lane], I[lane], a, bb, c, t_prev, t_last[lane], t_k, k, tau_mem, tau_syn, th[lane],
                        solver, cnt[lane], max_spikes, limit, spike_times, spike_event, tid)
                    if status != _OK:
                        stuck_times[tid] = t_stop
                        stuck_current[tid] = I_stop
                        stopped[lane] = True
                        continue
                    V_next[lane] = a2 * v + c2 * cur
                    I_next[lane] = lif.input_jump_scalar(b2 * cur, W[src, i0 + lane] if src >= 0 else 0.0)
            if k == end:
                break
            for lane in range(n):
                V[lane] = V_next[lane]
                I[lane] = I_next[lane]
            t_prev = t_k
        for lane in range(n):
            counts[b * n_out + i0 + lane] = cnt[lane]


@_pjit
def forward_scan(qt, qi, pq, qe, W, tm_arr, ts_arr, th_arr, solver, n_out, max_in, max_spikes, limit, table,
                 use_table, width, spike_times, spike_event, counts, stuck_times, stuck_current):
    """Chunked speculative scan per (sample, neuron), chunks of ``width`` events; arguments as
    ``forward_sequential``."""
    N = counts.shape[0]
    Q, _, QT, QI, permuted, chunks = _queue_setup(qt, qi, pq, N // n_out if N else 0, N)
    for c_ in prange(chunks):
        chunk = np.int64(c_)  # prange indices may be typed unsigned; int64 keeps index arithmetic integral
        for tid in range(chunk * N // chunks, (chunk + 1) * N // chunks):
            i, row = _neuron(tid, n_out, Q)
            tau_mem, tau_syn, threshold = tm_arr[i], ts_arr[i], th_arr[i]
            end = qe[row]
            r = _expand_row(QT, QI, pq, row, end + 1, chunk) if permuted else row
            V0 = np.empty(width)  # state before each lane's gap
            I0 = np.empty(width)
            T0 = np.empty(width)
            DA = np.empty(width)  # decay over each lane's gap
            DB = np.empty(width)
            DC = np.empty(width)
            V, I, t_prev, t_last = 0.0, 0.0, 0.0, -np.inf
            count = 0
            pos = 0
            status = _OK
            while pos <= end and status == _OK:
                n = min(width, end + 1 - pos)
                # Speculation: states before every gap of the chunk, assuming no spike in it.
                # Every chunk starts right after a queue entry (or at t = 0), so all its gaps come from the table.
                v, cur, tp = V, I, t_prev
                for l in range(n):
                    k = pos + l
                    V0[l], I0[l], T0[l] = v, cur, tp
                    t_k = QT[r, k]
                    a, bb, c = _gap_decay(table, use_table, row, k, t_k, tp, True, tau_mem, tau_syn)
                    DA[l], DB[l], DC[l] = a, bb, c
                    if k < end:
                        v, cur = _apply_input(v, cur, a, bb, c, QI[r, k], W, max_in, i)
                        tp = t_k
                # Gap tests of every lane (independent of each other), then the first firing one.
                first = n
                for l in range(n):
                    if lif.quiet_gap_scalar(V0[l], I0[l], DA[l], DB[l], DC[l], threshold):
                        continue
                    fires, _ = lif.fires_in_gap_scalar(V0[l], I0[l], QT[r, pos + l] - T0[l], tau_mem, tau_syn,
                                                       threshold)
                    if fires:
                        first = l
                        break
                if first == n:  # a quiet chunk commits whole
                    V, I, t_prev = v, cur, tp
                    pos += n
                    continue
                k = pos + first
                V, I, t_prev = V0[first], I0[first], T0[first]
                t_k = QT[r, k]
                status, V, I, t_prev, t_last, count, t_stop, I_stop = _fire_in_gap(
                    V, I, t_prev, t_last, t_k, k, tau_mem, tau_syn, threshold, solver, count, max_spikes, limit,
                    spike_times, spike_event, tid)
                if status != _OK:
                    stuck_times[tid] = t_stop
                    stuck_current[tid] = I_stop
                    break
                if k == end:
                    break
                # Entry k itself (after the spike: its own gap), then the next chunk starts after it.
                a, bb, c = lif.decay_scalar(t_k - t_prev, tau_mem, tau_syn)
                V, I = _apply_input(V, I, a, bb, c, QI[r, k], W, max_in, i)
                t_prev = t_k
                pos = k + 1
            counts[tid] = count


@_jit
def _spikes_in_gap(V, I, a, bb, c, t_prev, t_last, t_k, k, tau_mem, tau_syn, threshold, solver, count, max_spikes,
                   limit, spike_times, spike_event, tid):
    """``_fire_in_gap`` on a gap that is not provably quiet, whose decay is ``(a, bb, c)``; returns its outputs and
    the decay over the rest of the gap (from the last spike, if any): ``(status, V, I, t_prev, t_last, count,
    t_stop, I_stop, a, bb, c)``."""
    before = count
    status, V, I, t_prev, t_last, count, t_stop, I_stop = _fire_in_gap(
        V, I, t_prev, t_last, t_k, k, tau_mem, tau_syn, threshold, solver, count, max_spikes, limit, spike_times,
        spike_event, tid)
    if status == _OK and count != before:  # the rest of the gap starts at the last spike
        a, bb, c = lif.decay_scalar(t_k - t_prev, tau_mem, tau_syn)
    return status, V, I, t_prev, t_last, count, t_stop, I_stop, a, bb, c


@_jit
def _exact_step(V, I, t_prev, t_last, t_k, k, w, tau_mem, tau_syn, threshold, solver, count, max_spikes, limit,
                spike_times, spike_event, tid):
    """``forward_sequential``'s step over the gap that ends at queue entry ``k`` (time ``t_k``; ``+inf`` for the
    open gap after the last entry) and then the entry itself (weight ``w``; nothing arrives at ``+inf``), the decays
    computed from the gap's length. Returns ``(status, V, I, t_prev, t_last, count, t_stop, I_stop)``."""
    a, bb, c = lif.decay_scalar(t_k - t_prev, tau_mem, tau_syn)
    if not lif.quiet_gap_scalar(V, I, a, bb, c, threshold):
        status, V, I, t_prev, t_last, count, t_stop, I_stop, a, bb, c = _spikes_in_gap(
            V, I, a, bb, c, t_prev, t_last, t_k, k, tau_mem, tau_syn, threshold, solver, count, max_spikes, limit,
            spike_times, spike_event, tid)
        if status != _OK:
            return status, V, I, t_prev, t_last, count, t_stop, I_stop
    if t_k == np.inf:
        return _OK, V, I, t_prev, t_last, count, np.inf, np.nan
    return _OK, a * V + c * I, lif.input_jump_scalar(bb * I, w), t_k, t_last, count, np.inf, np.nan


@_pjit
def rebased_tables(times, delays_t, tau_mem, tau_syn, width, E, F):
    """The factors of ``forward_rebased``. Per input slot ``f`` of sample ``b`` (``times [batch, n_in * max_in]``,
    ``+inf`` padding): ``E[b, f] = (e^{(t - T)/tau_mem}, e^{(t - T)/tau_syn}, blk)`` with the block ``blk =
    floor(t / width)`` and its start ``T = blk * width`` (so every exponent lies in ``[0, width / tau)``; zeros for
    padding). Per synapse: ``F[i, j] = (e^{D[j, i]/tau_mem}, e^{D[j, i]/tau_syn})`` (``delays_t [n_out, n_in]``)."""
    batch, n_flat = times.shape
    for b_ in prange(batch):
        b = np.int64(b_)
        for f in range(n_flat):
            t = times[b, f]
            if t < np.inf:
                blk = np.floor(t / width)
                T = blk * width
                E[b, f, 0] = np.exp((t - T) / tau_mem)
                E[b, f, 1] = np.exp((t - T) / tau_syn)
                E[b, f, 2] = blk
            else:
                E[b, f, 0] = 0.0
                E[b, f, 1] = 0.0
                E[b, f, 2] = 0.0
    n_out, n_in = delays_t.shape
    for i_ in prange(n_out):
        i = np.int64(i_)
        for j in range(n_in):
            F[i, j, 0] = np.exp(delays_t[i, j] / tau_mem)
            F[i, j, 1] = np.exp(delays_t[i, j] / tau_syn)


@_pjit
def forward_rebased(qt, qi, pq, qe, W, tm_arr, ts_arr, th_arr, solver, n_out, max_in, max_spikes, limit, E, F,
                    width, cache, span, spike_times, spike_event, counts, stuck_times, stuck_current):
    """``forward_sequential`` for a layer with delays, with rebased exponential sums instead of two exponentials
    per queue entry (PERF.md P3b). After an anchor ``t0`` (where the state was ``(V0, I0)``) and before the next
    spike, ``I(t) = B e^{-(t - t0)/tau_syn}`` and ``V(t) = A e^{-(t - t0)/tau_mem} - r I(t)`` with ``r = tau_syn /
    (tau_mem - tau_syn)``, ``A = V0 + r I0 + r sum w alpha_k``, ``B = I0 + sum w beta_k``, and an arrival at ``t_k =
    t + D`` has ``alpha_k = e^{(t_k - t0)/tau_mem}`` = ``E * F * G``: the input slot's factor and the synapse's
    (``rebased_tables``) times ``G = e^{(T - t0)/tau_mem}`` of the slot's time block, computed once per block and
    anchor (kept in a direct-mapped cache of ``cache`` slots, a power of two; a block evicted by another is
    recomputed, to the same bits). So an entry costs products and two divisions; every exponent stays below
    ``width / tau + max(D) / tau + span / tau``.

    Every gap is tested with ``quiet_gap_scalar``'s comparisons on the states at its two ends
    (``lif.quiet_ends_scalar``). A gap that is not provably quiet, the open gap after the last entry, and an entry
    more than ``span`` after the anchor take ``forward_sequential``'s exact step (``_exact_step``: decays from the
    gap's length, solve, reset), and the walk re-anchors after it. Spike counts and queue entries are
    ``forward_sequential``'s; states, and so spike times, differ from it by rounding. Arguments as
    ``forward_sequential`` (without the decay table) plus the tables, the block ``width``, the cache's size and the
    re-anchoring ``span``; time constants shared by all neurons (the tables are built for one pair)."""
    N = counts.shape[0]
    Q, _, QT, QI, permuted, chunks = _queue_setup(qt, qi, pq, N // n_out if N else 0, N)
    for c_ in prange(chunks):
        chunk = np.int64(c_)
        # G of the time blocks met since the anchor: a direct-mapped cache of `cache` slots (a power of two; slot
        # blk % cache holds block cached_blk's factors, valid while cached_anchor == anchor).
        Gm = np.empty(cache)
        Gs = np.empty(cache)
        cached_blk = np.full(cache, -1, np.int64)
        cached_anchor = np.full(cache, -1, np.int64)
        anchor = 0
        for tid in range(chunk * N // chunks, (chunk + 1) * N // chunks):
            i, row = _neuron(tid, n_out, Q)
            b = tid // n_out
            tau_mem, tau_syn, threshold = tm_arr[i], ts_arr[i], th_arr[i]
            r_syn = tau_syn / (tau_mem - tau_syn)
            end = qe[row]
            r = _expand_row(QT, QI, pq, row, end + 1, chunk) if permuted else row
            V, I, t_prev, t_last = 0.0, 0.0, 0.0, -np.inf
            count = 0
            status, t_stop, I_stop = _OK, np.inf, np.nan
            anchor += 1
            t0, A, B = 0.0, 0.0, 0.0
            for k in range(end + 1):
                t_k = QT[r, k]  # +inf at k == end: the open gap after the last input
                w = 0.0
                if k < end:
                    flat = QI[r, k]
                    j = flat // max_in
                    w = W[j, i]
                    if t_k - t0 <= span:
                        blk = np.int64(E[b, flat, 2])
                        slot = blk & (cache - 1)
                        if cached_blk[slot] != blk or cached_anchor[slot] != anchor:
                            T = E[b, flat, 2] * width
                            Gm[slot] = np.exp((T - t0) / tau_mem)
                            Gs[slot] = np.exp((T - t0) / tau_syn)
                            cached_blk[slot] = blk
                            cached_anchor[slot] = anchor
                        alpha = E[b, flat, 0] * F[i, j, 0] * Gm[slot]
                        beta = E[b, flat, 1] * F[i, j, 1] * Gs[slot]
                        I_end = B / beta
                        V_end = A / alpha - r_syn * I_end
                        if lif.quiet_ends_scalar(V, I, V_end, I_end, threshold):
                            A += r_syn * w * alpha
                            B += w * beta
                            V, I = V_end, lif.input_jump_scalar(I_end, w)
                            t_prev = t_k
                            continue
                status, V, I, t_prev, t_last, count, t_stop, I_stop = _exact_step(
                    V, I, t_prev, t_last, t_k, k, w, tau_mem, tau_syn, threshold, solver, count, max_spikes, limit,
                    spike_times, spike_event, tid)
                if status != _OK or k == end:
                    break
                anchor += 1
                t0, A, B = t_k, V + r_syn * I, I
            if status != _OK:
                stuck_times[tid] = t_stop
                stuck_current[tid] = I_stop
            counts[tid] = count


@_pjit
def backward(qt, qi, pq, qe, W, tm_arr, ts_arr, th_arr, n_out, max_in, spike_times, spike_event, counts,
             grad_times, table, use_table, sample_start, sample_stop, grad_w, grad_d, has_delays, g_arrival,
             has_input_grad, g_threshold, want_tau, g_tau_mem, g_tau_syn, grazing):
    """Adjoint of samples ``[sample_start, sample_stop)``; ``prange`` over output neurons ``i``; queues as in
    ``forward_sequential``.

    Accumulates into ``grad_w``, ``grad_d`` (``[n_in, n_out]``, columns owned by ``i``), ``g_threshold[i]`` and
    ``grazing[tid] = (count, earliest time)``; writes ``g_arrival[b - sample_start, i, k]``, the gradient of the
    arrival time of queue entry ``k`` of neuron ``(b, i)`` (zeroed by the caller), when ``has_input_grad``."""
    max_spikes = spike_times.shape[1]
    n_batch = (counts.shape[0] // n_out) if n_out else 0
    Q, L1, QT, QI, permuted, chunks = _queue_setup(qt, qi, pq, n_batch, n_out)
    P_max = L1 + max_spikes
    for c_ in prange(chunks):
        chunk = np.int64(c_)
        for i in range(chunk * n_out // chunks, (chunk + 1) * n_out // chunks):
            prev_V = np.empty(P_max)
            prev_I = np.empty(P_max)
            code = np.empty(P_max, np.int64)  # >= 0: input k; < 0: spike -(m + 1)
            dec = np.empty((P_max, 4))  # decay over the gap before each point and its length, for the reverse walk
            tau_mem, tau_syn, threshold = tm_arr[i], ts_arr[i], th_arr[i]
            for b in range(sample_start, sample_stop):
                tid = b * n_out + i
                row = b * Q + (i if Q > 1 else 0)
                n_rec = min(counts[tid], max_spikes)
                if n_rec == 0:
                    continue  # no recorded spike: no gradient flows through this neuron
                n_points = spike_event[tid, n_rec - 1] + n_rec
                r = _expand_row(QT, QI, pq, row, n_points - n_rec, chunk) if permuted else row
                # Forward over the points: the state before each.
                V, I, tau = 0.0, 0.0, 0.0
                m = 0
                fresh = True  # the previous point is queue entry k - 1 (or t = 0): its gap is in the table
                for p in range(n_points):
                    prev_V[p], prev_I[p] = V, I
                    k = p - m
                    if m < n_rec and spike_event[tid, m] == k:
                        code[p] = -(m + 1)
                        t = spike_times[tid, m]
                        a, bb, c = lif.decay_scalar(t - tau, tau_mem, tau_syn)
                        dec[p, 0], dec[p, 1], dec[p, 2], dec[p, 3] = a, bb, c, t - tau
                        V, I = lif.reset_scalar(threshold, bb * I)
                        tau = t
                        m += 1
                        fresh = False
                    else:
                        code[p] = k
                        t = QT[r, k]
                        a, bb, c = _gap_decay(table, use_table, row, k, t, tau, fresh, tau_mem, tau_syn)
                        dec[p, 0], dec[p, 1], dec[p, 2], dec[p, 3] = a, bb, c, t - tau
                        fresh = True
                        V, I = _apply_input(V, I, a, bb, c, QI[r, k], W, max_in, i)
                        tau = t
                # Reverse walk of the adjoint (lV, lI, lT).
                lV, lI, lT = 0.0, 0.0, 0.0
                n_graze, t_graze = 0.0, 0.0
                for p in range(n_points - 1, -1, -1):
                    Ip = prev_I[p]
                    if code[p] >= 0:
                        kq = code[p]
                        a, bb, c = dec[p, 0], dec[p, 1], dec[p, 2]
                        if want_tau:
                            a_tm, c_tm, b_ts, c_ts = lif.decay_param_grads_scalar(dec[p, 3], tau_mem, tau_syn, a, bb, c)
                            g_tau_mem[i] += lV * (a_tm * prev_V[p] + c_tm * Ip)
                            g_tau_syn[i] += lV * (c_ts * Ip) + lI * (b_ts * Ip)
                        I_pre = bb * Ip
                        V_post = a * prev_V[p] + c * Ip
                        u = lif.voltage_rate_scalar(V_post, I_pre, tau_mem)
                        v = lif.current_rate_scalar(I_pre, tau_syn)
                        gs = u * lV + v * lI
                        j = QI[r, kq] // max_in
                        grad_w[j, i] += lI
                        g_arr = gs + lT
                        if has_input_grad:
                            g_arrival[b - sample_start, i, kq] = g_arr
                        if has_delays:
                            grad_d[j, i] += g_arr
                        lV_old = lV
                        lV = a * lV_old
                        lI = c * lV_old + bb * lI
                        lT = -gs
                    else:
                        ms = -code[p] - 1
                        t_s = spike_times[tid, ms]
                        a, bb, c = dec[p, 0], dec[p, 1], dec[p, 2]
                        a_tm, c_tm, b_ts, c_ts = 0.0, 0.0, 0.0, 0.0
                        if want_tau:
                            a_tm, c_tm, b_ts, c_ts = lif.decay_param_grads_scalar(dec[p, 3], tau_mem, tau_syn, a, bb, c)
                        I_pre = bb * Ip
                        D = lif.crossing_slope_scalar(I_pre, threshold, tau_mem)
                        v = lif.current_rate_scalar(I_pre, tau_syn)
                        lTt = lT + grad_times[tid, ms]
                        g_tau_syn[i] += lI * (b_ts * Ip)  # the current after the reset, b I
                        if D <= 0.0:  # grazing spike: its IFT term (every 1/D factor) is dropped
                            lV = 0.0
                            lI = bb * lI
                            n_graze += 1.0
                            t_graze = t_s
                        else:
                            gs = lTt + v * lI
                            g_threshold[i] += gs / D  # in place: the same order whatever the sample blocks
                            ift = lif.spike_adjoint_scalar(gs, D)  # ds/dtheta = -dV/dtheta / D
                            g_tau_mem[i] += ift * (a_tm * prev_V[p] + c_tm * Ip)
                            g_tau_syn[i] += ift * (c_ts * Ip)
                            lV = (-a / D) * gs  # lif.spike_adjoint_scalar(gs, D) carried back through the decay
                            lI = bb * lI + (-c / D) * gs
                        lT = lTt
                if n_graze > 0.0:
                    grazing[tid, 0] = n_graze
                    grazing[tid, 1] = t_graze


# backward_closed's rebased currents: a spike's current within this relative distance of the threshold (of the sum
# of the absolute terms; the factors' rounding is below 1e-13 of it) is recomputed with the exponentials.
NEAR_GRAZING = 1e-11


# backward_closed's rebased factors of queue entry k (input j) of neuron i, sample b, in the span ending at Tm:
# (ok, e^{-(Tm - t_k)/tau_mem}, e^{-(Tm - t_k)/tau_syn}) as products E F G (G of the entry's time block from the
# span's cache, filled on a miss), or ok = False when the block starts more than reach before Tm. Written out at both
# of its uses in the kernel: a helper with array arguments, even inlined into Numba's IR (inline="always"), has its
# arrays reference-counted per call in the serial compilation (atomic NRT_incref / NRT_decref per entry: that
# variant took 2-4x the parallel one's time at one thread), which the written-out code does not.


@_pjit
def backward_closed(qt, qi, pq, qe, W, tm_arr, ts_arr, th_arr, n_out, max_in, spike_times, spike_event, counts,
                    grad_times, sample_start, sample_stop, grad_w, grad_d, has_delays, g_arrival, has_input_grad,
                    g_threshold, want_tau, g_tau_mem, g_tau_syn, grazing, rebased, E, F, width, reach, cache, qs):
    """``lif_backward(method="closed")`` of a feed-forward layer: the EventProp closed form of
    ``spikescan._closed_backward`` (read its docstring for the derivation) and of the CUDA kernel
    ``spikescan_lif_backward_closed``, per output neuron ``i`` (``prange`` over chunks of them, samples in order
    inside, so that every sum has a fixed order and no atomics). Per (sample, neuron) with recorded spikes: the
    currents at the spikes, first to last (each span's arrivals decayed to its end); the adjoint at the spikes, last
    to first (a grazing spike's time moves with the point before it: the previous spike of its gap, or the arrival
    before it); then every entry before the last recorded spike in closed form from its span's anchor. Arguments and
    outputs as ``backward`` (without the decay table); ``g_arrival`` is added to (zeroed by the caller).

    ``rebased`` (one pair of time constants; PERF.md P3b, as the CUDA kernel's ``REBASED``): every exponent of steps
    1 and 3 is ``-(T_m - t - D)/tau`` for an input at ``t`` of time block ``T`` (``rebased_tables``' ``E [batch,
    L1, 3]`` of the sample's shared queue, read at the entry's position in it: ``k`` without delays, the
    permutation's with delays; blocks of ``width``; ``F``: the synapses' ``e^{D/tau}``, read only ``has_delays``;
    materialised queues with delays have no position and take ``rebased=False``), so the entry's exponentials are
    the products ``E F G`` with ``G = e^{-(T_m - T)/tau}`` computed once per span and block (a direct-mapped cache
    of ``cache`` slots, a power of two). An entry whose block starts more than ``reach`` before ``T_m`` (so ``G``
    stays far from underflow) takes the exponentials. Step 3's cross term is ``decay_scalar``'s
    (``lif.decay_given_scalar``: one ``expm1`` where ``|x| < 1``). Rounding differs from the exponentials by a few
    units of the last place of each factor.

    ``qs``: the source input of every entry of ``qi`` (``forward_sequential``'s), or empty (per-neuron queues: their
    rows are divided as they are read), so that steps 1 and 3 take no integer division per entry."""
    max_spikes = spike_times.shape[1]
    n_batch = (counts.shape[0] // n_out) if n_out else 0
    Q, L1, QT, QI, permuted, chunks = _queue_setup(qt, qi, pq, n_batch, n_out)
    perm = pq[0]
    has_qs = qs.shape[0] > 0
    for c_ in prange(chunks):
        chunk = np.int64(c_)
        for i in range(chunk * n_out // chunks, (chunk + 1) * n_out // chunks):
            I_spk = np.empty(max(max_spikes, 1))  # the current at each recorded spike
            lV_spk = np.empty(max(max_spikes, 1))  # lambda^- of each recorded spike
            lI_spk = np.empty(max(max_spikes, 1))
            # G of the blocks met in the current span: slot blk % cache holds block cached_blk's, valid while
            # cached_span == span (a counter: every span of every sample is a new one).
            Gm = np.empty(cache)
            Gs = np.empty(cache)
            cached_blk = np.full(cache, -1, np.int64)
            cached_span = np.full(cache, -1, np.int64)
            span = 0
            tau_mem, tau_syn, threshold = tm_arr[i], ts_arr[i], th_arr[i]
            # Column i in contiguous copies (entries come in random source order); the sums' order is unchanged.
            w_col = W[:, i].copy()
            gw = grad_w[:, i].copy()
            gd = grad_d[:, i].copy() if has_delays else gw
            for b in range(sample_start, sample_stop):
                tid = b * n_out + i
                row = b * Q + (i if Q > 1 else 0)
                n_rec = min(counts[tid], max_spikes)
                if n_rec == 0:
                    continue  # no recorded spike: no gradient flows through this neuron
                r = _expand_row(QT, QI, pq, row, spike_event[tid, n_rec - 1], chunk) if permuted else row
                # 1. Currents at the spikes. With the rebased factors, a spike whose current lies within their
                # rounding of the threshold (nearly grazing: the sign of its crossing slope is at stake) has the
                # whole pass redone with the exponentials, so that grazing is decided as without them.
                for attempt in range(2):
                    factors = rebased and attempt == 0
                    near = False
                    I = 0.0
                    lo = 0
                    for m in range(n_rec):
                        hi = spike_event[tid, m]
                        Tm = spike_times[tid, m]
                        J = 0.0
                        J_abs = 0.0
                        span += 1
                        for k in range(lo, hi):
                            j = qs[r, k] if has_qs else QI[r, k] // max_in
                            ok, alpha, beta = False, 0.0, 0.0
                            if factors:  # the rebased factors (the comment above the kernel)
                                pos = perm[row, k] if permuted else k  # position in the shared queue
                                T = E[b, pos, 2] * width
                                if not (Tm - T > reach):
                                    blk = np.int64(E[b, pos, 2])
                                    slot = blk & (Gm.shape[0] - 1)
                                    if cached_blk[slot] != blk or cached_span[slot] != span:
                                        Gm[slot] = np.exp(-(Tm - T) / tau_mem)
                                        Gs[slot] = np.exp(-(Tm - T) / tau_syn)
                                        cached_blk[slot] = blk
                                        cached_span[slot] = span
                                    ok = True
                                    alpha = E[b, pos, 0] * (F[i, j, 0] if has_delays else 1.0) * Gm[slot]
                                    beta = E[b, pos, 1] * (F[i, j, 1] if has_delays else 1.0) * Gs[slot]
                            if ok:  # the factors (see the docstring)
                                term = w_col[j] * beta
                                J += term
                                J_abs += abs(term)
                            else:
                                J += w_col[j] * np.exp(-(Tm - QT[r, k]) / tau_syn)
                        carry_I = np.exp(-(Tm - spike_times[tid, m - 1]) / tau_syn) * I if m > 0 else 0.0
                        I = carry_I + J if m > 0 else J
                        I_spk[m] = I
                        lo = hi
                        if factors and abs(I - threshold) <= NEAR_GRAZING * (J_abs + abs(carry_I)):
                            near = True
                            break
                    if not near:
                        break
                # 2. Adjoint at the spikes, last to first.
                lV_next, lI_next, carry = 0.0, 0.0, 0.0
                g_th, n_graze, t_graze, s_tm, s_ts = 0.0, 0.0, 0.0, 0.0, 0.0
                for m in range(n_rec - 1, -1, -1):
                    lV_plus, lI_plus = 0.0, 0.0
                    if m + 1 < n_rec:
                        a, bb, c = lif.decay_scalar(spike_times[tid, m + 1] - spike_times[tid, m], tau_mem, tau_syn)
                        lV_plus = a * lV_next
                        lI_plus = c * lV_next + bb * lI_next
                    Im = I_spk[m]
                    gs = (grad_times[tid, m] + carry) + lif.reset_time_grad_scalar(lV_plus, Im, tau_mem)
                    D = lif.crossing_slope_scalar(Im, threshold, tau_mem)
                    carry = 0.0
                    if D <= 0.0:  # grazing: IFT term dropped; its time moves with the point before it
                        lV_minus = 0.0
                        n_graze += 1.0
                        t_graze = spike_times[tid, m]  # last to first: the earliest stays
                        if m > 0 and spike_event[tid, m - 1] == spike_event[tid, m]:
                            carry = gs
                        elif spike_event[tid, m] > 0:  # the arrival before it
                            k = spike_event[tid, m] - 1
                            if has_input_grad:
                                g_arrival[b - sample_start, i, k] += gs
                            if has_delays:
                                gd[QI[r, k] // max_in] += gs
                    else:
                        lV_minus = lif.spike_adjoint_scalar(gs, D)
                        g_th += gs / D
                    if want_tau and m > 0:  # the state (0, I_{m-1}) left by spike m - 1, across the gap to spike m
                        gap = spike_times[tid, m] - spike_times[tid, m - 1]
                        a, bb, c = lif.decay_scalar(gap, tau_mem, tau_syn)
                        _, c_tm, b_ts, c_ts = lif.decay_param_grads_scalar(gap, tau_mem, tau_syn, a, bb, c)
                        s_tm += lV_minus * c_tm * I_spk[m - 1]
                        s_ts += (lV_minus * c_ts + lI_plus * b_ts) * I_spk[m - 1]
                    lV_spk[m] = lV_minus
                    lI_spk[m] = lI_plus
                    lV_next, lI_next = lV_minus, lI_plus
                g_threshold[i] += g_th
                if n_graze > 0.0:
                    grazing[tid, 0] = n_graze
                    grazing[tid, 1] = t_graze
                # 3. Every entry before the last recorded spike, span by span.
                e_tm, e_ts = 0.0, 0.0
                lo = 0
                for m in range(n_rec):
                    hi = spike_event[tid, m]
                    Tm, lVm, lIm = spike_times[tid, m], lV_spk[m], lI_spk[m]
                    span += 1
                    for k in range(lo, hi):
                        j = qs[r, k] if has_qs else QI[r, k] // max_in
                        w = w_col[j]
                        s = Tm - QT[r, k]
                        ok, alpha, beta = False, 0.0, 0.0
                        if rebased:  # the rebased factors (the comment above the kernel)
                            pos = perm[row, k] if permuted else k  # the entry's position in the sample's shared queue
                            T = E[b, pos, 2] * width
                            if not (Tm - T > reach):
                                blk = np.int64(E[b, pos, 2])
                                slot = blk & (Gm.shape[0] - 1)
                                if cached_blk[slot] != blk or cached_span[slot] != span:
                                    Gm[slot] = np.exp(-(Tm - T) / tau_mem)
                                    Gs[slot] = np.exp(-(Tm - T) / tau_syn)
                                    cached_blk[slot] = blk
                                    cached_span[slot] = span
                                ok = True
                                alpha = E[b, pos, 0] * (F[i, j, 0] if has_delays else 1.0) * Gm[slot]
                                beta = E[b, pos, 1] * (F[i, j, 1] if has_delays else 1.0) * Gs[slot]
                        if ok:  # the same factors as step 1's
                            a, bb, c = lif.decay_given_scalar(s, alpha, beta, tau_mem, tau_syn)
                        else:
                            a, bb, c = lif.decay_scalar(s, tau_mem, tau_syn)
                        lV = a * lVm
                        lI = c * lVm + bb * lIm
                        gw[j] += lI
                        if has_input_grad or has_delays:
                            g_arr = lif.arrival_time_grad_scalar(w, lV, lI, tau_mem, tau_syn)
                            if has_input_grad:
                                g_arrival[b - sample_start, i, k] += g_arr
                            if has_delays:
                                gd[j] += g_arr
                        if want_tau:
                            _, c_tm, b_ts, c_ts = lif.decay_param_grads_scalar(s, tau_mem, tau_syn, a, bb, c)
                            e_tm += lVm * c_tm * w
                            e_ts += (lVm * c_ts + lIm * b_ts) * w
                    lo = hi
                g_tau_mem[i] += s_tm + e_tm
                g_tau_syn[i] += s_ts + e_ts
            for j in range(W.shape[0]):
                grad_w[j, i] = gw[j]
                if has_delays:
                    grad_d[j, i] = gd[j]


@_pjit
def scatter_input_grads(qi, pq, qe, g_arrival, sample_start, grad_in, n_out):
    """``grad_in[b, flat] += g_arrival[b - sample_start, i, k]`` over neurons ``i`` (in order) and queue entries
    ``k`` of samples ``b`` of the block (flat sources from ``qi`` or the permutation ``pq``, as in ``_expand_row``);
    ``prange`` over samples."""
    n_block = g_arrival.shape[0]
    perm, index = pq[0], pq[2]
    permuted = perm.shape[0] > 0
    Q = (perm.shape[0] if permuted else qi.shape[0]) // grad_in.shape[0]
    for bl_ in prange(n_block):
        bl = np.int64(bl_)
        b = sample_start + bl
        for i in range(n_out):
            row = b * Q + (i if Q > 1 else 0)
            for k in range(qe[row]):
                flat = index[b, perm[row, k]] if permuted else qi[row, k]
                grad_in[b, flat] += g_arrival[bl, i, k]


# Bucket sort of a queue row (delayed_queues): fall back to a merge sort when the buckets' insertion sorts would cost
# more than this many comparisons per entry (sum of squared bucket sizes over the entries; about 2 for spread-out
# arrivals).
_BUCKET_COST = 8


@_jit
def stable_order(values, bucket_sort=True):
    """The stable ascending order of ``values`` (finite floats): ``np.argsort(values, kind="mergesort")``, the same
    permutation (which ``bucket_sort=False`` returns directly). Bucket sort: one bucket per entry over ``[min,
    max]`` by a bucket index that is monotone in the value (so equal values share a bucket, and entries enter their
    bucket in index order), then an insertion sort per bucket that moves an entry only past strictly larger values;
    O(n) for spread-out values. Rows whose buckets would be crowded (``_BUCKET_COST``), or whose span does not give
    a finite scale, take the merge sort."""
    n = values.size
    if not bucket_sort:
        return np.argsort(values, kind="mergesort")
    lo, hi = np.inf, -np.inf
    for k in range(n):
        lo = min(lo, values[k])
        hi = max(hi, values[k])
    span = hi - lo
    if n <= 1 or span == 0.0:
        return np.arange(n)  # all equal: index order is the stable order
    scale = n / span
    if not (np.isfinite(span) and np.isfinite(scale)):
        return np.argsort(values, kind="mergesort")
    bucket = np.empty(n, np.int64)
    start = np.zeros(n + 3, np.int64)  # buckets 0 .. n; start[c + 2] counts bucket c, then prefix sums
    for k in range(n):
        c = np.int64((values[k] - lo) * scale)  # monotone in values[k]: a rounded subtraction, a positive scale
        c = min(c, n)
        bucket[k] = c
        start[c + 2] += 1
    cost = 0
    for c in range(n + 1):
        cost += start[c + 2] * start[c + 2]
    if cost > _BUCKET_COST * n + 64:
        return np.argsort(values, kind="mergesort")
    for c in range(n + 1):
        start[c + 2] += start[c + 1]  # start[c + 1]: first slot of bucket c
    order = np.empty(n, np.int64)
    for k in range(n):  # ascending k: a bucket holds its entries in index order
        c = bucket[k]
        order[start[c + 1]] = k
        start[c + 1] += 1
    # start[c] is now the first slot of bucket c (and start[c + 1] its end).
    for c in range(n + 1):
        first, end = start[c], start[c + 1]
        for x in range(first + 1, end):
            key = order[x]
            v = values[key]
            y = x - 1
            while y >= first and values[order[y]] > v:  # strictly larger only: ties keep index order
                order[y + 1] = order[y]
                y -= 1
            order[y + 1] = key
    return order


@_pjit
def shared_queue(flat, n_real, times_out, index_out):
    """``_queue.shared_queue`` compiled, per sample (``prange``): the finite entries of the row ``flat[b]`` (``[batch,
    N]`` float64 spike times, flat source index ``j * max_in + m``) in flat order, sorted stably by time
    (``stable_order``), then ``+inf`` / ``-1`` padding up to ``L1 = times_out.shape[1]``. ``n_real[b]``: the row's
    finite entries. The same arrays as NumPy's stable argsort of the whole row (ties keep the flat order)."""
    batch, N = flat.shape
    L1 = times_out.shape[1]
    for b_ in prange(batch):
        b = np.int64(b_)
        n = n_real[b]
        source = np.empty(n, np.int64)
        values = np.empty(n)
        k = 0
        for f in range(N):
            if flat[b, f] < np.inf:
                source[k] = f
                values[k] = flat[b, f]
                k += 1
        order = stable_order(values, True)
        for k in range(n):
            times_out[b, k] = values[order[k]]
            index_out[b, k] = source[order[k]]
        for k in range(n, L1):
            times_out[b, k] = np.inf
            index_out[b, k] = -1


@_pjit
def unrolled_counts(qend, Q, log_k, log_n, R, n_out, out_end):
    """Entries per (sample, neuron) row of the unrolled recurrent layer (``unrolled_queues``): the neuron's input
    entries plus the recurrent arrivals it received (spikes ``m < log_n[b]`` of neurons ``k`` with ``R[k, i] !=
    0``); ``out_end [batch * n_out]``."""
    for r_ in prange(out_end.shape[0]):
        r = np.int64(r_)
        b = r // n_out
        i = r - b * n_out
        n = qend[b * Q + (i if Q > 1 else 0)]
        for m in range(log_n[b]):
            if R[log_k[b, m], i] != 0.0:
                n += 1
        out_end[r] = n


@_pjit
def unrolled_queues(qt, qi, qend, Q, max_in, n_in, log_t, log_k, log_n, R, Dr, has_rd, n_out, out_times,
                    out_index):
    """The queues of ``_recurrent.unrolled_residuals`` (identical values) for NumPy arrays: row ``(b, i)`` holds the
    neuron's input entries (source ``j = flat // max_in``) merged with the recurrent arrivals it received
    (``log_t[b, m] + Dr[k, i]``, source ``n_in + k``, zero-weight arrivals left out), ascending, at equal times the
    inputs first and the arrivals in spike order: the stable sort of the NumPy version. The arrivals are put in order
    by ``stable_order`` and merged with the (already sorted) input entries. Outputs ``[batch, n_out, L]``, every
    element written (``+inf`` / ``-1`` padding)."""
    L = out_times.shape[2]
    M = log_t.shape[1]
    for r_ in prange(out_times.shape[0] * n_out):
        r = np.int64(r_)
        b = r // n_out
        i = r - b * n_out
        row = b * Q + (i if Q > 1 else 0)
        n_ext = qend[row]
        rec_t = np.empty(M)
        rec_src = np.empty(M, np.int64)
        n_rec = 0
        for m in range(log_n[b]):
            k = log_k[b, m]
            if R[k, i] != 0.0:
                rec_t[n_rec] = log_t[b, m] + (Dr[k, i] if has_rd else 0.0)
                rec_src[n_rec] = n_in + k
                n_rec += 1
        order = stable_order(rec_t[:n_rec])
        a = 0
        c = 0
        for p in range(n_ext + n_rec):
            if c >= n_rec or (a < n_ext and qt[row, a] <= rec_t[order[c]]):  # ties: the input first
                out_times[b, i, p] = qt[row, a]
                out_index[b, i, p] = qi[row, a] // max_in
                a += 1
            else:
                out_times[b, i, p] = rec_t[order[c]]
                out_index[b, i, p] = rec_src[order[c]]
                c += 1
        for p in range(n_ext + n_rec, L):
            out_times[b, i, p] = np.inf
            out_index[b, i, p] = -1


@_jit
def _delayed_row(times, src, delays_t, n_real, r, bucket_sort):
    """``(b, i, n, arrival, order)`` of queue row ``r = b * n_out + i``: the arrivals ``times[b, k] + delays_t[i,
    src[b, k]]`` of the sample's ``n`` real shared-queue entries and their stable ascending order
    (``stable_order``)."""
    n_out = delays_t.shape[0]
    b = r // n_out
    i = r - b * n_out
    n = n_real[b]
    arrival = np.empty(n)
    for k in range(n):
        arrival[k] = times[b, k] + delays_t[i, src[b, k]]
    return b, i, n, arrival, stable_order(arrival, bucket_sort)


@_pjit
def delayed_queues(times, index, n_real, src, delays_t, q_times, q_index, bucket_sort=True):
    """Per-neuron queues of a layer with delays from the shared queue of every sample (``_queue.delayed_queues``,
    identical values): row ``(b, i)`` holds the arrivals ``times[b, k] + delays_t[i, src[b, k]]`` of the real
    entries, stably sorted (simultaneous arrivals keep their shared-queue order; ``stable_order``), then ``+inf`` /
    ``-1`` padding. ``src``: the source neuron of every shared-queue entry; ``delays_t``: ``[n_out, n_in]``;
    outputs ``[batch, n_out, L1]``, every element written here (padding included). ``bucket_sort=False``: the merge
    sort for every row (the benchmark's baseline, benchmarks/bench_queues.py)."""
    batch, L1 = times.shape
    n_out = delays_t.shape[0]
    for r in prange(batch * n_out):
        b, i, n, arrival, order = _delayed_row(times, src, delays_t, n_real, np.int64(r), bucket_sort)
        for k in range(n):
            q_times[b, i, k] = arrival[order[k]]
            q_index[b, i, k] = index[b, order[k]]
        for k in range(n, L1):
            q_times[b, i, k] = np.inf
            q_index[b, i, k] = -1


@_pjit
def delayed_permutation(times, index, n_real, src, delays_t, perm, bucket_sort=True):
    """``delayed_queues`` in the permutation format (``_queue.PermutedQueues``): row ``b * n_out + i`` of ``perm``
    ``[batch * n_out, L1]`` holds the shared-queue positions of the row's entries in the stable order of their
    arrivals (the same order, so ``_expand_row`` gives ``delayed_queues``'s values), then ``n_real[b]`` (a padding
    position) for the padding. Every element written here."""
    batch, L1 = times.shape
    n_out = delays_t.shape[0]
    for r_ in prange(batch * n_out):
        r = np.int64(r_)  # prange indices may be typed unsigned
        _, _, n, _, order = _delayed_row(times, src, delays_t, n_real, r, bucket_sort)
        for k in range(n):
            perm[r, k] = order[k]
        for k in range(n, L1):
            perm[r, k] = n


@_pjit
def expand_permutation(pq, q_times, q_index):
    """The materialised queues ``q_times``, ``q_index`` ``[batch * n_out, L1]`` of a permutation ``pq = (perm, times,
    index, source, delays_t)`` (``_queue.expand``'s values: the same addition, ``+inf`` / ``-1`` padding), in
    parallel over rows, each by ``_expand_row``: for the kernels that read whole materialised queues (the recurrent
    layer's), from residuals that keep the permutation."""
    for r_ in prange(q_times.shape[0]):
        r = np.int64(r_)
        _expand_row(q_times, q_index, pq, r, q_times.shape[1], r)
