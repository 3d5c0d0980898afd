"""Baseline for ``bench_lif_cuda.py --jax``: the 2 x 512 SHD network (delays) in JAX with ``lax.associative_scan``.

The method of the Bullet Trains paper written with JAX primitives and differentiated by ``jax.grad``: per layer, the
per-neuron queues (arrival = input time + delay, sorted), then a fixed number of outer steps; each step takes the next
``K`` events of every neuron, composes their affine maps with ``jax.lax.associative_scan``, tests every gap, solves the
first firing gap by a fixed number of Newton steps, resets, and records the spike. The budget
``ceil(L / K) + max_spikes + 1`` steps is enough for every recorded spike (each step commits ``K`` events or emits one
spike). Steps are rematerialised (``jax.checkpoint``) so the backward stores only the per-step carry.

``compare`` times it against spikescan's CUDA kernels on the same network (forward + backward of both layers) and
returns a dict; it returns ``{"skipped": reason}`` when JAX has no GPU. float32 in JAX (its default); spikescan
computes in float64 internally. The readout layer is left out of both; both differentiate the parameters (weights
and delays of both layers), not the input spikes. spikescan is timed in each configuration of
``SPIKESCAN_VARIANTS`` side by side (report key ``spikescan_variants``): the default one, which gives
``speedup_spikescan_over_jax``, and the opt-in kernels (warp backward, delayed queues by ``kernels/queue.cu``), each
checked to give the default's spike counts and weight gradients before it is timed.
"""

from __future__ import annotations

import math
import os
import time

import numpy as np

TAU_MEM, TAU_SYN, THRESHOLD = 20.0, 5.0, 1.0
N_IN, HIDDEN, SPIKES, MAX_SPIKES, K, NEWTON_STEPS = 700, 512, 5000, 16, 32, 12


def _safe(x, ok, fill):
    import jax.numpy as jnp

    return jnp.where(ok, x, fill)


def make_layer(L, n_out, max_spikes, K=K, tau_mem=TAU_MEM, tau_syn=TAU_SYN, threshold=THRESHOLD):
    """A function ``(queue_arrival [B, n_out, L], queue_w [B, n_out, L]) -> spike times [B, n_out, max_spikes]``."""
    import jax
    import jax.numpy as jnp
    from jax import lax

    tm, ts, th = tau_mem, tau_syn, threshold
    r = ts / (tm - ts)  # tau_mem != tau_syn here
    n_steps = math.ceil(L / K) + max_spikes + 1

    def decay(s):
        fin = jnp.isfinite(s)
        s0 = _safe(s, fin, 0.0)
        a = _safe(jnp.exp(-s0 / tm), fin, 0.0)
        b = _safe(jnp.exp(-s0 / ts), fin, 0.0)
        return a, b, r * (a - b)

    def combine(e1, e2):  # e2 after e1
        a1, c1, b1, v1, i1 = e1
        a2, c2, b2, v2, i2 = e2
        return a2 * a1, a2 * c1 + c2 * b1, b2 * b1, a2 * v1 + c2 * i1 + v2, b2 * i1 + i2

    def layer(qt, qw):
        B = qt.shape[0]
        pad_t = jnp.full((B, n_out, K + 1), jnp.inf, qt.dtype)
        qt = jnp.concatenate([qt, pad_t], axis=-1)
        qw = jnp.concatenate([qw, jnp.zeros_like(pad_t)], axis=-1)
        lanes = jnp.arange(K)

        @jax.checkpoint
        def step(carry, _):
            V, I, t0, pos, count, spikes = carry
            idx = jnp.minimum(pos, L)[..., None] + lanes
            t = jnp.take_along_axis(qt, idx, axis=-1)
            w = jnp.take_along_axis(qw, idx, axis=-1)
            t_prev = jnp.concatenate([t0[..., None], t[..., :-1]], axis=-1)
            both_inf = jnp.isinf(t_prev)
            gap = jnp.where(both_inf, 0.0, t - _safe(t_prev, ~both_inf, 0.0))
            a, b, c = decay(gap)
            A, C, Bm, EV, EI = lax.associative_scan(combine, (a, c, b, jnp.zeros_like(w), w), axis=-1)
            V_after = A * V[..., None] + C * I[..., None] + EV
            I_after = Bm * I[..., None] + EI
            V0 = jnp.concatenate([V[..., None], V_after[..., :-1]], axis=-1)
            I0 = jnp.concatenate([I[..., None], I_after[..., :-1]], axis=-1)
            # Gap test (DESIGN.md section 2).
            rising = (I0 > 0) & (I0 > V0)
            ratio = jnp.where(rising, V0 / _safe(I0, rising, 1.0), 0.0)
            z = (1.0 - ts / tm) * (ratio - 1.0)
            has_peak = rising & (1.0 + z > 0) & (z != 0)
            zs = _safe(z, has_peak, 1.0)
            s_peak = jnp.where(has_peak, ts * (1.0 - ratio) * jnp.log1p(zs) / zs, jnp.inf)
            s_hi = jnp.minimum(s_peak, gap)
            fin = jnp.isfinite(s_hi) & (s_hi > 0)
            s_hi0 = _safe(s_hi, fin, 0.0)
            a_h, _, c_h = decay(s_hi0)
            fires = fin & (a_h * V0 + c_h * I0 >= th) & rising
            any_fire = fires.any(axis=-1)
            f = jnp.argmax(fires, axis=-1)[..., None]
            pick = lambda x: jnp.take_along_axis(x, f, axis=-1)[..., 0]  # noqa: E731
            v0, i0, hi = pick(V0), pick(I0), pick(s_hi0)
            # Newton from 0 (concave rising branch: monotone, no overshoot), clipped to the bracket.
            s = jnp.zeros_like(v0)
            for _ in range(NEWTON_STEPS):
                a_s, b_s, c_s = decay(s)
                v = a_s * v0 + c_s * i0
                slope = (b_s * i0 - v) / tm
                ok = any_fire & (slope > 0)
                s = jnp.where(ok, jnp.minimum(s + (th - v) / _safe(slope, ok, 1.0), hi), s)
            t_spike = pick(t_prev) + s
            _, b_sp, _ = decay(s)
            record = any_fire & (count < max_spikes)
            slot = jnp.arange(max_spikes) == count[..., None]
            spikes = jnp.where(record[..., None] & slot, t_spike[..., None], spikes)
            V = jnp.where(any_fire, 0.0, V_after[..., -1])
            I = jnp.where(any_fire, i0 * b_sp, I_after[..., -1])
            t0 = jnp.where(any_fire, t_spike, t[..., -1])
            pos = jnp.where(any_fire, pos + f[..., 0].astype(pos.dtype), pos + K)
            count = count + any_fire.astype(count.dtype)
            return (V, I, t0, pos, count, spikes), None

        zeros = jnp.zeros((B, n_out), qt.dtype)
        init = (zeros, zeros, zeros, jnp.zeros((B, n_out), jnp.int32), jnp.zeros((B, n_out), jnp.int32),
                jnp.full((B, n_out, max_spikes), jnp.inf, qt.dtype))
        (_, _, _, _, _, spikes), _ = lax.scan(step, init, None, length=n_steps)
        return spikes

    return layer


