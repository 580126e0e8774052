"""Copying a completed task's result images into our own storage: the copy job's body.

`store_task_results` is called by the job (`app.results.jobs`) and is, like the job, the
edge of its work: it owns its transactions, keeps each one short, and never holds one open
across a call to the provider, a download or a storage write. It is safe to run any number
of times, concurrently too: a row is stored or failed at most once.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final, LiteralString

import httpx
from psycopg_pool import AsyncConnectionPool
from sqlalchemy import Select, func, select, update
from sqlalchemy.engine import CursorResult
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.db import DirectUnavailable, fetch_one, transaction
from app.evolink.client import EvoLinkClient, EvoLinkError
from app.evolink.schemas import STATUS_COMPLETED, TERMINAL_STATUSES, ProviderTask
from app.models import Task, TaskEvent, TaskResult
from app.notify import TASK_CHANNEL, notify_task_changed
from app.results.fetch import FetchError, fetch_image
from app.results.storage import ResultStorage, StorageError
from app.tasks.transitions import result_limit
from app.vocabulary import EventKind, EventOutcome, ResolvedBy, ResultStatus, TaskStatus
from app.webhooks import messages as webhook_messages

LINK_TTL: Final = timedelta(hours=24)
# The least wait before asking the provider again when it could not confirm the results.
CONFIRM_RETRY_SECONDS: Final = 30.0
MIN_RETRY_SECONDS: Final = 5.0
MAX_RETRY_SECONDS: Final = 300.0
NOT_CONFIRMED: Final = "not confirmed by the provider"
EXPIRED: Final = "the provider's link expired before the image could be copied"

_PENDING = ResultStatus.PENDING
# Refusals about our account (key, credit), not about the task: they wait for an operator.
_ABOUT_US: Final = frozenset({401, 402})
# Completions learnt from EvoLink's answer to our own authenticated call, not a callback.
_OUR_OWN_CALLS: Final = frozenset({ResolvedBy.POLL, ResolvedBy.SUBMISSION})


@dataclass
class StoreReport:
    """What one run did: rows it stored and failed, rows still pending after it.

    `retry_in` (seconds) is set when something should be tried again later.
    """

    stored: int = 0
    failed: int = 0
    pending: int = 0
    retry_in: float | None = None

    def ask_retry(self, seconds: float) -> None:
        self.retry_in = seconds if self.retry_in is None else min(self.retry_in, seconds)


@dataclass(frozen=True)
class _Run:
    """What a run needs to know: its task, when the task's links stop working, fetch limits."""

    task_id: uuid.UUID
    provider_task_id: str
    finished_at: datetime
    deadline: datetime
    max_bytes: int
    allow_loopback: bool
    result_limit: int
    callback_token: str | None

    def expired(self) -> bool:
        return datetime.now(UTC) >= self.deadline

    def backoff(self) -> float:
        """Seconds to the next attempt: a tenth of the time since completion, within bounds,
        and never past the deadline, so a last attempt comes right as the link expires."""
        now = datetime.now(UTC)
        delay = (now - self.finished_at).total_seconds() / 10
        delay = min(MAX_RETRY_SECONDS, max(MIN_RETRY_SECONDS, delay))
        return max(1.0, min(delay, (self.deadline - now).total_seconds()))


@dataclass(frozen=True)
class _Target:
    row_id: int
    index: int
    url: str


@dataclass(frozen=True)
class _Facts:
    """What the first read found: the task's provider id, completion time, result limit,
    what told us it completed, and its result rows by index (as `_Target`s, with status)."""

    provider_task_id: str
    finished_at: datetime
    result_limit: int
    resolved_by: ResolvedBy | None
    rows: list[tuple[_Target, ResultStatus]]

    def pending(self) -> list[_Target]:
        return [target for target, status in self.rows if status == _PENDING]

    def told_by_the_provider(self) -> bool:
        """Whether the rows came from EvoLink's own answer to our authenticated call (a
        poll, the create), which a confirming GET would only repeat. A callback's may be
        forged by anyone holding its URL, and a completion without rows may have left some
        out: those are confirmed first."""
        return bool(self.rows) and self.resolved_by in _OUR_OWN_CALLS


