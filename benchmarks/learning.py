"""Does the obvious spiking model learn? Side by side with a non-spiking MLP of the same size, in one run.

"The obvious model" is what a new user writes from the README, with one fixed recipe and no per-dataset tuning:

- features min-max scaled with ``spikescan.encode.scale`` (bounds from the training split, reused on the test
  split), then a latency code ``encode.latency(x, t_max=20, symmetric=True)`` (each feature as two channels,
  ``x`` and ``1 - x``, as the encoder's documentation recommends for tables: with one channel a feature at its
  minimum never spikes and small values arrive last, which cost 22 points on wine in a 30-epoch run) or a rate code
  ``encode.rate(x, t_max=20, max_spikes=8, mode="regular")`` (``--codes poisson`` adds ``mode="poisson"`` with a
  seed per fold; ``--codes raster`` the input of a time-stepped simulator: a Bernoulli raster of 20 bins of 1 ms,
  a value ``x`` spiking in each bin with probability ``0.4 x`` (8 spikes at 1 on average, as the rate code),
  seeded per fold, turned into spike times on the bins' starts by ``spikescan.datasets.from_raster``; a random
  code loses information in the draw, so the entries of these two also train the MLP on each channel's spike count
  of the same tensors, ``counts_mlp_*``: the fair comparison for them);
- ``Sequential([Input((channels, max_in)), LIFLayer(hidden, tau_mem=10, tau_syn=5, max_spikes=8),
  LIReadout(classes, tau_mem=10, tau_syn=5, t_max=40)])``, every other argument at its default (so the kernel
  scale is calibrated on the first training batch and the silence penalty is on);
- ``compile("adam", SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])`` and
  ``fit(x, y, batch_size=B, epochs=E)`` with no callbacks.

The MLP is ``Sequential([Input((features,)), Dense(hidden, "relu"), Dense(classes)])`` on the scaled features,
with the same optimizer, loss, batch size and epochs.

Panel: scikit-learn's bundled iris, wine and breast_cancer tables, each latency- and rate-coded (the MLP once per
split), with stratified k-fold cross-validation (``--folds``, fixed seed, reshuffled ``--table-repeats`` times)
(``--only digits``: the bundled 8 x 8 handwritten digits, 10 classes, the same recipe, outside the default panel
for its cost); and
Yin-Yang (``spikescan.datasets.yinyang``: its own latency code, 5 channels over [0, 30] ms; the MLP gets the 4
coordinates ``(x, y, 1 - x, 1 - y)``) with the published generators' seeds (train 42, test 40), ``--yinyang-train`` /
``--yinyang-test`` samples, under a few reasonable settings of the time constants and readout (``t_max=60``),
repeated ``--repeats`` times with different initialisation seeds. Every fold / repeat calls
``keras.utils.set_random_seed`` before building each model, so a run is reproducible on one machine and backend.
``--recurrent`` gives the hidden layer recurrent connections with their defaults (``LIFLayer(..., recurrent=True)``;
each setting's name gains a ``-recurrent`` suffix), everything else unchanged. ``--recurrent-scale S`` sets
``LIFLayer(recurrent_scale=S)`` instead of its default (``1`` is the parametrisation before the factor; the suffix
becomes ``-recurrent-scale<S>``). ``--first-spike`` replaces the readout by ``FirstSpikeReadout(classes, tau_mem,
tau_syn, t_max)`` (its defaults; the class is the first output neuron to fire), each setting's readout part of the
name becoming ``first-spike``.

    KERAS_BACKEND=torch python benchmarks/learning.py                 # full panel -> results/learning_torch.json
    python benchmarks/learning.py --quick --only iris                 # smoke test (no file unless --output)
    python benchmarks/learning.py --markdown benchmarks/results/learning_torch.json   # README table from a file
    python benchmarks/learning.py --only yinyang digits --codes latency --recurrent --output F   # recurrent
    python benchmarks/learning.py --only yinyang digits --codes latency --first-spike --output F   # first spike

Cost: the spiking model's time goes into the exact event loops (``lif_forward`` / ``lif_backward`` on the host),
about linear in the input events per sample, so the rate code costs about four times the latency code and
breast_cancer (30 features) dominates the tables. On a 2-core CPU (torch backend, hidden 64, batch 32) one epoch of
one fold took about 0.3 / 1.1 s (iris latency / rate), 0.4 / 1.1 s (wine), 1.6 / 5 s (breast_cancer), 3 s per
Yin-Yang setting at 1000 samples, and 0.15-0.5 s for the MLP: the default panel (5 folds, 2 Yin-Yang seeds, 50
epochs) takes about an hour there. ``--folds``, ``--repeats``, ``--yinyang-train`` and ``--epochs`` trade that
against noise.

Each entry of the JSON holds the per-fold test accuracies of both models, their means and (sample) standard
deviations, ``gap = mlp_mean - snn_mean``, ``within_3_points = gap <= 0.03``, the seconds spent, and what the
spiking hidden layer looked like at the end of training (``silent_fraction``, ``dead_fraction``,
``spikes_per_neuron`` of the last training batch, the calibrated ``kernel_scale``, ``capped_spikes``), plus the
warnings raised during training, counted by category.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings

os.environ.setdefault("KERAS_BACKEND", "torch")

import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import keras  # noqa: E402

from _stamp import stamp, write_json  # noqa: E402
from report import learning_table  # noqa: E402
from spikescan import encode  # noqa: E402
from spikescan.datasets import yinyang, yinyang_points  # noqa: E402
from spikescan_keras import FirstSpikeReadout, LIFLayer, LIReadout  # noqa: E402

TABLES = ("iris", "wine", "breast_cancer")
DATASETS = TABLES + ("yinyang",)  # the default panel
# Bundled tables outside the default panel (``--only``): digits (1797 8 x 8 images of handwritten digits, 64 pixel
# features 0-16, 10 classes), the image task nearest latency MNIST that ships with scikit-learn; its own file.
EXTRA_TABLES = ("digits",)
CODES = ("latency", "rate", "poisson", "raster")
RANDOM_CODES = ("poisson", "raster")  # drawn at random: their entries add an MLP on the drawn spike counts

# The one recipe of the tables (all three, both codes).
ENCODE_T_MAX = 20.0
INPUT_MAX_SPIKES = 8  # rate code: spikes for a feature at 1
RASTER_BINS = 20  # raster code: bins of ENCODE_T_MAX / RASTER_BINS, INPUT_MAX_SPIKES expected spikes at 1
TABLE_SETTING = dict(name="tau10/5-integral", tau_mem=10.0, tau_syn=5.0, readout="integral", t_max=40.0)
HIDDEN_MAX_SPIKES = 8

# Yin-Yang: a few reasonable settings of the same model (not the full product of the options).
YINYANG_SETTINGS = (
    dict(name="tau20/10-integral", tau_mem=20.0, tau_syn=10.0, readout="integral", t_max=60.0),
    dict(name="tau10/5-integral", tau_mem=10.0, tau_syn=5.0, readout="integral", t_max=60.0),
    dict(name="tau40/10-integral", tau_mem=40.0, tau_syn=10.0, readout="integral", t_max=60.0),
    dict(name="tau20/10-max", tau_mem=20.0, tau_syn=10.0, readout="max", t_max=60.0),
)
YINYANG_SEEDS = dict(train=42, test=40)  # the published generators' seeds

FULL = dict(epochs=50, folds=5, repeats=2, table_repeats=1, hidden=64, batch_size=32, yinyang_train=1000,
            yinyang_test=1000, table_limit=None)
QUICK = dict(epochs=2, folds=2, repeats=1, table_repeats=1, hidden=16, batch_size=32, yinyang_train=64,
             yinyang_test=64, table_limit=60)
WITHIN = 0.03
_NOISE = (DeprecationWarning, PendingDeprecationWarning, FutureWarning)  # from the frameworks, not counted


# ---------------------------------------------------------------- data

def load_table(name, limit=None, seed=0):
    """``(features [n, F] float64, labels [n] int64)`` of a scikit-learn bundled table; ``limit`` keeps a stratified
    random subset of that many samples (smoke tests)."""
    from sklearn import datasets as skd

    x, y = getattr(skd, f"load_{name}")(return_X_y=True)
    if limit is not None and limit < len(y):
        from sklearn.model_selection import train_test_split

        x, _, y, _ = train_test_split(x, y, train_size=limit, stratify=y, random_state=seed)
    return np.asarray(x, np.float64), np.asarray(y, np.int64)


def encode_split(code, x_train, x_test, seed):
    """Scale with the training split's bounds, then spike-encode both splits with the fixed recipe."""
    s_train, low, high = encode.scale(x_train)
    s_test, _, _ = encode.scale(x_test, low, high)
    if code == "latency":
        return tuple(encode.latency(v, t_max=ENCODE_T_MAX, symmetric=True) for v in (s_train, s_test))
    if code == "raster":
        from spikescan.datasets import from_raster

        out = []
        for part, v in enumerate((s_train, s_test)):
            rng = np.random.default_rng([seed, part])
            raster = rng.random((RASTER_BINS,) + v.shape) < v * (INPUT_MAX_SPIKES / RASTER_BINS)  # [T, n, F]
            out.append(from_raster(raster, ENCODE_T_MAX / RASTER_BINS, time_axis=0, dtype=np.float64)[0])
        return tuple(out)
    mode = "regular" if code == "rate" else "poisson"
    kw = dict(t_max=ENCODE_T_MAX, max_spikes=INPUT_MAX_SPIKES, mode=mode)
    if mode == "poisson":
        with warnings.catch_warnings():  # dropping the rare 9th spike of a value near 1 is part of the code
            warnings.simplefilter("ignore")
            return (encode.rate(s_train, seed=[seed, 0], **kw), encode.rate(s_test, seed=[seed, 1], **kw))
    return encode.rate(s_train, **kw), encode.rate(s_test, **kw)


