"""spikescan.init: the data-free initial weight rule and the data-aware calibration of a layer's weight scale."""

import warnings

import numpy as np
import pytest

import spikescan
from spikescan.neurons import lif as lif_model
from spikescan.init import (BURST_FLOOR, burst_bound, calibrate_scale, firing_fraction, input_statistics,
                            mean_psp_peak, mean_weight)

TAU_MEM, TAU_SYN = 10.0, 5.0


def test_near_synchronous_rule_is_the_psp_peak():
    t_peak = lif_model.peak_time(0.0, 1.0, TAU_MEM, TAU_SYN)
    psp_peak = float(lif_model.voltage(t_peak, 0.0, 1.0, TAU_MEM, TAU_SYN))
    assert mean_psp_peak(TAU_MEM, TAU_SYN, 0.0) == pytest.approx(psp_peak, rel=1e-12)
    assert mean_weight(40, tau_mem=TAU_MEM, tau_syn=TAU_SYN) == pytest.approx(1.5 / (40 * psp_peak), rel=1e-12)


@pytest.mark.parametrize("tau_mem, tau_syn", [(10.0, 5.0), (8.0, 8.0), (20.0, 2.0)])
@pytest.mark.parametrize("window", [1.0, 20.0, 300.0])
def test_mean_psp_peak_matches_quadrature(tau_mem, tau_syn, window):
    """max_t (1/T) int_0^T c(t - s) ds by a fine trapezoid rule, against the closed-form running area."""
    s = np.linspace(0.0, window, 4001)
    t = np.linspace(0.0, window + 10 * max(tau_mem, tau_syn), 801)
    u = t[:, None] - s[None, :]
    c = np.where(u > 0, lif_model.decay(np.maximum(u, 0.0), tau_mem, tau_syn)[2], 0.0)
    mean = np.trapezoid(c, s, axis=1) / window
    assert mean_psp_peak(tau_mem, tau_syn, window) == pytest.approx(mean.max(), rel=2e-3)


def test_spread_inputs_need_larger_weights():
    sync = mean_weight(50, tau_mem=TAU_MEM, tau_syn=TAU_SYN)
    spread = [mean_weight(50, tau_mem=TAU_MEM, tau_syn=TAU_SYN, window=w) for w in (5.0, 50.0, 500.0)]
    assert sync < spread[0] < spread[1] < spread[2]
    # Far longer than the time constants, the mean voltage is the rate times the PSP area tau_syn.
    assert spread[2] == pytest.approx(1.5 * 500.0 / (50 * TAU_SYN), rel=0.05)
    # Twice the spikes, half the weight.
    assert mean_weight(50, tau_mem=TAU_MEM, tau_syn=TAU_SYN, input_spikes=200) == pytest.approx(sync / 4)


@pytest.mark.parametrize("kwargs, match", [
    (dict(window=-1.0), "window"), (dict(window=float("inf")), "window"), (dict(input_spikes=0), "input_spikes"),
    (dict(tau_mem=0.0), "tau_mem"), (dict(drive=-1.0), "drive"),
    # outside lif_forward's range (a bare ZeroDivisionError before), and a weight that overflows (inf before)
    (dict(tau_mem=1.0, tau_syn=1e-300), r"tau_syn must be within \[1e-150, 1e\+150\], as in lif_forward, got 1e-300"),
    (dict(input_spikes=1e-320), r"mean_weight: .* = inf is not a finite positive weight .*input_spikes=1e-320"),
    (dict(threshold=1e308, drive=1e308), r"= inf is not a finite positive weight \(drive=1e\+308"),
])
def test_mean_weight_rejects_bad_arguments(kwargs, match):
    args = dict(tau_mem=TAU_MEM, tau_syn=TAU_SYN) | kwargs
    with pytest.raises(ValueError, match=match):
        mean_weight(10, **args)


