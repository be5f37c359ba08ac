"""The landing page (docs/index.rst) and the top of README.md show what the project does.

The headline numbers must be those of the model card's table
(``benchmarks/results/model_card.md``, written by ``benchmarks/model_card.py``), the
figure must be the one ``docs/_scripts/landing_figure.py`` draws, and both pages give
the two install commands.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CARD = ROOT / "benchmarks" / "results" / "model_card.md"
FIGURE = ROOT / "docs" / "_static" / "landing.jpg"
INSTALL = ("pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu",
           "pip install . examples/menet")


def card_scores() -> dict[tuple[str, str], tuple[str, str]]:
    """``(set, inference) -> (input PSNR, output PSNR)`` of the card's Y, full-image rows."""
    rows = re.findall(r"^\| (Rain100[LH]) \| Y, full image \| ([^|]+?) \| ([\d.]+) / [\d.]+ \| "
                      r"([\d.]+) / [\d.]+ \|", CARD.read_text(), flags=re.M)
    return {(name, how): (inp, out) for name, how, inp, out in rows}


@pytest.mark.parametrize("page", ["docs/index.rst", "README.md"])
def test_the_page_shows_the_model_cards_headline_numbers(page: str) -> None:
    text = (ROOT / page).read_text()
    scores = card_scores()
    assert {k[1] for k in scores} >= {"one pass", "`--ensemble flips`"}, scores
    for (name, how), (inp, out) in scores.items():
        row = next(line for line in _rows(text) if line.startswith(name))
        assert f"{inp} dB" in row and f"{out} dB" in row, (page, name, how, row)


def _rows(text: str) -> list[str]:
    """Table rows as one line each: a Markdown row, or an RST list-table row joined up."""
    md = [line.strip("| ") for line in text.splitlines() if line.startswith("| Rain100")]
    rst = re.findall(r"\* - (Rain100[LH])\n((?:\s+- .+\n)+)", text)
    return md + [name + " " + " ".join(cells.split()) for name, cells in rst]


@pytest.mark.parametrize("page", ["docs/index.rst", "README.md"])
def test_the_page_shows_the_figure_and_the_two_install_commands(page: str) -> None:
    text = (ROOT / page).read_text()
    assert "landing.jpg" in text.split("Install")[0], "the figure comes first"
    for command in INSTALL:
        assert command in text, (page, command)
    assert FIGURE.is_file() and FIGURE.stat().st_size < 300 * 1024
    tracked = subprocess.run(["git", "ls-files", "--error-unmatch", str(FIGURE)], cwd=ROOT,
                             capture_output=True)
    assert tracked.returncode == 0, f"{FIGURE} is not committed"


@pytest.mark.slow
def test_the_figure_script_draws_a_two_row_jpeg(tmp_path: Path) -> None:
    pytest.importorskip("menet")
    pytest.importorskip("skimage")
    from PIL import Image

    out = tmp_path / "landing.jpg"
    proc = subprocess.run([sys.executable, str(ROOT / "docs" / "_scripts" / "landing_figure.py"),
                           "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    with Image.open(out) as im, Image.open(FIGURE) as shipped:
        assert im.format == "JPEG" and im.size == shipped.size


def test_the_model_card_and_the_wheel_note_say_the_weights_come_from_research_data() -> None:
    card = (ROOT / "docs" / "model_card.md").read_text()
    licence = card[card.index("## Licence"):]
    assert "MIT" in licence and "research" in licence and "WEIGHTS-LICENSE.md" in licence
    note = ROOT / "examples" / "menet" / "menet" / "weights" / "WEIGHTS-LICENSE.md"
    assert "research" in note.read_text()
    assert "MIT License" in (ROOT / "LICENSE").read_text()
    assert (ROOT / "LICENSE").read_text() == (ROOT / "examples" / "menet" / "LICENSE").read_text()
