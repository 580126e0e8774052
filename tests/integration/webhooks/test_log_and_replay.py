"""Registration, rotation, the log, redelivery and recovery, over real HTTP; every delivery
verified with `standardwebhooks`."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
from sqlalchemy import event, text
from standardwebhooks import Webhook

from app.db import transaction
from app.servers import bind, start_server
from app.webhooks.service import task_messages
from app.webhooks.signing import new_secret
from tests.conftest import Caller, Service
from tests.helpers import create_task
from tests.integration.webhooks.conftest import Plan, Receiver, receiver_app
from tests.integration.webhooks.test_delivery import messages, register, verified


async def until(
    api: httpx.AsyncClient, task_id: str, check: Any, within: float = 40.0
) -> list[dict[str, Any]]:
    """The task's messages, once `check` holds for them; fail after `within` seconds."""
    deadline = time.monotonic() + within
    found: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        found = await messages(api, task_id)
        if found and check(found):
            return found
        await asyncio.sleep(0.1)
    raise AssertionError(f"the messages never matched: {found}")


def all_are(status: str) -> Any:
    """A check for `until`: every message has `status`."""
    return lambda found: all(m["status"] == status for m in found)


async def test_refused_urls_are_422_at_registration_and_on_a_task(
    hooks_api: httpx.AsyncClient,
) -> None:
    """A private, link-local or plain-http URL is refused with a problem naming the field."""
    for url in ("https://10.0.0.5/hook", "https://169.254.169.254/", "http://hooks.example.com/"):
        answer = await hooks_api.post("/v1/webhook-endpoints", json={"url": url})
        assert answer.status_code == 422, url
        assert answer.headers["content-type"] == "application/problem+json"
        assert answer.json()["errors"][0]["field"] == "url"
        task = await hooks_api.post(
            "/v1/tasks",
            json={
                "prompt": "x",
                "image_urls": ["https://cdn.example.com/a.png"],
                "webhook_url": url,
            },
        )
        assert task.status_code == 422, url
        assert task.json()["errors"][0]["field"] == "webhook_url"
    assert (await hooks_api.get("/v1/tasks")).json()["items"] == []
    assert (await hooks_api.get("/v1/webhook-endpoints")).json()["items"] == []


async def test_an_endpoint_is_its_clients_alone_and_its_secret_is_shown_only_when_made(
    hooks_api: httpx.AsyncClient, hooks_beta: httpx.AsyncClient
) -> None:
    """Another client gets 404s; reads never show the secret; PATCH and DELETE work."""
    endpoint = await register(hooks_api, "https://hooks.example.com/a")
    path = f"/v1/webhook-endpoints/{endpoint['id']}"
    assert (await hooks_beta.get(path)).status_code == 404
    assert (await hooks_beta.delete(path)).status_code == 404
    read = (await hooks_api.get(path)).json()
    assert "secret" not in read
    assert [e["id"] for e in (await hooks_api.get("/v1/webhook-endpoints")).json()["items"]] == [
        endpoint["id"]
    ]
    patched = await hooks_api.patch(path, json={"event_types": ["task.failed"], "enabled": False})
    assert patched.status_code == 200, patched.text
    assert patched.json()["event_types"] == ["task.failed"]
    assert patched.json()["disabled_reason"] == "disabled by the client"
    again = (await hooks_api.patch(path, json={"enabled": True})).json()
    assert again["enabled"] is True
    assert again["disabled_reason"] is None
    assert (await hooks_api.delete(path)).status_code == 204
    assert (await hooks_api.get(path)).status_code == 404


async def test_after_a_rotation_both_secrets_verify_every_delivery(
    hooks_api: httpx.AsyncClient, receiver: Receiver
) -> None:
    """During the overlap `webhook-signature` carries two signatures; each secret verifies."""
    endpoint = await register(hooks_api, receiver.url + "/rotated", event_types=["task.succeeded"])
    rotated = await hooks_api.post(f"/v1/webhook-endpoints/{endpoint['id']}/rotate-secret")
    assert rotated.status_code == 200, rotated.text
    new_secret = rotated.json()["secret"]
    assert new_secret != endpoint["secret"]
    assert new_secret.startswith("whsec_")
    await create_task(hooks_api)
    [delivery] = await receiver.wait_for("/rotated", 1)
    assert len(delivery.headers["webhook-signature"].split(" ")) == 2
    assert verified(endpoint["secret"], delivery) == verified(new_secret, delivery)

    old_client = (await hooks_api.get("/v1/webhook-secret")).json()["secret"]
    new_client = (await hooks_api.post("/v1/webhook-secret/rotate")).json()["secret"]
    assert new_client != old_client
    await create_task(hooks_api, webhook_url=receiver.url + "/own")
    for delivery in await receiver.wait_for("/own", 2):
        verified(old_client, delivery)
        verified(new_client, delivery)


