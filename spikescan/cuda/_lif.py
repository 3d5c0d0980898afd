"""CuPy launchers of the LIF layer kernels (``kernels/lif_forward.cu``, ``kernels/lif_backward.cu``).

``lif_forward_cuda`` / ``lif_backward_cuda`` have the contract of ``spikescan._lif_numpy`` for validated CuPy
arguments. The array logic is written against an array module ``xp`` and a ``launch`` function so that the same
code also runs the kernels' host emulation in the tests (``_hostemu``) with NumPy arrays.

Methods (all exact, identical spike counts):

- ``"sequential"``: ``spikescan_lif_forward_sequential``, one thread per (batch, neuron), one launch.
- ``"scan"``: ``spikescan_lif_forward_scan``, one warp per (batch, neuron), chunks of ``min(chunk_size, 32)``
  events (one warp pass; a ``chunk_size`` above 32 gives the same results as 32, since a quiet chunk commits and the
  next one continues from its state). Smaller chunk sizes exist for tests of the chunk boundaries.
- ``"step"`` (benchmarks only): ``spikescan_lif_forward_step``, one launch per queue entry, the
  one-event-per-step simulation that the scan is compared with.
- ``"auto"``: ``spikescan.cuda.choose_method``.

Backward methods (``lif_backward_cuda(..., method)``, same gradients up to rounding):

- ``"sequential"``: ``spikescan_lif_backward``, one thread per (batch, neuron) walking its points one by one (the
  reference kernel).
- ``"scan"``: ``spikescan_lif_backward_scan``, one warp per (batch, neuron), 32 points per step: a warp scan of the
  state maps, and the adjoint in closed form between spikes.
- ``"auto"``: ``BACKWARD_AUTO`` (``"scan"``).

Errors: a neuron whose next spike rounds to its previous spike's time (an inter-spike interval below the float64
spacing of t) stops in the kernel, and the forward raises ``FloatingPointError`` naming it, as the NumPy path does.
A neuron that would fire more than ``max_total_spikes`` spikes stops in the kernel the same way (it also writes its
current ``I`` at that spike and leaves ``counts = max_total_spikes + 1``), and the forward raises
``RunawayFiringError`` with the NumPy path's fields. When several neurons stop, the lowest flat index
``sample * n_out + neuron`` is reported. Checking costs one host sync per forward.

Grazing spikes (``dV/dt <= 0`` at a recorded spike, ``V`` only touching the threshold): the backward kernels drop
their IFT term (the ``1/(dV/dt)`` factors) instead of dividing by zero, count them per neuron with the earliest one's
time, and the backward issues ``GrazingSpikeWarning`` with the NumPy path's fields (one more small reduction and
host sync per backward).

Memory: the forward keeps the queues (12 bytes per entry: float64 time, int32 index; ``batch x L1`` entries without
delays, ``batch x n_out x L1`` with delays; with ``_queue.PERMUTATION`` and delays, 2 bytes per entry, a uint16
position in the sample's shared queue, whose arrivals the kernels recompute bit for bit) and spike records of
``LIFResiduals`` and nothing else. The backward
allocates, for its duration only, checkpoints of 32 bytes per neuron per 32 points of history
(``(queue entries + spikes) / 32``), processing neurons in groups so that they stay below ``_CHECKPOINT_BYTES``, plus
float64 gradient accumulators. With ``FORWARD_CHECKPOINTS`` the forward writes those checkpoints instead (sized
for the longest possible history, ``(max input spikes + max_spikes) / 32`` per neuron, kept in the residuals) and the
backward runs one launch with no first pass.
"""

from __future__ import annotations

import math

import numpy as np

from .. import _memory
from .._lif_numpy import (DEFAULT_MAX_TOTAL_SPIKES, lost_output_times, output_range_error, runaway_firing_error,
                          unresolvable_spike_error, warn_grazing)
from .._validate import to_host
from .._types import LIFGrads, LIFResiduals, LIFResult
from . import _kernels, _queue

