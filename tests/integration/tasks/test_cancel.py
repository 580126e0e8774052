"""Cancel over real HTTP: a queued task is cancelled and never submitted; a submitted one is
409 and goes on; `cancel_after_seconds` cancels a task still not submitted, in the
reconciler and in a late submit job's claim; and a cancel racing the claim does one or the
other, never both. A service of this module's own, on its own database and WITHOUT a
worker, so that a task stays queued until a test runs its submit job's body; the
simulator is the suite's."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import psycopg
import pytest

from app.db import DirectUnavailable
from app.main import create_app
from app.resources import Resources
from app.servers import RunningServer, bind, socket_url, start_server
from app.tasks import cancel, submission
from tests.conftest import Service
from tests.helpers import (
    ALPHA_KEY,
    BETA_KEY,
    create_task,
    events,
    make_settings,
    named_task,
    wait_for_task,
)


@pytest.fixture(scope="module")
async def lone_service(
    private_database_url: str,
    simulator: RunningServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Service]:
    """The API on this module's database; no worker runs its jobs."""
    sock = bind()
    settings = make_settings(
        private_database_url,
        simulator.url,
        socket_url(sock),
        storage_url=str(tmp_path_factory.mktemp("cancel-results")),
        db_pool_size=2,
    )
    app = create_app(settings)
    running = await start_server(app, sock=sock)
    yield Service(server=running, app=app, settings=settings)
    await running.stop()


@pytest.fixture
async def alpha(lone_service: Service) -> AsyncIterator[httpx.AsyncClient]:
    """The module's service's client `alpha`; its database is the module's own."""
    headers = {"Authorization": f"Bearer {ALPHA_KEY}"}
    async with httpx.AsyncClient(base_url=lone_service.url, headers=headers, timeout=30) as c:
        yield c


@pytest.fixture
async def beta(lone_service: Service) -> AsyncIterator[httpx.AsyncClient]:
    headers = {"Authorization": f"Bearer {BETA_KEY}"}
    async with httpx.AsyncClient(base_url=lone_service.url, headers=headers, timeout=30) as c:
        yield c


async def submit(resources: Resources, task_id: str) -> float | None:
    """The submit job's body, given what the job gives it."""
    settings = resources.settings
    parsed = uuid.UUID(task_id)
    return await submission.submit_task(
        resources.pool,
        resources.sessions,
        resources.evolink,
        parsed,
        callback_url=submission.callback_url(settings, parsed),
        attempts=settings.submit_attempts,
        unknown_timeout_seconds=settings.submit_unknown_timeout_seconds,
    )


async def stats(sim: httpx.AsyncClient) -> dict[str, int]:
    answer: dict[str, int] = (await sim.get("/_sim/stats")).json()
    return answer


async def created_for(sim: httpx.AsyncClient) -> list[str]:
    """Our task ids the simulator created a task for (its callback URL names ours)."""
    records = (await sim.get("/_sim/tasks")).json()
    return [str(named_task(r["request"]["callback_url"])) for r in records]


async def sql(url: str, statement: str, *params: Any) -> list[tuple[Any, ...]]:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        cursor = await conn.execute(statement, params)
        return await cursor.fetchall() if cursor.description else []


async def test_a_queued_task_is_cancelled_and_never_submitted(
    alpha: httpx.AsyncClient, sim: httpx.AsyncClient, lone_service: Service
) -> None:
    """200 with the task as GET shows it: cancelled by the client; its job then submits
    nothing, and the simulator sees no create."""
    task = await create_task(alpha)
    assert task["status"] == "queued"
    answer = await alpha.post(f"/v1/tasks/{task['id']}/cancel")
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["status"] == "cancelled"
    assert body["resolved_by"] == "client"
    assert body["error"]["code"] == "cancelled_by_client"
    assert body["finished_at"] is not None
    assert body == (await alpha.get(f"/v1/tasks/{task['id']}")).json()

    before = await stats(sim)
    assert await submit(lone_service.resources, task["id"]) is None
    assert (await stats(sim))["create_requests"] == before["create_requests"]
    assert task["id"] not in await created_for(sim)
    assert (await alpha.get(f"/v1/tasks/{task['id']}")).json() == body
    moves = [
        (e["kind"], e["outcome"], e["from_status"], e["to_status"])
        for e in await events(alpha, task["id"])
    ]
    assert moves == [
        ("created", "applied", None, "queued"),
        ("client", "applied", "queued", "cancelled"),
    ]


