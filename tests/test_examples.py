"""The example scripts end to end: each ``examples/*.py`` runs ``main(argv)`` for one tiny epoch on small data in
the official on-disk formats, written here (no network), and its JSON summary is checked. One process per backend:

    KERAS_BACKEND=torch python -m pytest tests/test_examples.py
    KERAS_BACKEND=jax python -m pytest tests/test_examples.py
    KERAS_BACKEND=tensorflow python -m pytest tests/test_examples.py

Without ``KERAS_BACKEND`` the jax backend is used. Unsupported or missing backends skip the module. The scripts are
imported by path with ``examples/`` on ``sys.path`` (they ``import _common``; ssc.py imports shd.py).
"""

import json

import numpy as np
import pytest

from _keras_backend import keras_or_skip

BACKEND, keras = keras_or_skip()

from spikescan.datasets import DroppedSpikesWarning  # noqa: E402

from _datafiles import write_heidelberg, write_mnist  # noqa: E402
from spikescan.datasets.mnist import mnist_digest  # noqa: E402
from _examples import example  # noqa: E402

N_UNITS, N_POOLED = 700, 140  # cochlear channels of SHD / SSC, and the scripts' default --n-channels
TINY = ["--epochs", "1", "--hidden", "8", "--batch-size", "4"]


def check_summary(path, returned, dataset):
    """The JSON file at ``path`` holds what ``main`` returned, with the keys every example promises."""
    assert path.is_file(), f"--output {path} was not written"
    summary = json.loads(path.read_text())
    assert summary == json.loads(json.dumps(returned))
    assert {"dataset", "test_accuracy", "epochs", "seconds", "device"} <= summary.keys()
    assert summary["dataset"] == dataset
    assert isinstance(summary["test_accuracy"], float) and 0.0 <= summary["test_accuracy"] <= 1.0
    assert summary["epochs"] == 1
    assert isinstance(summary["seconds"], (int, float)) and summary["seconds"] >= 0
    assert isinstance(summary["device"], str) and summary["device"]
    assert summary.get("backend", BACKEND) == BACKEND
    assert {"commit", "dirty", "machine", "python", "numpy", "keras_backend"} <= summary["stamp"].keys()
    for key in ("dropped_input_spikes", "capped_spikes"):
        if key in summary:
            assert type(summary[key]) is int and summary[key] >= 0, (key, summary[key])
    # The command line it ran with, so a result file says how it was made.
    assert summary["args"]["epochs"] == 1 and summary["args"]["max_spikes"] > 0, summary["args"]
    return summary


# ---------------------------------------------------------------- SHD / SSC data

def speech_samples(n, n_classes, seed, *, n_early=40, n_late=3, burst=6):
    """``n`` samples ``(times in s, units, label)`` like SHD / SSC recordings, shuffled in time order:
    ``n_early`` spikes on random units in [5, 800] ms, ``burst`` spikes of unit 42 (pooled channel 8) in
    [10, 60] ms, and ``n_late`` spikes in [1100, 1400] ms, after the scripts' default ``--t-max`` of 1000 ms. No
    spike lies within 10 ms of 500 ms, so a 500 ms crop drops a count that float16 rounding cannot change.
    Labels run down from ``n_classes - 1`` (the largest label has to fit the readout)."""
    rng = np.random.default_rng(seed)
    samples = []
    for i in range(n):
        early = rng.uniform(0.005, 0.79, n_early)
        early[early > 0.49] += 0.02
        times = np.concatenate([early, np.linspace(0.01, 0.06, burst), rng.uniform(1.1, 1.4, n_late)])
        units = np.concatenate([rng.integers(0, N_UNITS, n_early), np.full(burst, 42),
                                rng.integers(0, N_UNITS, n_late)])
        order = rng.permutation(len(times))
        samples.append((times[order], units[order], (n_classes - 1 - i) % n_classes))
    return samples


