"""The pretrained model shipped inside the package, and what a weights file is.

``menet derain`` and ``menet evaluate`` use :data:`BUNDLED` when ``--weights``
is omitted: ``menet/weights/menet-rain100.safetensors`` (float16 storage, read
with :mod:`safetensors` only: no pickle), with its model card
``menet-rain100.json`` beside it (data, recipe, steps, scores). The file is
package data (``pyproject.toml``), so a non-editable ``pip install`` ships it.

:func:`pack_weights` turns a training export (``<out>/model.safetensors``) into
such a file; :func:`describe_weights` says in one line what a weights file is.

>>> BUNDLED.name
'menet-rain100.safetensors'
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save
from torch import nn

from .checkpoint import CheckpointError, atomic_write, load_model

__all__ = [
    "BUNDLED",
    "BundledWeightsMissingError",
    "bundled_weights",
    "describe_weights",
    "load_bundled",
    "pack_weights",
]

#: Where the package keeps its pretrained model.
BUNDLED = Path(__file__).parent / "weights" / "menet-rain100.safetensors"


class BundledWeightsMissingError(CheckpointError):
    """The pretrained model is not in this installation."""


def bundled_weights() -> Path:
    """The bundled weights file; :class:`BundledWeightsMissingError` if it is not installed."""
    path = BUNDLED
    if not path.is_file():
        raise BundledWeightsMissingError(
            f"the bundled pretrained model is missing from this installation (expected "
            f"{path}); reinstall the menet package (pip install examples/menet) or pass "
            f"--weights FILE"
        )
    return path


def load_bundled(device: str | torch.device = "cpu") -> nn.Module:
    """The bundled pretrained MENET in eval mode (through safetensors only)."""
    path = bundled_weights()
    if path.suffix != ".safetensors":  # never unpickle a file shipped as package data
        raise CheckpointError(f"bundled weights {path} must be a .safetensors file")
    return load_model(path, device=device)


def _card(path: Path) -> dict[str, Any]:
    side = path.with_suffix(".json")
    if not side.is_file():
        return {}
    try:
        card = json.loads(side.read_text())
    except (OSError, ValueError):
        return {}
    return card if isinstance(card, dict) else {}


def describe_weights(path: str | os.PathLike[str]) -> str:
    """One line: the file and what it is (bundled or not, variant, data, steps, weighting).

    The facts come from the JSON sidecar (model card) next to the file, else
    from the safetensors metadata.
    """
    path = Path(path)
    facts = dict(_card(path))
    if path.suffix == ".safetensors" and "variant" not in facts:
        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                facts.update(f.metadata() or {})
        except Exception:  # an unreadable file is reported by the loader itself
            pass
    what = ["the bundled pretrained model" if path.resolve() == BUNDLED.resolve() else None]
    if "description" in facts:
        what.append(str(facts["description"]))
    for key, label in (("variant", "MENET"), ("data", "trained on"), ("steps", "steps:"),
                       ("weighting", "weighting")):
        if key in facts and not (key == "data" and "description" in facts):
            value = facts[key]
            value = ", ".join(map(str, value)) if isinstance(value, list) else value
            what.append(f"{label} {value}")
    details = "; ".join(w for w in what if w)
    return f"{path} ({details})" if details else str(path)


def pack_weights(
    src: str | os.PathLike[str], dst: str | os.PathLike[str], card: Mapping[str, Any]
) -> Path:
    """Write ``src`` (an exported ``.safetensors``) as float16 ``dst`` with model card ``card``.

    Floating tensors are stored as float16 (half the size; the network runs in
    float32 after loading), others unchanged; the variant is kept in the
    metadata, and ``card`` (JSON-serialisable; ``"variant"`` is added) is
    written to ``dst`` with the suffix ``.json``.
    """
    src, dst = Path(src), Path(dst)
    try:
        with safe_open(str(src), framework="pt", device="cpu") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:
        raise CheckpointError(
            f"weights file {src} is not a readable safetensors file: {exc}"
        ) from exc
    if "variant" not in meta:
        raise CheckpointError(f"weights file {src} does not record its variant")
    half = {k: v.half() if v.is_floating_point() else v for k, v in tensors.items()}
    with atomic_write(dst) as out:
        out.write(save(half, metadata=meta))
    full_card = {**dict(card), "variant": meta["variant"]}
    with atomic_write(dst.with_suffix(".json")) as out:
        out.write((json.dumps(full_card, indent=2, sort_keys=True) + "\n").encode())
    return dst