async def test_cancelling_a_cancelled_task_answers_the_task_again(
    alpha: httpx.AsyncClient,
) -> None:
    """Idempotent: the same 200 and body, and nothing more recorded."""
    task = await create_task(alpha)
    first = await alpha.post(f"/v1/tasks/{task['id']}/cancel")
    again = await alpha.post(f"/v1/tasks/{task['id']}/cancel")
    assert (first.status_code, again.status_code) == (200, 200)
    assert again.json() == first.json()
    assert len(await events(alpha, task["id"])) == 2


async def test_a_submitted_task_is_409_and_goes_on(
    alpha: httpx.AsyncClient, sim: httpx.AsyncClient, lone_service: Service
) -> None:
    """Being submitted, submitted, or ended: 409 problem saying why; the task is unchanged
    and completes as it would have."""
    resources = lone_service.resources
    claimed = await create_task(alpha)
    assert await submission.claim(resources.pool, uuid.UUID(claimed["id"])) is not None
    answer = await alpha.post(f"/v1/tasks/{claimed['id']}/cancel")
    assert answer.status_code == 409, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    assert "being submitted" in answer.json()["detail"]
    assert answer.json()["task_status"] == "submitting"

    task = await create_task(alpha)
    assert await submit(resources, task["id"]) is None
    pending = (await alpha.get(f"/v1/tasks/{task['id']}")).json()
    assert pending["status"] == "pending"
    answer = await alpha.post(f"/v1/tasks/{task['id']}/cancel")
    assert answer.status_code == 409, answer.text
    problem = answer.json()
    assert problem["status"] == 409
    assert "EvoLink" in problem["detail"]
    assert "cannot cancel" in problem["detail"]
    assert problem["task_status"] == "pending"
    assert (await alpha.get(f"/v1/tasks/{task['id']}")).json()["status"] == "pending"

    await sim.post(f"/_sim/tasks/{pending['provider_task_id']}/complete")
    done = await wait_for_task(alpha, task["id"], {"completed"}, within=20)
    assert done["resolved_by"] == "callback"
    ended = await alpha.post(f"/v1/tasks/{task['id']}/cancel")
    assert ended.status_code == 409
    assert "already ended (completed)" in ended.json()["detail"]
    assert not any(e["kind"] == "client" for e in await events(alpha, task["id"]))


async def test_another_clients_task_is_not_found(
    alpha: httpx.AsyncClient, beta: httpx.AsyncClient
) -> None:
    """Another client's task, an unknown id and a malformed one are all 404; the task stays."""
    task = await create_task(alpha)
    for path in (task["id"], str(uuid.uuid4()), "not-a-task"):
        answer = await beta.post(f"/v1/tasks/{path}/cancel")
        assert answer.status_code == 404, answer.text
        assert answer.headers["content-type"] == "application/problem+json"
    assert (await alpha.get(f"/v1/tasks/{task['id']}")).json()["status"] == "queued"


@pytest.mark.parametrize("value", [0, -1, 86_401, 1.5, "10", True])
async def test_cancel_after_seconds_out_of_bounds_is_422(
    alpha: httpx.AsyncClient, value: object
) -> None:
    answer = await alpha.post(
        "/v1/tasks",
        json={
            "prompt": "x",
            "image_urls": ["https://cdn.example.com/in/a.png"],
            "cancel_after_seconds": value,
        },
    )
    assert answer.status_code == 422, answer.text
    assert any("cancel_after_seconds" in str(e) for e in answer.json()["errors"])


async def test_cancel_after_is_kept_apart_from_the_providers_request(
    alpha: httpx.AsyncClient,
) -> None:
    """`cancel_at` is shown; the request sent to EvoLink does not carry the field."""
    task = await create_task(alpha, cancel_after_seconds=600)
    assert task["cancel_at"] is not None
    assert task["cancel_at"] > task["created_at"]
    assert "cancel_after_seconds" not in task["request"]
    assert (await create_task(alpha))["cancel_at"] is None