async def test_a_redelivery_sends_the_same_id_and_bytes_again(
    hooks_api: httpx.AsyncClient, receiver: Receiver
) -> None:
    """POST /v1/webhook-messages/{id}/redeliver: a second delivery, the same webhook-id."""
    endpoint = await register(hooks_api, receiver.url + "/again", event_types=["task.succeeded"])
    task = await create_task(hooks_api)
    [first] = await receiver.wait_for("/again", 1)
    [message] = await until(hooks_api, task["id"], all_are("delivered"))
    answer = await hooks_api.post(f"/v1/webhook-messages/{message['id']}/redeliver")
    assert answer.status_code == 202, answer.text
    _, second = await receiver.wait_for("/again", 2)
    assert second.headers["webhook-id"] == first.headers["webhook-id"] == message["id"]
    assert second.body == first.body
    verified(endpoint["secret"], second)
    [logged] = await until(hooks_api, task["id"], lambda f: len(f[0]["attempts"]) == 2)
    assert logged["status"] == "delivered"
    missing = await hooks_api.post(f"/v1/webhook-messages/{task['id']}/redeliver")
    assert missing.status_code == 404


async def test_failed_messages_are_recovered_since_a_time_once_the_receiver_is_fixed(
    hooks_api: httpx.AsyncClient,
    receiver: Receiver,
    webhook_service: Service,
    hooks_caller: Caller,
) -> None:
    """Every attempt 500s until the schedule is spent: failed; recover delivers it, same id.
    A failed message from before `since` stays failed."""
    endpoint = await register(hooks_api, receiver.url + "/broken", event_types=["task.succeeded"])
    receiver.plan("/broken", *[Plan(500)] * 4)
    since = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    old_task = await create_task(hooks_api, prompt="[sim:hold] edit")
    async with transaction(webhook_service.resources.sessions) as session:
        await session.execute(
            text(
                "INSERT INTO webhook_messages (id, task_id, client, type, endpoint_id, status,"
                " created_at) VALUES (gen_random_uuid(), :task, :client, 'task.succeeded',"
                " :endpoint, 'failed', now() - interval '1 day')"
            ),
            {"task": old_task["id"], "client": hooks_caller.name, "endpoint": endpoint["id"]},
        )
    task = await create_task(hooks_api)
    [failed] = await until(hooks_api, task["id"], all_are("failed"))
    assert len(failed["attempts"]) == 4
    assert failed["attempts"][-1]["outcome"] == "failed"
    page = await hooks_api.get(
        f"/v1/webhook-endpoints/{endpoint['id']}/messages", params={"status": "failed"}
    )
    # Newest first.
    assert [m["task_id"] for m in page.json()["items"]] == [task["id"], old_task["id"]]
    assert page.json()["items"][0]["id"] == failed["id"]
    path = f"/v1/webhook-endpoints/{endpoint['id']}/messages"
    first = (await hooks_api.get(path, params={"limit": 1})).json()
    second = (await hooks_api.get(path, params={"limit": 1, "cursor": first["next_cursor"]})).json()
    assert [m["task_id"] for m in first["items"] + second["items"]] == [task["id"], old_task["id"]]
    assert second["next_cursor"] is None
    assert (await hooks_api.get(path, params={"cursor": "nonsense"})).status_code == 400
    recover = await hooks_api.post(
        f"/v1/webhook-endpoints/{endpoint['id']}/recover", json={"since": since}
    )
    assert recover.status_code == 202, recover.text
    await until(hooks_api, task["id"], all_are("delivered"))
    deliveries = receiver.at("/broken")
    assert len(deliveries) == 5
    assert {d.headers["webhook-id"] for d in deliveries} == {failed["id"]}
    verified(endpoint["secret"], deliveries[-1])
    [older] = await messages(hooks_api, old_task["id"])
    assert older["status"] == "failed"


async def test_a_receiver_down_then_up_gets_the_message(
    hooks_api: httpx.AsyncClient, receiver: Receiver
) -> None:
    """Connections refused, then a server on that port: delivered on a later attempt."""
    sock = bind()
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there until the receiver comes up
    url = f"http://127.0.0.1:{port}/late"
    endpoint = await register(hooks_api, url, event_types=["task.succeeded"])
    task = await create_task(hooks_api)
    await until(hooks_api, task["id"], lambda found: len(found[0]["attempts"]) >= 2)
    late = Receiver(url=f"http://127.0.0.1:{port}")
    running = await start_server(receiver_app(late), port=port)
    try:
        [message] = await until(hooks_api, task["id"], all_are("delivered"))
    finally:
        await running.stop()
    assert all(a["status_code"] is None for a in message["attempts"][:-1])
    assert message["attempts"][-1]["status_code"] == 200
    [delivery] = late.at("/late")
    Webhook(endpoint["secret"]).verify(delivery.body, delivery.headers)


