r"""A total loss whose backward pass writes a gradient method's update: for trainers.

Trainers (Lightning's automatic optimisation, the Hugging Face ``Trainer``'s
``compute_loss``, ``accelerator.backward``, ``manual_backward``) want *a loss* to
backpropagate themselves: under DDP that backward pass is where the gradients are
reduced. A method whose update :math:`d` of the shared inputs is not the gradient
of a weighted sum of the losses (PCGrad, GradDrop, MoCo, DB-MTL, or plain heads
with combined shared inputs) has no such loss. :func:`update_total` builds one:

.. math::

    \mathcal{L} = F(L_1, \dots, L_T, \theta), \qquad
    \frac{\partial \mathcal{L}}{\partial L_t} = c_t, \qquad
    \frac{\partial \mathcal{L}}{\partial \theta}\Big|_{\text{direct}} = d - J^\top c

where :math:`\theta` are the shared inputs (parameters or a representation),
:math:`J` the per-task gradients of :math:`\theta` (computed when the total is
built), and :math:`c` the coefficients of the task-specific gradients (1:
plain heads, :math:`w`: weighted heads). Autograd adds the direct term to what
flows back through the losses, :math:`J^\top c`, *before* it accumulates
:math:`\theta`'s gradient: the shared inputs receive exactly :math:`d`, the
other parameters :math:`\sum_t c_t \nabla L_t`, each gradient once, so DDP's,
Accelerate's and Lightning's hooks see the final gradients. A trainer's
scaling of the loss (``loss / accumulation_steps``, AMP's loss scale) scales the
whole update, as it would scale :math:`\nabla \sum_t L_t`. The value of
:math:`\mathcal{L}` is :math:`\sum_t w_t L_t` with the reported weights, for
logging.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = ["update_total"]


class _UpdateTotal(torch.autograd.Function):
    """``sum_t w_t L_t`` in value; gradient ``c_t`` for ``L_t``, ``residual_j`` for input ``j``."""

    @staticmethod
    def forward(
        ctx: Any,
        value: Tensor,
        coefficients: Sequence[float],
        residuals: Sequence[Tensor],
        *tensors: Tensor,
    ) -> Tensor:
        count = len(coefficients)
        ctx.coefficients = list(coefficients)
        ctx.residuals = list(residuals)
        ctx.shapes = [t.shape for t in tensors[:count]]
        ctx.dtypes = [t.dtype for t in tensors]
        return value.clone()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        count = len(ctx.coefficients)
        out: list[Tensor | None] = [None, None, None]
        for c, shape, dtype in zip(ctx.coefficients, ctx.shapes, ctx.dtypes, strict=False):
            # c = 0 too: every parameter gets a gradient, as DDP's reduction expects
            out.append((grad * c).to(dtype).expand(shape))
        for r, dtype in zip(ctx.residuals, ctx.dtypes[count:], strict=True):
            out.append((r * grad.to(r.dtype)).to(dtype))
        ctx.residuals = []  # P numbers: freed with the first backward pass
        return tuple(out)


def update_total(
    losses: Sequence[Tensor],
    weights: Sequence[float],
    coefficients: Sequence[float],
    inputs: Sequence[Tensor],
    residuals: Sequence[Tensor],
) -> Tensor:
    r"""A scalar worth :math:`\sum_t w_t L_t` whose gradient is the method's update.

    Parameters
    ----------
    losses
        The ``T`` scalar losses, with their graphs.
    weights
        The reported weights :math:`w_t`: the value of the total only.
    coefficients
        :math:`c_t`, the gradient of the total with respect to :math:`L_t`: what the
        parameters that are not shared (the heads) receive, :math:`\sum_t c_t \nabla L_t`.
    inputs
        The shared inputs :math:`\theta` (parameters, or a representation).
    residuals
        One tensor per input, :math:`d - J^\top c` on it (its shape; any float dtype).

    Examples
    --------
    >>> import torch
    >>> theta = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    >>> head = torch.nn.Parameter(torch.tensor(3.0))
    >>> l1, l2 = head * theta[0], theta[1] ** 2
    >>> # J = [[3, 0], [0, 4]]; say the method's update is d = (1, 1) with plain heads (c = 1)
    >>> total = update_total([l1, l2], [0.5, 0.5], [1.0, 1.0], [theta],
    ...                      [torch.tensor([1.0, 1.0]) - torch.tensor([3.0, 4.0])])
    >>> total.backward()
    >>> theta.grad, head.grad  # d on the shared input, the plain gradient on the head
    (tensor([1., 1.]), tensor(1.))
    >>> round(total.item(), 4)
    3.5
    """
    if len(inputs) != len(residuals):
        raise ValueError(f"{len(inputs)} shared inputs but {len(residuals)} residuals")
    with torch.no_grad():
        value = losses[0].detach().reshape(()) * float(weights[0])
        for loss, w in zip(losses[1:], weights[1:], strict=True):
            value = value + loss.detach().reshape(()) * float(w)
    kept = [(t, r.reshape(t.shape)) for t, r in zip(inputs, residuals, strict=True)]
    total: Tensor = _UpdateTotal.apply(  # type: ignore[no-untyped-call]
        value,
        [float(c) for c in coefficients],
        [r for _, r in kept],
        *losses,
        *(t for t, _ in kept),
    )
    return total
