"""Public entry points of the silent-neuron objective (DESIGN.md section 10): the exact peak of the sub-threshold
(no-reset) membrane voltage over all time, and its exact gradients."""

from __future__ import annotations

import numpy as np

from . import _memory
from . import _validate as v
from ._types import PeakGrads, PeakResiduals, PeakResult
from .lif import _engine


def _neuron_indices(neurons, n_out):
    """``[n_sel]`` int64 host indices of the neurons selected by the boolean mask ``neurons`` (all for ``None``)."""
    if neurons is None:
        return np.arange(n_out, dtype=np.int64)
    _check_mask(neurons, n_out)
    return np.flatnonzero(v.to_host(neurons)).astype(np.int64)


def _check_mask(neurons, n_out):
    """TypeError / ValueError naming ``neurons`` unless it is a boolean NumPy/CuPy mask ``[n_out]`` (no host read)."""
    if not hasattr(neurons, "shape") or not hasattr(neurons, "dtype"):
        raise TypeError(f"neurons must be None or a boolean NumPy/CuPy array of shape [n_out={n_out}], got "
                        f"{type(neurons).__name__}; from a list of indices: mask = np.zeros({n_out}, bool); "
                        f"mask[indices] = True")
    v.array_module(neurons)  # NumPy or CuPy, else a TypeError naming the type
    if isinstance(neurons, np.ma.MaskedArray):
        raise TypeError("neurons must be a plain boolean array, got a masked array, whose mask would be ignored: "
                        "pass np.ma.filled(neurons, False)")
    if neurons.dtype != np.bool_:
        hint = (f"; from indices: mask = np.zeros({n_out}, bool); mask[indices] = True" if neurons.dtype.kind in "iu"
                else "")
        raise TypeError(f"neurons must be a boolean mask (dtype bool), got dtype {neurons.dtype}{hint}")
    if tuple(neurons.shape) != (n_out,):
        raise ValueError(f"neurons must have shape [n_out={n_out}], got shape {tuple(neurons.shape)}")


# Queue entries (sample x neuron x arrival) of one chunk of neurons on the device path with delays: the queues of a
# chunk take about 40 bytes per entry while they are sorted (``spikescan._memory.lif_forward_estimate``), 2 in the
# permutation format.
_DEVICE_ENTRIES_PER_STEP = 1 << 25


