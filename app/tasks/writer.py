"""The one writer of task transitions: one statement, guarded by the state it was judged on.

Every path that moves a task or records what happened to it — callbacks, polls, a create's
answer, a failed create, the system's time limits, a client's cancel — reads the task
(without a lock), asks its rule (app.tasks.transitions) for a verdict, and hands the
verdict to `write` with the guard derived from that rule. `write` sends ONE statement that
locks the row, applies the verdict only if the row is still in a guarded state, adds the
result rows, enqueues the copy job, makes the webhook messages (`app.webhooks.messages`),
settles the budget reservation of a task that ends (`app.budgets.spend`), notifies waiters
and records the event. When the row changed in between, it writes nothing
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
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, LiteralString, Protocol

from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.budgets import spend
from app.db import DirectUnavailable, fetch_one, transaction
from app.jobs import QUEUE, STORE_RESULTS
from app.notify import TASK_CHANNEL
from app.tasks.transitions import Guard, Rule, TaskState, Verdict, guard_for
from app.vocabulary import TERMINAL, EventKind, EventOutcome, ResultStatus, TaskStatus
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


@dataclass(frozen=True)
class Shape:
    """What of a guard the statement's text holds: the statuses and `request.n` values it
    accepts (as constants, which the plan folds) and whether the row's progress, usage and
    estimate must be as judged. The provider id and those values are parameters."""

    statuses: frozenset[TaskStatus]
    exact: bool = False
    n_values: frozenset[str] | None = None

    @classmethod
    def of(cls, guard: Guard) -> Shape:
        return cls(guard.statuses, guard.unchanged is not None, guard.n_values)


ALL_STATUSES = frozenset(TaskStatus)

# Values written into the statement's text: statuses and `request.n` as text ("" for none).
_CONSTANT = re.compile(r"[a-z0-9_]*")


def _constants(values: frozenset[str]) -> str:
    """`values` as an SQL list of string constants; only words made of [a-z0-9_]."""
    if any(_CONSTANT.fullmatch(value) is None for value in values):
        raise ValueError(f"not a status or an n: {sorted(values)}")
    return ", ".join(f"'{value}'" for value in sorted(values))


def _guard(arm: str, shape: Shape) -> str:
    """The condition on the locked row `prior` that a guard of `shape` puts; its parameters
    are prefixed by the arm (`a_`, `b_`)."""
    conditions = [f"prior.provider_task_id IS NOT DISTINCT FROM %({arm}provider_task_id)s::text"]
    if not shape.statuses:
        conditions.append("false")
    elif shape.statuses != ALL_STATUSES:
        conditions.append(f"prior.status IN ({_constants(frozenset(shape.statuses))})")
    if shape.exact:
        conditions.append(
            f"prior.progress = %({arm}progress)s::smallint"
            f" AND prior.usage IS NOT DISTINCT FROM %({arm}usage)s::jsonb"
            f" AND prior.estimated_seconds IS NOT DISTINCT FROM %({arm}estimate)s::float8"
        )
    if shape.n_values is not None:
        conditions.append(
            f"coalesce(prior.request ->> 'n', '') IN ({_constants(shape.n_values)})"
            if shape.n_values
            else "false"
        )
    return "(" + "\n             AND ".join(conditions) + ")"


# `prior` locks the row (a concurrent write waits, then sees the latest version); `hit` says
# which verdict holds for it: arm 1 (`a_`, which may change the task), arm 2 (`b_`, an
# event-only alternative, such as the duplicate of a terminal callback), or none — then
# nothing at all is written. The parts in braces are there only when the verdict needs
# them: a statement holds no result rows, copy job or notification that cannot happen.
STATEMENT = """
WITH prior AS (
    SELECT {prior_columns} FROM tasks WHERE id = %(task_id)s FOR UPDATE
), hit AS (
    SELECT prior.id, prior.status,
           CASE WHEN {guard_a} THEN 1{arm_b} END AS arm
    FROM prior
){moved}{results}{side_effects}{webhooks}, event AS (
    INSERT INTO task_events
        (task_id, kind, outcome, from_status, to_status, provider_status, detail, body, headers)
    SELECT hit.id, %(kind)s, {outcome},
           CASE WHEN hit.arm = 1 AND hit.status <> %(to_status)s::text THEN hit.status END,
           CASE WHEN hit.arm = 1 AND hit.status <> %(to_status)s::text THEN %(to_status)s END,
           %(provider_status)s, {detail}, %(body)s, %(headers)s
    FROM hit
    WHERE hit.arm IS NOT NULL
    RETURNING outcome
)
SELECT (SELECT outcome FROM event), {effects}
FROM prior
"""

ARM_B = "\n                WHEN {guard_b} THEN 2"

# `moved` when the verdict or the event's bookkeeping sets something (else nothing is
# updated: an event-only verdict makes no new row version).
MOVED = """, moved AS (
    UPDATE tasks AS t SET {assignments} FROM hit
    WHERE t.id = hit.id AND hit.arm = 1 RETURNING t.id, hit.status AS from_status{returning}
)"""

# The result rows a completion lists, waiting to be copied.
RESULTS = """, results AS (
    INSERT INTO task_results (task_id, index, provider_url, status)
    SELECT moved.id, r.ordinality - 1, r.url, '{result_pending}'
    FROM moved, unnest(%(result_urls)s::text[]) WITH ORDINALITY AS r(url, ordinality)
    ON CONFLICT (task_id, index) DO NOTHING
)"""

# A change wakes the task's waiters; a task that becomes completed gets its copy job.
SIDE_EFFECTS = """, side_effects AS (
    SELECT pg_notify('{channel}', moved.id::text){copy_job}
    FROM moved
)"""

COPY_JOB = """,
           CASE WHEN moved.from_status <> '{completed}'
                THEN procrastinate_defer_jobs_v1(ARRAY[ROW(
               '{queue}', '{copy_job}', 0, 'results:' || moved.id::text, NULL,
               jsonb_build_object('task_id', moved.id::text), NULL
           )::procrastinate_job_to_defer_v1]) END"""

READ = """
SELECT status, provider_task_id, progress, request, usage, estimated_seconds, submitted_at,
       created_at, updated_at, cancel_at
