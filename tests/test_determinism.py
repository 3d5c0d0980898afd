"""Run-to-run determinism: identical inputs give bit-identical outputs and gradients.

NumPy backend (``lif_forward`` / ``lif_backward`` with both methods, with and without delays, float32 and float64;
``li_forward`` / ``li_backward`` for every readout; ``peak_voltage`` / ``peak_voltage_backward``): every output and
gradient is bit-identical from call to call and from process to process. Queues are built with stable sorts
(simultaneous spikes in flat source order), every reduction is a NumPy sum in a fixed order, and nothing depends on
hash order, threads or global state. Compared here byte for byte (``tobytes``: ``-0.0`` differs from ``0.0``).

CUDA host emulation (``spikescan.cuda._hostemu``): bit-identical as well (one OS thread runs the CUDA threads in a
fixed order, so its ``atomicAdd`` is an ordinary add in a fixed order). Checked for both forward kernels, both
backward kernels, with and without delays, and the readout kernels.

On a real GPU (read from ``spikescan/cuda/kernels/*.cu``):

- Deterministic, bit for bit run to run (same GPU, same CuPy/CUDA build): everything that one thread (or one warp,
  through fixed shuffle patterns) writes alone.
  - ``lif_forward``: ``times``, ``counts`` and ``residuals.spike_event`` / ``spike_times`` (``lif_forward.cu``:
    ``spikescan_lif_forward_sequential`` one thread per (sample, neuron), ``spikescan_lif_forward_scan`` one warp
    per (sample, neuron); no atomics). The queues come from ``cupy.argsort``, which is stable, or from
    ``queue.cu`` (opt-in), which sorts by (arrival, position) into a total order.
  - ``li_forward(readout="max")``: ``values``, ``eval_time``, ``kink_index`` (``spikescan_li_max_forward``, one
    thread per (sample, neuron)).
- Order-dependent float64 sums (``atomicAdd`` on double; the order in which threads arrive varies, so the last
  bits vary from run to run; results stay within rounding of each other):
  - ``lif_backward`` (``lif_backward.cu``, both kernels): ``weights`` (over samples, and in the warp kernel over
    repeated spikes of one channel), ``input_times`` (over neurons), ``delays`` (over samples), ``threshold`` (over
    everything; the warp kernel sums a warp first, then one atomic per neuron).
  - ``li_forward(readout="integral" | "final")``: ``values`` (``spikescan_li_linear_forward``: one atomic per
    (sample, input channel, neuron) into ``values[b, i]``, so the forward itself is order-dependent).
  - ``li_backward``, every readout: ``weights`` (over samples), ``input_times`` (over neurons); for ``"max"`` also
    the per-(sample, neuron) partial sums ``V(t*)`` and ``I(t*^-)`` behind the kink term.
- ``peak_voltage`` has no CUDA path (NumPy only).

The ``gpu``-marked tests below assert bitwise equality of the deterministic outputs on two runs and closeness
(not equality) of the atomically accumulated ones; and bitwise equality of everything under the opt-in
deterministic settings (``spikescan.cuda._closed.DETERMINISTIC`` for the closed-form LIF backward,
``spikescan.cuda._readout.DETERMINISTIC`` for the readouts: fixed-order reductions, no float atomics).
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import warnings

import numpy as np
import pytest

import spikescan as ss
from spikescan import _validate
from spikescan.cuda import _hostemu, _lif, _readout, is_available

from _cases import random_spikes, weights

KW = dict(tau_mem=np.array([10.0, 5.0, 6.0, 8.0, 7.0]), tau_syn=np.array([5.0, 5.0, 6.0 * (1 + 1e-9), 2.0, 3.0]),
          max_spikes=6)


def _case(dtype="float64", ties=True):
    """Inputs with simultaneous spikes, spikes at t = 0, padding, negative weights; delays with zeros."""
    rng = np.random.default_rng(2024)
    t = random_spikes(rng, 3, 9, 5, t_max=40.0)
    if ties:
        t[:, :3] = np.sort(np.round(t[:, :3]), axis=-1)
        t[0, 4, 0] = 0.0
        t[0, 4] = np.sort(t[0, 4])
    W = weights(rng, 9, 5, mean=0.7, std=0.9)
    D = rng.uniform(0.0, 4.0, (9, 5))
    D[rng.random(D.shape) < 0.3] = 0.0
    return t.astype(dtype), W.astype(dtype), D.astype(dtype)


def _leaves(x, prefix="out"):
    """Every array / scalar inside nested NamedTuples, with its path."""
    if x is None or isinstance(x, (str, type, np.dtype)):
        return []
    if isinstance(x, tuple) and hasattr(x, "_fields"):
        return [leaf for f in x._fields for leaf in _leaves(getattr(x, f), f"{prefix}.{f}")]
    if isinstance(x, tuple):
        return [leaf for k, v in enumerate(x) for leaf in _leaves(v, f"{prefix}[{k}]")]
    return [(prefix, np.asarray(x))]


def assert_bitwise(a, b):
    la, lb = _leaves(a), _leaves(b)
    assert [p for p, _ in la] == [p for p, _ in lb]
    for (path, x), (_, y) in zip(la, lb):
        assert x.dtype == y.dtype and x.shape == y.shape, path
        assert np.ascontiguousarray(x).tobytes() == np.ascontiguousarray(y).tobytes(), f"{path} differs run to run"


def _digest(*results):
    h = hashlib.sha256()
    for r in results:
        for path, x in _leaves(r):
            h.update(path.encode())
            h.update(str(x.dtype).encode())
            h.update(np.ascontiguousarray(x).tobytes())
    return h.hexdigest()


def _lif_run(dtype, method, delays, bwd):
    t, W, D = _case(dtype)
    out = ss.lif_forward(t.copy(), W.copy(), delays=D.copy() if delays else None, method=method, chunk_size=4,
                         **KW)
    G = np.random.default_rng(7).normal(size=out.times.shape).astype(out.times.dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ss.GrazingSpikeWarning)
        grads = ss.lif_backward(out, G, method=bwd)
    return out, grads


# ---------------------------------------------------------------------------------------------------------------
# NumPy
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.usefixtures("cpu_engine")  # the NumPy implementation and the compiled engine (tests/conftest.py)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("delays", [False, True])
@pytest.mark.parametrize("method", ["sequential", "scan"])
def test_lif_numpy_is_bitwise_deterministic(method, delays, dtype):
    first = _lif_run(dtype, method, delays, method)
    assert first[0].counts.sum() > 10
    for _ in range(2):
        assert_bitwise(first, _lif_run(dtype, method, delays, method))
    # The other backward method on the same forward: also reproducible.
    other = "scan" if method == "sequential" else "sequential"
    assert_bitwise(_lif_run(dtype, method, delays, other), _lif_run(dtype, method, delays, other))


@pytest.mark.parametrize("readout,tau_readout", [("final", None), ("integral", None), ("integral", 3.0),
                                                 ("max", None)])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_li_numpy_is_bitwise_deterministic(readout, tau_readout, dtype):
    def run():
        t, W, _ = _case(dtype)
        res = ss.li_forward(t, W, tau_mem=KW["tau_mem"], tau_syn=KW["tau_syn"], readout=readout, t_max=30.0,
                            tau_readout=tau_readout)
        g = np.random.default_rng(8).normal(size=res.values.shape).astype(dtype)
        return res, ss.li_backward(res, g)

    first = run()
    assert np.abs(first[0].values).max() > 0
    for _ in range(2):
        assert_bitwise(first, run())


@pytest.mark.parametrize("delays", [False, True])
def test_peak_voltage_is_bitwise_deterministic(delays):
    def run():
        t, W, D = _case()
        res = ss.peak_voltage(t, W, tau_mem=KW["tau_mem"], tau_syn=KW["tau_syn"], delays=D if delays else None)
        g = np.random.default_rng(9).normal(size=res.values.shape)
        return res, ss.peak_voltage_backward(res, g)

    first = run()
    assert (first[0].values > 0).any()
    for _ in range(2):
        assert_bitwise(first, run())


_SUBPROCESS = """
import sys
sys.path.insert(0, {tests!r})
import test_determinism as td
print(td._all_numpy_digest())
"""


def _all_numpy_digest():
    results = []
    for dtype in ("float64", "float32"):
        for method in ("sequential", "scan"):
            for delays in (False, True):
                results.extend(_lif_run(dtype, method, delays, method))
    t, W, D = _case()
    for readout in ("final", "integral", "max"):
        res = ss.li_forward(t, W, tau_mem=KW["tau_mem"], tau_syn=KW["tau_syn"], readout=readout, t_max=30.0)
        results += [res, ss.li_backward(res, np.ones(res.values.shape))]
    pk = ss.peak_voltage(t, W, tau_mem=KW["tau_mem"], tau_syn=KW["tau_syn"], delays=D)
    results += [pk, ss.peak_voltage_backward(pk, np.ones(pk.values.shape))]
    return _digest(*results)


def test_numpy_is_bitwise_deterministic_across_processes():
    """A fresh interpreter (new hash seed, no warm caches) gives the same bytes as this one."""
    import os

    here = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, PYTHONHASHSEED="12345")
    proc = subprocess.run([sys.executable, "-c", _SUBPROCESS.format(tests=here)], capture_output=True, text=True,
                          env=env, check=True)
    assert proc.stdout.strip().splitlines()[-1] == _all_numpy_digest()


# ---------------------------------------------------------------------------------------------------------------
# CUDA host emulation
# ---------------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def host_kernels():
    if _hostemu.compiler() is None:
        pytest.skip("no host C++ compiler for the kernel emulation")
    return _hostemu.HostKernels()


def _emulated_lif(hk, dtype, method, delays, bwd):
    t, W, D = _case(dtype)
    n_out = W.shape[1]
    tm = _validate.time_constant("tau_mem", KW["tau_mem"], n_out, np)
    ts = _validate.time_constant("tau_syn", KW["tau_syn"], n_out, np)
    out = _lif.forward(np, hk.launch, t, W, D if delays else None, tm, ts, 1.0, KW["max_spikes"], method, 4,
                       "newton")
    G = np.random.default_rng(7).normal(size=out.times.shape).astype(out.times.dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ss.GrazingSpikeWarning)
        return out, _lif.backward(np, hk.launch, out, G, bwd)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("delays", [False, True])
@pytest.mark.parametrize("method", ["sequential", "scan"])
def test_lif_emulation_is_bitwise_deterministic(host_kernels, method, delays, dtype):
    for bwd in _lif.BACKWARD_KERNELS:
        first = _emulated_lif(host_kernels, dtype, method, delays, bwd)
        assert first[0].counts.sum() > 10
        assert_bitwise(first, _emulated_lif(host_kernels, dtype, method, delays, bwd))


@pytest.mark.parametrize("readout", ["final", "integral", "max"])
def test_readout_emulation_is_bitwise_deterministic(host_kernels, readout):
    def run():
        t, W, _ = _case()
        out = _readout.forward(np, host_kernels.launch, t, W, KW["tau_mem"], KW["tau_syn"], readout, 30.0, None)
        g = np.random.default_rng(8).normal(size=out.values.shape)
        return out, _readout.backward(np, host_kernels.launch, out, g)

    assert_bitwise(run(), run())


# ---------------------------------------------------------------------------------------------------------------
# Real GPU
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("delays", [False, True])
@pytest.mark.parametrize("method", ["sequential", "scan"])
def test_gpu_forward_is_bitwise_and_atomic_gradients_are_close(method, delays):
    """Forward outputs (one writer each) are bit-identical run to run; atomically summed gradients and the linear
    readouts' values only agree to rounding (their summation order varies), so they are compared with allclose."""
    if not is_available():
        pytest.skip("no CUDA device")
    import cupy as cp

    rng = np.random.default_rng(11)
    t = random_spikes(rng, 32, 60, 6, t_max=100.0)
    W = weights(rng, 60, 48, mean=0.3, std=0.5)
    D = rng.uniform(0.0, 8.0, (60, 48)) if delays else None
    G = rng.normal(size=(32, 48, 12))

    def run():
        out = ss.lif_forward(cp.asarray(t), cp.asarray(W), delays=None if D is None else cp.asarray(D),
                             tau_mem=10.0, tau_syn=5.0, max_spikes=12, method=method, chunk_size=8)
        grads = {}
        for bwd in _lif.BACKWARD_KERNELS:
            g = _lif.backward(cp, _lif._cupy_launch, out, cp.asarray(G), bwd)
            grads[bwd] = {name: cp.asnumpy(getattr(g, name)) for name in ("weights", "input_times", "delays",
                                                                          "threshold") if getattr(g, name) is not None}
        fwd = {"times": cp.asnumpy(out.times), "counts": cp.asnumpy(out.counts),
               "spike_event": cp.asnumpy(out.residuals.spike_event),
               "spike_times": cp.asnumpy(out.residuals.spike_times)}
        return fwd, grads

    (f1, g1), (f2, g2) = run(), run()
    assert f1["counts"].sum() > 100
    for name in f1:
        assert f1[name].tobytes() == f2[name].tobytes(), f"{name} differs run to run on the GPU"
    for bwd in g1:
        for name in g1[bwd]:
            np.testing.assert_allclose(g2[bwd][name], g1[bwd][name], rtol=1e-12, atol=1e-12,
                                       err_msg=f"grad_{name} ({bwd} kernel) run to run")

    tm, ts = cp.full(48, 10.0), cp.full(48, 5.0)
    for readout in ("max", "integral", "final"):
        r1 = _readout.forward(cp, _readout._cupy_launch, cp.asarray(t), cp.asarray(W), tm, ts, readout, 80.0, None)
        r2 = _readout.forward(cp, _readout._cupy_launch, cp.asarray(t), cp.asarray(W), tm, ts, readout, 80.0, None)
        v1, v2 = cp.asnumpy(r1.values), cp.asnumpy(r2.values)
        if readout == "max":
            assert v1.tobytes() == v2.tobytes()
            assert cp.asnumpy(r1.residuals.kink_index).tobytes() == cp.asnumpy(r2.residuals.kink_index).tobytes()
            assert cp.asnumpy(r1.residuals.eval_time).tobytes() == cp.asnumpy(r2.residuals.eval_time).tobytes()
        else:
            np.testing.assert_allclose(v2, v1, rtol=1e-12, atol=1e-12)
        gv = cp.asarray(rng.normal(size=v1.shape))
        b1 = _readout.backward(cp, _readout._cupy_launch, r1, gv)
        b2 = _readout.backward(cp, _readout._cupy_launch, r1, gv)
        for name in ("weights", "input_times"):
            np.testing.assert_allclose(cp.asnumpy(getattr(b2, name)), cp.asnumpy(getattr(b1, name)), rtol=1e-12,
                                       atol=1e-12, err_msg=f"readout {readout} grad_{name}")


