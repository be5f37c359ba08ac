"""The bundled pretrained model: used without ``--weights``, named, shipped, loaded safely."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

import menet.pretrained as mpre
from menet.checkpoint import CheckpointError, export_weights, save_checkpoint
from menet.cli import main
from menet.data import PairedFolder, load_split
from menet.evaluate import evaluate_pairs, summarize
from menet.images import read_image, write_image
from menet.model import MENET

EXAMPLE = Path(mpre.__file__).resolve().parents[1]  # examples/menet
REAL_BUNDLED = mpre.BUNDLED


@pytest.fixture
def identity_net() -> MENET:
    torch.manual_seed(0)
    net = MENET.variant("shallow")
    torch.nn.init.zeros_(net.last_conv.weight)  # output == input
    return net


@pytest.fixture
def bundled(tmp_path: Path, identity_net: MENET, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A tiny identity model packed as the bundled file (float16 + model card)."""
    exported = export_weights(identity_net, tmp_path / "export" / "model.safetensors", "shallow")
    path = mpre.pack_weights(exported, tmp_path / "weights" / "menet-rain100.safetensors",
                             {"description": "test model", "data": ["Rain100L", "Rain100H"],
                              "steps": 3})
    monkeypatch.setattr(mpre, "BUNDLED", path)
    return path


def test_pack_weights_halves_the_file_and_loads_as_float16_rounded_weights(
    bundled: Path, identity_net: MENET, tmp_path: Path
) -> None:
    full = tmp_path / "export" / "model.safetensors"
    assert bundled.stat().st_size < 0.6 * full.stat().st_size
    model = mpre.load_bundled()
    for (name, got), want in zip(model.state_dict().items(),
                                 identity_net.state_dict().values(), strict=True):
        expected = want.half().to(want.dtype) if want.is_floating_point() else want
        assert torch.equal(got, expected), name
    assert next(model.parameters()).dtype == torch.float32  # runs in float32


def test_derain_without_weights_uses_and_names_the_bundled_model(
    bundled: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = torch.rand(3, 40, 52)
    write_image(image, tmp_path / "in" / "photo.png")
    code = main(["derain", str(tmp_path / "in" / "photo.png"), "--out", str(tmp_path / "out"),
                 "--device", "cpu", "--no-progress"])
    assert code == 0
    err = capsys.readouterr().err
    assert f"weights: {bundled} (the bundled pretrained model; test model; MENET shallow" in err
    out = read_image(tmp_path / "out" / "photo.png")
    assert torch.equal(out, read_image(tmp_path / "in" / "photo.png"))  # the identity model


def test_evaluate_without_weights_scores_the_bundled_model(
    bundled: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["evaluate", "--synthetic", "light", "--images", "chelsea", "--protocol",
                 "standard", "--device", "cpu"])
    assert code == 0
    captured = capsys.readouterr()
    assert "the bundled pretrained model" in captured.err
    assert "(+0.00 dB)" in captured.out  # identity model: output PSNR == input PSNR


def test_a_missing_bundled_file_is_a_one_line_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(mpre, "BUNDLED", tmp_path / "nowhere" / "menet-rain100.safetensors")
    write_image(torch.rand(3, 16, 16), tmp_path / "a.png")
    for argv in (["derain", str(tmp_path / "a.png"), "--out", str(tmp_path / "o")],
                 ["evaluate", "--synthetic", "light", "--images", "chelsea"]):
        assert main([*argv, "--device", "cpu"]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and "bundled pretrained model is missing" in err
        assert "--weights FILE" in err


def test_the_bundled_file_is_read_with_safetensors_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, identity_net: MENET
) -> None:
    pickled = tmp_path / "menet-rain100.ckpt"
    save_checkpoint(pickled, {"model": identity_net.state_dict(),
                              "config": {"variant": "shallow"}})
    monkeypatch.setattr(mpre, "BUNDLED", pickled)
    with pytest.raises(CheckpointError, match=r"must be a \.safetensors file"):
        mpre.load_bundled()


def test_describe_weights_of_a_training_export(tmp_path: Path, identity_net: MENET) -> None:
    path = export_weights(identity_net, tmp_path / "model.safetensors", "shallow",
                          weighting="gb", steps=12)
    text = mpre.describe_weights(path)
    assert text == f"{path} (MENET shallow; steps: 12; weighting gb)"


@pytest.mark.slow
def test_a_non_editable_install_ships_the_bundled_file(tmp_path: Path) -> None:
    """Build the wheel of a copy of examples/menet holding a stand-in bundled file."""
    src = tmp_path / "src"
    shutil.copytree(EXAMPLE, src, ignore=shutil.ignore_patterns(
        "*.egg-info", "__pycache__", "build", "*.safetensors", "*.json"))
    (src / "pyproject.toml").write_text((EXAMPLE / "pyproject.toml").read_text())
    weights = src / "menet" / "weights"
    weights.mkdir(exist_ok=True)
    (weights / "menet-rain100.safetensors").write_bytes(b"stand-in")
    (weights / "menet-rain100.json").write_text("{}\n")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path / "dist"), str(src)],
        capture_output=True, text=True, timeout=300, env={**os.environ, "PIP_NO_INDEX": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("menet-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "menet/weights/menet-rain100.safetensors" in names
    assert "menet/weights/menet-rain100.json" in names
    # The code's licence, the weights' data note, and the `menet` command.
    assert "menet/weights/WEIGHTS-LICENSE.md" in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names), names
    (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "[console_scripts]" in text and "menet = menet.cli:main" in text
    note = zipfile.ZipFile(wheel).read("menet/weights/WEIGHTS-LICENSE.md").decode()
    assert "research" in note and "MIT" in note


DATA = Path(os.environ.get("MTLWEIGHT_DATA")
            or Path(__file__).resolve().parents[2] / ".." / "shared" / "data")


@pytest.mark.data
@pytest.mark.skipif(not (DATA / "Rain100L").is_dir() or not REAL_BUNDLED.is_file(),
                    reason="needs ../shared/data (or $MTLWEIGHT_DATA) and the real bundled model")
def test_the_real_bundled_model_improves_rain100l_test_pairs() -> None:
    model = mpre.load_bundled()
    ids = load_split(DATA / "rain100-split.json")["test"][:4]
    pairs = PairedFolder(DATA / "Rain100L", ids=ids)
    summary = summarize(evaluate_pairs(model, pairs, "standard", progress=False))
    assert summary["count"] == 4
    assert summary["output_psnr"] > summary["input_psnr"] + 1.0, summary
