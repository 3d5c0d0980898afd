"""The two ops the Keras layers call, as backend-free forward/backward pairs on NumPy (or CuPy) arrays.

A bridge (``_bridge/<backend>.py``) turns one of these ops into a custom-gradient op of its framework. Every op
has the same shape:

- ``forward(spec, inputs) -> (outputs, result)``: ``inputs`` a tuple of arrays, ``outputs`` a tuple of arrays whose
  first entry is the only differentiable one, ``result`` what the backward needs (a spikescan result object).
- ``backward(spec, result, grad, input_grad=True) -> grads``: ``grad`` the cotangent of ``outputs[0]``; one
  gradient per input, with its shape and dtype. ``input_grad=False`` (the framework needs no gradient for
  ``inputs[0]``, e.g. a first layer fed with data) lets an op skip that work and return ``None`` in its place.
- ``output_specs(spec, inputs) -> ((shape, dtype), ...)`` for frameworks that need shapes before running (JAX).
- ``per_sample``: True when every output is one row per sample along axis 0 of ``inputs[0]`` and the other inputs
  are shared by all samples (weights), so a data-parallel bridge may run the op on each device's slice of the batch
  and sum the shared inputs' gradients; False when the result depends on the whole batch (the calibration).
- optional ``check_values(spec, outputs, inputs) -> values`` and ``check(spec, *values)``: the op's host checks
  (warnings), split so that a bridge that keeps the arrays on the device can leave them out of the op
  (``spec.host_checks = False``), compute ``values`` (a few scalars) from the outputs and inputs with its own array
  library (only operators, ``.sum()``, ``.size`` and ``.shape`` are used) and hand just those to ``check`` on the
  host.

Only numerics from ``spikescan`` run here; nothing imports a deep-learning framework.
"""

from __future__ import annotations

import functools
import itertools
import sys
import warnings
import weakref
from dataclasses import dataclass
from typing import Optional

import numpy as np

import spikescan
from spikescan import _validate


class CappedSpikesWarning(UserWarning):
    """Some neurons fired more than ``max_spikes`` times: their extra spikes were not passed to the next layer."""


class SilentLayerWarning(UserWarning):
    """A LIF layer fired no spike at all on a training batch: every exact gradient through it is zero."""


class SilentReadoutWarning(UserWarning):
    """A readout's logits were exactly 0 on every sample of a training batch (no input spike in its window): the
    loss does not depend on the layers before it."""


class DeadReadoutWarning(UserWarning):
    """Units of a ``"max"`` readout whose voltage never rose on a training batch, with no revival objective: their
    gradient is exactly zero."""


class DeadNeuronsWarning(UserWarning):
    """Neurons of a LIF layer that fired on no sample of a training batch, with no revival objective
    (``silence_penalty=0``): their gradient is exactly zero and nothing brings them back."""


# Per-layer warning registries: Python's default filter shows a warning once per text and place in the registry of
# the module that warns, so two layers of one name (an explicit name=, or the automatic names again after
# keras.backend.clear_session()) would share one: the second model, silent from its first batch, would train without a
# word. Each layer warns into a registry of its own instead (the filters themselves apply as usual: "always" shows
# every time, "error" raises, "ignore" hides, "once" shows once per text in the process).
_layer_keys = itertools.count(1)
_registries: dict = {}


def layer_key(layer) -> int:
    """A new key (``> 0``, never reused) for ``layer``'s warnings; its registry goes with the layer."""
    key = next(_layer_keys)
    weakref.finalize(layer, _registries.pop, key, None)
    return key


def warn(key: int, message: str, category, stacklevel: int = 1):
    """``warnings.warn(message, category, stacklevel)`` (``stacklevel`` counted from the caller of ``warn``) into the
    registry of the layer with ``key`` (0: the calling module's, as ``warnings.warn``)."""
    if not key:
        warnings.warn(message, category, stacklevel=stacklevel + 1)
        return
    try:
        frame = sys._getframe(stacklevel)
    except ValueError:  # fewer frames than asked for: the outermost one, as warnings.warn does
        frame = sys._getframe(1)
        while frame.f_back is not None:
            frame = frame.f_back
    registry = _registries.setdefault(key, {})
    warnings.warn_explicit(message, category, frame.f_code.co_filename, frame.f_lineno,
                           module=frame.f_globals.get("__name__", "<string>"), registry=registry,
                           module_globals=frame.f_globals)


