"""CUDA sources of spikescan: loading, lazy compilation (memoized per device) and an offline NVRTC compile check.

Every ``.cu`` file under ``kernels/`` is one ``cupy.RawModule`` holding all its template instantiations
(``name_expressions``). Nothing compiles at import: ``get_kernel`` compiles a module the first time one of its
kernels is needed on a device and caches it. ``check`` compiles every module for given architectures with NVRTC
alone (no GPU, no driver), which is what ``python -m spikescan.cuda --check`` and the CI run.
"""

from __future__ import annotations

import contextlib
import ctypes
import glob
import os
import re
import threading

_KERNEL_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "kernels")
_INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"\s*$', re.MULTILINE)

# Output/cotangent dtypes that the templates are instantiated for.
DTYPES = {"float32": "float", "float64": "double"}

# module (file stem) -> kernel template names; each is instantiated for every entry of DTYPES.
MODULES = {
    "lif_forward": ("spikescan_lif_forward_sequential", "spikescan_lif_forward_step", "spikescan_lif_forward_scan",
                    "spikescan_lif_forward_rebased", "spikescan_lif_forward_scan_staged",
                    "spikescan_lif_forward_scan_prefetch", "spikescan_lif_forward_scan_x",
                    "spikescan_lif_forward_sequential_x"),
    "lif_backward": ("spikescan_lif_backward", "spikescan_lif_backward_scan"),
    "lif_backward_closed": ("spikescan_lif_backward_closed", "spikescan_lif_backward_closed_tau",
                            "spikescan_lif_backward_closed_rebased", "spikescan_lif_backward_closed_tau_rebased",
                            "spikescan_lif_backward_closed_synapses", "spikescan_lif_backward_closed_synapses_tau",
                            "spikescan_lif_backward_closed_inputs", "spikescan_lif_backward_closed_x",
                            "spikescan_lif_backward_closed_tau_x"),
    "readout": ("spikescan_li_linear_forward", "spikescan_li_linear_backward", "spikescan_li_max_forward",
                "spikescan_li_max_backward", "spikescan_li_max_kink", "spikescan_li_inputs"),
    "queue": ("spikescan_delay_queue", "spikescan_delay_queue_counting"),
    "recurrent": ("spikescan_recurrent_forward", "spikescan_recurrent_backward_spikes",
                  "spikescan_recurrent_backward_inputs", "spikescan_recurrent_backward_weights",
                  "spikescan_recurrent_backward_synapses", "spikescan_recurrent_backward_input_times"),
}

# Modules instantiated for some entries of DTYPES only (queue times are float64 whatever the layer's dtype).
MODULE_DTYPES = {"queue": ("float64",)}

# Modules whose kernels are templates on the neuron model too (``template <typename T, class Neuron>``), and the
# model struct they are instantiated for (kernels/neurons/<model>.cuh).
MODULE_NEURONS = {"lif_forward": "spikescan_lif", "lif_backward": "spikescan_lif", "readout": "spikescan_lif",
                  "recurrent": "spikescan_lif", "lif_backward_closed": "spikescan_lif"}

# Compiler options used at run time (CuPy adds the architecture and its own defaults) and by the check.
OPTIONS = ("--std=c++17",)
# Options that CuPy's RawModule adds by itself; the offline check adds them too so that it compiles the same thing.
_CUPY_IMPLICIT_OPTIONS = ("-ftz=true", "--device-as-default-execution-space")


def name_expression(module, kernel, dtype_name):
    """``"spikescan_x<double>"`` for kernel ``spikescan_x`` and dtype ``"float64"``, or
    ``"spikescan_x<double, spikescan_lif>"`` in a module templated on the neuron model."""
    neuron = MODULE_NEURONS.get(module)
    return f"{kernel}<{DTYPES[str(dtype_name)]}{', ' + neuron if neuron else ''}>"


def name_expressions(module):
    return [name_expression(module, k, d) for k in MODULES[module] for d in MODULE_DTYPES.get(module, DTYPES)]


def source(module):
    """Full source of ``kernels/<module>.cu`` with local ``#include "x.cuh"`` files inlined (NVRTC needs no paths).

    An include is resolved relative to the file that includes it (``neurons/lif.cuh`` includes ``../common.cuh``),
    and every file is inlined once, where it is first included (``#pragma once``)."""
    seen = set()

    def expand(path):
        path = os.path.normpath(path)
        if path in seen:  # include guards: every header once
            return ""
        seen.add(path)
        with open(path) as f:
            text = f.read().replace("#pragma once", "")
        here = os.path.dirname(path)
        return _INCLUDE.sub(lambda m: expand(os.path.join(here, m.group(1))), text)

    return expand(os.path.join(_KERNEL_DIR, module + ".cu"))


_cache = {}
_lock = threading.Lock()


def get_module(module):
    """The compiled ``cupy.RawModule`` for ``module`` on the current device (compiled on first use)."""
    import cupy

    key = (cupy.cuda.runtime.getDevice(), module)
    mod = _cache.get(key)
    if mod is None:
        with _lock:
            mod = _cache.get(key)
            if mod is None:
                mod = cupy.RawModule(code=source(module), options=OPTIONS, name_expressions=name_expressions(module))
                _cache[key] = mod
    return mod


def get_kernel(module, kernel, dtype):
    """The ``cupy.RawKernel`` ``kernel<T>`` of ``module`` for ``T`` matching NumPy ``dtype``."""
    import numpy as np

    return get_module(module).get_function(name_expression(module, kernel, np.dtype(dtype).name))


