// spikescan: the feed-forward LIF backward in EventProp closed form (PERF.md section 3, P1c), the CUDA twin of
// spikescan/_closed_backward.py (read its docstring for the derivation; DESIGN.md section 6).
//
// spikescan_lif_backward_closed<T, Neuron>: one warp per (batch, neuron), blockDim.x a multiple of 32; T is the dtype
// of grad_times; Neuron is the model struct (neurons/lif.cuh's spikescan_lif).  It reads the queue of its neuron in
// either format through common.cuh's spikescan_queue_t (materialised queue_times / queue_index rows, or with
// permuted != 0 the sample's shared queue, the neuron's queue_perm row and delays_t, as lif_backward.cu does) and the
// recorded spikes (spike_times, spike_event, counts); n_rec = min(counts, max_spikes) recorded spikes at T_0 < ... , spike m found in the gap that ends at queue
// entry spike_event[m] (se[m]).  Entry k belongs to the span of the first recorded spike with se[m] > k (entries
// se[m-1] <= k < se[m], se[-1] = 0): ties resolve as the forward decided.  Entries k >= se[n_rec - 1] move no
// recorded spike and are skipped.
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
// step 3; per recorded spike a 5-round butterfly and a short sequential step on lane 0.  Lanes idle on spans
// shorter than 32 entries (a span costs ceil(entries / 32) warp steps): a warp-wide scan of the (b, w) maps over
// chunks of 32 entries would remove that, a later step.
// Memory: `work` [n_group, max_spikes, 2] float64 (allocated by the launcher per call), slot (local, m) holding I_m
// after step 1 and (lV_m^-, lI_m^-) after step 2.
// Reductions (grad_weights [n_in, n_out], grad_input_times [batch, n_in, max_in], grad_delays [n_in, n_out],
// grad_threshold [n_out]; float64, zero-filled by the launcher) use atomicAdd on double (sm_60+) as the other
// backward kernels do: the summation order, and so the last bits, vary from run to run.  Deterministic per-lane
// partial sums (PERF.md P4) are a later step.
// Time-constant gradients are not computed here: the launcher (spikescan/cuda/_closed.py) runs spikescan_lif_backward
// for time_constant_grads=True.
#include "neurons/lif.cuh"

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

