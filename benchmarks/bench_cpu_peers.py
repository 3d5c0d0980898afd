"""spikescan against other CPU simulators of the same layer, in one run: forward and forward+backward.

Three layers (``LAYERS``), tau_mem = 20 ms, tau_syn = 10 ms, threshold 1, times in ms:

- ``yinyang``: Yin-Yang sized, batch 64, 5 inputs with one spike each (the latency code of
  ``spikescan.datasets.yinyang``), 120 neurons;
- ``shd``: SHD-like, batch 8, 700 inputs, 5000 input spikes per sample over 1 s (``bench_lif.shd_like_inputs``),
  128 neurons;
- ``shd_delays``: the same inputs and weights with per-synapse delays in [0, 25] ms.

Contenders:

- spikescan, every engine x method: ``numpy`` and ``numba`` x ``sequential``, ``scan`` and ``auto`` (the ``numba``
  engine's backward is its compiled reverse walk for ``sequential`` and ``scan``, its compiled closed form for
  ``auto``: ``_lif_numpy.COMPILED_BACKWARD_AUTO``). Forward + backward is one
  ``lif_forward`` then one ``lif_backward`` (``grad_times`` one on every recorded spike, ``input_times_grad`` on);
  the forward time is that call's first part.
- jaxsnn (``jaxsnn.event``: its event-based LIF population with the EventProp backward), ``jit``-compiled with
  float64 (``jax_enable_x64``). Its neuron is the same (``tau_mem dV/dt = -V + I``, an input adds its weight to
  ``I``, reset to ``v_reset = 0`` keeping ``I``); its spike-time solver is closed form only for
  ``tau_mem = tau_syn`` or ``2 tau_syn``, hence the time constants. It simulates a fixed number of events per
  sample (``n_steps``, input spikes plus output spikes): set here to the most of any sample plus 16, and the run
  checks that the last step of every sample is empty (no event dropped). Forward + backward is ``jax.grad`` of the
  sum of all output spike times with respect to the weights. It has no per-synapse delays (one ``min_delay`` per
  projection), so ``shd_delays`` times spikescan alone.
- a discrete-time LIF with a surrogate gradient (snntorch ``Synaptic``, reset to zero, fast-sigmoid surrogate,
  float32) at dt = 1 ms and 0.1 ms: APPROXIMATE, a different computation (spike times on a grid of dt, some counts
  off by the discretisation), timed on the same layers for scale only. Its input scale makes the sub-threshold
  steps exact for inputs on the grid (``Discrete``). Input currents are scattered onto the grid from the weights
  inside the timed forward (input times and delays rounded down to the grid beforehand); forward + backward is the
  backward of the spike count sum through the surrogate.

Before any timing, every spikescan variant is checked against the NumPy sequential reference (identical counts)
and jaxsnn's spikes against spikescan's: the same spike count for every (sample, neuron) and the largest
difference of spike times, plus the largest relative difference of the weight gradients. A layer whose jaxsnn
spikes disagree is not timed on jaxsnn. The discrete baselines' distance from the exact spikes (counts, times) is
recorded as ``approximation``.

Times are medians over ``--repeats`` calls after a warm-up call (Numba compiles and JAX traces on the first call;
the NumPy engine compiles nothing and gets none: its first timed call is the one checked); every call's time is
kept in ``*_s_repeats``. The JSON starts with ``stamp`` (``_stamp.py``: commit, machine, versions), then
``environment`` (library versions, thread counts, the load average during the run: on a shared machine the absolute
times move with it, ratios within one run less).

    python benchmarks/bench_cpu_peers.py --output benchmarks/results/cpu_peers.json   # needs jaxsnn, snntorch
    python benchmarks/bench_cpu_peers.py --quick --peers none                           # smoke run

Peers that are not installed are skipped and recorded as such. jaxsnn and snntorch go into an environment of their
own so that they cannot change the versions of the project's jax or torch, e.g.
``python -m venv --system-site-packages /tmp/peers && /tmp/peers/bin/pip install jaxsnn snntorch`` and then
``/tmp/peers/bin/python benchmarks/bench_cpu_peers.py ...``.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import sys
import time

import numpy as np

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(_HERE))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

import spikescan as ss  # noqa: E402
from _stamp import stamp, write_json  # noqa: E402
from bench_lif import shd_like_inputs  # noqa: E402
from spikescan.datasets import yinyang  # noqa: E402

TAU_MEM, TAU_SYN, THRESHOLD = 20.0, 10.0, 1.0
MAX_SPIKES = 64
ENGINES = ("numpy", "numba")
METHODS = ("sequential", "scan", "auto")
PEERS = ("jaxsnn", "snntorch")
DTS = (1.0, 0.1)
JAXSNN_T_MAX = 1e6  # jaxsnn drops events after t_max: far after every spike of these layers
# Agreement: identical counts and spike times within this fraction of the largest spike time (float64 closed forms
# on both sides; measured differences are ~1e-12 of it).
AGREEMENT_RTOL = 1e-9

LAYERS = {
    "yinyang": dict(kind="yinyang", batch=64, n_in=5, n_out=120, delays=False, window_ms=100.0,
                    weight_mean=1.5, weight_std=1.0),
    "shd": dict(kind="shd", batch=8, n_in=700, spikes=5000, n_out=128, delays=False, window_ms=1100.0,
                weight_mean=0.02, weight_std=0.04),
    "shd_delays": dict(kind="shd", batch=8, n_in=700, spikes=5000, n_out=128, delays=True, window_ms=1150.0,
                       weight_mean=0.02, weight_std=0.04),
}
QUICK = {
    "yinyang": dict(batch=4, n_out=16),
    "shd": dict(batch=2, n_in=100, spikes=500, n_out=16),
    "shd_delays": dict(batch=2, n_in=100, spikes=500, n_out=16),
}


# ---------------------------------------------------------------- inputs

def make_layer(spec, seed=0):
    """``(input_times, weights, delays)`` in float64. SHD weights scale with ``5000 / spikes`` so that a smaller
    (quick) layer still fires; with 5000 spikes every neuron fires ~12 times."""
    if spec["kind"] == "yinyang":
        t = yinyang(spec["batch"], seed=seed, dtype=np.float64).times
        scale = 1.0
    else:
        t, _, _ = shd_like_inputs(spec["batch"], spec["n_in"], spec["spikes"], spec["n_out"], seed=seed)
        scale = 5000.0 / spec["spikes"]
    n_in = t.shape[1]
    w = np.random.default_rng(seed + 1).normal(spec["weight_mean"], spec["weight_std"], (n_in, spec["n_out"])) * scale
    d = np.random.default_rng(seed + 2).uniform(0.0, 25.0, (n_in, spec["n_out"])) if spec["delays"] else None
    return t, w, d


def _load():
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def _median(values):
    return float(np.median(values))


def _grad_ones(res):
    return np.where(np.isfinite(res.times), 1.0, 0.0)


# ---------------------------------------------------------------- spikescan

def spikescan_call(t, w, d, engine, method, max_spikes):
    """``(result, grads, forward seconds, forward+backward seconds)`` of one forward and one backward."""
    kw = dict(tau_mem=TAU_MEM, tau_syn=TAU_SYN, threshold=THRESHOLD, max_spikes=max_spikes, delays=d,
              engine=engine, method=method)
    t0 = time.perf_counter()
    res = ss.lif_forward(t, w, **kw)
    t1 = time.perf_counter()
    grad = _grad_ones(res)
    t2 = time.perf_counter()
    grads = ss.lif_backward(res, grad, method=method, engine=engine)
    t3 = time.perf_counter()
    return res, grads, t1 - t0, (t1 - t0) + (t3 - t2)


def resolved_auto(engine, t, spec, max_spikes, chunk_size=128):
    """What ``method="auto"`` runs for this layer."""
    from spikescan._lif_numpy import BACKWARD_AUTO, COMPILED_BACKWARD_AUTO, choose_forward_method

    if engine == "numba":
        return dict(forward="sequential",
                    backward=f"compiled {COMPILED_BACKWARD_AUTO} (the numba engine's auto backward)")
    from spikescan._memory import most_entries

    n = spec["batch"] * spec["n_out"]
    entries = most_entries(t, np)
    return dict(forward=choose_forward_method(n, entries + 1, chunk_size), backward=BACKWARD_AUTO)


def _check(name, engine, method, res, grads, ref):
    same_counts = bool(np.array_equal(res.counts, ref[0].counts))
    if not same_counts:  # every method and engine is exact: a benchmark of a wrong answer would mean nothing
        raise AssertionError(f"{name}: spikescan {engine}/{method} disagrees with the reference on counts")
    finite = np.isfinite(ref[0].times)
    time_diff = float(np.abs(res.times[finite] - ref[0].times[finite]).max()) if finite.any() else 0.0
    scale = max(float(np.abs(ref[1].weights).max()), 1e-300)
    return dict(layer=name, engine=engine, method=method, reference="numpy sequential", same_counts=same_counts,
                max_abs_time_diff_ms=time_diff,
                max_rel_weight_grad_diff=float(np.abs(grads.weights - ref[1].weights).max() / scale))


def time_spikescan(name, spec, t, w, d, ref, max_spikes, repeats, engines, ref_seconds):
    """Rows of every engine x method. ``ref`` is the NumPy sequential call ``(result, grads)``, whose times
    ``ref_seconds`` count as that variant's first repeat."""
    rows, checks = [], []
    for engine in engines:
        for method in METHODS:
            # Numba compiles (or loads its cache) on the first call. NumPy compiles nothing and the reference call
            # has run its code already: its first timed call is checked instead (saves a call of seconds).
            warmup = 1 if engine == "numba" else 0
            load = _load()
            fwd, both = [], []
            if (engine, method) == ("numpy", "sequential"):  # the reference call was this variant's first repeat
                fwd.append(ref_seconds[0])
                both.append(ref_seconds[1])
                checks.append(_check(name, engine, method, *ref, ref))
            for call in range(warmup + repeats - len(fwd)):
                res, grads, f, b = spikescan_call(t, w, d, engine, method, max_spikes)
                if call >= warmup:
                    fwd.append(f)
                    both.append(b)
                if call == 0 and not (engine, method) == ("numpy", "sequential"):
                    checks.append(_check(name, engine, method, res, grads, ref))
            row = dict(layer=name, implementation="spikescan", engine=engine, method=method, exact=True,
                       forward_s=_median(fwd), forward_backward_s=_median(both), forward_s_repeats=fwd,
                       forward_backward_s_repeats=both, warmup_calls=warmup, load_average_1min=load)
            if method == "auto":
                row["resolved"] = resolved_auto(engine, t, spec, max_spikes)
            rows.append(row)
            print(f"{name:<11} spikescan {engine:<5} {method:<10} forward {row['forward_s']:8.3f} s   "
                  f"fwd+bwd {row['forward_backward_s']:8.3f} s", flush=True)
    return rows, checks


