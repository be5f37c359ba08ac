"""Dynamic weight average (Liu, Johns and Davison 2019)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from mtlweight._base import Stateful
from mtlweight._validation import check_non_negative


class DynamicWeightAverage(Stateful):
    r"""Dynamic weight average (DWA) of `End-to-End Multi-Task Learning with
    Attention` (Liu, Johns and Davison, CVPR 2019).

    .. math::

        w_t(k) = \frac{T \exp\big(r_t(k-1) / \tau\big)}
                      {\sum_{j=1}^{T} \exp\big(r_j(k-1) / \tau\big)},
        \qquad
        r_t(k-1) = \frac{L_t(k-1)}{L_t(k-2)}

    where:

    - :math:`L_t(k)` is the loss of task :math:`t` at step :math:`k` (or its
      mean over epoch :math:`k` with ``per_epoch=True``);
    - :math:`r_t` is its rate of change: a task whose loss decreases slowly
      (:math:`r_t` near or above 1) gets a larger weight;
    - :math:`\tau` is the ``temperature``: the larger, the closer the weights
      are to 1;
    - :math:`T` is the number of tasks.

    The weights are positive and sum to :math:`T`. For the first two steps
    (epochs) there is no rate yet and every weight is 1. If
    :math:`L_t(k-2) = 0` the rate is taken as 1.

    Parameters
    ----------
    temperature
        :math:`\tau > 0` (the paper uses 2).
    per_epoch
        ``False`` (default): :math:`L_t(k)` is the loss of the previous call.
        ``True``: as in the paper, :math:`L_t(k)` is the mean loss of an epoch;
        call :meth:`epoch_end` after each epoch, and the weights stay fixed
        within an epoch.
    **kwargs
        Passed to :class:`~mtlweight.Weighting` (``tasks``, ``history_size``, ``sync``).

    Raises
    ------
    ValueError
        With a negative loss (naming the task) or a change in the task names.
    FloatingPointError
        If a loss is NaN or infinite (naming the task).

    .. note::
        The per-step default reacts within an epoch but follows the noise of
        single batches; choose ``per_epoch=True`` to reproduce the paper.

    Examples
    --------
    >>> import torch, mtlweight as mw
    >>> dwa = mw.DynamicWeightAverage(temperature=1.0)
    >>> for pixel, edge in [(4.0, 4.0), (2.0, 4.0), (1.0, 1.0)]:
    ...     total = dwa({"pixel": torch.tensor(pixel), "edge": torch.tensor(edge)})
    >>> dwa.history[1]  # the second step still has weights 1
    {'pixel': 1.0, 'edge': 1.0}
    >>> {k: round(v, 4) for k, v in dwa.weights.items()}  # rates 0.5 and 1
    {'pixel': 0.7551, 'edge': 1.2449}
    """


    def __init__(self, temperature: float = 2.0, *, per_epoch: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not (math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"temperature must be a positive number; found {temperature}")
        self.temperature = float(temperature)
        self.per_epoch = bool(per_epoch)
        # The last two (epoch-mean) loss vectors, oldest first, in the order of ``tasks``.
        self._previous: list[Tensor] = []
        self._epoch_sum: Tensor | None = None
        self._epoch_count = 0

    def compute_weights(
        self,
        names: list[str],
        losses: list[Tensor],
        values: Tensor,
        *,
        representation: Tensor | None = None,
    ) -> Tensor:
        check_non_negative(names, values, "DynamicWeightAverage")
        order = self.task_map(names)
        current = order.to_state(self.statistic("loss", values))
        if len(self._previous) < 2:
            weights = torch.ones_like(values)
        else:
            older, newer = (p.to(values) for p in self._previous)
            rates = torch.where(older > 0, newer / torch.where(older > 0, older, 1.0), 1.0)
            weights = values.numel() * torch.softmax(rates / self.temperature, dim=0)
        if self.per_epoch:
            self._epoch_sum = current if self._epoch_sum is None else self._epoch_sum + current
            self._epoch_count += 1
        else:
            self._push(current)
        return order.to_call(weights)

    def epoch_end(self) -> None:
        """Close an epoch (``per_epoch=True``): its mean losses enter the rates.

        Raises
        ------
        RuntimeError
            Without ``per_epoch=True``, or if no loss was seen since the last call.
        """
        if not self.per_epoch:
            raise RuntimeError(
                "epoch_end() is for DynamicWeightAverage(per_epoch=True); this one uses the "
                "losses of each step"
            )
        if self._epoch_sum is None:
            raise RuntimeError("epoch_end() called with no loss seen since the last epoch_end()")
        self._push(self._epoch_sum / self._epoch_count)
        self._epoch_sum, self._epoch_count = None, 0

    def _push(self, losses: Tensor) -> None:
        self._previous = [*self._previous[-1:], losses.detach()]

    def get_extra_state(self) -> dict[str, Any]:
        return {
            **super().get_extra_state(),
            "previous": list(self._previous),
            "epoch_sum": self._epoch_sum,
            "epoch_count": self._epoch_count,
        }

    def set_extra_state(self, state: Any) -> None:
        super().set_extra_state(state)
        self._previous = list(state.get("previous", []))
        self._epoch_sum = state.get("epoch_sum")
        self._epoch_count = int(state.get("epoch_count", 0))

    def extra_repr(self) -> str:
        parts = [f"temperature={self.temperature}", f"per_epoch={self.per_epoch}"]
        return ", ".join([*parts, super().extra_repr()] if self.tasks else parts)