def spike_counts(times):
    """``[n, channels]`` float32: each channel's number of spikes over ``INPUT_MAX_SPIKES`` (a feature at 1's
    expected count in the rate codes)."""
    return (np.isfinite(times).sum(axis=2) / INPUT_MAX_SPIKES).astype(np.float32)


def scaled_features(x_train, x_test):
    s_train, low, high = encode.scale(x_train)
    return s_train, encode.scale(x_test, low, high)[0]


# ---------------------------------------------------------------- models

def snn(input_shape, hidden, classes, setting):
    taus = dict(tau_mem=setting["tau_mem"], tau_syn=setting["tau_syn"])
    readout = (FirstSpikeReadout(classes, **taus, t_max=setting["t_max"]) if setting["readout"] == "first_spike" else
               LIReadout(classes, **taus, readout=setting["readout"], t_max=setting["t_max"]))
    return keras.Sequential([
        keras.Input(shape=input_shape),
        LIFLayer(hidden, **taus, max_spikes=HIDDEN_MAX_SPIKES, recurrent=setting.get("recurrent", False),
                 **({"recurrent_scale": setting["recurrent_scale"]} if "recurrent_scale" in setting else {})),
        readout,
    ])


def mlp(features, hidden, classes):
    return keras.Sequential([keras.Input((features,)), keras.layers.Dense(hidden, "relu"),
                             keras.layers.Dense(classes)])


