"""One rank of the DistributedDataParallel tests, and the single-process reference run.

``tests/test_distributed.py`` starts this file as ``python _ddp_worker.py SPECS OUT`` in
``WORLD_SIZE`` processes (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR=127.0.0.1``,
``MASTER_PORT`` in the environment). Each rank joins a gloo process group, then runs
every scenario of the JSON file ``SPECS`` in order with :func:`train` and saves what it
saw to ``OUT/<id>.rank<r>.pt``. A scenario that raises writes ``OUT/<id>.rank<r>.err``
(the traceback) and ends the process: the other ranks then fail in their next
collective, and the test driver restarts the remaining scenarios in fresh processes.

The same :func:`train` runs in the test process without DDP on the combined batch of
all ranks: the single-process reference.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
import traceback
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

import mtlweight as mw
import mtlweight.distributed as mwd

TASKS = ("pixel", "edge", "texture")
"""The task names, in the order in which weights are recorded."""

PER_RANK = 4
"""Samples per rank and step (every rank the same, so that means combine exactly)."""

MICRO = 2
"""Samples per rank of the first micro-batch of a step with gradient accumulation."""

TARGET_SCALE = (1.0, 6.0, 0.3)
"""Each task's target scale: the tasks' losses and gradients differ by orders of magnitude."""


class Net(nn.Module):
    """A shared trunk (``Linear`` + ``tanh``) and one ``Linear`` head per task, in float64."""

    def __init__(self) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.trunk = nn.Linear(4, 6, dtype=torch.float64)
        self.heads = nn.ModuleList(nn.Linear(6, 1, dtype=torch.float64) for _ in TASKS)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=generator, dtype=p.dtype) * 0.7)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Return the shared features ``(B, 6)`` and the task outputs ``(B, T)``.

        The features are also kept as ``self.features``: the tensor the heads
        consume, which DDP does not replace (see :func:`train`).
        """
        features = torch.tanh(self.trunk(x))
        self.features = features
        return features, torch.cat([head(features) for head in self.heads], dim=1)


def batch(step: int, rank: int, world: int) -> tuple[Tensor, Tensor]:
    """Rank ``rank``'s slice ``(PER_RANK, ...)`` of step ``step``'s combined batch.

    ``world=1, rank=0`` gives the whole combined batch of ``2 * PER_RANK`` samples,
    which is the concatenation of the two ranks' slices.
    """
    generator = torch.Generator().manual_seed(1000 + step)
    total = 2 * PER_RANK
    x = torch.randn(total, 4, generator=generator, dtype=torch.float64)
    scale = torch.tensor(TARGET_SCALE, dtype=torch.float64)
    y = (torch.sin(3 * x[:, :3]) + 0.5 * torch.randn(total, 3, generator=generator)) * scale
    size = total // world
    return x[rank * size : (rank + 1) * size], y[rank * size : (rank + 1) * size]


def task_losses(outputs: Tensor, targets: Tensor) -> dict[str, Tensor]:
    """Mean squared error per task (a mean over the batch, as the exact comparisons need)."""
    return {name: ((outputs[:, i] - targets[:, i]) ** 2).mean() for i, name in enumerate(TASKS)}


def build_weighting(spec: dict[str, Any], net: Net) -> mw.Weighting:
    """The strategy of ``spec``: ``mw.get(spec["strategy"], **options)``, ``shared=`` the trunk."""
    options = dict(spec.get("options", {}))
    if spec.get("shared"):
        options["shared"] = net.trunk
    return mw.get(spec["strategy"], **options)


def flat(tensors: Sequence[Tensor]) -> Tensor:
    """The tensors flattened and concatenated, detached, in float64."""
    return torch.cat([t.detach().reshape(-1).double() for t in tensors])


