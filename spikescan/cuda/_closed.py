"""CuPy launcher of the closed-form (EventProp-form) LIF backward kernel (``kernels/lif_backward_closed.cu``, PERF.md
section 3, P1c): the GPU twin of ``spikescan._closed_backward`` (``lif_backward(method="closed")`` on NumPy).

``spikescan.lif_backward(method="closed")`` with CuPy inputs dispatches here, and so does ``method="auto"`` for a
feed-forward layer (``AUTO``). Same outputs as ``_lif.backward``: ``LIFGrads`` with the same dtypes, the threshold's
gradient summed to a scalar for a scalar threshold, and ``GrazingSpikeWarning`` with the NumPy path's fields (one
small reduction and host sync, the only one).

With ``time_constant_grads=True`` the kernels add the time constants' gradients (the NumPy closed form's terms:
each entry's response and each span's opening state through the derivative of the span's map). Recurrent layers:
``NotImplementedError``, as on NumPy.

Queues: materialised, or kept as permutations of the shared queue (``residuals.queue_perm``, the
default ``_queue.PERMUTATION``); the kernel reads both through common.cuh's ``spikescan_queue_t``, with the same queue
arguments as ``_lif.backward`` (``_lif._queue_args``).

Reductions: by default ``atomicAdd`` on double, as in the other backward kernels (the last bits vary from run to
run). With ``DETERMINISTIC`` (opt-in; PERF.md P4) the kernel stops after the spikes' adjoints and leaves per-spike
records, and two source-major kernels sum every entry's contributions in registers: one thread per synapse ``(j,
i)`` for the weight, delay and threshold gradients (samples and spikes in order), one per input spike for its time
gradient (neurons in order). No atomics: the gradients are bitwise reproducible, whatever the grouping. Each entry's
decay is then computed three times instead of twice (the currents, and once per kernel), and the input times are
kept as a dense float64 table ``[samples, n_in * max_in + 1]`` built from the shared queue (which the CUDA forward
keeps for every layer, ``LIFResiduals.shared_times``/``shared_index``).

Memory: besides the float64 gradient accumulators, a work buffer of 16 bytes per recorded-spike slot
(``batch x n_out x max_spikes``) for the call's duration, in groups of neurons when the memory limit asks for it;
with ``DETERMINISTIC``, 56 bytes per slot plus the input-time table, in groups of whole samples.
"""

from __future__ import annotations

import numpy as np

from .. import _determinism, _lif_numpy, _memory
from .._validate import to_host
from . import _lif, _queue

KERNEL = "spikescan_lif_backward_closed"
MODULE = "lif_backward_closed"
SYNAPSES_KERNEL = "spikescan_lif_backward_closed_synapses"
# With time_constant_grads: the same kernels compiled with the time-constant terms (a suffix; separate kernels keep
# the common case's register allocation).
TAU_SUFFIX = "_tau"
# With REBASED's tables: the same kernels compiled with the rebased factors (after TAU_SUFFIX).
REBASED_SUFFIX = "_rebased"
EXTRAS_SUFFIX = "_x"  # the kernels with the opt-in paths compiled in (entry table, shared accumulators)
INPUTS_KERNEL = "spikescan_lif_backward_closed_inputs"

