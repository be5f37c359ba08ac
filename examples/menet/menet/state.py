"""The checkpointable state of a training run: :class:`TrainingState`.

One object holds everything a resumed run needs: the model, optimizer,
scheduler, weighting and AMP scaler, every global RNG state, the step and epoch
counters, the wall time so far, the skipped steps and the config. Its
:meth:`TrainingState.state_dict` is the checkpoint written to ``<out>/last.ckpt``
(tensors and plain values only, see :mod:`menet.checkpoint`), with the keys of
the first release plus ``epoch_step`` (optimizer steps already taken in the
current epoch: non-zero only for a checkpoint written when training was
interrupted in the middle of an epoch; absent, hence 0, in older checkpoints).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

import mtlweight as mw

from .checkpoint import capture_rng_state, restore_rng_state, save_checkpoint
from .config import TrainConfig
from .distributed import on_rank0

__all__ = ["TrainingState"]


@dataclass
class TrainingState:
    """Model, optimisation state and counters of a run; saved and restored as one checkpoint.

    Attributes
    ----------
    step : int
        Optimizer steps taken (skipped ones included).
    epoch : int
        Completed epochs.
    epoch_step : int
        Steps taken in the current (incomplete) epoch.
    skipped : list of int
        Steps skipped because a loss was not finite.
    started : float
        ``time.perf_counter()`` at the (virtual) start of the run, so that
        :attr:`elapsed` continues across resumes.
    """

    net: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    weighting: mw.Weighting
    scaler: torch.amp.GradScaler | None
    config: TrainConfig
    total_steps: int
    world_size: int = 1
    step: int = 0
    epoch: int = 0
    epoch_step: int = 0
    skipped: list[int] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)

    @property
    def elapsed(self) -> float:
        """Training seconds so far, over every resume."""
        return time.perf_counter() - self.started

    @property
    def done(self) -> bool:
        """True once every step of the run has been taken."""
        return self.step >= self.total_steps

    def advance(self) -> None:
        """Count one optimizer step."""
        self.step += 1
        self.epoch_step += 1

    def end_epoch(self) -> None:
        """Count a completed epoch (or the end of training in the middle of one)."""
        self.epoch += 1
        self.epoch_step = 0

    def state_dict(self) -> dict[str, Any]:
        """The checkpoint: tensors and plain values only."""
        return {
            "model": self.net.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "weighting": self.weighting.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else {},
            "rng": capture_rng_state(),
            "step": self.step,
            "epoch": self.epoch,
            "epoch_step": self.epoch_step,
            "total_steps": self.total_steps,
            "elapsed": self.elapsed,
            "config": self.config.to_dict(),
            "skipped_steps": list(self.skipped),
            "world_size": self.world_size,
        }

    def load_state_dict(self, ckpt: Mapping[str, Any]) -> None:
        """Restore everything but the model (loaded before any DDP wrapping) from ``ckpt``."""
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.weighting.load_state_dict(ckpt["weighting"])
        if self.scaler is not None and ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        restore_rng_state(ckpt["rng"])
        self.step, self.epoch = int(ckpt["step"]), int(ckpt["epoch"])
        self.epoch_step = int(ckpt.get("epoch_step", 0))
        self.started = time.perf_counter() - float(ckpt["elapsed"])
        self.skipped = [int(k) for k in ckpt.get("skipped_steps", [])]

    def save(self, path: Path) -> None:
        """Write :meth:`state_dict` atomically to ``path`` on rank 0 (every rank waits)."""
        state = self.state_dict()
        on_rank0(lambda: save_checkpoint(path, state), f"writing checkpoint {path}")
