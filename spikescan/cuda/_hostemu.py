"""Host emulation of the CUDA kernels, for testing them on a machine without a GPU.

The ``.cu`` sources are compiled with the host C++ compiler (``g++ -std=c++20``) behind a small shim: every CUDA
thread becomes a coroutine (``ucontext``) on one OS thread, the 32 lanes of a warp are resumed in turn, and each
warp intrinsic the kernels use (``__shfl_sync``, ``__shfl_up_sync``, ``__ballot_sync``) is a warp-wide barrier
through which the lanes exchange values, so lanes run in lock step at every warp-level operation exactly as the
kernels assume. Warps run one after another; ``atomicAdd`` is a plain add (one OS thread). The emulation runs
the same source text as the GPU (``_kernels.source``) and the same launchers (``_lif.forward`` / ``backward`` with
``xp=numpy`` and ``launch=HostKernels(...).launch``), so on a CPU-only machine the tests check the kernels'
indexing, control flow and arithmetic against the NumPy reference. It does not check what only a GPU shows (the
device math library's last-ulp rounding, FMA contraction, memory-model or occupancy effects).

Slow (a coroutine per CUDA thread, no parallelism): for small cases only.
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
#include <ucontext.h>
#include <functional>
#include <type_traits>
#include <utility>
#include <vector>

#define __global__
#define __device__
#define __forceinline__ inline
#define __restrict__ __restrict

struct spikescan_emu_dim3 { unsigned x = 0, y = 0, z = 0; };
static spikescan_emu_dim3 threadIdx, blockIdx, blockDim, gridDim;

// Lanes of the running warp: one ucontext (coroutine) each, resumed in turn by the scheduler.
struct spikescan_emu_lane {
    ucontext_t ctx;
    std::vector<char> stack;
    bool done = false;
};
static ucontext_t emu_scheduler;
static spikescan_emu_lane emu_lanes[32];
static int emu_lane = 0;
static unsigned emu_warp_base = 0;
static unsigned long long emu_slots[2][32];
static int emu_bank[32];
static std::function<void()> emu_body;

// Every lane runs until it reaches the next warp-level operation (or exits); the scheduler resumes lanes in
// order, so after one round every live lane has reached the same operation: a warp-wide barrier.
static void emu_barrier() { swapcontext(&emu_lanes[emu_lane].ctx, &emu_scheduler); }

template <class T> static T emu_exchange(T v, int src) {
    // Two banks used alternately: a lane writes the next exchange's bank only after every lane has read this one
    // (they all passed the next barrier), so one barrier per exchange suffices.
    static_assert(sizeof(T) <= 8, "64-bit values at most");
    unsigned long long* slots = emu_slots[emu_bank[emu_lane]];
    emu_bank[emu_lane] ^= 1;
    unsigned long long bits = 0;
    std::memcpy(&bits, &v, sizeof(T));
    slots[emu_lane] = bits;
    emu_barrier();
    const unsigned long long r = slots[src];
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
    unsigned long long* slots = emu_slots[emu_bank[emu_lane]];
    emu_bank[emu_lane] ^= 1;
    slots[emu_lane] = pred ? 1ull : 0ull;
    emu_barrier();
    unsigned mask = 0;
    for (int l = 0; l < 32; ++l) mask |= (slots[l] ? 1u : 0u) << l;
    return mask;
}
static int __ffs(int x) { return ffs(x); }
static int __popc(unsigned x) { return __builtin_popcount(x); }
static double __longlong_as_double(long long x) { double d; std::memcpy(&d, &x, 8); return d; }
static double atomicAdd(double* p, double v) { const double old = *p; *p = old + v; return old; }  // one OS thread
"""

_LAUNCHER = r"""
template <class... A, std::size_t... I>
static void emu_call(void (*k)(A...), void** args, std::index_sequence<I...>) {
    k(*static_cast<std::remove_reference_t<A>*>(args[I])...);
}

static void emu_trampoline() {
    emu_body();
    emu_lanes[emu_lane].done = true;  // returns to uc_link: the scheduler
}

template <class... A>
static void emu_launch(void (*k)(A...), unsigned grid, unsigned block, void** args) {
    gridDim.x = grid;
    blockDim.x = block;
    emu_body = [=]() { emu_call(k, args, std::index_sequence_for<A...>{}); };
    for (auto& lane : emu_lanes) {
        if (lane.stack.empty()) lane.stack.resize(1 << 18);
    }
    for (unsigned bx = 0; bx < grid; ++bx) {
        blockIdx.x = bx;
        for (unsigned base = 0; base < block; base += 32) {
            const int lanes = (int)((block - base) < 32 ? (block - base) : 32);
            emu_warp_base = base;
            std::memset(emu_slots, 0, sizeof(emu_slots));
            std::memset(emu_bank, 0, sizeof(emu_bank));
            for (int l = 0; l < lanes; ++l) {
                spikescan_emu_lane& lane = emu_lanes[l];
                lane.done = false;
                getcontext(&lane.ctx);
                lane.ctx.uc_stack.ss_sp = lane.stack.data();
                lane.ctx.uc_stack.ss_size = lane.stack.size();
                lane.ctx.uc_link = &emu_scheduler;
                makecontext(&lane.ctx, emu_trampoline, 0);
            }
            for (bool live = true; live;) {
                live = false;
                for (int l = 0; l < lanes; ++l) {
                    if (emu_lanes[l].done) continue;
                    emu_lane = l;
                    threadIdx.x = base + l;
                    swapcontext(&emu_scheduler, &emu_lanes[l].ctx);
                    live = live || !emu_lanes[l].done;
                }
            }
        }
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
            cmd = [cxx, "-std=c++20", "-O1", "-g0", "-shared", "-fPIC", "-ffp-contract=off", "-Wall",
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
