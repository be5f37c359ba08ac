"""FAMO (Liu et al. 2023): fast adaptive multitask optimization."""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from torch import Tensor

from mtlweight._base import Stateful
from mtlweight._validation import check_non_negative

Optimizer = Literal["adam", "sgd"]
_ADAM = (0.9, 0.999, 1e-8)  # torch.optim.Adam's betas and eps, as the authors' code uses


class FAMO(Stateful):
    r"""FAMO of `FAMO: Fast Adaptive Multitask Optimization` (Liu, Feng, Stone and Liu,
    NeurIPS 2023).

    .. math::

        z = \operatorname{softmax}(\xi), \qquad
        w_t = \frac{z_t / (L_t + \epsilon)}{\sum_s z_s / (L_s + \epsilon)}, \qquad
        \delta = \Big[\frac{\partial z}{\partial \xi}\Big]^\top
            \big(\log(L^{k-1} + \epsilon) - \log(L^{k} + \epsilon)\big)

    where:

    - :math:`L_t` is the loss of task :math:`t` at this step :math:`k`;
      :math:`\sum_t w_t \nabla L_t = c \sum_t z_t \nabla \log(L_t + \epsilon)`
      with :math:`c = (\sum_s z_s / (L_s + \epsilon))^{-1}`, the paper's update,
      which decreases every log-loss at a rate set by :math:`z`;
    - :math:`\xi \in \mathbb{R}^T` are the logits of the task weighting,
      starting at zero (uniform :math:`z`); the weights :math:`w` are
      positive and sum to 1;
    - :math:`\delta` is the gradient with respect to :math:`\xi` of the
      weighted decrease of the log-losses from the previous step to this
      one; the logits move against it, :math:`\xi \leftarrow \xi - \beta(\delta
      + \gamma \xi)` (``optimizer="sgd"``, the paper's Algorithm 1) or by one
      Adam step of learning rate :math:`\beta` and weight decay :math:`\gamma`
      (``"adam"``, the default, as the authors' code), so that a task whose
      loss falls more slowly gains weight;
    - :math:`\epsilon = 10^{-8}` (the authors' code).

    The paper measures :math:`L^{k}` after the update of step :math:`k - 1` on
    the same batch, which costs a second forward pass. Like the paper's
    Algorithm 1 with the next step's losses, we keep the previous step's
    losses and update :math:`\xi` at the start of each call from them and the
    new ones (another batch): no extra pass, and the first call only stores
    its losses. The weights of a call use the updated :math:`\xi`.

    Parameters
    ----------
    beta
        :math:`\beta > 0`, the step size of the logits (0.025, the paper's).
    gamma
        :math:`\gamma \ge 0`, their decay (0.001, the paper's and LibMTL's).
    optimizer
        ``"adam"`` (default) or ``"sgd"``, see above.
    **kwargs
        Passed to :class:`~mtlweight.Weighting` (``tasks``, ``history_size``, ``sync``).

    Raises
    ------
    ValueError
        With a negative loss (naming the task).
    FloatingPointError
        If a loss is NaN or infinite (naming the task).

    .. note::
        With ``optimizer="adam"``, the weights of call :math:`k` equal those
        of TorchJD's ``FAMO(T, lr=beta, weight_decay=gamma)`` called on
        :math:`L^k` after ``update(L^k)``: TorchJD (and the authors' code)
        expects ``update`` with the losses recomputed on the same batch after
        the optimizer step; here the next call's losses play that role.

    Under :mod:`torch.distributed` the losses are averaged across processes
    first (:meth:`~mtlweight.Weighting.statistic`): the weights are identical
    everywhere and equal to those of one process on the combined batch
    (mean losses over equal batches).

    Examples
    --------
    >>> import torch, mtlweight as mw
    >>> famo = mw.FAMO()
    >>> _ = famo({"a": torch.tensor(1.0), "b": torch.tensor(3.0)})
    >>> {k: round(v, 4) for k, v in famo.weights.items()}  # z uniform: w ~ 1 / L
    {'a': 0.75, 'b': 0.25}
    >>> _ = famo({"a": torch.tensor(0.5), "b": torch.tensor(3.0)})  # a fell, b did not
    >>> famo.logits.tolist()[0] < famo.logits.tolist()[1]
    True
    """


    def __init__(
        self,
        *,
        beta: float = 0.025,
        gamma: float = 1e-3,
        optimizer: Optimizer = "adam",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not (math.isfinite(beta) and beta > 0):
            raise ValueError(f"FAMO's beta must be a positive number; found {beta}")
        if not (math.isfinite(gamma) and gamma >= 0):
            raise ValueError(f"FAMO's gamma must be a number >= 0; found {gamma}")
        if optimizer not in ("adam", "sgd"):
            raise ValueError(f"FAMO's optimizer must be 'adam' or 'sgd'; found {optimizer!r}")
        self.beta, self.gamma, self.optimizer = float(beta), float(gamma), optimizer
        # In the order of ``tasks``, float64 on the CPU.
        self.logits: Tensor | None = None
        self.previous: Tensor | None = None
        self.moments: tuple[Tensor, Tensor] | None = None  # Adam's m and v
        self.updates = 0
        self.eps = 1e-8

    def compute_weights(
        self,
        names: list[str],
        losses: list[Tensor],
        values: Tensor,
        *,
        representation: Tensor | None = None,
    ) -> Tensor:
        check_non_negative(names, values, "FAMO")
        order = self.task_map(names)
        current = order.to_state(self.statistic("loss", values).detach().double().cpu())
        if self.logits is None:
            self.logits = torch.zeros(len(names), dtype=torch.float64)
        if self.previous is not None:
            self._update(torch.log(self.previous + self.eps) - torch.log(current + self.eps))
        self.previous = current
        inverse = torch.softmax(self.logits, 0) / (current + self.eps)
        return order.to_call(inverse / inverse.sum()).to(values)

    def _update(self, decrease: Tensor) -> None:
        assert self.logits is not None
        z = torch.softmax(self.logits, 0)
        grad = z * (decrease - (z * decrease).sum()) + self.gamma * self.logits
        if self.optimizer == "sgd":
            self.logits = self.logits - self.beta * grad
            return
        beta1, beta2, eps = _ADAM
        m, v = self.moments or (torch.zeros_like(grad), torch.zeros_like(grad))
        self.updates += 1
        m, v = beta1 * m + (1 - beta1) * grad, beta2 * v + (1 - beta2) * grad.square()
        self.moments = (m, v)
        denom = v.sqrt() / math.sqrt(1 - beta2**self.updates) + eps
        self.logits = self.logits - self.beta / (1 - beta1**self.updates) * m / denom

    def get_extra_state(self) -> dict[str, Any]:
        state = {"logits": self.logits, "previous": self.previous, "moments": self.moments}
        return {**super().get_extra_state(), **state, "updates": self.updates}

    def set_extra_state(self, state: Any) -> None:
        super().set_extra_state(state)
        self.logits, self.previous = state.get("logits"), state.get("previous")
        moments = state.get("moments")
        self.moments = None if moments is None else (moments[0], moments[1])
        self.updates = int(state.get("updates", 0))

    def extra_repr(self) -> str:
        parts = [f"beta={self.beta}", f"gamma={self.gamma}", f"optimizer={self.optimizer!r}"]
        return ", ".join([*parts, super().extra_repr()] if self.tasks else parts)
