"""The CUDA kernel of the closed-form (EventProp-form) backward (``kernels/lif_backward_closed.cu`` through
``spikescan.cuda._closed.backward_closed``), gradient by gradient against the NumPy sequential backward.

Every case runs on the host emulation (``emulated``) and on the GPU (``gpu``, marker ``gpu``, skipped without a
device), for forwards from both CUDA forward kernels (``sequential``, ``scan``): the spike records must equal the
NumPy forward's (so the spans are the same), and every gradient the kernel computes must agree with
``ss.lif_backward(ref, G, method="sequential", engine="numpy")`` within ``TOL[dtype]["grads"]``. Sizes are small: the
emulation runs a coroutine per CUDA thread.
"""

from __future__ import annotations

import itertools
import re
import types
import warnings
from pathlib import Path

import numpy as np
import pytest

import spikescan as ss
from spikescan.cuda import _closed, _lif, _queue

from _cases import random_spikes, weights
from test_closed_backward import _case, burst_grazing_cutoff
from test_cuda import BACKENDS, Backend, assert_identical_spikes, permutation
from test_reliability import GRAZE, grazing_layer
from tolerances import TOL

FORWARD_METHODS = ("sequential", "scan")
GRAD_NAMES = ("weights", "input_times", "delays", "threshold")


@pytest.fixture(params=BACKENDS)
def backend(request):
    return Backend(request.param, request)


# The kernel's two ways of summing the entries' contributions: atomics, or (``_closed.DETERMINISTIC``) per-spike
# records and the two source-major kernels.
REDUCTIONS = (False, True)


def closed(backend, result, G, input_times_grad=True, deterministic=False, time_constant_grads=False):
    """``backward_closed`` on ``backend`` with the warnings it issued."""
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        g = _closed.backward_closed(backend.xp, backend.launch, result, backend.to_device(G), input_times_grad,
                                    deterministic, time_constant_grads)
    return g, [w.message for w in rec]


def reference(kw, G, input_times_grad=True):
    """NumPy forward and sequential backward of the case ``kw`` (``lif_forward`` keyword arguments)."""
    r = ss.lif_forward(**kw, method="sequential", engine="numpy")
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        g = ss.lif_backward(r, G, method="sequential", engine="numpy", input_times_grad=input_times_grad)
    return r, g, [w.message for w in rec]


def assert_same_grads(ref, out, backend, dtype="float64", label=""):
    assert out.tau_mem is None and out.tau_syn is None
    for name in GRAD_NAMES:
        a, b = getattr(ref, name), backend.to_host(getattr(out, name))
        if a is None:
            assert b is None, f"grad_{name} {label}"
            continue
        b = np.asarray(b)
        assert b.shape == np.shape(a) and b.dtype == np.asarray(a).dtype, f"grad_{name} {label}"
        np.testing.assert_allclose(b, a, err_msg=f"grad_{name} {label}", **TOL[dtype]["grads"])


def assert_entry_table_changes_nothing(backend, out, G, flag, g, label, time_constant_grads=False):
    """The closed form with the other ``_lif.ENTRY_TABLE`` setting gives gradients ``g`` again where the forward's
    queue is a shared one (the table applies): the same doubles in the same sums, so bit for bit in the emulation
    (one thread applies the atomic adds in order) and to the atomics' rounding on a GPU."""
    saved = _lif.ENTRY_TABLE
    _lif.ENTRY_TABLE = not saved
    try:
        other, _ = closed(backend, out, G, flag, False, time_constant_grads)
    finally:
        _lif.ENTRY_TABLE = saved
    for gname in GRAD_NAMES + (("tau_mem", "tau_syn") if time_constant_grads else ()):
        a, b = getattr(g, gname), getattr(other, gname)
        if a is None:
            assert b is None, gname
            continue
        a, b = backend.to_host(a), backend.to_host(b)
        if backend.name == "gpu":
            np.testing.assert_allclose(b, a, rtol=1e-13, atol=1e-13, err_msg=f"grad_{gname} {label} (ENTRY_TABLE)")
        else:
            np.testing.assert_array_equal(b, a, err_msg=f"grad_{gname} {label} (other ENTRY_TABLE)")


def assert_shared_accumulators_agree(backend, out, G, flag, g, label, time_constant_grads=False):
    """``_closed.SHARED_ACCUMULATORS`` (with the entry table where it applies): the weight and delay gradients summed
    per neuron in shared memory before one global add per source give ``g`` to rounding (the same terms in another
    order), every other gradient bit for bit in the emulation."""
    saved = _closed.SHARED_ACCUMULATORS, _lif.ENTRY_TABLE
    _closed.SHARED_ACCUMULATORS, _lif.ENTRY_TABLE = True, True
    try:
        other, _ = closed(backend, out, G, flag, False, time_constant_grads)
    finally:
        _closed.SHARED_ACCUMULATORS, _lif.ENTRY_TABLE = saved
    for gname in GRAD_NAMES + (("tau_mem", "tau_syn") if time_constant_grads else ()):
        a, b = getattr(g, gname), getattr(other, gname)
        if a is None:
            assert b is None, gname
            continue
        a, b = backend.to_host(a), backend.to_host(b)
        if gname in ("weights", "delays") or backend.name == "gpu":
            np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-13,
                                       err_msg=f"grad_{gname} {label} (SHARED_ACCUMULATORS)")
        else:
            np.testing.assert_array_equal(b, a, err_msg=f"grad_{gname} {label} (SHARED_ACCUMULATORS)")


