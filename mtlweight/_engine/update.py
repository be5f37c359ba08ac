"""Applying an update: ``.grad`` writes, and the backward passes that finish a step."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor
from torch.autograd.graph import GradientEdge

from mtlweight._engine.grads import TaskGrads


def weighted_total(values: Sequence[Tensor], weights: Sequence[float]) -> Tensor:
    r""":math:`\sum_t w_t L_t` in each loss's dtype, with the weights as constants.

    The weights multiply as Python numbers (no tensor to convert, nothing saved for
    the backward pass) and a weight of exactly 1 adds its loss as it is, so that
    ``Fixed`` with unit weights builds the graph of ``sum(losses)``.
    """
    terms = [
        (v if v.dim() == 0 else v.reshape(())) if w == 1.0 else v.reshape(()) * w
        for v, w in zip(values, weights, strict=True)
    ]
    if len(terms) == 1 and terms[0] is values[0]:
        return values[0] * 1.0  # a new tensor, never the caller's own
    total = terms[0]
    for term in terms[1:]:
        total = total + term
    return total


def cpu_total(values: list[Tensor], weights: list[float]) -> Tensor | None:
    """The short path of constant weights: the total of finite CPU scalar losses, else ``None``.

    The losses are checked through the total alone (a sum is finite only if every
    term is), so one ``.item()`` serves; see :meth:`mtlweight.Fixed.forward`.

    ``None`` when a value is not a 0-d floating tensor on the CPU (a tensor on
    another device moves the total off the CPU) or when the total is not finite;
    the full path then names the task, or passes an overflowing sum as it would.
    """
    for v in values:
        if not (isinstance(v, Tensor) and v.dim() == 0 and v.is_floating_point()):
            return None
    if len(values) != len(weights) or not values[0].is_cpu:
        return None
    total = weighted_total(values, weights)
    if not total.is_cpu or not math.isfinite(total.item()):
        return None
    return total


def add_grad(tensor: Tensor, grad: Tensor) -> None:
    """Accumulate ``grad`` into ``tensor.grad`` as ``backward()`` does (``grad`` is not copied)."""
    # only the conversions that change something: each is a dispatch, per tensor, per step
    if grad.requires_grad:
        grad = grad.detach()
    if grad.dtype != tensor.dtype:
        grad = grad.to(tensor.dtype)
    if grad.shape != tensor.shape:
        grad = grad.view_as(tensor)
    if tensor.grad is None:
        tensor.grad = grad  # a fresh tensor (or a piece of the method's own d)
    else:
        tensor.grad.add_(grad)


def write(
    shared: Sequence[Tensor], pieces: Sequence[Tensor], others: Sequence[tuple[Tensor, Tensor]]
) -> None:
    """Accumulate ``d`` into the shared ``.grad`` and the others' combinations into theirs."""
    for tensor, piece in zip(shared, pieces, strict=True):
        add_grad(tensor, piece)
    for leaf, grad in others:
        add_grad(leaf, grad)


def pieces_of(
    weights: Tensor,
    direction: Tensor | None,
    inputs: Sequence[Tensor],
    grads: TaskGrads,
    *,
    in_place: bool,
) -> list[Tensor]:
    """:math:`d` cut into one tensor per input (the first targets of ``grads``).

    :math:`d = J^\\top w` from ``grads``, or the given ``direction`` split.
    """
    if direction is not None:
        sizes = [t.numel() for t in inputs]
        return [piece.view_as(t)
                for t, piece in zip(inputs, torch.split(direction, sizes), strict=True)]
    return grads.combine(weights, 0, len(inputs), in_place=in_place)


class _Replace:
    """Tensor hook that replaces the incoming gradient by a fixed tensor."""

    def __init__(self, value: Tensor) -> None:
        self.value = value

    def __call__(self, grad: Tensor) -> Tensor:
        return self.value.to(grad.dtype)


def backward_total(losses: Sequence[Tensor], scale: Sequence[float]) -> None:
    """Backpropagate :math:`\\sum_t s_t L_t` (``.grad`` written by autograd)."""
    torch.autograd.backward(weighted_total(losses, scale))


def backward_replacing(
    losses: Sequence[Tensor], scale: Tensor, inputs: Sequence[Tensor], pieces: Sequence[Tensor]
) -> None:
    """Backpropagate :math:`\\sum_t s_t L_t` with ``pieces`` of :math:`d` in place of its
    gradient at ``inputs``; everything downstream of them sees the plain gradients."""
    handles = [
        tensor.register_hook(_Replace(piece.view_as(tensor)))  # type: ignore[no-untyped-call]
        for tensor, piece in zip(inputs, pieces, strict=True)
    ]
    try:
        backward_total(losses, scale.tolist())
    finally:
        for handle in handles:
            handle.remove()


def backward_from_cut(
    cut: Sequence[GradientEdge], at_cut: list[list[Tensor | None]], scale: Tensor
) -> None:
    """Backpropagate :math:`\\sum_t s_t g_t` from each cut edge (tasks that miss it add nothing)."""
    c = [float(v) for v in scale.tolist()]
    edges: list[GradientEdge] = []
    grads: list[Tensor] = []
    for j, edge in enumerate(cut):
        total: Tensor | None = None
        for t, row in enumerate(at_cut):
            g = row[j]
            if g is None:
                continue
            total = g * c[t] if total is None else total.add_(g, alpha=c[t])
        if total is not None:
            edges.append(edge)
            grads.append(total)
    if edges:
        torch.autograd.backward(edges, grads)
