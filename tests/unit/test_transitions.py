"""The rules of the task state machine, without a database.

`judge` is checked over every combination of task status, provider status, provider-id
relation and progress against the rules as the docs state them; hypothesis checks the
invariants (terminal never changes, status and progress never go back, a repeat is a
duplicate) and that every guard derived from a rule admits only states for which writing
the verdict has the effect judging them would have.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.evolink.schemas import ProviderTask
from app.tasks.transitions import (
    Guard,
    TaskState,
    Verdict,
    guard_for,
    implied_guard,
    judge,
    result_limit,
    status_from_provider,
    statuses_for,
    terminal_guards,
)
from app.vocabulary import (
    IN_FLIGHT,
    NOT_MOVING,
    RANK,
    TERMINAL,
    EventKind,
    EventOutcome,
    ResolvedBy,
    TaskStatus,
)

NOW = datetime(2026, 1, 1, tzinfo=UTC)
PID = "task-unified-1700000000-unit0001"
SOURCES = (EventKind.CALLBACK, EventKind.POLL, EventKind.SUBMISSION)

# What the provider may say: its status and error code, and the status it means for us.
PROVIDER = {
    ("pending", None): TaskStatus.PENDING,
    ("processing", None): TaskStatus.PROCESSING,
    ("completed", None): TaskStatus.COMPLETED,
    ("failed", "content_policy"): TaskStatus.FAILED,
    ("failed", None): TaskStatus.FAILED,
    ("failed", "request_cancelled"): TaskStatus.CANCELLED,
    ("cancelled", None): TaskStatus.CANCELLED,
    ("teleported", None): None,
}


def message(
    status: str,
    *,
    pid: str = PID,
    code: str | None = None,
    progress: int | None = None,
    results: int = 1,
    usage: Any = None,
    estimate: float | None = None,
) -> ProviderTask:
    return ProviderTask.model_validate(
        {
            "id": pid,
            "status": status,
            "progress": progress,
            "error": {"code": code, "message": "m"} if code else None,
            "results": [f"https://files.example/{i}.png" for i in range(results)],
            "usage": usage,
            "task_info": {"estimated_time": estimate} if estimate is not None else None,
        }
    )


def effect(state: TaskState, verdict: Verdict) -> dict[str, Any]:
    """The task's fields after the writer writes `verdict` over `state` (progress is never
    lowered), and what the event records."""
    fields = {f.name: getattr(state, f.name) for f in dataclasses.fields(state)}
    for column, value in verdict.changes.items():
        fields[column] = max(value, state.progress) if column == "progress" else value
    moved = verdict.moves(state)
    return {
        **fields,
        "event": (verdict.outcome, verdict.detail, verdict.result_urls, moved, verdict.to_status),
    }


def expected_outcome(
    status: TaskStatus, new: TaskStatus | None, relation: str, progress_change: str
) -> tuple[EventOutcome, TaskStatus | None]:
    """The rules as docs/decisions.md states them: the outcome, and the status moved to."""
    if new is None:
        return EventOutcome.ANOMALY, None
    if relation == "other" or (relation == "none" and status != TaskStatus.SUBMITTING):
        return EventOutcome.ANOMALY, None
    if status in TERMINAL:
        if new == status:
            return EventOutcome.DUPLICATE, None
        return (EventOutcome.ANOMALY if new in TERMINAL else EventOutcome.STALE), None
    if RANK[new] < RANK[status]:
        return EventOutcome.STALE, None
    if new != status:
        return EventOutcome.APPLIED, new
    if progress_change == "higher" or relation == "none":
        return EventOutcome.APPLIED, None
    return EventOutcome.DUPLICATE, None


PROGRESS = {"lower": 10, "equal": 50, "higher": 90, "none": None}


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("relation", ["same", "other", "none"])
@pytest.mark.parametrize("progress_change", list(PROGRESS))
def test_judge_follows_the_rules_for_every_combination(
    source: EventKind, relation: str, progress_change: str
) -> None:
    """Every task status, provider status, provider-id relation and progress gets the
    documented outcome, and a move sets exactly what its new status implies."""
    for status, ((said, code), new) in itertools.product(TaskStatus, PROVIDER.items()):
        task_pid = None if relation == "none" else PID
        state = TaskState(status, task_pid, progress=50)
        observed = message(
            said,
            pid="someone-else" if relation == "other" else PID,
            code=code,
            progress=PROGRESS[progress_change],
        )
        verdict = judge(state, observed, source, NOW)
        outcome, moved_to = expected_outcome(status, new, relation, progress_change)
        case = (status, said, code, relation, progress_change)
        assert verdict.outcome == outcome, case
        assert (verdict.to_status if verdict.moves(state) else None) == moved_to, case
        if moved_to is None:
            assert "status" not in verdict.changes, case
            continue
        assert verdict.changes["status"] == moved_to
        finished = moved_to in TERMINAL
        assert ("finished_at" in verdict.changes) == finished, case
        assert verdict.changes.get("resolved_by") == (ResolvedBy(source) if finished else None)
        assert ("error_code" in verdict.changes) == (
            moved_to in (TaskStatus.FAILED, TaskStatus.CANCELLED)
        )
        if relation == "none":
            assert verdict.changes["provider_task_id"] == PID


def test_a_cancellation_reported_as_failed_is_cancelled() -> None:
    """Both forms of a cancellation become `cancelled`; an unknown status is None."""
    assert status_from_provider("failed", "request_cancelled") == TaskStatus.CANCELLED
    assert status_from_provider("cancelled", None) == TaskStatus.CANCELLED
    assert status_from_provider("failed", "other") == TaskStatus.FAILED
    assert status_from_provider("queued", None) is None


@pytest.mark.parametrize(
    ("request_", "limit"),
    [({}, 6), ({"n": 2}, 2), ({"n": 6}, 6), ({"n": 0}, 6), ({"n": True}, 6), ({"n": "2"}, 6)],
)
def test_the_result_limit_is_the_tasks_n_or_the_providers_maximum(
    request_: dict[str, Any], limit: int
) -> None:
    """A stored request without a usable n may have the provider's maximum of results."""
    assert result_limit(request_) == limit


