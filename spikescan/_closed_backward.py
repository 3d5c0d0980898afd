"""Feed-forward LIF backward in EventProp closed form (PERF.md section 3, P1c): ``lif_backward(method="closed")``.

Between two output spikes of a neuron the adjoint ``lambda = (lV, lI)`` of its state has no source (DESIGN.md section
6): at any time ``t`` of the span that ends at spike ``m`` (time ``T_m``) it is one decay back from that spike,
``lambda(t) = Phi(T_m - t)^T lambda_m^-`` with the gap map ``Phi(s) = [[a, c], [0, b]]`` (``neurons.lif.decay``), so
``lV(t) = a lV_m^-`` and ``lI(t) = c lV_m^- + b lI_m^-``. Every exponent is ``-(T_m - t) / tau <= 0``: the closed
form is anchored at the span's end and cannot overflow. An input arrival leaves ``lambda`` continuous, so the adjoint
just after queue entry ``k`` (weight ``w``, arrival ``t_k``) is that closed form at ``t_k``, and its contributions are

- ``d loss / d w = lI`` (the arrival adds ``w`` to ``I``),
- ``d loss / d t_k = lif.arrival_time_grad(w, lV, lI)``, which feeds ``input_times`` and ``delays``,
- with ``time_constant_grads``, ``lambda_m^-^T (d Phi(T_m - t_k) / d tau) (0, w)`` (``lif.decay_param_grads``): the
  integral ``int lambda . (dA/dtau) x dt`` over the span split by source (each arrival's own response, and the state
  ``(0, I)`` left by the spike that opens the span), ``d e^{A s} / d tau = int_0^s e^{A (s-u)} (dA/dtau) e^{A u} du``.

Only the spikes need a sequential step, last to first (vectorised over neurons, a Python step per spike slot): with
``lambda_m^+`` the adjoint just after spike ``m`` (one decay back from spike ``m + 1``, zero after the last recorded
spike: nothing later moves a recorded spike), its current ``I_m`` and crossing slope ``D_m =
lif.crossing_slope(I_m, threshold)``,

- ``gs_m = G_m + lif.reset_time_grad(lV_m^+, I_m)``, the total derivative of the loss by the spike's time
  (``G_m``: ``grad_times`` of the spike, plus what a grazing next spike passes on, see below),
- ``lV_m^- = lif.spike_adjoint(gs_m, D_m)``, ``lI_m^- = lI_m^+``, and ``d loss / d threshold += gs_m / D_m``.

The currents at the spikes come from the same per-entry decays: ``I_m = b(T_m - T_{m-1}) I_{m-1} + sum_k w_k
b(T_m - t_k)`` over the arrivals of span ``m`` (``I`` is unaffected by resets); each term is again anchored at the
span's end.

Which span an entry belongs to is the forward's own decision: spike ``m`` was found in the gap that ends at queue entry
``spike_event[m]``, after entries ``< spike_event[m]`` were applied, so entry ``k`` lies in the span of the first
recorded spike with ``spike_event > k``; entries at or after the last recorded spike's event are skipped. Ties
(simultaneous arrivals, a spike at an arrival's time) resolve as the forward resolved them.

A grazing spike (``D_m <= 0``) follows the rule of the other backwards (``_lif_numpy``): its implicit-function term is
dropped (``lV_m^- = 0``, no threshold term) and it only moves with the start of its gap, so its ``gs_m`` goes to the
time of the point before it: the arrival ``spike_event[m] - 1`` when an input precedes it, else the previous spike
(the same gap), whose ``G`` it joins. A ``GrazingSpikeWarning`` names them, as there.

Work: ``O(entries)`` vectorised NumPy (two exponentials per entry, four more with the time-constant gradients) plus
``O(max_spikes)`` Python steps per group of neurons. Memory: about ``_BYTES_PER_ENTRY`` bytes per queue entry of a
group (entries up to each neuron's last recorded spike), groups sized to ``_ENTRIES_PER_GROUP`` and the memory limit.
Recurrent layers are not covered (``NotImplementedError``).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from . import _memory
from ._lif_numpy import _Layout, threshold_grad, warn_grazing
from ._queue import materialised
from ._types import LIFGrads
from .neurons import lif

# Queue entries handled at once (summed over a group's neurons) and their working bytes: measured peak (tracemalloc,
# SHD-like layer with delays) about 170 bytes per entry, 350 with the time-constant terms.
_ENTRIES_PER_GROUP = 1 << 20
_BYTES_PER_ENTRY = 400


def lif_backward_closed(result, grad_times, input_times_grad=True, time_constant_grads=False, stacklevel=3):
    """``lif_backward`` of a feed-forward layer by the EventProp closed form; the outputs and warning of
    ``_lif_numpy.lif_backward``."""
    res = materialised(result.residuals)  # a compiled forward's permutation format: expanded
    if res.recurrent_log is not None:
        raise NotImplementedError("lif_backward(method='closed') covers feed-forward layers only; for a recurrent "
                                  "layer use method='sequential', 'scan' or 'auto'")
    batch, n_in, max_in = res.input_shape
    n_out = res.weights.shape[1]
    lay = _Layout(res.queue_times.shape, n_out, max_in)
    grads = {
        "weights": np.zeros(n_in * n_out),
        "input_times": np.zeros(batch * n_in * max_in) if input_times_grad else None,
        "delays": None if res.delays is None else np.zeros(n_in * n_out),
        "threshold": np.zeros(n_out),
        "tau_mem": np.zeros(n_out) if time_constant_grads else None,
        "tau_syn": np.zeros(n_out) if time_constant_grads else None,
        "grazing": [],
    }
    for neurons, n_rec, n_entries in _groups(res, input_times_grad):
        _group(res, grad_times, neurons, n_rec, n_entries, lay, grads)
    if grads["grazing"]:
        _, first, t_first = grads["grazing"][0]  # groups ascend in neuron index
        # stacklevel 3 (called by spikescan.lif_backward; 4 through _lif_numpy.lif_backward): its caller.
        warn_grazing(sum(c for c, _, _ in grads["grazing"]), first, n_out, t_first, stacklevel=stacklevel)
    return LIFGrads(
        weights=grads["weights"].reshape(n_in, n_out).astype(res.weights_dtype),
        input_times=(grads["input_times"].reshape(batch, n_in, max_in).astype(res.input_dtype)
                     if input_times_grad else None),
        delays=None if res.delays is None else grads["delays"].reshape(n_in, n_out).astype(res.delays_dtype),
        threshold=threshold_grad(grads["threshold"], res), tau_mem=grads["tau_mem"], tau_syn=grads["tau_syn"])


def _groups(res, input_times_grad):
    """``(neurons, n_rec, n_entries)`` per group of flat neurons with a recorded spike, ascending: the spikes each
    records and the queue entries it needs (those before its last recorded spike); groups sized to
    ``_ENTRIES_PER_GROUP`` and to the memory limit beside the gradients' arrays."""
    batch, n_in, max_in = res.input_shape
    n_out = res.weights.shape[1]
    S = res.spike_times.shape[2]
    N = batch * n_out
    st = res.spike_times.reshape(N, S)
    se = res.spike_event.reshape(N, S)
    n_rec = np.isfinite(st).sum(axis=1)
    n_entries = np.where(n_rec > 0, se[np.arange(N), np.maximum(n_rec - 1, 0)], 0).astype(np.int64)
    most = int(n_entries.max(initial=0))
    if most == 0:
        return
    per_neuron = _BYTES_PER_ENTRY * (most + S)
    fits = _memory.fit_backward_group(batch, n_in, max_in, n_out, input_times_grad, res.delays is not None, N, N,
                                      per_neuron, S, np)
    budget = max(most, min(_ENTRIES_PER_GROUP, fits * most))
    cum = np.cumsum(n_entries)
    start = 0
    while start < N:
        done = cum[start - 1] if start else 0
        stop = min(max(start + 1, int(np.searchsorted(cum, done + budget, side="right"))), N)
        neurons = np.arange(start, stop)
        neurons = neurons[n_rec[neurons] > 0]
        if neurons.size:
            yield neurons, n_rec[neurons], n_entries[neurons]
        start = stop


