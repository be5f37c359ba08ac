"""UPGrad (Quinton and Rey 2024): the task gradients projected onto the dual cone, averaged."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from mtlweight._solvers import dual_cone_weights
from mtlweight.gradient_level._base import GramWeighting


class UPGrad(GramWeighting):
    r"""UPGrad of `Jacobian Descent for Multi-Objective Optimization` (Quinton and Rey, 2024).

    .. math::

        d = \frac{1}{T} \sum_{i=1}^{T} \pi_J(g_i), \qquad
        \pi_J(x) = \operatorname*{arg\,min}_{y:\ J y \ge 0} \lVert y - x \rVert_2^2,
        \qquad \pi_J(J^\top e_i) = J^\top v_i, \quad
        v_i = \operatorname*{arg\,min}_{v \ge e_i} v^\top G v

    where:

    - :math:`g_i = \nabla_\theta L_i` is row :math:`i` of :math:`J` and
      :math:`G = J J^\top` the Gram matrix;
    - :math:`\{y : J y \ge 0\}` is the dual cone of the rows of :math:`J`: the
      directions that conflict with no task (:math:`g_t \cdot y \ge 0` for all :math:`t`);
    - the weights are :math:`w = \frac{1}{T}\sum_i v_i`, so :math:`d = J^\top w`
      (Proposition 1 of the paper turns each projection into the quadratic
      program on :math:`G`, solved exactly by :func:`~mtlweight._solvers.dual_cone_weights`).

    :math:`d` conflicts with no task gradient (:math:`G w \ge 0`), every
    :math:`w_t \ge 1/T`, and without conflicts (:math:`G \ge 0` entrywise)
    :math:`d` is the mean gradient. The weights do not change when the losses
    are scaled together; :math:`d` scales with them.

    Parameters
    ----------
    shared
        The shared parameters: a module or an iterable of tensors.
    task_specific
        ``"weighted"`` (default: heads get :math:`w_t \nabla L_t`) or ``"plain"``;
        see :class:`~mtlweight.gradient_level.GradientMethod`.
    **kwargs
        Passed to :class:`~mtlweight.Weighting`.

    .. note::
        TorchJD's ``UPGrad`` normalises :math:`G` by its trace and adds
        :math:`10^{-4} I` before calling ``quadprog``; this solver uses
        :math:`G` as it is (exact up to rounding). The two agree to rounding with
        ``reg_eps=0``; with TorchJD's default they differ by 10-30 % relative when the
        task gradients differ in scale, and by up to 60 % with badly conditioned
        :math:`G` (see the comparison page).

    Examples
    --------
    >>> import torch, mtlweight as mw
    >>> theta = torch.nn.Parameter(torch.zeros(2))
    >>> losses = [theta @ torch.tensor([1.0, 0.0]), theta @ torch.tensor([-1.0, 1.0])]
    >>> upgrad = mw.UPGrad(shared=[theta])
    >>> upgrad.backward(losses)  # pi(g1) = g1 + g2 / 2, pi(g2) = g1 + g2
    {'0': 1.0, '1': 0.75}
    >>> theta.grad
    tensor([0.2500, 0.7500])
    """

    def gram_weights(self, gram: Tensor, values: Tensor) -> Tensor:
        g = gram.numpy()
        count = g.shape[0]
        # the T projections pi(g_i) / T share one eigendecomposition of G
        return torch.from_numpy(dual_cone_weights(g, np.eye(count) / count).sum(axis=0))
