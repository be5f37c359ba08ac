"""The example's layout stays small: modules <= 500 lines, functions <= 80, no import cycle.

``python tests/menet_example/test_layout.py`` prints the table (lines per module,
longest function per module).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "examples" / "menet" / "menet"
MAX_MODULE, MAX_FUNCTION = 500, 80


def modules() -> dict[str, ast.Module]:
    return {p.stem: ast.parse(p.read_text(), str(p)) for p in sorted(PACKAGE.glob("*.py"))}


def functions(tree: ast.Module) -> list[tuple[str, int]]:
    """``(qualified name, lines)`` of every function and method, docstring included."""
    out: list[tuple[str, int]] = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                name = f"{prefix}{child.name}"
                out.append((name, (child.end_lineno or child.lineno) - child.lineno + 1))
                visit(child, f"{name}.")
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")

    visit(tree, "")
    return out


def module_imports(name: str, tree: ast.Module) -> set[str]:
    """The menet modules ``name`` imports at module level."""
    found: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.ImportFrom):
            if node.level == 1:
                found |= {node.module.split(".")[0]} if node.module else {
                    a.name for a in node.names}
            elif node.module and node.module.split(".")[0] == "menet":
                parts = node.module.split(".")
                found |= {parts[1]} if len(parts) > 1 else {a.name for a in node.names}
    return found - {name}


def test_no_module_over_500_lines() -> None:
    sizes = {p.name: len(p.read_text().splitlines()) for p in PACKAGE.glob("*.py")}
    assert {k: v for k, v in sizes.items() if v > MAX_MODULE} == {}


def test_no_function_over_80_lines() -> None:
    long = {f"{m}.{f}": n for m, tree in modules().items() for f, n in functions(tree)
            if n > MAX_FUNCTION}
    assert long == {}


def test_no_import_cycle() -> None:
    trees = modules()
    graph = {m: module_imports(m, t) & set(trees) for m, t in trees.items() if m != "__init__"}
    graph = {m: deps - {"__init__"} for m, deps in graph.items()}
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for d in sorted(graph.get(m, ())):
            assert state.get(d) != 1, f"import cycle: {' -> '.join([*path, m, d])}"
            if d not in state:
                visit(d, [*path, m])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [])


def table() -> str:
    rows = ["| module | lines | longest function | its lines |", "| --- | ---: | --- | ---: |"]
    for m, tree in modules().items():
        lines = len((PACKAGE / f"{m}.py").read_text().splitlines())
        fns = functions(tree)
        name, n = max(fns, key=lambda x: x[1]) if fns else ("-", 0)
        rows.append(f"| {m}.py | {lines} | {name} | {n} |")
    return "\n".join(rows)


if __name__ == "__main__":
    sys.stdout.write(table() + "\n")
