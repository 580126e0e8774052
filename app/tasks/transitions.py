"""The one rule for what moves a task, and the guards derived from it.

`judge` decides what a provider message (a callback, a poll's answer, a create's answer)
means for a task in a given state: terminal states never change, statuses never go
backwards, a repeat is a duplicate, a message that contradicts a terminal state is kept as
an anomaly. edithook's own decisions (time limits, failed creates) and a client's cancel
are rules of the same shape: a function from a task's state to a `Verdict`.

`guard_for` derives, from any such rule, the states of a task for which the verdict it gave
still holds, by running the rule over every status. app.tasks.writer writes a verdict only
if the row is in one of those states; nothing else states which transitions are allowed.
Nothing here touches the database.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Any

from app.evolink.schemas import ERROR_REQUEST_CANCELLED, ProviderTask
from app.vocabulary import (
    MAX_RESULTS,
    NOT_MOVING,
    RANK,
    TERMINAL,
    EventKind,
    EventOutcome,
    ResolvedBy,
    TaskStatus,
)

# The error code of a task whose provider answer, to our own call, lists more results than n.
RESULTS_OVER_N = "provider_results_over_n"


@dataclass(frozen=True)
class TaskState:
    """What a rule reads of a task: as read from its row, or as a message implies it."""

    status: TaskStatus
    provider_task_id: str | None
    progress: int = 0
    request: Mapping[str, Any] = field(default_factory=dict)
    usage: Any = None
    estimated_seconds: float | None = None
    submitted_at: datetime | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    cancel_at: datetime | None = None


@dataclass(frozen=True)
class Verdict:
    """What an observation does to a task: an immutable value that app.tasks.writer writes.

    `changes` are the task's columns to set; an outcome that says the task did not move
    (duplicate, stale, anomaly, rejected) can carry none.
    """

    outcome: EventOutcome
    detail: str | None = None
    to_status: TaskStatus | None = None
    changes: Mapping[str, Any] = field(default_factory=dict)
    result_urls: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.outcome in NOT_MOVING and (self.changes or self.to_status is not None):
            raise ValueError(f"a {self.outcome.value} verdict cannot change the task")
        object.__setattr__(self, "changes", MappingProxyType(dict(self.changes)))
        object.__setattr__(self, "result_urls", tuple(self.result_urls))

    def moves(self, state: TaskState) -> bool:
        """Whether writing this verdict changes the status of a task in `state`."""
        return self.to_status is not None and self.to_status != state.status

    def __hash__(self) -> int:
        return hash((self.outcome, self.detail, self.to_status, self.result_urls))


# A rule decides what a task in a state is to undergo; None: nothing (no event either).
Rule = Callable[[TaskState], "Verdict | None"]


def status_from_provider(status: str, error_code: str | None) -> TaskStatus | None:
    """Our status for a provider status, or None for one we do not know.

    The provider reports a cancellation either as `cancelled` or as `failed` with the error
    code `request_cancelled`; both become `cancelled`.
    """
    match status:
        case "pending":
            return TaskStatus.PENDING
        case "processing":
            return TaskStatus.PROCESSING
        case "completed":
            return TaskStatus.COMPLETED
        case "failed" if error_code == ERROR_REQUEST_CANCELLED:
            return TaskStatus.CANCELLED
        case "failed":
            return TaskStatus.FAILED
        case "cancelled":
            return TaskStatus.CANCELLED
        case _:
            return None


def result_limit(request: Mapping[str, Any] | None) -> int:
    """How many results a task may have: the `n` it asked for, or the provider's maximum
    when its stored request does not say."""
    n = (request or {}).get("n")
    if isinstance(n, int | float) and not isinstance(n, bool) and 1 <= n <= MAX_RESULTS:
        return int(n)
    return MAX_RESULTS


def judge(task: TaskState, observed: ProviderTask, source: EventKind, now: datetime) -> Verdict:
    """Decide what `observed` means for `task` (`now` is when it is decided)."""
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

    current = task.status
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
        return _too_many_results(source, listed, limit, changes, now)

    # Within a status only what differs is a change: a provider holding a task repeats its
    # usage and estimate on every poll, and a repeat must neither count as applied nor wake
    # waiters. A move carries every value the message has, so that it is the same move
    # whatever the task's own values (progress is never lowered by the writer).
    moving = new != current
    progress = 100 if new == TaskStatus.COMPLETED else _progress(observed.progress)
    if progress is not None and (moving or progress > task.progress):
        changes["progress"] = progress
    if observed.usage is not None and (moving or observed.usage != task.usage):
        changes["usage"] = observed.usage
    if observed.task_info is not None and observed.task_info.estimated_time is not None:
        estimate = float(observed.task_info.estimated_time)
        if moving or estimate != task.estimated_seconds:
            changes["estimated_seconds"] = estimate

    if not moving:
        if not changes:
            return Verdict(EventOutcome.DUPLICATE)
        return Verdict(EventOutcome.APPLIED, to_status=new, changes=changes)

    changes["status"] = new
    detail: str | None = None
    urls: tuple[str, ...] = ()
    if new in TERMINAL:
        changes["resolved_by"] = ResolvedBy(source.value)
        changes["finished_at"] = now
    if new == TaskStatus.COMPLETED:
        urls = tuple(url for url in observed.results or [] if isinstance(url, str))
        if not urls:
            detail = "completed without result images"
    elif new in (TaskStatus.FAILED, TaskStatus.CANCELLED):
        error = observed.error
        changes["error_code"] = (error.code_str if error else None) or new.value
        changes["error_message"] = (
            error.message if error else None
        ) or f"the provider reports {observed.status}"
    return Verdict(EventOutcome.APPLIED, detail, new, changes, urls)


def _too_many_results(
    source: EventKind, listed: int, limit: int, changes: dict[str, Any], now: datetime
) -> Verdict:
    """A completion listing more results than the task may have: never written row by row.

    A callback is kept as an anomaly and the task left for a poll to settle; an answer to
    our own call (a poll, a create) would say the same if asked again, so the task fails.
    """
    detail = f"lists {listed} results, but the task asked for at most {limit}"
    if source == EventKind.CALLBACK:
        return Verdict(EventOutcome.ANOMALY, f"{detail}: not applied; a poll settles the task")
    message = f"the provider {detail}"
    verdict = fail(Verdict(EventOutcome.APPLIED, message), source, RESULTS_OVER_N, message, now)
    if "provider_task_id" in changes:
        verdict = dataclasses.replace(
            verdict, changes={**verdict.changes, "provider_task_id": changes["provider_task_id"]}
        )
    return verdict


def fail(verdict: Verdict, source: EventKind, code: str, message: str, now: datetime) -> Verdict:
    """`verdict`, ending the task `failed` with `code` and `message`, as decided by `source`."""
    return dataclasses.replace(
        verdict,
        to_status=TaskStatus.FAILED,
        changes={
            "status": TaskStatus.FAILED,
            "error_code": code,
            "error_message": message,
            "resolved_by": ResolvedBy(source.value),
            "finished_at": now,
        },
    )


# The error codes of a task cancelled before it was submitted: by its client's cancel, or
# because it was still not submitted at its `cancel_at` (`cancel_after_seconds`).
CANCELLED_BY_CLIENT = "cancelled_by_client"
CANCEL_AFTER_ELAPSED = "cancel_after_elapsed"


def _cancel_unsubmitted(by: ResolvedBy, code: str, message: str, now: datetime) -> Verdict:
    return Verdict(
        EventOutcome.APPLIED,
        message,
        TaskStatus.CANCELLED,
        {
            "status": TaskStatus.CANCELLED,
            "error_code": code,
            "error_message": message,
            "resolved_by": by,
            "finished_at": now,
        },
    )


def client_cancel(state: TaskState, now: datetime) -> Verdict | None:
    """A client's cancel: a task not yet submitted (`queued`) is cancelled, and so never
    submitted; any other is left as it is (None, no event) — once the submit job has
    claimed it (`submitting`) the create may already be with EvoLink, which cannot cancel,
    and a terminal task has nothing left to cancel. `cancel_refusal` words the answer."""
    if state.status != TaskStatus.QUEUED:
        return None
    message = "cancelled by its client before it was submitted"
    return _cancel_unsubmitted(ResolvedBy.CLIENT, CANCELLED_BY_CLIENT, message, now)


def cancel_after_elapsed(state: TaskState, now: datetime) -> Verdict | None:
    """`cancel_after_seconds`: a task still not submitted (`queued`, waiting for the submit
    job or for a provider refusing with 429 to take it again) at its `cancel_at` is
    cancelled by edithook; any other is left as it is (None)."""
    if state.status != TaskStatus.QUEUED or state.cancel_at is None or state.cancel_at > now:
        return None
    message = "not submitted within its cancel_after_seconds, so cancelled"
    return _cancel_unsubmitted(ResolvedBy.SYSTEM, CANCEL_AFTER_ELAPSED, message, now)


def cancel_refusal(status: TaskStatus) -> str | None:
    """Why a client's cancel leaves a task in `status` as it is (the API's 409); None when
    the answer is the task itself: `queued` is cancelled (`client_cancel`), and a task
    already `cancelled`, by whoever, is what the client asked for."""
    match status:
        case TaskStatus.QUEUED | TaskStatus.CANCELLED:
            return None
        case TaskStatus.SUBMITTING:
            return (
                "The task is being submitted to EvoLink, which cannot cancel a task once it "
                "has it; the task goes on. If EvoLink refuses the create for now, the task is "
                "queued again and can then be cancelled."
            )
        case TaskStatus.PENDING | TaskStatus.PROCESSING:
            return (
                f"The task is already submitted to EvoLink ({status.value}), which cannot "
                "cancel it; the task goes on."
            )
        case _:
            return f"The task has already ended ({status.value}); there is nothing to cancel."


def _progress(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return max(0, min(100, int(value)))


@dataclass(frozen=True)
class Guard:
    """The states of a task for which a verdict holds; app.tasks.writer writes it only then.

    `statuses` come from running the rule over every status. The provider id must be the
    one judged. `unchanged` (progress, usage, estimated_seconds), when set, must be as
    judged too: a verdict that does not move the task (a duplicate, or new progress within
    a status) depends on them. `n_values`, when set, are the stored `request.n` values
    (as text, "" for none) for which the verdict holds: a state the message only implies
    does not know the task's `n`.
    """

    statuses: frozenset[TaskStatus]
    provider_task_id: str | None
    unchanged: tuple[int, Any, float | None] | None = None
    n_values: frozenset[str] | None = None


def statuses_for(rule: Rule, state: TaskState, verdict: Verdict) -> frozenset[TaskStatus]:
    """The statuses for which `rule` gives `verdict`, the rest of `state` as it is."""
    return frozenset(
        status
        for status in TaskStatus
        if rule(dataclasses.replace(state, status=status)) == verdict
    )


# Values of the fields a verdict within one status may depend on, that no real state has
# both of: a verdict that is the same under both does not depend on them.
PERTURBED = ((0, {"\u2260": 0}, -1.0), (100, {"\u2260": 1}, -2.0))


def guard_for(rule: Rule, state: TaskState, verdict: Verdict) -> Guard:
    """The guard under which `verdict` (the rule's own for `state`) may be written.

    A verdict that moves the task holds whatever its progress, usage and estimate (the
    writer never lowers progress; setting a value the row has changes nothing). One that
    changes them within a status is guarded on them; so is one that changes nothing when
    it would differ for other values of them (a duplicate of the same progress).
    """
    unchanged = None
    if not verdict.moves(state) and (
        bool(verdict.changes)
        or any(
            rule(dataclasses.replace(state, progress=p, usage=u, estimated_seconds=e)) != verdict
            for p, u, e in PERTURBED
        )
    ):
        unchanged = (state.progress, state.usage, state.estimated_seconds)
    return Guard(statuses_for(rule, state, verdict), state.provider_task_id, unchanged)


# The stored `n` values a guard can name: none, and each the provider allows.
N_CANDIDATES = ("", *(str(n) for n in range(1, MAX_RESULTS + 1)))


def implied_guard(rule: Rule, state: TaskState, verdict: Verdict) -> Guard:
    """`guard_for` a state the message only implies (its request unknown): also derives the
    stored `n` values for which the verdict holds."""
    n_values = frozenset(
        text
        for text in N_CANDIDATES
        if rule(dataclasses.replace(state, request={"n": int(text)} if text else {})) == verdict
    )
    return dataclasses.replace(guard_for(rule, state, verdict), n_values=n_values)


@functools.cache
def terminal_guards(
    status: str, error_code: str | None, listed: int, source: EventKind
) -> tuple[Guard, Guard] | None:
    """For a terminal message of this shape naming the task's provider id: the guard of its
    applied verdict against a task in flight, and that of its duplicate; None when it is
    not applied to a task in flight. Derived once per shape from a message of that shape
    (its id, progress, usage and texts do not change which states the verdicts hold for).
    """
    pid = "p"
    message = ProviderTask.model_validate(
        {
            "id": pid,
            "status": status,
            "error": {"code": error_code} if error_code is not None else None,
            "results": [f"r{i}" for i in range(listed)],
        }
    )
    at = datetime.min
    rule = functools.partial(_judge_at, observed=message, source=source, now=at)
    in_flight = TaskState(TaskStatus.PROCESSING, pid)
    applied = rule(in_flight)
    if applied is None or applied.to_status not in TERMINAL:
        return None
    repeated = TaskState(applied.to_status, pid)
    duplicate = rule(repeated)
    assert duplicate == Verdict(EventOutcome.DUPLICATE), duplicate
    return implied_guard(rule, in_flight, applied), guard_for(rule, repeated, duplicate)


def _judge_at(
    state: TaskState, *, observed: ProviderTask, source: EventKind, now: datetime
) -> Verdict:
    return judge(state, observed, source, now)
