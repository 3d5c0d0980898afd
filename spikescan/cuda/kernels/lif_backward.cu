// spikescan: exact adjoint (backward) of the LIF layer forward (DESIGN.md section 6).
//
// spikescan_lif_backward<T>: one thread per (batch, neuron); T is the dtype of grad_times.  Queues as in
// lif_forward.cu: materialised, or (permuted != 0) the permutation format read through common.cuh's
// spikescan_queue_t.  Both kernels of this file
// are also templates on the neuron model (class Neuron: neurons/lif.cuh's spikescan_lif).
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
//   grazing spike m (D <= 0: V only touches the threshold, dV/dt = 0, or rounding put the slope below zero): its
//             time is not differentiable; its IFT term (every 1/D factor) is dropped: (lV, lI, lT) <- (0, b lI, lTt),
//             no threshold term.  The kernel counts such spikes of its neuron and keeps the earliest one's time in
//             grazing[2 tid], grazing[2 tid + 1] (pre-filled with 0 and +inf by the launcher, written only when
//             the neuron has one); the launcher issues GrazingSpikeWarning, as the NumPy backward does.
// Memory: pass 1 walks the points forward and stores a checkpoint (V, I, time, spikes so far) before every
// SPIKESCAN_BWD_CHUNK-th point into `checkpoints` ([n_ckpt, 4, n_group] float64, laid out so that a warp's
// stores coalesce: 32 bytes per neuron per chunk, allocated by the launcher for this call only; the launcher
// splits the neurons into groups to bound it).  Pass 2 visits the chunks last to first (ckpt_ready: the forward
// kernels wrote the checkpoints, [n_ckpt, 4, batch * n_out] indexed by the flat neuron, and pass 1 is skipped),
// recomputes the chunk's previous-point states into registers/local memory (3 doubles + 1 index per point), and
// walks them in reverse.  Work: two forward walks and one reverse walk per point.
// Reductions (grad_weights [n_in, n_out], grad_input_times [batch, n_in, max_in], grad_delays [n_in, n_out],
// grad_threshold [n_out]; float64, zero-filled by the launcher; grad_input_times is only written when
// has_input_grad != 0, grad_delays only when has_delays != 0) use atomicAdd on double (sm_60+): summation order,
// and so the last bits, vary from run to run.
#include "neurons/lif.cuh"

#ifndef SPIKESCAN_BWD_CHUNK
#define SPIKESCAN_BWD_CHUNK SPIKESCAN_CKPT_POINTS
#endif
static_assert(SPIKESCAN_BWD_CHUNK == SPIKESCAN_CKPT_POINTS && SPIKESCAN_CKPT_POINTS == 32,
              "the forward's checkpoints (common.cuh) and the scan kernel's warp chunks assume 32 points");

// A neuron's time-constant gradients: added to grad_tau_mem[i] / grad_tau_syn[i] ([n_out]) with atomics
// (has_tau_grads == 1; also 0, which adds zeros), or written at tid into [batch * n_out] buffers that the launcher
// sums over samples in a fixed order (has_tau_grads == 2: bitwise reproducible, spikescan/cuda/_lif.py
// tau_partials; the recurrent backward's time constants under DETERMINISTIC).
__device__ __forceinline__ void spikescan_store_tau_grads(int has_tau_grads, double* __restrict__ grad_tau_mem,
                                                          double* __restrict__ grad_tau_syn, long long i,
                                                          long long tid, double g_tau_mem, double g_tau_syn) {
    if (has_tau_grads == 2) {
        grad_tau_mem[tid] = g_tau_mem;
        grad_tau_syn[tid] = g_tau_syn;
        return;
    }
    atomicAdd(grad_tau_mem + i, g_tau_mem);
    atomicAdd(grad_tau_syn + i, g_tau_syn);
}

