"""spikescan.plot (headless, Agg) and ``examples/yinyang.py --plot``.

The module is skipped without matplotlib. The example test needs a Keras backend and runs only when KERAS_BACKEND
is set (this file also runs in the backend-free pass of tools/test.sh), e.g.
``KERAS_BACKEND=torch python -m pytest tests/test_plot.py``.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import spikescan as ss  # noqa: E402
import spikescan.plot as splot  # noqa: E402

from _examples import example  # noqa: E402


@pytest.fixture
def ax():
    fig, ax = plt.subplots()
    yield ax
    plt.close(fig)


def _spikes():
    times = np.full((2, 5, 3), np.inf)
    times[0, 0, :2] = [1.0, 4.0]
    times[0, 3, :3] = [0.5, 2.0, 7.0]
    times[1, 1, 0] = 3.0
    return times


def test_raster_one_point_per_finite_spike(ax):
    times = _spikes()
    out = splot.raster(times, sample=0, ax=ax)
    assert out is ax
    points = ax.collections[-1].get_offsets()
    assert len(points) == np.isfinite(times[0]).sum() == 5
    assert sorted(map(tuple, np.asarray(points))) == sorted([(1.0, 0), (4.0, 0), (0.5, 3), (2.0, 3), (7.0, 3)])
    splot.raster(times, sample=1, ax=ax, color="r")
    assert len(ax.collections) == 2 and len(ax.collections[-1].get_offsets()) == 1
    # 2-D input: one sample's [neurons, max_spikes].
    assert ax.get_xlabel() == "time"
    splot.raster(times[0], ax=ax, time_unit="ms")
    assert len(ax.collections[-1].get_offsets()) == 5
    assert ax.get_xlabel() == "time (ms)" and ax.get_ylabel() == "neuron"
    drawn = len(ax.collections)
    with pytest.raises(TypeError, match="time_unit must be a string such as 'ms', or None, got 1000"):
        splot.raster(times[0], ax=ax, time_unit=1000)
    assert len(ax.collections) == drawn  # refused before drawing


def test_raster_current_axes_and_errors():
    fig = plt.figure()
    try:
        assert splot.raster(_spikes()) is plt.gca()
        with pytest.raises(ValueError, match="times must have shape"):
            splot.raster(np.zeros(3))
        with pytest.raises(IndexError, match="sample 2"):
            splot.raster(_spikes(), sample=2)
        with pytest.raises(ValueError, match="sample=1 picks a sample"):
            splot.raster(_spikes()[0], sample=1)  # one sample already: not silently ignored
        for bad in (1.5, True, "0"):  # named, not NumPy's IndexError
            with pytest.raises(TypeError, match=f"sample must be an integer index into the batch, got {bad!r}"):
                splot.raster(_spikes(), sample=bad)
        drawn = len(plt.gca().collections)
        nan = _spikes()
        nan[0, 1, 0] = np.nan  # not a spike time: refused, not left undrawn
        with pytest.raises(ValueError, match=r"times contains NaN at index \(1, 0\).*pad unused slots with \+inf"):
            splot.raster(nan)
        with pytest.raises(ValueError, match=r"spike_times contains NaN at index \(1, 0\)"):
            splot.trace(np.arange(3.0), np.zeros((nan.shape[1], 3)), spike_times=nan[0])
        for value in (-0.5, -np.inf):  # no spike comes before t = 0: refused, not drawn (nor skipped like padding)
            negative = _spikes()
            negative[0, 2, 1] = value
            with pytest.raises(ValueError, match=rf"times contains the negative time {value!r} at index \(2, 1\)"):
                splot.raster(negative)
            with pytest.raises(ValueError, match=rf"spike_times contains the negative time {value!r} at index"):
                splot.trace(np.arange(3.0), np.zeros((negative.shape[1], 3)), spike_times=negative[0])
        assert len(plt.gca().collections) == drawn and not plt.gca().lines  # nothing drawn by a refused call
    finally:
        plt.close(fig)


def test_trace_lines_threshold_and_markers(ax):
    rng = np.random.default_rng(0)
    x = np.sort(rng.uniform(0.0, 20.0, (1, 8, 2)), axis=-1)
    W = rng.normal(0.5, 0.3, (8, 4))
    t = np.linspace(0.0, 50.0, 400)
    res = ss.lif_trace(x, W, t, tau_mem=10.0, tau_syn=5.0)
    out = splot.trace(t, res.voltage[0], threshold=1.0, spike_times=res.spike_times[0], ax=ax)
    assert out is ax
    assert len(ax.lines) == 4 + 1
    n_spikes = np.isfinite(res.spike_times[0]).sum()
    assert n_spikes > 0
    assert sum(len(c.get_offsets()) for c in ax.collections) == n_spikes
    np.testing.assert_allclose(ax.lines[0].get_ydata(), res.voltage[0, 0])
    assert ax.get_xlabel() == "time" and ax.get_ylabel() == "voltage"
    splot.trace(t, res.voltage[0], ax=ax, time_unit="s")
    assert ax.get_xlabel() == "time (s)"


def test_trace_refuses_a_nan_grid_nan_threshold_and_2d_neurons(ax):
    """A NaN grid time or threshold was drawn as a gap or nothing, silently; 2-D neurons gave a bare IndexError.
    Nothing is drawn when an argument is refused."""
    t = np.linspace(0.0, 10.0, 5)
    v = np.zeros((3, 5))
    bad_t = t.copy()
    bad_t[2] = np.nan
    with pytest.raises(ValueError, match=r"t must be finite, got nan at index 2"):
        splot.trace(bad_t, v, ax=ax)
    with pytest.raises(ValueError, match=r"threshold must be finite, got nan"):
        splot.trace(t, v, threshold=float("nan"), ax=ax)
    with pytest.raises(ValueError, match=r"threshold must be finite"):
        splot.trace(t, v, threshold=np.array([1.0, np.inf, 1.0]), ax=ax)
    with pytest.raises(ValueError, match=r"neurons must be a 1-D list of indices or a boolean mask, got shape "
                                         r"\(1, 2\)"):
        splot.trace(t, v, neurons=[[0, 1]], ax=ax)
    assert not ax.lines and not ax.collections


def test_trace_neuron_subset_no_threshold_unsorted_grid(ax):
    t = np.array([3.0, 1.0, 2.0])
    V = np.array([[0.3, 0.1, 0.2], [1.0, 2.0, 3.0], [5.0, 6.0, 7.0]])
    splot.trace(t, V, neurons=[0, 2], ax=ax)
    assert len(ax.lines) == 2
    np.testing.assert_array_equal(ax.lines[0].get_xdata(), [1.0, 2.0, 3.0])
    np.testing.assert_array_equal(ax.lines[0].get_ydata(), [0.1, 0.2, 0.3])
    np.testing.assert_array_equal(ax.lines[1].get_ydata(), [6.0, 7.0, 5.0])
    splot.trace(t, V[1], ax=ax)  # one neuron as a vector
    assert len(ax.lines) == 3
    with pytest.raises(ValueError, match="voltage must have shape"):
        splot.trace(t, V[None], ax=ax)
    with pytest.raises(IndexError, match="out of range"):
        splot.trace(t, V, neurons=[3], ax=ax)
    with pytest.raises(ValueError, match="spike_times must have shape"):
        splot.trace(t, V, spike_times=np.zeros((2, 1)), ax=ax)


def test_trace_boolean_neurons_and_per_neuron_thresholds(ax):
    """A boolean mask selects its neurons (it was cast to the indices 0 and 1); one threshold per neuron (a
    trainable-threshold layer) draws one dashed line per drawn neuron, in its colour, with its markers on it."""
    t = np.array([0.0, 1.0, 2.0])
    V = np.array([[0.1, 0.2, 0.3], [1.0, 2.0, 3.0], [5.0, 6.0, 7.0]])
    spikes = np.array([[np.inf], [1.5], [0.5]])
    splot.trace(t, V, neurons=np.array([False, True, True]), threshold=np.array([1.0, 2.0, 3.0]),
                spike_times=spikes, ax=ax)
    drawn, dashed = ax.lines[0::2], ax.lines[1::2]
    np.testing.assert_array_equal(drawn[0].get_ydata(), V[1])
    np.testing.assert_array_equal(drawn[1].get_ydata(), V[2])
    assert [d.get_ydata()[0] for d in dashed] == [2.0, 3.0]
    assert [d.get_color() for d in dashed] == [d.get_color() for d in drawn]
    assert [float(c.get_offsets()[0][1]) for c in ax.collections] == [2.0, 3.0]
    with pytest.raises(TypeError, match="integer indices or a boolean mask"):
        splot.trace(t, V, neurons=[0.7], ax=ax)
    with pytest.raises(ValueError, match=r"boolean mask must have shape \(3,\)"):
        splot.trace(t, V, neurons=np.array([True, False]), ax=ax)
    with pytest.raises(ValueError, match=r"threshold must be a number or one per neuron"):
        splot.trace(t, V, threshold=np.ones(2), ax=ax)


def test_lazy_import_and_clear_error(monkeypatch):
    code = ("import sys, spikescan; assert 'spikescan.plot' not in sys.modules; import spikescan.plot; "
            "assert 'matplotlib' not in sys.modules, 'matplotlib imported eagerly'")
    subprocess.run([sys.executable, "-c", code], check=True)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with pytest.raises(ImportError, match=r"pip install 'spikescan\[plot\]'"):
        splot.raster(_spikes())


# ------------------------------------------------------------------------------------ examples/yinyang.py --plot

def _yinyang_example():
    if not os.environ.get("KERAS_BACKEND"):
        pytest.skip("KERAS_BACKEND is not set (the example test runs in the per-backend passes)")
    backend = os.environ["KERAS_BACKEND"]
    if backend not in ("torch", "jax", "tensorflow"):
        pytest.skip(f"spikescan_keras supports torch, jax and tensorflow, KERAS_BACKEND={backend!r}")
    if backend == "tensorflow":
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    pytest.importorskip(backend)
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != backend:
        pytest.skip(f"keras was already imported with the {keras.backend.backend()!r} backend")
    return example("yinyang")


def test_yinyang_example_writes_plots(tmp_path):
    example = _yinyang_example()
    out = tmp_path / "figures"
    summary = example.main(["--epochs", "1", "--limit", "64", "--hidden", "8", "--verbose", "0",
                            "--plot", str(out)])
    assert 0.0 <= summary["test_accuracy"] <= 1.0
    for name in ("decision_regions.png", "hidden_raster.png", "hidden_trace.png"):
        path = out / name
        assert path.is_file() and path.stat().st_size > 1000, name
        with open(path, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_examples_write_plots(tmp_path, monkeypatch):
    """``--plot DIR`` of the scripts on ``_common.train`` (randman here; mnist, shd and ssc alike): learning curves,
    the test confusion matrix and the input and hidden spikes of a test sample per class, and the per-epoch history
    in the summary. Without matplotlib, ``--plot`` is refused when the command line is parsed."""
    _yinyang_example()  # the backend checks
    randman = example("randman")
    out = tmp_path / "figures"
    summary = randman.main(["--epochs", "2", "--hidden", "8", "--batch-size", "8", "--limit", "24", "--n-channels",
                            "6", "--verbose", "0", "--plot", str(out)])
    for name in ("learning_curves.png", "confusion.png", "spikes.png"):
        path = out / name
        assert path.is_file() and path.stat().st_size > 1000, name
        with open(path, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    history = summary["history"]
    assert {"loss", "accuracy", "val_loss", "val_accuracy"} <= history.keys()
    assert all(len(v) == 2 and all(np.isfinite(v)) for v in history.values()), history
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(SystemExit) as exc:
        randman.main(["--epochs", "1", "--plot", str(tmp_path / "other")])
    assert exc.value.code == 2 and not (tmp_path / "other").exists()


def test_yinyang_grid_encoding_matches_dataset():
    example = _yinyang_example()
    from spikescan.datasets import yinyang

    data = yinyang(50, seed=40)
    np.testing.assert_array_equal(example.encode_points(data.meta["values"][:, :2]), data.times)


def test_trace_refuses_unsigned_indices_that_wrap(ax):
    """uint64 2**64 - 1 became -1 in the cast to int64, a valid index: the last neuron was drawn instead of an
    IndexError."""
    with pytest.raises(IndexError, match=r"neurons \[18446744073709551615\] out of range for 3 neurons"):
        splot.trace(np.arange(4.0), np.zeros((3, 4)), neurons=np.array([2**64 - 1], np.uint64), ax=ax)
    assert not ax.lines
