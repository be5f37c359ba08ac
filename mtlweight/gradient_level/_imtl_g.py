"""IMTL-G (Liu et al. 2021): impartial gradient weighting in closed form."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from mtlweight._solvers import Array
from mtlweight.gradient_level._base import GramWeighting

_RCOND = 1e-7  # eigenvalues of G below this times the largest count as zero (float32 J)


def _equal_projection_system(gram: Array, norms: Array) -> Array:
    """Least-squares solution of sum_t a_t = 1, d . (u_1 - u_t) = 0 (all norms > 0)."""
    # [r, s] = g_r . u_s, divided by the largest norm so that every row of the
    # system is of order 1 (least squares truncates relative to the largest)
    projections = gram / norms[None, :] / norms.max()
    system = np.ones(gram.shape)
    system[1:] = (projections[:, :1] - projections[:, 1:]).T
    rhs = np.zeros(gram.shape[0])
    rhs[0] = 1.0
    result: Array = np.asarray(np.linalg.lstsq(system, rhs, rcond=None)[0], dtype=np.float64)
    return result


def imtl_g_weights(gram: Array, *, rcond: float = _RCOND) -> Array:
    r"""IMTL-G coefficients from the Gram matrix :math:`G = J J^\top`.

    .. math::

        \alpha = \frac{G^{+} n}{\mathbf 1^\top G^{+} n}, \qquad
        n = (\lVert g_1 \rVert, \dots, \lVert g_T \rVert)

    where :math:`G^{+}` is the pseudo-inverse (eigenvalues below ``rcond``
    times the largest count as zero). Where :math:`G` is invertible this is
    the paper's closed form: :math:`d = J^\top \alpha` has
    :math:`J d = n / \mathbf 1^\top G^{-1} n`, equal projections
    :math:`d \cdot u_t` onto every task direction, and
    :math:`\sum_t \alpha_t = 1`. Where :math:`J` has fewer independent rows
    than tasks (:math:`T > \operatorname{rank} J`) equal projections are only
    possible with :math:`d = 0`; :math:`d` is then the minimum-norm
    least-squares solution of :math:`J d = c\, n`, scaled so that the
    weights sum to 1 -- the closest to equal projections. Tasks with a zero
    gradient get :math:`\alpha_t = 0` (uniform weights if all are zero). If
    :math:`\mathbf 1^\top G^{+} n = 0` (opposite gradients) the equal-projection
    system is solved in the least-squares sense instead (:math:`d = 0`).

    Examples
    --------
    >>> import numpy as np
    >>> imtl_g_weights(np.array([[1.0, 0.0], [0.0, 4.0]])).round(6)  # g = (1, 0), (0, 2)
    array([0.666667, 0.333333])
    >>> jac = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])  # T = 3 > rank 2
    >>> imtl_g_weights(jac @ jac.T).round(6)  # d = (0.75, 0.75)
    array([0.25, 0.25, 0.5 ])
    """
    count = gram.shape[0]
    diag = np.clip(np.diag(gram), 0.0, None)
    norms = np.sqrt(diag)
    live = np.flatnonzero(norms > 0.0)
    alpha = np.zeros(count)
    if live.size == 0:
        return np.full(count, 1.0 / count)
    scale = float(diag[live].max())
    g = gram[np.ix_(live, live)] / scale  # entries of order 1
    n = norms[live] / np.sqrt(scale)
    values, vectors = np.linalg.eigh((g + g.T) / 2)
    keep = values > rcond * values[-1]
    pinv_n = vectors[:, keep] @ ((vectors[:, keep].T @ n) / values[keep])
    total = float(pinv_n.sum())
    if abs(total) > 1e-9 * float(np.abs(pinv_n).sum()) and np.isfinite(total):
        alpha[live] = pinv_n / total
    else:
        alpha[live] = _equal_projection_system(g, n)
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
    :func:`imtl_g_weights` in the equivalent form
    :math:`\alpha = G^{+} n / \mathbf 1^\top G^{+} n` (:math:`G = J J^\top`,
    :math:`n_t = \lVert g_t \rVert`), robust to identical and zero gradients and
    to more tasks than the rank of :math:`J`, where no nonzero :math:`d` has
    equal projections: there :math:`d` is the least-squares solution of
    :math:`J d \propto n` (the paper's formula, with :math:`D U^\top` singular,
    gives :math:`d = 0` or nothing).

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
