"""Tests of the CUDA backend (``spikescan.cuda``) against the NumPy float64 reference.

Every case runs on two backends:

- ``gpu`` (marker ``gpu``): the real kernels through CuPy; skipped cleanly without a CUDA device.
- ``emulated``: the same ``.cu`` sources compiled for the host by ``spikescan.cuda._hostemu`` (one OS thread per
  CUDA thread, warp intrinsics through a per-warp barrier), driven by the same launchers with NumPy arrays. It runs
  on any machine with ``g++`` and checks the kernels' logic where there is no GPU; it cannot see device-only
  effects (math-library ulps, FMA contraction), which the ``gpu`` runs cover.

Spike counts and spike events must be identical; times and gradients agree within ``tolerances.TOL``; every backward
case runs both backward kernels (``BACKWARD_METHODS``: thread per neuron and warp scan). A non-GPU test compiles
every kernel with NVRTC for sm_80 and sm_90 (skipped when NVRTC is missing).
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import sys

import numpy as np
import pytest

import spikescan as ss
from spikescan import _validate
from spikescan.cuda import _kernels, _lif, _queue, _readout, choose_method, is_available

from _cases import queue_of_length, random_spikes, weights
from tolerances import TOL

BACKWARD_METHODS = tuple(_lif.BACKWARD_KERNELS)  # "sequential" (thread per neuron), "scan" (warp per neuron)

BACKENDS = [
    pytest.param("emulated", id="emulated"),
    pytest.param("gpu", id="gpu", marks=pytest.mark.gpu),
]


class Backend:
    """Runs the CUDA launchers on the GPU (CuPy) or on the host emulation (NumPy); returns NumPy arrays."""

    def __init__(self, name, request):
        self.name = name
        if name == "gpu":
            if not is_available():
                pytest.skip("no CUDA device")
            import cupy

            self.xp, self.launch = cupy, _lif._cupy_launch
            self.ro_launch = _readout._cupy_launch
        else:
            hk = request.getfixturevalue("host_kernels")
            self.xp, self.launch, self.ro_launch = np, hk.launch, hk.launch

    def to_device(self, x):
        return None if x is None else self.xp.asarray(x)

    def to_host(self, x):
        if x is None or isinstance(x, (np.ndarray, float, int)):
            return x
        return self.xp.asnumpy(x)

    def lif(self, t, W, D=None, *, tau_mem, tau_syn, threshold=1.0, max_spikes, method, chunk_size=32,
            solver="newton", **kw):
        xp = self.xp
        n_out = W.shape[1]
        tm = _validate.time_constant("tau_mem", self.to_device(tau_mem) if np.ndim(tau_mem) else tau_mem, n_out, xp)
        ts = _validate.time_constant("tau_syn", self.to_device(tau_syn) if np.ndim(tau_syn) else tau_syn, n_out, xp)
        th = self.to_device(threshold) if np.ndim(threshold) else threshold
        return _lif.forward(xp, self.launch, self.to_device(t), self.to_device(W), self.to_device(D), tm, ts,
                            th, max_spikes, method, chunk_size, solver, **kw)

    def lif_backward(self, result, G, method="auto", time_constant_grads=False):
        return _lif.backward(self.xp, self.launch, result, self.to_device(G), method,
                             time_constant_grads=time_constant_grads)


@pytest.fixture(params=BACKENDS)
def backend(request):
    return Backend(request.param, request)


def assert_same_spikes(ref, out, backend, dtype="float64"):
    counts, times = backend.to_host(out.counts), backend.to_host(out.times)
    np.testing.assert_array_equal(counts, ref.counts)
    np.testing.assert_array_equal(backend.to_host(out.residuals.spike_event), ref.residuals.spike_event)
    assert times.dtype == ref.times.dtype
    np.testing.assert_array_equal(np.isfinite(times), np.isfinite(ref.times))
    fin = np.isfinite(ref.times)
    np.testing.assert_allclose(times[fin], ref.times[fin], **TOL[dtype]["times"])


def assert_same_grads(ref, out, backend, dtype="float64", label=""):
    for name in ("weights", "input_times", "delays", "threshold", "tau_mem", "tau_syn"):
        a, b = getattr(ref, name), backend.to_host(getattr(out, name))
        if a is None:
            assert b is None
            continue
        assert b.shape == a.shape and b.dtype == a.dtype, name
        np.testing.assert_allclose(b, a, err_msg=f"grad_{name} {label}", **TOL[dtype]["grads"])


@contextlib.contextmanager
def quiet_gap(enabled):
    """``_lif.QUIET_GAP`` set to ``enabled`` inside the block."""
    saved = _lif.QUIET_GAP
    _lif.QUIET_GAP = enabled
    try:
        yield
    finally:
        _lif.QUIET_GAP = saved


@contextlib.contextmanager
def forward_checkpoints(enabled):
    """``_lif.FORWARD_CHECKPOINTS`` set to ``enabled`` inside the block."""
    saved = _lif.FORWARD_CHECKPOINTS
    _lif.FORWARD_CHECKPOINTS = enabled
    try:
        yield
    finally:
        _lif.FORWARD_CHECKPOINTS = saved


@contextlib.contextmanager
def permutation(enabled, algorithm="counting"):
    """``_queue.PERMUTATION`` set to ``enabled`` (and ``_queue.ALGORITHM`` to ``algorithm``) inside the block."""
    saved = _queue.PERMUTATION, _queue.ALGORITHM
    _queue.PERMUTATION, _queue.ALGORITHM = enabled, algorithm
    try:
        yield
    finally:
        _queue.PERMUTATION, _queue.ALGORITHM = saved


def assert_identical_spikes(out, other, backend, label=""):
    """Bit-identical outputs and spike records of two forwards."""
    for name in ("times", "counts"):
        np.testing.assert_array_equal(backend.to_host(getattr(other, name)), backend.to_host(getattr(out, name)),
                                      err_msg=f"{name} {label}")
    for name in ("spike_times", "spike_event"):
        np.testing.assert_array_equal(backend.to_host(getattr(other.residuals, name)),
                                      backend.to_host(getattr(out.residuals, name)), err_msg=f"{name} {label}")


def assert_quiet_gap_changes_nothing(backend, out, t, W, D, **kw):
    """The forward with the other ``QUIET_GAP`` setting than ``out``'s: the exact cheap gap test only skips work, so
    every output (times, events, counts) is bit-identical."""
    with quiet_gap(not _lif.QUIET_GAP):
        other = backend.lif(t, W, D, **kw)
    assert_identical_spikes(out, other, backend, "(other QUIET_GAP)")


@contextlib.contextmanager
def entry_table(enabled):
    """``_lif.ENTRY_TABLE`` set to ``enabled`` inside the block."""
    saved = _lif.ENTRY_TABLE
    _lif.ENTRY_TABLE = enabled
    try:
        yield
    finally:
        _lif.ENTRY_TABLE = saved


def assert_entry_table_changes_nothing(backend, out, t, W, D, **kw):
    """The forward with the other ``ENTRY_TABLE`` setting than ``out``'s: sources from the table and weights and
    delays from the neuron's row of pairs are the same doubles, so every output is bit-identical."""
    with entry_table(not _lif.ENTRY_TABLE):
        other = backend.lif(t, W, D, **kw)
    assert_identical_spikes(out, other, backend, "(other ENTRY_TABLE)")