def check(backend, kw, G=None, dtype="float64", label=""):
    """Both CUDA forwards of case ``kw``, then the closed-form kernel against the NumPy sequential backward (with and
    without input-time gradients); returns the NumPy forward."""
    r = ss.lif_forward(**kw, method="sequential", engine="numpy")
    if G is None:
        G = np.random.default_rng(5).normal(size=r.times.shape).astype(r.times.dtype)
    refs = {flag: reference(kw, G, flag) for flag in (True, False)}
    for method in FORWARD_METHODS:
        out = backend.lif(kw["input_times"], kw["weights"], kw.get("delays"), tau_mem=kw["tau_mem"],
                          tau_syn=kw["tau_syn"], threshold=kw["threshold"], max_spikes=kw["max_spikes"],
                          method=method)
        np.testing.assert_array_equal(backend.to_host(out.counts), r.counts)
        np.testing.assert_array_equal(backend.to_host(out.residuals.spike_event), r.residuals.spike_event)
        for (flag, (_, g_ref, warned_ref)), det in itertools.product(refs.items(), REDUCTIONS):
            g, warned = closed(backend, out, G, flag, det)
            assert_same_grads(g_ref, g, backend, dtype,
                              f"{label} forward={method} input_times_grad={flag} deterministic={det}")
            assert [str(w) for w in warned] == [str(w) for w in warned_ref]
            if not det:
                assert_entry_table_changes_nothing(backend, out, G, flag, g, f"{label} forward={method}")
                assert_shared_accumulators_agree(backend, out, G, flag, g, f"{label} forward={method}")
    return r


CASES = ("plain", "delays", "ties", "per_neuron_threshold", "equal_time_constants", "per_neuron_time_constants",
         "capped", "bursts", "silent", "long_span")


@pytest.mark.parametrize("name", CASES)
def test_closed_kernel_on_the_case_suite(backend, name):
    kw = _case(name)
    r = check(backend, kw, label=name)
    assert np.isfinite(r.times).any()
    if name == "capped":
        assert r.capped_spikes > 0
    if name == "bursts":
        ev = r.residuals.spike_event
        assert ((ev[..., 1:] == ev[..., :-1]) & (ev[..., 1:] >= 0)).any()  # several spikes in one gap
    if name == "silent":
        assert (r.counts == 0).any()
    if name == "ties":
        qt = r.residuals.queue_times
        assert (np.isfinite(qt[..., 1:]) & (qt[..., 1:] == qt[..., :-1])).any()


@pytest.mark.parametrize("algorithm", ["bitonic", "counting"])
@pytest.mark.parametrize("name", ["delays", "ties", "near_equal_time_constants"])
def test_closed_kernel_on_permutation_queues(backend, name, algorithm):
    """Forwards that keep their queues as permutations of the shared queue (``_queue.PERMUTATION``, layers with
    delays, both queue kernels): the kernel reads them through common.cuh's ``spikescan_queue_t`` and gives the
    gradients it gives on the materialised queues of the same case, and the NumPy sequential backward's."""
    kw = _case(name)
    assert kw.get("delays") is not None
    r = ss.lif_forward(**kw, method="sequential", engine="numpy")
    G = np.random.default_rng(9).normal(size=r.times.shape).astype(r.times.dtype)
    refs = {flag: reference(kw, G, flag) for flag in (True, False)}
    args = (kw["input_times"], kw["weights"], kw["delays"])
    opts = dict(tau_mem=kw["tau_mem"], tau_syn=kw["tau_syn"], threshold=kw["threshold"], max_spikes=kw["max_spikes"])
    for method in FORWARD_METHODS:
        label = f"{name} forward={method} on permuted queues ({algorithm})"
        with permutation(False, algorithm):  # materialised queues (the default is the permutation format)
            out = backend.lif(*args, **opts, method=method)
        assert out.residuals.queue_perm is None
        with permutation(True, algorithm):
            permuted = backend.lif(*args, **opts, method=method)
        res = permuted.residuals
        assert res.queue_perm is not None and res.queue_times is None and res.queue_index is None
        assert_identical_spikes(out, permuted, backend, label)
        for (flag, (_, g_ref, warned_ref)), det in itertools.product(refs.items(), REDUCTIONS):
            g_mat, _ = closed(backend, out, G, flag, det)
            g, warned = closed(backend, permuted, G, flag, det)
            assert_same_grads(g_ref, g, backend, label=f"{label} input_times_grad={flag} deterministic={det}")
            assert [str(w) for w in warned] == [str(w) for w in warned_ref]
            if not det:
                assert_entry_table_changes_nothing(backend, permuted, G, flag, g, label)
                assert_shared_accumulators_agree(backend, permuted, G, flag, g, label)
            for gname in GRAD_NAMES:
                a, b = getattr(g_mat, gname), getattr(g, gname)
                if a is None:
                    assert b is None, gname
                    continue
                # Same arrivals bit for bit, so equal up to the order of the atomic sums (deterministic: the same
                # sums in the same order).
                if det:
                    np.testing.assert_array_equal(backend.to_host(b), backend.to_host(a),
                                                  err_msg=f"grad_{gname} {label} input_times_grad={flag}")
                    continue
                np.testing.assert_allclose(backend.to_host(b), backend.to_host(a), rtol=1e-13, atol=1e-13,
                                           err_msg=f"grad_{gname} {label} input_times_grad={flag} vs materialised")


