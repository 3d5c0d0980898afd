"""Public entry points of the non-spiking readout layer: validation and dispatch to the NumPy or CuPy implementation."""

from __future__ import annotations

import math

import numpy as np

from . import _memory
from . import _validate as v
from ._types import LIGrads, LIResult
from .lif import _engine

READOUTS = ("integral", "max", "final")


def li_forward(input_times, weights, *, tau_mem, tau_syn, readout="integral", t_max, tau_readout=None,
               engine="auto"):
    """Exact readout of a dense layer of non-spiking leaky integrators over the window ``[0, t_max]``.

    Dynamics (DESIGN.md sections 1 and 5), per output neuron ``i``, with no threshold and no reset::

        tau_mem dV/dt = -V + I,   tau_syn dI/dt = -I,   V = I = 0 at t = 0
        input spike (t, j) adds weights[j, i] to I

    so ``V_i(t) = sum_{(t_m, j), t_m < t} weights[j, i] c_i(t - t_m)`` with the PSP kernel
    ``c(s) = tau_syn / (tau_mem - tau_syn) (e^{-s/tau_mem} - e^{-s/tau_syn})`` (``(s/tau) e^{-s/tau}`` at equal
    time constants; evaluated without cancellation for any ratio). Values, per ``readout``:

    - ``"integral"``: ``int_0^{t_max} e^{-t/tau_readout} V(t) dt`` (plain integral when ``tau_readout`` is
      ``None``). Exactly ``sum weights[j, i] kappa_i(t_m)`` with the closed-form per-spike kernel
      ``kappa(t) = int_t^{t_max} e^{-s/tau_readout} c(s - t) ds``, a second divided difference of exponentials
      (stable when ``tau_readout``, ``tau_mem`` and ``tau_syn`` coincide in any way).
    - ``"final"``: ``V(t_max) = sum weights[j, i] c_i(t_max - t_m)``.
    - ``"max"``: ``max_{0 <= t <= t_max} V(t)``. ``t = 0`` is included, so the value is ``>= 0`` (``0`` when ``V``
      never rises above zero). Exact: per gap between consecutive inputs, the endpoints and the single interior
      peak of a sum of two exponentials.

    Boundary: the window is closed, ``[0, t_max]``; inputs at ``t >= t_max`` have no effect (an input exactly at
    ``t_max`` would only start its PSP there) and get zero gradient, as does ``+inf`` padding. All arithmetic is
    float64 whatever the input dtype.

    Args:
        input_times: ``[batch, n_in, max_in]`` float32/float64 spike times (same time unit as the time constants),
            ascending along the last axis, ``+inf`` padded. NaN and negative times are errors.
        weights: ``[n_in, n_out]`` float32/float64.
        tau_mem, tau_syn: positive time constants, scalars or ``[n_out]`` arrays; any ratio, equal included.
        readout: ``"integral"``, ``"max"`` or ``"final"``.
        t_max: positive end of the observation window.
        tau_readout: positive time constant of the weighting ``e^{-t/tau_readout}`` of ``"integral"``, or ``None``
            for none. Only valid with ``readout="integral"``.
        engine: how NumPy inputs compute the ``"max"`` walk: ``"numba"`` (compiled, one (sample, neuron) per loop
            iteration; needs ``pip install spikescan[cpu]``), ``"numpy"`` (vectorised over samples and neurons, a
            Python loop over events) or ``"auto"`` (Numba when installed; ``SPIKESCAN_ENGINE`` overrides, as for
            ``lif_forward``). The same values to rounding. ``"integral"`` and ``"final"`` are NumPy either way.
            CuPy inputs take ``"auto"`` (the CUDA kernels).

    Returns:
        ``LIResult(values [batch, n_out] in the dtype of input_times, residuals)``. Arrays are NumPy for NumPy
        inputs and CuPy for CuPy inputs (CuPy goes to ``spikescan.cuda._readout``).

    Cost (NumPy): ``"integral"``/``"final"`` evaluate one kernel per input spike and distinct ``(tau_mem,
    tau_syn)`` pair, then a ``[batch, n_in] @ [n_in, n_out]`` matmul. ``"max"`` sorts each sample's inputs by time
    (``build_queues``) and walks them: compiled, one (sample, neuron) per parallel loop iteration
    (``engine="numba"``), or in blocks of events, a short Python loop over the block for the states and the gap
    maxima for the whole block at once (``engine="numpy"``). Residuals hold float64 copies of the inputs (see
    ``LIResiduals``).
    """
    xp, tau_mem, tau_syn = v.layer(input_times, weights, tau_mem, tau_syn)
    engine = _engine(engine, xp)
    v.choice("readout", readout, READOUTS)
    t_max = v.positive_scalar("t_max", t_max)
    if tau_readout is not None:
        tau_readout = v.positive_scalar("tau_readout", tau_readout)
        if readout != "integral":
            raise ValueError(f"tau_readout only applies to readout='integral'; got tau_readout={tau_readout!r} with "
                             f"readout={readout!r} (pass tau_readout=None)")
    if readout == "integral" and tau_mem.size:
        _check_integral_window(t_max, tau_mem, tau_syn, tau_readout)
    if xp is np:  # (the CUDA kernels' own working set is another; their launchers check it)
        batch, n_in, max_in = input_times.shape
        _memory.check_readout(f"li_forward(batch={batch}, n_in={n_in}, max_in={max_in}, n_out={weights.shape[1]})",
                              batch, n_in, max_in, weights.shape[1], np, walk=readout == "max")
        from . import _readout_numpy as impl

        return impl.li_forward(input_times, weights, tau_mem, tau_syn, readout, t_max, tau_readout, engine)
    from .cuda import _readout as cuda_impl

    return cuda_impl.li_forward_cuda(input_times, weights, tau_mem, tau_syn, readout, t_max, tau_readout)


