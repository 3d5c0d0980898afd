"""CuPy launchers of the recurrent LIF layer's kernels (``kernels/recurrent.cu``), DESIGN.md section 9.

``lif_forward_recurrent_cuda`` / ``lif_backward_recurrent_cuda`` have the contract of the NumPy recurrent layer
(``spikescan._recurrent``: its ``"sequential"`` global event loop and its backward) for validated CuPy arguments. As
in ``_lif``, the bodies (``forward``, ``backward``) take an array module ``xp`` and a ``launch`` function, so the
tests run the same code on the kernels' host emulation (``_hostemu``) with NumPy arrays.

Forward: ``spikescan_recurrent_forward``, one block per sample and threads over its neurons (``block_size``, default
up to 256), the sample's global event loop with a block reduction per event: NumPy's ``method="sequential"``, which
is also what ``"auto"`` selects on CuPy inputs. NumPy's ``method="scan"`` (parallel windows) has no CUDA kernel and is
a ``ValueError`` here (``check_method``), not a silent substitute; ``chunk_size`` does not apply.
Sizes the kernel cannot know in advance are checked after it, never truncated:

- pending recurrent arrivals: ``pending_capacity`` per (sample, neuron) (default ``min(n_out, 16)`` without
  recurrent delays, where at most one arrival per neuron can wait, else 16); a sample that needs more stops, and the
  forward runs again with twice the capacity (``MemoryError`` when that does not fit);
- the spike log (``RecurrentLog``): ``log_capacity`` spikes per sample (default ``n_out * max_spikes``, at least 64,
  at most what ``max_total_spikes`` allows); the kernel counts every spike, and a longer log runs the forward again
  with the exact size.

Errors as ``_lif.forward``: ``FloatingPointError`` for a neuron that fires twice at one float64 time,
``RunawayFiringError`` (with the recurrent hint of ``spikescan._recurrent._runaway_error``) for one that exceeds
``max_total_spikes``; the lowest flat index ``sample * n_out + neuron`` among the samples that stopped is reported
(the first sample to stop, on an error or a full pending buffer, stops the others at their next step: the batch is
raised on or run again anyway, so a runaway sample costs its own time, not the batch's). Host syncs: the queue
length, and one small read of the flags after each run of the kernel.

Backward: ``spikescan_recurrent_backward_spikes`` (one block per sample: the spikes last to first, a block sum of
each spike's recurrent arrivals), then ``spikescan_recurrent_backward_inputs`` (thread per (sample, neuron) over
its queue entries; atomics, so ``weights``, ``delays`` and ``input_times`` gradients vary in the last bits from run
to run, as in the feed-forward backward) and ``spikescan_recurrent_backward_weights`` (thread per recurrent synapse,
summing over samples in order: deterministic). The threshold's gradient is ``-sum(lamV)`` over the adjoints stored
at the spikes (a CuPy reduction, deterministic). Working memory: three float64 ``[batch, n_out, C]`` arrays
(``C`` the most spikes of a neuron) besides the gradients.

With ``DETERMINISTIC`` (opt-in, like ``_closed.DETERMINISTIC``) the input gradients come instead from
``spikescan_recurrent_backward_synapses`` (thread per input synapse: samples and spikes in order) and
``spikescan_recurrent_backward_input_times`` (thread per input spike: neurons in order), which read a dense float64
input-time table built from the shared queue (``_queue.input_table``; the forward keeps the shared queue of a layer
with delays, 12 bytes per input spike), and the time constants' terms are summed per neuron in a fixed order
(``_lif.backward(..., tau_partials=True)``): every gradient is then bitwise reproducible.

Time constants (``time_constant_grads=True``), as on NumPy: the spike walk also writes each spike's derivative
through everything outside its neuron; the layer is unrolled on the device into a feed-forward one whose inputs
include its own spikes held fixed (``spikescan._recurrent.unrolled_residuals``: each neuron's input queue merged with
the recurrent arrivals it received by a stable sort, a few ``[batch, n_out, L1 + M]`` arrays), and the feed-forward
backward kernel (``_lif.backward``) gives each neuron's exact ``tau_mem`` / ``tau_syn`` terms. One more host sync
(the unrolled queue's length).
"""

from __future__ import annotations

import numpy as np

from .. import _determinism, _memory
from .._lif_numpy import (DEFAULT_MAX_TOTAL_SPIKES, lost_output_times, output_range_error, quiet_grazing,
                          unresolvable_spike_error, warn_grazing)
