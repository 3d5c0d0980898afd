"""The library's reference: a plain, scalar, global event simulation of a LIF layer (optionally recurrent).

Nothing here is shared with the rest of spikescan (an independent reference beside the fast paths): its own
closed forms, its own threshold-crossing test, its own root finding, its own event order. It is written to be read,
not to be fast (a Python loop over every event of every neuron): the tests chain through it, reference ->
sequential -> scan -> CUDA. Its arguments are checked by its own few lines (NaN, negative or unsorted times, negative
delays, non-positive time constants or thresholds).
"""

from __future__ import annotations

import heapq
import math

from typing import NamedTuple

import numpy as np


class ReferenceResult(NamedTuple):
    """``lif_forward_reference``'s result; a tuple, so ``times, counts = lif_forward_reference(...)`` works."""

    times: np.ndarray   # [batch, n_out, max_spikes] float64, ascending, +inf padded
    counts: np.ndarray  # [batch, n_out] int64, the true number of spikes


MAX_TOTAL_SPIKES = 10_000
"""Spikes one neuron may fire on one sample before the simulation stops with ``FloatingPointError``."""


def lif_forward_reference(input_times, weights, *, tau_mem, tau_syn, threshold=1.0, max_spikes, delays=None,
                          recurrent_weights=None, recurrent_delays=None, dps=None):
    """Exact event-driven simulation of a dense (optionally recurrent) layer of current-based LIF neurons.

    The same contract as ``spikescan.lif_forward`` without its performance options (method, chunk size, solver,
    engine, limits). Per output neuron ``i`` (DESIGN.md sections 1 and 9)::

        tau_mem dV/dt = -V + I,   tau_syn dI/dt = -I,   V = I = 0 at t = 0
        input spike (t, j)  ->  I_i += weights[j, i] at t + delays[j, i]
        V_i reaches threshold_i from below at t  ->  output spike at t, V_i <- 0 (I_i is kept),
                                                     I_k += recurrent_weights[i, k] at t + recurrent_delays[i, k]

    Between events, from state ``(V0, I0)`` after a time ``s`` (``tau_max = max(tau_mem, tau_syn)``,
    ``k = |1/tau_syn - 1/tau_mem|``, ``phi(z) = (1 - e^{-z}) / z``, ``phi(0) = 1``)::

        I(s) = I0 e^{-s/tau_syn}
        V(s) = V0 e^{-s/tau_mem} + I0 (s/tau_mem) e^{-s/tau_max} phi(k s)

    which is the usual ``V0 e^{-s/tm} + I0 tau_syn/(tau_mem - tau_syn) (e^{-s/tm} - e^{-s/ts})`` written without
    cancellation, and ``(V0 + I0 s/tau) e^{-s/tau}`` when ``tau_mem == tau_syn``.

    Order of events: every arrival (input or recurrent) at time ``t`` is applied after every threshold crossing at
    ``t`` (a spike is the first root in ``(last event, next arrival]``); arrivals at equal times are applied
    together; a recurrent arrival with zero delay comes after the sender's reset (also for a self-connection).
    Every spike propagates; ``max_spikes`` only caps what is recorded.

    Args:
        input_times: ``[batch, n_in, max_in]`` spike times, ascending along the last axis, ``+inf`` padded.
        weights: ``[n_in, n_out]``.
        tau_mem, tau_syn: positive, scalars or ``[n_out]``; any ratio, equal included.
        threshold: positive, a scalar or ``[n_out]``.
        max_spikes: output spikes recorded per neuron.
        delays: optional ``[n_in, n_out]`` non-negative delays of the input synapses (None: 0).
        recurrent_weights: optional ``[n_out, n_out]``, ``[sender, receiver]`` (None: feed-forward).
        recurrent_delays: optional ``[n_out, n_out]`` non-negative delays of the recurrent synapses (None: 0).
        dps: None to compute in float64 (roots by bisection to one ulp); an int to compute everything in mpmath at
            that many decimal digits (inputs converted exactly from their float64 values, arrival times ``t +
            delay`` summed exactly, results rounded to float64 at the end). In float64 a neuron restarts from each
            spike time rounded to float64, so far from ``t = 0`` each spike passes up to half an ulp of its time to
            the next ones, amplified where a later crossing is shallow: on a 2 s input (tau 20 / 5 ms, delays up to
            500 ms, 237 spikes of one neuron) its spikes were up to 54 ulps of their times from a 40-digit run (and
            2.2e-10 ms, about 500 ulps, at t = 2076 ms on another neuron of that input), where the library's
            engines, which restart from the solved offset inside the gap, stayed within 2 (within 1.4e-12 ms there).
            For long inputs, compare against ``dps``.

    Returns:
        ``ReferenceResult(times, counts)`` (a named tuple): ``times [batch, n_out, max_spikes]`` float64, the first
        ``max_spikes`` spike times of each neuron in ascending order, ``+inf`` padded; ``counts [batch, n_out]``
        int64, the true number of spikes.

    Raises:
        FloatingPointError: a neuron fires more than 10,000 times on one sample (runaway), naming the sample, the
            neuron and the time.

    Unlike ``lif_forward``, the reference does not refuse a neuron that fires twice at one float64 time (an
    inter-spike interval below the spacing of ``t``, from a current far beyond threshold): it records both spikes
    and goes on, as the plain simulation it is. Such inputs are outside what the tests compare it on.
    """
    input_times = np.asarray(input_times, dtype=np.float64)
    weights = np.asarray(weights, dtype=np.float64)
    batch, n_in, max_in = input_times.shape
    if weights.shape[0] != n_in:
        raise ValueError(f"weights {weights.shape} do not match input_times {input_times.shape}")
    n_out = weights.shape[1]

    def per_neuron(x):
        return np.broadcast_to(np.asarray(x, dtype=np.float64), (n_out,))

    def square(x, name):
        x = np.zeros((n_out, n_out)) if x is None else np.asarray(x, dtype=np.float64)
        if x.shape != (n_out, n_out):
            raise ValueError(f"{name} must be [n_out, n_out] = {(n_out, n_out)}, got {x.shape}")
        return x

    tau_mem, tau_syn, threshold = per_neuron(tau_mem), per_neuron(tau_syn), per_neuron(threshold)
    delays = np.zeros((n_in, n_out)) if delays is None else np.asarray(delays, dtype=np.float64)
    if delays.shape != (n_in, n_out):
        raise ValueError(f"delays must be [n_in, n_out] = {(n_in, n_out)}, got {delays.shape}")
    recurrent = recurrent_weights is not None
    rec_w, rec_d = square(recurrent_weights, "recurrent_weights"), square(recurrent_delays, "recurrent_delays")
    _check_arguments(input_times, weights, delays, rec_w, rec_d, tau_mem, tau_syn, threshold, max_spikes)

    times = np.full((batch, n_out, max_spikes), np.inf)
    counts = np.zeros((batch, n_out), dtype=np.int64)
    if dps is None:
        ar = _Float64()
        run = _simulate
    else:
        import mpmath

        ar = _Mp(mpmath)

        def run(*args):
            with mpmath.workdps(dps):
                return _simulate(*args)

    for b in range(batch):
        spikes = run(ar, b, input_times[b], weights, delays, rec_w if recurrent else None, rec_d,
                     tau_mem, tau_syn, threshold)
        for i, train in enumerate(spikes):
            counts[b, i] = len(train)
            for m, t in enumerate(train[:max_spikes]):
                times[b, i, m] = float(t)
    return ReferenceResult(times, counts)


