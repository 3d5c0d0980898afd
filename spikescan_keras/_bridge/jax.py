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

Data parallelism: under a Keras distribution that shards the batch axis (``keras.distribution.DataParallel``, or
``ModelParallel``'s data layout) a ``pure_callback`` would receive the global batch gathered onto one device. So
``apply`` wraps the op in ``jax.shard_map`` over the batch axis: each device's callback runs on its own slice of
the batch (on its own host, with several processes), the outputs stay sharded like the inputs, and the gradients of
the shared inputs (weights) are summed over the devices by the transpose of ``shard_map``. An op that needs the
whole batch (the first-batch calibration, ``per_sample = False``) all-gathers its first input inside the
``shard_map`` instead, so every device computes the same result from the global batch, as one device would. A batch
that does not divide evenly over the devices runs unsharded.
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


def _batch_sharding(batch):
    """``(mesh, axis, devices)`` when the active Keras distribution shards axis 0 of an input batch of size ``batch``
    over ``devices > 1`` devices (``axis``: a mesh axis name or a tuple of them), else None."""
    from keras import distribution as keras_distribution

    dist = keras_distribution.distribution()
    if dist is None:
        return None
    sharding = dist.get_data_layout((batch,)).backend_layout
    axis = sharding.spec[0] if len(sharding.spec) else None
    if axis is None:
        return None
    mesh = sharding.mesh
    devices = int(np.prod([mesh.shape[name] for name in (axis if isinstance(axis, tuple) else (axis,))]))
    if devices < 2 or batch % devices:
        return None
    return mesh, axis, devices


def _sharded(op, spec, inputs, mesh, axis):
    """``_call`` inside ``jax.shard_map``: ``inputs[0]`` (and the outputs) split along axis 0 over ``axis``, the other
    inputs replicated."""
    P = jax.sharding.PartitionSpec
    shared = (P(),) * (len(inputs) - 1)
    if op.per_sample:
        def local(first, *rest):
            return _call(op, spec, (first, *rest))

        out_specs = tuple(P(axis) for _ in op.output_specs(spec, inputs))
    else:
        def local(first, *rest):
            return _call(op, spec, (jax.lax.all_gather(first, axis, tiled=True), *rest))

        out_specs = tuple(P() for _ in op.output_specs(spec, inputs))
    # check_vma=False: the callbacks' outputs carry no replication information; the transpose then sums the
    # cotangents of the replicated inputs over the devices (psum), which is the gradient of the weights.
    return jax.shard_map(local, mesh=mesh, in_specs=(P(axis), *shared), out_specs=out_specs,
                         check_vma=False)(*inputs)


def apply(op, spec, inputs):
    """Run ``op`` (see ``spikescan_keras._host``) on JAX arrays; returns its outputs as a tuple of arrays."""
    global _warned_device
    if jax.default_backend() != "cpu" and not _warned_device:
        _warned_device = True
        warnings.warn(f"spikescan_keras on the JAX backend runs on the host through pure_callback; on "
                      f"{jax.default_backend()!r} every call copies its inputs to the host and back. Use the torch "
                      "backend for zero-copy GPU training.", stacklevel=3)
    inputs = tuple(inputs)
    sharding = _batch_sharding(inputs[0].shape[0])
    if sharding is None:
        return _call(op, spec, inputs)
    mesh, axis, devices = sharding
    # Each device stashes its own forward results until its backward takes them back.
    _cache.size = max(_cache.size, _CACHE_SIZE * devices)
    return tuple(_sharded(op, spec, inputs, mesh, axis))
