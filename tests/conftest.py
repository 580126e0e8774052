"""A real, migrated Postgres for the whole run, and the service and simulator over real HTTP.

The Postgres is the server at EDITHOOK_TEST_DATABASE_URL if set, else 127.0.0.1:5432 if it
answers, else an embedded one; the run creates its own database there and drops it after.

Tests share that database and the service without emptying anything between them: each
test is a client of its own (`caller`, with keys generated for the run), so what it lists,
reads and counts through the API is its own, and assertions about the database name its own
tasks. What a test starts in the background cannot reach a later one: the in-process worker
runs no periodic job (those act on every task; their tests call them), a test's retries
scheduled for later are cancelled when it ends, and a test that counts or breaks the
simulator's calls (`sim`) first waits until the jobs and callbacks of earlier tests are done.
A test whose count is over the whole database (the metrics) runs a service of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg
import pytest
from fastapi import FastAPI

from app.main import create_app
from app.resources import Resources, open_resources
from app.servers import RunningServer, bind, socket_url, start_server
from app.settings import Settings
from app.worker import open_job_app, run_queues
from evolink_simulator import SimulatorConfig, create_simulator_app
from evolink_simulator.state import Simulator
from tests.helpers import make_settings, migrated_database

LOCAL_POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"


def _answers(url: str) -> bool:
    try:
        with psycopg.connect(url, connect_timeout=3):
            return True
    except psycopg.OperationalError:
        return False


@pytest.fixture(scope="session")
def admin_url() -> Iterator[str]:
    """A URL on a Postgres server where the run may create and drop its own database."""
    explicit = os.environ.get("EDITHOOK_TEST_DATABASE_URL")
    if explicit:
        yield explicit
        return
    if _answers(LOCAL_POSTGRES):
        yield LOCAL_POSTGRES
        return
    from pgserver.postgres_server import get_server

    with tempfile.TemporaryDirectory(prefix="edithook-pg-") as data_dir:
        server = get_server(Path(data_dir), cleanup_mode="stop")
        yield server.get_uri()
        server.cleanup()


@pytest.fixture(scope="session")
def database_url(admin_url: str) -> Iterator[str]:
    """A fresh database, migrated to head, dropped when the run ends."""
    with migrated_database(admin_url, "edithook_test") as url:
        yield url


@pytest.fixture(scope="module")
def private_database_url(admin_url: str) -> Iterator[str]:
    """A migrated database for one module's own processes: no in-process worker touches it."""
    with migrated_database(admin_url, "edithook_private") as url:
        yield url


FAST_SIMULATOR = SimulatorConfig(
    pending_seconds=0.05,
    processing_seconds=0.2,
    callback_retry_delays=(0.1, 0.2, 0.4),
    callback_timeout_seconds=2.0,
    # A URL nothing answers (a test's made-up host) fails its task within this; it is not
    # shorter, because the simulator, the service and the worker share one event loop on a
    # loaded two-core machine, where a local fetch has been seen to take over 3 s.
    input_timeout_seconds=10.0,
)


@pytest.fixture(scope="session")
def simulator_app() -> FastAPI:
    """The session's EvoLink simulator, as an app: its state tells when it is idle."""
    return create_simulator_app(FAST_SIMULATOR)


@pytest.fixture(scope="session")
async def simulator(simulator_app: FastAPI) -> AsyncIterator[RunningServer]:
    """The EvoLink simulator on a loopback port, with timings shortened for tests."""
    running = await start_server(simulator_app)
    yield running
    await running.stop()


@dataclass(frozen=True)
class Caller:
    """A client of the service that one test alone uses: its name and its API key."""

    name: str
    key: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


class Callers:
    """The session service's clients, generated for the run; each test takes new ones."""

    def __init__(self, count: int) -> None:
        self.all = [Caller(f"client-{i}", f"key-{i}-{secrets.token_hex(12)}") for i in range(count)]
        self._unused = iter(self.all)

    @property
    def api_keys(self) -> str:
        """The `EDITHOOK_API_KEYS` value naming them all."""
        return ",".join(f"{caller.name}:{caller.key}" for caller in self.all)

    def take(self) -> Caller:
        caller = next(self._unused, None)
        if caller is None:
            pytest.fail(f"all {len(self.all)} generated clients are taken; generate more")
        return caller


@pytest.fixture(scope="session")
def callers(request: pytest.FixtureRequest) -> Callers:
    """Two clients for every collected test, and a few more for tests that want three."""
    return Callers(2 * len(request.session.items) + 16)


@dataclass
class Service:
    """The API served on a real port, and the resources it runs on."""

    server: RunningServer
    app: FastAPI
    settings: Settings

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def resources(self) -> Resources:
        resources: Resources = self.app.state.resources
        return resources


async def run_jobs(resources: Resources) -> None:
    """The worker's jobs as `edithook worker` runs them, without the periodic ones.

    The reconciler, the sweeper and pruning act on every task in the database, so run in the
    background they would poll, resubmit or copy the tasks an earlier test left, in the middle
    of a later one; their tests call them instead. Cancelled, it lets running jobs finish.
    """
    async with open_job_app(resources.settings) as job_app:
        await run_queues(job_app, resources, periodic=False)


