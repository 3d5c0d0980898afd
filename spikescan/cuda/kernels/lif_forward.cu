// spikescan: forward pass of a dense layer of current-based LIF neurons with exact hard reset.
//
// Three kernels over the same per-neuron input queues (spikescan/_queue.py: queue_times [batch, Q, L1] float64,
// ascending, +inf padded with at least one +inf; queue_index [batch, Q, L1] int32 flat source j * max_in + m;
// queue_end [batch, Q] int64; Q = 1 without delays, n_out with delays), or, with permuted != 0, the permutation
// format of a layer with delays (common.cuh spikescan_queue_t: queue_times / queue_index / queue_end are then the
// shared queue [batch, 1, L1] and its ends, queue_perm [batch, n_out, L1] uint16 and delays_t [n_out, n_in]; the
// arrivals are recomputed bit for bit; queue_perm and delays_t are unused otherwise). All state and solves are
// float64; T is the dtype of the recorded output times (float or double).  Outputs must be pre-filled by the launcher:
// spike_times = +inf, spike_event = -1, out_times = +inf; the kernels write recorded spikes and counts.
// Every kernel is also a template on the neuron model (class Neuron: neurons/lif.cuh's spikescan_lif), whose closed
// forms, gap test and solvers it calls.
//
//   spikescan_lif_forward_sequential<T>: one thread per (batch, neuron), walks the whole queue in one launch.
//   spikescan_lif_forward_step<T>:       one thread per (batch, neuron), ONE queue entry per launch (state in
//                                        global memory): the one-event-per-step baseline used by benchmarks.
//   spikescan_lif_forward_scan<T>:       one warp per (batch, neuron): chunked speculative associative scan
//                                        (DESIGN.md section 4) over chunks of `width` <= 32 events.
//   spikescan_lif_forward_rebased<T>:    the sequential kernel of a layer with delays with rebased exponential
//                                        sums (PERF.md P3b): no exponential per queue entry.
//
// quiet_exit (spikescan/cuda/_lif.py QUIET_GAP): 1 runs Neuron::quiet_gap on the gap's decay before the full gap test,
// which it skips for the gaps where V provably stays below threshold (the compiled CPU engine's shortcut); the spikes
// are the same bit for bit, only the work differs. 0 runs the full test on every gap.
//
// Backward checkpoints (spikescan/cuda/_lif.py FORWARD_CHECKPOINTS; n_ckpt > 0, checkpoints [n_ckpt, 4,
// batch * n_out]): the sequential and scan kernels also store the state before every 32nd point of the backward's
// history (queue entries and recorded spikes, common.cuh spikescan_store_checkpoint), so that the backward kernels
// skip their first pass. n_ckpt = 0 stores none (the step kernel never does).
//
// A spike found in the gap that ends at queue entry k (entries < k applied) is recorded with spike_event = k;
// spikes beyond max_spikes are counted but not recorded.  64-bit offsets throughout.
//
// Unresolvable spike trains: a neuron whose next spike rounds to the time of its previous one (an inter-spike
// interval below the float64 spacing of t, from a current far above threshold) would fire forever at that time.
// The kernels stop such a neuron, write the repeated time to stuck_times[tid] (pre-filled with +inf by the
// launcher), and the launcher raises FloatingPointError, as the NumPy path does.
//
// Runaway firing: a neuron that would fire spike number max_total_spikes + 1 (recorded or not) stops the same way:
// it writes that spike's time to stuck_times[tid] and its current I there to stuck_current[tid], and leaves
// counts[tid] = max_total_spikes + 1, by which the launcher tells it from an unresolvable spike and raises
// RunawayFiringError.
#include "neurons/lif.cuh"

#ifndef SPIKESCAN_DYNAMIC_SHARED
#define SPIKESCAN_DYNAMIC_SHARED(type, name) extern __shared__ type name[]
#endif

// Launch bounds of the fused sequential kernel (the default at large batch): 256-thread blocks
// (spikescan/cuda/_lif.py THREADS_PER_BLOCK, which must not exceed it; tested) and at least 3 resident blocks per
// SM, which caps ptxas at 80 registers per thread (65536 / 768 = 85, rounded down to the 8-register allocation
// unit): 24 resident warps per SM instead of the 16 that 86-88 registers left, with no spill
// (`python -m spikescan.cuda --resources`). The scan and step kernels stay unbounded: at 80 registers the scan
// kernel spills 8 bytes and the step kernel 4, which only a GPU run can weigh against the occupancy gained.
#define SPIKESCAN_FORWARD_THREADS 256
#define SPIKESCAN_FORWARD_MIN_BLOCKS 3
#define SPIKESCAN_FORWARD_BOUNDS __launch_bounds__(SPIKESCAN_FORWARD_THREADS, SPIKESCAN_FORWARD_MIN_BLOCKS)

