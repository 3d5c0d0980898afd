"""Building the per-neuron input queues of a layer with delays on the CPU, side by side in one run.

``python benchmarks/bench_queues.py [--quick] [--repeats 5] [--output FILE]``

For each shape (SHD-like inputs, ``bench_lif.shd_like_inputs``, with per-synapse delays 0-25 ms) it times:

- ``numpy``: ``spikescan._queue.build_queues`` (``np.argsort(kind="stable")`` over ``[batch, n_out, L1]``), the
  NumPy engine's path;
- ``numba_merge``: the compiled kernel with a merge sort per row (``_lif_numba.delayed_queues(...,
  bucket_sort=False)``), the compiled engine's path before the bucket sort;
- ``numba_bucket``: the compiled kernel with ``_lif_numba.stable_order``'s bucket sort, what the compiled engine
  runs now.

All three must give identical queues (checked before timing). Times are the median of ``--repeats`` calls after a
warm-up call (Numba compiles, or loads its cache, then); the JSON is stamped with the commit, machine and versions
(``_stamp.py``).
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

SHAPES = {
    "shd_b8_n128": dict(batch=8, n_in=700, spikes=5000, n_out=128),
    "shd_b32_n256": dict(batch=32, n_in=700, spikes=5000, n_out=256),
}


def builders():
    from spikescan import _lif_numpy, _queue

    return {"numpy": lambda t, d: _queue.build_queues(t, d, np),
            "numba_merge": lambda t, d: _lif_numpy._delayed_queues_compiled(t, d, bucket_sort=False),
            "numba_bucket": lambda t, d: _lif_numpy._delayed_queues_compiled(t, d, bucket_sort=True)}


def run(shapes, repeats):
    rows = []
    for name, shape in shapes.items():
        t, _, d = shd_like_inputs(**shape, delays=True)
        want = None
        for method, build in builders().items():
            out = build(t, d)  # warm-up (compiles or loads Numba's cache)
            if want is None:
                want = out
            identical = all(np.array_equal(a, b) for a, b in zip(out, want))
            if not identical:
                raise AssertionError(f"{method} builds other queues than numpy on {name}")
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                build(t, d)
                times.append(time.perf_counter() - t0)
            rows.append(dict(shape=name, **shape, method=method, seconds=float(np.median(times)), repeats=times,
                             entries=int(np.isfinite(want[0]).sum()), identical_to_numpy=identical))
            print(f"{name:<14} {method:<13} {rows[-1]['seconds'] * 1e3:9.1f} ms", flush=True)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="one small shape, two repeats (the tests' run)")
    parser.add_argument("--output", default=None)
    args = parser.parse_args(argv)
    shapes = SHAPES
    if args.quick:
        shapes = {"quick": dict(batch=2, n_in=50, spikes=300, n_out=16)}
        args.repeats = 2
    provenance = stamp()
    import numba

    rows = run(shapes, args.repeats)
    speedups = {}
    for name in shapes:
        by = {r["method"]: r["seconds"] for r in rows if r["shape"] == name}
        speedups[name] = {"bucket_over_merge": by["numba_merge"] / by["numba_bucket"],
                          "bucket_over_numpy": by["numpy"] / by["numba_bucket"]}
        print(name, ", ".join(f"{k} {v:.2f}x" for k, v in speedups[name].items()))
    report = dict(benchmark="bench_queues", stamp=provenance,
                  device=f"CPU: {provenance['cpu']}, {os.cpu_count()} cores", numba=numba.__version__,
                  numba_threads=numba.get_num_threads(), repeats=args.repeats, rows=rows, speedups=speedups)
    if args.output:
        write_json(report, args.output)
    return report


if __name__ == "__main__":
    main()
