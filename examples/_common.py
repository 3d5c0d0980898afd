"""Shared pieces of the example scripts: flags, data loading with clear errors, the compile / fit / evaluate loop
and the JSON summary. Initial weights need no help here: every LIFLayer calibrates its kernel scale on its first
training batch and revives dead neurons by itself (``LIFLayer(calibrate=..., silence_penalty=...)``).

Training that loses nothing: with ``--backup-dir DIR`` the scripts back up the whole training state (every
weight, the LIF layers' non-trainable ``kernel_scale`` / ``calibrated`` / statistics included, the optimizer with its
step count, the epoch) to DIR at the end of every epoch and, with ``--backup-every N``, every N training batches
(``keras.callbacks.BackupAndRestore``). Run the same command again after a kill and it resumes from the backup; the
backup is deleted once the JSON summary is written.

Data-parallel training (torch backend): started by ``torchrun --nproc_per_node=N script.py ...``, the scripts that
call ``initialize_distributed`` (yinyang, mnist, shd, ssc) train one model on N processes
(``spikescan_keras.distributed``): ``--batch-size`` stays the global batch size, each process trains on its slice of
every batch, and the weights stay identical. Only rank 0 prints the progress and writes the summary, plots and
backups; the summary records ``world_size``. A ``--backup-dir`` must be a folder that every process can read (every
rank restores from it).

Test hook: the environment variable ``SPIKESCAN_EXAMPLE_KILL_AFTER_BATCHES=K`` ends the process with
``os._exit(KILL_STATUS)`` right after its K-th training batch (after that batch's backup, if one is due), as a kill
would, and prints ``SPIKESCAN_EXAMPLE_KILL_AFTER_BATCHES: {"batches": K, "calibration": [...]}`` to stderr first;
tests/test_resume.py uses it. Not for other use.

Import it after ``KERAS_BACKEND`` is set (the scripts default it to ``torch``). Not part of the installed package:
the scripts put ``examples/`` on ``sys.path`` to import it.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import sys
import time

import keras
import numpy as np
from keras import ops

import spikescan
from spikescan.datasets import SpikeBatches
from spikescan_keras import FiringMonitor, LIFLayer, distributed


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser that removes the folders ``--output`` created (``_output_path``) when the command line turns
    out to be wrong (``error``: a later flag, or a script's own check after parsing): a failed command leaves
    nothing behind. Only folders it created and that are still empty go."""

    created = []  # the folders _output_path made, deepest last

    def error(self, message):
        for folder in reversed(_Parser.created):
            try:
                os.rmdir(folder)
            except OSError:  # not empty, or gone
                pass
        _Parser.created.clear()
        super().error(message)


PLOT_HELP = ("after training, write PNG figures to DIR: the learning curves, the test set's confusion matrix, and the "
             "input and every LIF layer's spikes for one test sample of each of the first classes; needs matplotlib")


