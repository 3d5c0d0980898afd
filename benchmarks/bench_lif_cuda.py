"""GPU benchmark of the LIF layer (CuPy kernels): fused sequential vs warp scan vs auto, forward and forward+backward.

Every row (one forward method) also times both backward kernels side by side (``--backward``): ``thread``
(``lif_backward(method="sequential")``, one thread per neuron) and ``warp`` (``method="scan"``, one warp per neuron),
as the backward alone (``backward_s_bwd_<name>``, on one fixed forward result) and forward+backward
(``forward_backward_s_bwd_<name>``). ``forward_backward_s`` is the default (``method="auto"``) backward's.

Sweeps batch x hidden size x (no delays, delays) on SHD-like random inputs (700 channels, ~5000 spikes per sample over
1000 ms, ``bench_lif.shd_like_inputs``), checks that every method gives the same spike counts, and reports:

- time (median of ``--repeats``, after a warm-up run that compiles the kernels; host syncs included, as a user sees),
- throughput in input-spike x neuron updates per second (real input spikes x output neurons / time),
- peak CuPy memory-pool bytes of one forward+backward (counted by a memory hook in an untimed run).

The JSON starts with ``stamp`` (``_stamp.py``: commit, dirty flag, machine, versions, and the GPU as ``device``).

Baselines at batch 1 (``--no-baselines`` to skip): the one-event-per-launch simulation (``method="step"``: the same
per-neuron update as the fused kernel, one kernel launch per queue entry; the paper's comparison) against the fused
sequential kernel and the scan.  Optionally (``--jax``) a ``jax.lax.associative_scan`` implementation of the 2 x 512
SHD network forward+backward at batch 256 with delays (``bench_lif_jax.py``), if JAX with a GPU is installed; it is
reported as skipped otherwise.

``--queues`` (``--queues-only``: nothing else) times the delayed queues alone at batch 1, 64, 256 x 128, 512 neurons:
the generic argsort path (``spikescan._queue.build_queues``) against ``kernels/queue.cu``, with peak pool bytes and a
check that both give identical queues (report key ``queues``).

    python benchmarks/bench_lif_cuda.py --output benchmarks/results/gpu_h100.json
    python benchmarks/bench_lif_cuda.py --quick --output benchmarks/results/gpu_quick.json
    python benchmarks/bench_lif_cuda.py --queues-only --output benchmarks/results/gpu_h100_queues.json
    python benchmarks/bench_lif.py --backend cupy ...        # same thing through the CPU benchmark's entry point
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

import spikescan as ss  # noqa: E402
from _stamp import stamp, write_json  # noqa: E402
from bench_lif import DURATION, TAU_MEM, TAU_SYN, shd_like_inputs  # noqa: E402

BATCHES = (1, 8, 64, 256)
HIDDEN = (16, 128, 512)
METHODS = ("sequential", "scan", "auto")
BACKWARDS = {"thread": "sequential", "warp": "scan"}  # row suffix -> lif_backward(method=...)
N_IN, SPIKES, MAX_SPIKES = 700, 5000, 64
QUEUE_BATCHES, QUEUE_HIDDEN = (1, 64, 256), (128, 512)  # --queues sweep


def _sync():
    import cupy

    cupy.cuda.get_current_stream().synchronize()


def _median_time(fn, repeats):
    times, out = [], None
    for _ in range(repeats):
        _sync()
        t0 = time.perf_counter()
        out = fn()
        _sync()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), out


class _PeakPool:
    """CuPy memory hook: peak bytes handed out by the memory pool while active."""

    def __init__(self):
        import cupy

        class Hook(cupy.cuda.MemoryHook):
            name = "spikescan_peak"

            def __init__(hook):
                hook.current = 0
                hook.peak = 0

            def malloc_postprocess(hook, **kw):
                hook.current += kw["mem_size"]
                hook.peak = max(hook.peak, hook.current)

            def free_postprocess(hook, **kw):
                hook.current -= kw["mem_size"]

        self.hook = Hook()

    def __enter__(self):
        self.hook.__enter__()
        return self.hook

    def __exit__(self, *exc):
        return self.hook.__exit__(*exc)


def _forward(t, w, d, method, chunk_size=32):
    return ss.lif_forward(t, w, delays=d, tau_mem=TAU_MEM, tau_syn=TAU_SYN, max_spikes=MAX_SPIKES, method=method,
                          chunk_size=chunk_size)


def _forward_internal(t, w, d, method):
    """Through the launcher directly, for the benchmark-only ``step`` method."""
    import cupy

    from spikescan.cuda import _lif

    n_out = w.shape[1]
    tm = cupy.full(n_out, TAU_MEM)
    ts = cupy.full(n_out, TAU_SYN)
    return _lif.lif_forward_cuda(t, w, d, tm, ts, 1.0, MAX_SPIKES, method, 32, "newton")


def _bench_one(t, w, d, method, repeats, n_updates, fwd=_forward, backwards=tuple(BACKWARDS)):
    """Forward timing, then for each backward kernel in ``backwards``: backward alone and forward+backward."""
    import cupy

    res = fwd(t, w, d, method)  # warm-up: compiles kernels
    grad = cupy.where(cupy.isfinite(res.times), 1.0, 0.0).astype(res.times.dtype)
    for name in backwards:
        ss.lif_backward(res, grad, method=BACKWARDS[name])
    fwd_s, res = _median_time(lambda: fwd(t, w, d, method), repeats)
    stats = dict(forward_s=fwd_s, forward_updates_per_s=n_updates / fwd_s)
    if not backwards:
        return stats, res
    for name in backwards:
        bwd = BACKWARDS[name]
        stats[f"backward_s_bwd_{name}"], _ = _median_time(lambda: ss.lif_backward(res, grad, method=bwd), repeats)
        both_s, _ = _median_time(lambda: ss.lif_backward(fwd(t, w, d, method), grad, method=bwd), repeats)
        stats[f"forward_backward_s_bwd_{name}"] = both_s
        stats[f"forward_backward_updates_per_s_bwd_{name}"] = n_updates / both_s
    from spikescan.cuda import _lif

    default = next((n for n in backwards if BACKWARDS[n] == _lif.BACKWARD_AUTO), None)
    if default is None:
        stats["forward_backward_s"], _ = _median_time(lambda: ss.lif_backward(fwd(t, w, d, method), grad), repeats)
    else:
        stats["forward_backward_s"] = stats[f"forward_backward_s_bwd_{default}"]
    stats["forward_backward_updates_per_s"] = n_updates / stats["forward_backward_s"]
    pool = cupy.get_default_memory_pool()
    pool.free_all_blocks()
    with _PeakPool() as hook:
        ss.lif_backward(fwd(t, w, d, method), grad)
        _sync()
    stats["peak_pool_bytes"] = int(hook.peak)
    return stats, res


def run_cupy_bench(args):
    """The sweep; returns one row (dict) per (batch, hidden, delays, method). ``args``: see ``parse_args``."""
    import cupy

    from spikescan.cuda import choose_method

    rows = []
    for delays in args.delays:
        for n_out in args.hidden:
            for batch in args.batches:
                t_np, w_np, d_np = shd_like_inputs(batch, N_IN, args.spikes, n_out, seed=batch + n_out,
                                                   delays=delays)
                t, w = cupy.asarray(t_np), cupy.asarray(w_np)
                d = None if d_np is None else cupy.asarray(d_np)
                n_spikes = int(np.isfinite(t_np).sum())
                n_updates = n_spikes * n_out
                ref_counts = None
                for method in args.methods:
                    stats, res = _bench_one(t, w, d, method, args.repeats, n_updates, backwards=args.backward)
                    counts = cupy.asnumpy(res.counts)
                    if ref_counts is None:
                        ref_counts = counts
                    # Every method is exact: a benchmark of a wrong answer would be meaningless.
                    assert np.array_equal(counts, ref_counts), f"{method} disagrees on spike counts"
                    resolved = choose_method(batch, n_out, res.residuals.queue_times.shape[2] - 1)
                    row = dict(batch=batch, n_in=N_IN, n_out=n_out, input_spikes=n_spikes, delays=delays,
                               method=method, resolved=resolved if method == "auto" else method,
                               mean_spikes_per_neuron=float(counts.mean()), max_spikes_per_neuron=int(counts.max()),
                               **stats)
                    rows.append(row)
                    print(_format_row(row), flush=True)
                del t, w, d, res
                cupy.get_default_memory_pool().free_all_blocks()
    return rows


def run_baselines(args):
    """Batch 1: one event per launch vs fused sequential vs scan (forward only, and fwd+bwd)."""
    import cupy

    rows = []
    for delays in args.delays:
        for n_out in args.hidden:
            t_np, w_np, d_np = shd_like_inputs(1, N_IN, args.spikes, n_out, seed=7 + n_out, delays=delays)
            t, w = cupy.asarray(t_np), cupy.asarray(w_np)
            d = None if d_np is None else cupy.asarray(d_np)
            n_updates = int(np.isfinite(t_np).sum()) * n_out
            out = {}
            for method in ("step", "sequential", "scan"):
                stats, res = _bench_one(t, w, d, method, args.repeats, n_updates, fwd=_forward_internal,
                                        backwards=())
                out[method] = stats
            row = dict(batch=1, n_out=n_out, delays=delays, **{f"{m}_forward_s": s["forward_s"]
                                                               for m, s in out.items()},
                       step_over_scan_forward=out["step"]["forward_s"] / out["scan"]["forward_s"],
                       step_over_sequential_forward=out["step"]["forward_s"] / out["sequential"]["forward_s"])
            rows.append(row)
            print(f"baseline b=1 n_out={n_out:<4} delays={delays!s:<5} step {out['step']['forward_s']:.4f}s  "
                  f"sequential {out['sequential']['forward_s']:.4f}s  scan {out['scan']['forward_s']:.4f}s  "
                  f"step/scan = {row['step_over_scan_forward']:.1f}x", flush=True)
    return rows


def run_queue_bench(args):
    """Delayed queues (``--queues``): the generic argsort path vs ``kernels/queue.cu``, time and peak pool bytes.

    Both include the shared (no-delay) queue, which both build the same way (``shared_s``, timed alone).
    """
    import cupy

    from spikescan._queue import build_queues, shared_queue
    from spikescan.cuda import _kernels, _queue

    paths = {"argsort": lambda t, d: build_queues(t, d, cupy),
             "kernel": lambda t, d: _queue.build_queues(cupy, _kernels.launch, t, d, use_kernel=True)}
    pool = cupy.get_default_memory_pool()
    rows = []
    for n_out in args.queue_hidden:
        for batch in args.queue_batches:
            t_np, _, d_np = shd_like_inputs(batch, N_IN, args.spikes, n_out, seed=batch + n_out, delays=True)
            t, d = cupy.asarray(t_np), cupy.asarray(d_np)
            row = dict(batch=batch, n_in=N_IN, n_out=n_out, input_spikes=int(np.isfinite(t_np).sum()))
            row["shared_s"], _ = _median_time(lambda t=t: shared_queue(t, cupy), args.repeats)
            outs = {}
            for name, fn in paths.items():
                fn(t, d)  # warm-up: compiles
                pool.free_all_blocks()
                with _PeakPool() as hook:
                    outs[name] = fn(t, d)
                    _sync()
                row[f"{name}_peak_pool_bytes"] = int(hook.peak)
                row[f"{name}_s"], _ = _median_time(lambda fn=fn, t=t, d=d: fn(t, d), args.repeats)
                if name == "argsort":  # hold one result at a time
                    outs[name] = [cupy.asnumpy(x) for x in outs[name]]
                    pool.free_all_blocks()
            row["queue_len"] = int(outs["kernel"][0].shape[2] - 1)
            row["identical"] = all(np.array_equal(a, cupy.asnumpy(b)) for a, b in zip(outs["argsort"], outs["kernel"]))
            row["argsort_over_kernel"] = row["argsort_s"] / row["kernel_s"]
            rows.append(row)
            print(f"queues b={batch:<4} n_out={n_out:<4} L={row['queue_len']:<5} shared {row['shared_s'] * 1e3:8.2f} ms"
                  f"  argsort {row['argsort_s'] * 1e3:9.2f} ms ({row['argsort_peak_pool_bytes'] / 2**30:6.2f} GiB)"
                  f"  kernel {row['kernel_s'] * 1e3:9.2f} ms ({row['kernel_peak_pool_bytes'] / 2**30:6.2f} GiB)"
                  f"  {row['argsort_over_kernel']:.1f}x  identical={row['identical']}", flush=True)
            del t, d, outs
            pool.free_all_blocks()
    return rows


def run_jax(args):
    try:
        import bench_lif_jax
    except Exception as exc:  # pragma: no cover - depends on the machine
        return dict(skipped=f"bench_lif_jax not importable: {exc!r}")
    import cupy

    out = []
    for batch in args.jax_batch:
        # The sweep's cached blocks would otherwise stay reserved by CuPy while XLA allocates its own.
        cupy.get_default_memory_pool().free_all_blocks()
        out.append(bench_lif_jax.compare(batch, repeats=args.repeats, quick=args.quick))
        print("jax comparison:", out[-1], flush=True)
    return out


def _format_row(r):
    bwd = "".join(f"   bwd_{n} {r[f'backward_s_bwd_{n}'] * 1e3:9.2f} ms "
                  f"(fwd+bwd {r[f'forward_backward_s_bwd_{n}'] * 1e3:9.2f})" for n in BACKWARDS
                  if f"backward_s_bwd_{n}" in r)
    return (f"b={r['batch']:<4} n_out={r['n_out']:<4} delays={r['delays']!s:<5} {r['method']:<10} "
            f"({r['resolved']:<10}) fwd {r['forward_s'] * 1e3:9.2f} ms {r['forward_updates_per_s']:10.3e}/s   "
            f"fwd+bwd {r['forward_backward_s'] * 1e3:9.2f} ms {r['forward_backward_updates_per_s']:10.3e}/s{bwd}   "
            f"peak {r['peak_pool_bytes'] / 2**20:9.1f} MiB   spikes/neuron {r['mean_spikes_per_neuron']:.1f}")


def summarise(rows):
    """Per shape: scan speed-up over sequential, auto's time over the better of the two, and the warp backward's
    speed-up over the thread backward (backward alone, on the sequential forward's row when there is one)."""
    out = []
    keys = sorted({(r["batch"], r["n_out"], r["delays"]) for r in rows})
    for key in keys:
        by = {r["method"]: r for r in rows if (r["batch"], r["n_out"], r["delays"]) == key}
        entry = dict(batch=key[0], n_out=key[1], delays=key[2])
        for k in ("forward_s", "forward_backward_s"):
            if {"sequential", "scan"} <= by.keys():
                entry[f"{k}_scan_speedup"] = by["sequential"][k] / by["scan"][k]
            if "auto" in by and {"sequential", "scan"} & by.keys():
                entry[f"{k}_auto_over_best"] = by["auto"][k] / min(by[m][k] for m in ("sequential", "scan")
                                                                    if m in by)
        row = by.get("sequential") or next(iter(by.values()))
        if {"backward_s_bwd_thread", "backward_s_bwd_warp"} <= row.keys():
            entry["backward_warp_speedup"] = row["backward_s_bwd_thread"] / row["backward_s_bwd_warp"]
        out.append(entry)
    return out


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batches", type=int, nargs="+", default=list(BATCHES))
    p.add_argument("--hidden", type=int, nargs="+", default=list(HIDDEN))
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--backward", nargs="+", default=list(BACKWARDS), choices=list(BACKWARDS),
                   help="backward kernels to time side by side (default: thread warp)")
    p.add_argument("--delays", type=lambda s: s.lower() in ("1", "true", "yes"), nargs="+", default=[False, True],
                   help="delay settings to sweep (default: false true)")
    p.add_argument("--spikes", type=int, default=SPIKES, help="input spikes per sample")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--no-baselines", dest="baselines", action="store_false")
    p.add_argument("--jax", action="store_true", help="also run the jax.lax.associative_scan comparison")
    p.add_argument("--jax-batch", type=int, nargs="+", default=[256], help="batch sizes of the JAX comparison")
    p.add_argument("--jax-only", action="store_true", help="run only the JAX comparison (implies --jax)")
    p.add_argument("--queues", action="store_true",
                   help="also time the delayed queues: argsort path vs kernels/queue.cu (--queue-batches x hidden)")
    p.add_argument("--queues-only", action="store_true", help="run only the delayed-queue comparison")
    p.add_argument("--queue-batches", type=int, nargs="+", default=list(QUEUE_BATCHES))
    p.add_argument("--queue-hidden", type=int, nargs="+", default=list(QUEUE_HIDDEN))
    p.add_argument("--quick", action="store_true", help="small sweep: batches 1 8, hidden 16 128, 2 repeats")
    p.add_argument("--output", help="JSON file to write")
    args = p.parse_args(argv)
    if args.quick:
        args.batches = [b for b in args.batches if b <= 8] or [1]
        args.hidden = [h for h in args.hidden if h <= 128] or [16]
        args.repeats = min(args.repeats, 2)
        args.jax_batch = [min(b, 8) for b in args.jax_batch]
    if args.jax_only:
        args.jax, args.baselines = True, False
    if args.queues_only:
        args.queues, args.baselines = True, False
    return args


