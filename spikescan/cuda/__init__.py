"""GPU backend of spikescan: CUDA kernels compiled through CuPy (CuPy arrays in, CuPy arrays out).

The public functions (``spikescan.lif_forward`` etc.) dispatch here for CuPy inputs. Kernels live in
``kernels/*.cu`` and compile lazily on first use (``_kernels.get_module``); ``python -m spikescan.cuda --check``
compiles them all with NVRTC without a GPU.
"""

from __future__ import annotations

import functools

__all__ = ["is_available", "choose_method"]


@functools.lru_cache(maxsize=None)
def is_available():
    """True if CuPy imports and at least one CUDA device is present. Never raises."""
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


def _device_threads():
    """(multiprocessors, resident threads per multiprocessor) of the current device; H100 figures without one."""
    try:
        import cupy

        return _device_threads_of(cupy.cuda.Device().id)
    except Exception:
        return 132, 2048


@functools.lru_cache(maxsize=None)
def _device_threads_of(device_id):
    # Cached: ``Device.attributes`` queries every attribute, which costs about as much as a small forward.
    import cupy

    attrs = cupy.cuda.Device(device_id).attributes
    return int(attrs["MultiProcessorCount"]), int(attrs["MaxThreadsPerMultiProcessor"])


# One thread per neuron keeps the device busy once batch x neurons reaches this many threads per multiprocessor;
# below it the warp-per-neuron scan (32x the threads) wins. A heuristic: re-tune with benchmarks/bench_lif_cuda.py.
_SEQUENTIAL_THREADS_PER_SM = 256
_MIN_SCAN_QUEUE = 64
# choose_method's rule for permutation queues (see its docstring); False: the thread-count rule for every layer.
SCAN_ON_PERMUTED = True


def choose_method(batch, n_out, queue_len, permuted=False):
    """``method="auto"`` on the GPU: ``"sequential"`` or ``"scan"`` for a forward of this shape.

    The fused sequential kernel runs one thread per (batch, neuron) and walks ``queue_len`` events serially; the scan
    runs one warp per (batch, neuron) and walks ``queue_len / 32`` chunks (plus one chunk per output spike) at a
    somewhat higher cost per event. The sequential kernel wins once ``batch * n_out`` threads fill the device
    (``>= 256`` per multiprocessor, about 34k on an H100), and for short queues (``< 64`` events) where the
    latency saved by the scan is small; the scan wins otherwise (small batch, inference, few neurons, long queues).

    ``permuted``: the layer's queues are permutations of the shared queue (a layer with delays, the default
    ``_queue.PERMUTATION``). Every queue entry is then a gather through the permutation, and a warp's 32 lanes
    gathering one neuron's consecutive entries beat 32 threads each gathering its own neuron's: on an H200 the scan
    kernel ran the SHD network's forward at batch 256 (131072 neurons) in 83 ms against the sequential kernel's
    119 ms (`benchmarks/results/gpu_perf_nvidia_h200_defaults.json`, `m2_closed_scan_fwd` against `m2_closed`; with
    materialised queues the two kernels were within 5% of each other), so the scan is chosen at every batch.
    """
    n_sm, _ = _device_threads()
    if queue_len < _MIN_SCAN_QUEUE:
        return "sequential"
    if permuted and SCAN_ON_PERMUTED:
        return "scan"
    return "sequential" if batch * n_out >= _SEQUENTIAL_THREADS_PER_SM * n_sm else "scan"
