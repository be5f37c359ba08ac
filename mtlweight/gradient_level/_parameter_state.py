"""Base of the methods that carry per-coordinate state of the shared parameters between steps."""

from __future__ import annotations

from torch import Tensor

from mtlweight.gradient_level._task_state import TaskOrder


class ParameterState(TaskOrder):
    r"""A :class:`GradientMethod` whose state has one row of :math:`P` numbers per task.

    ExcessMTL (squared-gradient sums), MoCo (tracked gradients) and DB-MTL
    (moving averages of the gradients) keep a ``(T, P)`` tensor from step to
    step, row :math:`t` for task :math:`t` and column :math:`p` for the same
    coordinate of the shared parameters at every step. So:

    - the task names are fixed at the first call and the state is kept in that
      order (:class:`~mtlweight.gradient_level._task_state.TaskOrder`); a later
      call may list the tasks in any order (``order.to_state(jac)`` gives the rows
      of this call's ``jac`` in state order);
    - a ``representation=`` is refused: its coordinates are the samples of
      each batch, not the same quantity from one step to the next;
    - a change in :math:`P` (a layer frozen or unfrozen) raises
      (:meth:`check_state`) instead of mixing unrelated coordinates.
    """

    def check_state(self, state: Tensor | None, jac: Tensor, what: str) -> None:
        """Raise if the ``(T, P)`` ``state`` does not match this step's gradients."""
        if state is not None and state.shape != jac.shape:
            raise ValueError(
                f"{type(self).__name__} keeps {what} of shape {tuple(state.shape)} (tasks x "
                f"shared coordinates), but this step's gradients have shape {tuple(jac.shape)}: "
                "the shared parameters changed (a layer frozen or unfrozen?). Build a new "
                f"{type(self).__name__} for the new parameters"
            )

    def _inputs(self, representation: Tensor | None) -> list[Tensor]:
        if representation is not None:
            name = type(self).__name__
            raise ValueError(
                f"{name} keeps per-coordinate state of the shared parameters from step to step; "
                "the coordinates of a representation= are the samples of each batch, so it "
                f"cannot be used: build {name}(shared=...) and call it without representation="
            )
        return super()._inputs(None)