def test_spans_longer_than_two_warps(backend):
    """Spans of more than 64 queue entries (several 32-entry strides of the warp) and many entries in all."""
    rng = np.random.default_rng(11)
    t = np.sort(rng.uniform(0.0, 200.0, (1, 6, 30)), axis=-1)
    kw = dict(input_times=t, weights=weights(rng, 6, 3, mean=0.14, std=0.05), tau_mem=20.0, tau_syn=10.0,
              threshold=1.0, max_spikes=6)
    r = check(backend, kw, label="long spans")
    ev = r.residuals.spike_event
    spans = np.diff(np.concatenate([np.zeros(ev.shape[:-1] + (1,), ev.dtype), ev], axis=-1), axis=-1)
    assert (spans[ev >= 0] > 64).any()


def test_float32(backend):
    rng = np.random.default_rng(8)
    t = random_spikes(rng, 2, 8, 4, dtype=np.float32)
    kw = dict(input_times=t, weights=weights(rng, 8, 4).astype(np.float32),
              delays=rng.uniform(0, 3, (8, 4)).astype(np.float32), tau_mem=10.0, tau_syn=5.0, threshold=1.0,
              max_spikes=6)
    r = check(backend, kw, dtype="float32", label="float32")
    assert r.counts.sum() > 0


def test_grazing_spike_warns_with_the_numpy_fields(backend):
    t, W = grazing_layer()
    kw = dict(input_times=t, weights=W, max_spikes=4, threshold=1.0, **GRAZE)
    r = ss.lif_forward(**kw, method="sequential", engine="numpy")
    G = np.random.default_rng(0).normal(size=r.times.shape)
    _, g_ref, warned_ref = reference(kw, G)
    assert len(warned_ref) == 1
    for method in FORWARD_METHODS:
        out = backend.lif(t, W, tau_mem=GRAZE["tau_mem"], tau_syn=GRAZE["tau_syn"], max_spikes=4, method=method)
        np.testing.assert_array_equal(backend.to_host(out.counts), r.counts)
        for det in REDUCTIONS:
            g, warned = closed(backend, out, G, deterministic=det)
            if backend.name == "gpu" and not warned:
                # Whether the peak is exactly at the threshold depends on the last bit of the device's exp(-1).
                continue
            assert len(warned) == 1 and isinstance(warned[0], ss.GrazingSpikeWarning)
            a, b = warned_ref[0], warned[0]
            assert (b.count, b.sample, b.neuron, b.time) == (a.count, a.sample, a.neuron, a.time) == (1, 1, 2, 12.0)
            assert str(b) == str(a)
            assert_same_grads(g_ref, g, backend, label=f"grazing forward={method} deterministic={det}")


