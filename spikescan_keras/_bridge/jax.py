"""JAX bridge: ``jax.custom_vjp`` around a host callback, so the op works eagerly and under ``jax.jit``.

Routes: the environment variable ``SPIKESCAN_JAX_ROUTE`` (``auto``, the default, ``buffer`` or ``pure``; read when an
op is traced, so a compiled step keeps the route it was traced with) picks how the callback gets its arrays.

- ``buffer``: ``jax.experimental.buffer_callback`` (jax >= 0.6.1) hands the callback XLA's own buffers. On a GPU
  they become CuPy arrays through ``__cuda_array_interface__`` (no copy), every CuPy call is enqueued on XLA's CUDA
  stream of the op (``cupy.cuda.ExternalStream(ctx.stream)``) and the results are copied into XLA's output buffers on
  that stream, so a training step moves no spike or weight data between host and device. On CPU the buffers are
  NumPy views and spikescan's CPU engine runs on them (the same numbers as ``pure``; this is how the CPU tests
  exercise the route). ``auto`` takes this route on a GPU when CuPy is installed.
- ``pure``: ``jax.pure_callback`` hands host NumPy arrays over. ``auto`` takes it on CPU and, with a one-time warning
  that every call copies its inputs to the host and the results back, on a GPU without CuPy or without
  ``buffer_callback``, and on TPU (which ``buffer_callback`` does not support). ``buffer`` falls back to it, with the
  same warning, where the buffer route cannot run.

GPU memory: JAX preallocates 75% of the GPU for its own pool, and CuPy's kernels allocate from CuPy's pool beside
it. Leave CuPy room with ``XLA_PYTHON_CLIENT_MEM_FRACTION`` (e.g. ``0.5``) or ``XLA_PYTHON_CLIENT_PREALLOCATE=false``,
set before jax is imported.

Buffer-route details. The callback runs at every execution (``command_buffer_compatible=False``: its work depends on
the data, e.g. spike counts size spikescan's arrays, and on the residual cache, so it cannot be replayed from a CUDA
graph). XLA may reuse its buffers once the callback has returned, so a forward that keeps its result for the backward
first copies its inputs (on the device). The ops' host checks (the LIF op's spikes beyond ``max_spikes`` and silent
training batch, a readout's all-zero batch, dead units when it has no revival objective, and inputs mostly after
``t_max``) are left out of the op (``host_checks = False``): where the op ``has_checks``, the bridge computes their
values from the op's outputs and inputs on the device and hands only those scalars to a ``jax.debug.callback`` that
warns, outside the op.
spikescan's own checks (input validation, runaway firing) and the backward's read of its residual token still read a
few scalars inside the op.

Under ``jax.vmap`` either route calls the op once per mapped element (``vmap_method="sequential"``).

Errors: an exception raised by spikescan inside a callback (e.g. the ``ValueError`` for negative spike times, a
``RunawayFiringError``) reaches the caller, on either route, as a ``jax.errors.JaxRuntimeError`` (a
``RuntimeError``) whose message contains the original one.

Residuals: the forward callback keeps the spikescan result in a small host cache and returns an integer token;
the backward callback takes the result back by that token, so a training step runs the forward once. The cache is
bounded (``_CACHE_SIZE`` results): a backward whose result was evicted, or that runs twice, recomputes the forward
from the saved inputs, which is correct and costs one extra forward.

Input gradient: the op's ``custom_vjp`` uses symbolic zeros, so its forward learns whether anything differentiates
the input spike times (``CustomVJPPrimal.perturbed``). A first layer fed with data is not differentiated with respect
to its input in a training step (Keras differentiates the trainable variables), and its backward skips that gradient
(``input_grad=False``), as torch's ``needs_input_grad`` lets the torch bridge do; a cotangent that is a symbolic zero
(the output does not reach the loss) gives zero gradients without a callback.

Data parallelism: under a Keras distribution that shards the batch axis (``keras.distribution.DataParallel``, or
``ModelParallel``'s data layout) a callback would receive the global batch gathered onto one device. So ``apply``
wraps the op in ``jax.shard_map`` over the batch axis: each device's callback runs on its own slice of the batch (on
its own host, with several processes), the outputs stay sharded like the inputs, and the gradients of the shared
inputs (weights) are summed over the devices by the transpose of ``shard_map``. An op that needs the whole batch (the
first-batch calibration, ``per_sample = False``) all-gathers its first input inside the ``shard_map`` instead, so
every device computes the same result from the global batch, as one device would. A batch that does not divide
evenly over the devices runs unsharded. Both routes run inside ``shard_map``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from ._residuals import ResidualCache

_CACHE_SIZE = 16
_cache = ResidualCache(_CACHE_SIZE)
# False: every op computes the gradient of its input spike times, differentiated or not (benchmarks/
# bench_training_step.py times both; read when a step is traced).
SKIP_INPUT_GRAD = True
_ROUTES = ("auto", "buffer", "pure")
_ROUTE_VARIABLE = "SPIKESCAN_JAX_ROUTE"
_warned = set()  # the one-time warnings already given
_DLPACK_CPU = 1  # DLDeviceType kDLCPU


def _warn_once(key, message):
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, stacklevel=5)  # the layer that called the op


def _buffer_callback():
    """``jax.experimental.buffer_callback.buffer_callback``, or None on jax < 0.6.1."""
    try:
        from jax.experimental.buffer_callback import buffer_callback
    except ImportError:
        return None
    return buffer_callback


def _cupy_missing():
    """Why CuPy cannot run the buffer route's kernels on XLA's CUDA buffers, or None when it can."""
    try:
        import cupy
    except ImportError:
        return "CuPy is not installed (pip install cupy-cuda12x)"
    try:  # pragma: no cover - needs a GPU
        if cupy.cuda.runtime.is_hip:
            return "CuPy reads XLA's buffers through the CUDA array interface, which its ROCm build lacks"
        if not cupy.cuda.is_available():
            return "CuPy finds no CUDA device"
    except Exception as error:  # e.g. a CuPy built for another CUDA version  # pragma: no cover - needs a GPU
        return f"CuPy cannot use the GPU ({error})"
    return None  # pragma: no cover - needs a GPU


def _buffer_route_missing(platform):
    """Why the buffer route cannot run on ``platform`` (the default JAX backend), or None when it can."""
    if _buffer_callback() is None:
        return f"jax {jax.__version__} has no jax.experimental.buffer_callback (jax >= 0.6.1 has)"
    if platform == "cpu":
        return None
    if platform != "gpu":
        return f"buffer_callback does not run on {platform!r}"
    return _cupy_missing()


def route():
    """``"buffer"`` or ``"pure"``: the route ``apply`` takes now, from ``SPIKESCAN_JAX_ROUTE`` and the default JAX
    backend (see the module docstring). Where the buffer route cannot run it is ``"pure"``, and off CPU a one-time
    warning says why and that every call copies through the host."""
    choice = os.environ.get(_ROUTE_VARIABLE, "auto").strip().lower() or "auto"
    if choice not in _ROUTES:
        raise ValueError(f"{_ROUTE_VARIABLE} must be one of {', '.join(_ROUTES)}; got {choice!r}")
    platform = jax.default_backend()
    if choice == "auto" and platform == "cpu":
        return "pure"
    reason = f"{_ROUTE_VARIABLE}=pure" if choice == "pure" else _buffer_route_missing(platform)
    if reason is None:
        return "buffer"
    if platform != "cpu":
        _warn_once(("pure", platform, reason),
                   f"spikescan_keras on the JAX backend runs on the host through pure_callback ({reason}): on "
                   f"{platform!r} every call copies its inputs to the host and the results back. Install CuPy (and "
                   "jax >= 0.6.1) for the zero-copy buffer route on a CUDA GPU, or use the torch backend.")
    elif choice == "buffer":
        _warn_once(("pure", platform, reason), f"{_ROUTE_VARIABLE}=buffer: {reason}; using pure_callback.")
    return "pure"


def _structs(op, spec, inputs):
    return tuple(jax.ShapeDtypeStruct(tuple(shape), dtype) for shape, dtype in op.output_specs(spec, inputs))


_TOKEN = jax.ShapeDtypeStruct((), jnp.int32)


# -- pure route ---------------------------------------------------------------------------------------------------

def _host_arrays(arrays):
    return tuple(np.asarray(a) for a in arrays)


def _pure_forward(op, spec, inputs, stash):
    def host(*arrays):
        outputs, result = op.forward(spec, _host_arrays(arrays))
        return (*outputs, np.int32(_cache.stash(result))) if stash else tuple(outputs)

    structs = _structs(op, spec, inputs) + ((_TOKEN,) if stash else ())
    return tuple(jax.pure_callback(host, structs, *inputs, vmap_method="sequential"))


def _wanted(values, input_grad):
    """The entries of ``values`` (one per op input) whose gradient is computed: all, or all but the first."""
    return tuple(values) if input_grad else tuple(values)[1:]


def _pure_backward(op, spec, token, grad, inputs, input_grad):
    def host(token, grad, *arrays):
        arrays = _host_arrays(arrays)
        result = _cache.take(token)
        if result is None:
            result = op.forward(spec, arrays)[1]
        grads = op.backward(spec, result, np.asarray(grad), input_grad=input_grad)
        return tuple(np.asarray(g, dtype=a.dtype) for g, a in zip(*(_wanted(v, input_grad) for v in (grads, arrays))))

    structs = tuple(jax.ShapeDtypeStruct(x.shape, x.dtype) for x in _wanted(inputs, input_grad))
    return tuple(jax.pure_callback(host, structs, token, grad, *inputs, vmap_method="sequential"))


# -- buffer route -------------------------------------------------------------------------------------------------

@contextlib.contextmanager
def _array_library(ctx, buffers):
    """NumPy for host buffers; for GPU buffers CuPy, with XLA's stream of this call current on the buffers' device."""
    kind, device = buffers[0].__dlpack_device__()
    if kind == _DLPACK_CPU:
        yield np
        return
    import cupy  # pragma: no cover - needs a GPU

    with cupy.cuda.Device(device), cupy.cuda.ExternalStream(ctx.stream, device):  # pragma: no cover - needs a GPU
        yield cupy


def _array(xp, buffer, copy=False):
    """A NumPy or CuPy array on an XLA buffer (a view, valid during the callback only), or a copy of it."""
    if not int(np.prod(buffer.shape)):
        return xp.empty(buffer.shape, buffer.dtype)
    array = xp.asarray(buffer)
    return array.copy() if copy else array


def _write(xp, buffers, values):
    """Copy ``values`` into XLA's output ``buffers`` (casting to their dtypes); on a GPU on the current stream."""
    for buffer, value in zip(buffers, values):
        if int(np.prod(buffer.shape)):
            xp.asarray(buffer)[...] = value


