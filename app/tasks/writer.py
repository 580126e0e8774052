"""The one writer of task transitions: one statement, guarded by the state it was judged on.

Every path that moves a task or records what happened to it — callbacks, polls, a create's
answer, a failed create, the system's time limits, a client's cancel — reads the task
(without a lock), asks its rule (app.tasks.transitions) for a verdict, and hands the
verdict to `write` with the guard derived from that rule. `write` sends ONE statement that
locks the row, applies the verdict only if the row is still in a guarded state, adds the
result rows, enqueues the copy job, makes the webhook messages (`app.webhooks.messages`),
notifies waiters and records the event. When the row changed in between, it writes nothing
and `settle` reads, judges and writes again.

The fast paths (a terminal callback, a create's answer) are the same statement with the
read skipped: the verdict is judged against the state the message implies, and a row in
any other state makes the statement write nothing, so the read-judge-write loop decides.

The statement runs on the direct pool when there is one; when it gets no connection within
0.5 s, or its connection fails, the whole loop runs again on the engine's connection (a
statement that may have committed is then judged afresh: at worst a duplicate event).
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, LiteralString, Protocol

from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.db import DirectUnavailable, fetch_one, transaction
from app.jobs import QUEUE, STORE_RESULTS
from app.notify import TASK_CHANNEL
from app.tasks.transitions import Guard, Rule, TaskState, Verdict, guard_for
from app.vocabulary import EventKind, EventOutcome, ResultStatus, TaskStatus
from app.webhooks import messages as webhook_messages

# The task columns a verdict may set.
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

# How a changed column is written; any other is set to its value (parameter `set_<column>`).
# A verdict judged against an implied state may carry a lower progress than the row has.
ASSIGNMENTS = {"progress": "progress = GREATEST(t.progress, %(set_progress)s)"}

# What an event's bookkeeping adds to the row: a poll is counted, a create's answer dates
# the submission (the first answer only).
BOOKKEEPING = {
    "polled": "poll_count = t.poll_count + 1, polled_at = now()",
    "submitted": "submitted_at = COALESCE(t.submitted_at, now())",
}

# A guard over the locked row `prior`, its parameters prefixed by the arm (`a_`, `b_`).
GUARD = """(prior.status = ANY(%({arm}statuses)s::text[])
    AND prior.provider_task_id IS NOT DISTINCT FROM %({arm}provider_task_id)s::text
    AND (NOT %({arm}exact)s::boolean OR (prior.progress = %({arm}progress)s::smallint
         AND prior.usage IS NOT DISTINCT FROM %({arm}usage)s::jsonb
         AND prior.estimated_seconds IS NOT DISTINCT FROM %({arm}estimate)s::float8))
    AND (%({arm}n_values)s::text[] IS NULL
         OR coalesce(prior.request ->> 'n', '') = ANY(%({arm}n_values)s::text[])))"""

# `prior` locks the row (a concurrent write waits, then sees the latest version); `hit` says
# which verdict holds for it: arm 1 (`a_`, which may change the task), arm 2 (`b_`, an
# event-only alternative, such as the duplicate of a terminal callback), or none — then
# nothing at all is written.
STATEMENT = """
WITH prior AS (
    SELECT id, status, provider_task_id, progress, usage, estimated_seconds, request
    FROM tasks WHERE id = %(task_id)s FOR UPDATE
), hit AS (
    SELECT prior.id, prior.status,
           CASE WHEN {guard_a} THEN 1 WHEN %(b_outcome)s::text IS NOT NULL AND {guard_b} THEN 2
           END AS arm
    FROM prior
), moved AS (
    {moved}
), results AS (
    INSERT INTO task_results (task_id, index, provider_url, status)
    SELECT moved.id, r.ordinality - 1, r.url, '{result_pending}'
    FROM moved, unnest(%(result_urls)s::text[]) WITH ORDINALITY AS r(url, ordinality)
    ON CONFLICT (task_id, index) DO NOTHING
    RETURNING 1
), side_effects AS (
    SELECT CASE WHEN %(notify)s::boolean THEN pg_notify('{channel}', moved.id::text) END,
           CASE WHEN %(to_status)s::text = '{completed}'
                 AND moved.from_status <> '{completed}' THEN procrastinate_defer_jobs_v1(ARRAY[ROW(
               '{queue}', '{copy_job}', 0, 'results:' || moved.id::text, NULL,
               jsonb_build_object('task_id', moved.id::text), NULL
           )::procrastinate_job_to_defer_v1]) END
    FROM moved
){webhooks}, event AS (
    INSERT INTO task_events
        (task_id, kind, outcome, from_status, to_status, provider_status, detail, body, headers)
    SELECT hit.id, %(kind)s,
           CASE hit.arm WHEN 1 THEN %(a_outcome)s ELSE %(b_outcome)s END,
           CASE WHEN hit.arm = 1 AND hit.status <> %(to_status)s::text THEN hit.status END,
           CASE WHEN hit.arm = 1 AND hit.status <> %(to_status)s::text THEN %(to_status)s END,
           %(provider_status)s,
           CASE hit.arm WHEN 1 THEN %(a_detail)s ELSE %(b_detail)s END,
           %(body)s, %(headers)s
    FROM hit
    WHERE hit.arm IS NOT NULL
    RETURNING outcome
)
SELECT (SELECT outcome FROM event),
       (SELECT count(*) FROM results) + (SELECT count(*) FROM side_effects)
