"""Initial weight scales for LIF layers: a data-free rule and a data-aware calibration.

A LIF layer learns only through its spikes: a neuron that never reaches threshold has no spike time and every
exact gradient through it is zero. Initial weights must therefore put a good part of the neurons above threshold
on typical inputs, and not so far above that they fire in runaway bursts.

- :func:`mean_weight` (data-free): the mean weight at which the expected peak voltage of a neuron receiving
  ``input_spikes`` spikes spread uniformly over ``[0, window]`` is ``drive * threshold``. It accounts for how many
  spikes arrive and how spread out they are: ``n`` near-synchronous spikes sum their PSP peaks, while spikes spread
  over a window much longer than the time constants only add up to the mean rate times the PSP's area.
- :func:`calibrate_scale` (data-aware): the factor by which to multiply a layer's weights so that the fraction of
  (sample, neuron) pairs that fire on a batch of real inputs lies in a target range.
"""

from __future__ import annotations

import numpy as np

from . import _validate as v
from .neurons import lif


def _psp_area(s, tau_mem, tau_syn):
    """``C(s) = int_0^s c(u) du`` of the unit PSP ``c`` (``V`` of a unit current injected at 0), ``s >= 0``.

    ``c(u) = alpha (e^{-alpha u} - e^{-beta u}) / (beta - alpha)`` with ``alpha = 1/tau_mem``, ``beta = 1/tau_syn``
    integrates to ``alpha s^2 exp[0, -alpha s, -beta s]`` (second divided difference; stable for equal rates).
    Beyond ``50 max(tau_mem, tau_syn)`` the area is its limit ``tau_syn``: what is left of it, at most ``(1 + x)
    e^{-x}`` of it at ``x = s / max(tau)``, is below ``1e-20`` of it (and ``s * s`` would overflow for ``s`` above
    ``1.3e154``; within ``50 max(tau)`` it cannot, as time constants stay below ``1e150``).
    """
    s = np.asarray(s, dtype=np.float64)
    alpha, beta = 1.0 / tau_mem, 1.0 / tau_syn
    out = np.full(s.shape, float(tau_syn))
    near = min(alpha, beta) * s <= 50.0
    sn = s[near]
    out[near] = alpha * sn * sn * lif.exp_divided_difference2(-alpha * sn, -beta * sn)
    return out


def _time_constant(name, value):
    """A positive scalar time constant within ``lif_forward``'s range, as a float."""
    value = v.positive_scalar(name, value)
    low, high = v.TIME_CONSTANT_RANGE
    if not low <= value <= high:
        raise ValueError(f"{name} must be within [{low:g}, {high:g}], as in lif_forward, got {value!r}; express the "
                         "times in another unit")
    return value


MAX_POINTS = 10**6
"""Most grid points ``mean_psp_peak`` takes (about 8 MB per array of them); its default is 4097."""


