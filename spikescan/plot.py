"""Plots of spike tensors and traces with matplotlib (optional: ``pip install spikescan[plot]``).

``import spikescan`` does not import this module, and this module imports matplotlib only when a function is called.
Every function draws on the given ``ax`` (or the current axes, ``plt.gca()``) and returns it.

    import spikescan.plot
    res = spikescan.lif_trace(input_times, weights, t, tau_mem=20.0, tau_syn=10.0)
    spikescan.plot.raster(res.spike_times, sample=0)
    spikescan.plot.trace(t, res.voltage[0], threshold=1.0, spike_times=res.spike_times[0], neurons=[0, 1, 2])
"""

from __future__ import annotations

import numpy as np


def _pyplot():
    try:
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise ImportError("spikescan.plot needs matplotlib: pip install 'spikescan[plot]'") from err
    return plt


def _host(x, name):
    """A NumPy copy of ``x`` (NumPy, CuPy, a framework tensor with ``.numpy()`` or a nested list)."""
    if type(x).__module__.split(".")[0] == "cupy":
        x = x.get()
    elif not isinstance(x, np.ndarray) and hasattr(x, "detach"):  # torch
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise TypeError(f"{name} must be an array of real numbers, got dtype {arr.dtype}")
    return arr.astype(np.float64)


def _check_times(name, arr):
    """Spike times: NaN and negative times (``-inf`` included) are no spike times (padding is ``+inf``, spikes come
    at ``t >= 0``), so they are refused rather than left undrawn or drawn where no spike can be."""
    nan = np.isnan(arr)
    if nan.any():
        idx = tuple(int(i) for i in np.argwhere(nan)[0])
        raise ValueError(f"{name} contains NaN at index {idx} (of the drawn sample); pad unused slots with +inf")
    negative = arr < 0
    if negative.any():
        idx = tuple(int(i) for i in np.argwhere(negative)[0])
        raise ValueError(f"{name} contains the negative time {float(arr[idx])!r} at index {idx} (of the drawn "
                         f"sample); spike times are >= 0 and unused slots are +inf")


def _axes(ax):
    return _pyplot().gca() if ax is None else ax


def _time_label(unit):
    if unit is not None and not isinstance(unit, str):
        raise TypeError(f"time_unit must be a string such as 'ms', or None, got {unit!r}")
    return "time" if not unit else f"time ({unit})"


def raster(times, *, sample=None, ax=None, time_unit=None, **scatter_kwargs):
    """Raster plot of a spike tensor: one point per spike at ``(time, neuron index)``.

    Args:
        times: ``[batch, neurons, max_spikes]`` (``sample`` picks the sample) or ``[neurons, max_spikes]`` spike
            times, ``+inf`` padded (padding is skipped; NaN and negative times are refused). NumPy, CuPy or anything
            ``numpy.asarray`` takes.
        sample: index of the sample for a 3-D ``times`` (default 0); an error for a 2-D one.
        ax: matplotlib Axes to draw on; the current axes when ``None``.
        time_unit: the unit of ``times`` for the x-axis label (``"ms"`` gives ``"time (ms)"``); ``None``: ``"time"``.
        **scatter_kwargs: passed to ``ax.scatter`` (defaults: ``marker="|"``, ``s=60``, ``color="k"``,
            ``linewidths=1``).

    Returns:
        The Axes. The spikes are one ``PathCollection`` (the last of ``ax.collections``).
    """
    label = _time_label(time_unit)  # first: a bad argument draws nothing
    arr = _host(times, "times")
    if arr.ndim == 2 and sample is not None:
        raise ValueError(f"sample={sample!r} picks a sample of a spike tensor [batch, neurons, max_spikes], but times "
                         f"has shape {arr.shape} (one sample already)")
    if arr.ndim == 3:
        sample = 0 if sample is None else sample
        if isinstance(sample, (bool, np.bool_)) or not isinstance(sample, (int, np.integer)):
            raise TypeError(f"sample must be an integer index into the batch, got {sample!r}")
        if not -arr.shape[0] <= sample < arr.shape[0]:
            raise IndexError(f"sample {sample} is out of range for a batch of {arr.shape[0]}")
        arr = arr[sample]
    elif arr.ndim != 2:
        raise ValueError(f"times must have shape [batch, neurons, max_spikes] or [neurons, max_spikes], got shape "
                         f"{arr.shape}")
    _check_times("times", arr)
    ax = _axes(ax)
    neuron, slot = np.nonzero(np.isfinite(arr))
    kwargs = dict(marker="|", s=60, color="k", linewidths=1)
    kwargs.update(scatter_kwargs)
    ax.scatter(arr[neuron, slot], neuron, **kwargs)
    ax.set_xlabel(label)
    ax.set_ylabel("neuron")
    if arr.shape[0]:
        ax.set_ylim(-0.5, arr.shape[0] - 0.5)
    return ax


