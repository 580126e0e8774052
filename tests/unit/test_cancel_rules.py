"""The cancel rules, without a database: a client's cancel and `cancel_after_seconds` over
every status, the answer a refused cancel gets, and the guards derived from both rules."""

from __future__ import annotations

import dataclasses
import functools
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.tasks.transitions import (
    CANCEL_AFTER_ELAPSED,
    CANCELLED_BY_CLIENT,
    TaskState,
    Verdict,
    cancel_after_elapsed,
    cancel_refusal,
    client_cancel,
    guard_for,
)
from app.vocabulary import IN_FLIGHT, EventOutcome, ResolvedBy, TaskStatus
from tests.unit.test_transitions import effect, holds, states

NOW = datetime(2026, 1, 1, tzinfo=UTC)
PID = "task-unified-1700000000-unit0001"


def _cancelled_unsubmitted(verdict: Verdict | None, by: ResolvedBy, code: str) -> None:
    assert verdict is not None
    assert verdict.outcome == EventOutcome.APPLIED
    assert verdict.to_status == TaskStatus.CANCELLED
    assert dict(verdict.changes) == {
        "status": TaskStatus.CANCELLED,
        "error_code": code,
        "error_message": verdict.detail,
        "resolved_by": by,
        "finished_at": NOW,
    }


@pytest.mark.parametrize("status", list(TaskStatus))
def test_a_clients_cancel_moves_only_a_queued_task(status: TaskStatus) -> None:
    """Queued: cancelled by the client. Every other status: left as it is, no event."""
    verdict = client_cancel(TaskState(status, None), NOW)
    if status == TaskStatus.QUEUED:
        _cancelled_unsubmitted(verdict, ResolvedBy.CLIENT, CANCELLED_BY_CLIENT)
    else:
        assert verdict is None


@pytest.mark.parametrize("status", list(TaskStatus))
def test_a_refused_cancel_says_why_and_an_accepted_one_says_nothing(status: TaskStatus) -> None:
    """The 409's words: submitting and submitted tasks go on; ended ones have nothing to
    cancel. Queued (cancelled now) and cancelled (already) are answered with the task."""
    refusal = cancel_refusal(status)
    if status in (TaskStatus.QUEUED, TaskStatus.CANCELLED):
        assert refusal is None
    elif status in IN_FLIGHT:
        assert refusal is not None
        assert "EvoLink" in refusal
        assert "goes on" in refusal
    else:
        assert refusal is not None
        assert "already ended" in refusal
        assert status.value in refusal


@pytest.mark.parametrize("status", list(TaskStatus))
@pytest.mark.parametrize("offset", [-1, 0, 1, None])
def test_cancel_after_cancels_only_a_queued_task_at_or_past_its_time(
    status: TaskStatus, offset: int | None
) -> None:
    """Queued with `cancel_at` at or before now: cancelled by the system with its own code.
    Not yet due, no `cancel_at`, or any other status: left alone."""
    cancel_at = None if offset is None else NOW + timedelta(seconds=offset)
    verdict = cancel_after_elapsed(TaskState(status, None, cancel_at=cancel_at), NOW)
    if status == TaskStatus.QUEUED and offset is not None and offset <= 0:
        _cancelled_unsubmitted(verdict, ResolvedBy.SYSTEM, CANCEL_AFTER_ELAPSED)
    else:
        assert verdict is None


@pytest.mark.parametrize(
    "rule",
    [
        functools.partial(client_cancel, now=NOW),
        functools.partial(cancel_after_elapsed, now=NOW),
    ],
)
def test_the_guard_of_a_cancel_is_queued_alone(rule: functools.partial[Verdict | None]) -> None:
    """Derived, not written: a cancel is written only over a row still queued, so a row the
    submit job has claimed meanwhile is never cancelled."""
    state = TaskState(TaskStatus.QUEUED, None, cancel_at=NOW)
    verdict = rule(state)
    assert verdict is not None
    guard = guard_for(rule, state, verdict)
    assert guard.statuses == frozenset({TaskStatus.QUEUED})
    assert guard.provider_task_id is None
    assert guard.unchanged is None


@given(states(), st.data(), st.booleans())
def test_a_cancels_guard_admits_only_rows_it_holds_for(
    judged: TaskState, data: st.DataObject, by_client: bool
) -> None:
    """Writing a cancel over any row its guard admits does what judging that row does."""
    judged = dataclasses.replace(judged, cancel_at=NOW - timedelta(seconds=1))
    rule = functools.partial(client_cancel if by_client else cancel_after_elapsed, now=NOW)
    verdict = rule(judged)
    if verdict is None:
        return
    guard = guard_for(rule, judged, verdict)
    assert holds(guard, judged)
    row = dataclasses.replace(judged, status=data.draw(st.sampled_from(list(TaskStatus))))
    if holds(guard, row):
        again = rule(row)
        assert again is not None
        assert effect(row, verdict) == effect(row, again)
    else:
        assert rule(row) is None
