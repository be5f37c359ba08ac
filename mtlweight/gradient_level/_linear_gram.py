"""Per-task gradients of shared ``nn.Linear`` layers kept as activations, never formed.

For a linear layer :math:`y = x W^\\top + b` over ``N`` rows (the batch, and any
leading dimensions flattened), the gradient of task ``t``'s loss is

.. math::

    \\nabla_W L_t = \\Delta_t^\\top x, \\qquad \\nabla_b L_t = \\Delta_t^\\top \\mathbf{1},
    \\qquad \\Delta_t = \\partial L_t / \\partial y \\in \\mathbb{R}^{N \\times d_{out}}

so every entry of the Gram matrix and every combination of the task gradients
comes from the small ``Delta_t`` and ``x``:

.. math::

    \\langle \\nabla_W L_s, \\nabla_W L_t \\rangle
        = \\big\\langle \\Delta_s \\Delta_t^\\top,\\ x x^\\top \\big\\rangle_F, \\qquad
    \\sum_t c_t \\nabla_W L_t = \\Big(\\sum_t c_t \\Delta_t\\Big)^\\top x.

The per-task backward passes then stop at the layers' outputs (``GradientEdge``
targets) and skip the weight-gradient products; one product per layer, with the
combined ``Delta``, makes the update. :func:`linear_taps` finds the layers in the
autograd graph (``AddmmBackward0`` nodes fed by ``W.t()`` and a bias leaf) and
says ``None`` unless every shared tensor is the weight or bias of such a layer,
used once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.autograd.graph import GradientEdge, get_gradient_edge

from mtlweight.gradient_level._task_grads import TaskGrads, gram_pairs, symmetric

__all__ = ["LinearGrads", "LinearTap", "linear_taps", "linear_task_grads"]


@dataclass(frozen=True)
class LinearTap:
    """One shared linear layer in the graph: its node, parameters and saved input ``(N, d_in)``."""

    node: Any
    weight: Tensor
    bias: Tensor | None
    inputs: Tensor


def _leaf(node: Any) -> Tensor | None:
    variable = getattr(node, "variable", None)
    return variable if isinstance(variable, Tensor) else None


def linear_taps(losses: Sequence[Tensor], shared: Sequence[Tensor]) -> list[LinearTap] | None:
    """The shared tensors as the weights and biases of linear layers used once, else ``None``.

    Walks the graph of ``losses`` once, counting the edges into every node: a
    shared tensor used twice (tied weights, a layer called twice), or used by
    anything but a plain linear layer, or a layer whose bias is trainable but
    not shared, means ``None`` (the general path).
    """
    if not shared or any(loss.requires_grad and loss.grad_fn is None for loss in losses):
        return None
    shared_ids = {id(t) for t in shared}
    parents: dict[int, int] = {}
    seen: dict[int, Any] = {}
    stack = [loss.grad_fn for loss in losses if loss.grad_fn is not None]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen[id(node)] = node
        for child, _ in node.next_functions:
            if child is not None:
                parents[id(child)] = parents.get(id(child), 0) + 1
                if id(child) not in seen:
                    stack.append(child)
    taps: list[LinearTap] = []
    covered: set[int] = set()
    for node in seen.values():
        if type(node).__name__ != "AddmmBackward0":
            continue
        (bias_fn, _), _, (t_fn, _) = node.next_functions
        if t_fn is None or type(t_fn).__name__ != "TBackward0":
            continue
        weight = _leaf(t_fn.next_functions[0][0])
        if weight is None or id(weight) not in shared_ids:
            continue
        bias = None if bias_fn is None else _leaf(bias_fn)
        once = parents.get(id(t_fn)) == 1 and parents.get(id(t_fn.next_functions[0][0])) == 1
        plain = node._saved_alpha == 1 and node._saved_beta == 1 and weight.dim() == 2
        if bias_fn is not None:
            once = once and bias is not None and parents.get(id(bias_fn)) == 1
            plain = plain and bias is not None and id(bias) in shared_ids and bias.dim() == 1
        inputs = node._saved_mat1
        if not (once and plain and isinstance(inputs, Tensor) and inputs.dim() == 2):
            return None
        taps.append(LinearTap(node, weight, bias, inputs.detach()))
        covered.add(id(weight))
        if bias is not None:
            covered.add(id(bias))
    return taps if taps and covered == shared_ids else None


class LinearGrads(TaskGrads):
    """:class:`TaskGrads` whose first targets (the shared layers' parameters) are implicit.

    ``deltas[t][l]`` is :math:`\\Delta_t` of tap ``l``; ``shared`` the shared
    tensors in the caller's order (each a tap's weight or bias); ``extra`` the
    explicit gradients of the other targets, one list per task.
    """

    def __init__(
        self,
        taps: list[LinearTap],
        shared: Sequence[Tensor],
        deltas: list[list[Tensor]],
        extra: list[list[Tensor]],
    ) -> None:
        super().__init__(extra)
        self.taps = taps
        self.deltas = deltas
        self.count = len(shared)
        where = {}
        for index, tap in enumerate(taps):
            where[id(tap.weight)] = (index, False)
            if tap.bias is not None:
                where[id(tap.bias)] = (index, True)
        self.where = [where[id(t)] for t in shared]

    @property
    def tasks(self) -> int:
        return len(self.deltas)

    @property
    def targets(self) -> int:
        return self.count + (len(self.grads[0]) if self.grads else 0)

    def _split(self, start: int, stop: int | None) -> tuple[int, int]:
        stop = self.targets if stop is None else stop
        if (start, stop) != (0, self.count) and start < self.count:
            raise NotImplementedError("LinearGrads serves the shared targets as one block")
        return start, stop

    def gram(
        self, start: int = 0, stop: int | None = None, *, diagonal_only: bool = False
    ) -> Tensor:
        start, stop = self._split(start, stop)
        if start >= self.count:
            return super().gram(start - self.count, stop - self.count, diagonal_only=diagonal_only)
        count = self.tasks
        pairs = gram_pairs(count, diagonal_only)
        parts: list[Tensor] = []
        for index, tap in enumerate(self.taps):
            x = self._acc(tap.inputs)
            deltas = [self._acc(row[index]) for row in self.deltas]
            rows, width_in = x.shape
            width_out = deltas[0].shape[1]
            ghost = rows * (width_in + len(pairs) * width_out) < count * width_in * width_out
            if ghost:  # N x N products: cheaper than forming the d_out x d_in gradients
                outer = x @ x.T
                values = [((deltas[i] @ deltas[k].T) * outer).sum() for i, k in pairs]
            else:
                full = [d.T @ x for d in deltas]
                values = [torch.dot(full[i].reshape(-1), full[k].reshape(-1)) for i, k in pairs]
            if tap.bias is not None:
                sums = [d.sum(0) for d in deltas]
                values = [v + torch.dot(sums[i], sums[k]) for v, (i, k) in zip(values, pairs,
                                                                                strict=True)]
            parts.append(torch.stack(values).double())
        return symmetric(count, pairs, torch.stack(parts).sum(0).cpu())

    def combine(
        self, coefficients: Tensor, start: int = 0, stop: int | None = None, *, in_place: bool
    ) -> list[Tensor]:
        start, stop = self._split(start, stop)
        if start >= self.count:
            return super().combine(coefficients, start - self.count, stop - self.count,
                                   in_place=in_place)
        c = [float(v) for v in coefficients.tolist()]
        made: list[tuple[Tensor, Tensor | None]] = []
        for index, tap in enumerate(self.taps):
            mixed = self._acc(self.deltas[0][index]) * c[0]
            for t in range(1, self.tasks):
                mixed.add_(self._acc(self.deltas[t][index]), alpha=c[t])
            weight = mixed.T @ self._acc(tap.inputs)
            made.append((weight, None if tap.bias is None else mixed.sum(0)))
        return [made[i][1] if is_bias else made[i][0]  # type: ignore[misc]
                for i, is_bias in self.where]

    def matrix(self, start: int = 0, stop: int | None = None) -> Tensor:
        start, stop = self._split(start, stop)
        if start >= self.count:
            return super().matrix(start - self.count, stop - self.count)
        rows = []
        for t in range(self.tasks):
            pieces = []
            for index, is_bias in self.where:
                delta = self.deltas[t][index]
                if is_bias:
                    pieces.append(delta.sum(0))
                else:
                    pieces.append((delta.T @ self.taps[index].inputs).reshape(-1))
            rows.append(torch.cat(pieces))
        return torch.stack(rows)


def linear_task_grads(
    losses: Sequence[Tensor], taps: list[LinearTap], shared: Sequence[Tensor],
    extra: Sequence[Tensor],
) -> tuple[LinearGrads, bool]:
    """One backward pass per task to the taps' outputs and the ``extra`` leaves (graph freed)."""
    # all as edges (autograd.grad takes tensors or edges, not both): a leaf's edge is its
    # gradient accumulator's
    targets = [GradientEdge(tap.node, 0) for tap in taps] + [get_gradient_edge(t) for t in extra]
    live = [loss.requires_grad for loss in losses]
    last = max((i for i, flag in enumerate(live) if flag), default=-1)
    deltas: list[list[Tensor]] = []
    others: list[list[Tensor]] = []
    reached = False
    for i, loss in enumerate(losses):
        found: Sequence[Tensor | None] = [None] * len(targets)
        if live[i]:
            found = torch.autograd.grad(loss, targets, retain_graph=i < last, allow_unused=True)
        reached = reached or any(g is not None for g in found[: len(taps)])
        deltas.append([
            torch.zeros(tap.inputs.shape[0], tap.weight.shape[0], dtype=tap.weight.dtype,
                        device=tap.weight.device) if g is None else g
            for tap, g in zip(taps, found[: len(taps)], strict=True)
        ])
        others.append([torch.zeros_like(t) if g is None else g
                       for t, g in zip(extra, found[len(taps):], strict=True)])
    return LinearGrads(taps, shared, deltas, others), reached
