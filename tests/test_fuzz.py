"""Property tests (hypothesis) on thousands of tiny random layers: every implementation against the reference.

Each example is a small random LIF layer drawn to hit the hard cases: queue lengths around multiples of a small
``chunk_size`` (1 to 8), simultaneous inputs (times on a coarse grid, within one channel and across channels),
spikes at ``t = 0``, delays (some exactly zero, some on a grid so that arrivals tie), per-neuron time constants
(``tau_mem == tau_syn``, ``tau_mem == 2 tau_syn``, ``tau_mem < tau_syn``, a ratio ``1 + 1e-9``), thresholds other
than 1, capped records (``max_spikes`` 1 to 6), float32 and float64, and near-grazing crossings (weights scaled so
that the no-reset voltage peaks ``threshold * (1 +- eps)``, ``eps`` from ``1e-8`` to ``1e-2``: close to the
threshold but far from an exact graze, whose outcome the last bit of ``exp`` decides and on which backends may
legitimately disagree, see ``GrazingSpikeWarning``).

Checked against ``method="sequential"`` (the float64 reference):

- ``method="scan"`` (NumPy): counts identical, ``residuals.spike_event`` identical, times within ``TOL``;
- both NumPy backward methods on both forwards: gradients by name (``weights``, ``input_times``, ``delays``,
  ``threshold``) within ``TOL``;
- the CUDA kernels in their host emulation (``spikescan.cuda._hostemu``, as in ``test_cuda.py``; skipped without
  ``g++``): both forward kernels (thread per neuron, warp scan) and both backward kernels, same checks; on layers
  within its limits, the rebased forward kernel (``_lif.REBASED``) and the rebased closed-form backward
  (``_closed.REBASED``) too;
- the compiled engine, whose sequential forward sums rebased exponentials on layers with delays and one pair of time
  constants (counted: the test of the generators requires it on at least 15% of the compiled examples), with both
  its backwards (the reverse walk, and the closed form with its rebased factors where they apply);
- NaN and +-inf delays are rejected with a ``ValueError`` that names ``delays``;
- the ``"max"`` readout's tie rule (``li_backward`` docstring): when the maximum sits on a kink made by several
  inputs arriving at exactly ``t*``, ``kink_index`` is the first of them in the time-sorted order (the lowest flat
  index ``j * max_in + m``), which gets all of ``g V'(t*^-)``; the others get exactly zero; their sum matches a
  central finite difference of shifting them together; the emulated readout kernels agree.

``@settings(derandomize=True)``: the examples are a fixed function of the test, so CI runs are reproducible.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, note, settings
from hypothesis import strategies as st

import spikescan as ss
from spikescan import _lif_numpy, _validate
from spikescan.cuda import _closed, _hostemu, _lif, _readout

from tolerances import TOL

BACKWARD_KERNELS = tuple(_lif.BACKWARD_KERNELS)
GRAD_NAMES = ("weights", "input_times", "delays", "threshold", "tau_mem", "tau_syn")

# Time constant pairs (tau_mem, tau_syn) drawn per layer or per neuron.
TAU_PAIRS = [(10.0, 5.0), (5.0, 5.0), (6.0, 6.0 * (1 + 1e-9)), (4.0, 9.0), (7.0, 3.0), (8.0, 4.0), (3.0, 1.5)]

def fast(max_examples):
    """Deterministic settings (``derandomize``) with no per-example deadline."""
    return settings(max_examples=max_examples, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])

# Relative margins of the no-reset peak over the threshold in the near-grazing layers.
GRAZING_EPS = (1e-6, -1e-6, 1e-4, -1e-4, 1e-2)
GRAZING_EPS_CLOSER = (1e-8, -1e-8)

_HOST = []


def host_kernels():
    """The host emulation of the CUDA kernels (compiled once, cached by source hash), or skip without ``g++``."""
    if _hostemu.compiler() is None:
        pytest.skip("no host C++ compiler for the kernel emulation")
    if not _HOST:
        _HOST.append(_hostemu.HostKernels())
    return _HOST[0]


# ---------------------------------------------------------------------------------------------------------------
# Random layers
# ---------------------------------------------------------------------------------------------------------------

@st.composite
def layers(draw, grazing=()):
    """A dict of ``lif_forward`` arguments plus ``chunk_size``, ``dtype`` and ``seed`` (for the cotangent)."""
    dtype = draw(st.sampled_from(["float64", "float32"]))
    chunk_size = draw(st.sampled_from([1, 2, 3, 4, 8]))
    batch = draw(st.integers(1, 2))
    n_in = draw(st.integers(1, 4))
    n_out = draw(st.integers(1, 3))
    # Queue length (input spikes of sample 0) around a multiple of the chunk size; sample 1 may have fewer.
    length = max(1, chunk_size * draw(st.integers(1, 3)) + draw(st.integers(-1, 1)))
    max_in = -(-length // n_in)
    time_mode = draw(st.sampled_from(["uniform", "grid", "zeros"]))
    delay_mode = draw(st.sampled_from([None, "uniform", "grid"]))
    tau_mode = draw(st.sampled_from(["scalar", "per_neuron"]))
    threshold = draw(st.sampled_from([1.0, 1.0, 0.7, 1.6]))
    mean = draw(st.sampled_from([0.3, 0.8, 1.5, 3.0]))
    max_spikes = draw(st.integers(1, 6))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)

    t_hi = 2.0 * length + 5.0
    t = np.full((batch, n_in * max_in), np.inf)
    for b in range(batch):
        n_b = length if b == 0 else int(rng.integers(0, length + 1))
        if time_mode == "grid":  # few distinct times: ties within and across channels
            vals = rng.integers(0, max(2, length // 2 + 1), n_b) * 1.5
        else:
            vals = rng.uniform(0.0, t_hi, n_b)
            if time_mode == "zeros":
                vals[rng.random(n_b) < 0.4] = 0.0
        t[b, rng.permutation(n_in * max_in)[:n_b]] = vals
    t = np.sort(t.reshape(batch, n_in, max_in), axis=-1)
    W = rng.normal(mean, 1.0, (n_in, n_out))
    D = None
    if delay_mode == "uniform":
        D = rng.uniform(0.0, 3.0, (n_in, n_out))
    elif delay_mode == "grid":
        D = rng.integers(0, 3, (n_in, n_out)) * 1.5
    if D is not None:
        D[rng.random(D.shape) < 0.3] = 0.0
    if tau_mode == "scalar":
        tau_mem, tau_syn = TAU_PAIRS[int(rng.integers(len(TAU_PAIRS)))]
    else:
        pairs = np.array([TAU_PAIRS[k] for k in rng.integers(len(TAU_PAIRS), size=n_out)])
        tau_mem, tau_syn = pairs[:, 0].copy(), pairs[:, 1].copy()
    analytic_ok = bool(np.all(np.abs(np.asarray(tau_mem) - 2.0 * np.asarray(tau_syn)) <= 1e-12 * np.asarray(tau_mem)))
    solver = draw(st.sampled_from(["newton", "bisection", "analytic"] if analytic_ok else ["newton", "bisection"]))
    t = t.astype(dtype)
    if grazing:
        # Scale each neuron's weights so that its no-reset voltage on sample 0 peaks at threshold * (1 + eps).
        eps = draw(st.sampled_from(grazing))
        if draw(st.booleans()):
            W = np.abs(W)
        peak = ss.peak_voltage(t.astype(np.float64), W, tau_mem=tau_mem, tau_syn=tau_syn, delays=D).values[0]
        scale = np.where(peak > 0, threshold * (1.0 + eps) / np.where(peak > 0, peak, 1.0), 1.0)
        W = W * scale[None, :]
    W = W.astype(dtype)
    if D is not None:
        D = D.astype(dtype)
    return dict(input_times=t, weights=W, delays=D, tau_mem=tau_mem, tau_syn=tau_syn, threshold=threshold,
                max_spikes=max_spikes, solver=solver, chunk_size=chunk_size, dtype=dtype, seed=seed)


def _split(case):
    kw = {k: v for k, v in case.items() if k not in ("chunk_size", "dtype", "seed")}
    return kw, case["chunk_size"], case["dtype"]


def _note_case(case):
    with np.printoptions(precision=17, threshold=10_000):
        for k, v in case.items():
            note(f"{k} = {v!r}")


# ---------------------------------------------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------------------------------------------

def assert_same_spikes(ref, out, dtype, label):
    counts, times = np.asarray(out.counts), np.asarray(out.times)
    np.testing.assert_array_equal(counts, ref.counts, err_msg=f"counts {label}")
    np.testing.assert_array_equal(np.asarray(out.residuals.spike_event), ref.residuals.spike_event,
                                  err_msg=f"spike_event {label}")
    assert times.dtype == ref.times.dtype, label
    np.testing.assert_array_equal(np.isfinite(times), np.isfinite(ref.times), err_msg=f"finite times {label}")
    fin = np.isfinite(ref.times)
    np.testing.assert_allclose(times[fin], ref.times[fin], err_msg=f"times {label}", **TOL[dtype]["times"])


def conditioning(case, ref):
    """``max over recorded spikes of (threshold / (tau_mem dV/dt))^2``, from the exact current at each spike
    (``lif_trace``; ``dV/dt = (I - threshold) / tau_mem`` just before it), ``1`` without spikes.

    Two exact implementations can place a spike differently by a few ulp of ``V`` divided by the slope ``dV/dt``;
    the gradients carry ``1 / (dV/dt)``, so their difference grows like that shift times ``V'' / (dV/dt)``: the
    square of ``1 / (tau_mem dV/dt)`` in threshold units. Gradient tolerances scale with it (``grad_tol``). Only
    recorded spikes are measured."""
    fin = np.isfinite(ref.times)
    if not fin.any():
        return 1.0
    kw, _, _ = _split(case)
    t = np.unique(np.asarray(ref.times, np.float64)[fin])
    trace = ss.lif_trace(kw["input_times"], kw["weights"], t, tau_mem=kw["tau_mem"], tau_syn=kw["tau_syn"],
                         threshold=kw["threshold"], delays=kw["delays"])
    b, i, m = np.nonzero(fin)
    current = trace.current[b, i, np.searchsorted(t, np.asarray(ref.times, np.float64)[b, i, m])]
    tau_mem = np.broadcast_to(np.asarray(kw["tau_mem"], np.float64), (ref.times.shape[1],))[i]
    slope = np.abs(current - kw["threshold"]) / tau_mem
    with np.errstate(divide="ignore"):
        return float(max(1.0, np.max((kw["threshold"] / (tau_mem * slope)) ** 2)))


def grad_tol(dtype, cond):
    """The tolerance table's gradient entry, widened by ``1e-13 * cond`` (see ``conditioning``; the constant is
    empirical: about 500 ulp, fitted on the worst cases of the 3000-example run): well-conditioned spikes
    (``tau_mem dV/dt`` of the order of the threshold) keep the table's ``1e-9``."""
    tol = dict(TOL[dtype]["grads"])
    tol["rtol"] += 1e-13 * cond
    return tol


