"""Input generators shared by the CPU and GPU test suites."""

from __future__ import annotations

import numpy as np


def random_spikes(rng, batch, n_in, max_in, t_max=30.0, p_silent=0.2, dtype=np.float64):
    """``[batch, n_in, max_in]`` sorted spike times with random ``+inf`` padding."""
    t = rng.uniform(0.0, t_max, (batch, n_in, max_in))
    t[rng.random(t.shape) < p_silent] = np.inf
    return np.sort(t, axis=-1).astype(dtype)


def queue_of_length(rng, length, n_in=7, t_max=40.0, batch=2):
    """Exactly ``length`` input spikes per sample spread over ``n_in`` channels (queue length control)."""
    max_in = max(1, -(-length // n_in))
    t = np.full((batch, n_in * max_in), np.inf)
    for b in range(batch):
        t[b, :length] = rng.uniform(0.0, t_max, length)
    t = t.reshape(batch, max_in, n_in).transpose(0, 2, 1)
    return np.sort(t, axis=-1)


def weights(rng, n_in, n_out, mean=0.6, std=0.8):
    return rng.normal(mean, std, (n_in, n_out))


def direct_spike_currents(r):
    """``I`` at every recorded spike of a feed-forward ``lif_forward`` result with materialised queues, straight from
    its definition (the arrivals before it, decayed; ``O(spikes x entries)``), ``+inf`` where none."""
    res = r.residuals
    batch, n_out, S = r.times.shape
    out = np.full((batch, n_out, S), np.inf)
    for b in range(batch):
        for i in range(n_out):
            q = 0 if res.queue_times.shape[1] == 1 else i
            for m in range(int(min(r.counts[b, i], S))):
                k = res.spike_event[b, i, m]
                src = res.queue_index[b, q, :k] // max(res.input_shape[2], 1)
                out[b, i, m] = np.sum(res.weights[src, i]
                                      * np.exp(-(res.spike_times[b, i, m] - res.queue_times[b, q, :k])
                                               / res.tau_syn[i]))
    return out
