"""The per-task pass: each task's gradients of some targets, one backward pass per task.

Every gradient the library takes task by task comes from :func:`task_pass` (the
public :func:`~mtlweight.task_gradients`, GradNorm's norms, the Jacobian of the
gradient-level methods, their passes to a cut or to the outputs of linear layers,
and gradient accumulation): it holds the package's only calls of
:func:`torch.autograd.grad`, one per task or one vectorised over the tasks.

Targets are tensors (their gradients come back shaped like them, zeros where a
task does not reach them) and ``edges`` (:class:`~torch.autograd.graph.GradientEdge`:
an input of a node, such as the edge into a layer below the shared ones; ``None``
where a task does not reach it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.autograd.graph import GradientEdge, get_gradient_edge

from mtlweight._engine.grads import TaskGrads, unflat_row


@dataclass
class Pass:
    """What one per-task pass found.

    Attributes
    ----------
    grads
        The gradients of the tensor targets, ``grads.grads[t][j]`` (zeros where
        task ``t`` does not reach target ``j``).
    at_edges
        ``at_edges[t][k]``: task ``t``'s gradient at edge ``k``, ``None`` if not reached.
    reached
        Whether any task reached any tensor target.
    batched
        What to ask for next time: ``True`` after one vectorised backward
        (``is_grads_batched=True``), ``False`` after ``T`` passes that were
        asked for or that replaced a vectorised pass :func:`torch.vmap` could
        not run, ``None`` if still untried.
    """

    grads: TaskGrads
    at_edges: list[list[Tensor | None]]
    reached: bool
    batched: bool | None


def task_pass(
    losses: Sequence[Tensor],
    targets: Sequence[Tensor],
    *,
    keep_graph: bool,
    edges: Sequence[GradientEdge] = (),
    batched: bool | None = False,
    matrix: int = 0,
) -> Pass:
    """Each task's gradients of ``targets`` and at ``edges``; ``.grad`` is not touched.

    Parameters
    ----------
    losses
        ``T`` scalar tensors (one that does not require grad gets zeros).
    targets
        Tensors of the graph (parameters, a representation).
    keep_graph
        Keep the graph after the last pass (otherwise the last pass frees it).
    edges
        Gradient edges to differentiate too (the passes then take every target
        as an edge).
    batched
        ``True``: one vectorised backward pass instead of ``T`` (when every loss
        requires grad, there are no ``edges`` and ``T > 1``). ``None``: try it,
        keeping the graph this once, and fall back to ``T`` passes if
        :func:`torch.vmap` cannot batch the graph (:attr:`Pass.batched` says
        which ran).
    matrix
        Copy the gradients of the first ``matrix`` targets into one ``(T, P)``
        matrix :math:`J` after each task's pass and keep views of it, so that
        they are held once (:meth:`TaskGrads.matrix` then returns it as is).

    Examples
    --------
    >>> x = torch.tensor([1.0, 2.0], requires_grad=True)
    >>> found = task_pass([x.sum(), (x ** 2).sum()], [x], keep_graph=False)
    >>> found.grads.grads
    [[tensor([1., 1.])], [tensor([2., 4.])]]
    """
    live = [loss.requires_grad for loss in losses]
    if batched is not False and not edges and all(live) and len(losses) > 1:
        try:
            return _batched(losses, targets, keep_graph=keep_graph or batched is None)
        except (RuntimeError, NotImplementedError):  # an op vmap cannot batch
            if batched:
                raise
            batched = False
    found = _one_by_one(losses, targets, edges, keep_graph=keep_graph, matrix=matrix)
    found.batched = batched
    return found


def _batched(losses: Sequence[Tensor], targets: Sequence[Tensor], *, keep_graph: bool) -> Pass:
    """One vectorised backward pass for every task (rows of an identity as output grads)."""
    count = len(losses)
    out = torch.stack([loss.reshape(()) for loss in losses])
    eye = torch.eye(count, dtype=out.dtype, device=out.device)
    found = torch.autograd.grad(
        out, targets, eye, retain_graph=keep_graph, allow_unused=True, is_grads_batched=True
    )
    rows = [
        torch.zeros((count, *t.shape), dtype=t.dtype, device=t.device) if g is None else g
        for t, g in zip(targets, found, strict=True)
    ]
    reached = any(g is not None for g in found)
    return Pass(TaskGrads.of_rows(rows), [[] for _ in losses], reached, batched=True)


def _one_by_one(
    losses: Sequence[Tensor],
    targets: Sequence[Tensor],
    edges: Sequence[GradientEdge],
    *,
    keep_graph: bool,
    matrix: int,
) -> Pass:
    """One backward pass per task; the last one frees the graph unless ``keep_graph``."""
    # autograd.grad takes tensors or edges, not both: with edges, a target is its edge
    inputs: Sequence[Tensor] | Sequence[GradientEdge] = (
        [*(get_gradient_edge(t) for t in targets), *edges] if edges else targets
    )
    live = [loss.requires_grad for loss in losses]
    last = max((i for i, flag in enumerate(live) if flag), default=-1)
    jac = _matrix_for(len(losses), targets[:matrix]) if matrix else None
    split = len(targets)
    rows: list[list[Tensor]] = []
    at_edges: list[list[Tensor | None]] = []
    reached = False
    for i, loss in enumerate(losses):
        found: Sequence[Tensor | None] = [None] * len(inputs)
        if live[i]:
            found = torch.autograd.grad(
                loss, inputs, retain_graph=keep_graph or i < last, allow_unused=True
            )
        reached = reached or any(g is not None for g in found[:split])
        row = [torch.zeros_like(t) if g is None else g
               for t, g in zip(targets, found[:split], strict=True)]
        if jac is not None:  # into J, then views of it: the pass's own tensors are freed
            torch.cat([g.reshape(-1) for g in row[:matrix]], out=jac[i])
            row[:matrix] = unflat_row(jac[i], targets[:matrix])
        rows.append(row)
        at_edges.append(list(found[split:]))
    grads = TaskGrads(rows, matrix=None if jac is None else (matrix, jac))
    return Pass(grads, at_edges, reached, batched=False)  # the caller says what was asked


def _matrix_for(count: int, targets: Sequence[Tensor]) -> Tensor:
    """An empty ``(T, P)`` matrix for the gradients of ``targets``, side by side."""
    size = sum(t.numel() for t in targets)
    return torch.empty(count, size, dtype=targets[0].dtype, device=targets[0].device)