// The parameters of both kernels (one list: the launcher, spikescan/cuda/_lif.py backward, passes the same
// arguments to either).
#define SPIKESCAN_LIF_BACKWARD_PARAMS \
    SPIKESCAN_LIF_BACKWARD_NEURON_PARAMS, long long n_ckpt, double* __restrict__ checkpoints, int ckpt_ready, \
    double* __restrict__ grad_weights, int has_input_grad, double* __restrict__ grad_input_times, \
    int has_delays, double* __restrict__ grad_delays, double* __restrict__ grad_threshold, \
    int has_tau_grads, double* __restrict__ grad_tau_mem, double* __restrict__ grad_tau_syn, \
    double* __restrict__ grazing

template <typename T, class Neuron>
__global__ void spikescan_lif_backward(SPIKESCAN_LIF_BACKWARD_PARAMS) {
    // This launch handles neurons [neuron_start, neuron_start + n_group) of the flattened batch * n_out.
    const long long local = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (local >= n_group) return;
    const long long tid = neuron_start + local;
    const auto [b, i, q, tau_mem, tau_syn, threshold, st, se, gt, n_rec] = spikescan_lif_backward_neuron(
        tid, queue_times, queue_index, queue_end, queue_perm, delays_t, permuted, tau_mem_arr, tau_syn_arr,
        threshold_arr, n_in, n_out, n_queues, L1, max_in, max_spikes, spike_times, spike_event, counts, grad_times);
    if (n_rec == 0) return;  // no recorded spike: no gradient flows through this neuron
    const long long n_points = se[n_rec - 1] + n_rec;
    const long long in_base = b * n_in * max_in;

    // Checkpoints written by the forward (ckpt_ready: [n_ckpt, 4, batch * n_out], column tid) or by pass 1 here
    // ([n_ckpt, 4, n_group], column local).
    const long long columns = ckpt_ready ? batch * n_out : n_group;
    const long long column = ckpt_ready ? tid : local;

    // Pass 1: forward over the points, checkpoint before every chunk.
    double V = 0.0, I = 0.0, tau = 0.0;
    long long m = 0;  // spikes passed so far; the next input is k = p - m
    for (long long p = 0; p < (ckpt_ready ? 0 : n_points); ++p) {
        if (p % SPIKESCAN_BWD_CHUNK == 0) {
            const long long c = p / SPIKESCAN_BWD_CHUNK;
            checkpoints[(c * 4 + 0) * columns + column] = V;
            checkpoints[(c * 4 + 1) * columns + column] = I;
            checkpoints[(c * 4 + 2) * columns + column] = tau;
            checkpoints[(c * 4 + 3) * columns + column] = (double)m;
        }
        const long long k = p - m;
        if (m < n_rec && se[m] == k) {
            const double t = st[m];
            const auto d = Neuron::decay(t - tau, tau_mem, tau_syn);
            const auto r = Neuron::reset(threshold, d.b * I);
            V = r.V;
            I = r.I;
            tau = t;
            ++m;
        } else {
            const double t = q.time(k);
            const auto d = Neuron::decay(t - tau, tau_mem, tau_syn);
            const double V_new = d.a * V + d.c * I;
            I = Neuron::input_jump(d.b * I, spikescan_event_weight(weights, q.index(k), max_in, n_out, i));
            V = V_new;
            tau = t;
        }
    }

    // Pass 2: chunks last to first; inside a chunk, recompute then reverse.
    double prev_V[SPIKESCAN_BWD_CHUNK], prev_I[SPIKESCAN_BWD_CHUNK], prev_t[SPIKESCAN_BWD_CHUNK];
    long long code[SPIKESCAN_BWD_CHUNK];  // >= 0: input k; < 0: spike -(m + 1)
    double lV = 0.0, lI = 0.0, lT = 0.0, g_threshold = 0.0, g_tau_mem = 0.0, g_tau_syn = 0.0;
    double n_grazing = 0.0, t_grazing = 0.0;
    const long long n_chunks = (n_points + SPIKESCAN_BWD_CHUNK - 1) / SPIKESCAN_BWD_CHUNK;
    for (long long c = n_chunks - 1; c >= 0; --c) {
        V = checkpoints[(c * 4 + 0) * columns + column];
        I = checkpoints[(c * 4 + 1) * columns + column];
        tau = checkpoints[(c * 4 + 2) * columns + column];
        m = (long long)checkpoints[(c * 4 + 3) * columns + column];
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
                const auto d = Neuron::decay(t - tau, tau_mem, tau_syn);
                const auto r = Neuron::reset(threshold, d.b * I);
                V = r.V;
                I = r.I;
                tau = t;
                ++m;
            } else {
                code[slot] = k;
                const double t = q.time(k);
                const auto d = Neuron::decay(t - tau, tau_mem, tau_syn);
                const double V_new = d.a * V + d.c * I;
                I = Neuron::input_jump(d.b * I, spikescan_event_weight(weights, q.index(k), max_in, n_out, i));
                V = V_new;
                tau = t;
            }
        }
        for (long long p = p1 - 1; p >= p0; --p) {
            const int slot = (int)(p - p0);
            const double Ip = prev_I[slot];
            if (code[slot] >= 0) {
                const long long k = code[slot];
                const double s_gap = q.time(k) - prev_t[slot];
                const auto d = Neuron::decay(s_gap, tau_mem, tau_syn);
                // Time constants (DESIGN.md section 11): the state after the input moves with the gap map.
                if (has_tau_grads) {
                    const auto pg = Neuron::decay_param_grads(s_gap, tau_mem, tau_syn, d);
                    g_tau_mem += lV * (pg.a_tm * prev_V[slot] + pg.c_tm * Ip);
                    g_tau_syn += lV * (pg.c_ts * Ip) + lI * (pg.b_ts * Ip);
                }
                const double I_pre = d.b * Ip;
                const double V_post = d.a * prev_V[slot] + d.c * Ip;
                const double u = Neuron::voltage_rate(V_post, I_pre, tau_mem);
                const double v = Neuron::current_rate(I_pre, tau_syn);
                const double gs = u * lV + v * lI;
                const long long flat = q.index(k);
                const long long j = flat / max_in;
                atomicAdd(grad_weights + j * n_out + i, lI);
                const double g_arrival = gs + lT;
                if (has_input_grad) atomicAdd(grad_input_times + in_base + flat, g_arrival);
                if (has_delays) atomicAdd(grad_delays + j * n_out + i, g_arrival);
                const double lV_old = lV;
                lV = d.a * lV_old;
                lI = d.c * lV_old + d.b * lI;
                lT = -gs;
            } else {
                const long long ms = -code[slot] - 1;
                const double s_gap = st[ms] - prev_t[slot];
                const auto d = Neuron::decay(s_gap, tau_mem, tau_syn);
                typename Neuron::param_grads_t pg = {0.0, 0.0, 0.0, 0.0};
                if (has_tau_grads) pg = Neuron::decay_param_grads(s_gap, tau_mem, tau_syn, d);
                const double I_pre = d.b * Ip;
                const double D = Neuron::crossing_slope(I_pre, threshold, tau_mem);
                const double v = Neuron::current_rate(I_pre, tau_syn);
                const double lTt = lT + (double)gt[ms];
                g_tau_syn += lI * (pg.b_ts * Ip);  // the current after the reset, b I
                if (D <= 0.0) {  // grazing spike: IFT term dropped (spikes are visited last to first)
                    lV = 0.0;
                    lI = d.b * lI;
                    n_grazing += 1.0;
                    t_grazing = st[ms];
                } else {
                    const double gs = lTt + v * lI;
                    g_threshold += gs / D;
                    // The spike time moves with the time constants: ds/dtheta = -(dV/dtheta) / D.
                    const double ift = Neuron::spike_adjoint(gs, D);
                    g_tau_mem += ift * (pg.a_tm * prev_V[slot] + pg.c_tm * Ip);
                    g_tau_syn += ift * (pg.c_ts * Ip);
                    // Neuron::spike_adjoint carried back through the gap's decay.
                    lV = (-d.a / D) * gs;
                    lI = d.b * lI + (-d.c / D) * gs;
                }
                lT = lTt;
            }
        }
    }
    atomicAdd(grad_threshold + i, g_threshold);
    spikescan_store_tau_grads(has_tau_grads, grad_tau_mem, grad_tau_syn, i, tid, g_tau_mem, g_tau_syn);
    if (n_grazing > 0.0) {
        grazing[2 * tid] = n_grazing;
        grazing[2 * tid + 1] = t_grazing;
    }
}