def _device_forward(xp, launch, input_times, weights, tau_mem, tau_syn, neurons, delays=None):
    """``peak_voltage`` of CuPy inputs, on the device: the readout's ``"max"`` kernels (``cuda._readout.forward``)
    with ``t_max = inf`` (the same walk: with no end to the window the last gap is open and its interior peak is a
    candidate). ``xp``, ``launch``: CuPy and the CUDA launcher, or NumPy and the host emulation (the tests).

    - Without delays: the selected neurons walk the sample's shared queue (the kernel skips the others by the
      mask, and their zero cotangent makes their backward free). No host read, not even of the mask.
    - With delays: each selected neuron walks its own queue of arrivals (``t + D[j, i]``, sorted as the LIF layer's
      are). Only the selected neurons are computed, so the mask's count is read (one small host read); their
      queues are built and walked in chunks of neurons of about ``_DEVICE_ENTRIES_PER_STEP`` entries, on top of
      the shared queue of the inputs, sorted once. Nothing else goes to the host.
    """
    from .cuda import _queue as cuda_queue
    from .cuda import _readout as cuda_readout

    batch = input_times.shape[0]
    n_out = weights.shape[1]
    if neurons is not None:
        _check_mask(neurons, n_out)
    tm = xp.asarray(tau_mem, dtype=xp.float64)
    ts = xp.asarray(tau_syn, dtype=xp.float64)

    def residuals(device):
        return PeakResiduals(
            neurons=None, input_times=None, weights=None, delays=None, tau_mem=tau_mem, tau_syn=tau_syn,
            eval_time=None, kink_index=None, input_shape=tuple(input_times.shape), n_out=n_out,
            input_dtype=input_times.dtype, weights_dtype=weights.dtype,
            delays_dtype=None if delays is None else delays.dtype, device=device)

    if delays is None:
        result = cuda_readout.forward(xp, launch, input_times, weights, tm, ts, "max", np.inf, None,
                                      neuron_mask=neurons)
        mask = (xp.ones(n_out) if neurons is None else neurons).astype(result.values.dtype)  # for the backward
        return PeakResult(result.values, residuals((((None, result),), mask)))  # the kernel wrote 0 where left out
    t64 = xp.array(input_times, dtype=xp.float64, order="C")  # one copy, which every chunk's residuals share
    W = xp.asarray(weights, dtype=xp.float64)
    D = xp.asarray(delays, dtype=xp.float64)
    sel = xp.arange(n_out) if neurons is None else xp.flatnonzero(neurons)
    n_sel = int(sel.size)  # with a mask: its count, read on the host
    values = xp.zeros((batch, n_out), dtype=input_times.dtype)
    chunks = []
    if n_sel and batch:
        shared = cuda_queue.shared_queue(t64, xp)  # the inputs' sort, once for every chunk
        L1 = shared[0].shape[1]
        permutation = cuda_queue.permutation_default(xp, L1 - 1, True)  # as cuda_readout.forward decides
        per = min(n_sel, max(1, _DEVICE_ENTRIES_PER_STEP // (batch * L1)))
        bytes_per_entry = 2 if permutation else 40
        _memory.check(f"peak_voltage(batch={batch}, n_out={n_out}, with delays) on the device",
                      {"queues of a chunk of neurons": bytes_per_entry * batch * per * L1,
                       "residuals": 8 * (t64.size + batch * n_sel * 2)}, xp,
                      "reduce the batch (each neuron's queue holds every input spike of a sample), or select fewer "
                      "neurons")
        for i0 in range(0, n_sel, per):
            cols = sel[i0:i0 + per]
            # Without any input spike every neuron has the same empty queue (the NumPy walk's shortcut too).
            # (W[:, cols] and D[:, cols] are copies already.)
            result = cuda_readout.forward(xp, launch, t64, W[:, cols], tm[cols], ts[cols], "max", np.inf, None,
                                          delays=D[:, cols] if L1 > 1 else None, shared=shared, copy=False)
            values[:, cols] = result.values
            chunks.append((cols, result))
    return PeakResult(values, residuals((tuple(chunks), None)))


def _device_backward(xp, launch, residuals, grad_values):
    """``peak_voltage_backward`` of ``_device_forward``'s result: the readout's ``"max"`` backward kernels on the
    cotangent, with the left-out neurons zeroed (without delays) or on the computed neurons' columns (with)."""
    from .cuda import _readout as cuda_readout

    chunks, mask = residuals.device
    if mask is not None:  # without delays: one chunk, every neuron
        grads = cuda_readout.backward(xp, launch, chunks[0][1], grad_values * mask.astype(grad_values.dtype))
        return PeakGrads(grads.weights, grads.input_times, None)
    n_in, n_out = residuals.input_shape[1], residuals.n_out
    grad_W = xp.zeros((n_in, n_out), dtype=xp.float64)
    grad_D = xp.zeros((n_in, n_out), dtype=xp.float64)
    grad_t = xp.zeros(residuals.input_shape, dtype=xp.float64)
    for cols, result in chunks:  # float64 throughout (the forward ran on float64 copies), cast once at the end
        grads, grad_d = cuda_readout.backward_with_delays(xp, launch, result, grad_values[:, cols])
        grad_W[:, cols] = grads.weights
        if grad_d is not None:  # None: no input spike, so no delay gradient (zeros)
            grad_D[:, cols] = grad_d
        grad_t += grads.input_times
    return PeakGrads(grad_W.astype(residuals.weights_dtype), grad_t.astype(residuals.input_dtype),
                     grad_D.astype(residuals.delays_dtype))


def peak_voltage(input_times, weights, *, tau_mem, tau_syn, delays=None, neurons=None, engine="auto"):
    """Exact peak over all time of the voltage of a dense layer of neurons without threshold or reset.

    Dynamics (DESIGN.md sections 1 and 5) exactly those of ``li_forward``, per output neuron ``i``::

        tau_mem dV/dt = -V + I,   tau_syn dI/dt = -I,   V = I = 0 at t = 0
        input spike (t, j) arrives at t + delays[j, i] and adds weights[j, i] to I

    so ``V_i(t) = sum_{(t_m, j): a < t} weights[j, i] c_i(t - a)``, ``a = t_m + delays[j, i]``, with the PSP kernel
    ``c(s) = tau_syn / (tau_mem - tau_syn) (e^{-s/tau_mem} - e^{-s/tau_syn})`` (``(s/tau) e^{-s/tau}`` at equal
    time constants). The value is ``values[b, i] = sup_{t >= 0} V_bi(t)``; ``t = 0`` is included, so it is ``>= 0``
    (``0`` when ``V`` never rises above zero). For a LIF neuron that never fires this is the peak of its actual
    voltage, so ``threshold - values`` is an exact, differentiable distance to firing (the silent-neuron objective
    of DESIGN.md section 10).

    Exact: per gap between consecutive arrivals, the endpoint values and the single interior peak of a sum of two
    exponentials, including the open gap after the last arrival (``V -> 0`` at infinity never beats ``V(0) = 0``).
    All arithmetic is float64 whatever the input dtype; ``+inf`` padding has no effect.

    Args:
        input_times: ``[batch, n_in, max_in]`` float32/float64 spike times (same time unit as the time constants
            and delays), ascending along the last axis, ``+inf`` padded. NaN and negative times are errors.
        weights: ``[n_in, n_out]`` float32/float64, finite.
        tau_mem, tau_syn: positive time constants, scalars or ``[n_out]`` arrays; any ratio, equal included.
        delays: optional ``[n_in, n_out]`` float32/float64 finite non-negative per-synapse delays.
        neurons: optional boolean mask ``[n_out]`` (NumPy or CuPy): only these neurons are computed; the others
            get value ``0`` and zero gradient. With no neuron selected nothing is computed (not even a copy). CuPy
            inputs without delays read the mask on the device (the kernels skip the neurons left out; no host
            read); with delays the selected neurons are gathered first, so the mask's count is read on the host.
        engine: how the host computes the walk: ``"numba"`` (compiled), ``"numpy"`` or ``"auto"`` (Numba when
            installed; ``SPIKESCAN_ENGINE`` overrides), as ``li_forward``'s. CuPy inputs are computed on the device
            whatever it says.

    Returns:
        ``PeakResult(values [batch, n_out] in the dtype of input_times, residuals)``. NumPy for NumPy inputs, CuPy
        for CuPy inputs. CuPy inputs run on the device: the peak over all time is the ``"max"`` readout with
        ``t_max = inf`` (the last gap open), computed by the readout's CUDA kernels, which with delays walk each
        neuron's own queue of arrivals (built as the LIF layer's, in chunks of neurons); no spike or weight data
        goes to the host.

    Cost: a stable sort of each sample's input spikes (with delays: of each neuron's arrivals, built for a chunk of
    neurons at a time), then a walk over the arrivals in blocks of events: a short loop over the block for the
    states, the gap peaks for the whole block at once, ``O(batch * n_sel * (n_spikes + 1))`` closed forms for
    ``n_sel`` selected neurons. Temporaries, the per-neuron queues included, stay within about ``2**21`` elements
    per step (``_readout_numpy._POINTS_PER_STEP``; at least one neuron's queues and one event per step) besides the
    shared queue ``[batch, n_spikes + 1]``; residuals hold float64 host copies of the inputs (see
    ``PeakResiduals``). On the device the chunks of neurons hold about ``2**25`` queue entries
    (``_DEVICE_ENTRIES_PER_STEP``); a ``MemoryError`` names the sizes when one chunk does not fit.
    """
    xp, tau_mem, tau_syn = v.layer(input_times, weights, tau_mem, tau_syn, delays)
    n_out = weights.shape[1]
    engine = _engine(engine, np)  # validated for CuPy inputs too, which run on the device whatever it says
    if xp is not np:
        from .cuda import _readout as cuda_readout

        return _device_forward(xp, cuda_readout._cupy_launch, input_times, weights, tau_mem, tau_syn, neurons,
                               delays)
    sel = _neuron_indices(neurons, n_out)
    batch, n_in, max_in = input_times.shape
    _memory.check_readout(f"peak_voltage(batch={batch}, n_in={n_in}, max_in={max_in}, n_out={n_out})", batch, n_in,
                          max_in, n_out, np, delays is not None)
    values = np.zeros((batch, n_out))
    t = W = D = None
    eval_time = np.zeros((batch, sel.size))
    kink_index = np.full((batch, sel.size), -1, np.int64)
    if sel.size:
        from . import _readout_numpy as impl

        t = input_times.astype(np.float64)
        W = weights.astype(np.float64)
        D = None if delays is None else delays.astype(np.float64)
        values[:, sel], eval_time, kink_index = impl.peak_forward(t, W, D, tau_mem, tau_syn, sel, engine)
    residuals = PeakResiduals(
        neurons=sel, input_times=t, weights=W, delays=D, tau_mem=tau_mem, tau_syn=tau_syn, eval_time=eval_time,
        kink_index=kink_index, input_shape=tuple(input_times.shape), n_out=n_out, input_dtype=input_times.dtype,
        weights_dtype=weights.dtype, delays_dtype=None if delays is None else delays.dtype)
    return PeakResult(values.astype(input_times.dtype), residuals)


def peak_voltage_backward(result, grad_values, *, engine="auto"):
    """Exact reverse-mode gradients of ``peak_voltage`` (envelope theorem, as ``li_backward``'s ``"max"``).

    The gradient of ``V_i(t*)`` at the fixed arg max ``t*`` (an interior peak or ``0``). When the peak sits on the
    kink made by an arrival exactly at ``t*`` (e.g. an inhibitory input cutting off a rise), ``t*`` moves with that
    arrival, which gets ``V'(t*^-)``; with several arrivals at exactly that time it goes to the first in the queue
    order (time, then flat source index ``j * max_in + m``). The gradient with respect to an arrival time goes to
    the input time and to the delay of that synapse. Which point is the arg max is a discrete choice and has no
    gradient. ``+inf`` padding and neurons left out by the mask get zero gradient.

    Args:
        result: the ``PeakResult`` of ``peak_voltage``.
        grad_values: ``[batch, n_out]`` finite cotangent of ``result.values`` (same array kind, NumPy or CuPy).
        engine: as ``peak_voltage``'s (compiled: a fixed summation order, the same bits for any number of threads).

    Returns:
        ``PeakGrads(weights, input_times, delays)`` with the shapes and dtypes of the forward arguments (``delays``
        is ``None`` without delays); CuPy for CuPy inputs, computed on the device.

    Cost: ``O(n_spikes * n_sel)`` closed forms over the input spikes and selected neurons, in chunks of neurons.
    """
    if not isinstance(result, PeakResult):
        raise TypeError(f"result must be the PeakResult returned by peak_voltage, got {type(result).__name__}")
    xp = v.cotangent("grad_values", grad_values, result.values)
    engine = _engine(engine, np)
    res = result.residuals
    if res.device is not None:
        from .cuda import _readout as cuda_readout

        grads = _device_backward(xp, cuda_readout._cupy_launch, res, grad_values)
    else:
        grads = _host_backward(res, grad_values, engine)
    v.finite_gradients("peak_voltage_backward", grads, "grad_values", grad_values)
    return grads


def _host_backward(res, grad_values, engine):
    """``peak_voltage_backward`` of a NumPy result (``PeakGrads`` in the forward arguments' dtypes)."""
    n_in = res.input_shape[1]
    if res.neurons.size:
        from . import _readout_numpy as impl

        g = grad_values.astype(np.float64)[:, res.neurons]
        grad_W, grad_t, grad_D = impl.peak_backward(res.input_times, res.weights, res.delays, res.tau_mem,
                                                    res.tau_syn, res.neurons, res.eval_time, res.kink_index, g,
                                                    engine)
    else:
        grad_W = np.zeros((n_in, res.n_out))
        grad_t = np.zeros(res.input_shape)
        grad_D = None if res.delays_dtype is None else np.zeros((n_in, res.n_out))
    return PeakGrads(grad_W.astype(res.weights_dtype), grad_t.astype(res.input_dtype),
                     None if grad_D is None else grad_D.astype(res.delays_dtype))


__all__ = ["peak_voltage", "peak_voltage_backward", "PeakResult", "PeakGrads"]
