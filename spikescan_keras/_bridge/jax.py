"""JAX bridge: ``jax.custom_vjp`` around ``jax.pure_callback``, so the op works eagerly and under ``jax.jit``.

Device: callbacks receive host NumPy arrays, so spikescan always runs its NumPy implementation here. On a GPU or
TPU backend JAX copies the inputs to the host and the results back: correct but slow, and a warning says so once.
There is no zero-copy CuPy path under ``jit`` (it would need an XLA FFI custom call; ``pure_callback`` cannot hand
device buffers over). Use the torch backend for GPU training.

Errors: an exception raised by spikescan inside a callback (e.g. the ``ValueError`` for negative spike times)
reaches the caller as a ``jax.errors.JaxRuntimeError`` whose message contains the original one.

Residuals: the forward callback keeps the spikescan result in a small host cache and returns an integer token;
the backward callback takes the result back by that token, so a training step runs the forward once. The cache is
bounded (``_CACHE_SIZE`` results): a backward whose result was evicted, or that runs twice, recomputes the forward
from the saved inputs, which is correct and costs one extra forward.
"""

from __future__ import annotations

import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from ._residuals import ResidualCache

_CACHE_SIZE = 16
_cache = ResidualCache(_CACHE_SIZE)
_warned_device = False


def _structs(op, spec, inputs):
    return tuple(jax.ShapeDtypeStruct(tuple(shape), dtype) for shape, dtype in op.output_specs(spec, inputs))


def _host_arrays(arrays):
    return tuple(np.asarray(a) for a in arrays)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _call(op, spec, inputs):
    return jax.pure_callback(lambda *a: op.forward(spec, _host_arrays(a))[0], _structs(op, spec, inputs), *inputs,
                             vmap_method="sequential")


def _call_fwd(op, spec, inputs):
    def host(*arrays):
        outputs, result = op.forward(spec, _host_arrays(arrays))
        return (*outputs, np.int32(_cache.stash(result)))

    structs = _structs(op, spec, inputs) + (jax.ShapeDtypeStruct((), jnp.int32),)
    *outputs, token = jax.pure_callback(host, structs, *inputs, vmap_method="sequential")
    return tuple(outputs), (inputs, token)


def _call_bwd(op, spec, residuals, cotangents):
    inputs, token = residuals

    def host(token, grad, *arrays):
        arrays = _host_arrays(arrays)
        result = _cache.take(token)
        if result is None:
            result = op.forward(spec, arrays)[1]
        grads = op.backward(spec, result, np.asarray(grad))
        return tuple(np.asarray(g, dtype=a.dtype) for g, a in zip(grads, arrays))

    structs = tuple(jax.ShapeDtypeStruct(x.shape, x.dtype) for x in inputs)
    grads = jax.pure_callback(host, structs, token, cotangents[0], *inputs, vmap_method="sequential")
    return (tuple(grads),)


_call.defvjp(_call_fwd, _call_bwd)


def apply(op, spec, inputs):
    """Run ``op`` (see ``spikescan_keras._host``) on JAX arrays; returns its outputs as a tuple of arrays."""
    global _warned_device
    if jax.default_backend() != "cpu" and not _warned_device:
        _warned_device = True
        warnings.warn(f"spikescan_keras on the JAX backend runs on the host through pure_callback; on "
                      f"{jax.default_backend()!r} every call copies its inputs to the host and back. Use the torch "
                      "backend for zero-copy GPU training.", stacklevel=3)
    return _call(op, spec, tuple(inputs))
