"""Result and residual containers shared by every backend (NumPy and CuPy arrays alike)."""

from __future__ import annotations

from typing import Any, NamedTuple, Optional


class LIFResiduals(NamedTuple):
    """What ``lif_forward`` keeps for ``lif_backward``; arrays live on the device of the inputs.

    Per-neuron input queues are sorted arrival times (``input time + delay``). Without delays every neuron of a
    sample shares one queue (``Q = 1``); with delays each neuron has its own (``Q = n_out``).

    - ``queue_times``: ``[batch, Q, L1]`` float64 arrival times, ascending, ``+inf`` padded; every row ends in at
      least one ``+inf`` (a sentinel for the open gap after the last input).
    - ``queue_index``: ``[batch, Q, L1]`` int64 (int32 on the CUDA backend), flat index ``j * max_in + m`` into
      ``input_times[b]`` of each entry, ``-1`` for padding.
    - ``queue_end``: ``[batch, Q]`` int64, number of real (finite) entries per queue.
    - ``spike_times``: ``[batch, n_out, max_spikes]`` float64 recorded spike times, ``+inf`` padded.
    - ``spike_event``: ``[batch, n_out, max_spikes]`` int64: spike ``m`` lies in ``(t_{k-1}, t_k]`` of its queue,
      i.e. after queue entries ``< k`` were applied; ``-1`` for padding.
    - ``weights`` ``[n_in, n_out]``, ``delays`` ``[n_in, n_out]`` or ``None``, ``tau_mem``, ``tau_syn`` and
      ``threshold`` ``[n_out]`` (all float64; ``threshold_is_scalar``: the forward got one threshold, whose gradient
      is then the sum over neurons), ``input_shape`` and ``input_dtype`` of ``input_times``,
      ``weights_dtype``, ``delays_dtype``.
    - Recurrent layers only (``None`` otherwise): ``recurrent_weights`` ``[n_out, n_out]`` and ``recurrent_delays``
      (or ``None``) float64, ``recurrent_log`` (``RecurrentLog``: every spike, which the backward walks in reverse)
      and ``recurrent_weights_dtype``, ``recurrent_delays_dtype``. ``spike_event`` then counts the input queue
      entries applied before the spike.
    - ``checkpoints``: CUDA backend with ``spikescan.cuda._lif.FORWARD_CHECKPOINTS`` only (``None`` otherwise): the
      state before every 32nd point of each neuron's history, written by the forward kernels so that the backward
      skips its first pass; float64 ``[n_ckpt, 4, batch * n_out]``, 1 byte per point.
    - Permutation format (feed-forward layers with delays on the compiled CPU engine, ``engine="numba"``, unless
      ``_lif_numpy.COMPILED_PERMUTATION`` is off; on the CUDA backend with ``spikescan.cuda._queue.PERMUTATION``;
      ``None`` otherwise): ``queue_times`` and ``queue_index`` are then ``None`` and the queues are kept as
      ``queue_perm`` ``[batch, n_out, L1]`` uint16 (int32 on the compiled engine when ``L1 > 65536``; position in
      the sample's shared queue of each entry, in arrival order; padding entries point at a padding position),
      ``shared_times`` ``[batch, L1]`` float64 and ``shared_index`` ``[batch, L1]`` (int32 on CUDA, int64 on
      NumPy; the shared queue: ascending times, flat sources, ``+inf`` / ``-1`` padded) and ``delays_t``
      ``[n_out, n_in]`` float64 (``delays`` transposed). Entry ``k`` of neuron ``i``'s queue is ``time =
      shared_times[b, p] + delays_t[i, shared_index[b, p] // max_in]`` (the same IEEE addition as the materialised
      queues; ``+inf`` for padding) and ``index = shared_index[b, p]``, ``p = queue_perm[b, i, k]``;
      ``queue_end`` stays ``[batch, n_out]``. 2 bytes per entry instead of 12 (CUDA) or 16 (NumPy);
      ``spikescan._queue.residual_queues`` expands them and ``_queue.materialised`` gives residuals in the other
      format (the NumPy backward methods and ``lif_trace`` use it). ``queue_length`` is ``L1`` in either format.
      The CUDA forward of a layer with delays keeps ``shared_times`` and ``shared_index`` with materialised queues
      too (12 bytes per input spike), for the deterministic closed backward (``spikescan.cuda._closed``).

    Memory: ``O(batch * Q * L1)`` for the queues plus ``O(batch * n_out * max_spikes)``; every other state is
    recomputed by the backward.
    """

    queue_times: Any
    queue_index: Any
    queue_end: Any
    spike_times: Any
    spike_event: Any
    weights: Any
    delays: Optional[Any]
    tau_mem: Any
    tau_syn: Any
    threshold: Any
    input_shape: tuple
    input_dtype: Any
    weights_dtype: Any
    delays_dtype: Any
    solver: str
    threshold_is_scalar: bool = True
    recurrent_weights: Optional[Any] = None
    recurrent_delays: Optional[Any] = None
    recurrent_log: Optional["RecurrentLog"] = None
    recurrent_delays_dtype: Any = None
    recurrent_weights_dtype: Any = None
    checkpoints: Optional[Any] = None
    queue_perm: Optional[Any] = None
    shared_times: Optional[Any] = None
    shared_index: Optional[Any] = None
    delays_t: Optional[Any] = None

    @property
    def queue_length(self):
        """``L1``: entries per queue row (the most input spikes of any sample, plus the ``+inf`` sentinel)."""
        return (self.queue_times if self.queue_perm is None else self.queue_perm).shape[2]


