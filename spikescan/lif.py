"""Public entry points of the spiking LIF layer: validation and dispatch to the NumPy or CuPy implementation."""

from __future__ import annotations

import numpy as np

from . import _determinism
from . import _validate as v
from ._lif_numpy import DEFAULT_MAX_TOTAL_SPIKES
from ._types import GrazingSpikeWarning, LIFGrads, LIFResult, RunawayFiringError

METHODS = ("auto", "sequential", "scan")
BACKWARD_METHODS = METHODS + ("closed",)
SOLVERS = ("newton", "bisection", "analytic")
ENGINES = ("auto", "numba", "numpy")
_MAX_RECORDED = v.MAX_RECORDED  # the most spikes a row of the float64 spike records can hold


def lif_forward(input_times, weights, *, tau_mem, tau_syn, threshold=1.0, max_spikes, delays=None, method="auto",
                chunk_size=128, solver="newton", max_total_spikes=DEFAULT_MAX_TOTAL_SPIKES, engine="auto",
                recurrent_weights=None, recurrent_delays=None):
    """Exact event-driven simulation of a dense layer of current-based LIF neurons with hard reset.

    Dynamics (DESIGN.md section 1), per output neuron ``i``::

        tau_mem dV/dt = -V + I,   tau_syn dI/dt = -I,   V = I = 0 at t = 0
        input spike (t, j) arrives at t + delays[j, i] and adds weights[j, i] to I
        V reaches threshold from below  ->  output spike, V <- 0 (I is kept)
        recurrent: a spike of neuron k at t adds recurrent_weights[k, i] to I_i at t + recurrent_delays[k, i]

    Spike times are roots of closed forms found to machine precision in float64, whatever the input dtype. Every
    input spike is processed (no budget of steps), including the open interval after the last input.

    Args:
        input_times: ``[batch, n_in, max_in]`` float32/float64 spike times (any time unit, the same as the time
            constants), ascending along the last axis, ``+inf`` padded. NaN and negative times are errors.
        weights: ``[n_in, n_out]`` float32/float64.
        tau_mem, tau_syn: positive time constants, scalars or ``[n_out]`` arrays; any ratio, equal included.
        threshold: positive firing threshold, a scalar or ``[n_out]`` (one per neuron).
        max_spikes: number of output spikes recorded per neuron. A neuron that fires more keeps exact dynamics;
            ``counts`` reports the true number and ``LIFResult.capped_spikes`` the total not recorded.
        delays: optional ``[n_in, n_out]`` non-negative per-synapse delays.
        method: ``"sequential"`` (event-by-event loop, the float64 reference), ``"scan"`` (chunked speculative
            associative scan, DESIGN.md section 4) or ``"auto"`` (the faster for the shape). All are exact. Recurrent
            layers: see ``recurrent_weights``.
        chunk_size: events per speculative chunk for ``"scan"``.
        solver: ``"newton"`` (with bisection fallback), ``"bisection"``, or ``"analytic"`` (only for
            ``tau_mem == 2 tau_syn``, to a relative ``1e-12`` of ``tau_mem``, so that ``2 * tau_syn`` computed in
            another unit still qualifies; the closed form then assumes the exact ratio, which moves a spike time
            by about that relative amount).
        max_total_spikes: most spikes one neuron may fire on one sample, counted over the whole input, recorded or
            not (so it bounds ``counts``, where ``max_spikes`` bounds the recording). Default 10,000: far above
            what trained layers fire, and reached within seconds even by the NumPy backend (about 0.3-1 ms per
            spike of a lone bursting neuron). A neuron that would fire spike number ``max_total_spikes + 1`` stops
            the forward with ``RunawayFiringError`` (a ``FloatingPointError``) naming the sample, the neuron, that
            spike's time, its input current ``I`` there and the limit: a current far above threshold fires about
            once per ``tau_mem * threshold / I``, so a weight of ``1e15`` would otherwise mean ``~1e15`` exact
            spikes and hours of work. Raise it for long inputs that legitimately fire more. In a recurrent layer
            whose neurons excite each other they all reach the limit together and every spike reaches every neuron,
            so the check costs about ``n_out**2 * max_total_spikes`` neuron updates per sample (Numba engine, 2-core
            EPYC: 0.08 s at 16 neurons, 3.5 s at 128; the first sample to stop stops the others, so a batch costs
            about one sample's time): lower the limit to stop such a layer sooner.
        recurrent_weights: optional ``[n_out, n_out]``: entry ``[k, i]`` is added to neuron ``i``'s current when
            neuron ``k`` spikes (README "Recurrent layers"): rows send, columns receive, as in ``weights`` (a
            ``W[post, pre]`` matrix goes in transposed). Every spike propagates, recorded or not. ``"sequential"``
            processes the earliest event of each sample at a time (the reference); ``"scan"`` (and ``"auto"``) lets
            every neuron look up to ``chunk_size`` arrivals ahead and applies, at once, everything before the sample's
            earliest possible next spike (plus the smallest recurrent delay), so whole windows go in one step. Both
            are NumPy methods (``engine="numpy"``); the compiled engine has one forward for recurrent layers, the
            event loop as scalar code per sample (parallel over samples), whatever ``method`` and ``chunk_size``
            say (the same results as ``"sequential"`` to rounding). CuPy inputs run the CUDA event loop (one block
            per sample, threads over its neurons): ``method="sequential"``, which ``"auto"`` selects there;
            ``method="scan"`` raises ``ValueError`` (the windows have no CUDA kernel), and ``chunk_size`` does not
            apply. A loop that excites itself without bound stops at ``max_total_spikes`` with
            ``RunawayFiringError``.
        recurrent_delays: optional non-negative ``[n_out, n_out]`` delays of the recurrent connections (0 without).
        engine: how NumPy inputs are computed: ``"numba"`` (compiled CPU kernels, parallel over neurons; needs
            ``pip install spikescan[cpu]``), ``"numpy"`` (the pure NumPy implementation, the reference) or
            ``"auto"`` (Numba when installed). Both run the same algorithms with the same results (identical
            counts, times to rounding). CuPy inputs always run the CUDA kernels (``"auto"`` only).

    Returns:
        ``LIFResult(times [batch, n_out, max_spikes], counts [batch, n_out], residuals)``. Arrays are NumPy for
        NumPy inputs and CuPy for CuPy inputs. A neuron's spikes beyond ``max_spikes`` are not in ``times`` and
        nothing warns here (the Keras layers do): ``counts > max_spikes`` marks them, ``capped_spikes`` sums them.

    Raises:
        RunawayFiringError: a neuron exceeds ``max_total_spikes`` (every method and backend checks it as it goes;
            the CUDA kernels stop that neuron and the launcher raises after the kernel).
        FloatingPointError: a neuron fires twice at the same float64 time (its inter-spike interval is below the
            resolution of ``t``), which no limit can represent.
        MemoryError: the call would need more memory than it may use (free GPU memory on CuPy; on NumPy the memory
            available, or ``spikescan.set_memory_limit`` / ``SPIKESCAN_MEMORY_LIMIT``), raised before allocating,
            with the estimate by part (sort, queues, spike records, working arrays) and what to reduce.
    """
    xp, tau_mem, tau_syn = v.layer(input_times, weights, tau_mem, tau_syn, delays)
    given = threshold
    threshold = v.time_constant("threshold", threshold, weights.shape[1], xp, bounded=False)  # positive finite, [n_out]
    threshold_is_scalar = np.ndim(given) == 0
    max_spikes = v.max_spikes(max_spikes)  # at most MAX_RECORDED: the records' shape must exist
    chunk_size = v.positive_int("chunk_size", chunk_size)
    # Counts are int64: any larger limit means the same as 2**63 - 1.
    max_total_spikes = min(v.positive_int("max_total_spikes", max_total_spikes), np.iinfo(np.int64).max)
    v.choice("method", method, METHODS)
    v.choice("solver", solver, SOLVERS)
    engine = _engine(engine, xp)
    v.check_recurrent(recurrent_weights, recurrent_delays, weights, xp, max_total_spikes)
    if solver == "analytic" and not bool(xp.all(xp.abs(tau_mem - 2.0 * tau_syn) <= 1e-12 * tau_mem)):
        bad = int(xp.argmax(xp.abs(tau_mem - 2.0 * tau_syn)))
        raise ValueError(
            "solver='analytic' needs tau_mem == 2 * tau_syn; got tau_mem="
            f"{float(tau_mem[bad])!r}, tau_syn={float(tau_syn[bad])!r} (neuron {bad})")
    if xp is np:
        from . import _lif_numpy as impl

        return impl.lif_forward(input_times, weights, delays, tau_mem, tau_syn, threshold, max_spikes, method,
                                chunk_size, solver, max_total_spikes, engine, threshold_is_scalar,
                                recurrent_weights, recurrent_delays)
    if recurrent_weights is not None:
        from .cuda import _recurrent as cuda_recurrent

        return cuda_recurrent.lif_forward_recurrent_cuda(input_times, weights, delays, tau_mem, tau_syn, threshold,
                                                         max_spikes, solver, max_total_spikes, threshold_is_scalar,
                                                         recurrent_weights, recurrent_delays, method)
    from .cuda import _lif as cuda_impl

    return cuda_impl.lif_forward_cuda(input_times, weights, delays, tau_mem, tau_syn, threshold, max_spikes, method,
                                      chunk_size, solver, max_total_spikes, threshold_is_scalar)


