"""Shared fixtures: a tiny seeded multi-task model (shared trunk + three heads).

The model class and the property checks live in ``tests/helpers.py`` so that
hypothesis tests (which cannot use function-scoped fixtures) build their own.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))

from helpers import TinyMultiTask

TASKS = ("pixel", "edge", "texture")

# Tests use tiny tensors, where a second intra-op thread costs more than it
# brings, and pytest-xdist already runs one worker per core.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed() -> None:
    """Every test starts from the same global RNG state."""
    torch.manual_seed(0)


@pytest.fixture
def model() -> TinyMultiTask:
    """A tiny three-task model; ``model.losses()`` runs a fresh forward pass."""
    return TinyMultiTask(TASKS, seed=0)


@pytest.fixture
def shared(model: TinyMultiTask) -> list[Tensor]:
    """The shared parameters of :func:`model`: its trunk's weight and bias."""
    return list(model.trunk.parameters())
