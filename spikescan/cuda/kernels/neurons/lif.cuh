// spikescan: the current-based LIF neuron (DESIGN.md sections 1-3), float64: the GPU twin of
// spikescan/neurons/lif.py (its scalar forms), in the same operation order so that both round the same way as far as
// the math library allows.
//
//   tau_mem dV/dt = -V + I,  tau_syn dI/dt = -I;  input w: I <- I + w;  V = threshold: spike, V <- 0 (I kept).
//
// Between events, from state (V0, I0) over a gap s:  I(s) = b I0,  V(s) = a V0 + c I0,
//   a = exp(-s/tau_mem), b = exp(-s/tau_syn), c = r (a - b), r = tau_syn / (tau_mem - tau_syn),
// with c = (s/tau_mem) a expm1(x)/x, x = -s (1/tau_syn - 1/tau_mem), when |x| < 1 (no cancellation, exact at
// tau_mem == tau_syn).  s = +inf gives a = b = c = 0.
//
// The model is the struct spikescan_lif: the kernels of lif_forward.cu, lif_backward.cu, readout.cu and recurrent.cu
// are templates on it (`template <typename T, class Neuron>`, instantiated in spikescan/cuda/_kernels.py), and call
// Neuron::decay, Neuron::fires_in_gap, Neuron::input_jump, Neuron::reset, Neuron::voltage_rate, ... only (where a jump
// is composed into a warp scan's affine maps, a comment names the member it mirrors).  A new neuron model with the
// same two-variable state is one header like this one with a struct of the same members (and its Python twin in
// spikescan/neurons/).
#pragma once

#include "../common.cuh"

#define SPIKESCAN_NEWTON_MAX_ITERS 100
#define SPIKESCAN_BISECTION_MAX_ITERS 1100
#define SPIKESCAN_SOLVER_NEWTON 0
#define SPIKESCAN_SOLVER_BISECTION 1
#define SPIKESCAN_SOLVER_ANALYTIC 2

struct spikescan_lif {
    // Propagator entries of the gap map [[a, c], [0, b]].
    struct decay_t {
        double a, b, c;
    };

    // Derivatives of the gap map at fixed gap: da/dtau_mem, dc/dtau_mem, db/dtau_syn, dc/dtau_syn.
    struct param_grads_t {
        double a_tm, c_tm, b_ts, c_ts;
    };

    // The neuron's state.
    struct state_t {
        double V, I;
    };

    // Event jumps (twins of lif.input_jump_scalar, lif.reset_scalar): the current after an arrival of weight w
    // (V is continuous), and the state after a spike from the state (v, i) at its crossing (v = threshold there):
    // V <- 0, I kept.
    static __device__ __forceinline__ double input_jump(double i, double w) { return i + w; }

    static __device__ __forceinline__ state_t reset(double v, double i) {
        state_t r;
        r.V = 0.0;
        r.I = i;
        return r;
    }

    // The backward at a spike (twins of lif.crossing_slope_scalar, lif.spike_adjoint_scalar): dV/dt at a crossing
    // with current i (V = threshold; <= 0: a grazing spike, whose time has no derivative), and the adjoint of V just
    // before the spike from g, the total derivative of the loss with respect to its time.
    static __device__ __forceinline__ double crossing_slope(double i, double threshold, double tau_mem) {
        return voltage_rate(threshold, i, tau_mem);  // (i - threshold) / tau_mem
    }

    static __device__ __forceinline__ double spike_adjoint(double g, double slope) { return -g / slope; }

    // The backward at any event (twins of lif.voltage_rate_scalar, lif.current_rate_scalar,
    // lif.arrival_time_grad_scalar, lif.reset_time_grad_scalar): the vector field dV/dt = (i - v) / tau_mem,
    // dI/dt = -i / tau_syn; the derivative of the loss with respect to the time of an arrival of weight w from the
    // adjoint (lV, lI) just after it, w (lI / tau_syn - lV / tau_mem) (the vector field jumps by (w / tau_mem,
    // -w / tau_syn)); and with respect to a spike's time through its reset (V restarts from 0 with
    // dV/dt = i / tau_mem), -lV i / tau_mem, computed as ((-lV) i) / tau_mem = -(lV i / tau_mem) exactly.  The
    // readout's slopes are voltage_rate too: c'(s) = voltage_rate(c, b, tau_mem) at the unit PSP's state (c, b).
    static __device__ __forceinline__ double voltage_rate(double v, double i, double tau_mem) {
        return (i - v) / tau_mem;
    }

