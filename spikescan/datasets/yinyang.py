"""The Yin-Yang dataset (Kriener, Göltz, Petrovici 2021), generated from its definition."""

from __future__ import annotations

import math
import warnings

import numpy as np

from ._core import SpikeDataset, check_choice, check_count, check_positive, float_dtype

R_BIG = 0.5
R_SMALL = 0.1
CLASS_NAMES = ("yin", "yang", "dot")


def _which_class(x: float, y: float) -> int:
    d_right = math.sqrt((x - 1.5 * R_BIG) ** 2 + (y - R_BIG) ** 2)
    d_left = math.sqrt((x - 0.5 * R_BIG) ** 2 + (y - R_BIG) ** 2)
    if d_right < R_SMALL or d_left < R_SMALL:
        return 2
    is_yin = d_right <= R_SMALL or R_SMALL < d_left <= 0.5 * R_BIG or (y > R_BIG and d_right > 0.5 * R_BIG)
    return int(is_yin)


def yinyang_points(n_samples: int, *, seed: int):
    """Sample Yin-Yang points with the published rejection scheme.

    For each sample a target class is drawn uniformly from {0, 1, 2}; points are drawn uniformly in the square
    ``[0, 1]^2`` until one falls inside the circle of radius 0.5 around (0.5, 0.5) and belongs to the target class,
    so the classes are balanced in expectation. The random stream is ``np.random.RandomState(seed)`` consumed in the
    same order as the reference implementation, so its published splits are reproduced exactly (train: 5000
    samples, seed 42; validation: 1000, seed 41; test: 1000, seed 40).

    Returns:
        ``(xy [n, 2] float64, labels [n] int64)``.
    """
    check_count("n_samples", n_samples)
    check_count("seed", seed, minimum=0)
    _check_memory(f"yinyang_points(n_samples={n_samples})", {"points and labels": 24 * n_samples})
    rng = np.random.RandomState(seed)
    xy = np.empty((n_samples, 2))
    labels = np.empty(n_samples, dtype=np.int64)
    for i in range(n_samples):
        goal = rng.randint(3)
        while True:
            x, y = (rng.rand(2) * 2.0 * R_BIG).tolist()
            if math.sqrt((x - R_BIG) ** 2 + (y - R_BIG) ** 2) > R_BIG:
                continue
            if _which_class(x, y) == goal:
                break
        xy[i] = x, y
        labels[i] = goal
    return xy, labels


def _check_memory(what, parts):
    """``_memory.check`` before allocating: numpy's own MemoryError names neither the call nor its argument."""
    from .. import _memory

    _memory.check(what, parts, np, "reduce n_samples (generate the data in parts); or raise the limit with "
                  "spikescan.set_memory_limit / SPIKESCAN_MEMORY_LIMIT if more memory is really there")


