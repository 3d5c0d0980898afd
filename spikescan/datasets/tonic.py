"""Bridge from `tonic <https://tonic.readthedocs.io>`_ event datasets to spike tensors.

tonic's datasets return each sample as a NumPy structured array of events with a ``t`` field in microseconds and
address fields (``x`` for audio datasets such as SHD / SSC, ``x``, ``y``, ``p`` for event cameras), plus a label.
:class:`ToSpikeTensor` is a ``transform=`` for any of them: it turns one sample's events into the library's spike
tensor ``[channels, max_spikes]`` (ascending, ``+inf``-padded, in a stated time unit) and counts every spike it
drops. :func:`collate_spikes` stacks such ``(tensor, label)`` pairs into a batch, for a ``torch.utils.data.DataLoader``
(``collate_fn=collate_spikes``) or plain iteration. Neither imports tonic: they only read the event arrays.
"""

from __future__ import annotations

import warnings

import numpy as np

from .. import _memory
from ._core import (TIME_UNITS, DroppedSpikesWarning, _pack_events, check_choice, check_count, check_positive,
                    class_indices, float_dtype, is_whole)

_US = TIME_UNITS["us"]


def _whole(what, v):
    """``v`` unchanged when a float array holds only finite whole numbers (any other dtype is returned as is)."""
    if v.dtype.kind == "f":
        bad = ~is_whole(v)
        if bad.any():
            raise ValueError(f"ToSpikeTensor: {what} holds non-integer values, e.g. {v[bad][0].item()!r}")
    return v