def mean_psp_peak(tau_mem, tau_syn, window, *, points=4097):
    """Peak over ``t`` of the mean voltage that one unit-weight spike, placed uniformly at random on
    ``[0, window]``, produces: ``max_t (C(t) - C(t - window)) / window`` (``C`` the PSP's running area, ``C = 0``
    for negative arguments); the PSP's own peak ``max_s c(s)`` when ``window == 0``.

    The maximum is taken on a grid of ``points`` times over ``[0, window + t_peak + 5 max(tau)]`` (an initialisation
    rule needs no more precision than that; ``points`` from 2 to ``MAX_POINTS``). Any finite window is computed:
    beyond ``50 max(tau)`` the area left of the PSP is below ``1e-20`` of it, and for windows far longer than the
    time constants the result is ``tau_syn / window`` (the PSP's area over the window). A window below ``1e-6`` of
    the shorter time constant gives the PSP's peak: the mean over it differs by a relative ``(window / tau)^2 / 24``
    at most, less than the rounding of ``C(t) - C(t - window)``, which for windows below ``1e-16 tau`` is 0.
    ``FloatingPointError`` when the PSP's peak is out of float64's reach (time constants about 1e300 apart).
    """
    tau_mem, tau_syn = _time_constant("tau_mem", tau_mem), _time_constant("tau_syn", tau_syn)
    window = v.nonnegative_scalar("window", window)
    points = v.positive_int("points", points)
    if points < 2:
        raise ValueError(f"points must be at least 2 (a grid over the window), got {points!r}")
    if points > MAX_POINTS:
        raise ValueError(f"points must be at most MAX_POINTS = {MAX_POINTS} (an initialisation rule needs no finer "
                         f"grid, and each of its arrays takes 8 bytes a point), got {points!r}")
    t_peak = float(lif.peak_time(0.0, 1.0, tau_mem, tau_syn))
    psp_peak = float(lif.voltage(t_peak, 0.0, 1.0, tau_mem, tau_syn))
    if not (np.isfinite(t_peak) and psp_peak > 0):  # lif.peak_time gives inf for tau_mem / tau_syn near 1e300
        raise FloatingPointError(f"mean_psp_peak: the PSP's peak (time {t_peak!r}, value {psp_peak!r}) is out of "
                                 f"reach for tau_mem={tau_mem!r}, tau_syn={tau_syn!r}: bring them closer together")
    if window <= 1e-6 * min(tau_mem, tau_syn):
        return psp_peak
    t = np.linspace(0.0, window + t_peak + 5.0 * max(tau_mem, tau_syn), points)
    mean = (_psp_area(t, tau_mem, tau_syn) - _psp_area(np.maximum(t - window, 0.0), tau_mem, tau_syn)) / window
    peak = float(mean.max())
    if not np.isfinite(peak):  # min(psp_peak, nan) would return psp_peak: no NaN may pass as an answer
        raise FloatingPointError(f"mean_psp_peak: the mean voltage over window={window!r} is {peak!r} "
                                 f"(tau_mem={tau_mem!r}, tau_syn={tau_syn!r})")
    return min(psp_peak, peak)


def mean_weight(n_in, *, tau_mem, tau_syn, threshold=1.0, input_spikes=None, window=0.0, drive=1.5):
    """Mean initial weight of a LIF layer with ``n_in`` inputs, from what the inputs look like (no data needed).

    With ``N = input_spikes`` spikes per sample spread uniformly over ``[0, window]`` (same time unit as the time
    constants) and weights of mean ``mu``, the expected voltage peaks at ``mu N m`` where ``m`` is
    :func:`mean_psp_peak`: the PSP peak for near-synchronous inputs, about ``tau_syn / window`` for inputs spread
    over a long window. Returns ``mu = drive * threshold / (N m)``.

    Args:
        n_in: number of input channels.
        tau_mem, tau_syn, threshold: the layer's (positive scalars).
        input_spikes: expected input spikes per sample (all channels); ``None`` means one per channel (``n_in``).
        window: duration over which the input spikes are spread (``0``: near-synchronous).
        drive: expected peak drive in thresholds (``1.5``: a typical neuron fires once or a few times, while the
            spread of the weights keeps some silent).
    """
    n_in = v.positive_int("n_in", n_in)
    tau_mem = _time_constant("tau_mem", tau_mem)
    tau_syn = _time_constant("tau_syn", tau_syn)
    threshold = v.positive_scalar("threshold", threshold)
    drive = v.positive_scalar("drive", drive)
    if input_spikes is None:  # one spike per input: n_in as a float, which a Python int may be too large for
        try:
            spikes = float(n_in)
        except OverflowError:
            raise ValueError(f"n_in must be within float64's range (at most about 1.8e308 inputs), got "
                             f"{v._shown(n_in)}") from None
    else:
        spikes = v.positive_scalar("input_spikes", input_spikes)
    window = v.nonnegative_scalar("window", window)
    with np.errstate(over="ignore", divide="ignore", under="ignore"):  # refused below
        mu = np.float64(drive) * threshold / (np.float64(spikes) * mean_psp_peak(tau_mem, tau_syn, window))
    if not (np.isfinite(mu) and mu > 0):
        raise ValueError(f"mean_weight: drive * threshold / (input_spikes * mean_psp_peak) = {float(mu)!r} is not a "
                         f"finite positive weight (drive={drive!r}, threshold={threshold!r}, input_spikes={spikes!r}, "
                         f"tau_mem={tau_mem!r}, tau_syn={tau_syn!r}, window={window!r}): bring them to a common scale")
    return float(mu)


