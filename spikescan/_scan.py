"""Linear recurrences ``x_p = A_p x_{p-1} + e_p`` along an axis: a plain loop and an associative scan.

Both take ``A [..., P, d, d]`` and ``e [..., P, d]`` and return every state ``x_p`` (``[..., P, d]``) from
``x_{-1} = x0`` (forward) or, with ``reverse=True``, every ``y_p = A_p y_{p+1} + e_p`` from ``y_P = x0``.

The scan composes affine maps, ``(A2, e2) o (A1, e1) = (A2 A1, A2 e1 + e2)``, which is associative, so all prefixes
come from ``log2 P`` doubling steps (Hillis-Steele) of whole-array operations: the NumPy counterpart of the warp
scans in the CUDA kernels. The loop is its reference.
"""

from __future__ import annotations

import numpy as np


def _apply(A, x):
    return np.matmul(A, x[..., None])[..., 0]


def recurrence_loop(A, e, x0=None, reverse=False):
    """Evaluate the recurrence step by step (``P`` iterations, vectorised over the leading axes)."""
    P, d = e.shape[-2], e.shape[-1]
    out = np.empty(e.shape, dtype=np.float64)
    x = np.zeros(e.shape[:-2] + (d,)) if x0 is None else np.asarray(x0, dtype=np.float64)
    steps = range(P - 1, -1, -1) if reverse else range(P)
    for p in steps:
        x = _apply(A[..., p, :, :], x) + e[..., p, :]
        out[..., p, :] = x
    return out


def affine_scan(A, e, reverse=False):
    """Inclusive scan of affine maps: returns ``(A_cum, e_cum)`` with the composed map of every prefix.

    Forward: ``A_cum[p], e_cum[p]`` is ``T_p o ... o T_0``; reverse: ``T_p o ... o T_{P-1}``, where
    ``T_p(x) = A_p x + e_p``. Depth ``ceil(log2 P)``.
    """
    A = np.array(A, dtype=np.float64)
    e = np.array(e, dtype=np.float64)
    P = e.shape[-2]
    shift = 1
    while shift < P:
        if reverse:
            # new[p] = T_p o cum[p + shift]
            later_A, later_e = A[..., :-shift, :, :], e[..., :-shift, :]
            earlier_A, earlier_e = A[..., shift:, :, :], e[..., shift:, :]
            A_new = np.matmul(later_A, earlier_A)
            e_new = _apply(later_A, earlier_e) + later_e
            A[..., :-shift, :, :] = A_new
            e[..., :-shift, :] = e_new
        else:
            # new[p] = cum[p] o cum[p - shift]
            later_A, later_e = A[..., shift:, :, :], e[..., shift:, :]
            earlier_A, earlier_e = A[..., :-shift, :, :], e[..., :-shift, :]
            A_new = np.matmul(later_A, earlier_A)
            e_new = _apply(later_A, earlier_e) + later_e
            A[..., shift:, :, :] = A_new
            e[..., shift:, :] = e_new
        shift *= 2
    return A, e


def recurrence_scan(A, e, x0=None, reverse=False):
    """Same result as ``recurrence_loop``, computed by ``affine_scan``."""
    A_cum, e_cum = affine_scan(A, e, reverse=reverse)
    if x0 is None:
        return e_cum
    return _apply(A_cum, np.broadcast_to(np.asarray(x0, np.float64)[..., None, :], e_cum.shape)) + e_cum
