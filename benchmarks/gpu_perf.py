"""The one-call GPU performance protocol (PERF.md section 5): every GPU measurement of the CUDA kernels in one command
of at most ``--budget-s`` seconds (450 by default), writing one JSON.

    python benchmarks/gpu_perf.py                                   # on a GPU machine with CuPy (and JAX, ncu)
    python benchmarks/gpu_perf.py --ncu --output results/gpu_perf_h200.json
    python benchmarks/gpu_perf.py --dry-run --output /tmp/perf.json   # every stage on the CPU (CI)

Stages run one after another, each in its own subprocess with its own timeout (a share of what is left of the
budget), so a stage that hangs or crashes loses only itself. Each stage writes its partial results as it goes, and
the JSON is rewritten after every stage: a killed run still leaves data. The stages, in order (PERF.md's S0-S7, and
S8):

- ``device`` (S0): device, clocks, software versions and ceilings (a large device-to-device copy; fp64 and fp32 FMA
  rates of a register-only kernel).
- ``gate`` (S1): correctness before timing. Every variant (``VARIANTS``: forward method x backward kernel x queue
  builder) and the one-event-per-launch ``step`` forward run small cases (the network's two layers with delays and
  layer 1 without) against the NumPy reference (``engine="numpy"``, ``method="sequential"``): identical spike
  counts and ``spike_event``, spike times within ``tests/tolerances.py``'s ``TOL["float64"]``, gradients by name
  (weights, input times, delays, threshold) within the same table; the queues of both builders bit-identical to
  NumPy's. A variant that fails is recorded and not timed.
- ``network_large`` / ``network_medium`` / ``network_single`` (S2, S4, S5): forward + backward of the SHD network of
  PERF.md (700 -> 512 -> 512 LIF, learnable delays on both layers, ~5000 input spikes per sample; the inputs and
  weights of ``bench_lif_jax.py``) at batch 256, 32 and 1, every variant that passed the gate: warm-up, then
  ``--repeats`` timed runs with a CUDA event pair around every kernel launch, every queue build and every layer's
  forward and backward (wall time with host syncs beside them). Checks that each variant gives the first one's
  spike counts at the timed shape, counts the work (queue entries, backward points, spike solves) for the floor,
  and at batch 256 measures each variant's peak memory (CuPy pool high-water mark by a memory hook, the pool's
  reserved bytes and the device's used bytes by ``memGetInfo``). Beside the instrumented runs at batch 32 and 1,
  ``plain_wall_s``: the same call with no events around its kernels (what a user's call takes; the event pairs
  cost host time, most visibly at batch 1). At batch 1, ``host_profile``: the default variant's forward +
  backward under ``cProfile`` (launches per call, time waiting for the device, an estimate of the host's own work,
  time by package, the top functions), the data for P5's host half.
- ``jax_large`` / ``jax_medium`` / ``jax_single`` (S3, S4, S5): the ``jax.lax.associative_scan`` build of the paper's
  algorithm (``bench_lif_jax.make_layer`` / ``queues``: the same network and inputs, queue lengths from the exact
  forward) in float32 at batch 256, 32 and 1 and in float64 at batch 32: compile time, forward + backward time,
  agreement of the recorded spike counts with spikescan's, the largest spike-time difference, and bounds on the
  neurons whose inputs its fixed step budget leaves unprocessed (PERF.md section 4).
- ``baselines_single`` (S5): batch 1, layer-1 shape, forward only: one event per launch (``step``) against the fused
  sequential kernel, the scan and ``auto``.
- ``sweep`` (S6): one layer with delays, hidden 16 / 128 / 512 x batch 1 / 32 / 256 (small shapes first, until the
  stage's time is up): every forward method, and each backward kernel (the closed form's included) on ``auto``'s
  forward.
- ``recurrent`` (S8, not in PERF.md's list): the recurrent layer's CUDA kernels (``spikescan.cuda._recurrent``, one
  block per sample) on ``bench_recurrent.layer``'s SHD-like layer (700 inputs, ~3000 input spikes per sample over
  1 s, 128 and 512 neurons, without and with recurrent delays, ``max_spikes`` 16). Gate first, per layer: the CUDA
  forward at batch 32 and its backward (cotangent on two samples, the first and the last, zero elsewhere) against
  the NumPy engine on those two samples (``method="sequential"``; ``"scan"`` with recurrent delays, where the event
  loop would take hours at 512 neurons): identical counts, spike events, log lengths and log neurons, times and
  log currents within ``TOL["float64"]``, every gradient (weights, threshold, recurrent weights and delays, input
  times) within the same table. The NumPy references (and Numba's compile of the recurrent engine) run from the
  start of the protocol in a background process (``recurrent_reference``: CPU only, ``nice``; one single-threaded
  worker process per layer, the largest first, as the host's cores allow), beside the other stages; the stage
  waits for them. Then, for the layers that passed, cheapest row first: forward + backward
  at batch 32 and 256 with a CUDA event pair around the forward, the backward and every kernel launch (wall time
  beside them), the compiled CPU engine (``engine="numba"``, all cores, wall time of forward and of forward +
  backward) on the same inputs, checked against the CUDA layer on every sample (counts, times, gradients within the
  table), and the CUDA layer's peak memory. Every part runs only when its predicted time fits what is left of the
  stage (from the last measurement: waves of blocks over the multiprocessors, rounds of samples over the CPU
  threads, the ratio of events per sample); what did not fit is listed in ``skipped`` with the reason. Its timeout
  (``STAGES``: at most 90 s, at least 20 s kept for it) comes out of the same 450 s; the earlier stages' are as
  before.
- ``ncu`` (S7, ``--ncu``; skipped when ``ncu`` is missing): Nsight Compute (``--clock-control none``) on the default
  variant's kernels at batch 32 (or on each of ``--ncu-variants``, one ncu run each): launch statistics
  (registers, shared memory), occupancy, speed of light and the memory workload (hit rates, sectors per request).

The JSON: ``stamp`` (``_stamp.stamp()``: commit, dirty flag, machine, versions; ``device`` set to the GPU),
``settings``, ``stages`` (``{name: {status, protocol_step, elapsed_s, timeout_s, reason?, result}}``, ``status`` one
of ``ok``, ``skipped``, ``failed``, ``timeout``), ``gate`` (per variant), ``work`` and ``floor`` (the formula and
its constants), ``fraction_of_floor`` (default variant, batch 256, forward + backward), ``speedups``
(``[{batch, variant, baseline, ratio, measure}]``, ``baseline`` one of ``jax_f32``, ``jax_f64``, ``step``,
``sequential``, ``numba_cpu``: the recurrent rows, ``variant`` ``recurrent_n<neurons>[_delays]``), ``recurrent_gate``
(per recurrent layer), ``summary`` (per batch: the fastest variant, ``auto`` against it forward-only and forward +
backward), ``predictions`` (PERF.md's, beside the measurements) and ``table`` (the lines printed last).

``--dry-run`` runs every stage on the CPU: NumPy arrays, the kernels' host emulation (``spikescan.cuda._hostemu``),
``time.perf_counter`` instead of CUDA events, tracemalloc instead of the pool hook, JAX on the CPU at tiny sizes
(recorded as skipped without JAX), tiny shapes. Its timings mean nothing; it checks that the protocol runs and
writes the structure a GPU run writes (``"dry_run": true``).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback

import numpy as np

_HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(_HERE)
for _path in (os.path.join(ROOT, "tests"), ROOT, _HERE):
    if _path not in sys.path:
        sys.path.insert(0, _path)

from _stamp import stamp  # noqa: E402
from bench_lif import shd_like_inputs  # noqa: E402
from bench_lif_jax import MAX_SPIKES, TAU_MEM, TAU_SYN, THRESHOLD  # noqa: E402

# ---------------------------------------------------------------------------------------------------------------
# What is measured
# ---------------------------------------------------------------------------------------------------------------

# Variants of the CUDA path: forward method (spikescan.cuda._lif.forward), backward kernel (_lif.backward, or
# "closed": the closed-form kernel, spikescan.cuda._closed.backward_closed; "auto" as spikescan.lif_backward resolves
# it) and module settings applied while the variant runs. "default" is what a user gets (auto / auto, the library's
# settings, whatever they are at the commit measured); every other variant states every setting (BASE_SETTINGS, then
# its own), so that its name means the same kernels at every commit. "sequential" is the first GPU-verified kernel
# set, the baseline "sequential" of the speedups; "previous_default" is what a user got before the H200 run of
# commit 9122a8f made the M2 paths the defaults.
BASE_SETTINGS = {"spikescan.cuda._queue.USE_KERNEL": False, "spikescan.cuda._queue.ALGORITHM": "bitonic",
                 "spikescan.cuda._queue.PERMUTATION": False, "spikescan.cuda._lif.QUIET_GAP": False,
                 "spikescan.cuda._lif.FORWARD_CHECKPOINTS": False, "spikescan.cuda._lif.WARP_SOLVE": False,
                 "spikescan.cuda._lif.SMALL_GRID_BLOCK": None, "spikescan.cuda._lif.REBASED": False,
                 "spikescan.cuda._lif.BACKWARD_AUTO": "sequential", "spikescan.cuda._closed.AUTO": False,
                 "spikescan.cuda._closed.REBASED": False, "spikescan.cuda._closed.DETERMINISTIC": False,
                 "spikescan.cuda.SCAN_ON_PERMUTED": False, "spikescan.cuda._lif.ENTRY_TABLE": False,
                 "spikescan.cuda._lif.STAGED_SCAN": False, "spikescan.cuda._lif.SCAN_PREFETCH": False,
                 "spikescan.cuda._closed.SHARED_ACCUMULATORS": False}
# The M2 forward and queue settings shared by the m2_* variants (FORWARD_CHECKPOINTS off: the closed-form backward
# reads none).
M2_SETTINGS = {"spikescan.cuda._queue.USE_KERNEL": True,
               "spikescan.cuda._queue.ALGORITHM": "counting",
               "spikescan.cuda._lif.QUIET_GAP": True,
               "spikescan.cuda._lif.FORWARD_CHECKPOINTS": False,
               "spikescan.cuda._lif.SMALL_GRID_BLOCK": 64,
               "spikescan.cuda._lif.WARP_SOLVE": True,
               "spikescan.cuda._queue.PERMUTATION": True}
VARIANTS = {
    "default": dict(forward="auto", backward="auto", settings={}),
    "sequential": dict(forward="sequential", backward="sequential",
                       settings={"spikescan.cuda._queue.USE_KERNEL": False}),
    "previous_default": dict(forward="auto", backward="auto", settings={}),
    # Every opt-in path at once (the M2 candidate so far): warp backward from the forward's checkpoints, counting-
    # sort permutation queues, the quiet-gap forward, the scan forward's three-lane solve, 64-thread blocks for
    # small launches. Early in the list so that a stage short of time still measures it.
    "m2_candidate": dict(forward="auto", backward="scan",
                         settings={**M2_SETTINGS, "spikescan.cuda._lif.FORWARD_CHECKPOINTS": True}),
    # P1c: the closed-form (EventProp) backward, one warp per neuron (kernels/lif_backward_closed.cu).
    "closed_bwd": dict(forward="sequential", backward="closed", settings={"spikescan.cuda._queue.USE_KERNEL": False}),
    # m2_candidate with the closed-form backward (which reads neither the forward's checkpoints nor a first pass).
    "m2_closed": dict(forward="auto", backward="closed", settings=M2_SETTINGS),
    # m2_closed with the scan forward at every batch (auto picks the sequential kernel for large batches).
    "m2_closed_scan_fwd": dict(forward="scan", backward="closed", settings=M2_SETTINGS),
    # The forward's entry table (spikescan.cuda._lif.ENTRY_TABLE: sources from a per-sample table, weight and delay
    # from the neuron's row of pairs in one load, no integer divisions) on the scan forward, and on auto's kernels
    # (the sequential forward at large batches without SCAN_ON_PERMUTED): the first step of PERF.md section 6's road.
    "m3_table_scan": dict(forward="scan", backward="closed",
                          settings={**M2_SETTINGS, "spikescan.cuda._lif.ENTRY_TABLE": True}),
    "m3_table": dict(forward="auto", backward="closed",
                     settings={**M2_SETTINGS, "spikescan.cuda._lif.ENTRY_TABLE": True}),
    # m3_table_scan with each sample's shared queue staged in shared memory by the scan forward
    # (spikescan.cuda._lif.STAGED_SCAN, PERF.md section 6 road item 1).
    "m3_staged": dict(forward="scan", backward="closed",
                      settings={**M2_SETTINGS, "spikescan.cuda._lif.ENTRY_TABLE": True,
                                "spikescan.cuda._lif.STAGED_SCAN": True}),
    # m3_table_scan with the next chunk's entries prefetched a round early (spikescan.cuda._lif.SCAN_PREFETCH: the
    # loads' latency overlaps a round's arithmetic; aimed at batch 1), and the same on m3_staged.
    "m3_prefetch": dict(forward="scan", backward="closed",
                        settings={**M2_SETTINGS, "spikescan.cuda._lif.ENTRY_TABLE": True,
                                  "spikescan.cuda._lif.SCAN_PREFETCH": True}),
    "m3_staged_prefetch": dict(forward="scan", backward="closed",
                               settings={**M2_SETTINGS, "spikescan.cuda._lif.ENTRY_TABLE": True,
                                         "spikescan.cuda._lif.STAGED_SCAN": True,
                                         "spikescan.cuda._lif.SCAN_PREFETCH": True}),
    # m3_table_scan with the closed-form backward's weight and delay gradients summed per neuron in shared memory
    # (spikescan.cuda._closed.SHARED_ACCUMULATORS: n_in global atomics per neuron instead of one per entry).
    "m3_shared_accum": dict(forward="scan", backward="closed",
                            settings={**M2_SETTINGS, "spikescan.cuda._lif.ENTRY_TABLE": True,
                                      "spikescan.cuda._closed.SHARED_ACCUMULATORS": True}),
    # m2_closed with deterministic reductions (P4): per-spike records, then source-major kernels without atomics.
    "m2_closed_det": dict(forward="auto", backward="closed",
                          settings={**M2_SETTINGS, "spikescan.cuda._closed.DETERMINISTIC": True}),
    "closed_det_bwd": dict(forward="sequential", backward="closed",
                           settings={"spikescan.cuda._queue.USE_KERNEL": False,
                                     "spikescan.cuda._closed.DETERMINISTIC": True}),
    # P3b: rebased exponential sums. The sequential forward's (no exponential per queue entry; same spike counts,
    # times within rounding) and the closed-form backward's (the entries' exponentials as products of tabulated
    # factors), each alone, and both with the M2 settings: the M3 core (P1c + P3b + P4's kernels) as far as it is built.
    "m2_closed_rebased": dict(forward="sequential", backward="closed",
                              settings={**M2_SETTINGS, "spikescan.cuda._lif.REBASED": True,
                                        "spikescan.cuda._closed.REBASED": True}),
    "rebased_fwd": dict(forward="sequential", backward="sequential",
                        settings={"spikescan.cuda._queue.USE_KERNEL": False, "spikescan.cuda._lif.REBASED": True}),
    "closed_rebased_bwd": dict(forward="sequential", backward="closed",
                               settings={"spikescan.cuda._queue.USE_KERNEL": False,
                                         "spikescan.cuda._closed.REBASED": True}),
    "scan_fwd": dict(forward="scan", backward="sequential", settings={"spikescan.cuda._queue.USE_KERNEL": False}),
    "warp_bwd": dict(forward="sequential", backward="scan", settings={"spikescan.cuda._queue.USE_KERNEL": False}),
    "scan_fwd_warp_bwd": dict(forward="scan", backward="scan", settings={"spikescan.cuda._queue.USE_KERNEL": False}),
    "auto_warp_bwd_queue_kernel": dict(forward="auto", backward="scan",
                                       settings={"spikescan.cuda._queue.USE_KERNEL": True}),
    # The forward kernels' exact cheap gap test (P3a's first part): same spikes, less work per quiet gap.
    "sequential_quiet_gap": dict(forward="sequential", backward="sequential",
                                 settings={"spikescan.cuda._queue.USE_KERNEL": False,
                                           "spikescan.cuda._lif.QUIET_GAP": True}),
    "scan_fwd_quiet_gap": dict(forward="scan", backward="sequential",
                               settings={"spikescan.cuda._queue.USE_KERNEL": False,
                                         "spikescan.cuda._lif.QUIET_GAP": True}),
    # The scan forward's Newton solve with its three probes on three lanes (same spikes bit for bit).
    "scan_fwd_warp_solve": dict(forward="scan", backward="sequential",
                                settings={"spikescan.cuda._queue.USE_KERNEL": False,
                                          "spikescan.cuda._lif.WARP_SOLVE": True}),
    # P1b: the forward writes the backward's checkpoints, the backward skips its first pass (one launch, no groups).
    "fwd_checkpoints": dict(forward="sequential", backward="sequential",
                            settings={"spikescan.cuda._queue.USE_KERNEL": False,
                                      "spikescan.cuda._lif.FORWARD_CHECKPOINTS": True}),
    "fwd_checkpoints_warp_bwd": dict(forward="sequential", backward="scan",
                                     settings={"spikescan.cuda._queue.USE_KERNEL": False,
                                               "spikescan.cuda._lif.FORWARD_CHECKPOINTS": True}),
    # P2b's counting-sort queue kernel against the bitonic one (auto_warp_bwd_queue_kernel) and the argsort path.
    "queue_counting": dict(forward="sequential", backward="sequential",
                           settings={"spikescan.cuda._queue.USE_KERNEL": True,
                                     "spikescan.cuda._queue.ALGORITHM": "counting"}),
    # P2b's memory half: uint16 permutations of the shared queue instead of materialised queues (2 bytes per entry
    # instead of 12), the LIF kernels recomputing every arrival.
    "queue_permutation": dict(forward="auto", backward="auto",
                              settings={"spikescan.cuda._queue.USE_KERNEL": True,
                                        "spikescan.cuda._queue.ALGORITHM": "counting",
                                        "spikescan.cuda._queue.PERMUTATION": True}),
}
for _name, _spec in VARIANTS.items():
    if _name != "default":
        _spec["settings"] = {**BASE_SETTINGS, **_spec["settings"]}
BASELINE_VARIANT = "sequential"
KEPT_VARIANTS = ("default", BASELINE_VARIANT)  # whatever --variants says
SPEEDUP_BASELINES = ("jax_f32", "jax_f64", "step", "sequential", "numba_cpu")
CHUNK_SIZE = 32
SWEEP_MAX_SPIKES = 64  # bench_lif_cuda.py's layer sweep


class Shape:
    """The two-layer network ``n_in -> hidden -> hidden`` (delays on both layers) and its input statistics."""

    def __init__(self, n_in, spikes, hidden, w1_scale=1.0, w2_scale=1.0):
        self.n_in, self.spikes, self.hidden, self.w1_scale, self.w2_scale = n_in, spikes, hidden, w1_scale, w2_scale

    def as_dict(self):
        return dict(n_in=self.n_in, spikes=self.spikes, hidden=self.hidden, w1_scale=self.w1_scale,
                    w2_scale=self.w2_scale)


# Real runs: the SHD network of PERF.md (bench_lif_jax._inputs); the gate's small case keeps its input statistics
# with 64 hidden neurons, layer 2's weights scaled so that it fires a few to ~50 times per neuron (past max_spikes).
# Dry runs: 24 inputs, 160 spikes (about the real rate per input), 8 hidden, weights scaled to the same firing regime
# (layer 1 ~7 spikes per neuron, layer 2 ~12 with a third of its neurons past max_spikes).
CONFIG = {
    False: dict(network=Shape(700, 5000, 512), gate=Shape(700, 5000, 64, 1.0, 4.0), gate_batch=4,
                batches=dict(large=256, medium=32, single=1), sweep_hidden=(16, 128, 512), sweep_batches=(1, 32, 256),
                sweep_shape=(700, 5000, 1.0), repeats=3, warmup=1, ceiling_copy_bytes=1 << 30,
                recurrent=dict(n_in=700, spikes=3000, hidden=(128, 512), batches=(32, 256), reference_samples=2,
                               max_spikes=16, w_scale=1.0)),
    True: dict(network=Shape(24, 160, 8, 20.0, 24.0), gate=Shape(24, 160, 8, 20.0, 24.0), gate_batch=2,
               batches=dict(large=3, medium=2, single=1), sweep_hidden=(4, 8), sweep_batches=(1, 2),
               sweep_shape=(24, 160, 20.0), repeats=1, warmup=0, ceiling_copy_bytes=1 << 24,
               recurrent=dict(n_in=24, spikes=40, hidden=(4, 8), batches=(3, 4), reference_samples=2,
                              max_spikes=16, w_scale=0.4)),
}

# name -> (PERF.md step, longest timeout in seconds, least time worth starting it with). Timeouts are shares of the
# budget: a stage gets at most its longest, and never so much that the stages after it lose their least.
STAGES = {
    "device": ("S0", 30, 5),
    "gate": ("S1", 120, 20),
    "network_large": ("S2", 120, 30),
    "jax_large": ("S3", 90, 30),
    "network_medium": ("S4", 45, 10),
    "jax_medium": ("S4", 100, 30),
    "network_single": ("S5", 40, 10),
    "baselines_single": ("S5", 30, 10),
    "jax_single": ("S5", 60, 20),
    "sweep": ("S6", 60, 10),
    "recurrent": ("S8", 90, 20),
    "ncu": ("S7", 90, 20),
}
# A dry run's stages run every variant in the host emulation, on a CPU that CI shares with other tests: their
# longest timeouts, which are sized for a GPU, are this many times longer there (the budget still bounds the total).
DRY_RUN_TIMEOUT_SCALE = 3.0
JAX_DTYPES = dict(large=("float32",), medium=("float32", "float64"), single=("float32",))
DRY_RUN_JAX = ("medium",)  # the JAX stages a dry run runs (unless --dry-run-jax-all)

# The counted floor of PERF.md section 1: instructions per unit of work of the section-4 formulation, issued at the
# device's lane-instruction rate (SMs x 4 schedulers x 32 lanes x clock; H200 / H100 SXM: 132 x 128 x 1.98 GHz).
FLOOR = dict(instructions_per_queue_entry=35, instructions_per_backward_point=30, instructions_per_spike_solve=300,
             h200_issue_rate=3.35e13)
FLOOR_FORMULA = ("floor_s = (35 * queue_entries + 30 * backward_points + 300 * spike_solves) / issue_rate; "
                 "forward_floor_s = (35 * queue_entries + 300 * spike_solves) / issue_rate; issue_rate = "
                 "multiprocessors * 128 lanes * clock (lane-instructions per second). queue_entries: input spike x "
                 "neuron over both layers; backward_points: per neuron, queue entries before its last recorded "
                 "spike plus its recorded spikes; spike_solves: every spike fired (counts, recorded or not). A "
                 "throughput floor: at small batches the latency of each neuron's chain of chunks and spikes "
                 "sets the time instead (PERF.md: ~0.4 ms at batch 32, ~0.1-0.15 ms at batch 1 on an H200). "
                 "With PERF.md's counted batch-256 work (1.04 G entries, 749 M points, 4.84 M solves) this gives "
                 "1.8 ms (1.13 ms forward) at 3.35e13/s; PERF.md quotes about 2.6 ms (1.9 ms forward), which "
                 "implies ~25 more instructions per queue entry in the forward than the 35 it states (queue "
                 "construction, presumably). The formula here uses the stated per-unit counts: a lower floor, so "
                 "fraction_of_floor errs low.")
PREDICTIONS = dict(
    source="PERF.md sections 1-3 (predicted or counted; measured only where marked)",
    floor_ms=dict(batch_256=2.6, batch_256_forward=1.9, batch_32=0.4, batch_1="0.1-0.15"),
    measured_h100_batch_256_s=dict(spikescan_default=1.40, jax_f32=1.03),
    milestones_batch_256_s=dict(M1="0.25-0.4", M2="0.065-0.095", M3="0.009-0.017"),
    milestones_batch_1_forward_backward_ms=dict(M1="~8", M2="~1-1.5", M3="~0.15-0.3"),
    targets=dict(batch_256_over_jax_f32=">= 10x", batch_1_over_today_default=">= 20x",
                 batch_1_forward_over_step=">= 100x", fraction_of_floor_batch_256=">= 0.03 (M2)",
                 peak_memory_batch_256="< 1/3 of 34 GiB"),
)


# ---------------------------------------------------------------------------------------------------------------
# Inputs, devices, clocks
# ---------------------------------------------------------------------------------------------------------------

def network_inputs(shape, batch, seed=0):
    """Input spikes ``[batch, n_in, max_in]`` and ``(W1, D1, W2, D2)``: ``bench_lif_jax._inputs`` for the real shape
    (the JAX baseline and spikescan see the same arrays), scaled weights for the small ones."""
    t, W1, D1 = shd_like_inputs(batch, shape.n_in, shape.spikes, shape.hidden, seed=seed, delays=True)
    rng = np.random.default_rng(seed + 1)
    W2 = rng.normal(0.0, 1.0, (shape.hidden, shape.hidden)) * 0.25 + 0.08
    D2 = rng.uniform(0.0, 25.0, (shape.hidden, shape.hidden))
    return t, (W1 * shape.w1_scale, D1, W2 * shape.w2_scale, D2)


class StageSkipped(Exception):
    """A stage that cannot run here (no device, no JAX, nothing passed the gate): recorded as skipped."""


class Device:
    """Where the kernels run: CuPy with ``_kernels.launch`` and CUDA events, or (dry run) NumPy with the host
    emulation's launch and ``time.perf_counter``."""

    def __init__(self, dry_run):
        self.dry_run = dry_run
        if dry_run:
            from spikescan.cuda import _hostemu

            if _hostemu.compiler() is None:
                raise StageSkipped("no host C++ compiler for the kernel emulation")
            self.xp = np
            self.launch = _hostemu.HostKernels().launch
            self.gpu = False
        else:
            from spikescan.cuda import _lif, is_available

            if not is_available():
                raise StageSkipped("no CUDA device (CuPy missing or no GPU)")
            import cupy

            self.xp = cupy
            self.launch = _lif._cupy_launch
            self.gpu = True

    def asarray(self, x):
        return None if x is None else self.xp.asarray(x)

    def to_host(self, x):
        if x is None or isinstance(x, (np.ndarray, float, int)):
            return x
        return self.xp.asnumpy(x)

    def sync(self):
        if self.gpu:
            self.xp.cuda.get_current_stream().synchronize()

    def free(self):
        if self.gpu:
            self.xp.get_default_memory_pool().free_all_blocks()

    def peak_memory(self, fn):
        """Peak memory of ``fn()``: CuPy pool high-water mark (memory hook), pool and device bytes (``memGetInfo``);
        dry run: tracemalloc's peak of the host allocations (NumPy reports its arrays to it)."""
        if not self.gpu:
            import tracemalloc

            tracemalloc.start()
            try:
                fn()
                peak = tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()
            return dict(peak_bytes=int(peak), method="tracemalloc peak of host allocations (dry run)")
        import cupy

        class Hook(cupy.cuda.MemoryHook):
            name = "spikescan_gpu_perf_peak"

            def __init__(hook):
                hook.current = hook.peak = 0

            def malloc_postprocess(hook, **kw):
                hook.current += kw["mem_size"]
                hook.peak = max(hook.peak, hook.current)

            def free_postprocess(hook, **kw):
                hook.current -= kw["mem_size"]

        pool = cupy.get_default_memory_pool()
        pool.free_all_blocks()
        free0, total = cupy.cuda.runtime.memGetInfo()
        hook = Hook()
        with hook:
            fn()
            self.sync()
        free1, _ = cupy.cuda.runtime.memGetInfo()
        out = dict(peak_bytes=int(hook.peak), pool_reserved_bytes=int(pool.total_bytes()),
                   device_used_bytes=int(total - free1), device_used_before_bytes=int(total - free0),
                   device_total_bytes=int(total),
                   method="CuPy memory-pool high-water mark (memory hook); memGetInfo after the run, pool not freed")
        pool.free_all_blocks()
        return out


