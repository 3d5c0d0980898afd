// spikescan: readout layer of non-spiking leaky integrators (twin of spikescan/_readout_numpy.py), float64 inside.
//
// V_i(t) = sum_{(t_m, j), t_m < t} W[j, i] c_i(t - t_m): linear in the weights, no threshold, no reset.
//
//   spikescan_li_linear_forward<T>:  readout "final" (V(t_max)) or "integral" (int_0^t_max e^{-g t} V dt), both
//       sum_{j,m} W[j, i] kappa_i(t_jm) over inputs t < t_max.  One thread per (batch, j, i), i fastest (coalesced
//       weights); the thread sums its max_in inputs, then one atomicAdd into values[b, i] (float64 accumulator,
//       zero-filled).  T: dtype of input_times.
//   spikescan_li_linear_backward<T>: same threads; grad_weights[j, i] += g[b, i] sum_m kappa (atomic over batch),
//       grad_input_times[b, j, m] += g[b, i] W[j, i] dkappa/dt (atomic over i).  T: dtype of grad_values.  With
//       tau_grads != 0 also grad_tau_mem[i] += g[b, i] W[j, i] sum_m dkappa/dtau_mem (atomic over batch and j), and
//       the same for tau_syn.
//   spikescan_li_max_forward<T>: one thread per (batch, neuron) walks its time-sorted queue once (common.cuh
//       spikescan_queue_t: the sample's shared queue, Q = 1; with delays a queue per neuron, materialised or in the
//       permutation format, as the LIF kernels read them): per gap (clipped to t_max) the interior peak and the end
//       value are candidates after V(0) = 0, strictly greater wins (ties keep the earliest).  Writes values (T),
//       eval_time t* and kink_index (flat index of the input arriving exactly at t* when the maximum is that
//       input's end-of-gap value, else -1).  Delays serve spikescan.peak_voltage's device path (t_max = inf), and
//       so does neuron_mask (masked != 0): a neuron left out gets value 0, t* = 0 and no kink without a walk.
//   spikescan_li_max_backward<T>: one thread per (batch, j, i) (none of work when g[b, i] = 0, as in the linear
//       backward): envelope theorem at fixed t*:
//       grad_weights[j, i] += g c(t* - a), grad_input_times -= g W (b - c)/tau_mem over arrivals a < t* (a = t, or
//       t + D[j, i] with has_delays, which also sums that term into grad_delays[j, i]), and the partial sums
//       V(t*) = sum W c, I(t*^-) = sum W b into per-(b, i) accumulators.  With tau_grads != 0 also
//       grad_tau_mem[i] += g W sum dc/dtau_mem (t* - a) (the explicit term: t* does not move with the time
//       constants, or moves at V'(t*) = 0), and the same for tau_syn.
//   spikescan_li_max_kink<T>: one thread per (batch, neuron): the input at a kink gets g V'(t*^-) =
//       g (I(t*^-) - V(t*)) / tau_mem (input_grads != 0), and so does its synapse's delay (has_delays).
// Readout codes: 0 = final, 1 = integral.  gamma = 1 / tau_readout (0 for the plain integral).
// Every kernel is also a template on the neuron model (class Neuron: neurons/lif.cuh's spikescan_lif): kappa is
// built from its PSP kernel c and closed forms, and the slopes c'(s) = Neuron::voltage_rate(c, b, tau_mem) (the
// vector field at the unit PSP's state (c(s), b(s))) and V'(t*^-) = Neuron::voltage_rate(V(t*), I(t*^-), tau_mem)
// are its vector field.
#include "neurons/lif.cuh"

#define SPIKESCAN_READOUT_FINAL 0
#define SPIKESCAN_READOUT_INTEGRAL 1