def test_mean_weight_of_a_huge_number_of_inputs():
    """An int ``n_in`` beyond float64's range raised a bare OverflowError (``float(n_in)``), and a negative one too
    long to print a ValueError about Python's int-to-str limit: both name n_in and its size. Large ints that
    float64 holds keep their answer."""
    assert mean_weight(10**30, tau_mem=TAU_MEM, tau_syn=TAU_SYN) == pytest.approx(
        mean_weight(10, tau_mem=TAU_MEM, tau_syn=TAU_SYN) * 1e-29)
    with pytest.raises(ValueError, match=r"n_in must be within float64's range .* got an integer of 1329 bits"):
        mean_weight(10**400, tau_mem=TAU_MEM, tau_syn=TAU_SYN)
    with pytest.raises(ValueError, match="n_in must be a positive integer, got an integer of 16610 bits"):
        mean_weight(-10**5000, tau_mem=TAU_MEM, tau_syn=TAU_SYN)


def latency_batch(rng, batch=48, n_in=30, t_max=20.0):
    """About half the channels carry one spike, spread over [0, t_max] (a latency code of sparse data)."""
    t = rng.uniform(0.0, t_max, (batch, n_in, 1))
    t[rng.random(t.shape) < 0.5] = np.inf
    return t


def fraction_at(x, w, scale):
    return firing_fraction(spikescan.lif_forward(x, w * scale, tau_mem=TAU_MEM, tau_syn=TAU_SYN, max_spikes=1).counts)


@pytest.mark.parametrize("start", [0.01, 30.0])
def test_calibration_brings_silent_and_saturated_layers_into_the_target(start):
    rng = np.random.default_rng(0)
    x = latency_batch(rng)
    w = rng.normal(1.0, 1.0, (30, 64)) * start * mean_weight(30, tau_mem=TAU_MEM, tau_syn=TAU_SYN)
    f0 = fraction_at(x, w, 1.0)
    assert f0 < 0.05 if start < 1 else f0 > 0.95
    scale, fraction = calibrate_scale(x, w, tau_mem=TAU_MEM, tau_syn=TAU_SYN, target=(0.4, 0.7))
    assert 0.4 <= fraction <= 0.7
    assert fraction == fraction_at(x, w, scale)
    assert (scale > 1.0) if start < 1 else (scale < 1.0)


def test_calibration_keeps_weights_already_in_range_and_delays_count():
    rng = np.random.default_rng(1)
    x = latency_batch(rng)
    w = rng.normal(1.0, 1.0, (30, 64)) * 0.01
    delays = rng.uniform(0.0, 10.0, (30, 64))
    scale, fraction = calibrate_scale(x, w, tau_mem=TAU_MEM, tau_syn=TAU_SYN, delays=delays)
    assert 0.3 <= fraction <= 0.9
    counts = spikescan.lif_forward(x, w * scale, delays=delays, tau_mem=TAU_MEM, tau_syn=TAU_SYN, max_spikes=1).counts
    assert firing_fraction(counts) == fraction
    assert calibrate_scale(x, w * scale, tau_mem=TAU_MEM, tau_syn=TAU_SYN, delays=delays) == (1.0, fraction)


def test_calibration_without_input_spikes_is_a_no_op():
    x = np.full((4, 3, 2), np.inf)
    assert calibrate_scale(x, np.ones((3, 5)), tau_mem=TAU_MEM, tau_syn=TAU_SYN) == (1.0, 0.0)


def test_calibration_of_an_empty_batch_is_a_no_op():
    assert calibrate_scale(np.zeros((0, 3, 2)), np.ones((3, 5)), tau_mem=TAU_MEM, tau_syn=TAU_SYN) == (1.0, 0.0)
    assert input_statistics(np.zeros((0, 3, 2))) == (0.0, 0.0)


