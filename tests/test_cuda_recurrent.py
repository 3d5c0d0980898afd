"""The recurrent layer's CUDA kernels (``spikescan/cuda/kernels/recurrent.cu`` through ``spikescan.cuda._recurrent``)
against the NumPy recurrent layer (``lif_forward(..., recurrent_weights=, engine="numpy")``, the global event loop).

Every case runs on the host emulation (``emulated``: the same ``.cu`` source compiled for the CPU, CUDA threads as
coroutines, see ``spikescan.cuda._hostemu``) and, under the ``gpu`` marker, on a device with CuPy arrays (skipped
without one). Spike counts, spike events and the spike log's neurons must be identical; times, log currents and every
gradient agree within ``tolerances.TOL``. Cases are tiny: the emulation is slow.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest

import spikescan as ss
from spikescan import _validate
from spikescan.cuda import _lif, _queue, _recurrent, is_available

from _cases import random_spikes, weights
from tolerances import TOL

BACKENDS = [pytest.param("emulated", id="emulated"), pytest.param("gpu", id="gpu", marks=pytest.mark.gpu)]


class Backend:
    """The recurrent launchers on the GPU (CuPy) or on the host emulation (NumPy); ``launched`` lists the kernels."""

    def __init__(self, name, request):
        self.name = name
        if name == "gpu":
            if not is_available():
                pytest.skip("no CUDA device")
            import cupy

            self.xp, base = cupy, _recurrent._cupy_launch
        else:
            self.xp, base = np, request.getfixturevalue("host_kernels").launch
        self.launched = []

        def launch(*args, **kw):
            self.launched.append(args[1])
            return base(*args, **kw)

        self.launch = launch

    def dev(self, x):
        return None if x is None else self.xp.asarray(x)

    def host(self, x):
        if x is None or isinstance(x, np.ndarray):
            return x
        return self.xp.asnumpy(x)

    def forward(self, t, W, *, tau_mem, tau_syn, threshold=1.0, max_spikes, delays=None, recurrent_weights,
                recurrent_delays=None, solver="newton", max_total_spikes=300, **launcher):
        xp, n_out = self.xp, W.shape[1]
        tm = _validate.time_constant("tau_mem", self.dev(tau_mem) if np.ndim(tau_mem) else tau_mem, n_out, xp)
        ts = _validate.time_constant("tau_syn", self.dev(tau_syn) if np.ndim(tau_syn) else tau_syn, n_out, xp)
        th = _validate.time_constant("threshold", self.dev(threshold) if np.ndim(threshold) else threshold, n_out,
                                     xp)
        return _recurrent.forward(xp, self.launch, self.dev(t), self.dev(W), self.dev(delays), tm, ts, th, max_spikes,
                                  solver, max_total_spikes, np.ndim(threshold) == 0, self.dev(recurrent_weights),
                                  self.dev(recurrent_delays), **launcher)

    def backward(self, result, G, input_times_grad=True, block_size=None, time_constant_grads=False):
        return _recurrent.backward(self.xp, self.launch, result, self.dev(G), input_times_grad, time_constant_grads,
                                   block_size=block_size)


@pytest.fixture(params=BACKENDS)
def backend(request):
    return Backend(request.param, request)


def case(seed, batch=3, n_in=6, n_out=5, max_in=5, r_mean=0.0, r_std=0.4, delays=False, rec_delays=False,
         w_scale=0.6, t_max=30.0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    t = random_spikes(rng, batch, n_in, max_in, t_max=t_max, dtype=dtype)
    W = weights(rng, n_in, n_out, mean=1.0, std=0.8) * w_scale
    R = rng.normal(r_mean, r_std, (n_out, n_out))
    np.fill_diagonal(R, np.clip(np.diag(R), -1.0, 0.2))  # self-connections, short of runaway self-excitation
    D = rng.uniform(0.0, 3.0, (n_in, n_out)) if delays else None
    Dr = rng.uniform(0.0, 3.0, (n_out, n_out)) if rec_delays else None
    return t, W, R, D, Dr


def check(backend, t, W, R, D=None, Dr=None, *, min_spikes=5, block_sizes=(None,), input_times_grad=True,
          dtype="float64", **kw):
    """Forward (every block size) and backward against the NumPy recurrent layer; returns the reference."""
    kw.setdefault("max_total_spikes", 300)
    args = dict(delays=D, recurrent_weights=R, recurrent_delays=Dr, **kw)
    ref = ss.lif_forward(t, W, method="sequential", engine="numpy", **args)
    assert ref.counts.sum() >= min_spikes
    G = np.random.default_rng(int(ref.counts.sum())).normal(size=ref.times.shape).astype(ref.times.dtype)
    ref_g = ss.lif_backward(ref, G, input_times_grad=input_times_grad, engine="numpy")
    tol = TOL[dtype]
    for block in block_sizes:
        out = backend.forward(t, W, block_size=block, **args)
        assert isinstance(out.times, backend.xp.ndarray)
        label = f"block_size={block}"
        counts, times = backend.host(out.counts), backend.host(out.times)
        np.testing.assert_array_equal(counts, ref.counts, err_msg=label)
        np.testing.assert_array_equal(backend.host(out.residuals.spike_event), ref.residuals.spike_event,
                                      err_msg=label)
        assert times.dtype == ref.times.dtype
        fin = np.isfinite(ref.times)
        np.testing.assert_array_equal(np.isfinite(times), fin, err_msg=label)
        np.testing.assert_allclose(times[fin], ref.times[fin], err_msg=label, **tol["times"])
        rlog, olog = ref.residuals.recurrent_log, out.residuals.recurrent_log
        np.testing.assert_array_equal(backend.host(olog.count), rlog.count, err_msg=label)
        np.testing.assert_array_equal(backend.host(olog.neurons), rlog.neurons, err_msg=label)
        np.testing.assert_allclose(backend.host(olog.times), rlog.times, err_msg=label, **TOL["float64"]["times"])
        np.testing.assert_allclose(backend.host(olog.currents), rlog.currents, err_msg=label,
                                   **TOL["float64"]["times"])
        grads = backend.backward(out, G, input_times_grad, block_size=block)
        for name in ("weights", "input_times", "delays", "threshold", "recurrent_weights", "recurrent_delays",
                     "tau_mem", "tau_syn"):
            a, b = getattr(ref_g, name), backend.host(getattr(grads, name))
            if a is None:
                assert b is None, name
                continue
            assert b.shape == a.shape and b.dtype == a.dtype, (name, b.shape, a.shape, b.dtype, a.dtype)
            np.testing.assert_allclose(b, a, err_msg=f"grad_{name} {label}", **tol["grads"])
    return ref


@pytest.mark.parametrize("rec_delays", [False, True], ids=["zero_rec_delays", "rec_delays"])
@pytest.mark.parametrize("r_mean", [-0.4, 0.1], ids=["inhibitory", "excitatory"])
def test_against_numpy_with_block_sizes_below_and_above_n_out(backend, rec_delays, r_mean):
    t, W, R, _, Dr = case(1, r_mean=r_mean, rec_delays=rec_delays)
    # 2 and 3 threads own 2-3 neurons each (and 3 is no power of two for the reductions); 8 leaves threads idle.
    check(backend, t, W, R, Dr=Dr, tau_mem=10.0, tau_syn=4.0, max_spikes=4, block_sizes=(None, 2, 3, 8))


@pytest.mark.parametrize("tau_mem,tau_syn", [(5.0, 5.0), (3.0, 7.0), (10.0, 5.0)],
                         ids=["equal", "slow_synapse", "ratio_2"])
def test_time_constant_regimes_input_delays_and_solvers(backend, tau_mem, tau_syn):
    t, W, R, D, Dr = case(2, r_mean=-0.3, delays=True, rec_delays=tau_mem != tau_syn)
    solver = "analytic" if tau_mem == 2 * tau_syn else "newton"
    check(backend, t, W, R, D, Dr, tau_mem=tau_mem, tau_syn=tau_syn, max_spikes=4, solver=solver, block_sizes=(2,))


def test_per_neuron_parameters_and_bisection(backend):
    t, W, R, D, Dr = case(3, r_mean=0.05, delays=True, rec_delays=True)
    rng = np.random.default_rng(3)
    check(backend, t, W, R, D, Dr, tau_mem=rng.uniform(6.0, 12.0, 5), tau_syn=rng.uniform(2.0, 5.0, 5),
          threshold=rng.uniform(0.7, 1.2, 5), max_spikes=3, solver="bisection", block_sizes=(4,))


def test_capped_recording_propagates_every_spike(backend):
    t, W, R, D, Dr = case(4, r_mean=0.15, rec_delays=True)
    ref = check(backend, t, W, R, D, Dr, tau_mem=10.0, tau_syn=4.0, max_spikes=1, block_sizes=(3,),
                input_times_grad=False)
    assert ref.capped_spikes > 0


def test_self_connections_with_zero_delay(backend):
    # One neuron exciting itself (its zero-delay arrival after its own reset), and a pair with self-inhibition.
    t = np.array([[[1.0]], [[4.0]]])
    check(backend, t, np.array([[6.0]]), np.array([[0.5]]), tau_mem=10.0, tau_syn=5.0, max_spikes=10,
          block_sizes=(1,), min_spikes=4)
    t2, W2, _, _, _ = case(5, n_out=2, batch=2)
    check(backend, t2, W2 * 2.0, np.array([[-0.8, 0.6], [0.7, -0.5]]), tau_mem=10.0, tau_syn=4.0, max_spikes=6,
          block_sizes=(1, 2))


def test_simultaneous_spikes_commit_in_neuron_order(backend):
    # Identical neurons cross at the same time: the log lists them by index, each schedules its arrivals in turn.
    t = np.array([[[1.0, 2.0, 6.0]]])
    W = np.full((1, 4), 3.0)
    R = np.array([[0.0, 0.3, -0.2, 0.1], [0.2, 0.0, 0.1, 0.3], [0.1, -0.1, 0.0, 0.2], [0.3, 0.2, 0.1, 0.0]])
    # (block sizes 1 and 2: one thread owns several of the simultaneous spikers)
    ref = check(backend, t, W, R, tau_mem=10.0, tau_syn=5.0, max_spikes=5, block_sizes=(None, 3, 2, 1))
    log = ref.residuals.recurrent_log
    assert np.any(np.diff(log.times[0, : log.count[0]]) == 0.0)
    # Two identical neurons silencing each other with no delay: both spike (arrivals at t come after every spike at
    # t), as in tests/test_recurrent_reference.py.
    ref = check(backend, np.array([[[1.0, 2.0, np.inf]]]), np.array([[3.0, 3.0]]),
                np.array([[0.0, -30.0], [-30.0, 0.0]]), tau_mem=6.0, tau_syn=4.0, max_spikes=5, min_spikes=2,
                block_sizes=(1, 2))
    assert ref.counts.tolist() == [[1, 1]]


def test_crossing_at_the_time_of_an_input_entry_comes_first(backend):
    # The threshold is V at t = 3 exactly (V still rising there), where the next input arrives: the spike is at 3.0,
    # before that input (spike_event 1), and its zero-delay self-arrival comes after the reset.
    from spikescan.neurons import lif

    t = np.array([[[1.0, 3.0, 5.0]]])
    W = np.array([[3.0]])
    threshold = float(lif.voltage(2.0, 0.0, 3.0, 6.0, 4.0))
    ref = check(backend, t, W, np.array([[0.4]]), tau_mem=6.0, tau_syn=4.0, threshold=threshold, max_spikes=4,
                min_spikes=1, block_sizes=(1,))
    assert ref.times[0, 0, 0] == 3.0 and ref.residuals.spike_event[0, 0, 0] == 1


def arrival_at_an_input_entry():
    """``(t, W, R, Dr, kw)``: neuron 0's first spike reaches neuron 1 exactly when an input does (the recurrent delay
    chosen from the NumPy reference's spike time so that the sum is exact)."""
    t = np.array([[[1.0, 2.0, 9.0], [1.5, np.inf, np.inf]]])
    W = np.array([[3.0, 0.4], [0.5, 0.3]])
    R = np.array([[0.0, 0.7], [0.2, 0.0]])
    kw = dict(tau_mem=6.0, tau_syn=4.0, max_spikes=4)
    first = ss.lif_forward(t, W, recurrent_weights=R, engine="numpy", method="sequential", **kw).times[0, 0, 0]
    Dr = np.full((2, 2), 0.5)
    Dr[0, 1] = 9.0 - first
    assert first + Dr[0, 1] == 9.0
    return t, W, R, Dr, kw


