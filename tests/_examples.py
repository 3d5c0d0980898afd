"""The example and benchmark scripts as importable modules, shared by the tests that run them in-process."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
BENCHMARKS = EXAMPLES.parent / "benchmarks"


def example(name):
    """``examples/{name}.py`` as the module ``name`` (imported once; ssc.py's ``import shd`` then finds it)."""
    return _script(EXAMPLES, name, name)


def benchmark(name):
    """``benchmarks/{name}.py`` as the module ``spikescan_{name}_bench`` (imported once)."""
    return _script(BENCHMARKS, name, f"spikescan_{name}_bench")


def _script(folder, name, module_name):
    """``folder/{name}.py`` as the module ``module_name``, with ``folder`` on ``sys.path`` for its own imports."""
    path = folder / f"{name}.py"
    module = sys.modules.get(module_name)
    if module is not None and Path(getattr(module, "__file__", "") or "").resolve() == path:
        return module
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[module_name]
        raise
    return module
