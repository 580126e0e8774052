"""The simulator models EvoLink, not edithook: it must stay an independent oracle of the wire."""

from __future__ import annotations

import ast
from pathlib import Path

import evolink_simulator

PACKAGE = Path(evolink_simulator.__file__).parent


def _imported_modules(tree: ast.Module) -> list[str]:
    """Every absolute module an import statement in `tree` names (relative ones excluded)."""
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
    return names


def test_the_simulator_imports_nothing_from_edithook() -> None:
    """No module of evolink_simulator imports `app` or anything under it."""
    modules = sorted(PACKAGE.rglob("*.py"))
    assert len(modules) >= 5
    offending = [
        f"{path.relative_to(PACKAGE)}: {name}"
        for path in modules
        for name in _imported_modules(ast.parse(path.read_text(), str(path)))
        if name == "app" or name.startswith("app.")
    ]
    assert offending == []