SHARE_BANDS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5)
# From this share of a batch's spikes capped on, CappedSpikesWarning's advice is to raise max_spikes, not that a few
# neurons burst (a band edge of SHARE_BANDS, so the advice is constant within a band and the filter still works).
CAPPED_LARGE_SHARE = 0.2
# Input with at most this many spike slots per channel (latency codes: one) is not dense: a large capped share on it
# points to runaway weights, not to max_spikes.
SPARSE_SLOTS = 2


def second_order_error(op, spec):
    """The ``RuntimeError`` a bridge raises when something differentiates an op's gradients: its backward runs on
    the host, so the framework would otherwise leave out every term through the op without a word."""
    return RuntimeError(f"spikescan_keras: {op.__name__} (layer {getattr(spec, 'layer_name', '')!r}) has no "
                        "second-order gradient (its backward runs on the host); differentiating its gradients (a "
                        "gradient penalty, create_graph=True, nested tapes) would leave out every term through it")


# The starts of the forward's errors about parameters that a layer's constraints keep valid (delays >= 0,
# thresholds and time constants above their floors), and about non-finite weights, which a diverged step leaves.
CONSTRAINED = ("delays must be >= 0", "recurrent_delays must be >= 0", "threshold must be positive",
               "tau_mem must be positive", "tau_syn must be positive")
DIVERGED = ("weights must be finite", "recurrent_weights must be finite")


def batch_indexed(forward):
    """``op.forward`` whose errors about ``input_times`` at an index (NaN, a negative or descending time) add that
    the index counts samples within the batch the layer was called on, not the dataset the batch came from (Keras
    shuffles and slices it), and how to find the sample; the same exception type, raised from the original. Its
    ``FloatingPointError`` (``RunawayFiringError``, with the same fields) gets the layer's name."""
    @functools.wraps(forward)
    def wrapped(spec, inputs):
        try:
            return forward(spec, inputs)
        except FloatingPointError as err:  # RunawayFiringError, or spikes closer than float64 resolves: which layer?
            name = getattr(spec, "layer_name", "")
            if not name or type(err) not in (FloatingPointError, spikescan.RunawayFiringError):
                raise
            text = (f"{err} [in layer {name!r}; the sample counts within this call's batch of "
                    f"{int(inputs[0].shape[0])}]")
            if type(err) is FloatingPointError:
                raise FloatingPointError(text) from err
            raise spikescan.RunawayFiringError(text, err.sample, err.neuron, err.time, err.current,
                                               err.limit) from err
        except (ValueError, TypeError) as err:
            text = str(err)
            if type(err) is ValueError and text.startswith(CONSTRAINED):
                # A parameter its constraint keeps valid under Keras' optimizers: a loop of the user's own skipped it.
                raise ValueError(
                    f"{text} [in layer {getattr(spec, 'layer_name', '')!r}: the layer's constraints keep its delays, "
                    "thresholds and time constants valid when a Keras optimizer steps (model.fit, "
                    "optimizer.apply); a training loop of your own must apply them after each step: "
                    "spikescan_keras.apply_constraints(model) after a torch.optim step, or trainable = "
                    "spikescan_keras.apply_constraints(model, trainable) in a functional (jax) loop]") from err
            if type(err) is ValueError and text.startswith(DIVERGED):
                raise ValueError(
                    f"{text} [in layer {getattr(spec, 'layer_name', '')!r}: a training step made its weights "
                    "non-finite, as a diverged step does: lower the learning rate or clip the gradients]") from err
            if type(err) not in (ValueError, TypeError) or not text.startswith("input_times") or "index (" not in text:
                raise
            batch = int(inputs[0].shape[0])
            name = getattr(spec, "layer_name", "")
            raise type(err)(
                f"{text} [in layer {name!r}: the index's first entry counts samples within this call's batch of "
                f"{batch}, not the dataset; spikescan.datasets.SpikeDataset(times, labels) checks a whole dataset "
                "and names the sample]") from err
    return wrapped


def share_band(part: int, whole: int) -> str:
    """``part`` of ``whole`` (``0 < part <= whole``) as a band of ``SHARE_BANDS``: ``"under 1%"``, ``"1-2%"``, ...,
    ``"50% or more"`` (a share on an edge belongs to the band above it). Warnings give amounts as bands, not counts,
    so that Python's default filter shows each once per layer and band."""
    share = part / max(whole, part, 1)
    edges = [f"{100 * e:g}%" for e in SHARE_BANDS]
    below = sum(share >= e for e in SHARE_BANDS)
    if below == 0:
        return f"under {edges[0]}"
    if below == len(SHARE_BANDS):
        return f"{edges[-1]} or more"
    return f"{edges[below - 1][:-1]}-{edges[below]}"


