r"""Shared numerical solvers of the weighting methods (float64, numpy and torch).

- :func:`balance`: the paper's balancing rule :math:`w_t = 1 - x_t / \sum_j x_j` (GB, LB);
- :func:`project_simplex`: Euclidean projection onto the probability simplex;
- :func:`min_norm_weights`: the min-norm point of the convex hull of the task
  gradients, from their Gram matrix (MGDA; CAGrad, MoCo, SDMGrad build on it);
- :func:`dual_cone_weights`: projection onto the dual cone of the task gradients (UPGrad, DualProj);
- :func:`solve_lcp`: linear complementarity problems of one matrix, many right-hand
  sides at once, by batched block principal pivoting in torch (the two above);
- :func:`fair_weights`: the solution of :math:`G w = w^{-1/\alpha}` (FairGrad; Nash-MTL at 1).

The Gram-matrix solvers take a ``numpy`` array: ``gram.numpy()`` of the
``(T, T)`` float64 CPU tensor a :class:`~mtlweight.gradient_level.GramWeighting`
receives costs nothing.
"""

from __future__ import annotations

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor

from mtlweight._lcp import solve_lcp

__all__ = [
    "Array",
    "balance",
    "dual_cone_weights",
    "fair_weights",
    "min_norm_weights",
    "project_simplex",
    "solve_lcp",
]

Array = NDArray[np.float64]

# K problems of T unknowns go to the batched solve_lcp from K T^3 = 2^18 on (UPGrad from
# T = 32, DualProj and MGDA from T = 64): below, its fixed cost of torch calls (a few ms)
# is more than the numpy active-set methods take.
_BATCHED_WORK = 2**18


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

    solved exactly (up to rounding) on the Gram matrix :math:`G = J J^\top`.
    When the min-norm point is not zero, :math:`w^\star = x / \mathbf 1^\top x`
    with :math:`x` the solution of the complementarity problem
    :math:`x \ge 0,\ G x - \mathbf 1 \ge 0,\ x^\top (G x - \mathbf 1) = 0`
    (:func:`solve_lcp`: batched Cholesky solves, fast at hundreds of tasks) from
    :math:`T = 64` on. Below, or where that fails (0 in the hull, or :math:`G`
    singular on the support: identical or zero gradients), Wolfe's min-norm-point
    algorithm: a finite active-set method that keeps its support affinely independent.

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
    # With x >= 0, y = g x - 1 >= 0, x^T y = 0 (an LCP), w = x / sum(x) satisfies the
    # simplex KKT conditions g w >= (w^T g w) 1 with equality on the support. Where 0 is in
    # the hull (or g is singular on the support) the LCP has no solution: then Wolfe's method.
    if count**3 >= _BATCHED_WORK:  # below, Wolfe's method costs less than the torch calls
        x, solved = solve_lcp(torch.from_numpy((g + g.T) / 2),
                              torch.full((1, count), -1.0, dtype=torch.float64), tol=tol)
        total = float(x.sum())
        if bool(solved[0]) and np.isfinite(total) and total > 0.0:
            return np.asarray(x[0].numpy() / total, dtype=np.float64)
    return _wolfe_min_norm(g, tol=tol)


def _wolfe_min_norm(g: Array, *, tol: float) -> Array:
    """Wolfe's min-norm-point algorithm on a Gram matrix ``g`` whose largest diagonal is 1."""
    count = g.shape[0]
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


def _nonneg_least_squares(a: Array, b: Array, *, tol: float) -> Array:
    """``argmin_{x >= 0} ||a x - b||`` by the active-set method of Lawson and Hanson (1974).

    Finite; each inner solve is a least-squares problem on the free columns,
    so rank-deficient ``a`` needs no special case. ``tol`` bounds the
    gradient ``a^T (b - a x)`` of the optimality test.
    """
    count = a.shape[1]
    x = np.zeros(count)
    free = np.zeros(count, dtype=bool)
    for _ in range(3 * count + 10):
        gradient = a.T @ (b - a @ x)
        candidates = np.where(free, -np.inf, gradient)
        j = int(np.argmax(candidates))
        if not candidates[j] > tol:
            break
        free[j] = True
        while True:
            z = np.zeros(count)
            z[free] = np.linalg.lstsq(a[:, free], b, rcond=None)[0]
            if np.all(z[free] > 0.0):
                x = z
                break
            blocking = free & (z <= 0.0)
            step = float(np.min(x[blocking] / (x[blocking] - z[blocking])))
            x = x + step * (z - x)
            free &= x > tol * 1e-6
            x[~free] = 0.0
            if not free.any():
                break
    return x