def test_rebased_closed_form_decides_grazing_as_the_exponentials_do(backend, monkeypatch):
    """``_closed.REBASED``: the tabulated factors round the current at a spike differently from the exponentials,
    and at a spike whose voltage peaks exactly at the threshold that rounding decides the sign of the crossing slope.
    Such a spike (current within ``NEAR_GRAZING`` of the threshold) has the currents recomputed with the
    exponentials, as the compiled engine does: the same warning and gradients as the NumPy backward, in both
    reductions and with the time constants' gradients. Before, the atomic kernel divided by a slope of about 1e-16
    (gradients near 1e15, no warning). Cases: equal time constants (``V`` peaks at 6.0 at the threshold) and the
    grazing layer of the other tests."""
    monkeypatch.setattr(_closed, "REBASED", True)
    flags = _spy_rebased(backend, monkeypatch)
    t1, W1 = np.array([[[1.0], [1.0]]]), np.array([[np.e / 2], [np.e / 2]])
    t2, W2 = grazing_layer()
    for label, t, W, taus in (("equal", t1, W1, dict(tau_mem=5.0, tau_syn=5.0)), ("layer", t2, W2, GRAZE)):
        r = ss.lif_forward(t, W, max_spikes=3, method="sequential", engine="numpy", **taus)
        G = np.random.default_rng(int(r.counts.sum()) + 1).normal(size=r.times.shape)
        with warnings.catch_warnings(record=True) as rec:
            warnings.simplefilter("always")
            ref = ss.lif_backward(r, G, method="sequential", engine="numpy", time_constant_grads=True)
        assert [type(w.message) for w in rec] == [ss.GrazingSpikeWarning], label
        for method in FORWARD_METHODS:
            out = backend.lif(t, W, max_spikes=3, method=method, **taus)
            np.testing.assert_array_equal(backend.to_host(out.counts), r.counts)
            for det, tau in itertools.product(REDUCTIONS, (False, True)):
                flags.clear()
                g, warned = closed(backend, out, G, deterministic=det, time_constant_grads=tau)
                if backend.name == "gpu" and not warned:
                    continue  # whether the peak is exactly at the threshold depends on the device's exp
                assert flags and all(f == int(not det) for f in flags), (flags, det)  # rebased: atomic mode only
                assert [str(w) for w in warned] == [str(rec[0].message)], (label, method, det, tau)
                for gname in GRAD_NAMES + (("tau_mem", "tau_syn") if tau else ()):
                    if gname == "delays":
                        assert g.delays is None and ref.delays is None
                        continue
                    np.testing.assert_allclose(backend.to_host(getattr(g, gname)), getattr(ref, gname),
                                               err_msg=f"grad_{gname} {label} forward={method} det={det} tau={tau}",
                                               **TOL["float64"]["grads"])


def test_near_grazing_bound_is_the_compiled_engines():
    """The CUDA closed form's ``SPIKESCAN_NEAR_GRAZING`` is ``_lif_numba.NEAR_GRAZING``: both engines redo the same
    spikes with the exponentials."""
    pytest.importorskip("numba")
    from spikescan import _lif_numba

    source = (Path(_closed.__file__).parent / "kernels" / "lif_backward_closed.cu").read_text()
    (value,) = re.findall(r"#define SPIKESCAN_NEAR_GRAZING (\S+)", source)
    assert float(value) == _lif_numba.NEAR_GRAZING


def test_grazing_bookkeeping_after_spikes_and_after_arrivals(backend):
    """Grazing spikes inside bursts: one after another spike of the same gap passes its time derivative to that spike
    (the carry), one after an arrival to the arrival's time. Exact grazing cannot be built at will there. The closed
    form reads the threshold only in the crossing slope D = (I - threshold) / tau_mem and the threshold's gradient, so
    handing it the forward's record with the threshold replaced by a cutoff between the spikes' currents makes every
    spike with I below the cutoff grazing (D < 0). The reference here is the NumPy closed form on the same record
    (whose grazing bookkeeping test_closed_backward checks against the sequential backward by forcing D instead): the
    sequential backward also uses V = threshold at each spike implicitly, so it answers a different question for a
    record whose threshold was swapped."""
    kw = _case("bursts")
    r = ss.lif_forward(**kw, method="sequential", engine="numpy")
    cutoff, forced = burst_grazing_cutoff(r)
    ev = r.residuals.spike_event
    n_out = kw["weights"].shape[1]

    def forced_grazing(result, xp):
        res = result.residuals._replace(threshold=xp.full(n_out, cutoff), threshold_is_scalar=False)
        return result._replace(residuals=res)

    G = np.random.default_rng(3).normal(size=r.times.shape)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        ref = ss.lif_backward(forced_grazing(r, np), G, method="closed", engine="numpy")
    assert len(rec) == 1 and rec[0].message.count == int(forced.sum())
    for method in FORWARD_METHODS:
        out = backend.lif(kw["input_times"], kw["weights"], tau_mem=kw["tau_mem"], tau_syn=kw["tau_syn"],
                          max_spikes=kw["max_spikes"], method=method)
        np.testing.assert_array_equal(backend.to_host(out.residuals.spike_event), ev)
        for det in REDUCTIONS:
            g, warned = closed(backend, forced_grazing(out, backend.xp), G, deterministic=det)
            assert_same_grads(ref, g, backend, label=f"forced grazing, forward={method} deterministic={det}")
            assert [str(w) for w in warned] == [str(rec[0].message)]


def test_groups_of_neurons_give_the_same_gradients(backend, monkeypatch):
    kw = _case("delays")
    r = backend.lif(kw["input_times"], kw["weights"], kw["delays"], tau_mem=kw["tau_mem"], tau_syn=kw["tau_syn"],
                    max_spikes=kw["max_spikes"], method="sequential")
    G = np.random.default_rng(7).normal(size=r.times.shape)
    whole, _ = closed(backend, r, G)
    calls = []

    def one_at_a_time(*args):
        calls.append(args)
        return 1

    monkeypatch.setattr(_closed._memory, "fit_backward_group", one_at_a_time)
    split, _ = closed(backend, r, G)
    assert calls
    for name in GRAD_NAMES:
        np.testing.assert_allclose(backend.to_host(getattr(split, name)), backend.to_host(getattr(whole, name)),
                                   rtol=1e-13, atol=1e-13, err_msg=name)


