"""Crash-safe training checkpoints, random-state capture and weight export.

A checkpoint is one ``torch.save`` file holding only tensors and plain Python
values, so that it loads with ``torch.load(path, weights_only=True)``: no
pickled classes, no code execution on load.

Writes are atomic: the data goes to a temporary file in the same directory,
is flushed and ``fsync``-ed, then ``os.replace``-d over the destination. A
crash (``SIGKILL``, power loss, full disk) at any moment leaves either the
previous complete checkpoint or the new complete checkpoint, never a torn one.

>>> import tempfile, pathlib
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> save_checkpoint(d / "last.ckpt", {"step": 3, "w": torch.ones(2)})
>>> load_checkpoint(d / "last.ckpt")["step"]
3
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import random
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save
from torch import nn

from .model import MENET, VARIANTS

__all__ = [
    "CheckpointError",
    "CheckpointWriteError",
    "atomic_write",
    "capture_rng_state",
    "export_weights",
    "load_checkpoint",
    "load_model",
    "remove_stale_temporaries",
    "restore_rng_state",
    "save_checkpoint",
]

#: Version of the checkpoint layout written by :func:`save_checkpoint`.
FORMAT_VERSION = 1

#: File signatures named when a file that is not a checkpoint is given as one.
_MAGIC = (
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"\x89PNG", "a PNG image"),
    (b"GIF8", "a GIF image"),
    (b"II*\x00", "a TIFF image"),
    (b"MM\x00*", "a TIFF image"),
    (b"BM", "a BMP image"),
    (b"RIFF", "a WebP image"),
)


class CheckpointError(RuntimeError):
    """A checkpoint or weight file is missing, truncated, corrupted or of the wrong kind."""


class CheckpointWriteError(OSError):
    """A file could not be written (full disk, read-only folder, ...).

    An :class:`OSError` with the original ``errno``; the message names the file
    and its folder, and says that the previous file at that path is unchanged.
    """


def _write_error(path: Path, exc: OSError) -> CheckpointWriteError:
    reason = exc.strerror or str(exc) or type(exc).__name__
    kept = (
        f"the previous {path.name} is unchanged"
        if path.exists()
        else f"no {path.name} was written"
    )
    message = f"cannot write {path} (in folder {path.parent}): {reason}; {kept}"
    if exc.errno is None:
        return CheckpointWriteError(message)
    return CheckpointWriteError(exc.errno, message)


def remove_stale_temporaries(folder: str | os.PathLike[str]) -> list[Path]:
    """Delete temporary files left in ``folder`` by an :func:`atomic_write` that was killed.

    Only names :func:`atomic_write` creates (``.<name>.<random>.tmp``) are
    touched. Returns the removed paths.

    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp()); _ = (d / ".last.ckpt.x1.tmp").write_bytes(b"")
    >>> [p.name for p in remove_stale_temporaries(d)]
    ['.last.ckpt.x1.tmp']
    """
    removed = []
    for p in Path(folder).glob(".*.tmp"):
        if p.is_file():
            with contextlib.suppress(OSError):
                p.unlink()
                removed.append(p)
    return removed


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str]) -> Any:
    """Open a temporary binary file that atomically replaces ``path`` on success.

    The temporary file lives in the destination directory (so ``os.replace`` is
    a rename on the same file system). On a clean exit it is flushed,
    ``fsync``-ed and renamed over ``path``; the directory is then ``fsync``-ed
    so the rename itself is durable. On an exception it is deleted and
    ``path`` is left untouched; an :class:`OSError` (full disk, read-only
    folder, ...) becomes a :class:`CheckpointWriteError` naming ``path``. The
    file gets the permissions of any other new file (``0o666`` less the umask,
    usually ``0o644``), not the ``0o600`` of a temporary file.

    Parameters
    ----------
    path : path-like
        Destination file.

    Yields
    ------
    BinaryIO
        The open temporary file.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "x.bin"
    >>> with atomic_write(p) as f:
    ...     _ = f.write(b"hello")
    >>> p.read_bytes()
    b'hello'
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise _write_error(path, exc) from exc
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            if hasattr(os, "fchmod"):  # POSIX
                os.fchmod(f.fileno(), 0o666 & ~_umask())
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and not isinstance(exc, CheckpointWriteError):
            raise _write_error(path, exc) from exc
        raise
    _fsync_dir(path.parent)