class _Host:
    """Host arrays as a ``Device`` sees them (for results computed by the NumPy reference)."""

    gpu, xp = False, np

    @staticmethod
    def to_host(x):
        return x


HOST = _Host()


class Clock:
    """Named time spans: CUDA event pairs on the current stream (GPU) or ``perf_counter`` (dry run)."""

    def __init__(self, device):
        self.device = device
        self.spans = []

    @contextlib.contextmanager
    def span(self, name):
        if self.device.gpu:
            import cupy

            start = cupy.cuda.Event()
            start.record()
            try:
                yield
            finally:
                end = cupy.cuda.Event()
                end.record()
                self.spans.append((name, start, end))
        else:
            start = time.perf_counter()
            try:
                yield
            finally:
                self.spans.append((name, start, time.perf_counter()))

    def totals(self):
        """``{name: [seconds, count]}`` summed over the spans of each name."""
        self.device.sync()
        out = {}
        for name, start, end in self.spans:
            if self.device.gpu:
                import cupy

                seconds = cupy.cuda.get_elapsed_time(start, end) / 1e3
            else:
                seconds = end - start
            entry = out.setdefault(name, [0.0, 0])
            entry[0] += seconds
            entry[1] += 1
        return out


@contextlib.contextmanager
def applied(settings):
    """Set module attributes (``{"package.module.NAME": value}``) for the duration; restore them after."""
    saved = []
    try:
        for path, value in settings.items():
            module_name, attr = path.rsplit(".", 1)
            module = importlib.import_module(module_name)
            saved.append((module, attr, getattr(module, attr)))
            setattr(module, attr, value)
        yield
    finally:
        for module, attr, value in reversed(saved):
            setattr(module, attr, value)


@contextlib.contextmanager
def timed_queue_builds(clock):
    """Time every ``spikescan.cuda._queue.build_queues`` call (the launchers reach it through the module)."""
    from spikescan.cuda import _queue

    if clock is None:
        yield
        return
    original = _queue.build_queues

    def build_queues(*args, **kwargs):
        with clock.span("queue_build"):
            return original(*args, **kwargs)

    _queue.build_queues = build_queues
    try:
        yield
    finally:
        _queue.build_queues = original


def timed_launch(device, clock, kernel_events=True):
    if clock is None or not kernel_events:
        return device.launch

    def launch(module, kernel, dtype, grid, block, args, shared_mem=0):
        with clock.span("kernel/" + kernel):
            device.launch(module, kernel, dtype, grid, block, args, shared_mem)

    return launch


class Layer:
    """One LIF layer on the device, driven through the CUDA launchers (``_lif.forward`` / ``_lif.backward``, or
    ``_closed.backward_closed`` for the backward method ``"closed"``)."""

    def __init__(self, device, W, D, max_spikes=MAX_SPIKES):
        xp = device.xp
        self.device, self.max_spikes = device, max_spikes
        self.W, self.D = device.asarray(W), device.asarray(D)
        n_out = W.shape[1]
        self.tau_mem = xp.full(n_out, TAU_MEM, dtype=xp.float64)
        self.tau_syn = xp.full(n_out, TAU_SYN, dtype=xp.float64)

    def forward(self, t, method, launch):
        from spikescan.cuda import _lif

        return _lif.forward(self.device.xp, launch, t, self.W, self.D, self.tau_mem, self.tau_syn, THRESHOLD,
                            self.max_spikes, method, CHUNK_SIZE, "newton")

    def backward(self, result, grad_times, method, launch, input_times_grad=True):
        from spikescan.cuda import _closed, _lif

        method = _closed.resolve_auto(method)  # as spikescan.lif_backward resolves it for a feed-forward layer
        if method == "closed":
            return _closed.backward_closed(self.device.xp, launch, result, grad_times, input_times_grad)
        return _lif.backward(self.device.xp, launch, result, grad_times, method, input_times_grad)


class Network:
    """The two-layer network; ``run`` is one forward (+ backward) of a variant, the loss that of ``bench_lif_jax``
    (sum of layer 2's finite spike times: cotangent 1 on every recorded spike), no gradient for the input spikes."""

    def __init__(self, device, t, params):
        W1, D1, W2, D2 = params
        self.device = device
        self.t = device.asarray(t)
        self.layers = (Layer(device, W1, D1), Layer(device, W2, D2))

    def run(self, variant, clock=None, backward=True, kernel_events=True):
        spec = VARIANTS[variant]
        xp = self.device.xp
        launch = timed_launch(self.device, clock, kernel_events)
        span = clock.span if clock is not None else (lambda name: contextlib.nullcontext())
        l1, l2 = self.layers
        with applied(spec["settings"]), timed_queue_builds(clock):
            with span("forward/layer1"):
                r1 = l1.forward(self.t, spec["forward"], launch)
            with span("forward/layer2"):
                r2 = l2.forward(r1.times, spec["forward"], launch)
            if not backward:
                return r1, r2, None, None
            with span("backward/layer2"):
                g2 = l2.backward(r2, xp.isfinite(r2.times).astype(r2.times.dtype), spec["backward"], launch)
            with span("backward/layer1"):
                g1 = l1.backward(r1, g2.input_times, spec["backward"], launch, input_times_grad=False)
        return r1, r2, g1, g2


def median(values):
    return float(np.median(values)) if len(values) else None


def summarise_runs(runs):
    """Medians over timed runs: wall, forward and backward (sums of the layers' spans), queue builds, kernels."""
    out = dict(repeats=len(runs), wall_s=median([r["wall_s"] for r in runs]), wall_s_all=[r["wall_s"] for r in runs])
    names = sorted({name for r in runs for name in r["spans"]})
    spans = {name: median([r["spans"].get(name, [0.0, 0])[0] for r in runs]) for name in names}
    out["forward_s"] = median([sum(v[0] for k, v in r["spans"].items() if k.startswith("forward/")) for r in runs])
    backward = [sum(v[0] for k, v in r["spans"].items() if k.startswith("backward/")) for r in runs]
    out["backward_s"] = median(backward) if any(k.startswith("backward/") for k in names) else None
    out["queue_build_s"] = spans.get("queue_build")
    out["spans_s"] = {k: v for k, v in spans.items() if not k.startswith("kernel/")}
    out["kernels"] = {name[len("kernel/"):]: dict(seconds=spans[name], launches=runs[-1]["spans"].get(name, [0, 0])[1])
                      for name in names if name.startswith("kernel/")}
    return out


def time_runs(device, fn, repeats, warmup, inspect=None):
    """``warmup`` untimed calls of ``fn(clock)``, then ``repeats`` timed ones. ``inspect`` sees the first call's
    result, which is dropped before the next call (at batch 256 one result holds gigabytes of queues). Returns
    ``(inspect(first result) or None, runs)``."""
    seen, runs, _ = _timed_calls(device, fn, repeats, warmup, inspect)
    return seen, runs


def _timed_calls(device, fn, repeats, warmup, inspect, may_call=None):
    """The loop of ``time_runs``; before each call ``may_call(seconds of the last call, or None)`` may stop it.
    Returns ``(inspect(first result) or None, runs, calls not made)``."""
    seen, runs, last = None, [], None
    for i in range(warmup + repeats):
        if may_call is not None and not may_call(last):
            return seen, runs, warmup + repeats - i
        clock = Clock(device) if i >= warmup else None
        device.sync()
        start = time.perf_counter()
        out = fn(clock)
        device.sync()
        last = time.perf_counter() - start
        if clock is not None:
            runs.append(dict(wall_s=last, spans=clock.totals()))
        if i == 0 and inspect is not None:
            seen = inspect(out)
        del out
    return seen, runs, 0