# ---------------------------------------------------------------- output spikes as per-neuron lists

def events_to_times(times, idx, keep, n_out, max_spikes):
    """Per-sample event lists (``times``, neuron ``idx``, boolean ``keep``, each ``[batch, events]``) as
    ``(times [batch, n_out, max_spikes] +inf padded ascending, counts [batch, n_out])``."""
    batch = times.shape[0]
    out = np.full((batch, n_out, max_spikes), np.inf)
    counts = np.zeros((batch, n_out), np.int64)
    for b in range(batch):
        tb, ib = times[b][keep[b]], idx[b][keep[b]]
        order = np.lexsort((tb, ib))
        tb, ib = tb[order], ib[order]
        c = np.bincount(ib, minlength=n_out)
        counts[b] = c
        rank = np.arange(len(ib)) - np.concatenate([[0], np.cumsum(c)[:-1]])[ib]
        fits = rank < max_spikes
        out[b, ib[fits], rank[fits]] = tb[fits]
    return out, counts


def compare_spikes(ref, times, counts):
    """Counts agreement and time differences of ``(times, counts)`` against the spikescan result ``ref``."""
    same = counts == ref.counts
    both = same[..., None] & np.isfinite(ref.times) & np.isfinite(times)
    diff = np.abs(times[both] - ref.times[both])
    return dict(neurons_compared=int(same.size), same_count_neurons=int(same.sum()),
                same_count_fraction=float(same.mean()), spikes_spikescan=int(ref.counts.sum()),
                spikes_peer=int(counts.sum()), spikes_time_compared=int(both.sum()),
                max_abs_time_diff_ms=float(diff.max()) if diff.size else None,
                mean_abs_time_diff_ms=float(diff.mean()) if diff.size else None)


