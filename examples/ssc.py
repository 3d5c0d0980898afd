"""Spiking Speech Commands (SSC, 35 classes) with exact spike times: two hidden LIFLayers of 512 neurons with
trainable per-synapse delays + LIReadout (the architecture of the Bullet Trains paper, 77.79% test accuracy).

    python examples/ssc.py --data-dir DIR                      # torch backend (default); a GPU is needed in practice
    python examples/ssc.py --data-dir DIR --epochs 1 --limit 256 --hidden 64   # quick look on a CPU

Data: ``DIR/ssc_train.h5``, ``DIR/ssc_valid.h5`` and ``DIR/ssc_test.h5`` (or their ``.h5.gz`` / ``.h5.zip``
archives), the official files from https://zenkelab.org/datasets/. Download them with
``python -c "from spikescan.datasets import download_ssc; download_ssc('DIR')"`` or with ``tonic.datasets.SSC``
(then pass its ``SSC`` folder). A missing file stops the script with that message.

Model, flags and input options are those of ``examples/shd.py`` (``--n-channels`` 140 pooled bands, ``--t-max``
1000 ms, optional ``--max-input-spikes``, delays up to ``--max-delay`` 25 ms, ``--tau-mem`` 20 ms and ``--tau-syn``
5 ms); see its docstring. Training uses
the 75466 training samples with the 9981 validation samples reported after every epoch; the 20382 test samples
are evaluated once at the end. JSON summary with ``--output``.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("KERAS_BACKEND", "torch")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import shd  # noqa: E402  (examples/shd.py)


def main(argv=None):
    return shd.run("ssc", argv, __doc__)


if __name__ == "__main__":
    main()
