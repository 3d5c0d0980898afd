"""Launcher of ``kernels/queue.cu``: the per-neuron queues of a layer with delays, sorted on the GPU.

``build_queues(xp, launch, input_times, delays)`` has the result of ``spikescan._queue.build_queues`` (identical
values, simultaneous arrivals included), except that ``queue_index`` is int32: the kernels read 12 bytes per queue
entry instead of 16, and the queues a layer keeps for its backward take 25% less memory. It builds the shared queue
of every sample as that function does, then ``spikescan_delay_queue`` sorts each (sample, neuron) row in shared
memory and writes the outputs directly, with no ``[batch, n_out, L1]`` temporaries (the generic path holds about
five of them at 8 bytes per entry).

Limit: a row of ``n`` input spikes needs ``12 n`` bytes of shared memory, so the kernel runs while the longest
sample has at most ``max_shared // 12`` spikes: 19370 on an H100 (227 KiB per block), 13909 on an A100
(163 KiB). Longer queues take the generic argsort path (``spikescan._queue.delayed_queues``).
"""

from __future__ import annotations

import numpy as np

from .._queue import delayed_queues, shared_queue

BYTES_PER_ENTRY = 12  # float64 arrival + int32 position in the shared queue
# The kernel is checked against the NumPy queues bit for bit by the host emulation, but has not yet run on a GPU
# (tests/test_cuda_queue.py and ``bench_lif_cuda.py --queues`` do so under the ``gpu`` marker). Until a GPU run has
# verified it, the LIF forward keeps the generic argsort path; set this to True to use the kernel.
USE_KERNEL = False
MAX_THREADS = 512
INDEX_LIMIT = 2**31 - 1  # flat indices j * max_in + m < n_in * max_in must fit in int32


def kernel_fits(n_max, max_shared):
    """True if rows of ``n_max`` entries fit in ``max_shared`` bytes of shared memory."""
    return n_max * BYTES_PER_ENTRY <= max_shared and n_max < 2**31


def block_size(n_max, max_threads=MAX_THREADS):
    """Threads per row: one per comparator of a network step (``P / 2``, ``P >= n_max`` a power of two), 32 to
    ``max_threads``."""
    threads = 32
    while threads < max_threads and 2 * threads < n_max:
        threads *= 2
    return threads


def build_queues(xp, launch, input_times, delays, max_shared=None, max_threads=MAX_THREADS, use_kernel=None):
    """``spikescan._queue.build_queues(input_times, delays, xp)`` with the delayed queues sorted by the kernel.

    Args:
        xp, launch: CuPy and ``_kernels.launch``, or NumPy and ``_hostemu.HostKernels.launch``.
        input_times: ``[batch, n_in, max_in]`` float array, ``+inf`` padded.
        delays: ``None`` or ``[n_in, n_out]`` float64 array.
        max_shared: bytes of shared memory a block may use (default: the device's opt-in maximum, or the
            emulator's); rows longer than it allows take the generic argsort path.
        max_threads: threads per block at most (a power of two; tests lower it so that threads loop).
        use_kernel: sort the delayed queues with the kernel (default ``USE_KERNEL``) or the generic argsort path.

    Returns:
        ``(queue_times, queue_index, queue_end)`` as ``spikescan._queue.build_queues``, ``queue_index`` int32.

    Raises:
        ValueError: if a sample has ``n_in * max_in >= 2**31`` entries, beyond an int32 flat index.
    """
    batch, n_in, max_in = input_times.shape
    if n_in * max_in > INDEX_LIMIT:
        raise ValueError(f"input_times of shape {tuple(input_times.shape)} has n_in * max_in = {n_in * max_in} "
                         f"entries per sample; the CUDA backend indexes them with int32 (at most {INDEX_LIMIT})")
    times, index, n_real = shared_queue(input_times, xp)
    if delays is None:
        return times[:, None, :], index[:, None, :].astype(xp.int32), n_real[:, None]
    n_out = delays.shape[1]
    L1 = times.shape[1]
    n_max = L1 - 1
    if max_shared is None:
        max_shared = _max_shared(xp)
    if not (USE_KERNEL if use_kernel is None else use_kernel) or not kernel_fits(n_max, max_shared):
        q_times, q_index, q_end = delayed_queues(times, index, n_real, max_in, delays, xp)
        return q_times, q_index.astype(xp.int32), q_end
    delays_t = xp.ascontiguousarray(xp.asarray(delays, dtype=xp.float64).T)
    q_times = xp.empty((batch, n_out, L1), dtype=xp.float64)
    q_index = xp.empty((batch, n_out, L1), dtype=xp.int32)
    launch("queue", "spikescan_delay_queue", np.float64, batch * n_out, block_size(n_max, max_threads),
           [xp.ascontiguousarray(times), xp.ascontiguousarray(index), xp.ascontiguousarray(n_real), delays_t,
            np.int64(n_in), np.int64(n_out), np.int64(L1), np.int64(max_in), np.int64(n_max), q_times, q_index],
           shared_mem=n_max * BYTES_PER_ENTRY)
    q_end = xp.broadcast_to(n_real[:, None], (batch, n_out)).copy()
    return q_times, q_index, q_end


def _max_shared(xp):
    if xp.__name__ == "numpy":
        from ._hostemu import MAX_DYNAMIC_SHARED

        return MAX_DYNAMIC_SHARED
    from ._kernels import max_shared_mem

    return max_shared_mem()
