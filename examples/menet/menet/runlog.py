"""The per-step training log, ``<out>/log.csv``, and its continuation after a resume.

Columns: ``step, epoch, lr``, then ``loss_<task>`` and ``weight_<task>`` for each
task, ``total`` (the weighted sum) and ``time`` (seconds since the run began),
plus ``skipped`` when steps with non-finite losses are skipped.
:func:`menet.plots.plot_training_log` draws it.

>>> import tempfile, pathlib
>>> from menet.step import StepResult
>>> p = pathlib.Path(tempfile.mkdtemp()) / "log.csv"
>>> log = CsvLog(p, ["pixel"], resume_step=None)
>>> log.write(1, 0, 1e-3, StepResult({"pixel": 0.5}, {"pixel": 1.0}, 0.5), 0.25); log.close()
>>> p.read_text().splitlines()
['step,epoch,lr,loss_pixel,weight_pixel,total,time', '1,0,0.001,0.5,1,0.5,0.250']
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

from .step import StepResult

__all__ = ["CsvLog"]


class CsvLog:
    """Per-step CSV log; on resume, rows after the checkpoint's step are dropped.

    With ``skipped=True`` a last column ``skipped`` counts the steps skipped so
    far (non-finite losses); a skipped step itself gets no row, so the log
    stays plottable. Rows kept from before a resume are matched by column name.
    """

    def __init__(
        self, path: Path, losses: Sequence[str], resume_step: int | None, skipped: bool = False
    ) -> None:
        self.path = path
        self.columns = (
            ["step", "epoch", "lr"]
            + [f"loss_{n}" for n in losses]
            + [f"weight_{n}" for n in losses]
            + ["total", "time"]
            + (["skipped"] if skipped else [])
        )
        kept: list[list[str]] = []
        if resume_step is not None and path.is_file():
            with path.open(newline="") as f:
                rows = list(csv.reader(f))
            if rows and set(rows[0]) - {"skipped"} == set(self.columns) - {"skipped"}:
                index = {name: j for j, name in enumerate(rows[0])}
                kept = [
                    [r[index[c]] if c in index else "0" for c in self.columns]
                    for r in rows[1:]
                    if r and int(r[0]) <= resume_step
                ]
        self._file = path.open("w", newline="")
        self._writer = csv.writer(self._file)
        self._writer.writerow(self.columns)
        self._writer.writerows(kept)
        self._file.flush()

    def write(
        self, step: int, epoch: int, lr: float, r: StepResult, seconds: float, skipped: int = 0
    ) -> None:
        names = list(r.losses)
        self._writer.writerow(
            [step, epoch, f"{lr:.6g}"]
            + [f"{r.losses[n]:.6g}" for n in names]
            + [f"{r.weights.get(n, float('nan')):.6g}" for n in names]
            + [f"{r.total:.6g}", f"{seconds:.3f}"]
            + ([str(skipped)] if self.columns[-1] == "skipped" else [])
        )

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()
