"""`GET /metrics`: what operators watch, in the Prometheus text format, read from Postgres.

Every replica answers the same numbers: they come from the shared database, not from
process memory. Each query is served by a partial index, so a scrape stays cheap as the
task table grows.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse
from sqlalchemy import text

from app.deps import SessionDep
from app.tasks.reconcile import callback_loss
from app.vocabulary import (
    IN_FLIGHT,
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
        "delivery attempts of the last 24 h by outcome, and the age of the oldest webhook "
        "message not yet delivered."
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
        _line("edithook_results_pending", int(pending_results or 0)),
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
        _line("edithook_webhook_oldest_undelivered_seconds", round(float(oldest or 0), 3)),
    ]
    return PlainTextResponse("\n".join(lines) + "\n", media_type="text/plain; version=0.0.4")