def _plot_dir(value):
    """``--plot DIR``: refused at parsing when matplotlib is missing, before any data is loaded or trained on."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise argparse.ArgumentTypeError("needs matplotlib: pip install 'spikescan[plot]'") from None
    return value


def parser(doc, *, epochs, batch_size, hidden, learning_rate, max_spikes,
           data_dir_help="folder holding the dataset files", plot_help=None):
    """ArgumentParser with the flags every example shares; a script adds its own afterwards. ``plot_help``: the
    help of ``--plot DIR`` (``PLOT_HELP``: the figures of ``write_plots``), None: no such flag."""
    _Parser.created.clear()
    p = _Parser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    if plot_help is not None:
        p.add_argument("--plot", type=_plot_dir, default=None, metavar="DIR", help=plot_help)
    p.add_argument("--epochs", type=_positive_int, default=epochs)
    p.add_argument("--batch-size", type=_positive_int, default=batch_size)
    p.add_argument("--data-dir", default=None, help=data_dir_help)
    p.add_argument("--output", type=_output_path, default=None,
                   help="path of a JSON summary (its folder is created at the start)")
    p.add_argument("--limit", type=_positive_int, default=None, metavar="N",
                   help="use only the first N samples of each split (smoke tests)")
    p.add_argument("--hidden", type=_positive_int, default=hidden, help="LIF neurons per hidden layer")
    p.add_argument("--max-spikes", type=_positive_int, default=max_spikes,
                   help="output spikes recorded per hidden neuron (extra spikes are counted in capped_spikes)")
    p.add_argument("--learning-rate", type=_positive_float, default=learning_rate,
                   help="peak of a cosine-decayed Adam")
    p.add_argument("--weight-decay", type=_non_negative_float, default=0.0,
                   help="decoupled weight decay of Adam (AdamW) on the synaptic and recurrent weight matrices only "
                        "(not on delays, time constants or thresholds); default 0: none")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--verbose", type=int, default=2, choices=(0, 1, 2), help="keras verbosity of fit")
    p.add_argument("--backup-dir", default=None, metavar="DIR",
                   help="back up the training state to DIR (a folder of its own: it is deleted at the end) at the end "
                        "of each epoch; run the same command again after an interruption and it resumes from the "
                        "backup (default: no backup)")
    p.add_argument("--deterministic", action="store_true",
                   help="bit-identical spiking layers and readouts from run to run on a GPU "
                        "(spikescan.set_deterministic; NumPy inputs always are); the summary records it")
    p.add_argument("--backup-every", type=_positive_int, default=None, metavar="N",
                   help="with --backup-dir, also back up every N training batches, so an interruption mid-epoch "
                        "loses at most N batches of training (default: at the end of each epoch only)")
    return p


def add_time_constants(p, tau_mem, tau_syn):
    """``--tau-mem`` and ``--tau-syn`` (ms, positive), the time constants of every layer, with these defaults."""
    for flag, default, kind in (("--tau-mem", tau_mem, "membrane"), ("--tau-syn", tau_syn, "synaptic")):
        p.add_argument(flag, type=_positive_float, default=default, help=f"{kind} time constant of every layer (ms)")


def initialize_distributed(args=None):
    """Join the process group when started by ``torchrun`` (``spikescan_keras.distributed.initialize``), set the
    CPU threads (``cpu_threads``) and, with ``args.deterministic``, spikescan's bitwise-reproducible mode; returns
    the number of processes (1 otherwise). Call it before building the model."""
    apply_deterministic(args)
    cpu_threads()
    return distributed.initialize()


def apply_deterministic(args):
    """``spikescan.set_deterministic(True)`` when the run asked for it (``--deterministic``)."""
    if args is not None and getattr(args, "deterministic", False):
        spikescan.set_deterministic(True)


def cpu_threads():
    """On a CPU with the torch backend, torch's own operations get one thread (unless ``OMP_NUM_THREADS`` says
    otherwise): in these models they are tiny (a readout and a loss on a batch), while the spiking layers' compiled
    kernels use every core, and torch's idle OpenMP workers spinning between its operations took those cores. On the
    2-core development machine two Yin-Yang epochs took 6.0-7.5 s this way against 11-23 s with torch's default."""
    if keras.backend.backend() != "torch" or "OMP_NUM_THREADS" in os.environ:
        return
    import torch

    if not torch.cuda.is_available():
        torch.set_num_threads(1)


def is_chief():
    """Whether this process prints the summary and writes files: rank 0, or the only process."""
    return distributed.rank() == 0


def verbosity(args):
    """``args.verbose`` on rank 0, silent on the other ranks."""
    return args.verbose if is_chief() else 0


def _positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def _float_type(name, low, high, *, low_open, rule):
    """An argparse ``type=`` named ``name`` (argparse quotes it for text that is no number): a float in ``(low,
    high)`` with ``low`` itself allowed unless ``low_open`` (NaN is never in range), else ``must be {rule}``."""
    def parse(text):
        value = float(text)
        if not ((low < value) if low_open else (low <= value)) or not value < high:
            raise argparse.ArgumentTypeError(f"must be {rule}, got {text}")
        return value

    parse.__name__ = name
    return parse