@pytest.mark.parametrize("source", SOURCES)
def test_more_results_than_n_never_complete_the_task(source: EventKind) -> None:
    """A callback's is an anomaly; an answer to our own call fails the task."""
    state = TaskState(TaskStatus.PROCESSING, PID, request={"n": 2})
    verdict = judge(state, message("completed", results=3), source, NOW)
    if source == EventKind.CALLBACK:
        assert (verdict.outcome, verdict.to_status) == (EventOutcome.ANOMALY, None)
    else:
        assert verdict.to_status == TaskStatus.FAILED
        assert verdict.changes["error_code"] == "provider_results_over_n"


def test_a_verdict_is_an_immutable_value() -> None:
    """Verdicts cannot be changed once made, nor can their changes."""
    verdict = judge(TaskState(TaskStatus.PENDING, PID), message("completed"), EventKind.POLL, NOW)
    with pytest.raises(dataclasses.FrozenInstanceError):
        verdict.outcome = EventOutcome.STALE  # type: ignore[misc]
    with pytest.raises(TypeError):
        verdict.changes["status"] = TaskStatus.FAILED  # type: ignore[index]


@pytest.mark.parametrize("outcome", sorted(NOT_MOVING))
def test_an_outcome_that_does_not_move_the_task_cannot_carry_changes(
    outcome: EventOutcome,
) -> None:
    """A duplicate, stale, anomaly or rejected verdict that would change the task is refused."""
    with pytest.raises(ValueError, match="cannot change the task"):
        Verdict(outcome, to_status=TaskStatus.FAILED)
    with pytest.raises(ValueError, match="cannot change the task"):
        Verdict(outcome, changes={"progress": 10})


def test_the_guard_of_a_terminal_callback_is_every_status_in_flight() -> None:
    """Derived from judge: a completion applies from any status in flight, and repeats only
    the status it names."""
    for (said, code), new in PROVIDER.items():
        guards = terminal_guards(said, code, 1, EventKind.CALLBACK)
        if new not in TERMINAL:
            assert guards is None
            continue
        assert guards is not None
        applied, repeated = guards
        assert applied.statuses == IN_FLIGHT
        assert applied.unchanged is None
        assert applied.n_values == frozenset({"", "1", "2", "3", "4", "5", "6"})
        assert repeated.statuses == {new}
        assert repeated.unchanged is None


