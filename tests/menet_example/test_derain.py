"""Tiled de-raining: tile geometry, exact blending, tiled == untiled, file handling."""

from __future__ import annotations

import io
import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from PIL import Image
from torch import Tensor

from menet.derain import (
    _window_1d,
    apply_tiled,
    collect_inputs,
    derain_files,
    derain_image,
    tile_spans,
)
from menet.images import read_bit_depth, read_image, write_image
from menet.model import MENET
from menet.train import build_losses, build_weighting, train_step

# ----------------------------------------------------------------------------- geometry


@settings(max_examples=25, deadline=None)
@given(
    size=st.integers(1, 700),
    tile=st.integers(2, 200),
    frac=st.floats(0.0, 0.9),
    align=st.sampled_from([1, 4, 16]),
)
def test_tile_spans_cover_the_side_with_the_requested_overlap(
    size: int, tile: int, frac: float, align: int
) -> None:
    overlap = min(int(frac * tile), tile - 1)
    size = size * align if align > 1 else size  # aligned use: sizes and tiles are multiples
    tile = tile * align if align > 1 else tile
    spans = tile_spans(size, tile, overlap, align)
    assert spans[0][0] == 0 and spans[-1][1] == size
    for start, stop in spans:
        assert stop - start == min(tile, size)
        assert start % align == 0
    for (a0, a1), (b0, _) in itertools.pairwise(spans):
        assert a0 < b0 <= a1 - overlap  # increasing, overlapping by at least `overlap`


def test_tile_spans_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="overlap < tile"):
        tile_spans(100, 32, 32)
    with pytest.raises(ValueError, match="tile - overlap >= 16"):
        tile_spans(96, 32, 20, align=16)


@settings(max_examples=25, deadline=None)
@given(size=st.integers(1, 400), tile=st.integers(2, 120), frac=st.floats(0.0, 0.5),
       kind=st.sampled_from(["hann", "linear"]))
