"""Keras 3 frontend of spikescan: exact event-driven spiking layers for the torch, jax and tensorflow
backends.

``LIFLayer`` (spike tensor in, spike tensor out) and ``LIReadout`` (spike tensor in, logits out) hold weights and
configuration; forward and backward are ``spikescan``'s, called through one custom-gradient op per layer.
``export_nir`` / ``import_nir`` convert Sequential models to and from NIR graphs (``pip install spikescan[nir]``;
``nir`` is imported only when they are called). Set ``KERAS_BACKEND`` to ``torch``, ``jax`` or ``tensorflow`` before
importing keras.
"""

from ._host import CappedSpikesWarning, DeadReadoutWarning, SilentLayerWarning
from .callbacks import FiringMonitor
from .layers import DelayRange, LIFLayer, LIReadout, SpikeCountRegularizer, PositiveFloor
from .nir import export_nir, import_nir

__all__ = ["LIFLayer", "LIReadout", "SpikeCountRegularizer", "DelayRange", "PositiveFloor", "CappedSpikesWarning",
           "SilentLayerWarning", "DeadReadoutWarning", "FiringMonitor", "export_nir", "import_nir"]
