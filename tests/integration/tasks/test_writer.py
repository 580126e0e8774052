"""The one writer: every verdict kind written by one statement, guarded by the state judged.

Where a case runs a message both ways — written without a read (judged against the state
the message implies) and read, judged and written by `settle` on the engine's connection —
it compares everything the database holds afterwards: the task row, its events, its result
rows, the jobs enqueued and the notifications sent. Where the state the message implies is
not the task's, the statement writes nothing and says so; the loop then decides.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.callbacks.service import record_callback, settle_by_callback
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
from app.tasks import writer
from app.tasks.submission import CLAIM, record_created
from app.tasks.transitions import Guard, TaskState, Verdict, client_cancel, guard_for, judge
from app.tasks.writer import Direct, Engine, Event, Written
from app.vocabulary import EventKind, EventOutcome, TaskStatus

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


def callback_event(observed: ProviderTask) -> Event:
    return Event(EventKind.CALLBACK, observed.status, observed.model_dump_json(), HEADERS)


async def settled_callback(db: Database, task_id: uuid.UUID, observed: ProviderTask) -> Written:
    """The callback read, judged and written on the engine's connection."""
    when = writer.now()
    return await writer.settle(
        Engine(db.sessions),
        task_id,
        lambda state: judge(state, observed, EventKind.CALLBACK, when),
        callback_event(observed),
    )


async def unread_callback(
    db: Database, task_id: uuid.UUID, observed: ProviderTask
) -> Written | None:
    """The callback written without a read, on the direct pool."""
    return await settle_by_callback(db.pool, task_id, observed, callback_event(observed))


def created_event(created: ProviderTask) -> Event:
    return Event(EventKind.SUBMISSION, created.status, created.model_dump_json(), submitted=True)


async def settled_created(db: Database, task_id: uuid.UUID, created: ProviderTask) -> Written:
    when = writer.now()
    return await writer.settle(
        Engine(db.sessions),
        task_id,
        lambda state: judge(state, created, EventKind.SUBMISSION, when),
        created_event(created),
    )


async def unread_created(db: Database, task_id: uuid.UUID, created: ProviderTask) -> Written:
    """The create's answer written without a read, on the direct pool."""
    return await record_created(db.pool, task_id, created)


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
async def test_a_terminal_callback_written_without_a_read_matches_the_read_judge_write_loop(
    db: Database,
    status: str,
    provider_id: str | None,
    progress: int,
    observed: ProviderTask,
    outcome: str,
) -> None:
    """Judged against the state the message implies, a terminal callback writes exactly what
    reading the task and judging it writes."""
    task_id = uuid.uuid4()
    await fresh_task(db, task_id, status, provider_id, progress)
    read_notes = await notified(db, task_id, lambda: settled_callback(db, task_id, observed))
    read = await state(db, task_id)

    await fresh_task(db, task_id, status, provider_id, progress)
    written: list[Written | None] = []

    async def run_unread() -> None:
        written.append(await unread_callback(db, task_id, observed))

    unread_notes = await notified(db, task_id, run_unread)
    [only] = written
    assert only is not None
    assert (only.exists, only.outcome) == (True, EventOutcome(outcome))
    assert await state(db, task_id) == read
    assert unread_notes == read_notes == (1 if outcome == "applied" else 0)
    assert [event["outcome"] for event in read["events"]] == [outcome]


async def test_a_create_answer_written_without_a_read_matches_the_read_judge_write_loop(
    db: Database,
) -> None:
    """The create's answer, judged as the submission left the task, writes what reading and
    judging the task writes, the submission's date included."""
    created = message("pending", progress=0, task_info={"can_cancel": True, "estimated_time": 45})
    task_id = uuid.uuid4()
    await fresh_task(db, task_id, "submitting", None)
    read_notes = await notified(db, task_id, lambda: settled_created(db, task_id, created))
    read = await state(db, task_id)

    await fresh_task(db, task_id, "submitting", None)
    written: list[Written] = []

    async def run_unread() -> None:
        written.append(await unread_created(db, task_id, created))

    unread_notes = await notified(db, task_id, run_unread)
    assert [(w.exists, w.outcome) for w in written] == [(True, EventOutcome.APPLIED)]
    assert await state(db, task_id) == read
    assert read["task"]["provider_task_id"] == PROVIDER_ID
    assert read["task"]["estimated_seconds"] == 45
    assert read["task"]["submitted_at"] is True
    assert unread_notes == read_notes == 1


