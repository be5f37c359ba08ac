"""Nash-MTL (Navon et al. 2022): the Nash bargaining solution of the tasks."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from mtlweight._base import Stateful
from mtlweight._solvers import Array, fair_weights
from mtlweight.gradient_level._base import GramWeighting, TaskSpecific


def nash_weights(
    gram: Array,
    init: Array | None = None,
    *,
    ridge: float = 1e-10,
    tol: float = 1e-24,
    max_iter: int = 100,
) -> Array:
    r"""Solve :math:`G \alpha = 1/\alpha` (elementwise), :math:`\alpha > 0`.

    FairGrad's equation at :math:`\alpha_{\text{fair}} = 1`
    (:func:`mtlweight._solvers.fair_weights`, which this calls).

    This is the stationarity condition of the strictly convex problem
    :math:`\min_{\alpha > 0} \tfrac12 \alpha^\top (G + \epsilon D) \alpha - \sum_t \log \alpha_t`,
    solved by Newton's method with a backtracking line search that keeps
    :math:`\alpha > 0` (quadratic convergence: a few iterations for
    :math:`T \le 10`). The ridge :math:`\epsilon D`, with :math:`D` the
    diagonal of :math:`G`, makes the problem solvable when the gradients are
    degenerate (for example opposite), where the exact equation has no
    solution. A task with a zero gradient has none either: it gets
    :math:`1 / \max_t \sqrt{G_{tt}}` and is left out of the equation.

    Examples
    --------
    >>> import numpy as np
    >>> nash_weights(np.array([[1.0, 0.0], [0.0, 4.0]])).round(6)  # 1/||g_t||
    array([1. , 0.5])
    """
    return fair_weights(gram, 1.0, init, ridge=ridge, tol=tol, max_iter=max_iter)


class NashMTL(GramWeighting, Stateful):
    r"""Nash-MTL of `Multi-Task Learning as a Bargaining Game` (Navon, Shamsian,
    Achituve, Maron, Kawaguchi, Chechik and Fetaya, ICML 2022).

    .. math::

        G^\top G\, \alpha = 1 / \alpha, \qquad d = G \alpha

    (Algorithm 1 of the paper) where:

    - :math:`G = [g_1, \dots, g_T] = J^\top` holds the task gradients
      :math:`g_t = \nabla_\theta L_t` as columns, so :math:`G^\top G = J J^\top`
      is the Gram matrix;
    - :math:`1/\alpha` is elementwise, :math:`\alpha > 0`: every task's
      contribution satisfies :math:`\alpha_t\, g_t \cdot d = 1`, the Nash
      bargaining solution. Hence :math:`\lVert d \rVert^2 = \sum_t \alpha_t\,
      g_t \cdot d = T`, and scaling every loss by :math:`c` scales
      :math:`\alpha` by :math:`1/c` and leaves :math:`d` unchanged.

    With ``normalize_gram=True`` the equation is solved for
    :math:`\hat G^\top \hat G = G^\top G / \lVert G^\top G \rVert_F` instead, as
    the authors' released code (and TorchJD's port of it) does: then
    :math:`\alpha` does not depend on the scale of the losses and :math:`d` is
    :math:`\lVert G^\top G \rVert_F^{1/2}` times the paper's, proportional to
    the scale.

    The equation is solved by :func:`nash_weights` (Newton's method on the
    convex problem it is the optimality condition of) instead of the
    authors' sequence of cvxpy problems. Then, if ``max_norm > 0`` and
    :math:`\lVert d \rVert > \text{max\_norm}`, :math:`\alpha` is scaled so
    that :math:`\lVert d \rVert = \text{max\_norm}`.

    Parameters
    ----------
    shared
        The shared parameters: a module or an iterable of tensors.
    update_every
        Solve for :math:`\alpha` every this many steps and reuse the last
        weights in between (no per-task backward passes then), as the
        authors' ``update_weights_every``.
    max_norm
        Largest norm of the shared update :math:`d`; ``0`` disables it. The
        paper's :math:`d` has norm :math:`\sqrt{T}`, so the default 1.0 (the
        authors') always rescales it to norm 1 for :math:`T \ge 2`.
    normalize_gram
        ``False`` (default): the paper's equation on the Gram matrix itself;
        ``True``: on the Gram matrix divided by its Frobenius norm (the
        authors' code).
    task_specific
        ``"weighted"`` (default, as the authors' code: heads get
        :math:`\alpha_t \nabla L_t`) or ``"plain"``.
    **kwargs
        Passed to :class:`~mtlweight.Weighting`.

    Raises
    ------
    ValueError
        With ``update_every < 1``, ``max_norm < 0``, or without shared
        parameters or representation.
    FloatingPointError
        If a loss or a gradient is NaN or infinite (naming the task).

    .. note::
        The authors clip the norm of the shared gradient after the backward
        pass; here :math:`\alpha` itself is scaled, which is the same for
        the shared parameters but also scales the heads' gradients in
        ``"weighted"`` mode, and on reused steps the clipped weights are
        reused as they are. The solution is warm-started from the previous
        :math:`\alpha`, which is part of ``state_dict``.

    Examples
    --------
    >>> import torch, mtlweight as mw
    >>> theta = torch.nn.Parameter(torch.zeros(2))
    >>> def losses():
    ...     return [theta @ torch.tensor([10.0, 0.0]), theta @ torch.tensor([0.0, 20.0])]
    >>> nash = mw.NashMTL(shared=[theta], max_norm=0.0)
    >>> {k: round(v, 4) for k, v in nash.backward(losses()).items()}  # 1 / ||g_t||
    {'0': 0.1, '1': 0.05}
    >>> theta.grad  # alpha_t g_t . d = 1 for both tasks
    tensor([1., 1.])
    >>> theta.grad = None
    >>> authors = mw.NashMTL(shared=[theta], max_norm=0.0, normalize_gram=True)
    >>> _ = authors.backward(losses())
    >>> theta.grad  # ||G^T G||_F^(1/2) = 412.31^(1/2) times larger
    tensor([20.3054, 20.3054])
    """

    def __init__(
        self,
        shared: nn.Module | Iterable[Tensor] | None = None,
        *,
        update_every: int = 1,
        max_norm: float = 1.0,
        normalize_gram: bool = False,
        task_specific: TaskSpecific | None = None,
        **kwargs: object,
    ) -> None:
        super().__init__(shared, task_specific=task_specific, **kwargs)
        if int(update_every) != update_every or update_every < 1:
            raise ValueError(f"update_every must be an integer >= 1; found {update_every}")
        if not max_norm >= 0.0:
            raise ValueError(f"max_norm must be >= 0 (0 disables it); found {max_norm}")
        self.update_every = int(update_every)
        self.max_norm = float(max_norm)
        self.normalize_gram = bool(normalize_gram)
        self.alpha: Tensor | None = None  # solution of the last update, for warm starts

    def reused_weights(self, names: list[str]) -> Tensor | None:
        if self.step % self.update_every != 0 and len(self._weights) == len(names):
            return torch.tensor([self._weights[n] for n in names], dtype=torch.float64)
        return None

    def gram_weights(self, gram: Tensor, values: Tensor) -> Tensor:
        return torch.from_numpy(self.solve(gram.numpy(), values))

    def solve(self, gram: Array, values: Tensor) -> Array:
        """The weights from the Gram matrix as a numpy array."""
        norm = float(np.linalg.norm(gram))
        if not norm > 0.0:
            return np.ones(gram.shape[0])
        init = None if self.alpha is None else self.alpha.double().numpy()
        # the paper's G^T G alpha = 1/alpha; the authors' code divides G^T G by its norm
        alpha = nash_weights(gram / norm if self.normalize_gram else gram, init)
        self.alpha = torch.from_numpy(alpha.copy())
        if self.max_norm > 0.0:
            d_norm = math.sqrt(max(float(alpha @ gram @ alpha), 0.0))
            if d_norm > self.max_norm:
                alpha = alpha * (self.max_norm / d_norm)
        return alpha

    def get_extra_state(self) -> dict[str, Any]:
        return {**super().get_extra_state(), "alpha": self.alpha}

    def set_extra_state(self, state: Any) -> None:
        super().set_extra_state(state)
        alpha = state.get("alpha")
        self.alpha = None if alpha is None else torch.as_tensor(alpha, dtype=torch.float64)

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, update_every={self.update_every}, "
                f"max_norm={self.max_norm}, normalize_gram={self.normalize_gram}")
