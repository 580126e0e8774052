"""Cancelling a task before it is submitted: a client's cancel, and `cancel_after_seconds`.

EvoLink cannot cancel a task it has, so only a task not yet submitted (`queued`) is
cancelled: a client's cancel (`client_cancel`, resolved by `client`), or edithook's when the
task is still not submitted at its `cancel_at` (`cancel_after_elapsed`, resolved by
`system`). Both go through the one writer (`app.tasks.writer.settle`), whose statement is
guarded on `queued`; the submit job's claim (`app.tasks.submission.CLAIM`) is guarded on the
same row being `queued` and not yet due, so a task is either claimed for submission or
cancelled, never both. The move into `cancelled` makes its `task.cancelled` webhook
messages in the same statement.

Releasing what a task holds (a budget reservation, once there are budgets) belongs with the
move into `cancelled` before any charge: in the writer's statement, next to the webhook
messages, so that it commits with the cancel or not at all.
"""

from __future__ import annotations

import logging
import uuid

from psycopg_pool import AsyncConnectionPool
from sqlalchemy import literal_column, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.db import transaction
from app.models import Task
from app.tasks import writer
from app.tasks.transitions import cancel_after_elapsed, client_cancel
from app.tasks.writer import Event, Written
from app.vocabulary import EventKind, TaskStatus

logger = logging.getLogger("edithook.cancel")

# How many overdue tasks one run of the reconciler cancels; the rest wait for the next run.
OVERDUE_BATCH = 500


async def cancel_for_client(
    pool: AsyncConnectionPool | None,
    sessions: async_sessionmaker[AsyncSession],
    task_id: uuid.UUID,
) -> Written:
    """The client's cancel of its task (ownership already checked): a queued task becomes
    `cancelled`; any other is left as it is, and nothing is recorded."""
    when = writer.now()
    return await writer.settle_anywhere(
        pool, sessions, task_id, lambda state: client_cancel(state, when), Event(EventKind.CLIENT)
    )


async def cancel_if_overdue(
    pool: AsyncConnectionPool | None,
    sessions: async_sessionmaker[AsyncSession],
    task_id: uuid.UUID,
) -> Written:
    """Cancel the task if it is still queued at or after its `cancel_at`; else nothing."""
    when = writer.now()
    return await writer.settle_anywhere(
        pool,
        sessions,
        task_id,
        lambda state: cancel_after_elapsed(state, when),
        Event(EventKind.SYSTEM),
    )


async def cancel_overdue(
    pool: AsyncConnectionPool | None, sessions: async_sessionmaker[AsyncSession]
) -> int:
    """Cancel the queued tasks whose `cancel_at` has passed (a batch); how many it did."""
    async with transaction(sessions) as session:
        found = list(
            (
                await session.execute(
                    select(Task.id)
                    .where(
                        # A literal, so that the partial index ix_tasks_cancel_at serves it.
                        Task.status == literal_column(f"'{TaskStatus.QUEUED.value}'"),
                        Task.cancel_at.is_not(None),
                        Task.cancel_at <= writer.now(),
                    )
                    .order_by(Task.cancel_at)
                    .limit(OVERDUE_BATCH)
                )
            ).scalars()
        )
    cancelled = 0
    for task_id in found:
        written = await cancel_if_overdue(pool, sessions, task_id)
        cancelled += written.outcome is not None
    if cancelled:
        logger.info("cancelled %d tasks not submitted by their cancel_at", cancelled)
    return cancelled
