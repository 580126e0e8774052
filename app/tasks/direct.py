"""Transitions written in one statement, when the task is in a state the verdict assumes.

The careful path — lock the row, `judge` it in Python, write through the ORM, commit — costs
eight round trips and most of a millisecond of CPU. Nearly all traffic is two messages
whose verdict does not depend on the task's exact state, only on a condition the database
can check while it holds the row lock:

- a **terminal callback** (completed, failed, cancelled) naming the task's provider id:
  applied if the task is still in flight, a duplicate if it already has that status;
- a **create's answer**: applied if the task is still `submitting` with no provider id.

For these, `judge` runs against the assumed state, and `write_verdict` sends ONE statement
that locks the row, applies the verdict only if the row is in a state for which that
verdict holds (or records the duplicate), adds the result rows, enqueues the copy job,
notifies waiters and records the event. When the row is in any other state the statement
writes nothing and says so; the caller then takes the careful path, which judges the task as
it is. Every outcome written here is the one the careful path would have written.
"""

from __future__ import annotations

import functools
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from app.db import fetch_one
from app.evolink.schemas import ProviderTask
from app.jobs import QUEUE, STORE_RESULTS
from app.notify import TASK_CHANNEL
from app.tasks.lifecycle import TERMINAL, EventKind, EventOutcome, TaskStatus
from app.tasks.transitions import MAX_RESULTS, Verdict, judge

IN_FLIGHT = frozenset(status for status in TaskStatus if status not in TERMINAL)

# The task columns a verdict may change here; `progress` only ever grows.
CHANGEABLE = frozenset(
    {
        "status",
        "provider_task_id",
        "progress",
        "usage",
        "estimated_seconds",
        "error_code",
        "error_message",
        "resolved_by",
        "finished_at",
    }
)

# How a changed column is written; any other column in CHANGEABLE is set to its value. The
# new values are the parameters `set_<column>`.
ASSIGNMENTS = {
    "progress": "progress = GREATEST(t.progress, %(set_progress)s)",
    "submitted_at": "submitted_at = COALESCE(t.submitted_at, %(set_submitted_at)s)",
}

# `prior` locks the row (a concurrent delivery waits, then sees the latest version); `moved`
# applies the verdict only from the states it holds for, and only with no more results than
# the task's n (app.tasks.transitions.result_limit); the event is written when the task
# moved or already has the status the message repeats, and not at all otherwise.
STATEMENT = """
WITH prior AS (
    SELECT id, status, provider_task_id FROM tasks WHERE id = %(task_id)s FOR UPDATE
), moved AS (
    UPDATE tasks AS t SET {assignments}, updated_at = now()
    FROM prior
    WHERE t.id = prior.id
      AND prior.status IN ({moves_from})
      AND prior.provider_task_id IS NOT DISTINCT FROM %(provider_task_id)s
      AND cardinality(%(result_urls)s::text[]) <= CASE
          WHEN jsonb_typeof(t.request -> 'n') = 'number'
           AND (t.request ->> 'n')::numeric BETWEEN 1 AND {max_results}
          THEN (t.request ->> 'n')::numeric ELSE {max_results} END
    RETURNING t.id, prior.status AS from_status
), results AS (
    INSERT INTO task_results (task_id, index, provider_url, status)
    SELECT moved.id, r.ordinality - 1, r.url, 'pending'
    FROM moved, unnest(%(result_urls)s::text[]) WITH ORDINALITY AS r(url, ordinality)
    ON CONFLICT (task_id, index) DO NOTHING
    RETURNING 1
), side_effects AS (
    SELECT pg_notify('{channel}', moved.id::text),
           CASE WHEN %(status)s = 'completed' THEN procrastinate_defer_jobs_v1(ARRAY[ROW(
               '{queue}', '{copy_job}', 0, 'results:' || moved.id::text, NULL,
               jsonb_build_object('task_id', moved.id::text), NULL
           )::procrastinate_job_to_defer_v1]) END
    FROM moved
), event AS (
    INSERT INTO task_events
        (task_id, kind, outcome, from_status, to_status, provider_status, detail, body, headers)
    SELECT prior.id, %(kind)s,
           CASE WHEN moved.id IS NULL THEN 'duplicate' ELSE 'applied' END,
           moved.from_status,
           CASE WHEN moved.id IS NULL THEN NULL ELSE %(status)s END,
           %(provider_status)s,
           CASE WHEN moved.id IS NULL THEN NULL ELSE %(detail)s END,
           %(body)s, %(headers)s
    FROM prior LEFT JOIN moved ON true
    WHERE moved.id IS NOT NULL
       OR (prior.status = %(repeats)s AND prior.provider_task_id = %(provider_task_id)s)
    RETURNING outcome
)
SELECT (SELECT outcome FROM event),
       (SELECT count(*) FROM results) + (SELECT count(*) FROM side_effects)
FROM prior
"""


