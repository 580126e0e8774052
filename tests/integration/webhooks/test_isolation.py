"""Deliveries run beside the task jobs, not in their place: a receiver that hangs holds a
delivery slot, never the slot a submission or a result copy needs."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from app.servers import RunningServer
from tests.conftest import Callers, Service, serving_stack
from tests.helpers import create_task, wait_for_task
from tests.integration.webhooks.conftest import Plan, Receiver
from tests.integration.webhooks.test_delivery import register


@pytest.fixture
async def one_slot_service(
    own_database_url: str, simulator: RunningServer, callers: Callers, tmp_path: Path
) -> AsyncIterator[Service]:
    """A stack whose worker runs one task job at a time, and waits long for a receiver."""
    async with serving_stack(
        own_database_url,
        simulator.url,
        str(tmp_path / "results"),
        api_keys=callers.api_keys,
        pool_size=1,
        worker_pool_size=1,
        worker_concurrency=1,
        webhook_timeout_seconds=60,
    ) as running:
        yield running


async def test_a_hanging_receiver_does_not_hold_up_the_next_task(
    one_slot_service: Service, callers: Callers, receiver: Receiver
) -> None:
    """With one task slot, a task is submitted and completed while the delivery of another
    task's message is still waiting on its receiver."""
    release = asyncio.Event()
    async with httpx.AsyncClient(
        base_url=one_slot_service.url, headers=callers.take().headers, timeout=30
    ) as api:
        hook = receiver.plan("/hang", Plan(until=release))
        await register(api, hook, event_types=["task.submitted"])
        try:
            await create_task(api)
            await receiver.wait_for("/hang", 1)  # the delivery is in flight, and stays so
            second = await create_task(api)
            await wait_for_task(api, second["id"], {"completed"}, within=30)
            # Held until it is settled: its results copied by a job of the default queue.
            settled = await api.get(f"/v1/tasks/{second['id']}", headers={"Prefer": "wait=20"})
            assert settled.json()["results_stored"] is True
            assert not release.is_set()
        finally:
            release.set()
