"""Aligned-MTL (Senushkin et al. 2023): aligning the principal components of the gradients."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import numpy as np
import torch
from torch import Tensor, nn

from mtlweight._solvers import Array
from mtlweight.gradient_level._base import GramWeighting, TaskSpecific

Scale = Literal["min", "median", "rmse"]


def aligned_mtl_weights(gram: Array, scale: Scale = "min") -> Array:
    r"""Aligned-MTL coefficients :math:`w = B \mathbf{1}` from the Gram matrix.

    With :math:`G = J J^\top = V \Lambda V^\top` restricted to its numerical
    rank (eigenvalues above :math:`\lambda_{\max} T \varepsilon_{32}`, as in
    the authors' code), :math:`B = \sqrt{\sigma}\, V \Lambda^{-1/2} V^\top`.
    All zero gradients give weights 1.

    Examples
    --------
    >>> import numpy as np
    >>> aligned_mtl_weights(np.array([[1.0, 0.0], [0.0, 4.0]]))  # g = (1, 0), (0, 2)
    array([1. , 0.5])
    """
    count = gram.shape[0]
    eigenvalues, vectors = np.linalg.eigh(gram)
    top = float(np.max(eigenvalues, initial=0.0))
    keep = eigenvalues > top * count * float(np.finfo(np.float32).eps)
    if not top > 0.0 or not keep.any():
        return np.ones(count)
    lam, v = eigenvalues[keep], vectors[:, keep]
    if scale == "min":
        sigma = float(lam.min())
    elif scale == "median":  # the lower median, as torch.median
        sigma = float(np.sort(lam)[(lam.size - 1) // 2])
    else:
        sigma = float(lam.mean())
    b = np.sqrt(sigma) * (v / np.sqrt(lam)[None, :]) @ v.T
    result: Array = b.sum(axis=1)
    return result


class AlignedMTL(GramWeighting):
    r"""Aligned-MTL of `Independent Component Alignment for Multi-Task Learning`
    (Senushkin, Patakin, Kuznetsov and Konushin, CVPR 2023).

    .. math::

        J J^\top = V \Lambda V^\top, \qquad
        B = \sqrt{\sigma}\, V \Lambda^{-1/2} V^\top, \qquad
        d = J^\top B \mathbf{1}

    where:

    - :math:`J` holds the task gradients :math:`g_t = \nabla_\theta L_t` as rows;
    - :math:`V, \Lambda` are the eigenvectors and (non-zero) eigenvalues of the
      Gram matrix; :math:`\Lambda^{-1/2}` whitens it;
    - :math:`\sigma` is the scale: the smallest eigenvalue (``"min"``, the
      paper's choice, which stabilises the update by the smallest singular
      value of :math:`J`), the median or the mean (``"rmse"``).

    The aligned gradients :math:`\hat J = B J` are orthogonal with equal norms
    :math:`\sqrt{\sigma}` (:math:`\hat J \hat J^\top = \sigma I` at full rank):
    the condition number of the system is 1, and :math:`d` is their sum.
    Identical gradients :math:`g` give weights 1 (:math:`d = T g`, the sum);
    zero gradients give weights 1.

    Parameters
    ----------
    shared
        The shared parameters: a module or an iterable of tensors.
    scale
        ``"min"`` (default), ``"median"`` or ``"rmse"``.
    task_specific
        ``"weighted"`` (default: heads get :math:`w_t \nabla L_t`, as the
        authors' ``scale_decoder_grad=True``) or ``"plain"`` (their default:
        heads get the gradient of :math:`\sum_t L_t`).
    **kwargs
        Passed to :class:`~mtlweight.Weighting`.

    Raises
    ------
    ValueError
        With an unknown ``scale``, or without shared parameters or representation.
    FloatingPointError
        If a loss or a gradient is NaN or infinite (naming the task).

    Examples
    --------
    >>> import torch, mtlweight as mw
    >>> theta = torch.nn.Parameter(torch.zeros(2))
    >>> losses = [theta @ torch.tensor([1.0, 0.0]), theta @ torch.tensor([0.0, 2.0])]
    >>> aligned = mw.AlignedMTL(shared=[theta])
    >>> aligned.backward(losses)
    {'0': 1.0, '1': 0.5}
    >>> theta.grad
    tensor([1., 1.])
    """

    def __init__(
        self,
        shared: nn.Module | Iterable[Tensor] | None = None,
        *,
        scale: Scale = "min",
        task_specific: TaskSpecific | None = None,
        **kwargs: object,
    ) -> None:
        super().__init__(shared, task_specific=task_specific, **kwargs)
        if scale not in ("min", "median", "rmse"):
            raise ValueError(f"scale must be 'min', 'median' or 'rmse'; found {scale!r}")
        self.scale: Scale = scale

    def gram_weights(self, gram: Tensor, values: Tensor) -> Tensor:
        return torch.from_numpy(aligned_mtl_weights(gram.numpy(), self.scale))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, scale={self.scale!r}"