def fit_evaluate(model, x_train, y_train, x_test, y_test, args):
    """Compile with the fixed recipe, fit, evaluate. Returns (test accuracy, last-epoch train accuracy, warnings
    raised by fit and evaluate counted by category, deprecation warnings left out)."""
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = model.fit(x_train, y_train, batch_size=args.batch_size, epochs=args.epochs, verbose=args.verbose)
        _, accuracy = model.evaluate(x_test, y_test, batch_size=args.batch_size, verbose=0)
    counts = {}
    for w in caught:
        if not issubclass(w.category, _NOISE):
            counts[w.category.__name__] = counts.get(w.category.__name__, 0) + 1
    return float(accuracy), float(history.history["accuracy"][-1]), counts


def firing(model):
    """The hidden LIF layer's state after training (its statistics are those of the last training batch)."""
    layer = next(lay for lay in model.layers if isinstance(lay, LIFLayer))
    read = lambda v: float(np.asarray(keras.ops.convert_to_numpy(v.value)))  # noqa: E731
    return dict(silent_fraction=read(layer.silent_fraction), dead_fraction=read(layer.dead_fraction),
                spikes_per_neuron=read(layer.spikes_per_neuron), kernel_scale=read(layer.kernel_scale),
                capped_spikes=int(read(layer.capped_spikes)))


