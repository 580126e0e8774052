"""A real, migrated Postgres for the whole run, and the service and simulator over real HTTP.

The Postgres is the server at EDITHOOK_TEST_DATABASE_URL if set, else 127.0.0.1:5432 if it
answers, else an embedded one; the run creates its own database there and drops it after.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
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
from app.worker import run_worker
from evolink_simulator import SimulatorConfig, create_simulator_app
from tests.helpers import ALPHA_KEY, BETA_KEY, make_settings, migrated_database

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


async def truncate(database_url: str) -> None:
    """Empty every table; async, so the in-process servers keep serving meanwhile."""
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        # The in-process worker may still be finishing the previous test's jobs.
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


FAST_SIMULATOR = SimulatorConfig(
    pending_seconds=0.05,
    processing_seconds=0.2,
    callback_retry_delays=(0.1, 0.2, 0.4),
    callback_timeout_seconds=2.0,
)


@pytest.fixture(scope="session")
async def simulator() -> AsyncIterator[RunningServer]:
    """The EvoLink simulator on a loopback port, with timings shortened for tests."""
    running = await start_server(create_simulator_app(FAST_SIMULATOR))
    yield running
    await running.stop()


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


@pytest.fixture(scope="session")
async def service(
    database_url: str, simulator: RunningServer, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Service]:
    """The API on a real port, with a worker on resources of its own in the same event loop."""
    sock = bind()
    storage = tmp_path_factory.mktemp("results")
    public_url = socket_url(sock)
    settings = make_settings(database_url, simulator.url, public_url, storage_url=str(storage))
    app = create_app(settings)
    running = await start_server(app, sock=sock)
    # As in production, the worker's pools and procrastinate App are not the API's; smaller
    # pools keep the run's peak (API 4·4 + 1 = 17, worker 4·2 + 5 = 13) well under 50.
    worker_settings = settings.model_copy(update={"db_pool_size": 2})
    async with open_resources(worker_settings) as worker_resources:
        worker = asyncio.create_task(run_worker(worker_resources))
        yield Service(server=running, app=app, settings=settings)
        worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await worker
    await running.stop()


@pytest.fixture
async def clean_db(database_url: str) -> None:
    """An empty set of tables for the test."""
    await truncate(database_url)


@pytest.fixture
async def api(service: Service, clean_db: None) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client for the service, authenticated as client `alpha`."""
    headers = {"Authorization": f"Bearer {ALPHA_KEY}"}
    async with httpx.AsyncClient(base_url=service.url, headers=headers, timeout=30) as client:
        yield client


@pytest.fixture
async def beta_api(service: Service) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client for the service, authenticated as client `beta`."""
    headers = {"Authorization": f"Bearer {BETA_KEY}"}
    async with httpx.AsyncClient(base_url=service.url, headers=headers, timeout=30) as client:
        yield client


@pytest.fixture
async def sim(simulator: RunningServer) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client for the simulator; faults set by a test are cleared after it."""
    async with httpx.AsyncClient(
        base_url=simulator.url, headers={"Authorization": "Bearer sk-test-key"}, timeout=30
    ) as client:
        yield client
        await client.delete("/_sim/faults")


@pytest.fixture
def service_url(service: Service, clean_db: None) -> str:
    return service.url