def assert_staged_scan_changes_nothing(backend, out, t, W, D, **kw):
    """The scan forward on permutation queues with ``STAGED_SCAN`` (each sample's shared queue in shared memory)
    gives ``out``'s outputs bit for bit; so does the other ``STAGED_WARPS`` of 1 and 8 (blocks of one neuron, and
    blocks that a sample's last neurons do not fill)."""
    saved = _lif.STAGED_SCAN, _lif.STAGED_WARPS, _lif.SCAN_PREFETCH
    try:
        for warps, prefetch in ((8, True), (1, False)):
            _lif.STAGED_SCAN, _lif.STAGED_WARPS, _lif.SCAN_PREFETCH = True, warps, prefetch
            other = backend.lif(t, W, D, **kw)
            assert_identical_spikes(out, other, backend,
                                    f"(STAGED_SCAN, {warps} warps per block, SCAN_PREFETCH {prefetch})")
    finally:
        _lif.STAGED_SCAN, _lif.STAGED_WARPS, _lif.SCAN_PREFETCH = saved


@contextlib.contextmanager
def warp_solve(enabled):
    """``_lif.WARP_SOLVE`` set to ``enabled`` inside the block."""
    saved = _lif.WARP_SOLVE
    _lif.WARP_SOLVE = enabled
    try:
        yield
    finally:
        _lif.WARP_SOLVE = saved


def assert_warp_solve_changes_nothing(backend, out, t, W, D, **kw):
    """The scan forward with the other ``WARP_SOLVE`` setting than ``out``'s: the same Newton iterates with the probes
    spread over three lanes, so every output is bit-identical (and the other solvers take the same path). Also with
    the other ``SCAN_PREFETCH`` setting: the next chunk's entries loaded a round early are the same values."""
    with warp_solve(not _lif.WARP_SOLVE):
        other = backend.lif(t, W, D, **kw)
    assert_identical_spikes(out, other, backend, "(other WARP_SOLVE)")
    saved = _lif.SCAN_PREFETCH
    _lif.SCAN_PREFETCH = not saved
    try:
        other = backend.lif(t, W, D, **kw)
    finally:
        _lif.SCAN_PREFETCH = saved
    assert_identical_spikes(out, other, backend, "(other SCAN_PREFETCH)")


def check_case(backend, t, W, D=None, methods=("sequential", "scan"), chunk_sizes=(32,), dtype="float64",
               min_spikes=1, **kw):
    """Forward of every method and chunk size, then both backward kernels, against the NumPy sequential reference."""
    ref = ss.lif_forward(t, W, delays=D, method="sequential", engine="numpy", **kw)
    assert ref.counts.sum() >= min_spikes
    rng = np.random.default_rng(int(ref.counts.sum()))
    G = rng.normal(size=ref.times.shape).astype(ref.times.dtype)
    ref_g = ss.lif_backward(ref, G, method="sequential", engine="numpy", time_constant_grads=True)
    for method in methods:
        for cs in (chunk_sizes if method == "scan" else (32,)):
            out = backend.lif(t, W, D, method=method, chunk_size=cs, **kw)
            assert_same_spikes(ref, out, backend, dtype)
            assert_quiet_gap_changes_nothing(backend, out, t, W, D, method=method, chunk_size=cs, **kw)
            assert_entry_table_changes_nothing(backend, out, t, W, D, method=method, chunk_size=cs, **kw)
            if method == "scan":
                assert_warp_solve_changes_nothing(backend, out, t, W, D, method=method, chunk_size=cs, **kw)
            if D is not None:  # the permutation format of the queues: both queue kernels, with and without the
                # forward's checkpoints; spikes bit-identical to the materialised queues'
                for algorithm, checkpoints in (("counting", False), ("bitonic", method != "step")):
                    label = f"(forward {method} on permuted queues ({algorithm}), checkpoints {checkpoints}, chunk {cs}"
                    with permutation(True, algorithm), forward_checkpoints(checkpoints):
                        permuted = backend.lif(t, W, D, method=method, chunk_size=cs, **kw)
                    res = permuted.residuals
                    assert res.queue_perm is not None and res.queue_times is None and res.queue_index is None
                    assert res.queue_perm.dtype == np.uint16 and res.queue_length == out.residuals.queue_length
                    assert (res.checkpoints is not None) == checkpoints
                    assert_identical_spikes(out, permuted, backend, label + ")")
                    with permutation(True, algorithm), forward_checkpoints(checkpoints):
                        assert_entry_table_changes_nothing(backend, permuted, t, W, D, method=method, chunk_size=cs,
                                                           **kw)
                        if method == "scan":
                            assert_staged_scan_changes_nothing(backend, permuted, t, W, D, method=method,
                                                               chunk_size=cs, **kw)
                    for bwd in BACKWARD_METHODS:
                        assert_same_grads(ref_g, backend.lif_backward(permuted, G, bwd, time_constant_grads=True),
                                          backend, dtype, label=f"{label}, backward {bwd})")
            for bwd in BACKWARD_METHODS:
                assert_same_grads(ref_g, backend.lif_backward(out, G, bwd, time_constant_grads=True), backend, dtype,
                                  label=f"(forward {method}, chunk {cs}, backward {bwd})")
            if method != "step":  # the forward's checkpoints replace the backward's first pass
                with forward_checkpoints(True):
                    out = backend.lif(t, W, D, method=method, chunk_size=cs, **kw)
                assert out.residuals.checkpoints is not None
                assert_same_spikes(ref, out, backend, dtype)
                for bwd in BACKWARD_METHODS:
                    assert_same_grads(ref_g, backend.lif_backward(out, G, bwd, time_constant_grads=True), backend,
                                      dtype, label=f"(forward {method} with checkpoints, chunk {cs}, backward {bwd})")
    return ref


# ---------------------------------------------------------------------------------------------------------------
# LIF forward and backward (the cases of test_lif.py)
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("chunk_size", [1, 3, 8, 32, 128])
@pytest.mark.parametrize("offset", [-1, 0, 1])
def test_chunk_boundaries(backend, chunk_size, offset):
    rng = np.random.default_rng(chunk_size * 10 + offset)
    width = min(chunk_size, 32)
    for multiple in (1, 2):
        length = max(1, width * multiple + offset)
        t = queue_of_length(rng, length, t_max=2.0 * length)
        W = weights(rng, t.shape[1], 3, mean=3.5 if length < 4 else 0.8, std=1.0)
        check_case(backend, t, W, chunk_sizes=(chunk_size,), tau_mem=6.0, tau_syn=4.0, max_spikes=2 * length + 4)


@pytest.mark.parametrize("tau_mem,tau_syn,solver", [
    (10.0, 5.0, "newton"), (10.0, 5.0, "analytic"), (10.0, 5.0, "bisection"),
    (5.0, 5.0, "newton"), (5.0, 5.0 * (1 + 1e-9), "newton"), (4.0, 9.0, "bisection"), (7.0, 3.0, "newton")])
def test_time_constants_and_solvers(backend, tau_mem, tau_syn, solver):
    rng = np.random.default_rng(5)
    t = random_spikes(rng, 3, 12, 4, t_max=40.0)
    W = weights(rng, 12, 5)
    check_case(backend, t, W, methods=("sequential", "scan", "step"), chunk_sizes=(3, 32), min_spikes=10,
               tau_mem=tau_mem, tau_syn=tau_syn, max_spikes=40, solver=solver)


