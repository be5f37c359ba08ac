"""A short training on real Rain100L pairs beats the rainy input on held-out test images.

Uses ``../shared/data`` (or ``$MTLWEIGHT_DATA``): the Rain100L pairs and the
background-disjoint ``rain100-split.json``. Training sees only the ``train``
ids; scoring uses ``test`` ids (standard protocol: Y channel, full image).
Skipped when the data is absent.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from menet.data import PairedFolder, load_split
from menet.evaluate import evaluate_pairs, summarize
from menet.train import TrainConfig, train

DATA = Path(
    os.environ.get("MTLWEIGHT_DATA")
    or Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
)
RAIN100L = DATA / "Rain100L"
SPLIT = DATA / "rain100-split.json"

pytestmark = [
    pytest.mark.data,
    pytest.mark.skipif(
        not (RAIN100L.is_dir() and SPLIT.is_file()),
        reason=f"benchmark data not found at {DATA} (set MTLWEIGHT_DATA)",
    ),
]

#: Test ids scored (a few, to stay fast): the first ones of the split's test list.
N_TEST = 4


@pytest.mark.slow
def test_short_training_on_rain100l_beats_the_input(tmp_path: Path) -> None:
    """Shallow MENET, GB on pixel+edge+texture, 150 steps of 8 random 64 px patches.

    The network starts as the identity (``zero_init_residual``), so any
    learning shows up as a PSNR gain over the rainy input on unseen images.
    """
    config = TrainConfig(
        data=str(RAIN100L),
        split=str(SPLIT),
        split_key="train",
        patches="random",
        patch_size=64,
        patches_per_image=2,
        batch_size=8,
        variant="shallow",
        zero_init_residual=True,
        weighting="gb",
        epochs=None,
        steps=150,
        seed=0,
        device="cpu",
        progress=False,
        out=str(tmp_path / "run"),
    )
    result = train(config)
    assert result.step == 150
    test_ids = load_split(SPLIT)["test"][:N_TEST]
    pairs = PairedFolder(RAIN100L, ids=test_ids)
    with torch.inference_mode():
        summary = summarize(evaluate_pairs(result.model, pairs, "standard", progress=False))
    print(
        f"Rain100L test ids {test_ids} (standard protocol, Y): input "
        f"{summary['input_psnr']:.2f} dB -> output {summary['output_psnr']:.2f} dB"
    )
    assert summary["output_psnr"] > summary["input_psnr"] + 0.5
    assert summary["output_ssim"] > summary["input_ssim"]
