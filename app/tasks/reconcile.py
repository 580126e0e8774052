"""Polling the provider for tasks whose callback is late, and giving up on silent ones.

EvoLink retries a callback for under a minute, then drops it; any outage or deploy in that
window would lose a completion. Polling is therefore the required fallback, and a poll's
answer goes through exactly the same transition code as a callback.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from app.db import transaction
from app.evolink.client import EvoLinkError
from app.models import Task
from app.resources import Resources
from app.security import callback_token
from app.tasks.lifecycle import TERMINAL, EventKind, EventOutcome, TaskStatus
from app.tasks.transitions import Verdict, apply_verdict, fail, lock_task, observe

logger = logging.getLogger("edithook.reconcile")

# Runs of the periodic reconciler per minute (it is scheduled every 5 seconds).
RUNS_PER_MINUTE = 12


@dataclass
class PollResult:
    outcome: EventOutcome
    detail: str | None = None


@dataclass
class ReconcileReport:
    polled: int = 0
    given_up: int = 0


async def poll_task(resources: Resources, task_id: uuid.UUID) -> PollResult:
    """Ask the provider about one task now and apply the answer like a callback."""
    async with resources.sessions() as session:
        provider_id = await session.scalar(select(Task.provider_task_id).where(Task.id == task_id))
    if provider_id is None:
        return PollResult(EventOutcome.REJECTED, "the task has no provider id yet")
    try:
        # The provider may quote the task's callback URL in an error: hide its token.
        secret = resources.settings.callback_secret.get_secret_value()
        observed = await resources.evolink.get_task(
            provider_id, hide=callback_token(secret, task_id)
        )
    except EvoLinkError as exc:
        async with transaction(resources.sessions) as session:
            task = await _mark_polled(session, task_id)
            detail = f"poll failed ({exc})"
            verdict = Verdict(EventOutcome.ERROR, detail)
            silent_for = datetime.now(UTC) - (task.submitted_at or task.created_at)
            timeout = timedelta(seconds=resources.settings.submit_unknown_timeout_seconds)
            if (
                exc.code == "task_not_found"
                and task.status not in TERMINAL
                and silent_for > timeout
            ):
                message = "the provider no longer knows this task"
                fail(verdict, EventKind.SYSTEM, "provider_task_not_found", message)
                verdict.detail = message
            await apply_verdict(session, task, verdict, EventKind.POLL)
        return PollResult(verdict.outcome, detail)
    async with transaction(resources.sessions) as session:
        task = await _mark_polled(session, task_id)
        event = await observe(
            session, task, observed, EventKind.POLL, body=observed.model_dump_json()
        )
        return PollResult(EventOutcome(event.outcome), event.detail)


async def _mark_polled(session: AsyncSession, task_id: uuid.UUID) -> Task:
    task = await lock_task(session, task_id)
    task.polled_at = datetime.now(UTC)
    task.poll_count += 1
    return task


async def due_for_poll(session: AsyncSession, resources: Resources, limit: int) -> list[uuid.UUID]:
    """In-flight tasks past their expected time (or their last poll), most overdue first."""
    settings = resources.settings
    last_word = func.coalesce(Task.polled_at, Task.submitted_at, Task.updated_at)
    interval = func.make_interval(
        0,
        0,
        0,
        0,
        0,
        0,
        func.greatest(
            settings.poll_floor_seconds,
            func.coalesce(Task.estimated_seconds, 0) * settings.poll_factor,
        ),
    )
    rows = await session.execute(
        select(Task.id)
        .where(
            Task.status.in_([TaskStatus.PENDING.value, TaskStatus.PROCESSING.value]),
            Task.provider_task_id.is_not(None),
            last_word + interval < func.now(),
        )
        .order_by(last_word)
        .limit(limit)
    )
    return list(rows.scalars())


async def give_up_on_silent_submissions(resources: Resources) -> int:
    """Fail tasks whose create had an unknown outcome and that no word has settled since."""
    cutoff = datetime.now(UTC) - timedelta(
        seconds=resources.settings.submit_unknown_timeout_seconds
    )
    given_up = 0
    async with transaction(resources.sessions) as session:
        tasks = (
            await session.execute(
                select(Task)
                .where(
                    Task.status == TaskStatus.SUBMITTING.value,
                    Task.provider_task_id.is_(None),
                    Task.updated_at < cutoff,
                )
                .limit(100)
                .with_for_update(skip_locked=True)
            )
        ).scalars()
        for task in tasks:
            minutes = resources.settings.submit_unknown_timeout_seconds / 60
            message = (
                "the provider never confirmed the submission and sent no word "
                f"for {minutes:g} minutes"
            )
            verdict = fail(
                Verdict(EventOutcome.APPLIED, message),
                EventKind.SYSTEM,
                "submission_outcome_unknown",
                message,
            )
            await apply_verdict(session, task, verdict, EventKind.SYSTEM)
            given_up += 1
    return given_up


async def reconcile(resources: Resources) -> ReconcileReport:
    """One reconciler run: give up on silent submissions, then poll what is overdue."""
    report = ReconcileReport(given_up=await give_up_on_silent_submissions(resources))
    limit = max(1, resources.settings.polls_per_minute // RUNS_PER_MINUTE)
    async with resources.sessions() as session:
        due = await due_for_poll(session, resources, limit)
    for task_id in due:
        result = await poll_task(resources, task_id)
        report.polled += 1
        logger.info("polled task %s: %s", task_id, result.outcome.value)
    return report


async def callback_loss(session: AsyncSession, since: datetime) -> dict[str, int]:
    """How tasks finished since `since`, by what told us: callback, poll, submission, system."""
    rows = await session.execute(
        text(
            "SELECT coalesce(resolved_by, 'unknown'), count(*) FROM tasks"
            " WHERE finished_at IS NOT NULL AND finished_at >= :since GROUP BY 1"
        ),
        {"since": since},
    )
    return {str(by): int(count) for by, count in rows.all()}
