"""Usage reports: sums over tasks created in a time range, and a client's budget now.

Figures are read from the tasks themselves (`images_reserved`, `images_charged`), so a
report and the tasks it sums always agree, for clients with or without a budget. Functions
take the session first and never commit.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Date, cast, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.budgets.periods import period_end, period_start
from app.errors import Unprocessable
from app.models import Client, ClientSpend, Task
from app.usage.schemas import BudgetRead, UsageFigures, UsageGroup, UsageReport

DEFAULT_SPAN = timedelta(days=30)
MAX_SPAN = timedelta(days=366)
MAX_GROUPS = 1000


@dataclass(frozen=True)
class Window:
    """`[start, end)` on the tasks' `created_at`."""

    start: datetime
    end: datetime


def window(start: datetime | None, end: datetime | None, now: datetime) -> Window:
    """The range a report covers: `to` defaults to now, `from` to 30 days before `to`; at
    most 366 days, `from` before `to` (else a 422 naming the parameter)."""
    end = end or now
    if start is None:
        try:
            start = end - DEFAULT_SPAN
        except OverflowError:
            raise _invalid("query.to", "is too early to count 30 days back from") from None
    if start >= end:
        raise _invalid("query.from", "must be before `to`")
    if end - start > MAX_SPAN:
        raise _invalid("query.to", f"must be at most {MAX_SPAN.days} days after `from`")
    return Window(start, end)


def _invalid(field: str, message: str) -> Unprocessable:
    return Unprocessable(
        "1 problem(s) found; see `errors`.",
        errors=[{"field": field, "message": message, "code": "value_error"}],
    )


def _key(group_by: str) -> ColumnElement[Any]:
    """The expression a report groups by (`group_by` already checked by its pattern)."""
    if group_by == "day":
        return cast(func.timezone("UTC", Task.created_at), Date)
    if group_by == "status":
        return Task.status.expression
    if group_by == "client":
        return Task.client.expression
    value: ColumnElement[Any] = Task.metadata_[group_by.removeprefix("metadata.")].astext
    return value


async def report(
    session: AsyncSession, where: list[ColumnElement[bool]], span: Window, group_by: str
) -> UsageReport:
    """The tasks matching `where` created in `span`, summed and grouped by `group_by`."""
    key = _key(group_by).label("key")
    figures = (
        func.count().label("tasks"),
        func.coalesce(func.sum(Task.images_reserved), 0).label("images_reserved"),
        func.coalesce(func.sum(Task.images_charged), 0).label("images_charged"),
    )
    conditions = [*where, Task.created_at >= span.start, Task.created_at < span.end]
    rows = (
        await session.execute(
            select(key, *figures)
            .where(*conditions)
            .group_by(key)
            .order_by(key.asc().nulls_last())
            .limit(MAX_GROUPS + 1)
        )
    ).all()
    truncated = len(rows) > MAX_GROUPS
    groups = [
        UsageGroup(
            key=None if row.key is None else str(getattr(row.key, "value", row.key)),
            tasks=row.tasks,
            images_reserved=row.images_reserved,
            images_charged=row.images_charged,
        )
        for row in rows[:MAX_GROUPS]
    ]
    if truncated:
        total = (await session.execute(select(*figures).where(*conditions))).one()
        totals = UsageFigures(
            tasks=total.tasks,
            images_reserved=total.images_reserved,
            images_charged=total.images_charged,
        )
    else:
        totals = UsageFigures(
            tasks=sum(group.tasks for group in groups),
            images_reserved=sum(group.images_reserved for group in groups),
            images_charged=sum(group.images_charged for group in groups),
        )
    return UsageReport(
        from_=span.start,
        to=span.end,
        group_by=group_by,
        totals=totals,
        groups=groups,
        truncated=truncated,
    )


async def client_usage(
    session: AsyncSession, client: str, span: Window, group_by: str
) -> UsageReport:
    """The client's own tasks, and its budget now."""
    found = await report(session, [Task.client == client], span, group_by)
    found.budget = await budget(session, client, datetime.now(UTC))
    return found


async def budget(session: AsyncSession, client: str, now: datetime) -> BudgetRead | None:
    """The client's budget and what its current period holds; None without a budget."""
    row = await session.get(Client, client)
    if row is None or row.budget_images is None or row.budget_period is None:
        return None
    start = period_start(now, row.budget_period)
    spend = await session.scalar(
        select(ClientSpend).where(
            ClientSpend.client == client,
            ClientSpend.period == row.budget_period,
            ClientSpend.period_start == start,
        )
    )
    return BudgetRead(
        images=row.budget_images,
        period=row.budget_period,
        soft_ratio=row.budget_soft_ratio,
        period_start=start,
        resets_at=period_end(start, row.budget_period),
        spent=spend.charged if spend else 0,
        reserved=spend.reserved if spend else 0,
        threshold_sent_at=spend.threshold_sent_at if spend else None,
    )
