import warnings

import numpy as np
import pytest

import spikescan as ss
from spikescan.datasets import DroppedSpikesWarning, MergedSpikesWarning
from spikescan.encode import latency, rate, scale


def assert_spike_tensor(times):
    assert isinstance(times, np.ndarray) and times.ndim == 3
    assert not np.isnan(times).any()
    assert (times[np.isfinite(times)] >= 0).all()
    finite = np.isfinite(times)
    assert (np.diff(np.where(finite, times, np.finfo(times.dtype).max), axis=-1) >= 0).all()  # ascending
    assert (finite[..., :-1] >= finite[..., 1:]).all()  # +inf only as trailing padding
    assert np.isposinf(times[~finite]).all()


# ---------------------------------------------------------------- scale

def test_scale_fit_and_reuse_train_bounds_with_clipping():
    train = np.array([[0.0, 10.0, 5.0], [2.0, 20.0, 5.0], [4.0, 15.0, 5.0]])
    x, low, high = scale(train)
    np.testing.assert_array_equal(low, [0.0, 10.0, 5.0])
    np.testing.assert_array_equal(high, [4.0, 20.0, 5.0])
    np.testing.assert_array_equal(x, [[0.0, 0.0, 0.0], [0.5, 1.0, 0.0], [1.0, 0.5, 0.0]])  # constant -> 0
    test = np.array([[-1.0, 25.0, 7.0], [1.0, 12.5, 5.0]])
    xt, low2, high2 = scale(test, low, high)
    np.testing.assert_array_equal(xt, [[0.0, 1.0, 0.0], [0.25, 0.25, 0.0]])  # clipped to [0, 1]
    np.testing.assert_array_equal(low2, low)
    np.testing.assert_array_equal(high2, high)
    assert xt.dtype == np.float64
    # scalar bounds, integer input (an image batch)
    img = np.array([[0, 51, 255]], dtype=np.uint8)
    xi, lo, hi = scale(img, 0, 255)
    np.testing.assert_allclose(xi, [[0.0, 0.2, 1.0]])
    assert lo.shape == hi.shape == (3,)


def test_scale_validation():
    with pytest.raises(ValueError, match="values must be finite.*nan.*\\(1, 0\\)"):
        scale(np.array([[0.0, 1.0], [np.nan, 2.0]]))
    with pytest.raises(ValueError, match="values must have 2 dimensions"):
        scale(np.zeros(3))
    with pytest.raises(TypeError, match="values"):
        scale(np.array([["a", "b"]]))
    with pytest.raises(ValueError, match="low.*shape"):
        scale(np.zeros((2, 3)), np.zeros(2), np.ones(3))
    with pytest.raises(ValueError, match="high must be >= low.*feature 1"):
        scale(np.zeros((2, 2)), [0.0, 1.0], [1.0, 0.5])
    with pytest.raises(ValueError, match="high must be finite"):
        scale(np.zeros((2, 2)), 0.0, np.inf)
    with pytest.raises(ValueError, match="no rows"):
        scale(np.zeros((0, 2)))


# ---------------------------------------------------------------- latency

def test_latency_exact_times():
    x = np.array([[1.0, 0.5, 0.25, 0.0]])
    t = latency(x, t_min=2.0, t_max=10.0)
    assert t.shape == (1, 4, 1) and t.dtype == np.float64
    np.testing.assert_array_equal(t[0, :, 0], [2.0, 6.0, 8.0, np.inf])  # cut=0: a zero feature is silent
    t32 = latency(x, t_max=8.0, dtype=np.float32)
    assert t32.dtype == np.float32
    np.testing.assert_array_equal(t32[0, :, 0], [0.0, 4.0, 6.0, np.inf])
    assert_spike_tensor(t)


