"""The delayed queues built by ``kernels/queue.cu`` (``spikescan.cuda._queue``) against ``spikescan._queue``.

The result must be identical (same arrays, same dtypes) to the NumPy ``build_queues``, simultaneous arrivals
included, on the host emulation and (marker ``gpu``) on the device, with both kernels: every test that takes the
``device`` fixture runs with the bitonic sort (``spikescan_delay_queue``) and with the counting sort
(``spikescan_delay_queue_counting``). The LIF cases with delays of ``test_cuda.py`` run through the default kernel
when ``_queue.USE_KERNEL`` is set.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from spikescan._queue import build_queues as numpy_build_queues
from spikescan._queue import shared_queue as numpy_shared_queue
from spikescan.cuda import _queue, is_available


@pytest.fixture(params=sorted(_queue.KERNELS))
def algorithm(request):
    return request.param


@pytest.fixture(params=[pytest.param("emulated", id="emulated"), pytest.param("gpu", id="gpu", marks=pytest.mark.gpu)])
def device(request, algorithm):
    """``(xp, launch, to_host)`` of the backend; ``launch`` records the kernels it launched, and its ``algorithm``
    is the kernel ``assert_same_queues`` asks for (``launch.kernel`` its name)."""
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
    launch.algorithm = algorithm
    launch.kernel = _queue.KERNELS[algorithm]
    return xp, launch, to_host


def assert_same_queues(device, t, D, **kw):
    xp, launch, to_host = device
    ref = numpy_build_queues(t, D, np)
    kw.setdefault("use_kernel", True)
    kw.setdefault("algorithm", launch.algorithm)
    out = _queue.build_queues(xp, launch, xp.asarray(t), None if D is None else xp.asarray(D), **kw)
    for name, a, b in zip(("queue_times", "queue_index", "queue_end"), ref, out):
        b = to_host(b)
        dtype = np.int32 if name == "queue_index" else a.dtype  # the CUDA queues index with int32
        assert b.shape == a.shape and b.dtype == dtype, (name, a.shape, b.shape, a.dtype, b.dtype)
        np.testing.assert_array_equal(b, a, err_msg=name)
    if D is not None:
        assert_same_permutation(device, t, D, ref, **kw)
        if "source" not in kw:  # the entry table's sources (spikescan.cuda._lif.ENTRY_TABLE): the same queues
            kw["source"] = xp.asarray(_queue.source_table(np, numpy_shared_queue(t, np)[1], t.shape[2]))
            before = len(launch.launched)
            out = _queue.build_queues(xp, launch, xp.asarray(t), xp.asarray(D), **kw)
            for name, a, b in zip(("queue_times", "queue_index", "queue_end"), ref, out):
                np.testing.assert_array_equal(to_host(b), a, err_msg=f"{name} (source table)")
            del launch.launched[before:]  # off the record, as assert_same_permutation's
            assert_same_permutation(device, t, D, ref, **kw)


def assert_same_permutation(device, t, D, ref, **kw):
    """``build_queues(..., permutation=True)``: where the format applies, a ``uint16`` permutation of the shared
    queue whose expansion (``times[perm] + D``) is ``ref`` bit for bit, padding rows pointing at a padding position;
    the materialised ``ref`` otherwise. Its launches are taken off the record afterwards."""
    xp, launch, to_host = device
    kw = {name: value for name, value in kw.items() if name != "use_kernel"}
    before = len(launch.launched)
    out = _queue.build_queues(xp, launch, xp.asarray(t), xp.asarray(D), permutation=True, **kw)
    batch, n_out, L1 = ref[0].shape
    applies = _queue.permutation_applies(xp, L1 - 1, True, kw.get("max_shared"), kw["algorithm"])
    assert isinstance(out, _queue.PermutedQueues) == applies
    if applies:
        assert launch.launched[before:] == [_queue.KERNELS[kw["algorithm"] or _queue.ALGORITHM]]
        perm, times, index, end, delays_t = (to_host(x) for x in out)
        assert perm.dtype == np.uint16 and perm.shape == (batch, n_out, L1)
        assert times.dtype == np.float64 and times.shape == (batch, L1)
        assert index.dtype == np.int32 and index.shape == (batch, L1)
        np.testing.assert_array_equal(end, ref[2], err_msg="queue_end")
        n_real = ref[2][:, 0]
        for b in range(batch):  # padding rows point at a padding position of the shared queue
            np.testing.assert_array_equal(perm[b, :, n_real[b]:], n_real[b])
            assert times[b, n_real[b]] == np.inf and index[b, n_real[b]] == -1
        q_times, q_index = _queue.expand(np, perm, times, index, delays_t, t.shape[2])
        np.testing.assert_array_equal(q_times, ref[0], err_msg="expanded queue_times")
        np.testing.assert_array_equal(q_index, ref[1], err_msg="expanded queue_index")
    else:
        for name, a, b in zip(("queue_times", "queue_index", "queue_end"), ref, out):
            np.testing.assert_array_equal(to_host(b), a, err_msg=name)
    del launch.launched[before:]


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
    assert device[1].launched == [device[1].kernel] * 12


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


def test_no_spike_slots(device):
    """``max_in = 0`` (a spike tensor without slots): padding-only queues, without a division by ``max_in``."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert_same_queues(device, np.full((2, 4, 0), np.inf), np.ones((4, 3)))
        assert_same_queues(device, np.full((2, 4, 0), np.inf), np.ones((4, 3)), use_kernel=False)


