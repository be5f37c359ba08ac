"""ExcessMTL (He et al. 2024): task weights from estimated excess risks."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from mtlweight._engine.plans import Combination
from mtlweight.gradient_level._base import TaskSpecific
from mtlweight.gradient_level._parameter_state import ParameterState

_EPS = 1e-7  # inside the square root, as the authors' code


class ExcessMTL(ParameterState):
    r"""ExcessMTL of `Robust Multi-Task Learning with Excess Risks` (He, Zhou, Zhang, Yun, Xu,
    Zeng, Chilimbi and Zhao, ICML 2024).

    .. math::

        H_t \leftarrow H_t + g_t \odot g_t, \qquad
        E_t = g_t^\top \operatorname{diag}\big(\sqrt{H_t + \epsilon}\big)^{-1} g_t, \qquad
        \alpha_t \leftarrow \frac{\alpha_t \exp(\eta_\alpha E_t / E^0_t)}
                                 {\sum_s \alpha_s \exp(\eta_\alpha E_s / E^0_s)}, \qquad
        d = \sum_{t=1}^{T} \alpha_t g_t

    where:

    - :math:`g_t = \nabla_\theta L_t`, the gradient of task :math:`t` with
      respect to the shared parameters :math:`\theta`;
    - :math:`H_t` accumulates the squared gradients (AdaGrad's diagonal
      estimate of the Hessian), :math:`\epsilon = 10^{-7}`;
    - :math:`E_t` is the second-order Taylor estimate of the excess risk of
      task :math:`t`, its distance to convergence: a noisy task with a large
      loss but a small excess risk is not up-weighted;
    - :math:`E^0_t` is the mean estimate over the first ``warmup_steps``
      calls (the scale normalisation of the paper's Section 3.2); during
      them the weights stay uniform. A task with :math:`E^0_t = 0` counts
      :math:`E_t / E^0_t = 0`;
    - :math:`\eta_\alpha` is ``robust_step_size``; the weights :math:`\alpha`
      start uniform and stay on the simplex (they sum to 1).

    :math:`d` is the combination of the task gradients with the weights
    :math:`\alpha`, so ``weighting(losses)`` works as for the loss-level
    strategies (``task_specific="weighted"``, the default: the heads get
    :math:`\alpha_t \nabla L_t`, as in the authors' code).

    Parameters
    ----------
    shared
        The shared parameters: a module or an iterable of tensors (a
        ``representation=`` is refused: :math:`H_t` is per parameter).
    robust_step_size
        :math:`\eta_\alpha > 0`, the step size of the exponentiated-gradient
        update (the authors' name; 0.01 is LibMTL's default).
    warmup_steps
        Calls that only measure :math:`E^0`: 1 (default) as the authors' code;
        Appendix C.1 of the paper suggests three epochs.
    task_specific
        ``"weighted"`` (default) or ``"plain"``.
    **kwargs
        Passed to :class:`~mtlweight.Weighting`.

    .. note::
        The authors' code (and LibMTL) scale the weights to sum to :math:`T`;
        we keep the paper's simplex (sum 1), as TorchJD does; multiply the
        learning rate by :math:`T` to match. With ``warmup_steps=k``, TorchJD's
        ``ExcessMTLWeighting(robust_step_size, n_warmup_steps=k)`` computes the
        same weights (it adds :math:`10^{-7}` to :math:`E^0`).

    Under :mod:`torch.distributed`, :math:`J` is averaged across processes
    before anything else: the weights are those of one process on the
    combined batch (for mean losses over equal batches), identical everywhere.

    Examples
    --------
    >>> import torch, mtlweight as mw
    >>> theta = torch.nn.Parameter(torch.zeros(2))
    >>> excess = mw.ExcessMTL(shared=[theta], robust_step_size=1.0)
    >>> def losses(scale):
    ...     return {"a": theta @ torch.tensor([scale, 0.0]), "b": theta @ torch.tensor([0.0, 2.0])}
    >>> excess(losses(1.0)).backward()  # the first call measures E0: uniform weights
    >>> excess.weights
    {'a': 0.5, 'b': 0.5}
    >>> _ = excess(losses(3.0))  # E / E0: 9 / sqrt(10) for a, 1 / sqrt(2) for b
    >>> {k: round(v, 4) for k, v in excess.weights.items()}
    {'a': 0.8946, 'b': 0.1054}
    """

    def __init__(
        self,
        shared: nn.Module | Iterable[Tensor] | None = None,
        *,
        robust_step_size: float = 1e-2,
        warmup_steps: int = 1,
        task_specific: TaskSpecific | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(shared, task_specific=task_specific, **kwargs)
        if not (math.isfinite(robust_step_size) and robust_step_size > 0):
            raise ValueError(f"robust_step_size must be positive; found {robust_step_size}")
        if int(warmup_steps) != warmup_steps or warmup_steps < 1:
            raise ValueError(f"warmup_steps must be an integer >= 1; found {warmup_steps}")
        self.robust_step_size = float(robust_step_size)
        self.warmup_steps = int(warmup_steps)
        self.squares: Tensor | None = None  # (T, P): H_t, in the order of ``tasks``
        self.baseline: Tensor | None = None  # (T,) float64: sum, then mean, of E over the warmup
        self.log_alpha: Tensor | None = None  # (T,) float64
        self.calls = 0

    def excess_risks(self, jac: Tensor) -> Tensor:
        """Accumulate this step's squared gradients; return :math:`E_t`, ``(T,)`` float64 CPU."""
        jac = self.order.to_state(jac).detach()
        self.check_state(self.squares, jac, "squared-gradient sums")
        if self.squares is None:
            self.squares = torch.zeros_like(jac)
        # Row by row, in place: the temporaries are (P,), not (T, P) (at millions of
        # shared parameters those decided ExcessMTL's memory).
        risks = []
        for row, sums in zip(jac, self.squares, strict=True):
            square = row.square()
            sums.add_(square)
            risks.append(square.div_(torch.add(sums, _EPS).sqrt_()).sum())
        return torch.stack(risks).double().cpu()

    def combine(self, jac: Tensor, gram: Tensor, values: Tensor) -> Combination:
        risks = self.excess_risks(jac)
        count = risks.numel()
        if self.log_alpha is None or self.baseline is None:
            self.log_alpha = torch.full((count,), -math.log(count), dtype=torch.float64)
            self.baseline = torch.zeros(count, dtype=torch.float64)
        self.calls += 1
        if self.calls <= self.warmup_steps:
            self.baseline = self.baseline + risks
            if self.calls == self.warmup_steps:
                self.baseline = self.baseline / self.warmup_steps
        else:
            positive = self.baseline > 0
            ratio = torch.where(positive, risks / torch.where(positive, self.baseline, 1.0), 0.0)
            self.log_alpha = torch.log_softmax(self.log_alpha + self.robust_step_size * ratio, 0)
        return Combination(self.order.to_call(self.log_alpha.exp()))

    def get_extra_state(self) -> dict[str, Any]:
        state = {"squares": self.squares, "baseline": self.baseline, "log_alpha": self.log_alpha}
        return {**super().get_extra_state(), **state, "calls": self.calls}

    def set_extra_state(self, state: Any) -> None:
        super().set_extra_state(state)
        self.squares, self.baseline = state.get("squares"), state.get("baseline")
        self.log_alpha, self.calls = state.get("log_alpha"), int(state.get("calls", 0))

    def extra_repr(self) -> str:
        parts = f"robust_step_size={self.robust_step_size}, warmup_steps={self.warmup_steps}"
        return f"{super().extra_repr()}, {parts}"
