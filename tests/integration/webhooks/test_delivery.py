"""Webhooks reach callers over real HTTP, signed, through failures; every delivery is
verified with the `standardwebhooks` library, as a caller would."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import httpx
from sqlalchemy import text
from standardwebhooks import Webhook

from app.db import transaction
from app.jobs import DELIVER_WEBHOOK, QUEUE
from app.webhooks.delivery import deliver
from app.webhooks.jobs import config_of
from app.webhooks.service import CRASHES_BEFORE_GIVING_UP, requeue_lost
from tests.conftest import Caller, Service
from tests.helpers import create_task, wait_for_task
from tests.integration.webhooks.conftest import Plan, Received, Receiver


async def register(api: httpx.AsyncClient, url: str, **fields: Any) -> dict[str, Any]:
    answer = await api.post("/v1/webhook-endpoints", json={"url": url, **fields})
    assert answer.status_code == 201, answer.text
    body: dict[str, Any] = answer.json()
    assert body["secret"].startswith("whsec_")
    return body


def verified(secret: str, received: Received) -> dict[str, Any]:
    """The payload, once `standardwebhooks` has verified the delivery's signature."""
    payload: dict[str, Any] = Webhook(secret).verify(received.body, received.headers)
    return payload


async def messages(api: httpx.AsyncClient, task_id: str) -> list[dict[str, Any]]:
    answer = await api.get(f"/v1/tasks/{task_id}/webhooks")
    assert answer.status_code == 200, answer.text
    items: list[dict[str, Any]] = answer.json()["items"]
    return items


async def test_an_endpoint_hears_every_event_signed_and_a_succeeded_task_has_its_results(
    hooks_api: httpx.AsyncClient, receiver: Receiver
) -> None:
    """task.submitted then task.succeeded, each verified; data is the task and its results."""
    endpoint = await register(hooks_api, receiver.url + "/all")
    task = await create_task(hooks_api)
    await wait_for_task(hooks_api, task["id"], {"completed"})
    deliveries = await receiver.wait_for("/all", 2)
    payloads = [verified(endpoint["secret"], item) for item in deliveries]
    assert sorted(p["type"] for p in payloads) == ["task.submitted", "task.succeeded"]
    succeeded = next(p for p in payloads if p["type"] == "task.succeeded")
    assert succeeded["data"]["id"] == task["id"]
    assert succeeded["data"]["status"] == "completed"
    assert succeeded["data"]["results"][0]["status"] == "stored"
    results = (await hooks_api.get(f"/v1/tasks/{task['id']}/results")).json()["items"]
    assert succeeded["data"]["results"] == results
    ids = {item.headers["webhook-id"] for item in deliveries}
    logged = await messages(hooks_api, task["id"])
    assert {m["id"] for m in logged} == ids
    assert all(m["status"] == "delivered" and len(m["attempts"]) == 1 for m in logged)


async def test_an_endpoint_hears_only_the_types_it_asked_for(
    hooks_api: httpx.AsyncClient, receiver: Receiver
) -> None:
    """An endpoint subscribed to task.succeeded is never sent task.submitted."""
    only = await register(hooks_api, receiver.url + "/only", event_types=["task.succeeded"])
    every = await register(hooks_api, receiver.url + "/every")
    task = await create_task(hooks_api)
    await receiver.wait_for("/every", 2)
    await receiver.wait_for("/only", 1)
    await wait_for_task(hooks_api, task["id"], {"completed"})
    logged = await messages(hooks_api, task["id"])
    assert sorted(m["type"] for m in logged if m["endpoint_id"] == only["id"]) == ["task.succeeded"]
    assert [verified(only["secret"], r)["type"] for r in receiver.at("/only")] == ["task.succeeded"]
    assert len(receiver.at("/every")) == 2
    assert every["event_types"] is None


async def test_a_tasks_own_url_is_signed_with_the_clients_secret(
    hooks_api: httpx.AsyncClient, receiver: Receiver
) -> None:
    """webhook_url on the task: its events arrive there, signed with GET /v1/webhook-secret's."""
    secret = (await hooks_api.get("/v1/webhook-secret")).json()["secret"]
    assert (await hooks_api.get("/v1/webhook-secret")).json()["secret"] == secret
    task = await create_task(hooks_api, webhook_url=receiver.url + "/mine")
    assert task["webhook_url"] == receiver.url + "/mine"
    deliveries = await receiver.wait_for("/mine", 2)
    assert {verified(secret, item)["data"]["id"] for item in deliveries} == {task["id"]}
    read = (await hooks_api.get(f"/v1/tasks/{task['id']}")).json()
    assert read["webhook_url"] == receiver.url + "/mine"


