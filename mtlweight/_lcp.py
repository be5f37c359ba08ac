r"""Linear complementarity problems of one matrix, many right-hand sides at once.

:func:`solve_lcp` finds, for each row ``q`` of a ``(K, T)`` batch, ``x >= 0`` with
``M x + q >= 0`` and ``x^T (M x + q) = 0``, for one symmetric positive
(semi)definite ``(T, T)`` matrix ``M``: the KKT system of a convex quadratic
programme over the non-negative orthant. It uses block principal pivoting
(Júdice and Pires, *A block principal pivoting algorithm for large-scale strictly
monotone linear complementarity problems*, Computers & Operations Research 21, 1994),
batched over the ``K`` problems in torch, so it runs on the tensors' device. UPGrad
and DualProj (one dual-cone projection per task) and MGDA (the min-norm point) use it
at many tasks, through :mod:`mtlweight._solvers`.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _masked_solve(matrix: Tensor, rhs: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """``z`` with ``M_SS z_S = rhs_S`` and ``z = 0`` off ``S``, for each row's set ``S = mask``.

    Each row's principal submatrix is gathered into a batch padded to the
    largest ``|S|`` (identity on the padding) and solved by Cholesky. Also
    returns whether each factorisation succeeded.
    """
    sizes = mask.sum(dim=1)
    width = int(sizes.max())
    z = torch.zeros_like(rhs)
    if width == 0:
        return z, torch.ones_like(sizes, dtype=torch.bool)
    order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)[:, :width]  # S first
    valid = torch.arange(width, device=rhs.device) < sizes[:, None]
    rows = matrix.index_select(0, order.flatten()).view(*order.shape, -1)
    block = torch.gather(rows, 2, order[:, None, :].expand(-1, width, -1))
    eye = torch.eye(width, dtype=rhs.dtype, device=rhs.device)
    block = torch.where(valid[:, :, None] & valid[:, None, :], block, eye)
    factor, info = torch.linalg.cholesky_ex(block)
    b = torch.where(valid, rhs.gather(1, order), 0.0)
    solution = torch.cholesky_solve(b[:, :, None], factor)[:, :, 0]
    z.scatter_(1, order, torch.where(valid, solution, 0.0))
    return z, info == 0


def _first_guess(matrix: Tensor, q: Tensor, steps: int) -> Tensor:
    r"""Where ``x > 0`` after ``steps`` accelerated projected-gradient steps (FISTA) on
    :math:`\min_{x \ge 0} \tfrac12 x^\top M x + q^\top x`, all rows at once."""
    vector = torch.ones(matrix.shape[0], dtype=q.dtype, device=q.device)
    for _ in range(30):  # the largest eigenvalue, by power iteration
        vector = matrix @ vector
        vector = vector / torch.clamp(vector.norm(), min=1e-300)
    step = 1.0 / torch.clamp(vector @ matrix @ vector, min=1e-300)
    x = previous = torch.zeros_like(q)
    for k in range(steps):
        y = x + (k / (k + 3)) * (x - previous)
        previous, x = x, torch.clamp(y - step * (y @ matrix + q), min=0.0)
    return x > 0


def solve_lcp(matrix: Tensor, q: Tensor, *, tol: float = 1e-13,
              max_iter: int | None = None, memory: int = 2**24,
              warm_steps: int | None = None) -> tuple[Tensor, Tensor]:
    r"""Solve the linear complementarity problems of a positive definite :math:`M`, row by row.

    .. math::

        x \ge 0, \qquad y = M x + q \ge 0, \qquad x^\top y = 0

    for each row ``q`` of a ``(K, T)`` tensor at once, by block principal
    pivoting (Júdice and Pires 1994, with the backup rule of Kim and Park 2011):
    guess the set :math:`F` where :math:`x > 0`, solve :math:`M_{FF} x_F = -q_F`,
    and exchange every index that violates :math:`x \ge 0` or :math:`y \ge 0`;
    when the number of violations stops falling for three rounds, exchange
    only the largest violating index (Murty's rule, finite for positive
    definite :math:`M`). Each round solves the ``K`` restricted systems
    together (Cholesky, batched, on ``matrix``'s device), in chunks of about
    ``memory`` bytes. For float64 problems of 64 unknowns or more, the first
    rounds, which only look for the sets, run in single precision (tests at
    :math:`10^{-6}`); the rounds that confirm them, in double.

    For a positive definite :math:`M` this is the unique solution of
    :math:`\min_{x \ge 0} \tfrac12 x^\top M x + q^\top x`, found exactly (up to
    rounding: every test uses ``tol`` times :math:`\max(1, \lVert q \rVert_\infty)`).

    Parameters
    ----------
    matrix
        Symmetric ``(T, T)`` tensor.
    q
        ``(K, T)`` tensor on the same device and of the same dtype.
    tol
        Relative tolerance of the tests :math:`x_F \ge 0` and :math:`y \ge 0`.
    max_iter
        Rounds at most (default ``3 T + 20``).
    memory
        Bytes of restricted systems to factorise at once.
    warm_steps
        Accelerated projected-gradient steps on all rows together (one
        ``(K, T) @ (T, T)`` product each) whose support is the first guess of
        :math:`F`; ``0``: :math:`F = \{t : q_t < 0\}`; default 50 from 64 unknowns
        on, else 0.

    Returns
    -------
    tuple of Tensor
        ``x`` (``(K, T)``, clamped to :math:`\ge 0`) and a ``(K,)`` boolean
        tensor: whether each row's solution passed the optimality tests (a
        failed factorisation, or no convergence, on a singular :math:`M`).

    Examples
    --------
    >>> import torch
    >>> m = torch.tensor([[2.0, 1.0], [1.0, 2.0]], dtype=torch.float64)
    >>> x, ok = solve_lcp(m, torch.tensor([[-1.0, 1.0], [-3.0, -3.0]], dtype=torch.float64))
    >>> x, ok
    (tensor([[0.5000, 0.0000],
            [1.0000, 1.0000]], dtype=torch.float64), tensor([True, True]))
    """
    count = q.shape[1]
    limit = 3 * count + 20 if max_iter is None else max_iter
    scale = tol * torch.clamp(q.abs().amax(dim=1, keepdim=True), min=1.0)
    if warm_steps is None:
        warm_steps = 50 if count >= 64 else 0
    free = _first_guess(matrix, q, warm_steps) if warm_steps else q < -scale
    if q.dtype == torch.float64 and count >= 64:
        # the first rounds, which only find the sets, in single precision (about half the
        # cost); then the rounds that confirm them, in double precision
        _, _, free = _pivot(matrix.float(), q.float(), free, 1e-6 * scale / tol, limit // 2,
                            memory)
    x, ok, _ = _pivot(matrix, q, free, scale, limit, memory)
    return x, ok


def _pivot(matrix: Tensor, q: Tensor, free: Tensor, scale: Tensor, limit: int, memory: int
           ) -> tuple[Tensor, Tensor, Tensor]:
    """The rounds of :func:`solve_lcp` from the first guess ``free``; ``scale``: the
    tolerances ``(K, 1)``. Returns the solutions, whether each passed, and the last sets."""
    rows, count = q.shape
    free = free.clone()
    scale = scale.to(q.dtype)
    x = torch.zeros_like(q)
    done = torch.zeros(rows, dtype=torch.bool, device=q.device)
    ok = torch.zeros(rows, dtype=torch.bool, device=q.device)
    fewest = torch.full((rows,), count + 1, device=q.device)
    backup = torch.full((rows,), 3, device=q.device)
    columns = torch.arange(count, device=q.device)
    for _ in range(limit):
        active = torch.nonzero(~done).flatten()
        if active.numel() == 0:
            break
        sizes = free[active].sum(dim=1)
        active = active[torch.argsort(sizes)]  # similar sizes share a padded chunk
        width = max(int(sizes.max()), 1)
        chunk = max(1, memory // (q.element_size() * width * width))
        for start in range(0, active.numel(), chunk):
            part = active[start:start + chunk]
            xs, factored = _masked_solve(matrix, -q[part], free[part])  # x_F = -M_FF^-1 q_F
            ys = q[part] + xs @ matrix
            bad = (free[part] & (xs < -scale[part])) | (~free[part] & (ys < -scale[part]))
            violations = bad.sum(dim=1)
            finished = factored & (violations == 0)
            failed = ~factored
            x[part] = torch.where(finished[:, None], xs.clamp(min=0.0), x[part])
            ok[part] |= finished
            done[part] |= finished | failed
            # exchange: all violators while their number falls (or for 3 rounds more),
            # then only the largest violating index
            fewer = violations < fewest[part]
            fewest[part] = torch.where(fewer, violations, fewest[part])
            backup[part] = torch.where(fewer, 3, backup[part] - (~fewer).long())
            last = torch.where(bad, columns, -1).amax(dim=1)
            single = columns == last[:, None]
            flip = torch.where((backup[part] >= 0)[:, None], bad, single)
            free[part] ^= flip & ~(finished | failed)[:, None]
    return x, ok, free
