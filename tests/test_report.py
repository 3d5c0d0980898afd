"""benchmarks/report.py: the README's results tables agree with the JSON results, and --check notices when they do not
(a number changed in a copy of the README, a number changed in a copy of a results file, a table's markers gone, a
results file that names no commit). Standard library only; the real README and results are only read."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "report.py"
README = ROOT / "README.md"
BENCHMARK_RESULTS = ROOT / "benchmarks" / "results"
EXAMPLE_RESULTS = ROOT / "examples" / "results"


def report(*args, readme=README, benchmarks=BENCHMARK_RESULTS, examples=EXAMPLE_RESULTS):
    return subprocess.run([sys.executable, str(SCRIPT), *args, "--readme", str(readme), "--benchmark-results",
                           str(benchmarks), "--example-results", str(examples)],
                          capture_output=True, text=True, timeout=120)


def test_real_readme_agrees():
    out = report("--check")
    assert out.returncode == 0, out.stderr
    assert "agree" in out.stdout


def _tampered(text, table, pattern):
    """``(old, new, tampered text)``: the first match of ``pattern`` inside ``table``'s markers, that match with the
    number of its group 1 changed (first digit incremented), and ``text`` with that one match replaced; the test
    follows reruns that change the numbers."""
    start = text.index(f"<!-- report:{table} -->")
    end = text.index(f"<!-- /report:{table} -->", start)
    m = re.compile(pattern).search(text, start, end)
    assert m, f"no {pattern!r} in table {table!r}"
    old, value = m.group(0), m.group(1)
    i = next(k for k, ch in enumerate(value) if ch.isdigit())
    value = value[:i] + str((int(value[i]) + 1) % 10) + value[i + 1:]
    offset = m.start(1) - m.start(0)
    new = old[:offset] + value + old[offset + len(m.group(1)):]
    return old, new, text[:m.start(0)] + new + text[m.end(0):]


@pytest.mark.parametrize("table, pattern", [
    ("examples", r"\*\*(\d+\.\d)%\*\* \(torch\)"),
    ("learning_torch", r"\| (\d+\.\d) ± \d+\.\d% \| \d+\.\d ± \d+\.\d% \|"),
    ("benchmarks", r"(\d+\.\d+)x fwd\+bwd"),
    ("benchmarks", r"commit ([0-9a-f]{7})"),
])
def test_tampered_readme_fails(tmp_path, table, pattern):
    text = README.read_text(encoding="utf-8")
    old, new, tampered = _tampered(text, table, pattern)
    assert new != old
    readme = tmp_path / "README.md"
    readme.write_text(tampered, encoding="utf-8")
    out = report("--check", readme=readme)
    assert out.returncode == 1
    assert f"table '{table}'" in out.stderr
    diff = out.stderr.splitlines()
    assert any(line.startswith("-") and new in line for line in diff)  # the README's line
    assert any(line.startswith("+") and old in line for line in diff)  # the JSON's
    # --write puts the JSON's numbers back, and then --check passes.
    assert report("--write", readme=readme).returncode == 0
    assert readme.read_text(encoding="utf-8") == text
    assert report("--check", readme=readme).returncode == 0


def test_missing_markers_fail(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(README.read_text(encoding="utf-8").replace("<!-- /report:learning_jax -->", ""),
                      encoding="utf-8")
    out = report("--check", readme=readme)
    assert out.returncode == 1 and "/report:learning_jax" in out.stderr


def _copy_results(tmp_path):
    benchmarks, examples = tmp_path / "benchmarks", tmp_path / "examples"
    shutil.copytree(BENCHMARK_RESULTS, benchmarks)
    shutil.copytree(EXAMPLE_RESULTS, examples)
    return benchmarks, examples


def test_changed_result_fails(tmp_path):
    benchmarks, examples = _copy_results(tmp_path)
    path = examples / "yinyang_timing_torch_cpu.json"
    result = json.loads(path.read_text())
    result["runs"][1]["test_accuracy"] = 0.5
    path.write_text(json.dumps(result))
    out = report("--check", benchmarks=benchmarks, examples=examples)
    assert out.returncode == 1
    assert "table 'examples'" in out.stderr and "50.0% with 1 ms bins" in out.stderr


def test_mnist_subset_row_takes_only_runs_on_the_subset(tmp_path):
    """The subset row's summaries must name the arrays tools/mnist_subset.py writes and its 4000 / 1000 split, so a
    full-MNIST run (or another file) cannot land in that row."""
    benchmarks, examples = _copy_results(tmp_path)
    path = examples / "mnist_subset_torch_cpu.json"
    result = json.loads(path.read_text())
    assert result["data_sha256"] and result["n_train"] == 4000 and result["n_test"] == 1000
    result["data_sha256"] = "0" * 64
    path.write_text(json.dumps(result))
    out = report("--check", benchmarks=benchmarks, examples=examples)
    assert out.returncode == 1 and "mnist_subset_torch_cpu.json: data_sha256 is '000" in out.stderr, out.stderr


def test_first_spike_row_takes_only_first_spike_runs(tmp_path):
    """A summary of the leaky-integrator model cannot land in the first-spike row: it must record that output."""
    benchmarks, examples = _copy_results(tmp_path)
    path = examples / "yinyang_first_spike_torch_cpu.json"
    result = json.loads(path.read_text())
    assert result["output"] == "first_spike"
    result["output"] = "li_readout"
    path.write_text(json.dumps(result))
    out = report("--check", benchmarks=benchmarks, examples=examples)
    assert out.returncode == 1 and "yinyang_first_spike_torch_cpu.json: output is 'li_readout'" in out.stderr, \
        out.stderr


def test_result_without_commit_fails(tmp_path):
    benchmarks, examples = _copy_results(tmp_path)
    path = benchmarks / "cpu_2core.json"
    result = json.loads(path.read_text())
    del result["provenance"]
    path.write_text(json.dumps(result))
    out = report("--check", benchmarks=benchmarks, examples=examples)
    assert out.returncode == 1 and "cpu_2core.json: names no commit" in out.stderr


def test_every_result_names_its_commit():
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import report as module
    finally:
        sys.path.remove(str(SCRIPT.parent))
    results = module.Results(BENCHMARK_RESULTS, EXAMPLE_RESULTS)
    assert module.check_provenance(results) == []
    for kind in ("benchmarks", "examples"):
        for name in results.names(kind):
            p = module.provenance(results.load(kind, name))
            assert len(p["commit"]) >= 7 and p["machine"], (name, p)


def test_a_corrected_stamp_names_the_commit_that_ran():
    """A stamp taken with stale git metadata (``stamp_note`` and a ``provenance`` commit beside it): the commit is
    the provenance's, the stamp's is named as the machine's metadata, and the dirty list does not apply."""
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import report as module
    finally:
        sys.path.remove(str(SCRIPT.parent))
    stamp = dict(commit="9122a8f" + "0" * 33, dirty=True, dirty_files=["a.py"], device="NVIDIA H200")
    plain = dict(stamp=stamp)
    assert module.commit_text(plain) == "commit 9122a8f (dirty: a.py)"
    corrected = dict(stamp=stamp, stamp_note="why", provenance=dict(commit="9df638c"))
    p = module.provenance(corrected)
    assert (p["commit"], p["dirty"], p["how"], p["machine"]) == ("9df638c", False, "corrected", "NVIDIA H200")
    assert module.commit_text(corrected) == ("commit 9df638c (the working tree measured; the machine's git "
                                             "metadata was commit 9122a8f's: `stamp_note`)")


