"""Memory estimates of the LIF layer, checked before anything large is allocated.

``lif_forward`` and ``lif_backward`` estimate the bytes a call needs (queues, spike records, working arrays) from
the shapes alone and compare the estimate with the memory the call may use:

- CuPy: the device's free memory plus what CuPy's memory pool holds unused (``memGetInfo`` and
  ``MemoryPool.free_bytes``), or the limit set below if that is lower;
- NumPy: the limit set by ``spikescan.set_memory_limit(nbytes)`` or the environment variable
  ``SPIKESCAN_MEMORY_LIMIT`` (bytes, or with a ``K``/``M``/``G``/``T`` suffix, powers of 1024), else the memory the
  operating system reports available (``MemAvailable`` on Linux, the physical memory elsewhere).

When the estimate does not fit, the call raises ``MemoryError`` with the estimate, its parts, the limit and what to
reduce, before allocating, instead of failing in the allocator half-way or swapping. The estimates are upper bounds
on the peak of the large arrays (small per-call arrays are not counted); they are deliberately simple so that a
user can redo them: see ``lif_forward_estimate`` and ``lif_backward_estimate``.
"""

from __future__ import annotations

import os
import re
import time
from fractions import Fraction

import numpy as np

_limit = None  # set_memory_limit's value (bytes), or None
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def set_memory_limit(nbytes):
    """Bytes that one ``lif_forward`` / ``lif_backward`` call may use (``None``: back to the default); the other
    calls that check their memory (the readouts, the traces, ``datasets.randman`` and ``datasets.pack_events``) take
    the same limit.

    On NumPy this replaces the default (the memory the operating system reports available); on CuPy the lower of
    this and the device's free memory applies.

    Args:
        nbytes: a positive number of bytes, or ``None``.

    Returns:
        The previous value set by this function (``None`` if none was), not ``SPIKESCAN_MEMORY_LIMIT``, which
        applies only while no value is set here.
    """
    global _limit
    if nbytes is not None:
        if isinstance(nbytes, bool) or not isinstance(nbytes, (int, np.integer)) or nbytes <= 0:
            raise ValueError(f"nbytes must be a positive integer number of bytes or None, got {nbytes!r}")
        nbytes = int(nbytes)
    previous, _limit = _limit, nbytes
    return previous


def _env_limit():
    raw = os.environ.get("SPIKESCAN_MEMORY_LIMIT")
    if raw is None or not raw.strip():
        return None
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*([KMGT]?)(?:i?B)?\s*", raw, re.IGNORECASE)
    # Exact arithmetic: a float overflows to inf (a bare OverflowError) for a long string of digits.
    nbytes = 0 if match is None else int(Fraction(match.group(1)) * _UNITS[match.group(2).upper()])
    if nbytes < 1:  # "0", or a fraction of a byte ("0.5") that would leave no memory to any call
        raise ValueError(f"SPIKESCAN_MEMORY_LIMIT must be a number of bytes of at least 1, optionally with a K, M, G "
                         f"or T suffix (powers of 1024), got {raw!r}")
    return nbytes


def _host_available():
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


# The last MemAvailable reading (monotonic time, bytes). A call whose estimate is far below it (a quarter) within
# _HOST_TTL seconds reuses it instead of reading /proc/meminfo again: the read and parse cost about 0.1 ms, three
# times per training step (the forward's check and the backward's group sizing), 4-5% of a Yin-Yang step on the
# compiled engine; any estimate near the last figure, or after _HOST_TTL, reads it afresh.
_HOST_TTL = 1.0
_host_reading = [float("-inf"), None]


def _host_available_for(need):
    now = time.monotonic()
    at, value = _host_reading
    if value is not None and now - at < _HOST_TTL and need <= value // 4:
        return value
    value = _host_available()
    _host_reading[0], _host_reading[1] = now, value
    return value


def _device_available():
    import cupy

    free, _ = cupy.cuda.runtime.memGetInfo()
    return int(free) + int(cupy.get_default_memory_pool().free_bytes())


