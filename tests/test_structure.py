"""The shape of the code, read from the source with `ast`: the import graph of faramir/, store/,
cli/ and gallery/ (imports inside functions included) has no cycle; the model and the cache never
import the terminal or plotting libraries, nor a face (cli, gallery); modules and functions stay
small enough to read."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("faramir", "store", "cli", "gallery")
NEVER = {  # package → top-level modules it must not import, anywhere
    "faramir": {"typer", "rich", "matplotlib", "lancedb", "lance", "store", "cli", "gallery", "fastapi"},
    "store": {"typer", "rich", "matplotlib", "cli", "gallery", "fastapi"},
    "gallery": {"typer", "rich", "matplotlib", "cli"},
}
MAX_MODULE_LINES = 400  # faramir/, store/ and gallery/
MAX_FUNCTION_LINES = 60  # longer only with "Long because ..." in the docstring


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imported(tree: ast.Module) -> list[str]:
    """Every module an import statement names (at any depth, outside `if TYPE_CHECKING:`); for
    `from P import N` that is P.N (N may be a module, or a name P defines or exports lazily)."""
    names: list[str] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.extend(f"{node.module}.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return names


def _lazy_exports(tree: ast.Module) -> dict[str, str]:
    """A package's `_EXPORTS = {name: module}` table (names it imports on first access)."""
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "_EXPORTS" for t in node.targets):
            return ast.literal_eval(node.value)
    return {}


def _graph() -> dict[str, set[str]]:
    """module → the modules it imports. `from P import N` is an edge to the module P.N, else to
    the module P's lazy export table names for N, else to P."""
    modules = _modules()
    trees = {name: ast.parse(path.read_text()) for name, path in modules.items()}
    exports = {name: _lazy_exports(tree) for name, tree in trees.items()}
    graph = {}
    for name, tree in trees.items():
        edges = set()
        for target in _imported(tree):
            parent, _, attribute = target.rpartition(".")
            if target in modules:
                edges.add(target)
            elif parent in modules:
                edges.add(exports[parent].get(attribute, parent))
        edges.discard(name)
        graph[name] = edges
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return found


def test_the_import_graph_has_no_cycle():
    graph = _graph()
    assert len(graph) > 40 and "store.db" in graph["store.query"]  # the graph is really read
    assert "store.ingestion.run" in graph["store.ingestion.driver"]  # imports inside functions count
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_cycles():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


@pytest.mark.parametrize("package", sorted(NEVER))
def test_the_model_and_the_cache_never_import_the_terminal(package):
    bad = []
    for name, path in _modules().items():
        if name.split(".")[0] != package:
            continue
        for target in _imported(ast.parse(path.read_text())):
            if target.split(".")[0] in NEVER[package]:
                bad.append(f"{name} imports {target}")
    assert bad == []


def _sizes():
    for name, path in _modules().items():
        text = path.read_text()
        yield name, len(text.splitlines()), ast.parse(text)


def test_modules_and_functions_stay_small():
    too_long = []
    for name, lines, tree in _sizes():
        if name.split(".")[0] in NEVER and lines > MAX_MODULE_LINES:
            too_long.append(f"{name}: {lines} lines")
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES and "Long because" not in (ast.get_docstring(node) or ""):
                    too_long.append(f"{name}.{node.name}: {length} lines")
    assert too_long == []