def assert_same_grads(ref, out, dtype, label, cond=1.0, names=GRAD_NAMES):
    tol = grad_tol(dtype, cond)
    for name in names:
        a, b = getattr(ref, name), getattr(out, name)
        if a is None:
            assert b is None, f"grad_{name} {label}"
            continue
        b = np.asarray(b)
        assert b.shape == np.shape(a) and b.dtype == np.asarray(a).dtype, f"grad_{name} {label}"
        atol = tol["atol"] + (tol["rtol"] - TOL[dtype]["grads"]["rtol"]) * float(np.max(np.abs(a), initial=0.0))
        np.testing.assert_allclose(b, a, err_msg=f"grad_{name} {label}", rtol=tol["rtol"], atol=atol)


def _reference(case):
    kw, chunk_size, dtype = _split(case)
    ref = ss.lif_forward(method="sequential", engine="numpy", **kw)
    G = np.random.default_rng(case["seed"] ^ 0x5EED).normal(size=ref.times.shape).astype(ref.times.dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ss.GrazingSpikeWarning)
        ref_g = ss.lif_backward(ref, G, method="sequential", engine="numpy", time_constant_grads=True)
    return ref, G, ref_g


def check_numpy(case):
    """``scan`` vs ``sequential`` forward and every NumPy backward against the reference; returns the reference."""
    kw, chunk_size, dtype = _split(case)
    ref, G, ref_g = _reference(case)
    cond = conditioning(case, ref)
    out = ss.lif_forward(method="scan", chunk_size=chunk_size, engine="numpy", **kw)
    assert_same_spikes(ref, out, dtype, f"(numpy scan, chunk {chunk_size})")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ss.GrazingSpikeWarning)
        for fwd_name, fwd in (("sequential", ref), ("scan", out)):
            for bwd in ("sequential", "scan"):
                if fwd_name == "sequential" and bwd == "sequential":
                    continue
                assert_same_grads(ref_g, ss.lif_backward(fwd, G, method=bwd, engine="numpy", time_constant_grads=True),
                                  dtype,
                                  f"(numpy forward {fwd_name}, backward {bwd})", cond)
    return ref


