"""Submission, reconciliation, the sweeper and retention, with the in-process worker."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import uuid
from datetime import UTC, datetime, timedelta

import httpx
import psycopg

from app.evolink.client import EvoLinkClient
from app.jobs import SUBMIT_TASK
from app.notify import TASK_CHANNEL
from app.resources import Resources
from app.tasks import reconcile, submission, sweep
from app.worker import open_job_app
from tests.conftest import Caller, Service
from tests.helpers import (
    VALID_EDIT,
    create_task,
    events,
    own_task_ids,
    provider_tasks,
    wait_for_task,
)


def with_settings(resources: Resources, **changes: object) -> Resources:
    return dataclasses.replace(resources, settings=resources.settings.model_copy(update=changes))


async def submit(resources: Resources, task_id: uuid.UUID) -> float | None:
    """The submit job's body, given what the job gives it."""
    settings = resources.settings
    return await submission.submit_task(
        resources.pool,
        resources.sessions,
        resources.evolink,
        task_id,
        callback_url=submission.callback_url(settings, task_id),
        attempts=settings.submit_attempts,
        unknown_timeout_seconds=settings.submit_unknown_timeout_seconds,
    )


async def poll(resources: Resources, task_id: str) -> reconcile.PollResult:
    """One poll of the task, given what the refresh route gives it."""
    return await reconcile.poll_task(
        resources.pool,
        resources.sessions,
        resources.evolink,
        uuid.UUID(task_id),
        callback_secret=resources.settings.callback_secret.get_secret_value(),
        unknown_timeout_seconds=resources.settings.submit_unknown_timeout_seconds,
    )


async def test_429_then_200_submits_once(api: httpx.AsyncClient, sim: httpx.AsyncClient) -> None:
    """A rate-limited create is retried after Retry-After; the provider gets one task."""
    before = (await sim.get("/_sim/stats")).json()
    await sim.post("/_sim/faults", json={"endpoint": "create", "status": 429, "retry_after": 1})
    task = await create_task(api)
    done = await wait_for_task(api, task["id"], {"completed"}, within=30)
    after = (await sim.get("/_sim/stats")).json()
    assert len(await provider_tasks(sim, {task["id"]})) == 1
    # Nothing else calls the simulator during a test that uses `sim`: all requests are ours.
    assert after["create_requests"] == before["create_requests"] + 2
    errors = [e for e in await events(api, done["id"]) if e["outcome"] == "error"]
    assert len(errors) == 1
    assert "retrying in 1 s" in errors[0]["detail"]


async def test_a_refused_create_fails_the_task_with_the_providers_reason(
    api: httpx.AsyncClient, sim: httpx.AsyncClient
) -> None:
    """400/401/402/403 are final: the task fails with the provider's code, nothing is retried."""
    await sim.post(
        "/_sim/faults",
        json={
            "endpoint": "create",
            "status": 402,
            "code": "insufficient_quota",
            "message": "top up",
        },
    )
    before = (await sim.get("/_sim/stats")).json()["create_requests"]
    task = await create_task(api)
    done = await wait_for_task(api, task["id"], {"failed"})
    assert done["error"] == {"code": "insufficient_quota", "message": "top up"}
    assert done["resolved_by"] == "submission"
    assert (await sim.get("/_sim/stats")).json()["create_requests"] == before + 1


async def test_an_ambiguous_create_is_not_resent_and_its_callback_settles_it(
    api: httpx.AsyncClient, sim: httpx.AsyncClient, service: Service, caller: Caller
) -> None:
    """A create that times out after sending stays `submitting`; the callback adopts the id."""
    resources = service.resources
    hurried = httpx.AsyncClient(timeout=httpx.Timeout(0.3))
    patient = dataclasses.replace(
        resources,
        evolink=EvoLinkClient(hurried, resources.settings.evolink_base_url, "sk-test-key"),
    )
    await sim.post(
        "/_sim/faults", json={"endpoint": "create", "mode": "accept_then_hang", "hang_seconds": 2}
    )
    task_id = uuid.uuid4()
    async with resources.sessions() as session, session.begin():
        from app.tasks.schemas import TaskCreate
        from app.tasks.service import create_task as store

        held = TaskCreate.model_validate({**VALID_EDIT, "prompt": "[sim:hold]"})
        task, _ = await store(session, caller.name, held, None)
        task_id = task.id
    # Claim it here, before the in-process worker's job can: this call meets the hang.
    assert await submit(patient, task_id) is None
    await hurried.aclose()
    pending = (await api.get(f"/v1/tasks/{task_id}")).json()
    assert pending["status"] == "submitting"
    assert pending["provider_task_id"] is None
    # The provider did create it; when it ends, its callback names our task.
    [created] = [record["task"]["id"] for record in await provider_tasks(sim, {str(task_id)})]
    await sim.post(f"/_sim/tasks/{created}/complete")
    done = await wait_for_task(api, str(task_id), {"completed"}, within=20)
    assert done["resolved_by"] == "callback"
    assert done["provider_task_id"].startswith("task-unified-")
    assert len(await provider_tasks(sim, await own_task_ids(api))) == 1