def main(argv=None):
    args = parse_args(argv)
    import cupy

    from spikescan.cuda import is_available

    if not is_available():
        print("no CUDA device: nothing to benchmark", file=sys.stderr)
        return 1
    dev = cupy.cuda.Device()
    props = cupy.cuda.runtime.getDeviceProperties(dev.id)
    name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    print(f"device: {name} (sm_{dev.compute_capability}), {N_IN} inputs, {args.spikes} spikes/sample over "
          f"{DURATION:g} ms, tau_mem={TAU_MEM}, tau_syn={TAU_SYN}, max_spikes={MAX_SPIKES}")
    provenance = stamp()
    rows = [] if args.jax_only or args.queues_only else run_cupy_bench(args)
    summary = summarise(rows)
    for e in summary:
        print(", ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in e.items()))
    baselines = run_baselines(args) if args.baselines else []
    jax_result = run_jax(args) if args.jax else dict(skipped="not requested (--jax)")
    queues = run_queue_bench(args) if args.queues else dict(skipped="not requested (--queues)")
    provenance["device"] = name
    report = dict(benchmark="bench_lif_cuda", stamp=provenance, backend="cupy", device=name,
                  compute_capability=dev.compute_capability, cupy=cupy.__version__,
                  settings=dict(n_in=N_IN, spikes=args.spikes, duration_ms=DURATION, tau_mem=TAU_MEM,
                                tau_syn=TAU_SYN, max_spikes=MAX_SPIKES, repeats=args.repeats,
                                backward_kernels={n: BACKWARDS[n] for n in args.backward}),
                  rows=rows, summary=summary, baselines=baselines, jax=jax_result, queues=queues)
    if args.output:
        write_json(report, args.output)
        print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
