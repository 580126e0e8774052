"""Following a task as it changes: `Prefer: wait` and the event stream, on shared reads.

Both hold no session while they wait: the API's one LISTEN connection (`app.waiting`) wakes
them when the task's NOTIFY arrives, and every request of the same client following the task
in this process then shares one read of it and one rendering of its JSON (`SharedRead`): a
thousand followers cost one query and one rendering per change, not a thousand of each.

The stream (`GET /v1/tasks/{id}/stream`) sends one `task` event per change and ends once
the task is settled. Each event's id is the task's version (`version`): the time of its
latest change and how many of its results are no longer pending, both of which grow.
A client that resumes with `Last-Event-ID` gets the current state if its version differs
from that id, and nothing until the next change if it is the same (docs/decisions.md).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import anyio
from fastapi import Response
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sse_starlette import ServerSentEvent

from app.db import transaction
from app.errors import NotFound
from app.tasks import service
from app.tasks.schemas import TaskRead
from app.waiting import TaskWaiter

# The stream waits this long for a change before it checks again (one shared read).
STREAM_RECHECK_SECONDS = 300.0
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def to_read(view: service.TaskView) -> TaskRead:
    return TaskRead.model_validate(view, from_attributes=True)


def version(view: service.TaskView) -> str:
    """`<updated_at in µs since 1970>.<results no longer pending>`: changes with every change
    a client can see (every write of the task stamps `updated_at`; a result only ever moves
    from pending to stored or failed), and grows as the task moves on. Resuming compares it
    for equality, not order: two writes may be stamped out of order (docs/decisions.md)."""
    stamp = (view.task.updated_at - _EPOCH) // _MICROSECOND
    return f"{stamp}.{view.result_count - view.pending_count}"


class WaitAnswer(Response):
    """A waiter's answer from a body and header lines already encoded: Starlette's own
    constructor would encode and check them again for each of a thousand waiters."""

    def __init__(self, body: bytes, raw_headers: list[tuple[bytes, bytes]]) -> None:
        self.status_code = 200
        self.background = None
        self.body = body
        self.raw_headers = raw_headers


@dataclass(frozen=True)
class SharedRead:
    """One read of a followed task and its answer, rendered once: every request of the same
    caller following the task in this process gets this one object after a notification."""

    view: service.TaskView
    body: bytes
    version: str
    # (Preference-Applied, Edithook-Wait) → the answer's header lines, encoded once.
    _lines: dict[tuple[str, str], tuple[tuple[bytes, bytes], ...]] = field(
        default_factory=dict, compare=False, repr=False
    )

    def answer(self, headers: dict[str, str]) -> WaitAnswer:
        """The JSON answer with `headers` (those of `wait_headers`)."""
        key = (headers["Preference-Applied"], headers["Edithook-Wait"])
        lines = self._lines.get(key)
        if lines is None:
            lines = self._lines[key] = (
                *((name.lower().encode(), value.encode()) for name, value in headers.items()),
                (b"content-length", str(len(self.body)).encode()),
                (b"content-type", b"application/json"),
            )
        # A list of its own: the middleware adds the request's id to it.
        return WaitAnswer(self.body, list(lines))


def wait_headers(seconds: float, settled: bool) -> dict[str, str]:
    """What a `Prefer: wait` answer says: the preference honoured, and how the wait ended."""
    return {
        "Preference-Applied": f"wait={seconds:g}",
        "Edithook-Wait": "settled" if settled else "timed-out",
    }


async def read_task(
    sessions: async_sessionmaker[AsyncSession], caller: str, task_id: uuid.UUID
) -> service.TaskView:
    """The client's task, in a short transaction of its own (for the named flows)."""
    async with transaction(sessions) as session:
        return await service.get_task(session, caller, task_id)


def _shared(view: service.TaskView) -> SharedRead:
    return SharedRead(view, to_read(view).model_dump_json().encode(), version(view))


@dataclass(frozen=True)
class Watch:
    """What following a task takes: the sessions it is read with and the process's waiter."""

    sessions: async_sessionmaker[AsyncSession]
    waiter: TaskWaiter


def _reader(watch: Watch, caller: str, task_id: uuid.UUID) -> Callable[[], Awaitable[SharedRead]]:
    """This follower's read: one query and one rendering for all the caller's followers."""

    async def read() -> SharedRead:
        return _shared(await read_task(watch.sessions, caller, task_id))

    async def read_once() -> SharedRead:
        return await watch.waiter.read_once(task_id, caller, read)

    return read_once


async def read_shared(watch: Watch, caller: str, task_id: uuid.UUID) -> SharedRead:
    """The task as the caller's followers of it last read it, or a read of its own: a stream's
    first event (its first wait then checks again, registered, so no change is missed)."""
    return await _reader(watch, caller, task_id)()


async def wait_until_settled(
    watch: Watch, caller: str, task_id: uuid.UUID, seconds: float
) -> tuple[SharedRead, bool]:
    """The task once it is settled (True) or `seconds` have passed (False); woken by NOTIFY,
    not by polling. The first check is a shared read too: a thousand waiters arriving
    together cost one query, not a thousand (a task that is not the caller's raises
    `NotFound` from it)."""
    latest: list[SharedRead] = []
    read = _reader(watch, caller, task_id)

    async def settled() -> bool:
        latest[:] = [await read()]
        return latest[0].view.settled

    done = await watch.waiter.wait_until(task_id, settled, seconds)
    if not latest:  # the waiter always checks once; this only guards the type
        await settled()
    return latest[-1], done


async def task_events(
    watch: Watch,
    caller: str,
    first: SharedRead,
    last_event_id: str | None,
    stopping: anyio.Event,
) -> AsyncIterator[ServerSentEvent]:
    """The `task` events of the stream, from `first` (read before the answer started) until
    the task is settled, or until `stopping` is set (the server is shutting down: the stream
    ends cleanly and the client resumes elsewhere); a state whose version is `last_event_id`
    is not sent again."""
    read = _reader(watch, caller, first.view.task.id)
    sent = last_event_id
    latest: SharedRead | None = first
    while latest is not None:
        if latest.version != sent:
            sent = latest.version
            yield ServerSentEvent(data=latest.body.decode(), event="task", id=sent)
        if latest.view.settled:
            return
        change = asyncio.ensure_future(_next_change(watch.waiter, read, latest.view.task.id, sent))
        stop = asyncio.ensure_future(stopping.wait())
        try:
            await asyncio.wait((change, stop), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiting in (change, stop):
                waiting.cancel()
        if not change.done() or change.cancelled():
            return
        latest = change.result()


async def _next_change(
    waiter: TaskWaiter,
    read: Callable[[], Awaitable[SharedRead]],
    task_id: uuid.UUID,
    sent: str | None,
) -> SharedRead | None:
    """The task once its version is no longer `sent` (or it is settled); None if it is gone."""
    found: list[SharedRead] = []

    async def changed() -> bool:
        found[:] = [await read()]
        return found[0].version != sent or found[0].view.settled

    try:
        while not await waiter.wait_until(task_id, changed, STREAM_RECHECK_SECONDS):
            pass
    except NotFound:  # deleted: nothing more will come
        return None
    return found[0]
