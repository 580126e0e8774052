"""Polling the provider for tasks whose callback is late, giving up on silent ones, and
cancelling queued tasks past their `cancel_after_seconds` (`app.tasks.cancel`).

EvoLink retries a callback for under a minute, then drops it; any outage or deploy in that
window would lose a completion. Polling is therefore the required fallback, and a poll's
answer goes through exactly the same transition code as a callback.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from psycopg_pool import AsyncConnectionPool
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.db import transaction
from app.evolink.client import EvoLinkClient, EvoLinkError
from app.models import Task
from app.security import callback_token
from app.settings import Settings
from app.tasks import writer
from app.tasks.cancel import cancel_overdue
from app.tasks.transitions import TaskState, Verdict, fail, judge
from app.tasks.writer import Event
from app.vocabulary import TERMINAL, EventKind, EventOutcome, TaskStatus

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
    cancelled: int = 0


async def poll_task(
    pool: AsyncConnectionPool,
    sessions: async_sessionmaker[AsyncSession],
    evolink: EvoLinkClient,
    task_id: uuid.UUID,
    *,
    callback_secret: str,
    unknown_timeout_seconds: float,
) -> PollResult:
    """Ask the provider about one task now and apply the answer like a callback.

    Each step is a short transaction of its own (on `pool`, or through `sessions` when it
    cannot run it); none is held across the provider's answer. `callback_secret` makes the
    task's callback token, hidden from what is kept of the provider's errors.
    """
    async with transaction(sessions) as session:
        provider_id = await session.scalar(select(Task.provider_task_id).where(Task.id == task_id))
    if provider_id is None:
        return PollResult(EventOutcome.REJECTED, "the task has no provider id yet")
    try:
        # The provider may quote the task's callback URL in an error: hide its token.
        observed = await evolink.get_task(
            provider_id, hide=callback_token(callback_secret, task_id)
        )
    except EvoLinkError as exc:
        error, detail = exc, f"poll failed ({exc})"
        timeout = timedelta(seconds=unknown_timeout_seconds)
        when = writer.now()
        written = await writer.settle_anywhere(
            pool,
            sessions,
            task_id,
            lambda state: failed_poll(state, error, detail, timeout, when),
            Event(EventKind.POLL, polled=True),
        )
        return PollResult(written.outcome or EventOutcome.ERROR, detail)
    when = writer.now()
    written = await writer.settle_anywhere(
        pool,
        sessions,
        task_id,
        lambda state: judge(state, observed, EventKind.POLL, when),
        Event(EventKind.POLL, observed.status, observed.model_dump_json(), polled=True),
    )
    if written.outcome is None or written.verdict is None:
        return PollResult(EventOutcome.REJECTED, "the task does not exist")
    return PollResult(written.outcome, written.verdict.detail)


def failed_poll(
    state: TaskState, exc: EvoLinkError, detail: str, timeout: timedelta, now: datetime
) -> Verdict:
    """A poll the provider did not answer: an error event; and a task the provider no longer
    knows, silent for longer than the unknown-outcome limit, fails."""
    silent_for = now - (state.submitted_at or state.created_at or now)
    if exc.code == "task_not_found" and state.status not in TERMINAL and silent_for > timeout:
        message = "the provider no longer knows this task"
        verdict = Verdict(EventOutcome.ERROR, message)
        return fail(verdict, EventKind.SYSTEM, "provider_task_not_found", message, now)
    return Verdict(EventOutcome.ERROR, detail)


async def due_for_poll(
    session: AsyncSession, *, floor_seconds: float, factor: float, limit: int
) -> list[uuid.UUID]:
    """In-flight tasks past their expected time (or their last poll), most overdue first: a
    task is due `factor` times its estimate, and at least `floor_seconds`, after it was last
    heard of."""
    last_word = func.coalesce(Task.polled_at, Task.submitted_at, Task.updated_at)
    interval = func.make_interval(
        0,
        0,
        0,
        0,
        0,
        0,
        func.greatest(floor_seconds, func.coalesce(Task.estimated_seconds, 0) * factor),
    )
    rows = await session.execute(
        select(Task.id)
        .where(
            Task.status.in_([TaskStatus.PENDING, TaskStatus.PROCESSING]),
            Task.provider_task_id.is_not(None),
            last_word + interval < func.now(),
        )
        .order_by(last_word)
        .limit(limit)
    )
    return list(rows.scalars())


async def give_up_on_silent_submissions(
    pool: AsyncConnectionPool,
    sessions: async_sessionmaker[AsyncSession],
    *,
    unknown_timeout_seconds: float,
) -> int:
    """Fail tasks whose create had an unknown outcome and that no word has settled since
    `unknown_timeout_seconds`."""
    cutoff = datetime.now(UTC) - timedelta(seconds=unknown_timeout_seconds)
    async with transaction(sessions) as session:
        silent = (
            await session.execute(
                select(Task.id)
                .where(
                    Task.status == TaskStatus.SUBMITTING,
                    Task.provider_task_id.is_(None),
                    Task.updated_at < cutoff,
                )
                .limit(100)
            )
        ).scalars()
        found = list(silent)
    given_up = 0
    when = writer.now()
    minutes = unknown_timeout_seconds / 60
    message = (
        f"the provider never confirmed the submission and sent no word for {minutes:g} minutes"
    )
    for task_id in found:
        written = await writer.settle_anywhere(
            pool,
            sessions,
            task_id,
            lambda state: silent_submission(state, cutoff, message, when),
            Event(EventKind.SYSTEM),
        )
        given_up += written.outcome is not None
    return given_up


def silent_submission(
    state: TaskState, cutoff: datetime, message: str, now: datetime
) -> Verdict | None:
    """The time limit of an unconfirmed create: a task still `submitting` without a provider
    id, unchanged since `cutoff`, fails; any other is left alone (None)."""
    if state.status != TaskStatus.SUBMITTING or state.provider_task_id is not None:
        return None
    if state.updated_at is None or state.updated_at >= cutoff:
        return None
    verdict = Verdict(EventOutcome.APPLIED, message)
    return fail(verdict, EventKind.SYSTEM, "submission_outcome_unknown", message, now)


async def reconcile(
    pool: AsyncConnectionPool,
    sessions: async_sessionmaker[AsyncSession],
    evolink: EvoLinkClient,
    settings: Settings,
) -> ReconcileReport:
    """One reconciler run: cancel queued tasks past their `cancel_at`, give up on silent
    submissions, then poll what is overdue.

    Its reads and writes are short transactions of their own, none held across a poll.
    """
    timeout = settings.submit_unknown_timeout_seconds
    report = ReconcileReport(cancelled=await cancel_overdue(pool, sessions))
    report.given_up = await give_up_on_silent_submissions(
        pool, sessions, unknown_timeout_seconds=timeout
    )
    async with transaction(sessions) as session:
        due = await due_for_poll(
            session,
            floor_seconds=settings.poll_floor_seconds,
            factor=settings.poll_factor,
            limit=max(1, settings.polls_per_minute // RUNS_PER_MINUTE),
        )
    secret = settings.callback_secret.get_secret_value()
    for task_id in due:
        result = await poll_task(
            pool,
            sessions,
            evolink,
            task_id,
            callback_secret=secret,
            unknown_timeout_seconds=timeout,
        )
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
