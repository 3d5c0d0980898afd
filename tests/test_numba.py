"""The compiled CPU engine (``engine="numba"``): same results as the NumPy reference, deterministic for any number
of threads, its shortcuts exact, and a clear choice of engine. Equality on random layers is in test_fuzz.py and
every test of test_lif.py and test_reliability.py runs on both engines (tests/conftest.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

import spikescan as ss
from spikescan import _lif_numpy
from spikescan.neurons import lif

from tolerances import TOL

numba = pytest.importorskip("numba")
from spikescan import _lif_numba  # noqa: E402  (needs numba)


def _layer(seed, batch=6, n_in=40, max_in=3, n_out=24, delays=False, mean=0.2):
    rng = np.random.default_rng(seed)
    t = rng.uniform(0, 40, (batch, n_in, max_in))
    t[rng.random(t.shape) < 0.25] = np.inf
    t = np.sort(t, axis=-1)
    W = rng.normal(mean, 0.4, (n_in, n_out))
    D = rng.uniform(0, 4, (n_in, n_out)) if delays else None
    return t, W, D


def _digest(out, grads):
    return [np.asarray(x).tobytes() for x in (out.times, out.counts, out.residuals.spike_event, grads.weights,
                                               grads.input_times, grads.threshold)
            ] + ([grads.delays.tobytes()] if grads.delays is not None else [])


def _run(t, W, D, tau_mem=10.0, method="sequential"):
    out = ss.lif_forward(t, W, delays=D, tau_mem=tau_mem, tau_syn=5.0, max_spikes=6, method=method, chunk_size=4,
                         engine="numba")
    G = np.random.default_rng(3).normal(size=out.times.shape)
    return out, ss.lif_backward(out, G, engine="numba")


@pytest.mark.parametrize("delays", [False, True])
def test_bitwise_identical_for_any_thread_count_and_dispatch(delays, monkeypatch):
    t, W, D = _layer(0, batch=8, n_out=40, delays=delays)
    monkeypatch.setattr(_lif_numba, "SERIAL_WORK", 0)  # parallel kernels even for this small layer
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = _digest(*_run(t, W, D))
        numba.set_num_threads(before)
        many = _digest(*_run(t, W, D))
    finally:
        numba.set_num_threads(before)
    monkeypatch.setattr(_lif_numba, "SERIAL_WORK", 1 << 62)  # the serial compilation
    serial = _digest(*_run(t, W, D))
    assert one == many == serial
    assert _digest(*_run(t, W, D)) == many  # run to run


_CACHE_PROBE = """
import json, sys
import numpy as np
from spikescan import _lif_numba as m
qt, qe = np.array([[1.0, 2.5, 4.0]]), np.array([3])
for v in sys.argv[1:]:
    getattr(m.decay_table, v)(qt, qe, 10.0, 5.0)
print(json.dumps({v: [len(getattr(m.decay_table, v).stats.cache_hits),
                      len(getattr(m.decay_table, v).stats.cache_misses)] for v in sys.argv[1:]}))
"""


def _cache_prober(tmp_path, root):
    """``probe(*variants)``: runs ``_CACHE_PROBE`` in a fresh process on the spikescan package under ``root``, with
    the disk cache in ``tmp_path / "cache"``; returns its ``{variant: [hits, misses]}``."""
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"),
               PYTHONPATH=os.pathsep.join([str(root), *filter(None, [os.environ.get("PYTHONPATH")])]))

    def probe(*variants):
        out = subprocess.run([sys.executable, "-c", _CACHE_PROBE, *variants], env=env, cwd=tmp_path,
                             capture_output=True, text=True, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])

    return probe


_THREADS_PROBE = """
import numba
from concurrent.futures import ThreadPoolExecutor
import numpy as np
import spikescan as ss
rng = np.random.default_rng(0)
t = np.sort(rng.uniform(0, 50, (64, 100, 5)), -1)
W = rng.normal(0.1, 0.2, (100, 128))
kw = dict(tau_mem=10.0, tau_syn=5.0, engine="numba")

def run(_):
    r = ss.lif_forward(t, W, max_spikes=8, **kw)
    g = ss.lif_backward(r, np.where(np.isfinite(r.times), 1.0, 0.0), engine="numba")
    m = ss.li_forward(t, W, readout="max", t_max=60.0, **kw)
    p = ss.peak_voltage(t, W, **kw)
    return r.times, g.weights, m.values, p.values

first = run(0)
assert numba.threading_layer() == "workqueue", numba.threading_layer()
with ThreadPoolExecutor(4) as pool:
    for out in pool.map(run, range(12)):
        assert all(np.array_equal(a, b) for a, b in zip(out, first))
print("ok")
"""


def test_parallel_kernels_from_many_threads_on_the_workqueue_layer():
    """Python threads calling the compiled kernels at once (jax's host callbacks of several devices, TensorFlow's
    inter-op threads, a thread pool) on Numba's workqueue threading layer, which is not threadsafe (the fallback
    without OpenMP or TBB): the parallel launches take turns instead of aborting the process, and every thread gets
    the single-threaded results bit for bit."""
    env = dict(os.environ, NUMBA_THREADING_LAYER="workqueue")
    out = subprocess.run([sys.executable, "-c", _THREADS_PROBE], env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]


def test_parallel_and_serial_compilations_have_separate_disk_caches(tmp_path):
    """Each kernel is compiled with and without ``parallel=True``, both with ``cache=True``. Numba's disk cache is
    keyed by the function's name, line and signature, not by its flags: if both compilations came from one function,
    whichever ran first would be loaded by both in every later process (a serial kernel on the parallel path).
    Fresh cache: the serial one compiled alone, then the parallel one must miss; after that both hit, and the files
    hold one kernel with parallel loops (Numba's ``parfor`` functions) and one without."""
    probe = _cache_prober(tmp_path, os.path.dirname(os.path.dirname(os.path.abspath(ss.__file__))))
    assert probe("serial") == {"serial": [0, 1]}
    assert probe("parallel") == {"parallel": [0, 1]}  # not the serial kernel from the cache
    assert probe("serial", "parallel") == {"serial": [1, 0], "parallel": [1, 0]}
    files = [os.path.join(d, f) for d, _, names in os.walk(tmp_path / "cache") for f in names if "decay_table" in f]
    assert len([f for f in files if f.endswith(".nbi")]) == 2, files  # one index per compilation
    data = [open(f, "rb").read() for f in files if f.endswith(".nbc")]
    assert sorted(b"parfor" in d for d in data) == [False, True]  # one serial and one parallel kernel on disk


def test_disk_cache_follows_the_neuron_model(tmp_path):
    """Numba's disk cache checks only the file that defines a kernel; the kernels call the neuron model's scalar forms
    in ``neurons/lif.py``. A copy of the package with a fresh cache: compiled once (miss), loaded next time (hit);
    after an edit of ``neurons/lif.py`` alone (a comment: same mtime and size for ``_lif_numba.py``) the kernel must
    compile again instead of loading code built from the old model."""
    import shutil

    pkg = os.path.dirname(os.path.abspath(ss.__file__))
    shutil.copytree(pkg, tmp_path / "src" / "spikescan", ignore=shutil.ignore_patterns("__pycache__"))
    probe = _cache_prober(tmp_path, tmp_path / "src")
    assert probe("serial") == {"serial": [0, 1]}
    assert probe("serial") == {"serial": [1, 0]}
    with open(tmp_path / "src" / "spikescan" / "neurons" / "lif.py", "a") as f:
        f.write("\n# edited\n")
    assert probe("serial") == {"serial": [0, 1]}
    assert probe("serial") == {"serial": [1, 0]}


def test_decay_table_changes_nothing():
    """The shared decay table (one pair of time constants, no delays) against per-neuron decays (the same time
    constants given per neuron but not all equal, so the table is off): identical bits for the equal neurons."""
    t, W, _ = _layer(1, n_out=10)
    shared = _run(t, W, None, tau_mem=10.0)
    tm = np.full(10, 10.0)
    tm[-1] = 11.0  # one different neuron switches the table off
    per = _run(t, W, None, tau_mem=tm)
    np.testing.assert_array_equal(shared[0].times[:, :-1], per[0].times[:, :-1])
    np.testing.assert_array_equal(shared[0].counts[:, :-1], per[0].counts[:, :-1])


@pytest.mark.parametrize("method", ["sequential", "scan"])
def test_compiled_equals_reference_with_per_neuron_constants_and_delays(method):
    rng = np.random.default_rng(2)
    t, W, D = _layer(2, n_out=16, delays=True, mean=0.3)
    tm, ts = rng.uniform(4, 20, 16), rng.uniform(2, 10, 16)
    kw = dict(delays=D, tau_mem=tm, tau_syn=ts, max_spikes=5, method=method, chunk_size=3)
    ref = ss.lif_forward(t, W, engine="numpy", **{**kw, "method": "sequential"})
    out = ss.lif_forward(t, W, engine="numba", **kw)
    assert ref.counts.sum() > 20
    np.testing.assert_array_equal(out.counts, ref.counts)
    np.testing.assert_array_equal(out.residuals.spike_event, ref.residuals.spike_event)
    np.testing.assert_allclose(out.times, ref.times, **TOL["float64"]["times"])
    G = rng.normal(size=ref.times.shape)
    a, b = ss.lif_backward(ref, G, engine="numpy"), ss.lif_backward(out, G, engine="numba")
    for name in ("weights", "input_times", "delays", "threshold"):
        np.testing.assert_allclose(getattr(b, name), getattr(a, name), **TOL["float64"]["grads"], err_msg=name)
    # input_times_grad=False: the same other gradients, no input-time gradient.
    c = ss.lif_backward(out, G, engine="numba", input_times_grad=False)
    assert c.input_times is None
    np.testing.assert_array_equal(c.weights, b.weights)


def test_backward_blocks_of_samples_give_the_same_gradients(monkeypatch):
    """Input-time gradients are gathered per block of samples: tiny blocks change no bit (fixed sum order)."""
    t, W, D = _layer(4, batch=5, delays=True, mean=0.3)
    out = ss.lif_forward(t, W, delays=D, tau_mem=10.0, tau_syn=5.0, max_spikes=6, engine="numba")
    G = np.random.default_rng(0).normal(size=out.times.shape)
    whole = ss.lif_backward(out, G, engine="numba")
    monkeypatch.setattr(_lif_numpy, "_COMPILED_ARRIVAL_BYTES", 1)  # one sample per block
    blocks = ss.lif_backward(out, G, engine="numba")
    for name in ("weights", "input_times", "delays", "threshold"):
        np.testing.assert_array_equal(getattr(blocks, name), getattr(whole, name), err_msg=name)


def test_float32_and_cap_and_errors_match_reference():
    t, W, _ = _layer(5, mean=0.5)
    t32, W32 = t.astype(np.float32), W.astype(np.float32)
    kw = dict(tau_mem=10.0, tau_syn=5.0, max_spikes=2)
    ref = ss.lif_forward(t32, W32, engine="numpy", **kw)
    out = ss.lif_forward(t32, W32, engine="numba", **kw)
    assert out.times.dtype == np.float32 and ref.capped_spikes > 0 and out.capped_spikes == ref.capped_spikes
    np.testing.assert_array_equal(out.counts, ref.counts)
    np.testing.assert_allclose(out.times, ref.times, **TOL["float32"]["times"])
    G = np.ones_like(out.times)
    g_ref, g_out = ss.lif_backward(ref, G, engine="numpy"), ss.lif_backward(out, G, engine="numba")
    assert g_out.weights.dtype == np.float32 and g_out.input_times.dtype == np.float32
    np.testing.assert_allclose(g_out.weights, g_ref.weights, **TOL["float32"]["grads"])
    # Runaway firing: the same error fields as the reference.
    big = np.array([[[0.0]]]), np.array([[1e15]])
    errs = []
    for engine in ("numpy", "numba"):
        with pytest.raises(ss.RunawayFiringError) as info:
            ss.lif_forward(*big, tau_mem=10.0, tau_syn=5.0, max_spikes=2, max_total_spikes=100, engine=engine)
        errs.append((info.value.sample, info.value.neuron, info.value.limit, info.value.time))
    assert errs[0][:3] == errs[1][:3] and errs[0][3] == pytest.approx(errs[1][3], rel=1e-12)


def test_grazing_warning_from_the_compiled_backward():
    t, W = np.array([[[2.0]]]), np.array([[np.e]])
    r = ss.lif_forward(t, W, tau_mem=10.0, tau_syn=10.0, max_spikes=2, engine="numba")
    assert r.counts[0, 0] == 1
    with pytest.warns(ss.GrazingSpikeWarning, match="neuron 0 of sample 0"):
        g = ss.lif_backward(r, np.ones_like(r.times), engine="numba")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ss.GrazingSpikeWarning)
        ref = ss.lif_backward(r, np.ones_like(r.times), engine="numpy")
    assert np.isfinite(g.weights).all()
    np.testing.assert_allclose(g.weights, ref.weights, rtol=1e-12)


