"""The documentation builds with warnings as errors, its examples run, and it covers the API.

The HTML build and the doctest run use ``sphinx-build -W --keep-going`` exactly as
CI's documentation step does (see ``docs/conf.py``); they share one doctree cache,
so the pages are read once. Skipped when Sphinx or the theme is not installed
(``pip install -e ".[docs]"``).
"""

from __future__ import annotations

import importlib
import inspect
import re
import runpy
import subprocess
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("sphinx")
pytest.importorskip("furo")
pytest.importorskip("sphinx_autodoc_typehints")
pytest.importorskip("matplotlib")

import mtlweight

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
sys.path.insert(0, str(DOCS / "_ext"))

from md2rst import md_to_rst  # noqa: E402
from mtlweight_docs import notes_before_sections  # noqa: E402

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Build:
    out: Path
    returncode: int
    log: str


def _sphinx(builder: str, out: Path) -> Build:
    target = out / builder
    # The HTML build reads the pages in parallel (both of CI's cores); the doctest
    # builder runs serially and reuses the doctrees read by the HTML build.
    jobs = ["-j", "auto"] if builder == "html" else []
    cmd = [
        sys.executable,
        "-m",
        "sphinx",
        "-W",
        "--keep-going",
        *jobs,
        "-b",
        builder,
        "-d",
        str(out / "doctrees"),
        str(DOCS),
        str(target),
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    return Build(target, proc.returncode, proc.stdout + proc.stderr)


@pytest.fixture(scope="module")
def builds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Build]:
    out = tmp_path_factory.mktemp("docs")
    html = _sphinx("html", out)
    doctest = _sphinx("doctest", out)
    return {"html": html, "doctest": doctest}


def _warnings(log: str) -> list[str]:
    return [line for line in log.splitlines() if "WARNING" in line or "ERROR" in line]


def test_html_builds_with_warnings_as_errors(builds: dict[str, Build]) -> None:
    html = builds["html"]
    assert html.returncode == 0, "sphinx-build -W failed:\n" + "\n".join(_warnings(html.log))
    assert _warnings(html.log) == []
    for page in (
        "index",
        "getting_started",
        "user_guide/strategies",
        "user_guide/shared",
        "user_guide/mixed_precision",
        "user_guide/compile",
        "user_guide/logging",
        "user_guide/checkpoints",
        "user_guide/distributed",
        "user_guide/errors",
        "comparison",
        "losses",
        "menet",
        "reproduction",
        "reliability",
        "changelog",
        "api/mtlweight",
        "api/mtlweight.losses",
        "api/mtlweight.functional",
        "api/mtlweight.autograd",
        "api/mtlweight.distributed",
    ):
        assert (html.out / f"{page}.html").is_file(), f"page {page} was not built"


def test_docstring_notes_render_as_notes(builds: dict[str, Build]) -> None:
    # A `.. note::` after a numpy "Raises" section must not become an exception name.
    assert builds["html"].returncode == 0
    for page in (builds["html"].out / "api").glob("*.html"):
        text = page.read_text(encoding="utf-8")
        assert ".. note::" not in text, f"{page.name}: a docstring note rendered as text"
    assert 'class="admonition note"' in (builds["html"].out / "api" / "mtlweight.html").read_text(
        encoding="utf-8"
    )


def test_notes_before_sections_moves_only_notes_after_a_section() -> None:
    lines = [
        "Summary.",
        "",
        "Raises",
        "------",
        "ValueError",
        "    If bad.",
        "",
        ".. note::",
        "    Departs from the paper.",
        "",
        "Examples",
        "--------",
        ">>> 1",
    ]
    notes_before_sections(None, "class", "x", None, None, lines)  # type: ignore[arg-type]
    assert lines[:6] == ["Summary.", "", ".. note::", "    Departs from the paper.", "", "Raises"]
    assert lines.count(".. note::") == 1 and lines[-3:] == ["Examples", "--------", ">>> 1"]
    untouched = ["Summary.", "", ".. note::", "    Before any section.", "", "Examples", "---"]
    copy = list(untouched)
    notes_before_sections(None, "class", "x", None, None, copy)  # type: ignore[arg-type]
    assert copy == untouched


def test_committed_images_are_small() -> None:
    for image in (DOCS / "_static").rglob("*"):
        if image.suffix.lower() in (".png", ".jpg", ".jpeg", ".svg", ".gif"):
            size = image.stat().st_size
            assert size < 200_000, f"{image.relative_to(ROOT)} is {size} bytes (limit 200 KB)"