class RecurrentLog(NamedTuple):
    """Every spike of a recurrent layer (recorded or not) per sample, in the order the forward committed them
    (ascending time; simultaneous spikes by neuron index), ``[batch, M]`` padded with ``+inf`` / ``-1`` / ``0``.

    - ``times``: float64 spike times; ``neurons``: int64 neuron index; ``currents``: float64 synaptic current ``I``
      at the spike (unchanged by the reset); ``count``: ``[batch]`` int64 spikes per sample.
    """

    times: Any
    neurons: Any
    currents: Any
    count: Any


class LIFResult(NamedTuple):
    """Output of ``lif_forward``.

    - ``times``: ``[batch, n_out, max_spikes]`` output spike times (dtype of ``input_times``), ascending, ``+inf``
      padded.
    - ``counts``: ``[batch, n_out]`` int64, the true number of spikes of each neuron over the whole input, which may
      exceed ``max_spikes``: the dynamics stay exact and only the recording is capped.
    - ``residuals``: ``LIFResiduals`` for ``lif_backward``.
    """

    times: Any
    counts: Any
    residuals: LIFResiduals

    @property
    def capped_spikes(self):
        """Total number of spikes (over batch and neurons) that fired but were not recorded
        (``counts > max_spikes``)."""
        max_spikes = self.times.shape[-1]
        return int((self.counts - max_spikes).clip(0, None).sum())


class LIFGrads(NamedTuple):
    """Gradients of a scalar loss returned by ``lif_backward``; each matches the dtype and shape of its argument.

    ``delays`` is ``None`` when the forward had no delays. ``threshold`` is float64 in the shape of the forward's
    argument (a scalar array, or ``[n_out]``). ``tau_mem`` and
    ``tau_syn`` are float64 ``[n_out]``: one gradient per neuron, also when the forward got one scalar (whose
    gradient is their sum); ``None`` from backends that do not compute them yet. ``recurrent_weights`` and
    ``recurrent_delays`` (``[n_out, n_out]``) for a recurrent layer, ``None`` otherwise (and ``recurrent_delays``
    without recurrent delays).
    """

    weights: Any
    input_times: Any
    delays: Optional[Any]
    threshold: Any
    tau_mem: Optional[Any] = None
    tau_syn: Optional[Any] = None
    recurrent_weights: Optional[Any] = None
    recurrent_delays: Optional[Any] = None