def dual_cone_weights(gram: Array, u: Array, *, tol: float = 1e-13) -> Array:
    r"""Weights of the projection of :math:`J^\top u` onto the dual cone of the rows of :math:`J`.

    The dual cone is :math:`\{x : J x \ge 0\}`, the directions that conflict
    with no task gradient. Its projection is a combination of the rows,
    :math:`\pi_J(J^\top u) = J^\top w`, whose weights solve (Proposition 1 of
    `Jacobian Descent for Multi-Objective Optimization`)

    .. math::

        w = \operatorname*{arg\,min}_{v \ge u} v^\top G v, \qquad G = J J^\top.

    In :math:`y = n \odot v` (:math:`n_t = \lVert g_t \rVert`), with :math:`C`
    the cosine matrix and :math:`y = n \odot u + s`, it is the complementarity
    problem :math:`s \ge 0,\ C y \ge 0,\ s^\top C y = 0`, solved exactly (up to
    rounding) for all ``K`` vectors together by :func:`solve_lcp` (block
    principal pivoting, batched Cholesky solves): no regularisation of
    :math:`G`; when :math:`K T^3 \ge 2^{18}` (UPGrad's :math:`K = T` from
    :math:`T = 32`, one vector from :math:`T = 64`). Below, or where :math:`C` is
    singular (more tasks than the rank of :math:`J`, repeated rows) and that
    fails, the non-negative least-squares problem
    :math:`\min_{s \ge 0} \lVert R s + R\,(n \odot u) \rVert`
    (:math:`C = R^\top R`) by the active-set method of Lawson and Hanson.

    Parameters
    ----------
    gram
        Symmetric positive semi-definite ``(T, T)`` array.
    u
        ``(T,)`` weights of the vector to project, or ``(K, T)``: ``K`` vectors
        projected at once.
    tol
        Optimality tolerance on the cosines of the projection with the task gradients.

    Returns
    -------
    numpy.ndarray
        Weights :math:`w \ge u`, shaped like ``u``; ``u`` itself when every gradient is zero.

    Examples
    --------
    >>> import numpy as np
    >>> gram = np.array([[1.0, -1.0], [-1.0, 2.0]])  # g1 = (1, 0), g2 = (-1, 1)
    >>> dual_cone_weights(gram, np.array([1.0, 0.0]))  # pi(g1) = g1 + g2 / 2 = (0.5, 0.5)
    array([1. , 0.5])
    >>> dual_cone_weights(gram, np.eye(2))  # both at once: pi(g2) = g1 + g2 = (0, 1)
    array([[1. , 0.5],
           [1. , 1. ]])
    """
    u = np.asarray(u, dtype=np.float64)
    norms = np.sqrt(np.clip(np.diag(gram), 0.0, None))
    live = np.flatnonzero(norms > 0.0)
    result: Array = u.copy()
    if live.size == 0:
        return result
    # In y = n * v (n the gradient norms) the problem is min_{y >= n u} y^T C y with C the
    # cosine matrix: its scale does not depend on how badly the rows are scaled.
    n = norms[live]
    cosines = gram[np.ix_(live, live)] / np.outer(n, n)
    cosines = (cosines + cosines.T) / 2
    rows = result.reshape(-1, result.shape[-1])  # a view: the results land in ``result``
    lower = n * rows[:, live]
    # y = lower + s, s >= 0, C y >= 0, s^T C y = 0: the LCP of C and q = C lower
    slacks = np.zeros_like(lower)
    unsolved = np.arange(lower.shape[0])
    if lower.shape[0] * live.size**3 >= _BATCHED_WORK:  # below, NNLS row by row is cheaper
        matrix = torch.from_numpy(cosines)
        slack, solved = solve_lcp(matrix, torch.from_numpy(lower) @ matrix, tol=tol)
        slacks = slack.numpy()
        unsolved = np.flatnonzero(~solved.numpy())
    if unsolved.size:  # small, or a singular C: the active-set NNLS on its square root
        eigenvalues, vectors = np.linalg.eigh(cosines)
        root = np.sqrt(np.clip(eigenvalues, 0.0, None))[:, None] * vectors.T  # C = R^T R
        for k in unsolved:
            slacks[k] = _nonneg_least_squares(root, -(root @ lower[k]),
                                              tol=tol * max(1.0, np.abs(lower[k]).max()))
    rows[:, live] = (lower + slacks) / n
    return result


