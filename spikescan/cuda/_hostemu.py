"""Host emulation of the CUDA kernels, for testing them on a machine without a GPU.

The ``.cu`` sources are compiled with the host C++ compiler (``g++ -std=c++20``) behind a small shim: every CUDA
thread becomes an OS thread, each warp's 32 threads share a barrier, and the warp intrinsics the kernels use
(``__shfl_sync``, ``__shfl_up_sync``, ``__ballot_sync``) exchange values through it, so lanes run in lock step at
every warp-level operation exactly as the kernels assume. ``atomicAdd`` becomes an atomic add. The emulation runs
the same source text as the GPU (``_kernels.source``) and the same launchers (``_lif.forward`` / ``backward`` with
``xp=numpy`` and ``launch=HostKernels(...).launch``), so on a CPU-only machine the tests check the kernels'
indexing, control flow and arithmetic against the NumPy reference. It does not check what only a GPU shows (the
device math library's last-ulp rounding, FMA contraction, memory-model or occupancy effects).

Slow (an OS thread per CUDA thread): for small cases only.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile

import numpy as np

from . import _kernels

_SHIM = r"""
#include <math.h>
#include <cmath>
#include <cstring>
#include <cstdint>
#include <strings.h>
#include <atomic>
#include <barrier>
#include <memory>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#define __global__
#define __device__
#define __forceinline__ inline
#define __restrict__ __restrict

struct spikescan_emu_dim3 { unsigned x = 0, y = 0, z = 0; };
static thread_local spikescan_emu_dim3 threadIdx, blockIdx;
static spikescan_emu_dim3 blockDim, gridDim;

struct spikescan_emu_warp {
    explicit spikescan_emu_warp(int n) : bar(n) {}
    std::barrier<> bar;
    unsigned long long slots[32] = {};
};
static thread_local spikescan_emu_warp* emu_warp = nullptr;
static thread_local int emu_lane = 0;

template <class T> static T emu_exchange(T v, int src) {
    static_assert(sizeof(T) <= 8, "64-bit values at most");
    unsigned long long bits = 0;
    std::memcpy(&bits, &v, sizeof(T));
    emu_warp->slots[emu_lane] = bits;
    emu_warp->bar.arrive_and_wait();
    const unsigned long long r = emu_warp->slots[src];
    emu_warp->bar.arrive_and_wait();
    T out;
    std::memcpy(&out, &r, sizeof(T));
    return out;
}
template <class T> static T __shfl_sync(unsigned, T v, int src) { return emu_exchange(v, src & 31); }
template <class T> static T __shfl_up_sync(unsigned, T v, unsigned delta) {
    const int src = emu_lane - (int)delta;
    return emu_exchange(v, src < 0 ? emu_lane : src);
}
static unsigned __ballot_sync(unsigned, int pred) {
    emu_warp->slots[emu_lane] = pred ? 1ull : 0ull;
    emu_warp->bar.arrive_and_wait();
    unsigned mask = 0;
    for (int l = 0; l < 32; ++l) mask |= (emu_warp->slots[l] ? 1u : 0u) << l;
    emu_warp->bar.arrive_and_wait();
    return mask;
}
static int __ffs(int x) { return ffs(x); }
static int __popc(unsigned x) { return __builtin_popcount(x); }
static double __longlong_as_double(long long x) { double d; std::memcpy(&d, &x, 8); return d; }
static double atomicAdd(double* p, double v) { return std::atomic_ref<double>(*p).fetch_add(v); }
"""

_LAUNCHER = r"""
template <class... A, std::size_t... I>
static void emu_call(void (*k)(A...), void** args, std::index_sequence<I...>) {
    k(*static_cast<std::remove_reference_t<A>*>(args[I])...);
}

