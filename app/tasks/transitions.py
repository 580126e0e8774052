"""The one place where what the provider says moves a task.

Callbacks, polls and submission responses all come through `observe`, always with the task's
row locked, so that duplicates and races resolve the same way whatever their source:
terminal states never change, statuses never go backwards, and a message that contradicts a
terminal state is kept as an anomaly instead of being applied.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.evolink.schemas import ProviderTask
from app.jobs import STORE_RESULTS, enqueue
from app.models import Task, TaskEvent, TaskResult
from app.notify import notify_task_changed
from app.tasks.lifecycle import (
    RANK,
    TERMINAL,
    EventKind,
    EventOutcome,
    TaskStatus,
    status_from_provider,
)


class TaskState(Protocol):
    """What `judge` reads of a task: a locked `Task` row, or a state assumed by app.tasks.direct."""

    @property
    def status(self) -> str: ...
    @property
    def provider_task_id(self) -> str | None: ...
    @property
    def progress(self) -> int: ...
    @property
    def request(self) -> dict[str, Any]: ...
    @property
    def usage(self) -> dict[str, Any] | None: ...
    @property
    def estimated_seconds(self) -> float | None: ...


# The provider's largest `n`: no task may have more results than that.
MAX_RESULTS = 6
# The error code of a task whose provider answer, to our own call, lists more results than n.
RESULTS_OVER_N = "provider_results_over_n"


def result_limit(request: dict[str, Any] | None) -> int:
    """How many results a task may have: the `n` it asked for, or the provider's maximum
    when its stored request does not say. app.tasks.direct states the same rule in SQL."""
    n = (request or {}).get("n")
    if isinstance(n, int | float) and not isinstance(n, bool) and 1 <= n <= MAX_RESULTS:
        return int(n)
    return MAX_RESULTS


@dataclass
class Verdict:
    """What an observation does to a task; `apply_verdict` carries it out."""

    outcome: EventOutcome
    detail: str | None = None
    to_status: TaskStatus | None = None
    changes: dict[str, Any] = field(default_factory=dict)
    result_urls: list[str] = field(default_factory=list)


def judge(task: TaskState, observed: ProviderTask, source: EventKind) -> Verdict:
    """Decide what `observed` means for `task`, without touching either."""
    error_code = observed.error.code_str if observed.error else None
    new = status_from_provider(observed.status, error_code)
    if new is None:
        return Verdict(EventOutcome.ANOMALY, f"unknown provider status {observed.status!r}")

    changes: dict[str, Any] = {}
    if task.provider_task_id is None:
        # An ambiguous submission left us without the provider's id; the task's own callback
        # URL (or the submission response itself) names it.
        if task.status != TaskStatus.SUBMITTING or not observed.id:
            return Verdict(EventOutcome.ANOMALY, "the task has no provider id to match")
        changes["provider_task_id"] = observed.id
    elif observed.id != task.provider_task_id:
        return Verdict(
            EventOutcome.ANOMALY,
            f"names provider task {observed.id!r}, but this task is {task.provider_task_id!r}",
        )

    current = TaskStatus(task.status)
    if current in TERMINAL:
        if new == current:
            return Verdict(EventOutcome.DUPLICATE)
        if new in TERMINAL:
            return Verdict(
                EventOutcome.ANOMALY, f"says {new.value}, but the task is already {current.value}"
            )
        return Verdict(EventOutcome.STALE, f"says {new.value}; the task is already {current.value}")

    if RANK[new] < RANK[current]:
        return Verdict(EventOutcome.STALE, f"says {new.value}; the task is already {current.value}")

    listed, limit = len(observed.results or []), result_limit(task.request)
    if new == TaskStatus.COMPLETED and listed > limit:
        return _too_many_results(source, listed, limit, changes)

    progress = _progress(observed.progress)
    if new == TaskStatus.COMPLETED:
        progress = 100
    if progress is not None and progress > task.progress:
        changes["progress"] = progress
    # Only what differs is a change: a provider holding a task repeats its usage and
    # estimate on every poll, and a repeat must neither count as applied nor wake waiters.
    if observed.usage is not None and observed.usage != task.usage:
        changes["usage"] = observed.usage
    if observed.task_info is not None and observed.task_info.estimated_time is not None:
        estimate = float(observed.task_info.estimated_time)
        if estimate != task.estimated_seconds:
            changes["estimated_seconds"] = estimate

    if new == current:
        if not changes:
            return Verdict(EventOutcome.DUPLICATE)
        return Verdict(EventOutcome.APPLIED, to_status=new, changes=changes)

    changes["status"] = new.value
    verdict = Verdict(EventOutcome.APPLIED, to_status=new, changes=changes)
    if new in TERMINAL:
        changes["resolved_by"] = source.value
        changes["finished_at"] = datetime.now(UTC)
    if new == TaskStatus.COMPLETED:
        verdict.result_urls = [url for url in observed.results or [] if isinstance(url, str)]
        if not verdict.result_urls:
            verdict.detail = "completed without result images"
    elif new in (TaskStatus.FAILED, TaskStatus.CANCELLED):
        error = observed.error
        changes["error_code"] = (error.code_str if error else None) or new.value
        changes["error_message"] = (
            error.message if error else None
        ) or f"the provider reports {observed.status}"
    return verdict


def _too_many_results(
    source: EventKind, listed: int, limit: int, changes: dict[str, Any]
) -> Verdict:
    """A completion listing more results than the task may have: never written row by row.

    A callback is kept as an anomaly and the task left for a poll to settle; an answer to
    our own call (a poll, a create) would say the same if asked again, so the task fails.
    """
    detail = f"lists {listed} results, but the task asked for at most {limit}"
    if source == EventKind.CALLBACK:
        return Verdict(EventOutcome.ANOMALY, f"{detail}: not applied; a poll settles the task")
    message = f"the provider {detail}"
    verdict = fail(Verdict(EventOutcome.APPLIED, message), source, RESULTS_OVER_N, message)
    if "provider_task_id" in changes:
        verdict.changes["provider_task_id"] = changes["provider_task_id"]
    return verdict


def fail(verdict: Verdict, source: EventKind, code: str, message: str) -> Verdict:
    """Make `verdict` end the task `failed` with `code` and `message`, as decided by `source`."""
    verdict.to_status = TaskStatus.FAILED
    verdict.changes = {
        "status": TaskStatus.FAILED.value,
        "error_code": code,
        "error_message": message,
        "resolved_by": source.value,
        "finished_at": datetime.now(UTC),
    }
    return verdict


async def find_locked(session: AsyncSession, task_id: uuid.UUID) -> Task | None:
    """The task's row, locked until the transaction ends; None when there is no such task."""
    statement = select(Task).where(Task.id == task_id).with_for_update()
    return (await session.execute(statement)).scalar_one_or_none()


