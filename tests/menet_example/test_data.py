"""Paired folders, crops, built-in images, synthetic pairs and image file I/O."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from menet.data import (
    PairedFolder,
    RandomCropPairs,
    SyntheticRainPairs,
    TenCropPairs,
    builtin_images,
    load_split,
    ten_crop,
    ten_crops,
)
from menet.images import quantize, read_bit_depth, read_image, write_image

MakeImage = Callable[[int, int, int], torch.Tensor]


# --------------------------------------------------------------------------- PairedFolder


def test_rain100l_layout(rain100l_folder: Path) -> None:
    data = PairedFolder(rain100l_folder)
    assert len(data) == 4
    assert data.ids == [1, 2, 3, 4]
    assert data.names == ["rain-001", "rain-002", "rain-003", "rain-004"]
    assert [p[1].name for p in data.pairs] == [f"norain-00{i}.png" for i in range(1, 5)]
    rainy, clean = data[2]
    assert rainy.shape == clean.shape == (3, 36, 40)
    assert rainy.dtype == torch.float32
    assert torch.equal(clean, read_image(rain100l_folder / "norain" / "norain-003.png"))
    assert bool((rainy >= clean - 1e-6).all())  # the fixture's rain only brightens


def test_rain100h_layout_and_id_selection(rain100h_folder: Path) -> None:
    data = PairedFolder(rain100h_folder)
    assert data.ids == [1, 2, 10]  # numeric, not lexicographic, order
    sub = PairedFolder(rain100h_folder, ids=[10, 1])
    assert sub.ids == [10, 1] and sub.names == ["10", "1"]
    assert torch.equal(sub[0][1], data[2][1])


def test_pairs_csv_is_preferred(rain100l_folder: Path) -> None:
    # deliberately cross the pairs in the CSV: the CSV must win over the name rule
    (rain100l_folder / "pairs.csv").write_text(
        "rain,norain\nrain/rain-001.png,norain/norain-002.png\n"
        "rain/rain-002.png,norain/norain-001.png\n"
    )
    data = PairedFolder(rain100l_folder)
    assert len(data) == 2
    assert data.pairs[0][1].name == "norain-002.png"
    assert PairedFolder(rain100l_folder, ids=[2]).pairs[0][1].name == "norain-001.png"


def test_bad_csv(rain100l_folder: Path) -> None:
    (rain100l_folder / "pairs.csv").write_text("input,target\na.png,b.png\n")
    with pytest.raises(ValueError, match="header must contain 'rain,norain'"):
        PairedFolder(rain100l_folder)
    (rain100l_folder / "pairs.csv").write_text("rain,norain\nrain/rain-001.png,norain/x.png\n")
    with pytest.raises(FileNotFoundError, match=r"line 2: file not found: .*x\.png"):
        PairedFolder(rain100l_folder)


def test_missing_partner_is_named(rain100l_folder: Path) -> None:
    (rain100l_folder / "norain" / "norain-003.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"rain-003\.png: expected .*norain-003\.png"):
        PairedFolder(rain100l_folder)


def test_unknown_id_is_named(rain100l_folder: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"no pair with id\(s\) \[7, 9\]"):
        PairedFolder(rain100l_folder, ids=[1, 7, 9])


def test_size_mismatch_names_both_files(rain100l_folder: Path) -> None:
    write_image(torch.zeros(3, 10, 10), rain100l_folder / "norain" / "norain-002.png")
    with pytest.raises(ValueError, match=r"size mismatch: .*rain-002\.png is 40x36 but "
                                          r".*norain-002\.png is 10x10"):
        PairedFolder(rain100l_folder)


def test_unreadable_file_is_named(rain100l_folder: Path) -> None:
    (rain100l_folder / "rain" / "rain-004.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"cannot read image .*rain-004\.png"):
        PairedFolder(rain100l_folder)
    with pytest.raises(ValueError, match=r"cannot read image .*rain-004\.png"):
        read_image(rain100l_folder / "rain" / "rain-004.png")


def test_missing_folder_and_layout(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="dataset folder not found"):
        PairedFolder(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match=r"expected pairs\.csv or the folders"):
        PairedFolder(tmp_path)


def test_cache_and_transform(rain100l_folder: Path) -> None:
    data = PairedFolder(rain100l_folder, cache=True, transform=lambda r, c: (r * 0, c))
    rainy, _ = data[0]
    assert float(rainy.abs().sum()) == 0
    assert data.load(0)[1] is data.load(0)[1]  # decoded once
    assert data[-1][1].shape == (3, 36, 40)
    with pytest.raises(IndexError):
        data[4]


def test_a_folder_given_twice_is_sampled_twice_and_read_once(rain100l_folder: Path,
                                                              rain100h_folder: Path) -> None:
    from torch.utils.data import ConcatDataset

    from menet import PairSource, build_pairs

    spelled = [str(rain100l_folder), str(rain100l_folder / ".." / rain100l_folder.name),
               str(rain100h_folder)]
    pairs = build_pairs(PairSource(data=spelled, cache=True))
    assert isinstance(pairs, ConcatDataset)
    first, again, other = pairs.datasets
    assert first is again and first is not other  # one reader (and cache) per folder
    n = len(first)
    assert len(pairs) == 2 * n + len(other)
    for i in range(n):  # both copies give the same decoded tensors
        assert pairs[i][0] is pairs[n + i][0]
    torch.testing.assert_close(pairs[2 * n][1], other[0][1])


def test_load_split(tmp_path: Path) -> None:
    f = tmp_path / "split.json"
    f.write_text(json.dumps({"description": "d", "duplicate_backgrounds": [[3, 4]],
                             "train": [1, 2], "test": [3]}))
    assert load_split(f) == {"train": [1, 2], "test": [3]}
    f.write_text("{")
    with pytest.raises(ValueError, match="cannot read split file"):
        load_split(f)


@pytest.mark.data
def test_real_rain100_test_split(data_root: Path) -> None:
    split = load_split(data_root / "rain100-split.json")
    assert len(split["train"]) == 72 and len(split["test"]) == 28
    assert not set(split["train"]) & set(split["test"])
    light = PairedFolder(data_root / "Rain100L", ids=split["test"])
    heavy = PairedFolder(data_root / "Rain100H", ids=split["test"])
    assert light.ids == heavy.ids == split["test"]
    assert light.names[0] == f"rain-{split['test'][0]:03d}"
    rainy, clean = light[0]
    assert rainy.shape == clean.shape and sorted(rainy.shape[1:]) == [321, 481]
    assert sorted(heavy[0][0].shape[1:]) == [320, 480]


# --------------------------------------------------------------------------- crops


def test_ten_crops_order_and_positions() -> None:
    x = torch.arange(6 * 7.0).reshape(1, 6, 7)
    c = ten_crops(x, 3)
    assert c.shape == (10, 1, 3, 3)
    assert torch.equal(c[0], x[:, :3, :3])
    assert torch.equal(c[1], x[:, :3, 4:])
    assert torch.equal(c[2], x[:, 3:, :3])
    assert torch.equal(c[3], x[:, 3:, 4:])
    assert torch.equal(c[4], x[:, 2:5, 2:5])  # round(1.5) = 2, round(2) = 2
    flipped = x.flip(-1)
    for k in range(5):
        assert torch.equal(c[5 + k], ten_crops(flipped, 3)[k])
    # corners of the flipped image are mirrored corners of the image
    assert torch.equal(c[5], c[1].flip(-1)) and torch.equal(c[8], c[2].flip(-1))


@settings(max_examples=25, deadline=None)
@given(h=st.integers(1, 12), w=st.integers(1, 12), size=st.integers(1, 6), k=st.integers(0, 9))
def test_ten_crop_matches_ten_crops(h: int, w: int, size: int, k: int) -> None:
    x = torch.rand(2, h, w)
    if h < size or w < size:
        with pytest.raises(ValueError, match=f"smaller than the crop size {size}x{size}"):
            ten_crops(x, size)
        return
    assert torch.equal(ten_crop(x, k, size), ten_crops(x, size)[k])


def test_ten_crop_pairs_are_aligned() -> None:
    rainy = torch.rand(3, 9, 11)
    clean = rainy * 0.5
    data = TenCropPairs([(rainy, clean)] * 2, size=5)
    assert len(data) == 20
    for i in range(len(data)):
        r, c = data[i]
        assert r.shape == (3, 5, 5)
        assert torch.equal(c, r * 0.5)
        assert torch.equal(r, ten_crops(rainy, 5)[i % 10])


def test_random_crop_pairs_are_seeded_aligned_and_vary_by_epoch() -> None:
    rainy = torch.rand(3, 20, 24)
    pairs = [(rainy, rainy + 1.0)]
    data = RandomCropPairs(pairs, size=6, samples_per_image=8, seed=5)
    again = RandomCropPairs(pairs, size=6, samples_per_image=8, seed=5)
    crops = [data[i] for i in range(8)]
    for i, (r, c) in enumerate(crops):
        assert r.shape == (3, 6, 6)
        assert torch.equal(c, r + 1.0)
        assert torch.equal(r, again[i][0])
    assert len({tuple(r.flatten()[:3].tolist()) for r, _ in crops}) > 1
    data.set_epoch(1)
    assert any(not torch.equal(data[i][0], crops[i][0]) for i in range(8))


def test_random_crop_flips_are_used() -> None:
    grid = torch.arange(16.0).reshape(1, 4, 4)
    data = RandomCropPairs([(grid, grid)], size=4, samples_per_image=40, seed=0)
    seen = {tuple(data[i][0].flatten().tolist()) for i in range(40)}
    assert len(seen) == 4  # identity, h-flip, v-flip, both
    plain = RandomCropPairs([(grid, grid)], size=4, flips=False, samples_per_image=5)
    assert all(torch.equal(plain[i][0], grid) for i in range(5))
    with pytest.raises(ValueError, match="smaller than the crop size 5"):
        RandomCropPairs([(grid, grid)], size=5)[0]


# --------------------------------------------------------------------------- built-in / synthetic


@pytest.mark.usefixtures("no_network")
def test_builtin_images_load_offline() -> None:
    images = builtin_images()
    assert len(images) >= 5
    for name, img in images:
        assert img.dim() == 3 and img.shape[0] == 3, name
        assert img.dtype == torch.float32
        assert float(img.min()) >= 0 and float(img.max()) <= 1
        assert min(img.shape[1:]) >= 300
        assert not torch.equal(img[0], img[1]), f"{name} is greyscale"


def test_synthetic_rain_pairs_deterministic(make_image: MakeImage) -> None:
    images = [("a", make_image(0, 16, 20)), ("b", make_image(1, 18, 16))]
    data = SyntheticRainPairs(images, preset="heavy", seed=3, repeats=2)
    assert len(data) == 4 and data.names == ["a", "b"]
    r0, c0 = data[0]
    assert torch.equal(c0, images[0][1])
    assert torch.equal(r0, SyntheticRainPairs(images, preset="heavy", seed=3, repeats=2)[0][0])
    assert not torch.equal(r0, data[2][0])  # same image, second rain pattern
    assert not torch.equal(r0, SyntheticRainPairs(images, preset="heavy", seed=4)[0][0])
    plain = SyntheticRainPairs([make_image(0, 8, 8)], density=0.3, opacity=0.0, haze=0.0)
    assert torch.equal(plain[0][0], plain[0][1])
    with pytest.raises(ValueError, match="'density' must be in"):
        SyntheticRainPairs(images, density=2.0)


# --------------------------------------------------------------------------- image I/O


def test_png_round_trip(tmp_path: Path) -> None:
    x = quantize(torch.rand(3, 5, 7))
    write_image(x, tmp_path / "sub" / "a.png")
    assert torch.equal(read_image(tmp_path / "sub" / "a.png"), x)
    assert read_bit_depth(tmp_path / "sub" / "a.png") == 8


def test_sixteen_bit(tmp_path: Path) -> None:
    x = quantize(torch.rand(3, 5, 7), bits=16)
    write_image(x, tmp_path / "a.tif", bits=16)
    assert read_bit_depth(tmp_path / "a.tif") == 16
    torch.testing.assert_close(read_image(tmp_path / "a.tif"), x, atol=1e-6, rtol=0)
    write_image(x, tmp_path / "a.png", bits=16)
    assert read_bit_depth(tmp_path / "a.png") == 16
    # Pillow reads 16-bit colour PNG at 8-bit precision
    torch.testing.assert_close(read_image(tmp_path / "a.png"), x, atol=1 / 255, rtol=0)
    grey = np.array([[0, 1000, 65535]], dtype=np.uint16)
    write_image(torch.from_numpy(grey / 65535.0).float()[None], tmp_path / "g.png", bits=16)
    got = read_image(tmp_path / "g.png")
    assert got.shape == (3, 1, 3)
    torch.testing.assert_close(got[1, 0], torch.tensor([0.0, 1000 / 65535, 1.0]))
    with pytest.raises(ValueError, match=r"16-bit output needs \.png or \.tif"):
        write_image(x, tmp_path / "a.jpg", bits=16)


def test_greyscale_palette_bilevel(tmp_path: Path) -> None:
    Image.fromarray(np.array([[0, 128, 255]], dtype=np.uint8)).save(tmp_path / "g.png")
    g = read_image(tmp_path / "g.png")
    assert g.shape == (3, 1, 3) and torch.equal(g[0], g[2])
    torch.testing.assert_close(g[0, 0], torch.tensor([0, 128 / 255, 1.0]))
    pal = Image.new("P", (2, 1))
    pal.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    pal.putpixel((1, 0), 1)
    pal.save(tmp_path / "p.png")
    p = read_image(tmp_path / "p.png")
    assert p[:, 0, 0].tolist() == [1.0, 0.0, 0.0] and p[:, 0, 1].tolist() == [0.0, 0.0, 1.0]
    Image.new("1", (3, 2), 1).save(tmp_path / "b.bmp")
    assert torch.equal(read_image(tmp_path / "b.bmp"), torch.ones(3, 2, 3))


def test_alpha_composite_or_drop(tmp_path: Path) -> None:
    rgba = np.zeros((1, 2, 4), dtype=np.uint8)
    rgba[0, 0] = (255, 0, 0, 0)  # fully transparent red
    rgba[0, 1] = (0, 0, 255, 255)  # opaque blue
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    comp = read_image(tmp_path / "a.png")
    assert comp[:, 0, 0].tolist() == [1.0, 1.0, 1.0]  # onto white
    assert comp[:, 0, 1].tolist() == [0.0, 0.0, 1.0]
    drop = read_image(tmp_path / "a.png", alpha="drop")
    assert drop[:, 0, 0].tolist() == [1.0, 0.0, 0.0]


def test_jpeg_and_errors(tmp_path: Path) -> None:
    x = torch.full((3, 8, 8), 0.5)
    write_image(x, tmp_path / "a.jpg")
    torch.testing.assert_close(read_image(tmp_path / "a.jpg"), x, atol=2 / 255, rtol=0)
    with pytest.raises(FileNotFoundError, match=r"image file not found: .*missing\.png"):
        read_image(tmp_path / "missing.png")
    with pytest.raises(ValueError, match=r"write_image\(.*b\.png\): expected \(C, H, W\) with C"):
        write_image(torch.zeros(5, 3, 3), tmp_path / "b.png")
    with pytest.raises(ValueError, match="alpha must be"):
        read_image(tmp_path / "a.jpg", alpha="keep")  # type: ignore[arg-type]