from .._recurrent import _runaway_error, arrival_range_error, lost_arrivals, unrolled_residuals
from .._types import LIFGrads, LIFResiduals, LIFResult, RecurrentLog
from . import _kernels, _lif, _queue
from ._lif import SOLVER_CODES

MODULE = "recurrent"
MAX_BLOCK = 256
# Largest block_size accepted: the forward kernel takes 88 (sm_90) to 92 (sm_80) registers per thread, so a block of
# more than 672 threads needs more than the 64K registers a block may hold and fails to launch on the GPU ("too many
# resources requested"), which the host emulation cannot show (tests/test_cuda_resources.py checks the bound).
BLOCK_LIMIT = 512
PENDING_CAPACITY = 16
_STATE_FIELDS = 8  # SPIKESCAN_REC_FIELDS: V, I, t, last spike, crossing, its offset, earliest pending, next arrival
_INT_FIELDS = 3  # SPIKESCAN_REC_INT_FIELDS: next queue entry, pending count, crossing out of date
_RED_BYTES = 32  # sizeof(spikescan_rec_red_t)
THREADS_PER_BLOCK = 256
# lif_forward's methods for a recurrent layer on CuPy inputs: the kernel is the event loop ("sequential").
METHODS = ("auto", "sequential")
# Opt-in: the backward without float atomics (see the module docstring).
DETERMINISTIC = False


def check_method(method):
    """The method the CUDA kernels run for ``lif_forward``'s ``method`` on a recurrent layer: ``"sequential"`` for
    ``"auto"`` and ``"sequential"``; ``ValueError`` for anything else (``"scan"``, NumPy's parallel windows, has no
    CUDA kernel)."""
    if isinstance(method, str) and method in METHODS:
        return "sequential"
    raise ValueError(
        f"method={method!r} is not available for a recurrent layer on CuPy inputs: the CUDA kernel is the event "
        "loop, method='sequential' (also what method='auto' selects); method='scan' (parallel windows) runs on "
        "NumPy inputs")


_cupy_launch = _kernels.launch_current


def lif_forward_recurrent_cuda(input_times, weights, delays, tau_mem, tau_syn, threshold, max_spikes, solver,
                               max_total_spikes, threshold_is_scalar, recurrent_weights, recurrent_delays,
                               method="auto"):
    """Forward of the recurrent layer on the GPU; arguments as validated by ``spikescan.lif_forward`` (``method``:
    see ``check_method``, which ``forward`` applies before anything touches the device). Returns ``LIFResult`` of
    CuPy arrays (``residuals.recurrent_log`` included)."""
    import cupy

    return forward(cupy, _cupy_launch, input_times, weights, delays, tau_mem, tau_syn, threshold, max_spikes, solver,
                   max_total_spikes, threshold_is_scalar, recurrent_weights, recurrent_delays, method=method)


def lif_backward_recurrent_cuda(result, grad_times, input_times_grad=True, time_constant_grads=False):
    """Backward of the recurrent layer on the GPU: ``LIFGrads`` of CuPy arrays."""
    import cupy

    # stacklevel 5 for the grazing warning: the caller of spikescan.lif_backward (through _lif.lif_backward_cuda).
    return backward(cupy, _cupy_launch, result, grad_times, input_times_grad, time_constant_grads, stacklevel=5)