// Kernel kappa of one input at time t < t_max, and d kappa / d t (see _readout_numpy._final_kernel and
// _integral_kernel).
template <class Neuron>
__device__ __forceinline__ void spikescan_li_kernel(double t, double tau_mem, double tau_syn, int readout,
                                                    double t_max, double gamma, double* kappa, double* dkappa) {
    const double u = t_max - t;
    const auto d = Neuron::decay(u, tau_mem, tau_syn);
    if (readout == SPIKESCAN_READOUT_FINAL) {
        *kappa = d.c;
        *dkappa = -Neuron::voltage_rate(d.c, d.b, tau_mem);  // -c'(u), the vector field at the PSP's state (c, b)
        return;
    }
    const double alpha = 1.0 / tau_mem;
    const double k = exp(-gamma * t) * alpha * u * u *
                     Neuron::exp_divided_difference2(-(alpha + gamma) * u, -(1.0 / tau_syn + gamma) * u);
    *kappa = k;
    *dkappa = -exp(-gamma * t_max) * d.c - gamma * k;
}

// d kappa / d tau_mem and d kappa / d tau_syn of one input at time t < t_max (see
// _readout_numpy._linear_kernels and _integral_kernel_param_grads): for "integral", with w1 = -(alpha + gamma) u and
// w2 = -(beta + gamma) u, e^{-gamma t} times -alpha^2 u^2 (exp[0, w1, w2] - alpha u exp[0, w1, w1, w2]) and
// alpha beta^2 u^3 exp[0, w1, w2, w2].
template <class Neuron>
__device__ __forceinline__ void spikescan_li_kernel_param_grads(double t, double tau_mem, double tau_syn, int readout,
                                                                double t_max, double gamma, double* k_tm,
                                                                double* k_ts) {
    const double u = t_max - t;
    if (readout == SPIKESCAN_READOUT_FINAL) {
        const auto pg = Neuron::decay_param_grads(u, tau_mem, tau_syn, Neuron::decay(u, tau_mem, tau_syn));
        *k_tm = pg.c_tm;
        *k_ts = pg.c_ts;
        return;
    }
    const double alpha = 1.0 / tau_mem;
    const double beta = 1.0 / tau_syn;
    const double w1 = -(alpha + gamma) * u;
    const double w2 = -(beta + gamma) * u;
    const double damp = exp(-gamma * t);
    const double dd2 = Neuron::exp_divided_difference2(w1, w2);
    *k_tm = damp * (-alpha * alpha * u * u * (dd2 - alpha * u * Neuron::exp_divided_difference3(w1, w1, w2)));
    *k_ts = damp * (alpha * beta * beta * u * u * u * Neuron::exp_divided_difference3(w1, w2, w2));
}

// Thread tid of a launch over (batch, j, i), i fastest: sample b, input j, readout neuron i, and bj = b * n_in + j,
// the row of input_times.
struct spikescan_li_synapse_t {
    long long b, j, i, bj;
};

__device__ __forceinline__ spikescan_li_synapse_t spikescan_li_synapse(long long tid, long long n_in, long long n_out) {
    const long long bj = tid / n_out;
    return {bj / n_in, bj % n_in, tid % n_out, bj};
}

template <typename T, class Neuron>
__global__ void spikescan_li_linear_forward(
    const T* __restrict__ input_times, const double* __restrict__ weights, const double* __restrict__ tau_mem,
    const double* __restrict__ tau_syn, int readout, double t_max, double gamma, long long batch, long long n_in,
    long long max_in, long long n_out, double* __restrict__ values, int partial) {
    const long long tid = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (tid >= batch * n_in * n_out) return;
    const auto [b, j, i, bj] = spikescan_li_synapse(tid, n_in, n_out);
    const T* t = input_times + bj * max_in;
    double acc = 0.0;
    for (long long m = 0; m < max_in; ++m) {
        const double tm_ = (double)t[m];
        if (!(tm_ < t_max)) break;  // ascending: the rest is later (or +inf padding)
        double kappa, dkappa;
        spikescan_li_kernel<Neuron>(tm_, tau_mem[i], tau_syn[i], readout, t_max, gamma, &kappa, &dkappa);
        acc += kappa;
    }
    if (partial) {
        values[tid] = weights[j * n_out + i] * acc;  // [batch, n_in, n_out], summed over j by the launcher
    } else if (acc != 0.0) {
        atomicAdd(values + b * n_out + i, weights[j * n_out + i] * acc);
    }
}

