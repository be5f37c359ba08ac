"""Loss-level strategies: weights from the loss values (and learned parameters)."""

from __future__ import annotations

from mtlweight._dwa import DynamicWeightAverage
from mtlweight._equal import EqualWeight
from mtlweight._fixed import Fixed
from mtlweight._geometric import GeometricMean
from mtlweight._gradnorm import GradNorm
from mtlweight._imtl_l import IMTLL
from mtlweight._loss_balance import LossBalance
from mtlweight._rlw import RandomLossWeighting
from mtlweight._uncertainty import UncertaintyWeighting

__all__ = [
    "IMTLL",
    "DynamicWeightAverage",
    "EqualWeight",
    "Fixed",
    "GeometricMean",
    "GradNorm",
    "LossBalance",
    "RandomLossWeighting",
    "UncertaintyWeighting",
]