def test_engine_argument():
    t, W, _ = _layer(6)
    kw = dict(tau_mem=10.0, tau_syn=5.0, max_spikes=3)
    with pytest.raises(ValueError, match="engine must be one of .*'fortran'"):
        ss.lif_forward(t, W, engine="fortran", **kw)
    r = ss.lif_forward(t, W, **kw)
    with pytest.raises(ValueError, match="engine"):
        ss.lif_backward(r, np.ones_like(r.times), engine="gpu")
    assert _lif_numpy.resolve_engine("auto") == "numba"


def test_without_numba_auto_falls_back_and_numba_says_how_to_install(monkeypatch):
    monkeypatch.setattr(_lif_numpy, "numba_available", lambda: False)
    t, W, _ = _layer(7)
    kw = dict(tau_mem=10.0, tau_syn=5.0, max_spikes=3)
    assert _lif_numpy.resolve_engine("auto") == "numpy"
    ref = ss.lif_forward(t, W, engine="numpy", **kw)
    for name in ("forward_sequential", "forward_lanes", "forward_scan", "forward_rebased"):
        monkeypatch.setattr(_lif_numba, name, lambda *args: pytest.fail("a compiled kernel ran"))
    out = ss.lif_forward(t, W, **kw)  # "auto": the NumPy engine, not a compiled kernel
    assert ref.counts.sum() > 0
    np.testing.assert_array_equal(out.times, ref.times)
    with pytest.raises(ImportError, match=r"spikescan\[cpu\]"):
        ss.lif_forward(t, W, engine="numba", **kw)


def test_quiet_gap_shortcut_never_hides_a_spike():
    """``quiet_gap`` only says "no spike" where the full gap test says so too, including states a few ulps from
    the threshold; and it does fire the shortcut on most quiet gaps (else it would save nothing)."""
    rng = np.random.default_rng(9)
    quiet = shortcut = 0
    for n in range(20000):
        tm, ts = rng.uniform(1, 20), rng.uniform(1, 20)
        s = rng.exponential(3)
        v0 = rng.uniform(-0.5, 1.0) if n % 3 else 1.0 - rng.integers(1, 50) * 2.2e-16
        i0 = rng.uniform(-1, 3) if n % 5 else 1.0 + rng.integers(-50, 50) * 2.2e-16
        a, b, c = lif.decay_scalar(s, tm, ts)
        fires, _ = lif.fires_in_gap_scalar(v0, i0, s, tm, ts, 1.0)
        fires_ref = bool(lif.fires_in_gap(v0, i0, s, tm, ts, 1.0)[0])
        assert fires == fires_ref
        if lif.quiet_gap_scalar(v0, i0, a, b, c, 1.0):
            assert not fires_ref, (v0, i0, s, tm, ts)
            shortcut += 1
        quiet += not fires_ref
    assert shortcut > 0.5 * quiet


def test_environment_variable_chooses_the_auto_engine(monkeypatch):
    monkeypatch.setenv("SPIKESCAN_ENGINE", "numpy")
    assert _lif_numpy.resolve_engine("auto") == "numpy"
    assert _lif_numpy.resolve_engine("numba") == "numba"  # an explicit argument wins
    monkeypatch.setenv("SPIKESCAN_ENGINE", "numba")
    assert _lif_numpy.resolve_engine("auto") == "numba"
    monkeypatch.setenv("SPIKESCAN_ENGINE", "cuda")
    with pytest.raises(ValueError, match="SPIKESCAN_ENGINE.*'cuda'"):
        _lif_numpy.resolve_engine("auto")


def test_compiled_delayed_queues_equal_the_numpy_ones():
    """The compiled per-neuron sorts give the queues of ``_queue.build_queues`` bit for bit, ties included."""
    from spikescan import _queue

    rng = np.random.default_rng(10)
    for trial in range(3):
        t = rng.uniform(0, 50, (3, 20, 4))
        t[rng.random(t.shape) < 0.3] = np.inf
        t = np.sort(t, axis=-1)
        t[0, 1, 0] = t[0, 2, 0] = 5.0  # simultaneous inputs
        D = rng.uniform(0, 5, (20, 7))
        D[:, 3] = 1.0
        if trial == 2:
            D = np.round(D)  # many simultaneous arrivals
        for a, b in zip(_queue.build_queues(t, D, np), _lif_numpy._delayed_queues_compiled(t, D)):
            np.testing.assert_array_equal(a, b)


def _tie_heavy_layer(seed, batch=3, n_in=20, max_in=4, n_out=7):
    """Inputs and delays with simultaneous inputs and, through rounded delays, many simultaneous arrivals."""
    rng = np.random.default_rng(seed)
    t = np.sort(np.where(rng.random((batch, n_in, max_in)) < 0.3, np.inf,
                         np.round(rng.uniform(0, 50, (batch, n_in, max_in)), 1)), axis=-1)
    t[0, 1, 0] = t[0, 2, 0] = 5.0
    D = np.round(rng.uniform(0, 5, (n_in, n_out)), 1)
    D[:, 3] = 1.0
    D[:4, -1] = 0.0
    return t, D


@pytest.mark.parametrize("uint16", [True, False])
def test_compiled_permutation_expands_to_the_numpy_queues(uint16, monkeypatch):
    """The permutation format (``_lif_numba.delayed_permutation``) expands to the queues of
    ``_queue.build_queues`` bit for bit, ties included; uint16 positions, and int32 past
    ``PERMUTATION_MAX_UINT16`` (made small here)."""
    from spikescan import _queue

    if not uint16:
        monkeypatch.setattr(_lif_numpy, "PERMUTATION_MAX_UINT16", 4)
    for seed in range(3):
        t, D = _tie_heavy_layer(seed)
        q = _lif_numpy._delayed_queues_compiled(t, D, permutation=True)
        assert q.perm.dtype == (np.uint16 if uint16 else np.int32)
        ref_t, ref_i, ref_e = _queue.build_queues(t, D, np)
        q_t, q_i = _queue.expand(np, q.perm, q.times, q.index, q.delays_t, t.shape[2])
        np.testing.assert_array_equal(q_t, ref_t)
        np.testing.assert_array_equal(q_i, ref_i)
        np.testing.assert_array_equal(q.end, ref_e)
        # Every padding entry points at a padding position of its sample's shared queue.
        pad = np.arange(q.perm.shape[2]) >= ref_e[..., None]
        assert (q.index[np.arange(t.shape[0])[:, None, None], q.perm.astype(np.int64)][pad] == -1).all()


def _forward_backward(t, W, D, permutation, monkeypatch, method="sequential", **kw):
    monkeypatch.setattr(_lif_numpy, "COMPILED_PERMUTATION", permutation)
    kw = dict(delays=D, tau_mem=10.0, tau_syn=5.0, max_spikes=6, method=method, chunk_size=4, **kw)
    out = ss.lif_forward(t, W, engine="numba", **kw)
    G = np.random.default_rng(3).normal(size=out.times.shape)
    return out, ss.lif_backward(out, G, engine="numba", time_constant_grads=True), G


@pytest.mark.parametrize("method,n_out", [("sequential", 9), ("scan", 9), ("sequential", 1)])
def test_compiled_permutation_format_changes_no_bit(method, n_out, monkeypatch):
    """A layer with delays keeps its queues as a permutation of the shared queue on the compiled engine: 2 bytes
    per entry instead of 16, and the same bits as with materialised queues (spikes, every gradient), ties and
    per-neuron thresholds included, and for one neuron (whose queues, one per sample, look like a layer without
    delays'); the NumPy backward methods expand it. (The closed-form backward's rebased factors need the
    permutation's shared queue, so they are off here: with them the formats differ by rounding, which
    test_closed_backward's rebased tests bound.)"""
    monkeypatch.setattr(_lif_numpy, "COMPILED_REBASED_CLOSED", False)
    t, D = _tie_heavy_layer(7, batch=4, n_out=max(n_out, 6))
    D = D[:, :n_out]
    W = np.random.default_rng(7).normal(0.6, 0.5, (t.shape[1], n_out))
    th = np.linspace(0.8, 1.2, n_out)
    out_m, g_m, G = _forward_backward(t, W, D, False, monkeypatch, method, threshold=th)
    out_p, g_p, _ = _forward_backward(t, W, D, True, monkeypatch, method, threshold=th)
    res = out_p.residuals
    assert res.queue_times is None and res.queue_index is None and res.queue_perm.dtype == np.uint16
    assert out_m.residuals.queue_perm is None
    assert res.queue_length == out_m.residuals.queue_length
    assert out_m.counts.sum() > 4 * n_out
    for name in ("times", "counts"):
        np.testing.assert_array_equal(getattr(out_p, name), getattr(out_m, name), err_msg=name)
    np.testing.assert_array_equal(res.spike_event, out_m.residuals.spike_event)
    for name in ("weights", "input_times", "delays", "threshold", "tau_mem", "tau_syn"):
        np.testing.assert_array_equal(getattr(g_p, name), getattr(g_m, name), err_msg=name)
    for bwd in ("sequential", "closed"):
        a = ss.lif_backward(out_p, G, method=bwd, engine="numpy")
        b = ss.lif_backward(out_m, G, method=bwd, engine="numpy")
        for name in ("weights", "input_times", "delays", "threshold"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=f"{bwd} {name}")
    # Residual memory: the permutation and the shared queue (2 n_out + 16 bytes per input spike) against
    # [batch, n_out, L1] times and indices (16 n_out).
    held_p = res.queue_perm.nbytes + res.shared_times.nbytes + res.shared_index.nbytes
    held_m = out_m.residuals.queue_times.nbytes + out_m.residuals.queue_index.nbytes
    assert held_p == (2 * n_out + 16) * held_m // (16 * n_out)
    # Expanding them for a NumPy method is checked against the memory limit first.
    previous = ss.set_memory_limit(1000)
    try:
        with pytest.raises(MemoryError, match=r"expanding the queues of a layer with delays.*engine='numba'"):
            ss.lif_backward(out_p, G, method="sequential", engine="numpy")
    finally:
        ss.set_memory_limit(previous)


def test_compiled_permutation_chunks_change_no_bit(monkeypatch):
    """The kernels walk permuted queues in chunks of neurons, each expanding its rows into one scratch row: any
    number of chunks (one neuron each, several, one for all), serial or parallel, gives the same bits."""
    t, D = _tie_heavy_layer(9, batch=3, n_out=8)
    W = np.random.default_rng(9).normal(0.6, 0.5, (t.shape[1], 8))
    digests = {"sequential": [], "scan": []}  # the sequential forward sums rebased exponentials: other bits
    for per_thread, serial_work in ((1, 0), (3, 0), (1000, 0), (1, 1 << 62)):
        monkeypatch.setattr(_lif_numpy, "COMPILED_CHUNKS_PER_THREAD", per_thread)
        monkeypatch.setattr(_lif_numba, "SERIAL_WORK", serial_work)
        for method in digests:
            out, grads, _ = _forward_backward(t, W, D, True, monkeypatch, method)
            assert out.residuals.queue_perm is not None
            digests[method].append(_digest(out, grads) + [grads.tau_mem.tobytes(), grads.tau_syn.tobytes()])
    for method, found in digests.items():
        assert all(d == found[0] for d in found), method


def _rebased_and_exact(t, W, D, monkeypatch, **kw):
    """The compiled sequential forward with rebased exponential sums and with two exponentials per entry, the
    NumPy reference, and how many times ``forward_rebased`` ran."""
    kw = dict(delays=D, method="sequential", **kw)
    calls = []
    real = _lif_numba.forward_rebased
    monkeypatch.setattr(_lif_numba, "forward_rebased", lambda *a: (calls.append(1), real(*a))[1])
    monkeypatch.setattr(_lif_numpy, "COMPILED_REBASED", True)
    fast = ss.lif_forward(t, W, engine="numba", **kw)
    monkeypatch.setattr(_lif_numpy, "COMPILED_REBASED", False)
    exact = ss.lif_forward(t, W, engine="numba", **kw)
    ref = ss.lif_forward(t, W, engine="numpy", **kw)
    return fast, exact, ref, len(calls)


