"""Provenance of a benchmark result: which code ran, where, with which versions.

``stamp()`` returns a JSON-ready dict to put at the top of a result file:

- ``commit`` (HEAD of the repository holding this file, or None outside a git checkout), ``dirty`` (tracked files
  differ from HEAD) and ``dirty_files`` (up to 20 of them: results from a dirty tree ran code that is not in the
  commit);
- ``time_utc``, ``host``, ``machine``, ``cpu`` (model name), ``cpu_count``;
- ``python``, ``numpy`` and, when already imported (this module imports neither), ``keras`` with its
  ``keras_backend`` and that backend's version (``torch`` / ``jax``), ``sklearn``, ``cupy``;
- ``device``: the accelerator keras computes on (``"cpu"`` without one).
"""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _git(*args):
    try:
        out = subprocess.run(["git", "-C", REPO, *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(module_name):
    module = sys.modules.get(module_name)
    return None if module is None else getattr(module, "__version__", None)


def _device(keras):
    backend = keras.backend.backend()
    try:
        if backend == "torch":
            import torch

            return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
        if backend == "jax":
            import jax

            device = jax.devices()[0]
            return "cpu" if device.platform == "cpu" else device.device_kind
        if backend == "tensorflow":
            import tensorflow as tf

            gpus = tf.config.list_physical_devices("GPU")
            return tf.config.experimental.get_device_details(gpus[0]).get("device_name", "gpu") if gpus else "cpu"
    except Exception as err:  # a broken accelerator setup should not lose a benchmark's results
        return f"unknown ({type(err).__name__}: {err})"
    return "unknown"


def stamp():
    """The provenance dict described in the module docstring."""
    head = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no")
    dirty_files = None if status is None else [line[3:] for line in status.splitlines() if line.strip()]
    out = {
        "commit": None if head is None else head.strip(),
        "dirty": None if dirty_files is None else bool(dirty_files),
        "dirty_files": None if dirty_files is None else dirty_files[:20],
        "time_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "host": platform.node(),
        "machine": platform.machine(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": _version("numpy"),
    }
    keras = sys.modules.get("keras")
    if keras is not None:
        backend = keras.backend.backend()
        out.update(keras=keras.__version__, keras_backend=backend, keras_backend_version=_version(backend),
                   device=_device(keras))
    for name in ("sklearn", "cupy"):
        if name in sys.modules:
            out[name] = _version(name)
    return out


if __name__ == "__main__":
    import json

    print(json.dumps(stamp(), indent=2))


def write_json(report, path, indent=2):
    """Write ``report`` to ``path`` (parent folders created) through a temporary file and a rename, so that an
    interrupted run never leaves half a result file behind."""
    import json

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(report, f, indent=indent)
    os.replace(tmp, path)
