"""The documentation builds with warnings as errors, its examples run, and it covers the API.

The HTML build and the doctest run use ``sphinx-build -W --keep-going`` exactly as
CI's documentation step does (see ``docs/conf.py``); they share one doctree cache,
so the pages are read once. The built pages are then checked for what ``-W`` does
not see: the theme's error boxes, scripts from a CDN, the version, the included
Markdown. Skipped when Sphinx or one of the docs' extensions is not installed
(``pip install -e ".[docs]"``).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import inspect
import io
import re
import runpy
import shlex
import subprocess
import sys
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

for _module in ("sphinx", "furo", "sphinx_autodoc_typehints", "matplotlib", "myst_parser"):
    pytest.importorskip(_module)
pytest.importorskip("sphinxarg.ext")
if importlib.util.find_spec("sphinx-mathjax-offline") is None:
    pytest.skip("the docs need sphinx-mathjax-offline", allow_module_level=True)

import mtlweight  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
sys.path.insert(0, str(DOCS / "_ext"))

from mtlweight_docs import notes_before_sections  # noqa: E402

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Build:
    out: Path
    returncode: int
    log: str


def _sphinx(builder: str, out: Path, src: Path = DOCS, jobs: bool = False) -> Build:
    target = out / builder
    cmd = [sys.executable, "-m", "sphinx", "-W", "--keep-going"]
    # The HTML build reads the pages in parallel (both of CI's cores); the doctest
    # builder runs serially and reuses the doctrees read by the HTML build.
    cmd += ["-j", "auto"] if jobs else []
    cmd += ["-b", builder, "-d", str(out / "doctrees"), str(src), str(target)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1800)
    return Build(target, proc.returncode, proc.stdout + proc.stderr)


@pytest.fixture(scope="module")
def builds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Build]:
    out = tmp_path_factory.mktemp("docs")
    html = _sphinx("html", out, jobs=True)
    doctest = _sphinx("doctest", out)
    return {"html": html, "doctest": doctest}


def _warnings(log: str) -> list[str]:
    # Also docutils' own "(ERROR/3)" lines, which an extension parsing text outside
    # Sphinx's logging (sphinx-argparse on an epilog) prints without failing -W.
    return [line for line in log.splitlines() if "WARNING" in line or "ERROR" in line]


def _pages(html: Path) -> Iterator[tuple[str, str]]:
    for page in sorted(html.rglob("*.html")):
        rel = page.relative_to(html)
        if rel.parts[0] in ("_static", "_modules", "_sources"):
            continue
        yield rel.as_posix(), page.read_text(encoding="utf-8")


PAGES = (
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
    "api/mtlweight.loss_level",
    "api/mtlweight.gradient_level",
    "api/mtlweight.losses",
    "api/mtlweight.functional",
    "api/mtlweight.autograd",
    "api/mtlweight.distributed",
)


def test_html_builds_with_warnings_as_errors(builds: dict[str, Build]) -> None:
    html = builds["html"]
    assert html.returncode == 0, "sphinx-build -W failed:\n" + "\n".join(_warnings(html.log))
    assert _warnings(html.log) == []
    for page in PAGES:
        assert (html.out / f"{page}.html").is_file(), f"page {page} was not built"


# ------------------------------------------------------- what -W does not catch


def theme_error_boxes(text: str) -> list[str]:
    """The error boxes a reader would see on a built page (empty when there are none).

    Furo paints any ``.. contents::`` block red with an "Adding a table of contents
    ... is unnecessary" message (its CSS targets ``.contents`` without the
    ``this-will-duplicate-information-and-it-is-still-useful-here`` class), and
    docutils renders markup it could not parse as ``system-message`` and
    ``problematic`` elements; an ``error`` admonition is an error box too. The
    search page's ``<noscript>`` notice is not on a page of ours.
    """
    text = re.sub(r"<noscript>.*?</noscript>", "", text, flags=re.S)
    boxes = []
    for match in re.finditer(r'class="([^"]*)"', text):
        classes = match.group(1).split()
        if "contents" in classes and (
            "this-will-duplicate-information-and-it-is-still-useful-here" not in classes
        ):
            boxes.append("a table of contents (Furo: 'Adding a table of contents ...')")
        if "system-message" in classes or "problematic" in classes:
            boxes.append("a docutils system message")
        if "admonition" in classes and "error" in classes:
            boxes.append("an error admonition")
    return boxes


def test_no_page_shows_an_error_box(builds: dict[str, Build]) -> None:
    assert builds["html"].returncode == 0
    pages = _pages(builds["html"].out)
    found = {page: boxes for page, text in pages if (boxes := theme_error_boxes(text))}
    assert found == {}, f"pages with error boxes: {found}"


def test_the_error_box_check_sees_a_table_of_contents(tmp_path: Path) -> None:
    # The check above must be able to fail: a page with `.. contents::`, built with
    # Furo, is reported.
    src = tmp_path / "src"
    src.mkdir()
    (src / "conf.py").write_text("html_theme = 'furo'\n", encoding="utf-8")
    page = "T\n=\n\n.. contents:: On this page\n   :local:\n\nA\n-\n\nText.\n\nB\n-\n\n:x:`y`\n"
    (src / "index.rst").write_text(page, encoding="utf-8")
    cmd = [sys.executable, "-m", "sphinx", "-q", "-b", "html", str(src), str(tmp_path / "o")]
    subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, check=True)
    boxes = theme_error_boxes((tmp_path / "o" / "index.html").read_text(encoding="utf-8"))
    assert any("table of contents" in b for b in boxes), boxes
    assert any("system message" in b for b in boxes), boxes


def test_nothing_is_loaded_from_the_network(builds: dict[str, Build]) -> None:
    assert builds["html"].returncode == 0
    remote = re.compile(r'<(?:script|link|img)\b[^>]*\b(?:src|href)="((?:https?:)?//[^"]*)"')
    found = {page: remote.findall(text) for page, text in _pages(builds["html"].out)}
    assert {page: urls for page, urls in found.items() if urls} == {}


def test_math_is_rendered_by_the_local_mathjax(builds: dict[str, Build]) -> None:
    html = builds["html"].out
    text = (html / "losses.html").read_text(encoding="utf-8")
    assert r"\(" in text or r"\[" in text, "losses.html has no formula to render"
    scripts = re.findall(r'<script\b[^>]*\bsrc="([^"]+)"', text)
    mathjax = [s for s in scripts if "mathjax" in s.lower()]
    assert mathjax, f"losses.html loads no MathJax: {scripts}"
    for src in mathjax:
        assert (html / src.split("?")[0]).is_file(), f"{src} is not in the build"
    # MathJax fetches its fonts relative to its script: they must be there too.
    assert list((html / "_static" / "mathjax" / "output" / "chtml" / "fonts").rglob("*.woff"))


def test_getting_started_shows_the_version(builds: dict[str, Build]) -> None:
    text = (builds["html"].out / "getting_started.html").read_text(encoding="utf-8")
    assert mtlweight.__version__ in text
    assert "&#39;...&#39;" not in text and "'...'" not in text


def _visible_text(page: str) -> str:
    page = re.sub(r"<(script|style)\b.*?</\1>", "", page, flags=re.S)
    return re.sub(r"<[^>]+>", "", page)


def test_markdown_is_included_as_markdown(builds: dict[str, Build]) -> None:
    html = builds["html"].out
    for page, source in (
        ("changelog", ROOT / "CHANGELOG.md"),
        ("reliability", DOCS / "_generated" / "reliability.md"),
        ("reproduction", DOCS / "_generated" / "results.md"),
        ("comparison", ROOT / "benchmarks" / "results" / "overhead.md"),
    ):
        text = (html / f"{page}.html").read_text(encoding="utf-8")
        heading = next(
            m.group(1) for m in re.finditer(r"^##+ (.+)$", source.read_text(encoding="utf-8"), re.M)
        )
        visible = _visible_text(text)
        plain = re.sub(r"[`*]", "", heading).strip()
        assert plain in visible.replace("¶", ""), f"{page}: heading {plain!r} of {source.name}"
        assert "<table" in text or page in ("changelog", "reliability"), page
        for raw in ("| --- |", "```", "**"):
            assert raw not in visible, f"{page}: raw Markdown {raw!r} is shown"


# ---------------------------------------------------------------- the MENET pages


def _menet_parser() -> argparse.ArgumentParser:
    pytest.importorskip("menet")
    from menet.cli import build_parser

    return build_parser()


def _shell_commands(text: str) -> list[str]:
    """``python ... -m menet ...`` commands of the bash blocks of a page or README."""
    blocks = re.findall(r"^\.\. code-block:: (?:bash|console)\n\n((?:   .*\n|\n)+)", text, re.M)
    blocks += re.findall(r"^```(?:bash|sh|console)\n(.*?)^```", text, re.M | re.S)
    commands = []
    for block in blocks:
        for line in re.sub(r"\s*\\\n\s*", " ", block).splitlines():
            code = line.split("#", 1)[0].strip().removeprefix("$ ")
            if re.search(r"(^|\s)-m menet(\s|$)", code):
                commands.append(code)
    return commands


def test_every_menet_command_in_the_docs_parses() -> None:
    # A command with an option that no longer exists (or a bad choice) fails here.
    parser = _menet_parser()
    files = [*sorted(DOCS.rglob("*.rst")), ROOT / "README.md", ROOT / "examples/menet/README.md"]
    checked = 0
    for path in files:
        for command in _shell_commands(path.read_text(encoding="utf-8")):
            words = shlex.split(command)
            starts = [i for i in range(len(words) - 1) if words[i : i + 2] == ["-m", "menet"]]
            argv = words[starts[-1] + 2 :]
            stderr = io.StringIO()
            try:
                with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
                    parser.parse_args(argv)
            except SystemExit as exc:
                if exc.code not in (0, None):
                    pytest.fail(f"{path.relative_to(ROOT)}: {command!r}: {stderr.getvalue()}")
            checked += 1
    assert checked >= 15, f"only {checked} menet commands found in the docs"


def test_the_command_extractor_sees_a_bad_option() -> None:
    page = ".. code-block:: bash\n\n   python -m menet train \\\n       --no-such 5  # x\n\n"
    assert _shell_commands(page) == ["python -m menet train --no-such 5"]
    with pytest.raises(SystemExit), contextlib.redirect_stderr(io.StringIO()):
        _menet_parser().parse_args(shlex.split(_shell_commands(page)[0])[3:])


def test_the_command_reference_covers_every_subcommand(builds: dict[str, Build]) -> None:
    parser = _menet_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    page = (DOCS / "menet.rst").read_text(encoding="utf-8")
    built = _visible_text((builds["html"].out / "menet.html").read_text(encoding="utf-8"))
    for name, sub in subparsers.choices.items():
        assert f":path: {name}\n" in page, f"menet.rst has no argparse reference of {name!r}"
        for action in sub._actions:
            for option in action.option_strings:
                assert option in built, f"{name} {option} is missing from the command reference"


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


def test_committed_images_are_small() -> None:
    for image in (DOCS / "_static").rglob("*"):
        if image.suffix.lower() in (".png", ".jpg", ".jpeg", ".svg", ".gif"):
            size = image.stat().st_size
            assert size < 200_000, f"{image.relative_to(ROOT)} is {size} bytes (limit 200 KB)"


# ------------------------------------------------------------------ the API pages


def test_docstring_notes_render_as_notes(builds: dict[str, Build]) -> None:
    # A `.. note::` after a numpy "Raises" section must not become an exception name.
    assert builds["html"].returncode == 0
    notes = 0
    for page in (builds["html"].out / "api").glob("*.html"):
        text = page.read_text(encoding="utf-8")
        assert ".. note::" not in text, f"{page.name}: a docstring note rendered as text"
        notes += text.count('class="admonition note"')
    assert notes > 0


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


def test_every_registered_strategy_is_in_the_comparison_tables() -> None:
    page = (DOCS / "comparison.rst").read_text(encoding="utf-8")
    rows = re.findall(r"^   \* - :class:`(\w+) <mtlweight\.(\w+)>`", page, re.M)
    assert rows, "docs/comparison.rst has no row of the form :class:`name <mtlweight.Class>`"
    for name, cls in rows:
        assert inspect.isclass(getattr(mtlweight, cls, None)), f"{name}: mtlweight.{cls}?"
    named = {name for name, _ in rows}
    missing = sorted(set(mtlweight.available()) - named)
    assert missing == [], f"strategies missing from docs/comparison.rst: {missing}"


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


def _public_modules() -> list[object]:
    """The public submodules and subpackages, re-exported in ``__all__`` or not."""
    modules = [getattr(mtlweight, n) for n in mtlweight.__all__]
    modules = [m for m in modules if inspect.ismodule(m)]
    for path in sorted((ROOT / "mtlweight").glob("[!_]*")):
        if path.suffix == ".py" or (path / "__init__.py").is_file():
            module = importlib.import_module(f"mtlweight.{path.stem}")
            if module not in modules:
                modules.append(module)
    return modules


def _public_names() -> list[tuple[list[str], str]]:
    """(accepted qualified names, expected role) of every public name.

    A submodule's name that ``mtlweight`` re-exports (``mtlweight.loss_level.Fixed``
    is ``mtlweight.Fixed``) may be documented under either name.
    """
    names: list[tuple[list[str], str]] = []
    for name in mtlweight.__all__:
        if name != "__version__" and not inspect.ismodule(getattr(mtlweight, name)):
            names.append(([f"mtlweight.{name}"], ""))
    for module in _public_modules():
        modname = module.__name__  # type: ignore[attr-defined]
        names.append(([modname], "py:module"))
        for sub in getattr(module, "__all__", []):
            accepted = [f"{modname}.{sub}"]
            if getattr(mtlweight, sub, None) is getattr(module, sub):
                accepted.append(f"mtlweight.{sub}")
            names.append((accepted, ""))
    return names


def test_every_public_name_is_documented(builds: dict[str, Build]) -> None:
    assert builds["html"].returncode == 0
    inventory = _inventory(builds["html"].out / "objects.inv")
    missing = [
        accepted[0]
        for accepted, role in _public_names()
        if not any(n in inventory and (not role or inventory[n] == role) for n in accepted)
    ]
    assert missing == [], f"public names missing from the API reference (docs/api/): {missing}"


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
    assert not conf["mathjax_path"].startswith(("http:", "https:", "//"))


def test_api_pages_document_existing_modules() -> None:
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


def test_command_line_options_keep_both_hyphens(builds: dict[str, Build]) -> None:
    """Smart quotes would render ``--force`` in prose as an en dash (``–force``)."""
    html = builds["html"].out
    for page in ("menet.html", "model_card.html", "index.html"):
        text = (html / page).read_text(encoding="utf-8")
        dashed = re.findall(r"[\u2013\u2014][a-z][\w-]*", text)
        assert not dashed, (page, sorted(set(dashed))[:10])
    menet = re.sub(r"<[^>]+>", "", (html / "menet.html").read_text(encoding="utf-8"))
    assert "--skip-existing" in menet and "--force" in menet


def test_the_landing_page_shows_the_figure_numbers_and_install(builds: dict[str, Build]) -> None:
    index = (builds["html"].out / "index.html").read_text(encoding="utf-8")
    assert "_images/landing.jpg" in index or "_static/landing.jpg" in index
    text = re.sub(r"<[^>]+>", "", index)  # code blocks are split into highlighted spans
    assert "--index-url https://download.pytorch.org/whl/cpu" in text
    assert "35.84 dB" in index and "26.75 dB" in index