def _warn_silent(layer_name, key=0):
    # No count or batch number in the message: Python's default filter then shows it once per layer.
    warn(key,
        f"LIFLayer {layer_name!r} fired no spike on a training batch, so every gradient through it (and through the "
        "layers before it) is zero and this batch teaches nothing. Its drive is below threshold. Keep the layer's "
        "first-batch calibration on (calibrate=(low, high), the default) and its silence_penalty > 0 so silent "
        "neurons are pushed back towards threshold; if both are on, the kernel may have no positive weight (all "
        "zero or negative, which neither can fix: start from kernel_initializer='auto'), or needs a lower "
        "threshold or longer time constants; if it fell silent during training, lower the learning rate.",
        SilentLayerWarning, stacklevel=2)


@dataclass(frozen=True)
class LIFSpec:
    """Static arguments of ``spikescan.lif_forward`` (hashable, so JAX can treat it as a static argument)."""

    tau_mem: float
    tau_syn: float
    threshold: float
    max_spikes: int
    method: str
    chunk_size: int
    solver: str
    layer_name: str
    training: bool = False
    max_total_spikes: int = 10_000
    host_checks: bool = True  # False: the bridge runs ``LIFOp.check`` itself, on values it computed from the outputs
    time_constant_inputs: bool = False  # True: per-neuron tau_mem, tau_syn are inputs (trainable)
    threshold_input: bool = False  # True: per-neuron thresholds are the last input (trainable)
    warn_capped: bool = True  # False: spikes beyond max_spikes are expected (FirstSpikeReadout's later spikes)
    warn_silent: bool = True  # False: a silent batch still has gradients (FirstSpikeReadout's voltage extension)
    warn_dead: bool = False  # True: neurons silent on every sample of a training batch are warned about
    # (silence_penalty=0: no revival objective)
    recurrent: bool = False  # True: recurrent weights [n_out, n_out] follow the (delays of the) input weights
    recurrent_delays: bool = False  # True: and recurrent delays [n_out, n_out] after them
    layer_key: int = 0  # the layer's warning registry (``layer_key``); 0: the module's


@dataclass(frozen=True)
class LISpec:
    """Static arguments of ``spikescan.li_forward``."""

    tau_mem: float
    tau_syn: float
    readout: str
    t_max: float
    tau_readout: Optional[float]
    time_constant_inputs: bool = False  # True: per-neuron tau_mem, tau_syn are inputs (trainable)
    layer_name: str = ""
    warn_dead: bool = False  # True: warn about dead units (a training call of a "max" readout without revival)
    warn_empty: bool = False  # True: warn when every value of the batch is exactly 0 (a training call)
    host_checks: bool = True  # False: the bridge runs ``LIOp.check`` itself, on values it computed from the outputs
    unit_mask_input: bool = False  # True: a float mask ``[n_out]`` is the last input; only its units are computed
    layer_key: int = 0  # the layer's warning registry (``layer_key``); 0: the module's


def _split_time_constants(spec, inputs):
    """``(inputs without the time constants, tau_mem, tau_syn)``: the last two inputs when the spec says they are
    inputs (per-neuron, trainable), else the spec's scalars."""
    if spec.time_constant_inputs:
        return inputs[:-2], inputs[-2], inputs[-1]
    return inputs, spec.tau_mem, spec.tau_syn


def _split_threshold(spec, inputs):
    """``(inputs without the threshold, threshold)``: the last input when ``spec.threshold_input``."""
    if spec.threshold_input:
        return inputs[:-1], inputs[-1]
    return inputs, spec.threshold


def _split_recurrent(spec, inputs):
    """``(inputs without the recurrent ones, recurrent_weights or None, recurrent_delays or None)``."""
    if not spec.recurrent:
        return inputs, None, None
    if spec.recurrent_delays:
        return inputs[:-2], inputs[-2], inputs[-1]
    return inputs[:-1], inputs[-1], None


