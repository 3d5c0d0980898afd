"""Launcher of ``kernels/queue.cu``: the per-neuron queues of a layer with delays, sorted on the GPU.

``build_queues(xp, launch, input_times, delays)`` has the result of ``spikescan._queue.build_queues`` (identical
values, simultaneous arrivals included), except that ``queue_index`` is int32: the kernels read 12 bytes per queue
entry instead of 16, and the queues a layer keeps for its backward take 25% less memory. It builds the shared queue
of every sample as that function does, then orders the delayed queues either by the generic argsort path
(``spikescan._queue.delayed_queues``, with ``USE_KERNEL = False``) or by a kernel (the default): one thread block per
(sample, neuron) row orders it in shared memory and writes the outputs directly, with no ``[batch, n_out, L1]``
temporaries (the generic path holds about five of them at 8 bytes per entry). Two kernels (``algorithm``, default
``ALGORITHM``), with identical results:

- ``"bitonic"`` (``spikescan_delay_queue``): a bitonic sort of (arrival, position) pairs, 12 bytes of shared memory
  per entry, so rows of at most ``max_shared // 12`` spikes: 19370 on an H100 (227 KiB per block), 13909 on an A100
  (163 KiB).
- ``"counting"`` (``spikescan_delay_queue_counting``): a counting sort into one bin per entry by a bin function
  monotone in the arrival, then an insertion sort of every bin; 6 bytes per entry (an int count per bin, a uint16
  position per entry; arrivals are recomputed, not stored) plus ``COUNTING_STATIC_SHARED`` bytes, so rows of at most
  38634 spikes on an H100 and 27712 on an A100 (and 65536 whatever the device: uint16 positions).

Rows longer than the chosen kernel allows take the generic argsort path.

Permutation format (the default, ``PERMUTATION``; PERF.md P2b): ``build_queues(..., permutation=True)`` has the kernel
write, per (sample, neuron) row, only a ``uint16`` permutation ``perm[b, i, r]``: the position in the sample's shared
queue of the row's r-th arrival (rows r >= n_real point at the shared queue's padding position ``n_real[b]``, time
``+inf``, index ``-1``). The LIF kernels read entry k as ``times[b, p] + D^T[i, index[b, p] // max_in]`` with
``p = perm[k]``: the same IEEE addition, so the arrivals are bit-identical to the materialised queues. 2 bytes per
entry instead of 12, plus the shared queue (12 bytes per sample entry) and ``D^T``. It returns a
``PermutedQueues``; it falls back to the materialised 3-tuple without delays, when ``L1 > PERMUTATION_MAX_L1``
(uint16 positions; no int32 variant) and when the row does not fit the chosen kernel. The recurrent layers
(``_recurrent``) always take the materialised format.
"""

from __future__ import annotations

import numpy as np

from .._queue import PermutedQueues, delayed_queues, expand, residual_queues, shared_queue  # noqa: F401 (re-exported)

BYTES_PER_ENTRY = 12  # bitonic: float64 arrival + int32 position in the shared queue
COUNTING_BYTES_PER_ENTRY = 6  # counting: int32 bin count + uint16 position in the shared queue
COUNTING_STATIC_SHARED = 640  # counting: per-warp min, max (float64) and sum (int32) for 32 warps
COUNTING_MAX_ROW = 65536  # counting: positions are uint16
# The kernels give the NumPy queues bit for bit, in the host emulation and on an H200 (tests/test_cuda_queue.py's gpu
# tests and the gate of benchmarks/gpu_perf.py, benchmarks/results/gpu_perf_nvidia_h200.json); there the counting
# sort built the SHD network's queues at batch 256 3.5x faster than the generic argsort path (forward 152 ms against
# 539 ms, `queue_counting` against `sequential`). False: the argsort path (CuPy's sort), for comparison.
USE_KERNEL = True
# Kernel used when USE_KERNEL is True: "counting" (6 bytes per entry instead of the bitonic kernel's 12, and faster on
# the H200 run); "bitonic" gives the same queues.
ALGORITHM = "counting"
KERNELS = {"bitonic": "spikescan_delay_queue", "counting": "spikescan_delay_queue_counting"}
# Permutation format for the feed-forward LIF layers with delays (see above): sorted by the ALGORITHM kernel whatever
# USE_KERNEL says (only the kernels write permutations). Bit-identical spikes in the host emulation
# (tests/test_cuda.py) and on the H200 run of benchmarks/gpu_perf.py, where it took the SHD network's peak memory at
# batch 256 from 12.8 GiB (materialised, counting sort) to 2.7 GiB; False keeps materialised queues.
PERMUTATION = True
PERMUTATION_MAX_L1 = 65536  # positions 0 .. L1 - 1 in uint16
MAX_THREADS = 512
INDEX_LIMIT = 2**31 - 1  # flat indices j * max_in + m < n_in * max_in must fit in int32