// Fire every spike inside the gap (t_prev, t_k]: the gap test, the root solve, the reset V <- 0 (I kept), and the
// test again on the rest of the same gap.  Shared by the sequential and step kernels.  t_last: time of the
// neuron's last spike (-inf before the first).  Returns false, with *stuck_time set, if a spike repeats t_last or
// would exceed max_total_spikes (then also *stuck_current, and count = max_total_spikes + 1).
template <typename T, class Neuron>
__device__ __forceinline__ bool spikescan_fire_in_gap(double& V, double& I, double& t_prev, double& t_last,
                                                      double* __restrict__ stuck_time,
                                                      double* __restrict__ stuck_current, double t_k,
                                                      long long k, double tau_mem, double tau_syn,
                                                      double threshold, int solver, long long& count,
                                                      long long max_spikes, long long max_total_spikes,
                                                      double* __restrict__ spike_times,
                                                      long long* __restrict__ spike_event,
                                                      T* __restrict__ out_times, long long rec_base,
                                                      double* __restrict__ checkpoints, long long n_ckpt,
                                                      long long ckpt_columns, long long tid) {
    double gap = t_k - t_prev;
    while (true) {
        double s_hi;
        if (!Neuron::fires_in_gap(V, I, gap, tau_mem, tau_syn, threshold, &s_hi)) break;
        const double s = Neuron::solve_spike_time(V, I, s_hi, tau_mem, tau_syn, threshold, solver);
        const double t_spike = fmin(t_prev + s, t_k);
        if (t_spike <= t_last) {
            *stuck_time = t_spike;
            return false;
        }
        const auto d = Neuron::decay(s, tau_mem, tau_syn);
        if (count >= max_total_spikes) {
            *stuck_time = t_spike;
            *stuck_current = I * d.b;
            ++count;
            return false;
        }
        // The spike is point k + count of the backward's history: the state before it (recorded spikes only).
        if (n_ckpt > 0 && count < max_spikes) {
            spikescan_store_checkpoint(checkpoints, n_ckpt, ckpt_columns, tid, k + count, count, V, I, t_prev);
        }
        const auto r = Neuron::reset(threshold, I * d.b);
        V = r.V;
        I = r.I;
        t_prev = t_spike;
        t_last = t_spike;
        gap = t_k - t_spike;
        if (count < max_spikes) {
            spike_times[rec_base + count] = t_spike;
            spike_event[rec_base + count] = k;
            out_times[rec_base + count] = (T)t_spike;
        }
        ++count;
    }
    return true;
}

// The leading parameters of the three forward kernels (the launcher, spikescan/cuda/_lif.py forward, passes them
// first to each); each kernel appends its own.
#define SPIKESCAN_LIF_FORWARD_PARAMS \
    const double* __restrict__ queue_times, const int* __restrict__ queue_index, \
    const long long* __restrict__ queue_end, const unsigned short* __restrict__ queue_perm, \
    const double* __restrict__ delays_t, int permuted, long long n_in, const double* __restrict__ weights, \
    const double* __restrict__ tau_mem_arr, const double* __restrict__ tau_syn_arr, \
    const double* __restrict__ threshold_arr, int solver, int quiet_exit, \
    long long batch, long long n_out, long long n_queues, long long L1, long long max_in, long long max_spikes, \
    long long max_total_spikes, const int* __restrict__ entry_src, const double* __restrict__ entry_wd, \
    int entry_table

// The sequential kernel's body; Table: the entry table compiled in (spikescan_lif_forward_sequential_x only, so
// that the plain kernel keeps its code under its launch bounds).
template <typename T, class Neuron, bool Table>
__device__ __forceinline__ void spikescan_sequential_body(
    SPIKESCAN_LIF_FORWARD_PARAMS, double* __restrict__ spike_times, long long* __restrict__ spike_event,
    T* __restrict__ out_times, long long* __restrict__ counts, double* __restrict__ stuck_times,
    double* __restrict__ stuck_current, double* __restrict__ checkpoints, long long n_ckpt) {
    const long long tid = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (tid >= batch * n_out) return;
    const auto [b, i, qt, qi, end, tau_mem, tau_syn, rec_base] = spikescan_lif_neuron(
        tid, n_out, n_queues, L1, max_spikes, queue_times, queue_index, queue_end, tau_mem_arr, tau_syn_arr);
    const spikescan_queue_t q =
        Table ? spikescan_lif_forward_queue(qt, qi, permuted, queue_perm, delays_t, tid, i, n_in, L1, max_in,
                                            queue_times, entry_src, entry_wd, entry_table)
              : spikescan_lif_queue(qt, qi, permuted, queue_perm, delays_t, tid, i, n_in, L1, max_in);
    const double threshold = threshold_arr[i];  // per neuron

    double V = 0.0, I = 0.0, t_prev = 0.0, t_last = -spikescan_inf();
    long long count = 0;
    for (long long k = 0; k <= end; ++k) {
        const double t_k = q.time(k);  // +inf at k == end: the open gap after the last input
        // With quiet_exit the gap's decay comes first and rules most gaps out (then it is also the update's);
        // without, the kernel is the plain one: full gap test, then the decay.
        typename Neuron::decay_t d;
        bool quiet = false;
        if (quiet_exit) {
            d = Neuron::decay(t_k - t_prev, tau_mem, tau_syn);
            quiet = Neuron::quiet_gap(V, I, d, threshold);
        }
        if (!quiet) {
            if (!spikescan_fire_in_gap<T, Neuron>(V, I, t_prev, t_last, stuck_times + tid, stuck_current + tid, t_k,
                                                  k, tau_mem, tau_syn, threshold, solver, count, max_spikes,
                                                  max_total_spikes, spike_times, spike_event, out_times, rec_base,
                                                  checkpoints, n_ckpt, batch * n_out, tid)) {
                break;
            }
            // Recomputed rather than kept live across the test (which would spill under the launch bounds): the
            // rest of the gap after any spike, else the same value.
            d = Neuron::decay(t_k - t_prev, tau_mem, tau_syn);
        }
        if (k == end) break;
        if (n_ckpt > 0 && count < max_spikes) {  // entry k is point k + count
            spikescan_store_checkpoint(checkpoints, n_ckpt, batch * n_out, tid, k + count, count, V, I, t_prev);
        }
        const double w = q.weight(k, weights, n_out);
        const double V_new = d.a * V + d.c * I;
        I = Neuron::input_jump(d.b * I, w);
        V = V_new;
        t_prev = t_k;
    }
    counts[tid] = count;
}