async def test_500s_then_a_2xx_deliver_with_the_same_id_and_bytes(
    hooks_api: httpx.AsyncClient, receiver: Receiver
) -> None:
    """Two 500s, then 200: three attempts logged, one webhook-id, identical bodies."""
    endpoint = await register(hooks_api, receiver.url + "/flaky", event_types=["task.succeeded"])
    receiver.plan("/flaky", Plan(500), Plan(500))
    task = await create_task(hooks_api)
    deliveries = await receiver.wait_for("/flaky", 3)
    assert len({item.headers["webhook-id"] for item in deliveries}) == 1
    assert len({item.body for item in deliveries}) == 1
    for item in deliveries:
        verified(endpoint["secret"], item)
    await _until_status(hooks_api, task["id"], "delivered")
    [message] = await messages(hooks_api, task["id"])
    assert [a["status_code"] for a in message["attempts"]] == [500, 500, 200]
    assert [a["outcome"] for a in message["attempts"]] == ["retrying", "retrying", "delivered"]
    assert message["attempts"][0]["response_body"] == '{"ok": true}'


async def test_a_redirect_is_a_failed_attempt_and_is_not_followed(
    hooks_api: httpx.AsyncClient, receiver: Receiver
) -> None:
    """A 302 is recorded as a failure; the Location is never requested."""
    await register(hooks_api, receiver.url + "/moved", event_types=["task.succeeded"])
    receiver.plan("/moved", Plan(302, headers={"Location": receiver.url + "/elsewhere"}))
    task = await create_task(hooks_api)
    await _until_status(hooks_api, task["id"], "delivered")
    [message] = await messages(hooks_api, task["id"])
    assert [a["status_code"] for a in message["attempts"]] == [302, 200]
    assert receiver.at("/elsewhere") == []


async def test_a_410_disables_the_endpoint_with_its_reason(
    hooks_api: httpx.AsyncClient, receiver: Receiver
) -> None:
    """410 Gone: the message fails at once and the endpoint is disabled, saying why."""
    endpoint = await register(hooks_api, receiver.url + "/gone", event_types=["task.submitted"])
    receiver.plan("/gone", Plan(410))
    task = await create_task(hooks_api)
    await _until_status(hooks_api, task["id"], "failed")
    read = (await hooks_api.get(f"/v1/webhook-endpoints/{endpoint['id']}")).json()
    assert read["enabled"] is False
    assert "410" in read["disabled_reason"]
    assert len(receiver.at("/gone")) == 1


async def test_a_receiver_too_slow_times_out_and_gets_it_on_a_later_attempt(
    hooks_api: httpx.AsyncClient, receiver: Receiver
) -> None:
    """An answer later than the timeout is an error attempt; the retry is delivered."""
    endpoint = await register(hooks_api, receiver.url + "/slow", event_types=["task.succeeded"])
    receiver.plan("/slow", Plan(200, delay=3.0))
    task = await create_task(hooks_api)
    await _until_status(hooks_api, task["id"], "delivered")
    [message] = await messages(hooks_api, task["id"])
    first, second = message["attempts"]
    assert first["status_code"] is None
    assert "within" in first["error"]
    assert second["status_code"] == 200
    deliveries = receiver.at("/slow")
    assert {verified(endpoint["secret"], item)["type"] for item in deliveries} == {"task.succeeded"}


async def _until_status(api: httpx.AsyncClient, task_id: str, status: str) -> dict[str, Any]:
    deadline = time.monotonic() + 40
    found: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        found = await messages(api, task_id)
        if found and all(m["status"] == status for m in found):
            return found[0]
        await asyncio.sleep(0.1)
    raise AssertionError(f"messages stayed {json.dumps(found)[:2000]}")


async def test_failed_and_cancelled_tasks_are_told_with_their_own_types(
    hooks_api: httpx.AsyncClient, receiver: Receiver
) -> None:
    """A task EvoLink fails sends task.failed; one it cancels, task.cancelled."""
    endpoint = await register(
        hooks_api, receiver.url + "/ends", event_types=["task.failed", "task.cancelled"]
    )
    failed = await create_task(hooks_api, prompt="[sim:fail=content_policy_violation] edit")
    cancelled = await create_task(hooks_api, prompt="[sim:cancel] edit")
    deliveries = await receiver.wait_for("/ends", 2)
    told = {
        (p["data"]["id"], p["type"], p["data"]["status"])
        for p in (verified(endpoint["secret"], item) for item in deliveries)
    }
    assert told == {
        (failed["id"], "task.failed", "failed"),
        (cancelled["id"], "task.cancelled", "cancelled"),
    }


