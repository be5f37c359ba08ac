"""Multi-process training under ``torchrun``: process group, data sharding, rank-0 I/O.

``python -m torch.distributed.run --nproc_per_node=N -m menet train ...`` starts
``N`` copies of ``menet train``; each reads ``RANK``, ``LOCAL_RANK`` and
``WORLD_SIZE`` from its environment (:func:`setup`), trains a replica of the
model wrapped in :class:`~torch.nn.parallel.DistributedDataParallel` on its
share of every batch (:class:`ShardedEpochSampler`), and only rank 0 writes
the log, the plots, the checkpoints and the exported weights
(:func:`on_rank0`).

The global batch is the same whatever ``N`` is. Step :math:`k` of epoch
:math:`e` uses the patches

.. math::

    \\pi_e[kB : (k + 1)B], \\qquad \\pi_e = \\operatorname{perm}(\\mathrm{seed}, e)

where :math:`B` is ``batch_size`` and :math:`\\pi_e` the permutation of
:class:`menet.train.EpochSampler`; rank :math:`r` of :math:`N` takes every
:math:`N`-th of them (positions :math:`r, r + N, \\dots`), :math:`B / N` in all.
So the step count, the learning-rate schedule and the data seen by each step
do not depend on :math:`N`, and a checkpoint written by a run on :math:`N`
processes resumes on any other number that divides :math:`B`. (With
BatchNorm the results still differ slightly: each replica normalises with
the statistics of its own share of the batch.)

Every process reads ``<out>/last.ckpt`` to resume, and only rank 0 writes it:
on several machines, ``--out`` must be a shared folder.

>>> s = ShardedEpochSampler(10, seed=0, batch_size=4, rank=1, world_size=2)
>>> s.set_epoch(0); len(s), len(list(s))
(4, 4)
>>> context().world_size  # not started by torchrun
1
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

__all__ = [
    "DistContext",
    "ShardedEpochSampler",
    "barrier",
    "cleanup",
    "context",
    "on_rank0",
    "setup",
]

T = TypeVar("T")

#: How long a collective waits for the other processes before failing (a
#: process that died must not leave the others hanging forever).
TIMEOUT = timedelta(minutes=10)


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: its rank, the number of processes, its local GPU index.

    ``world_size == 1`` means a plain single-process run (no process group).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        """True when more than one process trains together."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """True on rank 0, the process that writes files and prints."""
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError as exc:
        raise ValueError(
            f"environment variable {name} must be an integer; found {value!r}"
        ) from exc


def context() -> DistContext:
    """The rank and world size set by ``torchrun`` (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``).

    Uses the initialised process group when there is one, else the
    environment; without either, a single process.

    >>> context()
    DistContext(rank=0, world_size=1, local_rank=0)
    """
    local_rank = _env_int("LOCAL_RANK", 0)
    if dist.is_available() and dist.is_initialized():
        return DistContext(dist.get_rank(), dist.get_world_size(), local_rank)
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"invalid RANK={rank} / WORLD_SIZE={world} in the environment")
    return DistContext(rank, world, local_rank)


def setup(device: torch.device) -> DistContext:
    """Join the process group described by the environment when ``WORLD_SIZE > 1``.

    The backend is NCCL for CUDA devices (each process uses GPU ``LOCAL_RANK``)
    and gloo for the CPU. Does nothing in a single process, or when the group
    is already initialised (e.g. by the caller).

    Parameters
    ----------
    device : torch.device
        The training device; ``cuda`` selects NCCL.

    Returns
    -------
    DistContext
        This process's rank and the world size.
    """
    ctx = context()
    if not ctx.enabled or dist.is_initialized():
        return ctx
    if not dist.is_available():
        raise RuntimeError(
            f"WORLD_SIZE={ctx.world_size} but this PyTorch build has no torch.distributed"
        )
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        if name not in os.environ:
            raise RuntimeError(
                f"WORLD_SIZE={ctx.world_size} but {name} is not set; start the processes "
                f"with torchrun (python -m torch.distributed.run --nproc_per_node=N -m menet ...)"
            )
    if device.type == "cuda":
        torch.cuda.set_device(ctx.local_rank)
        backend = "nccl"
    else:
        backend = "gloo"
    dist.init_process_group(
        backend, rank=ctx.rank, world_size=ctx.world_size, timeout=TIMEOUT
    )
    return ctx


def cleanup() -> None:
    """Leave the process group (if this module's caller joined one)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for every process (no-op in a single process)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def on_rank0(fn: Callable[[], T], what: str) -> T | None:
    """Run ``fn`` on rank 0 only; every rank returns once it is done, or all raise.

    The other ranks wait for rank 0 (a collective serves as the barrier) and
    learn whether ``fn`` succeeded: if it raised, rank 0 re-raises its
    exception and the others raise :class:`RuntimeError` naming ``what``, so
    no process is left waiting for a rank that has given up. In a single
    process this is just ``fn()``.

    Parameters
    ----------
    fn : callable
        The work (e.g. writing the checkpoint).
    what : str
        Description for the error raised on the other ranks.

    Returns
    -------
    The result of ``fn`` on rank 0, ``None`` on the others.

    >>> on_rank0(lambda: 42, "the answer")
    42
    """
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return fn()
    failure: BaseException | None = None
    result: T | None = None
    if dist.get_rank() == 0:
        try:
            result = fn()
        except Exception as exc:  # reported to every rank below
            failure = exc
    flag = torch.tensor([0.0 if failure is None else 1.0])
    if dist.get_backend() == "nccl":
        flag = flag.cuda()
    dist.all_reduce(flag)
    if failure is not None:
        raise failure
    if float(flag) > 0:
        raise RuntimeError(f"{what} failed on rank 0 (see its error message)")
    return result


def _mix_seed(seed: int, epoch: int) -> int:
    from .train import _mix

    return _mix(seed, epoch, 1)


class ShardedEpochSampler(Sampler[int]):
    """One process's share of :class:`menet.train.EpochSampler`'s batches.

    The epoch's permutation depends only on ``(seed, epoch)`` (it is the one a
    single process would use). It is cut into ``len // batch_size`` global
    batches (the remainder is dropped, as the single-process run's
    ``drop_last`` does); rank ``r`` keeps positions ``r, r + N, ...`` of them,
    so that, batched by ``batch_size // N`` in order, its ``k``-th batch is
    its share of global batch ``k``.

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

    def set_epoch(self, epoch: int) -> None:
        """Select the permutation of ``epoch`` (call before iterating, every epoch)."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(_mix_seed(self.seed, self.epoch))
        used = self.steps_per_epoch * self.global_batch
        order = torch.randperm(self.n, generator=g)[:used]
        return iter(order[self.rank :: self.world_size].tolist())

    def __len__(self) -> int:
        return self.steps_per_epoch * self.local_batch
