"""Fixed, hand-chosen task weights."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from mtlweight._base import Weighting

__all__ = ["Fixed"]


class Fixed(Weighting):
    r"""Constant weights chosen by hand.

    .. math::

        L = \sum_{t=1}^{T} w_t L_t

    where :math:`w_t` is the weight given for task :math:`t`; it never changes.

    Parameters
    ----------
    weights
        A dict of task name -> weight (every call must then give exactly these
        tasks), or a sequence of weights matched to the losses by position.
    **kwargs
        Passed to :class:`~mtlweight.Weighting` (``history_size``, ``sync``).

    Examples
    --------
    >>> import torch, mtlweight as mw
    >>> fixed = mw.Fixed({"pixel": 1.0, "edge": 0.01})
    >>> fixed({"pixel": torch.tensor(2.0), "edge": torch.tensor(100.0)})
    tensor(3.)
    >>> fixed.weights
    {'pixel': 1.0, 'edge': 0.01}
    """

    def __init__(self, weights: Mapping[str, float] | Sequence[float], **kwargs: object) -> None:
        if "tasks" in kwargs:
            raise TypeError(
                "Fixed takes its task names from the keys of `weights`; pass a dict "
                "{name: weight} instead of tasks=..."
            )
        if isinstance(weights, Mapping):
            names: list[str] | None = [str(k) for k in weights]
            values = [float(v) for v in weights.values()]
        elif isinstance(weights, Sequence) and not isinstance(weights, str):
            names = None
            values = [float(v) for v in weights]
        else:
            raise TypeError(f"weights must be a dict or a sequence; found {type(weights).__name__}")
        if not values:
            raise ValueError("Fixed needs at least one weight")
        labels = names if names is not None else [str(i) for i in range(len(values))]
        for label, value in zip(labels, values, strict=True):
            if not math.isfinite(value):
                raise ValueError(f"weight of task {label!r} must be finite; found {value}")
        super().__init__(names, **kwargs)  # type: ignore[arg-type]
        self._values = values
        self._tensors: dict[tuple[tuple[int, ...] | None, torch.device], Tensor] = {}

    reads_values = False  # the weights are the given numbers: no loss value is needed

    def _check_tasks(self, names: list[str]) -> None:
        if self.tasks is not None:
            super()._check_tasks(names)
        elif len(names) != len(self._values):
            raise ValueError(
                f"Fixed was given {len(self._values)} weights by position but the call has "
                f"{len(names)} losses ({names})"
            )

    def compute_weights(
        self,
        names: list[str],
        losses: list[Tensor],
        values: Tensor,
        *,
        representation: Tensor | None = None,
    ) -> Tensor:
        # Built from the Python floats at each call, in float64, so that
        # ``weights`` reports exactly what was given (0.01, not 0.00999...) even
        # after ``model.half()``; the total is computed in each loss's dtype.
        index = self.task_index(names)
        key = (None if index is None else tuple(index), values.device)
        cached = self._tensors.get(key)
        if cached is None:  # made once per task order and device: not a buffer (no .half())
            chosen = self._values if index is None else [self._values[i] for i in index]
            cached = torch.tensor(chosen, dtype=torch.float64, device=values.device)
            self._tensors[key] = cached
        return cached