def permutation_applies(xp, n_entries, has_delays, max_shared=None, algorithm=None):
    """True if ``build_queues(..., permutation=True)`` writes the permutation format for queues of ``n_entries``
    entries at most (``L1 = n_entries + 1``): delays, ``L1 <= PERMUTATION_MAX_L1`` and a row that fits the kernel."""
    algorithm = _check_algorithm(ALGORITHM if algorithm is None else algorithm)
    if not has_delays or n_entries + 1 > PERMUTATION_MAX_L1:
        return False
    return kernel_fits(n_entries, _max_shared(xp) if max_shared is None else max_shared, algorithm)


def permutation_default(xp, n_entries, has_delays):
    """Whether a forward takes the permutation format by default: ``PERMUTATION`` is set and it applies
    (``permutation_applies``) to queues of at most ``n_entries`` entries."""
    return bool(PERMUTATION) and permutation_applies(xp, n_entries, has_delays)


def shared_bytes(n_max, algorithm="bitonic"):
    """Dynamic shared memory (bytes) of ``algorithm``'s kernel for rows of up to ``n_max`` entries."""
    return n_max * (BYTES_PER_ENTRY if _check_algorithm(algorithm) == "bitonic" else COUNTING_BYTES_PER_ENTRY)


def kernel_fits(n_max, max_shared, algorithm="bitonic"):
    """True if ``algorithm``'s kernel sorts rows of ``n_max`` entries within ``max_shared`` bytes of shared memory
    (dynamic and static)."""
    if _check_algorithm(algorithm) == "bitonic":
        return shared_bytes(n_max, algorithm) <= max_shared and n_max < 2**31
    return shared_bytes(n_max, algorithm) + COUNTING_STATIC_SHARED <= max_shared and n_max <= COUNTING_MAX_ROW


def block_size(n_max, max_threads=MAX_THREADS, algorithm="bitonic"):
    """Threads per row, 32 to ``max_threads`` (a power of two). Bitonic: one per comparator of a network step
    (``P / 2``, ``P >= n_max`` a power of two). Counting: one per entry (a power of two ``>= n_max``)."""
    per_thread = 2 if _check_algorithm(algorithm) == "bitonic" else 1
    threads = 32
    while threads < max_threads and per_thread * threads < n_max:
        threads *= 2
    return threads


def _check_algorithm(algorithm):
    if algorithm not in KERNELS:
        raise ValueError(f"algorithm must be one of {sorted(KERNELS)}, got {algorithm!r}")
    return algorithm