def test_calibration_with_a_threshold_per_neuron():
    """``threshold [n_out]`` as for ``lif_forward``: the search lands in the target with those thresholds."""
    rng = np.random.default_rng(3)
    x = latency_batch(rng)
    w = rng.normal(1.0, 1.0, (30, 64)) * 0.01 * mean_weight(30, tau_mem=TAU_MEM, tau_syn=TAU_SYN)
    th = rng.uniform(0.5, 2.0, 64)
    scale, fraction = calibrate_scale(x, w, tau_mem=TAU_MEM, tau_syn=TAU_SYN, threshold=th, target=(0.4, 0.7))
    assert 0.4 <= fraction <= 0.7 and scale > 1.0
    counts = spikescan.lif_forward(x, w * scale, tau_mem=TAU_MEM, tau_syn=TAU_SYN, threshold=th, max_spikes=1).counts
    assert firing_fraction(counts) == fraction


@pytest.mark.parametrize("target", [(0.5, 0.5), (0.0, 0.5), (0.2, 1.5), 0.5, ("a", "b")])
def test_calibration_rejects_bad_targets(target):
    with pytest.raises(ValueError, match="target"):
        calibrate_scale(np.zeros((1, 1, 1)), np.ones((1, 1)), tau_mem=TAU_MEM, tau_syn=TAU_SYN, target=target)


@pytest.mark.parametrize("target, shown", [
    ((0.5, True), "(0.5, True)"), ((np.bool_(False), 0.5), "(np.False_, 0.5)"), (("0.3", "0.9"), "('0.3', '0.9')"),
    ({0.3: 1, 0.9: 2}, "{0.3: 1, 0.9: 2}"), ((0.3, 10**400), "(0.3, an integer of 1329 bits)"),
    ((float("nan"), 0.5), "(nan, 0.5)"), ((0.3, float("inf")), "(0.3, inf)"), (np.array([[0.3], [0.9]]), "array")])
def test_calibration_target_must_be_two_finite_real_numbers(target, shown):
    """``float()`` took bools as 0/1, strings of digits as numbers and a dict by its keys, and a huge int raised a
    bare OverflowError: each is refused, naming target and what it got, before any trial."""
    with pytest.raises(ValueError, match="target") as info:
        calibrate_scale(np.zeros((1, 1, 1)), np.ones((1, 1)), tau_mem=TAU_MEM, tau_syn=TAU_SYN, target=target)
    assert shown in str(info.value)
    assert calibrate_scale(np.zeros((1, 1, 1)), np.ones((1, 1)), tau_mem=TAU_MEM, tau_syn=TAU_SYN,
                           target=np.array([0.25, np.float32(0.75)])) == (1.0, 0.0)


def test_input_statistics():
    x = np.array([[[1.0, 4.0], [np.inf, np.inf]], [[2.0, np.inf], [3.0, np.inf]], [[np.inf] * 2] * 2])
    spikes, window = input_statistics(x)
    assert spikes == pytest.approx(4 / 3) and window == pytest.approx((3.0 + 1.0) / 2)
    # NaN was counted as padding and negative times as spikes: refused as lif_forward refuses them
    for bad, match in ((np.nan, "input_times contains NaN"), (-1.0, "input_times must be >= 0, got -1.0")):
        y = x.copy()
        y[0, 1, 0] = bad
        with pytest.raises(ValueError, match=match):
            input_statistics(y)