# Host-side profile of one forward + backward (batch 1): where the wall goes that the kernels do not take.
HOST_PROFILE_RUNS = 3
HOST_PROFILE_TOP = 25
# Functions in which the host waits for the device (a host sync), by the name cProfile gives them: CuPy's array
# reads and stream / device synchronisations. A wait inside int() or float() of a device scalar is not a call
# cProfile sees: it counts as the calling function's own time (spikescan's launchers then show a large tottime).
WAITS = re.compile(r"synchronize|'get' of 'cupy|asnumpy|'item' of 'cupy|'tolist' of 'cupy")


def plain_walls(device, fn, repeats):
    """Wall times of ``repeats`` calls of ``fn()`` with nothing recorded around the kernels (no CUDA events): the
    time a user's call takes, beside the instrumented runs' ``wall_s`` (whose event pairs cost host time)."""
    walls = []
    for _ in range(max(int(repeats), 1)):
        device.sync()
        start = time.perf_counter()
        out = fn()
        device.sync()
        walls.append(time.perf_counter() - start)
        del out
    return walls


def _profile_package(filename, name):
    """The package a profiled function belongs to: the first directory after ``site-packages`` or the repository
    (``spikescan``, ``cupy``, ``numpy``, ``benchmarks``), for built-ins the module named in the function's name
    (CuPy's compiled methods show as ``<method 'get' of 'cupy._core.core._ndarray_base' objects>``)."""
    if filename == "~":
        for package in ("cupy", "numpy", "spikescan"):
            if package in name:
                return package
        return "builtins"
    path = filename.replace("\\", "/")
    for marker in ("site-packages/", ROOT.replace("\\", "/") + "/"):
        if marker in path:
            return path.split(marker, 1)[1].split("/", 1)[0].split(".", 1)[0]
    return "other"


def host_profile(device, fn, runs=HOST_PROFILE_RUNS, top=HOST_PROFILE_TOP):
    """``fn()`` (one forward + backward) profiled by ``cProfile`` over ``runs`` calls after a warm one, per call:
    wall, kernel launches (counted by wrapping ``device.launch``), ``tottime`` summed by package, and the ``top``
    functions by ``tottime``. Time a function spends waiting for the device (a host sync) is its own ``tottime``:
    ``sync_s`` sums the waits cProfile names (``WAITS``), and ``host_s``, the wall less ``sync_s``, bounds the host's
    own work from above (waits inside ``int()`` / ``float()`` of device scalars stay in it, as their callers'
    time)."""
    import cProfile
    import pstats

    launched = []
    launch = device.launch

    def counting(*args, **kw):
        launched.append(args[1])
        return launch(*args, **kw)

    fn()
    device.sync()
    profiler = cProfile.Profile()
    device.launch = counting
    try:
        start = time.perf_counter()
        profiler.enable()
        for _ in range(runs):
            out = fn()
            device.sync()
            del out
        profiler.disable()
        wall = (time.perf_counter() - start) / runs
    finally:
        device.launch = launch
    rows, packages = [], {}
    for (filename, line, name), (_, calls, tottime, cumtime, _) in pstats.Stats(profiler).stats.items():
        package = _profile_package(filename, name)
        packages[package] = packages.get(package, 0.0) + tottime / runs
        shown = os.path.relpath(filename, ROOT) if filename.startswith(ROOT) else filename
        where = name if filename == "~" else f"{shown}:{line}({name})"
        rows.append(dict(function=where, package=package, calls=calls / runs, tottime_s=tottime / runs,
                         cumtime_s=cumtime / runs))
    rows.sort(key=lambda r: -r["tottime_s"])
    waits = [r for r in rows if WAITS.search(r["function"])]
    sync_s = sum(r["tottime_s"] for r in waits)
    return dict(runs=runs, wall_s=wall, launches=len(launched) / runs,
                kernels=sorted(set(launched)), sync_s=sync_s, host_s=max(wall - sync_s, 0.0),
                waits=waits[:10], packages=dict(sorted(packages.items(), key=lambda kv: -kv[1])), top=rows[:top])


def work_counts(device, result, max_spikes):
    """Queue entries, backward points and spike solves of one layer's forward result (host numbers)."""
    res = result.residuals
    counts = device.to_host(result.counts)
    q_end = device.to_host(res.queue_end)
    batch, n_out = counts.shape
    entries = int(q_end.sum()) * (n_out // q_end.shape[1])
    n_rec = np.minimum(counts, max_spikes).reshape(-1)
    events = device.to_host(res.spike_event).reshape(-1, max_spikes)
    last = events[np.arange(n_rec.size), np.maximum(n_rec - 1, 0)]
    points = int(np.where(n_rec > 0, last + n_rec, 0).sum())
    return dict(queue_entries=entries, backward_points=points, spike_solves=int(counts.sum()),
                recorded_spikes=int(n_rec.sum()), queue_len=int(res.queue_length - 1),
                mean_spikes_per_neuron=float(counts.mean()), neurons_over_max_spikes=int((counts > max_spikes).sum()),
                neurons=int(counts.size))


# ---------------------------------------------------------------------------------------------------------------
# Stages (each runs in its own process: ``--stage NAME``)
# ---------------------------------------------------------------------------------------------------------------

class StageWriter:
    """The stage's result file, rewritten (atomically) whenever the stage has something new."""

    def __init__(self, path):
        self.path = path
        self.result = {}

    def flush(self, status=None, **extra):
        record = dict(result=self.result, **extra)
        if status is not None:
            record["status"] = status
        write_json(self.path, record)


def write_json(path, data):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1, default=_json_default)
    os.replace(tmp, path)


def _json_default(x):
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating,)):
        return float(x)
    if isinstance(x, np.ndarray):
        return x.tolist()
    return str(x)


def _finite(x):
    return None if x is None or not math.isfinite(x) else float(x)


class StageContext:
    def __init__(self, args, writer):
        self.args, self.writer = args, writer
        self.dry_run = args.dry_run
        self.config = CONFIG[args.dry_run]
        self.deadline = args.deadline
        self.workdir = args.workdir
        path = os.path.join(args.workdir, "context.json")
        self.shared = {}
        if os.path.exists(path):
            with open(path) as f:
                self.shared = json.load(f)
        self.repeats = args.repeats if args.repeats else self.config["repeats"]

    def time_left(self):
        return self.deadline - time.time()

    def variants(self):
        """Variants the gate passed (all of them when the stage runs alone, without the orchestrator's context)."""
        passed = self.shared.get("variants_passed")
        return [v for v in VARIANTS if passed is None or v in passed]

    def log(self, *msg):
        print(*msg, flush=True)


def compare(label, got, want, tol):
    """One gate check: ``got`` against ``want`` with ``|got - want| <= atol + rtol |want|`` (non-finite entries must
    match exactly). Returns ``dict(check, ok, max_abs_diff, worst_over_tolerance)``."""
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    if got.shape != want.shape:
        return dict(check=label, ok=False, reason=f"shape {got.shape} != {want.shape}")
    fin = np.isfinite(want)
    if not np.array_equal(np.isfinite(got), fin) or not np.array_equal(got[~fin], want[~fin]):
        return dict(check=label, ok=False, reason="non-finite entries differ")
    diff = np.abs(got[fin] - want[fin])
    allowed = tol["atol"] + tol["rtol"] * np.abs(want[fin])
    worst = float((diff / allowed).max()) if diff.size else 0.0
    return dict(check=label, ok=bool(worst <= 1.0), max_abs_diff=float(diff.max()) if diff.size else 0.0,
                worst_over_tolerance=worst)


def compare_forward(device, label, out, ref, tol):
    """Identical counts and ``spike_event``, times within ``tol["times"]``."""
    checks = [dict(check=f"{label}/counts", ok=bool(np.array_equal(device.to_host(out.counts), ref.counts))),
              dict(check=f"{label}/spike_event",
                   ok=bool(np.array_equal(device.to_host(out.residuals.spike_event), ref.residuals.spike_event)))]
    checks.append(compare(f"{label}/times", device.to_host(out.times), ref.times, tol["times"]))
    return checks


def compare_grads(device, label, grads, ref, tol):
    """The gradients by name within ``tol["grads"]``: weights, input times, delays and threshold always (``None`` on
    both sides or on neither), the time constants where both sides compute them."""
    checks = []
    for name in ("weights", "input_times", "delays", "threshold", "tau_mem", "tau_syn"):
        a, b = getattr(ref, name, None), getattr(grads, name, None)
        if a is None or b is None:
            if name not in ("tau_mem", "tau_syn") and (a is None) != (b is None):
                checks.append(dict(check=f"{label}/grad_{name}", ok=False, reason="computed on one side only"))
            continue
        checks.append(compare(f"{label}/grad_{name}", device.to_host(b), a, tol["grads"]))
    return checks


def stage_gate(ctx):
    """S1: every variant (and the ``step`` forward) against the NumPy reference on small cases; queues bit-identical."""
    import spikescan as ss
    from spikescan import _queue as np_queue
    from spikescan.cuda import _queue
    from tolerances import TOL

    device = Device(ctx.dry_run)
    tol = TOL["float64"]
    shape, batch = ctx.config["gate"], ctx.config["gate_batch"]
    t, (W1, D1, W2, D2) = network_inputs(shape, batch, seed=3)
    kw = dict(tau_mem=TAU_MEM, tau_syn=TAU_SYN, threshold=THRESHOLD, max_spikes=MAX_SPIKES, method="sequential",
              engine="numpy")
    rng = np.random.default_rng(11)
    ref1 = ss.lif_forward(t, W1, delays=D1, **kw)
    cases = {"layer1": (t, W1, D1, ref1),
             "layer2": (ref1.times, W2, D2, ss.lif_forward(ref1.times, W2, delays=D2, **kw)),
             "layer1_no_delays": (t, W1, None, ss.lif_forward(t, W1, **kw))}
    refs = {}
    for name, (tin, W, D, ref) in cases.items():
        G = rng.normal(size=ref.times.shape)
        refs[name] = (device.asarray(tin), Layer(device, W, D), ref, G, device.asarray(G),
                      ss.lif_backward(ref, G, method="sequential", engine="numpy"))
    ctx.writer.result.update(
        shape=dict(batch=batch, **shape.as_dict()), tolerances=tol, reference="spikescan.lif_forward / lif_backward, "
        "engine='numpy', method='sequential'",
        cases={name: dict(spikes=int(r[2].counts.sum()), max_per_neuron=int(r[2].counts.max()),
                          neurons_over_max_spikes=int((r[2].counts > MAX_SPIKES).sum())) for name, r in refs.items()},
        variants={})
    # Queues: both builders, bit for bit (times, flat source index, ends).
    want = np_queue.build_queues(t, D1, np)
    queue_checks = {}
    for builder, use_kernel in (("argsort", False), ("kernel", True)):
        try:
            got = _queue.build_queues(device.xp, device.launch, device.asarray(t), device.asarray(D1),
                                      use_kernel=use_kernel)
            same = all(np.array_equal(device.to_host(g).astype(w.dtype), w) for g, w in zip(got, want))
            queue_checks[builder] = dict(ok=bool(same))
        except Exception as exc:
            queue_checks[builder] = dict(ok=False, reason=f"{type(exc).__name__}: {exc}")
    ctx.writer.result["queues_bit_identical"] = queue_checks
    ctx.writer.flush()
    forwards = {}
    for variant in list(VARIANTS) + ["step"]:
        if ctx.time_left() < 2:
            ctx.writer.result["variants"][variant] = dict(status="not_run", reason="gate stage out of time")
            continue
        spec = VARIANTS.get(variant, dict(forward="step", backward=None, settings={}))
        checks = []
        start = time.perf_counter()
        try:
            with applied(spec["settings"]):
                for name, (tin, layer, ref, G, G_dev, ref_g) in refs.items():
                    key = (name, spec["forward"], json.dumps(spec["settings"], sort_keys=True))
                    if key not in forwards:
                        forwards[key] = layer.forward(tin, spec["forward"], device.launch)
                    out = forwards[key]
                    checks += compare_forward(device, name, out, ref, tol)
                    if spec["backward"] is not None:
                        grads = layer.backward(out, G_dev, spec["backward"], device.launch)
                        checks += compare_grads(device, f"{name}/backward_{spec['backward']}", grads, ref_g, tol)
                        if name == "layer1":  # the same backward again: bit for bit? (atomic sums need not be)
                            again = layer.backward(out, G_dev, spec["backward"], device.launch)
                            checks.append(repeatability_check(device, grads, again, spec))
            uses_kernel = spec["settings"].get("spikescan.cuda._queue.USE_KERNEL", _queue.USE_KERNEL)
            queue_ok = queue_checks["kernel" if uses_kernel else "argsort"]
            checks.append(dict(check="queues_bit_identical", ok=queue_ok["ok"]))
            ok = all(c["ok"] for c in checks)
            entry = dict(status="pass" if ok else "fail", checks=checks,
                         failed=[c["check"] for c in checks if not c["ok"]])
        except Exception as exc:
            entry = dict(status="error", checks=checks, reason=f"{type(exc).__name__}: {exc}",
                         traceback=traceback.format_exc()[-2000:])
        entry.update(forward=spec["forward"], backward=spec["backward"], settings=spec["settings"],
                     seconds=time.perf_counter() - start)
        ctx.writer.result["variants"][variant] = entry
        ctx.log(f"gate {variant:<28} {entry['status']}" + (f"  failed: {entry.get('failed') or entry.get('reason')}"
                                                           if entry["status"] != "pass" else ""))
        ctx.writer.flush()


def repeatability_check(device, grads, again, spec):
    """Whether a second backward gave bit-identical gradients: required (``ok``) of the variants that promise it
    (``spikescan.cuda._closed.DETERMINISTIC``), recorded for the others (atomic sums vary in their last bits)."""
    names = [n for n in ("weights", "input_times", "delays", "threshold") if getattr(grads, n) is not None]
    differ = [n for n in names if not np.array_equal(device.to_host(getattr(grads, n)),
                                                     device.to_host(getattr(again, n)))]
    promised = bool(spec["settings"].get("spikescan.cuda._closed.DETERMINISTIC", False))
    return dict(check="layer1/repeatable", ok=not (promised and differ), required=promised, bit_identical=not differ,
                differ=differ)


def stage_network(ctx, role):
    """S2 / S4 / S5: the network at one batch size, every variant that passed the gate."""
    device = Device(ctx.dry_run)
    batch = ctx.config["batches"][role]
    shape = ctx.config["network"]
    variants = ctx.variants()
    if not variants:
        raise StageSkipped("no variant passed the gate")
    t, params = network_inputs(shape, batch)
    net = Network(device, t, params)
    result = ctx.writer.result
    result.update(batch=batch, shape=shape.as_dict(), max_spikes=MAX_SPIKES, warmup=ctx.config["warmup"],
                  repeats=ctx.repeats, variants={})
    reference = {}

    def inspect(out, variant):
        """The first variant's counts and weight gradients become the reference of the others; its forward gives
        the work counts and the JAX stage's queue lengths."""
        r1, r2, g1, _ = out
        counts = (device.to_host(r1.counts), device.to_host(r2.counts))
        grad_w = device.to_host(g1.weights)
        if not reference:
            reference.update(variant=variant, counts=counts, grad_w=grad_w)
            result["work"] = {f"layer{i + 1}": work_counts(device, r, MAX_SPIKES) for i, r in enumerate((r1, r2))}
            save_reference(ctx, role, t, r1, r2, device)
            return None
        scale = max(float(np.abs(reference["grad_w"]).max()), 1e-300)
        return dict(variant=reference["variant"],
                    counts_identical=all(bool(np.array_equal(a, b)) for a, b in zip(counts, reference["counts"])),
                    grad_weights_max_rel_diff=float(np.abs(grad_w - reference["grad_w"]).max()) / scale)

    for variant in VARIANTS:
        if variant not in variants:
            result["variants"][variant] = dict(status="skipped", reason="did not pass the gate")
            continue
        if reference and ctx.time_left() < 5:
            result["variants"][variant] = dict(status="skipped", reason="stage out of time")
            ctx.writer.flush()
            continue
        start = time.perf_counter()
        try:
            agrees, runs = time_runs(device, lambda clock: net.run(variant, clock), ctx.repeats, ctx.config["warmup"],
                                     inspect=lambda out: inspect(out, variant))
            entry = dict(status="ok", **summarise_runs(runs))
            if agrees is not None:
                entry["agrees_with"] = agrees
            if role != "large":  # where the event pairs' host time is a visible part of the wall
                entry["plain_wall_s"] = median(plain_walls(device, lambda: net.run(variant), ctx.repeats))
            device.free()
            if role == "large":
                entry["memory"] = device.peak_memory(lambda: net.run(variant))
        except Exception as exc:
            entry = dict(status="failed", reason=f"{type(exc).__name__}: {exc}",
                         traceback=traceback.format_exc()[-2000:])
            device.free()
        entry["seconds"] = time.perf_counter() - start
        result["variants"][variant] = entry
        if entry["status"] == "ok":
            ctx.log(f"batch {batch:<4} {variant:<28} fwd {entry['forward_s'] * 1e3:10.2f} ms  bwd "
                    f"{entry['backward_s'] * 1e3:10.2f} ms  wall {entry['wall_s'] * 1e3:10.2f} ms")
        else:
            ctx.log(f"batch {batch:<4} {variant:<28} {entry['status']}: {entry.get('reason')}")
        ctx.writer.flush()
    if role == "single" and result["variants"].get("default", {}).get("status") == "ok" and ctx.time_left() > 5:
        try:
            profile = host_profile(device, lambda: net.run("default"))
            result["host_profile"] = profile
            ctx.log(f"batch {batch} default, host profile: wall {profile['wall_s'] * 1e3:.2f} ms, "
                    f"{profile['launches']:.0f} launches, waiting for the device {profile['sync_s'] * 1e3:.2f} ms, "
                    f"host work ~{profile['host_s'] * 1e3:.2f} ms; by package (ms): "
                    + ", ".join(f"{k} {v * 1e3:.2f}" for k, v in list(profile["packages"].items())[:5]))
        except Exception as exc:
            result["host_profile"] = dict(status="failed", reason=f"{type(exc).__name__}: {exc}")
        ctx.writer.flush()