class LIFOp:
    """``inputs = (input_times, weights)`` or ``(input_times, weights, delays)``, followed by
    ``recurrent_weights [n_out, n_out]`` (and ``recurrent_delays``) when ``spec.recurrent`` (``spec.recurrent_delays``),
    ``(tau_mem, tau_syn)`` ``[n_out]`` when ``spec.time_constant_inputs`` and ``threshold [n_out]`` when
    ``spec.threshold_input``;
    ``outputs = (times, counts)``.

    ``times [batch, n_out, max_spikes]`` has the dtype of ``input_times``; ``counts [batch, n_out]`` is int32 (the
    true spike count per neuron, which may exceed ``max_spikes``).
    """

    per_sample = True

    @staticmethod
    @batch_indexed
    def forward(spec: LIFSpec, inputs):
        inputs, threshold = _split_threshold(spec, inputs)
        inputs, tau_mem, tau_syn = _split_time_constants(spec, inputs)
        inputs, recurrent_weights, recurrent_delays = _split_recurrent(spec, inputs)
        input_times, weights, *delays = inputs
        result = spikescan.lif_forward(
            input_times, weights, delays=delays[0] if delays else None, tau_mem=tau_mem, tau_syn=tau_syn,
            threshold=threshold, max_spikes=spec.max_spikes, method=spec.method, chunk_size=spec.chunk_size,
            solver=spec.solver, max_total_spikes=spec.max_total_spikes, recurrent_weights=recurrent_weights,
            recurrent_delays=recurrent_delays)
        outputs = (result.times, result.counts.astype(np.int32))
        if spec.host_checks:
            LIFOp.check(spec, *LIFOp.check_values(spec, outputs, inputs))
        return outputs, result

    @staticmethod
    def has_checks(spec: LIFSpec):
        """Whether a call has warnings to check for: always (spikes beyond ``max_spikes``; a silent training
        batch)."""
        return True

    @staticmethod
    def check_values(spec: LIFSpec, outputs, inputs):
        """``(capped, fired, spikes, dead, units, slots)`` from ``counts``: spikes beyond ``max_spikes`` (summed over
        batch and neurons), the number of (sample, neuron) pairs that fired (1 when ``counts`` is empty, which is not
        a silent batch), all the spikes fired, the neurons that fired on no sample (0 for an empty batch, and when
        ``spec.warn_dead`` is off: not counted), the layer's neurons and the input's spike slots per channel."""
        counts = outputs[1]
        over = counts - spec.max_spikes
        dead = (((counts > 0).sum(axis=0) == 0).sum()) * (counts.shape[0] > 0) if spec.warn_dead else 0
        return ((over * (over > 0)).sum(), (counts > 0).sum() + (counts.size == 0), counts.sum(), dead,
                counts.shape[1], int(inputs[0].shape[-1]))

    @staticmethod
    def check(spec: LIFSpec, capped, fired, spikes, dead=0, units=0, slots=None):
        """The forward's warnings, from the host values of ``check_values``."""
        if spec.warn_capped and int(capped):
            # The message gives the share of the batch's spikes as a band, not a count, so Python's default filter
            # shows it once per layer and band: again when the share reaches a new band (a runaway shows as a rising
            # band). The layer's ``capped_spikes`` variable keeps the running total.
            large = int(capped) / max(int(spikes), int(capped), 1) >= CAPPED_LARGE_SHARE  # share_band's share
            runaway = (" If instead the share keeps rising during training while the loss stalls, the weights are "
                       "running away: lower the learning rate.")
            if large and slots is not None and int(slots) <= SPARSE_SLOTS:
                # Adam(1.0) on a latency code: 95% of the neurons dead, the rest bursting, and the advice was to
                # raise max_spikes for dense input.
                advice = (f"The input has at most {int(slots)} spike(s) per channel, so this is no dense input: a "
                          "neuron that fires more than max_spikes times on it has large weights. If the share grows "
                          "during training, the learning rate is most likely too high for this layer: lower it. "
                          "Raise max_spikes if such bursts are intended.")
            elif large:
                advice = (
                    "A share this large means the layer's neurons routinely fire more than max_spikes times per "
                    "sample, as dense input (rate codes, rasters) drives them: raise max_spikes (doubling it usually "
                    "brings the share under a few percent)." + runaway)
            else:
                advice = ("Usually a few neurons fire a short burst on every sample, which training tolerates; raise "
                          "max_spikes if the later spikes carry information." + runaway)
            warn(spec.layer_key,
                f"LIFLayer {spec.layer_name!r}: {share_band(int(capped), int(spikes))} of a batch's spikes "
                f"came after their neuron's first max_spikes={spec.max_spikes} on a sample; they keep exact "
                "dynamics but are not passed on to the next layer (the layer's `capped_spikes` variable counts "
                f"them, and this warning shows again when the share reaches a band not shown before). {advice}",
                CappedSpikesWarning)
        if spec.training and spec.warn_silent and not int(fired):
            _warn_silent(spec.layer_name, spec.layer_key)
        elif spec.training and spec.warn_dead and int(dead):
            # The share as a band, not a count: Python's default filter shows it once per layer and band.
            warn(spec.layer_key,
                f"LIFLayer {spec.layer_name!r}: {share_band(int(dead), int(units))} of its {int(units)} neurons fired "
                "on no sample of a training batch (the warning shows again when the share reaches a band not shown "
                "before), and silence_penalty=0 switches off the revival objective, so their gradients are exactly "
                "zero and nothing in training brings them back (the layer's `dead_fraction` variable gives their "
                "share). Keep silence_penalty > 0 (the default, 1.0) unless they fire on other batches.",
                DeadNeuronsWarning, stacklevel=2)

    @staticmethod
    def backward(spec: LIFSpec, result, grad_times, input_grad=True):
        grads = spikescan.lif_backward(result, grad_times, input_times_grad=input_grad,
                                       time_constant_grads=spec.time_constant_inputs)
        out = (grads.input_times, grads.weights) + (() if grads.delays is None else (grads.delays,))
        if spec.recurrent:
            out += (grads.recurrent_weights,)
        if spec.recurrent_delays:
            out += (grads.recurrent_delays,)
        if spec.time_constant_inputs:
            dtype = grads.weights.dtype
            out += (grads.tau_mem.astype(dtype), grads.tau_syn.astype(dtype))
        if spec.threshold_input:
            out += (grads.threshold.astype(grads.weights.dtype),)
        return out

    @staticmethod
    def output_specs(spec: LIFSpec, inputs):
        input_times, weights = inputs[:2]
        batch, n_out = input_times.shape[0], weights.shape[1]
        return ((batch, n_out, spec.max_spikes), input_times.dtype), ((batch, n_out), np.dtype(np.int32))


