"""Faults against real `serve` and `worker` processes, real Postgres and a simulator over HTTP.

Each test ends with every task in its right final state and each of its results stored once.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import psycopg
from fastapi import FastAPI

from app.security import callback_path, callback_token
from app.servers import RunningServer
from tests.helpers import CALLBACK_SECRET, VALID_EDIT
from tests.processes.faults.fault_servers import Sink, StallingFiles
from tests.processes.faults.fault_stack import (
    Launcher,
    Sim,
    Stack,
    StackFactory,
    query,
    result_rows,
    task_events,
    task_row,
)
from tests.processes.faults.tcp_proxy import TcpProxy, proxied_url, upstream_of

SimulatorFactory = Callable[..., Awaitable[Sim]]
Servers = Callable[[FastAPI], Awaitable[RunningServer]]

PROMPT = VALID_EDIT["prompt"]
ENDED = {"completed", "failed", "cancelled"}


async def create_task(deployment: Stack, directives: str = "", n: int = 1) -> str:
    body = {**VALID_EDIT, "prompt": f"{PROMPT} {directives}".strip(), "n": n}
    async with deployment.api() as api:
        response = await api.post("/v1/tasks", json=body)
    assert response.status_code == 202, response.text
    task_id: str = response.json()["id"]
    return task_id


async def provider_id_of(deployment: Stack, task_id: str) -> str:
    async def known() -> str | None:
        provider_id: str | None = (await task_row(deployment.db, task_id))["provider_task_id"]
        return provider_id

    provider_id: str = await deployment.wait_until(known, f"task {task_id} to be submitted")
    return provider_id


async def deliveries(
    deployment: Stack, sim: Sim, provider_id: str, count: int
) -> list[dict[str, Any]]:
    """The simulator's callback deliveries for the task, once `count` of them have ended."""

    def ended(delivery: dict[str, Any]) -> bool:
        return delivery["status_code"] is not None or delivery["error"] is not None

    async def made() -> list[dict[str, Any]] | None:
        found: list[dict[str, Any]] = (await sim.record(provider_id))["callbacks"]
        return found if len(found) >= count and all(map(ended, found)) else None

    found: list[dict[str, Any]] = await deployment.wait_until(made, f"{count} deliveries")
    return found


async def kinds(db: str, task_id: str, kind: str) -> list[dict[str, Any]]:
    return [event for event in await task_events(db, task_id) if event["kind"] == kind]


async def test_callbacks_during_a_database_outage_get_503_and_land_on_retry(
    db: str, stack: StackFactory, simulator_with: SimulatorFactory, launcher: Launcher
) -> None:
    """With Postgres unreachable the receiver answers 503; EvoLink's retry lands once it is back."""
    sim = await simulator_with(callback_retry_delays=(1.0, 2.0, 4.0))
    proxy = TcpProxy(upstream_of(db))
    await proxy.start()
    try:
        deployment = stack(sim.url, database_url=proxied_url(db, proxy.port))
        await deployment.serve()
        await deployment.worker()
        task_id = await create_task(deployment, "[sim:hold]", n=2)
        provider_id = await provider_id_of(deployment, task_id)

        await proxy.go_down()
        assert (await sim.client.post(f"/_sim/tasks/{provider_id}/complete")).status_code == 200
        # The first two attempts (at 0 and 1 s) meet the outage; the third (at 3 s) must not.
        during = await deliveries(deployment, sim, provider_id, 2)
        await proxy.come_back()
        assert proxy.cut > 0
        assert [d["status_code"] for d in during[:2]] == [503, 503], during

        # The third attempt, 2 s after the second, finds the database back.
        codes = [d["status_code"] for d in await deliveries(deployment, sim, provider_id, 3)]
        assert codes == [503, 503, 200], codes
        task = await deployment.wait_for_status(task_id, ENDED)
        assert (task["status"], task["resolved_by"]) == ("completed", "callback")
        # A delivery answered 503 recorded nothing: one callback event, the one that applied.
        assert [e["outcome"] for e in await kinds(db, task_id, "callback")] == ["applied"]
        await deployment.assert_stored_once(task_id, 2)
        assert (await sim.stats())["creates"] == 1
    finally:
        if not proxy.up:
            await proxy.come_back()
        await launcher.stop_all()
        await proxy.close()


