"""Homoscedastic-uncertainty weighting (Kendall, Gal and Cipolla 2018)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from mtlweight.loss_level._learned_scale import LearnedScale


class UncertaintyWeighting(LearnedScale):
    r"""Uncertainty weighting (UW) of `Multi-Task Learning Using Uncertainty to
    Weigh Losses for Scene Geometry and Semantics` (Kendall, Gal and Cipolla,
    CVPR 2018).

    .. math::

        L = \sum_{t=1}^{T} c_t\, e^{-s_t} L_t + s_t, \qquad w_t = c_t\, e^{-s_t}

    where:

    - :math:`s_t = \log \sigma_t^2` is the learnable log-variance of task
      :math:`t` (``self.s``, in the order of ``tasks``);
    - :math:`c_t = 1` for a regression task (Gaussian likelihood) and
      :math:`c_t = 2` for a classification task (softmax likelihood);
    - :math:`L_t` is the loss of task :math:`t` at this step.

    The total is differentiable in :math:`s`: **hand** ``weighting.parameters()``
    **to your optimizer** with the model's parameters, so that :math:`s` is
    trained by the same ``total.backward(); optimizer.step()``. The gradient
    :math:`\partial L / \partial s_t = 1 - c_t e^{-s_t} L_t` drives
    :math:`s_t` to :math:`\log(c_t L_t)`: a task with a large loss is
    down-weighted. The total may be negative. :attr:`weights` reports
    :math:`w_t` (at the values of :math:`s` used for this step). Under
    :mod:`torch.distributed` the gradient of :math:`s` is averaged over the
    processes, as DDP does for the model, so :math:`s` stays the same on every
    rank without wrapping the weighting in DDP.

    Parameters
    ----------
    tasks
        Task names (a dict of losses must use exactly these), or their number
        ``n`` for losses given as a list (named ``"0"``, ..., ``"n-1"``).
    classification
        Names of the tasks with a classification (cross-entropy) loss.
    init
        Initial :math:`s_t` (default 0, i.e. every weight starts at :math:`c_t`).
    **kwargs
        Passed to :class:`~mtlweight.Weighting` (``history_size``, ``sync``).

    Raises
    ------
    ValueError
        With an unknown or missing task, or losses on another device than ``s``.
    FloatingPointError
        If a loss is NaN or infinite (naming the task).

    .. note::
        The paper's objective (its eq. 7) is
        :math:`\frac{1}{2\sigma^2} L + \log\sigma` for regression and
        :math:`\frac{1}{\sigma^2} L + \log\sigma` for classification, i.e.
        :math:`\tfrac12 e^{-s}L + \tfrac12 s` and :math:`e^{-s}L + \tfrac12 s`.
        We multiply it by 2, a constant factor that changes neither the
        minimiser nor the relative weights, so that the all-regression case is
        the familiar :math:`\sum_t e^{-s_t} L_t + s_t` of most implementations.

    Examples
    --------
    >>> import torch, mtlweight as mw
    >>> uw = mw.UncertaintyWeighting(["depth", "segmentation"], classification=["segmentation"])
    >>> model = torch.nn.Linear(2, 2)
    >>> optimizer = torch.optim.SGD([*model.parameters(), *uw.parameters()], lr=0.1)
    >>> total = uw({"depth": torch.tensor(3.0), "segmentation": torch.tensor(1.0)})
    >>> total, uw.weights
    (tensor(5., grad_fn=<SumBackward0>), {'depth': 1.0, 'segmentation': 2.0})
    >>> total.backward()
    >>> uw.s.grad  # 1 - c_t exp(-s_t) L_t
    tensor([-2., -1.])
    """

    def __init__(
        self,
        tasks: Sequence[str] | int,
        *,
        classification: Sequence[str] = (),
        init: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(tasks, init=init, **kwargs)
        assert self.tasks is not None
        if isinstance(classification, str):
            classification = [classification]
        unknown = [str(t) for t in classification if str(t) not in self.tasks]
        if unknown:
            raise ValueError(
                f"classification task {unknown[0]!r} is not one of the tasks {self.tasks}"
            )
        self.classification = [t for t in self.tasks if t in {str(c) for c in classification}]
        self._factors: Tensor
        factors = [2.0 if t in self.classification else 1.0 for t in self.tasks]
        self.register_buffer("_factors", torch.tensor(factors), persistent=False)

    def terms(self, s: Tensor) -> tuple[Tensor, Tensor]:
        return self._factors.to(s) * torch.exp(-s), s

    def extra_repr(self) -> str:
        extra = f", classification={self.classification}" if self.classification else ""
        return f"tasks={self.tasks}{extra}"