@pytest.mark.parametrize("solver", ["newton", "bisection", "analytic"])
def test_exact_graze_lands_at_the_peak_for_every_solver(backend, solver):
    """The kernels' solvers as NumPy's at a PSP whose peak meets the threshold exactly: the spike at the peak (the
    bisection stops on a bracket end within rounding of the threshold, as Newton does), the same bits."""
    t, W = np.array([[[1.0]]]), np.array([[4.0]])
    ref = ss.lif_forward(t, W, tau_mem=1e-3, tau_syn=5e-4, max_spikes=2, solver=solver, engine="numpy")
    for method in ("sequential", "scan"):
        out = backend.lif(t, W, tau_mem=1e-3, tau_syn=5e-4, max_spikes=2, method=method, solver=solver)
        np.testing.assert_array_equal(backend.to_host(out.counts), ref.counts)
        np.testing.assert_array_equal(backend.to_host(out.times), ref.times)
    assert ref.times[0, 0, 0] == ss.lif_forward(t, W, tau_mem=1e-3, tau_syn=5e-4, max_spikes=2,
                                                solver="newton", engine="numpy").times[0, 0, 0]


def test_per_neuron_time_constants(backend):
    rng = np.random.default_rng(7)
    t = random_spikes(rng, 2, 10, 4)
    W = weights(rng, 10, 4)
    check_case(backend, t, W, chunk_sizes=(4, 32), min_spikes=5, tau_mem=np.array([10.0, 5.0, 4.0, 8.0]),
               tau_syn=np.array([5.0, 5.0, 9.0, 2.0]), max_spikes=30)


def test_per_neuron_thresholds_with_delays(backend):
    """``threshold [n_out]``: spikes and every gradient (the threshold's per neuron) as the NumPy reference."""
    rng = np.random.default_rng(17)
    t = random_spikes(rng, 2, 10, 4)
    W = weights(rng, 10, 4)
    D = rng.uniform(0.0, 3.0, (10, 4))
    check_case(backend, t, W, D, chunk_sizes=(4, 32), min_spikes=5, tau_mem=8.0, tau_syn=4.0,
               threshold=np.array([0.6, 1.0, 1.3, 0.9]), max_spikes=30)


def test_several_spikes_inside_one_gap_and_in_the_tail(backend):
    t = np.array([[[1.0, 30.0]]])
    W = np.array([[12.0]])
    check_case(backend, t, W, methods=("sequential", "scan", "step"), chunk_sizes=(1, 2, 32), min_spikes=6,
               tau_mem=5.0, tau_syn=10.0, max_spikes=50)
    out = backend.lif(t, W, tau_mem=5.0, tau_syn=10.0, max_spikes=50, method="scan", chunk_size=2)
    times = backend.to_host(out.times)[0, 0, : int(backend.to_host(out.counts)[0, 0])]
    assert (times < 30.0).sum() >= 3 and (times > 30.0).sum() >= 3


def test_simultaneous_inputs_are_applied_together(backend):
    t = np.array([[[2.0], [2.0], [9.0]]])
    W = np.array([[1.5], [1.5], [-5.0]])
    check_case(backend, t, W, chunk_sizes=(1, 32), tau_mem=5.0, tau_syn=5.0, max_spikes=4)


def test_negative_weights_padded_and_empty_samples(backend):
    rng = np.random.default_rng(8)
    t = random_spikes(rng, 4, 9, 3)
    t[1] = np.inf
    W = weights(rng, 9, 5, mean=0.2, std=1.5)
    check_case(backend, t, W, chunk_sizes=(3, 32), tau_mem=10.0, tau_syn=3.0, max_spikes=20)
    empty = np.zeros((2, 9, 0))
    for method in ("sequential", "scan"):
        r = backend.lif(empty, W, tau_mem=10.0, tau_syn=3.0, max_spikes=20, method=method)
        times = backend.to_host(r.times)
        assert times.shape == (2, 5, 20) and np.isinf(times).all() and not backend.to_host(r.counts).any()
        g = backend.lif_backward(r, np.ones(times.shape))
        assert backend.to_host(g.input_times).shape == (2, 9, 0) and not backend.to_host(g.weights).any()


def test_delays(backend):
    rng = np.random.default_rng(9)
    t = random_spikes(rng, 2, 8, 3)
    W = weights(rng, 8, 3)
    D = rng.uniform(0.0, 6.0, (8, 3))
    check_case(backend, t, W, D, methods=("sequential", "scan", "step"), chunk_sizes=(1, 2, 8, 32), min_spikes=5,
               tau_mem=10.0, tau_syn=4.0, max_spikes=30)


REBASED_CASES = [  # tau_mem, tau_syn, input time span, delay span, weight mean, whether the rebased kernel applies
    (10.0, 4.0, 40.0, 4.0, 0.4, True),
    (4.0, 10.0, 40.0, 4.0, 0.15, True),  # tau_mem < tau_syn: r < 0
    (10.0, 8.8, 40.0, 4.0, 0.3, True),  # r = 7.3, near the limit
    (2.0, 1.0, 600.0, 20.0, 2.4, True),  # exponents far beyond e^{t / tau}'s range, many blocks and anchors
    (10.0, 9.0, 40.0, 4.0, 0.3, False),  # r = 9: the exponentials
]


@pytest.mark.parametrize("tau_mem,tau_syn,span,d_span,mean,applies", REBASED_CASES)
def test_rebased_forward(backend, monkeypatch, tau_mem, tau_syn, span, d_span, mean, applies):
    """``_lif.REBASED``: the sequential forward of a layer with delays with rebased exponential sums
    (``spikescan_lif_forward_rebased``) gives the NumPy reference's spike counts and queue entries and its times within
    the tolerance, with ties, long silences and either queue format; outside its limits the plain kernel runs."""
    rng = np.random.default_rng(int(tau_mem * 10 + span))
    t = np.where(rng.random((2, 20, 6)) < 0.25, np.inf, rng.uniform(0, span, (2, 20, 6)))
    t[0, :3, 0] = 3.0  # simultaneous inputs
    t[1, :, 5] = np.where(np.isfinite(t[1, :, 5]), t[1, :, 5] + 5 * span, np.inf)  # a long silence first
    t = np.sort(t, axis=-1)
    W = rng.normal(mean, 0.6, (20, 5))
    D = np.round(rng.uniform(0, d_span, (20, 5)), 1)  # rounded: simultaneous arrivals
    kw = dict(tau_mem=tau_mem, tau_syn=tau_syn, max_spikes=4, method="sequential")
    ref = ss.lif_forward(t, W, delays=D, engine="numpy", **kw)
    assert ref.counts.sum() > 100 and (ref.counts > 4).any()
    kernels = []

    def spy(module, kernel, *args, **kwargs):
        kernels.append(kernel)
        return backend.launch(module, kernel, *args, **kwargs)

    monkeypatch.setattr(_lif, "REBASED", True)
    for fmt in (False, True):
        with permutation(fmt):
            kernels.clear()
            out = _lif.forward(backend.xp, spy, backend.to_device(t), backend.to_device(W), backend.to_device(D),
                               backend.xp.full(5, tau_mem), backend.xp.full(5, tau_syn), 1.0, 4, "sequential", 32,
                               "newton")
            assert ("spikescan_lif_forward_rebased" in kernels) == applies, kernels
            assert ("spikescan_lif_forward_sequential" in kernels) != applies, kernels
            assert_same_spikes(ref, out, backend)
    monkeypatch.setattr(_lif, "REBASED", False)
    plain = backend.lif(t, W, D, **kw)
    assert_same_spikes(ref, plain, backend)


