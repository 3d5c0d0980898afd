"""Benchmark the LIF layer: ``sequential`` vs ``scan`` vs ``auto``, forward and forward+backward, in one run.

Prints a table and writes JSON. Times are medians over ``--repeats`` runs on the machine named in the JSON; compare
ratios within one run, not absolute times across machines.

    python benchmarks/bench_lif.py --output benchmarks/results/cpu.json
    python benchmarks/bench_lif.py --backend cupy --output benchmarks/results/gpu.json   # GPU sweep (bench_lif_cuda)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import spikescan as ss  # noqa: E402

# The shapes of the core issue: (a) an SHD-like hidden layer, (b) online inference with few neurons.
SHAPES = {
    "shd_layer": dict(batch=32, n_in=700, spikes=5000, n_out=256),
    "online": dict(batch=1, n_in=700, spikes=5000, n_out=16),
}
TAU_MEM, TAU_SYN, DURATION = 20.0, 5.0, 1000.0


def shd_like_inputs(batch, n_in, spikes, n_out, seed=0, delays=False, dtype=np.float64):
    """Poisson-like spike trains: ``spikes`` per sample over ``DURATION`` ms on ``n_in`` channels, and weights that
    make a typical neuron fire a few to a few tens of times."""
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(spikes, np.full(n_in, 1.0 / n_in), size=batch)
    max_in = int(counts.max())
    t = np.full((batch, n_in, max_in), np.inf)
    for b in range(batch):
        for j in np.flatnonzero(counts[b]):
            t[b, j, : counts[b, j]] = np.sort(rng.uniform(0.0, DURATION, counts[b, j]))
    w = rng.normal(0.0, 1.0, (n_in, n_out)) * 0.06 + 0.035
    d = rng.uniform(0.0, 25.0, (n_in, n_out)) if delays else None
    return t.astype(dtype), w.astype(dtype), None if d is None else d.astype(dtype)


def _median_time(fn, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), out


def run_numpy(shapes, methods, repeats, delays):
    rows = []
    for name, shape in shapes.items():
        t, w, d = shd_like_inputs(**shape, delays=delays)
        kw = dict(tau_mem=TAU_MEM, tau_syn=TAU_SYN, max_spikes=64, delays=d)
        ref = None
        for method in methods:
            fwd_s, res = _median_time(lambda: ss.lif_forward(t, w, method=method, **kw), repeats)
            grad = np.where(np.isfinite(res.times), 1.0, 0.0)
            both_s, _ = _median_time(
                lambda: ss.lif_backward(ss.lif_forward(t, w, method=method, **kw), grad, method=method), repeats)
            if ref is None:
                ref = res
            # Every method is exact: a benchmark of a wrong answer would be meaningless.
            assert np.array_equal(res.counts, ref.counts), f"{method} disagrees with {methods[0]} on counts"
            rows.append(dict(shape=name, **shape, delays=delays, method=method, forward_s=fwd_s,
                             forward_backward_s=both_s, mean_spikes_per_neuron=float(res.counts.mean()),
                             max_spikes_per_neuron=int(res.counts.max()),
                             resolved=None if method != "auto" else _resolved(shape)))
    return rows


def _resolved(shape):
    from spikescan._lif_numpy import choose_backward_method, choose_forward_method

    n = shape["batch"] * shape["n_out"]
    return dict(forward=choose_forward_method(n, shape["spikes"] + 1, 128),
                backward=choose_backward_method(n, shape["spikes"] + 65))


def summarise(rows):
    """Speed-up of scan over sequential and the ratio of auto to the best, per shape."""
    out = {}
    for name in dict.fromkeys(r["shape"] for r in rows):
        by = {r["method"]: r for r in rows if r["shape"] == name}
        entry = {}
        for key in ("forward_s", "forward_backward_s"):
            if {"sequential", "scan"} <= by.keys():
                entry[f"{key}_scan_speedup"] = by["sequential"][key] / by["scan"][key]
            if "auto" in by:
                best = min(by[m][key] for m in ("sequential", "scan") if m in by)
                entry[f"{key}_auto_over_best"] = by["auto"][key] / best
        out[name] = entry
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backend", choices=("numpy", "cupy"), default="numpy")
    p.add_argument("--shapes", nargs="+", choices=tuple(SHAPES), default=list(SHAPES))
    p.add_argument("--methods", nargs="+", default=["sequential", "scan", "auto"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--delays", action="store_true", help="per-synapse delays (per-neuron queues)")
    p.add_argument("--quick", action="store_true", help="small inputs, one repeat (a smoke test)")
    p.add_argument("--output", help="JSON file to write")
    args, rest = p.parse_known_args(argv)
    if args.backend == "cupy":
        from bench_lif_cuda import main as cuda_main

        return cuda_main(rest + (["--output", args.output] if args.output else []) + (["--quick"] if args.quick else []))
    shapes = {k: SHAPES[k] for k in args.shapes}
    if args.quick:
        shapes = {k: dict(v, spikes=500, batch=min(v["batch"], 4)) for k, v in shapes.items()}
        args.repeats = 1
    rows = run_numpy(shapes, args.methods, args.repeats, args.delays)
    summary = summarise(rows)
    print(f"{'shape':<10} {'method':<11} {'forward s':>10} {'fwd+bwd s':>10} {'spikes/neuron':>14}")
    for r in rows:
        print(f"{r['shape']:<10} {r['method']:<11} {r['forward_s']:>10.3f} {r['forward_backward_s']:>10.3f} "
              f"{r['mean_spikes_per_neuron']:>14.2f}")
    for name, entry in summary.items():
        print(name, ", ".join(f"{k}={v:.2f}" for k, v in entry.items()))
    report = dict(benchmark="bench_lif", backend="numpy", device=f"CPU: {platform.processor() or platform.machine()}"
                  f", {os.cpu_count()} cores", numpy=np.__version__, repeats=args.repeats, rows=rows,
                  summary=summary)
    if args.output:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        with open(args.output, "w") as f:
            json.dump(report, f, indent=2)
    return report


if __name__ == "__main__":
    main()
