"""A small Markdown to reStructuredText converter for the files the docs include.

It handles the subset that ``CHANGELOG.md`` and the benchmark reports
(``docs/_generated/*.md``) use: ATX headings, paragraphs, bullet and numbered
lists (with indented continuation lines), pipe tables, fenced code blocks,
block quotes, and inline code, bold, italics and links. Everything else is
treated as text and escaped, so that no input can make ``sphinx-build -W``
fail with a markup warning.

>>> print(md_to_rst("Hello `x_1` and **bold** [site](https://example.org)."))
Hello ``x_1`` and **bold** `site <https://example.org>`__.
>>> print(md_to_rst("| a | b |\\n| --- | --- |\\n| 1 | 2 |"))
.. list-table::
   :header-rows: 1
<BLANKLINE>
   * - a
     - b
   * - 1
     - 2
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable

__all__ = ["inline", "md_to_rst"]

_ESCAPE = re.compile(r"([\\*`|_<>:\[\]])")
_INLINE = re.compile(
    r"(?P<code>`+)(?P<codebody>.+?)(?P=code)"
    r"|\*\*(?P<bold>[^*\s](?:.*?[^*\s])?)\*\*"
    r"|__(?P<bold2>[^_\s](?:.*?[^_\s])?)__"
    r"|(?<![\w*])\*(?P<em>[^*\s](?:[^*]*?[^*\s])?)\*(?![\w*])"
    r"|(?<!\w)_(?P<em2>[^_\s](?:[^_]*?[^_\s])?)_(?!\w)"
    r"|\[(?P<text>[^\]]+)\]\((?P<url>[^)\s]+)\)"
    r"|<(?P<auto>https?://[^>\s]+)>"
)
_OPENERS = "-:/'\"<([{"
_CLOSERS = "-.,:;!?/'\")]}>"
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_BULLET = re.compile(r"^(\s*)([-*+])\s+(.*)$")
_NUMBERED = re.compile(r"^(\s*)(\d+)[.)]\s+(.*)$")
_FENCE = re.compile(r"^\s*(```+|~~~+)\s*([\w+-]*)\s*$")
_TABLE_RULE = re.compile(r"^\s*\|?\s*:?-{3,}:?\s*(\|\s*:?-{3,}:?\s*)*\|?\s*$")


def _escape(text: str) -> str:
    return _ESCAPE.sub(r"\\\1", text)


def _literal(body: str) -> str:
    body = body.strip()
    if not body:
        return ""
    if "``" in body or body.endswith("`") or body.startswith("`"):
        return ":literal:`" + body.replace("\\", "\\\\").replace("`", "\\`") + "`"
    return f"``{body}``"


def inline(text: str) -> str:
    """Convert the inline Markdown of one line (or joined paragraph) to reST."""
    out: list[str] = []
    pos = 0
    for m in _INLINE.finditer(text):
        out.append(_escape(text[pos : m.start()]))
        if m.group("code") is not None:
            markup = _literal(m.group("codebody"))
        elif m.group("bold") is not None or m.group("bold2") is not None:
            body = m.group("bold") or m.group("bold2")
            # reST cannot nest a literal in bold: keep the literals, drop the bold.
            markup = inline(body) if "`" in body else "**" + _escape(body) + "**"
        elif m.group("em") is not None or m.group("em2") is not None:
            body = m.group("em") or m.group("em2")
            markup = inline(body) if "`" in body else "*" + _escape(body) + "*"
        elif m.group("url") is not None:
            url = m.group("url")
            label = _escape(m.group("text")).replace("<", "\\<")
            markup = f"`{label} <{url}>`__" if re.match(r"^[a-z]+://", url) else label
        else:
            markup = f"`{m.group('auto')} <{m.group('auto')}>`__"
        # Inline markup must be delimited by whitespace or some punctuation
        # (docutils' inline markup recognition rules); otherwise separate it
        # with an escaped space, which renders as nothing.
        before = "".join(out)
        if before and not (before[-1].isspace() or before[-1] in _OPENERS):
            markup = "\\ " + markup
        after = text[m.end() : m.end() + 1]
        if after and not (after.isspace() or after in _CLOSERS):
            markup = markup + "\\ "
        out.append(markup)
        pos = m.end()
    out.append(_escape(text[pos:]))
    return "".join(out)


def _guard(text: str) -> str:
    """Keep one line of text from starting a block construct of reST.

    A line that starts with punctuation could be read as a bullet, an
    enumeration, a directive, a transition, a table...: an escaped space in front
    (which renders as nothing) makes it plain text.
    """
    stripped = text.lstrip()
    if stripped and not stripped[0].isalnum() and not stripped.startswith(("``", "**", "*", "`")):
        return "\\ " + stripped
    if re.match(r"^(\d+|[A-Za-z]|[ivxlcdmIVXLCDM]+)[.)](\s|$)", stripped):
        return "\\ " + stripped  # would start an enumerated list
    return text


def _split_row(line: str) -> list[str]:
    line = line.strip()
    if line.startswith("|"):
        line = line[1:]
    if line.endswith("|") and not line.endswith("\\|"):
        line = line[:-1]
    cells = re.split(r"(?<!\\)\|", line)
    return [c.strip().replace("\\|", "|") for c in cells]


def _table(rows: list[list[str]], header: bool) -> list[str]:
    width = max(len(r) for r in rows)
    out = [".. list-table::"]
    if header and len(rows) > 1:
        out.append("   :header-rows: 1")
    out.append("")
    for row in rows:
        cells = row + [""] * (width - len(row))
        for j, cell in enumerate(cells):
            lead = "   * - " if j == 0 else "     - "
            text = _guard(inline(cell))
            out.append((lead + text).rstrip())
    return out


def _list(lines: list[str], i: int, out: list[str]) -> int:
    """Convert the (possibly nested) list starting at ``lines[i]``; return the next index."""
    # (markdown indent, reST column of the item's text, marker) for each open list level
    stack: list[tuple[int, int, str]] = []
    while i < len(lines):
        item = _BULLET.match(lines[i]) or _NUMBERED.match(lines[i])
        if not item:
            break
        indent = len(item.group(1))
        while stack and indent < stack[-1][0]:
            stack.pop()
        mark = "#." if item.group(2).isdigit() else "-"
        if stack and indent == stack[-1][0]:
            if stack[-1][2] != mark:
                out.append("")  # a list of another kind starts
            stack.pop()
        column = stack[-1][1] if stack else 0
        if stack and out and out[-1] != "" and out[-1].lstrip().startswith(("- ", "#. ")):
            # Entering a nested list: reST wants a blank line.
            last_col = len(out[-1]) - len(out[-1].lstrip())
            if last_col < column:
                out.append("")
        stack.append((indent, column + len(mark) + 1, mark))
        text_lines = [item.group(3)]
        i += 1
        while (
            i < len(lines)
            and lines[i].strip()
            and not _BULLET.match(lines[i])
            and not _NUMBERED.match(lines[i])
            and (len(lines[i]) - len(lines[i].lstrip()) > indent)
        ):
            text_lines.append(lines[i].strip())
            i += 1
        out.append(" " * column + f"{mark} " + _guard(inline(" ".join(text_lines))))
        nxt = (_BULLET.match(lines[i]) or _NUMBERED.match(lines[i])) if i < len(lines) else None
        if nxt and len(nxt.group(1)) < indent:
            out.append("")  # leaving a nested list
        if i < len(lines) and not lines[i].strip():
            j = i
            while j < len(lines) and not lines[j].strip():
                j += 1
            if j < len(lines) and (_BULLET.match(lines[j]) or _NUMBERED.match(lines[j])):
                i = j
                continue
            break
    return i


def _language(lang: str, body: list[str]) -> str:
    """A highlighting language that cannot make Sphinx warn: ``text`` unless safe."""
    lang = lang.lower()
    if lang in ("bash", "sh", "shell", "console"):
        return "bash"
    if lang in ("python", "py"):
        try:
            ast.parse("\n".join(body))
        except SyntaxError:
            return "text"
        return "python"
    return "text"


def _indent(lines: list[str], n: int) -> list[str]:
    pad = " " * n
    return [pad + line if line else "" for line in lines]


def md_to_rst(text: str, *, heading: Callable[[int, str], list[str]] | None = None) -> str:
    """Convert Markdown ``text`` to reST.

    Parameters
    ----------
    text
        The Markdown source.
    heading
        Called with (level, converted title) for each heading; returns the reST
        lines. The default writes a ``.. rubric::`` (no section), which is safe
        wherever the output is included.
    """
    make_heading = heading or (lambda level, title: [f".. rubric:: {title}"])
    lines = text.replace("\r\n", "\n").replace("\t", "    ").split("\n")
    out: list[str] = []
    i = 0

    def blank() -> None:
        if out and out[-1] != "":
            out.append("")

    while i < len(lines):
        line = lines[i]
        if not line.strip():
            blank()
            i += 1
            continue
        fence = _FENCE.match(line)
        if fence:
            marker, lang = fence.group(1), fence.group(2)
            body: list[str] = []
            i += 1
            while i < len(lines) and not lines[i].strip().startswith(marker):
                body.append(lines[i])
                i += 1
            i += 1
            blank()
            out.append(f".. code-block:: {_language(lang, body)}")
            out.append("")
            while body and not body[-1].strip():
                body.pop()
            while body and not body[0].strip():
                body.pop(0)
            out.extend(_indent(body or ["(empty)"], 3))
            out.append("")
            continue
        m = _HEADING.match(line)
        if m:
            title = inline(m.group(2))
            blank()
            if title.strip():
                out.extend(make_heading(len(m.group(1)), title))
                out.append("")
            i += 1
            continue
        if line.lstrip().startswith("|") and i + 1 < len(lines) and _TABLE_RULE.match(lines[i + 1]):
            rows = [_split_row(line)]
            i += 2
            while i < len(lines) and lines[i].strip().startswith("|"):
                rows.append(_split_row(lines[i]))
                i += 1
            blank()
            out.extend(_table(rows, header=True))
            out.append("")
            continue
        if line.lstrip().startswith(">"):
            quoted: list[str] = []
            while i < len(lines) and lines[i].lstrip().startswith(">"):
                quoted.append(lines[i].lstrip()[1:].lstrip())
                i += 1
            # Quotes are rendered as plain paragraphs: an indented block right
            # after a directive would be read as the directive's content.
            blank()
            out.extend(md_to_rst("\n".join(quoted), heading=make_heading).split("\n"))
            out.append("")
            continue
        if _BULLET.match(line) or _NUMBERED.match(line):
            blank()
            i = _list(lines, i, out)
            out.append("")
            continue
        para = [line.strip()]
        i += 1
        while i < len(lines) and lines[i].strip():
            nxt = lines[i]
            if (
                _HEADING.match(nxt)
                or _FENCE.match(nxt)
                or _BULLET.match(nxt)
                or _NUMBERED.match(nxt)
                or nxt.lstrip().startswith(("|", ">"))
            ):
                break
            para.append(nxt.strip())
            i += 1
        blank()
        out.append(_guard(inline(" ".join(para))))
        out.append("")
    while out and out[-1] == "":
        out.pop()
    return "\n".join(out)
