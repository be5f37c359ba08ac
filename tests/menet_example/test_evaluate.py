"""Evaluation protocols, records, CSV and plots."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio as _sk_psnr
from skimage.metrics import structural_similarity
from torch import Tensor

from menet.data import PairedFolder, load_split, ten_crops
from menet.evaluate import (
    ImageRecord,
    evaluate_pairs,
    plot_psnr_histogram,
    plot_ssim_box,
    save_grid,
    summarize,
    write_csv,
)
from menet.images import quantize
from menet.model import MENET

OFFSET = 10 / 255


def y_numpy(rgb: np.ndarray) -> np.ndarray:
    """BT.601 luma of (3, H, W) in [0, 1], written out independently of menet."""
    r, g, b = rgb.astype(np.float64)
    return np.asarray(16 + 65.481 * r + 128.553 * g + 24.966 * b)


def sk_psnr(a: np.ndarray, b: np.ndarray, data_range: float = 255) -> float:
    return float(_sk_psnr(a, b, data_range=data_range))  # type: ignore[no-untyped-call]


def sk_ssim(a: np.ndarray, b: np.ndarray, channel_axis: int | None) -> float:
    return float(structural_similarity(  # type: ignore[no-untyped-call]
        a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255,
        channel_axis=channel_axis,
    ))


@pytest.mark.parametrize("protocol", ["paper", "standard"])
def test_identity_gives_input_scores(rain100l_folder: Path, protocol: str) -> None:
    data = PairedFolder(rain100l_folder)
    none = evaluate_pairs(None, data, protocol, crop_size=16, progress=False)  # type: ignore[arg-type]
    ident = evaluate_pairs(lambda x: x, data, protocol, crop_size=16,  # type: ignore[arg-type]
                           batch_size=3, progress=False)
    assert [r.name for r in none] == data.names and [r.id for r in none] == [1, 2, 3, 4]
    for a, b in zip(none, ident, strict=True):
        assert a.output_psnr == a.input_psnr == b.output_psnr
        assert a.output_ssim == a.input_ssim == b.output_ssim
        assert a.protocol == protocol
        assert 5 < a.input_psnr < 50 and 0 < a.input_ssim < 1


def test_standard_protocol_matches_skimage(rain100l_folder: Path) -> None:
    data = PairedFolder(rain100l_folder)
    records = evaluate_pairs(None, data, "standard", progress=False)
    for (rainy, clean), rec in zip(data, records, strict=True):
        yr, yc = y_numpy(rainy.numpy()), y_numpy(clean.numpy())
        assert rec.input_psnr == pytest.approx(
            sk_psnr(yc, yr, data_range=255), abs=1e-4)
        assert rec.input_ssim == pytest.approx(sk_ssim(yr, yc, None), abs=1e-4)


def test_paper_protocol_matches_skimage_on_crops(rain100l_folder: Path) -> None:
    data = PairedFolder(rain100l_folder, ids=[1, 2])
    records = evaluate_pairs(None, data, "paper", crop_size=24, progress=False)
    for (rainy, clean), rec in zip(data, records, strict=True):
        crops_r = ten_crops(rainy, 24).numpy() * 255
        crops_c = ten_crops(clean, 24).numpy() * 255
        crops = list(zip(crops_r, crops_c, strict=True))
        psnrs = [sk_psnr(c, r, data_range=255) for r, c in crops]
        ssims = [sk_ssim(r, c, 0) for r, c in crops]
        assert rec.input_psnr == pytest.approx(float(np.mean(psnrs)), abs=1e-4)
        assert rec.input_ssim == pytest.approx(float(np.mean(ssims)), abs=1e-4)


class Subtract(torch.nn.Module):
    """A 'model' that removes a known constant offset (and records its calls)."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))
        self.batches: list[int] = []

    def forward(self, x: Tensor) -> Tensor:
        self.batches.append(x.shape[0])
        return x - OFFSET * self.scale


@pytest.mark.parametrize("protocol", ["paper", "standard"])
def test_perfect_model_and_batching(make_image: object, protocol: str) -> None:
    clean = [quantize(make_image(i, 20, 22) * 0.8) for i in range(2)]  # type: ignore[operator]
    pairs = [(quantize(c + OFFSET), c) for c in clean]
    model = Subtract().train()
    records = evaluate_pairs(model, pairs, protocol, batch_size=4, crop_size=12,  # type: ignore[arg-type]
                             progress=False)
    assert model.training  # restored
    assert model.batches == ([4, 4, 2] * 2 if protocol == "paper" else [1, 1])
    for rec in records:
        assert math.isinf(rec.output_psnr) and rec.output_ssim == pytest.approx(1.0)
        assert rec.input_psnr < 30
        assert rec.name in ("0", "1") and rec.id is None