// ---------------------------------------------------------------------------------------------------------------
// spikescan_lif_backward_scan<T>: the same adjoint, one warp per (batch, neuron); same arguments and outputs as
// spikescan_lif_backward (checkpoints indexed by warp), blockDim.x a multiple of 32.
//
// The points of a neuron are taken in chunks of 32 (lane l: point p0 + l; lanes past the last point idle).
// - Which points are spikes: spike m is point P_m = se[m] + m (strictly increasing in m).  With m0 = spikes before
//   the chunk (carried), lane l loads P_{m0+l}; the lanes whose P falls in the chunk are a ballot, and an OR
//   butterfly of (1 << (P - p0)) gives the chunk's spike mask, so lane l knows whether it is a spike and
//   m = m0 + (spike lanes below l): exact, no search.  Spikes are sparse: the butterfly runs only for chunks that
//   hold one.
// - State: lane l builds its point's map (V, I) -> ([[a, c], [0, b]] (V, I) + (0, w)) (a spike: V <- 0 is the map
//   [[0, 0], [0, b]]), a Hillis-Steele scan (5 shuffle rounds) composes the prefix maps, applied to the carried
//   state they give the state after every point; the previous lane's is the state before it.
// - Pass 1 walks the chunks forward and stores the checkpoint (V, I, t_prev, m0) before each (same layout as above).
// - Pass 2 walks the chunks last to first, recomputes every lane's previous state from the checkpoint by the prefix
//   scan, and gets the adjoint in closed form, span by span (DESIGN.md section 6).  Between spikes the adjoint has
//   no source term in (lV, lI): an input's reverse step is the transposed gap map, and the transposed gap maps
//   compose to the one of the whole span, so the adjoint after point l is
//     (lV, lI)(l) = (a lV_A, c lV_A + b lI_A),  (a, b, c) = decay(t_A - t_l),   lT(l) = -gs(l + 1)  (lT_A at A),
//   where A is the first "anchor" at or after l: the chunk's last point (adjoint = the carry) or a point just
//   before a spike.  A warp-uniform loop visits the chunk's spikes from the last to the first; each takes the
//   adjoint after it from its anchor by the formula above and applies the spike rule of the header, which gives
//   the adjoint after the anchor before it.  Then every lane evaluates its own adjoint and its contributions in
//   parallel (grad weight, grad arrival time, grad delay), and lane 0's reverse step gives the carry for the chunk
//   before.  The span maps are the products of the sequential kernel's gap maps, rounded once instead of once per
//   gap: results agree to rounding (~1e-15 relative in float64 for well-conditioned neurons).
// Work per point: two decays, the forward prefix scan and a few shuffles; per spike a short warp-uniform step.
// Loads of queue times, indices and weights are coalesced across the warp.  Reductions: grad_threshold is summed
// over the warp before one atomicAdd per neuron; the lanes of a warp hold distinct queue entries, so atomics on
// grad_input_times never collide within a warp (grad_weights and grad_delays can, when one input channel spikes
// twice in a chunk; the hardware serialises those).
// ---------------------------------------------------------------------------------------------------------------

