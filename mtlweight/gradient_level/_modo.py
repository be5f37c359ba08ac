"""MoDo (Chen et al. 2023): MGDA weights tracked by one projected gradient step per step."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from mtlweight._solvers import project_simplex
from mtlweight.gradient_level._base import TaskSpecific
from mtlweight.gradient_level._task_state import TaskStateWeighting


class MoDo(TaskStateWeighting):
    r"""MoDo of `Three-Way Trade-Off in Multi-Objective Learning: Optimization,
    Generalization and Conflict-Avoidance` (Chen, Fernando, Ying and Chen, NeurIPS 2023).

    .. math::

        \lambda_{k+1} = \Pi_{\Delta}\big(\lambda_k - \gamma\,
            (J J^\top \lambda_k + \rho\, \lambda_k)\big), \qquad
        d = J^\top \lambda_{k+1}

    where:

    - :math:`g_t = \nabla_\theta L_t` are the rows of :math:`J`, :math:`\Delta`
      is the simplex and :math:`\Pi_\Delta` the Euclidean projection onto it
      (:func:`~mtlweight._solvers.project_simplex`);
    - :math:`\lambda_k` are the weights of the previous step (uniform at the
      first; part of ``state_dict``): one projected gradient step on the MGDA
      objective :math:`\tfrac12 \lVert J^\top \lambda \rVert^2 + \tfrac{\rho}{2}
      \lVert \lambda \rVert^2` per training step, so :math:`\lambda` tracks the
      min-norm weights of MGDA as training goes;
    - :math:`\gamma > 0` is the step size of :math:`\lambda` and :math:`\rho \ge 0`
      its :math:`\ell_2` regularisation.

    The weights are :math:`\lambda_{k+1}`, on the simplex. Unlike MGDA the
    update is not scale-invariant: :math:`\gamma` acts on :math:`J J^\top`.

    Parameters
    ----------
    shared
        The shared parameters: a module or an iterable of tensors.
    gamma
        The step size :math:`\gamma > 0` (LibMTL's default 0.001).
    rho
        The regularisation :math:`\rho \ge 0` (LibMTL's default 0.1).
    task_specific
        ``"weighted"`` (default) or ``"plain"``; see
        :class:`~mtlweight.gradient_level.GradientMethod`.
    **kwargs
        Passed to :class:`~mtlweight.Weighting`.

    Raises
    ------
    ValueError
        With ``gamma <= 0`` or ``rho < 0``.

    .. note::
        MoDo ("double sampling") needs independent mini-batches per step: the
        :math:`\lambda` step uses :math:`\nabla F(z_1)^\top \nabla F(z_2)`, an
        unbiased estimate of :math:`J J^\top`, and the update the gradients of
        a third batch :math:`z_3` (LibMTL and the authors' ``three_grads``) or
        the mean of the first two. One ``backward(losses)`` has one batch, so
        here :math:`z_1 = z_2 = z_3` (the estimate of :math:`J J^\top` is then
        biased by the gradient noise); the update is otherwise the paper's and
        agrees with TorchJD's ``MoDoWeighting`` applied to :math:`J J^\top` to rounding.

    Examples
    --------
    >>> import torch, mtlweight as mw
    >>> theta = torch.nn.Parameter(torch.zeros(2))
    >>> losses = [theta @ torch.tensor([1.0, 0.0]), theta @ torch.tensor([0.0, 2.0])]
    >>> modo = mw.MoDo(shared=[theta], gamma=0.1, rho=0.0)
    >>> {k: round(v, 6) for k, v in modo.backward(losses).items()}  # project (.45, .3)
    {'0': 0.575, '1': 0.425}
    """

    def __init__(
        self,
        shared: nn.Module | Iterable[Tensor] | None = None,
        *,
        gamma: float = 0.001,
        rho: float = 0.1,
        task_specific: TaskSpecific | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(shared, task_specific=task_specific, **kwargs)
        if not (gamma > 0.0 and math.isfinite(gamma)):
            raise ValueError(f"MoDo: gamma must be a finite number > 0; found {gamma}")
        if not (rho >= 0.0 and math.isfinite(rho)):
            raise ValueError(f"MoDo: rho must be a finite number >= 0; found {rho}")
        self.gamma = float(gamma)
        self.rho = float(rho)
        self.lambd: Tensor | None = None  # (T,) float64 on the simplex, in the order of tasks

    def gram_weights(self, gram: Tensor, values: Tensor) -> Tensor:
        g = self.order.to_state(gram, square=True).numpy()
        count = g.shape[0]
        if self.lambd is None or self.lambd.shape != (count,):
            lambd = np.full(count, 1.0 / count)
        else:
            lambd = self.lambd.numpy()
        lambd = project_simplex(lambd - self.gamma * (g @ lambd + self.rho * lambd))
        self.lambd = torch.from_numpy(lambd.copy())
        return self.order.to_call(torch.from_numpy(lambd))

    def get_extra_state(self) -> dict[str, Any]:
        return {**super().get_extra_state(), "lambda": self.lambd}

    def set_extra_state(self, state: Any) -> None:
        super().set_extra_state(state)
        lambd = state.get("lambda")
        self.lambd = None if lambd is None else torch.as_tensor(lambd, dtype=torch.float64)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, gamma={self.gamma}, rho={self.rho}"
