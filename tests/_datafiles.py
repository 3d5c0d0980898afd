"""Writers of the official on-disk dataset formats, for tests that must not touch the network: keras'
``mnist.npz`` and the SHD / SSC HDF5 files (used by test_datasets.py and test_examples.py)."""

import numpy as np
import pytest


def write_mnist(path, n_train=5, n_test=3):
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", n_train), ("test", n_test)):
        x = rng.integers(0, 256, size=(n, 28, 28)).astype(np.uint8)
        x[:, :5] = 0
        arrays[f"x_{split}"], arrays[f"y_{split}"] = x, rng.integers(0, 10, size=n).astype(np.uint8)
    np.savez(path / "mnist.npz", **arrays)
    return arrays


SAMPLES = [  # (times in s, units, label)
    ([0.0005, 0.001, 0.0012, 0.002, 0.5, 0.9], [3, 3, 699, 3, 0, 3], 1),
    ([], [], 0),
    ([0.25, 0.1, 0.75], [10, 10, 351], 2),  # unsorted in time within a unit
]


def write_heidelberg(path, samples=SAMPLES, n_classes=20):
    h5py = pytest.importorskip("h5py")
    with h5py.File(path, "w") as f:
        spikes = f.create_group("spikes")
        times = spikes.create_dataset("times", (len(samples),), dtype=h5py.vlen_dtype(np.dtype("float16")))
        units = spikes.create_dataset("units", (len(samples),), dtype=h5py.vlen_dtype(np.dtype("uint16")))
        for i, (t, u, _) in enumerate(samples):
            times[i] = np.asarray(t, dtype=np.float16)
            units[i] = np.asarray(u, dtype=np.uint16)
        f.create_dataset("labels", data=np.array([s[2] for s in samples], dtype=np.uint16))
        extra = f.create_group("extra")
        extra.create_dataset("keys", data=np.array([f"class-{k}".encode() for k in range(n_classes)]))
        extra.create_dataset("speaker", data=np.arange(len(samples), dtype=np.uint16) + 4)
        meta = extra.create_group("meta_info")
        meta.create_dataset("gender", data=np.array([b"female"] * len(samples)))
        meta.create_dataset("age", data=np.full(len(samples), 30, dtype=np.uint16))
        meta.create_dataset("body_height", data=np.full(len(samples), 170, dtype=np.uint16))
