"""Building the per-neuron input queues of a layer with delays on the CPU, side by side in one run.

``python benchmarks/bench_queues.py [--quick] [--repeats 5] [--output FILE]``

For each shape (SHD-like inputs, ``bench_lif.shd_like_inputs``, with per-synapse delays 0-25 ms) it times:

- ``numpy``: ``spikescan._queue.build_queues`` (``np.argsort(kind="stable")`` over ``[batch, n_out, L1]``), the
  NumPy engine's path;
- ``numba_merge``: the compiled kernel with a merge sort per row (``_lif_numba.delayed_queues(...,
  bucket_sort=False)``), the compiled engine's path before the bucket sort;
- ``numba_bucket``: the compiled kernel with ``_lif_numba.stable_order``'s bucket sort, materialised queues
  (``[batch, n_out, L1]`` float64 times and int64 sources, 16 bytes per entry);
- ``numba_permutation``: the same sort writing the permutation format (``_lif_numba.delayed_permutation``: a uint16
  position per entry plus the shared queue), what the compiled engine runs now.

All must give identical queues (the permutation expanded; checked before timing). ``bytes`` is what each keeps.

Then the whole compiled layer (``lif_forward`` and ``lif_forward`` + ``lif_backward``, ``engine="numba"``) with
each format (``_lif_numpy.COMPILED_PERMUTATION`` on and off, with two exponentials per entry in both: the forward's
sums and the closed-form backward's terms) and with the permutation and the rebased factors in both
(``_lif_numpy.COMPILED_REBASED`` and ``COMPILED_REBASED_CLOSED``, the engine's default);
the variants alternate call by call, so drifts of the machine hit all alike. Recorded: times, the residual bytes held
after the forward and the backward's peak of traced allocations (``tracemalloc``); checked: the two formats give
bit-identical spikes and gradients, the rebased factors identical spike counts and queue entries, times within
1e-12, the backward's factors the exponential backward's gradients (on the same forward result) within the tests'
tolerance and the whole layer's within 1e-6 of the largest (``_rebased_agreement``; the largest differences are
recorded). ``--no-layer`` skips it.

Times are the median of ``--repeats`` calls after a warm-up call (Numba compiles, or loads its cache, then); the JSON
is stamped with the commit, machine and versions (``_stamp.py``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import tracemalloc

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
            "numba_bucket": lambda t, d: _lif_numpy._delayed_queues_compiled(t, d, bucket_sort=True),
            "numba_permutation": lambda t, d: _lif_numpy._delayed_queues_compiled(t, d, permutation=True)}


def _materialised(out, max_in):
    """``(queue_times, queue_index, queue_end)`` of a builder's output, and the bytes it keeps."""
    from spikescan import _queue

    if isinstance(out, _queue.PermutedQueues):
        q_times, q_index = _queue.expand(np, out.perm, out.times, out.index, out.delays_t, max_in)
        kept = out.perm.nbytes + out.times.nbytes + out.index.nbytes + out.end.nbytes
        return (q_times, q_index, out.end), kept
    return tuple(out), sum(a.nbytes for a in out)


def run(shapes, repeats):
    rows = []
    for name, shape in shapes.items():
        t, _, d = shd_like_inputs(**shape, delays=True)
        want = None
        for method, build in builders().items():
            out, kept = _materialised(build(t, d), t.shape[2])  # warm-up (compiles or loads Numba's cache)
            if want is None:
                want = out
            identical = all(np.array_equal(a, b) for a, b in zip(out, want))
            if not identical:
                raise AssertionError(f"{method} builds other queues than numpy on {name}")
            del out
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                build(t, d)
                times.append(time.perf_counter() - t0)
            rows.append(dict(shape=name, **shape, method=method, seconds=float(np.median(times)), repeats=times,
                             entries=int(np.isfinite(want[0]).sum()), bytes=int(kept), identical_to_numpy=identical))
            print(f"{name:<14} {method:<18} {rows[-1]['seconds'] * 1e3:9.1f} ms {kept / 2**20:9.1f} MiB", flush=True)
    return rows


def _grad_ones(out):
    """A unit loss gradient on every recorded spike time."""
    return np.where(np.isfinite(out.times), 1.0, 0.0)


