"""benchmarks/report.py: the README's results tables agree with the JSON results, and --check notices when they do not
(a number changed in a copy of the README, a number changed in a copy of a results file, a table's markers gone, a
results file that names no commit). Standard library only; the real README and results are only read."""

import json
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


@pytest.mark.parametrize("table, old, new", [
    ("examples", "**97.5%** (torch)", "**97.6%** (torch)"),
    ("learning_torch", "| 94.7 ± 2.3% | 87.3 ± 4.6% |", "| 94.8 ± 2.3% | 87.3 ± 4.6% |"),
    ("benchmarks", "7.94x fwd+bwd", "7.9x fwd+bwd"),
    ("benchmarks", "commit a849388", "commit a849389"),
])
def test_tampered_readme_fails(tmp_path, table, old, new):
    text = README.read_text(encoding="utf-8")
    assert old in text, old
    readme = tmp_path / "README.md"
    readme.write_text(text.replace(old, new, 1), encoding="utf-8")
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
