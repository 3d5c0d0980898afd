"""Shared fixtures."""

from __future__ import annotations

import pytest

from spikescan import _lif_numpy
from spikescan.cuda import _hostemu


@pytest.fixture(params=["numpy", "numba"])
def cpu_engine(request, monkeypatch):
    """Runs a test once per CPU engine: ``engine="auto"`` (every call that does not name one) resolves to the pure
    NumPy implementation, then to the compiled Numba kernels (skipped when Numba is not installed)."""
    if request.param == "numba":
        pytest.importorskip("numba")
    else:
        monkeypatch.setattr(_lif_numpy, "numba_available", lambda: False)
    return request.param


@pytest.fixture(scope="session")
def host_kernels(tmp_path_factory):
    """The CUDA kernels compiled for the host emulation (``spikescan.cuda._hostemu``), once per test session and
    shared by every test file that runs them; skipped without a host C++ compiler."""
    if _hostemu.compiler() is None:
        pytest.skip("no host C++ compiler for the kernel emulation")
    return _hostemu.HostKernels(str(tmp_path_factory.mktemp("spikescan_hostemu")))
