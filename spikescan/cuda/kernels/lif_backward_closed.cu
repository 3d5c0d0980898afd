// spikescan: the feed-forward LIF backward in EventProp closed form (PERF.md section 3, P1c), the CUDA twin of
// spikescan/_closed_backward.py (read its docstring for the derivation; DESIGN.md section 6).
//
// spikescan_lif_backward_closed<T, Neuron>: one warp per (batch, neuron), blockDim.x a multiple of 32; T is the dtype
// of grad_times; Neuron is the model struct (neurons/lif.cuh's spikescan_lif).  It reads the queue of its neuron in
// either format through common.cuh's spikescan_queue_t (materialised queue_times / queue_index rows, or with
// permuted != 0 the sample's shared queue, the neuron's queue_perm row and delays_t, as lif_backward.cu does) and the
// recorded spikes (spike_times, spike_event, counts); n_rec = min(counts, max_spikes) recorded spikes at
// T_0 < ..., spike m found in the gap that ends at queue entry spike_event[m] (se[m]).  Entry k belongs to the span
// of the first recorded spike with se[m] > k (entries se[m-1] <= k < se[m], se[-1] = 0): ties resolve as the forward
// decided.  Entries k >= se[n_rec - 1] move no recorded spike and are skipped.
//
// 1. Currents at the spikes, spikes first to last (warp-uniform loop): lanes stride over the span's entries and
//    sum w_k b(T_m - t_k), a xor butterfly adds the lanes' sums (every lane gets the same bits: fp addition is
//    commutative), and I_m = b(T_m - T_{m-1}) I_{m-1} + that sum (I is unaffected by resets).  Lane 0 stores I_m
//    in the work buffer.
// 2. Adjoint at the spikes, last to first, on lane 0 (O(recorded spikes)): lambda_m^+ is one decay back from spike
//    m + 1's lambda^- (zero after the last recorded spike), gs_m = G_m + carry + Neuron::reset_time_grad(lV_m^+,
//    I_m), D_m = Neuron::crossing_slope(I_m, threshold), lV_m^- = Neuron::spike_adjoint(gs_m, D_m), lI_m^- =
//    lI_m^+, grad threshold += gs_m / D_m.  A grazing spike (D_m <= 0; see lif_backward.cu's header) drops its IFT
//    term (lV_m^- = 0, no threshold term) and passes gs_m on to the point before it: the previous spike when that
//    one shares its gap (carry), else the arrival se[m] - 1 (added to that entry's grad arrival here).  Grazing
//    spikes are counted per neuron with the earliest one's time in grazing[2 tid], grazing[2 tid + 1] exactly as
//    spikescan_lif_backward does (pre-filled 0 and +inf by the launcher, written only when the neuron has one).
//    Lane 0 overwrites the work buffer's slot m with (lV_m^-, lI_m^-).
// 3. Every entry k < se[n_rec - 1], lanes in parallel span by span: the adjoint just after it in closed form from
//    its span's anchor, (lV, lI) = (a lV_m^-, c lV_m^- + b lI_m^-), (a, b, c) = Neuron::decay(T_m - t_k) (exponent
//    <= 0), then grad weight += lI and grad arrival = Neuron::arrival_time_grad(w, lV, lI) into grad_input_times
//    (has_input_grad != 0) and grad_delays (has_delays != 0).
//
// Work: per entry three exponentials in step 1 (b only is used; the compiler drops a and c where it can) and three in
// step 3; per recorded spike a 5-round butterfly and a short sequential step on lane 0.
// Rebased sums (kernels spikescan_lif_backward_closed[_tau]_rebased, spikescan/cuda/_closed.py REBASED; PERF.md P3b
// with P1c): every exponent of steps 1 and
// 3 is -(T_m - t_k)/tau with t_k = t + D[j, i], so e^{-(T_m - t_k)/tau} = E[b, f] F[i, j] e^{-T_m/tau}: rebased_E
// [batch, n_in * max_in, 2] holds (e^{t/tau_mem}, e^{t/tau_syn}) per input slot f, rebased_F [n_out, n_in, 2] the
// same of D (unused without delays), and the last factor is one pair per span (warp-uniform). Step 1 then takes no
// exponential per entry and step 3 only phi's expm1 (Neuron::decay_given; the cross term as decay's). The launcher
// enables it only while (t + D) / min(tau) stays below REBASED_MAX_EXPONENT, so the factors stay finite; a factor's
// relative rounding grows with its exponent (~1e-13 at the limit), far inside the gradients' tolerance. The
// source-major kernels of the deterministic mode keep the exponentials.  Lanes idle on spans
// shorter than 32 entries (a span costs ceil(entries / 32) warp steps): a warp-wide scan of the (b, w) maps over
// chunks of 32 entries would remove that, a later step.
// Memory: `work` [n_group, max_spikes, 2] float64 (allocated by the launcher per call), slot (local, m) holding I_m
// after step 1 and (lV_m^-, lI_m^-) after step 2.
// Reductions (grad_weights [n_in, n_out], grad_input_times [batch, n_in, max_in], grad_delays [n_in, n_out],
// grad_threshold [n_out]; float64, zero-filled by the launcher) use atomicAdd on double (sm_60+) as the other
// backward kernels do: the summation order, and so the last bits, vary from run to run.  With records != 0
// (spikescan/cuda/_closed.py DETERMINISTIC, PERF.md P4) the kernel instead stops after step 2 and leaves per-spike
// records (`work` is then the records buffer, thr_part the per-neuron threshold terms) for the two source-major
// kernels at the end of this file, which sum without atomics.
// Time-constant gradients (kernels spikescan_lif_backward_closed_tau and spikescan_lif_backward_closed_synapses_tau,
// the same bodies compiled with the terms of spikescan/_closed_backward.py): each entry's response (0, w) against
// lambda_m^- through the derivative of its span's map, (lV_m^- dc/dtau_mem w, (lV_m^- dc/dtau_syn + lI_m^-
// db/dtau_syn) w) (Neuron::decay_param_grads at T_m - t_k), and per spike m >= 1 the state (0, I_{m-1}) left by the
// spike that opens its span, the same through the map of T_m - T_{m-1}.  Atomic mode: lanes sum, a butterfly adds
// the lanes, lane 0 adds the spike terms and one atomicAdd per neuron and constant.  Records mode: the spike terms
// go to thr_part's rows 1 and 2, the entries' to the synapse kernel's per-synapse sums.
#include "neurons/lif.cuh"