@pytest.mark.parametrize("kwargs, match", [
    (dict(tau_mem=-10.0), "tau_mem must be a positive finite number, got -10.0"),
    (dict(tau_syn=float("nan")), "tau_syn must be a positive finite number, got nan"),
    (dict(tau_mem=0), "tau_mem must be a positive finite number, got 0"),
    (dict(tau_mem="10"), r"tau_mem must be a positive finite number, got '10' \(of type str; give a Python or NumPy "
                         r"number\)"),
    # A Python int beyond float64: np.isfinite raised a TypeError that named no argument.
    (dict(tau_syn=10**400), "tau_syn must be a positive finite number, got an integer of 1329 bits"),
    (dict(window=-10**400), "window must be a finite number >= 0, got an integer of 1329 bits"),
    (dict(window=-1.0), "window must be"), (dict(window=float("nan")), "window must be"),
    (dict(points=1), "points must be at least 2"), (dict(points=2.5), "points must be a positive integer"),
])
def test_mean_psp_peak_checks_its_arguments(kwargs, match):
    """Public: bad time constants returned 0.0 with only RuntimeWarnings before."""
    args = dict(tau_mem=TAU_MEM, tau_syn=TAU_SYN, window=5.0) | kwargs
    with pytest.raises(ValueError, match=match):
        mean_psp_peak(args.pop("tau_mem"), args.pop("tau_syn"), args.pop("window"), **args)


def test_calibration_tames_bursts_while_keeping_the_fraction():
    """Rate-coded inputs: most pairs fire, but in bursts; a bound on the mean count scales the weights down."""
    rng = np.random.default_rng(2)
    x = np.sort(rng.uniform(0.0, 20.0, (32, 8, 8)), axis=-1)
    w = rng.normal(0.0, 1.0, (8, 40))
    counts0 = spikescan.lif_forward(x, w, tau_mem=TAU_MEM, tau_syn=TAU_SYN, max_spikes=1).counts
    assert 0.3 <= firing_fraction(counts0) <= 0.9 and counts0.mean() > 4
    assert calibrate_scale(x, w, tau_mem=TAU_MEM, tau_syn=TAU_SYN)[0] == 1.0  # the fraction alone is satisfied
    scale, fraction = calibrate_scale(x, w, tau_mem=TAU_MEM, tau_syn=TAU_SYN, max_mean_count=2.0)
    counts = spikescan.lif_forward(x, w * scale, tau_mem=TAU_MEM, tau_syn=TAU_SYN, max_spikes=1).counts
    assert scale < 1.0 and counts.mean() <= 2.0 and 0.3 <= fraction == firing_fraction(counts)


def _volley(seed=0):
    """A latency-coded batch (one spike per channel within 1 ms, 40% of the channels silent) and weights whose
    neurons burst when scaled up to the target fraction."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.0, 1.0, (32, 60, 1))
    x[rng.random(x.shape) < 0.4] = np.inf
    w = rng.normal(0.0, 1.0, (60, 40)) * 0.05 + rng.normal(0.0, 1.0, (1, 40)) * 0.02
    return x, w


def test_burst_bound_follows_the_input_and_the_recording():
    x, _ = _volley()
    assert burst_bound(x, 4) == 2.0  # the recording: max_spikes / 2
    assert burst_bound(x, 16) == burst_bound(x, 64) == BURST_FLOOR  # one spike per channel: the floor
    rate = np.sort(np.random.default_rng(1).uniform(0.0, 20.0, (8, 10, 12)), axis=-1)
    rate[:, 5:] = np.inf  # silent channels do not lower the rate
    rate[:, :5, 6:] = np.inf  # 6 spikes per active channel
    assert burst_bound(rate, 64) == 6.0 and burst_bound(rate, 10) == 5.0
    assert burst_bound(np.full((2, 3, 1), np.inf), 16) == BURST_FLOOR


def test_burst_bound_refuses_max_spikes_beyond_lif_forwards_bound():
    """``max_spikes / 2`` raised a bare OverflowError for an int past float64's range: refused with
    ``lif_forward``'s bound, naming max_spikes and its size."""
    x, _ = _volley()
    MAX_RECORDED = spikescan.lif._MAX_RECORDED
    assert burst_bound(x, MAX_RECORDED) == BURST_FLOOR
    for bad, shown in ((MAX_RECORDED + 1, str(MAX_RECORDED + 1)), (10**400, "an integer of 1329 bits")):
        with pytest.raises(ValueError, match=f"max_spikes must be at most {MAX_RECORDED} .*got {shown}"):
            burst_bound(x, bad)


