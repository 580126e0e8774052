"""Budgets over real HTTP and a real Postgres: a create reserves its `n` in the client's
period row, over the budget it is 402 and nothing is stored, and the move into a terminal
status settles the reservation to what the provider charged — on completion, failure,
cancel and a refused create — once, in the row the task was counted in. Concurrent creates
through two API replicas never take a client past its budget.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app.servers import RunningServer, start_server
from tests.conftest import Caller, Service
from tests.helpers import VALID_EDIT, create_task, own_task_ids, wait_for_task

BUDGET_EXCEEDED = "tag:edithook,2026:problem/budget-exceeded"
TERMINAL = {"completed", "failed", "cancelled"}


async def give_budget(
    admin: httpx.AsyncClient, client: str, images: int, period: str = "day", **more: Any
) -> None:
    answer = await admin.patch(
        f"/v1/admin/clients/{client}",
        json={"budget_images": images, "budget_period": period, **more},
    )
    assert answer.status_code == 200, answer.text


async def spend_rows(service: Service, client: str) -> list[dict[str, Any]]:
    """The client's period rows, oldest period first."""
    async with service.resources.pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT id, period, period_start, reserved, charged, threshold_sent_at"
            " FROM client_spend WHERE client = %(client)s ORDER BY period_start, id",
            {"client": client},
        )
        names = [column.name for column in cursor.description or []]
        return [dict(zip(names, row, strict=True)) for row in await cursor.fetchall()]


def tomorrow() -> str:
    start = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return (start + timedelta(days=1)).isoformat().replace("+00:00", "Z")


async def test_a_task_records_what_it_reserved_and_then_what_it_was_charged(
    api: httpx.AsyncClient, admin: httpx.AsyncClient, caller: Caller, service: Service
) -> None:
    """n = 3 reserves 3; a completion with one image produced charges 1 and releases 2."""
    await give_budget(admin, caller.name, 10)
    task = await create_task(api, n=3, prompt="Make it brighter [sim:results=1]")
    assert (task["images_reserved"], task["images_charged"]) == (3, None)
    [row] = await spend_rows(service, caller.name)
    assert (row["reserved"], row["charged"]) == (3, 0)
    done = await wait_for_task(api, task["id"], TERMINAL)
    assert done["status"] == "completed"
    assert (done["images_reserved"], done["images_charged"], done["result_count"]) == (3, 1, 1)
    [row] = await spend_rows(service, caller.name)
    assert (row["reserved"], row["charged"]) == (0, 1)


async def test_a_failed_task_releases_its_reservation_and_charges_nothing(
    api: httpx.AsyncClient, admin: httpx.AsyncClient, caller: Caller, service: Service
) -> None:
    """The provider fails the task: charged 0, the reservation released."""
    await give_budget(admin, caller.name, 10)
    task = await create_task(api, n=2, prompt="Edit it [sim:fail=content_policy_violation]")
    done = await wait_for_task(api, task["id"], TERMINAL)
    assert (done["status"], done["images_charged"]) == ("failed", 0)
    [row] = await spend_rows(service, caller.name)
    assert (row["reserved"], row["charged"]) == (0, 0)


async def test_a_create_the_provider_refuses_releases_its_reservation(
    api: httpx.AsyncClient,
    admin: httpx.AsyncClient,
    caller: Caller,
    service: Service,
    sim: httpx.AsyncClient,
) -> None:
    """EvoLink answers the create 400: the task fails, charged nothing, nothing reserved."""
    await give_budget(admin, caller.name, 10)
    fault = {"endpoint": "create", "status": 400, "code": "invalid_parameters"}
    assert (await sim.post("/_sim/faults", json=fault)).status_code == 200
    task = await create_task(api, n=4)
    done = await wait_for_task(api, task["id"], TERMINAL)
    assert (done["status"], done["images_charged"]) == ("failed", 0)
    [row] = await spend_rows(service, caller.name)
    assert (row["reserved"], row["charged"]) == (0, 0)