def available(xp, need=None):
    """``(bytes, source)``: what a call on array module ``xp`` may use, and where that figure comes from.
    ``need``: the call's estimate, if known (on NumPy a small one may reuse a recent reading:
    ``_host_available_for``)."""
    user = _limit if _limit is not None else _env_limit()
    user_src = "spikescan.set_memory_limit" if _limit is not None else "SPIKESCAN_MEMORY_LIMIT"
    if xp.__name__ == "numpy":
        if user is not None:
            return user, user_src
        host = _host_available() if need is None else _host_available_for(need)
        return host, "memory available to this process (MemAvailable)"
    device = _device_available()
    if user is not None and user < device:
        return user, user_src
    return device, "free GPU memory (including CuPy's pool)"


def _gib(nbytes):
    return f"{nbytes / (1 << 30):.3g} GiB"


def check(what, parts, xp, advice):
    """Raise ``MemoryError`` if ``sum(parts.values())`` bytes exceed what ``xp`` may use.

    Args:
        what: the call, e.g. ``"lif_forward(batch=256, n_out=512, max_spikes=16, delays)"``.
        parts: ``{name: bytes}`` of the estimate.
        advice: what to reduce, a sentence.
    """
    need = int(sum(parts.values()))
    limit, source = available(xp, need)
    if limit is None or need <= limit:
        return need
    detail = ", ".join(f"{name} {_gib(b)}" for name, b in parts.items() if b)
    raise MemoryError(f"{what} needs about {_gib(need)} ({detail}), more than the {_gib(limit)} it may use "
                      f"({source}); {advice}")


def lif_forward_estimate(batch, n_in, max_in, n_out, n_entries, max_spikes, has_delays, method, chunk_size,
                         input_itemsize, backend, permutation=False):
    """Peak bytes of ``lif_forward``'s large arrays, by part.

    ``n_entries``: the most input spikes of any sample (queue length ``L1 = n_entries + 1``).

    - ``sort``: building the shared queue sorts every sample's ``n_in * max_in`` slots (float64 copy, int64 order,
      sorted times, mask and index: about 33 bytes per slot);
    - ``queues``: per-neuron queues with delays (``batch * n_out * L1`` entries: arrival times, gathered delays, sort
      order and the two outputs, 40 bytes each; CuPy keeps 12 of them), the shared queue without (24 bytes per
      entry); with ``permutation`` (the permutation format of ``_queue.PermutedQueues``: the CUDA queue kernels'
      with ``spikescan.cuda._queue.PERMUTATION``, the compiled engine's for layers with delays) 2 bytes per
      per-neuron entry (a uint16 position) plus the shared queue and its sort (24 bytes per sample entry: float64
      times, int64 and int32 index);
    - ``spike records``: times and events (float64 and int64) and the output times, per recorded spike slot;
    - ``working``: the NumPy scan's chunk arrays (about 400 bytes per neuron and chunk lane, at most ``L1``
      lanes), or the loop's per-neuron state (about 300 bytes per neuron); for the compiled engine
      (``backend="numba"``) the shared decay table (24 bytes per queue entry), each shared-queue entry's source
      input (int64 and its temporaries, 17 bytes per entry), the transposed weights and a few per-neuron index arrays
      (64 bytes per neuron).
    """
    slots = batch * n_in * max_in
    L1 = n_entries + 1
    neurons = batch * n_out
    queue_entries = batch * (n_out if has_delays else 1) * L1
    parts = {"sort": 33 * slots,
             "queues": (2 * queue_entries + 24 * batch * L1 if permutation
                        else (40 if has_delays else 24) * queue_entries),
             "spike records": neurons * max_spikes * (16 + input_itemsize) + 8 * neurons}
    if backend == "numpy":
        lanes = min(chunk_size, L1) if method == "scan" else 1  # the scan's chunks are no longer than the queue
        parts["working"] = neurons * (400 * lanes if method == "scan" else 300)
    elif backend == "numba":
        # the table, the entries' sources, W.T; index and per-neuron arrays
        parts["working"] = (24 + 17) * batch * L1 + 8 * n_in * n_out + 64 * neurons
    return parts