#define SPIKESCAN_SEQUENTIAL_KERNEL_ARGS \
    queue_times, queue_index, queue_end, queue_perm, delays_t, permuted, n_in, weights, tau_mem_arr, tau_syn_arr, \
    threshold_arr, solver, quiet_exit, batch, n_out, n_queues, L1, max_in, max_spikes, max_total_spikes, entry_src, \
    entry_wd, entry_table, spike_times, spike_event, out_times, counts, stuck_times, stuck_current, checkpoints, \
    n_ckpt

template <typename T, class Neuron>
__global__ void SPIKESCAN_FORWARD_BOUNDS spikescan_lif_forward_sequential(
    SPIKESCAN_LIF_FORWARD_PARAMS, double* __restrict__ spike_times, long long* __restrict__ spike_event,
    T* __restrict__ out_times, long long* __restrict__ counts, double* __restrict__ stuck_times,
    double* __restrict__ stuck_current, double* __restrict__ checkpoints, long long n_ckpt) {
    spikescan_sequential_body<T, Neuron, false>(SPIKESCAN_SEQUENTIAL_KERNEL_ARGS);
}

// spikescan_lif_forward_sequential with the entry table compiled in (spikescan/cuda/_lif.py ENTRY_TABLE).
template <typename T, class Neuron>
__global__ void SPIKESCAN_FORWARD_BOUNDS spikescan_lif_forward_sequential_x(
    SPIKESCAN_LIF_FORWARD_PARAMS, double* __restrict__ spike_times, long long* __restrict__ spike_event,
    T* __restrict__ out_times, long long* __restrict__ counts, double* __restrict__ stuck_times,
    double* __restrict__ stuck_current, double* __restrict__ checkpoints, long long n_ckpt) {
    spikescan_sequential_body<T, Neuron, true>(SPIKESCAN_SEQUENTIAL_KERNEL_ARGS);
}

// The sequential kernel of a layer with delays and one pair of time constants, with rebased exponential sums
// (PERF.md P3b; the CUDA form of the compiled CPU engine's _lif_numba.forward_rebased). After an anchor t0 (state
// (V0, I0) there) and before the next spike, I(t) = B e^{-(t - t0)/tau_syn} and V(t) = A e^{-(t - t0)/tau_mem} - r I(t),
// r = tau_syn / (tau_mem - tau_syn), A = V0 + r I0 + r sum w alpha, B = I0 + sum w beta. An arrival at t_k = t + D
// has alpha = e^{(t_k - t0)/tau_mem} = E * F * G: the input slot's factor E = e^{(t - T)/tau_mem} (T = blk * width,
// blk = floor(t / width); table E [batch, n_in * max_in, 3] = (E_mem, E_syn, blk)), the synapse's F = e^{D/tau_mem}
// (table F [n_out, n_in, 2]) and G = e^{(T - t0)/tau_mem}. The launcher makes width >= reach + span (reach: the
// largest delay), so the sources of the entries within span of an anchor lie in two consecutive blocks, lo =
// floor((t0 - reach) / width) and lo + 1, whose four G factors the thread computes at each anchor: an entry costs
// products and two divisions. An entry outside them (rounding at a block edge), a gap that is not provably quiet
// (Neuron::quiet_ends, the comparisons of quiet_gap), an entry more than span after the anchor, and the open gap
// take the sequential kernel's exact step, and the thread re-anchors after it. Same spike counts and queue entries as
// the sequential kernel; states, and so spike times, differ by rounding. No backward checkpoints. Unbounded, like the
// scan and step kernels: 92 registers without spilling, where the sequential kernel's launch bounds (80) spill 24
// bytes; which is faster only a GPU run can tell.
// The first block lo of an anchor at t0 (the sources within reach before it) and the G factors e^{(T - t0)/tau} of
// that block and the next (T = lo * width, (lo + 1) * width).
__device__ __forceinline__ void spikescan_rebase(double t0, double reach, double width, double tau_mem,
                                                 double tau_syn, double& lo, double& gm0, double& gs0, double& gm1,
                                                 double& gs1) {
    lo = floor((t0 - reach) / width);
    gm0 = exp((lo * width - t0) / tau_mem);
    gs0 = exp((lo * width - t0) / tau_syn);
    gm1 = exp(((lo + 1.0) * width - t0) / tau_mem);
    gs1 = exp(((lo + 1.0) * width - t0) / tau_syn);
}