SOLVER_CODES = {"newton": 0, "bisection": 1, "analytic": 2}
WARP = 32
THREADS_PER_BLOCK = 256
BACKWARD_CHUNK = 32  # SPIKESCAN_BWD_CHUNK in lif_backward.cu (and the warp width of its scan kernel)
BACKWARD_KERNELS = {"sequential": "spikescan_lif_backward", "scan": "spikescan_lif_backward_scan"}
# "auto" among this module's two backward kernels: the warp scan hides the per-point latency that bounds the
# thread-per-neuron kernel (on the H200 run of benchmarks/gpu_perf.py, the SHD network's backward took 161 ms against
# 692 ms at batch 256 and 2.9 ms against 179 ms at batch 1; same gradients, checked by its gate). spikescan.lif_backward
# runs neither for a feed-forward layer unless asked: its "auto" is the closed form (spikescan.cuda._closed.AUTO).
BACKWARD_AUTO = "scan"
# The forward kernels' exact cheap gap test (``spikescan_lif::quiet_gap``, the compiled CPU engine's shortcut): a gap
# in which V provably stays below threshold skips the peak time (log1p) and the second decay of the full test.
# Same spikes bit for bit (checked in the host emulation and on the H200 run of benchmarks/gpu_perf.py, where it took
# 12% off the sequential forward at batch 1 and 2% at batch 32, and changed the scan forward and batch 256 by 1% or
# less either way).
QUIET_GAP = True
# Backward checkpoints written by the forward kernels (PERF.md P1b): the state before every 32nd point of each
# neuron's history, kept in the residuals (32 bytes per neuron per 32 points, sized for the longest possible history:
# the queue plus max_spikes), so that the backward kernels skip their first pass (a forward walk over every point)
# and need no checkpoint groups. Gradients equal the plain path's to rounding (the forward's states at spikes are
# reset from the solved offset, the backward's from the recorded time). Off: the default backward is the closed form
# (spikescan.cuda._closed), which reads no checkpoints; with the warp backward it saved 31% of the backward at batch
# 256 on the H200 run of benchmarks/gpu_perf.py (fwd_checkpoints_warp_bwd against warp_bwd).
FORWARD_CHECKPOINTS = False
# The scan forward's spike solve with the Newton solver's three probe voltages of each round evaluated by three lanes
# at once (spikescan_lif::solve_spike_time_warp; PERF.md P3a's "one lane per probe"): the same iterates and spike
# times bit for bit, one voltage's latency per round instead of three (checked on the H200 run of
# benchmarks/gpu_perf.py: same spikes; 6% off the scan forward at batch 256, 8% at batch 32, 2% at batch 1).
WARP_SOLVE = True
# Small grids (PERF.md P5): a launch of fewer than SMALL_GRID_WAVES * SMALL_GRID_SMS blocks of THREADS_PER_BLOCK
# leaves most SMs idle (batch 1 x 512 neurons: two blocks of the thread-per-neuron backward, on two SMs). With
# SMALL_GRID_BLOCK set, such launches use blocks of that many threads instead (a multiple of 32), which spreads the
# same neurons over up to THREADS_PER_BLOCK / SMALL_GRID_BLOCK times as many SMs. Same results (a block only
# groups neurons). 64 since the H200 run of benchmarks/gpu_perf.py, whose fastest variants all used it; None: blocks of
# THREADS_PER_BLOCK always.
SMALL_GRID_BLOCK = 64
# The sequential forward of a layer with delays with rebased exponential sums (spikescan_lif_forward_rebased, PERF.md
# P3b; the compiled CPU engine's default, _lif_numpy.COMPILED_REBASED): products of tabulated factors instead of two
# exponentials per queue entry, the same spike counts and entries, times within rounding. Applies within the CPU
# engine's limits (one pair of time constants, |r| <= REBASED_MAX_R, delays <= REBASED_MAX_DELAY * min(tau)) and
# without FORWARD_CHECKPOINTS; deciding that reads the time constants and the largest delay (a host sync). Checked in
# the host emulation and on the H200 run of benchmarks/gpu_perf.py, where it was slower than the exponentials (forward
# 575 ms against 539 ms at batch 256, 107 against 98 ms at batch 32: rebased_fwd against sequential), so it stays off.
REBASED = False
# The forward's entry table (PERF.md section 6, the forward's memory pattern): for a queue that is a sample's shared
# one (a layer without delays, or permutation queues), the launcher builds a source table (int32 [batch, L1], the
# source j of each shared-queue position) and the (weight, delay) pairs [n_out, n_in, 2], and the kernels read an
# entry's source from the table instead of dividing its flat index (a 64-bit and a 32-bit integer division per
# entry), and its weight and delay from the neuron's own row of pairs in one 16-byte load, instead of a weights
# column [n_in, n_out] with a different cache line for every source and a second load from D^T. Taken by the scan
# forward (a warp's lanes are one neuron's consecutive entries, whose sources then share the neuron's 11 KiB row)
# and by the sequential and step forwards on permutation queues (lanes are neurons, each gathers its own source
# either way; the pair saves a load); not by the sequential forward without delays, whose lanes read one source's
# weights [n_in, n_out] row coalesced. The same doubles in the same additions: spikes bit-identical (checked in the
# host emulation, tests/test_cuda.py). Costs 4 bytes per shared-queue entry and 16 per synapse for the forward's
# duration. Off until a GPU run of benchmarks/gpu_perf.py times it (variant m3_entry_table).
ENTRY_TABLE = False
# The scan forward on permutation queues with each sample's shared queue (times and sources, 12 bytes per entry)
# staged in shared memory by the block of STAGED_WARPS neurons of that sample (spikescan_lif_forward_scan_staged,
# PERF.md section 6 road item 1): the entries' gathers through the permutations then read shared memory, not global
# memory (where 32 lanes gather from up to 32 cache lines). Reads the entry table whatever ENTRY_TABLE says. Applies
# where the queue fits the device's shared memory (L1 <= 19370 on an H100 / H200), otherwise the plain scan runs.
# Same spikes bit for bit (host emulation). Off until a GPU run of benchmarks/gpu_perf.py times it (m3_staged).
STAGED_SCAN = False
STAGED_WARPS = 8
# The scan forwards' software prefetch: each round also loads the entries of the chunk after it (which the next round
# starts at when this one commits all its entries), so that their gathers' latency overlaps the round's arithmetic
# instead of opening the next round; after a spike the next round loads its own. Aimed at small batches, where too
# few warps are resident to hide a round's chain of dependent loads (permutation, then arrival time and source, then
# weight and delay). The same values: spikes bit-identical (host emulation). Off until a GPU run of
# benchmarks/gpu_perf.py times it (m3_prefetch).
SCAN_PREFETCH = False
SMALL_GRID_SMS = 132  # an H100 / H200; a smaller device only makes the rule choose small blocks less often
SMALL_GRID_WAVES = 4
_CHECKPOINT_BYTES = 1 << 29


