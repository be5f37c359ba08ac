"""benchmarks/model_card.py: the card's command line and its Markdown, from a stand-in card."""

from __future__ import annotations

import json
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
    "zero_init_residual": True, "clip_grad_norm": 1.0, "amp": True, "lr": 1e-3,
}


def test_reproduce_command_spells_out_the_recipe() -> None:
    cmd = model_card.reproduce_command(CONFIG)
    assert cmd.startswith("python -m menet train --data ../shared/data/Rain100L "
                          "../shared/data/Rain100H ")
    for part in ("--steps 12000", "--batch-size 16", "--patch-size 128", "--weighting gb",
                 "--lr-schedule cosine", "--texture-mean", "--zero-init-residual",
                 "--clip-grad-norm 1", "--amp", "--lr 0.001", "--out RUN"):
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


def test_reproduce_command_writes_paths_beside_the_repo_relative_to_it() -> None:
    shared = model_card.REPO.parent / "shared" / "data"
    cmd = model_card.reproduce_command({**CONFIG, "data": [str(shared / "Rain100L")],
                                        "split": str(shared / "rain100-split.json")})
    assert "--data ../shared/data/Rain100L --split ../shared/data/rain100-split.json" in cmd
    assert str(model_card.REPO.parent) not in cmd
    elsewhere = model_card.reproduce_command({**CONFIG, "data": ["/elsewhere/Rain100L"]})
    assert "--data /elsewhere/Rain100L " in elsewhere


def test_render_marks_each_target() -> None:
    md = model_card.render(_card(35.8, 25.9))
    assert ("| Rain100L | Y, full image | one pass | 20.00 / 0.5000 | 35.80 / 0.9000 | "
            "≥ 35.7 dB (met) |") in md
    assert ("| Rain100H | Y, full image | one pass | 20.00 / 0.5000 | 25.90 / 0.9000 | "
            "≥ 26.0 dB (NOT met) |") in md
    assert "--ensemble" not in md
    assert "12000 steps of 16 random 128 px crops" in md and "90 min wall time" in md
    assert "1.00 MiB" in md and "Note:" not in md


def test_render_adds_the_ensembles_rows_with_their_own_verdicts() -> None:
    card = _card(35.5, 26.2)
    card["ensemble"] = "flips"
    card["ensemble_scores"] = _card(35.9, 25.8)["scores"]
    md = model_card.render(card)
    assert ("| Rain100L | Y, full image | one pass | 20.00 / 0.5000 | 35.50 / 0.9000 | "
            "≥ 35.7 dB (NOT met) |") in md
    assert ("| Rain100L | Y, full image | `--ensemble flips` | 20.00 / 0.5000 | 35.90 / 0.9000 | "
            "≥ 35.7 dB (met) |") in md
    assert ("| Rain100H | Y, full image | `--ensemble flips` | 20.00 / 0.5000 | 25.80 / 0.9000 | "
            "≥ 26.0 dB (NOT met) |") in md
    assert "4 forward passes per image" in md


def test_render_carries_the_note() -> None:
    md = model_card.render(_card(30.0, 20.0, note="paused 200 s"))
    assert "Note: paused 200 s" in md
    assert md.index("Note: paused 200 s") < md.index("Reproduce:")


def _run(folder: Path, steps: int, seconds: float, **config: Any) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({**CONFIG, "steps": steps, **config}))
    (folder / "log.csv").write_text(f"step,time\n1,0.5\n{steps},{seconds}\n")
    return folder


def test_a_fine_tuned_run_is_carded_with_the_run_it_started_from(tmp_path: Path) -> None:
    first = _run(tmp_path / "first", 12000, 6000.0)
    second = _run(tmp_path / "second", 3000, 1200.0, lr=3e-4,
                  init=str(first / "model.safetensors"),
                  data=["L", "L", "H"])
    assert model_card.run_stages(second) == [first, second]
    assert model_card.run_stages(first) == [first]
    stages = [model_card.describe_stage(r, json.loads((r / "config.json").read_text()))
              for r in (first, second)]
    assert [(s["steps"], s["wall_seconds"], s["lr"]) for s in stages] == [
        (12000, 6000.0, 1e-3), (3000, 1200.0, 3e-4)]
    commands = model_card.stage_commands([json.loads((r / "config.json").read_text())
                                          for r in (first, second)])
    assert commands[0].endswith("--out RUN1") and "--init" not in commands[0]
    assert commands[1].endswith("--lr-schedule cosine --texture-mean --zero-init-residual "
                                "--clip-grad-norm 1 --amp --init RUN1/model.safetensors --out RUN")
    assert "--data L L H " in commands[1] and "--lr 0.0003 " in commands[1]
    text = model_card.stages_text(stages)
    assert "in 2 runs" in text and "12000 steps on Rain100L + Rain100H at lr 0.001" in text
    assert "then 3000 steps on 2x L + H at lr 0.0003" in text