def test_latency_cut():
    x = np.array([[0.0, 0.2, 0.25, 0.3, 0.9]])
    t = latency(x, t_max=10.0, cut=0.25)[0, :, 0]
    np.testing.assert_array_equal(np.isfinite(t), [False, False, False, True, True])  # x <= cut is silent
    np.testing.assert_allclose(t[3:], [7.0, 1.0])
    every = latency(x, t_max=10.0, cut=None)[0, :, 0]  # no cut: zero spikes at t_max
    np.testing.assert_allclose(every, [10.0, 8.0, 7.5, 7.0, 1.0])


def test_latency_symmetric_layout():
    x = np.array([[0.0, 0.25, 1.0], [0.5, 1.0, 0.75]])
    t = latency(x, t_max=4.0, symmetric=True)
    assert t.shape == (2, 6, 1)
    np.testing.assert_array_equal(t[:, :3], latency(x, t_max=4.0))  # first the features ...
    np.testing.assert_array_equal(t[:, 3:], latency(1.0 - x, t_max=4.0))  # ... then their mirrors
    np.testing.assert_array_equal(t[0, :, 0], [np.inf, 3.0, 0.0, 0.0, 1.0, np.inf])
    # every feature has exactly one spike on one side or the other when no value sits at 0 or 1 ...
    assert np.isfinite(t[1]).sum() == 5  # ... here 1.0 silences its mirror
    assert_spike_tensor(t)


def test_latency_validation():
    x = np.full((2, 3), 0.5)
    with pytest.raises(ValueError, match=r"values must lie in \[0, 1\].*1.5 at index \(1, 2\)"):
        latency(np.array([[0.0, 0.5, 1.0], [0.2, 0.3, 1.5]]), t_max=1.0)
    with pytest.raises(ValueError, match=r"values must lie in \[0, 1\].*-0.1"):
        latency(np.array([[-0.1]]), t_max=1.0)
    with pytest.raises(ValueError, match="values must be finite.*inf"):
        latency(np.array([[np.inf]]), t_max=1.0)
    with pytest.raises(ValueError, match="values must have 2 dimensions.*\\(2, 3, 1\\)"):
        latency(x[..., None], t_max=1.0)
    with pytest.raises(ValueError, match="t_max must be > t_min=2.0, got 2.0"):
        latency(x, t_max=2.0, t_min=2.0)
    with pytest.raises(ValueError, match="t_min must be >= 0"):
        latency(x, t_max=2.0, t_min=-1.0)
    with pytest.raises(ValueError, match="t_max must be finite"):
        latency(x, t_max=np.inf)
    with pytest.raises(TypeError, match="t_max must be a real number"):
        latency(x, t_max="10")
    with pytest.raises(ValueError, match=r"cut must lie in \[0, 1\).*1.0"):
        latency(x, t_max=1.0, cut=1.0)
    with pytest.raises(ValueError, match="cut"):
        latency(x, t_max=1.0, cut=-0.1)
    with pytest.raises(TypeError, match="dtype"):
        latency(x, t_max=1.0, dtype=np.int32)
    with pytest.raises(TypeError, match="symmetric"):
        latency(x, t_max=1.0, symmetric="yes")


# ---------------------------------------------------------------- rate, regular

def test_times_too_large_for_the_dtype_are_refused():
    """A spike time that float32 cannot hold would become +inf, the padding: the spike would vanish."""
    x = np.array([[0.5, 0.9]])
    with pytest.raises(ValueError, match=r"t_max=1e\+300 does not fit in float32"):
        latency(x, t_max=1e300, dtype=np.float32)
    with pytest.raises(ValueError, match=r"t_max=1e\+300 does not fit in float32"):
        rate(x, t_max=1e300, max_spikes=2, dtype=np.float32)
    assert np.isfinite(latency(x, t_max=1e300)).all()  # float64 holds it
    # The regular code's centres (m + 0.5) * t_max / k: a product beyond float64 gave +inf spikes, 0 reported lost.
    with pytest.raises(ValueError, match=r"t_max=1.7e\+308 times max_spikes - 0.5 = 3.5 overflows float64"):
        rate(np.ones((1, 1)), t_max=1.7e308, max_spikes=4)
    assert np.isfinite(rate(np.ones((1, 1)), t_max=3e307, max_spikes=4)).all()
    # A t_max below the dtype's smallest normal number: float32 rounded 1e-46 to 0, every spike at 0 (the latency
    # order erased, a rate spike on the boundary) without a word.
    for code in (lambda dt, t: latency(x, t_max=t, dtype=dt), lambda dt, t: rate(x, t_max=t, max_spikes=1, dtype=dt)):
        with pytest.raises(ValueError, match=r"t_max=1e-46 is below the smallest normal float32.*use float64 or"):
            code(np.float32, 1e-46)
        with pytest.raises(ValueError, match=r"t_max=1e-320 is below the smallest normal float64.*; use another "
                                             r"time unit$"):  # no advice to use the dtype it already has
            code(np.float64, 1e-320)
    assert np.unique(latency(x, t_max=1e-46)).size == 2  # float64 keeps both times
    assert 0.0 < rate(x, t_max=1e-46, max_spikes=1).min() < 1e-46  # and the rate spikes off the boundary