_positive_float = _float_type("_positive_float", 0.0, float("inf"), low_open=True, rule="a positive number")
_non_negative_float = _float_type("_non_negative_float", 0.0, float("inf"), low_open=False,
                                  rule="a non-negative number")
probability = _float_type("probability", 0.0, 1.0, low_open=False, rule="a number in [0, 1)")  # rates in [0, 1)


def _output_path(text):
    """``--output``: its folder is created now, so a long run does not fail at its end on a missing folder."""
    if not text.strip():  # an empty path would write nothing, silently
        raise argparse.ArgumentTypeError("must be the path of a JSON file, got an empty string")
    folder = os.path.dirname(os.path.abspath(text))
    missing = []  # the folders this call creates, outermost first
    parent = folder
    while not os.path.exists(parent) and os.path.dirname(parent) != parent:
        missing.insert(0, parent)
        parent = os.path.dirname(parent)
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as err:
        raise argparse.ArgumentTypeError(f"cannot create the folder of {text}: {err}") from err
    _Parser.created.extend(missing)
    if os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text} is a folder; give the path of a JSON file")
    return text


# Written at the top of --backup-dir: the folder is ours to delete at the end of the run.
BACKUP_MARKER = ".spikescan_backup"


# What a backup folder of ours holds: the marker, the run's flags, keras' BackupAndRestore files (and their previous
# versions); yinyang_timing keeps one such folder per run inside it.
_BACKUP_FILES = {"run_flags.json", "run_flags.json.partial", "latest.weights.h5", "latest.weights.h5.bkp",
                 "training_metadata.json", "training_metadata.json.bkp", "partial.weights.h5",
                 "training_metadata.json.partial", ".lock"}


def _not_backup_files(directory, depth=0):
    """The entries of ``directory`` (paths relative to it, sorted) that no backup of ours writes."""
    other = []
    for entry in sorted(os.listdir(directory)):
        path = os.path.join(directory, entry)
        if entry in _BACKUP_FILES or entry == BACKUP_MARKER:
            if os.path.isfile(path):
                continue
        elif depth == 0 and os.path.isdir(path) and not os.path.islink(path):
            other += [os.path.join(entry, e) for e in _not_backup_files(path, depth + 1)]
            continue
        other.append(entry)
    return other


def _check_backup_dir(directory):
    """Stop unless ``directory`` is new, empty, or holds nothing but what our backups write (their files, and folders
    of them): any other content would be deleted with it at the end, so it is refused, named. Every rank checks (it
    only reads), so that all of them stop, not rank 0 alone while the others wait for it in ``fit``."""
    if os.path.isdir(directory):
        other = _not_backup_files(directory)
        if other:
            listed = ", ".join(other[:5]) + (", ..." if len(other) > 5 else "")
            raise SystemExit(f"error: --backup-dir {directory} already holds other files ({listed}); the backup "
                             "folder is deleted at the end of the run, so give it a folder of its own")
    elif os.path.exists(directory):
        raise SystemExit(f"error: --backup-dir {directory} is a file, not a folder")


_lock_files = {}  # the open lock files of this process's backup folders (by real path), held until it exits


def _release_backup_dir(directory):
    """Let go of this process's lock on ``directory`` (a run that stopped, or finished, in a process that goes on)."""
    handle = _lock_files.pop(os.path.realpath(directory), None)
    if handle is not None:
        handle.close()