@pytest.mark.parametrize("name", ["delays", "ties"])
def test_deterministic_reductions_do_not_depend_on_grouping_or_blocks(backend, monkeypatch, name):
    """The deterministic reductions sum every gradient in one fixed order (samples, then each source's spikes; or
    neurons), so gradients are bit for bit the same with the samples in groups of one and with small blocks."""
    kw = _case(name)
    r = backend.lif(kw["input_times"], kw["weights"], kw["delays"], tau_mem=kw["tau_mem"], tau_syn=kw["tau_syn"],
                    max_spikes=kw["max_spikes"], method="sequential")
    G = np.random.default_rng(7).normal(size=r.times.shape)
    whole, _ = closed(backend, r, G, deterministic=True, time_constant_grads=True)
    calls = []

    def one_at_a_time(*args):
        calls.append(args)
        return 1

    with monkeypatch.context() as m:
        m.setattr(_closed._memory, "fit_backward_group", one_at_a_time)
        split, _ = closed(backend, r, G, deterministic=True, time_constant_grads=True)
    assert calls and r.counts.shape[0] > 1
    with monkeypatch.context() as m:
        m.setattr(_closed._lif, "SMALL_GRID_BLOCK", 32)
        small, _ = closed(backend, r, G, deterministic=True, time_constant_grads=True)
    for name in GRAD_NAMES + ("tau_mem", "tau_syn"):
        for other in (split, small):
            np.testing.assert_array_equal(backend.to_host(getattr(other, name)), backend.to_host(getattr(whole, name)),
                                          err_msg=name)


@pytest.mark.parametrize("name", ["plain", "delays", "per_neuron_time_constants", "near_equal_time_constants",
                                  "equal_time_constants", "bursts", "capped"])
def test_time_constant_gradients(backend, name):
    """``time_constant_grads=True``: the entries' and the spans' opening terms (both reductions) against the NumPy
    sequential backward, every gradient by name, both CUDA forwards."""
    kw = _case(name)
    r = ss.lif_forward(**kw, method="sequential", engine="numpy")
    G = np.random.default_rng(6).normal(size=r.times.shape)
    ref = ss.lif_backward(r, G, method="sequential", engine="numpy", time_constant_grads=True)
    for method, det in itertools.product(FORWARD_METHODS, REDUCTIONS):
        out = backend.lif(kw["input_times"], kw["weights"], kw.get("delays"), tau_mem=kw["tau_mem"],
                          tau_syn=kw["tau_syn"], threshold=kw["threshold"], max_spikes=kw["max_spikes"],
                          method=method)
        g, _ = closed(backend, out, G, deterministic=det, time_constant_grads=True)
        for gname in GRAD_NAMES + ("tau_mem", "tau_syn"):
            a, b = getattr(ref, gname), backend.to_host(getattr(g, gname))
            if a is None:
                assert b is None, gname
                continue
            assert np.shape(b) == np.shape(a), gname
            np.testing.assert_allclose(b, a, err_msg=f"grad_{gname} {name} forward={method} deterministic={det}",
                                       **TOL["float64"]["grads"])
        if not det:
            assert_entry_table_changes_nothing(backend, out, G, True, g, f"{name} forward={method}",
                                               time_constant_grads=True)
            assert_shared_accumulators_agree(backend, out, G, True, g, f"{name} forward={method}",
                                             time_constant_grads=True)
        assert np.abs(ref.tau_mem).max() > 0 and np.abs(ref.tau_syn).max() > 0


