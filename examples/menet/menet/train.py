"""Train MENET with any :mod:`mtlweight` strategy: :func:`train` over a :class:`TrainConfig`.

The loop is short because its pieces live elsewhere: the config and its
recipes (:mod:`menet.config`), the builders of model, losses, weighting, data and
optimizer (:mod:`menet.building`, assembled by :func:`menet.session.open_session`),
the order of the patches (:mod:`menet.sampling`), one step
(:func:`menet.step.train_step`), the CSV log (:mod:`menet.runlog`) and the
checkpointable state (:class:`menet.state.TrainingState`).

The paper's recipe (``REFERENCE-FACTS.md``): Adam (β = 0.9, 0.999, ε = 1e-8),
learning rate 1e-3 divided by 10 once, at 40 % of training, batches of 20
patches, ten 224 x 224 crops per image; :data:`menet.config.RECIPES` also names a
faster one for CPU budgets.

Reproducibility: the model is initialised from ``seed``; the order of the
patches in epoch ``e`` is a permutation drawn from ``(seed, e)``, and the
DataLoader's worker seeds come from ``(seed, e)`` too, so a resumed run replays
exactly the batches of an uninterrupted run. A checkpoint is written atomically
after every epoch, and when Ctrl-C stops the run (after the step in progress).

>>> cfg = TrainConfig(synthetic="light", steps=1, patch_size=32, batch_size=2)
>>> cfg.variant, cfg.weighting, cfg.losses
('shallow-ca', 'gb', ('pixel', 'edge', 'texture'))
"""

from __future__ import annotations

import json
import math
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from mtlweight.distributed import is_distributed

from .building import build_dataset, build_losses, build_weighting, resolve_device
from .checkpoint import export_weights, load_checkpoint, remove_stale_temporaries
from .config import LOSS_NAMES, TrainConfig, check_resume
from .distributed import DistContext, barrier, on_rank0
from .distributed import cleanup as dist_cleanup
from .distributed import setup as dist_setup
from .outputs import ensure_out_dir
from .plots import plot_training_log
from .runlog import CsvLog
from .session import Session, open_session
from .state import TrainingState
from .step import StepResult, mean_over_ranks, postfix, train_step

__all__ = [
    "LOSS_NAMES",
    "StepResult",
    "TrainConfig",
    "TrainResult",
    "build_dataset",
    "build_losses",
    "build_weighting",
    "resolve_device",
    "train",
    "train_step",
]


@dataclass
class TrainResult:
    """Outcome of :func:`train`.

    ``interrupted`` is true when training stopped on Ctrl-C; the last complete
    checkpoint is then ``checkpoint`` (holding step ``checkpoint_step``), or
    ``None`` if none was written. ``seconds`` is the run's wall time over all
    sittings, ``sitting_seconds`` this call's; a resumed run started at step
    ``resumed_from``, and ``already_finished`` says it had nothing left to train.
    """

    model: nn.Module
    out: Path
    step: int
    epoch: int
    total_steps: int
    last: StepResult | None
    checkpoint: Path | None
    weights_file: Path | None
    log: Path
    plots: list[Path]
    interrupted: bool = False
    seconds: float = 0.0
    skipped_steps: list[int] = field(default_factory=list)
    checkpoint_step: int | None = None
    resumed_from: int | None = None
    sitting_seconds: float = 0.0
    already_finished: bool = False


def train(
    config: TrainConfig, *, on_epoch_end: Callable[[int, int], None] | None = None
) -> TrainResult:
    """Train MENET as configured; checkpoint every epoch; export the weights.

    Parameters
    ----------
    config : TrainConfig
        The run. With ``config.resume`` the run continues from
        ``<out>/last.ckpt`` (the settings must match the stored ones).
    on_epoch_end : callable, optional
        Called as ``on_epoch_end(epoch, step)`` after each checkpoint (used
        by tests to simulate crashes).

    Returns
    -------
    TrainResult
        The trained model (eval mode), paths of the outputs, and whether the
        run was interrupted. The first Ctrl-C (SIGINT) lets the step in progress
        finish, writes a checkpoint at that step and stops; a second one, or a
        ``KeyboardInterrupt`` raised inside a step, stops at once and keeps the
        last complete checkpoint. Resume with ``resume=True``.

    Raises
    ------
    FloatingPointError
        A loss is not finite (the message names the step and the task),
        unless ``config.skip_nonfinite``.
    menet.checkpoint.CheckpointError
        The checkpoint to resume from is unreadable, or one cannot be
        written (full disk, read-only folder: the message names the file, and
        the previous checkpoint is left intact).

    Notes
    -----
    Under ``torchrun`` (``WORLD_SIZE > 1`` in the environment) every process
    calls this function: it joins the process group (gloo on CPU, NCCL on
    CUDA, GPU ``LOCAL_RANK``), wraps the model in
    :class:`~torch.nn.parallel.DistributedDataParallel` and trains on its share
    of each batch (``batch_size`` is the global batch and must be a multiple of
    the number of processes). Only rank 0 prints, logs, plots and writes
    checkpoints and weights; the others wait for each write and fail with it.
    Checkpoints hold the unwrapped model, so a run resumes on any number of
    processes. Ctrl-C stops at once under ``torchrun`` (every rank must stop at
    the same step, which a per-process signal cannot promise).
    """
    device = resolve_device(config.device)
    owns_group = not is_distributed()
    ctx = dist_setup(device)
    if ctx.enabled and device.type == "cuda" and device.index is None:
        device = torch.device("cuda", ctx.local_rank)
    try:
        result = _train(config, device, ctx, on_epoch_end)
        # Leave together: a rank that exits while another still talks to gloo
        # can abort ("terminate called without an active exception").
        barrier()
        return result
    finally:
        if ctx.enabled and owns_group:
            dist_cleanup()


