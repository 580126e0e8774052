"""Who owns a transaction: the edge (a request, a job), never a service a route calls.

Read from the source: the rule is about where sessions are opened, which no HTTP answer
shows. Routes take `SessionDep`; only the named flows of `app.tasks.routes` open short
transactions of their own (`app.db.transaction`); nothing reads through a session it never
began; the request services never commit, begin or open a session; the job bodies open
theirs only through `app.db.transaction`.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.helpers import REPO

APP = REPO / "app"
ROUTE_MODULES = [*sorted(APP.glob("*/routes.py")), APP / "metrics.py", APP / "main.py"]
# Every feature's service.py: the operations its routes call (job bodies live apart).
REQUEST_SERVICES = sorted(APP.glob("*/service.py"))
NAMED_FLOWS = APP / "tasks" / "routes.py"
# The job bodies: each the edge of its work, opening short transactions of its own.
JOB_BODIES = [
    APP / "tasks" / name for name in ("submission.py", "reconcile.py", "sweep.py", "cancel.py")
]
JOB_BODIES.append(APP / "results" / "copy.py")
JOB_BODIES += [APP / "uploads" / "inputs.py", APP / "uploads" / "retention.py"]


def _calls(path: Path) -> list[str]:
    """The names of the functions and methods `path` calls: `transaction`, `sessions`, ..."""
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Name):
                names.append(func.id)
            elif isinstance(func, ast.Attribute):
                names.append(func.attr)
    return names


def test_no_route_reads_through_a_session_it_never_began() -> None:
    """Routes get their session from SessionDep or a named flow, never `sessions()` bare."""
    assert "sessions" in _calls(APP / "db.py"), "the finder sees a bare sessions() call"
    for path in ROUTE_MODULES:
        assert "sessions" not in _calls(path), path


def test_only_the_named_flows_open_transactions_of_their_own() -> None:
    """Every route module but the one naming the early-commit flows leaves it to SessionDep."""
    assert "transaction" in _calls(NAMED_FLOWS)
    for path in ROUTE_MODULES:
        if path != NAMED_FLOWS:
            assert "transaction" not in _calls(path), path


def test_request_services_never_commit_or_begin() -> None:
    """The services routes call take a session and leave its transaction to the caller."""
    assert APP / "callbacks" / "service.py" in REQUEST_SERVICES
    assert APP / "results" / "service.py" in REQUEST_SERVICES
    for path in REQUEST_SERVICES:
        calls = set(_calls(path))
        assert not calls & {"commit", "begin", "rollback", "transaction", "sessions"}, path


def test_job_bodies_read_only_inside_transactions_they_began() -> None:
    """A job's body opens its sessions through `app.db.transaction`, never `sessions()` bare
    (a session it never began, left to roll back whatever it read)."""
    for path in JOB_BODIES:
        assert "sessions" not in _calls(path), path
    assert "transaction" in _calls(APP / "tasks" / "reconcile.py")