# ---------------------------------------------------------------- jaxsnn

def peer_status(name):
    if importlib.util.find_spec(name) is None:
        return dict(status="skipped", reason=f"{name} is not installed in this environment")
    return dict(status="available")


class Jaxsnn:
    """One layer in jaxsnn: ``Source -> Linear(pre_weights) -> LIF`` (``jaxsnn.event.modules``), EventProp."""

    def __init__(self, t, w, n_steps):
        jax = _jax()
        import jax.numpy as jnp
        from jaxsnn.event.modules import LIF, Linear, Source
        from jaxsnn.event.modules.lif import LIFParameters
        from jaxsnn.event.topology import Topology

        self.jax, self.jnp = jax, jnp
        n_in, n_out = w.shape
        params = LIFParameters(v_reset=0.0, v_leak=0.0, v_th=THRESHOLD, tau_syn=TAU_SYN, tau_mem=TAU_MEM)
        topology = Topology(t_max=JAXSNN_T_MAX, backprop_method="eventprop")
        topology.add({"inp": Source(n_in), "lif": LIF(n_out, n_steps, params),
                      "syn": Linear(pre_weights=jnp.asarray(w))})
        topology.connect([("inp", "syn"), ("syn", "lif")])
        init_fn, apply_fn = topology.done()
        self.params = init_fn(jax.random.PRNGKey(0))
        self.inputs = {"inp": self._spikes(t, topology.node_index_mapping["inp"])}
        self.n_out, self.n_steps = n_out, n_steps

        def loss(params, inputs):
            events = apply_fn(inputs, params)["lif"]
            return jnp.sum(jnp.where(events.internal, events.time, 0.0))

        self.forward = jax.jit(lambda inputs, params: apply_fn(inputs, params)["lif"])
        self.forward_backward = jax.jit(jax.value_and_grad(loss))

    def _spikes(self, t, layer_idx):
        """spikescan's ``[batch, n_in, max_in]`` as jaxsnn's time-sorted event list per sample (``internal`` marks
        real events; padding sits at ``t_max``)."""
        from jaxsnn.event.types import Spike

        jnp = self.jnp
        batch, n_in, max_in = t.shape
        flat = t.reshape(batch, -1)
        idx = np.broadcast_to(np.repeat(np.arange(n_in), max_in), flat.shape)
        order = np.argsort(flat, axis=1, kind="stable")
        times, idx = np.take_along_axis(flat, order, 1), np.take_along_axis(idx, order, 1)
        valid = np.isfinite(times)
        n = max(int(valid.sum(axis=1).max()), 1)
        times, idx, valid = times[:, :n], idx[:, :n], valid[:, :n]
        self.input_events = n
        return Spike(time=jnp.asarray(np.where(valid, times, JAXSNN_T_MAX)), idx=jnp.asarray(idx),
                     current=jnp.zeros(times.shape), layer_idx=jnp.full(times.shape, layer_idx),
                     internal=jnp.asarray(valid))

    def run_forward(self):
        return self.jax.block_until_ready(self.forward(self.inputs, self.params))

    def run_forward_backward(self):
        return self.jax.block_until_ready(self.forward_backward(self.params, self.inputs))

    def spikes(self, events, max_spikes):
        times, idx, internal = (np.asarray(x) for x in (events.time, events.idx, events.internal))
        out, counts = events_to_times(times, idx, internal, self.n_out, max_spikes)
        return out, counts, bool((idx[:, -1] == -1).all())