def input_statistics(input_times):
    """``(spikes per sample, window)`` of a spike tensor ``[batch, n_in, max_in]``: the mean number of finite
    spikes per sample and the mean spread (last minus first spike time) of the samples that have spikes. Checked as
    ``lif_forward`` checks its spike times (NaN, negative or unsorted times are refused)."""
    v.check_spike_times("input_times", input_times)
    t = np.asarray(v.to_host(input_times), dtype=np.float64)
    t = t.reshape(t.shape[0], int(np.prod(t.shape[1:])))  # (not -1: a batch of no sample has no inferable axis)
    real = np.isfinite(t)
    counts = real.sum(axis=1)
    has = counts > 0
    if not has.any():
        return 0.0, 0.0
    lo = np.where(real, t, np.inf).min(axis=1)[has]
    hi = np.where(real, t, -np.inf).max(axis=1)[has]
    return float(counts.mean()), float((hi - lo).mean())


BURST_FLOOR = 4.0  # spikes per (sample, neuron) that the calibration always allows (see burst_bound)


def burst_bound(input_times, max_spikes):
    """The mean spike count per (sample, neuron) that ``LIFLayer``'s first-batch calibration allows
    (``calibrate_scale``'s ``max_mean_count``): ``min(max_spikes / 2, max(BURST_FLOOR, r))`` with ``r`` the mean
    number of spikes per input channel that spikes (over the batch's samples and channels with a spike).

    ``max_spikes / 2`` keeps most spikes within the recording. The second term bounds the bursts by the input
    itself: a neuron need not fire more often than a busy input channel, and at least a few times. Without it the
    bound grew with ``max_spikes``, a recording size: on latency-coded MNIST (one spike per pixel, a synchronous
    volley at t = 0) raising ``max_spikes`` from 4 to 16 let the calibration settle 2.6 times higher, the hidden
    neurons burst (4.7 spikes each on the last training batch instead of 1.7) and training stalled at 77% training
    accuracy, against 98% (``examples/mnist.py`` on the 5000-image subset).

    ``input_times`` is checked as ``lif_forward`` checks it (a float32/float64 array; NaN, negative or unsorted
    times are refused), and ``max_spikes`` too (a positive int of at most ``MAX_RECORDED``).
    """
    max_spikes = v.max_spikes(max_spikes)  # lif_forward's bound (max_spikes / 2 overflowed past float64's range)
    v.check_spike_times("input_times", input_times)
    t = v.to_host(input_times)
    real = np.isfinite(t)
    channels = int(real.any(axis=-1).sum())
    per_channel = float(real.sum()) / channels if channels else 0.0
    return min(max_spikes / 2.0, max(BURST_FLOOR, per_channel))


def firing_fraction(counts):
    """Fraction of (sample, neuron) pairs with at least one spike, from spike counts ``[batch, n_out]``: an integer
    NumPy or CuPy array of counts ``>= 0``, such as ``LIFResult.counts``."""
    if not isinstance(counts, np.ndarray) and v._top_module(counts) != "cupy":
        raise TypeError(f"counts must be an integer array [batch, n_out] (LIFResult.counts), got {v._foreign(counts)}")
    if isinstance(counts, np.ma.MaskedArray):
        raise TypeError("counts must be a plain integer array, got a masked array, whose mask would be ignored: "
                        "select the unmasked pairs yourself")
    counts = v.to_host(counts)
    if counts.dtype.kind not in "iu":  # bool, float (NaN), complex, strings, objects
        raise TypeError(f"counts must be an integer array [batch, n_out] (LIFResult.counts), got dtype {counts.dtype}")
    if counts.ndim != 2:
        raise ValueError(f"counts must have 2 dimensions [batch, n_out], got shape {counts.shape}")
    if counts.size and counts.min() < 0:
        raise ValueError(f"counts must be >= 0, got {v._first_bad(np, counts, counts < 0)}")
    return float((counts > 0).mean()) if counts.size else 0.0


