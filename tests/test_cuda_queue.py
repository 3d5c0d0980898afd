"""The delayed queues built by ``kernels/queue.cu`` (``spikescan.cuda._queue``) against ``spikescan._queue``.

The result must be identical (same arrays, same dtypes) to the NumPy ``build_queues``, simultaneous arrivals
included, on the host emulation and (marker ``gpu``) on the device. The LIF cases with delays of ``test_cuda.py``
run through the same kernel, since ``_lif.forward`` builds its queues with it.
"""

from __future__ import annotations

import numpy as np
import pytest

from spikescan._queue import build_queues as numpy_build_queues
from spikescan.cuda import _queue, is_available


@pytest.fixture(params=[pytest.param("emulated", id="emulated"), pytest.param("gpu", id="gpu", marks=pytest.mark.gpu)])
def device(request):
    """``(xp, launch, to_host)`` of the backend; ``launch`` records the kernels it launched."""
    if request.param == "gpu":
        if not is_available():
            pytest.skip("no CUDA device")
        import cupy

        from spikescan.cuda import _kernels

        xp, base, to_host = cupy, _kernels.launch, cupy.asnumpy
    else:
        xp, base, to_host = np, request.getfixturevalue("host_kernels").launch, np.asarray
    launched = []

    def launch(*args, **kw):
        launched.append(args[1])
        return base(*args, **kw)

    launch.launched = launched
    return xp, launch, to_host


def assert_same_queues(device, t, D, **kw):
    xp, launch, to_host = device
    ref = numpy_build_queues(t, D, np)
    kw.setdefault("use_kernel", True)
    out = _queue.build_queues(xp, launch, xp.asarray(t), None if D is None else xp.asarray(D), **kw)
    for name, a, b in zip(("queue_times", "queue_index", "queue_end"), ref, out):
        b = to_host(b)
        dtype = np.int32 if name == "queue_index" else a.dtype  # the CUDA queues index with int32
        assert b.shape == a.shape and b.dtype == dtype, (name, a.shape, b.shape, a.dtype, b.dtype)
        np.testing.assert_array_equal(b, a, err_msg=name)


def tied_spikes(rng, batch, n_in, max_in, grid=0.5, t_max=10.0, p_silent=0.3):
    """Spike times on a coarse grid (many simultaneous spikes and arrivals), ``+inf`` padded."""
    t = np.round(rng.uniform(0.0, t_max, (batch, n_in, max_in)) / grid) * grid
    t[rng.random(t.shape) < p_silent] = np.inf
    return np.sort(t, axis=-1)


@pytest.mark.parametrize("max_threads", [32, 512])
def test_random_cases_with_ties_padding_and_empty_samples(device, max_threads):
    rng = np.random.default_rng(1)
    for case in range(12):
        batch, n_in, max_in, n_out = (int(x) for x in rng.integers(1, [5, 12, 8, 6]))
        t = tied_spikes(rng, batch, n_in, max_in)
        if case % 3 == 0:
            t[rng.integers(batch)] = np.inf  # an empty sample
        D = np.round(rng.uniform(0.0, 3.0, (n_in, n_out)) * 2) / 2  # arrivals coincide too
        if case % 4 == 1:
            D[:, 0] = 0.0  # a neuron without delays: its queue is the shared one
        assert_same_queues(device, t, D, max_threads=max_threads)
    assert device[1].launched == ["spikescan_delay_queue"] * 12


def test_lengths_around_powers_of_two(device):
    """Row lengths 1, 2, 2^k - 1, 2^k, 2^k + 1 and one far from a power of two; threads loop over comparators."""
    rng = np.random.default_rng(2)
    for length in (1, 2, 3, 31, 32, 33, 63, 64, 65, 100, 257):
        n_in = 5
        max_in = -(-length // n_in)
        t = np.full((2, n_in * max_in), np.inf)
        t[0, :length] = np.round(rng.uniform(0.0, 20.0, length))
        t[1, : max(length // 2, 1)] = 3.0  # all simultaneous
        t = np.sort(t.reshape(2, n_in, max_in), axis=-1)
        D = np.round(rng.uniform(0.0, 4.0, (n_in, 3)))
        assert_same_queues(device, t, D, max_threads=32)


def test_large_delays_and_float32_times(device):
    rng = np.random.default_rng(3)
    t = tied_spikes(rng, 3, 9, 6).astype(np.float32)
    D = rng.uniform(0.0, 1e6, (9, 4))
    D[::2] = 1e6  # equal large delays: ties after rounding of t + D
    assert_same_queues(device, t, D)


def test_all_samples_empty_and_single_spikes(device):
    t = np.full((3, 4, 2), np.inf)
    assert_same_queues(device, t, np.ones((4, 2)))  # L1 = 1: padding only
    t[:, 1, 0] = [0.0, 5.0, 2.5]  # one spike per sample: rows of length 1
    assert_same_queues(device, t, np.arange(8.0).reshape(4, 2))


def test_without_delays_the_shared_queue_is_returned(device):
    rng = np.random.default_rng(4)
    assert_same_queues(device, tied_spikes(rng, 2, 6, 4), None)
    assert device[1].launched == []


def test_rows_too_long_for_shared_memory_take_the_argsort_path(device):
    rng = np.random.default_rng(5)
    t = tied_spikes(rng, 2, 10, 6)
    n_max = int(np.isfinite(t).sum(axis=(1, 2)).max())
    assert_same_queues(device, t, rng.uniform(0.0, 2.0, (10, 3)), max_shared=_queue.BYTES_PER_ENTRY * n_max - 1)
    assert device[1].launched == []
    assert_same_queues(device, t, rng.uniform(0.0, 2.0, (10, 3)), max_shared=_queue.BYTES_PER_ENTRY * n_max)
    assert device[1].launched == ["spikescan_delay_queue"]


def test_long_rows_beyond_48_kib_of_shared_memory(device):
    """5000 spikes per sample: 60 kB of dynamic shared memory (the opt-in path on the GPU), 512 threads."""
    rng = np.random.default_rng(6)
    t = tied_spikes(rng, 2, 250, 20, grid=0.01, t_max=100.0, p_silent=0.0)
    assert_same_queues(device, t, np.round(rng.uniform(0.0, 5.0, (250, 2)), 2))


def test_block_size_and_limits():
    assert [_queue.block_size(n) for n in (0, 1, 64, 65, 1000, 5000)] == [32, 32, 32, 64, 512, 512]
    assert _queue.block_size(5000, max_threads=64) == 64
    # H100 and A100 opt-in maxima per block (bytes): longest rows the kernel sorts.
    assert _queue.kernel_fits(19370, 232448) and not _queue.kernel_fits(19371, 232448)
    assert _queue.kernel_fits(13909, 166912) and not _queue.kernel_fits(13910, 166912)


def test_flat_indices_beyond_int32_are_refused(device, monkeypatch):
    # A real case needs n_in * max_in >= 2**31 (17 GB per sample); lower the limit instead. Nothing is launched.
    xp, launch, _ = device
    t = tied_spikes(np.random.default_rng(7), 1, 4, 3)
    monkeypatch.setattr(_queue, "INDEX_LIMIT", 11)
    with pytest.raises(ValueError, match=r"input_times of shape \(1, 4, 3\) has n_in \* max_in = 12 entries"):
        _queue.build_queues(xp, launch, xp.asarray(t), xp.asarray(np.ones((4, 2))), use_kernel=True)
    assert launch.launched == []
    monkeypatch.setattr(_queue, "INDEX_LIMIT", 12)
    assert_same_queues(device, t, np.ones((4, 2)))