def _umask() -> int:
    """The process's umask (read by setting it, then restoring it at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable (no-op where directories can't be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. Windows
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(path: str | os.PathLike[str], state: Mapping[str, Any]) -> None:
    """Atomically write a checkpoint dictionary with ``torch.save``.

    Parameters
    ----------
    path : path-like
        Destination, conventionally ``<out>/last.ckpt``. The previous file at
        this path stays intact until the new one is completely on disk.
    state : Mapping[str, Any]
        Tensors and plain Python values only (``dict``, ``list``, ``tuple``,
        ``str``, ``int``, ``float``, ``bool``, ``None``), so that
        :func:`load_checkpoint` can use ``weights_only=True``. A
        ``"format_version"`` entry is added.

    Raises
    ------
    CheckpointWriteError
        The file could not be written (full disk, read-only folder); the
        message names it, and the previous checkpoint is intact.
    """
    payload = {"format_version": FORMAT_VERSION, **state}
    buffer = io.BytesIO()  # serialise first: a write error is then an OSError, never torch's
    torch.save(payload, buffer)
    with atomic_write(path) as f:
        f.write(buffer.getbuffer())


def load_checkpoint(
    path: str | os.PathLike[str], map_location: str | torch.device = "cpu"
) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint`, safely.

    Parameters
    ----------
    path : path-like
        Checkpoint file.
    map_location : str or torch.device
        Where to place the tensors (default CPU).

    Returns
    -------
    dict[str, Any]
        The stored state.

    Raises
    ------
    CheckpointError
        If the file is missing, truncated, corrupted, not a dict, or contains
        anything other than tensors and plain values. The message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    with path.open("rb") as f:
        head = f.read(8)
    if len(head) < 4:
        raise CheckpointError(
            f"checkpoint {path} is unreadable (truncated or corrupted): {len(head)} bytes"
        )
    if not head.startswith((b"PK\x03\x04", b"\x80")):  # torch's zip layout, or a bare pickle
        kind = next((name for magic, name in _MAGIC if head.startswith(magic)), None)
        raise CheckpointError(
            f"{path} is not a MENET checkpoint or weights file"
            + (f" (it is {kind})" if kind else "")
            + ": expected a .ckpt written by menet train or a .safetensors export"
        )
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"checkpoint {path} holds Python objects besides tensors and plain values; "
            "it is refused, because loading such objects can run code"
        ) from exc
    except Exception as exc:  # torch raises several types for damaged files
        first = (str(exc).strip().splitlines() or [""])[0]
        raise CheckpointError(
            f"checkpoint {path} is unreadable (truncated or corrupted): "
            f"{type(exc).__name__}: {first}"
        ) from exc
    if not isinstance(state, dict) or "format_version" not in state:
        raise CheckpointError(
            f"checkpoint {path} is not a MENET training checkpoint "
            f"(expected a dict with 'format_version', found {type(state).__name__})"
        )
    if state["format_version"] != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format version {state['format_version']}, "
            f"this code reads version {FORMAT_VERSION}"
        )
    return state


# ----------------------------------------------------------------------------- RNG state


def capture_rng_state() -> dict[str, Any]:
    """Capture every global random state as weights-only-loadable values.

    Covers the torch CPU generator, every CUDA device generator (if CUDA is
    initialised), NumPy's legacy global generator and Python's ``random``.

    Returns
    -------
    dict[str, Any]
        ``{"torch": ByteTensor, "cuda": [ByteTensor, ...], "numpy": {...},
        "python": {...}}``; restore with :func:`restore_rng_state`.

    Examples
    --------
    >>> s = capture_rng_state()
    >>> a = torch.rand(3); restore_rng_state(s)
    >>> torch.equal(a, torch.rand(3))
    True
    """
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state(legacy=True)
    py_version, py_internal, py_gauss = random.getstate()
    cuda: list[torch.Tensor] = []
    if torch.cuda.is_available() and torch.cuda.is_initialized():  # type: ignore[no-untyped-call]
        cuda = [t.clone() for t in torch.cuda.get_rng_state_all()]
    return {
        "torch": torch.get_rng_state().clone(),
        "cuda": cuda,
        "numpy": {
            "name": str(np_name),
            "keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "cached_gaussian": float(np_gauss),
        },
        "python": {
            "version": int(py_version),
            "internal": torch.tensor(py_internal, dtype=torch.int64),
            "gauss_next": py_gauss,
        },
    }


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Restore random states captured by :func:`capture_rng_state`.

    CUDA states are restored only when CUDA is available with at least as
    many devices; a checkpoint from a GPU run thus resumes on CPU.
    """
    torch.set_rng_state(state["torch"].cpu())
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and torch.cuda.device_count() >= len(cuda):
        torch.cuda.set_rng_state_all([t.cpu() for t in cuda])
    npst = state["numpy"]
    np.random.set_state(
        (
            npst["name"],
            npst["keys"].numpy().astype(np.uint32),
            npst["pos"],
            npst["has_gauss"],
            npst["cached_gaussian"],
        )
    )
    py = state["python"]
    internal = tuple(int(v) for v in py["internal"].tolist())
    random.setstate((py["version"], internal, py["gauss_next"]))


