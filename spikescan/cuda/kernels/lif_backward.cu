// spikescan: exact adjoint (backward) of the LIF layer forward (DESIGN.md section 6).
//
// spikescan_lif_backward<T>: one thread per (batch, neuron); T is the dtype of grad_times.
//
// A neuron's history up to its last recorded spike is a sequence of P "points" in time order: its queue entries
// k < spike_event[last] and its recorded spikes (spike m sits after the entries k < spike_event[m]).  Nothing after
// the last recorded spike influences a recorded spike.  With the spike times known, the state after each point is
// recomputed from the previous point's state without any root solve:
//   input k at t_k:  (V, I) <- (a V + c I, b I + w_k),   spike m at t_m:  (V, I) <- (0, b I),
// with (a, b, c) = decay(t - tau_prev).  The adjoint lambda = (lV, lI, lT) starts at 0 after the last point and is
// walked backwards:
//   input k:  gs = u lV + v lI  (u = (b Ip - V_post)/tau_mem, v = -b Ip/tau_syn);  grad w_k += lI;
//             grad arrival_k += gs + lT;  (lV, lI, lT) <- (a lV, c lV + b lI, -gs)
//   spike m:  D = (b Iq - threshold)/tau_mem, lTt = lT + grad_times[m];  gs = lTt + v lI;  grad threshold += gs/D;
//             (lV, lI, lT) <- (-a gs/D, b lI - c gs/D, lTt)
// Memory: pass 1 walks the points forward and stores a checkpoint (V, I, time, spikes so far) before every
// SPIKESCAN_BWD_CHUNK-th point into `checkpoints` ([n_ckpt, 4, n_group] float64, laid out so that a warp's
// stores coalesce: 32 bytes per neuron per chunk, allocated by the launcher for this call only; the launcher
// splits the neurons into groups to bound it).  Pass 2 visits the
// chunks last to first, recomputes the chunk's previous-point states into registers/local memory (3 doubles + 1
// index per point), and walks them in reverse.  Work: two forward walks and one reverse walk per point.
// Reductions (grad_weights [n_in, n_out], grad_input_times [batch, n_in, max_in], grad_delays [n_in, n_out],
// grad_threshold [1]; float64, zero-filled by the launcher;
// grad_delays is only written when has_delays != 0) use atomicAdd on double (sm_60+): summation order,
// and so the last bits, vary from run to run.
#include "common.cuh"

#ifndef SPIKESCAN_BWD_CHUNK
#define SPIKESCAN_BWD_CHUNK 32
#endif