def launch_current(module, kernel, dtype, grid, block, args, shared_mem=0):
    """``launch``, looked up when called: the launch function the CuPy launchers pass to their array-module-generic
    bodies (each module's ``_cupy_launch``), so that a wrapper installed as ``_kernels.launch`` later
    (``benchmarks/gpu_perf.py`` times every kernel that way) sees every launch."""
    launch(module, kernel, dtype, grid, block, args, shared_mem)


def launch(module, kernel, dtype, grid, block, args, shared_mem=0):
    """Launch ``kernel<dtype>`` with ``grid`` and ``block`` (ints) on the current stream.

    ``shared_mem``: bytes of dynamic shared memory; above what the kernel allows by default (48 KiB less its
    static shared memory: the counting sort of queue.cu has 640 bytes of it) the kernel is opted in first (up to
    ``max_shared_mem()`` for static and dynamic together).
    """
    if grid <= 0:
        return
    k = get_kernel(module, kernel, dtype)
    # Not `shared_mem > 48 KiB`: the driver's default limit on dynamic shared memory is 48 KiB minus the kernel's
    # static shared memory, so a kernel with static shared memory needs the opt-in somewhat below 48 KiB too.
    if shared_mem > 0 and k.max_dynamic_shared_size_bytes < shared_mem:
        k.max_dynamic_shared_size_bytes = int(shared_mem)
    k((int(grid),), (int(block),), tuple(args), shared_mem=int(shared_mem))


def max_shared_mem():
    """Bytes of dynamic shared memory one block may opt in to on the current device."""
    import cupy

    return int(cupy.cuda.Device().attributes["MaxSharedMemoryPerBlockOptin"])


# ------------------------------------------------------------------------------------------------------------
# Offline compile check (NVRTC only)
# ------------------------------------------------------------------------------------------------------------

def _preload_nvrtc():
    """Make ``libnvrtc.so.12`` of the ``nvidia-cuda-nvrtc-cu12`` wheel loadable (CuPy may not look there)."""
    try:
        import nvidia.cuda_nvrtc as pkg  # namespace package of the PyPI wheel
    except ImportError:
        return
    for base in list(getattr(pkg, "__path__", [])):
        for lib in sorted(glob.glob(os.path.join(base, "lib", "libnvrtc.so*"))):
            if "alt" in os.path.basename(lib) or "builtins" in os.path.basename(lib):
                continue
            try:
                ctypes.CDLL(lib, mode=ctypes.RTLD_GLOBAL)
                return
            except OSError:
                continue


def nvrtc_module():
    """``cupy_backends.cuda.libs.nvrtc`` when it can compile here, else ``None``."""
    try:
        from cupy_backends.cuda.libs import nvrtc
    except Exception:  # cupy missing or broken
        return None
    for attempt in range(2):
        try:
            nvrtc.getVersion()
            return nvrtc
        except Exception:
            if attempt == 0:
                _preload_nvrtc()
    return None


def require_nvrtc(nvrtc=None):
    """``nvrtc`` or the importable NVRTC binding; RuntimeError saying what to install when there is none."""
    nvrtc = nvrtc or nvrtc_module()
    if nvrtc is None:
        raise RuntimeError("NVRTC is not available (pip install 'spikescan[cuda-check]', which installs cupy-cuda12x "
                           "and nvidia-cuda-nvrtc-cu12)")
    return nvrtc


@contextlib.contextmanager
def nvrtc_program(module, options, nvrtc):
    """An NVRTC program of ``module`` with every name expression, compiled with ``options``; yields ``(program,
    error)``, ``error`` ``None`` or the compiler's message followed by the log. Destroyed on exit."""
    prog = nvrtc.createProgram(source(module), module + ".cu", [], [])
    try:
        for e in name_expressions(module):
            nvrtc.addNameExpression(prog, e)
        error = None
        try:
            nvrtc.compileProgram(prog, list(options))
        except Exception as exc:  # NVRTCError: the log says why
            error = f"{exc}\n{nvrtc.getProgramLog(prog)}"
        yield prog, error
    finally:
        nvrtc.destroyProgram(prog)


def compile_module(module, arch, nvrtc=None):
    """Compile ``module`` for ``sm_<arch>`` with NVRTC; returns ``(ok, log)``. Needs no GPU."""
    nvrtc = require_nvrtc(nvrtc)
    opts = [*OPTIONS, *_CUPY_IMPLICIT_OPTIONS, f"--gpu-architecture=sm_{arch}"]
    with nvrtc_program(module, opts, nvrtc) as (prog, error):
        if error is not None:
            return False, error
        missing = []
        for e in name_expressions(module):
            try:
                nvrtc.getLoweredName(prog, e)
            except Exception:
                missing.append(e)
        log = nvrtc.getProgramLog(prog)
        if missing:
            return False, f"instantiations missing: {missing}\n{log}"
        return True, log


def check(archs=("80", "90"), modules=None, verbose=True):
    """Compile every module (all instantiations) for every architecture. Returns the number of failures."""
    nvrtc = require_nvrtc()
    failures = 0
    for module in modules or MODULES:
        for arch in archs:
            ok, log = compile_module(module, arch, nvrtc)
            failures += not ok
            if verbose:
                names = ", ".join(name_expressions(module))
                print(f"[{'ok' if ok else 'FAIL'}] {module}.cu sm_{arch}: {names}")
                if log.strip() and (not ok or "warning" in log):
                    print(log.rstrip())
    return failures
