"""Shared machinery of the strategies with one learnable :math:`s_t` per task (UW, IMTL-L)."""

from __future__ import annotations

import warnings
from abc import abstractmethod
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from mtlweight._base import Weighting
from mtlweight._validation import Losses, task_names


def _names(tasks: Sequence[str] | int, strategy: str) -> list[str]:
    if isinstance(tasks, bool) or not isinstance(tasks, int | Sequence) or isinstance(tasks, str):
        raise TypeError(
            f"{strategy} needs the task names (a list of str) or their number (an int) to "
            f"create one learnable parameter per task; found {tasks!r}"
        )
    names = task_names(tasks) if isinstance(tasks, int) else [str(t) for t in tasks]
    if not names:
        raise ValueError(f"{strategy} needs at least one task; found {tasks!r}")
    return names


class _SyncGradient(torch.autograd.Function):
    """Identity whose backward passes the gradient of ``s`` through :meth:`Weighting.statistic`.

    The learnable ``s`` is not part of the user's DDP-wrapped model, so DDP
    does not reduce its gradient; :meth:`~mtlweight.Weighting.statistic`
    averages it over the processes (and records it as ``"s_grad"``), so that
    ``s``, hence the weights, stays identical on every rank. Averaging an
    already averaged gradient (a weighting wrapped in DDP itself) changes nothing.
    """

    @staticmethod
    def forward(ctx: Any, s: Tensor, weighting: Weighting) -> Tensor:
        ctx.weighting = weighting
        return s.view_as(s)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return ctx.weighting.statistic("s_grad", grad), None


class LearnedScale(Weighting):
    """Shared machinery of strategies with one learnable :math:`s_t` per task.

    The total is ``sum_t c_t(s_t) L_t + r(s_t)``, differentiable in ``s`` so
    that the user's optimizer trains ``s`` together with the model: the
    weights are *not* detached, unlike in :class:`~mtlweight.Weighting`.
    The gradient of ``s`` goes through :meth:`~mtlweight.Weighting.statistic`
    (as ``"s_grad"``): under :mod:`torch.distributed` (with ``sync``) it is
    averaged over the processes, as DDP does for the model's parameters.
    """

    context_options = ("tasks",)

    s: nn.Parameter
    accumulable = False
    _why_not_accumulable = (
        "its weights are trained through the total, whose regulariser r(s) would count once "
        "per micro-batch; call weighting(losses) on each micro-batch with its losses divided "
        "by their number and the regulariser's share is off by that factor, or use a whole batch"
    )

    def __init__(self, tasks: Sequence[str] | int, *, init: float = 0.0, **kwargs: Any) -> None:
        names = _names(tasks, type(self).__name__)
        super().__init__(names, **kwargs)
        self.s = nn.Parameter(torch.full((len(names),), float(init)))

    @abstractmethod
    def terms(self, s: Tensor) -> tuple[Tensor, Tensor]:
        """Coefficients :math:`c_t` and regularisers :math:`r_t`, in the order of ``tasks``."""

    def _terms_for(self, names: list[str], device: torch.device) -> tuple[Tensor, Tensor]:
        if self.s.device != device:
            raise ValueError(
                f"{type(self).__name__}'s parameters are on {self.s.device} but the losses are on "
                f"{device}; move the weighting with .to(device) before building the optimizer"
            )
        s: Tensor = _SyncGradient.apply(self.s, self)  # type: ignore[no-untyped-call]
        coefficients, regularisers = self.terms(s)
        order = self.task_map(names)
        return order.to_call(coefficients), order.to_call(regularisers)

    def current_weights(self, names: list[str]) -> list[float]:
        """The coefficients :math:`c_t` at the current parameters."""
        coefficients = self.terms(self.s.detach())[0]
        found: list[float] = self.task_map(names).to_call(coefficients).tolist()
        return found

    def compute_weights(
        self,
        names: list[str],
        losses: list[Tensor],
        values: Tensor,
        *,
        representation: Tensor | None = None,
    ) -> Tensor:
        return self._terms_for(names, values.device)[0].to(values.dtype)

    def forward(self, losses: Losses, *, representation: Tensor | None = None) -> Tensor:
        """Return :math:`\\sum_t c_t L_t + r_t`, differentiable in the losses and in ``s``."""
        names, values, detached = self._prepare(losses)
        dtype = detached.dtype
        stacked = torch.stack([v.reshape(()).to(dtype) for v in values])
        self.statistic("loss", detached)
        coefficients, regularisers = self._terms_for(names, stacked.device)
        total = (coefficients.to(dtype) * stacked + regularisers.to(dtype)).sum()
        self._record(names, coefficients.detach())
        self._check_trained()
        return total

    #: Training calls after which parameters that have gradients but never moved warn.
    stuck_after: int = 3

    def _check_trained(self) -> None:
        """Warn once if ``s`` has a gradient but never changed: it is not in the optimizer."""
        state = self.__dict__
        if state.get("_trained"):
            return
        first = state.get("_first_s")
        if first is None:
            state["_first_s"] = self.s.detach().clone()
            return
        if not torch.equal(self.s.detach(), first):
            state["_trained"] = True  # it moves: never checked again
        elif self.step > self.stuck_after and self.s.grad is not None and bool(self.s.grad.any()):
            state["_trained"] = True  # warned once
            warnings.warn(
                f"{type(self).__name__}'s parameters s have had gradients for {self.step - 1} "
                "steps but never changed, so its weights are stuck at their initial values: "
                "give weighting.parameters() to the optimizer with the model's",
                stacklevel=3,
            )