def _assert_same_spikes(out, ref, tol):
    np.testing.assert_array_equal(out.counts, ref.counts)
    np.testing.assert_array_equal(out.residuals.spike_event, ref.residuals.spike_event)
    np.testing.assert_allclose(out.times, ref.times, **tol)


REBASED_CASES = [  # tau_mem, tau_syn, input time span, weight mean, delay span, whether forward_rebased applies
    (20.0, 5.0, 40.0, 0.5, 4.0, True),
    (10.0, 4.0, 40.0, 0.3, 4.0, True),
    (4.0, 10.0, 40.0, 0.1, 4.0, True),  # tau_mem < tau_syn: r < 0
    (10.0, 8.8, 40.0, 0.3, 4.0, True),  # r = 7.3, near the limit: V is a difference of two large sums
    (2.0, 1.0, 2000.0, 1.2, 30.0, True),  # t / tau up to 2000: every exponent only through blocks and anchors
    (10.0, 9.0, 40.0, 0.3, 4.0, False),  # r = 9 > REBASED_MAX_R: the exponentials
    (5.0, 5.0, 40.0, 0.3, 4.0, False),  # equal time constants
    (4.0, 1.0, 40.0, 0.5, 40.0, False),  # delays over REBASED_MAX_DELAY * min(tau)
]


@pytest.mark.parametrize("tau_mem,tau_syn,span,mean,d_span,applies", REBASED_CASES)
def test_rebased_forward_equals_the_exponential_walk(tau_mem, tau_syn, span, mean, d_span, applies, monkeypatch):
    """The compiled sequential forward of a layer with delays sums rebased exponentials (``forward_rebased``, PERF.md
    P3b): the same spike counts and queue entries as the walk with two exponentials per entry and as the NumPy
    reference, spike times within the float64 tolerance, with ties, long silences (new anchors) and spans far
    beyond ``e^{t / tau}``'s range; the time constants where it would lose precision take the exponentials."""
    rng = np.random.default_rng(int(tau_mem * 100 + span))
    t = np.where(rng.random((4, 30, 5)) < 0.3, np.inf, rng.uniform(0, span, (4, 30, 5)))
    t[0, :3, 0] = 7.0  # simultaneous inputs
    t[1, :, :2] = rng.uniform(0, 5, (30, 2))  # a burst, then (small span) a long silence
    t[1, :, 2:] = rng.uniform(span * 3, span * 3 + 10, (30, 3))
    t = np.sort(t, axis=-1)
    D = np.round(rng.uniform(0, d_span, (30, 9)), 1)  # rounded: many simultaneous arrivals
    D[:, 0] = 0.0
    W = rng.normal(mean, 0.6, (30, 9))
    kw = dict(tau_mem=tau_mem, tau_syn=tau_syn, max_spikes=5, threshold=np.linspace(0.8, 1.2, 9))
    fast, exact, ref, calls = _rebased_and_exact(t, W, D, monkeypatch, **kw)
    assert calls == int(applies)
    assert ref.counts.sum() > 40 and (ref.counts > 5).any()  # recorded spikes and spikes past max_spikes
    _assert_same_spikes(fast, ref, TOL["float64"]["times"])
    _assert_same_spikes(fast, exact, TOL["float64"]["times"])
    if not applies:
        np.testing.assert_array_equal(fast.times, exact.times)
    # The backward takes the spike times as given: gradients within the tolerance of the exact walk's.
    G = rng.normal(size=fast.times.shape)
    g_fast = ss.lif_backward(fast, G, engine="numba", time_constant_grads=True)
    g_exact = ss.lif_backward(exact, G, engine="numba", time_constant_grads=True)
    for name in ("weights", "delays", "input_times", "threshold", "tau_mem", "tau_syn"):
        np.testing.assert_allclose(getattr(g_fast, name), getattr(g_exact, name), **TOL["float64"]["grads"],
                                   err_msg=name)


def test_rebased_forward_float32_cap_runaway_and_per_neuron_constants(monkeypatch):
    """float32 inputs (tables from their float64 values), the spike cap, and runaway firing (the same error) through
    the rebased walk; per-neuron time constants take the exponentials (the tables hold one pair)."""
    t, W, D = _layer(11, mean=0.5, delays=True)
    kw = dict(tau_mem=10.0, tau_syn=5.0, max_spikes=2)
    fast, exact, ref, calls = _rebased_and_exact(t.astype(np.float32), W.astype(np.float32), D.astype(np.float32),
                                                 monkeypatch, **kw)
    assert calls == 1 and fast.times.dtype == np.float32 and fast.capped_spikes == ref.capped_spikes > 0
    _assert_same_spikes(fast, ref, TOL["float32"]["times"])
    assert exact.times.dtype == np.float32
    _assert_same_spikes(exact, ref, TOL["float32"]["times"])
    _assert_same_spikes(fast, exact, TOL["float32"]["times"])
    errs = []
    for rebased in (True, False):
        monkeypatch.setattr(_lif_numpy, "COMPILED_REBASED", rebased)
        with pytest.raises(ss.RunawayFiringError) as info:
            ss.lif_forward(t, W * 1e12, delays=D, max_total_spikes=50, engine="numba", **kw)
        errs.append((info.value.sample, info.value.neuron, info.value.limit, info.value.time))
    assert errs[0][:3] == errs[1][:3] and errs[0][3] == pytest.approx(errs[1][3], rel=1e-12)
    per_neuron = dict(kw, tau_mem=np.linspace(8.0, 12.0, W.shape[1]))
    fast, exact, ref, calls = _rebased_and_exact(t, W, D, monkeypatch, **per_neuron)
    assert calls == 0 and ref.counts.sum() > 0
    _assert_same_spikes(fast, exact, dict(rtol=0, atol=0))  # both the exponentials: the same bits
    _assert_same_spikes(fast, ref, TOL["float64"]["times"])


@pytest.mark.parametrize("shape", [(0, 3, 2), (2, 0, 1), (2, 3, 0), (2, 3, 2)])
def test_rebased_forward_empty_shapes(shape, monkeypatch):
    """No sample, no input, no input slot, no input spike: the rebased walk returns what the exponential walk and
    the NumPy engine do."""
    t = np.full(shape, np.inf)
    W, D = np.ones((shape[1], 4)), np.ones((shape[1], 4))
    fast, exact, ref, calls = _rebased_and_exact(t, W, D, monkeypatch, tau_mem=10.0, tau_syn=5.0, max_spikes=2)
    assert calls == 1
    for out in (fast, exact):
        assert out.counts.shape == (shape[0], 4) and out.counts.sum() == 0
        np.testing.assert_array_equal(out.times, ref.times)
    # Both engines' backwards too (the NumPy engine once failed on a layer without inputs).
    for engine, out in (("numpy", ref), ("numba", fast)):
        g = ss.lif_backward(out, np.ones(out.times.shape), engine=engine)
        assert g.weights.shape == W.shape and not g.weights.any() and not g.delays.any()


def test_rebased_forward_is_the_same_for_any_chunking_and_format(monkeypatch):
    """Anchors and block factors are per neuron: any chunking of the neurons, serial or parallel, either queue
    format and any size of the block-factor cache (one slot: every other block evicts it) give the same bits."""
    t, D = _tie_heavy_layer(13, batch=3, n_out=8)
    W = np.random.default_rng(13).normal(0.6, 0.5, (t.shape[1], 8))
    kw = dict(delays=D, tau_mem=10.0, tau_syn=5.0, max_spikes=6, engine="numba")
    digests = []
    for per_thread, serial_work, permutation, cache in ((1, 0, True, 16), (3, 0, True, 1), (1000, 0, False, 2),
                                                        (1, 1 << 62, True, 16)):
        monkeypatch.setattr(_lif_numpy, "REBASED_CACHE", cache)
        monkeypatch.setattr(_lif_numpy, "COMPILED_CHUNKS_PER_THREAD", per_thread)
        monkeypatch.setattr(_lif_numba, "SERIAL_WORK", serial_work)
        monkeypatch.setattr(_lif_numpy, "COMPILED_PERMUTATION", permutation)
        out = ss.lif_forward(t, W, **kw)
        digests.append([out.times.tobytes(), out.counts.tobytes(), out.residuals.spike_event.tobytes()])
    assert all(d == digests[0] for d in digests)


def test_compiled_permutation_trace(monkeypatch):
    """``lif_trace`` of a layer with delays (its forward takes the permutation format) against the voltages from
    materialised queues."""
    from spikescan.trace import lif_trace

    t, D = _tie_heavy_layer(8, batch=2, n_out=5)
    W = np.random.default_rng(8).normal(0.6, 0.5, (t.shape[1], 5))
    grid = np.linspace(0.0, 60.0, 301)
    traces = {}
    for permutation in (True, False):
        monkeypatch.setattr(_lif_numpy, "COMPILED_PERMUTATION", permutation)
        traces[permutation] = lif_trace(t, W, grid, delays=D, tau_mem=10.0, tau_syn=5.0)
    for name in traces[True]._fields:
        np.testing.assert_array_equal(np.asarray(getattr(traces[True], name)),
                                      np.asarray(getattr(traces[False], name)), err_msg=name)


# ---------------------------------------------------------------------------------------------------------------
# Recurrent layers (``_recurrent_numba``): the compiled event loop and backward against the NumPy engine
# ---------------------------------------------------------------------------------------------------------------

def _recurrent_layer(seed, r_kind="mixed", d_kind="none", taus="tm>ts", input_delays=False, batch=3, n_in=8, n_out=6,
                     max_in=4, t_max=25.0, d_max=3.0):
    """A recurrent layer: ``(t, W, kwargs)``; every kind of loop keeps self-connections (a non-zero diagonal)."""
    rng = np.random.default_rng(seed)
    t = rng.uniform(0.0, t_max, (batch, n_in, max_in))
    t[rng.random(t.shape) < 0.2] = np.inf
    t = np.sort(t, axis=-1)
    W = rng.normal(0.9, 0.7, (n_in, n_out))
    R = {"excitatory": rng.uniform(0.02, 0.12, (n_out, n_out)), "inhibitory": rng.uniform(-0.6, -0.05, (n_out, n_out)),
         "mixed": rng.normal(0.0, 0.3, (n_out, n_out))}[r_kind]
    if r_kind == "mixed":
        R[np.diag_indices(n_out)] = np.resize([0.15, -0.5, 0.2], n_out)
    Dr = None
    if d_kind != "none":
        Dr = np.zeros((n_out, n_out)) if d_kind == "zero" else rng.uniform(0.2, d_max, (n_out, n_out))
        if d_kind == "some zero":
            Dr[rng.random(Dr.shape) < 0.4] = 0.0
    tau_mem, tau_syn = {"tm>ts": (8.0, 3.0), "tm<ts": (3.0, 5.0), "tm==ts": (5.0, 5.0),
                        "per-neuron": (rng.uniform(3.0, 9.0, n_out), rng.uniform(2.0, 6.0, n_out))}[taus]
    kw = dict(tau_mem=tau_mem, tau_syn=tau_syn, threshold=rng.uniform(0.8, 1.2, n_out), max_spikes=40,
              delays=rng.uniform(0.0, 4.0, (n_in, n_out)) if input_delays else None, recurrent_weights=R,
              recurrent_delays=Dr)
    return t, W, kw


def _assert_engines_agree(t, W, kw, min_spikes=20):
    """The compiled recurrent layer against the NumPy event loop: identical counts, events and log neurons; times,
    logged currents and every gradient (of either engine's forward; the time constants' too) within
    TOL["float64"]; both compiled methods are the same event loop, bit for bit."""
    ref = ss.lif_forward(t, W, engine="numpy", method="sequential", **kw)
    out = ss.lif_forward(t, W, engine="numba", method="sequential", **kw)
    assert ref.counts.sum() >= min_spikes
    np.testing.assert_array_equal(out.counts, ref.counts)
    np.testing.assert_array_equal(out.residuals.spike_event, ref.residuals.spike_event)
    fin = np.isfinite(ref.times)
    np.testing.assert_array_equal(np.isfinite(out.times), fin)
    np.testing.assert_allclose(out.times[fin], ref.times[fin], **TOL["float64"]["times"])
    la, lb = ref.residuals.recurrent_log, out.residuals.recurrent_log
    np.testing.assert_array_equal(lb.count, la.count)
    np.testing.assert_array_equal(lb.neurons, la.neurons)
    np.testing.assert_allclose(lb.times, la.times, **TOL["float64"]["times"])
    np.testing.assert_allclose(lb.currents, la.currents, **TOL["float64"]["times"])
    scan = ss.lif_forward(t, W, engine="numba", method="scan", chunk_size=2, **kw)
    np.testing.assert_array_equal(scan.times, out.times)
    G = np.random.default_rng(0).normal(size=ref.times.shape)
    g_ref = ss.lif_backward(ref, G, engine="numpy", time_constant_grads=True)
    for result in (out, ref):  # the compiled backward of either engine's forward
        g_out = ss.lif_backward(result, G, engine="numba", time_constant_grads=True)
        for name in ("weights", "input_times", "delays", "threshold", "recurrent_weights", "recurrent_delays",
                     "tau_mem", "tau_syn"):
            a, b = getattr(g_ref, name), getattr(g_out, name)
            if a is None:
                assert b is None, name
                continue
            np.testing.assert_allclose(b, a, **TOL["float64"]["grads"], err_msg=name)
    assert np.abs(g_ref.recurrent_weights).max() > 0.1
    return ref, out


