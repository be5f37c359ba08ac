"""The loss-balancing part of IMTL (Liu et al. 2021)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from mtlweight.loss_level._learned_scale import LearnedScale


class IMTLL(LearnedScale):
    r"""Impartial loss balancing (IMTL-L) of `Towards Impartial Multi-task
    Learning` (Liu, Li, Kuang, Xue, Chen, Yang, Liao and Zhang, ICLR 2021).

    .. math::

        L = \sum_{t=1}^{T} e^{s_t} L_t - s_t, \qquad w_t = e^{s_t}

    where:

    - :math:`s_t` is the learnable log-scale of task :math:`t` (``self.s``, in
      the order of ``tasks``);
    - :math:`L_t` is the loss of task :math:`t` at this step.

    The total is differentiable in :math:`s`: **hand** ``weighting.parameters()``
    **to your optimizer** with the model's parameters. The gradient
    :math:`\partial L / \partial s_t = e^{s_t} L_t - 1` drives every scaled
    loss :math:`e^{s_t} L_t` towards 1, so that the tasks contribute
    impartially whatever the scale of their losses. :attr:`weights` reports
    :math:`w_t` (at the values of :math:`s` used for this step). Under
    :mod:`torch.distributed` the gradient of :math:`s` is averaged over the
    processes, as DDP does for the model.

    Parameters
    ----------
    tasks
        Task names (a dict of losses must use exactly these), or their number
        ``n`` for losses given as a list (named ``"0"``, ..., ``"n-1"``).
    init
        Initial :math:`s_t` (default 0, i.e. every weight starts at 1).
    **kwargs
        Passed to :class:`~mtlweight.Weighting` (``history_size``, ``sync``).

    Raises
    ------
    ValueError
        With an unknown or missing task, or losses on another device than ``s``.
    FloatingPointError
        If a loss is NaN or infinite (naming the task).

    .. note::
        The paper pairs this loss balance with its gradient balance (IMTL-G,
        :class:`~mtlweight.IMTLG`); this class is the loss part alone, usable
        with any gradient-level method or none. :math:`s` is trained by
        gradient descent together with the network, as in the paper: here by
        the user's optimizer, so its learning rate and schedule apply to
        :math:`s` as well.

    Examples
    --------
    >>> import torch, mtlweight as mw
    >>> imtl = mw.IMTLL(["pixel", "edge"])
    >>> total = imtl({"pixel": torch.tensor(3.0), "edge": torch.tensor(0.5)})
    >>> total
    tensor(3.5000, grad_fn=<SumBackward0>)
    >>> total.backward()
    >>> imtl.s.grad  # exp(s_t) L_t - 1
    tensor([ 2.0000, -0.5000])
    """

    def __init__(self, tasks: Sequence[str] | int, *, init: float = 0.0, **kwargs: Any) -> None:
        super().__init__(tasks, init=init, **kwargs)

    def terms(self, s: Tensor) -> tuple[Tensor, Tensor]:
        return torch.exp(s), -s
