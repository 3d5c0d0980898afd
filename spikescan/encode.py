"""Encoders from real-valued features to spike tensors.

Every encoder takes a table ``values [n, features]`` (a scikit-learn table such as iris, wine or breast cancer; an
image batch flattened with ``images.reshape(len(images), -1)``) and returns the library's spike tensor format:
``times [n, channels, max_spikes]``, float, ascending along the last axis and padded with ``+inf``, ready for
:func:`spikescan.lif_forward`. Times are in whatever unit ``t_max`` is given in (the unit of the time constants).
Outputs are NumPy arrays (convert CuPy inputs with ``.get()`` first; move the result with ``cupy.asarray``).

The encoders expect values in ``[0, 1]``; :func:`scale` maps raw features there (min-max per feature, with the
training split's ``low``/``high`` reused for the test split).

Two codes:

- **Latency** (:func:`latency`, time-to-first-spike): one spike per channel, at ``t_min + (1 - x)(t_max - t_min)``;
  a larger value spikes earlier. The information is in the exact spike time, which is what this library simulates
  and differentiates exactly, and it costs one input event per channel. Values ``<= cut`` stay silent, which makes
  sparse inputs (a black image background) cheap.
- **Rate** (:func:`rate`): the value sets the number of spikes in ``[0, t_max]``, about ``x * max_spikes``.
  ``mode="regular"`` places them deterministically and evenly; ``mode="poisson"`` draws a Poisson process (a
  seeded generator makes it reproducible; a new seed per epoch acts as noise augmentation). A rate code needs many
  events per value to resolve it finely, so it is slower than a latency code for the same precision.

``symmetric=True`` (both encoders) gives each feature two channels, ``x`` and ``1 - x``, laid out as
``[x_0 .. x_{F-1}, 1 - x_0 .. 1 - x_{F-1}]`` (the layout of the Yin-Yang inputs ``(x, y, 1 - x, 1 - y)``). With one
channel a small value is encoded by a late spike, few spikes or none at all, so a neuron hears about small values
late or never and the total input drive grows with the values. The mirrored channel makes small values as loud as
large ones (every feature has an early spike, or many spikes, on one side) and keeps the total drive per feature
constant. Use it for tables with few features (iris has 4, Yin-Yang 2), where every direction of every feature
counts; for images with hundreds of pixels and a silent background the plain code is usually enough and half as
many events.
"""

from __future__ import annotations

import math
import numbers
import warnings

import numpy as np

from ._validate import _first_bad, choice, unwrap_0d

__all__ = ["scale", "latency", "rate"]

_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
RATE_MODES = ("regular", "poisson")


# ---------------------------------------------------------------- validation helpers

def _as_table(name, x):
    """A real-valued ``[n, features]`` array-like -> float64 NumPy array (NaN and inf are errors)."""
    if type(x).__module__.split(".")[0] == "cupy":
        raise TypeError(f"{name} must be a NumPy array or array-like; got a CuPy array (use {name}.get())")
    try:
        arr = np.asarray(x)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} must be a real-valued array of shape [n, features], got {type(x).__name__} "
                        f"({err})") from err
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{name} must hold real numbers (bool, int or float), got dtype {arr.dtype}")
    if arr.ndim != 2:
        raise ValueError(f"{name} must have 2 dimensions [n, features], got shape {arr.shape} (flatten images with "
                         f"{name}.reshape(len({name}), -1))")
    arr = arr.astype(np.float64)
    bad = ~np.isfinite(arr)
    if bad.any():
        raise ValueError(f"{name} must be finite, got {_first_bad(np, arr, bad)}")
    return arr


def _unit_table(name, x):
    """Like ``_as_table`` and every entry must lie in ``[0, 1]``."""
    arr = _as_table(name, x)
    bad = (arr < 0.0) | (arr > 1.0)
    if bad.any():
        raise ValueError(f"{name} must lie in [0, 1] (see spikescan.encode.scale), got {_first_bad(np, arr, bad)}")
    return arr


