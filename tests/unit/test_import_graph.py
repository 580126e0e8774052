"""The modules of app/ import each other without circles."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.helpers import REPO

APP = REPO / "app"


def _module_names() -> dict[str, Path]:
    names = {}
    for path in APP.rglob("*.py"):
        parts = list(path.relative_to(APP.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def _type_checking_only(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.Module, known: dict[str, Path]) -> set[str]:
    """Every module of app/ that `tree` imports, at any depth but under `if TYPE_CHECKING:`.

    An import inside a function counts: deferring it hides a circle from Python, not from
    whoever changes one of the modules on it.
    """
    found: set[str] = set()
    pending: list[ast.AST] = list(tree.body)
    while pending:
        node = pending.pop()
        if isinstance(node, ast.If) and _type_checking_only(node):
            pending.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name in known}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                if submodule in known:
                    found.add(submodule)
                elif node.module in known:
                    found.add(node.module)
        pending.extend(ast.iter_child_nodes(node))
    return found


def import_graph() -> dict[str, set[str]]:
    """Module → the modules of app/ it imports."""
    known = _module_names()
    return {name: _imports(ast.parse(path.read_text()), known) for name, path in known.items()}


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (or one importing itself)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group: list[str] = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1 or node in graph[node]:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_circle_finder_finds_a_circle() -> None:
    """A graph with a circle is reported, so that an empty answer means something."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert circles(graph) == [["a", "b", "c"]]


def test_no_module_of_app_imports_itself_through_others() -> None:
    """No chain of imports among app/'s modules leads back to where it started."""
    graph = import_graph()
    assert "app.tasks.jobs" in graph["app.worker"], "the graph was read"
    assert circles(graph) == []


# Where a process's whole `Resources` may be held: the assembly, the wiring, and the edges
# (routes and jobs), which hand each service only the dependencies it uses.
HOLDERS_OF_RESOURCES = {"app.cli", "app.main", "app.worker", "app.deps", "app.edge"}


def test_only_the_edges_hold_the_whole_resources() -> None:
    """Services and job bodies take the sessions, pools, clients and settings they use; only
    the assembly, the wiring, the routes and the jobs import `app.resources`."""
    graph = import_graph()
    holders = {name for name, imported in graph.items() if "app.resources" in imported}
    assert "app.worker" in holders, "the graph was read"
    edges = {name for name in holders if name.endswith((".routes", ".jobs"))}
    assert holders - edges <= HOLDERS_OF_RESOURCES
