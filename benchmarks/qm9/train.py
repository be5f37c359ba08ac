"""One run of the QM9 benchmark: train, select on validation, test; resumable.

A run keeps ``checkpoint.pt`` in its folder (model, optimizer, scheduler,
weighting, RNG states, the best epoch so far), rewritten atomically after every
epoch, and writes its results JSON when it finishes. Started again with the
same configuration it continues from the last finished epoch; with another
configuration it refuses, naming the differences.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

import mtlweight as mw

from .data import TARGETS, Batch, Graphs, Standardiser, collate, split
from .metrics import PAPER_STL, display_scale
from .model import MPNN
from .protocol import RunConfig

__all__ = ["atomic_write_json", "evaluate", "run", "to_device"]


def atomic_write_json(path: Path, data: Any) -> None:
    """Write ``data`` as JSON to ``path`` through a temporary file and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _atomic_save(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _batches(indices: Tensor, size: int) -> list[Tensor]:
    return list(torch.split(indices, size))


@torch.no_grad()
def evaluate(
    model: MPNN,
    graphs: Graphs,
    indices: Tensor,
    labels: Tensor,
    scaler: Standardiser,
    config: RunConfig,
    device: torch.device | str = "cpu",
) -> list[float]:
    """MAE per task in PyG's units, over ``indices`` (``labels``: their standardised targets)."""
    model.eval()
    total = torch.zeros(labels.shape[1], dtype=torch.float64)
    for chunk, y in zip(_batches(indices, config.batch_size),
                        torch.split(labels, config.batch_size), strict=True):  # fmt: skip
        out, _ = model(to_device(collate(graphs, chunk, y, config.graph), device))
        total += (scaler.invert(out.cpu()) - scaler.invert(y)).abs().sum(0)
    model.train()
    return (total / indices.shape[0]).tolist()


def _references(config: RunConfig, scaler: Standardiser) -> list[float]:
    """Per-task normalisers of the validation criterion, in PyG's units.

    The papers' single-task MAEs (converted back from meV) when the targets
    are the papers'; otherwise each target's training standard deviation.
    """
    refs = []
    for i, t in enumerate(config.targets):
        name, unit = TARGETS[t]
        if name in PAPER_STL:
            refs.append(PAPER_STL[name] / display_scale(unit)[0])
        else:
            refs.append(float(scaler.std[i]))
    return refs


def _criterion(config: RunConfig, mae: list[float], refs: list[float]) -> float:
    """Lower is better: the task's MAE (stl), else mean_t MAE_t / ref_t (the papers' val Δm + 1)."""
    if config.method == "stl":
        i = config.task_names.index(str(config.task))
        return mae[i] / refs[i]
    return sum(m / r for m, r in zip(mae, refs, strict=True)) / len(mae)


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def to_device(batch: Batch, device: torch.device | str) -> Batch:
    """The batch's tensors on ``device``."""
    if torch.device(device).type == "cpu":
        return batch
    return batch._replace(
        x=batch.x.to(device),
        edge_index=batch.edge_index.to(device),
        edge_attr=batch.edge_attr.to(device),
        batch=batch.batch.to(device),
        y=batch.y.to(device),
    )


def run(
    config: RunConfig,
    graphs: Graphs,
    folder: Path,
    *,
    log: Callable[[str], None] = print,
    max_epochs: int | None = None,
    device: torch.device | str = "cpu",
) -> dict[str, Any]:
    """Train ``config`` on ``graphs``, keeping the checkpoint in ``folder``; return the results.

    ``max_epochs`` stops early after that many epochs of this call (for tests
    of resuming); the results then have ``finished: False``.
    """
    folder.mkdir(parents=True, exist_ok=True)
    checkpoint_path = folder / "checkpoint.pt"
    train_idx, val_idx, test_idx = split(
        len(graphs), seed=config.split_seed, val=config.val_size, test=config.test_size
    )
    if config.train_size is not None:
        if config.train_size > train_idx.shape[0]:
            raise ValueError(
                f"train_size {config.train_size} > the {train_idx.shape[0]} training molecules"
            )
        train_idx = train_idx[: config.train_size]
    targets = torch.tensor(config.targets)
    scaler = Standardiser(graphs.y[train_idx][:, targets])
    y_all = scaler(graphs.y[:, targets])
    names = config.task_names
    heads = [config.task] if config.method == "stl" else names
    torch.manual_seed(config.seed)
    model = MPNN(len(names), dim=config.dim, edge_hidden=config.edge_hidden, passes=config.passes)
    model.to(device)
    weighting: mw.Weighting | None = None
    if config.method != "stl":
        shared = {
            "shared": [p for m in model.shared() for p in m.parameters()],
            "last": list(model.lin1.parameters()),
            "representation": None,
        }[config.gradients]
        weighting = mw.get(config.method, shared=shared, tasks=names, **config.method_options)
    groups: list[dict[str, Any]] = [{"params": list(model.parameters()), "lr": config.lr}]
    if weighting is not None and list(weighting.parameters()):
        groups.append({"params": list(weighting.parameters()), "lr": config.method_lr})
    optimizer = torch.optim.Adam(groups)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", factor=config.plateau_factor,
        patience=config.plateau_patience, min_lr=config.min_lr,
    )  # fmt: skip
    refs = _references(config, scaler)
    state: dict[str, Any] = {
        "epoch": 0, "best": math.inf, "best_epoch": None, "val_mae": None, "test_mae": None,
        "history": [], "step_seconds": [], "train_seconds": 0.0, "eval_seconds": 0.0,
    }  # fmt: skip
    if checkpoint_path.exists():
        saved = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
        old = RunConfig.from_json(saved["config"])
        if old != config:
            raise ValueError(
                f"{checkpoint_path} belongs to another configuration "
                f"({'; '.join(config.differences(old))}): delete it to start anew"
            )
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        if weighting is not None:
            weighting.load_state_dict(saved["weighting"])
        torch.set_rng_state(saved["rng"]["torch"])
        if "cuda" in saved["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(saved["rng"]["cuda"])
        state = saved["state"]
        log(f"{config.name}: resumed after epoch {state['epoch']}")
    stl_index = names.index(str(config.task)) if config.method == "stl" else None
    done_epochs = 0
    while state["epoch"] < config.epochs:
        if max_epochs is not None and done_epochs >= max_epochs:
            break
        epoch = state["epoch"]
        order = torch.randperm(
            train_idx.shape[0],
            generator=torch.Generator().manual_seed(config.seed * 100_003 + epoch),
        )
        start = time.perf_counter()
        for chunk in _batches(train_idx[order], config.batch_size):
            t0 = time.perf_counter()
            batch = to_device(collate(graphs, chunk, y_all[chunk], config.graph), device)
            out, z = model(batch)
            optimizer.zero_grad(set_to_none=True)
            if stl_index is not None:
                torch.autograd.backward(F.mse_loss(out[:, stl_index], batch.y[:, stl_index]))
            else:
                assert weighting is not None
                losses = {n: F.mse_loss(out[:, i], batch.y[:, i]) for i, n in enumerate(names)}
                if config.gradients == "representation":
                    weighting.backward(losses, representation=z)
                else:
                    weighting.backward(losses)
            optimizer.step()
            state["step_seconds"].append(time.perf_counter() - t0)
        state["train_seconds"] += time.perf_counter() - start
        start = time.perf_counter()
        val = evaluate(model, graphs, val_idx, y_all[val_idx], scaler, config, device)
        criterion = _criterion(config, val, refs)
        scheduler.step(criterion)
        improved = criterion <= state["best"]
        if improved:  # the test set is scored once, at the end, with the best weights
            state.update(best=criterion, best_epoch=epoch, val_mae=val, test_mae=None)
            state["best_model"] = {k: v.clone() for k, v in model.state_dict().items()}
        state["eval_seconds"] += time.perf_counter() - start
        state["history"].append(
            {"epoch": epoch, "val_criterion": criterion, "lr": optimizer.param_groups[0]["lr"]}
        )
        state["epoch"] = epoch + 1
        done_epochs += 1
        _atomic_save(
            checkpoint_path,
            {
                "config": config.to_json(),
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "weighting": weighting.state_dict() if weighting is not None else None,
                "rng": _rng_state(),
                "state": state,
            },
        )
        log(
            f"{config.name}: epoch {epoch + 1}/{config.epochs} val criterion {criterion:.4f}"
            f"{' (best)' if improved else ''} lr {optimizer.param_groups[0]['lr']:.2g} "
            f"{statistics.median(state['step_seconds']):.3f} s/step"
        )
    finished = state["epoch"] >= config.epochs
    if finished and state["test_mae"] is None and "best_model" in state:
        start = time.perf_counter()
        current = {k: v.clone() for k, v in model.state_dict().items()}
        model.load_state_dict(state["best_model"])
        state["test_mae"] = evaluate(
            model, graphs, test_idx, y_all[test_idx], scaler, config, device
        )
        model.load_state_dict(current)
        state["eval_seconds"] += time.perf_counter() - start
    mean_mae = (y_all[test_idx].double() * scaler.std).abs().mean(0).tolist()
    return {
        "config": config.to_json(),
        "name": config.name,
        "tasks": names,
        "heads": heads,
        "units": [TARGETS[t][1] for t in config.targets],
        "finished": finished,
        "epochs_done": state["epoch"],
        "best_epoch": state["best_epoch"],
        "val_mae": state["val_mae"],
        "test_mae": state["test_mae"],
        "mean_predictor_test_mae": mean_mae,
        "history": state["history"],
        "steps": len(state["step_seconds"]),
        "median_step_seconds": statistics.median(state["step_seconds"])
        if state["step_seconds"]
        else None,
        "train_seconds": state["train_seconds"],
        "eval_seconds": state["eval_seconds"],
        "weights": dict(weighting.weights) if weighting is not None and weighting.weights else None,
        "train_molecules": int(train_idx.shape[0]),
        "device": str(device),
    }
