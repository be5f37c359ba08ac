"""PCGrad (Yu et al. 2020): projecting conflicting gradients."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from mtlweight._base import Seeded
from mtlweight._solvers import Array
from mtlweight.gradient_level._base import GramWeighting, TaskSpecific


def pcgrad_coefficients(gram: Array, orders: Sequence[Sequence[int]]) -> Array:
    r"""Coefficients :math:`C` of the projected gradients, :math:`\tilde g_i = \sum_s C_{is} g_s`.

    For each task :math:`i`, starting from :math:`\tilde g_i = g_i`, and for
    each :math:`j` in ``orders[i]`` in turn:
    if :math:`\tilde g_i \cdot g_j < 0` then
    :math:`\tilde g_i \leftarrow \tilde g_i - \frac{\tilde g_i \cdot g_j}{\lVert g_j \rVert^2} g_j`.
    Inner products come from the Gram matrix :math:`G = J J^\top`:
    :math:`\tilde g_i \cdot g_j = (C G)_{ij}`.

    Examples
    --------
    >>> import numpy as np
    >>> gram = np.array([[1.0, -1.0], [-1.0, 2.0]])  # g1 = (1, 0), g2 = (-1, 1)
    >>> pcgrad_coefficients(gram, [[1], [0]])
    array([[1. , 0.5],
           [1. , 1. ]])
    """
    count = gram.shape[0]
    coefficients = np.eye(count)
    norms2 = np.diag(gram)
    for i in range(count):
        row = coefficients[i]
        for j in orders[i]:
            dot = float(row @ gram[:, j])
            if dot < 0.0 and norms2[j] > 0.0:
                row[j] -= dot / norms2[j]
    return coefficients


class PCGrad(Seeded, GramWeighting):
    r"""PCGrad of `Gradient Surgery for Multi-Task Learning` (Yu, Kumar, Gupta,
    Levine, Hausman and Finn, 2020).

    .. math::

        \tilde g_i \leftarrow \tilde g_i
            - \frac{\min(0,\ \tilde g_i \cdot g_j)}{\lVert g_j \rVert_2^2}\, g_j
        \quad \text{for } j \ne i \text{ in random order}, \qquad
        d = \sum_{i=1}^{T} \tilde g_i = J^\top w

    where:

    - :math:`g_j = \nabla_\theta L_j`, the gradient of task :math:`j` with
      respect to the shared parameters :math:`\theta`;
    - :math:`\tilde g_i` starts at :math:`g_i` and is projected, whenever it
      conflicts (negative inner product), onto the normal plane of each
      *original* :math:`g_j`, visited in a random order drawn per task;
    - :math:`w` are the coefficients of :math:`d` in the task gradients (each
      projection subtracts a multiple of one :math:`g_j`).

    After the projection onto :math:`g_j`, :math:`\tilde g_i \cdot g_j = 0`; so
    :math:`\tilde g_i` never conflicts with the last gradient it visited, and
    with two tasks :math:`d` conflicts with neither. Without conflicts
    :math:`d = \sum_t g_t` and every weight is 1.

    ``backward(losses)`` returns :math:`w`, the effective weights of the
    shared-parameter update. By default (``task_specific="plain"``, as the
    authors' code) the task-specific parameters get the plain gradient of
    :math:`\sum_t L_t`, and ``pcgrad(losses)`` raises :class:`TypeError`;
    with ``task_specific="weighted"`` the heads get :math:`w_t \nabla L_t` and
    ``pcgrad(losses)`` returns :math:`\sum_t \operatorname{sg}(w_t) L_t`.

    Parameters
    ----------
    shared
        The shared parameters: a module or an iterable of tensors.
    seed
        Seed of the generator that draws the orders; its state is part of
        ``state_dict``, so a resumed run draws the same orders.
    task_specific
        ``"plain"`` (default) or ``"weighted"``; see
        :class:`~mtlweight.GradientMethod`.
    **kwargs
        Passed to :class:`~mtlweight.Weighting`.

    Raises
    ------
    ValueError
        Without shared parameters or representation.
    FloatingPointError
        If a loss or a gradient is NaN or infinite (naming the task).

    Examples
    --------
    >>> import torch, mtlweight as mw
    >>> theta = torch.nn.Parameter(torch.zeros(2))
    >>> losses = [theta @ torch.tensor([1.0, 0.0]), theta @ torch.tensor([-1.0, 1.0])]
    >>> pcgrad = mw.PCGrad(shared=[theta])
    >>> pcgrad.backward(losses)  # (1, 0) -> (0.5, 0.5); (-1, 1) -> (0, 1)
    {'0': 2.0, '1': 1.5}
    >>> theta.grad
    tensor([0.5000, 1.5000])
    """

    def __init__(
        self,
        shared: nn.Module | Iterable[Tensor] | None = None,
        *,
        seed: int = 0,
        task_specific: TaskSpecific = "plain",
        **kwargs: object,
    ) -> None:
        super().__init__(shared, task_specific=task_specific, **kwargs)
        self.seed = int(seed)
        self.generator = torch.Generator()
        self.generator.manual_seed(self.seed)

    def gram_weights(self, gram: Tensor, values: Tensor) -> Tensor:
        count = gram.shape[0]
        orders = []
        for i in range(count):
            others = [j for j in range(count) if j != i]
            perm = torch.randperm(len(others), generator=self.generator).tolist()
            orders.append([others[k] for k in perm])
        return torch.from_numpy(pcgrad_coefficients(gram.numpy(), orders).sum(axis=0))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, seed={self.seed}"
