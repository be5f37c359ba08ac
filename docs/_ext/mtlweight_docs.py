"""Local Sphinx extension of the mtlweight docs.

Directives
----------
``.. mtlweight-api::``
    The reference of every name in ``mtlweight.__all__``, grouped (base class,
    the paper's strategies, loss-level, gradient-level, registry, submodules).
    A name added to ``__all__`` appears without editing any page; a name that
    fits no group lands in "Other names", so nothing is left out.
``.. mtlweight-module:: NAME``
    The reference of every name in the ``__all__`` of a submodule.
``.. mtlweight-registry::``
    A table of the names :func:`mtlweight.get` accepts, read from the registry.
``.. include-markdown:: PATH [PATH ...]``
    Include a Markdown file of the repository (``CHANGELOG.md``, the benchmark
    reports in ``docs/_generated/``), converted by :mod:`md2rst`; the first path
    that exists is used. With
    ``:optional:``, a missing file shows the directive's content instead.
    With ``:sections:``, ``##`` headings become sections (``#`` is skipped: the
    page has its own title); otherwise every heading is a rubric (``:no-title:``
    skips the ``#`` heading there too).
``.. optional-figure:: PATH [PATH ...]``
    A figure (path relative to ``docs/``) that is shown if the file exists (the
    first of several that exists); otherwise the directive's content is shown.
    For images committed after a long run (the MENET example's plots).

``.. menet-help:: [SUBCOMMAND]``
    The ``--help`` text of ``python -m menet`` (or a subcommand), generated from
    the example's argument parser when the docs are built.
``.. menet-commands::``
    A block of shell commands; each ``python -m menet ...`` line is parsed with
    the example's argument parser at build time, so a command with an option
    that no longer exists fails the build.

Roles
-----
``:test:`tests/path.py::test_name```
    A reference to a test. The build fails (under ``-W``) if the file or the
    test function does not exist, or the file is not committed to git, so the
    reliability page cannot cite a test that was renamed, removed or never
    committed.
"""

from __future__ import annotations

import functools
import inspect
import re
import subprocess
from pathlib import Path
from typing import Any, ClassVar

from docutils import nodes
from docutils.parsers.rst import directives
from docutils.statemachine import StringList
from md2rst import md_to_rst
from sphinx.application import Sphinx
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective, SphinxRole
from sphinx.util.nodes import nested_parse_with_titles

logger = logging.getLogger(__name__)

DOCS = Path(__file__).resolve().parents[1]
ROOT = DOCS.parent


