"""Bitwise-reproducible GPU results: ``spikescan.set_deterministic(True)`` or ``SPIKESCAN_DETERMINISTIC=1``.

On NumPy inputs every engine is deterministic already (fixed-order sums, stable sorts; the compiled engine's sums do
not depend on its thread count). On CuPy inputs several kernels sum with float atomics, whose order, and so the last
bits of the result, varies from run to run. With the setting on, every CUDA path that has one runs its fixed-order
variant:

- ``lif_backward`` of a feed-forward layer: ``method="auto"`` (and ``"closed"``) runs the closed-form kernel with
  deterministic reductions (``spikescan.cuda._closed``); ``"sequential"`` and ``"scan"``, which have none, raise
  ``ValueError``;
- ``lif_backward`` of a recurrent layer: the source-major input-gradient kernels (``spikescan.cuda._recurrent``);
- ``li_forward`` / ``li_backward``: fixed-order partial sums (``spikescan.cuda._readout``).

The forward kernels of the LIF layers write each output from one thread or warp and need nothing. What this costs
on a GPU has not been measured yet (``benchmarks/gpu_perf.py``, variant ``m2_closed_det``).
"""

from __future__ import annotations

import os

import numpy as np

ENV = "SPIKESCAN_DETERMINISTIC"
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("", "0", "false", "no", "off")
_flag = None  # set_deterministic's value, or None (then the environment variable decides)


def set_deterministic(enabled):
    """Turn the bitwise-reproducible GPU mode on or off for the calls made afterwards, in this process.

    Args:
        enabled: ``True`` (on), ``False`` (off) or ``None`` (back to ``SPIKESCAN_DETERMINISTIC``'s choice).
    """
    global _flag
    if enabled is not None and not isinstance(enabled, (bool, np.bool_)):
        raise TypeError(f"enabled must be True, False or None, got {enabled!r}")
    _flag = None if enabled is None else bool(enabled)


def applies(setting):
    """Whether a CUDA path runs its fixed-order variant: its own module setting (``spikescan.cuda._closed``,
    ``_readout``, ``_recurrent`` ``DETERMINISTIC``, for benchmarks and tests) or the switch (``deterministic()``)."""
    return bool(setting) or deterministic()


def deterministic():
    """True if the bitwise-reproducible GPU mode is on (``set_deterministic``, else ``SPIKESCAN_DETERMINISTIC``)."""
    if _flag is not None:
        return _flag
    value = os.environ.get(ENV, "").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"{ENV} must be one of {', '.join(repr(v) for v in _TRUE + _FALSE[1:])} (or unset), got "
                     f"{os.environ[ENV]!r}")