def _buffer(callback, structs):
    # Not command-buffer compatible: the callback must run at every execution (see the module docstring).
    return _buffer_callback()(callback, structs, vmap_method="sequential", command_buffer_compatible=False)


def _buffer_forward(op, spec, inputs, stash):
    def callback(ctx, outs, *buffers):
        with _array_library(ctx, buffers) as xp:
            # A stashed result may refer to its inputs, which XLA reuses after the callback: it gets copies.
            outputs, result = op.forward(spec, tuple(_array(xp, b, copy=stash) for b in buffers))
            _write(xp, outs, (*outputs, _cache.stash(result)) if stash else outputs)

    structs = _structs(op, spec, inputs) + ((_TOKEN,) if stash else ())
    return tuple(_buffer(callback, structs)(*inputs))


def _buffer_backward(op, spec, token, grad, inputs, input_grad):
    def callback(ctx, outs, token, grad, *buffers):
        with _array_library(ctx, buffers) as xp:
            arrays = tuple(_array(xp, b) for b in buffers)
            result = _cache.take(int(_array(xp, token)))
            if result is None:
                result = op.forward(spec, arrays)[1]
            _write(xp, outs, _wanted(op.backward(spec, result, _array(xp, grad), input_grad=input_grad), input_grad))

    structs = tuple(jax.ShapeDtypeStruct(x.shape, x.dtype) for x in _wanted(inputs, input_grad))
    return tuple(_buffer(callback, structs)(token, grad, *inputs))