def test_rebased_forward_float32_and_runaway(backend, monkeypatch):
    """The rebased kernel with float32 outputs, and its runaway-firing stop (the same error as the reference)."""
    rng = np.random.default_rng(10)
    t = random_spikes(rng, 2, 10, 4).astype(np.float32)
    W = weights(rng, 10, 4).astype(np.float32)
    D = rng.uniform(0.0, 3.0, (10, 4)).astype(np.float32)
    monkeypatch.setattr(_lif, "REBASED", True)
    kw = dict(tau_mem=10.0, tau_syn=5.0, max_spikes=30)
    ref = ss.lif_forward(t, W, delays=D, method="sequential", engine="numpy", **kw)
    assert ref.counts.sum() >= 5
    assert _lif.rebased_applies(D.astype(np.float64), np.full(4, 10.0), np.full(4, 5.0))
    out = backend.lif(t, W, D, method="sequential", **kw)
    assert_same_spikes(ref, out, backend, "float32")
    G = np.random.default_rng(1).normal(size=ref.times.shape).astype(np.float32)
    ref_g = ss.lif_backward(ref, G, method="sequential", engine="numpy", time_constant_grads=True)
    for bwd in BACKWARD_METHODS:
        assert_same_grads(ref_g, backend.lif_backward(out, G, bwd, time_constant_grads=True), backend, "float32")
    t64, W64, D64 = t.astype(np.float64), W.astype(np.float64) * 1e12, D.astype(np.float64)
    errs = []
    for run in (lambda: ss.lif_forward(t64, W64, delays=D64, tau_mem=10.0, tau_syn=5.0, max_spikes=2,
                                       max_total_spikes=20, engine="numpy"),
                lambda: backend.lif(t64, W64, D64, tau_mem=10.0, tau_syn=5.0, max_spikes=2, method="sequential",
                                    max_total_spikes=20)):
        with pytest.raises(ss.RunawayFiringError) as info:
            run()
        errs.append((info.value.sample, info.value.neuron, info.value.limit, info.value.time))
    assert errs[0][:3] == errs[1][:3] and errs[0][3] == pytest.approx(errs[1][3], rel=1e-12)


def test_float32(backend):
    rng = np.random.default_rng(10)
    t = random_spikes(rng, 2, 10, 4).astype(np.float32)
    W = weights(rng, 10, 4).astype(np.float32)
    D = rng.uniform(0.0, 3.0, (10, 4)).astype(np.float32)
    check_case(backend, t, W, chunk_sizes=(4, 32), dtype="float32", min_spikes=5, tau_mem=10.0, tau_syn=5.0,
               max_spikes=30)
    check_case(backend, t, W, D, chunk_sizes=(32,), dtype="float32", min_spikes=5, tau_mem=10.0, tau_syn=5.0,
               max_spikes=30)


@pytest.mark.parametrize("method,rebased", [("sequential", False), ("scan", False), ("step", False),
                                            ("sequential", True)])
def test_float32_spike_beyond_the_dtype_range_is_refused(backend, monkeypatch, method, rebased):
    """A spike after the last input beyond float32 (time constants near its range) is refused with the NumPy
    engine's error; the kernels' float32 output held +inf there, which reads as no spike, while counts said 1."""
    monkeypatch.setattr(_lif, "REBASED", rebased)
    t, W, D = (np.array([[[3.3e38]]], np.float32), np.array([[5.0]], np.float32),
               np.array([[1.0]], np.float32) if rebased else None)
    kw = dict(tau_mem=1e38, tau_syn=5e37, max_spikes=2)
    message = r"a spike time \(3\.6.*e\+38\) exceeds the range of the input dtype float32"
    with pytest.raises(ValueError, match=message):
        ss.lif_forward(t, W, delays=D, engine="numpy", **kw)
    with pytest.raises(ValueError, match=message):
        backend.lif(t, W, D, method=method, **kw)
    # Within range (time constants 100 times shorter): the same spike as the NumPy engine.
    kw.update(tau_mem=1e36, tau_syn=5e35)
    assert_same_spikes(ss.lif_forward(t, W, delays=D, engine="numpy", **kw), backend.lif(t, W, D, method=method, **kw),
                       backend, "float32")


def test_max_spikes_cap(backend):
    rng = np.random.default_rng(11)
    t = random_spikes(rng, 2, 10, 5)
    W = weights(rng, 10, 4, mean=1.5)
    full = ss.lif_forward(t, W, tau_mem=10.0, tau_syn=5.0, max_spikes=100)
    assert full.counts.max() > 3
    check_case(backend, t, W, methods=("sequential", "scan", "step"), chunk_sizes=(2, 32), tau_mem=10.0,
               tau_syn=5.0, max_spikes=3)
    capped = backend.lif(t, W, tau_mem=10.0, tau_syn=5.0, max_spikes=3, method="scan", chunk_size=2)
    np.testing.assert_array_equal(backend.to_host(capped.counts), full.counts)


@pytest.mark.parametrize("method", ["sequential", "scan", "step"])
def test_unresolvable_spike_rate_raises_instead_of_hanging(backend, method):
    # Neuron 1 of sample 1: after a spike at t = 1e6 the next one comes ~1e-14 later, below the float64 spacing of t
    # (1.2e-10). Without the check a kernel would fire at t = 1e6 forever. The error is the NumPy path's.
    t = np.array([[[np.inf]], [[1e6]]])
    W = np.array([[0.5, 1e15]])
    message = r"neuron 1 of sample 1 fires twice at t=1000000\.0"
    with pytest.raises(FloatingPointError, match=message):
        ss.lif_forward(t, W, tau_mem=10.0, tau_syn=5.0, max_spikes=4)
    with pytest.raises(FloatingPointError, match=message):
        backend.lif(t, W, tau_mem=10.0, tau_syn=5.0, max_spikes=4, method=method)


@pytest.mark.parametrize("bwd", BACKWARD_METHODS)
def test_padding_cotangents_are_ignored(backend, bwd):
    rng = np.random.default_rng(15)
    t = random_spikes(rng, 2, 6, 3)
    W = weights(rng, 6, 3)
    ref = ss.lif_forward(t, W, tau_mem=10.0, tau_syn=5.0, max_spikes=8)
    assert np.isinf(ref.times).any() and ref.counts.sum() > 0
    G = rng.normal(size=ref.times.shape)
    G_padded = G.copy()
    G_padded[np.isinf(ref.times)] = 1e6
    out = backend.lif(t, W, tau_mem=10.0, tau_syn=5.0, max_spikes=8, method="scan")
    assert_same_grads(ss.lif_backward(ref, G), backend.lif_backward(out, G_padded, bwd), backend)


@pytest.mark.parametrize("bwd", BACKWARD_METHODS)
def test_backward_without_input_time_gradients(backend, bwd):
    rng = np.random.default_rng(21)
    t = random_spikes(rng, 2, 8, 4)
    W = weights(rng, 8, 5)
    D = rng.uniform(0.0, 2.0, (8, 5))
    kw = dict(tau_mem=10.0, tau_syn=5.0, max_spikes=6)
    ref = ss.lif_forward(t, W, delays=D, **kw)
    assert ref.counts.sum() > 0
    G = rng.normal(size=ref.times.shape)
    ref_g = ss.lif_backward(ref, G)
    out = backend.lif(t, W, D, method="scan", **kw)
    part = _lif.backward(backend.xp, backend.launch, out, backend.to_device(G), bwd, input_times_grad=False)
    assert part.input_times is None
    assert_same_grads(ref_g._replace(input_times=None), part, backend)