def train(spec: dict[str, Any], rank: int = 0, world: int = 1) -> dict[str, Any]:
    """Train :class:`Net` for ``spec["steps"]`` steps and return what each step did.

    With ``world > 1`` the model is wrapped in ``DistributedDataParallel`` (options
    ``spec["ddp"]``) and every rank trains on its own slice of each batch; with
    ``world == 1`` one process trains on the combined batch. ``spec["accumulate"]``
    splits each step in two micro-batches (the first :data:`MICRO` samples of the
    rank, then the rest), the first under ``no_sync()``, each loss divided by 2.

    ``spec["representation"]`` selects GB's representation: ``"output"`` is the
    features as returned by the (DDP) model, ``"inner"`` the tensor the heads
    used (``net.features``). They differ when DDP passes its outputs through its
    own autograd function (``find_unused_parameters=True``, or the first step
    with ``static_graph=True``): the returned copy is then reached by no loss.
    ``spec["wrap"]`` wraps the weighting itself in DDP too (for a weighting with
    trainable parameters) and calls it instead of ``weighting.backward``.
    ``spec["nan_rank"]`` makes the second task's loss NaN on that rank only.
    With ``spec["expect_error"]`` an exception is returned as ``{"error": ...}``.

    Returns a dict of lists with one entry per step: ``weights`` (one list per
    micro-batch, in :data:`TASKS` order), ``params`` (model parameters before the
    step), ``grads`` (model ``.grad`` after the backward), ``extra`` (the
    weighting's own parameters after the step), and ``final`` (model parameters
    after the last step).
    """
    if spec.get("expect_error"):
        try:
            return train({**spec, "expect_error": False}, rank, world)
        except Exception as error:
            return {"error": f"{type(error).__name__}: {error}"}
    net = Net()
    # Different random streams on different ranks, as in real data-parallel runs:
    # a stochastic strategy must not rely on the ranks drawing the same numbers.
    torch.manual_seed(100 + rank)
    weighting = build_weighting(spec, net)
    model: nn.Module = net
    weigh: nn.Module = weighting
    if world > 1:
        model = DistributedDataParallel(net, **spec.get("ddp", {}))
        if spec.get("wrap"):
            weigh = DistributedDataParallel(weighting)
    extra = list(weighting.parameters())
    optimizer = torch.optim.SGD(list(net.parameters()) + extra, lr=0.05, momentum=0.9)
    params = list(net.parameters())
    record: dict[str, Any] = {"weights": [], "params": [], "grads": [], "extra": []}
    for step in range(spec["steps"]):
        record["params"].append(flat(params))
        optimizer.zero_grad(set_to_none=True)
        x, y = batch(step, rank, world)
        micro = [(x, y)]
        if spec.get("accumulate"):
            micro = [(x[:MICRO], y[:MICRO]), (x[MICRO:], y[MICRO:])]
        step_weights = []
        for i, (xb, yb) in enumerate(micro):
            accumulating = i < len(micro) - 1 and isinstance(model, DistributedDataParallel)
            context = model.no_sync() if accumulating else contextlib.nullcontext()  # type: ignore[operator]
            with context:
                features, outputs = model(xb)
                losses = {n: v / len(micro) for n, v in task_losses(outputs, yb).items()}
                if spec.get("nan_rank") == rank:  # a bad batch on one rank only
                    losses[TASKS[1]] = losses[TASKS[1]] * float("nan")
                representation = {"output": features, "inner": net.features}.get(
                    spec.get("representation", "")
                )
                if spec.get("wrap"):
                    weigh(losses, representation=representation).backward()
                else:
                    weighting.backward(losses, representation=representation)
            step_weights.append([weighting.weights[n] for n in TASKS])
        record["weights"].append(step_weights)
        record["grads"].append(flat([_grad(p) for p in params]))
        optimizer.step()
        record["extra"].append(flat(extra) if extra else torch.zeros(0, dtype=torch.float64))
    record["final"] = flat(params)
    return record


def helpers(rank: int, world: int) -> dict[str, Any]:
    """Exercise :mod:`mtlweight.distributed` with rank-dependent inputs; return the results."""
    base = torch.arange(6, dtype=torch.float64).reshape(2, 3) + 10 * rank
    half = torch.tensor([60000.0, 1.5], dtype=torch.float16)  # the sum overflows float16
    strided = base.t()  # not contiguous
    before = strided.clone()
    result = {
        "world_size": mwd.world_size(),
        "is_distributed": mwd.is_distributed(),
        "strided": mwd.all_reduce_mean(strided),
        "strided_unchanged": bool(torch.equal(strided, before)),
        "half": mwd.all_reduce_mean(half),
        "scalar": mwd.all_reduce_mean(torch.tensor(float(rank))),
    }
    try:
        mwd.all_reduce_mean(torch.tensor([rank]))
        result["int_error"] = ""
    except TypeError as error:
        result["int_error"] = str(error)
    return result


def _grad(p: Tensor) -> Tensor:
    return torch.zeros_like(p) if p.grad is None else p.grad


def main(argv: list[str]) -> int:
    """Run every scenario of ``argv[0]`` (JSON) and save the records under ``argv[1]``."""
    specs = json.loads(Path(argv[0]).read_text())
    out = Path(argv[1])
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    torch.set_num_threads(1)
    # Collectives give up after 30 s: a hang becomes an error, not a stuck CI job.
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=30))
    try:
        for spec in specs:
            try:
                if spec.get("sleep"):  # a stand-in for a hang, for the launcher's own test
                    time.sleep(float(spec["sleep"]))
                record = helpers(rank, world) if spec.get("helpers") else train(spec, rank, world)
            except BaseException:
                (out / f"{spec['id']}.rank{rank}.err").write_text(traceback.format_exc())
                return 1
            torch.save(record, out / f"{spec['id']}.rank{rank}.pt")
        dist.barrier()
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
