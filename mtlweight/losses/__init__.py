"""Image losses of MENET (Fan, Chen, Li, "Multi-Task Learning Enhanced Single Image De-Raining").

Each loss is a function doing the work plus a thin :class:`torch.nn.Module` that stores
its options:

- :func:`edge_aware_loss` / :class:`EdgeAwareLoss`: MSE between Sobel responses (eq. 6);
- :func:`texture_matching_loss` / :class:`TextureMatchingLoss`: distance between Gram
  matrices of K x K patches (eq. 7), normalised to the scale of the pixel MSE.

:func:`sobel`, :func:`sobel_kernels` and :func:`gram_matrix` expose the building blocks.
"""

from mtlweight.losses._edge import EdgeAwareLoss, edge_aware_loss, sobel, sobel_kernels
from mtlweight.losses._texture import TextureMatchingLoss, gram_matrix, texture_matching_loss

__all__ = [
    "EdgeAwareLoss",
    "TextureMatchingLoss",
    "edge_aware_loss",
    "gram_matrix",
    "sobel",
    "sobel_kernels",
    "texture_matching_loss",
]
