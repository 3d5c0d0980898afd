"""benchmarks/learning.py end to end in its --quick form (iris only): the harness runs in-process under the Keras
backend of this process and writes a JSON report of the promised structure. One process per backend:

    KERAS_BACKEND=torch python -m pytest tests/test_learning_bench.py
    KERAS_BACKEND=jax python -m pytest tests/test_learning_bench.py
    KERAS_BACKEND=tensorflow python -m pytest tests/test_learning_bench.py

Learning quality is not asserted here (two epochs on a few samples); the full panel is a benchmark, not a test.
"""

import json
import math

import pytest

from _examples import benchmark
from _keras_backend import keras_or_skip

BACKEND, keras = keras_or_skip()
pytest.importorskip("sklearn")


def learning():
    return benchmark("learning")


def unit(x):
    return isinstance(x, float) and math.isfinite(x) and 0.0 <= x <= 1.0


def test_quick_iris(tmp_path, capsys):
    out = tmp_path / "learning.json"
    returned = learning().main(["--quick", "--only", "iris", "--table-repeats", "2", "--output", str(out)])
    assert out.is_file()
    report = json.loads(out.read_text())
    assert report == json.loads(json.dumps(returned))
    assert report["benchmark"] == "learning" and report["complete"] is True

    stamp = report["stamp"]
    assert {"commit", "dirty", "machine", "cpu", "python", "numpy", "keras", "keras_backend"} <= stamp.keys()
    assert stamp["keras_backend"] == BACKEND

    settings = report["settings"]
    assert settings["quick"] is True and settings["datasets"] == ["iris"]
    assert settings["table_repeats"] == 2
    folds, epochs = settings["folds"] * settings["table_repeats"], settings["epochs"]  # accuracies per entry
    assert folds >= 4 and epochs >= 1

    entries = report["entries"]
    assert [(e["dataset"], e["code"]) for e in entries] == [("iris", "latency"), ("iris", "rate")]
    for e in entries:
        assert isinstance(e["setting"], str) and e["setting"]
        for model in ("snn", "mlp"):
            accuracies = e[f"{model}_accuracy"]
            assert isinstance(accuracies, list) and len(accuracies) == folds
            assert all(unit(a) for a in accuracies), accuracies
            assert unit(e[f"{model}_mean"]) and unit(e[f"{model}_std"])
            assert e[f"{model}_mean"] == pytest.approx(sum(accuracies) / folds)
        assert math.isfinite(e["gap"]) and e["gap"] == pytest.approx(e["mlp_mean"] - e["snn_mean"])
        assert e["within_3_points"] is (e["gap"] <= 0.03)
        assert isinstance(e["seconds"], (int, float)) and e["seconds"] >= 0
        assert unit(e["silent_fraction"]) and unit(e["dead_fraction"])
        assert len(e["silent_fraction_per_fold"]) == folds
        assert math.isfinite(e["kernel_scale"]) and e["kernel_scale"] > 0
    # The MLP runs once per dataset: both codes report the same MLP folds.
    assert entries[0]["mlp_accuracy"] == entries[1]["mlp_accuracy"]

    printed = capsys.readouterr().out
    assert printed.count("iris ") >= 2 and "snn" in printed and "mlp" in printed

    table = learning().main(["--markdown", str(out)])
    assert table.count("\n| iris |") == 2


def test_raster_code_is_a_seeded_bernoulli_raster_on_the_bins_starts():
    """``--codes raster``: each feature spikes in each of the 20 bins of 1 ms with probability ``0.4 x`` (8 spikes
    at 1 on average, as the rate code), seeded per split, as spike times on the bins' starts."""
    import numpy as np

    lb = learning()
    x = np.tile(np.array([[0.0], [5.0], [10.0]]), (4000, 1))  # one feature, scaled to 0, 0.5 and 1
    train, test = lb.encode_split("raster", x, x, seed=3)
    again, _ = lb.encode_split("raster", x, x, seed=3)
    np.testing.assert_array_equal(train, again)
    assert train.shape[:2] == (12000, 1) and not np.array_equal(train, test)
    finite = np.isfinite(train)
    assert (train[finite] == np.floor(train[finite])).all() and train[finite].max() <= 19.0
    counts = finite.sum(axis=2)[:, 0]
    per_value = [counts[v::3].mean() for v in range(3)]  # binomial(20, 0.4 x): mean 8 x, std <= 2.2 / sqrt(4000)
    np.testing.assert_allclose(per_value, [0.0, 4.0, 8.0], atol=0.15)
    assert (np.diff(train, axis=2)[np.isfinite(np.diff(train, axis=2))] > 0).all()  # one spike per bin at most