def calibrate_scale(input_times, weights, *, tau_mem, tau_syn, threshold=1.0, delays=None, target=(0.3, 0.9),
                    max_mean_count=None, max_rounds=24, method="auto", solver="newton"):
    """Factor ``s`` such that ``lif_forward(input_times, s * weights, ...)`` fires on a fraction of (sample,
    neuron) pairs inside ``target = (low, high)`` and, if ``max_mean_count`` is given, with a mean spike count per
    (sample, neuron) of at most ``max_mean_count``; ``1.0`` when the weights already do.

    Otherwise ``s`` is searched on a log scale, aiming at the middle of the range: doubling or halving until the
    target is bracketed, then bisection, stopping as soon as a trial lands inside ``target`` (within
    ``max_rounds`` trials; the best trial is returned otherwise). Trials start from the weights as they are and
    move towards the target, so no trial is far above the firing onset (runaway firing is slow to simulate).
    The first guess uses :func:`mean_weight` with the measured input statistics (:func:`input_statistics`).

    Samples without any input spike are left out (no weight makes them fire, so they would only dilute the
    fraction and push the factor up: with 80% empty samples a 30% target meant firing on every non-empty one, in
    bursts). A layer whose inputs carry no spike cannot be calibrated: ``1.0`` is returned. A trial scale at which a
    neuron runs away (``RunawayFiringError``) counts as too busy; the weights as given running away raise it. Each
    trial is one ``lif_forward`` with ``max_spikes=1`` (the counts are exact whatever ``max_spikes``).

    Args:
        input_times: ``[batch, n_in, max_in]`` spike tensor (a float32/float64 NumPy array), e.g. the first
            training batch.
        weights: ``[n_in, n_out]`` float32/float64, finite (checked as ``lif_forward`` checks them, before any
            trial); ``delays``: optional ``[n_in, n_out]``.
        tau_mem, tau_syn, threshold, method, solver: as for ``lif_forward``.
        target: ``(low, high)`` with ``0 < low < high <= 1``.
        max_mean_count: optional bound on the mean spike count per (sample, neuron) (e.g. half of a layer's
            ``max_spikes``, so that few spikes go unrecorded): a layer that fires on the right fraction of pairs
            but in bursts is scaled down, as long as the fraction stays at or above ``low`` (the fraction wins
            when both cannot hold).

    Returns:
        ``(scale, fraction)``: the factor and the firing fraction it gives on ``input_times``.
    """
    from ._types import RunawayFiringError
    from .lif import lif_forward

    low, high = _check_target(target)
    max_rounds = v.positive_int("max_rounds", max_rounds)
    v.check_float_array("input_times", input_times, 3, spikes=True)  # as lif_forward: a float32/float64 NumPy array
    # NaN, negative or unsorted times, before the samples without a finite spike are left out below: a sample of
    # NaN or -inf alone has none, and would otherwise be dropped unreported.
    v.check_spike_times("input_times", input_times)
    v.check_weights("weights", weights, input_times.shape[1])  # float32/float64 (not bool or complex), finite
    if max_mean_count is not None:
        max_mean_count = v.positive_scalar("max_mean_count", max_mean_count)
    aim = 0.5 * (low + high)
    weights = weights.astype(np.float64)
    carries = np.isfinite(input_times).any(axis=(1, 2))
    if carries.any() and not carries.all():
        input_times = input_times[carries]
    busy = {}  # log scale -> whether the mean count exceeds max_mean_count

    def fraction(log_s):
        try:
            out = lif_forward(input_times, weights * 2.0 ** log_s, tau_mem=tau_mem, tau_syn=tau_syn,
                              threshold=threshold, max_spikes=1, delays=delays, method=method, solver=solver)
        except RunawayFiringError:
            if log_s == 0.0:
                raise  # the weights as they are run away: the caller must know, not a trial scale
            busy[log_s] = True  # a trial scale far above the onset: as busy as it gets
            return 1.0
        busy[log_s] = max_mean_count is not None and float(out.counts.mean()) > max_mean_count
        return firing_fraction(out.counts)

    def too_busy(log_s, f):
        return f > high or (busy[log_s] and f > low)

    f0 = fraction(0.0)
    if low <= f0 and not too_busy(0.0, f0):
        return 1.0, f0
    spikes, window = input_statistics(input_times)
    mean_abs = float(np.abs(weights.mean())) if weights.size else 0.0
    if spikes == 0.0 or mean_abs == 0.0 or not np.isfinite(mean_abs):
        return 1.0, f0
    trials = [(0.0, f0)]
    # First guess: the data-free rule fed with the measured statistics, but only in the direction that helps.
    guess = np.log2(mean_weight(weights.shape[0], tau_mem=float(np.mean(tau_mem)), tau_syn=float(np.mean(tau_syn)),
                                threshold=float(np.mean(threshold)), input_spikes=spikes, window=window) / mean_abs)
    step = float(np.clip(guess, 0.25, 8.0)) if f0 < low else float(np.clip(guess, -8.0, -0.25))
    lo = hi = None  # log scales known to fire too little (lo) / too much (hi)
    if f0 < low:
        lo = 0.0
    else:
        hi = 0.0
    log_s = step
    for _ in range(max_rounds - 1):
        f = fraction(log_s)
        trials.append((log_s, f))
        if low <= f and not too_busy(log_s, f):
            return float(2.0 ** log_s), f
        if f < low:
            lo = log_s
        else:
            hi = log_s
        if lo is not None and hi is not None:
            log_s = 0.5 * (lo + hi)
        elif hi is None:
            log_s = lo + 1.0  # still too quiet: double
        else:
            log_s = hi - 1.0  # still too busy: halve
        if abs(log_s) > 40:
            break
    # No trial met every condition: the one closest to the target fraction, preferring trials without bursts.
    best = min(trials, key=lambda p: (busy[p[0]] and p[1] >= low, abs(p[1] - aim)))
    return float(2.0 ** best[0]), best[1]


def _check_target(target):
    """``(low, high)``: a tuple, list or 1-d array of two real numbers (not bools, strings or ints beyond float64:
    ``float`` read ``(0.5, True)`` as ``(0.5, 1.0)``, ``("0.3", "0.9")`` as fractions, a dict by its keys, and an
    int past float64's range raised a bare ``OverflowError``), with ``0 < low < high <= 1``."""
    items = list(target) if isinstance(target, (tuple, list)) or (
        isinstance(target, np.ndarray) and target.ndim == 1) else None
    numbers = None if items is None or len(items) != 2 else [v._finite_real(x) for x in items]
    if numbers is None or None in numbers:
        raise ValueError(f"target must be a pair (low, high) of finite fractions, got {_shown_pair(target)}")
    low, high = numbers
    if not (0.0 < low < high <= 1.0):
        raise ValueError(f"target must satisfy 0 < low < high <= 1, got {target!r}")
    return low, high


def _shown_pair(target):
    if isinstance(target, (tuple, list)):
        return "(" + ", ".join(v._shown(x, typed=False) for x in target) + ")"
    return v._shown(target, typed=False)


__all__ = ["mean_weight", "mean_psp_peak", "calibrate_scale", "burst_bound", "input_statistics", "firing_fraction"]
