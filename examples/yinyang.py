"""Yin-Yang with exact spike times: LIFLayer (hidden) + LIReadout, trained by ``model.fit``.

    python examples/yinyang.py                     # torch backend (default), CPU
    KERAS_BACKEND=jax python examples/yinyang.py   # jax backend

Data: ``spikescan.datasets.yinyang`` with the published splits (train 5000 / validation 1000 / test 1000 samples,
seeds 42 / 41 / 40) and latency code: four input spikes at ``30 ms * (x, y, 1-x, 1-y)`` and a bias spike at 0.
Writes a JSON summary (dataset, test_accuracy, epochs, seconds, device) with ``--output``. ``--plot DIR`` also
writes figures after training (needs matplotlib): the decision regions over the disc with the test points
(``decision_regions.png``), hidden-layer rasters of one test sample per class (``hidden_raster.png``) and exact
voltage traces of a few hidden neurons for one sample (``hidden_trace.png``, ``spikescan.lif_trace``).
``--backup-dir DIR`` (``--backup-every N`` batches) backs up the training state; the same command resumes a run that
was killed (see ``examples/_common.py``); ``resumed_from_epoch`` in the summary says from which epoch.

Data-parallel (torch backend, see ``spikescan_keras.distributed``): ``torchrun --nproc_per_node=N
examples/yinyang.py ...`` trains one model on N processes (gloo on CPU, NCCL with one GPU each), each on its slice of
every shuffled global batch of ``--batch-size`` samples (``spikescan.datasets.SpikeBatches``); rank 0 alone prints
and writes, and the summary records ``world_size``.
"""

from __future__ import annotations

import os
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "torch")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import keras  # noqa: E402
import numpy as np  # noqa: E402

import _common  # noqa: E402

import spikescan  # noqa: E402
from spikescan.datasets import SpikeBatches, yinyang  # noqa: E402
from spikescan.datasets.yinyang import CLASS_NAMES  # noqa: E402
from spikescan_keras import FirstSpikeReadout, LIFLayer, LIReadout, distributed  # noqa: E402

# Time constants in ms. Inputs span [0, 30] ms; hidden spikes follow within a few tau_syn, so the readout window
# t_max covers them. tau_mem == 2 tau_syn allows the closed-form spike-time solver (no Newton iterations).
TAU_MEM, TAU_SYN, T_MAX = 20.0, 10.0, 60.0
SOLVER, READOUT = "analytic", "integral"


