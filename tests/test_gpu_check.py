"""scripts/gpu_check.sh: its CPU dry run does every step, tiny, and writes one results folder.

On a GPU machine the same script runs the CUDA test subset, 300 steps of training with and
without --amp, the bundled model on the Rain100L test ids and the benchmarks; here its
``--dry-run`` proves each step's command works and the summary is written.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None,
                       reason="needs bash and coreutils' timeout"),
]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)


def test_the_dry_run_does_every_step_on_cpu(tmp_path: Path) -> None:
    proc = _run("--dry-run", str(tmp_path))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = (tmp_path / "summary.md").read_text()
    assert "dry run on CPU" in summary
    for name in ("tests", "train-fp32", "train-amp", "evaluate", "speed", "overhead"):
        assert f"| {name} | ok |" in summary, summary
    for path in ("env.txt", "tests.xml", "train-fp32/model.safetensors",
                 "train-amp/model.safetensors", "evaluate/summary.json", "speed.json",
                 "overhead.json"):
        assert (tmp_path / path).is_file(), path
    assert "evaluate (standard, 1 images)" in summary and "- train amp: 3 steps" in summary


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_without_cuda_the_real_check_refuses_at_once(tmp_path: Path) -> None:
    proc = _run(str(tmp_path))
    assert proc.returncode == 2
    assert "no CUDA device here; use --dry-run" in proc.stderr
    assert not (tmp_path / "tests.log").exists()