@pytest.mark.gpu
@pytest.mark.parametrize("delays", [False, True])
def test_gpu_deterministic_settings_are_bitwise(monkeypatch, delays):
    """With ``_closed.DETERMINISTIC`` and ``_readout.DETERMINISTIC``, the closed-form LIF backward (time constants
    included) and the readouts' values and gradients are bit-identical run to run on the GPU, where the atomic
    kernels' are only close (the test above)."""
    if not is_available():
        pytest.skip("no CUDA device")
    import cupy as cp

    from spikescan.cuda import _closed

    monkeypatch.setattr(_closed, "DETERMINISTIC", True)
    monkeypatch.setattr(_readout, "DETERMINISTIC", True)
    rng = np.random.default_rng(13)
    t = random_spikes(rng, 32, 60, 6, t_max=100.0)
    W = weights(rng, 60, 48, mean=0.3, std=0.5)
    D = rng.uniform(0.0, 8.0, (60, 48)) if delays else None
    G = rng.normal(size=(32, 48, 12))
    out = ss.lif_forward(cp.asarray(t), cp.asarray(W), delays=None if D is None else cp.asarray(D), tau_mem=10.0,
                         tau_syn=5.0, max_spikes=12)
    assert int(out.counts.sum()) > 100
    runs = []
    for _ in range(2):
        g = ss.lif_backward(out, cp.asarray(G), method="closed", time_constant_grads=True)
        runs.append({n: cp.asnumpy(getattr(g, n)) for n in ("weights", "input_times", "delays", "threshold",
                                                            "tau_mem", "tau_syn") if getattr(g, n) is not None})
    for name in runs[0]:
        assert runs[0][name].tobytes() == runs[1][name].tobytes(), f"closed backward grad_{name} run to run"
    tm, ts = cp.full(48, 10.0), cp.full(48, 5.0)
    for readout in ("max", "integral", "final"):
        results = []
        for _ in range(2):
            r = _readout.forward(cp, _readout._cupy_launch, cp.asarray(t), cp.asarray(W), tm, ts, readout, 80.0,
                                 None)
            b = _readout.backward(cp, _readout._cupy_launch, r, cp.asarray(G[:, :, 0]), time_constant_grads=True)
            results.append([cp.asnumpy(x) for x in (r.values, b.weights, b.input_times, b.tau_mem, b.tau_syn)])
        for k, (x, y) in enumerate(zip(*results)):
            assert x.tobytes() == y.tobytes(), f"readout {readout} output {k} run to run"