async def test_a_lost_callback_is_recovered_by_polling(
    own_api: httpx.AsyncClient, own_service: Service
) -> None:
    """With no callback ever sent, the reconciler's poll completes the task and stores results.

    On a service and database of its own: the metrics count every task there is."""
    api, resources = own_api, own_service.resources
    task = await create_task(api, prompt="quiet [sim:no-callback]")
    await wait_for_task(api, task["id"], {"pending", "processing"})
    eager = with_settings(resources, poll_floor_seconds=0.0, poll_factor=1.0)
    polls = 0
    for _ in range(100):
        run = await reconcile.reconcile(eager.pool, eager.sessions, eager.evolink, eager.settings)
        polls += run.polled
        body = (await api.get(f"/v1/tasks/{task['id']}")).json()
        if body["status"] == "completed":
            break
        await asyncio.sleep(0.1)
    assert polls >= 1
    settled = (await api.get(f"/v1/tasks/{task['id']}", headers={"Prefer": "wait=20"})).json()
    assert settled["resolved_by"] == "poll"
    assert settled["results_stored"] is True
    metrics = (await api.get("/metrics")).text
    assert 'edithook_tasks_finished_24h{resolved_by="poll"} 1' in metrics
    assert "edithook_callback_loss_ratio_24h 1" in metrics


async def test_refresh_polls_now(api: httpx.AsyncClient, sim: httpx.AsyncClient) -> None:
    """POST /refresh applies the provider's current state at once, as a poll."""
    task = await create_task(api, prompt="quiet [sim:no-callback] [sim:hold]")
    pending = await wait_for_task(api, task["id"], {"pending", "processing"})
    await sim.post(f"/_sim/tasks/{pending['provider_task_id']}/complete")
    refreshed = await api.post(f"/v1/tasks/{task['id']}/refresh")
    assert refreshed.status_code == 200
    assert (refreshed.json()["status"], refreshed.json()["resolved_by"]) == ("completed", "poll")


async def test_refresh_before_submission_is_a_conflict(
    api: httpx.AsyncClient, database_url: str, caller: Caller
) -> None:
    """A task without a provider id cannot be polled: 409."""
    task_id = _insert_task(database_url, caller, status="submitting", age=timedelta(0))
    response = await api.post(f"/v1/tasks/{task_id}/refresh")
    assert response.status_code == 409


def _insert_task(database_url: str, caller: Caller, *, status: str, age: timedelta) -> str:
    task_id = uuid.uuid4()
    when = datetime.now(UTC) - age
    with psycopg.connect(database_url) as conn:
        conn.execute(
            "INSERT INTO tasks (id, client, status, progress, request, metadata, request_hash,"
            " created_at, updated_at) VALUES (%s, %s, %s, 0, %s, '{}', 'h', %s, %s)",
            (task_id, caller.name, status, psycopg.types.json.Jsonb(VALID_EDIT), when, when),
        )
    return str(task_id)


def _submit_jobs(database_url: str, task_id: str) -> int:
    """How many submit jobs the task has had, whatever became of them."""
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM procrastinate_jobs"
            " WHERE task_name = %s AND args->>'task_id' = %s",
            (SUBMIT_TASK, task_id),
        ).fetchone()
    assert row is not None
    return int(row[0])


async def test_a_silent_ambiguous_submission_fails_after_the_timeout(
    api: httpx.AsyncClient, service: Service, database_url: str, caller: Caller
) -> None:
    """`submitting` with no provider id and no word past the limit fails with a clear reason."""
    resources = service.resources
    old = _insert_task(database_url, caller, status="submitting", age=timedelta(hours=1))
    recent = _insert_task(database_url, caller, status="submitting", age=timedelta(seconds=1))
    limit = resources.settings.submit_unknown_timeout_seconds
    given_up = await reconcile.give_up_on_silent_submissions(
        resources.pool, resources.sessions, unknown_timeout_seconds=limit
    )
    # Counted over the database: of this test's tasks, the old one alone.
    assert given_up >= 1
    assert [e["kind"] for e in await events(api, old) if e["to_status"] == "failed"] == ["system"]
    failed = (await api.get(f"/v1/tasks/{old}")).json()
    assert failed["status"] == "failed"
    assert failed["error"]["code"] == "submission_outcome_unknown"
    assert failed["resolved_by"] == "system"
    assert (await api.get(f"/v1/tasks/{recent}")).json()["status"] == "submitting"


async def test_the_sweeper_resubmits_a_queued_task_that_lost_its_job(
    api: httpx.AsyncClient, service: Service, database_url: str, caller: Caller
) -> None:
    """A queued task with no live job (written by hand here) is found and submitted."""
    resources = service.resources
    orphan = _insert_task(database_url, caller, status="queued", age=timedelta(minutes=5))
    async with open_job_app(resources.settings) as job_app:
        report = await sweep.sweep(resources.sessions, job_app.job_manager)
        # Counted over the database; of this test's tasks, the orphan got one job.
        assert report.submissions >= 1
        assert _submit_jobs(database_url, orphan) == 1
        await sweep.sweep(resources.sessions, job_app.job_manager)
        assert _submit_jobs(database_url, orphan) == 1  # its job is live: not enqueued again
    done = await wait_for_task(api, orphan, {"completed"})
    assert done["provider_task_id"]


