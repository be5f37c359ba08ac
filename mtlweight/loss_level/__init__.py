"""Loss-level strategies: weights from the loss values (and learned parameters)."""

from __future__ import annotations

from mtlweight.loss_level._dwa import DynamicWeightAverage
from mtlweight.loss_level._equal import EqualWeight
from mtlweight.loss_level._famo import FAMO
from mtlweight.loss_level._fixed import Fixed
from mtlweight.loss_level._geometric import GeometricMean
from mtlweight.loss_level._gradnorm import GradNorm
from mtlweight.loss_level._imtl_l import IMTLL
from mtlweight.loss_level._loss_balance import LossBalance
from mtlweight.loss_level._rlw import RandomLossWeighting
from mtlweight.loss_level._stch import STCH
from mtlweight.loss_level._uncertainty import UncertaintyWeighting

__all__ = [
    "FAMO",
    "IMTLL",
    "STCH",
    "DynamicWeightAverage",
    "EqualWeight",
    "Fixed",
    "GeometricMean",
    "GradNorm",
    "LossBalance",
    "RandomLossWeighting",
    "UncertaintyWeighting",
]
