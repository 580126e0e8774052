"""Creating, finding and listing a client's tasks, and the one rule of who owns a task.

Functions take the session first and never commit or begin: the request owns the
transaction (`app.deps.SessionDep`, or one of the named flows in `app.tasks.routes`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, func, select, tuple_
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.errors import BadRequest, Conflict, NotFound
from app.jobs import SUBMIT_TASK, enqueue
from app.models import Task, TaskEvent, TaskResult
from app.tasks.schemas import TaskCreate
from app.uploads.service import require_usable
from app.vocabulary import TERMINAL, EventKind, EventOutcome, ResultStatus, TaskStatus

_result_count = (
    select(func.count()).where(TaskResult.task_id == Task.id).correlate(Task).scalar_subquery()
)


def _count_in(status: ResultStatus) -> Any:
    return (
        select(func.count())
        .where(TaskResult.task_id == Task.id, TaskResult.status == status.value)
        .correlate(Task)
        .scalar_subquery()
    )


_stored_count = _count_in(ResultStatus.STORED)
_pending_count = _count_in(ResultStatus.PENDING)


@dataclass
class TaskView:
    """A task with the counts of its results, as the API shows it.

    It reads as `TaskRead` expects (`TaskRead.model_validate(view, from_attributes=True)`):
    the task's own columns through it, and the few fields the API words differently.
    """

    task: Task
    result_count: int
    stored_count: int
    pending_count: int

    def __getattr__(self, name: str) -> Any:
        # Only called for names the view lacks: the task's columns.
        if name == "task":
            raise AttributeError(name)
        return getattr(self.task, name)

    @property
    def settled(self) -> bool:
        """Terminal, and no result still waiting to be copied: nothing more will change."""
        return self.task.status in TERMINAL and self.pending_count == 0

    @property
    def metadata(self) -> dict[str, Any]:
        return self.task.metadata_

    @property
    def error(self) -> dict[str, str | None] | None:
        if self.task.error_code or self.task.error_message:
            return {"code": self.task.error_code, "message": self.task.error_message}
        return None

    @property
    def results_stored(self) -> bool:
        return self.result_count > 0 and self.stored_count == self.result_count

    @property
    def links(self) -> dict[str, str]:
        base = f"/v1/tasks/{self.task.id}"
        return {"self": base, "results": f"{base}/results", "events": f"{base}/events"}


def owned(client: str, task_id: uuid.UUID) -> ColumnElement[bool]:
    """The one rule of ownership: task `task_id` is `client`'s. Another client's task is as
    absent as one that never existed."""
    return and_(Task.id == task_id, Task.client == client)


async def require_owned(session: AsyncSession, client: str, task_id: uuid.UUID) -> None:
    """Raise NotFound unless `client` owns task `task_id`: every route about one task's parts
    (results, events, a refresh) asks this first."""
    if await session.scalar(select(Task.id).where(owned(client, task_id))) is None:
        raise NotFound("No such task.")


def _with_counts() -> Select[Task, int, int, int]:
    return select(Task, _result_count, _stored_count, _pending_count)


def request_hash(body: TaskCreate) -> str:
    """A digest of everything the client asked for, to tell a replay from a different request."""
    # Without `image_ids` when there are none, so a body's digest is what it was before them.
    fields = body.model_dump(mode="json", exclude=None if body.image_ids else {"image_ids"})
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


async def create_task(
    session: AsyncSession, client: str, body: TaskCreate, idempotency_key: str | None
) -> tuple[Task, bool]:
    """Store a new queued task, or find the one an earlier request with the same key made.

    Returns the task and whether it is new. The same key with a different body is a Conflict.
    """
    digest = request_hash(body)
    values = {
        "id": uuid.uuid4(),
        "client": client,
        "status": TaskStatus.QUEUED.value,
        "progress": 0,
        "request": body.provider_request(),
        "metadata_": body.metadata,
        "idempotency_key": idempotency_key,
        "request_hash": digest,
        "webhook_url": body.webhook_url,
        "cancel_at": (
            None
            if body.cancel_after_seconds is None
            else func.now() + timedelta(seconds=body.cancel_after_seconds)
        ),
    }
    statement = insert(Task).values(values)
    if idempotency_key is not None:
        # Two concurrent requests with one key: the unique index lets exactly one insert.
        statement = statement.on_conflict_do_nothing(
            index_elements=["client", "idempotency_key"],
            index_where=Task.idempotency_key.is_not(None),
        )
    task = (await session.execute(statement.returning(Task))).scalar_one_or_none()
    if task is not None:
        # Unknown, another client's or expired uploads: 422, and the insert rolls back.
        await require_usable(session, client, body.image_ids)
        # The submission job commits with the task: no stored task is left without one.
        await enqueue(session, SUBMIT_TASK, {"task_id": str(task.id)})
        session.add(
            TaskEvent(
                task_id=task.id,
                kind=EventKind.CREATED.value,
                outcome=EventOutcome.APPLIED.value,
                to_status=TaskStatus.QUEUED.value,
            )
        )
        return task, True
    existing = (
        await session.execute(
            select(Task).where(Task.client == client, Task.idempotency_key == idempotency_key)
        )
    ).scalar_one()
    if existing.request_hash != digest:
        raise Conflict(
            "This Idempotency-Key was already used with a different request body.",
            task_id=str(existing.id),
        )
    return existing, False


async def get_task(session: AsyncSession, client: str, task_id: uuid.UUID) -> TaskView:
    """The client's task; another client's task is as absent as one that never existed."""
    row = (await session.execute(_with_counts().where(owned(client, task_id)))).one_or_none()
    if row is None:
        raise NotFound("No such task.")
    return TaskView(row[0], row[1], row[2], row[3])


async def list_tasks(
    session: AsyncSession,
    client: str,
    *,
    limit: int,
    cursor: str | None = None,
    statuses: list[TaskStatus] | None = None,
    created_after: datetime | None = None,
    created_before: datetime | None = None,
) -> tuple[list[TaskView], str | None]:
    """One page of the client's tasks, newest first, by keyset on (created_at, id)."""
    query = _with_counts().where(Task.client == client)
    if statuses:
        query = query.where(Task.status.in_([s.value for s in statuses]))
    if created_after is not None:
        query = query.where(Task.created_at > created_after)
    if created_before is not None:
        query = query.where(Task.created_at < created_before)
    if cursor is not None:
        after_created, after_id = decode_task_cursor(cursor)
        query = query.where(tuple_(Task.created_at, Task.id) < tuple_(after_created, after_id))
    query = query.order_by(Task.created_at.desc(), Task.id.desc()).limit(limit + 1)
    rows = (await session.execute(query)).all()
    views = [TaskView(row[0], row[1], row[2], row[3]) for row in rows[:limit]]
    next_cursor = None
    if len(rows) > limit:
        last = views[-1].task
        next_cursor = _encode({"c": last.created_at.isoformat(), "i": str(last.id)})
    return views, next_cursor