def _layer_call(t, w, d, permutation, rebased=False):
    """One compiled forward and backward with the given queue format and rebased factors (forward and backward) or
    not: times, bytes, a digest of the outputs, the forward's result and the gradients."""
    import spikescan as ss
    from spikescan import _lif_numpy

    _lif_numpy.COMPILED_PERMUTATION = permutation
    _lif_numpy.COMPILED_REBASED = _lif_numpy.COMPILED_REBASED_CLOSED = rebased
    kw = dict(tau_mem=20.0, tau_syn=5.0, max_spikes=64, delays=d, engine="numba")
    tracemalloc.start()
    t0 = time.perf_counter()
    out = ss.lif_forward(t, w, **kw)
    t1 = time.perf_counter()
    held = tracemalloc.get_traced_memory()[0]
    tracemalloc.reset_peak()
    grads = ss.lif_backward(out, _grad_ones(out), engine="numba")
    t2 = time.perf_counter()
    backward_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    digest = [np.asarray(x).tobytes() for x in (out.times, out.counts, grads.weights, grads.delays,
                                                grads.input_times, grads.threshold)]
    return dict(forward_s=t1 - t0, forward_backward_s=t2 - t0, held_bytes=int(held),
                backward_peak_bytes=int(backward_peak)), digest, out, grads


# The whole-layer variants: (queue format, rebased factors). The formats are compared with the exponentials on both
# sides; the rebased factors with the permutation format (the engine's default).
LAYER_VARIANTS = {"permutation": (True, False), "materialised": (False, False), "rebased": (True, True)}


GRAD_NAMES = ("weights", "delays", "input_times", "threshold")


def _largest_gradient_difference(a_grads, b_grads):
    """The largest difference of any gradient relative to its largest magnitude, and the gradients outside the
    tests' tolerance (``rtol = atol = 1e-9`` elementwise)."""
    worst, outside = 0.0, []
    for g in GRAD_NAMES:
        a, b = np.asarray(getattr(a_grads, g)), np.asarray(getattr(b_grads, g))
        scale = float(np.max(np.abs(b), initial=0.0))
        worst = max(worst, float(np.max(np.abs(a - b), initial=0.0)) / scale if scale else 0.0)
        if not np.allclose(a, b, rtol=1e-9, atol=1e-9):
            outside.append(g)
    return worst, outside


def _rebased_agreement(fast, exact, name, fast_grads, exact_grads, backward_alone):
    """How far the rebased variant is from the exponentials: the largest relative spike-time difference, the
    largest gradient difference (relative to each gradient's largest magnitude) from the whole exponential layer,
    and from the exponential backward of the rebased forward's result (``backward_alone``: the backward's factors
    alone). Raises unless counts and queue entries are identical, the times agree within 1e-12, the backward's
    factors give the exponential backward's gradients within the tests' tolerance (``rtol = atol = 1e-9``
    elementwise) and the whole layer's gradients agree within 1e-6 of the largest: the forward's rounding moves the
    large gradients of nearly grazing spikes by more than the tolerance (9e-10 of the largest on the batch 32 x 256
    layer), a conditioning effect, not a change of the gradients' values."""
    same = (np.array_equal(fast.counts, exact.counts)
            and np.array_equal(fast.residuals.spike_event, exact.residuals.spike_event))
    fin = np.isfinite(exact.times)
    worst = float(np.max(np.abs(fast.times[fin] - exact.times[fin]) / np.abs(exact.times[fin]), initial=0.0))
    if not same or worst > 1e-12:
        raise AssertionError(f"the rebased forward changes the spikes on {name} (identical counts and entries: "
                             f"{same}; largest relative time difference {worst:.2e})")
    worst_backward, outside = _largest_gradient_difference(fast_grads, backward_alone)
    if outside:
        raise AssertionError(f"the rebased factors change the gradients on {name}: {', '.join(outside)} outside "
                             f"rtol = atol = 1e-9 of the exponential backward (largest difference "
                             f"{worst_backward:.2e} of the largest gradient)")
    worst_grad, _ = _largest_gradient_difference(fast_grads, exact_grads)
    if worst_grad > 1e-6:
        raise AssertionError(f"the rebased layer changes the gradients on {name} (largest difference "
                             f"{worst_grad:.2e} of the largest gradient)")
    return worst, worst_grad, worst_backward


