"""Benchmark the LIF layer: ``sequential`` vs ``scan`` vs ``auto``, forward and forward+backward, in one run.

Prints a table and writes JSON. Times are medians over ``--repeats`` calls (each call's time is kept in
``*_s_repeats``) on the machine named in the JSON; compare ratios within one run, not absolute times across machines.
The JSON starts with ``stamp`` (``_stamp.py``: commit, dirty flag, machine, versions).

``--runs N`` repeats the whole measurement N times in one process (inputs regenerated each time): ``rows`` and
``summary`` are the first run's, ``runs`` holds every run's ``summary`` and ``run_to_run`` the spread of each
summary ratio over the runs (min, median, max and ``spread = (max - min) / median``), the run-to-run noise of the
ratios on that machine.

    python benchmarks/bench_lif.py --output benchmarks/results/cpu.json
    python benchmarks/bench_lif.py --shapes online --runs 5 --output benchmarks/results/cpu_runs.json
    SPIKESCAN_ENGINE=numpy python benchmarks/bench_lif.py --methods sequential scan sequential+closed \
        --output benchmarks/results/cpu_closed_backward.json   # a backward-only method: FORWARD+BACKWARD
    python benchmarks/bench_lif.py --backend cupy --output benchmarks/results/gpu.json   # GPU sweep (bench_lif_cuda)
"""

from __future__ import annotations

