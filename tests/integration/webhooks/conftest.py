"""A service and worker of their own for the webhook tests, and a receiver that verifies.

The webhook tests retry fast (a short schedule, a short timeout), so they run on their own
database with their own worker: the suite's shared worker would deliver with the default
schedule. The receiver is a real HTTP server on a loopback port; it answers what a test
plans and records every request as it came.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import httpx
import psycopg
import pytest
from fastapi import FastAPI, Request, Response

from app.main import create_app
from app.resources import open_resources
from app.servers import RunningServer, bind, socket_url, start_server
from app.worker import run_worker
from tests.conftest import Service
from tests.helpers import ALPHA_KEY, BETA_KEY, make_settings, migrated_database

# Seconds between attempts, and the attempt timeout, made short so the tests retry fast
# (a retry still waits for the worker's next look for due jobs, up to 5 s).
SCHEDULE = "0.3s,0.3s,0.3s"
TIMEOUT_SECONDS = 1.0


@dataclass
class Plan:
    """One answer the receiver gives: a status, after a delay, with headers."""

    status: int = 200
    delay: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Received:
    path: str
    body: bytes
    headers: dict[str, str]


@dataclass
class Receiver:
    """Records every POST; answers each path's planned answers in turn, then 200."""

    url: str = ""
    received: list[Received] = field(default_factory=list)
    plans: dict[str, list[Plan]] = field(default_factory=dict)

    def plan(self, path: str, *answers: Plan) -> str:
        self.plans.setdefault(path, []).extend(answers)
        return self.url + path

    def at(self, path: str) -> list[Received]:
        return [item for item in self.received if item.path == path]

    async def wait_for(self, path: str, count: int, within: float = 20.0) -> list[Received]:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if len(self.at(path)) >= count:
                return self.at(path)
            await asyncio.sleep(0.05)
        raise AssertionError(f"{path} received {len(self.at(path))} requests, wanted {count}")


def receiver_app(receiver: Receiver) -> FastAPI:
    app = FastAPI()

    @app.post("/{path:path}")
    async def receive(path: str, request: Request) -> Response:
        full = "/" + path
        receiver.received.append(Received(full, await request.body(), dict(request.headers)))
        queue = receiver.plans.get(full)
        plan = queue.pop(0) if queue else Plan()
        if plan.delay:
            await asyncio.sleep(plan.delay)
        return Response(b'{"ok": true}', status_code=plan.status, headers=plan.headers)

    return app


@pytest.fixture(scope="module")
async def receiver_server() -> AsyncIterator[tuple[Receiver, RunningServer]]:
    receiver = Receiver()
    running = await start_server(receiver_app(receiver))
    receiver.url = running.url
    yield receiver, running
    await running.stop()


@pytest.fixture
def receiver(receiver_server: tuple[Receiver, RunningServer]) -> Receiver:
    """The receiver, emptied for the test."""
    receiver, _ = receiver_server
    receiver.received.clear()
    receiver.plans.clear()
    return receiver


async def truncate(database_url: str) -> None:
    """Empty the webhook tests' tables; the worker may still be finishing a job, so retry."""
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        for attempt in range(5):
            try:
                await conn.execute(
                    "TRUNCATE tasks, task_events, task_results, webhook_messages,"
                    " webhook_attempts, webhook_endpoints, webhook_client_secrets"
                )
                break
            except psycopg.errors.DeadlockDetected:
                await asyncio.sleep(0.1 * (attempt + 1))
        await conn.execute("DELETE FROM procrastinate_jobs WHERE status <> 'doing'")


@pytest.fixture(scope="module")
def webhook_database_url(admin_url: str) -> Iterator[str]:
    with migrated_database(admin_url, "edithook_webhooks") as url:
        yield url


@pytest.fixture(scope="module")
async def webhook_service(
    webhook_database_url: str,
    simulator: RunningServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Service]:
    """The API and a worker on the webhook tests' database, with the short schedule."""
    sock = bind()
    settings = make_settings(
        webhook_database_url,
        simulator.url,
        socket_url(sock),
        storage_url=str(tmp_path_factory.mktemp("webhook-results")),
        webhook_retry_schedule=SCHEDULE,
        webhook_timeout_seconds=TIMEOUT_SECONDS,
        # Small pools: this stack runs beside the suite's shared one (API 4·1 + 1, worker 4·1 + 5).
        db_pool_size=1,
    )
    app = create_app(settings)
    running = await start_server(app, sock=sock)
    async with open_resources(settings) as worker_resources:
        worker = asyncio.create_task(run_worker(worker_resources))
        yield Service(server=running, app=app, settings=settings)
        worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await worker
    await running.stop()


@pytest.fixture
async def hooks_api(
    webhook_service: Service, webhook_database_url: str
) -> AsyncIterator[httpx.AsyncClient]:
    """A client `alpha` of the webhook tests' service, on emptied tables."""
    await truncate(webhook_database_url)
    headers = {"Authorization": f"Bearer {ALPHA_KEY}"}
    async with httpx.AsyncClient(
        base_url=webhook_service.url, headers=headers, timeout=30
    ) as client:
        yield client


@pytest.fixture
async def hooks_beta(webhook_service: Service) -> AsyncIterator[httpx.AsyncClient]:
    headers = {"Authorization": f"Bearer {BETA_KEY}"}
    async with httpx.AsyncClient(
        base_url=webhook_service.url, headers=headers, timeout=30
    ) as client:
        yield client