def _claim_backup_dir(directory):
    """Make ``directory`` (checked by ``_check_backup_dir``) the run's backup folder, locked for this process: a
    second run given the same folder stops at once. Two runs writing one backup crashed (h5py's bare "unable to lock
    file" in one, and the other told its backup was cut short)."""
    os.makedirs(directory, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # not on POSIX: no lock
        fcntl = None
    key = os.path.realpath(directory)
    if fcntl is not None and key not in _lock_files:  # (a run of this process may hold it already: a resumption)
        handle = open(os.path.join(directory, ".lock"), "a")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            raise SystemExit(f"error: --backup-dir {directory} is in use by another run (its lock is held); give "
                             "each run a folder of its own") from None
        _lock_files[key] = handle
    with open(os.path.join(directory, BACKUP_MARKER), "w") as f:
        f.write("the training backup of a spikescan example; deleted at the end of the run\n")


KILL_ENV, KILL_STATUS = "SPIKESCAN_EXAMPLE_KILL_AFTER_BATCHES", 75
# Flags that may change between an interrupted run and its resumption (everything else must match the backup).
_FREE_FLAGS = {"verbose", "output", "plot", "backup_dir", "backup_every", "data_dir"}


class Backup(keras.callbacks.BackupAndRestore):
    """``keras.callbacks.BackupAndRestore`` for the example scripts.

    Differences: with ``every`` (batches) it backs up every ``every`` batches *and* at the end of each epoch; a
    resumed run keeps counting epochs from the restored one (keras restarts its own count at 0, so a backup written
    during the first resumed epoch would send a second resumption back to epoch 0); the flags of the run are kept
    in ``DIR/run_flags.json`` and a backup written with other flags stops the script (``SystemExit``) instead of
    loading into a different model; ``batches`` (a ``SpikeBatches``) continues with the shuffle of the restored
    epoch. The backup is kept after ``fit`` (the script deletes it with ``remove_backup`` once its summary is
    written), so a run interrupted after training resumes with zero epochs left and only evaluates.

    A run interrupted mid-epoch restarts that epoch from its first batch, with the weights and optimizer state of
    the last backup (at most ``every`` batches old). ``resumed_from_epoch`` is the number of finished epochs the
    backup held (None when nothing was restored).
    """

    def __init__(self, backup_dir, *, every=None, flags=None, batches=None, lock_dir=None):
        super().__init__(backup_dir, save_freq="epoch" if every is None else int(every), delete_checkpoint=False)
        self.flags, self.batches = flags, batches
        self.lock_dir = lock_dir  # the folder _claim_backup_dir locked for the run, let go when the backup is refused
        self.resumed_from_epoch = None
        self._flags_path = os.path.join(backup_dir, "run_flags.json")

    def on_train_begin(self, logs=None):
        restoring = os.path.exists(self._weights_path)
        if restoring and self.flags is not None and os.path.exists(self._flags_path):
            with open(self._flags_path) as f:
                saved = json.load(f)
            differ = {k: (saved.get(k), v) for k, v in self.flags.items() if saved.get(k) != v}
            if differ:
                changes = ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in sorted(differ.items()))
                self._release()
                raise SystemExit(f"error: the backup in {self.backup_dir} was written by a run with other flags "
                                 f"({changes}); rerun with the same flags, or delete {self.backup_dir}")
        try:
            super().on_train_begin(logs)
        except (OSError, ValueError, KeyError) as err:  # e.g. a kill while the backup was being written
            self._release()
            raise SystemExit(f"error: the backup in {self.backup_dir} cannot be read ({type(err).__name__}: {err}); "
                             "it was probably cut short by an interruption while being written: delete the folder to "
                             "start over (the last finished epoch's backup is not kept separately)") from err
        if restoring:
            epoch = int(self.model._initial_epoch or 0)
            self._current_epoch = self.resumed_from_epoch = epoch
            if self.batches is not None and hasattr(self.batches, "_permutation"):
                # On top of the epochs the batches have already been advanced (Keras' epoch iterator calls
                # on_epoch_end once before the first epoch): the uninterrupted run's epoch k shuffles with that
                # offset plus k, so the resumed one must too.
                self.batches.epoch += epoch
                self.batches._order = self.batches._permutation()
            if is_chief():  # one line for the run, not one per rank
                print(f"resuming from the backup in {self.backup_dir}: {epoch} epoch(s) done", file=sys.stderr,
                      flush=True)
        if not is_chief():  # data-parallel training: rank 0 writes the backup folder
            return
        os.makedirs(self.backup_dir, exist_ok=True)
        if self.flags is not None:
            partial = self._flags_path + ".partial"  # other ranks may be reading the flags: replace atomically
            with open(partial, "w") as f:
                json.dump(self.flags, f, indent=2)
            os.replace(partial, self._flags_path)

    def _release(self):
        if self.lock_dir is not None:
            _release_backup_dir(self.lock_dir)

    def _save_model(self):
        """Write the weights and the metadata (epoch) each to a file of its own beside the backup, then move them
        over it (``os.replace``, atomic): a kill while writing leaves the previous backup whole. Keras writes in
        place, and a SIGTERM then left a backup that could not be read, losing the run. The weights move first: a
        kill between the two moves leaves the newer weights with the older epoch count, which repeats batches
        rather than skipping any. Rank 0 writes (data-parallel ranks hold the same state)."""
        if not is_chief():
            return
        os.makedirs(self.backup_dir, exist_ok=True)
        weights = os.path.join(self.backup_dir, "partial.weights.h5")  # keras wants the .weights.h5 suffix
        self.model.save_weights(filepath=weights, overwrite=True)
        metadata = self._training_metadata_path + ".partial"
        with open(metadata, "w") as f:
            json.dump({"epoch": self._current_epoch, "batch": self._last_batch_seen}, f)
        os.replace(weights, self._weights_path)
        os.replace(metadata, self._training_metadata_path)

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, logs)
        if self.save_freq != "epoch":
            self._save_model()
            self._batches_seen_since_last_saving = 0


