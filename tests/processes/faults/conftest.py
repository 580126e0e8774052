"""Real `edithook serve` and `edithook worker` processes on a database of their own.

The fault tests never use the session's in-process service or worker: their database is
created here, so that only the processes a test starts run its jobs.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from fastapi import FastAPI

from app.servers import RunningServer, bind, serving, socket_url
from evolink_simulator import SimulatorConfig, create_simulator_app
from tests.helpers import ALPHA_KEY, CALLBACK_SECRET, migrated_database
from tests.processes.faults.fault_stack import Launcher, Sim, Stack, StackFactory

_LAUNCHER = pytest.StashKey["Launcher"]()

# -- the database ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fault_db(admin_url: str) -> Iterator[str]:
    """A migrated database only the fault tests' processes use; dropped afterwards."""
    with migrated_database(admin_url, "edithook_faults") as url:
        yield url


@pytest.fixture
async def db(fault_db: str) -> str:
    """The fault database, emptied of tasks, jobs and workers left by an earlier test."""
    async with await psycopg.AsyncConnection.connect(fault_db, autocommit=True) as conn:
        await conn.execute(
            "TRUNCATE tasks, task_events, task_results, webhook_messages, webhook_attempts"
        )
        await conn.execute("DELETE FROM procrastinate_jobs")
        await conn.execute("DELETE FROM procrastinate_workers")
    return fault_db


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Attach the processes' output to a failed fault test's report."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    launcher = item.stash.get(_LAUNCHER, None)
    if report.failed and launcher is not None:
        report.sections.append(("edithook processes", launcher.output()))


@pytest.fixture
async def launcher(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    servers: Callable[[FastAPI], Awaitable[RunningServer]],
) -> AsyncIterator[Launcher]:
    """Starts processes for the test; every one is stopped (TERM, then KILL) afterwards,
    before the test's in-process servers (`servers`) stop."""
    logs = tmp_path / "logs"
    logs.mkdir()
    launched = Launcher(logs)
    request.node.stash[_LAUNCHER] = launched
    try:
        yield launched
    finally:
        await launched.stop_all()


def _base_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("EDITHOOK_")}


@pytest.fixture
def stack(launcher: Launcher, db: str, tmp_path: Path) -> StackFactory:
    """Builds a Stack: `stack(provider_url, database_url=None, **EDITHOOK_settings)`."""

    def build(provider_url: str, database_url: str | None = None, **settings: object) -> Stack:
        sock = bind()
        public_url = socket_url(sock)
        port = sock.getsockname()[1]
        sock.close()
        storage = tmp_path / "results"
        env = {
            **_base_env(),
            "EDITHOOK_ENVIRONMENT": "development",
            "EDITHOOK_DATABASE_URL": database_url or db,
            "EDITHOOK_EVOLINK_BASE_URL": provider_url,
            "EDITHOOK_EVOLINK_API_KEY": "sk-test-key",
            "EDITHOOK_PUBLIC_BASE_URL": public_url,
            "EDITHOOK_CALLBACK_SECRET": CALLBACK_SECRET,
            "EDITHOOK_API_KEYS": f"alpha:{ALPHA_KEY}",
            "EDITHOOK_HOST": "127.0.0.1",
            "EDITHOOK_PORT": str(port),
            "EDITHOOK_STORAGE_URL": str(storage),
            "EDITHOOK_SUBMIT_ATTEMPTS": "4",
        }
        for name, value in settings.items():
            env[f"EDITHOOK_{name.upper()}"] = str(value)
        return Stack(launcher, db, env, public_url, storage)

    return build


# -- in-process servers ---------------------------------------------------------------------


@pytest.fixture
async def servers() -> AsyncIterator[Callable[[FastAPI], Awaitable[RunningServer]]]:
    """Serves ASGI apps on loopback ports for the test; all stopped afterwards."""
    async with contextlib.AsyncExitStack() as stack:

        async def start(app: FastAPI) -> RunningServer:
            return await stack.enter_async_context(serving(app))

        yield start


@pytest.fixture
async def simulator_with(
    servers: Callable[[FastAPI], Awaitable[RunningServer]],
) -> AsyncIterator[Callable[..., Awaitable[Sim]]]:
    """Starts a simulator of the test's own: `await simulator_with(**SimulatorConfig fields)`."""
    clients: list[httpx.AsyncClient] = []

    async def start(**config: Any) -> Sim:
        config = {"pending_seconds": 0.1, "processing_seconds": 0.4, **config}
        running = await servers(create_simulator_app(SimulatorConfig(**config)))
        client = httpx.AsyncClient(
            base_url=running.url, headers={"Authorization": "Bearer sk-test-key"}, timeout=30
        )
        clients.append(client)
        return Sim(running, client)

    try:
        yield start
    finally:
        for client in clients:
            await client.aclose()