# ---------------------------------------------------------------------------------------------------------------
# Arithmetic: the same simulation in float64 or in mpmath
# ---------------------------------------------------------------------------------------------------------------

class _Float64:
    num = staticmethod(float)
    exp = staticmethod(math.exp)
    expm1 = staticmethod(math.expm1)
    log1p = staticmethod(math.log1p)


class _Mp:
    def __init__(self, mpmath):
        self.num = mpmath.mpf
        self.exp = mpmath.exp
        self.expm1 = mpmath.expm1
        self.log1p = mpmath.log1p


class _Neuron:
    """One neuron: its parameters, its state ``(v, i)`` at its own last update time ``t``, its pending arrivals."""

    def __init__(self, ar, tau_mem, tau_syn, threshold):
        self.ar = ar
        self.tm, self.ts, self.th = ar.num(tau_mem), ar.num(tau_syn), ar.num(threshold)
        self.t_max = max(self.tm, self.ts)
        self.k = abs(self.tm - self.ts) / (self.tm * self.ts)  # |1/tau_syn - 1/tau_mem| without cancellation
        self.v, self.i, self.t = ar.num(0), ar.num(0), ar.num(0)
        self.arrivals = []  # heap of (time, sequence number, weight)
        self.spikes = []
        self.crossing = None  # cached next_crossing(); None when stale

    # Closed forms ------------------------------------------------------------------------------------------
    def voltage(self, s):
        """V at time ``s`` after the last update, with no arrival in between."""
        ar = self.ar
        z = self.k * s
        phi = -ar.expm1(-z) / z if z != 0 else ar.num(1)
        return self.v * ar.exp(-s / self.tm) + self.i * (s / self.tm) * ar.exp(-s / self.t_max) * phi

    def current(self, s):
        return self.i * self.ar.exp(-s / self.ts)

    def peak(self):
        """Time after the last update of the maximum of V (where dV/ds = (I - V)/tau_mem = 0), or None if V has no
        maximum ahead (then V never rises above max(V0, 0) and cannot reach a positive threshold)."""
        v, i, tm, ts = self.v, self.i, self.tm, self.ts
        if not (i > 0 and i > v):
            return None
        den = (tm - ts) * v + ts * i
        if not den > 0:  # tau_mem > tau_syn and V0 very negative: V rises monotonically towards 0
            return None
        # t_peak = tm ts/(tm - ts) ln(tm I0/den) = tm ts (I0 - V0)/den * log1p(x)/x with x = tm I0/den - 1.
        x = (tm - ts) * (i - v) / den
        ratio = self.ar.log1p(x) / x if x != 0 else self.ar.num(1)
        return tm * ts * (i - v) / den * ratio

    # Threshold crossing ------------------------------------------------------------------------------------
    def next_arrival(self):
        return self.arrivals[0][0] if self.arrivals else math.inf

    def next_crossing(self):
        """Absolute time of the first threshold crossing in (t, next arrival], or inf."""
        if self.crossing is None:
            self.crossing = self._find_crossing(self.next_arrival())
        return self.crossing

    def _find_crossing(self, t_end):
        peak = self.peak()
        if peak is None:
            return math.inf
        # Before its peak V rises; after it V falls. So V reaches threshold in (t, t_end] iff it does at the
        # earlier of the two, and the first root is the only one in (t, that point].
        hi = min(self.t + peak, t_end)
        if not self.voltage(hi - self.t) >= self.th:
            return math.inf
        lo = self.t  # V(lo) < threshold, V(hi) >= threshold: bisect until lo and hi are adjacent numbers
        while True:
            mid = (lo + hi) / 2
            if not lo < mid < hi:
                return hi
            if self.voltage(mid - self.t) >= self.th:
                hi = mid
            else:
                lo = mid

    # State updates -----------------------------------------------------------------------------------------
    def advance(self, t):
        s = t - self.t
        self.v, self.i, self.t = self.voltage(s), self.current(s), t
        self.crossing = None

    def fire(self, t):
        self.i, self.v, self.t = self.current(t - self.t), self.ar.num(0), t
        self.spikes.append(t)
        self.crossing = None

    def receive(self, t, seq, w):
        heapq.heappush(self.arrivals, (t, seq, w))
        self.crossing = None

    def apply_arrivals(self):
        """Advance to the next arrival time and apply every arrival at that time."""
        t = self.next_arrival()
        self.advance(t)
        while self.arrivals and self.arrivals[0][0] == t:
            self.i = self.i + heapq.heappop(self.arrivals)[2]