# ---------------------------------------------------------------- runs

def seed_of(args, run):
    return args.seed * 1000 + run


def run_mlp(splits, classes, args):
    """The MLP on each split ``(x_train, y_train, x_test, y_test)`` of features: per-fold accuracies and seconds."""
    acc, train_acc, start = [], [], time.perf_counter()
    for run, (x_tr, y_tr, x_te, y_te) in enumerate(splits):
        keras.utils.set_random_seed(seed_of(args, run))
        a, t, _ = fit_evaluate(mlp(x_tr.shape[1], args.hidden, classes), x_tr, y_tr, x_te, y_te, args)
        acc.append(a)
        train_acc.append(t)
    return dict(accuracy=acc, train_accuracy=train_acc, seconds=time.perf_counter() - start)


def run_snn(splits, classes, setting, args):
    """The spiking model on each split of spike tensors: per-fold accuracies, firing statistics, seconds."""
    acc, train_acc, stats, caught, start = [], [], [], {}, time.perf_counter()
    for run, (t_tr, y_tr, t_te, y_te) in enumerate(splits):
        keras.utils.set_random_seed(seed_of(args, run))
        model = snn(t_tr.shape[1:], args.hidden, classes, setting)
        a, t, w = fit_evaluate(model, t_tr, y_tr, t_te, y_te, args)
        acc.append(a)
        train_acc.append(t)
        stats.append(firing(model))
        for k, v in w.items():
            caught[k] = caught.get(k, 0) + v
    return dict(accuracy=acc, train_accuracy=train_acc, firing=stats, warnings=caught,
                seconds=time.perf_counter() - start)


def _mean_std(values):
    values = np.asarray(values, np.float64)
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0


def entry(dataset, code, setting, snn_result, mlp_result, *, input_shape, n_train, n_test):
    snn_mean, snn_std = _mean_std(snn_result["accuracy"])
    mlp_mean, mlp_std = _mean_std(mlp_result["accuracy"])
    per_fold = snn_result["firing"]
    gap = mlp_mean - snn_mean
    out = dict(dataset=dataset, code=code, setting=setting["name"], snn_accuracy=snn_result["accuracy"],
               snn_mean=snn_mean, snn_std=snn_std, mlp_accuracy=mlp_result["accuracy"], mlp_mean=mlp_mean,
               mlp_std=mlp_std, gap=gap, within_3_points=bool(gap <= WITHIN),
               snn_train_accuracy=snn_result["train_accuracy"], mlp_train_accuracy=mlp_result["train_accuracy"],
               seconds=round(snn_result["seconds"] + mlp_result["seconds"], 2),
               snn_seconds=round(snn_result["seconds"], 2), mlp_seconds=round(mlp_result["seconds"], 2),
               input_shape=list(map(int, input_shape)), n_train=n_train, n_test=n_test,
               model=dict(setting, hidden_max_spikes=HIDDEN_MAX_SPIKES), warnings=snn_result["warnings"])
    for key in ("silent_fraction", "dead_fraction", "spikes_per_neuron", "kernel_scale"):
        out[key] = float(np.mean([f[key] for f in per_fold]))
        out[f"{key}_per_fold"] = [f[key] for f in per_fold]
    out["capped_spikes"] = int(sum(f["capped_spikes"] for f in per_fold))
    return out