class _KillAfterBatches(keras.callbacks.Callback):
    """Test hook (``SPIKESCAN_EXAMPLE_KILL_AFTER_BATCHES``): ``os._exit`` after ``n`` training batches."""

    def __init__(self, n):
        super().__init__()
        self.n, self.seen = n, 0

    def on_train_batch_end(self, batch, logs=None):
        self.seen += 1
        if self.seen >= self.n:
            print(f"{KILL_ENV}: " + json.dumps({"batches": self.seen, "calibration": kernel_scales(self.model)}),
                  file=sys.stderr)
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(KILL_STATUS)


def fit_callbacks(args, *, batches=None, subdir=None):
    """``(callbacks, backup)`` for ``model.fit``: FiringMonitor, the ``Backup`` of ``--backup-dir`` (in its
    ``subdir`` when given; ``backup`` is None without the flag), the test hook of ``KILL_ENV`` and, with several
    processes, ``DistributedDataParallel`` (first)."""
    callbacks, backup = [FiringMonitor()], None
    if args.backup_every is not None and args.backup_dir is None:
        raise SystemExit("error: --backup-every needs --backup-dir")
    if args.backup_dir is not None:
        _refuse_outputs_inside(args)
        _check_backup_dir(args.backup_dir)
        if is_chief():
            _claim_backup_dir(args.backup_dir)
        flags = {k: v for k, v in sorted(vars(args).items()) if k not in _FREE_FLAGS}
        directory = args.backup_dir if subdir is None else os.path.join(args.backup_dir, subdir)
        backup = Backup(directory, every=args.backup_every, flags=flags, batches=batches, lock_dir=args.backup_dir)
        callbacks.append(backup)
    if os.environ.get(KILL_ENV):
        callbacks.append(_KillAfterBatches(int(os.environ[KILL_ENV])))
    if distributed.world_size() > 1:
        # First, as the README says: the callbacks after it see the epoch's logs averaged over the ranks (its
        # broadcast of rank 0's state happens at the first training step, after the backup is restored).
        callbacks.insert(0, distributed.DistributedDataParallel())
    return callbacks, backup


