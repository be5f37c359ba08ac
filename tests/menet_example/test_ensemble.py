"""Flip self-ensemble: the formula, its symmetry, and the ``--ensemble`` option of the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from menet import MENET, FlipEnsemble, PairSource, build_pairs, evaluate_pairs, summarize
from menet.checkpoint import load_model
from menet.cli import main
from menet.derain import derain_image
from menet.ensemble import ENSEMBLES, with_ensemble
from menet.images import read_image, write_image
from menet.pretrained import bundled_weights

FLIPS = {"flips": [(), (2,), (1,), (1, 2)], "hflip": [(), (2,)]}  # numpy axes of (C, H, W)


def _net(seed: int) -> nn.Module:
    """A small network that is not flip-equivariant (asymmetric kernels)."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Tanh(), nn.Conv2d(4, 3, (1, 3),
                                                                            padding=(0, 1)))


def _numpy_ensemble(net: nn.Module, x: torch.Tensor, flips: str) -> np.ndarray:
    """The formula computed image by image with numpy's flips: mean of g(f(g x))."""
    outs = []
    for img in x.numpy():
        acc = np.zeros_like(img, dtype=np.float64)
        for axes in FLIPS[flips]:
            g = np.flip(img, axes) if axes else img
            with torch.no_grad():
                y = net(torch.from_numpy(np.ascontiguousarray(g))[None])[0].numpy()
            acc += np.flip(y, axes) if axes else y
        outs.append(acc / len(FLIPS[flips]))
    return np.stack(outs)


shapes = st.tuples(st.integers(1, 2), st.integers(3, 12), st.integers(3, 12))


@settings(max_examples=25, deadline=None)
@given(shape=shapes, seed=st.integers(0, 10_000), flips=st.sampled_from(["flips", "hflip"]))
def test_matches_the_formula_computed_with_numpy(shape: tuple[int, int, int], seed: int,
                                                 flips: str) -> None:
    b, h, w = shape
    net = _net(seed % 7)
    x = torch.rand(b, 3, h, w, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        got = FlipEnsemble(net, flips)(x).numpy()  # type: ignore[arg-type]
    np.testing.assert_allclose(got, _numpy_ensemble(net, x, flips), rtol=1e-5, atol=1e-6)


@settings(max_examples=25, deadline=None)
@given(shape=shapes, seed=st.integers(0, 10_000))
def test_four_flips_make_it_equivariant_and_idempotent(shape: tuple[int, int, int],
                                                        seed: int) -> None:
    b, h, w = shape
    net = _net(seed % 7)
    x = torch.rand(b, 3, h, w, generator=torch.Generator().manual_seed(seed))
    ens = FlipEnsemble(net, "flips")
    with torch.no_grad():
        y = ens(x)
        for dims in [(-1,), (-2,), (-2, -1)]:
            torch.testing.assert_close(ens(x.flip(dims)), y.flip(dims), rtol=1e-5, atol=1e-6)
        # Averaging over a group is a projection: the ensemble of the ensemble is itself.
        torch.testing.assert_close(FlipEnsemble(ens, "flips")(x), y, rtol=1e-5, atol=1e-6)
        # The plain network is not equivariant, so the checks above are not vacuous.
        assert not torch.allclose(net(x.flip(-1)), net(x).flip(-1), atol=1e-4)


@settings(max_examples=20, deadline=None)
@given(shape=shapes, seed=st.integers(0, 10_000), flips=st.sampled_from(list(ENSEMBLES)))
def test_a_flip_equivariant_model_is_unchanged(shape: tuple[int, int, int], seed: int,
                                               flips: str) -> None:
    b, h, w = shape
    x = torch.rand(b, 3, h, w, generator=torch.Generator().manual_seed(seed))
    pointwise = nn.Sequential(nn.Conv2d(3, 3, 1), nn.Sigmoid())  # 1x1: commutes with flips
    with torch.no_grad():
        torch.testing.assert_close(with_ensemble(pointwise, flips)(x), pointwise(x),  # type: ignore[arg-type]
                                   rtol=1e-5, atol=1e-6)


def test_wrapper_shares_parameters_mode_and_gradients() -> None:
    net = MENET(blocks=1)
    ens = FlipEnsemble(net, "hflip")
    assert [p.data_ptr() for p in ens.parameters()] == [p.data_ptr() for p in net.parameters()]
    ens.eval()
    assert not net.training
    x = torch.rand(2, 3, 16, 16)
    ens.train()(x).sum().backward()
    assert all(p.grad is not None for p in net.parameters())
    assert FlipEnsemble.passes("flips") == 4 and FlipEnsemble.passes("none") == 1


def test_errors_name_the_problem() -> None:
    with pytest.raises(ValueError, match=r"unknown ensemble 'rot90'.*flips"):
        FlipEnsemble(nn.Identity(), "rot90")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"\(B, C, H, W\).*\(3, 8, 8\)"):
        FlipEnsemble(nn.Identity())(torch.rand(3, 8, 8))


def test_derain_ensemble_writes_the_ensembles_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``derain --ensemble flips`` (bundled model) writes what the Python API computes."""
    x = torch.rand(3, 36, 44, generator=torch.Generator().manual_seed(3))
    write_image(x, tmp_path / "in" / "a.png")
    x = read_image(tmp_path / "in" / "a.png")
    common = [str(tmp_path / "in" / "a.png"), "--tile", "0", "--device", "cpu", "--no-progress"]
    assert main(["derain", *common, "--out", str(tmp_path / "plain")]) == 0
    capsys.readouterr()
    assert main(["derain", *common, "--ensemble", "flips", "--out", str(tmp_path / "ens")]) == 0
    assert "self-ensemble: flips (4 passes per image)" in capsys.readouterr().err
    model = load_model(bundled_weights())
    want = derain_image(FlipEnsemble(model, "flips"), x, tile=None)
    got = read_image(tmp_path / "ens" / "a.png")
    assert (got - want).abs().max() <= 1 / 255 + 1e-6  # 8-bit rounding only
    assert not torch.equal(got, read_image(tmp_path / "plain" / "a.png"))


def test_evaluate_ensemble_scores_the_ensemble(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    common = ["--synthetic", "light", "--images", "chelsea", "--device", "cpu",
              "--protocol", "standard"]
    assert main(["evaluate", *common, "--ensemble", "hflip", "--out", str(tmp_path)]) == 0
    assert "self-ensemble: hflip (2 passes per image)" in capsys.readouterr().err
    got = json.loads((tmp_path / "summary.json").read_text())["standard"]["output_psnr"]
    pairs = build_pairs(PairSource(synthetic="light", images=["chelsea"], rain_seed=1))
    model = load_model(bundled_weights())
    want = summarize(evaluate_pairs(FlipEnsemble(model, "hflip"), pairs, progress=False))
    plain = summarize(evaluate_pairs(model, pairs, progress=False))
    assert got == pytest.approx(want["output_psnr"], abs=1e-9)
    assert got != pytest.approx(plain["output_psnr"], abs=1e-6)
    assert main(["evaluate", *common, "--ensemble", "rot90"]) == 2
