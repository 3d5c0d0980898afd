"""Shared pieces of the dataset loaders: the result type, event packing, validation."""

from __future__ import annotations

import importlib
import math
import threading
import warnings
from dataclasses import dataclass, field

import numpy as np

from .. import _validate
# ``dtype`` as NumPy float32 or float64 (the spike times the layers accept), else a TypeError naming ``dtype``.
from ..encode import _float_dtype as float_dtype

TIME_UNITS = {"s": 1.0, "ms": 1e3, "us": 1e6}


class DroppedSpikesWarning(UserWarning):
    """A loader discarded input spikes because of a crop or a cap that the caller asked for."""


class MergedSpikesWarning(UserWarning):
    """Rounding spike times to the result's dtype (float32) made distinct spikes of a channel simultaneous: far
    from zero, float32 cannot tell them apart (its spacing is ``t * 6e-8``: 0.25 ms at one hour in ms). Use
    ``dtype=np.float64`` or times that start near zero."""


class PaddedSpikesWarning(UserWarning):
    """A packed spike tensor is large and almost all ``+inf`` padding: a few channels with far more spikes than the
    rest set its width (``max_spikes``) for every sample and channel. Memory and every layer's work grow with that
    width; a ``max_spikes_per_channel`` cap (its message suggests one) shrinks both."""


# PaddedSpikesWarning: from this many bytes of packed tensor, when under PADDED_FILL of its entries are spikes.
PADDED_BYTES = 256 << 20
PADDED_FILL = 0.02


def merged_message(merged: int, at: float, dtype) -> str:
    """The body of a ``MergedSpikesWarning``: ``merged`` pairs, the latest at time ``at``, equal in ``dtype``."""
    dtype = np.dtype(dtype)
    return (f"{merged} pair(s) of distinct spike times of one channel became equal in {dtype.name} (times up to "
            f"{at!r}, where its spacing is {float(np.spacing(dtype.type(at)))!r})")


_subset = threading.local()  # .active while SpikeDataset.__getitem__ builds a subset of a dataset already checked


def is_whole(values) -> np.ndarray:
    """Where a float array holds finite whole numbers (``3.0``): the test every loader applies before casting read
    indices (labels, units, event addresses) to integers, so that none is truncated or wrapped."""
    return np.isfinite(values) & (values == np.round(values))


def class_indices(name: str, labels, *, source: str = "", integral_floats: bool = False) -> np.ndarray:
    """``labels`` as a 1-D int64 array of class indices ``>= 0``, else a TypeError or ValueError naming ``name``,
    ``source`` (the file or function the labels come from, if any) and the first offending value with its index.

    Integer dtypes are taken; floats only with ``integral_floats`` (labels read from a file), and only whole values
    (``3.0``), never truncated; anything else (bool, str, object, complex) is refused. Nothing is modified.
    """
    at = f"{source}: " if source else ""
    y = np.asarray(labels)
    if y.ndim != 1:
        raise ValueError(f"{at}{name} must be 1-D, one class index per sample, got shape {y.shape}")
    if y.size == 0 and y.dtype.kind == "f":  # [] (NumPy makes an empty list float64): no label
        return y.astype(np.int64)
    if y.dtype.kind == "f" and integral_floats:
        bad = ~(is_whole(y) & (np.abs(y) < 2.0 ** 63))
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(f"{at}{name} must be whole class indices, got {y[i].item()!r} at index {i} (not "
                             "truncated: a fractional label is a corrupt or foreign file)")
    elif y.dtype.kind not in "iu":
        floats = " (whole floats are not truncated: pass labels.astype(np.int64))" if y.dtype.kind == "f" else ""
        raise TypeError(f"{at}{name} must be integer class indices, got dtype {y.dtype}{floats}")
    bad = y < 0
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"{at}{name} must be class indices >= 0, got {y[i].item()!r} at index {i}")
    if y.dtype == np.uint64 and y.size and y.max() > np.iinfo(np.int64).max:
        i = int(np.argmax(y))
        raise ValueError(f"{at}{name} must be class indices below 2**63, got {y[i].item()!r} at index {i}")
    return y.astype(np.int64, copy=False)


CHECK_ELEMENTS = 1 << 24  # check_stored_spike_times reads and checks blocks of samples of at most this many times