# The task, and its result rows as parallel arrays by index, in one statement.
LOAD = """
SELECT t.status, t.provider_task_id, coalesce(t.finished_at, t.updated_at), t.resolved_by,
       t.request -> 'n',
       coalesce(array_agg(r.id ORDER BY r.index) FILTER (WHERE r.id IS NOT NULL), '{}'),
       coalesce(array_agg(r.index ORDER BY r.index) FILTER (WHERE r.id IS NOT NULL), '{}'),
       coalesce(array_agg(r.provider_url ORDER BY r.index) FILTER (WHERE r.id IS NOT NULL), '{}'),
       coalesce(array_agg(r.status ORDER BY r.index) FILTER (WHERE r.id IS NOT NULL), '{}')
FROM tasks t LEFT JOIN task_results r ON r.task_id = t.id
WHERE t.id = %(task_id)s
GROUP BY t.id
"""

# A stored image recorded, if its row is still pending for the URL that was fetched (a
# concurrent run may have re-pointed it at another confirmed URL); and the task's waiters
# notified when no other row is pending. The statement's snapshot still shows this row
# pending, hence `id <>`.
# The webhook CTE (`app.webhooks.messages`) is made from enum values only.
STORE = (
    """
WITH stored AS (
    UPDATE task_results
    SET status = %(stored)s, content_type = %(content_type)s, size_bytes = %(size_bytes)s,
        sha256 = %(sha256)s, width = %(width)s, height = %(height)s,
        storage_key = %(storage_key)s, stored_at = now(), error = NULL
    WHERE id = %(row_id)s AND status = %(pending)s AND provider_url = %(url)s
    RETURNING task_id
)"""  # noqa: S608
    + webhook_messages.STORE_CTE
    + """
SELECT count(*),
       CASE WHEN count(*) > 0 AND NOT EXISTS (
           SELECT 1 FROM task_results
           WHERE task_id = %(task_id)s AND status = %(pending)s AND id <> %(row_id)s
       ) THEN pg_notify(%(channel)s, %(task_id)s::text) END
FROM stored
"""
)


async def _one(
    pool: AsyncConnectionPool,
    sessions: async_sessionmaker[AsyncSession],
    statement: LiteralString,
    params: dict[str, Any],
) -> Any:
    """Run one statement in a transaction of its own: on the direct pool, or through the
    engine when the pool cannot (`app.db`). Both statements here are safe to run twice: a
    read, and an update guarded by the row's pending status."""
    try:
        return await fetch_one(pool, statement, params)
    except DirectUnavailable:
        pass  # fetch_one logged why; the engine's own errors speak for an outage
    async with transaction(sessions) as session:
        connection = await session.connection()
        return (await connection.exec_driver_sql(statement, params)).first()


