"""Budget periods: where the UTC day or month that holds a moment starts, and when it ends.

A pure rule, with no I/O: the reservation (`app.budgets.spend`), the usage report and the
metrics all take a period's start from here, so that a task is counted in one period only.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from app.vocabulary import BudgetPeriod


def period_start(at: datetime, period: BudgetPeriod) -> datetime:
    """The start (UTC midnight) of the day or month holding `at`, which must be aware."""
    if at.tzinfo is None:
        raise ValueError("a moment without a time zone names no period")
    utc = at.astimezone(UTC)
    day = utc.replace(hour=0, minute=0, second=0, microsecond=0)
    return day if period == BudgetPeriod.DAY else day.replace(day=1)


def period_end(start: datetime, period: BudgetPeriod) -> datetime:
    """When the period starting at `start` ends and the next begins: the budget's reset."""
    if period == BudgetPeriod.DAY:
        return start + timedelta(days=1)
    if start.month == 12:
        return start.replace(year=start.year + 1, month=1)
    return start.replace(month=start.month + 1)


def resets_at(at: datetime, period: BudgetPeriod) -> datetime:
    """When the budget of the period holding `at` resets."""
    return period_end(period_start(at, period), period)
