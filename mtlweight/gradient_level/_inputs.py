"""What the gradient-level methods differentiate: shared inputs resolved per step, J, G."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torch.autograd.graph import GradientEdge, get_gradient_edge

from mtlweight.autograd import as_inputs
from mtlweight.distributed import all_reduce_mean, is_distributed
from mtlweight.gradient_level._task_grads import TaskGrads, accumulation_dtype

if TYPE_CHECKING:
    from mtlweight._base import Weighting

__all__ = [
    "Accumulated",
    "GraphCensus",
    "SharedCut",
    "SharedInputs",
    "add_grad",
    "backward_from_cut",
    "cut_task_grads",
    "describe",
    "flat",
    "grad_norm_statistic",
    "gram",
    "graph_leaves",
    "jacobian",
    "leaves_above",
    "require_reached",
    "shared_cut",
    "split_columns",
    "task_grads",
    "weighted_sum",
]


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
    acc = accumulation_dtype(jac.dtype)
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
    acc = accumulation_dtype(jac.dtype)
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


def task_grads(
    losses: Sequence[Tensor],
    targets: Sequence[Tensor],
    *,
    keep_graph: bool,
    batched: bool,
    matrix: int = 0,
) -> tuple[TaskGrads, bool]:
    """Each task's gradients of the targets, as returned by autograd; whether any was reached.

    ``batched``: one vectorised backward pass (``is_grads_batched=True``)
    instead of one pass per task. Without ``keep_graph`` the (last) pass frees
    the graph. Zeros where a loss does not reach a target. ``matrix``: copy
    the gradients of the first ``matrix`` targets into one ``(T, P)`` matrix
    :math:`J` after each task's pass and keep views of it, so that they are
    held once (J methods; :meth:`TaskGrads.matrix` then returns it as is).
    """
    count = len(losses)
    live = [loss.requires_grad for loss in losses]
    if batched and all(live) and count > 1:
        out = torch.stack([loss.reshape(()) for loss in losses])
        eye = torch.eye(count, dtype=out.dtype, device=out.device)
        found = torch.autograd.grad(
            out, targets, eye, retain_graph=keep_graph, allow_unused=True, is_grads_batched=True
        )
        reached = any(g is not None for g in found)
        rows = [
            torch.zeros((count, *t.shape), dtype=t.dtype, device=t.device) if g is None else g
            for t, g in zip(targets, found, strict=True)
        ]
        return TaskGrads.of_rows(rows), reached
    jac: Tensor | None = None
    if matrix:
        first = targets[0]
        size = sum(t.numel() for t in targets[:matrix])
        jac = torch.empty(count, size, dtype=first.dtype, device=first.device)
    grads: list[list[Tensor]] = []
    reached = False
    last = max((i for i, flag in enumerate(live) if flag), default=-1)
    for i, loss in enumerate(losses):
        found_i: Sequence[Tensor | None] = [None] * len(targets)
        if live[i]:
            retain = keep_graph or i < last
            found_i = torch.autograd.grad(loss, targets, retain_graph=retain, allow_unused=True)
        reached = reached or any(g is not None for g in found_i)
        row = [
            torch.zeros_like(t) if g is None else g for t, g in zip(targets, found_i, strict=True)
        ]
        if jac is not None:  # into J, then views of it: the pass's own tensors are freed
            torch.cat([g.reshape(-1) for g in row[:matrix]], out=jac[i])
            row[:matrix] = unflat_row(jac[i], targets[:matrix])
        grads.append(row)
    return TaskGrads(grads, matrix=None if jac is None else (matrix, jac)), reached


def unflat_row(vector: Tensor, like: Sequence[Tensor]) -> list[Tensor]:
    """Views of a ``(P,)`` vector shaped like the tensors ``like``, side by side."""
    pieces = torch.split(vector, [t.numel() for t in like])
    return [p.view(t.shape) for p, t in zip(pieces, like, strict=True)]


def flat(rows: Sequence[Tensor]) -> Tensor:
    """The ``(T, P)`` matrix of the rows of several targets side by side."""
    if len(rows) == 1:
        return rows[0].reshape(rows[0].shape[0], -1)
    return torch.cat([r.reshape(r.shape[0], -1) for r in rows], dim=1)


def split_columns(jac: Tensor, targets: Sequence[Tensor]) -> list[Tensor]:
    """Views of a ``(T, P)`` matrix as ``(T, *shape)`` tensors, one per target, side by side."""
    pieces = torch.split(jac, [t.numel() for t in targets], dim=1)
    return [p.reshape(jac.shape[0], *t.shape) for p, t in zip(pieces, targets, strict=True)]


class GraphCensus:
    """What one walk over the losses' graph saw: every node by id, and its number of parents.

    Filled by :func:`shared_cut` so that the linear-layer shortcut
    (:func:`~mtlweight.gradient_level._linear_gram.linear_taps`) need not walk again.
    Complete only when that walk returned a list.
    """

    def __init__(self) -> None:
        self.nodes: dict[int, Any] = {}
        self.parents: dict[int, int] = {}


def leaves_above(
    losses: Sequence[Tensor], representation: Sequence[Tensor]
) -> list[Tensor] | None:
    """The leaves between the losses and a representation, if the rest lies below it.

    With these leaves (a head's weight and bias) in the per-task passes to the
    representation, the final update needs no second pass over the losses'
    graph: the heads get their combined gradients from those passes, and only
    the trunk below the representation is backpropagated, from :math:`d`.
    ``None`` (take the general path) unless every path from the losses to a
    trainable tensor outside these leaves passes through the representation,
    none of these leaves is also used below it, no representation lies below
    another, and each is a non-leaf tensor.
    """
    stops: dict[int, set[int]] = {}  # node id -> the output numbers that are representations
    nodes: list[Any] = []
    for tensor in representation:
        if tensor.grad_fn is None:
            return None  # a leaf representation: rare, take the general path
        node, number = tensor.grad_fn, tensor.output_nr
        stops.setdefault(id(node), set()).add(number)
        nodes.append(node)
    if any(loss.grad_fn is not None and id(loss.grad_fn) in stops for loss in losses):
        return None  # a loss that is a representation itself
    split = shared_cut(losses, [], stops=stops)
    if split is None or split.cut:
        return None  # a path to trainable tensors around the representation
    above = split.heads
    # Below the representation: no leaf of the heads, no other representation.
    head_ids = {id(t) for t in above}
    visited: set[int] = set()
    stack = [child for node in nodes for child, _ in node.next_functions if child is not None]
    while stack:
        node = stack.pop()
        key = id(node)
        if key in visited:
            continue
        if key in stops:
            return None
        visited.add(key)
        variable = getattr(node, "variable", None)
        if isinstance(variable, Tensor):
            if id(variable) in head_ids:
                return None
            continue
        stack.extend(child for child, _ in node.next_functions if child is not None)
    return above


class SharedCut:
    """Where the per-task passes to shared parameters can stop, for the update to need no rerun.

    ``heads``: the other leaves above the cut (reached only through nodes that lead to a
    shared tensor); ``cut``: the edges into the rest of the graph (below them no shared
    tensor and no head leaf), empty when the shared tensors cover the whole trunk.
    """

    def __init__(self, heads: list[Tensor], cut: list[GradientEdge]) -> None:
        self.heads = heads
        self.cut = cut


def shared_cut(
    losses: Sequence[Tensor],
    shared: Sequence[Tensor],
    census: GraphCensus | None = None,
    limit: int = 20_000,
    stops: dict[int, set[int]] | None = None,
) -> SharedCut | None:
    """Split the losses' graph at the top of the part that no shared tensor lies in.

    A node *reaches* the shared tensors if one of them lies below it. The nodes
    that do form the top of the graph; a non-shared leaf hanging from them is a
    head, and an edge from them into a node that does not reach them is a *cut*
    edge. The per-task passes then take the gradients of the shared tensors, the
    heads and the cut edges; the shared tensors get :math:`d`, the heads their
    combination, and the graph below the cut one backward pass from the combined
    gradients at the cut: the top of the graph (the losses, the shared layers) is
    walked ``T`` times, not ``T + 1``. ``None`` (the general path) if a loss is a
    leaf or reaches no shared tensor, a head leaf is also used below the cut, a
    cut node lies below another, or the graph has more than ``limit`` nodes (one
    walk over it every step). ``stops`` (node id -> output numbers): outputs that
    count as shared tensors and are not walked below (a representation); another
    output of such a node in use means ``None``.
    """
    if not losses or any(loss.grad_fn is None for loss in losses if loss.requires_grad):
        return None
    shared_ids = {id(t) for t in shared}
    reaches: dict[int, bool] = {}
    variables: dict[int, Tensor] = {}  # leaf node id -> its tensor
    inner: list[tuple[int, list[tuple[Any, int]]]] = []  # the other nodes and their edges
    nodes: dict[int, Any] = {}  # keeps every node alive, so that the ids stay unique
    parents = census.parents if census is not None else None
    stack: list[Any] = [loss.grad_fn for loss in losses if loss.grad_fn is not None]
    while stack:  # post-order: a node is settled after all of its children
        node = stack.pop()
        if node is None:  # the marker: the node below it is done
            key, below = inner[stack.pop()]
            reaches[key] = any(reaches[id(c)] for c, _ in below)
            continue
        key = id(node)
        if key in reaches:
            continue
        if len(nodes) >= limit:
            return None
        nodes[key] = node
        variable = getattr(node, "variable", None)
        if isinstance(variable, Tensor):
            reaches[key] = id(variable) in shared_ids
            variables[key] = variable
            continue
        reaches[key] = False  # provisional, replaced when done (the graph is acyclic)
        below = [edge for edge in node.next_functions if edge[0] is not None]
        if stops:
            for c, number in below:
                outputs = stops.get(id(c))
                if outputs is not None:
                    if number not in outputs:
                        return None  # another output of a representation's node
                    reaches[id(c)] = True  # a representation: not walked below
                    nodes[id(c)] = c
        if parents is not None:
            for c, _ in below:
                parents[id(c)] = parents.get(id(c), 0) + 1
        stack.append(len(inner))
        stack.append(None)
        inner.append((key, below))
        stack.extend(c for c, _ in below if id(c) not in reaches)
    if census is not None:
        census.nodes.update(nodes)
    if not all(reaches[id(loss.grad_fn)] for loss in losses if loss.grad_fn is not None):
        return None  # a loss that reaches no shared tensor
    # A node off the shared paths whose children are all leaves, used only from the top
    # (a head's W.t()), is part of a head: its leaves are heads, not below a cut.
    head_only = {key for key, below in inner
                 if not reaches[key] and all(id(c) in variables for c, _ in below)}
    if len(head_only) < sum(not reaches[key] for key, _ in inner):
        head_only -= {id(c) for key, below in inner
                      if not reaches[key] and key not in head_only for c, _ in below}
    heads: dict[int, Tensor] = {}
    cut: dict[tuple[int, int], GradientEdge] = {}
    below_leaves: set[int] = set()
    cut_nodes: set[int] = set()
    for key, below in inner:
        top = reaches[key] or key in head_only
        for child, number in below:
            ckey = id(child)
            variable = variables.get(ckey)
            if variable is not None:
                if reaches[ckey]:  # a shared tensor
                    continue
                if top:
                    heads[id(variable)] = variable
                else:
                    below_leaves.add(id(variable))
            elif top and not reaches[ckey] and ckey not in head_only:
                cut[(ckey, number)] = GradientEdge(child, number)
                cut_nodes.add(ckey)
    if cut_nodes:
        for key, below in inner:  # no cut node below another one
            if not reaches[key] and key not in head_only and any(
                id(c) in cut_nodes for c, _ in below
            ):
                return None
    if below_leaves & heads.keys():
        return None  # a head's leaf also used below the cut (tied)
    return SharedCut(list(heads.values()), list(cut.values()))


def cut_task_grads(
    losses: Sequence[Tensor],
    targets: Sequence[Tensor],
    cut: Sequence[GradientEdge],
    matrix: int = 0,
) -> tuple[TaskGrads, list[list[Tensor | None]]]:
    """Per-task gradients of ``targets`` and of the ``cut`` edges, one pass per task.

    The last pass frees what the passes walked (the graph above the cut); the graph
    below the cut is kept for the backward pass from it. A cut edge a task does not
    reach gets ``None``; a target, zeros. ``matrix``: the first ``matrix`` targets'
    gradients go into one ``(T, P)`` matrix as the passes run (see :func:`task_grads`).
    """
    edges = [get_gradient_edge(t) for t in targets] + list(cut)
    split = len(targets)
    live = [loss.requires_grad for loss in losses]
    last = max((i for i, flag in enumerate(live) if flag), default=-1)
    jac: Tensor | None = None
    if matrix:
        size = sum(t.numel() for t in targets[:matrix])
        jac = torch.empty(len(losses), size, dtype=targets[0].dtype, device=targets[0].device)
    rows: list[list[Tensor]] = []
    at_cut: list[list[Tensor | None]] = []
    for i, loss in enumerate(losses):
        found: Sequence[Tensor | None] = [None] * len(edges)
        if live[i]:
            found = torch.autograd.grad(loss, edges, retain_graph=i < last, allow_unused=True)
        row = [torch.zeros_like(t) if g is None else g
               for t, g in zip(targets, found[:split], strict=True)]
        if jac is not None:
            torch.cat([g.reshape(-1) for g in row[:matrix]], out=jac[i])
            row[:matrix] = unflat_row(jac[i], targets[:matrix])
        rows.append(row)
        at_cut.append(list(found[split:]))
    return TaskGrads(rows, matrix=None if jac is None else (matrix, jac)), at_cut


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


def weighted_sum(weights: Tensor, rows: Tensor) -> Tensor:
    """``sum_t weights[t] * rows[t]``, shaped like one row, in float32 (float64 for float64)."""
    acc = accumulation_dtype(rows.dtype)
    flat_rows = rows.reshape(rows.shape[0], -1).to(acc)
    w = weights.to(device=rows.device, dtype=acc)
    return torch.mv(flat_rows.T, w).reshape(rows.shape[1:])  # a GEMV: faster than tensordot
