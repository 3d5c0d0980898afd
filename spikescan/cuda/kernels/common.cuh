// spikescan: device helpers shared by the kernels, independent of the neuron model: +inf, the affine maps of the
// two-variable state (V, I) and their warp-wide prefix composition (the scan kernels), the weight of a queue entry,
// and the binding of a layer's (batch, neuron) to its queue, time constants and spike records.
//
// The neuron model's closed forms live in neurons/<model>.cuh (neurons/lif.cuh: struct spikescan_lif); the kernels
// are templates on that struct.
#pragma once

#define SPIKESCAN_FULL_MASK 0xffffffffu

__device__ __forceinline__ double spikescan_inf() { return __longlong_as_double(0x7ff0000000000000LL); }

// One element of the affine scan of the state (V, I) (the scan kernels of lif_forward.cu and lif_backward.cu): the
// map x -> M x + e with M = [[a, c], [0, b]], e = (eV, eI).
struct spikescan_affine_t {
    double a, c, b, eV, eI;
};

// later o earlier = (M2 M1, M2 e1 + e2).
__device__ __forceinline__ spikescan_affine_t spikescan_compose(const spikescan_affine_t& later,
                                                                const spikescan_affine_t& earlier) {
    spikescan_affine_t r;
    r.a = later.a * earlier.a;
    r.c = later.a * earlier.c + later.c * earlier.b;
    r.b = later.b * earlier.b;
    r.eV = later.a * earlier.eV + later.c * earlier.eI + later.eV;
    r.eI = later.b * earlier.eI + later.eI;
    return r;
}

// Inclusive prefix composition of the lanes' maps across a full warp (Hillis-Steele, 5 shuffle rounds): lane l
// gets f_l o ... o f_0.
__device__ __forceinline__ spikescan_affine_t spikescan_warp_prefix(spikescan_affine_t f, int lane) {
#pragma unroll
    for (int offset = 1; offset < 32; offset <<= 1) {
        spikescan_affine_t earlier;
        earlier.a = __shfl_up_sync(SPIKESCAN_FULL_MASK, f.a, offset);
        earlier.c = __shfl_up_sync(SPIKESCAN_FULL_MASK, f.c, offset);
        earlier.b = __shfl_up_sync(SPIKESCAN_FULL_MASK, f.b, offset);
        earlier.eV = __shfl_up_sync(SPIKESCAN_FULL_MASK, f.eV, offset);
        earlier.eI = __shfl_up_sync(SPIKESCAN_FULL_MASK, f.eI, offset);
        if (lane >= offset) f = spikescan_compose(f, earlier);
    }
    return f;
}

// Weight of queue entry `flat` (= j * max_in + m, or -1 for padding) for output neuron i.
__device__ __forceinline__ double spikescan_event_weight(const double* __restrict__ weights, long long flat,
                                                         long long max_in, long long n_out, long long i) {
    if (flat < 0) return 0.0;
    return weights[(flat / max_in) * n_out + i];
}

// Input spike idx of a launch over (sample, source, spike) of input_times [samples, n_in, max_in]: its sample, its
// flat index j * max_in + m within the sample and its source j (the deterministic kernels' thread per input spike).
// Bound with `const auto [b, flat, j] = spikescan_input_spike(idx, n_in, max_in)`.
struct spikescan_input_spike_t {
    long long b, flat, j;
};

__device__ __forceinline__ spikescan_input_spike_t spikescan_input_spike(long long idx, long long n_in,
                                                                         long long max_in) {
    const long long b = idx / (n_in * max_in);
    const long long flat = idx - b * n_in * max_in;
    return {b, flat, flat / max_in};
}

// The (batch, neuron) of a LIF layer with flat index tid = b * n_out + i: its queue (row b * n_queues + i, or b when
// n_queues == 1, of queue_times / queue_index [batch, n_queues, L1]) and its end, its time constants and the base of
// its spike records (tid * max_spikes).  The LIF kernels bind it with
// `const auto [b, i, qt, qi, end, tau_mem, tau_syn, rec_base] = spikescan_lif_neuron(...)`.
struct spikescan_lif_neuron_t {
    long long b, i;
    const double* qt;
    const int* qi;
    long long end;
    double tau_mem, tau_syn;
    long long rec_base;
};

