"""CuPy launcher of the closed-form (EventProp-form) LIF backward kernel (``kernels/lif_backward_closed.cu``, PERF.md
section 3, P1c): the GPU twin of ``spikescan._closed_backward`` (``lif_backward(method="closed")`` on NumPy).

Opt-in: ``spikescan.lif_backward(method="closed")`` with CuPy inputs dispatches here once wired (see
``lif_backward_closed_cuda``). Same outputs as ``_lif.backward``: ``LIFGrads`` with the same dtypes, the threshold's
gradient summed to a scalar for a scalar threshold, and ``GrazingSpikeWarning`` with the NumPy path's fields (one
small reduction and host sync, the only one).

Not covered:

- time-constant gradients: the kernel does not compute them; ``lif_backward_closed_cuda(...,
  time_constant_grads=True)`` runs the thread-per-neuron kernel (``_lif.backward(method="sequential")``) instead;
  ``backward_closed`` itself returns ``tau_mem = tau_syn = None``.
- recurrent layers: ``NotImplementedError``, as on NumPy.

Queues: materialised, or kept as permutations of the shared queue (``residuals.queue_perm``, opt-in
``_queue.PERMUTATION``); the kernel reads both through common.cuh's ``spikescan_queue_t``, with the same queue
arguments as ``_lif.backward`` (``_lif._queue_args``).

Reductions are ``atomicAdd`` on double, as in the other backward kernels (the last bits vary from run to run);
deterministic per-lane partial sums (PERF.md P4) are a later step.

Memory: besides the float64 gradient accumulators, a work buffer of 16 bytes per recorded-spike slot
(``batch x n_out x max_spikes``) for the call's duration, in groups of neurons when the memory limit asks for it.
"""

from __future__ import annotations

import numpy as np

from .. import _memory
from . import _lif

KERNEL = "spikescan_lif_backward_closed"
MODULE = "lif_backward_closed"


def lif_backward_closed_cuda(result, grad_times, input_times_grad=True, time_constant_grads=False):
    """``lif_backward(method="closed")`` on the GPU: ``LIFGrads`` of CuPy arrays.

    ``time_constant_grads=True`` falls back to the thread-per-neuron kernel (the closed-form kernel has no
    time-constant terms yet); a recurrent layer raises ``NotImplementedError``, as the NumPy ``"closed"`` does.
    """
    import cupy

    if result.residuals.recurrent_log is not None:
        raise NotImplementedError("lif_backward(method='closed') covers feed-forward layers only; for a recurrent "
                                  "layer use method='sequential', 'scan' or 'auto'")
    if time_constant_grads:
        return _lif.backward(cupy, _lif._cupy_launch, result, grad_times, "sequential", input_times_grad, True)
    return backward_closed(cupy, _lif._cupy_launch, result, grad_times, input_times_grad)


def backward_closed(xp, launch, result, grad_times, input_times_grad=True):
    """Array-module-generic body of ``lif_backward_closed_cuda`` (``xp``/``launch`` as in ``_lif.backward``: CuPy
    and ``_lif._cupy_launch``, or NumPy and the host emulation's launch)."""
    res = result.residuals
    if res.recurrent_log is not None:
        raise NotImplementedError("lif_backward(method='closed') covers feed-forward layers only")
    batch, n_in, max_in = res.input_shape
    n_out = res.weights.shape[1]
    max_spikes = res.spike_times.shape[2]
    queue_args = _lif.residual_queue_args(xp, res)
    n_queues, L1 = queue_args[0].shape[1], queue_args[0].shape[2]
    grad_times = xp.ascontiguousarray(grad_times)
    counts = xp.ascontiguousarray(result.counts, dtype=xp.int64)
    grad_w, grad_in, grad_d, grad_th, grazing = _lif.gradient_buffers(xp, res, input_times_grad)
    n = batch * n_out
    if n > 0 and max_spikes > 0:
        slot_bytes = 2 * 8 * max_spikes
        group = _memory.fit_backward_group(batch, n_in, max_in, n_out, input_times_grad, res.delays is not None,
                                           n, n, slot_bytes, max_spikes, xp)
        # The host emulation fills the work buffer with NaN so that a slot read before it is written shows.
        work = (xp.full if xp.__name__ == "numpy" else _lif._empty)(group * max_spikes * 2, np.nan, dtype=xp.float64)
        for start in range(0, n, group):
            count = min(group, n - start)
            args = queue_args + [
                res.weights, res.tau_mem, res.tau_syn, res.threshold, np.int64(batch), np.int64(n_in),
                np.int64(n_out), np.int64(n_queues), np.int64(L1), np.int64(max_in), np.int64(max_spikes),
                np.int64(start), np.int64(count), res.spike_times, res.spike_event, counts, grad_times, work, grad_w,
                np.int32(input_times_grad), grad_in, np.int32(res.delays is not None), grad_d, grad_th, grazing]
            block = _lif.block_size(count * _lif.WARP)
            launch(MODULE, KERNEL, grad_times.dtype, _lif._blocks(count * _lif.WARP, block), block, args)
    # stacklevel 5: the caller of spikescan.lif_backward (through lif_backward_closed_cuda and this function).
    return _lif.finish_grads(xp, res, grazing if n > 0 else None, grad_w, grad_in if input_times_grad else None,
                             grad_d, grad_th, None, None, stacklevel=5)
