"""Fault injection on tiny data: crashes, full disks, damaged or crafted files, NaNs, bad images.

Each test provokes one fault and checks what the user is promised:

* SIGKILL in the middle of a checkpoint write: the previous checkpoint is intact,
  the half-written temporary file is removed on resume, and the resumed run finishes;
* a full disk (``ENOSPC``) or a read-only file system (``EROFS``): a
  :class:`~menet.checkpoint.CheckpointWriteError` naming the file and its folder,
  the previous checkpoint byte-for-byte intact, no temporary file left;
* a truncated checkpoint or weight file: an error naming the file; a crafted
  pickle (as ``.ckpt``, as a torch zip, renamed ``.safetensors``) is refused and
  its payload never runs;
* a NaN in a batch: by default :class:`FloatingPointError` naming the step and the
  task; with ``skip_nonfinite`` the step changes nothing (parameters, BatchNorm
  statistics, optimizer state) and is counted in the result, the checkpoint and the CSV;
* grey-scale, 16-bit, RGBA and palette images are converted, corrupt and truncated
  ones reported by name, in a training folder and in ``derain``.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import pickle
import signal
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch import Tensor

import menet.checkpoint as mckpt
import menet.session as msession
import menet.train as mtrain
from menet.checkpoint import (
    CheckpointError,
    CheckpointWriteError,
    load_checkpoint,
    load_model,
    save_checkpoint,
)
from menet.data import PairedFolder
from menet.derain import derain_files
from menet.images import read_bit_depth, read_image
from menet.model import MENET
from menet.sampling import epoch_permutation
from menet.train import StepResult, TrainConfig, build_losses, train, train_step

THIS = Path(__file__).resolve()
MENET_ROOT = THIS.parents[2] / "examples" / "menet"
TIMEOUT = 120.0


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """One intra-op thread: many times faster on a loaded two-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny(data: Path, out: Path, **kw: Any) -> TrainConfig:
    """2 steps per epoch: 4 pairs x 2 random 32x32 crops, batches of 4, LB weighting."""
    options: dict[str, Any] = dict(
        data=str(data), out=str(out), variant="shallow", patches="random", patch_size=32,
        patches_per_image=2, batch_size=4, epochs=2, weighting="lb", progress=False,
        device="cpu",
    )
    options.update(kw)
    return TrainConfig(**options)


class StoppedByTestError(Exception):
    """Raised by ``on_epoch_end`` to end a run after its first checkpoint."""


def stop_after_first_epoch(epoch: int, step: int) -> None:
    raise StoppedByTestError


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


# ----------------------------------------------------------------------------- SIGKILL mid-write


@pytest.mark.slow
def test_sigkill_in_the_middle_of_a_checkpoint_write_keeps_the_previous_one(
    rain100l_folder: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    config = tiny(rain100l_folder, out, epochs=3)
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"options": config.to_dict(), "marker": str(tmp_path / "half")}))
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(MENET_ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, str(THIS), str(spec)], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + TIMEOUT
    while not (tmp_path / "half").exists() and proc.poll() is None:
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("the training subprocess never reached its second checkpoint")
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode() if proc.stderr else ""
    torn = leftovers(out)
    assert len(torn) == 1 and torn[0].startswith(".last.ckpt.")  # killed mid-write
    previous = load_checkpoint(out / "last.ckpt")  # intact: the epoch-1 checkpoint
    assert (previous["epoch"], previous["step"]) == (1, 2)

    result = train(tiny(rain100l_folder, out, epochs=3, resume=True))
    assert (result.step, result.epoch) == (6, 3)
    assert leftovers(out) == []  # the torn temporary was removed
    assert load_checkpoint(out / "last.ckpt")["epoch"] == 3
    assert all(torch.isfinite(p).all() for p in result.model.parameters())


