"""The REST API internal services call: create, read and list edit tasks."""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from typing import Annotated, Any

import structlog
from fastapi import APIRouter, Header, Query, Response
from pydantic import BeforeValidator

from app.db import transaction
from app.deps import CallerDep, ResourcesDep, SessionDep
from app.errors import Conflict, NotFound
from app.models import TaskEvent, TaskResult
from app.resources import Resources
from app.tasks import service
from app.tasks.reconcile import poll_task
from app.tasks.schemas import (
    EventPage,
    EventRead,
    ResultList,
    ResultRead,
    TaskCreate,
    TaskError,
    TaskLinks,
    TaskPage,
    TaskRead,
)
from app.vocabulary import EventOutcome, ResultStatus, TaskStatus
from app.waiting import parse_prefer_wait

router = APIRouter(prefix="/v1/tasks", tags=["tasks"])

MAX_WAIT_SECONDS = 60.0
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

PROBLEM: dict[str, Any] = {"content": {"application/problem+json": {}}}
NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"description": "No such task for this client.", **PROBLEM}
}


def parse_task_id(task_id: str) -> uuid.UUID:
    try:
        return uuid.UUID(task_id)
    except ValueError:
        raise NotFound("No such task.") from None


def to_read(view: service.TaskView) -> TaskRead:
    task = view.task
    base = f"/v1/tasks/{task.id}"
    error = None
    if task.error_code or task.error_message:
        error = TaskError(code=task.error_code, message=task.error_message)
    return TaskRead(
        id=task.id,
        status=task.status,
        progress=task.progress,
        request=task.request,
        metadata=task.metadata_,
        provider_task_id=task.provider_task_id,
        estimated_seconds=task.estimated_seconds,
        usage=task.usage,
        error=error,
        resolved_by=task.resolved_by,
        result_count=view.result_count,
        results_stored=view.result_count > 0 and view.stored_count == view.result_count,
        created_at=task.created_at,
        updated_at=task.updated_at,
        submitted_at=task.submitted_at,
        finished_at=task.finished_at,
        links=TaskLinks(self=base, results=f"{base}/results", events=f"{base}/events"),
    )


@router.post(
    "",
    status_code=202,
    summary="Create an edit task",
    description=(
        "Stores the task with its submission job and answers 202 with its state; a worker "
        "submits it to EvoLink. With an `Idempotency-Key`, a repeat of the same body returns the "
        "same task (`Idempotent-Replayed: true`) and submits nothing; the same key with another "
        "body is 409."
    ),
    responses={
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
        view = await wait_until_settled(resources, caller, task.id, wait, response)
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
)
async def get_task(
    task_id: str,
    caller: CallerDep,
    resources: ResourcesDep,
    response: Response,
    prefer: PreferHeader = None,
) -> TaskRead:
    parsed = parse_task_id(task_id)
    async with resources.sessions() as session:
        view = await service.get_task(session, caller, parsed)
    wait = parse_prefer_wait(prefer, maximum=MAX_WAIT_SECONDS)
    if wait and view.settled:
        # Nothing to wait for, and the preference was still honoured: say so.
        response.headers["Preference-Applied"] = f"wait={wait:g}"
        response.headers["Edithook-Wait"] = "settled"
    elif wait:
        view = await wait_until_settled(resources, caller, parsed, wait, response)
    return to_read(view)


async def wait_until_settled(
    resources: Resources, caller: str, task_id: uuid.UUID, seconds: float, response: Response
) -> service.TaskView:
    """Hold until the task is settled or `seconds` pass; woken by NOTIFY, not by polling.

    No session is held while waiting: each check takes a connection for one query, which
    every request of this caller waiting on the task shares.
    """
    latest: list[service.TaskView] = []
    waiter = resources.waiter
    assert waiter is not None, "the API opens its resources with a waiter"

    async def read() -> service.TaskView:
        async with resources.sessions() as session:
            return await service.get_task(session, caller, task_id)

    async def settled() -> bool:
        latest[:] = [await waiter.read_once(task_id, caller, read)]
        return latest[0].settled

    done = await waiter.wait_until(task_id, settled, seconds)
    response.headers["Preference-Applied"] = f"wait={seconds:g}"
    response.headers["Edithook-Wait"] = "settled" if done else "timed-out"
    if not latest:  # the waiter always checks once; this only guards the type
        await settled()
    return latest[-1]


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
    async with resources.sessions() as session:
        await service.get_task(session, caller, parsed)
    result = await poll_task(resources, parsed)
    if result.outcome == EventOutcome.REJECTED:
        raise Conflict("The task has not been accepted by EvoLink yet; nothing to poll.")
    async with resources.sessions() as session:
        return to_read(await service.get_task(session, caller, parsed))


def _result_read(result: TaskResult) -> ResultRead:
    return ResultRead(
        index=result.index,
        status=result.status,
        source_url=result.provider_url,
        content_type=result.content_type,
        size_bytes=result.size_bytes,
        sha256=result.sha256,
        width=result.width,
        height=result.height,
        error=result.error,
        stored_at=result.stored_at,
    )


@router.get("/{task_id}/results", summary="List a task's result images", responses=NOT_FOUND)
async def list_results(task_id: str, caller: CallerDep, session: SessionDep) -> ResultList:
    parsed = parse_task_id(task_id)
    results = await service.list_results(session, caller, parsed)
    return ResultList(
        task_id=parsed,
        all_stored=bool(results) and all(r.status == ResultStatus.STORED for r in results),
        items=[_result_read(result) for result in results],
    )


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
