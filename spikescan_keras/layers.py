"""Keras 3 layers around spikescan's exact event-driven LIF layer and leaky-integrator readout.

The layers own weights, configuration and serialization; every number is computed by ``spikescan`` through one
custom-gradient op per layer (``spikescan_keras._bridge``). Supported backends: ``torch``, ``jax`` and
``tensorflow``.
"""

from __future__ import annotations

import dataclasses
import sys
import warnings

import keras
import numpy as np
from keras import ops

import spikescan
import spikescan.init
from spikescan import _memory, _validate

from . import _bridge
from ._host import CalibrateOp, CalibrateSpec, LIFOp, LIFSpec, LIOp, LISpec, PeakOp, PeakSpec, layer_key, warn

_METHODS = ("auto", "sequential", "scan")
_SOLVERS = ("newton", "bisection", "analytic")
_READOUTS = ("integral", "max", "final")
# LIReadout(scale="auto"): the logit that one unit-weight input spike at t_max / 2 gives, whatever the readout and the
# time unit. The earlier rule gave 2.4-6.0 to the configurations in milliseconds that the examples and the learning
# panel use; 6 is what it gave examples/yinyang.py (6.04).
AUTO_UNIT_LOGIT = 6.0
_AUTO_SCALE_RULE = 2  # get_config's "auto_scale_rule": 2 since AUTO_UNIT_LOGIT
# get_config's "parameter_rule". 2: the trainable delays and time constants are stored over fixed units of the layer's
# own time scale (``delay_unit``, ``tau_mem_unit``, ``tau_syn_unit``: tau_mem and tau_syn rounded to powers of two),
# so that Adam, which steps every variable by about its learning rate whatever the gradient's scale, moves them at
# rates that do not depend on the time unit. 3: also the LIF layers' weights and trainable thresholds over
# ``voltage_unit`` (the threshold rounded to a power of two), for the same reason in voltage. 1 (files saved before
# rule 2): stored in time units (every unit 1); 2: voltage unit 1. 4 (``FirstSpikeReadout`` only, its
# ``PARAMETER_RULE``): its voltage unit is that of 3 times ``FirstSpikeReadout.VOLTAGE_STEP``. The other layers keep
# writing 3, so that files saved with them load in versions that know only rules 1-3.
_PARAMETER_RULE = 3


def _power_of_two(x):
    """``x`` rounded to the nearest power of two: multiplying and dividing by it is exact."""
    return float(2.0 ** np.round(np.log2(x)))


def _set_parameter_units(layer, rule):
    """``layer.delay_unit``, ``tau_mem_unit``, ``tau_syn_unit`` for ``parameter_rule = rule`` (see
    ``_PARAMETER_RULE``). Set before the layer is built."""
    rule = int(rule)
    if rule not in (1, 2, 3, 4):
        raise ValueError(f"parameter_rule must be 1, 2, 3 or 4, got {rule!r}")
    if getattr(layer, "built", False):
        raise ValueError(f"{type(layer).__name__} {layer.name!r}: parameter units must be set before it is built")
    layer._parameter_rule = rule
    new = rule >= 2
    layer.tau_mem_unit = _power_of_two(layer.tau_mem) if new else 1.0
    layer.tau_syn_unit = _power_of_two(layer.tau_syn) if new else 1.0
    layer.delay_unit = layer.tau_mem_unit
    if hasattr(layer, "threshold"):  # the LIF layers
        step = layer.VOLTAGE_STEP if rule >= 4 else 1.0
        layer.voltage_unit = _power_of_two(layer.threshold) * step if rule >= 3 else 1.0


def _times_unit(variable, unit):
    """The tensor ``variable * unit`` (the variable itself when ``unit`` is 1)."""
    value = ops.convert_to_tensor(variable)
    return value if unit == 1.0 else value * unit


def _check_variable(layer, flag, what):
    """The layer has the variable (``flag``) and is built."""
    if not flag:
        raise ValueError(f"{type(layer).__name__} {layer.name!r} has no {what}")
    if not layer.built:
        raise ValueError(f"{type(layer).__name__} {layer.name!r} is not built yet: call it on an input or build it "
                         "first")


def _assign_over_unit(layer, variable, values, unit, flag, what, label, low, high=None):
    """``variable.assign(values / unit)`` after ``_over_unit``'s checks."""
    variable.assign(_over_unit(layer, variable, values, unit, flag, what, label, low, high))


def _over_unit(layer, variable, values, unit, flag, what, label, low, high=None):
    """``values / unit`` in ``variable``'s dtype, checked: ``values`` in time or voltage units (the unit is a power
    of two: exact), each within ``[low, high]`` (``high=None``: no upper bound), the range the variable's constraint
    keeps: a value outside it would be moved silently at the first training step, so it is refused, as are NaN, inf
    and values beyond the dtype's range. Assigns nothing, so a setter of two variables can check both first."""
    _check_variable(layer, flag, what)
    name = f"{type(layer).__name__} {layer.name!r}"
    try:
        values = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name}: {label} must be an array of real numbers, got {values!r}") from err
    if values.ndim == 0 and len(variable.shape) == 1:  # one value for every unit
        values = np.full(tuple(variable.shape), values)
    if values.shape != tuple(variable.shape):
        raise ValueError(f"{name}: {label} must have shape {tuple(variable.shape)}, got {values.shape}")
    # The constraint's own test, on the stored values in the variable's dtype: a value at its floor read back by the
    # getter (the floor over the unit, rounded to that dtype, times the unit) is set again unchanged.
    dtype = keras.backend.standardize_dtype(variable.dtype)
    with np.errstate(over="ignore"):  # a value beyond the dtype's range becomes inf, refused below
        stored = (values / unit).astype(dtype)
    beyond = np.isfinite(values) & ~np.isfinite(stored)
    if beyond.any():
        idx = tuple(int(i) for i in np.argwhere(beyond)[0])
        raise ValueError(f"{name}: {label} must fit the layer's {dtype} variable (over its unit {unit!r}), got "
                         f"{float(values[idx])!r} at index {idx}")
    idx = _first_outside(stored, low, high, unit)
    if idx is not None:
        limits = f">= {low!r}" if high is None else f"within [{low!r}, {high!r}]"
        raise ValueError(f"{name}: {label} must be {limits} (the range training keeps them in), got "
                         f"{float(values[idx])!r} at index {idx}")
    return stored


def _first_outside(stored, low, high, unit):
    """The index of the first of ``stored`` (values over ``unit``, in their variable's dtype) that is not finite or
    lies outside ``[low, high]`` over ``unit`` in that dtype (the constraint's own test; ``high=None``: no upper
    bound), else None."""
    bad = (~np.isfinite(stored) | (stored < np.asarray(low / unit, stored.dtype))
           | (False if high is None else stored > np.asarray(high / unit, stored.dtype)))
    return tuple(int(i) for i in np.argwhere(bad)[0]) if bad.any() else None


class _Renamed:
    """A former attribute: reading it raises ``AttributeError`` naming what replaced it (its variable now holds the
    values over a unit, so returning it would silently mean something else)."""

    def __init__(self, replacement):
        self.replacement = replacement

    def __set_name__(self, owner, name):
        self.name = name

    def __get__(self, layer, owner=None):
        if layer is None:
            return self
        raise AttributeError(self.message(layer))

    def message(self, layer):
        return (f"{type(layer).__name__}.{self.name} was replaced by {self.replacement} (the variables now hold the "
                "values over the layer's units, README 'Keras layers')")


def _numpy_times_unit(layer, variable, unit, flag, what):
    _check_variable(layer, flag, what)
    return np.asarray(ops.convert_to_numpy(_times_unit(variable, unit)))


_PER_NEURON_TAUS = "trainable_time_constants=True and set_time_constants()"
# Thresholds a Keras layer accepts: its voltage unit (the threshold's power of two) times weights of order one stay
# normal float32 numbers (float32 spans about 1e-38 to 3e38).
_THRESHOLD_RANGE = (1e-30, 1e30)


def _layer_scalar(name, value, per_neuron):
    """A positive finite number; an array or list (one value per neuron) is refused with the route that gives one
    per neuron (``per_neuron``)."""
    if isinstance(value, (list, tuple)) or getattr(value, "ndim", 0) > 0:
        raise ValueError(f"{name} must be a positive finite number (the layer's initial value), got {value!r}; for "
                         f"one value per neuron use {per_neuron}")
    return _validate.positive_scalar(name, value)


def _units(value):
    """A positive int whose per-sample outputs (at least ``units`` float64 values) fit the address space."""
    units = _validate.positive_int("units", value)
    if units > _validate.MAX_RECORDED:
        raise ValueError(f"units must be at most {_validate.MAX_RECORDED} (a sample's outputs larger than the address "
                         f"space), got {units if units.bit_length() <= 256 else _validate._shown(units)}")
    return units


def _keras_get(name, value, get, what):
    """``get(value)`` (``keras.regularizers.get``, ``keras.constraints.get``), its ValueError naming the argument:
    Keras' own, "Could not interpret regularizer identifier: bogus", named none."""
    try:
        return get(value)
    except ValueError as err:
        raise ValueError(f"{name} must be None or a Keras {what} (an instance, a name or a config), got "
                         f"{value!r}") from err


def _regularizer(name, value):
    return _keras_get(name, value, keras.regularizers.get, "regularizer")


def _constraint(name, value):
    return _keras_get(name, value, keras.constraints.get, "constraint")


def _optional_positive(name, value):
    return None if value is None else _validate.positive_scalar(name, value)


@keras.saving.register_keras_serializable(package="spikescan")
class _ArrayInitializer(keras.initializers.Initializer):
    """The values of an initializer argument given as an array (NumPy, or a tensor of the backend): real, finite, 2-d
    at construction, and of the variable's shape when the layer is built. Keras' own array initializer compared the
    array with ``"auto"`` here (an ambiguous truth value) and a wrong shape failed in build without the argument."""

    def __init__(self, value, argument="kernel_initializer"):
        self.argument = argument
        array = np.asarray(ops.convert_to_numpy(value) if ops.is_tensor(value) else value)
        if array.dtype.kind not in "iuf":  # bool, complex, strings, objects
            raise TypeError(f"{argument} given as an array must hold real numbers, got dtype {array.dtype}")
        if array.ndim != 2:
            raise ValueError(f"{argument} given as an array must have 2 dimensions (the weights' shape), got shape "
                             f"{array.shape}")
        self.value = array.astype(np.float64)  # a copy: later changes to the caller's array do not reach the layer
        bad = ~np.isfinite(self.value)
        if bad.any():
            raise ValueError(f"{argument} given as an array must be finite, got {_validate._first_bad(np, array, bad)}")

    def __call__(self, shape, dtype=None):
        if tuple(int(n) for n in shape) != self.value.shape:
            raise ValueError(f"{self.argument} given as an array must have the shape of the variable it initializes, "
                             f"{tuple(int(n) for n in shape)}, got shape {self.value.shape}")
        return ops.cast(self.value, dtype or "float32")

    def get_config(self):
        return {"value": self.value.tolist(), "argument": self.argument}


def _initializer(name, value):
    if value is None:  # keras.initializers.get(None) is None: an LIFLayer crashed in build, an LIReadout took Glorot
        raise ValueError(f"{name} must be 'auto' or a Keras initializer, got None")
    if isinstance(value, (np.ndarray, np.generic)) or ops.is_tensor(value):
        return _ArrayInitializer(value, name)
    if isinstance(value, str) and value == "auto":
        return "auto"
    try:
        return keras.initializers.get(value)
    except ValueError as err:
        raise ValueError(f"{name} must be 'auto' or a Keras initializer, got {value!r}") from err


def _serialize_initializer(value):
    return value if isinstance(value, str) and value == "auto" else keras.initializers.serialize(value)


class _Scaled:
    """The values of ``initializer`` times ``factor`` (a layer's internal initializer; never serialized)."""

    def __init__(self, initializer, factor):
        self.initializer, self.factor = keras.initializers.get(initializer), factor

    def __call__(self, shape, dtype=None):
        values = self.initializer(shape, dtype=dtype)
        return values if self.factor == 1.0 else values * ops.cast(self.factor, values.dtype)


class _CheckedDelays:
    """The delays of ``initializer`` (in time units) over ``layer.delay_unit``, each checked to lie in ``[0,
    max_delay]`` (the range ``DelayRange`` keeps): a negative one failed only at the first call, in spikescan, without
    naming the initializer; one above ``max_delay`` was clipped silently by the first optimizer step."""

    def __init__(self, layer, initializer, argument):
        self.layer, self.argument = layer, argument
        self.scaled = _Scaled(initializer, 1.0 / layer.delay_unit)

    def __call__(self, shape, dtype=None):
        values = self.scaled(shape, dtype=dtype)
        stored = np.asarray(ops.convert_to_numpy(values))
        idx = _first_outside(stored, 0.0, self.layer.max_delay, self.layer.delay_unit)
        if idx is not None:
            limits = ">= 0" if self.layer.max_delay is None else f"within [0, max_delay={self.layer.max_delay!r}]"
            raise ValueError(f"{type(self.layer).__name__} {self.layer.name!r}: {self.argument} must give delays "
                             f"{limits} (the range training keeps them in), got "
                             f"{float(stored[idx]) * self.layer.delay_unit!r} at index {idx}")
        return values


