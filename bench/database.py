"""The benchmark's own database: where the server is, creating, migrating, tidying, dropping.

The server is found as the tests find theirs: EDITHOOK_TEST_DATABASE_URL if set, else the
Postgres on 127.0.0.1:5432 if it answers, else an embedded one (pgserver) in a temporary
folder that lives as long as the run.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql

from app.migrate import upgrade

LOCAL_POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"


def answers(url: str) -> bool:
    try:
        with psycopg.connect(url, connect_timeout=3):
            return True
    except psycopg.OperationalError:
        return False


@contextlib.contextmanager
def postgres_server(explicit: str | None = None) -> Iterator[str]:
    """A URL of a server where the run may create and drop its database: `explicit` if
    given, else as the module says."""
    explicit = explicit or os.environ.get("EDITHOOK_TEST_DATABASE_URL")
    if explicit:
        yield explicit
        return
    if answers(LOCAL_POSTGRES):
        yield LOCAL_POSTGRES
        return
    import pgserver

    with tempfile.TemporaryDirectory(prefix="edithook-bench-pg-") as data_dir:
        server = pgserver.get_server(Path(data_dir), cleanup_mode="stop")  # type: ignore[attr-defined]
        try:
            yield server.get_uri()
        finally:
            server.cleanup()


def with_database(url: str, name: str) -> str:
    """`url` pointed at the database `name` on the same server."""
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


@contextlib.contextmanager
def bench_database(admin_url: str, name: str, *, keep: bool = False) -> Iterator[str]:
    """A fresh database `name` (any leftover of that name is dropped first), migrated to head;
    dropped on exit unless `keep`."""
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = with_database(admin_url, name)
    try:
        upgrade(url)
        yield url
    finally:
        if not keep:
            with psycopg.connect(admin_url, autocommit=True) as conn:
                conn.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
                )


def server_version(url: str) -> str:
    with psycopg.connect(url) as conn:
        row = conn.execute("SHOW server_version").fetchone()
    return str(row[0]) if row else "unknown"


def server_settings(url: str, names: tuple[str, ...]) -> dict[str, str]:
    """The values of the server settings `names`, as SHOW prints them."""
    found: dict[str, str] = {}
    with psycopg.connect(url) as conn:
        for name in names:
            row = conn.execute(sql.SQL("SHOW {}").format(sql.Identifier(name))).fetchone()
            found[name] = str(row[0]) if row else "?"
    return found


def checkpoint(url: str) -> None:
    """Flush dirty pages now, so a checkpoint does not land in the middle of a measurement.

    Needs a superuser (or pg_checkpoint); without one this does nothing.
    """
    with (
        contextlib.suppress(psycopg.errors.InsufficientPrivilege),
        psycopg.connect(url, autocommit=True) as conn,
    ):
        conn.execute("CHECKPOINT")


def vacuum_analyze(url: str, *tables: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        for table in tables:
            conn.execute(sql.SQL("VACUUM (ANALYZE) {}").format(sql.Identifier(table)))


def fetch(url: str, query: str, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(query, params).fetchall()


def execute(url: str, query: str, params: dict[str, Any] | None = None) -> int:
    """Run one statement in its own transaction; its row count."""
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(query, params).rowcount


def callback_outcomes(url: str, since: Any) -> dict[str, int]:
    """Callback events recorded since `since`, counted by outcome."""
    rows = fetch(
        url,
        "SELECT outcome, count(*) FROM task_events"
        " WHERE kind = 'callback' AND created_at >= %(since)s GROUP BY 1",
        {"since": since},
    )
    return {str(outcome): int(count) for outcome, count in rows}


def copy_jobs_deferred(url: str, since: Any) -> int:
    """Result-copy jobs enqueued since `since` (procrastinate's own `deferred` events)."""
    rows = fetch(
        url,
        "SELECT count(*) FROM procrastinate_events e JOIN procrastinate_jobs j ON j.id = e.job_id"
        " WHERE e.type = 'deferred' AND e.at >= %(since)s AND j.task_name = 'store_results'",
        {"since": since},
    )
    return int(rows[0][0])


def settle_leftovers(url: str) -> dict[str, int]:
    """Leave no work behind the ingest runs for a worker to pick up later.

    Ingest targets nobody completed are failed (the reconciler would poll the simulator for
    their invented provider ids), result rows left pending by ingested completions are
    failed (their links point nowhere), and the jobs those completions enqueued are deleted.
    Returns how many of each were touched.
    """
    with psycopg.connect(url, autocommit=True) as conn:
        tasks = conn.execute(
            "UPDATE tasks SET status = 'failed', error_code = 'bench_unused',"
            " error_message = 'an ingest target the run did not use', resolved_by = 'system',"
            " finished_at = clock_timestamp(), updated_at = clock_timestamp()"
            " WHERE status IN ('queued', 'submitting', 'pending', 'processing')"
        ).rowcount
        results = conn.execute(
            "UPDATE task_results SET status = 'failed', error = 'bench: no image behind this link'"
            " WHERE status = 'pending'"
        ).rowcount
        jobs = conn.execute("DELETE FROM procrastinate_jobs WHERE status = 'todo'").rowcount
    return {"tasks": tasks, "results": results, "jobs": jobs}