def test_recurrent_arrival_at_the_time_of_an_input_entry(backend):
    # Both are applied in one step (input first).
    t, W, R, Dr, kw = arrival_at_an_input_entry()
    check(backend, t, W, R, Dr=Dr, min_spikes=2, block_sizes=(1,), **kw)


def test_float32_inputs(backend):
    t, W, R, _, Dr = case(6, r_mean=-0.2, rec_delays=True, dtype=np.float32)
    check(backend, t, W.astype(np.float32), R, Dr=Dr, tau_mem=10.0, tau_syn=4.0, max_spikes=3, dtype="float32",
          block_sizes=(2,))


def test_full_pending_buffers_and_short_logs_run_again_instead_of_dropping(backend):
    t, W, R, D, Dr = case(7, r_mean=0.1, rec_delays=True)
    kw = dict(tau_mem=10.0, tau_syn=4.0, max_spikes=2, delays=D, recurrent_weights=R, recurrent_delays=Dr,
              max_total_spikes=300)
    ref = ss.lif_forward(t, W, method="sequential", engine="numpy", **kw)
    assert ref.residuals.recurrent_log.count.max() > 8
    full = backend.forward(t, W, block_size=2, **kw)
    assert backend.launched == ["spikescan_recurrent_forward"]
    backend.launched.clear()
    small = backend.forward(t, W, block_size=2, pending_capacity=1, log_capacity=1, **kw)
    # pending capacity 1 -> 2 -> 4 -> ..., then the log at its exact size: several runs, the same result.
    assert backend.launched.count("spikescan_recurrent_forward") >= 3
    for name in ("times", "counts"):
        np.testing.assert_array_equal(backend.host(getattr(small, name)), backend.host(getattr(full, name)))
    for name in ("times", "neurons", "currents", "count"):
        a = backend.host(getattr(small.residuals.recurrent_log, name))
        np.testing.assert_array_equal(a, backend.host(getattr(full.residuals.recurrent_log, name)), err_msg=name)
    np.testing.assert_array_equal(backend.host(small.residuals.recurrent_log.neurons),
                                  ref.residuals.recurrent_log.neurons)