class ToSpikeTensor:
    """tonic transform: structured event array -> spike tensor ``[n_channels, max_spikes]``.

    Each event's channel comes from its address fields, its time from ``t`` (microseconds, tonic's convention),
    converted to ``time_unit`` by one correctly rounded division (``t / 1000`` for ms). Each channel keeps its
    first ``max_spikes`` spikes in time order (ties: the order of the events), ascending and ``+inf``-padded to
    exactly ``max_spikes`` columns, so every sample has the same shape and batches stack.

    Channels (``channel_field``):

    - a field name (e.g. ``"x"``): that field is the channel index, in ``[0, n_channels)``;
    - ``"auto"`` (default): ``"x"`` when ``sensor_size`` is None (audio / 1-D datasets: SHD, SSC, N-TIDIGITS);
      with ``sensor_size = (W, H, P)`` (tonic's ``Dataset.sensor_size``), the flattening of tonic's frame layout
      ``[P, H, W]``: ``channel = (p * H + y) * W + x``, so ``n_channels`` must be ``W * H * P``. A single-polarity
      sensor (``P == 1``) ignores ``p`` (as tonic's ``ToFrame`` does; SHD's events carry ``p = 1`` with
      ``sensor_size = (700, 1, 1)``, so they map to ``channel = x``), and events without ``y`` need ``H == 1``.
      Events with a ``y`` field need ``sensor_size`` (or an explicit ``channel_field``).

    Times must reach it in tonic's microseconds: a transform before it that rescales ``t`` (tonic's
    ``Downsample(time_factor=0.001)``, meant to give milliseconds) makes every time 1000 times too small here, and
    rounds it too, since tonic keeps ``t`` as integers. Convert with ``time_unit`` instead.

    Dropped spikes are counted exactly, never silently: spikes later than ``t_max`` (in ``time_unit``; a spike at
    exactly ``t_max`` is kept) and spikes beyond the first ``max_spikes`` of a channel (among those within
    ``t_max``). A sample that loses spikes issues a :class:`DroppedSpikesWarning` with its counts; the running
    totals since construction (or :meth:`reset_dropped`) are in ``dropped`` (a dict keyed ``"t_max"`` and
    ``"max_spikes"``) and ``dropped_spikes``; ``last_dropped`` holds the last sample's counts. With a
    ``DataLoader`` using worker processes each worker holds its own copy of the transform, so the totals of the
    copy in the main process only count the samples transformed there.

    Args:
        n_channels: number of channels of the spike tensor.
        max_spikes: columns of the spike tensor (spikes kept per channel).
        time_unit: ``"ms"`` (default), ``"s"`` or ``"us"``.
        t_max: drop spikes later than this (in ``time_unit``); None keeps all.
        channel_field: ``"auto"`` or the name of the event field that holds the channel index.
        sensor_size: tonic's ``(W, H, P)`` sensor size, for ``channel_field="auto"`` on 2-D sensors.
        dtype: float32 (default) or float64, the dtype of the result.

    Example::

        shd = tonic.datasets.SHD(save_to="data", train=False, transform=ToSpikeTensor(700, 16, t_max=1000.0))
        times, label = shd[0]                       # times [700, 16] float32, ms
        loader = torch.utils.data.DataLoader(shd, batch_size=32, collate_fn=collate_spikes)
        for times, labels in loader: ...           # times [32, 700, 16], labels [32] int64
    """

    def __init__(self, n_channels, max_spikes, *, time_unit="ms", t_max=None, channel_field="auto",
                 sensor_size=None, dtype=np.float32):
        check_count("n_channels", n_channels)
        check_count("max_spikes", max_spikes)
        check_choice("time_unit", time_unit, TIME_UNITS)
        check_positive("t_max", t_max, allow_none=True)
        if not isinstance(channel_field, str):
            raise TypeError(f"channel_field must be 'auto' or an event field name, got {channel_field!r}")
        if sensor_size is not None:
            try:
                ok = len(sensor_size) == 3 and all(
                    isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s >= 1 for s in sensor_size)
            except TypeError:
                ok = False
            if not ok:
                raise ValueError(f"sensor_size must be tonic's (W, H, P), three integers >= 1, got {sensor_size!r}")
            sensor_size = tuple(int(s) for s in sensor_size)
            if channel_field == "auto" and n_channels != int(np.prod(sensor_size)):
                raise ValueError(f"n_channels must be W * H * P = {int(np.prod(sensor_size))} for sensor_size "
                                 f"{sensor_size} with channel_field='auto', got {n_channels}")
        self.n_channels = int(n_channels)
        self.max_spikes = int(max_spikes)
        self.time_unit = time_unit
        self.t_max = None if t_max is None else float(t_max)
        self.channel_field = channel_field
        self.sensor_size = sensor_size
        self.dtype = float_dtype(dtype)
        # Every sample's output is [n_channels, max_spikes]: checked once, here, not per sample.
        _memory.check(f"ToSpikeTensor(n_channels={self.n_channels}, max_spikes={self.max_spikes})",
                      {"spike tensor of the sample": self.n_channels * self.max_spikes * self.dtype.itemsize},
                      np, "lower max_spikes (the padded width of every sample) or n_channels")
        self.reset_dropped()

    def reset_dropped(self):
        """Set the running totals ``dropped`` to zero."""
        self.dropped = {"t_max": 0, "max_spikes": 0}
        self.last_dropped = {"t_max": 0, "max_spikes": 0}

    @property
    def dropped_spikes(self) -> int:
        """Total number of spikes dropped (``t_max`` and ``max_spikes``) since construction or reset."""
        return int(sum(self.dropped.values()))

    def channels(self, events) -> np.ndarray:
        """``[n_events]`` int64 channel index of each event (see the class docstring)."""
        names = events.dtype.names
        if self.channel_field != "auto" or self.sensor_size is None:
            field = "x" if self.channel_field == "auto" else self.channel_field
            if field not in names:
                raise ValueError(f"ToSpikeTensor: events have no field {field!r} (fields: {names})")
            if self.channel_field == "auto" and "y" in names:
                # A camera's events: x alone would merge rows, and a sample whose events share one row (a single
                # event, or a sparse sample after Denoise) passed a check on the values and landed on channel x.
                raise ValueError(
                    "ToSpikeTensor: the events have a field 'y' (a 2-D sensor), but without sensor_size the channel "
                    "is 'x' alone, which would merge the rows (and polarities) into one channel; pass "
                    "sensor_size=(width, height, polarities) (tonic's dataset.sensor_size), or channel_field='x' if "
                    "that is what you want")
            # x alone: events that vary in p would merge their polarities (SHD's constant artificial one is fine)
            if self.channel_field == "auto" and "p" in names and len(events) and \
                    np.unique(np.asarray(events["p"])).size > 1:
                raise ValueError(
                    "ToSpikeTensor: the events' field 'p' takes several values, but without sensor_size the channel "
                    "is 'x' alone, which would merge different pixels or polarities into one channel; pass "
                    "sensor_size=(width, height, polarities) (tonic's dataset.sensor_size), or channel_field='x' if "
                    "that is what you want")
            ch = np.asarray(events[field])
        else:
            w, h, p = self.sensor_size
            for field in ("x",) + (("y",) if h > 1 else ()) + (("p",) if p > 1 else ()):
                if field not in names:
                    raise ValueError(f"ToSpikeTensor: sensor_size {self.sensor_size} needs the event field "
                                     f"{field!r} (fields: {names})")
            def field_in(name, size):
                # Checked in the field's own dtype: inf, 1e30 or a uint64 above int64's range would wrap in the cast.
                v = _whole(f"event field {name!r}", np.asarray(events[name]))
                bad = (v < 0) | (v >= size)
                if bad.any():
                    raise ValueError(f"ToSpikeTensor: event field {name!r} must lie in [0, {size}) for sensor_size "
                                     f"{self.sensor_size}, got {v[bad][0].item()!r}")
                return v.astype(np.int64)

            x = field_in("x", w)
            y = field_in("y", h) if "y" in names else np.zeros_like(x)
            pol = field_in("p", p) if p > 1 else np.zeros_like(x)
            ch = (pol * h + y) * w + x
        if ch.dtype.kind not in "iubf":
            raise ValueError(f"ToSpikeTensor: channel field must be integer, got dtype {ch.dtype}")
        ch = _whole("channel field", ch)
        bad = (ch < 0) | (ch >= self.n_channels)  # before the cast to int64, which would wrap a huge value
        if bad.any():
            raise ValueError(f"ToSpikeTensor: channel {ch[bad][0].item()!r} outside [0, {self.n_channels})")
        return ch.astype(np.int64)

    def times(self, events) -> np.ndarray:
        """``[n_events]`` float64 event times in ``time_unit`` (``t`` is in microseconds)."""
        if "t" not in events.dtype.names:
            raise ValueError(f"ToSpikeTensor: events have no time field 't' (fields: {events.dtype.names})")
        raw = np.asarray(events["t"])
        t = raw.astype(np.float64)
        bad = ~np.isfinite(t) | (t < 0)
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(f"ToSpikeTensor: event times 't' must be finite and >= 0 (microseconds), got "
                             f"{raw[i].item()!r} at event {i}")
        return t / (_US / TIME_UNITS[self.time_unit])

    def __call__(self, events) -> np.ndarray:
        events = np.asarray(events)
        if events.dtype.names is None:
            raise TypeError(f"ToSpikeTensor expects tonic's structured event array (fields t, x, ...), got an array "
                            f"of dtype {events.dtype}")
        events = events.reshape(-1)
        ch, t = self.channels(events), self.times(events)
        dropped = {"t_max": 0, "max_spikes": 0}
        if self.t_max is not None:
            keep = t <= self.t_max
            dropped["t_max"] = int(len(t) - keep.sum())
            ch, t = ch[keep], t[keep]
        packed, dropped["max_spikes"] = _pack_events([(ch, t)], self.n_channels, self.max_spikes, self.dtype,
                                                     stacklevel=3)
        out = np.full((self.n_channels, self.max_spikes), np.inf, dtype=self.dtype)
        out[:, :packed.shape[-1]] = packed[0]
        self.last_dropped = dropped
        for k, v in dropped.items():
            self.dropped[k] += v
        n = sum(dropped.values())
        if n:
            parts = ", ".join(f"{k}: {v} (beyond {k}={getattr(self, k)!r})" for k, v in dropped.items() if v)
            warnings.warn(f"ToSpikeTensor: dropped {n} of {len(events)} spikes of a sample ({parts}); running total "
                          f"in .dropped", DroppedSpikesWarning, stacklevel=2)
        return out

    def __repr__(self):
        extra = "".join(f", {k}={getattr(self, k)!r}" for k in ("t_max", "sensor_size") if getattr(self, k) is not None)
        return (f"ToSpikeTensor(n_channels={self.n_channels}, max_spikes={self.max_spikes}, "
                f"time_unit={self.time_unit!r}, channel_field={self.channel_field!r}{extra})")


