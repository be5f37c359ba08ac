"""Output folders, checked before any model work; finished work never overwritten unasked.

:func:`ensure_out_dir` creates ``--out`` and proves a file can be created in it,
so that a bad folder is one clear line before a model is loaded, not one
failure per image after all of them went through the network.
:func:`refuse_existing` names the results a command would replace.

>>> import tempfile, pathlib
>>> out = ensure_out_dir(pathlib.Path(tempfile.mkdtemp()) / "new" / "folder")
>>> out.is_dir()
True
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from .checkpoint import CheckpointWriteError

__all__ = ["RUN_FILES", "ensure_out_dir", "refuse_existing"]

#: The files whose presence in ``--out`` means a training run lives there.
RUN_FILES = ("last.ckpt", "model.safetensors")


def ensure_out_dir(out: str | os.PathLike[str], flag: str = "--out") -> Path:
    """Create the folder ``out`` (with its parents) and check that a file can be created in it.

    Raises
    ------
    CheckpointWriteError
        An :class:`OSError` with one line naming the folder and the reason:
        ``out`` is an existing file, or the folder cannot be created or written
        (read-only, no permission, a parent that is a file, ...).
    """
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise CheckpointWriteError(
            f"{flag} {path} is an existing file, not a folder; choose another {flag}"
        )
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".menet-write-test-{os.getpid()}.tmp"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        error = CheckpointWriteError(
            f"output folder {path} is not writable ({exc.strerror or exc}); choose another {flag}"
        )
        error.errno = exc.errno  # the message stays one line, without "[Errno N]"
        raise error from exc
    return path


def refuse_existing(paths: Sequence[Path], what: str, remedy: str) -> str | None:
    """One line naming the ``paths`` that exist (``what`` they are, and the ``remedy``), or None.

    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp()); _ = (d / "a.png").write_bytes(b"")
    >>> refuse_existing([d / "a.png", d / "b.png"], "result", "pass --force")[:19]
    '1 result(s) already'
    """
    found = [p for p in paths if p.exists()]
    if not found:
        return None
    shown = ", ".join(str(p) for p in found[:3]) + (", ..." if len(found) > 3 else "")
    return f"{len(found)} {what}(s) already exist: {shown}; {remedy}"
