"""ConFIG (Liu et al. 2024): the conflict-free direction with equal cosine to every task."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from mtlweight._solvers import Array
from mtlweight.gradient_level._base import GramWeighting


def config_weights(gram: Array) -> Array:
    r"""ConFIG coefficients :math:`w`, :math:`d = J^\top w`, from the Gram matrix.

    With :math:`n_t = \lVert g_t \rVert`, the unit vectors :math:`U = N^{-1} J`
    have the cosine matrix :math:`C = U U^\top = N^{-1} G N^{-1}`, and
    :math:`U^{+} \mathbf{1} = U^\top C^{+} \mathbf{1} = J^\top w_0` with
    :math:`w_0 = N^{-1} C^{+} \mathbf{1}`. Then
    :math:`d = \frac{\mathbf{1}^\top G w_0}{w_0^\top G w_0} J^\top w_0`. The
    pseudo-inverse drops the eigenvalues of :math:`C` below
    :math:`T \varepsilon_{32} \lambda_{\max}` (float32 gradients carry no more);
    zero gradients get weight 0 (all zero: all weights 0).

    Examples
    --------
    >>> import numpy as np
    >>> config_weights(np.array([[1.0, 0.0], [0.0, 4.0]]))  # g = (1, 0), (0, 2): d = (1.5, 1.5)
    array([1.5 , 0.75])
    """
    count = gram.shape[0]
    norms = np.sqrt(np.clip(np.diag(gram), 0.0, None))
    live = np.flatnonzero(norms > 0.0)
    weights = np.zeros(count)
    if live.size == 0:
        return weights
    n = norms[live]
    cosines = gram[np.ix_(live, live)] / np.outer(n, n)
    eigenvalues, vectors = np.linalg.eigh((cosines + cosines.T) / 2)
    keep = eigenvalues > eigenvalues.max() * live.size * float(np.finfo(np.float32).eps)
    v = vectors[:, keep] @ ((vectors[:, keep].T @ np.ones(live.size)) / eigenvalues[keep])
    w0 = np.zeros(count)
    w0[live] = v / n
    norm2 = float(w0 @ gram @ w0)
    if not norm2 > 0.0:
        return weights
    result: Array = w0 * (float(np.sum(gram @ w0)) / norm2)
    return result


class ConFIG(GramWeighting):
    r"""ConFIG of `ConFIG: Towards Conflict-free Training of Physics Informed Neural
    Networks` (Liu, Chu and Thuerey, 2024), its Equation 2.

    .. math::

        g_u = \frac{U^{+} \mathbf{1}}{\lVert U^{+} \mathbf{1} \rVert}, \qquad
        d = \Big(\sum_{t=1}^{T} g_t^\top g_u\Big)\, g_u, \qquad
        U = \begin{bmatrix} \frac{g_1}{\lVert g_1 \rVert} & \cdots &
            \frac{g_T}{\lVert g_T \rVert} \end{bmatrix}^\top

    where:

    - :math:`g_t = \nabla_\theta L_t` and :math:`U^{+}` is the pseudo-inverse
      of the matrix of unit task gradients;
    - :math:`g_u` is the unit direction with the same cosine with every task
      gradient (:math:`U g_u \propto \mathbf{1}`, for linearly independent
      gradients), so it conflicts with none of them;
    - its length is the sum of the projections of the task gradients on it,
      so :math:`\lVert d \rVert^2 = \sum_t g_t \cdot d`.

    :math:`d = J^\top w` with weights from the Gram matrix alone
    (:func:`config_weights`). Scaling the losses by :math:`s` leaves the
    weights as they are (:math:`d` scales with :math:`J`).

    Parameters
    ----------
    shared
        The shared parameters: a module or an iterable of tensors.
    task_specific
        ``"weighted"`` (default) or ``"plain"``; see
        :class:`~mtlweight.gradient_level.GradientMethod`.
    **kwargs
        Passed to :class:`~mtlweight.Weighting`.

    .. note::
        The momentum variant of the paper (M-ConFIG, one task's gradient per
        step) is not included. TorchJD and the authors' code compute the
        pseudo-inverse of :math:`U` (a :math:`T \times P` matrix); this one
        works on the :math:`T \times T` cosine matrix, the same for linearly
        independent gradients.

    Examples
    --------
    >>> import torch, mtlweight as mw
    >>> theta = torch.nn.Parameter(torch.zeros(2))
    >>> losses = [theta @ torch.tensor([1.0, 0.0]), theta @ torch.tensor([0.0, 2.0])]
    >>> config = mw.ConFIG(shared=[theta])
    >>> {k: round(v, 6) for k, v in config.backward(losses).items()}
    {'0': 1.5, '1': 0.75}
    >>> theta.grad
    tensor([1.5000, 1.5000])
    """

    def gram_weights(self, gram: Tensor, values: Tensor) -> Tensor:
        return torch.from_numpy(config_weights(gram.numpy()))
