"""The list of runs of a table and the driver that runs the unfinished ones in order."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from .data import Graphs
from .protocol import RunConfig, preset
from .train import atomic_write_json, run

__all__ = ["LR_SWEEP", "SHARED_ROWS", "STRATEGIES", "plan", "sweep"]

#: The strategies of issue 28, by mtlweight name ("equal" is LS, "gls" the
#: scale-invariant geometric mean), in the order they run.
STRATEGIES: tuple[str, ...] = (
    "equal", "gls", "uncertainty", "dwa", "rlw", "gb", "lb", "gradnorm", "mgda", "pcgrad",
    "cagrad", "imtl_g", "nash_mtl", "aligned_mtl", "famo", "upgrad", "fairgrad", "db_mtl", "stch",
)  # fmt: skip
#: Strategies that cannot take a representation (per-coordinate state of the
#: shared parameters): at CPU scale they take the last shared layer instead.
NO_REPRESENTATION: tuple[str, ...] = ("db_mtl",)
#: Learning rates of the LS sweep besides the preset's.
LR_SWEEP: tuple[float, ...] = (3e-4, 3e-3)
#: Gradient-level rows repeated with the gradients on the shared parameters (CPU preset).
SHARED_ROWS: tuple[str, ...] = ("pcgrad", "mgda", "imtl_g", "nash_mtl")


def plan(
    protocol: str,
    *,
    seeds: Iterable[int] = (0, 1, 2),
    stl_seeds: Iterable[int] | None = None,
    methods: Iterable[str] = STRATEGIES,
    lrs: Iterable[float] = LR_SWEEP,
    shared_rows: Iterable[str] = SHARED_ROWS,
    **overrides: Any,
) -> list[RunConfig]:
    """Every run of the table, in the order to run them.

    Seed 0 of everything first (LS, the single-task models, the LS learning
    rates, the strategies), then the other seeds of LS, its learning rates and
    the strategies, then the rows on shared parameters (first seed; CPU
    preset only), then the other seeds of the single-task models.
    """
    seeds = list(seeds)
    stl_seeds = list(seeds if stl_seeds is None else stl_seeds)
    methods, lrs = list(methods), list(lrs)
    base = preset(protocol, **overrides)
    runs: list[RunConfig] = []

    def add(**changes: Any) -> None:
        config = preset(protocol, **{**overrides, **changes})
        if config not in runs:
            runs.append(config)

    for i, seed in enumerate(seeds):
        if "equal" in methods:
            add(method="equal", seed=seed)
        if i == 0:
            for task in base.task_names:
                add(method="stl", task=task, seed=stl_seeds[0] if stl_seeds else seed)
        for lr in lrs:
            add(method="equal", seed=seed, lr=lr)
        for method in methods:
            if method in NO_REPRESENTATION and base.gradients == "representation":
                add(method=method, seed=seed, gradients="last")
            else:
                add(method=method, seed=seed)
    if base.gradients == "representation" and seeds:
        for method in shared_rows:
            add(method=method, seed=seeds[0], gradients="shared")
    for seed in stl_seeds[1:]:
        for task in base.task_names:
            add(method="stl", task=task, seed=seed)
    return runs


def _finished(path: Path, config: RunConfig) -> bool:
    if not path.exists():
        return False
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        return bool(saved.get("finished")) and RunConfig.from_json(saved["config"]) == config
    except (ValueError, KeyError, TypeError):
        return False


def _git_commit(path: Path, message: str, log: Callable[[str], None]) -> None:
    """Commit ``path`` alone (``git commit -- path``), retrying while another commit runs."""
    repo = path.resolve().parent
    for _ in range(12):
        add = subprocess.run(
            ["git", "add", "--", str(path)], cwd=repo, capture_output=True, text=True
        )
        if add.returncode == 0:
            commit = subprocess.run(
                ["git", "commit", "-q", "-m", message, "--", str(path)],
                cwd=repo,
                capture_output=True,
                text=True,
            )
            if commit.returncode == 0:
                return
            text = commit.stderr + commit.stdout
        else:
            text = add.stderr
        if "index.lock" not in text:
            log(f"git commit of {path} failed: {text.strip()}")
            return
        time.sleep(5)
    log(f"git commit of {path} gave up: the index stayed locked")


def sweep(
    runs: list[RunConfig],
    graphs: Graphs,
    *,
    runs_dir: Path,
    results_dir: Path,
    log: Callable[[str], None] = print,
    commit: bool = False,
    device: str = "cpu",
) -> list[Path]:
    """Run every unfinished run of ``runs`` in order; return the results files written.

    A run is finished when ``results_dir/<name>.json`` holds its configuration
    with ``finished: true``; an interrupted one resumes from its checkpoint in
    ``runs_dir/<name>/``. ``commit=True`` commits each new results file (alone).
    """
    written = []
    for k, config in enumerate(runs):
        path = results_dir / f"{config.name}.json"
        if _finished(path, config):
            continue
        log(f"[{k + 1}/{len(runs)}] {config.name}")
        result = run(config, graphs, runs_dir / config.name, log=log, device=device)
        atomic_write_json(path, result)
        written.append(path)
        if commit:
            _git_commit(path, f"qm9 {config.protocol}: {config.name} finished", log)
    return written
