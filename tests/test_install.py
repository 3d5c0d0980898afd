"""What a user sees when an optional part is missing: ``spikescan_keras`` without Keras, or with Keras 2, says which
package to install (each case in a fresh interpreter, with the module hidden or replaced)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _import_error(prelude):
    code = prelude + textwrap.dedent("""
        try:
            import spikescan_keras
        except ImportError as e:
            print("ImportError:", e)
    """)
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def test_spikescan_keras_without_keras_says_what_to_install():
    out = _import_error("import sys\nsys.modules['keras'] = None\n")
    assert "ImportError: spikescan_keras needs Keras 3" in out and "pip install 'spikescan[keras]'" in out


def test_spikescan_keras_with_a_missing_backend_names_it(monkeypatch):
    """Keras installed but the backend it was asked for not: the message was the one for a missing Keras ("pip
    install 'spikescan[keras]'"), though Keras was there; it names the backend and where the choice came from."""
    monkeypatch.setenv("KERAS_BACKEND", "jax")
    out = _import_error("import sys\nsys.modules['jax'] = None\n")
    assert "keras is installed, but its backend 'jax' (from KERAS_BACKEND) could not be imported" in out, out
    assert "set KERAS_BACKEND to torch, jax or tensorflow" in out


def test_the_sdist_carries_what_its_tests_import(tmp_path):
    """The source distribution shipped tests/test_*.py without the helpers they import (conftest.py, _cases.py,
    tolerances.py, ...) nor the examples and benchmarks that tests load: 34 collection errors after unpacking it."""
    import tarfile

    pytest = __import__("pytest")
    setuptools = pytest.importorskip("setuptools")
    if int(setuptools.__version__.split(".")[0]) < 77:  # pyproject.toml's build requirement
        pytest.skip(f"building needs setuptools>=77, found {setuptools.__version__}")
    build_meta = pytest.importorskip("setuptools.build_meta")
    # From a copy of the tracked files: setuptools reads a leftover *.egg-info/SOURCES.txt as its file list.
    try:
        tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True,
                                 timeout=60).stdout.decode().split("\0")
    except (OSError, subprocess.SubprocessError):
        pytest.skip("needs git to list the tracked files")
    import shutil

    source = tmp_path / "src"
    for name in filter(None, tracked):
        if os.path.isfile(os.path.join(ROOT, name)):
            os.makedirs(source / os.path.dirname(name), exist_ok=True)
            shutil.copy2(os.path.join(ROOT, name), source / name)
    cwd = os.getcwd()
    os.chdir(source)
    try:
        name = build_meta.build_sdist(str(tmp_path))
    finally:
        os.chdir(cwd)
    with tarfile.open(tmp_path / name) as archive:
        names = {n.split("/", 1)[1] for n in archive.getnames() if "/" in n}
    for needed in ("tests/conftest.py", "tests/_cases.py", "tests/tolerances.py", "tests/_keras_backend.py",
                   "tests/_examples.py", "tests/_datafiles.py", "examples/_common.py", "examples/yinyang.py",
                   "benchmarks/gpu_perf.py", "benchmarks/_stamp.py", "tools/test.sh", "CHANGELOG.md",
                   "spikescan/cuda/kernels/lif_forward.cu"):
        assert needed in names, needed
    assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)


def test_spikescan_keras_with_keras_2_says_what_to_install():
    out = _import_error("import sys, types\nsys.modules['keras'] = types.SimpleNamespace(__version__='2.15.0')\n")
    assert "needs Keras 3 (keras>=3.3), found keras 2.15.0" in out


def test_submodules_load_on_first_access():
    """``spikescan.init``, ``.reference``, ``.datasets`` and ``.plot`` are reachable from ``import spikescan``
    alone, loaded when first used: the import itself pulls in none of them, nor matplotlib or h5py."""
    code = textwrap.dedent("""
        import sys
        import spikescan as ss
        lazy = ("init", "reference", "datasets", "plot")
        loaded = [m for m in lazy if f"spikescan.{m}" in sys.modules]
        assert not loaded, loaded
        assert "matplotlib" not in sys.modules and "h5py" not in sys.modules
        assert set(lazy) <= set(dir(ss))
        print(ss.init.mean_weight(5, tau_mem=20.0, tau_syn=10.0) > 0, callable(ss.reference.lif_forward_reference),
              callable(ss.datasets.unpack_events), ss.plot.raster.__name__)
        try:
            ss.no_such_name
        except AttributeError as e:
            print("AttributeError:", e)
    """)
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.splitlines() == ["True True True raster",
                                       "AttributeError: module 'spikescan' has no attribute 'no_such_name'"]
