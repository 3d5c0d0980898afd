"""Recurrent LIF layer on the CPU: the reference event loop against the parallel windows and the compiled engine,
side by side in one run.

An SHD-like recurrent layer (``spikes`` Poisson input spikes per sample on 700 channels over 1 s, 128 neurons,
``tau_mem`` 20 ms, ``tau_syn`` 5 ms, recurrent weights ``N(0, 0.04)``) without recurrent delays; the same layer with
input delays uniform on [0, 25] ms (what ``examples/shd.py --recurrent`` trains); that layer with a tenth of the
recurrent pairs connected and half the batch; and one with a quarter of the neurons and half the batch with
recurrent delays uniform on [1, 5] ms (whose 1 ms minimum lets the parallel method commit whole windows). The
compiled engine runs each of its forward kernels that applies: its neurons walking the shared queue together
(``lanes``: no input or recurrent delays), each neuron walking its own queue in time windows between the layer's
spikes (``windows``: input delays, no recurrent delays; also with its walks always stopping at the earliest
crossing known, ``windows, stopping``, and always going on to the window's end, ``windows, walking on``, where
``windows`` decides by the share of connected pairs) and its general event loop (``event loop``, what it runs with
recurrent delays). Every variant is first checked against ``engine="numpy",
method="sequential"`` (identical spike counts, times and gradients within the test tolerances) and only then timed:
forward, and forward + backward, median of ``--repeats``.

    python benchmarks/bench_recurrent.py                         # -> benchmarks/results/recurrent_cpu.json
    python benchmarks/bench_recurrent.py --quick --output F      # a small case (the test suite runs this)

The JSON starts with ``stamp`` (``_stamp.py``: commit, dirty flag, machine, versions) and holds every repeat; ratios
are against the reference (NumPy ``sequential``) on the same layer.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import spikescan as ss  # noqa: E402
from spikescan._lif_numpy import numba_available  # noqa: E402
from _stamp import stamp, write_json  # noqa: E402

TAU_MEM, TAU_SYN, DURATION, MAX_DELAY = 20.0, 5.0, 1000.0, 25.0
# The layers: (name, input delays, recurrent delays, share of connected recurrent pairs).
LAYERS = (("shd_recurrent", False, False, 1.0), ("shd_recurrent_input_delays", True, False, 1.0),
          ("shd_recurrent_input_delays_sparse", True, False, 0.1), ("shd_recurrent_delays", False, True, 1.0))
FULL = dict(batch=4, n_in=700, spikes=3000, n_out=128)
QUICK = dict(batch=2, n_in=20, spikes=60, n_out=8)


def layer(batch, n_in, spikes, n_out, recurrent_delays, input_delays=False, connected=1.0, seed=0):
    """Input spike times, input weights, recurrent weights (a share ``connected`` of the pairs non-zero), and
    (optionally) recurrent and input delays."""
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(spikes, np.full(n_in, 1.0 / n_in), size=batch)
    t = np.full((batch, n_in, max(int(counts.max()), 1)), np.inf)
    for b in range(batch):
        for j in np.flatnonzero(counts[b]):
            t[b, j, : counts[b, j]] = np.sort(rng.uniform(0.0, DURATION, counts[b, j]))
    # Input weights whose mean current, about 1.1 thresholds, makes a neuron fire a few to a few tens of times.
    mean = 1.1 * DURATION / (TAU_SYN * spikes)
    w = rng.normal(mean, mean, (n_in, n_out))
    r = rng.normal(0.0, 0.04, (n_out, n_out))
    dr = rng.uniform(1.0, 5.0, (n_out, n_out)) if recurrent_delays else None
    d = rng.uniform(0.0, MAX_DELAY, (n_in, n_out)) if input_delays else None
    if connected < 1.0:
        r = r * (np.random.default_rng(seed + 1).uniform(size=r.shape) < connected)
    return t, w, r, dr, d


def variants():
    """``(engine, method, kernel)``; the compiled engine's forward kernels side by side: the neurons walking the
    shared queue together (``"lanes"``: one shared queue, no recurrent delays), each neuron its own queue in windows
    (``"windows"``: input delays, no recurrent delays) and the general event loop (``"event loop"``)."""
    out = [("numpy", "sequential", None), ("numpy", "scan", None)]
    if numba_available():
        out += [("numba", "sequential", "lanes"), ("numba", "sequential", "windows"),
                ("numba", "sequential", "windows, stopping"), ("numba", "sequential", "windows, walking on"),
                ("numba", "sequential", "event loop")]
    return out


def applies(kernel, input_delays, recurrent_delays):
    """Whether the compiled engine runs ``kernel`` on such a layer when it is switched on."""
    if kernel == "lanes":
        return not input_delays and not recurrent_delays
    if kernel.startswith("windows"):
        return input_delays and not recurrent_delays
    return True


def _run(args, engine, method, max_spikes, kernel=None):
    t, w, r, dr, d = args
    saved = None
    if kernel is not None:
        from spikescan import _recurrent_numba

        saved = _recurrent_numba.LANES, _recurrent_numba.WINDOWS, _recurrent_numba.WINDOW_STOP_DENSITY
        _recurrent_numba.LANES, _recurrent_numba.WINDOWS = kernel == "lanes", kernel.startswith("windows")
        # The windows' walks stop at the earliest crossing known (density 0: always), go on to the window's end
        # (never), or, as the engine decides, where enough of the recurrent pairs are connected.
        _recurrent_numba.WINDOW_STOP_DENSITY = {"windows, stopping": 0.0, "windows, walking on": np.inf}.get(
            kernel, saved[2])
    try:
        return ss.lif_forward(t, w, delays=d, tau_mem=TAU_MEM, tau_syn=TAU_SYN, max_spikes=max_spikes,
                              recurrent_weights=r, recurrent_delays=dr, method=method, engine=engine)
    finally:
        if saved is not None:
            _recurrent_numba.LANES, _recurrent_numba.WINDOWS, _recurrent_numba.WINDOW_STOP_DENSITY = saved


def _check(ref, out, gref, gout, label):
    if not np.array_equal(out.counts, ref.counts):
        raise AssertionError(f"{label}: spike counts differ from the reference")
    fin = np.isfinite(ref.times)
    np.testing.assert_allclose(out.times[fin], ref.times[fin], rtol=1e-12, atol=1e-12, err_msg=label)
    for name in ("weights", "recurrent_weights", "recurrent_delays", "threshold"):
        a, b = getattr(gref, name), getattr(gout, name)
        if a is not None:
            np.testing.assert_allclose(b, a, rtol=1e-9, atol=1e-9 * max(np.abs(a).max(), 1.0),
                                       err_msg=f"{label}: {name}")


def bench(shape, repeats, max_spikes=16):
    rows = []
    for name, in_delays, rec_delays, connected in LAYERS:
        # With recurrent delays every spike schedules n_out arrivals at distinct times, each an event of the
        # reference loop: a quarter of the neurons and half the batch keep it to minutes; the reference takes
        # minutes per sample on the layers with input delays, so the sparse one has half the batch.
        shape_ = dict(shape, n_out=max(8, shape["n_out"] // 4), batch=max(1, shape["batch"] // 2)) if rec_delays \
            else dict(shape, batch=max(1, shape["batch"] // 2)) if connected < 1.0 else shape
        args = layer(**shape_, recurrent_delays=rec_delays, input_delays=in_delays, connected=connected)
        ref = _run(args, "numpy", "sequential", max_spikes)
        g = np.where(np.isfinite(ref.times), 1.0, 0.0)
        gref = ss.lif_backward(ref, g, input_times_grad=False)
        for engine, method, kernel in variants():
            if kernel is not None and not applies(kernel, in_delays, rec_delays):
                continue
            label = f"{name}/{engine}/{method}" + (f"/{kernel}" if kernel else "")
            out = _run(args, engine, method, max_spikes, kernel)
            gout = ss.lif_backward(out, g, input_times_grad=False, engine=engine)
            _check(ref, out, gref, gout, label)
            fwd, full = [], []
            for _ in range(repeats):
                t0 = time.perf_counter()
                res = _run(args, engine, method, max_spikes, kernel)
                t1 = time.perf_counter()
                ss.lif_backward(res, g, input_times_grad=False, engine=engine)
                t2 = time.perf_counter()
                fwd.append(t1 - t0)
                full.append(t2 - t0)
            rows.append(dict(layer=name, shape=shape_, connected=connected, engine=engine, method=method,
                             kernel=kernel,
                             forward_s=float(np.median(fwd)), forward_backward_s=float(np.median(full)),
                             forward_repeats=fwd, full_repeats=full,
                             spikes_per_sample=float(ref.counts.sum() / shape_["batch"]),
                             capped_spikes=ref.capped_spikes))
            print(f"{label:40s} forward {rows[-1]['forward_s']:.3f} s  forward+backward "
                  f"{rows[-1]['forward_backward_s']:.3f} s", flush=True)
    for row in rows:
        base = next(r for r in rows if r["layer"] == row["layer"] and r["engine"] == "numpy"
                    and r["method"] == "sequential")
        row["forward_speedup"] = base["forward_s"] / row["forward_s"]
        row["forward_backward_speedup"] = base["forward_backward_s"] / row["forward_backward_s"]
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a small layer (seconds)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--output", default=None, help="JSON path (default: results/recurrent_cpu.json; none with "
                                                       "--quick unless given)")
    args = parser.parse_args(argv)
    shape = QUICK if args.quick else FULL
    t0 = time.perf_counter()
    load_start = os.getloadavg()[0]
    rows = bench(shape, args.repeats)
    report = dict(benchmark="bench_recurrent", stamp=stamp(), load_average=[load_start, os.getloadavg()[0]],
                  settings=dict(shape=shape, tau_mem=TAU_MEM, tau_syn=TAU_SYN, duration_ms=DURATION,
                                recurrent_std=0.04, recurrent_delays="uniform [1, 5] ms",
                                input_delays=f"uniform [0, {MAX_DELAY:g}] ms", repeats=args.repeats,
                                quick=args.quick),
                  rows=rows, seconds=time.perf_counter() - t0)
    output = args.output or (None if args.quick else os.path.join(HERE, "results", "recurrent_cpu.json"))
    if output:
        write_json(report, output, indent=1)
        print(f"wrote {output}")
    return report


if __name__ == "__main__":
    main()
