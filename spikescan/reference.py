"""The library's reference: a plain, scalar, global event simulation of a LIF layer (optionally recurrent).

Nothing here is shared with the rest of spikescan (an independent reference beside the fast paths): its own
closed forms, its own threshold-crossing test, its own root finding, its own event order. It is written to be read,
not to be fast (a Python loop over every event of every neuron): the tests chain through it, reference ->
sequential -> scan -> CUDA. Its arguments are checked by its own lines, not ``spikescan._validate``'s, so that the
tests compare two independent checks: it refuses what ``lif_forward`` refuses (types, shapes, NaN, negative or
unsorted times, negative delays, non-positive time constants or thresholds, and lif_forward's limits on currents,
arrivals and time constants, restated here), with the same exception types; the tests hold the two to that.
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

# lif_forward's limits on its arguments, restated here (tests/test_reference.py checks that they agree with
# spikescan._validate): the reference refuses what lif_forward refuses, with the same bounds.
CURRENT_LIMIT = 1e300
"""Most a synaptic current may reach, bounded from the arguments before simulating: ``sum |w|`` over a neuron's
input spikes (and ``n_out * MAX_TOTAL_SPIKES`` times the largest ``|recurrent_weights|``)."""
TIME_CONSTANT_RANGE = (1e-150, 1e150)
"""Time constants outside it are refused (their products with currents and each other leave float64's range)."""
DPS_RANGE = (15, 1000)
"""``dps`` from float64's precision (53 bits: each input converts exactly) to far beyond any need (tests use 40)."""



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
        dps: None to compute in float64 (roots by bisection to one ulp); an int from 15 to 1000 to compute everything in
            mpmath at that many decimal digits (inputs converted exactly from their float64 values, arrival times ``t +
            delay`` summed exactly, results rounded to float64 at the end). In float64 a neuron restarts from each spike
            time rounded to float64, so far from ``t = 0`` each spike passes up to half an ulp of its time to the next
            ones, amplified where a later crossing is shallow: on a 2 s input (tau 20 / 5 ms, delays up to 500 ms, 237
            spikes of one neuron) its spikes were up to 54 ulps of their times from a 40-digit run (and 2.2e-10 ms,
            about 500 ulps, at t = 2076 ms on another neuron of that input), where the library's engines, which restart
            from the solved offset inside the gap, stayed within 2 (within 1.4e-12 ms there).
            For long inputs, compare against ``dps``.

    Returns:
        ``ReferenceResult(times, counts)`` (a named tuple): ``times [batch, n_out, max_spikes]`` float64, the first
        ``max_spikes`` spike times of each neuron in ascending order, ``+inf`` padded; ``counts [batch, n_out]``
        int64, the true number of spikes.

    Raises:
        TypeError, ValueError: an argument ``lif_forward`` refuses (as it does: arrays must be float32/float64
            NumPy arrays), or ``dps`` not ``None`` nor an integer in ``DPS_RANGE``, naming the argument.
        FloatingPointError: a neuron fires more than 10,000 times on one sample (runaway), naming the sample, the
            neuron and the time; or a quantity of the simulation is not finite, or a crossing falls less than the
            resolution of ``t`` after it (where ``lif_forward`` would record a spike at ``t``), naming the neuron,
            the sample and the time: the reference refuses what its arithmetic cannot carry rather than silence a
            neuron.

    Unlike ``lif_forward``, the reference does not refuse a neuron that fires twice at one float64 time (an
    inter-spike interval below the spacing of ``t``, from a current far beyond threshold): it records both spikes
    and goes on, as the plain simulation it is. Such inputs are outside what the tests compare it on.
    """
    input_times = _float_array("input_times", input_times, 3)
    weights = _float_array("weights", weights, 2)
    batch, n_in, max_in = input_times.shape
    if weights.shape[0] != n_in:
        raise ValueError(f"weights {weights.shape} do not match input_times {input_times.shape}: weights must be "
                         f"[n_in={n_in}, n_out]")
    n_out = weights.shape[1]

    def square(x, name):
        if x is None:
            return np.zeros((n_out, n_out))
        x = _float_array(name, x, 2)
        if x.shape != (n_out, n_out):
            raise ValueError(f"{name} must be [n_out, n_out] = {(n_out, n_out)}, got {x.shape}")
        return x

    tau_mem, tau_syn = _per_neuron("tau_mem", tau_mem, n_out), _per_neuron("tau_syn", tau_syn, n_out)
    threshold = _per_neuron("threshold", threshold, n_out)
    if delays is not None:
        delays = _float_array("delays", delays, 2)
        if delays.shape != (n_in, n_out):
            raise ValueError(f"delays must be [n_in, n_out] = {(n_in, n_out)}, got {delays.shape}")
    recurrent = recurrent_weights is not None
    if not recurrent and recurrent_delays is not None:
        raise ValueError("recurrent_delays needs recurrent_weights (without them the layer has no recurrent "
                         "connections for the delays to apply to)")
    rec_w, rec_d = square(recurrent_weights, "recurrent_weights"), square(recurrent_delays, "recurrent_delays")
    if dps is not None and (isinstance(dps, bool) or not isinstance(dps, (int, np.integer))
                            or not DPS_RANGE[0] <= dps <= DPS_RANGE[1]):
        raise ValueError(f"dps must be None (float64) or an integer from {DPS_RANGE[0]} (float64's 53 bits, so "
                         f"that the inputs convert exactly) to {DPS_RANGE[1]}, got {dps!r}")
    _check_arguments(input_times, weights, delays, rec_w, rec_d, tau_mem, tau_syn, threshold, max_spikes)
    input_times, weights = input_times.astype(np.float64), weights.astype(np.float64)
    delays = np.zeros((n_in, n_out)) if delays is None else delays.astype(np.float64)
    rec_w, rec_d = rec_w.astype(np.float64), rec_d.astype(np.float64)

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
    log = staticmethod(math.log)
    isfinite = staticmethod(math.isfinite)
    @staticmethod
    def scaled(v, i):
        """``(v, i)`` times the power of two that brings ``max(|v|, i)`` into ``[0.5, 1)`` (exact), so that products
        with time constants up to 1e150 cannot overflow; ratios of them are unchanged bit for bit."""
        e = math.frexp(max(abs(v), i))[1]
        return math.ldexp(v, -e), math.ldexp(i, -e)


class _Mp:
    def __init__(self, mpmath):
        self.num = mpmath.mpf
        self.exp = mpmath.exp
        self.expm1 = mpmath.expm1
        self.log1p = mpmath.log1p
        self.log = mpmath.log
        self.isfinite = mpmath.isfinite

    @staticmethod
    def scaled(v, i):  # no overflow in mpmath
        return v, i


class _Neuron:
    """One neuron: its parameters, its state ``(v, i)`` at its own last update time ``t``, its pending arrivals."""

    def __init__(self, ar, tau_mem, tau_syn, threshold, name):
        self.ar = ar
        self.name = name  # "neuron i of sample b", for errors
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
        lead = s / self.tm
        if lead == math.inf:  # float64 over a gap > 1.8e308 tau_mem: the PSP term, (s/tm) e^{-s/t_max} phi(z) <=
            return ar.num(0)  # s/t_max e^{-s/t_max} (t_max/tm <= 1e300: s/t_max > 1e8), and V0's, are 0
        return self.v * ar.exp(-s / self.tm) + self.i * lead * ar.exp(-s / self.t_max) * phi

    def current(self, s):
        return self.i * self.ar.exp(-s / self.ts)

    def peak(self):
        """Time after the last update of the maximum of V (where dV/ds = (I - V)/tau_mem = 0), or None if V has no
        maximum ahead (then V never rises above max(V0, 0) and cannot reach a positive threshold)."""
        v, i, tm, ts = self.v, self.i, self.tm, self.ts
        if not (i > 0 and i > v):
            return None
        v, i = self.ar.scaled(v, i)  # the peak's time depends on v / i only
        den = (tm - ts) * v + ts * i
        if not den > 0:  # tau_mem > tau_syn and V0 very negative: V rises monotonically towards 0
            return None
        # t_peak = tm ts/(tm - ts) ln(tm I0/den) = tm ts (I0 - V0)/den * log1p(x)/x with x = tm I0/den - 1.
        x = (tm - ts) * (i - v) / den
        if x < -0.5:  # 1 + x = tm I0/den, small: its log directly (log1p(x) of a rounded x near -1 loses it)
            ratio = self.ar.log(tm * i / den) / x
        else:
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
        self.finite("the time to the voltage's peak", peak)
        # Before its peak V rises; after it V falls. So V reaches threshold in (t, t_end] iff it does at the
        # earlier of the two, and the first root is the only one in (t, that point].
        hi = min(self.t + peak, t_end)
        if t_end > self.t and self.t + peak == self.t and self.voltage(peak) >= self.th:
            raise FloatingPointError(
                f"{self.name} reaches threshold by its voltage peak, {float(peak)!r} after t={float(self.t)!r}: an "
                "offset below the resolution of t (the spike time would round to t, and the simulation cannot place "
                "it); express the times in a unit closer to the time constants")
        if not self.finite("the voltage", self.voltage(hi - self.t)) >= self.th:
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
    def finite(self, what, x):
        """``x``, refused when NaN or infinite: no such value may silently stop or start a neuron."""
        if not self.ar.isfinite(x):
            raise FloatingPointError(f"{what} of {self.name} at t={float(self.t)!r} is {float(x)!r} "
                                     f"(V={float(self.v)!r}, I={float(self.i)!r}): outside what the reference's "
                                     "arithmetic can carry")
        return x

    def advance(self, t):
        s = t - self.t
        self.v, self.i, self.t = self.voltage(s), self.current(s), t
        self.finite("the voltage", self.v)
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
        self.finite("the synaptic current", self.i)


def _float_array(name, x, ndim):
    """``x`` a float32/float64 NumPy array of ``ndim`` dimensions, as ``lif_forward`` takes it (a list, or an array
    of bools, integers, complex numbers or strings, is a ``TypeError`` there too); returned as it is."""
    if not isinstance(x, np.ndarray) or isinstance(x, np.ma.MaskedArray):
        raise TypeError(f"{name} must be a NumPy array of dtype float32 or float64, got {type(x).__name__}")
    if x.dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise TypeError(f"{name} must have dtype float32 or float64 (native byte order), got {x.dtype.str!r}")
    if x.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {x.shape}")
    return x


def _per_neuron(name, x, n_out):
    """A real scalar or ``[n_out]`` array (or list of numbers) -> float64 ``[n_out]``; checked later for range."""
    rule = f"{name} must be a real number or an array of shape [{n_out}]"
    if x is None or isinstance(x, (bool, np.bool_, str, bytes)) or isinstance(x, np.ma.MaskedArray):
        raise TypeError(f"{rule}, got {x!r}")
    try:
        arr = np.asarray(x)
    except (TypeError, ValueError) as err:  # ragged lists
        raise TypeError(f"{rule}, got {x!r}") from err
    if arr.dtype.kind not in "iuf":  # bool, complex, strings, objects
        raise TypeError(f"{rule}, got dtype {arr.dtype} ({x!r})")
    if arr.shape not in ((), (n_out,)):
        raise ValueError(f"{name} must be a scalar or have shape [{n_out}], got shape {arr.shape}")
    return np.broadcast_to(arr.astype(np.float64), (n_out,))


def _check_arguments(input_times, weights, delays, rec_w, rec_d, tau_mem, tau_syn, threshold, max_spikes):
    """What the simulation needs to mean something and what ``lif_forward`` refuses, each refused with its name and
    a value (written here, sharing nothing with ``spikescan._validate``). Arrays as ``_float_array`` passed them
    (float32 or float64: the arrival limit is that of ``input_times``' dtype); ``delays`` may be None."""
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
        if x is not None:
            first(name, x, ~np.isfinite(x) | (x < 0), "finite and >= 0")
    for name, x in (("tau_mem", tau_mem), ("tau_syn", tau_syn), ("threshold", threshold)):
        first(name, x, ~np.isfinite(x) | (x <= 0), "positive and finite")
    low, high = TIME_CONSTANT_RANGE
    for name, x in (("tau_mem", tau_mem), ("tau_syn", tau_syn)):
        first(name, x, (x < low) | (x > high), f"within [{low:g}, {high:g}] (express the times in another unit)")
    if isinstance(max_spikes, bool) or not isinstance(max_spikes, (int, np.integer)) or max_spikes < 1:
        raise ValueError(f"max_spikes must be a positive integer, got {max_spikes!r}")
    # Currents: every input spike of a sample adds its weight once, so |I_i| <= sum_j |w[j, i]| n_j.
    with np.errstate(over="ignore"):  # an infinite bound is refused like any other
        bound = np.isfinite(input_times).sum(axis=2).astype(np.float64) @ np.abs(weights.astype(np.float64))
        reach = float(np.abs(rec_w).max(initial=0.0)) * rec_w.shape[0] * MAX_TOTAL_SPIKES
    if bound.size and not bound.max() < CURRENT_LIMIT:
        b, i = np.unravel_index(int(np.argmax(bound)), bound.shape)
        raise ValueError(f"weights could drive the synaptic current of neuron {i} of sample {b} to "
                         f"{float(bound[b, i]):.3g} (the sum of |weight| over its input spikes), at or beyond the "
                         f"limit {CURRENT_LIMIT:.0e}: scale the weights and the threshold down together")
    if not reach < CURRENT_LIMIT:
        raise ValueError(f"recurrent_weights up to {float(np.abs(rec_w).max()):.3g} in magnitude, arriving up to "
                         f"n_out * {MAX_TOTAL_SPIKES} times, could drive a synaptic current to {reach:.3g}, at or "
                         f"beyond the limit {CURRENT_LIMIT:.0e}: scale the weights and the threshold down together")
    # Arrivals: the latest input spike plus the longest delay stays a number of input_times' dtype.
    if delays is not None and delays.size and np.isfinite(input_times).any():
        latest = float(input_times[np.isfinite(input_times)].max())
        longest = float(delays.max())
        limit = float(np.finfo(input_times.dtype).max)
        if not latest + longest <= limit:
            raise ValueError(f"input_times + delays must stay within the range of {input_times.dtype} (at most "
                             f"{limit:.4g}): the latest input spike {latest!r} plus the longest delay {longest!r} "
                             "reaches more; express the times in a larger unit")


def _simulate(ar, b, input_times, weights, delays, rec_w, rec_d, tau_mem, tau_syn, threshold):
    """One sample: list of spike-time lists, one per neuron."""
    n_in, max_in = input_times.shape
    n_out = weights.shape[1]
    neurons = [_Neuron(ar, tau_mem[i], tau_syn[i], threshold[i], f"neuron {i} of sample {b}") for i in range(n_out)]
    if not neurons:
        return []
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
                            arrival = t_cross + ar.num(rec_d[k, i])
                            if not math.isfinite(float(arrival)):  # as lif_forward, in either arithmetic
                                raise ValueError(
                                    f"recurrent_delays: neuron {k} of sample {b} spikes at t={float(t_cross)!r}, and "
                                    f"its recurrent delay to neuron {i} ({float(rec_d[k, i])!r}) takes that spike's "
                                    "arrival past the float64 range (at most 1.798e+308); express the times in a "
                                    "larger unit")
                            n.receive(arrival, seq, ar.num(rec_w[k, i]))
                            seq += 1
        else:
            for n in neurons:
                if n.next_arrival() == t_arrive:
                    n.apply_arrivals()
    return [n.spikes for n in neurons]
