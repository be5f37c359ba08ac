r"""Small helpers for :mod:`torch.distributed` (DistributedDataParallel training).

Every strategy keeps its per-step statistics through
:meth:`mtlweight.Weighting.statistic`, which calls :func:`all_reduce_mean`:
under an initialised process group each statistic becomes its mean over the
processes, so that every rank computes the same weights from the same
numbers, and the weighting never diverges across ranks.

Which quantity is averaged matters. With ``R`` processes, equal per-rank batch
sizes and losses that are means over the batch, the loss of the combined batch
is the mean of the per-rank losses, and its gradient with respect to the
(replicated) parameters is the mean of the per-rank gradients:

.. math::

    L_t = \frac{1}{R} \sum_{r=1}^{R} L_t^{(r)}, \qquad
    \nabla_\theta L_t = \frac{1}{R} \sum_{r=1}^{R} \nabla_\theta L_t^{(r)}

so averaging a loss, or a gradient *vector*, gives exactly what one process
would compute on the combined batch. Averaging a gradient *norm* does not
(:math:`\frac{1}{R}\sum_r \lVert g^{(r)} \rVert \ge \lVert \frac{1}{R}\sum_r g^{(r)} \rVert`,
and the gap grows with the gradient noise of the smaller per-rank batches).

Examples
--------
Without an initialised process group these are no-ops:

>>> import torch
>>> from mtlweight.distributed import all_reduce_mean, is_distributed, world_size
>>> is_distributed(), world_size()
(False, 1)
>>> all_reduce_mean(torch.tensor([1.0, 3.0]))
tensor([1., 3.])
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["all_reduce_mean", "is_distributed", "world_size"]

# Reduced in float32 at least: a sum of half-precision values over many ranks overflows.
_PROMOTE = {torch.float16: torch.float32, torch.bfloat16: torch.float32}


def is_distributed() -> bool:
    """``True`` when :mod:`torch.distributed` is available and its default group is initialised.

    Examples
    --------
    >>> is_distributed()
    False
    """
    return dist.is_available() and dist.is_initialized()


def world_size(group: dist.ProcessGroup | None = None) -> int:
    """The number of processes in ``group`` (the default group), or 1 when not distributed.

    Examples
    --------
    >>> world_size()
    1
    """
    return dist.get_world_size(group) if is_distributed() else 1


def _needs_cuda(group: dist.ProcessGroup | None) -> bool:
    """Whether the group's backend can only reduce CUDA tensors (NCCL without a CPU backend)."""
    backend = str(dist.get_backend(group)).lower()
    return "nccl" in backend and "gloo" not in backend and "mpi" not in backend


def all_reduce_mean(value: Tensor, group: dist.ProcessGroup | None = None) -> Tensor:
    r"""Mean of ``value`` over the processes of ``group``; ``value`` itself when not distributed.

    .. math::

        \bar v = \frac{1}{R} \sum_{r=1}^{R} v^{(r)}

    where :math:`v^{(r)}` is ``value`` on rank :math:`r` and :math:`R` the
    number of processes. Every process must call it, in the same order, with
    a tensor of the same shape and dtype: it is a collective operation.

    The input is neither modified nor part of the result's autograd graph.
    Half-precision values are summed in float32 and the mean cast back. A CPU
    tensor under the NCCL backend is reduced on the current CUDA device and
    returned on the CPU.

    Parameters
    ----------
    value
        A floating-point tensor of any shape.
    group
        The process group (default: the default group).

    Returns
    -------
    Tensor
        Same shape, dtype and device as ``value``, contiguous, detached; the
        same value on every rank.

    Raises
    ------
    TypeError
        If ``value`` is not a floating-point tensor (the mean of integers is
        not an integer).

    Examples
    --------
    >>> import torch
    >>> all_reduce_mean(torch.tensor(2.5))
    tensor(2.5000)
    """
    if not isinstance(value, Tensor):
        raise TypeError(f"all_reduce_mean expects a torch.Tensor; found {type(value).__name__}")
    if not value.is_floating_point():
        raise TypeError(
            f"all_reduce_mean expects a floating-point tensor; found dtype {value.dtype} "
            f"(shape {tuple(value.shape)})"
        )
    value = value.detach()
    size = world_size(group)
    if size == 1:
        return value
    device = value.device
    work_device = device
    if device.type == "cpu" and _needs_cuda(group):
        work_device = torch.device("cuda", torch.cuda.current_device())
    buffer = value.to(
        device=work_device, dtype=_PROMOTE.get(value.dtype, value.dtype), copy=True
    ).contiguous()
    dist.all_reduce(buffer, op=dist.ReduceOp.SUM, group=group)
    buffer /= size
    return buffer.to(device=device, dtype=value.dtype)
