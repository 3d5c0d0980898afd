"""``benchmarks/randman_baselines.py --quick``: the baselines run on the task of ``examples/randman.py`` (same
splits and task parameters) and write stamped JSON."""

from __future__ import annotations

import ast
import json
import os

import pytest

pytest.importorskip("sklearn")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from _examples import benchmark  # noqa: E402

randman_baselines = benchmark("randman_baselines")


def _example_constants():
    """``SPLITS``, ``N_CLASSES``, ``N_CHANNELS`` and ``DURATION`` of examples/randman.py, read without importing it
    (it imports keras): its module-level assignments of literals (``SPLITS = dict(name=(samples, seed), ...)``)."""
    tree = ast.parse(open(os.path.join(ROOT, "examples", "randman.py")).read())
    out = {}
    for node in tree.body:
        if not isinstance(node, ast.Assign):
            continue
        target, value = node.targets[0], node.value
        pairs = (zip(target.elts, value.elts) if isinstance(target, ast.Tuple) else [(target, value)])
        for name, val in pairs:
            if name.id == "SPLITS":
                out["SPLITS"] = {kw.arg: ast.literal_eval(kw.value) for kw in val.keywords}
            elif name.id in ("N_CLASSES", "N_CHANNELS", "DURATION"):
                out[name.id] = ast.literal_eval(val)
    return out


def test_the_baselines_use_the_examples_task():
    ex = _example_constants()
    assert {k: ex["SPLITS"][k] for k in ("train", "test")} == randman_baselines.SPLITS
    assert (ex["N_CLASSES"], ex["N_CHANNELS"], ex["DURATION"]) == (
        randman_baselines.TASK["n_classes"], randman_baselines.TASK["n_channels"], randman_baselines.TASK["duration"])


def test_quick_run_writes_stamped_entries(tmp_path):
    out = tmp_path / "baselines.json"
    randman_baselines.main(["--quick", "--dims", "1", "--output", str(out)])
    report = json.loads(out.read_text())
    assert report["benchmark"] == "randman_baselines" and report["quick"] and "commit" in report["stamp"]
    (entry,) = report["entries"]
    assert entry["dim_manifold"] == 1 and entry["n_train"] == 200 and entry["n_test"] == 100
    assert 0.0 <= entry["logistic_regression"] <= 1.0 and len(entry["mlp"]) == 1 and 0.0 <= entry["mlp"][0] <= 1.0
