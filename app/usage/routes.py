"""Usage: `GET /v1/usage` for the caller's own tasks and budget, `GET /v1/admin/usage` for
operators across clients. Each takes the request's transaction and calls the service."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query

from app.deps import PROBLEM, CallerDep, SessionDep, get_admin
from app.usage import service
from app.usage.schemas import ADMIN_GROUP_BY, CLIENT_GROUP_BY, UsageReport
from app.webhooks.schemas import Timestamp

router = APIRouter(tags=["usage"])

INVALID: dict[int | str, dict[str, Any]] = {
    422: {
        "description": "A bound that is not RFC 3339 with an offset, `from` not before `to`, a "
        "range over 366 days, or a grouping not offered; every problem listed in `errors`.",
        **PROBLEM,
    }
}

From = Annotated[
    Timestamp | None,
    Query(
        alias="from",
        description="Tasks created at or after this (RFC 3339, with an offset); "
        "default: 30 days before `to`.",
    ),
]
To = Annotated[
    Timestamp | None,
    Query(
        alias="to",
        description="Tasks created before this (RFC 3339, with an offset); default: now. "
        "At most 366 days after `from`.",
    ),
]


@router.get(
    "/v1/usage",
    summary="The caller's usage and budget",
    description=(
        "Sums of the caller's tasks created in `[from, to)`: tasks, images reserved, images "
        "charged; grouped by UTC day, by status, or by the value of a metadata key "
        "(`metadata.<key>`, for cost centres). `budget` is the caller's budget now, with what "
        "its current period has spent and reserved."
    ),
    responses=INVALID,
)
async def get_usage(
    caller: CallerDep,
    session: SessionDep,
    start: From = None,
    end: To = None,
    group_by: Annotated[
        str,
        Query(
            pattern=CLIENT_GROUP_BY,
            description="`day`, `status` or `metadata.<key>`.",
            examples=["day", "metadata.cost_centre"],
        ),
    ] = "day",
) -> UsageReport:
    span = service.window(start, end, datetime.now(UTC))
    return await service.client_usage(session, caller, span, group_by)


@router.get(
    "/v1/admin/usage",
    summary="Usage across clients",
    description=(
        "Sums of every client's tasks created in `[from, to)`, grouped by client or by UTC day."
    ),
    dependencies=[Depends(get_admin)],
    tags=["admin"],
    responses=INVALID,
)
async def get_admin_usage(
    session: SessionDep,
    start: From = None,
    end: To = None,
    group_by: Annotated[
        str, Query(pattern=ADMIN_GROUP_BY, description="`client` or `day`.")
    ] = "client",
) -> UsageReport:
    span = service.window(start, end, datetime.now(UTC))
    return await service.report(session, [], span, group_by)
