"""``menet train --init``: fine-tuning starts from a weights file (or the bundled model)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_train import make_pairs, tiny_config

import menet.pretrained as mpre
from menet.building import build_model
from menet.checkpoint import CheckpointError, export_weights, load_checkpoint, load_model
from menet.cli import main
from menet.model import MENET
from menet.train import TrainConfig, train


def _random_net(variant: str = "shallow", seed: int = 3) -> MENET:
    torch.manual_seed(seed)
    net = MENET.variant(variant)
    torch.nn.init.normal_(net.last_conv.weight, std=0.05)  # not the zero init of the recipe
    return net


@pytest.fixture
def export(tmp_path: Path) -> Path:
    return export_weights(_random_net(), tmp_path / "src" / "model.safetensors", "shallow")


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("channels_last", [False, True])
def test_the_model_starts_from_the_init_file_not_from_the_zero_init(
    tmp_path: Path, export: Path, channels_last: bool
) -> None:
    cfg = tiny_config(tmp_path, tmp_path / "run", init=str(export), zero_init_residual=True,
                      channels_last=channels_last)
    net = build_model(cfg, torch.device("cpu"))
    assert _same_weights(net, load_model(export))
    assert net.last_conv.weight.abs().sum() > 0  # zero_init_residual did not overwrite it
    if channels_last:
        assert net.last_conv.weight.is_contiguous(memory_format=torch.channels_last)


def test_a_training_checkpoint_works_as_init(tmp_path: Path) -> None:
    data = make_pairs(tmp_path / "data")
    first = train(tiny_config(data, tmp_path / "a", epochs=None, steps=2))
    cfg = tiny_config(data, tmp_path / "b", init=str(tmp_path / "a" / "last.ckpt"))
    assert _same_weights(build_model(cfg, torch.device("cpu")), first.model)


def test_fine_tuning_moves_away_from_the_init_weights_only_by_its_updates(
    tmp_path: Path, export: Path
) -> None:
    data = make_pairs(tmp_path / "data")
    start = load_model(export)
    tiny = train(tiny_config(data, tmp_path / "tiny", epochs=None, steps=1, lr=1e-9,
                             init=str(export)))
    big = train(tiny_config(data, tmp_path / "big", epochs=None, steps=1, lr=1e-2,
                            init=str(export)))
    got = dict(tiny.model.named_parameters())
    for name, w in start.named_parameters():  # Adam moves each by at most ~lr per step
        assert torch.allclose(got[name], w, atol=1e-7), name  # (BatchNorm statistics do move)
    assert not _same_weights(big.model, start)
    stored = json.loads((tmp_path / "big" / "config.json").read_text())
    assert stored["init"] == str(export)


def test_init_bundled_is_the_shipped_model(
    tmp_path: Path, export: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    packed = mpre.pack_weights(export, tmp_path / "w" / "menet-rain100.safetensors",
                               {"description": "test model"})
    monkeypatch.setattr(mpre, "BUNDLED", packed)
    net = build_model(tiny_config(tmp_path, tmp_path / "run", init="bundled"),
                      torch.device("cpu"))
    assert _same_weights(net, load_model(packed))  # float16 storage, float32 parameters
    assert next(net.parameters()).dtype == torch.float32


def test_an_init_file_of_another_variant_is_refused_naming_both(
    tmp_path: Path, export: Path
) -> None:
    cfg = tiny_config(tmp_path, tmp_path / "run", init=str(export), variant="shallow-ca")
    with pytest.raises(CheckpointError, match=r"are MENET variant 'shallow'.*trains 'shallow-ca'"
                       r".*--variant shallow") as info:
        build_model(cfg, torch.device("cpu"))
    assert str(export) in str(info.value)


def test_a_missing_init_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.safetensors"
    with pytest.raises(CheckpointError, match=f"{missing}.*does not exist"):
        build_model(tiny_config(tmp_path, tmp_path / "run", init=str(missing)),
                    torch.device("cpu"))
    with pytest.raises(ValueError, match="init: give a weights file"):
        tiny_config(tmp_path, tmp_path / "run", init=" ")


def test_resume_does_not_need_the_init_file_any_more(tmp_path: Path, export: Path) -> None:
    data = make_pairs(tmp_path / "data")
    cfg = tiny_config(data, tmp_path / "run", epochs=None, steps=2, init=str(export))
    first = train(cfg)
    export.unlink()  # the run's own checkpoint holds the weights now
    cfg4 = tiny_config(data, tmp_path / "run", epochs=None, steps=2, init=str(export),
                       resume=True)
    again = train(cfg4)
    assert again.step == 2 and _same_weights(again.model, first.model)
    assert load_checkpoint(tmp_path / "run" / "last.ckpt")["config"]["init"] == str(export)


def test_the_cli_names_the_init_weights_and_fails_in_one_line(
    tmp_path: Path, export: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = make_pairs(tmp_path / "data")
    base = ["train", "--data", str(data), "--variant", "shallow", "--patch-size", "32",
            "--batch-size", "2", "--steps", "1", "--device", "cpu", "--no-progress"]
    assert main([*base, "--init", str(export), "--out", str(tmp_path / "ok")]) == 0
    assert f"init: {export} (MENET shallow" in capsys.readouterr().err
    code = main([*base, "--variant", "deep-ca", "--init", str(export),
                 "--out", str(tmp_path / "bad")])
    lines = [line for line in capsys.readouterr().err.strip().splitlines()
             if not line.startswith("menet train: tip:")]  # the --amp hint on some CPUs
    assert code == 2 and len(lines) == 2 and lines[0].startswith("init: ")
    assert lines[1].startswith("menet train: init weights") and "'deep-ca'" in lines[1]


def test_init_is_part_of_the_run_definition() -> None:
    cfg = TrainConfig(synthetic="light", steps=1, init="bundled")
    assert TrainConfig.from_dict(cfg.to_dict()).init == "bundled"