class LIResiduals(NamedTuple):
    """What ``li_forward`` keeps for ``li_backward``; arrays live on the device of the inputs.

    - ``input_times`` ``[batch, n_in, max_in]`` and ``weights`` ``[n_in, n_out]``: float64 copies.
    - ``tau_mem``, ``tau_syn``: ``[n_out]`` float64; ``tau_readout`` (float or ``None``), ``t_max`` (float),
      ``readout`` (``"final"``, ``"max"`` or ``"integral"``).
    - ``eval_time``: ``[batch, n_out]`` float64 time ``t*`` of the maximum for ``readout="max"``, else ``None``.
    - ``kink_index``: ``[batch, n_out]`` int64 for ``readout="max"``: flat index ``j * max_in + m`` into
      ``input_times[b]`` of the input that arrives exactly at ``t*`` when the maximum sits on that input's kink,
      ``-1`` when ``t*`` is ``0``, ``t_max`` or an interior peak; ``None`` for the other readouts.
    - ``input_dtype``, ``weights_dtype``: dtypes of the forward arguments (the gradients are returned in them).
    - ``kernels``: NumPy ``"integral"``/``"final"`` with one pair of time constants for all neurons only, the
      forward's per-spike kernel terms the backward reuses instead of evaluating them again: ``(features [batch,
      n_in], dkappa [batch, n_in, max_in])``, ``features = sum_m kappa`` and ``dkappa = d kappa / dt`` (float64);
      else ``None`` (the backward evaluates the kernels itself).
    - ``delays``: ``[n_in, n_out]`` float64 per-synapse delays of the CUDA ``"max"`` kernels when
      ``spikescan.peak_voltage`` ran them for a layer with delays (``spikescan.cuda._readout.forward``), else
      ``None`` (``li_forward`` has no delays).

    Memory: ``O(batch * n_in * max_in + n_in * n_out + batch * n_out)``.
    """

    input_times: Any
    weights: Any
    tau_mem: Any
    tau_syn: Any
    tau_readout: Optional[float]
    t_max: float
    readout: str
    eval_time: Optional[Any]
    kink_index: Optional[Any]
    input_dtype: Any
    weights_dtype: Any
    kernels: Optional[tuple] = None
    delays: Optional[Any] = None


class LIResult(NamedTuple):
    """Output of ``li_forward``: ``values`` ``[batch, n_out]`` (dtype of ``input_times``) and residuals."""

    values: Any
    residuals: LIResiduals


class LIGrads(NamedTuple):
    """Gradients returned by ``li_backward``; ``weights`` and ``input_times`` match the dtype and shape of their
    forward arguments. ``tau_mem`` and ``tau_syn`` are float64 ``[n_out]`` with ``time_constant_grads=True`` (one
    gradient per neuron, also when the forward got one scalar, whose gradient is their sum), else ``None``."""

    weights: Any
    input_times: Any
    tau_mem: Optional[Any] = None
    tau_syn: Optional[Any] = None


class PeakResiduals(NamedTuple):
    """What ``peak_voltage`` keeps for ``peak_voltage_backward``: NumPy (host) arrays for NumPy inputs, ``device``
    for CuPy inputs.

    - ``neurons``: ``[n_sel]`` int64, ascending indices of the output neurons that were computed (all of them
      without a mask).
    - ``input_times`` ``[batch, n_in, max_in]``, ``weights`` ``[n_in, n_out]``, ``delays`` ``[n_in, n_out]`` or
      ``None``, ``tau_mem`` and ``tau_syn`` ``[n_out]``: float64 copies; ``None`` (all but the time constants) when
      no neuron was selected, as nothing was computed.
    - ``eval_time``: ``[batch, n_sel]`` float64 time ``t* >= 0`` of the peak of each computed neuron (finite).
    - ``kink_index``: ``[batch, n_sel]`` int64 flat index ``j * max_in + m`` into ``input_times[b]`` of the input
      whose arrival is exactly at ``t*`` when the peak sits on that arrival's kink, else ``-1``.
    - ``input_shape``, ``n_out``; ``input_dtype``, ``weights_dtype``, ``delays_dtype`` (``None`` without delays):
      shapes and dtypes of the forward arguments.
    - ``device``: CuPy inputs only, ``(chunks, mask)``: the readout's CUDA ``"max"`` kernels ran on the device with
      ``t_max = inf``; ``chunks`` is a tuple of ``(columns, LIResult)``. Without delays one chunk ``(None, result)``
      of every neuron, and ``mask`` (``[n_out]``, the input dtype) zeroes the neurons left out. With delays one
      chunk per group of selected neurons (``columns``: their indices, a device array; the results hold float64
      copies and the delays), and ``mask`` is ``None``. ``neurons`` and every array field are then ``None`` and
      nothing is on the host. ``None`` for NumPy inputs.

    Memory: ``O(batch * n_in * max_in + n_in * n_out + batch * n_sel)`` on the host (on the device for ``device``).
    """

    neurons: Any
    input_times: Optional[Any]
    weights: Optional[Any]
    delays: Optional[Any]
    tau_mem: Any
    tau_syn: Any
    eval_time: Any
    kink_index: Any
    input_shape: tuple
    n_out: int
    input_dtype: Any
    weights_dtype: Any
    delays_dtype: Optional[Any]
    device: Optional[tuple] = None