def test_calibration_of_a_volley_does_not_grow_with_max_spikes():
    """On a synchronous volley the fraction target alone lets neurons burst (mean 7.7, up to 46 spikes); the bound
    from the input keeps them to a few whatever max_spikes (it was max_spikes / 2, so 16 allowed 8 per neuron)."""
    x, w = _volley()
    kw = dict(tau_mem=TAU_MEM, tau_syn=TAU_SYN)
    old, _ = calibrate_scale(x, w, max_mean_count=16 / 2, **kw)
    scales = [calibrate_scale(x, w, max_mean_count=burst_bound(x, m), **kw)[0] for m in (8, 16, 64)]
    assert scales[0] == scales[1] == scales[2] < old / 2
    counts = spikescan.lif_forward(x, w * scales[1], max_spikes=1, **kw).counts
    assert counts.mean() <= BURST_FLOOR and 0.3 <= firing_fraction(counts)
    assert spikescan.lif_forward(x, w * old, max_spikes=1, **kw).counts.mean() > 1.5 * BURST_FLOOR


def test_calibration_trials_that_run_away_count_as_busy(monkeypatch):
    """A trial scale at which a neuron runs away counts as too busy and the search goes on below it; weights that
    run away as given raise."""
    from spikescan import RunawayFiringError, lif
    real = lif.lif_forward
    trials = []

    def guarded(input_times, weights, **kwargs):
        trials.append(float(weights.max()))
        if weights.max() > 5.0:
            raise RunawayFiringError(0, 0, 1.0, 1e9, 10)
        return real(input_times, weights, **kwargs)

    monkeypatch.setattr(lif, "lif_forward", guarded)
    x = np.zeros((4, 1, 1))
    w = np.full((1, 3), 0.5)  # unit PSP peak 0.25: silent as given; weights above 5 "run away"
    scale, fraction = calibrate_scale(x, w, tau_mem=TAU_MEM, tau_syn=TAU_SYN, target=(0.5, 1.0))
    assert max(trials) > 5.0, "some trial ran away"
    assert fraction == 1.0 and 4.0 <= 0.5 * scale <= 5.0
    with pytest.raises(RunawayFiringError):
        calibrate_scale(x, w * 20, tau_mem=TAU_MEM, tau_syn=TAU_SYN)


def test_calibration_leaves_samples_without_input_spikes_out():
    """Empty samples cannot fire whatever the factor: counted, they pushed the factor up until the other samples
    fired on every neuron (80% empty samples, 30% target). The factor is the one of the non-empty samples alone."""
    rng = np.random.default_rng(3)
    x = latency_batch(rng)
    w = rng.normal(1.0, 1.0, (30, 64)) * 0.01 * mean_weight(30, tau_mem=TAU_MEM, tau_syn=TAU_SYN)
    padded = np.concatenate([x, np.full((4 * len(x),) + x.shape[1:], np.inf)])  # 80% empty samples
    alone = calibrate_scale(x, w, tau_mem=TAU_MEM, tau_syn=TAU_SYN)
    assert calibrate_scale(padded, w, tau_mem=TAU_MEM, tau_syn=TAU_SYN) == alone
    assert 0.3 <= alone[1] <= 0.9