# ---------------------------------------------------------------------------------------------------------------
# spikescan.set_deterministic: the switch and what it routes (the kernels themselves: test_cuda_closed,
# test_cuda (readouts), test_cuda_recurrent)
# ---------------------------------------------------------------------------------------------------------------

@pytest.fixture
def restore_switch(monkeypatch):
    monkeypatch.delenv("SPIKESCAN_DETERMINISTIC", raising=False)
    yield
    ss.set_deterministic(None)


def test_switch_and_environment_variable(restore_switch, monkeypatch):
    assert ss.deterministic() is False
    monkeypatch.setenv("SPIKESCAN_DETERMINISTIC", "1")
    assert ss.deterministic() is True
    ss.set_deterministic(False)  # the call wins over the environment
    assert ss.deterministic() is False
    ss.set_deterministic(None)
    assert ss.deterministic() is True
    monkeypatch.setenv("SPIKESCAN_DETERMINISTIC", "sometimes")
    with pytest.raises(ValueError, match="SPIKESCAN_DETERMINISTIC.*'sometimes'"):
        ss.deterministic()
    with pytest.raises(TypeError, match="enabled must be True, False or None, got 1"):
        ss.set_deterministic(1)
    ss.set_deterministic(np.True_)  # NumPy's booleans, as lif_backward's flags accept them
    assert ss.deterministic() is True
    ss.set_deterministic(None)