class PeakResult(NamedTuple):
    """Output of ``peak_voltage``: ``values`` ``[batch, n_out]`` (dtype of ``input_times``, ``0`` for neurons left out
    by the mask) and residuals."""

    values: Any
    residuals: PeakResiduals


class PeakGrads(NamedTuple):
    """Gradients returned by ``peak_voltage_backward``; each matches the dtype and shape of its forward argument.

    ``delays`` is ``None`` when the forward had no delays. Neurons left out by the mask get zero gradient.
    """

    weights: Any
    input_times: Any
    delays: Optional[Any]


class RunawayFiringError(FloatingPointError):
    """Raised by ``lif_forward`` when a neuron fires more than ``max_total_spikes`` times on one sample.

    A neuron driven far above threshold (synaptic current ``I >> threshold``) fires one spike every
    ``tau_mem * log(I / (I - threshold)) ~ tau_mem * threshold / I``, each an exact root solve: about ``1e15``
    spikes for a weight of ``1e15``, hours of work on any backend. The limit stops it within seconds in a
    feed-forward layer (a recurrent layer of mutually exciting neurons takes about ``n_out**2 * max_total_spikes``
    neuron updates, see ``lif_forward``). Like the "fires twice" ``FloatingPointError`` (the same condition once the
    inter-spike interval falls below the float64 resolution of ``t``), it subclasses ``FloatingPointError``, so
    ``except FloatingPointError`` catches both.

    Attributes (``None`` when the error was built by hand):
        sample, neuron: the sample (batch index) and the output neuron that ran away (when several do: on NumPy
            the first to reach the limit, on CUDA the lowest flat index ``sample * n_out + neuron``). In a recurrent
            layer on Numba or CUDA the first sample to stop stops the others, so which of several runaway samples is
            named can depend on thread timing.
        time: time of its spike number ``limit + 1``, the one that was not allowed.
        current: its input (synaptic) current ``I`` at that time.
        limit: the ``max_total_spikes`` in force.
    """

    def __init__(self, message, sample=None, neuron=None, time=None, current=None, limit=None):
        super().__init__(message)
        self.sample, self.neuron, self.time, self.current, self.limit = sample, neuron, time, current, limit

    def __reduce__(self):
        return type(self), (self.args[0], self.sample, self.neuron, self.time, self.current, self.limit)


class GrazingSpikeWarning(RuntimeWarning):
    """Issued by ``lif_backward`` for recorded spikes where ``V`` only touches the threshold (``dV/dt = 0`` there).

    The implicit function theorem gives ``dt*/dp = -(dR/dp) / (dV/dt)`` at a spike; at a grazing spike (``V`` peaks
    exactly at the threshold, ``I(t*) = threshold``) the spike time is not differentiable: an infinitesimal change
    of the inputs removes the spike or makes it a proper crossing. Instead of dividing by zero (NaN and inf
    gradients), the backward drops the IFT term of every spike whose recomputed ``dV/dt`` is ``<= 0`` (zero, or
    below zero by rounding, which an upward crossing cannot be): no gradient flows from that spike's time into the
    state before it (nor through it to weights, input times and delays) or into the threshold. The reset still
    holds, ``I`` carries on, and the spike keeps moving with the start of its gap (``t* = t_prev + s``): a shift of
    every input by ``dt`` still moves it by ``dt``, the one direction in which a grazing spike is differentiable.
    Spikes an ulp away from grazing are differentiated as usual, with their large ``1 / (dV/dt)`` factors (about
    ``3e16`` for a slope of one ulp). Whether a peak lands exactly on the threshold is decided by the last bit of
    the arithmetic, so backends whose ``exp`` rounds differently may disagree on such a spike.

    Attributes (``None`` when the warning was built by hand):
        count: number of grazing spikes in the call (over batch and neurons).
        sample, neuron: the first neuron (lowest flat index ``sample * n_out + neuron``) with one.
        time: that neuron's earliest grazing spike time.
    """

    def __init__(self, message, count=None, sample=None, neuron=None, time=None):
        super().__init__(message)
        self.count, self.sample, self.neuron, self.time = count, sample, neuron, time

    def __reduce__(self):
        return type(self), (self.args[0], self.count, self.sample, self.neuron, self.time)