def test_deterministic_spans_split_tied_arrivals_as_the_record_says(backend):
    """Which span an entry belongs to is the record's decision (``spike_event``), also inside a run of equal
    arrivals: from different input times through the delays, and from equal input times (then by source). The
    record is edited so that a span ends inside such runs; the source-major kernels, which compare keys (arrival,
    input time, source) instead of queue positions, must split the run where the queue-walking kernel does."""
    rng = np.random.default_rng(4)
    n_in, n_out = 6, 3
    t = np.sort(rng.integers(0, 6, (2, n_in, 3)).astype(np.float64), axis=-1)
    D = rng.integers(0, 3, (n_in, n_out)).astype(np.float64)  # integer times: many exactly equal arrivals
    W = weights(rng, n_in, n_out, mean=0.5, std=0.3)
    with permutation(False):  # the record is edited against materialised queues
        out = backend.lif(t, W, D, tau_mem=8.0, tau_syn=4.0, max_spikes=4, method="sequential")
    res = out.residuals
    qt = backend.to_host(res.queue_times)
    ev = backend.to_host(res.spike_event).copy()
    n_rec = np.minimum(backend.to_host(out.counts), ev.shape[-1])
    edited = 0
    for b, i in zip(*np.nonzero(n_rec > 0)):
        row = qt[b, i]
        ties = np.nonzero(np.isfinite(row[1:]) & (row[1:] == row[:-1]))[0] + 1  # k with arrival k == arrival k - 1
        last = ev[b, i, n_rec[b, i] - 1]
        for k in ties[ties < last][:1]:
            m = int(np.searchsorted(ev[b, i, :n_rec[b, i]], k, side="right"))  # the span that holds entry k
            lo = ev[b, i, m - 1] if m > 0 else 0
            if lo < k:
                ev[b, i, m] = k  # span m now ends between the two equal arrivals
                edited += 1
    assert edited >= 2
    src = backend.to_host(res.queue_index)
    assert any((src[b, i, k] // 3 != src[b, i, k - 1] // 3) for b, i, k in zip(*np.nonzero(
        np.isfinite(qt[..., 1:]) & (qt[..., 1:] == qt[..., :-1])))), "no tie across sources"
    edited_out = out._replace(residuals=res._replace(spike_event=backend.to_device(ev)))
    G = rng.normal(size=out.times.shape)
    for flag in (True, False):
        walk, _ = closed(backend, edited_out, G, flag, deterministic=False)
        det, _ = closed(backend, edited_out, G, flag, deterministic=True)
        plain, _ = closed(backend, out, G, flag, deterministic=True)
        assert not np.allclose(backend.to_host(det.weights), backend.to_host(plain.weights))  # the edit matters
        for name in GRAD_NAMES:
            a, b = getattr(walk, name), getattr(det, name)
            if a is None:
                assert b is None
                continue
            np.testing.assert_allclose(backend.to_host(b), backend.to_host(a), rtol=1e-12, atol=1e-12,
                                       err_msg=f"grad_{name} input_times_grad={flag}")


def test_deterministic_needs_the_shared_queue():
    """A result whose residuals lack the shared queue (a layer with delays not run by the CUDA forward) is refused
    with the reason, not summed wrongly."""
    kw = _case("delays")
    r = ss.lif_forward(**kw, method="sequential", engine="numpy")
    with pytest.raises(ValueError, match="shared input queue"):
        _closed.backward_closed(np, None, r, np.zeros(r.times.shape), True, True)


def test_a_silent_layer_and_one_spike_slot(backend):
    rng = np.random.default_rng(3)
    t = random_spikes(rng, 2, 5, 3)
    for W in (-np.abs(weights(rng, 5, 3)), weights(rng, 5, 3, mean=1.5)):
        kw = dict(input_times=t, weights=W, tau_mem=10.0, tau_syn=5.0, threshold=1.0, max_spikes=1)
        r = check(backend, kw, label=f"silent={W.max() < 0}")
        assert (r.counts.sum() == 0) == (W.max() < 0)


@pytest.mark.gpu
def test_public_wrapper_with_time_constants():
    from spikescan.cuda import is_available

    if not is_available():
        pytest.skip("no CUDA device")
    import cupy

    kw = _case("per_neuron_time_constants")
    r = ss.lif_forward(**kw, method="sequential", engine="numpy")
    G = np.random.default_rng(2).normal(size=r.times.shape)
    ref = ss.lif_backward(r, G, method="sequential", engine="numpy", time_constant_grads=True)
    out = ss.lif_forward(**{k: cupy.asarray(v) if isinstance(v, np.ndarray) else v for k, v in kw.items()})
    g = _closed.lif_backward_closed_cuda(out, cupy.asarray(G), True, True)
    for name in GRAD_NAMES + ("tau_mem", "tau_syn"):
        a, b = getattr(ref, name), getattr(g, name)
        if a is None:
            assert b is None
            continue
        np.testing.assert_allclose(cupy.asnumpy(b), a, err_msg=name, **TOL["float64"]["grads"])
    g = _closed.lif_backward_closed_cuda(out, cupy.asarray(G), False, False)
    assert g.input_times is None and g.tau_mem is None
    np.testing.assert_allclose(cupy.asnumpy(g.weights), ref.weights, **TOL["float64"]["grads"])


@pytest.mark.gpu
def test_public_api_cupy_in_cupy_out():
    """``spikescan.lif_backward(method="closed")`` on CuPy inputs runs the kernel and returns CuPy arrays."""
    from spikescan.cuda import is_available

    if not is_available():
        pytest.skip("no CUDA device")
    import cupy

    kw = _case("delays")
    r = ss.lif_forward(**kw, method="sequential", engine="numpy")
    G = np.random.default_rng(3).normal(size=r.times.shape)
    ref = ss.lif_backward(r, G, method="sequential", engine="numpy")
    out = ss.lif_forward(**{k: cupy.asarray(v) if isinstance(v, np.ndarray) else v for k, v in kw.items()})
    g = ss.lif_backward(out, cupy.asarray(G), method="closed")
    for name in GRAD_NAMES:
        a, b = getattr(ref, name), getattr(g, name)
        if a is None:
            assert b is None
            continue
        assert isinstance(b, cupy.ndarray), name
        np.testing.assert_allclose(cupy.asnumpy(b), a, err_msg=name, **TOL["float64"]["grads"])


