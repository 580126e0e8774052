"""A service and worker of their own for the webhook tests, and a receiver that verifies.

The webhook tests retry fast (a short schedule, a short timeout), so they run on their own
database with their own worker: the suite's shared worker would deliver with the default
schedule. As on the shared service, nothing is emptied between tests: each test is a client
of its own (`hooks_caller`, from the session's generated `callers`, whose keys this service
is configured with), so its endpoints, tasks, messages and secrets are its own, and its
retries scheduled for later are cancelled when it ends. The worker runs no periodic job (the
webhook sweep acts on every message; its test calls it). A test whose count is over the
whole database (the metrics) runs a stack of its own (`own_webhook_service`).

The receiver is a real HTTP server on a loopback port, one per module; each test's receiver
answers under a path of its own on it, answers what the test plans and records every
request as it came.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI, Request, Response

from app.servers import RunningServer, start_server
from tests.conftest import Caller, Callers, Service, cancel_later_jobs, serving_stack
from tests.helpers import migrated_database

# Seconds between attempts, and the attempt timeout, made short so the tests retry fast
# (a retry still waits for the worker's next look for due jobs, up to a second).
SCHEDULE = "0.3s,0.3s,0.3s"
TIMEOUT_SECONDS = 1.0


@dataclass
class Plan:
    """One answer the receiver gives: a status, after a delay (or once `until` is set), with
    headers."""

    status: int = 200
    delay: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)
    until: asyncio.Event | None = None


@dataclass
class Received:
    path: str
    body: bytes
    headers: dict[str, str]


@dataclass
class Receiver:
    """Records every POST under `url`; answers each path's planned answers in turn, then 200.

    Paths are relative to `url`: `plan("/a", …)` returns `url + "/a"`."""

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

    async def answer(self, path: str, request: Request) -> Response:
        """Record the request at `path` and give the next planned answer."""
        self.received.append(Received(path, await request.body(), dict(request.headers)))
        queue = self.plans.get(path)
        plan = queue.pop(0) if queue else Plan()
        if plan.delay:
            await asyncio.sleep(plan.delay)
        if plan.until is not None:
            await plan.until.wait()
        return Response(b'{"ok": true}', status_code=plan.status, headers=plan.headers)


def receiver_app(receiver: Receiver) -> FastAPI:
    """A server for one receiver: every path on it is the receiver's."""
    app = FastAPI()

    @app.post("/{path:path}")
    async def receive(path: str, request: Request) -> Response:
        return await receiver.answer("/" + path, request)

    return app


@dataclass
class Receivers:
    """One server for the module's tests: each test's receiver answers under `/{name}`.

    A receiver stays after its test, so a delivery that arrives late (a retry the test left,
    a lost message sent again by the sweep) is answered as that test planned and recorded
    where no later test looks."""

    url: str = ""
    by_name: dict[str, Receiver] = field(default_factory=dict)

    def new(self, name: str) -> Receiver:
        receiver = Receiver(url=f"{self.url}/{name}")
        self.by_name[name] = receiver
        return receiver

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/{name}/{path:path}")
        async def receive(name: str, path: str, request: Request) -> Response:
            receiver = self.by_name.get(name)
            if receiver is None:
                return Response(status_code=404)
            return await receiver.answer("/" + path, request)

        return app


@pytest.fixture(scope="module")
async def receivers() -> AsyncIterator[Receivers]:
    found = Receivers()
    running = await start_server(found.app())
    found.url = running.url
    yield found
    await running.stop()


@pytest.fixture
def receiver(receivers: Receivers) -> Receiver:
    """A receiver of the test's own, under a path no other test uses."""
    return receivers.new(f"r{len(receivers.by_name)}")


@pytest.fixture(scope="module")
def webhook_database_url(admin_url: str) -> Iterator[str]:
    with migrated_database(admin_url, "edithook_webhooks") as url:
        yield url


@pytest.fixture(scope="module")
async def webhook_service(
    webhook_database_url: str,
    simulator: RunningServer,
    callers: Callers,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Service]:
    """The API and a worker on the webhook tests' database, with the short schedule; its
    clients are `callers`. Small pools: this stack runs beside the suite's shared one
    (API 4·1 + 1, worker 4·1 + 5)."""
    async with serving_stack(
        webhook_database_url,
        simulator.url,
        str(tmp_path_factory.mktemp("webhook-results")),
        api_keys=callers.api_keys,
        pool_size=1,
        worker_pool_size=1,
        webhook_retry_schedule=SCHEDULE,
        webhook_timeout_seconds=TIMEOUT_SECONDS,
    ) as running:
        yield running


@pytest.fixture
async def hooks_caller(callers: Callers, webhook_service: Service) -> AsyncIterator[Caller]:
    """A client of the webhook service that no other test uses; its retries scheduled for
    later are cancelled when the test ends."""
    own = callers.take()
    yield own
    await cancel_later_jobs(webhook_service, own)


@pytest.fixture
def hooks_beta_caller(callers: Callers) -> Caller:
    """A second client of the test's own, to check what one client cannot see of another's."""
    return callers.take()


@pytest.fixture
async def hooks_api(
    webhook_service: Service, hooks_caller: Caller
) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client for the webhook service, authenticated as the test's own client."""
    async with httpx.AsyncClient(
        base_url=webhook_service.url, headers=hooks_caller.headers, timeout=30
    ) as client:
        yield client


@pytest.fixture
async def hooks_beta(
    webhook_service: Service, hooks_beta_caller: Caller
) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client for the webhook service, authenticated as the test's second client."""
    async with httpx.AsyncClient(
        base_url=webhook_service.url, headers=hooks_beta_caller.headers, timeout=30
    ) as client:
        yield client


@pytest.fixture
async def own_webhook_service(
    own_database_url: str, simulator: RunningServer, callers: Callers, tmp_path: Path
) -> AsyncIterator[Service]:
    """A webhook stack of the test's own, on a database of its own, for a test that counts
    every message and attempt there is (the metrics)."""
    async with serving_stack(
        own_database_url,
        simulator.url,
        str(tmp_path / "results"),
        api_keys=callers.api_keys,
        pool_size=1,
        worker_pool_size=1,
        webhook_retry_schedule=SCHEDULE,
        webhook_timeout_seconds=TIMEOUT_SECONDS,
    ) as running:
        yield running


@pytest.fixture
async def own_hooks_api(
    own_webhook_service: Service, callers: Callers
) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client for `own_webhook_service`, authenticated as a client of the test's own."""
    own = callers.take()
    async with httpx.AsyncClient(
        base_url=own_webhook_service.url, headers=own.headers, timeout=30
    ) as client:
        yield client
