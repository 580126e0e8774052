"""Tasks, the events that moved them, and their result images."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any, TypeVar

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    Integer,
    SmallInteger,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from app.db import Base
from app.vocabulary import (
    IN_FLIGHT,
    MAX_RESULTS,
    EventKind,
    EventOutcome,
    ResolvedBy,
    ResultStatus,
    TaskStatus,
    sql_list,
)

E = TypeVar("E", bound=StrEnum)


class Word(TypeDecorator[E]):
    """A text column holding one of an enum's values: read as the enum, written from it (or
    from its value as a string); any other string is refused before it reaches the database."""

    impl = Text
    cache_ok = True

    def __init__(self, enum: type[E]) -> None:
        super().__init__()
        self.enum = enum

    def process_bind_param(self, value: E | str | None, dialect: Dialect) -> str | None:
        return None if value is None else self.enum(value).value

    def process_result_value(self, value: str | None, dialect: Dialect) -> E | None:
        return None if value is None else self.enum(value)


def _one_of(column: str, values: type[StrEnum]) -> str:
    return f"{column} IN ({sql_list(values)})"


class Task(Base):
    """One edit a client asked for, from its request to its terminal state."""

    __tablename__ = "tasks"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    client: Mapped[str] = mapped_column(Text)
    status: Mapped[TaskStatus] = mapped_column(Word(TaskStatus), default=TaskStatus.QUEUED)
    progress: Mapped[int] = mapped_column(SmallInteger, default=0)
    # The edit as the client asked for it, in the provider's field names, without callback_url.
    request: Mapped[dict[str, Any]] = mapped_column(JSONB)
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", JSONB, default=dict)
    idempotency_key: Mapped[str | None] = mapped_column(Text)
    request_hash: Mapped[str] = mapped_column(Text)
    provider_task_id: Mapped[str | None] = mapped_column(Text, unique=True)
    estimated_seconds: Mapped[float | None]
    usage: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    error_code: Mapped[str | None] = mapped_column(Text)
    error_message: Mapped[str | None] = mapped_column(Text)
    # How the task reached its terminal state: by a callback, a poll, or our own decision.
    resolved_by: Mapped[ResolvedBy | None] = mapped_column(Word(ResolvedBy))
    polled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    poll_count: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.clock_timestamp()
    )
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.clock_timestamp()
    )
    submitted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Where this task's events are sent (besides the client's endpoints); None: nowhere.
    webhook_url: Mapped[str | None] = mapped_column(Text)
    # When a task still not submitted is cancelled (`cancel_after_seconds`); None: never.
    cancel_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # What the task costs, in images: `n`, reserved when it was created, and what the
    # provider charged, set once by the move into a terminal status (completed: the images it
    # listed; failed, cancelled: none). The default is the provider's default `n`.
    images_reserved: Mapped[int] = mapped_column(SmallInteger, server_default="1")
    images_charged: Mapped[int | None] = mapped_column(SmallInteger)
    # The budget period row (`client_spend`) its reservation was made in; None: the client
    # had no budget when the task was created.
    spend_id: Mapped[int | None] = mapped_column(
        BigInteger, ForeignKey("client_spend.id", ondelete="SET NULL")
    )
    # Since when a queued task waits, without a job, for a slot of its client's
    # `max_in_flight` (app.tasks.dispatch); None: it has a job, or is past queued.
    parked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # When the task was last claimed for sending (moved to `submitting`); None: never.
    claimed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        CheckConstraint(_one_of("status", TaskStatus), name="status"),
        CheckConstraint("progress BETWEEN 0 AND 100", name="progress"),
        CheckConstraint(f"images_reserved BETWEEN 0 AND {MAX_RESULTS}", name="images_reserved"),
        CheckConstraint(
            f"images_charged IS NULL OR images_charged BETWEEN 0 AND {MAX_RESULTS}",
            name="images_charged",
        ),
        CheckConstraint(
            f"resolved_by IS NULL OR {_one_of('resolved_by', ResolvedBy)}", name="resolved_by"
        ),
        # Newest-first listing per client, optionally narrowed to one status.
        Index("ix_tasks_client_created", "client", text("created_at DESC"), text("id DESC")),
        Index(
            "ix_tasks_client_status_created",
            "client",
            "status",
            text("created_at DESC"),
            text("id DESC"),
        ),
        Index(
            "ix_tasks_in_flight",
            "status",
            "updated_at",
            postgresql_where=text(f"status IN ({sql_list(IN_FLIGHT)})"),
        ),
        # The reconciler's look for queued tasks past their `cancel_at`.
        Index(
            "ix_tasks_cancel_at",
            "cancel_at",
            postgresql_where=text(
                f"status = '{TaskStatus.QUEUED.value}' AND cancel_at IS NOT NULL"
            ),
        ),
        # The oldest parked tasks of a client, for the dispatcher (app.tasks.dispatch).
        Index(
            "ix_tasks_parked",
            "client",
            "created_at",
            "id",
            postgresql_where=text(
                f"status = '{TaskStatus.QUEUED.value}' AND parked_at IS NOT NULL"
            ),
        ),
        # Queued tasks whose job has yet to make their first claim: a limited client's
        # newer task waits behind them, so that its tasks are sent oldest first.
        Index(
            "ix_tasks_unclaimed",
            "client",
            "created_at",
            "id",
            postgresql_where=text(
                f"status = '{TaskStatus.QUEUED.value}' AND claimed_at IS NULL AND parked_at IS NULL"
            ),
        ),
        Index(
            "ix_tasks_finished_at",
            "finished_at",
            postgresql_where=text("finished_at IS NOT NULL"),
        ),
        Index(
            "uq_tasks_client_idempotency_key",
            "client",
            "idempotency_key",
            unique=True,
            postgresql_where=text("idempotency_key IS NOT NULL"),
        ),
    )


class TaskEvent(Base):
    """Something that happened to a task: a callback, a poll, a submission, its creation.

    An event that moved the task records the move in `from_status`/`to_status`, written in
    the same transaction as the move itself.
    """

    __tablename__ = "task_events"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    task_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"))
    kind: Mapped[EventKind] = mapped_column(Word(EventKind))
    outcome: Mapped[EventOutcome] = mapped_column(Word(EventOutcome))
    from_status: Mapped[TaskStatus | None] = mapped_column(Word(TaskStatus))
    to_status: Mapped[TaskStatus | None] = mapped_column(Word(TaskStatus))
    provider_status: Mapped[str | None] = mapped_column(Text)
    detail: Mapped[str | None] = mapped_column(Text)
    # The raw callback or response body and chosen request headers; pruned after retention.
    body: Mapped[str | None] = mapped_column(Text)
    headers: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.clock_timestamp()
    )

    __table_args__ = (
        CheckConstraint(_one_of("kind", EventKind), name="kind"),
        CheckConstraint(_one_of("outcome", EventOutcome), name="outcome"),
        Index("ix_task_events_task_id_id", "task_id", "id"),
        # Retention prunes raw bodies by age.
        Index("ix_task_events_retained", "created_at", postgresql_where=text("body IS NOT NULL")),
    )


class TaskResult(Base):
    """One result image of a completed task, and where our copy of it stands."""

    __tablename__ = "task_results"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    task_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"))
    index: Mapped[int] = mapped_column(Integer)
    provider_url: Mapped[str] = mapped_column(Text)
    status: Mapped[ResultStatus] = mapped_column(Word(ResultStatus), default=ResultStatus.PENDING)
    content_type: Mapped[str | None] = mapped_column(Text)
    size_bytes: Mapped[int | None] = mapped_column(BigInteger)
    sha256: Mapped[str | None] = mapped_column(Text)
    width: Mapped[int | None] = mapped_column(Integer)
    height: Mapped[int | None] = mapped_column(Integer)
    storage_key: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.clock_timestamp()
    )
    stored_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        CheckConstraint(_one_of("status", ResultStatus), name="status"),
        UniqueConstraint("task_id", "index"),
        Index(
            "ix_task_results_pending",
            "task_id",
            postgresql_where=text(f"status = '{ResultStatus.PENDING.value}'"),
        ),
    )
