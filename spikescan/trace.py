"""Exact voltage and current traces of the LIF layer and the readout on any time grid (no integration).

The spike times come from ``lif_forward``; the state at a grid time ``t`` is then one closed-form decay
(DESIGN.md section 1) from the state right after the last event at or before ``t``, where the events of a neuron are
its input arrivals and its own spikes (resets)::

    V(t) = a V0 + c I0,   I(t) = b I0,   (a, b, c) = decay(t - t_event, tau_mem, tau_syn)

The states after the events come from the same affine recurrence as the layer's own scan (DESIGN.md section 4) with
each spike as the map ``(V, I) -> (0, I)``, so nothing is stepped through time: the grid can be as fine or as sparse,
and as unordered, as wanted, and the values are exact up to float64 rounding.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from . import _memory
from . import _validate as v
from ._queue import build_queues, materialised
from ._scan import recurrence_scan
from .lif import DEFAULT_MAX_TOTAL_SPIKES, METHODS, lif_forward
from .neurons import lif

# Neurons x (events + grid times) handled at once, to bound memory (a few dozen float64 temporaries per point).
_POINTS_PER_GROUP = 1 << 20

# First recording size for max_spikes=None; a neuron that fires more triggers one rerun with the largest count.
_FIRST_MAX_SPIKES = 16


class TraceResult(NamedTuple):
    """Output of ``lif_trace`` and ``li_trace``: the exact state of every neuron on the time grid ``t``.

    - ``voltage``: ``[batch, n_out, len(t)]`` membrane voltage ``V(t)``.
    - ``current``: ``[batch, n_out, len(t)]`` synaptic current ``I(t)``.
    - ``spike_times``: ``[batch, n_out, max_spikes]`` output spike times, ascending, ``+inf`` padded (the spike
      tensor of ``lif_forward``); ``[batch, n_out, 0]`` for ``li_trace``, whose neurons do not spike.
    - ``counts``: ``[batch, n_out]`` int64, every spike of each neuron (``lif_forward``'s ``counts``), so that
      ``counts > spike_times.shape[-1]`` shows the neurons whose recording ``max_spikes`` cut (the voltage and
      current always follow every spike); zeros for ``li_trace``.

    Conventions (both right-continuous, i.e. the state just after everything that happens at ``t``):

    - At an input arrival time the jump of ``I`` is included: ``I(t_arrival) = I(t_arrival^-) + weight``. ``V`` is
      continuous there.
    - At a spike time ``V`` is the post-reset value ``0``; the left limit ``V(t_spike^-)`` is the threshold. So
      ``V(t) < threshold`` at every grid time (up to float64 rounding, about ``1e-12`` relative, on grid times a few
      ulps before a spike): the threshold is only ever reached as a left limit. ``I`` is continuous at a spike.
    - When an input arrives at exactly a spike time, the reset comes first, then the jump (as in ``lif_forward``).
    - ``V = I = 0`` at ``t = 0`` unless an input arrives at ``0`` (then ``I(0)`` holds its weight).

    Arrays have the dtype of ``input_times``, and are NumPy or CuPy like the inputs.
    """

    voltage: Any
    current: Any
    spike_times: Any
    counts: Any


def _check_grid(t):
    """The time grid as a float64 NumPy vector (a CuPy grid is copied to the host)."""
    if type(t).__module__.split(".")[0] == "cupy":
        t = t.get()
    if isinstance(t, (bool, np.bool_)) or isinstance(t, (str, bytes)):
        raise TypeError(f"t must be a 1-D array of times, got {t!r}")
    if isinstance(t, np.ma.MaskedArray):
        raise TypeError("t must be a plain array of times, got a masked array, whose mask would be ignored: pass "
                        "the unmasked times, t.compressed()")
    arr = np.asarray(t)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise TypeError(f"t must be a 1-D array of real times, got dtype {arr.dtype}")
    if arr.ndim != 1:
        raise ValueError(f"t must be 1-D (a vector of times), got shape {arr.shape}")
    arr = arr.astype(np.float64)
    bad = ~np.isfinite(arr) | (arr < 0)
    if bad.any():
        k = int(np.argmax(bad))
        raise ValueError(f"t must hold finite times >= 0, got {float(arr[k])!r} at index {k}")
    return arr


def _state_on_grid(qt, qi, row, col, W, max_in, tm, ts, spike_t, spike_e, t):
    """``(V, I)`` ``[N, len(t)]`` float64 of ``N`` neurons from their queues and (all of) their spikes.

    Args:
        qt, qi: ``[rows, L1]`` queue times and flat source indices (``build_queues`` layout, reshaped).
        row, col: ``[N]`` queue row and output column of each neuron.
        W: ``[n_in, n_out]`` float64 weights; ``max_in`` the last axis of ``input_times``.
        tm, ts: ``[N]`` time constants.
        spike_t, spike_e: ``[N, S]`` spike times (``+inf`` padded) and the queue position each spike precedes
            (``LIFResiduals.spike_event``; ``-1`` for padding). ``S`` may be 0.
    """
    N, T = row.size, t.size
    L1 = qt.shape[1]
    S = spike_t.shape[1]
    q_t = qt[row]
    q_i = qi[row]
    if W.shape[0]:
        w = np.where(q_i >= 0, W[np.where(q_i >= 0, q_i // max(max_in, 1), 0), col[:, None]], 0.0)
    else:  # no input channel: every queue holds its sentinel alone
        w = np.zeros(q_i.shape)
    # Merge the events of each neuron in the order lif_forward applies them: spike m before queue entry
    # spike_event[m] (sort key 2k), after entries < k (keys 2j + 1); padding spikes last.
    key = np.concatenate([np.broadcast_to(2 * np.arange(L1) + 1, (N, L1)),
                          np.where(spike_e >= 0, 2 * spike_e, 2 * L1 + 2)], axis=1)
    order = np.argsort(key, axis=1, kind="stable")
    times = np.take_along_axis(np.concatenate([q_t, spike_t], axis=1), order, axis=1)
    is_spike = order >= L1
    jump = np.take_along_axis(np.concatenate([w, np.zeros((N, S))], axis=1), order, axis=1)
    finite = np.isfinite(times)
    prev = np.concatenate([np.zeros((N, 1)), times[:, :-1]], axis=1)
    gap = np.where(finite, times - np.where(finite, prev, 0.0), 0.0)
    a, b, c = lif.decay(gap, tm[:, None], ts[:, None])
    # Input: (V, I) -> (a V + c I, b I + w). Spike (reset): (V, I) -> (0, b I). Padding (+inf): unused.
    a = np.where(is_spike, 0.0, a)
    c = np.where(is_spike, 0.0, c)
    zero = np.zeros_like(a)
    E = times.shape[1]  # >= 1: every queue ends in a +inf sentinel
    state = recurrence_scan(np.array([[a, c], [zero, b]]), np.array([zero, jump]))
    # Number of events at or before each grid time, per neuron: one flat searchsorted on integer keys
    # (neuron * M + rank of the time among all distinct values), which are ascending along the flat array.
    values = np.unique(np.concatenate([times[finite], t]))
    M = values.size + 1
    rank_e = np.where(finite, np.searchsorted(values, np.where(finite, times, 0.0)), M - 1)
    rank_t = np.searchsorted(values, t)
    base = np.arange(N, dtype=np.int64)[:, None] * M
    n_before = np.searchsorted((base + rank_e).ravel(), (base + rank_t[None, :]).ravel(), side="right")
    last = n_before.reshape(N, T) - np.arange(N, dtype=np.int64)[:, None] * E - 1
    has = last >= 0
    lc = np.maximum(last, 0)
    V0 = np.where(has, np.take_along_axis(state[0], lc, axis=1), 0.0)
    I0 = np.where(has, np.take_along_axis(state[1], lc, axis=1), 0.0)
    t0 = np.where(has, np.take_along_axis(times, lc, axis=1), 0.0)
    a, b, c = lif.decay(t[None, :] - t0, tm[:, None], ts[:, None])
    return a * V0 + c * I0, b * I0


def _state_in_groups(qt, qi, row, col, W, max_in, tm, ts, spike_t, spike_e, t, what="trace"):
    """``_state_on_grid`` over groups of neurons of at most ``_POINTS_PER_GROUP`` points each (memory checked first:
    the outputs and one group's working arrays)."""
    N = row.size
    per = qt.shape[1] + spike_t.shape[1] + t.size  # events and grid points of one neuron
    group = max(1, _POINTS_PER_GROUP // per)
    _memory.check_trace(what, 1, N, t.size, 0, np, min(N, group) * per)
    V, I = np.empty((N, t.size)), np.empty((N, t.size))
    for start in range(0, N, group):
        g = slice(start, min(start + group, N))
        V[g], I[g] = _state_on_grid(qt, qi, row[g], col[g], W, max_in, tm[g], ts[g], spike_t[g], spike_e[g], t)
    return V, I


def lif_trace(input_times, weights, t, *, tau_mem, tau_syn, threshold=1.0, delays=None, max_spikes=None,
              method="auto", recurrent_weights=None, recurrent_delays=None, chunk_size=128, solver="newton",
              max_total_spikes=DEFAULT_MAX_TOTAL_SPIKES, engine="auto"):
    """Exact membrane voltage and synaptic current of a ``lif_forward`` layer at the times ``t``.

    Runs ``lif_forward`` for the exact spike times, then evaluates each neuron's state at every grid time from the
    closed forms and the exact resets (no time stepping, no integration error). See ``TraceResult`` for the
    conventions at input and spike times: right-continuous, with ``V`` reported as the post-reset ``0`` at a spike
    and ``V < threshold`` everywhere else (``threshold`` is the left limit at each spike).

    Recurrent layers (``recurrent_weights``): every spike of neuron ``k`` at ``t_s`` is one more input event of
    neuron ``i``, arriving at ``t_s + recurrent_delays[k, i]`` with the jump ``recurrent_weights[k, i]`` (after
    ``k``'s own reset for ``i == k``, as in ``lif_forward``), and the resets are the forward's own spikes (all of
    them, recorded or not), so the trace follows the forward exactly.

    Args:
        input_times, weights, tau_mem, tau_syn, threshold, delays, method, recurrent_weights, recurrent_delays,
            chunk_size, solver, max_total_spikes, engine: as for ``lif_forward``, which finds the spikes with them
            (so the trace's spike times are bit for bit those of ``lif_forward`` called with the same arguments).
        t: 1-D times (list, NumPy or CuPy array) at which to evaluate, finite and ``>= 0``, in any order (duplicates
            allowed); the output's last axis follows this order.
        max_spikes: length of the returned ``spike_times`` axis. ``None``: the largest spike count of any neuron (at
            least 1), so every spike is returned. The trace itself always uses every spike: when a neuron fires more
            than ``max_spikes`` times, ``lif_forward`` is rerun with the true count and only the recording is cut
            (``counts`` gives every neuron's true count).

    Returns:
        ``TraceResult(voltage, current, spike_times, counts)``: ``[batch, n_out, len(t)]`` twice and
        ``[batch, n_out, max_spikes]``, in the dtype of ``input_times``, and ``[batch, n_out]`` int64.

    CuPy inputs are copied to the host, computed with NumPy (the ``lif_forward`` NumPy path gives the same spike
    times) and returned as CuPy arrays. Cost: one or two ``lif_forward`` calls, then ``O(batch * n_out * (E +
    len(t)))`` work with ``E`` the events (inputs plus spikes) per neuron (an associative scan over ``E``), in
    groups of neurons that bound the temporary memory to about ``2^20`` points at a time besides the outputs.
    """
    xp, tau_mem, tau_syn = v.layer(input_times, weights, tau_mem, tau_syn, delays)
    n_out = weights.shape[1]
    # A scalar or [n_out], as lif_forward's.
    threshold = v.to_host(v.time_constant("threshold", threshold, n_out, xp, bounded=False))
    if max_spikes is not None:
        max_spikes = v.positive_int("max_spikes", max_spikes)
    v.choice("method", method, METHODS)
    grid = _check_grid(t)
    dtype = input_times.dtype
    _memory.check_trace(f"lif_trace(batch={input_times.shape[0]}, n_out={n_out}, len(t)={grid.size})",
                        input_times.shape[0], n_out, grid.size, dtype.itemsize, np)
    args = [v.to_host(x) for x in (input_times, weights, delays, tau_mem, tau_syn)]
    recurrent = [None if x is None else v.to_host(x) for x in (recurrent_weights, recurrent_delays)]

    def forward(k):
        try:
            return lif_forward(args[0], args[1], tau_mem=args[3], tau_syn=args[4], threshold=threshold, max_spikes=k,
                               delays=args[2], method=method, recurrent_weights=recurrent[0],
                               recurrent_delays=recurrent[1], chunk_size=chunk_size, solver=solver,
                               max_total_spikes=max_total_spikes, engine=engine)
        except MemoryError as err:  # name the recording lif_trace chose, which the caller may not have passed
            chosen = "yours" if k == max_spikes else "the recording lif_trace starts with, or the largest count"
            raise MemoryError(f"lif_trace: the lif_forward call that finds the spikes (max_spikes={k}: {chosen}) does "
                              f"not fit: {err}") from err

    result = forward(max_spikes or _FIRST_MAX_SPIKES)
    most = int(result.counts.max(initial=0))
    if most > result.times.shape[-1]:
        result = forward(most)
    res = materialised(result.residuals)
    batch, n_in, max_in = res.input_shape
    if res.recurrent_weights is None:
        queue_times, queue_index, weights, spike_event = res.queue_times, res.queue_index, res.weights, res.spike_event
    else:
        queue_times, queue_index, weights, max_in, spike_event = _recurrent_events(res, v.to_host(input_times))
    Q, L1 = queue_times.shape[1:]
    n = np.arange(batch * n_out)
    b, i = n // n_out, n % n_out
    row = b * Q + (i if Q > 1 else 0)
    S = res.spike_times.shape[-1]
    V, I = _state_in_groups(queue_times.reshape(-1, L1), queue_index.reshape(-1, L1), row, i, weights, max_in,
                          res.tau_mem[i], res.tau_syn[i], res.spike_times.reshape(-1, S), spike_event.reshape(-1, S),
                          grid, f"lif_trace(batch={batch}, n_out={n_out}, len(t)={grid.size})")
    keep = max_spikes if max_spikes is not None else max(most, 1)
    spikes = res.spike_times[..., :keep]
    if spikes.shape[-1] < keep:  # max_spikes above every count: pad with +inf
        spikes = np.concatenate([spikes, np.full((batch, n_out, keep - spikes.shape[-1]), np.inf)], axis=-1)
    out = [x.reshape(batch, n_out, x.shape[-1]).astype(dtype) for x in (V, I, spikes)]
    out.append(np.asarray(result.counts, dtype=np.int64))
    return TraceResult(*(out if xp is np else [xp.asarray(x) for x in out]))


def _recurrent_events(res, input_times):
    """A recurrent layer's events as a feed-forward layer's: its spikes (``res.spike_times``, all of them) appended
    to the input channels, ``recurrent_weights`` to the weights and the delays (0 where none). Returns
    ``(queue_times, queue_index, weights, max_in, spike_event)`` for ``_state_on_grid``, ``spike_event`` placing
    each spike before the queue entries at its own time (reset first, then the jump, as in the forward)."""
    batch, n_in, max_in = res.input_shape
    n_out, S = res.spike_times.shape[1:]
    width = max(max_in, S)
    events = np.full((batch, n_in + n_out, width), np.inf)
    events[:, :n_in, :max_in] = input_times
    events[:, n_in:, :S] = res.spike_times
    weights = np.concatenate([res.weights, res.recurrent_weights])
    delays = None
    if res.delays is not None or res.recurrent_delays is not None:
        delays = np.concatenate([np.zeros((n_in, n_out)) if res.delays is None else res.delays,
                                 np.zeros((n_out, n_out)) if res.recurrent_delays is None else res.recurrent_delays])
    queue_times, queue_index, _ = build_queues(events, delays, np)
    return queue_times, queue_index, weights, width, _spike_positions(queue_times, res.spike_times)


def _spike_positions(queue_times, spike_times):
    """``[batch, n_out, S]`` int64: for each finite spike, the number of entries of its neuron's queue row
    (``queue_times[b, i]``, or ``queue_times[b, 0]`` for a shared queue) strictly before it; ``-1`` for padding.
    One flat ``searchsorted`` over all rows: integer keys ``row * M + rank``, with ``rank`` the position of a time
    among all distinct finite times (``M - 1`` for ``+inf``), are ascending along the flattened queues."""
    batch, Q, L1 = queue_times.shape
    n_out, S = spike_times.shape[1:]
    fired = np.isfinite(spike_times)
    finite_q = np.isfinite(queue_times)
    values = np.unique(np.concatenate([queue_times[finite_q], spike_times[fired]]))
    M = values.size + 1
    rank_q = np.where(finite_q, np.searchsorted(values, np.where(finite_q, queue_times, 0.0)), M - 1)
    rank_s = np.searchsorted(values, np.where(fired, spike_times, 0.0))
    rows = np.arange(batch * Q, dtype=np.int64).reshape(batch, Q, 1)
    row = np.arange(batch, dtype=np.int64)[:, None] * Q + (np.arange(n_out) if Q > 1 else 0)  # [batch, n_out]
    at = np.searchsorted((rows * M + rank_q).ravel(), (row[..., None] * M + rank_s).ravel(), side="left")
    return np.where(fired, at.reshape(batch, n_out, S) - row[..., None] * L1, -1)


def li_trace(input_times, weights, t, *, tau_mem, tau_syn):
    """Exact voltage and current of the ``li_forward`` readout (leaky integrators, no threshold, no reset) at ``t``.

    ``V(t) = sum weights[j, i] c_i(t - t_m)`` over inputs ``t_m <= t`` and ``I(t) = sum weights[j, i]
    e^{-(t - t_m)/tau_syn}``: the same values as ``li_forward(readout="final", t_max=t)`` for every grid time, in
    one pass. Conventions as in ``TraceResult`` (``I`` includes an input arriving exactly at ``t``).

    Args:
        input_times, weights, tau_mem, tau_syn: as for ``li_forward``.
        t: 1-D times, finite and ``>= 0``, in any order.

    Returns:
        ``TraceResult(voltage, current, spike_times, counts)`` with ``spike_times`` of shape ``[batch, n_out, 0]``
        and ``counts`` zeros; dtype of ``input_times``. CuPy inputs are computed on the host and returned as CuPy
        arrays.
    """
    xp, tau_mem, tau_syn = v.layer(input_times, weights, tau_mem, tau_syn)
    n_out = weights.shape[1]
    tau_mem, tau_syn = v.to_host(tau_mem), v.to_host(tau_syn)
    grid = _check_grid(t)
    dtype = input_times.dtype
    batch, n_in, max_in = input_times.shape
    _memory.check_trace(f"li_trace(batch={batch}, n_out={n_out}, len(t)={grid.size})", batch, n_out, grid.size,
                        dtype.itemsize, np)
    times_h = v.to_host(input_times)
    W = np.asarray(v.to_host(weights), np.float64)
    batch, n_in, max_in = times_h.shape
    qt, qi, _ = build_queues(times_h, None, np)
    L1 = qt.shape[2]
    n = np.arange(batch * n_out)
    b, i = n // n_out, n % n_out
    V, I = _state_in_groups(qt.reshape(-1, L1), qi.reshape(-1, L1), b, i, W, max_in, tau_mem[i], tau_syn[i],
                          np.zeros((n.size, 0)), np.zeros((n.size, 0), np.int64), grid,
                          f"li_trace(batch={batch}, n_out={n_out}, len(t)={grid.size})")
    out = [V.reshape(batch, n_out, grid.size).astype(dtype), I.reshape(batch, n_out, grid.size).astype(dtype),
           np.zeros((batch, n_out, 0), dtype), np.zeros((batch, n_out), np.int64)]
    return TraceResult(*(out if xp is np else [xp.asarray(x) for x in out]))


__all__ = ["lif_trace", "li_trace", "TraceResult"]
