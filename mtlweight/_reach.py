"""Which losses reach none of the shared inputs: a walk of the autograd graph, no pass."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor

__all__ = ["unreached"]


def unreached(losses: Sequence[Tensor], inputs: Sequence[Tensor]) -> list[int]:
    """Positions of the losses whose graph reaches none of ``inputs``.

    One walk of the union of the losses' graphs (each node visited once), from
    the losses down to the leaves; a loss that does not require grad (detached)
    reaches nothing.

    Examples
    --------
    >>> import torch
    >>> theta = torch.nn.Parameter(torch.ones(2))
    >>> head = torch.nn.Parameter(torch.ones(2))
    >>> features = theta * 2
    >>> unreached([(features * head).sum(), (features.detach() * head).sum()], [theta])
    [1]
    """
    nodes = [t.grad_fn for t in inputs if t.grad_fn is not None]
    targets = {id(n) for n in nodes}  # non-leaf inputs: their nodes
    leaves = {id(t) for t in inputs if t.grad_fn is None}  # leaves: AccumulateGrad.variable
    memo: dict[int, bool] = {}  # node id -> reaches a target
    pinned: list[Any] = []  # every visited node, alive until the end: their ids stay unique
    for loss in losses:
        root = loss.grad_fn
        if root is None or id(root) in memo:
            continue
        stack: list[tuple[Any, bool]] = [(root, False)]
        while stack:
            node, expanded = stack.pop()
            pinned.append(node)
            key = id(node)
            if key in memo and not expanded:
                continue
            children = [c for c, _ in node.next_functions if c is not None]
            if expanded:
                memo[key] = any(memo.get(id(c), False) for c in children)
                continue
            if key in targets or (
                not node.next_functions and id(getattr(node, "variable", None)) in leaves
            ):
                memo[key] = True
                continue
            memo[key] = False  # provisional: a graph has no cycles, so no one reads it early
            stack.append((node, True))
            stack.extend((c, False) for c in children if id(c) not in memo)
    return [i for i, loss in enumerate(losses) if not memo.get(id(loss.grad_fn), False)]