def _n_in(layer, input_shape):
    """The number of input channels of ``input_shape`` ``[batch, channels, max_spikes]``. The layers declare no input
    spec before they are built, so that a wrong shape gets this message (what the axes are, how a table becomes
    spike times) rather than Keras' generic "expected ndim=3"; once built, the spec holds ``ndim`` and ``n_in``."""
    shape = tuple(input_shape)
    if len(shape) != 3 or shape[1] is None:
        hint = ""
        if len(shape) == 2:
            hint = (": a table of features [batch, features] is encoded into spike times first, e.g. "
                    "spikescan.encode.latency(spikescan.encode.scale(x)[0], t_max=..., symmetric=True)")
        elif len(shape) > 3:
            hint = (": flatten the channel axes first, x.reshape(len(x), -1, x.shape[-1]) (an image batch "
                    "[batch, h, w] is a table: x.reshape(len(x), -1), then an encoder of spikescan.encode)")
        raise ValueError(f"{type(layer).__name__} {layer.name!r} expects spike times [batch, channels, max_spikes] "
                         f"(ascending along the last axis, +inf padded) with a known number of channels, got input "
                         f"shape {shape}{hint}")
    return int(shape[1])


def _build_kernel(layer, input_shape, unit=1.0):
    """Add ``layer.kernel [n_in, units]`` (its initializer, or the layer's ``"auto"`` rule, over ``unit``; its
    regularizer) and return ``n_in``."""
    n_in = _n_in(layer, input_shape)
    # A kernel (and recurrent kernel) beyond the memory: a MemoryError naming the sizes, not the backend's allocator
    # failing inside add_weight (units=10**12 was a RuntimeError of torch's CPU allocator).
    recurrent = getattr(layer, "recurrent", False)
    parts = {"kernel": 4 * n_in * layer.units, "recurrent kernel": 4 * layer.units ** 2 if recurrent else 0}
    _memory.check(f"{type(layer).__name__} {layer.name!r} (n_in={n_in}, units={layer.units})", parts, np,
                  "lower units")
    init = layer.kernel_initializer
    init = layer._auto_kernel_initializer(n_in) if isinstance(init, str) and init == "auto" else init
    layer.kernel = layer.add_weight(
        name="kernel", shape=(n_in, layer.units), initializer=init if unit == 1.0 else _Scaled(init, 1.0 / unit),
        regularizer=layer.kernel_regularizer, constraint=layer.kernel_constraint)
    return n_in


def _mean(x, axis=None):
    """``ops.mean`` in ``x``'s own precision: on the torch and jax backends Keras' mean of a float64 tensor comes out
    rounded to float32, which made a float64 model's added losses (and their gradients) float32-accurate."""
    shape = ops.shape(x)
    count = 1
    for a in (range(len(shape)) if axis is None else (axis,)):
        count = count * shape[a]
    return ops.sum(x, axis=axis) / ops.cast(count, x.dtype)


@keras.saving.register_keras_serializable(package="spikescan")
class SpikeCountRegularizer(keras.regularizers.Regularizer):
    """Differentiable stand-in for a spike-count penalty, applied to a spike tensor ``times [batch, n, max_spikes]``::

        penalty = strength * mean_b sum_{i, m} exp(-times[b, i, m] / tau)

    Each recorded spike contributes ``exp(-t / tau)`` in ``(0, 1]`` (``+inf`` padding contributes 0, with a zero
    gradient). A plain spike count is piecewise constant in the weights, so its gradient is zero almost everywhere;
    this sum is smooth in the spike times and its gradient ``-strength / tau * exp(-t / tau)`` pushes spikes later,
    until a neuron that is pushed past its last threshold crossing stops firing. For ``t << tau`` the penalty is
    close to ``strength`` times the number of spikes per sample; choose ``tau`` of the order of the task's duration.

    Args:
        strength: non-negative weight of the penalty.
        tau: positive time scale, in the unit of the spike times.
    """

    def __init__(self, strength, tau):
        self.strength = _validate.nonnegative_scalar("strength", strength)
        self.tau = _validate.positive_scalar("tau", tau)

    def __call__(self, times):
        return self.strength * _mean(ops.sum(ops.exp(-times / self.tau), axis=(1, 2)))

    def get_config(self):
        return {"strength": self.strength, "tau": self.tau}


@keras.saving.register_keras_serializable(package="spikescan")
class DelayRange(keras.constraints.Constraint):
    """Clips delays to ``[0, max_delay]`` (``[0, inf)`` when ``max_delay`` is None) after every optimizer step.

    A layer applies it to the values it stores, the delays over its ``delay_unit`` (``layer.delay_values()`` gives
    them in time units), so ``layer.delay_kernel.constraint.max_delay`` reads ``max_delay / delay_unit``."""

    def __init__(self, max_delay=None):
        self.max_delay = _optional_positive("max_delay", max_delay)

    def __call__(self, w):
        return ops.clip(w, 0.0, np.inf if self.max_delay is None else self.max_delay)

    def get_config(self):
        return {"max_delay": self.max_delay}


@keras.saving.register_keras_serializable(package="spikescan")
class PositiveFloor(keras.constraints.Constraint):
    """Keeps trainable neuron parameters (time constants, thresholds) at or above ``min_value`` (clipping after
    each optimizer step): the dynamics need them positive, and a step that would cross zero stops at the floor."""

    def __init__(self, min_value):
        self.min_value = _validate.positive_scalar("min_value", min_value)

    def __call__(self, w):
        return ops.maximum(w, self.min_value)

    def get_config(self):
        return {"min_value": self.min_value}


def apply_constraints(model, values=None):
    """Each trainable variable's constraint, as Keras' optimizers apply it after every step, for a training loop of
    your own, which knows nothing of Keras constraints: call it after each optimizer step. Without it a step can
    take delays below 0 (or above ``max_delay``) and trainable thresholds or time constants below their floors, and
    the next forward refuses them (or, above ``max_delay``, runs with delays the layer was not configured for).

    Args:
        model: a Keras model or layer (its ``trainable_variables``), or a list of Keras variables.
        values: ``None`` to assign each constrained variable in place (a ``torch.optim`` loop over
            ``model.parameters()``; eager code), or one array per trainable variable, in their order (a pure
            functional loop: ``model.stateless_call`` with ``jax.jit``), which are returned constrained and assigned
            to nothing (works inside ``jax.jit``).

    Returns:
        With ``values``: the list of arrays, each constrained where its variable has a constraint. Without: the
        number of variables whose constraint was applied.
    """
    variables = getattr(model, "trainable_variables", model)
    try:
        variables = list(variables)
    except TypeError:
        raise TypeError(f"apply_constraints takes a Keras model or layer, or a list of Keras variables, got "
                        f"{type(model).__name__}") from None
    if values is not None:
        values = list(values)
        if len(values) != len(variables):
            raise ValueError(f"apply_constraints: values must hold one array per trainable variable "
                             f"({len(variables)}), got {len(values)}")
        return [value if getattr(variable, "constraint", None) is None else variable.constraint(value)
                for variable, value in zip(variables, values)]
    updates = [(variable, variable.constraint(variable)) for variable in variables
               if getattr(variable, "constraint", None) is not None]
    if keras.backend.backend() == "jax":
        import jax

        if any(isinstance(value, jax.core.Tracer) for _, value in updates):
            raise TypeError("apply_constraints(model) assigns the model's variables, which cannot happen inside "
                            "jax.jit or another transform (the variables would hold its placeholders): constrain "
                            "the arrays of a functional loop instead, trainable = "
                            "spikescan_keras.apply_constraints(model, trainable)")
    for variable, value in updates:
        variable.assign(value)
    return len(updates)


def _learns_from(layer, inputs, training):
    """Whether a call updates the training state (calibration, firing statistics, revival objective): a training
    call, unless its batch is known to be empty (nothing to calibrate on, count or revive; the mean over no sample
    would be NaN). In data-parallel training every rank takes part, since those use the global batch."""
    if not training:
        return False
    return layer._data_parallel is not None or inputs.shape[0] != 0  # None (unknown) or a positive size


# Keras losses that read the model's outputs as probabilities unless told otherwise (from_logits=False).
_PROBABILITY_LOSSES = ("sparse_categorical_crossentropy", "categorical_crossentropy", "binary_crossentropy",
                       "categorical_focal_crossentropy", "binary_focal_crossentropy")


# The crossentropies that read probabilities unless given from_logits=True.
_PROBABILITY_LOSS_CLASSES = tuple(getattr(keras.losses, name) for name in (
    "SparseCategoricalCrossentropy", "CategoricalCrossentropy", "BinaryCrossentropy", "CategoricalFocalCrossentropy",
    "BinaryFocalCrossentropy") if hasattr(keras.losses, name))


def _probability_loss(loss):
    """A description of ``loss`` when it reads its inputs as probabilities (a crossentropy with ``from_logits``
    false: a string or class name, a loss function or a ``keras.losses.Loss``), else None."""
    if isinstance(loss, (list, tuple)) and len(loss) == 1:
        loss = loss[0]
    if isinstance(loss, str):
        try:
            resolved = keras.losses.get(loss)
        except (ValueError, TypeError):
            return None
        if isinstance(resolved, type):
            resolved = resolved()
        return repr(loss) if _probability_loss(resolved) else None
    if isinstance(loss, _PROBABILITY_LOSS_CLASSES):
        try:
            from_logits = loss.get_config().get("from_logits")
        except (NotImplementedError, TypeError):
            return None
        return f"{type(loss).__name__}(from_logits=False)" if from_logits is False else None
    name = getattr(loss, "__name__", "")
    return f"keras.losses.{name}" if name in _PROBABILITY_LOSSES else None


def _warn_probability_loss(layer):
    """Once per layer, on its first training call: warn when the model being trained compiled a loss that reads
    probabilities and this layer's logits are the model's output (a string crossentropy, ``from_logits=False``:
    Yin-Yang stayed at chance on every backend, predicting one class). The model is the ``self`` of the running
    ``train_step`` (``fit``, ``train_on_batch``); a custom loop, or a model whose output cannot be traced to the layer
    (a subclassed one, a nested model), is left alone."""
    layer._loss_checked = True
    frame, model = sys._getframe(1), None
    for _ in range(80):
        if frame is None:
            return
        owner = frame.f_locals.get("self") if frame.f_code.co_name == "train_step" else None
        if isinstance(owner, keras.Model):
            model = owner
            break
        frame = frame.f_back
    if model is None:
        return
    if isinstance(model, keras.Sequential):
        is_output = bool(model.layers) and model.layers[-1] is layer
    else:
        outputs = keras.tree.flatten(getattr(model, "outputs", None) or [])
        is_output = len(outputs) == 1 and getattr(getattr(outputs[0], "_keras_history", None), "operation",
                                                  None) is layer
    described = _probability_loss(getattr(model, "loss", None)) if is_output else None
    if described:
        warn(getattr(layer, "_warn_key", 0),
             f"{type(layer).__name__} {layer.name!r} outputs logits (unnormalised scores), but the model's loss "
             f"{described} reads its outputs as probabilities (from_logits=False): training stalls near chance. "
             "Compile with keras.losses.SparseCategoricalCrossentropy(from_logits=True) (or CategoricalCrossentropy("
             "from_logits=True) for one-hot labels), or add a keras.layers.Softmax() after the layer.", UserWarning,
             stacklevel=3)


def _add_loss(layer, loss):
    """``layer.add_loss`` in Keras' float dtype (``keras.config.floatx()``, that of the compiled loss): a float64
    layer's term would otherwise meet the float32 loss in Keras' sum, which TensorFlow refuses."""
    layer.add_loss(ops.cast(loss, keras.config.floatx()))


def _no_spike_count_activity(layer_name, kwargs):
    """``kwargs``, refusing a ``SpikeCountRegularizer`` given as Keras' ``activity_regularizer``: Keras divides an
    activity penalty by the batch size, on top of the regularizer's own mean over the batch, so it would act
    ``batch`` times weaker than asked (and on a readout's logits it means nothing)."""
    if isinstance(kwargs.get("activity_regularizer"), SpikeCountRegularizer):
        where = ("pass it as spike_count_regularizer=" if layer_name == "LIFLayer" else
                 "it applies to spike times: pass it to the LIFLayer before, as spike_count_regularizer=")
        raise TypeError(f"{layer_name}: activity_regularizer=SpikeCountRegularizer(...) would be divided by the batch "
                        f"size a second time by Keras; {where}")
    return kwargs


