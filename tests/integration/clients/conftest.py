"""A second API replica on the suite's database, and an HTTP client with an admin key.

The replica is a separate app with its own pools, key cache and LISTEN connection, as a
second process would have; it is given no admin key, so its admin API is off.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import httpx
import pytest

from app.main import create_app
from app.servers import RunningServer, bind, socket_url, start_server
from tests.conftest import Service
from tests.helpers import ADMIN_KEY, make_settings


@pytest.fixture(scope="module")
async def replica(service: Service, simulator: RunningServer) -> AsyncIterator[RunningServer]:
    sock = bind()
    settings = make_settings(
        service.settings.database_url,
        simulator.url,
        socket_url(sock),
        api_keys=service.settings.api_keys.get_secret_value(),
        storage_url=service.settings.storage_url,
        admin_keys="",
        db_pool_size=1,
    )
    running = await start_server(create_app(settings), sock=sock)
    yield running
    await running.stop()


@pytest.fixture
async def admin(service: Service) -> AsyncIterator[httpx.AsyncClient]:
    """The admin API of the suite's service, with an operator's key."""
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    async with httpx.AsyncClient(base_url=service.url, headers=headers, timeout=30) as client:
        yield client


@pytest.fixture
def client_name() -> str:
    """A client name no other test uses (clients outlive a test's truncation)."""
    return f"t-{uuid.uuid4().hex[:12]}"