template <typename T>
__global__ void spikescan_lif_backward(
    const double* __restrict__ queue_times, const long long* __restrict__ queue_index,
    const long long* __restrict__ queue_end, const double* __restrict__ weights,
    const double* __restrict__ tau_mem_arr, const double* __restrict__ tau_syn_arr, double threshold,
    long long batch, long long n_in, long long n_out, long long n_queues, long long L1, long long max_in,
    long long max_spikes, long long neuron_start, long long n_group, const double* __restrict__ spike_times,
    const long long* __restrict__ spike_event, const long long* __restrict__ counts,
    const T* __restrict__ grad_times, long long n_ckpt, double* __restrict__ checkpoints,
    double* __restrict__ grad_weights, double* __restrict__ grad_input_times,
    int has_delays, double* __restrict__ grad_delays, double* __restrict__ grad_threshold) {
    // This launch handles neurons [neuron_start, neuron_start + n_group) of the flattened batch * n_out.
    const long long local = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (local >= n_group) return;
    const long long tid = neuron_start + local;
    const long long b = tid / n_out;
    const long long i = tid - b * n_out;
    const long long qrow = b * n_queues + (n_queues > 1 ? i : 0);
    const double* qt = queue_times + qrow * L1;
    const long long* qi = queue_index + qrow * L1;
    const double tau_mem = tau_mem_arr[i];
    const double tau_syn = tau_syn_arr[i];
    const long long rec_base = tid * max_spikes;
    const double* st = spike_times + rec_base;
    const long long* se = spike_event + rec_base;
    const T* gt = grad_times + rec_base;
    const long long n_rec = counts[tid] < max_spikes ? counts[tid] : max_spikes;
    if (n_rec == 0) return;  // no recorded spike: no gradient flows through this neuron
    const long long n_points = se[n_rec - 1] + n_rec;
    const long long in_base = b * n_in * max_in;

    // Pass 1: forward over the points, checkpoint before every chunk.
    double V = 0.0, I = 0.0, tau = 0.0;
    long long m = 0;  // spikes passed so far; the next input is k = p - m
    for (long long p = 0; p < n_points; ++p) {
        if (p % SPIKESCAN_BWD_CHUNK == 0) {
            const long long c = p / SPIKESCAN_BWD_CHUNK;
            checkpoints[(c * 4 + 0) * n_group + local] = V;
            checkpoints[(c * 4 + 1) * n_group + local] = I;
            checkpoints[(c * 4 + 2) * n_group + local] = tau;
            checkpoints[(c * 4 + 3) * n_group + local] = (double)m;
        }
        const long long k = p - m;
        if (m < n_rec && se[m] == k) {
            const double t = st[m];
            const spikescan_decay_t d = spikescan_decay(t - tau, tau_mem, tau_syn);
            V = 0.0;
            I = d.b * I;
            tau = t;
            ++m;
        } else {
            const double t = qt[k];
            const spikescan_decay_t d = spikescan_decay(t - tau, tau_mem, tau_syn);
            const double V_new = d.a * V + d.c * I;
            I = d.b * I + spikescan_event_weight(weights, qi[k], max_in, n_out, i);
            V = V_new;
            tau = t;
        }
    }

    // Pass 2: chunks last to first; inside a chunk, recompute then reverse.
    double prev_V[SPIKESCAN_BWD_CHUNK], prev_I[SPIKESCAN_BWD_CHUNK], prev_t[SPIKESCAN_BWD_CHUNK];
    long long code[SPIKESCAN_BWD_CHUNK];  // >= 0: input k; < 0: spike -(m + 1)
    double lV = 0.0, lI = 0.0, lT = 0.0, g_threshold = 0.0;
    const long long n_chunks = (n_points + SPIKESCAN_BWD_CHUNK - 1) / SPIKESCAN_BWD_CHUNK;
    for (long long c = n_chunks - 1; c >= 0; --c) {
        V = checkpoints[(c * 4 + 0) * n_group + local];
        I = checkpoints[(c * 4 + 1) * n_group + local];
        tau = checkpoints[(c * 4 + 2) * n_group + local];
        m = (long long)checkpoints[(c * 4 + 3) * n_group + local];
        const long long p0 = c * SPIKESCAN_BWD_CHUNK;
        const long long p1 = (p0 + SPIKESCAN_BWD_CHUNK < n_points) ? p0 + SPIKESCAN_BWD_CHUNK : n_points;
        for (long long p = p0; p < p1; ++p) {
            const int slot = (int)(p - p0);
            prev_V[slot] = V;
            prev_I[slot] = I;
            prev_t[slot] = tau;
            const long long k = p - m;
            if (m < n_rec && se[m] == k) {
                code[slot] = -(m + 1);
                const double t = st[m];
                const spikescan_decay_t d = spikescan_decay(t - tau, tau_mem, tau_syn);
                V = 0.0;
                I = d.b * I;
                tau = t;
                ++m;
            } else {
                code[slot] = k;
                const double t = qt[k];
                const spikescan_decay_t d = spikescan_decay(t - tau, tau_mem, tau_syn);
                const double V_new = d.a * V + d.c * I;
                I = d.b * I + spikescan_event_weight(weights, qi[k], max_in, n_out, i);
                V = V_new;
                tau = t;
            }
        }
        for (long long p = p1 - 1; p >= p0; --p) {
            const int slot = (int)(p - p0);
            const double Ip = prev_I[slot];
            if (code[slot] >= 0) {
                const long long k = code[slot];
                const spikescan_decay_t d = spikescan_decay(qt[k] - prev_t[slot], tau_mem, tau_syn);
                const double I_pre = d.b * Ip;
                const double V_post = d.a * prev_V[slot] + d.c * Ip;
                const double u = (I_pre - V_post) / tau_mem;
                const double v = -I_pre / tau_syn;
                const double gs = u * lV + v * lI;
                const long long flat = qi[k];
                const long long j = flat / max_in;
                atomicAdd(grad_weights + j * n_out + i, lI);
                const double g_arrival = gs + lT;
                atomicAdd(grad_input_times + in_base + flat, g_arrival);
                if (has_delays) atomicAdd(grad_delays + j * n_out + i, g_arrival);
                const double lV_old = lV;
                lV = d.a * lV_old;
                lI = d.c * lV_old + d.b * lI;
                lT = -gs;
            } else {
                const long long ms = -code[slot] - 1;
                const spikescan_decay_t d = spikescan_decay(st[ms] - prev_t[slot], tau_mem, tau_syn);
                const double I_pre = d.b * Ip;
                const double D = (I_pre - threshold) / tau_mem;
                const double v = -I_pre / tau_syn;
                const double lTt = lT + (double)gt[ms];
                const double gs = lTt + v * lI;
                g_threshold += gs / D;
                lV = (-d.a / D) * gs;
                lI = d.b * lI + (-d.c / D) * gs;
                lT = lTt;
            }
        }
    }
    atomicAdd(grad_threshold, g_threshold);
}