RECURRENT_CASES = [
    # (recurrent weights, recurrent delays, time constants, input delays, max_spikes, input weight scale)
    ("mixed", "none", "tm>ts", False, 40, 1.0),
    ("excitatory", "positive", "tm>ts", True, 40, 1.0),
    ("inhibitory", "some zero", "tm==ts", True, 40, 1.0),
    ("mixed", "zero", "per-neuron", False, 40, 1.0),
    ("excitatory", "some zero", "tm<ts", False, 1, 0.3),  # capped recording: unrecorded spikes still propagate
    ("mixed", "positive", "tm==ts", True, 2, 1.0),
]


@pytest.mark.parametrize("r_kind,d_kind,taus,input_delays,max_spikes,w_scale", RECURRENT_CASES,
                         ids=["-".join(map(str, c[:5])) for c in RECURRENT_CASES])
def test_recurrent_compiled_equals_numpy(r_kind, d_kind, taus, input_delays, max_spikes, w_scale):
    t, W, kw = _recurrent_layer(11, r_kind, d_kind, taus, input_delays)
    kw["max_spikes"] = max_spikes
    ref, _ = _assert_engines_agree(t, w_scale * W, kw)
    if max_spikes < 3:
        assert ref.capped_spikes > 0


@pytest.mark.parametrize("d_kind", ["none", "positive"])
def test_recurrent_compiled_keeps_input_queues_as_a_permutation(d_kind, monkeypatch):
    """A compiled recurrent layer with input delays keeps its input queues as a permutation, and its forward and
    backward read them as they are (the forward expands one sample's queues at a time, the backward one row at a
    time; nothing expands the batch's, except for the time constants' unrolled layer): the same bits as with
    materialised queues (spikes, log, every gradient, time constants included), the NumPy backward from it, and
    the compiled expansion equal to ``_queue.expand``. The backward's rebased factors need the permutation's
    positions: off here (against the exponentials in
    ``test_recurrent_backward_rebases_the_input_entries_of_permuted_queues``)."""
    from spikescan import _queue, _recurrent_numba

    monkeypatch.setattr(_recurrent_numba, "REBASED", False)
    t, W, kw = _recurrent_layer(21, d_kind=d_kind, input_delays=True)
    out = {}
    for permutation in (True, False):
        monkeypatch.setattr(_lif_numpy, "COMPILED_PERMUTATION", permutation)
        with monkeypatch.context() as m:
            def no_batch_expansion(*args, **kw):
                raise AssertionError("the batch's queues were expanded")
            m.setattr(_queue, "expand_compiled", no_batch_expansion)
            m.setattr(_queue, "residual_queues", no_batch_expansion)
            r = ss.lif_forward(t, W, engine="numba", **kw)
            G = np.random.default_rng(2).normal(size=r.times.shape)
            g_plain = ss.lif_backward(r, G, engine="numba")
        out[permutation] = r, ss.lif_backward(r, G, engine="numba", time_constant_grads=True), G
        for name in ("weights", "input_times", "delays", "threshold", "recurrent_weights", "recurrent_delays"):
            a, b = getattr(g_plain, name), getattr(out[permutation][1], name)
            assert (a is None) == (b is None) and (a is None or np.array_equal(a, b)), name
    (rp, gp, G), (rm, gm, _) = out[True], out[False]
    res = rp.residuals
    assert res.queue_times is None and res.queue_perm is not None and rm.residuals.queue_perm is None
    assert rm.counts.sum() > 20
    for name in ("times", "counts"):
        np.testing.assert_array_equal(getattr(rp, name), getattr(rm, name), err_msg=name)
    for name in RecurrentLogFields:
        np.testing.assert_array_equal(getattr(res.recurrent_log, name), getattr(rm.residuals.recurrent_log, name))
    for name in ("weights", "input_times", "delays", "threshold", "recurrent_weights", "recurrent_delays",
                 "tau_mem", "tau_syn"):
        a, b = getattr(gp, name), getattr(gm, name)
        assert (a is None) == (b is None), name
        if a is not None:
            np.testing.assert_array_equal(a, b, err_msg=name)
    a = ss.lif_backward(rp, G, engine="numpy")
    b = ss.lif_backward(rm, G, engine="numpy")
    for name in ("weights", "input_times", "delays", "recurrent_weights"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=f"numpy {name}")
    q = (res.queue_perm, res.shared_times, res.shared_index, res.delays_t, t.shape[2])
    for x, y in zip(_queue.expand_compiled(*q), _queue.expand(np, *q)):
        np.testing.assert_array_equal(x, y)


RecurrentLogFields = ("times", "neurons", "currents", "count")


def test_recurrent_compiled_wide_layer_with_long_delays(monkeypatch):
    """More neurons than a few tree levels (and bulk rounds), recurrent delays long enough to pile up more than 16
    pending arrivals on one neuron: heaps that start at 4 fill twice, and the samples run again with 16 and 64
    (the same results as the NumPy engine's, and as heaps large enough from the start, bit for bit)."""
    from spikescan import _recurrent_numba

    t, W, kw = _recurrent_layer(12, "mixed", "positive", "tm>ts", False, batch=2, n_in=30, n_out=40, max_in=3,
                                t_max=40.0, d_max=6.0)
    kw["recurrent_weights"] *= 0.3
    monkeypatch.setattr(_recurrent_numba, "_heap_hints", {})  # heaps of 4 at first
    small = ss.lif_forward(t, 0.2 * W, engine="numba", **kw)
    # the largest heap a sample held, recorded by the run that completed: above 16, so that run had heaps of 64,
    # after runs with 4 and 16 that filled
    most = _recurrent_numba._heap_hints[(40, True)]
    assert most > 16
    monkeypatch.setattr(_recurrent_numba, "_heap_hints", {(40, True): 1000})
    large = ss.lif_forward(t, 0.2 * W, engine="numba", **kw)
    for name in ("times", "counts"):
        np.testing.assert_array_equal(getattr(small, name), getattr(large, name), err_msg=name)
    ref, _ = _assert_engines_agree(t, 0.2 * W, kw, min_spikes=60)
    assert ref.residuals.recurrent_log.count.min() > 40


def test_recurrent_heap_hints_are_per_layer_shape_and_only_from_calls_that_completed(monkeypatch):
    """The first heap capacity (and log length) of a call comes from the last completed call of the same shape: a
    runaway call (its heaps hold thousands of pending arrivals) leaves no hint, and one shape's hint is not
    another's (a hint of a small layer that piled up arrivals asked a wide layer for tens of GB before)."""
    from spikescan import _recurrent_numba

    monkeypatch.setattr(_recurrent_numba, "_heap_hints", {})
    monkeypatch.setattr(_recurrent_numba, "_log_hints", {})  # the same for the first guess of the log length
    t = np.array([[[1.0]]])
    with pytest.raises(ss.RunawayFiringError):
        ss.lif_forward(t, np.full((1, 8), 5.0), tau_mem=10.0, tau_syn=5.0, max_spikes=4, engine="numba",
                       recurrent_weights=np.full((8, 8), 3.0), recurrent_delays=np.full((8, 8), 0.5),
                       max_total_spikes=300)
    assert _recurrent_numba._heap_hints == {} and _recurrent_numba._log_hints == {}
    x, W, kw = _recurrent_layer(12, "mixed", "positive", "tm>ts", False, batch=2, n_in=30, n_out=40, max_in=3,
                                t_max=40.0, d_max=6.0)
    ss.lif_forward(x, 0.2 * W, engine="numba", **dict(kw, recurrent_weights=0.3 * kw["recurrent_weights"]))
    assert set(_recurrent_numba._heap_hints) == {(40, True)} and _recurrent_numba._heap_hints[(40, True)] > 16
    assert set(_recurrent_numba._log_hints) == {(40, True)}



