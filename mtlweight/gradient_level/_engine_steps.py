"""The engine's side of a gradient-level method: its plan, its Gram matrix, its combination.

Mixed into :class:`~mtlweight.gradient_level.GradientMethod`: a step asks
:meth:`EngineSteps.plan` for the backward plan of its graph
(:mod:`mtlweight._engine.plans`) and runs it with :meth:`EngineSteps._combine`
(the method's :meth:`~mtlweight.gradient_level.GradientMethod.on_matrices` on
this step's :math:`J` and :math:`G`) as the callback.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import torch
from torch import Tensor

from mtlweight._engine.grads import TaskGrads, gram
from mtlweight._engine.plans import Combination, GeneralPlan, Plan, Settings, choose_plan
from mtlweight._engine.targets import SharedInputs
from mtlweight._engine.update import weighted_total
from mtlweight._validation import Losses, check_finite
from mtlweight.distributed import is_distributed, world_size


class _Method(Protocol):
    """What :class:`EngineSteps` uses of the method it is mixed into."""

    batched: bool | None
    statistics: dict[str, Tensor]
    shared: SharedInputs
    _weights: dict[str, float]
    _forward_hooks: dict[int, Callable[..., Any]]
    _forward_hooks_with_kwargs: dict[int, bool]

    @property
    def weights(self) -> dict[str, float]: ...

    @property
    def needs_matrix(self) -> bool: ...
    @property
    def needs_representation(self) -> bool: ...
    @property
    def diagonal_only(self) -> bool: ...
    @property
    def sync(self) -> bool: ...
    @property
    def assemble(self) -> bool: ...
    @property
    def linear_shortcut(self) -> bool: ...
    def statistic(self, name: str, value: Tensor) -> Tensor: ...
    def check_losses(self, names: list[str], values: Tensor) -> None: ...
    def on_matrices(self, names: list[str], jac: Tensor | None, gram: Tensor,
                    values: Tensor) -> Combination: ...
    def _record(self, names: list[str], weights: Tensor) -> None: ...
    def _inputs(self, representation: Tensor | None) -> list[Tensor]: ...
    def _reduced_jacobian(self, jac: Tensor) -> Tensor: ...
    def _no_total(self) -> str: ...
    def reused_weights(self, names: list[str]) -> Tensor | None: ...
    def plan(self, losses: list[Tensor], representation: Tensor | None, *, update: bool
             ) -> Plan: ...
    def _fire_forward_hooks(self, args: tuple[Any, ...], kwargs: dict[str, Any],
                            tensors: list[Tensor]) -> None: ...
    def _weigh(self, names: list[str], grads: TaskGrads, count: int, per_sample: bool,
               values: Tensor) -> Combination: ...
    def _gram(self, names: list[str], g: Tensor, per_sample: bool, keep: bool = True
              ) -> Tensor: ...


class EngineSteps:
    """The per-step switches of the engine, and how a step calls it."""

    #: Compute the per-task gradients in one vectorised backward pass
    #: (``torch.autograd.grad(..., is_grads_batched=True)``) instead of ``T``
    #: (faster on CPU: the backward reads each weight once for all tasks), if
    #: ``True``. ``None``: try it at the first step and fall back to ``T``
    #: passes for good if ``torch.vmap`` cannot batch the graph. Off by
    #: default: a task's non-finite gradient can then turn another task's
    #: rows into NaN (``0 * inf``), so the error names the wrong task.
    batched: bool | None = False
    #: Take the per-task gradients of shared ``nn.Linear`` layers from their
    #: activations when the graph allows it (methods of ``G`` alone; see
    #: :mod:`~mtlweight._engine.linear`): the per-task passes skip the
    #: weight-gradient products and nothing of size ``T x P`` is formed. ``False``
    #: always takes the general path (same results up to rounding).
    linear_shortcut: bool = True
    #: Assemble the update from the per-task passes where the graph allows it: the
    #: heads' gradients from those passes, and below the shared inputs (a cut into
    #: the layers under shared parameters, or the trunk under a ``representation=``)
    #: one backward pass from the combined gradients there, instead of backpropagating
    #: the whole total once more. Saves a pass over the losses and the shared layers;
    #: holds the ``T`` per-task gradients at the cut (``T`` times the activations
    #: there) until the update, and writes the ``.grad`` of the shared inputs and the
    #: heads directly, so hooks that autograd runs when it accumulates a gradient
    #: (``register_post_accumulate_grad_hook``) do not fire for those. ``False``
    #: always backpropagates the total once more with :math:`d` in place (every
    #: ``.grad`` written by autograd; same results up to rounding).
    assemble: bool = True

    def compute_weights(
        self: _Method,
        names: list[str],
        losses: list[Tensor],
        values: Tensor,
        *,
        representation: Tensor | None = None,
    ) -> Tensor:
        reused = self.reused_weights(names)
        if reused is not None:
            return reused
        self.check_losses(names, values)  # before any backward pass
        plan = self.plan(losses, representation, update=False)
        grads = plan.gradients()
        self.batched = plan.settings.batched
        combination = self._weigh(names, grads, len(plan.inputs), plan.settings.per_sample, values)
        if combination.direction is not None:
            raise TypeError(self._no_total())
        return combination.weights

    def _inputs(self: _Method, representation: Tensor | None) -> list[Tensor]:
        if representation is not None:
            return self.shared.resolve(type(self).__name__, representation)
        name = type(self).__name__
        if self.needs_representation:
            raise ValueError(
                f"{name} takes the gradients with respect to a shared representation: call "
                f"it with representation=features (the output of the shared encoder)"
            )
        return self.shared.resolve(name)

    def plan(
        self: _Method, losses: list[Tensor], representation: Tensor | None, *, update: bool
    ) -> Plan:
        """The backward plan of this call (``update=False``: the passes of a weighted total).

        The one place where a step's per-task gradients are asked for: a
        subclass that overrides it sees every one.
        """
        inputs = self._inputs(representation)
        per_sample = representation is not None
        reduce = None
        if not per_sample and self.sync and is_distributed():
            reduce = self._reduced_jacobian
        settings = Settings(type(self).__name__, per_sample, self.needs_matrix, self.batched,
                            self.sync, reduce)
        if not update:
            return GeneralPlan(losses, inputs, settings)
        return choose_plan(losses, inputs, settings, assemble=self.assemble,
                           linear=self.linear_shortcut)

    def _reduced_jacobian(self: _Method, jac: Tensor) -> Tensor:
        """:math:`J` averaged across processes (not kept between steps: ``T x P`` numbers)."""
        reduced = self.statistic("jacobian", jac)
        del self.statistics["jacobian"]
        return reduced

    def _combine(
        self: _Method,
        names: list[str],
        values: Tensor,
        reused: Tensor | None,
        settings: Settings,
        grads: TaskGrads,
        count: int,
    ) -> Combination:
        """The method's half of a step: the combination, its weights recorded."""
        self.batched = settings.batched  # what the passes learnt of it
        if reused is None:
            self.check_losses(names, values)
            combination = self._weigh(names, grads, count, settings.per_sample, values)
        else:
            combination = Combination(reused)
        combination = Combination(combination.weights.to(values), combination.direction)
        self._record(names, combination.weights)
        return combination

    def _weigh(
        self: _Method,
        names: list[str],
        grads: TaskGrads,
        count: int,
        per_sample: bool,
        values: Tensor,
    ) -> Combination:
        """The combination from the gradients of the first ``count`` targets (the inputs).

        :math:`J` is built only for methods that need it; the others get :math:`G`
        from dot products (its diagonal only for :attr:`diagonal_only` methods,
        then not kept as ``statistics["gram"]``).
        """
        jac: Tensor | None = None
        if self.needs_matrix:
            jac = grads.matrix(0, count)
            g = gram(jac)
        else:
            g = grads.gram(0, count, diagonal_only=self.diagonal_only)
        g = self._gram(names, g, per_sample, keep=not self.diagonal_only)
        return self.on_matrices(names, jac, g, values)

    def _gram(
        self: _Method, names: list[str], g: Tensor, per_sample: bool, keep: bool = True
    ) -> Tensor:
        """``G`` averaged across processes for a representation, symmetric, checked finite.

        Kept as ``statistics["gram"]`` unless ``keep`` is false (a diagonal only).
        """
        if per_sample and self.sync and is_distributed():
            # Each rank's columns are its own samples: Gram matrices add up over
            # samples. With mean losses over equal batches, the combined batch's
            # Gram matrix is the mean over ranks divided by their number.
            g = self.statistic("gram", g) / world_size()
        g = (g + g.T) / 2
        check_finite(names, g.diagonal().clamp_min(0.0).sqrt(), "gradient norm")
        if keep:
            self.statistics["gram"] = g
        else:
            self.statistics.pop("gram", None)
        return g

    def _after_backward(
        self: _Method, losses: Losses, representation: Tensor | None, tensors: list[Tensor]
    ) -> dict[str, float]:
        """Finish a ``backward`` that did not go through :meth:`forward`: its hooks, the weights."""
        if self._forward_hooks:
            self._fire_forward_hooks((losses,), {"representation": representation}, tensors)
        return self.weights

    def _fire_forward_hooks(
        self: _Method, args: tuple[Any, ...], kwargs: dict[str, Any], tensors: list[Tensor]
    ) -> None:
        """Run the forward hooks for a ``backward`` call, with the weighted total as output."""
        with torch.no_grad():
            output = weighted_total([t.detach() for t in tensors], list(self._weights.values()))
        for key, hook in list(self._forward_hooks.items()):
            if key in self._forward_hooks_with_kwargs:
                hook(self, args, kwargs, output)
            else:
                hook(self, args, output)