async def test_retry_after_on_a_429_sets_the_next_attempt(
    hooks_api: httpx.AsyncClient, receiver: Receiver
) -> None:
    """429 with `Retry-After: 3600`: the next attempt is an hour away, not the schedule's."""
    await register(hooks_api, receiver.url + "/busy", event_types=["task.succeeded"])
    receiver.plan("/busy", Plan(429, headers={"Retry-After": "3600"}))
    task = await create_task(hooks_api)
    [message] = await until(hooks_api, task["id"], lambda found: found[0]["attempts"])
    [attempt] = message["attempts"]
    assert attempt["status_code"] == 429
    assert attempt["outcome"] == "retrying"
    wait = datetime.fromisoformat(message["next_attempt_at"]) - datetime.fromisoformat(
        attempt["attempted_at"]
    )
    assert timedelta(minutes=59) < wait <= timedelta(hours=1)


async def test_an_endpoint_failing_for_five_days_is_disabled_with_its_reason(
    hooks_api: httpx.AsyncClient, receiver: Receiver, webhook_service: Service
) -> None:
    """No success since 5 days ago, and one more failure: disabled, saying since when."""
    endpoint = await register(hooks_api, receiver.url + "/dying", event_types=["task.succeeded"])
    async with transaction(webhook_service.resources.sessions) as session:
        await session.execute(
            text(
                "UPDATE webhook_endpoints SET failing_since = now() - interval '5 days 1 minute'"
                " WHERE id = :id"
            ),
            {"id": endpoint["id"]},
        )
    receiver.plan("/dying", Plan(500))
    task = await create_task(hooks_api)
    [message] = await until(hooks_api, task["id"], all_are("failed"))
    assert [a["outcome"] for a in message["attempts"]] == ["disabled"]
    read = (await hooks_api.get(f"/v1/webhook-endpoints/{endpoint['id']}")).json()
    assert read["enabled"] is False
    assert read["disabled_reason"].startswith("failing without a success since")


async def test_a_url_refused_at_connect_time_is_never_connected_to(
    hooks_api: httpx.AsyncClient, webhook_service: Service, hooks_caller: Caller
) -> None:
    """An endpoint whose URL the rule refuses (written past the API) gets failed attempts
    naming the refusal, each without a status: nothing was sent."""
    async with transaction(webhook_service.resources.sessions) as session:
        await session.execute(
            text(
                "INSERT INTO webhook_endpoints (id, client, url, event_types, secret) VALUES"
                " (gen_random_uuid(), :client, 'https://169.254.169.254/latest',"
                " ARRAY['task.succeeded'], :secret)"
            ),
            {"client": hooks_caller.name, "secret": new_secret()},
        )
    task = await create_task(hooks_api)
    [message] = await until(hooks_api, task["id"], lambda found: found[0]["attempts"])
    [attempt, *_] = message["attempts"]
    assert attempt["status_code"] is None
    assert attempt["error"].startswith("the URL is refused")


async def test_a_message_and_its_attempts_are_read_at_one_moment(
    hooks_api: httpx.AsyncClient,
    receiver: Receiver,
    webhook_service: Service,
    hooks_caller: Caller,
) -> None:
    """An attempt recorded while the log is being read shows both in the message (its next
    attempt, its count) and in its attempts, or in neither: never an attempt whose message
    does not know it yet."""
    endpoint = await register(hooks_api, receiver.url + "/read", event_types=["task.failed"])
    task = await create_task(hooks_api, prompt="[sim:hold] edit")
    message_id = uuid.uuid4()
    sessions = webhook_service.resources.sessions
    async with transaction(sessions) as session:
        await session.execute(
            text(
                "INSERT INTO webhook_messages (id, task_id, client, type, endpoint_id,"
                " next_attempt_at) VALUES (:id, :task, :client, 'task.failed', :endpoint,"
                " now() + interval '1 hour')"
            ),
            {
                "id": message_id,
                "task": task["id"],
                "client": hooks_caller.name,
                "endpoint": endpoint["id"],
            },
        )
    database_url = webhook_service.settings.database_url
    recorded = False

    def record_an_attempt_first(*args: Any) -> None:
        """Before the log reads attempts, an attempt commits, as a worker's would."""
        nonlocal recorded
        statement = args[2]
        if recorded or "webhook_attempts" not in statement:
            return
        recorded = True
        with psycopg.connect(database_url, autocommit=True) as other:
            other.execute(
                "WITH m AS (UPDATE webhook_messages SET round_attempts = 1 WHERE id = %s"
                " RETURNING id) INSERT INTO webhook_attempts (message_id, url, attempted_at,"
                " status_code, latency_ms, outcome)"
                " SELECT m.id, 'https://r.example.com/', now(), 500, 3, 'retrying' FROM m",
                (message_id,),
            )

    async with transaction(sessions) as session:
        connection = await session.connection()
        event.listen(connection.sync_connection, "before_cursor_execute", record_an_attempt_first)
        [(message, attempts)] = await task_messages(
            session, hooks_caller.name, uuid.UUID(task["id"])
        )
    assert recorded
    assert (message.round_attempts, len(attempts)) in {(0, 0), (1, 1)}