def test_results_do_not_alias_the_callers_arrays(backend):
    """The recurrent launcher keeps copies of its float64 arrays: updating them in place after the forward leaves
    the backward unchanged."""
    rng = np.random.default_rng(14)
    t, W = random_spikes(rng, 2, 6, 3), weights(rng, 6, 4)
    arrays = dict(delays=rng.uniform(0, 2, (6, 4)), recurrent_weights=rng.normal(0.0, 0.3, (4, 4)),
                  recurrent_delays=rng.uniform(0.5, 2, (4, 4)))
    dev = {k: backend.dev(v) for k, v in dict(t=t, W=W, **arrays).items()}
    r = backend.forward(dev["t"], dev["W"], tau_mem=10.0, tau_syn=5.0, max_spikes=5, delays=dev["delays"],
                        recurrent_weights=dev["recurrent_weights"], recurrent_delays=dev["recurrent_delays"])
    assert backend.host(r.counts).sum() > 0
    G = backend.xp.ones(r.times.shape)
    before = backend.backward(r, G)
    for x in dev.values():
        x += 0.5
    after = backend.backward(r, G)
    for name in ("weights", "input_times", "delays", "recurrent_weights", "recurrent_delays"):
        np.testing.assert_array_equal(backend.host(getattr(after, name)), backend.host(getattr(before, name)),
                                      err_msg=name)