// ---------------------------------------------------------------------------------------------------------------
// spikescan_lif_backward_scan<T>: the same adjoint, one warp per (batch, neuron); same arguments and outputs as
// spikescan_lif_backward (checkpoints indexed by warp), blockDim.x a multiple of 32.
//
// The points of a neuron form an affine recurrence whose maps are all known once the spike times are: a warp takes
// them in chunks of 32 (lane l: point p0 + l; lanes past the last point are identity maps).
// - Which points are spikes: spike m is point P_m = se[m] + m (strictly increasing in m).  With m0 = spikes before
//   the chunk (carried), lane l loads P_{m0+l}; the lanes whose P falls in the chunk are a ballot, and an OR
//   butterfly of (1 << (P - p0)) gives the chunk's spike positions, so lane l knows whether it is a spike and
//   m = m0 + (spike positions below l): exact, no search.  Spikes are sparse: the butterfly runs only for chunks
//   that hold one.
// - State: lane l builds its point's map (V, I) -> ([[a, c], [0, b]] (V, I) + (0, w)) (a spike: V <- 0 is the map
//   [[0, 0], [0, b]]), a Hillis-Steele scan (5 shuffle rounds) composes the prefix maps, applied to the carried
//   state they give the state after every point; the previous lane's is the state before it.
// - Pass 1 walks the chunks forward and stores the checkpoint (V, I, t_prev, m0) before each (same layout as above).
// - Pass 2 walks the chunks last to first: from the checkpoint the prefix scan recomputes every lane's previous state;
//   the reverse step of every point is then an affine map of lambda = (lV, lI, lT) (the rules in the header):
//     input:  lambda <- [[a, 0, 0], [c, b, 0], [-u, -v, 0]] lambda
//     spike:  lambda <- [[0, -a v/D, -a/D], [0, b - c v/D, -c/D], [0, 0, 1]] lambda + (-a g/D, -c g/D, g),
//             g = grad_times[m];
//   a reverse scan of these 3x3 + offset maps (composed in float64 by shuffles from higher lanes, 5 rounds) applied
//   to the carried adjoint (the one after the chunk) gives every lane's adjoint after its point (the next lane's
//   result; the carry for the last lane), from which each lane computes its own contributions in parallel (grad
//   weight, grad arrival time, grad delay, grad threshold).  The carry moves to lane 0's result.
// Same recurrences as spikescan_lif_backward, associated differently: results agree to rounding (~1e-15 relative
// in float64 for well-conditioned neurons).  Work per point: one decay and two forward + one reverse warp-scan
// rounds per chunk (instead of three sequential steps); loads of queue times, indices and weights are coalesced
// across the warp.  Reductions: grad_threshold is summed over the warp before one atomicAdd per neuron; the lanes
// of a warp hold distinct queue entries, so atomics on grad_input_times never collide within a warp (grad_weights
// and grad_delays can, when one input channel spikes twice in a chunk; the hardware serialises those).
// ---------------------------------------------------------------------------------------------------------------

// Reverse step of one point, or a composition of them: lambda -> A lambda + e, A row-major 3 x 3.
struct spikescan_adjoint_map_t {
    double A[9];
    double e[3];
};

