"""mtlweight: loss weighting for multi-task training in PyTorch.

A drop-in for ``loss.backward()`` with any ``nn.Module`` and any optimizer::

    weighting = mtlweight.GradientBalance(shared=model.head)
    total = weighting({"pixel": l_pixel, "edge": l_edge})
    total.backward()

The strategies come in two wings: :mod:`mtlweight.loss_level` (weights from
the loss values) and :mod:`mtlweight.gradient_level` (combinations of the
per-task gradients of shared inputs); both are re-exported here.
"""

from mtlweight import autograd, functional, gradient_level, loss_level, losses
from mtlweight._base import Weighting
from mtlweight._engine.instance import InstanceGram
from mtlweight._registry import available, get, register
from mtlweight.gradient_level import *  # noqa: F403
from mtlweight.gradient_level import GradientMethod
from mtlweight.loss_level import *  # noqa: F403

__version__ = "0.1.0"

#: The former name of :class:`GradientMethod` (kept as an alias).
GradientAggregator = GradientMethod

__all__ = [
    "GradientAggregator",
    "InstanceGram",
    "Weighting",
    "__version__",
    "autograd",
    "available",
    "functional",
    "get",
    "gradient_level",
    "loss_level",
    "losses",
    "register",
    *loss_level.__all__,
    *gradient_level.__all__,
]