def _lanes_layer(seed, n_out, kind):
    rng = np.random.default_rng(seed)
    t = rng.uniform(0.0, 25.0, (3, 8, 4))
    t[rng.random(t.shape) < 0.2] = np.inf
    t = np.sort(np.round(t) if kind == "equal times" else t, axis=-1)  # rounded: entries and spikes at equal times
    W = rng.normal(0.9, 0.7, (8, n_out))
    scale = {"excitatory": 0.3, "inhibitory": 0.6}.get(kind, 0.3) / np.sqrt(n_out)
    R = rng.normal(0.0, scale, (n_out, n_out))
    if kind == "excitatory":
        R = np.abs(R)
    elif kind == "inhibitory":
        R = -np.abs(R)
    elif kind == "sparse":
        R[rng.random(R.shape) < 0.8] = 0.0
    elif kind == "zero":
        R[:] = 0.0
    tau_mem, tau_syn = [8.0, 5.0, 3.0][seed % 3], [3.0, 5.0, 7.0][seed % 3]
    if kind == "per-neuron time constants":  # half the neurons share a pair: decays computed once for them
        tau_mem, tau_syn = rng.uniform(3.0, 9.0, n_out), rng.uniform(2.0, 6.0, n_out)
        tau_mem[: n_out // 2], tau_syn[: n_out // 2] = 6.0, 3.0
    kw = dict(tau_mem=tau_mem, tau_syn=tau_syn,
              threshold=rng.uniform(0.8, 1.2, n_out), max_spikes=[40, 1, 3][seed % 3], recurrent_weights=R,
              recurrent_delays=np.zeros((n_out, n_out)) if seed % 2 else None)
    return t, W, kw


def _assert_same_recurrent_forward(b, a):
    """Bit for bit: spike times, counts, events and the spike log."""
    for name in ("times", "counts"):
        np.testing.assert_array_equal(getattr(b, name), getattr(a, name), err_msg=name)
    np.testing.assert_array_equal(b.residuals.spike_event, a.residuals.spike_event)
    for name in RecurrentLogFields:
        np.testing.assert_array_equal(getattr(b.residuals.recurrent_log, name),
                                      getattr(a.residuals.recurrent_log, name), err_msg=name)


def _spy_lanes(monkeypatch, flag=19):
    """A list that collects the ``lanes`` flag (``flag=20``: ``windows``) of every ``forward_kernel`` call."""
    from spikescan import _recurrent_numba

    taken = []
    kernel = _recurrent_numba.forward_kernel

    def spy(*args):
        taken.append(args[flag])  # (after the work size)
        return kernel(*args)

    monkeypatch.setattr(_recurrent_numba, "forward_kernel", spy)
    return taken


@pytest.mark.parametrize("kind", ["mixed", "excitatory", "inhibitory", "sparse", "zero", "equal times",
                                  "per-neuron time constants"])
def test_recurrent_lanes_equal_the_event_loop_bit_for_bit(kind, monkeypatch):
    """Neurons sharing one input queue, without recurrent delays (or all zero), walk the queue together
    (``_lanes_sample``): the event loop's spikes, events, log and errors, bit for bit, and the NumPy engine's within
    the tolerances; across layer widths, time constants (2:1, equal, tau_mem < tau_syn, one pair per neuron),
    capped recording, spikes at an entry's own time and runaway excitation."""
    from spikescan import _recurrent_numba

    taken = _spy_lanes(monkeypatch)
    compared = runaway = 0
    for seed in range(12):
        n_out = [1, 5, 17, 40][seed % 4]
        t, W, kw = _lanes_layer(seed, n_out, kind)
        W = 1.5 * W if kind == "excitatory" else W
        out = {}
        for lanes in (False, True):
            monkeypatch.setattr(_recurrent_numba, "LANES", lanes)
            taken.clear()
            try:
                out[lanes] = ss.lif_forward(t, W, engine="numba", max_total_spikes=2000, **kw)
            except ss.RunawayFiringError as err:
                out[lanes] = str(err)
            assert set(taken) == {lanes}  # (a second call runs the samples whose log outgrew the first guess)
        if isinstance(out[False], str) or isinstance(out[True], str):
            assert out[True] == out[False]
            runaway += 1
            continue
        a, b = out[False], out[True]
        _assert_same_recurrent_forward(b, a)
        ref = ss.lif_forward(t, W, engine="numpy", method="sequential", max_total_spikes=2000, **kw)
        np.testing.assert_array_equal(b.counts, ref.counts)
        fin = np.isfinite(ref.times)
        np.testing.assert_allclose(b.times[fin], ref.times[fin], **TOL["float64"]["times"])
        compared += int(a.counts.sum() > 0)
    assert compared >= 8 and (runaway > 0) == (kind == "excitatory")


def test_recurrent_lanes_only_where_their_assumptions_hold(monkeypatch):
    """The lanes need one queue shared by a sample's neurons and arrivals at the spike's time: input delays take
    the windows, a positive recurrent delay the event loop; time constants per neuron change neither."""
    lanes_taken = _spy_lanes(monkeypatch)
    windows_taken = _spy_lanes(monkeypatch, flag=20)
    t, W, kw = _lanes_layer(0, 6, "mixed")
    cases = {"plain": ({}, "lanes"), "zero delays": (dict(recurrent_delays=np.zeros((6, 6))), "lanes"),
             "a positive delay": (dict(recurrent_delays=np.eye(6)), "loop"),
             "input delays": (dict(delays=np.full((8, 6), 0.5)), "windows"),
             "input delays and zero recurrent ones": (dict(delays=np.full((8, 6), 0.5),
                                                           recurrent_delays=np.zeros((6, 6))), "windows"),
             "input delays and a positive recurrent one": (dict(delays=np.full((8, 6), 0.5),
                                                                recurrent_delays=np.eye(6)), "loop"),
             "per-neuron tau_mem": (dict(tau_mem=np.linspace(6.0, 9.0, 6)), "lanes"),
             "per-neuron tau_mem, input delays": (dict(tau_mem=np.linspace(6.0, 9.0, 6),
                                                       delays=np.full((8, 6), 0.5)), "windows")}
    for name, (change, kernel) in cases.items():
        lanes_taken.clear()
        windows_taken.clear()
        ss.lif_forward(t, W, engine="numba", **dict(kw, **change))
        assert set(lanes_taken) == {kernel == "lanes"} and set(windows_taken) == {kernel == "windows"}, name


@pytest.mark.parametrize("kind", ["mixed", "excitatory", "inhibitory", "sparse", "zero", "equal times",
                                  "per-neuron time constants"])
def test_recurrent_windows_equal_the_event_loop_bit_for_bit(kind, monkeypatch):
    """Neurons with queues of their own (input delays), without recurrent delays (or all zero), walk them in
    windows (``_windows_sample``): the event loop's spikes, events, log and errors, bit for bit, for windows of a
    third of an entry per neuron to all of the queue, walks stopping at the earliest crossing known or going on to
    the window's end, on both queue formats and on a shared queue (lanes off); and the NumPy engine's within the
    tolerances."""
    from spikescan import _lif_numpy, _recurrent_numba

    taken = _spy_lanes(monkeypatch, flag=20)
    compared = runaway = 0
    for seed in range(8):
        n_out = [1, 5, 17, 40][seed % 4]
        t, W, kw = _lanes_layer(seed, n_out, kind)
        W = 1.5 * W if kind == "excitatory" else W
        d = np.random.default_rng(seed).uniform(0.0, 5.0, W.shape)
        shared = seed % 4 == 0  # a shared queue (one neuron: with delays too): the windows with the lanes off
        if not shared:
            kw["delays"] = np.round(d) if kind == "equal times" else d
        monkeypatch.setattr(_lif_numpy, "COMPILED_PERMUTATION", seed % 3 != 2)
        monkeypatch.setattr(_recurrent_numba, "LANES", not shared)
        out = {}
        # Walks that stop at the earliest crossing known (density 0: always) or go on to the window's end (never).
        for windows, entries, density in ((False, 2.0, 0.3), (True, 0.3, 0.0), (True, 2.0, 0.0), (True, 1e9, 0.0),
                                          (True, 0.3, 2.0), (True, 2.0, 2.0), (True, 1e9, 2.0)):
            monkeypatch.setattr(_recurrent_numba, "WINDOWS", windows)
            monkeypatch.setattr(_recurrent_numba, "WINDOW_ENTRIES", entries)
            monkeypatch.setattr(_recurrent_numba, "WINDOW_STOP_DENSITY", density)
            taken.clear()
            try:
                out[windows, entries, density] = ss.lif_forward(t, W, engine="numba", max_total_spikes=2000, **kw)
            except ss.RunawayFiringError as err:
                out[windows, entries, density] = str(err)
            assert set(taken) == {windows}
        a = out.pop((False, 2.0, 0.3))
        if isinstance(a, str):
            assert all(b == a for b in out.values())
            runaway += 1
            continue
        for b in out.values():
            assert not isinstance(b, str), b
            _assert_same_recurrent_forward(b, a)
        ref = ss.lif_forward(t, W, engine="numpy", method="sequential", max_total_spikes=2000, **kw)
        np.testing.assert_array_equal(a.counts, ref.counts)
        fin = np.isfinite(ref.times)
        np.testing.assert_allclose(a.times[fin], ref.times[fin], **TOL["float64"]["times"])
        compared += int(a.counts.sum() > 0)
    assert compared >= 5 and (runaway > 0) == (kind == "excitatory")



def test_recurrent_windows_on_samples_without_a_window(monkeypatch):
    """Samples without input spikes, or with all of them at time 0 (no time span: one window of any length), and a
    layer without any input: the windows end, with the event loop's results (the windows ran: the spy sees them
    asked for, and the event loop without them)."""
    from spikescan import _recurrent_numba

    taken = _spy_lanes(monkeypatch, flag=20)
    rng = np.random.default_rng(3)
    t = np.full((3, 4, 3), np.inf)
    t[1] = 0.0
    t[2, :, :2] = np.sort(rng.uniform(0.0, 20.0, (4, 2)), axis=-1)
    W = rng.normal(1.5, 0.5, (4, 6))
    kw = dict(delays=rng.uniform(0.0, 3.0, W.shape), recurrent_weights=rng.normal(0.0, 0.3, (6, 6)), tau_mem=8.0,
              tau_syn=4.0, max_spikes=5, engine="numba")
    counts = []
    for times in (t, t[:1], np.zeros((2, 4, 0))):
        out = {}
        for windows in (False, True):
            monkeypatch.setattr(_recurrent_numba, "WINDOWS", windows)
            taken.clear()
            out[windows] = ss.lif_forward(times, W, **kw)
            assert set(taken) == {windows}, (times.shape, windows)
        _assert_same_recurrent_forward(out[True], out[False])
        counts.append(out[True].counts.sum(axis=1))
    assert counts[0][0] == 0 and counts[0][1] > 0 and counts[0][2] > 0 and counts[1][0] == counts[2].sum() == 0

def test_recurrent_windows_count_their_decay_tables_in_the_memory_check(monkeypatch):
    """The windows keep a decay table per sample in flight (24 bytes per queue entry of each neuron): the memory
    check counts it where they run (input delays, no recurrent delays), and not where the event loop does; exactly
    that many bytes, 1.5 times the (16-byte) queues of the samples in flight, and the estimate grows by them."""
    from spikescan import _memory

    rng = np.random.default_rng(0)
    t = np.sort(rng.uniform(0.0, 50.0, (2, 20, 30)), axis=-1)
    W = rng.normal(0.3, 0.2, (20, 64))
    kw = dict(delays=rng.uniform(0.0, 5.0, W.shape), recurrent_weights=rng.normal(0.0, 0.05, (64, 64)),
              tau_mem=10.0, tau_syn=5.0, max_spikes=4, engine="numba")
    estimates = []
    check = _memory.check

    def spy(what, parts, xp, advice):
        estimates.append(dict(parts))
        return check(what, parts, xp, advice)

    monkeypatch.setattr(_memory, "check", spy)
    queues = "queues of the samples in flight"
    tables = "entry tables (decay, time, weight) of the samples in flight"
    previous = ss.set_memory_limit(400_000)
    totals = []
    try:
        for recurrent_delays, counted in ((None, True), (np.zeros((64, 64)), True), (np.ones((64, 64)), False)):
            estimates.clear()
            with pytest.raises(MemoryError, match=queues) as err:
                ss.lif_forward(t, W, recurrent_delays=recurrent_delays, **kw)
            assert (tables in str(err.value)) == counted
            parts, = estimates  # the forward's one check, which raised
            n_entries = 20 * 30  # every input spike of a sample is finite
            assert parts[queues] == 16 * numba.get_num_threads() * 64 * (n_entries + 1)
            if counted:
                assert parts[tables] == 40 * numba.get_num_threads() * 64 * (n_entries + 1) == 2.5 * parts[queues]
            else:
                assert tables not in parts
            totals.append(sum(parts.values()))
    finally:
        ss.set_memory_limit(previous)
    # zero recurrent delays against positive ones: the same layer but for the windows' tables
    assert totals[1] - totals[2] == 40 * numba.get_num_threads() * 64 * (20 * 30 + 1)

def test_recurrent_windows_add_inputs_before_arrivals_at_equal_times(monkeypatch):
    """An input entry and a recurrent arrival at the same time add in that order (the event loop's and the NumPy
    engine's). Neuron 0 fires on its own (nothing reaches it back); every one of its spikes meets an input entry of
    neuron 1 at exactly its time (delay 0; the input reaches neuron 0 only after the run). Adding them the other way
    round rounds differently in about half of these layers, which shows in neuron 1's spikes."""
    from spikescan import _recurrent_numba

    coincide = 0
    for seed in range(10):
        rng = np.random.default_rng(seed)
        K = 12
        t = np.full((1, 1 + K, 60), np.inf)
        t[0, 0] = np.sort(rng.uniform(0.0, 100.0, 60))
        W = np.zeros((1 + K, 2))
        W[0] = [0.9, 0.85]
        D = np.zeros((1 + K, 2))
        kw = dict(tau_mem=8.0, tau_syn=3.0, max_spikes=60,
                  recurrent_weights=np.array([[0.0, rng.uniform(0.1, 0.5)], [0.0, 0.0]]))
        first = ss.lif_forward(t, W, delays=D, engine="numba", **kw)
        n = min(K, int(first.counts[0, 0]))
        t[0, 1:1 + n, 0] = first.times[0, 0, :n]
        W[1:, 1] = rng.uniform(0.05, 0.3, K)
        D[1:, 0] = 1000.0
        out = {}
        for windows in (False, True):
            monkeypatch.setattr(_recurrent_numba, "WINDOWS", windows)
            out[windows] = ss.lif_forward(t, W, delays=D, engine="numba", **kw)
        a, b = out[False], out[True]
        np.testing.assert_array_equal(a.times[0, 0, :n], first.times[0, 0, :n])  # neuron 0 unchanged
        np.testing.assert_array_equal(b.times, a.times)
        np.testing.assert_array_equal(b.residuals.recurrent_log.currents, a.residuals.recurrent_log.currents)
        ref = ss.lif_forward(t, W, delays=D, engine="numpy", method="sequential", **kw)
        np.testing.assert_array_equal(b.counts, ref.counts)
        fin = np.isfinite(ref.times)
        np.testing.assert_allclose(b.times[fin], ref.times[fin], **TOL["float64"]["times"])
        coincide += n
    assert coincide >= 80

def test_recurrent_compiled_float32():
    t, W, kw = _recurrent_layer(14, "mixed", "some zero", "tm>ts", True)
    t32, W32 = t.astype(np.float32), W.astype(np.float32)
    kw = {k: v.astype(np.float32) if k.startswith("recurrent") and v is not None else v for k, v in kw.items()}
    a = ss.lif_forward(t32, W32, engine="numpy", method="sequential", **kw)
    b = ss.lif_forward(t32, W32, engine="numba", **kw)
    assert b.times.dtype == np.float32 and a.counts.sum() > 20
    np.testing.assert_array_equal(b.counts, a.counts)
    np.testing.assert_allclose(b.times, a.times, **TOL["float32"]["times"])
    G = np.ones_like(a.times)
    ga, gb = ss.lif_backward(a, G, engine="numpy"), ss.lif_backward(b, G, engine="numba")
    assert gb.recurrent_weights.dtype == np.float32 and gb.input_times.dtype == np.float32
    for name in ("weights", "input_times", "delays", "threshold", "recurrent_weights", "recurrent_delays"):
        np.testing.assert_allclose(getattr(gb, name), getattr(ga, name), **TOL["float32"]["grads"], err_msg=name)


def _recurrent_digest(t, W, kw):
    out = ss.lif_forward(t, W, engine="numba", **kw)
    G = np.random.default_rng(3).normal(size=out.times.shape)
    g = ss.lif_backward(out, G, engine="numba")
    log = out.residuals.recurrent_log
    return [np.asarray(x).tobytes() for x in (out.times, out.counts, out.residuals.spike_event, log.times, log.neurons,
                                               log.currents, g.weights, g.input_times, g.delays, g.threshold,
                                               g.recurrent_weights, g.recurrent_delays)]


def test_recurrent_bitwise_identical_for_any_thread_count_log_length_and_blocks(monkeypatch):
    """Parallel over samples with fixed sum orders: the same bits for 1 and 2 threads and the serial compilation,
    and when every sample's log outgrows the first guess (run again) or the backward works one sample at a time."""
    from spikescan import _recurrent_numba

    t, W, kw = _recurrent_layer(13, "mixed", "some zero", "tm>ts", True, batch=6)
    monkeypatch.setattr(_lif_numba, "SERIAL_WORK", 0)  # parallel kernels even for this small layer
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = _recurrent_digest(t, W, kw)
        numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
        two = _recurrent_digest(t, W, kw)
    finally:
        numba.set_num_threads(before)
    assert one == two
    monkeypatch.setattr(_lif_numba, "SERIAL_WORK", 1 << 62)  # the serial compilation
    assert _recurrent_digest(t, W, kw) == one
    monkeypatch.setattr(_recurrent_numba, "_heap_hints", {})  # heaps that fill and grow
    assert _recurrent_digest(t, W, kw) == one
    monkeypatch.setattr(_recurrent_numba, "_log_length", lambda n_out, max_spikes, hint=0: 1)
    monkeypatch.setattr(_recurrent_numba, "_PARTIAL_BYTES", 1)
    monkeypatch.setattr(_recurrent_numba, "_ARRIVAL_BYTES", 1)
    assert _recurrent_digest(t, W, kw) == one


def test_recurrent_compiled_errors_match_numpy():
    """Runaway self-excitation: the same error and fields from both engines (the compiled one raises after the
    kernel, for the sample that runs away first in simulated time)."""
    t = np.array([[[1.0], [2.0]], [[3.0], [np.inf]]])
    W = np.array([[5.0, 5.0], [5.0, 5.0]])
    kw = dict(tau_mem=10.0, tau_syn=5.0, max_spikes=4, recurrent_weights=np.full((2, 2), 3.0), max_total_spikes=50)
    errs = []
    for engine in ("numpy", "numba"):
        with pytest.raises(ss.RunawayFiringError, match="runaway self-excitation") as info:
            ss.lif_forward(t[1:], W, engine=engine, method="sequential", **kw)
        errs.append(info.value)
    assert (errs[0].sample, errs[0].neuron, errs[0].limit) == (errs[1].sample, errs[1].neuron, errs[1].limit)
    assert errs[1].time == pytest.approx(errs[0].time, rel=1e-12)
    assert errs[1].current == pytest.approx(errs[0].current, rel=1e-12)
    with pytest.raises(ss.RunawayFiringError) as info:
        ss.lif_forward(t, W, engine="numba", **kw)
    assert info.value.sample == 0 and info.value.time < errs[0].time


def test_recurrent_runaway_sample_stops_the_other_samples(monkeypatch):
    # Sample 0 runs away at once; samples 1-5 (20,000 weak input spikes each, no spike) stop at their first round
    # once it has, instead of running to their end: the call raises anyway.
    from spikescan import _recurrent_numba

    seen = []
    kernel = _recurrent_numba.forward_kernel

    def spy(*args):
        kernel(*args)
        seen.append(args)

    monkeypatch.setattr(_recurrent_numba, "forward_kernel", spy)
    t = np.full((6, 2, 20_000), np.inf)
    t[0, 0, 0] = 1.0
    t[1:, 1] = np.linspace(1.0, 2e4, 20_000)
    W = np.array([[5.0, 5.0], [1e-3, 1e-3]])
    # One thread: the samples run in order, so every later one starts after the abort (with more threads, those
    # that run beside sample 0 may finish first; which ones depends on the scheduler).
    threads = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        with pytest.raises(ss.RunawayFiringError, match="of sample 0 fires more than max_total_spikes=200"):
            ss.lif_forward(t, W, tau_mem=10.0, tau_syn=5.0, max_spikes=4, recurrent_weights=np.full((2, 2), 3.0),
                           max_total_spikes=200, engine="numba")
    finally:
        numba.set_num_threads(threads)
    status = seen[-1][-6]  # (..., status, status_at, abort, heap_capacity, heap_limit, heap_most)
    assert status[0, 0] == _lif_numba._RUNAWAY
    np.testing.assert_array_equal(status[1:, 0], _recurrent_numba._ABORTED)


CARRIED_CASES = [
    # (recurrent weights, recurrent delays, time constants, input delays, equal spike times across neurons)
    ("mixed", "none", "tm>ts", False, False),
    ("excitatory", "zero", "tm<ts", True, False),
    ("inhibitory", "none", "tm==ts", True, False),
    ("mixed", "none", "tm>ts", False, True),
]


@pytest.mark.parametrize("r_kind,d_kind,taus,input_delays,ties", CARRIED_CASES,
                         ids=["-".join(map(str, c)) for c in CARRIED_CASES])
def test_recurrent_backward_carries_adjoints_where_time_constants_are_shared(r_kind, d_kind, taus, input_delays,
                                                                            ties, monkeypatch):
    """With shared time constants and no (or only zero) recurrent delays the compiled backward carries the targets'
    adjoints from spike to spike (``backward_spikes``'s ``carried``): every gradient, the time constants' too, as
    forming each from the target's next spike (``CARRIED = False``) to rounding, and the NumPy engine's within the
    tolerance table. Ties: pairs of neurons with equal input weights spike at equal times (a target's spike at the
    source's time is not after it)."""
    from spikescan import _recurrent_numba

    t, W, kw = _recurrent_layer(23, r_kind, d_kind, taus, input_delays, batch=4, n_out=8)
    if ties:
        t = np.round(t)
        W[:, 1::2] = W[:, 0::2]
        kw["recurrent_weights"][:, 1::2] = kw["recurrent_weights"][:, 0::2]
        kw["recurrent_weights"][1::2] = kw["recurrent_weights"][0::2]
        kw["threshold"][1::2] = kw["threshold"][0::2]
    res = ss.lif_forward(t, W, engine="numba", **kw)
    if ties:
        tt = res.times[..., 0]
        assert (np.isfinite(tt[:, 0::2]) & (tt[:, 0::2] == tt[:, 1::2])).sum() >= 4
    G = np.random.default_rng(1).normal(size=res.times.shape)
    seen = []
    real = _recurrent_numba.backward_spikes

    def spy(*args):
        seen.append(args[-1])
        return real(*args)

    grads = {}
    for carried in (True, False):
        monkeypatch.setattr(_recurrent_numba, "CARRIED", carried)
        monkeypatch.setattr(_recurrent_numba, "backward_spikes", spy)
        grads[carried] = ss.lif_backward(res, G, engine="numba", time_constant_grads=True)
    assert seen == [True, False]
    g_ref = ss.lif_backward(res, G, engine="numpy", time_constant_grads=True)
    for name in ("weights", "input_times", "delays", "threshold", "recurrent_weights", "recurrent_delays", "tau_mem",
                 "tau_syn"):
        a, b, c = getattr(grads[False], name), getattr(grads[True], name), getattr(g_ref, name)
        if a is None:
            assert b is None and c is None, name
            continue
        np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-12 * np.abs(a).max(), err_msg=name)
        np.testing.assert_allclose(b, c, **TOL["float64"]["grads"], err_msg=name)
    assert np.abs(g_ref.recurrent_weights).max() > 0.1


