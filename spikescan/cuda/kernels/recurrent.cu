// spikescan: the recurrent LIF layer (DESIGN.md section 9) on the GPU: the forward's global event loop and the exact
// backward of spikescan/_recurrent.py ("sequential" forward, ``backward``), whose module docstring states the
// semantics these kernels follow.  float64 state and solves; T is the dtype of the recorded output times and of
// grad_times.  Every kernel is also a template on the neuron model (class Neuron: neurons/lif.cuh's spikescan_lif,
// the twin of spikescan/neurons/lif.py), whose closed forms, gap test and solvers it calls.
//
// spikescan_recurrent_forward<T>: one block per sample, threads over neurons (thread tid owns neurons tid, tid +
//   blockDim, ...; any blockDim up to 512: at 88-92 registers per thread a block of more than 672 threads exceeds the
//   register file, spikescan/cuda/_recurrent.py BLOCK_LIMIT).  Each step every thread finds, for its neurons, the next
//   arrival (next input queue entry or earliest pending recurrent arrival) and the first threshold crossing inside the
//   gap up to it; a block reduction gives the sample's earliest crossing (lowest neuron index at ties) and earliest
//   arrival.  Crossings at a time are committed before arrivals at that time: the crossing neurons, in neuron order,
//   reset (V <- 0, I kept), are recorded (slot < max_spikes), counted, appended to the sample's spike log and schedule
//   R[k, i] at t + Dr[k, i] for every target i with R[k, i] != 0 (the target's owner appends it to the target's pending
//   buffer, so the buffer stays in spike order).  Otherwise every neuron whose next arrival is at the earliest arrival
//   time advances to it and applies the input entries at that time in queue order, then the pending recurrent arrivals
//   at that time in spike order.
//   Pending buffers: pend_cap entries per (sample, neuron) in global memory ([pend_cap, batch * n_out], so that a
//   warp's accesses coalesce).  A full buffer stops the sample and sets overflow[b] = 1: the launcher reruns with a
//   larger buffer, so no arrival is ever dropped.  The log holds log_cap spikes per sample; log_n[b] counts every
//   spike, so the launcher sees (and reruns) a log that was too short.
//   Errors (as spikescan_lif_forward_sequential): a spike at or before the neuron's previous one (unresolvable
//   spike train) writes its time to stuck_times; spike number max_total_spikes + 1 writes its time and current to
//   stuck_times / stuck_current and leaves counts = max_total_spikes + 1.  Either stops the sample.
//   A sample that stops (an error or a full pending buffer) sets abort_all[0] = 1, which every block reads once
//   per step and stops on: the launcher raises or reruns the whole batch anyway, and a recurrent layer that runs
//   away takes about n_out^2 * max_total_spikes neuron updates per sample.  Aborted samples report nothing.
//   A neuron's crossing depends only on its state and its next arrival, so it is recomputed only when one of them
//   changed (an arrival applied, its own spike, or a pending arrival earlier than its next one): with delays an
//   input event changes one neuron.  Scratch (no initialisation needed): state [8, batch * n_out] float64 (V, I,
//   t, last spike, crossing time, its gap offset s, earliest pending arrival, next arrival), istate
//   [3, batch * n_out] int64 (next queue entry, pending count, crossing out of date).
//   Dynamic shared memory: blockDim * sizeof(spikescan_rec_red_t) bytes.
//
// Backward (the adjoint of the event ODE in closed form between events; three kernels):
//   spikescan_recurrent_backward_spikes<T>: one block per sample.  Each thread lists the spikes of its neurons
//     (spike_t [batch, n_out, C], n_spk [batch, n_out]) from the log, then the log is walked last to first: for the
//     spike of neuron k at t, threads over targets i compute i's adjoint just after the arrival t + Dr[k, i] (from
//     i's next spike strictly after it) and the arrival's term R[k, i] (lI / tau_syn - lV / tau_mem); a block sum
//     gives the spike's total time derivative G = grad_times + sum of the terms - lV(t+) I_s / tau_mem, and k's
//     owner stores lamV = -G / D, lamI = lI(t+) (the adjoint just before the spike; [batch, n_out, C]) with
//     D = (I_s - threshold) / tau_mem.  A grazing spike (D <= 0) gets lamV = 0 and is counted in grazing
//     [batch * n_out, 2] (count, earliest time; pre-filled 0 and +inf).  The threshold's gradient is -sum(lamV).
//     With has_spike_grads, spike_grads [batch, n_out, C] (laid out as spike_t) also gets each spike's derivative
//     through everything outside its neuron, G + lV(t+) I_s / tau_mem (_recurrent.backward's spike_grads): the
//     cotangents of the layer unrolled with its own spikes as fixed inputs, for the time constants' gradients.
//     Dynamic shared memory: blockDim doubles.
//   spikescan_recurrent_backward_inputs<T>: one thread per (sample, neuron) over its input queue entries:
//     grad_weights += lI, grad_delays and grad_input_times += w (lI / tau_syn - lV / tau_mem) at each entry.
//     atomicAdd on double, like spikescan_lif_backward: the last bits of these three vary from run to run.
//   spikescan_recurrent_backward_weights<T>: one thread per recurrent synapse (k, i), summing over samples and k's
//     spikes in order: grad_recurrent_weights, grad_recurrent_delays (written, not accumulated; deterministic).
//   Deterministic input gradients (spikescan/cuda/_recurrent.py DETERMINISTIC), instead of
//   spikescan_recurrent_backward_inputs, from a dense float64 input-time table ([batch, stride], column j * max_in
//   + m, +inf padded; the arrival recomputed as t + D[j, i], the queues' IEEE addition):
//     spikescan_recurrent_backward_synapses<T>: one thread per input synapse (j, i), samples and source j's spikes
//       in order (the next-spike pointer moves forward: arrivals of one source ascend): grad_weights, grad_delays.
//     spikescan_recurrent_backward_input_times<T>: one thread per input spike (b, j, m), neurons in order (next
//       spike by binary search): grad_input_times.  No atomics: bitwise reproducible.
// 64-bit offsets throughout.
#include "neurons/lif.cuh"

