"""The key cache on its own: it reloads without notifications, and records uses sparingly."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import pytest
from psycopg_pool import AsyncConnectionPool
from sqlalchemy import select

from app.clients.keys import KeyCache
from app.clients.schemas import ClientCreate
from app.clients.service import create_client, create_key
from app.db import create_pool, transaction
from app.models import ApiKey
from tests.conftest import Service


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[AsyncConnectionPool]:
    opened = create_pool(database_url, pool_size=1)
    await opened.open(wait=True)
    yield opened
    await opened.close()


async def _new_key(service: Service) -> tuple[uuid.UUID, str]:
    name = f"t-{uuid.uuid4().hex[:12]}"
    async with transaction(service.resources.sessions) as session:
        await create_client(session, ClientCreate(name=name))
        row, key = await create_key(session, name)
    return row.id, key


async def test_without_notifications_the_cache_still_reloads(
    service: Service, pool: AsyncConnectionPool
) -> None:
    """Not listening (a lost LISTEN connection), it reloads every fallback interval."""
    cache = KeyCache(pool, fallback_interval=0.2)
    await cache.load()
    await cache.start()
    try:
        _, key = await _new_key(service)
        deadline = time.monotonic() + 10
        found = None
        while found is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            found = cache.lookup(key)
        assert found is not None
    finally:
        await cache.stop()


async def test_a_keys_use_is_written_at_most_once_a_mark_interval(
    service: Service, pool: AsyncConnectionPool
) -> None:
    key_id, key = await _new_key(service)
    cache = KeyCache(pool)
    await cache.load()

    async def last_used() -> object:
        async with transaction(service.resources.sessions) as session:
            return await session.scalar(select(ApiKey.last_used_at).where(ApiKey.id == key_id))

    assert await last_used() is None
    for _ in range(3):
        assert cache.lookup(key) is not None
    await cache.flush()
    first = await last_used()
    assert first is not None
    cache.lookup(key)
    await cache.flush()  # within the minute: nothing to write
    assert await last_used() == first
    assert cache.lookup("no-such-key") is None
