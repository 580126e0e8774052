"""`Prefer: wait` on the API: many requests waiting on one task, against the real Postgres."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING

import httpx
import psycopg
from sqlalchemy import event

from app.notify import TASK_CHANNEL

if TYPE_CHECKING:
    from tests.conftest import Caller, Service


WAITERS = 50


async def test_the_waiters_of_one_task_share_one_read_per_notification(
    api: httpx.AsyncClient, service: Service, database_url: str, caller: Caller
) -> None:
    """Requests waiting on one task in one process cost one read of it per notification."""
    waiter = service.resources.waiter
    assert waiter is not None
    task_id = uuid.uuid4()
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        await conn.execute(
            "INSERT INTO tasks (id, client, status, progress, request, metadata, request_hash)"
            " VALUES (%s, %s, 'processing', 50, '{}', '{}', 'h')",
            (task_id, caller.name),
        )
    reads: list[str] = []

    def count(
        conn: object,
        cursor: object,
        statement: str,
        parameters: object,
        context: object,
        executemany: bool,
    ) -> None:
        values = parameters.values() if isinstance(parameters, dict) else ()
        if str(task_id) in map(str, values):
            reads.append(statement)

    engine = service.resources.engine.sync_engine
    event.listen(engine, "before_cursor_execute", count)
    try:
        waiting = [
            asyncio.create_task(api.get(f"/v1/tasks/{task_id}", headers={"Prefer": "wait=30"}))
            for _ in range(WAITERS)
        ]
        await until(lambda: waiter.waiting(task_id) == WAITERS)
        before = await quiet(reads)
        async with await psycopg.AsyncConnection.connect(database_url) as conn:
            await conn.execute(
                "UPDATE tasks SET status = 'completed', progress = 100 WHERE id = %s", (task_id,)
            )
            await conn.execute("SELECT pg_notify(%s, %s)", (TASK_CHANNEL, str(task_id)))
            await conn.commit()
        answers = await asyncio.gather(*waiting)
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert {a.headers["edithook-wait"] for a in answers} == {"settled"}
    assert {a.json()["status"] for a in answers} == {"completed"}
    assert len(reads) - before == 1


async def test_waiters_arriving_together_share_their_first_read(
    api: httpx.AsyncClient, service: Service, database_url: str, caller: Caller
) -> None:
    """Requests that come to wait on a task in one process read it once between them, not
    once each, and each answer carries its own request id and the shared body."""
    waiter = service.resources.waiter
    assert waiter is not None
    task_id = uuid.uuid4()
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        await conn.execute(
            "INSERT INTO tasks (id, client, status, progress, request, metadata, request_hash)"
            " VALUES (%s, %s, 'processing', 50, '{}', '{}', 'h')",
            (task_id, caller.name),
        )
    reads: list[str] = []

    def count(
        conn: object,
        cursor: object,
        statement: str,
        parameters: object,
        context: object,
        executemany: bool,
    ) -> None:
        values = parameters.values() if isinstance(parameters, dict) else ()
        if str(task_id) in map(str, values):
            reads.append(statement)

    engine = service.resources.engine.sync_engine
    event.listen(engine, "before_cursor_execute", count)
    try:
        waiting = [
            asyncio.create_task(api.get(f"/v1/tasks/{task_id}", headers={"Prefer": "wait=30"}))
            for _ in range(WAITERS)
        ]
        await until(lambda: waiter.waiting(task_id) == WAITERS)
        assert await quiet(reads) == 1
        async with await psycopg.AsyncConnection.connect(database_url) as conn:
            await conn.execute(
                "UPDATE tasks SET status = 'completed', progress = 100 WHERE id = %s", (task_id,)
            )
            await conn.execute("SELECT pg_notify(%s, %s)", (TASK_CHANNEL, str(task_id)))
            await conn.commit()
        answers = await asyncio.gather(*waiting)
    finally:
        event.remove(engine, "before_cursor_execute", count)
    expected = (await api.get(f"/v1/tasks/{task_id}")).content
    for answer in answers:
        assert answer.status_code == 200
        assert answer.content == expected
        assert answer.headers["content-type"] == "application/json"
        assert answer.headers["content-length"] == str(len(expected))
        assert answer.headers["preference-applied"] == "wait=30"
        assert answer.headers["edithook-wait"] == "settled"
        assert len(answer.headers.get_list("x-request-id")) == 1
    assert len({answer.headers["x-request-id"] for answer in answers}) == WAITERS


async def quiet(reads: list[str]) -> int:
    """The number of reads once no new one has started for a while (the first checks done)."""
    while True:
        seen = len(reads)
        await asyncio.sleep(0.3)
        if len(reads) == seen:
            return seen


async def until(condition: Callable[[], bool], within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)
