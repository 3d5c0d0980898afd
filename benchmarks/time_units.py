"""Do trainable delays and time constants learn alike whatever the time unit? One run, side by side.

The task ("delta", a timing task where delays matter): two signal channels A and B and two distractors, one spike
each. A at 16 + U[0, 20] ms, B at A + delta with delta drawn around one of (-14, -6, 6, 14) ms (+-2 ms, the four
classes); distractors uniform on [0, 52] ms. Absolute times carry no class information, only B - A does, and with
tau_mem = 4 ms, tau_syn = 2 ms a neuron without delays has forgotten A when B arrives. The model: LIFLayer(16) ->
LIReadout("integral"), Adam with cosine decay from 3e-3, batch 16, 512 training and 1000 test samples (fixed data;
the seed draws the model and the shuffles).

Variants: ``fixed`` (no delays, fixed time constants), ``delays`` (LIFLayer(delays=True, max_delay=20 ms)),
``time_constants`` (trainable_time_constants=True in both layers). Each is trained with every time and time
constant in milliseconds and again in seconds (divided by 1000): a library whose time parameters learn at rates
that do not depend on the unit gives the same accuracies in both.

    KERAS_BACKEND=torch python benchmarks/time_units.py --output benchmarks/results/time_units_torch.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

TAU_MEM, TAU_SYN, MAX_DELAY = 4.0, 2.0, 20.0
CENTRES, HALF = np.array([-14.0, -6.0, 6.0, 14.0]), 2.0
ONSET, DISTRACTOR = 20.0, 48.0
T_MAX = ONSET + 16.0 + 16.0 + MAX_DELAY + 6 * TAU_MEM  # every response inside the readout window
VARIANTS = ("fixed", "delays", "time_constants")
UNITS = {"ms": 1.0, "s": 1e-3}


def delta_task(n, seed):
    """``(times [n, 4, 1] in ms, labels [n])``."""
    rng = np.random.RandomState(seed)
    y = rng.randint(len(CENTRES), size=n)
    a = rng.uniform(0.0, ONSET, n) + 16.0
    b = a + CENTRES[y] + rng.uniform(-HALF, HALF, n)
    t = np.stack([a, b, rng.uniform(0.0, DISTRACTOR, n), rng.uniform(0.0, DISTRACTOR, n)], axis=1)
    return t[:, :, None], y


def build(keras, variant, f, epochs, steps_per_epoch, lr):
    import spikescan_keras as sk

    lif = dict(tau_mem=TAU_MEM * f, tau_syn=TAU_SYN * f, max_spikes=4, name="hidden")
    readout = dict(tau_mem=TAU_MEM * f, tau_syn=TAU_SYN * f, readout="integral", t_max=T_MAX * f, name="readout")
    if variant == "delays":
        lif.update(delays=True, max_delay=MAX_DELAY * f)
    elif variant == "time_constants":
        lif.update(trainable_time_constants=True)
        readout.update(trainable_time_constants=True)
    model = keras.Sequential([keras.Input(shape=(4, 1)), sk.LIFLayer(16, **lif),
                              sk.LIReadout(len(CENTRES), **readout)])
    schedule = keras.optimizers.schedules.CosineDecay(lr, epochs * steps_per_epoch, alpha=0.02)
    model.compile(optimizer=keras.optimizers.Adam(schedule),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    return model


def moved(model, before, f):
    """How far training moved the time parameters, unit-free: mean |change of delay| / max_delay, mean |change of
    log tau| (over both layers' time constants)."""
    hidden, readout = model.get_layer("hidden"), model.get_layer("readout")
    if hidden.use_delays:
        return {"delays_over_max_delay": float(np.mean(np.abs(hidden.delay_values() - before)) / (MAX_DELAY * f))}
    if hidden.trainable_time_constants:
        now = np.concatenate([*hidden.time_constants(), *readout.time_constants()])
        return {"log_time_constants": float(np.mean(np.abs(np.log(now) - np.log(before))))}
    return {}


def run_one(keras, variant, unit, seed, args):
    f = UNITS[unit]
    x, y = delta_task(args.train, 1000)
    x_test, y_test = delta_task(args.test, 2000)
    x, x_test = (x * f).astype(np.float32), (x_test * f).astype(np.float32)
    keras.utils.set_random_seed(seed)
    model = build(keras, variant, f, args.epochs, -(-args.train // args.batch_size), args.lr)
    model(x[:2])
    hidden, readout = model.get_layer("hidden"), model.get_layer("readout")
    before = (hidden.delay_values() if hidden.use_delays else
              np.concatenate([*hidden.time_constants(), *readout.time_constants()]))
    start = time.perf_counter()
    model.fit(x, y, batch_size=args.batch_size, epochs=args.epochs, verbose=0)
    seconds = time.perf_counter() - start
    _, accuracy = model.evaluate(x_test, y_test, verbose=0)
    row = dict(variant=variant, unit=unit, seed=seed, test_accuracy=float(accuracy), train_seconds=seconds)
    row.update(moved(model, before, f))
    return row


def paired_summary(rows, variants, key, pair, label=str):
    """Mean test accuracy per variant and value of ``row[key]`` (named ``label(value)``), and per variant the
    difference of the means at the two values ``pair`` (``"<first>_minus_<second>"``)."""
    out = {}
    for variant in variants:
        means = {}
        for value in pair:
            acc = [r["test_accuracy"] for r in rows if r["variant"] == variant and r[key] == value]
            if acc:
                means[label(value)] = float(np.mean(acc))
        if means:
            out[variant] = dict(mean_test_accuracy=means)
            if len(means) == 2:
                first, second = (label(value) for value in pair)
                out[variant][f"{first}_minus_{second}"] = means[first] - means[second]
    return out


def run_panel(report, output, cells, run, summarise):
    """Run ``run(*cell)`` for every cell in order, appending its row to ``report["rows"]``, printing it, and
    rewriting ``output`` with the report after each, ``report["summary"] = summarise(rows)`` included."""
    for cell in cells:
        row = run(*cell)
        report["rows"].append(row)
        print(json.dumps(row), flush=True)
        report["summary"] = summarise(report["rows"])
        Path(output).write_text(json.dumps(report, indent=1) + "\n")
    return report


def summary(rows):
    """Mean test accuracy per (variant, unit), and the ms - s difference per variant."""
    return paired_summary(rows, VARIANTS, "unit", tuple(UNITS))


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--train", type=int, default=512)
    p.add_argument("--test", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--output", required=True, help="the JSON report")
    return p.parse_args(argv)


def main(argv=None):
    args = parse(argv)
    os.environ.setdefault("KERAS_BACKEND", "torch")
    import keras

    from _stamp import stamp

    report = dict(benchmark="time_units", stamp=stamp(), settings=vars(args), rows=[])
    cells = [(variant, unit, seed) for variant in args.variants for unit in UNITS for seed in range(args.seeds)]
    return run_panel(report, args.output, cells, lambda variant, unit, seed: run_one(keras, variant, unit, seed, args),
                     summary)


if __name__ == "__main__":
    main()
