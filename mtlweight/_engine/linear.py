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
from torch.autograd.graph import GradientEdge

from mtlweight._engine.grads import TaskGrads
from mtlweight._engine.graph import GraphCensus, census_of
from mtlweight._engine.passes import task_pass


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


def linear_taps(
    losses: Sequence[Tensor], shared: Sequence[Tensor], census: GraphCensus | None = None
) -> list[LinearTap] | None:
    """The shared tensors as the weights and biases of linear layers used once, else ``None``.

    Reads a complete ``census`` of the graph of ``losses`` (or takes one): a
    shared tensor used twice (tied weights, a layer called twice), or used by
    anything but a plain linear layer, or a layer whose bias is trainable but
    not shared, means ``None`` (the general path). So does a graph whose nodes
    do not look as this reading expects (a torch version that renamed a node
    or its saved tensors): the shortcut is then off, the results the same.
    """
    if not shared or any(loss.requires_grad and loss.grad_fn is None for loss in losses):
        return None
    if census is None:
        census = census_of(losses)
    shared_ids = {id(t) for t in shared}
    taps: list[LinearTap] = []
    for node in census.nodes.values():
        try:
            tap = _tap(node, shared_ids, census.parents)
        except (AttributeError, IndexError, RuntimeError, TypeError, ValueError):
            return None  # not the node layout this reading knows: no shortcut
        if tap is None:
            return None
        if tap is not _NOT_SHARED_LINEAR:
            taps.append(tap)  # type: ignore[arg-type]
    covered = {id(t) for tap in taps for t in (tap.weight, tap.bias) if t is not None}
    return taps if taps and covered == shared_ids else None


_NOT_SHARED_LINEAR = object()


def _tap(node: Any, shared_ids: set[int], parents: dict[int, int]) -> LinearTap | object | None:
    """``node`` as a tap; ``_NOT_SHARED_LINEAR`` if not a linear layer of a shared weight;
    ``None`` if it is one that the shortcut cannot serve (used twice, not plain)."""
    if type(node).__name__ != "AddmmBackward0":
        return _NOT_SHARED_LINEAR
    (bias_fn, _), _, (t_fn, _) = node.next_functions
    if t_fn is None or type(t_fn).__name__ != "TBackward0":
        return _NOT_SHARED_LINEAR
    weight = _leaf(t_fn.next_functions[0][0])
    if weight is None or id(weight) not in shared_ids:
        return _NOT_SHARED_LINEAR
    bias = None if bias_fn is None else _leaf(bias_fn)
    once = parents.get(id(t_fn)) == 1 and parents.get(id(t_fn.next_functions[0][0])) == 1
    plain = node._saved_alpha == 1 and node._saved_beta == 1 and weight.dim() == 2
    if bias_fn is not None:
        once = once and bias is not None and parents.get(id(bias_fn)) == 1
        plain = plain and bias is not None and id(bias) in shared_ids and bias.dim() == 1
    inputs = node._saved_mat1
    if not (once and plain and isinstance(inputs, Tensor) and inputs.dim() == 2):
        return None
    return LinearTap(node, weight, bias, inputs.detach())


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
        self._stacked: list[Tensor | None] | None = None

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

    def stacked(self, index: int) -> Tensor:
        """``(T, N, d_out)``: each task's :math:`\\Delta` of tap ``index`` (accumulation dtype).

        One copy per tap, kept: the Gram matrix and the combination each take one
        batched product over the tasks instead of one product per task.
        """
        if self._stacked is None:
            self._stacked = [None] * len(self.taps)
        found = self._stacked[index]
        if found is None:
            found = torch.stack([self._acc(row[index]) for row in self.deltas])
            self._stacked[index] = found
        return found

    def gram(
        self, start: int = 0, stop: int | None = None, *, diagonal_only: bool = False
    ) -> Tensor:
        start, stop = self._split(start, stop)
        if start >= self.count:
            return super().gram(start - self.count, stop - self.count, diagonal_only=diagonal_only)
        count = self.tasks
        total: Tensor | None = None
        for index, tap in enumerate(self.taps):
            x = self._acc(tap.inputs)
            deltas = self.stacked(index)  # (T, N, d_out)
            rows, width_in = x.shape
            width_out = deltas.shape[2]
            products = count if diagonal_only else count * count
            ghost = rows * (width_in + products * width_out) < count * width_in * width_out
            if ghost:  # N x N products: cheaper than forming the d_out x d_in gradients
                outer = x @ x.T
                if diagonal_only:  # <D_t D_t^T, x x^T> for each t
                    part = (torch.bmm(deltas, deltas.transpose(1, 2)) * outer).sum((1, 2))
                else:  # <D_s D_t^T, x x^T> for every (s, t)
                    flat = deltas.reshape(count * rows, width_out)
                    blocks = (flat @ flat.T).view(count, rows, count, rows)
                    part = (blocks * outer.view(1, rows, 1, rows)).sum((1, 3))
            else:
                full = torch.matmul(deltas.transpose(1, 2), x).reshape(count, -1)  # (T, P_l)
                part = full.square().sum(1) if diagonal_only else full @ full.T
            if tap.bias is not None:
                sums = deltas.sum(1)  # (T, d_out)
                part = part + (sums.square().sum(1) if diagonal_only else sums @ sums.T)
            part = part.double()
            total = part if total is None else total + part
        assert total is not None
        total = total.cpu()  # one transfer
        return torch.diag(total) if diagonal_only else (total + total.T) / 2

    def combine(
        self, coefficients: Tensor, start: int = 0, stop: int | None = None, *, in_place: bool
    ) -> list[Tensor]:
        start, stop = self._split(start, stop)
        if start >= self.count:
            return super().combine(coefficients, start - self.count, stop - self.count,
                                   in_place=in_place)
        made: list[tuple[Tensor, Tensor | None]] = []
        c: Tensor | None = None
        for index, tap in enumerate(self.taps):
            deltas = self.stacked(index)
            if c is None:
                c = coefficients.to(device=deltas.device, dtype=deltas.dtype)
            count, rows, width_out = deltas.shape
            mixed = torch.mv(deltas.view(count, -1).T, c).view(rows, width_out)  # sum_t c_t D_t
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
) -> LinearGrads:
    """One backward pass per task to the taps' outputs and the ``extra`` leaves (graph freed)."""
    found = task_pass(losses, extra, edges=[GradientEdge(tap.node, 0) for tap in taps],
                      keep_graph=False)
    deltas = [
        [torch.zeros(tap.inputs.shape[0], tap.weight.shape[0], dtype=tap.weight.dtype,
                     device=tap.weight.device) if g is None else g
         for tap, g in zip(taps, row, strict=True)]
        for row in found.at_edges
    ]
    return LinearGrads(taps, shared, deltas, found.grads.grads)
