"""The two ops the Keras layers call, as backend-free forward/backward pairs on NumPy (or CuPy) arrays.

A bridge (``_bridge/<backend>.py``) turns one of these ops into a custom-gradient op of its framework. Every op
has the same shape:

- ``forward(spec, inputs) -> (outputs, result)``: ``inputs`` a tuple of arrays, ``outputs`` a tuple of arrays whose
  first entry is the only differentiable one, ``result`` what the backward needs (a spikescan result object).
- ``backward(spec, result, grad, input_grad=True) -> grads``: ``grad`` the cotangent of ``outputs[0]``; one
  gradient per input, with its shape and dtype. ``input_grad=False`` (the framework needs no gradient for
  ``inputs[0]``, e.g. a first layer fed with data) lets an op skip that work and return ``None`` in its place.
- ``output_specs(spec, inputs) -> ((shape, dtype), ...)`` for frameworks that need shapes before running (JAX).

Only numerics from ``spikescan`` run here; nothing imports a deep-learning framework.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Optional

import numpy as np

import spikescan


class CappedSpikesWarning(UserWarning):
    """Some neurons fired more than ``max_spikes`` times: their extra spikes were not passed to the next layer."""


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


@dataclass(frozen=True)
class LISpec:
    """Static arguments of ``spikescan.li_forward``."""

    tau_mem: float
    tau_syn: float
    readout: str
    t_max: float
    tau_readout: Optional[float]


class LIFOp:
    """``inputs = (input_times, weights)`` or ``(input_times, weights, delays)``; ``outputs = (times, counts)``.

    ``times [batch, n_out, max_spikes]`` has the dtype of ``input_times``; ``counts [batch, n_out]`` is int32 (the
    true spike count per neuron, which may exceed ``max_spikes``).
    """

    @staticmethod
    def forward(spec: LIFSpec, inputs):
        input_times, weights, *delays = inputs
        result = spikescan.lif_forward(
            input_times, weights, delays=delays[0] if delays else None, tau_mem=spec.tau_mem, tau_syn=spec.tau_syn,
            threshold=spec.threshold, max_spikes=spec.max_spikes, method=spec.method, chunk_size=spec.chunk_size,
            solver=spec.solver)
        if result.capped_spikes:
            # The message has no count, so Python's default filter shows it once per layer rather than every batch;
            # the layer's ``capped_spikes`` variable keeps the running total.
            warnings.warn(
                f"LIFLayer {spec.layer_name!r}: some neurons fired more than max_spikes={spec.max_spikes} times; "
                "their extra spikes keep exact dynamics but are not passed on. The layer's `capped_spikes` "
                "variable counts them; raise max_spikes if this matters.", CappedSpikesWarning)
        return (result.times, result.counts.astype(np.int32)), result

    @staticmethod
    def backward(spec: LIFSpec, result, grad_times, input_grad=True):
        grads = spikescan.lif_backward(result, grad_times, input_times_grad=input_grad)
        return (grads.input_times, grads.weights) + (() if grads.delays is None else (grads.delays,))

    @staticmethod
    def output_specs(spec: LIFSpec, inputs):
        input_times, weights = inputs[:2]
        batch, n_out = input_times.shape[0], weights.shape[1]
        return ((batch, n_out, spec.max_spikes), input_times.dtype), ((batch, n_out), np.dtype(np.int32))


class LIOp:
    """``inputs = (input_times, weights)``; ``outputs = (values,)`` with ``values [batch, n_out]``."""

    @staticmethod
    def forward(spec: LISpec, inputs):
        input_times, weights = inputs
        result = spikescan.li_forward(input_times, weights, tau_mem=spec.tau_mem, tau_syn=spec.tau_syn,
                                      readout=spec.readout, t_max=spec.t_max, tau_readout=spec.tau_readout)
        return (result.values,), result

    @staticmethod
    def backward(spec: LISpec, result, grad_values, input_grad=True):
        # li_backward always computes the input gradient (cheap: one term per input spike and neuron).
        grads = spikescan.li_backward(result, grad_values)
        return grads.input_times, grads.weights

    @staticmethod
    def output_specs(spec: LISpec, inputs):
        input_times, weights = inputs
        return (((input_times.shape[0], weights.shape[1]), input_times.dtype),)