def test_learning_caption_names_the_protocols_its_entries_used():
    """A panel with tables and Yin-Yang names both protocols; the digits run (tables only) names only the folds."""
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import report as report_module
    finally:
        sys.path.remove(str(SCRIPT.parent))
    panel = json.loads((BENCHMARK_RESULTS / "learning_torch.json").read_text())
    digits = json.loads((BENCHMARK_RESULTS / "learning_digits_torch.json").read_text())
    assert "Yin-Yang: " in report_module.learning_table(panel) and "3-fold" in report_module.learning_table(panel)
    caption = report_module.learning_table(digits).splitlines()[0]
    assert "3-fold stratified CV" in caption and "Yin-Yang" not in caption
    assert {e["dataset"] for e in digits["entries"]} == {"digits"}


def test_recurrent_learning_tables_say_the_hidden_layer_is_recurrent():
    """The --recurrent runs' caption names the recurrent hidden layer; the panel's does not."""
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import report as report_module
    finally:
        sys.path.remove(str(SCRIPT.parent))
    for backend in ("torch", "jax"):
        run = json.loads((BENCHMARK_RESULTS / f"learning_recurrent_{backend}.json").read_text())
        assert run["settings"]["recurrent"] is True
        assert all(e["setting"].endswith("-recurrent") for e in run["entries"])
        assert "(hidden 64, recurrent," in report_module.learning_table(run).splitlines()[0]
    panel = json.loads((BENCHMARK_RESULTS / "learning_torch.json").read_text())
    assert "recurrent" not in report_module.learning_table(panel).splitlines()[0]


def test_recurrent_seeds_table_rows_come_from_their_files():
    """Each row of the seeds table: the file's backend, its recurrent_scale (``auto`` when the run left the default),
    every seed's accuracy, and a mean and minimum that agree with them."""
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import report as report_module
    finally:
        sys.path.remove(str(SCRIPT.parent))
    rows = [line for line in report_module.recurrent_seeds_table(report_module.Results()).splitlines()
            if line.startswith("| ") and not line.startswith("| Setting")]
    assert len(rows) == len(report_module.RECURRENT_SEED_FILES)
    for row, name in zip(rows, report_module.RECURRENT_SEED_FILES):
        run = json.loads((BENCHMARK_RESULTS / name).read_text())
        (entry,) = run["entries"]
        cells = [c.strip() for c in row.strip("|").split("|")]
        scale = run["settings"].get("recurrent_scale")  # absent before learning.py had --recurrent-scale
        assert cells[0] == entry["setting"]
        assert entry["setting"].endswith("-recurrent" + ("" if scale is None else f"-scale{scale:g}"))
        assert ("max" in entry["setting"]) == ("max_seeds" in name)
        assert cells[1] == run["stamp"]["keras_backend"] and run["stamp"]["keras_backend"] in name
        assert cells[2] == ("`auto`" if scale is None else f"`{scale:g}`") and ("scale1_" in name) == (scale == 1)
        seeds = [float(a) for a in cells[3].split(" / ")]
        assert seeds == [round(100 * a, 1) for a in entry["snn_accuracy"]] and len(seeds) == run["settings"]["repeats"]
        mean = float(cells[4].split(" ± ")[0])
        assert abs(mean - 100 * sum(entry["snn_accuracy"]) / len(seeds)) <= 0.05 + 1e-9
        assert float(cells[5].rstrip("%")) == min(seeds)
        assert name in cells[6]