def test_recurrent_backward_forms_adjoints_afresh_with_recurrent_delays_or_own_time_constants(monkeypatch):
    """Positive recurrent delays (each arrival after its spike) and per-neuron time constants take the direct
    backward: no shared gap map carries them."""
    from spikescan import _recurrent_numba

    seen = []
    real = _recurrent_numba.backward_spikes
    monkeypatch.setattr(_recurrent_numba, "backward_spikes", lambda *a: seen.append(a[-1]) or real(*a))
    for d_kind, taus in (("some zero", "tm>ts"), ("none", "per-neuron")):
        t, W, kw = _recurrent_layer(5, "mixed", d_kind, taus)
        res = ss.lif_forward(t, W, engine="numba", **kw)
        ss.lif_backward(res, np.ones_like(res.times), engine="numba")
    assert seen == [False, False]


@pytest.mark.parametrize("taus,reach", [("tm>ts", None), ("tm<ts", 0.5), ("tm==ts", None), ("per-neuron", None)])
def test_recurrent_backward_rebases_the_input_entries_of_permuted_queues(taus, reach, monkeypatch):
    """With input delays (permuted queues) and one pair of time constants the compiled backward forms each input
    entry's exponentials from tabulated factors (``backward_inputs``' ``rebased``): every gradient, the input
    times', delays' and time constants' too, as with the exponentials (``REBASED = False``) to rounding, and the
    NumPy engine's within the tolerance table. A small reach sends most entries back to the exponentials within one
    call; per-neuron time constants take the exponentials."""
    from spikescan import _recurrent_numba

    if reach is not None:
        monkeypatch.setattr(_lif_numpy, "REBASED_REACH", reach)
    t, W, kw = _recurrent_layer(31, "inhibitory", "none", taus, input_delays=True, batch=4, n_out=8, t_max=60.0)
    res = ss.lif_forward(t, W, engine="numba", **kw)
    assert res.residuals.queue_perm is not None
    G = np.random.default_rng(2).normal(size=res.times.shape)
    seen = []
    real = _recurrent_numba.backward_inputs
    monkeypatch.setattr(_recurrent_numba, "backward_inputs", lambda *a: seen.append(a[-6]) or real(*a))
    grads = {}
    for rebased in (True, False):
        monkeypatch.setattr(_recurrent_numba, "REBASED", rebased)
        grads[rebased] = ss.lif_backward(res, G, engine="numba", time_constant_grads=True)
    assert seen == [taus != "per-neuron", False]
    g_ref = ss.lif_backward(res, G, engine="numpy", time_constant_grads=True)
    for name in ("weights", "input_times", "delays", "threshold", "recurrent_weights", "tau_mem", "tau_syn"):
        a, b, c = getattr(grads[False], name), getattr(grads[True], name), getattr(g_ref, name)
        np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-12 * np.abs(a).max(), err_msg=name)
        np.testing.assert_allclose(b, c, **TOL["float64"]["grads"], err_msg=name)
    assert np.abs(g_ref.delays).max() > 0.1


@pytest.mark.parametrize("input_delays", [False, True])
def test_recurrent_compiled_backward_checks_its_memory_first(input_delays, monkeypatch):
    """The compiled recurrent backward estimates its large arrays before allocating them: over the limit a
    ``MemoryError`` names the call and its parts (the rebased factors with input delays, the queue sources and
    decay tables without) and the result is untouched; within it, the arrays NumPy allocates for the call
    (tracemalloc's peak) stay within the estimate."""
    import tracemalloc

    from spikescan import _memory

    t, W, kw = _recurrent_layer(8, "inhibitory", "none", "tm>ts", input_delays, batch=5, n_in=30, n_out=20,
                                max_in=6, t_max=40.0)
    res = ss.lif_forward(t, W, engine="numba", **kw)
    G = np.ones_like(res.times)
    estimates = []
    check = _memory.check
    monkeypatch.setattr(_memory, "check", lambda what, parts, *a: estimates.append((what, dict(parts))) or check(
        what, parts, *a))
    part = "rebased factors" if input_delays else "queue sources and decay tables"
    before = {k: np.copy(v) for k, v in res.residuals._asdict().items() if isinstance(v, np.ndarray)}
    previous = ss.set_memory_limit(2000)
    try:
        with pytest.raises(MemoryError, match=rf"lif_backward\(batch=5, n_out=20, recurrent, engine='numba'\).*{part}"):
            ss.lif_backward(res, G, engine="numba")
    finally:
        ss.set_memory_limit(previous)
    for k, v in before.items():
        np.testing.assert_array_equal(getattr(res.residuals, k), v, err_msg=k)
    ss.lif_backward(res, G, engine="numba")  # compiles first: tracemalloc would count the compiler's objects
    estimates.clear()
    tracemalloc.start()
    try:
        ss.lif_backward(res, G, engine="numba")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    (what, parts), = [e for e in estimates if e[0].startswith("lif_backward")]
    assert parts[part] > 0
    assert 0 < peak <= sum(parts.values())


