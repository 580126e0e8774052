"""The results routes' queries: a task's result rows, for its owner only.

Each takes the request's session and never commits; the copy job's body, which writes
these rows, is `app.results.copy`.
"""

from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.errors import NotFound
from app.models import TaskResult
from app.tasks.service import require_owned


async def list_results(session: AsyncSession, client: str, task_id: uuid.UUID) -> list[TaskResult]:
    """The client's task's results, by index; NotFound for another client's task."""
    await require_owned(session, client, task_id)
    rows = await session.execute(
        select(TaskResult).where(TaskResult.task_id == task_id).order_by(TaskResult.index)
    )
    return list(rows.scalars())


async def find_result(
    session: AsyncSession, client: str, task_id: uuid.UUID, index: int
) -> TaskResult:
    """Result `index` of the client's task; NotFound for another client's task or no such row."""
    await require_owned(session, client, task_id)
    result = await session.scalar(
        select(TaskResult).where(TaskResult.task_id == task_id, TaskResult.index == index)
    )
    if result is None:
        raise NotFound(f"The task has no result {index}.")
    return result


async def find_linked_result(
    session: AsyncSession, task_id: uuid.UUID, index: int
) -> TaskResult | None:
    """Result `index` of task `task_id`, whoever owns it: for a signed link, its own proof."""
    result: TaskResult | None = await session.scalar(
        select(TaskResult).where(TaskResult.task_id == task_id, TaskResult.index == index)
    )
    return result