def _exact_dtype(layer_name, kwargs):
    """``kwargs`` with a dtype policy that computes in float32 or float64: exact spike times need it (near 20 ms,
    float16 resolves a spike time to 1/64 ms and bfloat16 to 1/8 ms). Under a float16 or bfloat16 global policy
    (``keras.mixed_precision.set_global_policy("mixed_float16")``, for the other layers of a model) the layer
    computes and keeps its weights in float32, and Keras casts its inputs there; an explicit ``dtype`` that computes
    in another precision is a ``ValueError`` naming it."""
    dtype = kwargs.get("dtype")
    policy = keras.config.dtype_policy() if dtype is None else keras.dtype_policies.get(dtype)
    if policy.compute_dtype in ("float32", "float64"):
        return kwargs
    if dtype is not None:
        raise ValueError(f"{layer_name}: dtype={dtype!r} computes in {policy.compute_dtype}; spike times are exact "
                         "only in float32 or float64 (pass dtype='float32' or 'float64', or leave it out to compute in "
                         "float32 under a mixed-precision global policy)")
    return {**kwargs, "dtype": "float32"}


def _check_float64_backend(layer_name, compute_dtype):
    """jax without 64-bit mode truncates float64 arrays to float32 (with a generic warning of its own): say so
    for the layer, with the fix."""
    if compute_dtype != "float64" or keras.backend.backend() != "jax":
        return
    import jax

    if not jax.config.jax_enable_x64:
        warnings.warn(f"{layer_name}: float64 on the jax backend needs jax's 64-bit mode; without it jax computes this "
                      "layer in float32. Set JAX_ENABLE_X64=1 in the environment (or call "
                      "jax.config.update('jax_enable_x64', True) before making any array)", UserWarning, stacklevel=4)


def _check_input_precision(layer, inputs):
    """Spike times that arrive in float16 or bfloat16 were already rounded by the layer before (a ``Concatenate``
    under a mixed-precision policy): near 20 ms to 1/64 ms (float16) or 1/8 ms (bfloat16). Keras' cast to the
    layer's float32 cannot undo that, so it is a warning (once per layer) that names the fix."""
    dtype = getattr(inputs, "dtype", None)
    if dtype is None or getattr(layer, "_warned_low_precision", False):
        return
    dtype = keras.backend.standardize_dtype(dtype)
    if dtype in ("float16", "bfloat16"):
        layer._warned_low_precision = True
        warn(getattr(layer, "_warn_key", 0),
             f"{type(layer).__name__} {layer.name!r}: its input spike times arrive in {dtype}, rounded by the layer "
             "before it (near 20 ms float16 keeps 1/64 ms, bfloat16 1/8 ms); the cast to "
             f"{layer.compute_dtype} cannot restore them. Give the layers that carry spike times "
             "dtype='float32' (e.g. keras.layers.Concatenate(axis=1, dtype='float32')) under a "
             "mixed-precision policy", UserWarning, stacklevel=3)


def _check_parameter_precision(layer):
    """On torch, ``model.double()`` (or ``.half()``, ``.to(dtype)``) converts the variables' tensors but not the
    layer's Keras dtype, in which it computes: the parameters' precision would be dropped without a word (once per
    layer, a warning that names the fix)."""
    kernel = getattr(layer, "kernel", None) if layer.built else None
    if kernel is None or getattr(layer, "_warned_parameter_dtype", False) or keras.backend.backend() != "torch":
        return
    held = keras.backend.standardize_dtype(kernel.value.dtype)
    if held == keras.backend.standardize_dtype(kernel.dtype):
        return
    layer._warned_parameter_dtype = True
    warn(getattr(layer, "_warn_key", 0),
         f"{type(layer).__name__} {layer.name!r}: its parameters were converted to {held} (torch's module.double(), "
         f".half() or .to(dtype)), but it computes in its Keras dtype {layer.compute_dtype}, to which they are cast. "
         "For float64 build the layers with dtype='float64' (or under a float64 dtype policy) instead", UserWarning,
         stacklevel=3)


class _SpikeTimesLayer(keras.layers.Layer):
    """A layer whose input is spike times: warns (``_check_input_precision``) when they arrive already rounded to
    16 bits, before Keras casts them to the layer's dtype, and (``_check_parameter_precision``) when torch converted
    its parameters to another dtype than the one it computes in."""

    def __call__(self, inputs, *args, **kwargs):
        _check_input_precision(self, inputs)
        _check_parameter_precision(self)
        return super().__call__(inputs, *args, **kwargs)

    def __getattr__(self, name):
        # Python answers the AttributeError of a _Renamed attribute by calling __getattr__, which on torch is the
        # module's and would replace the message with a bare "has no attribute".
        renamed = getattr(type(self), name, None)
        if isinstance(renamed, _Renamed):
            raise AttributeError(renamed.message(self))
        lookup = getattr(super(), "__getattr__", None)  # torch's module; none on jax and tensorflow
        if lookup is None:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        return lookup(name)