def check_compiled(case):
    """The Numba engine (both forward methods, its backward) against the NumPy reference."""
    kw, chunk_size, dtype = _split(case)
    ref, G, ref_g = _reference(case)
    cond = conditioning(case, ref)
    rebased = _rebased(kw)  # the compiled sequential forward sums rebased exponentials
    _STATS["rebased"][0] += int(rebased)
    _STATS["rebased"][1] += int(rebased and ref.counts.sum() > 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ss.GrazingSpikeWarning)
        for method in ("sequential", "scan"):
            out = ss.lif_forward(method=method, chunk_size=chunk_size, engine="numba", **kw)
            label = f"(numba {method}{', rebased' if rebased and method == 'sequential' else ''}, chunk {chunk_size})"
            assert_same_spikes(ref, out, dtype, label)
            for bwd in ("sequential", "closed"):  # the reverse walk; the closed form (rebased factors where they apply)
                assert_same_grads(ref_g, ss.lif_backward(out, G, method=bwd, engine="numba", time_constant_grads=True),
                                  dtype, f"(numba forward {method}, numba backward {bwd})", cond)
    return ref


def _rebased(kw):
    """Whether the rebased forward (compiled, and CUDA with ``_lif.REBASED``) applies to a case's layer."""
    n_out = kw["weights"].shape[1]
    tm = np.broadcast_to(np.asarray(kw["tau_mem"], np.float64), (n_out,))
    ts = np.broadcast_to(np.asarray(kw["tau_syn"], np.float64), (n_out,))
    D = None if kw["delays"] is None else np.asarray(kw["delays"], np.float64)
    return _lif_numpy.rebased_applies(D, tm, ts)