def _real(name, value):
    number = unwrap_0d(value)
    if isinstance(number, bool) or not isinstance(number, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    value = float(number)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return value


def _times_range(t_min, t_max):
    t_min = _real("t_min", t_min)
    t_max = _real("t_max", t_max)
    if t_min < 0:
        raise ValueError(f"t_min must be >= 0, got {t_min!r}")
    if not t_max > t_min:
        raise ValueError(f"t_max must be > t_min={t_min!r}, got {t_max!r}")
    return t_min, t_max


def _float_dtype(dtype):
    try:
        dt = np.dtype(dtype)
    except TypeError as err:
        raise TypeError(f"dtype must be float32 or float64, got {dtype!r}") from err
    if dt not in _FLOAT_DTYPES:
        raise TypeError(f"dtype must be float32 or float64, got {dtype!r}")
    return dt


def _fits(t_max, dt):
    """Spike times up to ``t_max`` must be finite in ``dt`` (a larger one would become the ``+inf`` of padding), and
    ``t_max`` a normal number there (a smaller one rounds to 0 or keeps too few bits to order the spikes)."""
    fix = "use float64 or another time unit" if dt == np.float32 else "use another time unit"
    if t_max > float(np.finfo(dt).max):  # compared in float64: no overflow warning on the way
        raise ValueError(f"t_max={t_max!r} does not fit in {dt.name} (largest {float(np.finfo(dt).max)!r}): its spikes "
                         f"would become +inf, the padding; {fix}")
    if t_max < float(np.finfo(dt).tiny):
        raise ValueError(f"t_max={t_max!r} is below the smallest normal {dt.name} ({float(np.finfo(dt).tiny)!r}): "
                         f"its spike times would round to 0 or lose their order; {fix}")


def _bool(name, value):
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def _mirror(x, symmetric):
    """``[n, F]`` -> ``[n, 2F]`` channels ``[x, 1 - x]`` when ``symmetric``, else ``x``."""
    return np.concatenate([x, 1.0 - x], axis=1) if symmetric else x


def _bound(name, value, n_features):
    """``low``/``high``: scalar or ``[features]`` -> float64 ``[features]`` copy."""
    try:
        arr = np.asarray(value)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} must be a number or an array of shape [{n_features}], got {value!r}") from err
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{name} must hold real numbers, got dtype {arr.dtype}")
    if arr.shape not in ((), (n_features,)):
        raise ValueError(f"{name} must be a scalar or have shape [{n_features}] (one per feature), got shape "
                         f"{arr.shape}")
    arr = np.broadcast_to(arr.astype(np.float64), (n_features,)).copy()
    bad = ~np.isfinite(arr)
    if bad.any():
        raise ValueError(f"{name} must be finite, got {_first_bad(np, arr, bad)}")
    return arr


# ---------------------------------------------------------------- public encoders

def scale(values, low=None, high=None):
    """Min-max scale each feature to ``[0, 1]``.

    ``scaled = (clip(values, low, high) - low) / (high - low)`` per feature (column). Fit on the training split
    and reuse its bounds for the test split::

        x_train, low, high = scale(train_table)
        x_test, _, _ = scale(test_table, low, high)   # test values outside [low, high] are clipped to 0 or 1

    A constant feature (``high == low``) maps to 0.

    Args:
        values: ``[n, features]`` real numbers (array-like; bool, int or float), finite.
        low, high: per-feature bounds, scalars or ``[features]`` arrays with ``high >= low``. ``None`` (default)
            takes the column minimum / maximum of ``values`` (then ``values`` needs at least one row).

    Returns:
        ``(scaled [n, features] float64 in [0, 1], low [features] float64, high [features] float64)``.
    """
    x = _as_table("values", values)
    n, n_features = x.shape
    if (low is None or high is None) and n == 0:
        raise ValueError("values has no rows: pass low and high explicitly to scale an empty table")
    low = x.min(axis=0) if low is None else _bound("low", low, n_features)
    high = x.max(axis=0) if high is None else _bound("high", high, n_features)
    bad = high < low
    if bad.any():
        j = int(np.argmax(bad))
        raise ValueError(f"high must be >= low for every feature, got high={high[j]!r} < low={low[j]!r} "
                         f"(feature {j})")
    clipped = np.clip(x, low, high)
    # A feature whose range exceeds float64 (high - low overflows) is scaled in halves (exact): NaN otherwise.
    with np.errstate(over="ignore"):
        half = np.where(np.isfinite(high - low), 1.0, 0.5)
    span = high * half - low * half
    scaled = np.divide(clipped * half - low * half, span, out=np.zeros_like(clipped), where=span > 0)
    return np.clip(scaled, 0.0, 1.0), low, high


