"""Mini-batches of spike tensors, usable directly as a ``keras.utils.PyDataset``."""

from __future__ import annotations

import math

import numpy as np

from ._core import SpikeDataset, check_count, check_stored_spike_times, class_indices

_KERAS_CLASS = None


def _keras_class():
    """``SpikeBatches`` with ``keras.utils.PyDataset`` mixed in, or None when keras cannot be imported."""
    global _KERAS_CLASS
    if _KERAS_CLASS is None:
        try:
            from keras.utils import PyDataset
        except ImportError:
            return None
        _KERAS_CLASS = type("KerasSpikeBatches", (SpikeBatches, PyDataset), {"__module__": __name__})
    return _KERAS_CLASS


def __getattr__(name):
    if name == "KerasSpikeBatches" and _keras_class() is not None:  # lets pickle find the keras variant
        return _KERAS_CLASS
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class SpikeBatches:
    """Iterate ``(times [b, channels, max_spikes], labels [b] int64)`` batches over a spike dataset.

    Args:
        data: a :class:`SpikeDataset`, or a ``times [n, channels, max_spikes]`` array (then pass ``labels``): a
            NumPy array, a list, a memory map or an h5py dataset, checked once here as a :class:`SpikeDataset`
            checks its times (float32 or float64, no NaN, no negative time, ascending along the last axis; an array
            that is not in memory is read block by block).
        labels: ``[n]`` integer class indices ``>= 0`` when ``data`` is an array (batches hold them as int64).
        batch_size: samples per batch; the last, partial batch is kept (``len = ceil(n / batch_size)``).
        shuffle: reorder samples every epoch with the permutation ``default_rng([seed, epoch])``, so the order
            depends only on ``seed`` and the epoch number.
        seed: shuffling seed.
        trim: cut the last axis of each batch to the largest spike count in that batch (fewer ``+inf`` columns,
            but batch shapes vary).
        use_keras: derive from ``keras.utils.PyDataset`` so ``model.fit`` accepts the object. None: when keras
            imports; False: a plain Python iterable; True: require keras. Anything else is a TypeError.
        **pydataset_kwargs: ``workers``, ``use_multiprocessing``, ``max_queue_size`` for ``PyDataset``.

    Indexing ``batches[i]`` gives batch ``i`` of the current epoch; ``on_epoch_end()`` advances the epoch (keras
    calls it after each epoch). Iterating with ``for`` yields one epoch and then calls ``on_epoch_end()``.
    """

    def __new__(cls, *args, use_keras=None, **kwargs):
        if use_keras is not None and not isinstance(use_keras, (bool, np.bool_)):
            raise TypeError(f"use_keras must be None, True or False, got {use_keras!r}")
        if cls is SpikeBatches and (use_keras is None or bool(use_keras)):
            keras_cls = _keras_class()
            if keras_cls is not None:
                cls = keras_cls
            elif use_keras:
                raise ImportError("keras is required for use_keras=True: pip install 'spikescan[keras]'")
        return super().__new__(cls)

    def __init__(self, data, labels=None, batch_size: int = 32, *, shuffle: bool = False, seed: int = 0,
                 trim: bool = False, use_keras=None, **pydataset_kwargs):
        if isinstance(self, _KERAS_CLASS or ()):
            super().__init__(**pydataset_kwargs)
        elif pydataset_kwargs:
            raise TypeError(f"unexpected arguments without keras: {sorted(pydataset_kwargs)}")
        for name, value in (("shuffle", shuffle), ("trim", trim)):
            if not isinstance(value, (bool, np.bool_)):
                raise TypeError(f"{name} must be True or False, got {value!r}")
        check_count("batch_size", batch_size)
        check_count("seed", seed, minimum=0)
        if isinstance(data, SpikeDataset):  # checked when it was built
            if labels is not None:
                raise ValueError("labels must be None when data is a SpikeDataset (it has its own labels)")
            data, labels = data.times, data.labels
        else:
            if labels is None:
                raise ValueError("labels is required when data is an array")
            if isinstance(data, (list, tuple)):  # (arrays, memory maps and h5py datasets are indexed as they are)
                data = np.asarray(data)
            check_stored_spike_times("times", data)  # once here, as SpikeDataset does, not per batch
            labels = class_indices("labels", labels)
        if len(data) != len(labels):
            raise ValueError(f"times and labels differ in length: {len(data)} vs {len(labels)}")
        if len(labels) == 0:
            raise ValueError("SpikeBatches needs at least one sample, got none (an empty split or subset?)")
        self.times, self.labels = data, labels
        self.batch_size, self.shuffle, self.seed, self.trim = batch_size, shuffle, seed, trim
        self.epoch = 0
        self._order = self._permutation()

    def _permutation(self):
        n = len(self.labels)
        return np.random.default_rng([self.seed, self.epoch]).permutation(n) if self.shuffle else np.arange(n)

    def __len__(self) -> int:
        return math.ceil(len(self.labels) / self.batch_size)

    def __getitem__(self, index: int):
        if isinstance(index, (bool, np.bool_)) or not isinstance(index, (int, np.integer)):
            raise TypeError(f"batch index must be an integer, got {index!r}")
        if not -len(self) <= index < len(self):
            raise IndexError(f"batch index {index} out of range for {len(self)} batches")
        index %= len(self)
        idx = self._order[index * self.batch_size:(index + 1) * self.batch_size]
        if not self.shuffle:
            idx = slice(idx[0], idx[-1] + 1)
            times = self.times[idx]
        elif isinstance(self.times, np.ndarray):
            times = self.times[idx]
        else:  # an h5py dataset (or other store) reads a list of indices only in increasing order: read sorted
            ascending = np.sort(idx)
            times = np.asarray(self.times[ascending])[np.searchsorted(ascending, idx)]
        labels = self.labels[idx]
        if self.trim:
            width = max(int(np.isfinite(times).sum(axis=-1).max(initial=0)), 1)
            times = times[..., :width]
        return times, labels

    @property
    def num_batches(self) -> int:
        return len(self)

    def on_epoch_begin(self):
        pass

    def on_epoch_end(self):
        self.epoch += 1
        self._order = self._permutation()

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]
        self.on_epoch_end()