def test_an_init_that_is_not_a_run_ends_the_chain_and_stays_in_the_command(
    tmp_path: Path,
) -> None:
    run = _run(tmp_path / "run", 100, 10.0, init="bundled")
    assert model_card.run_stages(run) == [run]
    (cmd,) = model_card.stage_commands([json.loads((run / "config.json").read_text())])
    assert cmd.endswith("--init bundled --out RUN")
    loop = _run(tmp_path / "loop", 100, 10.0)
    (loop / "config.json").write_text(json.dumps({**CONFIG, "init": str(loop / "last.ckpt")}))
    assert model_card.run_stages(loop) == [loop]  # a run cannot start from itself
    assert model_card.stages_text([{"steps": 1}]) == ""


def test_portable_does_not_follow_a_shared_symlink_out_of_the_repos_parent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    parent = tmp_path / "parent"
    (parent / "repo").mkdir(parents=True)
    (tmp_path / "elsewhere" / "data" / "Rain100L").mkdir(parents=True)
    (parent / "shared").symlink_to(tmp_path / "elsewhere")  # ../shared is a symlink
    monkeypatch.setattr(model_card, "REPO", parent / "repo")
    data = str(parent / "shared" / "data" / "Rain100L")
    assert model_card.portable(data) == "../shared/data/Rain100L"
    assert model_card.portable(str(parent / "repo" / "x" / ".." / "y")) == "y"
    assert model_card.portable("/elsewhere/Rain100L") == "/elsewhere/Rain100L"


def test_a_run_from_the_bundled_model_follows_the_bundled_chain(tmp_path: Path) -> None:
    """--init bundled: the stored card's stages and commands come first, its RUN renamed."""
    run = _run(tmp_path / "run", 1500, 900.0, init="bundled", procedural_rain=3, lr=2e-4,
               data=["L", "L", "H"])
    mine = [model_card.describe_stage(run, json.loads((run / "config.json").read_text()))]
    assert mine[0]["procedural_rain"] == 3
    commands = model_card.stage_commands([json.loads((run / "config.json").read_text())])
    assert "--procedural-rain 3 --init bundled --out RUN" in commands[0]
    old = [{"steps": 12000, "wall_seconds": 6000.0, "data": ["L", "H"], "lr": 1e-3,
            "init": None},
           {"steps": 3000, "wall_seconds": 1000.0, "data": ["L", "L", "H"], "lr": 3e-4,
            "init": "/x/model.safetensors"}]
    stored = {"training": {"stages": old},
              "command": "train --out RUN1\ntrain --init RUN1/model.safetensors --out RUN"}
    stages, cmds = model_card.after_bundled(stored, mine, commands)
    assert stages == [*old, *mine]
    assert cmds[:2] == ["train --out RUN1", "train --init RUN1/model.safetensors --out RUN2"]
    assert cmds[2].endswith("--procedural-rain 3 --init RUN2/model.safetensors --out RUN")
    text = model_card.stages_text(stages)
    assert "in 3 runs" in text
    assert "then 1500 steps on 2x L + H + 3x procedural rain at lr 0.0002" in text
    # Scored again after shipping: the card already holds the chain, unchanged.
    shipped = {"training": {"stages": stages}, "command": "\n".join(cmds)}
    assert model_card.after_bundled(shipped, mine, commands) == (stages, cmds)
    # A card without a chain, or a run not from the bundled model: nothing added.
    assert model_card.after_bundled({}, mine, commands) == (mine, commands)
    assert model_card.after_bundled(stored, old[:1], ["c"]) == (old[:1], ["c"])
    card = _card(35.9, 26.8)
    card["training"]["stages"] = stages
    assert "procedural rain of varied density" in model_card.render(card)
    assert "procedural" not in model_card.render(_card(35.9, 26.8))