def _check_arguments(input_times, weights, delays, rec_w, rec_d, tau_mem, tau_syn, threshold, max_spikes):
    """What the simulation needs to mean something, each refused with its name and a value (written here, sharing
    nothing with ``spikescan._validate``)."""
    def first(name, x, bad, rule):
        if bad.any():
            k = tuple(int(j) for j in np.argwhere(bad)[0])
            raise ValueError(f"{name} must be {rule}, got {float(x[k])!r} at index {k}")

    first("input_times", input_times, np.isnan(input_times) | (input_times < 0), "spike times >= 0 (not NaN)")
    down = np.zeros(input_times.shape, bool)  # each spike earlier than the one before it
    down[..., 1:] = input_times[..., 1:] < input_times[..., :-1]
    first("input_times", input_times, down, "ascending along the last axis (+inf padding last)")
    for name, x in (("weights", weights), ("recurrent_weights", rec_w)):
        first(name, x, ~np.isfinite(x), "finite")
    for name, x in (("delays", delays), ("recurrent_delays", rec_d)):
        first(name, x, ~np.isfinite(x) | (x < 0), "finite and >= 0")
    for name, x in (("tau_mem", tau_mem), ("tau_syn", tau_syn), ("threshold", threshold)):
        first(name, x, ~np.isfinite(x) | (x <= 0), "positive and finite")
    if isinstance(max_spikes, bool) or not isinstance(max_spikes, (int, np.integer)) or max_spikes < 1:
        raise ValueError(f"max_spikes must be a positive integer, got {max_spikes!r}")