def write_speech(data_dir, name, n_classes, splits, n=6):
    """``{name}_{split}.h5`` for each split in ``data_dir``; returns the samples written, by split."""
    data = {}
    for k, split in enumerate(splits):
        data[split] = speech_samples(n, n_classes, seed=k)
        write_heidelberg(data_dir / f"{name}_{split}.h5", data[split], n_classes=n_classes)
    return data


def expected_drops(samples, *, t_max, cap=None):
    """Input spikes the loader must drop: those after ``t_max`` (ms, after the float16 times are read), then those
    beyond ``cap`` per pooled channel."""
    dropped = 0
    for times, units, _ in samples:
        t_ms = np.asarray(times, np.float16).astype(np.float64) * 1e3
        keep = t_ms <= t_max
        dropped += int((~keep).sum())
        if cap is not None:
            counts = np.bincount(np.asarray(units)[keep] * N_POOLED // N_UNITS, minlength=N_POOLED)
            dropped += int(np.maximum(counts - cap, 0).sum())
    return dropped


def run_speech(name, data_dir, out, *extra):
    return example(name).main([*TINY, "--data-dir", str(data_dir), "--output", str(out), "--verbose", "0",
                               "--limit", "4", *extra])


def test_shd_crop_reported(tmp_path):
    data = write_speech(tmp_path, "shd", 20, ("train", "test"))
    expected = sum(expected_drops(s[:4], t_max=500.0) for s in data.values())
    assert expected >= 2 * 4 * 3  # the late spikes of every loaded sample, and early ones after 500 ms
    with pytest.warns(DroppedSpikesWarning):
        returned = run_speech("shd", tmp_path, tmp_path / "shd.json", "--t-max", "500")
    summary = check_summary(tmp_path / "shd.json", returned, "shd")
    assert summary["dropped_input_spikes"] == expected
    assert summary["n_train"] == summary["n_test"] == 4 and summary["limit"] == 4
    assert summary["n_channels"] == N_POOLED and summary["t_max"] == 500.0


def test_shd_input_cap_reported(tmp_path):
    data = write_speech(tmp_path, "shd", 20, ("train", "test"))
    expected = sum(expected_drops(s[:4], t_max=2000.0, cap=2) for s in data.values())
    assert expected >= 2 * 4 * 4  # at least the burst of unit 42 beyond the cap, in every loaded sample
    with pytest.warns(DroppedSpikesWarning):
        returned = run_speech("shd", tmp_path, tmp_path / "shd.json", "--t-max", "2000", "--max-input-spikes", "2",
                              "--n-channels", str(N_POOLED))
    summary = check_summary(tmp_path / "shd.json", returned, "shd")
    assert summary["dropped_input_spikes"] == expected
    assert summary["max_input_spikes"] == 2


def test_shd_recurrent_trains_end_to_end(tmp_path):
    write_speech(tmp_path, "shd", 20, ("train", "test"))
    returned = run_speech("shd", tmp_path, tmp_path / "shd.json", "--recurrent")
    summary = check_summary(tmp_path / "shd.json", returned, "shd")
    assert summary["recurrent"] is True and summary["n_train"] == 4
    model = example("shd").build_model(N_POOLED, 20, 6, 4, 1000.0, 25.0, recurrent=True)
    hidden = [layer for layer in model.layers if layer.name.startswith("hidden")]
    assert len(hidden) == 1 and hidden[0].recurrent


def test_shd_format_files_of_your_own_time_constants_and_class_count(tmp_path):
    """Files in SHD's format with 10 classes train a 10-class readout (the class names in ``extra/keys``), with the
    time constants of ``--tau-mem`` / ``--tau-syn``; a label outside the named classes stops the script."""
    write_speech(tmp_path, "shd", 10, ("train", "test"))
    returned = run_speech("shd", tmp_path, tmp_path / "shd.json", "--tau-mem", "100", "--tau-syn", "8")
    summary = check_summary(tmp_path / "shd.json", returned, "shd")
    assert summary["n_classes"] == 10 and summary["tau_mem"] == 100.0 and summary["tau_syn"] == 8.0
    model = example("shd").build_model(N_POOLED, 10, 6, 4, 1000.0, 25.0, tau_mem=100.0, tau_syn=8.0)
    assert model.layers[-1].units == 10 and model.layers[-1].t_max == 1000.0 + 50.0 + 200.0
    assert all(layer.tau_mem == 100.0 and layer.tau_syn == 8.0 for layer in model.layers)
    samples = speech_samples(6, 10, seed=0)
    samples[1] = samples[1][:2] + (12,)
    write_heidelberg(tmp_path / "shd_test.h5", samples, n_classes=10)
    with pytest.raises(SystemExit, match=r"error: shd_test.h5: sample 1 of the selection has the label 12, but "
                                         r"extra/keys names 10 classes"):
        run_speech("shd", tmp_path, tmp_path / "shd.json")
    for bad in ("0", "-5"):
        with pytest.raises(SystemExit):
            run_speech("shd", tmp_path, tmp_path / "shd.json", "--tau-mem", bad)
    write_heidelberg(tmp_path / "shd_test.h5", speech_samples(6, 10, seed=0), n_classes=12)
    with pytest.raises(SystemExit, match=r"error: the shd files name different classes \(extra/keys\): shd_train: "
                                         r"10 classes; shd_test: 12 classes"):
        run_speech("shd", tmp_path, tmp_path / "shd.json")
    # A corrupt file is named (h5py's own "file signature not found" named none, with a traceback).
    (tmp_path / "shd_test.h5").write_bytes(b"not an HDF5 file")
    with pytest.raises(SystemExit, match=r"error: .*shd_test.h5 is not a readable HDF5 file .*download it again"):
        run_speech("shd", tmp_path, tmp_path / "shd.json")


def test_ssc_with_validation_split(tmp_path):
    data = write_speech(tmp_path, "ssc", 35, ("train", "valid", "test"))
    returned = run_speech("ssc", tmp_path, tmp_path / "ssc.json")
    summary = check_summary(tmp_path / "ssc.json", returned, "ssc")
    # default --t-max 1000 ms drops the late spikes of the loaded samples of all three splits
    assert summary["dropped_input_spikes"] == sum(expected_drops(s[:4], t_max=1000.0) for s in data.values())
    assert summary["dropped_input_spikes"] == 3 * 4 * 3
    assert summary["n_train"] == summary["n_test"] == 4 and summary["t_max"] == 1000.0


@pytest.mark.parametrize("name", ["shd", "ssc"])
@pytest.mark.parametrize("limit", [[], ["--limit", "4"]], ids=["all", "limit"])
def test_speech_missing_files(tmp_path, name, limit):
    with pytest.raises(SystemExit) as exc:
        example(name).main([*TINY, "--data-dir", str(tmp_path), *limit])
    message = exc.value.code
    assert isinstance(message, str) and message.startswith("error:")  # a message, not a traceback or status 0
    assert f"{name}_train.h5" in message and f"download_{name}" in message and str(tmp_path) in message


def test_shd_requires_data_dir(capsys):
    with pytest.raises(SystemExit) as exc:
        example("shd").main(TINY)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--data-dir is required" in err and "shd_train.h5" in err and "download_shd" in err


@pytest.mark.parametrize("flag, value, message", [("--max-delay", "-1", "must be a positive number, got -1"),
                                                   ("--max-delay", "nan", "must be a positive number, got nan"),
                                                   ("--t-max", "0", "must be a positive number, got 0"),
                                                   ("--n-channels", "0", "must be a positive integer, got 0"),
                                                   ("--max-input-spikes", "0", "must be a positive integer, got 0")])
def test_speech_input_flags_are_checked_at_parsing(tmp_path, capsys, flag, value, message):
    """A bad --max-delay ended in the layer's ValueError traceback after the data had been loaded (minutes for SSC);
    the other input flags were refused by the loader, after reading the files, by their Python names."""
    with pytest.raises(SystemExit) as exc:
        example("shd").main([*TINY, "--data-dir", str(tmp_path), f"{flag}={value}"])
    assert exc.value.code == 2 and f"{flag}: {message}" in capsys.readouterr().err


def test_mnist_t_max_is_checked_at_parsing(capsys):
    with pytest.raises(SystemExit) as exc:
        example("mnist").main(["--t-max=-5"])
    assert exc.value.code == 2 and "--t-max: must be a positive number, got -5" in capsys.readouterr().err


# ---------------------------------------------------------------- MNIST and Yin-Yang

def test_mnist(tmp_path):
    arrays = write_mnist(tmp_path, n_train=12, n_test=10)
    assert arrays["x_train"].shape == (12, 28, 28) and arrays["x_train"].dtype == np.uint8
    returned = example("mnist").main([*TINY, "--data-dir", str(tmp_path), "--output", str(tmp_path / "mnist.json"),
                                      "--verbose", "0", "--limit", "8"])
    summary = check_summary(tmp_path / "mnist.json", returned, "mnist")
    assert summary["dropped_input_spikes"] == 0
    assert summary["n_train"] == summary["n_test"] == 8
    assert summary["data_sha256"] == mnist_digest(tmp_path)
    assert summary["dropout"] == 0.0 and summary["weight_decay"] == 0.0
    assert (summary["tau_mem"], summary["tau_syn"], summary["solver"]) == (10.0, 5.0, "analytic")


def test_mnist_time_constants(tmp_path):
    """``--tau-mem`` / ``--tau-syn`` set both layers' time constants; a ratio other than 2 takes Newton's solver (the
    closed form would refuse it), recorded in the summary; a non-positive value stops the script."""
    write_mnist(tmp_path, n_train=12, n_test=10)
    returned = example("mnist").main([*TINY, "--data-dir", str(tmp_path), "--verbose", "0", "--limit", "8",
                                      "--tau-mem", "20", "--tau-syn", "5"])
    assert (returned["tau_mem"], returned["tau_syn"], returned["solver"]) == (20.0, 5.0, "newton")
    model = example("mnist").build_model(784, 8, 4, 20.0, tau_mem=20.0, tau_syn=5.0)
    hidden, readout = model.get_layer("hidden"), model.get_layer("readout")
    assert (hidden.tau_mem, hidden.tau_syn, hidden.solver) == (20.0, 5.0, "newton")
    assert (readout.tau_mem, readout.tau_syn, readout.t_max) == (20.0, 5.0, 60.0)
    assert example("mnist").build_model(784, 8, 4, 20.0, tau_mem=8.0, tau_syn=4.0).get_layer("hidden").solver \
        == "analytic"
    for bad in ("0", "-5", "nan"):
        with pytest.raises(SystemExit):
            example("mnist").main(["--tau-syn", bad])


def test_mnist_readout(tmp_path):
    """``--readout``: the LIReadout's logit, ``"max"`` by default, recorded in the summary."""
    write_mnist(tmp_path, n_train=12, n_test=10)
    returned = example("mnist").main([*TINY, "--data-dir", str(tmp_path), "--verbose", "0", "--limit", "8",
                                      "--readout", "integral"])
    assert returned["readout"] == "integral"
    assert example("mnist").build_model(784, 8, 4, 20.0, readout="integral").get_layer("readout").readout \
        == "integral"
    assert example("mnist").build_model(784, 8, 4, 20.0).get_layer("readout").readout == "max"
    with pytest.raises(SystemExit):
        example("mnist").main(["--readout", "final"])


def test_mnist_dropout(tmp_path):
    """``--dropout``: a SpikeDropout of whole hidden neurons between the layers, recorded in the summary."""
    write_mnist(tmp_path, n_train=12, n_test=10)
    returned = example("mnist").main([*TINY, "--data-dir", str(tmp_path), "--verbose", "0", "--limit", "8",
                                      "--dropout", "0.25"])
    assert returned["dropout"] == 0.25 and returned["args"]["dropout"] == 0.25
    model = example("mnist").build_model(784, 8, 4, 20.0, dropout=0.25)
    assert [layer.name for layer in model.layers] == ["hidden", "dropout", "readout"]
    assert model.get_layer("dropout").rate == 0.25 and model.get_layer("dropout").unit == "channel"
    assert [layer.name for layer in example("mnist").build_model(784, 8, 4, 20.0).layers] == ["hidden", "readout"]
    for bad in ("1", "-0.1"):
        with pytest.raises(SystemExit):
            example("mnist").main(["--dropout", bad])


def test_weight_decay_shrinks_weight_matrices_only(tmp_path):
    """``--weight-decay``: one AdamW step on zero gradients leaves Adam's own update at 0, so each weight matrix
    shrinks by exactly ``1 - lr * wd`` while delays, time constants and thresholds keep their values; 0 changes
    nothing; the summary records it."""
    from spikescan_keras import LIFLayer, LIReadout

    common = example("mnist") and __import__("_common")
    lr, wd = 0.01, 0.5
    model = keras.Sequential([keras.Input((6, 1)),
                              LIFLayer(4, tau_mem=10.0, tau_syn=5.0, max_spikes=2, delays=True, recurrent=True,
                                       recurrent_delays=True, trainable_time_constants=True, trainable_threshold=True,
                                       name="hidden"),
                              LIReadout(3, tau_mem=10.0, tau_syn=5.0, t_max=40.0, trainable_time_constants=True,
                                        name="readout")])
    for decay in (wd, 0.0):
        before = [keras.ops.convert_to_numpy(v.value) for v in model.trainable_variables]
        opt = common.optimizer(lr, 100, decay)
        opt.apply_gradients([(keras.ops.zeros_like(v.value), v) for v in model.trainable_variables])
        after = [keras.ops.convert_to_numpy(v.value) for v in model.trainable_variables]
        paths = [v.path for v in model.trainable_variables]
        shrunk = {p: np.allclose(x, b * (1 - lr * decay), rtol=1e-6, atol=0) and not (decay and np.array_equal(x, b))
                  for p, x, b in zip(paths, after, before)}
        unchanged = {p: np.array_equal(x, b) for p, x, b in zip(paths, after, before)}
        names = sorted(shrunk)
        matrices = [n for n in names if n.endswith(("/kernel", "/recurrent_kernel"))]
        assert len(matrices) == 3, names
        assert all(shrunk[n] for n in matrices), (decay, shrunk)
        assert all(unchanged[n] for n in names if n not in matrices), (decay, unchanged)
    assert len(names) > 3  # delays, time constants and the threshold were there and kept
    returned = example("yinyang").main(["--epochs", "1", "--batch-size", "16", "--limit", "32", "--hidden", "8",
                                        "--weight-decay", "1e-4", "--verbose", "0"])
    assert returned["weight_decay"] == 1e-4 and returned["args"]["weight_decay"] == 1e-4
    with pytest.raises(SystemExit):
        example("yinyang").main(["--weight-decay", "-1"])


def test_mnist_missing_file(tmp_path):
    with pytest.raises(SystemExit) as exc:
        example("mnist").main([*TINY, "--data-dir", str(tmp_path)])
    message = exc.value.code
    assert isinstance(message, str) and message.startswith("error:")
    assert str(tmp_path / "mnist.npz") in message and "tf-keras-datasets/mnist.npz" in message


@pytest.mark.parametrize("recurrent", [False, True])
def test_randman(tmp_path, recurrent):
    returned = example("randman").main([*TINY, "--limit", "24", "--dim-manifold", "2", "--n-channels", "6",
                                        "--output", str(tmp_path / "randman.json")] + (["--recurrent"] if recurrent
                                                                                       else []))
    summary = check_summary(tmp_path / "randman.json", returned, "randman")
    assert summary["n_train"] == summary["n_test"] == 24 and summary["recurrent"] is recurrent
    assert summary["n_channels"] == 6 and summary["dim_manifold"] == 2 and summary["n_classes"] == 10
    model = example("randman").build_model(6, 10, 8, 4, recurrent=recurrent)
    assert model.get_layer("hidden").recurrent is recurrent and model.get_layer("readout").t_max == 50.0 + 40.0


def test_yinyang(tmp_path):
    returned = example("yinyang").main(["--epochs", "1", "--batch-size", "16", "--limit", "32", "--hidden", "8",
                                        "--output", str(tmp_path / "yinyang.json")])
    check_summary(tmp_path / "yinyang.json", returned, "yinyang")
    assert returned["output"] == "li_readout"


def test_yinyang_first_spike(tmp_path):
    returned = example("yinyang").main(["--epochs", "1", "--batch-size", "16", "--limit", "32", "--hidden", "8",
                                        "--first-spike", "--output", str(tmp_path / "yinyang.json")])
    check_summary(tmp_path / "yinyang.json", returned, "yinyang")
    assert returned["output"] == "first_spike" and len(returned["calibration"]) == 2


def test_deterministic_flag_sets_the_switch_and_is_recorded(tmp_path, monkeypatch):
    """``--deterministic`` turns on ``spikescan.set_deterministic`` for the run (it changes nothing on a CPU, where
    every engine is deterministic) and the summary says so; without it the summary records ``False``."""
    import spikescan

    monkeypatch.delenv("SPIKESCAN_DETERMINISTIC", raising=False)
    args = ["--epochs", "1", "--batch-size", "16", "--limit", "32", "--hidden", "8", "--verbose", "0"]
    try:
        plain = example("yinyang").main(args + ["--output", str(tmp_path / "plain.json")])
        assert plain["deterministic"] is False and not spikescan.deterministic()
        det = example("yinyang").main(args + ["--deterministic", "--output", str(tmp_path / "det.json")])
        assert det["deterministic"] is True and spikescan.deterministic()
        assert json.loads((tmp_path / "det.json").read_text())["deterministic"] is True
        assert det["test_accuracy"] == plain["test_accuracy"]  # the same run: NumPy inputs are deterministic anyway
    finally:
        spikescan.set_deterministic(None)


def test_yinyang_timing(tmp_path):
    returned = example("yinyang_timing").main(["--epochs", "1", "--batch-size", "16", "--limit", "32", "--hidden",
                                               "8", "--bin-widths", "1.0", "0.1", "--verbose", "0",
                                               "--output", str(tmp_path / "timing.json")])
    check_summary(tmp_path / "timing.json", returned, "yinyang_timing")
    runs = returned["runs"]
    assert [r["bin_width_ms"] for r in runs] == [None, 1.0, 0.1]
    assert returned["test_accuracy"] == runs[0]["test_accuracy"]
    assert all(0.0 <= r["test_accuracy"] <= 1.0 and r["capped_spikes"] >= 0 for r in runs)
    with pytest.raises(SystemExit):
        example("yinyang_timing").main(["--bin-widths", "0"])


@pytest.mark.parametrize("widths, message", [(["inf"], "must be a positive number, got inf"),
                                             (["1", "1.0"], "names a width twice: 1 1"),
                                             (["0.1", "0.1000001", "0.1"], "names a width twice")])
def test_yinyang_timing_bin_widths_are_checked_before_training(capsys, widths, message):
    """An infinite width failed in bin_times after the exact run had trained; a width given twice (or two that the
    backup folders' names merged: bins_0.1ms for 0.1 and 0.1000001) made the second run restore the first one's
    finished backup with --backup-dir and report it as its own result."""
    with pytest.raises(SystemExit) as exc:
        example("yinyang_timing").main(["--bin-widths", *widths])
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_yinyang_timing_runs_of_close_widths_back_up_apart(tmp_path):
    returned = example("yinyang_timing").main(["--epochs", "1", "--batch-size", "16", "--limit", "16", "--hidden",
                                               "4", "--bin-widths", "0.1", "0.1000001", "--verbose", "0",
                                               "--backup-dir", str(tmp_path / "backup")])
    assert [r["resumed_from_epoch"] for r in returned["runs"]] == [None, None, None]
    assert len({r["input"] for r in returned["runs"]}) == 3