template <typename T, class Neuron>
__global__ void spikescan_lif_forward_rebased(
    SPIKESCAN_LIF_FORWARD_PARAMS, const double* __restrict__ E, const double* __restrict__ F, double width,
    double reach, double span, double* __restrict__ spike_times, long long* __restrict__ spike_event,
    T* __restrict__ out_times, long long* __restrict__ counts, double* __restrict__ stuck_times,
    double* __restrict__ stuck_current) {
    const long long tid = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (tid >= batch * n_out) return;
    const auto [b, i, qt, qi, end, tau_mem, tau_syn, rec_base] = spikescan_lif_neuron(
        tid, n_out, n_queues, L1, max_spikes, queue_times, queue_index, queue_end, tau_mem_arr, tau_syn_arr);
    const spikescan_queue_t q = spikescan_lif_queue(qt, qi, permuted, queue_perm, delays_t, tid, i, n_in, L1, max_in);
    const double threshold = threshold_arr[i];  // per neuron
    const double r = tau_syn / (tau_mem - tau_syn);
    const double* __restrict__ Eb = E + b * (n_in * max_in) * 3;
    const double* __restrict__ Fi = F + i * n_in * 2;

    double V = 0.0, I = 0.0, t_last = -spikescan_inf();
    long long count = 0;
    // The anchor: its time, the sums, its first block and the G factors of that block and the next.
    double t0 = 0.0, A = 0.0, B = 0.0, lo, gm0, gs0, gm1, gs1;
    spikescan_rebase(t0, reach, width, tau_mem, tau_syn, lo, gm0, gs0, gm1, gs1);
    for (long long k = 0; k <= end; ++k) {
        const double t_k = q.time(k);  // +inf at k == end: the open gap after the last input
        if (k < end && t_k - t0 <= span) {
            const long long flat = q.index(k);
            const double blk = Eb[flat * 3 + 2];
            if (blk == lo || blk == lo + 1.0) {
                const long long j = flat / max_in;
                const bool first = blk == lo;
                const double alpha = Eb[flat * 3] * Fi[j * 2] * (first ? gm0 : gm1);
                const double beta = Eb[flat * 3 + 1] * Fi[j * 2 + 1] * (first ? gs0 : gs1);
                const double I_end = B / beta;
                const double V_end = A / alpha - r * I_end;
                if (Neuron::quiet_ends(V, I, V_end, I_end, threshold)) {
                    const double w = spikescan_event_weight(weights, flat, max_in, n_out, i);
                    A += r * w * alpha;
                    B += w * beta;
                    V = V_end;
                    I = Neuron::input_jump(I_end, w);
                    continue;
                }
            }
        }
        // The sequential kernel's step (with its quiet test), then a new anchor at t_k. The state is that after
        // entry k - 1 (or at t = 0), whose time is reread rather than kept live.
        double t_prev = (k > 0) ? q.time(k - 1) : 0.0;
        auto d = Neuron::decay(t_k - t_prev, tau_mem, tau_syn);
        if (!Neuron::quiet_gap(V, I, d, threshold)) {
            if (!spikescan_fire_in_gap<T, Neuron>(V, I, t_prev, t_last, stuck_times + tid, stuck_current + tid, t_k,
                                                  k, tau_mem, tau_syn, threshold, solver, count, max_spikes,
                                                  max_total_spikes, spike_times, spike_event, out_times, rec_base,
                                                  nullptr, 0, 0, tid)) {
                break;
            }
            d = Neuron::decay(t_k - t_prev, tau_mem, tau_syn);  // the rest of the gap after any spike
        }
        if (k == end) break;
        const double w = q.weight(k, weights, n_out);
        const double V_new = d.a * V + d.c * I;
        I = Neuron::input_jump(d.b * I, w);
        V = V_new;
        A = V + r * I;
        B = I;
        t0 = t_k;
        spikescan_rebase(t0, reach, width, tau_mem, tau_syn, lo, gm0, gs0, gm1, gs1);
    }
    counts[tid] = count;
}