def save_reference(ctx, role, t, r1, r2, device):
    """What the JAX stage of the same batch needs from the exact forward: queue lengths, counts, recorded times,
    queue ends and last arrivals (for its step-budget bounds)."""
    from spikescan.cuda._queue import residual_queues

    arrays = dict(L1=int(np.isfinite(t).sum(axis=(1, 2)).max()))
    for i, r in enumerate((r1, r2)):
        res = r.residuals
        q_end = device.to_host(res.queue_end)
        q_times = device.to_host(res.queue_times if res.queue_perm is None  # the permutation format: expanded
                                 else residual_queues(device.xp, res)[0])
        last = np.take_along_axis(q_times, np.maximum(q_end - 1, 0)[..., None], axis=2)[..., 0]
        arrays.update({f"counts{i + 1}": device.to_host(r.counts), f"times{i + 1}": device.to_host(r.times),
                       f"queue_end{i + 1}": q_end, f"last_arrival{i + 1}": np.where(q_end > 0, last, -np.inf)})
    arrays["L2"] = int(np.isfinite(arrays["times1"]).sum(axis=(1, 2)).max())
    np.savez(os.path.join(ctx.workdir, f"reference_{role}.npz"), **arrays)


def reference_for_jax(ctx, role, t, params):
    """The network stage's reference, or (dry run) the CPU forward computed here."""
    path = os.path.join(ctx.workdir, f"reference_{role}.npz")
    if os.path.exists(path):
        return dict(np.load(path)), "network stage (default variant)"
    if not ctx.dry_run:
        raise StageSkipped(f"no exact forward from network_{role} to take the queue lengths and counts from")
    import spikescan as ss

    W1, D1, W2, D2 = params
    kw = dict(tau_mem=TAU_MEM, tau_syn=TAU_SYN, threshold=THRESHOLD, max_spikes=MAX_SPIKES)
    r1 = ss.lif_forward(t, W1, delays=D1, **kw)
    r2 = ss.lif_forward(r1.times, W2, delays=D2, **kw)
    save_reference(ctx, role, t, r1, r2, HOST)
    return dict(np.load(path)), "spikescan CPU forward computed by this stage"


def unprocessed_bounds(counts, queue_end, last_arrival, recorded_times, L, max_spikes, K):
    """Bounds on the neurons whose inputs the JAX build leaves unprocessed: it runs ``ceil(L / K) + max_spikes + 1``
    steps, each committing ``K`` entries or firing once (advancing at most ``K - 1``). A neuron with ``n`` entries
    and ``c`` spikes before its last input needs at least ``c + ceil((n - c (K - 1)) / K)`` and at most
    ``c + ceil(n / K)`` steps; ``c`` lies between its recorded spikes before the last input and its total count."""
    budget = math.ceil(L / K) + max_spikes + 1
    n = queue_end.astype(np.int64)
    c_hi = counts.astype(np.int64)
    c_lo = (recorded_times < last_arrival[..., None]).sum(-1)
    need_lo = c_lo + np.ceil(np.maximum(n - c_lo * (K - 1), 0) / K)
    need_hi = c_hi + np.ceil(n / K)
    return dict(at_least=int((need_lo > budget).sum()), at_most=int((need_hi > budget).sum()), step_budget=budget,
                neurons=int(n.size))


def stage_jax(ctx, role):
    """S3 / S4 / S5: the JAX build of the paper's algorithm (bench_lif_jax) at one batch size, per dtype."""
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    if ctx.dry_run:
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
        # Tiny shapes: compile time dominates; XLA's cheapest CPU pipeline keeps the dry run short.
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0"
                                   " --xla_llvm_disable_expensive_passes=true").strip()
    try:
        import jax
        import jax.numpy as jnp
    except Exception as exc:
        raise StageSkipped(f"jax not importable: {type(exc).__name__}: {exc}")
    import bench_lif_jax as bj

    if ctx.dry_run:  # the dry run's programs are the same every time: compile them once per machine
        jax.config.update("jax_compilation_cache_dir", os.path.join(tempfile.gettempdir(), "spikescan_gpu_perf_jax"))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)

    if ctx.dry_run:
        jax_device = jax.devices("cpu")[0]
    else:
        try:
            jax_device = jax.devices("gpu")[0]
        except Exception as exc:
            raise StageSkipped(f"jax has no GPU backend ({type(exc).__name__}: {exc})")
    batch = ctx.config["batches"][role]
    shape = ctx.config["network"]
    t, params = network_inputs(shape, batch)
    ref, ref_source = reference_for_jax(ctx, role, t, params)
    L1, L2 = int(ref["L1"]), int(ref["L2"])
    result = ctx.writer.result
    result.update(batch=batch, shape=shape.as_dict(), max_spikes=MAX_SPIKES, chunk=bj.K, newton_steps=bj.NEWTON_STEPS,
                  queue_len=[L1, L2], queue_len_source=ref_source, jax_version=jax.__version__,
                  jax_device=str(jax_device), repeats=ctx.repeats, dtypes={},
                  note="bench_lif_jax.make_layer / queues; loss = sum of layer 2's finite spike times (its "
                       "make_network's), returning the spike times as aux so one compile gives times and outputs")
    layer1 = bj.make_layer(L1, shape.hidden, MAX_SPIKES)
    layer2 = bj.make_layer(L2, shape.hidden, MAX_SPIKES)

    def loss(p, times):
        W1, D1, W2, D2 = p
        s1 = layer1(*bj.queues(times, W1, D1, L1))
        s2 = layer2(*bj.queues(s1, W2, D2, L2))
        return jnp.sum(jnp.where(jnp.isfinite(s2), s2, 0.0)), (s1, s2)

    for dtype in JAX_DTYPES[role]:
        if ctx.time_left() < 5:
            result["dtypes"][dtype] = dict(status="skipped", reason="stage out of time")
            continue
        try:
            if dtype == "float64":
                jax.config.update("jax_enable_x64", True)
            jdt = jnp.dtype(dtype)
            with jax.default_device(jax_device):
                jp = tuple(jnp.asarray(p, jdt) for p in params)
                jt = jnp.asarray(t, jdt)
                if jt.dtype != jdt:
                    raise RuntimeError(f"jax gave {jt.dtype} for {dtype}")
                value_and_grad = jax.jit(jax.value_and_grad(loss, has_aux=True))
                start = time.perf_counter()
                out = jax.block_until_ready(value_and_grad(jp, jt))
                compile_s = time.perf_counter() - start
                times = []
                for _ in range(ctx.repeats):
                    start = time.perf_counter()
                    out = jax.block_until_ready(value_and_grad(jp, jt))
                    times.append(time.perf_counter() - start)
            (_, (s1, s2)), _ = out
            entry = dict(status="ok", compile_s=compile_s, forward_backward_s=median(times),
                         forward_backward_s_all=times)
            for i, s in enumerate((np.asarray(s1, np.float64), np.asarray(s2, np.float64))):
                entry[f"layer{i + 1}"] = agreement(s, ref, i + 1, L1 if i == 0 else L2, bj.K)
            result["dtypes"][dtype] = entry
            ctx.log(f"jax {dtype} batch {batch}: {entry['forward_backward_s'] * 1e3:.2f} ms (compile {compile_s:.1f} s)"
                    f", layer-2 recorded counts equal for {entry['layer2']['fraction_equal_recorded_counts']:.3f}")
        except Exception as exc:
            result["dtypes"][dtype] = dict(status="failed", reason=f"{type(exc).__name__}: {str(exc)[:500]}")
            ctx.log(f"jax {dtype} batch {batch}: failed: {exc!r}"[:300])
        ctx.writer.flush()
    if not any(d.get("status") == "ok" for d in result["dtypes"].values()):
        raise RuntimeError("no JAX run succeeded: " + "; ".join(f"{k}: {v.get('reason')}"
                                                                  for k, v in result["dtypes"].items()))


def agreement(s, ref, layer, L, K):
    """JAX's recorded spikes of one layer against spikescan's exact forward."""
    counts, times = ref[f"counts{layer}"], ref[f"times{layer}"]
    want = np.minimum(counts, MAX_SPIKES)
    got = np.isfinite(s).sum(-1)
    equal = got == want
    both = equal[..., None] & np.isfinite(s) & np.isfinite(times)
    diff = np.abs(s - times)[both]
    rel = diff / np.maximum(np.abs(times[both]), 1e-300)
    return dict(fraction_equal_recorded_counts=float(equal.mean()),
                neurons_missing_recorded_spikes=int((got < want).sum()),
                neurons_extra_recorded_spikes=int((got > want).sum()),
                max_abs_spike_time_diff=float(diff.max()) if diff.size else 0.0,
                max_rel_spike_time_diff=float(rel.max()) if rel.size else 0.0,
                neurons_with_unprocessed_inputs=unprocessed_bounds(counts, ref[f"queue_end{layer}"],
                                                                  ref[f"last_arrival{layer}"], times, L, MAX_SPIKES, K))


def stage_baselines(ctx):
    """S5: batch 1, layer-1 shape, forward: one event per launch against the fused kernels."""
    gate = ctx.shared.get("gate_variants", {})
    if gate and gate.get("step", {}).get("status") != "pass":
        raise StageSkipped("the step forward did not pass the gate")
    device = Device(ctx.dry_run)
    shape = ctx.config["network"]
    t, (W1, D1, _, _) = network_inputs(shape, 1, seed=7)
    layer = Layer(device, W1, D1)
    td = device.asarray(t)
    passed = {VARIANTS[v]["forward"] for v in ctx.variants() if not VARIANTS[v]["settings"].get(
        "spikescan.cuda._queue.USE_KERNEL")} | {"step"}
    result = ctx.writer.result
    result.update(batch=1, n_in=shape.n_in, n_out=shape.hidden, spikes=shape.spikes, delays=True, methods={})
    counts0 = None
    for method in ("step", "sequential", "scan", "auto"):
        if method not in passed:
            result["methods"][method] = dict(status="skipped", reason="no variant with this forward passed the gate")
            continue
        if ctx.time_left() < 3:
            result["methods"][method] = dict(status="skipped", reason="stage out of time")
            continue

        def fn(clock, method=method):
            with timed_queue_builds(clock), (clock.span("forward/layer1") if clock else contextlib.nullcontext()):
                # Step launches one kernel per queue entry: an event pair per launch would time the events.
                return layer.forward(td, method, timed_launch(device, clock, kernel_events=method != "step"))

        seen, runs = time_runs(device, fn, ctx.repeats, ctx.config["warmup"],
                               inspect=lambda out: (device.to_host(out.counts),
                                                    int(out.residuals.queue_length - 1)))
        counts, queue_len = seen
        counts0 = counts if counts0 is None else counts0
        entry = dict(status="ok", identical_counts=bool(np.array_equal(counts, counts0)), queue_len=queue_len,
                     **summarise_runs(runs))
        result["methods"][method] = entry
        ctx.log(f"batch 1 layer-1 forward {method:<10} {entry['forward_s'] * 1e3:10.3f} ms")
        ctx.writer.flush()
    m = result["methods"]
    if m.get("step", {}).get("status") == "ok":
        result["step_over"] = {k: m["step"]["forward_s"] / v["forward_s"] for k, v in m.items()
                               if k != "step" and v.get("status") == "ok"}


def stage_sweep(ctx):
    """S6: one layer with delays over hidden x batch (small first), every forward method and backward kernel."""
    from spikescan.cuda import _lif

    device = Device(ctx.dry_run)
    n_in, spikes, w_scale = ctx.config["sweep_shape"]
    passing = [VARIANTS[v] for v in ctx.variants()
               if not VARIANTS[v]["settings"].get("spikescan.cuda._queue.USE_KERNEL")]
    forwards = [m for m in ("sequential", "scan", "auto") if any(s["forward"] == m for s in passing)]
    backwards = [m for m in (*_lif.BACKWARD_KERNELS, "closed")
                 if any((_lif.BACKWARD_AUTO if s["backward"] == "auto" else s["backward"]) == m for s in passing)]
    if not forwards:
        raise StageSkipped("no forward method passed the gate")
    result = ctx.writer.result
    result.update(n_in=n_in, spikes=spikes, delays=True, max_spikes=SWEEP_MAX_SPIKES, rows=[], not_run=[])
    shapes = sorted(((b * h, b, h) for h in ctx.config["sweep_hidden"] for b in ctx.config["sweep_batches"]))
    for _, batch, hidden in shapes:
        if ctx.time_left() < 5:
            result["not_run"].append(dict(batch=batch, hidden=hidden, reason="stage out of time"))
            continue
        t, W, D = shd_like_inputs(batch, n_in, spikes, hidden, seed=batch + hidden, delays=True)
        layer = Layer(device, W * w_scale, D, max_spikes=SWEEP_MAX_SPIKES)
        td = device.asarray(t)
        row = dict(batch=batch, hidden=hidden, forward={}, backward={})
        kept = {}

        def keep(out, method):
            if method == "auto" or not kept:  # the backward runs on auto's forward (or the first there is)
                kept["result"] = out
            return float(device.to_host(out.counts).mean())

        for method in forwards:
            mean_spikes, runs = time_runs(device, lambda clock, m=method: _sweep_forward(layer, td, m, clock, device),
                                          ctx.repeats, ctx.config["warmup"], inspect=lambda out, m=method: keep(out, m))
            row["forward"][method] = dict(summarise_runs(runs), mean_spikes_per_neuron=mean_spikes)
        auto_result = kept.pop("result")
        grad = device.xp.isfinite(auto_result.times).astype(auto_result.times.dtype)
        for method in backwards:
            def fn(clock, m=method):
                with (clock.span("backward/layer") if clock else contextlib.nullcontext()):
                    return layer.backward(auto_result, grad, m, timed_launch(device, clock))

            _, runs = time_runs(device, fn, ctx.repeats, ctx.config["warmup"])
            row["backward"][method] = summarise_runs(runs)
        result["rows"].append(row)
        ctx.log(f"sweep batch {batch:<4} hidden {hidden:<4} " + "  ".join(
            f"fwd {m} {v['forward_s'] * 1e3:.2f} ms" for m, v in row["forward"].items()) + "  " + "  ".join(
            f"bwd {m} {v['backward_s'] * 1e3:.2f} ms" for m, v in row["backward"].items()))
        auto_result = layer = td = grad = None  # hand the memory back before the next shape
        device.free()
        ctx.writer.flush()


def _sweep_forward(layer, td, method, clock, device):
    with timed_queue_builds(clock), (clock.span("forward/layer") if clock else contextlib.nullcontext()):
        return layer.forward(td, method, timed_launch(device, clock))


# ---------------------------------------------------------------------------------------------------------------
# The recurrent layer (S8): its CUDA kernels against the NumPy engine, then timed beside the compiled CPU engine
# ---------------------------------------------------------------------------------------------------------------

RECURRENT_MARGIN_S = 3.0  # kept free at the end of the recurrent stage (its last flush)
RECURRENT_GRADS = ("weights", "threshold", "recurrent_weights", "recurrent_delays")


def recurrent_layers(cfg):
    """``[(key, hidden, recurrent_delays)]`` in the order the stage runs them (cheapest first)."""
    return [(f"n{h}" + ("_delays" if rd else ""), h, rd) for h in cfg["hidden"] for rd in (False, True)]


def recurrent_constants():
    """``(tau_mem, tau_syn)`` of ``bench_recurrent.py``'s layer (threshold 1)."""
    import bench_recurrent

    return bench_recurrent.TAU_MEM, bench_recurrent.TAU_SYN


def recurrent_inputs(cfg, batch, hidden, rec_delays):
    """``bench_recurrent.layer``'s SHD-like recurrent layer (Poisson input spikes over 1 s, recurrent weights
    ``N(0, 0.04)``, recurrent delays uniform on [1, 5] ms): the input spikes of ``batch`` samples, and the weights
    drawn for the first batch of ``cfg["batches"]`` (the same layer at every batch; input weights times
    ``w_scale``)."""
    from bench_recurrent import layer

    t = layer(batch, cfg["n_in"], cfg["spikes"], hidden, rec_delays)[0]
    _, w, r, dr, _ = layer(cfg["batches"][0], cfg["n_in"], cfg["spikes"], hidden, rec_delays)
    return t, w * cfg["w_scale"], r, dr


def recurrent_reference_samples(cfg):
    """The samples of the gate's batch that the NumPy reference runs (first and last, evenly spread between)."""
    last = cfg["batches"][0] - 1
    return sorted({int(round(x)) for x in np.linspace(0, last, max(1, cfg["reference_samples"]))})


def recurrent_cpu(t, w, r, dr, max_spikes, engine, method):
    """``spikescan.lif_forward`` of the recurrent layer on the CPU."""
    import spikescan as ss

    tau_mem, tau_syn = recurrent_constants()
    return ss.lif_forward(t, w, tau_mem=tau_mem, tau_syn=tau_syn, threshold=THRESHOLD, max_spikes=max_spikes,
                          recurrent_weights=r, recurrent_delays=dr, method=method, engine=engine)


def recurrent_reference_path(workdir, key):
    return os.path.join(workdir, f"recurrent_reference_{key}.npz")