def test_larger_case_with_many_spikes(backend):
    rng = np.random.default_rng(14)
    batch, n_in = (2, 30) if backend.name == "emulated" else (4, 60)
    t = random_spikes(rng, batch, n_in, 6, t_max=100.0)
    W = weights(rng, n_in, 6, mean=0.3, std=0.5)
    D = rng.uniform(0.0, 10.0, (n_in, 6))
    for delays in (None, D):
        check_case(backend, t, W, delays, chunk_sizes=(8, 32), min_spikes=30, tau_mem=10.0, tau_syn=5.0,
                   max_spikes=12)


def test_backward_checkpoint_groups(backend, monkeypatch):
    """A tiny checkpoint budget forces one backward launch per neuron (the grouping path)."""
    monkeypatch.setattr(_lif, "_CHECKPOINT_BYTES", 1)
    rng = np.random.default_rng(15)
    t = random_spikes(rng, 2, 12, 6, t_max=60.0)
    W = weights(rng, 12, 3, mean=0.6)
    check_case(backend, t, W, chunk_sizes=(32,), min_spikes=5, tau_mem=10.0, tau_syn=5.0, max_spikes=20)


def _spike_points(ref):
    """Position ``spike_event[m] + m`` of every recorded spike among its neuron's backward points, per neuron."""
    n_rec = np.minimum(ref.counts, ref.times.shape[2])
    se = ref.residuals.spike_event
    return [se[b, i, :n] + np.arange(n) for (b, i), n in np.ndenumerate(n_rec) if n > 0]


def test_backward_many_points_and_spikes_at_chunk_boundaries(backend):
    """Neurons with ~10 chunks of 32 points (the warp backward's chunk), spikes as the first and the last point of a
    chunk and in runs of consecutive points (bursts inside one gap from a strong channel), capped records, delays."""
    rng = np.random.default_rng(1)
    t = random_spikes(rng, 2, 16, 16, t_max=200.0, p_silent=0.1)
    W = rng.normal(0.1, 0.5, (16, 3))
    W[0] = [2.0, 4.0, 20.0]
    D = rng.uniform(0.0, 8.0, (16, 3))
    for delays in (None, D):
        # Both forwards: with FORWARD_CHECKPOINTS their checkpoints at spikes on chunk boundaries are what the
        # backward starts its chunks from.
        ref = check_case(backend, t, W, delays, methods=("sequential", "scan"), tau_mem=8.0, tau_syn=6.0,
                         max_spikes=64)
        points = _spike_points(ref)
        assert max(p[-1] for p in points) >= 6 * 32
        assert any((p % 32 == 0).any() for p in points) and any((p % 32 == 31).any() for p in points)
        assert any((np.diff(p) == 1).any() for p in points) and (ref.counts > 64).any()
    # One input, then 80 recorded spikes in its gap: a chunk of 32 spikes and no input between the others.
    ref = check_case(backend, np.array([[[1.0, 300.0]]]), np.array([[20.0]]), methods=("sequential", "scan"),
                     tau_mem=2.0, tau_syn=60.0, max_spikes=80)
    assert (np.diff(_spike_points(ref)[0]) == 1).all() and ref.counts[0, 0] > 80


@pytest.mark.parametrize("small", [32, 64])
def test_small_grid_blocks(backend, monkeypatch, small):
    """With SMALL_GRID_BLOCK, small launches use smaller blocks (more blocks over the same neurons, one warp or
    more per block): every forward method and backward kernel still gives the reference's results."""
    monkeypatch.setattr(_lif, "SMALL_GRID_BLOCK", small)
    assert _lif.block_size(7) == small and _lif.block_size(7 * 32) == small
    rng = np.random.default_rng(21)
    t = random_spikes(rng, 3, 12, 5, t_max=60.0)
    W = weights(rng, 12, 11, mean=0.6)  # 33 neurons: blocks of 32 threads split them unevenly
    check_case(backend, t, W, rng.uniform(0.0, 5.0, (12, 11)), min_spikes=5, tau_mem=10.0, tau_syn=5.0,
               max_spikes=20)


def test_small_grid_block_rule(monkeypatch):
    monkeypatch.setattr(_lif, "SMALL_GRID_BLOCK", None)
    assert _lif.block_size(1) == _lif.THREADS_PER_BLOCK
    monkeypatch.setattr(_lif, "SMALL_GRID_BLOCK", 64)
    few = _lif.SMALL_GRID_WAVES * _lif.SMALL_GRID_SMS * _lif.THREADS_PER_BLOCK
    assert _lif.block_size(few - _lif.THREADS_PER_BLOCK) == 64 and _lif.block_size(few) == _lif.THREADS_PER_BLOCK
    for bad in (48, 0, 512):
        monkeypatch.setattr(_lif, "SMALL_GRID_BLOCK", bad)
        with pytest.raises(ValueError, match="SMALL_GRID_BLOCK"):
            _lif.block_size(1)