// One queue entry k per launch for every (batch, neuron): the gap ending at entry k, then entry k itself.  State
// (V, I, t_prev, t_last, count) lives in global memory between launches (initialised by the launcher: zeros, and
// t_last = -inf).  A stuck neuron (finite stuck_times[tid]) takes no further step.
template <typename T, class Neuron>
__global__ void spikescan_lif_forward_step(
    SPIKESCAN_LIF_FORWARD_PARAMS, long long k, double* __restrict__ state_V, double* __restrict__ state_I,
    double* __restrict__ state_t, double* __restrict__ state_last, double* __restrict__ spike_times,
    long long* __restrict__ spike_event, T* __restrict__ out_times, long long* __restrict__ counts,
    double* __restrict__ stuck_times, double* __restrict__ stuck_current) {
    const long long tid = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (tid >= batch * n_out) return;
    const auto [b, i, qt, qi, end, tau_mem, tau_syn, rec_base] = spikescan_lif_neuron(
        tid, n_out, n_queues, L1, max_spikes, queue_times, queue_index, queue_end, tau_mem_arr, tau_syn_arr);
    const spikescan_queue_t q = spikescan_lif_forward_queue(qt, qi, permuted, queue_perm, delays_t, tid, i, n_in, L1,
                                                             max_in, queue_times, entry_src, entry_wd, entry_table);
    const double threshold = threshold_arr[i];  // per neuron
    if (k > end || isfinite(stuck_times[tid])) return;
    double V = state_V[tid], I = state_I[tid], t_prev = state_t[tid], t_last = state_last[tid];
    long long count = counts[tid];
    const double t_k = q.time(k);
    typename Neuron::decay_t d;  // as in the sequential kernel
    bool quiet = false;
    if (quiet_exit) {
        d = Neuron::decay(t_k - t_prev, tau_mem, tau_syn);
        quiet = Neuron::quiet_gap(V, I, d, threshold);
    }
    bool ok = true;
    if (!quiet) {
        ok = spikescan_fire_in_gap<T, Neuron>(V, I, t_prev, t_last, stuck_times + tid, stuck_current + tid, t_k, k,
                                              tau_mem, tau_syn, threshold, solver, count, max_spikes,
                                              max_total_spikes, spike_times, spike_event, out_times, rec_base,
                                              nullptr, 0, 0, tid);
        d = Neuron::decay(t_k - t_prev, tau_mem, tau_syn);  // the rest of the gap after any spike
    }
    if (ok && k < end) {
        const double w = q.weight(k, weights, n_out);
        const double V_new = d.a * V + d.c * I;
        I = Neuron::input_jump(d.b * I, w);
        V = V_new;
        t_prev = t_k;
    }
    state_V[tid] = V;
    state_I[tid] = I;
    state_t[tid] = t_prev;
    state_last[tid] = t_last;
    counts[tid] = count;
}