def collate_spikes(batch):
    """Stack ``(times [channels, max_spikes], label)`` pairs into ``(times [b, channels, max_spikes], labels [b])``.

    ``times`` keeps the samples' dtype (float32 from :class:`ToSpikeTensor`; float64 when float32 and float64 items
    are mixed, which holds both exactly); labels become int64. Returns NumPy
    arrays (``model.fit`` accepts them, as does a ``torch.utils.data.DataLoader`` given ``collate_fn=collate_spikes``).
    The batch is checked as a :class:`SpikeDataset` is: each ``times`` float32 or float64 and 2-D, all of one shape,
    no NaN, no negative time, ascending along the last axis; each label a scalar integer class index ``>= 0``.
    Anything else is a TypeError or ValueError naming the item.

    An item whose ``times`` is an *empty* structured event array is a sample without events that never reached
    :class:`ToSpikeTensor`: tonic's ``transforms.Compose`` stops at a sample that a transform before it emptied
    (``CropTime``, ``Denoise``, ...). It becomes an all-``+inf`` tensor of the other items' shape and dtype (what
    ``ToSpikeTensor`` makes of no events); a batch of such items only is an error (no shape to take).
    """
    batch = list(batch)
    if not batch:
        raise ValueError("collate_spikes: empty batch")
    times, labels = [], []
    for i, item in enumerate(batch):
        try:
            t, label = item
        except (TypeError, ValueError) as err:
            raise ValueError(f"collate_spikes: item {i} is not a (times, label) pair") from err
        t, label = np.asarray(t), np.asarray(label)
        if t.dtype.names is not None:
            if t.size:
                raise ValueError(f"collate_spikes: item {i} is a structured event array of {t.size} events, not a "
                                 "spike tensor: apply ToSpikeTensor to the events first")
        elif t.dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
            raise TypeError(f"collate_spikes: item {i}'s times must have dtype float32 or float64, got {t.dtype}")
        elif t.ndim != 2:
            raise ValueError(f"collate_spikes: item {i}'s times must be a spike tensor [channels, max_spikes], got "
                             f"shape {t.shape}")
        if label.ndim != 0:
            raise ValueError(f"collate_spikes: item {i}'s label must be one class index, got shape {label.shape}")
        times.append(t)
        labels.append(label)
    first = next((i for i, t in enumerate(times) if t.dtype.names is None), None)
    if first is None:
        raise ValueError("collate_spikes: every item is an empty event array (no spike tensor to take the shape "
                         "from): tonic's Compose skips the transforms after one that empties a sample, so apply "
                         "ToSpikeTensor after Compose, not inside it")
    shape, dtype = times[first].shape, times[first].dtype
    for i, t in enumerate(times):
        if t.dtype.names is not None:  # an emptied sample: no spikes
            times[i] = np.full(shape, np.inf, dtype=dtype)
        elif t.shape != shape:
            raise ValueError(f"collate_spikes: item {i} has shape {t.shape}, item {first} has {shape} "
                             "(use ToSpikeTensor, whose output has a fixed shape)")
    from .._validate import check_spike_times

    labels = class_indices("labels", np.stack(labels), source="collate_spikes (index: item)")
    times = np.stack(times)
    check_spike_times("collate_spikes: the items' times [item, channel, spike]", times)
    return times, labels
