"""Reading the losses' autograd graph: its leaves, and where the per-task passes may stop."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor
from torch.autograd.graph import GradientEdge


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


class GraphCensus:
    """What one walk over the losses' graph saw: every node by id, and its number of parents.

    Filled by :func:`shared_cut` so that the linear-layer shortcut
    (:func:`~mtlweight._engine.linear.linear_taps`) need not walk again.
    Complete only when that walk returned a list.
    """

    def __init__(self) -> None:
        self.nodes: dict[int, Any] = {}
        self.parents: dict[int, int] = {}


def census_of(losses: Sequence[Tensor]) -> GraphCensus:
    """Every node of the losses' graph and its number of parents, from one walk."""
    census = GraphCensus()
    stack = [loss.grad_fn for loss in losses if loss.grad_fn is not None]
    while stack:
        node = stack.pop()
        if id(node) in census.nodes:
            continue
        census.nodes[id(node)] = node
        for child, _ in node.next_functions:
            if child is not None:
                census.parents[id(child)] = census.parents.get(id(child), 0) + 1
                if id(child) not in census.nodes:
                    stack.append(child)
    return census


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
    walk = _Walk.of(losses, {id(t) for t in shared}, stops or {}, limit)
    if walk is None:
        return None
    if census is not None:
        census.nodes.update(walk.nodes)
        census.parents.update(walk.parents)
    if not all(walk.reaches[id(loss.grad_fn)] for loss in losses if loss.grad_fn is not None):
        return None  # a loss that reaches no shared tensor
    return walk.split()


Edge = tuple[Any, int]  # (node, output number), as in ``node.next_functions``


class _Walk:
    """One post-order walk over the losses' graph: the nodes that reach the shared tensors.

    ``reaches[id]``: whether a shared tensor (or a ``stops`` output) lies below the
    node; ``leaves``: the leaf nodes' tensors; ``edges``: the other nodes' edges to
    their children.
    """

    def __init__(self) -> None:
        self.reaches: dict[int, bool] = {}
        self.leaves: dict[int, Tensor] = {}
        self.edges: dict[int, list[Edge]] = {}
        self.nodes: dict[int, Any] = {}  # keeps every node alive, so that the ids stay unique
        self.parents: dict[int, int] = {}

    @classmethod
    def of(
        cls, losses: Sequence[Tensor], shared: set[int], stops: dict[int, set[int]], limit: int
    ) -> _Walk | None:
        """The walk, or ``None`` past ``limit`` nodes or at another output of a stop."""
        walk = cls()
        # (node, settled?): a node is settled after all of its children
        stack: list[tuple[Any, bool]] = [(loss.grad_fn, False) for loss in losses
                                         if loss.grad_fn is not None]
        while stack:
            node, children_done = stack.pop()
            if children_done:
                walk.reaches[id(node)] = any(walk.reaches[id(c)] for c, _ in walk.edges[id(node)])
                continue
            if id(node) in walk.reaches:
                continue
            if len(walk.nodes) >= limit or not walk.visit(node, shared, stops):
                return None
            if id(node) in walk.edges:
                stack.append((node, True))
                stack.extend((c, False) for c, _ in walk.edges[id(node)]
                             if id(c) not in walk.reaches)
        return walk

    def visit(self, node: Any, shared: set[int], stops: dict[int, set[int]]) -> bool:
        """Record ``node`` (a leaf is settled at once); ``False`` at another output of a stop."""
        key = id(node)
        self.nodes[key] = node
        variable = getattr(node, "variable", None)
        if isinstance(variable, Tensor):
            self.reaches[key] = id(variable) in shared
            self.leaves[key] = variable
            return True
        self.reaches[key] = False  # provisional, until settled (the graph is acyclic)
        below = [edge for edge in node.next_functions if edge[0] is not None]
        for child, number in below:
            self.parents[id(child)] = self.parents.get(id(child), 0) + 1
            outputs = stops.get(id(child))
            if outputs is not None:
                if number not in outputs:
                    return False  # another output of a representation's node
                self.reaches[id(child)] = True  # a representation: not walked below
                self.nodes[id(child)] = child
        self.edges[key] = below
        return True

    def head_only(self) -> set[int]:
        """Nodes off the shared paths whose children are all leaves, used only from the top.

        A head's ``W.t()``: its leaves are heads, not below a cut.
        """
        off = [key for key in self.edges if not self.reaches[key]]
        found = {key for key in off if all(id(c) in self.leaves for c, _ in self.edges[key])}
        if len(found) < len(off):
            found -= {id(c) for key in off if key not in found for c, _ in self.edges[key]}
        return found

    def split(self) -> SharedCut | None:
        """The heads and the cut edges, or ``None`` for the graphs a cut cannot serve."""
        head_only = self.head_only()
        heads: dict[int, Tensor] = {}
        cut: dict[tuple[int, int], GradientEdge] = {}
        below_leaves: set[int] = set()
        for key, below in self.edges.items():
            top = self.reaches[key] or key in head_only
            for child, number in below:
                ckey = id(child)
                variable = self.leaves.get(ckey)
                if self.reaches[ckey]:
                    continue  # a shared tensor, or a node above one
                if variable is not None and top:
                    heads[id(variable)] = variable
                elif variable is not None:
                    below_leaves.add(id(variable))
                elif top and ckey not in head_only:
                    cut[(ckey, number)] = GradientEdge(child, number)
        if below_leaves & heads.keys():
            return None  # a head's leaf also used below the cut (tied)
        if self.nested({key for key, _ in cut}, head_only):
            return None  # a cut node below another one
        return SharedCut(list(heads.values()), list(cut.values()))

    def nested(self, cut_nodes: set[int], head_only: set[int]) -> bool:
        """Whether a cut node lies below another node under the cut."""
        return bool(cut_nodes) and any(
            not self.reaches[key] and key not in head_only
            and any(id(c) in cut_nodes for c, _ in below)
            for key, below in self.edges.items()
        )