def _jax():
    """``jax`` with float64 on (before any array is made)."""
    import jax

    jax.config.update("jax_enable_x64", True)
    return jax


def jaxsnn_versions():
    from importlib.metadata import version

    jax = _jax()
    import jaxlib

    return dict(jaxsnn=version("jaxsnn"), jax=jax.__version__, jaxlib=jaxlib.__version__,
                jax_x64=bool(jax.config.jax_enable_x64), jax_devices=[str(dv) for dv in jax.devices()])


def run_jaxsnn(name, spec, t, w, ref, max_spikes, repeats):
    """``(agreement entry, rows)``: spikes and gradients against spikescan's, then (if they agree) the timing."""
    compared = ("every output spike of every (sample, neuron) and the weight gradient of the sum of all output "
                "spike times: jaxsnn.event LIF population (Topology with backprop_method='eventprop'; Source -> "
                "Linear(pre_weights) -> LIF; v_reset=0, v_leak=0, v_th=threshold; its closed-form ttfs_solver for "
                "tau_mem = 2 tau_syn), float64, jit; spikescan lif_forward (numpy sequential, max_spikes above "
                "every count) and lif_backward(grad_times=1 on every spike)")
    entry = dict(layer=name, peer="jaxsnn", compared=compared)
    if spec["delays"]:
        entry.update(status="not comparable", reason="jaxsnn's event LIF has one min_delay per projection, no "
                     "per-synapse delays: this layer times spikescan alone")
        return entry, []
    res, grads = ref
    input_events = int(np.isfinite(t).reshape(t.shape[0], -1).sum(axis=1).max())
    n_steps = input_events + int(res.counts.sum(axis=1).max()) + 16
    model = Jaxsnn(t, w, n_steps)
    t0 = time.perf_counter()
    events = model.run_forward()
    compile_forward = time.perf_counter() - t0
    times, counts, fits = model.spikes(events, max_spikes)
    entry.update(compare_spikes(res, times, counts), n_steps=n_steps, input_events=model.input_events,
                 last_step_empty=fits, first_call_forward_s=compile_forward)
    t0 = time.perf_counter()
    _, jgrads = model.run_forward_backward()
    entry["first_call_forward_backward_s"] = time.perf_counter() - t0
    gw = np.asarray(jgrads["syn"])
    scale = max(float(np.abs(grads.weights).max()), 1e-300)
    entry["max_rel_weight_grad_diff"] = float(np.abs(gw - grads.weights).max() / scale)
    largest = float(np.abs(res.times[np.isfinite(res.times)]).max()) if np.isfinite(res.times).any() else 1.0
    entry["time_tolerance_ms"] = AGREEMENT_RTOL * max(largest, 1.0)
    entry["passed"] = bool(fits and entry["same_count_fraction"] == 1.0 and
                           (entry["max_abs_time_diff_ms"] or 0.0) <= entry["time_tolerance_ms"])
    entry["status"] = "agree" if entry["passed"] else "disagree"
    print(f"{name:<11} jaxsnn agreement: {entry['same_count_neurons']}/{entry['neurons_compared']} neurons with "
          f"equal counts, max |dt| {entry['max_abs_time_diff_ms']} ms, weight grads rel. "
          f"{entry['max_rel_weight_grad_diff']:.2e}", flush=True)
    if not entry["passed"]:
        return entry, []
    load = _load()
    fwd, both = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        model.run_forward()
        fwd.append(time.perf_counter() - t0)
    for _ in range(repeats):
        t0 = time.perf_counter()
        model.run_forward_backward()
        both.append(time.perf_counter() - t0)
    row = dict(layer=name, implementation="jaxsnn", engine="jax (jit, float64)", method="EventProp", exact=True,
               forward_s=_median(fwd), forward_backward_s=_median(both), forward_s_repeats=fwd,
               forward_backward_s_repeats=both, warmup_calls=1, load_average_1min=load, n_steps=n_steps)
    print(f"{name:<11} jaxsnn    EventProp        forward {row['forward_s']:8.3f} s   "
          f"fwd+bwd {row['forward_backward_s']:8.3f} s", flush=True)
    return entry, [row]