# (case, task status, provider id, message, what the loop then records)
LEFT_TO_THE_LOOP: list[tuple[str, str, str | None, ProviderTask, str]] = [
    ("another provider task", "processing", PROVIDER_ID, message("completed", "other"), "anomaly"),
    ("a different terminal status", "completed", PROVIDER_ID, message("failed"), "anomaly"),
    ("completed after cancelled", "cancelled", PROVIDER_ID, COMPLETED, "anomaly"),
    ("an ambiguous submission's callback", "submitting", None, COMPLETED, "applied"),
    ("a progress report", "pending", PROVIDER_ID, message("processing", progress=50), "applied"),
    ("an unknown status", "pending", PROVIDER_ID, message("teleported"), "anomaly"),
]


@pytest.mark.parametrize(
    ("status", "provider_id", "observed", "recorded_outcome"),
    [case[1:] for case in LEFT_TO_THE_LOOP],
    ids=[case[0] for case in LEFT_TO_THE_LOOP],
)
async def test_other_callbacks_write_nothing_unread_and_are_left_to_the_loop(
    db: Database,
    status: str,
    provider_id: str | None,
    observed: ProviderTask,
    recorded_outcome: str,
) -> None:
    """A callback for a task not in the state it implies writes nothing without a read;
    `record_callback` then reads, judges and records it."""
    task_id = uuid.uuid4()
    await fresh_task(db, task_id, status, provider_id)
    before = await state(db, task_id)
    # Non-terminal or unknown statuses are not even tried; the rest find another state.
    tried = observed.status in ("completed", "failed", "cancelled")
    expected = Written(exists=True) if tried else None
    assert await unread_callback(db, task_id, observed) == expected
    assert await state(db, task_id) == before

    body = observed.model_dump_json().encode()
    outcome = await record_callback(db.sessions, db.pool, task_id, body, HEADERS)
    assert outcome == EventOutcome(recorded_outcome)
    assert [event["outcome"] for event in (await state(db, task_id))["events"]] == [
        recorded_outcome
    ]


@pytest.mark.parametrize("results", [2, 7, 20_000])
async def test_more_results_than_the_tasks_n_are_left_to_the_loop(
    db: Database, results: int
) -> None:
    """A completion listing more results than the task asked for writes nothing unread; the
    loop records it as an anomaly, without result rows."""
    task_id = uuid.uuid4()
    await fresh_task(db, task_id, "processing", PROVIDER_ID, n=1)
    before = await state(db, task_id)
    urls = [f"https://files.example/{i}.png" for i in range(results)]
    observed = message("completed", results=urls)
    assert await unread_callback(db, task_id, observed) in (None, Written(exists=True))
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
    """Our own create answered with more results than asked for: nothing is written unread,
    the loop fails the task (keeping the provider id), with no rows."""
    task_id = uuid.uuid4()
    await fresh_task(db, task_id, "submitting", None, n=1)
    before = await state(db, task_id)
    created = message("completed", results=[f"https://f.example/{i}.png" for i in range(results)])
    assert await unread_created(db, task_id, created) == Written(exists=True)
    assert await state(db, task_id) == before

    await settled_created(db, task_id, created)
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


async def test_a_create_answer_after_the_callback_is_left_to_the_loop(
    db: Database,
) -> None:
    """The callback settled the task first: the create's answer must not move it back."""
    task_id = uuid.uuid4()
    await fresh_task(db, task_id, "completed", PROVIDER_ID, 100)
    before = await state(db, task_id)
    assert await unread_created(db, task_id, message("pending")) == Written(exists=True)
    assert await state(db, task_id) == before


async def test_an_unknown_task_is_reported_as_missing(db: Database) -> None:
    """A task id that names no task: nothing written, and the caller told so."""
    assert await unread_callback(db, uuid.uuid4(), COMPLETED) == Written(exists=False)
    assert await settled_callback(db, uuid.uuid4(), COMPLETED) == Written(exists=False)
    assert await record_callback(db.sessions, db.pool, uuid.uuid4(), b"{}", HEADERS) is None