#ifndef SPIKESCAN_DYNAMIC_SHARED
#define SPIKESCAN_DYNAMIC_SHARED(type, name) extern __shared__ type name[]
#endif

// Step 1 of the rebased kernels: a spike's current within this relative distance of the threshold (of the sum of the
// absolute terms; the factors' rounding is below 1e-13 of it) is recomputed with the exponentials. The twin of
// spikescan/_lif_numba.py NEAR_GRAZING (a test checks that they are equal).
#define SPIKESCAN_NEAR_GRAZING 1e-11

// Orders lane 0's global stores before the other lanes' loads of them (a warp barrier with memory ordering).  The
// host emulation (spikescan/cuda/_hostemu.py, no __CUDACC__) runs lanes in lock step at every warp intrinsic, so a
// shuffle is its barrier.
__device__ __forceinline__ void spikescan_closed_warp_sync() {
#ifdef __CUDACC__
    __syncwarp();
#else
    (void)__shfl_sync(SPIKESCAN_FULL_MASK, 0, 0);
#endif
}

// One queue entry's contributions in closed form (step 3, and the source-major kernels): the adjoint just after an
// arrival s = T_m - t_k before the end T_m of its span, from that spike's (lV_m^-, lI_m^-), and with `arrival`
// its time gradient Neuron::arrival_time_grad (weight w), with `tau` its time-constant terms (see the header).
struct spikescan_closed_entry_t {
    double lI, g_arrival, g_tau_mem, g_tau_syn;
};

// The same with the span's decay d = Neuron::decay(s) given (the rebased step 3 forms it from tables).
template <class Neuron>
__device__ __forceinline__ spikescan_closed_entry_t spikescan_closed_entry_d(double s, typename Neuron::decay_t d,
                                                                             double lVm, double lIm, double w,
                                                                             double tau_mem, double tau_syn,
                                                                             bool arrival, bool tau) {
    const double lV = d.a * lVm;
    const double lI = d.c * lVm + d.b * lIm;
    spikescan_closed_entry_t e = {lI, arrival ? Neuron::arrival_time_grad(w, lV, lI, tau_mem, tau_syn) : 0.0, 0.0,
                                  0.0};
    if (tau) {
        const auto pg = Neuron::decay_param_grads(s, tau_mem, tau_syn, d);
        e.g_tau_mem = lVm * pg.c_tm * w;
        e.g_tau_syn = (lVm * pg.c_ts + lIm * pg.b_ts) * w;
    }
    return e;
}