__device__ __forceinline__ spikescan_lif_neuron_t spikescan_lif_neuron(
    long long tid, long long n_out, long long n_queues, long long L1, long long max_spikes,
    const double* __restrict__ queue_times, const int* __restrict__ queue_index,
    const long long* __restrict__ queue_end, const double* __restrict__ tau_mem_arr,
    const double* __restrict__ tau_syn_arr) {
    const long long b = tid / n_out;
    const long long i = tid - b * n_out;
    const long long qrow = b * n_queues + (n_queues > 1 ? i : 0);
    return {b, i, queue_times + qrow * L1, queue_index + qrow * L1, queue_end[qrow], tau_mem_arr[i], tau_syn_arr[i],
            tid * max_spikes};
}

// A (weight, delay) pair of the forward's entry table (spikescan/cuda/_lif.py ENTRY_TABLE): wd[i * n_in + j] =
// (W[j, i], D[j, i]), 16-byte aligned so that one 128-bit load reads both.
struct alignas(16) spikescan_wd_t {
    double w, d;
};

// A LIF neuron's input queue in either of its two formats (spikescan/cuda/_queue.py PERMUTATION), read by entry:
// `time(k)` (arrival), `index(k)` (flat source j * max_in + m, -1 for padding) and `weight(k, ...)` (the entry's
// weight for neuron i, 0 for padding).
// - Materialised (perm == nullptr): t, idx are the neuron's queue row of queue_times / queue_index.
// - Permutation (layers with delays): t, idx are the sample's shared queue (spikescan/_queue.py shared_queue, times
//   ascending, +inf / -1 padded), perm the neuron's row of uint16 positions in it (padding entries point at a
//   padding position) and d the neuron's row of D^T ([n_out, n_in]). Entry k is position p = perm[k]; its arrival
//   is t[p] + d[idx[p] / max_in], the same IEEE double addition as spikescan/_queue.py's delayed_queues and
//   kernels/queue.cu, so the arrivals are bit-identical to the materialised queue's. 2 bytes per entry instead of
//   12. The branch on perm is uniform across a launch.
// - Entry table (table != 0; the forward kernels only, on a sample's shared queue: without delays, or permuted):
//   src is the sample's row of the source table ([batch, L1] int32, j = index / max_in or -1 for padding) and wd
//   the (weight, delay) pairs [n_out, n_in]. An entry reads its source from src instead of dividing its flat index,
//   and its weight (and delay) from the neuron's own row of wd, one 16-byte load, instead of a column of weights
//   [n_in, n_out] (a different cache line for every source). The same doubles, so the same spikes bit for bit.
struct spikescan_queue_t {
    // Rows are addressed from the kernel's arguments on every access rather than held as row pointers: the
    // arguments live in the constant bank, so the permutation format keeps no extra register live across the
    // forward's root solves (the bounded sequential kernel stays at 80 registers without spilling).
    const double* t;
    const int* idx;
    const unsigned short* perm;  // queue_perm [batch * n_out, L1]
    const double* d;             // delays_t [n_out, n_in]
    int permuted;
    long long tid, i, n_in, L1;
    int max_in;
    // Entry table: the source table [batch, L1] and the queue_times argument, whose rows it shares, so that a
    // source is found at src[(t - t_base) + p] from the row pointer t that the queue holds anyway (a row pointer of
    // its own would cost the bounded sequential kernel a spill).
    const int* src = nullptr;
    const double* t_base = nullptr;
    const spikescan_wd_t* wd = nullptr;  // (weight, delay) pairs [n_out, n_in]
    int table = 0;
    __device__ __forceinline__ int source(long long p) const { return src[(t - t_base) + p]; }
    __device__ __forceinline__ long long position(long long k) const {
        return permuted ? (long long)perm[tid * L1 + k] : k;
    }
    __device__ __forceinline__ double time(long long k) const {
        if (!permuted) return t[k];
        const int p = perm[tid * L1 + k];
        if (table) {
            const int j = source(p);
            return j < 0 ? spikescan_inf() : t[p] + wd[i * n_in + j].d;
        }
        const int flat = idx[p];
        return flat < 0 ? spikescan_inf() : t[p] + d[i * n_in + flat / max_in];
    }
    __device__ __forceinline__ int index(long long k) const {
        return idx[position(k)];
    }
    // The weight of entry k for neuron i (weights [n_in, n_out] without the table).
    __device__ __forceinline__ double weight(long long k, const double* __restrict__ weights, long long n_out) const {
        if (table) {
            const int j = source(position(k));
            return j < 0 ? 0.0 : wd[i * n_in + j].w;
        }
        return spikescan_event_weight(weights, index(k), max_in, n_out, i);
    }
    // A real entry k (k < the queue's end): its position p in its row, source j, arrival t and weight w; with the
    // table from the source table and the pair, otherwise as time(k), index(k) / max_in and spikescan_event_weight
    // (the same values). The flat index, where needed, is idx[p].
    struct entry_t {
        long long p;
        long long j;
        double t, w;
    };
    __device__ __forceinline__ entry_t real_entry(long long k, const double* __restrict__ weights,
                                                  long long n_out) const {
        if (!table) {
            const long long flat = index(k);
            return {position(k), flat / max_in, time(k), spikescan_event_weight(weights, flat, max_in, n_out, i)};
        }
        const long long p = position(k);
        const int j = source(p);
        const spikescan_wd_t pair = wd[i * n_in + j];
        return {p, j, permuted ? t[p] + pair.d : t[p], pair.w};
    }
    // Arrival and weight of entry k at once (one read of the pair with the table).
    __device__ __forceinline__ void entry(long long k, const double* __restrict__ weights, long long n_out,
                                          double& time_k, double& weight_k) const {
        if (!table) {
            time_k = time(k);
            weight_k = spikescan_event_weight(weights, index(k), max_in, n_out, i);
            return;
        }
        const long long p = position(k);
        const int j = source(p);
        if (j < 0) {
            time_k = permuted ? spikescan_inf() : t[p];
            weight_k = 0.0;
            return;
        }
        const spikescan_wd_t pair = wd[i * n_in + j];
        time_k = permuted ? t[p] + pair.d : t[p];
        weight_k = pair.w;
    }
};