@pytest.mark.gpu
@pytest.mark.parametrize("method", ["closed", "sequential"])
def test_gpu_grazing_warning_points_at_the_callers_line(method):
    """Through the public ``spikescan.lif_backward`` on CuPy inputs, the grazing warning is attributed to the line
    that called it (each CUDA backward path passes its own ``stacklevel``), as on NumPy."""
    from spikescan.cuda import is_available

    if not is_available():
        pytest.skip("no CUDA device")
    import cupy as cp

    t, W = grazing_layer()
    r = ss.lif_forward(cp.asarray(t), cp.asarray(W), max_spikes=4, method="sequential", **GRAZE)
    G = cp.asarray(np.random.default_rng(0).normal(size=r.times.shape))
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        ss.lif_backward(r, G, method=method)
    grazing = [w for w in rec if isinstance(w.message, ss.GrazingSpikeWarning)]
    if not grazing:
        pytest.skip("no grazing spike on this device (the peak's last bit depends on the device's exp)")
    assert len(grazing) == 1 and grazing[0].filename == __file__, [(w.filename, w.lineno) for w in grazing]


def _spy_rebased(backend, monkeypatch):
    """Patches ``backend.launch`` to record, for every launch of the closed-form neuron kernel, whether it was the
    rebased one."""
    flags = []
    real = backend.launch

    def spy(module, kernel, dtype, grid, block, args, shared_mem=0):
        if kernel.startswith(_closed.KERNEL) and not kernel.startswith(_closed.SYNAPSES_KERNEL):
            flags.append(int(kernel.endswith(_closed.REBASED_SUFFIX)))
        return real(module, kernel, dtype, grid, block, args, shared_mem)

    monkeypatch.setattr(backend, "launch", spy)
    return flags


REBASED_CASES = ("plain", "delays", "ties", "per_neuron_threshold", "capped", "bursts", "silent", "long_span",
                 "near_equal_time_constants", "per_neuron_time_constants", "equal_time_constants")


@pytest.mark.parametrize("name", REBASED_CASES)
def test_rebased_closed_form(backend, monkeypatch, name):
    """``_closed.REBASED``: the entries' exponentials of the closed form as products of tabulated factors (PERF.md
    P3b with P1c). Every gradient, the time constants' included, against the NumPy sequential backward, from both
    CUDA forwards and either queue format; the kernel gets the tables exactly where one pair of time constants
    and finite factors allow them (not per-neuron time constants, nor a span of 60 s at tau 5 ms)."""
    kw = _case(name)
    monkeypatch.setattr(_closed, "REBASED", True)
    flags = _spy_rebased(backend, monkeypatch)
    applies = name not in ("per_neuron_time_constants", "long_span")  # several pairs; t / tau up to 12000
    r = ss.lif_forward(**kw, method="sequential", engine="numpy")
    G = np.random.default_rng(7).normal(size=r.times.shape)
    ref = ss.lif_backward(r, G, method="sequential", engine="numpy", time_constant_grads=True)
    for method, fmt in itertools.product(FORWARD_METHODS, (False, True)):
        with permutation(fmt):
            out = backend.lif(kw["input_times"], kw["weights"], kw.get("delays"), tau_mem=kw["tau_mem"],
                              tau_syn=kw["tau_syn"], threshold=kw["threshold"], max_spikes=kw["max_spikes"],
                              method=method)
        for tau in (False, True):
            flags.clear()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ss.GrazingSpikeWarning)
                g = _closed.backward_closed(backend.xp, backend.launch, out, backend.to_device(G), True, False, tau)
            assert flags and all(f == int(applies) for f in flags), (flags, applies)
            for gname in GRAD_NAMES + (("tau_mem", "tau_syn") if tau else ()):
                if getattr(ref, gname) is None:
                    assert getattr(g, gname) is None, gname
                    continue
                np.testing.assert_allclose(backend.to_host(getattr(g, gname)), getattr(ref, gname),
                                           err_msg=f"grad_{gname} {name} forward={method} permuted={fmt} tau={tau}",
                                           **TOL["float64"]["grads"])


