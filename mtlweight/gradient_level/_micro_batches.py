"""Gradient accumulation for the gradient-level methods: weigh once per optimizer step."""

from __future__ import annotations

from typing import Protocol

from torch import Tensor

from mtlweight._engine.accumulate import Accumulated
from mtlweight._engine.grads import TaskGrads
from mtlweight._engine.plans import Combination
from mtlweight._validation import Losses
from mtlweight.distributed import all_reduce_mean, is_distributed


class _Method(Protocol):
    """What :class:`MicroBatches` uses of the method it is mixed into."""

    _accumulated: Accumulated | None
    batched: bool | None

    @property
    def needs_representation(self) -> bool: ...
    @property
    def sync(self) -> bool: ...
    @property
    def task_specific(self) -> str: ...

    @property
    def weights(self) -> dict[str, float]: ...
    def _prepare(self, losses: Losses) -> tuple[list[str], list[Tensor], Tensor]: ...
    def _check_reached(self, names: list[str], losses: list[Tensor],
                       representation: Tensor | None) -> None: ...
    def shared_parameters(self) -> list[Tensor]: ...
    def check_losses(self, names: list[str], values: Tensor) -> None: ...
    def reused_weights(self, names: list[str]) -> Tensor | None: ...
    def _reduced_jacobian(self, jac: Tensor) -> Tensor: ...
    def _record(self, names: list[str], weights: Tensor) -> None: ...
    def _weigh(self, names: list[str], grads: TaskGrads, count: int, per_sample: bool,
               values: Tensor) -> Combination: ...


class MicroBatches:
    """:meth:`accumulate` and :meth:`backward_accumulated`, mixed into :class:`GradientMethod`."""

    _accumulated: Accumulated | None = None

    def accumulate(self: _Method, losses: Losses) -> None:
        r"""Add one micro-batch's per-task gradients to the sums of this optimizer step.

        Gradient accumulation that weights once per optimizer step, on the
        gradients of the whole batch: for micro-batches :math:`k = 1..K`,

        .. math::

            J = \sum_k J^{(k)}, \qquad L_t = \sum_k L_t^{(k)}, \qquad
            d = \mathcal{A}(J, J J^\top, L)

        so with each micro-batch's mean losses divided by :math:`K` (as for
        plain accumulation with ``loss.backward()``) the weights and the update
        are exactly those of the full batch. Each call costs the ``T`` per-task
        backward passes, to the shared parameters *and* every other parameter
        the losses reach (so that the task-specific ones can be weighted too),
        frees the graph and writes no ``.grad``; :meth:`backward_accumulated`
        then weights and writes the gradients. Shared parameters only (the
        gradients of a ``representation=`` are per sample and cannot be summed
        over micro-batches). Under DDP run the micro-batches inside
        ``model.no_sync()``: the sums are averaged across processes at
        :meth:`backward_accumulated`.

        Examples
        --------
        >>> import torch, mtlweight as mw
        >>> theta = torch.nn.Parameter(torch.zeros(2))
        >>> mgda = mw.MGDA(shared=[theta])
        >>> for a in (torch.tensor([1.0, 0.0]), torch.tensor([1.0, 0.0])):  # two micro-batches
        ...     mgda.accumulate([theta @ a / 2, theta @ torch.tensor([0.0, 2.0]) / 2])
        >>> {k: round(v, 4) for k, v in mgda.backward_accumulated().items()}
        {'0': 0.8, '1': 0.2}
        >>> theta.grad
        tensor([0.8000, 0.4000])
        """
        if self.needs_representation:
            raise ValueError(
                f"{type(self).__name__} takes the gradients with respect to a representation, "
                "which are per sample and cannot be summed over micro-batches: accumulate with "
                "a method on shared parameters (e.g. MGDA(shared=...))"
            )
        names, tensors, values = self._prepare(losses)
        self._check_reached(names, tensors, None)
        if self._accumulated is None:
            self._accumulated = Accumulated(names)
        elif names != self._accumulated.names:
            raise ValueError(
                f"{type(self).__name__}.accumulate: this micro-batch has the tasks {names}; the "
                f"previous ones of this step had {self._accumulated.names}"
            )
        self.batched = self._accumulated.add_pass(
            tensors, values, self.shared_parameters(), batched=self.batched
        )

    def backward_accumulated(self: _Method) -> dict[str, float]:
        r"""Weight the accumulated gradients once and write them into ``.grad``; return the weights.

        The shared parameters get :math:`d`, the others
        :math:`\sum_t c_t \nabla L_t` (:math:`c = w` for ``"weighted"``, 1 for
        ``"plain"``), accumulated into ``.grad`` like ``loss.backward()``. The
        sums are cleared. See :meth:`accumulate`.
        """
        pending, self._accumulated = self._accumulated, None
        if pending is None or pending.values is None:
            raise RuntimeError(
                f"{type(self).__name__}.backward_accumulated: nothing was accumulated; call "
                ".accumulate(losses) for each micro-batch first"
            )
        names, values = pending.names, pending.values
        distributed = self.sync and is_distributed()
        grads = pending.gradients(self._reduced_jacobian if distributed else None)
        self.check_losses(names, values)
        reused = self.reused_weights(names)
        combination = (
            Combination(reused) if reused is not None
            else self._weigh(names, grads, len(pending.rows), False, values)
        )
        weights = combination.weights.to(values)
        self._record(names, weights)
        pending.apply(grads, weights, combination.direction, plain=self.task_specific == "plain",
                      reduce=all_reduce_mean if distributed else None)
        return self.weights