@pytest.mark.parametrize("method", ["sequential", "scan"])
def test_backward_reads_the_forwards_checkpoints(backend, method):
    """With FORWARD_CHECKPOINTS the backward starts every chunk from the forward's checkpoints (no first pass):
    moving one checkpoint's current moves the gradients, and the checkpoints hold the backward's own states (the
    plain path's gradients to rounding, checked by check_case)."""
    rng = np.random.default_rng(3)
    t = random_spikes(rng, 1, 16, 12, t_max=150.0, p_silent=0.1)
    W = weights(rng, 16, 2, mean=0.5)
    with forward_checkpoints(True):
        out = backend.lif(t, W, method=method, tau_mem=8.0, tau_syn=6.0, max_spikes=40)
    ckpt = backend.to_host(out.residuals.checkpoints)
    assert ckpt.shape == (-(-(out.residuals.queue_times.shape[2] - 1 + 40) // 32), 4, 2)
    n_points = _spike_points(ss.lif_forward(t, W, tau_mem=8.0, tau_syn=6.0, max_spikes=40))[0][-1] + 1
    assert n_points > 64  # at least three chunks for neuron 0
    G = np.ones(out.times.shape)
    G[~np.isfinite(backend.to_host(out.times))] = 0.0
    for bwd in BACKWARD_METHODS:
        plain = backend.to_host(backend.lif_backward(out, G, bwd).weights)
        moved = ckpt.copy()
        moved[1, 1, 0] += 0.25  # the current I before point 32 of neuron 0
        shifted = out._replace(residuals=out.residuals._replace(checkpoints=backend.to_device(moved)))
        changed = backend.to_host(backend.lif_backward(shifted, G, bwd).weights)
        assert np.abs(changed[:, 0] - plain[:, 0]).max() > 1e-6, bwd
        # Neuron 1's chunks are untouched (to the last bits a GPU's atomics may reorder).
        np.testing.assert_allclose(changed[:, 1], plain[:, 1], rtol=1e-12, atol=1e-12 * np.abs(plain).max())


def test_inputs_are_not_modified(backend):
    rng = np.random.default_rng(12)
    t, W, D = random_spikes(rng, 2, 6, 3), weights(rng, 6, 3), rng.uniform(0, 2, (6, 3))
    dev = [backend.to_device(x) for x in (t, W, D)]
    r = _lif.forward(backend.xp, backend.launch, *dev,
                     *(_validate.time_constant(n, v, 3, backend.xp) for n, v in (("tau_mem", 10.0), ("tau_syn", 5.0))),
                     1.0, 5, "scan", 32, "newton")
    _lif.backward(backend.xp, backend.launch, r, backend.xp.ones(r.times.shape))
    for a, b in zip(dev, (t, W, D)):
        np.testing.assert_array_equal(backend.to_host(a), b)


def test_results_do_not_alias_the_callers_arrays(backend):
    """Updating the float64 inputs in place after a forward (an optimizer step before the backward) leaves the
    backward's gradients unchanged: the launchers keep copies (LIF with delays, and the max readout)."""
    rng = np.random.default_rng(13)
    t, W, D = random_spikes(rng, 2, 6, 3), weights(rng, 6, 3), rng.uniform(0, 2, (6, 3))
    xp = backend.xp
    dev = [backend.to_device(x) for x in (t, W, D)]
    taus = [_validate.time_constant(n, v, 3, xp) for n, v in (("tau_mem", 10.0), ("tau_syn", 5.0))]
    r = _lif.forward(xp, backend.launch, *dev, *taus, 1.0, 5, "scan", 32, "newton")
    ro = _readout.forward(xp, backend.ro_launch, dev[0], dev[1], *taus, "max", 30.0, None)
    assert backend.to_host(r.counts).sum() > 0
    G, g = xp.ones(r.times.shape), xp.ones(ro.values.shape)
    before = [_lif.backward(xp, backend.launch, r, G), _readout.backward(xp, backend.ro_launch, ro, g)]
    for x in dev:
        x += 0.5
    after = [_lif.backward(xp, backend.launch, r, G), _readout.backward(xp, backend.ro_launch, ro, g)]
    for a, b in zip(after, before):
        for name in ("weights", "input_times", "delays"):
            if getattr(b, name, None) is not None:
                np.testing.assert_array_equal(backend.to_host(getattr(a, name)), backend.to_host(getattr(b, name)),
                                              err_msg=name)


# ---------------------------------------------------------------------------------------------------------------
# Public API with CuPy arrays (dispatch, auto, types)
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("method", ["auto", "sequential", "scan"])
def test_public_api_cupy_in_cupy_out(method):
    if not is_available():
        pytest.skip("no CUDA device")
    import cupy as cp

    rng = np.random.default_rng(21)
    t = random_spikes(rng, 3, 20, 5, t_max=60.0)
    W = weights(rng, 20, 7, mean=0.5)
    D = rng.uniform(0.0, 5.0, (20, 7))
    kw = dict(tau_mem=10.0, tau_syn=5.0, max_spikes=16)
    for delays in (None, D):
        ref = ss.lif_forward(t, W, delays=delays, method="sequential", **kw)
        out = ss.lif_forward(cp.asarray(t), cp.asarray(W), delays=None if delays is None else cp.asarray(delays),
                             method=method, chunk_size=8, **kw)
        assert isinstance(out.times, cp.ndarray) and isinstance(out.counts, cp.ndarray)
        np.testing.assert_array_equal(cp.asnumpy(out.counts), ref.counts)
        G = rng.normal(size=ref.times.shape)
        g = ss.lif_backward(out, cp.asarray(G), method=method)
        ref_g = ss.lif_backward(ref, G)
        assert isinstance(g.weights, cp.ndarray) and isinstance(g.threshold, cp.ndarray)
        np.testing.assert_allclose(cp.asnumpy(g.weights), ref_g.weights, **TOL["float64"]["grads"])
        np.testing.assert_allclose(cp.asnumpy(g.input_times), ref_g.input_times, **TOL["float64"]["grads"])
        np.testing.assert_allclose(float(g.threshold), float(ref_g.threshold), **TOL["float64"]["grads"])


@pytest.mark.gpu
def test_kernels_compile_on_the_device():
    if not is_available():
        pytest.skip("no CUDA device")
    for module in _kernels.MODULES:
        _kernels.get_module(module)  # compiles through cupy.RawModule for the device's architecture
        for name in _kernels.MODULES[module]:
            # Only the dtypes a module instantiates: the queue kernels are float64-only, and asking for their
            # float32 symbol is a lookup of a name never compiled (CUDA_ERROR_NOT_FOUND), not a compile failure.
            for dtype in _kernels.MODULE_DTYPES.get(module, _kernels.DTYPES):
                _kernels.get_kernel(module, name, dtype)


# ---------------------------------------------------------------------------------------------------------------
# Readout
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("readout,tau_readout", [("final", None), ("integral", None), ("integral", 2.5),
                                                 ("max", None)])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_readout(backend, readout, tau_readout, dtype):
    rng = np.random.default_rng(31)
    t = random_spikes(rng, 3, 5, 6, t_max=5.0).astype(dtype)
    t[0, 1, 3:] = np.inf
    W = rng.normal(size=(5, 4)).astype(dtype)
    tm, ts = np.array([1.0, 1.0, 0.6, 2.0]), np.array([0.5, 1.0, 1.2, 2.0 * (1 + 1e-9)])
    kw = dict(readout=readout, t_max=4.0, tau_readout=tau_readout)
    ref = ss.li_forward(t, W, tau_mem=tm, tau_syn=ts, **kw)
    g = rng.normal(size=ref.values.shape).astype(dtype)
    ref_g = ss.li_backward(ref, g)
    xp = backend.xp
    out = _readout.forward(xp, backend.ro_launch, backend.to_device(t), backend.to_device(W),
                           backend.to_device(tm), backend.to_device(ts), readout, 4.0, tau_readout)
    values = backend.to_host(out.values)
    assert values.dtype == ref.values.dtype
    np.testing.assert_allclose(values, ref.values, **TOL[dtype]["times"])
    if readout == "max":
        np.testing.assert_array_equal(backend.to_host(out.residuals.kink_index), ref.residuals.kink_index)
    got_g = _readout.backward(xp, backend.ro_launch, out, backend.to_device(g))
    for name in ("weights", "input_times"):
        a, b = getattr(ref_g, name), backend.to_host(getattr(got_g, name))
        assert b.dtype == a.dtype
        np.testing.assert_allclose(b, a, err_msg=f"grad_{name}", **TOL[dtype]["grads"])


@pytest.mark.parametrize("readout,tau_readout", [("final", None), ("integral", 2.5), ("max", None)])
def test_readout_deterministic_reductions(backend, monkeypatch, readout, tau_readout):
    """``_readout.DETERMINISTIC``: partial sums per (sample, channel, neuron) reduced in a fixed order and the input
    times' gradients summed per input spike (``spikescan_li_inputs``), against the NumPy readout and the atomic
    kernels, time constants included; for ``"max"`` on inputs whose maximum sits on kinks (the kink term)."""
    rng = np.random.default_rng(32)
    t = np.sort(rng.integers(0, 8, (4, 5, 3)) * 0.5, axis=-1)  # a coarse grid: inputs at t* make kinks
    t[0, 1, 2:] = np.inf
    W = rng.normal(0.0, 1.5, (5, 3))
    W[rng.random(W.shape) < 0.4] *= -3.0
    tm, ts = np.array([1.0, 0.6, 2.0]), np.array([0.5, 1.2, 2.0 * (1 + 1e-9)])
    kw = dict(readout=readout, t_max=3.0, tau_readout=tau_readout)
    ref = ss.li_forward(t, W, tau_mem=tm, tau_syn=ts, **kw)
    g = rng.normal(size=ref.values.shape)
    ref_g = ss.li_backward(ref, g, time_constant_grads=True)
    if readout == "max":
        assert (ref.residuals.kink_index >= 0).sum() >= 5
    xp = backend.xp
    outs = {}
    for det in (False, True):
        monkeypatch.setattr(_readout, "DETERMINISTIC", det)
        out = _readout.forward(xp, backend.ro_launch, backend.to_device(t), backend.to_device(W),
                               backend.to_device(tm), backend.to_device(ts), readout, 3.0, tau_readout)
        grads = _readout.backward(xp, backend.ro_launch, out, backend.to_device(g), time_constant_grads=True)
        outs[det] = (out, grads)
        np.testing.assert_allclose(backend.to_host(out.values), ref.values, err_msg=f"values deterministic={det}",
                                   **TOL["float64"]["times"])
        for name in ("weights", "input_times", "tau_mem", "tau_syn"):
            a, b = getattr(ref_g, name), backend.to_host(getattr(grads, name))
            assert b.shape == a.shape and b.dtype == a.dtype, name
            np.testing.assert_allclose(b, a, err_msg=f"grad_{name} deterministic={det}", **TOL["float64"]["grads"])
    (a_out, a_g), (d_out, d_g) = outs[False], outs[True]
    np.testing.assert_allclose(backend.to_host(d_out.values), backend.to_host(a_out.values), rtol=1e-13, atol=1e-13)
    for name in ("weights", "input_times", "tau_mem", "tau_syn"):
        np.testing.assert_allclose(backend.to_host(getattr(d_g, name)), backend.to_host(getattr(a_g, name)),
                                   rtol=1e-13, atol=1e-13, err_msg=name)


def test_readout_deterministic_partials_are_checked_against_the_memory_limit(host_kernels, monkeypatch):
    """The deterministic readout's ``[batch, n_in, n_out]`` partial sums are counted before they are allocated: a
    limit below them is a ``MemoryError`` naming the call and the sizes, and nothing is launched."""
    rng = np.random.default_rng(3)
    t = random_spikes(rng, 8, 40, 3, t_max=5.0)
    W, tau = rng.normal(size=(40, 10)), np.ones(10)
    launched = []

    def launch(*args, **kw):
        launched.append(args[1])
        return host_kernels.launch(*args, **kw)

    monkeypatch.setattr(_readout, "DETERMINISTIC", True)
    previous = ss.set_memory_limit(8 * 8 * 40 * 10 - 1)  # one float64 short of the forward's partial sums
    try:
        with pytest.raises(MemoryError, match=r"li_forward\(batch=8, n_in=40, n_out=10\) with .*set_deterministic"):
            _readout.forward(np, launch, t, W, tau, tau, "final", 4.0, None)
        assert launched == []
    finally:
        ss.set_memory_limit(previous)
    out = _readout.forward(np, launch, t, W, tau, tau, "final", 4.0, None)
    assert launched == ["spikescan_li_linear_forward"] and out.values.shape == (8, 10)


@pytest.mark.parametrize("readout", ["final", "integral", "max"])
def test_readout_empty_inputs(backend, readout):
    t = np.zeros((2, 3, 0))
    W = np.ones((3, 2))
    tau = np.ones(2)
    out = _readout.forward(backend.xp, backend.ro_launch, backend.to_device(t), backend.to_device(W),
                           backend.to_device(tau), backend.to_device(tau), readout, 1.0, None)
    assert not backend.to_host(out.values).any()
    g = _readout.backward(backend.xp, backend.ro_launch, out, backend.xp.ones((2, 2)))
    assert backend.to_host(g.input_times).shape == (2, 3, 0) and not backend.to_host(g.weights).any()


# ---------------------------------------------------------------------------------------------------------------
# No GPU needed
# ---------------------------------------------------------------------------------------------------------------

def test_compile_check_with_nvrtc(monkeypatch):
    """``python -m spikescan.cuda --check`` (``_kernels.check``), which tools/test.sh runs on every kernel before the
    tests, passes a module that compiles and counts one that does not; every instantiation's compile is asserted by
    test_cuda_resources (ptxas resources on sm_80 and sm_90), so this compiles one small module only."""
    if _kernels.nvrtc_module() is None:
        pytest.skip("NVRTC is not available")
    assert _kernels.check(("90",), modules=("queue",), verbose=False) == 0
    source = _kernels.source
    monkeypatch.setattr(_kernels, "source", lambda module: source(module) + "\nthis is not C++;\n")
    assert _kernels.check(("90",), modules=("queue",), verbose=False) == 1


def test_nothing_compiles_at_import_and_sources_resolve():
    code = ("import spikescan, spikescan.cuda._lif, spikescan.cuda._readout; from spikescan.cuda import _kernels; "
            "assert not _kernels._cache")
    subprocess.run([sys.executable, "-c", code], check=True)
    for module in _kernels.MODULES:
        src = _kernels.source(module)
        assert "#include" not in src
        for name in _kernels.MODULES[module]:
            assert re.search(rf"__global__ void (SPIKESCAN_[A-Z_]+ )?{name}\(", src), name  # optional launch bound
        # Headers in subfolders (neurons/lif.cuh includes ../common.cuh) are inlined once each; a module templated on
        # the neuron model includes its header, the others (the delay queue) not.
        assert src.count("struct spikescan_affine_t {") == 1
        assert src.count("struct spikescan_lif {") == (1 if module in _kernels.MODULE_NEURONS else 0)
        if module in _kernels.MODULE_NEURONS:
            assert "template <typename T, class Neuron>" in src
            assert "template <typename T>\n__global__" not in src
    assert set(_kernels.MODULE_NEURONS) == set(_kernels.MODULES) - {"queue"}


def test_is_available_and_choose_method(monkeypatch):
    assert isinstance(is_available(), bool)
    assert choose_method(1, 16, 5000) == "scan"
    assert choose_method(1024, 512, 5000) == "sequential"
    assert choose_method(1, 16, 10) == "sequential"
    # Permutation queues (delays): the scan at every batch (H200: 83 ms against 119 ms at batch 256 x 512).
    assert choose_method(1024, 512, 5000, permuted=True) == "scan"
    assert choose_method(1, 16, 10, permuted=True) == "sequential"
    import spikescan.cuda as cuda

    monkeypatch.setattr(cuda, "SCAN_ON_PERMUTED", False)  # the rule before that run (gpu_perf's older variants)
    assert choose_method(1024, 512, 5000, permuted=True) == "sequential"


@pytest.mark.parametrize("permuted", [True, False])
def test_auto_forward_takes_the_scan_on_permutation_queues(host_kernels, monkeypatch, permuted):
    """``method="auto"`` tells ``choose_method`` the queue format: on a shape where the thread-per-neuron kernel
    would be chosen (the thread threshold lowered to 0 here), a layer with delays and permutation queues runs the
    scan, one with materialised queues the sequential kernel."""
    import spikescan.cuda as cuda

    monkeypatch.setattr(cuda, "_SEQUENTIAL_THREADS_PER_SM", 0)
    monkeypatch.setattr(_queue, "PERMUTATION", permuted)
    rng = np.random.default_rng(5)
    t = random_spikes(rng, 2, 30, 4, t_max=20.0)
    assert int(np.isfinite(t).sum(axis=(1, 2)).max()) >= cuda._MIN_SCAN_QUEUE
    W, D = rng.normal(0.3, 0.2, size=(30, 4)), rng.uniform(0.0, 3.0, size=(30, 4))
    launched = []

    def launch(*args, **kw):
        launched.append(args[1])
        return host_kernels.launch(*args, **kw)

    tc = np.full(4, 10.0), np.full(4, 5.0), np.ones(4)
    out = _lif.forward(np, launch, t, W, D, *tc, 8, "auto", 32, "newton")
    assert (out.residuals.queue_perm is not None) == permuted
    forward = [k for k in launched if k.startswith("spikescan_lif_forward")]
    assert forward == (["spikescan_lif_forward_scan"] if permuted else ["spikescan_lif_forward_sequential"])


def test_permutation_memory_estimate():
    """The CUDA forward's estimate counts the permutation format's 2 bytes per queue entry plus the shared queue."""
    from spikescan import _memory

    args = (4, 10, 3, 8, 29, 5, True, "sequential", 32, 8, "cupy")
    materialised = _memory.lif_forward_estimate(*args)["queues"]
    permuted = _memory.lif_forward_estimate(*args, permutation=True)["queues"]
    assert materialised == 40 * 4 * 8 * 30
    assert permuted == 2 * 4 * 8 * 30 + 24 * 4 * 30


@pytest.mark.parametrize("delays", [False, True])
@pytest.mark.parametrize("method", ["sequential", "scan", "step"])
def test_entry_table_is_read_where_it_applies(host_kernels, monkeypatch, method, delays):
    """With ``ENTRY_TABLE`` the kernels take weights and delays from the table wherever ``entry_table_applies`` says
    (the scan kernel on any shared queue, every kernel on permutation queues), and nowhere else: a table whose
    weights are doubled changes the spikes exactly there. Bit-identity with the table intact is checked by every
    ``check_case``."""
    monkeypatch.setattr(_lif, "ENTRY_TABLE", True)
    monkeypatch.setattr(_queue, "PERMUTATION", True)
    rng = np.random.default_rng(11)
    t = random_spikes(rng, 2, 12, 4, t_max=10.0)
    W = rng.normal(0.4, 0.3, size=(12, 5))
    D = rng.uniform(0.0, 2.0, size=(12, 5)) if delays else None
    tc = np.full(5, 5.0), np.full(5, 2.5), np.ones(5)
    plain = _lif.forward(np, host_kernels.launch, t, W, D, *tc, 8, method, 32, "newton")
    assert plain.counts.sum() > 0
    build = _lif.entry_table_args

    def doubled(xp, src, W, D, table):
        args = build(xp, src, W, D, table)
        if table:
            args[1][..., 0] *= 2.0
        return args

    monkeypatch.setattr(_lif, "entry_table_args", doubled)
    out = _lif.forward(np, host_kernels.launch, t, W, D, *tc, 8, method, 32, "newton")
    applies = _lif.entry_table_applies(method, 1, delays)
    assert applies == (method == "scan" or delays)
    assert np.array_equal(out.counts, plain.counts) != applies
    monkeypatch.setattr(_lif, "ENTRY_TABLE", False)
    assert not _lif.entry_table_applies(method, 1, delays)



def test_staged_scan_runs_where_the_queue_fits(host_kernels, monkeypatch):
    """``STAGED_SCAN``: the scan on permutation queues launches the staged kernel with 12 bytes of shared memory per
    shared-queue entry; where that exceeds the device's shared memory, or without permutation queues, the plain scan
    runs. Bit-identity with the plain scan is checked by every ``check_case``."""
    monkeypatch.setattr(_lif, "STAGED_SCAN", True)
    rng = np.random.default_rng(13)
    t = random_spikes(rng, 3, 10, 4, t_max=10.0)
    W, D = rng.normal(0.5, 0.3, size=(10, 6)), rng.uniform(0.0, 2.0, size=(10, 6))
    tc = np.full(6, 5.0), np.full(6, 2.5), np.ones(6)
    launched = []

    def launch(module, kernel, dtype, grid, block, args, shared_mem=0):
        launched.append((kernel, shared_mem))
        return host_kernels.launch(module, kernel, dtype, grid, block, args, shared_mem)

    L1 = int(np.isfinite(t).sum(axis=(1, 2)).max()) + 1
    for permuted, max_shared, staged in ((True, None, True), (True, 12 * L1 - 1, False), (False, None, False)):
        monkeypatch.setattr(_queue, "PERMUTATION", permuted)
        if max_shared is not None:
            monkeypatch.setattr(_queue, "_max_shared", lambda xp: max_shared)
        launched.clear()
        out = _lif.forward(np, launch, t, W, D, *tc, 8, "scan", 32, "newton")
        forward = [k for k in launched if k[0].startswith("spikescan_lif_forward")]
        assert forward == ([("spikescan_lif_forward_scan_staged", 12 * L1)] if staged
                           else [("spikescan_lif_forward_scan", 0)]), (permuted, max_shared)
        assert out.counts.sum() > 0
        monkeypatch.undo()
        monkeypatch.setattr(_lif, "STAGED_SCAN", True)
    # The staged kernel reads the entry table even with ENTRY_TABLE off (its sources are staged from it).
    assert not _lif.ENTRY_TABLE
    recorded = {}

    def record(module, kernel, dtype, grid, block, args, shared_mem=0):
        recorded[kernel] = args
        return host_kernels.launch(module, kernel, dtype, grid, block, args, shared_mem)

    _lif.forward(np, record, t, W, D, *tc, 8, "scan", 32, "newton")
    args = recorded["spikescan_lif_forward_scan_staged"]
    assert args[22] == 1 and args[20].dtype == np.int32 and args[21].shape == (6, 10, 2)  # entry_src, _wd, _table


def test_scan_prefetch_is_its_own_kernel(host_kernels, monkeypatch):
    """``SCAN_PREFETCH`` runs ``spikescan_lif_forward_scan_prefetch`` (a separate instantiation, so that the plain
    scan kernel's code and registers stay as they were) and gives the plain scan's spikes bit for bit; the staged
    kernel takes it as an argument."""
    monkeypatch.setattr(_queue, "PERMUTATION", True)
    rng = np.random.default_rng(21)
    # ~200 entries per queue and weak weights: long quiet stretches, whose rounds take the prefetched chunk.
    t = random_spikes(rng, 2, 50, 4, t_max=40.0)
    W, D = rng.normal(0.12, 0.1, size=(50, 4)), rng.uniform(0.0, 2.0, size=(50, 4))
    tc = np.full(4, 5.0), np.full(4, 2.5), np.ones(4)
    plain = _lif.forward(np, host_kernels.launch, t, W, D, *tc, 8, "scan", 32, "newton")
    assert 0 < plain.counts.sum() < int(plain.residuals.queue_end.sum()) // 32
    launched = []

    def launch(module, kernel, dtype, grid, block, args, shared_mem=0):
        launched.append(kernel)
        return host_kernels.launch(module, kernel, dtype, grid, block, args, shared_mem)

    monkeypatch.setattr(_lif, "SCAN_PREFETCH", True)
    out = _lif.forward(np, launch, t, W, D, *tc, 8, "scan", 32, "newton")
    assert [k for k in launched if k.startswith("spikescan_lif_forward")] == ["spikescan_lif_forward_scan_prefetch"]
    for name in ("times", "counts"):
        np.testing.assert_array_equal(getattr(out, name), getattr(plain, name))
    np.testing.assert_array_equal(out.residuals.spike_event, plain.residuals.spike_event)