# -- the custom-gradient op ---------------------------------------------------------------------------------------

_FORWARD = {"pure": _pure_forward, "buffer": _buffer_forward}
_BACKWARD = {"pure": _pure_backward, "buffer": _buffer_backward}


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _call(op, spec, route, inputs):
    return _FORWARD[route](op, spec, inputs, stash=False)


def _call_fwd(op, spec, route, inputs):
    # symbolic_zeros: each input comes as a CustomVJPPrimal whose ``perturbed`` says whether anything differentiates
    # with respect to it; a first layer fed with data (Keras differentiates the trainable variables only) is not,
    # so its backward skips the input-time gradient (as torch's needs_input_grad does).
    values = tuple(x.value for x in inputs)
    *outputs, token = _FORWARD[route](op, spec, values, stash=True)
    return tuple(outputs), (values, token, bool(inputs[0].perturbed) or not SKIP_INPUT_GRAD)


def _call_bwd(op, spec, route, residuals, cotangents):
    inputs, token, input_grad = residuals
    grad = cotangents[0]
    if isinstance(grad, jax.custom_derivatives.SymbolicZero):
        # The output does not reach the loss: every gradient is zero (the stashed result ages out of the cache).
        return ((None,) * len(inputs),)
    grads = _BACKWARD[route](op, spec, token, grad, inputs, input_grad)
    return (grads if input_grad else (None, *grads),)