def recurrent_reference_case(cfg, hidden, rec_delays, path):
    """The NumPy engine on the reference samples of the gate's batch: forward, a random cotangent on the recorded
    spikes, backward (input times included); every array the gate compares is saved to ``path``. The reference is
    ``method="sequential"`` (the global event loop) without recurrent delays; with them that loop takes every
    recurrent arrival as an event of its own (spikes x neurons per sample: hours at 512 neurons), so there it is
    NumPy's ``method="scan"`` (the min-delay windows: identical counts, times equal to rounding,
    ``tests/test_recurrent.py::test_scan_equals_sequential``)."""
    import spikescan as ss

    t, w, r, dr = recurrent_inputs(cfg, cfg["batches"][0], hidden, rec_delays)
    samples = recurrent_reference_samples(cfg)
    method = "scan" if rec_delays else "sequential"
    start = time.perf_counter()
    ref = recurrent_cpu(t[samples], w, r, dr, cfg["max_spikes"], "numpy", method)
    forward_s = time.perf_counter() - start
    G = np.random.default_rng(hidden + 1000 * rec_delays).normal(size=ref.times.shape)
    start = time.perf_counter()
    grads = ss.lif_backward(ref, G, input_times_grad=True, engine="numpy")
    backward_s = time.perf_counter() - start
    log = ref.residuals.recurrent_log
    arrays = dict(_recurrent_arrays(ref, grads), samples=np.asarray(samples), G=G)
    start = time.perf_counter()
    arrays.update(recurrent_noise(t[samples], w, r, dr, cfg["max_spikes"], method, G, arrays))
    noise_s = time.perf_counter() - start
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
    os.replace(tmp, path)
    return dict(method=method, engine="numpy", samples=samples, forward_s=forward_s, backward_s=backward_s,
                noise_s=noise_s, spikes=int(ref.counts.sum()), log_length=int(log.count.max()),
                noise={k[len("noise_"):]: float(v) for k, v in arrays.items() if k.startswith("noise_")},
                noise_scale={k: _largest(arrays[k]) for k in RECURRENT_NOISE_ARRAYS if k in arrays})


# The recurrent gate's noise floor. In a long recurrent chain (~2500 spikes per sample) the exact gradient is
# ill-conditioned: two correct float64 implementations that round differently (NumPy against Numba), or the NumPy
# engine on input times moved by one ulp, disagree by ~1e-10 of a gradient's largest entry, which on its small entries
# is 10-60x ``TOL["float64"]["grads"]``. The gate allows, per array, ``atol + RECURRENT_NOISE_FACTOR x noise`` beside
# ``rtol |want|``, where ``noise`` is the largest of those measured spreads (max abs diff over the array).
RECURRENT_NOISE_FACTOR = 4.0
RECURRENT_NOISE_ARRAYS = ("times", "log_times", "log_currents", "grad_input_times") + tuple(
    f"grad_{n}" for n in RECURRENT_GRADS)


def _recurrent_arrays(out, grads):
    """Every array of a recurrent forward and backward that the gate compares, by the names of its reference file."""
    log = out.residuals.recurrent_log
    d = dict(counts=out.counts, spike_event=out.residuals.spike_event, times=out.times, log_count=log.count,
             log_neurons=log.neurons, log_times=log.times, log_currents=log.currents,
             grad_input_times=grads.input_times)
    for name in RECURRENT_GRADS:
        if getattr(grads, name) is not None:
            d[f"grad_{name}"] = np.asarray(getattr(grads, name))
    return d


def recurrent_noise(t, w, r, dr, max_spikes, method, G, ref):
    """``noise_<array>``: the spread of correct float64 answers around the reference ``ref`` on the same layer: the
    compiled engine (another operation order) on the same inputs, and the reference's own engine on input times moved
    by one ulp (two random signs), each with the reference's cotangent; max abs diff per array over the runs whose
    spike counts and events equal the reference's (a run that changes them is left out)."""
    import spikescan as ss
    from spikescan._lif_numpy import numba_available

    runs = [(t, "numba", "sequential")] if numba_available() else []
    for seed in (1, 2):
        sign = np.random.default_rng(seed).choice([-1.0, 1.0], size=t.shape)
        runs.append((np.where(np.isfinite(t), np.nextafter(t, sign * np.inf), t), "numpy", method))
    noise = {k: 0.0 for k in RECURRENT_NOISE_ARRAYS if k in ref}
    n = ref["log_count"]
    for ti, engine, meth in runs:
        out = recurrent_cpu(ti, w, r, dr, max_spikes, engine, meth)
        if not (np.array_equal(out.counts, ref["counts"]) and np.array_equal(out.residuals.spike_event,
                                                                            ref["spike_event"])):
            continue
        got = _recurrent_arrays(out, ss.lif_backward(out, G, input_times_grad=True, engine=engine))
        if not np.array_equal(got["log_count"], n):
            continue
        for key in noise:
            a, b = np.asarray(got[key], dtype=np.float64), np.asarray(ref[key], dtype=np.float64)
            if key.startswith("log_"):
                a, b = _log_entries(a, n, range(len(n))), _log_entries(b, n, range(len(n)))
            fin = np.isfinite(a) & np.isfinite(b)
            if fin.any():
                noise[key] = max(noise[key], float(np.abs(a[fin] - b[fin]).max()))
    return {f"noise_{k}": np.float64(v) for k, v in noise.items()}


def _log_entries(a, n, rows):
    """The recorded entries of a spike-log array ``a`` in one flat array: row ``rows[j]`` holds ``n[j]``."""
    return np.concatenate([a[i, : n[j]] for j, i in enumerate(rows)])


def _largest(a):
    """Largest finite |a| (0.0 for none): the scale that a measured spread is relative to."""
    a = np.asarray(a, dtype=np.float64)
    fin = np.isfinite(a)
    return float(np.abs(a[fin]).max()) if fin.any() else 0.0


def with_noise(tol, ref, name):
    """``tol`` with its ``atol`` raised by ``RECURRENT_NOISE_FACTOR`` x the reference's measured noise of ``name``
    (none recorded: ``tol`` as it is)."""
    noise = ref.get(f"noise_{name}")
    if noise is None:
        return tol
    return dict(tol, atol=tol["atol"] + RECURRENT_NOISE_FACTOR * float(noise))


def numba_info():
    from spikescan._lif_numpy import numba_available

    import _stamp

    out = dict(available=numba_available(), cpu=_stamp._cpu_model(), cpu_count=os.cpu_count())
    if out["available"]:
        import numba

        out.update(version=numba.__version__, threads=numba.get_num_threads(),
                   threading_layer=str(numba.config.THREADING_LAYER))
    return out


def numba_warmup():
    """One tiny recurrent forward + backward per recurrent-delay mode on ``engine="numba"``: compiles the engine (or
    loads it from Numba's cache). Seconds, or ``None`` without Numba."""
    import spikescan as ss
    from spikescan._lif_numpy import numba_available

    if not numba_available():
        return None
    start = time.perf_counter()
    cfg = dict(n_in=6, spikes=30, batches=(2,), w_scale=1.0)
    for rd in (False, True):
        t, w, r, dr = recurrent_inputs(cfg, 2, 4, rd)
        out = recurrent_cpu(t, w, r, dr, 4, "numba", "sequential")
        ss.lif_backward(out, np.isfinite(out.times).astype(np.float64), input_times_grad=False, engine="numba")
    return time.perf_counter() - start


def reference_workers(n_cases, cpu_count=None):
    """Processes for the recurrent references: one per case, leaving two cores to the GPU stages' host work (one
    on a 2- or 3-core machine)."""
    cpus = os.cpu_count() if cpu_count is None else cpu_count
    return max(1, min(n_cases, (cpus or 1) - 2))


def _reference_case_entry(cfg, key, hidden, rec_delays, path):
    """One recurrent reference case in a worker process: its ``recurrent_reference_case`` record with ``status``
    and ``seconds``."""
    start = time.perf_counter()
    try:
        entry = dict(status="ok", **recurrent_reference_case(cfg, hidden, rec_delays, path))
    except Exception as exc:
        entry = dict(status="failed", reason=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc()[-2000:])
    entry["seconds"] = time.perf_counter() - start
    return key, entry


def stage_recurrent_reference(ctx):
    """Beside the other stages (CPU only, one thread per process, low priority; the orchestrator starts it first):
    Numba's cache of the recurrent engine, then the NumPy references of the recurrent gate, one file per layer as it
    is done. The layers run in parallel processes (``reference_workers``), the longest first, so that on a GPU host's
    cores the largest layer's reference (512 neurons with recurrent delays, the one a short budget missed when they
    ran one after another) starts at once."""
    import concurrent.futures
    import multiprocessing

    with contextlib.suppress(OSError):
        os.nice(10)
    cfg = ctx.config["recurrent"]
    result = ctx.writer.result
    started = time.perf_counter()
    result.update(cases={}, threads=dict((k, os.environ.get(k)) for k in ("OMP_NUM_THREADS", "NUMBA_NUM_THREADS")))
    result["numba_warmup_s"] = numba_warmup()
    layers = recurrent_layers(cfg)[::-1]  # the most expensive first
    result["workers"] = workers = reference_workers(len(layers))
    ctx.writer.flush()
    # Spawned workers (a fork would copy Numba's and JAX's thread state): each imports this file and loads the
    # recurrent engine from the cache the warm-up filled.
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(_reference_case_entry, cfg, key, hidden, rd,
                               recurrent_reference_path(ctx.workdir, key)) for key, hidden, rd in layers]
        for future in concurrent.futures.as_completed(futures):
            key, entry = future.result()
            result["cases"][key] = entry
            result["seconds"] = time.perf_counter() - started
            ctx.writer.flush()
            ctx.log(f"recurrent reference {key}: {entry['status']} in {entry['seconds']:.1f} s")


class RecurrentLayer:
    """The recurrent layer on the device, driven through ``spikescan.cuda._recurrent.forward`` / ``backward``."""

    def __init__(self, device, w, r, dr, max_spikes):
        xp = device.xp
        tau_mem, tau_syn = recurrent_constants()
        n_out = w.shape[1]
        self.device, self.max_spikes = device, max_spikes
        self.W, self.R, self.Dr = device.asarray(w), device.asarray(r), device.asarray(dr)
        self.tau_mem = xp.full(n_out, tau_mem, dtype=xp.float64)
        self.tau_syn = xp.full(n_out, tau_syn, dtype=xp.float64)
        self.threshold = xp.full(n_out, THRESHOLD, dtype=xp.float64)

    def forward(self, t, launch):
        from spikescan._lif_numpy import DEFAULT_MAX_TOTAL_SPIKES
        from spikescan.cuda import _recurrent

        return _recurrent.forward(self.device.xp, launch, t, self.W, None, self.tau_mem, self.tau_syn, self.threshold,
                                  self.max_spikes, "newton", DEFAULT_MAX_TOTAL_SPIKES, True, self.R, self.Dr)

    def backward(self, result, grad_times, launch, input_times_grad=False):
        from spikescan.cuda import _recurrent

        return _recurrent.backward(self.device.xp, launch, result, grad_times, input_times_grad)

    def run(self, t, clock=None):
        """Forward + backward (cotangent 1 on every recorded spike, no input-time gradient), as timed."""
        device = self.device
        launch = timed_launch(device, clock)
        span = clock.span if clock is not None else (lambda name: contextlib.nullcontext())
        with timed_queue_builds(clock):
            with span("forward/layer"):
                out = self.forward(t, launch)
            with span("backward/layer"):
                grads = self.backward(out, device.xp.isfinite(out.times).astype(device.xp.float64), launch)
        return out, grads


def recurrent_gate_checks(device, out, grads, ref, tol):
    """The CUDA forward and backward at the gate's batch against the NumPy reference on its samples: identical
    counts, spike events, log lengths and log neurons; times, log times and currents within ``tol["times"]``;
    gradients (the cotangent zero outside the reference samples) within ``tol["grads"]``, input-time gradients zero
    outside them."""
    host = device.to_host
    S = [int(s) for s in ref["samples"]]
    log = out.residuals.recurrent_log
    checks = [dict(check="counts", ok=bool(np.array_equal(host(out.counts)[S], ref["counts"]))),
              dict(check="spike_event",
                   ok=bool(np.array_equal(host(out.residuals.spike_event)[S], ref["spike_event"]))),
              compare("times", host(out.times)[S], ref["times"], with_noise(tol["times"], ref, "times"))]
    n = ref["log_count"]
    same_n = bool(np.array_equal(host(log.count)[S], n))
    checks.append(dict(check="log_count", ok=same_n))
    if same_n:
        ks = range(len(S))
        checks.append(dict(check="log_neurons", ok=bool(np.array_equal(_log_entries(host(log.neurons), n, S),
                                                                       _log_entries(ref["log_neurons"], n, ks)))))
        for name in ("times", "currents"):
            checks.append(compare(f"log_{name}", _log_entries(host(getattr(log, name)), n, S),
                                  _log_entries(ref[f"log_{name}"], n, ks),
                                  with_noise(tol["times"], ref, f"log_{name}")))
    for name in RECURRENT_GRADS:
        want, got = ref.get(f"grad_{name}"), getattr(grads, name)
        if (want is None) != (got is None):
            checks.append(dict(check=f"grad_{name}", ok=False, reason="computed on one side only"))
        elif want is not None:
            checks.append(compare(f"grad_{name}", host(got), want, with_noise(tol["grads"], ref, f"grad_{name}")))
    g_in = host(grads.input_times)
    checks.append(compare("grad_input_times", g_in[S], ref["grad_input_times"],
                          with_noise(tol["grads"], ref, "grad_input_times")))
    others = np.ones(g_in.shape[0], dtype=bool)
    others[S] = False
    checks.append(dict(check="grad_input_times_zero_outside_reference_samples", ok=bool(not g_in[others].any())))
    return checks


def recurrent_agreement(host_gpu, cpu_out, cpu_grads, tol):
    """The CUDA layer's first timed run against the compiled CPU engine's on the same inputs (every sample), within
    the tolerance table widened by the gate's measured spread of correct answers on the layer, taken relative to the
    largest |value| of the gate's array (``tol["noise"]``, ``tol["noise_scale"]``: array name -> max abs diff, max
    |value|) and applied to this comparison's largest |value|: the row sums its gradients over a whole batch and
    its cotangent differs from the gate's, so the spread scales with the values (see ``with_noise``)."""
    spread, scale = tol.get("noise") or {}, tol.get("noise_scale") or {}
    wants = dict(times=cpu_out.times, **{f"grad_{n}": getattr(cpu_grads, n) for n in RECURRENT_GRADS
                                           if getattr(cpu_grads, n) is not None})
    noise = {}
    for k, v in spread.items():
        if k in wants:
            noise[f"noise_{k}"] = v * _largest(wants[k]) / scale[k] if scale.get(k) else v
    checks = [dict(check="counts", ok=bool(np.array_equal(host_gpu["counts"], cpu_out.counts))),
              compare("times", host_gpu["times"], cpu_out.times, with_noise(tol["times"], noise, "times"))]
    for name in RECURRENT_GRADS:
        want, got = getattr(cpu_grads, name), host_gpu["grads"].get(name)
        if (want is None) != (got is None):
            checks.append(dict(check=f"grad_{name}", ok=False, reason="computed on one side only"))
        elif want is not None:
            checks.append(compare(f"grad_{name}", got, np.asarray(want),
                                  with_noise(tol["grads"], noise, f"grad_{name}")))
    return dict(ok=all(c["ok"] for c in checks), checks=checks, failed=[c["check"] for c in checks if not c["ok"]])


def runs_that_fit(ctx, device, fn, repeats, warmup, estimate, inspect=None):
    """``time_runs``, but each call only while ``1.2 x`` the last call's time (before the first: ``estimate``) fits
    in what is left of the stage. Returns ``(inspect(first result), runs, calls not made)``."""
    return _timed_calls(device, fn, repeats, warmup, inspect,
                        lambda last: ctx.time_left() - RECURRENT_MARGIN_S >= 1.2 * (estimate if last is None else last))


def wait_for_reference(ctx, key, cfg, hidden, rec_delays):
    """The NumPy reference of one layer: from the background process (waiting for it while the stage has time), or
    computed here when the stage runs without the orchestrator's background process."""
    path = recurrent_reference_path(ctx.workdir, key)
    status_path = os.path.join(ctx.workdir, "recurrent_reference.json")
    if ctx.shared.get("recurrent_reference") != "background" and not os.path.exists(path):
        info = recurrent_reference_case(cfg, hidden, rec_delays, path)
        return dict(np.load(path)), dict(info, computed="in this stage")
    waited = time.perf_counter()
    while not os.path.exists(path):
        case = {}
        with contextlib.suppress(OSError, ValueError):
            with open(status_path) as f:
                record = json.load(f)
            case = record.get("result", {}).get("cases", {}).get(key, {})
            if record.get("status") and not case:
                raise StageSkipped(f"the reference process ended ({record.get('status')}) without this layer")
        if case.get("status") == "failed":
            raise StageSkipped(f"the reference failed: {case.get('reason')}")
        if ctx.time_left() < RECURRENT_MARGIN_S + 2:
            raise StageSkipped(f"the NumPy reference was not ready after waiting {time.perf_counter() - waited:.0f} s")
        time.sleep(0.2)
    with open(status_path) as f:
        case = json.load(f).get("result", {}).get("cases", {}).get(key, {})
    return dict(np.load(path)), dict(case, computed="beside the other stages",
                                     waited_s=time.perf_counter() - waited)