// Chunked speculative scan, one warp per (batch, neuron); blockDim.x must be a multiple of 32.
//
// Each round the warp holds the committed state (V, I) at time t0 with queue entries < k applied.  Lane l takes
// queue entry e = k + l (lanes l >= width or e > end idle as identity maps): its gap (t_{e-1}, t_e] (t0 for l = 0)
// and the map "decay over the gap, then add w_e".  A Hillis-Steele scan by shuffles (5 rounds) gives every prefix
// state, the state at the start of each lane's gap is the previous lane's prefix, every lane runs the gap test on
// its own gap, and __ballot_sync finds the first firing gap f.  No spike: commit the chunk (state of the last
// active lane, k += active lanes).  Spike: every lane solves the same spike time (uniform control flow), lane 0
// records it, the state resets to (0, b(s) I) at the spike, k += f, and the next round resumes from the spike, so
// the rest of that gap is tested again.  Rounds continue until the +inf sentinel gap is consumed: no input is ever
// dropped.  Work per round: one decay + gap test per lane and 5 x 5 shuffles; a spike costs one extra round.
// The scan forward of one neuron (warp): the body of spikescan_lif_forward_scan and
// spikescan_lif_forward_scan_staged, given its queue q (entry `end` the +inf sentinel), its time constants and
// threshold, and the base of its spike records.
template <typename T, class Neuron, bool Prefetch>
__device__ __forceinline__ void spikescan_scan_neuron(
    const spikescan_queue_t& q, long long tid, int lane, long long end, double tau_mem, double tau_syn,
    double threshold, long long rec_base, const double* __restrict__ weights, long long n_out, int solver,
    int quiet_exit, int width, int warp_solve, long long max_spikes, long long max_total_spikes,
    long long ckpt_columns, double* __restrict__ spike_times, long long* __restrict__ spike_event,
    T* __restrict__ out_times, long long* __restrict__ counts, double* __restrict__ stuck_times,
    double* __restrict__ stuck_current, double* __restrict__ checkpoints, long long n_ckpt) {
    // Queue positions as int: a row holds fewer than 2^31 entries (queue_index is int32 and the launcher checks
    // n_in * max_in < 2^31), and `lane <= last - k` keeps k + lane from overflowing.
    const int last = (int)end;
    double V = 0.0, I = 0.0, t0 = 0.0, t_last = -spikescan_inf();
    int k = 0;
    long long count = 0;
    // Prefetch (spikescan/cuda/_lif.py SCAN_PREFETCH; a template parameter, so that the plain kernel's code and
    // registers are untouched): each round also loads the entries of the chunk that follows
    // it if it commits all `width` of its own (k + width), so that their loads overlap the round's arithmetic; the
    // next round uses them when it starts there (a quiet round) and loads its own after a spike. The same values.
    int next_k = -1;
    double t_next = 0.0, w_next = 0.0;
    while (k <= last) {
        const bool active = (lane < width) && (lane <= last - k);
        const int e = active ? k + lane : 0;
        double t_e = 0.0, w_e = 0.0;
        if (Prefetch && next_k == k) {  // warp-uniform
            t_e = t_next;
            w_e = w_next;
        } else if (active) {
            q.entry(e, weights, n_out, t_e, w_e);
        }
        if (Prefetch) {
            next_k = k + width;
            t_next = 0.0;
            w_next = 0.0;
            if (lane < width && next_k <= last && lane <= last - next_k) {
                q.entry(next_k + lane, weights, n_out, t_next, w_next);
            }
        }
        const double t_before = __shfl_up_sync(SPIKESCAN_FULL_MASK, t_e, 1);
        const double t_prev = (lane == 0) ? t0 : t_before;
        const double gap = active ? t_e - t_prev : 0.0;
        spikescan_affine_t m;
        typename Neuron::decay_t g;  // this lane's own gap map, kept for the quiet test
        g.a = 1.0; g.b = 1.0; g.c = 0.0;
        if (active) {
            g = Neuron::decay(gap, tau_mem, tau_syn);
            m.a = g.a; m.c = g.c; m.b = g.b; m.eV = 0.0;
            // Neuron::input_jump as an affine map: the weight is added to I.
            m.eI = (e < last) ? w_e : 0.0;
        } else {
            m.a = 1.0; m.c = 0.0; m.b = 1.0; m.eV = 0.0; m.eI = 0.0;
        }
        m = spikescan_warp_prefix(m, lane);
        // State after this lane's entry, and at the start of its gap (previous lane's, or the committed state).
        const double V_after = m.a * V + m.c * I + m.eV;
        const double I_after = m.b * I + m.eI;
        const double V_up = __shfl_up_sync(SPIKESCAN_FULL_MASK, V_after, 1);
        const double I_up = __shfl_up_sync(SPIKESCAN_FULL_MASK, I_after, 1);
        const double V_start = (lane == 0) ? V : V_up;
        const double I_start = (lane == 0) ? I : I_up;
        double s_hi = 0.0;
        // The quiet test uses the lane's own gap map, not the prefix (whose rounding differs): the twin of the
        // sequential kernels' and the compiled CPU engine's test, so every method rules out the same gaps.
        const bool quiet = quiet_exit && Neuron::quiet_gap(V_start, I_start, g, threshold);
        const bool fires = active && !quiet &&
                           Neuron::fires_in_gap(V_start, I_start, gap, tau_mem, tau_syn, threshold, &s_hi);
        const unsigned fire_mask = __ballot_sync(SPIKESCAN_FULL_MASK, fires);
        if (n_ckpt > 0 && count < max_spikes) {  // warp-uniform
            // Lanes whose start state is committed: all active ones of a quiet round (but the sentinel, no point),
            // the ones up to the first firing lane f otherwise (lane f's point is the spike, e + count).
            const int first = (fire_mask == 0u) ? 32 : __ffs((int)fire_mask) - 1;
            const bool committed = active && ((fire_mask == 0u) ? (e < last) : (lane <= first));
            if (committed) {
                spikescan_store_checkpoint(checkpoints, n_ckpt, ckpt_columns, tid, (long long)e + count, count,
                                           V_start, I_start, t_prev);
            }
        }
        if (fire_mask == 0u) {
            const int n_active = (last - k < width) ? last - k + 1 : width;
            const int src = n_active - 1;
            V = __shfl_sync(SPIKESCAN_FULL_MASK, V_after, src);
            I = __shfl_sync(SPIKESCAN_FULL_MASK, I_after, src);
            t0 = __shfl_sync(SPIKESCAN_FULL_MASK, t_e, src);
            k += n_active;
            continue;
        }
        const int f = __ffs((int)fire_mask) - 1;
        const double v0 = __shfl_sync(SPIKESCAN_FULL_MASK, V_start, f);
        const double i0 = __shfl_sync(SPIKESCAN_FULL_MASK, I_start, f);
        const double hi = __shfl_sync(SPIKESCAN_FULL_MASK, s_hi, f);
        const double tp = __shfl_sync(SPIKESCAN_FULL_MASK, t_prev, f);
        const double te = __shfl_sync(SPIKESCAN_FULL_MASK, t_e, f);
        // warp_solve (spikescan/cuda/_lif.py WARP_SOLVE): the same solve with its probes spread over three lanes.
        const double s = warp_solve
                             ? Neuron::solve_spike_time_warp(v0, i0, hi, tau_mem, tau_syn, threshold, solver, lane)
                             : Neuron::solve_spike_time(v0, i0, hi, tau_mem, tau_syn, threshold, solver);
        const double t_spike = fmin(tp + s, te);
        if (t_spike <= t_last) {  // warp-uniform: every lane solved the same spike
            if (lane == 0) stuck_times[tid] = t_spike;
            break;
        }
        const auto d = Neuron::decay(s, tau_mem, tau_syn);
        if (count >= max_total_spikes) {  // runaway firing (warp-uniform)
            if (lane == 0) {
                stuck_times[tid] = t_spike;
                stuck_current[tid] = i0 * d.b;
            }
            ++count;
            break;
        }
        t_last = t_spike;
        k += f;
        if (lane == 0 && count < max_spikes) {
            spike_times[rec_base + count] = t_spike;
            spike_event[rec_base + count] = k;
            out_times[rec_base + count] = (T)t_spike;
        }
        ++count;
        const auto r = Neuron::reset(threshold, i0 * d.b);
        V = r.V;
        I = r.I;
        t0 = t_spike;
    }
    if (lane == 0) counts[tid] = count;
}

