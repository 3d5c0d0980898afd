"""A Keras training step of the latency-MNIST model on the CPU, with the step's speed-ups switched on and off.

``python benchmarks/bench_training_step.py [--backend jax] [--data-dir DIR] [--batches 20] [--repeats 3] [--output F]``

The model is ``examples/mnist.py``'s (784 -> 350 LIF -> 10 LI, ``"max"`` readout, batch 64), compiled as the example
compiles it. Data: ``DIR/mnist.npz`` through ``spikescan.datasets.latency_mnist`` when ``--data-dir`` is given (the
first ``--batches`` batches of the training images), else synthetic latency images (each pixel fires with
probability 0.19, as MNIST's non-black pixels do, at a uniform time in ``[0, 20]`` ms). Variants, each a fresh
model with the same seed:

- ``default``: what a user runs;
- ``input_grad`` (jax and tensorflow): the first layer also computes the gradient of its input spike times, which
  nothing uses (``spikescan_keras._bridge.jax.SKIP_INPUT_GRAD = False``, the same switch in ``_bridge.tensorflow``;
  the torch bridge skips it through ``needs_input_grad``);
- ``per_neuron_walk``: the compiled ``"max"`` readout walks each (sample, unit) on its own instead of a sample's
  units in step (``spikescan._readout_numba.WALK = "per_neuron"``; the same bits).

Per variant: one warm-up epoch over the batches (compilation, first-batch calibration), then ``--repeats`` epochs;
the JSON (stamped, ``_stamp.py``) has each variant's median time per step and how many of the LIF layer's backward
calls computed the input-time gradient (the check that the switch did what it says), and ``speedups``: a variant's
time over ``default``'s.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(_HERE))
sys.path.insert(0, os.path.join(os.path.dirname(_HERE), "examples"))
sys.path.insert(0, _HERE)

VARIANTS = ("default", "input_grad", "per_neuron_walk")


def synthetic(n, seed=0, t_max=20.0):
    """``n`` synthetic latency images ``[n, 784, 1]`` (float32, ``+inf`` for silent pixels) and labels."""
    import numpy as np

    rng = np.random.default_rng(seed)
    times = np.where(rng.random((n, 784, 1)) < 0.19, rng.uniform(0.0, t_max, (n, 784, 1)), np.inf)
    return times.astype(np.float32), rng.integers(0, 10, n)


def run_variant(variant, source, args):
    import keras
    import numpy as np

    import _common
    import mnist
    from spikescan import _readout_numba
    from spikescan.datasets import SpikeBatches

    bridge = None
    if keras.backend.backend() == "jax":
        from spikescan_keras._bridge import jax as bridge
    elif keras.backend.backend() == "tensorflow":
        from spikescan_keras._bridge import tensorflow as bridge
    from spikescan_keras import _host

    saved = (_readout_numba.WALK, None if bridge is None else bridge.SKIP_INPUT_GRAD, _host.LIFOp.backward)
    calls = {True: 0, False: 0}  # the LIF backward's calls by whether they computed the input-time gradient
    original = _host.LIFOp.backward

    def counted(spec, result, grad, input_grad=True):
        calls[bool(input_grad)] += 1
        return original(spec, result, grad, input_grad=input_grad)

    _host.LIFOp.backward = staticmethod(counted)
    _readout_numba.WALK = "per_neuron" if variant == "per_neuron_walk" else "auto"
    if bridge is not None:
        bridge.SKIP_INPUT_GRAD = variant != "input_grad"
    try:
        keras.utils.set_random_seed(0)
        model = mnist.build_model(784, args.hidden, 4, 20.0)
        batches = SpikeBatches(*source, batch_size=args.batch_size)
        _common.compile_model(model, 2e-3, 1000)
        model.fit(batches, epochs=1, verbose=0)
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            model.fit(batches, epochs=1, verbose=0)
            times.append((time.perf_counter() - start) / len(batches))
        return dict(step_s=float(np.median(times)), lif_backward_calls_with_input_grad=calls[True],
                    lif_backward_calls_without=calls[False])
    finally:
        _host.LIFOp.backward = staticmethod(saved[2])
        _readout_numba.WALK = saved[0]
        if bridge is not None:
            bridge.SKIP_INPUT_GRAD = saved[1]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", default="jax", choices=("jax", "torch", "tensorflow"))
    parser.add_argument("--data-dir", default=None, help="folder with mnist.npz (default: synthetic images)")
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=350)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", default=os.path.join(_HERE, "results", "cpu_training_step.json"))
    args = parser.parse_args(argv)
    os.environ["KERAS_BACKEND"] = args.backend
    import keras

    if keras.backend.backend() != args.backend:
        parser.error(f"keras was already imported with the {keras.backend.backend()!r} backend")
    import numba

    from _stamp import stamp, write_json

    n = args.batches * args.batch_size
    if args.data_dir is None:
        source, data = synthetic(n), "synthetic"
    else:
        import _common
        from spikescan.datasets import latency_mnist

        source, data = (_common.first(latency_mnist("train", t_max=20.0, data_dir=args.data_dir), n),), "mnist.npz"
    variants = [v for v in VARIANTS if v != "input_grad" or args.backend != "torch"]
    rows = {}
    for variant in variants:
        rows[variant] = run_variant(variant, source, args)
        print(f"{variant}: {1000 * rows[variant]['step_s']:.1f} ms per step", flush=True)
    step = {v: row["step_s"] for v, row in rows.items()}
    report = dict(benchmark="bench_training_step", stamp=stamp(), backend=args.backend, data=data,
                  numba_threads=numba.get_num_threads(), batch_size=args.batch_size, batches=args.batches,
                  hidden=args.hidden, repeats=args.repeats, variants=rows,
                  speedups={v: step[v] / step["default"] for v in variants if v != "default"})
    write_json(report, args.output)
    return report


if __name__ == "__main__":
    main()