def test_rate_regular_exact_times():
    x = np.array([[0.0, 0.25, 0.5, 1.0]])
    t = rate(x, t_max=8.0, max_spikes=4)
    assert t.shape == (1, 4, 4) and t.dtype == np.float64
    inf = np.inf
    np.testing.assert_array_equal(t[0], [[inf, inf, inf, inf], [4.0, inf, inf, inf], [2.0, 6.0, inf, inf],
                                         [1.0, 3.0, 5.0, 7.0]])
    times, dropped = rate(x, t_max=8.0, max_spikes=4, return_dropped=True)
    np.testing.assert_array_equal(times, t)
    assert dropped == 0
    # rounding is half up: 0.125 * 4 = 0.5 -> 1 spike
    np.testing.assert_array_equal(rate(np.array([[0.125]]), t_max=8.0, max_spikes=4)[0, 0], [4.0, inf, inf, inf])


def test_rate_regular_counts_and_format():
    rng = np.random.default_rng(0)
    x = rng.random((300, 7))
    for m in (1, 3, 10):
        t = rate(x, t_max=5.0, max_spikes=m, symmetric=True, dtype=np.float32)
        assert t.shape == (300, 14, m) and t.dtype == np.float32
        assert_spike_tensor(t)
        counts = np.isfinite(t).sum(-1)
        xs = np.concatenate([x, 1.0 - x], axis=1)
        np.testing.assert_array_equal(counts, [[round(v * m) for v in row] for row in xs])  # no exact ties here
        fin = t[np.isfinite(t)]
        assert (fin > 0).all() and (fin < 5.0).all()  # strictly inside the window
        # even spacing t_max / k
        t64 = rate(x, t_max=5.0, max_spikes=m)
        k = np.isfinite(t64).sum(-1)
        with np.errstate(invalid="ignore"):  # inf - inf in the padding
            gaps = np.diff(t64, axis=-1)
        sel = np.isfinite(gaps)
        np.testing.assert_allclose(gaps[sel], np.broadcast_to((5.0 / np.maximum(k, 1))[..., None], gaps.shape)[sel])


# ---------------------------------------------------------------- rate, poisson

@pytest.mark.filterwarnings("ignore::spikescan.datasets.DroppedSpikesWarning")
def test_rate_poisson_reproducible():
    x = np.random.default_rng(1).random((20, 4))
    a = rate(x, t_max=10.0, max_spikes=50, mode="poisson", seed=3)
    b = rate(x, t_max=10.0, max_spikes=50, mode="poisson", seed=3)
    c = rate(x, t_max=10.0, max_spikes=50, mode="poisson", seed=4)
    d = rate(x, t_max=10.0, max_spikes=50, mode="poisson", seed=np.random.default_rng(3))
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, d)
    assert not np.array_equal(a, c)
    assert_spike_tensor(a)
    fin = a[np.isfinite(a)]
    assert (fin >= 0).all() and (fin < 10.0).all()


