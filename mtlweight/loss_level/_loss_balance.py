"""The paper's loss-balanced weighting (LB, Algorithm 2)."""

from __future__ import annotations

from torch import Tensor

from mtlweight._base import Weighting
from mtlweight._solvers import balance
from mtlweight._validation import check_non_negative


class LossBalance(Weighting):
    r"""Loss-balanced weighting (LB) of `Multi-Task Learning Enhanced Single
    Image De-Raining` (Fan, Chen and Li), Algorithm 2.

    .. math::

        w_t = 1 - \frac{L_t}{\sum_{j=1}^{T} L_j}

    where:

    - :math:`L_t` is the (detached) loss of task :math:`t` at this step;
    - :math:`T \ge 2` is the number of tasks.

    The weights lie in :math:`[0, 1]` and sum to :math:`T - 1`: a task whose
    loss is large relative to the others is down-weighted. They are computed
    afresh at every step, with no smoothing, and do not change when every loss
    is multiplied by the same factor (a loss scaler, a change of units). If
    every loss is zero the weights are all :math:`1 - 1/T`.

    It costs no backward pass: the overhead is a handful of scalar operations
    and one device sync to check the losses.

    Parameters
    ----------
    **kwargs
        Passed to :class:`~mtlweight.Weighting` (``tasks``, ``history_size``, ``sync``).

    Raises
    ------
    ValueError
        With fewer than two tasks, or a negative loss (naming the task).
    FloatingPointError
        If a loss is NaN or infinite (naming the task).

    Examples
    --------
    >>> import torch, mtlweight as mw
    >>> lb = mw.LossBalance()
    >>> total = lb({"pixel": torch.tensor(3.0), "edge": torch.tensor(1.0)})
    >>> lb.weights
    {'pixel': 0.25, 'edge': 0.75}
    >>> total
    tensor(1.5000)
    """

    min_tasks = 2
    _why_min_tasks = "with a single task its weight 1 - L/L is always zero"

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]

    def compute_weights(
        self,
        names: list[str],
        losses: list[Tensor],
        values: Tensor,
        *,
        representation: Tensor | None = None,
    ) -> Tensor:
        check_non_negative(names, values, "LossBalance")
        return balance(self.statistic("loss", values))