@keras.saving.register_keras_serializable(package="spikescan")
class LIFLayer(_SpikeTimesLayer):
    """Dense layer of current-based LIF neurons with exact spike times and exact gradients (no surrogates).

    Input and output are spike tensors ``[batch, neurons, max_spikes]``: spike times ascending along the last axis,
    padded with ``+inf``, in any time unit shared with ``tau_mem``, ``tau_syn`` and ``max_delay``. Input
    ``[batch, n_in, max_in]`` gives output ``[batch, units, max_spikes]``. The dynamics and gradients are those of
    ``spikescan.lif_forward`` / ``spikescan.lif_backward`` (DESIGN.md sections 1-6)::

        tau_mem dV/dt = -V + I,  tau_syn dI/dt = -I,  spike (t, j) adds kernel[j, i] to I at t + delays[j, i],
        V = threshold  ->  output spike, V <- 0.

    Weights: ``kernel [n_in, units]``; with ``delays=True`` also the delays ``[n_in, units]`` (``delay_values()``),
    kept in ``[0, max_delay]`` by the ``DelayRange`` constraint (clipping after each optimizer step). With
    ``trainable_time_constants=True`` also ``tau_mem`` and ``tau_syn`` ``[units]`` (``time_constants()``), one per
    neuron, initialised to the ``tau_mem`` and ``tau_syn`` arguments, trained by their exact gradients
    (``spikescan.lif_backward``'s ``tau_mem`` / ``tau_syn``) and kept at or above ``min_time_constant`` (default: 5%
    of the smaller argument) by ``PositiveFloor``.

    Time parameters are stored over fixed units of the layer's own time scale: the variable ``delay_kernel`` holds
    the delays over ``delay_unit`` (``recurrent_delay_kernel`` the recurrent ones), ``tau_mem_kernel`` and
    ``tau_syn_kernel`` the time constants over ``tau_mem_unit`` and ``tau_syn_unit`` (``tau_mem`` and ``tau_syn``
    rounded to powers of two; ``delay_unit`` is ``tau_mem``'s). Adam steps every variable by about its learning
    rate whatever the gradient's scale, so variables in time units moved 1000 times faster for a model in seconds
    than for the same model in milliseconds (in seconds, trainable time constants diverged or ran away; delays
    learned less); over these units the same model trains the same in any time unit. Models saved before load with
    their variables in time units (every unit 1). With
    ``trainable_threshold=True`` also ``threshold [units]`` (``thresholds()``, ``set_thresholds()``), from the
    ``threshold`` argument, kept at or above ``min_threshold`` (default 5% of it). The first-batch calibration uses
    the initial values; the revival objective reads the current ones and moves the weights only.

    Voltage parameters likewise, over ``voltage_unit`` (``threshold`` rounded to a power of two): the layer computes
    with the weights ``kernel * kernel_scale``, where ``kernel_scale`` starts at ``voltage_unit`` (the calibration
    multiplies it by the factor it finds; ``kernel_initializer`` gives the weights, the variable starts at them over
    ``voltage_unit``; ``kernel_regularizer`` sees the variable); the variable ``threshold_kernel`` holds the
    trainable thresholds over it, and the ``"auto"`` ``recurrent_kernel_scale`` includes it. A neuron with reset to
    0 computes the same spikes when its threshold and its weights are multiplied by one factor, and over this unit
    the same model trains alike at any threshold (threshold 20 in millivolts against 1: without it Adam moved the
    weights 20 times slower relative to their size; README "Voltage units"). Models saved before (``parameter_rule``
    2 or 1) load with ``voltage_unit = 1``.

    Recurrent (``recurrent=True``): also ``recurrent_kernel [units, units]``; a spike of neuron ``k`` at ``t`` adds
    ``R[k, i] = recurrent_kernel[k, i] * recurrent_kernel_scale`` (``recurrent_weights()``) to neuron ``i``'s
    current at ``t`` (after ``k``'s own reset for ``i == k``), or at ``t + recurrent_delays[k, i]`` with
    ``recurrent_delays=True`` (``recurrent_delay_values()`` ``[units, units]``, in ``[0, max_delay]``). Every spike
    propagates, recorded or not. The fixed factor ``recurrent_kernel_scale`` (``recurrent_scale``) sets how fast
    the recurrent weights learn against the input kernel. Exact forward and gradients
    (``spikescan.lif_forward(recurrent_weights=...)``, README "Recurrent layers"; trainable time constants too, on
    CPU and CUDA tensors). The calibration and the revival objective look at the input drive only (the recurrent
    input starts near zero on average).

    Capped spikes: only the first ``max_spikes`` spikes of a neuron are passed on (its dynamics stay exact). The
    non-trainable variable ``capped_spikes`` (int32) accumulates, over every call since it was built, the number of
    spikes fired but not recorded, and a ``CappedSpikesWarning`` gives their share of the batch's spikes as a band
    (under 1%, 1-2%, ..., 50% or more); Python's default warning filter shows it once per layer and band, so a share
    rising into a band not shown before shows again.

    Args:
        units: number of LIF neurons.
        tau_mem, tau_syn: positive membrane and synaptic time constants (scalars).
        threshold: positive firing threshold (the initial one with ``trainable_threshold=True``).
        max_spikes: spikes recorded per neuron (last axis of the output).
        delays: learn one non-negative delay per synapse.
        chunk_size, solver, method, max_total_spikes: passed to ``spikescan.lif_forward`` (a neuron firing more
            than ``max_total_spikes`` times on one sample raises ``spikescan.RunawayFiringError``).
        kernel_initializer: a Keras initializer or ``"auto"``: ``Normal(mean=mu, stddev=mu * max(1, sqrt(n_in)))``
            with ``mu`` from ``spikescan.init.mean_weight``: the expected peak voltage is 1.5 thresholds for
            ``input_spikes`` input spikes per sample spread over ``input_window`` (by default one near-synchronous
            spike per input channel). The spread makes a neuron's summed input weight (``n_in`` independent
            weights) differ from neuron to neuron by as much as its mean whatever ``n_in`` (at least
            ``stddev = mu``): neurons start selective for different inputs instead of nearly alike, a typical one
            fires once or a few times and some stay silent. With ``calibrate`` on, the first training batch
            corrects the scale anyway.
        input_spikes, input_window: what the ``"auto"`` rule assumes of the inputs: expected spikes per sample (all
            channels; ``None``: one per channel) and the duration they are spread over (``0``: near-synchronous).
        delay_initializer: a Keras initializer or ``"auto"``: uniform on ``[0, max_delay]`` when ``max_delay`` is
            set (arrival times spread over the delay range), else zeros.
        max_delay: upper bound of the delays (None: unbounded), the recurrent ones included.
        recurrent: add recurrent connections within the layer (``recurrent_kernel``).
        recurrent_delays: learn one non-negative delay per recurrent connection.
        recurrent_initializer: a Keras initializer or ``"auto"``: ``Normal(0, mu / 2)`` with ``mu`` the
            ``"auto"`` input rule's mean weight for ``units`` inputs spiking once each (``spikescan.init.mean_weight``):
            balanced excitation and inhibition, each recurrent input a fraction of what drives a neuron to threshold.
            In a layer of very few units (2 or 3) that fraction is large: about one draw in ten gives a neuron a
            self-connection strong enough to fire without end, a ``RunawayFiringError`` on the first call; draw
            again (another seed) or pass a narrower initializer.
        recurrent_delay_initializer: a Keras initializer or ``"auto"`` (uniform on ``[0, max_delay]``, or zeros).
        recurrent_regularizer: optional Keras regularizer of the recurrent weights ``R``.
        recurrent_scale: ``"auto"`` or a positive number: the factor ``recurrent_kernel_scale`` between the
            variable ``recurrent_kernel`` and the weights ``R`` it stands for (the initializer and the regularizer
            see ``R``; the optimizer steps ``recurrent_kernel``). ``"auto"``: ``voltage_unit`` times the ratio of the
            ``"auto"`` rules' mean weights, ``mean_weight(units) / mean_weight(n_in, input_spikes, input_window)``
            (``spikescan.init.mean_weight``) rounded to a power of two, so that a step of the same size on ``kernel`` or
            ``recurrent_kernel`` moves a neuron's drive by about as much. Without it (``1.0``), a layer with few inputs
            and many neurons trains its recurrent weights many times faster, relative to the drive they carry, than its
            input kernel under Adam, and training varies much more from seed to seed (README, "Recurrent layers"). Files
            saved before this option load with ``1.0``, as they were trained.
        kernel_regularizer: optional Keras regularizer of ``kernel``.
        kernel_constraint: optional Keras constraint of ``kernel``, applied after each optimizer step to the variable
            (the weights over ``kernel_scale``, a positive factor): sign constraints (``keras.constraints.NonNeg()``
            for excitatory-only weights) hold for the weights themselves; norm bounds apply to the stored values.
        spike_count_regularizer: optional ``SpikeCountRegularizer`` applied to the output spikes (added to the
            model's losses on every call, as Keras' activity regularizers are: part of ``val_loss`` too).
        calibrate: ``(low, high)`` fractions, or ``None`` to switch off. On its first training call (the first
            batch of ``fit``) the layer measures the fraction of (sample, neuron) pairs that fire; outside
            ``[low, high]``, or when the neurons fire more than ``spikescan.init.burst_bound`` spikes on average
            (``min(max_spikes / 2, max(4, spikes per active input channel))``: bursts that the recording would cap
            or that the input does not call for), it searches a factor that fixes it
            (``spikescan.init.calibrate_scale``) and multiplies the non-trainable weight ``kernel_scale`` by it (which
            starts at ``voltage_unit``): the layer computes with ``kernel * kernel_scale``, saved with the model.
            Layers calibrate in order, each on the spikes of the calibrated layers before it. A frozen layer
            (``trainable = False``) does not calibrate: like Keras' frozen ``BatchNormalization`` it keeps
            computing the function it had (with its ``kernel_scale`` as it is). Default ``(0.3, 0.9)``.
        silence_penalty: strength of the revival objective (``0`` switches it off). On a training batch, for the
            set ``S`` of neurons that fire on no sample of the batch, the layer adds to the model's loss::

                silence_penalty / (threshold * units) * sum_{i in S} mean_b [(threshold - V*_bi) + h(Q_bi)]

            ``V*_bi >= 0`` is the peak over all time of neuron ``i``'s voltage on sample ``b``
            (``spikescan.peak_voltage``: exact, closed form per gap; for a neuron that does not fire it is its true
            peak, below threshold), and ``Q_bi = sum_j n_bj kernel[j, i]`` is the summed weight of all the input
            spikes the neuron receives (``n_bj`` spikes from input ``j``; ``Q tau_syn`` is the area under its
            voltage), with ``h(Q) = threshold q / (1 + q)``, ``q = relu(-Q) / threshold``. The peak term pulls
            neurons that rise but stay below threshold up to it; the net-drive term reaches the neurons whose
            voltage never rises above rest (there ``V* = 0`` has no gradient, and ``Q <= 0``), with a bounded value
            and a gradient that decays only like ``1 / q^2``. Each dead neuron adds less than ``2 silence_penalty /
            units``; the objective is zero when every neuron fires somewhere in the batch, and its exact gradient
            raises the drive of dead neurons, where the spike-time gradients are zero. A frozen layer
            (``trainable = False``) adds no such term: it keeps its function, and its objective would only push the
            layers before it. Default ``1.0``. On a GPU,
            ``peak_voltage`` runs on the device; for a layer with delays it computes only the dead neurons, so the
            number of them is read on the host every training step (no spike or weight data moves).

    Firing statistics: the non-trainable float32 weights ``silent_fraction`` (fraction of (sample, neuron) pairs
    without a spike), ``dead_fraction`` (fraction of neurons silent on every sample) and ``spikes_per_neuron`` (mean
    spike count, recorded or not) hold the values of the last training batch; ``spikescan_keras.FiringMonitor``
    puts them into ``fit``'s logs. A layer that fires no spike at all on a training batch issues a
    ``SilentLayerWarning`` naming it.

    Data-parallel training (``spikescan_keras.distributed``): the calibration, the dead neurons of the revival
    objective, the firing statistics and ``capped_spikes`` are those of the global batch, as in one process.
    """

    # The voltage unit's factor over the threshold rounded to a power of two (parameter_rule 4; a power of two).
    VOLTAGE_STEP = 1.0
    # The parameter_rule a new layer of this class uses and saves (see _PARAMETER_RULE).
    PARAMETER_RULE = _PARAMETER_RULE
    # Whether a neuron silent on every sample of a training batch gets no gradient without the revival objective
    # (silence_penalty=0), which a DeadNeuronsWarning then says; FirstSpikeReadout's silent neurons learn through V*.
    WARNS_DEAD = True

    delays = _Renamed("delay_values() / set_delay_values()")
    recurrent_delays = _Renamed("recurrent_delay_values() / set_recurrent_delay_values()")
    tau_mem_per_neuron = _Renamed("time_constants()[0] / set_time_constants()")
    tau_syn_per_neuron = _Renamed("time_constants()[1] / set_time_constants()")
    threshold_per_neuron = _Renamed("thresholds() / set_thresholds()")

    def __init__(self, units, *, tau_mem, tau_syn, threshold=1.0, max_spikes, delays=False, chunk_size=128,
                 solver="newton", method="auto", kernel_initializer="auto", delay_initializer="auto", max_delay=None,
                 kernel_regularizer=None, kernel_constraint=None, spike_count_regularizer=None, calibrate=(0.3, 0.9),
                 silence_penalty=1.0, input_spikes=None, input_window=0.0, max_total_spikes=10_000,
                 trainable_time_constants=False, min_time_constant=None, trainable_threshold=False, min_threshold=None,
                 recurrent=False, recurrent_delays=False, recurrent_initializer="auto",
                 recurrent_delay_initializer="auto", recurrent_regularizer=None, recurrent_scale="auto", **kwargs):
        super().__init__(**_exact_dtype("LIFLayer", _no_spike_count_activity("LIFLayer", kwargs)))
        _check_float64_backend("LIFLayer", self.compute_dtype)
        self.supports_jit = _bridge.supports_jit()
        for name, value in (("recurrent", recurrent), ("recurrent_delays", recurrent_delays)):
            if not isinstance(value, bool):
                raise TypeError(f"{name} must be True or False, got {value!r}")
        if recurrent_delays and not recurrent:
            raise ValueError("recurrent_delays=True needs recurrent=True")
        self.recurrent = recurrent
        self.use_recurrent_delays = recurrent_delays
        self.recurrent_initializer = _initializer("recurrent_initializer", recurrent_initializer)
        self.recurrent_delay_initializer = _initializer("recurrent_delay_initializer", recurrent_delay_initializer)
        self.recurrent_regularizer = _regularizer("recurrent_regularizer", recurrent_regularizer)
        if not (isinstance(recurrent_scale, str) and recurrent_scale == "auto"):
            recurrent_scale = _validate.positive_scalar("recurrent_scale", recurrent_scale)
            if not recurrent:
                raise ValueError(f"recurrent_scale={recurrent_scale!r} needs recurrent=True")
        self.recurrent_scale = recurrent_scale
        self.recurrent_kernel_scale = None  # the resolved factor, set by build
        self.units = _units(units)
        self.tau_mem = _layer_scalar("tau_mem", tau_mem, _PER_NEURON_TAUS)
        self.tau_syn = _layer_scalar("tau_syn", tau_syn, _PER_NEURON_TAUS)
        self.threshold = _layer_scalar("threshold", threshold, "trainable_threshold=True and set_thresholds()")
        if not _THRESHOLD_RANGE[0] <= self.threshold <= _THRESHOLD_RANGE[1]:
            raise ValueError(f"threshold must be within [{_THRESHOLD_RANGE[0]:g}, {_THRESHOLD_RANGE[1]:g}] for a Keras "
                             f"layer (its weights, scaled by its voltage unit, live in float32 variables), got "
                             f"{self.threshold!r}; express the voltages in another unit")
        self.max_spikes = _validate.max_spikes(max_spikes)  # lif_forward's bound, here rather than at the first call
        if self.units * self.max_spikes > _validate.MAX_RECORDED:  # a sample's output spike times
            raise ValueError(f"units * max_spikes must be at most {_validate.MAX_RECORDED} (a sample's output spike "
                             f"times larger than the address space), got units={self.units}, "
                             f"max_spikes={self.max_spikes}")
        self.max_total_spikes = _validate.positive_int("max_total_spikes", max_total_spikes)
        if not isinstance(delays, bool):
            raise TypeError(f"delays must be True or False, got {delays!r}")
        self.use_delays = delays
        self.chunk_size = _validate.positive_int("chunk_size", chunk_size)
        self.solver = _validate.choice("solver", solver, _SOLVERS)
        self.method = _validate.choice("method", method, _METHODS)
        self.max_delay = _optional_positive("max_delay", max_delay)
        self.kernel_initializer = _initializer("kernel_initializer", kernel_initializer)
        self.delay_initializer = _initializer("delay_initializer", delay_initializer)
        self.kernel_regularizer = _regularizer("kernel_regularizer", kernel_regularizer)
        self.kernel_constraint = _constraint("kernel_constraint", kernel_constraint)
        self.spike_count_regularizer = _regularizer("spike_count_regularizer", spike_count_regularizer)
        if self.spike_count_regularizer is not None and not isinstance(self.spike_count_regularizer,
                                                                       SpikeCountRegularizer):
            raise TypeError("spike_count_regularizer must be a SpikeCountRegularizer or None, got "
                            f"{spike_count_regularizer!r}")
        if calibrate is not None:
            try:
                calibrate = spikescan.init._check_target(calibrate)
            except ValueError as err:  # the argument by its name here (the check calls it "target")
                raise ValueError("calibrate must be None or a pair (low, high) of fractions with 0 < low < high <= 1, "
                                 f"got {calibrate!r}") from err
        self.calibrate = calibrate
        self.silence_penalty = _validate.nonnegative_scalar("silence_penalty", silence_penalty)
        self.input_spikes = None if input_spikes is None else _validate.positive_scalar("input_spikes", input_spikes)
        self.input_window = _validate.nonnegative_scalar("input_window", input_window)
        _time_constant_options(self, trainable_time_constants, min_time_constant)
        _set_parameter_units(self, self.PARAMETER_RULE)
        if not isinstance(trainable_threshold, bool):
            raise TypeError(f"trainable_threshold must be True or False, got {trainable_threshold!r}")
        self.trainable_threshold = trainable_threshold
        self.min_threshold = (0.05 * self.threshold if min_threshold is None
                              else _validate.positive_scalar("min_threshold", min_threshold))
        if trainable_threshold and self.min_threshold > self.threshold:
            raise ValueError(f"min_threshold={self.min_threshold!r} is above threshold={self.threshold!r}: the "
                             "trained thresholds start at threshold and are kept at or above min_threshold")
        if self.solver == "analytic":
            if trainable_time_constants:
                raise ValueError("solver='analytic' needs tau_mem == 2 * tau_syn, which trainable_time_constants=True "
                                 "does not keep: use solver='newton' (exact as well)")
            if abs(self.tau_mem - 2.0 * self.tau_syn) > 1e-12 * self.tau_mem:
                raise ValueError(f"solver='analytic' needs tau_mem == 2 * tau_syn; got tau_mem={self.tau_mem!r}, "
                                 f"tau_syn={self.tau_syn!r}")
        self._warn_key = layer_key(self)  # its warnings show once per layer, not once per layer name
        self._spec = LIFSpec(self.tau_mem, self.tau_syn, self.threshold, self.max_spikes, self.method,
                             self.chunk_size, self.solver, self.name, max_total_spikes=self.max_total_spikes,
                             time_constant_inputs=trainable_time_constants, threshold_input=trainable_threshold,
                             recurrent=recurrent, recurrent_delays=recurrent_delays, layer_key=self._warn_key)
        self._train_spec = dataclasses.replace(self._spec, training=True)
        self._peak_spec = PeakSpec(self.tau_mem, self.tau_syn, time_constant_inputs=trainable_time_constants)
        # Set by spikescan_keras.distributed.DistributedDataParallel while it trains the model on several torch
        # processes: the collectives that give the batch-wide quantities (calibration, dead neurons, statistics)
        # the global batch's values.
        self._data_parallel = None
        if self.calibrate is not None:
            self._calibrate_spec = CalibrateSpec(self.tau_mem, self.tau_syn, self.threshold, self.calibrate,
                                                 self.max_spikes, self.method, self.solver, self.name,
                                                 layer_key=self._warn_key)

    def _auto_kernel_initializer(self, n_in):
        mu = spikescan.init.mean_weight(n_in, tau_mem=self.tau_mem, tau_syn=self.tau_syn, threshold=self.threshold,
                                        input_spikes=self.input_spikes, window=self.input_window)
        # The summed weight of n_in independent inputs varies from neuron to neuron by as much as its mean (std
        # sqrt(n_in) * stddev against mean n_in * mu). With stddev = mu alone, 26 inputs started every neuron within
        # ~20% of the same drive, nearly alike (the learning panel: 8 points lost on wine's latency code); with half
        # the mean, wine's latency code averaged 93.3% over 15 fits, with the full mean 94.4% (MLP 97.6%).
        return keras.initializers.RandomNormal(mean=mu, stddev=mu * max(1.0, float(np.sqrt(n_in))))

    def _auto_recurrent_scale(self, n_in, mu_recurrent):
        """``recurrent_scale="auto"``: the recurrent mean weight over the input one, ``mean_weight(units) /
        mean_weight(n_in, input_spikes, input_window)``. An optimizer step of a given size on both variables then
        moves a neuron's expected peak drive by about as much through either (``mean_weight`` is inversely
        proportional to the drive one unit of weight gives); with Adam, which steps every weight by about its
        learning rate whatever the gradient's scale, the weights themselves would move the recurrent drive
        ``1 / factor`` times as fast (Yin-Yang's 5 inputs into 64 neurons: 12.8 times, a factor of 1/16). Rounded
        to the nearest power of two, so that multiplying and dividing by it is exact: the NIR export and import stay
        lossless."""
        mu_in = spikescan.init.mean_weight(n_in, tau_mem=self.tau_mem, tau_syn=self.tau_syn,
                                           threshold=self.threshold, input_spikes=self.input_spikes,
                                           window=self.input_window)
        return _power_of_two(mu_recurrent / mu_in)

    def build(self, input_shape):
        n_in = _build_kernel(self, input_shape, self.voltage_unit)
        if self.use_delays:
            init = self.delay_initializer
            if init == "auto":
                init = "zeros" if self.max_delay is None else keras.initializers.RandomUniform(0.0, self.max_delay)
            # The variable holds the delays over delay_unit; the initializer and max_delay are in time units.
            self.delay_kernel = self.add_weight(name="delay_kernel", shape=(n_in, self.units),
                                                initializer=_CheckedDelays(self, init, "delay_initializer"),
                                                constraint=DelayRange(self._stored_max_delay()))
        if self.recurrent:
            mu = spikescan.init.mean_weight(self.units, tau_mem=self.tau_mem, tau_syn=self.tau_syn,
                                            threshold=self.threshold)
            scale = self.recurrent_kernel_scale = (self._auto_recurrent_scale(n_in, mu) * self.voltage_unit
                                                   if self.recurrent_scale == "auto" else self.recurrent_scale)
            init = self.recurrent_initializer
            if init == "auto":
                init = keras.initializers.RandomNormal(mean=0.0, stddev=0.5 * mu)
            reg = self.recurrent_regularizer
            # The variable holds the weights over the factor; the initializer and the regularizer see the weights.
            self.recurrent_kernel = self.add_weight(
                name="recurrent_kernel", shape=(self.units, self.units), initializer=_Scaled(init, 1.0 / scale),
                regularizer=None if reg is None else (lambda x: reg(x * scale)))
        if self.use_recurrent_delays:
            init = self.recurrent_delay_initializer
            if init == "auto":
                init = "zeros" if self.max_delay is None else keras.initializers.RandomUniform(0.0, self.max_delay)
            self.recurrent_delay_kernel = self.add_weight(
                name="recurrent_delay_kernel", shape=(self.units, self.units),
                initializer=_CheckedDelays(self, init, "recurrent_delay_initializer"),
                constraint=DelayRange(self._stored_max_delay()))
        if self.trainable_time_constants:
            _build_time_constants(self)
        if self.trainable_threshold:  # over voltage_unit (a power of two: exact)
            self.threshold_kernel = self.add_weight(
                name="threshold", shape=(self.units,),
                initializer=keras.initializers.Constant(self.threshold / self.voltage_unit),
                constraint=PositiveFloor(_stored_floor(self, "min_threshold", self.min_threshold, self.voltage_unit)))
        self.capped_spikes = self.add_weight(name="capped_spikes", shape=(), dtype="int32", initializer="zeros",
                                             trainable=False)
        # The kernel holds the weights over kernel_scale: voltage_unit until the calibration multiplies it.
        self.kernel_scale = self.add_weight(name="kernel_scale", shape=(), trainable=False,
                                            initializer=keras.initializers.Constant(self.voltage_unit))
        self.calibrated = self.add_weight(name="calibrated", shape=(), dtype="int32", initializer="zeros",
                                          trainable=False)
        for name in ("silent_fraction", "dead_fraction", "spikes_per_neuron"):
            setattr(self, name, self.add_weight(name=name, shape=(), initializer="zeros", trainable=False))
        if self._parameter_rule >= 3:
            # The unit the voltage variables are stored over, saved with them (the last variable): weights files
            # carry no config, so loading one saved over another unit, or before the unit (one variable fewer),
            # converts the values instead of reading them over the wrong unit (load_own_variables, set_weights).
            self.stored_voltage_unit = self.add_weight(
                name="voltage_unit", shape=(), trainable=False,
                initializer=keras.initializers.Constant(self.voltage_unit))
        self.input_spec = keras.layers.InputSpec(ndim=3, axes={1: n_in})

    def load_own_variables(self, store):
        if not self.built:  # an unbuilt layer (a copy, or a model saved before its first call): nothing to load
            super().load_own_variables(store)
            return
        targets = self._trainable_variables + self._non_trainable_variables
        # Saved before the voltage unit (parameter_rule 2 or 1): the same variables but the last, in voltage units.
        legacy = self._parameter_rule >= 3 and len(store.keys()) == len(targets) - 1
        if legacy:
            targets = targets[:-1]
        if len(store.keys()) == len(targets):  # (another count: Keras' own error, before anything is assigned)
            # Every shape first, so that a file of a layer with other options changes nothing here and says why.
            for i, variable in enumerate(targets):
                shape = tuple(np.shape(store[f"{i}"]))
                if shape != tuple(variable.shape):
                    raise ValueError(
                        f"{type(self).__name__} {self.name!r}: the stored variable {i} has shape {shape} where this "
                        f"layer's {variable.name!r} has {tuple(variable.shape)}: the weights come from a layer with "
                        "other options (units, inputs, delays, recurrent, recurrent_delays, trainable_threshold, "
                        "trainable_time_constants). Nothing was loaded.")
        if legacy:
            for i, variable in enumerate(targets):
                variable.assign(store[f"{i}"])
            self._follow_voltage_unit(1.0)
            return
        super().load_own_variables(store)
        self._sync_voltage_unit()

    def set_weights(self, weights):
        super().set_weights(weights)
        if self.built:
            self._sync_voltage_unit()

    def _sync_voltage_unit(self):
        """Values brought over the unit the variable ``stored_voltage_unit`` now holds (loaded or assigned with them)
        re-expressed over this layer's ``voltage_unit`` (``_follow_voltage_unit``); nothing before rule 3."""
        if self._parameter_rule >= 3:
            self._follow_voltage_unit(float(ops.convert_to_numpy(self.stored_voltage_unit)))

    def _follow_voltage_unit(self, saved):
        """Values just loaded over the voltage unit ``saved`` (1: in voltage units) re-expressed over this layer's:
        the kernel (with ``kernel_scale``, so their product, the weights, stays), the trained thresholds and the
        ``"auto"`` recurrent weights' variable, each multiplied by ``saved / voltage_unit`` (powers of two: exact)."""
        ratio = saved / self.voltage_unit
        if ratio != 1.0:
            if not (ratio > 0 and np.isfinite(ratio) and _power_of_two(ratio) == ratio):
                raise ValueError(f"LIFLayer {self.name!r}: the loaded weights were stored over the voltage unit "
                                 f"{saved!r}, which is not a power of two: they did not come from an LIFLayer")
            scaled = [self.kernel] + ([self.threshold_kernel] if self.trainable_threshold else []) + (
                [self.recurrent_kernel] if self.recurrent and self.recurrent_scale == "auto" else [])
            for variable in scaled:
                variable.assign(ops.convert_to_tensor(variable) * ratio)
            self.kernel_scale.assign(ops.convert_to_tensor(self.kernel_scale) / ratio)
        self.stored_voltage_unit.assign(self.voltage_unit)

    def _scale(self, inputs, training):
        """The kernel's factor: ``kernel_scale``, multiplied by the calibration on the first training call. A copy of
        the variable's value: a training call assigns the variable, which on torch would otherwise change in place a
        tensor that an earlier call of the same layer in the same step (a layer shared by two branches) saved for
        its backward."""
        scale = ops.copy(ops.convert_to_tensor(self.kernel_scale))
        if not training or self.calibrate is None or not self.trainable:  # a frozen layer keeps its function
            return scale
        kernel = ops.stop_gradient(ops.convert_to_tensor(self.kernel)) * scale  # the weights before calibration
        extra = (ops.stop_gradient(self._delays()),) if self.use_delays else ()

        def search():
            batch = ops.stop_gradient(inputs)
            if self._data_parallel is not None:  # calibrate on the global batch, as one process would
                batch = self._data_parallel.gather_batch(batch)
            spec = self._calibrate_spec
            if self._data_parallel is not None and not self._data_parallel.is_main():
                spec = dataclasses.replace(spec, warn=False)  # every rank calibrates on the global batch; rank 0 warns
            (found,) = _bridge.apply(CalibrateOp, spec, (batch, kernel, *extra))
            found = ops.cast(ops.stop_gradient(found), scale.dtype)
            # Every rank found the same factor from the same data; rank 0's makes it identical bit for bit.
            found = found if self._data_parallel is None else self._data_parallel.broadcast(found)
            # A batch without a single input spike shows nothing to calibrate on: the layer keeps its scale and
            # calibrates on the next training batch that carries spikes (it used to count as done, for good).
            ready = ops.any(ops.isfinite(batch))
            return ops.where(ready, scale * found, scale), ops.cast(ready, "int32")

        scale, done = _cond(ops.cast(ops.convert_to_tensor(self.calibrated), "bool"),
                            lambda: (scale, ops.ones((), "int32")), search)
        self.kernel_scale.assign(scale)
        self.calibrated.assign(done)
        return scale

    def call(self, inputs, training=None):
        """``inputs [batch, n_in, max_in]`` spike times -> ``[batch, units, max_spikes]`` spike times."""
        return self._spikes(inputs, training)[0]

    def _spikes(self, inputs, training):
        """The layer's forward: ``(times, inputs, kernel, taus, threshold)``, with the tensors it computed with
        (``kernel`` times ``kernel_scale``; ``taus`` and ``threshold`` the per-neuron ones, or empty tuples)."""
        inputs = ops.convert_to_tensor(inputs)
        learn = _learns_from(self, inputs, training)
        kernel = ops.convert_to_tensor(self.kernel) * self._scale(inputs, learn)
        delays = (self._delays(),) if self.use_delays else ()
        recurrent = ((self._recurrent_weights(),) if self.recurrent else ()) + (
            (_times_unit(self.recurrent_delay_kernel, self.delay_unit),) if self.use_recurrent_delays else ())
        taus = _time_constant_tensors(self)
        threshold = ((self._thresholds(),) if self.trainable_threshold else ())
        spec = self._train_spec if training else self._spec
        if training and self.WARNS_DEAD and self.silence_penalty == 0:  # no revival objective: dead stays dead
            spec = dataclasses.replace(spec, warn_dead=True)
        checked = spec
        global_checks = learn and self._data_parallel is not None
        if global_checks:  # judged below on the global batch, not on this rank's share
            spec = dataclasses.replace(spec, warn_capped=False, warn_silent=False, warn_dead=False)
        times, counts = _bridge.apply(LIFOp, spec, (inputs, kernel, *delays, *recurrent, *taus, *threshold))
        capped = ops.sum(ops.maximum(counts - self.max_spikes, 0))
        if learn:
            dead, capped, spikes = self._firing_statistics(counts, capped)
            if global_checks:  # the global counts; neurons that fired on some sample of the global batch
                self._data_parallel.check(LIFOp, checked, capped, ops.sum(1.0 - dead), spikes, ops.sum(dead),
                                          self.units)
        self.capped_spikes.assign_add(ops.cast(capped, "int32"))
        if self.spike_count_regularizer is not None:
            _add_loss(self, self.spike_count_regularizer(times))
        if learn and self.silence_penalty > 0 and self.trainable:  # a frozen layer adds no objective
            frozen = tuple(ops.stop_gradient(x) for x in taus)
            thr = ops.stop_gradient(threshold[0]) if threshold else self.threshold
            _add_loss(self, self._silence_loss(inputs, kernel, delays + frozen, ops.cast(dead, kernel.dtype), thr))
        return times, inputs, kernel, taus, threshold

    def _stored_max_delay(self):
        return None if self.max_delay is None else self.max_delay / self.delay_unit

    def _delays(self):
        """The delays the layer computes with: ``delay_kernel * delay_unit``."""
        return _times_unit(self.delay_kernel, self.delay_unit)

    def delay_values(self):
        """The synaptic delays ``[n_in, units]`` in time units (``delay_kernel * delay_unit``) as a NumPy array:
        ``spikescan.lif_forward``'s ``delays``."""
        return _numpy_times_unit(self, getattr(self, "delay_kernel", None), self.delay_unit, self.use_delays,
                                 "trainable delays (delays=False)")

    def recurrent_delay_values(self):
        """The recurrent delays ``[units, units]`` in time units (``recurrent_delay_kernel * delay_unit``) as a
        NumPy array: ``spikescan.lif_forward``'s ``recurrent_delays``."""
        return _numpy_times_unit(self, getattr(self, "recurrent_delay_kernel", None), self.delay_unit,
                                 self.use_recurrent_delays, "recurrent delays (recurrent_delays=False)")

    def time_constants(self):
        """``(tau_mem, tau_syn)``, each ``[units]`` in time units, as NumPy arrays (the trained ones with
        ``trainable_time_constants=True``, else the layer's scalars repeated)."""
        return _time_constants_numpy(self)

    def set_delay_values(self, delays):
        """Set the delays ``[n_in, units]``, in time units (the inverse of ``delay_values()``)."""
        _assign_over_unit(self, getattr(self, "delay_kernel", None), delays, self.delay_unit, self.use_delays,
                          "trainable delays (delays=False)", "delays", 0.0, self.max_delay)

    def set_recurrent_delay_values(self, delays):
        """Set the recurrent delays ``[units, units]``, in time units (the inverse of ``recurrent_delay_values()``)."""
        _assign_over_unit(self, getattr(self, "recurrent_delay_kernel", None), delays, self.delay_unit,
                          self.use_recurrent_delays, "recurrent delays (recurrent_delays=False)", "recurrent delays",
                          0.0, self.max_delay)

    def set_time_constants(self, tau_mem, tau_syn):
        """Set the trained time constants, each ``[units]`` (or one number for every unit) in time units (the
        inverse of ``time_constants()``)."""
        _set_time_constants(self, tau_mem, tau_syn)

    def _unit_tensor(self):
        """The voltage unit as the variable that was saved with the weights (it equals ``voltage_unit`` unless a
        model-level ``set_weights`` brought values over another unit; computing with it keeps them right)."""
        if self._parameter_rule < 3:
            return self.voltage_unit
        return ops.convert_to_tensor(self.stored_voltage_unit)

    def _thresholds(self):
        """The trained thresholds the layer computes with: ``threshold_kernel`` times the voltage unit."""
        return ops.convert_to_tensor(self.threshold_kernel) * self._unit_tensor()

    def thresholds(self):
        """The firing thresholds ``[units]`` in voltage units as a NumPy array (the trained ones with
        ``trainable_threshold=True``, else the layer's scalar repeated)."""
        if not self.trainable_threshold:
            return np.full(self.units, self.threshold)
        _check_variable(self, True, "")
        return np.asarray(ops.convert_to_numpy(self._thresholds()))

    def set_thresholds(self, thresholds):
        """Set the trained thresholds ``[units]`` (or one number for every unit), in voltage units (the inverse of
        ``thresholds()``)."""
        _check_variable(self, self.trainable_threshold, "trainable thresholds (trainable_threshold=False)")
        self._sync_voltage_unit()
        _assign_over_unit(self, self.threshold_kernel, thresholds, self.voltage_unit, True, "", "thresholds",
                          self.min_threshold)

    def _recurrent_weights(self):
        """The recurrent weights the layer computes with: ``recurrent_kernel * recurrent_kernel_scale`` (the
        ``"auto"`` factor with the saved voltage unit, ``_unit_tensor``)."""
        kernel = ops.convert_to_tensor(self.recurrent_kernel)
        if self._parameter_rule >= 3 and self.recurrent_scale == "auto":
            return kernel * (self.recurrent_kernel_scale / self.voltage_unit) * self._unit_tensor()
        return kernel if self.recurrent_kernel_scale == 1.0 else kernel * self.recurrent_kernel_scale

    def recurrent_weights(self):
        """``recurrent_kernel * recurrent_kernel_scale`` as a NumPy array: entry ``[k, i]`` is what a spike of neuron
        ``k`` adds to neuron ``i``'s current (``spikescan.lif_forward``'s ``recurrent_weights``)."""
        if not self.recurrent:
            raise ValueError(f"LIFLayer {self.name!r} has no recurrent connections (recurrent=False)")
        if not self.built:
            raise ValueError(f"LIFLayer {self.name!r} is not built yet: call it on an input or build it first")
        return np.asarray(ops.convert_to_numpy(self._recurrent_weights()))

    def _firing_statistics(self, counts, capped):
        """Set ``silent_fraction``, ``dead_fraction`` and ``spikes_per_neuron`` from a training batch's ``counts
        [batch, units]``; returns ``dead [units]`` (1.0 where no sample of the batch fired), the unrecorded
        spikes to count and all the spikes fired. In data-parallel training all three are those of the global batch
        (``capped`` summed)."""
        if self._data_parallel is None:
            spikes = ops.sum(counts)
            silent = ops.cast(counts == 0, "float32")
            dead = ops.min(silent, axis=0)
            self.silent_fraction.assign(ops.mean(silent))
            self.spikes_per_neuron.assign(ops.mean(ops.cast(counts, "float32")))
        else:
            fired, silent, samples, capped = self._data_parallel.firing_sums(counts, capped)
            spikes = ops.sum(fired)
            pairs = ops.cast(samples * self.units, "float32")
            dead = ops.cast(fired == 0, "float32")
            self.silent_fraction.assign(ops.cast(silent, "float32") / pairs)
            self.spikes_per_neuron.assign(ops.cast(spikes, "float32") / pairs)
        self.dead_fraction.assign(ops.mean(dead))
        return dead, capped, spikes

    def _silence_loss(self, inputs, kernel, extra, dead, threshold):
        """The revival objective of the class docstring; ``dead [units]`` is 1 for the neurons in ``S``; ``extra``:
        the delays and per-neuron time constants the layer has (``PeakOp``'s inputs); ``threshold`` a float or the
        per-neuron thresholds ``[units]`` (each neuron's terms are scaled by its own)."""
        (peaks,) = _bridge.apply(PeakOp, self._peak_spec, (inputs, kernel, *extra, dead))
        spikes = ops.sum(ops.cast(ops.isfinite(inputs), kernel.dtype), axis=-1)  # [batch, n_in]
        net_drive = ops.matmul(spikes, kernel)  # [batch, units]
        q = ops.relu(-net_drive) / threshold
        gap = threshold - ops.cast(peaks, kernel.dtype) + threshold * q / (1.0 + q)
        return self.silence_penalty / self.units * ops.sum(dead * _mean(gap, axis=0) / threshold)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.units, self.max_spikes)

    def get_config(self):
        config = super().get_config()
        config.update(
            units=self.units, tau_mem=self.tau_mem, tau_syn=self.tau_syn, threshold=self.threshold,
            max_spikes=self.max_spikes, delays=self.use_delays, chunk_size=self.chunk_size, solver=self.solver,
            method=self.method, kernel_initializer=_serialize_initializer(self.kernel_initializer),
            delay_initializer=_serialize_initializer(self.delay_initializer), max_delay=self.max_delay,
            kernel_regularizer=keras.regularizers.serialize(self.kernel_regularizer),
            kernel_constraint=keras.constraints.serialize(self.kernel_constraint),
            spike_count_regularizer=keras.regularizers.serialize(self.spike_count_regularizer),
            calibrate=None if self.calibrate is None else list(self.calibrate), silence_penalty=self.silence_penalty,
            input_spikes=self.input_spikes, input_window=self.input_window, max_total_spikes=self.max_total_spikes,
            trainable_time_constants=self.trainable_time_constants, min_time_constant=self.min_time_constant,
            trainable_threshold=self.trainable_threshold, min_threshold=self.min_threshold,
            recurrent=self.recurrent, recurrent_delays=self.use_recurrent_delays,
            recurrent_initializer=_serialize_initializer(self.recurrent_initializer),
            recurrent_delay_initializer=_serialize_initializer(self.recurrent_delay_initializer),
            recurrent_regularizer=keras.regularizers.serialize(self.recurrent_regularizer),
            recurrent_scale=self.recurrent_scale, parameter_rule=self._parameter_rule)
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if config.get("recurrent") and "recurrent_scale" not in config:
            # Saved before the factor existed: recurrent_kernel holds the weights themselves.
            config["recurrent_scale"] = 1.0
        rule = config.pop("parameter_rule", 1)  # 1: saved before the parameter units, delays etc. in time units
        layer = super().from_config(config)
        _set_parameter_units(layer, rule)
        return layer