def progress(e):
    print(f"{e['dataset']:<14} {e['code']:<8} {e['setting']:<18} snn {e['snn_mean']:.3f}±{e['snn_std']:.3f}  "
          f"mlp {e['mlp_mean']:.3f}±{e['mlp_std']:.3f}  gap {e['gap']:+.3f}  {e['seconds']:7.1f}s "
          f"(snn {e['snn_seconds']:.1f}s, mlp {e['mlp_seconds']:.1f}s)  silent {e['silent_fraction']:.2f} "
          f"dead {e['dead_fraction']:.2f} scale {e['kernel_scale']:.3g}", flush=True)


def run_table(name, args):
    from sklearn.model_selection import StratifiedKFold

    x, y = load_table(name, args.table_limit, args.seed)
    classes = int(y.max()) + 1
    # --table-repeats reshuffles the k-fold split (random_state seed + r): with ~60 test samples per fold of a table,
    # one sample is 1.7 points and one split's draw moves an entry by several.
    folds = [f for r in range(args.table_repeats)
             for f in StratifiedKFold(n_splits=args.folds, shuffle=True, random_state=args.seed + r).split(x, y)]
    features = [(*scaled_features(x[tr], x[te]), tr, te) for tr, te in folds]
    mlp_result = run_mlp([(f_tr, y[tr], f_te, y[te]) for f_tr, f_te, tr, te in features], classes, args)
    for code in args.codes:
        splits, shape = [], None
        for run, (tr, te) in enumerate(folds):
            t_tr, t_te = encode_split(code, x[tr], x[te], seed_of(args, run))
            splits.append((t_tr, y[tr], t_te, y[te]))
            shape = t_tr.shape[1:]
        e = entry(name, code, args.table_setting, run_snn(splits, classes, args.table_setting, args), mlp_result,
                  input_shape=shape, n_train=len(folds[0][0]), n_test=len(folds[0][1]))
        if code in RANDOM_CODES:
            # What the random draw leaves of the features: the same MLP on each channel's spike count of the very
            # tensors the spiking model saw (over the expected count at 1), the fair comparison for these codes.
            counts = [(spike_counts(t_tr), y_tr, spike_counts(t_te), y_te) for t_tr, y_tr, t_te, y_te in splits]
            c = run_mlp(counts, classes, args)
            e["counts_mlp_accuracy"] = c["accuracy"]
            e["counts_mlp_mean"], e["counts_mlp_std"] = _mean_std(c["accuracy"])
            e["counts_mlp_seconds"] = round(c["seconds"], 2)
            print(f"{'':<14} {code:<8} MLP on the spike counts {e['counts_mlp_mean']:.3f}±{e['counts_mlp_std']:.3f}",
                  flush=True)
        progress(e)
        yield e


def run_yinyang(args):
    train = yinyang(args.yinyang_train, seed=YINYANG_SEEDS["train"])
    test = yinyang(args.yinyang_test, seed=YINYANG_SEEDS["test"])
    xy_train, labels_train = yinyang_points(args.yinyang_train, seed=YINYANG_SEEDS["train"])
    xy_test, labels_test = yinyang_points(args.yinyang_test, seed=YINYANG_SEEDS["test"])
    assert np.array_equal(labels_train, train.labels) and np.array_equal(labels_test, test.labels)
    f_train = np.concatenate([xy_train, 1.0 - xy_train], axis=1)  # the 4 coordinates the spikes encode
    f_test = np.concatenate([xy_test, 1.0 - xy_test], axis=1)
    repeats = range(args.repeats)
    mlp_result = run_mlp([(f_train, labels_train, f_test, labels_test) for _ in repeats], 3, args)
    for setting in args.yinyang_settings:
        snn_result = run_snn([(train.times, train.labels, test.times, test.labels) for _ in repeats], 3, setting,
                             args)
        e = entry("yinyang", "latency", setting, snn_result, mlp_result, input_shape=train.times.shape[1:],
                  n_train=args.yinyang_train, n_test=args.yinyang_test)
        progress(e)
        yield e


