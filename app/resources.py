"""The long-lived things a process needs, built once at start-up and closed at shutdown."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx
from psycopg_pool import AsyncConnectionPool
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.clients.keys import KEYS_CHANNEL, KeyCache
from app.clients.ratelimit import RateLimiter
from app.clients.seeding import seed
from app.db import create_engine, create_pool, create_sessionmaker
from app.evolink.client import EvoLinkClient, build_http_client
from app.results.storage import ResultStorage
from app.security import AdminKeys
from app.settings import Settings
from app.urls import is_loopback_host
from app.waiting import TaskWaiter


@dataclass
class Resources:
    settings: Settings
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    # One-statement writes on the hot paths (see app.db); the engine is their fallback.
    pool: AsyncConnectionPool
    evolink: EvoLinkClient
    # The API's clients' keys, from the database (the worker's stays empty).
    api_keys: KeyCache
    admin_keys: AdminKeys
    storage: ResultStorage
    # Counts limited clients' requests (the API's edge; unused in a worker).
    rate_limits: RateLimiter
    # Result downloads get their own client: other hosts, other limits than the provider API.
    download_http: httpx.AsyncClient
    # Only the API listens for task changes (for `Prefer: wait`); workers only notify.
    waiter: TaskWaiter | None = None

    @property
    def provider_on_loopback(self) -> bool:
        """True when the provider is local (the simulator); its result links are then too."""
        return is_loopback_host(urlsplit(self.settings.evolink_base_url).hostname)


def settle_heap() -> None:
    """Exempt everything start-up created (modules, models, pools) from garbage collection.

    A full collection otherwise walks those few hundred thousand long-lived objects every
    time: tens of milliseconds with the event loop stopped, the p99 of every request
    in flight. What the process allocates from now on is collected as usual.
    """
    gc.collect()
    gc.freeze()


def _is_listening(waiter: TaskWaiter) -> Callable[[], bool]:
    return lambda: waiter.listening


@asynccontextmanager
async def open_resources(settings: Settings, *, listen: bool = False) -> AsyncIterator[Resources]:
    """Build the engine, pools, storage and HTTP clients for `settings`; close them on exit.

    No procrastinate App: the API enqueues through its own sessions (`app.jobs.enqueue`),
    and the worker opens its App itself (`app.worker`). With `listen` (the API), also a
    TaskWaiter holding one LISTEN connection for waiting requests and key changes, having
    first seeded EDITHOOK_API_KEYS into the database and loaded the key cache. The most Postgres
    connections a process opens, with P = EDITHOOK_DB_POOL_SIZE: 2P (engine) + 2P (direct
    pool), plus in the API one LISTEN (4P + 1), in a worker procrastinate's pool of 4 and its
    listener (4P + 5).
    """
    engine = create_engine(settings.database_url, pool_size=settings.db_pool_size)
    pool = create_pool(settings.database_url, pool_size=settings.db_pool_size)
    provider_http = build_http_client(
        connect_timeout=settings.provider_connect_timeout_seconds,
        read_timeout=settings.provider_read_timeout_seconds,
    )
    download_http = build_http_client(connect_timeout=10.0, read_timeout=60.0)
    keys = KeyCache(pool)
    waiter = (
        TaskWaiter(settings.database_url, channels={KEYS_CHANNEL: keys.changed}) if listen else None
    )
    sessions = create_sessionmaker(engine)
    try:
        await pool.open(wait=True)
        if waiter is not None:
            async with pool.connection() as connection:
                await seed(connection, settings.client_keys)
            await waiter.start()
            keys.listening = _is_listening(waiter)
            # After LISTEN: a change committed from now on is heard, one before it is read.
            await keys.load()
            await keys.start()
        settle_heap()
        yield Resources(
            settings=settings,
            engine=engine,
            sessions=sessions,
            pool=pool,
            evolink=EvoLinkClient(
                provider_http,
                settings.evolink_base_url,
                settings.evolink_api_key.get_secret_value(),
            ),
            api_keys=keys,
            admin_keys=AdminKeys(settings.operator_keys),
            storage=ResultStorage(settings.storage_url),
            download_http=download_http,
            waiter=waiter,
            rate_limits=RateLimiter(pool),
        )
    finally:
        if waiter is not None:
            await keys.stop()
            await waiter.stop()
        await download_http.aclose()
        await provider_http.aclose()
        await pool.close()
        await engine.dispose()