async def test_concurrent_deliveries_move_the_task_once(db: Database) -> None:
    """Ten copies at once: one applied, nine duplicates, one copy job, one set of results."""
    task_id = uuid.uuid4()
    await fresh_task(db, task_id, "processing", PROVIDER_ID, 20)
    written = await asyncio.gather(*[unread_callback(db, task_id, COMPLETED) for _ in range(10)])
    outcomes = sorted(str(w.outcome) for w in written if w is not None)
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
    """Postgres drops the direct pool's connection: the callback still lands (through the
    engine), and the next one finds the pool working again."""
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
        assert "goes through the engine" in caplog.text
        assert (await state(db, first))["task"]["status"] == "completed"

        again = message("completed", "lost-2", results=["https://files.example/b.png"])
        written = await settle_by_callback(pool, second, again, callback_event(again))
        assert written is not None
        assert (written.exists, written.outcome) == (True, EventOutcome.APPLIED)
    finally:
        await pool.close()


async def test_an_exhausted_pool_says_unavailable_instead_of_waiting(db: Database) -> None:
    """No connection within the checkout time: DirectUnavailable, not a wait."""
    small = create_pool(db.url, pool_size=1)
    await small.open(wait=True)
    try:
        async with small.connection(), small.connection():  # its peak size
            with pytest.raises(DirectUnavailable):
                await fetch_one(small, "SELECT 1", {})
        assert await fetch_one(small, "SELECT 1", {}) == (1,)
    finally:
        await small.close()


async def test_the_direct_pool_plans_each_statement_once(db: Database) -> None:
    """A pooled connection prepares the claim on its first execution and reuses one generic
    plan: planning the statements costs more than running them."""
    params = {"task_id": uuid.uuid4()}
    async with db.pool.connection() as connection:
        for _ in range(3):
            await connection.execute(CLAIM, params)
        cursor = await connection.execute(
            "SELECT generic_plans, custom_plans FROM pg_prepared_statements"
            " WHERE strpos(statement, %(claim)s) > 0",
            {"claim": "edithook_claim_task_v1($"},
        )
        assert await cursor.fetchall() == [(3, 0)]


async def row_version(db: Database, task_id: uuid.UUID) -> Any:
    """The task row's xmin: it changes whenever any statement writes the row."""
    async with await psycopg.AsyncConnection.connect(db.url) as conn:
        row = await (
            await conn.execute("SELECT xmin FROM tasks WHERE id = %s", (task_id,))
        ).fetchone()
    assert row is not None
    return row[0]


# (case, task status, message, outcome): verdicts that leave the task as it was.
EVENT_ONLY: list[tuple[str, str, ProviderTask, str]] = [
    ("a repeat", "completed", COMPLETED, "duplicate"),
    ("an older status", "processing", message("pending"), "stale"),
    ("a contradiction", "completed", message("failed"), "anomaly"),
    ("another provider task", "pending", message("processing", "someone-else"), "anomaly"),
]


@pytest.mark.parametrize(
    ("status", "observed", "outcome"),
    [case[1:] for case in EVENT_ONLY],
    ids=[case[0] for case in EVENT_ONLY],
)
async def test_an_event_that_does_not_move_the_task_leaves_its_row_untouched(
    db: Database, status: str, observed: ProviderTask, outcome: str
) -> None:
    """Duplicate, stale and anomaly verdicts write their event and not one byte of the row."""
    task_id = uuid.uuid4()
    await fresh_task(db, task_id, status, PROVIDER_ID, 100 if status == "completed" else 30)
    before, version = await state(db, task_id), await row_version(db, task_id)
    notes = await notified(db, task_id, lambda: settled_callback(db, task_id, observed))
    after = await state(db, task_id)
    assert (after["task"], after["results"], after["jobs"]) == (
        before["task"],
        before["results"],
        before["jobs"],
    )
    assert await row_version(db, task_id) == version
    assert [
        (e["kind"], e["outcome"], e["from_status"], e["to_status"]) for e in after["events"]
    ] == [("callback", outcome, None, None)]
    assert notes == 0


async def test_a_rejected_body_is_recorded_through_the_writer(db: Database) -> None:
    """An unreadable delivery is an event-only verdict: recorded with its body, task as it was."""
    task_id = uuid.uuid4()
    await fresh_task(db, task_id, "processing", PROVIDER_ID)
    version = await row_version(db, task_id)
    outcome = await record_callback(db.sessions, db.pool, task_id, b"[1, 2", HEADERS)
    assert outcome == EventOutcome.REJECTED
    [event] = (await state(db, task_id))["events"]
    assert (event["outcome"], event["body"], event["headers"]) == ("rejected", "[1, 2", HEADERS)
    assert await row_version(db, task_id) == version


