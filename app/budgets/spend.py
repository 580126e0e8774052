"""Reserving a task's images against its client's budget, and settling them when it ends.

A client with a budget (`clients.budget_images` per `budget_period`) has one `client_spend`
row per period; what the row holds is kept true by two statements and nothing else:

- **reserve** (`reserve`, in the create's transaction, after the task's insert and only for
  a new task): one statement reads the client's budget, adds the task's `n` to the period's
  `reserved` — making the row on the period's first create — only while
  `charged + reserved + n` stays within the budget, and records the row on the task
  (`tasks.spend_id`), so that a task created on one day and ended the next settles the day
  it was counted in. The row's lock serialises concurrent creates of the client on every
  API replica: each sees the sum the one before it committed. When it does not fit, the
  create fails with `BudgetExceeded` (402) and its transaction rolls back: no task, no job.
  The create that first takes the period's total to the soft threshold also makes the
  `client.budget_threshold` messages, once per period (`threshold_sent_at`).
- **settle** (`WRITER_CTE`, a part of the task writer's one statement, in the statements of
  verdicts that move a task into a terminal status): when the task has actually moved
  (`moved.from_status <> to_status`), its reservation leaves `reserved` and what the
  provider charged (`images_charged`, which the same statement sets on the task) joins
  `charged`. A task moves into a terminal status once, so it settles once; cancels and
  failed creates are writer verdicts, so they release through the same path.

Clients without a budget have no rows (docs/decisions.md): their creates take no lock and
their ends update nothing but the task; their usage is read from the tasks.
"""

from __future__ import annotations

import json
import math
import uuid
from datetime import UTC, datetime
from typing import Any, Final

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from app.budgets.periods import period_end, period_start
from app.errors import BudgetExceeded
from app.vocabulary import BudgetPeriod, WebhookType
from app.webhooks.messages import make_client_message

# The period's start is given for both kinds; the client's own period picks one, in the
# same statement that reads it (a budget changed meanwhile is read as it is now).
RESERVE: Final = text("""
WITH budget AS (
    SELECT c.name, c.budget_images, c.budget_period, c.budget_soft_ratio,
           CASE c.budget_period WHEN 'day' THEN CAST(:day_start AS timestamptz)
                                ELSE CAST(:month_start AS timestamptz) END AS period_start
    FROM clients c
    WHERE c.name = :client AND c.budget_images IS NOT NULL AND c.budget_period IS NOT NULL
), reserved AS (
    INSERT INTO client_spend AS s (client, period, period_start, reserved)
    SELECT budget.name, budget.budget_period, budget.period_start, :n
    FROM budget WHERE :n <= budget.budget_images
    ON CONFLICT (client, period, period_start) DO UPDATE
    SET reserved = s.reserved + EXCLUDED.reserved
    WHERE s.charged + s.reserved + EXCLUDED.reserved <= (SELECT budget_images FROM budget)
    RETURNING s.id, s.reserved, s.charged, s.threshold_sent_at
), marked AS (
    UPDATE tasks SET spend_id = reserved.id FROM reserved WHERE tasks.id = :task_id
)
SELECT budget.budget_images, budget.budget_period, budget.budget_soft_ratio,
       budget.period_start, reserved.id, reserved.reserved, reserved.charged,
       reserved.threshold_sent_at
FROM budget LEFT JOIN reserved ON true
""")

SPENT: Final = text("""
SELECT charged, reserved FROM client_spend
WHERE client = :client AND period = :period AND period_start = :period_start
""")

# Under the row lock the reservation took: one create per period gets the row back.
CROSSED: Final = text("""
UPDATE client_spend SET threshold_sent_at = now()
WHERE id = :spend_id AND threshold_sent_at IS NULL
RETURNING id
""")