async def lock_task(session: AsyncSession, task_id: uuid.UUID) -> Task:
    """`find_locked` for a task known to exist (tasks are never deleted)."""
    task = await find_locked(session, task_id)
    if task is None:
        raise LookupError(f"task {task_id} does not exist")
    return task


def _progress(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return max(0, min(100, int(value)))


async def observe(
    session: AsyncSession,
    task: Task,
    observed: ProviderTask,
    source: EventKind,
    *,
    body: str | None = None,
    headers: dict[str, Any] | None = None,
) -> TaskEvent:
    """Apply what the provider said to `task` (whose row the caller holds locked) and record it.

    The event, the task's new state and its result rows are written in the caller's
    transaction; the caller commits.
    """
    verdict = judge(task, observed, source)
    return await apply_verdict(
        session, task, verdict, source, provider_status=observed.status, body=body, headers=headers
    )


async def apply_verdict(
    session: AsyncSession,
    task: Task,
    verdict: Verdict,
    source: EventKind,
    *,
    provider_status: str | None = None,
    body: str | None = None,
    headers: dict[str, Any] | None = None,
) -> TaskEvent:
    """Write `verdict`: the task's changes, its result rows and the event that explains them."""
    from_status = task.status
    if verdict.changes:
        for name, value in verdict.changes.items():
            setattr(task, name, value)
        task.updated_at = datetime.now(UTC)
    if verdict.result_urls:
        await session.execute(
            insert(TaskResult)
            .values(
                [
                    {"task_id": task.id, "index": index, "provider_url": url}
                    for index, url in enumerate(verdict.result_urls)
                ]
            )
            .on_conflict_do_nothing(index_elements=["task_id", "index"])
        )
    moved = verdict.to_status is not None and verdict.to_status.value != from_status
    if moved and verdict.to_status == TaskStatus.COMPLETED:
        # In the same transaction as the completion: no completed task lacks its copy job.
        await enqueue(session, STORE_RESULTS, {"task_id": str(task.id)}, lock=f"results:{task.id}")
    if verdict.changes:
        await notify_task_changed(session, task.id)
    event = TaskEvent(
        task_id=task.id,
        kind=source.value,
        outcome=verdict.outcome.value,
        from_status=from_status if moved else None,
        to_status=verdict.to_status.value if moved and verdict.to_status else None,
        provider_status=provider_status,
        detail=verdict.detail,
        body=body,
        headers=headers,
    )
    session.add(event)
    return event