def lif_backward_estimate(batch, n_in, max_in, n_out, input_times_grad, has_delays, backend, working):
    """Peak bytes of ``lif_backward``'s large arrays besides the residuals it reads, by part.

    ``working`` is the bytes of the points (or checkpoints) processed at once, which the caller sizes (NumPy: about
    400 bytes per point of a group of neurons; CuPy: 32 bytes per neuron per 32 points).
    """
    parts = {"gradients": 8 * n_in * n_out * (3 if has_delays else 2)
             + (16 * batch * n_in * max_in if input_times_grad else 0),
             "working": working}
    return parts


def describe(name, batch, n_out, max_spikes, has_delays):
    return (f"{name}(batch={batch}, n_out={n_out}, max_spikes={max_spikes}"
            + (", with delays)" if has_delays else ")"))


def most_entries(input_times, xp):
    """The most input spikes (finite entries) of any sample: the queue length less one."""
    batch = input_times.shape[0]
    if batch == 0 or input_times.size == 0:
        return 0
    return int(xp.isfinite(input_times).reshape(batch, -1).sum(axis=1).max())


def _forward_advice(parts, has_delays, method):
    biggest = max(parts, key=parts.get)
    tips = {"sort": "reduce the batch (the sort grows with batch * n_in * max_in)",
            "queues": ("reduce the batch or the layer's width, or drop the delays (with delays every neuron has its "
                       "own queue: batch * n_out * (input spikes + 1) entries)") if has_delays else
                      "reduce the batch (the queue grows with batch * input spikes)",
            "spike records": "reduce max_spikes or the batch (records grow with batch * n_out * max_spikes)",
            "working": ("reduce chunk_size or the batch, or use method='sequential' (less working memory)"
                        if method == "scan" else "reduce the batch")}
    return (tips.get(biggest, "reduce the batch") + "; everything grows linearly with the batch; or raise the "
            "limit with spikescan.set_memory_limit / SPIKESCAN_MEMORY_LIMIT if more memory is really there")


def check_forward(batch, n_in, max_in, n_out, n_entries, max_spikes, has_delays, method, chunk_size,
                  input_itemsize, xp, engine="numpy", extra=None, permutation=False):
    """``check`` with ``lif_forward_estimate``: raises ``MemoryError`` before the forward allocates. ``extra``:
    further named byte counts of the call (e.g. the CUDA forward's backward checkpoints, the compiled engine's
    scratch rows); ``permutation``: the queues take the permutation format."""
    backend = engine if xp.__name__ == "numpy" else "cupy"
    parts = lif_forward_estimate(batch, n_in, max_in, n_out, n_entries, max_spikes, has_delays, method, chunk_size,
                                 input_itemsize, backend, permutation)
    parts.update(extra or {})
    return check(describe("lif_forward", batch, n_out, max_spikes, has_delays), parts, xp,
                 _forward_advice(parts, has_delays, method))


