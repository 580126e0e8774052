"""Many requests waiting on one task: how soon they are all answered, and what others pay.

`count` (1,000) `GET /v1/tasks/{id}` with `Prefer: wait=60` are held on one task of client
`poster`, one connection each, from a thread of the harness; once the API has registered
them all (its process idle again), the task is completed the way a worker completes one:
an UPDATE and its NOTIFY, committed together. Measured:

- from that commit to the last waiter's answer (and to the median one), on the machine's
  one clock;
- unrelated single-task GETs (the listing client's tasks, one connection, the next as soon
  as the answer is in, from the load generator's own process) over a window of `window`
  seconds in which the completion falls, against the same load with no waiter held.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
import uuid

import psycopg

from bench import database
from bench.loadgen import LoadResult, Spec, build_request, read_answer, run_load
from bench.procs import cpu_seconds, read_memory
from bench.report import Measurements, WaiterRun, describe, quantile
from bench.seed import LIST_CLIENT
from bench.stack import POSTER, Stack, bearer

WAITERS = 1000
UNRELATED_SAMPLE = 1000
# The unrelated load: warm-up, then the measured window; the completion is sent `LEAD`
# seconds after the load generator was started (its own start-up takes a few tenths).
WARMUP = 1.5
LEAD = 2.5
# The API is taken as done registering waiters once its CPU time grows less than this in
# IDLE_PROBE seconds.
IDLE_CPU_SECONDS = 0.02
IDLE_PROBE = 0.5


class _Waiters:
    """`count` waiting requests on their own event loop in a thread; answer times kept."""

    def __init__(self, host: str, port: int, request: bytes, count: int) -> None:
        self.host, self.port, self.request, self.count = host, port, request, count
        self.sent = threading.Event()
        self.answers: list[tuple[float, int]] = []
        self.errors: list[str] = []
        self._thread = threading.Thread(target=lambda: asyncio.run(self._all()), daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    async def _all(self) -> None:
        opened = 0
        ready = asyncio.Event()

        async def one() -> None:
            nonlocal opened
            try:
                reader, writer = await asyncio.open_connection(self.host, self.port)
                writer.write(self.request)
                await writer.drain()
            finally:
                opened += 1
                if opened == self.count:
                    ready.set()
            try:
                status, _ = await read_answer(reader)
                self.answers.append((time.time(), status))
            finally:
                writer.close()

        tasks = [asyncio.create_task(one()) for _ in range(self.count)]
        await ready.wait()
        self.sent.set()
        for outcome in await asyncio.gather(*tasks, return_exceptions=True):
            if isinstance(outcome, BaseException):
                self.errors.append(f"{type(outcome).__name__}: {outcome}")


def _until_idle(pid: int, within: float = 60.0) -> None:
    deadline = time.monotonic() + within
    before = cpu_seconds(pid) or 0.0
    while time.monotonic() < deadline:
        time.sleep(IDLE_PROBE)
        after = cpu_seconds(pid) or 0.0
        if after - before < IDLE_CPU_SECONDS:
            return
        before = after
    raise RuntimeError("the API did not go idle after the waiters arrived")


def _unrelated(stack: Stack, requests: list[bytes], window: float, name: str) -> LoadResult:
    assert stack.api is not None, "the API is not running"
    spec = Spec(
        host="127.0.0.1",
        port=stack.api.port,
        requests_file=str(stack.run_dir / f"{name}.bin"),
        mode="cycle",
        concurrency=1,
        duration=window,
        warmup=WARMUP,
        watch={"api": stack.api.pid},
    )
    return run_load(spec, requests)


def run_waiters(
    stack: Stack, m: Measurements, count: int = WAITERS, window: float = 3.0, rounds: int = 1
) -> None:
    """The waiter phase `rounds` times; fills `m.waiter_rounds` and a note per round.

    The table shows the round whose p99 ratio is the median of them all: one round's figure
    moves with the shared machine's load, several show how much.
    """
    for number in range(1, rounds + 1):
        run = _one_round(stack, m, count, window)
        m.waiter_rounds.append(run)
        label = f" (round {number} of {rounds})" if rounds > 1 else ""
        m.notes.append(f"waiters{label}: {run.note}")
    if rounds > 1:
        ratios = ", ".join(f"{run.ratio:.2f}" for run in m.waiter_rounds)
        lasts = ", ".join(f"{run.last_ms:.0f}" for run in m.waiter_rounds)
        m.notes.append(
            f"waiters over {rounds} rounds: unrelated GET p99 with waiters / idle {ratios};"
            f" completion → last answered {lasts} ms"
        )


def _one_round(stack: Stack, m: Measurements, count: int, window: float) -> WaiterRun:
    assert stack.api is not None, "the API is not running"
    url = stack.database_url
    host = stack.api_url.removeprefix("http://")
    task_id = uuid.uuid4()
    database.execute(
        url,
        "INSERT INTO tasks (id, client, status, progress, request, metadata, request_hash)"
        " VALUES (%(id)s, %(client)s, 'processing', 50, '{}', '{}', 'bench-waiters')",
        {"id": task_id, "client": POSTER},
    )
    rows = database.fetch(
        url,
        "SELECT id FROM tasks WHERE client = %(client)s ORDER BY random() LIMIT %(n)s",
        {"client": LIST_CLIENT, "n": UNRELATED_SAMPLE},
    )
    gets = [
        build_request("GET", f"/v1/tasks/{other}", host, bearer(LIST_CLIENT)) for (other,) in rows
    ]
    run = WaiterRun(count=count)
    run.idle = _unrelated(stack, gets, window, "waiters-idle")

    wait = build_request(
        "GET", f"/v1/tasks/{task_id}", host, {**bearer(POSTER), "Prefer": "wait=60"}
    )
    before = read_memory(stack.api.pid)
    waiters = _Waiters("127.0.0.1", stack.api.port, wait, count)
    waiters.start()
    if not waiters.sent.wait(60):
        raise RuntimeError("the waiters could not all connect")
    _until_idle(stack.api.pid)
    held = read_memory(stack.api.pid)

    loaded: list[LoadResult] = []
    load = threading.Thread(
        target=lambda: loaded.append(_unrelated(stack, gets, window, "waiters-loaded"))
    )
    load.start()
    time.sleep(LEAD)
    with psycopg.connect(url) as conn:
        conn.execute(
            "UPDATE tasks SET status = 'completed', progress = 100, finished_at = now(),"
            " resolved_by = 'callback', updated_at = now() WHERE id = %s",
            (task_id,),
        )
        conn.execute("SELECT pg_notify('edithook_tasks', %s)", (str(task_id),))
        completed_at = time.time()
        conn.commit()
    waiters.join(90)
    load.join(90)
    run.loaded = loaded[0] if loaded else None
    run.errors = waiters.errors
    delays = [(at - completed_at) * 1000 for at, _ in waiters.answers]
    run.settled = sum(1 for _, status in waiters.answers if status == 200)
    run.last_ms = max(delays, default=math.nan)
    run.median_ms = quantile(delays, 0.5)
    after = read_memory(stack.api.pid)
    database.execute(url, "DELETE FROM tasks WHERE id = %(id)s", {"id": task_id})
    memory = (
        f"; API resident memory {before.current_mb:.1f} MB before, {held.current_mb:.1f} MB"
        f" with the waiters held, {after.current_mb:.1f} MB after (peak so far"
        f" {after.peak_mb:.1f} MB)"
        if before and held and after
        else ""
    )
    run.note = (
        f"{count:,} requests held on one task, {run.settled:,} answered 200"
        f" ({len(run.errors)} connection errors); completion → answered: median"
        f" {run.median_ms:.1f} ms, last {run.last_ms:.1f} ms; unrelated GETs with no waiter:"
        f" {describe(run.idle)}; with the waiters (the completion sent {LEAD:g} s after the"
        f" load generator started, {WARMUP:g} s of warm-up plus its start-up opening the"
        f" window): {describe(run.loaded) if run.loaded else 'not measured'}{memory}"
    )
    return run
