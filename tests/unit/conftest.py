"""Keeps the unit layer free of I/O: none of its tests may use a fixture that reaches a server.

`pytest tests/unit` must pass with Postgres unreachable; a unit test asking (directly or
through another fixture) for the session's Postgres, service or simulator is refused when
the run is collected, naming the test, rather than failing later on a machine without them.
"""

from __future__ import annotations

from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parent

# The fixtures of tests/conftest.py that open a database or a server.
REACHES_A_SERVER = frozenset(
    {
        "admin_url",
        "database_url",
        "private_database_url",
        "simulator",
        "service",
        "caller",
        "beta_caller",
        "api",
        "beta_api",
        "sim",
        "service_url",
        "own_database_url",
        "own_service",
        "own_api",
    }
)


def io_fixtures(item: pytest.Item) -> list[str]:
    """The fixtures reaching a server that `item`, a unit test, would use."""
    names: list[str] = getattr(item, "fixturenames", [])
    return sorted(REACHES_A_SERVER.intersection(names))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    offenders = [
        f"{item.nodeid} uses {', '.join(io_fixtures(item))}"
        for item in items
        if item.path.is_relative_to(UNIT) and io_fixtures(item)
    ]
    if offenders:
        raise pytest.UsageError(
            "unit tests do no I/O; move these to tests/integration:\n" + "\n".join(offenders)
        )
