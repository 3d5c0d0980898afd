"""Latency-coded MNIST."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ._core import SpikeDataset, check_choice, check_positive, class_indices, optional_import


MNIST_URL = "https://storage.googleapis.com/tensorflow/tf-keras-datasets/mnist.npz"  # keras' own source


def load_mnist_arrays(split: str, data_dir=None):
    """Raw MNIST images and labels: ``(images [n, 28, 28] uint8, labels [n] int64)``.

    With ``data_dir``, reads ``data_dir/mnist.npz`` (keys ``x_train, y_train, x_test, y_test``, the file that
    ``keras.datasets.mnist`` uses) with NumPy. Without it, calls ``keras.datasets.mnist.load_data()``, which reads
    keras' cache (``~/.keras/datasets/mnist.npz``) and downloads the file there when it is missing.

    A file without the split's arrays, with no images, with images and labels of different lengths, or with labels
    that are not whole class indices ``>= 0`` (a float label is never truncated) is a ValueError naming the file.
    """
    check_choice("split", split, ("train", "test"))
    source = _source(data_dir)
    if data_dir is not None:
        path = Path(data_dir) / "mnist.npz"
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} not found. Put keras' mnist.npz there (from {MNIST_URL}), "
                "or leave data_dir out (data_dir=None; the example scripts: no --data-dir) to download it through "
                "keras.datasets.mnist")
        with np.load(path, allow_pickle=False) as f:
            missing = [k for k in (f"x_{split}", f"y_{split}") if k not in f.files]
            if missing:
                raise ValueError(f"{path}: no array {missing[0]!r} for split {split!r} (the file holds "
                                 f"{sorted(f.files)}; keras' mnist.npz holds x_train, y_train, x_test, y_test)")
            x, y = f[f"x_{split}"], f[f"y_{split}"]
    else:
        keras = optional_import("keras", "keras")
        try:
            (x_train, y_train), (x_test, y_test) = keras.datasets.mnist.load_data()
        except Exception as err:  # keras raises a bare Exception ("URL fetch failure ...") without a network
            if isinstance(err, MemoryError):
                raise
            raise OSError(f"keras.datasets.mnist.load_data() could not load MNIST ({type(err).__name__}: {err}). "
                          f"Without a network, download {MNIST_URL} elsewhere, put it in a folder DIR and pass "
                          "data_dir=DIR (the example scripts: --data-dir DIR)") from err
        x, y = (x_train, y_train) if split == "train" else (x_test, y_test)
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim < 2 or len(x) == 0:
        raise ValueError(f"{source}: x_{split} must hold images [n, 28, 28], at least one, got shape {x.shape}")
    y = class_indices(f"y_{split}", y, source=source, integral_floats=True)
    if len(y) != len(x):
        raise ValueError(f"{source}: x_{split} holds {len(x)} images but y_{split} {len(y)} labels")
    return x, y


def _source(data_dir) -> str:
    """Where the arrays come from, for error messages: ``data_dir/mnist.npz``, or keras' loader."""
    return str(Path(data_dir) / "mnist.npz") if data_dir is not None else "keras.datasets.mnist.load_data()"


def mnist_digest(data_dir) -> str:
    """SHA-256 of the arrays in ``data_dir/mnist.npz`` (each key in sorted order: its name, dtype, shape and bytes),
    which names the data a run used independently of the zip file's timestamps (``examples/mnist.py`` records it)."""
    import hashlib

    digest = hashlib.sha256()
    with np.load(Path(data_dir) / "mnist.npz", allow_pickle=False) as f:
        for key in sorted(f.files):
            array = np.ascontiguousarray(f[key])
            digest.update(f"{key}:{array.dtype.str}:{array.shape};".encode())
            digest.update(array.tobytes())
    return digest.hexdigest()


def latency_mnist(split: str, *, t_max: float = 20.0, threshold: float = 0.01, data_dir=None,
                  dtype=np.float32) -> SpikeDataset:
    """MNIST as a latency code: one spike per pixel, brighter pixels fire earlier.

    A pixel of intensity ``v = pixel / 255`` spikes once at ``t_max * (1 - v)`` (ms): white at 0, dim pixels near
    ``t_max``. Pixels with ``v < threshold`` (black background) stay silent. Channels are the row-major pixels.

    Args:
        split: ``"train"`` (60000 samples) or ``"test"`` (10000).
        t_max: latest spike time in ms (> 0).
        threshold: intensity in ``[0, 1]`` below which a pixel is silent.
        data_dir: folder containing ``mnist.npz``; None loads through ``keras.datasets.mnist``.

    Returns:
        SpikeDataset with ``times [n, 784, 1]`` (dtype, ms, ``+inf`` for silent pixels), ``labels [n]`` int64.
    """
    check_choice("split", split, ("train", "test"))
    check_positive("t_max", t_max)
    check_positive("threshold", threshold, allow_zero=True)
    if threshold > 1:
        raise ValueError(f"threshold must lie in [0, 1], got {threshold!r}")
    from .. import encode

    images, labels = load_mnist_arrays(split, data_dir)
    if labels.max() > 9:
        i = int(np.argmax(labels > 9))
        raise ValueError(f"{_source(data_dir)}: y_{split} must hold digits 0-9 (latency_mnist's 10 classes), got "
                         f"{int(labels[i])} at index {i}")
    # MNIST's pixels are 0-255 (uint8 in the official file); images already scaled to [0, 1] would be divided again
    # and fall below any threshold: a dataset without a spike.
    if images.dtype.kind not in "ui" and images.size and float(np.max(images)) <= 1.0:
        raise ValueError(f"latency_mnist: the images of split {split!r} have dtype {images.dtype} and values up to "
                         f"{float(np.max(images))!r}; the loader expects pixels of 0-255 (as in the official "
                         "mnist.npz, uint8): write them as uint8, or multiply by 255")
    bad = (images < 0) | (images > 255) | ~np.isfinite(images)
    if bad.any():
        raise ValueError(f"latency_mnist: pixel values must lie in [0, 255], got {images[bad].ravel()[0]!r}")
    v = images.reshape(len(images), -1).astype(np.float64) / 255.0
    # encode.latency silences x <= cut; the largest float below the threshold silences exactly v < threshold.
    cut = None if threshold == 0 else float(np.nextafter(threshold, -np.inf))
    times = encode.latency(v, t_max=t_max, cut=cut, dtype=dtype)
    return SpikeDataset(times, labels, tuple(str(d) for d in range(10)), "ms")