#ifndef SPIKESCAN_DYNAMIC_SHARED
#define SPIKESCAN_DYNAMIC_SHARED(type, name) extern __shared__ type name[]
#endif

#define SPIKESCAN_REC_FIELDS 8
#define SPIKESCAN_REC_INT_FIELDS 3

// One block-reduction element of the forward: earliest crossing c of neuron k (lexicographic min), earliest
// arrival e, and a stop flag (or).
struct spikescan_rec_red_t {
    double c;
    long long k;
    double e;
    long long stop;
};

struct spikescan_rec_red_op {
    __device__ __forceinline__ spikescan_rec_red_t operator()(const spikescan_rec_red_t& x,
                                                              const spikescan_rec_red_t& y) const {
        spikescan_rec_red_t r;
        const bool take_y = (y.c < x.c) || (y.c == x.c && y.k < x.k);
        r.c = take_y ? y.c : x.c;
        r.k = take_y ? y.k : x.k;
        r.e = fmin(x.e, y.e);
        r.stop = x.stop | y.stop;
        return r;
    }
};

struct spikescan_sum_op {
    __device__ __forceinline__ double operator()(double x, double y) const { return x + y; }
};

// Block-wide reduction for any blockDim: partners at distance 1, 2, 4, ... (a fixed order, so sums are
// reproducible); every thread returns the result.  buf: blockDim elements of shared memory, free again on return.
template <typename R, typename Op>
__device__ __forceinline__ R spikescan_block_reduce(R v, R* buf, Op op) {
    const unsigned t = threadIdx.x;
    const unsigned n = blockDim.x;
    buf[t] = v;
    __syncthreads();
    for (unsigned s = 1; s < n; s <<= 1) {
        if ((t & (2 * s - 1)) == 0 && t + s < n) buf[t] = op(buf[t], buf[t + s]);
        __syncthreads();
    }
    const R r = buf[0];
    __syncthreads();
    return r;
}

