"""The one local Sphinx extension of the mtlweight docs: what no maintained extension does.

Markdown, the command reference, math and the API pages use maintained extensions
(myst-parser, sphinx-argparse, the local MathJax bundle, autodoc); this module
only holds four small pieces specific to these docs:

``:test:`tests/path.py::test_name```
    A reference to a test. The build fails (under ``-W``) if the file or the test
    function does not exist, or the file is not committed to git, so the
    reliability page cannot cite a test that was renamed, removed or never
    committed.
``notes_before_sections`` (``autodoc-process-docstring``)
    Moves a ``.. note::`` that follows a numpy-style section of a docstring, and a
    paragraph of prose inside ``Parameters`` or ``Raises``, to before the first
    section: napoleon would otherwise read them as one more parameter or
    exception name.
``public_bases`` (``autodoc-process-bases``)
    Shows a class's first public ancestor instead of a private base class.
``KeepOptionDashes`` (a transform)
    Keeps the two hyphens of a command-line option (``--force``) in prose, where
    smart quotes would turn them into an en dash (``–force``); a spaced `` -- ``
    between words still becomes a dash.
"""

from __future__ import annotations

import functools
import re
import subprocess
from pathlib import Path
from typing import Any

from docutils import nodes
from sphinx.application import Sphinx
from sphinx.transforms import SphinxTransform
from sphinx.util import logging
from sphinx.util.docutils import SphinxRole
from sphinx.util.nodes import is_smartquotable

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]


@functools.cache
def _tracked(relpath: str) -> bool:
    """Whether git tracks ``relpath`` (``True`` outside a git checkout)."""
    if not (ROOT / ".git").exists():
        return True
    try:
        proc = subprocess.run(
            ["git", "ls-files", "--error-unmatch", relpath],
            cwd=ROOT,
            capture_output=True,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError):
        return True
    return proc.returncode == 0


def stale_test_reference(target: str) -> str:
    """Why ``tests/x.py::test_y`` names no committed test (``""`` when it does)."""
    file_part, _, rest = target.strip().partition("::")
    path = ROOT / file_part
    if not path.is_file():
        return f"test file {file_part} does not exist"
    if not _tracked(file_part):
        return f"test file {file_part} is not committed (a fresh clone would lack it)"
    source = path.read_text(encoding="utf-8")
    for part in rest.split("::") if rest else []:
        name = part.split("[")[0]
        if not re.search(rf"^\s*(async\s+)?(def|class)\s+{re.escape(name)}\b", source, re.M):
            return f"{name} is not defined in {file_part}"
    return ""


class TestRole(SphinxRole):
    """``:test:`tests/x.py::test_y``` -- a checked reference to a test."""

    def run(self) -> tuple[list[nodes.Node], list[nodes.system_message]]:
        target = self.text.strip()
        problem = stale_test_reference(target)
        if problem:
            logger.warning(
                "stale test reference %r: %s", target, problem, location=self.get_location()
            )
        return [nodes.literal(target, target, classes=["test-ref"])], []


_NUMPY_SECTION = re.compile(
    r"^(Parameters|Other Parameters|Returns|Yields|Receives|Raises|Warns|Attributes|Methods|"
    r"See Also|Notes|References|Examples)\s*$"
)
# Sections whose entries are "name" or "name : type" lines over an indented description.
_FIELD_SECTIONS = {"Parameters", "Other Parameters", "Receives", "Raises", "Warns", "Attributes"}


def _is_header(lines: list[str], i: int) -> bool:
    return (
        i + 1 < len(lines)
        and bool(_NUMPY_SECTION.match(lines[i]))
        and set(lines[i + 1].strip()) == {"-"}
    )


def _free_paragraph(lines: list[str], i: int) -> bool:
    """Whether ``lines[i]`` starts a paragraph of prose, not a field entry (``name : type``)."""
    line = lines[i]
    if not line.strip() or line[0].isspace() or (i > 0 and lines[i - 1].strip()):
        return False
    if " : " in line or not re.search(r"\s", line.strip()):
        return False  # a "name : type" entry, or a bare name
    return not (i + 1 < len(lines) and lines[i + 1][:1].isspace() and lines[i + 1].strip())


def notes_before_sections(
    app: Sphinx, what: str, name: str, obj: object, options: object, lines: list[str]
) -> None:
    """Move notes and prose that follow a numpy-style section to before the first section.

    In a numpy docstring, napoleon reads everything after a section header as part
    of that section, until the next header: a ``.. note::`` after ``Raises`` renders
    as an exception called ".. note::", and a paragraph after ``Parameters`` as a
    parameter. A ``.. note::`` block anywhere after the first section, and a
    paragraph of prose inside a field section (``Parameters``, ``Raises``, ...),
    move to before the first section, in their order. Runs before napoleon
    (priority 400); the docstrings keep their order in the source.
    """
    first = next((i for i in range(len(lines)) if _is_header(lines, i)), None)
    if first is None:
        return
    moved: list[str] = []
    section = ""
    i = first
    while i < len(lines):
        if _is_header(lines, i):
            section = lines[i].strip()
            i += 2
            continue
        if lines[i].startswith(".. note::"):
            j = i + 1
            while j < len(lines) and (not lines[j].strip() or lines[j].startswith(" ")):
                j += 1
        elif section in _FIELD_SECTIONS and _free_paragraph(lines, i):
            j = i + 1
            while j < len(lines) and lines[j].strip():
                j += 1
        else:
            i += 1
            continue
        block = lines[i:j]
        del lines[i:j]
        while block and not block[-1].strip():
            block.pop()
        moved += [*block, ""]
    lines[first:first] = moved


def public_bases(app: Sphinx, name: str, obj: object, options: object, bases: list[Any]) -> None:
    """Show the first public ancestor instead of a private base class (``_LearnedScale``)."""
    for i, base in enumerate(bases):
        if isinstance(base, type) and base.__name__.startswith("_"):
            bases[i] = next((b for b in base.__mro__ if not b.__name__.startswith("_")), object)
    seen: list[Any] = []  # the same class may now be listed twice
    for base in bases:
        if base not in seen:
            seen.append(base)
    bases[:] = seen


_OPTION = re.compile(r"((?<![\w-])--[A-Za-z][\w-]*)")


class KeepOptionDashes(SphinxTransform):
    """Wrap each ``--option`` of smart-quotable text in a span that smart quotes skip."""

    default_priority = 740  # before SphinxSmartQuotes (750)

    def apply(self, **kwargs: Any) -> None:
        for text in list(self.document.findall(nodes.Text)):
            if "--" not in text or not is_smartquotable(text):
                continue
            parts = _OPTION.split(str(text))
            if len(parts) == 1:
                continue
            new: list[nodes.Node] = [
                nodes.inline(p, p, support_smartquotes=False) if i % 2 else nodes.Text(p)
                for i, p in enumerate(parts)
                if p
            ]
            text.parent.replace(text, new)


def setup(app: Sphinx) -> dict[str, Any]:
    app.setup_extension("sphinx.ext.autodoc")
    app.connect("autodoc-process-docstring", notes_before_sections, priority=400)
    app.connect("autodoc-process-bases", public_bases)
    app.add_role("test", TestRole())
    app.add_transform(KeepOptionDashes)
    return {
        "version": "2",
        "env_version": 5,  # bump when a change here alters how pages are read
        "parallel_read_safe": True,
        "parallel_write_safe": True,
    }