def check_emulated(case):
    """Both CUDA forward kernels and both backward kernels, in the host emulation, against the NumPy reference."""
    hk = host_kernels()
    kw, chunk_size, dtype = _split(case)
    ref, G, ref_g = _reference(case)
    cond = conditioning(case, ref)
    n_out = kw["weights"].shape[1]
    tm = _validate.time_constant("tau_mem", kw["tau_mem"], n_out, np)
    ts = _validate.time_constant("tau_syn", kw["tau_syn"], n_out, np)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ss.GrazingSpikeWarning)
        for method in ("sequential", "scan"):
            out = _lif.forward(np, hk.launch, kw["input_times"], kw["weights"], kw["delays"], tm, ts, kw["threshold"],
                               kw["max_spikes"], method, chunk_size, kw["solver"])
            assert_same_spikes(ref, out, dtype, f"(emulated {method}, chunk {chunk_size})")
            for bwd in BACKWARD_KERNELS:
                assert_same_grads(ref_g, _lif.backward(np, hk.launch, out, G, bwd, time_constant_grads=True), dtype,
                                  f"(emulated forward {method}, backward kernel {bwd})", cond)
            if method == "sequential":  # the closed-form kernel, atomic and deterministic reductions
                for det in (False, True):
                    assert_same_grads(ref_g, _closed.backward_closed(np, hk.launch, out, G, True, det, True), dtype,
                                      f"(emulated forward {method}, closed-form kernel, deterministic={det})", cond)
        if _rebased(kw):  # the rebased forward kernel (opt-in on CuPy), then the closed-form backward from it
            saved, _lif.REBASED = _lif.REBASED, True
            try:
                out = _lif.forward(np, hk.launch, kw["input_times"], kw["weights"], kw["delays"], tm, ts,
                                   kw["threshold"], kw["max_spikes"], "sequential", chunk_size, kw["solver"])
            finally:
                _lif.REBASED = saved
            assert_same_spikes(ref, out, dtype, "(emulated rebased forward)")
            saved, _closed.REBASED = _closed.REBASED, True  # and the closed form's rebased factors
            try:
                g = _closed.backward_closed(np, hk.launch, out, G, True, False, True)
            finally:
                _closed.REBASED = saved
            assert_same_grads(ref_g, g, dtype, "(emulated rebased forward, rebased closed-form kernel)", cond)
    return ref


