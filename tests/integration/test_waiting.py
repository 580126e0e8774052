"""The LISTEN/NOTIFY waiter, against the real Postgres (Prefer: wait parsing is in tests/unit)."""

from __future__ import annotations

import asyncio
import gc
import logging
import time
import uuid
import warnings
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING

import psycopg
import pytest

from app import waiting
from app.notify import TASK_CHANNEL
from app.waiting import ANSWERS_PER_TURN, TaskWaiter

if TYPE_CHECKING:
    pass


@pytest.fixture
async def waiter(database_url: str) -> AsyncIterator[TaskWaiter]:
    listener = TaskWaiter(database_url)
    await listener.start()
    yield listener
    await listener.stop()


@pytest.fixture
async def notify(database_url: str) -> AsyncIterator[Callable[[object], Awaitable[None]]]:
    """Sends a NOTIFY on the task channel from a connection of its own."""
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:

        async def send(payload: object) -> None:
            await conn.execute("SELECT pg_notify(%s, %s)", (TASK_CHANNEL, str(payload)))

        yield send


class Settles:
    """A `settled()` that counts its calls and answers `done`."""

    def __init__(self) -> None:
        self.calls = 0
        self.done = False

    async def __call__(self) -> bool:
        self.calls += 1
        return self.done


async def until(condition: Callable[[], bool], within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


async def woken_by_notify(waiter: TaskWaiter, notify: Callable[[object], Awaitable[None]]) -> bool:
    """Wait on a fresh task, settle it once the first check is done, and notify."""
    task_id, settled = uuid.uuid4(), Settles()
    waiting = asyncio.create_task(waiter.wait_until(task_id, settled, timeout=20))
    await until(lambda: settled.calls == 1)
    settled.done = True
    await notify(task_id)
    return await waiting


async def test_notify_wakes_waiter(
    waiter: TaskWaiter, notify: Callable[[object], Awaitable[None]]
) -> None:
    """A NOTIFY that makes the task settled returns True well before the timeout."""
    task_id, settled = uuid.uuid4(), Settles()
    started = time.monotonic()
    waiting = asyncio.create_task(waiter.wait_until(task_id, settled, timeout=20))
    await until(lambda: settled.calls == 1)
    settled.done = True
    await notify(task_id)
    assert await waiting is True
    assert settled.calls == 2
    assert time.monotonic() - started < 10


async def test_times_out_without_notify(waiter: TaskWaiter) -> None:
    """With nothing sent the answer is False after the timeout, having checked only once."""
    settled = Settles()
    started = time.monotonic()
    assert await waiter.wait_until(uuid.uuid4(), settled, timeout=0.3) is False
    assert time.monotonic() - started >= 0.3
    assert settled.calls == 1


async def test_already_settled_returns_at_once(waiter: TaskWaiter) -> None:
    """A task settled at the first check needs no notification."""
    settled = Settles()
    settled.done = True
    assert await waiter.wait_until(uuid.uuid4(), settled, timeout=20) is True
    assert settled.calls == 1


async def test_other_tasks_do_not_wake_waiter(
    waiter: TaskWaiter, notify: Callable[[object], Awaitable[None]]
) -> None:
    """A notification for another task, or a non-UUID payload, never re-runs this check."""
    mine, other = Settles(), Settles()
    other_id = uuid.uuid4()
    waiting = asyncio.create_task(waiter.wait_until(uuid.uuid4(), mine, timeout=1.0))
    other_waiting = asyncio.create_task(waiter.wait_until(other_id, other, timeout=20))
    await until(lambda: mine.calls == 1 and other.calls == 1)
    await notify("not-a-uuid")
    other.done = True
    await notify(other_id)
    # The other waiter woke, so both notifications have been delivered.
    assert await other_waiting is True
    assert await waiting is False
    assert mine.calls == 1


async def test_notify_during_first_check_is_not_lost(
    waiter: TaskWaiter, notify: Callable[[object], Awaitable[None]]
) -> None:
    """A NOTIFY sent while the first check runs still wakes the waiter for a second check."""
    task_id = uuid.uuid4()
    calls = 0

    async def settled() -> bool:
        nonlocal calls
        calls += 1
        if calls == 1:
            await notify(task_id)
            # Let the listener receive it before the waiter starts waiting.
            await asyncio.sleep(0.2)
            return False
        return True

    assert await waiter.wait_until(task_id, settled, timeout=20) is True
    assert calls == 2


async def test_many_waiters_each_woken_by_own_notify(
    waiter: TaskWaiter, notify: Callable[[object], Awaitable[None]]
) -> None:
    """Fifty concurrent waiters on different tasks are each woken by their own notification."""
    checks = {uuid.uuid4(): Settles() for _ in range(50)}
    waiting = [
        asyncio.create_task(waiter.wait_until(task_id, settled, timeout=20))
        for task_id, settled in checks.items()
    ]
    await until(lambda: all(settled.calls == 1 for settled in checks.values()))
    for task_id, settled in checks.items():
        settled.done = True
        await notify(task_id)
    assert await asyncio.gather(*waiting) == [True] * 50
    assert all(settled.calls == 2 for settled in checks.values())


async def test_same_task_waiters_all_woken(
    waiter: TaskWaiter, notify: Callable[[object], Awaitable[None]]
) -> None:
    """One notification wakes every waiter of that task."""
    task_id, settled = uuid.uuid4(), Settles()
    waiting = [
        asyncio.create_task(waiter.wait_until(task_id, settled, timeout=20)) for _ in range(5)
    ]
    await until(lambda: settled.calls == 5)
    settled.done = True
    await notify(task_id)
    assert await asyncio.gather(*waiting) == [True] * 5


async def test_falls_back_to_interval_when_not_listening(database_url: str) -> None:
    """Without a listener a waiter re-checks on its fallback interval instead of hanging."""
    idle = TaskWaiter(database_url, fallback_interval=0.05)
    settled = Settles()
    waiting = asyncio.create_task(idle.wait_until(uuid.uuid4(), settled, timeout=20))
    await until(lambda: settled.calls >= 2)
    settled.done = True
    assert await waiting is True
    assert idle.listening is False


async def test_reconnects_after_backend_terminated(
    database_url: str,
    notify: Callable[[object], Awaitable[None]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A killed LISTEN connection is replaced; waiters re-check then, and later NOTIFYs work."""
    caplog.set_level(logging.INFO, logger="edithook.waiting")
    waiter = TaskWaiter(database_url, fallback_interval=30)
    await waiter.start()
    try:
        old_pid = waiter.backend_pid
        spanning_checks = 0

        async def reconnected() -> bool:
            # Settles with no notification: only the reconnect's wake-up can tell the waiter.
            nonlocal spanning_checks
            spanning_checks += 1
            return waiter.listening and waiter.backend_pid != old_pid

        across = asyncio.create_task(waiter.wait_until(uuid.uuid4(), reconnected, timeout=20))
        await until(lambda: spanning_checks == 1)

        async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as admin:
            await admin.execute("SELECT pg_terminate_backend(%s)", (old_pid,))
        await until(lambda: waiter.listening and waiter.backend_pid not in (None, old_pid))
        assert await across is True

        assert await woken_by_notify(waiter, notify) is True
    finally:
        await waiter.stop()
    levels = [r.levelno for r in caplog.records if r.name == "edithook.waiting"]
    assert logging.WARNING in levels
    assert logging.INFO in levels


async def test_heartbeat_keeps_notifications(
    database_url: str, notify: Callable[[object], Awaitable[None]]
) -> None:
    """Frequent liveness checks neither drop the connection nor lose notifications."""
    waiter = TaskWaiter(database_url, heartbeat_interval=0.01)
    await waiter.start()
    try:
        pid = waiter.backend_pid
        for _ in range(5):
            assert await woken_by_notify(waiter, notify) is True
        assert waiter.listening
        assert waiter.backend_pid == pid
    finally:
        await waiter.stop()


def started_by_the_waiter(since: set[asyncio.Task[object]]) -> set[asyncio.Task[object]]:
    """The tasks begun after `since` that run the waiter's code: the session's service,
    worker and simulator share this event loop and start tasks of their own meanwhile."""
    return {
        task
        for task in asyncio.all_tasks() - since
        if getattr(getattr(task.get_coro(), "cr_code", None), "co_filename", None)
        == waiting.__file__
    }


async def test_stop_during_reconnect_is_clean(database_url: str) -> None:
    """Stopping while the listener is reconnecting leaves no task or warning behind."""
    before = asyncio.all_tasks()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        waiter = TaskWaiter(database_url)
        await waiter.start()
        async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as admin:
            await admin.execute("SELECT pg_terminate_backend(%s)", (waiter.backend_pid,))
        await until(lambda: not waiter.listening)
        await waiter.stop()
        gc.collect()
    assert started_by_the_waiter(before) == set()
    assert caught == []


async def test_stop_leaves_nothing_behind(database_url: str) -> None:
    """After stop() no task is left running and no resource warning is raised."""
    before = asyncio.all_tasks()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        waiter = TaskWaiter(database_url)
        await waiter.start()
        assert waiter.listening
        pending = asyncio.create_task(waiter.wait_until(uuid.uuid4(), Settles(), timeout=0.2))
        await waiter.stop()
        assert await pending is False
        del waiter
        gc.collect()
    assert started_by_the_waiter(before) == set()
    assert caught == []


async def test_a_failed_shared_read_is_not_kept(waiter: TaskWaiter) -> None:
    """The waiters sharing a read that failed all see the failure; the next check reads again."""
    task_id = uuid.uuid4()
    answers: list[Exception | bool] = [RuntimeError("database gone"), True]
    calls = 0

    async def read() -> bool:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0)
        answer = answers[calls - 1]
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def settled() -> bool:
        return await waiter.read_once(task_id, "alpha", read)

    failing = [asyncio.create_task(waiter.wait_until(task_id, settled, timeout=5)) for _ in "ab"]
    # Registered while the failing read is shared, so that the task stays watched meanwhile.
    third = asyncio.create_task(waiter.wait_until(task_id, Settles(), timeout=5))
    outcomes = await asyncio.gather(*failing, return_exceptions=True)
    assert [type(o) for o in outcomes] == [RuntimeError, RuntimeError]
    assert await waiter.wait_until(task_id, settled, timeout=5) is True
    assert calls == 2
    third.cancel()


async def test_waiters_settled_together_answer_a_few_per_turn_of_the_loop(
    waiter: TaskWaiter, notify: Callable[[object], Awaitable[None]]
) -> None:
    """Many waiters settled by one notification go on to answer a few per turn of the loop."""
    task_id, settled, count = uuid.uuid4(), Settles(), 20
    loop = asyncio.get_running_loop()
    turn, counting = 0, True

    def tick() -> None:
        nonlocal turn
        turn += 1
        if counting:
            loop.call_soon(tick)

    async def answered_in_turn() -> int:
        assert await waiter.wait_until(task_id, settled, timeout=20)
        return turn

    waiting = [asyncio.create_task(answered_in_turn()) for _ in range(count)]
    await until(lambda: waiter.waiting(task_id) == count)
    settled.done = True
    loop.call_soon(tick)
    await notify(task_id)
    turns = await asyncio.gather(*waiting)
    counting = False
    assert max(Counter(turns).values()) <= ANSWERS_PER_TURN
