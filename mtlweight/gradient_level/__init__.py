"""Gradient-level methods: they combine the per-task gradients ``J`` (T x P) of shared inputs.

Every method derives from :class:`GradientMethod` (``combine(jac, gram, values)``);
those whose weights are a function of the Gram matrix alone from
:class:`GramWeighting` (``gram_weights(gram, values)``).
"""

from __future__ import annotations

from mtlweight._aligned_mtl import AlignedMTL
from mtlweight._cagrad import CAGrad
from mtlweight._gradient_balance import GradientBalance
from mtlweight._imtl_g import IMTLG
from mtlweight._mgda import MGDA, MGDAUB
from mtlweight._nash_mtl import NashMTL
from mtlweight._pcgrad import PCGrad
from mtlweight.gradient_level._base import Combination, GradientMethod, GramWeighting

__all__ = [
    "IMTLG",
    "MGDA",
    "MGDAUB",
    "AlignedMTL",
    "CAGrad",
    "Combination",
    "GradientBalance",
    "GradientMethod",
    "GramWeighting",
    "NashMTL",
    "PCGrad",
]
