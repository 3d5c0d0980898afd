"""Spike-tensor datasets: Yin-Yang, random manifolds (randman), latency-coded MNIST, SHD and SSC, and a bridge from
tonic's event datasets.

Every loader returns a :class:`SpikeDataset` whose ``times`` are ``[n, channels, max_spikes]`` floats, ascending
along the last axis and padded with ``+inf``, with ``labels [n]`` int64. Times are in milliseconds unless a
loader's ``time_unit`` says otherwise. Optional dependencies are imported only when needed: h5py for SHD / SSC
(``pip install spikescan[data]``), keras for ``SpikeBatches`` as a Keras ``PyDataset`` (``spikescan[keras]``).
"""

from ._core import (DroppedSpikesWarning, MergedSpikesWarning, PaddedSpikesWarning, SpikeDataset, bin_times,
                    from_raster, pack_events, to_raster, unpack_events)
from .batching import SpikeBatches
from .heidelberg import download_shd, download_ssc, shd, ssc
from .mnist import latency_mnist, load_mnist_arrays
from .randman import randman
from .tonic import ToSpikeTensor, collate_spikes
from .yinyang import yinyang, yinyang_points

__all__ = [
    "DroppedSpikesWarning", "MergedSpikesWarning", "PaddedSpikesWarning", "SpikeBatches", "SpikeDataset",
    "ToSpikeTensor", "bin_times", "collate_spikes", "download_shd", "download_ssc", "from_raster", "latency_mnist",
    "load_mnist_arrays",
    "pack_events", "randman", "shd", "ssc", "to_raster", "unpack_events", "yinyang", "yinyang_points",
]