def test_without_delays_the_shared_queue_is_returned(device):
    rng = np.random.default_rng(4)
    assert_same_queues(device, tied_spikes(rng, 2, 6, 4), None)
    assert device[1].launched == []


@pytest.mark.parametrize("delays", [False, True])
def test_a_known_length_gives_the_same_queues(device, delays):
    """The forward passes the most input spikes of any sample (``_memory.most_entries``, which it reads anyway) so
    that the queue build needs no host read of its own; the queues are the same, empty samples included."""
    from spikescan import _memory

    rng = np.random.default_rng(5)
    t = tied_spikes(rng, 3, 6, 4)
    t[1] = np.inf
    D = rng.uniform(0.0, 3.0, (6, 3)) if delays else None
    xp, launch, to_host = device
    length = _memory.most_entries(xp.asarray(t), xp)
    assert length == np.isfinite(t).reshape(3, -1).sum(axis=1).max()
    ref = numpy_build_queues(t, D, np)
    out = _queue.build_queues(xp, launch, xp.asarray(t), None if D is None else xp.asarray(D), use_kernel=True,
                              length=length)
    for a, b in zip(ref, out):
        np.testing.assert_array_equal(to_host(b), a)


def test_rows_too_long_for_shared_memory_take_the_argsort_path(device):
    rng = np.random.default_rng(5)
    t = tied_spikes(rng, 2, 10, 6)
    n_max = int(np.isfinite(t).sum(axis=(1, 2)).max())
    algorithm = device[1].algorithm
    need = _queue.shared_bytes(n_max, algorithm) + (_queue.COUNTING_STATIC_SHARED if algorithm == "counting" else 0)
    assert_same_queues(device, t, rng.uniform(0.0, 2.0, (10, 3)), max_shared=need - 1)
    assert device[1].launched == []
    assert_same_queues(device, t, rng.uniform(0.0, 2.0, (10, 3)), max_shared=need)
    assert device[1].launched == [device[1].kernel]


def test_long_rows_beyond_48_kib_of_shared_memory(device):
    """5000 spikes per sample: 60 kB of dynamic shared memory (the opt-in path on the GPU), 512 threads."""
    rng = np.random.default_rng(6)
    t = tied_spikes(rng, 2, 250, 20, grid=0.01, t_max=100.0, p_silent=0.0)
    assert_same_queues(device, t, np.round(rng.uniform(0.0, 5.0, (250, 2)), 2))