# ---------------------------------------------------------------- report

def markdown(report):
    """A README table of a report (the dict this script writes): ``report.learning_table``, which
    ``benchmarks/report.py`` also renders into the README."""
    return learning_table(report)


def _write(report, path):
    if path:
        write_json(report, path)


def first_spike_setting(setting):
    """``setting`` with ``FirstSpikeReadout`` as the readout, its name's readout part replaced by ``first-spike``."""
    return dict(setting, name=setting["name"].rsplit("-", 1)[0] + "-first-spike", readout="first_spike")


def recurrent_setting(setting, scale=None):
    """``setting`` with a recurrent hidden layer (``LIFLayer(recurrent=True)``), named with a ``-recurrent`` suffix;
    ``scale``: its ``recurrent_scale`` when not the default (suffix ``-recurrent-scale<scale>``)."""
    if scale is None:
        return dict(setting, name=setting["name"] + "-recurrent", recurrent=True)
    return dict(setting, name=f"{setting['name']}-recurrent-scale{scale:g}", recurrent=True, recurrent_scale=scale)


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke test: 2 folds, 2 epochs, 16 hidden, few samples")
    p.add_argument("--epochs", type=int, help=f"default {FULL['epochs']} ({QUICK['epochs']} with --quick)")
    p.add_argument("--only", nargs="+", choices=DATASETS + EXTRA_TABLES, metavar="NAME",
                   help=f"datasets among {DATASETS + EXTRA_TABLES} (default: the panel, {DATASETS})")
    p.add_argument("--codes", nargs="+", choices=CODES, default=["latency", "rate"],
                   help="input codes of the tables (default: latency rate)")
    p.add_argument("--settings", nargs="+", choices=[s["name"] for s in YINYANG_SETTINGS], metavar="SETTING",
                   help="Yin-Yang settings (default: all of " + ", ".join(s["name"] for s in YINYANG_SETTINGS) + ")")
    p.add_argument("--recurrent", action="store_true",
                   help="give the hidden layer recurrent connections (LIFLayer(recurrent=True), its defaults); each "
                        "entry's setting is named with a '-recurrent' suffix")
    p.add_argument("--first-spike", action="store_true",
                   help="read out by FirstSpikeReadout (the first output neuron to fire is the class) instead of "
                        "LIReadout; each setting's readout part of the name becomes 'first-spike'")
    p.add_argument("--recurrent-scale", type=float, metavar="S",
                   help="with --recurrent: LIFLayer(recurrent_scale=S) instead of its default 'auto' (1 is the "
                        "parametrisation before the factor)")
    p.add_argument("--folds", type=int, help=f"stratified folds of the tables (default {FULL['folds']})")
    p.add_argument("--repeats", type=int, help=f"Yin-Yang initialisation seeds (default {FULL['repeats']})")
    p.add_argument("--table-repeats", type=int,
                   help=f"k-fold splits of each table, each shuffled anew (default {FULL['table_repeats']})")
    p.add_argument("--hidden", type=int, help=f"hidden units of both models (default {FULL['hidden']})")
    p.add_argument("--batch-size", type=int, help=f"default {FULL['batch_size']}")
    p.add_argument("--yinyang-train", type=int, help=f"default {FULL['yinyang_train']}")
    p.add_argument("--yinyang-test", type=int, help=f"default {FULL['yinyang_test']}")
    p.add_argument("--table-limit", type=int, help="stratified subset of each table (default: all; 60 with --quick)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--verbose", type=int, default=0, choices=(0, 1, 2), help="keras verbosity of fit")
    p.add_argument("--output", help="JSON file (default: benchmarks/results/learning_<backend>.json for the full "
                                    "panel, none with --quick or --only); rewritten after every entry")
    p.add_argument("--markdown", nargs="?", const="", metavar="JSON",
                   help="print a README table of JSON and exit; without JSON, print the table of this run at the end")
    args = p.parse_args(argv)
    defaults = QUICK if args.quick else FULL
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    for key in ("epochs", "folds", "repeats", "table_repeats", "hidden", "batch_size", "yinyang_train",
                "yinyang_test"):
        if getattr(args, key) < (2 if key == "folds" else 1):
            p.error(f"--{key.replace('_', '-')} is too small: {getattr(args, key)}")
    args.datasets = list(dict.fromkeys(args.only or DATASETS))
    args.yinyang_settings = [s for s in YINYANG_SETTINGS if args.settings is None or s["name"] in args.settings]
    if args.quick and args.settings is None:
        args.yinyang_settings = args.yinyang_settings[:1]
    if args.recurrent_scale is not None and not (args.recurrent and np.isfinite(args.recurrent_scale)
                                                 and args.recurrent_scale > 0):
        p.error(f"--recurrent-scale needs --recurrent and a positive number, got {args.recurrent_scale!r}")
    args.table_setting = TABLE_SETTING
    if args.first_spike:  # before the recurrent suffix: the name's last part is still the readout
        args.table_setting = first_spike_setting(args.table_setting)
        args.yinyang_settings = list({s["name"]: s for s in map(first_spike_setting, args.yinyang_settings)}.values())
    if args.recurrent:
        args.table_setting = recurrent_setting(args.table_setting, args.recurrent_scale)
        args.yinyang_settings = [recurrent_setting(s, args.recurrent_scale) for s in args.yinyang_settings]
    if args.output is None and not args.quick and args.only is None:  # a partial run never replaces the panel's file
        args.output = os.path.join(HERE, "results", f"learning_{keras.backend.backend()}.json")
    return args


