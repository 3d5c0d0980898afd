"""Linear recurrences ``x_p = A_p x_{p-1} + e_p`` along the last axis: a plain loop and an associative scan.

Matrices are stored entry-first: ``A [d, d, ..., P]`` and ``e [d, ..., P]``, so every entry is one contiguous array
and a matrix product is ``d^3`` whole-array multiply-adds (far faster in NumPy than stacks of tiny ``matmul``).
Both functions return every state ``x [d, ..., P]`` from ``x_{-1} = x0`` (forward) or, with ``reverse=True``,
every ``y_p = A_p y_{p+1} + e_p`` from ``y_P = x0``; ``x0`` defaults to zero.

The scan composes affine maps, ``(A2, e2) o (A1, e1) = (A2 A1, A2 e1 + e2)``, which is associative, so all prefixes
come from ``ceil(log2 P)`` doubling steps (Hillis-Steele): the NumPy counterpart of the warp scans in the CUDA
kernels. The loop is its reference.
"""

from __future__ import annotations

import numpy as np


def _matvec(A, x):
    d = len(x)
    return [sum(A[i][k] * x[k] for k in range(d)) for i in range(d)]


def recurrence_loop(A, e, x0=None, reverse=False):
    """Evaluate the recurrence step by step (``P`` iterations, vectorised over the middle axes)."""
    P = e.shape[-1]
    # One small batched matmul per step: move the matrix axes last and the step axis first.
    At = np.ascontiguousarray(np.moveaxis(A, (0, 1, -1), (-2, -1, 0)))
    et = np.ascontiguousarray(np.moveaxis(e, (0, -1), (-1, 0)))
    out = np.empty(et.shape)
    x = np.zeros(et.shape[1:]) if x0 is None else np.moveaxis(np.asarray(x0, np.float64), 0, -1)
    for p in (range(P - 1, -1, -1) if reverse else range(P)):
        x = np.matmul(At[p], x[..., None])[..., 0] + et[p]
        out[p] = x
    return np.moveaxis(out, (0, -1), (-1, 0))


def affine_scan(A, e, reverse=False):
    """Inclusive scan of affine maps: the composed map of every prefix, ``(A_cum, e_cum)`` (same layout).

    Forward: entry ``p`` is ``T_p o ... o T_0``; reverse: ``T_p o ... o T_{P-1}``, where ``T_p(x) = A_p x + e_p``.
    """
    d, P = e.shape[0], e.shape[-1]
    A = [[np.array(A[i, k], np.float64) for k in range(d)] for i in range(d)]
    e = [np.array(e[i], np.float64) for i in range(d)]
    shift = 1
    while shift < P:
        # reverse: new[p] = T_p o cum[p + shift]; forward: new[p] = cum[p] o cum[p - shift].
        outer = np.s_[..., :-shift] if reverse else np.s_[..., shift:]
        inner = np.s_[..., shift:] if reverse else np.s_[..., :-shift]
        Ao = [[A[i][k][outer] for k in range(d)] for i in range(d)]
        Ai = [[A[i][k][inner] for k in range(d)] for i in range(d)]
        A_new = [[sum(Ao[i][m] * Ai[m][k] for m in range(d)) for k in range(d)] for i in range(d)]
        e_new = [x + e[i][outer] for i, x in enumerate(_matvec(Ao, [e[m][inner] for m in range(d)]))]
        for i in range(d):
            e[i][outer] = e_new[i]
            for k in range(d):
                A[i][k][outer] = A_new[i][k]
        shift *= 2
    return A, e


def recurrence_scan(A, e, x0=None, reverse=False):
    """Same result as ``recurrence_loop``, computed by ``affine_scan``."""
    A_cum, e_cum = affine_scan(A, e, reverse=reverse)
    if x0 is None:
        return np.stack(e_cum)
    d = len(e_cum)
    x0 = [np.asarray(x0[k], np.float64)[..., None] for k in range(d)]
    return np.stack([x + e_cum[i] for i, x in enumerate(_matvec(A_cum, x0))])