def queues(times, W, D, L):
    """Per-neuron sorted queues of the first ``L`` arrivals: ``[B, n_out, L]`` times and weights (differentiable)."""
    import jax.numpy as jnp
    from jax import lax

    B, n_in, S = times.shape
    n_out = W.shape[1]
    arrival = (times[:, :, :, None] + D[None, :, None, :]).reshape(B, n_in * S, n_out).transpose(0, 2, 1)
    w = jnp.broadcast_to(W.T[None, :, :, None], (B, n_out, n_in, S)).reshape(B, n_out, n_in * S)
    order = jnp.argsort(lax.stop_gradient(arrival), axis=-1)[..., :L]
    return jnp.take_along_axis(arrival, order, axis=-1), jnp.take_along_axis(w, order, axis=-1)


def make_network(L1, L2, max_spikes=MAX_SPIKES, hidden=HIDDEN):
    """Loss of the 2-layer network: sum of the finite output spike times of layer 2, and its gradient function."""
    import jax
    import jax.numpy as jnp

    layer1 = make_layer(L1, hidden, max_spikes)
    layer2 = make_layer(L2, hidden, max_spikes)

    def forward(params, times):
        W1, D1, W2, D2 = params
        s1 = layer1(*queues(times, W1, D1, L1))
        return s1, layer2(*queues(s1, W2, D2, L2))

    def loss(params, times):
        _, s2 = forward(params, times)
        fin = jnp.isfinite(s2)
        return jnp.sum(jnp.where(fin, s2, 0.0))

    return jax.jit(forward), jax.jit(jax.value_and_grad(loss))


def _inputs(batch, quick, seed=0):
    from bench_lif import shd_like_inputs

    spikes = 500 if quick else SPIKES
    hidden = 64 if quick else HIDDEN
    rng = np.random.default_rng(seed + 1)
    t, W1, D1 = shd_like_inputs(batch, N_IN, spikes, hidden, seed=seed, delays=True)
    W2 = rng.normal(0.0, 1.0, (hidden, hidden)) * 0.25 + 0.08
    D2 = rng.uniform(0.0, 25.0, (hidden, hidden))
    return t, (W1, D1, W2, D2), hidden


# spikescan configurations timed side by side: (lif_backward method, delayed queues by kernels/queue.cu).
# "default" is what a user gets; the others switch on the kernels that are opt-in until a GPU run has measured them.
SPIKESCAN_VARIANTS = {
    "default": ("auto", None),
    "warp_backward": ("scan", None),
    "warp_backward_queue_kernel": ("scan", True),
}