template <class Neuron>
__device__ __forceinline__ spikescan_closed_entry_t spikescan_closed_entry(double s, double lVm, double lIm, double w,
                                                                           double tau_mem, double tau_syn,
                                                                           bool arrival, bool tau) {
    return spikescan_closed_entry_d<Neuron>(s, Neuron::decay(s, tau_mem, tau_syn), lVm, lIm, w, tau_mem, tau_syn,
                                            arrival, tau);
}

#define SPIKESCAN_CLOSED_NEURON_PARAMS \
    SPIKESCAN_LIF_BACKWARD_NEURON_PARAMS, double* __restrict__ work, \
    double* __restrict__ grad_weights, int has_input_grad, double* __restrict__ grad_input_times, \
    int has_delays, double* __restrict__ grad_delays, double* __restrict__ grad_threshold, \
    double* __restrict__ grazing, int records, double* __restrict__ thr_part, \
    double* __restrict__ grad_tau_mem, double* __restrict__ grad_tau_syn, \
    const double* __restrict__ rebased_E, const double* __restrict__ rebased_F, \
    const int* __restrict__ entry_src, const double* __restrict__ entry_wd, int entry_table, int accum_shared
#define SPIKESCAN_CLOSED_NEURON_ARGS \
    SPIKESCAN_LIF_BACKWARD_NEURON_ARGS, work, grad_weights, has_input_grad, grad_input_times, has_delays, grad_delays, \
    grad_threshold, grazing, records, thr_part, grad_tau_mem, grad_tau_syn, rebased_E, rebased_F, entry_src, \
    entry_wd, entry_table, accum_shared

