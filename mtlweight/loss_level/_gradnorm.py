"""GradNorm (Chen et al. 2018)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from mtlweight._base import Stateful
from mtlweight._engine.grads import accumulation_dtype
from mtlweight._engine.passes import task_pass
from mtlweight._engine.targets import SharedInputs, require_reached
from mtlweight._validation import check_finite
from mtlweight.distributed import is_distributed

_FLOOR = 1e-6  # smallest weight kept after an update, so that every weight stays positive


class GradNorm(Stateful):
    r"""GradNorm of `GradNorm: Gradient Normalization for Adaptive Loss
    Balancing in Deep Multitask Networks` (Chen, Badrinarayanan, Lee and
    Rabinovich, ICML 2018).

    The total is :math:`\sum_t \operatorname{sg}(w_t) L_t` with learnable
    weights :math:`w_t` that follow their own rule: after the total is
    formed, one gradient step on

    .. math::

        L_{\text{grad}} = \sum_{t=1}^{T} \Big| w_t g_t - \bar G\, r_t^{\alpha} \Big|,
        \qquad
        r_t = \frac{L_t / L_t(0)}{\frac1T \sum_j L_j / L_j(0)},
        \qquad
        \bar G = \frac1T \sum_{j=1}^{T} w_j g_j

    then :math:`w \leftarrow \max(w, 10^{-6})` and
    :math:`w \leftarrow T\, w / \sum_j w_j`, where:

    - :math:`g_t = \lVert \nabla_\theta L_t \rVert_2` is the gradient norm of
      task :math:`t` over the shared parameters :math:`\theta` (usually the
      last shared layer), so :math:`w_t g_t` is that of :math:`w_t L_t`;
    - :math:`L_t(0)` is the loss at the first call, and :math:`r_t` the
      relative inverse training rate: a task that trains slowly
      (:math:`r_t > 1`) is pushed towards a larger gradient;
    - :math:`\alpha` is the asymmetry: 0 equalises the gradient norms, larger
      values favour the slow tasks more strongly;
    - the target :math:`\bar G r_t^\alpha` is a constant for the step.

    The update happens inside the call, by hand, with the closed-form gradient
    :math:`\partial L_{\text{grad}} / \partial w_t
    = \operatorname{sign}(w_t g_t - \bar G r_t^\alpha)\, g_t`, divided by
    :math:`\frac1T\sum_j g_j` and scaled by ``lr``: the weights are not
    parameters of this module and **your optimizer is not involved** (do not
    hand them to it). :attr:`weights` reports the weights used for this
    step's total; :attr:`task_weights` those for the next step. The weights
    are positive and sum to :math:`T` after every update.

    Parameters
    ----------
    shared
        The shared parameters :math:`\theta`: a module (its trainable
        parameters) or an iterable of tensors. May be ``None`` if every call
        passes ``representation=``.
    alpha
        The asymmetry :math:`\alpha \ge 0` (the paper tunes it per problem; 1.5 is common).
    lr
        Step size of the weights' update.
    **kwargs
        Passed to :class:`~mtlweight.Weighting` (``tasks``, ``history_size``, ``sync``).

    Raises
    ------
    ValueError
        With fewer than two tasks, neither ``shared`` nor ``representation``,
        a negative loss, or a loss that is not positive at the first call
        (naming the task).
    FloatingPointError
        If a loss or a gradient norm is NaN or infinite (naming the task).

    .. note::
        The paper takes gradient steps on :math:`L_{\text{grad}}` alongside the
        network's; reimplementations usually hand :math:`w` to the network's
        optimizer (often Adam). Dividing the gradient by the mean gradient norm
        keeps the step size independent of the scale of the losses, much as
        Adam does, without a second optimizer state: plain gradient descent on
        :math:`L_{\text{grad}}` is the same rule with step ``lr / mean(g)``.

    Examples
    --------
    >>> import torch, mtlweight as mw
    >>> head = torch.nn.Linear(1, 1, bias=False)
    >>> _ = head.weight.data.fill_(1.0)
    >>> gradnorm = mw.GradNorm(shared=head, alpha=0.0, lr=0.1)
    >>> y = head(torch.tensor([[1.0]])).sum()
    >>> total = gradnorm({"a": y, "b": 3 * y})  # gradient norms 1 and 3
    >>> gradnorm.weights  # used for this total
    {'a': 1.0, 'b': 1.0}
    >>> {k: round(v, 4) for k, v in gradnorm.task_weights.items()}  # 'a' catches up
    {'a': 1.1053, 'b': 0.8947}
    >>> total.backward()
    """

    min_tasks = 2
    accumulable = False
    _why_not_accumulable = (
        "its weights follow this step's gradient norms of the weighted losses, which a sum "
        "of micro-batches does not give; call it on each whole batch"
    )
    _why_min_tasks = "with a single task the renormalised weight is always 1"
    context_options = ("shared",)

    def __init__(
        self,
        shared: nn.Module | Iterable[Tensor] | None = None,
        *,
        alpha: float = 1.5,
        lr: float = 0.025,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not (math.isfinite(alpha) and alpha >= 0):
            raise ValueError(f"alpha must be a non-negative number; found {alpha}")
        if not (math.isfinite(lr) and lr > 0):
            raise ValueError(f"lr must be a positive number; found {lr}")
        self.alpha = float(alpha)
        self.lr = float(lr)
        # A plain list: the shared parameters belong to the user's model.
        self.shared = SharedInputs(shared)  # resolved at each step
        # Both in the order of ``tasks``; created at the first call.
        self._task_weights: Tensor | None = None
        self._initial_losses: Tensor | None = None

    @property
    def task_weights(self) -> dict[str, float]:
        """The weights the next call will use, by task name (empty before the first call)."""
        if self.tasks is None or self._task_weights is None:
            return {}
        return dict(zip(self.tasks, self._task_weights.tolist(), strict=True))

    def compute_weights(
        self,
        names: list[str],
        losses: list[Tensor],
        values: Tensor,
        *,
        representation: Tensor | None = None,
    ) -> Tensor:
        if representation is None and not self.shared.given:
            raise ValueError(
                "GradNorm needs the shared parameters (GradNorm(shared=...)) or a shared tensor "
                "(weighting(losses, representation=features))"
            )
        first = self._initial_losses is None
        bad = values <= 0 if first else values < 0
        if bool(bad.any()):
            i = int(bad.nonzero()[0])
            needed = "positive losses at its first call" if first else "non-negative losses"
            raise ValueError(
                f"GradNorm needs {needed}; loss of task {names[i]!r} is {float(values[i])}"
            )
        norms = self._grad_norms(losses, representation).to(values)
        check_finite(names, norms, "gradient norm")
        current = self.statistic("loss", values)
        order = self.task_map(names)  # work in the order of ``tasks``
        norms, current = order.to_state(norms), order.to_state(current)
        if self._initial_losses is None or self._task_weights is None:
            self._initial_losses = current.clone()
            self._task_weights = torch.ones_like(current)
        used = self._task_weights.to(values)
        self._task_weights = self._update(used, norms, current / self._initial_losses.to(values))
        return order.to_call(used)

    def _grad_norms(self, losses: list[Tensor], representation: Tensor | None) -> Tensor:
        """Per-task gradient norms, identical on every rank; kept as ``statistics["grad_norm"]``.

        With a ``representation`` (it wins over ``shared``) the squared norms are
        averaged across processes: the representation holds per-sample values,
        squared norms add up over samples, and the common factor ``1/R`` does not
        change normalised weights. With shared parameters under
        :mod:`torch.distributed`, the per-task gradients are averaged before the
        norms are taken: with mean losses, the norms one process would compute on
        the combined batch. Raises ``ValueError`` if no loss reaches the tensors.
        """
        per_sample = representation is not None
        inputs = self.shared.resolve(type(self).__name__, representation)
        found = task_pass(losses, inputs, keep_graph=True)
        require_reached(type(self).__name__, found.reached, inputs, per_sample, sync=self.sync)
        jac = found.grads.matrix()
        acc = accumulation_dtype(jac.dtype)
        if per_sample:
            norms = self.statistic("grad_norm_squared", jac.to(acc).square().sum(1)).sqrt()
        else:
            if self.sync and is_distributed():
                jac = self.statistic("task_gradients", jac)
                del self.statistics["task_gradients"]
            norms = jac.to(acc).norm(dim=1)
        self.statistics["grad_norm"] = norms
        return norms

    def _update(self, weights: Tensor, norms: Tensor, rates: Tensor) -> Tensor:
        """One step on L_grad (see the class docstring); returns the new weights."""
        gradient_norms = weights * norms
        target = gradient_norms.mean() * (rates / rates.mean()) ** self.alpha
        scale = norms.mean()
        gradient = torch.sign(gradient_norms - target) * norms / torch.where(scale > 0, scale, 1.0)
        updated = (weights - self.lr * gradient).clamp_min(_FLOOR)
        return updated * (weights.numel() / updated.sum())

    def get_extra_state(self) -> dict[str, Any]:
        return {
            **super().get_extra_state(),
            "task_weights": self._task_weights,
            "initial_losses": self._initial_losses,
        }

    def set_extra_state(self, state: Any) -> None:
        super().set_extra_state(state)
        self._task_weights = state.get("task_weights")
        self._initial_losses = state.get("initial_losses")

    def extra_repr(self) -> str:
        parts = [f"alpha={self.alpha}", f"lr={self.lr}"]
        return ", ".join([*parts, super().extra_repr()] if self.tasks else parts)
