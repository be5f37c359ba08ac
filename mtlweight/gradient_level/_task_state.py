"""Bases of the methods with per-task state between steps (GradVac, SDMGrad, MoDo; ExcessMTL,
MoCo and DB-MTL through :class:`~mtlweight.gradient_level._parameter_state.ParameterState`)."""

from __future__ import annotations

from torch import Tensor

from mtlweight._base import Stateful
from mtlweight._engine.plans import Combination
from mtlweight.gradient_level._base import GradientMethod, GramWeighting


class TaskOrder(GradientMethod, Stateful):
    """A :class:`GradientMethod` with per-task state kept in the order of :attr:`tasks`.

    :meth:`on_matrices` records how this call's tasks map to that order before it
    combines; :meth:`call_order` maps a per-task result back into this call's
    order.
    """

    _order: list[int] | None = None

    def on_matrices(
        self, names: list[str], jac: Tensor | None, gram: Tensor, values: Tensor
    ) -> Combination:
        assert self.tasks is not None, "the task names are fixed at the first call"
        self._order = None if names == self.tasks else [names.index(t) for t in self.tasks]
        return super().on_matrices(names, jac, gram, values)

    def call_order(self, per_task: Tensor) -> Tensor:
        """A ``(T,)`` tensor in the order of :attr:`tasks` back in this call's order."""
        if self._order is None:
            return per_task
        result = per_task.clone()
        result[self._order] = per_task
        return result


class TaskStateWeighting(TaskOrder, GramWeighting):
    r"""A :class:`GramWeighting` whose state has one entry (or row and column) per task.

    The task names are fixed at the first call and the state is kept in that
    order; a later call may list the tasks in any order: :meth:`state_order`
    gives this call's Gram matrix in the order of :attr:`tasks`, and
    :meth:`call_order` turns weights computed in that order back into this
    call's order. The state itself is a function of the Gram matrix only, so
    ``representation=`` works as for the other methods.
    """

    def state_order(self, gram: Tensor) -> Tensor:
        """This step's ``(T, T)`` Gram matrix, rows and columns in the order of :attr:`tasks`."""
        return gram if self._order is None else gram[self._order][:, self._order]
