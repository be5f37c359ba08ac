"""README.md: its quick start runs, and .ci/run runs exactly its test command."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def test_quick_start_runs() -> None:
    blocks = _blocks("python")
    assert blocks, "README.md has no python block"
    quick_start = blocks[0]
    assert 8 <= len(quick_start.strip().splitlines()) <= 30
    namespace: dict[str, object] = {}
    exec(compile(quick_start, "README.md", "exec"), namespace)
    weighting = namespace["weighting"]
    assert set(weighting.weights) == {"a", "b"}  # type: ignore[attr-defined]


def test_ci_runs_the_readme_test_command() -> None:
    commands = [b.strip() for b in _blocks("bash") if "pytest" in b]
    assert len(commands) == 1, "README.md must give exactly one test command"
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert commands[0] in ci.splitlines()


def test_main_job_command_is_the_demo() -> None:
    assert any(b.strip().endswith("python -m menet demo") for b in _blocks("bash"))
