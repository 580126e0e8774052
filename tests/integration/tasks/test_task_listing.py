"""GET /v1/tasks: newest first, filters, and keyset pagination that holds still under inserts."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest
from psycopg.types.json import Jsonb

from tests.conftest import Caller

REQUEST = {"prompt": "p", "image_urls": ["https://a.example/x.png"]}


def seed_tasks(
    database_url: str,
    count: int,
    *,
    client: str,
    status: str = "completed",
    start: datetime | None = None,
) -> list[str]:
    """Insert `count` tasks one millisecond apart, oldest first; returns their ids."""
    start = start or datetime(2026, 1, 1, tzinfo=UTC)
    rows = [
        (
            uuid.uuid4(),
            client,
            status,
            Jsonb(REQUEST),
            Jsonb({}),
            "h",
            start + timedelta(milliseconds=i),
        )
        for i in range(count)
    ]
    with psycopg.connect(database_url) as conn, conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO tasks (id, client, status, progress, request, metadata, request_hash,"
            " created_at, updated_at) VALUES (%s, %s, %s, 0, %s, %s, %s, %s, %s)",
            [(*row, row[-1]) for row in rows],
        )
    return [str(row[0]) for row in rows]


async def walk(api: httpx.AsyncClient, params: dict[str, str | int]) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        page = await api.get(
            "/v1/tasks", params={**params, **({"cursor": cursor} if cursor else {})}
        )
        assert page.status_code == 200, page.text
        body = page.json()
        items += body["items"]
        cursor = body["next_cursor"]
        if cursor is None:
            return items


async def test_pages_are_newest_first_and_complete(
    api: httpx.AsyncClient, database_url: str, caller: Caller
) -> None:
    """Following cursors visits every task once, newest first."""
    ids = seed_tasks(database_url, 53, client=caller.name)
    seen = await walk(api, {"limit": 10})
    assert [item["id"] for item in seen] == ids[::-1]


async def test_pagination_is_stable_while_tasks_are_added(
    api: httpx.AsyncClient, database_url: str, caller: Caller
) -> None:
    """Tasks created during a walk neither repeat nor hide any task that existed before it."""
    original = seed_tasks(database_url, 120, client=caller.name)
    seen: list[str] = []
    cursor = None
    added = 0
    while True:
        params: dict[str, str | int] = {"limit": 25}
        if cursor:
            params["cursor"] = cursor
        body = (await api.get("/v1/tasks", params=params)).json()
        seen += [item["id"] for item in body["items"]]
        # Between pages, new tasks arrive (newer than all the others).
        await asyncio.to_thread(
            seed_tasks,
            database_url,
            7,
            client=caller.name,
            start=datetime.now(UTC) + timedelta(seconds=added),
        )
        added += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == len(set(seen))
    assert seen == original[::-1]


async def test_status_and_time_filters(
    api: httpx.AsyncClient, database_url: str, caller: Caller
) -> None:
    """`status` (repeatable) and the created_* bounds narrow the listing."""
    t0 = datetime(2026, 3, 1, tzinfo=UTC)
    done = seed_tasks(database_url, 5, client=caller.name, status="completed", start=t0)
    failed = seed_tasks(
        database_url, 3, client=caller.name, status="failed", start=t0 + timedelta(seconds=10)
    )
    only_failed = await walk(api, {"status": "failed", "limit": 2})
    assert [i["id"] for i in only_failed] == failed[::-1]
    both = (
        await api.get("/v1/tasks", params=[("status", "failed"), ("status", "completed")])
    ).json()
    assert len(both["items"]) == 8
    window = await walk(
        api,
        {
            "created_after": (t0 + timedelta(milliseconds=1)).isoformat(),
            "created_before": (t0 + timedelta(seconds=10)).isoformat(),
        },
    )
    assert [i["id"] for i in window] == done[2:][::-1]


@pytest.mark.parametrize(
    "params",
    [{"limit": 0}, {"limit": 101}, {"status": "finished"}, {"created_after": "yesterday"}],
)
async def test_bad_listing_parameters_are_422(
    api: httpx.AsyncClient, params: dict[str, str | int]
) -> None:
    """Out-of-range limits, unknown statuses and bad times are refused as problems."""
    response = await api.get("/v1/tasks", params=params)
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"


async def test_a_forged_cursor_is_400(api: httpx.AsyncClient) -> None:
    """A cursor this API did not issue is refused, not misread."""
    for cursor in ("garbage!", "eyJ4IjoxfQ", "W10"):
        response = await api.get("/v1/tasks", params={"cursor": cursor})
        assert response.status_code == 400, cursor