async def test_a_verdict_judged_on_a_state_that_changed_writes_nothing_then_is_judged_again(
    db: Database,
) -> None:
    """The guard is the state judged: once another writer moved the task, the stale verdict
    writes nothing at all, and the loop's next read judges the task as it now is."""
    task_id = uuid.uuid4()
    await fresh_task(db, task_id, "pending", PROVIDER_ID)
    observed = message("processing", progress=40)
    when = writer.now()

    def rule(task: TaskState) -> Verdict:
        return judge(task, observed, EventKind.POLL, when)

    read = await writer.read(Direct(db.pool), task_id)
    assert read is not None
    verdict = rule(read)
    assert verdict.to_status == TaskStatus.PROCESSING
    await settled_callback(db, task_id, COMPLETED)  # another writer gets there first
    before = await state(db, task_id)
    event = Event(EventKind.POLL, "processing", polled=True)
    missed = await writer.write(
        Direct(db.pool), task_id, verdict, guard_for(rule, read, verdict), event
    )
    assert missed == Written(exists=True)
    assert await state(db, task_id) == before

    settled = await writer.settle(Direct(db.pool), task_id, rule, event)
    assert settled.outcome == EventOutcome.STALE
    after = await state(db, task_id)
    assert after["task"]["status"] == "completed"
    assert after["task"]["poll_count"] == before["task"]["poll_count"] + 1


async def test_new_progress_within_a_status_is_guarded_by_the_progress_judged(
    db: Database,
) -> None:
    """A progress report judged against 10 % is not written over a task now at 60 %."""
    task_id = uuid.uuid4()
    await fresh_task(db, task_id, "processing", PROVIDER_ID, progress=10)
    observed = message("processing", progress=50)
    when = writer.now()

    def rule(task: TaskState) -> Verdict:
        return judge(task, observed, EventKind.CALLBACK, when)

    read = await writer.read(Engine(db.sessions), task_id)
    assert read is not None
    verdict = rule(read)
    async with await psycopg.AsyncConnection.connect(db.url, autocommit=True) as conn:
        await conn.execute("UPDATE tasks SET progress = 60 WHERE id = %s", (task_id,))
    guard = guard_for(rule, read, verdict)
    missed = await writer.write(
        Engine(db.sessions), task_id, verdict, guard, callback_event(observed)
    )
    assert missed == Written(exists=True)
    settled = await writer.settle(Engine(db.sessions), task_id, rule, callback_event(observed))
    assert settled.outcome == EventOutcome.DUPLICATE
    assert (await state(db, task_id))["task"]["progress"] == 60


async def test_an_error_verdict_can_move_the_task_and_says_so(db: Database) -> None:
    """A failed create's error event may requeue the task: from/to recorded, waiters told."""
    task_id = uuid.uuid4()
    await fresh_task(db, task_id, "submitting", None)
    verdict = Verdict(
        EventOutcome.ERROR, "refused", TaskStatus.QUEUED, {"status": TaskStatus.QUEUED}
    )
    notes = await notified(
        db,
        task_id,
        lambda: writer.settle(
            Direct(db.pool), task_id, lambda _: verdict, Event(EventKind.SUBMISSION)
        ),
    )
    after = await state(db, task_id)
    assert after["task"]["status"] == "queued"
    [event] = after["events"]
    assert (event["outcome"], event["from_status"], event["to_status"]) == (
        "error",
        "submitting",
        "queued",
    )
    assert notes == 1


async def test_new_progress_within_a_status_is_applied_without_a_move(db: Database) -> None:
    """Progress within a status changes the row and wakes waiters; the event records no move."""
    task_id = uuid.uuid4()
    await fresh_task(db, task_id, "processing", PROVIDER_ID, progress=10)
    observed = message("processing", progress=50)
    notes = await notified(db, task_id, lambda: settled_callback(db, task_id, observed))
    after = await state(db, task_id)
    assert (after["task"]["status"], after["task"]["progress"]) == ("processing", 50)
    [event] = after["events"]
    assert (event["outcome"], event["from_status"], event["to_status"]) == ("applied", None, None)
    assert notes == 1


