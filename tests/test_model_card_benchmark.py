"""benchmarks/model_card.py: the card's command line and its Markdown, from a stand-in card."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

pytest.importorskip("menet")
model_card = pytest.importorskip("model_card")

CONFIG: dict[str, Any] = {
    "data": ["../shared/data/Rain100L", "../shared/data/Rain100H"],
    "split": "../shared/data/rain100-split.json", "split_key": "train", "patches": "random",
    "patch_size": 128, "patches_per_image": 8, "batch_size": 16, "steps": 12000,
    "weighting": "gb", "seed": 0, "lr_schedule": "cosine", "texture_normalize": True,
    "zero_init_residual": True, "clip_grad_norm": 1.0, "amp": True,
}


def test_reproduce_command_spells_out_the_recipe() -> None:
    cmd = model_card.reproduce_command(CONFIG)
    assert cmd.startswith("python -m menet train --data ../shared/data/Rain100L "
                          "../shared/data/Rain100H ")
    for part in ("--steps 12000", "--batch-size 16", "--patch-size 128", "--weighting gb",
                 "--lr-schedule cosine", "--texture-mean", "--zero-init-residual",
                 "--clip-grad-norm 1", "--amp", "--out RUN"):
        assert part in cmd, part
    plain = model_card.reproduce_command({**CONFIG, "amp": False, "texture_normalize": False,
                                          "clip_grad_norm": None})
    assert "--amp" not in plain and "--texture-sum" in plain and "--clip-grad-norm" not in plain


def _card(l_psnr: float, h_psnr: float, note: str = "") -> dict[str, Any]:
    def s(out: float) -> dict[str, float]:
        return {"input_psnr": 20.0, "input_ssim": 0.5, "output_psnr": out, "output_ssim": 0.9}

    return {
        "scores": {"Rain100L": {"standard": s(l_psnr), "paper": s(l_psnr - 2)},
                   "Rain100H": {"standard": s(h_psnr), "paper": s(h_psnr - 2)}},
        "training": {"train_images": 72, "steps": 12000, "batch_size": 16, "patch_size": 128,
                     "weighting": "gb", "texture_normalize": True, "amp": True,
                     "wall_seconds": 5400.0},
        "machine": {"cpu": "Some CPU", "logical_cpus": 2}, "file_bytes": 2**20,
        "command": model_card.reproduce_command(CONFIG), "note": note,
    }


def test_render_marks_each_target() -> None:
    md = model_card.render(_card(35.8, 25.9))
    assert "| Rain100L | Y, full image | 20.00 / 0.5000 | 35.80 / 0.9000 | ≥ 35.7 dB (met) |" in md
    assert "| Rain100H | Y, full image | 20.00 / 0.5000 | 25.90 / 0.9000 | ≥ 26.0 dB (NOT met) |" \
        in md
    assert "12000 steps of 16 random 128 px crops" in md and "90 min wall time" in md
    assert "1.00 MiB" in md and "Note:" not in md


def test_render_carries_the_note() -> None:
    md = model_card.render(_card(30.0, 20.0, note="paused 200 s"))
    assert "Note: paused 200 s" in md
    assert md.index("Note: paused 200 s") < md.index("Reproduce:")
