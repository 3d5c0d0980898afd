"""One bridge per Keras backend: the only modules that import torch, jax or tensorflow.

Each exposes ``apply(op, spec, inputs) -> outputs``, a custom-gradient op whose forward and backward are the
backend-free ``op.forward`` / ``op.backward`` of ``spikescan_keras._host``.
"""

from __future__ import annotations

import importlib

import keras


def apply(op, spec, inputs):
    """Run ``op`` through the bridge of the active Keras backend (imported on first use)."""
    backend = keras.backend.backend()
    if backend not in ("torch", "jax", "tensorflow"):
        raise NotImplementedError(
            f"spikescan_keras supports the 'torch', 'jax' and 'tensorflow' Keras backends, got {backend!r}")
    return importlib.import_module(f"{__name__}.{backend}").apply(op, spec, inputs)


def supports_jit():
    """Whether a compiled Keras step may contain the bridge's op: on jax (under ``jit`` the op is a host or buffer
    callback), not on TensorFlow, where ``tf.numpy_function`` cannot be compiled by XLA, nor on torch, where
    ``torch.compile`` can only break its graph around the op (``apply`` is ``torch.compiler.disable``d): the same
    results, but each graph piece recompiled until dynamo's limit, 48.8 s against 0.4 s for four epochs of a small
    model measured on the CPU. The layers copy this into their ``supports_jit`` attribute, which Keras reads to
    resolve ``jit_compile``: ``jit_compile=True`` then warns and trains eagerly."""
    return keras.backend.backend() == "jax"
