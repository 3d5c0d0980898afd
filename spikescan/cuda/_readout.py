"""CuPy launchers of the readout kernels (``kernels/readout.cu``): the contract of ``spikescan._readout_numpy``.

``li_forward_cuda`` / ``li_backward_cuda`` take validated CuPy arguments (``tau_mem``, ``tau_syn`` as float64
``[n_out]``). As in ``_lif``, the body is written against an array module and a launch function so the tests can
run it through the host emulation.

Work and memory: ``"final"``/``"integral"`` evaluate one closed-form kernel per (input spike, output neuron) with
one thread per (batch, input channel, neuron); ``"max"`` sorts each sample's inputs (``build_queues``,
``O(batch * n_in * max_in)``) and walks them with one thread per (batch, neuron). Residuals hold float64 copies of
the inputs, plus ``eval_time`` and ``kink_index`` (``[batch, n_out]``) for ``"max"``.

Reductions: by default ``atomicAdd`` on double (the readout values over input channels, the gradients over samples,
channels and neurons), so the last bits vary from run to run. With ``DETERMINISTIC`` (opt-in, like
``_closed.DETERMINISTIC``) the (batch, channel, neuron) threads write their partial sums to ``[batch, n_in, n_out]``
buffers that are summed along the reduced axes afterwards (fixed-order reductions), and one thread per input spike
sums its time gradient over the neurons in order (``spikescan_li_inputs``): values and gradients are then bitwise
reproducible. Extra memory: up to five float64 ``[batch, n_in, n_out]`` buffers during the backward (weights,
two time constants, and for ``"max"`` V(t*) and I(t*^-)), one during the forward.
"""

from __future__ import annotations

import numpy as np

from .. import _determinism, _memory
from .._types import LIGrads, LIResiduals, LIResult
from . import _kernels, _queue

THREADS_PER_BLOCK = 256
READOUT_CODES = {"final": 0, "integral": 1}
# Opt-in: fixed-order reductions instead of atomics (see the module docstring).
DETERMINISTIC = False


_cupy_launch = _kernels.launch_current


def li_forward_cuda(input_times, weights, tau_mem, tau_syn, readout, t_max, tau_readout):
    """Readout forward on the GPU; arguments as validated by ``spikescan.li_forward``."""
    import cupy

    return forward(cupy, _cupy_launch, input_times, weights, tau_mem, tau_syn, readout, t_max, tau_readout)


def li_backward_cuda(result, grad_values, time_constant_grads=False):
    """Readout backward on the GPU: ``LIGrads`` of CuPy arrays."""
    import cupy

    return backward(cupy, _cupy_launch, result, grad_values, time_constant_grads)


def _check_partials(what, batch, n_in, n_out, max_in, n_buffers, xp):
    """``MemoryError`` naming the sizes before the deterministic kernels' ``n_buffers`` float64 ``[batch, n_in,
    n_out]`` partial sums (and the input gradient) are allocated."""
    per = 8 * batch * n_in * n_out
    parts = {"partial sums": n_buffers * per, "input gradient": 8 * batch * n_in * max_in}
    _memory.check(f"{what}(batch={batch}, n_in={n_in}, n_out={n_out}) with spikescan.set_deterministic", parts, xp,
                  "reduce the batch, or turn the deterministic mode off (its partial sums take "
                  f"{n_buffers} x 8 bytes per (sample, input, output) triple)")


def _blocks(threads):
    return (int(threads) + THREADS_PER_BLOCK - 1) // THREADS_PER_BLOCK


