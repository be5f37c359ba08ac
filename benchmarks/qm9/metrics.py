r"""MAE per task, the relative drop :math:`\Delta_m` and the mean rank.

.. math::

    \Delta_m = \frac{100}{T} \sum_{t=1}^{T} \frac{M_t - M_t^{\mathrm{STL}}}{M_t^{\mathrm{STL}}}
    \quad (\%), \qquad
    \mathrm{MR} = \frac{1}{T} \sum_{t=1}^{T} \operatorname{rank}_t

where :math:`M_t` is the test MAE of task :math:`t` (lower is better for every
QM9 target, so the papers' sign :math:`(-1)^{\delta_t}` is :math:`+1`),
:math:`M^{\mathrm{STL}}_t` that of the single-task model, and
:math:`\operatorname{rank}_t` the rank (1 = best, ties averaged) of a method's
:math:`M_t` among the methods compared.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

__all__ = ["PAPER_STL", "delta_m", "display_scale", "mean_ranks"]

#: The single-task test MAEs of the Nash-MTL paper's code (``BASE``), in its
#: display units (meV for the energies homo, lumo, zpve, U0, U, H, G).
PAPER_STL: dict[str, float] = {
    "mu": 0.0671, "alpha": 0.1814, "homo": 60.576, "lumo": 53.915, "r2": 0.5027,
    "zpve": 4.539, "U0_atom": 58.838, "U_atom": 64.244, "H_atom": 63.852,
    "G_atom": 66.223, "cv": 0.07212,
}  # fmt: skip


def display_scale(unit: str) -> tuple[float, str]:
    """The factor and unit the papers print a target in: eV as meV, the rest unchanged."""
    return (1000.0, "meV") if unit == "eV" else (1.0, unit)


def delta_m(mae: Sequence[float], reference: Sequence[float]) -> float:
    """:math:`\\Delta_m` in percent (lower is better) of ``mae`` against ``reference``.

    >>> round(delta_m([2.0, 1.0], [1.0, 1.0]), 6)
    50.0
    """
    a, b = np.asarray(mae, dtype=float), np.asarray(reference, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"mae {a.shape} and reference {b.shape} must be equal-length vectors")
    if not (b > 0).all():
        raise ValueError("reference MAEs must be positive")
    return float(((a - b) / b).mean() * 100.0)


def mean_ranks(mae: Mapping[str, Sequence[float]]) -> dict[str, float]:
    """Each method's rank per task (1 = lowest MAE, ties averaged), averaged over tasks.

    >>> mean_ranks({"a": [1.0, 3.0], "b": [2.0, 2.0], "c": [3.0, 1.0]})
    {'a': 2.0, 'b': 2.0, 'c': 2.0}
    """
    names = list(mae)
    table = np.asarray([mae[n] for n in names], dtype=float)  # (methods, tasks)
    ranks = np.zeros_like(table)
    for t in range(table.shape[1]):
        column = table[:, t]
        for i, value in enumerate(column):
            ranks[i, t] = 1 + (column < value).sum() + 0.5 * ((column == value).sum() - 1)
    return {n: float(r) for n, r in zip(names, ranks.mean(axis=1), strict=True)}