# ---------------------------------------------------------------------------------------------------------------
# LIF properties
# ---------------------------------------------------------------------------------------------------------------

# [examples, examples with a spike]; "rebased": the compiled examples whose sequential forward sums rebased
# exponentials.
_STATS = {"numpy": [0, 0], "grazing": [0, 0], "emulated": [0, 0], "compiled": [0, 0], "rebased": [0, 0]}


@fast(800)
@given(case=layers())
def test_scan_equals_sequential_on_random_layers(case):
    _note_case(case)
    ref = check_numpy(case)
    _STATS["numpy"][0] += 1
    _STATS["numpy"][1] += int(ref.counts.sum() > 0)


@fast(300)
@given(case=layers(grazing=GRAZING_EPS))
def test_near_grazing_crossings(case):
    _note_case(case)
    ref = check_numpy(case)
    _STATS["grazing"][0] += 1
    _STATS["grazing"][1] += int(ref.counts.sum() > 0)


@fast(250)
@given(case=layers(), grazing_case=layers(grazing=GRAZING_EPS), which=st.booleans())
def test_cuda_emulation_equals_reference_on_random_layers(case, grazing_case, which):
    case = grazing_case if which else case
    _note_case(case)
    ref = check_emulated(case)
    _STATS["emulated"][0] += 1
    _STATS["emulated"][1] += int(ref.counts.sum() > 0)


@fast(300)
@given(case=layers(), grazing_case=layers(grazing=GRAZING_EPS), which=st.booleans())
def test_compiled_engine_equals_reference_on_random_layers(case, grazing_case, which):
    pytest.importorskip("numba")
    case = grazing_case if which else case
    _note_case(case)
    ref = check_compiled(case)
    _STATS["compiled"][0] += 1
    _STATS["compiled"][1] += int(ref.counts.sum() > 0)


def test_random_layers_exercise_spikes():
    """The generators are not vacuous: most examples fire (runs after the properties above in file order)."""
    for name, (n, firing) in _STATS.items():
        if n:
            assert firing >= 0.5 * n, (name, n, firing)
    if _STATS["compiled"][0]:  # the compiled property also covers the rebased forward, often
        assert _STATS["rebased"][0] >= 0.15 * _STATS["compiled"][0], _STATS


@fast(200)
@given(case=layers(), bad=st.sampled_from([np.nan, np.inf, -np.inf]), data=st.data())
def test_non_finite_delays_are_rejected(case, bad, data):
    kw, _, dtype = _split(case)
    W = kw["weights"]
    D = np.zeros(W.shape, dtype) if kw["delays"] is None else kw["delays"].copy()
    j = data.draw(st.integers(0, W.shape[0] - 1))
    i = data.draw(st.integers(0, W.shape[1] - 1))
    D[j, i] = bad
    kw["delays"] = D
    before = kw["input_times"].copy()
    for method in ("sequential", "scan"):
        with pytest.raises(ValueError, match=r"^delays must be finite, got (nan|inf|-inf) at index"):
            ss.lif_forward(method=method, **kw)
    with pytest.raises(ValueError, match=r"^delays must be finite"):
        ss.peak_voltage(kw["input_times"], W, tau_mem=kw["tau_mem"], tau_syn=kw["tau_syn"], delays=D)
    np.testing.assert_array_equal(kw["input_times"], before)