def forward(xp, launch, input_times, weights, tau_mem, tau_syn, readout, t_max, tau_readout, delays=None,
            shared=None, neuron_mask=None, copy=True):
    """Array-module-generic body of ``li_forward_cuda``.

    ``delays`` (``"max"`` only; ``spikescan.peak_voltage``'s device path): float64 ``[n_in, n_out]`` per-synapse
    delays, every neuron walking its own queue of arrivals (``spikescan.cuda._queue.build_queues``, in the
    permutation format when ``_queue.PERMUTATION`` applies); the residuals keep them for the backward. ``shared``:
    the shared queue of ``input_times`` when the caller has built it (``spikescan._queue.shared_queue``).
    ``neuron_mask`` (``"max"`` only): boolean ``[n_out]``; the neurons left out are not walked (value 0, ``t* =
    0``, no kink), and their backward costs nothing when their cotangent is zero. ``copy``: the residuals keep
    float64 copies of ``input_times``, ``weights`` and ``delays`` (a caller may update its arrays in place before
    the backward); ``False`` keeps contiguous float64 inputs as they are, for a caller whose arrays are already its
    own (``peak_voltage``'s chunks share one copy of the inputs).
    """
    batch, n_in, max_in = input_times.shape
    n_out = weights.shape[1]
    dtype = input_times.dtype
    t_in = xp.ascontiguousarray(input_times)
    # Copies even of float64 arrays (unless the caller's are its own): the residuals must not change when the
    # caller updates its arrays in place.
    own = (lambda x: xp.array(x, dtype=xp.float64, order="C")) if copy else (
        lambda x: xp.ascontiguousarray(x, dtype=xp.float64))
    t64, W = own(input_times), own(weights)
    tm = xp.ascontiguousarray(tau_mem, dtype=xp.float64)
    ts = xp.ascontiguousarray(tau_syn, dtype=xp.float64)
    D = None if delays is None else own(delays)
    if (D is not None or neuron_mask is not None) and readout != "max":
        raise ValueError(f"delays and neuron_mask apply to the 'max' readout only, got readout={readout!r}")
    eval_time = kink_index = None
    if readout == "max":
        if shared is None:
            shared = _queue.shared_queue(t64, xp)
        L1 = shared[0].shape[1]
        permutation = _queue.permutation_default(xp, L1 - 1, D is not None)
        queues = _queue.build_queues(xp, launch, t64, D, length=L1 - 1, permutation=permutation, shared=shared)
        if isinstance(queues, _queue.PermutedQueues):
            qt = queues.times.reshape(batch, 1, L1)
            qi = queues.index.reshape(batch, 1, L1)
            perm, delays_t, permuted = queues.perm, queues.delays_t, 1
        else:
            qt, qi, _ = queues
            perm, delays_t, permuted = xp.empty(1, dtype=xp.uint16), xp.empty(1, dtype=xp.float64), 0
        qt = xp.ascontiguousarray(qt)
        qi = xp.ascontiguousarray(qi, dtype=xp.int32)
        values = xp.empty((batch, n_out), dtype=dtype)
        eval_time = xp.empty((batch, n_out), dtype=xp.float64)
        kink_index = xp.empty((batch, n_out), dtype=xp.int64)
        launch("readout", "spikescan_li_max_forward", dtype, _blocks(batch * n_out), THREADS_PER_BLOCK,
               [qt, qi, np.int64(qt.shape[1]), perm, delays_t, np.int32(permuted), W, tm, ts, np.float64(t_max),
                np.int64(batch), np.int64(n_in), np.int64(n_out), np.int64(L1), np.int64(max_in), values, eval_time,
                kink_index, xp.ones(1, dtype=bool) if neuron_mask is None else xp.ascontiguousarray(neuron_mask),
                np.int32(neuron_mask is not None)])
    else:
        det = _determinism.applies(DETERMINISTIC)
        if det:
            _check_partials("li_forward", batch, n_in, n_out, 0, 1, xp)
        acc = xp.zeros((batch, n_in, n_out) if det else (batch, n_out), dtype=xp.float64)
        gamma = 0.0 if tau_readout is None else 1.0 / tau_readout
        launch("readout", "spikescan_li_linear_forward", dtype, _blocks(batch * n_in * n_out), THREADS_PER_BLOCK,
               [t_in, W, tm, ts, np.int32(READOUT_CODES[readout]), np.float64(t_max), np.float64(gamma),
                np.int64(batch), np.int64(n_in), np.int64(max_in), np.int64(n_out), acc, np.int32(det)])
        values = (acc.sum(axis=1) if det else acc).astype(dtype)
    residuals = LIResiduals(
        input_times=t64, weights=W, tau_mem=tm, tau_syn=ts, tau_readout=tau_readout, t_max=t_max, readout=readout,
        eval_time=eval_time, kink_index=kink_index, input_dtype=dtype, weights_dtype=weights.dtype, delays=D)
    return LIResult(values, residuals)


def backward(xp, launch, result, grad_values, time_constant_grads=False):
    """Array-module-generic body of ``li_backward_cuda``.

    With ``time_constant_grads`` the same kernels also sum ``g W d kappa / d tau`` per neuron (atomics into the
    ``[n_out]`` gradients of ``tau_mem`` and ``tau_syn``, from every (sample, input) thread of that neuron).
    """
    return backward_with_delays(xp, launch, result, grad_values, time_constant_grads)[0]