def test_outputs_are_quantised_before_scoring(make_image: object) -> None:
    clean = quantize(make_image(3, 16, 16))  # type: ignore[operator]
    nudge = 0.3 / 255  # below half an 8-bit step: rounds back to the clean image
    records = evaluate_pairs(lambda x: x + nudge, [(clean, clean)], "standard",  # type: ignore[arg-type]
                             progress=False)
    assert math.isinf(records[0].output_psnr)


def test_menet_runs_under_both_protocols(rain100l_folder: Path) -> None:
    torch.manual_seed(0)
    net = MENET(blocks=1)
    data = PairedFolder(rain100l_folder, ids=[1])
    for protocol in ("paper", "standard"):
        (rec,) = evaluate_pairs(net, data, protocol, crop_size=32, progress=False)  # type: ignore[arg-type]
        assert math.isfinite(rec.output_psnr) and -1 <= rec.output_ssim <= 1
    assert net.training


def test_errors(rain100l_folder: Path) -> None:
    data = PairedFolder(rain100l_folder)
    with pytest.raises(ValueError, match="protocol must be 'paper' or 'standard'"):
        evaluate_pairs(None, data, "crops", progress=False)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="smaller than the crop size 224x224"):
        evaluate_pairs(None, data, "paper", progress=False)
    bad = [(torch.zeros(3, 12, 12), torch.zeros(3, 12, 13))]
    with pytest.raises(ValueError, match="pair 0: expected two"):
        evaluate_pairs(None, bad, "standard", progress=False)


def records() -> list[ImageRecord]:
    return [
        ImageRecord("rain-001", 1, "standard", 20.0, 0.5, 30.0, 0.9),
        ImageRecord("rain-002", 2, "standard", 22.0, 0.7, 31.0, 0.8),
    ]


def test_summarize_and_csv(tmp_path: Path) -> None:
    s = summarize(records())
    assert s == pytest.approx({"input_psnr": 21.0, "input_ssim": 0.6, "output_psnr": 30.5,
                               "output_ssim": 0.85, "psnr_gain": 9.5, "count": 2.0})
    write_csv(records(), tmp_path / "out" / "scores.csv")
    with (tmp_path / "out" / "scores.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert rows[1] == {"name": "rain-002", "id": "2", "protocol": "standard",
                       "input_psnr": "22.000000", "input_ssim": "0.700000",
                       "output_psnr": "31.000000", "output_ssim": "0.800000"}
    with pytest.raises(ValueError, match="no records"):
        summarize([])


def test_plots_and_grid(tmp_path: Path) -> None:
    plot_psnr_histogram(records(), tmp_path / "hist.png")
    plot_psnr_histogram({"gb": records(), "lb": records()}, tmp_path / "hist2.png", bins=5)
    plot_ssim_box({"gb": records(), "lb": records()}, tmp_path / "box.png", title="SSIM")
    x = torch.rand(3, 10, 14)
    save_grid([(x, x * 0.5, x), (x, x, x)], tmp_path / "grid.png", row_labels=["a", "b"])
    for name in ("hist.png", "hist2.png", "box.png", "grid.png"):
        with Image.open(tmp_path / name) as img:
            assert img.size[0] > 100 and img.size[1] > 50
    with pytest.raises(ValueError, match="2 row labels for 1 rows"):
        save_grid([(x, x, x)], tmp_path / "g.png", row_labels=["a", "b"])
    with pytest.raises(ValueError, match="no records"):
        plot_ssim_box([], tmp_path / "b.png")


@pytest.mark.data
def test_real_input_scores_standard_protocol(data_root: Path) -> None:
    """Input PSNR/SSIM (Y) of a few Rain100L test pairs, checked against numpy/skimage."""
    test_ids = load_split(data_root / "rain100-split.json")["test"][:3]
    data = PairedFolder(data_root / "Rain100L", ids=test_ids)
    recs = evaluate_pairs(None, data, "standard", progress=False)
    for (rainy, clean), rec in zip(data, recs, strict=True):
        expected = sk_psnr(y_numpy(clean.numpy()), y_numpy(rainy.numpy()),
                                           data_range=255)
        assert rec.input_psnr == pytest.approx(expected, abs=1e-4)
        assert 18 < rec.input_psnr < 36  # README: per-image 18.6..33.5 (RGB), mean 26.90 Y
        assert 0.5 < rec.input_ssim < 1


@pytest.mark.data
@pytest.mark.slow
def test_real_rain100l_mean_input_psnr_matches_readme(data_root: Path) -> None:
    """All 100 Rain100L pairs: mean Y PSNR 26.90 dB (README / literature), within 0.3 dB."""
    from menet.metrics import psnr, rgb_to_y

    data = PairedFolder(data_root / "Rain100L")
    values = [float(psnr(rgb_to_y(r), rgb_to_y(c))) for r, c in data]
    assert len(values) == 100
    assert float(np.mean(values)) == pytest.approx(26.90, abs=0.3)