class LIOp:
    """``inputs = (input_times, weights)``, followed by ``(tau_mem, tau_syn)`` ``[n_out]`` when
    ``spec.time_constant_inputs`` and by ``units [n_out]`` (float, 0 or 1) when ``spec.unit_mask_input``;
    ``outputs = (values,)`` with ``values [batch, n_out]``.

    With ``units``, only the set units are computed and the others' values are 0 (their cotangent is ignored). On
    NumPy inputs the op runs on the set units' columns alone and does nothing when none is set, which is what keeps
    the revival objective of ``LIReadout`` free on a training step without a dead unit; on CuPy it computes every
    column and masks the result, so that no host read of ``units`` synchronises the stream. ``units`` gets a zero
    gradient.
    """

    per_sample = True

    @staticmethod
    @batch_indexed
    def forward(spec: LISpec, inputs):
        if spec.unit_mask_input:
            return _masked_li_forward(spec, inputs)
        (input_times, weights), tau_mem, tau_syn = _split_time_constants(spec, inputs)
        result = spikescan.li_forward(input_times, weights, tau_mem=tau_mem, tau_syn=tau_syn,
                                      readout=spec.readout, t_max=spec.t_max, tau_readout=spec.tau_readout)
        if spec.host_checks and LIOp.has_checks(spec):
            LIOp.check(spec, *LIOp.check_values(spec, (result.values,), inputs))
        return (result.values,), result

    @staticmethod
    def has_checks(spec: LISpec):
        """Whether a call has a warning to check for (on a training call: dead units with ``spec.warn_dead``, a
        batch of all-zero values with ``spec.warn_empty``)."""
        return spec.warn_dead or spec.warn_empty

    @staticmethod
    def check_values(spec: LISpec, outputs, inputs):
        """``(dead, empty, spikes, late)``: the number of units whose value is 0 on every sample (a ``"max"`` unit
        whose voltage never rose above its start; 0 for an empty batch), whether every value of a non-empty batch
        is exactly 0, and the input spikes of the batch, all of them and those after ``t_max`` (spike times are
        validated: ``< inf`` is finite)."""
        values, input_times = outputs[0], inputs[0]
        dead = ((values != 0).sum(axis=0) == 0).sum() * (values.shape[0] > 0)  # an empty batch has no dead unit
        real = input_times < np.inf
        return (dead, (dead == values.shape[1]) & (values.shape[0] > 0), real.sum(),
                (real & (input_times > spec.t_max)).sum())

    @staticmethod
    def check(spec: LISpec, dead, empty, spikes, late):
        """The forward's warnings, from the host values of ``check_values``."""
        if spec.warn_empty and bool(empty):
            dead_max = (" For readout='max' every unit may instead be dead: weights that only lower the voltage "
                        "leave its maximum at V(0) = 0 (keep revival_penalty > 0, the default, to raise them)."
                        if spec.readout == "max" else "")
            warn(spec.layer_key,
                f"LIReadout {spec.layer_name!r}: every logit is exactly 0 on every sample of a training batch, so the "
                "loss cannot depend on the weights before it. Usually no input spike arrives within the readout "
                f"window [0, t_max={spec.t_max!r}]: are the spike times in the unit of t_max and the time constants "
                "(e.g. microseconds from tonic against milliseconds), and does the layer before fire before t_max? "
                f"(All-zero readout weights give the same.){dead_max}", SilentReadoutWarning, stacklevel=2)
        elif spec.warn_dead and int(dead):
            # No count in the message: Python's default filter then shows it once per layer.
            warn(spec.layer_key,
                f"LIReadout {spec.layer_name!r}: some units' voltage never rose above its start on any sample of a "
                "training batch, so their max readout is V(0) = 0, their gradient is exactly zero and their classes "
                "are never predicted. Keep revival_penalty > 0 (the default, 1.0) to raise their weights until "
                "they rise, or start from other weights; the layer's dead_fraction weight and FiringMonitor count "
                "them.", DeadReadoutWarning, stacklevel=2)
        if spec.warn_empty and not bool(empty) and 2 * int(late) > int(spikes):
            # Most inputs outside the window while a few early ones keep the logits from being all zero (spike
            # times in another unit, e.g. microseconds against milliseconds). No count in the message: Python's
            # default filter then shows it once per layer.
            warn(spec.layer_key,
                f"LIReadout {spec.layer_name!r}: most input spikes of a training batch arrive after "
                f"t_max={spec.t_max!r}, outside the readout window, where they cannot move the logits. Are the spike "
                "times in the unit of t_max and the time constants (e.g. microseconds from tonic against "
                "milliseconds)? Otherwise raise "
                "t_max to cover the activity of the layer before.", SilentReadoutWarning, stacklevel=2)

    @staticmethod
    def backward(spec: LISpec, result, grad_values, input_grad=True):
        if spec.unit_mask_input:
            return _masked_li_backward(spec, result, grad_values)
        # li_backward always computes the input gradient (cheap: one term per input spike and neuron).
        grads = spikescan.li_backward(result, grad_values, time_constant_grads=spec.time_constant_inputs)
        out = (grads.input_times, grads.weights)
        if spec.time_constant_inputs:
            dtype = grads.weights.dtype
            out += (grads.tau_mem.astype(dtype), grads.tau_syn.astype(dtype))
        return out

    @staticmethod
    def output_specs(spec: LISpec, inputs):
        input_times, weights = inputs[:2]
        return (((input_times.shape[0], weights.shape[1]), input_times.dtype),)