async def test_a_message_whose_job_was_lost_is_sent_after_the_sweep(
    hooks_api: httpx.AsyncClient,
    receiver: Receiver,
    webhook_service: Service,
    hooks_caller: Caller,
) -> None:
    """A pending message past due with no job gets one from `requeue_lost`, and arrives."""
    endpoint = await register(hooks_api, receiver.url + "/lost", event_types=["task.failed"])
    task = await create_task(hooks_api, prompt="[sim:hold] edit")
    message_id = uuid.uuid4()
    async with transaction(webhook_service.resources.sessions) as session:
        await session.execute(
            text(
                "INSERT INTO webhook_messages (id, task_id, client, type, endpoint_id,"
                " next_attempt_at) VALUES (:id, :task, :client, 'task.failed',"
                " :endpoint, now() - interval '5 minutes')"
            ),
            {
                "id": message_id,
                "task": task["id"],
                "client": hooks_caller.name,
                "endpoint": endpoint["id"],
            },
        )
    assert await delivery_jobs(webhook_service, message_id) == 0
    async with transaction(webhook_service.resources.sessions) as session:
        # Counted over the database; of this test's messages, the lost one got one job.
        assert await requeue_lost(session) >= 1
    assert await delivery_jobs(webhook_service, message_id) == 1
    async with transaction(webhook_service.resources.sessions) as session:
        await requeue_lost(session)
    assert await delivery_jobs(webhook_service, message_id) == 1  # its job is there now
    [delivery] = await receiver.wait_for("/lost", 1)
    assert verified(endpoint["secret"], delivery)["type"] == "task.failed"
    assert delivery.headers["webhook-id"] == str(message_id)


async def test_a_message_whose_jobs_keep_failing_is_given_up_not_requeued_forever(
    hooks_api: httpx.AsyncClient,
    receiver: Receiver,
    webhook_service: Service,
    hooks_caller: Caller,
) -> None:
    """A message whose delivery job has failed for good (crashed through all its retries)
    as often as `CRASHES_BEFORE_GIVING_UP` is marked failed, saying why, instead of being
    given yet another job by every sweep."""
    endpoint = await register(hooks_api, receiver.url + "/crashing", event_types=["task.failed"])
    task = await create_task(hooks_api, prompt="[sim:hold] edit")
    message_id = uuid.uuid4()
    async with transaction(webhook_service.resources.sessions) as session:
        await session.execute(
            text(
                "INSERT INTO webhook_messages (id, task_id, client, type, endpoint_id,"
                " next_attempt_at) VALUES (:id, :task, :client, 'task.failed',"
                " :endpoint, now() - interval '5 minutes')"
            ),
            {
                "id": message_id,
                "task": task["id"],
                "client": hooks_caller.name,
                "endpoint": endpoint["id"],
            },
        )
        for _ in range(CRASHES_BEFORE_GIVING_UP):
            await session.execute(
                text(
                    "INSERT INTO procrastinate_jobs (queue_name, task_name, args, status,"
                    " attempts) VALUES (:queue, :job, jsonb_build_object('message_id',"
                    " CAST(:id AS text)), 'failed', 10)"
                ),
                {"queue": QUEUE, "job": DELIVER_WEBHOOK, "id": str(message_id)},
            )
    async with transaction(webhook_service.resources.sessions) as session:
        await requeue_lost(session)
    assert await delivery_jobs(webhook_service, message_id) == CRASHES_BEFORE_GIVING_UP
    async with webhook_service.resources.sessions() as session:
        status, error = (
            await session.execute(
                text("SELECT status, last_error FROM webhook_messages WHERE id = :id"),
                {"id": message_id},
            )
        ).one()
    assert status == "failed"
    assert f"failed {CRASHES_BEFORE_GIVING_UP} times" in error


async def delivery_jobs(service: Service, message_id: uuid.UUID) -> int:
    """How many delivery jobs the message has had, whatever became of them."""
    async with service.resources.pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT count(*) FROM procrastinate_jobs"
            " WHERE task_name = %s AND args->>'message_id' = %s",
            (DELIVER_WEBHOOK, str(message_id)),
        )
        row = await cursor.fetchone()
    assert row is not None
    return int(row[0])


async def test_running_a_delivery_again_after_it_succeeded_sends_nothing(
    hooks_api: httpx.AsyncClient, receiver: Receiver, webhook_service: Service
) -> None:
    """A job run twice (a worker killed after the POST) finds the message delivered."""
    await register(hooks_api, receiver.url + "/once", event_types=["task.succeeded"])
    task = await create_task(hooks_api)
    message = await _until_status(hooks_api, task["id"], "delivered")
    resources = webhook_service.resources
    again = await deliver(
        resources.sessions, resources.download_http, config_of(resources), uuid.UUID(message["id"])
    )
    assert again is None
    assert len(receiver.at("/once")) == 1