async def list_events(
    session: AsyncSession, client: str, task_id: uuid.UUID, *, limit: int, cursor: str | None
) -> tuple[list[TaskEvent], str | None]:
    """The task's events, oldest first."""
    await require_owned(session, client, task_id)
    query = select(TaskEvent).where(TaskEvent.task_id == task_id)
    if cursor is not None:
        query = query.where(TaskEvent.id > _decode_event_cursor(cursor))
    rows = list((await session.execute(query.order_by(TaskEvent.id).limit(limit + 1))).scalars())
    next_cursor = _encode({"e": rows[limit - 1].id}) if len(rows) > limit else None
    return rows[:limit], next_cursor


def _encode(payload: dict[str, Any]) -> str:
    raw = json.dumps(payload, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _decode(cursor: str) -> dict[str, Any]:
    try:
        payload = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (binascii.Error, ValueError, UnicodeDecodeError) as exc:
        raise BadRequest("The cursor is not one this API issued.") from exc
    if not isinstance(payload, dict):
        raise BadRequest("The cursor is not one this API issued.")
    return payload


def decode_task_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    payload = _decode(cursor)
    try:
        return datetime.fromisoformat(payload["c"]), uuid.UUID(payload["i"])
    except (KeyError, TypeError, ValueError) as exc:
        raise BadRequest("The cursor is not one this API issued.") from exc


def _decode_event_cursor(cursor: str) -> int:
    value = _decode(cursor).get("e")
    if not isinstance(value, int):
        raise BadRequest("The cursor is not one this API issued.")
    return value