# ---------------------------------------------------------------- discrete time (approximate)

class Discrete:
    """snntorch ``Synaptic`` on a grid of ``dt``: ``syn <- alpha syn + x``, ``mem <- beta mem + syn``, spike when
    ``mem > threshold``, then ``mem <- 0`` (``alpha = exp(-dt / tau_syn)``, ``beta = exp(-dt / tau_mem)``).

    ``x`` is ``c`` times the weights of the inputs that arrive in the step, ``c = tau_syn (alpha - beta) /
    (tau_syn - tau_mem)`` (``alpha dt / tau_mem`` when they are equal): then ``mem`` is the exact ``V`` of the
    continuous neuron at the end of every step for inputs moved to the start of their step, so what remains
    approximate is the grid (input times rounded down to it, threshold crossings seen at the end of a step, reset
    there)."""

    def __init__(self, t, w, d, dt, window):
        import torch
        import snntorch as snn
        from snntorch import surrogate

        self.torch = torch
        self.dt, self.steps = dt, int(math.ceil(window / dt))
        batch, n_in, _ = t.shape
        self.batch, self.n_out = batch, w.shape[1]
        self.beta, alpha = math.exp(-dt / TAU_MEM), math.exp(-dt / TAU_SYN)
        self.input_scale = (alpha * dt / TAU_MEM if TAU_SYN == TAU_MEM else
                            TAU_SYN * (alpha - self.beta) / (TAU_SYN - TAU_MEM))
        b, j, k = np.nonzero(np.isfinite(t))
        times = t[b, j, k]
        if d is None:  # one row of the [steps * batch, n_out] current per input spike
            step = np.floor(times / dt).astype(np.int64)
            inside = step < self.steps
            self.rows = torch.as_tensor(step[inside] * batch + b[inside])
            self.cols = torch.as_tensor(j[inside])
            self.delayed = False
        else:  # one entry of the flat [steps * batch * n_out] current per (input spike, neuron)
            step = np.floor((times[:, None] + d[j]) / dt).astype(np.int64)
            neuron = np.broadcast_to(np.arange(self.n_out), step.shape)
            inside = step < self.steps
            self.rows = torch.as_tensor(((step * batch + b[:, None]) * self.n_out + neuron)[inside])
            self.cols = torch.as_tensor((j[:, None] * self.n_out + neuron)[inside])
            self.delayed = True
        self.w = w
        self.lif = snn.Synaptic(alpha=alpha, beta=self.beta, threshold=THRESHOLD, reset_mechanism="zero",
                                reset_delay=False, spike_grad=surrogate.fast_sigmoid())

    def run(self, backward):
        torch = self.torch
        W = torch.tensor(self.w, dtype=torch.float32, requires_grad=backward)
        with torch.set_grad_enabled(backward):
            scaled = W * self.input_scale
            if self.delayed:
                x = torch.zeros(self.steps * self.batch * self.n_out).index_add(0, self.rows,
                                                                                 scaled.reshape(-1)[self.cols])
            else:
                x = torch.zeros(self.steps * self.batch, self.n_out).index_add(0, self.rows, scaled[self.cols])
            x = x.view(self.steps, self.batch, self.n_out)
            syn, mem = self.lif.reset_mem()
            spikes = []
            for x_k in x.unbind(0):  # unbind: one gradient buffer for the whole grid, not one per step
                s, syn, mem = self.lif(x_k, syn, mem)
                spikes.append(s)
            spikes = torch.stack(spikes)
            if backward:
                spikes.sum().backward()
        return spikes.detach().numpy()

    def spike_times(self, spikes, max_spikes):
        """Spike ``k`` of the grid is reported at the end of its step, ``(k + 1) dt``."""
        k, b, i = np.nonzero(spikes > 0)
        per = [(k[b == s] + 1) * self.dt for s in range(self.batch)]
        idx = [i[b == s] for s in range(self.batch)]
        n = max([len(p) for p in per] + [1])
        times = np.full((self.batch, n), np.inf)
        neuron = np.zeros((self.batch, n), np.int64)
        keep = np.zeros((self.batch, n), bool)
        for s in range(self.batch):
            times[s, :len(per[s])], neuron[s, :len(per[s])], keep[s, :len(per[s])] = per[s], idx[s], True
        return events_to_times(times, neuron, keep, self.n_out, max_spikes)


