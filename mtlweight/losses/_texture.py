"""Texture matching loss of MENET: distance between Gram matrices of image patches."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from mtlweight.losses._checks import (
    check_image,
    check_image_pair,
    check_reduction,
    compute_dtype,
    full_precision,
    reduce,
)


def _check_patch_size(patch_size: object, loss: str) -> int:
    if isinstance(patch_size, bool) or not isinstance(patch_size, int):
        raise TypeError(f"{loss}: `patch_size` must be an int, found {type(patch_size).__name__}")
    if patch_size <= 0:
        raise ValueError(f"{loss}: `patch_size` must be a positive int, found {patch_size}")
    return patch_size


def _check_tiling(x: Tensor, patch_size: int, loss: str) -> None:
    height, width = x.shape[-2:]
    if height % patch_size or width % patch_size or height == 0 or width == 0:
        raise ValueError(
            f"{loss}: an image of size (H, W) = ({height}, {width}) cannot be tiled by "
            f"non-overlapping {patch_size}x{patch_size} patches (K = {patch_size}); "
            f"H and W must be positive multiples of K (crop or pad the images)"
        )


def _gram(x: Tensor, patch_size: int) -> Tensor:
    """Unchecked patch Gram matrices, (B, CK², CK²), float32 for half precision, autocast off."""
    with full_precision(x.device):
        patches = F.unfold(x.to(compute_dtype(x.dtype)), patch_size, stride=patch_size)
        return patches @ patches.transpose(1, 2) / patches.shape[-1]  # (B, CK², M) -> / M


def gram_matrix(x: Tensor, patch_size: int = 4) -> Tensor:
    r"""Gram matrix of the non-overlapping ``patch_size`` x ``patch_size`` patches of each image.

    .. math::

        G(x) = \frac{1}{M} P(x) P(x)^\top \in \mathbb{R}^{CK^2 \times CK^2}

    where :math:`P(x) \in \mathbb{R}^{CK^2 \times M}` has one column per patch, the
    :math:`M = HW/K^2` patches of size :math:`K \times K` over all :math:`C` channels
    (rows in channel, patch-row, patch-column order, as :func:`torch.nn.functional.unfold`).
    :math:`G` is the average of :math:`p p^\top` over the patches :math:`p`.

    Parameters
    ----------
    x : Tensor
        Images of shape (B, C, H, W); H and W multiples of ``patch_size``.
    patch_size : int
        :math:`K`.

    Returns
    -------
    Tensor
        Shape (B, CK², CK²), symmetric, in the dtype of ``x`` (half precision is
        computed in float32 and cast back; autocast is off inside).

    Examples
    --------
    >>> import torch
    >>> gram_matrix(torch.ones(2, 3, 8, 8), patch_size=4).shape
    torch.Size([2, 48, 48])
    """
    x = check_image(x, name="x", loss="gram_matrix")
    k = _check_patch_size(patch_size, "gram_matrix")
    _check_tiling(x, k, "gram_matrix")
    return _gram(x, k).to(x.dtype)


def texture_matching_loss(
    pred: Tensor,
    target: Tensor,
    patch_size: int = 4,
    reduction: str = "mean",
    *,
    normalize: bool = True,
) -> Tensor:
    r"""Texture matching loss :math:`L_t` of MENET (eqs. 7-8), normalised.

    For each image :math:`b`,

    .. math::

        L_t(\hat y_b, y_b) = \frac{1}{(CK^2)^2}
            \bigl\lVert G(\hat y_b) - G(y_b) \bigr\rVert_F^2,
        \qquad G(x) = \frac{1}{M} P(x) P(x)^\top

    where:

    - :math:`\hat y` is ``pred`` and :math:`y` is ``target``, both (B, C, H, W);
    - :math:`K` is ``patch_size`` and :math:`M = HW/K^2` the number of patches;
    - :math:`P(x) \in \mathbb{R}^{CK^2 \times M}` holds the non-overlapping
      :math:`K \times K` patches as columns and :math:`G` is :func:`gram_matrix`;
    - :math:`\lVert\cdot\rVert_F` is the Frobenius norm.

    With ``normalize=False`` the factor :math:`1/(CK^2)^2` is left out: the loss is
    the *sum* of the squared differences of the Gram entries,
    :math:`\lVert G(\hat y_b) - G(y_b) \rVert_F^2`, :math:`(CK^2)^2` times larger
    (2304 for RGB and :math:`K = 4`). The scale of a loss changes what the
    gradient-balanced weighting does (its weights depend on the gradient norms),
    which is why MENET's recipes name the choice.

    The paper writes :math:`\lVert G(P(y)) - G(P(\hat y)) \rVert^2` with :math:`G = PP^\top`,
    which is :math:`(CK^2 M)^2 L_t` (about :math:`2.3 \cdot 10^{10} L_t` on 224 x 224 RGB
    crops with :math:`K = 4`). The two constants keep it on the scale of the pixel MSE:
    :math:`1/M` makes :math:`G` a per-patch average, independent of the image size, and
    :math:`1/(CK^2)^2` turns the squared norm into a mean over Gram entries. For images
    in [0, 1] every entry of :math:`G` lies in [0, 1], so :math:`L_t` does too; it scales
    as :math:`s^4` with the intensity range (:math:`\times 255^4` at 0..255).

    .. note::
        The authors' released code departs from eq. 7: it sums the 48x48 Gram over
        the patches and averages it to one scalar per image, with a scale of about
        5e8 at 0..255 (``REFERENCE-FACTS.md``). This implements the paper.

    Parameters
    ----------
    pred, target : Tensor
        Images of shape (B, C, H, W), same shape, dtype and device; H and W multiples of K.
    patch_size : int
        :math:`K`, 4 in the paper.
    reduction : {'mean', 'sum', 'none'}
        Over the batch: ``'none'`` gives the per-image losses, shape (B,).
    normalize : bool
        Divide by the number of Gram entries :math:`(CK^2)^2` (default), or not.

    Returns
    -------
    Tensor
        In the dtype of ``pred``. float16/bfloat16 inputs are computed in float32 and
        cast back; autocast is off inside, as for torch's own losses.

    Raises
    ------
    TypeError
        If an input is not a floating-point tensor, the dtypes differ or ``patch_size`` is no int.
    ValueError
        On a shape or device mismatch, a non-4-D input, ``patch_size <= 0``, an (H, W) that
        K x K patches cannot tile, or a bad ``reduction``.

    Examples
    --------
    >>> import torch
    >>> # Every Gram entry of an all-ones image is 1, of an all-zeros image 0.
    >>> texture_matching_loss(torch.zeros(1, 3, 8, 8), torch.ones(1, 3, 8, 8))
    tensor(1.)
    >>> texture_matching_loss(torch.zeros(1, 3, 8, 8), torch.ones(1, 3, 8, 8), normalize=False)
    tensor(2304.)
    """
    if not isinstance(normalize, bool):
        raise TypeError(
            f"texture_matching_loss: `normalize` must be a bool, found {type(normalize).__name__}"
        )
    pred, target = check_image_pair(pred, target, loss="texture_matching_loss")
    k = _check_patch_size(patch_size, "texture_matching_loss")
    red = check_reduction(reduction, loss="texture_matching_loss")
    _check_tiling(pred, k, "texture_matching_loss")
    with full_precision(pred.device):
        squared = (_gram(pred, k) - _gram(target, k)).square()
        per_image = squared.mean(dim=(1, 2)) if normalize else squared.sum(dim=(1, 2))
        return reduce(per_image, red).to(pred.dtype)


class TextureMatchingLoss(nn.Module):
    r"""Module form of :func:`texture_matching_loss`; see it for the formula and shapes.

    It has no parameters and no buffers.

    Parameters
    ----------
    patch_size : int
        :math:`K`, 4 in the paper.
    reduction : {'mean', 'sum', 'none'}
        As in :func:`texture_matching_loss`.
    normalize : bool
        As in :func:`texture_matching_loss`.

    Examples
    --------
    >>> import torch
    >>> loss = TextureMatchingLoss(patch_size=2, reduction="none")
    >>> loss(torch.ones(2, 1, 4, 4), torch.ones(2, 1, 4, 4))
    tensor([0., 0.])
    """

    def __init__(
        self, patch_size: int = 4, reduction: str = "mean", *, normalize: bool = True
    ) -> None:
        super().__init__()
        self.patch_size = _check_patch_size(patch_size, "TextureMatchingLoss")
        self.reduction = check_reduction(reduction, loss="TextureMatchingLoss")
        if not isinstance(normalize, bool):
            raise TypeError(
                f"TextureMatchingLoss: `normalize` must be a bool, found {type(normalize).__name__}"
            )
        self.normalize = normalize

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        return texture_matching_loss(
            pred, target, self.patch_size, self.reduction, normalize=self.normalize
        )

    def extra_repr(self) -> str:
        extra = "" if self.normalize else ", normalize=False"
        return f"patch_size={self.patch_size}, reduction={self.reduction!r}{extra}"