def test_runaway_self_excitation_and_errors(backend):
    t = np.array([[[1.0], [2.0]]])
    W = np.array([[5.0, 5.0], [5.0, 5.0]])
    R = np.full((2, 2), 3.0)
    with pytest.raises(ss.RunawayFiringError, match="runaway self-excitation") as err:
        backend.forward(t, W, tau_mem=10.0, tau_syn=5.0, max_spikes=4, recurrent_weights=R, max_total_spikes=50,
                        block_size=2)
    assert err.value.sample == 0 and err.value.limit == 50
    # Neuron 1 of sample 1 fires again ~1e-14 after t = 1e6, below the float64 spacing of t there: the NumPy error.
    t_stuck = np.array([[[np.inf]], [[1e6]]])
    message = r"neuron 1 of sample 1 fires twice at t=1000000\.0"
    R_stuck = np.array([[0.0, 0.1], [0.1, 0.0]])
    with pytest.raises(FloatingPointError, match=message):
        ss.lif_forward(t_stuck, np.array([[0.5, 1e15]]), tau_mem=10.0, tau_syn=5.0, max_spikes=2,
                       recurrent_weights=R_stuck, engine="numpy", method="sequential")
    with pytest.raises(FloatingPointError, match=message):
        backend.forward(t_stuck, np.array([[0.5, 1e15]]), tau_mem=10.0, tau_syn=5.0, max_spikes=2,
                        recurrent_weights=R_stuck, block_size=1)
    with pytest.raises(ValueError, match="block_size"):
        backend.forward(t, W, tau_mem=10.0, tau_syn=5.0, max_spikes=4, recurrent_weights=R, block_size=0)


def test_arrivals_and_spikes_beyond_the_dtype_range_are_refused(backend):
    """A recurrent arrival past float64 (a spike near 1e308 plus a recurrent delay of 1e308) and a float32 spike
    time beyond float32 are refused as the NumPy engine refuses them: both would read as no spike (+inf)."""
    t = np.array([[[1.0e308], [np.inf]]])
    W = np.array([[5.0, 0.0], [0.0, 0.0]])
    R = np.array([[0.0, 5.0], [0.0, 0.0]])
    kw = dict(tau_mem=1e140, tau_syn=5e139, max_spikes=2, recurrent_weights=R)
    message = (r"neuron 0 of sample 0 spikes at t=1e\+308, and its longest recurrent delay to a neuron it connects "
               r"to \(1e\+308\)")
    for call in (lambda D: ss.lif_forward(t, W, recurrent_delays=D, engine="numpy", **kw),
                 lambda D: backend.forward(t, W, recurrent_delays=D, **kw)):
        with pytest.raises(ValueError, match=message):
            call(np.array([[0.0, 1e308], [0.0, 0.0]]))
        result = call(np.array([[0.0, 0.5e308], [0.0, 0.0]]))  # the arrival at 1.5e308 is within range
        np.testing.assert_array_equal(backend.host(result.counts), [[1, 1]])
        result = call(np.array([[1e308, 0.5e308], [0.0, 0.0]]))  # 1e308 on a connection of weight 0: unused
        np.testing.assert_array_equal(backend.host(result.counts), [[1, 1]])
    t32 = np.array([[[1.0e38], [np.inf]]], np.float32)
    message = r"a spike time \(3\.99.*e\+38\) exceeds the range of the input dtype float32"
    kw32 = dict(tau_mem=1e30, tau_syn=5e29, max_spikes=2, recurrent_weights=R.astype(np.float32),
                recurrent_delays=np.array([[0.0, 3.0e38], [0.0, 0.0]], np.float32))
    for call in (lambda: ss.lif_forward(t32, W.astype(np.float32), engine="numpy", **kw32),
                 lambda: backend.forward(t32, W.astype(np.float32), **kw32)):
        with pytest.raises(ValueError, match=message):
            call()


