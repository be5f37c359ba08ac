"""Checkpoints written by the pre-split training code (one ``train.py``) still resume.

``data/old-layout.ckpt.gz`` was written by ``data/make_old_checkpoint.py`` at
commit feb428c, before ``menet.train`` was split into small modules: a GB run of
the ``shallow`` variant stopped after epoch 2 of 4 (step 2). Its large tensors
are zeros (their sums are in ``data/old-layout.json``); everything else is as
the old code wrote it.
"""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from menet.checkpoint import load_checkpoint
from menet.cli import main
from menet.train import TrainConfig, train

DATA = Path(__file__).parent / "data"
META = json.loads((DATA / "old-layout.json").read_text())
OPTIONS: dict[str, Any] = META["options"]


class StopRunError(Exception):
    pass


def _stop_after_two(epoch: int, step: int) -> None:
    if epoch == 2:
        raise StopRunError


def old_checkpoint(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "last.ckpt"
    path.write_bytes(gzip.decompress((DATA / "old-layout.ckpt.gz").read_bytes()))
    return path


def _compare(old: Any, new: Any, where: str, sums: dict[str, list[float]]) -> None:
    if isinstance(old, dict):  # the fixture's OrderedDicts were saved as dicts
        assert isinstance(new, dict), where
        assert sorted(old) == sorted(new), where
        for k in old:
            _compare(old[k], new[k], f"{where}/{k}", sums)
    elif isinstance(old, list | tuple):
        assert type(old) is type(new) and len(old) == len(new), where
        for i, (a, b) in enumerate(zip(old, new, strict=True)):
            _compare(a, b, f"{where}/{i}", sums)
    elif isinstance(old, torch.Tensor):
        assert isinstance(new, torch.Tensor), where
        assert (old.dtype, old.shape) == (new.dtype, new.shape), where
        if where in sums:  # zeroed in the fixture: compare with the recorded sums
            total, absolute = sums[where]
            # entries within Adam's rounding envelope (below), random in sign: sqrt(n) of it
            slack = 5e-4 * math.sqrt(new.numel()) if where.startswith("/model/") else 1e-5
            if where.startswith("/optimizer/state/"):
                # Adam's moments hold step 2's gradients, taken at parameters within the
                # envelope below: 2 % of the absolute sum (a plain sum may cancel)
                slack, rel = 2e-2 * absolute, 2e-2
            else:
                rel = 1e-4
            got = float(new.double().sum())
            assert math.isclose(got, total, rel_tol=1e-3, abs_tol=slack), where
            assert math.isclose(float(new.double().abs().sum()), absolute, rel_tol=rel,
                                abs_tol=slack), where
        elif old.is_floating_point() and where.startswith("/model/"):
            # Two Adam steps (lr 1e-3) turn rounding differences of the gradients (another
            # CPU's kernels, another summation order) into parameter differences of up to
            # ~2e-4, as Adam divides by |g| (measured: 9.5 % of the BatchNorm entries of the
            # fixture, the largest 1.9e-4); a missed or doubled step would move them by ~1e-3.
            torch.testing.assert_close(new, old, rtol=1e-4, atol=5e-4, msg=where)
        elif old.is_floating_point() and where.startswith("/optimizer/state/"):
            # Adam's moments: the gradients of step 2, at parameters within the envelope above
            # (entries near zero differ the most, so compare the tensors as a whole)
            gap = float((new.double() - old.double()).norm())
            assert gap <= 2e-2 * float(old.double().norm()) + 1e-12, (where, gap)
        elif old.is_floating_point():
            torch.testing.assert_close(new, old, rtol=1e-4, atol=1e-6, msg=where)
        else:
            assert torch.equal(old, new), where
    elif isinstance(old, float):
        assert math.isclose(old, new, rel_tol=1e-4, abs_tol=1e-7), where
    else:
        assert type(old) is type(new) and old == new, where


def test_the_new_code_writes_the_old_checkpoint(tmp_path: Path) -> None:
    """Same keys, config, counters, scheduler/weighting/RNG states; model and Adam sums."""
    out = tmp_path / "run"
    with pytest.raises(StopRunError):
        train(TrainConfig(out=str(out), **OPTIONS), on_epoch_end=_stop_after_two)
    new = load_checkpoint(out / "last.ckpt")
    old = load_checkpoint(old_checkpoint(tmp_path / "old"))
    for state in (old, new):
        state.pop("elapsed")  # wall time
        state["config"].pop("out")  # where it was written
    new.pop("epoch_step", None)  # added after the split (0 at an epoch boundary)
    assert new["config"].pop("channels_last") is False  # added later; off unless asked
    assert new["config"].pop("init") is None  # added later (fine-tuning); none unless asked
    assert new["config"].pop("procedural_rain") == 0  # added later; none unless asked
    # The strategy's own state is mtlweight's format (it may gain entries); that it
    # still loads is checked by the resume test below.
    old.pop("weighting"), new.pop("weighting")
    assert (old["step"], old["epoch"], old["total_steps"]) == (2, 2, 4)
    _compare(old, new, "", {f"/{k}": v for k, v in META["sums"].items()})


def test_an_old_checkpoint_resumes_from_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    old_checkpoint(out)
    assert main(["train", "--out", str(out), "--resume", "--no-progress"]) == 0
    ckpt = load_checkpoint(out / "last.ckpt")
    assert (ckpt["step"], ckpt["epoch"]) == (4, 4)
    assert ckpt["config"] == {**load_checkpoint(old_checkpoint(tmp_path / "o"))["config"],
                              "out": str(out), "resume": True, "progress": False,
                              "channels_last": False,  # added later: the old layout kept
                              "init": None,  # added later: a resumed run has no init file
                              "procedural_rain": 0}  # added later: none unless asked
    rows = (out / "log.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["3", "4"]
    assert (out / "model.safetensors").is_file()
    assert "trained 4 steps" in capsys.readouterr().out