def yinyang(n_samples: int, *, seed: int, variant: str = "latency", t_min: float = 0.0, t_max: float = 30.0,
            t_bias: float = 0.0, delta: float = 0.5, onset_max: float = 20.0,
            dtype=np.float32) -> SpikeDataset:
    """Yin-Yang classification as a spike dataset (times in ms, 3 classes: yin, yang, dot).

    Each sample is a point ``(x, y)`` from :func:`yinyang_points`; its four inputs are ``(x, y, 1-x, 1-y)``, all in
    ``[0, 1]``. Channels 0-3 carry one spike per input, channel 4 a fifth, input-independent spike.

    ``variant="latency"`` (the published encoding): input ``v`` spikes at ``t_min + v * (t_max - t_min)`` and
    channel 4 is a bias spike at ``t_bias``. The class is readable from absolute spike times spread over
    ``[t_min, t_max]``.

    ``variant="timing"``: every sample gets a random onset ``o ~ U[0, onset_max]``; channel 4 is a reference spike
    at ``o`` and input ``v`` spikes at ``o + v * delta``. Absolute times span tens of ms and carry no class
    information; the class is only in the sub-millisecond offsets (``0 <= offset <= delta``, default 0.5 ms) of
    channels 0-3 relative to the reference spike (or to each other). Quantising times to bins much coarser than
    ``delta`` (see :func:`bin_times`) erases it. Points and labels are identical to the latency variant for the
    same seed; onsets come from a separate stream and are returned in ``meta["onset"]``.

    A ``MemoryError`` naming ``n_samples`` is raised before allocating when the data would not fit
    (``spikescan.set_memory_limit``); a ``UserWarning`` says so when rounding to ``dtype`` moves the timing
    variant's spikes by more than 0.1% of ``delta`` (float32 far from zero).

    Returns:
        SpikeDataset with ``times [n, 5, 1]`` (``dtype``: float32 or float64; ms) and ``labels [n]`` int64.
    """
    check_choice("variant", variant, ("latency", "timing"))
    dtype = float_dtype(dtype)
    check_count("n_samples", n_samples)
    # Per sample: points and labels 24 B; float64 inputs, times and the temporaries that build them (a peak of 120-190
    # B measured with tracemalloc, counted as 192); the result's 5 spikes in dtype.
    _check_memory(f"yinyang(n_samples={n_samples}, {np.dtype(dtype).name})",
                  {"points and labels": 24 * n_samples, "float64 inputs, times and temporaries": 192 * n_samples,
                   "spike tensor": 5 * np.dtype(dtype).itemsize * n_samples})
    xy, labels = yinyang_points(n_samples, seed=seed)
    values = np.concatenate([xy, 1.0 - xy], axis=1)
    meta = {"values": values}
    if variant == "latency":
        check_positive("t_min", t_min, allow_zero=True)
        check_positive("t_bias", t_bias, allow_zero=True)
        check_positive("t_max", t_max)
        if t_max <= t_min:
            raise ValueError(f"t_max must be > t_min, got t_max={t_max!r}, t_min={t_min!r}")
        times = np.concatenate([t_min + values * (t_max - t_min), np.full((n_samples, 1), float(t_bias))], axis=1)
    else:
        check_positive("delta", delta)
        check_positive("onset_max", onset_max, allow_zero=True)
        onset = np.random.default_rng([seed, 1]).uniform(0.0, onset_max, size=(n_samples, 1))
        times = np.concatenate([onset + values * delta, onset], axis=1)
        meta["onset"] = onset[:, 0]
    with np.errstate(over="ignore"):  # an overflow is refused below
        out = times[:, :, None].astype(dtype)
    names = ("t_max", "t_bias") if variant == "latency" else ("onset_max", "delta")
    latest = float(t_max) if variant == "latency" else float(onset_max) + float(delta)
    if latest < float(np.finfo(dtype).tiny):  # as encode.latency: the times would round to 0 or lose their order
        raise ValueError(f"spike times up to {latest!r} are below the smallest normal {np.dtype(dtype).name} "
                         f"({float(np.finfo(dtype).tiny)!r}): they would round to 0 or lose their order; raise "
                         f"{' or '.join(names)}, or use another time unit")
    if not np.isfinite(out).all():  # a spike time beyond the dtype would become the +inf of padding
        raise ValueError(f"spike times up to {float(times.max())!r} do not fit in {np.dtype(dtype).name} (largest "
                         f"{float(np.finfo(dtype).max)!r}): lower {' or '.join(names)}, or use dtype=np.float64")
    if variant == "timing" and n_samples:
        # The class lives in offsets of at most delta: rounding far from zero (float32's spacing is t * 6e-8) can
        # blur or merge them, silently, unless said.
        moved = float(np.max(np.abs(out[:, :, 0].astype(np.float64) - times)))
        if moved > 1e-3 * float(delta):
            warnings.warn(f"yinyang(variant='timing'): rounding the spike times to {np.dtype(dtype).name} moved them "
                          f"by up to {moved:.3g} ms, {moved / float(delta):.2%} of delta={delta!r}, the range of the "
                          f"offsets that carry the class; use dtype=np.float64, a larger delta or a smaller onset_max",
                          UserWarning, stacklevel=2)
    return SpikeDataset(out, labels, CLASS_NAMES, "ms", {}, meta)