async def store_task_results(
    pool: AsyncConnectionPool,
    sessions: async_sessionmaker[AsyncSession],
    evolink: EvoLinkClient,
    storage: ResultStorage,
    http: httpx.AsyncClient,
    task_id: uuid.UUID,
    *,
    max_bytes: int,
    allow_loopback: bool,
    link_ttl: timedelta = LINK_TTL,
    callback_token: str | None = None,
) -> StoreReport:
    """Copy the pending result images of the completed task `task_id` into `storage`.

    Nothing is downloaded that EvoLink did not list in an answer to our own call. Rows
    written from a callback (or a completion without rows) are confirmed first with the
    provider's `GET /v1/tasks/{id}`: the rows are made to match the confirmed result list
    (a mismatch is kept as an anomaly event), and only confirmed URLs are fetched. A
    provider that does not say `completed` yet confirms nothing and refutes nothing: the
    rows stay pending and a retry is asked; one that ended the task otherwise, or no longer
    knows it, fails them. Rows written from a poll's or the create's answer came from that
    same `GET` (or the create) already and are fetched as they are.

    Each image is stored under `ResultStorage.key_for(task_id, index, ext)` and its row
    marked `stored`. A permanent failure marks the row `failed`; a retryable one leaves it
    `pending` with `error` set and sets `retry_in`, until `finished_at + link_ttl`, after
    which it is `failed` too. When no row is left pending, the transaction that settled
    the last one notifies the task's waiters (`app.notify`). No form of `callback_token`
    is kept from the provider's answers.

    The first read and each stored image's record are one statement each on `pool` (the
    engine's when it cannot run them); the rarer paths go through `sessions`.
    """
    report = StoreReport()
    facts = await _load(pool, sessions, task_id)
    if facts is None:
        return report
    run = _Run(
        task_id,
        facts.provider_task_id,
        facts.finished_at,
        facts.finished_at + link_ttl,
        max_bytes,
        allow_loopback,
        facts.result_limit,
        callback_token,
    )
    if facts.told_by_the_provider():
        targets = facts.pending()
    else:
        targets = await _confirm(sessions, evolink, run, facts, report)
    for target in targets:
        await _store_one(pool, sessions, storage, http, run, target, report)
    if not facts.rows and not targets and report.retry_in is None:
        # Settled with no image at all (the provider confirmed none, or could not confirm
        # and the links are gone): no stored or failed row will tell the webhooks, so this
        # run does (`make_succeeded` makes them once).
        async with transaction(sessions) as session:
            await webhook_messages.make_succeeded(session, task_id)
    return report


async def _load(
    pool: AsyncConnectionPool, sessions: async_sessionmaker[AsyncSession], task_id: uuid.UUID
) -> _Facts | None:
    """What the run needs to know of the task, or None when there is nothing to do."""
    row = await _one(pool, sessions, LOAD, {"task_id": task_id})
    if row is None:
        return None
    status, provider_task_id, finished_at, resolved_by, n, ids, indexes, urls, statuses = row
    if status != TaskStatus.COMPLETED or not provider_task_id:
        return None
    rows = [
        (_Target(row_id, index, url), ResultStatus(state))
        for row_id, index, url, state in zip(ids, indexes, urls, statuses, strict=True)
    ]
    facts = _Facts(
        provider_task_id,
        finished_at,
        result_limit({"n": n}),
        ResolvedBy(resolved_by) if resolved_by is not None else None,
        rows,
    )
    # A completed task without result rows is still asked about: the provider may list
    # results that the message which completed the task left out.
    if rows and not facts.pending():
        return None
    return facts


async def _confirm(
    sessions: async_sessionmaker[AsyncSession],
    evolink: EvoLinkClient,
    run: _Run,
    facts: _Facts,
    report: StoreReport,
) -> list[_Target]:
    """Ask the provider, bring the rows in line with its answer, return what to fetch."""
    try:
        observed = await evolink.get_task(run.provider_task_id, hide=run.callback_token)
    except EvoLinkError as exc:
        if exc.outcome == "permanent" and exc.status_code not in _ABOUT_US:
            reason = f"the provider could not confirm the results: {exc}"
            await _fail(sessions, run, reason, report)
        else:
            delay = exc.retry_after
            if delay is None and exc.outcome == "permanent":
                delay = MAX_RETRY_SECONDS
            reason = f"could not ask the provider: {exc}"
            await _retry_confirmation(sessions, run, reason, delay, report)
        return []

    confirmed: list[str] | None = None
    if observed.id != run.provider_task_id:
        why = f"the provider answered for task {observed.id!r}"
    elif observed.status == STATUS_COMPLETED:
        confirmed = [url for url in observed.results or [] if isinstance(url, str)]
    elif observed.status in TERMINAL_STATUSES:
        confirmed = []  # it ended without results: none of ours can be confirmed
    else:
        why = f"the provider says {observed.status!r}"
    if confirmed is not None and len(confirmed) > run.result_limit:
        # Broken beyond use: which of them would be ours? No row is added, none confirmed.
        reason = (
            f"{NOT_CONFIRMED}: it lists {len(confirmed)} results, but the task asked for "
            f"at most {run.result_limit}"
        )
        await _fail(sessions, run, reason, report)
        return []
    if confirmed is None:
        # Not finished there (yet): nothing is confirmed, but nothing is refuted either.
        await _retry_confirmation(
            sessions, run, f"{why}; results unconfirmed", None, report, observed=observed
        )
        return []
    if [(target.index, target.url) for target, _ in facts.rows] == list(enumerate(confirmed)):
        # The rows as read are the confirmed list, index by index: nothing to bring in line.
        # Each record is guarded by the row's status and URL, should another run move it.
        return facts.pending()
    return await _reconcile(sessions, run, observed, confirmed, report)