def _bases_first(names: list[str]) -> list[str]:
    """Alphabetical, but a class from which most others of ``names`` derive comes first."""
    import mtlweight

    objs = {n: getattr(mtlweight, n) for n in names}

    def descendants(name: str) -> int:
        cls = objs[name]
        if not inspect.isclass(cls):
            return 0
        others = [o for o in objs.values() if inspect.isclass(o) and o is not cls]
        return sum(issubclass(o, cls) for o in others)

    return sorted(names, key=lambda n: (descendants(n) < max(2, len(names) // 2), n.lower()))


def api_groups() -> list[tuple[str, str, list[str]]]:
    """(title, introduction, names) for each group of ``mtlweight.__all__``, in page order."""
    import mtlweight
    from mtlweight import _gradient_methods, _loss_methods

    public = [n for n in mtlweight.__all__ if n != "__version__"]
    groups: list[tuple[str, str, list[str]]] = [
        (
            "The base class",
            "Every strategy is a :class:`~mtlweight.Weighting`: call it on the losses of a step, "
            "back-propagate the total it returns.",
            ["Weighting"],
        ),
        (
            "The paper's strategies",
            "Fixed weights and the two dynamic schemes of MENET (Fan, Chen and Li).",
            ["Fixed", "LossBalance", "GradientBalance"],
        ),
        (
            "Loss-level strategies",
            "Weights computed from the loss values (and their history) only: no extra "
            "backward pass.",
            _bases_first(list(_loss_methods.__all__)),
        ),
        (
            "Gradient-level strategies",
            "Weights or combined gradients computed from per-task gradients with respect to "
            "the shared parameters: one extra backward pass per task.",
            _bases_first(list(_gradient_methods.__all__)),
        ),
        (
            "Selecting a strategy by name",
            "For command lines and configuration files; see :ref:`registry-table`.",
            ["available", "get", "register"],
        ),
    ]
    modules = {n for n in public if inspect.ismodule(getattr(mtlweight, n))}
    placed = {n for _, _, names in groups for n in names} | modules
    others = [n for n in public if n not in placed]
    groups = [(t, i, [n for n in names if n in public]) for t, i, names in groups]
    if others:
        groups.append(("Other names", "", others))
    return [g for g in groups if g[2]]


def _autodoc_lines(name: str) -> list[str]:
    import mtlweight

    obj = getattr(mtlweight, name)
    if inspect.isclass(obj):
        lines = [f".. autoclass:: mtlweight.{name}"]
        if name == "Weighting":
            lines.append("   :members: forward, backward, compute_weights, statistic, weights")
        elif name == "GradientAggregator":
            lines.append("   :members: forward, backward, aggregate")
        else:
            lines += _MEMBERS
        return lines
    if callable(obj):
        return [f".. autofunction:: mtlweight.{name}"]
    return [f".. autodata:: mtlweight.{name}", "   :no-value:"]


# Public methods and properties a class adds (DWA's ``epoch_end``, GradNorm's
# ``task_weights``), without the overrides whose documentation is the base class's.
_MEMBERS = [
    "   :members:",
    "   :exclude-members: forward, backward, compute_weights, aggregate, get_extra_state, "
    "set_extra_state, extra_repr",
]


def _module_lines(modname: str) -> list[str]:
    """reST documenting every name of the ``__all__`` of module ``modname``."""
    import importlib

    module = importlib.import_module(modname)
    names = list(getattr(module, "__all__", []))
    if not names:
        raise ValueError(f"{modname} has no __all__ to document")
    lines = [f".. py:module:: {modname}", ""]
    for name in names:
        obj = getattr(module, name)
        if inspect.isclass(obj):
            lines += [f".. autoclass:: {modname}.{name}", *_MEMBERS, ""]
        elif callable(obj):
            lines += [f".. autofunction:: {modname}.{name}", ""]
        else:
            lines += [f".. autodata:: {modname}.{name}", ""]
    return lines


class MtlweightApi(SphinxDirective):
    """Generate the reference of ``mtlweight.__all__`` (see the module docstring)."""

    has_content = False

    def run(self) -> list[nodes.Node]:
        import mtlweight

        lines: list[str] = []
        for title, intro, names in api_groups():
            lines += [title, "-" * len(title), ""]
            if intro:
                lines += [intro, ""]
            for name in names:
                lines += [*_autodoc_lines(name), ""]
        subs = [n for n in mtlweight.__all__ if inspect.ismodule(getattr(mtlweight, n))]
        if subs:
            lines += ["Submodules", "-" * len("Submodules"), ""]
            for sub in subs:
                module = getattr(mtlweight, sub)
                doc = (module.__doc__ or "").strip().split("\n")[0]
                if (DOCS / "api" / f"{module.__name__}.rst").is_file():
                    lines += [f"- :doc:`{module.__name__}`: {doc}"]
                else:
                    lines += [f"- :mod:`{module.__name__}`: {doc} (documented below)"]
            lines.append("")
            for sub in subs:
                module = getattr(mtlweight, sub)
                if not (DOCS / "api" / f"{module.__name__}.rst").is_file():
                    title = f"``{module.__name__}``"
                    lines += [title, "-" * len(title), ""]
                    lines += _module_lines(module.__name__)
        lines += [
            "Version",
            "-------",
            "",
            f"``mtlweight.__version__`` is the installed version, ``{mtlweight.__version__}``.",
            "",
        ]
        node = nodes.section()
        node.document = self.state.document
        nested_parse_with_titles(self.state, StringList(lines, source="<mtlweight-api>"), node)
        return list(node.children)


class MtlweightModule(SphinxDirective):
    """Generate the reference of every name in a submodule's ``__all__``."""

    required_arguments = 1
    has_content = False

    def run(self) -> list[nodes.Node]:
        modname = self.arguments[0]
        try:
            lines = _module_lines(modname)
        except ValueError as exc:
            raise self.error(str(exc)) from exc
        node = nodes.container()
        self.state.nested_parse(StringList(lines, source=f"<mtlweight-module {modname}>"), 0, node)
        return list(node.children)


class MtlweightRegistry(SphinxDirective):
    """A table of the registered strategy names."""

    has_content = False

    def run(self) -> list[nodes.Node]:
        from mtlweight import _registry

        aliases: dict[str, list[str]] = {}
        for alias, key in sorted(_registry._ALIASES.items()):
            aliases.setdefault(key, []).append(alias)
        lines = [
            ".. list-table::",
            "   :header-rows: 1",
            "",
            "   * - name for :func:`mtlweight.get`",
            "     - aliases",
            "     - class",
        ]
        for key in _registry.available():
            cls = _registry._REGISTRY[key]
            alias = ", ".join(f"``{a}``" for a in aliases.get(key, [])) or "--"
            lines += [
                f"   * - ``{key}``",
                f"     - {alias}",
                f"     - :class:`mtlweight.{cls.__name__}`",
            ]
        node = nodes.container()
        self.state.nested_parse(StringList(lines, source="<mtlweight-registry>"), 0, node)
        return list(node.children)


def _section_heading(level: int, title: str) -> list[str]:
    underline = {2: "-", 3: "~", 4: "^"}.get(level, '"')
    return [title, underline * max(len(title), 4)]


class IncludeMarkdown(SphinxDirective):
    """Include a Markdown file of the repository, converted to reST.

    With several paths, the first that exists is included.
    """

    required_arguments = 1
    optional_arguments = 4
    has_content = True
    option_spec: ClassVar[dict[str, Any]] = {
        "optional": directives.flag,
        "sections": directives.flag,
        "no-title": directives.flag,
    }

    def run(self) -> list[nodes.Node]:
        candidates = [(ROOT / arg).resolve() for arg in self.arguments]
        for candidate in candidates:
            self.env.note_dependency(str(candidate))
        path = next((c for c in candidates if c.is_file()), candidates[0])
        if not path.is_file():
            if "optional" not in self.options:
                raise self.error(f"include-markdown: none of {self.arguments} exists")
            node = nodes.container()
            self.state.nested_parse(self.content, self.content_offset, node)
            return list(node.children)
        text = path.read_text(encoding="utf-8")
        if "sections" in self.options or "no-title" in self.options:
            # The page has its own title: drop the file's level-1 heading.
            text = re.sub(r"\A\s*(<!--.*?-->\s*)?#\s[^\n]*\n", "", text, flags=re.S)
        if "sections" in self.options:
            rst = md_to_rst(text, heading=_section_heading)
        else:
            rst = md_to_rst(text)
        node = nodes.section()
        node.document = self.state.document
        nested_parse_with_titles(self.state, StringList(rst.split("\n"), source=str(path)), node)
        return list(node.children)


class OptionalFigure(SphinxDirective):
    """A figure shown only if its file exists (paths relative to ``docs/``).

    With several paths, the first that exists is shown.
    """

    required_arguments = 1
    optional_arguments = 4
    has_content = True
    option_spec: ClassVar[dict[str, Any]] = {
        "caption": directives.unchanged,
        "width": directives.unchanged,
        "alt": directives.unchanged,
    }

    def run(self) -> list[nodes.Node]:
        for rel in self.arguments:
            self.env.note_dependency(str(DOCS / rel))
        rel = next((r for r in self.arguments if (DOCS / r).is_file()), None)
        if rel is not None:
            lines = [f".. figure:: /{rel}"]
            if "width" in self.options:
                lines.append(f"   :width: {self.options['width']}")
            lines.append(f"   :alt: {self.options.get('alt') or self.options.get('caption', rel)}")
            lines.append("")
            if "caption" in self.options:
                lines.append(f"   {self.options['caption']}")
            source = StringList(lines, source=str(DOCS / rel))
        else:
            source = self.content
        node = nodes.container()
        self.state.nested_parse(source, self.content_offset, node)
        return list(node.children)


def _menet_parser() -> Any:
    from menet.cli import build_parser

    return build_parser()


class MenetHelp(SphinxDirective):
    """The ``--help`` text of a ``python -m menet`` subcommand, generated at build time."""

    required_arguments = 0
    optional_arguments = 1
    has_content = False

    def run(self) -> list[nodes.Node]:
        import argparse
        import os

        old = os.environ.get("COLUMNS")
        os.environ["COLUMNS"] = "90"
        try:
            parser = _menet_parser()
            if self.arguments:
                subparsers = next(
                    a for a in parser._actions if isinstance(a, argparse._SubParsersAction)
                )
                parser = subparsers.choices[self.arguments[0]]
            text = parser.format_help()
        finally:
            if old is None:
                del os.environ["COLUMNS"]
            else:
                os.environ["COLUMNS"] = old
        block = nodes.literal_block(text, text)
        block["language"] = "text"
        return [block]


class MenetCommands(SphinxDirective):
    """Shell commands of the MENET tutorial, checked against the real argument parser.

    Each ``python ... -m menet ...`` command (``\\`` continues a line; a launcher
    such as ``python -m torch.distributed.run ... -m menet`` is allowed) is parsed with
    :func:`menet.cli.build_parser` at build time: an unknown option, a missing
    argument or a bad choice is a warning, hence a failed ``-W`` build. Other lines
    are shown as they are.
    """

    has_content = True

    def run(self) -> list[nodes.Node]:
        import contextlib
        import io
        import shlex

        text = "\n".join(self.content)
        parser = _menet_parser()
        for command in re.sub(r"\\\n\s*", " ", text).split("\n"):
            code = command.split("#", 1)[0].strip()
            words = shlex.split(code)
            # `python -m menet ARGS`, or a launcher such as
            # `python -m torch.distributed.run --nproc_per_node=2 -m menet ARGS`.
            starts = [i for i in range(len(words) - 1) if words[i : i + 2] == ["-m", "menet"]]
            if not words or words[0] not in ("python", "python3") or not starts:
                continue
            argv = words[starts[-1] + 2 :]
            stderr = io.StringIO()
            try:
                with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
                    parser.parse_args(argv)
            except SystemExit as exc:
                if exc.code not in (0, None):
                    logger.warning(
                        "menet command does not parse: %r: %s",
                        code,
                        stderr.getvalue().strip().splitlines()[-1:],
                        location=self.get_location(),
                    )
        block = nodes.literal_block(text, text)
        block["language"] = "bash"
        return [block]


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


class TestRole(SphinxRole):
    """``:test:`tests/x.py::test_y``` -- a checked reference to a test."""

    def run(self) -> tuple[list[nodes.Node], list[nodes.system_message]]:
        target = self.text.strip()
        file_part, _, rest = target.partition("::")
        path = ROOT / file_part
        problem = ""
        if not path.is_file():
            problem = f"test file {file_part} does not exist"
        elif not _tracked(file_part):
            problem = f"test file {file_part} is not committed (a fresh clone would lack it)"
        elif rest:
            source = path.read_text(encoding="utf-8")
            for part in rest.split("::"):
                name = part.split("[")[0]
                if not re.search(
                    rf"^\s*(async\s+)?(def|class)\s+{re.escape(name)}\b", source, re.M
                ):
                    problem = f"{name} is not defined in {file_part}"
                    break
        if problem:
            logger.warning(
                "stale test reference %r: %s", target, problem, location=self.get_location()
            )
        return [nodes.literal(target, target, classes=["test-ref"])], []


_NUMPY_SECTION = re.compile(
    r"^(Parameters|Other Parameters|Returns|Yields|Receives|Raises|Warns|Attributes|Methods|"
    r"See Also|Notes|References|Examples)\s*$"
)


def notes_before_sections(
    app: Sphinx, what: str, name: str, obj: object, options: object, lines: list[str]
) -> None:
    """Move ``.. note::`` blocks that follow a numpy-style section to before the first one.

    In a numpy docstring, napoleon reads everything after a ``Raises`` header at the
    header's indentation as more exception names, so a ``.. note::`` placed after
    ``Raises`` would render as an exception called ".. note::". Runs before napoleon
    (priority 400); the docstrings keep their order in the source.
    """
    first = next(
        (
            i
            for i in range(len(lines) - 1)
            if _NUMPY_SECTION.match(lines[i]) and set(lines[i + 1].strip()) == {"-"}
        ),
        None,
    )
    if first is None:
        return
    moved: list[str] = []
    i = first
    while i < len(lines):
        if lines[i].startswith(".. note::"):
            j = i + 1
            while j < len(lines) and (not lines[j].strip() or lines[j].startswith(" ")):
                j += 1
            block = lines[i:j]
            del lines[i:j]
            while block and not block[-1].strip():
                block.pop()
            moved += [*block, ""]
        else:
            i += 1
    lines[first:first] = moved


def public_bases(app: Sphinx, name: str, obj: object, options: object, bases: list[Any]) -> None:
    """Show the first public ancestor instead of a private base class (``_LearnedScale``)."""
    for i, base in enumerate(bases):
        if isinstance(base, type) and base.__name__.startswith("_"):
            public = next((b for b in base.__mro__ if not b.__name__.startswith("_")), object)
            bases[i] = public
    # The same class may now be listed twice.
    seen: list[Any] = []
    for base in bases:
        if base not in seen:
            seen.append(base)
    bases[:] = seen


def setup(app: Sphinx) -> dict[str, Any]:
    app.setup_extension("sphinx.ext.autodoc")
    app.connect("autodoc-process-docstring", notes_before_sections, priority=400)
    app.connect("autodoc-process-bases", public_bases)
    app.add_directive("mtlweight-api", MtlweightApi)
    app.add_directive("mtlweight-module", MtlweightModule)
    app.add_directive("mtlweight-registry", MtlweightRegistry)
    app.add_directive("include-markdown", IncludeMarkdown)
    app.add_directive("optional-figure", OptionalFigure)
    app.add_directive("menet-help", MenetHelp)
    app.add_directive("menet-commands", MenetCommands)
    app.add_role("test", TestRole())
    # env_version: bump when a change here alters how pages are read, so that
    # cached doctrees are re-read.
    return {
        "version": "1",
        "env_version": 3,
        "parallel_read_safe": True,
        "parallel_write_safe": True,
    }