FROM prior
"""

# `moved` when the verdict or the event's bookkeeping sets something; else a row that is
# not touched (an event-only verdict makes no new row version).
UPDATE = """UPDATE tasks AS t SET {assignments} FROM hit
    WHERE t.id = hit.id AND hit.arm = 1 RETURNING t.id, hit.status AS from_status"""
UNTOUCHED = "SELECT id, status AS from_status FROM hit WHERE false"

READ = """
SELECT status, provider_task_id, progress, request, usage, estimated_seconds, submitted_at,
       created_at, updated_at, cancel_at
FROM tasks WHERE id = %(task_id)s
"""


@functools.cache
def statement_for(
    columns: frozenset[str], bookkeeping: frozenset[str], *, tells: bool = False
) -> LiteralString:
    """The statement that sets `columns` (names from CHANGEABLE) and does `bookkeeping`
    (names from BOOKKEEPING) on a task whose row holds one of its guards; with `tells`, it
    also makes the webhook messages of a move into the verdict's status."""
    unknown = (columns - CHANGEABLE) | (bookkeeping - BOOKKEEPING.keys())
    if unknown:
        raise ValueError(f"the writer cannot change {sorted(unknown)}")
    parts = [ASSIGNMENTS.get(column, f"{column} = %(set_{column})s") for column in sorted(columns)]
    if columns:
        parts.append("updated_at = now()")
    parts += [BOOKKEEPING[name] for name in sorted(bookkeeping)]
    moved = UPDATE.format(assignments=", ".join(parts)) if parts else UNTOUCHED
    return STATEMENT.format(
        guard_a=GUARD.format(arm="a_"),
        guard_b=GUARD.format(arm="b_"),
        moved=moved,
        channel=TASK_CHANNEL,
        queue=QUEUE,
        copy_job=STORE_RESULTS,
        completed=TaskStatus.COMPLETED.value,
        result_pending=ResultStatus.PENDING.value,
        webhooks=webhook_messages.WRITER_CTE if tells else "",
    )


@dataclass(frozen=True)
class Event:
    """What happened, as the event records it, and the bookkeeping it adds to the row."""

    kind: EventKind
    provider_status: str | None = None
    body: str | None = None
    headers: Mapping[str, Any] | None = None
    polled: bool = False  # a poll: count it and date it
    submitted: bool = False  # a create's answer: date the submission if not yet dated


@dataclass(frozen=True)
class Written:
    """What `write` did: `outcome` None means it wrote nothing (no guard held); `exists`
    False means there is no such task. `verdict` is the one written."""

    exists: bool
    outcome: EventOutcome | None = None
    verdict: Verdict | None = None


class Executor(Protocol):
    """Runs one statement in its own transaction and returns its first row."""

    async def one(self, statement: LiteralString, params: Mapping[str, Any]) -> Any: ...


@dataclass(frozen=True)
class Direct:
    """The direct pool; raises DirectUnavailable when it cannot run a statement."""

    pool: AsyncConnectionPool

    async def one(self, statement: LiteralString, params: Mapping[str, Any]) -> Any:
        return await fetch_one(self.pool, statement, params)


@dataclass(frozen=True)
class Engine:
    """The engine's connections: the same statement text, through SQLAlchemy's driver."""

    sessions: async_sessionmaker[AsyncSession]

    async def one(self, statement: LiteralString, params: Mapping[str, Any]) -> Any:
        async with transaction(self.sessions) as session:
            connection = await session.connection()
            return (await connection.exec_driver_sql(statement, dict(params))).first()


def _value(value: Any) -> Any:
    if isinstance(value, StrEnum):
        return value.value
    if isinstance(value, dict | list):
        return Jsonb(value)
    return value


