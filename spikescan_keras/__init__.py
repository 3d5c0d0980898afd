"""Keras 3 frontend of spikescan: exact event-driven spiking layers for the torch, jax and tensorflow
backends.

``LIFLayer`` (spike tensor in, spike tensor out), ``LIReadout`` (spike tensor in, logits out) and
``FirstSpikeReadout`` (spiking output neurons, logits from their first spike times) hold weights and configuration;
forward and backward are ``spikescan``'s, called through one custom-gradient op per layer.
``export_nir`` / ``import_nir`` convert Sequential models to and from NIR graphs (``pip install spikescan[nir]``;
``nir`` is imported only when they are called). Set ``KERAS_BACKEND`` to ``torch``, ``jax`` or ``tensorflow`` before
importing keras.
"""

def _backend_choice():
    """The backend keras was asked for, and where the choice came from (``KERAS_BACKEND``, else keras.json)."""
    import json
    import os

    if os.environ.get("KERAS_BACKEND"):
        return os.environ["KERAS_BACKEND"], "KERAS_BACKEND"
    path = os.path.join(os.environ.get("KERAS_HOME", os.path.join(os.path.expanduser("~"), ".keras")), "keras.json")
    try:
        with open(path) as f:
            return json.load(f).get("backend", "tensorflow"), path
    except (OSError, ValueError):
        return "tensorflow", "keras' default (KERAS_BACKEND is not set)"


try:
    import keras as _keras
except ImportError as _e:
    import importlib.util as _util

    if _util.find_spec("keras") is None:
        raise ImportError("spikescan_keras needs Keras 3 and one of its backends: pip install 'spikescan[keras]' and "
                          "torch, jax or tensorflow (then set KERAS_BACKEND)") from _e
    _backend, _source = _backend_choice()  # keras is there: its backend is not
    raise ImportError(f"spikescan_keras: keras is installed, but its backend {_backend!r} (from {_source}) could not "
                      f"be imported ({_e}); install it, or set KERAS_BACKEND to torch, jax or tensorflow, whichever "
                      "is installed") from _e
if int(_keras.__version__.split(".")[0]) < 3:
    raise ImportError(f"spikescan_keras needs Keras 3 (keras>=3.3), found keras {_keras.__version__}: "
                      "pip install -U 'spikescan[keras]'")

from ._host import (CappedSpikesWarning, DeadNeuronsWarning, DeadReadoutWarning, SilentLayerWarning,  # noqa: E402
                    SilentReadoutWarning)
from .callbacks import FiringMonitor  # noqa: E402
from .layers import (ConcatenateSpikes, DelayRange, FirstSpikeReadout, LIFLayer, LIReadout,  # noqa: E402
                     PositiveFloor, SpikeCountRegularizer, SpikeDropout, apply_constraints)
from .nir import export_nir, import_nir  # noqa: E402

__all__ = ["LIFLayer", "LIReadout", "FirstSpikeReadout", "SpikeDropout", "ConcatenateSpikes", "SpikeCountRegularizer",
           "DelayRange", "PositiveFloor", "CappedSpikesWarning", "DeadNeuronsWarning", "SilentLayerWarning",
           "SilentReadoutWarning", "DeadReadoutWarning", "FiringMonitor", "export_nir", "import_nir",
           "apply_constraints"]
