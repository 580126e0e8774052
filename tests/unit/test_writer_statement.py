"""The writer's statement text, without a database: what goes into it and what is refused.

What the statement does to a task is checked against Postgres in
tests/integration/tasks/test_writer.py; here, that a statement is built only from known
columns and constants, and holds only the parts its verdict can need.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from app.evolink.schemas import ProviderTask
from app.tasks import writer
from app.tasks.transitions import TaskState, Verdict, guard_for, judge, terminal_guards
from app.tasks.writer import Event, Shape
from app.vocabulary import IN_FLIGHT, EventKind, EventOutcome, TaskStatus

NOW = datetime(2026, 1, 1, tzinfo=UTC)
TASK = uuid.UUID("00000000-0000-4000-8000-000000000001")


def test_a_column_outside_the_whitelist_is_refused() -> None:
    """Column names are interpolated into the SQL, so only known ones are accepted."""
    shape = Shape(frozenset({TaskStatus.PROCESSING}))
    with pytest.raises(ValueError, match=r"cannot change \['client', 'request'\]"):
        writer.statement_for(frozenset({"status", "client", "request"}), frozenset(), shape)
    with pytest.raises(ValueError, match=r"cannot change \['rewound'\]"):
        writer.statement_for(frozenset({"status"}), frozenset({"rewound"}), shape)
    statement = writer.statement_for(
        frozenset({"status", "progress"}), frozenset({"polled"}), shape
    )
    assert "progress = GREATEST(t.progress, %(set_progress)s)" in statement
    assert "status = %(set_status)s" in statement
    assert "poll_count = t.poll_count + 1" in statement


@pytest.mark.parametrize("value", ["x'; DROP TABLE tasks; --", "Completed", "a b", "1.5"])
def test_only_words_become_constants_of_a_guard(value: str) -> None:
    """A guard's statuses and n values are written into the statement's text: anything but
    a word of [a-z0-9_] is refused rather than quoted."""
    with pytest.raises(ValueError, match="not a status or an n"):
        writer.statement_for(
            frozenset(),
            frozenset(),
            Shape(frozenset({TaskStatus.PENDING}), n_values=frozenset({value})),
        )


def prepared(observed: ProviderTask, status: TaskStatus) -> tuple[str, dict[str, object]]:
    """The statement and parameters `settle` sends for `observed` and a task in `status`."""
    state = TaskState(status, observed.id, progress=10)
    verdict = judge(state, observed, EventKind.CALLBACK, NOW)
    guard = guard_for(lambda s: judge(s, observed, EventKind.CALLBACK, NOW), state, verdict)
    return writer.prepare(TASK, verdict, guard, Event(EventKind.CALLBACK))


def test_a_completion_without_a_read_holds_every_part_of_both_verdicts() -> None:
    """The fast path's statement: the completion from any status in flight, its results,
    copy job and notification, else the duplicate; n checked against the stored request."""
    observed = ProviderTask.model_validate(
        {"id": "p1", "status": "completed", "results": ["https://files.example/0.png"]}
    )
    guards = terminal_guards("completed", None, 1, EventKind.CALLBACK)
    assert guards is not None
    applied, repeated = guards
    verdict = judge(TaskState(TaskStatus.PROCESSING, "p1"), observed, EventKind.CALLBACK, NOW)
    statement, params = writer.prepare(
        TASK,
        verdict,
        applied,
        Event(EventKind.CALLBACK),
        otherwise=(Verdict(EventOutcome.DUPLICATE), repeated),
    )
    in_flight = ", ".join(f"'{status}'" for status in sorted(IN_FLIGHT))
    assert f"prior.status IN ({in_flight})" in statement
    assert "prior.status IN ('completed')" in statement
    assert "coalesce(prior.request ->> 'n', '') IN ('', '1', '2'" in statement
    for part in ("INSERT INTO task_results", "procrastinate_defer_jobs_v1", "pg_notify"):
        assert part in statement
    assert params["result_urls"] == ["https://files.example/0.png"]
    assert params["b_outcome"] == "duplicate"


def test_a_progress_statement_holds_no_results_copy_job_or_duplicate_arm() -> None:
    """A verdict within a status, read and judged: guarded on the values judged, it notifies
    waiters and writes nothing else it cannot need."""
    observed = ProviderTask.model_validate({"id": "p1", "status": "processing", "progress": 40})
    statement, params = prepared(observed, TaskStatus.PROCESSING)
    assert "prior.progress = %(a_progress)s::smallint" in statement
    assert "pg_notify" in statement
    for part in ("INSERT INTO task_results", "procrastinate_defer_jobs_v1", "THEN 2", "request"):
        assert part not in statement
    assert set(params) >= {"a_progress", "a_usage", "a_estimate"}
    assert not any(name.startswith("b_") for name in params)


def test_an_event_only_statement_updates_and_notifies_nothing() -> None:
    """A duplicate read and judged adds its event and nothing else."""
    observed = ProviderTask.model_validate({"id": "p1", "status": "completed", "results": []})
    statement, _ = prepared(observed, TaskStatus.COMPLETED)
    assert "INSERT INTO task_events" in statement
    for part in ("UPDATE tasks", "pg_notify", "procrastinate_defer_jobs_v1", "task_results"):
        assert part not in statement


@pytest.mark.parametrize(
    ("body", "charged"),
    [
        (
            {
                "status": "completed",
                "results": ["https://f.example/0.png", "https://f.example/1.png"],
            },
            2,
        ),
        ({"status": "completed", "results": []}, 0),
        ({"status": "failed", "error": {"code": "service_error", "message": "m"}}, 0),
        ({"status": "cancelled"}, 0),
    ],
)
def test_a_move_into_a_terminal_status_settles_the_budget(
    body: dict[str, object], charged: int
) -> None:
    """The statement of a verdict ending a task sets the images charged (what a completion
    lists; none otherwise) and settles the reservation, only for a task that moved."""
    observed = ProviderTask.model_validate({"id": "p1", **body})
    statement, params = prepared(observed, TaskStatus.PROCESSING)
    assert "images_charged = COALESCE(t.images_charged, %(images_charged)s)" in statement
    assert "UPDATE client_spend" in statement
    assert "moved.from_status <> %(to_status)s::text" in statement
    assert params["images_charged"] == charged


def test_a_statement_that_ends_nothing_settles_nothing() -> None:
    """Progress and a move to pending touch no budget and no charge."""
    for body, status in (
        ({"status": "processing", "progress": 40}, TaskStatus.PROCESSING),
        ({"status": "pending"}, TaskStatus.SUBMITTING),
    ):
        observed = ProviderTask.model_validate({"id": "p1", **body})
        statement, params = prepared(observed, status)
        assert "client_spend" not in statement
        assert "images_charged" not in statement
        assert "images_charged" not in params
