"""The geometric loss strategy (Chennupati et al. 2019)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from mtlweight._base import Weighting


class GeometricMean(Weighting):
    r"""Geometric loss strategy (GLS) of `MultiNet++: Multi-Stream Feature
    Aggregation and Geometric Loss Strategy for Multi-Task Learning`
    (Chennupati, Sistu, Yogamani and Rawashdeh, CVPR Workshops 2019).

    .. math::

        L = \Big(\prod_{t=1}^{T} L_t\Big)^{1/T}, \qquad
        w_t = \frac{\partial L}{\partial L_t} = \frac{L}{T\, L_t}

    where:

    - :math:`L_t > 0` is the loss of task :math:`t` at this step;
    - :math:`T` is the number of tasks;
    - :math:`w_t` is the weight the geometric mean implicitly gives task
      :math:`t`, reported in :attr:`weights`.

    The geometric mean is invariant to the scale of each loss up to a
    constant factor: multiplying :math:`L_t` by :math:`c` multiplies
    :math:`L` by :math:`c^{1/T}` and leaves the direction of its gradient
    unchanged, so a task cannot dominate by its units alone. A task whose loss
    is small gets a large weight.

    The total is computed as :math:`\sum_t \operatorname{sg}(w_t) L_t`, like
    every :class:`~mtlweight.Weighting`: it equals :math:`L` and has exactly
    the gradient of :math:`L` (by the chain rule,
    :math:`\nabla L = \sum_t w_t \nabla L_t`), and :math:`L` itself is formed
    in log space, :math:`\exp(\frac1T \sum_t \log L_t)`, so a product of many
    small or large losses neither underflows nor overflows.

    Parameters
    ----------
    **kwargs
        Passed to :class:`~mtlweight.Weighting` (``tasks``, ``history_size``, ``sync``).

    Raises
    ------
    ValueError
        If a loss is zero or negative (naming the task): its logarithm is undefined.
    FloatingPointError
        If a loss is NaN or infinite (naming the task).

    Examples
    --------
    >>> import torch, mtlweight as mw
    >>> gls = mw.GeometricMean()
    >>> gls({"pixel": torch.tensor(4.0), "edge": torch.tensor(1.0)})  # sqrt(4 * 1)
    tensor(2.)
    >>> gls.weights  # 2 / (2 * 4), 2 / (2 * 1)
    {'pixel': 0.25, 'edge': 1.0}
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)

    def compute_weights(
        self,
        names: list[str],
        losses: list[Tensor],
        values: Tensor,
        *,
        representation: Tensor | None = None,
    ) -> Tensor:
        positive = values > 0
        if not bool(positive.all()):
            i = int((~positive).nonzero()[0])
            raise ValueError(
                f"GeometricMean needs positive losses (it takes their logarithm); loss of task "
                f"{names[i]!r} is {float(values[i])}"
            )
        values = self.statistic("loss", values)
        mean = torch.exp(torch.log(values).mean())
        return mean / (values.numel() * values)
