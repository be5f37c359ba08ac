"""Multi-process training under ``torchrun``: process group, data sharding, rank-0 I/O.

``python -m torch.distributed.run --nproc_per_node=N -m menet train ...`` starts
``N`` copies of ``menet train``; each reads ``RANK``, ``LOCAL_RANK`` and
``WORLD_SIZE`` from its environment (:func:`setup`), trains a replica of the
model wrapped in :class:`~torch.nn.parallel.DistributedDataParallel` on its
share of every batch (:class:`ShardedEpochSampler`), and only rank 0 writes
the log, the plots, the checkpoints and the exported weights
(:func:`on_rank0`).

The global batch is the same whatever ``N`` is (:mod:`menet.sampling`): the
step count, the learning-rate schedule and the data seen by each step do not
depend on :math:`N`, and a checkpoint written by a run on :math:`N`
processes resumes on any other number that divides ``batch_size``. (With
BatchNorm the results still differ slightly: each replica normalises with
the statistics of its own share of the batch.)

Every process reads ``<out>/last.ckpt`` to resume, and only rank 0 writes it:
on several machines, ``--out`` must be a shared folder.

>>> context().world_size  # not started by torchrun
1
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

import torch
import torch.distributed as dist

from mtlweight.distributed import is_distributed

from .sampling import ShardedEpochSampler

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
    if is_distributed():
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
    if not ctx.enabled or is_distributed():
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
    if is_distributed():
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for every process (no-op in a single process)."""
    if is_distributed() and dist.get_world_size() > 1:
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
    if not (is_distributed() and dist.get_world_size() > 1):
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
