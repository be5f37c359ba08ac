"""Registration and re-export of the gradient-level methods (issue 6).

They combine the per-task gradients of the shared parameters; see
:class:`~mtlweight.GradientAggregator` for how ``backward`` and ``__call__``
relate for them.
"""

from __future__ import annotations

from mtlweight._aggregator import GradientAggregator
from mtlweight._aligned_mtl import AlignedMTL
from mtlweight._cagrad import CAGrad
from mtlweight._imtl_g import IMTLG
from mtlweight._mgda import MGDA, MGDAUB
from mtlweight._nash_mtl import NashMTL
from mtlweight._pcgrad import PCGrad
from mtlweight._registry import register

__all__ = [
    "IMTLG",
    "MGDA",
    "MGDAUB",
    "AlignedMTL",
    "CAGrad",
    "GradientAggregator",
    "NashMTL",
    "PCGrad",
]

register("pcgrad", PCGrad, "pc_grad")
register("mgda", MGDA)
register("mgda_ub", MGDAUB, "mgdaub")
register("cagrad", CAGrad, "ca_grad")
register("imtl_g", IMTLG, "imtlg")
register("nash_mtl", NashMTL, "nash", "nashmtl")
register("aligned_mtl", AlignedMTL, "alignedmtl", "aligned")