template <typename T, class Neuron>
__global__ void spikescan_li_linear_backward(
    const double* __restrict__ input_times, const double* __restrict__ weights, const double* __restrict__ tau_mem,
    const double* __restrict__ tau_syn, int readout, double t_max, double gamma, long long batch, long long n_in,
    long long max_in, long long n_out, const T* __restrict__ grad_values, double* __restrict__ grad_weights,
    double* __restrict__ grad_input_times, int tau_grads, double* __restrict__ grad_tau_mem,
    double* __restrict__ grad_tau_syn, int partial) {
    const long long tid = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (tid >= batch * n_in * n_out) return;
    const auto [b, j, i, bj] = spikescan_li_synapse(tid, n_in, n_out);
    const double g = (double)grad_values[b * n_out + i];
    if (g == 0.0) return;  // every term is a multiple of g (the outputs are zero-filled)
    const double gw = g * weights[j * n_out + i];
    const double* t = input_times + bj * max_in;
    double acc = 0.0, acc_tm = 0.0, acc_ts = 0.0;
    for (long long m = 0; m < max_in; ++m) {
        const double tm_ = t[m];
        if (!(tm_ < t_max)) break;
        double kappa, dkappa;
        spikescan_li_kernel<Neuron>(tm_, tau_mem[i], tau_syn[i], readout, t_max, gamma, &kappa, &dkappa);
        acc += kappa;
        if (!partial) atomicAdd(grad_input_times + bj * max_in + m, gw * dkappa);
        if (tau_grads) {
            double k_tm, k_ts;
            spikescan_li_kernel_param_grads<Neuron>(tm_, tau_mem[i], tau_syn[i], readout, t_max, gamma, &k_tm,
                                                    &k_ts);
            acc_tm += k_tm;
            acc_ts += k_ts;
        }
    }
    if (partial) {  // [batch, n_in, n_out] each, summed by the launcher; the input times by spikescan_li_inputs
        grad_weights[tid] = g * acc;
        if (tau_grads) {
            grad_tau_mem[tid] = gw * acc_tm;
            grad_tau_syn[tid] = gw * acc_ts;
        }
        return;
    }
    atomicAdd(grad_weights + j * n_out + i, g * acc);
    if (tau_grads) {
        atomicAdd(grad_tau_mem + i, gw * acc_tm);
        atomicAdd(grad_tau_syn + i, gw * acc_ts);
    }
}

template <typename T, class Neuron>
__global__ void spikescan_li_max_forward(
    const double* __restrict__ queue_times, const int* __restrict__ queue_index, long long n_queues,
    const unsigned short* __restrict__ queue_perm, const double* __restrict__ delays_t, int permuted,
    const double* __restrict__ weights, const double* __restrict__ tau_mem_arr,
    const double* __restrict__ tau_syn_arr, double t_max, long long batch, long long n_in, long long n_out,
    long long L1, long long max_in, T* __restrict__ values, double* __restrict__ eval_time,
    long long* __restrict__ kink_index, const bool* __restrict__ neuron_mask, int masked) {
    const long long tid = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (tid >= batch * n_out) return;
    const long long b = tid / n_out;
    const long long i = tid - b * n_out;
    if (masked && !neuron_mask[i]) {  // a neuron left out: value 0 at t* = 0, as if its voltage never rose
        values[tid] = (T)0.0;
        eval_time[tid] = 0.0;
        kink_index[tid] = -1;
        return;
    }
    const long long qrow = b * n_queues + (n_queues > 1 ? i : 0);
    const spikescan_queue_t q = spikescan_lif_queue(queue_times + qrow * L1, queue_index + qrow * L1, permuted,
                                                    queue_perm, delays_t, tid, i, n_in, L1, max_in);
    const double tau_mem = tau_mem_arr[i];
    const double tau_syn = tau_syn_arr[i];
    double best = 0.0, best_t = 0.0;
    long long best_k = -1;
    double V = 0.0, I = 0.0, t_last = 0.0;
    for (long long k = 0; k < L1; ++k) {
        const double t_k = q.time(k);
        const double end = fmin(t_k, t_max);
        const double gap = end - t_last;
        const long long flat = q.index(k);
        const bool applies = (t_k < t_max) && (flat >= 0);
        const auto d = Neuron::decay(gap, tau_mem, tau_syn);
        const double V0 = V, I0 = I;
        V = d.a * V0 + d.c * I0;
        I = Neuron::input_jump(d.b * I0, applies ? spikescan_event_weight(weights, flat, max_in, n_out, i) : 0.0);
        const double s_peak = Neuron::peak_time(V0, I0, tau_mem, tau_syn);
        if (s_peak < gap) {
            const double v_peak = Neuron::voltage(s_peak, V0, I0, tau_mem, tau_syn);
            if (v_peak > best) {
                best = v_peak;
                best_t = t_last + s_peak;
                best_k = -1;
            }
        }
        if (V > best) {
            best = V;
            best_t = end;
            best_k = applies ? flat : -1;
        }
        t_last = end;
        if (t_k >= t_max) break;  // later gaps have zero length
    }
    values[tid] = (T)best;
    eval_time[tid] = best_t;
    kink_index[tid] = best_k;
}