    static __device__ __forceinline__ double current_rate(double i, double tau_syn) { return -i / tau_syn; }

    static __device__ __forceinline__ double arrival_time_grad(double w, double lV, double lI, double tau_mem,
                                                               double tau_syn) {
        return w * (lI / tau_syn - lV / tau_mem);
    }

    static __device__ __forceinline__ double reset_time_grad(double lV, double i, double tau_mem) {
        return -lV * i / tau_mem;
    }

    // expm1(x) / x with phi(0) = 1.
    static __device__ __forceinline__ double phi(double x) { return x == 0.0 ? 1.0 : expm1(x) / x; }

    // log1p(z) / z with 1 at z = 0.
    static __device__ __forceinline__ double log1p_ratio(double z) { return z == 0.0 ? 1.0 : log1p(z) / z; }

    // Propagator entries (a, b, c) of the gap map [[a, c], [0, b]] for a gap s >= 0 (may be +inf).
    static __device__ __forceinline__ decay_t decay(double s, double tau_mem, double tau_syn) {
        if (!isfinite(s)) {
            decay_t r;
            r.a = 0.0; r.b = 0.0; r.c = 0.0;
            return r;
        }
        return decay_given(s, exp(-s / tau_mem), exp(-s / tau_syn), tau_mem, tau_syn);
    }

    // decay for a finite gap s >= 0 whose exponentials a = e^{-s/tau_mem}, b = e^{-s/tau_syn} the caller already has
    // (the rebased closed-form backward forms them as products of tabulated factors): the cross term c as decay's.
    static __device__ __forceinline__ decay_t decay_given(double s, double a, double b, double tau_mem,
                                                          double tau_syn) {
        decay_t r;
        r.a = a;
        r.b = b;
        const double d = 1.0 / tau_syn - 1.0 / tau_mem;
        const double x = -s * d;
        if (fabs(x) < 1.0) {
            r.c = (s / tau_mem) * r.a * phi(x);
        } else {
            r.c = tau_syn / (tau_mem - tau_syn) * (r.a - r.b);
        }
        return r;
    }

    // d/dx (expm1(x)/x): the series sum_k k x^(k-1)/(k+1)! for |x| < 1, the closed form elsewhere (twin of
    // lif.phi_prime_scalar).
    static __device__ __forceinline__ double phi_prime(double x) {
        if (fabs(x) < 1.0) {
            double term = 0.5, out = 0.5;
            for (int k = 2; k < 22; ++k) {
                term = term * x * (double)k / (double)((k - 1) * (k + 1));
                out = out + term;
            }
            return out;
        }
        return (x * exp(x) - expm1(x)) / (x * x);
    }

    // Derivatives of the gap map at fixed gap s with its decay d (twin of lif.decay_param_grads_scalar; zeros for
    // s = +inf).
    static __device__ __forceinline__ param_grads_t decay_param_grads(double s, double tau_mem, double tau_syn,
                                                                      decay_t d) {
        param_grads_t g;
        if (!isfinite(s)) {
            g.a_tm = 0.0; g.c_tm = 0.0; g.b_ts = 0.0; g.c_ts = 0.0;
            return g;
        }
        g.a_tm = d.a * s / (tau_mem * tau_mem);
        g.b_ts = d.b * s / (tau_syn * tau_syn);
        const double x = s * (1.0 / tau_mem - 1.0 / tau_syn);
        if (fabs(x) < 1.0) {
            const double pre = (s / tau_mem) * d.a;
            const double dphi = phi_prime(x);
            g.c_tm = d.c * (s / tau_mem - 1.0) / tau_mem - pre * dphi * s / (tau_mem * tau_mem);
            g.c_ts = pre * dphi * s / (tau_syn * tau_syn);
        } else {
            const double diff = tau_mem - tau_syn;
            const double r = tau_syn / diff;
            g.c_tm = -tau_syn / (diff * diff) * (d.a - d.b) + r * g.a_tm;
            g.c_ts = tau_mem / (diff * diff) * (d.a - d.b) - r * g.b_ts;
        }
        return g;
    }

    static __device__ __forceinline__ double voltage(double s, double v0, double i0, double tau_mem, double tau_syn) {
        const decay_t d = decay(s, tau_mem, tau_syn);
        return d.a * v0 + d.c * i0;
    }

