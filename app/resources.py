"""The long-lived things a process needs, built once at start-up and closed at shutdown."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpx
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.db import create_engine, create_sessionmaker
from app.evolink.client import EvoLinkClient, build_http_client
from app.security import ApiKeys
from app.settings import Settings


@dataclass
class Resources:
    settings: Settings
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    provider_http: httpx.AsyncClient
    evolink: EvoLinkClient
    api_keys: ApiKeys


@asynccontextmanager
async def open_resources(settings: Settings) -> AsyncIterator[Resources]:
    """Build the engine and the provider client for `settings`; close them on exit."""
    engine = create_engine(settings.database_url, pool_size=settings.db_pool_size)
    provider_http = build_http_client(
        connect_timeout=settings.provider_connect_timeout_seconds,
        read_timeout=settings.provider_read_timeout_seconds,
    )
    try:
        yield Resources(
            settings=settings,
            engine=engine,
            sessions=create_sessionmaker(engine),
            provider_http=provider_http,
            evolink=EvoLinkClient(
                provider_http,
                settings.evolink_base_url,
                settings.evolink_api_key.get_secret_value(),
            ),
            api_keys=ApiKeys(settings.client_keys),
        )
    finally:
        await provider_http.aclose()
        await engine.dispose()