_cupy_launch = _kernels.launch_current


def lif_forward_cuda(input_times, weights, delays, tau_mem, tau_syn, threshold, max_spikes, method, chunk_size,
                     solver, max_total_spikes=DEFAULT_MAX_TOTAL_SPIKES, threshold_is_scalar=True):
    """Forward of the LIF layer on the GPU; arguments as validated by ``spikescan.lif_forward``.

    ``tau_mem``, ``tau_syn``, ``threshold``: float64 ``[n_out]`` CuPy arrays (a float threshold is broadcast);
    ``method``: ``"auto"``,
    ``"sequential"``, ``"scan"`` (or ``"step"``, the benchmark baseline). Returns ``LIFResult`` of CuPy arrays.
    """
    import cupy

    return forward(cupy, _cupy_launch, input_times, weights, delays, tau_mem, tau_syn, threshold, max_spikes, method,
                   chunk_size, solver, max_total_spikes, threshold_is_scalar)


def lif_backward_cuda(result, grad_times, method="auto", input_times_grad=True, time_constant_grads=False):
    """Backward of the LIF layer on the GPU: ``LIFGrads`` of CuPy arrays (see ``kernels/lif_backward.cu``).

    ``method``: ``"sequential"`` (thread per neuron), ``"scan"`` (warp per neuron) or ``"auto"``;
    ``input_times_grad``: False skips the input-time scatter-add and returns ``None`` for it. A recurrent layer's
    result goes to ``_recurrent.lif_backward_recurrent_cuda`` (``method`` does not apply).
    """
    import cupy

    if result.residuals.recurrent_log is not None:
        from . import _recurrent

        return _recurrent.lif_backward_recurrent_cuda(result, grad_times, input_times_grad, time_constant_grads)
    return backward(cupy, _cupy_launch, result, grad_times, method, input_times_grad, time_constant_grads)


