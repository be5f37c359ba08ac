"""Registration and re-export of the loss-level strategies of issue 6.

Each strategy lives in its own private module; this one gathers them for
``mtlweight.__init__`` and registers their short names with
:func:`mtlweight.register`.
"""

from __future__ import annotations

from mtlweight._dwa import DynamicWeightAverage
from mtlweight._equal import EqualWeight
from mtlweight._geometric import GeometricMean
from mtlweight._gradnorm import GradNorm
from mtlweight._imtl_l import IMTLL
from mtlweight._registry import register
from mtlweight._rlw import RandomLossWeighting
from mtlweight._uncertainty import UncertaintyWeighting

__all__ = [
    "IMTLL",
    "DynamicWeightAverage",
    "EqualWeight",
    "GeometricMean",
    "GradNorm",
    "RandomLossWeighting",
    "UncertaintyWeighting",
]

register("equal", EqualWeight, "ew", "equal_weight")
register("uncertainty", UncertaintyWeighting, "uw", "uncertainty_weighting")
register("dwa", DynamicWeightAverage, "dynamic_weight_average")
register("rlw", RandomLossWeighting, "random", "random_loss_weighting")
register("gls", GeometricMean, "geometric", "geometric_mean")
register("gradnorm", GradNorm, "grad_norm")
register("imtl_l", IMTLL, "imtll")
