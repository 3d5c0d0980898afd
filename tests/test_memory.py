"""Memory estimates of the LIF layer (spikescan._memory): upper bounds on what a call allocates, a MemoryError
before allocating when a call cannot fit, and smaller backward groups (same gradients) under a lowered limit."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

import spikescan as ss
from spikescan import _memory
from spikescan.cuda import _lif
from spikescan.cuda import _queue as _cuda_queue

from tolerances import TOL


def _layer(seed, batch, n_in, max_in, n_out, delays):
    rng = np.random.default_rng(seed)
    t = rng.uniform(0, 50, (batch, n_in, max_in))
    t[rng.random(t.shape) < 0.3] = np.inf
    t = np.sort(t, axis=-1)
    W = rng.normal(0.15, 0.3, (n_in, n_out))
    D = rng.uniform(0, 5, (n_in, n_out)) if delays else None
    return t, W, D


@pytest.fixture
def no_limit():
    """Whatever a test sets, the next test starts from the default limit."""
    previous = ss.set_memory_limit(None)
    yield
    ss.set_memory_limit(previous)


def _peak(fn):
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        out = fn()
        return out, tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


SHAPES = [  # batch, n_in, max_in, n_out, max_spikes, delays, chunk_size
    (8, 100, 4, 64, 8, False, 128),
    (8, 60, 4, 48, 8, True, 32),
    (32, 20, 1, 200, 4, False, 64),
    (2, 200, 6, 16, 16, True, 32),
]


@pytest.mark.parametrize("method", ["sequential", "scan"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "b{}_in{}x{}_out{}_S{}_d{}_c{}".format(*s))
def test_estimates_bound_what_numpy_allocates(shape, method, no_limit, cpu_engine):
    batch, n_in, max_in, n_out, max_spikes, delays, chunk = shape
    t, W, D = _layer(0, batch, n_in, max_in, n_out, delays)
    # Warm up first: the compiled engine's first call compiles (or loads) its kernels, which is not the call's memory.
    warm = ss.lif_forward(t, W, tau_mem=10.0, tau_syn=5.0, max_spikes=max_spikes, delays=D, method=method,
                          chunk_size=chunk)
    ss.lif_backward(warm, np.ones_like(warm.times), method="sequential")
    out, peak = _peak(lambda: ss.lif_forward(t, W, tau_mem=10.0, tau_syn=5.0, max_spikes=max_spikes, delays=D,
                                             method=method, chunk_size=chunk))
    permutation = delays and cpu_engine == "numba" and ss._lif_numpy.COMPILED_PERMUTATION
    assert (out.residuals.queue_perm is not None) == permutation
    n_entries = _memory.most_entries(t, np)
    parts = _memory.lif_forward_estimate(batch, n_in, max_in, n_out, n_entries, max_spikes, delays, method, chunk, 8,
                                         cpu_engine, permutation)
    if permutation:
        parts.update(ss._lif_numpy.compiled_scratch_bytes(True, batch * n_out, n_entries + 1))
    rebased = cpu_engine == "numba" and method == "sequential" and ss._lif_numpy.rebased_applies(
        D, np.full(n_out, 10.0), np.full(n_out, 5.0))
    assert rebased == (delays and cpu_engine == "numba" and method == "sequential")
    parts.update(ss._lif_numpy.rebased_bytes(rebased, t, n_out))
    assert peak <= sum(parts.values()), (peak, parts)
    assert peak >= 0.3 * sum(parts.values()), (peak, parts)  # an estimate, not a blanket
    g = np.ones_like(out.times)
    res = out.residuals
    n_points = res.queue_length + res.spike_times.shape[2]
    working = batch * n_out * n_points * ss._lif_numpy._BACKWARD_BYTES_PER_POINT
    need = sum(_memory.lif_backward_estimate(batch, n_in, max_in, n_out, True, delays, "numpy", working).values())
    for bwd in ("sequential", "scan"):
        _, peak = _peak(lambda: ss.lif_backward(out, g, method=bwd))
        assert peak <= need, (bwd, peak, need)


@pytest.mark.parametrize("delays", [False, True])
def test_forward_raises_before_allocating(delays, no_limit):
    t, W, D = _layer(1, 32, 200, 4, 128, delays)
    args = dict(tau_mem=10.0, tau_syn=5.0, max_spikes=16, delays=D, method="sequential", engine="numpy")
    need = sum(_memory.lif_forward_estimate(32, 200, 4, 128, _memory.most_entries(t, np), 16, delays, "sequential",
                                            128, 8, "numpy").values())
    ss.set_memory_limit(need // 2)
    t0, W0 = t.copy(), W.copy()

    def call():
        with pytest.raises(MemoryError) as info:
            ss.lif_forward(t, W, **args)
        return info

    info, peak = _peak(call)
    msg = str(info.value)
    assert "lif_forward(batch=32, n_out=128, max_spikes=16" in msg
    assert "spikescan.set_memory_limit" in msg and "GiB" in msg
    assert ("drop the delays" in msg) if delays else ("batch" in msg)
    # Nothing of the estimate's size was allocated before the error: only the input checks' temporaries (sortedness,
    # finiteness: up to the input's size each; need / 20 alone was within 2 KB of them, flaky).
    assert peak < min(need / 5, 2 * t.nbytes + W.nbytes), (peak, need, t.nbytes)
    np.testing.assert_array_equal(t, t0)
    np.testing.assert_array_equal(W, W0)
    # At the estimate the call runs.
    ss.set_memory_limit(need)
    ss.lif_forward(t, W, **args)


def test_scan_advice_names_the_method(no_limit):
    t, W, _ = _layer(2, 64, 20, 1, 200, False)
    ss.set_memory_limit(50 << 20)
    with pytest.raises(MemoryError, match="method='sequential'"):
        ss.lif_forward(t, W, tau_mem=10.0, tau_syn=5.0, max_spikes=4, method="scan", chunk_size=128, engine="numpy")
    ss.lif_forward(t, W, tau_mem=10.0, tau_syn=5.0, max_spikes=4, method="sequential", engine="numpy")


@pytest.mark.parametrize("method", ["sequential", "scan"])
def test_backward_shrinks_its_groups_under_a_lower_limit(method, no_limit):
    t, W, D = _layer(3, 8, 60, 3, 24, True)
    out = ss.lif_forward(t, W, tau_mem=10.0, tau_syn=5.0, max_spikes=8, delays=D, engine="numpy")
    g = np.random.default_rng(0).normal(size=out.times.shape)
    ref = ss.lif_backward(out, g, method=method, engine="numpy")
    res = out.residuals
    per_neuron = (res.queue_times.shape[2] + 8) * ss._lif_numpy._BACKWARD_BYTES_PER_POINT
    grads = _memory.lif_backward_estimate(8, 60, 3, 24, True, True, "numpy", 0)["gradients"]
    ss.set_memory_limit(grads + 5 * per_neuron)  # five neurons at a time instead of all 192
    _, peak = _peak(lambda: ss.lif_backward(out, g, method=method, engine="numpy"))
    low = ss.lif_backward(out, g, method=method, engine="numpy")
    assert peak <= grads + 5 * per_neuron
    for name in ("weights", "input_times", "delays", "threshold"):
        np.testing.assert_allclose(getattr(low, name), getattr(ref, name), rtol=1e-12, atol=1e-12, err_msg=name)
    ss.set_memory_limit(grads + per_neuron // 2)  # not even one neuron's history fits
    with pytest.raises(MemoryError, match=r"lif_backward\(batch=8, n_out=24, max_spikes=8, with delays\)"):
        ss.lif_backward(out, g, method=method, engine="numpy")


@pytest.mark.parametrize("method", ["sequential", "closed"])
def test_compiled_backward_counts_its_tables(method, no_limit):
    """The compiled backward's tables (the reverse walk's shared decays, the closed form's rebased factors) are part
    of its memory check, named in the error when they do not fit beside the gradients."""
    pytest.importorskip("numba")
    t, W, _ = _layer(5, 4, 60, 3, 24, False)
    out = ss.lif_forward(t, W, tau_mem=10.0, tau_syn=5.0, max_spikes=8, engine="numba")
    g = np.ones_like(out.times)
    ref = ss.lif_backward(out, g, method=method, engine="numba")
    grads = _memory.lif_backward_estimate(4, 60, 3, 24, True, False, "numpy", 0)["gradients"]
    one_sample = 8 * 24 * out.residuals.queue_length  # the arrival gradients of one sample (the working memory)
    tables = 24 * 4 * out.residuals.queue_length  # at least 24 bytes per queue entry
    ss.set_memory_limit(grads + one_sample + tables // 2)  # one sample at a time would fit without the tables
    with pytest.raises(MemoryError, match=r"\(gradients [^)]*, tables [0-9.e-]+ GiB\)"):
        ss.lif_backward(out, g, method=method, engine="numba")
    # and the closed form's 16 bytes per synapse and 17 per queue entry (its entries' sources)
    ss.set_memory_limit(grads + one_sample + tables + 16 * 60 * 24 + 17 * 4 * out.residuals.queue_length)
    low = ss.lif_backward(out, g, method=method, engine="numba")
    assert low.weights.tobytes() == ref.weights.tobytes()


@pytest.mark.parametrize("delays", [False, True])
def test_rebased_factors_are_counted_where_they_are_built(delays):
    """The backward's memory check counts the rebased factors' tables by what ``_closed_rebased_args`` builds: their
    bytes where it builds them, 0 where it does not (per-neuron time constants; it counted them there too)."""
    pytest.importorskip("numba")
    from spikescan import _lif_numpy

    t, W, D = _layer(6, 3, 20, 3, 8, delays)
    for tau_mem, built in ((10.0, True), (np.linspace(8.0, 12.0, 8), False)):
        out = ss.lif_forward(t, W, delays=D, tau_mem=tau_mem, tau_syn=5.0, max_spikes=4, engine="numba")
        res = out.residuals
        rebased, E, F, *_ = _lif_numpy._closed_rebased_args(res)
        assert rebased is built
        counted = _lif_numpy.closed_rebased_bytes(res)
        if built:
            assert E.nbytes + F.nbytes <= counted <= 2 * (E.nbytes + F.nbytes) + 16 * W.size
        else:
            assert counted == 0


def test_environment_variable(monkeypatch, no_limit):
    t, W, _ = _layer(4, 4, 10, 2, 8, False)
    monkeypatch.setenv("SPIKESCAN_MEMORY_LIMIT", "1K")
    with pytest.raises(MemoryError, match="SPIKESCAN_MEMORY_LIMIT"):
        ss.lif_forward(t, W, tau_mem=10.0, tau_syn=5.0, max_spikes=4)
    monkeypatch.setenv("SPIKESCAN_MEMORY_LIMIT", "1.5G")
    assert _memory.available(np) == (3 << 29, "SPIKESCAN_MEMORY_LIMIT")
    ss.lif_forward(t, W, tau_mem=10.0, tau_syn=5.0, max_spikes=4)
    ss.set_memory_limit(2048)  # the call's setting wins over the environment
    assert _memory.available(np) == (2048, "spikescan.set_memory_limit")
    ss.set_memory_limit(None)
    for bad in ("lots", "0", "0.5", "0.0001K"):  # a fraction of a byte would refuse every call
        monkeypatch.setenv("SPIKESCAN_MEMORY_LIMIT", bad)
        with pytest.raises(ValueError, match=f"SPIKESCAN_MEMORY_LIMIT.*'{bad}'"):
            ss.lif_forward(t, W, tau_mem=10.0, tau_syn=5.0, max_spikes=4)
    # More digits than a float holds (it overflowed to inf: a bare OverflowError) is a limit as set_memory_limit's
    # huge ints are: exact.
    for huge, nbytes in (("9" * 400, 10**400 - 1), ("1" * 310 + "T", int("1" * 310) << 40)):
        monkeypatch.setenv("SPIKESCAN_MEMORY_LIMIT", huge)
        assert _memory.available(np) == (nbytes, "SPIKESCAN_MEMORY_LIMIT")
        ss.lif_forward(t, W, tau_mem=10.0, tau_syn=5.0, max_spikes=4)


@pytest.mark.parametrize("bad", [0, -5, 1.5, True, "1G"])
def test_set_memory_limit_rejects(bad, no_limit):
    with pytest.raises(ValueError, match="nbytes"):
        ss.set_memory_limit(bad)
    assert ss.set_memory_limit(None) is None  # unchanged


def test_default_is_the_available_host_memory(no_limit, monkeypatch):
    monkeypatch.delenv("SPIKESCAN_MEMORY_LIMIT", raising=False)
    limit, source = _memory.available(np)
    assert limit is not None and limit > (64 << 20) and "MemAvailable" in source


@pytest.mark.parametrize("permuted", [True, False], ids=["permutation_queues", "materialised_queues"])
def test_cuda_launchers_check_before_allocating(host_kernels, no_limit, monkeypatch, permuted):
    """The CUDA launchers (run here through the host emulation) raise before building queues and shrink the
    backward's checkpoint groups under a lower limit, with the gradients of the unlimited run; for both queue
    formats (the permutation default, and materialised queues)."""
    monkeypatch.setattr(_cuda_queue, "PERMUTATION", permuted)
    t, W, D = _layer(5, 8, 40, 2, 16, True)
    tm, ts = np.full(16, 10.0), np.full(16, 5.0)
    out = _lif.forward(np, host_kernels.launch, t, W, D, tm, ts, 1.0, 8, "sequential", 32, "newton")
    g = np.random.default_rng(1).normal(size=out.times.shape)
    ref = _lif.backward(np, host_kernels.launch, out, g, "sequential")
    n_entries = _memory.most_entries(t, np)
    permutation = _cuda_queue.permutation_default(np, n_entries, True)  # the launcher's format
    assert permutation == permuted
    need = sum(_memory.lif_forward_estimate(8, 40, 2, 16, n_entries, 8, True, "sequential", 32, 8, "cupy",
                                            permutation=permutation).values())
    ss.set_memory_limit(need - 1)
    with pytest.raises(MemoryError, match=r"lif_forward\(batch=8, n_out=16, max_spikes=8, with delays\)"):
        _lif.forward(np, host_kernels.launch, t, W, D, tm, ts, 1.0, 8, "sequential", 32, "newton")
    grads = _memory.lif_backward_estimate(8, 40, 2, 16, True, True, "cupy", 0)["gradients"]
    ss.set_memory_limit(grads + 3 * 4 * 8 * 4)  # three neurons' checkpoints (a few 32-point chunks) at a time
    low = _lif.backward(np, host_kernels.launch, out, g, "sequential")
    for name in ("weights", "input_times", "delays", "threshold"):
        np.testing.assert_allclose(getattr(low, name), getattr(ref, name), **TOL["float64"]["grads"], err_msg=name)
    ss.set_memory_limit(grads)
    with pytest.raises(MemoryError, match="lif_backward"):
        _lif.backward(np, host_kernels.launch, out, g, "sequential")


def test_the_compiled_recurrent_log_is_checked_before_it_is_allocated():
    """The compiled recurrent engine learns the length of its spike log (every spike of a sample) only by running;
    a log beyond the limit raises MemoryError naming it before the log is allocated, and fits just above."""
    pytest.importorskip("numba")
    t = np.array([[[0.0]], [[1.0]]])
    W = np.full((1, 4), 200.0)  # one strong input: hundreds of spikes from one entry
    R = np.full((4, 4), 0.1)
    np.fill_diagonal(R, 0.0)
    kw = dict(tau_mem=10.0, tau_syn=5.0, max_spikes=4, recurrent_weights=R, engine="numba")
    M = ss.lif_forward(t, W, **kw).residuals.recurrent_log.times.shape[1]
    assert M > 100
    log_bytes = 24 * 2 * M  # float64 time, int64 neuron, float64 current per spike, two samples
    previous = ss.set_memory_limit(log_bytes - 1)
    try:
        with pytest.raises(MemoryError, match=rf"spike log .*fired up to {M} spikes on one sample"):
            ss.lif_forward(t, W, **kw)
        ss.set_memory_limit(log_bytes)
        assert ss.lif_forward(t, W, **kw).residuals.recurrent_log.times.shape[1] == M
    finally:
        ss.set_memory_limit(previous)


def test_host_reading_is_reused_only_for_small_needs_and_briefly(no_limit, monkeypatch):
    """The MemAvailable reading is reused within _HOST_TTL seconds for a need of at most a quarter of it; a larger
    need, or a later call, reads afresh (so a call near the limit always sees the current figure)."""
    readings = iter([8_000, 4_000, 2_000, 1_000, 500])
    calls = []

    def host():
        calls.append(1)
        return next(readings)

    clock = [100.0]
    monkeypatch.setattr(_memory, "_host_available", host)
    monkeypatch.setattr(_memory.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(_memory, "_host_reading", [float("-inf"), None])
    assert _memory.available(np, 100) == (8_000, "memory available to this process (MemAvailable)")
    assert _memory.available(np, 2_000)[0] == 8_000 and len(calls) == 1  # a quarter: reused
    assert _memory.available(np, 2_001)[0] == 4_000 and len(calls) == 2  # more: read again
    clock[0] += _memory._HOST_TTL
    assert _memory.available(np, 10)[0] == 2_000 and len(calls) == 3  # too old: read again
    assert _memory.available(np)[0] == 1_000 and len(calls) == 4  # no estimate: always read
    with pytest.raises(MemoryError):  # the check reads afresh when the need is near the reading
        _memory.check("a call", {"work": 600}, np, "reduce it")


@pytest.mark.parametrize("call", ["li_integral", "li_max", "peak", "lif_trace", "li_trace", "lif_trace_short_grid",
                                  "li_trace_short_grid", "li_max_dense", "peak_dense", "peak_delays"])
def test_readouts_and_traces_check_before_allocating(call, no_limit, monkeypatch):
    """li_forward, peak_voltage, lif_trace and li_trace estimate their large arrays from the shapes: the estimate
    bounds what they allocate, and under a limit below it they raise MemoryError naming the call and the sizes
    before allocating anything of its size (they failed in NumPy's allocator, naming no argument)."""
    t, W, _ = _layer(3, 16, 60, 4, 40, False)
    grid = np.linspace(0.0, 60.0, 400)
    kw = dict(tau_mem=10.0, tau_syn=5.0)
    dense = np.sort(np.random.default_rng(4).uniform(0, 50, t.shape), axis=-1)  # every slot a spike: longer queues
    D = np.random.default_rng(5).uniform(0, 5, W.shape)
    run, name = {
        "li_integral": (lambda: ss.li_forward(t, W, readout="integral", t_max=60.0, **kw), "li_forward(batch=16"),
        "li_max": (lambda: ss.li_forward(t, W, readout="max", t_max=60.0, **kw), "li_forward(batch=16"),
        "peak": (lambda: ss.peak_voltage(t, W, **kw), "peak_voltage(batch=16"),
        "lif_trace": (lambda: ss.lif_trace(t, W, grid, **kw), "lif_trace(batch=16, n_out=40, len(t)=400)"),
        "li_trace": (lambda: ss.li_trace(t, W, grid, **kw), "li_trace(batch=16, n_out=40, len(t)=400)"),
        # A grid short beside the queues: the working arrays per event point dominate (they were undercounted).
        "lif_trace_short_grid": (lambda: ss.lif_trace(t, W, grid[:8], **kw), "lif_trace(batch=16, n_out=40, len(t)=8)"),
        "li_trace_short_grid": (lambda: ss.li_trace(t, W, grid[:8], **kw), "li_trace(batch=16, n_out=40, len(t)=8)"),
        # The walk's working arrays per point, and with delays the per-neuron queues (both were undercounted).
        "li_max_dense": (lambda: ss.li_forward(dense, W, readout="max", t_max=60.0, engine="numpy", **kw),
                         "li_forward(batch=16"),
        "peak_dense": (lambda: ss.peak_voltage(dense, W, engine="numpy", **kw), "peak_voltage(batch=16"),
        "peak_delays": (lambda: ss.peak_voltage(dense, W, delays=D, engine="numpy", **kw), "peak_voltage(batch=16"),
    }[call]
    needs = []
    check = _memory.check

    def recording(what, parts, xp, advice):
        if what.startswith(name.split("(")[0]):
            needs.append(int(sum(parts.values())))
        return check(what, parts, xp, advice)

    run()  # first-call costs (lazy imports, caches) aside
    monkeypatch.setattr(_memory, "check", recording)
    _, peak = _peak(run)
    assert needs and peak <= max(needs), (peak, needs)  # the estimates bound the allocations
    ss.set_memory_limit(min(needs) // 2)

    def refused():
        with pytest.raises(MemoryError) as info:
            run()
        return info

    info, peak = _peak(refused)
    assert name in str(info.value) and "GiB" in str(info.value)
    assert peak < 3 * t.nbytes + W.nbytes, (peak, t.nbytes)  # the input checks' temporaries only
