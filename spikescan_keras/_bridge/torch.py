"""PyTorch bridge: a ``torch.autograd.Function`` whose forward and backward are spikescan's.

- CPU tensors are viewed as NumPy arrays (``detach().numpy()``, zero-copy) and results are wrapped back with
  ``torch.from_numpy`` (zero-copy).
- CUDA tensors are handed to CuPy by DLPack and spikescan's CuPy path runs on torch's current stream of the tensor's
  device, so no host copy and no extra synchronisation happen; results come back by DLPack too. This path needs
  CuPy and a CUDA build of torch and is not exercised by the CPU test-suite.
- Other devices (MPS, XPU, ...) raise a ``TypeError`` naming the device.

The backward is not differentiable itself: a second-order gradient through the op raises instead of silently
leaving out its terms.

Residuals: the spikescan result object lives on ``ctx`` until autograd frees the graph, so the backward does not
recompute the forward.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from .._host import second_order_error


def _check_devices(inputs):
    device = inputs[0].device
    if device.type not in ("cpu", "cuda"):
        raise TypeError(f"spikescan_keras supports CPU and CUDA tensors on the torch backend, got a tensor on {device}")
    if any(x.device != device for x in inputs):
        raise ValueError(f"spike times and weights must be on one device, got {[str(x.device) for x in inputs]}")
    return device


def _to_array(tensor):
    """Zero-copy NumPy (CPU) or CuPy (CUDA) view of ``tensor`` without autograd history."""
    tensor = tensor.detach().contiguous()
    if tensor.device.type == "cpu":
        return tensor.numpy()
    import cupy

    return cupy.from_dlpack(tensor)


def _to_tensor(array, device):
    if device.type == "cpu":
        return torch.from_numpy(array)
    return torch.from_dlpack(array)


@contextlib.contextmanager
def _on_stream(device):
    """Run CuPy work on torch's current stream of ``device`` (nothing to do on CPU)."""
    if device.type != "cuda":
        yield
        return
    import cupy

    stream = torch.cuda.current_stream(device)
    with cupy.cuda.Device(device.index), cupy.cuda.ExternalStream(stream.cuda_stream, device.index):
        yield


class _HostFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, op, spec, *inputs):
        device = _check_devices(inputs)
        with _on_stream(device):  # conversions inside too: DLPack synchronises with the current stream
            outputs, result = op.forward(spec, tuple(_to_array(x) for x in inputs))
            outputs = tuple(_to_tensor(y, device) for y in outputs)
        ctx.op, ctx.spec, ctx.result, ctx.device = op, spec, result, device
        ctx.save_for_backward(*inputs)  # only to connect a second-order gradient to them (it raises)
        ctx.mark_non_differentiable(*outputs[1:])
        return outputs

    @staticmethod
    def backward(ctx, grad, *unused):
        if grad is None:  # the differentiable output was not used
            return (None, None) + (None,) * len(ctx.needs_input_grad[2:])
        with _on_stream(ctx.device):
            grads = ctx.op.backward(ctx.spec, ctx.result, _to_array(grad), input_grad=ctx.needs_input_grad[2])
            grads = tuple(None if g is None else _to_tensor(g, ctx.device) for g in grads)
        return (None, None) + _not_twice_differentiable(ctx, grad, grads)


class _SecondOrder(torch.autograd.Function):
    """Identity on the gradients of a ``_HostFunction`` backward run under ``create_graph=True``, connected to that
    op's inputs and incoming gradient, whose own backward raises: the backward is host code, so a second-order
    gradient would otherwise silently leave out every term through the op (``once_differentiable`` catches only a
    dependence on the incoming gradient, and its error node is pruned by ``torch.autograd.grad(..., inputs)``)."""

    @staticmethod
    def forward(ctx, op, spec, count, *tensors):
        ctx.op, ctx.spec = op, spec
        return tuple(g.view_as(g) for g in tensors[:count])

    @staticmethod
    def backward(ctx, *grads):
        raise second_order_error(ctx.op, ctx.spec)


def _not_twice_differentiable(ctx, grad, grads):
    """``grads`` as they are, or, when the backward runs with grad mode on (``create_graph=True``), behind a
    ``_SecondOrder`` node."""
    if not torch.is_grad_enabled():
        return grads
    sources = (grad, *ctx.saved_tensors)
    if not any(x.requires_grad for x in sources):
        return grads
    present = [g for g in grads if g is not None]
    aliased = iter(_SecondOrder.apply(ctx.op, ctx.spec, len(present), *present, *sources))
    return tuple(None if g is None else next(aliased) for g in grads)


def _torch_dtype(dtype):
    return dtype if isinstance(dtype, torch.dtype) else getattr(torch, np.dtype(dtype).name)


@torch.compiler.disable
def apply(op, spec, inputs):
    """Run ``op`` (see ``spikescan_keras._host``) on torch tensors; returns its outputs as a tuple of tensors.

    Tensors on the ``meta`` device (Keras traces shapes with them, e.g. when ``fit`` builds its metrics) get empty
    outputs of the right shapes and dtypes without running the simulation. ``torch.compiler.disable``: under
    ``torch.compile`` (a user's own, or Keras' ``jit_compile=True``, which the layers decline) dynamo does not trace
    into the host code (it failed there) but runs the op eagerly between compiled pieces.
    """
    if any(x.device.type == "meta" for x in inputs):
        return tuple(torch.empty(tuple(shape), dtype=_torch_dtype(dtype), device="meta")
                     for shape, dtype in op.output_specs(spec, inputs))
    return _HostFunction.apply(op, spec, *inputs)
