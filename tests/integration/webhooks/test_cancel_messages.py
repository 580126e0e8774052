"""A cancelled task tells its caller: `task.cancelled`, signed, to its endpoints and its own
`webhook_url`, made by the writer's statement of the cancel itself."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import httpx
import pytest

from app.servers import RunningServer
from app.tasks.cancel import cancel_overdue
from tests.conftest import Service
from tests.helpers import create_task, events
from tests.integration.webhooks.conftest import Receiver
from tests.integration.webhooks.test_delivery import register, verified

# EvoLink refusing creates for now: a task waits queued. Five refusals, so that a create
# of another stack's leftover work cannot use up the one meant for this test's task.
REFUSE_FOR_NOW = {"endpoint": "create", "status": 429, "retry_after": 60, "times": 5}


@pytest.fixture
async def faults(simulator: RunningServer) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the simulator for setting faults, cleared after the test. Unlike `sim`, it
    does not wait for the suite's shared stack to be idle: these tests run on their own
    stack and count none of the simulator's calls."""
    async with httpx.AsyncClient(base_url=simulator.url, timeout=30) as client:
        yield client
        await client.delete("/_sim/faults")


async def refused_once(api: httpx.AsyncClient, task_id: str, within: float = 20.0) -> None:
    """Until the worker's create met the simulator's 429 and queued the task again."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if any(e["outcome"] == "error" for e in await events(api, task_id)):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"task {task_id} was never refused")


async def test_a_clients_cancel_sends_task_cancelled_to_every_recipient(
    hooks_api: httpx.AsyncClient, receiver: Receiver, faults: httpx.AsyncClient
) -> None:
    """A task EvoLink refused for now (429, retry in a minute) waits queued; the client's
    cancel makes one `task.cancelled` per recipient, each verified, with the task in it."""
    endpoint = await register(hooks_api, receiver.url + "/endpoint")
    await faults.post("/_sim/faults", json=REFUSE_FOR_NOW)
    task = await create_task(hooks_api, webhook_url=receiver.url + "/own")
    await refused_once(hooks_api, task["id"])

    answer = await hooks_api.post(f"/v1/tasks/{task['id']}/cancel")
    assert answer.status_code == 200, answer.text
    assert answer.json()["resolved_by"] == "client"

    [delivery] = await receiver.wait_for("/endpoint", 1)
    payload = verified(endpoint["secret"], delivery)
    assert payload["type"] == "task.cancelled"
    assert payload["data"]["id"] == task["id"]
    assert payload["data"]["status"] == "cancelled"
    assert payload["data"]["resolved_by"] == "client"
    [own] = await receiver.wait_for("/own", 1)
    assert own.headers["webhook-id"] != delivery.headers["webhook-id"]
    secret = (await hooks_api.get("/v1/webhook-secret")).json()["secret"]
    assert verified(secret, own)["type"] == "task.cancelled"

    # Cancelling again makes no second message.
    assert (await hooks_api.post(f"/v1/tasks/{task['id']}/cancel")).status_code == 200
    listed = (await hooks_api.get(f"/v1/tasks/{task['id']}/webhooks")).json()["items"]
    assert sorted(m["type"] for m in listed) == ["task.cancelled", "task.cancelled"]


async def test_cancel_after_seconds_sends_task_cancelled_too(
    hooks_api: httpx.AsyncClient,
    receiver: Receiver,
    faults: httpx.AsyncClient,
    webhook_service: Service,
) -> None:
    """A task still not submitted at its cancel_at (EvoLink refusing with 429) is cancelled
    by the reconciler's run, and its endpoint hears `task.cancelled` from the system.

    The stack's worker runs no periodic job (the reconciler acts on every task of the
    database), so the test runs the reconciler's cancel itself, as the worker would."""
    endpoint = await register(hooks_api, receiver.url + "/after")
    await faults.post("/_sim/faults", json=REFUSE_FOR_NOW)
    task = await create_task(hooks_api, cancel_after_seconds=1)
    await refused_once(hooks_api, task["id"])
    resources = webhook_service.resources
    cancelled = 0
    deadline = time.monotonic() + 20
    while (await hooks_api.get(f"/v1/tasks/{task['id']}")).json()["status"] != "cancelled":
        assert time.monotonic() < deadline, f"task {task['id']} was never cancelled"
        cancelled += await cancel_overdue(resources.pool, resources.sessions)
        await asyncio.sleep(0.2)
    # Counted over the database; of this test's tasks, the one past its cancel_at.
    assert cancelled >= 1
    [delivery] = await receiver.wait_for("/after", 1, within=30)
    payload = verified(endpoint["secret"], delivery)
    assert payload["type"] == "task.cancelled"
    assert payload["data"]["id"] == task["id"]
    assert payload["data"]["resolved_by"] == "system"
    assert payload["data"]["error"]["code"] == "cancel_after_elapsed"
