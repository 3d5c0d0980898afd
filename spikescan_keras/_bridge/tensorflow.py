"""TensorFlow bridge: ``tf.custom_gradient`` around two ``tf.numpy_function`` calls (forward, backward).

The op works eagerly and inside ``tf.function`` (graph mode, what ``model.fit`` runs). It cannot be compiled by
XLA, so the layers set ``supports_jit = False`` on this backend and Keras resolves ``jit_compile="auto"`` (and an
explicit ``jit_compile=True``, with Keras' warning) to ``False``. A SavedModel written by ``model.export`` refers to
the Python callbacks of the process that wrote it, so it cannot be loaded and run elsewhere; ``model.save`` (the
``.keras`` format: config and weights) works.

Device: callbacks receive host NumPy arrays, so spikescan always runs its NumPy implementation here. With a GPU
visible to TensorFlow, every call copies its inputs to the host and the results back: correct but slow, and a
warning says so once. There is no zero-copy CuPy path: ``tf.numpy_function`` hands over host arrays, and although
``tf.experimental.dlpack`` can share device buffers, TensorFlow exposes no CUDA stream for CuPy to order its work
on. Use the torch backend for GPU training.

Errors: an exception raised by spikescan (e.g. the ``ValueError`` for negative spike times) reaches an eager
caller as it is; inside ``tf.function`` it reaches the caller as a ``tf.errors.OpError`` (``ValueError`` becomes
``InvalidArgumentError``) whose message contains the original one.

Residuals: as on the jax bridge, the forward callback keeps the spikescan result in a bounded host cache
(``_residuals.ResidualCache``) and returns an integer token; the backward callback takes the result back by that
token, or recomputes the forward from the saved inputs when it was evicted.

The first input's gradient (the input spike times') is computed only when a tape can ask for it (TensorFlow's
``should_record_backprop``, which ``tf.function`` itself consults): eagerly, not at all when no active tape records
that input (a layer fed with data); while a ``tf.function`` is traced, where a tape outside the function may still
differentiate it, by an op of its own that recomputes the forward and backward, which the traced function prunes
when nothing uses its result (``model.fit``'s step: the data is not differentiated). A tape that does use it pays
the forward and backward once more for that layer.

The gradients are not differentiable themselves: a second-order gradient through the op raises a ``RuntimeError``
instead of silently leaving out its terms.

Outputs after the first get no gradient: their cotangents (zeros of their dtype, or ``None``) are ignored, and a
``None`` cotangent of the first output gives ``None`` input gradients.
"""

from __future__ import annotations

import warnings

import numpy as np
import tensorflow as tf

from .._host import second_order_error
from ._residuals import ResidualCache

try:  # TensorFlow's own test for "does an active tape watch these tensors", as it uses it for tf.function calls
    from tensorflow.python.eager.record import should_record_backprop as _should_record_backprop
except ImportError:  # pragma: no cover - other TensorFlow versions: every input gradient is computed
    _should_record_backprop = None

# False: the first input's gradient is always computed (benchmarks/bench_training_step.py's "input_grad" variant).
SKIP_INPUT_GRAD = True

_CACHE_SIZE = 16
_cache = ResidualCache(_CACHE_SIZE)
_device_checked = False  # the GPU warning is decided on the first call


def _output_specs(op, spec, inputs):
    return tuple((tf.TensorShape(shape), tf.as_dtype(dtype)) for shape, dtype in op.output_specs(spec, inputs))


def _host_arrays(arrays):
    return tuple(np.asarray(a) for a in arrays)