def _engine(engine, xp):
    v.choice("engine", engine, ENGINES)
    if xp is not np:
        if engine != "auto":
            raise ValueError(f"engine={engine!r} applies to NumPy inputs; CuPy inputs run the CUDA kernels, pass "
                             "engine='auto'")
        return "cuda"
    from ._lif_numpy import resolve_engine

    return resolve_engine(engine)


def lif_backward(result, grad_times, *, method="auto", input_times_grad=True, time_constant_grads=False,
                 engine="auto"):
    """Exact reverse-mode gradients of ``lif_forward`` (DESIGN.md section 6, no surrogates).

    Spike times are differentiated by the implicit function theorem, the closed forms by an adjoint recurrence run
    backwards over each neuron's events. Only spikes that were recorded carry gradient; ``+inf`` padding carries
    none (its entries of ``grad_times`` are ignored). A nearly grazing spike (``I`` close to ``threshold`` at the
    crossing) has a large ``1 / (dV/dt)`` and correspondingly large gradients: they are returned as they are (about
    ``3e16`` for a slope one ulp above zero). An exactly grazing spike (``V`` peaks at the threshold: the recomputed
    ``dV/dt`` at the spike is ``<= 0``) has no derivative of its time; instead of dividing by zero (NaN and inf),
    its implicit-function term is dropped (no gradient from its time through the state before it, nor to
    ``threshold``; it still moves with the start of its gap, so a shift of all inputs still moves it) and a
    ``GrazingSpikeWarning`` names the count, the first sample and neuron with one, and its spike time. Every
    backend and method does this.

    Args:
        result: the ``LIFResult`` of ``lif_forward``.
        grad_times: ``[batch, n_out, max_spikes]`` cotangent of ``result.times``.
        method: ``"sequential"`` (reverse event loop, the reference), ``"scan"`` (NumPy: states by associative
            scan, adjoint span by span between spikes; CuPy: one warp per neuron) or
            ``"auto"`` (feed-forward layers: ``"closed"``, 4.7-7.3x faster than the other two on a 2-core CPU
            (NumPy engine), and on an H200 (CuPy) 1.7-3.6x faster than ``"scan"`` and 15-107x faster than
            ``"sequential"``; recurrent layers: their own backward), or
            ``"closed"`` (NumPy inputs: on the engine ``engine``
            resolves to; compiled, per output neuron with samples in order and fixed-order sums; CuPy inputs: a warp
            per neuron, checked against the NumPy reference on an H200 and in the kernels' host emulation; with
            ``spikescan.cuda._closed.DETERMINISTIC`` its sums have a fixed order, bit-identical from run to run): the
            EventProp closed form of a feed-forward layer, the adjoint between spikes as one decay from the next
            spike, so the spikes are walked and every input entry's contribution is computed independently
            (``spikescan/_closed_backward.py``, ``spikescan/cuda/kernels/lif_backward_closed.cu``); the gradients of
            ``"sequential"`` to rounding, grazing spikes included. Recurrent layers raise ``NotImplementedError``.
            With ``spikescan.set_deterministic(True)`` and CuPy inputs, ``"auto"`` runs ``"closed"`` with
            fixed-order sums (bit-identical from run to run) and ``"sequential"`` / ``"scan"`` raise ``ValueError``.
        engine: as in ``lif_forward`` (``"numba"``, ``"numpy"`` or ``"auto"``). The compiled engine runs the reverse
            walk of the CUDA ``"sequential"`` kernel for ``"sequential"`` and ``"scan"`` (a chunked adjoint saves
            latency on a GPU warp and nothing on a CPU core), its closed form for ``"closed"`` and ``"auto"``
            (``_lif_numpy.COMPILED_BACKWARD_AUTO``; with one pair of time constants its per-entry exponentials are
            products of tabulated factors, ``_lif_numpy.COMPILED_REBASED_CLOSED``); both sum in a fixed order, so
            their gradients are bit-identical for any number of threads. Recurrent layers: the spike loop last to
            first per sample (parallel over samples), then the input entries per neuron; the gradients of the NumPy
            backward to rounding, from either engine's forward (``method="closed"`` raises ``NotImplementedError``).
        time_constant_grads: also compute the gradients of ``tau_mem`` and ``tau_syn`` (``[n_out]``; ``None``
            otherwise): a few more operations per point (the gap maps' parameter derivatives), so off unless asked.
        input_times_grad: compute ``grads.input_times``. ``False`` skips its work (a scatter-add over every queue
            entry) and returns ``None`` for it: for a first layer, whose input spikes are data.

    Returns:
        ``LIFGrads(weights, input_times, delays, threshold, tau_mem, tau_syn, recurrent_weights,
        recurrent_delays)`` with the shapes and dtypes of the forward arguments (``threshold`` float64 in its shape:
        a scalar, or ``[n_out]``; ``tau_mem``, ``tau_syn`` float64 and always ``[n_out]``)
        (``delays`` is ``None`` without delays; ``input_times`` is ``None`` when ``input_times_grad`` is False).

    Memory: neurons are processed in groups sized to stay within the memory limit (see ``lif_forward``), same
    gradients up to rounding; ``MemoryError`` when not even one neuron's history fits beside the gradients.
    """
    if not isinstance(result, LIFResult):
        raise TypeError(f"result must be the LIFResult returned by lif_forward, got {type(result).__name__}")
    if isinstance(grad_times, (int, float, np.number)) and not isinstance(grad_times, bool):
        raise TypeError(f"grad_times must be an array of result.times' shape, got the scalar {grad_times!r}: "
                        f"np.full_like(result.times, {grad_times!r}) gives every recorded spike time that cotangent")
    v.check_float_array("grad_times", grad_times, 3)
    xp = v.array_module(result.times, grad_times)
    if tuple(grad_times.shape) != tuple(result.times.shape):
        raise ValueError(f"grad_times must have the shape of result.times {tuple(result.times.shape)}, got shape "
                         f"{tuple(grad_times.shape)}")
    real = xp.isfinite(result.times)
    bad = real & ~xp.isfinite(grad_times)
    if bool(bad.any()):
        raise ValueError(f"grad_times must be finite where result.times is, got {v._first_bad(xp, grad_times, bad)}")
    v.choice("method", method, BACKWARD_METHODS)
    if not isinstance(input_times_grad, (bool, np.bool_)):
        raise TypeError(f"input_times_grad must be True or False, got {input_times_grad!r}")
    if not isinstance(time_constant_grads, (bool, np.bool_)):
        raise TypeError(f"time_constant_grads must be True or False, got {time_constant_grads!r}")
    if xp is not np and result.residuals.recurrent_log is None and _determinism.deterministic():
        # Bitwise-reproducible mode: the closed-form kernel with fixed-order sums; the others sum with atomics.
        if method in ("sequential", "scan"):
            raise ValueError(f"method={method!r} sums gradients with float atomics on the GPU, so its last bits vary "
                             f"from run to run; with spikescan.set_deterministic(True) use method='auto' or 'closed' "
                             f"(or turn the setting off)")
        method = "closed"
    if xp is not np and result.residuals.recurrent_log is None:
        from .cuda import _closed as cuda_closed

        method = cuda_closed.resolve_auto(method)  # the closed form: fastest at every batch the H200 run measured
    # (No helper function between here and the backends: their warnings' stacklevels count from this frame.)
    if method == "closed":
        v.choice("engine", engine, ENGINES)
        if xp is not np:
            from .cuda._closed import lif_backward_closed_cuda

            grads = lif_backward_closed_cuda(result, grad_times, bool(input_times_grad), bool(time_constant_grads))
        elif _engine(engine, xp) == "numba":  # the compiled closed form (_lif_numba.backward_closed)
            from . import _lif_numpy as impl

            if result.residuals.recurrent_log is not None:
                raise NotImplementedError("lif_backward(method='closed') covers feed-forward layers only; for a "
                                          "recurrent layer use method='sequential', 'scan' or 'auto'")
            grads = impl.lif_backward(result, grad_times, "closed", bool(input_times_grad), "numba",
                                      bool(time_constant_grads))
        else:
            from ._closed_backward import lif_backward_closed

            grads = lif_backward_closed(result, grad_times, bool(input_times_grad), bool(time_constant_grads))
    else:
        engine = _engine(engine, xp)
        if xp is np:
            from . import _lif_numpy as impl

            grads = impl.lif_backward(result, grad_times, method, bool(input_times_grad), engine,
                                      bool(time_constant_grads))
        else:
            from .cuda import _lif as cuda_impl

            grads = cuda_impl.lif_backward_cuda(result, grad_times, method, bool(input_times_grad),
                                                bool(time_constant_grads))
    v.finite_gradients("lif_backward", grads, "grad_times", grad_times)
    return grads


__all__ = ["lif_forward", "lif_backward", "LIFResult", "LIFGrads", "RunawayFiringError", "GrazingSpikeWarning",
           "DEFAULT_MAX_TOTAL_SPIKES"]
