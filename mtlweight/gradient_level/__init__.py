"""Gradient-level methods: they combine the per-task gradients ``J`` (T x P) of shared inputs.

Every method derives from :class:`GradientMethod` (``combine(jac, gram, values)``);
those whose weights are a function of the Gram matrix alone from
:class:`GramWeighting` (``gram_weights(gram, values)``).
"""

from __future__ import annotations

from mtlweight._engine.plans import Combination
from mtlweight.gradient_level._aligned_mtl import AlignedMTL
from mtlweight.gradient_level._base import GradientMethod, GramWeighting
from mtlweight.gradient_level._cagrad import CAGrad
from mtlweight.gradient_level._config import ConFIG
from mtlweight.gradient_level._db_mtl import DBMTL
from mtlweight.gradient_level._dualproj import DualProj
from mtlweight.gradient_level._excess_mtl import ExcessMTL
from mtlweight.gradient_level._fairgrad import FairGrad
from mtlweight.gradient_level._graddrop import GradDrop
from mtlweight.gradient_level._gradient_balance import GradientBalance
from mtlweight.gradient_level._gradvac import GradVac
from mtlweight.gradient_level._imtl_g import IMTLG
from mtlweight.gradient_level._mgda import MGDA, MGDAUB
from mtlweight.gradient_level._moco import MoCo
from mtlweight.gradient_level._modo import MoDo
from mtlweight.gradient_level._nash_mtl import NashMTL
from mtlweight.gradient_level._pcgrad import PCGrad
from mtlweight.gradient_level._sdmgrad import SDMGrad
from mtlweight.gradient_level._upgrad import UPGrad

__all__ = [
    "DBMTL",
    "IMTLG",
    "MGDA",
    "MGDAUB",
    "AlignedMTL",
    "CAGrad",
    "Combination",
    "ConFIG",
    "DualProj",
    "ExcessMTL",
    "FairGrad",
    "GradDrop",
    "GradVac",
    "GradientBalance",
    "GradientMethod",
    "GramWeighting",
    "MoCo",
    "MoDo",
    "NashMTL",
    "PCGrad",
    "SDMGrad",
    "UPGrad",
]