def test_a_runaway_sample_stops_the_others(backend):
    # Three samples that all run away: the first to stop sets the abort flag and the others stop at their next step
    # instead of each running to the limit (n_out**2 * max_total_spikes updates apiece in a recurrent layer).
    launched = []
    base = backend.launch

    def launch(*args, **kw):
        launched.append(args[5])
        return base(*args, **kw)

    backend.launch = launch
    t = np.array([[[1.0], [2.0]]] * 3)
    W = np.array([[5.0, 5.0], [5.0, 5.0]])
    with pytest.raises(ss.RunawayFiringError, match="runaway self-excitation"):
        backend.forward(t, W, tau_mem=10.0, tau_syn=5.0, max_spikes=4, recurrent_weights=np.full((2, 2), 3.0),
                        max_total_spikes=50, block_size=2)
    args = launched[-1]
    counts, stuck_times, abort_all = (backend.host(args[i]) for i in (-9, -4, -1))
    assert abort_all[0] == 1
    assert (counts == 51).any() and np.isfinite(stuck_times).any()  # one sample ran to the limit and reported it
    if backend.name == "emulated":  # blocks run one after another: samples 1 and 2 stop at their first step
        np.testing.assert_array_equal(counts[1:], 0)
        assert not np.isfinite(stuck_times[2:]).any()


def test_cupy_entry_points_dispatch_to_the_recurrent_kernels(host_kernels, monkeypatch):
    # Without a GPU: NumPy stands in for CuPy and the emulation for the device, so that the wiring of
    # lif_forward_recurrent_cuda and of lif_backward_cuda's dispatch runs (the gpu test below goes through lif.py).
    monkeypatch.setitem(sys.modules, "cupy", np)
    monkeypatch.setattr(_recurrent, "_cupy_launch", host_kernels.launch)
    t, W, R, D, Dr = case(8, rec_delays=True, delays=True)
    kw = dict(tau_mem=10.0, tau_syn=4.0, max_spikes=3)
    ref = ss.lif_forward(t, W, delays=D, recurrent_weights=R, recurrent_delays=Dr, method="sequential",
                         engine="numpy", **kw)
    n_out = W.shape[1]
    tc = [_validate.time_constant(name, v, n_out, np) for name, v in (("tau_mem", 10.0), ("tau_syn", 4.0),
                                                                      ("threshold", 1.0))]
    out = _recurrent.lif_forward_recurrent_cuda(t, W, D, *tc, 3, "newton", 300, True, R, Dr)
    np.testing.assert_array_equal(out.counts, ref.counts)
    G = np.ones_like(ref.times)
    g = _lif.lif_backward_cuda(out, G, "auto", True, True)
    ref_g = ss.lif_backward(ref, G, engine="numpy", time_constant_grads=True)
    for name in ("recurrent_delays", "tau_mem", "tau_syn"):
        np.testing.assert_allclose(getattr(g, name), getattr(ref_g, name), err_msg=name, **TOL["float64"]["grads"])
    assert g.threshold.shape == () and g.tau_mem.shape == g.tau_syn.shape == (n_out,)


