"""The ORM base, the engine and the session scope; the direct pool for one-statement writes.

Two ways into Postgres, for two kinds of work:

- the **engine** (SQLAlchemy, ORM sessions): every query of the REST API, and the task
  writer's statements when the direct pool cannot run them;
- the **direct pool** (psycopg, autocommit): the hot paths that are one SQL statement each —
  a callback settling a task, a submission claimed or recorded. It skips the ORM's unit of
  work and a transaction's BEGIN and COMMIT round trips. Whoever uses it keeps a way back to
  the engine: `DirectUnavailable` means "go through the engine", never "give up".
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any, LiteralString
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from sqlalchemy import MetaData
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def async_url(url: str) -> str:
    """Point a postgresql:// URL at SQLAlchemy's psycopg 3 driver."""
    parts = urlsplit(url)
    scheme = parts.scheme.split("+")[0]
    if scheme == "postgres":
        scheme = "postgresql"
    return urlunsplit(parts._replace(scheme=f"{scheme}+psycopg"))


def create_engine(url: str, *, pool_size: int = 10) -> AsyncEngine:
    """An engine for `url`.

    Connections are not pinged before use (a round trip on every checkout): after a restart
    of Postgres the first statement on a stale connection fails, SQLAlchemy then discards
    every pooled connection, and that one request answers 503.
    """
    return create_async_engine(
        async_url(url),
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_recycle=1800,
        # An error's text leaves out the statement's parameters: they are clients' prompts
        # and metadata, and errors reach logs (a job's failure is logged with its traceback).
        hide_parameters=True,
    )


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False)


@asynccontextmanager
async def transaction(
    sessions: async_sessionmaker[AsyncSession],
) -> AsyncIterator[AsyncSession]:
    """A session whose work commits on normal exit and rolls back on any exception."""
    async with sessions() as session, session.begin():
        yield session


logger = logging.getLogger("edithook.db")

# How long a direct statement waits for a free connection before going through the engine.
# Far above the queueing of a busy process (milliseconds); short enough that an outage, in
# which the pool has no connection to give, answers quickly through the engine's own errors.
DIRECT_CHECKOUT_SECONDS = 0.5


# SQLSTATE classes of a connection that is gone: connection exceptions, operator intervention.
LOST_CONNECTION_CLASSES = ("08", "57P")


class DirectUnavailable(Exception):
    """The direct pool could not run the statement; the caller takes the engine's path."""


async def _plan_once(connection: psycopg.AsyncConnection[Any]) -> None:
    """Plan each direct statement once per connection, not on every execution."""
    await connection.execute("SET plan_cache_mode = force_generic_plan")


def create_pool(url: str, *, pool_size: int = 10) -> AsyncConnectionPool:
    """The direct pool for `url` (a postgresql:// URL): autocommit, opened by `open()`.

    Sized like the engine: `pool_size` connections kept, as many again at peak. Concurrent
    commits share their WAL flush, so a burst of callbacks needs the connections.

    Its few statements are prepared on their first execution and planned once per
    connection: planning the callback statement costs more than running it (0.3 ms against
    0.07 ms), and with psycopg's and Postgres's defaults a connection plans each statement
    on its first ten executions, which is every execution for a worker handling a job at a
    time across its pool. Their plans are key lookups, the same for every parameter.
    """
    return AsyncConnectionPool(
        url,
        min_size=pool_size,
        max_size=2 * pool_size,
        kwargs={"autocommit": True, "prepare_threshold": 0},
        configure=_plan_once,
        timeout=DIRECT_CHECKOUT_SECONDS,
        max_lifetime=1800,
        open=False,
        name="edithook-direct",
    )


async def fetch_one(
    pool: AsyncConnectionPool, statement: LiteralString, params: Mapping[str, Any]
) -> tuple[Any, ...] | None:
    """Run one autocommitted `statement` on the direct pool and return its first row.

    Raises DirectUnavailable when no connection came within DIRECT_CHECKOUT_SECONDS or the
    connection failed (the statement may or may not have committed: the engine's try that
    follows must, and does, judge the task afresh). A broken connection makes the pool check
    its idle ones, so that the next caller does not meet another stale one. Errors of the
    statement itself (a bug, a constraint) are raised as they are.
    """
    try:
        async with pool.connection() as connection:
            cursor = await connection.execute(statement, params)
            return await cursor.fetchone()
    except PoolTimeout as exc:
        logger.warning("direct pool: no connection within %ss", DIRECT_CHECKOUT_SECONDS)
        raise DirectUnavailable("no connection") from exc
    except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
        lost = exc.sqlstate is None or exc.sqlstate.startswith(LOST_CONNECTION_CLASSES)
        logger.warning(
            "direct pool: %s (%s)", "connection lost" if lost else "statement failed", exc.sqlstate
        )
        if lost:
            try:
                await pool.check()
            except Exception:  # housekeeping; the error that matters is `exc`
                logger.exception("direct pool: checking the idle connections failed")
        raise DirectUnavailable(str(exc.sqlstate or "connection lost")) from exc
