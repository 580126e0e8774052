"""Sending a stored task to the provider, at most once.

EvoLink has no idempotency key, so a create may be repeated only when the provider certainly
did not act on it (a refused connection, 429, 5xx). When the outcome is unknown — the request
went out and no answer came back — the task stays `submitting` and is never sent again: its
callback, whose URL names our task, or the reconciler's time limit settles it.

The claim is the line a cancel cannot cross: it takes only a task still `queued` and not
past its `cancel_at`, under the same row lock as a cancel's guarded write, so a task is
either claimed (and then goes on, since EvoLink cannot cancel) or cancelled, never both.
A job that comes late, past the task's `cancel_at`, cancels it instead of submitting it.

A create the provider answered is never dropped: the answer carries the provider's id, the
only handle a poll has when the callback is lost. If Postgres is unreachable when the
answer comes back, the worker keeps retrying to record it, with capped backoff, until it
succeeds or the unknown-outcome limit since the claim has passed (the reconciler fails the
task then anyway). The retrying outlives the job if procrastinate cancels it while it stops
for the outage.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolCheckoutTimeout
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.db import DirectUnavailable, fetch_one
from app.evolink.client import EvoLinkClient, EvoLinkError
from app.evolink.schemas import CreateRequest, ProviderTask
from app.security import callback_path, callback_token
from app.settings import Settings
from app.tasks import writer
from app.tasks.cancel import cancel_if_overdue
from app.tasks.transitions import TaskState, Verdict, fail, implied_guard, judge
from app.tasks.writer import Direct, Event, Written
from app.uploads.inputs import InputLinks, InputUnavailable, record_unavailable
from app.vocabulary import EventKind, EventOutcome, TaskStatus

logger = logging.getLogger("edithook.submission")

MAX_BACKOFF_SECONDS = 300.0
MAX_RETRY_AFTER_SECONDS = 3600.0
# Pauses between attempts to record a create's answer while Postgres is unreachable:
# 0.5 s doubling to this cap, so that a restart of a few seconds costs a few seconds.
MAX_RECORD_BACKOFF_SECONDS = 10.0

# Recordings that outlive their job (cancelled while procrastinate stops for an outage);
# held here so that they are not garbage-collected mid-way.
_RECORDING: set[asyncio.Task[None]] = set()


def callback_url(settings: Settings, task_id: uuid.UUID) -> str:
    token = callback_token(settings.callback_secret.get_secret_value(), task_id)
    return settings.public_base_url + callback_path(task_id, token)


def backoff(attempt: int) -> float:
    """Seconds before retry number `attempt` + 1: 1, 2, 4, … capped at five minutes."""
    return min(MAX_BACKOFF_SECONDS, float(2**attempt))


# Move a queued task to `submitting`, or nothing if it is not queued (someone else has it,
# or a cancel) or past its `cancel_at`: the conditional update is what makes submission
# at-most-once across every worker, and exclusive with a cancel.
CLAIM = """
UPDATE tasks SET status = %(submitting)s, updated_at = now()
WHERE id = %(task_id)s AND status = %(queued)s
  AND (cancel_at IS NULL OR cancel_at > now())