template <typename T, class Neuron>
__global__ void spikescan_lif_backward_closed(
    const double* __restrict__ queue_times, const int* __restrict__ queue_index,
    const long long* __restrict__ queue_end, const unsigned short* __restrict__ queue_perm,
    const double* __restrict__ delays_t, int permuted, const double* __restrict__ weights,
    const double* __restrict__ tau_mem_arr, const double* __restrict__ tau_syn_arr,
    const double* __restrict__ threshold_arr,
    long long batch, long long n_in, long long n_out, long long n_queues, long long L1, long long max_in,
    long long max_spikes, long long neuron_start, long long n_group, const double* __restrict__ spike_times,
    const long long* __restrict__ spike_event, const long long* __restrict__ counts,
    const T* __restrict__ grad_times, double* __restrict__ work,
    double* __restrict__ grad_weights, int has_input_grad, double* __restrict__ grad_input_times,
    int has_delays, double* __restrict__ grad_delays, double* __restrict__ grad_threshold,
    double* __restrict__ grazing) {
    // Warp = neuron [neuron_start, neuron_start + n_group) of the flattened batch * n_out; exits are warp-uniform.
    const long long local = ((long long)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    const int lane = threadIdx.x & 31;
    if (local >= n_group) return;
    const long long tid = neuron_start + local;
    const auto [b, i, qt, qi, end, tau_mem, tau_syn, rec_base] = spikescan_lif_neuron(
        tid, n_out, n_queues, L1, max_spikes, queue_times, queue_index, queue_end, tau_mem_arr, tau_syn_arr);
    const spikescan_queue_t q = spikescan_lif_queue(qt, qi, permuted, queue_perm, delays_t, tid, i, n_in, L1, max_in);
    const double threshold = threshold_arr[i];  // per neuron
    const double* st = spike_times + rec_base;
    const long long* se = spike_event + rec_base;
    const T* gt = grad_times + rec_base;
    const long long n_rec = counts[tid] < max_spikes ? counts[tid] : max_spikes;
    if (n_rec == 0) return;  // no recorded spike: no gradient flows through this neuron
    const long long in_base = b * n_in * max_in;
    double* wk = work + local * max_spikes * 2;

    // 1. Currents at the spikes.
    double I = 0.0;
    for (long long m = 0; m < n_rec; ++m) {  // warp-uniform
        const long long lo = (m > 0) ? se[m - 1] : 0;
        const long long hi = se[m];
        const double Tm = st[m];
        double J = 0.0;
        for (long long k = lo + lane; k < hi; k += 32) {
            const double w = spikescan_event_weight(weights, q.index(k), max_in, n_out, i);
            J += w * Neuron::decay(Tm - q.time(k), tau_mem, tau_syn).b;
        }
#pragma unroll
        for (int offset = 16; offset > 0; offset >>= 1) J += __shfl_sync(SPIKESCAN_FULL_MASK, J, lane ^ offset);
        I = (m > 0) ? Neuron::decay(Tm - st[m - 1], tau_mem, tau_syn).b * I + J : J;
        if (lane == 0) wk[2 * m] = I;
    }

    // 2. Adjoint at the spikes, last to first (lane 0).
    if (lane == 0) {
        double lV_next = 0.0, lI_next = 0.0;  // lambda^- of spike m + 1
        double carry = 0.0;                   // gs of a grazing spike m + 1 that shares spike m's gap
        double g_threshold = 0.0, n_grazing = 0.0, t_grazing = 0.0;
        for (long long m = n_rec - 1; m >= 0; --m) {
            double lV_plus = 0.0, lI_plus = 0.0;
            if (m + 1 < n_rec) {
                const auto d = Neuron::decay(st[m + 1] - st[m], tau_mem, tau_syn);
                lV_plus = d.a * lV_next;
                lI_plus = d.c * lV_next + d.b * lI_next;
            }
            const double Im = wk[2 * m];
            const double gs = ((double)gt[m] + carry) + Neuron::reset_time_grad(lV_plus, Im, tau_mem);
            const double D = Neuron::crossing_slope(Im, threshold, tau_mem);
            carry = 0.0;
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
                    if (has_input_grad) atomicAdd(grad_input_times + in_base + flat, gs);
                    if (has_delays) atomicAdd(grad_delays + (flat / max_in) * n_out + i, gs);
                }
            } else {
                lV_minus = Neuron::spike_adjoint(gs, D);
                g_threshold += gs / D;
            }
            wk[2 * m] = lV_minus;
            wk[2 * m + 1] = lI_plus;
            lV_next = lV_minus;
            lI_next = lI_plus;
        }
        atomicAdd(grad_threshold + i, g_threshold);
        if (n_grazing > 0.0) {
            grazing[2 * tid] = n_grazing;
            grazing[2 * tid + 1] = t_grazing;
        }
    }
    spikescan_closed_warp_sync();

    // 3. Every entry before the last recorded spike, span by span.
    for (long long m = 0; m < n_rec; ++m) {  // warp-uniform
        const long long lo = (m > 0) ? se[m - 1] : 0;
        const long long hi = se[m];
        if (lo >= hi) continue;
        const double Tm = st[m];
        const double lVm = wk[2 * m];
        const double lIm = wk[2 * m + 1];
        for (long long k = lo + lane; k < hi; k += 32) {
            const auto d = Neuron::decay(Tm - q.time(k), tau_mem, tau_syn);
            const double lV = d.a * lVm;
            const double lI = d.c * lVm + d.b * lIm;
            const long long flat = q.index(k);
            const long long j = flat / max_in;
            const double w = weights[j * n_out + i];
            atomicAdd(grad_weights + j * n_out + i, lI);
            if (has_input_grad || has_delays) {
                const double g_arrival = Neuron::arrival_time_grad(w, lV, lI, tau_mem, tau_syn);
                if (has_input_grad) atomicAdd(grad_input_times + in_base + flat, g_arrival);
                if (has_delays) atomicAdd(grad_delays + j * n_out + i, g_arrival);
            }
        }
    }
}