def test_tiny_windows_give_the_psp_peak():
    """A window far below the time constants is a near-synchronous input: the mean PSP peak is the PSP's peak. Below
    about 1e-16 tau the running-area difference rounded to 0 and ``mean_weight`` (and the first-batch calibration
    of inputs spanning such a window) raised a bare ZeroDivisionError."""
    peak = mean_psp_peak(10.0, 5.0, 0.0)
    for window in (1e-300, 1e-20, 1e-8, 4.9e-6):
        assert mean_psp_peak(10.0, 5.0, window) == peak
    assert mean_weight(100, tau_mem=10.0, tau_syn=5.0, window=1e-20) == mean_weight(100, tau_mem=10.0,
                                                                                              tau_syn=5.0)
    # Just above the cut the grid's value is continuous with it.
    assert abs(mean_psp_peak(10.0, 5.0, 1e-4) / peak - 1) < 1e-6
    x = np.full((2, 10, 1), np.inf)
    x[:, 0, 0] = 5e-324
    scale, fraction = calibrate_scale(x, np.full((10, 4), 1e-3), tau_mem=10.0, tau_syn=5.0)
    assert np.isfinite(scale) and scale > 0


def test_calibration_helpers_check_their_arguments():
    x = np.full((2, 3, 1), 1.0)
    w = np.full((3, 2), 0.5)
    for bad in ("a", 2.5, 0, -1):
        with pytest.raises(ValueError, match="max_rounds must be a positive integer"):
            calibrate_scale(x, w, tau_mem=TAU_MEM, tau_syn=TAU_SYN, max_rounds=bad)
    with pytest.raises(ValueError, match="input_times must have 3 dimensions"):
        calibrate_scale(x[:, :, 0], w, tau_mem=TAU_MEM, tau_syn=TAU_SYN)
    with pytest.raises(ValueError, match="max_spikes must be a positive integer, got -8"):
        burst_bound(x, -8)
    with pytest.raises(ValueError, match="input_times must have 3 dimensions"):
        burst_bound(x[0, 0], 8)


