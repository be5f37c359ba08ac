"""Bases of the methods with per-task state between steps (GradVac, SDMGrad, MoDo; ExcessMTL,
MoCo and DB-MTL through :class:`~mtlweight.gradient_level._parameter_state.ParameterState`)."""

from __future__ import annotations

from torch import Tensor

from mtlweight._base import Stateful, TaskMap
from mtlweight._engine.plans import Combination
from mtlweight.gradient_level._base import GradientMethod, GramWeighting


class TaskOrder(GradientMethod, Stateful):
    """A :class:`GradientMethod` with per-task state kept in the order of :attr:`tasks`.

    :meth:`on_matrices` records how this call's tasks map to that order
    (:attr:`order`, a :class:`~mtlweight._base.TaskMap`) before it combines.
    """

    order: TaskMap = TaskMap([], None)

    def on_matrices(
        self, names: list[str], jac: Tensor | None, gram: Tensor, values: Tensor
    ) -> Combination:
        assert self.tasks is not None, "the task names are fixed at the first call"
        self.order = self.task_map(names)
        return super().on_matrices(names, jac, gram, values)


class TaskStateWeighting(TaskOrder, GramWeighting):
    r"""A :class:`GramWeighting` whose state has one entry (or row and column) per task.

    The task names are fixed at the first call and the state is kept in that
    order; a later call may list the tasks in any order: ``order.to_state(gram,
    square=True)`` gives this call's Gram matrix in the order of :attr:`tasks`, and
    ``order.to_call`` turns weights computed in that order back into this call's
    order. The state itself is a function of the Gram matrix only, so
    ``representation=`` works as for the other methods.
    """