@functools.cache
def statement_for(columns: frozenset[str], moves_from: frozenset[TaskStatus]) -> str:
    """The statement that sets `columns` (names from CHANGEABLE, or submitted_at) on a task
    in one of the statuses `moves_from`."""
    unknown = columns - CHANGEABLE - {"submitted_at"}
    if unknown:
        raise ValueError(f"the one-statement path cannot change {sorted(unknown)}")
    assignments = ", ".join(
        ASSIGNMENTS.get(column, f"{column} = %(set_{column})s") for column in sorted(columns)
    )
    return STATEMENT.format(
        assignments=assignments,
        moves_from=", ".join(sorted(f"'{status.value}'" for status in moves_from)),
        channel=TASK_CHANNEL,
        queue=QUEUE,
        copy_job=STORE_RESULTS,
        max_results=MAX_RESULTS,
    )


@dataclass(frozen=True)
class Assumed:
    """The state a verdict is judged against (what `judge` reads of a task)."""

    status: str
    provider_task_id: str | None
    progress: int = 0
    # No `n`: judged against the provider's maximum; the statement checks the task's own.
    request: dict[str, Any] = field(default_factory=dict)
    usage: dict[str, Any] | None = None
    estimated_seconds: float | None = None


@dataclass(frozen=True)
class Written:
    """What `write_verdict` did: `outcome` None means it wrote nothing, the task being in
    another state (take the careful path); `exists` False means there is no such task."""

    exists: bool
    outcome: EventOutcome | None = None


async def write_verdict(
    pool: AsyncConnectionPool,
    task_id: uuid.UUID,
    verdict: Verdict,
    source: EventKind,
    *,
    moves_from: frozenset[TaskStatus],
    provider_task_id: str | None,
    repeats: TaskStatus | None = None,
    provider_status: str | None = None,
    body: str | None = None,
    headers: dict[str, Any] | None = None,
    submitted_at: datetime | None = None,
) -> Written:
    """Apply `verdict` (an APPLIED one, with a status) to the task if its locked row is in one
    of `moves_from` with `provider_task_id` (None: none yet); else record a duplicate if it
    has status `repeats` with that provider id; else write nothing.

    Raises app.db.DirectUnavailable when the direct pool cannot run it.
    """
    if verdict.outcome != EventOutcome.APPLIED or verdict.to_status is None:
        raise ValueError(f"only an applied verdict with a status can be written: {verdict}")
    changes = dict(verdict.changes)
    if submitted_at is not None:
        changes["submitted_at"] = submitted_at
    if changes.get("usage") is not None:
        changes["usage"] = Jsonb(changes["usage"])
    params: dict[str, Any] = {
        **{f"set_{column}": value for column, value in changes.items()},
        "task_id": task_id,
        "status": verdict.to_status.value,
        "provider_task_id": provider_task_id,
        "result_urls": verdict.result_urls,
        "kind": source.value,
        "provider_status": provider_status,
        "detail": verdict.detail,
        "body": body,
        "headers": Jsonb(headers) if headers is not None else None,
        "repeats": repeats.value if repeats is not None else None,
    }
    row = await fetch_one(pool, statement_for(frozenset(changes), moves_from), params)
    if row is None:
        return Written(exists=False)
    return Written(exists=True, outcome=EventOutcome(row[0]) if row[0] is not None else None)


async def settle_by_callback(
    pool: AsyncConnectionPool,
    task_id: uuid.UUID,
    observed: ProviderTask,
    *,
    body: str,
    headers: dict[str, str],
) -> Written | None:
    """A terminal callback, written in one statement when the task is in flight with the
    provider id it names (applied) or already has its status (duplicate).

    None, with nothing asked of the database, for any other message.
    """
    assumed = Assumed(TaskStatus.PROCESSING.value, observed.id)
    verdict = judge(assumed, observed, EventKind.CALLBACK)
    if verdict.outcome != EventOutcome.APPLIED or verdict.to_status not in TERMINAL:
        return None
    return await write_verdict(
        pool,
        task_id,
        verdict,
        EventKind.CALLBACK,
        moves_from=IN_FLIGHT,
        provider_task_id=observed.id,
        repeats=verdict.to_status,
        provider_status=observed.status,
        body=body,
        headers=headers,
    )


async def record_created(
    pool: AsyncConnectionPool, task_id: uuid.UUID, created: ProviderTask, *, body: str
) -> Written | None:
    """A create's answer, written in one statement when the task is still `submitting`
    without a provider id (as the submission left it).

    None, with nothing asked of the database, for an answer it cannot apply (one without
    an id); a written-nothing `Written` when a callback settled the task first.
    """
    if len(created.results or []) > MAX_RESULTS:
        return None  # the careful path fails the task, with the n it asked for in the error
    assumed = Assumed(TaskStatus.SUBMITTING.value, None)
    verdict = judge(assumed, created, EventKind.SUBMISSION)
    if verdict.outcome != EventOutcome.APPLIED or verdict.to_status is None:
        return None
    return await write_verdict(
        pool,
        task_id,
        verdict,
        EventKind.SUBMISSION,
        moves_from=frozenset({TaskStatus.SUBMITTING}),
        provider_task_id=None,
        provider_status=created.status,
        body=body,
        submitted_at=datetime.now(UTC),
    )