template <class... A>
static void emu_launch(void (*k)(A...), unsigned grid, unsigned block, void** args) {
    gridDim.x = grid;
    blockDim.x = block;
    const unsigned n_warps = (block + 31) / 32;
    for (unsigned bx = 0; bx < grid; ++bx) {
        std::vector<std::unique_ptr<spikescan_emu_warp>> warps;
        std::vector<std::thread> threads;
        for (unsigned w = 0; w < n_warps; ++w) {
            const int lanes = (int)((block - 32 * w) < 32 ? (block - 32 * w) : 32);
            warps.emplace_back(new spikescan_emu_warp(lanes));
            spikescan_emu_warp* warp = warps.back().get();
            for (int lane = 0; lane < lanes; ++lane) {
                threads.emplace_back([=]() {
                    emu_warp = warp;
                    emu_lane = lane;
                    threadIdx.x = 32 * w + lane;
                    blockIdx.x = bx;
                    emu_call(k, args, std::index_sequence_for<A...>{});
                    warp->bar.arrive_and_drop();  // an exited lane no longer holds up the others
                });
            }
        }
        for (auto& t : threads) t.join();
    }
}
"""


def _registry(module):
    lines = ['extern "C" int spikescan_emu_launch(const char* name, unsigned grid, unsigned block, void** args) {']
    for expr in _kernels.name_expressions(module):
        lines.append(f'    if (!std::strcmp(name, "{expr}")) {{ emu_launch(&{expr}, grid, block, args); return 0; }}')
    lines.append("    return -1;\n}")
    return "\n".join(lines)


def compiler():
    """The host C++ compiler used for the emulation, or ``None``."""
    return shutil.which(os.environ.get("CXX", "g++"))


class HostKernels:
    """Compiles kernel modules for the host on first use (cached by source hash in ``build_dir``)."""

    def __init__(self, build_dir=None):
        self.build_dir = build_dir or os.path.join(tempfile.gettempdir(), "spikescan_hostemu")
        os.makedirs(self.build_dir, exist_ok=True)
        self._libs = {}

    def library(self, module):
        lib = self._libs.get(module)
        if lib is not None:
            return lib
        cxx = compiler()
        if cxx is None:
            raise RuntimeError("no host C++ compiler (g++) for the kernel emulation")
        text = _SHIM + _kernels.source(module) + _LAUNCHER + _registry(module)
        digest = hashlib.sha1(text.encode()).hexdigest()[:16]
        so = os.path.join(self.build_dir, f"{module}_{digest}.so")
        if not os.path.exists(so):
            src = os.path.join(self.build_dir, f"{module}_{digest}.cpp")
            with open(src, "w") as f:
                f.write(text)
            tmp = so + f".{os.getpid()}.tmp"
            cmd = [cxx, "-std=c++20", "-O1", "-g0", "-shared", "-fPIC", "-pthread", "-ffp-contract=off", "-Wall",
                   "-Wno-unused-function", "-Wno-unknown-pragmas", src, "-o", tmp]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"host compilation of {module}.cu failed:\n{proc.stderr}")
            os.replace(tmp, so)
        lib = ctypes.CDLL(so)
        lib.spikescan_emu_launch.argtypes = [ctypes.c_char_p, ctypes.c_uint, ctypes.c_uint,
                                             ctypes.POINTER(ctypes.c_void_p)]
        lib.spikescan_emu_launch.restype = ctypes.c_int
        self._libs[module] = lib
        return lib

    def launch(self, module, kernel, dtype, grid, block, args):
        """Same signature as ``_kernels.launch``, with NumPy arrays and NumPy scalars as arguments."""
        if grid <= 0:
            return
        values = []
        for a in args:
            if isinstance(a, np.ndarray):
                if not a.flags.c_contiguous:
                    raise ValueError(f"kernel argument must be C-contiguous, got shape {a.shape}")
                values.append(ctypes.c_void_p(a.ctypes.data))
            elif isinstance(a, np.float64):
                values.append(ctypes.c_double(float(a)))
            elif isinstance(a, np.int64):
                values.append(ctypes.c_longlong(int(a)))
            elif isinstance(a, np.int32):
                values.append(ctypes.c_int(int(a)))
            else:
                raise TypeError(f"unsupported kernel argument {type(a).__name__}")
        ptrs = (ctypes.c_void_p * len(values))(*[ctypes.addressof(v) for v in values])
        name = _kernels.name_expression(kernel, np.dtype(dtype).name)
        rc = self.library(module).spikescan_emu_launch(name.encode(), int(grid), int(block), ptrs)
        if rc != 0:
            raise RuntimeError(f"unknown kernel {name}")