def latency(values, *, t_max, t_min=0.0, cut=0.0, symmetric=False, dtype=np.float64):
    """Latency (time-to-first-spike) code: one spike per channel, larger values earlier.

    A value ``x`` in ``[0, 1]`` spikes once at::

        t = t_min + (1 - x) * (t_max - t_min)     (x = 1 -> t_min, x -> 0 -> t_max)

    and values ``x <= cut`` emit no spike (``+inf``). With the default ``cut=0`` a feature equal to 0 is silent
    (it never spikes, rather than spiking at ``t_max``); ``cut=None`` makes every value spike, 0 at ``t_max``.

    Args:
        values: ``[n, features]`` values in ``[0, 1]`` (see :func:`scale`); outside values, NaN and inf are errors.
        t_max: latest spike time (> ``t_min``, finite), in the unit of the network's time constants.
        t_min: earliest spike time (>= 0, finite).
        cut: silence threshold in ``[0, 1)``, or ``None`` for no silent values.
        symmetric: if True each feature uses two channels, ``x`` then ``1 - x`` (channels
            ``[x_0 .. x_{F-1}, 1 - x_0 .. 1 - x_{F-1}]``); ``cut`` applies to each channel's own value.
        dtype: float32 or float64 output (computed in float64).

    Returns:
        ``times [n, features, 1]`` (``[n, 2 * features, 1]`` when ``symmetric``), ``+inf`` where silent.
    """
    t_min, t_max = _times_range(t_min, t_max)
    if cut is not None:
        cut = _real("cut", cut)
        if not 0.0 <= cut < 1.0:
            raise ValueError(f"cut must lie in [0, 1) or be None, got {cut!r}")
    symmetric = _bool("symmetric", symmetric)
    dt = _float_dtype(dtype)
    _fits(t_max, dt)
    x = _mirror(_unit_table("values", values), symmetric)
    # Rounded, t_min + 1 * (t_max - t_min) can exceed t_max by an ulp; clamping keeps the order (a monotone map).
    times = np.minimum(t_min + (1.0 - x) * (t_max - t_min), t_max)
    if cut is not None:
        times = np.where(x > cut, times, np.inf)
    return times[..., None].astype(dt)