def main(argv=None):
    args = parse(argv)
    if args.markdown:
        with open(args.markdown) as f:
            table = markdown(json.load(f))
        print(table)
        return table
    import sklearn  # noqa: F401  (before the stamp, which records its version)

    settings = {k: getattr(args, k) for k in ("quick", "epochs", "folds", "repeats", "table_repeats", "hidden",
                                              "batch_size", "yinyang_train", "yinyang_test", "table_limit", "seed",
                                              "codes", "datasets", "recurrent", "recurrent_scale",
                                              "first_spike")}
    settings.update(
        optimizer="adam (Keras defaults)", loss="SparseCategoricalCrossentropy(from_logits=True)",
        encode_t_max=ENCODE_T_MAX, rate_max_spikes=INPUT_MAX_SPIKES, hidden_max_spikes=HIDDEN_MAX_SPIKES,
        table_setting=args.table_setting, yinyang_settings=args.yinyang_settings, yinyang_seeds=YINYANG_SEEDS,
        within_points=WITHIN, std="sample standard deviation (ddof=1) over folds / repeats",
        fold_seeds="keras.utils.set_random_seed(seed * 1000 + fold) before each model (folds numbered across "
                   "repeats); StratifiedKFold(shuffle=True, random_state=seed + repeat) for each of table_repeats")
    report = dict(benchmark="learning", stamp=stamp(), settings=settings, entries=[], complete=False)
    start = time.perf_counter()
    print(f"learning panel: {', '.join(args.datasets)}; backend {report['stamp'].get('keras_backend')}; "
          f"epochs {args.epochs}, hidden {args.hidden}, batch {args.batch_size}, folds {args.folds}", flush=True)
    for name in args.datasets:
        for e in (run_yinyang(args) if name == "yinyang" else run_table(name, args)):
            report["entries"].append(e)
            _write(report, args.output)
    report["complete"] = True
    report["seconds"] = round(time.perf_counter() - start, 1)
    _write(report, args.output)
    print(f"total {report['seconds']:.1f}s" + (f"; wrote {args.output}" if args.output else ""), flush=True)
    if args.markdown == "":
        print(markdown(report))
    return report


if __name__ == "__main__":
    main()
