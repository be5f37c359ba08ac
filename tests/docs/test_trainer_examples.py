"""The trainer examples of ``docs/user_guide/trainers.rst`` run (``docs/_examples``)."""

from __future__ import annotations

import importlib.util
import runpy
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "_examples"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("script", "package"),
    [("lightning_multitask.py", "lightning"), ("hf_multitask.py", "transformers"),
     ("accelerate_multitask.py", "accelerate")],
)
def test_trainer_example_runs(script: str, package: str) -> None:
    if importlib.util.find_spec(package) is None:
        pytest.skip(f"{package} is not installed")
    weights = runpy.run_path(str(EXAMPLES / script))["main"]()
    assert weights and all(isinstance(w, float) for w in weights.values())