    // Time s_peak > 0 of the maximum of V after (v0, i0), or +inf where V has no interior peak
    // (s_peak = tau_syn (1 - v0/i0) log1p(z)/z, z = (1 - tau_syn/tau_mem)(v0/i0 - 1)).
    static __device__ __forceinline__ double peak_time(double v0, double i0, double tau_mem, double tau_syn) {
        const bool rising = (i0 > 0.0) && (i0 > v0);
        const double ratio = rising ? v0 / i0 : 0.0;
        const double z = (1.0 - tau_syn / tau_mem) * (ratio - 1.0);
        const bool has_peak = rising && (1.0 + z > 0.0);
        if (!has_peak) return spikescan_inf();
        return tau_syn * (1.0 - ratio) * log1p_ratio(z);
    }

    // True when V provably stays below threshold over a gap with decay d from (v0, i0) (twin of
    // lif.quiet_gap_scalar): an exact shortcut of fires_in_gap for kernels that hold the gap's decay for the state
    // update anyway. V has at most one extremum, so while it is still rising at the gap's end (b i0 > V_end) its
    // maximum over the gap is at an end, and V(0) = v0 < threshold; V_end < threshold then settles it, with no
    // peak time (log1p) and no second decay. Both comparisons keep a margin of 1e-14 (|v0| + |i0| + threshold),
    // far above the rounding (and any FMA contraction) of evaluating them, so that fires_in_gap could not decide
    // otherwise; with the bound V <= max(v0, i0, 0) of fires_in_gap.
    static __device__ __forceinline__ bool quiet_gap(double v0, double i0, decay_t d, double threshold) {
        const double margin = 1e-14 * (fabs(v0) + fabs(i0) + threshold);
        if (fmax(v0, i0) + margin < threshold) return true;
        const double v_end = d.a * v0 + d.c * i0;
        return (v_end + margin < threshold) && (d.b * i0 - v_end > margin);
    }

    // quiet_gap from the states at both ends of the gap, (v0, i0) and (v_end, i_end) before the arrival that ends it,
    // as the rebased forward computes them (twin of lif.quiet_ends_scalar): the same comparisons and margin.
    static __device__ __forceinline__ bool quiet_ends(double v0, double i0, double v_end, double i_end,
                                                      double threshold) {
        const double margin = 1e-14 * (fabs(v0) + fabs(i0) + threshold);
        if (fmax(v0, i0) + margin < threshold) return true;
        return (v_end + margin < threshold) && (i_end - v_end > margin);
    }

    // Exact gap test (DESIGN.md section 2) for v0 < threshold: does V reach threshold in (0, gap]?  Writes the right
    // end of the root bracket min(s_peak, gap) to *s_hi.
    static __device__ __forceinline__ bool fires_in_gap(double v0, double i0, double gap, double tau_mem,
                                                        double tau_syn, double threshold, double* s_hi) {
        const double s_peak = peak_time(v0, i0, tau_mem, tau_syn);
        const double hi = fmin(s_peak, gap);
        *s_hi = hi;
        // V(inf) = 0 < threshold: an infinite bracket (no peak, open gap) never fires.
        const bool fin = isfinite(hi) && (hi > 0.0);
        if (!fin) return false;
        const double v_hi = voltage(hi, v0, i0, tau_mem, tau_syn);
        return (v_hi >= threshold) && (i0 > v0);
    }

    // First root of V(s) = threshold on [0, s_hi] for a firing state (defined below).
    static __device__ double solve_spike_time(double v0, double i0, double s_hi, double tau_mem, double tau_syn,
                                              double threshold, int solver);

    // The three-probe bracketed Newton solver of solve_spike_time (defined below); Warp: warp-collective, the probe
    // voltages of a round evaluated by lanes 0-2 at once and broadcast (solve_spike_time_warp), else all on this lane.
    template <bool Warp>
    static __device__ __forceinline__ double newton_spike_time(double v0, double i0, double s_hi, double tau_mem,
                                                               double tau_syn, double threshold, int lane);

    // solve_spike_time called by all 32 lanes of a warp with the same arguments (warp-collective): the same
    // iterates and result bit for bit, but the Newton solver's three probe voltages of a round are evaluated by lanes
    // 0-2 at once (and the two final residuals by lanes 0-1) and broadcast, so a round costs one voltage's latency
    // instead of three. Bisection and the analytic solver run as in solve_spike_time on every lane.
    static __device__ double solve_spike_time_warp(double v0, double i0, double s_hi, double tau_mem, double tau_syn,
                                                   double threshold, int solver, int lane);

