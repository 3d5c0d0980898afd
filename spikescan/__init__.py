"""spikescan: exact event-driven spiking neural networks on CPU (NumPy) and GPU (CuPy).

NumPy in, NumPy out; CuPy in, CuPy out. See ``lif_forward`` / ``lif_backward`` for the spiking layer and
``li_forward`` / ``li_backward`` for the non-spiking readout.
"""

from . import encode
from ._types import LIFGrads, LIFResiduals, LIFResult, LIGrads, LIResiduals, LIResult
from ._types import PeakGrads, PeakResiduals, PeakResult
from ._types import GrazingSpikeWarning, RunawayFiringError
from ._determinism import deterministic, set_deterministic
from ._memory import set_memory_limit
from .diagnostics import spike_slopes
from .lif import lif_backward, lif_forward
from .peak import peak_voltage, peak_voltage_backward
from .readout import li_backward, li_forward
from .trace import TraceResult, li_trace, lif_trace

__version__ = "0.1.0"

# Submodules with optional or heavier dependencies, imported on first access (``spikescan.init.mean_weight``,
# ``spikescan.datasets.yinyang``, ...), so ``import spikescan`` stays light and needs neither matplotlib nor h5py.
_LAZY_SUBMODULES = ("datasets", "init", "plot", "reference")


def __getattr__(name):
    if name in _LAZY_SUBMODULES:
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY_SUBMODULES))

__all__ = [
    "lif_forward", "lif_backward", "LIFResult", "LIFResiduals", "LIFGrads",
    "RunawayFiringError", "GrazingSpikeWarning",
    "li_forward", "li_backward", "LIResult", "LIResiduals", "LIGrads",
    "peak_voltage", "peak_voltage_backward", "PeakResult", "PeakResiduals", "PeakGrads",
    "lif_trace", "li_trace", "TraceResult",
    "spike_slopes",
    "set_memory_limit",
    "set_deterministic",
    "deterministic",
    "encode",
]
