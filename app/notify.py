"""Telling waiting requests that a task changed: Postgres NOTIFY, sent at commit."""

from __future__ import annotations

import uuid

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

TASK_CHANNEL = "edithook_tasks"


async def notify_task_changed(session: AsyncSession, task_id: uuid.UUID) -> None:
    """Queue a notification for `task_id`; Postgres delivers it only if the transaction commits."""
    await session.execute(
        text("SELECT pg_notify(:channel, :task_id)"),
        {"channel": TASK_CHANNEL, "task_id": str(task_id)},
    )