// The kernel body, compiled once without and once with the time-constant terms (separate kernels, so that the
// common case keeps the smaller register allocation).
// Extras: the opt-in paths (spikescan/cuda/_lif.py ENTRY_TABLE, spikescan/cuda/_closed.py SHARED_ACCUMULATORS),
// compiled only into the *_x kernels, so that the default kernels keep their code and registers.
template <typename T, class Neuron, bool Tau, bool Rebased, bool Extras>
__device__ __forceinline__ void spikescan_closed_neuron(SPIKESCAN_CLOSED_NEURON_PARAMS) {
    // Warp = neuron [neuron_start, neuron_start + n_group) of the flattened batch * n_out; exits are warp-uniform.
    const long long local = ((long long)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    const int lane = threadIdx.x & 31;
    if (local >= n_group) return;
    const long long tid = neuron_start + local;
    const auto [b, i, q0, tau_mem, tau_syn, threshold, st, se, gt, n_rec] = spikescan_lif_backward_neuron(
        tid, queue_times, queue_index, queue_end, queue_perm, delays_t, permuted, tau_mem_arr, tau_syn_arr,
        threshold_arr, n_in, n_out, n_queues, L1, max_in, max_spikes, spike_times, spike_event, counts, grad_times);
    // The entry table (spikescan/cuda/_lif.py ENTRY_TABLE; the launcher passes it for a shared queue and not with
    // the rebased factors): steps 1 and 3 read their entries through q.real_entry.
    const spikescan_queue_t q =
        Extras ? spikescan_with_entry_table(q0, queue_times, entry_src, entry_wd, entry_table) : q0;
    if (records && lane == 0) {
        for (int row = 0; row < 3; ++row) thr_part[row * n_group + local] = 0.0;
    }
    if (n_rec == 0) return;  // no recorded spike: no gradient flows through this neuron
    const long long in_base = b * n_in * max_in;
    // Slot (m, field) of this neuron's per-spike data: the interleaved work buffer [n_group, max_spikes, 2], or with
    // records != 0 the field-major records [SPIKESCAN_CLOSED_FIELDS, max_spikes, n_group] (fields 1 and 2 there).
    const auto slot = [&](long long m, int field) -> double& {
        return records ? work[(((long long)field + 1) * max_spikes + m) * n_group + local]
                       : work[(local * max_spikes + m) * 2 + field];
    };

    // The rebased factors (Rebased; see the header): e^{-(T_m - t_k)/tau} of entry k (flat source f = j * max_in
    // + m', arrival t + D[j, i]) is E[b, f] * F[i, j] * e^{-T_m/tau}.
    const double* __restrict__ E_row = rebased_E + in_base * 2;
    const double* __restrict__ F_row = rebased_F + (has_delays ? i * n_in * 2 : 0);
#define SPIKESCAN_CLOSED_FACTOR(flat, c) \
    (has_delays ? E_row[(flat) * 2 + (c)] * F_row[((flat) / max_in) * 2 + (c)] : E_row[(flat) * 2 + (c)])

    // 1. Currents at the spikes. With the rebased factors, a spike whose current lies within their rounding of the
    // threshold (nearly grazing: the sign of its crossing slope is at stake) has the whole step redone with the
    // exponentials, so that grazing is decided as without them (as _lif_numba.backward_closed, NEAR_GRAZING).
    for (int attempt = 0; attempt < (Rebased ? 2 : 1); ++attempt) {  // warp-uniform
        const bool factors = Rebased && attempt == 0;
        bool near = false;
        double I = 0.0;
        for (long long m = 0; m < n_rec; ++m) {  // warp-uniform
            const long long lo = (m > 0) ? se[m - 1] : 0;
            const long long hi = se[m];
            const double Tm = st[m];
            const double G_syn = factors ? exp(-Tm / tau_syn) : 0.0;
            double J = 0.0, J_abs = 0.0;
            for (long long k = lo + lane; k < hi; k += 32) {
                if (factors) {
                    const long long flat = q.index(k);
                    const double w = spikescan_event_weight(weights, flat, max_in, n_out, i);
                    const double term = w * (SPIKESCAN_CLOSED_FACTOR(flat, 1) * G_syn);
                    J += term;
                    J_abs += fabs(term);
                } else if constexpr (Extras) {
                    const auto e = q.real_entry(k, weights, n_out);
                    J += e.w * Neuron::decay(Tm - e.t, tau_mem, tau_syn).b;
                } else {
                    const double w = spikescan_event_weight(weights, q.index(k), max_in, n_out, i);
                    J += w * Neuron::decay(Tm - q.time(k), tau_mem, tau_syn).b;
                }
            }
#pragma unroll
            for (int offset = 16; offset > 0; offset >>= 1) J += __shfl_sync(SPIKESCAN_FULL_MASK, J, lane ^ offset);
            const double I_prev = I;
            const double b_prev = (m > 0) ? Neuron::decay(Tm - st[m - 1], tau_mem, tau_syn).b : 0.0;
            I = (m > 0) ? b_prev * I + J : J;
            if (lane == 0) slot(m, 0) = I;
            if (factors) {  // warp-uniform: every lane holds the same I after the butterfly
#pragma unroll
                for (int offset = 16; offset > 0; offset >>= 1) {
                    J_abs += __shfl_sync(SPIKESCAN_FULL_MASK, J_abs, lane ^ offset);
                }
                if (fabs(I - threshold) <= SPIKESCAN_NEAR_GRAZING * (J_abs + fabs(b_prev * I_prev))) {
                    near = true;
                    break;
                }
            }
        }
        if (!near) break;
    }

    // 2. Adjoint at the spikes, last to first (lane 0).
    if (lane == 0) {
        double lV_next = 0.0, lI_next = 0.0;  // lambda^- of spike m + 1
        double carry = 0.0;                   // gs of a grazing spike m + 1 that shares spike m's gap
        double g_threshold = 0.0, n_grazing = 0.0, t_grazing = 0.0;
        double g_tau_mem = 0.0, g_tau_syn = 0.0;  // the spikes' terms
        for (long long m = n_rec - 1; m >= 0; --m) {
            double lV_plus = 0.0, lI_plus = 0.0;
            if (m + 1 < n_rec) {
                const auto d = Neuron::decay(st[m + 1] - st[m], tau_mem, tau_syn);
                lV_plus = d.a * lV_next;
                lI_plus = d.c * lV_next + d.b * lI_next;
            }
            const double Im = slot(m, 0);
            const double gs = ((double)gt[m] + carry) + Neuron::reset_time_grad(lV_plus, Im, tau_mem);
            const double D = Neuron::crossing_slope(Im, threshold, tau_mem);
            carry = 0.0;
            double pass = 0.0, pass_flat = -1.0;  // records: what a grazing spike passes to the arrival before it
            double lV_minus;
            if (D <= 0.0) {  // grazing: IFT term dropped; its time moves with the point before it
                lV_minus = 0.0;
                n_grazing += 1.0;
                t_grazing = st[m];  // last to first: the earliest stays
                if (m > 0 && se[m - 1] == se[m]) {
                    carry = gs;
                } else if (se[m] > 0) {  // the arrival before it (there is always one: V = I = 0 until then)
                    const long long k = se[m] - 1;
                    const long long flat = q.index(k);
                    if (records) {
                        pass = gs;
                        pass_flat = (double)flat;
                    } else {
                        if (has_input_grad) atomicAdd(grad_input_times + in_base + flat, gs);
                        if (has_delays) atomicAdd(grad_delays + (flat / max_in) * n_out + i, gs);
                    }
                }
            } else {
                lV_minus = Neuron::spike_adjoint(gs, D);
                g_threshold += gs / D;
            }
            if (Tau && m > 0) {  // the state (0, I_{m-1}) left by spike m - 1, across the gap to spike m
                const double gap = st[m] - st[m - 1];
                const auto pg = Neuron::decay_param_grads(gap, tau_mem, tau_syn,
                                                          Neuron::decay(gap, tau_mem, tau_syn));
                const double I_prev = slot(m - 1, 0);  // not yet overwritten (spikes are visited last to first)
                g_tau_mem += lV_minus * pg.c_tm * I_prev;
                g_tau_syn += (lV_minus * pg.c_ts + lI_plus * pg.b_ts) * I_prev;
            }
            slot(m, 0) = lV_minus;
            slot(m, 1) = lI_plus;
            if (records) {  // the span's end and its key (queue entry se[m], the first entry after the span)
                const long long k = se[m];
                const auto rec = [&](int field) -> double& {
                    return work[((long long)field * max_spikes + m) * n_group + local];
                };
                rec(0) = st[m];
                rec(3) = q.time(k);
                rec(4) = (double)q.index(k);
                rec(5) = pass;
                rec(6) = pass_flat;
            }
            lV_next = lV_minus;
            lI_next = lI_plus;
        }
        if (records) {
            thr_part[local] = g_threshold;
            thr_part[n_group + local] = g_tau_mem;
            thr_part[2 * n_group + local] = g_tau_syn;
        } else {
            atomicAdd(grad_threshold + i, g_threshold);
            if (Tau) {  // the entries' terms follow after step 3
                atomicAdd(grad_tau_mem + i, g_tau_mem);
                atomicAdd(grad_tau_syn + i, g_tau_syn);
            }
        }
        if (n_grazing > 0.0) {
            grazing[2 * tid] = n_grazing;
            grazing[2 * tid + 1] = t_grazing;
        }
    }
    if (records) return;  // the entries are the two source-major kernels' (below)
    spikescan_closed_warp_sync();

    // 3. Every entry before the last recorded spike, span by span.
    // accum_shared (spikescan/cuda/_closed.py SHARED_ACCUMULATORS): the warp sums its neuron's weight (and delay)
    // gradient per source in its own rows of dynamic shared memory (n_in doubles each, zeroed here), and adds each
    // nonzero sum to grad_weights / grad_delays once at the end: n_in global atomics per neuron instead of one per
    // entry. Same terms, summed in another order.
    SPIKESCAN_DYNAMIC_SHARED(double, spikescan_closed_shared);
    double* acc_w = spikescan_closed_shared + (threadIdx.x >> 5) * n_in * (has_delays ? 2 : 1);
    double* acc_d = acc_w + n_in;
    const bool accum = Extras && accum_shared;
    if (accum) {
        for (long long c = lane; c < n_in * (has_delays ? 2 : 1); c += 32) acc_w[c] = 0.0;
        spikescan_closed_warp_sync();
    }
    double e_tau_mem = 0.0, e_tau_syn = 0.0;  // this lane's entries' time-constant terms
    for (long long m = 0; m < n_rec; ++m) {  // warp-uniform
        const long long lo = (m > 0) ? se[m - 1] : 0;
        const long long hi = se[m];
        if (lo >= hi) continue;
        const double Tm = st[m];
        const double lVm = slot(m, 0);
        const double lIm = slot(m, 1);
        const double G_mem = Rebased ? exp(-Tm / tau_mem) : 0.0;
        const double G_syn = Rebased ? exp(-Tm / tau_syn) : 0.0;
        for (long long k = lo + lane; k < hi; k += 32) {
            long long j, flat;
            double w, s;
            if constexpr (Extras) {
                const auto entry = q.real_entry(k, weights, n_out);
                j = entry.j;
                flat = (has_input_grad || Rebased) ? (long long)q.idx[entry.p] : 0;
                w = entry.w;
                s = Tm - entry.t;
            } else {
                flat = q.index(k);
                j = flat / max_in;
                w = weights[j * n_out + i];
                s = Tm - q.time(k);
            }
            const auto d = Rebased ? Neuron::decay_given(s, SPIKESCAN_CLOSED_FACTOR(flat, 0) * G_mem,
                                                         SPIKESCAN_CLOSED_FACTOR(flat, 1) * G_syn,
                                                         tau_mem, tau_syn)
                                   : Neuron::decay(s, tau_mem, tau_syn);
            const auto e = spikescan_closed_entry_d<Neuron>(s, d, lVm, lIm, w, tau_mem, tau_syn,
                                                            has_input_grad || has_delays, Tau);
            if (accum) {
                atomicAdd(acc_w + j, e.lI);
                if (has_delays) atomicAdd(acc_d + j, e.g_arrival);
            } else {
                atomicAdd(grad_weights + j * n_out + i, e.lI);
                if (has_delays) atomicAdd(grad_delays + j * n_out + i, e.g_arrival);
            }
            if (has_input_grad) atomicAdd(grad_input_times + in_base + flat, e.g_arrival);
            e_tau_mem += e.g_tau_mem;
            e_tau_syn += e.g_tau_syn;
        }
    }
    if (accum) {  // warp-uniform
        spikescan_closed_warp_sync();
        for (long long c = lane; c < n_in; c += 32) {
            if (acc_w[c] != 0.0) atomicAdd(grad_weights + c * n_out + i, acc_w[c]);
            if (has_delays && acc_d[c] != 0.0) atomicAdd(grad_delays + c * n_out + i, acc_d[c]);
        }
    }
    if (Tau) {  // warp-uniform
#pragma unroll
        for (int offset = 16; offset > 0; offset >>= 1) {
            e_tau_mem += __shfl_sync(SPIKESCAN_FULL_MASK, e_tau_mem, lane ^ offset);
            e_tau_syn += __shfl_sync(SPIKESCAN_FULL_MASK, e_tau_syn, lane ^ offset);
        }
        if (lane == 0) {
            atomicAdd(grad_tau_mem + i, e_tau_mem);
            atomicAdd(grad_tau_syn + i, e_tau_syn);
        }
    }
#undef SPIKESCAN_CLOSED_FACTOR
}

template <typename T, class Neuron>
__global__ void spikescan_lif_backward_closed(SPIKESCAN_CLOSED_NEURON_PARAMS) {
    spikescan_closed_neuron<T, Neuron, false, false, false>(SPIKESCAN_CLOSED_NEURON_ARGS);
}

template <typename T, class Neuron>
__global__ void spikescan_lif_backward_closed_tau(SPIKESCAN_CLOSED_NEURON_PARAMS) {
    spikescan_closed_neuron<T, Neuron, true, false, false>(SPIKESCAN_CLOSED_NEURON_ARGS);
}

// The same with the rebased factors (separate kernels: the plain ones keep their register allocation).
template <typename T, class Neuron>
__global__ void spikescan_lif_backward_closed_rebased(SPIKESCAN_CLOSED_NEURON_PARAMS) {
    spikescan_closed_neuron<T, Neuron, false, true, false>(SPIKESCAN_CLOSED_NEURON_ARGS);
}

template <typename T, class Neuron>
__global__ void spikescan_lif_backward_closed_tau_rebased(SPIKESCAN_CLOSED_NEURON_PARAMS) {
    spikescan_closed_neuron<T, Neuron, true, true, false>(SPIKESCAN_CLOSED_NEURON_ARGS);
}

// The same with the opt-in paths compiled in (the entry table, the shared accumulators; Extras), with and without
// the time-constant terms (not with the rebased factors: the launcher does not combine them).
template <typename T, class Neuron>
__global__ void spikescan_lif_backward_closed_x(SPIKESCAN_CLOSED_NEURON_PARAMS) {
    spikescan_closed_neuron<T, Neuron, false, false, true>(SPIKESCAN_CLOSED_NEURON_ARGS);
}

template <typename T, class Neuron>
__global__ void spikescan_lif_backward_closed_tau_x(SPIKESCAN_CLOSED_NEURON_PARAMS) {
    spikescan_closed_neuron<T, Neuron, true, false, true>(SPIKESCAN_CLOSED_NEURON_ARGS);
}


// ---------------------------------------------------------------------------------------------------------------
// Deterministic reductions (PERF.md P4): the entries' contributions summed by lanes that own their outputs.
//
// With records != 0, spikescan_lif_backward_closed stops after step 2 and leaves per recorded spike m of neuron
// `local` of the group the field-major records rec[(f * max_spikes + m) * n_group + local]: f = 0 T_m, 1 lV_m^-,
// 2 lI_m^-, 3 and 4 the arrival and flat source of queue entry se[m] (the first entry after the span: +inf and -1
// when the queue ends first), 5 and 6 what a grazing spike m passes to the arrival before it (value, flat source;
// 0 and -1 otherwise), and the neuron's threshold gradient in thr_part[local] (no atomics).  Two kernels then visit
// every input spike from the source side, over the group's samples b0 .. b0 + n_b - 1:
//
// - spikescan_lif_backward_closed_synapses: one thread per synapse (j, i); it walks the samples in order and source
//   j's spikes in order (ascending times), keeps the span pointer s of neuron (b, i) moving forward (arrivals of one
//   source are ascending), and adds grad weight, grad delay and (threads j == 0) the threshold term to running sums
//   loaded from and stored back to the gradient buffers: the summation order is the same whatever the grouping.
// - spikescan_lif_backward_closed_inputs: one thread per input spike (b, j, m); it walks the neurons i in order,
//   finds the span by binary search over the neuron's recorded spikes and stores the sum of the grad arrivals.
//
// An entry lies in span s when its key (arrival, input time, flat source) is below the key of the entry that ends the
// span: the order of the queues (shared queue by (time, source), delayed queues stably by arrival), so ties resolve
// as the forward decided.  Arrivals are recomputed as t + D[j, i], the queues' own IEEE addition.  The input times
// come from `table` [n_b, stride] float64 (column flat, +inf padded; built from the shared queue by the launcher).
// No atomics: gradients are bitwise reproducible from run to run and independent of the launch's grouping.
#define SPIKESCAN_CLOSED_FIELDS 7

// True if the entry (arrival, t, flat) lies before the end of span s of neuron `local` (records as above; `row` is
// the sample's row of the input-time table, for the tie on arrivals).
__device__ __forceinline__ bool spikescan_closed_before(const double* __restrict__ rec, long long max_spikes,
                                                        long long n_group, long long local, long long s,
                                                        const double* __restrict__ row, double arrival, double t,
                                                        long long flat) {
    const double end_arrival = rec[(3 * max_spikes + s) * n_group + local];
    if (arrival != end_arrival) return arrival < end_arrival;
    const long long end_flat = (long long)rec[(4 * max_spikes + s) * n_group + local];
    const double end_t = row[end_flat];  // equal finite arrivals: the span's end is a real entry
    if (t != end_t) return t < end_t;
    return flat < end_flat;
}

// The contributions of entry (arrival, flat) of neuron `local` (span s, weight w): (grad weight, grad arrival
// including what a grazing spike passes to it).
template <class Neuron>
__device__ __forceinline__ spikescan_closed_entry_t spikescan_closed_record_entry(
    const double* __restrict__ rec, long long max_spikes, long long n_group, long long local, long long s,
    double arrival, long long flat, double w, double tau_mem, double tau_syn, bool with_arrival, bool tau) {
    const auto field = [&](int f) { return rec[((long long)f * max_spikes + s) * n_group + local]; };
    auto e = spikescan_closed_entry<Neuron>(field(0) - arrival, field(1), field(2), w, tau_mem, tau_syn, with_arrival,
                                            tau);
    if (with_arrival && (double)flat == field(6)) e.g_arrival += field(5);
    return e;
}

// The leading parameters of the two source-major kernels (the launcher passes the same list to both).
#define SPIKESCAN_CLOSED_SOURCE_PARAMS \
    const double* __restrict__ table, long long stride, const double* __restrict__ weights, \
    const double* __restrict__ delays, int has_delays, const double* __restrict__ tau_mem_arr, \
    const double* __restrict__ tau_syn_arr, long long n_in, long long n_out, long long max_in, long long max_spikes, \
    const long long* __restrict__ counts, long long b0, long long n_b, const double* __restrict__ rec
#define SPIKESCAN_CLOSED_SYNAPSE_PARAMS \
    SPIKESCAN_CLOSED_SOURCE_PARAMS, const double* __restrict__ thr_part, double* __restrict__ grad_weights, \
    double* __restrict__ grad_delays, double* __restrict__ grad_threshold, double* __restrict__ tau_part, \
    double* __restrict__ grad_tau_mem, double* __restrict__ grad_tau_syn
#define SPIKESCAN_CLOSED_SYNAPSE_ARGS \
    table, stride, weights, delays, has_delays, tau_mem_arr, tau_syn_arr, n_in, n_out, max_in, max_spikes, counts, \
    b0, n_b, rec, thr_part, grad_weights, grad_delays, grad_threshold, tau_part, grad_tau_mem, grad_tau_syn

template <typename T, class Neuron, bool Tau>
__device__ __forceinline__ void spikescan_closed_synapse(SPIKESCAN_CLOSED_SYNAPSE_PARAMS) {
    const long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;  // j * n_out + i
    if (idx >= n_in * n_out) return;
    const long long j = idx / n_out;
    const long long i = idx - j * n_out;
    const long long n_group = n_b * n_out;
    const double w = weights[idx];
    const double d = has_delays ? delays[idx] : 0.0;
    const double tau_mem = tau_mem_arr[i], tau_syn = tau_syn_arr[i];
    double gw = grad_weights[idx];
    double gd = has_delays ? grad_delays[idx] : 0.0;
    double gth = j == 0 ? grad_threshold[i] : 0.0;
    // Time constants: this synapse's entries (tau_part [2, n_in, n_out]) and, threads j == 0, the spikes' terms.
    const long long n_syn = n_in * n_out;
    double gtm = Tau ? tau_part[idx] : 0.0, gts = Tau ? tau_part[n_syn + idx] : 0.0;
    double stm = (Tau && j == 0) ? grad_tau_mem[i] : 0.0;
    double sts = (Tau && j == 0) ? grad_tau_syn[i] : 0.0;
    for (long long bl = 0; bl < n_b; ++bl) {
        const long long local = bl * n_out + i;
        if (j == 0) {
            gth += thr_part[local];
            if (Tau) {
                stm += thr_part[n_group + local];
                sts += thr_part[2 * n_group + local];
            }
        }
        const long long count = counts[(b0 + bl) * n_out + i];
        const long long n_rec = count < max_spikes ? count : max_spikes;
        const double* row = table + bl * stride;
        long long s = 0;
        for (long long m = 0; m < max_in && s < n_rec; ++m) {
            const long long flat = j * max_in + m;
            const double t = row[flat];
            if (!(t < spikescan_inf())) break;  // +inf padding ends the source's spikes
            const double arrival = has_delays ? t + d : t;
            while (s < n_rec && !spikescan_closed_before(rec, max_spikes, n_group, local, s, row, arrival, t, flat)) {
                ++s;
            }
            if (s == n_rec) break;  // after the last recorded spike: moves nothing recorded (later spikes neither)
            const auto e = spikescan_closed_record_entry<Neuron>(rec, max_spikes, n_group, local, s, arrival, flat, w,
                                                                 tau_mem, tau_syn, has_delays != 0,
                                                                 Tau);
            gw += e.lI;
            gd += e.g_arrival;
            gtm += e.g_tau_mem;
            gts += e.g_tau_syn;
        }
    }
    grad_weights[idx] = gw;
    if (has_delays) grad_delays[idx] = gd;
    if (j == 0) grad_threshold[i] = gth;
    if (Tau) {
        tau_part[idx] = gtm;
        tau_part[n_syn + idx] = gts;
        if (j == 0) {
            grad_tau_mem[i] = stm;
            grad_tau_syn[i] = sts;
        }
    }}

template <typename T, class Neuron>
__global__ void spikescan_lif_backward_closed_synapses(SPIKESCAN_CLOSED_SYNAPSE_PARAMS) {
    spikescan_closed_synapse<T, Neuron, false>(SPIKESCAN_CLOSED_SYNAPSE_ARGS);
}

template <typename T, class Neuron>
__global__ void spikescan_lif_backward_closed_synapses_tau(SPIKESCAN_CLOSED_SYNAPSE_PARAMS) {
    spikescan_closed_synapse<T, Neuron, true>(SPIKESCAN_CLOSED_SYNAPSE_ARGS);
}

template <typename T, class Neuron>
__global__ void spikescan_lif_backward_closed_inputs(SPIKESCAN_CLOSED_SOURCE_PARAMS,
                                                     double* __restrict__ grad_input_times) {
    const long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;  // bl * n_in * max_in + flat
    if (idx >= n_b * n_in * max_in) return;
    const auto [bl, flat, j] = spikescan_input_spike(idx, n_in, max_in);  // bl: the sample within the group
    const long long n_group = n_b * n_out;
    const double* row = table + bl * stride;
    const double t = row[flat];
    if (!(t < spikescan_inf())) return;  // padding: its gradient stays zero
    double g = 0.0;
    for (long long i = 0; i < n_out; ++i) {
        const long long count = counts[(b0 + bl) * n_out + i];
        const long long n_rec = count < max_spikes ? count : max_spikes;
        if (n_rec == 0) continue;
        const long long local = bl * n_out + i;
        const double arrival = has_delays ? t + delays[j * n_out + i] : t;
        long long lo = 0, hi = n_rec;  // the first span whose end lies after the entry
        while (lo < hi) {
            const long long mid = (lo + hi) >> 1;
            if (spikescan_closed_before(rec, max_spikes, n_group, local, mid, row, arrival, t, flat)) {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        if (lo == n_rec) continue;
        g += spikescan_closed_record_entry<Neuron>(rec, max_spikes, n_group, local, lo, arrival, flat,
                                                   weights[j * n_out + i], tau_mem_arr[i], tau_syn_arr[i], true,
                                                   false)
                 .g_arrival;
    }
    grad_input_times[(b0 + bl) * n_in * max_in + flat] = g;
}