async def cancel_when_queued(api: httpx.AsyncClient, task_id: str) -> dict[str, Any]:
    """Cancel the task once it is back in the queue (a refused create requeued it)."""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        answer = await api.post(f"/v1/tasks/{task_id}/cancel")
        if answer.status_code == 200:
            body: dict[str, Any] = answer.json()
            return body
        await asyncio.sleep(0.05)
    raise AssertionError(f"task {task_id} could not be cancelled: {answer.text}")


async def test_a_cancel_releases_the_reservation_in_the_period_it_was_made(
    api: httpx.AsyncClient,
    admin: httpx.AsyncClient,
    caller: Caller,
    service: Service,
    sim: httpx.AsyncClient,
) -> None:
    """A task counted in an earlier period neither counts against today's budget nor
    settles into today's row: its cancel releases the earlier period's row only."""
    await give_budget(admin, caller.name, 3)
    # EvoLink refuses the first create for a minute: the task goes back to the queue.
    fault = {"endpoint": "create", "status": 429, "retry_after": 60}
    assert (await sim.post("/_sim/faults", json=fault)).status_code == 200
    early = await create_task(api, n=2)
    [row] = await spend_rows(service, caller.name)
    # As if it had been created yesterday: its period row becomes yesterday's.
    async with service.resources.pool.connection() as conn:
        await conn.execute(
            "UPDATE client_spend SET period_start = period_start - interval '1 day'"
            " WHERE id = %(id)s",
            {"id": row["id"]},
        )
    # 2 reserved yesterday do not count today: 3 more fit a budget of 3.
    today = await create_task(api, n=3)
    cancelled = await cancel_when_queued(api, early["id"])
    assert (cancelled["status"], cancelled["images_charged"]) == ("cancelled", 0)
    await wait_for_task(api, today["id"], TERMINAL)
    yesterday_row, today_row = await spend_rows(service, caller.name)
    assert yesterday_row["id"] == row["id"]
    assert (yesterday_row["reserved"], yesterday_row["charged"]) == (0, 0)
    assert (today_row["reserved"], today_row["charged"]) == (0, 3)


async def test_over_the_budget_the_create_is_402_and_nothing_is_stored(
    api: httpx.AsyncClient, admin: httpx.AsyncClient, caller: Caller, service: Service
) -> None:
    """The problem names the budget, what is spent and reserved, what was asked, the reset;
    no task, no job, no reservation."""
    await give_budget(admin, caller.name, 2)
    answer = await api.post("/v1/tasks", json={**VALID_EDIT, "n": 3})
    assert answer.status_code == 402, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    problem = answer.json()
    assert problem["type"] == BUDGET_EXCEEDED
    assert problem["budget"] == {"images": 2, "period": "day"}
    assert (problem["spent"], problem["reserved"], problem["requested"]) == (0, 0, 3)
    assert problem["resets_at"] == tomorrow()
    assert await own_task_ids(api) == set()
    assert all(row["reserved"] == 0 for row in await spend_rows(service, caller.name))
    async with service.resources.pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT count(*) FROM tasks WHERE client = %(client)s", {"client": caller.name}
        )
        assert await cursor.fetchone() == (0,)


async def test_a_replay_with_the_same_idempotency_key_reserves_nothing(
    api: httpx.AsyncClient, admin: httpx.AsyncClient, caller: Caller, service: Service
) -> None:
    """The second request answers the first task and the row holds its n once."""
    await give_budget(admin, caller.name, 3)
    headers = {"Idempotency-Key": "budget-replay-1"}
    body = {**VALID_EDIT, "n": 2, "prompt": "Keep it [sim:hold]"}
    first = await api.post("/v1/tasks", json=body, headers=headers)
    again = await api.post("/v1/tasks", json=body, headers=headers)
    assert (first.status_code, again.status_code) == (202, 202)
    assert again.headers["Idempotent-Replayed"] == "true"
    assert first.json()["id"] == again.json()["id"]
    [row] = await spend_rows(service, caller.name)
    assert row["reserved"] + row["charged"] == 2


