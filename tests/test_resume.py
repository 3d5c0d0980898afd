"""Training that loses nothing: ``examples/yinyang.py --backup-dir D --backup-every N`` killed mid-epoch resumes
from its backup when the same command runs again. One process per backend:

    KERAS_BACKEND=torch python -m pytest tests/test_resume.py
    KERAS_BACKEND=jax python -m pytest tests/test_resume.py
    KERAS_BACKEND=tensorflow python -m pytest tests/test_resume.py

The kill is the test hook of ``examples/_common.py``: ``SPIKESCAN_EXAMPLE_KILL_AFTER_BATCHES=K`` ends the script with
``os._exit`` after its K-th training batch (no clean-up, as a kill), after printing the calibration factors. The
script runs in subprocesses; the backup left behind is also loaded into a fresh model here to check that the LIF
layer's non-trainable calibration state (``kernel_scale``, ``calibrated``) is in it.
"""

import json
import math
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from _keras_backend import keras_or_skip

BACKEND, keras = keras_or_skip()

from _examples import EXAMPLES, example  # noqa: E402
KILL_ENV, KILL_STATUS = "SPIKESCAN_EXAMPLE_KILL_AFTER_BATCHES", 75
EPOCHS, LIMIT, BATCH, HIDDEN, EVERY = 4, 64, 16, 8, 2
BATCHES_PER_EPOCH = LIMIT // BATCH
# Killed after batch 3 (0-based 2) of the second epoch: the last backup (every 2 batches) is one batch old.
KILL_AFTER = BATCHES_PER_EPOCH + 3
# --max-spikes 1 makes the first-batch calibration scale the kernel (bursts the recording would cap) on both
# backends, so a recalibration on resumption would show.
FLAGS = ["--epochs", str(EPOCHS), "--limit", str(LIMIT), "--hidden", str(HIDDEN), "--batch-size", str(BATCH),
         "--max-spikes", "1", "--backup-every", str(EVERY), "--verbose", "2"]


def yinyang_module():
    """``examples/yinyang.py`` as a module (it imports ``_common`` from ``examples/``)."""
    return example("yinyang")


def run_script(tmp_path, *extra, kill_after=None):
    env = {k: v for k, v in os.environ.items() if k != KILL_ENV}
    env.update(KERAS_BACKEND=BACKEND, PYTHONUNBUFFERED="1")
    if kill_after is not None:
        env[KILL_ENV] = str(kill_after)
    return subprocess.run([sys.executable, str(EXAMPLES / "yinyang.py"), *FLAGS, *extra], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)


def epochs_and_losses(stdout):
    """The 1-based epoch numbers keras announced (``Epoch k/E``) and the training loss of each finished epoch."""
    epochs = [int(m) for m in re.findall(rf"^Epoch (\d+)/{EPOCHS}$", stdout, re.M)]
    losses = [float(m) for m in re.findall(r"^\d+/\d+ .* - loss: (\S+)", stdout, re.M)]
    return epochs, losses


def test_killed_run_resumes(tmp_path):
    backup, output = tmp_path / "backup", tmp_path / "summary.json"
    args = ["--backup-dir", str(backup), "--output", str(output)]

    killed = run_script(tmp_path, *args, kill_after=KILL_AFTER)
    assert killed.returncode == KILL_STATUS, killed.stdout + killed.stderr
    assert not output.exists()
    epochs, losses = epochs_and_losses(killed.stdout)
    assert epochs == [1, 2] and len(losses) == 1, killed.stdout  # killed during the second epoch
    (hook,) = [line for line in killed.stderr.splitlines() if line.startswith(KILL_ENV)]
    at_kill = json.loads(hook.split(": ", 1)[1])
    assert at_kill["batches"] == KILL_AFTER
    calibration = at_kill["calibration"]
    assert len(calibration) == 1 and calibration[0] != 1.0, calibration  # the first batch did calibrate

    # The backup: mid-epoch (epoch index 1, its batch index 1), holding the calibration state.
    metadata = json.loads((backup / "training_metadata.json").read_text())
    assert metadata == {"epoch": 1, "batch": 1}
    yinyang = yinyang_module()
    model = yinyang.build_model(HIDDEN, 1, 3e-3, EPOCHS * BATCHES_PER_EPOCH)
    model.optimizer.build(model.trainable_variables)
    model.load_weights(backup / "latest.weights.h5")
    hidden = model.get_layer("hidden")
    assert int(keras.ops.convert_to_numpy(hidden.calibrated)) == 1
    assert round(float(keras.ops.convert_to_numpy(hidden.kernel_scale)), 4) == calibration[0]
    assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == BATCHES_PER_EPOCH + EVERY

    # Other flags than the backup's: a clear stop, the backup left alone.
    with pytest.raises(SystemExit) as exc:
        yinyang.main([*FLAGS, "--hidden", str(HIDDEN + 1), "--verbose", "0", *args])
    assert "other flags" in str(exc.value.code) and "hidden: 8 -> 9" in str(exc.value.code)
    assert (backup / "latest.weights.h5").is_file()

    resumed = run_script(tmp_path, *args)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"resuming from the backup in {backup}: 1 epoch(s) done" in resumed.stderr
    epochs_after, losses_after = epochs_and_losses(resumed.stdout)
    assert epochs_after == [2, 3, 4], resumed.stdout  # only the remaining epochs, the interrupted one from its start
    assert len(losses_after) == 3 and all(math.isfinite(x) for x in losses_after), resumed.stdout
    assert losses_after[0] <= 1.05 * losses[-1], (losses, losses_after)  # no step back after resumption

    summary = json.loads(output.read_text())
    assert summary["epochs"] == EPOCHS and summary["resumed_from_epoch"] == 1
    assert summary["calibration"] == calibration  # restored, not recalibrated on the first resumed batch
    assert np.isfinite(summary["test_accuracy"])
    assert not backup.exists()  # deleted once the summary was written


