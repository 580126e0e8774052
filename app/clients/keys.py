"""The API's view of every valid key: an in-process map from key digest to client, kept
fresh from Postgres, so that checking a key on the hot path is one hash and a dict lookup.

Whatever changes a client or key runs `pg_notify('edithook_keys', '')` in its transaction
(`notify_keys_changed`). The API's one LISTEN connection (app.waiting.TaskWaiter) hears it
and marks the cache stale; a background task then reloads every key — a few hundred rows at
most, one query — and swaps the map whole. So a new key works, and a revoked key or a
disabled client is refused, on every replica within the time of a notification and a query.
Notifications can be lost (the LISTEN connection drops), so the cache is also reloaded after
every reconnection, every `refresh_interval` seconds as a safety net, and every
`fallback_interval` seconds while not listening.

A key's `last_used_at` is written off the request path: a lookup only notes the key's id in
a set, at most once a `mark_interval` per key, and a background task writes the noted ids in
one UPDATE every `flush_interval` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from psycopg_pool import AsyncConnectionPool
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from app.security import key_digest
from app.vocabulary import ClientStatus

KEYS_CHANNEL = "edithook_keys"

logger = logging.getLogger("edithook.keys")


async def notify_keys_changed(session: AsyncSession) -> None:
    """Tell every API replica to reload its keys; delivered only if the transaction commits."""
    await session.execute(text("SELECT pg_notify(:channel, '')"), {"channel": KEYS_CHANNEL})


@dataclass(frozen=True, slots=True)
class KeyEntry:
    """What a valid key stands for: its id, its client, whether that client is active, and
    its requests a minute (None: no limit), so that an unlimited client's request costs no
    statement to count."""

    key_id: uuid.UUID
    client: str
    active: bool
    requests_per_minute: int | None = None


_LOAD = (
    "SELECT k.hash, k.id, k.client, c.status, c.requests_per_minute FROM api_keys k"
    " JOIN clients c ON c.name = k.client WHERE k.revoked_at IS NULL"
)
_MARK_USED = "UPDATE api_keys SET last_used_at = clock_timestamp() WHERE id = ANY(%(ids)s)"


class KeyCache:
    """Every unrevoked key's digest → KeyEntry, reloaded from Postgres (see the module)."""

    def __init__(
        self,
        pool: AsyncConnectionPool,
        *,
        refresh_interval: float = 30.0,
        fallback_interval: float = 1.0,
        mark_interval: float = 60.0,
        flush_interval: float = 5.0,
    ) -> None:
        self._pool = pool
        self._refresh_interval = refresh_interval
        self._fallback_interval = fallback_interval
        self._mark_interval = mark_interval
        self._flush_interval = flush_interval
        self._entries: dict[bytes, KeyEntry] = {}
        self._stale = asyncio.Event()
        self._marked: dict[uuid.UUID, float] = {}
        self._used: set[uuid.UUID] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self.listening: Callable[[], bool] = lambda: False
        self.loaded = False

    def lookup(self, key: str) -> KeyEntry | None:
        """The entry of `key`, or None if it is no valid key. Notes an active key's use."""
        entry = self._entries.get(key_digest(key))
        if entry is not None and entry.active:
            now = time.monotonic()
            if now - self._marked.get(entry.key_id, -math.inf) >= self._mark_interval:
                self._marked[entry.key_id] = now
                self._used.add(entry.key_id)
        return entry

    def __len__(self) -> int:
        return len(self._entries)

    def changed(self, payload: str | None = None) -> None:
        """A notification (or a reconnection, with None): reload soon."""
        self._stale.set()

    async def load(self) -> None:
        """Read every unrevoked key and its client's status; replace the map whole."""
        async with self._pool.connection() as connection:
            cursor = await connection.execute(_LOAD)
            rows = await cursor.fetchall()
        self._entries = {
            bytes(digest): KeyEntry(key_id, client, status == ClientStatus.ACTIVE, per_minute)
            for digest, key_id, client, status, per_minute in rows
        }
        self.loaded = True

    async def flush(self) -> None:
        """Write the noted uses' `last_used_at`; on failure keep them for the next flush."""
        if not self._used:
            return
        ids, self._used = list(self._used), set()
        try:
            async with self._pool.connection() as connection:
                await connection.execute(_MARK_USED, {"ids": ids})
        except Exception as exc:
            self._used.update(ids)
            logger.warning("Recording when keys were last used failed (%s)", type(exc).__name__)

    async def start(self) -> None:
        """Start reloading on notifications and on intervals, and flushing uses."""
        self._tasks = [
            asyncio.create_task(self._refresh(), name="edithook-key-refresh"),
            asyncio.create_task(self._flush_often(), name="edithook-key-uses"),
        ]

    async def stop(self) -> None:
        """Stop the background tasks, then write the uses still noted."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        await self.flush()

    async def _refresh(self) -> None:
        failing = False
        while True:
            interval = self._refresh_interval if self.listening() else self._fallback_interval
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await self._stale.wait()
            # Cleared before the read: a change committed during it is read again after.
            self._stale.clear()
            try:
                await self.load()
            except Exception as exc:
                # The keys in hand stay valid until a reload succeeds. One warning an outage,
                # not one a second.
                log = logger.debug if failing else logger.warning
                log("Reloading the API keys failed (%s); keeping those in hand", type(exc).__name__)
                failing = True
                await asyncio.sleep(self._fallback_interval)
                self._stale.set()
            else:
                if failing:
                    logger.info("API keys reloaded")
                failing = False

    async def _flush_often(self) -> None:
        while True:
            await asyncio.sleep(self._flush_interval)
            await self.flush()