@contextlib.asynccontextmanager
async def serving_stack(
    database_url: str,
    provider_url: str,
    storage_url: str,
    *,
    api_keys: str,
    pool_size: int,
    worker_pool_size: int,
    **extra: object,
) -> AsyncIterator[Service]:
    """The API on a real port, with a worker on resources of its own in the same event loop.

    As in production, the worker's pools and procrastinate App are not the API's. The
    connections it may open: API 4·`pool_size` + 1, worker 4·`worker_pool_size` + 5.
    `extra` are more settings for both (the webhook tests' short retry schedule).
    """
    sock = bind()
    settings = make_settings(
        database_url,
        provider_url,
        socket_url(sock),
        api_keys=api_keys,
        storage_url=storage_url,
        db_pool_size=pool_size,
        **extra,
    )
    app = create_app(settings)
    running = await start_server(app, sock=sock)
    try:
        worker_settings = settings.model_copy(update={"db_pool_size": worker_pool_size})
        async with open_resources(worker_settings) as worker_resources:
            worker = asyncio.create_task(run_jobs(worker_resources))
            try:
                yield Service(server=running, app=app, settings=settings)
            finally:
                worker.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await worker
    finally:
        await running.stop()


@pytest.fixture(scope="session")
async def service(
    database_url: str,
    simulator: RunningServer,
    callers: Callers,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Service]:
    """The API on a real port, with a worker on resources of its own in the same event loop;
    its clients are `callers`. Its peak (API 4·4 + 1 = 17, worker 4·2 + 5 = 13) stays well
    under 50 connections."""
    async with serving_stack(
        database_url,
        simulator.url,
        str(tmp_path_factory.mktemp("results")),
        api_keys=callers.api_keys,
        pool_size=4,
        worker_pool_size=2,
    ) as running:
        yield running


@pytest.fixture
def own_database_url(admin_url: str) -> Iterator[str]:
    """A migrated database for one test alone, dropped after it."""
    with migrated_database(admin_url, "edithook_own") as url:
        yield url


@pytest.fixture
async def own_service(
    own_database_url: str, simulator: RunningServer, callers: Callers, tmp_path: Path
) -> AsyncIterator[Service]:
    """A service and worker of the test's own, on a database of its own, for a test that
    counts every task there is (the metrics). Small pools: API 4·1 + 1, worker 4·1 + 5."""
    async with serving_stack(
        own_database_url,
        simulator.url,
        str(tmp_path / "results"),
        api_keys=callers.api_keys,
        pool_size=1,
        worker_pool_size=1,
    ) as running:
        yield running


@pytest.fixture
async def own_api(own_service: Service, caller: Caller) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client for `own_service`, authenticated as the test's own client."""
    async with httpx.AsyncClient(
        base_url=own_service.url, headers=caller.headers, timeout=30
    ) as client:
        yield client


async def cancel_later_jobs(service: Service, caller: Caller) -> None:
    """Cancel (not delete) the jobs of `caller`'s tasks and webhook messages that are
    scheduled for later: retries that would otherwise run in a later test."""
    async with service.resources.pool.connection() as conn:
        await conn.execute(
            "SELECT procrastinate_cancel_job_v1(j.id, false, false) FROM procrastinate_jobs j"
            " WHERE j.status = 'todo' AND j.scheduled_at > now() AND ("
            " EXISTS (SELECT 1 FROM tasks t"
            " WHERE t.id::text = j.args->>'task_id' AND t.client = %(client)s)"
            " OR EXISTS (SELECT 1 FROM webhook_messages m"
            " WHERE m.id::text = j.args->>'message_id' AND m.client = %(client)s))",
            {"client": caller.name},
        )


@pytest.fixture
async def caller(callers: Callers, service: Service) -> AsyncIterator[Caller]:
    """A client of the service that no other test uses.

    When the test ends, the retries its tasks' and webhook messages' jobs have scheduled for
    later are cancelled (not deleted), so that none runs in a later test; jobs due now are
    left to the worker.
    """
    own = callers.take()
    yield own
    await cancel_later_jobs(service, own)


@pytest.fixture
async def beta_caller(callers: Callers) -> Caller:
    """A second client of the test's own, to check what one client cannot see of another's."""
    return callers.take()


@pytest.fixture
async def api(service: Service, caller: Caller) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client for the service, authenticated as the test's own client."""
    async with httpx.AsyncClient(
        base_url=service.url, headers=caller.headers, timeout=30
    ) as client:
        yield client


@pytest.fixture
async def beta_api(service: Service, beta_caller: Caller) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client for the service, authenticated as the test's second client."""
    async with httpx.AsyncClient(
        base_url=service.url, headers=beta_caller.headers, timeout=30
    ) as client:
        yield client


async def wait_until_idle(service: Service, simulator: Simulator, within: float = 30.0) -> None:
    """Until no job is running or due and the simulator has no lifecycle or callback under
    way: what earlier tests set going has ended, and nothing else will call the simulator."""
    deadline = time.monotonic() + within
    async with service.resources.pool.connection() as conn:
        while True:
            cursor = await conn.execute(
                "SELECT count(*) FROM procrastinate_jobs WHERE status = 'doing'"
                " OR (status = 'todo' AND coalesce(scheduled_at, now()) <= now())"
            )
            row = await cursor.fetchone()
            jobs = row[0] if row else 0
            # Lifecycles and deliveries are the simulator's background tasks.
            in_flight = len(simulator._background)
            if jobs == 0 and in_flight == 0:
                return
            if time.monotonic() > deadline:
                pytest.fail(
                    f"not idle after {within:g} s: {jobs} jobs, {in_flight} in the simulator"
                )
            await asyncio.sleep(0.02)


@pytest.fixture
async def sim(
    simulator: RunningServer, simulator_app: FastAPI, service: Service
) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client for the simulator, once nothing an earlier test started still calls it:
    its counters and faults are the test's alone. Faults set by the test are cleared after it."""
    await wait_until_idle(service, simulator_app.state.simulator)
    async with httpx.AsyncClient(
        base_url=simulator.url, headers={"Authorization": "Bearer sk-test-key"}, timeout=30
    ) as client:
        yield client
        await client.delete("/_sim/faults")


@pytest.fixture
def service_url(service: Service) -> str:
    return service.url