@keras.saving.register_keras_serializable(package="spikescan")
class FirstSpikeReadout(LIFLayer):
    """Spiking output layer read out by its first spike times: spike tensor ``[batch, n_in, max_spikes]`` -> logits
    ``[batch, units]``; the class is the neuron that fires first.

    The neurons are ``LIFLayer``'s (the same exact dynamics, weights, calibration and silent-neuron objective;
    ``max_spikes=1``: a neuron's later spikes do not change its logit and are neither recorded nor warned about,
    though ``capped_spikes`` counts them). Neuron ``i``'s logit is ``-T_i / tau_logit`` with ``T_i`` its first spike
    time when it fires by ``t_max``, and otherwise::

        T_i = t_max + tau_mem * (threshold - V*_i) / threshold

    with ``V*_i`` the exact peak over ``[0, t_max]`` of its voltage (which has not reset before it first fires:
    the ``"max"`` readout of ``LIReadout``, ``spikescan.li_forward``). So every neuron that fires by ``t_max`` beats
    every one that does not, earlier beats later, and among the silent ones the closer to threshold wins; the logits
    suit ``SparseCategoricalCrossentropy(from_logits=True)``. Their gradients are exact: through the spike times
    (``spikescan.lif_backward``) for the neurons that fire, through ``V*`` (``li_backward``) for the others, which
    keeps a silent neuron of the right class learning (with the spike times alone its gradient is zero; on
    Yin-Yang the output layer then fell silent and training stalled near chance).

    ``T_i`` jumps at the firing boundary (a neuron that starts to fire at its peak time ``t* < t_max`` moves from
    about ``t_max`` to ``t*``); the exact gradient of either side does not see the jump.

    Args:
        units: number of classes.
        tau_mem, tau_syn, threshold: as for ``LIFLayer`` (the initial values when trainable).
        t_max: positive end of the decision window, in the unit of the spike times.
        tau_logit: positive time scale of the logits (default ``tau_syn``): two neurons whose first spikes are
            ``tau_logit`` apart differ by one in logit.
        Every other keyword argument is ``LIFLayer``'s, except ``max_spikes`` (1), ``delays`` and ``recurrent``
        (not available for this layer).
    """

    # The kernel (and trainable thresholds) are stored over 8 times the threshold's power of two, so an optimizer
    # step moves the weights 8 times as far as in an LIFLayer. Adam steps every variable by about its learning rate,
    # and a step of the readout's weights moved its first spike times, and so its logits, about 20 times less than a
    # step of LIReadout's weights moved its logits: on small data the first-spike model learned far more slowly.
    # Factors 8 and 16 gained alike on small data (benchmarks/learning.py --first-spike: README "Does the obvious
    # model learn?"); on the full Yin-Yang example (3 seeds, torch) 8 kept the accuracy of 1 and 16 lost a seed.
    # Files saved before (parameter_rule 3) load with the factor 1. kernel_regularizer and kernel_constraint see the
    # stored values, which are the weights over kernel_scale (8 times the LIFLayer's unit at the start): an L2
    # penalty on them weighs the weights 64 times less than in an LIFLayer, a norm bound is 8 times looser.
    VOLTAGE_STEP = 8.0
    WARNS_DEAD = False
    PARAMETER_RULE = 4  # the rule that applies VOLTAGE_STEP

    def __init__(self, units, *, tau_mem, tau_syn, t_max, tau_logit=None, **kwargs):
        for name in ("max_spikes", "delays", "recurrent", "recurrent_delays"):
            # max_spikes: refused whatever its value (0 and None were ignored); the others when they ask for the
            # feature (False and None are the defaults).
            if (name == "max_spikes" and name in kwargs) or kwargs.get(name):
                raise ValueError(f"FirstSpikeReadout does not take {name}={kwargs[name]!r} (it reads each neuron's "
                                 "first spike; delays and recurrent connections are not available for it)")
            kwargs.pop(name, None)
        super().__init__(units, tau_mem=tau_mem, tau_syn=tau_syn, max_spikes=1, **kwargs)
        self.t_max = _validate.positive_scalar("t_max", t_max)
        self.tau_logit = _validate.positive_scalar("tau_logit", self.tau_syn if tau_logit is None else tau_logit)
        self._spec = dataclasses.replace(self._spec, warn_capped=False, warn_silent=False)
        self._train_spec = dataclasses.replace(self._train_spec, warn_capped=False, warn_silent=False)
        if self.calibrate is not None:
            # Only each neuron's first spike is read: the burst bound (a mean of at most 1/2 spike per sample and
            # neuron with max_spikes=1) would scale the kernel down until most output neurons were silent.
            self._calibrate_spec = dataclasses.replace(self._calibrate_spec, bound_bursts=False)
        self._window_spec = LISpec(self.tau_mem, self.tau_syn, "max", self.t_max, None,
                                   time_constant_inputs=self.trainable_time_constants, layer_name=self.name)

    def call(self, inputs, training=None):
        """``inputs [batch, n_in, max_in]`` spike times -> ``[batch, units]`` logits."""
        if training and not getattr(self, "_loss_checked", False):
            _warn_probability_loss(self)
        times, inputs, kernel, taus, threshold = self._spikes(inputs, training)
        (peaks,) = _bridge.apply(LIOp, self._window_spec, (inputs, kernel, *taus))
        first = times[:, :, 0]
        fired = first <= self.t_max  # +inf (silent) compares false
        tau_mem = taus[0] if taus else self.tau_mem
        thr = threshold[0] if threshold else self.threshold
        late = self.t_max + tau_mem * (thr - ops.cast(peaks, first.dtype)) / thr
        return -ops.where(fired, ops.where(fired, first, ops.zeros_like(first)), late) / self.tau_logit

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.units)

    def get_config(self):
        config = super().get_config()
        for name in ("max_spikes", "delays", "recurrent", "recurrent_delays"):
            config.pop(name)
        config.update(t_max=self.t_max, tau_logit=self.tau_logit)
        return config


