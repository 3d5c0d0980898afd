"""Host emulation of the CUDA kernels, for testing them on a machine without a GPU.

The ``.cu`` sources are compiled with the host C++ compiler (``g++ -std=c++20``) behind a small shim: every CUDA
thread of a block becomes a coroutine (``ucontext``) on one OS thread, resumed in turn, and each warp intrinsic the
kernels use (``__shfl_sync``, ``__shfl_up_sync``, ``__ballot_sync``) is a warp-wide barrier through which the lanes
exchange values, so lanes run in lock step at every warp-level operation exactly as the kernels assume.
``__syncthreads`` parks a thread until every live thread of the block has reached it, then all resume in the same
round. ``__shared__`` variables are ``static`` (blocks run one after another), and dynamic shared memory
(``SPIKESCAN_DYNAMIC_SHARED``, up to ``MAX_DYNAMIC_SHARED`` bytes) is one static buffer, filled with a NaN byte
pattern before every block so that reads of unwritten entries show. Blocks of up to 1024 threads; ``atomicAdd`` is
a plain add (one OS thread). The emulation runs
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

# Dynamic shared memory of the emulated device: the opt-in maximum per block of an H100 (227 KiB).
MAX_DYNAMIC_SHARED = 232448

_SHIM = r"""
#include <math.h>
#include <cmath>
#include <cstring>
#include <cstdint>
#include <strings.h>
#include <ucontext.h>
#include <functional>
#include <memory>
#include <type_traits>
#include <utility>
#include <vector>

#define __global__
#define __launch_bounds__(...)
#define __device__
#define __forceinline__ inline
#define __restrict__ __restrict
#define __shared__ static
// Dynamic shared memory: kernels declare it with this macro (the CUDA definition is in their source).
#define SPIKESCAN_DYNAMIC_SHARED(type, name) type* name = reinterpret_cast<type*>(emu_dynamic_shared)
static constexpr unsigned long long emu_max_dynamic_shared = SPIKESCAN_EMU_MAX_DYNAMIC_SHARED;
alignas(16) static unsigned char emu_dynamic_shared[emu_max_dynamic_shared];

struct spikescan_emu_dim3 { unsigned x = 0, y = 0, z = 0; };
static spikescan_emu_dim3 threadIdx, blockIdx, blockDim, gridDim;

// Threads of the running block: one ucontext (coroutine) each, resumed in turn by the scheduler. Stacks are
// allocated uninitialised (untouched pages cost no memory).
struct spikescan_emu_lane {
    ucontext_t ctx;
    std::unique_ptr<char[]> stack;
    bool done = false;
    bool at_sync = false;  // parked in __syncthreads
};
static constexpr int emu_max_threads = 1024;
static constexpr std::size_t emu_stack_bytes = 1 << 18;
static ucontext_t emu_scheduler;
static spikescan_emu_lane emu_lanes[emu_max_threads];
static int emu_thread = 0;  // thread of the block now running
static int emu_lane = 0;    // its lane in its warp
static unsigned long long emu_slots[emu_max_threads / 32][2][32];
static int emu_bank[emu_max_threads];
static std::function<void()> emu_body;

// Every thread runs until it reaches the next warp-level operation (or exits); the scheduler resumes threads in
// order, so after one round every live lane of a warp has reached the same operation: a warp-wide barrier.
static void emu_barrier() { swapcontext(&emu_lanes[emu_thread].ctx, &emu_scheduler); }

// Parked threads are not resumed; once every live thread is parked the scheduler releases them all together.
static void __syncthreads() {
    emu_lanes[emu_thread].at_sync = true;
    emu_barrier();
}

template <class T> static T emu_exchange(T v, int src) {
    // Two banks used alternately: a lane writes the next exchange's bank only after every lane has read this one
    // (they all passed the next barrier), so one barrier per exchange suffices.
    static_assert(sizeof(T) <= 8, "64-bit values at most");
    unsigned long long* slots = emu_slots[emu_thread / 32][emu_bank[emu_thread]];
    emu_bank[emu_thread] ^= 1;
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
    unsigned long long* slots = emu_slots[emu_thread / 32][emu_bank[emu_thread]];
    emu_bank[emu_thread] ^= 1;
    slots[emu_lane] = pred ? 1ull : 0ull;
    emu_barrier();
    unsigned mask = 0;
    for (int l = 0; l < 32; ++l) mask |= (slots[l] ? 1u : 0u) << l;
    return mask;
}
static int __ffs(int x) { return ffs(x); }
static int __popc(unsigned x) { return __builtin_popcount(x); }
static int __clz(int x) { return x == 0 ? 32 : __builtin_clz((unsigned)x); }
static double __longlong_as_double(long long x) { double d; std::memcpy(&d, &x, 8); return d; }
static double atomicAdd(double* p, double v) { const double old = *p; *p = old + v; return old; }  // one OS thread
static int atomicAdd(int* p, int v) { const int old = *p; *p = old + v; return old; }
"""

_LAUNCHER = r"""
template <class... A, std::size_t... I>
static void emu_call(void (*k)(A...), void** args, std::index_sequence<I...>) {
    k(*static_cast<std::remove_reference_t<A>*>(args[I])...);
}