    // Second divided difference exp[0, w1, w2] of the exponential at the nodes 0, w1, w2 <= 0 (twin of
    // lif.exp_divided_difference2): across the widest pair when the nodes spread over more than 1, else the
    // series sum_m h_m(w1, w2) / (m + 2)! with h_m = w2 h_{m-1} + w1^m, truncated after m = 19.  The integral of the
    // PSP kernel c against an exponential reduces to it (the readout's "integral").
    static __device__ __forceinline__ double exp_divided_difference2(double w1, double w2) {
        const double lo = fmin(w1, w2);
        const double mid = fmax(w1, w2);
        if (lo < -1.0) {
            return (phi(mid) - exp(mid) * phi(lo - mid)) / -lo;
        }
        double h = 1.0, x1_pow = 1.0, inv_fact = 0.5;
        double dd = 0.5 * h;
        for (int m = 1; m < 20; ++m) {
            x1_pow = x1_pow * w1;
            h = w2 * h + x1_pow;
            inv_fact /= (double)(m + 2);
            dd = dd + inv_fact * h;
        }
        return dd;
    }

    // Third divided difference exp[0, w1, w2, w3] of the exponential at the nodes 0, w1, w2, w3 <= 0 (twin of
    // lif.exp_divided_difference3; exp[0, w1, w1, w2] = d/dw1 exp[0, w1, w2]). With the nodes sorted,
    // lo <= x <= y: across the widest pair, (exp[0, x, y] - e^y exp[0, x - y, lo - y]) / -lo, when lo < -1, else the
    // series sum_m h_m(lo, x, y) / (m + 3)! with h_m(lo, x, y) = y h_{m-1}(lo, x, y) + h_m(lo, x), truncated after
    // m = 20.
    static __device__ __forceinline__ double exp_divided_difference3(double w1, double w2, double w3) {
        const double lo = fmin(w1, fmin(w2, w3));
        const double y = fmax(w1, fmax(w2, w3));
        const double x = fmax(fmin(w1, w2), fmin(fmax(w1, w2), w3));  // the median
        if (lo < -1.0) {
            return (exp_divided_difference2(x, y) - exp(y) * exp_divided_difference2(x - y, lo - y)) / -lo;
        }
        double h2 = 1.0, h3 = 1.0, lo_pow = 1.0, inv_fact = 1.0 / 6.0;
        double dd = inv_fact * h3;
        for (int m = 1; m < 21; ++m) {
            lo_pow = lo_pow * lo;
            h2 = x * h2 + lo_pow;
            h3 = y * h3 + h2;
            inv_fact /= (double)(m + 3);
            dd = dd + inv_fact * h3;
        }
        return dd;
    }
};

// First root of V(s) = threshold on [0, s_hi] for a firing state (V(0) < threshold <= V(s_hi), V increasing and
// concave there); DESIGN.md section 3.  solver: SPIKESCAN_SOLVER_NEWTON (bracketed Newton with chord and midpoint
// probes), _BISECTION, or _ANALYTIC (tau_mem == 2 tau_syn only).
__device__ double spikescan_lif::solve_spike_time(double v0, double i0, double s_hi, double tau_mem, double tau_syn,
                                                  double threshold, int solver) {
    if (solver == SPIKESCAN_SOLVER_ANALYTIC) {
        const double disc = fmax((i0 - v0) * (i0 - v0) - 4.0 * i0 * (threshold - v0), 0.0);
        const double xm1 = -2.0 * (threshold - v0) / (sqrt(disc) + (i0 - v0));
        return -tau_mem * log1p(xm1);
    }
    double lo = 0.0;
    double hi = s_hi;
    if (solver == SPIKESCAN_SOLVER_BISECTION) {
        // the bracket's end meets the threshold within the rounding of V (a grazing spike at the peak): it is the
        // root, as Newton stops there (halving would end up to ~1e-8 tau early on the flat top)
        const double v_end = voltage(hi, v0, i0, tau_mem, tau_syn);
        if (v_end - threshold <= 2.220446049250313e-16 * (threshold + 2.0 * fabs(v0) + fabs(v_end))) return hi;
        for (int it = 0; it < SPIKESCAN_BISECTION_MAX_ITERS; ++it) {
            const double mid = 0.5 * (lo + hi);
            if (!((mid > lo) && (mid < hi))) break;
            if (voltage(mid, v0, i0, tau_mem, tau_syn) >= threshold) hi = mid; else lo = mid;
        }
        return hi;
    }
    return newton_spike_time<false>(v0, i0, s_hi, tau_mem, tau_syn, threshold, 0);
}