def _train(
    config: TrainConfig,
    device: torch.device,
    ctx: DistContext,
    on_epoch_end: Callable[[int, int], None] | None,
) -> TrainResult:
    """The body of :func:`train` on one process: set up, loop over batches, checkpoint."""
    out = Path(config.out)
    on_rank0(lambda: prepare_out(out), f"preparing the output folder {out}")
    ckpt = _resume_from(config, out / "last.ckpt") if config.resume else None
    session = open_session(config, device, ctx.rank, ctx.world_size, ckpt)
    state = session.state
    saved = (out / "last.ckpt", state.step) if ckpt is not None else None
    begin = (state.step, state.elapsed) if ckpt is not None else None
    if ckpt is not None and state.done:  # nothing to train: export if that never happened
        return _finish(session, out, None, saved, interrupted=False, begin=begin, finished=True)
    if ckpt is not None and ctx.is_main:
        print(f"menet train: resuming from step {state.step} of {state.total_steps} "
              f"(epoch {state.epoch + 1}) in {out / 'last.ckpt'}", file=sys.stderr)
    log = _open_log(config, out, state, resumed=ckpt is not None) if ctx.is_main else None
    bar = _Progress(config, state, show=ctx.is_main)
    stop = _StopOnSigint(enabled=ctx.world_size == 1)
    last: StepResult | None = None
    try:
        with session.training_settings(), stop:
            while not state.done:
                for batch in session.batches():
                    lr = state.optimizer.param_groups[0]["lr"]  # the rate of this step
                    result = _step(session, batch, saved)
                    last = _record(result, lr, state, log, bar, ctx) or last
                    if state.done or stop.requested:
                        break
                if state.done or state.epoch_step >= session.sampler.steps_per_epoch:
                    state.end_epoch()
                if log is not None:
                    log.flush()
                state.save(out / "last.ckpt")
                saved = (out / "last.ckpt", state.step)
                if stop.requested:
                    raise KeyboardInterrupt
                if on_epoch_end is not None:
                    on_epoch_end(state.epoch, state.step)
    except KeyboardInterrupt:
        stop.interrupted = True
    finally:
        bar.close()
        if log is not None:
            log.close()
    return _finish(session, out, last, saved, interrupted=stop.interrupted, begin=begin)


# ----------------------------------------------------------------------------- the loop's parts


def _resume_from(config: TrainConfig, path: Path) -> dict[str, Any]:
    ckpt = load_checkpoint(path)
    check_resume(ckpt["config"], config, path)
    return ckpt


def _open_log(config: TrainConfig, out: Path, state: TrainingState, resumed: bool) -> CsvLog:
    (out / "config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")
    return CsvLog(
        out / "log.csv",
        config.losses,
        state.step if resumed else None,
        skipped=config.skip_nonfinite or bool(state.skipped),
    )


class _Progress:
    """The training bar (steps, time, rate) and, below it, a line with the weights and losses.

    Two lines, so that the bar keeps its width in an 80-column terminal and the
    weights stay visible (a line too long for the terminal loses its end: the losses).
    """

    def __init__(self, config: TrainConfig, state: TrainingState, show: bool) -> None:
        off = not (config.progress and show)
        self.bar = tqdm(total=state.total_steps, initial=state.step, disable=off,
                        desc=config.weighting, unit="step", dynamic_ncols=True, file=sys.stderr)
        self.status = tqdm(total=0, position=1, bar_format="{desc}", disable=off,
                           dynamic_ncols=True, file=sys.stderr)

    def step(self, result: StepResult) -> None:
        self.status.set_description_str(postfix(result), refresh=False)
        if self.bar.update(1):  # True when the bar was redrawn: redraw the line below too
            self.status.refresh()

    def close(self) -> None:
        self.bar.close()
        self.status.close()


