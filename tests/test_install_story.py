"""One install story for CPU PyTorch: README, scripts/setup.sh and getting-started agree.

On a normal Linux machine ``pip install torch==X`` takes PyPI's CUDA build; the CPU build
comes from PyTorch's CPU index. Each of the three texts must say that same command.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
COMMAND = re.compile(r"pip install torch==(\d+\.\d+\.\d+) --index-url (\S+)")


def test_readme_setup_and_getting_started_install_the_same_cpu_torch() -> None:
    texts = {
        "README.md": (ROOT / "README.md").read_text(),
        "docs/getting_started.rst": (ROOT / "docs" / "getting_started.rst").read_text(),
    }
    found = {name: COMMAND.findall(text) for name, text in texts.items()}
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    default = re.search(r"TORCH_INDEX_URL=\$\{TORCH_INDEX_URL-(\S+)\}", setup)
    pinned = re.findall(r'"torch==(\d+\.\d+\.\d+)" --index-url "\$TORCH_INDEX_URL"', setup)
    assert default is not None and pinned, "setup.sh installs torch from $TORCH_INDEX_URL"
    found["scripts/setup.sh"] = [(pinned[0], default.group(1))]
    for name, commands in found.items():
        assert commands, f"{name} gives no CPU torch install command"
        assert set(commands) == {(pinned[0], CPU_INDEX)}, (name, commands)
    # No text tells a plain `pip install torch==X` gets the CPU build.
    for name, text in {**texts, "scripts/setup.sh": setup}.items():
        for line in text.splitlines():
            if re.search(r"pip install torch==\S+\s*($|#)", line):
                assert "CPU" not in line.split("#")[-1], (name, line)


def test_setup_sh_falls_back_to_pips_configuration(tmp_path: Path) -> None:
    """A failing index (offline) falls back to a plain install; TORCH_INDEX_URL= skips it."""
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    block = setup[setup.index("TORCH_INDEX_URL=${"):setup.index("\nfi\n") + 4]
    log = tmp_path / "calls"
    script = f"""
set -euo pipefail
PIP=(pip_stub)
pip_stub() {{ echo "$*" >> {log}; case "$*" in *--index-url*) return 1;; esac; }}
{block.replace('.venv/bin/python -c "import torch"', "false")}
"""
    subprocess.run(["bash", "-c", script], check=True, capture_output=True, text=True)
    assert log.read_text().splitlines() == [f"torch==2.13.0 --index-url {CPU_INDEX}",
                                            "torch==2.13.0"]
    log.unlink()
    subprocess.run(["bash", "-c", script], check=True, capture_output=True, text=True,
                   env={"TORCH_INDEX_URL": "", "PATH": "/usr/bin:/bin"})
    assert log.read_text().splitlines() == ["torch==2.13.0"]