def test_figures_are_drawn_at_build_time(builds: dict[str, Build]) -> None:
    assert builds["html"].returncode == 0
    # Exactly one image per plot: a script drawing at import time would add more.
    # The MENET page shows the four committed figures of a demo run.
    for page, count in (("user_guide/logging", 1), ("losses", 2), ("menet", 4)):
        text = (builds["html"].out / f"{page}.html").read_text(encoding="utf-8")
        images = re.findall(r'<img [^>]*src="([^"]+\.(?:png|jpg))"', text)
        assert len(images) == count, f"{page}: expected {count} figures, found {images}"
        for src in images:
            assert (builds["html"].out / page).parent.joinpath(src).resolve().is_file(), src


def test_every_registered_strategy_is_in_the_comparison_table() -> None:
    from mtlweight import _registry

    page = (DOCS / "comparison.rst").read_text(encoding="utf-8")
    missing = [
        cls.__name__
        for cls in set(_registry._REGISTRY.values())
        if f":class:`~mtlweight.{cls.__name__}`" not in page
    ]
    assert missing == [], f"strategies missing from docs/comparison.rst: {sorted(missing)}"


def test_every_example_in_the_pages_runs(builds: dict[str, Build]) -> None:
    doctest = builds["doctest"]
    report = (doctest.out / "output.txt").read_text(encoding="utf-8")
    assert doctest.returncode == 0, report[-4000:] + "\n".join(_warnings(doctest.log))
    tests = re.search(r"^\s*(\d+) tests?\s*$", report.split("Doctest summary")[-1], re.M)
    assert tests is not None, report[-2000:]
    assert int(tests.group(1)) >= 50, f"only {tests.group(1)} examples ran"
    assert re.search(r"^\s*0 failures in tests\s*$", report, re.M), report[-4000:]


def _inventory(path: Path) -> dict[str, str]:
    """Read a Sphinx ``objects.inv`` (version 2): ``{name: domain:role}``."""
    raw = path.read_bytes()
    lines = raw.split(b"\n", 4)
    assert lines[0].startswith(b"# Sphinx inventory version 2"), lines[0]
    body = zlib.decompress(lines[4]).decode("utf-8")
    entries: dict[str, str] = {}
    for line in body.splitlines():
        m = re.match(r"(?x)(.+?)\s+(\S+:\S+)\s+(-?\d+)\s+(\S+)\s+(.*)", line)
        if m:
            entries.setdefault(m.group(1), m.group(2))
    return entries


def _public_names() -> list[tuple[str, str]]:
    """(qualified name, expected role) of every public name, submodules' ``__all__`` too."""
    names: list[tuple[str, str]] = []
    for name in mtlweight.__all__:
        if name == "__version__":
            continue
        obj = getattr(mtlweight, name)
        if inspect.ismodule(obj):
            names.append((obj.__name__, "py:module"))
            for sub in getattr(obj, "__all__", []):
                names.append((f"{obj.__name__}.{sub}", ""))
        else:
            names.append((f"mtlweight.{name}", ""))
    # Public submodules that are not re-exported in __all__ (mtlweight.distributed).
    for path in sorted((ROOT / "mtlweight").glob("[!_]*.py")):
        module = importlib.import_module(f"mtlweight.{path.stem}")
        if (module.__name__, "py:module") not in names:
            names.append((module.__name__, "py:module"))
            names += [(f"{module.__name__}.{sub}", "") for sub in getattr(module, "__all__", [])]
    return names


def test_every_public_name_is_documented(builds: dict[str, Build]) -> None:
    assert builds["html"].returncode == 0
    inventory = _inventory(builds["html"].out / "objects.inv")
    missing = [
        name
        for name, role in _public_names()
        if name not in inventory or (role and inventory[name] != role)
    ]
    assert missing == [], f"public names missing from the API reference: {missing}"


def test_the_inventory_reader_sees_missing_names(builds: dict[str, Build]) -> None:
    # The check above must be able to fail: a name that is not public is not found.
    inventory = _inventory(builds["html"].out / "objects.inv")
    assert "mtlweight.GradientBalance" in inventory
    assert "mtlweight._base.balance" not in inventory
    assert "mtlweight.NoSuchStrategy" not in inventory


def test_no_network_at_build_time() -> None:
    conf = runpy.run_path(str(DOCS / "conf.py"))
    assert "sphinx.ext.intersphinx" not in conf["extensions"]
    assert not conf.get("intersphinx_mapping")
    assert "sphinx.ext.imgconverter" not in conf["extensions"]


def test_submodules_listed_in_the_api_exist() -> None:
    pages = {p.stem for p in (DOCS / "api").glob("mtlweight.*.rst")}
    for page in pages:
        module = importlib.import_module(page)
        assert getattr(module, "__all__", None), f"docs/api/{page}.rst documents no __all__"