// Next arrival of a neuron: its next input queue entry (while p < end) or its earliest pending recurrent arrival.
__device__ __forceinline__ double spikescan_rec_next_arrival(const double* qt, long long p, long long end,
                                                             double pend_min) {
    const double nxt_in = (p < end) ? qt[p] : spikescan_inf();
    return fmin(nxt_in, pend_min);
}

template <typename T, class Neuron>
__global__ void spikescan_recurrent_forward(
    const double* __restrict__ queue_times, const int* __restrict__ queue_index,
    const long long* __restrict__ queue_end, const double* __restrict__ weights,
    const double* __restrict__ tau_mem_arr, const double* __restrict__ tau_syn_arr,
    const double* __restrict__ threshold_arr, const double* __restrict__ rec_weights,
    const double* __restrict__ rec_delays, int has_rec_delays, int solver,
    long long batch, long long n_out, long long n_queues, long long L1, long long max_in, long long max_spikes,
    long long max_total_spikes, long long pend_cap, long long log_cap,
    double* __restrict__ state, long long* __restrict__ istate, double* __restrict__ pend_t,
    double* __restrict__ pend_w, double* __restrict__ spike_times, long long* __restrict__ spike_event,
    T* __restrict__ out_times, long long* __restrict__ counts, double* __restrict__ log_t,
    long long* __restrict__ log_k, double* __restrict__ log_I, long long* __restrict__ log_n,
    double* __restrict__ stuck_times, double* __restrict__ stuck_current, int* __restrict__ overflow,
    int* __restrict__ abort_all) {
    const long long b = blockIdx.x;  // grid = batch: uniform over the block
    if (b >= batch) return;
    const long long nthreads = blockDim.x;
    const long long N = batch * n_out;
    double* sV = state;
    double* sI = state + N;
    double* sT = state + 2 * N;
    double* sLast = state + 3 * N;
    double* sCand = state + 4 * N;
    double* sS = state + 5 * N;
    double* sPendMin = state + 6 * N;
    double* sNxt = state + 7 * N;
    long long* sP = istate;
    long long* sPendN = istate + N;
    long long* sDirty = istate + 2 * N;
    SPIKESCAN_DYNAMIC_SHARED(spikescan_rec_red_t, spikescan_rec_shared);
    const spikescan_rec_red_op red_op;

    for (long long i = threadIdx.x; i < n_out; i += nthreads) {
        const long long nb = b * n_out + i;
        sV[nb] = 0.0;
        sI[nb] = 0.0;
        sT[nb] = 0.0;
        sLast[nb] = -spikescan_inf();
        sPendMin[nb] = spikescan_inf();
        sP[nb] = 0;
        sPendN[nb] = 0;
        sDirty[nb] = 1;
        counts[nb] = 0;
    }
    long long stop = 0;   // this thread saw an error or a full buffer (or-reduced before anything depends on it)
    long long n_log = 0;  // spikes of the sample so far (uniform)
    while (true) {
        // Every neuron's next arrival and first crossing before it.
        spikescan_rec_red_t mine = {spikescan_inf(), n_out, spikescan_inf(), stop};
        if (threadIdx.x == 0 && *(volatile const int*)abort_all != 0) mine.stop = 1;  // another sample stopped
        for (long long i = threadIdx.x; i < n_out; i += nthreads) {
            const long long nb = b * n_out + i;
            double nxt, cand;
            if (!sDirty[nb]) {
                nxt = sNxt[nb];
                cand = sCand[nb];
            } else {
                const auto [bb, ii, qt, qi, end, tau_mem, tau_syn, rec_base] = spikescan_lif_neuron(
                    nb, n_out, n_queues, L1, max_spikes, queue_times, queue_index, queue_end, tau_mem_arr,
                    tau_syn_arr);
                nxt = spikescan_rec_next_arrival(qt, sP[nb], end, sPendMin[nb]);
                const double V = sV[nb], I = sI[nb], t = sT[nb];
                double s_hi = 0.0, s = 0.0;
                cand = spikescan_inf();
                if (Neuron::fires_in_gap(V, I, nxt - t, tau_mem, tau_syn, threshold_arr[i], &s_hi)) {
                    s = Neuron::solve_spike_time(V, I, s_hi, tau_mem, tau_syn, threshold_arr[i], solver);
                    cand = fmin(t + s, nxt);
                }
                sNxt[nb] = nxt;
                sCand[nb] = cand;
                sS[nb] = s;
                sDirty[nb] = 0;
            }
            if (cand < mine.c) {  // owned neurons ascend: the lowest index wins ties
                mine.c = cand;
                mine.k = i;
            }
            mine.e = fmin(mine.e, nxt);
        }
        const spikescan_rec_red_t all = spikescan_block_reduce(mine, spikescan_rec_shared, red_op);
        if (all.stop) {
            if (threadIdx.x == 0) *(volatile int*)abort_all = 1;
            break;
        }
        const double e_spk = all.c;
        const double e_in = all.e;
        if (isfinite(e_spk) && e_spk <= e_in) {
            // Commit the crossings at e_spk in neuron order, one per reduction.
            long long k = all.k;
            while (k < n_out) {
                const long long nk = b * n_out + k;
                if (k % nthreads == (long long)threadIdx.x) {
                    const double t_sp = e_spk;
                    const auto d = Neuron::decay(sS[nk], tau_mem_arr[k], tau_syn_arr[k]);
                    const auto r = Neuron::reset(threshold_arr[k], sI[nk] * d.b);
                    const double I_after = r.I;
                    sV[nk] = r.V;
                    sI[nk] = I_after;
                    sT[nk] = t_sp;
                    sDirty[nk] = 1;
                    const long long count = counts[nk];
                    if (t_sp <= sLast[nk]) {
                        stuck_times[nk] = t_sp;
                        stop = 1;
                    } else if (count >= max_total_spikes) {
                        stuck_times[nk] = t_sp;
                        stuck_current[nk] = I_after;
                        counts[nk] = count + 1;
                        stop = 1;
                    } else {
                        sLast[nk] = t_sp;
                        if (count < max_spikes) {
                            const long long r = nk * max_spikes + count;
                            spike_times[r] = t_sp;
                            spike_event[r] = sP[nk];
                            out_times[r] = (T)t_sp;
                        }
                        counts[nk] = count + 1;
                        if (n_log < log_cap) {
                            log_t[b * log_cap + n_log] = t_sp;
                            log_k[b * log_cap + n_log] = k;
                            log_I[b * log_cap + n_log] = I_after;
                        }
                    }
                }
                ++n_log;
                // Its arrivals, appended by each target's owner (spike order within every buffer).
                spikescan_rec_red_t next = {spikescan_inf(), n_out, spikescan_inf(), 0};
                for (long long i = threadIdx.x; i < n_out; i += nthreads) {
                    const long long ni = b * n_out + i;
                    const double w = rec_weights[k * n_out + i];
                    if (w != 0.0) {
                        const double arrive = e_spk + (has_rec_delays ? rec_delays[k * n_out + i] : 0.0);
                        const long long q = sPendN[ni];
                        if (q >= pend_cap) {
                            overflow[b] = 1;
                            stop = 1;
                        } else {
                            pend_t[q * N + ni] = arrive;
                            pend_w[q * N + ni] = w;
                            sPendN[ni] = q + 1;
                            sPendMin[ni] = fmin(sPendMin[ni], arrive);
                            if (arrive < sNxt[ni]) sDirty[ni] = 1;  // its next arrival moves earlier
                        }
                    }
                    if (i > k && next.k == n_out && sCand[ni] == e_spk) {
                        next.c = e_spk;
                        next.k = i;
                    }
                }
                next.stop = stop;
                const spikescan_rec_red_t nx = spikescan_block_reduce(next, spikescan_rec_shared, red_op);
                if (nx.stop) {
                    stop = 1;
                    break;
                }
                k = nx.k;
            }
            if (stop) {  // uniform: it came from the reduction
                if (threadIdx.x == 0) *(volatile int*)abort_all = 1;
                break;
            }
        } else if (isfinite(e_in)) {
            // Arrivals at e_in: input entries in queue order, then pending recurrent ones in spike order.
            for (long long i = threadIdx.x; i < n_out; i += nthreads) {
                const auto [bb, ii, qt, qi, end, tau_mem, tau_syn, rec_base] = spikescan_lif_neuron(
                    b * n_out + i, n_out, n_queues, L1, max_spikes, queue_times, queue_index, queue_end,
                    tau_mem_arr, tau_syn_arr);
                const long long nb = b * n_out + i;
                long long p = sP[nb];
                const double pend_min = sPendMin[nb];
                if (spikescan_rec_next_arrival(qt, p, end, pend_min) != e_in) continue;
                const auto d = Neuron::decay(e_in - sT[nb], tau_mem, tau_syn);
                const double V_old = sV[nb], I_old = sI[nb];
                double I = d.b * I_old;
                sV[nb] = d.a * V_old + d.c * I_old;
                while (p < end && qt[p] == e_in) {
                    I = Neuron::input_jump(I, spikescan_event_weight(weights, qi[p], max_in, n_out, i));
                    ++p;
                }
                if (pend_min == e_in) {
                    // Apply and remove the entries at e_in, keep the rest in order.
                    const long long n_pend = sPendN[nb];
                    long long kept = 0;
                    double new_min = spikescan_inf();
                    for (long long q = 0; q < n_pend; ++q) {
                        const double pt = pend_t[q * N + nb];
                        const double pw = pend_w[q * N + nb];
                        if (pt == e_in) {
                            I = Neuron::input_jump(I, pw);
                        } else {
                            pend_t[kept * N + nb] = pt;
                            pend_w[kept * N + nb] = pw;
                            new_min = fmin(new_min, pt);
                            ++kept;
                        }
                    }
                    sPendN[nb] = kept;
                    sPendMin[nb] = new_min;
                }
                sI[nb] = I;
                sT[nb] = e_in;
                sP[nb] = p;
                sDirty[nb] = 1;
            }
        } else {
            break;  // nothing left: the sample is done
        }
    }
    if (threadIdx.x == 0) log_n[b] = n_log;
}

