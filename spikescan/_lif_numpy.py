"""NumPy implementation of the LIF layer: sequential reference, chunked speculative scan, and exact backward.

All state is float64. Neurons are flattened to ``n = b * n_out + i`` and vectorised over; each neuron reads its
queue row ``b * Q + (i if Q > 1 else 0)`` (see ``_queue.build_queues``).
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import warnings

import numpy as np

from . import _memory
from ._queue import PermutedQueues, build_queues, compiled_permutation, materialised
from ._scan import recurrence_loop, recurrence_scan
from ._types import GrazingSpikeWarning, LIFGrads, LIFResiduals, LIFResult, RunawayFiringError
from .neurons import lif

# Default of ``lif_forward(max_total_spikes=...)``: spikes per neuron per sample, recorded or not.
DEFAULT_MAX_TOTAL_SPIKES = 10_000

# The compiled engine keeps the queues of a feed-forward layer with delays in the permutation format
# (``_queue.PermutedQueues``: 2 bytes per entry instead of 16, uint16 positions while L1 <= 65536, int32 beyond);
# False materialises them as the NumPy engine does (benchmarks/bench_queues.py compares the two).
COMPILED_PERMUTATION = True
PERMUTATION_MAX_UINT16 = 65536
# The compiled sequential forward of a layer whose neurons share one queue per sample and one pair of time constants
# (no delays) walks up to this many neurons of a sample together, entry by entry (``_lif_numba.forward_lanes``: the
# same bits as one neuron after the other, ``forward_sequential``, which 0 selects); ``_lanes`` takes fewer when a
# small batch would leave the threads too few groups.
COMPILED_LANES = 64
# The compiled sequential forward of a layer with delays and one pair of time constants sums rebased exponentials
# (``_lif_numba.forward_rebased``, PERF.md P3b) instead of taking two exponentials per queue entry; False: the
# exponentials (``forward_sequential``). It applies while every exponent stays small: |r| = |tau_syn / (tau_mem -
# tau_syn)| <= REBASED_MAX_R (V is a difference of two sums scaled by r), max(delays) <= REBASED_MAX_DELAY * min(tau);
# time blocks of REBASED_BLOCK * min(tau) and a new anchor at least every REBASED_SPAN * min(tau).
COMPILED_REBASED = True
REBASED_MAX_R = 8.0
REBASED_MAX_DELAY = 32.0
REBASED_BLOCK = 8.0
REBASED_SPAN = 16.0
# Slots of the rebased walk's cache of block factors (a power of two): the blocks within reach of one anchor are
# a handful ((span + delays) / block width + 2, at most 8 within the limits above).
REBASED_CACHE = 16
# The compiled closed-form backward (``_lif_numba.backward_closed``) forms its per-entry exponentials as products
# of the same tabulated factors (shared-queue position, synapse, and one per span and time block) for a layer with
# one pair of time constants, delays within REBASED_MAX_DELAY * min(tau) and queues that give each entry's position
# in the sample's shared queue (no delays and one queue per sample, or the permutation format); an entry whose time
# block starts more than REBASED_REACH * min(tau) before its span's spike keeps the exponentials. False: the
# exponentials everywhere.
COMPILED_REBASED_CLOSED = True
REBASED_REACH = 64.0
# The compiled kernels walk permuted queues in chunks of neurons, this many per Numba thread (each chunk expands its
# neurons' rows into one scratch row).
COMPILED_CHUNKS_PER_THREAD = 8

# Neurons x points handled at once by the backward, to bound its memory (about 400 bytes per point, so ~1.6 GB for
# the loop and ~0.5 GB for the scan, whose doubling steps make more temporaries). The loop pays a Python step per
# point per group, so it takes larger groups.
_BACKWARD_POINTS_PER_GROUP = {"sequential": 1 << 22, "scan": 1 << 20}
_BACKWARD_BYTES_PER_POINT = 640  # measured peak <= 500 with the time-constant terms (tests/test_memory.py)


class _Layout:
    """Index bookkeeping shared by forward and backward."""

    def __init__(self, queue_shape, n_out, max_in):
        batch, Q, L1 = queue_shape
        self.batch, self.Q, self.L1, self.n_out, self.max_in = batch, Q, L1, n_out, max_in
        n = np.arange(batch * n_out)
        self.b = n // n_out
        self.i = n % n_out
        self.row = self.b * Q + (self.i if Q > 1 else 0)


def _event_weights(weights, queue_index, max_in, rows, cols, ks, applies):
    """Weight of queue entry ``ks`` of queue ``rows`` for neuron column ``cols``; 0 where ``applies`` is False."""
    idx = queue_index[rows, ks]
    if weights.shape[0] == 0:  # a layer without inputs: only padding entries
        return np.zeros(np.broadcast(idx, cols).shape)
    src = np.where(idx >= 0, idx // max(max_in, 1), 0)
    return np.where(applies & (idx >= 0), weights[src, cols], 0.0)


def unresolvable_spike_error(neuron, n_out, t):
    """The error for flat neuron ``neuron`` (sample * n_out + index) firing twice at float64 time ``t``."""
    t = float(t)
    spacing = abs(t) - float(np.nextafter(abs(t), 0.0))  # finite at the largest float64 (np.spacing gives inf)
    weights = "the synaptic current is far above threshold (check the weights)"
    far = ("the times lie so far from zero that this spacing is coarse against the time constants, so that even a "
           "first spike after its input cannot be placed (shift the times to start near 0, or use a time unit closer "
           "to the time constants)")
    causes = f"{far}, or {weights}" if spacing > 1e-6 else f"{weights}, or {far}"
    return FloatingPointError(
        f"neuron {neuron % n_out} of sample {neuron // n_out} fires twice at t={t!r}: two spikes at one float64 "
        f"time, since the spacing of float64 times there ({spacing!r}) is coarser than the time between its spikes. "
        f"Either {causes}")


def runaway_firing_error(neuron, n_out, t, current, limit, threshold):
    """The error for flat neuron ``neuron`` exceeding ``limit`` spikes with a spike at ``t`` and input current
    ``current`` there."""
    sample, index = neuron // n_out, neuron % n_out
    return RunawayFiringError(
        f"neuron {index} of sample {sample} fires more than max_total_spikes={limit} times: spike {limit + 1} at "
        f"t={float(t)!r} with input current I={float(current)!r} (threshold {float(threshold)!r}); a current far "
        "above threshold fires about once per tau_mem * threshold / I (check the weights), or raise "
        "max_total_spikes if this many spikes are intended",
        sample=int(sample), neuron=int(index), time=float(t), current=float(current), limit=int(limit))


def _record(times, events, counts, last_spike, neurons, t_spike, k, max_spikes, n_out, limit, current, threshold):
    # Two spikes of one neuron at the same float64 time mean a current so large that the time between spikes is
    # below the resolution of t: the exact spike train cannot be represented, so say so instead of looping on.
    stuck = t_spike <= last_spike[neurons]
    if stuck.any():
        raise unresolvable_spike_error(int(neurons[np.argmax(stuck)]), n_out, t_spike[np.argmax(stuck)])
    # Runaway firing: spike number limit + 1 (recorded or not) stops the forward.
    over = counts[neurons] >= limit
    if over.any():
        j = np.argmax(over)
        raise runaway_firing_error(int(neurons[j]), n_out, t_spike[j], current[j], limit, threshold[j])
    last_spike[neurons] = t_spike
    slot = counts[neurons]
    keep = slot < max_spikes
    times[neurons[keep], slot[keep]] = t_spike[keep]
    events[neurons[keep], slot[keep]] = k[keep] if np.ndim(k) else k
    counts[neurons] += 1


def _forward_sequential(qt, qi, end, W, lay, tm, ts, th, max_spikes, solver, limit):
    """Event-by-event loop over the queue, vectorised over neurons (the float64 reference)."""
    N = lay.row.size
    V, I, t_cur = np.zeros(N), np.zeros(N), np.zeros(N)
    counts = np.zeros(N, np.int64)
    times = np.full((N, max_spikes), np.inf)
    events = np.full((N, max_spikes), -1, np.int64)
    last_spike = np.full(N, -np.inf)
    th = th[lay.i]  # per flat neuron
    for k in range(int(end.max(initial=0)) + 1):
        active = k <= end
        t_k = qt[lay.row, k]
        gap = np.where(active, t_k, 0.0) - np.where(active, t_cur, 0.0)
        while True:
            fires, s_hi = lif.fires_in_gap(V, I, gap, tm, ts, th)
            f = np.flatnonzero(fires & active)
            if f.size == 0:
                break
            s = lif.solve_spike_time(V[f], I[f], s_hi[f], tm[f], ts[f], th[f], solver)
            t_sp = np.minimum(t_cur[f] + s, t_k[f])
            _, b, _ = lif.decay(s, tm[f], ts[f])
            V[f], I[f] = lif.reset(th[f], I[f] * b)
            t_cur[f] = t_sp
            gap[f] = t_k[f] - t_sp
            _record(times, events, counts, last_spike, f, t_sp, k, max_spikes, lay.n_out, limit, I[f], th[f])
        a, b, c = lif.decay(gap, tm, ts)
        w = _event_weights(W, qi, lay.max_in, lay.row, lay.i, k, active & (k < end))
        V, I = a * V + c * I, lif.input_jump(b * I, w)
        t_cur = np.where(active, t_k, t_cur)
    return times, events, counts


def _chunk_states(V, I, gap, w):
    """States after every event of a chunk from ``(V, I)``, by one associative scan of the event maps."""
    a, b, c = gap
    zero = np.zeros_like(a)
    # Each event's map is its decay then lif.input_jump (the offset w), composed in the scan.
    x = recurrence_scan(np.array([[a, c], [zero, b]]), np.array([zero, w]), x0=(V, I))
    return x[0], x[1]


def _forward_scan(qt, qi, end, W, lay, tm, ts, th, max_spikes, solver, chunk_size, limit):
    """Chunked speculative scan (DESIGN.md section 4), vectorised over neurons.

    Each round, every unfinished neuron takes its next ``chunk_size`` queue entries, scans them assuming no output
    spike, tests every gap, and either commits the whole chunk or stops at the first firing gap, solves the spike
    time there, resets, fires any further spikes of the same gap (the rest of the gap is tested again, as in the
    sequential loop; a burst costs no chunk scans), and resumes after them in the next round. Rounds continue until
    every queue is consumed.
    """
    N = lay.row.size
    V, I, t_cur = np.zeros(N), np.zeros(N), np.zeros(N)
    pos = np.zeros(N, np.int64)
    counts = np.zeros(N, np.int64)
    times = np.full((N, max_spikes), np.inf)
    events = np.full((N, max_spikes), -1, np.int64)
    last_spike = np.full(N, -np.inf)
    L1 = qt.shape[1]
    # A chunk longer than the queue holds only padding past its end: the same states (each lane's prefix reads only
    # the lanes before it) for log2(chunk) doubling steps instead of log2(L1).
    chunk_size = min(chunk_size, L1)
    offsets = np.arange(chunk_size)
    th = th[lay.i]  # per flat neuron
    while True:
        act = np.flatnonzero(pos <= end)
        if act.size == 0:
            break
        idx = pos[act, None] + offsets
        valid = idx <= end[act, None]
        idx_c = np.minimum(idx, L1 - 1)
        rows, cols = lay.row[act, None], lay.i[act, None]
        t = qt[rows, idx_c]
        w = _event_weights(W, qi, lay.max_in, rows, cols, idx_c, valid & (idx < end[act, None]))
        t_prev = np.concatenate([t_cur[act, None], t[:, :-1]], axis=1)
        gap = np.where(valid, t, 0.0) - np.where(valid, t_prev, 0.0)
        tm_a, ts_a = tm[act, None], ts[act, None]
        Vx, Ix = _chunk_states(V[act], I[act], lif.decay(gap, tm_a, ts_a), w)
        V0 = np.concatenate([V[act, None], Vx[:, :-1]], axis=1)
        I0 = np.concatenate([I[act, None], Ix[:, :-1]], axis=1)
        fires, s_hi = lif.fires_in_gap(V0, I0, gap, tm_a, ts_a, th[act, None])
        fires &= valid
        any_fire = fires.any(axis=1)
        # Neurons without a spike in the chunk commit all of it.
        quiet = ~any_fire
        nq = act[quiet]
        last = valid[quiet].sum(axis=1) - 1
        rq = np.flatnonzero(quiet)
        V[nq], I[nq], t_cur[nq] = Vx[rq, last], Ix[rq, last], t[rq, last]
        pos[nq] += last + 1
        # The others stop at their first firing gap and spike there.
        rf = np.flatnonzero(any_fire)
        if rf.size:
            nf = act[rf]
            k = np.argmax(fires[rf], axis=1)
            v0, i0 = V0[rf, k], I0[rf, k]
            s = lif.solve_spike_time(v0, i0, s_hi[rf, k], tm[nf], ts[nf], th[nf], solver)
            t_end = t[rf, k]
            t_sp = np.minimum(t_prev[rf, k] + s, t_end)
            _, b, _ = lif.decay(s, tm[nf], ts[nf])
            V[nf], I[nf] = lif.reset(th[nf], i0 * b)
            t_cur[nf] = t_sp
            pos[nf] += k
            _record(times, events, counts, last_spike, nf, t_sp, pos[nf], max_spikes, lay.n_out, limit, I[nf],
                    th[nf])
            # The rest of the same gap (what the next round's first lane would test): fire until it stays quiet.
            while True:
                again, s_hi2 = lif.fires_in_gap(V[nf], I[nf], t_end - t_cur[nf], tm[nf], ts[nf], th[nf])
                if not again.any():
                    break
                nf, t_end, s_hi2 = nf[again], t_end[again], s_hi2[again]
                s = lif.solve_spike_time(V[nf], I[nf], s_hi2, tm[nf], ts[nf], th[nf], solver)
                t_sp = np.minimum(t_cur[nf] + s, t_end)
                _, b, _ = lif.decay(s, tm[nf], ts[nf])
                V[nf], I[nf] = lif.reset(th[nf], I[nf] * b)
                t_cur[nf] = t_sp
                _record(times, events, counts, last_spike, nf, t_sp, pos[nf], max_spikes, lay.n_out, limit, I[nf],
                        th[nf])
    return times, events, counts


def choose_forward_method(n_neurons, queue_len, chunk_size):
    """``method="auto"`` for the NumPy engine: the scan pays ``log2(chunk)`` array passes per round to save Python
    steps, which wins on long queues while the per-round array work (neurons times chunk lanes) is small, the loop
    otherwise. Measured on the 2-core development machine: ``benchmarks/results/cpu_peers.json`` (1024 neurons,
    5000-event queues: scan 2.9 s against 5.3 s; 7680 neurons, 6-event queues: the loop 0.06 s against 0.12 s) and
    ``benchmarks/results/cpu_2core.json`` (16 neurons: scan 0.07 s against 0.56 s; 8192 neurons: the loop 16 s against
    22 s). The compiled engine always walks sequentially (its chunked walk computes the same states)."""
    lanes = min(chunk_size, queue_len)
    return "scan" if queue_len >= 64 and n_neurons * lanes <= (1 << 17) else "sequential"


# ``method="auto"`` for the backward of a feed-forward layer on the NumPy engine: ``"closed"`` (``_closed_backward``:
# a Python step per spike slot, every input entry in one vectorised pass), on a 2-core CPU 4.7-7.3x faster than the
# faster of ``"sequential"`` (a Python step per point) and ``"scan"`` (states by ``log2(points)`` passes, which used
# to win below ~32 neurons) for an SHD-like layer at batch 32 x 256 and 1 x 16 neurons, with and without delays
# (``benchmarks/results/cpu_closed_backward*.json``), whatever the layer's size.
BACKWARD_AUTO = "closed"
# ``method="auto"`` for the backward of a feed-forward layer on the compiled engine: the closed form
# (``_lif_numba.backward_closed``, its per-entry exponentials as products of tabulated factors where
# ``COMPILED_REBASED_CLOSED`` applies) rather than the reverse walk (``backward``, which reads an undelayed layer's gap
# decays from the table its neurons share). 2-core AMD EPYC, SHD-like batch 32 x 256 at ad5ed42
# (``benchmarks/results/cpu_closed_backward_numba*.json``): backward 0.38 s against 0.41 s without delays, 0.46 s
# against 0.67 s with; at batch 1 x 16 1.3-1.5 ms against 1.5-1.7 ms. With per-neuron time constants (no table, no
# factors) 0.57 s against 0.69-0.71 s (a spot check).
COMPILED_BACKWARD_AUTO = "closed"


def numba_available():
    """True if the compiled CPU kernels (``_lif_numba``, Numba) can be used."""
    try:
        import numba  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_engine(engine):
    """``"numba"`` or ``"numpy"`` for an ``engine`` argument of ``"auto"``, ``"numba"`` or ``"numpy"``.

    ``"auto"`` is the environment variable ``SPIKESCAN_ENGINE`` when set (e.g. to run a Keras model on the pure
    NumPy implementation without changing code), else Numba when installed.
    """
    if engine == "auto":
        chosen = os.environ.get("SPIKESCAN_ENGINE", "").strip().lower()
        if chosen and chosen != "auto":
            if chosen not in ("numba", "numpy"):
                raise ValueError(f"SPIKESCAN_ENGINE must be 'auto', 'numba' or 'numpy', got {chosen!r}")
            return resolve_engine(chosen)
        return "numba" if numba_available() else "numpy"
    if engine == "numba" and not numba_available():
        raise ImportError("engine='numba' needs Numba, which is not installed: pip install 'spikescan[cpu]' (or "
                          "pass engine='numpy' for the pure NumPy implementation)")
    return engine


def one_pair(tau_mem, tau_syn):
    """``(tau_mem, tau_syn)`` as floats when all neurons share one pair of ``[n_out]`` NumPy time constants, else
    ``None`` (also for no neuron): whether one table of decays or factors can serve every neuron."""
    if not len(tau_mem):
        return None
    tm, ts = float(tau_mem[0]), float(tau_syn[0])
    return (tm, ts) if (tau_mem == tm).all() and (tau_syn == ts).all() else None


def _rebased_source(res):
    """``(tau_mem, tau_syn, times, delays_t)`` where ``_closed_rebased_args`` builds its tables (one pair of time
    constants, the sample's shared queue, delays within ``REBASED_MAX_DELAY`` time constants), else ``None``."""
    pair = one_pair(res.tau_mem, res.tau_syn) if COMPILED_REBASED_CLOSED else None
    if pair is None:
        return None
    tm, ts = pair
    D = res.delays
    if res.queue_perm is not None:
        times, delays_t = res.shared_times, res.delays_t
    elif D is None and res.queue_times.shape[1] == 1:  # the sample's one queue is the shared one
        times, delays_t = res.queue_times[:, 0, :], np.zeros((0, 1))
    else:  # materialised per-neuron queues (with delays, or a recurrent layer's unrolled one): no shared position
        return None
    if D is not None and D.size and float(D.max()) > REBASED_MAX_DELAY * min(tm, ts):
        return None
    return tm, ts, times, delays_t


def _closed_rebased_args(res):
    """``(rebased, E, F, width, reach, cache)`` of ``_lif_numba.backward_closed`` (see ``COMPILED_REBASED_CLOSED``):
    ``rebased_tables``' tables of the sample's shared queue (``E [batch, L1, 3]``, read at each entry's position
    in it), or ``False`` and dummies."""
    from . import _lif_numba

    source = _rebased_source(res)
    if source is None:
        return False, np.zeros((1, 1, 3)), np.zeros((1, 1, 2)), 1.0, 0.0, 1
    tm, ts, times, delays_t = source
    tmin = min(tm, ts)
    times = np.ascontiguousarray(times)
    width = REBASED_BLOCK * tmin
    E = np.empty(times.shape + (3,))
    F = np.empty(delays_t.shape + (2,))  # no rows without delays: the kernel reads F only with them
    _lif_numba.rebased_tables(times.size + delays_t.size, times, delays_t, tm, ts, width, E, F)
    return True, E, F, width, REBASED_REACH * tmin, REBASED_CACHE


def closed_rebased_bytes(res):
    """Bytes of ``_closed_rebased_args``' tables (for the backward's memory check): 24 per entry of the shared
    queues, 16 per synapse; 0 where it builds none (per-neuron time constants, long delays, per-neuron queues)."""
    if _rebased_source(res) is None:
        return 0
    batch, n_in, _ = res.input_shape
    return 24 * batch * res.queue_length + 16 * n_in * res.weights.shape[1]


def _compiled_decay_table(qt2, qe, tau_mem, tau_syn, shared):
    """``(table, True)``: the decays of every gap between consecutive queue entries when all neurons share one
    queue per sample and one pair of time constants (then every neuron would compute the same ones), else a dummy
    and False."""
    from . import _lif_numba

    pair = one_pair(tau_mem, tau_syn) if shared else None
    if pair is not None:
        return _lif_numba.decay_table(qt2.size, qt2, qe, *pair), True
    return np.zeros((1, 1, 3)), False


def _delayed_queues_compiled(input_times, delays, bucket_sort=True, permutation=False):
    """``build_queues`` with delays, the per-neuron sorts in the compiled kernel (identical queues: the same stable
    order; ``bucket_sort``: ``_lif_numba.stable_order``'s, else a merge sort per row). ``permutation``: the same
    queues as a ``_queue.PermutedQueues`` (``_lif_numba.delayed_permutation``)."""
    from . import _lif_numba
    from ._queue import shared_queue

    times, index, n_real = shared_queue(input_times, np, compiled=True)
    batch, L1 = times.shape
    n_out = delays.shape[1]
    max_in = max(input_times.shape[2], 1)
    src = np.where(index >= 0, index // max_in, 0)
    delays_t = np.ascontiguousarray(delays.T)
    if permutation:
        perm = np.empty((batch, n_out, L1), np.uint16 if L1 <= PERMUTATION_MAX_UINT16 else np.int32)
        _lif_numba.delayed_permutation(batch * n_out * L1, np.ascontiguousarray(times), np.ascontiguousarray(index),
                                       np.ascontiguousarray(n_real), np.ascontiguousarray(src), delays_t,
                                       perm.reshape(batch * n_out, L1), bool(bucket_sort))
        return PermutedQueues(perm, times, index, np.broadcast_to(n_real[:, None], (batch, n_out)).copy(), delays_t)
    q_times = np.empty((batch, n_out, L1))  # every element written by the kernel
    q_index = np.empty((batch, n_out, L1), np.int64)
    _lif_numba.delayed_queues(batch * n_out * L1, np.ascontiguousarray(times), np.ascontiguousarray(index),
                              np.ascontiguousarray(n_real), np.ascontiguousarray(src), delays_t, q_times, q_index,
                              bool(bucket_sort))
    return q_times, q_index, np.broadcast_to(n_real[:, None], (batch, n_out)).copy()


def compiled_scratch_rows(units):
    """Rows of the scratch (``L1`` times and sources each) that the compiled kernels walk permuted queues with:
    one per chunk of ``units`` (the forward's neurons, the backward's output neurons), a few chunks per thread."""
    import numba

    return max(1, min(int(units), COMPILED_CHUNKS_PER_THREAD * numba.get_num_threads()))


def compiled_scratch_bytes(permutation, units, L1):
    """``{"scratch rows": bytes}`` of ``compiled_queue_args``'s scratch (none without ``permutation``): for the
    memory estimate."""
    return {"scratch rows": 16 * L1 * compiled_scratch_rows(units)} if permutation else {}


def compiled_queue_args(qt, qi, qend, permuted=None, max_in=1, units=1):
    """``(qt2, qi2, pq, qe)`` for the ``_lif_numba`` kernels: materialised ``[rows, L1]`` queues and an empty
    permutation tuple, or empty queue arrays and ``permuted``'s ``(perm [batch * n_out, L1], times, index, source,
    delays_t)`` with ``source = index // max_in`` and ``compiled_scratch_rows(units)`` scratch rows of times and
    sources (see ``_lif_numba._queue_setup``)."""
    from ._lif_numba import NO_PERMUTATION

    qe = np.ascontiguousarray(qend.reshape(-1), dtype=np.int64)
    if permuted is None:
        L1 = qt.shape[-1]
        return (np.ascontiguousarray(qt.reshape(-1, L1)), np.ascontiguousarray(qi.reshape(-1, L1), dtype=np.int64),
                NO_PERMUTATION, qe)
    L1 = permuted.perm.shape[-1]
    chunks = compiled_scratch_rows(units)
    pq = compiled_permutation(permuted.perm, permuted.times, permuted.index, permuted.delays_t, max_in) + (
        np.empty((chunks, L1)), np.empty((chunks, L1), np.int64))
    return np.zeros((0, 0)), np.zeros((0, 0), np.int64), pq, qe


def rebased_applies(delays, tau_mem, tau_syn):
    """Whether the compiled sequential forward takes ``_lif_numba.forward_rebased`` (see ``COMPILED_REBASED``)."""
    return (COMPILED_REBASED and delays is not None
            and rebased_within_limits(float(delays.max()) if delays.size else 0.0, tau_mem, tau_syn))


def rebased_within_limits(max_delay, tau_mem, tau_syn):
    """The limits of the rebased sums (``REBASED_MAX_R``, ``REBASED_MAX_DELAY``) for ``[n_out]`` NumPy time
    constants and the largest delay; shared by the compiled engine and the CUDA kernel."""
    pair = one_pair(tau_mem, tau_syn)
    if pair is None:
        return False
    tm, ts = pair
    return abs(ts) <= REBASED_MAX_R * abs(tm - ts) and max_delay <= REBASED_MAX_DELAY * min(tm, ts)


def rebased_bytes(applies, input_times, n_out):
    """``{"rebased tables": bytes}`` of ``_rebased_args``'s tables (none unless ``applies``): for the memory
    estimate (24 bytes per input slot and a float64 copy of the input times, with room to spare; 16 per synapse)."""
    batch, n_in, max_in = input_times.shape
    return {"rebased tables": 40 * batch * n_in * max_in + 16 * n_out * n_in} if applies else {}


def _rebased_args(input_times, D, tau_mem, tau_syn):
    """``(E, F, width, cache, span)`` of ``_lif_numba.forward_rebased`` (tables by ``rebased_tables``; ``cache``:
    ``REBASED_CACHE`` slots of block factors)."""
    from . import _lif_numba

    batch, n_in, max_in = input_times.shape
    tm, ts = one_pair(tau_mem, tau_syn)
    tmin = min(tm, ts)
    width = REBASED_BLOCK * tmin
    flat = np.ascontiguousarray(input_times.reshape(batch, n_in * max_in), np.float64)
    delays_t = np.ascontiguousarray(D.T)
    E = np.empty(flat.shape + (3,))
    F = np.empty(delays_t.shape + (2,))
    _lif_numba.rebased_tables(flat.size + delays_t.size, flat, delays_t, tm, ts, width, E, F)
    return E, F, width, REBASED_CACHE, REBASED_SPAN * tmin


def _entry_sources(qi, max_in, shared):
    """The source input of every entry of a shared queue ``qi`` (one row per sample: no bigger than ``qi``; ``-1``
    for padding), which the compiled kernels read instead of dividing each (neuron, entry)'s flat index; empty for
    per-neuron queues (``shared`` false), which they divide as they read them."""
    if not shared:
        return np.zeros((0, 0), np.int64)
    return np.where(qi >= 0, qi // max(max_in, 1), -1)


def _lanes(neurons):
    """Neurons per group of ``forward_lanes`` for ``neurons`` (sample, neuron) pairs: ``COMPILED_LANES``, fewer (not
    below 8) when that would leave the threads fewer than four groups each (a batch of one sample)."""
    import numba

    return min(COMPILED_LANES, max(8, -(-neurons // (4 * numba.get_num_threads()))))


def _forward_compiled(queues, W, lay, tau_mem, tau_syn, threshold, max_spikes, method, chunk_size, solver, limit,
                      rebased=None):
    """The Numba kernels (``_lif_numba``) on the queues ``compiled_queue_args`` made; same outputs and errors as
    the NumPy methods. ``rebased``: ``_rebased_args``' tables, for the sequential method."""
    from . import _lif_numba

    N = lay.row.size
    times = np.full((N, max_spikes), np.inf)
    events = np.full((N, max_spikes), -1, np.int64)
    counts = np.zeros(N, np.int64)
    stuck_times = np.full(N, np.inf)
    stuck_current = np.full(N, np.nan)
    qt2, qi2, pq, qe = queues
    # The table needs materialised queues shared by the neurons (a one-neuron layer with delays has Q == 1 too).
    table, use_table = _compiled_decay_table(qt2, qe, tau_mem, tau_syn, lay.Q == 1 and qt2.size > 0)
    args = (qt2, qi2, pq, qe, np.ascontiguousarray(W), np.ascontiguousarray(tau_mem, np.float64),
            np.ascontiguousarray(tau_syn, np.float64), np.ascontiguousarray(threshold, np.float64),
            lif.SOLVER_CODES[solver], lay.n_out,
            max(lay.max_in, 1), max_spikes, int(limit), table, use_table)
    work = N * lay.L1
    if method == "sequential" and rebased is not None:
        _lif_numba.forward_rebased(work, *args[:-2], *rebased, times, events, counts, stuck_times, stuck_current)
    elif method == "sequential" and COMPILED_LANES and use_table:  # the table: one shared queue, one tau pair
        _lif_numba.forward_lanes(work, qt2, qe, args[4], args[7], *one_pair(tau_mem, tau_syn), args[8], max_spikes,
                                 int(limit), table, _entry_sources(qi2, lay.max_in, True), _lanes(N), times,
                                 events, counts, stuck_times, stuck_current)
    elif method == "sequential":
        qs = _entry_sources(qi2, lay.max_in, pq[0].shape[0] == 0 and lay.Q == 1)
        _lif_numba.forward_sequential(work, *args, times, events, counts, stuck_times, stuck_current,
                                      np.ascontiguousarray(args[4].T), qs)
    else:
        # A chunk holds at most a queue row (L1 entries), and the kernel allocates its lanes per neuron: a larger
        # chunk_size means the same, and must not allocate more (nor overflow the kernel's int64).
        _lif_numba.forward_scan(work, *args, min(int(chunk_size), lay.L1), times, events, counts, stuck_times,
                                stuck_current)
    stuck = np.isfinite(stuck_times)
    if stuck.any():
        first = int(np.argmax(stuck))
        if counts[first] > limit:  # the kernel left max_total_spikes + 1: runaway firing
            raise runaway_firing_error(first, lay.n_out, stuck_times[first], stuck_current[first], limit,
                                       threshold[first % lay.n_out])
        raise unresolvable_spike_error(first, lay.n_out, stuck_times[first])
    return times, events, counts


def lif_forward(input_times, weights, delays, tau_mem, tau_syn, threshold, max_spikes, method, chunk_size, solver,
                max_total_spikes=DEFAULT_MAX_TOTAL_SPIKES, engine="numpy", threshold_is_scalar=True,
                recurrent_weights=None, recurrent_delays=None):
    batch, n_in, max_in = input_times.shape
    n_out = weights.shape[1]
    n_entries = _memory.most_entries(input_times, np)
    if recurrent_weights is not None:
        return _recurrent_forward(input_times, weights, delays, tau_mem, tau_syn, threshold, max_spikes, method,
                                  chunk_size, solver, max_total_spikes, threshold_is_scalar, recurrent_weights,
                                  recurrent_delays, n_entries, engine)
    if method == "auto":
        # Compiled: "sequential" (the chunked walk computes the same states in the same order and was no faster in
        # benchmarks/results/cpu_peers.json: within 1.1x either way on all three layers).
        method = "sequential" if engine == "numba" else choose_forward_method(batch * n_out, n_entries + 1,
                                                                              chunk_size)
    permutation = engine == "numba" and delays is not None and COMPILED_PERMUTATION
    W = np.asarray(weights, np.float64)
    D = None if delays is None else np.asarray(delays, np.float64)
    rebased = engine == "numba" and method == "sequential" and rebased_applies(D, tau_mem, tau_syn)
    _memory.check_forward(batch, n_in, max_in, n_out, n_entries, max_spikes, delays is not None, method, chunk_size,
                          input_times.dtype.itemsize, np, engine, extra={
                              **compiled_scratch_bytes(permutation, batch * n_out, n_entries + 1),
                              **rebased_bytes(rebased, input_times, n_out)}, permutation=permutation)
    # Copies of float64 arrays too (after the memory check): the residuals must not change when the caller updates
    # its weights in place.
    W = W.copy() if W is weights else W
    D = D.copy() if D is not None and D is delays else D
    permuted = None
    if permutation:
        permuted = _delayed_queues_compiled(input_times, D, permutation=True)
        qt = qi = None
        qend = permuted.end
    elif engine == "numba" and D is not None:
        qt, qi, qend = _delayed_queues_compiled(input_times, D)
    else:
        qt, qi, qend = build_queues(input_times, D, np, compiled=engine == "numba")
    lay = _Layout((qt if permuted is None else permuted.perm).shape, n_out, max_in)
    tm, ts = tau_mem[lay.i], tau_syn[lay.i]
    if engine == "numba":
        queues = compiled_queue_args(qt, qi, qend, permuted, max_in, batch * n_out)
        times, events, counts = _forward_compiled(
            queues, W, lay, tau_mem, tau_syn, threshold, max_spikes, method, chunk_size, solver, max_total_spikes,
            _rebased_args(input_times, D, tau_mem, tau_syn) if rebased else None)
    else:
        qt2, qi2 = qt.reshape(-1, qt.shape[2]), qi.reshape(-1, qi.shape[2])
        end = qend.reshape(-1)[lay.row]
        if method == "sequential":
            times, events, counts = _forward_sequential(qt2, qi2, end, W, lay, tm, ts, threshold, max_spikes, solver,
                                                        max_total_spikes)
        else:
            times, events, counts = _forward_scan(qt2, qi2, end, W, lay, tm, ts, threshold, max_spikes, solver,
                                                  chunk_size, max_total_spikes)
    queues = (dict(queue_times=qt, queue_index=qi, queue_end=qend) if permuted is None else
              dict(queue_times=None, queue_index=None, queue_end=qend, queue_perm=permuted.perm,
                   shared_times=permuted.times, shared_index=permuted.index, delays_t=permuted.delays_t))
    res = LIFResiduals(
        **queues,
        spike_times=times.reshape(batch, n_out, max_spikes), spike_event=events.reshape(batch, n_out, max_spikes),
        weights=W, delays=D, tau_mem=tau_mem, tau_syn=tau_syn, threshold=threshold,
        threshold_is_scalar=threshold_is_scalar,
        input_shape=tuple(input_times.shape), input_dtype=input_times.dtype, weights_dtype=weights.dtype,
        delays_dtype=None if delays is None else delays.dtype, solver=solver)
    return LIFResult(times=_output_times(times.reshape(batch, n_out, max_spikes), input_times.dtype),
                     counts=counts.reshape(batch, n_out), residuals=res)


def _recurrent_forward(input_times, weights, delays, tau_mem, tau_syn, threshold, max_spikes, method, chunk_size,
                       solver, max_total_spikes, threshold_is_scalar, recurrent_weights, recurrent_delays, n_entries,
                       engine="numpy"):
    """The recurrent layer on the NumPy queues: ``_recurrent`` (NumPy, ``method`` "sequential" or "scan") or, for
    ``engine="numba"``, ``_recurrent_numba`` (its event loop, or its lanes where they apply, for every
    ``method``)."""
    from . import _recurrent

    batch, n_in, max_in = input_times.shape
    n_out = weights.shape[1]
    # "auto": the windows, which the NumPy engine runs faster than the event loop (benchmarks/results/
    # recurrent_cpu.json: 1.2x on an SHD-like layer without recurrent delays (1.6x in a run on a loaded machine),
    # 7-8x with delays of 1-5 ms, where every arrival is an event of the loop). The compiled engine has its own
    # forwards (the event loop, and the lanes where they apply), whatever the method.
    method = "scan" if method == "auto" else method
    compiled = engine == "numba"
    permutation = compiled and delays is not None and COMPILED_PERMUTATION
    # The float64 copies of the recurrent matrices (the residuals keep them), and the pending arrivals' initial
    # buffers (three arrays of four slots per (sample, neuron); they grow with the spikes in flight).
    extra = {"recurrent weights and delays (float64)": 8 * n_out * n_out * (1 + (recurrent_delays is not None)),
             "pending recurrent arrivals": 96 * batch * n_out}
    if compiled and delays is not None:
        import numba

        in_flight = numba.get_num_threads()
        if permutation:  # the event loop expands one sample's queues at a time, per thread
            extra["queues of the samples in flight"] = 16 * in_flight * n_out * (n_entries + 1)
        if recurrent_delays is None or not np.any(recurrent_delays):  # the windows' table per sample
            extra["entry tables (decay, time, weight) of the samples in flight"] = (
                40 * in_flight * n_out * (n_entries + 1))
    _memory.check_forward(batch, n_in, max_in, n_out, n_entries, max_spikes, delays is not None,
                          "sequential" if compiled else "scan", chunk_size, input_times.dtype.itemsize, np, engine,
                          extra, permutation)
    W = np.array(weights, np.float64)  # copies, as in lif_forward: the residuals keep them
    D = None if delays is None else np.array(delays, np.float64)
    R = np.array(recurrent_weights, np.float64)
    Dr = None if recurrent_delays is None else np.array(recurrent_delays, np.float64)
    permuted = None
    if permutation:  # kept as it is: the event loop expands one sample's queues at a time
        permuted = _delayed_queues_compiled(input_times, D, permutation=True)
        qt = qi = np.zeros((batch, 0, 1))  # (unused)
        qend = permuted.end
    elif compiled and D is not None:
        qt, qi, qend = _delayed_queues_compiled(input_times, D)
    else:
        qt, qi, qend = build_queues(input_times, D, np, compiled=compiled)
    qt2, qi2 = qt.reshape(-1, qt.shape[2]), qi.reshape(-1, qi.shape[2])
    if compiled:
        from . import _recurrent_numba

        table, use_table = _compiled_decay_table(qt2, qend.reshape(-1), tau_mem, tau_syn,
                                                 qt.shape[1] == 1 and permuted is None)
        pq = None if permuted is None else compiled_permutation(permuted.perm, permuted.times, permuted.index,
                                                                permuted.delays_t, max_in)
        times, events, counts, log = _recurrent_numba.forward(
            qt2, qi2, qend, W, max(max_in, 1), tau_mem, tau_syn, threshold, R, Dr, max_spikes, solver,
            max_total_spikes, batch, table, use_table, pq)
    else:
        lay = _Layout(qt.shape, n_out, max_in)
        row = lay.row.reshape(batch, n_out)
        end = qend.reshape(-1)[row]
        times, events, counts, log = _recurrent.forward(
            qt2, qi2, row, end, W, max(max_in, 1), tau_mem, tau_syn, threshold, R, Dr, max_spikes, method,
            chunk_size, solver, max_total_spikes)
    _recurrent.check_arrivals_in_range(log, R, Dr, np)
    queues = (dict(queue_times=qt, queue_index=qi, queue_end=qend) if permuted is None else
              dict(queue_times=None, queue_index=None, queue_end=qend, queue_perm=permuted.perm,
                   shared_times=permuted.times, shared_index=permuted.index, delays_t=permuted.delays_t))
    del qt, qi, qt2, qi2
    res = LIFResiduals(
        **queues, spike_times=times, spike_event=events,
        weights=W, delays=D, tau_mem=tau_mem, tau_syn=tau_syn, threshold=threshold,
        threshold_is_scalar=threshold_is_scalar,
        input_shape=tuple(input_times.shape), input_dtype=input_times.dtype, weights_dtype=weights.dtype,
        delays_dtype=None if delays is None else delays.dtype, solver=solver,
        recurrent_weights=R, recurrent_delays=Dr, recurrent_log=log,
        recurrent_weights_dtype=recurrent_weights.dtype,
        recurrent_delays_dtype=None if recurrent_delays is None else recurrent_delays.dtype)
    return LIFResult(times=_output_times(times, input_times.dtype), counts=counts, residuals=res)


def _output_times(times, dtype):
    """The float64 spike times in the dtype of the input times, refusing a finite time that it cannot hold (a spike
    turned into ``+inf``, which reads as no spike): only possible in a narrower dtype, with time constants or
    delays near its range."""
    with np.errstate(over="ignore"):  # an overflow is refused below
        out = times.astype(dtype)
    if out.dtype != times.dtype:
        lost = lost_output_times(times, out, np)
        if lost.any():
            raise output_range_error(times, lost, dtype, np)
    return out


def lost_output_times(times, out, xp):
    """Where a finite float64 spike time ``times`` became ``+inf`` in the output ``out`` (a narrower dtype)."""
    return xp.isinf(out) & xp.isfinite(times)


def output_range_error(times, lost, dtype, xp):
    """The error for spike times ``times`` (float64) lost where ``lost`` in an output of ``dtype``."""
    first = float(times.reshape(-1)[int(xp.argmax(lost.reshape(-1)))])
    return ValueError(f"a spike time ({first!r}) exceeds the range of the input dtype {np.dtype(dtype)} "
                      f"(at most {float(np.finfo(dtype).max):.4g}); express the times in a larger unit, or use "
                      "float64 input_times")


def _recurrent_backward(result, grad_times, input_times_grad, time_constant_grads, engine="numpy"):
    """The recurrent layer's backward: ``_recurrent`` (NumPy) or ``_recurrent_numba`` (``engine="numba"``); the
    same gradients to rounding, from the residuals of either engine's forward (queues kept as a permutation are
    read as they are by the compiled one, expanded for the call by the NumPy one and for the time constants'
    unrolled layer)."""
    res = result.residuals
    if engine == "numba":
        from ._recurrent_numba import backward
    else:
        from ._recurrent import backward

        res = materialised(res)
    g, grazing = backward(res, grad_times, input_times_grad, spike_grads=time_constant_grads)
    tau_mem = tau_syn = None
    if time_constant_grads:
        tau_mem, tau_syn = _recurrent_time_constant_grads(materialised(res, compiled=engine == "numba"), grad_times,
                                                          engine, g["spike_grads"])
    if grazing is not None:
        warn_grazing(grazing[0], grazing[1], res.weights.shape[1], grazing[2], stacklevel=4)
    return LIFGrads(
        weights=g["weights"].astype(res.weights_dtype),
        input_times=g["input_times"].astype(res.input_dtype) if input_times_grad else None,
        delays=None if res.delays is None else g["delays"].astype(res.delays_dtype),
        threshold=threshold_grad(g["threshold"], res),
        recurrent_weights=g["recurrent_weights"].astype(res.recurrent_weights_dtype),
        recurrent_delays=None if res.recurrent_delays is None else g["recurrent_delays"].astype(
            res.recurrent_delays_dtype), tau_mem=tau_mem, tau_syn=tau_syn)


def _recurrent_time_constant_grads(res, grad_times, engine, spike_grads=None):
    """``(tau_mem, tau_syn)`` gradients of a recurrent layer: each spike's derivative through everything outside its
    neuron (``spike_grads`` from the backward's spike walk of either engine; the NumPy one when not given), then the
    feed-forward backward of the layer unrolled with its own spikes as fixed inputs (``_recurrent.unrolled_layer``),
    whose time-constant terms are exact per neuron."""
    from . import _recurrent

    if spike_grads is None:
        spike_grads = _recurrent.backward(res, grad_times, False, spike_grads=True)[0]["spike_grads"]
    unrolled, g_unrolled = _recurrent.unrolled_layer(res, spike_grads, compiled=engine == "numba")
    with quiet_grazing():  # the recurrent backward has already warned
        grads = lif_backward(unrolled, g_unrolled, "auto", input_times_grad=False, engine=engine,
                             time_constant_grads=True)
    return grads.tau_mem, grads.tau_syn


# --------------------------------------------------------------------------------------------------------------
# Backward
#
# Each neuron's history is a sequence of points: its input events and its recorded spikes, in time order. With the
# spike times known, the forward state after every point is a linear recurrence (inputs: x' = Phi(s) x + (0, w);
# spikes: x' = diag(0, 1) Phi(s) x), and so is the adjoint (lV, lI, lT) of (V, I, time of the point) run backwards
# (DESIGN.md section 6). Points after a neuron's last recorded spike influence no recorded spike and are skipped.
# ``sequential`` evaluates both recurrences with a loop over points (the reference); ``scan`` computes the states with
# the associative scan and the adjoint span by span between spikes (``_adjoint_by_segments``).
# --------------------------------------------------------------------------------------------------------------

_PAD, _INPUT, _SPIKE = 0, 1, 2


def _merge_points(res, grad_times, neurons, lay):
    """Points of the given neurons in time order: kind, time, queue position (inputs), spike slot (spikes)."""
    st = res.spike_times.reshape(-1, res.spike_times.shape[-1])[neurons]
    se = res.spike_event.reshape(-1, res.spike_event.shape[-1])[neurons]
    g = grad_times.reshape(-1, grad_times.shape[-1])[neurons].astype(np.float64)
    rec = np.isfinite(st)
    n_rec = rec.sum(axis=1)
    n, S = st.shape
    slots = np.arange(S)
    spike_pos = np.where(rec, se + slots, -1)
    # Number of points up to and including the last recorded spike; inputs beyond it are not needed.
    n_points = np.where(n_rec > 0, spike_pos.max(axis=1, initial=-1) + 1, 0)
    P = int(n_points.max(initial=0))
    if P == 0:
        return None
    kind = np.zeros((n, P), np.int8)
    tau = np.zeros((n, P))
    qpos = np.zeros((n, P), np.int64)
    slot = np.zeros((n, P), np.int64)
    r, m = np.nonzero(rec)
    kind[r, spike_pos[r, m]] = _SPIKE
    tau[r, spike_pos[r, m]] = st[r, m]
    slot[r, spike_pos[r, m]] = m
    # Input k sits after every recorded spike with spike_event <= k.
    is_input = (kind == _PAD) & (np.arange(P) < n_points[:, None])
    rr, pp = np.nonzero(is_input)
    spikes_before = np.cumsum(kind == _SPIKE, axis=1)
    kk = pp - spikes_before[rr, pp]
    kind[rr, pp] = _INPUT
    qpos[rr, pp] = kk
    rows = lay.row[neurons]
    tau[rr, pp] = res.queue_times.reshape(-1, lay.L1)[rows[rr], kk]
    # Trailing padding repeats the last time (zero-length, identity steps).
    last_t = np.where(n_points > 0, tau[np.arange(n), np.maximum(n_points - 1, 0)], 0.0)
    pad = np.arange(P) >= n_points[:, None]
    tau = np.where(pad, last_t[:, None], tau)
    gp = np.where(kind == _SPIKE, np.take_along_axis(np.where(rec, g, 0.0), slot, axis=1), 0.0)
    return kind, tau, qpos, gp


def _backward_group(res, grad_times, neurons, lay, method, grads):
    points = _merge_points(res, grad_times, neurons, lay)
    if points is None:
        return
    kind, tau, qpos, g = points
    n, P = kind.shape
    tm = res.tau_mem[lay.i[neurons]][:, None]
    ts = res.tau_syn[lay.i[neurons]][:, None]
    th = res.threshold[lay.i[neurons]][:, None]
    rows, cols = lay.row[neurons][:, None], lay.i[neurons][:, None]
    inp, spk = kind == _INPUT, kind == _SPIKE
    w = _event_weights(res.weights, res.queue_index.reshape(-1, lay.L1), lay.max_in, rows, cols, qpos, inp)
    s = np.diff(tau, axis=1, prepend=0.0)
    a, b, c = lif.decay(s, tm, ts)
    run = recurrence_loop if method == "sequential" else recurrence_scan

    # Forward states after every point (inputs: decay then lif.input_jump, the offset w; spikes: decay then
    # lif.reset, the zeroed row of the map).
    zero = np.zeros((n, P))
    A = np.array([[np.where(inp, a, np.where(spk, 0.0, 1.0)), np.where(inp, c, 0.0)],
                  [zero, np.where(inp | spk, b, 1.0)]])
    x = run(A, np.array([zero, w]))
    Vq = np.concatenate([np.zeros((n, 1)), x[0, :, :-1]], axis=1)
    Iq = np.concatenate([np.zeros((n, 1)), x[1, :, :-1]], axis=1)

    # Adjoint maps lambda_p -> lambda_{p-1} (rows: lV, lI, lT of the previous point).
    I_pre = b * Iq
    u = lif.voltage_rate(a * Vq + c * Iq, I_pre, tm)
    v_ = lif.current_rate(I_pre, ts)
    # D = dV/dt at a spike. A grazing spike (D <= 0: V peaks at the threshold, or rounding put the recomputed slope
    # below zero) has no derivative of its time: its IFT term (alpha, beta, the threshold term: the 1/D factors) is
    # dropped and the spike is reported (GrazingSpikeWarning) instead of dividing by zero.
    D = np.where(spk, lif.crossing_slope(I_pre, th, tm), 1.0)
    graze = spk & (D <= 0.0)
    if graze.any():
        D = np.where(graze, 1.0, D)
        r_g, p_g = np.nonzero(graze)
        grads["grazing"].append((int(r_g.size), int(neurons[r_g[0]]), float(tau[r_g[0], p_g[0]])))
    # A spike's adjoint jump, lif.spike_adjoint(gs, D) carried back through its decay: alpha gs and beta gs.
    alpha, beta = np.where(graze, 0.0, -a / D), np.where(graze, 0.0, -c / D)
    if method == "sequential":
        B = np.array([
            [np.where(inp, a, np.where(spk, 0.0, 1.0)), np.where(spk, alpha * v_, 0.0), np.where(spk, alpha, 0.0)],
            [np.where(inp, c, 0.0), np.where(inp, b, np.where(spk, b + beta * v_, 1.0)), np.where(spk, beta, 0.0)],
            [np.where(inp, -u, 0.0), np.where(inp, -v_, 0.0), np.where(inp, 0.0, 1.0)]])
        gs_ = g * spk
        # lam_before[p] is the adjoint of the point before p; the adjoint of point p itself is lam_before[p + 1].
        lam_before = run(B, np.array([alpha * gs_, beta * gs_, gs_]), reverse=True)
        lam = np.concatenate([lam_before[:, :, 1:], np.zeros((3, n, 1))], axis=2)
        lV, lI, lT = lam[0], lam[1], lam[2]
    else:
        lV, lI, lT = _adjoint_by_segments(tau, inp, spk, a, b, c, u, v_, alpha, beta, g, tm, ts)

    grad_w = np.where(inp, lI, 0.0)
    grad_arrival = np.where(inp, u * lV + v_ * lI + lT, 0.0)
    grads["threshold"] += np.bincount(lay.i[neurons], np.sum(np.where(spk & ~graze, (lT + g + v_ * lI) / D, 0.0),
                                                             axis=1), minlength=grads["threshold"].size)
    if grads["tau_mem"] is not None:
        _time_constant_grads(s, tm, ts, Vq, Iq, lV, lI, lT, g, v_, D, inp, spk, graze, lay.i[neurons], grads)
    r_i, p_i = np.nonzero(inp)
    src_idx = res.queue_index.reshape(-1, lay.L1)[rows[r_i, 0], qpos[r_i, p_i]]
    j = src_idx // lay.max_in
    col = cols[r_i, 0]
    n_in, n_out = res.weights.shape
    grads["weights"] += np.bincount(j * n_out + col, grad_w[r_i, p_i], minlength=n_in * n_out).reshape(n_in, n_out)
    if grads["input_times"] is not None:
        flat_in = lay.b[neurons][r_i] * (n_in * lay.max_in) + src_idx
        grads["input_times"] += np.bincount(flat_in, grad_arrival[r_i, p_i],
                                            minlength=grads["input_times"].size).reshape(grads["input_times"].shape)
    if res.delays is not None:
        grads["delays"] += np.bincount(j * n_out + col, grad_arrival[r_i, p_i],
                                       minlength=n_in * n_out).reshape(n_in, n_out)



def _time_constant_grads(s, tm, ts, Vq, Iq, lV, lI, lT, g, v, D, inp, spk, graze, cols, grads):
    """Adds each neuron's ``d loss / d tau_mem`` and ``d loss / d tau_syn`` (DESIGN.md section 11) to ``grads``.

    At fixed gap lengths, a point changes with the time constants through its gap map: an input's state after it,
    ``(a V + c I, b I + w)``, by ``(a' V + c' I, b' I)``; a spike's time through the implicit function,
    ``ds/dtheta = -(a' V + c' I) / D`` (times ``gs``, its total sensitivity, as for the threshold; dropped for a
    grazing spike), and its current after the reset, ``b I``, by ``b' I``. ``(lV, lI, lT)`` is the adjoint after
    each point, ``(Vq, Iq)`` the state before it.
    """
    a_tm, c_tm, b_ts, c_ts = lif.decay_param_grads(s, tm, ts)
    v_tm = a_tm * Vq + c_tm * Iq
    v_ts = c_ts * Iq
    i_ts = b_ts * Iq
    ift = np.where(spk & ~graze, lif.spike_adjoint(lT + g + v * lI, D), 0.0)
    g_tm = np.where(inp, lV * v_tm, 0.0) + ift * v_tm
    g_ts = np.where(inp, lV * v_ts, 0.0) + np.where(inp | spk, lI * i_ts, 0.0) + ift * v_ts
    n_out = grads["tau_mem"].size
    grads["tau_mem"] += np.bincount(cols, g_tm.sum(axis=1), minlength=n_out)
    grads["tau_syn"] += np.bincount(cols, g_ts.sum(axis=1), minlength=n_out)


def _adjoint_by_segments(tau, inp, spk, a, b, c, u, v, alpha, beta, g, tm, ts):
    """The adjoint after every point, ``(lV, lI, lT) [n, P]``, with a Python step per recorded spike only.

    Between two spikes the adjoint has no source: ``(lV, lI)`` moves back through the transposed decay maps, whose
    product over consecutive gaps is the decay map of the whole span (the flow of a linear ODE). So the adjoint
    after an input point ``p`` is ``decay(tau_{q-1} - tau_p)^T`` applied to the adjoint before the next spike ``q``
    (whose own map already decays over the gap before it), and
    ``lT`` after ``p`` is read off the next point. Only the spikes (the affine jumps, with ``grad_times`` as offset)
    are walked one by one, last to first, vectorised over neurons. Same values as the point-by-point recurrence up to
    rounding; no growing factors appear (only decays), so it is as stable as the loop.
    """
    n, P = tau.shape
    rows = np.arange(n)
    n_spk = spk.sum(axis=1)
    S = int(n_spk.max(initial=0))
    # spike_pos[r, m]: point of the neuron's m-th spike (ascending), P for none.
    order = np.argsort(~spk, axis=1, kind="stable")[:, :S]
    has = np.arange(S)[None, :] < n_spk[:, None]
    spike_pos = np.where(has, order, P)
    before = np.zeros((3, n, S + 1))  # adjoint before spike m (slot S: nothing after the last spike)
    after_spk = np.zeros((3, n, S))   # adjoint after spike m
    for m in range(S - 1, -1, -1):
        r = rows[has[:, m]]
        q = spike_pos[r, m]
        q2 = spike_pos[r, m + 1] if m + 1 < S else np.full(r.size, P)
        last = q2 >= P  # trimmed histories end at their last spike: nothing after it
        nxt = np.minimum(q + 1, P - 1)
        consecutive = ~last & (q2 == q + 1)
        dV, dI, dT = before[0, r, m + 1], before[1, r, m + 1], before[2, r, m + 1]
        # After q, when q + 1 is an input: decay back from the next spike to q + 1, then through input q + 1.
        # (the spike's own map holds the decay of the gap before it, so the span ends at the point before q2)
        span = tau[r, np.clip(q2 - 1, 0, P - 1)] - tau[r, nxt]
        da, db, dc = lif.decay(np.where(last | consecutive, 0.0, span), tm[r, 0], ts[r, 0])
        V1, I1 = da * dV, dc * dV + db * dI
        lV = np.where(last, 0.0, np.where(consecutive, dV, a[r, nxt] * V1))
        lI = np.where(last, 0.0, np.where(consecutive, dI, c[r, nxt] * V1 + b[r, nxt] * I1))
        lT = np.where(last, 0.0, np.where(consecutive, dT, -(u[r, nxt] * V1 + v[r, nxt] * I1)))
        after_spk[:, r, m] = lV, lI, lT
        gs = lT + g[r, q] + v[r, q] * lI
        before[:, r, m] = alpha[r, q] * gs, b[r, q] * lI + beta[r, q] * gs, lT + g[r, q]
    # Every input point: the adjoint before its next spike (slot = spikes before it), decayed back to it.
    slot = np.cumsum(spk, axis=1) - spk
    slot = np.minimum(slot, S)
    q = np.take_along_axis(np.concatenate([spike_pos, np.full((n, 1), P)], axis=1), slot, axis=1)
    valid = inp & (q < P)
    qc = np.minimum(q, P - 1)
    # The spike's map holds the decay of the gap before it: the span ends at the point before the spike.
    span = np.take_along_axis(tau, np.maximum(qc - 1, 0), axis=1) - tau
    da, db, dc = lif.decay(np.where(valid, span, 0.0), tm, ts)
    bV = np.take_along_axis(before[0], slot, axis=1)
    bI = np.take_along_axis(before[1], slot, axis=1)
    bT = np.take_along_axis(before[2], slot, axis=1)
    lV = np.where(valid, da * bV, 0.0)
    lI = np.where(valid, dc * bV + db * bI, 0.0)
    # lT after input p: from the next point (an input: -(u lV + v lI) after it; the spike: lT before it).
    nextV, nextI = np.zeros((n, P)), np.zeros((n, P))
    nextV[:, :-1], nextI[:, :-1] = lV[:, 1:], lI[:, 1:]
    nu, nv = np.zeros((n, P)), np.zeros((n, P))
    nu[:, :-1], nv[:, :-1] = u[:, 1:], v[:, 1:]
    next_is_spike = np.arange(P)[None, :] + 1 == q
    lT = np.where(valid, np.where(next_is_spike, bT, -(nu * nextV + nv * nextI)), 0.0)
    # Spike points carry their own adjoint (used for the threshold gradient).
    sr, sm = np.nonzero(has)
    sp = spike_pos[sr, sm]
    lV[sr, sp], lI[sr, sp], lT[sr, sp] = after_spk[0, sr, sm], after_spk[1, sr, sm], after_spk[2, sr, sm]
    return lV, lI, lT

def grazing_spike_warning(count, neuron, n_out, t):
    """The warning for ``count`` grazing spikes, the first of flat neuron ``neuron`` at time ``t``."""
    sample, index = neuron // n_out, neuron % n_out
    return GrazingSpikeWarning(
        f"{count} grazing spike(s) in lif_backward, the first of neuron {index} of sample {sample} at t={float(t)!r}: "
        "V only touches the threshold there (dV/dt = 0), so the spike time is not differentiable; the "
        "implicit-function term of each such spike is dropped instead of dividing by zero (no gradient from its "
        "time through the state before it, nor to the threshold; it still moves with the start of its gap)",
        count=int(count), sample=int(sample), neuron=int(index), time=float(t))


# Inside ``quiet_grazing()``: the backward of a recurrent layer's unrolled copy, whose grazing spikes the recurrent
# backward has already warned of.
_grazing_quiet = contextvars.ContextVar("spikescan_grazing_quiet", default=False)


@contextlib.contextmanager
def quiet_grazing():
    """No ``GrazingSpikeWarning`` from the calls inside. Not ``warnings.catch_warnings``: changing the filters
    resets every warning registry of the process, so warnings meant to show once (the Keras layers' per layer and
    band, a user's own) showed again on every training batch of a recurrent layer with trainable time constants."""
    token = _grazing_quiet.set(True)
    try:
        yield
    finally:
        _grazing_quiet.reset(token)


def warn_grazing(count, neuron, n_out, t, stacklevel):
    if not _grazing_quiet.get():
        warnings.warn(grazing_spike_warning(count, neuron, n_out, t), stacklevel=stacklevel + 1)


# Bytes of per-(sample, neuron, queue entry) input-time gradients the compiled backward holds at once.
_COMPILED_ARRIVAL_BYTES = 1 << 26


def _backward_compiled(result, grad_times, input_times_grad, time_constant_grads=False, closed=False):
    """``lif_backward`` by the Numba kernel (``_lif_numba.backward``, or ``backward_closed`` with ``closed``); the
    NumPy path's outputs and warning."""
    from . import _lif_numba

    res = result.residuals
    batch, n_in, max_in = res.input_shape
    n_out = res.weights.shape[1]
    N = batch * n_out
    max_spikes = res.spike_times.shape[2]
    L1 = res.queue_length
    permuted = None if res.queue_perm is None else PermutedQueues(res.queue_perm, res.shared_times, res.shared_index,
                                                                   res.queue_end, res.delays_t)
    qt, qi, pq, qe = compiled_queue_args(res.queue_times, res.queue_index, res.queue_end, permuted, max_in, n_out)
    st = np.ascontiguousarray(res.spike_times.reshape(N, max_spikes))
    se = np.ascontiguousarray(res.spike_event.reshape(N, max_spikes))
    counts = np.ascontiguousarray(result.counts.reshape(N), dtype=np.int64)
    g = np.ascontiguousarray(grad_times.reshape(N, max_spikes), dtype=np.float64)
    has_delays = res.delays is not None
    grad_w = np.zeros((n_in, n_out))
    grad_d = np.zeros((n_in, n_out)) if has_delays else np.zeros((1, 1))
    g_threshold = np.zeros(n_out)
    g_tau_mem, g_tau_syn = np.zeros(n_out), np.zeros(n_out)  # stay zero unless time_constant_grads
    grazing = np.zeros((max(N, 1), 2))
    grad_in = np.zeros((batch, n_in * max_in)) if input_times_grad else None
    # Samples per block: the per-(sample, neuron, entry) arrival gradients of one block stay within
    # _COMPILED_ARRIVAL_BYTES (and the memory limit), then are summed into grad_in.
    if closed:  # the closed form's factors (built after the memory check) and its entries' sources, or the
        # reverse walk's decays
        tables = closed_rebased_bytes(res) + 17 * qi.size
    else:
        table, use_table = _compiled_decay_table(qt, qe, res.tau_mem, res.tau_syn,
                                                 permuted is None and res.queue_times.shape[1] == 1)
        tables = table.nbytes
    per_sample = 8 * n_out * L1 if input_times_grad else 0
    block = batch if per_sample == 0 else max(1, min(batch, _COMPILED_ARRIVAL_BYTES // per_sample))
    block = _memory.fit_backward_group(batch, n_in, max_in, n_out, input_times_grad, has_delays, batch, block,
                                       max(per_sample, 1), max_spikes, np, tables=tables)
    rebased = _closed_rebased_args(res) if closed else None
    qs = _entry_sources(qi, max_in, closed and pq[0].shape[0] == 0 and qi.shape[0] == batch)
    for start in range(0, batch, block):
        stop = min(start + block, batch)
        g_arrival = np.zeros((stop - start, n_out, L1) if input_times_grad else (1, 1, 1))
        layer = (qt, qi, pq, qe, np.ascontiguousarray(res.weights), np.ascontiguousarray(res.tau_mem),
                 np.ascontiguousarray(res.tau_syn), np.ascontiguousarray(res.threshold, np.float64), n_out,
                 max(max_in, 1), st, se, counts, g)
        sums = (start, stop, grad_w, grad_d, has_delays, g_arrival, input_times_grad, g_threshold,
                bool(time_constant_grads), g_tau_mem, g_tau_syn, grazing)
        work = (stop - start) * n_out * (L1 + max_spikes)
        if closed:
            _lif_numba.backward_closed(work, *layer, *sums, *rebased, qs)
        else:
            _lif_numba.backward(work, *layer, table, use_table, *sums)
        if input_times_grad:
            _lif_numba.scatter_input_grads(g_arrival.size, qi, pq, qe, g_arrival, start, grad_in, n_out)
    n_graze = grazing[:, 0]
    if n_graze.any():
        first = int(np.argmax(n_graze > 0))
        # stacklevel 4: the caller of spikescan.lif_backward.
        warn_grazing(int(n_graze.sum()), first, n_out, float(grazing[first, 1]), stacklevel=4)
    return LIFGrads(
        weights=grad_w.astype(res.weights_dtype),
        input_times=grad_in.reshape(batch, n_in, max_in).astype(res.input_dtype) if input_times_grad else None,
        delays=grad_d.astype(res.delays_dtype) if has_delays else None,
        threshold=threshold_grad(g_threshold, res), tau_mem=g_tau_mem if time_constant_grads else None,
        tau_syn=g_tau_syn if time_constant_grads else None)


def threshold_grad(per_neuron, res):
    """The threshold's gradient in the shape of the forward's argument: the sum over neurons for a scalar."""
    if res.threshold_is_scalar:
        return np.asarray(per_neuron.sum(), np.float64)
    return np.asarray(per_neuron, np.float64)


def lif_backward(result, grad_times, method, input_times_grad=True, engine="numpy", time_constant_grads=False):
    if result.residuals.recurrent_log is not None:
        return _recurrent_backward(result, grad_times, input_times_grad, time_constant_grads, engine)
    if engine == "numba":
        if method == "auto":
            method = COMPILED_BACKWARD_AUTO
        return _backward_compiled(result, grad_times, input_times_grad, time_constant_grads, method == "closed")
    if result.residuals.queue_perm is not None:  # a compiled forward's queues, for the NumPy methods
        result = result._replace(residuals=materialised(result.residuals))
    res = result.residuals
    if method == "auto":
        method = BACKWARD_AUTO
    if method == "closed":
        from ._closed_backward import lif_backward_closed

        return lif_backward_closed(result, grad_times, input_times_grad, time_constant_grads, stacklevel=4)
    batch, n_in, max_in = res.input_shape
    n_out = res.weights.shape[1]
    lay = _Layout(res.queue_times.shape, n_out, max_in)
    grads = {
        "weights": np.zeros((n_in, n_out)),
        "input_times": np.zeros((batch, n_in, max_in)) if input_times_grad else None,
        "delays": None if res.delays is None else np.zeros((n_in, n_out)),
        "threshold": np.zeros(n_out),
        "tau_mem": np.zeros(n_out) if time_constant_grads else None,
        "tau_syn": np.zeros(n_out) if time_constant_grads else None,
        "grazing": [],  # (count, first flat neuron, its earliest grazing spike time) per group with any
    }
    N = batch * n_out
    n_points = res.queue_times.shape[2] + res.spike_times.shape[2]
    group = max(1, _BACKWARD_POINTS_PER_GROUP[method] // max(n_points, 1))
    # Within the memory limit, smaller groups of neurons (same results, more Python steps) rather than an error.
    group = _memory.fit_backward_group(batch, n_in, max_in, n_out, input_times_grad, res.delays is not None, N,
                                       group, _BACKWARD_BYTES_PER_POINT * n_points, res.spike_times.shape[2], np)
    for start in range(0, N, group):
        _backward_group(res, grad_times, np.arange(start, min(start + group, N)), lay, method, grads)
    if grads["grazing"]:
        _, first, t_first = grads["grazing"][0]  # groups ascend in neuron index
        # stacklevel 3: the caller of spikescan.lif_backward.
        warn_grazing(sum(c for c, _, _ in grads["grazing"]), first, n_out, t_first, stacklevel=3)
    return LIFGrads(
        weights=grads["weights"].astype(res.weights_dtype),
        input_times=grads["input_times"].astype(res.input_dtype) if input_times_grad else None,
        delays=None if res.delays is None else grads["delays"].astype(res.delays_dtype),
        threshold=threshold_grad(grads["threshold"], res), tau_mem=grads["tau_mem"], tau_syn=grads["tau_syn"])