RETURNING request
"""


async def claim(pool: AsyncConnectionPool, task_id: uuid.UUID) -> dict[str, Any] | None:
    """Claim a queued task for submission and return its stored request; None if it is not
    queued, or past its `cancel_at`. Raises DirectUnavailable when the pool cannot run it:
    the job is then retried, and nothing was sent."""
    params = {
        "task_id": task_id,
        "queued": TaskStatus.QUEUED.value,
        "submitting": TaskStatus.SUBMITTING.value,
    }
    row = await fetch_one(pool, CLAIM, params)
    if row is None:
        return None
    request: dict[str, Any] = row[0]
    return request


async def submit_task(
    pool: AsyncConnectionPool,
    sessions: async_sessionmaker[AsyncSession],
    evolink: EvoLinkClient,
    task_id: uuid.UUID,
    *,
    callback_url: str,
    attempts: int,
    unknown_timeout_seconds: float,
    attempt: int = 0,
    inputs: InputLinks | None = None,
) -> float | None:
    """Submit a queued task once, with `callback_url`, and record what came of it.

    `attempt` is this one's number from 0, `attempts` how many a create that certainly did
    nothing gets. Returns the seconds after which to try again when the provider certainly
    created nothing and attempts remain (the task is back in `queued` meanwhile); None
    otherwise. The claim and each record are statements of their own (on `pool`, or
    through `sessions` when it cannot run them); nothing is held across the create.
    `inputs` makes the links to the task's uploads (`image_ids`), valid from now on.
    """
    stored = await claim(pool, task_id)
    if stored is None:
        # Not queued (nothing to do), or past its cancel_at: then it is cancelled now.
        await cancel_if_overdue(pool, sessions, task_id)
        return None
    # The reconciler gives up on an unconfirmed create this long after the claim.
    deadline = time.monotonic() + unknown_timeout_seconds
    if inputs is not None:
        try:
            stored = await inputs.provider_request(sessions, stored)
        except InputUnavailable as exc:
            await record_unavailable(pool, sessions, task_id, exc)
            return None
    request = CreateRequest.model_validate({**stored, "callback_url": callback_url})

    try:
        created = await evolink.create_task(request)
    except EvoLinkError as exc:
        if exc.outcome == "retryable" and attempt + 1 < attempts:
            delay = min(exc.retry_after or backoff(attempt), MAX_RETRY_AFTER_SECONDS)
            await _record_failure(pool, sessions, task_id, exc, requeue_in=delay)
            return delay
        await _record_failure(pool, sessions, task_id, exc)
        return None

    recording = asyncio.create_task(
        _keep_recording(pool, sessions, task_id, created, deadline),
        name=f"record create {task_id}",
    )
    _RECORDING.add(recording)
    recording.add_done_callback(_RECORDING.discard)
    try:
        await asyncio.shield(recording)
    except asyncio.CancelledError:
        if not recording.done():
            logger.warning(
                "submission job of task %s cancelled; still recording the create's answer "
                "(provider task %s)",
                task_id,
                created.id,
            )
        raise
    return None


def _unreachable(exc: Exception) -> bool:
    """Whether `exc` says the database could not be reached (as opposed to a bug)."""
    if isinstance(exc, DirectUnavailable | OperationalError | InterfaceError | OSError):
        return True
    if isinstance(exc, PoolCheckoutTimeout | psycopg.OperationalError):
        return True
    return isinstance(exc, DBAPIError) and exc.connection_invalidated


async def _keep_recording(
    pool: AsyncConnectionPool,
    sessions: async_sessionmaker[AsyncSession],
    task_id: uuid.UUID,
    created: ProviderTask,
    deadline: float,
) -> None:
    """Record the create's answer, retrying while Postgres is unreachable, until `deadline`
    (monotonic); if it passes, report the answer loudly: the task then fails by the
    reconciler's unknown-outcome limit, although the provider has it."""
    attempt = 0
    try:
        while True:
            try:
                await _record_answer(pool, sessions, task_id, created)
            except Exception as exc:
                if not _unreachable(exc):
                    raise
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    logger.error(
                        "could not record the create's answer for task %s after %d attempts "
                        "(%s): the provider created task %s, which edithook will not know; "
                        "its answer: %s",
                        task_id,
                        attempt + 1,
                        type(exc).__name__,
                        created.id,
                        created.model_dump_json(),
                    )
                    return
                pause = min(0.5 * 2**attempt, MAX_RECORD_BACKOFF_SECONDS, remaining)
                logger.warning(
                    "recording the create's answer for task %s (provider task %s) failed: "
                    "%s; attempt %d, retrying in %g s",
                    task_id,
                    created.id,
                    type(exc).__name__,
                    attempt + 1,
                    pause,
                )
                await asyncio.sleep(pause)
                attempt += 1
            else:
                if attempt:
                    logger.info(
                        "recorded the create's answer for task %s after %d failed attempts",
                        task_id,
                        attempt,
                    )
                return
    except asyncio.CancelledError:
        logger.error(
            "stopped before recording the create's answer for task %s: the provider created "
            "task %s; its answer: %s",
            task_id,
            created.id,
            created.model_dump_json(),
        )
        raise


