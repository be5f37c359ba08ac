"""The order of the training patches: a permutation per ``(seed, epoch)``, shared by processes.

Step :math:`k` of epoch :math:`e` uses the patches

.. math::

    \\pi_e[kB : (k + 1)B], \\qquad \\pi_e = \\operatorname{perm}(\\mathrm{seed}, e)

where :math:`B` is ``batch_size`` and :math:`\\pi_e` is :func:`epoch_permutation`;
under ``torchrun`` rank :math:`r` of :math:`N` takes every :math:`N`-th of them
(positions :math:`r, r + N, \\dots`), :math:`B / N` in all. So the step count,
the learning-rate schedule and the data of each step do not depend on :math:`N`,
and a run resumed at a step boundary replays the batches of an uninterrupted run.

>>> s = ShardedEpochSampler(10, seed=0, batch_size=4, rank=1, world_size=2)
>>> s.set_epoch(0); len(s), len(list(s))
(4, 4)
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Sampler

__all__ = ["ShardedEpochSampler", "epoch_permutation", "loader_seed", "mix_seed", "seed_worker"]


def mix_seed(*values: int) -> int:
    """Deterministic 63-bit seed from integers (SplitMix64-style mixing).

    >>> mix_seed(0, 1) == mix_seed(0, 1) != mix_seed(1, 0)
    True
    """
    h = 0x9E3779B97F4A7C15
    for v in values:
        h ^= (v + 0x9E3779B97F4A7C15 + (h << 6) + (h >> 2)) & 0xFFFFFFFFFFFFFFFF
        h = (h * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 31
    return h & 0x7FFFFFFFFFFFFFFF


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The order of ``n`` patches in ``epoch``: a function of ``(seed, epoch)`` only.

    >>> sorted(epoch_permutation(5, seed=0, epoch=3).tolist())
    [0, 1, 2, 3, 4]
    """
    g = torch.Generator().manual_seed(mix_seed(seed, epoch, 1))
    return torch.randperm(n, generator=g)


def loader_seed(seed: int, epoch: int) -> int:
    """Seed of the DataLoader's generator in ``epoch`` (it seeds the worker processes)."""
    return mix_seed(seed, epoch, 2)


def seed_worker(worker_id: int) -> None:
    """Seed NumPy and ``random`` in a DataLoader worker from its torch seed."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


class ShardedEpochSampler(Sampler[int]):
    """One process's share of the batches of :func:`epoch_permutation`.

    The epoch's permutation is cut into ``n // batch_size`` global batches
    (the remainder is dropped); rank ``r`` keeps positions ``r, r + N, ...`` of
    them, so that, batched by ``batch_size // N`` in order, its ``k``-th batch
    is its share of global batch ``k``. ``set_epoch(epoch, start)`` begins at
    global batch ``start`` (a run resumed in the middle of an epoch).

    Parameters
    ----------
    n : int
        Dataset size.
    seed : int
        Seed of the permutations.
    batch_size : int
        The global batch size ``B``; must be a multiple of ``world_size``.
        When ``n < B`` the one batch of each epoch is the first
        ``n - n % world_size`` patches.
    rank, world_size : int
        This process and the number of processes.

    >>> full = ShardedEpochSampler(8, seed=3, batch_size=4, rank=0, world_size=1)
    >>> parts = [ShardedEpochSampler(8, seed=3, batch_size=4, rank=r, world_size=2)
    ...          for r in (0, 1)]
    >>> for s in (full, *parts): s.set_epoch(5)
    >>> a, b = (list(p) for p in parts)
    >>> list(full)[:4] == [a[0], b[0], a[1], b[1]]  # global batch 0 = both shares
    True
    """

    def __init__(
        self, n: int, seed: int, batch_size: int, rank: int = 0, world_size: int = 1
    ) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(
                f"need 0 <= rank < world_size; found rank={rank}, world_size={world_size}"
            )
        if batch_size < 1 or batch_size % world_size:
            raise ValueError(
                f"batch_size {batch_size} must be a positive multiple of the number of "
                f"processes ({world_size}): each process takes batch_size / {world_size} patches"
            )
        if n < world_size:
            raise ValueError(f"{n} training patches cannot be shared by {world_size} processes")
        self.n, self.seed, self.batch_size = n, seed, batch_size
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        self.start = 0

    @property
    def global_batch(self) -> int:
        """Patches per step over all processes: ``batch_size``, or fewer for a tiny data set."""
        return self.batch_size if self.n >= self.batch_size else self.n - self.n % self.world_size

    @property
    def local_batch(self) -> int:
        """Patches per step on this process."""
        return self.global_batch // self.world_size

    @property
    def steps_per_epoch(self) -> int:
        """Steps (global batches) per epoch."""
        return max(1, self.n // self.batch_size)

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the permutation of ``epoch``, from global batch ``start`` (call every epoch)."""
        if not 0 <= start < self.steps_per_epoch:
            raise ValueError(f"start must be in [0, {self.steps_per_epoch}); found {start}")
        self.epoch, self.start = epoch, start

    def __iter__(self) -> Iterator[int]:
        used = self.steps_per_epoch * self.global_batch
        order = epoch_permutation(self.n, self.seed, self.epoch)[:used]
        mine = order[self.rank :: self.world_size]
        return iter(mine[self.start * self.local_batch :].tolist())

    def __len__(self) -> int:
        return (self.steps_per_epoch - self.start) * self.local_batch
