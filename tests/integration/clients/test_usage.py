"""Usage over real HTTP: the sums `GET /v1/usage` and `GET /v1/admin/usage` answer equal
the figures of the tasks themselves, grouped by day, status, metadata key or client; bad
ranges and groupings are 422 problems; /metrics counts ended tasks and images by client.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from tests.conftest import Caller
from tests.helpers import create_task, wait_for_task

TERMINAL = {"completed", "failed", "cancelled"}


def sums(tasks: list[dict[str, Any]]) -> dict[str, int]:
    return {
        "tasks": len(tasks),
        "images_reserved": sum(task["images_reserved"] for task in tasks),
        "images_charged": sum(task["images_charged"] or 0 for task in tasks),
    }


def by_key(report: dict[str, Any]) -> dict[str | None, dict[str, int]]:
    return {
        group["key"]: {name: group[name] for name in ("tasks", "images_reserved", "images_charged")}
        for group in report["groups"]
    }


async def some_tasks(api: httpx.AsyncClient) -> list[dict[str, Any]]:
    """Five ended tasks of different n, cost centres and outcomes, as the API shows them."""
    made = [
        await create_task(api, n=3, metadata={"cc": "north"}, prompt="Sky [sim:results=2]"),
        await create_task(api, n=2, metadata={"cc": "north"}),
        await create_task(api, n=1, metadata={"cc": "south"}),
        await create_task(api, n=2, metadata={"cc": "south"}, prompt="x [sim:fail=service_error]"),
        await create_task(api, n=1),
    ]
    return [await wait_for_task(api, task["id"], TERMINAL) for task in made]


async def test_usage_sums_equal_the_tasks_own_figures(api: httpx.AsyncClient) -> None:
    """By day, by status and by a metadata key, the groups and totals are the sums of the
    tasks' own `images_reserved` and `images_charged`."""
    tasks = await some_tasks(api)
    assert sums(tasks) == {"tasks": 5, "images_reserved": 9, "images_charged": 6}
    day = await api.get("/v1/usage", params={"group_by": "day"})
    assert day.status_code == 200, day.text
    report = day.json()
    assert report["totals"] == sums(tasks)
    assert report["budget"] is None
    assert report["truncated"] is False
    days: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for task in tasks:
        created = datetime.fromisoformat(task["created_at"]).astimezone(UTC)
        days[created.date().isoformat()].append(task)
    assert by_key(report) == {key: sums(group) for key, group in days.items()}

    status = (await api.get("/v1/usage", params={"group_by": "status"})).json()
    assert by_key(status) == {
        "completed": sums([t for t in tasks if t["status"] == "completed"]),
        "failed": sums([t for t in tasks if t["status"] == "failed"]),
    }
    cost = (await api.get("/v1/usage", params={"group_by": "metadata.cc"})).json()
    assert by_key(cost) == {
        "north": sums(tasks[:2]),
        "south": sums(tasks[2:4]),
        None: sums(tasks[4:]),
    }
    assert cost["totals"] == sums(tasks)


async def test_usage_counts_tasks_created_in_the_range_only(api: httpx.AsyncClient) -> None:
    """`[from, to)` on the tasks' creation: a range that ended before them counts nothing."""
    task = await wait_for_task(api, (await create_task(api, n=2))["id"], TERMINAL)
    created = datetime.fromisoformat(task["created_at"])
    inside = {"from": (created - timedelta(seconds=1)).isoformat(), "to": task["created_at"]}
    report = (await api.get("/v1/usage", params=inside)).json()
    assert report["totals"]["tasks"] == 0, (report, task["created_at"])
    inside["to"] = (created + timedelta(seconds=1)).isoformat()
    report = (await api.get("/v1/usage", params=inside)).json()
    assert report["totals"] == sums([task])


async def test_the_admin_usage_sums_each_clients_tasks(
    api: httpx.AsyncClient, admin: httpx.AsyncClient, caller: Caller
) -> None:
    """Grouped by client, the caller's group is the sum of its tasks; the admin API needs
    an operator's key."""
    tasks = await some_tasks(api)
    start = min(datetime.fromisoformat(task["created_at"]) for task in tasks)
    params = {"group_by": "client", "from": (start - timedelta(seconds=1)).isoformat()}
    answer = await admin.get("/v1/admin/usage", params=params)
    assert answer.status_code == 200, answer.text
    assert by_key(answer.json())[caller.name] == sums(tasks)
    by_day = await admin.get("/v1/admin/usage", params={**params, "group_by": "day"})
    assert by_day.status_code == 200
    assert by_day.json()["totals"]["tasks"] >= len(tasks)
    refused = await api.get("/v1/admin/usage")
    assert refused.status_code in (401, 403)
    assert refused.headers["content-type"] == "application/problem+json"


async def test_bad_ranges_and_groupings_are_problems(api: httpx.AsyncClient) -> None:
    """Each bad parameter is a 422 problem naming it."""
    now = datetime.now(UTC)
    cases: list[tuple[dict[str, str], str]] = [
        ({"group_by": "week"}, "query.group_by"),
        ({"group_by": "metadata.no spaces"}, "query.group_by"),
        ({"group_by": "metadata."}, "query.group_by"),
        ({"group_by": "client"}, "query.group_by"),
        ({"from": "2026-11-24T05:14:44"}, "query.from"),
        ({"to": "yesterday"}, "query.to"),
        ({"from": now.isoformat(), "to": (now - timedelta(days=1)).isoformat()}, "query.from"),
        ({"from": (now - timedelta(days=400)).isoformat()}, "query.to"),
        ({"to": "0001-01-02T00:00:00Z"}, "query.to"),
    ]
    for params, field in cases:
        answer = await api.get("/v1/usage", params=params)
        assert answer.status_code == 422, (params, answer.text)
        assert answer.headers["content-type"] == "application/problem+json"
        assert answer.json()["errors"][0]["field"] == field, params


async def test_metrics_count_ended_tasks_and_images_charged_by_client(
    api: httpx.AsyncClient, caller: Caller
) -> None:
    """One series per client and terminal status, and the images charged per client."""
    tasks = await some_tasks(api)
    metrics = (await api.get("/metrics")).text
    name = caller.name
    for status in ("completed", "failed"):
        count = len([task for task in tasks if task["status"] == status])
        assert f'edithook_tasks_ended_24h{{client="{name}",status="{status}"}} {count}' in metrics
    charged = sums(tasks)["images_charged"]
    assert f'edithook_images_charged_24h{{client="{name}"}} {charged}' in metrics
