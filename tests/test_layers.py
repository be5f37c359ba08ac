"""The package's layers: the engine below both wings, no import cycle, one per-task pass.

Read from the source with :mod:`ast` (no import runs), so that a new module is
checked as soon as it exists.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "mtlweight"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, ast.Module]:
    return {module_name(p): ast.parse(p.read_text()) for p in sorted(PACKAGE.rglob("*.py"))}


def imports(tree: ast.Module, name: str, known: set[str]) -> set[str]:
    """The package modules that ``tree`` (module ``name``) imports at run time.

    Imports under ``if TYPE_CHECKING:`` are left out; ``from a import b`` counts
    ``a.b`` when that is a module, else ``a``.
    """
    found: set[str] = set()
    package = name if (PACKAGE.parent / name.replace(".", "/") / "__init__.py").exists() else (
        name.rpartition(".")[0])

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for statement in node.orelse:
                visit(statement)
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "mtlweight")
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join([*package.split(".")[: len(package.split(".")) - node.level + 1],
                                 *([base] if base else [])])
            if base.split(".")[0] == "mtlweight":
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    found.add(sub if sub in known else base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    found.discard(name)
    return found


def graph() -> dict[str, set[str]]:
    trees = modules()
    known = set(trees)
    return {name: imports(tree, name, known) & known for name, tree in trees.items()}


def test_the_reader_sees_imports() -> None:
    edges = graph()
    assert "mtlweight._engine.passes" in edges["mtlweight._engine.plans"]
    assert "mtlweight._engine.targets" in edges["mtlweight.autograd"]


def test_no_import_cycle() -> None:
    edges = graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def walk(node: str, path: list[str]) -> None:
        state[node] = 1
        for child in sorted(edges[node]):
            if state.get(child) == 1:
                cycle = [*path[path.index(child):], child] if child in path else [node, child]
                pytest.fail(f"import cycle: {' -> '.join(cycle)}")
            if child not in state:
                walk(child, [*path, child])
        state[node] = 2

    for name in sorted(edges):
        if name not in state:
            walk(name, [name])


@pytest.mark.parametrize(("lower", "upper"), [
    ("mtlweight._engine", "mtlweight.gradient_level"),
    ("mtlweight._engine", "mtlweight.loss_level"),
    ("mtlweight._engine", "mtlweight._base"),
    ("mtlweight._engine", "mtlweight._registry"),
    ("mtlweight.loss_level", "mtlweight.gradient_level"),
])
def test_layer_does_not_import_upwards(lower: str, upper: str) -> None:
    edges = graph()
    wrong = sorted(
        f"{name} imports {target}"
        for name, targets in edges.items() if name == lower or name.startswith(lower + ".")
        for target in targets if target == upper or target.startswith(upper + ".")
    )
    assert wrong == []


def test_autograd_grad_is_called_in_one_module_at_most_twice() -> None:
    """Every per-task gradient comes from :func:`mtlweight._engine.passes.task_pass`."""
    sites = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "torch.autograd":
                assert "grad" not in {a.name for a in node.names}, f"{path}: grad imported"
            if isinstance(node, ast.Call) and ast.unparse(node.func) in (
                "torch.autograd.grad", "autograd.grad"
            ):
                sites.append(f"{module_name(path)}:{node.lineno}")
    assert 1 <= len(sites) <= 2, sites
    assert all(s.startswith("mtlweight._engine.passes:") for s in sites), sites
