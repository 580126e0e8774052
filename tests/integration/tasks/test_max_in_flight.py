"""`max_in_flight`: tasks beyond it are accepted and wait `queued` (parked), then are sent
oldest first as slots free, each client in its turn; cancels still reach a parked task.

What was in flight when is read from the tasks' own timestamps — `claimed_at` (taken under
the client's claim lock) and `finished_at` — never from how long anything took.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest

from app.jobs import SUBMIT_TASK
from app.tasks import cancel, dispatch, submission, sweep
from tests.conftest import Caller, Service
from tests.helpers import ADMIN_KEY, create_task, provider_tasks, wait_for_task

HELD = "Replace the background with a snowy mountain range [sim:hold]"


@pytest.fixture
async def admin(service: Service) -> AsyncIterator[httpx.AsyncClient]:
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    async with httpx.AsyncClient(base_url=service.url, headers=headers, timeout=30) as client:
        yield client


async def limit(admin: httpx.AsyncClient, client: str, max_in_flight: int | None) -> None:
    answer = await admin.patch(f"/v1/admin/clients/{client}", json={"max_in_flight": max_in_flight})
    assert answer.status_code == 200, answer.text


async def rows(service: Service, task_ids: list[str]) -> list[dict[str, Any]]:
    """The tasks' status and timestamps, in the order of `task_ids`."""
    async with service.resources.pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT id::text, status, created_at, claimed_at, finished_at, parked_at"
            " FROM tasks WHERE id = ANY(%s)",
            ([uuid.UUID(i) for i in task_ids],),
        )
        found = {
            row[0]: dict(
                zip(
                    ("id", "status", "created_at", "claimed_at", "finished_at", "parked_at"),
                    row,
                    strict=True,
                )
            )
            for row in await cursor.fetchall()
        }
    return [found[i] for i in task_ids]


def most_in_flight(tasks: list[dict[str, Any]]) -> int:
    """The most tasks in flight at once: at each claim, those claimed earlier and not yet
    finished, plus the one claimed."""
    spans: list[tuple[datetime, datetime]] = [(t["claimed_at"], t["finished_at"]) for t in tasks]
    return max(1 + sum(1 for start, end in spans if start < claimed < end) for claimed, _ in spans)


async def sim_task(sim: httpx.AsyncClient, task_id: str) -> str:
    """The simulator's id of the task it created for our `task_id`."""
    records = await provider_tasks(sim, {task_id})
    assert len(records) == 1
    provider_id: str = records[0]["task"]["id"]
    return provider_id


async def test_ten_tasks_through_two_slots_all_complete_oldest_first(
    service: Service, admin: httpx.AsyncClient, api: httpx.AsyncClient, caller: Caller
) -> None:
    """max_in_flight 2: every task is accepted and completes, no more than two are ever in
    flight, and they are claimed in the order they were created."""
    await limit(admin, caller.name, 2)
    ids = [(await create_task(api))["id"] for _ in range(10)]
    for task_id in ids:
        await wait_for_task(api, task_id, {"completed"}, within=60)
    tasks = await rows(service, ids)
    assert all(t["status"] == "completed" for t in tasks)
    assert most_in_flight(tasks) == 2
    claimed = sorted(tasks, key=lambda t: t["claimed_at"])
    assert [t["id"] for t in claimed] == ids


async def test_a_backlog_waits_parked_without_delaying_another_client_then_drains_in_order(
    service: Service,
    admin: httpx.AsyncClient,
    api: httpx.AsyncClient,
    beta_api: httpx.AsyncClient,
    caller: Caller,
    beta_caller: Caller,
    sim: httpx.AsyncClient,
) -> None:
    """Client A's one slot is held at the provider and its 12 further tasks wait parked
    (queued, no job); client B's task, created after them, is sent and completes meanwhile.
    Once A's first task completes, the backlog drains, one at a time, oldest first."""
    await limit(admin, caller.name, 1)
    await limit(admin, beta_caller.name, 1)
    first = await create_task(api, prompt=HELD)
    await wait_for_task(api, first["id"], {"pending", "processing"})
    backlog = [(await create_task(api))["id"] for _ in range(12)]

    other = await create_task(beta_api)
    await wait_for_task(beta_api, other["id"], {"completed"}, within=30)

    waiting = await rows(service, backlog)
    assert all(t["status"] == "queued" for t in waiting)
    assert all(t["parked_at"] is not None and t["claimed_at"] is None for t in waiting)

    done = await sim.post(f"/_sim/tasks/{await sim_task(sim, first['id'])}/complete")
    assert done.status_code == 200
    for task_id in backlog:
        await wait_for_task(api, task_id, {"completed"}, within=60)
    drained = await rows(service, [first["id"], *backlog])
    assert most_in_flight(drained) == 1
    assert [t["id"] for t in sorted(drained, key=lambda t: t["claimed_at"])] == [
        first["id"],
        *backlog,
    ]