def _refuse_outputs_inside(args):
    """Stop when ``--output`` or ``--plot`` lies in ``--backup-dir``: the folder is deleted once the summary is
    written, and the results with it."""
    backup = os.path.realpath(args.backup_dir)
    for flag, path in (("--output", getattr(args, "output", None)), ("--plot", getattr(args, "plot", None))):
        if path and os.path.commonpath([backup, os.path.realpath(path)]) == backup:
            raise SystemExit(f"error: {flag} {path} lies in --backup-dir {args.backup_dir}, which is deleted at the "
                             "end of the run; write it elsewhere")


def remove_backup(args):
    """Delete ``--backup-dir`` (if given; rank 0 only): called once the run's summary is written. Only a folder
    that carries the run's marker (``_claim_backup_dir``) is deleted."""
    directory = getattr(args, "backup_dir", None)
    if directory is not None and is_chief() and os.path.isfile(os.path.join(directory, BACKUP_MARKER)):
        shutil.rmtree(directory, ignore_errors=True)
        _release_backup_dir(directory)


def load(loader, *args, **kwargs):
    """``loader(*args, **kwargs)``, turning a missing file or a missing optional dependency into ``SystemExit``
    with the loader's message (where to put the files, how to download them), and so a file the loader refuses
    (``ValueError``, ``TypeError``: malformed contents, a label outside the file's classes, named with the file and
    sample; ``OSError``: a corrupt file or archive; ``MemoryError``: the spike tensor would not fit, with the
    script's options that shrink it)."""
    try:
        return loader(*args, **kwargs)
    except MemoryError as err:
        raise SystemExit(f"error: {err} (this script's options: --max-input-spikes, --n-channels, --t-max, "
                         "--limit)") from err
    except (OSError, ImportError, ValueError, TypeError) as err:  # FileNotFoundError is an OSError
        raise SystemExit(f"error: {err}") from err


def device_name():
    """Name of the device keras computes on: the GPU's name, or ``"cpu"``."""
    if keras.backend.backend() == "torch":
        import torch

        return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        return tf.config.experimental.get_device_details(gpus[0]).get("device_name", "gpu") if gpus else "cpu"
    import jax

    device = jax.devices()[0]
    return "cpu" if device.platform == "cpu" else device.device_kind


def lif_layers(model):
    return [layer for layer in model.layers if isinstance(layer, LIFLayer)]


def capped_spikes(model):
    """Output spikes fired but not recorded (beyond ``max_spikes``), summed over the LIF layers."""
    return sum(int(ops.convert_to_numpy(layer.capped_spikes.value)) for layer in lif_layers(model))


def kernel_scales(model):
    """The factor each LIF layer's first-batch calibration applied to its kernel (1.0 when none was needed):
    ``kernel_scale`` over the layer's ``voltage_unit``, where it starts."""
    return [round(float(ops.convert_to_numpy(layer.kernel_scale.value)) / layer.voltage_unit, 4)
            for layer in lif_layers(model)]


# Variables that weight decay leaves alone: delays, time constants and thresholds have no reason to shrink towards 0.
_NO_DECAY = ("delay_kernel", "tau_mem_kernel", "tau_syn_kernel", "threshold")


def optimizer(learning_rate, decay_steps, weight_decay=0.0, alpha=0.01):
    """Adam with a cosine-decayed learning rate (down to ``alpha`` times its peak after ``decay_steps``) and, with
    ``weight_decay``, decoupled weight decay (AdamW) on the weight matrices only."""
    schedule = keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps=max(decay_steps, 1), alpha=alpha)
    adam = keras.optimizers.Adam(schedule, weight_decay=weight_decay or None)
    if weight_decay:
        adam.exclude_from_weight_decay(var_names=list(_NO_DECAY))
    return adam


def compile_model(model, learning_rate, decay_steps, weight_decay=0.0):
    model.compile(optimizer=optimizer(learning_rate, decay_steps, weight_decay),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])


