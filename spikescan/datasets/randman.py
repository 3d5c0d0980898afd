"""Random manifolds (randman): a synthetic spike-timing classification task whose classes differ only in when each
channel fires, after Zenke & Vogels (2021), "The remarkable robustness of surrogate gradient learning for
instilling complex function in spiking neural networks" (Neural Computation 33(4)).

Each class is a smooth random map ``f: [0, 1]^dim_manifold -> [0, 1]^n_channels``; a sample draws a point ``x``
uniformly and channel ``c`` fires at ``duration * f_c(x)``. Every channel fires once (``n_spikes`` times with one map
per spike) in every class, so spike counts carry no information: only the times do. ``alpha`` sets the smoothness
(the spectrum of the random Fourier series falls as ``1 / k^alpha``) and ``dim_manifold`` the difficulty.

The construction is that of the original code (a product over manifold dimensions of random Fourier series with
``ceil(1e-3^(-1/alpha))`` terms, at most 1000, and no constant term), in NumPy with continuous times (the original
rounds them to time steps) and one difference so that splits drawn with different ``seed`` share one task: each
channel is scaled to ``[0, 1]`` by its minimum and maximum over a fixed grid of the manifold (the original uses the
generated samples), and the rare value of a sample between grid points that falls outside is clipped to it.
"""

from __future__ import annotations

import math

import numpy as np

from ._core import SpikeDataset, check_count, check_positive, float_dtype

PRECISION = 1e-3  # the spectrum is cut where 1 / k^alpha falls below it
MAX_TERMS = 1000
GRID_POINTS = 4096  # points of the scaling grid (the nearest power per dimension)


MAX_SMOOTHNESS = 1000  # alpha * dim_manifold above this: the maps' values (about 2**-(alpha * dim)) underflow float64
MAX_DIM = 32  # NumPy's most dimensions (the scaling grid's meshgrid), far beyond what the memory check lets through


def _terms(alpha):
    try:
        return int(min(math.ceil(PRECISION ** (-1.0 / alpha)), MAX_TERMS))
    except OverflowError:  # a tiny alpha: far more than MAX_TERMS terms above the cut
        return MAX_TERMS


def _manifold_params(n_classes, n_spikes, n_channels, dim_manifold, alpha, manifold_seed):
    """``[n_classes, n_spikes, n_channels, dim_manifold, 3, terms]`` uniform parameters (amplitude, frequency,
    phase) of every class's maps, without the constant term."""
    rng = np.random.default_rng(manifold_seed)
    params = rng.random((n_classes, n_spikes, n_channels, dim_manifold, 3, _terms(alpha)))
    params[..., 0, 0] = 0.0  # no constant term (the first term's sine has frequency 0)
    return params


CHUNK_ELEMENTS = 1 << 22  # points are evaluated in chunks of at most this many (point, channel, term) entries


