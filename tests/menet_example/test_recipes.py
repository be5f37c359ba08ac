"""Named training recipes: ``--recipe paper|fast``, ``fast`` the CLI default, flags override."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch

from menet.checkpoint import save_checkpoint
from menet.cli import build_parser, main, train_config
from menet.config import DEFAULT_RECIPE, RECIPES, TrainConfig
from menet.model import VARIANTS


def parsed(*argv: str) -> TrainConfig:
    args = vars(build_parser().parse_args(["train", *argv]))
    args.pop("command")
    return train_config(args)


def test_the_dataclass_defaults_are_the_paper_recipe() -> None:
    """Old checkpoints resume identically: TrainConfig's own defaults did not move."""
    cfg = TrainConfig(synthetic="light")
    assert {k: getattr(cfg, k) for k in RECIPES["paper"]} == RECIPES["paper"]
    assert (cfg.lr_schedule, cfg.clip_grad_norm, cfg.texture_normalize) == ("step", None, True)
    assert (cfg.zero_init_residual, cfg.patches, cfg.patch_size, cfg.batch_size) == (
        False, "tencrop", 224, 20)


def test_fast_is_the_command_line_default() -> None:
    assert DEFAULT_RECIPE == "fast"
    cfg = parsed("--synthetic", "light")
    assert (cfg.lr_schedule, cfg.clip_grad_norm, cfg.texture_normalize) == ("cosine", 1.0, True)
    assert (cfg.zero_init_residual, cfg.patches, cfg.patch_size, cfg.batch_size) == (
        True, "random", 128, 16)


def test_paper_recipe_from_the_command_line() -> None:
    cfg = parsed("--synthetic", "light", "--recipe", "paper")
    # the paper's recipe, run in the faster NHWC layout (an execution choice, not the recipe's)
    assert cfg.to_dict() == {**TrainConfig(synthetic="light").to_dict(), "channels_last": True}


def test_new_runs_are_channels_last_and_resumed_old_runs_keep_their_layout(
    tmp_path: Path,
) -> None:
    from menet.building import build_model

    cfg = parsed("--synthetic", "light")
    assert cfg.channels_last
    weight = build_model(cfg, torch.device("cpu")).enc1[0].weight
    assert weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()
    assert not parsed("--synthetic", "light", "--no-channels-last").channels_last
    stored = TrainConfig(out=str(tmp_path), synthetic="light", steps=7).to_dict()
    stored.pop("channels_last")  # a checkpoint of a version without the option
    save_checkpoint(tmp_path / "last.ckpt", {"config": stored})
    resumed = parsed("--out", str(tmp_path), "--resume")
    assert not resumed.channels_last
    assert build_model(resumed, torch.device("cpu")).enc1[0].weight.is_contiguous()


def test_explicit_flags_override_the_recipe() -> None:
    cfg = parsed("--synthetic", "light", "--batch-size", "4", "--lr-schedule", "step",
                 "--texture-sum", "--no-zero-init-residual", "--clip-grad-norm", "5")
    assert (cfg.batch_size, cfg.lr_schedule, cfg.texture_normalize) == (4, "step", False)
    assert (cfg.zero_init_residual, cfg.clip_grad_norm) == (False, 5.0)
    assert (cfg.patches, cfg.patch_size) == ("random", 128)  # the rest is still fast
    cfg = parsed("--synthetic", "light", "--recipe", "paper", "--zero-init-residual",
                 "--texture-sum")
    assert (cfg.zero_init_residual, cfg.texture_normalize, cfg.lr_schedule) == (
        True, False, "step")


def test_resume_takes_the_stored_config_not_the_default_recipe(tmp_path: Path) -> None:
    stored = TrainConfig(out=str(tmp_path), synthetic="light", steps=7)  # paper defaults
    save_checkpoint(tmp_path / "last.ckpt", {"config": stored.to_dict()})
    cfg = parsed("--out", str(tmp_path), "--resume")
    assert {**cfg.to_dict(), "resume": False} == stored.to_dict()
    # An explicit --recipe is applied (and train() then refuses the mismatch).
    assert parsed("--out", str(tmp_path), "--resume", "--recipe", "fast").lr_schedule == "cosine"


def test_mutually_exclusive_options_clear_their_partner(tmp_path: Path) -> None:
    assert (parsed("--synthetic", "light", "--steps", "5").epochs, ) == (None,)
    assert parsed("--synthetic", "light", "--epochs", "2").steps is None
    stored = TrainConfig(out=str(tmp_path), synthetic="light", steps=7)
    save_checkpoint(tmp_path / "last.ckpt", {"config": stored.to_dict()})
    cfg = parsed("--out", str(tmp_path), "--resume", "--epochs", "3", "--data", "d")
    assert (cfg.steps, cfg.epochs, cfg.synthetic, cfg.data) == (None, 3, None, "d")
    assert main(["train", "--synthetic", "light", "--data", "d"]) == 2
    assert main(["train", "--synthetic", "light", "--steps", "1", "--epochs", "1"]) == 2
    assert main(["train", "--synthetic", "light", "--texture-sum", "--texture-mean"]) == 2


def test_variant_choices_come_from_the_model_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--help"]) == 0
    assert "--variant {" + ",".join(sorted(VARIANTS)) + "}" in capsys.readouterr().out


@pytest.mark.slow
def test_the_fast_recipe_reaches_the_scheduler_and_the_clipping(tmp_path: Path) -> None:
    """A 4-step CLI run: the logged rate follows lr/2 (1 + cos(pi k / 4)), as cosine decay does."""
    out = tmp_path / "run"
    assert main(["train", "--synthetic", "light", "--variant", "shallow", "--patch-size", "32",
                 "--batch-size", "2", "--patches-per-image", "1", "--steps", "4",
                 "--device", "cpu", "--no-progress", "--out", str(out)]) == 0
    with (out / "log.csv").open() as f:
        rates = [float(r["lr"]) for r in csv.DictReader(f)]
    expected = [1e-3 * (1 + math.cos(math.pi * k / 4)) / 2 for k in range(4)]
    assert rates == pytest.approx(expected, rel=1e-4)
    cfg = TrainConfig.from_dict(json.loads((out / "config.json").read_text()))
    assert (cfg.clip_grad_norm, cfg.texture_normalize, cfg.zero_init_residual) == (
        1.0, True, True)