def _mini_build(tmp_path: Path, index: str) -> Build:
    """Build a one-page project that uses the docs' local extension (``-b dummy``)."""
    src = tmp_path / "src"
    src.mkdir(parents=True)
    (src / "conf.py").write_text(
        f"import sys\nsys.path.insert(0, {str(DOCS / '_ext')!r})\n"
        "extensions = ['mtlweight_docs']\n",
        encoding="utf-8",
    )
    (src / "index.rst").write_text(index, encoding="utf-8")
    cmd = [sys.executable, "-m", "sphinx", "-W", "-q", "-b", "dummy", str(src), str(tmp_path / "o")]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    return Build(tmp_path / "o", proc.returncode, proc.stdout + proc.stderr)


def test_a_stale_test_reference_fails_the_build(tmp_path: Path) -> None:
    page = "T\n=\n\n:test:`tests/docs/test_docs_build.py::{}`\n"
    ok = _mini_build(tmp_path / "ok", page.format("_mini_build"))
    assert ok.returncode == 0, ok.log
    stale = _mini_build(tmp_path / "stale", page.format("nope"))
    assert stale.returncode != 0
    assert "stale test reference" in stale.log and "nope" in stale.log


def test_a_menet_command_that_does_not_parse_fails_the_build(tmp_path: Path) -> None:
    pytest.importorskip("menet")
    page = "T\n=\n\n.. menet-commands::\n\n   python -m menet train --synthetic light {}\n"
    assert _mini_build(tmp_path / "ok", page.format("--steps 5")).returncode == 0
    bad = _mini_build(tmp_path / "bad", page.format("--no-such-option 5"))
    assert bad.returncode != 0 and "does not parse" in bad.log, bad.log


def test_optional_markdown_falls_back_to_the_directive_content(tmp_path: Path) -> None:
    page = (
        "T\n=\n\n.. include-markdown:: docs/_generated/no-such-file.md\n   :optional:\n\n"
        "   Nothing measured yet.\n"
    )
    assert _mini_build(tmp_path / "a", page).returncode == 0
    required = "T\n=\n\n.. include-markdown:: docs/_generated/no-such-file.md\n"
    assert _mini_build(tmp_path / "b", required).returncode != 0


# ------------------------------------------------------------ Markdown inclusion


def _rst_problems(rst: str) -> list[str]:
    """Warnings docutils reports when parsing ``rst`` (Sphinx directives stubbed)."""
    from docutils.core import publish_doctree
    from docutils.utils import Reporter

    messages: list[str] = []
    doctree = publish_doctree(
        rst,
        settings_overrides={
            "report_level": Reporter.WARNING_LEVEL,
            "halt_level": 5,
            "warning_stream": False,
        },
    )
    for node in doctree.findall():
        if node.tagname == "system_message" and int(node["level"]) >= Reporter.WARNING_LEVEL:
            messages.append(node.astext())
    return messages


def test_changelog_converts_to_clean_rest() -> None:
    text = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    rst = md_to_rst(text)
    assert _rst_problems(rst.replace(".. code-block::", ".. code::")) == []
    assert "Unreleased" in rst


def test_md2rst_docstring_examples() -> None:
    import doctest

    import md2rst

    result = doctest.testmod(md2rst)
    assert result.attempted > 0 and result.failed == 0


def test_markdown_tables_become_list_tables() -> None:
    rst = md_to_rst("| method | ms/step |\n| --- | ---: |\n| `gb` | 1.5 |\n| lb_x_ | |\n")
    assert ".. list-table::" in rst and ":header-rows: 1" in rst
    assert "``gb``" in rst and "lb\\_x\\_" in rst
    assert _rst_problems(rst) == []


_MD_PIECES = st.sampled_from(
    [
        "# ",
        "## ",
        "- ",
        "  - ",
        "1. ",
        "| ",
        " | ",
        "|---|---|\n",
        "```\n",
        "```python\n",
        "`",
        "``",
        "**",
        "*",
        "_",
        "__",
        "[",
        "]",
        "(",
        ")",
        "<",
        ">",
        "http://x.org",
        "\\",
        "|x|",
        "a",
        "b_",
        "word",
        " ",
        "\n",
        "\n\n",
        "> ",
        ".. ",
        "::",
        "=",
        "-",
        "0.5",
        "a. ",
        "iv) ",
    ]
)


@settings(max_examples=25, deadline=None)
@given(st.lists(_MD_PIECES, max_size=40).map("".join))
def test_any_markdown_converts_without_rest_warnings(text: str) -> None:
    # Benchmark reports are written by programs: no input may break `sphinx-build -W`.
    rst = md_to_rst(text).replace(".. code-block::", ".. code::")
    assert _rst_problems(rst) == [], rst