@pytest.mark.parametrize("window", [1e3, 1e155, 1e200, 1e300, 1e308])
def test_mean_psp_peak_of_long_windows_is_the_area_over_the_window(window):
    """Spikes spread over a window far longer than the time constants add up to the PSP's area, tau_syn, over the
    window. From 1e155 on, s * s overflowed and min(psp_peak, nan) returned the synchronous peak, 0.25 (5e17 times
    too large at 1e155); mean_weight(window=1e300) returned the window=0 weight with only a RuntimeWarning."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert mean_psp_peak(10.0, 5.0, window) == pytest.approx(5.0 / window, rel=1e-12)
        assert mean_weight(10, tau_mem=10.0, tau_syn=5.0, window=window) == pytest.approx(
            1.5 / (10 * 5.0 / window), rel=1e-12)
    # Where the area switches to its limit (50 max(tau)), the closed form already equals it to rounding.
    from spikescan.init import _psp_area

    for tm, ts in ((10.0, 5.0), (5.0, 10.0), (20.0, 20.0)):
        edge = 50.0 * max(tm, ts)
        below, above = _psp_area(np.array([edge * (1 - 1e-12), edge * (1 + 1e-12)]), tm, ts)
        assert below == pytest.approx(ts, rel=1e-15) and above == ts


def test_mean_psp_peak_bounds_points_and_refuses_an_unreachable_peak():
    """points=10**12 raised a bare MemoryError from np.linspace; time constants 1e300 apart gave a PSP peak of 0.0
    (lif.peak_time is inf there) and so a mean peak of 0.0, silently."""
    with pytest.raises(ValueError, match="points must be at most MAX_POINTS = 1000000.*got 1000000000000"):
        mean_psp_peak(10.0, 5.0, 1.0, points=10**12)
    assert mean_psp_peak(10.0, 5.0, 1.0, points=10**6) == pytest.approx(mean_psp_peak(10.0, 5.0, 1.0), rel=1e-6)
    with pytest.raises(FloatingPointError, match="tau_mem=1e\\+150, tau_syn=1e-150"):
        mean_psp_peak(1e150, 1e-150, 0.0)


@pytest.mark.parametrize("bad,error,match", [
    ([[[np.nan]]], TypeError, "input_times must be a NumPy or CuPy array"),  # a list: burst_bound gave 4.0
    (np.array([[[np.nan]]]), ValueError, "input_times contains NaN"),
    (np.array([[[2.0, 1.0]]]), ValueError, "input_times must be ascending"),
    (np.array([[[-1.0]]]), ValueError, "input_times must be >= 0"),
    (np.array([[[1]]]), TypeError, "input_times must have dtype float32 or float64"),
])
def test_burst_bound_checks_input_times_as_lif_forward(bad, error, match):
    """burst_bound accepted NaN, unsorted, negative and list input times (burst_bound([[[nan]]], 8) == 4.0); it now
    refuses each as lif_forward does, same type and message."""
    with pytest.raises(error, match=match):
        burst_bound(bad, 8)
    with pytest.raises(error, match=match):
        spikescan.lif_forward(bad, np.ones((1, 1)), tau_mem=TAU_MEM, tau_syn=TAU_SYN, max_spikes=1)


@pytest.mark.parametrize("bad,error,match", [
    (np.array([[-1, 2]]), ValueError, r"counts must be >= 0, got -1 at index \(0, 0\)"),
    (np.array([[np.nan, 1.0]]), TypeError, "counts must be an integer array.*float64"),
    ([[1, 0]], TypeError, "counts must be an integer array.*list"),
    (np.array([[True, False]]), TypeError, "counts must be an integer array.*bool"),
    (np.array([1, 0]), ValueError, "counts must have 2 dimensions"),
    (np.ma.masked_array([[1, 0]], mask=[[False, True]]), TypeError, "counts must be a plain integer array, got a "
                                                                    "masked array"),
])
def test_firing_fraction_checks_counts(bad, error, match):
    """firing_fraction took negative counts, NaN and lists and returned a fraction of them."""
    with pytest.raises(error, match=match):
        firing_fraction(bad)
    assert firing_fraction(np.array([[0, 3], [1, 0]])) == 0.5 and firing_fraction(np.zeros((0, 2), int)) == 0.0


@pytest.mark.parametrize("weights,error,match", [
    (np.full((2, 3), 1.0 + 1j), TypeError, "weights must have dtype float32 or float64, got complex128"),
    (np.ones((2, 3), bool), TypeError, "weights must have dtype float32 or float64, got bool"),
    ([[1.0] * 3] * 2, TypeError, "weights must be a NumPy or CuPy array"),
    (np.full((2, 3), np.nan), ValueError, "weights must be finite"),
    (np.ones((3, 3)), ValueError, r"weights must have shape \[n_in=2, n_out\]"),
])
def test_calibrate_scale_checks_weights_as_lif_forward(weights, error, match):
    """calibrate_scale cast complex weights to real with a ComplexWarning and bool weights to 0/1 before any
    trial; it now refuses what lif_forward refuses, with its error."""
    x = np.array([[[1.0, 2.0], [0.5, np.inf]]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(error, match=match):
            calibrate_scale(x, weights, tau_mem=TAU_MEM, tau_syn=TAU_SYN)
        with pytest.raises(error, match=match):
            spikescan.lif_forward(x, weights, tau_mem=TAU_MEM, tau_syn=TAU_SYN, max_spikes=1)


@pytest.mark.parametrize("bad, match", [(np.nan, r"input_times contains NaN \(nan at index \(1, 0, 0\)\)"),
                                        (-np.inf, r"input_times must be >= 0, got -inf at index \(1, 0, 0\)")])
def test_calibrate_scale_refuses_a_sample_of_nan_or_negative_times(bad, match):
    """A sample whose every time is NaN or -inf has no finite spike: it was left out with the empty samples, so the
    bad times never reached lif_forward's checks and the scale came back as if they were not there."""
    x = np.array([[[0.5, 1.0], [0.2, np.inf]], [[bad, bad], [bad, bad]]])
    with pytest.raises(ValueError, match=match):
        calibrate_scale(x, np.ones((2, 3)), tau_mem=10.0, tau_syn=5.0)