FROM tasks WHERE id = %(task_id)s
"""


@functools.cache
def statement_for(
    columns: frozenset[str],
    bookkeeping: frozenset[str],
    guard: Shape,
    otherwise: Shape | None = None,
    *,
    results: bool = False,
    completes: bool = False,
    tells: bool = False,
    settles: bool = False,
) -> LiteralString:
    """The statement that sets `columns` (names from CHANGEABLE) and does `bookkeeping`
    (names from BOOKKEEPING) on a task whose row holds a guard of shape `guard`, else
    records an event-only verdict when it holds one of shape `otherwise`. With `results`,
    it adds the result rows listed; with `completes`, the copy job of a task it completes;
    with `tells`, the webhook messages of a move into the verdict's status; with `settles`,
    the images charged and the settlement of the budget reservation of a move into a
    terminal status (`app.budgets.spend`)."""
    unknown = (columns - CHANGEABLE) | (bookkeeping - BOOKKEEPING.keys())
    if unknown:
        raise ValueError(f"the writer cannot change {sorted(unknown)}")
    if (results or completes or tells or settles) and not columns:
        raise ValueError("only a verdict that changes the task adds results or a copy job")
    parts = [ASSIGNMENTS.get(column, f"{column} = %(set_{column})s") for column in sorted(columns)]
    if settles:
        parts.append(spend.CHARGE_ASSIGNMENT)
    if columns:
        parts.append("updated_at = now()")
    parts += [BOOKKEEPING[name] for name in sorted(bookkeeping)]
    shapes = [guard] if otherwise is None else [guard, otherwise]
    prior = ["id", "status", "provider_task_id"]
    if any(shape.exact for shape in shapes):
        prior += ["progress", "usage", "estimated_seconds"]
    if any(shape.n_values for shape in shapes):
        prior.append("request")
    copy_job = (
        COPY_JOB.format(completed=TaskStatus.COMPLETED.value, queue=QUEUE, copy_job=STORE_RESULTS)
        if completes
        else ""
    )
    return STATEMENT.format(
        prior_columns=", ".join(prior),
        guard_a=_guard("a_", guard),
        arm_b="" if otherwise is None else ARM_B.format(guard_b=_guard("b_", otherwise)),
        moved=MOVED.format(
            assignments=", ".join(parts),
            returning=f", {spend.MOVED_RETURNING}" if settles else "",
        )
        if parts
        else "",
        results=RESULTS.format(result_pending=ResultStatus.PENDING.value) if results else "",
        side_effects=SIDE_EFFECTS.format(channel=TASK_CHANNEL, copy_job=copy_job)
        if columns
        else "",
        outcome="%(a_outcome)s"
        if otherwise is None
        else "CASE hit.arm WHEN 1 THEN %(a_outcome)s ELSE %(b_outcome)s END",
        detail="%(a_detail)s"
        if otherwise is None
        else "CASE hit.arm WHEN 1 THEN %(a_detail)s ELSE %(b_detail)s END",
        effects="(SELECT count(*) FROM side_effects)" if columns else "0",
        webhooks=(webhook_messages.WRITER_CTE if tells else "")
        + (spend.WRITER_CTE if settles else ""),
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


def _guard_params(arm: str, guard: Guard) -> dict[str, Any]:
    """The parameters of a guard's condition (see `_guard`)."""
    params: dict[str, Any] = {f"{arm}provider_task_id": guard.provider_task_id}
    if guard.unchanged is not None:
        progress, usage, estimate = guard.unchanged
        params[f"{arm}progress"] = progress
        params[f"{arm}usage"] = Jsonb(usage) if usage is not None else None
        params[f"{arm}estimate"] = estimate
    return params


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
    columns = frozenset(verdict.changes)
    params: dict[str, Any] = {
        **{f"set_{column}": _value(value) for column, value in verdict.changes.items()},
        **_guard_params("a_", guard),
        "task_id": task_id,
        "a_outcome": verdict.outcome.value,
        "a_detail": verdict.detail,
        "to_status": verdict.to_status.value if verdict.to_status else None,
        "kind": event.kind.value,
        "provider_status": event.provider_status,
        "body": event.body,
        "headers": Jsonb(dict(event.headers)) if event.headers is not None else None,
    }
    if verdict.result_urls:
        params["result_urls"] = list(verdict.result_urls)
    settles = verdict.to_status in TERMINAL and bool(columns)
    if settles:
        # EvoLink charges the images it made: those a completion lists; none otherwise.
        completed = verdict.to_status == TaskStatus.COMPLETED
        params["images_charged"] = len(verdict.result_urls) if completed else 0
    alternative = None
    if otherwise is not None:
        alternative_verdict, alternative_guard = otherwise
        alternative = Shape.of(alternative_guard)
        params.update(_guard_params("b_", alternative_guard))
        params["b_outcome"] = alternative_verdict.outcome.value
        params["b_detail"] = alternative_verdict.detail
    statement = statement_for(
        columns,
        bookkeeping,
        Shape.of(guard),
        alternative,
        results=bool(verdict.result_urls),
        completes=verdict.to_status == TaskStatus.COMPLETED and bool(columns),
        tells=webhook_messages.tells(verdict.to_status) and bool(columns),
        settles=settles,
    )
    return statement, params


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
