"""MoCo (Fernando et al. 2023): multi-objective gradient correction with tracked gradients."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from mtlweight._engine.grads import accumulation_dtype
from mtlweight._engine.grads import gram as gram_of
from mtlweight._engine.plans import Combination
from mtlweight._solvers import project_simplex
from mtlweight.gradient_level._base import TaskSpecific
from mtlweight.gradient_level._parameter_state import ParameterState


class MoCo(ParameterState):
    r"""MoCo of `Mitigating Gradient Bias in Multi-objective Learning: A Provably Convergent
    Approach` (Fernando, Shen, Liu, Chaudhury, Murugesan and Chen, ICLR 2023).

    .. math::

        y_t \leftarrow y_t - \beta_k (y_t - g_t), \qquad
        \lambda \leftarrow \Pi_{\Delta}\big(\lambda - \gamma_k (Y Y^\top + \rho I)\,\lambda\big),
        \qquad d = Y^\top \lambda

    where:

    - :math:`g_t = \nabla_\theta L_t`, this step's (stochastic) gradient of
      task :math:`t` with respect to the shared parameters :math:`\theta`;
    - :math:`Y = [y_1, \dots, y_T]^\top` tracks the true gradients, a moving
      average that corrects the bias of the stochastic min-norm direction;
      it starts at zero;
    - :math:`\lambda \in \Delta^T` (the simplex) starts uniform and moves by
      one projected gradient step on :math:`\tfrac12 \lVert Y^\top \lambda
      \rVert^2 + \tfrac{\rho}{2} \lVert \lambda \rVert^2` per call
      (:math:`\Pi_\Delta`: Euclidean projection onto the simplex);
    - :math:`\beta_k = \beta / k^{\sigma_\beta}`, :math:`\gamma_k = \gamma /
      k^{\sigma_\gamma}` at call :math:`k = 1, 2, \dots`; :math:`\rho \ge 0`
      regularises :math:`\lambda`.

    :math:`d` combines the tracked gradients, not this step's ones: only
    ``moco.backward(losses)`` applies it; the weights are the least-squares
    coefficients of :math:`d` in this step's gradients (for logging) and
    :attr:`lambdas` gives :math:`\lambda`.

    Parameters
    ----------
    shared
        The shared parameters: a module or an iterable of tensors (a
        ``representation=`` is refused: :math:`Y` is per parameter).
    beta, beta_sigma
        :math:`\beta \in (0, 1]` and its decay exponent :math:`\sigma_\beta \ge 0`.
    gamma, gamma_sigma
        :math:`\gamma > 0` and its decay exponent :math:`\sigma_\gamma \ge 0`.
    rho
        :math:`\rho \ge 0`. The defaults are LibMTL's.
    task_specific
        ``"plain"`` (default, as LibMTL: the other parameters get the plain
        gradient of :math:`\sum_t L_t`) or ``"weighted"``.
    **kwargs
        Passed to :class:`~mtlweight.Weighting`.

    .. note::
        We follow the paper's Algorithm 1. LibMTL's version (from the authors'
        code) rescales each :math:`g_t` to norm :math:`L_t` before tracking it
        and replaces the projection :math:`\Pi_\Delta` by a softmax; the paper's
        optional projection of :math:`y_t` onto a ball is not implemented.

    Under :mod:`torch.distributed`, :math:`J` is averaged across processes
    before anything else: :math:`Y`, :math:`\lambda` and :math:`d` are those of
    one process on the combined batch (mean losses, equal batches).

    Examples
    --------
    >>> import torch, mtlweight as mw
    >>> theta = torch.nn.Parameter(torch.zeros(2))
    >>> moco = mw.MoCo(shared=[theta], beta=1.0, gamma=0.5)
    >>> _ = moco.backward([theta @ torch.tensor([1.0, 0.0]), theta @ torch.tensor([0.0, 2.0])])
    >>> moco.lambdas  # Y = J: lambda = P(1/2 - 0.5 (1/2, 2)) = P(0.25, -0.5)
    {'0': 0.875, '1': 0.125}
    >>> theta.grad
    tensor([0.8750, 0.2500])
    """

    direction_only = True  # d is not J^T w: weighting(losses) raises at once

    def __init__(
        self,
        shared: nn.Module | Iterable[Tensor] | None = None,
        *,
        beta: float = 0.5,
        beta_sigma: float = 0.5,
        gamma: float = 0.1,
        gamma_sigma: float = 0.5,
        rho: float = 0.0,
        task_specific: TaskSpecific | None = None,
        **kwargs: Any,
    ) -> None:
        mode: TaskSpecific = "plain" if task_specific is None else task_specific
        super().__init__(shared, task_specific=mode, **kwargs)
        checks = {
            "beta": (beta, 0 < beta <= 1, "in (0, 1]"),
            "gamma": (gamma, gamma > 0, "positive"),
            "beta_sigma": (beta_sigma, beta_sigma >= 0, ">= 0"),
            "gamma_sigma": (gamma_sigma, gamma_sigma >= 0, ">= 0"),
            "rho": (rho, rho >= 0, ">= 0"),
        }
        for name, (value, ok, what) in checks.items():
            if not (math.isfinite(value) and ok):
                raise ValueError(f"MoCo's {name} must be {what}; found {value}")
        self.beta, self.beta_sigma = float(beta), float(beta_sigma)
        self.gamma, self.gamma_sigma, self.rho = float(gamma), float(gamma_sigma), float(rho)
        self.tracked: Tensor | None = None  # Y, (T, P), in the order of ``tasks``
        self.lam: Tensor | None = None  # (T,) float64 on the simplex
        self.calls = 0

    @property
    def lambdas(self) -> dict[str, float]:
        """:math:`\\lambda` by task name (empty before the first call)."""
        if self.lam is None or self.tasks is None:
            return {}
        return dict(zip(self.tasks, self.lam.tolist(), strict=True))

    def combine(self, jac: Tensor, gram: Tensor, values: Tensor) -> Combination:
        rows = self.order.to_state(jac).detach()
        self.check_state(self.tracked, rows, "tracked gradients")
        self.calls += 1
        beta = self.beta / self.calls**self.beta_sigma
        gamma = self.gamma / self.calls**self.gamma_sigma
        tracked = torch.zeros_like(rows) if self.tracked is None else self.tracked
        self.tracked = tracked = tracked - beta * (tracked - rows)
        count = rows.shape[0]
        lam = self.lam if self.lam is not None else torch.full((count,), 1.0 / count).double()
        step = (gram_of(tracked) + self.rho * torch.eye(count, dtype=torch.float64)) @ lam
        self.lam = torch.from_numpy(project_simplex((lam - gamma * step).numpy()))
        acc = accumulation_dtype(tracked.dtype)
        direction = self.lam.to(device=tracked.device, dtype=acc) @ tracked.to(acc)
        return Combination.from_direction(jac, gram, direction)

    def get_extra_state(self) -> dict[str, Any]:
        state = {"tracked": self.tracked, "lam": self.lam, "calls": self.calls}
        return {**super().get_extra_state(), **state}

    def set_extra_state(self, state: Any) -> None:
        super().set_extra_state(state)
        self.tracked, self.lam = state.get("tracked"), state.get("lam")
        self.calls = int(state.get("calls", 0))

    def extra_repr(self) -> str:
        parts = f"beta={self.beta}, gamma={self.gamma}, rho={self.rho}"
        return f"{super().extra_repr()}, {parts}"
