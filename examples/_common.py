"""Shared pieces of the example scripts: flags, data loading with clear errors, weight calibration, the
compile / fit / evaluate loop and the JSON summary.

Import it after ``KERAS_BACKEND`` is set (the scripts default it to ``torch``). Not part of the installed package:
the scripts put ``examples/`` on ``sys.path`` to import it.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings

import keras
import numpy as np
from keras import ops

from spikescan.datasets import SpikeBatches
from spikescan_keras import CappedSpikesWarning, LIFLayer


def parser(doc, *, epochs, batch_size, hidden, learning_rate, max_spikes, init_spikes=None,
           data_dir_help="folder holding the dataset files"):
    """ArgumentParser with the flags every example shares; a script adds its own afterwards.

    ``init_spikes=None`` leaves out ``--init-spikes`` (models whose initial weights are not calibrated)."""
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
    if init_spikes is not None:
        p.add_argument("--init-spikes", type=float, default=init_spikes,
                       help="initial mean spikes per hidden neuron and sample, set by rescaling the initial weights")
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
    """Output spikes fired but not recorded (beyond ``max_spikes``), summed over the LIF layers since the last
    reset (:func:`calibrate` resets the counters)."""
    return sum(int(ops.convert_to_numpy(layer.capped_spikes.value)) for layer in lif_layers(model))


def calibrate(model, times, *, spikes_per_neuron=1.0, tolerance=0.25, rounds=8):
    """Rescale the kernels so that each LIF layer fires about ``spikes_per_neuron`` spikes per neuron and sample,
    and the readout's logits start with unit standard deviation.

    The layers' default initializers assume about one input spike per channel; latency MNIST leaves most pixels
    silent and speech inputs have tens of spikes per channel, so a network initialised by that rule alone can be
    silent (zero gradients) or saturated (capped spikes, huge logits). Layer by layer, on the calibration batch
    ``times [b, channels, max_in]``, each LIF kernel is multiplied by a factor (1/256 to 256), found by a safeguarded
    secant search on its logarithm, until the mean number of recorded spikes per (sample, neuron) is within a factor
    ``1 +- tolerance`` of the target; then a readout kernel is divided by the standard deviation of its logits. The
    ``capped_spikes`` counters are reset afterwards. Returns the factors, one per layer with a kernel.
    """
    x = ops.convert_to_tensor(times)
    factors = []
    with warnings.catch_warnings():  # capping at a trial scale is no news; training warns on its own
        warnings.simplefilter("ignore", CappedSpikesWarning)
        for layer in model.layers:
            kernel = ops.convert_to_numpy(layer.kernel.value)
            if isinstance(layer, LIFLayer):
                lo, hi, log_s = -8.0, 8.0, 0.0
                for i in range(rounds):
                    layer.kernel.assign(kernel * 2.0 ** log_s)
                    y = layer(x)
                    rate = float(np.isfinite(ops.convert_to_numpy(y)).sum(axis=-1).mean())
                    if abs(rate / spikes_per_neuron - 1.0) <= tolerance or i == rounds - 1:
                        break  # the last trial stays applied
                    lo, hi = (log_s, hi) if rate < spikes_per_neuron else (lo, log_s)
                    # Guess rate ~ scale (doubling while silent), bisect when the guess leaves the bracket; small
                    # steps avoid trial scales with huge spike counts, which are slow to simulate.
                    step = 1.0 if rate == 0 else np.log2(spikes_per_neuron / rate)
                    log_s = log_s + step if lo < log_s + step < hi else 0.5 * (lo + hi)
                factors.append(2.0 ** log_s)
                layer.capped_spikes.assign(0)
            else:
                y = layer(x)
                std = float(np.std(ops.convert_to_numpy(y)))
                factors.append(1.0 / std if std > 0 else 1.0)
                layer.kernel.assign(kernel * factors[-1])
            x = y
    return factors


def compile_model(model, learning_rate, decay_steps):
    schedule = keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps=max(decay_steps, 1), alpha=0.01)
    model.compile(optimizer=keras.optimizers.Adam(schedule),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])


def train(model, train_set, test_set, args, *, val_set=None, calibration_samples=32):
    """Calibrate (:func:`calibrate` to ``args.init_spikes`` spikes per hidden neuron), compile, ``fit`` for
    ``args.epochs`` epochs (shuffled mini-batches, keras progress at ``args.verbose``), then evaluate on
    ``test_set``.

    Returns a dict with test_accuracy, test_loss, seconds (calibration and fit), calibration, capped_spikes
    (over the whole run, evaluation included).
    """
    start = time.perf_counter()
    factors = calibrate(model, train_set.times[:calibration_samples], spikes_per_neuron=args.init_spikes)
    batches = SpikeBatches(train_set, batch_size=args.batch_size, shuffle=True, seed=args.seed)
    compile_model(model, args.learning_rate, args.epochs * len(batches))
    val = None if val_set is None else SpikeBatches(val_set, batch_size=args.batch_size)
    model.fit(batches, epochs=args.epochs, validation_data=val, verbose=args.verbose)
    seconds = time.perf_counter() - start
    test_loss, test_accuracy = model.evaluate(SpikeBatches(test_set, batch_size=args.batch_size), verbose=0)
    return {"test_accuracy": float(test_accuracy), "test_loss": float(test_loss), "seconds": round(seconds, 1),
            "calibration": [round(f, 4) for f in factors], "capped_spikes": capped_spikes(model)}


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
