"""The command line: every subcommand on tiny data, help texts, errors, exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

import menet.train as mtrain
from menet.checkpoint import export_weights
from menet.cli import main
from menet.images import write_image
from menet.model import MENET

sys.path.insert(0, str(Path(__file__).parent))
from test_train import make_pairs

TINY = ["--variant", "shallow", "--patches", "random", "--patch-size", "32",
        "--patches-per-image", "2", "--batch-size", "2", "--device", "cpu", "--no-progress"]


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return make_pairs(tmp_path / "data")


@pytest.fixture
def weights(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    net = MENET.variant("shallow")
    torch.nn.init.zeros_(net.last_conv.weight)  # identity model: output == input
    path: Path = export_weights(net, tmp_path / "w" / "model.safetensors", "shallow")
    return path


@pytest.mark.parametrize("command", [[], ["train"], ["evaluate"], ["derain"], ["demo"]])
def test_help(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*command, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: python -m menet")
    for word in {"": ["train", "evaluate", "derain", "demo"], "train": ["--resume", "--weighting"],
                 "evaluate": ["--protocol"], "derain": ["--tile", "--overlap"],
                 "demo": ["--quick"]}[command[0] if command else ""]:
        assert word in out


@pytest.mark.slow
def test_python_dash_m_menet_help() -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(Path(mtrain.__file__).parents[1]), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "menet", "--help"], capture_output=True,
                          text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "{train,evaluate,derain,demo}" in proc.stdout or "COMMAND" in proc.stdout


def test_usage_errors(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main([]) == 2
    assert main(["train", "--steps", "1"]) == 2
    assert "give a data source" in capsys.readouterr().err
    assert main(["train", "--synthetic", "light", "--weights", "pixel"]) == 2
    assert "NAME=VALUE" in capsys.readouterr().err
    assert main(["train", "--out", str(tmp_path / "none"), "--resume"]) == 2
    assert "last.ckpt" in capsys.readouterr().err
    assert main(["train", "--synthetic", "light", "--patch-size", "30", "--steps", "1"]) == 2
    assert "multiple of 4" in capsys.readouterr().err


@pytest.mark.slow
def test_train_then_resume_then_evaluate(data: Path, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    args = ["train", "--data", str(data), "--ids", "1-2", *TINY, "--epochs", "1",
            "--weighting", "fixed", "--weights", "pixel=1,edge=0.01", "--out", str(out)]
    assert main(args) == 0
    assert "trained 2 steps" in capsys.readouterr().out
    assert json.loads((out / "config.json").read_text())["weights"] == {"pixel": 1.0, "edge": 0.01}
    # A finished run resumes to a no-op that says so; only --out is needed.
    weights = (out / "model.safetensors").stat().st_mtime_ns
    assert main(["train", "--out", str(out), "--resume", "--no-progress"]) == 0
    said = capsys.readouterr().out
    assert "had already finished (step 2 of 2): nothing to train" in said, said
    assert "trained" not in said and (out / "model.safetensors").stat().st_mtime_ns == weights
    code = main(["evaluate", "--weights", str(out / "model.safetensors"), "--data", str(data),
                 "--ids", "1,2", "--protocol", "standard", "--out", str(tmp_path / "ev")])
    assert code == 0
    assert "standard protocol (Y channel, full image), 2 images" in capsys.readouterr().out
    summary = json.loads((tmp_path / "ev" / "summary.json").read_text())
    assert set(summary) == {"standard"} and summary["standard"]["count"] == 2
    for name in ("scores-standard.csv", "psnr-standard.png", "ssim-standard.png", "grid.png"):
        assert (tmp_path / "ev" / name).stat().st_size > 0


def test_train_dry_run_on_synthetic_rain(tmp_path: Path) -> None:
    out = tmp_path / "dry"
    assert main(["train", "--synthetic", "light", "--dry-run", *TINY, "--out", str(out)]) == 0
    rows = (out / "log.csv").read_text().splitlines()
    assert len(rows) == 2  # header + the single step


def test_ctrl_c_exits_130_and_says_how_to_resume(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    calls = {"n": 0}
    real = mtrain.train_step

    def step(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(mtrain, "train_step", step)
    out = tmp_path / "run"
    code = main(["train", "--data", str(data), *TINY, "--epochs", "3",
                 "--patches-per-image", "1", "--out", str(out)])
    assert code == 130
    err = capsys.readouterr().err
    assert "interrupted at step 1/3" in err
    assert f"python -m menet train --out {out} --resume" in err
    assert (out / "last.ckpt").exists()


@pytest.mark.slow
def test_evaluate_both_protocols_on_synthetic_rain_and_input_only(
    weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    common = ["--synthetic", "light", "--images", "chelsea", "--device", "cpu"]
    assert main(["evaluate", "--input-only", *common]) == 0
    first = capsys.readouterr().out
    assert "paper protocol (RGB, ten 224x224 crops), 1 images" in first
    assert main(["evaluate", "--weights", str(weights), *common, "--out",
                 str(tmp_path / "ev")]) == 0
    # The identity model (zero last conv) scores exactly like the input.
    summary = json.loads((tmp_path / "ev" / "summary.json").read_text())
    for protocol in ("paper", "standard"):
        s = summary[protocol]
        assert s["output_psnr"] == pytest.approx(s["input_psnr"], abs=1e-6)
    assert main(["evaluate", "--weights", str(weights), "--synthetic", "light",
                 "--images", "nope"]) == 2
    assert "unknown built-in image 'nope'" in capsys.readouterr().err


def test_derain_command_processes_good_files_and_names_the_bad_one(
    weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "photos"
    write_image(torch.rand(3, 40, 60), src / "one.png")
    write_image(torch.rand(3, 50, 30), src / "two.jpg")
    (src / "bad.jpg").write_bytes(b"\xff\xd8\xff truncated jpeg")
    out = tmp_path / "derained"
    code = main(["derain", str(src), "--weights", str(weights), "--out", str(out),
                 "--tile", "32", "--overlap", "8", "--device", "cpu", "--no-progress"])
    assert code == 1
    err = capsys.readouterr().err
    assert "bad.jpg" in err and "one.png" not in err
    assert sorted(p.name for p in out.iterdir()) == ["one.png", "two.jpg"]
    assert main(["derain", str(src / "one.png"), "--weights", str(weights), "--out",
                 str(tmp_path / "d2"), "--device", "cpu", "--no-progress"]) == 0
    assert main(["derain", str(src), "--weights", str(tmp_path / "missing.safetensors"),
                 "--out", str(tmp_path / "d3")]) == 2
    assert "missing.safetensors" in capsys.readouterr().err


@pytest.mark.slow
def test_quick_demo(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "held-out images (never trained on" in text and "standard protocol (Y channel)" in text
    summary = json.loads((out / "summary.json").read_text())
    assert summary["output_psnr"] > summary["input_psnr"]
    for name in ("grid.png", "scores-standard.csv", "train/model.safetensors",
                 "train/loss_curves.png", "train/weight_trajectories.png"):
        assert (out / name).stat().st_size > 0


class TestAmpTip:
    """``menet train`` suggests ``--amp`` only for float32 CPU runs on native-bfloat16 CPUs."""

    @pytest.mark.parametrize(
        ("native", "options", "shown"),
        [
            (True, {"device": "cpu"}, True),
            (True, {"device": "cpu", "amp": True}, False),
            (False, {"device": "cpu"}, False),
            (True, {"device": "cuda"}, False),
        ],
    )
    def test_when(self, monkeypatch: pytest.MonkeyPatch, native: bool,
                  options: dict[str, Any], shown: bool) -> None:
        import menet.cli as cli
        from menet.config import TrainConfig

        monkeypatch.setattr(cli, "native_bfloat16", lambda: native)
        tip = cli.amp_tip(TrainConfig(synthetic="light", **options))
        assert (tip is not None) == shown
        if shown:
            assert tip is not None and "--amp" in tip and "recipe-amp.md" in tip

    def test_printed_by_train(self, monkeypatch: pytest.MonkeyPatch,
                              capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
        import menet.cli as cli

        monkeypatch.setattr(cli, "native_bfloat16", lambda: True)
        code = main(["train", "--synthetic", "light", "--steps", "1", *TINY,
                     "--out", str(tmp_path / "run")])
        assert code == 0
        assert "tip: this CPU computes bfloat16 natively" in capsys.readouterr().err

    def test_probe_is_a_bool(self) -> None:
        from menet.building import native_bfloat16

        assert isinstance(native_bfloat16(), bool)
