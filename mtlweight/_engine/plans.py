"""The backward plans: how one step gets its per-task gradients and applies the update.

A gradient-level step has two halves. The *method* turns the per-task gradients
into a :class:`Combination` (weights :math:`w`, or a direction :math:`d`); the
*plan* obtains those gradients and writes the update. :func:`choose_plan` picks
one plan per call from the losses' graph; every plan has the one entry point
:meth:`Plan.run` (``plan.run(combine, plain=...)``), and the halves
:meth:`Plan.gradients` and :meth:`Plan.apply`:

============================  ========================================================
plan                          when, and what it saves over :class:`GeneralPlan`
============================  ========================================================
:class:`GeneralPlan`          always valid: ``T`` passes to the inputs (graph kept),
                              then the total backpropagated once with :math:`d` in
                              place of its gradient at the inputs.
:class:`AssembledPlan`        the shared tensors cover the whole trunk (only heads
                              left): the passes take the heads too; no further pass.
:class:`LinearGramPlan`       as assembled, every shared tensor a linear layer's
                              weight or bias (methods of ``G`` alone): the passes stop
                              at the layers' outputs (see :mod:`.linear`).
:class:`CutPlan`              layers below the shared ones: the passes take the
                              gradients at the edges into them, and the graph below
                              is backpropagated once from their combination.
:class:`RepresentationPlan`   ``representation=`` with only heads above it: the passes
                              take the heads, and the trunk gets :math:`d` in one pass.
============================  ========================================================

Every plan gives the same gradients as :class:`GeneralPlan` up to rounding
(tests/engine compares each against it on the same graphs).

A plan's :meth:`~Plan.gradients` returns a task-gradient container
(:class:`~mtlweight._engine.grads.TaskGrads`): the *Gram builder* of the step.
The method reads :math:`G` from it (``grads.gram(0, count, diagonal_only=...)``),
:math:`J` if it needs it (``grads.matrix(0, count)``), and the plan makes the
update with ``grads.combine(weights, ...)``. A new way to obtain :math:`G` (such
as :class:`~mtlweight._engine.linear.LinearGrads`, which never forms :math:`J`)
is a container with these three methods, returned by a plan of its own.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from mtlweight._engine.grads import TaskGrads, split_columns
from mtlweight._engine.graph import GraphCensus, SharedCut, leaves_above, shared_cut
from mtlweight._engine.linear import LinearTap, linear_taps, linear_task_grads
from mtlweight._engine.passes import task_pass
from mtlweight._engine.targets import require_reached
from mtlweight._engine.update import (
    backward_from_cut,
    backward_replacing,
    pieces_of,
    write,
)
from mtlweight.distributed import is_distributed


@dataclass(frozen=True)
class Combination:
    """What a :class:`GradientMethod` makes of this step's per-task gradients.

    Attributes
    ----------
    weights
        ``(T,)`` float64: the coefficients :math:`w` of :math:`d = J^\\top w`.
    direction
        ``None`` when :math:`d = J^\\top w` (a linear combination of the rows:
        ``weighting(losses)`` works in ``"weighted"`` mode), else the ``(P,)``
        update itself, for methods whose :math:`d` is not such a combination
        (only ``.backward(losses)`` works; ``weights`` are then for logging,
        see :meth:`from_direction`).
    """

    weights: Tensor
    direction: Tensor | None = None

    @classmethod
    def from_direction(cls, jac: Tensor, gram: Tensor, direction: Tensor) -> Combination:
        r"""A ``direction`` with the weights :math:`w = \arg\min_w \lVert J^\top w - d \rVert`.

        :math:`w = G^{+} J d` (least squares, minimum norm), in float64.

        Examples
        --------
        >>> import torch
        >>> jac = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
        >>> Combination.from_direction(jac, jac.double() @ jac.double().T,
        ...                            torch.tensor([1.0, 1.0])).weights
        tensor([1.0000, 0.5000], dtype=torch.float64)
        """
        # J d in J's precision (a float64 copy of J would double the method's memory)
        projected = torch.mv(jac, direction.to(jac.dtype)).double().cpu().reshape(-1, 1)
        weights = torch.linalg.lstsq(gram, projected, driver="gelsd").solution.reshape(-1)
        return cls(weights, direction)


#: The method's half of a step: the per-task gradients (the first ``count`` targets are
#: the inputs) -> the combination, with its weights in the losses' dtype.
Combine = Callable[[TaskGrads, int], Combination]


@dataclass
class Settings:
    """What a strategy asks of the passes (read from its switches at each call).

    ``batched`` is updated by the passes (``None``: try a vectorised pass once).
    ``reduce``: the all-reduce of :math:`J` under DDP (shared parameters only).
    """

    owner: str
    per_sample: bool
    needs_matrix: bool = False
    batched: bool | None = False
    sync: bool = True
    reduce: Callable[[Tensor], Tensor] | None = None


class Plan:
    """One way to get the per-task gradients of ``inputs`` and to apply the update."""

    name: ClassVar[str] = "general"
    #: Whether the passes free the graph (the update is assembled from them).
    assembled: ClassVar[bool] = False

    def __init__(self, losses: list[Tensor], inputs: list[Tensor], settings: Settings) -> None:
        self.losses = losses
        self.inputs = inputs
        self.settings = settings
        self.grads: TaskGrads | None = None

    def run(self, combine: Combine, *, plain: bool) -> Combination:
        """The passes, ``combine`` on their gradients, then the update; the combination.

        ``plain``: the parameters other than the inputs get the plain gradient of
        :math:`\\sum_t L_t` (else :math:`\\sum_t w_t \\nabla L_t`).
        """
        grads = self.gradients()
        combination = combine(grads, len(self.inputs))
        self.apply(combination, plain=plain)
        return combination

    def gradients(self) -> TaskGrads:
        """The per-task gradients: the inputs first, then whatever the plan needs."""
        self.grads = self._pass(self.inputs, keep_graph=not self.assembled)
        return self.grads

    def apply(self, combination: Combination, *, plain: bool) -> None:
        """Write the update of ``combination`` (after :meth:`gradients`)."""
        pieces, scale = self._pieces(combination, plain=plain)
        backward_replacing(self.losses, scale, self.inputs, pieces)

    # ------------------------------------------------------------ helpers
    def _pass(self, targets: Sequence[Tensor], *, keep_graph: bool) -> TaskGrads:
        """The one per-task pass to ``targets`` (the inputs first), checked and reduced."""
        s = self.settings
        count = len(self.inputs)
        found = task_pass(self.losses, targets, keep_graph=keep_graph, batched=s.batched,
                          matrix=count if s.needs_matrix else 0)
        if found.batched is not None:
            s.batched = found.batched
        require_reached(s.owner, found.reached, self.inputs, s.per_sample, sync=s.sync)
        if s.reduce is None or s.per_sample:
            return found.grads
        rows = split_columns(s.reduce(found.grads.matrix(0, count)), self.inputs)
        return TaskGrads.of_rows([*rows, *found.grads.rows(count)])

    def _pieces(self, combination: Combination, *, plain: bool) -> tuple[list[Tensor], Tensor]:
        """:math:`d` per input, and the coefficients of the other parameters' gradients."""
        assert self.grads is not None, "apply() before gradients()"
        weights = combination.weights
        pieces = pieces_of(weights, combination.direction, self.inputs, self.grads,
                           in_place=self.assembled)
        return pieces, torch.ones_like(weights) if plain else weights

    def _heads(self, heads: Sequence[Tensor], scale: Tensor) -> list[tuple[Tensor, Tensor]]:
        """The heads' combined gradients, from the targets after the inputs."""
        assert self.grads is not None
        rest = self.grads.combine(scale, len(self.inputs), in_place=True)
        return list(zip(heads, rest, strict=True))