def _time_constant_options(layer, trainable_time_constants, min_time_constant):
    """Check and set ``layer.trainable_time_constants`` and ``layer.min_time_constant`` (default: 5% of the smaller
    of ``layer.tau_mem`` and ``layer.tau_syn``), as ``LIFLayer`` does."""
    if not isinstance(trainable_time_constants, bool):
        raise TypeError(f"trainable_time_constants must be True or False, got {trainable_time_constants!r}")
    layer.trainable_time_constants = trainable_time_constants
    layer.min_time_constant = (0.05 * min(layer.tau_mem, layer.tau_syn) if min_time_constant is None
                               else _validate.positive_scalar("min_time_constant", min_time_constant))
    smaller = min(layer.tau_mem, layer.tau_syn)
    if trainable_time_constants and layer.min_time_constant > smaller:
        raise ValueError(f"min_time_constant={layer.min_time_constant!r} is above min(tau_mem, tau_syn)={smaller!r}: "
                         "the trained time constants start at tau_mem and tau_syn and are kept at or above "
                         "min_time_constant")


def _stored_floor(layer, name, value, unit):
    """``value / unit``, the floor ``PositiveFloor`` keeps a variable stored over ``unit`` at, checked to stay
    positive in the layer's variable dtype: a ``min_threshold`` or ``min_time_constant`` that rounds to 0 there let
    training (and the setters) take the thresholds or time constants to 0."""
    floor = value / unit
    if not np.asarray(floor, keras.backend.standardize_dtype(layer.variable_dtype)) > 0:
        raise ValueError(f"{type(layer).__name__} {layer.name!r}: {name}={value!r} is 0 in the layer's "
                         f"{layer.variable_dtype} variables (stored over the unit {unit!r}), so it would not keep the "
                         f"trained values positive; pass a larger {name}")
    return floor


