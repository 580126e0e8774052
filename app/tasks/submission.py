"""Sending a stored task to the provider, at most once."""

from __future__ import annotations

import asyncio
import logging
import uuid
from datetime import UTC, datetime

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.db import transaction
from app.evolink.client import EvoLinkClient, EvoLinkError
from app.evolink.schemas import CreateRequest
from app.models import Task
from app.security import callback_path, callback_token
from app.settings import Settings
from app.tasks.lifecycle import EventKind, EventOutcome, TaskStatus
from app.tasks.transitions import Verdict, apply_verdict, observe

logger = logging.getLogger("edithook.submission")

BACKOFF_SECONDS = (0.5, 1.0, 2.0, 4.0)


def callback_url(settings: Settings, task_id: uuid.UUID) -> str:
    token = callback_token(settings.callback_secret.get_secret_value(), task_id)
    return settings.public_base_url + callback_path(task_id, token)


async def claim(session: AsyncSession, task_id: uuid.UUID) -> Task | None:
    """Move a queued task to `submitting`; None if it is not queued (someone else has it).

    The conditional update is what makes submission at-most-once across every replica.
    """
    result = await session.execute(
        update(Task)
        .where(Task.id == task_id, Task.status == TaskStatus.QUEUED.value)
        .values(status=TaskStatus.SUBMITTING.value, updated_at=datetime.now(UTC))
        .returning(Task)
    )
    return result.scalar_one_or_none()


async def submit_task(
    sessions: async_sessionmaker[AsyncSession],
    evolink: EvoLinkClient,
    settings: Settings,
    task_id: uuid.UUID,
) -> None:
    """Submit a queued task and record what came of it.

    Failures where the provider certainly created nothing (refused connections, 429, 5xx) are
    retried with backoff, honouring Retry-After, within `submit_max_wait_seconds`. When the
    outcome is unknown (the request went out and no answer came back) the task stays
    `submitting` with the reason recorded: its callback, which names our task, or a poll
    settles it; it is never sent again.
    """
    async with transaction(sessions) as session:
        task = await claim(session, task_id)
        if task is None:
            return
        request = CreateRequest.model_validate(
            {**task.request, "callback_url": callback_url(settings, task_id)}
        )

    waited = 0.0
    for attempt in range(settings.submit_attempts):
        try:
            created = await evolink.create_task(request)
        except EvoLinkError as exc:
            delay = (
                exc.retry_after
                if exc.retry_after is not None
                else BACKOFF_SECONDS[min(attempt, len(BACKOFF_SECONDS) - 1)]
            )
            last_attempt = attempt + 1 >= settings.submit_attempts
            fits = waited + delay <= settings.submit_max_wait_seconds
            if exc.outcome == "retryable" and not last_attempt and fits:
                await _record_failure(sessions, task_id, exc, final=False)
                await asyncio.sleep(delay)
                waited += delay
                continue
            await _record_failure(sessions, task_id, exc, final=exc.outcome != "ambiguous")
            return
        async with transaction(sessions) as session:
            task = await _locked(session, task_id)
            if task.submitted_at is None:
                task.submitted_at = datetime.now(UTC)
            await observe(
                session, task, created, EventKind.SUBMISSION, body=created.model_dump_json()
            )
        return


async def _locked(session: AsyncSession, task_id: uuid.UUID) -> Task:
    return (
        await session.execute(select(Task).where(Task.id == task_id).with_for_update())
    ).scalar_one()


async def _record_failure(
    sessions: async_sessionmaker[AsyncSession],
    task_id: uuid.UUID,
    exc: EvoLinkError,
    *,
    final: bool,
) -> None:
    """Record a failed create; `final` fails the task with the provider's reason."""
    status = f"HTTP {exc.status_code}" if exc.status_code else "no response"
    detail = f"{exc.outcome}: {status}, {exc.code or 'no code'}: {exc.message}"
    logger.warning("submission of task %s failed (%s)", task_id, detail)
    async with transaction(sessions) as session:
        task = await _locked(session, task_id)
        verdict = Verdict(EventOutcome.ERROR, detail)
        if final and task.status == TaskStatus.SUBMITTING:
            verdict.to_status = TaskStatus.FAILED
            verdict.changes = {
                "status": TaskStatus.FAILED.value,
                "error_code": exc.code or f"provider_http_{exc.status_code or 'unreachable'}",
                "error_message": exc.message,
                "resolved_by": EventKind.SUBMISSION.value,
                "finished_at": datetime.now(UTC),
            }
        await apply_verdict(session, task, verdict, EventKind.SUBMISSION)
