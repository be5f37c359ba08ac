"""Functional forms of the :mod:`mtlweight.losses` modules, in the style of
:mod:`torch.nn.functional`.

>>> import torch
>>> import mtlweight.functional as MF
>>> x = torch.rand(2, 3, 8, 8)
>>> float(MF.edge_aware_loss(x, x)), float(MF.texture_matching_loss(x, x))
(0.0, 0.0)
"""

from mtlweight.losses._edge import edge_aware_loss
from mtlweight.losses._texture import texture_matching_loss

__all__ = ["edge_aware_loss", "texture_matching_loss"]