class GeneralPlan(Plan):
    """``T`` passes to the inputs keeping the graph, then the total with :math:`d` in place."""


class AssembledPlan(Plan):
    """The shared tensors cover the trunk: the passes take the heads too; no further pass."""

    name = "assembled"
    assembled = True

    def __init__(self, losses: list[Tensor], inputs: list[Tensor], settings: Settings,
                 heads: list[Tensor]) -> None:
        super().__init__(losses, inputs, settings)
        self.heads = heads

    def gradients(self) -> TaskGrads:
        self.grads = self._pass([*self.inputs, *self.heads], keep_graph=False)
        return self.grads

    def apply(self, combination: Combination, *, plain: bool) -> None:
        pieces, scale = self._pieces(combination, plain=plain)
        write(self.inputs, pieces, self._heads(self.heads, scale))


class LinearGramPlan(AssembledPlan):
    """Assembled, with the shared linear layers' task gradients kept as activations."""

    name = "linear-gram"

    def __init__(self, losses: list[Tensor], inputs: list[Tensor], settings: Settings,
                 heads: list[Tensor], taps: list[LinearTap]) -> None:
        super().__init__(losses, inputs, settings, heads)
        self.taps = taps

    def gradients(self) -> TaskGrads:
        self.grads = linear_task_grads(self.losses, self.taps, self.inputs, self.heads)
        return self.grads


