"""SDMGrad (Xiao et al. 2023): MGDA pulled towards a preferred direction, solved stochastically."""

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


class SDMGrad(TaskStateWeighting):
    r"""SDMGrad of `Direction-oriented Multi-objective Learning: Simple and Provable
    Stochastic Algorithms` (Xiao, Ban and Ji, NeurIPS 2023).

    .. math::

        w^\star = \operatorname*{arg\,min}_{w \in \Delta^T}
            \tfrac12 \lVert J^\top w + \lambda g_0 \rVert_2^2, \qquad
        d = \frac{J^\top (w + \lambda \tilde w)}{1 + \lambda}

    where:

    - :math:`g_t = \nabla_\theta L_t` are the rows of :math:`J`, :math:`\Delta^T`
      is the simplex and :math:`g_0 = J^\top \tilde w` the preferred direction,
      the mean gradient (:math:`\tilde w = \mathbf{1}/T`);
    - :math:`\lambda \ge 0` pulls the update from the MGDA direction
      (:math:`\lambda = 0`) towards :math:`g_0` (:math:`\lambda \to \infty`);
    - :math:`w` follows the paper's stochastic projected gradient steps
      :math:`w \leftarrow \Pi_{\Delta}\big(w - \eta\, v\big)`,
      :math:`v \leftarrow \mu v + \hat G (w + \lambda \tilde w)`, ``n_iter`` of
      them per training step, warm-started from the previous step's :math:`w`
      (part of ``state_dict``), on :math:`\hat G = G / (\overline{\lVert g_t \rVert})^2`,
      the Gram matrix divided by the squared mean gradient norm (as the
      authors' code, so that :math:`\eta` does not depend on the scale of the losses).

    The weights returned are :math:`(w + \lambda \tilde w)/(1 + \lambda)`, on the
    simplex, so :math:`d = J^\top \text{weights}`.

    Parameters
    ----------
    shared
        The shared parameters: a module or an iterable of tensors.
    lambda_
        The paper's :math:`\lambda \ge 0` (``lambda`` is a Python keyword);
        0.3, the value of the authors' experiments and of LibMTL and TorchJD.
    lr, momentum, n_iter
        Step size :math:`\eta > 0`, momentum :math:`\mu \in [0, 1)` and number of
        the inner steps, as the authors' code (10, 0.5, 20).
    task_specific
        ``"weighted"`` (default) or ``"plain"`` (the authors' code);
        see :class:`~mtlweight.gradient_level.GradientMethod`.
    **kwargs
        Passed to :class:`~mtlweight.Weighting`.

    Raises
    ------
    ValueError
        With ``lambda_ < 0``, ``lr <= 0``, ``momentum`` outside :math:`[0, 1)` or ``n_iter < 1``.

    .. note::
        The paper's Algorithm 1 uses three independent samples per step: the
        inner steps use :math:`\nabla L(\xi)^\top \nabla L(\xi')` of two mini-batches
        (an unbiased estimate of :math:`G`) and the update the gradients of a
        third (LibMTL's and TorchJD's examples draw three batches). One
        ``backward(losses)`` has one batch, so here all three are the same
        :math:`J` (:math:`\hat G` is then biased by the gradient noise); the
        update is otherwise the paper's and agrees with TorchJD's
        ``SDMGradWeighting`` applied to :math:`J J^\top` to rounding. With the
        authors' ``lr=10`` the inner steps are much longer than the inverse
        curvature of :math:`\hat G` (its eigenvalues are of order 1): :math:`w`
        then often jumps to a vertex of the simplex instead of converging to
        :math:`w^\star`; a smaller ``lr`` (0.1) with more ``n_iter`` solves the
        inner problem.

    Examples
    --------
    >>> import torch, mtlweight as mw
    >>> theta = torch.nn.Parameter(torch.zeros(2))
    >>> losses = [theta @ torch.tensor([1.0, 0.0]), theta @ torch.tensor([0.0, 1.0])]
    >>> sdmgrad = mw.SDMGrad(shared=[theta])
    >>> {k: round(v, 6) for k, v in sdmgrad.backward(losses).items()}  # symmetric: the mean
    {'0': 0.5, '1': 0.5}
    """

    def __init__(
        self,
        shared: nn.Module | Iterable[Tensor] | None = None,
        *,
        lambda_: float = 0.3,
        lr: float = 10.0,
        momentum: float = 0.5,
        n_iter: int = 20,
        task_specific: TaskSpecific | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(shared, task_specific=task_specific, **kwargs)
        if not (lambda_ >= 0.0 and math.isfinite(lambda_)):
            raise ValueError(f"SDMGrad: lambda_ must be a finite number >= 0; found {lambda_}")
        if not (lr > 0.0 and math.isfinite(lr)):
            raise ValueError(f"SDMGrad: lr must be a finite number > 0; found {lr}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"SDMGrad: momentum must be in [0, 1); found {momentum}")
        if int(n_iter) != n_iter or n_iter < 1:
            raise ValueError(f"SDMGrad: n_iter must be an integer >= 1; found {n_iter}")
        self.lambda_ = float(lambda_)
        self.lr = float(lr)
        self.momentum = float(momentum)
        self.n_iter = int(n_iter)
        self.w: Tensor | None = None  # (T,) float64 on the simplex, in the order of tasks

    def gram_weights(self, gram: Tensor, values: Tensor) -> Tensor:
        g = self.order.to_state(gram, square=True).numpy()
        count = g.shape[0]
        preferred = np.full(count, 1.0 / count)
        w = preferred.copy() if self.w is None or self.w.shape != (count,) else self.w.numpy()
        scale = float(np.mean(np.sqrt(np.clip(np.diag(g), 0.0, None))))
        g_hat = g / (scale**2 + 1e-8)
        velocity = np.zeros(count)
        for k in range(self.n_iter):
            step = g_hat @ (w + self.lambda_ * preferred)
            velocity = step if k == 0 else self.momentum * velocity + step
            w = project_simplex(w - self.lr * velocity)
        self.w = torch.from_numpy(w.copy())
        weights = (w + self.lambda_ * preferred) / (1.0 + self.lambda_)
        return self.order.to_call(torch.from_numpy(weights))

    def get_extra_state(self) -> dict[str, Any]:
        return {**super().get_extra_state(), "w": self.w}

    def set_extra_state(self, state: Any) -> None:
        super().set_extra_state(state)
        w = state.get("w")
        self.w = None if w is None else torch.as_tensor(w, dtype=torch.float64)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, lambda_={self.lambda_}, lr={self.lr}, "
            f"momentum={self.momentum}, n_iter={self.n_iter}"
        )
