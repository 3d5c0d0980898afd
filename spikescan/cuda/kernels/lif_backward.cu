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