def stage_recurrent(ctx):
    """S8: the recurrent layer's CUDA kernels (``spikescan.cuda._recurrent``): the gate against the NumPy engine at
    the first batch, then CUDA-event timing of forward and forward + backward at each batch beside the compiled CPU
    engine (``engine="numba"``, wall time) on the same inputs, as long as the stage's time allows."""
    from tolerances import TOL

    device = Device(ctx.dry_run)
    cfg = ctx.config["recurrent"]
    tol = TOL["float64"]
    b0 = cfg["batches"][0]
    tau_mem, tau_syn = recurrent_constants()
    result = ctx.writer.result
    result.update(
        shape=dict(n_in=cfg["n_in"], spikes_per_sample=cfg["spikes"], hidden=list(cfg["hidden"]), duration_ms=1000.0,
                   tau_mem=tau_mem, tau_syn=tau_syn, threshold=THRESHOLD, max_spikes=cfg["max_spikes"],
                   w_scale=cfg["w_scale"], input_delays=False, recurrent_std=0.04,
                   recurrent_delays="none, or uniform [1, 5] ms", layer="bench_recurrent.layer"),
        batches=list(cfg["batches"]), tolerances=tol, reference_samples=recurrent_reference_samples(cfg),
        reference="spikescan.lif_forward / lif_backward, engine='numpy' (method 'sequential'; 'scan' with recurrent "
                  "delays) on the reference samples of the first batch",
        timing="GPU: forward and backward spans (CUDA events around each call, host syncs inside included) and "
               "wall time of forward + backward; numba: wall time (perf_counter) of lif_forward and of "
               "lif_forward + lif_backward, input-time gradients off on both",
        gate={}, rows=[], skipped=[], numba=numba_info())
    ctx.writer.flush()
    # The kernels' compile (NVRTC, or the host compiler in a dry run) and Numba's cache, on a tiny layer.
    small = dict(cfg, n_in=8, spikes=40, batches=(2,))
    t, w, r, dr = recurrent_inputs(small, 2, 8, True)
    start = time.perf_counter()
    RecurrentLayer(device, w, r, dr, 4).run(device.asarray(t))
    device.sync()
    result["compile_s"] = time.perf_counter() - start
    device.free()
    result["numba_load_s"] = numba_warmup()
    ctx.writer.flush()
    layers = recurrent_layers(cfg)
    estimate = {}  # key -> (batch, seconds of one GPU forward + backward)
    last = None  # (events per sample, seconds) of the last layer through the gate
    for key, hidden, rd in layers:
        entry = recurrent_gate(ctx, device, cfg, tol, key, hidden, rd, last)
        result["gate"][key] = entry
        if entry["status"] in ("pass", "fail"):
            estimate[key] = (b0, entry["gpu_forward_wall_s"] + entry["gpu_backward_wall_s"])
            last = (entry["events_per_sample"], estimate[key][1])
        ctx.log(f"recurrent gate {key:<14} {entry['status']}" + (
            f"  failed: {entry.get('failed') or entry.get('reason')}" if entry["status"] != "pass" else ""))
        ctx.writer.flush()
    passed = [(k, h, rd) for k, h, rd in layers if result["gate"][k]["status"] == "pass"]
    for key, _, _ in layers:
        if result["gate"][key]["status"] != "pass":
            result["skipped"] += [dict(batch=batch, layer=key, what="gpu and numba",
                                       reason=f"gate {result['gate'][key]['status']}") for batch in cfg["batches"]]
    if ctx.shared.get("recurrent_reference") == "background":  # a CPU thread still busy would slow the numba rows
        with contextlib.suppress(OSError, ValueError):
            with open(os.path.join(ctx.workdir, "recurrent_reference.json")) as f:
                result["reference_process_done_before_timing"] = bool(json.load(f).get("status"))
    numba_threads = result["numba"].get("threads") or 1
    sms = _multiprocessors(device)
    numba_seen = {}  # key -> (batch, seconds of one numba forward + backward)
    gate_walls = {k: v[1] for k, v in estimate.items()}
    # The rows in the order of their predicted cost, cheapest first (a layer's smaller batch before its larger), so
    # that an expensive row that does not fit leaves the cheaper ones measured.
    todo = [(batch, key, hidden, rd) for batch in cfg["batches"] for key, hidden, rd in passed]
    while todo:
        batch, key, hidden, rd = min(todo, key=lambda x: predict_gpu(estimate[x[1]], x[0], sms))
        todo.remove((batch, key, hidden, rd))
        # The gate's measured spread of correct answers on this layer widens the GPU-vs-Numba comparison too.
        reference = result["gate"][key].get("reference") or {}
        recurrent_row(ctx, device, cfg, dict(tol, noise=reference.get("noise") or {},
                                             noise_scale=reference.get("noise_scale") or {}),
                      batch, key, hidden, rd, estimate, numba_seen, numba_threads, sms, gate_walls)


def recurrent_events(ref, cfg, hidden, rec_delays):
    """Events of a sample's global event loop (the CUDA forward's iterations, a block reduction each): its input
    spikes, its spikes, and with recurrent delays every spike's arrival at each neuron at a time of its own."""
    spikes = float(ref["log_count"].max())
    return cfg["spikes"] + spikes * (hidden if rec_delays else 1)


def recurrent_gate(ctx, device, cfg, tol, key, hidden, rd, last):
    """One layer through the gate: the NumPy reference (waited for), the CUDA forward at the first batch, the CUDA
    backward with the reference's cotangent on its samples (zero elsewhere), ``recurrent_gate_checks``. Not run when
    the predicted time (the last layer's, x the ratio of events per sample, x 1.5) does not fit."""
    b0 = cfg["batches"][0]
    if ctx.time_left() < RECURRENT_MARGIN_S + 2:
        return dict(status="not_run", reason="stage out of time")
    start = time.perf_counter()
    checks = []
    try:
        ref, ref_info = wait_for_reference(ctx, key, cfg, hidden, rd)
    except StageSkipped as exc:
        return dict(status="not_run", reason=str(exc), seconds=time.perf_counter() - start)
    events = recurrent_events(ref, cfg, hidden, rd)
    predicted = None if last is None else 1.5 * last[1] * events / last[0]
    if predicted is not None and ctx.time_left() - RECURRENT_MARGIN_S < predicted:
        return dict(status="not_run", predicted_s=predicted, events_per_sample=events, reference=ref_info,
                    reason=f"predicted {predicted:.1f} s for the CUDA forward + backward does not fit the "
                           f"{max(ctx.time_left(), 0):.0f} s left of the stage")
    layer = td = out = grads = None
    try:
        t, w, r, dr = recurrent_inputs(cfg, b0, hidden, rd)
        layer = RecurrentLayer(device, w, r, dr, cfg["max_spikes"])
        td = device.asarray(t)
        device.sync()
        t0 = time.perf_counter()
        out = layer.forward(td, device.launch)
        device.sync()
        forward_wall = time.perf_counter() - t0
        G = np.zeros(out.times.shape)
        G[[int(s) for s in ref["samples"]]] = ref["G"]
        t0 = time.perf_counter()
        grads = layer.backward(out, device.asarray(G), device.launch, input_times_grad=True)
        device.sync()
        backward_wall = time.perf_counter() - t0
        checks = recurrent_gate_checks(device, out, grads, ref, tol)
        ok = all(c["ok"] for c in checks)
        entry = dict(status="pass" if ok else "fail", checks=checks,
                     failed=[c["check"] for c in checks if not c["ok"]], reference=ref_info,
                     gpu_forward_wall_s=forward_wall, gpu_backward_wall_s=backward_wall, predicted_s=predicted,
                     events_per_sample=events, spikes_per_sample=float(device.to_host(out.counts).sum() / b0))
        if ctx.time_left() - RECURRENT_MARGIN_S >= 3 * backward_wall:
            entry["deterministic"] = recurrent_deterministic(device, layer, out, G, grads, ref, tol)
        else:
            entry["deterministic"] = dict(status="not_run", reason="stage out of time")
    except Exception as exc:
        entry = dict(status="error", checks=checks, reason=f"{type(exc).__name__}: {exc}",
                     traceback=traceback.format_exc()[-2000:])
    layer = td = out = grads = None
    device.free()
    entry["seconds"] = time.perf_counter() - start
    return entry


def recurrent_deterministic(device, layer, out, G, grads, ref, tol):
    """The fixed-order backward (``spikescan.cuda._recurrent.DETERMINISTIC``) on the gate's forward: its gradients
    against the reference (as the gate checks the default's), two runs bit for bit, and their wall times (to set
    beside the default's). Recorded beside the gate; it does not decide the gate, which is the default's."""
    from spikescan.cuda import _recurrent

    names = [n for n in RECURRENT_GRADS + ("input_times",) if getattr(grads, n) is not None]
    before = _recurrent.DETERMINISTIC
    runs, walls = [], []
    try:
        _recurrent.DETERMINISTIC = True
        for _ in range(2):
            t0 = time.perf_counter()
            runs.append(layer.backward(out, device.asarray(G), device.launch, input_times_grad=True))
            device.sync()
            walls.append(time.perf_counter() - t0)
    except Exception as exc:
        return dict(status="error", reason=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc()[-2000:])
    finally:
        _recurrent.DETERMINISTIC = before
    checks = [c for c in recurrent_gate_checks(device, out, runs[0], ref, tol) if c["check"].startswith("grad_")]
    differ = [n for n in names if not np.array_equal(device.to_host(getattr(runs[0], n)),
                                                     device.to_host(getattr(runs[1], n)))]
    checks.append(dict(check="repeatable", ok=not differ, differ=differ))
    ok = all(c["ok"] for c in checks)
    return dict(status="pass" if ok else "fail", checks=checks, failed=[c["check"] for c in checks if not c["ok"]],
                gpu_backward_wall_s=walls)


def _multiprocessors(device):
    if not device.gpu:
        return None
    import cupy

    return int(cupy.cuda.Device().attributes.get("MultiProcessorCount") or 0) or None


def predict_gpu(measured, batch, sms):
    """Seconds of one forward + backward of the CUDA layer at ``batch`` from ``(batch, seconds)`` measured for the
    same layer: one block per sample, so on a GPU the ratio of the waves of blocks over the multiprocessors, x 1.5
    for the slowest of more samples and blocks sharing a multiprocessor (never below the measured time); the host
    emulation runs the blocks one after another (proportional to the batch)."""
    b_prev, s_prev = measured
    if batch == b_prev:
        return s_prev
    scale = batch / b_prev if sms is None else math.ceil(batch / sms) / math.ceil(b_prev / sms) * 1.5
    return s_prev * max(scale, 1.0)


def recurrent_row(ctx, device, cfg, tol, batch, key, hidden, rd, estimate, numba_seen, numba_threads, sms,
                  gate_walls):
    """One (batch, layer) row: the CUDA layer timed (warm-up, then up to ``repeats`` runs, as many as fit), the
    compiled CPU engine timed on the same inputs and compared with it, then the CUDA layer's peak memory (one more
    run), each part only when its predicted time fits what is left of the stage (else recorded in ``skipped``)."""
    result = ctx.writer.result
    row = dict(batch=batch, layer=key, hidden=hidden, recurrent_delays=rd)
    skipped = result["skipped"]
    t, w, r, dr = recurrent_inputs(cfg, batch, hidden, rd)
    predicted = predict_gpu(estimate[key], batch, sms)
    warmup = 0 if batch == cfg["batches"][0] else ctx.config["warmup"]  # the gate ran the first batch's shape
    host = device.to_host

    def inspect(out):
        res, grads = out
        log = res.residuals.recurrent_log
        return dict(counts=host(res.counts), times=host(res.times),
                    grads={n: None if getattr(grads, n) is None else host(getattr(grads, n))
                           for n in RECURRENT_GRADS},
                    log_length=int(host(log.count).max()))

    layer = td = gpu_out = None
    if ctx.time_left() - RECURRENT_MARGIN_S < 1.2 * predicted * (warmup + 1):
        row["gpu"] = dict(status="skipped", predicted_s=predicted,
                          reason=f"predicted {predicted:.2f} s per run x {warmup + 1} run(s) does not fit the "
                                 f"{max(ctx.time_left(), 0):.0f} s left of the stage")
        skipped += [dict(batch=batch, layer=key, what=what, reason=row["gpu"]["reason"])
                    for what in ("gpu", "numba", "memory")]
    else:
        try:
            layer = RecurrentLayer(device, w, r, dr, cfg["max_spikes"])
            td = device.asarray(t)
            gpu_out, runs, not_made = runs_that_fit(ctx, device, lambda clock: layer.run(td, clock), ctx.repeats,
                                                    warmup, predicted, inspect=inspect)
            if runs:
                row["gpu"] = dict(status="ok", predicted_s=predicted, warmup=warmup, **summarise_runs(runs))
                row["gpu"]["forward_backward_s"] = row["gpu"]["wall_s"]
                estimate[key] = (batch, row["gpu"]["wall_s"])
                if not_made:
                    row["gpu"]["repeats_left_out"] = dict(count=not_made, reason="stage out of time")
            else:
                row["gpu"] = dict(status="skipped", predicted_s=predicted,
                                  reason="stage out of time after the warm-up")
                skipped += [dict(batch=batch, layer=key, what=what, reason=row["gpu"]["reason"])
                            for what in ("gpu", "numba", "memory")]
        except Exception as exc:
            row["gpu"] = dict(status="failed", reason=f"{type(exc).__name__}: {exc}",
                              traceback=traceback.format_exc()[-2000:])
    if row["gpu"]["status"] == "ok":
        row["spikes_per_sample"] = float(gpu_out["counts"].sum() / batch)
        row["log_length"] = gpu_out["log_length"]
        recurrent_numba_row(ctx, cfg, tol, row, t, w, r, dr, gpu_out, numba_seen, numba_threads, gate_walls)
        gpu_out = None
        if ctx.time_left() - RECURRENT_MARGIN_S > 1.2 * row["gpu"]["wall_s"]:
            try:
                device.free()
                row["memory"] = device.peak_memory(lambda: layer.run(td))
            except Exception as exc:
                row["memory"] = dict(status="failed", reason=f"{type(exc).__name__}: {exc}")
        else:
            skipped.append(dict(batch=batch, layer=key, what="memory", reason="stage out of time"))
    layer = td = None
    device.free()
    result["rows"].append(row)
    g, n = row["gpu"], row.get("numba", {})
    ctx.log(f"recurrent batch {batch:<4} {key:<14} " + (
        f"gpu fwd {g['forward_s'] * 1e3:9.2f} ms  fwd+bwd {g['wall_s'] * 1e3:9.2f} ms" if g["status"] == "ok"
        else f"gpu {g['status']}: {g.get('reason')}") + (
        f"  numba fwd {n['forward_s'] * 1e3:9.2f} ms  fwd+bwd {n['forward_backward_s'] * 1e3:9.2f} ms"
        if n.get("status") == "ok" else (f"  numba {n.get('status')}: {n.get('reason')}" if n else "")))
    ctx.writer.flush()


def recurrent_numba_row(ctx, cfg, tol, row, t, w, r, dr, gpu_out, numba_seen, numba_threads, gate_walls):
    """The compiled CPU engine on the row's inputs: wall time of forward and forward + backward (up to ``repeats``
    runs, as many as fit), agreement with the CUDA layer's first run."""
    import spikescan as ss

    result = ctx.writer.result
    batch, key = row["batch"], row["layer"]
    if not result["numba"]["available"]:
        row["numba"] = dict(status="skipped", reason="numba not installed")
        result["skipped"].append(dict(batch=batch, layer=key, what="numba", reason="numba not installed"))
        return
    if numba_seen:
        # This layer's last measurement, else the last one of another layer times the ratio of the two layers' GPU
        # times in the gate (the same batch): x the ratio of rounds of samples over the engine's threads.
        prev_key = key if key in numba_seen else list(numba_seen)[-1]
        b_prev, s_prev = numba_seen[prev_key]
        rounds = math.ceil(batch / numba_threads) / math.ceil(b_prev / numba_threads)
        predicted = s_prev * rounds * (1.2 if prev_key == key else 1.5 * gate_walls[key] / gate_walls[prev_key])
    else:
        predicted = 0.0  # the first row (the cheapest): always run
    fwd, full, first = [], [], {}
    if ctx.time_left() - RECURRENT_MARGIN_S < predicted:
        reason = (f"predicted {predicted:.1f} s for one forward + backward does not fit the "
                  f"{max(ctx.time_left(), 0):.0f} s left of the stage")
        row["numba"] = dict(status="skipped", predicted_s=predicted, reason=reason)
        result["skipped"].append(dict(batch=batch, layer=key, what="numba", reason=reason))
        return
    last = predicted
    try:
        for i in range(ctx.repeats):
            if i and ctx.time_left() - RECURRENT_MARGIN_S < 1.2 * last:
                break
            start = time.perf_counter()
            out = recurrent_cpu(t, w, r, dr, cfg["max_spikes"], "numba", "sequential")
            mid = time.perf_counter()
            grads = ss.lif_backward(out, np.isfinite(out.times).astype(np.float64), input_times_grad=False,
                                    engine="numba")
            end = time.perf_counter()
            fwd.append(mid - start)
            full.append(end - start)
            last = end - start
            if i == 0:
                first = dict(out=out, grads=grads)
            out = grads = None
    except Exception as exc:
        row["numba"] = dict(status="failed", reason=f"{type(exc).__name__}: {exc}",
                            traceback=traceback.format_exc()[-2000:])
        return
    row["numba"] = dict(status="ok", engine="numba", method="sequential", threads=numba_threads,
                        predicted_s=predicted or None, repeats=len(full), forward_s=median(fwd),
                        forward_backward_s=median(full), forward_s_all=fwd, forward_backward_s_all=full)
    if len(full) < ctx.repeats:
        row["numba"]["repeats_left_out"] = dict(count=ctx.repeats - len(full), reason="stage out of time")
    numba_seen.pop(key, None)
    numba_seen[key] = (batch, median(full))  # (last in the dict: the latest measurement)
    row["agrees_with_numba"] = recurrent_agreement(gpu_out, first["out"], first["grads"], tol)



