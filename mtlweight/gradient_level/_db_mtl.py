"""DB-MTL (Lin et al. 2023): loss-scale and gradient-magnitude balancing."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn

from mtlweight._engine.grads import accumulation_dtype
from mtlweight._engine.plans import Combination
from mtlweight._validation import Losses, check_non_negative, normalise_losses
from mtlweight.gradient_level._base import TaskSpecific
from mtlweight.gradient_level._parameter_state import ParameterState


class DBMTL(ParameterState):
    r"""DB-MTL of `Dual-Balancing for Multi-Task Learning` (Lin et al., 2023).

    .. math::

        \hat g_t \leftarrow \beta_k \hat g_t + (1 - \beta_k)\, \nabla_\theta \log(L_t + \epsilon),
        \qquad
        d = \max_s \lVert \hat g_s \rVert \sum_{t=1}^{T} \frac{\hat g_t}{\lVert \hat g_t \rVert}

    where:

    - :math:`\log(L_t + \epsilon)` balances the loss scales: every task is
      trained on the logarithm of its loss (the shared parameters *and* the
      task-specific ones), :math:`\epsilon` = ``eps``;
    - :math:`\hat g_t` is an exponential moving average of the gradients of
      the log-loss with respect to the shared parameters :math:`\theta`,
      starting at zero, with :math:`\beta_k = \beta / k^{\sigma_\beta}` at call
      :math:`k = 1, 2, \dots`;
    - every :math:`\hat g_t` is normalised and scaled to the largest norm,
      which balances the gradient magnitudes (a task whose :math:`\hat g_t`
      is zero adds nothing).

    :math:`d` is not a combination of this step's gradients: only
    ``db_mtl.backward(losses)`` applies it; the weights are its least-squares
    coefficients in the gradients of the log-losses (for logging).

    Parameters
    ----------
    shared
        The shared parameters: a module or an iterable of tensors (a
        ``representation=`` is refused: :math:`\hat g_t` is per parameter).
    beta, beta_sigma
        :math:`\beta \in [0, 1)` and its decay exponent :math:`\sigma_\beta \ge 0`
        (LibMTL's defaults 0.9 and 0).
    eps
        :math:`\epsilon > 0` inside the logarithm (``1e-8``, as LibMTL).
    task_specific
        ``"plain"`` (default, as LibMTL: the other parameters get the gradient
        of :math:`\sum_t \log(L_t + \epsilon)`) or ``"weighted"``.
    **kwargs
        Passed to :class:`~mtlweight.Weighting`.

    Raises
    ------
    ValueError
        With a negative loss (naming the task), a ``representation=``, or at
        :meth:`accumulate` (the log of a batch is not a sum over micro-batches).

    .. note::
        As in LibMTL's code (the authors'), the moving average starts at zero,
        so the first direction is :math:`(1 - \beta)` times that of the
        normalised gradients.

    Under :mod:`torch.distributed` the gradients of each process's log-losses
    are averaged across processes, so every process applies the same
    :math:`d`; it is that of one process on the combined batch when the
    processes' losses are equal (the mean of :math:`\nabla L_r / L_r` is not
    :math:`\nabla L / L` otherwise).

    Examples
    --------
    >>> import torch, mtlweight as mw
    >>> theta = torch.nn.Parameter(torch.zeros(2))
    >>> db = mw.DBMTL(shared=[theta], beta=0.0)
    >>> a, b = theta @ torch.tensor([1.0, 0.0]) + 1, theta @ torch.tensor([0.0, 4.0]) + 2
    >>> _ = db.backward([a, b])
    >>> theta.grad  # log-loss gradients (1, 0) and (0, 2), both scaled to norm 2
    tensor([2., 2.])
    """

    accumulable = False  # accumulate() says why
    direction_only = True  # d is not J^T w: weighting(losses) raises at once

    def __init__(
        self,
        shared: nn.Module | Iterable[Tensor] | None = None,
        *,
        beta: float = 0.9,
        beta_sigma: float = 0.0,
        eps: float = 1e-8,
        task_specific: TaskSpecific | None = None,
        **kwargs: Any,
    ) -> None:
        mode: TaskSpecific = "plain" if task_specific is None else task_specific
        super().__init__(shared, task_specific=mode, **kwargs)
        if not (math.isfinite(beta) and 0 <= beta < 1):
            raise ValueError(f"DBMTL's beta must be in [0, 1); found {beta}")
        if not (math.isfinite(beta_sigma) and beta_sigma >= 0):
            raise ValueError(f"DBMTL's beta_sigma must be >= 0; found {beta_sigma}")
        if not (math.isfinite(eps) and eps > 0):
            raise ValueError(f"DBMTL's eps must be a positive number; found {eps}")
        self.beta, self.beta_sigma, self.eps = float(beta), float(beta_sigma), float(eps)
        self.average: Tensor | None = None  # (T, P), in the order of ``tasks``
        self.calls = 0

    def _logs(self, losses: Losses) -> dict[str, Tensor]:
        """:math:`\\log(L_t + \\epsilon)` by task, after checking that no loss is negative."""
        names, tensors = normalise_losses(losses)
        detached = torch.stack([t.detach().reshape(()).double().cpu() for t in tensors])
        check_non_negative(names, detached, "DBMTL")
        return {n: torch.log(t + self.eps) for n, t in zip(names, tensors, strict=True)}

    def forward(self, losses: Losses, *, representation: Tensor | None = None) -> Tensor:
        """A total of the log-losses whose backward pass writes :math:`d` (see :meth:`backward`)."""
        return super().forward(self._logs(losses), representation=representation)

    def backward(
        self,
        losses: Losses,
        *,
        representation: Tensor | None = None,
        backward_fn: Callable[[Tensor], object] | None = None,
    ) -> dict[str, float]:
        """Backpropagate :math:`d` (shared inputs) for the log-losses; return the weights."""
        if backward_fn is not None:  # forward takes the logs itself
            backward_fn(self(losses, representation=representation))
            return self.weights
        return super().backward(self._logs(losses), representation=representation)

    def accumulate(self, losses: Losses) -> None:
        """Not available: the log of a sum of micro-batch losses is no sum of their logs."""
        raise ValueError(
            "DBMTL trains on log(L_t + eps), whose gradient over a batch is not the sum of its "
            "micro-batches' gradients: call DBMTL.backward(losses) on each whole batch"
        )

    def combine(self, jac: Tensor, gram: Tensor, values: Tensor) -> Combination:
        rows = self.order.to_state(jac).detach()
        self.check_state(self.average, rows, "moving averages of the gradients")
        self.calls += 1
        beta = self.beta / self.calls**self.beta_sigma
        average = torch.zeros_like(rows) if self.average is None else self.average
        self.average = average = beta * average + (1.0 - beta) * rows
        acc = accumulation_dtype(average.dtype)
        norms = average.to(acc).norm(dim=1)
        scale = torch.where(norms > 0, norms.max() / torch.where(norms > 0, norms, 1.0), 0.0)
        direction = scale @ average.to(acc)
        return Combination.from_direction(jac, gram, direction)

    def get_extra_state(self) -> dict[str, Any]:
        return {**super().get_extra_state(), "average": self.average, "calls": self.calls}

    def set_extra_state(self, state: Any) -> None:
        super().set_extra_state(state)
        self.average, self.calls = state.get("average"), int(state.get("calls", 0))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, beta={self.beta}, beta_sigma={self.beta_sigma}"