// outer o inner (inner applied first) = (A_o A_i, A_o e_i + e_o).
__device__ __forceinline__ spikescan_adjoint_map_t spikescan_adjoint_compose(const spikescan_adjoint_map_t& outer,
                                                                             const spikescan_adjoint_map_t& inner) {
    spikescan_adjoint_map_t r;
#pragma unroll
    for (int row = 0; row < 3; ++row) {
#pragma unroll
        for (int col = 0; col < 3; ++col) {
            r.A[row * 3 + col] = outer.A[row * 3 + 0] * inner.A[0 * 3 + col] +
                                 outer.A[row * 3 + 1] * inner.A[1 * 3 + col] +
                                 outer.A[row * 3 + 2] * inner.A[2 * 3 + col];
        }
        r.e[row] = outer.A[row * 3 + 0] * inner.e[0] + outer.A[row * 3 + 1] * inner.e[1] +
                   outer.A[row * 3 + 2] * inner.e[2] + outer.e[row];
    }
    return r;
}

// Lane's point of the chunk starting at p0 (see spikescan_lif_backward_scan).
struct spikescan_chunk_point_t {
    bool active;           // p0 + lane < n_points
    bool spike;            // spike m, else queue entry k
    long long k, m;
    double t;              // time of the point
    spikescan_decay_t d;   // decay over the gap from the previous point (active lanes)
    spikescan_affine_t f;  // forward map of (V, I) over the gap from the previous point and the point itself
};

// Classifies the warp's points p0 + lane, loads them and builds their forward maps.  m0: recorded spikes before
// p0; t_before: time of point p0 - 1 (0 before the first point).  Returns the number of spikes in the chunk in
// *n_spikes.  Warp-collective: every lane of the warp must call it.
__device__ __forceinline__ spikescan_chunk_point_t spikescan_chunk_point(
    int lane, long long p0, long long n_points, long long m0, long long n_rec, const long long* __restrict__ se,
    const double* __restrict__ st, const double* __restrict__ qt, const long long* __restrict__ qi,
    const double* __restrict__ weights, long long max_in, long long n_out, long long i, double t_before,
    double tau_mem, double tau_syn, int* n_spikes) {
    const long long ms = m0 + lane;
    const long long pos = (ms < n_rec) ? se[ms] + ms - p0 : 32;  // >= 0: spikes before p0 are < m0
    const bool in_chunk = pos < 32;
    const unsigned spike_lanes = __ballot_sync(SPIKESCAN_FULL_MASK, in_chunk);
    unsigned positions = in_chunk ? (1u << (unsigned)pos) : 0u;
    if (spike_lanes != 0u) {  // warp-uniform
#pragma unroll
        for (int offset = 1; offset < 32; offset <<= 1) {
            positions |= __shfl_sync(SPIKESCAN_FULL_MASK, positions, lane ^ offset);
        }
    }
    *n_spikes = __popc(spike_lanes);
    spikescan_chunk_point_t pt;
    const long long p = p0 + lane;
    pt.active = p < n_points;
    pt.spike = (positions >> lane) & 1u;
    pt.m = m0 + __popc(positions & ((1u << lane) - 1u));
    pt.k = p - pt.m;
    double w = 0.0;
    pt.t = 0.0;
    if (pt.active) {
        if (pt.spike) {
            pt.t = st[pt.m];
        } else {
            pt.t = qt[pt.k];
            w = spikescan_event_weight(weights, qi[pt.k], max_in, n_out, i);
        }
    }
    const double t_up = __shfl_up_sync(SPIKESCAN_FULL_MASK, pt.t, 1);
    const double t_prev = (lane == 0) ? t_before : t_up;
    if (pt.active) {
        pt.d = spikescan_decay(pt.t - t_prev, tau_mem, tau_syn);
        pt.f.a = pt.spike ? 0.0 : pt.d.a;
        pt.f.c = pt.spike ? 0.0 : pt.d.c;
        pt.f.b = pt.d.b;
        pt.f.eV = 0.0;
        pt.f.eI = w;
    } else {
        pt.d.a = 1.0; pt.d.b = 1.0; pt.d.c = 0.0;
        pt.f.a = 1.0; pt.f.c = 0.0; pt.f.b = 1.0; pt.f.eV = 0.0; pt.f.eI = 0.0;
    }
    return pt;
}