def check_stored_spike_times(name: str, data) -> None:
    """``_validate.check_spike_times`` (float32/64, ``[n, channels, max_spikes]``, no NaN, no negative time,
    ascending) on ``data``, a NumPy or CuPy array, a memory map, an h5py dataset or anything else NumPy reads
    block by block (a CPU torch tensor), in blocks of samples: an
    on-disk tensor is read once, block by block, and the checks' temporaries stay small. An error in a block other
    than the whole names it as ``name[start:stop]`` (its index counts from ``start``). Nothing is modified."""
    from .._validate import _top_module, check_float_array, check_spike_times

    in_memory = isinstance(data, np.ndarray) or _top_module(data) == "cupy"
    if in_memory:
        check_float_array(name, data, 3)
    else:
        shape, dtype = getattr(data, "shape", None), getattr(data, "dtype", None)
        if shape is None or dtype is None:
            raise TypeError(f"{name} must be a spike tensor [n, channels, max_spikes] (an array, a memory map or an "
                            f"h5py dataset), got {type(data).__name__}")
        if len(shape) != 3:
            raise ValueError(f"{name} must be a spike tensor [n, channels, max_spikes], got shape {tuple(shape)}")
        try:
            dtype = np.dtype(dtype)
        except TypeError:  # a framework's own dtype (a torch tensor): that of its first sample as NumPy reads it
            dtype = np.asarray(data[:1]).dtype if len(shape) and shape[0] else None
        if dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
            raise TypeError(f"{name} must have dtype float32 or float64, got {getattr(data, 'dtype', dtype)}")
    n = data.shape[0]
    per = max(1, CHECK_ELEMENTS // max(1, int(np.prod(data.shape[1:]))))
    for start in range(0, n, per):
        stop = min(start + per, n)
        whole = start == 0 and stop == n
        block = data if whole else data[start:stop]
        check_spike_times(name if whole else f"{name}[{start}:{stop}]", block if in_memory else np.asarray(block))


def _describe_index(index):
    shape = getattr(index, "shape", None)
    return f"an array of dtype {index.dtype} and shape {shape}" if shape is not None else repr(index)


@dataclass
class SpikeDataset:
    """Spike tensors with labels.

    Attributes:
        times: ``[n, channels, max_spikes]`` float spike times in ``time_unit``, ascending along the last axis,
            padded with ``+inf``.
        labels: ``[n]`` int64 class indices (any integer dtype given is converted; floats, bools and negative values
            are refused).
        class_names: name of each class, indexed by label (when given, every label must be below its length).
        time_unit: unit of ``times`` (``"s"``, ``"ms"`` or ``"us"``; anything else is refused).
        dropped: number of input spikes discarded by each crop or cap, keyed by the argument that caused it.
        meta: per-dataset extras; arrays whose first axis has length ``n`` are per-sample and follow indexing.

    ``times`` given as anything but a NumPy array (a list, a tuple, an h5py dataset, another framework's tensor) is
    stored as the NumPy array it was checked as; ``class_names`` as a tuple.
    """

    times: np.ndarray
    labels: np.ndarray
    class_names: tuple = ()
    time_unit: str = "ms"
    dropped: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        check_choice("time_unit", self.time_unit, TIME_UNITS)
        if isinstance(self.class_names, str) or not hasattr(self.class_names, "__iter__"):
            raise TypeError(f"class_names must be a sequence of names, one per class, got {self.class_names!r}")
        self.class_names = tuple(self.class_names)  # a list or an array of names: stored as a tuple
        try:
            times, labels = np.asarray(self.times), np.asarray(self.labels)
        except ValueError as err:  # a ragged list
            raise ValueError(f"times and labels must be arrays (a spike tensor [n, channels, max_spikes] and [n] "
                             f"labels): {err}") from err
        if times.ndim != 3:
            raise ValueError(f"times must be a spike tensor [n, channels, max_spikes], got shape {times.shape}")
        if labels.shape != times.shape[:1]:
            raise ValueError(f"labels must have one entry per sample, shape ({times.shape[0]},), got shape "
                             f"{labels.shape}")
        if not getattr(_subset, "active", False):  # a subset of a checked dataset (__getitem__) is not checked again
            from .. import _validate

            _validate.check_spike_times("times", times)  # float32/64, no NaN, no negative time, ascending
            labels = class_indices("labels", labels)
            if self.class_names and labels.size and labels.max() >= len(self.class_names):
                i = int(np.argmax(labels >= len(self.class_names)))
                raise ValueError(f"labels must be < {len(self.class_names)}, the number of class_names (one name per "
                                 f"class), got {int(labels[i])} at index {i}")
        if not isinstance(self.times, np.ndarray):  # a list: stored as the array checked (a memory map stays one)
            self.times = times
        self.labels = labels

    @property
    def dropped_spikes(self) -> int:
        """Total number of input spikes discarded by crops and caps (0 when nothing was lost)."""
        return int(sum(self.dropped.values()))

    @property
    def n_channels(self) -> int:
        return self.times.shape[1]

    @property
    def max_spikes(self) -> int:
        return self.times.shape[2]

    @property
    def n_classes(self) -> int:
        return len(self.class_names) if self.class_names else int(self.labels.max(initial=-1)) + 1

    def spike_counts(self) -> np.ndarray:
        """``[n, channels]`` int64 number of spikes per sample and channel."""
        return np.isfinite(self.times).sum(axis=-1, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index) -> "SpikeDataset":
        """Subset by a slice, an integer array or a boolean mask (always returns a dataset); an integer ``i`` gives
        the one-sample dataset ``[i:i + 1]`` (``IndexError`` outside ``[-len, len)``, which also ends a ``for``
        loop over the dataset). ``True``, ``None`` and tuples, which NumPy would apply to other axes than the
        samples, are a TypeError."""
        n = len(self)
        if index is None or isinstance(index, (bool, np.bool_, tuple)):  # NumPy: a new axis, or more than samples
            raise TypeError(f"a dataset of {n} samples takes a slice, an int, an integer array or a boolean mask of "
                            f"length {n} as index, got "
                            f"{f'a tuple of {len(index)} indices' if isinstance(index, tuple) else repr(index)}, "
                            "which would index other axes than the samples")
        if isinstance(index, (int, np.integer)):
            if not -n <= index < n:
                raise IndexError(f"sample index {int(index)} is out of range for a dataset of {n} samples")
            index = slice(index % n, index % n + 1)
        meta = {k: v[index] if isinstance(v, np.ndarray) and v.ndim and len(v) == n else v
                for k, v in self.meta.items()}
        try:
            times, labels = self.times[index], self.labels[index]
        except (IndexError, TypeError) as err:
            raise type(err)(f"a dataset of {n} samples takes a slice, an int, an integer array or a boolean mask of "
                            f"length {n} as index, got {_describe_index(index)}: {err}") from err
        _subset.active = True
        try:
            return SpikeDataset(times, labels, self.class_names, self.time_unit, dict(self.dropped), meta)
        finally:
            _subset.active = False


def optional_import(name: str, extra: str = "data"):
    """Import an optional dependency, or raise ImportError naming the pip extra that provides it."""
    try:
        return importlib.import_module(name)
    except ImportError as err:
        raise ImportError(f"{name} is required here: pip install 'spikescan[{extra}]'  ({err})") from err


def check_choice(name: str, value, choices) -> None:
    # A str first: an array's `in` would raise NumPy's "truth value ... is ambiguous", naming nothing.
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")


def check_positive(name: str, value, *, allow_zero: bool = False, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    number = _validate._finite_real(value)
    if number is None or not (number >= 0 if allow_zero else number > 0):
        raise ValueError(f"{name} must be a finite number {'>=' if allow_zero else '>'} 0, got "
                         f"{_validate._shown(value)}")


def check_count(name: str, value, *, minimum: int = 1, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def report_dropped(source: str, dropped: dict, total_in: int, stacklevel: int = 3) -> None:
    """Warn (DroppedSpikesWarning) when any crop or cap discarded spikes."""
    n = sum(dropped.values())
    if n:
        parts = ", ".join(f"{k}: {v}" for k, v in dropped.items() if v)
        warnings.warn(f"{source}: dropped {n} of {total_in} input spikes ({parts})", DroppedSpikesWarning,
                      stacklevel=stacklevel)


def sample_indices(indices, n_total: int, source: str) -> np.ndarray:
    """``indices`` (integers, negative ones from the end, or a boolean mask of length ``n_total``) as int64 positions
    in ``[0, n_total)``; anything else is an error naming ``indices``."""
    idx = np.asarray(indices)
    if idx.size == 0 and idx.dtype.kind == "f":  # [] (NumPy makes an empty list float64): no sample
        idx = idx.astype(np.int64)
    if idx.dtype == bool:
        if idx.shape != (n_total,):
            raise ValueError(f"indices as a boolean mask must have shape ({n_total},) for {source}, got shape "
                             f"{idx.shape}")
        return np.flatnonzero(idx)
    if idx.dtype.kind not in "iu":
        raise TypeError(f"indices must be integers or a boolean mask, got {indices!r} (dtype {idx.dtype})")
    idx = idx.astype(np.int64).ravel()
    if idx.size and (idx.min() < -n_total or idx.max() >= n_total):
        raise ValueError(f"indices must lie in [-{n_total}, {n_total}) for {source}, got {indices!r}")
    return idx % n_total


def _event_arrays(i: int, pair, n_channels: int):
    """Sample ``i``'s ``(channels, times)`` pair as int64 and float64 1-D arrays, checked."""
    try:
        ch, t = pair
    except (TypeError, ValueError) as err:
        raise TypeError(f"samples[{i}] must be a (channels, times) pair, got {type(pair).__name__}") from err
    ch, t = np.asarray(ch), np.asarray(t)
    if ch.ndim != 1 or t.ndim != 1 or len(ch) != len(t):
        raise ValueError(f"samples[{i}]: channels and times must be 1-D of equal length, got shapes {ch.shape} and "
                         f"{t.shape}")
    if len(ch) and ch.dtype.kind not in "iu":
        raise TypeError(f"samples[{i}]: channels must be integers, got dtype {ch.dtype}")
    if len(t) and t.dtype.kind not in "iuf":
        raise TypeError(f"samples[{i}]: times must be real numbers, got dtype {t.dtype}")
    bad = (ch < 0) | (ch >= n_channels)  # on the given integers: a uint64 above int64's range would wrap
    if bad.any():
        raise ValueError(f"samples[{i}]: channels must lie in [0, {n_channels}), got {ch[bad][0]}")
    ch, t = ch.astype(np.int64), t.astype(np.float64)
    bad = ~np.isfinite(t) | (t < 0)
    if bad.any():
        raise ValueError(f"samples[{i}]: times must be finite and >= 0, got {t[bad][0]}")
    return ch, t


def pack_events(samples, n_channels: int, *, max_spikes_per_channel=None, dtype=np.float32):
    """Pack per-sample event lists into a padded spike tensor.

    Args:
        samples: sequence of ``(channels, times)`` pairs of equal-length 1-D arrays, one pair per sample; channels
            integers in ``[0, n_channels)``, times finite and ``>= 0``.
        n_channels: number of channels.
        max_spikes_per_channel: keep only the first this many spikes of each channel (None: keep all).
        dtype: float32 or float64, the dtype of the result.

    Returns:
        ``(times [n, n_channels, max_spikes] dtype, n_dropped)``: ascending, ``+inf``-padded; ``max_spikes`` is
        the largest kept count (at least 1); ``n_dropped`` counts spikes removed by the cap. A time too large for
        ``dtype`` (it would become the ``+inf`` of padding) is an error; distinct times of a channel that round to
        the same float32 number issue a ``MergedSpikesWarning`` with their count, and spikes left out by the cap a
        ``DroppedSpikesWarning`` with theirs. When the result and the per-sample channel counts would not fit in
        the memory available (``spikescan.set_memory_limit``, ``SPIKESCAN_MEMORY_LIMIT``, else what the system
        reports), a ``MemoryError`` names their size and ``n_channels``, before they are allocated.
    """
    try:
        samples = list(samples)  # read twice below (any iterable of pairs is taken)
    except TypeError as err:
        raise TypeError(f"samples must be an iterable of (channels, times) pairs, one per sample, got "
                        f"{type(samples).__name__}") from err
    out, dropped = _pack_events(samples, n_channels, max_spikes_per_channel, dtype, stacklevel=3)
    if dropped:
        total = sum(len(np.asarray(pair[0])) for pair in samples)
        warnings.warn(f"pack_events: max_spikes_per_channel={max_spikes_per_channel} left out {dropped} of {total} "
                      "spikes (the latest of their channel)", DroppedSpikesWarning, stacklevel=2)
    return out, dropped


def _check_packed_memory(n, n_channels, width, dtype):
    """``_memory.check`` of ``_pack_events``' large arrays: the int64 spike counts of every sample and channel and
    the ``[n, n_channels, width]`` result."""
    from .. import _memory

    parts = {"spike counts per sample and channel (int64)": 8 * n * n_channels,
             "spike tensor": n * n_channels * width * dtype.itemsize}
    _memory.check(f"pack_events({n} samples, n_channels={n_channels}, {width} spike(s) per channel, {dtype.name})",
                  parts, np, "reduce n_channels (both grow with it), max_spikes_per_channel, or the number of samples "
                  "packed at once; or raise the limit with spikescan.set_memory_limit / SPIKESCAN_MEMORY_LIMIT if more "
                  "memory is really there")


def _warn_padding(counts, n_channels, width, dtype, stacklevel):
    """``PaddedSpikesWarning`` when the ``[n, n_channels, width]`` tensor about to be packed from ``counts`` (one
    per-channel spike count array per sample) is large and almost all padding, with the cap that would fix it."""
    n_entries = len(counts) * n_channels * max(width, 1)
    nbytes = n_entries * dtype.itemsize
    if nbytes < PADDED_BYTES:
        return
    nonzero = np.concatenate([c[c > 0] for c in counts])
    kept = int(np.minimum(nonzero, width).sum())
    if kept >= PADDED_FILL * n_entries:
        return
    sample = max(range(len(counts)), key=lambda i: counts[i].max(initial=0))
    channel = int(np.argmax(counts[sample]))
    cap = int(np.quantile(nonzero, 0.99, method="lower"))  # an observed count: the share below is exact
    share = np.count_nonzero(nonzero <= cap) / len(nonzero)
    kept_capped = int(np.minimum(nonzero, cap).sum())
    capped_bytes = len(counts) * n_channels * cap * dtype.itemsize
    warnings.warn(
        f"pack_events: the spike tensor [{len(counts)}, {n_channels}, {width}] {dtype.name} takes "
        f"{nbytes / (1 << 30):.3g} GiB and is {100 * (1 - kept / n_entries):.2f}% +inf padding: sample {sample}, "
        f"channel {channel} has {int(counts[sample][channel])} spikes, while {100 * share:.4g}% of the channels "
        f"that spike have at most {cap}. max_spikes_per_channel={cap} would keep "
        f"{100 * kept_capped / max(kept, 1):.2f}% of the spikes in {capped_bytes / (1 << 20):.3g} MiB; every layer's "
        "work also grows with this width",
        PaddedSpikesWarning, stacklevel=stacklevel)


def _pack_events(samples, n_channels, max_spikes_per_channel, dtype, stacklevel):
    """``pack_events`` without the warning of the cap's dropped spikes (the loaders report those with the other
    crops'); ``stacklevel`` of the merged-spikes warning, counted from here."""
    check_count("n_channels", n_channels)
    check_count("max_spikes_per_channel", max_spikes_per_channel, allow_none=True)
    dtype = float_dtype(dtype)
    samples = [_event_arrays(i, pair, n_channels) for i, pair in enumerate(samples)]
    largest = max((t.max() for _, t in samples if len(t)), default=0.0)
    if largest > np.finfo(dtype).max:
        raise ValueError(f"a spike time of {largest!r} does not fit in {dtype.name} (largest "
                         f"{float(np.finfo(dtype).max)!r}); use float64 or another time unit")
    _check_packed_memory(len(samples), n_channels, 1, dtype)  # before the counts: n_channels alone may be too many
    cap = np.inf if max_spikes_per_channel is None else max_spikes_per_channel
    counts = [np.bincount(ch, minlength=n_channels) for ch, _ in samples]
    width = int(min(cap, max((c.max(initial=0) for c in counts), default=0)))
    _warn_padding(counts, n_channels, width, dtype, stacklevel + 1)
    _check_packed_memory(len(samples), n_channels, max(width, 1), dtype)
    out = np.full((len(samples), n_channels, max(width, 1)), np.inf, dtype=dtype)
    dropped = merged = 0
    merged_at = 0.0
    for i, ((ch, t), cnt) in enumerate(zip(samples, counts)):
        if len(t) == 0:
            continue
        order = np.lexsort((t, ch))
        ch, t = ch[order], t[order]
        starts = np.cumsum(cnt) - cnt
        rank = np.arange(len(t)) - starts[ch]
        keep = rank < width
        dropped += int(len(t) - keep.sum())
        out[i, ch[keep], rank[keep]] = t[keep]
        if dtype != np.float64 and len(t) > 1:
            # Neighbours in a channel, distinct in float64, equal once rounded: counted, not silent.
            rounded = t.astype(dtype)
            pairs = (ch[1:] == ch[:-1]) & keep[1:] & (t[1:] > t[:-1]) & (rounded[1:] == rounded[:-1])
            merged += int(np.count_nonzero(pairs))
            merged_at = max(merged_at, float(t[1:][pairs].max(initial=0.0)))
    if merged:
        warnings.warn(f"{merged_message(merged, merged_at, dtype)}; use dtype=np.float64, or times that start near "
                      "zero", MergedSpikesWarning, stacklevel=stacklevel)
    return out, dropped


def unpack_events(times):
    """The inverse of ``pack_events``: a spike tensor ``[n, channels, max_spikes]`` (any layer's output, e.g.
    ``lif_forward(...).times``, or an input tensor) as one ``(channels, times)`` pair of 1-D arrays per sample, in
    time order (simultaneous spikes by channel). ``+inf`` padding is left out; every finite time is kept.

    NumPy in, NumPy out; CuPy in, CuPy out (the pairs are device arrays). Returns a list of ``n`` pairs
    ``(channels int64, times)``, the times in the tensor's dtype, so ``pack_events(unpack_events(t), t.shape[1],
    dtype=t.dtype)`` rebuilds ``t`` (up to the padding width, which ``pack_events`` sets to the largest count).
    """
    from .._validate import array_module, check_spike_times

    check_spike_times("times", times)
    xp = array_module(times)
    n, n_channels, width = times.shape
    flat = times.reshape(n, n_channels * width)
    out = []
    for i in range(n):
        row = flat[i]
        where = xp.nonzero(row < xp.inf)[0]
        t = row[where]
        ch = (where // max(width, 1)).astype(xp.int64)
        order = xp.lexsort(xp.stack([ch, t])) if len(t) else where
        out.append((ch[order], t[order]))
    return out


def _check_t_start(t_start):
    if isinstance(t_start, bool) or not isinstance(t_start, (int, float, np.integer, np.floating)) \
            or not math.isfinite(t_start) or t_start < 0:
        raise ValueError(f"t_start must be a finite number >= 0, got {t_start!r}")


def from_raster(raster, dt: float, *, time_axis: int = 0, align: str = "left", t_start: float = 0.0,
                max_spikes_per_channel=None, dtype=np.float32):
    """Binned spike rasters (the time-stepped format of snnTorch, Norse, or tonic's ``ToFrame``) as spike times.

    ``raster`` holds spike counts per time bin: one axis (``time_axis``) the bins, the first of the other axes the
    samples, the remaining axes the channels (flattened in C order: ``[T, batch, 2, 34, 34]`` gives 2312
    channels). A count ``c`` in bin ``k`` becomes ``c`` simultaneous spikes at ``t_start + k * dt``
    (``align="left"``, the bin's start) or ``t_start + (k + 0.5) * dt`` (``align="center"``), in the unit of
    ``dt``. Every spike is kept (a cap is reported, as by ``pack_events``); the times within a bin are lost by the
    binning itself, so a raster of ``dt``-wide bins gives spike times on that grid. A wrong ``time_axis`` that
    keeps the sample axis first (bins and channels swapped) cannot be detected: check the layout.

    Args:
        raster: array-like of non-negative whole numbers (bool, integers, or floats without a fraction), at least
            3-D (a single sample ``[T, channels]``: ``raster[:, None]``).
        dt: bin width (> 0), in the time unit of the layers' time constants.
        time_axis: the axis of the bins (snnTorch and Norse: 0, ``[T, batch, ...]``; ``[batch, T, ...]``: 1).
        align: ``"left"`` or ``"center"``.
        t_start: time of bin 0's start (finite, >= 0).
        max_spikes_per_channel, dtype: as for ``pack_events``.

    Returns:
        ``(times [batch, channels, max_spikes] dtype, n_dropped)``, as ``pack_events``.
    """
    check_positive("dt", dt)
    check_choice("align", align, ("left", "center"))
    _check_t_start(t_start)
    if type(raster).__module__.split(".")[0] == "cupy":
        raise TypeError("raster must be a NumPy array (or array-like), got a CuPy array: pass raster.get()")
    r = np.asarray(raster)
    if r.dtype.kind not in "biuf":
        raise TypeError(f"raster must hold spike counts (bool, integers or whole floats), got dtype {r.dtype}")
    if r.ndim < 3:
        raise ValueError(f"raster must have a time axis, a sample axis and at least one channel axis (3-D or more), "
                         f"got shape {r.shape}; one sample [T, channels]: raster[:, None]")
    if isinstance(time_axis, bool) or not isinstance(time_axis, (int, np.integer)) \
            or not -r.ndim <= time_axis < r.ndim:
        raise ValueError(f"time_axis must be an axis of raster (shape {r.shape}), got {time_axis!r}")
    if r.dtype.kind == "f":
        bad = ~np.isfinite(r) | (r < 0) | (r != np.floor(r))
        if bad.any():
            idx = tuple(int(i) for i in np.argwhere(bad)[0])
            raise ValueError(f"raster must hold whole spike counts >= 0, got {r[idx].item()!r} at index {idx}; "
                             "probabilities of a spike per bin are drawn into counts first (rng.random(p.shape) < p), "
                             "or the values encoded by spikescan.encode.rate")
    elif r.dtype.kind == "i":
        bad = r < 0
        if bad.any():
            idx = tuple(int(i) for i in np.argwhere(bad)[0])
            raise ValueError(f"raster must hold spike counts >= 0, got {r[idx].item()!r} at index {idx}")
    r = np.moveaxis(r, time_axis, -1)
    n, n_bins = r.shape[0], r.shape[-1]
    n_channels = math.prod(r.shape[1:-1])
    if n_channels == 0:
        raise ValueError(f"raster has no channels: shape {np.shape(raster)} with time_axis={time_axis}")
    r = r.reshape(n, n_channels, n_bins)
    b, c, k = np.nonzero(r)  # C order: samples ascending, then channels, then bins (time order within a channel)
    counts = r[b, c, k]
    if r.dtype.kind == "f" and counts.size and counts.max() > 2.0 ** 53:
        raise ValueError(f"raster holds a count of {float(counts.max())!r} spikes in one bin, beyond what can be "
                         "packed")
    counts = counts.astype(np.int64)
    from .. import _memory

    total = int(counts.sum())
    # Each spike's sample, channel and bin (int64) and time (float64), before pack_events checks its own arrays.
    _memory.check(f"from_raster({n} samples, {n_channels} channels, {total} spikes)",
                  {"spikes as events (sample, channel, bin, time)": 32 * total}, np,
                  "convert fewer samples at a time (the raster in slices along its sample axis)")
    b, c, k = (np.repeat(a, counts) for a in (b, c, k))
    t = t_start + (k + (0.5 if align == "center" else 0.0)) * float(dt)
    edges = np.searchsorted(b, np.arange(n + 1))
    samples = [(c[edges[i]:edges[i + 1]], t[edges[i]:edges[i + 1]]) for i in range(n)]
    out, dropped = _pack_events(samples, n_channels, max_spikes_per_channel, dtype, stacklevel=3)
    if dropped:
        warnings.warn(f"from_raster: max_spikes_per_channel={max_spikes_per_channel} left out {dropped} of {len(t)} "
                      "spikes (the latest of their channel)", DroppedSpikesWarning, stacklevel=2)
    return out, dropped


def to_raster(times, dt: float, *, n_bins=None, time_axis: int = 0, t_start: float = 0.0, dtype=np.int32):
    """Spike times as a binned raster of spike counts, the inverse of ``from_raster`` on its grid.

    Bin ``k`` counts the spikes in ``[t_start + k * dt, t_start + (k + 1) * dt)`` (``k = floor((t - t_start) /
    dt)`` in float64, the bins of ``bin_times``), so ``from_raster(to_raster(t, dt), dt)`` gives ``bin_times(t,
    dt)`` with each channel's spikes in order, where ``dt`` is a power of two (other widths can round a bin's
    start into the bin before it). For a time-stepped model, a plot of counts, or a comparison with binned data.

    Args:
        times: spike tensor ``[batch, channels, max_spikes]`` (float32/float64, ascending, ``+inf`` padded); NumPy
            or CuPy (the raster is then a CuPy array).
        dt: bin width (> 0), in the unit of ``times``.
        n_bins: number of bins; ``None``: up to the last spike's bin (1 when there is none). Spikes at or after
            ``t_start + n_bins * dt``, or before ``t_start``, are left out with a ``DroppedSpikesWarning`` that
            counts them.
        time_axis: where the bins go: ``0`` gives ``[T, batch, channels]`` (snnTorch, Norse), ``1`` ``[batch, T,
            channels]``, ``2`` or ``-1`` ``[batch, channels, T]``.
        t_start: the first bin's start (finite, >= 0).
        dtype: an integer dtype for the counts (a bin holding more spikes than it can count is an error).

    Returns:
        The raster, ``dtype``, with ``batch * channels * n_bins`` entries.
    """
    from .. import _memory
    from .._validate import array_module, check_spike_times

    check_spike_times("times", times)
    check_positive("dt", dt)
    _check_t_start(t_start)
    check_count("n_bins", n_bins, allow_none=True)
    if isinstance(time_axis, bool) or not isinstance(time_axis, (int, np.integer)) or not -3 <= time_axis < 3:
        raise ValueError(f"time_axis must be 0, 1, 2 (or -3..-1) for a raster of three axes, got {time_axis!r}")
    try:
        dtype = np.dtype(dtype)
    except TypeError as err:
        raise TypeError(f"dtype must be an integer dtype, got {dtype!r}") from err
    if dtype.kind not in "iu":
        raise TypeError(f"dtype must be an integer dtype (the raster holds spike counts), got {dtype}")
    xp = array_module(times)
    n, n_channels, _ = times.shape
    t = times.astype(xp.float64)
    finite = xp.isfinite(t)
    with np.errstate(over="ignore", invalid="ignore"):
        k = xp.floor((t - float(t_start)) / float(dt))
    total = int(finite.sum())
    keep = finite & (k >= 0)  # at or after t_start
    if n_bins is None:
        n_bins = int(k[keep].max()) + 1 if bool(keep.any()) else 1
        if n_bins > 2 ** 62:
            raise ValueError(f"the last spike, {float(t[keep].max())!r}, lies in bin {n_bins - 1} of width "
                             f"dt={dt!r}: too many bins; pass a larger dt or n_bins")
    keep &= k < n_bins
    dropped = total - int(keep.sum())
    size = n * n_channels * n_bins
    _memory.check(f"to_raster({n} samples, {n_channels} channels, n_bins={n_bins}, {dtype.name})",
                  {"counts per bin (int64)": 8 * size, "raster": size * dtype.itemsize}, xp,
                  "pass a larger dt, fewer bins (n_bins), or fewer samples at once")
    b_idx, c_idx, _ = xp.nonzero(keep)
    flat = (b_idx * n_channels + c_idx) * n_bins + k[keep].astype(xp.int64)
    counts = xp.bincount(flat, minlength=size) if flat.size else xp.zeros(size, xp.int64)
    most = int(counts.max()) if counts.size else 0
    if most > np.iinfo(dtype).max:
        raise ValueError(f"a bin holds {most} spikes, more than dtype {dtype.name} can count (at most "
                         f"{np.iinfo(dtype).max}); pass a wider integer dtype or a smaller dt")
    raster = xp.moveaxis(counts.astype(dtype).reshape(n, n_channels, n_bins), 2, time_axis)
    if dropped:
        warnings.warn(f"to_raster: {dropped} of {total} spikes lie outside the {n_bins} bins of width {dt!r} from "
                      f"t_start={t_start!r} and are not counted", DroppedSpikesWarning, stacklevel=2)
    return xp.ascontiguousarray(raster)


def bin_times(times, bin_width: float, *, align: str = "left"):
    """Quantise spike times to a grid of spacing ``bin_width`` (same unit as ``times``).

    ``align="left"`` maps ``t`` to the left edge ``floor(t / bin_width) * bin_width``; ``align="center"`` to the
    bin centre ``(floor(t / bin_width) + 0.5) * bin_width``. The map is monotone, so sorted spike lists stay
    sorted (spikes in one bin become simultaneous) and ``+inf`` padding is unchanged.

    ``times`` must be a NumPy array of dtype float32 or float64 (the spike times the layers take), of any shape;
    anything else (a list, integers, float16, bool, complex, strings, objects) is a TypeError. Returns a new array
    of the input's dtype and shape.
    """
    from .._validate import check_float_array

    check_positive("bin_width", bin_width)
    check_choice("align", align, ("left", "center"))
    if not isinstance(times, np.ndarray):
        raise TypeError(f"times must be a NumPy array of dtype float32 or float64, got {type(times).__name__}")
    check_float_array("times", times, times.ndim)
    t = times
    t64 = t.astype(np.float64)
    bad = np.isnan(t64) | (t64 < 0)
    if bad.any():
        raise ValueError(f"times must be >= 0 and not NaN, got {t64[bad].ravel()[0]!r}")
    dtype = t.dtype
    with np.errstate(over="ignore"):  # an overflow is refused below
        binned = np.floor(t64 / bin_width)
        if align == "center":
            binned += 0.5
        out = binned * bin_width
        cast = out.astype(dtype)
    lost = np.isfinite(t64) & ~np.isfinite(out)
    if lost.any():
        raise ValueError(f"times / bin_width overflows float64 for the time {float(t64[lost].ravel()[0])!r} with "
                         f"bin_width={bin_width!r}; use a larger bin_width or another time unit")
    lost = np.isfinite(t64) & ~np.isfinite(cast)  # a bin edge or centre beyond the dtype: it would become padding
    if lost.any():
        raise ValueError(f"the time {float(t64[lost].ravel()[0])!r} binned with bin_width={bin_width!r} "
                         f"(align={align!r}) is {float(out[lost].ravel()[0])!r}, beyond {dtype.name}'s range: it "
                         "would become the +inf of padding; use a smaller bin_width, align='left', or float64 times")
    return cast