def train(model, train_set, test_set, args, *, val_set=None):
    """Compile, ``fit`` for ``args.epochs`` epochs (shuffled mini-batches, keras progress at ``args.verbose``, the
    LIF layers' firing statistics in the logs), then evaluate on ``test_set``. With several processes each trains
    on its shard of every batch (``spikescan_keras.distributed.shard``) and evaluates the whole test set.

    Returns a dict with test_accuracy, test_loss, seconds (fit), calibration (each LIF layer's calibration factor),
    capped_spikes (over the whole run, evaluation included), the last epoch's firing statistics and
    resumed_from_epoch (``--backup-dir``: the epochs a restored backup held, else None). ``summary`` deletes the
    backup once the summary is written.
    """
    start = time.perf_counter()
    batches = SpikeBatches(train_set, batch_size=args.batch_size, shuffle=True, seed=args.seed)
    compile_model(model, args.learning_rate, args.epochs * len(batches), args.weight_decay)
    val = None if val_set is None else SpikeBatches(val_set, batch_size=args.batch_size)
    callbacks, backup = fit_callbacks(args, batches=batches)
    # shuffle=False: the batches shuffle themselves by seed and epoch, which a resumed run restores; fit's own
    # reordering of the batches draws from Python's global random state, which a resumption does not restore.
    sharded = distributed.shard(batches)
    history = model.fit(sharded, epochs=args.epochs, validation_data=val, shuffle=False,
                        verbose=verbosity(args), callbacks=callbacks)
    seconds = time.perf_counter() - start
    test_loss, test_accuracy = model.evaluate(SpikeBatches(test_set, batch_size=args.batch_size), verbose=0)
    firing = {key: round(values[-1], 4) for key, values in history.history.items() if "/" in key}
    if getattr(args, "plot", None) is not None and is_chief():
        for path in write_plots(model, test_set, history.history, args.plot):
            print(f"wrote {path}", file=sys.stderr)
    return {"test_accuracy": float(test_accuracy), "test_loss": float(test_loss), "seconds": round(seconds, 1),
            "calibration": kernel_scales(model), "capped_spikes": capped_spikes(model), "firing": firing,
            "resumed_from_epoch": None if backup is None else backup.resumed_from_epoch,
            # Several processes: the samples of a last global batch too short to share, left out of every epoch.
            "dropped_last_batch_samples": int(getattr(sharded, "dropped_samples", 0)),
            "history": {key: [round(float(v), 6) for v in values] for key, values in history.history.items()
                        if "/" not in key}}