def _custom_gradient_op(op, spec):
    """``fn(*inputs) -> outputs``: ``op`` as a TensorFlow function with ``op.backward`` as its gradient."""

    @tf.custom_gradient
    def fn(*inputs):
        input_grad = _input_grad_needed(inputs[0])
        specs = _output_specs(op, spec, inputs)
        input_dtypes = tuple(np.dtype(x.dtype.as_numpy_dtype) for x in inputs)

        def forward(*arrays):
            outputs, result = op.forward(spec, _host_arrays(arrays))
            typed = tuple(np.asarray(y, dtype=dtype.as_numpy_dtype) for y, (_, dtype) in zip(outputs, specs))
            return (*typed, np.int32(_cache.stash(result)))

        *outputs, token = tf.numpy_function(forward, inputs, [dtype for _, dtype in specs] + [tf.int32],
                                            stateful=True, name=f"spikescan_{op.__name__}")
        for y, (shape, _) in zip(outputs, specs):
            y.set_shape(shape)

        def backward(grad, *unused):
            if grad is None:  # the differentiable output does not reach the loss
                return (None,) * len(inputs)

            def host(token, grad, *arrays):
                arrays = _host_arrays(arrays)
                result = _cache.take(token)
                if result is None:
                    result = op.forward(spec, arrays)[1]
                grads = op.backward(spec, result, np.asarray(grad), input_grad=input_grad is True)
                return tuple(np.asarray(g, dtype=dtype)
                             for g, dtype in zip(_wanted(grads, input_grad), _wanted(input_dtypes, input_grad)))

            grads = tf.numpy_function(host, (token, grad, *inputs), [x.dtype for x in _wanted(inputs, input_grad)],
                                      stateful=True, name=f"spikescan_{op.__name__}_grad")
            grads = grads if isinstance(grads, (list, tuple)) else [grads]  # one output comes back alone
            for g, x in zip(grads, _wanted(inputs, input_grad)):
                g.set_shape(x.shape)
            sources = (grad, *inputs)
            grads = _not_twice_differentiable(op, spec, tuple(grads), sources)
            if input_grad is False:
                return (None, *grads)
            if input_grad is None:
                # Unknown while tracing: the input gradient from an op of its own, which recomputes the forward and
                # the whole backward. It is stateless, so a traced function whose outputs do not use it (model.fit:
                # nothing differentiates the data) prunes it; a tape outside the function that does gets it.
                def input_host(grad, *arrays):
                    arrays = _host_arrays(arrays)
                    grads = op.backward(spec, op.forward(spec, arrays)[1], np.asarray(grad))
                    return np.asarray(grads[0], dtype=input_dtypes[0])

                # Its own second-order guard: one shared with the other gradients would keep it alive.
                input_grad_value = tf.numpy_function(input_host, (grad, *inputs), inputs[0].dtype, stateful=False,
                                                     name=f"spikescan_{op.__name__}_input_grad")
                input_grad_value.set_shape(inputs[0].shape)
                grads = (*_not_twice_differentiable(op, spec, (input_grad_value,), sources), *grads)
            return grads

        return tuple(outputs), backward

    return fn


def _wanted(values, input_grad):
    """``values`` (one per input), without the first unless its gradient is known to be needed."""
    return tuple(values) if input_grad is True else tuple(values)[1:]


def _input_grad_needed(x):
    """Whether a gradient tape will ask for the gradient of the op's first input ``x`` (the input spike times):
    True when an active tape records ``x``; False when none does and the op runs eagerly (a tape that did not
    record ``x`` when the op ran can never differentiate it); None (unknown) while a ``tf.function`` is traced, since
    a tape outside the function may differentiate it through its inputs later."""
    if SKIP_INPUT_GRAD and _should_record_backprop is not None:
        if _should_record_backprop([x]):
            return True
        return False if tf.executing_eagerly() else None
    return True


def _not_twice_differentiable(op, spec, grads, sources):
    """``grads`` through an identity connected to ``sources`` (the op's inputs and incoming gradient) whose gradient
    raises: the backward is a ``tf.numpy_function``, which TensorFlow treats as not differentiable, so a
    second-order gradient (a tape recording the backward) would otherwise silently leave out every term through
    the op."""
    count = len(grads)

    @tf.custom_gradient
    def identity(*tensors):
        def second_order(*upstream):
            raise second_order_error(op, spec)

        return tuple(tf.identity(g) for g in tensors[:count]), second_order

    return identity(*grads, *sources)


def _warn_device_once():
    global _device_checked
    if _device_checked:
        return
    _device_checked = True
    if tf.config.list_logical_devices("GPU"):
        warnings.warn("spikescan_keras on the TensorFlow backend runs on the host through tf.numpy_function; with a "
                      "GPU every call copies its inputs to the host and the results back. Use the torch backend for "
                      "zero-copy GPU training.", stacklevel=4)


def apply(op, spec, inputs):
    """Run ``op`` (see ``spikescan_keras._host``) on TensorFlow tensors; returns its outputs as a tuple of tensors."""
    _warn_device_once()
    return _custom_gradient_op(op, spec)(*(tf.convert_to_tensor(x) for x in inputs))