def build_model(hidden, max_spikes, learning_rate, decay_steps, *, tau_mem=TAU_MEM, tau_syn=TAU_SYN, t_max=T_MAX,
                solver=SOLVER, readout=READOUT, first_spike=False, weight_decay=0.0):
    # first_spike: spiking output neurons read out by their first spike times (FirstSpikeReadout) instead of the
    # leaky-integrator readout.
    output = (FirstSpikeReadout(3, tau_mem=tau_mem, tau_syn=tau_syn, t_max=t_max, solver=solver, name="readout")
              if first_spike else
              LIReadout(3, tau_mem=tau_mem, tau_syn=tau_syn, readout=readout, t_max=t_max, name="readout"))
    model = keras.Sequential([
        keras.Input(shape=(5, 1)),
        LIFLayer(hidden, tau_mem=tau_mem, tau_syn=tau_syn, max_spikes=max_spikes, solver=solver, name="hidden"),
        output,
    ])
    # Cosine decay: a large step finds the rough class boundaries within a few epochs, the small ones at the end
    # settle the noisy accuracy that a constant rate leaves.
    model.compile(optimizer=_common.optimizer(learning_rate, decay_steps, weight_decay, alpha=0.02),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    return model


def encode_points(xy, dtype=np.float32):
    """Points ``[n, 2]`` in ``[0, 1]^2`` -> spike times ``[n, 5, 1]`` in ms, exactly as ``yinyang(...)`` encodes its
    samples (latency code, its defaults): ``30 * (x, y, 1-x, 1-y)`` and a bias spike at 0."""
    xy = np.asarray(xy, np.float64)
    values = np.concatenate([xy, 1.0 - xy], axis=1)
    times = np.concatenate([values * 30.0, np.zeros((len(xy), 1))], axis=1)
    return times[:, :, None].astype(dtype)


def hidden_weights(model):
    """The hidden layer's effective kernel (``kernel * kernel_scale``: its voltage unit and calibration factor), its
    delays or None, and its neuron parameters, as float64 NumPy for ``spikescan.lif_trace``."""
    layer = model.get_layer("hidden")
    kernel = keras.ops.convert_to_numpy(layer.kernel.value).astype(np.float64)
    scale = float(keras.ops.convert_to_numpy(layer.kernel_scale.value))
    delays = layer.delay_values().astype(np.float64) if layer.use_delays else None
    return dict(weights=kernel * scale, delays=delays, tau_mem=layer.tau_mem, tau_syn=layer.tau_syn,
                threshold=layer.threshold)


def write_plots(model, test, directory, *, grid=100):
    """The three PNG figures of ``--plot`` (module docstring) in ``directory``; returns their paths."""
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure

    import spikescan.plot

    os.makedirs(directory, exist_ok=True)
    colors = ["tab:blue", "tab:orange", "tab:green"]
    paths = []

    # Decision regions: the model's class on a grid x grid lattice of the unit square, shown on the disc where the
    # data live, with the test points on top (misclassified ones crossed).
    u = (np.arange(grid) + 0.5) / grid
    gx, gy = np.meshgrid(u, u)
    xy = np.stack([gx.ravel(), gy.ravel()], axis=1)
    predicted = np.argmax(model.predict(encode_points(xy), batch_size=1000, verbose=0), axis=1).astype(float)
    predicted[np.hypot(xy[:, 0] - 0.5, xy[:, 1] - 0.5) > 0.5] = np.nan
    test_xy = test.meta["values"][:, :2]
    test_pred = np.argmax(model.predict(test.times, batch_size=1000, verbose=0), axis=1)
    fig = Figure(figsize=(5.5, 5))
    ax = fig.subplots()
    ax.imshow(predicted.reshape(grid, grid), origin="lower", extent=(0, 1, 0, 1), cmap=ListedColormap(colors),
              vmin=-0.5, vmax=2.5, alpha=0.35, interpolation="nearest")
    for k, name in enumerate(CLASS_NAMES):
        sel = test.labels == k
        ax.scatter(*test_xy[sel].T, s=10, color=colors[k], edgecolors="k", linewidths=0.3, label=name)
    wrong = test_pred != test.labels
    ax.scatter(*test_xy[wrong].T, s=25, marker="x", color="k", linewidths=0.8, label="misclassified")
    ax.set(xlim=(0, 1), ylim=(0, 1), aspect="equal", xlabel="x", ylabel="y",
           title=f"Decision regions, test accuracy {np.mean(~wrong):.1%}")
    ax.legend(loc="upper right", fontsize="small")
    paths.append(os.path.join(directory, "decision_regions.png"))
    fig.savefig(paths[-1], dpi=120, bbox_inches="tight")

    # Hidden spikes of one test sample per class (exact, every spike), and the voltage of a few hidden neurons.
    picks = [int(np.flatnonzero(test.labels == k)[0]) for k in range(len(CLASS_NAMES)) if (test.labels == k).any()]
    params = hidden_weights(model)
    inputs = test.times[picks].astype(np.float64)
    t = np.linspace(0.0, T_MAX, 3001)
    res = spikescan.lif_trace(inputs, t=t, **params)
    fig = Figure(figsize=(4 * len(picks), 4))
    for k, ax in enumerate(np.atleast_1d(fig.subplots(1, len(picks), sharey=True))):
        spikescan.plot.raster(res.spike_times, sample=k, ax=ax, time_unit="ms")
        ax.set(xlim=(0, T_MAX),
               title=f"{CLASS_NAMES[test.labels[picks[k]]]} sample (predicted {CLASS_NAMES[test_pred[picks[k]]]})")
    paths.append(os.path.join(directory, "hidden_raster.png"))
    fig.savefig(paths[-1], dpi=120, bbox_inches="tight")

    # Voltage: up to 4 firing neurons of the first picked sample (earliest first) and one silent one if any. The grid
    # includes each spike time and the float just before it, so every line reaches the threshold at its spikes.
    spikes = res.spike_times[0]
    first = spikes[:, 0]
    firing = np.flatnonzero(np.isfinite(first))
    neurons = list(firing[np.argsort(first[firing])][:4]) + list(np.flatnonzero(~np.isfinite(first))[:1])
    s = spikes[np.isfinite(spikes)]
    t_fine = np.unique(np.concatenate([t, s, np.nextafter(s, -np.inf)]))
    fine = spikescan.lif_trace(inputs[:1], t=t_fine, **params)
    fig = Figure(figsize=(8, 4))
    ax = fig.subplots()
    spikescan.plot.trace(t_fine, fine.voltage[0], neurons=neurons, threshold=params["threshold"],
                         spike_times=fine.spike_times[0], ax=ax, time_unit="ms")
    ax.set(title=f"Hidden voltages, {CLASS_NAMES[test.labels[picks[0]]]} test sample")
    paths.append(os.path.join(directory, "hidden_trace.png"))
    fig.savefig(paths[-1], dpi=120, bbox_inches="tight")
    return paths


def main(argv=None):
    parser = _common.parser(__doc__, epochs=40, batch_size=32, hidden=120, learning_rate=3e-3, max_spikes=4,
                            data_dir_help="unused: Yin-Yang is generated, not downloaded",
                            plot_help="after training, write PNG figures (decision regions, hidden raster, voltage "
                                      "traces) to DIR; needs matplotlib")
    parser.add_argument("--first-spike", action="store_true",
                        help="classify by the first output spike (FirstSpikeReadout: three LIF output neurons, the "
                             "first to fire wins) instead of the leaky-integrator readout")
    args = parser.parse_args(argv)

    world_size = _common.initialize_distributed(args)
    keras.utils.set_random_seed(args.seed)
    train, val, test = (yinyang(n if args.limit is None else min(n, args.limit), seed=s)
                        for n, s in ((5000, 42), (1000, 41), (1000, 40)))
    # Batches shuffled by seed and epoch alone, which a resumed run (--backup-dir) restores (keras' own shuffle of
    # arrays draws from the global random state, which it does not); with several processes the same global batches
    # on every rank, each rank training on its slice of them.
    batches = SpikeBatches(train.times, train.labels, batch_size=args.batch_size, shuffle=True, seed=args.seed)
    data = dict(x=distributed.shard(batches), validation_batch_size=args.batch_size, shuffle=False)
    steps = args.epochs * len(data["x"])
    model = build_model(args.hidden, args.max_spikes, args.learning_rate, steps, first_spike=args.first_spike,
                        weight_decay=args.weight_decay)
    callbacks, backup = _common.fit_callbacks(args, batches=batches)
    start = time.perf_counter()
    history = model.fit(**data, epochs=args.epochs, validation_data=(val.times, val.labels),
                        verbose=_common.verbosity(args), callbacks=callbacks)
    seconds = time.perf_counter() - start
    test_loss, test_accuracy = model.evaluate(test.times, test.labels, batch_size=256, verbose=0)
    summary = {"dataset": "yinyang", "test_accuracy": float(test_accuracy), "test_loss": float(test_loss),
               "epochs": args.epochs,
               "output": "first_spike" if args.first_spike else "li_readout",
               "seconds": round(seconds, 1), "device": _common.device_name(), "backend": keras.backend.backend(),
               "world_size": world_size, "deterministic": spikescan.deterministic(),
               "capped_spikes": int(keras.ops.convert_to_numpy(model.get_layer("hidden").capped_spikes.value)),
               "calibration": _common.kernel_scales(model),
               "firing": {key: round(v[-1], 4) for key, v in history.history.items() if "/" in key},
               "resumed_from_epoch": None if backup is None else backup.resumed_from_epoch,
               "dropped_last_batch_samples": int(getattr(data["x"], "dropped_samples", 0)),
               "weight_decay": args.weight_decay, "args": _common.command_line(args)}
    if args.plot is not None and _common.is_chief():
        for path in write_plots(model, test, args.plot):
            print(f"wrote {path}", file=sys.stderr)
    if _common.is_chief():
        _common.emit(summary, args.output)
    _common.remove_backup(args)
    return summary


if __name__ == "__main__":
    main()