// The queue of neuron tid = b * n_out + i from spikescan_lif_neuron's (qt, qi): with permuted != 0 the launcher
// passed the shared queue as queue_times / queue_index (n_queues = 1, so qt, qi are sample b's row of it),
// queue_perm [batch * n_out, L1] uint16 and delays_t [n_out, n_in]; otherwise queue_perm and delays_t are unused.
__device__ __forceinline__ spikescan_queue_t spikescan_lif_queue(const double* qt, const int* qi, int permuted,
                                                                 const unsigned short* __restrict__ queue_perm,
                                                                 const double* __restrict__ delays_t,
                                                                 long long tid, long long i, long long n_in,
                                                                 long long L1, long long max_in) {
    return {qt, qi, queue_perm, delays_t, permuted, tid, i, n_in, L1, (int)max_in};
}

// q with the entry table when entry_table != 0 (as spikescan_lif_forward_queue; the closed-form backward).
__device__ __forceinline__ spikescan_queue_t spikescan_with_entry_table(spikescan_queue_t q, const double* queue_times,
                                                                       const int* __restrict__ entry_src,
                                                                       const double* __restrict__ entry_wd,
                                                                       int entry_table) {
    if (entry_table) {
        q.src = entry_src;
        q.t_base = queue_times;
        q.wd = reinterpret_cast<const spikescan_wd_t*>(entry_wd);
        q.table = 1;
    }
    return q;
}

// The forward kernels' queue: spikescan_lif_queue with the entry table when entry_table != 0 (entry_src
// [batch, L1] int32, rows as queue_times' [batch, 1, L1]; entry_wd [n_out, n_in] pairs; the launcher passes it only
// for a shared queue, n_queues == 1).
__device__ __forceinline__ spikescan_queue_t spikescan_lif_forward_queue(
    const double* qt, const int* qi, int permuted, const unsigned short* __restrict__ queue_perm,
    const double* __restrict__ delays_t, long long tid, long long i, long long n_in, long long L1,
    long long max_in, const double* queue_times, const int* __restrict__ entry_src,
    const double* __restrict__ entry_wd, int entry_table) {
    return spikescan_with_entry_table(
        spikescan_lif_queue(qt, qi, permuted, queue_perm, delays_t, tid, i, n_in, L1, max_in), queue_times, entry_src,
        entry_wd, entry_table);
}