async def test_the_reconciler_cancels_a_task_still_queued_at_its_cancel_at(
    alpha: httpx.AsyncClient,
    sim: httpx.AsyncClient,
    lone_service: Service,
    private_database_url: str,
) -> None:
    """A task EvoLink refused with 429 is queued again; past its cancel_at the reconciler
    cancels it (system, cancel_after_elapsed), with its webhook-making move, and the retry
    of its job submits nothing. A task not yet due, and one without a cancel_at, stay."""
    resources = lone_service.resources
    await sim.post("/_sim/faults", json={"endpoint": "create", "status": 429, "retry_after": 30})
    refused = await create_task(alpha, cancel_after_seconds=3600)
    assert await submit(resources, refused["id"]) == 30
    assert (await alpha.get(f"/v1/tasks/{refused['id']}")).json()["status"] == "queued"
    not_due = await create_task(alpha, cancel_after_seconds=3600)
    never = await create_task(alpha)
    await sql(
        private_database_url,
        "UPDATE tasks SET cancel_at = now() - interval '1 second' WHERE id = %s",
        uuid.UUID(refused["id"]),
    )

    # The module's database holds no other task past its cancel_at.
    assert await cancel.cancel_overdue(resources.pool, resources.sessions) == 1
    done = (await alpha.get(f"/v1/tasks/{refused['id']}")).json()
    assert done["status"] == "cancelled"
    assert done["resolved_by"] == "system"
    assert done["error"]["code"] == "cancel_after_elapsed"
    for other in (not_due, never):
        assert (await alpha.get(f"/v1/tasks/{other['id']}")).json()["status"] == "queued"

    before = await stats(sim)
    assert await submit(resources, refused["id"]) is None
    assert (await stats(sim))["create_requests"] == before["create_requests"]
    assert refused["id"] not in await created_for(sim)


async def test_a_late_submit_job_cancels_instead_of_submitting(
    alpha: httpx.AsyncClient,
    sim: httpx.AsyncClient,
    lone_service: Service,
    private_database_url: str,
) -> None:
    """The claim refuses a task past its cancel_at even before the reconciler has run: the
    job cancels it, and EvoLink is never asked."""
    task = await create_task(alpha, cancel_after_seconds=3600)
    await sql(
        private_database_url,
        "UPDATE tasks SET cancel_at = now() - interval '1 second' WHERE id = %s",
        uuid.UUID(task["id"]),
    )
    before = await stats(sim)
    assert await submit(lone_service.resources, task["id"]) is None
    assert (await stats(sim))["create_requests"] == before["create_requests"]
    done = (await alpha.get(f"/v1/tasks/{task['id']}")).json()
    assert (done["status"], done["resolved_by"]) == ("cancelled", "system")
    assert done["error"]["code"] == "cancel_after_elapsed"
    kinds = [(e["kind"], e["to_status"]) for e in await events(alpha, task["id"])]
    assert kinds == [("created", "queued"), ("system", "cancelled")]


RACERS = 48
WAVE = 8


async def test_a_cancel_racing_the_claim_is_one_or_the_other_never_both(
    alpha: httpx.AsyncClient, sim: httpx.AsyncClient, lone_service: Service
) -> None:
    """Many tasks, each cancelled over HTTP while its submit job runs, in waves of eight:
    each ends either cancelled (200, never sent) or submitted (409, sent once)."""
    resources = lone_service.resources
    tasks = [await create_task(alpha) for _ in range(RACERS)]
    order = random.Random(12)  # noqa: S311 - a test's schedule, not a secret
    # A cancel over HTTP takes longer to reach the row than a claim: each claim starts after
    # a random delay across the span of one cancel (measured here, on a task of its own),
    # so that either may come first. Which does is not asserted; each outcome is checked.
    started = time.monotonic()
    assert (await alpha.post(f"/v1/tasks/{(await create_task(alpha))['id']}/cancel")).is_success
    span = 2 * (time.monotonic() - started)

    async def race(task_id: str) -> tuple[int, float | None]:
        async def cancelling() -> int:
            return (await alpha.post(f"/v1/tasks/{task_id}/cancel")).status_code

        async def submitting() -> float | None:
            await asyncio.sleep(order.random() * span)
            while True:
                try:
                    return await submit(resources, task_id)
                except DirectUnavailable:
                    # The claim found the small pool busy: the job is retried, as procrastinate
                    # retries it, and nothing was sent.
                    await asyncio.sleep(0.01)

        return await asyncio.gather(cancelling(), submitting())

    answers = []
    for wave in range(0, RACERS, WAVE):
        answers += await asyncio.gather(*(race(t["id"]) for t in tasks[wave : wave + WAVE]))
    sent = await created_for(sim)
    outcomes = {"cancelled": 0, "submitted": 0}
    for task, (status_code, retry) in zip(tasks, answers, strict=True):
        assert retry is None
        state = (await alpha.get(f"/v1/tasks/{task['id']}")).json()
        if state["status"] == "cancelled":
            outcomes["cancelled"] += 1
            assert status_code == 200
            assert state["resolved_by"] == "client"
            assert state["provider_task_id"] is None
            assert state["submitted_at"] is None
            assert task["id"] not in sent
        else:
            outcomes["submitted"] += 1
            assert status_code == 409, state
            assert state["provider_task_id"] is not None
            assert sent.count(task["id"]) == 1
    print("race outcomes:", outcomes)