def fair_weights(
    gram: Array,
    alpha: float,
    init: Array | None = None,
    *,
    ridge: float = 1e-10,
    tol: float = 1e-24,
    max_iter: int = 100,
) -> Array:
    r"""Solve :math:`G w = w^{-1/\alpha}` (elementwise), :math:`w > 0`: FairGrad's equation.

    It is the stationarity condition of the strictly convex problem

    .. math::

        \min_{w > 0}\ \tfrac12 w^\top (G + \epsilon D) w + \sum_t h(w_t), \qquad
        h(x) = \begin{cases} -\log x & \alpha = 1 \\
               -\frac{x^{1 - 1/\alpha}}{1 - 1/\alpha} & \alpha \ne 1 \end{cases}

    (:math:`h'' > 0` for every :math:`\alpha > 0`), solved by Newton's method
    with a backtracking line search that keeps :math:`w > 0`. :math:`\alpha = 1`
    is Nash-MTL's equation :math:`G w = 1/w`. The ridge :math:`\epsilon D`
    (:math:`D` the diagonal of :math:`G`) makes degenerate gradients (two
    opposite ones) solvable, where the exact equation has no solution. A
    task with a zero gradient has none either: it gets
    :math:`(\max_t G_{tt})^{-\alpha/(1+\alpha)}`, the scale of the others,
    and is left out. ``init`` (positive, shape ``(T,)``), e.g. the previous
    step's solution, starts Newton's method there instead.

    Examples
    --------
    >>> import numpy as np
    >>> fair_weights(np.array([[1.0, 0.0], [0.0, 4.0]]), 1.0).round(6)  # 1 / ||g_t||
    array([1. , 0.5])
    >>> fair_weights(np.array([[1.0, 0.0], [0.0, 4.0]]), 2.0).round(6)  # ||g_t||^(-4/3)
    array([1.     , 0.39685])
    """
    if not alpha > 0.0:
        raise ValueError(f"fair_weights needs alpha > 0; found {alpha}")
    count = gram.shape[0]
    diag = np.diag(gram)
    scale = float(np.max(diag, initial=0.0))
    power = alpha / (1.0 + alpha)  # G -> c G scales w by c^(-power)
    if not scale > 0.0:
        return np.ones(count)
    result = np.full(count, scale**-power)
    live = np.flatnonzero(diag > 1e-24 * scale)
    a = gram[np.ix_(live, live)] / scale
    a = a + ridge * np.diag(np.diag(a))
    exponent = 1.0 - 1.0 / alpha

    def objective(x: Array) -> float:
        penalty = -np.sum(np.log(x)) if alpha == 1.0 else -np.sum(x**exponent) / exponent
        return float(0.5 * x @ a @ x + penalty)

    w = np.diag(a) ** -power  # exact for orthogonal gradients
    if init is not None and init.shape == (count,) and np.all(np.isfinite(init) & (init > 0)):
        w = init[live] * scale**power
    value = objective(w)
    for _ in range(max_iter):
        grad = a @ w - w ** (-1.0 / alpha)
        hessian = a + np.diag(w ** (-1.0 / alpha - 1.0) / alpha)
        step = np.linalg.solve(hessian, grad)
        decrement = float(grad @ step)
        if not decrement > tol:
            break
        moving = step > 0  # at most 99% of the way to the boundary w = 0
        with np.errstate(divide="ignore", over="ignore"):
            bound = float(np.min(w[moving] / step[moving], initial=np.inf))
        t = min(1.0, 0.99 * bound)
        while t > 1e-12:
            candidate = w - t * step
            new_value = objective(candidate)
            if new_value <= value - 0.25 * t * decrement:
                break
            # near the solution the decrease is below the rounding of the objective:
            # then accept a step that shrinks the residual of the equation
            residual = a @ candidate - candidate ** (-1.0 / alpha)
            if new_value <= value + 1e-12 * abs(value) and residual @ residual < grad @ grad:
                break
            t *= 0.5
        else:
            break
        w, value = candidate, new_value
    result[live] = w * scale**-power
    return result
