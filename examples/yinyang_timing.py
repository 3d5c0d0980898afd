"""Timing-coded Yin-Yang: the class lives in sub-millisecond spike-time differences; exact times keep it, time bins
lose it.

    python examples/yinyang_timing.py                          # exact times vs 1 ms bins, torch backend, CPU
    python examples/yinyang_timing.py --bin-widths 0.05 0.25 1.0

Data: ``spikescan.datasets.yinyang(variant="timing")``: every sample has a random onset ``o ~ U[0, 20] ms``, a
reference spike at ``o`` and its four inputs ``v`` in ``[0, 1]`` at ``o + v * delta`` with ``delta = 0.5 ms``.
Absolute times carry no class information; only offsets below 0.5 ms do.

Model: the network of ``examples/yinyang.py`` with every time constant scaled by ``delta / 30 ms`` (the latency
code's 30 ms window becomes 0.5 ms). The readout must not depend on the onset. ``--readout integral`` (default)
integrates the readout potential over a window that holds every response, which makes it a weighted sum of hidden
spike counts: the hidden neurons turn sub-millisecond coincidences into counts. ``--readout max`` (the peak of the
readout potential) also sees the hidden spike times; in our runs it trained no better and was slower.

The same model is trained once on the exact times and once per ``--bin-widths`` entry on the times quantised by
``spikescan.datasets.bin_times`` (left edges of a grid with that spacing, the input a time-stepped simulator with
that step sees; spikes in one bin become simultaneous). The JSON summary (``--output``) has the exact run's
dataset, test_accuracy, epochs, seconds and device at top level and one entry per run under ``runs``.
``--backup-dir DIR`` backs up each run in its own subfolder (``DIR/exact``, ``DIR/bins_1ms``, ...); the same command
resumes an interrupted comparison, and a run that had finished is restored and only evaluated again (its
``seconds`` then counts only that).
"""

from __future__ import annotations

import json
import os
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "torch")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import keras  # noqa: E402

import _common  # noqa: E402
import yinyang as latency  # noqa: E402  (examples/yinyang.py)
import spikescan  # noqa: E402
from spikescan.datasets import SpikeBatches, bin_times, yinyang  # noqa: E402

DELTA, ONSET_MAX = 0.5, 20.0
SCALE = DELTA / 30.0  # latency code window (30 ms) -> timing code window (delta)
TAU_MEM, TAU_SYN = latency.TAU_MEM * SCALE, latency.TAU_SYN * SCALE
T_MAX = ONSET_MAX + DELTA + 10 * TAU_MEM  # the latest onset plus the response window


def name(bin_width):
    """A bin width as the runs' labels and backup folders write it: ``1`` for 1.0, distinct for distinct widths."""
    return f"{bin_width:.15g}"


def train_one(train, val, test, args, bin_width):
    """Train a fresh model on ``train`` (times binned to ``bin_width`` unless None); returns its run summary."""
    def code(ds):
        return ds.times if bin_width is None else bin_times(ds.times, bin_width)

    keras.utils.set_random_seed(args.seed)
    # Shuffled by seed and epoch alone, which a resumed run (--backup-dir) restores; fit's shuffle of arrays draws
    # from the global random state, which it does not.
    batches = SpikeBatches(code(train), train.labels, batch_size=args.batch_size, shuffle=True, seed=args.seed)
    steps = args.epochs * len(batches)
    model = latency.build_model(args.hidden, args.max_spikes, args.learning_rate, steps, tau_mem=TAU_MEM,
                                tau_syn=TAU_SYN, t_max=T_MAX, readout=args.readout, weight_decay=args.weight_decay)
    subdir = "exact" if bin_width is None else f"bins_{name(bin_width)}ms"
    callbacks, backup = _common.fit_callbacks(args, batches=batches, subdir=subdir)
    start = time.perf_counter()
    model.fit(batches, epochs=args.epochs, shuffle=False, validation_data=(code(val), val.labels),
              validation_batch_size=args.batch_size, verbose=args.verbose, callbacks=callbacks)
    seconds = time.perf_counter() - start
    loss, accuracy = model.evaluate(code(test), test.labels, batch_size=256, verbose=0)
    capped = int(keras.ops.convert_to_numpy(model.get_layer("hidden").capped_spikes.value))
    run = {"input": "exact" if bin_width is None else f"bins of {name(bin_width)} ms", "bin_width_ms": bin_width,
           "test_accuracy": float(accuracy), "test_loss": float(loss), "seconds": round(seconds, 1),
           "capped_spikes": capped,
           "resumed_from_epoch": None if backup is None else backup.resumed_from_epoch}
    print(json.dumps(run), flush=True)
    return run


def main(argv=None):
    parser = _common.parser(__doc__, epochs=30, batch_size=32, hidden=120, learning_rate=3e-3, max_spikes=4,
                            data_dir_help="unused: Yin-Yang is generated, not downloaded")
    parser.add_argument("--bin-widths", type=_common._positive_float, nargs="*", default=[1.0],
                        help="time bins (ms) to compare with exact times (default: 1 ms, twice delta)")
    parser.add_argument("--readout", choices=("integral", "max"), default="integral")
    args = parser.parse_args(argv)
    names = [name(width) for width in args.bin_widths]
    if len(set(names)) < len(names):  # the same run twice, and one backup folder (--backup-dir) for both
        parser.error(f"--bin-widths names a width twice: {' '.join(names)}")
    _common.apply_deterministic(args)

    splits = ((5000, 42), (1000, 41), (1000, 40))
    train, val, test = (yinyang(n if args.limit is None else min(n, args.limit), seed=s, variant="timing",
                                delta=DELTA, onset_max=ONSET_MAX) for n, s in splits)
    runs = [train_one(train, val, test, args, width) for width in [None, *args.bin_widths]]
    summary = {"dataset": "yinyang_timing", "test_accuracy": runs[0]["test_accuracy"], "epochs": args.epochs,
               "seconds": round(sum(r["seconds"] for r in runs), 1), "device": _common.device_name(),
               "backend": keras.backend.backend(), "delta_ms": DELTA, "onset_max_ms": ONSET_MAX,
               "tau_mem_ms": TAU_MEM, "tau_syn_ms": TAU_SYN, "deterministic": spikescan.deterministic(), "runs": runs,
               "args": _common.command_line(args)}
    _common.emit(summary, args.output)
    _common.remove_backup(args)
    return summary


if __name__ == "__main__":
    main()