def stage_device(ctx):
    """S0: device, clocks, versions, ceilings."""
    result = ctx.writer.result
    result["versions"] = _versions()
    if ctx.dry_run:
        from spikescan.cuda import _hostemu

        import _stamp

        result.update(device="host emulation (dry run)", cpu=_stamp._cpu_model(), cpu_count=os.cpu_count(),
                      host_compiler=_hostemu.compiler())
        n = ctx.config["ceiling_copy_bytes"] // 8
        a, b = np.ones(n), np.empty(n)
        best = min(_wall(lambda: np.copyto(b, a)) for _ in range(3))
        result["ceilings"] = dict(copy_bytes_per_s=2 * a.nbytes / best, copy_bytes=int(a.nbytes),
                                  note="host NumPy copy (dry run): no GPU ceilings")
        # The FMA kernel of the GPU ceilings is only compiled here (NVRTC, no GPU needed).
        compiled = check_fma_source()
        result["fma_kernel_compiles"] = "NVRTC not available" if compiled is None else dict(
            ok=compiled[0], log=compiled[1][-1000:])
        return
    import cupy

    from spikescan.cuda import is_available

    if not is_available():
        raise StageSkipped("no CUDA device")
    dev = cupy.cuda.Device()
    props = cupy.cuda.runtime.getDeviceProperties(dev.id)
    name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    attrs = dev.attributes
    clock_khz = attrs.get("ClockRate") or props.get("clockRate")
    result.update(device=name, compute_capability=dev.compute_capability,
                  multiprocessors=attrs.get("MultiProcessorCount"), clock_khz=clock_khz,
                  memory_clock_khz=attrs.get("MemoryClockRate"), total_memory_bytes=int(props.get("totalGlobalMem", 0)),
                  driver_version=cupy.cuda.runtime.driverGetVersion(),
                  runtime_version=cupy.cuda.runtime.runtimeGetVersion(), nvidia_smi=_nvidia_smi())
    if result["multiprocessors"] and clock_khz:
        result["issue_rate"] = float(result["multiprocessors"]) * 128 * clock_khz * 1e3
    ctx.writer.flush()
    result["ceilings"] = _gpu_ceilings(ctx.config["ceiling_copy_bytes"], result.get("multiprocessors") or 132)