def test_rebased_closed_form_falls_back_beyond_its_exponent_limit(backend, monkeypatch):
    """Input times beyond ``REBASED_MAX_EXPONENT * min(tau)`` would overflow ``e^{t/tau}``: the kernel keeps the
    exponentials there, and the gradients stay the reference's."""
    kw = _case("plain")
    kw["input_times"] = kw["input_times"] + 700.0 * 5.0  # t / tau_syn > 700
    monkeypatch.setattr(_closed, "REBASED", True)
    flags = _spy_rebased(backend, monkeypatch)
    r = ss.lif_forward(**kw, method="sequential", engine="numpy")
    assert r.counts.sum() > 0
    G = np.random.default_rng(8).normal(size=r.times.shape)
    ref = ss.lif_backward(r, G, method="sequential", engine="numpy")
    out = backend.lif(kw["input_times"], kw["weights"], None, tau_mem=kw["tau_mem"], tau_syn=kw["tau_syn"],
                      threshold=kw["threshold"], max_spikes=kw["max_spikes"], method="sequential")
    g, _ = closed(backend, out, G)
    assert flags == [0]
    assert_same_grads(ref, g, backend, label="beyond the exponent limit")


@pytest.mark.parametrize("delays", [False, True])
def test_closed_kernel_reads_the_entry_table(host_kernels, monkeypatch, delays):
    """With ``_lif.ENTRY_TABLE``, the closed form takes each entry's weight and delay from the table on a shared
    queue (no delays, or permutation queues): a table with doubled weights changes the gradients; the kernel does
    not read it from materialised delayed queues, whose gradients stay the same."""
    monkeypatch.setattr(_lif, "ENTRY_TABLE", True)
    kw = _case("delays")
    if not delays:
        kw["delays"] = None
    backend = types.SimpleNamespace(xp=np, launch=host_kernels.launch, to_device=lambda x: x, to_host=lambda x: x)
    build = _lif.entry_table_args

    def doubled(xp, src, W, D, table):
        args = build(xp, src, W, D, table)
        if table:
            args[1][..., 0] *= 2.0
        return args

    for permuted in ((False, True) if delays else (False,)):
        monkeypatch.setattr(_queue, "PERMUTATION", permuted)
        out = _lif.forward(np, host_kernels.launch, kw["input_times"], kw["weights"], kw["delays"],
                           np.full(kw["weights"].shape[1], float(kw["tau_mem"])),
                           np.full(kw["weights"].shape[1], float(kw["tau_syn"])), kw["threshold"], kw["max_spikes"],
                           "sequential", 32, "newton")
        assert out.counts.sum() > 0
        G = np.random.default_rng(3).normal(size=out.times.shape)
        plain, _ = closed(backend, out, G)
        with monkeypatch.context() as m:
            m.setattr(_lif, "entry_table_args", doubled)
            changed, _ = closed(backend, out, G)
        reads = permuted or not delays
        assert np.array_equal(changed.weights, plain.weights) != reads, (delays, permuted)


def test_shared_accumulators_launch_and_block_sizes(host_kernels, monkeypatch):
    """``SHARED_ACCUMULATORS`` launches the ``_x`` kernel with one warp's rows (8 bytes per source, twice with
    delays) of shared memory per warp, halving the block until the rows fit; where one warp's rows do not fit it
    runs the per-entry atomics; its sums reach the gradients (a kernel that dropped them would zero grad_weights)."""
    assert _closed.accumulator_block(256, 11200, 232448) == 256  # the SHD network: 700 sources with delays
    assert _closed.accumulator_block(256, 40000, 232448) == 128
    assert _closed.accumulator_block(64, 11200, 232448) == 64
    assert _closed.accumulator_block(256, 232448, 232448) == 32
    assert _closed.accumulator_block(256, 232449, 232448) is None
    monkeypatch.setattr(_closed, "SHARED_ACCUMULATORS", True)
    kw = _case("delays")
    out = _lif.forward(np, host_kernels.launch, kw["input_times"], kw["weights"], kw["delays"],
                       np.full(kw["weights"].shape[1], float(kw["tau_mem"])),
                       np.full(kw["weights"].shape[1], float(kw["tau_syn"])), kw["threshold"], kw["max_spikes"],
                       "sequential", 32, "newton")
    G = np.random.default_rng(4).normal(size=out.times.shape)
    launched = []

    def launch(module, kernel, dtype, grid, block, args, shared_mem=0):
        launched.append((kernel, block, shared_mem))
        return host_kernels.launch(module, kernel, dtype, grid, block, args, shared_mem)

    backend = types.SimpleNamespace(xp=np, launch=launch, to_device=lambda x: x, to_host=lambda x: x)
    g, _ = closed(backend, out, G)
    n_in = kw["weights"].shape[0]
    kernel, block, shared = launched[-1]
    assert kernel == "spikescan_lif_backward_closed_x" and shared == block // 32 * 16 * n_in
    assert np.abs(g.weights).max() > 0 and np.abs(g.delays).max() > 0
    monkeypatch.setattr(_queue, "_max_shared", lambda xp: 16 * n_in - 1)  # one warp's rows do not fit
    launched.clear()
    plain, _ = closed(backend, out, G)
    assert launched[-1][0] == "spikescan_lif_backward_closed" and launched[-1][2] == 0
    np.testing.assert_allclose(plain.weights, g.weights, rtol=1e-12, atol=1e-13)
