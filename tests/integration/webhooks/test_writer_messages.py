"""The writer's statement makes webhook messages, with their jobs, exactly when a task moves
into pending, failed or cancelled; any other write makes none; a settled completion makes
task.succeeded once. A real Postgres, no worker.

Nothing is emptied between tests: each test's tasks and endpoints belong to clients of its
own (names from the session's generated `callers`), and a message goes only to the
endpoints of its task's client."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from app.db import create_engine, create_pool, create_sessionmaker, transaction
from app.tasks import writer
from app.tasks.transitions import TaskState, Verdict
from app.tasks.writer import Direct, Event
from app.vocabulary import EventKind, EventOutcome, TaskStatus
from app.webhooks.messages import make_succeeded
from tests.conftest import Callers


@pytest.fixture(scope="module")
async def pool(private_database_url: str) -> AsyncIterator[AsyncConnectionPool]:
    opened = create_pool(private_database_url, pool_size=2)
    await opened.open(wait=True)
    yield opened
    await opened.close()


@pytest.fixture
def client(callers: Callers) -> str:
    """A client name no other test uses: the test's tasks and endpoints are its."""
    return callers.take().name


@pytest.fixture
def other_client(callers: Callers) -> str:
    """A second client of the test's own, whose endpoints its tasks' messages never reach."""
    return callers.take().name


async def rows(url: str, sql: str, *params: Any) -> list[dict[str, Any]]:
    async with await psycopg.AsyncConnection.connect(
        url, autocommit=True, row_factory=dict_row
    ) as conn:
        cursor = await conn.execute(sql, params)
        return await cursor.fetchall() if cursor.description else []


async def a_task(url: str, client: str, status: str, webhook_url: str | None) -> uuid.UUID:
    task_id = uuid.uuid4()
    await rows(
        url,
        "INSERT INTO tasks (id, client, status, progress, request, metadata, request_hash,"
        " webhook_url) VALUES (%s, %s, %s, 0, '{}', '{}', 'h', %s)",
        task_id,
        client,
        status,
        webhook_url,
    )
    return task_id


def moving_to(status: TaskStatus) -> Any:
    def rule(state: TaskState) -> Verdict:
        return Verdict(EventOutcome.APPLIED, to_status=status, changes={"status": status})

    return rule


@pytest.mark.parametrize(
    ("start", "to", "made"),
    [
        (TaskStatus.SUBMITTING, TaskStatus.PENDING, "task.submitted"),
        (TaskStatus.PROCESSING, TaskStatus.FAILED, "task.failed"),
        (TaskStatus.QUEUED, TaskStatus.CANCELLED, "task.cancelled"),
        (TaskStatus.PENDING, TaskStatus.PROCESSING, None),
        (TaskStatus.PROCESSING, TaskStatus.COMPLETED, None),
    ],
)
async def test_a_move_makes_one_message_per_recipient_with_its_job(
    pool: AsyncConnectionPool,
    private_database_url: str,
    client: str,
    other_client: str,
    start: TaskStatus,
    to: TaskStatus,
    made: str | None,
) -> None:
    """Subscribed enabled endpoints and the task's URL get one each; others get none."""
    url = private_database_url
    endpoints = {}
    for name, types, enabled, owner in (
        ("all", None, True, client),
        ("this", [made or "task.submitted"], True, client),
        ("other", ["task.succeeded"], True, client),
        ("off", None, False, client),
        ("beta", None, True, other_client),
    ):
        endpoint_id = uuid.uuid4()
        endpoints[endpoint_id] = name
        await rows(
            url,
            "INSERT INTO webhook_endpoints (id, client, url, event_types, enabled, secret)"
            " VALUES (%s, %s, 'https://hooks.example.com/', %s, %s, 's')",
            endpoint_id,
            owner,
            types,
            enabled,
        )
    task_id = await a_task(url, client, start.value, "https://own.example.com/hook")

    written = await writer.settle(Direct(pool), task_id, moving_to(to), Event(EventKind.SYSTEM))
    assert written.outcome == EventOutcome.APPLIED

    messages = await rows(
        url, "SELECT id, type, endpoint_id, url FROM webhook_messages WHERE task_id = %s", task_id
    )
    if made is None:
        assert messages == []
        return
    assert {m["type"] for m in messages} == {made}
    assert sorted(endpoints.get(m["endpoint_id"], m["url"]) for m in messages) == sorted(
        ["all", "this", "https://own.example.com/hook"]
    )
    jobs = await rows(
        url,
        "SELECT args->>'message_id' AS message_id, priority, lock FROM procrastinate_jobs"
        " WHERE task_name = 'deliver_webhook' AND args->>'message_id' = ANY(%s)",
        [str(m["id"]) for m in messages],
    )
    assert sorted(j["message_id"] for j in jobs) == sorted(str(m["id"]) for m in messages)
    assert {j["priority"] for j in jobs} == {-1}
    assert all(j["lock"] == f"webhook:{j['message_id']}" for j in jobs)


async def test_a_repeated_write_into_the_same_status_makes_no_second_message(
    pool: AsyncConnectionPool, private_database_url: str, client: str
) -> None:
    """A task already pending that is 'moved' to pending again sends nothing new."""
    url = private_database_url
    task_id = await a_task(url, client, TaskStatus.PENDING.value, "https://own.example.com/hook")
    await writer.settle(
        Direct(pool), task_id, moving_to(TaskStatus.PENDING), Event(EventKind.SYSTEM)
    )
    assert await rows(url, "SELECT id FROM webhook_messages WHERE task_id = %s", task_id) == []


async def test_a_settled_completion_makes_task_succeeded_once_and_an_unsettled_one_none(
    pool: AsyncConnectionPool, private_database_url: str, client: str
) -> None:
    """`make_succeeded` (the copy's failure paths): only with no result pending, only once.
    The client has no endpoint: only the task's own URL is told."""
    url = private_database_url
    task_id = await a_task(url, client, TaskStatus.COMPLETED.value, "https://own.example.com/hook")
    await rows(
        url,
        "INSERT INTO task_results (task_id, index, provider_url, status) VALUES"
        " (%s, 0, 'https://r.example.com/0.png', 'pending')",
        task_id,
    )
    engine = create_engine(url, pool_size=1)
    sessions = create_sessionmaker(engine)
    try:
        async with transaction(sessions) as session:
            await make_succeeded(session, task_id)
        assert await rows(url, "SELECT id FROM webhook_messages WHERE task_id = %s", task_id) == []
        await rows(url, "UPDATE task_results SET status = 'failed' WHERE task_id = %s", task_id)
        for _ in range(2):
            async with transaction(sessions) as session:
                await make_succeeded(session, task_id)
    finally:
        await engine.dispose()
    made = await rows(url, "SELECT type, url FROM webhook_messages WHERE task_id = %s", task_id)
    assert made == [{"type": "task.succeeded", "url": "https://own.example.com/hook"}]