def test_a_completion_listing_three_results_holds_only_for_n_of_three_or_more() -> None:
    """The stored n values a guard admits are derived from result_limit."""
    guards = terminal_guards("completed", None, 3, EventKind.CALLBACK)
    assert guards is not None
    assert guards[0].n_values == frozenset({"", "3", "4", "5", "6"})


# --- properties -------------------------------------------------------------------------

statuses = st.sampled_from(list(TaskStatus))
usages = st.sampled_from([None, {"credits": 1}, {"credits": 2}])
estimates = st.sampled_from([None, 10.0, 20.0])
requests = st.sampled_from([{}, *({"n": n} for n in range(1, 7))])


@st.composite
def states(draw: st.DrawFn) -> TaskState:
    return TaskState(
        draw(statuses),
        draw(st.sampled_from([None, PID, "another"])),
        draw(st.integers(0, 100)),
        draw(requests),
        draw(usages),
        draw(estimates),
    )


@st.composite
def messages(draw: st.DrawFn) -> ProviderTask:
    said, code = draw(st.sampled_from(list(PROVIDER)))
    return message(
        said,
        pid=draw(st.sampled_from([PID, "another", ""])),
        code=code,
        progress=draw(st.one_of(st.none(), st.integers(-5, 105))),
        results=draw(st.integers(0, 8)),
        usage=draw(usages),
        estimate=draw(estimates),
    )


def after(state: TaskState, verdict: Verdict) -> TaskState:
    fields = effect(state, verdict)
    return TaskState(**{f.name: fields[f.name] for f in dataclasses.fields(TaskState)})


@given(states(), messages(), st.sampled_from(SOURCES))
def test_a_terminal_task_never_changes(
    state: TaskState, observed: ProviderTask, source: EventKind
) -> None:
    """Whatever is said about a completed, failed or cancelled task, it stays as it is."""
    state = dataclasses.replace(state, status=TaskStatus.COMPLETED)
    for status in TERMINAL:
        verdict = judge(dataclasses.replace(state, status=status), observed, source, NOW)
        assert not verdict.changes
        assert verdict.outcome in NOT_MOVING


@given(states(), messages(), st.sampled_from(SOURCES))
def test_status_and_progress_never_go_back(
    state: TaskState, observed: ProviderTask, source: EventKind
) -> None:
    """A verdict never lowers a task's rank or its progress."""
    result = after(state, judge(state, observed, source, NOW))
    assert RANK[result.status] >= RANK[state.status]
    assert result.progress >= state.progress


@given(states(), messages(), st.sampled_from(SOURCES))
def test_a_repeat_is_a_duplicate(
    state: TaskState, observed: ProviderTask, source: EventKind
) -> None:
    """The same message again, once applied, is a duplicate (bar a too-long completion from
    our own call, which fails the task and then contradicts it)."""
    first = judge(state, observed, source, NOW)
    if first.changes.get("error_code") == "provider_results_over_n":
        return
    again = judge(after(state, first), observed, source, NOW)
    if first.outcome == EventOutcome.APPLIED:
        assert again.outcome == EventOutcome.DUPLICATE
    else:
        assert again == first


def holds(guard: Guard, state: TaskState) -> bool:
    """Whether a row in `state` passes `guard`, as the writer's statement checks it."""
    if state.status not in guard.statuses or state.provider_task_id != guard.provider_task_id:
        return False
    if guard.unchanged is not None and guard.unchanged != (
        state.progress,
        state.usage,
        state.estimated_seconds,
    ):
        return False
    n = state.request.get("n")
    return guard.n_values is None or ("" if n is None else str(n)) in guard.n_values