# The writer's part (see the module's doc). `moved` returns the task's `spend_id` and
# `images_reserved` (MOVED_RETURNING) and sets `images_charged` (CHARGE_ASSIGNMENT): a row
# cannot be updated twice in one statement, so the task's own column is set where it moves.
CHARGE_ASSIGNMENT: Final = "images_charged = COALESCE(t.images_charged, %(images_charged)s)"
MOVED_RETURNING: Final = "t.spend_id, t.images_reserved"
WRITER_CTE: Final = """, spent AS (
    UPDATE client_spend AS s
    SET reserved = GREATEST(s.reserved - moved.images_reserved, 0),
        charged = s.charged + %(images_charged)s
    FROM moved
    WHERE s.id = moved.spend_id AND moved.from_status <> %(to_status)s::text
)"""


def threshold_images(budget_images: int, soft_ratio: float) -> int:
    """The images spent and reserved at which the soft threshold is reached: the ratio of
    the budget, rounded up (0.7 of 10 is 7, not 7.000000000000001), at least one."""
    return max(1, math.ceil(round(budget_images * soft_ratio, 9)))


def iso(moment: datetime) -> str:
    """A moment in UTC, as the API writes it: `2026-12-03T00:00:00Z`."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


async def reserve(
    session: AsyncSession, client: str, task_id: uuid.UUID, n: int, created_at: datetime
) -> None:
    """Reserve `n` images for the new task `task_id` in the client's budget period holding
    `created_at`; nothing when the client has no budget. Raises BudgetExceeded (and the
    caller's transaction must roll back) when they do not fit."""
    params = {
        "client": client,
        "task_id": task_id,
        "n": n,
        "day_start": period_start(created_at, BudgetPeriod.DAY),
        "month_start": period_start(created_at, BudgetPeriod.MONTH),
    }
    row = (await session.execute(RESERVE, params)).one_or_none()
    if row is None:
        return
    budget, kind, ratio, start, spend_id, reserved, charged, threshold_sent_at = row
    period = BudgetPeriod(kind)
    if spend_id is None:
        spent = (
            await session.execute(
                SPENT, {"client": client, "period": period.value, "period_start": start}
            )
        ).one_or_none()
        charged, reserved = spent if spent is not None else (0, 0)
        raise refusal(budget, period, start, charged=charged, reserved=reserved, requested=n)
    if (
        ratio is not None
        and threshold_sent_at is None
        and charged + reserved >= threshold_images(budget, ratio)
        and (await session.execute(CROSSED, {"spend_id": spend_id})).first() is not None
    ):
        payload = threshold_payload(
            client, budget, period, ratio, start, charged=charged, reserved=reserved
        )
        await make_client_message(session, client, WebhookType.BUDGET_THRESHOLD, payload)


def refusal(
    budget: int,
    period: BudgetPeriod,
    start: datetime,
    *,
    charged: int,
    reserved: int,
    requested: int,
) -> BudgetExceeded:
    """The 402 problem: the budget, what is spent and reserved, what was asked, the reset."""
    resets = period_end(start, period)
    return BudgetExceeded(
        f"This task would reserve {requested} image(s); the budget of {budget} image(s) per "
        f"{period.value} has {charged} spent and {reserved} reserved. It resets at "
        f"{iso(resets)}.",
        budget={"images": budget, "period": period.value},
        spent=charged,
        reserved=reserved,
        requested=requested,
        resets_at=iso(resets),
    )


def threshold_payload(
    client: str,
    budget: int,
    period: BudgetPeriod,
    ratio: float,
    start: datetime,
    *,
    charged: int,
    reserved: int,
) -> str:
    """The `client.budget_threshold` message's body, rendered once, as a task's is."""
    data: dict[str, Any] = {
        "client": client,
        "budget": {"images": budget, "period": period.value, "soft_ratio": ratio},
        "threshold_images": threshold_images(budget, ratio),
        "spent": charged,
        "reserved": reserved,
        "period_start": iso(start),
        "resets_at": iso(period_end(start, period)),
    }
    payload = {
        "type": WebhookType.BUDGET_THRESHOLD.value,
        "timestamp": iso(datetime.now(UTC)),
        "data": data,
    }
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