def default_block_size(n_out):
    """Threads per sample: a multiple of 32 covering the neurons, at most ``MAX_BLOCK``."""
    return int(min(MAX_BLOCK, 32 * max(1, -(-int(n_out) // 32))))


def _check_block(block_size):
    if (isinstance(block_size, bool) or not isinstance(block_size, (int, np.integer))
            or not 1 <= block_size <= BLOCK_LIMIT):
        raise ValueError(f"block_size must be an integer from 1 to {BLOCK_LIMIT}, got {block_size!r}")
    return int(block_size)


def forward(xp, launch, input_times, weights, delays, tau_mem, tau_syn, threshold, max_spikes, solver,
            max_total_spikes=DEFAULT_MAX_TOTAL_SPIKES, threshold_is_scalar=None, recurrent_weights=None,
            recurrent_delays=None, block_size=None, pending_capacity=None, log_capacity=None, method="auto"):
    """Array-module-generic body of ``lif_forward_recurrent_cuda``.

    ``block_size``: threads per sample (default ``default_block_size(n_out)``); ``pending_capacity``,
    ``log_capacity``: first sizes of the pending-arrival buffers and of the log (see the module docstring; tests
    make them small to run the reruns); ``method``: ``lif_forward``'s, checked by ``check_method``.
    """
    check_method(method)
    batch, n_in, max_in = input_times.shape
    n_out = weights.shape[1]
    n_entries = _memory.most_entries(input_times, xp)  # one small reduction and read (a host sync)
    limit = int(min(int(max_total_spikes), np.iinfo(np.int64).max))
    block = _check_block(default_block_size(n_out) if block_size is None else block_size)
    has_rd = recurrent_delays is not None
    pend_cap = int(pending_capacity) if pending_capacity is not None else (
        PENDING_CAPACITY if has_rd else min(n_out, PENDING_CAPACITY))
    pend_cap = max(pend_cap, 1)
    most_log = limit * n_out  # a sample stops at spike limit + 1 of a neuron
    log_cap = int(log_capacity) if log_capacity is not None else min(most_log, max(64, n_out * max_spikes))
    log_cap = max(log_cap, 1)
    _check_memory(batch, n_in, max_in, n_out, n_entries, max_spikes, delays is not None, pend_cap, log_cap,
                  input_times.dtype.itemsize, xp)
    W, D, qt, qi, qe, tm, ts, th, threshold_is_scalar, kept, _ = _lif.device_inputs(
        xp, launch, input_times, weights, delays, tau_mem, tau_syn, threshold, threshold_is_scalar, n_entries)
    R = xp.array(recurrent_weights, dtype=xp.float64, order="C")  # copies: the residuals keep them
    Dr = None if recurrent_delays is None else xp.array(recurrent_delays, dtype=xp.float64, order="C")
    n_queues, L1 = qt.shape[1], qt.shape[2]
    dtype = input_times.dtype
    N = batch * n_out
    lost = lost_out = None  # (none computed when the layer has no neurons)
    while True:
        spike_times = xp.full((batch, n_out, max_spikes), np.inf, dtype=xp.float64)
        spike_event = xp.full((batch, n_out, max_spikes), -1, dtype=xp.int64)
        out_times = xp.full((batch, n_out, max_spikes), np.inf, dtype=dtype)
        counts = xp.zeros((batch, n_out), dtype=xp.int64)
        log_t = xp.full((batch, log_cap), np.inf, dtype=xp.float64)
        log_k = xp.full((batch, log_cap), -1, dtype=xp.int64)
        log_I = xp.zeros((batch, log_cap), dtype=xp.float64)
        log_n = xp.zeros(batch, dtype=xp.int64)
        stuck_times = xp.full(N, np.inf, dtype=xp.float64)
        stuck_current = xp.full(N, np.nan, dtype=xp.float64)
        overflow = xp.zeros(batch, dtype=xp.int32)
        abort_all = xp.zeros(1, dtype=xp.int32)
        state = xp.empty(_STATE_FIELDS * N, dtype=xp.float64)
        istate = xp.empty(_INT_FIELDS * N, dtype=xp.int64)
        pend_t = xp.empty(pend_cap * N, dtype=xp.float64)
        pend_w = xp.empty(pend_cap * N, dtype=xp.float64)
        args = [qt, qi, qe, W, tm, ts, th, R, R if Dr is None else Dr, np.int32(has_rd),
                np.int32(SOLVER_CODES[solver]), np.int64(batch), np.int64(n_out), np.int64(n_queues), np.int64(L1),
                np.int64(max(max_in, 1)), np.int64(max_spikes), np.int64(limit), np.int64(pend_cap),
                np.int64(log_cap), state, istate, pend_t, pend_w, spike_times, spike_event, out_times, counts, log_t,
                log_k, log_I, log_n, stuck_times, stuck_current, overflow, abort_all]
        launch(MODULE, "spikescan_recurrent_forward", dtype, batch, block, args, shared_mem=block * _RED_BYTES)
        del state, istate, pend_t, pend_w
        if N == 0:
            n_log_max = 0
            break
        # One small read (a host sync): errors, full pending buffers, the longest log.
        # Refused below: an arrival that overflowed float64 (with recurrent delays; read as no arrival), a spike
        # time beyond the range of a narrower output dtype (read as no spike).
        lost = None if Dr is None else lost_arrivals(RecurrentLog(log_t, log_k, log_I, log_n), R, Dr, xp)
        lost_out = None if dtype == np.float64 else lost_output_times(spike_times, out_times, xp)
        flags = xp.stack([xp.isfinite(stuck_times).any(), overflow.max(), log_n.max()]
                         + [x.any() for x in (lost, lost_out) if x is not None]).astype(xp.int64)
        stuck, overflowed, n_log_max, *lost_any = (int(x) for x in (flags.get() if hasattr(flags, "get") else flags))
        if stuck:
            first = int(xp.argmax(xp.isfinite(stuck_times)))
            t_stop = float(stuck_times[first])
            if int(counts.reshape(-1)[first]) > limit:
                raise _runaway_error(first // n_out, first % n_out, n_out, t_stop, float(stuck_current[first]),
                                     limit, float(th[first % n_out]))
            raise unresolvable_spike_error(first, n_out, t_stop)
        if overflowed:
            pend_cap *= 2  # every arrival kept: run again with room for twice as many
            _check_memory(batch, n_in, max_in, n_out, n_entries, max_spikes, delays is not None, pend_cap, log_cap,
                          input_times.dtype.itemsize, xp)
            continue
        if n_log_max > log_cap:
            log_cap = n_log_max  # the kernel counted every spike: the exact size
            _check_memory(batch, n_in, max_in, n_out, n_entries, max_spikes, delays is not None, pend_cap, log_cap,
                          input_times.dtype.itemsize, xp)
            continue
        break
    log = RecurrentLog(times=log_t[:, :n_log_max], neurons=log_k[:, :n_log_max], currents=log_I[:, :n_log_max],
                       count=log_n)
    if lost is not None and lost_any[0]:
        raise arrival_range_error(log, lost[:, :n_log_max], R, Dr, xp)
    if lost_out is not None and lost_any[-1]:
        raise output_range_error(spike_times, lost_out, dtype, xp)
    res = LIFResiduals(
        queue_times=qt, queue_index=qi, queue_end=qe, spike_times=spike_times, spike_event=spike_event,
        weights=W, delays=D, tau_mem=tm, tau_syn=ts, threshold=th, threshold_is_scalar=bool(threshold_is_scalar),
        input_shape=tuple(input_times.shape), input_dtype=dtype, weights_dtype=weights.dtype,
        delays_dtype=None if delays is None else delays.dtype, solver=solver,
        recurrent_weights=R, recurrent_delays=Dr, recurrent_log=log,
        recurrent_weights_dtype=recurrent_weights.dtype,
        recurrent_delays_dtype=None if recurrent_delays is None else recurrent_delays.dtype, **kept)
    return LIFResult(times=out_times, counts=counts, residuals=res)


def _check_memory(batch, n_in, max_in, n_out, n_entries, max_spikes, has_delays, pend_cap, log_cap, itemsize, xp):
    """``MemoryError`` before allocating: the feed-forward parts plus the event loop's state, pending buffers and
    log."""
    parts = _memory.lif_forward_estimate(batch, n_in, max_in, n_out, n_entries, max_spikes, has_delays,
                                         "sequential", 1, itemsize, "cupy")
    neurons = batch * n_out
    parts["recurrent state"] = neurons * 8 * (_STATE_FIELDS + _INT_FIELDS)
    parts["pending arrivals"] = neurons * 16 * pend_cap
    parts["spike log"] = batch * 24 * log_cap
    _memory.check(_memory.describe("lif_forward", batch, n_out, max_spikes, has_delays) + " (recurrent)", parts, xp,
                  "reduce the batch; a recurrent layer also keeps every spike of a sample in its log and the "
                  "recurrent arrivals in flight (many with long recurrent_delays and high rates); or raise the "
                  "limit with spikescan.set_memory_limit / SPIKESCAN_MEMORY_LIMIT if more memory is really there")


def backward(xp, launch, result, grad_times, input_times_grad=True, time_constant_grads=False, block_size=None,
             stacklevel=4):
    """Array-module-generic body of ``lif_backward_recurrent_cuda``; ``block_size`` as in ``forward``."""
    res = result.residuals
    log = res.recurrent_log
    batch, n_in, max_in = res.input_shape
    n_out = res.weights.shape[1]
    max_spikes = res.spike_times.shape[2]
    n_queues, L1 = res.queue_times.shape[1], res.queue_times.shape[2]
    block = _check_block(default_block_size(n_out) if block_size is None else block_size)
    has_rd = res.recurrent_delays is not None
    has_d = res.delays is not None
    grad_times = xp.ascontiguousarray(grad_times)
    log_t = xp.ascontiguousarray(log.times, dtype=xp.float64)
    log_k = xp.ascontiguousarray(log.neurons, dtype=xp.int64)
    log_I = xp.ascontiguousarray(log.currents, dtype=xp.float64)
    log_n = xp.ascontiguousarray(log.count, dtype=xp.int64)
    M = log_t.shape[1]
    N = batch * n_out
    C = max(int(result.counts.max()) if N else 0, 1)  # host sync: the most spikes of a neuron
    per_spike = 32 if time_constant_grads else 24  # spike_t, lamV, lamI (and spike_grads)
    det = _determinism.applies(DETERMINISTIC)
    table_bytes = 8 * batch * (n_in * max_in + 1) if det else 0  # the deterministic kernels' input-time table
    parts = _memory.lif_backward_estimate(batch, n_in, max_in, n_out, input_times_grad, has_d, "",
                                          per_spike * N * C + table_bytes)
    _memory.check(_memory.describe("lif_backward", batch, n_out, max_spikes, has_d) + " (recurrent)", parts, xp,
                  f"reduce the batch (the backward keeps every spike's adjoint: {per_spike} bytes per neuron per "
                  "spike of the busiest neuron)")
    n_spk = xp.zeros((batch, n_out), dtype=xp.int64)
    remaining = xp.zeros((batch, n_out), dtype=xp.int64)
    spike_t = xp.full((batch, n_out, C), np.inf, dtype=xp.float64)
    lamV = xp.zeros((batch, n_out, C), dtype=xp.float64)
    lamI = xp.zeros((batch, n_out, C), dtype=xp.float64)
    grazing = xp.zeros((max(N, 1), 2), dtype=xp.float64)
    grazing[:, 1] = np.inf
    # Each spike's derivative through everything outside its neuron, for the time constants' gradients.
    spike_grads = xp.zeros((batch, n_out, C) if time_constant_grads else 1, dtype=xp.float64)
    R = res.recurrent_weights
    Dr = R if res.recurrent_delays is None else res.recurrent_delays
    launch(MODULE, "spikescan_recurrent_backward_spikes", grad_times.dtype, batch, block,
           [log_t, log_k, log_I, log_n, np.int64(M), res.tau_mem, res.tau_syn, res.threshold, R, Dr,
            np.int32(has_rd), np.int64(batch), np.int64(n_out), np.int64(C), np.int64(max_spikes), grad_times,
            n_spk, spike_t, lamV, lamI, remaining, grazing, np.int32(time_constant_grads), spike_grads],
           shared_mem=block * 8)
    grad_w = xp.zeros((n_in, n_out), dtype=xp.float64)
    grad_in = xp.zeros((batch, n_in, max_in) if input_times_grad else 1, dtype=xp.float64)
    grad_d = xp.zeros((n_in, n_out), dtype=xp.float64) if has_d else xp.zeros(1, xp.float64)
    if det and n_in * max_in > 0:
        times, index = _queue.shared_queue_of(res)
        table = _queue.input_table(xp, times, index, n_in, max_in)
        common = [table, np.int64(table.shape[1]), res.weights, res.delays if has_d else grad_d, np.int32(has_d),
                  res.tau_mem, res.tau_syn, np.int64(batch), np.int64(n_in), np.int64(n_out), np.int64(max_in),
                  np.int64(C), n_spk, spike_t, lamV, lamI]
        launch(MODULE, "spikescan_recurrent_backward_synapses", grad_times.dtype,
               _blocks(n_in * n_out, THREADS_PER_BLOCK), THREADS_PER_BLOCK, common + [grad_w, grad_d])
        if input_times_grad:
            launch(MODULE, "spikescan_recurrent_backward_input_times", grad_times.dtype,
                   _blocks(batch * n_in * max_in, THREADS_PER_BLOCK), THREADS_PER_BLOCK, common + [grad_in])
        del table
    elif not det:
        launch(MODULE, "spikescan_recurrent_backward_inputs", grad_times.dtype, _blocks(N, THREADS_PER_BLOCK),
               THREADS_PER_BLOCK,
               [res.queue_times, res.queue_index, res.queue_end, res.weights, res.tau_mem, res.tau_syn,
                np.int64(batch), np.int64(n_in), np.int64(n_out), np.int64(n_queues), np.int64(L1),
                np.int64(max(max_in, 1)), np.int64(C), n_spk, spike_t, lamV, lamI, grad_w, np.int32(input_times_grad),
                grad_in, np.int32(has_d), grad_d])
    grad_r = xp.zeros((n_out, n_out), dtype=xp.float64)
    grad_rd = xp.zeros((n_out, n_out), dtype=xp.float64) if has_rd else xp.zeros(1, xp.float64)
    launch(MODULE, "spikescan_recurrent_backward_weights", grad_times.dtype, _blocks(n_out * n_out,
                                                                                     THREADS_PER_BLOCK),
           THREADS_PER_BLOCK,
           [res.tau_mem, res.tau_syn, R, Dr, np.int32(has_rd), np.int64(batch), np.int64(n_out), np.int64(C),
            n_spk, spike_t, lamV, lamI, grad_r, grad_rd])
    grad_th = -lamV.sum(axis=(0, 2))  # G / D at every spike (0 at grazing ones)
    del lamV, lamI, remaining
    n_grazing = int(grazing[:, 0].sum()) if N else 0  # host sync
    if n_grazing:
        first = int(xp.argmax(grazing[:, 0] > 0))
        warn_grazing(n_grazing, first, n_out, float(grazing[first, 1]), stacklevel=stacklevel)
    tau_mem = tau_syn = None
    if time_constant_grads:
        tau_mem, tau_syn = _time_constant_grads(xp, launch, res, spike_t, n_spk, spike_grads, det)
    return LIFGrads(
        weights=grad_w.astype(res.weights_dtype),
        input_times=grad_in.astype(res.input_dtype) if input_times_grad else None,
        delays=grad_d.astype(res.delays_dtype) if has_d else None,
        threshold=grad_th.sum(keepdims=True).reshape(()) if res.threshold_is_scalar else grad_th,
        recurrent_weights=grad_r.astype(res.recurrent_weights_dtype),
        recurrent_delays=grad_rd.astype(res.recurrent_delays_dtype) if has_rd else None, tau_mem=tau_mem,
        tau_syn=tau_syn)


def _time_constant_grads(xp, launch, res, spike_t, n_spk, spike_grads, deterministic=False):
    """``(tau_mem, tau_syn)`` gradients ``[n_out]``, as on NumPy (``_lif_numpy._recurrent_time_constant_grads``):
    the layer unrolled on the device with its own spikes as fixed inputs (``spikescan._recurrent
    .unrolled_residuals``), each spike's cotangent its derivative through everything outside its neuron
    (``spike_grads`` of the spike walk), through the feed-forward backward kernel with ``time_constant_grads``."""
    log = res.recurrent_log
    batch, n_in, _ = res.input_shape
    n_out = res.weights.shape[1]
    entries = res.queue_times.shape[2] + log.times.shape[1]
    # The unrolled queues: times, indices, sort order and a few temporaries per (sample, neuron, entry).
    _memory.check(_memory.describe("lif_backward", batch, n_out, spike_t.shape[2], res.delays is not None)
                  + " (recurrent, time constants)", {"unrolled queues": 48 * batch * n_out * entries}, xp,
                  "reduce the batch (the time constants' gradients unroll each neuron's input queue merged with "
                  "every recurrent arrival it received)")
    if n_in + n_out > _queue.INDEX_LIMIT:
        raise ValueError(f"time_constant_grads: n_in + n_out = {n_in + n_out} sources do not fit an int32 index")
    virtual = unrolled_residuals(xp, res, spike_t)
    virtual = virtual._replace(queue_index=xp.ascontiguousarray(virtual.queue_index, dtype=xp.int32),
                               queue_times=xp.ascontiguousarray(virtual.queue_times),
                               spike_event=xp.ascontiguousarray(virtual.spike_event),
                               weights=xp.ascontiguousarray(virtual.weights))
    unrolled = LIFResult(times=spike_t, counts=n_spk, residuals=virtual)
    with quiet_grazing():  # the recurrent backward has already warned
        # The thread-per-neuron kernel: the one whose per-neuron tau partials (deterministic mode) the tests and the
        # H200 run checked for recurrent layers; the warp kernel's "auto" is for feed-forward calls.
        grads = _lif.backward(xp, launch, unrolled, spike_grads, "sequential", input_times_grad=False,
                              time_constant_grads=True, tau_partials=deterministic)
    return grads.tau_mem, grads.tau_syn


def _blocks(threads, block):
    return (int(threads) + block - 1) // block