import argparse
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
    """Median seconds of ``repeats`` calls, the last call's result, and every call's seconds."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), out, times


def run_numpy(shapes, methods, repeats, delays):
    rows = []
    for name, shape in shapes.items():
        t, w, d = shd_like_inputs(**shape, delays=delays)
        kw = dict(tau_mem=TAU_MEM, tau_syn=TAU_SYN, max_spikes=64, delays=d)
        ref = None
        for method in methods:
            # "FORWARD+BACKWARD" (e.g. "sequential+closed") times a backward-only method after a forward method.
            fwd_m, bwd_m = method.split("+") if "+" in method else (method, method)
            fwd_s, res, fwd_all = _median_time(lambda: ss.lif_forward(t, w, method=fwd_m, **kw), repeats)
            grad = np.where(np.isfinite(res.times), 1.0, 0.0)
            both_s, _, both_all = _median_time(
                lambda: ss.lif_backward(ss.lif_forward(t, w, method=fwd_m, **kw), grad, method=bwd_m), repeats)
            bwd_s, _, bwd_all = _median_time(lambda: ss.lif_backward(res, grad, method=bwd_m), repeats)
            if ref is None:
                ref = res
            # Every method is exact: a benchmark of a wrong answer would be meaningless.
            assert np.array_equal(res.counts, ref.counts), f"{method} disagrees with {methods[0]} on counts"
            rows.append(dict(shape=name, **shape, delays=delays, method=method, forward_s=fwd_s,
                             forward_backward_s=both_s, forward_s_repeats=fwd_all,
                             forward_backward_s_repeats=both_all, backward_s=bwd_s, backward_s_repeats=bwd_all,
                             mean_spikes_per_neuron=float(res.counts.mean()),
                             max_spikes_per_neuron=int(res.counts.max()),
                             resolved=None if method != "auto" else _resolved(shape)))
    return rows


def _resolved(shape):
    from spikescan._lif_numpy import BACKWARD_AUTO, COMPILED_BACKWARD_AUTO, choose_forward_method, resolve_engine

    if resolve_engine("auto") == "numba":  # as bench_cpu_peers.resolved_auto
        return dict(forward="sequential",
                    backward=f"compiled {COMPILED_BACKWARD_AUTO} (the numba engine's auto backward)")

    n = shape["batch"] * shape["n_out"]
    return dict(forward=choose_forward_method(n, shape["spikes"] + 1, 128), backward=BACKWARD_AUTO)


def summarise(rows):
    """Speed-up of scan over sequential and the ratio of auto to the best, per shape."""
    out = {}
    for name in dict.fromkeys(r["shape"] for r in rows):
        by = {r["method"]: r for r in rows if r["shape"] == name}
        entry = {}
        for key in ("forward_s", "forward_backward_s"):
            if {"sequential", "scan"} <= by.keys():
                entry[f"{key}_scan_speedup"] = by["sequential"][key] / by["scan"][key]
            others = [by[m][key] for m in ("sequential", "scan") if m in by]
            if "auto" in by and others:  # (auto alone has nothing to be compared with)
                entry[f"{key}_auto_over_best"] = by["auto"][key] / min(others)
        out[name] = entry
    return out


def run_to_run(summaries):
    """Spread of every summary ratio over repeated runs: min, median, max, ``spread = (max - min) / median``."""
    out = {}
    for name in summaries[0]:
        out[name] = {}
        for key in summaries[0][name]:
            values = [s[name][key] for s in summaries]
            median = float(np.median(values))
            out[name][key] = dict(min=min(values), median=median, max=max(values),
                                  spread=(max(values) - min(values)) / median)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backend", choices=("numpy", "cupy"), default="numpy")
    p.add_argument("--shapes", nargs="+", choices=tuple(SHAPES), default=list(SHAPES))
    p.add_argument("--methods", nargs="+", default=["sequential", "scan", "auto"],
                   help="forward methods (the backward runs the same method), or FORWARD+BACKWARD pairs such as "
                        "sequential+closed")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--delays", action="store_true", help="per-synapse delays (per-neuron queues)")
    p.add_argument("--runs", type=int, default=1,
                   help="repeat the whole measurement this many times (run-to-run noise of the ratios)")
    p.add_argument("--quick", action="store_true", help="small inputs, one repeat (a smoke test)")
    p.add_argument("--output", help="JSON file to write")
    args, rest = p.parse_known_args(argv)
    if args.backend == "cupy":
        from bench_lif_cuda import main as cuda_main

        return cuda_main(rest + (["--output", args.output] if args.output else [])
                         + (["--quick"] if args.quick else []))
    shapes = {k: SHAPES[k] for k in args.shapes}
    if args.quick:
        shapes = {k: dict(v, spikes=500, batch=min(v["batch"], 4)) for k, v in shapes.items()}
        args.repeats = 1
    provenance = stamp()
    runs = []
    for run in range(max(args.runs, 1)):
        rows_of_run = run_numpy(shapes, args.methods, args.repeats, args.delays)
        runs.append(dict(rows=rows_of_run, summary=summarise(rows_of_run)))
        if args.runs > 1:
            print(f"run {run + 1}/{args.runs}:", "; ".join(
                f"{name} " + ", ".join(f"{k}={v:.3f}" for k, v in entry.items())
                for name, entry in runs[-1]["summary"].items()), flush=True)
    rows, summary = runs[0]["rows"], runs[0]["summary"]
    print(f"{'shape':<10} {'method':<11} {'forward s':>10} {'fwd+bwd s':>10} {'spikes/neuron':>14}")
    for r in rows:
        print(f"{r['shape']:<10} {r['method']:<11} {r['forward_s']:>10.3f} {r['forward_backward_s']:>10.3f} "
              f"{r['mean_spikes_per_neuron']:>14.2f}")
    for name, entry in summary.items():
        print(name, ", ".join(f"{k}={v:.2f}" for k, v in entry.items()))
    from spikescan._lif_numpy import resolve_engine

    report = dict(benchmark="bench_lif", stamp=provenance, backend="numpy", engine=resolve_engine("auto"),
                  device=f"CPU: {provenance['cpu']}, {os.cpu_count()} cores", numpy=np.__version__,
                  repeats=args.repeats, rows=rows, summary=summary)
    if args.runs > 1:
        report.update(runs=[r["summary"] for r in runs], run_to_run=run_to_run([r["summary"] for r in runs]))
        for name, entry in report["run_to_run"].items():
            print(f"{name} over {args.runs} runs:", ", ".join(
                f"{k} {v['min']:.3f}-{v['max']:.3f} (spread {100 * v['spread']:.1f}%)" for k, v in entry.items()))
    if args.output:
        write_json(report, args.output)
    return report


if __name__ == "__main__":
    main()
