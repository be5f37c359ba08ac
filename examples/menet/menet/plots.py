"""Training curves from the per-step CSV log written by :func:`menet.train.train`.

Two PNG figures (matplotlib, non-interactive Agg backend):

- ``loss_curves.png``: each unweighted loss and the weighted total against the
  step, on a log scale, raw (faint) and smoothed with a moving average;
- ``weight_trajectories.png``: each task's weight against the step, smoothed
  over the raw (faint) curve, with the learning-rate drops of a step schedule
  marked (or a cosine schedule's rate drawn on a second axis).

>>> import tempfile, pathlib
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> _ = (d / "log.csv").write_text(
...     "step,epoch,lr,loss_pixel,weight_pixel,total,time\\n1,0,0.001,0.5,1,0.5,0.1\\n")
>>> [p.name for p in plot_training_log(d / "log.csv", d)]
['loss_curves.png', 'weight_trajectories.png']
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["legend_below", "lr_drops", "moving_average", "plot_training_log", "read_log"]


def legend_below(ax: Any, *others: Any) -> Any:
    """One legend for ``ax`` (and its twin axes ``others``), below the plot, never on a curve.

    The legend sits under the x-axis label, in as many columns as fit; save the
    figure with ``bbox_inches="tight"`` so that it is inside the image.
    """
    handles, labels = [], []
    for a in (ax, *others):
        h, lab = a.get_legend_handles_labels()
        handles += h
        labels += lab
    if not handles:
        return None
    return ax.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, -0.16),
                     ncol=min(len(handles), 4), frameon=False, borderaxespad=0.0)


def read_log(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Read a training log CSV into float arrays by column name.

    Raises
    ------
    ValueError
        If the file has no header or a ``step`` column (the message names the file).
    """
    path = Path(path)
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    if not rows or "step" not in rows[0]:
        raise ValueError(f"{path} is not a training log (expected a header with 'step')")
    header, body = rows[0], [r for r in rows[1:] if r]
    cols: dict[str, np.ndarray] = {}
    for j, name in enumerate(header):
        cols[name] = np.array([float(r[j]) for r in body], dtype=np.float64)
    return cols


def moving_average(x: np.ndarray, window: int) -> np.ndarray:
    """Trailing moving average of ``x``, same length (shorter windows at the start).

    .. math:: y_i = \\frac{1}{i - \\max(0, i - w + 1) + 1} \\sum_{j=\\max(0, i-w+1)}^{i} x_j

    >>> moving_average(np.array([1.0, 2.0, 3.0, 4.0]), 2)
    array([1. , 1.5, 2.5, 3.5])
    """
    if window < 1:
        raise ValueError(f"window must be >= 1; found {window}")
    c = np.concatenate([[0.0], np.cumsum(x, dtype=np.float64)])
    idx = np.arange(1, len(x) + 1)
    lo = np.maximum(0, idx - window)
    return np.asarray((c[idx] - c[lo]) / (idx - lo))


def lr_drops(steps: np.ndarray, lr: np.ndarray) -> list[float]:
    """Steps at which a held learning rate falls to half or less: the drops of a step schedule.

    A drop at row ``i`` needs ``lr[i] <= lr[i-1] / 2`` and ``lr[i-1] == lr[i-2]``
    (the rate was constant before it), so a smooth (cosine) decay has none,
    even near its end where consecutive rates differ by large factors.

    >>> lr_drops(np.array([1, 2, 3, 4]), np.array([1e-3, 1e-3, 1e-4, 1e-4]))
    [3.0]
    >>> lr_drops(np.array([1, 2, 3, 4]), np.array([1e-3, 9e-4, 4e-4, 1e-4]))
    []
    """
    if len(lr) < 3:
        return []
    i = np.arange(2, len(lr))
    falls = i[(lr[i] <= 0.5 * lr[i - 1]) & (lr[i - 1] == lr[i - 2])]
    return [float(steps[k]) for k in falls]


def _mark_learning_rate(ax: Any, steps: np.ndarray, lr: np.ndarray | None) -> list[Any]:
    """Mark the drops of a step schedule, or draw a varying (cosine) rate on a twin axis.

    Returns the twin axis in a list (empty without one), for :func:`legend_below`.
    """
    if lr is None or len(lr) < 2:
        return []
    drops = lr_drops(steps, lr)
    for k, step in enumerate(drops):
        ax.axvline(step, color="0.3", linestyle="--", linewidth=1.0,
                   label="learning rate drop" if k == 0 else None)
    if not drops and np.ptp(lr) > 0:
        twin = ax.twinx()
        twin.plot(steps, lr, color="0.4", linestyle=":", linewidth=1.2, label="learning rate")
        twin.set_ylabel("learning rate")
        twin.set_ylim(bottom=0)
        return [twin]
    return []


def plot_training_log(
    log: str | os.PathLike[str], out_dir: str | os.PathLike[str], *, window: int | None = None
) -> list[Path]:
    """Plot loss curves and weight trajectories of a training log as PNG files.

    Parameters
    ----------
    log : path-like
        CSV with columns ``step``, ``loss_<task>``, ``weight_<task>``, ``total``.
    out_dir : path-like
        Where ``loss_curves.png`` and ``weight_trajectories.png`` go.
    window : int, optional
        Moving-average window; default about 2 % of the steps.

    Returns
    -------
    list[Path]
        The two written files.
    """
    import matplotlib  # heavy: imported only when plotting

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = read_log(log)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    steps = cols["step"]
    w = window or max(1, len(steps) // 50)
    tasks = [k[len("loss_") :] for k in cols if k.startswith("loss_")]

    fig, ax = plt.subplots(figsize=(7, 4.5))
    series = [(f"loss_{t}", t) for t in tasks]
    if "total" in cols:
        series.append(("total", "weighted total"))
    for i, (col, label) in enumerate(series):
        y = cols[col]
        color = f"C{i}"
        if w > 1:
            ax.plot(steps, y, color=color, alpha=0.25, linewidth=0.8)
        ax.plot(steps, moving_average(y, w), color=color, label=label, linewidth=1.6)
    if len(steps) and np.all(np.concatenate([cols[c] for c, _ in series]) > 0):
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (unweighted)")
    ax.set_title(f"Training losses (moving average over {w} steps)")
    ax.grid(True, which="both", alpha=0.3)
    legend_below(ax)
    fig.tight_layout()
    losses_png = out / "loss_curves.png"
    fig.savefig(losses_png, dpi=120, bbox_inches="tight")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, t in enumerate(tasks):
        col = f"weight_{t}"
        if col in cols:
            if w > 1:
                ax.plot(steps, cols[col], color=f"C{i}", alpha=0.2, linewidth=0.6)
            ax.plot(steps, moving_average(cols[col], w), color=f"C{i}", label=t, linewidth=1.6)
    twins = _mark_learning_rate(ax, steps, cols.get("lr"))
    ax.set_xlabel("step")
    ax.set_ylabel("weight $w_t$")
    ax.set_title(f"Task weights (moving average over {w} steps; raw per step faint)")
    ax.grid(True, alpha=0.3)
    legend_below(ax, *twins)
    fig.tight_layout()
    weights_png = out / "weight_trajectories.png"
    fig.savefig(weights_png, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return [losses_png, weights_png]