# spikescan.lif_backward(method="auto") of a feed-forward layer with CuPy inputs runs this kernel (False: the
# thread- or warp-per-neuron kernels of spikescan.cuda._lif, by their BACKWARD_AUTO). On the H200 run of
# benchmarks/gpu_perf.py (benchmarks/results/gpu_perf_nvidia_h200.json) its gradients passed the gate against the
# NumPy reference, and it took the SHD network's backward from 692 ms (thread per neuron) and 161 ms (warp per
# neuron) to 45 ms at batch 256, and from 179 ms to 1.7 ms at batch 1.
AUTO = True
# Opt-in (PERF.md P4; spikescan.set_deterministic(True) turns it on for every CUDA path): deterministic reductions
# (see the module docstring). On the H200 run they cost 1.7x the atomics' backward at batch 256 (78 ms against 44 ms;
# 1.17x of forward + backward), so atomics stay the default.
DETERMINISTIC = False
# Opt-in (PERF.md P3b with P1c): the entries' exponentials as products of tabulated factors (see the kernel's
# header): per input slot e^{t/tau}, per synapse e^{D/tau}, per span e^{-T_m/tau}. Applies with one pair of time
# constants while every (t + D) / min(tau) stays below REBASED_MAX_EXPONENT (so that e^{(t + D)/tau} is finite);
# deciding it reads the time constants and the largest input time and delay to the host. Gradients equal the
# exponential path's to rounding (checked in the host emulation and on the H200 run of benchmarks/gpu_perf.py, where
# it was no faster: 45 ms against 45 ms at batch 256, 9.6 against 7.4 ms at batch 32), so it stays off.
REBASED = False
REBASED_MAX_EXPONENT = 600.0
# Per-warp accumulators in shared memory for the weight and delay gradients (the atomic kernels' step 3): each
# neuron's warp sums its entries' terms per source in n_in doubles (two rows with delays) and adds each sum to the
# global gradient once, n_in atomics per neuron instead of one per queue entry (the SHD network at batch 256: ~5700
# entries per neuron against 700 sources). Blocks shrink (to one warp at the least) until their rows fit the
# device's shared memory; where one warp's rows do not fit, the per-entry atomics run. The same terms summed in
# another order: gradients equal to rounding (checked in the host emulation). Off until a GPU run of
# benchmarks/gpu_perf.py times it (variant m3_shared_accum).
SHARED_ACCUMULATORS = False
# Fields of a recorded spike in the deterministic records (kernels/lif_backward_closed.cu SPIKESCAN_CLOSED_FIELDS).
RECORD_FIELDS = 7


def resolve_auto(method):
    """``method`` of a feed-forward layer's backward on CuPy with ``"auto"`` resolved by ``AUTO``: ``"closed"``, or
    ``"auto"`` left for ``spikescan.cuda._lif.backward`` (its ``BACKWARD_AUTO``). The rule of
    ``spikescan.lif_backward`` and ``benchmarks/gpu_perf.py``'s variants."""
    return "closed" if method == "auto" and AUTO else method


def lif_backward_closed_cuda(result, grad_times, input_times_grad=True, time_constant_grads=False,
                             deterministic=None):
    """``lif_backward(method="closed")`` on the GPU: ``LIFGrads`` of CuPy arrays.

    A recurrent layer raises ``NotImplementedError``, as the NumPy ``"closed"`` does.
    """
    import cupy

    if result.residuals.recurrent_log is not None:
        raise NotImplementedError("lif_backward(method='closed') covers feed-forward layers only; for a recurrent "
                                  "layer use method='sequential', 'scan' or 'auto'")
    return backward_closed(cupy, _lif._cupy_launch, result, grad_times, input_times_grad, deterministic,
                           time_constant_grads)


