"""Holding a request until its task settles: `Prefer: wait=N`, woken by Postgres LISTEN/NOTIFY.

Whatever changes a task runs `SELECT pg_notify('edithook_tasks', '<task uuid>')` inside its
transaction, so the notification arrives only once the change is committed and visible.

A notification wakes every waiter of its task; they share one read of the task
(`TaskWaiter.read_once`), so a thousand waiters cost one query per notification, not a
thousand, and other requests do not queue behind them for connections. They are woken, and
answer, two per turn of the event loop: a thousand answers take a few hundred milliseconds
of the process's time either way, and spread out, other requests are served between them
rather than after them all.

The same connection LISTENs on the other channels the API cares about (`channels`, such as
the key cache's): each notification there is handed to that channel's handler, and every
handler is called with None when the connection is lost and when it is back, as
notifications sent meanwhile are gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import psycopg
from psycopg.rows import TupleRow

from app.notify import TASK_CHANNEL

logger = logging.getLogger("edithook.waiting")

T = TypeVar("T")

# When a notification wakes many waiters, this many settled ones answer per turn of the
# event loop: the rest queue, so that other requests get the loop between them instead of
# only after all of them. Waiters are woken as the answers go, one turn's worth at a time:
# a waiter woken into a free turn checks and answers in one step, and one woken into a
# full turn would only queue (a second step, a future and a callback more for each). One
# a turn measured no better than two for other requests on the shared machine, and was
# slower to answer them all (bench/README.md, "Waiters on one task").
ANSWERS_PER_TURN = 2

_TCHARS = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_QUOTED = r'"(?:[^"\\]|\\.)*"'
# One RFC 7240 preference: token [ "=" word ] *( ";" parameter ); parameters are not needed.
_PREFERENCE = re.compile(rf"\s*({_TCHARS})\s*(?:=\s*({_TCHARS}|{_QUOTED}))?\s*(?:;.*)?", re.DOTALL)
# Commas inside quoted strings do not separate preferences.
_ELEMENT = re.compile(rf'(?:[^,"]|{_QUOTED})+')


def parse_prefer_wait(header: str | None, *, maximum: float = 60.0) -> float | None:
    """The seconds asked for by `wait=N` in a Prefer header, at most `maximum`.

    `header` may hold several preferences ("respond-async, wait=5") or several Prefer headers
    joined by commas. Per RFC 7240 only the first `wait` counts, and a malformed one (not a
    non-negative integer) is ignored: the answer is then None, as when there is none at all.
    """
    if not header:
        return None
    for element in _ELEMENT.findall(header):
        match = _PREFERENCE.fullmatch(element)
        if match is None or match.group(1).lower() != "wait":
            continue
        value = (match.group(2) or "").strip('"')
        if not value.isascii() or not value.isdigit():
            return None
        return min(float(int(value)), maximum)
    return None


@dataclass
class _Watch:
    """The requests waiting on one task, and the reads they share.

    `generation` counts the notifications for the task (and reconnections); a read started
    in a generation sees every change notified before it, so its answer serves any waiter
    until the next notification. `reads` holds the latest read per key (one per caller).
    """

    events: set[asyncio.Event] = field(default_factory=set)
    generation: int = 0
    reads: dict[Hashable, tuple[int, asyncio.Future[Any]]] = field(default_factory=dict)


class TaskWaiter:
    """One LISTEN connection per process, fanning notifications out to waiting requests.

    A notification for a task wakes only the waiters of that task. When the connection is lost
    the waiter reconnects with capped backoff, LISTENs again and has every waiter re-check, as
    notifications sent meanwhile are gone. While it is not listening (before `start`, after
    `stop`, during a reconnect) waiters re-check every `fallback_interval` seconds instead.
    """

    def __init__(
        self,
        database_url: str,
        *,
        fallback_interval: float = 1.0,
        heartbeat_interval: float = 30.0,
        max_backoff: float = 5.0,
        channels: Mapping[str, Callable[[str | None], None]] | None = None,
    ) -> None:
        self._url = database_url
        self._channels = dict(channels or {})
        self._fallback_interval = fallback_interval
        self._heartbeat_interval = heartbeat_interval
        self._max_backoff = max_backoff
        self._watches: dict[uuid.UUID, _Watch] = {}
        self._conn: psycopg.AsyncConnection[TupleRow] | None = None
        self._reader: asyncio.Task[None] | None = None
        self._listening = False
        # Waiters to wake, and settled ones waiting for their turn to answer (see above).
        self._to_wake: deque[asyncio.Event] = deque()
        self._queue: deque[asyncio.Future[None]] = deque()
        self._through_this_turn = 0
        self._turning = False

    @property
    def listening(self) -> bool:
        """True while a LISTEN connection is up, so notifications reach waiters."""
        return self._listening

    @property
    def backend_pid(self) -> int | None:
        """The Postgres backend pid of the LISTEN connection, None while there is none."""
        return self._conn.info.backend_pid if self._conn is not None else None

    def waiting(self, task_id: uuid.UUID) -> int:
        """How many requests of this process are waiting on `task_id` now."""
        watch = self._watches.get(task_id)
        return len(watch.events) if watch is not None else 0

    async def read_once(
        self, task_id: uuid.UUID, key: Hashable, read: Callable[[], Awaitable[T]]
    ) -> T:
        """`read()`'s answer, shared by every waiter of `task_id` asking with the same `key`
        since the task's latest notification: one read per notification, however many wait.

        For use in a `settled()` of `wait_until` (its caller is then registered, so a
        notification after a shared read still wakes it). While not listening, notifications
        may be lost, so every call reads afresh. A failed read is not kept: the next call
        reads again. A waiter that gives up does not cancel a read others share.
        """
        watch = self._watches.get(task_id)
        if watch is None or not self._listening:
            return await read()
        shared = watch.reads.get(key)
        if shared is None or shared[0] != watch.generation or _failed(shared[1]):
            future: asyncio.Future[T] = asyncio.ensure_future(read())
            future.add_done_callback(_retrieve)
            shared = (watch.generation, future)
            watch.reads[key] = shared
        answer: T = await asyncio.shield(shared[1])
        return answer

    async def start(self) -> None:
        """Connect and LISTEN; returns once listening. A failure to connect is raised."""
        self._conn = await self._connect()
        self._listening = True
        self._reader = asyncio.create_task(self._read(), name="edithook-task-listener")

    async def stop(self) -> None:
        """Stop listening and close the connection; current waiters fall back to re-checking."""
        self._listening = False
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
            self._reader = None
        if self._conn is not None:
            await self._conn.close()
            self._conn = None
        self._wake_all()

    async def wait_until(
        self,
        task_id: uuid.UUID,
        settled: Callable[[], Awaitable[bool]],
        # A deadline for the waiting only: the caller's asyncio.timeout would cancel settled().
        timeout: float,  # noqa: ASYNC109
    ) -> bool:
        """True as soon as `settled()` returns True; False once `timeout` seconds have passed.

        Interest in `task_id` is registered before the first `settled()` call, so a notification
        sent between that check and the wait is not lost. After that `settled()` runs again only
        when a notification for `task_id` arrives or the listener reconnects, or every
        `fallback_interval` seconds while not listening. A running `settled()` is never
        cancelled, so the answer may come up to one `settled()` call after the timeout.
        """
        deadline = time.monotonic() + timeout
        event = asyncio.Event()
        watch = self._watches.setdefault(task_id, _Watch())
        watch.events.add(event)
        try:
            while True:
                # Cleared before the check: a notification during it makes the wait return.
                event.clear()
                if await settled():
                    await self._turn()
                    return True
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                pause = remaining if self._listening else min(remaining, self._fallback_interval)
                try:
                    async with asyncio.timeout(pause):
                        await event.wait()
                except TimeoutError:
                    if pause >= remaining:
                        return False
        finally:
            watch.events.discard(event)
            if not watch.events and self._watches.get(task_id) is watch:
                del self._watches[task_id]

    async def _turn(self) -> None:
        """Return in this turn of the loop if fewer than ANSWERS_PER_TURN waiters have, else
        in a later one, in arrival order."""
        if not self._queue and self._through_this_turn < ANSWERS_PER_TURN:
            self._through_this_turn += 1
            self._keep_turning()
            return
        ticket: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append(ticket)
        self._keep_turning()
        await ticket

    def _keep_turning(self) -> None:
        if not self._turning:
            self._turning = True
            asyncio.get_running_loop().call_soon(self._next_turn)

    def _next_turn(self) -> None:
        """Once per turn of the loop while waiters wake or answer: the next queued answers,
        then, in what the turn has left, the next waiters to wake."""
        self._through_this_turn = 0
        while self._queue and self._through_this_turn < ANSWERS_PER_TURN:
            ticket = self._queue.popleft()
            if not ticket.done():  # a waiter cancelled in the queue leaves its ticket
                ticket.set_result(None)
                self._through_this_turn += 1
        if not self._queue:
            for _ in range(min(ANSWERS_PER_TURN - self._through_this_turn, len(self._to_wake))):
                self._to_wake.popleft().set()
        if self._to_wake or self._queue or self._through_this_turn:
            asyncio.get_running_loop().call_soon(self._next_turn)
        else:
            self._turning = False

    async def _connect(self) -> psycopg.AsyncConnection[TupleRow]:
        conn: psycopg.AsyncConnection[TupleRow] = await psycopg.AsyncConnection.connect(
            self._url, autocommit=True, connect_timeout=10, application_name="edithook-waiter"
        )
        try:
            for channel in (TASK_CHANNEL, *self._channels):
                await conn.execute(f"LISTEN {channel}")
        except BaseException:
            await conn.close()
            raise
        return conn

    async def _read(self) -> None:
        """Dispatch notifications; on connection loss reconnect, then wake every waiter."""
        while True:
            assert self._conn is not None
            try:
                await self._dispatch(self._conn)
            except Exception as exc:
                # One line: libpq's messages span several.
                reason = " ".join(str(exc).split())
                logger.warning("Lost the LISTEN connection (%s: %s)", type(exc).__name__, reason)
            self._listening = False
            # Waiters switch to re-checking on an interval until the listener is back.
            self._wake_all()
            self._tell_channels()
            await self._conn.close()
            self._conn = await self._reconnect()
            self._listening = True
            logger.info("LISTEN connection restored")
            self._wake_all()
            self._tell_channels()

    async def _dispatch(self, conn: psycopg.AsyncConnection[TupleRow]) -> None:
        while True:
            async for notify in conn.notifies(timeout=self._heartbeat_interval):
                if notify.channel == TASK_CHANNEL:
                    self._wake(notify.payload)
                elif (handler := self._channels.get(notify.channel)) is not None:
                    handler(notify.payload)
            # A quiet period: prove the connection still answers, so a silently dropped
            # one is noticed. Notifications arriving meanwhile are kept by psycopg.
            async with asyncio.timeout(self._heartbeat_interval):
                await conn.execute("SELECT 1")

    async def _reconnect(self) -> psycopg.AsyncConnection[TupleRow]:
        delay = 0.1
        while True:
            await asyncio.sleep(delay)
            try:
                return await self._connect()
            except Exception as exc:
                logger.debug("Reconnecting the LISTEN connection failed: %s", exc)
            delay = min(delay * 2, self._max_backoff)

    def _wake(self, payload: str) -> None:
        try:
            task_id = uuid.UUID(payload)
        except ValueError:
            return
        watch = self._watches.get(task_id)
        if watch is not None:
            watch.generation += 1
            self._to_wake.extend(watch.events)
            self._keep_turning()

    def _tell_channels(self) -> None:
        for handler in self._channels.values():
            handler(None)

    def _wake_all(self) -> None:
        for watch in self._watches.values():
            watch.generation += 1
            self._to_wake.extend(watch.events)
        if self._to_wake:
            self._keep_turning()


def _failed(future: asyncio.Future[Any]) -> bool:
    return future.done() and (future.cancelled() or future.exception() is not None)


def _retrieve(future: asyncio.Future[Any]) -> None:
    """Mark a shared read's failure as seen: its waiters may all have given up."""
    if not future.cancelled():
        future.exception()