__device__ double spikescan_lif::solve_spike_time_warp(double v0, double i0, double s_hi, double tau_mem,
                                                       double tau_syn, double threshold, int solver, int lane) {
    if (solver != SPIKESCAN_SOLVER_NEWTON) return solve_spike_time(v0, i0, s_hi, tau_mem, tau_syn, threshold, solver);
    return newton_spike_time<true>(v0, i0, s_hi, tau_mem, tau_syn, threshold, lane);
}

// Three-probe bracketed Newton (twin of lif.solve_spike_time). Invariant: V(lo) < threshold <= V(hi), V concave on
// [lo, hi]. Each round probes the Newton step from lo (below the root), the chord point (above it) and the midpoint
// (the bracket at least halves); it stops once the bracket is two ulps wide, the Newton step is below float64
// resolution, or V(hi) equals the threshold up to the rounding error of evaluating V. Warp only changes which lane
// evaluates a voltage: every lane holds the same iterates, so the result is the same bit for bit.
template <bool Warp>
__device__ __forceinline__ double spikescan_lif::newton_spike_time(double v0, double i0, double s_hi, double tau_mem,
                                                                   double tau_syn, double threshold, int lane) {
    double lo = 0.0;
    double hi = s_hi;
    const double eps = 2.220446049250313e-16;
    double v_lo = v0;
    double v_hi = voltage(hi, v0, i0, tau_mem, tau_syn);
    for (int it = 0; it < SPIKESCAN_NEWTON_MAX_ITERS; ++it) {
        const decay_t d = decay(lo, tau_mem, tau_syn);
        const double slope = (d.b * i0 - v_lo) / tau_mem;
        const double step = (threshold - v_lo) / (slope > 0.0 ? slope : 1.0);
        const bool active = (nextafter(nextafter(lo, spikescan_inf()), spikescan_inf()) < hi) &&
                            !((slope > 0.0) && (step <= eps * lo)) &&
                            (v_hi - threshold > eps * (threshold + 2.0 * fabs(v0) + fabs(v_hi)));  // voltage_noise
        if (!active) break;  // with Warp, warp-uniform
        const double rise = v_hi - v_lo;
        double probes[3];
        probes[0] = slope > 0.0 ? lo + step : lo;
        probes[1] = lo + (hi - lo) * ((threshold - v_lo) / (rise > 0.0 ? rise : 1.0));
        probes[2] = 0.5 * (lo + hi);
        double values[3];
        if constexpr (Warp) {
            // Selected, not indexed by lane (a dynamic index would put probes[] in local memory); lanes > 2
            // evaluate probe 2 as well, unused.
            const double mine = voltage(lane == 0 ? probes[0] : (lane == 1 ? probes[1] : probes[2]), v0, i0,
                                        tau_mem, tau_syn);
            for (int q = 0; q < 3; ++q) values[q] = __shfl_sync(SPIKESCAN_FULL_MASK, mine, q);
        } else {
            for (int q = 0; q < 3; ++q) values[q] = voltage(probes[q], v0, i0, tau_mem, tau_syn);
        }
        for (int q = 0; q < 3; ++q) {
            if (!((probes[q] > lo) && (probes[q] < hi))) continue;
            if (values[q] >= threshold) {
                hi = probes[q];
                v_hi = values[q];
            } else {
                lo = probes[q];
                v_lo = values[q];
            }
        }
    }
    // lo is the last iterate with V < threshold, hi the first with V >= threshold; return the smaller residual.
    if constexpr (Warp) {
        const double v_end = voltage(lane == 1 ? hi : lo, v0, i0, tau_mem, tau_syn);
        const double r_lo = threshold - __shfl_sync(SPIKESCAN_FULL_MASK, v_end, 0);
        const double r_hi = __shfl_sync(SPIKESCAN_FULL_MASK, v_end, 1) - threshold;
        return (r_lo <= r_hi) ? lo : hi;
    } else {
        const double r_lo = threshold - voltage(lo, v0, i0, tau_mem, tau_syn);
        const double r_hi = voltage(hi, v0, i0, tau_mem, tau_syn) - threshold;
        return (r_lo <= r_hi) ? lo : hi;
    }
}