def backward_closed(xp, launch, result, grad_times, input_times_grad=True, deterministic=None,
                    time_constant_grads=False):
    """Array-module-generic body of ``lif_backward_closed_cuda`` (``xp``/``launch`` as in ``_lif.backward``: CuPy
    and ``_lif._cupy_launch``, or NumPy and the host emulation's launch); ``deterministic``: default
    ``DETERMINISTIC`` or ``spikescan.deterministic()``."""
    res = result.residuals
    if res.recurrent_log is not None:
        raise NotImplementedError("lif_backward(method='closed') covers feed-forward layers only")
    if _determinism.applies(DETERMINISTIC) if deterministic is None else deterministic:
        return _backward_deterministic(xp, launch, result, grad_times, input_times_grad, time_constant_grads)
    batch, n_in, max_in = res.input_shape
    n_out = res.weights.shape[1]
    max_spikes = res.spike_times.shape[2]
    queue_args = _lif.residual_queue_args(xp, res)
    grad_times = xp.ascontiguousarray(grad_times)
    counts = xp.ascontiguousarray(result.counts, dtype=xp.int64)
    grad_w, grad_in, grad_d, grad_th, grazing = _lif.gradient_buffers(xp, res, input_times_grad)
    grad_tm, grad_ts = xp.zeros(n_out, dtype=xp.float64), xp.zeros(n_out, dtype=xp.float64)
    n = batch * n_out
    if n > 0 and max_spikes > 0:
        slot_bytes = 2 * 8 * max_spikes
        group = _memory.fit_backward_group(batch, n_in, max_in, n_out, input_times_grad, res.delays is not None,
                                           n, n, slot_bytes, max_spikes, xp)
        # The host emulation fills the work buffer with NaN so that a slot read before it is written shows.
        work = (xp.full if xp.__name__ == "numpy" else _lif._empty)(group * max_spikes * 2, np.nan, dtype=xp.float64)
        rebased = rebased_tables(xp, res) if REBASED else None
        table = entry_table(xp, res, queue_args) if rebased is None else None
        row_bytes = 8 * n_in * (2 if res.delays is not None else 1)  # a warp's shared accumulators
        for start in range(0, n, group):
            count = min(group, n - start)
            block = _lif.block_size(count * _lif.WARP)
            shared = 0
            if SHARED_ACCUMULATORS and rebased is None:
                block = accumulator_block(block, row_bytes, _queue._max_shared(xp))
                shared = 0 if block is None else block // _lif.WARP * row_bytes
                block = block or _lif.block_size(count * _lif.WARP)
            args = _neuron_args(res, queue_args, start, count, counts, grad_times, work, input_times_grad,
                                [grad_w, grad_in, grad_d, grad_th, grazing], 0, grad_th, grad_tm, grad_ts, rebased,
                                table, accum_shared=shared > 0)
            name = KERNEL + (TAU_SUFFIX if time_constant_grads else "")
            name += REBASED_SUFFIX if rebased is not None else ""
            name += EXTRAS_SUFFIX if table is not None or shared > 0 else ""
            launch(MODULE, name, grad_times.dtype, _lif._blocks(count * _lif.WARP, block), block, args,
                   shared_mem=shared)
    tau = time_constant_grads
    # stacklevel 5: the caller of spikescan.lif_backward (through lif_backward_closed_cuda and this function).
    return _lif.finish_grads(xp, res, grazing if n > 0 else None, grad_w, grad_in if input_times_grad else None,
                             grad_d, grad_th, grad_tm if tau else None, grad_ts if tau else None, stacklevel=5)


def rebased_tables(xp, res):
    """``(E [batch, n_in * max_in, 2], F [n_out, n_in, 2])`` of the rebased closed form (``REBASED``; see the
    kernel's header), or ``None`` where it does not apply: several time constants, or an input time plus delay
    beyond ``REBASED_MAX_EXPONENT * min(tau)``. (The forward's limits on ``r`` and the delays do not apply: the cross
    term is ``decay``'s, and only the factors' rounding, far inside the gradients' tolerance, depends on the
    exponents.) Host reads: the ``[n_out]`` time constants, the largest input time and the largest delay."""
    pair = _lif_numpy.one_pair(to_host(res.tau_mem), to_host(res.tau_syn))
    if pair is None:
        return None
    tau_mem, tau_syn = pair
    D = res.delays
    max_delay = float(D.max()) if D is not None and D.size else 0.0
    batch, n_in, max_in = res.input_shape
    times, index = _queue.shared_queue_of(res)
    table = _queue.input_table(xp, times, index, n_in, max_in)[:, :n_in * max_in]
    t = xp.where(xp.isfinite(table), table, 0.0)  # padding: factor 1, never read
    t_max = float(t.max()) if t.size else 0.0
    if (t_max + max_delay) / min(tau_mem, tau_syn) > REBASED_MAX_EXPONENT:
        return None
    E = xp.ascontiguousarray(xp.stack([xp.exp(t / tau_mem), xp.exp(t / tau_syn)], axis=-1))
    if D is None:
        F = xp.empty(1, dtype=xp.float64)
    else:
        Dt = xp.ascontiguousarray(D.T)
        F = xp.ascontiguousarray(xp.stack([xp.exp(Dt / tau_mem), xp.exp(Dt / tau_syn)], axis=-1))
    return E, F