@settings(max_examples=500)
@given(states(), st.data(), messages(), st.sampled_from(SOURCES))
def test_a_derived_guard_admits_only_states_for_which_the_verdict_holds(
    judged: TaskState, data: st.DataObject, observed: ProviderTask, source: EventKind
) -> None:
    """Writing a verdict over any row its guard admits does what judging that row does."""
    rule = functools.partial(_judge, observed=observed, source=source)
    # The row as another writer may have left it since: same task (id, request), any status.
    row = dataclasses.replace(
        judged,
        status=data.draw(st.one_of(st.just(judged.status), statuses)),
        progress=data.draw(st.one_of(st.just(judged.progress), st.integers(0, 100))),
        usage=data.draw(usages),
        estimated_seconds=data.draw(estimates),
    )
    verdict = rule(judged)
    guard = guard_for(rule, judged, verdict)
    assert holds(guard, judged)
    if holds(guard, row):
        assert effect(row, verdict) == effect(row, rule(row))


@given(states(), messages(), st.sampled_from(SOURCES))
def test_a_guard_for_an_implied_state_admits_only_rows_for_which_it_holds(
    row: TaskState, observed: ProviderTask, source: EventKind
) -> None:
    """The fast paths' guards (judged against the state a message implies, request unknown)
    admit only rows for which writing the verdict does what judging them does."""
    rule = functools.partial(_judge, observed=observed, source=source)
    for implied in (
        TaskState(TaskStatus.PROCESSING, observed.id),
        TaskState(TaskStatus.SUBMITTING, None),
    ):
        verdict = rule(implied)
        guard = implied_guard(rule, implied, verdict)
        if holds(guard, row):
            assert effect(row, verdict) == effect(row, rule(row))


@given(statuses, messages())
def test_the_statuses_of_a_guard_are_exactly_those_judge_agrees_with(
    status: TaskStatus, observed: ProviderTask
) -> None:
    """statuses_for runs judge over every status: a status is in it iff judge agrees."""
    rule = functools.partial(_judge, observed=observed, source=EventKind.POLL)
    state = TaskState(status, PID)
    verdict = rule(state)
    derived = statuses_for(rule, state, verdict)
    assert status in derived
    for other in TaskStatus:
        assert (other in derived) == (rule(dataclasses.replace(state, status=other)) == verdict)


def _judge(state: TaskState, *, observed: ProviderTask, source: EventKind) -> Verdict:
    return judge(state, observed, source, NOW)


@settings(max_examples=300)
@given(states(), st.data(), st.sampled_from(SOURCES))
def test_a_guard_within_a_status_admits_only_rows_with_the_fields_judged(
    judged: TaskState, data: st.DataObject, source: EventKind
) -> None:
    """A message repeating the task's status judged on its progress, usage and estimate: the
    guard admits only rows for which the verdict (a duplicate, or new values) still holds."""
    said = [key for key, new in PROVIDER.items() if new == judged.status]
    if not said or judged.provider_task_id is None:
        return
    status, code = data.draw(st.sampled_from(said))
    observed = message(
        status,
        pid=judged.provider_task_id,
        code=code,
        progress=data.draw(st.one_of(st.none(), st.integers(0, 100))),
        usage=data.draw(usages),
        estimate=data.draw(estimates),
    )
    rule = functools.partial(_judge, observed=observed, source=source)
    row = dataclasses.replace(
        judged,
        progress=data.draw(st.integers(0, 100)),
        usage=data.draw(usages),
        estimated_seconds=data.draw(estimates),
    )
    verdict = rule(judged)
    if holds(guard_for(rule, judged, verdict), row):
        assert effect(row, verdict) == effect(row, rule(row))


def test_new_progress_within_a_status_is_guarded_on_the_progress_judged() -> None:
    """Judged at 10 %, a report of 50 % is not written over a row now at 60 %; a duplicate
    judged at 50 % not over one at 10 %."""
    observed = message("processing", progress=50)
    rule = functools.partial(_judge, observed=observed, source=EventKind.CALLBACK)
    for judged_at, row_at in ((10, 60), (50, 10)):
        judged = TaskState(TaskStatus.PROCESSING, PID, progress=judged_at)
        guard = guard_for(rule, judged, rule(judged))
        assert guard.unchanged == (judged_at, None, None)
        assert not holds(guard, dataclasses.replace(judged, progress=row_at))