class _Spans(NamedTuple):
    """A group's recorded spikes, the queue entries of their spans and the current at each spike (``_spans``);
    ``n`` flat neurons, ``S`` spike slots, ``E`` entries."""

    cols: Any     # [n] output neuron, time constants and threshold of each flat neuron
    tm: Any
    ts: Any
    th: Any
    T: Any        # [n, S] spike times, their events, whether recorded
    ev: Any
    rec: Any
    r: Any        # [E] flat neuron (of the group), queue position, source index and channel, weight, arrival time
    k: Any
    src_idx: Any
    j: Any
    w: Any
    t_k: Any
    sr: Any       # (neuron, slot) of each recorded spike, and [E] the one whose span holds each entry (index into sr)
    sm: Any
    spike: Any
    a: Any        # [E] decay from each entry to its span's spike
    b: Any
    c: Any
    gap: Any      # [n, S] time from the previous spike to each spike, and its decay
    ga: Any
    gb: Any
    gc: Any
    I_spk: Any    # [n, S] current at each spike


def _spans(res, neurons, n_rec, n_entries, lay):
    """``_Spans`` of flat neurons ``neurons`` (each with a recorded spike)."""
    n = neurons.size
    S = res.spike_times.shape[2]
    cols = lay.i[neurons]
    tm, ts, th = res.tau_mem[cols], res.tau_syn[cols], res.threshold[cols]
    T = res.spike_times.reshape(-1, S)[neurons]
    ev = res.spike_event.reshape(-1, S)[neurons]
    rec = np.arange(S)[None, :] < n_rec[:, None]

    # Every needed entry, flat: neuron r (of the group), queue position k < n_entries[r].
    total = int(n_entries.sum())
    r = np.repeat(np.arange(n), n_entries)
    k = np.arange(total) - np.repeat(np.cumsum(n_entries) - n_entries, n_entries)
    rows = lay.row[neurons][r]
    t_k = res.queue_times.reshape(-1, lay.L1)[rows, k]
    src_idx = res.queue_index.reshape(-1, lay.L1)[rows, k]
    j = src_idx // max(lay.max_in, 1)
    col = cols[r]
    w = res.weights[j, col]
    # The spike whose span holds entry k: the first recorded spike with spike_event > k. Recorded spikes are flat in
    # (neuron, slot) order, keyed like the entries, so one sorted search finds it.
    sr, sm = np.nonzero(rec)
    stride = lay.L1 + 1
    spike = np.searchsorted(sr * stride + ev[sr, sm], r * stride + k, side="right")
    a, b, c = lif.decay(T[sr, sm][spike] - t_k, tm[r], ts[r])

    # Currents at the spikes (forward, a step per slot): the arrivals of each span decayed to its end, plus the
    # current left by the previous spike decayed across the span.
    J = np.zeros((n, S))
    J[sr, sm] = np.bincount(spike, w * b, minlength=sr.size)
    gap = np.zeros((n, S))  # gap[:, m] = T_m - T_{m-1} (0 for m = 0 and unrecorded slots)
    gap[:, 1:] = np.where(rec[:, 1:], T[:, 1:] - np.where(rec[:, 1:], T[:, :-1], 0.0), 0.0)
    ga, gb, gc = lif.decay(gap, tm[:, None], ts[:, None])
    I_spk = np.zeros((n, S))
    I_spk[:, 0] = J[:, 0]
    for m in range(1, S):
        I_spk[:, m] = gb[:, m] * I_spk[:, m - 1] + J[:, m]
    return _Spans(cols, tm, ts, th, T, ev, rec, r, k, src_idx, j, w, t_k, sr, sm, spike, a, b, c, gap, ga, gb, gc,
                  I_spk)