_call.defvjp(_call_fwd, _call_bwd, symbolic_zeros=True)


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


def _sharded(op, spec, route, inputs, mesh, axis):
    """``_call`` inside ``jax.shard_map``: ``inputs[0]`` (and the outputs) split along axis 0 over ``axis``, the other
    inputs replicated."""
    P = jax.sharding.PartitionSpec
    shared = (P(),) * (len(inputs) - 1)
    if op.per_sample:
        def local(first, *rest):
            return _call(op, spec, route, (first, *rest))

        out_specs = tuple(P(axis) for _ in op.output_specs(spec, inputs))
    else:
        def local(first, *rest):
            return _call(op, spec, route, (jax.lax.all_gather(first, axis, tiled=True), *rest))

        out_specs = tuple(P() for _ in op.output_specs(spec, inputs))
    # check_vma=False: the callbacks' outputs carry no replication information; the transpose then sums the
    # cotangents of the replicated inputs over the devices (psum), which is the gradient of the weights.
    mapped = jax.shard_map(local, mesh=mesh, in_specs=(P(axis), *shared), out_specs=out_specs, check_vma=False)
    return tuple(mapped(*inputs))


@functools.lru_cache(maxsize=64)
def _eager_sharded(op, spec, route, mesh, axis):
    """``_sharded`` compiled for eager calls (``model(x)`` outside ``fit``, ``predict`` and ``jit``): jax runs an eager
    ``shard_map`` primitive by primitive and has no rule there for a ``custom_vjp`` with symbolic zeros
    (``NotImplementedError``); compiled, it runs as inside ``fit``. Cached, so that repeated calls reuse jit's
    compilation (one per input shape) instead of tracing a fresh closure each time."""
    return jax.jit(lambda *inputs: _sharded(op, spec, route, inputs, mesh, axis))


def _check_on_host(op, spec, *values):
    op.check(spec, *(np.asarray(v) for v in values))


def apply(op, spec, inputs):
    """Run ``op`` (see ``spikescan_keras._host``) on JAX arrays; returns its outputs as a tuple of arrays."""
    chosen = route()
    deferred = chosen == "buffer" and hasattr(op, "check") and op.has_checks(spec)
    if deferred:
        spec = dataclasses.replace(spec, host_checks=False)
    inputs = tuple(inputs)
    sharding = _batch_sharding(inputs[0].shape[0])
    if sharding is None:
        outputs = _call(op, spec, chosen, inputs)
    else:
        mesh, axis, devices = sharding
        # Each device stashes its own forward results until its backward takes them back.
        _cache.size = max(_cache.size, _CACHE_SIZE * devices)
        if any(isinstance(x, jax.core.Tracer) for x in inputs):
            outputs = _sharded(op, spec, chosen, inputs, mesh, axis)
        else:
            outputs = tuple(_eager_sharded(op, spec, chosen, mesh, axis)(*inputs))
    if deferred:
        values = op.check_values(spec, tuple(jax.lax.stop_gradient(y) for y in outputs),
                                 tuple(jax.lax.stop_gradient(x) for x in inputs))
        jax.debug.callback(functools.partial(_check_on_host, op, spec), *values)
    return outputs
