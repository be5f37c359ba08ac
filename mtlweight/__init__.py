"""mtlweight: loss weighting for multi-task training in PyTorch.

A drop-in for ``loss.backward()`` with any ``nn.Module`` and any optimizer::

    weighting = mtlweight.GradientBalance(shared=model.head)
    total = weighting({"pixel": l_pixel, "edge": l_edge})
    total.backward()
"""

from mtlweight import autograd
from mtlweight._base import Weighting
from mtlweight._fixed import Fixed
from mtlweight._gradient_balance import GradientBalance
from mtlweight._loss_balance import LossBalance
from mtlweight._registry import available, get, register

__version__ = "0.1.0"

__all__ = [
    "Fixed",
    "GradientBalance",
    "LossBalance",
    "Weighting",
    "__version__",
    "autograd",
    "available",
    "get",
    "register",
]