def test_backup_flags(tmp_path, capsys):
    yinyang = yinyang_module()
    with pytest.raises(SystemExit) as exc:
        yinyang.main(["--backup-dir", str(tmp_path), "--backup-every", "0"])
    assert exc.value.code == 2 and "--backup-every: must be a positive integer, got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        yinyang.main(["--epochs", "1", "--limit", "16", "--hidden", "4", "--verbose", "0", "--backup-every", "2"])
    assert "--backup-every needs --backup-dir" in str(exc.value.code)


def test_finished_run_leaves_no_backup(tmp_path):
    backup = tmp_path / "backup"
    summary = yinyang_module().main(["--epochs", "1", "--limit", "16", "--hidden", "4", "--batch-size", "8",
                                     "--verbose", "0", "--backup-dir", str(backup), "--backup-every", "1"])
    assert summary["resumed_from_epoch"] is None and not backup.exists()


def test_a_backup_dir_with_other_files_is_refused_and_kept(tmp_path):
    """The backup folder is deleted at the end of a run: a folder that holds other files (the data, say) is refused
    before training, and nothing in it is touched."""
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit) as exc:
        yinyang_module().main(["--epochs", "1", "--limit", "16", "--hidden", "4", "--verbose", "0",
                               "--backup-dir", str(shared)])
    assert "already holds other files (notes.txt)" in str(exc.value.code)
    assert (shared / "notes.txt").read_text() == "mine"
    # A backup of ours beside the files (a marker, a run's flags in a subfolder) does not make them ours.
    (shared / "bins_1ms").mkdir()
    (shared / "bins_1ms" / "run_flags.json").write_text("{}")
    (shared / ".spikescan_backup").write_text("marker")
    (shared / "bins_1ms" / "data.csv").write_text("mine too")
    with pytest.raises(SystemExit) as exc:
        yinyang_module().main(["--epochs", "1", "--limit", "16", "--hidden", "4", "--verbose", "0",
                               "--backup-dir", str(shared)])
    assert "already holds other files (bins_1ms/data.csv, notes.txt)" in str(exc.value.code)
    assert (shared / "notes.txt").read_text() == "mine" and (shared / "bins_1ms" / "data.csv").exists()


def test_a_backup_dir_with_other_files_stops_every_rank(tmp_path, monkeypatch):
    """Under torchrun rank 0 refused the folder and the other ranks went on into fit, where they died on gloo's
    "Connection closed by peer": every rank checks the folder (rank 0 alone writes to it)."""
    common = example("_common")
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "notes.txt").write_text("mine")
    monkeypatch.setattr(common, "is_chief", lambda: False)
    args = yinyang_module()._common.parser("", epochs=1, batch_size=8, hidden=4, learning_rate=1e-3,
                                           max_spikes=2).parse_args(["--backup-dir", str(shared)])
    with pytest.raises(SystemExit, match=r"already holds other files \(notes.txt\)"):
        common.fit_callbacks(args)


def test_two_runs_cannot_share_a_backup_dir(tmp_path):
    """Two runs given one backup folder both crashed (h5py's bare "unable to lock file", and a backup "cut short"):
    the first run locks it, and the second stops at once naming the folder; the lock goes with the first run."""
    common = example("_common")
    backup = tmp_path / "backup"
    common._claim_backup_dir(str(backup))  # this process: the first run
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import _common; "
            "_common._claim_backup_dir(sys.argv[2])")
    other = subprocess.run([sys.executable, "-c", code, str(EXAMPLES), str(backup)], capture_output=True, text=True,
                           timeout=120, env=dict(os.environ, KERAS_BACKEND=BACKEND))
    assert other.returncode != 0 and f"--backup-dir {backup} is in use by another run" in other.stderr, other.stderr
    common._release_backup_dir(str(backup))
    again = subprocess.run([sys.executable, "-c", code, str(EXAMPLES), str(backup)], capture_output=True, text=True,
                           timeout=120, env=dict(os.environ, KERAS_BACKEND=BACKEND))
    assert again.returncode == 0, again.stderr


