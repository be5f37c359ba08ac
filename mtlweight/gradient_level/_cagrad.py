"""CAGrad (Liu et al. 2021): conflict-averse gradient descent."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Literal

import numpy as np
import torch
from torch import Tensor, nn

from mtlweight._solvers import Array, min_norm_weights
from mtlweight.gradient_level._base import GramWeighting, TaskSpecific

_ZERO = 1e-5  # ||g_w|| below this times sum_t w_t ||g_t|| counts as zero (cancellation)


def cagrad_dual(gram: Array, rho: float, *, max_iter: int = 100, tol: float = 1e-10) -> Array:
    r"""Solve the CAGrad dual :math:`\min_{w \in \Delta^T} g_w \cdot g_0 + \rho \lVert g_w \rVert`.

    Here :math:`g_w = J^\top w` and :math:`g_0 = J^\top \mathbf{1}/T`. Writing
    :math:`\rho \lVert u \rVert = \min_{s > 0} \tfrac{\rho}{2}(\lVert u \rVert^2 / s + s)`
    turns the problem into a convex one-dimensional problem in :math:`s`. For
    fixed :math:`s` the minimiser is :math:`u(s) = P_K(-(s/\rho)\, g_0)`, the
    min-norm point of the hull of the shifted gradients
    :math:`g_t + (s/\rho)\, g_0`, solved exactly by
    :func:`~mtlweight._solvers.min_norm_weights`; the derivative in :math:`s`
    has the sign of :math:`s - \lVert u(s) \rVert`, whose root is found by
    regula falsi (Illinois) to ``tol`` relative to the root itself, so that a
    task whose gradient is many orders of magnitude smaller than the others
    is solved as accurately as the others. A min-norm point counts as zero
    only where it is a cancellation below the rounding error of the Gram
    matrix (:math:`\lVert g_w \rVert \le 10^{-7} \sum_t w_t \lVert g_t \rVert`),
    not where it is merely small. The best :math:`w` met (vertices and
    centre included) is returned.

    Examples
    --------
    >>> import numpy as np
    >>> cagrad_dual(np.array([[1.0, 0.0], [0.0, 1.0]]), 0.5).round(6)
    array([0.5, 0.5])
    """
    count = gram.shape[0]
    b = np.full(count, 1.0 / count)
    q = gram @ b
    g0_norm2 = float(b @ q)

    def objective(w: Array) -> float:
        return float(w @ q) + rho * math.sqrt(max(float(w @ gram @ w), 0.0))

    def gap(s: float) -> tuple[float, Array]:
        k = s / rho
        w = min_norm_weights(gram + k * (q[:, None] + q[None, :]) + k * k * g0_norm2)
        return s - math.sqrt(max(float(w @ gram @ w), 0.0)), w

    candidates = [b, *np.eye(count)]
    norms = np.sqrt(np.clip(np.diag(gram), 0.0, None))
    largest = float(norms.max())
    if np.all(norms > 0.0):
        # Whether 0 is in the hull does not depend on the rows' lengths, but the min-norm
        # solver, whose tolerances are relative to the largest gradient, stops at a vertex
        # whose gradient is tiny (1e-61 of the others) instead of cancelling it. On unit
        # rows it cannot: map the weights back (w_t ~ u_t / ||g_t||).
        # With 0 in the hull and c >= 1 (rho >= ||g0||) the dual optimum is g_w = 0 (the
        # objective is at least (c - 1) ||g0|| ||g_w||): return it, whatever the scales.
        cosines = gram / np.outer(norms, norms)
        u = min_norm_weights(cosines)
        unit = u / norms
        unit /= unit.sum()
        if math.sqrt(max(float(u @ cosines @ u), 0.0)) <= 1e-7 and rho >= math.sqrt(g0_norm2):
            return unit
        candidates.append(unit)
    lo, hi = 0.0, largest
    f_lo, w_lo = gap(lo)
    candidates.append(w_lo)
    # With 0 in the hull, gap(0) = 0 but the optimum may lie further: the sign of
    # the gap is monotone (-, 0, +), so look for a negative value closer in.
    if f_lo > -1e-7 * float(w_lo @ norms):  # u(0), the min-norm point, is 0 up to rounding
        f_lo = 0.0
    probe = largest
    while not f_lo < 0.0 and probe > 1e-6 * largest:
        probe /= 10.0
        f_probe, w_probe = gap(probe)
        candidates.append(w_probe)
        if f_probe < 0.0:
            lo, f_lo = probe, f_probe
    if f_lo < 0.0:  # otherwise u = 0 (to 1e-6 max ||g_t||) is optimal
        f_hi, w_hi = gap(hi)
        candidates.append(w_hi)
        side = 0
        for _ in range(max_iter):
            if f_hi <= 0.0 or hi - lo <= tol * hi:
                break
            s = (lo * f_hi - hi * f_lo) / (f_hi - f_lo)
            f_s, w_s = gap(s)
            candidates.append(w_s)
            if abs(f_s) <= tol * s:
                break
            if f_s < 0.0:
                lo, f_lo = s, f_s
                f_hi = f_hi / 2 if side == -1 else f_hi  # Illinois: no stalled end
                side = -1
            else:
                hi, f_hi = s, f_s
                f_lo = f_lo / 2 if side == 1 else f_lo
                side = 1
    values = [objective(w) for w in candidates]
    return np.asarray(candidates[int(np.argmin(values))], dtype=np.float64)


class CAGrad(GramWeighting):
    r"""CAGrad of `Conflict-Averse Gradient Descent for Multi-task Learning`
    (Liu, Liu, Jin, Stone and Liu, 2021).

    .. math::

        \max_{d}\ \min_{t} \langle g_t, d \rangle
        \ \text{ s.t. } \lVert d - g_0 \rVert \le c \lVert g_0 \rVert
        \quad\Longrightarrow\quad
        d = \frac{1}{r}\Big(g_0 + \frac{c \lVert g_0 \rVert}{\lVert g_{w^\star} \rVert}
            \, g_{w^\star}\Big)

    with :math:`w^\star = \operatorname*{arg\,min}_{w \in \Delta^T}
    g_w \cdot g_0 + c \lVert g_0 \rVert \lVert g_w \rVert`, where:

    - :math:`g_t = \nabla_\theta L_t` and :math:`g_0 = \frac{1}{T}\sum_t g_t`
      is the average gradient;
    - :math:`g_w = \sum_t w_t g_t` for :math:`w` on the simplex :math:`\Delta^T`;
    - :math:`c \ge 0` is the radius of the ball around :math:`g_0` in which
      the worst task's improvement is maximised (:math:`c = 0`: plain
      averaging, :math:`d = g_0`);
    - :math:`r` is the rescaling: 1 (``rescale=0``), :math:`1 + c^2`
      (``rescale=1``, the authors' default) or :math:`1 + c` (``rescale=2``).

    The weights returned are the coefficients
    :math:`(1/T + \lambda w^\star_t) / r` with
    :math:`\lambda = c\lVert g_0 \rVert / \lVert g_{w^\star} \rVert`, so
    :math:`d = J^\top w`. The dual is solved by :func:`cagrad_dual` (exact
    min-norm steps inside a one-dimensional root search; no scipy).

    Parameters
    ----------
    shared
        The shared parameters: a module or an iterable of tensors.
    c
        Radius :math:`c \ge 0` (the paper uses 0.4 on NYUv2 and 0.5 elsewhere).
    rescale
        0, 1 or 2, as above.
    task_specific
        ``"weighted"`` (default: heads get :math:`w_t \nabla L_t`) or
        ``"plain"`` (the authors' code: heads get the gradient of :math:`\sum_t L_t`).
    **kwargs
        Passed to :class:`~mtlweight.Weighting`.

    Raises
    ------
    ValueError
        With ``c < 0``, a ``rescale`` other than 0, 1, 2, or without shared
        parameters or representation.
    FloatingPointError
        If a loss or a gradient is NaN or infinite (naming the task).

    .. note::
        The authors' code solves the dual with ``scipy.optimize.minimize``
        (SLSQP) and adds :math:`10^{-8}` to the norms; this solver is exact up
        to rounding, also for badly scaled tasks (a gradient :math:`10^{-7}` times the
        others; measured exact down to :math:`10^{-9}`). Far beyond that (:math:`10^{-12}`
        and less) :math:`w^\star` stays exact in the dual's value, but the direction of a
        :math:`g_{w^\star}` that small can be lost to rounding.
        Where the dual optimum is :math:`g_{w^\star} = 0` (below
        :math:`10^{-5} \sum_t w^\star_t \lVert g_t \rVert`, a cancellation: zero is in
        the hull of the gradients and :math:`c` is large) the formula for
        :math:`d` does not give the primal solution; there :math:`d = g_0 / r`,
        as the authors' code gives. The same holds wherever the solver's
        :math:`w^\star` is optimal in value but not in direction (a cancelling weight
        below its tolerance): :math:`d` is never worse than :math:`g_0` in the
        worst task's improvement :math:`\min_t \langle g_t, d \rangle`.

    Examples
    --------
    >>> import torch, mtlweight as mw
    >>> theta = torch.nn.Parameter(torch.zeros(2))
    >>> losses = [theta @ torch.tensor([1.0, 0.0]), theta @ torch.tensor([0.0, 1.0])]
    >>> cagrad = mw.CAGrad(shared=[theta], c=0.5, rescale=0)
    >>> {k: round(v, 4) for k, v in cagrad.backward(losses).items()}
    {'0': 0.75, '1': 0.75}
    """

    def __init__(
        self,
        shared: nn.Module | Iterable[Tensor] | None = None,
        *,
        c: float = 0.4,
        rescale: Literal[0, 1, 2] = 1,
        task_specific: TaskSpecific | None = None,
        **kwargs: object,
    ) -> None:
        super().__init__(shared, task_specific=task_specific, **kwargs)
        if not c >= 0.0 or not math.isfinite(c):
            raise ValueError(f"c must be a finite number >= 0; found {c}")
        if rescale not in (0, 1, 2):
            raise ValueError(f"rescale must be 0, 1 or 2; found {rescale!r}")
        self.c = float(c)
        self.rescale = rescale

    def gram_weights(self, gram: Tensor, values: Tensor) -> Tensor:
        return torch.from_numpy(self.solve(gram.numpy(), values))

    def solve(self, gram: Array, values: Tensor) -> Array:
        """The weights from the Gram matrix as a numpy array."""
        count = gram.shape[0]
        b = np.full(count, 1.0 / count)
        divisor = (1.0, 1.0 + self.c**2, 1.0 + self.c)[self.rescale]
        rho = self.c * math.sqrt(max(float(b @ gram @ b), 0.0))
        if not rho > 0.0:
            return b / divisor
        w = cagrad_dual(gram, rho)
        gw_norm = math.sqrt(max(float(w @ gram @ w), 0.0))
        # ||g_w|| comes from the Gram matrix, with an absolute error of about
        # sqrt(eps) sum_t w_t ||g_t||: a g_w that small is a cancellation with no
        # reliable direction, and lambda would only amplify the rounding error of
        # J^T w. A g_w that is small because its tasks' gradients are (a badly
        # scaled task) is exact and steers d as any other.
        combined = float(w @ np.sqrt(np.clip(np.diag(gram), 0.0, None)))
        lam = rho / gw_norm if gw_norm > _ZERO * combined else 0.0
        if lam > 0.0:
            # Both d(lambda) and g0 lie in the ball. With w optimal, d(lambda) is the best
            # (strong duality); a w that is only near-optimal in value (a vertex kept because
            # the weight that would cancel it is below the solver's tolerance, as for
            # g = (-1e-61, 1)) can point d the wrong way: then keep g0, the better of the two.
            scale = float(np.max(np.diag(gram)))
            if float(np.min(gram @ b)) > float(np.min(gram @ (b + lam * w))) + 1e-12 * scale:
                lam = 0.0
        result: Array = (b + lam * w) / divisor
        return result

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, c={self.c}, rescale={self.rescale}"