def _step(
    session: Session, batch: tuple[torch.Tensor, torch.Tensor], saved: tuple[Path, int] | None
) -> StepResult:
    """One :func:`train_step`; a non-finite loss is reported with the step and the checkpoint."""
    state = session.state
    try:
        return train_step(
            session.model,
            batch,
            session.loss_fns,
            session.weighting,
            state.optimizer,
            state.scheduler,
            representation=session.representation,
            amp_dtype=session.amp_dtype,
            scaler=state.scaler,
            skip_nonfinite=session.config.skip_nonfinite,
            clip_grad_norm=session.config.clip_grad_norm,
        )
    except FloatingPointError as exc:
        where = f"{saved[0]} (step {saved[1]})" if saved else "not written yet"
        raise FloatingPointError(
            f"step {state.step + 1} (epoch {state.epoch + 1}): {exc}; the last checkpoint is "
            f"{where}. Use --skip-nonfinite (TrainConfig.skip_nonfinite) to skip such steps"
        ) from exc


def _record(
    result: StepResult,
    lr: float,
    state: TrainingState,
    log: CsvLog | None,
    bar: _Progress,
    ctx: DistContext,
) -> StepResult | None:
    """Count the step, log it (rank 0) and show it; return it unless it was skipped."""
    state.advance()
    logged: StepResult | None = None
    if result.skipped:
        state.skipped.append(state.step)
        bad = [k for k, v in result.losses.items() if not math.isfinite(v)]
        if ctx.is_main:
            tqdm.write(
                f"menet train: step {state.step} skipped: loss {', '.join(bad) or '?'} "
                f"not finite ({len(state.skipped)} skipped so far)",
                file=sys.stderr,
            )
    else:
        logged = mean_over_ranks(result) if ctx.world_size > 1 else result
        if log is not None:
            log.write(state.step, state.epoch, lr, logged, state.elapsed, len(state.skipped))
    bar.step(result)
    return logged


class _StopOnSigint:
    """Ctrl-C during training: finish the step in progress, then stop with a checkpoint.

    While active (single process, main thread, Python's default SIGINT handler
    in place), the first SIGINT only sets :attr:`requested`; a second one
    raises :class:`KeyboardInterrupt` at once. Otherwise SIGINT is left alone.
    """

    def __init__(self, enabled: bool) -> None:
        self.enabled = (
            enabled
            and threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGINT) is signal.default_int_handler
        )
        self.requested = False
        self.interrupted = False

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        tqdm.write(
            "menet train: stopping after this step and writing a checkpoint "
            "(Ctrl-C again to stop at once)",
            file=sys.stderr,
        )

    def __enter__(self) -> _StopOnSigint:
        if self.enabled:
            signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.enabled:
            signal.signal(signal.SIGINT, signal.default_int_handler)


def _finish(
    session: Session,
    out: Path,
    last: StepResult | None,
    saved: tuple[Path, int] | None,
    *,
    interrupted: bool,
    begin: tuple[int, float] | None,
    finished: bool = False,
) -> TrainResult:
    """Export the weights and plot the log (rank 0) unless interrupted; the result.

    ``begin`` is the resumed checkpoint's ``(step, elapsed seconds)``. A run
    resumed after it had finished (``finished``) exports only when its weights
    file is missing (a crash between the last checkpoint and the export).
    """
    state, config = session.state, session.config
    session.net.eval()
    weights_file: Path | None = None
    plots: list[Path] = []
    if finished and (out / "model.safetensors").is_file():
        weights_file = out / "model.safetensors"
    elif not interrupted:

        def export() -> tuple[Path, list[Path]]:
            written = export_weights(
                session.net,
                out / "model.safetensors",
                config.variant,
                weighting=config.weighting,
                losses=list(config.losses),
                steps=state.step,
                epochs=state.epoch,
                seed=config.seed,
                skipped_steps=len(state.skipped),
            )
            return written, plot_training_log(out / "log.csv", out)

        done = on_rank0(export, f"exporting the weights to {out}")
        if done is not None:
            weights_file, plots = done
    return TrainResult(
        model=session.net,
        out=out,
        step=state.step,
        epoch=state.epoch,
        total_steps=state.total_steps,
        last=last,
        checkpoint=saved[0] if saved else None,
        weights_file=weights_file,
        log=out / "log.csv",
        plots=plots,
        interrupted=interrupted,
        seconds=state.elapsed,
        skipped_steps=list(state.skipped),
        checkpoint_step=saved[1] if saved else None,
        resumed_from=None if begin is None else begin[0],
        sitting_seconds=state.elapsed - (0.0 if begin is None else begin[1]),
        already_finished=finished,
    )


def prepare_out(out: Path) -> None:
    """Create the output folder, check it is writable and remove stale temporary files."""
    remove_stale_temporaries(ensure_out_dir(out))
