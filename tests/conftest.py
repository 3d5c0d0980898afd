"""Shared fixtures."""

from __future__ import annotations

import pytest

from spikescan import _lif_numpy


@pytest.fixture(params=["numpy", "numba"])
def cpu_engine(request, monkeypatch):
    """Runs a test once per CPU engine: ``engine="auto"`` (every call that does not name one) resolves to the pure
    NumPy implementation, then to the compiled Numba kernels (skipped when Numba is not installed)."""
    if request.param == "numba":
        pytest.importorskip("numba")
    else:
        monkeypatch.setattr(_lif_numpy, "numba_available", lambda: False)
    return request.param