async def test_concurrent_creates_through_two_replicas_never_pass_the_budget(
    admin: httpx.AsyncClient, caller: Caller, service: Service, replica: RunningServer
) -> None:
    """100 creates at once, half through each API replica, against 20 images: 20 are
    accepted, the other 80 are 402 naming a budget that is full."""
    await give_budget(admin, caller.name, 20)
    async with (
        httpx.AsyncClient(base_url=service.url, headers=caller.headers, timeout=60) as one,
        httpx.AsyncClient(base_url=replica.url, headers=caller.headers, timeout=60) as two,
    ):
        answers = await asyncio.gather(
            *(
                (one if index % 2 else two).post("/v1/tasks", json=VALID_EDIT)
                for index in range(100)
            )
        )
        statuses = [answer.status_code for answer in answers]
        assert statuses.count(202) == 20, statuses
        assert statuses.count(402) == 80, statuses
        for answer in answers:
            if answer.status_code == 402:
                problem = answer.json()
                assert problem["type"] == BUDGET_EXCEEDED
                assert problem["budget"] == {"images": 20, "period": "day"}
                assert problem["spent"] + problem["reserved"] == 20
                assert problem["requested"] == 1
                assert problem["resets_at"] == tomorrow()
        assert len(await own_task_ids(one)) == 20
    [row] = await spend_rows(service, caller.name)
    assert row["reserved"] + row["charged"] == 20


Receiver = tuple[RunningServer, list[dict[str, Any]], asyncio.Event]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    """A webhook receiver on a loopback port that keeps every body it is sent."""
    bodies: list[dict[str, Any]] = []
    arrived = asyncio.Event()

    async def hook(request: Request) -> Response:
        bodies.append(json.loads(await request.body()))
        arrived.set()
        return Response(status_code=204)

    running = await start_server(Starlette(routes=[Route("/hook", hook, methods=["POST"])]))
    yield running, bodies, arrived
    await running.stop()


async def test_crossing_the_soft_threshold_tells_the_client_once(
    api: httpx.AsyncClient,
    admin: httpx.AsyncClient,
    caller: Caller,
    service: Service,
    receiver: Receiver,
) -> None:
    """Budget 10, ratio 0.5: the create that reaches 5 images makes one
    `client.budget_threshold` message, delivered to the client's endpoint; later creates in
    the period make none. /metrics shows it."""
    server, bodies, arrived = receiver
    endpoint = await api.post(
        "/v1/webhook-endpoints",
        json={"url": f"{server.url}/hook", "event_types": ["client.budget_threshold"]},
    )
    assert endpoint.status_code == 201, endpoint.text
    await give_budget(admin, caller.name, 10, budget_soft_ratio=0.5)
    for _ in range(4):
        await create_task(api, prompt="Hold it [sim:hold]")
    assert (await spend_rows(service, caller.name))[0]["threshold_sent_at"] is None
    for _ in range(3):
        await create_task(api, prompt="Hold it [sim:hold]")
    [row] = await spend_rows(service, caller.name)
    assert row["threshold_sent_at"] is not None
    await asyncio.wait_for(arrived.wait(), 15)
    [body] = bodies
    assert body["type"] == "client.budget_threshold"
    data = body["data"]
    assert data["client"] == caller.name
    assert data["budget"] == {"images": 10, "period": "day", "soft_ratio": 0.5}
    assert (data["threshold_images"], data["spent"] + data["reserved"]) == (5, 5)
    assert data["resets_at"] == tomorrow()
    # The attempt is recorded once the receiver has answered: wait for it.
    deadline = time.monotonic() + 15
    while True:
        messages = await api.get(f"/v1/webhook-endpoints/{endpoint.json()['id']}/messages")
        [message] = messages.json()["items"]
        if message["status"] != "pending" or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    assert (message["type"], message["task_id"], message["status"]) == (
        "client.budget_threshold",
        None,
        "delivered",
    )
    metrics = (await api.get("/metrics")).text
    assert f'edithook_budget_threshold_crossed{{client="{caller.name}"}} 1' in metrics
    assert f'edithook_budget_images{{client="{caller.name}"}} 10' in metrics