def test_random_codes_add_an_mlp_on_their_spike_counts(tmp_path):
    """A raster entry also trains the MLP on each channel's spike count of the very tensors the spiking model saw
    (``counts_mlp_*``), and the README table says so under it."""
    import numpy as np

    lb = learning()
    out = tmp_path / "raster.json"
    lb.main(["--quick", "--only", "iris", "--codes", "raster", "--output", str(out)])
    e, = json.loads(out.read_text())["entries"]
    folds = len(e["snn_accuracy"])
    assert e["code"] == "raster" and len(e["counts_mlp_accuracy"]) == folds
    assert all(unit(a) for a in e["counts_mlp_accuracy"])
    assert e["counts_mlp_mean"] == pytest.approx(sum(e["counts_mlp_accuracy"]) / folds)
    assert f"iris raster {100 * e['counts_mlp_mean']:.1f}" in lb.main(["--markdown", str(out)])
    times = np.full((2, 3, 4), np.inf)
    times[0, 1, :2] = [1.0, 2.0]
    np.testing.assert_array_equal(lb.spike_counts(times), [[0.0, 2 / 8, 0.0], [0.0, 0.0, 0.0]])


def quick_variant(tmp_path, flag):
    """A quick run of iris and Yin-Yang (latency code) with ``flag``: its report, after checking that both entries
    ran, with the setting names of ``flag`` and accuracies in [0, 1]."""
    report = learning().main(["--quick", "--only", "iris", "yinyang", "--codes", "latency", flag,
                              "--output", str(tmp_path / "learning.json")])
    entries = report["entries"]
    assert [e["dataset"] for e in entries] == ["iris", "yinyang"]
    for e in entries:
        assert e["setting"].endswith(flag[1:]), e["setting"]  # "--recurrent" -> "-recurrent"
        assert all(unit(a) for a in e["snn_accuracy"])
    return report


def test_quick_recurrent(tmp_path):
    """--recurrent: every entry's hidden layer is recurrent (its setting says so), tables and Yin-Yang alike."""
    report = quick_variant(tmp_path, "--recurrent")
    assert all(e["model"]["recurrent"] is True for e in report["entries"])
    assert report["settings"]["recurrent"] is True
    assert report["settings"]["table_setting"]["recurrent"] is True
    setting = report["settings"]["yinyang_settings"][0]
    model = learning().snn((5, 1), 4, 3, setting)
    hidden = model.layers[0]
    assert hidden.recurrent and tuple(hidden.recurrent_kernel.shape) == (4, 4)
    assert hidden.recurrent_scale == "auto" and report["settings"]["recurrent_scale"] is None
    assert not learning().snn((5, 1), 4, 3, learning().TABLE_SETTING).layers[0].recurrent


def test_recurrent_scale_option(capsys):
    """--recurrent-scale S: the hidden layer's recurrent_scale, named in the setting; needs --recurrent."""
    args = learning().parse(["--quick", "--only", "yinyang", "--recurrent", "--recurrent-scale", "1"])
    (setting,) = args.yinyang_settings
    assert setting["name"] == "tau20/10-integral-recurrent-scale1" and setting["recurrent_scale"] == 1.0
    assert args.table_setting["recurrent_scale"] == 1.0
    hidden = learning().snn((5, 1), 4, 3, setting).layers[0]
    assert hidden.recurrent_scale == 1.0 and hidden.recurrent_kernel_scale == 1.0
    for argv in (["--recurrent-scale", "0.5"], ["--recurrent", "--recurrent-scale", "0"],
                 ["--recurrent", "--recurrent-scale", "nan"]):
        with pytest.raises(SystemExit):
            learning().parse(["--quick", *argv])
        assert "--recurrent-scale needs --recurrent and a positive number" in capsys.readouterr().err


def test_quick_first_spike(tmp_path):
    """--first-spike: every entry reads out by FirstSpikeReadout (its setting says so), tables and Yin-Yang alike;
    settings that differ only in their readout become one."""
    report = quick_variant(tmp_path, "--first-spike")
    assert report["settings"]["first_spike"] is True
    model = learning().snn((5, 1), 4, 3, report["settings"]["yinyang_settings"][0])
    assert type(model.layers[-1]).__name__ == "FirstSpikeReadout" and model.layers[-1].t_max == 60.0
    args = learning().parse(["--quick", "--only", "yinyang", "--first-spike",
                             "--settings", "tau20/10-integral", "tau20/10-max", "tau10/5-integral"])
    assert [s["name"] for s in args.yinyang_settings] == ["tau20/10-first-spike", "tau10/5-first-spike"]
    args = learning().parse(["--quick", "--only", "yinyang", "--first-spike", "--recurrent", "--recurrent-scale", "1",
                             "--settings", "tau20/10-integral", "tau20/10-max"])
    (setting,) = args.yinyang_settings  # one model: the two settings differ only in the replaced readout
    assert setting["name"] == "tau20/10-first-spike-recurrent-scale1" and setting["recurrent"]
    assert args.table_setting["name"] == "tau10/5-first-spike-recurrent-scale1"
    assert type(learning().snn((5, 1), 4, 3, learning().TABLE_SETTING).layers[-1]).__name__ == "LIReadout"
