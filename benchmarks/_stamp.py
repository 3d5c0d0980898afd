"""Provenance of a benchmark result: which code ran, where, with which versions.

``stamp()`` returns a JSON-ready dict to put at the top of a result file:

- ``commit`` (HEAD of the repository holding this file, or None outside a git checkout), ``dirty`` (tracked files
  differ from HEAD) and ``dirty_files`` (up to 20 of them: results from a dirty tree ran code that is not in the
  commit);
- ``source``: ``fingerprint()`` of the tracked files' content as run (a SHA-256 over ``path blob`` lines), which
  ``python benchmarks/_stamp.py --fingerprint COMMIT`` computes for any commit: a result whose ``commit`` cannot be
  trusted (a copy of the repository with stale git metadata, as on a device machine that kept an old ``.git``) is
  tied to the commit whose fingerprint it equals;
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


def _git(*args, repo=REPO, stdin=None, timeout=30):
    try:
        out = subprocess.run(["git", "-C", repo, *args], capture_output=True, text=True, timeout=timeout,
                             input=stdin)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def fingerprint(commit=None, repo=REPO):
    """SHA-256 of the sorted ``path blob-id`` lines of the tracked files: their content in the working tree
    (``commit=None``; a tracked file deleted there counts as missing) or in ``commit``'s tree. Equal for a clean
    checkout and its commit; None outside a git checkout."""
    import hashlib

    if commit is None:
        listed = _git("ls-files", "-z", repo=repo)
        if listed is None:
            return None
        paths = [p for p in listed.split("\0") if p and os.path.isfile(os.path.join(repo, p))
                 and not os.path.islink(os.path.join(repo, p))]  # links: left out on both sides
        blobs = _git("hash-object", "--stdin-paths", repo=repo, stdin="\n".join(paths) + "\n",
                     timeout=120) if paths else ""
        if blobs is None:
            return None
        lines = [f"{p} {b}" for p, b in zip(paths, blobs.split())]
    else:
        tree = _git("ls-tree", "-r", "-z", commit, repo=repo)
        if tree is None:
            return None
        lines = []
        for entry in filter(None, tree.split("\0")):
            meta, path = entry.split("\t", 1)
            mode, kind, blob = meta.split()
            if kind == "blob" and mode != "120000":  # links: left out on both sides
                lines.append(f"{path} {blob}")
    return hashlib.sha256("\n".join(sorted(lines)).encode()).hexdigest()


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
        "source": fingerprint(),
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

    if len(sys.argv) == 3 and sys.argv[1] == "--fingerprint":
        print(fingerprint(sys.argv[2]))
    else:
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