def test_recurrent_grazing_warning_from_the_compiled_backward():
    t, W = np.array([[[2.0]]]), np.array([[np.e]])
    r = ss.lif_forward(t, W, tau_mem=10.0, tau_syn=10.0, max_spikes=2, recurrent_weights=np.array([[0.0]]),
                       engine="numba")
    assert r.counts[0, 0] == 1
    with pytest.warns(ss.GrazingSpikeWarning, match="1 grazing spike.*neuron 0 of sample 0 at t=12.0"):
        g = ss.lif_backward(r, np.ones_like(r.times), engine="numba")
    assert np.isfinite(g.weights).all() and g.threshold == 0.0


def test_bucket_sort_is_the_stable_merge_sort_order():
    """``_lif_numba.stable_order`` (bucket sort, merge sort fallback) returns ``np.argsort(kind="mergesort")``'s
    permutation on rows built to break it: ties (also -0.0 against 0.0), all equal, sorted and reversed rows, outliers
    that crowd the buckets (the fallback), spans that overflow or give an infinite scale, tiny rows, and random rows
    with values on a coarse grid."""
    from spikescan import _lif_numba

    rng = np.random.default_rng(4)
    rows = [np.array([]), np.array([3.0]), np.array([2.0, 1.0]), np.full(50, 7.0), np.array([0.0, -0.0, 0.0, -0.0]),
            np.arange(100.0), np.arange(100.0)[::-1].copy(), np.r_[rng.uniform(0, 1, 200), 1e12],
            np.r_[rng.uniform(0, 1, 50), -1e308, 1e308], np.array([0.0, 5e-324, 1e-323, 5e-324]),
            np.r_[np.full(30, 1.0), np.full(30, 1.0 + 2**-52)], np.round(rng.uniform(0, 20, 500)) * 0.5,
            rng.uniform(-1e3, 1e3, 5000), np.sort(rng.uniform(0, 1000, 3000)) + rng.uniform(0, 25, 3000)]
    rows += [np.round(rng.normal(0, 10, int(n))) for n in rng.integers(2, 400, 30)]
    for k, row in enumerate(rows):
        want = np.argsort(row, kind="mergesort")
        np.testing.assert_array_equal(_lif_numba.stable_order(row), want, err_msg=f"row {k}")
        np.testing.assert_array_equal(_lif_numba.stable_order(row, False), want, err_msg=f"row {k} merge sort")


def test_bucket_sort_stays_in_bounds(tmp_path):
    """The bucket sort's (and the unrolled recurrent queues' and the permutation format's) indexing under Numba's
    bounds checking (a fresh cache, so the checked build is the one that runs): an out-of-bounds index would raise
    here instead of silently reading memory."""
    code = ("import numpy as np\n"
            "from spikescan import _lif_numba, _lif_numpy, _queue\n"
            "rng = np.random.default_rng(1)\n"
            "for row in (rng.uniform(0, 1, 300), np.arange(50.0), np.r_[rng.uniform(0, 1, 40), 1e9]):\n"
            "    assert np.array_equal(_lif_numba.stable_order(row), np.argsort(row, kind='mergesort'))\n"
            "t = np.sort(rng.uniform(0, 30, (2, 9, 5)), axis=-1)\n"
            "D = rng.uniform(0, 4, (9, 6))\n"
            "for a, b in zip(_queue.build_queues(t, D, np), _lif_numpy._delayed_queues_compiled(t, D)):\n"
            "    assert np.array_equal(a, b)\n"
            "import spikescan as ss\n"
            "q = _lif_numpy._delayed_queues_compiled(t, D, permutation=True)\n"
            "assert np.array_equal(_queue.expand(np, q.perm, q.times, q.index, q.delays_t, 5)[0],\n"
            "                      _queue.build_queues(t, D, np)[0])\n"
            "f = ss.lif_forward(t, rng.normal(0.9, 0.7, (9, 6)), delays=D, tau_mem=6.0, tau_syn=3.0, max_spikes=3,\n"
            "                   engine='numba')\n"
            "assert f.residuals.queue_perm is not None and f.counts.sum() > 0\n"
            "assert _lif_numpy.rebased_applies(D, np.full(6, 6.0), np.full(6, 3.0))  # forward_rebased ran\n"
            "tl = np.sort(rng.uniform(0, 400, (2, 9, 5)), axis=-1)  # many time blocks and anchors\n"
            "fl = ss.lif_forward(tl, rng.normal(0.9, 0.7, (9, 6)), delays=D, tau_mem=2.0, tau_syn=1.0,\n"
            "                    max_spikes=3, engine='numba')\n"
            "assert fl.counts.sum() > 0\n"
            "ss.lif_backward(f, np.ones(f.times.shape), engine='numba', time_constant_grads=True)\n"
            "from spikescan import _recurrent\n"
            "R = rng.normal(0, 0.3, (6, 6)); R[0, 1] = 0.0\n"
            "r = ss.lif_forward(t, rng.normal(0.9, 0.7, (9, 6)), delays=D, tau_mem=6.0, tau_syn=3.0, max_spikes=3,\n"
            "                   recurrent_weights=R, recurrent_delays=rng.uniform(0, 2, (6, 6)), engine='numpy')\n"
            "g = np.ones(r.residuals.recurrent_log.times.shape)\n"
            "a, _ = _recurrent.unrolled_layer(r.residuals, g)\n"
            "b, _ = _recurrent.unrolled_layer(r.residuals, g, compiled=True)\n"
            "assert np.array_equal(a.residuals.queue_index, b.residuals.queue_index)\n")
    env = dict(os.environ, NUMBA_BOUNDSCHECK="1", NUMBA_CACHE_DIR=str(tmp_path))
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.parametrize("d_kind", ["none", "zero", "some zero", "positive"])
def test_unrolled_queues_compiled_equal_numpy(d_kind):
    """The recurrent layer's unrolled queues (time-constant gradients) from the compiled merge equal the NumPy
    stable sort bit for bit: inputs and arrivals on an integer grid (many equal times: inputs first, then arrivals
    in spike order), zero recurrent weights (no arrival), with and without input delays."""
    from spikescan import _recurrent

    rng = np.random.default_rng(21)
    for input_delays in (False, True):
        t = np.sort(rng.integers(0, 12, (3, 8, 4)).astype(np.float64), axis=-1)
        t[rng.random(t.shape) < 0.2] = np.inf
        t = np.sort(t, axis=-1)
        W = rng.normal(0.9, 0.7, (8, 6))
        R = rng.normal(0.0, 0.3, (6, 6))
        R[rng.random(R.shape) < 0.3] = 0.0
        R[np.diag_indices(6)] = np.resize([0.15, -0.5, 0.0], 6)
        Dr = None if d_kind == "none" else (np.zeros((6, 6)) if d_kind == "zero" else
                                            rng.integers(0, 4, (6, 6)).astype(np.float64))
        if d_kind == "some zero":
            Dr[rng.random(Dr.shape) < 0.5] = 0.0
        D = rng.integers(0, 3, (8, 6)).astype(np.float64) if input_delays else None
        r = ss.lif_forward(t, W, delays=D, tau_mem=6.0, tau_syn=3.0, max_spikes=5, recurrent_weights=R,
                           recurrent_delays=Dr, engine="numpy")
        log = r.residuals.recurrent_log
        assert log.count.sum() > 5
        g = rng.normal(size=log.times.shape)
        a, ga = _recurrent.unrolled_layer(r.residuals, g)
        b, gb = _recurrent.unrolled_layer(r.residuals, g, compiled=True)
        for name in ("queue_times", "queue_index", "queue_end", "spike_event", "spike_times", "weights"):
            np.testing.assert_array_equal(getattr(b.residuals, name), getattr(a.residuals, name), err_msg=name)
        np.testing.assert_array_equal(gb, ga)
        qt = a.residuals.queue_times
        assert (np.isfinite(qt[..., 1:]) & (qt[..., 1:] == qt[..., :-1])).any()  # equal times occur


def test_unrolled_queues_compiled_put_inputs_before_arrivals_at_equal_times():
    """A recurrent arrival at exactly the time of an input entry (test_cuda_recurrent's construction): the input
    comes first in the unrolled queue, in the compiled merge as in the NumPy sort."""
    from spikescan import _recurrent
    from test_cuda_recurrent import arrival_at_an_input_entry

    t, W, R, Dr, kw = arrival_at_an_input_entry()
    r = ss.lif_forward(t, W, recurrent_weights=R, recurrent_delays=Dr, engine="numpy", method="sequential", **kw)
    g = np.ones(r.residuals.recurrent_log.times.shape)
    a, _ = _recurrent.unrolled_layer(r.residuals, g)
    b, _ = _recurrent.unrolled_layer(r.residuals, g, compiled=True)
    qt, qi = a.residuals.queue_times[0, 1], a.residuals.queue_index[0, 1]
    at = np.nonzero(qt == 9.0)[0]
    assert at.size == 2 and qi[at[0]] < W.shape[0] <= qi[at[1]]  # the input (source < n_in), then the arrival
    for name in ("queue_times", "queue_index", "queue_end", "spike_event"):
        np.testing.assert_array_equal(getattr(b.residuals, name), getattr(a.residuals, name), err_msg=name)


# ---------------------------------------------------------------- the readout's "max" walk

@pytest.mark.parametrize("tau", ["shared", "per_neuron"])
def test_compiled_max_walk_equals_numpy_and_ignores_thread_count(tau):
    """``engine="numba"`` against ``engine="numpy"`` on a layer big enough for the parallel kernels: the same kinks,
    values, times and gradients (time constants included) to rounding, and the same bits on 1 and 2 threads."""
    rng = np.random.default_rng(21)
    t = np.sort(rng.uniform(0.0, 6.0, (32, 60, 4)), axis=-1)  # work above _lif_numba.SERIAL_WORK: parallel loops
    t[rng.random(t.shape) < 0.3] = np.inf
    t = np.sort(t, axis=-1)
    W = rng.normal(0.0, 0.6, (60, 12))
    taus = (rng.uniform(0.8, 1.5, 12), rng.uniform(0.3, 0.7, 12)) if tau == "per_neuron" else (1.0, 0.5)
    kw = dict(tau_mem=taus[0], tau_syn=taus[1], readout="max", t_max=5.0)
    g = rng.normal(size=(32, 12))
    assert 32 * 12 * 60 * 4 > _lif_numba.SERIAL_WORK
    ref = ss.li_forward(t, W, engine="numpy", **kw)
    ref_g = ss.li_backward(ref, g, time_constant_grads=True, engine="numpy")
    runs = []
    for threads in (1, 2):
        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
        try:
            out = ss.li_forward(t, W, engine="numba", **kw)
            runs.append((out, ss.li_backward(out, g, time_constant_grads=True, engine="numba")))
        finally:
            numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    (out, grads), (out2, grads2) = runs
    np.testing.assert_array_equal(out.residuals.kink_index, ref.residuals.kink_index)
    assert (ref.residuals.kink_index >= 0).sum() > 10 and (ref.residuals.eval_time == 5.0).any()
    np.testing.assert_allclose(out.values, ref.values, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(out.residuals.eval_time, ref.residuals.eval_time, rtol=1e-13, atol=1e-15)
    for name in ("weights", "input_times", "tau_mem", "tau_syn"):
        a, b = getattr(grads, name), getattr(ref_g, name)
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-13 * np.abs(b).max(), err_msg=name)
        np.testing.assert_array_equal(a, getattr(grads2, name), err_msg=name)
    np.testing.assert_array_equal(out.values, out2.values)


