"""Fixtures for the menet tests: tiny paired folders in the Rain100L/Rain100H layouts."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from menet.images import quantize, write_image
from menet.rain import synthesize_rain

REPO = Path(__file__).resolve().parents[2]


def shared_data() -> Path:
    """``$MTLWEIGHT_DATA`` or ``<repo>/../shared/data``."""
    env = os.environ.get("MTLWEIGHT_DATA")
    return Path(env) if env else REPO / ".." / "shared" / "data"


def smooth_image(seed: int, h: int, w: int) -> torch.Tensor:
    """A deterministic natural-ish clean image: smooth colour gradients plus texture."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, 4, 4, generator=g)
    img = torch.nn.functional.interpolate(
        coarse, size=(h, w), mode="bilinear", align_corners=False
    )[0]
    img = img + 0.05 * torch.rand(3, h, w, generator=g)
    return quantize(img.clamp(0, 1))


def _make_pairs(root: Path, names: list[tuple[str, str]], h: int, w: int) -> Path:
    (root / "rain").mkdir(parents=True, exist_ok=True)
    (root / "norain").mkdir(parents=True, exist_ok=True)
    for i, (rain_name, norain_name) in enumerate(names):
        clean = smooth_image(i, h, w)
        rainy = quantize(synthesize_rain(clean, preset="light", density=0.02, seed=i))
        write_image(rainy, root / "rain" / rain_name)
        write_image(clean, root / "norain" / norain_name)
    return root


@pytest.fixture
def rain100l_folder(tmp_path: Path) -> Path:
    """4 pairs ``rain/rain-00X.png`` <-> ``norain/norain-00X.png`` (X = 1..4), 36x40."""
    names = [(f"rain-{i:03d}.png", f"norain-{i:03d}.png") for i in range(1, 5)]
    return _make_pairs(tmp_path / "Rain100L", names, 36, 40)


@pytest.fixture
def rain100h_folder(tmp_path: Path) -> Path:
    """3 pairs ``rain/N.png`` <-> ``norain/N.png`` (N = 1, 2, 10), 40x36."""
    names = [(f"{i}.png", f"{i}.png") for i in (1, 2, 10)]
    return _make_pairs(tmp_path / "Rain100H", names, 40, 36)


@pytest.fixture
def data_root() -> Path:
    """The real benchmark data; skips the test when absent."""
    root = shared_data()
    if not (root / "Rain100L" / "pairs.csv").is_file():
        pytest.skip(f"benchmark data not found at {root}")
    return root


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any attempt to open a network connection fail."""
    import socket

    def refuse(*args: object, **kwargs: object) -> None:
        raise RuntimeError("network access attempted in a test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


@pytest.fixture
def make_image() -> Callable[[int, int, int], torch.Tensor]:
    """``make_image(seed, h, w)``: a deterministic smooth clean ``(3, h, w)`` image."""
    return smooth_image


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)
