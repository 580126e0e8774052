"""The REST API internal services call: create, read, list and cancel edit tasks.

Routes take the request's transaction (`SessionDep`) and pass it to the services. Five
named flows commit before they answer, because holding a transaction open would hold a
connection across a wait or a call to the provider, or because the task writer commits
each transition in a statement of its own:

- **create, then wait** (`POST /v1/tasks` with `Prefer: wait`): the task and its job are
  committed first, so the worker can take it while the request waits;
- **read, then wait** (`GET /v1/tasks/{id}` with `Prefer: wait`): no session is held while
  waiting, each check is a short read of its own, shared by the caller's other waiters;
- **read, then follow** (`GET /v1/tasks/{id}/stream`): the same, for as long as the stream
  lasts (`app.tasks.watching`);
- **refresh** (`POST /v1/tasks/{id}/refresh`): check the owner, poll the provider (the poll
  commits its own verdict, as a job does), then read the result;
- **cancel** (`POST /v1/tasks/{id}/cancel`): check the owner, write the cancel through the
  task writer (its own guarded statement, as every transition), then read the result.

Each of their steps is a short transaction of its own (`app.db.transaction`); no route
reads through a session it never began.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated

import anyio
import structlog
from fastapi import APIRouter, Header, Query, Response
from pydantic import BeforeValidator
from sse_starlette import EventSourceResponse, ServerSentEvent

from app.db import transaction
from app.deps import NOT_FOUND, PROBLEM, CallerDep, ResourcesDep, SessionDep, parse_task_id
from app.errors import Conflict
from app.models import TaskEvent
from app.resources import Resources
from app.tasks import service
from app.tasks.cancel import cancel_for_client
from app.tasks.reconcile import poll_task
from app.tasks.schemas import EventPage, EventRead, TaskCreate, TaskPage, TaskRead
from app.tasks.transitions import cancel_refusal
from app.tasks.watching import (
    Watch,
    read_shared,
    read_task,
    task_events,
    to_read,
    wait_headers,
    wait_until_settled,
)
from app.vocabulary import EventOutcome, TaskStatus
from app.waiting import parse_prefer_wait
from app.webhooks.targets import check_webhook_url

router = APIRouter(prefix="/v1/tasks", tags=["tasks"])

MAX_WAIT_SECONDS = 60.0
STREAM_SHUTDOWN_GRACE_SECONDS = 2.0
PreferHeader = Annotated[
    str | None,
    Header(
        description="`wait=N` (N ≤ 60): hold the answer until the task is settled or N s pass.",
        examples=["wait=30"],
    ),
]

_RFC3339 = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?([Zz]|[+-][0-9]{2}:[0-9]{2})"
)


def _rfc3339(value: object) -> object:
    # Pydantic would also take a number of seconds since 1970 ("0.5") or a time without an
    # offset, whose meaning depends on the server; a bound on a list must not be a guess.
    if isinstance(value, str) and _RFC3339.fullmatch(value):
        return value
    raise ValueError("must be an RFC 3339 date-time with an offset, like 2026-11-24T05:14:44Z")


Timestamp = Annotated[datetime, BeforeValidator(_rfc3339)]


def _watch(resources: Resources) -> Watch:
    assert resources.waiter is not None, "the API opens its resources with a waiter"
    return Watch(resources.sessions, resources.waiter)


@router.post(
    "",
    status_code=202,
    summary="Create an edit task",
    description=(
        "Stores the task with its submission job and answers 202 with its state; a worker "
        "submits it to EvoLink. With an `Idempotency-Key`, a repeat of the same body returns the "
        "same task (`Idempotent-Replayed: true`) and submits nothing; the same key with another "
        "body is 409. A client with a budget reserves the task's `n` in it; over it, 402."
    ),
    responses={
        402: {
            "description": (
                "The client's image budget for the period cannot hold this task's `n`; nothing "
                "was stored. The problem (`budget-exceeded`) adds `budget` (`images`, "
                "`period`), `spent`, `reserved`, `requested` and `resets_at`."
            ),
            **PROBLEM,
        },
        409: {"description": "Idempotency-Key reused with a different body.", **PROBLEM},
        422: {"description": "Every problem with the request, listed in `errors`.", **PROBLEM},
    },
)
async def create_task(
    body: TaskCreate,
    caller: CallerDep,
    resources: ResourcesDep,
    response: Response,
    idempotency_key: Annotated[
        str | None,
        Header(min_length=1, max_length=255, description="Makes retries of this request safe."),
    ] = None,
    prefer: PreferHeader = None,
) -> TaskRead:
    if body.webhook_url is not None:
        check_webhook_url(resources.settings, body.webhook_url, field="webhook_url")
    # Named flow "create, then wait": committed before any waiting (see the module's doc).
    async with transaction(resources.sessions) as session:
        task, created = await service.create_task(session, caller, body, idempotency_key)
        view = (
            service.TaskView(task, result_count=0, stored_count=0, pending_count=0)
            if created
            else await service.get_task(session, caller, task.id)
        )
    structlog.contextvars.bind_contextvars(task_id=str(task.id))
    response.headers["Location"] = f"/v1/tasks/{task.id}"
    if not created:
        response.headers["Idempotent-Replayed"] = "true"
    wait = parse_prefer_wait(prefer, maximum=MAX_WAIT_SECONDS)
    if wait:
        shared, settled = await wait_until_settled(_watch(resources), caller, task.id, wait)
        response.headers.update(wait_headers(wait, settled))
        view = shared.view
    return to_read(view)


@router.get("", summary="List tasks, newest first")
async def list_tasks(
    caller: CallerDep,
    session: SessionDep,
    status: Annotated[
        list[TaskStatus] | None, Query(description="Only these statuses; repeat to give several.")
    ] = None,
    created_after: Annotated[
        Timestamp | None, Query(description="Exclusive lower bound (RFC 3339, with an offset).")
    ] = None,
    created_before: Annotated[
        Timestamp | None, Query(description="Exclusive upper bound (RFC 3339, with an offset).")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, Query(description="`next_cursor` of the previous page.")] = None,
) -> TaskPage:
    views, next_cursor = await service.list_tasks(
        session,
        caller,
        limit=limit,
        cursor=cursor,
        statuses=status,
        created_after=created_after,
        created_before=created_before,
    )
    return TaskPage(items=[to_read(view) for view in views], next_cursor=next_cursor)


@router.get(
    "/{task_id}",
    summary="Get one task",
    description=(
        "With `Prefer: wait=N` (N ≤ 60) the answer is held until the task is settled — "
        "terminal, with every result image stored or failed — or N seconds pass; "
        "`Edithook-Wait` then says `settled` or `timed-out`."
    ),
    responses=NOT_FOUND,
    response_model=TaskRead,
)
async def get_task(
    task_id: str,
    caller: CallerDep,
    resources: ResourcesDep,
    prefer: PreferHeader = None,
) -> TaskRead | Response:
    parsed = parse_task_id(task_id)
    wait = parse_prefer_wait(prefer, maximum=MAX_WAIT_SECONDS)
    if not wait:
        return to_read(await read_task(resources.sessions, caller, parsed))
    # Named flow "read, then wait": no session is held while waiting. A task settled already
    # is answered at once, and the preference was still honoured: the headers say so.
    shared, settled = await wait_until_settled(_watch(resources), caller, parsed, wait)
    # The body every waiter of that read shares, rendered once for all of them.
    return shared.answer(wait_headers(wait, settled))


TASK_EVENT_SCHEMA = {
    "type": "object",
    "required": ["event", "data", "id"],
    "properties": {
        "event": {"const": "task"},
        "data": {
            "type": "string",
            "description": "The task, as `GET /v1/tasks/{id}` answers it.",
            "contentMediaType": "application/json",
            "contentSchema": {"$ref": "#/components/schemas/TaskRead"},
        },
        "id": {
            "type": "string",
            "pattern": "^[0-9]+\\.[0-9]+$",
            "description": "The task's version: resume after it with `Last-Event-ID`.",
        },
    },
}


@router.get(
    "/{task_id}/stream",
    summary="Follow a task as Server-Sent Events",
    description=(
        "A `task` event (the task exactly as `GET /v1/tasks/{id}` returns it) now and after "
        "every change, a keep-alive comment every "
        "`EDITHOOK_STREAM_KEEPALIVE_SECONDS` (15 s by default), and the end of the stream once "
        "the task is settled — terminal, with every result image stored or failed; a settled "
        "task's stream is its one event. Each event's `id` is the task's version: resuming "
        "with `Last-Event-ID` sends the current state only if it has changed since."
    ),
    responses={
        200: {
            "description": "The events, until the task is settled.",
            "content": {
                "text/event-stream": {
                    # Before OpenAPI 3.2 (`itemSchema`), the schema of an event stream is the
                    # schema of one event.
                    "schema": TASK_EVENT_SCHEMA,
                    "example": 'event: task\r\ndata: {"id": "…", "status": "processing", …}'
                    "\r\nid: 1796102098120931.0\r\n\r\n",
                }
            },
        },
        **NOT_FOUND,
    },
    response_class=EventSourceResponse,
)
async def stream_task(
    task_id: str,
    caller: CallerDep,
    resources: ResourcesDep,
    last_event_id: Annotated[
        str | None,
        Header(
            alias="Last-Event-ID",
            description="The `id` of the last event received: resume after it.",
        ),
    ] = None,
) -> EventSourceResponse:
    parsed = parse_task_id(task_id)
    # Named flow "read, then follow": the first read answers 404 before the stream starts;
    # no session is held while the stream waits.
    watch = _watch(resources)
    first = await read_shared(watch, caller, parsed)
    structlog.contextvars.bind_contextvars(task_id=str(parsed))
    # On shutdown the library sets `stopping` and gives the stream a moment to end cleanly
    # before it cuts it.
    stopping = anyio.Event()
    return EventSourceResponse(
        task_events(watch, caller, first, last_event_id, stopping),
        ping=resources.settings.stream_keepalive_seconds,
        ping_message_factory=_keep_alive,
        shutdown_event=stopping,
        shutdown_grace_period=STREAM_SHUTDOWN_GRACE_SECONDS,
    )


def _keep_alive() -> ServerSentEvent:
    return ServerSentEvent(comment="keep-alive")


@router.post(
    "/{task_id}/refresh",
    summary="Poll EvoLink for this task now",
    description=(
        "Asks EvoLink for the task's state and applies the answer exactly as a callback would "
        "be applied. 409 when the task has no EvoLink id yet."
    ),
    responses={**NOT_FOUND, 409: {"description": "Not submitted yet.", **PROBLEM}},
)
async def refresh_task(task_id: str, caller: CallerDep, resources: ResourcesDep) -> TaskRead:
    parsed = parse_task_id(task_id)
    # Named flow "refresh": no transaction is held across the call to the provider.
    async with transaction(resources.sessions) as session:
        await service.require_owned(session, caller, parsed)
    settings = resources.settings
    result = await poll_task(
        resources.pool,
        resources.sessions,
        resources.evolink,
        parsed,
        callback_secret=settings.callback_secret.get_secret_value(),
        unknown_timeout_seconds=settings.submit_unknown_timeout_seconds,
    )
    if result.outcome == EventOutcome.REJECTED:
        raise Conflict("The task has not been accepted by EvoLink yet; nothing to poll.")
    return to_read(await read_task(resources.sessions, caller, parsed))


@router.post(
    "/{task_id}/cancel",
    summary="Cancel a task not yet submitted",
    description=(
        "A task not yet submitted to EvoLink (`queued`) becomes `cancelled` (`resolved_by` "
        "`client`), is never submitted, costs nothing, and its `task.cancelled` webhooks are "
        "sent. A task already cancelled, by whoever, is answered the same: 200 with the task, "
        "as `GET` returns it. EvoLink cannot cancel a task it has: a task being submitted "
        "(`submitting`) or submitted, and one that has ended, is 409 and goes on unchanged."
    ),
    responses={
        **NOT_FOUND,
        409: {
            "description": "Already submitted to EvoLink (or being submitted), or ended.",
            **PROBLEM,
        },
    },
)
async def cancel_task(task_id: str, caller: CallerDep, resources: ResourcesDep) -> TaskRead:
    parsed = parse_task_id(task_id)
    # Named flow "cancel": the writer's statement commits on its own, as every transition.
    async with transaction(resources.sessions) as session:
        await service.require_owned(session, caller, parsed)
    await cancel_for_client(resources.pool, resources.sessions, parsed)
    view = await read_task(resources.sessions, caller, parsed)
    refusal = cancel_refusal(view.status)
    if refusal is not None:
        raise Conflict(refusal, task_status=view.status.value)
    return to_read(view)


def _event_read(event: TaskEvent) -> EventRead:
    return EventRead.model_validate(event, from_attributes=True)


@router.get("/{task_id}/events", summary="A task's history, oldest first", responses=NOT_FOUND)
async def list_events(
    task_id: str,
    caller: CallerDep,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    cursor: Annotated[str | None, Query()] = None,
) -> EventPage:
    events, next_cursor = await service.list_events(
        session, caller, parse_task_id(task_id), limit=limit, cursor=cursor
    )
    return EventPage(items=[_event_read(event) for event in events], next_cursor=next_cursor)