async def test_a_task_completing_while_the_api_is_down_is_settled_by_polling(
    db: str, stack: StackFactory, simulator_with: SimulatorFactory, launcher: Launcher
) -> None:
    """With no API during the whole callback window, the worker's poll completes the task."""
    sim = await simulator_with(callback_retry_delays=(0.5, 1.0, 2.0))
    deployment = stack(sim.url, poll_floor_seconds=1, poll_factor=1)
    serve = await deployment.serve()
    await deployment.worker()
    task_id = await create_task(deployment, "[sim:hold]", n=2)
    provider_id = await provider_id_of(deployment, task_id)

    await launcher.stop(serve)
    assert (await sim.client.post(f"/_sim/tasks/{provider_id}/complete")).status_code == 200
    attempts = await deliveries(deployment, sim, provider_id, 4)
    assert [a["status_code"] for a in attempts] == [None] * 4, attempts
    assert all("ConnectError" in a["error"] for a in attempts), attempts

    task = await deployment.wait_for_status(task_id, ENDED, within=15)
    assert (task["status"], task["resolved_by"]) == ("completed", "poll")
    assert await kinds(db, task_id, "callback") == []
    await deployment.assert_stored_once(task_id, 2)

    await deployment.serve()
    async with deployment.api() as api:
        read = (await api.get(f"/v1/tasks/{task_id}")).json()
        results = (await api.get(f"/v1/tasks/{task_id}/results")).json()
    assert (read["status"], read["resolved_by"], read["results_stored"]) == (
        "completed",
        "poll",
        True,
    )
    assert [item["status"] for item in results["items"]] == ["stored", "stored"]


async def test_the_reconciler_runs_every_five_seconds(
    db: str, stack: StackFactory, simulator_with: SimulatorFactory
) -> None:
    """Reconciliation, the fallback for lost callbacks, is scheduled every 5 s, all day."""
    sim = await simulator_with()
    deployment = stack(sim.url)
    await deployment.worker()

    async def runs() -> list[int] | None:
        rows = await query(
            db,
            "SELECT (args->>'timestamp')::bigint AS at FROM procrastinate_jobs"
            " WHERE task_name = 'reconcile' ORDER BY at",
        )
        return [row["at"] for row in rows] if len(rows) >= 2 else None

    # Seconds since the epoch of each run; a run may be skipped while one is still queued.
    scheduled = await deployment.wait_until(runs, "two reconciler runs", within=15)
    assert all(at % 5 == 0 for at in scheduled), scheduled
    assert all(b - a <= 10 for a, b in itertools.pairwise(scheduled)), scheduled


# What procrastinate's periodic deferrer does when the sweeper's time comes.
SWEEP_NOW = """
    SELECT procrastinate_defer_jobs_v1(ARRAY[ROW('default', 'sweep', 0, NULL, 'sweep',
        jsonb_build_object('timestamp', extract(epoch FROM now())::bigint), NULL
    )::procrastinate_job_to_defer_v1])
"""


async def test_a_worker_killed_mid_download_is_replaced_and_results_are_stored_once(
    db: str,
    stack: StackFactory,
    simulator_with: SimulatorFactory,
    servers: Servers,
    launcher: Launcher,
) -> None:
    """A worker SIGKILLed mid-download: its job runs again on a new worker; stored once."""
    files = StallingFiles(upstream="")
    files_server = await servers(files.build())
    sim = await simulator_with(public_base_url=files_server.url)
    files.upstream = sim.url
    deployment = stack(sim.url)
    await deployment.serve()
    doomed = await deployment.worker()
    task_id = await create_task(deployment, n=2)

    await asyncio.wait_for(files.stalled.wait(), 30)
    jobs = await query(
        db,
        "SELECT status, worker_id FROM procrastinate_jobs"
        " WHERE task_name = 'store_results' AND args->>'task_id' = %s",
        task_id,
    )
    assert [j["status"] for j in jobs] == ["doing"]
    assert jobs[0]["worker_id"] in doomed.worker_ids
    await launcher.kill(doomed)
    files.release()
    assert [row["status"] for row in await result_rows(db, task_id)] == ["pending", "pending"]
    assert deployment.stored_objects() == {}

    # Stand-ins for time: the sweeper presumes a worker dead after STALLED_WORKER_SECONDS
    # (60 s) without a heartbeat and runs every 30 s; both are fixed in app/tasks/sweep.py.
    await query(
        db,
        "UPDATE procrastinate_workers SET last_heartbeat = now() - interval '1 hour'"
        " WHERE id = ANY(%s)",
        list(doomed.worker_ids),
    )
    await deployment.worker()
    with contextlib.suppress(psycopg.errors.UniqueViolation):  # a sweep is queued already
        await query(db, SWEEP_NOW)

    await deployment.assert_stored_once(task_id, 2)
    # The interrupted download, then each image once.
    assert len(files.requests) == 3, files.requests
    assert (await sim.stats())["creates"] == 1


