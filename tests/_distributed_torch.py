"""Worker of tests/test_distributed.py for the torch backend, run by ``torchrun --nproc_per_node=2`` (gloo on CPU).

Each rank (1) trains a small Yin-Yang model data-parallel with ``spikescan_keras.distributed`` and writes its weights
and ``fit``'s history to ``OUT/rank{r}.npz``; (2) runs ``examples/yinyang.py``'s ``main`` with
``--output OUT/yinyang.json`` in the same process group, as ``torchrun examples/yinyang.py`` would, and writes the
summary it returned to ``OUT/summary{r}.json``. ``train`` also gives the test's single-process reference.

    python -m torch.distributed.run --standalone --nproc_per_node=2 tests/_distributed_torch.py OUT
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("KERAS_BACKEND", "torch")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from spikescan.datasets import SpikeBatches, yinyang  # noqa: E402
from spikescan_keras import FiringMonitor, LIFLayer, LIReadout, distributed  # noqa: E402

# 51 samples in global batches of 16: the last batch (3 samples) splits 2 + 1 between the ranks, so the gradients'
# weighting by samples matters. The weak initial kernel makes the first-batch calibration scale it up, and some
# neurons start dead (the revival objective acts); so do readout units on some batches (the max readout's revival
# objective acts, its dead set that of the global batch). Seeded initializers: no global seeding needed.
N_SAMPLES, GLOBAL_BATCH, EPOCHS, HIDDEN = 51, 16, 2, 12
# 33 samples in batches of 16: a last global batch of 1 sample, left out (dropped_last_batch_samples).
EXAMPLE_FLAGS = ["--epochs", "1", "--limit", "33", "--hidden", "6", "--batch-size", "16", "--verbose", "0"]


def build(silence_penalty=1.0):
    model = keras.Sequential([
        keras.Input(shape=(5, 1)),
        LIFLayer(HIDDEN, tau_mem=20.0, tau_syn=10.0, max_spikes=2, solver="analytic", name="hidden",
                 kernel_initializer=keras.initializers.RandomNormal(0.05, 0.1, seed=1),
                 silence_penalty=silence_penalty),
        LIReadout(3, tau_mem=20.0, tau_syn=10.0, t_max=60.0, name="readout", readout="max",
                  kernel_initializer=keras.initializers.RandomNormal(-0.1, 0.1, seed=2)),
    ])
    model.compile(optimizer=keras.optimizers.Adam(1e-2),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    return model


def train():
    """``(weights, history)`` after ``EPOCHS`` epochs on this rank's shard of the shuffled global batches (all of
    each batch in a single process), with ``fit``'s default ``shuffle=True``."""
    model = build()
    data = yinyang(N_SAMPLES, seed=3)
    # ShardedBatches with world_size=1 too: fit's default shuffle (each process's own random order of the batches)
    # is then ignored in the reference as on the ranks.
    batches = distributed.ShardedBatches(
        SpikeBatches(data.times, data.labels, batch_size=GLOBAL_BATCH, shuffle=True, seed=1),
        rank=distributed.rank(), world_size=distributed.world_size())
    callbacks = [FiringMonitor()]
    if distributed.world_size() > 1:
        callbacks.append(distributed.DistributedDataParallel())
    history = model.fit(batches, epochs=EPOCHS, verbose=0, callbacks=callbacks)
    # Keyed without the model's own name: Keras numbers models per process ("sequential_51" after other tests), so
    # the reference trained inside the test process must match the ranks' fresh "sequential".
    weights = {v.path.split("/", 1)[-1]: keras.ops.convert_to_numpy(v.value) for v in model.weights}
    return weights, history.history


def train_validated(split="shard"):
    """``(weights, history)`` of 3 epochs with validation data: each rank given its own shard of it (``"shard"``),
    or rank 0 all of it and the others none (``"rank0"``); all of it in a single process. ``EarlyStopping`` on
    ``val_loss`` after the callback reads the averaged figures (it ends the run after 2 epochs whatever they are)."""
    model = build()
    data, val = yinyang(N_SAMPLES, seed=3), yinyang(21, seed=4)
    r, world = distributed.rank(), distributed.world_size()
    batches = distributed.ShardedBatches(
        SpikeBatches(data.times, data.labels, batch_size=GLOBAL_BATCH, shuffle=True, seed=1), rank=r,
        world_size=world)
    callbacks = [keras.callbacks.EarlyStopping(monitor="val_loss", patience=0, min_delta=-1e9)]  # stops after 1
    if world > 1:
        callbacks.insert(0, distributed.DistributedDataParallel())
    if split == "shard":
        validation = (val.times[r::world], val.labels[r::world])
    else:
        validation = (val.times, val.labels) if r == 0 else None
    history = model.fit(batches, epochs=3, verbose=0, callbacks=callbacks, validation_data=validation)
    weights = {v.path.split("/", 1)[-1]: keras.ops.convert_to_numpy(v.value) for v in model.weights}
    return weights, history.history


