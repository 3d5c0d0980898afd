"""Worker of tests/test_distributed.py for the jax backend: one process with two CPU devices
(``XLA_FLAGS=--xla_force_host_platform_device_count=2``, set here before jax is imported).

Trains the same small Yin-Yang model twice from the same weights on the same batches: on one device, then under
``keras.distribution.DataParallel`` over both devices, recording the batch size every host call of ``LIFOp`` and
``CalibrateOp`` received. Prints one JSON line: the largest weight difference per variable, both runs' histories and
the recorded batch sizes.

    python tests/_distributed_jax.py
"""

from __future__ import annotations

import json
import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2").strip()
os.environ["KERAS_BACKEND"] = "jax"

import jax  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402

from spikescan.datasets import yinyang  # noqa: E402
from spikescan_keras import LIFLayer, LIReadout, _host  # noqa: E402
from spikescan_keras._bridge import jax as jax_bridge  # noqa: E402

N_SAMPLES, BATCH, EPOCHS = 48, 16, 2
seen = {"LIFOp": [], "CalibrateOp": []}


def record(op):
    forward = op.forward

    def recorded(spec, inputs):
        seen[op.__name__].append(int(inputs[0].shape[0]))
        return forward(spec, inputs)

    op.forward = staticmethod(recorded)


def build():
    model = keras.Sequential([
        keras.Input(shape=(5, 1)),
        LIFLayer(12, tau_mem=20.0, tau_syn=10.0, max_spikes=2, solver="analytic", name="hidden",
                 kernel_initializer=keras.initializers.RandomNormal(0.05, 0.1, seed=1)),
        LIReadout(3, tau_mem=20.0, tau_syn=10.0, t_max=60.0, name="readout",
                  kernel_initializer=keras.initializers.RandomNormal(0.0, 0.1, seed=2)),
    ])
    model.compile(optimizer=keras.optimizers.Adam(1e-2),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def train(data):
    model = build()
    history = model.fit(data.times, data.labels, batch_size=BATCH, epochs=EPOCHS, shuffle=False, verbose=0)
    # An eager call (outside fit, predict and jit) on a batch the devices divide: the same logits as predict (their
    # host calls are not the training's: left out of `seen`).
    counted = {k: len(v) for k, v in seen.items()}
    eager = float(np.max(np.abs(np.asarray(model(data.times[:BATCH], training=False))
                                - model.predict(data.times[:BATCH], verbose=0))))
    # A second eager call of the same shape reuses the first's compilation: no layer traces its shard_map again.
    sharded, traces = jax_bridge._sharded, []
    jax_bridge._sharded = lambda *args: traces.append(args[0].__name__) or sharded(*args)
    try:
        model(data.times[BATCH:2 * BATCH], training=False)
    finally:
        jax_bridge._sharded = sharded
    eager_traces = len(traces)
    for k, n in counted.items():
        del seen[k][n:]
    return {v.path.split("/", 1)[1]: np.asarray(keras.ops.convert_to_numpy(v.value)) for v in model.weights}, \
        dict(history.history, eager_vs_predict=eager, eager_traces=eager_traces)


def main():
    assert jax.device_count() == 2, jax.devices()
    record(_host.LIFOp)
    record(_host.CalibrateOp)
    data = yinyang(N_SAMPLES, seed=3)
    single, single_history = train(data)
    single_seen = {k: list(v) for k, v in seen.items()}
    for v in seen.values():
        v.clear()
    keras.distribution.set_distribution(keras.distribution.DataParallel(devices=jax.devices()))
    parallel, parallel_history = train(data)
    diff = {k: float(np.max(np.abs(single[k].astype(np.float64) - parallel[k]))) for k in single}
    print(json.dumps({"diff": diff, "kernel_scale": float(single["hidden/kernel_scale"]),
                      "single_history": single_history, "parallel_history": parallel_history,
                      "single_seen": single_seen, "parallel_seen": seen}))


if __name__ == "__main__":
    main()
