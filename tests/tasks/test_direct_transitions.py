"""The one-statement path writes exactly what the careful path writes, or nothing at all.

Each case runs the same message against the same task twice — once through the careful path
(row lock, `judge`, ORM) and once through `app.tasks.direct` — and compares everything the
database holds afterwards: the task row, its events, its result rows, the jobs enqueued and
the notifications sent. Where the direct path does not apply it must write nothing and say
so; the careful path then decides.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.callbacks.service import record_callback
from app.db import (
    DirectUnavailable,
    create_engine,
    create_pool,
    create_sessionmaker,
    fetch_one,
    transaction,
)
from app.evolink.schemas import ProviderTask
from app.models import Task
from app.notify import TASK_CHANNEL
from app.tasks import direct
from app.tasks.lifecycle import EventKind, EventOutcome, TaskStatus
from app.tasks.submission import CLAIM
from app.tasks.transitions import lock_task, observe

PROVIDER_ID = "task-unified-1700000000-direct01"
HEADERS = {"content-type": "application/json", "peer": "127.0.0.1"}


@dataclass
class Database:
    url: str
    sessions: async_sessionmaker[AsyncSession]
    pool: AsyncConnectionPool


@pytest.fixture(scope="module")
async def db(private_database_url: str) -> AsyncIterator[Database]:
    engine = create_engine(private_database_url, pool_size=2)
    pool = create_pool(private_database_url, pool_size=2)
    await pool.open(wait=True)
    yield Database(private_database_url, create_sessionmaker(engine), pool)
    await pool.close()
    await engine.dispose()


async def fresh_task(
    db: Database,
    task_id: uuid.UUID,
    status: str,
    provider_task_id: str | None,
    progress: int = 0,
    n: int | None = None,
) -> None:
    """The task `task_id` as the case needs it, and nothing else that refers to it (earlier
    cases' tasks with PROVIDER_ID are removed: provider ids are unique)."""
    async with await psycopg.AsyncConnection.connect(db.url, autocommit=True) as conn:
        await conn.execute(
            "DELETE FROM tasks WHERE id = %s OR provider_task_id = ANY(%s)",
            (task_id, [PROVIDER_ID, provider_task_id]),
        )
        await conn.execute(
            "DELETE FROM procrastinate_jobs WHERE args->>'task_id' = %s", (str(task_id),)
        )
    async with transaction(db.sessions) as session:
        session.add(
            Task(
                id=task_id,
                client="alpha",
                status=status,
                progress=progress,
                request={
                    "prompt": "p",
                    "image_urls": ["https://cdn.example.com/a.png"],
                    **({} if n is None else {"n": n}),
                },
                request_hash="h",
                provider_task_id=provider_task_id,
                usage={"credits_reserved": 1},
            )
        )


async def state(db: Database, task_id: uuid.UUID) -> dict[str, Any]:
    """Everything the database holds about the task, minus the clock's own values."""
    async with await psycopg.AsyncConnection.connect(db.url) as conn:
        cursor = conn.cursor(row_factory=psycopg.rows.dict_row)
        await cursor.execute("SELECT * FROM tasks WHERE id = %s", (task_id,))
        task = await cursor.fetchone()
        assert task is not None
        for moment in ("finished_at", "submitted_at"):
            task[moment] = task[moment] is not None
        for moment in ("created_at", "updated_at"):
            del task[moment]
        await cursor.execute(
            "SELECT kind, outcome, from_status, to_status, provider_status, detail, body, headers"
            " FROM task_events WHERE task_id = %s ORDER BY id",
            (task_id,),
        )
        events = await cursor.fetchall()
        await cursor.execute(
            "SELECT index, provider_url, status FROM task_results"
            " WHERE task_id = %s ORDER BY index",
            (task_id,),
        )
        results = await cursor.fetchall()
        await cursor.execute(
            "SELECT queue_name, task_name, lock, queueing_lock, args, status"
            " FROM procrastinate_jobs WHERE args->>'task_id' = %s ORDER BY id",
            (str(task_id),),
        )
        jobs = await cursor.fetchall()
    return {"task": task, "events": events, "results": results, "jobs": jobs}


async def notified(db: Database, task_id: uuid.UUID, write: Callable[[], Awaitable[Any]]) -> int:
    """How many notifications naming the task `write` sends on the task channel."""
    async with await psycopg.AsyncConnection.connect(db.url, autocommit=True) as listener:
        await listener.execute(f"LISTEN {TASK_CHANNEL}")
        await write()
        received = [n async for n in listener.notifies(timeout=0.3)]
    return sum(1 for n in received if n.payload == str(task_id))


def message(status: str, provider_id: str = PROVIDER_ID, **fields: Any) -> ProviderTask:
    return ProviderTask.model_validate(
        {"id": provider_id, "object": "image.generation.task", "status": status, **fields}
    )


async def careful_callback(db: Database, task_id: uuid.UUID, observed: ProviderTask) -> None:
    async with transaction(db.sessions) as session:
        task = await lock_task(session, task_id)
        await observe(
            session,
            task,
            observed,
            EventKind.CALLBACK,
            body=observed.model_dump_json(),
            headers=HEADERS,
        )


async def direct_callback(
    db: Database, task_id: uuid.UUID, observed: ProviderTask
) -> direct.Written | None:
    return await direct.settle_by_callback(
        db.pool, task_id, observed, body=observed.model_dump_json(), headers=HEADERS
    )


async def careful_created(db: Database, task_id: uuid.UUID, created: ProviderTask) -> None:
    async with transaction(db.sessions) as session:
        task = await lock_task(session, task_id)
        task.submitted_at = task.submitted_at or datetime.now(UTC)
        await observe(session, task, created, EventKind.SUBMISSION, body=created.model_dump_json())


async def direct_created(db: Database, task_id: uuid.UUID, created: ProviderTask) -> direct.Written:
    return await direct.record_created(db.pool, task_id, created, body=created.model_dump_json())


COMPLETED = message(
    "completed",
    progress=100,
    results=["https://files.example/a/0.png", "https://files.example/a/1.png"],
    usage={"credits_reserved": 2, "billing_rule": "per_call"},
)

# (case, task status, provider id, progress, message, expected outcome)
CALLBACKS: list[tuple[str, str, str | None, int, ProviderTask, str]] = [
    ("completed from processing", "processing", PROVIDER_ID, 40, COMPLETED, "applied"),
    ("completed from pending", "pending", PROVIDER_ID, 0, COMPLETED, "applied"),
    (
        "completed without results",
        "processing",
        PROVIDER_ID,
        10,
        message("completed", results=[]),
        "applied",
    ),
    (
        "failed, progress kept at its highest",
        "processing",
        PROVIDER_ID,
        60,
        message("failed", progress=30, error={"code": "content_policy", "message": "no"}),
        "applied",
    ),
    (
        "failed without an error object",
        "pending",
        PROVIDER_ID,
        0,
        message("failed", progress=80),
        "applied",
    ),
    (
        "a cancellation reported as failed",
        "pending",
        PROVIDER_ID,
        0,
        message("failed", error={"code": "request_cancelled", "message": "by user"}),
        "applied",
    ),
    ("cancelled", "processing", PROVIDER_ID, 5, message("cancelled"), "applied"),
    ("a repeat of completed", "completed", PROVIDER_ID, 100, COMPLETED, "duplicate"),
    ("a repeat of failed", "failed", PROVIDER_ID, 0, message("failed"), "duplicate"),
]


@pytest.mark.parametrize(
    ("status", "provider_id", "progress", "observed", "outcome"),
    [case[1:] for case in CALLBACKS],
    ids=[case[0] for case in CALLBACKS],
)
async def test_a_terminal_callback_writes_what_the_careful_path_writes(
    db: Database,
    status: str,
    provider_id: str | None,
    progress: int,
    observed: ProviderTask,
    outcome: str,
) -> None:
    task_id = uuid.uuid4()
    await fresh_task(db, task_id, status, provider_id, progress)
    careful_notes = await notified(db, task_id, lambda: careful_callback(db, task_id, observed))
    careful = await state(db, task_id)

    await fresh_task(db, task_id, status, provider_id, progress)
    written: list[direct.Written | None] = []

    async def run_direct() -> None:
        written.append(await direct_callback(db, task_id, observed))

    direct_notes = await notified(db, task_id, run_direct)
    assert written == [direct.Written(exists=True, outcome=EventOutcome(outcome))]
    assert await state(db, task_id) == careful
    assert direct_notes == careful_notes == (1 if outcome == "applied" else 0)
    assert [event["outcome"] for event in careful["events"]] == [outcome]


async def test_a_create_answer_writes_what_the_careful_path_writes(db: Database) -> None:
    created = message("pending", progress=0, task_info={"can_cancel": True, "estimated_time": 45})
    task_id = uuid.uuid4()
    await fresh_task(db, task_id, "submitting", None)
    careful_notes = await notified(db, task_id, lambda: careful_created(db, task_id, created))
    careful = await state(db, task_id)

    await fresh_task(db, task_id, "submitting", None)
    written: list[direct.Written | None] = []

    async def run_direct() -> None:
        written.append(await direct_created(db, task_id, created))

    direct_notes = await notified(db, task_id, run_direct)
    assert written == [direct.Written(exists=True, outcome=EventOutcome.APPLIED)]
    assert await state(db, task_id) == careful
    assert careful["task"]["provider_task_id"] == PROVIDER_ID
    assert careful["task"]["estimated_seconds"] == 45
    assert careful["task"]["submitted_at"] is True
    assert direct_notes == careful_notes == 1


# (case, task status, provider id, message, what the careful path then records)
LEFT_TO_THE_CAREFUL_PATH: list[tuple[str, str, str | None, ProviderTask, str]] = [
    ("another provider task", "processing", PROVIDER_ID, message("completed", "other"), "anomaly"),
    ("a different terminal status", "completed", PROVIDER_ID, message("failed"), "anomaly"),
    ("completed after cancelled", "cancelled", PROVIDER_ID, COMPLETED, "anomaly"),
    ("an ambiguous submission's callback", "submitting", None, COMPLETED, "applied"),
    ("a progress report", "pending", PROVIDER_ID, message("processing", progress=50), "applied"),
    ("an unknown status", "pending", PROVIDER_ID, message("teleported"), "anomaly"),
]


@pytest.mark.parametrize(
    ("status", "provider_id", "observed", "careful_outcome"),
    [case[1:] for case in LEFT_TO_THE_CAREFUL_PATH],
    ids=[case[0] for case in LEFT_TO_THE_CAREFUL_PATH],
)
async def test_other_callbacks_write_nothing_and_are_left_to_the_careful_path(
    db: Database,
    status: str,
    provider_id: str | None,
    observed: ProviderTask,
    careful_outcome: str,
) -> None:
    task_id = uuid.uuid4()
    await fresh_task(db, task_id, status, provider_id)
    before = await state(db, task_id)
    # Non-terminal or unknown statuses are not even tried; the rest find another state.
    tried = observed.status in ("completed", "failed", "cancelled")
    expected = direct.Written(exists=True) if tried else None
    assert await direct_callback(db, task_id, observed) == expected
    assert await state(db, task_id) == before

    body = observed.model_dump_json().encode()
    outcome = await record_callback(db.sessions, db.pool, task_id, body, HEADERS)
    assert outcome == EventOutcome(careful_outcome)
    assert [event["outcome"] for event in (await state(db, task_id))["events"]] == [careful_outcome]


@pytest.mark.parametrize("results", [2, 7, 20_000])
async def test_more_results_than_the_tasks_n_are_left_to_the_careful_path(
    db: Database, results: int
) -> None:
    """A completion listing more results than the task asked for writes nothing here; the
    careful path records it as an anomaly, without result rows."""
    task_id = uuid.uuid4()
    await fresh_task(db, task_id, "processing", PROVIDER_ID, n=1)
    before = await state(db, task_id)
    urls = [f"https://files.example/{i}.png" for i in range(results)]
    observed = message("completed", results=urls)
    assert await direct_callback(db, task_id, observed) in (None, direct.Written(exists=True))
    assert await state(db, task_id) == before

    body = observed.model_dump_json().encode()
    outcome = await record_callback(db.sessions, db.pool, task_id, body, HEADERS)
    assert outcome == EventOutcome.ANOMALY
    after = await state(db, task_id)
    assert (after["task"]["status"], after["results"], after["jobs"]) == ("processing", [], [])
    assert f"lists {results} results" in after["events"][0]["detail"]


@pytest.mark.parametrize("results", [2, 7])
async def test_a_create_answer_with_more_results_than_n_fails_the_task_without_rows(
    db: Database, results: int
) -> None:
    """Our own create answered with more results than asked for: the direct path writes
    nothing, the careful path fails the task (keeping the provider id), with no rows."""
    task_id = uuid.uuid4()
    await fresh_task(db, task_id, "submitting", None, n=1)
    before = await state(db, task_id)
    created = message("completed", results=[f"https://f.example/{i}.png" for i in range(results)])
    assert await direct_created(db, task_id, created) in (None, direct.Written(exists=True))
    assert await state(db, task_id) == before

    await careful_created(db, task_id, created)
    after = await state(db, task_id)
    task = after["task"]
    assert (task["status"], task["error_code"], task["resolved_by"]) == (
        "failed",
        "provider_results_over_n",
        "submission",
    )
    assert task["provider_task_id"] == PROVIDER_ID
    assert f"lists {results} results" in task["error_message"]
    assert (after["results"], after["jobs"]) == ([], [])


async def test_a_create_answer_after_the_callback_is_left_to_the_careful_path(
    db: Database,
) -> None:
    """The callback settled the task first: the create's answer must not move it back."""
    task_id = uuid.uuid4()
    await fresh_task(db, task_id, "completed", PROVIDER_ID, 100)
    before = await state(db, task_id)
    assert await direct_created(db, task_id, message("pending")) == direct.Written(exists=True)
    assert await state(db, task_id) == before


async def test_an_unknown_task_is_reported_as_missing(db: Database) -> None:
    assert await direct_callback(db, uuid.uuid4(), COMPLETED) == direct.Written(exists=False)
    assert await record_callback(db.sessions, db.pool, uuid.uuid4(), b"{}", HEADERS) is None


async def test_concurrent_deliveries_move_the_task_once(db: Database) -> None:
    """Ten copies at once: one applied, nine duplicates, one copy job, one set of results."""
    task_id = uuid.uuid4()
    await fresh_task(db, task_id, "processing", PROVIDER_ID, 20)
    written = await asyncio.gather(*[direct_callback(db, task_id, COMPLETED) for _ in range(10)])
    outcomes = sorted(str(w.outcome) for w in written)
    assert outcomes == ["applied"] + ["duplicate"] * 9
    after = await state(db, task_id)
    assert after["task"]["status"] == "completed"
    assert len(after["results"]) == 2
    assert [(job["task_name"], job["lock"]) for job in after["jobs"]] == [
        ("store_results", f"results:{task_id}")
    ]
    assert [event["to_status"] for event in after["events"]].count("completed") == 1


async def test_a_lost_connection_falls_back_and_the_pool_heals(
    db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    """Postgres drops the direct pool's connection: the callback still lands (the careful
    path takes it), and the next one finds the pool working again."""
    first, second = uuid.uuid4(), uuid.uuid4()
    await fresh_task(db, first, "processing", "lost-1")
    await fresh_task(db, second, "processing", "lost-2")
    pool = create_pool(db.url, pool_size=1)
    await pool.open(wait=True)
    try:
        row = await fetch_one(pool, "SELECT pg_backend_pid()", {})
        assert row is not None
        async with await psycopg.AsyncConnection.connect(db.url, autocommit=True) as admin:
            await admin.execute("SELECT pg_terminate_backend(%s)", (row[0],))
        body = message("completed", "lost-1", results=["https://files.example/a.png"])
        with caplog.at_level(logging.WARNING, logger="edithook"):
            outcome = await record_callback(
                db.sessions, pool, first, body.model_dump_json().encode(), HEADERS
            )
        assert outcome == EventOutcome.APPLIED
        assert "takes the careful path" in caplog.text
        assert (await state(db, first))["task"]["status"] == "completed"

        again = message("completed", "lost-2", results=["https://files.example/b.png"])
        written = await direct.settle_by_callback(
            pool, second, again, body=again.model_dump_json(), headers=HEADERS
        )
        assert written == direct.Written(exists=True, outcome=EventOutcome.APPLIED)
    finally:
        await pool.close()


async def test_an_exhausted_pool_says_unavailable_instead_of_waiting(db: Database) -> None:
    small = create_pool(db.url, pool_size=1)
    await small.open(wait=True)
    try:
        async with small.connection(), small.connection():  # its peak size
            with pytest.raises(DirectUnavailable):
                await fetch_one(small, "SELECT 1", {})
        assert await fetch_one(small, "SELECT 1", {}) == (1,)
    finally:
        await small.close()


def test_a_column_outside_the_whitelist_is_refused() -> None:
    """Column names are interpolated into the SQL, so only known ones are accepted."""
    with pytest.raises(ValueError, match=r"cannot change \['client', 'request'\]"):
        direct.statement_for(
            frozenset({"status", "client", "request"}), frozenset({TaskStatus.PROCESSING})
        )
    statement = direct.statement_for(
        frozenset({"status", "progress", "submitted_at"}), frozenset({TaskStatus.PROCESSING})
    )
    assert "progress = GREATEST(t.progress, %(set_progress)s)" in statement
    assert "status = %(set_status)s" in statement
    assert "prior.status IN ('processing')" in statement


async def test_the_direct_pool_plans_each_statement_once(db: Database) -> None:
    """A pooled connection prepares the claim on its first execution and reuses one generic
    plan: planning the statements costs more than running them."""
    params = {"task_id": uuid.uuid4(), "queued": "queued", "submitting": "submitting"}
    async with db.pool.connection() as connection:
        for _ in range(3):
            await connection.execute(CLAIM, params)
        cursor = await connection.execute(
            "SELECT generic_plans, custom_plans FROM pg_prepared_statements"
            " WHERE strpos(statement, %(claim)s) > 0",
            {"claim": "UPDATE tasks SET status = $"},
        )
        assert await cursor.fetchall() == [(3, 0)]