def accumulator_block(block, row_bytes, max_shared):
    """Threads per block for ``SHARED_ACCUMULATORS``: ``block`` halved (to one warp at the least) until its warps'
    accumulator rows (``row_bytes`` each) fit ``max_shared`` bytes; ``None`` where one warp's do not fit."""
    while block > _lif.WARP and block // _lif.WARP * row_bytes > max_shared:
        block //= 2
    return block if block // _lif.WARP * row_bytes <= max_shared and row_bytes > 0 else None


def entry_table(xp, res, queue_args):
    """The kernel's entry-table arguments (``spikescan.cuda._lif.ENTRY_TABLE``, ``_lif.entry_table_args``) for a
    result whose queue is a sample's shared one (no delays, or permutation queues), else ``None``: the source table
    of the shared queue and the (weight, delay) pairs, built from the residuals (one elementwise pass over the shared
    queue and one over the synapses)."""
    if not _lif.ENTRY_TABLE or queue_args[0].shape[1] != 1:
        return None
    src = _queue.source_table(xp, queue_args[1][:, 0, :], res.input_shape[2])
    return _lif.entry_table_args(xp, src, res.weights, res.delays, True)


def _neuron_args(res, queue_args, start, count, counts, grad_times, work, input_times_grad, grads, records,
                 thr_part, grad_tm, grad_ts, rebased=None, table=None, accum_shared=False):
    """The arguments of ``spikescan_lif_backward_closed[_tau]`` for neurons ``[start, start + count)``; ``grads``:
    ``[grad_w, grad_in, grad_d, grad_th, grazing]`` (``_lif.gradient_buffers``); ``records``: 0 (atomic sums) or 1
    (per-spike records in ``work``, the per-neuron terms in ``thr_part``); ``rebased``: ``rebased_tables``' tables
    or ``None``; ``table``: ``entry_table``'s arguments or ``None`` (not with ``rebased``); ``accum_shared``: the
    weight and delay gradients through per-warp shared-memory rows (``SHARED_ACCUMULATORS``; the launch then gives
    each warp its rows of dynamic shared memory)."""
    if table is None:  # placeholders, unread
        table = [res.spike_event, grad_tm, np.int32(0)]
    batch, n_in, max_in = res.input_shape
    grad_w, grad_in, grad_d, grad_th, grazing = grads
    n_queues, L1 = queue_args[0].shape[1], queue_args[0].shape[2]
    return queue_args + [
        res.weights, res.tau_mem, res.tau_syn, res.threshold, np.int64(batch), np.int64(n_in),
        np.int64(res.weights.shape[1]), np.int64(n_queues), np.int64(L1), np.int64(max_in),
        np.int64(res.spike_times.shape[2]), np.int64(start), np.int64(count), res.spike_times, res.spike_event, counts,
        grad_times, work, grad_w, np.int32(input_times_grad), grad_in, np.int32(res.delays is not None), grad_d,
        grad_th, grazing, np.int32(records), thr_part, grad_tm, grad_ts] + (
        list(rebased) if rebased is not None else [grad_tm, grad_tm]) + table + [  # placeholders when not rebased
        np.int32(bool(accum_shared))]


