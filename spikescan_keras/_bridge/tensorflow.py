"""TensorFlow bridge: not supported (a decision, not an omission).

A ``tf.custom_gradient`` around ``tf.numpy_function`` would run on CPU, but it cannot be saved in a SavedModel, is
not XLA-compilable, and could not be tested here; on GPU there is no way to hand TensorFlow buffers to CuPy on
TensorFlow's stream. Rather than ship an untested path, the layers raise a clear error on this backend.
"""

from __future__ import annotations


def apply(op, spec, inputs):
    raise NotImplementedError(
        "spikescan_keras supports the 'jax' and 'torch' Keras backends, not 'tensorflow'. Set the environment "
        "variable KERAS_BACKEND=torch (or jax) before importing keras.")
