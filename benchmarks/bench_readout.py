"""The ``"max"`` readout and ``peak_voltage`` on the CPU: the NumPy engine and the compiled one side by side.

``python benchmarks/bench_readout.py [--quick] [--repeats 7] [--output FILE]``

Shapes are the examples' readouts: hidden spikes (``max_in`` per neuron, about half of them ``+inf`` padding,
times uniform over the input window) into the readout units; ``peak`` is ``peak_voltage`` of a layer with
per-synapse delays for a quarter of its neurons (the silent-neuron objective's call). For each shape and engine
(``engine="numpy"``: vectorised over samples and neurons, a Python loop over events; ``engine="numba"``: compiled
walks, one per sample with its neurons in step on a shared queue, one per (sample, neuron) on per-neuron queues with
delays, ``spikescan._readout_numba``) it times the forward and the forward +
backward. Before timing it checks that the engines agree: the same kinks, values and arg max times within 1e-12
(relative), every gradient within 1e-10 of the largest (the largest differences are recorded).

Then the sort that builds each sample's queue of input spikes (``_queue.shared_queue``, every layer without delays
and every ``"max"`` readout): NumPy's stable argsort of the whole padded row against the compiled engine's stable
sort of the finite entries (``shared_queue_compiled``), after checking they give identical arrays.

Times are the median of ``--repeats`` calls after a warm-up call (Numba compiles, or loads its cache, then); the
engines alternate call by call, so drifts of the machine hit both alike. ``speedups`` has ``numpy`` time /
``numba`` time per shape. The JSON is stamped with the commit, machine and versions (``_stamp.py``).
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

# (batch, n_in, max_in, n_out): Yin-Yang's readout (120 hidden -> 3), MNIST's (350 -> 10), SHD's (512 -> 20).
SHAPES = {
    "yinyang_b32": dict(kind="max", batch=32, n_in=120, max_in=4, n_out=3),
    "mnist_b64": dict(kind="max", batch=64, n_in=350, max_in=4, n_out=10),
    "shd_b32": dict(kind="max", batch=32, n_in=512, max_in=8, n_out=20),
    "peak_delays_b32": dict(kind="peak", batch=32, n_in=128, max_in=4, n_out=128),
}
QUICK = {
    "yinyang_b8": dict(kind="max", batch=8, n_in=40, max_in=4, n_out=3),
    "peak_delays_b8": dict(kind="peak", batch=8, n_in=32, max_in=4, n_out=32),
}
TAU_MEM, TAU_SYN, WINDOW, T_MAX = 20.0, 10.0, 30.0, 60.0
ENGINES = ("numpy", "numba")
# (batch, n_in, max_in, fraction of +inf padding): the MNIST example's input (a spike for a fifth of the pixels) and
# hidden spikes, and SHD-like inputs.
QUEUE_SHAPES = {
    "mnist_input_b64": (64, 784, 1, 0.8),
    "mnist_hidden_b64": (64, 350, 4, 0.5),
    "shd_input_b32": (32, 700, 12, 0.4),
}
QUICK_QUEUES = {"small_b8": (8, 40, 4, 0.5)}


def inputs(shape, seed=0):
    """``(t, W, D or None, neurons or None, g)`` for one shape."""
    rng = np.random.default_rng(seed)
    batch, n_in, max_in, n_out = (shape[k] for k in ("batch", "n_in", "max_in", "n_out"))
    t = rng.uniform(0.0, WINDOW, (batch, n_in, max_in))
    t[rng.random(t.shape) < 0.5] = np.inf
    t = np.sort(t, axis=-1)
    W = rng.normal(0.2, 1.0, (n_in, n_out)) / np.sqrt(n_in)
    D = neurons = None
    if shape["kind"] == "peak":
        D = rng.uniform(0.0, 25.0, (n_in, n_out))
        neurons = np.zeros(n_out, bool)
        neurons[rng.permutation(n_out)[: max(1, n_out // 4)]] = True
    return t, W, D, neurons, rng.normal(size=(batch, n_out))


def calls(shape, engine):
    """``(forward, forward_backward)``: closures that run the op once (the second returns the gradients)."""
    import spikescan

    t, W, D, neurons, g = inputs(shape)
    if shape["kind"] == "peak":
        def forward():
            return spikescan.peak_voltage(t, W, tau_mem=TAU_MEM, tau_syn=TAU_SYN, delays=D, neurons=neurons,
                                          engine=engine)

        def forward_backward():
            res = forward()
            return res, spikescan.peak_voltage_backward(res, g, engine=engine)
    else:
        def forward():
            return spikescan.li_forward(t, W, tau_mem=TAU_MEM, tau_syn=TAU_SYN, readout="max", t_max=T_MAX,
                                        engine=engine)

        def forward_backward():
            res = forward()
            return res, spikescan.li_backward(res, g, engine=engine)
    return forward, forward_backward


def agreement(shape):
    """Check the engines agree on one shape; returns the largest relative differences."""
    (ref, ref_g), (out, out_g) = (calls(shape, e)[1]() for e in ENGINES)
    ref_k, out_k = ref.residuals.kink_index, out.residuals.kink_index
    if not np.array_equal(ref_k, out_k):
        raise AssertionError(f"engines disagree on the kinks: {int((ref_k != out_k).sum())} of {ref_k.size}")

    def rel(a, b):
        scale = float(np.abs(a).max()) if a.size else 0.0
        return float(np.abs(a - b).max()) / scale if scale else 0.0

    diffs = {"values": rel(ref.values, out.values),
             "eval_time": rel(ref.residuals.eval_time, out.residuals.eval_time)}
    for name in ("weights", "input_times", "delays"):
        a, b = getattr(ref_g, name, None), getattr(out_g, name, None)
        if a is not None:
            diffs[name] = rel(a, b)
    for name, d in diffs.items():
        if d > (1e-12 if name in ("values", "eval_time") else 1e-10):
            raise AssertionError(f"engines disagree on {name}: relative difference {d:.3g}")
    return diffs, int((ref_k >= 0).sum())


def time_shape(shape, repeats):
    """Median seconds per (engine, phase), engines alternating call by call."""
    fns = {e: calls(shape, e) for e in ENGINES}
    times = {(e, phase): [] for e in ENGINES for phase in ("forward", "forward_backward")}
    for e in ENGINES:  # warm-up: compile or load the cache
        fns[e][1]()
    for _ in range(repeats):
        for phase, k in (("forward", 0), ("forward_backward", 1)):
            for e in ENGINES:
                start = time.perf_counter()
                fns[e][k]()
                times[(e, phase)].append(time.perf_counter() - start)
    return {key: float(np.median(v)) for key, v in times.items()}


def queue_rows(shapes, repeats):
    """The shared-queue sort on each engine, checked identical first."""
    from spikescan._queue import shared_queue, shared_queue_compiled

    rows = []
    for name, (batch, n_in, max_in, silent) in shapes.items():
        rng = np.random.default_rng(1)
        t = rng.uniform(0.0, WINDOW, (batch, n_in, max_in))
        t[rng.random(t.shape) < silent] = np.inf
        t = np.sort(t, axis=-1)
        fns = {"numpy": lambda: shared_queue(t, np), "numba": lambda: shared_queue_compiled(t)}
        ref, out = fns["numpy"](), fns["numba"]()
        if not all(np.array_equal(a, b) for a, b in zip(ref, out)):
            raise AssertionError(f"the compiled shared queue differs from NumPy's on {name}")
        times = {e: [] for e in ENGINES}
        for _ in range(repeats):
            for e in ENGINES:
                start = time.perf_counter()
                fns[e]()
                times[e].append(time.perf_counter() - start)
        rows.append(dict(shape=name, batch=batch, n_in=n_in, max_in=max_in, entries=int(ref[2].sum()),
                         numpy_s=float(np.median(times["numpy"])), numba_s=float(np.median(times["numba"])),
                         identical=True))
        print(f"{name}: shared queue {rows[-1]['numpy_s'] / rows[-1]['numba_s']:.1f}x over numpy", flush=True)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small shapes (the test suite's run)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--output", default=os.path.join(_HERE, "results", "cpu_readout.json"))
    args = parser.parse_args(argv)
    import numba  # the compiled engine is what is compared: without Numba, stop here

    shapes = QUICK if args.quick else SHAPES
    rows, speedups = [], {}
    for name, shape in shapes.items():
        diffs, kinks = agreement(shape)
        times = time_shape(shape, args.repeats)
        for e in ENGINES:
            rows.append(dict(shape=name, **shape, engine=e, forward_s=times[(e, "forward")],
                             forward_backward_s=times[(e, "forward_backward")]))
        speedups[name] = {phase: times[("numpy", phase)] / times[("numba", phase)]
                          for phase in ("forward", "forward_backward")}
        speedups[name].update(max_relative_difference=diffs, kinks=kinks)
        print(f"{name}: numba {speedups[name]['forward']:.1f}x forward, "
              f"{speedups[name]['forward_backward']:.1f}x forward+backward over numpy", flush=True)
    queues = queue_rows(QUICK_QUEUES if args.quick else QUEUE_SHAPES, args.repeats)
    report = dict(benchmark="bench_readout", stamp=stamp(), numba_threads=numba.get_num_threads(),
                  repeats=args.repeats, tau_mem=TAU_MEM, tau_syn=TAU_SYN, t_max=T_MAX, rows=rows, speedups=speedups,
                  queues=queues)
    write_json(report, args.output)
    return report


if __name__ == "__main__":
    main()
