"""Training: losses, weighting construction, one step, schedule, logging, exact resume."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from torch import Tensor

import menet.train as mtrain
import mtlweight as mw
from menet.checkpoint import load_checkpoint, load_model
from menet.model import MENET
from menet.sampling import epoch_permutation
from menet.train import (
    TrainConfig,
    build_losses,
    build_weighting,
    train,
    train_step,
)


def make_pairs(root: Path, n: int = 2, size: tuple[int, int] = (40, 48), seed: int = 0) -> Path:
    """A Rain100L-style folder of ``n`` tiny pairs: smooth clean images + bright streaks."""
    g = torch.Generator().manual_seed(seed)
    (root / "rain").mkdir(parents=True, exist_ok=True)
    (root / "norain").mkdir(parents=True, exist_ok=True)
    h, w = size
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    for i in range(1, n + 1):
        clean = F.avg_pool2d(torch.rand(1, 3, h, w, generator=g), 7, 1, 3)[0]
        streaks = (((xx + 2 * yy + 5 * i) % 11) == 0).float()
        rainy = (clean + 0.35 * streaks).clamp(0, 1)
        for img, name in ((rainy, f"rain/rain-{i:03d}.png"), (clean, f"norain/norain-{i:03d}.png")):
            arr = (img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            Image.fromarray(arr).save(root / name)
    return root


def tiny_config(data: Path, out: Path, **kw: Any) -> TrainConfig:
    options: dict[str, Any] = dict(
        data=str(data),
        out=str(out),
        variant="shallow",
        patches="random",
        patch_size=32,
        patches_per_image=2,
        batch_size=2,
        epochs=2,
        progress=False,
        device="cpu",
    )
    options.update(kw)
    return TrainConfig(**options)


def state_tensors(model: torch.nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_state(a: dict[str, Tensor], b: dict[str, Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs"


def log_rows(path: Path) -> list[list[str]]:
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    return [r[:-1] for r in rows]  # drop the wall-clock column


# ----------------------------------------------------------------------------- building blocks


def test_build_losses_are_the_mtlweight_losses() -> None:
    from mtlweight.losses import EdgeAwareLoss, TextureMatchingLoss

    fns = build_losses()
    assert list(fns) == ["pixel", "edge", "texture"]
    assert isinstance(fns["edge"], EdgeAwareLoss)
    assert isinstance(fns["texture"], TextureMatchingLoss)
    a, b = torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8)
    torch.testing.assert_close(fns["pixel"](a, b), ((a - b) ** 2).mean())
    with pytest.raises(ValueError, match="unknown loss 'vgg'"):
        build_losses(["pixel", "vgg"])


def test_fixed_weighting_defaults_missing_weights_to_one() -> None:
    net = MENET(blocks=1, channel_attention=False)
    w = build_weighting("fixed", net, ["pixel", "edge", "texture"], weights={"edge": 0.01})
    losses = {"pixel": torch.tensor(2.0), "edge": torch.tensor(3.0), "texture": torch.tensor(5.0)}
    torch.testing.assert_close(w(losses), torch.tensor(2.0 + 0.03 + 5.0))
    with pytest.raises(ValueError, match="only used by weighting='fixed'"):
        build_weighting("gb", net, ["pixel", "edge"], weights={"edge": 0.01})
    with pytest.raises(ValueError, match="unknown weighting 'nope'"):
        build_weighting("nope", net, ["pixel", "edge"])


def _task_norms(losses: list[Tensor], inputs: list[Tensor]) -> Tensor:
    norms = []
    for loss in losses:
        grads = torch.autograd.grad(loss, inputs, retain_graph=True)
        norms.append(torch.sqrt(sum((g**2).sum() for g in grads)))  # type: ignore[arg-type]
    return torch.stack(norms)


@pytest.mark.parametrize("shared", ["last_conv", "all", "representation"])
def test_gb_weights_match_a_direct_computation(shared: str) -> None:
    torch.manual_seed(0)
    net = MENET(blocks=1, channel_attention=False)
    x, y = torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16)
    fns = build_losses(["pixel", "edge"])
    w = build_weighting("gb", net, list(fns), gb_shared=shared)
    out, feats = net(x, return_features=True)
    losses = {k: f(out, y) for k, f in fns.items()}
    w(losses, representation=feats if shared == "representation" else None)
    options: dict[str, list[Tensor]] = {
        "last_conv": [net.last_conv.weight],
        "all": list(net.parameters()),
        "representation": [feats],
    }
    inputs = options[shared]
    g = _task_norms(list(losses.values()), inputs)
    expected = 1 - g / g.sum()
    got = torch.tensor(list(w.weights.values()))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"synthetic": None}, "exactly one data source"),
        ({"patches": "five"}, "patches must be"),
        ({"patch_size": 30}, "multiple of 4"),
        ({"losses": ("pixel", "vgg")}, "losses must be distinct"),
        ({"variant": "huge"}, "unknown variant"),
        ({"gb_shared": "head"}, "gb_shared"),
        ({"steps": 0}, "must be >= 1"),
        ({"weights": {"texture": 1.0}, "losses": ("pixel",)}, "not among losses"),
        ({"device": "tpu"}, "device must be"),
    ],
)
def test_config_validation(options: dict[str, Any], match: str) -> None:
    base: dict[str, Any] = {"synthetic": "light", "steps": 1}
    base.update(options)
    if base["synthetic"] is None:
        base["data"] = None
    with pytest.raises(ValueError, match=match):
        TrainConfig(**base)


def test_config_dict_roundtrip() -> None:
    cfg = TrainConfig(synthetic="heavy", steps=3, weights={"edge": 0.01}, ids=[1, 2])
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown config keys"):
        TrainConfig.from_dict({**cfg.to_dict(), "bogus": 1})


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 50), seed=st.integers(0, 2**40), epoch=st.integers(0, 10_000))
def test_epoch_permutation_is_a_permutation_fixed_by_seed_and_epoch(
    n: int, seed: int, epoch: int
) -> None:
    order = epoch_permutation(n, seed, epoch).tolist()
    assert sorted(order) == list(range(n))
    epoch_permutation(n, seed, epoch + 1)  # drawing another epoch in between changes nothing
    assert epoch_permutation(n, seed, epoch).tolist() == order


# ----------------------------------------------------------------------------- one step


@pytest.mark.slow
def test_a_tiny_model_overfits_one_batch() -> None:
    torch.manual_seed(0)
    net = MENET(blocks=1, channel_attention=False)
    fns = build_losses()
    w = build_weighting("gb", net, list(fns))
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    clean = F.avg_pool2d(torch.rand(2, 3, 32, 32), 5, 1, 2)
    rainy = (clean + 0.3 * (torch.rand_like(clean) > 0.95)).clamp(0, 1)
    first = train_step(net, (rainy, clean), fns, w, opt)
    for _ in range(40):
        last = train_step(net, (rainy, clean), fns, w, opt)
    for name in fns:
        assert last.losses[name] < 0.5 * first.losses[name], name
    assert sum(last.weights.values()) == pytest.approx(len(fns) - 1, abs=1e-5)  # GB: sum T-1


def test_bfloat16_autocast_step_on_cpu() -> None:
    torch.manual_seed(0)
    net = MENET(blocks=1, channel_attention=True)
    fns = build_losses()
    w = build_weighting("lb", net, list(fns))
    opt = torch.optim.Adam(net.parameters())
    x = torch.rand(2, 3, 32, 32)
    before = net.last_conv.weight.detach().clone()
    r = train_step(net, (x, x), fns, w, opt, amp_dtype=torch.bfloat16)
    assert all(np.isfinite(v) for v in r.losses.values())
    assert not torch.equal(before, net.last_conv.weight)


# ----------------------------------------------------------------------------- full runs


@pytest.mark.slow
def test_training_writes_log_plots_weights_and_follows_the_schedule(tmp_path: Path) -> None:
    data = make_pairs(tmp_path / "data")
    cfg = tiny_config(data, tmp_path / "run", epochs=None, steps=5, weighting="lb")
    result = train(cfg)
    assert (result.step, result.epoch, result.total_steps) == (5, 3, 5)  # 2 steps per epoch
    rows = log_rows(result.log)
    assert rows[0] == ["step", "epoch", "lr", "loss_pixel", "loss_edge", "loss_texture",
                       "weight_pixel", "weight_edge", "weight_texture", "total"]
    assert [int(r[0]) for r in rows[1:]] == [1, 2, 3, 4, 5]
    # lr 1e-3 for the first 40 % of the steps (2 of 5), then 1e-4.
    assert [float(r[2]) for r in rows[1:]] == pytest.approx([1e-3, 1e-3, 1e-4, 1e-4, 1e-4])
    for r in rows[1:]:  # LB weights sum to T - 1 = 2
        assert sum(float(v) for v in r[6:9]) == pytest.approx(2.0, abs=1e-4)
    for p in result.plots:
        assert p.stat().st_size > 0
    assert result.weights_file is not None
    loaded = load_model(result.weights_file)
    assert_same_state(state_tensors(result.model), state_tensors(loaded))


class _CrashError(Exception):
    pass


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 2])
def test_resume_after_a_crash_reproduces_the_uninterrupted_run(
    tmp_path: Path, workers: int
) -> None:
    data = make_pairs(tmp_path / "data")
    straight = train(tiny_config(data, tmp_path / "a", workers=workers))

    def crash_after_first_epoch(epoch: int, step: int) -> None:
        if epoch == 1:
            raise _CrashError

    out = tmp_path / "b"
    with pytest.raises(_CrashError):
        train(tiny_config(data, out, workers=workers), on_epoch_end=crash_after_first_epoch)
    assert load_checkpoint(out / "last.ckpt")["epoch"] == 1
    assert not (out / "model.safetensors").exists()
    resumed = train(tiny_config(data, out, workers=workers, resume=True))
    assert (resumed.step, resumed.epoch) == (straight.step, straight.epoch)
    assert_same_state(state_tensors(straight.model), state_tensors(resumed.model))
    a, b = load_checkpoint(tmp_path / "a" / "last.ckpt"), load_checkpoint(out / "last.ckpt")
    assert a["weighting"].keys() == b["weighting"].keys()
    for key in ("exp_avg", "exp_avg_sq"):
        for i, st_a in a["optimizer"]["state"].items():
            assert torch.equal(st_a[key], b["optimizer"]["state"][i][key])
    assert log_rows(straight.log) == log_rows(resumed.log)


@pytest.mark.slow
def test_keyboard_interrupt_keeps_the_checkpoint_and_resume_finishes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = make_pairs(tmp_path / "data")
    straight = train(tiny_config(data, tmp_path / "a"))
    calls = {"n": 0}
    real_step = mtrain.train_step

    def interrupted_step(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 3:  # first step of the second epoch
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)

    monkeypatch.setattr(mtrain, "train_step", interrupted_step)
    out = tmp_path / "b"
    result = train(tiny_config(data, out))
    assert result.interrupted and result.checkpoint == out / "last.ckpt"
    assert (result.step, load_checkpoint(out / "last.ckpt")["step"]) == (2, 2)
    monkeypatch.undo()
    resumed = train(tiny_config(data, out, resume=True))
    assert_same_state(state_tensors(straight.model), state_tensors(resumed.model))
    assert log_rows(straight.log) == log_rows(resumed.log)


@pytest.mark.slow
def test_resume_refuses_changed_settings(tmp_path: Path) -> None:
    data = make_pairs(tmp_path / "data")
    train(tiny_config(data, tmp_path / "run", epochs=1))
    with pytest.raises(ValueError, match=r"different settings.*lr: checkpoint 0\.001 vs now 0\.01"):
        train(tiny_config(data, tmp_path / "run", epochs=1, lr=0.01, resume=True))


@pytest.mark.slow
def test_learnable_weighting_parameters_are_optimised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Learned(mw.Weighting):
        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.log_w = torch.nn.Parameter(torch.zeros(3))

        def compute_weights(self, names: list[str], losses: list[Tensor], values: Tensor, *,
                            representation: Tensor | None = None) -> Tensor:
            return self.log_w.exp()

        def forward(self, losses: Any, *, representation: Tensor | None = None) -> Tensor:
            super().forward(losses, representation=representation)
            vals = list(losses.values())
            return sum(torch.exp(-s) * v + s for s, v in zip(self.log_w, vals, strict=True))  # type: ignore[no-any-return]

    from mtlweight import _registry

    monkeypatch.setitem(_registry._REGISTRY, "learned_test", Learned)
    data = make_pairs(tmp_path / "data")
    result = train(tiny_config(data, tmp_path / "run", epochs=1, weighting="learned_test"))
    state = load_checkpoint(result.out / "last.ckpt")
    assert len(state["optimizer"]["param_groups"]) == 2
    assert not torch.equal(state["weighting"]["log_w"], torch.zeros(3))


@pytest.mark.slow
def test_a_run_killed_by_sigkill_resumes_to_the_same_weights(tmp_path: Path) -> None:
    """SIGKILL a training subprocess once its first checkpoint is on disk; resume in-process."""
    data = make_pairs(tmp_path / "data", n=1)
    common = ["--data", str(data), "--variant", "shallow", "--patches", "random",
              "--patch-size", "32", "--patches-per-image", "2", "--batch-size", "2",
              "--steps", "6", "--device", "cpu", "--no-progress"]
    # The same intra-op thread count as this process: float sums depend on it.
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads()),
           "PYTHONPATH": os.pathsep.join(
               [str(Path(mtrain.__file__).parents[1]), os.environ.get("PYTHONPATH", "")])}
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "menet", "train", *common, "--out", str(out)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not (out / "last.ckpt").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (out / "last.ckpt").exists(), proc.stderr.read().decode() if proc.stderr else ""
    assert [p.name for p in out.iterdir() if p.name.endswith(".tmp")] == []

    from menet.cli import main

    assert main(["train", "--out", str(out), "--resume", "--no-progress"]) == 0
    assert main(["train", *common, "--out", str(tmp_path / "straight")]) == 0
    a = load_model(tmp_path / "straight" / "model.safetensors")
    b = load_model(out / "model.safetensors")
    assert_same_state(state_tensors(a), state_tensors(b))


@settings(max_examples=25, deadline=None)
@given(values=st.lists(st.floats(-1e3, 1e3), min_size=1, max_size=60), window=st.integers(1, 20))
def test_moving_average_matches_a_direct_loop(values: list[float], window: int) -> None:
    from menet.plots import moving_average

    x = np.array(values)
    expected = [x[max(0, i - window + 1) : i + 1].mean() for i in range(len(x))]
    np.testing.assert_allclose(moving_average(x, window), expected, rtol=1e-9, atol=1e-9)


@pytest.mark.slow
def test_plots_read_a_log_with_skipped_column(tmp_path: Path) -> None:
    from menet.plots import plot_training_log, read_log

    log = tmp_path / "log.csv"
    log.write_text(
        "step,epoch,lr,loss_pixel,loss_edge,weight_pixel,weight_edge,total,time,skipped\n"
        "1,0,0.001,0.5,2.0,0.8,0.2,0.8,0.1,0\n2,0,0.001,0.4,1.5,0.7,0.3,0.73,0.2,1\n"
    )
    cols = read_log(log)
    assert cols["loss_edge"].tolist() == [2.0, 1.5]
    assert [p.name for p in plot_training_log(log, tmp_path)] == [
        "loss_curves.png", "weight_trajectories.png"]
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match=r"bad\.csv is not a training log"):
        read_log(tmp_path / "bad.csv")
