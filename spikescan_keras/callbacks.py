"""Keras callbacks that report what the spiking layers do during ``fit``."""

from __future__ import annotations

import keras
import numpy as np

from .layers import LIFLayer, LIReadout

_STATS = ("silent_fraction", "dead_fraction", "spikes_per_neuron")


@keras.saving.register_keras_serializable(package="spikescan")
class FiringMonitor(keras.callbacks.Callback):
    """Puts the firing statistics of every ``LIFLayer`` into ``fit``'s logs, so the progress bar and ``History``
    show them (``<layer>`` is the layer's name, or its path from the model where nested models reuse a name):
    ``<layer>/silent_fraction`` (fraction of (sample, neuron) pairs without a spike),
    ``<layer>/dead_fraction`` (fraction of neurons silent on every sample of a batch) and
    ``<layer>/spikes_per_neuron`` (mean spike count per neuron and sample).

    After each training batch the logs carry that batch's values; at the end of an epoch, the epoch's means over
    its training batches (the figures ``History`` keeps). ``stats`` selects which of the three to report.
    ``LIReadout(readout="max")`` layers add ``<layer>/dead_fraction``: the fraction of units whose voltage never rose
    above its start on a training batch (their gradient is zero; see ``LIReadout``'s ``revival_penalty``).

    Usage: ``model.fit(..., callbacks=[spikescan_keras.FiringMonitor()])``.
    """

    def __init__(self, stats=_STATS):
        super().__init__()
        try:
            stats = (stats,) if isinstance(stats, str) else tuple(stats)  # one name as a string: not its letters
        except TypeError:  # None, a number: not "'NoneType' object is not iterable"
            raise ValueError(f"stats must be a non-empty subset of {_STATS}, got {stats!r}") from None
        unknown = [s for s in stats if s not in _STATS]
        if unknown or not stats:
            raise ValueError(f"stats must be a non-empty subset of {_STATS}, got {stats!r}")
        self.stats = stats
        self._sums = {}
        self._batches = 0

    def _layers(self):
        """``(key, layer, stats)``: every ``LIFLayer`` with the selected statistics, and every
        ``LIReadout(readout="max")`` with its ``dead_fraction`` (units whose voltage never rose on a training batch)
        when that is selected. ``key`` is the layer's name, or, where two monitored layers share a name (in nested
        models), its path of names from the model down (``encoder_1/hidden``), so that no layer's figures overwrite
        another's."""
        found = []
        seen = set()

        def walk(parent, prefix):
            for layer in parent._flatten_layers(include_self=False, recursive=False):
                if id(layer) in seen:  # a layer used twice is monitored once
                    continue
                seen.add(id(layer))
                if isinstance(layer, LIFLayer):
                    found.append((prefix + layer.name, layer, self.stats))
                elif isinstance(layer, LIReadout) and layer.readout == "max" and "dead_fraction" in self.stats:
                    found.append((prefix + layer.name, layer, ("dead_fraction",)))
                walk(layer, prefix + layer.name + "/")

        walk(self.model, "")
        names = [layer.name for _, layer, _ in found]
        return [(path if names.count(layer.name) > 1 else layer.name, layer, stats) for path, layer, stats in found]

    def _read(self):
        out = {}
        for key, layer, stats in self._layers():
            for name in stats:
                out[f"{key}/{name}"] = float(np.asarray(keras.ops.convert_to_numpy(getattr(layer, name).value)))
        return out

    def on_epoch_begin(self, epoch, logs=None):
        self._sums, self._batches = {}, 0

    def on_train_batch_end(self, batch, logs=None):
        values = self._read()
        self._batches += 1
        for key, value in values.items():
            self._sums[key] = self._sums.get(key, 0.0) + value
        if logs is not None:
            logs.update(values)

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None and self._batches:
            logs.update({key: total / self._batches for key, total in self._sums.items()})

    def get_config(self):
        return {"stats": list(self.stats)}