def failed_fit_leaves_no_hooks():
    """A data-parallel ``fit`` that raises in a training step (negative spike times): afterwards the model and its
    layers carry no hook, so a later ``fit`` runs no collective."""
    model = build()
    data = yinyang(32, seed=3)
    bad = data.times.copy()
    bad[:, 0, 0] = -1.0
    unchecked = SpikeBatches(data.times, data.labels, batch_size=GLOBAL_BATCH)
    unchecked.times = bad  # SpikeBatches refuses such times when built: swapped in after, so that fit meets them
    batches = distributed.shard(unchecked)
    try:
        model.fit(batches, epochs=1, verbose=0, callbacks=[distributed.DistributedDataParallel()])
    except ValueError as err:
        assert "input_times must be >= 0" in str(err), err
    else:
        raise AssertionError("the fit should have raised")
    hooked = [name for name in ("train_step", "test_step") if name in model.__dict__]
    hooked += ["optimizer.apply"] * ("apply" in model.optimizer.__dict__)
    hooked += [layer.name for layer in model.layers if getattr(layer, "_data_parallel", None) is not None]
    return hooked


def warnings_of_the_global_batch():
    """Warning classes each rank issues when every odd sample has no input spike, so rank 1's share (the odd samples)
    is silent while the global batch fires; then when every sample is silent; then the first case again without the
    revival objective (``silence_penalty=0``: dead neurons are warned about). Judged on each rank's share, rank 1
    warned of a silent layer and readout in the first case, and of dead neurons (all of its share's) in the third."""
    import warnings

    data = yinyang(32, seed=3)
    half = data.times.copy()
    half[1::2] = np.inf
    seen = []
    for times, penalty in ((half, 1.0), (np.full_like(data.times, np.inf), 1.0), (half, 0.0)):
        model = build(silence_penalty=penalty)
        batches = distributed.shard(SpikeBatches(times, data.labels, batch_size=GLOBAL_BATCH))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model.fit(batches, epochs=1, verbose=0, callbacks=[distributed.DistributedDataParallel()])
        seen.append(sorted({w.category.__name__ for w in caught
                            if "Silent" in w.category.__name__ or "Dead" in w.category.__name__}))
    return seen


def main(out):
    world = distributed.initialize()
    rank = distributed.rank()
    weights, history = train()
    np.savez(os.path.join(out, f"rank{rank}.npz"), world_size=world,
             **{f"w:{k}": v for k, v in weights.items()}, **{f"h:{k}": np.asarray(v) for k, v in history.items()})
    weights, history = train_validated("rank0")
    np.savez(os.path.join(out, f"validated_rank0_{rank}.npz"), **{f"h:{k}": np.asarray(v) for k, v in history.items()})
    weights, history = train_validated()
    np.savez(os.path.join(out, f"validated{rank}.npz"), hooks_left=json.dumps(failed_fit_leaves_no_hooks()),
             silent_warnings=json.dumps(warnings_of_the_global_batch()),
             **{f"w:{k}": v for k, v in weights.items()}, **{f"h:{k}": np.asarray(v) for k, v in history.items()})

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from _examples import example

    summary = example("yinyang").main([*EXAMPLE_FLAGS, "--output", os.path.join(out, "yinyang.json")])
    with open(os.path.join(out, f"summary{rank}.json"), "w") as f:
        json.dump({k: v for k, v in summary.items() if k != "stamp"}, f)
    # Another rank than the group's: overlapping slices; refused.
    try:
        distributed.ShardedBatches([(np.zeros((4, 2, 1)), np.zeros(4))], rank=1 - rank, world_size=2)
        refused = ""
    except ValueError as err:
        refused = str(err)
    with open(os.path.join(out, f"refused{rank}.txt"), "w") as f:
        f.write(refused)


if __name__ == "__main__":
    main(sys.argv[1])