async def test_a_create_answered_429_is_retried_once_and_completes(
    db: str, stack: StackFactory, simulator_with: SimulatorFactory
) -> None:
    """A create refused with 429 is sent again after Retry-After: one task made, completed."""
    sim = await simulator_with()
    await sim.fault(endpoint="create", status=429, retry_after=1, times=1)
    deployment = stack(sim.url)
    await deployment.serve()
    await deployment.worker()
    task_id = await create_task(deployment)

    task = await deployment.wait_for_status(task_id, ENDED)
    assert (task["status"], task["resolved_by"]) == ("completed", "callback")
    stats = await sim.stats()
    assert (stats["creates"], stats["create_requests"]) == (1, 2)
    submissions = await kinds(db, task_id, "submission")
    assert [e["outcome"] for e in submissions] == ["error", "applied"]
    assert "HTTP 429" in submissions[0]["detail"]
    await deployment.assert_stored_once(task_id, 1)


async def test_a_create_that_times_out_after_acceptance_is_settled_by_its_callback(
    db: str, stack: StackFactory, simulator_with: SimulatorFactory
) -> None:
    """A create timing out after acceptance is never resent; its callback supplies the id."""
    sim = await simulator_with()
    await sim.fault(endpoint="create", mode="accept_then_hang", hang_seconds=10)
    deployment = stack(sim.url, provider_read_timeout_seconds=1)
    await deployment.serve()
    await deployment.worker()
    task_id = await create_task(deployment, "[sim:slow=4]")

    async def timed_out() -> bool:
        return any(e["outcome"] == "error" for e in await kinds(db, task_id, "submission"))

    await deployment.wait_until(timed_out, "the create to time out")
    waiting = await task_row(db, task_id)
    assert (waiting["status"], waiting["provider_task_id"]) == ("submitting", None)

    task = await deployment.wait_for_status(task_id, ENDED)
    assert (task["status"], task["resolved_by"]) == ("completed", "callback")
    [made] = (await sim.client.get("/_sim/tasks")).json()
    assert task["provider_task_id"] == made["task"]["id"]
    stats = await sim.stats()
    assert (stats["creates"], stats["create_requests"]) == (1, 1)
    await deployment.assert_stored_once(task_id, 1)


async def test_a_create_that_times_out_with_no_callback_fails_as_outcome_unknown(
    db: str, stack: StackFactory, simulator_with: SimulatorFactory
) -> None:
    """A timed-out create with no callback ever is not resent; it fails as outcome unknown."""
    sim = await simulator_with()
    await sim.fault(endpoint="create", mode="accept_then_hang", hang_seconds=10)
    deployment = stack(sim.url, provider_read_timeout_seconds=1, submit_unknown_timeout_seconds=3)
    await deployment.serve()
    await deployment.worker()
    task_id = await create_task(deployment, "[sim:no-callback]")

    task = await deployment.wait_for_status(task_id, ENDED, within=15)
    assert (task["status"], task["error_code"]) == ("failed", "submission_outcome_unknown")
    assert (task["provider_task_id"], task["resolved_by"]) == (None, "system")
    stats = await sim.stats()
    assert (stats["creates"], stats["create_requests"]) == (1, 1)
    assert await result_rows(db, task_id) == []
    assert deployment.stored_objects() == {}