// Table: the entry table compiled in (its use still decided by entry_table), only in the opt-in kernels, so that
// the plain scan kernel keeps its code and registers.
template <typename T, class Neuron, bool Prefetch, bool Table>
__device__ __forceinline__ void spikescan_scan_kernel_body(
    SPIKESCAN_LIF_FORWARD_PARAMS, int width, int warp_solve, double* __restrict__ spike_times,
    long long* __restrict__ spike_event, T* __restrict__ out_times, long long* __restrict__ counts,
    double* __restrict__ stuck_times, double* __restrict__ stuck_current, double* __restrict__ checkpoints,
    long long n_ckpt) {
    const long long tid = ((long long)blockIdx.x * blockDim.x + threadIdx.x) >> 5;  // warp = neuron
    const int lane = threadIdx.x & 31;
    if (tid >= batch * n_out) return;  // uniform across the warp
    const auto [b, i, qt, qi, end, tau_mem, tau_syn, rec_base] = spikescan_lif_neuron(
        tid, n_out, n_queues, L1, max_spikes, queue_times, queue_index, queue_end, tau_mem_arr, tau_syn_arr);
    const spikescan_queue_t q =
        Table ? spikescan_lif_forward_queue(qt, qi, permuted, queue_perm, delays_t, tid, i, n_in, L1, max_in,
                                            queue_times, entry_src, entry_wd, entry_table)
              : spikescan_lif_queue(qt, qi, permuted, queue_perm, delays_t, tid, i, n_in, L1, max_in);
    const double threshold = threshold_arr[i];  // per neuron

    spikescan_scan_neuron<T, Neuron, Prefetch>(q, tid, lane, end, tau_mem, tau_syn, threshold, rec_base, weights,
                                               n_out, solver, quiet_exit, width, warp_solve, max_spikes,
                                               max_total_spikes, batch * n_out, spike_times, spike_event, out_times,
                                               counts, stuck_times, stuck_current, checkpoints, n_ckpt);
}

#define SPIKESCAN_SCAN_KERNEL_ARGS \
    queue_times, queue_index, queue_end, queue_perm, delays_t, permuted, n_in, weights, tau_mem_arr, tau_syn_arr, \
    threshold_arr, solver, quiet_exit, batch, n_out, n_queues, L1, max_in, max_spikes, max_total_spikes, entry_src, \
    entry_wd, entry_table, width, warp_solve, spike_times, spike_event, out_times, counts, stuck_times, \
    stuck_current, checkpoints, n_ckpt

template <typename T, class Neuron>
__global__ void spikescan_lif_forward_scan(
    SPIKESCAN_LIF_FORWARD_PARAMS, int width, int warp_solve, double* __restrict__ spike_times,
    long long* __restrict__ spike_event, T* __restrict__ out_times, long long* __restrict__ counts,
    double* __restrict__ stuck_times, double* __restrict__ stuck_current, double* __restrict__ checkpoints,
    long long n_ckpt) {
    spikescan_scan_kernel_body<T, Neuron, false, false>(SPIKESCAN_SCAN_KERNEL_ARGS);
}