def test_switch_routes_every_cuda_path_to_its_fixed_order_kernels(restore_switch, host_kernels):
    """With the switch on (and the per-module settings off), the emulated CUDA launchers run the deterministic
    kernels: the closed-form backward's source-major kernels, the readouts' per-input kernel, the recurrent layer's
    source-major kernels; with it off, none of them."""
    from spikescan.cuda import _closed, _recurrent

    assert not (_closed.DETERMINISTIC or _readout.DETERMINISTIC or _recurrent.DETERMINISTIC)
    rng = np.random.default_rng(5)
    t = random_spikes(rng, 2, 6, 4, t_max=20.0)
    W = weights(rng, 6, 4, mean=0.6, std=0.4)
    D = rng.uniform(0.0, 2.0, (6, 4))
    R = rng.normal(-0.1, 0.3, (4, 4))
    tm, ts = np.full(4, 10.0), np.full(4, 5.0)
    deterministic_kernels = {"spikescan_lif_backward_closed_synapses", "spikescan_li_inputs",
                             "spikescan_recurrent_backward_synapses", "spikescan_recurrent_backward_input_times"}
    for enabled in (False, True):
        ss.set_deterministic(enabled)
        names = []

        def launch(module, kernel, *args, **kw):
            names.append(kernel)
            return host_kernels.launch(module, kernel, *args, **kw)

        out = _lif.forward(np, launch, t, W, D, tm, ts, 1.0, 4, "sequential", 32, "newton")
        assert out.counts.sum() > 0
        _closed.backward_closed(np, launch, out, np.ones(out.times.shape))
        ro = _readout.forward(np, launch, t, W, tm, ts, "final", 20.0, None)
        _readout.backward(np, launch, ro, np.ones(ro.values.shape))
        rec = _recurrent.forward(np, launch, t, W, D, tm, ts, np.ones(4), 4, "newton", 300, True, R, None)
        _recurrent.backward(np, launch, rec, np.ones(rec.times.shape))
        if enabled:
            assert deterministic_kernels <= set(names), sorted(deterministic_kernels - set(names))
        else:
            assert not deterministic_kernels & set(names), sorted(deterministic_kernels & set(names))