// Lane's point of the chunk starting at p0 (see spikescan_lif_backward_scan).
template <class Neuron>
struct spikescan_chunk_point_t {
    bool active;                 // p0 + lane < n_points
    bool spike;                  // spike m, else queue entry k
    unsigned spikes;             // the chunk's spike lanes (bit l: point p0 + l is a spike), same in every lane
    long long k, m;
    double t;                    // time of the point
    double s;                    // gap from the previous point (active lanes)
    typename Neuron::decay_t d;  // decay over that gap
    spikescan_affine_t f;        // forward map of (V, I) over the gap from the previous point and the point itself
};

// Classifies the warp's points p0 + lane, loads them and builds their forward maps.  m0: recorded spikes before
// p0; t_before: time of point p0 - 1 (0 before the first point).  Returns the number of spikes in the chunk in
// *n_spikes.  Warp-collective: every lane of the warp must call it.
template <class Neuron>
__device__ __forceinline__ spikescan_chunk_point_t<Neuron> spikescan_chunk_point(
    int lane, long long p0, long long n_points, long long m0, long long n_rec, const long long* __restrict__ se,
    const double* __restrict__ st, const spikescan_queue_t& q,
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
    spikescan_chunk_point_t<Neuron> pt;
    const long long p = p0 + lane;
    pt.active = p < n_points;
    pt.spikes = positions;
    pt.spike = (positions >> lane) & 1u;
    pt.m = m0 + __popc(positions & ((1u << lane) - 1u));
    pt.k = p - pt.m;
    double w = 0.0;
    pt.t = 0.0;
    if (pt.active) {
        if (pt.spike) {
            pt.t = st[pt.m];
        } else {
            pt.t = q.time(pt.k);
            w = spikescan_event_weight(weights, q.index(pt.k), max_in, n_out, i);
        }
    }
    const double t_up = __shfl_up_sync(SPIKESCAN_FULL_MASK, pt.t, 1);
    const double t_prev = (lane == 0) ? t_before : t_up;
    pt.s = 0.0;
    if (pt.active) {
        pt.s = pt.t - t_prev;
        pt.d = Neuron::decay(pt.s, tau_mem, tau_syn);
        pt.f.a = pt.spike ? 0.0 : pt.d.a;
        pt.f.c = pt.spike ? 0.0 : pt.d.c;
        pt.f.b = pt.d.b;
        pt.f.eV = 0.0;
        pt.f.eI = w;  // a spike: Neuron::reset (zeroed V row), an input: Neuron::input_jump (offset w)
    } else {
        pt.d.a = 1.0; pt.d.b = 1.0; pt.d.c = 0.0;
        pt.f.a = 1.0; pt.f.c = 0.0; pt.f.b = 1.0; pt.f.eV = 0.0; pt.f.eI = 0.0;
    }
    return pt;
}

