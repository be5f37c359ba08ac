"""Accumulation across micro-batches: the per-task gradients summed, weighted once per step."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from mtlweight._engine.grads import TaskGrads, flat, split_columns, weighted_sum
from mtlweight._engine.graph import graph_leaves
from mtlweight._engine.passes import task_pass
from mtlweight._engine.update import pieces_of, write


class Accumulated:
    """Running sums over micro-batches: the losses and the rows of the shared and other leaves."""

    def __init__(self, names: list[str]) -> None:
        self.names = names
        self.values: Tensor | None = None
        self.shared: list[Tensor] = []
        self.rows: list[Tensor] = []  # rows of the shared tensors
        self.others: dict[int, tuple[Tensor, Tensor]] = {}  # id -> (leaf, (T, *shape) sum)

    def add(
        self, values: Tensor, shared: list[Tensor], others: list[Tensor], rows: list[Tensor]
    ) -> None:
        """Add one micro-batch: ``rows`` are those of ``shared + others``."""
        split = len(shared)
        if self.values is None:
            self.values, self.shared, self.rows = values.clone(), list(shared), rows[:split]
        elif [id(t) for t in shared] != [id(t) for t in self.shared]:
            raise ValueError(
                "the shared parameters that require grad changed between micro-batches of one "
                "accumulated step; freeze or unfreeze layers between optimizer steps"
            )
        else:
            self.values = self.values + values
            self.rows = [a + b for a, b in zip(self.rows, rows[:split], strict=True)]
        for leaf, r in zip(others, rows[split:], strict=True):
            previous = self.others.get(id(leaf))
            self.others[id(leaf)] = (leaf, r if previous is None else previous[1] + r)

    def add_pass(
        self, losses: list[Tensor], values: Tensor, shared: list[Tensor], *, batched: bool | None
    ) -> bool | None:
        """One micro-batch's passes to the shared tensors and every other leaf (graph freed).

        Returns what the passes learnt of ``batched`` (see :class:`~.passes.Pass`).
        """
        others = graph_leaves(losses, shared)
        found = task_pass(losses, [*shared, *others], keep_graph=False, batched=batched)
        self.add(values, shared, others, found.grads.rows())
        return batched if found.batched is None else found.batched

    def gradients(self, reduce: Callable[[Tensor], Tensor] | None) -> TaskGrads:
        """The summed rows of the shared tensors (``reduce``: their all-reduce under DDP)."""
        rows = self.rows
        if reduce is not None:
            rows = split_columns(reduce(flat(rows)), self.shared)
        return TaskGrads.of_rows(rows)

    def apply(
        self,
        grads: TaskGrads,
        weights: Tensor,
        direction: Tensor | None,
        *,
        plain: bool,
        reduce: Callable[[Tensor], Tensor] | None,
    ) -> None:
        """Write :math:`d` into the shared ``.grad`` and the others' combinations into theirs."""
        others = list(self.others.values())
        if reduce is not None:
            others = [(leaf, reduce(r)) for leaf, r in others]
        scale = torch.ones_like(weights) if plain else weights
        pieces = pieces_of(weights, direction, self.shared, grads, in_place=False)
        write(self.shared, pieces, [(leaf, weighted_sum(scale, r)) for leaf, r in others])
