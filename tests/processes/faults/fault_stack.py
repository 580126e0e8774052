"""Running edithook as real processes, and reading what they did straight from Postgres."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
from psycopg.rows import dict_row

from app.servers import RunningServer
from tests.helpers import ALPHA_KEY

EDITHOOK = [sys.executable, "-m", "app.cli"]
STOP_GRACE_SECONDS = 10.0
START_WITHIN_SECONDS = 30.0


# -- the database ---------------------------------------------------------------------------


async def query(database_url: str, sql: str, *params: Any) -> list[dict[str, Any]]:
    """Rows of `sql`, read straight from Postgres (not through any proxy)."""
    async with await psycopg.AsyncConnection.connect(
        database_url, autocommit=True, row_factory=dict_row
    ) as conn:
        cursor = await conn.execute(sql, params)
        return await cursor.fetchall() if cursor.description else []


async def task_row(database_url: str, task_id: str) -> dict[str, Any]:
    rows = await query(database_url, "SELECT * FROM tasks WHERE id = %s", task_id)
    assert len(rows) == 1, f"task {task_id} not found"
    return rows[0]


async def result_rows(database_url: str, task_id: str) -> list[dict[str, Any]]:
    return await query(
        database_url, 'SELECT * FROM task_results WHERE task_id = %s ORDER BY "index"', task_id
    )


async def task_events(database_url: str, task_id: str) -> list[dict[str, Any]]:
    return await query(
        database_url, "SELECT * FROM task_events WHERE task_id = %s ORDER BY id", task_id
    )


Guard = Callable[[], None]


def _no_guard() -> None:
    return None


async def wait_until(
    check: Callable[[], Awaitable[Any]],
    what: str,
    within: float = 30.0,
    every: float = 0.1,
    guard: Guard = _no_guard,
) -> Any:
    """The first truthy answer of `check()`; fails the test after `within` seconds, or as soon
    as `guard()` raises (a process that should be running has exited)."""
    deadline = time.monotonic() + within
    while True:
        guard()
        answer = await check()
        if answer:
            return answer
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within:g} s waiting for {what}")
        await asyncio.sleep(every)


async def wait_for_status(
    database_url: str,
    task_id: str,
    statuses: set[str],
    within: float = 30.0,
    guard: Guard = _no_guard,
) -> dict[str, Any]:
    async def settled() -> dict[str, Any] | None:
        row = await task_row(database_url, task_id)
        return row if row["status"] in statuses else None

    answer: dict[str, Any] = await wait_until(
        settled, f"task {task_id} to be {statuses}", within, guard=guard
    )
    return answer


async def assert_stored_once(
    database_url: str,
    storage: Path,
    task_id: str,
    count: int,
    *,
    status: str = "completed",
    guard: Guard = _no_guard,
) -> dict[str, Any]:
    """The task is `status` and each of its `count` results is stored, once, in `storage`.

    One row per index, each `stored` with its key and checksum, and the storage folder holding
    exactly those objects with those bytes: nothing missing, nothing twice, nothing else.
    """

    async def all_settled() -> bool:
        rows = await result_rows(database_url, task_id)
        return len(rows) == count and all(row["status"] != "pending" for row in rows)

    await wait_until(
        all_settled, f"the results of task {task_id} to settle", within=30.0, guard=guard
    )
    task = await task_row(database_url, task_id)
    assert task["status"] == status
    rows = await result_rows(database_url, task_id)
    assert [row["index"] for row in rows] == list(range(count))
    expected: dict[str, str] = {}
    for row in rows:
        assert row["status"] == "stored", row
        assert row["error"] is None, row
        assert row["storage_key"] == f"tasks/{task_id}/{row['index']}.png"
        expected[row["storage_key"]] = row["sha256"]
    assert _stored_objects(storage) == expected
    return task


# -- processes ------------------------------------------------------------------------------


@dataclass
class Proc:
    name: str
    process: asyncio.subprocess.Process
    log: Path
    # The procrastinate workers a worker process registered (the task jobs', the deliveries').
    worker_ids: tuple[int, ...] = ()
    ended_on_purpose: bool = False  # the test stopped or killed it

    @property
    def running(self) -> bool:
        return self.process.returncode is None


# procrastinate workers in one `edithook worker`: the task jobs' and the deliveries'.
WORKERS_PER_PROCESS = 2


@dataclass
class Launcher:
    """Starts edithook processes with their output in files; stops every one at the end."""

    logs: Path
    procs: list[Proc] = field(default_factory=list)

    async def start(self, command: str, env: dict[str, str]) -> Proc:
        log = self.logs / f"{len(self.procs):02d}-{command}.log"
        with log.open("wb") as out:
            process = await asyncio.create_subprocess_exec(
                *EDITHOOK, command, env=env, stdout=out, stderr=subprocess.STDOUT
            )
        proc = Proc(command, process, log)
        self.procs.append(proc)
        return proc

    async def stop(self, proc: Proc, grace: float = STOP_GRACE_SECONDS) -> None:
        """SIGTERM, then SIGKILL if it has not exited within `grace` seconds."""
        proc.ended_on_purpose = True
        if proc.running:
            with contextlib.suppress(ProcessLookupError):
                proc.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.process.wait(), grace)
            except TimeoutError:
                await self.kill(proc)
        await proc.process.wait()

    async def kill(self, proc: Proc) -> None:
        proc.ended_on_purpose = True
        with contextlib.suppress(ProcessLookupError):
            proc.process.kill()
        await proc.process.wait()

    def check_alive(self) -> None:
        """Fail the test if a process it did not end has exited."""
        for proc in self.procs:
            if not proc.ended_on_purpose and not proc.running:
                lines = proc.log.read_text(errors="replace").splitlines()
                errors = [line for line in lines if " ERROR " in line or " CRITICAL " in line]
                raise AssertionError(
                    f"edithook {proc.name} exited (code {proc.process.returncode}) on its own; "
                    "its errors:\n" + "\n".join(errors[:10])
                )

    async def stop_all(self) -> None:
        await asyncio.gather(*(self.stop(proc) for proc in self.procs))

    def output(self) -> str:
        parts = []
        for proc in self.procs:
            text = proc.log.read_text(errors="replace") if proc.log.exists() else ""
            parts.append(f"----- {proc.log.name} (exit {proc.process.returncode}) -----\n{text}")
        return "\n".join(parts)


def _stored_objects(storage: Path) -> dict[str, str]:
    """Every object under `storage`, by key, with the SHA-256 of its bytes."""
    return {
        path.relative_to(storage).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in storage.rglob("*")
        if path.is_file()
    }


@dataclass
class Stack:
    """The settings of one deployment (`serve` + `worker`), and how to start its processes."""

    launcher: Launcher
    db: str  # the real database, for the test's own reads
    env: dict[str, str]
    public_url: str
    storage: Path

    async def serve(self) -> Proc:
        """Start `edithook serve`; returns once it answers /readyz."""
        proc = await self.launcher.start("serve", self.env)

        async def ready() -> bool:
            assert proc.running, f"serve exited:\n{proc.log.read_text()}"
            try:
                async with httpx.AsyncClient(timeout=2) as client:
                    return (await client.get(f"{self.public_url}/readyz")).status_code == 200
            except httpx.TransportError:
                return False

        await wait_until(ready, "serve to be ready", START_WITHIN_SECONDS, every=0.05)
        return proc

    async def worker(self) -> Proc:
        """Start `edithook worker`; returns once it has registered with procrastinate."""
        known = {row["id"] for row in await query(self.db, "SELECT id FROM procrastinate_workers")}
        proc = await self.launcher.start("worker", self.env)

        async def registered() -> tuple[int, ...] | None:
            assert proc.running, f"worker exited:\n{proc.log.read_text()}"
            rows = await query(self.db, "SELECT id FROM procrastinate_workers")
            new = tuple(row["id"] for row in rows if row["id"] not in known)
            return new if len(new) == WORKERS_PER_PROCESS else None

        proc.worker_ids = await wait_until(
            registered, "the worker to register", START_WITHIN_SECONDS, every=0.05
        )
        return proc

    async def wait_until(
        self, check: Callable[[], Awaitable[Any]], what: str, within: float = 30.0
    ) -> Any:
        """`wait_until`, failing at once if one of the deployment's processes dies."""
        return await wait_until(check, what, within, guard=self.launcher.check_alive)

    async def wait_for_status(
        self, task_id: str, statuses: set[str], within: float = 30.0
    ) -> dict[str, Any]:
        return await wait_for_status(
            self.db, task_id, statuses, within, guard=self.launcher.check_alive
        )

    async def assert_stored_once(
        self, task_id: str, count: int, *, status: str = "completed"
    ) -> dict[str, Any]:
        """`assert_stored_once` in this deployment's database and storage."""
        return await assert_stored_once(
            self.db, self.storage, task_id, count, status=status, guard=self.launcher.check_alive
        )

    def stored_objects(self) -> dict[str, str]:
        return _stored_objects(self.storage)

    def api(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.public_url,
            headers={"Authorization": f"Bearer {ALPHA_KEY}"},
            timeout=30,
        )


StackFactory = Callable[..., Stack]


@dataclass
class Sim:
    """A simulator instance of the test's own, and a client for its `/_sim/` controls."""

    server: RunningServer
    client: httpx.AsyncClient

    @property
    def url(self) -> str:
        return self.server.url

    async def stats(self) -> dict[str, int]:
        response = await self.client.get("/_sim/stats")
        response.raise_for_status()
        stats: dict[str, int] = response.json()
        return stats

    async def record(self, provider_id: str) -> dict[str, Any]:
        response = await self.client.get(f"/_sim/tasks/{provider_id}")
        response.raise_for_status()
        record: dict[str, Any] = response.json()
        return record

    async def fault(self, **fault: Any) -> None:
        (await self.client.post("/_sim/faults", json=fault)).raise_for_status()