@dataclass(frozen=True)
class _MaskedLI:
    """Residuals of ``LIOp`` with a unit mask: ``result`` of the computed columns (``None`` when none was),
    ``columns`` (host indices of those columns, or ``None``: every column, masked by ``mask``), and ``(shape,
    dtype)`` of each input, for the gradients."""

    result: object
    columns: object
    mask: object
    inputs: tuple


def _masked_li_forward(spec: LISpec, inputs):
    shapes = tuple((x.shape, x.dtype) for x in inputs)
    *inputs, units = inputs
    (input_times, weights), tau_mem, tau_syn = _split_time_constants(spec, tuple(inputs))
    batch, n_out = input_times.shape[0], weights.shape[1]
    kw = dict(readout=spec.readout, t_max=spec.t_max, tau_readout=spec.tau_readout)
    if not isinstance(units, np.ndarray):  # CuPy: every column, masked on the device
        mask = (units > 0.5).astype(input_times.dtype)
        result = spikescan.li_forward(input_times, weights, tau_mem=tau_mem, tau_syn=tau_syn, **kw)
        return (result.values * mask,), _MaskedLI(result, None, mask, shapes)
    columns = np.flatnonzero(units > 0.5)
    values = np.zeros((batch, n_out), input_times.dtype)
    result = None
    if columns.size:
        if spec.time_constant_inputs:
            tau_mem, tau_syn = tau_mem[columns], tau_syn[columns]
        result = spikescan.li_forward(input_times, weights[:, columns], tau_mem=tau_mem, tau_syn=tau_syn, **kw)
        values[:, columns] = result.values
    return (values,), _MaskedLI(result, columns, None, shapes)


def _masked_li_backward(spec: LISpec, residuals: _MaskedLI, grad_values):
    (t_shape, t_dtype), (w_shape, w_dtype), *taus, (u_shape, u_dtype) = residuals.inputs
    xp = _validate.array_module(grad_values)
    tc = spec.time_constant_inputs
    if residuals.columns is None:
        grads = spikescan.li_backward(residuals.result, grad_values * residuals.mask, time_constant_grads=tc)
        grad_t, grad_w, grad_taus = grads.input_times, grads.weights, (grads.tau_mem, grads.tau_syn) if tc else ()
    else:
        grad_t, grad_w = xp.zeros(t_shape, t_dtype), xp.zeros(w_shape, w_dtype)
        grad_taus = tuple(xp.zeros(shape, np.float64) for shape, _ in taus)
        if residuals.result is not None:
            columns = residuals.columns
            grads = spikescan.li_backward(residuals.result, grad_values[:, columns], time_constant_grads=tc)
            grad_t = grads.input_times
            grad_w[:, columns] = grads.weights
            for full, part in zip(grad_taus, (grads.tau_mem, grads.tau_syn) if tc else ()):
                full[columns] = part
    grad_taus = tuple(g.astype(dtype) for g, (_, dtype) in zip(grad_taus, taus))
    return (grad_t, grad_w, *grad_taus, xp.zeros(u_shape, u_dtype))


