"""Spiking Heidelberg Digits (SHD, 20 classes) with exact spike times: two hidden LIFLayers of 512 neurons with
trainable per-synapse delays + LIReadout (the architecture of the Bullet Trains paper, 94.96% test accuracy).

    python examples/shd.py --data-dir DIR                      # torch backend (default); a GPU is advised
    python examples/shd.py --data-dir DIR --epochs 1 --limit 256 --hidden 64   # quick look on a CPU
    python examples/shd.py --data-dir DIR --recurrent          # one recurrent hidden layer instead of two

``--recurrent``: one hidden ``LIFLayer(recurrent=True)`` (input delays as above, plus recurrent connections within
the layer, exact spike times and gradients: README "Recurrent layers"), the architecture of the strongest
exact-gradient SHD results, in place of the two feed-forward hidden layers.

Data: ``DIR/shd_train.h5`` and ``DIR/shd_test.h5`` (or the ``.h5.gz`` / ``.h5.zip`` archives), the official files
from https://zenkelab.org/datasets/. Download them with
``python -c "from spikescan.datasets import download_shd; download_shd('DIR')"`` or with ``tonic.datasets.SHD``
(then pass its ``SHD`` folder). A missing file stops the script with that message.

Input options (``spikescan.datasets.shd``):
- ``--n-channels`` (default 140): pool the 700 cochlear channels into this many bands of consecutive channels
  (5 per band, as in the DCLS work); a band carries the merged spike trains of its channels, which is the same
  input current as summing them. Fewer weights and delays; the number of input events is unchanged.
- ``--t-max`` (default 1000 ms): drop input spikes after this time (almost all SHD activity lies before 1 s).
- ``--max-input-spikes`` (default: no cap): keep at most this many spikes per (pooled) channel.
Every input spike removed by ``--t-max`` or ``--max-input-spikes`` is counted in the summary's
``dropped_input_spikes``; hidden spikes beyond ``--max-spikes`` per neuron are counted in ``capped_spikes``.

Neuron options: ``--tau-mem`` (default 20 ms) and ``--tau-syn`` (default 5 ms) for every layer. A hidden layer
remembers its input for about ``tau_mem + max_delay`` (45 ms with the defaults), which suits SHD's phonetic
structure; for a task of your own whose classes differ by events further apart than that, with silence in
between, raise ``--tau-mem`` or ``--max-delay`` (on a synthetic task whose classes differed only in the order of
four bursts 100 ms apart, ``--tau-mem 100`` took the default model from chance to about 80%, in a probe whose files
were not kept). The number of classes is the number of class names in the files (``extra/keys``; 20 in SHD, 35 in
SSC), so files of your own in the same format train with their own classes; a label outside them, or files that
name different classes, stops the script.

The readout integrates its membrane potential over ``[0, t_max + 2 max_delay + 2 tau_mem]``, long enough for spikes
delayed twice by the longest delay. SHD has no validation split: training uses the 8156 training samples and the
2264 test samples are evaluated once at the end. JSON summary with ``--output``.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("KERAS_BACKEND", "torch")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import keras  # noqa: E402
import numpy as np  # noqa: E402

import _common  # noqa: E402
from spikescan.datasets import shd, ssc  # noqa: E402
from spikescan.datasets.heidelberg import hdf5_path  # noqa: E402
from spikescan_keras import LIFLayer, LIReadout  # noqa: E402

# Time constants in ms: tau_syn of a few ms keeps the sub-10-ms structure of the cochlear spike trains; tau_mem
# integrates over a phoneme-scale window. Delays up to MAX_DELAY let a neuron align inputs from different times.
TAU_MEM, TAU_SYN, MAX_DELAY = 20.0, 5.0, 25.0
READOUT = "integral"
DATASETS = {"shd": (shd, 20, ("train", "test")), "ssc": (ssc, 35, ("train", "valid", "test"))}


def build_model(n_channels, n_classes, hidden, max_spikes, t_max, max_delay, recurrent=False, tau_mem=TAU_MEM,
                tau_syn=TAU_SYN):
    lif = dict(tau_mem=tau_mem, tau_syn=tau_syn, max_spikes=max_spikes, delays=True, max_delay=max_delay)
    hidden_layers = ([LIFLayer(hidden, name="hidden1", recurrent=True, **lif)] if recurrent else
                     [LIFLayer(hidden, name="hidden1", **lif), LIFLayer(hidden, name="hidden2", **lif)])
    return keras.Sequential([
        keras.Input(shape=(n_channels, None)),
        *hidden_layers,
        LIReadout(n_classes, tau_mem=tau_mem, tau_syn=tau_syn, readout=READOUT,
                  t_max=t_max + 2 * max_delay + 2 * tau_mem, name="readout"),
    ])


def load_split(name, split, args):
    """One split of SHD or SSC with the input options of ``args``; ``args.limit`` reads only the first samples."""
    loader = DATASETS[name][0]
    indices = None
    if args.limit is not None:
        try:
            import h5py
        except ImportError as err:
            raise SystemExit(f"error: h5py is required to read {name.upper()}: pip install 'spikescan[data]'") from err
        path = _common.load(hdf5_path, name, split, args.data_dir)
        try:
            with h5py.File(path, "r") as f:
                indices = np.arange(min(args.limit, len(f["labels"])))
        except OSError as err:  # h5py's own message names no file
            raise SystemExit(f"error: {path} is not a readable HDF5 file ({err}); download it again") from err
    return _common.load(loader, split, data_dir=args.data_dir, t_max=args.t_max, n_channels=args.n_channels,
                        max_spikes_per_channel=args.max_input_spikes, indices=indices)


def class_count(name, data):
    """The number of classes: the class names of the files (``extra/keys``), else the dataset's own; a label outside
    them stops the script."""
    named = {split: tuple(d.class_names) for split, d in data.items() if len(d.class_names)}
    names = next(iter(named.values()), ())
    if any(other != names for other in named.values()):
        raise SystemExit(f"error: the {name} files name different classes (extra/keys): "
                         + "; ".join(f"{name}_{split}: {len(n)} classes" for split, n in named.items()))
    n_classes = len(names) if names else DATASETS[name][1]
    for split, d in data.items():
        bad = (d.labels < 0) | (d.labels >= n_classes)
        if bad.any():
            where = "the class names in extra/keys" if names else f"{name.upper()}'s classes"
            raise SystemExit(f"error: {name}_{split} has label {int(d.labels[bad][0])}, outside the {n_classes} "
                             f"classes of {where} (labels 0-{n_classes - 1})")
    return n_classes


def run(name, argv, doc):
    """Parse ``argv``, train and evaluate on SHD (``name="shd"``) or SSC (``"ssc"``); returns the summary dict."""
    splits = DATASETS[name][2]
    parser = _common.parser(doc, epochs=30, batch_size=64, hidden=512, learning_rate=2e-3, max_spikes=32,
                            plot_help=_common.PLOT_HELP)
    positive_int, positive_float = _common._positive_int, _common._positive_float  # checked before the data load
    parser.add_argument("--n-channels", type=positive_int, default=140,
                        help="pool the 700 channels into this many (1-700)")
    parser.add_argument("--t-max", type=positive_float, default=1000.0, help="drop input spikes after this time (ms)")
    parser.add_argument("--max-input-spikes", type=positive_int, default=None, help="cap on spikes per input channel")
    parser.add_argument("--max-delay", type=positive_float, default=MAX_DELAY, help="upper bound of the delays (ms)")
    _common.add_time_constants(parser, TAU_MEM, TAU_SYN)
    parser.add_argument("--recurrent", action="store_true",
                        help="one recurrent hidden layer instead of two feed-forward ones")
    args = parser.parse_args(argv)
    if args.data_dir is None:
        parser.error(f"--data-dir is required: the folder with {', '.join(f'{name}_{s}.h5' for s in splits)} "
                     f"(download: python -c \"from spikescan.datasets import download_{name}; "
                     f"download_{name}('DIR')\")")
    _common.initialize_distributed(args)

    keras.utils.set_random_seed(args.seed)
    data = {split: load_split(name, split, args) for split in splits}
    train, test, val = data["train"], data["test"], data.get("valid")
    n_classes = class_count(name, data)
    model = build_model(train.n_channels, n_classes, args.hidden, args.max_spikes, args.t_max, args.max_delay,
                        recurrent=args.recurrent, tau_mem=args.tau_mem, tau_syn=args.tau_syn)
    result = _common.train(model, train, test, args, val_set=val)
    return _common.summary(name, args, result, dropped_input_spikes=sum(d.dropped_spikes for d in data.values()),
                           n_train=len(train), n_test=len(test), n_channels=args.n_channels, t_max=args.t_max,
                           max_input_spikes=args.max_input_spikes, max_delay=args.max_delay,
                           recurrent=args.recurrent, n_classes=n_classes, tau_mem=args.tau_mem,
                           tau_syn=args.tau_syn)


def main(argv=None):
    return run("shd", argv, __doc__)


if __name__ == "__main__":
    main()