@pytest.mark.gpu
def test_gpu_public_switch_is_bitwise(restore_switch):
    """``spikescan.set_deterministic(True)`` on CuPy inputs: ``lif_backward``'s default method is bit-identical run
    to run, and the methods that sum with atomics are refused with the reason."""
    if not is_available():
        pytest.skip("no CUDA device")
    import cupy as cp

    rng = np.random.default_rng(17)
    t = random_spikes(rng, 16, 40, 6, t_max=100.0)
    W = weights(rng, 40, 32, mean=0.3, std=0.5)
    D = rng.uniform(0.0, 8.0, (40, 32))
    ss.set_deterministic(True)
    out = ss.lif_forward(cp.asarray(t), cp.asarray(W), delays=cp.asarray(D), tau_mem=10.0, tau_syn=5.0, max_spikes=8)
    G = cp.asarray(rng.normal(size=out.times.shape))
    g1, g2 = ss.lif_backward(out, G), ss.lif_backward(out, G)
    for name in ("weights", "input_times", "delays", "threshold"):
        assert cp.asnumpy(getattr(g1, name)).tobytes() == cp.asnumpy(getattr(g2, name)).tobytes(), name
    with pytest.raises(ValueError, match="method='sequential' sums gradients with float atomics"):
        ss.lif_backward(out, G, method="sequential")
