"""The compiled forward of a layer without delays: neurons walking their sample's queue together or one by one.

``python benchmarks/bench_lanes.py [--quick] [--repeats 7] [--output FILE]``

For each shape it times ``lif_forward(..., engine="numba", method="sequential")`` (what ``"auto"`` runs) with

- ``lanes``: ``_lif_numpy.COMPILED_LANES`` neurons of a sample walking the shared queue together
  (``_lif_numba.forward_lanes``, the default);
- ``walk``: one neuron after the other (``COMPILED_LANES = 0``: ``_lif_numba.forward_sequential``);

and the compiled ``"scan"`` for reference, then ``lif_forward`` + ``lif_backward`` with either walk (the backward
is the same closed form). The variants alternate call by call, so drifts of the machine hit all alike. Before
timing it checks that both walks give the same spike times, counts and events bit for bit (``identical``).

Shapes: a Yin-Yang hidden layer (latency code), a latency-MNIST hidden layer (784 pixels, about 150 of them
firing once; 350 neurons, the paper's), an SHD-like layer without delays (``bench_lif.shd_like_inputs``) and that
layer at batch 1 with 16 neurons (online use). Times are medians of ``--repeats`` calls after a warm-up call; the
JSON is stamped with the commit, machine and versions (``_stamp.py``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(_HERE))
sys.path.insert(0, _HERE)

from _stamp import stamp, write_json  # noqa: E402
from bench_lif import shd_like_inputs  # noqa: E402

TAU_MEM, TAU_SYN = 20.0, 10.0


def latency_inputs(batch, n_in, n_out, active, t_max, seed, mean, std):
    """One spike per active channel (uniform in ``[0, t_max]``, ``active`` of ``n_in`` channels), ``+inf`` for the
    rest; weights N(mean, std)."""
    rng = np.random.default_rng(seed)
    t = rng.uniform(0.0, t_max, (batch, n_in, 1))
    t[rng.random(t.shape) >= active / n_in] = np.inf
    return t, rng.normal(mean, std, (n_in, n_out))


def shapes(quick):
    if quick:
        return {"quick": lambda: latency_inputs(4, 60, 70, 30, 20.0, 0, 0.15, 0.3)}
    return {
        "yinyang_b64_n120": lambda: latency_inputs(64, 5, 120, 5, 2.0 * TAU_MEM, 0, 0.8, 1.0),
        "mnist_b64_n350": lambda: latency_inputs(64, 784, 350, 150, 20.0, 0, 0.03, 0.3),
        "shd_b8_n128": lambda: shd_like_inputs(8, 700, 5000, 128)[:2],
        "shd_b1_n16": lambda: shd_like_inputs(1, 700, 5000, 16)[:2],
    }


def _same(a, b):
    return (np.array_equal(a.times, b.times) and np.array_equal(a.counts, b.counts)
            and np.array_equal(a.residuals.spike_event, b.residuals.spike_event))


def measure(t, W, repeats):
    import spikescan as ss
    from spikescan import _lif_numpy

    lanes = _lif_numpy.COMPILED_LANES
    group = _lif_numpy._lanes(t.shape[0] * W.shape[1])  # the neurons per group the engine takes for this shape
    kw = dict(tau_mem=TAU_MEM, tau_syn=TAU_SYN, max_spikes=16, engine="numba")

    def forward(variant):
        method = "scan" if variant == "scan" else "sequential"
        _lif_numpy.COMPILED_LANES = 0 if variant == "walk" else lanes
        try:
            return ss.lif_forward(t, W, method=method, **kw)
        finally:
            _lif_numpy.COMPILED_LANES = lanes

    def both(variant):
        out = forward(variant)
        return ss.lif_backward(out, np.where(np.isfinite(out.times), 1.0, 0.0))

    outs = {v: forward(v) for v in ("lanes", "walk", "scan")}  # warm-up (compiles or loads the cache)
    for v in ("lanes", "walk"):
        both(v)
    calls = {(v, kind): [] for v in ("lanes", "walk", "scan") for kind in ("forward", "forward_backward")}
    for _ in range(repeats):
        for v in ("lanes", "walk", "scan"):
            for kind, fn in (("forward", forward), ("forward_backward", both)):
                if v == "scan" and kind == "forward_backward":
                    continue
                t0 = time.perf_counter()
                fn(v)
                calls[(v, kind)].append(time.perf_counter() - t0)
    med = {key: float(np.median(v)) for key, v in calls.items() if v}
    return dict(
        identical=_same(outs["lanes"], outs["walk"]), lanes=lanes, group=group,
        output_spikes=int(outs["walk"].counts.sum()),
        spikes_per_neuron=float(outs["walk"].counts.mean()),
        input_spikes_per_sample=float(np.isfinite(t).sum() / max(t.shape[0], 1)),
        forward_s={v: med[(v, "forward")] for v in ("lanes", "walk", "scan")},
        forward_backward_s={v: med[(v, "forward_backward")] for v in ("lanes", "walk")},
        calls={f"{v}/{kind}": c for (v, kind), c in calls.items() if c},
        speedup_forward=med[("walk", "forward")] / med[("lanes", "forward")],
        speedup_forward_backward=med[("walk", "forward_backward")] / med[("lanes", "forward_backward")],
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one small shape, 2 repeats (the tests' run)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--output", default=os.path.join(_HERE, "results", "cpu_lanes.json"))
    args = parser.parse_args(argv)
    import numba

    provenance = stamp()
    repeats = 2 if args.quick else args.repeats
    rows = []
    for name, make in shapes(args.quick).items():
        t, W = make()
        row = dict(shape=name, batch=t.shape[0], n_in=t.shape[1], n_out=W.shape[1], **measure(t, W, repeats))
        if not row["identical"]:
            raise SystemExit(f"{name}: the lanes walk and the per-neuron walk disagree")
        rows.append(row)
        print(f"{name}: forward {row['forward_s']['lanes'] * 1e3:.2f} ms (lanes) vs "
              f"{row['forward_s']['walk'] * 1e3:.2f} ms (walk), {row['speedup_forward']:.2f}x; fwd+bwd "
              f"{row['speedup_forward_backward']:.2f}x; scan forward {row['forward_s']['scan'] * 1e3:.2f} ms")
    report = dict(benchmark="bench_lanes", stamp=provenance, tau_mem=TAU_MEM, tau_syn=TAU_SYN, repeats=repeats,
                  numba_threads=numba.get_num_threads(), rows=rows)
    write_json(report, args.output)


if __name__ == "__main__":
    main()