async def _reconcile(
    sessions: async_sessionmaker[AsyncSession],
    run: _Run,
    observed: ProviderTask,
    confirmed: list[str],
    report: StoreReport,
) -> list[_Target]:
    async with transaction(sessions) as session:
        # The task's lock orders this against transitions and against other runs.
        await session.execute(select(Task.id).where(Task.id == run.task_id).with_for_update())
        rows = await _results(session, run.task_id)
        by_index = {row.index: row for row in rows}
        notes: list[str] = []
        for index, url in enumerate(confirmed):
            row = by_index.get(index)
            if row is None:
                session.add(TaskResult(task_id=run.task_id, index=index, provider_url=url))
                notes.append(f"result {index} added")
            elif row.provider_url != url:
                if row.status == _PENDING:
                    row.provider_url = url
                    row.error = None
                    notes.append(f"result {index} replaced by the confirmed URL")
                else:
                    notes.append(f"result {index} differs (already {row.status}, kept)")
        for row in rows:
            if row.index >= len(confirmed) and row.status == _PENDING:
                row.status = ResultStatus.FAILED
                row.error = NOT_CONFIRMED
                report.failed += 1
                notes.append(f"result {row.index} {NOT_CONFIRMED}")
        if notes:
            detail = (
                f"the provider says {observed.status} with {len(confirmed)} result(s); "
                f"recorded {len(rows)}: " + "; ".join(notes)
            )
            session.add(_event(run, EventOutcome.ANOMALY, detail, observed))
        await session.flush()
        pending = [row for row in await _results(session, run.task_id) if row.status == _PENDING]
        if report.failed and not pending:
            await notify_task_changed(session, run.task_id)
            await webhook_messages.make_succeeded(session, run.task_id)
    return [_Target(row.id, row.index, row.provider_url) for row in pending]


async def _store_one(
    pool: AsyncConnectionPool,
    sessions: async_sessionmaker[AsyncSession],
    storage: ResultStorage,
    http: httpx.AsyncClient,
    run: _Run,
    target: _Target,
    report: StoreReport,
) -> None:
    try:
        image = await fetch_image(
            http, target.url, max_bytes=run.max_bytes, allow_loopback=run.allow_loopback
        )
        key = ResultStorage.key_for(run.task_id, target.index, image.extension)
        await storage.put(key, image.data)
    except FetchError as exc:
        if not exc.retryable:
            await _fail(sessions, run, exc.reason, report, target)
            return
        reason = exc.reason
    except StorageError as exc:
        reason = str(exc)
    else:
        params = {
            "row_id": target.row_id,
            "url": target.url,
            "task_id": run.task_id,
            "stored": ResultStatus.STORED.value,
            "pending": _PENDING.value,
            "channel": TASK_CHANNEL,
            "content_type": image.content_type,
            "size_bytes": len(image.data),
            "sha256": image.sha256,
            "width": image.width,
            "height": image.height,
            "storage_key": key,
        }
        row = await _one(pool, sessions, STORE, params)
        report.stored += row[0] if row else 0
        return

    if run.expired():
        await _fail(sessions, run, f"{EXPIRED}: {reason}", report, target)
        return
    async with transaction(sessions) as session:
        await session.execute(
            update(TaskResult)
            .where(TaskResult.id == target.row_id, TaskResult.status == _PENDING)
            .values(error=reason)
        )
    report.pending += 1
    report.ask_retry(run.backoff())