def test_rate_poisson_mean_count():
    # expected counts x * max_spikes = 1, 2, 4, 8 with max_spikes=40: a count above 40 has probability < 1e-15
    x = np.tile([0.025, 0.05, 0.1, 0.2], (5000, 1))
    with warnings.catch_warnings():
        warnings.simplefilter("error", DroppedSpikesWarning)
        t, dropped = rate(x, t_max=20.0, max_spikes=40, mode="poisson", seed=11, return_dropped=True)
    assert dropped == 0
    counts = np.isfinite(t).sum(-1)
    expected = np.array([1.0, 2.0, 4.0, 8.0])
    sigma = np.sqrt(expected / 5000)  # std of the mean of 5000 Poisson counts
    assert (np.abs(counts.mean(0) - expected) < 6 * sigma).all()
    assert np.abs(counts.var(0) / expected - 1).max() < 0.15  # Poisson: variance = mean
    fin = t[np.isfinite(t)]
    assert abs(fin.mean() - 10.0) < 6 * 20.0 / np.sqrt(12 * fin.size)  # uniform on [0, 20)


def test_rate_poisson_dropped_exact_against_uncapped_draw():
    x = np.random.default_rng(2).uniform(0.6, 1.0, (100, 3))
    m, t_max, seed = 5, 10.0, 7
    # the documented draw, uncapped
    rng = np.random.default_rng(seed)
    counts = rng.poisson(x * m)
    u = rng.random(counts.sum()) * t_max
    want_dropped = int(np.maximum(counts - m, 0).sum())
    assert want_dropped > 0
    with pytest.warns(DroppedSpikesWarning, match=f"{want_dropped} of {counts.sum()} spikes"):
        t, dropped = rate(x, t_max=t_max, max_spikes=m, mode="poisson", seed=seed, return_dropped=True)
    assert dropped == want_dropped and isinstance(dropped, int)
    with pytest.warns(DroppedSpikesWarning, match="return_dropped=True"):
        t2 = rate(x, t_max=t_max, max_spikes=m, mode="poisson", seed=seed)
    np.testing.assert_array_equal(t, t2)
    # each channel keeps its earliest max_spikes spikes of the uncapped train
    start = 0
    for (i, j), c in np.ndenumerate(counts):
        full = np.sort(u[start:start + c])
        start += c
        kept = np.full(m, np.inf)
        kept[:min(c, m)] = full[:m]
        np.testing.assert_array_equal(t[i, j], kept)
    assert_spike_tensor(t)


def test_rate_symmetric_layout():
    x = np.array([[0.0, 0.75]])
    t = rate(x, t_max=4.0, max_spikes=4, symmetric=True)
    assert t.shape == (1, 4, 4)
    np.testing.assert_array_equal(np.isfinite(t).sum(-1), [[0, 3, 4, 1]])
    p = rate(x, t_max=4.0, max_spikes=4, mode="poisson", seed=0, symmetric=True)
    assert p.shape == (1, 4, 4) and np.isposinf(p[0, 0]).all()  # rate 0 never spikes