template <typename T, class Neuron>
__global__ void spikescan_lif_backward_scan(SPIKESCAN_LIF_BACKWARD_PARAMS) {
    // Warp = neuron; exits below are warp-uniform.
    const long long local = ((long long)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    const int lane = threadIdx.x & 31;
    if (local >= n_group) return;
    const long long tid = neuron_start + local;
    const auto [b, i, q, tau_mem, tau_syn, threshold, st, se, gt, n_rec] = spikescan_lif_backward_neuron(
        tid, queue_times, queue_index, queue_end, queue_perm, delays_t, permuted, tau_mem_arr, tau_syn_arr,
        threshold_arr, n_in, n_out, n_queues, L1, max_in, max_spikes, spike_times, spike_event, counts, grad_times);
    if (n_rec == 0) return;
    const long long n_points = se[n_rec - 1] + n_rec;
    const long long n_chunks = (n_points + 31) / 32;
    const long long in_base = b * n_in * max_in;

    // Checkpoints from the forward (ckpt_ready) or from pass 1, as in spikescan_lif_backward.
    const long long columns = ckpt_ready ? batch * n_out : n_group;
    const long long column = ckpt_ready ? tid : local;

    // Pass 1: chunks forward, checkpoint (V, I, t_prev, m0) before each.
    double V = 0.0, I = 0.0, tau = 0.0;
    long long m0 = 0;
    for (long long c = 0; c < (ckpt_ready ? 0 : n_chunks); ++c) {
        if (lane < 4) {
            const double value = (lane == 0) ? V : (lane == 1) ? I : (lane == 2) ? tau : (double)m0;
            checkpoints[(c * 4 + lane) * columns + column] = value;
        }
        const long long p0 = c * 32;
        int n_spikes;
        const auto pt = spikescan_chunk_point<Neuron>(lane, p0, n_points, m0, n_rec, se, st, q, weights, max_in,
                                                      n_out, i, tau, tau_mem, tau_syn, &n_spikes);
        const spikescan_affine_t f = spikescan_warp_prefix(pt.f, lane);
        const double V_after = f.a * V + f.c * I + f.eV;
        const double I_after = f.b * I + f.eI;
        const int last = (n_points - p0 < 32) ? (int)(n_points - p0) - 1 : 31;
        V = __shfl_sync(SPIKESCAN_FULL_MASK, V_after, last);
        I = __shfl_sync(SPIKESCAN_FULL_MASK, I_after, last);
        tau = __shfl_sync(SPIKESCAN_FULL_MASK, pt.t, last);
        m0 += n_spikes;
    }
#ifdef __CUDACC__
    // Lanes 0-3 stored pass 1's checkpoints, every lane loads them below: a warp barrier with memory ordering (the
    // shuffles in between order no memory; cf. spikescan_closed_warp_sync). The host emulation needs none.
    __syncwarp();
#endif

    // Pass 2: chunks last to first (carry: the adjoint after the chunk's last point).
    double lV = 0.0, lI = 0.0, lT = 0.0, g_threshold = 0.0, g_tau_mem = 0.0, g_tau_syn = 0.0;  // per lane
    double n_grazing = 0.0, t_grazing = 0.0;  // warp-uniform (the spike loop below is)
    for (long long c = n_chunks - 1; c >= 0; --c) {
        V = checkpoints[(c * 4 + 0) * columns + column];
        I = checkpoints[(c * 4 + 1) * columns + column];
        tau = checkpoints[(c * 4 + 2) * columns + column];
        m0 = (long long)checkpoints[(c * 4 + 3) * columns + column];
        const long long p0 = c * 32;
        int n_spikes;
        const auto pt = spikescan_chunk_point<Neuron>(lane, p0, n_points, m0, n_rec, se, st, q, weights, max_in,
                                                      n_out, i, tau, tau_mem, tau_syn, &n_spikes);
        // State before this lane's point: the previous lane's state after, or the checkpoint.
        const spikescan_affine_t f = spikescan_warp_prefix(pt.f, lane);
        const double V_up = __shfl_up_sync(SPIKESCAN_FULL_MASK, f.a * V + f.c * I + f.eV, 1);
        const double I_up = __shfl_up_sync(SPIKESCAN_FULL_MASK, f.b * I + f.eI, 1);
        const double Vp = (lane == 0) ? V : V_up;
        const double Ip = (lane == 0) ? I : I_up;
        // This lane's reverse-step coefficients (see the header): u, v for inputs; v, D, g for spikes.
        double u = 0.0, v = 0.0, D = 1.0, g = 0.0;
        if (pt.active) {
            const double I_pre = pt.d.b * Ip;
            v = Neuron::current_rate(I_pre, tau_syn);
            if (pt.spike) {
                D = Neuron::crossing_slope(I_pre, threshold, tau_mem);
                g = (double)gt[pt.m];
            } else {
                const double V_post = pt.d.a * Vp + pt.d.c * Ip;
                u = Neuron::voltage_rate(V_post, I_pre, tau_mem);
            }
        }
        const int last = (n_points - p0 < 32) ? (int)(n_points - p0) - 1 : 31;
        // Anchors: the last point, and every point just before a spike.  Anchor lanes hold the adjoint after their
        // point in (aV, aI, aT); the last lane's is the carry.  (cV, cI, cT): the adjoint after point p0 - 1 when
        // lane 0 is a spike.
        const unsigned anchors = (pt.spikes >> 1) | (1u << last);
        double aV = lV, aI = lI, aT = lT;
        double cV = 0.0, cI = 0.0, cT = 0.0;
        for (unsigned todo = pt.spikes; todo != 0u;) {  // warp-uniform: the chunk's spikes, last to first
            const int q = 31 - __clz(todo);
            todo &= ~(1u << q);
            const int A = __ffs(anchors & (SPIKESCAN_FULL_MASK << q)) - 1;
            const int q1 = (q < 31) ? q + 1 : q;
            const double tA = __shfl_sync(SPIKESCAN_FULL_MASK, pt.t, A);
            const double AV = __shfl_sync(SPIKESCAN_FULL_MASK, aV, A);
            const double AI = __shfl_sync(SPIKESCAN_FULL_MASK, aI, A);
            const double AT = __shfl_sync(SPIKESCAN_FULL_MASK, aT, A);
            const double tq = __shfl_sync(SPIKESCAN_FULL_MASK, pt.t, q);
            const double t1 = __shfl_sync(SPIKESCAN_FULL_MASK, pt.t, q1);
            const double u1 = __shfl_sync(SPIKESCAN_FULL_MASK, u, q1);
            const double v1 = __shfl_sync(SPIKESCAN_FULL_MASK, v, q1);
            const double vq = __shfl_sync(SPIKESCAN_FULL_MASK, v, q);
            const double Dq = __shfl_sync(SPIKESCAN_FULL_MASK, D, q);
            const double gq = __shfl_sync(SPIKESCAN_FULL_MASK, g, q);
            const double da = __shfl_sync(SPIKESCAN_FULL_MASK, pt.d.a, q);
            const double db = __shfl_sync(SPIKESCAN_FULL_MASK, pt.d.b, q);
            const double dc = __shfl_sync(SPIKESCAN_FULL_MASK, pt.d.c, q);
            // Adjoint after the spike, from its anchor (q itself when q + 1 is a spike or q is the last point); the
            // spike rule does not read its lV.
            const auto e = Neuron::decay(tA - tq, tau_mem, tau_syn);
            const double sI = e.c * AV + e.b * AI;
            double sT = AT;
            if (q != A) {  // point q + 1 is an input of the same span
                const auto e1 = Neuron::decay(tA - t1, tau_mem, tau_syn);
                sT = -(u1 * (e1.a * AV) + v1 * (e1.c * AV + e1.b * AI));
            }
            const double lTt = sT + gq;
            const double gs = lTt + vq * sI;
            // A grazing spike (Dq <= 0) drops its IFT term: every 1/Dq factor (see spikescan_lif_backward).
            const bool grazing_q = Dq <= 0.0;
            if (grazing_q) {
                n_grazing += 1.0;
                t_grazing = tq;  // spikes are visited last to first: the earliest stays
            } else if (lane == q) {
                g_threshold += gs / Dq;
            }
            if (has_tau_grads && lane == q) {  // time constants: lane q holds the state before its spike and gap
                const auto pg = Neuron::decay_param_grads(pt.s, tau_mem, tau_syn, pt.d);
                g_tau_syn += sI * (pg.b_ts * Ip);
                if (!grazing_q) {
                    const double ift = Neuron::spike_adjoint(gs, Dq);
                    g_tau_mem += ift * (pg.a_tm * Vp + pg.c_tm * Ip);
                    g_tau_syn += ift * (pg.c_ts * Ip);
                }
            }
            const double nV = grazing_q ? 0.0 : (-da / Dq) * gs;  // Neuron::spike_adjoint back through the decay
            const double nI = grazing_q ? db * sI : db * sI + (-dc / Dq) * gs;
            if (q == 0) {
                cV = nV; cI = nI; cT = lTt;
            } else if (lane == q - 1) {
                aV = nV; aI = nI; aT = lTt;
            }
        }
        // Every lane's adjoint after its point, from its anchor; then its contributions.
        const int A = pt.active ? __ffs(anchors & (SPIKESCAN_FULL_MASK << lane)) - 1 : lane;
        const double tA = __shfl_sync(SPIKESCAN_FULL_MASK, pt.t, A);
        const double AV = __shfl_sync(SPIKESCAN_FULL_MASK, aV, A);
        const double AI = __shfl_sync(SPIKESCAN_FULL_MASK, aI, A);
        const double AT = __shfl_sync(SPIKESCAN_FULL_MASK, aT, A);
        double mV = 0.0, mI = 0.0, gs = 0.0;
        if (pt.active && !pt.spike) {
            const auto e = Neuron::decay(tA - pt.t, tau_mem, tau_syn);
            mV = e.a * AV;
            mI = e.c * AV + e.b * AI;
            gs = u * mV + v * mI;
        }
        const double gs_next = __shfl_sync(SPIKESCAN_FULL_MASK, gs, (lane < 31) ? lane + 1 : lane);
        if (pt.active && !pt.spike) {
            if (has_tau_grads) {
                const auto pg = Neuron::decay_param_grads(pt.s, tau_mem, tau_syn, pt.d);
                g_tau_mem += mV * (pg.a_tm * Vp + pg.c_tm * Ip);
                g_tau_syn += mV * (pg.c_ts * Ip) + mI * (pg.b_ts * Ip);
            }
            const double mT = (lane == A) ? AT : -gs_next;
            const long long flat = q.index(pt.k);
            const long long j = flat / max_in;
            atomicAdd(grad_weights + j * n_out + i, mI);
            const double g_arrival = gs + mT;
            if (has_input_grad) atomicAdd(grad_input_times + in_base + flat, g_arrival);
            if (has_delays) atomicAdd(grad_delays + j * n_out + i, g_arrival);
        }
        // Carry: the adjoint after point p0 - 1, by lane 0's reverse step (or the spike loop's, lane 0 a spike).
        const double oV = __shfl_sync(SPIKESCAN_FULL_MASK, pt.d.a * mV, 0);
        const double oI = __shfl_sync(SPIKESCAN_FULL_MASK, pt.d.c * mV + pt.d.b * mI, 0);
        const double oT = __shfl_sync(SPIKESCAN_FULL_MASK, -gs, 0);
        const bool spike0 = (pt.spikes & 1u) != 0u;
        lV = spike0 ? cV : oV;
        lI = spike0 ? cI : oI;
        lT = spike0 ? cT : oT;
    }
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) {
        g_threshold += __shfl_sync(SPIKESCAN_FULL_MASK, g_threshold, lane ^ offset);
        g_tau_mem += __shfl_sync(SPIKESCAN_FULL_MASK, g_tau_mem, lane ^ offset);
        g_tau_syn += __shfl_sync(SPIKESCAN_FULL_MASK, g_tau_syn, lane ^ offset);
    }
    if (lane == 0) {
        atomicAdd(grad_threshold + i, g_threshold);
        spikescan_store_tau_grads(has_tau_grads, grad_tau_mem, grad_tau_syn, i, tid, g_tau_mem, g_tau_syn);
        if (n_grazing > 0.0) {
            grazing[2 * tid] = n_grazing;
            grazing[2 * tid + 1] = t_grazing;
        }
    }
}