# The "integral" kernels and their time-constant derivatives multiply up to three factors (t_max - t) / tau and divide
# by as many: beyond this many time constants their terms leave float64's normal range (NaN or inf, or silently
# imprecise subnormals), whatever the time unit.
MAX_INTEGRAL_WINDOW = 1e100


def _check_integral_window(t_max, tau_mem, tau_syn, tau_readout):
    """``t_max`` at most ``MAX_INTEGRAL_WINDOW`` times the shortest time constant (one host sync on CuPy)."""
    shortest = min(float(v.array_module(tau_mem).minimum(tau_mem, tau_syn).min()),
                   math.inf if tau_readout is None else tau_readout)
    if t_max / shortest > MAX_INTEGRAL_WINDOW:
        raise ValueError(f"t_max must be at most {MAX_INTEGRAL_WINDOW:g} times the shortest time constant for "
                         f"readout='integral' (its closed forms leave float64's range beyond, in any time unit); got "
                         f"t_max={t_max!r} with a time constant of {shortest!r}")


def li_backward(result, grad_values, *, time_constant_grads=False, engine="auto"):
    """Exact reverse-mode gradients of ``li_forward``.

    ``"integral"`` and ``"final"`` are linear in the weights: ``d/d weights[j, i]`` is the summed kernel of input
    ``j`` and ``d/d t_m`` is ``weights[j, i]`` times the kernel's time derivative. ``"max"`` uses the envelope
    theorem at the arg max ``t*`` (an interior peak, ``t_max``, or ``0``): the gradient of ``V(t*)`` at fixed ``t*``.
    When the maximum sits on the kink made by an input arriving at ``t*`` (e.g. an inhibitory input cutting off a
    rise), ``t*`` moves with that input, which gets ``V'(t*^-)``; with several inputs at exactly that time it goes
    to the first in the time-sorted order. Which point is the arg max is a discrete choice and has no gradient.
    Inputs at ``t >= t_max`` and ``+inf`` padding get zero gradient.

    Time constants (``time_constant_grads=True``): ``d/d tau_mem[i]`` and ``d/d tau_syn[i]`` of ``sum g * values``
    at fixed input times and weights, from the closed forms (``tau_readout`` and ``t_max`` are constants and get
    none). ``"final"``: ``sum W dc/dtau (t_max - t_m)`` (``neurons.lif.decay_param_grads``). ``"integral"``: the
    derivative of the kernel ``kappa``, a divided difference of exponentials, in one of its nodes: a third divided
    difference (``neurons.lif.exp_divided_difference3``); stable for equal or close time constants. ``"max"``: the
    explicit ``sum W dc/dtau (t* - t_m)`` at fixed ``t*``: at an interior peak ``V'(t*) = 0`` cancels the motion of
    ``t*``, and at ``0``, ``t_max`` or a kink ``t*`` is a bound or an input time, which the time constants do not
    move.

    Args:
        result: the ``LIResult`` of ``li_forward``.
        grad_values: ``[batch, n_out]`` finite cotangent of ``result.values``.
        time_constant_grads: also compute the gradients of ``tau_mem`` and ``tau_syn`` (a few more closed-form
            evaluations per input spike and neuron, so off unless asked).
        engine: as ``li_forward``'s, for the ``"max"`` gradients (compiled: a fixed summation order, so the same
            bits for any number of threads).

    Returns:
        ``LIGrads(weights, input_times, tau_mem, tau_syn)``: ``weights`` and ``input_times`` with the shapes and
        dtypes of the forward arguments; ``tau_mem``, ``tau_syn`` float64 ``[n_out]`` (one per neuron, also for a
        scalar time constant, whose gradient is their sum) with ``time_constant_grads``, else ``None``.
    """
    if not isinstance(result, LIResult):
        raise TypeError(f"result must be the LIResult returned by li_forward, got {type(result).__name__}")
    xp = v.cotangent("grad_values", grad_values, result.values)
    if not isinstance(time_constant_grads, (bool, np.bool_)):
        raise TypeError(f"time_constant_grads must be True or False, got {time_constant_grads!r}")
    engine = _engine(engine, xp)
    if xp is np:
        from . import _readout_numpy as impl

        grads = impl.li_backward(result, grad_values, bool(time_constant_grads), engine)
    else:
        from .cuda import _readout as cuda_impl

        grads = cuda_impl.li_backward_cuda(result, grad_values, bool(time_constant_grads))
    v.finite_gradients("li_backward", grads, "grad_values", grad_values)
    return grads


__all__ = ["li_forward", "li_backward", "LIResult", "LIGrads"]