async def test_results_wait_out_a_storage_failure_and_are_stored_once(
    db: str, stack: StackFactory, simulator_with: SimulatorFactory
) -> None:
    """While storage refuses writes results stay pending with the error, then are stored."""
    sim = await simulator_with()
    deployment = stack(sim.url)
    await deployment.serve()
    await deployment.worker()
    # The store's folder exists (made at start-up); a file where it needs a folder breaks it.
    blocker = deployment.storage / "tasks"
    blocker.write_text("not a folder")
    task_id = await create_task(deployment, n=2)
    await deployment.wait_for_status(task_id, ENDED)

    async with deployment.api() as api:

        async def refused() -> list[dict[str, Any]] | None:
            items: list[dict[str, Any]] = (await api.get(f"/v1/tasks/{task_id}/results")).json()[
                "items"
            ]
            return items if len(items) == 2 and all(i["error"] for i in items) else None

        items = await deployment.wait_until(refused, "the storage failure to show")
        assert [i["status"] for i in items] == ["pending", "pending"]
        assert all("could not store" in i["error"] for i in items), items
        assert (await api.get(f"/v1/tasks/{task_id}")).json()["results_stored"] is False

        blocker.unlink()
        await deployment.assert_stored_once(task_id, 2)
        assert (await api.get(f"/v1/tasks/{task_id}")).json()["results_stored"] is True


async def test_a_forged_callback_with_invented_result_urls_fetches_nothing_from_them(
    db: str, stack: StackFactory, simulator_with: SimulatorFactory, servers: Servers
) -> None:
    """A valid-token callback naming invented URLs: none is fetched; the real results are."""
    sink = Sink()
    sink.url = (await servers(sink.build())).url
    sim = await simulator_with(callbacks_enabled=False)
    deployment = stack(sim.url)
    await deployment.serve()
    await deployment.worker()
    task_id = await create_task(deployment, n=2)
    provider_id = await provider_id_of(deployment, task_id)

    async def finished() -> dict[str, Any] | None:
        record = await sim.record(provider_id)
        return record if record["task"]["status"] == "completed" else None

    real = (await deployment.wait_until(finished, "the provider to finish"))["task"]
    forged = {**real, "results": [f"{sink.url}/forged/{i}.png" for i in range(2)]}
    token = callback_token(CALLBACK_SECRET, uuid.UUID(task_id))
    async with httpx.AsyncClient(base_url=deployment.public_url) as evolink_impostor:
        answer = await evolink_impostor.post(callback_path(uuid.UUID(task_id), token), json=forged)
    assert answer.status_code == 200, answer.text
    assert answer.json()["outcome"] == "applied"

    task = await deployment.assert_stored_once(task_id, 2)
    assert task["resolved_by"] == "callback"
    assert [r["provider_url"] for r in await result_rows(db, task_id)] == real["results"]
    assert sink.requests == []
    assert (await sim.stats())["file_downloads"] == 2


async def test_a_create_answered_while_postgres_is_unreachable_is_recorded_once_it_is_back(
    db: str, stack: StackFactory, simulator_with: SimulatorFactory, launcher: Launcher
) -> None:
    """The worker keeps a create's answer through an outage and records it afterwards."""
    sim = await simulator_with()
    # The provider holds its answer while the database goes away, and sends no callback:
    # the answer is the only way to learn the provider's id.
    await sim.fault(endpoint="create", mode="accept_then_hang", hang_seconds=2)
    proxy = TcpProxy(upstream_of(db))
    await proxy.start()
    try:
        deployment = stack(
            sim.url,
            database_url=proxied_url(db, proxy.port),
            poll_floor_seconds=1,
            poll_factor=1,
            submit_unknown_timeout_seconds=40,
        )
        await deployment.serve()
        worker = await deployment.worker()
        task_id = await create_task(deployment, "[sim:no-callback]", n=2)

        async def sent() -> bool:
            return (await sim.stats())["create_requests"] == 1

        await deployment.wait_until(sent, "the create to be sent")
        await proxy.go_down()

        async def answer_met_the_outage() -> bool:
            return f"recording the create of task {task_id}" in worker.log.read_text()

        await deployment.wait_until(answer_met_the_outage, "the answer to meet the outage")
        await asyncio.sleep(2)  # a few more attempts meet the outage
        await proxy.come_back()

        task = await deployment.wait_for_status(task_id, ENDED, within=60)
        [made] = (await sim.client.get("/_sim/tasks")).json()
        assert (task["status"], task["provider_task_id"]) == ("completed", made["task"]["id"])
        assert task["resolved_by"] == "poll"
        submissions = await kinds(db, task_id, "submission")
        assert [(e["outcome"], e["to_status"]) for e in submissions] == [("applied", "pending")]
        await deployment.assert_stored_once(task_id, 2)
        assert (await sim.stats())["creates"] == 1
    finally:
        if not proxy.up:
            await proxy.come_back()
        await launcher.stop_all()
        await proxy.close()
