"""Fixed, hand-chosen task weights."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from mtlweight._base import Weighting
from mtlweight._engine.update import cpu_total, weighted_total
from mtlweight._validation import NO_VALUES, Losses, check_finite, normalise_losses
from mtlweight.distributed import is_distributed


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
        # task names in call order -> the weights by name and as a list (checked names only)
        self._seen: dict[tuple[str, ...], tuple[dict[str, float], list[float]]] = {}

    reads_values = False  # the weights are the given numbers: no loss value is needed

    def forward(self, losses: Losses, *, representation: Tensor | None = None) -> Tensor:
        """Return :math:`\\sum_t w_t L_t`; see :meth:`Weighting.forward`.

        On the CPU (outside a distributed run) the losses are checked for NaN and
        infinity through the total alone: a sum of terms is finite only if every
        term is, so one ``.item()`` serves, and only a non-finite total reads each
        loss to name the task. A dict of losses with names in an order already
        seen takes a shorter path still (its names were checked then). On a
        small model a few microseconds of Python between the forward and the
        backward pass cost the step several times their own time (the code and
        data they touch have left the caches; ``benchmarks/fixed_overhead.py``),
        so these paths touch as little as they can.
        """
        if type(losses) is dict and not (self.sync and is_distributed()):
            seen = self._seen.get(tuple(losses))
            if seen is not None:
                total = cpu_total(list(losses.values()), seen[1])
                if total is not None:
                    self._record_floats(dict(seen[0]))
                    return total
        # the first call with these names in this order, another container, CUDA, a
        # distributed run, or a loss the short path does not accept: every check
        names, values = normalise_losses(losses)
        if not values[0].is_cpu or (self.sync and is_distributed()):
            return super().forward(losses, representation=representation)
        self._check_tasks(names)
        key = tuple(names)
        seen = self._seen.get(key)
        if seen is None:
            weights = self.compute_weights(names, values, NO_VALUES).tolist()
            seen = self._seen[key] = (dict(zip(names, weights, strict=True)), weights)
        total = weighted_total(values, seen[1])
        if not math.isfinite(total.item()):  # name the task; an overflow of the sum passes
            check_finite(names, torch.tensor([v.item() for v in values], dtype=torch.float64),
                         "loss")
        self._record_floats(dict(seen[0]))
        return total

    def _check_tasks(self, names: list[str]) -> None:
        if self.tasks is not None:
            super()._check_tasks(names)
        elif len(names) != len(self._values):
            raise ValueError(
                f"Fixed was given {len(self._values)} weights by position but the call has "
                f"{len(names)} losses ({names})"
            )

    def current_weights(self, names: list[str]) -> list[float]:
        """The given weights (known without a call)."""
        self._check_tasks(names)
        weights: list[float] = self.compute_weights(names, [], NO_VALUES).tolist()
        return weights

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
        index = self.task_map(names).to_call_index
        key = (None if index is None else tuple(index), values.device)
        cached = self._tensors.get(key)
        if cached is None:  # made once per task order and device: not a buffer (no .half())
            chosen = self._values if index is None else [self._values[i] for i in index]
            cached = torch.tensor(chosen, dtype=torch.float64, device=values.device)
            self._tensors[key] = cached
        return cached