def test_methods_on_cupy_inputs_name_the_event_loop(host_kernels, monkeypatch):
    # The CUDA kernel is NumPy's "sequential" event loop: "sequential" and "auto" run it (the same launch, the same
    # outputs bit for bit), NumPy's parallel windows ("scan") are a ValueError naming the argument, the value and what
    # runs on CuPy, raised before anything is launched (the entry point and the generic body alike).
    monkeypatch.setitem(sys.modules, "cupy", np)
    launched = []

    def launch(*args, **kw):
        launched.append(args[1])
        return host_kernels.launch(*args, **kw)

    monkeypatch.setattr(_recurrent, "_cupy_launch", launch)
    t, W, R, D, Dr = case(8, rec_delays=True, delays=True)
    n_out = W.shape[1]
    tc = [_validate.time_constant(name, v, n_out, np) for name, v in (("tau_mem", 10.0), ("tau_syn", 4.0),
                                                                      ("threshold", 1.0))]
    args = (t, W, D, *tc, 3, "newton", 300, True, R, Dr)
    outs = {m: _recurrent.lif_forward_recurrent_cuda(*args, m) for m in ("sequential", "auto")}
    # (Besides the queue kernel that sorts the delayed input queue.)
    assert [k for k in launched if k not in _queue.KERNELS.values()] == ["spikescan_recurrent_forward"] * 2
    for name in ("times", "counts"):
        np.testing.assert_array_equal(getattr(outs["auto"], name), getattr(outs["sequential"], name))
    for name in ("times", "neurons", "currents", "count"):
        np.testing.assert_array_equal(getattr(outs["auto"].residuals.recurrent_log, name),
                                      getattr(outs["sequential"].residuals.recurrent_log, name))
    ref = ss.lif_forward(t, W, delays=D, recurrent_weights=R, recurrent_delays=Dr, method="sequential",
                         engine="numpy", tau_mem=10.0, tau_syn=4.0, max_spikes=3)
    np.testing.assert_array_equal(outs["auto"].counts, ref.counts)
    launched.clear()
    message = r"method='scan' is not available for a recurrent layer on CuPy inputs: .*method='sequential'"
    with pytest.raises(ValueError, match=message):
        _recurrent.lif_forward_recurrent_cuda(*args, "scan")
    with pytest.raises(ValueError, match=message):
        _recurrent.forward(np, launch, *args, method="scan")
    with pytest.raises(ValueError, match="method='step'"):
        _recurrent.forward(np, launch, *args, method="step")
    assert launched == []
    assert _recurrent.check_method("auto") == _recurrent.check_method("sequential") == "sequential"
    # NumPy inputs keep both methods.
    windows = ss.lif_forward(t, W, delays=D, recurrent_weights=R, recurrent_delays=Dr, method="scan",
                             engine="numpy", tau_mem=10.0, tau_syn=4.0, max_spikes=3)
    np.testing.assert_array_equal(windows.counts, ref.counts)


@pytest.mark.gpu
def test_public_api_on_the_gpu():
    if not is_available():
        pytest.skip("no CUDA device")
    import cupy

    t, W, R, D, Dr = case(9, r_mean=0.05, delays=True, rec_delays=True)
    kw = dict(tau_mem=10.0, tau_syn=4.0, max_spikes=3)
    ref = ss.lif_forward(t, W, delays=D, recurrent_weights=R, recurrent_delays=Dr, engine="numpy", method="sequential",
                         **kw)
    out = ss.lif_forward(cupy.asarray(t), cupy.asarray(W), delays=cupy.asarray(D), recurrent_weights=cupy.asarray(R),
                         recurrent_delays=cupy.asarray(Dr), **kw)
    with pytest.raises(ValueError, match="method='scan' is not available for a recurrent layer on CuPy inputs"):
        ss.lif_forward(cupy.asarray(t), cupy.asarray(W), delays=cupy.asarray(D), recurrent_weights=cupy.asarray(R),
                       recurrent_delays=cupy.asarray(Dr), method="scan", **kw)
    assert isinstance(out.residuals.recurrent_log.times, cupy.ndarray)
    np.testing.assert_array_equal(cupy.asnumpy(out.counts), ref.counts)
    G = np.random.default_rng(0).normal(size=ref.times.shape)
    g = ss.lif_backward(out, cupy.asarray(G), time_constant_grads=True)
    ref_g = ss.lif_backward(ref, G, engine="numpy", time_constant_grads=True)
    for name in ("weights", "input_times", "delays", "threshold", "recurrent_weights", "recurrent_delays", "tau_mem",
                 "tau_syn"):
        np.testing.assert_allclose(cupy.asnumpy(getattr(g, name)), getattr(ref_g, name), err_msg=name,
                                   **TOL["float64"]["grads"])


# ---------------------------------------------------------------------------------------------------------------
# Time constants (time_constant_grads=True): the spike walk's spike_grads, the layer unrolled on the device and the
# feed-forward backward kernel, against the NumPy engine (itself checked against finite differences in
# tests/test_recurrent.py).
# ---------------------------------------------------------------------------------------------------------------

def check_time_constants(backend, t, W, R, D=None, Dr=None, *, min_spikes=5, block_size=None, dtype="float64",
                         **kw):
    """tau_mem / tau_syn gradients ``[n_out]`` against the NumPy engine, every other gradient against it too and
    equal to the CUDA backward's without time constants; returns the reference forward."""
    kw.setdefault("max_total_spikes", 300)
    args = dict(delays=D, recurrent_weights=R, recurrent_delays=Dr, **kw)
    ref = ss.lif_forward(t, W, method="sequential", engine="numpy", **args)
    assert ref.counts.sum() >= min_spikes
    G = np.random.default_rng(int(ref.counts.sum())).normal(size=ref.times.shape).astype(ref.times.dtype)
    ref_g = ss.lif_backward(ref, G, engine="numpy", time_constant_grads=True)
    out = backend.forward(t, W, block_size=block_size, **args)
    np.testing.assert_array_equal(backend.host(out.counts), ref.counts)
    plain = backend.backward(out, G, block_size=block_size)
    backend.launched.clear()
    grads = backend.backward(out, G, block_size=block_size, time_constant_grads=True)
    # The unrolled layer goes through the feed-forward backward kernel.
    assert "spikescan_lif_backward" in backend.launched
    tol = TOL[dtype]["grads"]
    n_out = W.shape[1]
    for name in ("tau_mem", "tau_syn"):
        a, b = getattr(ref_g, name), getattr(grads, name)
        assert isinstance(b, backend.xp.ndarray) and getattr(plain, name) is None, name
        b = backend.host(b)
        assert b.shape == a.shape == (n_out,) and b.dtype == a.dtype, (name, b.shape, b.dtype)
        assert np.abs(a).max() > 0, name
        np.testing.assert_allclose(b, a, err_msg=f"grad_{name}", **tol)
    for name in ("weights", "input_times", "delays", "threshold", "recurrent_weights", "recurrent_delays"):
        a, b, c = getattr(ref_g, name), backend.host(getattr(grads, name)), backend.host(getattr(plain, name))
        if a is None:
            assert b is None and c is None, name
            continue
        assert b.shape == a.shape and b.dtype == a.dtype, (name, b.shape, a.shape, b.dtype, a.dtype)
        np.testing.assert_allclose(b, a, err_msg=f"grad_{name}", **tol)
        np.testing.assert_allclose(b, c, rtol=1e-12, atol=1e-12, err_msg=f"grad_{name} with and without tau grads")
    return ref


