"""``benchmarks/_stamp.py``'s source fingerprint: the same for a clean checkout and its commit, different once a
tracked file changes, and computable for any commit (how a result whose recorded commit is wrong is tied to one)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import _stamp  # noqa: E402


def _git(repo, *args):
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                   env=dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t",
                            GIT_COMMITTER_EMAIL="t@t"))


def test_fingerprint_ties_a_working_tree_to_its_commit(tmp_path):
    if shutil.which("git") is None:
        pytest.skip("git not installed")
    repo = tmp_path / "repo"
    (repo / "pkg").mkdir(parents=True)
    (repo / "pkg" / "a.py").write_text("x = 1\n")
    (repo / "b.txt").write_text("b\n")
    _git(repo, "init", "-q")
    _git(repo, "add", ".")
    _git(repo, "commit", "-qm", "one")
    first = _stamp.fingerprint(repo=str(repo))
    assert first == _stamp.fingerprint("HEAD", repo=str(repo))
    (repo / "untracked.txt").write_text("not part of the source\n")
    assert _stamp.fingerprint(repo=str(repo)) == first
    (repo / "pkg" / "a.py").write_text("x = 2\n")
    changed = _stamp.fingerprint(repo=str(repo))
    assert changed != first
    _git(repo, "commit", "-qam", "two")
    assert _stamp.fingerprint("HEAD", repo=str(repo)) == changed
    assert _stamp.fingerprint("HEAD~1", repo=str(repo)) == first  # any commit, as a stale .git would need
    assert _stamp.fingerprint(repo=str(tmp_path / "not_a_repo")) is None
