"""Shared pieces of the example scripts: flags, data loading with clear errors, the compile / fit / evaluate loop
and the JSON summary. Initial weights need no help here: every LIFLayer calibrates its kernel scale on its first
training batch and revives dead neurons by itself (``LIFLayer(calibrate=..., silence_penalty=...)``).

Import it after ``KERAS_BACKEND`` is set (the scripts default it to ``torch``). Not part of the installed package:
the scripts put ``examples/`` on ``sys.path`` to import it.
"""

from __future__ import annotations

import argparse
import json
import time

import keras
from keras import ops

from spikescan.datasets import SpikeBatches
from spikescan_keras import FiringMonitor, LIFLayer


def parser(doc, *, epochs, batch_size, hidden, learning_rate, max_spikes,
           data_dir_help="folder holding the dataset files"):
    """ArgumentParser with the flags every example shares; a script adds its own afterwards."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=epochs)
    p.add_argument("--batch-size", type=int, default=batch_size)
    p.add_argument("--data-dir", default=None, help=data_dir_help)
    p.add_argument("--output", default=None, help="path of a JSON summary")
    p.add_argument("--limit", type=int, default=None, metavar="N",
                   help="use only the first N samples of each split (smoke tests)")
    p.add_argument("--hidden", type=int, default=hidden, help="LIF neurons per hidden layer")
    p.add_argument("--max-spikes", type=int, default=max_spikes,
                   help="output spikes recorded per hidden neuron (extra spikes are counted in capped_spikes)")
    p.add_argument("--learning-rate", type=float, default=learning_rate, help="peak of a cosine-decayed Adam")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--verbose", type=int, default=2, choices=(0, 1, 2), help="keras verbosity of fit")
    return p


def load(loader, *args, **kwargs):
    """``loader(*args, **kwargs)``, turning a missing file or a missing optional dependency into ``SystemExit``
    with the loader's message (where to put the files, how to download them)."""
    try:
        return loader(*args, **kwargs)
    except (FileNotFoundError, ImportError) as err:
        raise SystemExit(f"error: {err}") from err


def device_name():
    """Name of the device keras computes on: the GPU's name, or ``"cpu"``."""
    if keras.backend.backend() == "torch":
        import torch

        return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    import jax

    device = jax.devices()[0]
    return "cpu" if device.platform == "cpu" else device.device_kind


def lif_layers(model):
    return [layer for layer in model.layers if isinstance(layer, LIFLayer)]


def capped_spikes(model):
    """Output spikes fired but not recorded (beyond ``max_spikes``), summed over the LIF layers."""
    return sum(int(ops.convert_to_numpy(layer.capped_spikes.value)) for layer in lif_layers(model))


def kernel_scales(model):
    """The factor each LIF layer's first-batch calibration applied to its kernel (1.0 when none was needed)."""
    return [round(float(ops.convert_to_numpy(layer.kernel_scale.value)), 4) for layer in lif_layers(model)]


def compile_model(model, learning_rate, decay_steps):
    schedule = keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps=max(decay_steps, 1), alpha=0.01)
    model.compile(optimizer=keras.optimizers.Adam(schedule),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])


def train(model, train_set, test_set, args, *, val_set=None):
    """Compile, ``fit`` for ``args.epochs`` epochs (shuffled mini-batches, keras progress at ``args.verbose``, the
    LIF layers' firing statistics in the logs), then evaluate on ``test_set``.

    Returns a dict with test_accuracy, test_loss, seconds (fit), calibration (each LIF layer's kernel_scale),
    capped_spikes (over the whole run, evaluation included) and the last epoch's firing statistics.
    """
    start = time.perf_counter()
    batches = SpikeBatches(train_set, batch_size=args.batch_size, shuffle=True, seed=args.seed)
    compile_model(model, args.learning_rate, args.epochs * len(batches))
    val = None if val_set is None else SpikeBatches(val_set, batch_size=args.batch_size)
    history = model.fit(batches, epochs=args.epochs, validation_data=val, verbose=args.verbose,
                        callbacks=[FiringMonitor()])
    seconds = time.perf_counter() - start
    test_loss, test_accuracy = model.evaluate(SpikeBatches(test_set, batch_size=args.batch_size), verbose=0)
    firing = {key: round(values[-1], 4) for key, values in history.history.items() if "/" in key}
    return {"test_accuracy": float(test_accuracy), "test_loss": float(test_loss), "seconds": round(seconds, 1),
            "calibration": kernel_scales(model), "capped_spikes": capped_spikes(model), "firing": firing}


def first(dataset, limit):
    """The first ``limit`` samples of a SpikeDataset (all of them when ``limit`` is None)."""
    return dataset if limit is None else dataset[:limit]


def summary(dataset, args, result, *, dropped_input_spikes=0, **extra):
    """The JSON summary of a run: dataset, test_accuracy, epochs, seconds, device, backend, dropped_input_spikes,
    capped_spikes, then ``result``'s other entries and ``extra``. Printed, and written to ``args.output`` if set."""
    out = {"dataset": dataset, "test_accuracy": result["test_accuracy"], "epochs": args.epochs,
           "seconds": result["seconds"], "device": device_name(), "backend": keras.backend.backend(),
           "dropped_input_spikes": int(dropped_input_spikes), "capped_spikes": result["capped_spikes"]}
    out.update({k: v for k, v in result.items() if k not in out})
    out.update(hidden=args.hidden, batch_size=args.batch_size, learning_rate=args.learning_rate, seed=args.seed,
               limit=args.limit, **extra)
    return emit(out, args.output)


def emit(summary, output):
    """Print ``summary`` as one JSON line and write it to ``output`` (if not None); returns it."""
    print(json.dumps(summary))
    if output:
        with open(output, "w") as f:
            json.dump(summary, f, indent=2)
    return summary
