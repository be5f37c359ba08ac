"""What the gradient-level methods differentiate: shared inputs resolved per step, J, G."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from mtlweight.autograd import as_inputs
from mtlweight.distributed import all_reduce_mean, is_distributed

if TYPE_CHECKING:
    from mtlweight._base import Weighting

__all__ = ["SharedInputs", "describe", "grad_norm_statistic", "gram", "jacobian", "require_reached"]


class SharedInputs:
    """The shared parameters, resolved at every step.

    A module contributes the parameters that require grad *now*, so freezing
    or unfreezing a layer after the strategy is built just works; an iterable
    of tensors is kept as given and filtered the same way at each step.
    ``None`` means that every call passes ``representation=``.
    """

    def __init__(self, source: nn.Module | Iterable[Tensor] | None) -> None:
        self.module: nn.Module | None = None
        self.tensors: list[Tensor] | None = None
        if isinstance(source, nn.Module):
            self.module = source
        elif source is not None:
            tensors = [source] if isinstance(source, Tensor) else list(source)
            as_inputs(tensors)  # type checks; raises if none requires grad
            self.tensors = tensors  # all of them: a frozen one may be unfrozen later

    @property
    def given(self) -> bool:
        return self.module is not None or self.tensors is not None

    def resolve(self, strategy: str) -> list[Tensor]:
        """The shared tensors that require grad at this step (tied weights once)."""
        if self.module is not None:
            candidates: list[Tensor] = list(self.module.parameters())
        elif self.tensors is not None:
            candidates = self.tensors
        else:
            raise ValueError(
                f"{strategy} needs the shared parameters ({strategy}(shared=...)) or a shared "
                f"tensor (weighting(losses, representation=features))"
            )
        seen: set[int] = set()
        result = []
        for t in candidates:
            if t.requires_grad and id(t) not in seen:
                seen.add(id(t))
                result.append(t)
        if not result:
            raise ValueError(
                f"{strategy}: none of the {len(candidates)} shared parameters requires grad at "
                "this step (all frozen?): unfreeze one or pass representation="
            )
        return result


def describe(inputs: Sequence[Tensor], representation: bool) -> str:
    """Name the differentiated tensors in an error message."""
    if representation:
        t = inputs[0]
        return f"the representation= tensor (shape {tuple(t.shape)}, {t.dtype})"
    shapes = [tuple(t.shape) for t in inputs[:4]]
    more = ", ..." if len(inputs) > 4 else ""
    return f"the {len(inputs)} shared parameters (shapes {str(shapes)[1:-1]}{more})"


def jacobian(losses: Sequence[Tensor], inputs: Sequence[Tensor]) -> tuple[Tensor, bool]:
    """The ``(T, P)`` per-task gradients of ``inputs`` and whether any loss reached them.

    One backward pass per task that stops at ``inputs`` and keeps the graph;
    ``.grad`` is not touched. An input a loss does not reach counts as zero.
    """
    rows = []
    reached = False
    for loss in losses:
        grads: Sequence[Tensor | None] = [None] * len(inputs)
        if loss.requires_grad:
            grads = torch.autograd.grad(loss, inputs, retain_graph=True, allow_unused=True)
        reached = reached or any(g is not None for g in grads)
        rows.append(
            torch.cat(
                [
                    (torch.zeros_like(t) if g is None else g).reshape(-1)
                    for t, g in zip(inputs, grads, strict=True)
                ]
            )
        )
    return torch.stack(rows), reached


def gram(jac: Tensor) -> Tensor:
    """``jac @ jac.T`` in float64 on the CPU, accumulated in float32 (float64 for float64 input).

    On the CPU the entries are pairwise dot products: a BLAS matrix product
    of a few rows can wait tens of milliseconds for its thread pool to wake.
    """
    acc = torch.float64 if jac.dtype == torch.float64 else torch.float32
    mat = jac.to(acc)
    if mat.device.type != "cpu":
        return (mat @ mat.T).to(device="cpu", dtype=torch.float64)
    count = mat.shape[0]
    result = torch.empty(count, count, dtype=torch.float64)
    for i in range(count):
        for k in range(i, count):
            result[i, k] = result[k, i] = torch.dot(mat[i], mat[k])
    return result


def require_reached(
    weighting: Weighting, reached: bool, inputs: Sequence[Tensor], per_sample: bool
) -> None:
    """Raise ``ValueError`` naming the representation if no loss reached it (on any rank).

    Shared parameters that no loss reaches are not an error: their task
    gradients are zero, as documented for every method (GB: weights 1 - 1/T).
    """
    if not per_sample:
        return
    if weighting.sync and is_distributed():  # every rank raises together
        reached = not bool(all_reduce_mean(torch.tensor([float(not reached)])).item() > 0)
    if not reached:
        raise ValueError(
            f"{type(weighting).__name__}: no loss reaches {describe(inputs, per_sample)}, so "
            "every task gradient would be zero. Pass the tensor the losses are computed from "
            "(not a detached copy or an extra output of a compiled graph)"
        )


def grad_norm_statistic(
    weighting: Weighting,
    losses: list[Tensor],
    shared: SharedInputs,
    representation: Tensor | None = None,
) -> Tensor:
    """Per-task gradient norms, identical on every rank; kept as ``statistics["grad_norm"]``.

    With a ``representation`` (it wins over ``shared``) the squared norms are
    averaged across processes: the representation holds per-sample values,
    squared norms add up over samples, and the common factor ``1/R`` does not
    change normalised weights. With shared parameters under
    :mod:`torch.distributed`, the per-task gradients are averaged before the
    norms are taken: with mean losses, the norms one process would compute on
    the combined batch. Raises ``ValueError`` if no loss reaches the tensors.
    """
    per_sample = representation is not None
    inputs = as_inputs(representation) if representation is not None else shared.resolve(
        type(weighting).__name__
    )
    jac, reached = jacobian(losses, inputs)
    require_reached(weighting, reached, inputs, per_sample)
    acc = torch.float64 if jac.dtype == torch.float64 else torch.float32
    if per_sample:
        norms = weighting.statistic("grad_norm_squared", jac.to(acc).square().sum(1)).sqrt()
    else:
        if weighting.sync and is_distributed():
            jac = weighting.statistic("task_gradients", jac)
            del weighting.statistics["task_gradients"]
        norms = jac.to(acc).norm(dim=1)
    weighting.statistics["grad_norm"] = norms
    return norms


def graph_leaves(losses: Sequence[Tensor], exclude: Sequence[Tensor]) -> list[Tensor]:
    """The leaf tensors that require grad reached by the losses' graphs, except ``exclude``.

    These are the tensors ``sum(losses).backward()`` would write ``.grad`` of:
    the ``AccumulateGrad`` nodes of the graph, found by one walk over it.
    """
    skip = {id(t) for t in exclude}
    found: list[Tensor] = []
    seen: set[int] = set()
    stack = []
    for loss in losses:
        if loss.grad_fn is not None:
            stack.append(loss.grad_fn)
        elif loss.requires_grad and id(loss) not in skip and id(loss) not in seen:
            seen.add(id(loss))
            found.append(loss)  # a leaf loss
    visited: set[int] = set()
    while stack:
        node = stack.pop()
        if id(node) in visited:
            continue
        visited.add(id(node))
        variable = getattr(node, "variable", None)
        if isinstance(variable, Tensor):
            if id(variable) not in skip and id(variable) not in seen:
                seen.add(id(variable))
                found.append(variable)
            continue
        stack.extend(child for child, _ in node.next_functions if child is not None)
    return found


def per_task_gradients(
    losses: Sequence[Tensor], inputs: Sequence[Tensor], *, keep_graph: bool
) -> list[list[Tensor]]:
    """``[[dL_t/dx for x in inputs] for t]``, zeros where a loss does not reach an input.

    One backward pass per task; the last one frees the graph unless ``keep_graph``.
    """
    rows = []
    for i, loss in enumerate(losses):
        grads: Sequence[Tensor | None] = [None] * len(inputs)
        if loss.requires_grad:
            retain = keep_graph or i < len(losses) - 1
            grads = torch.autograd.grad(loss, inputs, retain_graph=retain, allow_unused=True)
        rows.append(
            [torch.zeros_like(t) if g is None else g for t, g in zip(inputs, grads, strict=True)]
        )
    return rows


class Accumulated:
    """Running sums over micro-batches: losses, the shared ``J`` and the other leaves' rows."""

    def __init__(self, names: list[str]) -> None:
        self.names = names
        self.count = 0
        self.values: Tensor | None = None
        self.jac: Tensor | None = None
        self.shared: list[Tensor] = []
        self.others: dict[int, tuple[Tensor, Tensor]] = {}  # id -> (leaf, (T, *shape) sum)

    def add(
        self, values: Tensor, shared: list[Tensor], others: list[Tensor], rows: list[list[Tensor]]
    ) -> None:
        """Add one micro-batch: ``rows[t]`` holds the gradients of ``shared + others``."""
        split = len(shared)
        jac = torch.stack([torch.cat([g.reshape(-1) for g in row[:split]]) for row in rows])
        if self.jac is None or self.values is None:
            self.values, self.jac, self.shared = values.clone(), jac, list(shared)
        elif [id(t) for t in shared] != [id(t) for t in self.shared]:
            raise ValueError(
                "the shared parameters that require grad changed between micro-batches of one "
                "accumulated step; freeze or unfreeze layers between optimizer steps"
            )
        else:
            self.values = self.values + values
            self.jac = self.jac + jac
        for k, leaf in enumerate(others):
            stacked = torch.stack([row[split + k] for row in rows])
            previous = self.others.get(id(leaf))
            self.others[id(leaf)] = (leaf, stacked if previous is None else previous[1] + stacked)
        self.count += 1


def add_grad(tensor: Tensor, grad: Tensor) -> None:
    """Accumulate ``grad`` into ``tensor.grad`` as ``backward()`` does."""
    grad = grad.detach().to(tensor.dtype).view_as(tensor)
    if tensor.grad is None:
        tensor.grad = grad.clone()
    else:
        tensor.grad.add_(grad)