class CutPlan(AssembledPlan):
    """Passes to the shared tensors, the heads and the cut edges; then the graph below the cut."""

    name = "cut"

    def __init__(self, losses: list[Tensor], inputs: list[Tensor], settings: Settings,
                 split: SharedCut) -> None:
        super().__init__(losses, inputs, settings, split.heads)
        self.cut = split.cut
        self.at_cut: list[list[Tensor | None]] = []

    def gradients(self) -> TaskGrads:
        s = self.settings
        found = task_pass(self.losses, [*self.inputs, *self.heads], edges=self.cut,
                          keep_graph=False, matrix=len(self.inputs) if s.needs_matrix else 0)
        self.grads, self.at_cut = found.grads, found.at_edges
        return self.grads

    def apply(self, combination: Combination, *, plain: bool) -> None:
        super().apply(combination, plain=plain)
        scale = torch.ones_like(combination.weights) if plain else combination.weights
        backward_from_cut(self.cut, self.at_cut, scale)


class RepresentationPlan(AssembledPlan):
    """Heads above a ``representation=``: the passes take them; the trunk gets :math:`d`."""

    name = "representation-assembled"

    def apply(self, combination: Combination, *, plain: bool) -> None:
        pieces, scale = self._pieces(combination, plain=plain)
        write([], [], self._heads(self.heads, scale))
        grads = [p.view_as(t).to(t.dtype) for t, p in zip(self.inputs, pieces, strict=True)]
        torch.autograd.backward(self.inputs, grads)

    def _pieces(self, combination: Combination, *, plain: bool) -> tuple[list[Tensor], Tensor]:
        assert self.grads is not None
        weights = combination.weights
        # d goes below the representation: task 0's buffers stay for the heads' sums
        pieces = pieces_of(weights, combination.direction, self.inputs, self.grads,
                           in_place=False)
        return pieces, torch.ones_like(weights) if plain else weights


def choose_plan(
    losses: list[Tensor],
    inputs: list[Tensor],
    settings: Settings,
    *,
    assemble: bool,
    linear: bool,
) -> Plan:
    """The plan for this call, from the losses' graph (one walk over it).

    ``assemble``: allow the plans that assemble the update from the passes
    (never under DDP, which reduces in ``backward()``: every ``.grad`` must come
    from it). ``linear``: allow :class:`LinearGramPlan` (methods of ``G`` alone).
    """
    if not assemble or is_distributed():
        return GeneralPlan(losses, inputs, settings)
    if settings.per_sample:
        heads = leaves_above(losses, inputs)
        if heads is None:
            return GeneralPlan(losses, inputs, settings)
        return RepresentationPlan(losses, inputs, settings, heads)
    census = GraphCensus()
    split = shared_cut(losses, inputs, census)
    if split is None:
        return GeneralPlan(losses, inputs, settings)
    if split.cut:  # the cut passes are one by one
        if settings.batched is False:
            return CutPlan(losses, inputs, settings, split)
        return GeneralPlan(losses, inputs, settings)
    if linear and not settings.needs_matrix and settings.batched is not True:
        taps = linear_taps(losses, inputs, census)
        if taps is not None:
            return LinearGramPlan(losses, inputs, settings, split.heads, taps)
    return AssembledPlan(losses, inputs, settings, split.heads)
