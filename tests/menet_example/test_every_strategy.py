"""MENET trains with every registered mtlweight strategy through the same training code.

Issue 6 asks that every method works on MENET as on a toy model: one name on the
command line is all that changes. Each run is two optimizer steps on tiny data.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import mtlweight as mw
from menet.train import TrainConfig, build_weighting, train

LOSSES = ("pixel", "edge", "texture")


@pytest.mark.slow
@pytest.mark.parametrize("name", mw.available())
def test_training_with_every_strategy(name: str, rain100l_folder: Path, tmp_path: Path) -> None:
    config = TrainConfig(
        data=str(rain100l_folder),
        out=str(tmp_path / name),
        variant="shallow",
        patches="random",
        patch_size=32,
        patches_per_image=1,
        batch_size=2,
        steps=2,
        losses=LOSSES,
        weighting=name,
        progress=False,
        device="cpu",
    )
    result = train(config)
    assert result.step == 2 and result.last is not None
    assert set(result.last.weights) == set(LOSSES)
    assert all(math.isfinite(w) for w in result.last.weights.values())
    assert all(math.isfinite(v) for v in result.last.losses.values())
    assert all(torch.isfinite(p).all() for p in result.model.parameters())


@pytest.mark.parametrize("name", ["uncertainty", "imtl_l"])
def test_learnable_strategy_parameters_are_trained(name: str) -> None:
    """Strategies with learnable per-task parameters get the loss names as tasks."""
    from menet.model import MENET

    weighting = build_weighting(name, MENET(blocks=1), list(LOSSES))
    assert weighting.tasks == list(LOSSES)
    assert sum(p.numel() for p in weighting.parameters()) == len(LOSSES)