@dataclass(frozen=True)
class PeakSpec:
    """Static arguments of ``spikescan.peak_voltage``."""

    tau_mem: float
    tau_syn: float
    time_constant_inputs: bool = False


class PeakOp:
    """``inputs = (input_times, weights, neurons)`` or ``(input_times, weights, delays, neurons)``, with
    ``(tau_mem, tau_syn)`` ``[n_out]`` before ``neurons`` when ``spec.time_constant_inputs`` (they get a zero
    gradient: the revival objective moves the weights, not the time constants);
    ``outputs = (values,)``: ``values [batch, n_out]`` the peak sub-threshold voltage of each neuron over all time
    (``spikescan.peak_voltage``), computed only for the columns where ``neurons [n_out]`` (float, 0 or 1) is set and
    0 elsewhere. ``neurons`` gets a zero gradient.
    """

    per_sample = True

    @staticmethod
    @batch_indexed
    def forward(spec: PeakSpec, inputs):
        *inputs, neurons = inputs
        inputs, tau_mem, tau_syn = _split_time_constants(spec, tuple(inputs))
        input_times, weights, *delays = inputs
        mask = neurons > 0.5
        result = spikescan.peak_voltage(input_times, weights, delays=delays[0] if delays else None,
                                        tau_mem=tau_mem, tau_syn=tau_syn, neurons=mask)
        taus = (tau_mem * 0, tau_syn * 0) if spec.time_constant_inputs else ()
        return (result.values,), (result, neurons, taus)

    @staticmethod
    def backward(spec: PeakSpec, residuals, grad_values, input_grad=True):
        result, neurons, taus = residuals
        grads = spikescan.peak_voltage_backward(result, grad_values)
        delays = () if grads.delays is None else (grads.delays,)
        return (grads.input_times if input_grad else None, grads.weights, *delays, *taus, neurons * 0)

    @staticmethod
    def output_specs(spec: PeakSpec, inputs):
        input_times, weights = inputs[:2]
        return (((input_times.shape[0], weights.shape[1]), input_times.dtype),)


@dataclass(frozen=True)
class CalibrateSpec:
    """Static arguments of ``spikescan.init.calibrate_scale``."""

    tau_mem: float
    tau_syn: float
    threshold: float
    target: tuple
    max_spikes: int  # the layer's; the calibration's burst bound is spikescan.init.burst_bound of it and the batch
    method: str
    solver: str
    layer_name: str
    warn: bool = True  # False: another process of a data-parallel run warns for this calibration (rank 0)
    # False: no bound on the mean spike count (FirstSpikeReadout, whose later spikes are neither read nor passed on)
    bound_bursts: bool = True
    layer_key: int = 0  # the layer's warning registry (``layer_key``); 0: the module's


# A calibration factor this far from 1 (either way) means initial weights far off the inputs' scale.
CALIBRATION_FAR = 64.0


def _calibration_warnings(spec, input_times, weights, scale, fraction):
    """What the first-batch calibration could not fix, or fixed with a factor far from 1, with its likely cause."""
    low, high = spec.target
    name = f"LIFLayer {spec.layer_name!r}: calibration on the first training batch"
    if not low <= fraction <= high:
        if not np.isfinite(input_times).any():
            cause = ("the batch carries no input spike, so the layer keeps its scale and calibrates on the next "
                     "training batch that does")
        elif not (np.asarray(weights) > 0).any():
            cause = ("its kernel has no positive weight (all zero or negative), which no factor makes fire: start "
                     "from weights with a positive mean (kernel_initializer='auto', the default)")
        else:
            cause = ("the inputs may carry too few spikes for this layer, or the factor the search reached is not "
                     "enough (a threshold far above the weights' scale, time constants short against the inputs' "
                     "spread)" if fraction < low else "the layer fires on too many samples even with weights scaled "
                     "down")
        warn(spec.layer_key, f"{name} reached a firing fraction of {fraction:.3f} (target {low}-{high}) with the "
             f"kernel scaled by {scale:.4g}: {cause}.", SilentLayerWarning if fraction == 0.0 else UserWarning)
    else:
        _warn_squeezed_inputs(spec, input_times)
    if low <= fraction <= high and not 1.0 / CALIBRATION_FAR < scale < CALIBRATION_FAR:
        # No factor in the message: Python's default filter then shows it once per layer.
        warn(spec.layer_key,
            f"{name} scaled the kernel by a factor far from 1 (more than {CALIBRATION_FAR:g}x either way, kept in "
            "kernel_scale): the initial weights are far off the scale these inputs need. The layer computes with "
            "kernel * kernel_scale, so every optimizer step on kernel moves the weights that many times as far as "
            "Adam means to: training may run away (spikes far beyond max_spikes) or barely move. Start from weights of "
            "the inputs' scale (kernel_initializer='auto', the default).", UserWarning)


