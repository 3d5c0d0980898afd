"""Keras 3 frontend of spikescan: exact event-driven spiking layers for the torch, jax and tensorflow
backends.

``LIFLayer`` (spike tensor in, spike tensor out), ``LIReadout`` (spike tensor in, logits out) and
``FirstSpikeReadout`` (spiking output neurons, logits from their first spike times) hold weights and configuration;
forward and backward are ``spikescan``'s, called through one custom-gradient op per layer.
``export_nir`` / ``import_nir`` convert Sequential models to and from NIR graphs (``pip install spikescan[nir]``;
``nir`` is imported only when they are called). Set ``KERAS_BACKEND`` to ``torch``, ``jax`` or ``tensorflow`` before
importing keras.
"""

try:
    import keras as _keras
except ImportError as _e:
    raise ImportError("spikescan_keras needs Keras 3 and one of its backends: pip install 'spikescan[keras]' and "
                      "torch, jax or tensorflow (then set KERAS_BACKEND)") from _e
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