// The adjoint (lV, lI) of a neuron just after time t, given the index c of its next spike strictly after t (n: its
// number of spikes): the adjoint before that spike carried back through the transposed gap map; zero after its last
// spike (twin of _recurrent._Adjoint.after).
template <class Neuron>
__device__ __forceinline__ void spikescan_rec_adjoint_after(const double* spike_t, const double* lamV,
                                                            const double* lamI, long long c, long long n, double t,
                                                            double tau_mem, double tau_syn, double* lV,
                                                            double* lI) {
    if (c >= n) {
        *lV = 0.0;
        *lI = 0.0;
        return;
    }
    const auto d = Neuron::decay(spike_t[c] - t, tau_mem, tau_syn);
    const double lV1 = lamV[c], lI1 = lamI[c];
    *lV = d.a * lV1;
    *lI = d.c * lV1 + d.b * lI1;
}

// Index of the first of n ascending spike times strictly after t (n when none).
__device__ __forceinline__ long long spikescan_rec_next_spike(const double* spike_t, long long n, double t) {
    long long lo = 0, hi = n;
    while (lo < hi) {
        const long long mid = (lo + hi) / 2;
        if (spike_t[mid] <= t) lo = mid + 1; else hi = mid;
    }
    return lo;
}

template <typename T, class Neuron>
__global__ void spikescan_recurrent_backward_spikes(
    const double* __restrict__ log_t, const long long* __restrict__ log_k, const double* __restrict__ log_I,
    const long long* __restrict__ log_n, long long log_cap, const double* __restrict__ tau_mem_arr,
    const double* __restrict__ tau_syn_arr, const double* __restrict__ threshold_arr,
    const double* __restrict__ rec_weights, const double* __restrict__ rec_delays, int has_rec_delays,
    long long batch, long long n_out, long long C, long long max_spikes, const T* __restrict__ grad_times,
    long long* __restrict__ n_spk, double* __restrict__ spike_t, double* __restrict__ lamV,
    double* __restrict__ lamI, long long* __restrict__ remaining, double* __restrict__ grazing,
    int has_spike_grads, double* __restrict__ spike_grads) {
    const long long b = blockIdx.x;
    if (b >= batch) return;
    const long long nthreads = blockDim.x;
    const long long tid = threadIdx.x;
    SPIKESCAN_DYNAMIC_SHARED(double, spikescan_rec_sum_shared);
    const spikescan_sum_op sum_op;
    const long long n_log = log_n[b];
    const double* lt = log_t + b * log_cap;
    const long long* lk = log_k + b * log_cap;
    const double* lI = log_I + b * log_cap;

    // Spike lists of this thread's neurons (the log is in time order, so they ascend).
    for (long long i = tid; i < n_out; i += nthreads) n_spk[b * n_out + i] = 0;
    for (long long m = 0; m < n_log; ++m) {
        const long long k = lk[m];
        if (k % nthreads != tid) continue;
        const long long nk = b * n_out + k;
        spike_t[nk * C + n_spk[nk]] = lt[m];
        n_spk[nk] += 1;
    }
    for (long long i = tid; i < n_out; i += nthreads) remaining[b * n_out + i] = n_spk[b * n_out + i];

    // Spikes last to first: everything a spike feeds (arrivals at or after it, later spikes) is done.
    for (long long m = n_log - 1; m >= 0; --m) {
        const long long k = lk[m];
        const double t = lt[m];
        double part = 0.0;
        for (long long i = tid; i < n_out; i += nthreads) {
            const long long ni = b * n_out + i;
            const double tau = t + (has_rec_delays ? rec_delays[k * n_out + i] : 0.0);
            const long long n = n_spk[ni];
            const long long c = spikescan_rec_next_spike(spike_t + ni * C, n, tau);
            double lV, lIa;
            spikescan_rec_adjoint_after<Neuron>(spike_t + ni * C, lamV + ni * C, lamI + ni * C, c, n, tau,
                                                tau_mem_arr[i], tau_syn_arr[i], &lV, &lIa);
            part += Neuron::arrival_time_grad(rec_weights[k * n_out + i], lV, lIa, tau_mem_arr[i], tau_syn_arr[i]);
        }
        const double arrivals = spikescan_block_reduce(part, spikescan_rec_sum_shared, sum_op);
        if (k % nthreads != tid) continue;
        const long long nk = b * n_out + k;
        const long long ck = --remaining[nk];
        const double tau_mem = tau_mem_arr[k];
        double lV_after, lI_after;
        spikescan_rec_adjoint_after<Neuron>(spike_t + nk * C, lamV + nk * C, lamI + nk * C, ck + 1, n_spk[nk], t,
                                            tau_mem, tau_syn_arr[k], &lV_after, &lI_after);
        const double Is = lI[m];
        const double g = (ck < max_spikes) ? (double)grad_times[nk * max_spikes + ck] : 0.0;
        const double G_outside = g + arrivals;
        if (has_spike_grads) spike_grads[nk * C + ck] = G_outside;
        const double G = G_outside + Neuron::reset_time_grad(lV_after, Is, tau_mem);
        const double D = Neuron::crossing_slope(Is, threshold_arr[k], tau_mem);
        if (D <= 0.0) {  // grazing: no derivative of its time; the IFT term is dropped
            grazing[2 * nk] += 1.0;
            grazing[2 * nk + 1] = t;  // walked last to first: the earliest one stays
            lamV[nk * C + ck] = 0.0;
        } else {
            lamV[nk * C + ck] = Neuron::spike_adjoint(G, D);
        }
        lamI[nk * C + ck] = lI_after;
    }
}

