"""The paper's gradient-balanced weighting (GB, Algorithm 1)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import Tensor, nn

from mtlweight._base import Weighting
from mtlweight._solvers import balance
from mtlweight.gradient_level._base import GramWeighting


class GradientBalance(GramWeighting):
    r"""Gradient-balanced weighting (GB) of `Multi-Task Learning Enhanced
    Single Image De-Raining` (Fan, Chen and Li), Algorithm 1.

    .. math::

        g_t = \lVert \nabla_\theta L_t \rVert_2, \qquad
        w_t = 1 - \frac{g_t}{\sum_{j=1}^{T} g_j}

    where:

    - :math:`\theta` are the shared parameters, all of them together (one
      norm over their concatenation), or a shared representation;
    - :math:`L_t` is the loss of task :math:`t` at this step;
    - :math:`T \ge 2` is the number of tasks.

    A task whose gradient dominates the shared parameters is down-weighted.
    The weights lie in :math:`[0, 1]`, sum to :math:`T - 1`, are constants for
    the backward pass, and are invariant to scaling every loss by one factor
    (so they are unchanged under :class:`torch.amp.GradScaler`). A task whose
    loss does not reach :math:`\theta` has :math:`g_t = 0` (weight 1 unless all
    are zero); if all norms are zero the weights are all :math:`1 - 1/T`.

    Under :mod:`torch.distributed` every rank gets the same weights: with
    shared parameters the per-task gradients are averaged across processes
    before the norms are taken (the norms one process would compute on the
    combined batch); with a representation the squared norms are averaged.

    The norms are those of the rows of the per-task gradients :math:`J` of
    :class:`~mtlweight.GradientMethod` (:math:`g_t = \sqrt{G_{tt}}`): ``T``
    backward passes that stop at :math:`\theta`, write no ``.grad`` and keep
    the graph for ``total.backward()``; ``gb.backward(losses)`` assembles the
    update from them. Only the diagonal of :math:`G` is computed (the norms, in
    ``statistics["grad_norm"]``), so GB keeps no ``statistics["gram"]``. Their
    cost depends on how deep :math:`\theta` sits: the last layer (the paper's
    choice) or a representation near the output is cheap; all parameters
    costs ``T`` full backward passes, except where every shared parameter
    belongs to an ``nn.Linear`` layer: then the norms come from the layers'
    activations and the passes skip the weight-gradient products
    (:attr:`~mtlweight.gradient_level.GradientMethod.linear_shortcut`).

    Parameters
    ----------
    shared
        The shared parameters: a module (its trainable parameters) or an
        iterable of tensors. May be ``None`` if every call passes
        ``representation=``.
    **kwargs
        Passed to :class:`~mtlweight.Weighting` (``tasks``, ``history_size``, ``sync``).

    Raises
    ------
    ValueError
        With fewer than two tasks, neither ``shared`` nor ``representation``, or
        a representation that no loss depends on.
    FloatingPointError
        If a loss or a gradient norm is NaN or infinite (naming the task).

    .. note::
        The authors' code takes the norm over the kernel of the last
        convolution only; pass that layer as ``shared`` to do the same.

    Examples
    --------
    >>> import torch, mtlweight as mw
    >>> head = torch.nn.Linear(1, 1, bias=False)
    >>> _ = head.weight.data.fill_(1.0)
    >>> x = torch.tensor([[2.0]])
    >>> gb = mw.GradientBalance(shared=head)
    >>> y = head(x).sum()
    >>> total = gb({"a": y, "b": 3 * y})  # gradient norms 2 and 6
    >>> gb.weights
    {'a': 0.75, 'b': 0.25}
    >>> total.backward()
    """

    default_task_specific = "weighted"  # the paper weights the losses: sum_t w_t L_t
    min_tasks = 2
    diagonal_only = True  # the T norms, not the T (T + 1) / 2 entries of G
    _why_min_tasks = "with a single task its weight 1 - g/g is always zero"

    def __init__(
        self, shared: nn.Module | Iterable[Tensor] | None = None, **kwargs: Any
    ) -> None:
        super().__init__(shared, **kwargs)

    def gram_weights(self, gram: Tensor, values: Tensor) -> Tensor:
        norms = gram.diagonal().clamp_min(0.0).sqrt()
        self.statistics["grad_norm"] = norms.to(values.dtype)
        return balance(norms)

    def extra_repr(self) -> str:
        plain = self.task_specific == "plain"
        return super().extra_repr() if plain else Weighting.extra_repr(self)