static void emu_trampoline() {
    emu_body();
    emu_lanes[emu_thread].done = true;  // returns to uc_link: the scheduler
}

template <class... A>
static int emu_launch(void (*k)(A...), unsigned grid, unsigned block, unsigned long long shared_mem, void** args) {
    if (block == 0 || block > (unsigned)emu_max_threads) return -2;
    if (shared_mem > emu_max_dynamic_shared) return -3;
    gridDim.x = grid;
    blockDim.x = block;
    emu_body = [=]() { emu_call(k, args, std::index_sequence_for<A...>{}); };
    for (unsigned t = 0; t < block; ++t) {
        if (!emu_lanes[t].stack) emu_lanes[t].stack.reset(new char[emu_stack_bytes]);
    }
    for (unsigned bx = 0; bx < grid; ++bx) {
        blockIdx.x = bx;
        std::memset(emu_dynamic_shared, 0xff, shared_mem);  // NaN doubles, -1 integers
        std::memset(emu_slots, 0, sizeof(emu_slots));
        std::memset(emu_bank, 0, sizeof(emu_bank));
        for (unsigned t = 0; t < block; ++t) {
            spikescan_emu_lane& lane = emu_lanes[t];
            lane.done = false;
            lane.at_sync = false;
            getcontext(&lane.ctx);
            lane.ctx.uc_stack.ss_sp = lane.stack.get();
            lane.ctx.uc_stack.ss_size = emu_stack_bytes;
            lane.ctx.uc_link = &emu_scheduler;
            makecontext(&lane.ctx, emu_trampoline, 0);
        }
        for (;;) {
            for (unsigned t = 0; t < block; ++t) {
                if (emu_lanes[t].done || emu_lanes[t].at_sync) continue;
                emu_thread = (int)t;
                emu_lane = (int)(t & 31);
                threadIdx.x = t;
                swapcontext(&emu_scheduler, &emu_lanes[t].ctx);
            }
            bool live = false, running = false;
            for (unsigned t = 0; t < block; ++t) {
                live = live || !emu_lanes[t].done;
                running = running || (!emu_lanes[t].done && !emu_lanes[t].at_sync);
            }
            if (!live) break;
            if (!running) {  // every live thread is in __syncthreads (exited threads count as arrived)
                for (unsigned t = 0; t < block; ++t) emu_lanes[t].at_sync = false;
            }
        }
    }
    return 0;
}
"""


def _registry(module):
    lines = ['extern "C" int spikescan_emu_launch(const char* name, unsigned grid, unsigned block,',
             '                                    unsigned long long shared_mem, void** args) {']
    for expr in _kernels.name_expressions(module):
        call = f"emu_launch(&{expr}, grid, block, shared_mem, args)"
        lines.append(f'    if (!std::strcmp(name, "{expr}")) return {call};')
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
        text = (f"#define SPIKESCAN_EMU_MAX_DYNAMIC_SHARED {MAX_DYNAMIC_SHARED}ull\n" + _SHIM + _kernels.source(module)
                + _LAUNCHER + _registry(module))
        digest = hashlib.sha1(text.encode()).hexdigest()[:16]
        so = os.path.join(self.build_dir, f"{module}_{digest}.so")
        if not os.path.exists(so):
            # Per-process source and output names, then an atomic rename: processes (pytest-xdist workers) that
            # build the same module at once never read each other's half-written files.
            src = os.path.join(self.build_dir, f"{module}_{digest}.{os.getpid()}.cpp")
            with open(src, "w") as f:
                f.write(text)
            tmp = so + f".{os.getpid()}.tmp"
            cmd = [cxx, "-std=c++20", "-O1", "-g0", "-shared", "-fPIC", "-ffp-contract=off", "-Wall",
                   "-Wno-unused-function", "-Wno-unknown-pragmas", src, "-o", tmp]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"host compilation of {module}.cu failed:\n{proc.stderr}")
            os.replace(tmp, so)
            os.remove(src)
        lib = ctypes.CDLL(so)
        lib.spikescan_emu_launch.argtypes = [ctypes.c_char_p, ctypes.c_uint, ctypes.c_uint, ctypes.c_ulonglong,
                                             ctypes.POINTER(ctypes.c_void_p)]
        lib.spikescan_emu_launch.restype = ctypes.c_int
        self._libs[module] = lib
        return lib

    def launch(self, module, kernel, dtype, grid, block, args, shared_mem=0):
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
        name = _kernels.name_expression(module, kernel, np.dtype(dtype).name)
        rc = self.library(module).spikescan_emu_launch(name.encode(), int(grid), int(block), int(shared_mem), ptrs)
        if rc == -2:
            raise ValueError(f"block must be 1 to 1024 threads, got {block}")
        if rc == -3:
            raise ValueError(f"shared_mem must be at most {MAX_DYNAMIC_SHARED} bytes, got {shared_mem}")
        if rc != 0:
            raise RuntimeError(f"unknown kernel {name}")
