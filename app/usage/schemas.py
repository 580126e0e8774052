"""The REST shapes of usage reports: sums of tasks and images, grouped, and the budget."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from app.vocabulary import BudgetPeriod

# `metadata.<key>`: a key as task metadata allows it (`app.tasks.schemas.METADATA_KEY_RE`).
METADATA_GROUP = r"metadata\.[A-Za-z0-9_.\-]{1,64}"
CLIENT_GROUP_BY = rf"^(day|status|{METADATA_GROUP})$"
ADMIN_GROUP_BY = r"^(client|day)$"


class UsageFigures(BaseModel):
    """What a set of tasks cost."""

    tasks: int = Field(description="Tasks created.")
    images_reserved: int = Field(description="The `n` they asked for, summed.")
    images_charged: int = Field(
        description="Images the provider charged for those that ended (completed: the images "
        "produced; failed or cancelled: none)."
    )


class UsageGroup(UsageFigures):
    key: str | None = Field(
        description="The group: a UTC day (`2026-12-02`), a status, a client, or the "
        "metadata value (null: tasks without that key)."
    )


class BudgetRead(BaseModel):
    """The client's budget and its current period."""

    images: int = Field(description="Images per period.")
    period: BudgetPeriod
    soft_ratio: float | None = Field(description="Share of the budget that sends a warning.")
    period_start: datetime
    resets_at: datetime
    spent: int = Field(description="Images charged in this period.")
    reserved: int = Field(description="Images reserved by this period's tasks not yet ended.")
    threshold_sent_at: datetime | None = Field(
        description="When this period's `client.budget_threshold` message was made."
    )


class UsageReport(BaseModel):
    """Tasks created in `[from, to)`, summed and grouped."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "from": "2026-11-02T00:00:00Z",
                    "to": "2026-12-02T00:00:00Z",
                    "group_by": "day",
                    "totals": {"tasks": 3, "images_reserved": 5, "images_charged": 4},
                    "groups": [
                        {"key": "2026-12-01", "tasks": 3, "images_reserved": 5, "images_charged": 4}
                    ],
                    "truncated": False,
                    "budget": None,
                }
            ]
        }
    )

    from_: datetime = Field(serialization_alias="from")
    to: datetime
    group_by: str
    totals: UsageFigures
    groups: list[UsageGroup] = Field(description="Ordered by key; at most 1000.")
    truncated: bool = Field(description="More groups than were listed (only `metadata.<key>`).")
    budget: BudgetRead | None = Field(
        default=None, description="The caller's budget now; null without one (and for admins)."
    )
