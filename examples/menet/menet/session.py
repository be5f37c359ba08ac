"""Everything a training loop needs, set up from a config: :func:`open_session`.

A :class:`Session` holds the (possibly DDP-wrapped and compiled) model, the
losses, the weighting, the data loader and its sampler, and the
:class:`~menet.state.TrainingState` to checkpoint. Setting up follows one fixed
order (seeds, model, losses, weighting, data, optimizer, schedule, AMP, then the
checkpoint's states), so that a run and its resumption draw the same random
numbers.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset

import mtlweight as mw

from .building import (
    build_amp,
    build_dataset,
    build_losses,
    build_model,
    build_optimizer,
    build_scheduler,
    build_weighting,
)
from .config import TrainConfig
from .model import MENET
from .sampling import ShardedEpochSampler, loader_seed, seed_worker
from .state import TrainingState

__all__ = ["Session", "open_session"]


@dataclass
class Session:
    """A training run ready to go: call :meth:`batches` once per epoch."""

    config: TrainConfig
    device: torch.device
    net: MENET
    model: nn.Module
    loss_fns: dict[str, nn.Module]
    weighting: mw.Weighting
    representation: bool
    amp_dtype: torch.dtype | None
    dataset: Dataset[tuple[Tensor, Tensor]]
    sampler: ShardedEpochSampler
    loader: DataLoader[tuple[Tensor, Tensor]]
    generator: torch.Generator
    state: TrainingState

    def batches(self) -> Iterator[tuple[Tensor, Tensor]]:
        """The remaining batches of the state's epoch, on the device."""
        epoch = self.state.epoch
        self.sampler.set_epoch(epoch, self.state.epoch_step)
        if hasattr(self.dataset, "set_epoch"):  # new random crops each epoch
            self.dataset.set_epoch(epoch)
        self.generator.manual_seed(loader_seed(self.config.seed, epoch))
        for rainy, clean in self.loader:
            yield (
                rainy.to(self.device, non_blocking=True),
                clean.to(self.device, non_blocking=True),
            )

    def training_settings(self) -> contextlib.AbstractContextManager[Any]:
        """Global settings changed while training only (restored on exit)."""
        stack = contextlib.ExitStack()
        if self.config.compile is not None:
            # GB differentiates the compiled graph once per task (retain_graph), so
            # AOTAutograd must not donate (free) the saved activations after the first
            # backward. A private torch module, imported only when compiling.
            import torch._functorch.config as functorch_config

            stack.enter_context(functorch_config.patch(donated_buffer=False))
        return stack


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def open_session(
    config: TrainConfig,
    device: torch.device,
    rank: int = 0,
    world_size: int = 1,
    checkpoint: Mapping[str, Any] | None = None,
) -> Session:
    """Build the run of ``config`` on ``device`` and restore ``checkpoint`` if given.

    Under ``torchrun`` (``world_size > 1``) the model is wrapped in
    :class:`~torch.nn.parallel.DistributedDataParallel` and this process takes
    its share of each batch (:class:`menet.sampling.ShardedEpochSampler`).
    """
    _seed_everything(config.seed)
    # A resumed run takes its weights from the checkpoint: its init file may be gone.
    net = build_model(config if checkpoint is None else replace(config, init=None), device)
    built = build_losses(config.losses, texture_normalize=config.texture_normalize)
    loss_fns = {n: f.to(device) for n, f in built.items()}
    weighting = build_weighting(
        config.weighting,
        net,
        config.losses,
        weights=config.weights,
        gb_shared=config.gb_shared,
        options=config.weighting_options,
    ).to(device)
    if checkpoint is not None:  # before DDP, which broadcasts rank 0's parameters anyway
        net.load_state_dict(checkpoint["model"])
    model: nn.Module = net
    if world_size > 1:
        ids = [device.index] if device.type == "cuda" else None
        model = DistributedDataParallel(net, device_ids=ids)
    if config.compile is not None:
        model = torch.compile(model, backend=config.compile)  # type: ignore[assignment]

    dataset = build_dataset(config)
    if len(dataset) == 0:  # type: ignore[arg-type]
        raise ValueError("the training set is empty")
    sampler = ShardedEpochSampler(len(dataset), config.seed, config.batch_size, rank, world_size)  # type: ignore[arg-type]
    total_steps = config.total_steps(sampler.steps_per_epoch)
    generator = torch.Generator()
    loader = DataLoader(
        dataset,
        batch_size=sampler.local_batch,
        sampler=sampler,
        num_workers=config.workers,
        drop_last=False,
        generator=generator,
        worker_init_fn=seed_worker,
        pin_memory=device.type == "cuda",
    )
    optimizer = build_optimizer(net, weighting, config.lr)
    amp_dtype, scaler = build_amp(config, device)
    state = TrainingState(
        net, optimizer, build_scheduler(optimizer, config, total_steps), weighting, scaler,
        config, total_steps, world_size,
    )
    if checkpoint is not None:
        state.load_state_dict(checkpoint)
    representation = config.gb_shared == "representation" or weighting.needs_representation
    return Session(
        config, device, net, model, loss_fns, weighting, representation, amp_dtype,
        dataset, sampler, loader, generator, state,
    )
