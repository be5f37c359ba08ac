"""The two presets of the QM9 benchmark and the configuration of one run.

``paper`` is the protocol of the Nash-MTL paper's code (which the FAMO paper's
code reuses): targets ``[0, 1, 2, 3, 5, 6, 12, 13, 14, 15, 11]`` of PyG's
``QM9`` (mu, alpha, homo, lumo, r2, zpve, the atomisation energies U0, U, H,
G, and cv), standardised with the training molecules' mean and standard
deviation; a random 110,831 / 10,000 / 10,000 split; the MPNN with dim 64 on
the complete graph; 300 epochs of batches of 120; Adam at 1e-3 (the
weighting's own parameters at 0.025); ReduceLROnPlateau (factor 0.7,
patience 5, min 1e-5) on the validation criterion after each epoch; the test
MAE of the epoch with the best validation criterion; gradient-level methods on
the shared parameters.

``cpu`` keeps the data protocol (targets, standardisation, the same 10,000
validation and 10,000 test molecules) and scales the training down so that the
whole table runs on one core: a fixed subset of training molecules, fewer
epochs, a narrower MPNN on the bond graph, a patience of one epoch, and
gradient-level methods on the graph embedding (``representation=``).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from .data import PAPER_TARGETS, TARGETS

__all__ = ["GRADIENTS", "PRESETS", "RunConfig", "preset"]

GRADIENTS = ("shared", "last", "representation")


@dataclass(frozen=True)
class RunConfig:
    """Everything that decides the result of one run (stored with the run)."""

    protocol: str = "paper"
    method: str = "equal"  # an mtlweight name, or "stl" (one task, ``task``)
    task: str | None = None  # the task of an "stl" run
    seed: int = 0
    targets: tuple[int, ...] = PAPER_TARGETS
    split_seed: int = 0
    val_size: int = 10_000
    test_size: int = 10_000
    train_size: int | None = None  # None: every training molecule
    epochs: int = 300
    batch_size: int = 120
    lr: float = 1e-3
    method_lr: float = 0.025
    plateau_factor: float = 0.7
    plateau_patience: int = 5
    min_lr: float = 1e-5
    dim: int = 64
    edge_hidden: int = 128
    passes: int = 3
    graph: str = "complete"
    #: what gradient-level methods differentiate: "shared" (the trunk's parameters),
    #: "last" (the last shared layer, lin1) or "representation" (the graph embedding)
    gradients: str = "shared"
    method_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        names = self.task_names
        if self.method == "stl" and self.task not in names:
            raise ValueError(f"an 'stl' run needs task= one of {names}; found {self.task!r}")
        if self.method != "stl" and self.task is not None:
            raise ValueError(f"task= is for 'stl' runs only; method is {self.method!r}")
        if self.gradients not in GRADIENTS:
            raise ValueError(f"gradients must be one of {GRADIENTS}; found {self.gradients!r}")
        if self.graph not in ("complete", "bonds"):
            raise ValueError(f"graph must be 'complete' or 'bonds'; found {self.graph!r}")
        bad = [t for t in self.targets if not 0 <= t < len(TARGETS)]
        if bad or len(set(self.targets)) != len(self.targets):
            raise ValueError(
                f"targets must be distinct indices in 0..{len(TARGETS) - 1}; found {self.targets}"
            )

    @property
    def task_names(self) -> list[str]:
        return [TARGETS[t][0] for t in self.targets]

    @property
    def name(self) -> str:
        """The run's file name: method (task), lr if not the preset's, gradients, seed."""
        parts = [self.method if self.task is None else f"stl-{self.task}"]
        base = PRESETS.get(self.protocol, {})
        if self.lr != base.get("lr", 1e-3):
            parts.append(f"lr{self.lr:g}")
        if self.method != "stl" and self.gradients != base.get("gradients", "shared"):
            parts.append(self.gradients)
        if self.method_options:
            parts.append("-".join(f"{k}{v}" for k, v in sorted(self.method_options.items())))
        parts.append(f"s{self.seed}")
        return "-".join(parts)

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["targets"] = list(self.targets)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunConfig:
        data = dict(data)
        data["targets"] = tuple(data["targets"])
        return cls(**data)

    def differences(self, other: RunConfig) -> list[str]:
        """``field: mine != other's`` for every field that differs."""
        mine, theirs = self.to_json(), other.to_json()
        return [f"{k}: {mine[k]!r} != {theirs[k]!r}" for k in mine if mine[k] != theirs[k]]


PRESETS: dict[str, dict[str, Any]] = {
    "paper": {},  # the defaults of RunConfig
    "cpu": {
        "train_size": 10_000,
        "epochs": 5,
        "dim": 32,
        "graph": "bonds",
        "plateau_patience": 1,
        "gradients": "representation",
    },
}


def preset(protocol: str, **overrides: Any) -> RunConfig:
    """The configuration of ``protocol`` with ``overrides`` (``None`` values ignored)."""
    if protocol not in PRESETS:
        raise ValueError(f"unknown protocol {protocol!r}; choose from {sorted(PRESETS)}")
    values = {"protocol": protocol, **PRESETS[protocol]}
    values.update({k: v for k, v in overrides.items() if v is not None})
    return RunConfig(**values)


def dumps(config: RunConfig) -> str:
    return json.dumps(config.to_json(), sort_keys=True)
