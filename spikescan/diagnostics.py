"""How well conditioned are a layer's spike times? ``spike_slopes``: the voltage's slope at each recorded spike.

Every derivative of a spike time divides by the slope at which the voltage crosses the threshold (implicit function
theorem, DESIGN.md section 6)::

    dt*/dp = -(dV/dp) / (dV/dt),   dV/dt = (I(t*) - threshold) / tau_mem   at V(t*) = threshold

so a spike whose voltage only just reaches the threshold (a nearly grazing spike: small ``dV/dt``) has large
gradients, and they are ill-conditioned: a relative change ``eps`` of the voltage (rounding in another engine or
summation order, say ``eps = 1e-16``) moves its time by about ``eps * threshold / (dV/dt)``. A slope of exactly
``<= 0`` is a grazing spike, which ``lif_backward`` does not differentiate through (``GrazingSpikeWarning``).
"""

from __future__ import annotations

import numpy as np

from . import _validate as v
from ._types import LIFResult
from .neurons import lif


def spike_slopes(result):
    """``dV/dt`` at each recorded spike of a ``lif_forward`` result: ``(I(t*) - threshold) / tau_mem``.

    The spike time's derivatives all divide by it (see the module docstring); for a neuron's first spike,
    ``dt*/dthreshold = 1 / slope`` exactly. Small positive values mark nearly grazing spikes, whose gradients are
    large and sensitive to rounding; ``<= 0`` marks a grazing spike (``lif_backward`` drops its implicit-function
    term and issues a ``GrazingSpikeWarning``).

    Args:
        result: the ``LIFResult`` of ``spikescan.lif_forward`` (feed-forward or recurrent, any engine, method and
            queue format).

    Returns:
        ``[batch, n_out, max_spikes]`` float64, in voltage (threshold) units per time unit, NumPy or CuPy like
        ``result.times``; ``nan`` where no spike was recorded (``result.times`` is ``+inf``).

    The current at each spike is recomputed from the residuals: for a feed-forward layer as the closed-form
    backward computes it (the arrivals of each span decayed to its spike; ``O(entries)`` vectorised NumPy, in the
    backward's groups and within its memory limit, expanding a permutation-format queue first), for a recurrent
    layer read from its spike log. Values agree with the forward's to float64 rounding. CuPy results are computed on
    the host and returned as CuPy arrays.
    """
    if not isinstance(result, LIFResult):
        raise TypeError(f"result must be the LIFResult returned by lif_forward, got {type(result).__name__}")
    res = result.residuals
    xp = v.array_module(res.spike_times)
    if xp is not np:
        res = _to_host(res)
    if res.recurrent_log is not None:
        current = _recurrent_currents(res)
    else:
        from ._closed_backward import spike_currents
        from ._queue import materialised

        current = spike_currents(materialised(res))
    slope = lif.crossing_slope(current, res.threshold[None, :, None], res.tau_mem[None, :, None])
    slope = np.where(np.isfinite(res.spike_times), slope, np.nan)
    return slope if xp is np else xp.asarray(slope)


def _to_host(res):
    """The residuals with every array (and the spike log's) copied to the host."""
    host = {name: v.to_host(x) if hasattr(x, "__cuda_array_interface__") else x for name, x in res._asdict().items()}
    if res.recurrent_log is not None:
        host["recurrent_log"] = res.recurrent_log._make(v.to_host(x) for x in res.recurrent_log)
    return res._replace(**host)


def _recurrent_currents(res):
    """``[batch, n_out, S]`` current at each recorded spike of a recurrent layer, from its spike log (``nan``
    where none was recorded): a neuron's recorded spikes are its first ``S`` in the log's (time) order."""
    batch, n_out, S = res.spike_times.shape
    log = res.recurrent_log
    out = np.full((batch, n_out, S), np.nan)
    for b in range(batch):
        count = int(log.count[b])
        neurons = np.asarray(log.neurons[b, :count], np.int64)
        order = np.argsort(neurons, kind="stable")  # per neuron, its spikes in time order
        sorted_neurons = neurons[order]
        first = np.searchsorted(sorted_neurons, sorted_neurons, side="left")
        slot = np.arange(count) - first
        keep = slot < S
        out[b, sorted_neurons[keep], slot[keep]] = log.currents[b, :count][order][keep]
    return out


__all__ = ["spike_slopes"]
