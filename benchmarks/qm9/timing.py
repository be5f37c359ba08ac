"""Time per training step of every row of the table, interleaved, relative to LS.

The step times that the runs record are measured hours apart on a shared
machine whose load changes; these are measured side by side: one model per row
(same initialisation), the same few batches, and rounds in which every row
takes one step in turn (``_common.interleaved_medians``), so that the load hits
all rows alike. The ratio to LS of the medians is what the table shows.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

import mtlweight as mw

from .data import Graphs, Standardiser, collate, split
from .model import MPNN
from .protocol import RunConfig
from _common import interleaved_medians, machine

__all__ = ["step_times"]


def _stepper(config: RunConfig, batches: list[Any]) -> Callable[[], None]:
    names = config.task_names
    torch.manual_seed(config.seed)
    model = MPNN(
        1 if config.method == "stl" else len(names),
        dim=config.dim,
        edge_hidden=config.edge_hidden,
        passes=config.passes,
    )
    weighting = None
    params = list(model.parameters())
    if config.method != "stl":
        shared = {
            "shared": [p for m in model.shared() for p in m.parameters()],
            "last": list(model.lin1.parameters()),
            "representation": None,
        }[config.gradients]
        weighting = mw.get(config.method, shared=shared, tasks=names, **config.method_options)
        params += list(weighting.parameters())
    optimizer = torch.optim.Adam(params, lr=config.lr)
    count = [0]

    def step() -> None:
        batch = batches[count[0] % len(batches)]
        count[0] += 1
        out, z = model(batch)
        optimizer.zero_grad(set_to_none=True)
        if weighting is None:
            torch.autograd.backward(F.mse_loss(out[:, 0], batch.y[:, 0]))
        else:
            losses = {n: F.mse_loss(out[:, i], batch.y[:, i]) for i, n in enumerate(names)}
            if config.gradients == "representation":
                weighting.backward(losses, representation=z)
            else:
                weighting.backward(losses)
        optimizer.step()

    return step


def step_times(
    rows: dict[str, RunConfig],
    graphs: Graphs,
    *,
    batches: int = 4,
    repeats: int = 10,
    warmup: int = 2,
) -> dict[str, Any]:
    """Median seconds of one training step per row, and its ratio to the row ``"equal"``."""
    if "equal" not in rows:
        raise ValueError("the rows must include 'equal' (LS), the reference")
    first = next(iter(rows.values()))
    train, _, _ = split(
        len(graphs), seed=first.split_seed, val=first.val_size, test=first.test_size
    )
    if first.train_size is not None:
        train = train[: first.train_size]
    targets = torch.tensor(first.targets)
    scaler = Standardiser(graphs.y[train][:, targets])
    chunks = [train[i * first.batch_size : (i + 1) * first.batch_size] for i in range(batches)]
    prepared = [collate(graphs, c, scaler(graphs.y[c][:, targets]), first.graph) for c in chunks]
    steppers = {name: _stepper(config, prepared) for name, config in rows.items()}
    times = interleaved_medians(
        steppers, repeats=repeats, warmup=warmup, device=torch.device("cpu")
    )
    ls = times["equal"]["median_s"]
    return {
        "machine": machine(),
        "repeats": repeats,
        "rows": {
            name: {**t, "ratio_to_ls": t["median_s"] / ls, "config": rows[name].to_json()}
            for name, t in times.items()
        },
    }
