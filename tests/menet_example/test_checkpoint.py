"""Checkpoints: atomic writes, weights-only loading, RNG capture, weight export."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from menet.checkpoint import (
    CheckpointError,
    atomic_write,
    capture_rng_state,
    export_weights,
    load_checkpoint,
    load_model,
    restore_rng_state,
    save_checkpoint,
)
from menet.model import MENET


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


# ----------------------------------------------------------------------------- atomic writes


def test_atomic_write_replaces_file_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "f.bin"
    target.write_bytes(b"old")
    with atomic_write(target) as f:
        f.write(b"new")
        assert target.read_bytes() == b"old"  # not visible before the end
    assert target.read_bytes() == b"new"
    assert _leftovers(tmp_path) == []


def test_atomic_write_failure_keeps_previous_file(tmp_path: Path) -> None:
    target = tmp_path / "f.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="boom"), atomic_write(target) as f:
        f.write(b"partial")
        raise RuntimeError("boom")
    assert target.read_bytes() == b"old"
    assert _leftovers(tmp_path) == []


def test_save_checkpoint_failure_keeps_previous_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "last.ckpt"
    save_checkpoint(path, {"step": 1, "w": torch.arange(3.0)})
    before = path.read_bytes()

    def failing_save(obj: object, f: object, *args: object, **kwargs: object) -> None:
        f.write(b"half a checkpoint")  # type: ignore[attr-defined]
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"step": 2, "w": torch.zeros(3)})
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert _leftovers(tmp_path) == []
    state = load_checkpoint(path)
    assert state["step"] == 1
    assert torch.equal(state["w"], torch.arange(3.0))


def test_checkpoint_roundtrip_is_weights_only(tmp_path: Path) -> None:
    net = MENET(blocks=1, channel_attention=False)
    opt = torch.optim.Adam(net.parameters())
    net(torch.rand(2, 3, 16, 16)).mean().backward()
    opt.step()
    state = {"model": net.state_dict(), "optimizer": opt.state_dict(), "rng": capture_rng_state()}
    save_checkpoint(tmp_path / "c.ckpt", state)
    raw = torch.load(tmp_path / "c.ckpt", weights_only=True)  # must not need pickled classes
    assert raw["format_version"] == 1
    loaded = load_checkpoint(tmp_path / "c.ckpt")
    for k, v in net.state_dict().items():
        assert torch.equal(loaded["model"][k], v), k


# ----------------------------------------------------------------------------- damaged files


def test_truncated_checkpoint_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "last.ckpt"
    save_checkpoint(path, {"model": MENET(blocks=1).state_dict()})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"last\.ckpt"):
        load_checkpoint(path)


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", b"\x00" * 100])
def test_garbage_checkpoint_names_the_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.ckpt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=r"bad\.ckpt"):
        load_checkpoint(path)


def test_missing_and_foreign_checkpoints(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.ckpt")
    torch.save([1, 2, 3], tmp_path / "list.ckpt")
    with pytest.raises(CheckpointError, match="not a MENET training checkpoint"):
        load_checkpoint(tmp_path / "list.ckpt")


def test_pickled_objects_are_refused(tmp_path: Path) -> None:
    torch.save({"format_version": 1, "obj": Path("x")}, tmp_path / "pickle.ckpt")
    with pytest.raises(CheckpointError, match=r"pickle\.ckpt"):
        load_checkpoint(tmp_path / "pickle.ckpt")


# ----------------------------------------------------------------------------- RNG


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), gauss=st.booleans())
def test_rng_state_roundtrip_through_a_file(
    tmp_path_factory: pytest.TempPathFactory, seed: int, gauss: bool
) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)
    if gauss:  # exercise the cached-gaussian parts of the NumPy / Python states
        np.random.standard_normal()
        random.gauss(0.0, 1.0)
    path = tmp_path_factory.mktemp("rng") / "rng.ckpt"
    save_checkpoint(path, {"rng": capture_rng_state()})
    expected = (
        torch.rand(4), np.random.standard_normal(3), random.gauss(0.0, 1.0), random.random()
    )
    torch.manual_seed(seed + 1)
    np.random.seed((seed + 1) % 2**32)
    random.seed(seed + 1)
    restore_rng_state(load_checkpoint(path)["rng"])
    got = (torch.rand(4), np.random.standard_normal(3), random.gauss(0.0, 1.0), random.random())
    assert torch.equal(expected[0], got[0])
    np.testing.assert_array_equal(expected[1], got[1])
    assert expected[2:] == got[2:]


# ----------------------------------------------------------------------------- weight export


@pytest.mark.parametrize("variant", ["shallow", "shallow-ca"])
def test_export_and_load_model_roundtrip(tmp_path: Path, variant: str) -> None:
    torch.manual_seed(0)
    net = MENET.variant(variant)
    net.train()
    net(torch.rand(2, 3, 32, 32))  # move the BatchNorm running statistics
    net.eval()
    path = export_weights(net, tmp_path / "model.safetensors", variant, steps=7)
    assert json.loads((tmp_path / "model.json").read_text()) == {"steps": 7, "variant": variant}
    loaded = load_model(path)
    assert not loaded.training
    for (k, a), (k2, b) in zip(net.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(a, b), k
    x = torch.rand(1, 3, 20, 28)
    with torch.no_grad():  # the loaded model runs channels_last: equal up to rounding
        torch.testing.assert_close(loaded(x), net(x), rtol=0, atol=1e-5)
        net = net.to(memory_format=torch.channels_last)
        assert torch.equal(net(x), loaded(x))
    # The variant is in the safetensors metadata: the file alone suffices.
    (tmp_path / "model.json").unlink()
    assert isinstance(load_model(path), MENET)


def test_load_model_from_a_training_checkpoint(tmp_path: Path) -> None:
    net = MENET.variant("shallow").eval()
    save_checkpoint(tmp_path / "last.ckpt", {"model": net.state_dict(),
                                             "config": {"variant": "shallow"}})
    loaded = load_model(tmp_path / "last.ckpt")
    assert all(torch.equal(a, b) for a, b in
               zip(net.state_dict().values(), loaded.state_dict().values(), strict=True))


def test_load_model_errors_name_the_file(tmp_path: Path) -> None:
    path = export_weights(MENET.variant("shallow"), tmp_path / "m.safetensors", "shallow")
    with pytest.raises(CheckpointError, match=r"m\.safetensors.*does not match.*shallow-ca"):
        load_model(path, variant="shallow-ca")
    with pytest.raises(CheckpointError, match="unknown variant 'tiny'"):
        load_model(path, variant="tiny")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    with pytest.raises(CheckpointError, match=r"bad\.safetensors"):
        load_model(bad)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(tmp_path / "absent.safetensors")
