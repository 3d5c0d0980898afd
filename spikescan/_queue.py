"""Per-neuron input queues (DESIGN.md section 5), for NumPy and CuPy arrays alike.

A queue is the list of input spikes of one sample in order of arrival. Without delays all output neurons share it;
with delays ``D[j, i]`` spike ``(t, j)`` reaches neuron ``i`` at ``t + D[j, i]``, so every neuron has its own order.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np


def build_queues(input_times, delays, xp, compiled=False):
    """Sort the input spikes of every sample (and neuron, with delays) by arrival time.

    Args:
        input_times: ``[batch, n_in, max_in]`` float array, ``+inf`` padded.
        delays: ``None`` or ``[n_in, n_out]`` float64 array.
        compiled: NumPy only: the shared queue by the compiled engine (``shared_queue_compiled``, the same arrays).

    Returns:
        ``(queue_times, queue_index, queue_end)``: float64 ``[batch, Q, L1]`` arrival times (ascending, ``+inf``
        padded, at least one ``+inf`` per row), int64 ``[batch, Q, L1]`` flat source index ``j * max_in + m``
        (``-1`` for padding) and int64 ``[batch, Q]`` count of real entries. ``Q = 1`` without delays and
        ``n_out`` with delays. ``L1`` is one more than the largest number of input spikes of any sample.
        Simultaneous arrivals keep the order of the shared queue (time, then source index).
    """
    times, index, n_real = shared_queue(input_times, xp, compiled=compiled)
    if delays is None:
        return times[:, None, :], index[:, None, :], n_real[:, None]
    return delayed_queues(times, index, n_real, input_times.shape[2], delays, xp)


def shared_queue_compiled(input_times):
    """``shared_queue(input_times, np)`` by the compiled engine (``_lif_numba.shared_queue``: a stable sort of each
    sample's finite entries only, in parallel over samples): the same arrays."""
    from . import _lif_numba

    batch, n_in, max_in = input_times.shape
    flat = np.ascontiguousarray(input_times.reshape(batch, n_in * max_in), dtype=np.float64)
    n_real = np.isfinite(flat).sum(axis=1).astype(np.int64)
    length = int(n_real.max()) if batch else 0
    times = np.empty((batch, length + 1))
    index = np.empty((batch, length + 1), np.int64)
    _lif_numba.shared_queue(flat.size, flat, n_real, times, index)
    return times, index, n_real


def shared_queue(input_times, xp, length=None, compiled=False):
    """The queue of every sample without delays: ``(times [batch, L1], index [batch, L1], n_real [batch])``.

    Entries as in ``build_queues``: float64 times ascending (simultaneous spikes in flat source order), int64 flat
    source index ``j * max_in + m`` (``-1`` for the ``+inf`` padding), int64 count of real entries.
    ``length``: the most real entries of any sample (``L1 - 1``) when the caller already knows it
    (``_memory.most_entries``); otherwise it is read from the device here (a host sync on CuPy).
    ``compiled`` (NumPy only): sorted by the compiled engine (``shared_queue_compiled``), the same arrays.
    """
    if compiled:
        return shared_queue_compiled(input_times)
    batch, n_in, max_in = input_times.shape
    flat = input_times.reshape(batch, n_in * max_in).astype(xp.float64)
    # A stable sort keeps simultaneous spikes in source order, so queues are reproducible.
    order = xp.argsort(flat, axis=1, kind="stable") if xp.__name__ == "numpy" else xp.argsort(flat, axis=1)
    times = xp.take_along_axis(flat, order, axis=1)
    real = xp.isfinite(times)
    n_real = real.sum(axis=1)
    if length is None:
        length = int(n_real.max()) if batch else 0
    pad = xp.full((batch, 1), xp.inf)
    times = xp.concatenate([times[:, :length], pad], axis=1)
    index = xp.concatenate([xp.where(real, order, -1)[:, :length], xp.full((batch, 1), -1, dtype=order.dtype)], 1)
    return times, index.astype(xp.int64), n_real.astype(xp.int64)


def delayed_queues(times, index, n_real, max_in, delays, xp):
    """Per-neuron queues ``(queue_times, queue_index, queue_end)`` of ``build_queues`` from a ``shared_queue``.

    A stable argsort of the ``[batch, n_out, L1]`` arrival times: simultaneous arrivals keep their order in the
    shared queue. Memory: about 5 float64/int64 temporaries of that shape besides the outputs.
    """
    batch, L1 = times.shape
    n_out = delays.shape[1]
    src = xp.where(index >= 0, index // max(int(max_in), 1), 0)  # max_in = 0: no real entry, nothing to divide
    # [batch, n_out, L1]: arrival = t + D[j, i]; +inf stays +inf. (A layer without inputs has only the padding entry,
    # whose source 0 does not exist: any delay will do.)
    d_src = delays[src] if delays.shape[0] else xp.zeros(src.shape + (n_out,))
    arrival = times[:, None, :] + xp.transpose(d_src, (0, 2, 1))
    del d_src  # [batch, L1, n_out]: not kept alive through the sort
    order2 = xp.argsort(arrival, axis=2, kind="stable") if xp.__name__ == "numpy" else xp.argsort(arrival, axis=2)
    q_times = xp.take_along_axis(arrival, order2, axis=2)
    q_index = xp.take_along_axis(xp.broadcast_to(index[:, None, :], (batch, n_out, L1)), order2, axis=2)
    q_end = xp.broadcast_to(n_real[:, None], (batch, n_out)).copy()
    return q_times, q_index, q_end


class PermutedQueues(NamedTuple):
    """The queues of a layer with delays in the permutation format (PERF.md P2b), written by the CUDA queue kernels
    (``spikescan.cuda._queue``) and by the compiled CPU engine (``_lif_numba.delayed_permutation``).

    - ``perm``: ``[batch, n_out, L1]`` uint16 (int32 on the compiled engine when ``L1 > 65536``), the position in the
      sample's shared queue of each row's entries, in arrival order; rows ``r >= n_real[b]`` hold ``n_real[b]``, a
      padding position.
    - ``times``: ``[batch, L1]`` float64, the shared queue (ascending, ``+inf`` padded).
    - ``index``: ``[batch, L1]`` int32 (CUDA) or int64 (NumPy), its flat sources ``j * max_in + m`` (``-1`` for
      padding).
    - ``end``: ``[batch, n_out]`` int64, real entries per row (``n_real[b]`` on every row of sample ``b``).
    - ``delays_t``: ``[n_out, n_in]`` float64, ``D`` transposed (a row reads one contiguous range).

    Entry ``k`` of neuron ``i``: ``time = times[b, p] + delays_t[i, index[b, p] // max_in]`` (the addition of the
    materialised queues, so the same bits; ``+inf`` for padding), ``p = perm[b, i, k]``.
    """

    perm: Any
    times: Any
    index: Any
    end: Any
    delays_t: Any


def expand(xp, perm, times, index, delays_t, max_in):
    """The materialised ``(queue_times [batch, n_out, L1] float64, queue_index [batch, n_out, L1])`` of a
    permutation (``PermutedQueues`` fields; the index keeps ``index``'s dtype): arrivals by the kernels' addition,
    ``+inf`` / ``-1`` padding."""
    batch, n_out, L1 = perm.shape
    p = perm.astype(xp.int64)
    rows = xp.arange(batch)[:, None, None]
    q_index = index[rows, p]
    j = xp.where(q_index >= 0, q_index, 0) // max(int(max_in), 1)
    arrival = times[rows, p] + delays_t[xp.arange(n_out)[None, :, None], j]
    q_times = xp.where(q_index >= 0, arrival, np.inf)
    return q_times, q_index


def residual_queues(xp, residuals):
    """``(queue_times, queue_index)`` of ``LIFResiduals`` in either format (the permutation format expanded)."""
    if residuals.queue_perm is None:
        return residuals.queue_times, residuals.queue_index
    return expand(xp, residuals.queue_perm, residuals.shared_times, residuals.shared_index, residuals.delays_t,
                  residuals.input_shape[2])


# Peak bytes per queue entry of ``expand``: positions, indices, sources, arrivals and the outputs (8 bytes each) and
# the masks.
EXPAND_BYTES_PER_ENTRY = 48


def compiled_permutation(perm, times, index, delays_t, max_in):
    """The compiled kernels' form of a permutation (NumPy arrays): ``(perm [batch * n_out, L1], times, index (int64),
    source = index // max_in (-1 for padding), delays_t)``, each contiguous."""
    L1 = perm.shape[-1]
    index = np.ascontiguousarray(index, dtype=np.int64)
    source = np.where(index >= 0, index // max(int(max_in), 1), -1)
    return (np.ascontiguousarray(perm.reshape(-1, L1)), np.ascontiguousarray(times), index, source,
            np.ascontiguousarray(delays_t))


def expand_compiled(perm, times, index, delays_t, max_in):
    """``expand`` for NumPy arrays by the compiled kernel (``_lif_numba.expand_permutation``; needs Numba): the same
    values, int64 sources, 16 bytes per entry written and no temporaries of that size."""
    from . import _lif_numba

    batch, n_out, L1 = perm.shape
    q_times = np.empty((batch, n_out, L1))
    q_index = np.empty((batch, n_out, L1), np.int64)
    _lif_numba.expand_permutation(perm.size, compiled_permutation(perm, times, index, delays_t, max_in),
                                  q_times.reshape(-1, L1), q_index.reshape(-1, L1))
    return q_times, q_index


def materialised(residuals, xp=np, compiled=False):
    """``residuals`` with its queues in the materialised format (a copy with ``queue_times`` and ``queue_index``
    expanded and the permutation fields cleared; unchanged if already materialised): for the paths that walk
    ``[batch, Q, L1]`` queue arrays (the NumPy backward methods, ``lif_trace``, the recurrent layer's backward).
    ``compiled``: by ``expand_compiled`` (the compiled engine's callers)."""
    if residuals.queue_perm is None:
        return residuals
    from . import _memory

    batch, n_out, L1 = residuals.queue_perm.shape
    _memory.check(f"expanding the queues of a layer with delays ([{batch}, {n_out}, {L1}] entries)",
                  {"queues": (16 if compiled else EXPAND_BYTES_PER_ENTRY) * batch * n_out * L1}, xp,
                  "the compiled engine's backward (engine='numba', or 'auto' with Numba installed, method "
                  "'auto') reads them as they are; or reduce the batch")
    if compiled and xp is np:
        q_times, q_index = expand_compiled(residuals.queue_perm, residuals.shared_times, residuals.shared_index,
                                           residuals.delays_t, residuals.input_shape[2])
    else:
        q_times, q_index = residual_queues(xp, residuals)
    return residuals._replace(queue_times=q_times, queue_index=q_index, queue_perm=None, shared_times=None,
                              shared_index=None, delays_t=None)