def rate(values, *, t_max, max_spikes, mode="regular", seed=None, symmetric=False, return_dropped=False,
         dtype=np.float64, slots=None):
    """Rate code: the number of spikes in ``[0, t_max]`` grows with the value.

    A value ``x`` in ``[0, 1]`` becomes a spike train of mean rate ``x * max_spikes / t_max``:

    - ``mode="regular"``: ``k = floor(x * max_spikes + 0.5)`` spikes (``x * max_spikes`` rounded half up, in
      float64) at the centres of ``k`` equal bins of ``[0, t_max]``::

          t_m = (m + 0.5) * t_max / k,   m = 0 .. k - 1

      so the spacing is exactly ``t_max / k`` and no spike lies on a boundary (0 or ``t_max``). Deterministic;
      ``k <= max_spikes`` always, so nothing is dropped.
    - ``mode="poisson"``: a Poisson process of rate ``x * max_spikes / t_max`` on ``[0, t_max)``. Drawn with
      ``rng = numpy.random.default_rng(seed)`` in this order, which is part of the contract: ``counts =
      rng.poisson(x * max_spikes)`` for the whole ``[n, channels]`` table, then ``rng.random(counts.sum())``
      scaled by ``t_max``, consumed in C order of the channels (the first ``counts[0, 0]`` for sample 0 channel 0,
      and so on), then sorted per channel. The same seed gives the same spikes.

    A Poisson count can exceed ``max_spikes`` (for ``x = 1`` it does about half the time). The output keeps
    ``slots`` slots (default ``max_spikes``; give more to keep the Poisson tail, e.g. ``max_spikes + 4 *
    sqrt(max_spikes) + 4``) and each channel's earliest spikes; the spikes that did not fit are counted, a
    :class:`spikescan.datasets.DroppedSpikesWarning` states the exact number, and ``return_dropped=True`` returns
    it too. Silence the warning with ``warnings.simplefilter("ignore", DroppedSpikesWarning)`` if the cap is
    intended.

    Args:
        values: ``[n, features]`` values in ``[0, 1]`` (see :func:`scale`); outside values, NaN and inf are errors.
        t_max: length of the coding window (> 0, finite), in the unit of the network's time constants.
        max_spikes: the expected count for ``x = 1`` (integer >= 1), and by default the number of spike slots per
            channel.
        mode: ``"regular"`` or ``"poisson"``.
        seed: for ``"poisson"``: anything ``numpy.random.default_rng`` accepts (None, an int >= 0, a
            ``SeedSequence`` or a ``Generator``, which is advanced). Ignored by ``"regular"``.
        symmetric: if True each feature uses two channels, ``x`` then ``1 - x`` (see :func:`latency`).
        return_dropped: if True return ``(times, dropped)``.
        dtype: float32 or float64 output (computed in float64).
        slots: spike slots per channel, the output's last axis (integer >= ``max_spikes``; default
            ``max_spikes``).

    Returns:
        ``times [n, features, slots]`` (``[n, 2 * features, slots]`` when ``symmetric``), ascending and ``+inf``
        padded; with ``return_dropped=True``, ``(times, dropped)`` where ``dropped`` is the int number of spikes
        that did not fit in ``slots`` slots (always 0 for ``"regular"``).
    """
    t_max = _real("t_max", t_max)
    if not t_max > 0:
        raise ValueError(f"t_max must be > 0, got {t_max!r}")
    number = unwrap_0d(max_spikes)
    if isinstance(number, bool) or not isinstance(number, numbers.Integral) or number < 1:
        raise ValueError(f"max_spikes must be an integer >= 1, got {max_spikes!r}")
    max_spikes = int(number)
    number = max_spikes if slots is None else unwrap_0d(slots)
    if isinstance(number, bool) or not isinstance(number, numbers.Integral) or number < max_spikes:
        raise ValueError(f"slots must be an integer >= max_spikes={max_spikes}, got {slots!r}")
    slots = int(number)
    choice("mode", mode, RATE_MODES)  # a str: an array of one name would pass `in` and then `==` elementwise
    symmetric = _bool("symmetric", symmetric)
    return_dropped = _bool("return_dropped", return_dropped)
    dt = _float_dtype(dtype)
    _fits(t_max, dt)
    if mode == "regular" and not np.isfinite((max_spikes - 0.5) * t_max):  # the last centre's (m + 0.5) * t_max
        raise ValueError(f"t_max={t_max!r} times max_spikes - 0.5 = {max_spikes - 0.5} overflows float64 (the "
                         "regular code's spike times are (m + 0.5) * t_max / k); use another time unit")
    if mode == "poisson":
        ok_seed = seed is None or isinstance(seed, (np.random.Generator, np.random.SeedSequence)) or (
            isinstance(seed, numbers.Integral) and not isinstance(seed, bool))
        if not ok_seed:
            raise TypeError(f"seed must be None, an int >= 0, a SeedSequence or a Generator, got {seed!r}")
        if isinstance(seed, numbers.Integral) and seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed!r}")
    x = _mirror(_unit_table("values", values), symmetric)
    n, channels = x.shape
    from . import _memory  # lazy, as the datasets' warnings: keeps `import spikescan` light

    table = n * channels * slots
    expected = int(np.ceil(x.sum() * max_spikes)) if mode == "poisson" else 0  # Poisson draws: ~5 arrays of each
    _memory.check(f"encode.rate(n={n}, channels={channels}, max_spikes={max_spikes}, slots={slots}, mode={mode!r})",
                  {"spike table": 2 * 8 * table, "output": dt.itemsize * table, "Poisson draws": 40 * expected}, np,
                  "lower max_spikes or slots, or encode fewer values at a time")
    times = np.full((n, channels, slots), np.inf)
    dropped = 0
    if mode == "regular":
        k = np.minimum(np.floor(x * max_spikes + 0.5), max_spikes)[..., None]
        m = np.arange(slots, dtype=np.float64)
        with np.errstate(over="ignore"):  # slots past k (set to +inf) may overflow; the spikes cannot (checked)
            times = np.where(m < k, (m + 0.5) * t_max / np.maximum(k, 1.0), np.inf)
    else:
        rng = np.random.default_rng(seed)
        counts = rng.poisson(x * max_spikes).reshape(-1)
        total = int(counts.sum())
        t = np.minimum(rng.random(total) * t_max, np.nextafter(t_max, 0.0))  # [0, t_max) even after rounding
        owner = np.repeat(np.arange(counts.size), counts)
        order = np.lexsort((t, owner))
        t, owner = t[order], owner[order]
        rank = np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)
        keep = rank < slots
        dropped = int(total - np.count_nonzero(keep))
        times.reshape(-1, slots)[owner[keep], rank[keep]] = t[keep]
        if dropped:
            from .datasets._core import DroppedSpikesWarning  # lazy: keeps `import spikescan` light

            warnings.warn(
                f"spikescan.encode.rate(mode='poisson'): {dropped} of {total} spikes did not fit in "
                f"{slots} slots and were dropped (the latest of their channel); slots= keeps more"
                + ("" if return_dropped else "; pass return_dropped=True to get the count"),
                DroppedSpikesWarning, stacklevel=2)
    out = times.astype(dt)
    if mode == "poisson" and dt != np.float64:
        # The window is [0, t_max) in the output dtype too: a time just below t_max would otherwise round up to it.
        below = dt.type(t_max)
        if float(below) >= t_max:
            below = np.nextafter(below, dt.type(0))
        np.minimum(out, below, out=out, where=np.isfinite(out))
    if dt != np.float64 and slots > 1:
        # Neighbours in a channel, distinct in float64, equal once rounded: counted, not silent (pack_events' rule).
        pairs = (times[..., 1:] > times[..., :-1]) & (out[..., 1:] == out[..., :-1])
        merged = int(np.count_nonzero(pairs))
        if merged:
            from .datasets._core import MergedSpikesWarning, merged_message

            at = float(times[..., 1:][pairs].max())
            warnings.warn(f"spikescan.encode.rate: {merged_message(merged, at, dt)}; they stay two spikes at one "
                          "time. Use dtype=np.float64 to keep them apart", MergedSpikesWarning, stacklevel=2)
    return (out, dropped) if return_dropped else out