def device_inputs(xp, launch, input_times, weights, delays, tau_mem, tau_syn, threshold, threshold_is_scalar,
                  n_entries=None, permutation=False, entry_table=False):
    """What the forward launchers (this module's and ``_recurrent``'s) hand the kernels: contiguous float64 ``W``,
    ``D`` (or ``None``), the input queues ``qt, qi (int32), qe (int64)`` built on the device, ``tm, ts`` and ``th``
    ``[n_out]``, and ``threshold_is_scalar`` (from ``threshold`` when ``None``). ``n_entries``: the most input
    spikes of any sample when the caller has read it (``_memory.most_entries``), which spares the queue build its
    own host sync. ``permutation`` (this module's forward only; the recurrent kernels read materialised queues):
    ``qt`` is a ``_queue.PermutedQueues`` and ``qi``, ``qe`` are ``None`` when that format applies. Last, ``kept``:
    the ``LIFResiduals`` fields of the shared queue (``shared_times``, ``shared_index``) that a layer with delays
    keeps for the deterministic backwards (12 bytes per input spike, 1 / n_out of the delayed queues; ``{}``
    without delays, whose queue is the shared one), and ``src``: with ``entry_table``, the shared queue's source
    table (``_queue.source_table``, which the queue kernel reads too), else ``None``."""
    n_out = weights.shape[1]
    # Copies even of float64 arrays: the residuals must not change when the caller updates its weights in place.
    W = xp.array(weights, dtype=xp.float64, order="C")
    D = None if delays is None else xp.array(delays, dtype=xp.float64, order="C")
    shared = _queue.shared_queue(input_times, xp, n_entries) if D is not None or entry_table else None
    src = _queue.source_table(xp, shared[1], input_times.shape[2]) if entry_table else None
    queues = _queue.build_queues(xp, launch, input_times, D, length=n_entries,  # see _queue.USE_KERNEL
                                 permutation=permutation, shared=shared, source=src)
    kept = {} if D is None else dict(shared_times=shared[0],
                                     shared_index=xp.ascontiguousarray(shared[1], dtype=xp.int32))
    if isinstance(queues, _queue.PermutedQueues):
        qt, qi, qe = queues, None, None
    else:
        qt, qi, qe = queues
        qt, qi, qe = (xp.ascontiguousarray(qt), xp.ascontiguousarray(qi, dtype=xp.int32),
                      xp.ascontiguousarray(qe, dtype=xp.int64))
    tm = xp.ascontiguousarray(tau_mem, dtype=xp.float64)
    ts = xp.ascontiguousarray(tau_syn, dtype=xp.float64)
    if threshold_is_scalar is None:
        threshold_is_scalar = xp.ndim(threshold) == 0
    th = xp.ascontiguousarray(xp.broadcast_to(xp.asarray(threshold, dtype=xp.float64), (n_out,)))
    return W, D, qt, qi, qe, tm, ts, th, threshold_is_scalar, kept, src


