"""mtlweight: loss weighting for multi-task training in PyTorch.

A drop-in for ``loss.backward()`` with any ``nn.Module`` and any optimizer::

    weighting = mtlweight.GradientBalance(shared=model.head)
    total = weighting({"pixel": l_pixel, "edge": l_edge})
    total.backward()
"""

from mtlweight import _gradient_methods, _loss_methods, autograd, functional, losses
from mtlweight._base import Weighting
from mtlweight._fixed import Fixed
from mtlweight._gradient_balance import GradientBalance
from mtlweight._gradient_methods import *  # noqa: F403  (the gradient-level methods of issue 6)
from mtlweight._loss_balance import LossBalance
from mtlweight._loss_methods import *  # noqa: F403  (the loss-level strategies of issue 6)
from mtlweight._registry import available, get, register

__version__ = "0.1.0"

__all__ = [
    "Fixed",
    "GradientBalance",
    "LossBalance",
    "Weighting",
    "__version__",
    "autograd",
    "functional",
    "losses",
    "available",
    "get",
    "register",
    *_loss_methods.__all__,
    *_gradient_methods.__all__,
]