def test_a_kill_while_writing_a_backup_leaves_the_previous_one(tmp_path, monkeypatch):
    """Keras overwrote the backup in place, so a SIGTERM while it wrote left a file that could not be read and the
    whole run was lost: the new backup is written beside the old one and moved over it only once complete."""
    from spikescan.datasets import SpikeBatches, yinyang
    from spikescan_keras import LIFLayer, LIReadout

    common = example("_common")
    data = yinyang(16, seed=1)
    model = keras.Sequential([keras.Input((5, 1)), LIFLayer(4, tau_mem=20.0, tau_syn=10.0, max_spikes=2),
                              LIReadout(3, tau_mem=20.0, tau_syn=10.0, t_max=60.0)])
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    backup = common.Backup(str(tmp_path), batches=None)
    model.fit(SpikeBatches(data, batch_size=8), epochs=1, verbose=0, callbacks=[backup])
    saved = {name: (tmp_path / name).read_bytes() for name in ("latest.weights.h5", "training_metadata.json")}
    save_weights = model.save_weights

    def killed(filepath, overwrite=True):  # half a file, then the signal
        with open(filepath, "wb") as f:
            f.write(b"\x89HDF\r\n\x1a\n" + b"\0" * 10)
        raise KeyboardInterrupt

    monkeypatch.setattr(model, "save_weights", killed)
    with pytest.raises(KeyboardInterrupt):
        model.fit(SpikeBatches(data, batch_size=8), epochs=2, verbose=0, callbacks=[backup])
    for name, content in saved.items():
        assert (tmp_path / name).read_bytes() == content, name
    monkeypatch.setattr(model, "save_weights", save_weights)
    model.load_weights(tmp_path / "latest.weights.h5")  # whole


def test_bad_flags_name_themselves(capsys):
    yinyang = yinyang_module()
    for flag, value, message in (("--epochs", "-3", "must be a positive integer, got -3"),
                                 ("--batch-size", "0", "must be a positive integer, got 0"),
                                 ("--limit", "0", "must be a positive integer, got 0"),
                                 ("--hidden", "0", "must be a positive integer, got 0"),
                                 ("--learning-rate", "-1e-3", "must be a positive number, got -1e-3"),
                                 ("--output", "", "must be the path of a JSON file, got an empty string")):
        with pytest.raises(SystemExit) as exc:
            yinyang.main([f"{flag}={value}"])
        assert exc.value.code == 2 and f"{flag}: {message}" in capsys.readouterr().err


def test_a_failed_command_leaves_no_output_folder(tmp_path, capsys):
    """--output creates its folder while the flags are parsed; when a later flag (or a script's own check) fails,
    the folders it created are removed again, and folders that were there or that hold files stay."""
    output = tmp_path / "new" / "sub" / "summary.json"
    for argv in (["--output", str(output), "--epochs", "0"], ["--output", str(output), "--bin-widths", "1", "1.0"]):
        module = yinyang_module() if "--epochs" in argv else example("yinyang_timing")
        with pytest.raises(SystemExit) as exc:
            module.main(argv)
        assert exc.value.code == 2 and not (tmp_path / "new").exists(), argv
    capsys.readouterr()
    (tmp_path / "kept").mkdir()
    with pytest.raises(SystemExit):
        yinyang_module().main(["--output", str(tmp_path / "kept" / "a" / "s.json"), "--epochs", "0"])
    assert (tmp_path / "kept").is_dir() and not (tmp_path / "kept" / "a").exists()


def test_output_folder_is_created_at_the_start(tmp_path):
    output = tmp_path / "new" / "sub" / "summary.json"
    yinyang_module().main(["--epochs", "1", "--limit", "16", "--hidden", "4", "--verbose", "0",
                           "--output", str(output)])
    assert json.loads(output.read_text())["dataset"] == "yinyang"


