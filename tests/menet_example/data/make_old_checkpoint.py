"""Write ``old-layout.ckpt.gz``: a training checkpoint from the pre-split ``menet.train``.

Run once at commit feb428c (``train.py`` still one 1,105-line module), before the
training code was split into ``config``/``building``/``sampling``/``step``/``runlog``/``state``::

    OMP_NUM_THREADS=1 python tests/menet_example/data/make_old_checkpoint.py

It trains the run below (GB weighting, the ``shallow`` variant, 32-px random
crops of one built-in image, 4 steps of 2 patches, 1 step per epoch) and stops
after epoch 2, so the checkpoint holds step 2 of 4. To keep the file small the
large tensors (model parameters and Adam moments, > 1000 elements) are replaced
by zeros; their float64 sums and absolute sums are recorded in
``old-layout.json`` so that a test can check that the new code reproduces them.
Everything else (keys, config, scheduler, weighting and RNG states, counters)
is as the old code wrote it.
"""

from __future__ import annotations

import gzip
import io
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from menet.train import TrainConfig, train

HERE = Path(__file__).parent
OPTIONS: dict[str, Any] = {
    "synthetic": "light",
    "synthetic_images": ["chelsea"],
    "patches": "random",
    "patches_per_image": 2,
    "patch_size": 32,
    "batch_size": 2,
    "variant": "shallow",
    "epochs": None,
    "steps": 4,
    "progress": False,
}


class StopRunError(Exception):
    pass


def stop_after_two(epoch: int, step: int) -> None:
    if epoch == 2:
        raise StopRunError


def shrink(value: Any, sums: dict[str, list[float]], where: str) -> Any:
    if isinstance(value, torch.Tensor):
        if value.is_floating_point() and value.numel() > 1000:
            sums[where] = [float(value.double().sum()), float(value.double().abs().sum())]
            return torch.zeros_like(value)
        return value
    if isinstance(value, dict):
        return {k: shrink(v, sums, f"{where}/{k}") for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(shrink(v, sums, f"{where}/{i}") for i, v in enumerate(value))
    return value


def main() -> None:
    out = Path(tempfile.mkdtemp())
    try:
        train(TrainConfig(out=str(out / "run"), **OPTIONS), on_epoch_end=stop_after_two)
    except StopRunError:
        pass
    state = torch.load(out / "run" / "last.ckpt", weights_only=True)
    sums: dict[str, list[float]] = {}
    small = {k: shrink(v, sums, k) if k in ("model", "optimizer") else v for k, v in state.items()}
    buffer = io.BytesIO()
    torch.save(small, buffer)
    (HERE / "old-layout.ckpt.gz").write_bytes(gzip.compress(buffer.getvalue(), mtime=0))
    meta = {"options": OPTIONS, "stopped_after_epoch": 2, "sums": sums}
    (HERE / "old-layout.json").write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
    shutil.rmtree(out)


if __name__ == "__main__":
    main()