# ---------------------------------------------------------------------------------------------------------------
# Readout "max": the tie rule for simultaneous inputs at the kink
# ---------------------------------------------------------------------------------------------------------------

@st.composite
def readout_cases(draw):
    """Inputs on a coarse grid (many exact ties), inhibitory weights that cut rises (kinks), ``t_max`` on the grid."""
    dtype = draw(st.sampled_from(["float64", "float32"]))
    batch = draw(st.integers(1, 3))
    n_in = draw(st.integers(2, 5))
    max_in = draw(st.integers(1, 3))
    n_out = draw(st.integers(1, 3))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    t = rng.integers(0, 8, (batch, n_in, max_in)) * 0.5
    t[rng.random(t.shape) < 0.2] = np.inf
    t = np.sort(t, axis=-1).astype(dtype)
    W = rng.normal(0.0, 1.5, (n_in, n_out))
    W[rng.random(W.shape) < 0.3] *= -3.0
    W = W.astype(dtype)
    pairs = np.array([TAU_PAIRS[k] for k in rng.integers(len(TAU_PAIRS), size=n_out)]) * 0.25
    t_max = float(draw(st.sampled_from([2.5, 3.0, 4.5])))
    return dict(t=t, W=W, tau_mem=pairs[:, 0].copy(), tau_syn=pairs[:, 1].copy(), t_max=t_max, dtype=dtype,
                seed=seed)


_TIES = [0, 0]  # [kinks seen, kinks made by two or more simultaneous inputs]


@fast(500)
@given(case=readout_cases())
def test_readout_max_tie_rule(case):
    _note_case(case)
    t, W, dtype = case["t"], case["W"], case["dtype"]
    kw = dict(tau_mem=case["tau_mem"], tau_syn=case["tau_syn"], readout="max", t_max=case["t_max"])
    res = ss.li_forward(t, W, **kw)
    batch, n_in, max_in = t.shape
    n_out = W.shape[1]
    flat = t.astype(np.float64).reshape(batch, n_in * max_in)
    rng = np.random.default_rng(case["seed"] ^ 0xC0DE)
    for b in range(batch):
        for i in range(n_out):
            k = int(res.residuals.kink_index[b, i])
            if k < 0:
                continue
            t_star = float(res.residuals.eval_time[b, i])
            tied = np.flatnonzero(flat[b] == t_star)
            _TIES[0] += 1
            _TIES[1] += int(tied.size > 1)
            # The documented rule: the first in the time-sorted order, i.e. the lowest flat index at t*.
            assert flat[b, k] == t_star and k == tied.min(), (b, i, k, tied)
            g = np.zeros((batch, n_out), dtype)
            g[b, i] = 1.0 + rng.random()
            gt = ss.li_backward(res, g).input_times[b].reshape(-1).astype(np.float64)
            others = tied[tied != k]
            np.testing.assert_array_equal(gt[others], 0.0, err_msg=f"tied inputs after the first, sample {b}")
            if dtype == "float64" and gt[k] != 0.0:
                # The inputs at t* moved together: a central difference (the max stays on their kink).
                h = 1e-7

                def value(shift):
                    t2 = t.copy().reshape(batch, -1)
                    t2[b, tied] += shift
                    return float(ss.li_forward(t2.reshape(t.shape), W, **kw).values[b, i]) * float(g[b, i])

                fd = (value(h) - value(-h)) / (2 * h)
                np.testing.assert_allclose(gt[tied].sum(), fd, rtol=1e-5, atol=1e-6,
                                           err_msg=f"kink gradient vs shift of the tied inputs, sample {b}")
    # The emulated readout kernels: same arg max and kink, values and gradients within TOL.
    hk = host_kernels()
    g = rng.normal(size=(batch, n_out)).astype(dtype)
    ref_g = ss.li_backward(res, g)
    out = _readout.forward(np, hk.launch, t, W, kw["tau_mem"], kw["tau_syn"], "max", kw["t_max"], None)
    np.testing.assert_array_equal(out.residuals.kink_index, res.residuals.kink_index)
    np.testing.assert_allclose(out.values, res.values, **TOL[dtype]["times"])
    got = _readout.backward(np, hk.launch, out, g)
    for name in ("weights", "input_times"):
        np.testing.assert_allclose(getattr(got, name), getattr(ref_g, name), err_msg=f"grad_{name}",
                                   **TOL[dtype]["grads"])