def snntorch_versions():
    import snntorch
    import torch

    return dict(snntorch=snntorch.__version__, torch=torch.__version__, torch_threads=torch.get_num_threads())


def run_discrete(name, spec, t, w, d, ref, max_spikes, repeats, dts):
    rows, approx = [], []
    finite = np.isfinite(ref[0].times)
    in_window = float((ref[0].times[finite] < spec["window_ms"]).mean()) if finite.any() else 1.0
    for n, dt in enumerate(dts):
        model = Discrete(t, w, d, dt, spec["window_ms"])
        warmup = 1 if n == 0 else 0  # torch's first call of the layer; later grids reuse what it set up
        load = _load()
        fwd, both = [], []
        for call in range(warmup + repeats):
            t0 = time.perf_counter()
            spikes = model.run(False)
            if call >= warmup:
                fwd.append(time.perf_counter() - t0)
            if call == 0:  # the spikes to set against the exact ones
                times, counts = model.spike_times(spikes, max_spikes)
                approx.append(dict(layer=name, peer="snntorch", dt_ms=dt, window_ms=spec["window_ms"],
                                   steps=model.steps, exact_spikes_in_window_fraction=in_window,
                                   input_scale=model.input_scale, **compare_spikes(ref[0], times, counts)))
        for _ in range(repeats):
            t0 = time.perf_counter()
            model.run(True)
            both.append(time.perf_counter() - t0)
        rows.append(dict(layer=name, implementation="snntorch", engine="torch (CPU, float32)",
                         method=f"discrete time, dt = {dt:g} ms, surrogate gradient", exact=False,
                         approximate=True, dt_ms=dt, steps=model.steps, forward_s=_median(fwd),
                         forward_backward_s=_median(both), forward_s_repeats=fwd, forward_backward_s_repeats=both,
                         warmup_calls=warmup, load_average_1min=load))
        print(f"{name:<11} snntorch  dt={dt:<4g} ms (approx.) forward {rows[-1]['forward_s']:8.3f} s   "
              f"fwd+bwd {rows[-1]['forward_backward_s']:8.3f} s; same counts on "
              f"{100 * approx[-1]['same_count_fraction']:.0f}% of neurons", flush=True)
    return rows, approx