def _spikescan_network(t, params, max_spikes, backward="auto", queue_kernel=None):
    """Forward + backward of the same network with spikescan (CuPy): returns a function that runs it once.

    ``backward``: ``lif_backward(method=...)``; ``queue_kernel``: value of ``spikescan.cuda._queue.USE_KERNEL`` during
    the run (``None``: leave it)."""
    import cupy

    import spikescan as ss
    from spikescan.cuda import _queue

    W1, D1, W2, D2 = (cupy.asarray(p) for p in params)
    kw = dict(tau_mem=TAU_MEM, tau_syn=TAU_SYN, threshold=THRESHOLD, max_spikes=max_spikes)
    tt = cupy.asarray(t)

    def run():
        saved = _queue.USE_KERNEL
        if queue_kernel is not None:
            _queue.USE_KERNEL = queue_kernel
        try:
            r1 = ss.lif_forward(tt, W1, delays=D1, **kw)
            r2 = ss.lif_forward(r1.times, W2, delays=D2, **kw)
            g2 = ss.lif_backward(r2, cupy.isfinite(r2.times).astype(r2.times.dtype), method=backward)
            # The network's input spikes are data: like jax.grad of the parameters, no gradient for them.
            g1 = ss.lif_backward(r1, g2.input_times, method=backward, input_times_grad=False)
        finally:
            _queue.USE_KERNEL = saved
        cupy.cuda.get_current_stream().synchronize()
        return r1, r2, g1, g2

    return run


def _median_seconds(fn, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def compare(batch=256, repeats=3, quick=False):
    """Time the JAX baseline and spikescan on the 2-layer network (forward + backward). Never raises on a missing
    JAX GPU: returns ``{"skipped": reason}``."""
    # Allocate on demand: by default XLA reserves 75% of the device at start, next to CuPy's pool.
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    try:
        import jax
        import jax.numpy as jnp
    except Exception as exc:
        return dict(skipped=f"jax not importable: {exc!r}")
    try:
        gpus = jax.devices("gpu")
    except Exception as exc:
        gpus = []
        reason = repr(exc)
    if not gpus:
        return dict(skipped=f"jax has no GPU backend ({reason if 'reason' in locals() else 'no devices'})")
    import cupy

    t, params, hidden = _inputs(batch, quick)
    runs = {name: _spikescan_network(t, params, MAX_SPIKES, bwd, qk) for name, (bwd, qk) in SPIKESCAN_VARIANTS.items()}
    r1, r2, g1, _ = runs["default"]()
    # Static queue lengths for JAX: the longest real queue of each layer (known from the exact forward).
    L1 = int(np.isfinite(t).sum(axis=(1, 2)).max())
    L2 = int(cupy.isfinite(r1.times).sum(axis=(1, 2)).max())
    variants = {}
    for name, run in runs.items():
        if name != "default":  # warm-up (kernel compiles) and the same results as the default, else no timing
            v1, v2, h1, _ = run()
            if not (bool((v2.counts == r2.counts).all()) and
                    bool(cupy.allclose(h1.weights, g1.weights, rtol=1e-9, atol=1e-12))):
                variants[name] = dict(skipped="results differ from the default configuration")
                continue
            del v1, v2, h1
        variants[name] = dict(forward_backward_s=_median_seconds(run, repeats))
    ss_default = variants["default"]["forward_backward_s"]
    r2_counts = cupy.asnumpy(r2.counts)
    del r1, r2, g1
    cupy.get_default_memory_pool().free_all_blocks()  # hand spikescan's memory back before XLA allocates
    forward, value_and_grad = make_network(L1, L2, MAX_SPIKES, hidden)
    jparams = tuple(jnp.asarray(p, jnp.float32) for p in params)
    jt = jnp.asarray(t, jnp.float32)
    try:
        t0 = time.perf_counter()
        jax.block_until_ready(value_and_grad(jparams, jt))
        compile_s = time.perf_counter() - t0
        jax_times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            jax.block_until_ready(value_and_grad(jparams, jt))
            jax_times.append(time.perf_counter() - t0)
        _, s2 = forward(jparams, jt)
        agree = float(np.mean(np.asarray(jnp.isfinite(s2).sum(-1)) == np.minimum(r2_counts,
                                                                                   MAX_SPIKES)))
    except Exception as exc:  # e.g. out of memory at batch 256
        return dict(skipped=f"jax run failed: {type(exc).__name__}: {str(exc)[:300]}", batch=batch,
                    spikescan_forward_backward_s=ss_default)
    out = dict(batch=batch, hidden=hidden, layers=2, delays=True, max_spikes=MAX_SPIKES, chunk=K, queue_len=[L1, L2],
               jax_device=str(gpus[0]), jax_version=jax.__version__, jax_compile_s=compile_s,
               jax_forward_backward_s=float(np.median(jax_times)),
               spikescan_forward_backward_s=ss_default,
               fraction_of_neurons_with_equal_recorded_counts=agree)
    out["speedup_spikescan_over_jax"] = out["jax_forward_backward_s"] / out["spikescan_forward_backward_s"]
    for v in variants.values():
        if "forward_backward_s" in v:
            v["speedup_over_jax"] = out["jax_forward_backward_s"] / v["forward_backward_s"]
    out["spikescan_variants"] = {name: dict(backward=SPIKESCAN_VARIANTS[name][0],
                                            queue_kernel=bool(SPIKESCAN_VARIANTS[name][1]), **v)
                                 for name, v in variants.items()}
    return out