def forward(xp, launch, input_times, weights, delays, tau_mem, tau_syn, threshold, max_spikes, method, chunk_size,
            solver, max_total_spikes=DEFAULT_MAX_TOTAL_SPIKES, threshold_is_scalar=None):
    """Array-module-generic body of ``lif_forward_cuda``."""
    batch, n_in, max_in = input_times.shape
    n_out = weights.shape[1]
    n_entries = _memory.most_entries(input_times, xp)  # one small reduction and read (a host sync)
    permutation = _queue.permutation_default(xp, n_entries, delays is not None)
    if method == "auto":
        from . import choose_method

        method = choose_method(batch, n_out, n_entries, permuted=bool(permutation))
    with_checkpoints = bool(FORWARD_CHECKPOINTS) and method in ("sequential", "scan") and batch * n_out > 0
    n_ckpt = -(-(n_entries + max_spikes) // BACKWARD_CHUNK)  # a history: <= n_entries inputs, max_spikes spikes
    extra = {"backward checkpoints": n_ckpt * 32 * batch * n_out} if with_checkpoints else None
    _memory.check_forward(batch, n_in, max_in, n_out, n_entries, max_spikes, delays is not None, method, chunk_size,
                          input_times.dtype.itemsize, xp, extra=extra, permutation=permutation)
    staged = staged_scan_applies(xp, method, bool(permutation), n_entries + 1)
    W, D, qt, qi, qe, tm, ts, th, threshold_is_scalar, kept, src = device_inputs(
        xp, launch, input_times, weights, delays, tau_mem, tau_syn, threshold, threshold_is_scalar, n_entries,
        permutation, entry_table=bool(ENTRY_TABLE) or staged)
    permuted = qt if isinstance(qt, _queue.PermutedQueues) else None
    queue_args = _queue_args(xp, qt, qi, qe)
    qe = queue_args[2]
    n_queues, L1 = queue_args[0].shape[1], queue_args[0].shape[2]
    dtype = input_times.dtype
    spike_times = xp.full((batch, n_out, max_spikes), np.inf, dtype=xp.float64)
    spike_event = xp.full((batch, n_out, max_spikes), -1, dtype=xp.int64)
    out_times = xp.full((batch, n_out, max_spikes), np.inf, dtype=dtype)
    counts = xp.zeros((batch, n_out), dtype=xp.int64)
    stuck_times = xp.full(batch * n_out, np.inf, dtype=xp.float64)
    stuck_current = xp.full(batch * n_out, np.nan, dtype=xp.float64)
    limit = np.int64(min(int(max_total_spikes), np.iinfo(np.int64).max))
    n = batch * n_out
    rebased = (method == "sequential" and REBASED and not FORWARD_CHECKPOINTS and batch * n_out > 0
               and rebased_applies(D, tm, ts))
    staged = staged and permuted is not None and L1 == n_entries + 1
    table = (entry_table_applies(method, n_queues, permuted is not None) or staged) and not rebased
    common = queue_args + [np.int64(n_in), W, tm, ts, th, np.int32(SOLVER_CODES[solver]), np.int32(bool(QUIET_GAP)),
                           np.int64(batch), np.int64(n_out), np.int64(n_queues), np.int64(L1), np.int64(max_in),
                           np.int64(max_spikes), limit] + entry_table_args(xp, src, W, D, table)
    outputs = [spike_times, spike_event, out_times, counts, stuck_times, stuck_current]
    checkpoints = None
    if with_checkpoints:
        # The host emulation fills them with NaN so that a checkpoint the forward failed to write shows in the
        # gradients.
        assert L1 - 1 <= n_entries, (L1, n_entries)
        checkpoints = (xp.full if xp.__name__ == "numpy" else _empty)((n_ckpt, 4, n), np.nan, dtype=xp.float64)
        ckpt_args = [checkpoints, np.int64(n_ckpt)]
    else:
        ckpt_args = [xp.empty(1, dtype=xp.float64), np.int64(0)]  # n_ckpt = 0: the kernels write none
    if rebased:
        block = block_size(n)
        launch("lif_forward", "spikescan_lif_forward_rebased", dtype, _blocks(n, block), block,
               common + rebased_tables(xp, input_times, D, float(tm[0]), float(ts[0])) + outputs)
    elif method == "sequential":
        block = block_size(n)
        launch("lif_forward", "spikescan_lif_forward_sequential_x" if table else "spikescan_lif_forward_sequential",
               dtype, _blocks(n, block), block, common + outputs + ckpt_args)
    elif staged:
        width = np.int32(min(int(chunk_size), WARP))
        per_sample = -(-n_out // STAGED_WARPS)
        launch("lif_forward", "spikescan_lif_forward_scan_staged", dtype, batch * per_sample, STAGED_WARPS * WARP,
               common + [width, np.int32(bool(WARP_SOLVE)), np.int32(bool(SCAN_PREFETCH)), np.int64(per_sample)]
               + outputs + ckpt_args,
               shared_mem=staged_bytes(L1))
    elif method == "scan":
        width = np.int32(min(int(chunk_size), WARP))
        block = block_size(n * WARP)
        # The plain kernel has no entry table compiled in (its registers stay as measured): _x has it.
        kernel = ("spikescan_lif_forward_scan_prefetch" if SCAN_PREFETCH
                  else "spikescan_lif_forward_scan_x" if table else "spikescan_lif_forward_scan")
        launch("lif_forward", kernel, dtype, _blocks(n * WARP, block), block,
               common + [width, np.int32(bool(WARP_SOLVE))] + outputs + ckpt_args)
    elif method == "step":
        state = [xp.zeros(n, dtype=xp.float64) for _ in range(3)] + [xp.full(n, -np.inf, dtype=xp.float64)]
        n_steps = int(qe.max()) + 1 if qe.size else 0
        for k in range(n_steps):
            launch("lif_forward", "spikescan_lif_forward_step", dtype, _blocks(n, THREADS_PER_BLOCK),
                   THREADS_PER_BLOCK, common + [np.int64(k)] + state + outputs)
    else:
        raise ValueError(f"method must be 'auto', 'sequential', 'scan' or 'step', got {method!r}")
    # One small reduction and a short read (a host sync): the price of raising instead of recording garbage. In a
    # dtype narrower than float64, a spike time beyond its range would read as no spike (+inf): refused too.
    stuck = xp.isfinite(stuck_times)
    narrow = dtype != np.float64
    lost = lost_output_times(spike_times, out_times, xp) if narrow else None
    flags = xp.stack([stuck.any(), lost.any()]) if narrow else stuck.any()[None]
    flags = flags.get() if hasattr(flags, "get") else flags
    if narrow and flags[1] and not flags[0]:
        raise output_range_error(spike_times, lost, dtype, xp)
    if flags[0]:
        first = int(xp.argmax(stuck))
        t_stop = float(stuck_times[first])
        if int(counts.reshape(-1)[first]) > limit:  # the kernel left max_total_spikes + 1: runaway firing
            raise runaway_firing_error(first, n_out, t_stop, float(stuck_current[first]), int(limit),
                                       float(th[first % n_out]))
        raise unresolvable_spike_error(first, n_out, t_stop)
    if permuted is None:
        queues = dict(queue_times=qt, queue_index=qi, queue_end=qe, **kept)
    else:
        queues = dict(queue_times=None, queue_index=None, queue_end=permuted.end, queue_perm=permuted.perm,
                      shared_times=permuted.times, shared_index=permuted.index, delays_t=permuted.delays_t)
    res = LIFResiduals(
        **queues, spike_times=spike_times, spike_event=spike_event,
        weights=W, delays=D, tau_mem=tm, tau_syn=ts, threshold=th, threshold_is_scalar=bool(threshold_is_scalar),
        input_shape=tuple(input_times.shape), input_dtype=dtype, weights_dtype=weights.dtype,
        delays_dtype=None if delays is None else delays.dtype, solver=solver, checkpoints=checkpoints)
    return LIFResult(times=out_times, counts=counts, residuals=res)


def staged_bytes(L1):
    """Dynamic shared memory of the staged scan forward: a sample's shared queue, float64 times and int32 sources."""
    return 12 * int(L1)


def staged_scan_applies(xp, method, permuted, L1):
    """Whether the scan forward runs staged (``STAGED_SCAN``): the scan on permutation queues whose shared queue
    (``L1`` entries) fits a block's shared memory (the device's opt-in maximum, or the emulator's)."""
    if not (STAGED_SCAN and method == "scan" and permuted):
        return False
    return staged_bytes(L1) <= _queue._max_shared(xp)


def entry_table_applies(method, n_queues, permuted):
    """Whether a forward of ``method`` reads the entry table (``ENTRY_TABLE``): a shared queue (``n_queues == 1``:
    no delays, or ``permuted``), and the scan kernel or a permutation queue."""
    return bool(ENTRY_TABLE) and n_queues == 1 and method in ("sequential", "scan", "step") and (
        method == "scan" or permuted)


def entry_table_args(xp, src, W, D, table):
    """The forward kernels' last three common arguments ``[entry_src, entry_wd, entry_table]``: with ``table``, the
    shared queue's source table ``src`` (int32 ``[batch, L1]``, ``_queue.source_table``) and the (weight, delay)
    pairs ``[n_out, n_in, 2]`` (delay 0 without delays); placeholders otherwise."""
    if not table:
        return [xp.empty(1, dtype=xp.int32), xp.empty(2, dtype=xp.float64), np.int32(0)]
    wd = xp.empty((W.shape[1], W.shape[0], 2), dtype=xp.float64)
    wd[..., 0] = W.T
    wd[..., 1] = 0.0 if D is None else D.T
    return [src, wd, np.int32(1)]


def rebased_applies(D, tm, ts):
    """Whether the rebased kernel may run (``REBASED`` aside): delays, one pair of time constants and the compiled
    engine's limits (``spikescan._lif_numpy.rebased_applies``). Reads ``[n_out]`` time constants and the largest
    delay to the host."""
    from .. import _lif_numpy

    if D is None:
        return False
    return _lif_numpy.rebased_within_limits(float(D.max()) if D.size else 0.0, to_host(tm), to_host(ts))


def rebased_tables(xp, input_times, D, tau_mem, tau_syn):
    """The rebased kernel's arguments ``[E, F, width, reach, span]`` (see ``spikescan_lif_forward_rebased``): per
    input slot ``E = (e^{(t - T)/tau_mem}, e^{(t - T)/tau_syn}, blk)`` (``T = blk * width``, ``blk = floor(t /
    width)``; zeros for padding), per synapse ``F[i, j] = (e^{D[j, i]/tau_mem}, e^{D[j, i]/tau_syn})``. ``width =
    max(REBASED_BLOCK * min(tau), reach + span)`` with ``reach = max(D)`` and ``span = REBASED_SPAN * min(tau)``, so
    the sources of the entries within ``span`` of an anchor lie in two consecutive blocks."""
    from .. import _lif_numpy

    tmin = min(tau_mem, tau_syn)
    reach = float(D.max()) if D.size else 0.0
    span = _lif_numpy.REBASED_SPAN * tmin
    width = max(_lif_numpy.REBASED_BLOCK * tmin, reach + span)
    batch, n_in, max_in = input_times.shape
    t = input_times.reshape(batch, n_in * max_in).astype(xp.float64)
    finite = xp.isfinite(t)
    t = xp.where(finite, t, 0.0)
    blk = xp.floor(t / width)
    offset = t - blk * width
    E = xp.stack([xp.where(finite, xp.exp(offset / tau_mem), 0.0), xp.where(finite, xp.exp(offset / tau_syn), 0.0),
                  xp.where(finite, blk, 0.0)], axis=-1)
    Dt = xp.ascontiguousarray(D.T)
    F = xp.stack([xp.exp(Dt / tau_mem), xp.exp(Dt / tau_syn)], axis=-1)
    return [xp.ascontiguousarray(E), xp.ascontiguousarray(F), np.float64(width), np.float64(reach),
            np.float64(span)]


def _queue_args(xp, qt, qi, qe):
    """The LIF kernels' queue arguments ``[queue_times, queue_index, queue_end, queue_perm, delays_t, permuted]``
    from materialised queues ``qt, qi, qe``, or from a ``_queue.PermutedQueues`` ``qt`` (then the shared queue as
    ``[batch, 1, L1]`` queues, one end per sample, and the permutation; see common.cuh ``spikescan_queue_t``)."""
    if not isinstance(qt, _queue.PermutedQueues):
        return [qt, qi, qe, xp.empty(1, dtype=xp.uint16), xp.empty(1, dtype=xp.float64), np.int32(0)]
    batch, L1 = qt.times.shape
    return [qt.times.reshape(batch, 1, L1), qt.index.reshape(batch, 1, L1),
            xp.ascontiguousarray(qt.end[:, :1]), qt.perm, qt.delays_t, np.int32(1)]


def _empty(shape, fill_value, dtype):
    """``cupy.empty`` with ``xp.full``'s signature (the fill value is not written)."""
    import cupy

    return cupy.empty(shape, dtype=dtype)


def backward(xp, launch, result, grad_times, method="auto", input_times_grad=True, time_constant_grads=False,
             tau_partials=False):
    """Array-module-generic body of ``lif_backward_cuda``. ``tau_partials`` (with ``time_constant_grads``): the
    kernels write each neuron's time-constant terms and this function sums them over samples in a fixed order, so
    those two gradients are bitwise reproducible (the others still sum by atomics)."""
    if method == "auto":
        method = BACKWARD_AUTO
    if method not in BACKWARD_KERNELS:
        raise ValueError(f"method must be 'auto', 'sequential' or 'scan', got {method!r}")
    kernel = BACKWARD_KERNELS[method]
    threads_per_neuron = WARP if method == "scan" else 1
    res = result.residuals
    batch, n_in, max_in = res.input_shape
    n_out = res.weights.shape[1]
    max_spikes = res.spike_times.shape[2]
    queue_args = residual_queue_args(xp, res)
    n_queues, L1 = queue_args[0].shape[1], queue_args[0].shape[2]
    grad_times = xp.ascontiguousarray(grad_times)
    counts = xp.ascontiguousarray(result.counts, dtype=xp.int64)
    grad_w, grad_in, grad_d, grad_th, grazing = gradient_buffers(xp, res, input_times_grad)
    n = batch * n_out
    partials = bool(tau_partials and time_constant_grads)
    grad_tm = xp.zeros(n if partials else n_out, dtype=xp.float64)
    grad_ts = xp.zeros(n if partials else n_out, dtype=xp.float64)
    if n > 0:
        ready = res.checkpoints is not None
        if ready:  # written by the forward: no first pass, one launch, no working memory beyond the gradients
            n_ckpt, group, checkpoints = res.checkpoints.shape[0], n, res.checkpoints
            _memory.fit_backward_group(batch, n_in, max_in, n_out, input_times_grad, res.delays is not None, n, n,
                                       0, max_spikes, xp)
        else:
            # Points per neuron up to its last recorded spike: entries before it plus the recorded spikes.
            n_rec = xp.minimum(counts, max_spikes).reshape(n)
            last = xp.maximum(n_rec - 1, 0)
            last_event = res.spike_event.reshape(n, max_spikes)[xp.arange(n), last]
            n_points = int(xp.where(n_rec > 0, last_event + n_rec, 0).max())  # host sync
            n_ckpt = max(1, math.ceil(n_points / BACKWARD_CHUNK))
            group = max(1, min(n, _CHECKPOINT_BYTES // (n_ckpt * 4 * 8)))
            # Within the memory limit, smaller groups of neurons (more launches, same gradients) rather than an
            # error.
            group = _memory.fit_backward_group(batch, n_in, max_in, n_out, input_times_grad, res.delays is not None,
                                               n, group, n_ckpt * 4 * 8, max_spikes, xp)
            checkpoints = xp.empty(n_ckpt * 4 * group, dtype=xp.float64)
        for start in range(0, n, group):
            count = min(group, n - start)
            args = queue_args + [res.weights, res.tau_mem, res.tau_syn,
                    res.threshold, np.int64(batch), np.int64(n_in), np.int64(n_out),
                    np.int64(n_queues), np.int64(L1), np.int64(max_in), np.int64(max_spikes), np.int64(start),
                    np.int64(count), res.spike_times, res.spike_event, counts, grad_times, np.int64(n_ckpt),
                    checkpoints, np.int32(ready), grad_w, np.int32(input_times_grad), grad_in,
                    np.int32(res.delays is not None), grad_d, grad_th,
                    np.int32(2 if partials else bool(time_constant_grads)), grad_tm, grad_ts, grazing]
            block = block_size(count * threads_per_neuron)
            launch("lif_backward", kernel, grad_times.dtype, _blocks(count * threads_per_neuron, block), block, args)
    if partials:  # per (sample, neuron), summed over samples in order
        grad_tm, grad_ts = grad_tm.reshape(batch, n_out).sum(axis=0), grad_ts.reshape(batch, n_out).sum(axis=0)
    # stacklevel 5: the caller of spikescan.lif_backward (through lif_backward_cuda and this function).
    return finish_grads(xp, res, grazing if n > 0 else None, grad_w, grad_in if input_times_grad else None, grad_d,
                        grad_th, grad_tm if time_constant_grads else None,
                        grad_ts if time_constant_grads else None, stacklevel=5)


def residual_queue_args(xp, res):
    """The queue arguments of the backward kernels (``_queue_args``) from a forward's residuals, in whichever format
    the forward kept its queues (materialised, or permutations of the shared queue)."""
    if res.queue_perm is None:
        return _queue_args(xp, res.queue_times, res.queue_index, res.queue_end)
    return _queue_args(xp, _queue.PermutedQueues(res.queue_perm, res.shared_times, res.shared_index, res.queue_end,
                                                 res.delays_t), None, None)


def gradient_buffers(xp, res, input_times_grad):
    """Zeroed float64 accumulators of the backward kernels: ``(grad_w [n_in, n_out], grad_in [batch, n_in, max_in]
    (one element without input_times_grad), grad_d [n_in, n_out] (one element without delays), grad_th [n_out],
    grazing [neurons, 2])``, ``grazing`` holding (count, earliest time) of each neuron's grazing spikes."""
    batch, n_in, max_in = res.input_shape
    n_out = res.weights.shape[1]
    grad_w = xp.zeros((n_in, n_out), dtype=xp.float64)
    grad_in = xp.zeros((batch, n_in, max_in) if input_times_grad else 1, dtype=xp.float64)
    grad_d = xp.zeros((n_in, n_out), dtype=xp.float64) if res.delays is not None else xp.zeros(1, xp.float64)
    grad_th = xp.zeros(n_out, dtype=xp.float64)
    grazing = xp.zeros((max(batch * n_out, 1), 2), dtype=xp.float64)
    grazing[:, 1] = np.inf
    return grad_w, grad_in, grad_d, grad_th, grazing


def finish_grads(xp, res, grazing, grad_w, grad_in, grad_d, grad_th, grad_tm, grad_ts, stacklevel):
    """What every CUDA backward launcher ends with: ``GrazingSpikeWarning`` from the kernels' per-neuron
    ``grazing`` records (``[neurons, 2]``: count, earliest time; one host sync; ``None`` for no neurons), then
    ``LIFGrads`` in the forward arguments' dtypes (``grad_in``, ``grad_tm``, ``grad_ts``: ``None`` when not
    computed; a scalar threshold gets the sum over neurons). ``stacklevel`` counts from this function's caller's
    caller, as ``warnings.warn`` would from the launcher."""
    if grazing is not None:
        n_grazing = int(grazing[:, 0].sum())  # host sync
        if n_grazing:
            first = int(xp.argmax(grazing[:, 0] > 0))
            warn_grazing(n_grazing, first, res.weights.shape[1], float(grazing[first, 1]), stacklevel=stacklevel)
    return LIFGrads(
        weights=grad_w.astype(res.weights_dtype),
        input_times=None if grad_in is None else grad_in.astype(res.input_dtype),
        delays=None if res.delays is None else grad_d.astype(res.delays_dtype),
        threshold=grad_th.sum(keepdims=True).reshape(()) if res.threshold_is_scalar else grad_th,
        tau_mem=grad_tm, tau_syn=grad_ts)


def block_size(threads):
    """Threads per block for a launch of ``threads`` threads: ``THREADS_PER_BLOCK``, or ``SMALL_GRID_BLOCK`` when
    that is set and the launch would fill fewer than ``SMALL_GRID_WAVES`` waves of ``SMALL_GRID_SMS`` blocks."""
    if SMALL_GRID_BLOCK is not None and _blocks(threads, THREADS_PER_BLOCK) < SMALL_GRID_WAVES * SMALL_GRID_SMS:
        block = int(SMALL_GRID_BLOCK)
        if block % WARP or not 0 < block <= THREADS_PER_BLOCK:
            raise ValueError(f"SMALL_GRID_BLOCK must be a positive multiple of {WARP} up to {THREADS_PER_BLOCK}, "
                             f"got {SMALL_GRID_BLOCK!r}")
        return block
    return THREADS_PER_BLOCK


def _blocks(threads, block):
    return (int(threads) + block - 1) // block