def _build_time_constants(layer):
    """Add ``layer.tau_mem_kernel`` and ``layer.tau_syn_kernel`` ``[units]``: the per-neuron time constants over
    ``tau_mem_unit`` and ``tau_syn_unit``, initialised to the layer's scalars and kept at or above
    ``min_time_constant``."""
    for name in ("tau_mem", "tau_syn"):
        unit = getattr(layer, f"{name}_unit")
        setattr(layer, f"{name}_kernel", layer.add_weight(
            name=f"{name}_kernel", shape=(layer.units,),
            initializer=keras.initializers.Constant(getattr(layer, name) / unit),
            constraint=PositiveFloor(_stored_floor(layer, "min_time_constant", layer.min_time_constant, unit))))


def _time_constant_tensors(layer):
    """``(tau_mem, tau_syn)`` per neuron as tensors in time units, or ``()`` without trainable time constants."""
    if not layer.trainable_time_constants:
        return ()
    return (_times_unit(layer.tau_mem_kernel, layer.tau_mem_unit), _times_unit(layer.tau_syn_kernel,
                                                                             layer.tau_syn_unit))


def _cond(pred, true_fn, false_fn):
    """``keras.ops.cond``, except on torch, whose eager tensors take a Python branch (what Keras' torch ``cond`` does):
    there ``ops.cond`` is a Keras operation, which wraps any error of a branch (bad input spike times found by the
    calibration on the first training batch) in "Exception encountered when calling Cond.call()" and a list of its
    arguments, private lambdas included."""
    if keras.backend.backend() != "torch":
        return ops.cond(pred, true_fn, false_fn)
    if getattr(pred, "device", None) is not None and pred.device.type == "meta":  # symbolic build: as Keras' torch cond
        return true_fn()
    return true_fn() if bool(pred) else false_fn()


def _set_time_constants(layer, tau_mem, tau_syn):
    """Checks both, then assigns both: a refused ``tau_syn`` leaves ``tau_mem`` as it was."""
    stored = [(getattr(layer, f"{name}_kernel", None),
               _over_unit(layer, getattr(layer, f"{name}_kernel", None), values, getattr(layer, f"{name}_unit"),
                          layer.trainable_time_constants, "trainable time constants (trainable_time_constants=False)",
                          name, layer.min_time_constant))
              for name, values in (("tau_mem", tau_mem), ("tau_syn", tau_syn))]
    for variable, values in stored:
        variable.assign(values)


def _time_constants_numpy(layer):
    if not layer.trainable_time_constants:
        return np.full(layer.units, layer.tau_mem), np.full(layer.units, layer.tau_syn)
    _check_variable(layer, True, "trainable time constants")
    return tuple(np.asarray(ops.convert_to_numpy(x)) for x in _time_constant_tensors(layer))


@keras.saving.register_keras_serializable(package="spikescan")
class LIReadout(_SpikeTimesLayer):
    """Non-spiking leaky-integrator readout: spike tensor ``[batch, n_in, max_spikes]`` -> logits ``[batch, units]``.

    Each unit has the LIF sub-threshold dynamics without threshold; its logit is a functional of ``V(t)`` on
    ``[0, t_max]`` computed in closed form by ``spikescan.li_forward`` (exact gradients by ``li_backward``):
    ``"integral"``: ``int_0^t_max e^{-t/tau_readout} V(t) dt`` (plain integral with ``tau_readout=None``),
    ``"max"``: ``max_t V(t)``, ``"final"``: ``V(t_max)``, times the constant ``scale``. The logits suit
    ``SparseCategoricalCrossentropy(from_logits=True)``.

    Weights: ``kernel [n_in, units]``; with ``trainable_time_constants=True`` also ``tau_mem`` and ``tau_syn``
    ``[units]`` (``time_constants()``; variables ``tau_mem_kernel``, ``tau_syn_kernel`` over the units of
    ``LIFLayer``'s, so that they learn alike in any time unit), one per unit, initialised to the
    ``tau_mem`` and ``tau_syn`` arguments, trained by their exact gradients (``spikescan.li_backward``'s ``tau_mem`` /
    ``tau_syn``: the derivative of the logit at fixed input spike times) and kept at or above ``min_time_constant``
    (default: 5% of the smaller argument) by ``PositiveFloor``, as in ``LIFLayer``. ``tau_readout`` stays fixed.

    Args:
        units: number of classes.
        tau_mem, tau_syn: positive time constants (the initial values when trainable).
        readout: ``"integral"``, ``"max"`` or ``"final"``.
        t_max: positive end of the readout window.
        tau_readout: optional positive time scale of the integral's weighting (``readout="integral"`` only).
        scale: positive constant multiplying the readout values (the logits are ``scale`` times the functional
            above), or ``"auto"``: ``AUTO_UNIT_LOGIT / u`` (``6 / u``) with ``u`` this readout's value for one
            unit-weight input spike at ``t_max / 2`` (same time constants and window), so that such a spike moves a
            logit by 6 whatever the readout and the time unit. The integral's value carries the time unit (a
            voltage times a time), and a voltage is an integral divided by a time of the order of ``t_max``: with
            the integral's value as it is, a model written in seconds (as SHD's files and NIR graphs are) needed
            readout weights 1000 times those of the same model in milliseconds, which Adam's steps of about the
            learning rate barely moved (it stayed at chance); unscaled, the max readout's logits moved about 25
            times slower per optimizer step than the integral's and on Yin-Yang stopped near 82% training accuracy.
            Models saved before this rule (the integral's value as it was, 1 for ``"integral"``, the max and final
            readouts on the integral's scale) load with the factor they were trained with. ``layer.output_scale``
            holds the value used.
        kernel_initializer: a Keras initializer or ``"auto"``: ``Normal(0, 0.5 / (sqrt(n_in) * u))`` where ``u``
            is the logit (``scale`` included) of one unit-weight spike at ``t_max / 2``, so that with about one
            spike per input neuron the logits start at about half a unit whatever the time constants and the
            readout (half a unit rather than one: about half a point on wine's latency code over 15 fits, at two
            kernel spreads: small, but in the same direction both times).
        kernel_regularizer: optional Keras regularizer of ``kernel``.
        kernel_constraint: optional Keras constraint of ``kernel`` (e.g. ``keras.constraints.NonNeg()``), applied
            after each optimizer step to the variable (the weights over the readout's positive unit).
        trainable_time_constants: learn one ``tau_mem`` and one ``tau_syn`` per unit.
        min_time_constant: positive floor of the trained time constants (None: 5% of ``min(tau_mem, tau_syn)``).
        revival_penalty: strength of the readout's revival objective (``readout="max"`` only; ``0`` switches it
            off). A ``"max"`` unit whose voltage never rises above its start on any sample of a training batch is
            dead: its logit is the ``V(0) = 0`` of every sample, so its gradient is exactly zero and it cannot
            learn its way back (its class is then never predicted; seen on Yin-Yang with a recurrent hidden layer,
            which stopped at 65% accuracy with one of three units dead). For the set ``D`` of such units the
            layer adds to the model's loss::

                revival_penalty / units * sum_{u in D} mean_b softplus(-J_bu / J_1)

            with ``J_bu`` the unit's ``"integral"`` readout value on sample ``b`` (``<= 0`` for a dead unit: its
            voltage never rises) and ``J_1 > 0`` that of one unit-weight spike at ``t_max / 2``: it raises the
            weights of the inputs the unit sees (a slope of at most ``1 / J_1`` per unit), the time constants
            left alone, until the unit's voltage rises above 0 on some sample and the term switches off. The
            non-trainable float32 weight ``dead_fraction`` (``"max"`` readouts only) holds the fraction of dead
            units on the last training batch; ``FiringMonitor`` reports it. With ``revival_penalty=0`` a training
            batch with dead units issues a ``DeadReadoutWarning`` naming the layer. A frozen readout
            (``trainable = False``) adds no such term. Default ``1.0``.
    """

    tau_mem_per_neuron = _Renamed("time_constants()[0] / set_time_constants()")
    tau_syn_per_neuron = _Renamed("time_constants()[1] / set_time_constants()")

    def __init__(self, units, *, tau_mem, tau_syn, readout="integral", t_max, tau_readout=None, scale="auto",
                 kernel_initializer="auto", kernel_regularizer=None, kernel_constraint=None,
                 trainable_time_constants=False, min_time_constant=None, revival_penalty=1.0, **kwargs):
        super().__init__(**_exact_dtype("LIReadout", _no_spike_count_activity("LIReadout", kwargs)))
        _check_float64_backend("LIReadout", self.compute_dtype)
        self.supports_jit = _bridge.supports_jit()
        self.units = _units(units)
        self.tau_mem = _layer_scalar("tau_mem", tau_mem, _PER_NEURON_TAUS)
        self.tau_syn = _layer_scalar("tau_syn", tau_syn, _PER_NEURON_TAUS)
        self.readout = _validate.choice("readout", readout, _READOUTS)
        self.t_max = _validate.positive_scalar("t_max", t_max)
        self.tau_readout = _optional_positive("tau_readout", tau_readout)
        if tau_readout is not None and readout != "integral":
            raise ValueError(f"tau_readout only applies to readout='integral', got tau_readout={tau_readout!r} with "
                             f"readout={readout!r}")
        self.kernel_initializer = _initializer("kernel_initializer", kernel_initializer)
        self.kernel_regularizer = _regularizer("kernel_regularizer", kernel_regularizer)
        self.kernel_constraint = _constraint("kernel_constraint", kernel_constraint)
        _time_constant_options(self, trainable_time_constants, min_time_constant)
        _set_parameter_units(self, _PARAMETER_RULE)
        self._warn_key = layer_key(self)  # its warnings show once per layer, not once per layer name
        self._spec = LISpec(self.tau_mem, self.tau_syn, self.readout, self.t_max, self.tau_readout,
                            time_constant_inputs=self.trainable_time_constants, layer_name=self.name,
                            layer_key=self._warn_key)
        self.revival_penalty = _validate.nonnegative_scalar("revival_penalty", revival_penalty)
        # Training calls warn when every logit of the batch is 0 (SilentReadoutWarning).
        self._train_spec = dataclasses.replace(self._spec, layer_name=self.name, warn_empty=True)
        # The revival objective's integral readout, for the dead units only (none: the op does nothing).
        self._integral_spec = dataclasses.replace(self._spec, readout="integral", tau_readout=None,
                                                  unit_mask_input=True)
        self._data_parallel = None  # set by spikescan_keras.distributed.DistributedDataParallel during fit
        self._integral_unit = None  # J_1 of the revival objective, computed on first use
        if isinstance(scale, str):
            if scale != "auto":
                raise ValueError(f"scale must be 'auto' or a positive finite number, got {scale!r}")
            self.scale = "auto"
            self.output_scale = AUTO_UNIT_LOGIT / self._unit()
        else:
            self.scale = self.output_scale = _validate.positive_scalar("scale", scale)

    def _unit(self, readout=None):
        """The readout value (unscaled) of one unit-weight input spike at ``t_max / 2``."""
        spike = np.full((1, 1, 1), 0.5 * self.t_max)
        s = self._spec
        readout = readout or s.readout
        value = spikescan.li_forward(spike, np.ones((1, 1)), tau_mem=s.tau_mem, tau_syn=s.tau_syn, readout=readout,
                                     t_max=s.t_max, tau_readout=s.tau_readout if readout == s.readout else None)
        value = abs(float(value.values[0, 0]))
        if not (np.isfinite(value) and value > 0):  # e.g. "final" with t_max thousands of tau_mem: e^-1500 is 0
            raise ValueError(
                f"LIReadout(readout={s.readout!r}, t_max={s.t_max!r}, tau_mem={s.tau_mem!r}, tau_syn={s.tau_syn!r}): "
                f"the {readout!r} value of one unit-weight spike at t_max / 2 is {value!r}, so the 'auto' scale and "
                "kernel initializer are undefined; pass scale=<number> and a kernel_initializer, or a t_max of at "
                "most a few hundred time constants")
        return value

    def _legacy_auto_scale(self):
        """The factor ``scale="auto"`` stood for before ``AUTO_UNIT_LOGIT``: 1 for ``"integral"``, the integral's
        unit value over this readout's for ``"max"`` and ``"final"`` (``from_config`` of older files)."""
        return 1.0 if self.readout == "integral" else self._unit("integral") / self._unit()

    def _follow_scale_rule(self, rule):
        """A layer restored from a file (a config, a NIR graph) that recorded ``auto_scale_rule = rule`` (1 when it
        recorded none): with rule 1 an ``"auto"`` scale is the factor it stood for then, which its weights go
        with."""
        if int(rule) == 1 and self.scale == "auto":
            self.scale = self.output_scale = self._legacy_auto_scale()

    def _auto_kernel_initializer(self, n_in):
        stddev = 0.5 / (np.sqrt(n_in) * self.output_scale * self._unit())
        # A Python float: the NumPy value would reach the backend's random op (torch's normal() refuses a 0-d array
        # under torch.compile). mean_weight, LIFLayer's, is a float already.
        return keras.initializers.RandomNormal(mean=0.0, stddev=float(stddev))

    def build(self, input_shape):
        n_in = _build_kernel(self, input_shape)
        if self.trainable_time_constants:
            _build_time_constants(self)
        if self.readout == "max":
            self.dead_fraction = self.add_weight(name="dead_fraction", shape=(), initializer="zeros",
                                                 trainable=False)
        self.input_spec = keras.layers.InputSpec(ndim=3, axes={1: n_in})

    def call(self, inputs, training=None):
        """``inputs [batch, n_in, max_spikes]`` spike times -> ``[batch, units]`` logits."""
        taus = _time_constant_tensors(self)
        inputs, kernel = ops.convert_to_tensor(inputs), ops.convert_to_tensor(self.kernel)
        spec = self._spec
        if training:
            spec = self._train_spec
            if not getattr(self, "_loss_checked", False):
                _warn_probability_loss(self)
            if self.readout == "max" and self.revival_penalty == 0:
                spec = dataclasses.replace(spec, warn_dead=True)
        global_checks = training and self._data_parallel is not None
        if global_checks:  # judged below on the global batch, not on this rank's share
            checked, spec = spec, dataclasses.replace(spec, warn_dead=False, warn_empty=False)
        (values,) = _bridge.apply(LIOp, spec, (inputs, kernel, *taus))
        alive = None  # per unit, the global batch's samples where it rose (data-parallel: summed once, here)
        if global_checks and LIOp.has_checks(checked):
            alive = self._global_checks(checked, inputs, values)
        if _learns_from(self, inputs, training) and self.readout == "max":
            dead = self._dead_units(values, alive)
            self.dead_fraction.assign(ops.cast(ops.mean(dead), "float32"))
            if self.revival_penalty > 0 and self.trainable:  # a frozen layer adds no objective
                _add_loss(self, self._revival_loss(inputs, kernel, tuple(map(ops.stop_gradient, taus)),
                                                 ops.cast(dead, kernel.dtype)))
        return values if self.output_scale == 1.0 else values * self.output_scale

    def _global_checks(self, spec, inputs, values):
        """Data-parallel training: ``LIOp``'s warnings from the global batch's sums (units that never rose, samples,
        input spikes and those after ``t_max``), issued by rank 0. Returns the global ``alive`` counts per unit
        (``_dead_units`` takes them instead of summing again)."""
        real = ops.cast(ops.isfinite(ops.stop_gradient(inputs)), "float32")
        late = real * ops.cast(ops.greater(ops.stop_gradient(inputs), self.t_max), "float32")
        alive = _risen(values)
        local = ops.concatenate([alive, ops.stack([ops.cast(ops.shape(values)[0], "float32"), ops.sum(real),
                                                   ops.sum(late)])])
        total = self._data_parallel.sum(local)
        dead = ops.sum(ops.cast(ops.equal(total[:-3], 0), "float32"))
        empty = ops.logical_and(ops.equal(dead, float(self.units)), total[-3] > 0)
        self._data_parallel.check(LIOp, spec, dead, empty, total[-2], total[-1])
        return total[:-3]

    def _dead_units(self, values, alive=None):
        """``[units]`` float32, 1 where the unit's max readout is ``V(0) = 0`` on every sample of the training batch
        (the global batch in data-parallel training). ``alive``: the global counts ``_global_checks`` summed, if it
        ran."""
        if alive is None:
            alive = _risen(values)
            if self._data_parallel is not None:
                alive = self._data_parallel.sum(alive)
        return ops.cast(ops.equal(alive, 0), "float32")

    def _revival_loss(self, inputs, kernel, taus, dead):
        """The revival objective of the class docstring; ``dead [units]`` is 1 for the units in ``D``."""
        (integral,) = _bridge.apply(LIOp, self._integral_spec, (inputs, kernel, *taus, dead))
        if self._integral_unit is None:
            self._integral_unit = self._unit("integral")
        unit = self._integral_unit
        return self.revival_penalty / self.units * ops.sum(dead * _mean(ops.softplus(-integral / unit), axis=0))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.units)

    def get_config(self):
        config = super().get_config()
        config.update(
            units=self.units, tau_mem=self.tau_mem, tau_syn=self.tau_syn, readout=self.readout, t_max=self.t_max,
            tau_readout=self.tau_readout, scale=self.scale,
            kernel_initializer=_serialize_initializer(self.kernel_initializer),
            kernel_regularizer=keras.regularizers.serialize(self.kernel_regularizer),
            kernel_constraint=keras.constraints.serialize(self.kernel_constraint),
            trainable_time_constants=self.trainable_time_constants, min_time_constant=self.min_time_constant,
            revival_penalty=self.revival_penalty, auto_scale_rule=_AUTO_SCALE_RULE,
            parameter_rule=self._parameter_rule)
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        rule = config.pop("auto_scale_rule", 1)  # 1: saved before AUTO_UNIT_LOGIT
        parameter_rule = config.pop("parameter_rule", 1)  # 1: saved before the parameter units
        layer = super().from_config(config)
        layer._follow_scale_rule(rule)
        _set_parameter_units(layer, parameter_rule)
        return layer

    def time_constants(self):
        """``(tau_mem, tau_syn)``, each ``[units]`` in time units, as NumPy arrays (the trained ones with
        ``trainable_time_constants=True``, else the layer's scalars repeated)."""
        return _time_constants_numpy(self)

    def set_time_constants(self, tau_mem, tau_syn):
        """Set the trained time constants, each ``[units]`` (or one number for every unit) in time units (the
        inverse of ``time_constants()``)."""
        _set_time_constants(self, tau_mem, tau_syn)