def test_rate_validation():
    x = np.full((2, 3), 0.5)
    with pytest.raises(ValueError, match="max_spikes must be an integer >= 1, got 0"):
        rate(x, t_max=1.0, max_spikes=0)
    with pytest.raises(ValueError, match="max_spikes"):
        rate(x, t_max=1.0, max_spikes=2.0)
    with pytest.raises(ValueError, match="t_max must be > 0"):
        rate(x, t_max=0.0, max_spikes=2)
    with pytest.raises(ValueError, match="mode must be one of.*'burst'"):
        rate(x, t_max=1.0, max_spikes=2, mode="burst")
    with pytest.raises(ValueError, match=r"mode must be one of 'regular', 'poisson'; got array\(\['regular'\]"):
        rate(np.ones((1, 2)), t_max=1.0, max_spikes=2, mode=np.array(["regular"]))  # accepted before
    with pytest.raises(ValueError, match="seed must be >= 0"):
        rate(x, t_max=1.0, max_spikes=2, mode="poisson", seed=-1)
    with pytest.raises(TypeError, match="seed"):
        rate(x, t_max=1.0, max_spikes=2, mode="poisson", seed="abc")
    with pytest.raises(ValueError, match=r"values must lie in \[0, 1\].*2.0 at index \(0, 0\)"):
        rate(np.array([[2.0]]), t_max=1.0, max_spikes=2)
    with pytest.raises(ValueError, match="values must be finite.*nan"):
        rate(np.array([[np.nan]]), t_max=1.0, max_spikes=2, mode="poisson")
    with pytest.raises(TypeError, match="return_dropped"):
        rate(x, t_max=1.0, max_spikes=2, return_dropped=1)
    # a request that cannot fit is refused by name before anything is allocated (NumPy's own errors named nothing)
    for kw in (dict(max_spikes=10**12), dict(max_spikes=2**62, mode="poisson")):
        with pytest.raises(MemoryError, match=r"encode.rate\(n=2, channels=3, max_spikes=\d+, slots=\d+, mode=.* needs "
                                              r"about .*lower max_spikes or slots"):
            rate(x, t_max=1.0, **kw)


def test_rate_poisson_float32_times_stay_below_t_max(monkeypatch):
    """A draw just below t_max that float32 rounds up to t_max is kept inside the window [0, t_max) of the
    docstring: at the largest float32 below t_max (for t_max = 20, which float32 holds, and 0.1, which it rounds
    up)."""
    real = np.random.default_rng

    class Late:  # the Poisson counts of a real generator, every time in the window's last 2^-30
        def __init__(self, seed):
            self.rng = real(seed)

        def poisson(self, lam):
            return self.rng.poisson(lam)

        def random(self, n):
            return np.full(n, 1.0 - 2.0 ** -30)

    monkeypatch.setattr(np.random, "default_rng", Late)
    for t_max in (20.0, 0.1):
        below = np.nextafter(np.float32(t_max), np.float32(0))
        below = below if float(np.float32(t_max)) >= t_max else np.float32(t_max)
        t = rate(np.ones((2, 3)), t_max=t_max, max_spikes=4, mode="poisson", seed=0, dtype=np.float32, slots=12)
        fin = t[np.isfinite(t)]
        assert fin.size > 0 and np.all(fin == below) and np.all(fin.astype(np.float64) < t_max)


def test_rate_float32_merging_is_warned_with_its_count():
    """Poisson times far from zero, rounded to float32: distinct times of a channel that become equal stay two spikes
    at one time, and are counted (as pack_events counts them); float64 keeps them apart, and few spikes merge none."""
    x = np.ones((50, 20))
    with pytest.warns(MergedSpikesWarning, match=r"encode.rate: \d+ pair\(s\) of distinct spike times") as record:
        narrow = rate(x, t_max=1e9, max_spikes=1000, mode="poisson", seed=0, dtype=np.float32, slots=1200)
    wide = rate(x, t_max=1e9, max_spikes=1000, mode="poisson", seed=0, slots=1200)
    merged = int(str(record[0].message).split(": ")[1].split(" ")[0])
    expected = ((wide[..., 1:] > wide[..., :-1]) & (narrow[..., 1:] == narrow[..., :-1])).sum()
    assert merged == expected > 0 and record[0].filename == __file__
    np.testing.assert_array_equal(np.isfinite(narrow), np.isfinite(wide))  # nothing lost
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rate(x[:2] / 2, t_max=20.0, max_spikes=8, mode="poisson", seed=0, dtype=np.float32, slots=30)


# ---------------------------------------------------------------- into the network

