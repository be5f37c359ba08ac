"""Shared fixtures for the image-loss tests."""

from __future__ import annotations

import pytest
import torch

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=DEVICES)
def device(request: pytest.FixtureRequest) -> torch.device:
    """Every device available here: CPU always, CUDA when present."""
    return torch.device(request.param)