@pytest.mark.parametrize("tau", ["shared", "per_neuron"])
@pytest.mark.parametrize("t_max", [5.0, np.inf])
def test_max_walk_per_sample_equals_per_neuron_bit_for_bit(tau, t_max, monkeypatch):
    """The walk of a queue shared by a sample's neurons, all neurons in step (one decay per gap with one pair of time
    constants), gives the bits of one (sample, neuron) at a time, which skips the same hopeless interior peaks; both
    match the NumPy engine (kinks exactly); an empty sample and inputs at or after t_max included. ``t_max = inf``:
    ``peak_voltage``'s walk (the open gap after the last arrival)."""
    from spikescan import _readout_numba

    rng = np.random.default_rng(5)
    t = np.sort(rng.uniform(0.0, 6.0, (9, 40, 3)), axis=-1)
    t[rng.random(t.shape) < 0.3] = np.inf
    t[4] = np.inf  # a sample without input
    t = np.sort(t, axis=-1)
    W = rng.normal(0.2, 0.6, (40, 7))
    taus = (rng.uniform(0.8, 1.5, 7), rng.uniform(0.3, 0.7, 7)) if tau == "per_neuron" else (1.0, 0.5)
    kw = dict(tau_mem=taus[0], tau_syn=taus[1])

    def run(engine):
        if np.isinf(t_max):
            return ss.peak_voltage(t, W, engine=engine, **kw)
        return ss.li_forward(t, W, readout="max", t_max=t_max, engine=engine, **kw)

    ref = run("numpy")
    out = {}
    for walk in ("shared", "per_neuron"):
        monkeypatch.setattr(_readout_numba, "WALK", walk)
        out[walk] = run("numba")
    a, b = out["shared"], out["per_neuron"]
    for name in ("eval_time", "kink_index"):
        np.testing.assert_array_equal(getattr(a.residuals, name), getattr(b.residuals, name), err_msg=name)
    np.testing.assert_array_equal(a.values, b.values)
    np.testing.assert_array_equal(a.residuals.kink_index, ref.residuals.kink_index)
    assert (ref.residuals.kink_index >= 0).sum() > 5 and (ref.residuals.kink_index < 0).sum() > 5
    np.testing.assert_allclose(a.values, ref.values, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(a.residuals.eval_time, ref.residuals.eval_time, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("delays", [False, True])
def test_max_gradients_in_blocks_of_samples(delays, monkeypatch):
    """The compiled max gradients sum each sample's share and then the samples, in blocks that bound the shares'
    memory (at least a few samples each): one sample per block gives the same input-time gradients bit for bit and
    the others to rounding."""
    from spikescan import _readout_numba

    rng = np.random.default_rng(8)
    t = np.sort(rng.uniform(0.0, 6.0, (7, 30, 3)), axis=-1)
    t[rng.random(t.shape) < 0.3] = np.inf
    t = np.sort(t, axis=-1)
    W = rng.normal(0.2, 0.6, (30, 5))
    D = rng.uniform(0.0, 1.0, W.shape) if delays else None
    g = rng.normal(size=(7, 5))
    res = ss.peak_voltage(t, W, tau_mem=1.0, tau_syn=0.5, delays=D, engine="numba")
    whole = ss.peak_voltage_backward(res, g, engine="numba")
    monkeypatch.setattr(_readout_numba, "_PART_ENTRIES", 1)
    monkeypatch.setattr(_readout_numba, "_MIN_BLOCK", 1)
    blocks = ss.peak_voltage_backward(res, g, engine="numba")
    np.testing.assert_array_equal(blocks.input_times, whole.input_times)
    names = ("weights", "delays") if delays else ("weights",)
    for name in names:
        a, b = getattr(blocks, name), getattr(whole, name)
        assert np.abs(b).max() > 0
        np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-14 * np.abs(b).max(), err_msg=name)
    ref = ss.peak_voltage_backward(ss.peak_voltage(t, W, tau_mem=1.0, tau_syn=0.5, delays=D, engine="numpy"), g,
                                   engine="numpy")
    for name in names + ("input_times",):
        a, b = getattr(blocks, name), getattr(ref, name)
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-13 * np.abs(b).max(), err_msg=name)


def test_readout_engine_is_validated():
    rng = np.random.default_rng(0)
    t, W = np.sort(rng.uniform(0.05, 5.0, (2, 3, 4)), axis=-1), rng.normal(size=(3, 2))
    with pytest.raises(ValueError, match="engine"):
        ss.li_forward(t, W, tau_mem=1.0, tau_syn=0.5, readout="max", t_max=4.0, engine="fortran")
    res = ss.li_forward(t, W, tau_mem=1.0, tau_syn=0.5, readout="max", t_max=4.0, engine="numpy")
    with pytest.raises(ValueError, match="engine"):
        ss.li_backward(res, np.ones((2, 2)), engine="gpu")
    with pytest.raises(ValueError, match="engine"):
        ss.peak_voltage(t, W, tau_mem=1.0, tau_syn=0.5, engine="fortran")


# ---------------------------------------------------------------- the shared queue


@pytest.mark.parametrize("shape,silent", [((64, 350, 4), 0.5), ((8, 700, 12), 0.4), ((5, 784, 1), 0.8),
                                          ((4, 3, 2), 1.0), ((3, 0, 2), 0.0), ((0, 4, 2), 0.0), ((2, 3, 0), 0.0)])
def test_compiled_shared_queue_is_numpys(shape, silent):
    """``_queue.shared_queue_compiled`` (the compiled engine's sort of each sample's spikes) gives NumPy's arrays:
    the same times, flat source indices (ties in flat order) and counts, for spread-out times, times on a coarse grid
    (ties everywhere: the bucket sort's merge-sort fallback), all-silent samples and empty shapes."""
    from spikescan._queue import shared_queue, shared_queue_compiled

    rng = np.random.default_rng(sum(shape))
    for grid in (None, 0.5):
        t = rng.uniform(0.0, 30.0, shape)
        if grid:
            t = np.floor(t / grid) * grid
        t[rng.random(shape) < silent] = np.inf
        t = np.sort(t, axis=-1)
        if t.size and shape[1] > 5:
            t[:, :5, 0] = 0.0
            t[0, 5, 0] = -0.0
        ref, out = shared_queue(t, np), shared_queue_compiled(t)
        for name, a, b in zip(("times", "index", "n_real"), ref, out):
            assert a.dtype == b.dtype and a.shape == b.shape, name
            np.testing.assert_array_equal(a, b, err_msg=name)
            if name == "times":
                np.testing.assert_array_equal(np.signbit(a), np.signbit(b))


def test_recurrent_heaps_stop_at_the_memory_the_call_may_use(monkeypatch):
    """Heaps of pending recurrent arrivals grow (4x a step) only as far as the memory the call may use: a layer
    that piles up more than fits gets a MemoryError that says what piled up and what to change, instead of
    allocating on (a runaway with long delays asked for tens of GB); with room for them, the same call runs."""
    from spikescan import _recurrent_numba

    t, W, kw = _recurrent_layer(12, "mixed", "positive", "tm>ts", False, batch=2, n_in=30, n_out=40, max_in=3,
                                t_max=40.0, d_max=6.0)
    kw["recurrent_weights"] *= 0.3
    monkeypatch.setattr(_recurrent_numba, "_heap_hints", {})
    in_flight = min(numba.get_num_threads(), 2)
    # room for heaps of 8 pending arrivals per neuron; the layer piles up more than 16 on one (the test above)
    monkeypatch.setattr(_recurrent_numba, "_heap_room", lambda need: (24 * 40 * 8 * in_flight, "a test's limit"))
    with pytest.raises(MemoryError, match=r"sample \d piled up more than 8 pending recurrent arrivals .* on one "
                                          r"neuron.*a test's limit.*reduce the recurrent delays"):
        ss.lif_forward(t, 0.2 * W, engine="numba", **kw)
    assert _recurrent_numba._heap_hints == {}
    monkeypatch.setattr(_recurrent_numba, "_heap_room", lambda need: (24 * 40 * 64 * in_flight, "a test's limit"))
    ss.lif_forward(t, 0.2 * W, engine="numba", **kw)
    assert _recurrent_numba._heap_hints[(40, True)] > 16


def _lanes_and_walk(t, W, monkeypatch, lanes=(64, 5), **kw):
    """``lif_forward`` (compiled, sequential) with the neurons walking the shared queue together in groups of each
    of ``lanes`` and one after the other (``COMPILED_LANES = 0``), counting the calls of each kernel."""
    calls = {"lanes": 0, "walk": 0}
    for name, key in (("forward_lanes", "lanes"), ("forward_sequential", "walk")):
        kernel = getattr(_lif_numba, name)

        def spy(*args, _kernel=kernel, _key=key):
            calls[_key] += 1
            return _kernel(*args)

        monkeypatch.setattr(_lif_numba, name, spy)
    outs = []
    for n in tuple(lanes) + (0,):
        monkeypatch.setattr(_lif_numpy, "COMPILED_LANES", n)
        outs.append(ss.lif_forward(t, W, engine="numba", method="sequential", **kw))
    return outs, calls


def _assert_same_bits(a, b):
    for name in ("times", "counts"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    np.testing.assert_array_equal(a.residuals.spike_event, b.residuals.spike_event)


@pytest.mark.parametrize("n_out,mean,threshold", [(24, 0.2, 1.0), (70, 0.5, "per neuron"), (3, 0.9, 1.0)])
def test_lanes_walk_gives_the_per_neuron_walks_bits(n_out, mean, threshold, monkeypatch):
    """Neurons of a sample walking their shared queue together (COMPILED_LANES 64 and 5, which ``_lanes`` may shrink
    for this small batch: full, partial and single groups) give the per-neuron walk's spike times, counts and events
    bit for bit: bursts beyond max_spikes, per-neuron thresholds, silent padding entries, empty samples, the analytic
    and Newton solvers."""
    t, W, _ = _layer(21, batch=5, n_in=40, max_in=3, n_out=n_out, mean=mean)
    t[2] = np.inf  # a sample without input spikes
    th = np.linspace(0.6, 1.4, n_out) if threshold == "per neuron" else threshold
    for solver, tau_syn in (("newton", 4.0), ("analytic", 5.0)):
        (a, b, walk), calls = _lanes_and_walk(t, W, monkeypatch, tau_mem=10.0, tau_syn=tau_syn, threshold=th,
                                              max_spikes=3, solver=solver)
        assert walk.counts.sum() > 50 and walk.capped_spikes > 0 and (walk.counts == 0).any()
        _assert_same_bits(a, walk)
        _assert_same_bits(b, walk)
        assert calls == {"lanes": 2, "walk": 1}


def test_lanes_walk_float32_runaway_and_where_it_does_not_apply(monkeypatch):
    """float32 inputs; runaway firing raises the same error from either walk; layers with delays or per-neuron
    time constants take the per-neuron walk (the lanes share one queue and one decay table)."""
    t, W, D = _layer(22, n_out=30, mean=0.5, delays=True)
    kw = dict(tau_mem=10.0, tau_syn=5.0, max_spikes=2)
    (a, _, walk), calls = _lanes_and_walk(t.astype(np.float32), W.astype(np.float32), monkeypatch, **kw)
    assert a.times.dtype == np.float32 and walk.capped_spikes > 0 and calls == {"lanes": 2, "walk": 1}
    _assert_same_bits(a, walk)
    errs = []
    for lanes in (64, 0):
        monkeypatch.setattr(_lif_numpy, "COMPILED_LANES", lanes)
        with pytest.raises(ss.RunawayFiringError) as info:
            ss.lif_forward(t, W * 1e12, engine="numba", method="sequential", max_total_spikes=50, **kw)
        errs.append((info.value.sample, info.value.neuron, info.value.limit, info.value.time, str(info.value)))
    assert errs[0] == errs[1]
    for case in (dict(kw, delays=D), dict(kw, tau_mem=np.linspace(8.0, 12.0, 30))):
        d = case.pop("delays", None)
        (a, walk), calls = _lanes_and_walk(t, W, monkeypatch, lanes=(64,), delays=d, **case)
        assert calls["lanes"] == 0 and walk.counts.sum() > 0, case
        _assert_same_bits(a, walk)  # lanes on or off: the one per-neuron walk


@pytest.mark.parametrize("chunk_size", [2**32 + 1, 2**63, 2**70])
def test_scan_chunk_size_above_the_queue_allocates_only_the_queue(chunk_size):
    # The compiled scan allocated chunk_size lanes per neuron: MemoryError at 2**32 + 1 on a 4-entry queue, a Numba
    # TypingError from 2**63 on; any chunk_size beyond the queue means the whole queue (as on the NumPy engine).
    t, W, _ = _layer(7, batch=2, n_in=4, max_in=2, n_out=3, mean=1.0)
    kw = dict(tau_mem=10.0, tau_syn=5.0, max_spikes=4, method="scan")
    ref = ss.lif_forward(t, W, engine="numpy", chunk_size=chunk_size, **kw)
    out = ss.lif_forward(t, W, engine="numba", chunk_size=chunk_size, **kw)
    np.testing.assert_array_equal(out.counts, ref.counts)
    np.testing.assert_allclose(out.times, ref.times, **TOL["float64"]["times"])
