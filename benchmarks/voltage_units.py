"""Does a model learn alike whatever the firing threshold (the voltage unit)? One run, side by side.

A LIF neuron with ``V <- 0`` reset computes the same spikes when its threshold and every weight into it are multiplied
by one factor: the threshold only sets the voltage unit (1 in normalised models, 15-20 for millivolts above rest).
Adam steps every variable by about its learning rate whatever its size, so weights stored in voltage units move
relatively ``threshold`` times slower at threshold 20 than at threshold 1: the same model would learn more slowly
the larger its threshold. The layers store their kernel (and trainable thresholds, and recurrent weights) over a
voltage unit (the threshold rounded to a power of two) to make training independent of it; this benchmark checks it.

Task: Yin-Yang (``spikescan.datasets.yinyang``, latency code, the published seeds), ``LIFLayer(64) ->
LIReadout(3, "integral")``, Adam with cosine decay from 1e-2, batch 32. Variants: ``fixed`` (the kernel only),
``threshold`` (``trainable_threshold=True``), ``recurrent`` (``recurrent=True``). Each is trained with threshold 1 and
with threshold 20 (everything else equal; the ``"auto"`` initialiser and the calibration scale the weights with the
threshold): a library whose weights learn at rates that do not depend on the threshold gives the same accuracies.

    KERAS_BACKEND=torch python benchmarks/voltage_units.py --output benchmarks/results/voltage_units_torch.json
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from time_units import paired_summary, run_panel  # noqa: E402  (the unit benchmarks' shared table and loop)

TAU_MEM, TAU_SYN, T_MAX = 20.0, 10.0, 60.0
VARIANTS = ("fixed", "threshold", "recurrent")
THRESHOLDS = (1.0, 20.0)


def build(keras, variant, threshold, epochs, steps_per_epoch, lr):
    import spikescan_keras as sk

    lif = dict(tau_mem=TAU_MEM, tau_syn=TAU_SYN, threshold=threshold, max_spikes=8, name="hidden")
    if variant == "threshold":
        lif.update(trainable_threshold=True)
    elif variant == "recurrent":
        lif.update(recurrent=True)
    model = keras.Sequential([keras.Input(shape=(5, 1)), sk.LIFLayer(64, **lif),
                              sk.LIReadout(3, tau_mem=TAU_MEM, tau_syn=TAU_SYN, t_max=T_MAX, name="readout")])
    schedule = keras.optimizers.schedules.CosineDecay(lr, epochs * steps_per_epoch, alpha=0.02)
    model.compile(optimizer=keras.optimizers.Adam(schedule),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    return model


def run_one(keras, variant, threshold, seed, data, args):
    (x, y), (x_test, y_test) = data
    keras.utils.set_random_seed(seed)
    model = build(keras, variant, threshold, args.epochs, -(-len(x) // args.batch_size), args.lr)
    start = time.perf_counter()
    model.fit(x, y, batch_size=args.batch_size, epochs=args.epochs, verbose=0)
    seconds = time.perf_counter() - start
    _, accuracy = model.evaluate(x_test, y_test, verbose=0)
    hidden = model.get_layer("hidden")
    return dict(variant=variant, threshold=threshold, seed=seed, test_accuracy=float(accuracy), train_seconds=seconds,
                spikes_per_neuron=float(keras.ops.convert_to_numpy(hidden.spikes_per_neuron.value)))


def summary(rows):
    """Mean test accuracy per (variant, threshold), and the difference threshold 1 - threshold 20 per variant."""
    return paired_summary(rows, VARIANTS, "threshold", THRESHOLDS, label=lambda t: f"{t:g}")


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--train", type=int, default=1000)
    p.add_argument("--test", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--output", required=True, help="the JSON report")
    return p.parse_args(argv)


def main(argv=None):
    args = parse(argv)
    os.environ.setdefault("KERAS_BACKEND", "torch")
    import keras

    from _stamp import stamp
    from spikescan.datasets import yinyang

    train, test = yinyang(args.train, seed=42), yinyang(args.test, seed=40)
    data = (train.times, train.labels), (test.times, test.labels)
    report = dict(benchmark="voltage_units", stamp=stamp(), settings=vars(args), rows=[])
    cells = [(variant, threshold, seed) for variant in args.variants for threshold in THRESHOLDS
             for seed in range(args.seeds)]
    return run_panel(report, args.output, cells,
                     lambda variant, threshold, seed: run_one(keras, variant, threshold, seed, data, args), summary)


if __name__ == "__main__":
    main()