template <typename T, class Neuron>
__global__ void spikescan_li_max_backward(
    const double* __restrict__ input_times, const double* __restrict__ weights, const double* __restrict__ tau_mem,
    const double* __restrict__ tau_syn, long long batch, long long n_in, long long max_in, long long n_out,
    const double* __restrict__ eval_time, const T* __restrict__ grad_values, double* __restrict__ grad_weights,
    double* __restrict__ grad_input_times, double* __restrict__ v_star, double* __restrict__ i_before, int tau_grads,
    double* __restrict__ grad_tau_mem, double* __restrict__ grad_tau_syn, int partial,
    const double* __restrict__ delays, int has_delays, double* __restrict__ grad_delays) {
    const long long tid = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (tid >= batch * n_in * n_out) return;
    const auto [b, j, i, bj] = spikescan_li_synapse(tid, n_in, n_out);
    const double g = (double)grad_values[b * n_out + i];
    // Every gradient term is a multiple of g (the kink's too) and the outputs are zero-filled: a neuron with a zero
    // cotangent (e.g. left out by peak_voltage's mask) costs nothing.
    if (g == 0.0) return;
    const double w = weights[j * n_out + i];
    const double delay = has_delays ? delays[j * n_out + i] : 0.0;
    const double t_star = eval_time[b * n_out + i];
    const double* t = input_times + bj * max_in;
    double acc_c = 0.0, acc_b = 0.0, acc_tm = 0.0, acc_ts = 0.0, acc_d = 0.0;
    for (long long m = 0; m < max_in; ++m) {
        // The arrival, by the addition of the delayed queues (spikescan/_queue.py delayed_queues); ascending in m.
        const double a = has_delays ? t[m] + delay : t[m];
        // An input arriving at t* itself adds c(0) = 0 and moves t* instead (the kink kernel).
        if (!(a < t_star)) break;
        const auto d = Neuron::decay(t_star - a, tau_mem[i], tau_syn[i]);
        acc_c += d.c;
        acc_b += d.b;
        const double grad_arrival = -Neuron::voltage_rate(d.c, d.b, tau_mem[i]) * g * w;
        acc_d += grad_arrival;
        if (!partial) atomicAdd(grad_input_times + bj * max_in + m, grad_arrival);
        if (tau_grads) {
            const auto pg = Neuron::decay_param_grads(t_star - a, tau_mem[i], tau_syn[i], d);
            acc_tm += pg.c_tm;
            acc_ts += pg.c_ts;
        }
    }
    if (partial) {  // [batch, n_in, n_out] each, summed by the launcher; the input times by spikescan_li_inputs
        grad_weights[tid] = g * acc_c;
        if (tau_grads) {
            grad_tau_mem[tid] = g * w * acc_tm;
            grad_tau_syn[tid] = g * w * acc_ts;
        }
        if (has_delays) grad_delays[tid] = acc_d;
        v_star[tid] = w * acc_c;
        i_before[tid] = w * acc_b;
        return;
    }
    atomicAdd(grad_weights + j * n_out + i, g * acc_c);
    if (has_delays && acc_d != 0.0) atomicAdd(grad_delays + j * n_out + i, acc_d);
    if (tau_grads) {
        atomicAdd(grad_tau_mem + i, g * w * acc_tm);
        atomicAdd(grad_tau_syn + i, g * w * acc_ts);
    }
    atomicAdd(v_star + b * n_out + i, w * acc_c);
    atomicAdd(i_before + b * n_out + i, w * acc_b);
}