def _simulate(ar, b, input_times, weights, delays, rec_w, rec_d, tau_mem, tau_syn, threshold):
    """One sample: list of spike-time lists, one per neuron."""
    n_in, max_in = input_times.shape
    n_out = weights.shape[1]
    neurons = [_Neuron(ar, tau_mem[i], tau_syn[i], threshold[i]) for i in range(n_out)]
    seq = 0
    for j in range(n_in):
        for m in range(max_in):
            t = input_times[j, m]
            if not math.isfinite(t):
                continue
            for i, n in enumerate(neurons):
                n.receive(ar.num(t) + ar.num(delays[j, i]), seq, ar.num(weights[j, i]))
                seq += 1

    while True:
        t_cross = min(n.next_crossing() for n in neurons)
        t_arrive = min(n.next_arrival() for n in neurons)
        if t_cross == math.inf and t_arrive == math.inf:
            break
        if t_cross <= t_arrive:
            # Every crossing at this time first (their arrivals, even zero-delay ones, come after them).
            firing = [k for k, n in enumerate(neurons) if n.next_crossing() == t_cross]
            for k in firing:
                n = neurons[k]
                if len(n.spikes) >= MAX_TOTAL_SPIKES:
                    raise FloatingPointError(
                        f"runaway firing: neuron {k} of sample {b} would fire spike {MAX_TOTAL_SPIKES + 1} at "
                        f"t={float(t_cross)!r} (current I={float(n.current(t_cross - n.t))!r})")
                n.fire(t_cross)
            if rec_w is not None:
                for k in firing:
                    for i, n in enumerate(neurons):
                        if rec_w[k, i] != 0:  # adding 0 to I is no event
                            n.receive(t_cross + ar.num(rec_d[k, i]), seq, ar.num(rec_w[k, i]))
                            seq += 1
        else:
            for n in neurons:
                if n.next_arrival() == t_arrive:
                    n.apply_arrivals()
    return [n.spikes for n in neurons]
