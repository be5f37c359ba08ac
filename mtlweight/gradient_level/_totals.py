"""A gradient method's total for trainers, and the check that every loss reaches the inputs.

Mixed into :class:`~mtlweight.gradient_level.GradientMethod`: :meth:`Totals.forward`
returns a loss whose backward pass writes the method's update
(:func:`mtlweight._total.update_total`), and :meth:`Totals._check_reached` raises,
naming the tasks, when a loss reaches none of the shared inputs.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import Tensor

from mtlweight._engine.grads import TaskGrads
from mtlweight._engine.plans import Plan
from mtlweight._engine.targets import describe
from mtlweight._engine.update import pieces_of, weighted_total
from mtlweight._reach import unreached
from mtlweight._total import update_total
from mtlweight._validation import Losses
from mtlweight.distributed import all_reduce_mean, is_distributed


class _Method(Protocol):
    """What :class:`Totals` uses of the method it is mixed into."""

    batched: bool | None
    _weights: dict[str, float]

    @property
    def task_specific(self) -> str: ...
    @property
    def allow_unreached(self) -> bool: ...
    @property
    def sync(self) -> bool: ...
    def _prepare(self, losses: Losses) -> tuple[list[str], list[Tensor], Tensor]: ...
    def _check_reached(self, names: list[str], losses: list[Tensor],
                       representation: Tensor | None) -> None: ...
    def _inputs(self, representation: Tensor | None) -> list[Tensor]: ...
    def reused_weights(self, names: list[str]) -> Tensor | None: ...
    def check_losses(self, names: list[str], values: Tensor) -> None: ...
    def plan(self, losses: list[Tensor], representation: Tensor | None, *, update: bool
             ) -> Plan: ...
    def _weigh(self, names: list[str], grads: TaskGrads, count: int, per_sample: bool,
               values: Tensor) -> Any: ...
    def _record(self, names: list[str], weights: Tensor) -> None: ...


class Totals:
    """:meth:`forward` (a loss for any trainer) and :meth:`_check_reached`."""

    #: Let a loss that reaches none of the shared inputs through (its task gradient is
    #: then zero, and the method ignores it) instead of raising :class:`ValueError`
    #: naming the task: for a task that deliberately does not train the shared part.
    #: The default catches a stray ``.detach()``, which would train nothing silently.
    allow_unreached: bool = False

    def forward(
        self: _Method, losses: Losses, *, representation: Tensor | None = None
    ) -> Tensor:
        """Return a total whose backward pass writes this step's update (see ``backward``).

        With ``task_specific="weighted"`` and :math:`d = J^\\top w` it is
        :math:`\\sum_t \\operatorname{sg}(w_t) L_t`; otherwise (plain heads, or an update
        that is no combination of the task gradients) a total of the same value whose
        backward pass puts :math:`d` on the shared inputs and :math:`\\sum_t c_t \\nabla L_t`
        on the rest (:func:`~mtlweight._total.update_total`). Either way a trainer can
        backpropagate it (``manual_backward``, ``accelerator.backward``, a returned loss).
        """
        fresh = self.__dict__.get("tasks") is None
        weighted = self.task_specific == "weighted"
        try:
            names, tensors, values = self._prepare(losses)
            self._check_reached(names, tensors, representation)
            weights = self.reused_weights(names)
            direction: Tensor | None = None
            plan: Plan | None = None
            if weights is None or not weighted:  # plain heads need J even to reuse w
                self.check_losses(names, values)  # before any backward pass
                plan = self.plan(tensors, representation, update=False)
                grads = plan.gradients()
                self.batched = plan.settings.batched
                if weights is None:
                    combination = self._weigh(names, grads, len(plan.inputs),
                                              plan.settings.per_sample, values)
                    weights, direction = combination.weights, combination.direction
        except Exception:
            if fresh:  # a failed first call must not fix the task names
                self.__dict__["tasks"] = None
            raise
        assert weights is not None
        weights = weights.to(values)
        self._record(names, weights)
        if plan is None or (weighted and direction is None):  # d = J^T w: the weighted total
            return weighted_total(tensors, list(self._weights.values()))
        scale = weights if weighted else torch.ones_like(weights)
        pieces = pieces_of(weights, direction, plan.inputs, grads, in_place=False)
        flowing = grads.combine(scale, 0, len(plan.inputs), in_place=False)
        residuals = [p.view_as(f) - f for p, f in zip(pieces, flowing, strict=True)]
        return update_total(tensors, weights.tolist(), scale.tolist(), plan.inputs, residuals)

    def _check_reached(
        self: _Method, names: list[str], losses: list[Tensor], representation: Tensor | None
    ) -> None:
        """Raise, naming the tasks, if a loss reaches none of the shared inputs (on any rank)."""
        if self.allow_unreached:
            return
        inputs = self._inputs(representation)
        missing = torch.zeros(len(names))
        missing[unreached(losses, inputs)] = 1.0
        if self.sync and is_distributed():  # every rank raises together
            missing = all_reduce_mean(missing)
        lost = [n for n, m in zip(names, missing.tolist(), strict=True) if m > 0]
        if not lost:
            return
        where = describe(inputs, representation is not None)
        name = type(self).__name__
        if len(lost) == len(names):
            head = f"{name}: no loss reaches {where}, so every task gradient would be zero"
        else:
            which = ", ".join(map(repr, lost))
            head = (
                f"{name}: the loss of task {which} reaches none of {where}, so its gradient "
                "there would be zero and the method would ignore it"
                if len(lost) == 1
                else f"{name}: the losses of tasks {which} reach none of {where}, so their "
                "gradients there would be zero and the method would ignore them"
            )
        raise ValueError(
            f"{head}. Pass the tensor the losses are computed from (not a detached copy or an "
            "extra output of a compiled graph), or set allow_unreached = True on the weighting "
            "if a task deliberately does not train the shared inputs"
        )
