"""The webhook figures of /metrics, on a webhook stack and database of the test's own: they
count every attempt and message there is."""

from __future__ import annotations

import httpx

from tests.helpers import create_task
from tests.integration.webhooks.conftest import Receiver
from tests.integration.webhooks.test_delivery import register
from tests.integration.webhooks.test_log_and_replay import all_are, until


async def test_metrics_count_attempts_by_outcome(
    own_hooks_api: httpx.AsyncClient, receiver: Receiver
) -> None:
    """/metrics shows the delivered attempts and the oldest undelivered message's age."""
    api = own_hooks_api
    await register(api, receiver.url + "/counted", event_types=["task.succeeded"])
    task = await create_task(api)
    await until(api, task["id"], all_are("delivered"))
    text = (await api.get("/metrics")).text
    assert 'edithook_webhook_attempts_24h{outcome="delivered"} 1' in text
    assert "edithook_webhook_oldest_undelivered_seconds 0" in text
