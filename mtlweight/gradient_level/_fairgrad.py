"""FairGrad (Ban and Ji 2024): alpha-fair allocation of the update among the tasks."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from mtlweight._solvers import fair_weights
from mtlweight.gradient_level._base import GramWeighting, TaskSpecific


class FairGrad(GramWeighting):
    r"""FairGrad of `Fair Resource Allocation in Multi-Task Learning` (Ban and Ji, ICML 2024).

    .. math::

        \max_{d}\ \sum_{t=1}^{T} \frac{(g_t^\top d)^{1 - \alpha}}{1 - \alpha}
        \ \ \Longrightarrow\ \ G w = w^{-1/\alpha}\ \text{(elementwise)},
        \quad w > 0, \qquad d = J^\top w

    where:

    - :math:`g_t = \nabla_\theta L_t` and :math:`G = J J^\top`;
    - :math:`g_t^\top d` is the "utility" (first-order decrease) of task :math:`t`
      and :math:`\alpha \ge 0` the fairness: :math:`\alpha = 1` proportional
      fairness (the equation of Nash-MTL, :math:`G w = 1/w`),
      :math:`\alpha \to \infty` max-min fairness, :math:`\alpha = 0` the sum
      of the utilities (the limit of the equation is :math:`w = \mathbf{1}`);
    - the equation is the paper's optimality condition (its Equation 4),
      solved by Newton's method on a strictly convex problem
      (:func:`~mtlweight._solvers.fair_weights`).

    Each task's utility is :math:`g_t^\top d = w_t^{-1/\alpha}`: tasks with
    small weights gain the most. Scaling the losses by :math:`s` scales
    :math:`w` by :math:`s^{-2\alpha/(1+\alpha)}`.

    Parameters
    ----------
    shared
        The shared parameters: a module or an iterable of tensors.
    alpha
        The fairness :math:`\alpha \ge 0` (the paper tries 0.5 to 8; LibMTL's default is 1).
    task_specific
        ``"weighted"`` (default, as the authors' code) or ``"plain"``; see
        :class:`~mtlweight.gradient_level.GradientMethod`.
    **kwargs
        Passed to :class:`~mtlweight.Weighting`.

    Raises
    ------
    ValueError
        With ``alpha < 0`` or not finite.

    .. note::
        The authors' code (and TorchJD, LibMTL) solve the equation with
        ``scipy.optimize.least_squares`` from :math:`w = \mathbf{1}/T`, to its
        default tolerance; this solver is exact up to rounding. For
        :math:`\alpha = 0` TorchJD returns the mean (:math:`w = \mathbf{1}/T`);
        here it is the limit of the equation, :math:`w = \mathbf{1}` (the sum).

    Examples
    --------
    >>> import torch, mtlweight as mw
    >>> theta = torch.nn.Parameter(torch.zeros(2))
    >>> losses = [theta @ torch.tensor([1.0, 0.0]), theta @ torch.tensor([0.0, 2.0])]
    >>> fairgrad = mw.FairGrad(shared=[theta], alpha=1.0)
    >>> {k: round(v, 6) for k, v in fairgrad.backward(losses).items()}  # w_t = 1 / ||g_t||
    {'0': 1.0, '1': 0.5}
    """

    def __init__(
        self,
        shared: nn.Module | Iterable[Tensor] | None = None,
        *,
        alpha: float = 1.0,
        task_specific: TaskSpecific | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(shared, task_specific=task_specific, **kwargs)
        if not (alpha >= 0.0 and math.isfinite(alpha)):
            raise ValueError(f"FairGrad: alpha must be a finite number >= 0; found {alpha}")
        self.alpha = float(alpha)

    def gram_weights(self, gram: Tensor, values: Tensor) -> Tensor:
        if self.alpha == 0.0:
            return torch.ones(gram.shape[0], dtype=torch.float64)
        return torch.from_numpy(fair_weights(gram.numpy(), self.alpha))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, alpha={self.alpha}"