def fit_backward_group(batch, n_in, max_in, n_out, input_times_grad, has_delays, n_neurons, group,
                       bytes_per_neuron, max_spikes, xp, tables=0):
    """The largest group of neurons, at most ``group``, whose backward working memory fits with the gradients.

    ``bytes_per_neuron``: working bytes of one neuron's history; ``tables``: bytes of tables the backward holds
    throughout (the compiled engine's decays or rebased factors). Raises ``MemoryError`` (via ``check``) when not
    even one neuron at a time fits.
    """
    group = max(1, min(int(group), int(n_neurons)))
    grads = lif_backward_estimate(batch, n_in, max_in, n_out, input_times_grad, has_delays, "", 0)["gradients"]
    fixed = grads + int(tables)
    limit, _ = available(xp, fixed + group * bytes_per_neuron)
    if limit is not None and fixed + group * bytes_per_neuron > limit:
        group = max(1, int((limit - fixed) // max(bytes_per_neuron, 1)))
    parts = lif_backward_estimate(batch, n_in, max_in, n_out, input_times_grad, has_delays, "",
                                  min(group, n_neurons) * bytes_per_neuron)
    if tables:
        parts["tables"] = int(tables)
    check(describe("lif_backward", batch, n_out, max_spikes, has_delays), parts, xp,
          "reduce the batch, or max_spikes and the input length (one neuron's history is every input spike up to "
          "its last recorded spike), or pass input_times_grad=False for a first layer; or raise the limit with "
          "spikescan.set_memory_limit / SPIKESCAN_MEMORY_LIMIT if more memory is really there")
    return group


# Points (sample x event x neuron) of one step of the "max" walk and the most events per step
# (_readout_numpy._POINTS_PER_STEP and _MAX_EVENT_BLOCK).
_WALK_POINTS = 1 << 21
_WALK_EVENTS = 256


def check_readout(what, batch, n_in, max_in, n_out, xp, has_delays=False, walk=True):
    """``li_forward`` / ``peak_voltage``: float64 copies of the inputs with the queue or kernel arrays built from them
    and their temporaries (about 16 arrays the size of the inputs), the weights (and delays) in float64, the outputs
    and their arg max times, and with ``walk`` (the ``"max"`` readout, ``peak_voltage``) one step of the walk: a
    block of samples x at most ``_WALK_EVENTS`` events x neurons (without delays: every neuron, at most about
    ``_WALK_POINTS`` points unless one event of every neuron is more; with delays: a chunk of neurons whose queues
    hold about ``_WALK_POINTS`` entries, at least one neuron's), about 24 float64 per point on the shared queue
    (measured up to 20) and 28 on per-neuron queues (measured up to 23), and with delays the chunk's queues, about
    64 bytes per entry while they are built beside the previous chunk's. An upper bound of the large arrays, from
    the shapes alone (queues as long as every input slot), checked before any is allocated."""
    spikes = batch * n_in * max(max_in, 1)
    L1 = n_in * max_in + 1  # the longest queue a sample can have
    if has_delays:  # a chunk of neurons holds about _WALK_POINTS entries (the true L1, at most this one)
        chunk = max(_WALK_POINTS, batch * L1)
        points = min(batch * n_out * min(L1, _WALK_EVENTS), chunk)
    else:
        points = batch * n_out * min(L1, _WALK_EVENTS, max(1, _WALK_POINTS // max(1, batch * n_out)))
    parts = {"inputs, queues and kernels (float64)": 8 * 16 * spikes,
             "weights (float64 copies)": 8 * 2 * n_in * n_out * (2 if has_delays else 1),
             "outputs and arg max times": 8 * 4 * batch * n_out,
             "one step of the walk": 8 * (28 if has_delays else 24) * points if walk else 0}
    if walk and has_delays:
        parts["queues of a chunk of neurons"] = 64 * min(batch * n_out * L1, chunk)
    return check(what, parts, xp, "use a smaller batch (or fewer neurons)")


def check_trace(what, batch, n_out, n_times, itemsize, xp, group_points=0):
    """``lif_trace`` / ``li_trace``: the voltage and current on the grid, in float64 and in the output dtype, and
    (``group_points``: the events and grid points of one group of neurons) the group's working arrays, about 40
    float64 values per point (merged events, their maps, the scan, the per-grid-time lookups; measured up to about
    36 per event point when the grid is short beside the queues)."""
    points = batch * n_out * n_times
    parts = {"voltage and current (float64)": 16 * points, "returned copies": 2 * itemsize * points,
             "working arrays of one group of neurons": 8 * 40 * group_points}
    return check(what, parts, xp, "evaluate fewer times (a coarser or shorter grid t) or fewer samples at once")