async def test_a_parked_task_is_cancelled_by_its_client_and_by_its_cancel_at(
    service: Service,
    admin: httpx.AsyncClient,
    api: httpx.AsyncClient,
    caller: Caller,
    sim: httpx.AsyncClient,
) -> None:
    """Waiting for a slot is being queued: the client's cancel and `cancel_after_seconds`
    end the parked task `cancelled`, it is never sent, and the task behind it still is."""
    await limit(admin, caller.name, 1)
    first = await create_task(api, prompt=HELD)
    await wait_for_task(api, first["id"], {"pending", "processing"})
    cancelled = await create_task(api)
    overdue = await create_task(api, cancel_after_seconds=1)
    last = await create_task(api)

    answer = await api.post(f"/v1/tasks/{cancelled['id']}/cancel")
    assert answer.status_code == 200, answer.text
    assert answer.json()["status"] == "cancelled"

    resources = service.resources
    while (await rows(service, [overdue["id"]]))[0]["status"] == "queued":
        await cancel.cancel_overdue(resources.pool, resources.sessions)
        await asyncio.sleep(0.2)
    assert (await api.get(f"/v1/tasks/{overdue['id']}")).json()["status"] == "cancelled"

    await sim.post(f"/_sim/tasks/{await sim_task(sim, first['id'])}/complete")
    await wait_for_task(api, last["id"], {"completed"}, within=30)
    sent = await provider_tasks(sim, {cancelled["id"], overdue["id"], last["id"]})
    assert [r["request"]["callback_url"].split("/")[-2] for r in sent] == [last["id"]]


async def test_a_task_parked_while_the_client_was_limited_is_sent_once_the_limit_is_lifted(
    service: Service,
    admin: httpx.AsyncClient,
    api: httpx.AsyncClient,
    caller: Caller,
    sim: httpx.AsyncClient,
) -> None:
    """Nothing parked is lost: with the limit removed, the dispatcher (here run as its
    periodic run would) sends what was waiting, though no slot was freed."""
    await limit(admin, caller.name, 1)
    first = await create_task(api, prompt=HELD)
    await wait_for_task(api, first["id"], {"pending", "processing"})
    parked = [(await create_task(api))["id"] for _ in range(3)]
    assert all(t["parked_at"] is not None for t in await rows(service, parked))

    await limit(admin, caller.name, None)
    await dispatch.dispatch_parked(service.resources.sessions)
    for task_id in parked:
        await wait_for_task(api, task_id, {"completed"}, within=30)
    assert (await rows(service, [first["id"]]))[0]["status"] != "completed"
    await sim.post(f"/_sim/tasks/{await sim_task(sim, first['id'])}/complete")
    await wait_for_task(api, first["id"], {"completed"})


async def test_claims_racing_from_many_workers_never_exceed_the_limit(
    service: Service,
    admin: httpx.AsyncClient,
    api: httpx.AsyncClient,
    caller: Caller,
    sim: httpx.AsyncClient,
) -> None:
    """Six connections claiming six tasks of a client at once, beside the worker's own
    jobs, as six workers would: exactly two (the limit) end up in flight, the rest stay
    queued and parked."""
    await limit(admin, caller.name, 2)
    ids = [(await create_task(api, prompt=HELD))["id"] for _ in range(6)]

    async def race(task_id: str) -> str:
        async with await psycopg.AsyncConnection.connect(
            service.settings.database_url, autocommit=True
        ) as conn:
            cursor = await conn.execute(submission.CLAIM, {"task_id": uuid.UUID(task_id)})
            row = await cursor.fetchone()
            assert row is not None
            outcome: str = row[0]
            return outcome

    outcomes = await asyncio.gather(*(race(task_id) for task_id in ids))
    assert outcomes.count("claimed") <= 2
    # The worker's jobs claim beside the race (what it claimed stays `submitting`: no job
    # of its sends it). Whatever order it all happened in, two end in flight, never more.
    holding = {"submitting", "pending", "processing"}
    deadline = time.monotonic() + 15
    while True:
        tasks = await rows(service, ids)
        in_flight = [t for t in tasks if t["status"] in holding]
        assert len(in_flight) <= 2
        if len(in_flight) == 2 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    assert len(in_flight) == 2
    assert all(t["status"] == "queued" for t in tasks if t not in in_flight)

    for task in tasks:
        if task not in in_flight:
            assert (await api.post(f"/v1/tasks/{task['id']}/cancel")).status_code == 200
    raced = {i for i, outcome in zip(ids, outcomes, strict=True) if outcome == "claimed"}
    for task in in_flight:
        if task["id"] not in raced:
            await wait_for_task(api, task["id"], {"pending", "processing"})
            await sim.post(f"/_sim/tasks/{await sim_task(sim, task['id'])}/complete")
            await wait_for_task(api, task["id"], {"completed"})


async def test_the_sweeper_leaves_a_parked_task_to_the_dispatcher(
    service: Service,
    admin: httpx.AsyncClient,
    api: httpx.AsyncClient,
    caller: Caller,
    sim: httpx.AsyncClient,
) -> None:
    """A parked task has no job by design: the sweeper's look for queued tasks that lost
    theirs does not find it, however long it has waited."""
    await limit(admin, caller.name, 1)
    first = await create_task(api, prompt=HELD)
    await wait_for_task(api, first["id"], {"pending", "processing"})
    parked = await create_task(api)
    assert (await rows(service, [parked["id"]]))[0]["parked_at"] is not None

    later = datetime.now(UTC) + timedelta(hours=1)
    async with service.resources.sessions() as session:
        stuck = await session.execute(
            sweep.STUCK_SUBMISSIONS, {"cutoff": later, "job": SUBMIT_TASK}
        )
        assert str(parked["id"]) not in {str(task_id) for (task_id,) in stuck.all()}

    await sim.post(f"/_sim/tasks/{await sim_task(sim, first['id'])}/complete")
    await wait_for_task(api, parked["id"], {"completed"}, within=30)
