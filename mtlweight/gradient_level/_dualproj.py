"""DualProj (Quinton and Rey 2024): the mean gradient projected onto the dual cone."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from mtlweight._solvers import dual_cone_weights
from mtlweight.gradient_level._base import GramWeighting


class DualProj(GramWeighting):
    r"""DualProj of `Jacobian Descent for Multi-Objective Optimization` (Quinton and Rey,
    2024): the projection of the mean gradient onto the dual cone of the task gradients,
    as in `Gradient Episodic Memory for Continual Learning` (Lopez-Paz and Ranzato, 2017).

    .. math::

        d = \pi_J\Big(\frac{1}{T} \sum_{t=1}^{T} g_t\Big), \qquad
        \pi_J(x) = \operatorname*{arg\,min}_{y:\ J y \ge 0} \lVert y - x \rVert_2^2,
        \qquad w = \operatorname*{arg\,min}_{v \ge \mathbf{1}/T} v^\top G v

    where :math:`g_t = \nabla_\theta L_t` are the rows of :math:`J`,
    :math:`G = J J^\top`, and :math:`d = J^\top w` (Proposition 1 of the
    paper; solved exactly by :func:`~mtlweight._solvers.dual_cone_weights`).

    :math:`d` conflicts with no task gradient (:math:`G w \ge 0`), every
    :math:`w_t \ge 1/T`, and when the mean gradient conflicts with no task it
    is returned unchanged (:math:`w = \mathbf{1}/T`).

    Parameters
    ----------
    shared
        The shared parameters: a module or an iterable of tensors.
    task_specific
        ``"weighted"`` (default) or ``"plain"``; see
        :class:`~mtlweight.gradient_level.GradientMethod`.
    **kwargs
        Passed to :class:`~mtlweight.Weighting`.

    .. note::
        As for :class:`~mtlweight.UPGrad`, TorchJD regularises :math:`G` by
        :math:`10^{-4}` of its trace before solving; this solver does not.

    Examples
    --------
    >>> import torch, mtlweight as mw
    >>> theta = torch.nn.Parameter(torch.zeros(2))
    >>> losses = [theta @ torch.tensor([1.0, 0.0]), theta @ torch.tensor([-2.0, 1.0])]
    >>> dualproj = mw.DualProj(shared=[theta])
    >>> dualproj.backward(losses)  # the mean (-0.5, 0.5) conflicts with g1 = (1, 0)
    {'0': 1.0, '1': 0.5}
    >>> theta.grad
    tensor([0.0000, 0.5000])
    """

    def gram_weights(self, gram: Tensor, values: Tensor) -> Tensor:
        g = gram.numpy()
        return torch.from_numpy(dual_cone_weights(g, np.full(g.shape[0], 1.0 / g.shape[0])))
