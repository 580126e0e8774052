"""The key cache on its own: it reloads without notifications, and records uses sparingly."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool
from sqlalchemy import select

from app.clients.keys import KEYS_CHANNEL, KeyCache
from app.clients.schemas import ClientCreate
from app.clients.service import create_client, create_key
from app.db import create_pool, transaction
from app.models import ApiKey
from app.waiting import TaskWaiter
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


async def test_the_waiters_connection_hands_key_notifications_on_and_says_when_lost(
    database_url: str,
) -> None:
    """A NOTIFY on the keys channel reaches its handler; a lost LISTEN connection tells it
    (None), since notifications sent meanwhile are gone."""
    heard: list[str | None] = []
    waiter = TaskWaiter(database_url, channels={KEYS_CHANNEL: heard.append})
    await waiter.start()
    try:
        async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
            await conn.execute("SELECT pg_notify(%s, 'hello')", (KEYS_CHANNEL,))
            await _until(lambda: heard == ["hello"])
            old_pid = waiter.backend_pid
            await conn.execute("SELECT pg_terminate_backend(%s)", (old_pid,))
            await _until(lambda: waiter.listening and waiter.backend_pid not in (None, old_pid))
            assert heard[1:] == [None, None]  # lost, and back
            await conn.execute("SELECT pg_notify(%s, 'again')", (KEYS_CHANNEL,))
            await _until(lambda: heard[-1] == "again")
    finally:
        await waiter.stop()


async def _until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 10
    while not condition():
        assert time.monotonic() < deadline, "not seen within 10 s"
        await asyncio.sleep(0.02)
