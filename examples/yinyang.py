"""Yin-Yang with exact spike times: LIFLayer (hidden) + LIReadout, trained by ``model.fit``.

    python examples/yinyang.py                     # torch backend (default), CPU
    KERAS_BACKEND=jax python examples/yinyang.py   # jax backend

Data: ``spikescan.datasets.yinyang`` with the published splits (train 5000 / validation 1000 / test 1000 samples,
seeds 42 / 41 / 40) and latency code: four input spikes at ``30 ms * (x, y, 1-x, 1-y)`` and a bias spike at 0.
Writes a JSON summary (dataset, test_accuracy, epochs, seconds, device) with ``--output``.
"""

from __future__ import annotations

import os
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "torch")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import keras  # noqa: E402

import _common  # noqa: E402

from spikescan.datasets import yinyang  # noqa: E402
from spikescan_keras import FiringMonitor, LIFLayer, LIReadout  # noqa: E402

# Time constants in ms. Inputs span [0, 30] ms; hidden spikes follow within a few tau_syn, so the readout window
# t_max covers them. tau_mem == 2 tau_syn allows the closed-form spike-time solver (no Newton iterations).
TAU_MEM, TAU_SYN, T_MAX = 20.0, 10.0, 60.0
SOLVER, READOUT = "analytic", "integral"


def build_model(hidden, max_spikes, learning_rate, decay_steps, *, tau_mem=TAU_MEM, tau_syn=TAU_SYN, t_max=T_MAX,
                solver=SOLVER, readout=READOUT):
    model = keras.Sequential([
        keras.Input(shape=(5, 1)),
        LIFLayer(hidden, tau_mem=tau_mem, tau_syn=tau_syn, max_spikes=max_spikes, solver=solver, name="hidden"),
        LIReadout(3, tau_mem=tau_mem, tau_syn=tau_syn, readout=readout, t_max=t_max, name="readout"),
    ])
    # Cosine decay: a large step finds the rough class boundaries within a few epochs, the small ones at the end
    # settle the noisy accuracy that a constant rate leaves.
    schedule = keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps, alpha=0.02)
    model.compile(optimizer=keras.optimizers.Adam(schedule),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    return model


def main(argv=None):
    parser = _common.parser(__doc__, epochs=40, batch_size=32, hidden=120, learning_rate=3e-3, max_spikes=4,
                            data_dir_help="unused: Yin-Yang is generated, not downloaded")
    args = parser.parse_args(argv)

    keras.utils.set_random_seed(args.seed)
    train, val, test = (yinyang(n if args.limit is None else min(n, args.limit), seed=s)
                        for n, s in ((5000, 42), (1000, 41), (1000, 40)))
    steps = args.epochs * -(-len(train.labels) // args.batch_size)
    model = build_model(args.hidden, args.max_spikes, args.learning_rate, steps)
    start = time.perf_counter()
    history = model.fit(train.times, train.labels, batch_size=args.batch_size, epochs=args.epochs,
                        validation_data=(val.times, val.labels), verbose=args.verbose,
                        callbacks=[FiringMonitor()])
    seconds = time.perf_counter() - start
    _, test_accuracy = model.evaluate(test.times, test.labels, batch_size=256, verbose=0)
    summary = {"dataset": "yinyang", "test_accuracy": float(test_accuracy), "epochs": args.epochs,
               "seconds": round(seconds, 1), "device": _common.device_name(), "backend": keras.backend.backend(),
               "capped_spikes": int(keras.ops.convert_to_numpy(model.get_layer("hidden").capped_spikes.value)),
               "calibration": _common.kernel_scales(model),
               "firing": {key: round(v[-1], 4) for key, v in history.history.items() if "/" in key}}
    return _common.emit(summary, args.output)


if __name__ == "__main__":
    main()
