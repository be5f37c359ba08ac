"""Every strategy under Lightning, the Hugging Face Trainer, Accelerate and a plain loop.

One :class:`Pool` holds a tiny multi-task net and a weighting per strategy of
``mw.available()``. Its :meth:`Pool.total` is the sum of every strategy's
``weighting(losses)``: the nets share nothing, so backpropagating the sum trains
each net exactly as backpropagating its own total would (SGD acts per parameter),
and one trainer run covers all 30 strategies.

``tests/test_trainers.py`` imports this file for the one-process runs and starts it
as ``python _trainer_worker.py OUT`` in :data:`WORLD` processes (``RANK``,
``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT`` in the environment)
for the two-process gloo DDP runs: each mode then runs once, for every strategy, and
each rank saves ``OUT/<mode>.rank<r>.pt``: per strategy the final parameters of its
net (and weighting) and the weights of its last call. An error writes
``OUT/<mode>.rank<r>.err`` instead and the next mode runs.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

import mtlweight as mw

TASKS = ("a", "b", "c")
STEPS = 3
BATCH = 8
"""Samples per optimizer step (all processes together); each of the two ranks takes half."""
WORLD = 2
LR = 0.05
SCALE = (1.0, 6.0, 0.3)
"""Target scale per task: losses and gradients of different sizes."""

STRATEGIES = tuple(mw.available())
MODES_DDP = (
    "lightning-auto", "lightning-manual", "lightning-backward-fn", "lightning-naive",
    "accelerate", "plain",
)
"""The modes run in two processes (:func:`main`): each once, for every strategy."""


class Net(nn.Module):
    """A shared trunk (``Linear`` + ``tanh``) and one ``Linear`` head per task, in float64."""

    def __init__(self) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.trunk = nn.Linear(4, 5, dtype=torch.float64)
        self.heads = nn.ModuleList(nn.Linear(5, 1, dtype=torch.float64) for _ in TASKS)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=generator, dtype=p.dtype) * 0.7)

    def forward(self, x: Tensor) -> Tensor:
        """The shared features (under DDP, the wrapper's forward: it prepares the reduction)."""
        return torch.tanh(self.trunk(x))

    def head_losses(self, features: Tensor, y: Tensor) -> dict[str, Tensor]:
        """Mean squared error per task."""
        return {
            t: ((head(features).squeeze(1) - y[:, i]) ** 2).mean()
            for i, (t, head) in enumerate(zip(TASKS, self.heads, strict=True))
        }

    def losses(self, x: Tensor, y: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        """Mean squared error per task, and the shared features."""
        features = self(x)
        return self.head_losses(features, y), features


def build(name: str, net: Net) -> mw.Weighting:
    """``mw.get(name)`` with the trunk as ``shared`` and the task names, as a user would."""
    options: dict[str, Any] = {"weights": dict(zip(TASKS, (1.0, 0.5, 2.0), strict=True))}
    return mw.get(name, shared=net.trunk, tasks=list(TASKS), **(options if name == "fixed" else {}))


class Pool(nn.Module):
    """One :class:`Net` and one weighting per strategy; the weightings are submodules."""

    def __init__(self, names: tuple[str, ...] = STRATEGIES) -> None:
        super().__init__()
        torch.manual_seed(100 + int(os.environ.get("RANK", "0")))  # ranks draw differently
        self.nets = nn.ModuleDict({n: Net() for n in names})
        self.weightings = nn.ModuleDict({n: build(n, self.net(n)) for n in names})

    def net(self, name: str) -> Net:
        net: Net = self.nets[name]  # type: ignore[assignment]
        return net

    def call(self, name: str, x: Tensor, y: Tensor) -> tuple[dict[str, Tensor], dict[str, Any]]:
        """The losses of strategy ``name``'s net and the keyword arguments of its call."""
        losses, features = self.net(name).losses(x, y)
        weighting: mw.Weighting = self.weightings[name]  # type: ignore[assignment]
        return losses, {"representation": features} if weighting.needs_representation else {}

    def total(self, x: Tensor, y: Tensor) -> Tensor:
        """The sum of every strategy's ``weighting(losses)``: a loss for any trainer."""
        totals = []
        for name, weighting in self.weightings.items():
            losses, kwargs = self.call(name, x, y)
            totals.append(weighting(losses, **kwargs))
        return torch.stack(totals).sum()

    forward = total

    def result(self) -> dict[str, dict[str, Tensor]]:
        """Per strategy: its net's and weighting's parameters, flat, and its last weights."""
        out = {}
        for name, net in self.nets.items():
            weighting: mw.Weighting = self.weightings[name]  # type: ignore[assignment]
            out[name] = {
                "net": torch.cat([p.detach().reshape(-1) for p in net.parameters()]),
                "extra": torch.cat(
                    [p.detach().reshape(-1) for p in weighting.parameters()] or [torch.zeros(0)]
                ),
                "weights": torch.tensor([weighting.weights[t] for t in TASKS]),
                "step": torch.tensor(weighting.step),
            }
        return out


class Data(Dataset[dict[str, Tensor]]):
    """``STEPS * BATCH`` samples; a trainer's distributed sampler gives rank ``r`` every other."""

    def __init__(self) -> None:
        generator = torch.Generator().manual_seed(7)
        self.x = torch.randn(STEPS * BATCH, 4, generator=generator, dtype=torch.float64)
        noise = 0.3 * torch.randn(STEPS * BATCH, 3, generator=generator, dtype=torch.float64)
        self.y = (torch.sin(2 * self.x[:, :3]) + noise) * torch.tensor(SCALE, dtype=torch.float64)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {"x": self.x[i], "y": self.y[i]}


def batches(rank: int = 0, world: int = 1) -> Iterator[tuple[Tensor, Tensor]]:
    """Each step's samples of rank ``rank``: ``rank, rank + world, ...`` of the step's batch."""
    data = Data()
    for step in range(STEPS):
        index = torch.arange(step * BATCH, (step + 1) * BATCH)[rank::world]
        yield data.x[index], data.y[index]


def optimizer(module: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(module.parameters(), lr=LR, momentum=0.9)


# ---------------------------------------------------------------------------- modes
def run_plain(names: tuple[str, ...] = STRATEGIES, world: int = 1) -> dict[str, Any]:
    """The plain loop: ``weighting.backward(losses)``; under DDP one DDP model per strategy."""
    pool = Pool(names)
    rank = dist.get_rank() if world > 1 else 0
    models: dict[str, nn.Module] = dict(pool.nets.items())
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        models = {n: DistributedDataParallel(m) for n, m in models.items()}
    opt = optimizer(pool)
    for x, y in batches(rank, world):
        opt.zero_grad(set_to_none=True)
        for name, weighting in pool.weightings.items():
            features = models[name](x)
            losses = pool.net(name).head_losses(features, y)
            kwargs = {"representation": features} if weighting.needs_representation else {}
            weighting.backward(losses, **kwargs)  # type: ignore[operator]
        opt.step()
    return pool.result()


def run_accelerate(names: tuple[str, ...] = STRATEGIES) -> dict[str, Any]:
    """Accelerate: ``accelerator.backward(pool.total(x, y))`` (CPU; DDP when launched so)."""
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    pool = Pool(names)
    opt = optimizer(pool)
    model, opt = accelerator.prepare(pool, opt)
    rank, world = accelerator.process_index, accelerator.num_processes
    for x, y in batches(rank, world):
        opt.zero_grad(set_to_none=True)
        accelerator.backward(model(x, y))
        opt.step()
    return pool.result()


def _lightning_module(names: tuple[str, ...], mode: str) -> Any:
    import lightning.pytorch as pl

    class Module(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.pool = Pool(names)
            self.automatic_optimization = mode == "lightning-auto"

        def training_step(self, batch: dict[str, Tensor], index: int) -> Tensor | None:
            x, y = batch["x"], batch["y"]
            if mode == "lightning-auto":  # return a loss
                return self.pool.total(x, y)
            opt: Any = self.optimizers()
            opt.zero_grad()
            if mode == "lightning-manual":  # the trainer's backward function
                self.manual_backward(self.pool.total(x, y))
            else:  # weighting.backward with the trainer's function, or without (naive)
                fn = self.manual_backward if mode == "lightning-backward-fn" else None
                for name in self.pool.weightings:
                    weighting: mw.Weighting = self.pool.weightings[name]  # type: ignore[assignment]
                    losses, kwargs = self.pool.call(name, x, y)
                    weighting.backward(losses, backward_fn=fn, **kwargs)
            opt.step()
            return None

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return optimizer(self)

    return Module()


def run_lightning(mode: str, names: tuple[str, ...] = STRATEGIES, world: int = 1) -> dict[str, Any]:
    """Lightning's automatic (``mode="lightning-auto"``) or manual optimisation."""
    import lightning.pytorch as pl
    from lightning.pytorch.strategies import DDPStrategy

    module = _lightning_module(names, mode)
    strategy: Any = DDPStrategy(process_group_backend="gloo") if world > 1 else "auto"
    trainer = pl.Trainer(
        accelerator="cpu", devices=world, strategy=strategy, max_steps=STEPS, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, use_distributed_sampler=False,
    )
    sampler: DistributedSampler[dict[str, Tensor]] | None = None
    if world > 1:  # rank r takes samples r, r + 2, ... (Lightning's own sampler shuffles)
        sampler = DistributedSampler(Data(), shuffle=False)
    loader = DataLoader(Data(), batch_size=BATCH // world, sampler=sampler)
    with _quiet():
        trainer.fit(module, loader)
    return dict(module.pool.result())


def run_hf(names: tuple[str, ...] = STRATEGIES, out: str = ".") -> dict[str, Any]:
    """The Hugging Face ``Trainer`` with ``compute_loss`` returning ``pool.total`` (one process)."""
    from torch.utils.data import SequentialSampler
    from transformers import Trainer, TrainingArguments

    pool = Pool(names)

    class PoolTrainer(Trainer):
        def compute_loss(self, model: nn.Module, inputs: dict[str, Tensor], *args: Any,
                         **kwargs: Any) -> Tensor:
            return model(inputs["x"], inputs["y"])  # type: ignore[no-any-return]

        def _get_train_sampler(self, *args: Any, **kwargs: Any) -> Any:
            return SequentialSampler(self.train_dataset)  # type: ignore[arg-type]

    opt = optimizer(pool)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    arguments = TrainingArguments(
        output_dir=out, per_device_train_batch_size=BATCH, max_steps=STEPS, use_cpu=True,
        report_to=[], save_strategy="no", logging_strategy="no", max_grad_norm=0.0,
        remove_unused_columns=False, disable_tqdm=True, dataloader_num_workers=0,
    )
    trainer = PoolTrainer(model=pool, args=arguments, train_dataset=Data(),
                          optimizers=(opt, schedule))
    with _quiet():
        trainer.train()
    return pool.result()


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    import logging
    import warnings

    levels = {n: logging.getLogger(n).level for n in ("lightning", "lightning.pytorch",
                                                       "transformers", "accelerate")}
    for n in levels:
        logging.getLogger(n).setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            yield
        finally:
            for n, level in levels.items():
                logging.getLogger(n).setLevel(level)


RUNS: dict[str, Callable[[int], dict[str, Any]]] = {
    "lightning-auto": lambda world: run_lightning("lightning-auto", world=world),
    "lightning-manual": lambda world: run_lightning("lightning-manual", world=world),
    "lightning-backward-fn": lambda world: run_lightning(
        "lightning-backward-fn", names=("pcgrad",), world=world
    ),
    # the negative control: weighting.backward(losses) bypasses Lightning's manual_backward
    "lightning-naive": lambda world: run_lightning(
        "lightning-naive", names=("pcgrad",), world=world
    ),
    "accelerate": lambda world: run_accelerate(),
    "plain": lambda world: run_plain(world=world),
}


def main(argv: list[str]) -> int:
    """Run every mode of :data:`MODES_DDP` (or those named after ``OUT``) on this rank."""
    out = Path(argv[0])
    modes = argv[1:] or list(MODES_DDP)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=60))
    status = 0
    try:
        for mode in modes:
            start = time.perf_counter()
            try:
                torch.save(RUNS[mode](world), out / f"{mode}.rank{rank}.pt")
                print(f"{mode}: {time.perf_counter() - start:.1f} s", file=sys.stderr)
            except Exception:
                (out / f"{mode}.rank{rank}.err").write_text(traceback.format_exc())
                status = 1
            dist.barrier()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
