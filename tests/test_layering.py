"""The package's shape, kept by a test: one-way data flow, no import cycles, small modules.

The rules are those of docs/architecture.md. Imports are read from the source (module
level and inside functions alike, since a lazy import is still a dependency), except
those under ``if TYPE_CHECKING:``, which never run.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "cnnkit"
MAX_TOP_LEVEL_MODULES = 12
MAX_LINES = 400


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imported(tree: ast.AST, module: str) -> set[str]:
    """The cnnkit modules ``module`` imports: ``from a.b import c`` names ``a.b.c`` when that is a module."""
    found: set[str] = set()
    package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join([*parts[: len(parts) - node.level + 1], base]).strip(".")
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.add(candidate if candidate in MODULES else base)
        stack.extend(ast.iter_child_nodes(node))
    return {name for name in found if name in MODULES and name != module}


GRAPH = {module: _imported(ast.parse(path.read_text()), module) for module, path in MODULES.items()}


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_layering_has_no_import_cycles():
    """Depth-first search over the import graph; a back edge is a cycle, reported as its path."""
    state: dict[str, str] = {}
    cycles: list[list[str]] = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for target in sorted(GRAPH[module]):
            if state.get(target) == "open":
                cycles.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target, [*path, target])
        state[module] = "done"

    for module in sorted(GRAPH):
        if module not in state:
            visit(module, [module])
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(cycle) for cycle in cycles)


@pytest.mark.parametrize(
    ("layer", "allowed"),
    [
        ("cnnkit.data", ("cnnkit.data", "cnnkit.errors")),
        ("cnnkit.models", ("cnnkit.models", "cnnkit.errors", "cnnkit.modelinfo", "cnnkit.safeload")),
    ],
)
def test_layering_lower_layers_import_only_what_they_may(layer: str, allowed: tuple[str, ...]):
    wrong = {
        f"{module} imports {target}"
        for module, targets in GRAPH.items()
        if _within(module, layer)
        for target in targets
        if not any(_within(target, ok) for ok in allowed)
    }
    assert not wrong, "\n".join(sorted(wrong))


@pytest.mark.parametrize(
    ("layer", "forbidden"),
    [
        ("cnnkit.understand", "cnnkit.training"),
        ("cnnkit.understand", "cnnkit.compare"),
        ("cnnkit.tasks", "cnnkit.training"),
        ("cnnkit.training", "cnnkit.compare"),
        ("cnnkit.training", "cnnkit.cli"),
        ("cnnkit.deploy", "cnnkit.training"),
        ("cnnkit.deploy", "cnnkit.cli"),
    ],
)
def test_layering_data_flows_one_way(layer: str, forbidden: str):
    wrong = {
        f"{module} imports {target}"
        for module, targets in GRAPH.items()
        if _within(module, layer)
        for target in targets
        if _within(target, forbidden)
    }
    assert not wrong, "\n".join(sorted(wrong))


def test_layering_base_classifier_never_imports_its_subclasses():
    base = "cnnkit.deploy.classifier"
    assert not GRAPH[base] & {"cnnkit.deploy.torch_runtime", "cnnkit.deploy.onnx_runtime", "cnnkit.deploy.load"}


def test_layering_top_level_stays_small_and_files_stay_readable():
    top = [path.name for path in PACKAGE.glob("*.py")]
    assert len(top) <= MAX_TOP_LEVEL_MODULES, f"{len(top)} top-level modules: {sorted(top)}"
    long = {module: n for module, path in MODULES.items() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not long, f"files over {MAX_LINES} lines: {long}"


def test_layering_graph_sees_lazy_imports():
    """The reader itself: a function-level import counts, a TYPE_CHECKING one does not."""
    source = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import cnnkit.config\n"
    source += "def f():\n    from cnnkit.data import decode\n"
    assert _imported(ast.parse(source), "cnnkit.errors") == {"cnnkit.data.decode"}