# ----------------------------------------------------------------------------- weights


def export_weights(
    model: nn.Module, path: str | os.PathLike[str], variant: str, **info: Any
) -> Path:
    """Write the model's ``state_dict`` as safetensors plus a JSON sidecar.

    Parameters
    ----------
    model : nn.Module
        The trained network (its buffers, e.g. BatchNorm statistics, are included).
    path : path-like
        Destination ``*.safetensors`` file. The sidecar is ``path`` with the
        suffix ``.json`` and records ``{"variant": ..., **info}``; the variant
        is also stored in the safetensors metadata so the file alone suffices.
    variant : str
        Key of :data:`menet.model.VARIANTS` used to rebuild the network.
    **info
        Extra JSON-serialisable facts (e.g. weighting, steps) for the sidecar.

    Returns
    -------
    Path
        The safetensors path.
    """
    path = Path(path)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = {"variant": variant, "format": "menet-weights-1"}
    with atomic_write(path) as f:
        f.write(save(tensors, metadata=meta))
    sidecar = {"variant": variant, **info}
    with atomic_write(path.with_suffix(".json")) as f:
        f.write((json.dumps(sidecar, indent=2, sort_keys=True) + "\n").encode())
    return path


def _variant_from_sidecar(path: Path, meta: Mapping[str, str] | None) -> str | None:
    if meta and "variant" in meta:
        return meta["variant"]
    side = path.with_suffix(".json")
    if side.is_file():
        try:
            variant = json.loads(side.read_text()).get("variant")
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"weights sidecar {side} is unreadable: {exc}") from exc
        return None if variant is None else str(variant)
    return None


def load_model(
    path: str | os.PathLike[str],
    device: str | torch.device = "cpu",
    variant: str | None = None,
) -> nn.Module:
    """Rebuild a MENET in eval mode from a ``.safetensors`` export or a training checkpoint.

    Parameters
    ----------
    path : path-like
        ``*.safetensors`` written by :func:`export_weights`, or a ``*.ckpt``
        written during training (read with ``weights_only=True``).
    device : str or torch.device
        Device for the returned model.
    variant : str, optional
        Override the variant recorded in the file (needed only for
        safetensors files written by other tools).

    Returns
    -------
    nn.Module
        The model, in ``eval()`` mode.

    Raises
    ------
    CheckpointError
        If the file is missing/corrupted, the variant is unknown, or the
        tensors don't match the architecture (the message names the file).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                meta = f.metadata()
                state = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as exc:
            raise CheckpointError(
                f"weights file {path} is not a readable safetensors file: {exc}"
            ) from exc
        variant = variant or _variant_from_sidecar(path, meta)
    else:
        ckpt = load_checkpoint(path)
        if "model" not in ckpt:
            raise CheckpointError(f"checkpoint {path} holds no 'model' state")
        state = ckpt["model"]
        variant = variant or ckpt.get("config", {}).get("variant")
    if variant is None:
        raise CheckpointError(
            f"weights file {path} does not record its variant; pass variant= "
            f"(one of {sorted(VARIANTS)})"
        )
    if variant not in VARIANTS:
        raise CheckpointError(
            f"weights file {path} names unknown variant {variant!r}; "
            f"expected one of {sorted(VARIANTS)}"
        )
    model = MENET.variant(variant)
    missing = sorted(set(model.state_dict()) - set(state))
    unexpected = sorted(set(state) - set(model.state_dict()))
    if missing or unexpected:
        first = (missing or unexpected)[0]
        raise CheckpointError(
            f"weights file {path} does not match MENET variant {variant!r}: {len(missing)} "
            f"tensor(s) missing, {len(unexpected)} unexpected (e.g. {first!r})"
        )
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:  # a shape mismatch: its first line names the tensor
        first = (str(exc).strip().splitlines() or [""])[-1].strip()
        raise CheckpointError(
            f"weights file {path} does not match MENET variant {variant!r}: {first}"
        ) from exc
    # Module.to moves in place; its stubs lack memory_format
    model.to(device, memory_format=torch.channels_last)  # type: ignore[call-overload]
    return model.eval()