# Input spikes spread over less than this fraction of the shorter time constant reach a neuron as one volley.
SQUEEZED_WINDOW = 0.01
# One spike slot per channel, spread over less than this fraction of the shorter time constant: most likely a table
# of feature values in [0, 1] read as spike times (Keras adds the trailing axis of 1 to a [batch, features] array).
FEATURE_WINDOW = 0.5


def _warn_squeezed_inputs(spec, input_times):
    """Warn when the first training batch's input spikes span a tiny fraction of the time constants, the signature
    of spike times in another unit than the time constants (seconds against milliseconds: Yin-Yang then trained at
    chance with healthy-looking firing statistics, every neuron firing on every sample or on none)."""
    from spikescan.init import input_statistics

    _, window = input_statistics(input_times)
    shortest = min(spec.tau_mem, spec.tau_syn)
    if 0.0 < window < SQUEEZED_WINDOW * shortest:
        warn(spec.layer_key,
            f"LIFLayer {spec.layer_name!r}: the input spikes of the first training batch span {window:.3g} per sample "
            f"on average, {window / shortest:.2g} of the shorter time constant ({shortest:g}): the neurons receive "
            "each sample as one near-synchronous volley and can hardly tell its spike times apart. Are the spike "
            "times in the unit of the time constants (e.g. seconds against milliseconds)?", UserWarning)
    elif input_times.shape[-1] == 1 and 0.0 < window < FEATURE_WINDOW * shortest:
        # A [batch, features] table of values in [0, 1] trained at chance this way on sklearn's digits, with
        # healthy firing statistics (2 spikes per neuron, none silent) and no other warning.
        warn(spec.layer_key,
            f"LIFLayer {spec.layer_name!r}: each input channel of the first training batch has one spike slot, and "
            f"its spikes span {window:.3g} per sample on average, {window / shortest:.2g} of the shorter time "
            f"constant ({shortest:g}): the neurons can hardly tell these times apart. If they are feature values (a "
            "[batch, features] table read as spike times), encode them over a few time constants first: "
            f"spikescan.encode.latency(spikescan.encode.scale(x)[0], t_max={4 * shortest:g}), then the same "
            "scale's bounds for the test set.", UserWarning)


class CalibrateOp:
    """``inputs = (input_times, weights)`` or ``(input_times, weights, delays)``; ``outputs = (scale,)``, a scalar
    in the dtype of ``weights``: the factor ``spikescan.init.calibrate_scale`` finds for these inputs. Not
    differentiable (the layers apply ``stop_gradient``)."""

    per_sample = False

    @staticmethod
    @batch_indexed
    def forward(spec: CalibrateSpec, inputs):
        from spikescan.init import burst_bound, calibrate_scale

        input_times, weights, *delays = map(_validate.to_host, inputs)  # calibration runs once, on the host
        scale, fraction = calibrate_scale(
            input_times, weights, delays=delays[0] if delays else None,
            tau_mem=spec.tau_mem, tau_syn=spec.tau_syn, threshold=spec.threshold, target=spec.target,
            max_mean_count=burst_bound(input_times, spec.max_spikes) if spec.bound_bursts else None,
            method=spec.method, solver=spec.solver)
        if spec.warn:
            _calibration_warnings(spec, input_times, weights, scale, fraction)
        if isinstance(inputs[1], np.ndarray):
            return (np.asarray(scale, dtype=weights.dtype),), None
        import cupy

        return (cupy.asarray(scale, dtype=weights.dtype),), None

    @staticmethod
    def backward(spec, result, grad, input_grad=True):  # pragma: no cover - always behind stop_gradient
        raise RuntimeError("the calibration factor is not differentiable")

    @staticmethod
    def output_specs(spec: CalibrateSpec, inputs):
        return (((), inputs[1].dtype),)