def queues_of_rows(rows, D):
    """``input_times [len(rows), n_in, max_in]`` whose sample ``b`` has the spikes ``rows[b]`` (any order) spread
    over ``n_in = D.shape[0]`` sources, ``+inf`` padded."""
    n_in = D.shape[0]
    max_in = max(1, max(-(-len(r) // n_in) for r in rows))
    t = np.full((len(rows), n_in * max_in), np.inf)
    for b, r in enumerate(rows):
        t[b, : len(r)] = r
    return np.sort(t.reshape(len(rows), n_in, max_in), axis=-1)


def test_adversarial_arrivals(device):
    """Cases aimed at the counting sort's bins (bin = a monotone function of the arrival over [min, max] of the row;
    a larger arrival must never get a smaller bin): equal arrivals, arrivals one ulp apart on both sides of bin
    boundaries, huge and tiny spreads, overflow of t + D to +inf and -inf, a far outlier that puts everything else in
    one bin,
    arrivals descending along the shared queue; rows of 0, 1 and 2 entries and rows longer than the block."""
    rng = np.random.default_rng(8)
    n_in = 7
    D = np.zeros((n_in, 3))
    D[:, 1] = np.round(rng.uniform(0.0, 2.0, n_in), 1)
    D[:, 2] = np.arange(n_in)[::-1] * 0.25  # later sources arrive earlier
    # A row of 90 entries over [0, 10] (neuron 0, no delay) has 90 bins with edges at j / 9: entries on every edge
    # and one ulp either side of it.
    edges = np.arange(1, 30) / 9.0
    on_edges = np.concatenate([[0.0, 10.0, 5.0], np.nextafter(edges, -np.inf), edges, np.nextafter(edges, np.inf)])
    rows = [
        [],  # empty sample: padding only
        [3.0],
        [2.0, 2.0],
        [1.0, 1.0 + 2.0 ** -52],
        np.full(70, 4.5),  # all equal (one bin; a neuron with equal delays keeps the shared order)
        on_edges,
        1.0 + np.arange(60) * 2.0 ** -52,  # a run of consecutive doubles
        np.array([0.0, 1e-300, 5e-324, 1e300, 1.5e308, 1.7e308, 1.0, 2.0, 1e308]),  # huge spread; overflow below
        np.array([1e-310, 1e-310 + 5e-324, 1e-310 + 1e-323, 0.0, 5e-324, 1e-309]),  # subnormal spread
        np.concatenate([rng.uniform(0.0, 1.0, 80), [1e9]]),  # far outlier: the rest share bin 0
        np.concatenate([np.round(rng.uniform(0.0, 5.0, 50)), np.full(40, 5.0)]),  # many ties at the maximum
        np.concatenate([np.full(40, 0.0), np.round(rng.uniform(0.0, 5.0, 50), 1)]),  # many ties at the minimum
        np.concatenate([-np.round(rng.uniform(0.0, 1e300, 30), -290), [-1.7e308, -1.5e308]]),  # negative, huge
    ]
    t = queues_of_rows(rows, D)
    D_huge = D.copy()
    D_huge[:, 1] = 1e308  # t + D overflows to +inf for t >= ~8e307: real entries at +inf, before the padding
    D_minus = D.copy()
    D_minus[:, 1] = -1e308  # negative delays (the layers refuse them, the queues do not): t + D = -inf
    D_tiny = D.copy()
    D_tiny[:, 1] = np.arange(n_in) * 5e-324  # subnormal delays
    assert max(len(r) for r in rows) == len(on_edges) == 90
    with np.errstate(over="ignore"):  # D_huge, D_minus
        for delays in (D, D_huge, D_minus, D_tiny):
            assert_same_queues(device, t, delays, max_threads=32)  # rows up to 90 entries: threads loop, 3 chunks
    assert device[1].launched == [device[1].kernel] * 4


def test_tied_rows_longer_than_the_block(device):
    """A few distinct arrival values, each shared by many entries spread over several chunks of the scatter."""
    rng = np.random.default_rng(9)
    t = np.round(rng.uniform(0.0, 3.0, (2, 40, 8)))
    t[1, :, 4:] = np.inf
    D = np.round(rng.uniform(0.0, 2.0, (40, 3)))
    D[:, 2] = 1.0  # equal delays: every entry of a time value ties
    assert_same_queues(device, t, D, max_threads=64)


def test_longest_row_on_an_h100(device):
    """38634 spikes, the longest row of the counting kernel in 227 KiB (positions beyond 32767 and 2^15 bins); the
    bitonic kernel's 12 bytes per entry do not fit, so it takes the argsort path."""
    rng = np.random.default_rng(10)
    n_in, max_in = 438, 89  # 38982 slots
    t = np.sort(np.round(rng.uniform(0.0, 100.0, (1, n_in, max_in)), 3), axis=-1)
    t.reshape(-1)[rng.permutation(n_in * max_in)[: n_in * max_in - 38634]] = np.inf
    t = np.sort(t, axis=-1)
    assert int(np.isfinite(t).sum()) == 38634
    D = np.round(rng.uniform(0.0, 5.0, (n_in, 1)), 2)
    assert_same_queues(device, t, D, max_shared=232448)
    assert device[1].launched == ([device[1].kernel] if device[1].algorithm == "counting" else [])


def test_default_kernel_and_unknown_algorithm(device, monkeypatch):
    xp, launch, _ = device
    t = tied_spikes(np.random.default_rng(11), 2, 4, 3)
    # The defaults since the H200 run of gpu_perf.py (counting-sort kernel, permutation format).
    assert _queue.ALGORITHM == "counting" and _queue.USE_KERNEL is True and _queue.PERMUTATION is True
    monkeypatch.setattr(_queue, "USE_KERNEL", False)
    assert_same_queues(device, t, np.ones((4, 2)), use_kernel=None, algorithm=None)
    assert launch.launched == []  # USE_KERNEL False: the argsort path
    monkeypatch.setattr(_queue, "USE_KERNEL", True)
    monkeypatch.setattr(_queue, "ALGORITHM", launch.algorithm)
    assert_same_queues(device, t, np.ones((4, 2)), use_kernel=None, algorithm=None)
    assert launch.launched == [launch.kernel]
    with pytest.raises(ValueError, match=r"algorithm must be one of \['bitonic', 'counting'\], got 'radix'"):
        _queue.build_queues(xp, launch, xp.asarray(t), xp.asarray(np.ones((4, 2))), algorithm="radix")


def test_block_size_and_limits():
    assert [_queue.block_size(n) for n in (0, 1, 64, 65, 1000, 5000)] == [32, 32, 32, 64, 512, 512]
    assert _queue.block_size(5000, max_threads=64) == 64
    assert [_queue.block_size(n, algorithm="counting") for n in (0, 32, 33, 64, 65, 300, 5000)] == \
        [32, 32, 64, 64, 128, 512, 512]
    # H100 and A100 opt-in maxima per block (bytes): longest rows the kernels sort.
    assert _queue.kernel_fits(19370, 232448) and not _queue.kernel_fits(19371, 232448)
    assert _queue.kernel_fits(13909, 166912) and not _queue.kernel_fits(13910, 166912)
    assert _queue.kernel_fits(38634, 232448, "counting") and not _queue.kernel_fits(38635, 232448, "counting")
    assert _queue.kernel_fits(27712, 166912, "counting") and not _queue.kernel_fits(27713, 166912, "counting")
    # uint16 positions: 65536 entries at most, whatever the shared memory.
    assert _queue.kernel_fits(65536, 2**20, "counting") and not _queue.kernel_fits(65537, 2**20, "counting")
    assert _queue.shared_bytes(1000, "counting") == 6000 and _queue.shared_bytes(1000) == 12000
    with pytest.raises(ValueError, match="algorithm must be one of"):
        _queue.kernel_fits(10, 2**20, "radix")


def test_flat_indices_beyond_int32_are_refused(device, monkeypatch):
    # A real case needs n_in * max_in >= 2**31 (17 GB per sample); lower the limit instead. Nothing is launched.
    xp, launch, _ = device
    t = tied_spikes(np.random.default_rng(7), 1, 4, 3)
    monkeypatch.setattr(_queue, "INDEX_LIMIT", 11)
    with pytest.raises(ValueError, match=r"input_times of shape \(1, 4, 3\) has n_in \* max_in = 12 entries"):
        _queue.build_queues(xp, launch, xp.asarray(t), xp.asarray(np.ones((4, 2))), use_kernel=True,
                            algorithm=launch.algorithm)
    assert launch.launched == []
    monkeypatch.setattr(_queue, "INDEX_LIMIT", 12)
    assert_same_queues(device, t, np.ones((4, 2)))


def test_permutation_falls_back_beyond_uint16_positions(device, monkeypatch):
    """Queues longer than ``PERMUTATION_MAX_L1`` (uint16 positions) are materialised; so are layers without delays."""
    xp, launch, to_host = device
    rng = np.random.default_rng(12)
    t = tied_spikes(rng, 2, 6, 5)
    D = rng.uniform(0.0, 2.0, (6, 3))
    L1 = int(np.isfinite(t).sum(axis=(1, 2)).max()) + 1
    kw = dict(algorithm=launch.algorithm, permutation=True)
    assert isinstance(_queue.build_queues(xp, launch, xp.asarray(t), xp.asarray(D), **kw), _queue.PermutedQueues)
    assert not isinstance(_queue.build_queues(xp, launch, xp.asarray(t), None, **kw), _queue.PermutedQueues)
    monkeypatch.setattr(_queue, "PERMUTATION_MAX_L1", L1 - 1)
    out = _queue.build_queues(xp, launch, xp.asarray(t), xp.asarray(D), **kw)
    for a, b in zip(numpy_build_queues(t, D, np), out):
        np.testing.assert_array_equal(to_host(b), a)


class _DriverKernel:
    """A compiled kernel as the CUDA driver treats its shared memory: ``max_dynamic_shared_size_bytes`` starts at
    48 KiB less the kernel's static shared memory (``shared_size_bytes``), may be raised (cudaFuncSetAttribute) as
    long as static + dynamic fit the device's opt-in maximum, and a launch asking for more dynamic shared memory than
    it allows fails (CUDA_ERROR_INVALID_VALUE)."""

    def __init__(self, static, optin=232448):
        self.shared_size_bytes = static
        self._optin = optin
        self._max_dynamic = 48 * 1024 - static
        self.launches = []

    @property
    def max_dynamic_shared_size_bytes(self):
        return self._max_dynamic

    @max_dynamic_shared_size_bytes.setter
    def max_dynamic_shared_size_bytes(self, value):
        if value + self.shared_size_bytes > self._optin:
            raise RuntimeError("cudaFuncSetAttribute: CUDA_ERROR_INVALID_VALUE")
        self._max_dynamic = value

    def __call__(self, grid, block, args, shared_mem=0):
        if shared_mem > self._max_dynamic:
            raise RuntimeError(f"launch with {shared_mem} bytes of dynamic shared memory, the kernel allows "
                               f"{self._max_dynamic}: CUDA_ERROR_INVALID_VALUE")
        self.launches.append(shared_mem)


@pytest.mark.parametrize("n_max", [8085, 8086, 8192, 8193, 38634])
def test_counting_launch_opts_in_when_static_and_dynamic_shared_memory_pass_48_kib(monkeypatch, n_max):
    """The counting sort has COUNTING_STATIC_SHARED bytes of static shared memory: rows of 8086 to 8192 entries
    need 48512 to 49152 bytes of dynamic shared memory, not above 48 KiB, yet above the 48 KiB - 640 that the kernel
    allows until the launcher opts in. (The host emulation does not model static shared memory.)"""
    from spikescan.cuda import _kernels

    kernel = _DriverKernel(_queue.COUNTING_STATIC_SHARED)
    monkeypatch.setattr(_kernels, "get_kernel", lambda module, name, dtype: kernel)
    shared = _queue.shared_bytes(n_max, "counting")
    assert _queue.kernel_fits(n_max, 232448, "counting")
    _kernels.launch("queue", _queue.KERNELS["counting"], np.float64, 1, 512, [], shared_mem=shared)
    assert kernel.launches == [shared]


def test_counting_rows_just_below_48_kib_of_dynamic_shared_memory(device):
    """8192 spikes in one row: 49152 bytes of dynamic shared memory for the counting sort, which with its 640 bytes
    of static shared memory passes 48 KiB (the opt-in path on the GPU); 96 KiB for the bitonic sort."""
    rng = np.random.default_rng(13)
    t = np.sort(np.round(rng.uniform(0.0, 100.0, (1, 128, 64)), 3), axis=-1)
    assert int(np.isfinite(t).sum()) == 8192
    assert_same_queues(device, t, np.round(rng.uniform(0.0, 5.0, (128, 1)), 2))
    assert device[1].launched == [device[1].kernel]


def test_the_queue_kernels_read_the_source_table(device):
    """With ``source``, the kernels take each entry's source from the table (here a wrong one: every real entry
    from source 0) instead of its flat index; the table is read, not only passed."""
    xp, launch, to_host = device
    rng = np.random.default_rng(8)
    t = tied_spikes(rng, 2, 6, 3)
    D = rng.uniform(0.0, 4.0, (6, 5))
    index = numpy_shared_queue(t, np)[1]
    wrong = np.where(index >= 0, 0, -1).astype(np.int32)
    out = _queue.build_queues(xp, launch, xp.asarray(t), xp.asarray(D), use_kernel=True, algorithm=launch.algorithm,
                              source=xp.asarray(wrong))
    ref = numpy_build_queues(t, D, np)
    assert not np.array_equal(to_host(out[0]), ref[0])
    D0 = np.repeat(D[:1], 6, axis=0)  # what the wrong table describes: every source with source 0's delays
    np.testing.assert_array_equal(to_host(out[0]), numpy_build_queues(t, D0, np)[0])
