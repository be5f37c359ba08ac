"""MENET under ``torchrun``: two CPU processes (gloo on 127.0.0.1), tiny data.

* ``python -m torch.distributed.run --nproc_per_node=2 -m menet train --resume``
  continues a one-process checkpoint on two processes (1 -> 2); only rank 0
  prints and writes; the checkpoint holds the unwrapped model, finite;
* a two-process run (the model compiled under DDP) stopped after its first epoch
  resumes in one process, eagerly (2 -> 1);
* a NaN in one rank's batch: by default every rank stops with the step and the
  task named (no rank hangs); with ``skip_nonfinite`` every rank skips that
  step together and the replicas stay identical (GB on the representation);
* :class:`menet.distributed.ShardedEpochSampler`: the processes' shares of a
  step are exactly the single-process batch of that step, whatever the number
  of processes.

This file is also the worker the two-process runs start (``__main__`` below). Every
run has a timeout and its process group is killed on expiry, so a hang fails the test.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.skipif(
    not (torch.distributed.is_available() and torch.distributed.is_gloo_available())
    or sys.platform == "win32",
    reason="needs torch.distributed with gloo on a POSIX system",
)

TIMEOUT = 150.0
"""Seconds a two-process run may take before it counts as hung (normally ~10 s)."""

THIS = Path(__file__).resolve()
MENET_ROOT = THIS.parents[2] / "examples" / "menet"


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """One intra-op thread: many times faster on a loaded two-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_options(data: Path, out: Path) -> dict[str, Any]:
    """A run of 2 steps per epoch: 4 pairs x 2 random 32x32 crops, global batch 4."""
    return dict(
        data=str(data),
        out=str(out),
        variant="shallow",
        patches="random",
        patch_size=32,
        patches_per_image=2,
        batch_size=4,
        epochs=2,
        weighting="gb",
        progress=False,
        device="cpu",
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def torchrun(args: list[str], cwd: Path, nproc: int = 2) -> subprocess.CompletedProcess[str]:
    """``python -m torch.distributed.run --nproc_per_node=nproc ARGS`` with a hard timeout."""
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(MENET_ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    cmd = [
        sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
        "--master_addr=127.0.0.1", f"--master_port={free_port()}", *args,
    ]
    proc = subprocess.Popen(
        cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"torchrun hung for {TIMEOUT} s:\n{err[-3000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def worker(
    options: dict[str, Any], mode: str, out: Path, cwd: Path
) -> subprocess.CompletedProcess[str]:
    """Run this file's ``__main__`` on two processes."""
    spec = out / "spec.json"
    out.mkdir(parents=True, exist_ok=True)
    spec.write_text(json.dumps({"options": options, "mode": mode}))
    return torchrun([str(THIS), str(spec)], cwd)


def assert_finite_unwrapped(ckpt: dict[str, Any]) -> None:
    from menet.model import MENET

    expected = MENET.variant("shallow").state_dict().keys()
    assert ckpt["model"].keys() == expected  # no "module." / "_orig_mod." prefixes
    for name, value in ckpt["model"].items():
        assert torch.isfinite(value.float()).all(), name


def assert_same_parameters(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    """The replicas' parameters are identical (DDP averages the gradients).

    BatchNorm running statistics are not compared: DDP broadcasts rank 0's buffers
    before each forward pass, after which every replica updates them from its own
    share of the batch; the checkpoint holds rank 0's.
    """
    from menet.model import MENET

    names = [n for n, _ in MENET.variant("shallow").named_parameters()]
    assert names and set(names) <= a.keys() == b.keys()
    for n in names:
        assert torch.equal(a[n], b[n]), n


# ----------------------------------------------------------------------------- the sampler


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(2, 40),
    per_rank=st.integers(1, 4),
    world=st.integers(1, 4),
    seed=st.integers(0, 2**31 - 1),
    epoch=st.integers(0, 50),
)
def test_the_shares_of_a_step_are_the_single_process_batch(
    n: int, per_rank: int, world: int, seed: int, epoch: int
) -> None:
    from menet.distributed import ShardedEpochSampler
    from menet.sampling import epoch_permutation

    batch = per_rank * world
    if n < world:
        with pytest.raises(ValueError, match="cannot be shared"):
            ShardedEpochSampler(n, seed, batch, 0, world)
        return
    shares = [ShardedEpochSampler(n, seed, batch, r, world) for r in range(world)]
    for s in shares:
        s.set_epoch(epoch)
    lists = [list(s) for s in shares]
    order = epoch_permutation(n, seed, epoch).tolist()
    steps = shares[0].steps_per_epoch
    assert steps == max(1, n // batch)
    local = shares[0].local_batch
    for k in range(steps):
        step_indices = sorted(i for part in lists for i in part[k * local : (k + 1) * local])
        if n >= batch:  # the single-process DataLoader batch k (drop_last)
            assert step_indices == sorted(order[k * batch : (k + 1) * batch])
        else:  # tiny data: one batch of (almost) everything
            assert step_indices == sorted(order[: n - n % world])
    assert all(len(part) == len(s) for part, s in zip(lists, shares, strict=True))
    assert len({i for part in lists for i in part}) == sum(map(len, lists))  # disjoint


def test_the_global_batch_must_split_evenly() -> None:
    from menet.distributed import ShardedEpochSampler

    with pytest.raises(ValueError, match=r"batch_size 5 must be a positive multiple of .* \(2\)"):
        ShardedEpochSampler(10, 0, 5, 0, 2)


# ----------------------------------------------------------------------------- resume across sizes


@pytest.mark.slow
def test_one_process_checkpoint_resumes_on_two_processes_with_torchrun(
    rain100l_folder: Path, tmp_path: Path
) -> None:
    from menet.checkpoint import load_checkpoint
    from menet.train import TrainConfig, train

    out = tmp_path / "run"

    class StoppedByTestError(Exception):
        pass

    def stop(epoch: int, step: int) -> None:
        raise StoppedByTestError

    with pytest.raises(StoppedByTestError):
        train(TrainConfig(**tiny_options(rain100l_folder, out)), on_epoch_end=stop)
    first = load_checkpoint(out / "last.ckpt")
    assert (first["epoch"], first["step"], first["world_size"]) == (1, 2, 1)

    done = torchrun(
        ["-m", "menet", "train", "--out", str(out), "--resume", "--no-progress"], tmp_path
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("trained 4 steps (2 epochs)") == 1  # rank 0 alone reports
    final = load_checkpoint(out / "last.ckpt")
    assert (final["epoch"], final["step"], final["world_size"]) == (2, 4, 2)
    assert_finite_unwrapped(final)
    assert not torch.equal(final["model"]["last_conv.weight"], first["model"]["last_conv.weight"])
    rows = (out / "log.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows] == ["step", "1", "2", "3", "4"]  # written once
    assert (out / "model.safetensors").is_file()


@pytest.mark.slow
def test_two_process_checkpoint_resumes_in_one_process(
    rain100l_folder: Path, tmp_path: Path
) -> None:
    from menet.checkpoint import load_checkpoint, load_model
    from menet.train import TrainConfig, train

    out = tmp_path / "run"
    options = tiny_options(rain100l_folder, out)
    # compiled under DDP (aot_eager: no C++ toolchain needed); resumed eagerly below
    run = worker({**options, "compile": "aot_eager"}, "stop-after-1", tmp_path / "w", tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    ckpt = load_checkpoint(out / "last.ckpt")
    assert (ckpt["epoch"], ckpt["step"], ckpt["world_size"]) == (1, 2, 2)
    assert_finite_unwrapped(ckpt)
    assert not (out / "model.safetensors").exists()
    ranks = [torch.load(tmp_path / "w" / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert_same_parameters(*ranks)
    for k in ranks[0]:  # rank 0 saved its replica, BatchNorm statistics included
        assert torch.equal(ranks[0][k], ckpt["model"][k]), k

    result = train(TrainConfig(**{**options, "resume": True}))  # eager: compile may change
    assert (result.step, result.epoch) == (4, 2)
    final = load_checkpoint(out / "last.ckpt")
    assert final["world_size"] == 1
    assert_finite_unwrapped(final)
    loaded = load_model(out / "model.safetensors")
    assert all(torch.isfinite(p).all() for p in loaded.parameters())


# ----------------------------------------------------------------------------- NaN on one rank


@pytest.mark.slow
def test_a_nan_on_one_rank_stops_every_rank_naming_step_and_task(
    rain100l_folder: Path, tmp_path: Path
) -> None:
    options = tiny_options(rain100l_folder, tmp_path / "run")
    run = worker(options, "nan", tmp_path / "w", tmp_path)
    assert run.returncode != 0
    reports = sorted((tmp_path / "w").glob("error.rank*.txt"))
    assert [p.name for p in reports] == ["error.rank0.txt", "error.rank1.txt"]
    for p in reports:
        text = p.read_text()
        assert text.startswith("FloatingPointError: step 1 (epoch 1)"), text
        assert "'pixel'" in text


@pytest.mark.slow
def test_skip_nonfinite_skips_the_step_on_every_rank_together(
    rain100l_folder: Path, tmp_path: Path
) -> None:
    from menet.checkpoint import load_checkpoint

    # GB on the representation (the output of the last convolution) under DDP as well
    options = {
        **tiny_options(rain100l_folder, tmp_path / "run"),
        "skip_nonfinite": True,
        "gb_shared": "representation",
    }
    run = worker(options, "nan", tmp_path / "w", tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    from menet.sampling import epoch_permutation

    ckpt = load_checkpoint(tmp_path / "run" / "last.ckpt")
    bad = epoch_permutation(8, seed=0, epoch=0).tolist()[1]
    # the poisoned patch's step in epoch 2
    second = 2 + epoch_permutation(8, seed=0, epoch=1).tolist().index(bad) // 4 + 1
    assert ckpt["skipped_steps"] == [1, second]
    assert ckpt["step"] == 4
    assert_finite_unwrapped(ckpt)
    ranks = [torch.load(tmp_path / "w" / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert_same_parameters(*ranks)
    assert "step 1 skipped" in run.stderr
    header = (tmp_path / "run" / "log.csv").read_text().splitlines()[0]
    assert header.endswith(",skipped")


# ----------------------------------------------------------------------------- the worker


def _main(spec_path: str) -> int:  # pragma: no cover - runs in the torchrun processes
    """Worker: train as ``spec.json`` says, on the rank torchrun gave this process."""
    import traceback

    import menet.session as msession
    import menet.train as mtrain
    from menet.distributed import context
    from menet.sampling import epoch_permutation

    spec = json.loads(Path(spec_path).read_text())
    folder = Path(spec_path).parent
    config = mtrain.TrainConfig(**spec["options"])
    rank = context().rank
    stop_after: int | None = None
    if spec["mode"] == "stop-after-1":
        stop_after = 1
    if spec["mode"] == "nan":  # one poisoned patch: it lands in one rank's share of one step
        build = msession.build_dataset

        class Poisoned(torch.utils.data.Dataset[tuple[torch.Tensor, torch.Tensor]]):
            def __init__(self, base: Any) -> None:
                self.base = base
                # epoch 0, step 1, rank 1
                self.bad = epoch_permutation(len(base), config.seed, 0).tolist()[1]

            def __len__(self) -> int:
                return len(self.base)

            def set_epoch(self, epoch: int) -> None:
                self.base.set_epoch(epoch)

            def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
                rainy, clean = self.base[i]
                if i == self.bad:
                    rainy = torch.full_like(rainy, float("nan"))
                return rainy, clean

        msession.build_dataset = lambda cfg: Poisoned(build(cfg))  # type: ignore[assignment]

    class StoppedByTestError(Exception):
        pass

    def on_epoch_end(epoch: int, step: int) -> None:
        if stop_after is not None and epoch >= stop_after:
            raise StoppedByTestError

    seen: dict[str, torch.nn.Module] = {}
    real_step = mtrain.train_step

    def recording_step(model: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        seen["model"] = model  # this rank's replica (DistributedDataParallel)
        return real_step(model, *args, **kwargs)

    mtrain.train_step = recording_step  # type: ignore[assignment]
    try:
        mtrain.train(config, on_epoch_end=on_epoch_end)
    except StoppedByTestError:
        pass
    except Exception as exc:
        (folder / f"error.rank{rank}.txt").write_text(
            f"{type(exc).__name__}: {exc}\n\n{traceback.format_exc()}"
        )
        return 1
    replica = seen["model"]
    net = getattr(replica, "module", replica)  # DDP (under torch.compile) -> MENET
    torch.save(net.state_dict(), folder / f"rank{rank}.pt")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(_main(sys.argv[1]))
