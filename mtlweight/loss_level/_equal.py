"""Equal weighting: the mean of the task losses."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from mtlweight._base import Weighting


class EqualWeight(Weighting):
    r"""Equal weighting (EW): the mean of the task losses, the usual baseline.

    .. math::

        L = \frac{1}{T} \sum_{t=1}^{T} L_t, \qquad w_t = \frac{1}{T}

    where:

    - :math:`L_t` is the loss of task :math:`t` at this step;
    - :math:`T` is the number of tasks.

    The weights sum to 1 and never change. Taking the mean rather than the sum
    keeps the scale of the total (and hence a good learning rate) independent
    of the number of tasks; use :class:`~mtlweight.Fixed` with all weights 1 for
    the plain sum.

    Parameters
    ----------
    **kwargs
        Passed to :class:`~mtlweight.Weighting` (``tasks``, ``history_size``, ``sync``).

    Raises
    ------
    FloatingPointError
        If a loss is NaN or infinite (naming the task).

    Examples
    --------
    >>> import torch, mtlweight as mw
    >>> ew = mw.EqualWeight()
    >>> ew({"pixel": torch.tensor(3.0), "edge": torch.tensor(1.0)})
    tensor(2.)
    >>> ew.weights
    {'pixel': 0.5, 'edge': 0.5}
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
        return torch.full_like(values, 1.0 / values.numel())
