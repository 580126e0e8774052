"""Budget periods and the soft threshold, without a database: where a UTC day or month
starts and ends, and how many images reach a ratio of a budget."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.budgets.periods import period_end, period_start, resets_at
from app.budgets.spend import threshold_images
from app.vocabulary import BudgetPeriod

DAY, MONTH = BudgetPeriod.DAY, BudgetPeriod.MONTH


def test_a_day_starts_at_utc_midnight_whatever_the_offset_of_the_moment() -> None:
    """23:30 at -05:00 is 04:30 UTC the next day: that UTC day."""
    moment = datetime(2026, 12, 1, 23, 30, tzinfo=timezone(timedelta(hours=-5)))
    assert period_start(moment, DAY) == datetime(2026, 12, 2, tzinfo=UTC)
    assert resets_at(moment, DAY) == datetime(2026, 12, 3, tzinfo=UTC)


def test_a_month_starts_on_the_first_and_december_resets_into_january() -> None:
    moment = datetime(2026, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)
    assert period_start(moment, MONTH) == datetime(2026, 12, 1, tzinfo=UTC)
    assert resets_at(moment, MONTH) == datetime(2027, 1, 1, tzinfo=UTC)
    assert period_end(datetime(2028, 2, 1, tzinfo=UTC), MONTH) == datetime(2028, 3, 1, tzinfo=UTC)


def test_the_first_instant_of_a_period_belongs_to_it() -> None:
    start = datetime(2027, 3, 1, tzinfo=UTC)
    assert period_start(start, MONTH) == start
    assert period_start(start - timedelta(microseconds=1), MONTH) == datetime(
        2027, 2, 1, tzinfo=UTC
    )


def test_a_moment_without_a_time_zone_is_refused() -> None:
    with pytest.raises(ValueError, match="time zone"):
        period_start(datetime(2026, 12, 1), DAY)


@given(
    st.datetimes(
        min_value=datetime(2000, 1, 1),
        max_value=datetime(2100, 1, 1),
        timezones=st.just(UTC),
    ),
    st.sampled_from(list(BudgetPeriod)),
)
def test_every_moment_lies_in_exactly_its_period(moment: datetime, period: BudgetPeriod) -> None:
    """start <= moment < end, and the end is the next period's start."""
    start = period_start(moment, period)
    end = period_end(start, period)
    assert start <= moment < end
    assert period_start(end, period) == end
    assert start.tzinfo is not None
    assert start.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    ("budget", "ratio", "images"),
    [(20, 0.8, 16), (10, 0.7, 7), (10, 0.75, 8), (3, 0.1, 1), (100, 1.0, 100), (1, 0.5, 1)],
)
def test_the_threshold_is_the_ratio_of_the_budget_rounded_up(
    budget: int, ratio: float, images: int
) -> None:
    """0.7 of 10 is 7 although 10 * 0.7 is 7.000000000000001 in floating point."""
    assert threshold_images(budget, ratio) == images