async def test_a_failed_poll_is_counted_and_recorded_without_moving_the_task(
    db: Database,
) -> None:
    """An error event with a poll's bookkeeping: the poll is counted, nothing else changes,
    and no waiter is woken."""
    task_id = uuid.uuid4()
    await fresh_task(db, task_id, "processing", PROVIDER_ID)
    before = await state(db, task_id)
    error = Verdict(EventOutcome.ERROR, "poll failed (timeout)")
    notes = await notified(
        db,
        task_id,
        lambda: writer.settle(
            Direct(db.pool), task_id, lambda _: error, Event(EventKind.POLL, polled=True)
        ),
    )
    after = await state(db, task_id)
    assert after["task"]["poll_count"] == before["task"]["poll_count"] + 1
    assert after["task"]["polled_at"] is not None
    assert {k: v for k, v in after["task"].items() if not k.startswith("poll")} == {
        k: v for k, v in before["task"].items() if not k.startswith("poll")
    }
    [event] = after["events"]
    assert (event["kind"], event["outcome"], event["detail"]) == (
        "poll",
        "error",
        "poll failed (timeout)",
    )
    assert notes == 0


async def spent_on(db: Database, task_id: uuid.UUID, reserved: int) -> int:
    """A budget period row holding `reserved` images for task `task_id`, which points at it."""
    async with await psycopg.AsyncConnection.connect(db.url, autocommit=True) as conn:
        await conn.execute(
            "INSERT INTO clients (name, budget_images, budget_period) VALUES"
            " ('writer-budget', 100, 'day') ON CONFLICT DO NOTHING"
        )
        cursor = await conn.execute(
            "INSERT INTO client_spend (client, period, period_start, reserved)"
            " VALUES ('writer-budget', 'day', now() - random() * interval '1000 days', %s)"
            " RETURNING id",
            (reserved,),
        )
        row = await cursor.fetchone()
        assert row is not None
        await conn.execute(
            "UPDATE tasks SET spend_id = %s, images_reserved = %s WHERE id = %s",
            (row[0], reserved, task_id),
        )
        return int(row[0])


async def spend(db: Database, spend_id: int) -> tuple[int, int]:
    async with await psycopg.AsyncConnection.connect(db.url) as conn:
        row = await (
            await conn.execute(
                "SELECT reserved, charged FROM client_spend WHERE id = %s", (spend_id,)
            )
        ).fetchone()
        assert row is not None
        return row[0], row[1]


async def test_the_move_into_a_terminal_status_settles_the_reservation_once(
    db: Database,
) -> None:
    """A completion listing 2 of 3 images charges 2 and releases the reservation, in the
    statement that completes the task; the same verdict written again over the completed
    row (its guard forged to hold there) changes neither the charge nor the row."""
    task_id = uuid.uuid4()
    await fresh_task(db, task_id, "processing", PROVIDER_ID, n=3)
    spend_id = await spent_on(db, task_id, 3)
    urls = ("https://files.evolink.ai/a/0.png", "https://files.evolink.ai/a/1.png")
    verdict = Verdict(
        EventOutcome.APPLIED,
        None,
        TaskStatus.COMPLETED,
        {"status": TaskStatus.COMPLETED, "progress": 100},
        urls,
    )
    in_flight = Guard(frozenset({TaskStatus.PROCESSING}), PROVIDER_ID)
    written = await writer.write(
        Direct(db.pool), task_id, verdict, in_flight, Event(EventKind.CALLBACK)
    )
    assert written.outcome == EventOutcome.APPLIED
    after = await state(db, task_id)
    assert (after["task"]["status"], after["task"]["images_charged"]) == ("completed", 2)
    assert await spend(db, spend_id) == (0, 2)
    again = Guard(frozenset({TaskStatus.COMPLETED}), PROVIDER_ID)
    rewritten = await writer.write(
        Direct(db.pool), task_id, verdict, again, Event(EventKind.CALLBACK)
    )
    assert rewritten.outcome == EventOutcome.APPLIED
    assert (await state(db, task_id))["task"]["images_charged"] == 2
    assert await spend(db, spend_id) == (0, 2)


async def test_a_cancel_releases_the_reservation_and_charges_nothing(db: Database) -> None:
    """A client's cancel of a queued task: charged 0, the row's reservation released."""
    task_id = uuid.uuid4()
    await fresh_task(db, task_id, "queued", None, n=2)
    spend_id = await spent_on(db, task_id, 2)
    now = writer.now()
    written = await writer.settle(
        Direct(db.pool), task_id, lambda state: client_cancel(state, now), Event(EventKind.CLIENT)
    )
    assert written.outcome == EventOutcome.APPLIED
    after = await state(db, task_id)
    assert (after["task"]["status"], after["task"]["images_charged"]) == ("cancelled", 0)
    assert await spend(db, spend_id) == (0, 0)