template <typename T, class Neuron>
__global__ void spikescan_recurrent_backward_inputs(
    const double* __restrict__ queue_times, const int* __restrict__ queue_index,
    const long long* __restrict__ queue_end, const double* __restrict__ weights,
    const double* __restrict__ tau_mem_arr, const double* __restrict__ tau_syn_arr, long long batch,
    long long n_in, long long n_out, long long n_queues, long long L1, long long max_in, long long C,
    const long long* __restrict__ n_spk, const double* __restrict__ spike_t, const double* __restrict__ lamV,
    const double* __restrict__ lamI, double* __restrict__ grad_weights, int has_input_grad,
    double* __restrict__ grad_input_times, int has_delays, double* __restrict__ grad_delays) {
    const long long tid = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (tid >= batch * n_out) return;
    const auto [b, i, qt, qi, end, tau_mem, tau_syn, rec_base] = spikescan_lif_neuron(
        tid, n_out, n_queues, L1, 1, queue_times, queue_index, queue_end, tau_mem_arr, tau_syn_arr);
    const long long n = n_spk[tid];
    const double* st = spike_t + tid * C;
    const long long in_base = b * n_in * max_in;
    long long c = 0;  // next spike strictly after the entry (entries ascend)
    for (long long e = 0; e < end; ++e) {
        const double tau = qt[e];
        while (c < n && st[c] <= tau) ++c;
        if (c == n) break;  // no later spike: no gradient from here on
        double lV, lI;
        spikescan_rec_adjoint_after<Neuron>(st, lamV + tid * C, lamI + tid * C, c, n, tau, tau_mem, tau_syn, &lV, &lI);
        const long long flat = qi[e];
        const long long j = flat / max_in;
        const double w = weights[j * n_out + i];
        const double g_arrival = Neuron::arrival_time_grad(w, lV, lI, tau_mem, tau_syn);
        atomicAdd(grad_weights + j * n_out + i, lI);
        if (has_delays) atomicAdd(grad_delays + j * n_out + i, g_arrival);
        if (has_input_grad) atomicAdd(grad_input_times + in_base + flat, g_arrival);
    }
}

