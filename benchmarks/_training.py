"""Shared pieces of the training benchmarks (``quality.py``, ``recipe.py``).

A run is a :class:`menet.train.TrainConfig` trained with :func:`menet.train.train`
and scored on the ``test`` ids of ``rain100-split.json`` under both protocols.
Runs live in a persistent folder and resume from their ``last.ckpt``, so a
benchmark that outlasts one sitting continues where it stopped.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from menet.data import PairedFolder, load_split
from menet.evaluate import evaluate_pairs, summarize
from menet.train import TrainConfig, train

REPO = Path(__file__).resolve().parents[1]
PROTOCOLS = ("paper", "standard")

#: Each part of the training recipe: (the paper's choice, the fast recipe's), as TrainConfig fields.
RECIPE_PARTS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "cosine": ({"lr_schedule": "step"}, {"lr_schedule": "cosine"}),
    "clip": ({"clip_grad_norm": None}, {"clip_grad_norm": 1.0}),
    "zero_init": ({"zero_init_residual": False}, {"zero_init_residual": True}),
}

#: Choices tried on top of ``fast`` that it does not make (its row is ``fast+<name>``):
#: the texture loss as the sum over Gram entries, as a reference implementation has it;
#: mixed precision (bfloat16 autocast on CPU, float16 with a scaler on CUDA).
VARIATIONS: dict[str, dict[str, Any]] = {
    "texture_sum": {"texture_normalize": False},
    "amp": {"amp": True},
}


def recipe(name: str) -> dict[str, Any]:
    """TrainConfig overrides of the ``"paper"`` or ``"fast"`` recipe."""
    if name not in ("paper", "fast"):
        raise ValueError(f"unknown recipe {name!r}; choose 'paper' or 'fast'")
    index = 0 if name == "paper" else 1
    shared = {"texture_normalize": True}  # the texture loss as the mean, in both
    return {**shared, **{k: v for choices in RECIPE_PARTS.values()
                         for k, v in choices[index].items()}}


def default_data_root() -> Path:
    """``$MTLWEIGHT_DATA``, else ``../shared/data`` beside the repository."""
    env = os.environ.get("MTLWEIGHT_DATA")
    return Path(env) if env else (REPO / ".." / "shared" / "data").resolve()


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (NaN for one value)."""
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else float("nan"))


def train_and_score(config: TrainConfig, test_root: Path, split: Path,
                    crop: int = 224) -> dict[str, Any]:
    """Train ``config`` (resuming from ``<out>/last.ckpt`` when present) and score it.

    Returns the steps, seconds, last weights and the scores of both protocols.
    """
    if (Path(config.out) / "last.ckpt").is_file():
        config.resume = True
    result = train(config)
    if result.interrupted:
        raise KeyboardInterrupt
    test = PairedFolder(test_root, ids=load_split(split)["test"], cache=True)
    start = time.perf_counter()
    scores = {}
    for protocol in PROTOCOLS:
        records = evaluate_pairs(result.model, test, protocol, batch_size=10,
                                 crop_size=crop, progress=False)
        scores[protocol] = summarize(records)
    last = result.last
    return {"steps": result.step, "train_seconds": result.seconds,
            "eval_seconds": time.perf_counter() - start,
            "final_losses": last.losses if last else {},
            "final_weights": last.weights if last else {}, "scores": scores}
