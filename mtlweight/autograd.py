"""Per-task gradients and gradient norms that never touch ``.grad``.

Both functions use :func:`torch.autograd.grad`, so they

* leave every ``.grad`` attribute as it was (nothing is accumulated),
* keep the autograd graph (``retain_graph=True`` by default), so a later
  ``total.backward()`` still works,
* count an input that a loss does not reach as a zero gradient.

The ``inputs`` may be parameters (``model.parameters()``, a module) or any
tensors of the graph that require grad, such as a shared representation.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor, nn

from mtlweight._engine.passes import task_pass
from mtlweight._engine.targets import as_inputs
from mtlweight._validation import check_scalar_losses

__all__ = ["as_inputs", "grad_norms", "task_gradients"]


def task_gradients(
    losses: Sequence[Tensor],
    inputs: nn.Module | Tensor | Iterable[Tensor],
    *,
    retain_graph: bool = True,
) -> Tensor:
    r"""Matrix of flattened per-task gradients.

    .. math::

        J = \begin{bmatrix} \nabla_\theta L_1 & \cdots & \nabla_\theta L_T \end{bmatrix}^\top
        \in \mathbb{R}^{T \times P}

    where :math:`\theta` are the ``inputs`` flattened and concatenated
    (:math:`P` numbers in all) and :math:`L_t` the ``losses``.

    Parameters
    ----------
    losses
        ``T`` scalar tensors.
    inputs
        Parameters, a module, or intermediate tensors of the graph.
    retain_graph
        Keep the graph for a later backward (default ``True``).

    Returns
    -------
    Tensor
        Shape ``(T, P)``, in the promoted dtype of the inputs' gradients.

    Examples
    --------
    >>> import torch
    >>> x = torch.tensor([1.0, 2.0], requires_grad=True)
    >>> task_gradients([x.sum(), (x ** 2).sum()], [x])
    tensor([[1., 1.],
            [2., 4.]])
    """
    check_scalar_losses(losses)
    found = task_pass(list(losses), as_inputs(inputs), keep_graph=retain_graph)
    return found.grads.matrix()


def grad_norms(
    losses: Sequence[Tensor],
    inputs: nn.Module | Tensor | Iterable[Tensor],
    *,
    retain_graph: bool = True,
) -> Tensor:
    r"""L2 norm of each task's gradient over all ``inputs`` together.

    .. math::

        g_t = \lVert \nabla_\theta L_t \rVert_2
            = \Big(\sum_{p} \big(\partial L_t / \partial \theta_p\big)^2\Big)^{1/2}

    It costs one backward pass per task, each stopping at the ``inputs``;
    the norms are accumulated in float32 (or float64 when the gradients are
    float64), so half-precision gradients neither overflow nor lose precision
    in the sum of squares.

    Parameters
    ----------
    losses
        ``T`` scalar tensors.
    inputs
        Parameters, a module, or intermediate tensors of the graph.
    retain_graph
        Keep the graph for a later backward (default ``True``).

    Returns
    -------
    Tensor
        Shape ``(T,)``, detached.

    Examples
    --------
    >>> import torch
    >>> x = torch.tensor([3.0, 4.0], requires_grad=True)
    >>> grad_norms([(x ** 2).sum() / 2, x.sum()], x)
    tensor([5.0000, 1.4142])
    """
    check_scalar_losses(losses)
    found = task_pass(list(losses), as_inputs(inputs), keep_graph=retain_graph)
    norms = []
    for grads in found.grads.grads:
        acc_dtype = torch.float64 if any(g.dtype == torch.float64 for g in grads) else torch.float32
        squares = [g.detach().to(acc_dtype).square().sum() for g in grads]
        norms.append(torch.stack(squares).sum().sqrt())
    return torch.stack(norms)