template <typename T, class Neuron>
__global__ void spikescan_li_max_kink(
    const double* __restrict__ tau_mem, long long batch, long long n_in, long long max_in, long long n_out,
    const long long* __restrict__ kink_index, const T* __restrict__ grad_values, const double* __restrict__ v_star,
    const double* __restrict__ i_before, double* __restrict__ grad_input_times, int input_grads, int has_delays,
    double* __restrict__ grad_delays, int partial) {
    const long long tid = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (tid >= batch * n_out) return;
    const long long kink = kink_index[tid];
    if (kink < 0) return;
    const long long b = tid / n_out;
    const long long i = tid - b * n_out;
    const double moved = (double)grad_values[tid] * Neuron::voltage_rate(v_star[tid], i_before[tid], tau_mem[i]);
    if (input_grads) atomicAdd(grad_input_times + b * n_in * max_in + kink, moved);
    if (!has_delays) return;
    const long long j = kink / max_in;
    if (partial) {
        // [batch, n_in, n_out] partial sums: this thread alone writes column (b, ., i), so no atomic is needed.
        grad_delays[(b * n_in + j) * n_out + i] += moved;
    } else {
        atomicAdd(grad_delays + j * n_out + i, moved);
    }
}

// Deterministic input-time gradients (spikescan/cuda/_readout.py DETERMINISTIC): one thread per input spike
// (b, j, m) sums its terms over the readout neurons i in order, instead of atomics from the (b, j, i) threads.
// "final" / "integral" (max_mode == 0): g W dkappa/dt for t < t_max.  "max" (max_mode != 0): -g W c'(t* - t) for
// t < t*, then the kink term g V'(t*^-) where kink_index[b, i] is this input (as spikescan_li_max_kink, from the
// summed v_star = V(t*) and i_before = I(t*^-), [batch, n_out]).
template <typename T, class Neuron>
__global__ void spikescan_li_inputs(
    const double* __restrict__ input_times, const double* __restrict__ weights, const double* __restrict__ tau_mem,
    const double* __restrict__ tau_syn, int readout, double t_max, double gamma, long long batch, long long n_in,
    long long max_in, long long n_out, const T* __restrict__ grad_values, int max_mode,
    const double* __restrict__ eval_time, const long long* __restrict__ kink_index,
    const double* __restrict__ v_star, const double* __restrict__ i_before, double* __restrict__ grad_input_times,
    const double* __restrict__ delays, int has_delays) {
    const long long tid = (long long)blockIdx.x * blockDim.x + threadIdx.x;  // (b * n_in + j) * max_in + m
    if (tid >= batch * n_in * max_in) return;
    const auto [b, flat, j] = spikescan_input_spike(tid, n_in, max_in);
    const double t = input_times[tid];
    double acc = 0.0;
    for (long long i = 0; i < n_out; ++i) {
        const double g = (double)grad_values[b * n_out + i];
        const double w = weights[j * n_out + i];
        if (max_mode) {
            const double a = has_delays ? t + delays[j * n_out + i] : t;  // the arrival
            if (a < eval_time[b * n_out + i]) {
                const auto d = Neuron::decay(eval_time[b * n_out + i] - a, tau_mem[i], tau_syn[i]);
                acc += -Neuron::voltage_rate(d.c, d.b, tau_mem[i]) * g * w;
            }
            if (kink_index[b * n_out + i] == flat) {
                acc += g * Neuron::voltage_rate(v_star[b * n_out + i], i_before[b * n_out + i], tau_mem[i]);
            }
        } else if (t < t_max) {
            double kappa, dkappa;
            spikescan_li_kernel<Neuron>(t, tau_mem[i], tau_syn[i], readout, t_max, gamma, &kappa, &dkappa);
            acc += g * w * dkappa;
        }
    }
    grad_input_times[tid] = acc;
}