# ---------------------------------------------------------------- ratios

def ratios(rows):
    """Every ratio is time / time within this run: > 1 means the denominator is faster."""
    out = []
    for layer in dict.fromkeys(r["layer"] for r in rows):
        mine = [r for r in rows if r["layer"] == layer and r["implementation"] == "spikescan"]
        if not mine:
            continue
        best = {key: min(mine, key=lambda r: r[key]) for key in ("forward_s", "forward_backward_s")}
        label = {key: f"spikescan {r['engine']} {r['method']}" for key, r in best.items()}

        def entry(what, num_label, num, den_label, den):
            return dict(layer=layer, ratio=what, numerator=num_label, denominator_forward=den_label["forward_s"],
                        denominator_forward_backward=den_label["forward_backward_s"],
                        forward=num["forward_s"] / den["forward_s"],
                        forward_backward=num["forward_backward_s"] / den["forward_backward_s"])

        best_times = {key: r[key] for key, r in best.items()}
        for r in rows:
            if r["layer"] != layer or r["implementation"] == "spikescan":
                continue
            what = ("jaxsnn / spikescan best" if r["implementation"] == "jaxsnn" else
                    f"{r['implementation']} dt={r['dt_ms']:g} ms (approximate) / spikescan best")
            out.append(entry(what, f"{r['implementation']} {r['method']}", r, label, best_times))
        for engine in ENGINES:
            by = {r["method"]: r for r in mine if r["engine"] == engine}
            if {"sequential", "scan", "auto"} <= by.keys():
                fastest = {key: min((by["sequential"], by["scan"]), key=lambda r: r[key])
                           for key in ("forward_s", "forward_backward_s")}
                out.append(entry(f"spikescan {engine} auto / best of sequential and scan", f"spikescan {engine} auto",
                                 by["auto"], {k: f"spikescan {engine} {r['method']}" for k, r in fastest.items()},
                                 {k: r[k] for k, r in fastest.items()}))
        engines = {engine: [r for r in mine if r["engine"] == engine] for engine in ENGINES}
        if all(engines.values()):
            bests = {engine: {key: min(rs, key=lambda r: r[key]) for key in ("forward_s", "forward_backward_s")}
                     for engine, rs in engines.items()}
            out.append(entry("spikescan numpy best / numba best", "spikescan numpy (best method)",
                             {k: r[k] for k, r in bests["numpy"].items()},
                             {k: f"spikescan numba {r['method']}" for k, r in bests["numba"].items()},
                             {k: r[k] for k, r in bests["numba"].items()}))
    return out


# ---------------------------------------------------------------- main