def _guard_params(arm: str, guard: Guard | None) -> dict[str, Any]:
    exact = guard is not None and guard.unchanged is not None
    progress, usage, estimate = guard.unchanged if guard and guard.unchanged else (0, None, None)
    return {
        f"{arm}statuses": sorted(s.value for s in guard.statuses) if guard else [],
        f"{arm}provider_task_id": guard.provider_task_id if guard else None,
        f"{arm}exact": exact,
        f"{arm}progress": progress,
        f"{arm}usage": Jsonb(usage) if usage is not None else None,
        f"{arm}estimate": estimate,
        f"{arm}n_values": sorted(guard.n_values) if guard and guard.n_values is not None else None,
    }


def prepare(
    task_id: uuid.UUID,
    verdict: Verdict,
    guard: Guard,
    event: Event,
    *,
    otherwise: tuple[Verdict, Guard] | None = None,
) -> tuple[LiteralString, dict[str, Any]]:
    """The statement `write` sends, and its parameters."""
    if otherwise is not None and otherwise[0].changes:
        raise ValueError(f"the alternative verdict must be event-only: {otherwise[0]}")
    bookkeeping = frozenset(
        name for name, on in (("polled", event.polled), ("submitted", event.submitted)) if on
    )
    alternative, alternative_guard = otherwise if otherwise else (None, None)
    params: dict[str, Any] = {
        **{f"set_{column}": _value(value) for column, value in verdict.changes.items()},
        **_guard_params("a_", guard),
        **_guard_params("b_", alternative_guard),
        "task_id": task_id,
        "a_outcome": verdict.outcome.value,
        "a_detail": verdict.detail,
        "b_outcome": alternative.outcome.value if alternative else None,
        "b_detail": alternative.detail if alternative else None,
        "to_status": verdict.to_status.value if verdict.to_status else None,
        "notify": bool(verdict.changes),
        "result_urls": list(verdict.result_urls),
        "kind": event.kind.value,
        "provider_status": event.provider_status,
        "body": event.body,
        "headers": Jsonb(dict(event.headers)) if event.headers is not None else None,
    }
    tells = webhook_messages.tells(verdict.to_status)
    return statement_for(frozenset(verdict.changes), bookkeeping, tells=tells), params


async def write(
    executor: Executor,
    task_id: uuid.UUID,
    verdict: Verdict,
    guard: Guard,
    event: Event,
    *,
    otherwise: tuple[Verdict, Guard] | None = None,
) -> Written:
    """Write `verdict` and its event if the task's row holds `guard`; else the event-only
    verdict `otherwise` if its guard holds; else nothing."""
    statement, params = prepare(task_id, verdict, guard, event, otherwise=otherwise)
    row = await executor.one(statement, params)
    if row is None:
        return Written(exists=False)
    if row[0] is None:
        return Written(exists=True)
    outcome = EventOutcome(row[0])
    alternative = otherwise[0] if otherwise else None
    return Written(True, outcome, verdict if outcome == verdict.outcome else alternative)


async def read(executor: Executor, task_id: uuid.UUID) -> TaskState | None:
    """The task's state as a rule reads it, without a lock; None when there is no such task."""
    row = await executor.one(READ, {"task_id": task_id})
    if row is None:
        return None
    status, *rest = row
    return TaskState(TaskStatus(status), *rest)


# How often a task may change under a settling verdict before we stop trying: each retry
# means another writer moved it meanwhile, and a task moves only a handful of times.
MAX_TRIES = 20


class KeptChanging(RuntimeError):
    """The task changed between every read and write; the caller's job or request fails."""


async def settle(executor: Executor, task_id: uuid.UUID, rule: Rule, event: Event) -> Written:
    """Read the task, judge it by `rule`, write the verdict under the guard derived from the
    rule; when the row changed in between, again."""
    for _ in range(MAX_TRIES):
        state = await read(executor, task_id)
        if state is None:
            return Written(exists=False)
        verdict = rule(state)
        if verdict is None:
            return Written(exists=True)
        written = await write(executor, task_id, verdict, guard_for(rule, state, verdict), event)
        if written.outcome is not None or not written.exists:
            return written
    raise KeptChanging(f"task {task_id} changed under {MAX_TRIES} verdicts in a row")


async def settle_anywhere(
    pool: AsyncConnectionPool | None,
    sessions: async_sessionmaker[AsyncSession],
    task_id: uuid.UUID,
    rule: Rule,
    event: Event,
) -> Written:
    """`settle` on the direct pool when there is one and it can, else on the engine."""
    if pool is not None:
        try:
            return await settle(Direct(pool), task_id, rule, event)
        except DirectUnavailable:
            pass  # fetch_one logged why; the engine's own errors speak for an outage
    return await settle(Engine(sessions), task_id, rule, event)


def now() -> datetime:
    """The time a verdict is decided at."""
    return datetime.now(UTC)