def run_layer(shapes, repeats):
    """The compiled layer in each variant (``LAYER_VARIANTS``), alternating call by call."""
    import spikescan as ss
    from spikescan import _lif_numpy

    before = _lif_numpy.COMPILED_PERMUTATION, _lif_numpy.COMPILED_REBASED, _lif_numpy.COMPILED_REBASED_CLOSED
    rows = []
    try:
        for name, shape in shapes.items():
            t, w, d = shd_like_inputs(**shape, delays=True)
            calls = {v: [] for v in LAYER_VARIANTS}
            digests, outs, grads = {}, {}, {}
            for rep in range(repeats + 1):
                for variant, flags in LAYER_VARIANTS.items():
                    measured, digests[variant], outs[variant], grads[variant] = _layer_call(t, w, d, *flags)
                    if rep:  # the first round warms up
                        calls[variant].append(measured)
            identical = digests["permutation"] == digests["materialised"]
            if not identical:
                raise AssertionError(f"the permutation format changes the layer's outputs on {name}")
            _lif_numpy.COMPILED_REBASED_CLOSED = False  # the exponential backward of the rebased forward's result
            backward_alone = ss.lif_backward(outs["rebased"], _grad_ones(outs["rebased"]), engine="numba")
            worst, worst_grad, worst_backward = _rebased_agreement(
                outs["rebased"], outs["permutation"], name, grads["rebased"], grads["permutation"], backward_alone)
            for variant, ms in calls.items():
                row = dict(shape=name, **shape, queues="permutation" if LAYER_VARIANTS[variant][0] else "materialised",
                           sums="rebased" if LAYER_VARIANTS[variant][1] else "exponentials",
                           output_spikes=int(outs[variant].counts.sum()), calls=ms)
                if variant == "rebased":
                    row.update(same_spikes=True, max_relative_time_difference=worst,
                               max_relative_gradient_difference=worst_grad,
                               max_relative_gradient_difference_backward=worst_backward)
                else:
                    row.update(identical=identical)
                for key in ("forward_s", "forward_backward_s", "held_bytes", "backward_peak_bytes"):
                    row[key] = float(np.median([m[key] for m in ms]))
                rows.append(row)
                print(f"{name:<14} layer, {row['queues']:<12} {row['sums']:<12} forward {row['forward_s']:.3f} s, "
                      f"fwd+bwd {row['forward_backward_s']:.3f} s, held {row['held_bytes'] / 2**20:.0f} MiB, "
                      f"backward peak {row['backward_peak_bytes'] / 2**20:.0f} MiB", flush=True)
    finally:
        _lif_numpy.COMPILED_PERMUTATION, _lif_numpy.COMPILED_REBASED, _lif_numpy.COMPILED_REBASED_CLOSED = before
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="one small shape, two repeats (the tests' run)")
    parser.add_argument("--no-layer", action="store_true", help="skip the whole-layer comparison of the formats")
    parser.add_argument("--output", default=None)
    args = parser.parse_args(argv)
    shapes = SHAPES
    if args.quick:
        shapes = {"quick": dict(batch=2, n_in=50, spikes=5000, n_out=16)}  # the input rate makes neurons fire
        args.repeats = 2
    provenance = stamp()
    import numba

    rows = run(shapes, args.repeats)
    layer = [] if args.no_layer else run_layer(shapes, args.repeats)
    speedups = {}
    for name in shapes:
        by = {r["method"]: r["seconds"] for r in rows if r["shape"] == name}
        speedups[name] = {"bucket_over_merge": by["numba_merge"] / by["numba_bucket"],
                          "bucket_over_numpy": by["numpy"] / by["numba_bucket"],
                          "permutation_over_bucket": by["numba_bucket"] / by["numba_permutation"]}
        fmt = {(r["queues"], r.get("sums", "exponentials")): r for r in layer if r["shape"] == name}
        if fmt:
            p, m = fmt["permutation", "exponentials"], fmt["materialised", "exponentials"]
            rb = fmt["permutation", "rebased"]
            speedups[name].update(rebased_forward=p["forward_s"] / rb["forward_s"],
                                  rebased_forward_backward=p["forward_backward_s"] / rb["forward_backward_s"])
            speedups[name].update(layer_forward=m["forward_s"] / p["forward_s"],
                                  layer_forward_backward=m["forward_backward_s"] / p["forward_backward_s"],
                                  layer_held_bytes=m["held_bytes"] / p["held_bytes"],
                                  layer_backward_peak_bytes=m["backward_peak_bytes"] / p["backward_peak_bytes"])
        print(name, ", ".join(f"{k} {v:.2f}x" for k, v in speedups[name].items()))
    report = dict(benchmark="bench_queues", stamp=provenance,
                  device=f"CPU: {provenance['cpu']}, {os.cpu_count()} cores", numba=numba.__version__,
                  numba_threads=numba.get_num_threads(), repeats=args.repeats, rows=rows, layer=layer,
                  speedups=speedups)
    if args.output:
        write_json(report, args.output)
    return report


if __name__ == "__main__":
    main()