@pytest.mark.parametrize("rec_delays", [False, True], ids=["zero_rec_delays", "rec_delays"])
@pytest.mark.parametrize("r_mean", [-0.4, 0.1], ids=["inhibitory", "excitatory"])
def test_time_constant_grads_against_numpy(backend, rec_delays, r_mean):
    t, W, R, _, Dr = case(1, r_mean=r_mean, rec_delays=rec_delays)
    check_time_constants(backend, t, W, R, Dr=Dr, tau_mem=10.0, tau_syn=4.0, max_spikes=4, block_size=3)


@pytest.mark.parametrize("tau_mem,tau_syn", [(5.0, 5.0), (10.0, 5.0)], ids=["equal", "ratio_2"])
def test_time_constant_grads_regimes_and_input_delays(backend, tau_mem, tau_syn):
    t, W, R, D, Dr = case(2, r_mean=-0.3, delays=True, rec_delays=tau_mem != tau_syn)
    solver = "analytic" if tau_mem == 2 * tau_syn else "newton"
    check_time_constants(backend, t, W, R, D, Dr, tau_mem=tau_mem, tau_syn=tau_syn, max_spikes=4, solver=solver,
                         block_size=2)


def test_time_constant_grads_per_neuron_parameters_and_capped_recording(backend):
    # Per-neuron constants (one neuron with tau_mem == tau_syn) and thresholds; max_spikes=1 leaves most spikes
    # unrecorded: they still feed the others, and their cotangent comes from there alone.
    t, W, R, D, Dr = case(3, r_mean=0.05, delays=True, rec_delays=True)
    rng = np.random.default_rng(3)
    tau_mem, tau_syn = rng.uniform(6.0, 12.0, 5), rng.uniform(2.0, 5.0, 5)
    tau_syn[2] = tau_mem[2]
    ref = check_time_constants(backend, t, W, R, D, Dr, tau_mem=tau_mem, tau_syn=tau_syn,
                               threshold=rng.uniform(0.7, 1.2, 5), max_spikes=1, solver="bisection", block_size=4)
    assert ref.capped_spikes > 0


def test_time_constant_grads_float32_inputs(backend):
    t, W, R, _, Dr = case(6, r_mean=-0.2, rec_delays=True, dtype=np.float32)
    check_time_constants(backend, t, W.astype(np.float32), R, Dr=Dr, tau_mem=10.0, tau_syn=4.0, max_spikes=3,
                         dtype="float32", block_size=2)


def test_time_constant_grads_keep_the_queue_order_at_equal_times(backend):
    # Simultaneous spikes (their zero-delay arrivals at one time, in spike order), with a zero recurrent weight
    # (never scheduled) ...
    t = np.array([[[1.0, 2.0, 6.0]]])
    W = np.full((1, 4), 3.0)
    R = np.array([[0.0, 0.3, -0.2, 0.1], [0.2, 0.0, 0.1, 0.3], [0.1, -0.1, 0.0, 0.2], [0.3, 0.2, 0.1, 0.0]])
    ref = check_time_constants(backend, t, W, R, tau_mem=10.0, tau_syn=5.0, max_spikes=5, block_size=2)
    log = ref.residuals.recurrent_log
    assert np.any(np.diff(log.times[0, : log.count[0]]) == 0.0)
    # ... and a recurrent arrival at the time of an input entry (the input first).
    t, W, R, Dr, kw = arrival_at_an_input_entry()
    check_time_constants(backend, t, W, R, Dr=Dr, min_spikes=2, block_size=1, **kw)


DETERMINISTIC_KERNELS = {"spikescan_recurrent_backward_synapses", "spikescan_recurrent_backward_input_times"}