def test_blend_windows_are_a_partition_of_unity(size: int, tile: int, frac: float,
                                                kind: str) -> None:
    """Where at most two tiles meet, their ramps sum to one (where three meet,
    :func:`apply_tiled` is still exact: it divides by the sum of the weights)."""
    overlap = min(int(frac * tile), tile // 2)
    spans = tile_spans(size, tile, overlap)
    assume(all(c[0] >= a[1] for a, c in zip(spans, spans[2:], strict=False)))
    total = torch.zeros(size, dtype=torch.float64)
    for k, (start, stop) in enumerate(spans):
        w = _window_1d(spans, k, kind, torch.float64)
        assert bool((w > 0).all()) and bool((w <= 1).all())
        total[start:stop] += w
    torch.testing.assert_close(total, torch.ones(size, dtype=torch.float64), rtol=0, atol=1e-12)


@settings(max_examples=25, deadline=None)
@given(h=st.integers(1, 90), w=st.integers(1, 90), tile=st.integers(2, 40),
       frac=st.floats(0.0, 0.9), kind=st.sampled_from(["hann", "linear"]))
def test_tiling_a_pointwise_function_is_exact(h: int, w: int, tile: int, frac: float,
                                              kind: str) -> None:
    overlap = min(int(frac * tile), tile - 1)
    x = torch.rand(2, 3, h, w)

    def fn(t: Tensor) -> Tensor:  # IEEE-exact per element, whatever the tensor's layout
        return (3 * t - 1).abs()

    assert torch.equal(apply_tiled(fn, x, tile=tile, overlap=overlap, window=kind), fn(x))
    assert torch.equal(apply_tiled(lambda t: t, x, tile=tile, overlap=overlap, window=kind), x)


def test_apply_tiled_rejects_size_changing_functions() -> None:
    with pytest.raises(ValueError, match="changed the tile size"):
        apply_tiled(lambda t: t[..., 1:, :], torch.rand(1, 1, 40, 40), tile=16, overlap=4)


# ----------------------------------------------------------------------------- MENET tiling


def _streaky(h: int, w: int, seed: int) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    clean = F.avg_pool2d(torch.rand(1, 3, h, w, generator=g), 7, 1, 3)[0]
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    streaks = (((xx + 3 * yy) % 13) == 0).float() * (torch.rand(h, w, generator=g) > 0.3)
    return (clean + 0.4 * streaks).clamp(0, 1), clean


@pytest.fixture(scope="module")
def trained_net() -> MENET:
    """MENET shallow-ca after 25 steps on streaky patches (a realistic, small residual)."""
    torch.manual_seed(0)
    net = MENET.variant("shallow-ca")
    torch.nn.init.zeros_(net.last_conv.weight)
    fns = build_losses()
    weighting = build_weighting("gb", net, list(fns))
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    rainy, clean = _streaky(96, 96, 0)
    for i in range(25):
        g = torch.Generator().manual_seed(i)
        ys, xs = torch.randint(0, 64, (4,), generator=g), torch.randint(0, 64, (4,), generator=g)
        batch = [torch.stack([img[:, y : y + 32, x : x + 32] for y, x in zip(ys, xs, strict=True)])
                 for img in (rainy, clean)]
        train_step(net, (batch[0], batch[1]), fns, weighting, opt)
    return net.eval()


@pytest.mark.slow
def test_tiled_output_matches_untiled_output(trained_net: MENET) -> None:
    """Documented bound: with overlap 64, tiles of 128 px differ from the whole image by
    at most 0.015 (about 4 grey levels) and 0.001 on average (measured: 0.004 / 0.0003).

    The residual differences come from the tiles' edges (zero padding inside the
    network) and from channel attention's global average pool, which summarises
    each tile instead of the whole image.
    """
    x, _ = _streaky(200, 280, 1)
    whole = derain_image(trained_net, x, tile=None)
    assert float((whole - x).abs().mean()) > 0.005  # the model really changes the image
    tiled = derain_image(trained_net, x, tile=128, overlap=64)
    diff = (tiled - whole).abs()
    assert float(diff.max()) < 0.015
    assert float(diff.mean()) < 0.001
    # Less overlap is worse but still seam-free to a few grey levels.
    diff32 = (derain_image(trained_net, x, tile=128, overlap=32) - whole).abs()
    assert float(diff32.max()) < 0.03


def test_derain_image_shapes_and_batches(trained_net: MENET) -> None:
    x = torch.rand(2, 3, 50, 70)
    y = derain_image(trained_net, x, tile=32, overlap=8)
    assert y.shape == x.shape
    torch.testing.assert_close(derain_image(trained_net, x[1], tile=32, overlap=8), y[1])
    with pytest.raises(ValueError, match=r"expects \(3, H, W\)"):
        derain_image(trained_net, torch.rand(4, 8, 8))
    with pytest.raises(ValueError, match="overlap must be in"):
        derain_image(trained_net, torch.rand(3, 64, 64), tile=40, overlap=32)


# ----------------------------------------------------------------------------- files


@pytest.fixture
def images(tmp_path: Path) -> Path:
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    torch.manual_seed(1)
    write_image(torch.rand(3, 30, 41), src / "a.png")
    write_image(torch.rand(3, 33, 20), src / "sub" / "b.jpg")
    write_image(torch.rand(3, 17, 19), src / "c16.png", bits=16)
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    (src / "notes.txt").write_text("ignored")
    return src


def test_derain_files_keeps_size_and_format_and_reports_bad_files(
    trained_net: MENET, images: Path, tmp_path: Path
) -> None:
    err = io.StringIO()
    out = tmp_path / "out"
    report = derain_files(trained_net, [images], out, tile=32, overlap=8, stderr=err)
    assert sorted(p.relative_to(out).as_posix() for p in report.written) == [
        "a.png", "c16.png", "sub/b.jpg"]
    assert [p.name for p, _ in report.failed] == ["broken.png"]
    assert "broken.png" in err.getvalue() and not report.ok
    for rel in ("a.png", "sub/b.jpg", "c16.png"):
        src, dst = read_image(images / rel), read_image(out / rel)
        assert src.shape == dst.shape, rel
    with Image.open(out / "sub" / "b.jpg") as im:
        assert im.format == "JPEG"
    with Image.open(out / "a.png") as im:
        assert im.format == "PNG"
    assert read_bit_depth(out / "c16.png") == 16
    # The written PNG holds exactly the model's output, quantised to 8 bits.
    expected = derain_image(trained_net, read_image(images / "a.png"), tile=32, overlap=8)
    got = read_image(out / "a.png")
    np.testing.assert_allclose(got.numpy(), expected.numpy(), atol=0.5 / 255 + 1e-6)


def test_missing_input_is_reported_and_others_processed(
    trained_net: MENET, images: Path, tmp_path: Path
) -> None:
    err = io.StringIO()
    report = derain_files(trained_net, [images / "nothere.png", images / "a.png"],
                          tmp_path / "o", tile=None, stderr=err)
    assert [p.name for p in report.written] == ["a.png"]
    assert "nothere.png" in err.getvalue()


def test_collect_inputs_and_refusal_to_overwrite_inputs(trained_net: MENET, images: Path) -> None:
    pairs = collect_inputs([images, images / "a.png"])
    assert [rel.as_posix() for _, rel in pairs] == [
        "a.png", "broken.png", "c16.png", "sub/b.jpg", "a.png"]
    err = io.StringIO()
    report = derain_files(trained_net, [images / "a.png"], images, stderr=err)
    assert not report.written and "input file itself" in err.getvalue()