def _wall(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _versions():
    from importlib import metadata

    out = {"python": sys.version.split()[0]}
    for dist in ("numpy", "cupy-cuda12x", "cupy-cuda13x", "cupy", "jax", "jaxlib", "jax-cuda12-plugin", "numba",
                 "spikescan"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


def _nvidia_smi():
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    fields = ("name,clocks.sm,clocks.max.sm,clocks.mem,clocks.max.mem,power.draw,power.limit,temperature.gpu,"
              "driver_version")
    try:
        out = subprocess.run([exe, f"--query-gpu={fields}", "--format=csv,noheader"], capture_output=True, text=True,
                             timeout=15)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"failed: {exc!r}"
    return dict(zip(fields.split(","), [v.strip() for v in out.stdout.splitlines()[0].split(",")])) \
        if out.returncode == 0 and out.stdout.strip() else out.stderr.strip()[:300]


_FMA_SOURCE = r"""
__device__ __forceinline__ double spikescan_perf_fma1(double x, double a, double b) { return fma(x, a, b); }
__device__ __forceinline__ float spikescan_perf_fma1(float x, float a, float b) { return fmaf(x, a, b); }

template <typename T>
__global__ void spikescan_perf_fma(T* out, long long n_iter, T a, T b) {
    // Eight independent chains per thread: enough to fill the FMA pipes from registers alone.
    T x0 = threadIdx.x, x1 = x0 + 1, x2 = x0 + 2, x3 = x0 + 3, x4 = x0 + 4, x5 = x0 + 5, x6 = x0 + 6, x7 = x0 + 7;
    for (long long i = 0; i < n_iter; ++i) {
        x0 = spikescan_perf_fma1(x0, a, b); x1 = spikescan_perf_fma1(x1, a, b);
        x2 = spikescan_perf_fma1(x2, a, b); x3 = spikescan_perf_fma1(x3, a, b);
        x4 = spikescan_perf_fma1(x4, a, b); x5 = spikescan_perf_fma1(x5, a, b);
        x6 = spikescan_perf_fma1(x6, a, b); x7 = spikescan_perf_fma1(x7, a, b);
    }
    T s = x0 + x1 + x2 + x3 + x4 + x5 + x6 + x7;
    if (s == (T)-12345.0) out[blockIdx.x * blockDim.x + threadIdx.x] = s;  // never true; keeps the loop alive
}
"""


def check_fma_source(arch="90"):
    """Compile ``_FMA_SOURCE`` with NVRTC alone (no GPU), as ``python -m spikescan.cuda --check`` does for the kernels:
    ``(ok, log)``, or ``None`` without NVRTC."""
    from spikescan.cuda import _kernels

    nvrtc = _kernels.nvrtc_module()
    if nvrtc is None:
        return None
    prog = nvrtc.createProgram(_FMA_SOURCE, "spikescan_perf_fma.cu", [], [])
    try:
        for expr in _FMA_NAMES:
            nvrtc.addNameExpression(prog, expr)
        try:
            nvrtc.compileProgram(prog, ["--std=c++17", f"--gpu-architecture=sm_{arch}"])
        except Exception as exc:
            return False, f"{exc}\n{nvrtc.getProgramLog(prog)}"
        return True, nvrtc.getProgramLog(prog)
    finally:
        nvrtc.destroyProgram(prog)


_FMA_NAMES = ("spikescan_perf_fma<double>", "spikescan_perf_fma<float>")


def _gpu_ceilings(copy_bytes, n_sm):
    """A device-to-device copy's bandwidth and the fp64 / fp32 FMA rates (best of 3, CUDA events)."""
    import cupy

    def best_seconds(fn, reps=3):
        fn()
        out = []
        for _ in range(reps):
            start, end = cupy.cuda.Event(), cupy.cuda.Event()
            start.record()
            fn()
            end.record()
            end.synchronize()
            out.append(cupy.cuda.get_elapsed_time(start, end) / 1e3)
        return min(out)

    src = cupy.ones(copy_bytes // 8, dtype=cupy.float64)
    dst = cupy.empty_like(src)
    copy_s = best_seconds(lambda: cupy.copyto(dst, src))
    src = dst = None
    cupy.get_default_memory_pool().free_all_blocks()
    out = dict(copy_bytes=int(copy_bytes), copy_bytes_per_s=2 * copy_bytes / copy_s)
    mod = cupy.RawModule(code=_FMA_SOURCE, options=("--std=c++17",), name_expressions=list(_FMA_NAMES))
    blocks, threads, n_iter = n_sm * 16, 256, 8192
    for label, ctype, dtype in (("fp64", "double", np.float64), ("fp32", "float", np.float32)):
        kernel = mod.get_function(f"spikescan_perf_fma<{ctype}>")
        sink = cupy.zeros(blocks * threads, dtype=dtype)
        seconds = best_seconds(lambda: kernel((blocks,), (threads,), (sink, np.int64(n_iter), dtype(0.999999),
                                                                      dtype(1e-7))))
        out[f"{label}_flop_per_s"] = 2.0 * 8 * n_iter * blocks * threads / seconds
    return out


NCU_SECTIONS = ("LaunchStats", "Occupancy", "SpeedOfLight", "MemoryWorkloadAnalysis")
NCU_LAUNCHES = 12  # per variant: a forward + backward of the two layers launches about that many kernels


def stage_ncu(ctx):
    """S7: Nsight Compute (``--clock-control none``) on the kernels of each of ``--ncu-variants`` (default: the
    default variant) at the medium batch, one ncu process per variant with an equal share of the stage's time:
    launch statistics, occupancy, speed of light and the memory workload (L1 / L2 hit rates and sectors per request:
    whether the forward's gathers are what its time goes to)."""
    if ctx.dry_run:
        raise StageSkipped("dry run: Nsight Compute profiles GPU kernels only")
    if not ctx.args.ncu:
        raise StageSkipped("not requested (--ncu)")
    exe = shutil.which("ncu")
    if exe is None:
        raise StageSkipped("ncu not found on PATH")
    import csv

    names = [v for v in (getattr(ctx.args, "ncu_variants", None) or ["default"]) if v in ctx.variants()]
    if not names:
        raise StageSkipped("none of --ncu-variants passed the gate")
    ctx.writer.result["variants"] = {}
    failed = []
    for n, name in enumerate(names):
        timeout = max(5.0, (ctx.time_left() - 5) / (len(names) - n))
        sections = [arg for section in NCU_SECTIONS for arg in ("--section", section)]
        cmd = [exe, "--clock-control", "none", "--target-processes", "all", "--kernel-name", "regex:spikescan",
               "--launch-count", str(NCU_LAUNCHES), *sections, "--csv", "--page", "details", sys.executable,
               os.path.abspath(__file__), "--stage", "ncu_target", "--ncu-variants", name, "--workdir",
               ctx.workdir, "--deadline", str(time.time() + timeout)]
        entry = ctx.writer.result["variants"][name] = dict(command=" ".join(cmd))
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            entry.update(status="timeout", timeout_s=timeout)
            failed.append(name)
            ctx.writer.flush()
            continue
        with open(os.path.join(ctx.workdir, f"ncu_{name}.csv"), "w") as f:
            f.write(proc.stdout)
        rows = [r for r in csv.reader(line for line in proc.stdout.splitlines() if line.startswith('"'))]
        metrics = []
        if rows:
            header = rows[0]
            col = {k: header.index(k) for k in ("ID", "Kernel Name", "Section Name", "Metric Name", "Metric Unit",
                                                 "Metric Value") if k in header}
            for r in rows[1:]:
                metrics.append({k.lower().replace(" ", "_"): r[i] for k, i in col.items() if i < len(r)})
        ok = proc.returncode == 0 and bool(metrics)
        entry.update(status="ok" if ok else "failed", returncode=proc.returncode, metrics=metrics[:3000],
                     metrics_total=len(metrics), stderr_tail=proc.stderr[-1500:])
        if not ok:
            failed.append(name)
        ctx.writer.flush()
    if failed:
        raise RuntimeError(f"ncu gave no metrics for {', '.join(failed)}")


def stage_ncu_target(ctx):
    """What ncu profiles: one forward + backward of a variant (``--ncu-variants``' first; default: the default
    variant) at the medium batch."""
    device = Device(ctx.dry_run)
    t, params = network_inputs(ctx.config["network"], ctx.config["batches"]["medium"])
    variant = (getattr(ctx.args, "ncu_variants", None) or ["default"])[0]
    Network(device, t, params).run(variant)
    device.sync()


STAGE_FUNCTIONS = {
    "device": stage_device,
    "gate": stage_gate,
    "network_large": lambda ctx: stage_network(ctx, "large"),
    "jax_large": lambda ctx: stage_jax(ctx, "large"),
    "network_medium": lambda ctx: stage_network(ctx, "medium"),
    "jax_medium": lambda ctx: stage_jax(ctx, "medium"),
    "network_single": lambda ctx: stage_network(ctx, "single"),
    "baselines_single": stage_baselines,
    "jax_single": lambda ctx: stage_jax(ctx, "single"),
    "sweep": stage_sweep,
    "recurrent": stage_recurrent,
    "recurrent_reference": stage_recurrent_reference,
    "ncu": stage_ncu,
    "ncu_target": stage_ncu_target,
}


def run_stage_here(args):
    """Body of ``--stage NAME`` (a subprocess of the orchestrator): run it, write its file, exit 0 unless it failed."""
    writer = StageWriter(os.path.join(args.workdir, f"{args.stage}.json"))
    writer.flush()
    ctx = StageContext(args, writer)
    try:
        STAGE_FUNCTIONS[args.stage](ctx)
    except StageSkipped as exc:
        writer.flush(status="skipped", reason=str(exc))
        return 0
    except BaseException as exc:
        writer.flush(status="failed", reason=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc()[-3000:])
        traceback.print_exc()
        return 1
    writer.flush(status="ok")
    return 0


# ---------------------------------------------------------------------------------------------------------------
# Orchestrator
# ---------------------------------------------------------------------------------------------------------------

class StageProcess:
    """One stage's command in its own process group (so that a kill reaches its children), logging to a file."""

    def __init__(self, cmd, result_path, log_path, env=None):
        self.result_path, self.log_path = result_path, log_path
        self.start = time.perf_counter()
        with open(log_path, "w") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env,
                                         cwd=ROOT)

    def finish(self, timeout):
        """Wait until ``timeout`` seconds after the start, then kill the group. Returns the stage record: the file
        the stage wrote (partial when it was killed), with ``status``, ``elapsed_s`` and ``returncode``."""
        timed_out = False
        try:
            rc = self.proc.wait(timeout=max(0.0, timeout - (time.perf_counter() - self.start)))
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_group(self.proc)
            rc = self.proc.returncode
        record = {}
        if os.path.exists(self.result_path):
            try:
                with open(self.result_path) as f:
                    record = json.load(f)
            except (OSError, ValueError) as exc:
                record = dict(reason=f"stage file unreadable: {exc!r}")
        record.setdefault("result", {})
        if timed_out:
            record["status"] = "timeout"
            record["reason"] = f"killed after {timeout:.0f} s (its result holds what it had written by then)"
        elif "status" not in record:
            record["status"] = "failed"
            record.setdefault("reason", f"exited {rc} without a status")
        elif rc != 0 and record["status"] == "ok":
            record["status"] = "failed"
            record["reason"] = f"exited {rc}"
        record["elapsed_s"] = time.perf_counter() - self.start
        record["returncode"] = rc
        if record["status"] in ("failed", "timeout"):
            try:
                with open(self.log_path) as f:
                    record["log_tail"] = f.read()[-2000:]
            except OSError:
                pass
        return record


def run_stage(cmd, timeout, result_path, log_path, env=None):
    """Run one stage's command and return its record (``StageProcess.finish``)."""
    return StageProcess(cmd, result_path, log_path, env).finish(timeout)


def _kill_group(proc):
    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _slug(name):
    return re.sub("[^a-z0-9]+", "_", str(name).lower()).strip("_") or "unknown"


def assemble(report):
    """Derived parts of the report from the stage records: gate, work, floor, speedups, summary, table."""
    stages = report["stages"]
    dry = report["dry_run"]
    batches = CONFIG[dry]["batches"]
    gate = stages.get("gate", {}).get("result", {}).get("variants", {})
    report["gate"] = {k: dict(status=v.get("status"), failed=v.get("failed", []), reason=v.get("reason"))
                      for k, v in gate.items()}
    device = stages.get("device", {}).get("result", {})
    issue_rate = device.get("issue_rate")
    floor = dict(formula=FLOOR_FORMULA, constants=FLOOR, issue_rate=issue_rate or FLOOR["h200_issue_rate"],
                 issue_rate_source="this device (multiprocessors x 128 x clock)" if issue_rate else
                 "PERF.md's H200 figure (device clock not known here)", by_batch={}, fractions=[])
    work, speedups, summary = {}, [], {}
    jax = {role: stages.get(f"jax_{role}", {}).get("result", {}).get("dtypes", {}) for role in batches}
    for role, batch in batches.items():
        net = stages.get(f"network_{role}", {}).get("result", {})
        rows = {k: v for k, v in net.get("variants", {}).items() if v.get("status") == "ok"}
        if "work" in net:
            w = {k: sum(layer[k] for layer in net["work"].values())
                 for k in ("queue_entries", "backward_points", "spike_solves")}
            work[str(batch)] = dict(net["work"], total=w)
            instr_fwd = FLOOR["instructions_per_queue_entry"] * w["queue_entries"] + \
                FLOOR["instructions_per_spike_solve"] * w["spike_solves"]
            instr = instr_fwd + FLOOR["instructions_per_backward_point"] * w["backward_points"]
            entry = dict(floor_ms=1e3 * instr / floor["issue_rate"],
                         forward_floor_ms=1e3 * instr_fwd / floor["issue_rate"])
            floor["by_batch"][str(batch)] = entry
            for name, row in rows.items():
                floor["fractions"].append(dict(batch=batch, variant=name, floor_ms=entry["floor_ms"],
                                               measured_ms=1e3 * row["wall_s"],
                                               fraction=entry["floor_ms"] / (1e3 * row["wall_s"])))
        for name, row in rows.items():
            for dtype, baseline in (("float32", "jax_f32"), ("float64", "jax_f64")):
                j = jax[role].get(dtype, {})
                if j.get("status") == "ok":
                    speedups.append(dict(batch=batch, variant=name, baseline=baseline,
                                         ratio=j["forward_backward_s"] / row["wall_s"], measure="forward_backward"))
            base = rows.get(BASELINE_VARIANT)
            if base is not None and name != BASELINE_VARIANT:
                speedups.append(dict(batch=batch, variant=name, baseline="sequential",
                                     ratio=base["wall_s"] / row["wall_s"], measure="forward_backward"))
                speedups.append(dict(batch=batch, variant=name, baseline="sequential",
                                     ratio=base["forward_s"] / row["forward_s"], measure="forward"))
        if rows:
            best = min(rows, key=lambda k: rows[k]["wall_s"])
            best_fwd = min(rows, key=lambda k: rows[k]["forward_s"])
            s = dict(fastest_forward_backward=best, fastest_forward=best_fwd)
            if "default" in rows:
                s["default_over_fastest_forward_backward"] = rows["default"]["wall_s"] / rows[best]["wall_s"]
                s["default_over_fastest_forward"] = rows["default"]["forward_s"] / rows[best_fwd]["forward_s"]
            summary[str(batch)] = s
    base = stages.get("baselines_single", {}).get("result", {})
    for method, ratio in base.get("step_over", {}).items():
        speedups.append(dict(batch=1, variant=f"forward_{method}", baseline="step", ratio=ratio, measure="forward",
                             shape="layer 1 (n_in -> hidden), delays"))
    rec = stages.get("recurrent", {}).get("result", {})
    report["recurrent_gate"] = {k: dict(status=v.get("status"), failed=v.get("failed", []), reason=v.get("reason"))
                                for k, v in rec.get("gate", {}).items()}
    for row in rec.get("rows", []):
        g, n = row.get("gpu", {}), row.get("numba", {})
        if g.get("status") == "ok" and n.get("status") == "ok":
            shape = (f"recurrent layer {rec['shape']['n_in']} -> {row['hidden']}, "
                     + ("recurrent delays" if row["recurrent_delays"] else "no recurrent delays"))
            speedups.append(dict(batch=row["batch"], variant=f"recurrent_{row['layer']}", baseline="numba_cpu",
                                 ratio=n["forward_backward_s"] / g["wall_s"], measure="forward_backward", shape=shape))
            speedups.append(dict(batch=row["batch"], variant=f"recurrent_{row['layer']}", baseline="numba_cpu",
                                 ratio=n["forward_s"] / g["forward_s"], measure="forward", shape=shape))
    report["work"], report["floor"], report["speedups"], report["summary"] = work, floor, speedups, summary
    large = [f for f in floor["fractions"] if f["batch"] == batches["large"] and f["variant"] == "default"]
    report["fraction_of_floor"] = large[0]["fraction"] if large else None
    report["table"] = table(report)


def table(report):
    """The short table printed last (a remote run's reply keeps only the tail)."""
    stages, lines = report["stages"], []
    st = report.get("stamp", {})
    lines.append(f"gpu_perf: {report.get('device')}, commit {str(st.get('commit'))[:10]}"
                 f"{' (dirty)' if st.get('dirty') else ''}, budget {report['settings']['budget_s']:.0f} s, "
                 f"elapsed {report.get('elapsed_s', 0):.0f} s"
                 f"{', DRY RUN (timings meaningless)' if report['dry_run'] else ''}")
    lines.append("stages: " + ", ".join(f"{k} {v.get('status')} {v.get('elapsed_s', 0):.0f}s"
                                        for k, v in stages.items()))
    bad = {k: v for k, v in report.get("gate", {}).items() if v["status"] != "pass"}
    lines.append("gate: " + ("all pass" if report.get("gate") and not bad else
                             "; ".join(f"{k} {v['status']} {v['failed'] or v['reason']}" for k, v in bad.items())
                             or "not run"))
    repeats = {name: c for name, v in stages.get("gate", {}).get("result", {}).get("variants", {}).items()
               for c in v.get("checks", []) if c.get("check") == "layer1/repeatable"}
    if repeats:
        differ = sorted(k for k, c in repeats.items() if not c["bit_identical"])
        lines.append(f"backward twice, bit-identical: {len(repeats) - len(differ)}/{len(repeats)} variants"
                     + (f"; differ: {', '.join(differ)}" if differ else ""))
    ratio = {(s["batch"], s["variant"], s["baseline"], s["measure"]): s["ratio"] for s in report["speedups"]}
    for role, batch in CONFIG[report["dry_run"]]["batches"].items():
        rows = stages.get(f"network_{role}", {}).get("result", {}).get("variants", {})
        jax = stages.get(f"jax_{role}", {}).get("result", {}).get("dtypes", {})
        jtxt = ", ".join(f"jax {k} {v['forward_backward_s'] * 1e3:.2f} ms" for k, v in jax.items()
                         if v.get("status") == "ok")
        lines.append(f"batch {batch}: {jtxt or 'no jax'}")
        lines.append(f"  {'variant':<27}{'fwd ms':>10}{'bwd ms':>10}{'wall ms':>10}{'peak GiB':>9}{'/jax32':>8}"
                     f"{'/jax64':>8}{'/seq':>7}")
        for name, r in rows.items():
            if r.get("status") != "ok":
                lines.append(f"  {name:<27}{r.get('status')}: {str(r.get('reason'))[:60]}")
                continue
            peak = r.get("memory", {}).get("peak_bytes")
            cells = [ratio.get((batch, name, b, "forward_backward")) for b in ("jax_f32", "jax_f64", "sequential")]
            lines.append(f"  {name:<27}{r['forward_s'] * 1e3:10.2f}{(r['backward_s'] or 0) * 1e3:10.2f}"
                         f"{r['wall_s'] * 1e3:10.2f}{'' if peak is None else f'{peak / 2**30:9.2f}':>9}"
                         + "".join(f"{'-' if c is None else f'{c:.2f}x':>8}" for c in cells[:2])
                         + f"{'-' if cells[2] is None else f'{cells[2]:.2f}x':>7}")
    step = {k[1]: v for k, v in ratio.items() if k[2] == "step"}
    if step:
        lines.append("batch 1 layer-1 forward over one event per launch: "
                     + ", ".join(f"{k[len('forward_'):]} {v:.1f}x" for k, v in step.items()))
    lines += recurrent_table(report)
    if report.get("fraction_of_floor") is not None:
        large = CONFIG[report["dry_run"]]["batches"]["large"]
        lines.append(f"fraction_of_floor (default, batch {large}, fwd+bwd): {report['fraction_of_floor']:.2e} "
                     f"(floor {report['floor']['by_batch'][str(large)]['floor_ms']:.3f} ms)")
    lines.append(f"wrote {report.get('output')}")
    return lines


def recurrent_table(report):
    rec = report["stages"].get("recurrent", {}).get("result", {})
    if not rec.get("gate"):
        return []
    numba = rec.get("numba", {})
    lines = ["recurrent (SHD-like, {n_in} in, {spikes_per_sample} spikes/sample; numba {t} threads): gate ".format(
        t=numba.get("threads", "-"), **rec["shape"]) + ", ".join(
        f"{k} {v['status']}" + (f" {v.get('failed') or v.get('reason')}" if v["status"] != "pass" else "")
        for k, v in rec["gate"].items())]
    det = {k: v["deterministic"] for k, v in rec["gate"].items() if "deterministic" in v}
    if det:
        lines.append("  deterministic backward (gate batch): " + ", ".join(
            f"{k} {d['status']}" + (f" {d.get('failed') or d.get('reason')}" if d["status"] != "pass" else "")
            + (f" {min(d['gpu_backward_wall_s']) / rec['gate'][k]['gpu_backward_wall_s']:.2f}x the default's wall"
               if d.get("gpu_backward_wall_s") and rec["gate"][k].get("gpu_backward_wall_s") else "")
            for k, d in det.items()))
    if rec.get("rows"):
        lines.append(f"  {'batch':>5} {'layer':<13}{'gpu fwd ms':>11}{'f+b ms':>10}{'numba fwd':>11}{'f+b ms':>10}"
                     f"{'x fwd':>8}{'x f+b':>8}{'peak GiB':>9} agree")
    order = {key: i for i, key in enumerate(rec["gate"])}
    for row in sorted(rec.get("rows", []), key=lambda x: (x["batch"], order.get(x["layer"], 0))):
        g, n = row.get("gpu", {}), row.get("numba", {})
        if g.get("status") != "ok":
            lines.append(f"  {row['batch']:>5} {row['layer']:<13}gpu {g.get('status')}: {str(g.get('reason'))[:60]}")
            continue
        ok = n.get("status") == "ok"
        peak = row.get("memory", {}).get("peak_bytes")
        agree = row.get("agrees_with_numba")
        lines.append(f"  {row['batch']:>5} {row['layer']:<13}{g['forward_s'] * 1e3:11.2f}{g['wall_s'] * 1e3:10.2f}"
                     + (f"{n['forward_s'] * 1e3:11.2f}{n['forward_backward_s'] * 1e3:10.2f}"
                        f"{n['forward_s'] / g['forward_s']:7.2f}x{n['forward_backward_s'] / g['wall_s']:7.2f}x"
                        if ok else f"{'numba ' + str(n.get('status')):>37}")
                     + ("" if peak is None else f"{peak / 2**30:9.3f}") + " "
                     + ("-" if agree is None else "yes" if agree["ok"] else f"NO {agree['failed']}"))
    if rec.get("skipped"):
        lines.append(f"  skipped: {len(rec['skipped'])} (see stages.recurrent.result.skipped)")
    return lines


def orchestrate(args):
    t0 = time.time()
    config = CONFIG[args.dry_run]
    workdir = args.workdir or tempfile.mkdtemp(prefix="spikescan_gpu_perf_")
    os.makedirs(workdir, exist_ok=True)
    selected = [s for s in STAGES if args.stages is None or s in args.stages]
    provenance = stamp()
    report = dict(benchmark="gpu_perf", dry_run=args.dry_run, stamp=provenance, device=None, output=args.output,
                  settings=dict(budget_s=args.budget_s, network=config["network"].as_dict(),
                                gate=dict(batch=config["gate_batch"], **config["gate"].as_dict()),
                                batches=config["batches"], max_spikes=MAX_SPIKES, tau_mem=TAU_MEM, tau_syn=TAU_SYN,
                                threshold=THRESHOLD, chunk_size=CHUNK_SIZE, warmup=config["warmup"],
                                repeats=args.repeats or config["repeats"], variants=VARIANTS,
                                sweep=dict(hidden=config["sweep_hidden"], batches=config["sweep_batches"],
                                           max_spikes=SWEEP_MAX_SPIKES), recurrent=config["recurrent"],
                                jax_dtypes=JAX_DTYPES, ncu=args.ncu,
                                timing="wall: perf_counter around a synchronized run; forward/backward/kernels: "
                                       + ("perf_counter spans (dry run)" if args.dry_run else "CUDA event pairs")),
                  predictions=PREDICTIONS, workdir=workdir,
                  stages={s: dict(status="pending", protocol_step=STAGES[s][0]) for s in STAGES})
    for s in STAGES:
        if s not in selected:
            report["stages"][s] = dict(status="skipped", protocol_step=STAGES[s][0], reason="not selected (--stages)",
                                       result={})
    context = {}
    env = dict(os.environ, PYTHONUNBUFFERED="1")

    def command(name, deadline):
        return [sys.executable, os.path.abspath(__file__), "--stage", name, "--workdir", workdir,
                "--deadline", repr(deadline)] + (["--dry-run"] if args.dry_run else []) + \
            (["--repeats", str(args.repeats)] if args.repeats else []) + (["--ncu"] if args.ncu else []) + \
            (["--variants", *VARIANTS] if args.variants else []) + \
            (["--ncu-variants", *args.ncu_variants] if args.ncu_variants else [])

    # Dry run: the JAX stages need no device and compute their own reference, so they run beside the emulated
    # stages (JAX's compiles take most of a dry run's time on a CPU). On a GPU every stage runs alone.
    background = {}
    if args.dry_run:
        for name in selected:
            if name.startswith("jax_") and name[4:] not in DRY_RUN_JAX and not args.dry_run_jax_all:
                report["stages"][name] = dict(
                    status="skipped", protocol_step=STAGES[name][0], result={},
                    reason=f"dry run: the JAX stages differ only in batch size and jax_{'/jax_'.join(DRY_RUN_JAX)} "
                           "runs the same code (float32 and float64); each JAX compile takes 10-30 s on a CPU "
                           "(--dry-run-jax-all runs them all)")
            elif name.startswith("jax_"):
                # Beside the other stages it costs no budget; a cold compile cache on a busy CPU takes minutes.
                timeout = max(STAGES[name][1], 0.8 * args.budget_s) * args.timeout_scale
                deadline = time.time() + timeout - max(2.0, 0.1 * timeout)
                process = StageProcess(command(name, deadline), os.path.join(workdir, f"{name}.json"),
                                       os.path.join(workdir, f"{name}.log"), env)
                background[name] = (timeout, process)
    # The recurrent stage's NumPy references take minutes of one CPU core at the real shapes: computed from the
    # start beside the other stages (one thread, low priority, no GPU), the recurrent stage waits for them.
    reference = None
    if "recurrent" in selected:
        threads = {k: "1" for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")}
        reference = StageProcess(command("recurrent_reference", t0 + args.budget_s),
                                 os.path.join(workdir, "recurrent_reference.json"),
                                 os.path.join(workdir, "recurrent_reference.log"),
                                 dict(env, CUDA_VISIBLE_DEVICES="", **threads))
        context["recurrent_reference"] = "background"

    def finish_reference():
        record = reference.finish(time.perf_counter() - reference.start)  # stops it if it is still running
        record["collected_after_s"] = record.pop("elapsed_s")  # its own time: result.seconds
        if record["status"] == "timeout":
            record["reason"] = "stopped: still running when the recurrent stage had ended"
        return record

    for i, name in enumerate(selected):
        step, longest, least = STAGES[name]
        if report["stages"][name]["status"] != "pending":
            continue
        if name == "ncu" and (args.dry_run or not args.ncu or shutil.which("ncu") is None):
            why = ("dry run: Nsight Compute profiles GPU kernels only" if args.dry_run else
                   "not requested (--ncu)" if not args.ncu else "ncu not found on PATH")
            report["stages"][name] = dict(status="skipped", protocol_step=step, reason=why, result={})
            print(f"[{name}] skipped: {why}", flush=True)
            continue
        if name in background:
            timeout, process = background[name]
            record = process.finish(timeout)
        else:
            reserve = sum(STAGES[s][2] for s in selected[i + 1:]
                          if s not in background and report["stages"][s]["status"] == "pending"
                          and (s != "ncu" or args.ncu)) + 5
            left = args.budget_s - (time.time() - t0)
            timeout = min(longest * args.timeout_scale * (DRY_RUN_TIMEOUT_SCALE if args.dry_run else 1.0),
                          left - reserve)
            if timeout < least * min(1.0, args.timeout_scale):
                report["stages"][name] = dict(status="skipped", protocol_step=step, result={},
                                              reason=f"budget: {left:.0f} s left, {reserve:.0f} s kept for later "
                                                     "stages")
                print(f"[{name}] skipped: budget", flush=True)
                continue
            write_json(os.path.join(workdir, "context.json"), context)
            deadline = time.time() + timeout - max(2.0, 0.1 * timeout)
            record = run_stage(command(name, deadline), timeout, os.path.join(workdir, f"{name}.json"),
                               os.path.join(workdir, f"{name}.log"), env=env)
        record.update(protocol_step=step, timeout_s=timeout)
        report["stages"][name] = record
        if name == "recurrent" and reference is not None:
            record["result"]["reference_process"] = finish_reference()
            reference = None
        print(f"[{name}] {record['status']} in {record['elapsed_s']:.1f} s (timeout {timeout:.0f} s)"
              + (f": {str(record.get('reason'))[:200]}" if record["status"] != "ok" else ""), flush=True)
        if name == "device":
            report["device"] = record["result"].get("device")
            provenance["device"] = report["device"]
            if record["status"] != "ok" and not args.dry_run:
                for later in selected[i + 1:]:
                    report["stages"][later] = dict(status="skipped", protocol_step=STAGES[later][0], result={},
                                                   reason=f"the device stage {record['status']}: "
                                                          f"{str(record.get('reason'))[:200]}")
        if name == "gate":
            variants = record["result"].get("variants", {})
            context["variants_passed"] = [v for v, e in variants.items() if e.get("status") == "pass"]
            context["gate_variants"] = {v: dict(status=e.get("status")) for v, e in variants.items()}
        if report["output"] is None:
            report["output"] = default_output(args.dry_run, report["device"])
        report["elapsed_s"] = time.time() - t0
        assemble(report)
        write_json(report["output"], report)
    if reference is not None:  # the recurrent stage did not run
        report["stages"]["recurrent"].setdefault("result", {})["reference_process"] = finish_reference()
    if report["output"] is None:
        report["output"] = default_output(args.dry_run, report["device"])
    report["elapsed_s"] = time.time() - t0
    assemble(report)
    write_json(report["output"], report)
    if not args.keep_workdir and not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)
        report["workdir"] = None
        write_json(report["output"], report)
    print("\n".join(report["table"]), flush=True)
    if not args.dry_run and "device" in selected and report["stages"]["device"]["status"] != "ok":
        print("no GPU measured: the device stage did not run (see its reason); --dry-run runs on the CPU", flush=True)
        return 2
    failed = [k for k, v in report["stages"].items() if v.get("status") in ("failed", "timeout") and k != "ncu"]
    gate_failed = [k for k, v in report["gate"].items() if v["status"] != "pass"]
    gate_failed += [k for k, v in report["recurrent_gate"].items() if v["status"] in ("fail", "error")]
    disagree = [r for r in report["stages"].get("recurrent", {}).get("result", {}).get("rows", [])
                if not r.get("agrees_with_numba", {}).get("ok", True)]
    return 1 if failed or gate_failed or disagree else 0


def default_output(dry_run, device):
    if dry_run:
        return os.path.join(tempfile.gettempdir(), "gpu_perf_dry_run.json")
    return os.path.join(_HERE, "results", f"gpu_perf_{_slug(device or 'unknown_gpu')}.json")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", help="the JSON (default benchmarks/results/gpu_perf_<device>.json; dry run: "
                                    "<tmp>/gpu_perf_dry_run.json)")
    p.add_argument("--budget-s", type=float, default=450.0, help="total seconds for every stage (default 450)")
    p.add_argument("--dry-run", action="store_true", help="every stage on the CPU (host emulation, tiny shapes)")
    p.add_argument("--ncu", action="store_true", help="also run Nsight Compute on the default variant (S7)")
    p.add_argument("--ncu-variants", nargs="+", choices=list(VARIANTS),
                   help="with --ncu: profile these variants' kernels instead, one ncu run each (e.g. default "
                        "m3_table_scan m3_staged)")
    p.add_argument("--repeats", type=int, default=0, help="timed runs per measurement (default 3; dry run 1)")
    p.add_argument("--dry-run-jax-all", action="store_true",
                   help="dry run: run every JAX stage (default: jax_medium only, float32 and float64)")
    p.add_argument("--stages", nargs="+", choices=list(STAGES), help="run only these stages (the rest: skipped)")
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS),
                   help=f"gate and time only these variants ({', '.join(KEPT_VARIANTS)} always: the baselines of the "
                        f"speedups and the floor)")
    p.add_argument("--timeout-scale", type=float, default=1.0, help="multiply every stage's longest timeout")
    p.add_argument("--workdir", help="folder for the stages' files (default: a temporary folder, removed at the end)")
    p.add_argument("--keep-workdir", action="store_true", help="keep the temporary folder (stage logs, references)")
    p.add_argument("--stage", help=argparse.SUPPRESS, choices=list(STAGE_FUNCTIONS))
    p.add_argument("--deadline", type=float, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.variants:
        keep = set(args.variants) | set(KEPT_VARIANTS)
        for name in [v for v in VARIANTS if v not in keep]:
            del VARIANTS[name]
    if args.stage and (args.workdir is None or args.deadline is None):
        p.error("--stage needs --workdir and --deadline")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.stage:
        return run_stage_here(args)
    return orchestrate(args)


if __name__ == "__main__":
    sys.exit(main())