template <typename T, class Neuron>
__global__ void spikescan_recurrent_backward_weights(
    const double* __restrict__ tau_mem_arr, const double* __restrict__ tau_syn_arr,
    const double* __restrict__ rec_weights, const double* __restrict__ rec_delays, int has_rec_delays,
    long long batch, long long n_out, long long C, const long long* __restrict__ n_spk,
    const double* __restrict__ spike_t, const double* __restrict__ lamV, const double* __restrict__ lamI,
    double* __restrict__ grad_rec_weights, double* __restrict__ grad_rec_delays) {
    const long long tid = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (tid >= n_out * n_out) return;
    const long long k = tid / n_out;
    const long long i = tid - k * n_out;
    const double delay = has_rec_delays ? rec_delays[tid] : 0.0;
    const double w = rec_weights[tid];
    const double tau_mem = tau_mem_arr[i], tau_syn = tau_syn_arr[i];
    double g_w = 0.0, g_d = 0.0;
    for (long long b = 0; b < batch; ++b) {
        const long long nk = b * n_out + k, ni = b * n_out + i;
        const long long n_k = n_spk[nk], n_i = n_spk[ni];
        long long c = 0;  // i's next spike strictly after the arrival (k's spikes ascend)
        for (long long ck = 0; ck < n_k; ++ck) {
            const double tau = spike_t[nk * C + ck] + delay;
            while (c < n_i && spike_t[ni * C + c] <= tau) ++c;
            if (c == n_i) break;
            double lV, lI;
            spikescan_rec_adjoint_after<Neuron>(spike_t + ni * C, lamV + ni * C, lamI + ni * C, c, n_i, tau,
                                                tau_mem, tau_syn, &lV, &lI);
            g_w += lI;
            g_d += Neuron::arrival_time_grad(w, lV, lI, tau_mem, tau_syn);
        }
    }
    grad_rec_weights[tid] = g_w;
    if (has_rec_delays) grad_rec_delays[tid] = g_d;
}

