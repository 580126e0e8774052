"""`GET /v1/tasks/{id}/stream`: a task's changes as Server-Sent Events, over real HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx
import psycopg
import pytest
from psycopg import sql
from sqlalchemy import event

from app.main import create_app
from app.notify import TASK_CHANNEL
from app.servers import RunningServer, bind, socket_url, start_server
from app.vocabulary import RANK, TaskStatus
from tests.helpers import VALID_EDIT, make_settings
from tests.integration.tasks.test_task_waiting import quiet, until

if TYPE_CHECKING:
    from tests.conftest import Caller, Callers, Service


@dataclass
class Message:
    """One event of the stream, or one comment (`comment` set, the rest empty)."""

    event: str = ""
    id: str | None = None
    data: str = ""
    comment: str | None = None

    def json(self) -> dict[str, Any]:
        decoded: dict[str, Any] = json.loads(self.data)
        return decoded


@dataclass
class Stream:
    """An open stream's answer and the messages read from it so far.

    A line being read when a wait times out is kept for the next call, so a timed-out wait
    loses nothing (cancelling the read would end the body's iterator).
    """

    answer: httpx.Response
    messages: list[Message] = field(default_factory=list)
    _lines: AsyncIterator[str] | None = None
    _pending: asyncio.Task[str] | None = None

    async def _line(self, deadline: float) -> str | None:
        if self._lines is None:
            self._lines = self.answer.aiter_lines()
        if self._pending is None:
            self._pending = asyncio.ensure_future(anext(self._lines))
        remaining = deadline - asyncio.get_running_loop().time()
        done, _ = await asyncio.wait({self._pending}, timeout=max(remaining, 0))
        if not done:
            raise TimeoutError
        line, self._pending = self._pending, None
        try:
            return line.result()
        except StopAsyncIteration:
            return None

    async def next(self, within: float = 10.0) -> Message | None:
        """The next event or comment; None once the server has ended the stream."""
        deadline = asyncio.get_running_loop().time() + within
        current = Message()
        while (line := await self._line(deadline)) is not None:
            if line.startswith(":"):
                return self._keep(Message(comment=line[1:].strip()))
            if not line:
                if current.event or current.data:
                    return self._keep(current)
                continue
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "event":
                current.event = value
            elif name == "id":
                current.id = value
            elif name == "data":
                current.data += value
        return None

    def _keep(self, message: Message) -> Message:
        self.messages.append(message)
        return message

    async def event(self, within: float = 10.0) -> Message | None:
        """The next event, skipping comments; None once the stream has ended."""
        while True:
            message = await self.next(within)
            if message is None or message.comment is None:
                return message

    async def rest(self, within: float = 30.0) -> list[Message]:
        """Every event until the server ends the stream."""
        events = []
        while (message := await self.event(within)) is not None:
            events.append(message)
        return events


@asynccontextmanager
async def stream(
    client: httpx.AsyncClient, task_id: object, last_event_id: str | None = None
) -> AsyncIterator[Stream]:
    headers = {"Last-Event-ID": last_event_id} if last_event_id is not None else {}
    async with client.stream("GET", f"/v1/tasks/{task_id}/stream", headers=headers) as answer:
        live = Stream(answer)
        try:
            yield live
        finally:
            if live._pending is not None:
                live._pending.cancel()
                with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                    await live._pending


async def insert_task(
    database_url: str, caller: Caller, status: str = "processing", progress: int = 50
) -> str:
    task_id = uuid.uuid4()
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        await conn.execute(
            "INSERT INTO tasks (id, client, status, progress, request, metadata, request_hash)"
            " VALUES (%s, %s, %s, %s, '{}', '{}', 'h')",
            (task_id, caller.name, status, progress),
        )
    return str(task_id)


async def change(database_url: str, task_id: str, **columns: object) -> None:
    """Change the task as the writer does: the columns, `updated_at`, and a NOTIFY."""
    assignments = sql.SQL(", ").join(
        sql.SQL("{} = {}").format(sql.Identifier(name), sql.Placeholder(name)) for name in columns
    )
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        await conn.execute(
            sql.SQL(
                "UPDATE tasks SET {}, updated_at = clock_timestamp() WHERE id = %(task_id)s"
            ).format(assignments),
            {**columns, "task_id": task_id},
        )
        await conn.execute("SELECT pg_notify(%s, %s)", (TASK_CHANNEL, task_id))
        await conn.commit()


def version(event_id: str | None) -> tuple[int, int]:
    assert event_id is not None
    stamp, _, done = event_id.partition(".")
    return int(stamp), int(done)


async def test_the_stream_sees_every_change_in_order_and_closes_once_settled(
    api: httpx.AsyncClient,
) -> None:
    """A task run by the worker and the simulator: its states in order, each once, newer ids,
    the last one settled and exactly what GET answers, then the end of the stream."""
    created = (await api.post("/v1/tasks", json=VALID_EDIT)).json()
    async with stream(api, created["id"]) as live:
        assert live.answer.status_code == 200
        assert live.answer.headers["content-type"].startswith("text/event-stream")
        events = await live.rest()
    final = (await api.get(f"/v1/tasks/{created['id']}")).json()
    tasks = [event.json() for event in events]
    assert {event.event for event in events} == {"task"}
    assert tasks[-1] == final
    assert final["status"] == "completed"
    assert final["results_stored"]
    ranks = [RANK[TaskStatus(task["status"])] for task in tasks]
    assert ranks == sorted(ranks), [task["status"] for task in tasks]
    assert tasks[0]["status"] in {"queued", "submitting", "pending"}
    versions = [version(event.id) for event in events]
    assert versions == sorted(versions)
    assert len(set(versions)) == len(versions)
    assert all(a != b for a, b in itertools.pairwise(tasks))


async def test_each_change_is_one_event_with_the_task_as_get_answers_it(
    api: httpx.AsyncClient, database_url: str, caller: Caller
) -> None:
    """Every notified change is sent, in order; the stream ends with the terminal state."""
    task_id = await insert_task(database_url, caller, progress=10)
    async with stream(api, task_id) as live:
        first = await live.event()
        assert first is not None
        assert first.json()["progress"] == 10
        for progress in (20, 30, 40):
            await change(database_url, task_id, progress=progress)
            event = await live.event()
            assert event is not None
            assert event.json() == (await api.get(f"/v1/tasks/{task_id}")).json()
            assert event.json()["progress"] == progress
        await change(database_url, task_id, status="failed")
        last = await live.event()
        assert last is not None
        assert last.json()["status"] == "failed"
        assert await live.event() is None
    ids = [version(message.id) for message in live.messages]
    assert ids == sorted(ids)
    assert len(set(ids)) == 5


async def test_a_settled_task_yields_one_event_and_closes(api: httpx.AsyncClient) -> None:
    """Nothing more will change: the task once, then the end, with no waiting."""
    created = (await api.post("/v1/tasks", json=VALID_EDIT, headers={"Prefer": "wait=30"})).json()
    assert created["status"] == "completed"
    assert created["results_stored"]
    async with stream(api, created["id"]) as live:
        events = await live.rest(within=5)
    assert [event.json() for event in events] == [created]


async def test_resuming_sends_the_current_state_only_if_it_changed_since(
    api: httpx.AsyncClient, database_url: str, caller: Caller
) -> None:
    """`Last-Event-ID` of the current state: nothing until the next change; of an older state:
    the current one at once; on a settled task: nothing, and the end."""
    task_id = await insert_task(database_url, caller, progress=10)
    async with stream(api, task_id) as live:
        seen = await live.event()
    assert seen is not None
    async with stream(api, task_id, last_event_id=seen.id) as resumed:
        with pytest.raises(TimeoutError):
            await resumed.event(within=0.5)
        await change(database_url, task_id, progress=20)
        event = await resumed.event()
        assert event is not None
        assert event.json()["progress"] == 20
        assert version(event.id) > version(seen.id)
    await change(database_url, task_id, progress=30)
    async with stream(api, task_id, last_event_id=seen.id) as stale:
        event = await stale.event(within=5)
        assert event is not None
        assert event.json()["progress"] == 30
    await change(database_url, task_id, status="cancelled")
    async with stream(api, task_id) as live:
        [settled] = await live.rest(within=5)
    async with stream(api, task_id, last_event_id=settled.id) as resumed:
        assert await resumed.rest(within=5) == []
    async with stream(api, task_id, last_event_id="not a version") as resumed:
        assert [event.json() for event in await resumed.rest(within=5)] == [settled.json()]


async def test_another_clients_task_is_not_found(
    api: httpx.AsyncClient, beta_api: httpx.AsyncClient, database_url: str, caller: Caller
) -> None:
    """The stream of a task the caller does not own is the same 404 as a task that never was."""
    task_id = await insert_task(database_url, caller)
    for client, target in ((beta_api, task_id), (api, uuid.uuid4())):
        answer = await client.get(f"/v1/tasks/{target}/stream")
        assert answer.status_code == 404
        assert answer.headers["content-type"] == "application/problem+json"
    assert (
        await api.get(f"/v1/tasks/{task_id}/stream", headers={"Authorization": ""})
    ).status_code == 401


async def test_the_followers_of_one_task_share_one_read_per_notification(
    api: httpx.AsyncClient, service: Service, database_url: str, caller: Caller
) -> None:
    """Ten streams on one task: after a change all of them send it, and the task was read
    once for them all."""
    waiter = service.resources.waiter
    assert waiter is not None
    task_id = await insert_task(database_url, caller, progress=10)
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
        if task_id in map(str, values):
            reads.append(statement)

    engine = service.resources.engine.sync_engine
    event.listen(engine, "before_cursor_execute", count)
    try:
        async with contextlib.AsyncExitStack() as streams:
            lives = [await streams.enter_async_context(stream(api, task_id)) for _ in range(10)]
            for live in lives:
                assert await live.event() is not None
            await until(lambda: waiter.waiting(uuid.UUID(task_id)) == 10)
            before = await quiet(reads)
            await change(database_url, task_id, progress=20)
            for live in lives:
                changed = await live.event()
                assert changed is not None
                assert changed.json()["progress"] == 20
            assert len(reads) - before == 1
    finally:
        event.remove(engine, "before_cursor_execute", count)


@pytest.fixture
async def keepalive_url(
    database_url: str, simulator: RunningServer, tmp_path: object, callers: Callers
) -> AsyncIterator[str]:
    """A second API whose streams send their keep-alive every 0.2 s."""
    sock = bind()
    settings = make_settings(
        database_url,
        simulator.url,
        socket_url(sock),
        api_keys=callers.api_keys,
        storage_url=str(tmp_path),
        db_pool_size=1,
        stream_keepalive_seconds=0.2,
    )
    running = await start_server(create_app(settings), sock=sock)
    try:
        yield running.url
    finally:
        await running.stop()


async def test_an_idle_stream_sends_keep_alive_comments(
    keepalive_url: str, database_url: str, caller: Caller
) -> None:
    """With nothing changing, a comment comes every keep-alive interval (a setting)."""
    task_id = await insert_task(database_url, caller)
    headers = caller.headers
    async with (
        httpx.AsyncClient(base_url=keepalive_url, headers=headers, timeout=10) as client,
        stream(client, task_id) as live,
    ):
        assert await live.event() is not None
        comments = [await live.next(within=5) for _ in range(3)]
    assert [message.comment if message else None for message in comments] == ["keep-alive"] * 3
