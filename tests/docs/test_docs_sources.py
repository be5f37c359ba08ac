"""Every file a docs page includes or shows is committed, not only present here.

A page that includes a benchmark's Markdown builds on the machine that ran the
benchmark and fails on a clean clone when the result was never committed. The
HTML build cannot tell the two apart; ``git ls-files`` can. Skipped outside a git
checkout (an sdist, an installed copy).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"

# reST: ".. include:: path"; MyST: "```{include} path". Same for figures and images.
_DIRECTIVE = re.compile(
    r"^(?:\.\. (?P<rst>include|literalinclude|figure|image)::"
    r"|```\{(?P<md>include|literalinclude|figure|image)\})\s+(?P<path>\S+)\s*$",
    re.MULTILINE,
)


def referenced_files(docs: Path = DOCS) -> list[tuple[Path, int, Path]]:
    """(page, line, file) for each include, figure and image directive under ``docs``."""
    found = []
    pages = sorted(p for p in [*docs.rglob("*.rst"), *docs.rglob("*.md")]
                   if "_build" not in p.parts and "_generated" not in p.parts)
    for page in pages:
        text = page.read_text(encoding="utf-8")
        for m in _DIRECTIVE.finditer(text):
            ref = m.group("path")
            # Sphinx reads "/x" as relative to the source directory.
            target = docs / ref.lstrip("/") if ref.startswith("/") else page.parent / ref
            found.append((page, text.count("\n", 0, m.start()) + 1, target.resolve()))
    return found


def _tracked(root: Path) -> set[Path]:
    out = subprocess.run(["git", "ls-files", "-z"], cwd=root, capture_output=True, check=True)
    return {(root / p).resolve() for p in out.stdout.decode().split("\0") if p}


def _in_git_checkout() -> bool:
    if shutil.which("git") is None:
        return False
    probe = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=ROOT,
                           capture_output=True, text=True)
    return probe.returncode == 0 and Path(probe.stdout.strip()).resolve() == ROOT.resolve()


def test_the_pattern_finds_both_syntaxes(tmp_path: Path) -> None:
    (tmp_path / "a.rst").write_text(".. include:: ../x/r.md\n   :parser: myst\n\n"
                                    ".. figure:: /_static/f.png\n", encoding="utf-8")
    (tmp_path / "b.md").write_text("text\n```{include} ../y.md\n```\n", encoding="utf-8")
    got = {(p.name, line, t) for p, line, t in referenced_files(tmp_path)}
    assert got == {("a.rst", 1, (tmp_path / "../x/r.md").resolve()),
                   ("a.rst", 4, (tmp_path / "_static/f.png").resolve()),
                   ("b.md", 2, (tmp_path / "../y.md").resolve())}


def test_the_docs_reference_files() -> None:
    # The check below must have something to check: the pages include the
    # benchmark results and the changelog.
    names = {t.name for _, _, t in referenced_files()}
    assert {"fixed_overhead.md", "model_card.md", "CHANGELOG.md"} <= names


@pytest.mark.skipif(not _in_git_checkout(), reason="not a git checkout")
def test_every_included_file_is_committed() -> None:
    tracked = _tracked(ROOT)
    missing = [f"{page.relative_to(ROOT)}:{line}: {target.relative_to(ROOT)}"
               for page, line, target in referenced_files() if target not in tracked]
    assert not missing, ("docs reference files that git does not track (a clean clone "
                         "will not build):\n" + "\n".join(missing))
