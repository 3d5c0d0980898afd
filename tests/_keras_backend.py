"""Module-level guard of the Keras test modules: the backend under test, or a clean skip.

KERAS_BACKEND is read when keras is first imported, so each backend runs in its own pytest process (tools/test.sh).
Without KERAS_BACKEND the jax backend is used; unsupported or missing backends skip the calling module. On tensorflow
its C++ log lines are turned down (TF_CPP_MIN_LOG_LEVEL, unless set) before it is imported.
"""

import os

import pytest


def keras_or_skip():
    """``(backend, keras)`` for the backend named by KERAS_BACKEND; skips the calling module when it can't run."""
    backend = os.environ.setdefault("KERAS_BACKEND", "jax")
    if backend not in ("torch", "jax", "tensorflow"):
        pytest.skip(f"spikescan_keras supports the torch, jax and tensorflow backends, KERAS_BACKEND={backend!r}",
                    allow_module_level=True)
    if backend == "tensorflow":
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    pytest.importorskip(backend)
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != backend:
        pytest.skip(f"keras was already imported with the {keras.backend.backend()!r} backend",
                    allow_module_level=True)
    return backend, keras