async def _fail(
    sessions: async_sessionmaker[AsyncSession],
    run: _Run,
    reason: str,
    report: StoreReport,
    target: _Target | None = None,
) -> None:
    """Mark the pending row `target`, or every pending row of the task, failed with
    `reason`, and record it in an event. A `target` no longer pending is left as it is and
    records nothing; without one, the reason is recorded even when no row was pending."""
    rows = TaskResult.id == target.row_id if target else TaskResult.task_id == run.task_id
    async with transaction(sessions) as session:
        done = await session.execute(
            update(TaskResult)
            .where(rows, TaskResult.status == _PENDING)
            .values(status=ResultStatus.FAILED, error=reason)
        )
        count = _count(done)
        if target is not None and not count:
            return
        detail = (
            reason if target is None else f"result {target.index} could not be copied: {reason}"
        )
        session.add(_event(run, EventOutcome.ERROR, detail))
        if count:
            report.failed += count
            await _notify_if_settled(session, run.task_id)


async def _retry_confirmation(
    sessions: async_sessionmaker[AsyncSession],
    run: _Run,
    reason: str,
    retry_after: float | None,
    report: StoreReport,
    *,
    observed: ProviderTask | None = None,
) -> None:
    """Leave the pending rows pending with `reason` shown, or fail them once links expired.

    With `observed` (an answer that confirms nothing), the answer is kept as an anomaly,
    once per change of `reason`: a retry that finds the same situation adds no event.
    """
    if run.expired():
        await _fail(sessions, run, f"{EXPIRED}: {reason}", report)
        return
    async with transaction(sessions) as session:
        changed = await session.execute(
            update(TaskResult)
            .where(
                TaskResult.task_id == run.task_id,
                TaskResult.status == _PENDING,
                TaskResult.error.is_distinct_from(reason),
            )
            .values(error=reason)
        )
        if observed is not None and _count(changed):
            session.add(_event(run, EventOutcome.ANOMALY, reason, observed))
        pending = await session.scalar(_pending_count(run.task_id))
    report.pending += pending or 0
    # Asking again soon after a hiccup, then less and less often while the link lives.
    report.ask_retry(retry_after or max(CONFIRM_RETRY_SECONDS, run.backoff()))


def _event(
    run: _Run, outcome: EventOutcome, detail: str, observed: ProviderTask | None = None
) -> TaskEvent:
    # The provider's answer to our confirming poll is a poll's event; a copy's own fate is
    # a storage event.
    return TaskEvent(
        task_id=run.task_id,
        kind=EventKind.POLL if observed is not None else EventKind.STORAGE,
        outcome=outcome,
        provider_status=observed.status if observed is not None else None,
        detail=detail,
        body=observed.model_dump_json(exclude_none=True) if observed is not None else None,
    )


async def _results(session: AsyncSession, task_id: uuid.UUID) -> list[TaskResult]:
    rows = await session.execute(
        select(TaskResult).where(TaskResult.task_id == task_id).order_by(TaskResult.index)
    )
    return list(rows.scalars())


def _count(result: object) -> int:
    return result.rowcount if isinstance(result, CursorResult) else 0


def _pending_count(task_id: uuid.UUID) -> Select[int]:
    return select(func.count()).where(TaskResult.task_id == task_id, TaskResult.status == _PENDING)


async def _notify_if_settled(session: AsyncSession, task_id: uuid.UUID) -> None:
    """Wake the task's waiters if none of its results is pending any more (sent at commit)."""
    if not await session.scalar(_pending_count(task_id)):
        await notify_task_changed(session, task_id)
        await webhook_messages.make_succeeded(session, task_id)