def _backward_deterministic(xp, launch, result, grad_times, input_times_grad, time_constant_grads):
    """``backward_closed`` with ``DETERMINISTIC`` (see the module docstring and lif_backward_closed.cu)."""
    res = result.residuals
    batch, n_in, max_in = res.input_shape
    n_out = res.weights.shape[1]
    S = res.spike_times.shape[2]
    has_delays = res.delays is not None
    queue_args = _lif.residual_queue_args(xp, res)
    shared_times, shared_index = _queue.shared_queue_of(res)
    grad_times = xp.ascontiguousarray(grad_times)
    counts = xp.ascontiguousarray(result.counts, dtype=xp.int64)
    grad_w, grad_in, grad_d, grad_th, grazing = _lif.gradient_buffers(xp, res, input_times_grad)
    tau = bool(time_constant_grads)
    # The spikes' time-constant terms (summed by the synapse kernel's threads j == 0) and each synapse's entries'
    # ([2, n_in, n_out], summed over sources once at the end, a fixed-order reduction).
    grad_tm, grad_ts = xp.zeros(n_out, dtype=xp.float64), xp.zeros(n_out, dtype=xp.float64)
    tau_part = xp.zeros((2, n_in, n_out) if tau else 1, dtype=xp.float64)
    if batch * n_out > 0 and S > 0 and n_in * max_in > 0:
        stride = n_in * max_in + 1
        per_sample = n_out * (RECORD_FIELDS * 8 * S + 8) + stride * 8
        group = _memory.fit_backward_group(batch, n_in, max_in, n_out, input_times_grad, has_delays, batch, batch,
                                           per_sample, S, xp)
        D = res.delays if has_delays else xp.empty(1, dtype=xp.float64)
        fill = xp.full if xp.__name__ == "numpy" else _lif._empty  # NaN on the host: unwritten records show
        for b0 in range(0, batch, group):
            n_b = min(group, batch - b0)
            n = n_b * n_out
            rec = fill(RECORD_FIELDS * S * n, np.nan, dtype=xp.float64)
            thr_part = fill(3 * n, np.nan, dtype=xp.float64)  # threshold, tau_mem, tau_syn terms per neuron
            args = _neuron_args(res, queue_args, b0 * n_out, n, counts, grad_times, rec, input_times_grad,
                                [grad_w, grad_in, grad_d, grad_th, grazing], 1, thr_part, grad_tm, grad_ts)
            block = _lif.block_size(n * _lif.WARP)
            launch(MODULE, KERNEL + (TAU_SUFFIX if tau else ""), grad_times.dtype, _lif._blocks(n * _lif.WARP, block),
                   block, args)
            table = _queue.input_table(xp, shared_times[b0:b0 + n_b], shared_index[b0:b0 + n_b], n_in, max_in)
            common = [table, np.int64(stride), res.weights, D, np.int32(has_delays), res.tau_mem, res.tau_syn,
                      np.int64(n_in), np.int64(n_out), np.int64(max_in), np.int64(S), counts, np.int64(b0),
                      np.int64(n_b), rec]
            threads = n_in * n_out
            block = _lif.block_size(threads)
            launch(MODULE, SYNAPSES_KERNEL + (TAU_SUFFIX if tau else ""), grad_times.dtype,
                   _lif._blocks(threads, block), block, common + [thr_part, grad_w, grad_d, grad_th, tau_part, grad_tm,
                                                                   grad_ts])
            if input_times_grad:
                threads = n_b * n_in * max_in
                block = _lif.block_size(threads)
                launch(MODULE, INPUTS_KERNEL, grad_times.dtype, _lif._blocks(threads, block), block,
                       common + [grad_in])
    # stacklevel 6: the caller of spikescan.lif_backward (through lif_backward_closed_cuda, backward_closed and this
    # function).
    if tau:
        grad_tm = grad_tm + tau_part[0].sum(axis=0)
        grad_ts = grad_ts + tau_part[1].sum(axis=0)
    return _lif.finish_grads(xp, res, grazing if batch * n_out > 0 else None, grad_w,
                             grad_in if input_times_grad else None, grad_d, grad_th, grad_tm if tau else None,
                             grad_ts if tau else None, stacklevel=6)