def test_readout_cases_exercise_ties():
    """Runs after the property above (file order): many of its kinks were made by simultaneous inputs."""
    if _TIES[0]:
        assert _TIES[1] >= 20, _TIES


@pytest.mark.slow
@settings(max_examples=3000, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(case=layers(), grazing_case=layers(grazing=GRAZING_EPS))
def test_scan_equals_sequential_many_layers_slow(case, grazing_case):
    check_numpy(case)
    check_numpy(grazing_case)
    if _lif_numpy.numba_available():
        check_compiled(case)
        check_compiled(grazing_case)


# A case the property found (times 1.3e-12 relative apart, beyond the table's 1e-12), pinned so that the expected
# failure does not depend on which examples a Hypothesis release draws: derandomized draws change between releases,
# and those of 6.170 all passed, which made this strict xfail an XPASS.
CLOSER_GRAZING_CASE = dict(
    input_times=np.array([[[0.2809698039849946, 0.6965499069153097, 4.586374133985795, 10.828348684464723,
                            13.825594066404632, 15.516844813721269]]]),
    weights=np.array([[-2.0250307746388345, 0.8768370786310511]]),
    delays=np.array([[2.1889663392898324, 0.526966861807677]]), tau_mem=10.0, tau_syn=5.0, threshold=1.0,
    max_spikes=1, solver="newton", chunk_size=2, dtype="float64", seed=0)


@pytest.mark.xfail(strict=True, reason="near-grazing conditioning of the spike times: see the docstring")
@fast(300)
@example(case=CLOSER_GRAZING_CASE)
@given(case=layers(grazing=GRAZING_EPS_CLOSER))
def test_closer_grazing_crossings(case):
    """Margins of ``1e-8`` of the threshold: slopes ``dV/dt ~ 1e-4`` at the crossing. The gradient tolerance now
    scales with the conditioning (``grad_tol``), but the spike times themselves differ beyond the table's ``1e-12``
    (e.g. 6.4319287342361005 vs 6.431928734226398, 1.5e-12 relative, for inputs at 0, 0, 1.5): a root of
    ``V - threshold`` with slope ``s`` is only determined to ``ulp(V) / s``. Found by this property, with the fixed
    gradient tolerance: the
    scan's spike time may differ from the reference's by ~1e-11 (both within ``TOL["float64"]["times"]`` and within
    ~1e-12 relative of the exact time), and the gradients, which carry ``1 / (dV/dt)``, then differ by ~1e-8
    relative, beyond ``TOL["float64"]["grads"]`` (1e-9). Minimal case: ``input_times = [[[1.8740749653552387,
    6.653681121103338, 12.332442812784171, 12.356028052237159]]]``, ``weights = [[0.8161741773307969]]``,
    ``tau_mem = 6.0``, ``tau_syn = 6.0000000060000005``, ``max_spikes = 1``, ``chunk_size = 2``: one spike at
    16.76933832019174 (exact), sequential 16.769338320176537, scan 16.769338320188297; ``grad_weights`` -69540.92521517
    (sequential) vs -69540.92617897 (scan forward), 1.4e-8 relative."""
    _note_case(case)
    check_numpy(case)