def _killed_writer_main(spec_path: str) -> int:  # pragma: no cover - runs in the subprocess
    """Train; at the second checkpoint write half of it, signal, and hang until killed."""
    spec = json.loads(Path(spec_path).read_text())
    marker = Path(spec["marker"])
    real = mckpt.atomic_write
    calls = {"ckpt": 0}

    class HalfThenHang:
        def __init__(self, f: Any) -> None:
            self.f = f

        def write(self, data: Any) -> int:
            view = memoryview(data)
            self.f.write(view[: len(view) // 2])
            self.f.flush()
            os.fsync(self.f.fileno())
            marker.write_text("half written")
            time.sleep(TIMEOUT)
            raise SystemExit("not killed")

    @contextlib.contextmanager
    def slow_atomic_write(path: Any) -> Iterator[Any]:
        with real(path) as f:
            if Path(path).name == "last.ckpt":
                calls["ckpt"] += 1
                if calls["ckpt"] == 2:
                    yield HalfThenHang(f)
                    return
            yield f

    mckpt.atomic_write = slow_atomic_write  # type: ignore[assignment]
    train(TrainConfig(**spec["options"]))
    return 0


# ------------------------------------------------------------------------- full / read-only disk


@pytest.mark.parametrize(
    ("code", "where"),
    [(errno.ENOSPC, "fsync"), (errno.ENOSPC, "write"), (errno.EROFS, "create")],
)
@pytest.mark.slow
def test_a_full_or_read_only_disk_is_a_clear_error_and_the_checkpoint_survives(
    rain100l_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int, where: str
) -> None:
    out = tmp_path / "run"
    with pytest.raises(StoppedByTestError):
        train(tiny(rain100l_folder, out), on_epoch_end=stop_after_first_epoch)
    before = (out / "last.ckpt").read_bytes()

    def fail(*args: object, **kwargs: object) -> Any:
        raise OSError(code, os.strerror(code))

    if where == "fsync":  # delayed allocation: the error surfaces when data reach the disk
        monkeypatch.setattr(os, "fsync", fail)
    elif where == "write":
        real = mckpt.atomic_write

        class FullDisk:
            def __init__(self, f: Any) -> None:
                self.f = f

            def write(self, data: Any) -> int:
                self.f.write(memoryview(data)[:100])
                raise OSError(code, os.strerror(code))

        @contextlib.contextmanager
        def full(path: Any) -> Iterator[Any]:
            with real(path) as f:
                yield FullDisk(f)

        monkeypatch.setattr(mckpt, "atomic_write", full)
    else:  # a file system remounted read-only: no file can be created
        monkeypatch.setattr(mckpt.tempfile, "mkstemp", fail)

    with pytest.raises(CheckpointWriteError) as info:
        train(tiny(rain100l_folder, out, resume=True))
    message = str(info.value)
    assert info.value.errno == code
    assert str(out / "last.ckpt") in message and f"in folder {out}" in message
    assert os.strerror(code) in message and "the previous last.ckpt is unchanged" in message
    monkeypatch.undo()
    assert (out / "last.ckpt").read_bytes() == before
    assert leftovers(out) == []
    assert train(tiny(rain100l_folder, out, resume=True)).epoch == 2


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() == 0,
    reason="root writes into read-only folders; the EROFS simulation above covers this case",
)
def test_a_read_only_output_folder_is_named(rain100l_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "readonly"
    out.mkdir()
    out.chmod(0o500)
    try:
        with pytest.raises(CheckpointWriteError, match=f"output folder {out} is not writable"):
            train(tiny(rain100l_folder, out))
    finally:
        out.chmod(0o700)


def test_weight_export_to_a_full_disk_names_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    net = MENET(blocks=1, channel_attention=False)
    mckpt.export_weights(net, tmp_path / "model.safetensors", "shallow")
    before = (tmp_path / "model.safetensors").read_bytes()

    def full(*args: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(CheckpointWriteError, match=r"cannot write .*model\.safetensors"):
        mckpt.export_weights(net, tmp_path / "model.safetensors", "shallow")
    monkeypatch.undo()
    assert (tmp_path / "model.safetensors").read_bytes() == before
    assert leftovers(tmp_path) == []


# ---------------------------------------------------------------------- damaged and crafted files


class Payload:
    """Unpickling this runs ``touch MARKER`` (through ``os.system``)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


def crafted_files(folder: Path, marker: Path) -> list[Path]:
    """Malicious checkpoints: raw pickle, torch zip pickle, both renamed ``.safetensors``."""
    state = {"format_version": 1, "model": Payload(marker), "config": {"variant": "shallow"}}
    raw, zipped = folder / "raw.ckpt", folder / "zipped.ckpt"
    raw.write_bytes(pickle.dumps(state))
    torch.save(state, zipped)
    files = [raw, zipped]
    for f in (raw, zipped):
        renamed = f.with_name(f.stem + ".safetensors")
        renamed.write_bytes(f.read_bytes())
        files.append(renamed)
    return files


@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")
def test_a_crafted_pickle_is_refused_and_never_run(tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    assert not marker.exists()
    for f in crafted_files(tmp_path, marker):
        with pytest.raises(CheckpointError, match=str(f)):
            load_model(f)
        if f.suffix == ".ckpt":
            with pytest.raises(CheckpointError, match=str(f)):
                load_checkpoint(f)
    assert not marker.exists()


def test_resume_from_a_crafted_checkpoint_is_refused(rain100l_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    marker = tmp_path / "PWNED"
    (out / "last.ckpt").write_bytes((crafted_files(tmp_path, marker)[1]).read_bytes())
    with pytest.raises(CheckpointError, match=str(out / "last.ckpt")):
        train(tiny(rain100l_folder, out, resume=True))
    assert not marker.exists()


@pytest.mark.slow
def test_derain_command_refuses_crafted_weights(tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    weights = crafted_files(tmp_path, marker)[3]  # a torch pickle named model.safetensors
    Image.new("RGB", (20, 20)).save(tmp_path / "photo.png")
    path = os.pathsep.join([str(MENET_ROOT), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "menet", "derain", str(tmp_path / "photo.png"),
         "--weights", str(weights), "--out", str(tmp_path / "out"), "--device", "cpu"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=TIMEOUT,
    )
    assert done.returncode == 2
    assert str(weights) in done.stderr and "Traceback" not in done.stderr
    assert not marker.exists()


@pytest.mark.parametrize("keep", [0.0, 0.1, 0.5, 0.99])
def test_truncated_training_checkpoint_names_the_file_on_resume(
    rain100l_folder: Path, tmp_path: Path, keep: float
) -> None:
    out = tmp_path / "run"
    out.mkdir()
    net = MENET.variant("shallow")
    save_checkpoint(out / "last.ckpt", {"model": net.state_dict(), "config": {}})
    data = (out / "last.ckpt").read_bytes()
    (out / "last.ckpt").write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(CheckpointError, match=f"checkpoint {out / 'last.ckpt'} is unreadable"):
        train(tiny(rain100l_folder, out, resume=True))


@pytest.mark.slow
def test_train_command_with_a_truncated_checkpoint_exits_with_the_file_named(
    tmp_path: Path,
) -> None:
    out = tmp_path / "run"
    out.mkdir()
    save_checkpoint(out / "last.ckpt", {"model": MENET.variant("shallow").state_dict()})
    data = (out / "last.ckpt").read_bytes()
    (out / "last.ckpt").write_bytes(data[: len(data) // 3])
    path = os.pathsep.join([str(MENET_ROOT), os.environ.get("PYTHONPATH", "")])
    done = subprocess.run(
        [sys.executable, "-m", "menet", "train", "--out", str(out), "--resume", "--no-progress"],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"},
        capture_output=True, text=True,
        timeout=TIMEOUT,
    )
    assert done.returncode == 2
    assert f"checkpoint {out / 'last.ckpt'} is unreadable" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_damaged_safetensors_weights_name_the_file(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "model.safetensors"
    mckpt.export_weights(MENET(blocks=1, channel_attention=False), path, "shallow")
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    else:  # corrupt the JSON header length
        data[0:8] = struct.pack("<Q", 2**40)
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=str(path)):
        load_model(path)


# ----------------------------------------------------------------------------- NaN in a batch


class Poisoned(torch.utils.data.Dataset[tuple[Tensor, Tensor]]):
    """The training patches, with NaN rainy inputs at the given indices."""

    def __init__(self, base: Any, bad: set[int]) -> None:
        self.base, self.bad = base, bad

    def __len__(self) -> int:
        return len(self.base)

    def set_epoch(self, epoch: int) -> None:
        self.base.set_epoch(epoch)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        rainy, clean = self.base[i]
        return (torch.full_like(rainy, float("nan")) if i in self.bad else rainy), clean


def batch_of(index: int, epoch: int, n: int = 8, batch: int = 4, seed: int = 0) -> int:
    """The 1-based step of ``epoch`` (0-based) whose batch holds patch ``index``."""
    order = epoch_permutation(n, seed, epoch).tolist()
    return epoch * (n // batch) + order.index(index) // batch + 1


def poison(monkeypatch: pytest.MonkeyPatch, bad: set[int]) -> None:
    build = msession.build_dataset
    monkeypatch.setattr(msession, "build_dataset", lambda cfg: Poisoned(build(cfg), bad))


def test_a_nan_batch_stops_training_naming_the_step_and_the_task(
    rain100l_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    poison(monkeypatch, {5})
    step = batch_of(5, 0)
    expected = rf"^step {step} \(epoch 1\): loss of task 'pixel' is not finite"
    with pytest.raises(FloatingPointError, match=expected):
        train(tiny(rain100l_folder, tmp_path / "run"))


def test_skip_nonfinite_skips_and_counts_the_step_and_changes_nothing(
    rain100l_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    poison(monkeypatch, {5})
    real = mtrain.train_step
    checked: list[bool] = []

    def checking_step(model: torch.nn.Module, *args: Any, **kwargs: Any) -> StepResult:
        optimizer = args[3]
        before = {k: v.clone() for k, v in model.state_dict().items()}
        opt_before = [
            {k: v.clone() for k, v in s.items()} for s in optimizer.state.values()
        ]
        result = real(model, *args, **kwargs)
        if result.skipped:
            after = model.state_dict()
            checked.append(all(torch.equal(before[k], after[k]) for k in before))
            opt_after = list(optimizer.state.values())
            pairs = zip(opt_before, opt_after, strict=True)
            checked.append(
                len(opt_before) == len(opt_after)
                and all(torch.equal(a[k], b[k]) for a, b in pairs for k in a)
            )
        return result

    monkeypatch.setattr(mtrain, "train_step", checking_step)
    result = train(tiny(rain100l_folder, tmp_path / "run", skip_nonfinite=True))
    expected = [batch_of(5, 0), batch_of(5, 1)]  # the patch is in one batch of each epoch
    assert result.skipped_steps == expected
    assert checked == [True, True, True, True]
    assert load_checkpoint(tmp_path / "run" / "last.ckpt")["skipped_steps"] == expected
    rows = (tmp_path / "run" / "log.csv").read_text().splitlines()
    header, body = rows[0].split(","), [r.split(",") for r in rows[1:]]
    assert header[-1] == "skipped"
    logged = [int(r[0]) for r in body]
    assert logged == [s for s in (1, 2, 3, 4) if s not in expected]  # no row for a skipped step
    assert [int(r[-1]) for r in body] == [sum(e <= s for e in expected) for s in logged]
    assert all(np.isfinite(float(v)) for r in body for v in r[3:-2])
    assert all(torch.isfinite(p).all() for p in result.model.state_dict().values())


def test_a_skipped_step_restores_batchnorm_statistics() -> None:
    torch.manual_seed(0)
    net = MENET(blocks=1, channel_attention=False)
    fns = build_losses(["pixel", "edge"])
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    import mtlweight as mw

    bad = torch.full((2, 3, 16, 16), float("nan"))
    state = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(FloatingPointError, match="task 'pixel'"):
        train_step(net, (bad, torch.rand(2, 3, 16, 16)), fns, mw.LossBalance(), opt)
    assert not all(torch.equal(state[k], v) for k, v in net.state_dict().items())  # BN moved
    net.load_state_dict(state)
    r = train_step(net, (bad, torch.rand(2, 3, 16, 16)), fns, mw.LossBalance(), opt,
                   skip_nonfinite=True)
    assert r.skipped and r.weights == {} and not np.isfinite(r.total)
    for k, v in net.state_dict().items():
        assert torch.equal(state[k], v), k
    assert all(p.grad is None for p in net.parameters())


# ----------------------------------------------------------------------------- images


def png_with_size(path: Path, width: int, height: int) -> Path:
    """A tiny PNG file whose header claims ``width x height`` pixels (a decompression bomb)."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                     + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))
    return path


def odd_images(folder: Path, h: int = 36, w: int = 40) -> dict[str, Path]:
    """The same picture as grey 8-bit, grey 16-bit, RGB 16-bit, RGBA and palette files."""
    folder.mkdir(parents=True, exist_ok=True)
    g = np.random.default_rng(0)
    rgb = (g.random((h, w, 3)) * 255).astype(np.uint8)
    grey16 = (g.random((h, w)) * 65535).astype(np.uint16)
    files = {
        "grey": folder / "grey.png",
        "grey16": folder / "grey16.png",
        "rgb16": folder / "rgb16.png",
        "rgba": folder / "rgba.png",
        "palette": folder / "palette.png",
    }
    Image.fromarray(rgb[:, :, 0]).save(files["grey"])
    Image.fromarray(grey16).save(files["grey16"])
    from menet.images import write_image

    write_image(torch.from_numpy(rgb).permute(2, 0, 1) / 255.0, files["rgb16"], bits=16)
    rgba = np.concatenate([rgb, np.full((h, w, 1), 128, np.uint8)], axis=2)
    Image.fromarray(rgba).save(files["rgba"])
    Image.fromarray(rgb).convert("P").save(files["palette"])
    return files


def test_odd_image_kinds_are_converted_in_a_training_folder(tmp_path: Path) -> None:
    files = odd_images(tmp_path / "odd")
    root = tmp_path / "data"
    for sub in ("rain", "norain"):
        (root / sub).mkdir(parents=True)
    for i, f in enumerate(files.values(), start=1):
        (root / "rain" / f"rain-{i:03d}.png").write_bytes(f.read_bytes())
        (root / "norain" / f"norain-{i:03d}.png").write_bytes(files["grey"].read_bytes())
    data = PairedFolder(root)
    for (rainy, clean), name in zip(data, files, strict=True):
        assert rainy.shape == clean.shape == (3, 36, 40), name
        assert rainy.dtype == torch.float32 and 0 <= float(rainy.min()) <= float(rainy.max()) <= 1
    grey = np.asarray(Image.open(files["grey"]), dtype=np.float32) / 255
    assert np.array_equal(data[0][0][1].numpy(), grey)  # replicated to the three channels
    g16 = np.asarray(Image.open(files["grey16"]), dtype=np.float64) / 65535
    assert np.allclose(data[1][0][0].numpy(), g16, atol=1e-7)  # full 16-bit precision
    rgba = np.asarray(Image.open(files["rgba"]), dtype=np.float32) / 255
    white = rgba[:, :, :3] * rgba[:, :, 3:] + (1 - rgba[:, :, 3:])  # composited onto white
    assert np.allclose(data[3][0].permute(1, 2, 0).numpy(), white, atol=1e-6)
    result = train(tiny(root, tmp_path / "run", epochs=1, batch_size=2))
    assert result.step == 5 and all(torch.isfinite(p).all() for p in result.model.parameters())


def test_corrupt_and_truncated_images_in_a_training_folder_are_named(
    rain100l_folder: Path, tmp_path: Path
) -> None:
    corrupt = rain100l_folder / "rain" / "rain-002.png"
    corrupt.write_bytes(b"not a png at all")
    with pytest.raises(ValueError, match=f"cannot read image {corrupt}"):
        PairedFolder(rain100l_folder)
    corrupt.unlink()
    truncated = rain100l_folder / "rain" / "rain-003.png"
    truncated.write_bytes(truncated.read_bytes()[:200])  # header intact, pixels cut
    with pytest.raises(ValueError, match=f"cannot read image {truncated}"):
        train(tiny(rain100l_folder, tmp_path / "run", batch_size=2))


@pytest.fixture(scope="module")
def small_net() -> MENET:
    torch.manual_seed(0)
    return MENET(blocks=1, channel_attention=False).eval()


def test_derain_converts_odd_images_and_reports_bad_ones_by_name(
    small_net: MENET, tmp_path: Path
) -> None:
    files = odd_images(tmp_path / "in")
    good = tmp_path / "in" / "good.jpg"
    Image.new("RGB", (30, 20), (120, 60, 30)).save(good)
    corrupt = tmp_path / "in" / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    truncated = tmp_path / "in" / "truncated.png"
    truncated.write_bytes(files["rgba"].read_bytes()[:150])
    errors: list[str] = []

    class Err:
        def write(self, s: str) -> int:
            errors.append(s)
            return len(s)

        def flush(self) -> None:
            pass

    report = derain_files(small_net, [tmp_path / "in"], tmp_path / "out", tile=32, overlap=8,
                          stderr=Err())  # type: ignore[arg-type]
    assert sorted(p.name for p, _ in report.failed) == ["corrupt.png", "truncated.png"]
    text = "".join(errors)
    assert str(corrupt) in text and str(truncated) in text
    written = {p.name: p for p in report.written}
    assert sorted(written) == sorted([*(f.name for f in files.values()), "good.jpg"])
    for name, src in [*files.items(), ("good", good)]:
        out = read_image(written[src.name])
        assert out.shape == read_image(src).shape, name
    assert Image.open(written["good.jpg"]).format == "JPEG"
    assert read_bit_depth(written["grey16.png"]) == 16  # 16-bit in, 16-bit out


def test_a_decompression_bomb_in_derain_is_reported_by_name(
    small_net: MENET, tmp_path: Path
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    bomb = png_with_size(folder / "bomb.png", 100_000, 100_000)  # 10^10 pixels, 100 bytes
    Image.new("RGB", (20, 20)).save(folder / "ok.png")
    report = derain_files(small_net, [folder], tmp_path / "out", tile=32, overlap=8)
    assert [p.name for p in report.written] == ["ok.png"]
    assert report.failed and report.failed[0][0] == bomb and str(bomb) in report.failed[0][1]


def test_a_decompression_bomb_in_a_training_folder_is_named(rain100l_folder: Path) -> None:
    bomb = png_with_size(rain100l_folder / "rain" / "rain-001.png", 100_000, 100_000)
    with pytest.raises(ValueError, match=str(bomb)):
        PairedFolder(rain100l_folder)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(_killed_writer_main(sys.argv[1]))