// The leading parameters of the two deterministic input-gradient kernels (the launcher passes the same list to both).
#define SPIKESCAN_REC_SOURCE_PARAMS \
    const double* __restrict__ table, long long stride, const double* __restrict__ weights, \
    const double* __restrict__ delays, int has_delays, const double* __restrict__ tau_mem_arr, \
    const double* __restrict__ tau_syn_arr, long long batch, long long n_in, long long n_out, long long max_in, \
    long long C, const long long* __restrict__ n_spk, const double* __restrict__ spike_t, \
    const double* __restrict__ lamV, const double* __restrict__ lamI

template <typename T, class Neuron>
__global__ void spikescan_recurrent_backward_synapses(SPIKESCAN_REC_SOURCE_PARAMS, double* __restrict__ grad_weights,
                                                      double* __restrict__ grad_delays) {
    const long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;  // j * n_out + i
    if (idx >= n_in * n_out) return;
    const long long j = idx / n_out;
    const long long i = idx - j * n_out;
    const double w = weights[idx];
    const double d = has_delays ? delays[idx] : 0.0;
    const double tau_mem = tau_mem_arr[i], tau_syn = tau_syn_arr[i];
    double gw = 0.0, gd = 0.0;
    for (long long b = 0; b < batch; ++b) {
        const long long ni = b * n_out + i;
        const long long n = n_spk[ni];
        const double* st = spike_t + ni * C;
        const double* row = table + b * stride + j * max_in;
        long long c = 0;  // next spike strictly after the arrival
        for (long long m = 0; m < max_in; ++m) {
            const double t = row[m];
            if (!(t < spikescan_inf())) break;  // +inf padding ends the source's spikes
            const double arrival = has_delays ? t + d : t;
            while (c < n && st[c] <= arrival) ++c;
            if (c == n) break;  // no later spike: no gradient from here on (later arrivals neither)
            double lV, lI;
            spikescan_rec_adjoint_after<Neuron>(st, lamV + ni * C, lamI + ni * C, c, n, arrival, tau_mem, tau_syn,
                                                &lV, &lI);
            gw += lI;
            if (has_delays) gd += Neuron::arrival_time_grad(w, lV, lI, tau_mem, tau_syn);
        }
    }
    grad_weights[idx] = gw;
    if (has_delays) grad_delays[idx] = gd;
}