@pytest.mark.filterwarnings("ignore::spikescan.datasets.DroppedSpikesWarning")
def test_encoded_tables_drive_lif_forward():
    rng = np.random.default_rng(5)
    table = rng.normal([5.0, 3.0, 4.0, 1.0], [0.8, 0.4, 1.7, 0.7], (12, 4))  # iris-like raw features
    x_train, low, high = scale(table[:8])
    x_test, _, _ = scale(table[8:], low, high)
    assert x_test.min() >= 0.0 and x_test.max() <= 1.0  # clipped to the training bounds
    # The documented windows: latency in [t_min, t_max]; the regular rate code's bin centres strictly inside
    # (0, t_max), never on a boundary; Poisson draws in [0, t_max).
    closed, inside, half_open = ((np.greater_equal, np.less_equal), (np.greater, np.less),
                                 (np.greater_equal, np.less))
    encoded = [
        (latency(x_train, t_min=2.0, t_max=20.0, symmetric=True), 2.0, closed),
        (latency(x_test, t_min=2.0, t_max=20.0, cut=0.1, dtype=np.float32), 2.0, closed),
        (rate(x_test, t_max=20.0, max_spikes=6), 0.0, inside),
        (rate(x_train, t_max=20.0, max_spikes=6, mode="poisson", seed=0, symmetric=True, dtype=np.float32), 0.0,
         half_open),
    ]
    for times, t_min, (above, below) in encoded:
        fin = times[np.isfinite(times)].astype(np.float64)
        assert fin.size > times.shape[0]  # spikes to bound
        assert above(fin, t_min).all() and below(fin, 20.0).all()
        weights = rng.normal(0.5, 0.5, (times.shape[1], 5)).astype(times.dtype)
        out = ss.lif_forward(times, weights, tau_mem=10.0, tau_syn=5.0, threshold=1.0, max_spikes=4)
        assert out.times.shape == (times.shape[0], 5, 4) and out.times.dtype == times.dtype
        assert_spike_tensor(out.times)


def test_rate_slots_keep_the_poisson_tail():
    """``slots`` widens the output beyond ``max_spikes`` (the expected count at x = 1): the same draws, so the first
    ``max_spikes`` slots are those of the default, and the tail that the default dropped is kept."""
    x = np.full((20, 6), 1.0)
    with pytest.warns(DroppedSpikesWarning, match="slots= keeps more"):
        narrow, lost = rate(x, t_max=10.0, max_spikes=8, mode="poisson", seed=5, return_dropped=True)
    wide, lost_wide = rate(x, t_max=10.0, max_spikes=8, mode="poisson", seed=5, return_dropped=True, slots=40)
    assert lost > 0 and lost_wide == 0 and wide.shape == (20, 6, 40)
    np.testing.assert_array_equal(wide[..., :8], narrow)
    assert np.isfinite(wide).sum() == np.isfinite(narrow).sum() + lost
    regular = rate(np.array([[0.5]]), t_max=8.0, max_spikes=4, slots=6)
    np.testing.assert_array_equal(regular[0, 0], [2.0, 6.0, np.inf, np.inf, np.inf, np.inf])
    for bad in (3, 2.5, True):
        with pytest.raises(ValueError, match="slots must be an integer >= max_spikes=4"):
            rate(x, t_max=8.0, max_spikes=4, slots=bad)


def test_scale_of_a_range_beyond_float64():
    """A feature spanning more than float64's range (high - low overflows) is scaled in exact halves (it gave NaN)."""
    x = np.array([[-1.7e308, 0.0], [1.7e308, 1.0], [0.0, 0.5]])
    scaled, low, high = scale(x)
    np.testing.assert_allclose(scaled, [[0.0, 0.0], [1.0, 1.0], [0.5, 0.5]], rtol=1e-15)


def test_latency_zero_spikes_exactly_at_t_max_never_past_it():
    # t_min + (1 - 0) * (t_max - t_min) rounds one ulp above t_max for this pair.
    t_min, t_max = 1.9013254342163477, 7.343743534003257
    assert t_min + (t_max - t_min) > t_max
    times = latency([[0.0, 1e-17, 0.5, 1.0]], t_min=t_min, t_max=t_max, cut=None)
    assert times[0, 0, 0] == t_max and times[0, 1, 0] <= t_max and times[0, 3, 0] == t_min
    assert (np.diff(times[0, :, 0]) <= 0).all()  # larger values still spike earlier