@pytest.mark.parametrize("delays,rec_delays", [(False, False), (True, False), (True, True)],
                         ids=["no_delays", "input_delays", "both_delays"])
def test_deterministic_backward(backend, monkeypatch, delays, rec_delays):
    """``_recurrent.DETERMINISTIC``: the input gradients from the source-major kernels (no atomics) and the time
    constants' terms summed per neuron in a fixed order; every gradient against the NumPy layer and the atomic
    kernels', and bit for bit the same with the unrolled layer split into groups of neurons."""
    t, W, R, D, Dr = case(7, r_mean=-0.1, delays=delays, rec_delays=rec_delays)
    kw = dict(tau_mem=10.0, tau_syn=4.0, max_spikes=3)
    atomic = check_time_constants(backend, t, W, R, D, Dr, **kw)
    G = np.random.default_rng(int(atomic.counts.sum())).normal(size=atomic.times.shape)
    out = backend.forward(t, W, delays=D, recurrent_weights=R, recurrent_delays=Dr, **kw)
    plain = backend.backward(out, G, time_constant_grads=True)
    monkeypatch.setattr(_recurrent, "DETERMINISTIC", True)
    backend.launched.clear()
    check_time_constants(backend, t, W, R, D, Dr, **kw)
    assert DETERMINISTIC_KERNELS <= set(backend.launched)
    assert "spikescan_recurrent_backward_inputs" not in backend.launched
    # The unrolled layer's time constants: per-neuron terms summed in a fixed order (has_tau_grads == 2).
    flags = []
    base = backend.launch
    monkeypatch.setattr(backend, "launch", lambda *a, **k: (flags.append(a[1] == "spikescan_lif_backward" and any(
        isinstance(x, np.int32) and x == 2 for x in a[5])), base(*a, **k))[1])
    backend.backward(out, G, time_constant_grads=True)
    monkeypatch.setattr(backend, "launch", base)
    assert any(flags)
    det = backend.backward(out, G, time_constant_grads=True)
    with monkeypatch.context() as m:
        m.setattr(_recurrent._lif._memory, "fit_backward_group", lambda *a: 1)  # one neuron per launch
        split = backend.backward(out, G, time_constant_grads=True)
    for name in ("weights", "input_times", "delays", "threshold", "recurrent_weights", "recurrent_delays",
                 "tau_mem", "tau_syn"):
        a, b, c = (None if getattr(x, name) is None else backend.host(getattr(x, name)) for x in (plain, det, split))
        if a is None:
            assert b is None and c is None, name
            continue
        np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-12, err_msg=f"grad_{name} deterministic vs atomic")
        np.testing.assert_array_equal(c, b, err_msg=f"grad_{name} split into groups")


def test_deterministic_backward_at_equal_times(backend, monkeypatch):
    """The next-spike rule at equal times (an input entry at a spike's time comes after it; a recurrent arrival
    together with an input), through the source-major kernels."""
    monkeypatch.setattr(_recurrent, "DETERMINISTIC", True)
    from spikescan.neurons import lif

    t = np.array([[[1.0, 3.0, 5.0]]])
    threshold = float(lif.voltage(2.0, 0.0, 3.0, 6.0, 4.0))
    # Zero input delays: the same spikes, and the input entry at the spike's time has a delay gradient (the
    # adjoint just after it), which the next-spike rule decides.
    ref = check(backend, t, np.array([[3.0]]), np.array([[0.4]]), D=np.zeros((1, 1)), tau_mem=6.0, tau_syn=4.0,
                threshold=threshold, max_spikes=4, min_spikes=1, block_sizes=(1,))
    assert ref.times[0, 0, 0] == 3.0
    t, W, R, Dr, kw = arrival_at_an_input_entry()
    check(backend, t, W, R, Dr=Dr, min_spikes=2, block_sizes=(1,), **kw)


@pytest.mark.parametrize("shape", ["no neuron", "no input channel", "no sample", "no spike slot"])
def test_empty_shapes(backend, shape):
    rng = np.random.default_rng(2)
    t, W, R = random_spikes(rng, 2, 5, 4), np.full((5, 3), 0.5), np.full((3, 3), 0.1)
    t, W, R = {"no neuron": (t, W[:, :0], R[:0, :0]), "no input channel": (t[:, :0], W[:0], R),
               "no sample": (t[:0], W, R), "no spike slot": (t[:, :, :0], W, R)}[shape]
    r = backend.forward(t, W, tau_mem=10.0, tau_syn=5.0, max_spikes=4, recurrent_weights=R,
                        recurrent_delays=np.ones_like(R))
    times = backend.host(r.times)
    assert times.shape == (t.shape[0], W.shape[1], 4) and np.isinf(times).all()
    g = backend.backward(r, backend.xp.ones(r.times.shape), time_constant_grads=True)
    for name, ref in (("weights", W), ("input_times", t), ("recurrent_weights", R)):
        got = backend.host(getattr(g, name))
        assert got.shape == ref.shape and not got.any(), name