template <typename T, class Neuron>
__global__ void spikescan_recurrent_backward_input_times(SPIKESCAN_REC_SOURCE_PARAMS,
                                                         double* __restrict__ grad_input_times) {
    const long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;  // b * n_in * max_in + flat
    if (idx >= batch * n_in * max_in) return;
    const auto [b, flat, j] = spikescan_input_spike(idx, n_in, max_in);
    const double t = table[b * stride + flat];
    if (!(t < spikescan_inf())) return;  // padding: its gradient stays zero
    double g = 0.0;
    for (long long i = 0; i < n_out; ++i) {
        const long long ni = b * n_out + i;
        const long long n = n_spk[ni];
        const double* st = spike_t + ni * C;
        const double arrival = has_delays ? t + delays[j * n_out + i] : t;
        const long long c = spikescan_rec_next_spike(st, n, arrival);
        if (c == n) continue;
        double lV, lI;
        spikescan_rec_adjoint_after<Neuron>(st, lamV + ni * C, lamI + ni * C, c, n, arrival, tau_mem_arr[i],
                                            tau_syn_arr[i], &lV, &lI);
        g += Neuron::arrival_time_grad(weights[j * n_out + i], lV, lI, tau_mem_arr[i], tau_syn_arr[i]);
    }
    grad_input_times[idx] = g;
}