def backward_with_delays(xp, launch, result, grad_values, time_constant_grads=False):
    """``backward``, and the float64 ``[n_in, n_out]`` gradient of the delays when the forward had them (``None``
    otherwise): ``(LIGrads, grad_delays)``."""
    res = result.residuals
    t, W, D = res.input_times, res.weights, res.delays
    batch, n_in, max_in = t.shape
    n_out = W.shape[1]
    g = xp.ascontiguousarray(grad_values)
    det = _determinism.applies(DETERMINISTIC)
    has_d = np.int32(D is not None)
    if det:
        _check_partials("li_backward", batch, n_in, n_out, max_in,
                        1 + 2 * bool(time_constant_grads) + (2 + bool(has_d)) * (res.readout == "max"), xp)
    # Deterministic: the (batch, channel, neuron) threads' partial sums, reduced below in a fixed order.
    per_neuron = (batch, n_in, n_out) if det else (n_out,)
    grad_w = xp.zeros((batch, n_in, n_out) if det else (n_in, n_out), dtype=xp.float64)
    grad_t = xp.zeros((batch, n_in, max_in), dtype=xp.float64)
    # Always allocated (a kernel argument cannot be null through CuPy); written only with delays.
    grad_d = xp.zeros(((batch, n_in, n_out) if det else (n_in, n_out)) if has_d else 1, dtype=xp.float64)
    d_arg = D if has_d else xp.zeros(1, dtype=xp.float64)
    n_threads = batch * n_in * n_out
    # Always allocated (a kernel argument cannot be null through CuPy); written only with tau_grads set.
    tau_grads = np.int32(bool(time_constant_grads))
    grad_tm = xp.zeros(per_neuron if tau_grads else 1, dtype=xp.float64)
    grad_ts = xp.zeros(per_neuron if tau_grads else 1, dtype=xp.float64)
    gamma = 0.0 if res.tau_readout is None else 1.0 / res.tau_readout
    code = np.int32(READOUT_CODES.get(res.readout, -1))
    if res.readout == "max":
        v_star = xp.zeros((batch, n_in, n_out) if det else (batch, n_out), dtype=xp.float64)
        i_before = xp.zeros((batch, n_in, n_out) if det else (batch, n_out), dtype=xp.float64)
        launch("readout", "spikescan_li_max_backward", g.dtype, _blocks(n_threads), THREADS_PER_BLOCK,
               [t, W, res.tau_mem, res.tau_syn, np.int64(batch), np.int64(n_in), np.int64(max_in), np.int64(n_out),
                res.eval_time, g, grad_w, grad_t, v_star, i_before, tau_grads, grad_tm, grad_ts, np.int32(det),
                d_arg, has_d, grad_d])
        if det:
            v_star, i_before = v_star.sum(axis=1), i_before.sum(axis=1)
            launch("readout", "spikescan_li_inputs", g.dtype, _blocks(batch * n_in * max_in), THREADS_PER_BLOCK,
                   [t, W, res.tau_mem, res.tau_syn, code, np.float64(res.t_max), np.float64(gamma), np.int64(batch),
                    np.int64(n_in), np.int64(max_in), np.int64(n_out), g, np.int32(1), res.eval_time,
                    res.kink_index, v_star, i_before, grad_t, d_arg, has_d])
        if not det or has_d:  # deterministic: the kinks' delay terms into their (sample, source, neuron) sums
            launch("readout", "spikescan_li_max_kink", g.dtype, _blocks(batch * n_out), THREADS_PER_BLOCK,
                   [res.tau_mem, np.int64(batch), np.int64(n_in), np.int64(max_in), np.int64(n_out), res.kink_index,
                    g, v_star, i_before, grad_t, np.int32(not det), has_d, grad_d, np.int32(det)])
    else:
        launch("readout", "spikescan_li_linear_backward", g.dtype, _blocks(n_threads), THREADS_PER_BLOCK,
               [t, W, res.tau_mem, res.tau_syn, code, np.float64(res.t_max),
                np.float64(gamma), np.int64(batch), np.int64(n_in), np.int64(max_in), np.int64(n_out), g, grad_w,
                grad_t, tau_grads, grad_tm, grad_ts, np.int32(det)])
        if det:
            unused = xp.zeros(1, dtype=xp.float64)
            launch("readout", "spikescan_li_inputs", g.dtype, _blocks(batch * n_in * max_in), THREADS_PER_BLOCK,
                   [t, W, res.tau_mem, res.tau_syn, code, np.float64(res.t_max), np.float64(gamma), np.int64(batch),
                    np.int64(n_in), np.int64(max_in), np.int64(n_out), g, np.int32(0), unused,
                    xp.zeros(1, dtype=xp.int64), unused, unused, grad_t, unused, np.int32(0)])
    if det:
        grad_w = grad_w.sum(axis=0)
        if has_d:
            grad_d = grad_d.sum(axis=0)
        if tau_grads:
            grad_tm, grad_ts = grad_tm.sum(axis=(0, 1)), grad_ts.sum(axis=(0, 1))
    if not time_constant_grads:
        grad_tm = grad_ts = None
    grads = LIGrads(grad_w.astype(res.weights_dtype), grad_t.astype(res.input_dtype), tau_mem=grad_tm,
                    tau_syn=grad_ts)
    return grads, (grad_d if has_d else None)