def _evaluate(params, x, alpha):
    """``f(x)`` for points ``x [n, dim_manifold]`` and one map's parameters ``[n_channels, dim_manifold, 3, terms]``:
    ``[n, n_channels]``, in chunks of points (32 MiB of sines at a time)."""
    n_channels, terms = params.shape[0], params.shape[-1]
    k = np.arange(terms)
    spectrum = 1.0 / (k + 1.0) ** alpha
    out = np.ones((len(x), n_channels))
    step = max(1, CHUNK_ELEMENTS // (n_channels * terms))
    for d in range(params.shape[1]):
        amplitude, frequency, phase = params[:, d, 0], params[:, d, 1], params[:, d, 2]  # [channels, terms]
        for start in range(0, len(x), step):
            part = slice(start, start + step)
            arg = 2.0 * np.pi * (x[part, d, None, None] * (k * frequency)[None] + phase[None])  # [n, channels, terms]
            out[part] *= np.einsum("nct,ct->nc", np.sin(arg), amplitude * spectrum)
    return out


def _grid_size(dim_manifold):
    """``(points per dimension, points)`` of the scaling grid: about GRID_POINTS, but at least 2 per dimension, so
    ``2**dim_manifold`` points from ``dim_manifold`` 13 on."""
    per_dim = max(2, int(round(GRID_POINTS ** (1.0 / dim_manifold))))
    return per_dim, per_dim ** dim_manifold


def _grid(dim_manifold):
    per_dim, _ = _grid_size(dim_manifold)
    axes = np.linspace(0.0, 1.0, per_dim)
    return np.stack([g.ravel() for g in np.meshgrid(*([axes] * dim_manifold), indexing="ij")], axis=1)


def memory_estimate(n_samples, n_classes, n_channels, dim_manifold, n_spikes, alpha, itemsize):
    """Peak bytes of ``randman``'s large arrays, by part (float64 unless said): an upper bound, checked before any
    is allocated.

    - ``manifold parameters``: amplitude, frequency and phase of every term of every map;
    - ``scaling grid``: the grid's coordinates (the meshgrid and its stack);
    - ``maps on the scaling grid``: two maps' values on it (the last class's are held while the next are computed);
    - ``evaluation chunks``: the arguments and sines of the chunk of points evaluated at once, with the last
      chunk's arguments (four arrays of points x channels x terms);
    - ``samples``: labels and points, and the larger of the class-by-class evaluation (the values of every sample
      with three arrays of one class's) and the last steps (the values, scaled, sorted and cast to the result's
      dtype).
    """
    terms = _terms(alpha)
    _, grid = _grid_size(dim_manifold)
    per_class = -(-n_samples // n_classes)  # the largest class
    step = max(1, CHUNK_ELEMENTS // (n_channels * terms))
    values = n_samples * n_channels * n_spikes
    return {"manifold parameters": 8 * n_classes * n_spikes * n_channels * dim_manifold * 3 * terms,
            "scaling grid": 16 * dim_manifold * grid,
            "maps on the scaling grid": 2 * 8 * grid * n_channels,
            "evaluation chunks": 4 * 8 * min(step, max(grid, per_class)) * n_channels * terms,
            "samples": 8 * n_samples * (3 + dim_manifold)
            + max(8 * values + 3 * 8 * per_class * n_channels, (16 + max(8, itemsize)) * values)}


def _advice(parts, dim_manifold):
    biggest = max(parts, key=parts.get)
    grid = _grid_size(dim_manifold)[1]
    if biggest == "maps on the scaling grid" and grid > 2 * GRID_POINTS:  # the grid, not the channels, is too large
        biggest = "scaling grid"
    tips = {"manifold parameters": "reduce n_classes, n_spikes or n_channels (the maps' parameters grow with their "
                                   "product), or raise alpha (fewer terms)",
            "scaling grid": (f"reduce dim_manifold (the scaling grid has 2**dim_manifold points from 13 on: {grid} "
                             "here; its coordinates grow with dim_manifold and its maps' values with n_channels "
                             "times its points)"),
            "maps on the scaling grid": (f"reduce n_channels (the maps' values on the scaling grid of {grid} points "
                                         "grow with it)"),
            "evaluation chunks": "reduce n_channels, or raise alpha (fewer terms)",
            "samples": "reduce n_samples (draw the split in parts with different seeds), n_channels or n_spikes "
                       "(the spike times grow with n_samples * n_channels * n_spikes)"}
    return tips[biggest] + ("; or raise the limit with spikescan.set_memory_limit / SPIKESCAN_MEMORY_LIMIT if more "
                            "memory is really there")


def randman(n_samples: int, *, seed: int, manifold_seed: int = 0, n_classes: int = 10, n_channels: int = 100,
            dim_manifold: int = 2, n_spikes: int = 1, alpha: float = 2.0, duration: float = 50.0,
            dtype=np.float32) -> SpikeDataset:
    """Random-manifold spike-timing classification (module docstring): ``n_samples`` samples, classes balanced
    (``n_samples // n_classes`` each, the remainder to the first classes) in random order.

    Args:
        n_samples: samples to draw.
        seed: seed of the samples (points and order); use different seeds for the training and test splits.
        manifold_seed: seed of the classes' maps: the task itself (the same for every split of one task).
        n_classes, n_channels: classes and input channels.
        dim_manifold: dimension of each class's manifold (2, the original code's default; 1 is easier, 3 harder),
            at most 32.
        n_spikes: spikes per channel and sample, each from a map of its own.
        alpha: smoothness (> 0): larger is smoother and easier; ``alpha * dim_manifold`` at most 1000, beyond which
            the maps' values underflow float64 and every spike time would be 0.
        duration: positive length of the input window; spike times lie in ``[0, duration]`` (ms).
        dtype: float32 or float64.

    Returns:
        SpikeDataset with ``times [n, n_channels, n_spikes]`` (ascending per channel), ``labels [n]`` int64 and
        ``meta["points"] [n, dim_manifold]``, the manifold coordinates of each sample.

    The memory it needs (:func:`memory_estimate`) is checked before anything large is allocated: a ``MemoryError``
    names the estimate by part and what to reduce when it exceeds the limit (``spikescan.set_memory_limit``,
    ``SPIKESCAN_MEMORY_LIMIT``, else the memory the system reports available).
    """
    check_count("n_samples", n_samples)
    check_count("seed", seed, minimum=0)
    check_count("manifold_seed", manifold_seed, minimum=0)
    check_count("n_classes", n_classes)
    check_count("n_channels", n_channels)
    check_count("dim_manifold", dim_manifold)
    check_count("n_spikes", n_spikes)
    check_positive("alpha", alpha)
    check_positive("duration", duration)
    dtype = float_dtype(dtype)
    if duration > float(np.finfo(dtype).max):  # spike times up to it would become the +inf of padding
        raise ValueError(f"duration={duration!r} does not fit in {np.dtype(dtype).name} (largest "
                         f"{float(np.finfo(dtype).max)!r}), so spike times near it would become the +inf of padding: "
                         "lower duration, or use dtype=np.float64")
    if duration < float(np.finfo(dtype).tiny):  # as encode.latency: the times would round to 0 or lose their order
        raise ValueError(f"duration={duration!r} is below the smallest normal {np.dtype(dtype).name} "
                         f"({float(np.finfo(dtype).tiny)!r}), so spike times would round to 0 or lose their order: "
                         "raise duration (another time unit)")
    if dim_manifold > MAX_DIM:
        raise ValueError(f"dim_manifold must be <= {MAX_DIM}, got {dim_manifold!r} (the scaling grid alone would "
                         f"have 2**{dim_manifold} points)")
    if alpha * dim_manifold > MAX_SMOOTHNESS:
        raise ValueError(f"alpha * dim_manifold must be <= {MAX_SMOOTHNESS}, got alpha={alpha!r} with "
                         f"dim_manifold={dim_manifold}: the maps' values (about 2**-(alpha * dim_manifold)) would "
                         "underflow float64 and every spike time would be 0; lower alpha")
    from .. import _memory

    parts = memory_estimate(n_samples, n_classes, n_channels, dim_manifold, n_spikes, alpha, dtype.itemsize)
    _memory.check(f"randman(n_samples={n_samples}, n_classes={n_classes}, n_channels={n_channels}, "
                  f"dim_manifold={dim_manifold}, n_spikes={n_spikes}, alpha={alpha!r})", parts, np,
                  _advice(parts, dim_manifold))
    params = _manifold_params(n_classes, n_spikes, n_channels, dim_manifold, alpha, manifold_seed)
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n_samples) % n_classes).astype(np.int64)
    points = rng.random((n_samples, dim_manifold))
    grid = _grid(dim_manifold)
    values = np.empty((n_samples, n_channels, n_spikes))
    for k in range(n_classes):
        mine = labels == k
        for s in range(n_spikes):
            ref = _evaluate(params[k, s], grid, alpha)
            low, span = ref.min(axis=0), ref.max(axis=0) - ref.min(axis=0)
            span[span == 0] = 1.0
            values[mine, :, s] = np.clip((_evaluate(params[k, s], points[mine], alpha) - low) / span, 0.0, 1.0)
    times = np.sort(values * duration, axis=-1).astype(dtype)
    return SpikeDataset(times, labels, tuple(f"manifold {k}" for k in range(n_classes)), "ms", {},
                        {"points": points})