def spike_currents(res):
    """``[batch, n_out, S]`` float64 synaptic current at each recorded spike of a feed-forward layer's NumPy
    residuals (materialised queues), ``nan`` where none was recorded: the arrivals of each span decayed to its
    spike, as the closed backward computes them."""
    batch, _, max_in = res.input_shape
    n_out = res.weights.shape[1]
    S = res.spike_times.shape[2]
    out = np.full((batch * n_out, S), np.nan)
    lay = _Layout(res.queue_times.shape, n_out, max_in)
    for neurons, n_rec, n_entries in _groups(res, False):
        sp = _spans(res, neurons, n_rec, n_entries, lay)
        out[neurons[sp.sr], sp.sm] = sp.I_spk[sp.sr, sp.sm]
    return out.reshape(batch, n_out, S)


def _group(res, grad_times, neurons, n_rec, n_entries, lay, grads):
    """Adds the gradients of flat neurons ``neurons`` (each with a recorded spike) to ``grads``."""
    n = neurons.size
    S = res.spike_times.shape[2]
    n_in, n_out = res.weights.shape
    (cols, tm, ts, th, T, ev, rec, r, _, src_idx, j, w, t_k, sr, sm, spike, a, b, c, gap, ga, gb, gc,
     I_spk) = _spans(res, neurons, n_rec, n_entries, lay)
    col = cols[r]
    g = np.where(rec, grad_times.reshape(-1, S)[neurons].astype(np.float64), 0.0)

    # Adjoint jumps, last spike to first.
    D = lif.crossing_slope(I_spk, th[:, None], tm[:, None])
    graze = rec & (D <= 0.0)
    D = np.where(rec & ~graze, D, 1.0)
    lV_minus, lI_minus = np.zeros((n, S)), np.zeros((n, S))
    carry = np.zeros((n, S))      # gs of a grazing spike passed to the previous spike of its gap
    to_entry = np.zeros((n, S))   # ... or to the arrival before it
    g_threshold = np.zeros(n)
    for m in range(S - 1, -1, -1):
        if m + 1 < S:  # zero where spike m + 1 is not recorded
            lV_plus = ga[:, m + 1] * lV_minus[:, m + 1]
            lI_plus = gc[:, m + 1] * lV_minus[:, m + 1] + gb[:, m + 1] * lI_minus[:, m + 1]
        else:
            lV_plus = lI_plus = np.zeros(n)
        gs = np.where(rec[:, m], g[:, m] + carry[:, m] + lif.reset_time_grad(lV_plus, I_spk[:, m], tm), 0.0)
        gz = graze[:, m]
        lV_minus[:, m] = np.where(gz, 0.0, lif.spike_adjoint(gs, D[:, m]))
        lI_minus[:, m] = lI_plus
        g_threshold += np.where(gz, 0.0, gs / D[:, m])
        if gz.any():
            same_gap = (ev[:, m - 1] == ev[:, m]) if m > 0 else np.zeros(n, bool)
            if m > 0:
                carry[:, m - 1] += np.where(gz & same_gap, gs, 0.0)
            to_entry[:, m] = np.where(gz & ~same_gap, gs, 0.0)
    if graze.any():
        r_g, m_g = np.nonzero(graze)
        grads["grazing"].append((int(r_g.size), int(neurons[r_g[0]]), float(T[r_g[0], m_g[0]])))
    lVm, lIm = lV_minus[sr, sm][spike], lI_minus[sr, sm][spike]
    lV = a * lVm
    lI = c * lVm + b * lIm

    grads["threshold"] += np.bincount(cols, g_threshold, minlength=n_out)
    flat_w = j * n_out + col
    grads["weights"] += np.bincount(flat_w, lI, minlength=n_in * n_out)
    if grads["input_times"] is not None or grads["delays"] is not None:
        arrival = lif.arrival_time_grad(w, lV, lI, tm[r], ts[r])
        if graze.any():
            # A grazing spike moves with the arrival before it (entry spike_event - 1 of the same neuron); entries of
            # one neuron are flat at offset + k.
            r_e, m_e = np.nonzero(to_entry)
            offset = np.cumsum(n_entries) - n_entries
            pos = ev[r_e, m_e] - 1
            ok = pos >= 0  # (no input before a spike cannot happen: V = I = 0 until the first arrival)
            np.add.at(arrival, offset[r_e[ok]] + pos[ok], to_entry[r_e[ok], m_e[ok]])
        if grads["input_times"] is not None:
            flat_in = lay.b[neurons][r] * (n_in * max(lay.max_in, 1)) + src_idx
            grads["input_times"] += np.bincount(flat_in, arrival, minlength=grads["input_times"].size)
        if grads["delays"] is not None:
            grads["delays"] += np.bincount(flat_w, arrival, minlength=n_in * n_out)
    if grads["tau_mem"] is not None:
        # Each arrival's response (0, w) and the state (0, I_{m-1}) left by the spike opening span m, against the
        # adjoint before the span's spike through the derivative of the span's map.
        a_tm, c_tm, b_ts, c_ts = lif.decay_param_grads(T[sr, sm][spike] - t_k, tm[r], ts[r])
        e_tm = lVm * c_tm * w
        e_ts = (lVm * c_ts + lIm * b_ts) * w
        s_tm, s_cm, s_bs, s_cs = lif.decay_param_grads(gap[:, 1:], tm[:, None], ts[:, None])
        I_prev = I_spk[:, :-1]
        sp_tm = np.where(rec[:, 1:], lV_minus[:, 1:] * s_cm * I_prev, 0.0)
        sp_ts = np.where(rec[:, 1:], (lV_minus[:, 1:] * s_cs + lI_minus[:, 1:] * s_bs) * I_prev, 0.0)
        per_tm = np.bincount(r, e_tm, minlength=n) + sp_tm.sum(axis=1)
        per_ts = np.bincount(r, e_ts, minlength=n) + sp_ts.sum(axis=1)
        grads["tau_mem"] += np.bincount(cols, per_tm, minlength=n_out)
        grads["tau_syn"] += np.bincount(cols, per_ts, minlength=n_out)