def environment(peers):
    env = dict(python=sys.version.split()[0], numpy=np.__version__, spikescan_engines=[])
    try:
        import numba

        env.update(numba=numba.__version__, numba_threads=numba.get_num_threads())
    except ImportError:
        env["numba"] = None
    env["cpu_count"] = os.cpu_count()
    for name, versions in (("jaxsnn", jaxsnn_versions), ("snntorch", snntorch_versions)):
        if peers.get(name, {}).get("status") == "available":
            env.update(versions())
    return env


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", nargs="+", choices=tuple(LAYERS), default=list(LAYERS))
    p.add_argument("--peers", nargs="+", choices=PEERS + ("none",), default=list(PEERS),
                   help="peers to compare with (those not installed are skipped); 'none' for spikescan alone")
    p.add_argument("--engines", nargs="+", choices=ENGINES, default=list(ENGINES))
    p.add_argument("--dts", nargs="+", type=float, default=list(DTS), help="grid steps (ms) of the discrete baseline")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="tiny layers, one repeat (a smoke test)")
    p.add_argument("--output", help="JSON file to write")
    args = p.parse_args(argv)
    wanted = [] if "none" in args.peers else args.peers
    layers = {k: dict(LAYERS[k]) for k in args.layers}
    if args.quick:
        layers = {k: dict(v, **QUICK[k]) for k, v in layers.items()}
        args.repeats = 1
    engines = [e for e in args.engines if e != "numba" or importlib.util.find_spec("numba") is not None]
    peers = {}
    for name in PEERS:
        peers[name] = peer_status(name) if name in wanted else dict(status="skipped", reason="not requested (--peers)")
    provenance = stamp()
    report = dict(benchmark="bench_cpu_peers", stamp=provenance, command=" ".join(["bench_cpu_peers.py"] +
                                                                                   (argv or sys.argv[1:])))
    report["environment"] = environment(peers)
    report["environment"]["spikescan_engines"] = engines
    report["environment"]["load_average_start"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    report["settings"] = dict(
        quick=args.quick, repeats=args.repeats, tau_mem=TAU_MEM, tau_syn=TAU_SYN, threshold=THRESHOLD,
        max_spikes=MAX_SPIKES, units="ms",
        timing="median of the repeats; before them one warm-up call (Numba engine, jaxsnn; snntorch at the first "
               "dt of a layer) or none (NumPy engine: nothing to compile; the reference call, NumPy sequential, is "
               "that variant's first repeat and runs the NumPy code before the other variants)",
        spikescan_forward_backward="lif_forward then lif_backward(grad_times = 1 on every recorded spike, "
                                   "input_times_grad=True); the forward time is the same call's lif_forward",
        jaxsnn_forward_backward="jax.value_and_grad of the sum of all output spike times w.r.t. the weights, jit",
        jaxsnn_excluded_from_timing="the conversion of the input to jaxsnn's sorted event list (once per layer)",
        discrete_forward_backward="backward of the sum of the spike grid through the fast-sigmoid surrogate",
        discrete_excluded_from_timing="the binning of input spike times (and delays) to grid steps (once per dt)",
        agreement_rtol=AGREEMENT_RTOL)
    report["peers"] = peers
    rows, agreement, approximation, spikescan_checks, layer_info = [], [], [], [], []
    t_start = time.perf_counter()
    for name, spec in layers.items():
        t, w, d = make_layer(spec)
        max_spikes = MAX_SPIKES
        # The reference (NumPy, sequential), timed: the first repeat of that variant.
        *ref, f, b = spikescan_call(t, w, d, "numpy", "sequential", max_spikes)
        if int(ref[0].counts.max()) > max_spikes:  # record every spike, so that every spike is compared
            max_spikes = int(ref[0].counts.max())
            *ref, f, b = spikescan_call(t, w, d, "numpy", "sequential", max_spikes)
        ref = tuple(ref)
        counts = ref[0].counts
        layer_info.append(dict(name=name, batch=t.shape[0], n_in=t.shape[1], n_out=w.shape[1],
                               input_spikes_per_sample=float(np.isfinite(t).reshape(t.shape[0], -1).sum(1).mean()),
                               delays=spec["delays"], delay_range_ms=[0.0, 25.0] if spec["delays"] else None,
                               weight_mean=float(w.mean()), weight_std=float(w.std()), max_spikes=max_spikes,
                               fired_fraction=float((counts > 0).mean()), mean_spikes_per_neuron=float(counts.mean()),
                               max_spikes_per_neuron=int(counts.max()), window_ms=spec["window_ms"]))
        # Agreement with jaxsnn first: a timing of a different answer would mean nothing.
        jax_rows = []
        if peers["jaxsnn"]["status"] == "available":
            entry, jax_rows = run_jaxsnn(name, spec, t, w, ref, max_spikes, args.repeats)
            agreement.append(entry)
        else:
            agreement.append(dict(layer=name, peer="jaxsnn", status="skipped", reason=peers["jaxsnn"]["reason"]))
        layer_rows, checks = time_spikescan(name, spec, t, w, d, ref, max_spikes, args.repeats, engines, (f, b))
        rows += layer_rows + jax_rows
        spikescan_checks += checks
        if peers["snntorch"]["status"] == "available":
            discrete_rows, approx = run_discrete(name, spec, t, w, d, ref, max_spikes, args.repeats, args.dts)
            rows += discrete_rows
            approximation += approx
    report["environment"]["load_average_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    report["environment"]["seconds"] = time.perf_counter() - t_start
    report.update(layers=layer_info, agreement=agreement, spikescan_agreement=spikescan_checks,
                  approximation=approximation, rows=rows, ratios=ratios(rows))
    for r in report["ratios"]:
        print(f"{r['layer']:<11} {r['ratio']}: forward {r['forward']:.2f}x, fwd+bwd {r['forward_backward']:.2f}x")
    if args.output:
        write_json(report, args.output)
    return report


if __name__ == "__main__":
    main()