// spikescan_lif_forward_scan with the entry table compiled in (spikescan/cuda/_lif.py ENTRY_TABLE).
template <typename T, class Neuron>
__global__ void spikescan_lif_forward_scan_x(
    SPIKESCAN_LIF_FORWARD_PARAMS, int width, int warp_solve, double* __restrict__ spike_times,
    long long* __restrict__ spike_event, T* __restrict__ out_times, long long* __restrict__ counts,
    double* __restrict__ stuck_times, double* __restrict__ stuck_current, double* __restrict__ checkpoints,
    long long n_ckpt) {
    spikescan_scan_kernel_body<T, Neuron, false, true>(SPIKESCAN_SCAN_KERNEL_ARGS);
}

// spikescan_lif_forward_scan_x with the next chunk's entries prefetched (spikescan/cuda/_lif.py SCAN_PREFETCH).
template <typename T, class Neuron>
__global__ void spikescan_lif_forward_scan_prefetch(
    SPIKESCAN_LIF_FORWARD_PARAMS, int width, int warp_solve, double* __restrict__ spike_times,
    long long* __restrict__ spike_event, T* __restrict__ out_times, long long* __restrict__ counts,
    double* __restrict__ stuck_times, double* __restrict__ stuck_current, double* __restrict__ checkpoints,
    long long n_ckpt) {
    spikescan_scan_kernel_body<T, Neuron, true, true>(SPIKESCAN_SCAN_KERNEL_ARGS);
}

// The scan forward with the sample's shared queue staged in shared memory (spikescan/cuda/_lif.py STAGED_SCAN;
// PERF.md section 6, road item 1): permutation queues with the entry table only (permuted != 0, entry_table != 0).
// Each block holds the warps (neurons) i = (blockIdx.x mod blocks_per_sample) * warps + warp of one sample
// b = blockIdx.x / blocks_per_sample; its threads first copy the sample's shared queue, times and sources (L1 doubles,
// then L1 ints: 12 * L1 bytes of dynamic shared memory), and the neurons' gathers of the entries their permutations
// name then read shared memory instead of global memory. The delays and weights still come from the neurons' rows
// of pairs in global memory. The same doubles as spikescan_lif_forward_scan: the same spikes bit for bit.
template <typename T, class Neuron>
__global__ void spikescan_lif_forward_scan_staged(
    SPIKESCAN_LIF_FORWARD_PARAMS, int width, int warp_solve, int prefetch, long long blocks_per_sample,
    double* __restrict__ spike_times, long long* __restrict__ spike_event, T* __restrict__ out_times,
    long long* __restrict__ counts, double* __restrict__ stuck_times, double* __restrict__ stuck_current,
    double* __restrict__ checkpoints, long long n_ckpt) {
    SPIKESCAN_DYNAMIC_SHARED(double, spikescan_forward_shared);
    double* staged_times = spikescan_forward_shared;
    int* staged_src = reinterpret_cast<int*>(staged_times + L1);
    const long long sample = blockIdx.x / blocks_per_sample;
    const long long neuron = (blockIdx.x - sample * blocks_per_sample) * (blockDim.x >> 5) + (threadIdx.x >> 5);
    const int lane = threadIdx.x & 31;
    for (long long k = threadIdx.x; k < L1; k += blockDim.x) {
        staged_times[k] = queue_times[sample * L1 + k];
        staged_src[k] = entry_src[sample * L1 + k];
    }
    __syncthreads();
    if (neuron >= n_out) return;  // uniform across the warp
    const long long tid = sample * n_out + neuron;
    const auto [b, i, qt, qi, end, tau_mem, tau_syn, rec_base] = spikescan_lif_neuron(
        tid, n_out, n_queues, L1, max_spikes, queue_times, queue_index, queue_end, tau_mem_arr, tau_syn_arr);
    spikescan_queue_t q = spikescan_lif_forward_queue(qt, qi, permuted, queue_perm, delays_t, tid, i, n_in, L1, max_in,
                                                      queue_times, entry_src, entry_wd, entry_table);
    q.t = staged_times;  // the source table's rows are addressed from t: (t - t_base) + p = p
    q.t_base = staged_times;
    q.src = staged_src;
    const double threshold = threshold_arr[i];  // per neuron

    if (prefetch) {
        spikescan_scan_neuron<T, Neuron, true>(q, tid, lane, end, tau_mem, tau_syn, threshold, rec_base, weights,
                                               n_out, solver, quiet_exit, width, warp_solve, max_spikes,
                                               max_total_spikes, batch * n_out, spike_times, spike_event, out_times,
                                               counts, stuck_times, stuck_current, checkpoints, n_ckpt);
    } else {
        spikescan_scan_neuron<T, Neuron, false>(q, tid, lane, end, tau_mem, tau_syn, threshold, rec_base, weights,
                                                n_out, solver, quiet_exit, width, warp_solve, max_spikes,
                                                max_total_spikes, batch * n_out, spike_times, spike_event, out_times,
                                                counts, stuck_times, stuck_current, checkpoints, n_ckpt);
    }
}