template <typename T>
__global__ void spikescan_lif_backward_scan(
    const double* __restrict__ queue_times, const long long* __restrict__ queue_index,
    const long long* __restrict__ queue_end, const double* __restrict__ weights,
    const double* __restrict__ tau_mem_arr, const double* __restrict__ tau_syn_arr, double threshold,
    long long batch, long long n_in, long long n_out, long long n_queues, long long L1, long long max_in,
    long long max_spikes, long long neuron_start, long long n_group, const double* __restrict__ spike_times,
    const long long* __restrict__ spike_event, const long long* __restrict__ counts,
    const T* __restrict__ grad_times, long long n_ckpt, double* __restrict__ checkpoints,
    double* __restrict__ grad_weights, double* __restrict__ grad_input_times,
    int has_delays, double* __restrict__ grad_delays, double* __restrict__ grad_threshold) {
    // Warp = neuron; exits below are warp-uniform.
    const long long local = ((long long)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    const int lane = threadIdx.x & 31;
    if (local >= n_group) return;
    const long long tid = neuron_start + local;
    const long long b = tid / n_out;
    const long long i = tid - b * n_out;
    const long long qrow = b * n_queues + (n_queues > 1 ? i : 0);
    const double* qt = queue_times + qrow * L1;
    const long long* qi = queue_index + qrow * L1;
    const double tau_mem = tau_mem_arr[i];
    const double tau_syn = tau_syn_arr[i];
    const long long rec_base = tid * max_spikes;
    const double* st = spike_times + rec_base;
    const long long* se = spike_event + rec_base;
    const T* gt = grad_times + rec_base;
    const long long n_rec = counts[tid] < max_spikes ? counts[tid] : max_spikes;
    if (n_rec == 0) return;
    const long long n_points = se[n_rec - 1] + n_rec;
    const long long n_chunks = (n_points + 31) / 32;
    const long long in_base = b * n_in * max_in;

    // Pass 1: chunks forward, checkpoint (V, I, t_prev, m0) before each.
    double V = 0.0, I = 0.0, tau = 0.0;
    long long m0 = 0;
    for (long long c = 0; c < n_chunks; ++c) {
        if (lane < 4) {
            const double value = (lane == 0) ? V : (lane == 1) ? I : (lane == 2) ? tau : (double)m0;
            checkpoints[(c * 4 + lane) * n_group + local] = value;
        }
        const long long p0 = c * 32;
        int n_spikes;
        const spikescan_chunk_point_t pt = spikescan_chunk_point(lane, p0, n_points, m0, n_rec, se, st, qt, qi,
                                                                 weights, max_in, n_out, i, tau, tau_mem, tau_syn,
                                                                 &n_spikes);
        const spikescan_affine_t f = spikescan_warp_prefix(pt.f, lane);
        const double V_after = f.a * V + f.c * I + f.eV;
        const double I_after = f.b * I + f.eI;
        const int last = (n_points - p0 < 32) ? (int)(n_points - p0) - 1 : 31;
        V = __shfl_sync(SPIKESCAN_FULL_MASK, V_after, last);
        I = __shfl_sync(SPIKESCAN_FULL_MASK, I_after, last);
        tau = __shfl_sync(SPIKESCAN_FULL_MASK, pt.t, last);
        m0 += n_spikes;
    }

    // Pass 2: chunks last to first.
    double lV = 0.0, lI = 0.0, lT = 0.0, g_threshold = 0.0;
    for (long long c = n_chunks - 1; c >= 0; --c) {
        V = checkpoints[(c * 4 + 0) * n_group + local];
        I = checkpoints[(c * 4 + 1) * n_group + local];
        tau = checkpoints[(c * 4 + 2) * n_group + local];
        m0 = (long long)checkpoints[(c * 4 + 3) * n_group + local];
        const long long p0 = c * 32;
        int n_spikes;
        const spikescan_chunk_point_t pt = spikescan_chunk_point(lane, p0, n_points, m0, n_rec, se, st, qt, qi,
                                                                 weights, max_in, n_out, i, tau, tau_mem, tau_syn,
                                                                 &n_spikes);
        // State before this lane's point: the previous lane's state after, or the checkpoint.
        const spikescan_affine_t f = spikescan_warp_prefix(pt.f, lane);
        const double V_up = __shfl_up_sync(SPIKESCAN_FULL_MASK, f.a * V + f.c * I + f.eV, 1);
        const double I_up = __shfl_up_sync(SPIKESCAN_FULL_MASK, f.b * I + f.eI, 1);
        const double Vp = (lane == 0) ? V : V_up;
        const double Ip = (lane == 0) ? I : I_up;

        // This point's reverse step (identity for lanes past the last point).
        double u = 0.0, v = 0.0, D = 1.0, g = 0.0;
        spikescan_adjoint_map_t r;
#pragma unroll
        for (int q = 0; q < 9; ++q) r.A[q] = (q % 4 == 0) ? 1.0 : 0.0;
        r.e[0] = 0.0; r.e[1] = 0.0; r.e[2] = 0.0;
        if (pt.active) {
            const spikescan_decay_t& d = pt.d;
            const double I_pre = d.b * Ip;
            v = -I_pre / tau_syn;
            if (pt.spike) {
                D = (I_pre - threshold) / tau_mem;
                g = (double)gt[pt.m];
                const double ra = -d.a / D, rc = -d.c / D;
                r.A[0] = 0.0; r.A[1] = ra * v;       r.A[2] = ra;
                r.A[3] = 0.0; r.A[4] = d.b + rc * v; r.A[5] = rc;
                r.A[6] = 0.0; r.A[7] = 0.0;          r.A[8] = 1.0;
                r.e[0] = ra * g; r.e[1] = rc * g; r.e[2] = g;
            } else {
                const double V_post = d.a * Vp + d.c * Ip;
                u = (I_pre - V_post) / tau_mem;
                r.A[0] = d.a; r.A[1] = 0.0; r.A[2] = 0.0;
                r.A[3] = d.c; r.A[4] = d.b; r.A[5] = 0.0;
                r.A[6] = -u;  r.A[7] = -v;  r.A[8] = 0.0;
            }
        }
        // Suffix composition: lane l ends with the reverse steps of points l..31, the later ones applied first.
#pragma unroll
        for (int offset = 1; offset < 32; offset <<= 1) {
            const int src = (lane + offset < 32) ? lane + offset : lane;
            spikescan_adjoint_map_t later;
#pragma unroll
            for (int q = 0; q < 9; ++q) later.A[q] = __shfl_sync(SPIKESCAN_FULL_MASK, r.A[q], src);
#pragma unroll
            for (int q = 0; q < 3; ++q) later.e[q] = __shfl_sync(SPIKESCAN_FULL_MASK, r.e[q], src);
            if (lane + offset < 32) r = spikescan_adjoint_compose(r, later);
        }
        // Adjoint before this lane's reverse step (after its point in time): the next lane's result, or the carry.
        const double out_V = r.A[0] * lV + r.A[1] * lI + r.A[2] * lT + r.e[0];
        const double out_I = r.A[3] * lV + r.A[4] * lI + r.A[5] * lT + r.e[1];
        const double out_T = r.A[6] * lV + r.A[7] * lI + r.A[8] * lT + r.e[2];
        const int next = (lane < 31) ? lane + 1 : lane;
        const double dn_V = __shfl_sync(SPIKESCAN_FULL_MASK, out_V, next);
        const double dn_I = __shfl_sync(SPIKESCAN_FULL_MASK, out_I, next);
        const double dn_T = __shfl_sync(SPIKESCAN_FULL_MASK, out_T, next);
        const double aV = (lane < 31) ? dn_V : lV;
        const double aI = (lane < 31) ? dn_I : lI;
        const double aT = (lane < 31) ? dn_T : lT;
        if (pt.active) {
            if (pt.spike) {
                const double gs = (aT + g) + v * aI;
                g_threshold += gs / D;
            } else {
                const double gs = u * aV + v * aI;
                const long long flat = qi[pt.k];
                const long long j = flat / max_in;
                atomicAdd(grad_weights + j * n_out + i, aI);
                const double g_arrival = gs + aT;
                atomicAdd(grad_input_times + in_base + flat, g_arrival);
                if (has_delays) atomicAdd(grad_delays + j * n_out + i, g_arrival);
            }
        }
        lV = __shfl_sync(SPIKESCAN_FULL_MASK, out_V, 0);
        lI = __shfl_sync(SPIKESCAN_FULL_MASK, out_I, 0);
        lT = __shfl_sync(SPIKESCAN_FULL_MASK, out_T, 0);
    }
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) {
        g_threshold += __shfl_sync(SPIKESCAN_FULL_MASK, g_threshold, lane ^ offset);
    }
    if (lane == 0) atomicAdd(grad_threshold, g_threshold);
}