def build_queues(xp, launch, input_times, delays, max_shared=None, max_threads=MAX_THREADS, use_kernel=None,
                 algorithm=None, length=None, permutation=False, shared=None, source=None):
    """``spikescan._queue.build_queues(input_times, delays, xp)`` with the delayed queues sorted by the kernel.

    Args:
        xp, launch: CuPy and ``_kernels.launch``, or NumPy and ``_hostemu.HostKernels.launch``.
        input_times: ``[batch, n_in, max_in]`` float array, ``+inf`` padded.
        delays: ``None`` or ``[n_in, n_out]`` float64 array.
        max_shared: bytes of shared memory a block may use (default: the device's opt-in maximum, or the
            emulator's); rows longer than it allows take the generic argsort path.
        max_threads: threads per block at most (a power of two; tests lower it so that threads loop).
        use_kernel: sort the delayed queues with a kernel (default ``USE_KERNEL``) or the generic argsort path.
        algorithm: the kernel, ``"bitonic"`` or ``"counting"`` (default ``ALGORITHM``); same results.
        length: the most input spikes of any sample, if the caller has it (saves a host sync).
        permutation: with delays, write the permutation format (``PermutedQueues``) when it applies (see the
            module docstring; the kernel sorts the rows whatever ``use_kernel`` says).
        shared: the shared queue ``shared_queue(input_times, xp, length)`` when the caller has built it (it is
            then not built again).
        source: the shared queue's source table (``source_table``), from which the kernels read each entry's
            source instead of dividing its flat index (``spikescan.cuda._lif.ENTRY_TABLE``); same queues.

    Returns:
        ``(queue_times, queue_index, queue_end)`` as ``spikescan._queue.build_queues``, ``queue_index`` int32; or a
        ``PermutedQueues`` (``permutation`` and it applies).

    Raises:
        ValueError: if a sample has ``n_in * max_in >= 2**31`` entries, beyond an int32 flat index, or for an
            unknown ``algorithm``.
    """
    algorithm = _check_algorithm(ALGORITHM if algorithm is None else algorithm)
    batch, n_in, max_in = input_times.shape
    if n_in * max_in > INDEX_LIMIT:
        raise ValueError(f"input_times of shape {tuple(input_times.shape)} has n_in * max_in = {n_in * max_in} "
                         f"entries per sample; the CUDA backend indexes them with int32 (at most {INDEX_LIMIT})")
    times, index, n_real = shared_queue(input_times, xp, length) if shared is None else shared
    if delays is None:
        return times[:, None, :], index[:, None, :].astype(xp.int32), n_real[:, None]
    n_out = delays.shape[1]
    L1 = times.shape[1]
    n_max = L1 - 1
    if max_shared is None:
        max_shared = _max_shared(xp)
    permuted = bool(permutation) and permutation_applies(xp, n_max, True, max_shared, algorithm)
    if not permuted and (not (USE_KERNEL if use_kernel is None else use_kernel)
                         or not kernel_fits(n_max, max_shared, algorithm)):
        q_times, q_index, q_end = delayed_queues(times, index, n_real, max_in, delays, xp)
        return q_times, q_index.astype(xp.int32), q_end
    delays_t = xp.ascontiguousarray(xp.asarray(delays, dtype=xp.float64).T)
    if permuted:
        q_perm = xp.empty((batch, n_out, L1), dtype=xp.uint16)
        q_times = xp.empty(1, dtype=xp.float64)  # not written
        q_index = xp.empty(1, dtype=xp.int32)
    else:
        q_perm = xp.empty(1, dtype=xp.uint16)  # not written
        q_times = xp.empty((batch, n_out, L1), dtype=xp.float64)
        q_index = xp.empty((batch, n_out, L1), dtype=xp.int32)
    times = xp.ascontiguousarray(times)
    launch("queue", KERNELS[algorithm], np.float64, batch * n_out, block_size(n_max, max_threads, algorithm),
           [times, xp.ascontiguousarray(index), xp.ascontiguousarray(n_real), delays_t,
            np.int64(n_in), np.int64(n_out), np.int64(L1), np.int64(max_in), np.int64(n_max), q_times, q_index,
            np.int32(permuted), q_perm,
            xp.empty(1, dtype=xp.int32) if source is None else xp.ascontiguousarray(source, dtype=xp.int32),
            np.int32(source is not None)],
           shared_mem=shared_bytes(n_max, algorithm))
    q_end = xp.broadcast_to(n_real[:, None], (batch, n_out)).copy()
    if permuted:
        return PermutedQueues(q_perm, times, xp.ascontiguousarray(index, dtype=xp.int32), q_end, delays_t)
    return q_times, q_index, q_end


def source_table(xp, index, max_in):
    """The source ``j`` of every entry of shared-queue rows ``index`` (flat ``j * max_in + m``, ``-1`` for
    padding): int32, ``-1`` for padding (the entry table of ``spikescan.cuda._lif.ENTRY_TABLE``)."""
    index = xp.asarray(index)
    # (max_in = 0: no spike slots, every entry is padding; the division is by 1 so that it raises no warning)
    return xp.ascontiguousarray(xp.where(index >= 0, index // max(int(max_in), 1), -1).astype(xp.int32))


def _max_shared(xp):
    if xp.__name__ == "numpy":
        from ._hostemu import MAX_DYNAMIC_SHARED

        return MAX_DYNAMIC_SHARED
    from ._kernels import max_shared_mem

    return max_shared_mem()


def shared_queue_of(res):
    """The shared queue ``(times [batch, L1] float64, index [batch, L1] int32)`` of a forward's residuals: the queue
    itself without delays, else the one the CUDA forward keeps (``shared_times``, ``shared_index``)."""
    if res.delays is None:
        return res.queue_times[:, 0, :], res.queue_index[:, 0, :]
    if res.shared_times is None:
        raise ValueError("the deterministic backward needs the forward's shared input queue "
                         "(LIFResiduals.shared_times), which this result lacks: it was not made by the CUDA forward")
    return res.shared_times, res.shared_index


def input_table(xp, times, index, n_in, max_in):
    """Dense float64 input times ``[samples, n_in * max_in + 1]`` (column ``j * max_in + m``, ``+inf`` padded; the
    last column takes the queue's padding) from shared-queue rows, without a host sync."""
    rows, L1 = times.shape
    stride = n_in * max_in + 1
    table = xp.full((rows, stride), np.inf, dtype=xp.float64)
    col = xp.where(index >= 0, index, stride - 1).astype(xp.int64)
    table[xp.arange(rows)[:, None], col] = times  # the padding column only ever receives +inf
    return table