def trace(t, voltage, *, neurons=None, threshold=None, spike_times=None, ax=None, time_unit=None):
    """Voltage traces of one sample: one line per neuron, an optional dashed threshold line and spike markers.

    Args:
        t: ``[T]`` times of the grid (any order: points are drawn sorted by time).
        voltage: ``[neurons, T]`` voltages of one sample (e.g. ``lif_trace(...).voltage[b]``) or ``[T]`` for one
            neuron.
        neurons: indices of the neurons to draw, or a boolean mask over them (default: all).
        threshold: draws a dashed horizontal line at this value (one more line in ``ax.lines``); with one threshold
            per row of ``voltage`` (``[voltage.shape[0]]``, all the neurons, not only those in ``neurons``: a layer
            with ``trainable_threshold``), one dashed line per drawn neuron in its colour.
        spike_times: ``[neurons, max_spikes]`` spike times of the same sample (``+inf`` padded), drawn as markers in
            each neuron's colour at the threshold (the voltage's left limit at a spike), or at the top of that
            neuron's trace when ``threshold`` is ``None``. Markers are one ``PathCollection`` per neuron, not lines.
        ax: matplotlib Axes to draw on; the current axes when ``None``.
        time_unit: the unit of ``t`` for the x-axis label (``"ms"`` gives ``"time (ms)"``); ``None``: ``"time"``.

    Returns:
        The Axes, with one ``Line2D`` per drawn neuron (labelled ``"neuron i"``) plus one for the threshold.
    """
    label = _time_label(time_unit)  # first: a bad argument draws nothing
    tt = _host(t, "t")
    vv = _host(voltage, "voltage")
    if tt.ndim != 1:
        raise ValueError(f"t must be 1-D, got shape {tt.shape}")
    if not np.isfinite(tt).all():  # a grid time is a time: NaN or inf would draw nothing there, silently
        at = int(np.argmin(np.isfinite(tt)))
        raise ValueError(f"t must be finite, got {float(tt[at])!r} at index {at}")
    if vv.ndim == 1:
        vv = vv[None, :]
    if vv.ndim != 2 or vv.shape[1] != tt.size:
        raise ValueError(f"voltage must have shape [neurons, len(t)={tt.size}] (one sample: pass "
                         f"result.voltage[b]), got shape {vv.shape}")
    if neurons is None:
        idx = np.arange(vv.shape[0])
    else:
        idx = np.atleast_1d(np.asarray(neurons))
        if idx.ndim != 1:
            raise ValueError(f"neurons must be a 1-D list of indices or a boolean mask, got shape {idx.shape}")
        if idx.dtype == bool:
            if idx.shape != (vv.shape[0],):
                raise ValueError(f"neurons as a boolean mask must have shape ({vv.shape[0]},), got {idx.shape}")
            idx = np.flatnonzero(idx)
        elif idx.size and idx.dtype.kind not in "iu":
            raise TypeError(f"neurons must be integer indices or a boolean mask, got {neurons!r}")
        # Range-checked before the cast: a uint64 index of 2**63 or more wrapped to a negative, valid index.
        if idx.size and (idx.min() < -vv.shape[0] or idx.max() >= vv.shape[0]):
            raise IndexError(f"neurons {idx.tolist()} out of range for {vv.shape[0]} neurons")
        idx = idx.astype(np.int64)
    thresholds = None if threshold is None else np.asarray(_host(threshold, "threshold"), dtype=np.float64)
    if thresholds is not None and thresholds.shape not in ((), (vv.shape[0],)):
        raise ValueError(f"threshold must be a number or one per neuron, shape ({vv.shape[0]},), got shape "
                         f"{thresholds.shape}")
    if thresholds is not None and not np.isfinite(thresholds).all():
        raise ValueError(f"threshold must be finite, got {threshold!r}")
    if idx.size and (idx.min() < -vv.shape[0] or idx.max() >= vv.shape[0]):
        raise IndexError(f"neurons {idx.tolist()} out of range for {vv.shape[0]} neurons")
    spikes = None
    if spike_times is not None:
        spikes = _host(spike_times, "spike_times")
        if spikes.ndim == 1:
            spikes = spikes[None, :]
        if spikes.ndim != 2 or spikes.shape[0] != vv.shape[0]:
            raise ValueError(f"spike_times must have shape [neurons={vv.shape[0]}, max_spikes] (the same sample as "
                             f"voltage), got shape {spikes.shape}")
        _check_times("spike_times", spikes)
    ax = _axes(ax)
    order = np.argsort(tt, kind="stable")
    for i in idx:
        (line,) = ax.plot(tt[order], vv[i, order], label=f"neuron {int(i) % vv.shape[0]}")
        if spikes is not None:
            s = spikes[i][np.isfinite(spikes[i])]
            height = (float(thresholds if thresholds.ndim == 0 else thresholds[i]) if thresholds is not None
                      else (vv[i].max() if vv.shape[1] else 0.0))
            ax.scatter(s, np.full(s.shape, height), marker="v", color=line.get_color(), zorder=3)
        if thresholds is not None and thresholds.ndim == 1:
            ax.axhline(float(thresholds[i]), linestyle="--", color=line.get_color(), linewidth=1)
    if thresholds is not None and thresholds.ndim == 0:
        ax.axhline(float(thresholds), linestyle="--", color="0.4", linewidth=1, label="threshold")
    ax.set_xlabel(label)
    ax.set_ylabel("voltage")
    if 0 < idx.size <= 10:
        ax.legend(loc="best", fontsize="small")
    return ax


__all__ = ["raster", "trace"]