async def test_retention_prunes_raw_bodies_and_keeps_the_events(
    api: httpx.AsyncClient, service: Service, database_url: str
) -> None:
    """Event bodies older than the retention are dropped; the events themselves remain."""
    resources = service.resources
    task = await create_task(api)
    await wait_for_task(api, task["id"], {"completed"})
    with psycopg.connect(database_url) as conn:
        conn.execute(
            "UPDATE task_events SET created_at = now() - interval '40 days' WHERE task_id = %s",
            (task["id"],),
        )
    before = await events(api, task["id"])
    assert any(e["body"] for e in before)
    days = resources.settings.event_retention_days
    assert await sweep.prune_event_bodies(resources.sessions, retention_days=days) >= 1
    after = await events(api, task["id"])
    assert [e["id"] for e in after] == [e["id"] for e in before]
    assert all(e["body"] is None and e["headers"] is None for e in after)


async def test_waiting_times_out_and_says_so(api: httpx.AsyncClient) -> None:
    """`Prefer: wait=1` on a task that stays busy answers after the wait with `timed-out`."""
    task = await create_task(api, prompt="[sim:hold]")
    response = await api.get(f"/v1/tasks/{task['id']}", headers={"Prefer": "wait=1"})
    assert response.headers["edithook-wait"] == "timed-out"
    assert response.headers["preference-applied"] == "wait=1"
    assert response.json()["status"] in {"queued", "submitting", "pending", "processing"}


async def test_create_can_wait_for_the_result(api: httpx.AsyncClient) -> None:
    """`Prefer: wait` on POST answers with the settled task, images stored."""
    response = await api.post("/v1/tasks", json=VALID_EDIT, headers={"Prefer": "wait=30"})
    assert response.status_code == 202
    assert response.headers["edithook-wait"] == "settled"
    body = response.json()
    assert (body["status"], body["results_stored"]) == ("completed", True)


async def test_a_poll_listing_more_results_than_n_fails_the_task_without_rows(
    api: httpx.AsyncClient, sim: httpx.AsyncClient
) -> None:
    """The provider's own answer breaking its contract (results > n) ends the task failed,
    with how many came in the error, and writes no result rows."""
    task = await create_task(api, prompt="quiet [sim:no-callback] [sim:hold]", n=2)
    pending = await wait_for_task(api, task["id"], {"pending", "processing"})
    answer = {
        "id": pending["provider_task_id"],
        "status": "completed",
        "results": [f"https://f.example/{i}.png" for i in range(20_000)],
    }
    await sim.post(
        "/_sim/faults", json={"endpoint": "get", "status": 200, "body": json.dumps(answer)}
    )
    refreshed = (await api.post(f"/v1/tasks/{task['id']}/refresh")).json()
    assert (refreshed["status"], refreshed["resolved_by"]) == ("failed", "poll")
    assert refreshed["error"]["code"] == "provider_results_over_n"
    assert "20000 results" in refreshed["error"]["message"]
    assert refreshed["result_count"] == 0
    assert (await api.get(f"/v1/tasks/{task['id']}/results")).json()["items"] == []


async def test_a_poll_that_changes_nothing_is_a_duplicate_and_wakes_nobody(
    api: httpx.AsyncClient, sim: httpx.AsyncClient, service: Service, database_url: str
) -> None:
    """A poll repeating the task's state is recorded as `duplicate` and sends no NOTIFY."""
    resources = service.resources
    task = await create_task(api, prompt="quiet [sim:no-callback] [sim:hold]")
    provider_id = (await wait_for_task(api, task["id"], {"pending", "processing"}))[
        "provider_task_id"
    ]
    for _ in range(100):  # until the provider holds it: processing at 90 %, no time left
        view = (await sim.get(f"/_sim/tasks/{provider_id}")).json()["task"]
        if view["progress"] == 90 and view["task_info"].get("estimated_time") == 0:
            break
        await asyncio.sleep(0.05)
    first = await poll(resources, task["id"])
    assert first.outcome == "applied"

    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        await conn.execute(f"LISTEN {TASK_CHANNEL}")
        again = await poll(resources, task["id"])
        # Notifications arrive in commit order: the marker comes after any the poll sent.
        marker = str(uuid.uuid4())
        await conn.execute("SELECT pg_notify(%s, %s)", (TASK_CHANNEL, marker))
        heard = []
        async for notification in conn.notifies(timeout=10):
            heard.append(notification.payload)
            if notification.payload == marker:
                break
    assert again.outcome == "duplicate"
    assert [payload for payload in heard if payload in (task["id"], marker)] == [marker]
    polls = [e for e in await events(api, task["id"]) if e["kind"] == "poll"]
    assert [e["outcome"] for e in polls] == ["applied", "duplicate"]