def _risen(values):
    """``[units]`` float32: the samples of this batch where each readout unit's value is not its start ``0``."""
    return ops.sum(ops.cast(ops.not_equal(ops.stop_gradient(values), 0), "float32"), axis=0)


@keras.saving.register_keras_serializable(package="spikescan")
class SpikeDropout(keras.layers.Layer):
    """Dropout for spike tensors ``[batch, n, max_spikes]``: during training each spike (or, with
    ``unit="channel"``, each channel's whole spike train) is removed with probability ``rate``: set to ``+inf``, the
    padding, and each channel sorted again. At inference the input passes unchanged.

    ``keras.layers.Dropout`` does not apply to spike times: it would move a dropped spike to ``t = 0`` (the most
    influential time, not an absent spike) and delay the kept ones by ``1 / (1 - rate)``; after a ``LIFLayer`` it
    turns the ``+inf`` padding into NaN (``inf * 0``), which the next layer refuses. Nothing is rescaled here: a spike
    carries its time, not an amplitude, so the kept spikes stay exactly as they were (the next layer sees fewer
    spikes during training than at inference, as with the spike deletion of event-based data augmentation).
    Gradients flow to the kept spikes (the re-sort is a permutation); a removed spike gets none.

    Args:
        rate: probability of removing a spike (or channel), in ``[0, 1)``.
        unit: ``"spike"`` (each spike on its own) or ``"channel"`` (all spikes of an input channel of a sample).
        seed: seed of the layer's random stream (``keras.random.SeedGenerator``).
    """

    def __init__(self, rate, *, unit="spike", seed=None, **kwargs):
        kwargs.setdefault("autocast", False)  # spike times keep their dtype (float16 would round and overflow them)
        super().__init__(**kwargs)
        if isinstance(rate, bool) or not isinstance(rate, (int, float, np.integer, np.floating)) or not (
                0.0 <= float(rate) < 1.0):
            raise ValueError(f"rate must be a number in [0, 1), got {rate!r}")
        _validate.choice("unit", unit, ("spike", "channel"))
        self.rate, self.unit, self.seed = float(rate), unit, seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.supports_masking = False

    def call(self, inputs, training=None):
        """``inputs [batch, n, max_spikes]`` spike times -> the same shape, some spikes set to ``+inf``."""
        if not training or self.rate == 0.0:
            return inputs
        inputs = ops.convert_to_tensor(inputs)
        shape = ops.shape(inputs)
        draw_shape = (shape[0], shape[1], 1) if self.unit == "channel" else shape
        keep = keras.random.uniform(draw_shape, seed=self.seed_generator) >= self.rate
        dropped = ops.where(keep, inputs, ops.full_like(inputs, float("inf")))
        return ops.sort(dropped, axis=-1)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(rate=self.rate, unit=self.unit, seed=self.seed)
        return config


@keras.saving.register_keras_serializable(package="spikescan")
class ConcatenateSpikes(keras.layers.Layer):
    """Joins spike tensors ``[batch, n_k, slots_k]`` along the channel axis: ``[batch, sum_k n_k, max_k slots_k]``.

    Spike tensors from different layers seldom have the same number of slots (``max_spikes`` of each ``LIFLayer``,
    ``max_in`` of the input), so ``keras.layers.Concatenate(axis=1)`` refuses them; here each is padded with
    ``+inf`` (no spike) to the widest before joining, which changes no spike. Use it for parallel branches with other
    time constants, or a skip connection from the input to a later layer. Gradients reach every spike; the padding
    gets none.
    """

    def __init__(self, **kwargs):
        kwargs.setdefault("autocast", False)  # spike times keep their dtype
        super().__init__(**kwargs)

    def _check(self, shapes):
        if not isinstance(shapes, (list, tuple)) or len(shapes) < 2:
            raise ValueError(f"ConcatenateSpikes {self.name!r} joins a list of at least two spike tensors, got "
                             f"{shapes!r}")
        for k, shape in enumerate(shapes):
            if len(shape) != 3:
                raise ValueError(f"ConcatenateSpikes {self.name!r}: input {k} must be a spike tensor [batch, "
                                 f"channels, slots], got shape {tuple(shape)}")

    def build(self, input_shape):
        self._check(input_shape)
        super().build(input_shape)

    def call(self, inputs):
        """A list of spike tensors ``[batch, n_k, slots_k]`` -> ``[batch, sum_k n_k, max_k slots_k]``."""
        inputs = [ops.convert_to_tensor(x) for x in inputs]
        dtypes = {keras.backend.standardize_dtype(x.dtype) for x in inputs}
        if len(dtypes) > 1:
            raise TypeError(f"ConcatenateSpikes {self.name!r}: the spike tensors have different dtypes "
                            f"{sorted(dtypes)}; give the layers one dtype")
        width = max(int(x.shape[2]) for x in inputs)
        padded = [ops.pad(x, [[0, 0], [0, 0], [0, width - int(x.shape[2])]], constant_values=float("inf"))
                  for x in inputs]
        return ops.concatenate(padded, axis=1)

    def compute_output_shape(self, input_shape):
        self._check(input_shape)
        channels = [shape[1] for shape in input_shape]
        slots = [shape[2] for shape in input_shape]
        return (input_shape[0][0], None if None in channels else sum(channels), None if None in slots else max(slots))