def write_plots(model, test_set, history, directory, *, classes=3):
    """The PNG figures of ``--plot DIR`` (``PLOT_HELP``) in ``directory``; returns their paths.

    ``learning_curves.png``: loss and accuracy per epoch (training, and validation where there is one);
    ``confusion.png``: the test set's confusion matrix, each true class's row as shares of its samples;
    ``spikes.png``: for one test sample of each of the first ``classes`` classes, the input raster and the spikes of
    every LIF layer (the layers' own outputs: every recorded spike, exact times)."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    import spikescan.plot

    os.makedirs(directory, exist_ok=True)
    paths = []
    epochs = np.arange(1, len(history.get("loss", [])) + 1)
    fig = Figure(figsize=(10, 4))
    for ax, metric in zip(fig.subplots(1, 2), ("loss", "accuracy")):
        for prefix, label in (("", "training"), ("val_", "validation")):
            if history.get(prefix + metric):
                ax.plot(epochs, history[prefix + metric], marker="o", label=label)
        ax.set(xlabel="epoch", ylabel=metric, title=metric)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend()
    paths.append(os.path.join(directory, "learning_curves.png"))
    fig.savefig(paths[-1], dpi=120, bbox_inches="tight")

    logits = model.predict(SpikeBatches(test_set, batch_size=256), verbose=0)
    predicted = np.argmax(logits, axis=1)
    n_classes = logits.shape[1]
    counts = np.zeros((n_classes, n_classes))
    np.add.at(counts, (test_set.labels, predicted), 1)
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    fig = Figure(figsize=(6, 5))
    ax = fig.subplots()
    image = ax.imshow(shares, vmin=0, vmax=1, cmap="Blues")
    fig.colorbar(image, ax=ax, label="share of the true class's test samples")
    ax.set(xlabel="predicted class", ylabel="true class",
           title=f"Test confusion matrix, accuracy {np.mean(predicted == test_set.labels):.1%}")
    paths.append(os.path.join(directory, "confusion.png"))
    fig.savefig(paths[-1], dpi=120, bbox_inches="tight")

    picks = [int(np.flatnonzero(test_set.labels == k)[0]) for k in range(n_classes) if (test_set.labels == k).any()]
    picks = picks[:classes]
    x = test_set.times[picks]
    rows = [("input", x)]
    for layer in model.layers:
        x = layer(x, training=False)
        if isinstance(layer, LIFLayer):
            rows.append((f"{layer.name} ({layer.units} LIF)", np.asarray(keras.ops.convert_to_numpy(x))))
    fig = Figure(figsize=(4 * len(picks), 3 * len(rows)))
    axes = np.asarray(fig.subplots(len(rows), len(picks), sharex=True, squeeze=False))
    for r, (name, times) in enumerate(rows):
        for c, i in enumerate(picks):
            spikescan.plot.raster(times, sample=c, ax=axes[r, c], time_unit="ms")
            axes[r, c].set_title(f"{name}: test sample {i}, class {int(test_set.labels[i])} "
                                 f"(predicted {int(predicted[i])})", fontsize="small")
            axes[r, c].set_ylabel("input channel" if r == 0 else "neuron")
    paths.append(os.path.join(directory, "spikes.png"))
    fig.savefig(paths[-1], dpi=120, bbox_inches="tight")
    return paths


def first(dataset, limit):
    """The first ``limit`` samples of a SpikeDataset (all of them when ``limit`` is None)."""
    return dataset if limit is None else dataset[:limit]


def summary(dataset, args, result, *, dropped_input_spikes=0, **extra):
    """The JSON summary of a run: dataset, test_accuracy, epochs, seconds, device, backend, world_size,
    dropped_input_spikes, capped_spikes, then ``result``'s other entries and ``extra``. Printed, and written to
    ``args.output`` if set, by rank 0 only."""
    out = {"dataset": dataset, "test_accuracy": result["test_accuracy"], "epochs": args.epochs,
           "seconds": result["seconds"], "device": device_name(), "backend": keras.backend.backend(),
           "world_size": distributed.world_size(), "deterministic": spikescan.deterministic(),
           "dropped_input_spikes": int(dropped_input_spikes),
           "capped_spikes": result["capped_spikes"]}
    out.update({k: v for k, v in result.items() if k not in out})
    out.update(hidden=args.hidden, batch_size=args.batch_size, learning_rate=args.learning_rate,
               weight_decay=args.weight_decay, seed=args.seed,
               limit=args.limit, **extra)
    out["args"] = command_line(args)
    if is_chief():
        emit(out, args.output)
    remove_backup(args)
    return out


def stamp():
    """``benchmarks/_stamp.py``'s provenance of a result (commit, dirty flag, machine, versions, device), or None
    where the scripts run outside the repository."""
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "_stamp.py")
    if not os.path.isfile(path):
        return None
    spec = importlib.util.spec_from_file_location("spikescan_benchmarks_stamp", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.stamp()


def command_line(args):
    """Every command-line value of ``args`` (an ``argparse.Namespace``) that JSON holds as it is, by name: the
    summaries' ``args``, so that a result file says how it was made (e.g. ``max_spikes``)."""
    return {k: v for k, v in sorted(vars(args).items()) if v is None or isinstance(v, (bool, int, float, str))}


def emit(summary, output):
    """Add ``stamp`` (``stamp()``: which commit ran, where) to ``summary``, print it as one JSON line and write it to
    ``output`` (if not None); returns it."""
    summary.setdefault("stamp", stamp())
    print(json.dumps(summary))
    if output:
        with open(output, "w") as f:
            json.dump(summary, f, indent=2)
    return summary
