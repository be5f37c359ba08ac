r"""Shared numerical solvers of the weighting methods (numpy, float64, on the CPU).

- :func:`balance`: the paper's balancing rule :math:`w_t = 1 - x_t / \sum_j x_j` (GB, LB);
- :func:`project_simplex`: Euclidean projection onto the probability simplex;
- :func:`min_norm_weights`: the min-norm point of the convex hull of the task
  gradients, from their Gram matrix (MGDA; CAGrad, MoCo, SDMGrad build on it).

The Gram-matrix solvers take a ``numpy`` array: ``gram.numpy()`` of the
``(T, T)`` float64 CPU tensor a :class:`~mtlweight.gradient_level.GramWeighting`
receives costs nothing.
"""

from __future__ import annotations

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor

__all__ = ["Array", "balance", "min_norm_weights", "project_simplex"]

Array = NDArray[np.float64]


def balance(values: Tensor) -> Tensor:
    r"""The paper's balancing rule :math:`w_t = 1 - x_t / \sum_j x_j`.

    When every :math:`x_t` is zero the weights are all :math:`1 - 1/T`, the
    value of the rule for equal :math:`x_t`. No device sync.

    Examples
    --------
    >>> import torch
    >>> balance(torch.tensor([1.0, 3.0]))
    tensor([0.7500, 0.2500])
    """
    # Finite values can have an infinite sum (float32 losses near 1e38): then
    # divide by the largest first. Otherwise the scale is exactly 1.
    overflow = ~torch.isfinite(values.sum())
    values = values / torch.where(overflow, values.max(), torch.ones_like(values[0]))
    total = values.sum()
    count = values.numel()
    safe = torch.where(total > 0, total, torch.ones_like(total))
    return torch.where(total > 0, 1.0 - values / safe, torch.full_like(values, 1.0 - 1.0 / count))


def project_simplex(v: Array) -> Array:
    r"""Euclidean projection of ``v`` onto the probability simplex.

    .. math::

        P_\Delta(v) = \operatorname*{arg\,min}_{w \ge 0,\ \sum_t w_t = 1} \lVert w - v \rVert_2
        = \max(v - \tau, 0)

    with the threshold :math:`\tau` found by sorting (Held, Wolfe and Crowder
    1974; Duchi et al. 2008), :math:`O(T \log T)`.

    Examples
    --------
    >>> import numpy as np
    >>> project_simplex(np.array([0.5, 2.0, -1.0]))
    array([0., 1., 0.])
    >>> project_simplex(np.array([0.2, 0.2]))
    array([0.5, 0.5])
    """
    v = np.asarray(v, dtype=np.float64)
    if v.ndim != 1 or v.size == 0:
        raise ValueError(f"project_simplex expects a non-empty vector; found shape {v.shape}")
    if not np.all(np.isfinite(v)):
        raise ValueError(f"project_simplex expects finite values; found {v}")
    u = np.sort(v)[::-1]
    cumulative = np.cumsum(u) - 1.0
    ranks = np.arange(1, v.size + 1)
    rho = int(np.nonzero(u - cumulative / ranks > 0)[0][-1])
    tau = cumulative[rho] / (rho + 1)
    result: Array = np.maximum(v - tau, 0.0)
    return result


def _affine_minimiser(gram: Array) -> Array:
    """Coefficients (summing to 1) of the point of least norm in the affine hull."""
    k = gram.shape[0]
    kkt = np.ones((k + 1, k + 1))
    kkt[:k, :k] = gram
    kkt[k, k] = 0.0
    rhs = np.zeros(k + 1)
    rhs[k] = 1.0
    solution = np.linalg.lstsq(kkt, rhs, rcond=None)[0][:k]
    return np.asarray(solution / solution.sum(), dtype=np.float64)


def min_norm_weights(gram: Array, *, tol: float = 1e-12) -> Array:
    r"""Weights of the point of least norm in the convex hull of the task gradients.

    .. math::

        w^\star = \operatorname*{arg\,min}_{w \in \Delta^{T}} w^\top G w,
        \qquad \Delta^{T} = \{w \ge 0,\ \textstyle\sum_t w_t = 1\}

    solved exactly (up to rounding) by Wolfe's min-norm-point algorithm on the
    Gram matrix :math:`G = J J^\top`: a finite active-set method that keeps
    its support affinely independent, so identical or zero gradients need no
    special case.

    Parameters
    ----------
    gram
        Symmetric positive semi-definite ``(T, T)`` array.
    tol
        Optimality tolerance, relative to the largest squared gradient norm.

    Returns
    -------
    numpy.ndarray
        ``(T,)`` weights on the simplex; uniform when every gradient is zero.

    Examples
    --------
    >>> import numpy as np
    >>> min_norm_weights(np.array([[1.0, 0.0], [0.0, 4.0]])).round(6)
    array([0.8, 0.2])
    """
    count = gram.shape[0]
    scale = float(np.max(np.diag(gram), initial=0.0))
    if not scale > 0.0:
        return np.full(count, 1.0 / count)
    g = gram / scale
    w = np.zeros(count)
    support = [int(np.argmin(np.diag(g)))]
    w[support[0]] = 1.0
    best, best_value = w.copy(), float(w @ g @ w)
    for _ in range(50 * count + 50):
        gw = g @ w
        norm2 = float(w @ gw)
        if norm2 < best_value:
            best, best_value = w.copy(), norm2
        j = int(np.argmin(gw))
        if norm2 - gw[j] <= tol or j in support:
            break
        support.append(j)
        while True:  # minor cycle: move to the affine minimiser, dropping points
            idx = np.array(support)
            v = _affine_minimiser(g[np.ix_(idx, idx)])
            if np.all(v > tol):
                w = np.zeros(count)
                w[idx] = v
                break
            cur = w[idx]
            out = (v <= tol) & (cur > v)
            theta = float(np.min(cur[out] / (cur[out] - v[out]))) if out.any() else 0.0
            new = cur + min(max(theta, 0.0), 1.0) * (v - cur)
            keep = new > tol
            if keep.all():  # rounding: drop the point closest to leaving
                keep[int(np.argmin(new))] = False
            w = np.zeros(count)
            w[idx[keep]] = new[keep] / new[keep].sum()
            support = idx[keep].tolist()
    value = float(w @ g @ w)
    return w if value <= best_value else best