def _answer_event(created: ProviderTask) -> Event:
    return Event(EventKind.SUBMISSION, created.status, created.model_dump_json(), submitted=True)


def _judge_answer(created: ProviderTask) -> Callable[[TaskState], Verdict]:
    when = writer.now()
    return lambda state: judge(state, created, EventKind.SUBMISSION, when)


async def record_created(
    pool: AsyncConnectionPool, task_id: uuid.UUID, created: ProviderTask
) -> Written:
    """The create's answer, written without reading the task: judged against the state the
    submission left it in (`submitting`, no provider id); nothing is written when the task
    is in another state (a callback got there first). Raises DirectUnavailable when the
    direct pool cannot run it."""
    rule = _judge_answer(created)
    implied = TaskState(TaskStatus.SUBMITTING, None)
    verdict = rule(implied)
    guard = implied_guard(rule, implied, verdict)
    return await writer.write(Direct(pool), task_id, verdict, guard, _answer_event(created))


async def _record_answer(
    pool: AsyncConnectionPool,
    sessions: async_sessionmaker[AsyncSession],
    task_id: uuid.UUID,
    created: ProviderTask,
) -> None:
    """Record the create's answer once: without a read when the task is as the submission
    left it, else (or when the direct pool is unavailable) by the read-judge-write loop."""
    try:
        written = await record_created(pool, task_id, created)
    except DirectUnavailable as exc:
        logger.warning("recording the create of task %s through the engine: %s", task_id, exc)
    else:
        if written.outcome is not None or not written.exists:
            return
    await writer.settle_anywhere(
        pool, sessions, task_id, _judge_answer(created), _answer_event(created)
    )


def failed_create(
    state: TaskState, exc: EvoLinkError, detail: str, requeue_in: float | None, now: datetime
) -> Verdict:
    """What a failed create does to the task: requeue it, leave it waiting (ambiguous), or
    fail it; only an error event once a callback has settled it (possible after an
    ambiguous create)."""
    verdict = Verdict(EventOutcome.ERROR, detail)
    if state.status != TaskStatus.SUBMITTING:
        return verdict
    if requeue_in is not None:
        return Verdict(
            EventOutcome.ERROR,
            f"{detail}; nothing was created, retrying in {requeue_in:g} s",
            TaskStatus.QUEUED,
            {"status": TaskStatus.QUEUED},
        )
    if exc.outcome == "ambiguous":
        return Verdict(
            EventOutcome.ERROR,
            f"{detail}; the provider may have accepted it, so it is not sent again: "
            "waiting for its callback or a poll",
        )
    code = exc.code or f"provider_http_{exc.status_code or 'unreachable'}"
    return fail(verdict, EventKind.SUBMISSION, code, exc.message, now)


async def _record_failure(
    pool: AsyncConnectionPool,
    sessions: async_sessionmaker[AsyncSession],
    task_id: uuid.UUID,
    exc: EvoLinkError,
    *,
    requeue_in: float | None = None,
) -> None:
    """Record a failed create: requeue it, leave it waiting (ambiguous), or fail the task."""
    answer = f"HTTP {exc.status_code}" if exc.status_code else "no response"
    detail = f"{exc.outcome}: {answer}, {exc.code or 'no code'}: {exc.message}"
    logger.warning("submission of task %s failed (%s)", task_id, detail)
    when = writer.now()
    await writer.settle_anywhere(
        pool,
        sessions,
        task_id,
        lambda state: failed_create(state, exc, detail, requeue_in, when),
        Event(EventKind.SUBMISSION),
    )