// The backward kernels' view of neuron tid = b * n_out + i (lif_backward.cu, lif_backward_closed.cu): its queue in
// either format, time constants, threshold, recorded spikes (times st, queue events se, cotangents gt: rows of
// spike_times / spike_event / grad_times) and n_rec = min(counts, max_spikes).  Bound with
// `const auto [b, i, q, tau_mem, tau_syn, threshold, st, se, gt, n_rec] = spikescan_lif_backward_neuron(...)`.
// The leading parameters of the LIF backward kernels (those spikescan_lif_backward_neuron reads, and the layer's
// sizes, weights and launch group); each kernel appends its own.
#define SPIKESCAN_LIF_BACKWARD_NEURON_PARAMS \
    const double* __restrict__ queue_times, const int* __restrict__ queue_index, \
    const long long* __restrict__ queue_end, const unsigned short* __restrict__ queue_perm, \
    const double* __restrict__ delays_t, int permuted, const double* __restrict__ weights, \
    const double* __restrict__ tau_mem_arr, const double* __restrict__ tau_syn_arr, \
    const double* __restrict__ threshold_arr, \
    long long batch, long long n_in, long long n_out, long long n_queues, long long L1, long long max_in, \
    long long max_spikes, long long neuron_start, long long n_group, const double* __restrict__ spike_times, \
    const long long* __restrict__ spike_event, const long long* __restrict__ counts, \
    const T* __restrict__ grad_times
#define SPIKESCAN_LIF_BACKWARD_NEURON_ARGS \
    queue_times, queue_index, queue_end, queue_perm, delays_t, permuted, weights, tau_mem_arr, tau_syn_arr, \
    threshold_arr, batch, n_in, n_out, n_queues, L1, max_in, max_spikes, neuron_start, n_group, spike_times, \
    spike_event, counts, grad_times

template <typename T>
struct spikescan_lif_backward_neuron_t {
    long long b, i;
    spikescan_queue_t q;
    double tau_mem, tau_syn, threshold;
    const double* st;
    const long long* se;
    const T* gt;
    long long n_rec;
};

template <typename T>
__device__ __forceinline__ spikescan_lif_backward_neuron_t<T> spikescan_lif_backward_neuron(
    long long tid, const double* __restrict__ queue_times, const int* __restrict__ queue_index,
    const long long* __restrict__ queue_end, const unsigned short* __restrict__ queue_perm,
    const double* __restrict__ delays_t, int permuted, const double* __restrict__ tau_mem_arr,
    const double* __restrict__ tau_syn_arr, const double* __restrict__ threshold_arr, long long n_in,
    long long n_out, long long n_queues, long long L1, long long max_in, long long max_spikes,
    const double* __restrict__ spike_times, const long long* __restrict__ spike_event,
    const long long* __restrict__ counts, const T* __restrict__ grad_times) {
    const auto [b, i, qt, qi, end, tau_mem, tau_syn, rec_base] = spikescan_lif_neuron(
        tid, n_out, n_queues, L1, max_spikes, queue_times, queue_index, queue_end, tau_mem_arr, tau_syn_arr);
    (void)end;
    const long long count = counts[tid];
    return {b, i, spikescan_lif_queue(qt, qi, permuted, queue_perm, delays_t, tid, i, n_in, L1, max_in), tau_mem,
            tau_syn, threshold_arr[i], spike_times + rec_base, spike_event + rec_base, grad_times + rec_base,
            count < max_spikes ? count : max_spikes};
}

// Backward checkpoints (lif_backward.cu): the state (V, I, time of the last point, recorded spikes so far) before
// every SPIKESCAN_CKPT_POINTS-th point of a neuron's history, stored [n_ckpt, 4, columns] so that a warp's stores
// coalesce. Written by the backward's own first pass, or by the forward kernels (spikescan/cuda/_lif.py
// FORWARD_CHECKPOINTS), in which case the backward skips that pass.
#define SPIKESCAN_CKPT_POINTS 32

__device__ __forceinline__ void spikescan_store_checkpoint(double* __restrict__ checkpoints, long long n_ckpt,
                                                           long long columns, long long column, long long p,
                                                           long long spikes, double V, double I, double t) {
    const long long c = p / SPIKESCAN_CKPT_POINTS;
    if (p != c * SPIKESCAN_CKPT_POINTS || c >= n_ckpt) return;
    checkpoints[(c * 4 + 0) * columns + column] = V;
    checkpoints[(c * 4 + 1) * columns + column] = I;
    checkpoints[(c * 4 + 2) * columns + column] = t;
    checkpoints[(c * 4 + 3) * columns + column] = (double)spikes;
}
