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