def test_resumed_epochs_shuffle_as_the_uninterrupted_run(tmp_path):
    """A run resumed after epoch E shuffles epoch E as the uninterrupted run did (Keras advances the batches' epoch
    once before the first one, so restoring the bare epoch number replayed the previous epoch's order)."""
    from spikescan.datasets import SpikeBatches, yinyang
    from spikescan_keras import LIFLayer, LIReadout

    common = example("_common")
    data = yinyang(24, seed=1)

    class Orders(keras.callbacks.Callback):
        def __init__(self, batches):
            super().__init__()
            self.batches, self.seen = batches, {}

        def on_epoch_begin(self, epoch, logs=None):
            self.seen[epoch] = self.batches._order.tolist()

    def fit(epochs, backup_dir):
        keras.utils.set_random_seed(0)
        batches = SpikeBatches(data, batch_size=8, shuffle=True, seed=3)
        model = keras.Sequential([keras.Input((5, 1)), LIFLayer(4, tau_mem=20.0, tau_syn=10.0, max_spikes=2),
                                  LIReadout(3, tau_mem=20.0, tau_syn=10.0, t_max=60.0)])
        model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        orders = Orders(batches)
        model.fit(batches, epochs=epochs, verbose=0,
                  callbacks=[common.Backup(str(backup_dir), batches=batches), orders])
        return orders.seen

    whole = fit(3, tmp_path / "whole")
    assert len({tuple(o) for o in whole.values()}) == 3  # three different shuffles
    fit(2, tmp_path / "cut")  # "killed" after epoch 2: its backup is left behind
    resumed = fit(3, tmp_path / "cut")
    assert list(resumed) == [2] and resumed[2] == whole[2]


def test_a_cut_short_backup_names_its_folder(tmp_path):
    """A kill while Keras writes the backup leaves a truncated file: the resume stops with a message that names the
    folder and what to do, not h5py's bare OSError."""
    backup = tmp_path / "backup"
    backup.mkdir()
    (backup / example("_common").BACKUP_MARKER).write_text("")  # the run's own folder
    (backup / "latest.weights.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 10)  # an HDF5 header cut short
    with pytest.raises(SystemExit) as exc:
        yinyang_module().main(["--epochs", "1", "--limit", "16", "--hidden", "4", "--verbose", "0",
                               "--backup-dir", str(backup)])
    assert f"the backup in {backup} cannot be read" in str(exc.value.code)
    assert "delete the folder" in str(exc.value.code)


@pytest.mark.parametrize("script", ["yinyang", "randman", "yinyang_timing"])
def test_a_run_resumed_at_an_epoch_end_trains_as_the_uninterrupted_one(tmp_path, script):
    """Killed right after an epoch's backup, the resumed run goes on with the batches, in the order, of the run that
    was never interrupted, and so ends with its result. (``fit``'s own shuffle drew from Python's and torch's global
    random state, which a resumption starts afresh: the resumed epochs replayed the first epochs' orders.)"""
    env = {k: v for k, v in os.environ.items() if k != KILL_ENV}
    env.update(KERAS_BACKEND=BACKEND, PYTHONUNBUFFERED="1")
    flags = [str(EXAMPLES / f"{script}.py"), "--epochs", "3", "--limit", "32", "--batch-size", "8", "--hidden", "8",
             "--verbose", "0"]

    def run(*extra, kill_after=None):
        run_env = env if kill_after is None else {**env, KILL_ENV: str(kill_after)}
        return subprocess.run([sys.executable, *flags, *extra], cwd=tmp_path, env=run_env, capture_output=True,
                              text=True, timeout=300)

    whole = run("--output", str(tmp_path / "whole.json"))
    assert whole.returncode == 0, whole.stderr
    backup = ["--backup-dir", str(tmp_path / "backup")]
    killed = run(*backup, kill_after=9)  # the first batch of the third epoch, after the second epoch's backup
    assert killed.returncode == KILL_STATUS, killed.stderr
    resumed = run(*backup, "--output", str(tmp_path / "resumed.json"))
    assert resumed.returncode == 0, resumed.stderr
    a, b = (json.loads((tmp_path / f"{name}.json").read_text()) for name in ("whole", "resumed"))
    if script == "yinyang_timing":  # killed in its first run (exact times); the second one starts afresh
        assert [r["resumed_from_epoch"] for r in b["runs"]] == [2, None]
        assert [r["test_loss"] for r in b["runs"]] == [r["test_loss"] for r in a["runs"]]
    else:
        assert b["resumed_from_epoch"] == 2
        assert (b["test_loss"], b["firing"]) == (a["test_loss"], a["firing"])


@pytest.mark.parametrize("flag, path", [("--output", "backup/summary.json"), ("--plot", "backup"),
                                        ("--output", "backup/sub/summary.json")])
def test_results_inside_the_backup_dir_are_refused(tmp_path, flag, path):
    """The backup folder is deleted once the summary is written: a summary or plots inside it would go with it."""
    if flag == "--plot":
        pytest.importorskip("matplotlib")
    backup, target = tmp_path / "backup", tmp_path / path
    with pytest.raises(SystemExit) as exc:
        yinyang_module().main(["--epochs", "1", "--limit", "16", "--hidden", "4", "--verbose", "0",
                               "--backup-dir", str(backup), flag, str(target)])
    assert f"{flag} {target} lies in --backup-dir" in str(exc.value.code)
