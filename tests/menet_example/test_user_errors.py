"""The CLI as a user meets it: one-line errors, Ctrl-C, the demo's last lines, plots, threads."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import menet.train as mtrain
from menet.checkpoint import load_checkpoint, load_model
from menet.cli import main
from menet.plots import lr_drops, plot_training_log

sys.path.insert(0, str(Path(__file__).parent))
from test_train import assert_same_state, log_rows, make_pairs, state_tensors

NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")


def one_line_error(capsys: pytest.CaptureFixture[str], *words: str, out: str | None = None) -> str:
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    if out is not None:
        assert captured.out == out
    for w in words:
        assert w in err, err
    return err


def test_demo_with_an_unknown_strategy(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["demo", "--weighting", "nonsense", "--out", str(tmp_path)]) == 2
    # Nothing was started: not even the demo's first line was printed.
    one_line_error(capsys, "menet demo:", "unknown weighting 'nonsense'", "gb", out="")


def test_demo_with_zero_steps(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["demo", "--steps", "0", "--out", str(tmp_path)]) == 2
    one_line_error(capsys, "menet demo:", "steps must be >= 1; found 0")


@NO_CUDA
@pytest.mark.parametrize("argv", [
    ["demo", "--quick"],
    ["train", "--synthetic", "light", "--steps", "1"],
    ["evaluate", "--input-only", "--synthetic", "light", "--images", "chelsea"],
    ["derain", "x.png", "--out", "o"],
])
def test_cuda_without_cuda(
    argv: list[str], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    if argv[0] in ("demo", "train"):
        argv = [*argv, "--out", str(tmp_path / "o")]
    if argv[0] == "derain":
        (tmp_path / "x.png").write_bytes(b"")
        argv = ["derain", str(tmp_path / "x.png"), "--out", str(tmp_path / "o"),
                "--weights", str(tmp_path / "x.safetensors")]
    assert main([*argv, "--device", "cuda"]) == 2
    one_line_error(capsys, "CUDA is not available", "--device cpu")


def test_derain_on_a_folder_without_images(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "notes.txt").write_text("no image here")
    assert main(["derain", str(tmp_path / "photos"), "--out", str(tmp_path / "o")]) == 2
    one_line_error(capsys, "no images", str(tmp_path / "photos"))


# ----------------------------------------------------------------------------- Ctrl-C


ONE_EPOCH = ["--variant", "shallow", "--patches", "tencrop", "--patch-size", "32",
             "--batch-size", "2", "--steps", "4", "--device", "cpu", "--no-progress",
             "--texture-mean"]  # one 40x48 pair: 10 crops, 5 steps per epoch


@pytest.fixture(autouse=True)
def default_sigint() -> Iterator[None]:
    """Python's default SIGINT handler during each test, the previous one restored after.

    Training intercepts Ctrl-C only under the default handler (it leaves a custom one
    alone); in the full serial suite an earlier test leaves another handler in place, which
    made the Ctrl-C test train to the end (exit 0) in two clean-clone CI runs.
    """
    previous = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def sigint_after(monkeypatch: pytest.MonkeyPatch, n: int) -> None:
    """Raise SIGINT in the main thread as step ``n`` finishes (as Ctrl-C in a terminal would).

    ``os.kill(os.getpid(), ...)`` may hand the signal to any thread of the process.
    """
    real = mtrain.train_step
    calls = {"n": 0}

    def step(*args: Any, **kwargs: Any) -> Any:
        result = real(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == n:
            signal.raise_signal(signal.SIGINT)  # delivered to this (the main) thread
        return result

    monkeypatch.setattr(mtrain, "train_step", step)


@pytest.mark.slow
def test_ctrl_c_in_the_first_epoch_checkpoints_that_step_and_resumes_exactly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    data = make_pairs(tmp_path / "data", n=1)
    straight = tmp_path / "straight"
    assert main(["train", "--data", str(data), *ONE_EPOCH, "--out", str(straight)]) == 0
    out = tmp_path / "run"
    sigint_after(monkeypatch, 2)
    assert main(["train", "--data", str(data), *ONE_EPOCH, "--out", str(out)]) == 130
    err = capsys.readouterr().err
    assert "interrupted at step 2/4" in err
    assert f"the checkpoint {out / 'last.ckpt'} holds step 2" in err
    assert f"python -m menet train --out {out} --resume" in err
    ckpt = load_checkpoint(out / "last.ckpt")
    assert (ckpt["step"], ckpt["epoch"], ckpt["epoch_step"]) == (2, 0, 2)
    monkeypatch.undo()
    assert main(["train", "--out", str(out), "--resume", "--no-progress"]) == 0
    a = load_model(straight / "model.safetensors")
    b = load_model(out / "model.safetensors")
    assert_same_state(state_tensors(a), state_tensors(b))
    assert log_rows(straight / "log.csv") == log_rows(out / "log.csv")


def test_an_interrupt_before_any_checkpoint_does_not_advise_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise KeyboardInterrupt  # e.g. a second Ctrl-C, inside the first step

    monkeypatch.setattr(mtrain, "train_step", broken)
    data = make_pairs(tmp_path / "data", n=1)
    out = tmp_path / "run"
    assert main(["train", "--data", str(data), *ONE_EPOCH, "--out", str(out)]) == 130
    err = capsys.readouterr().err
    assert "interrupted at step 0/4" in err and "no checkpoint was written yet" in err
    assert "--resume" not in err.replace("without --resume", "")
    assert not (out / "last.ckpt").exists()


# ----------------------------------------------------------------------------- the demo


@pytest.mark.slow
def test_quick_demo_ends_by_naming_its_model_and_the_derain_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out), "--no-progress"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-3:]
    model = out / "train" / "model.safetensors"
    assert str(model) in last[0] and "quick check" in last[0]
    assert "not a model for real photos" in last[0]
    assert "python -m menet derain photo.jpg --out derained/" in last[1]
    assert f"--weights {model}" in last[2]


# ----------------------------------------------------------------------------- plots


@pytest.mark.parametrize("milestone", [3, 10, 17])
def test_lr_drops_finds_the_step_schedule_milestone(milestone: int) -> None:
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1e-3)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, [milestone], gamma=0.1)
    lrs = []
    for _ in range(20):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    steps = np.arange(1, 21)
    assert lr_drops(steps, np.array(lrs)) == [float(milestone + 1)]  # 1-based logged steps
    cos = torch.optim.lr_scheduler.CosineAnnealingLR(
        opt := torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1e-3), T_max=20)
    rates = []
    for _ in range(20):
        rates.append(opt.param_groups[0]["lr"])
        opt.step()
        cos.step()
    assert rates[-1] < 0.3 * rates[-2]  # large relative falls at the end of the decay ...
    assert lr_drops(steps, np.array(rates)) == []  # ... are not drops


@pytest.mark.slow
@pytest.mark.parametrize("schedule", ["step", "cosine"])
def test_weight_plot_with_either_schedule(tmp_path: Path, schedule: str) -> None:
    n = 200
    steps = np.arange(1, n + 1)
    lr = (np.where(steps > 80, 1e-4, 1e-3) if schedule == "step"
          else 5e-4 * (1 + np.cos(np.pi * (steps - 1) / n)))
    rng = np.random.default_rng(0)
    w = 0.6 + 0.2 * rng.standard_normal(n)
    lines = ["step,epoch,lr,loss_pixel,loss_edge,weight_pixel,weight_edge,total,time"]
    rows = zip(steps, lr, w, strict=True)
    lines += [f"{s},0,{r},0.1,0.2,{a},{1 - a},0.3,{s}" for s, r, a in rows]
    (tmp_path / "log.csv").write_text("\n".join(lines) + "\n")
    paths = plot_training_log(tmp_path / "log.csv", tmp_path)
    assert all(p.stat().st_size > 10_000 for p in paths)


# ----------------------------------------------------------------------------- threads


PROBE = """
import importlib.machinery, os, sys
seen = {}
class Spy:
    @staticmethod
    def find_spec(name, path=None, target=None):
        if name == "torch" and "torch" not in seen:
            seen["torch"] = os.environ.get("OMP_WAIT_POLICY")
        return None
sys.meta_path.insert(0, Spy)
import menet
from menet._threads import available_cpus, configure_threads
print(seen["torch"], configure_threads() <= available_cpus())
"""


@pytest.mark.slow
@pytest.mark.parametrize(("given", "expected"), [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_omp_wait_policy_is_passive_before_torch_loads(given: str | None, expected: str) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    if given is not None:
        env["OMP_WAIT_POLICY"] = given
    env["PYTHONPATH"] = os.pathsep.join(
        [str(Path(mtrain.__file__).parents[1]), os.environ.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == [expected, "True"]
