"""The shape of the code, read from the source with `ast`: the import graph of the one package
`faramir` (its folders faramir/, store/, cli/ and gallery/; imports inside functions included) has
no cycle; the layers import one way (cli and gallery → store → the model); the model and the cache
never import the terminal or plotting libraries, nor a face; modules and functions stay small
enough to read."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = {  # folder → (its import name, the layer it is)
    "faramir": "faramir", "store": "faramir.store", "cli": "faramir.cli", "gallery": "faramir.gallery",
}
FACES = ("faramir.cli", "faramir.gallery")
NEVER = {  # layer → modules it must not import, anywhere (a name and everything under it)
    "faramir": {"typer", "rich", "matplotlib", "lancedb", "lance", "fastapi", "faramir.store", *FACES},
    "faramir.store": {"typer", "rich", "matplotlib", "fastapi", *FACES},
    "faramir.gallery": {"typer", "rich", "matplotlib", "faramir.cli"},
    "faramir.cli": {"faramir.gallery.api", "faramir.gallery.jobs"},  # serve starts the app, nothing more
}
MAX_MODULE_LINES = 400  # every module of the package
MAX_FUNCTION_LINES = 60  # longer only with "Long because ..." in the docstring


def _modules() -> dict[str, Path]:
    """Import name → source file, for every module of the package (its folders mapped as
    pyproject.toml's package-dir maps them)."""
    found = {}
    for folder, package in LAYERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            parts = parts[:-1] if parts[-1] == "__init__" else parts
            found[".".join((package, *parts))] = path
    return found


def _layer(module: str) -> str:
    """The layer a module of the package is in (the longest layer name it starts with)."""
    return max((p for p in LAYERS.values() if module == p or module.startswith(p + ".")), key=len)


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
    assert len(graph) > 60 and "faramir.store.cache" in graph["faramir.store.queries.ranking"]  # really read
    assert "faramir.store.ingestion.run" in graph["faramir.store.ingestion.driver"]  # inside functions too
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_cycles():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def _forbidden(target: str, never: set[str]) -> bool:
    return any(target == n or target.startswith(n + ".") for n in never)


@pytest.mark.parametrize("layer", sorted(NEVER))
def test_layers_import_one_way_and_the_model_and_the_cache_never_the_terminal(layer):
    bad = []
    for name, path in _modules().items():
        if _layer(name) != layer:
            continue
        for target in _imported(ast.parse(path.read_text())):
            if _forbidden(target, NEVER[layer]):
                bad.append(f"{name} imports {target}")
    assert bad == []


def test_only_one_top_level_name_is_imported():
    """Inside the package, every import of our own code goes through `faramir` (a bare `store` or
    `cli` would be a second copy of the module, or another distribution's)."""
    bad = []
    for name, path in _modules().items():
        for target in _imported(ast.parse(path.read_text())):
            if target.split(".")[0] in ("store", "cli", "gallery", "tests", "bench"):
                bad.append(f"{name} imports {target}")
    assert bad == []


def _sizes():
    for name, path in _modules().items():
        text = path.read_text()
        yield name, len(text.splitlines()), ast.parse(text)


def test_modules_and_functions_stay_small():
    too_long = []
    for name, lines, tree in _sizes():
        if lines > MAX_MODULE_LINES:
            too_long.append(f"{name}: {lines} lines")
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES and "Long because" not in (ast.get_docstring(node) or ""):
                    too_long.append(f"{name}.{node.name}: {length} lines")
    assert too_long == []
