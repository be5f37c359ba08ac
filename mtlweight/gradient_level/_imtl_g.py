"""IMTL-G (Liu et al. 2021): impartial gradient weighting in closed form."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from mtlweight._solvers import Array
from mtlweight.gradient_level._base import GramWeighting

__all__ = ["IMTLG", "imtl_g_weights"]


def imtl_g_weights(gram: Array) -> Array:
    r"""IMTL-G coefficients from the Gram matrix :math:`G = J J^\top`.

    Solves :math:`\sum_t \alpha_t = 1` and :math:`d \cdot (u_1 - u_t) = 0`
    for :math:`t = 2..T`, with :math:`d \cdot u_s = \sum_r \alpha_r G_{rs} / \lVert g_s \rVert`;
    this linear system is the paper's closed form. Tasks with a zero gradient
    have no direction: they get :math:`\alpha_t = 0` and the others are solved
    among themselves (uniform if all are zero). A singular system (identical
    gradients) is solved in the least-squares sense, minimum norm.

    Examples
    --------
    >>> import numpy as np
    >>> imtl_g_weights(np.array([[1.0, 0.0], [0.0, 4.0]])).round(6)  # g = (1, 0), (0, 2)
    array([0.666667, 0.333333])
    """
    count = gram.shape[0]
    norms = np.sqrt(np.clip(np.diag(gram), 0.0, None))
    live = np.flatnonzero(norms > 0.0)
    alpha = np.zeros(count)
    if live.size == 0:
        return np.full(count, 1.0 / count)
    g = gram[np.ix_(live, live)]
    # [r, s] = g_r . u_s, divided by the largest norm so that every row of the
    # system is of order 1 (least squares truncates relative to the largest)
    projections = g / norms[live][None, :] / norms[live].max()
    system = np.ones((live.size, live.size))
    system[1:] = (projections[:, :1] - projections[:, 1:]).T
    rhs = np.zeros(live.size)
    rhs[0] = 1.0
    alpha[live] = np.linalg.lstsq(system, rhs, rcond=None)[0]
    return alpha


class IMTLG(GramWeighting):
    r"""IMTL-G of `Towards Impartial Multi-task Learning` (Liu, Li, Kuang, Xue,
    Chen, Yang, Liao and Zhang, ICLR 2021).

    .. math::

        \alpha_{2:T} = g_1 U^\top \big(D U^\top\big)^{-1}, \qquad
        \alpha_1 = 1 - \sum_{t=2}^{T} \alpha_t, \qquad
        d = \sum_{t=1}^{T} \alpha_t g_t

    where:

    - :math:`g_t = \nabla_\theta L_t` and :math:`u_t = g_t / \lVert g_t \rVert`;
    - :math:`D` has rows :math:`g_1 - g_t` and :math:`U` rows
      :math:`u_1 - u_t`, :math:`t = 2, \dots, T`.

    The combined gradient has equal projections onto every task's direction,
    :math:`d \cdot u_1 = \dots = d \cdot u_T`, and the weights sum to 1 (they
    may be negative). Computed from the Gram matrix by
    :func:`imtl_g_weights`, robust to identical and zero gradients.

    Parameters
    ----------
    shared
        The shared parameters: a module or an iterable of tensors.
    task_specific
        ``"weighted"`` (default: heads get :math:`\alpha_t \nabla L_t`) or
        ``"plain"`` (the paper's algorithm: heads get the gradient of
        :math:`\sum_t L_t`).
    **kwargs
        Passed to :class:`~mtlweight.Weighting`.

    Raises
    ------
    ValueError
        Without shared parameters or representation.
    FloatingPointError
        If a loss or a gradient is NaN or infinite (naming the task).

    .. note::
        The paper pairs IMTL-G with IMTL-L (learnt loss scales,
        :class:`~mtlweight.IMTLL`); this class is the gradient
        part alone.

    Examples
    --------
    >>> import torch, mtlweight as mw
    >>> theta = torch.nn.Parameter(torch.zeros(2))
    >>> losses = [theta @ torch.tensor([1.0, 0.0]), theta @ torch.tensor([0.0, 2.0])]
    >>> imtl = mw.IMTLG(shared=[theta])
    >>> {k: round(v, 4) for k, v in imtl.backward(losses).items()}
    {'0': 0.6667, '1': 0.3333}
    >>> theta.grad  # equal projections onto (1, 0) and (0, 1)
    tensor([0.6667, 0.6667])
    """

    def gram_weights(self, gram: Tensor, values: Tensor) -> Tensor:
        return torch.from_numpy(imtl_g_weights(gram.numpy()))
