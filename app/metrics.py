"""`GET /metrics`: what operators watch, in the Prometheus text format, read from Postgres.

Every replica answers the same numbers: they come from the shared database, not from
process memory. Each query is served by a partial index, so a scrape stays cheap as the
task table grows.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse
from sqlalchemy import text

from app.budgets.periods import period_start
from app.deps import SessionDep
from app.tasks.reconcile import callback_loss
from app.vocabulary import (
    IN_FLIGHT,
    BudgetPeriod,
    MessageStatus,
    ResolvedBy,
    ResultStatus,
    TaskStatus,
    sql_list,
)

# In the order of the lifecycle, as the lines are printed.
_IN_FLIGHT = [status for status in TaskStatus if status in IN_FLIGHT]
# Literal lists, built from the enums (no input), so that the partial indexes serve them.
IN_FLIGHT_COUNTS = text(
    f"SELECT status, count(*) FROM tasks WHERE status IN ({sql_list(IN_FLIGHT)}) GROUP BY status"  # noqa: S608
)
PENDING_RESULTS = text(
    f"SELECT count(*) FROM task_results WHERE status = '{ResultStatus.PENDING.value}'"  # noqa: S608
)

# Webhook attempts of the last 24 h by outcome; the oldest message still to deliver.
WEBHOOK_ATTEMPTS = text(
    "SELECT outcome, count(*) FROM webhook_attempts WHERE attempted_at > :since GROUP BY outcome"
)
OLDEST_UNDELIVERED = text(
    "SELECT extract(epoch FROM clock_timestamp() - min(created_at)) FROM webhook_messages"  # noqa: S608
    f" WHERE status = '{MessageStatus.PENDING.value}'"
)
WEBHOOK_OUTCOMES = ("delivered", "retrying", "failed", "disabled")

# Tasks that ended in the last 24 h by client and outcome, with the images charged (the
# partial index on finished_at serves it). One series per client and terminal status: the
# clients are the services an operator made, a short list.
ENDED = text(
    "SELECT client, status, count(*), coalesce(sum(images_charged), 0) FROM tasks"
    " WHERE finished_at IS NOT NULL AND finished_at >= :since GROUP BY client, status"
    " ORDER BY client, status"
)
# Each budgeted client's current period: its budget, what is charged and reserved, and
# whether its soft threshold was crossed.
BUDGETS = text(
    "SELECT c.name, c.budget_images, coalesce(s.charged, 0), coalesce(s.reserved, 0),"
    " s.threshold_sent_at IS NOT NULL"
    " FROM clients c LEFT JOIN client_spend s ON s.client = c.name"
    " AND s.period = c.budget_period"
    " AND s.period_start = CASE c.budget_period WHEN 'day' THEN CAST(:day_start AS timestamptz)"
    " ELSE CAST(:month_start AS timestamptz) END"
    " WHERE c.budget_images IS NOT NULL AND c.budget_period IS NOT NULL ORDER BY c.name"
)

router = APIRouter(tags=["ops"])

WINDOW = timedelta(hours=24)


def _line(name: str, value: float, **labels: str) -> str:
    rendered = ",".join(f'{key}="{val}"' for key, val in sorted(labels.items()))
    return f"{name}{{{rendered}}} {value:g}" if labels else f"{name} {value:g}"


@router.get(
    "/metrics",
    summary="Operational metrics (Prometheus text format)",
    response_class=PlainTextResponse,
    description=(
        "Tasks in flight by status, tasks finished in the last 24 h by what told us "
        "(callback, poll, submission, system), the callback-loss rate (the share of "
        "provider-decided endings learnt by polling), result copies still pending, webhook "
        "delivery attempts of the last 24 h by outcome, the age of the oldest webhook "
        "message not yet delivered, tasks ended in the last 24 h by client and status with "
        "the images charged by client, and each budgeted client's current period (budget, "
        "charged, reserved, soft threshold crossed)."
    ),
)
async def get_metrics(session: SessionDep) -> PlainTextResponse:
    in_flight = (await session.execute(IN_FLIGHT_COUNTS)).all()
    finished = await callback_loss(session, datetime.now(UTC) - WINDOW)
    pending_results = await session.scalar(PENDING_RESULTS)
    since = {"since": datetime.now(UTC) - WINDOW}
    attempts = {
        str(outcome): int(count)
        for outcome, count in (await session.execute(WEBHOOK_ATTEMPTS, since)).all()
    }
    oldest = await session.scalar(OLDEST_UNDELIVERED)
    counts = {str(status): int(count) for status, count in in_flight}
    lines = _task_lines(counts, finished, int(pending_results or 0))
    lines += _webhook_lines(attempts, float(oldest or 0))
    lines += _usage_lines((await session.execute(ENDED, since)).all())
    now = datetime.now(UTC)
    periods = {
        "day_start": period_start(now, BudgetPeriod.DAY),
        "month_start": period_start(now, BudgetPeriod.MONTH),
    }
    lines += _budget_lines((await session.execute(BUDGETS, periods)).all())
    return PlainTextResponse("\n".join(lines) + "\n", media_type="text/plain; version=0.0.4")


def _task_lines(
    counts: dict[str, int], finished: dict[str, int], pending_results: int
) -> list[str]:
    lines = [
        "# HELP edithook_tasks_in_flight Tasks not yet terminal, by status.",
        "# TYPE edithook_tasks_in_flight gauge",
    ]
    lines += [
        _line("edithook_tasks_in_flight", counts.get(status, 0), status=status)
        for status in _IN_FLIGHT
    ]
    lines += [
        "# HELP edithook_tasks_finished_24h Tasks that ended in the last 24 h, by what told us.",
        "# TYPE edithook_tasks_finished_24h gauge",
    ]
    lines += [
        _line("edithook_tasks_finished_24h", finished.get(by, 0), resolved_by=by)
        for by in ResolvedBy
    ]
    polled = finished.get(ResolvedBy.POLL, 0)
    by_provider = finished.get(ResolvedBy.CALLBACK, 0) + polled
    loss = polled / by_provider if by_provider else 0.0
    lines += [
        "# HELP edithook_callback_loss_ratio_24h Share of provider endings learnt by polling.",
        "# TYPE edithook_callback_loss_ratio_24h gauge",
        _line("edithook_callback_loss_ratio_24h", round(loss, 6)),
        "# HELP edithook_results_pending Result images not yet copied into storage.",
        "# TYPE edithook_results_pending gauge",
        _line("edithook_results_pending", pending_results),
    ]
    return lines


def _webhook_lines(attempts: dict[str, int], oldest: float) -> list[str]:
    lines = [
        "# HELP edithook_webhook_attempts_24h Webhook attempts of the last 24 h, by outcome.",
        "# TYPE edithook_webhook_attempts_24h gauge",
    ]
    lines += [
        _line("edithook_webhook_attempts_24h", int(attempts.get(outcome, 0)), outcome=outcome)
        for outcome in WEBHOOK_OUTCOMES
    ]
    lines += [
        "# HELP edithook_webhook_oldest_undelivered_seconds Age of the oldest pending message.",
        "# TYPE edithook_webhook_oldest_undelivered_seconds gauge",
        _line("edithook_webhook_oldest_undelivered_seconds", round(oldest, 3)),
    ]
    return lines


def _usage_lines(ended: Sequence[Sequence[Any]]) -> list[str]:
    """Tasks ended in the last 24 h by client and outcome, and the images charged."""
    lines = [
        "# HELP edithook_tasks_ended_24h Tasks that ended in the last 24 h, by client and status.",
        "# TYPE edithook_tasks_ended_24h gauge",
    ]
    charged: dict[str, int] = {}
    for row in ended:
        client, status, count, images = row
        lines.append(_line("edithook_tasks_ended_24h", int(count), client=client, status=status))
        charged[client] = charged.get(client, 0) + int(images)
    lines += [
        "# HELP edithook_images_charged_24h Images charged for tasks that ended in the last 24 h.",
        "# TYPE edithook_images_charged_24h gauge",
    ]
    lines += [
        _line("edithook_images_charged_24h", images, client=client)
        for client, images in sorted(charged.items())
    ]
    return lines


def _budget_lines(budgets: Sequence[Sequence[Any]]) -> list[str]:
    """Each budgeted client's current period."""
    names = (
        ("edithook_budget_images", "Images per budget period."),
        ("edithook_budget_charged_images", "Images charged in the current budget period."),
        ("edithook_budget_reserved_images", "Images reserved by the period's unfinished tasks."),
        (
            "edithook_budget_threshold_crossed",
            "1 once the current period's soft threshold was crossed (its message made).",
        ),
    )
    lines: list[str] = []
    for position, (name, description) in enumerate(names, start=1):
        lines += [f"# HELP {name} {description}", f"# TYPE {name} gauge"]
        lines += [_line(name, int(row[position]), client=row[0]) for row in budgets]
    return lines
